//! Where `natkit receive` puts what comes (`-o`), checked before anything
//! is said to the peer, and how the user accepts an offer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::wire::{Kind, Offer};
use crate::p2p::progress::human_bytes;

/// Where `natkit receive` puts the file.
#[derive(Debug, Clone)]
pub struct Output {
    /// `--output PATH`: this file (or folder), or into this directory
    /// under the sender's name (an existing directory, or any path ending
    /// in `/`, made if missing); `-` is stdout. `None`: the sender's name
    /// in the current directory.
    pub path: Option<PathBuf>,
    /// `--force`: replace an existing file.
    pub force: bool,
}

impl Output {
    /// Whether `--output` names a directory: one that exists, or a path
    /// written with a trailing slash.
    fn is_dir(p: &Path) -> bool {
        p.is_dir() || p.to_string_lossy().ends_with('/')
    }

    /// Check `--output` before anything is said to the peer: a file that
    /// exists is refused without `--force`, and the directory the file
    /// goes in must exist (or, for `DIR/`, its parent).
    pub fn check(&self) -> anyhow::Result<()> {
        let Some(p) = &self.path else {
            return Ok(());
        };
        if self.is_stdout() {
            return Ok(());
        }
        if Self::is_dir(p) {
            // "FILE/" does not exist for stat(2) (ENOTDIR): look at "FILE".
            let text = p.to_string_lossy();
            let bare = Path::new(text.trim_end_matches('/'));
            if bare.exists() && !bare.is_dir() {
                bail!("--output {}: exists and is not a directory", p.display());
            }
            if !bare.exists() {
                let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
                if parent.is_some_and(|d| !d.is_dir()) {
                    bail!(
                        "--output {}: its parent directory does not exist",
                        p.display()
                    );
                }
            }
            return Ok(());
        }
        if p.exists() && !self.force {
            bail!(
                "--output {}: the file exists; add --force to replace it, or name a directory \
                 (a trailing / makes one)",
                p.display()
            );
        }
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = parent.filter(|d| !d.is_dir()) {
            bail!(
                "--output {}: directory {} does not exist",
                p.display(),
                d.display()
            );
        }
        Ok(())
    }

    /// `-o -`: the data goes to stdout.
    pub fn is_stdout(&self) -> bool {
        self.path.as_deref() == Some(Path::new("-"))
    }

    /// Where the sender's folder `name` goes: `-o DIR` or `-o PATH/` puts
    /// it inside, `-o NEW` names it. An existing folder is added to (what
    /// is there already and the same is skipped; what differs needs
    /// --force, checked per file).
    pub fn folder_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let root = match &self.path {
            _ if self.is_stdout() => bail!("a folder cannot go to stdout (-o -)"),
            Some(p) if Self::is_dir(p) => p.join(name),
            Some(p) => p.clone(),
            None => PathBuf::from(name),
        };
        if root.exists() && !root.is_dir() {
            bail!("{} exists and is not a folder", root.display());
        }
        Ok(root)
    }

    /// Where several files and folders go (`natkit send a b dir/`), each
    /// under its own name: into `-o DIR` (made if missing, a trailing `/`
    /// or not) or the current directory. Files already there are treated
    /// as in a folder: the same ones skipped, others only with --force.
    pub fn many_path(&self) -> anyhow::Result<PathBuf> {
        match &self.path {
            _ if self.is_stdout() => bail!("several files cannot go to stdout (-o -)"),
            Some(p) if p.exists() && !p.is_dir() => bail!(
                "--output {}: the sender offers several files, which go into a directory, \
                 and this is a file",
                p.display()
            ),
            Some(p) => Ok(p.clone()),
            None => Ok(PathBuf::from(".")),
        }
    }

    /// Where the sender's file `name` goes.
    pub fn target_path(&self, name: &str) -> PathBuf {
        match &self.path {
            Some(p) if Self::is_dir(p) => p.join(name),
            Some(p) => p.clone(),
            None => PathBuf::from(name),
        }
    }

    /// [`Output::target_path`], refused if a file is there and --force
    /// was not given.
    pub fn target(&self, name: &str) -> anyhow::Result<PathBuf> {
        let target = self.target_path(name);
        if target.exists() && !self.force {
            bail!(
                "{} already exists; not replacing it with the peer's file (add --force, or \
                 --output PATH)",
                target.display()
            );
        }
        Ok(target)
    }
}

/// How the receiver accepts an offer.
pub enum Accept<'a> {
    /// `--yes`: without asking.
    Always,
    /// Ask on stderr and read the answer, a line, from this input (stdin).
    Ask(&'a mut (dyn AsyncBufRead + Unpin + Send)),
}

impl Accept<'_> {
    /// Whether the user takes `offer`, of which `have` bytes are here
    /// already; `Err` when it cannot be asked.
    pub async fn decide(&mut self, offer: &Offer, have: u64) -> anyhow::Result<bool> {
        let input = match self {
            Accept::Always => return Ok(true),
            Accept::Ask(i) => i,
        };
        let what = match (offer.kind, offer.total()) {
            (Kind::Many, Some(t)) => {
                // The list first, on lines of its own; the question after.
                errln!("natkit: the peer offers {}", many(offer, t));
                None
            }
            (Kind::Folder, Some(t)) => {
                let files = offer.entries.iter().filter(|e| !e.dir).count();
                let t = human_bytes(t);
                Some(format!("folder {} ({files} files, {t})", offer.name))
            }
            (_, Some(t)) => Some(format!("{} ({})", offer.name, human_bytes(t))),
            (_, None) => Some(format!("{} (a stream of unknown length)", offer.name)),
        };
        let here = human_bytes(have);
        match (what, have > 0) {
            (None, true) => err!("natkit: {here} of them are here already; resume? [y/N] "),
            (None, false) => err!("natkit: accept them? [y/N] "),
            (Some(w), true) => {
                err!("natkit: the peer offers {w}; {here} of it are here already. Resume? [y/N] ")
            }
            (Some(w), false) => err!("natkit: the peer offers {w}. Accept? [y/N] "),
        }
        let mut line = String::new();
        let n = input
            .read_line(&mut line)
            .await
            .context("cannot read the answer from stdin")?;
        if n == 0 {
            errln!();
            bail!("stdin ended before an answer: pass --yes to accept without asking");
        }
        Ok(matches!(
            line.trim().to_ascii_lowercase().as_str(),
            "y" | "yes"
        ))
    }
}

/// Most top-level names listed when several files are offered.
const MAX_LISTED: usize = 20;

/// Several files offered: how many, their total, and one line per
/// top-level name (a folder with its files and bytes).
fn many(offer: &Offer, total: u64) -> String {
    let top = offer.top_level();
    let files: usize = top.iter().map(|(_, n, _)| n).sum();
    let mut s = format!(
        "{} items ({files} files, {}):",
        top.len(),
        human_bytes(total)
    );
    for (name, n, bytes) in top.iter().take(MAX_LISTED) {
        let size = human_bytes(*bytes);
        if name.ends_with('/') {
            s.push_str(&format!("\n  {name} ({n} files, {size})"));
        } else {
            s.push_str(&format!("\n  {name} ({size})"));
        }
    }
    if top.len() > MAX_LISTED {
        s.push_str(&format!("\n  ... and {} more", top.len() - MAX_LISTED));
    }
    s
}

/// Deletes the part file when the transfer failed in a way that makes its
/// bytes worthless (an integrity failure, a refusal before any data);
/// keeps it when only the transfer was cut, for a resume.
pub struct Partial {
    pub path: Option<PathBuf>,
}

impl Partial {
    pub fn discard(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The part file of `target`: stable across runs, so that the next try
/// finds it.
pub fn part_path(target: &Path) -> PathBuf {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.natkit-part"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("natkit-sink-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn output_paths_are_checked_before_anything_moves() {
        let d = dir();
        std::fs::write(d.join("there"), b"x").unwrap();
        let out = |p: PathBuf, force| Output {
            path: Some(p),
            force,
        };
        // An existing file: refused unless --force.
        let e = out(d.join("there"), false).check().unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        out(d.join("there"), true).check().unwrap();
        // A new file in an existing directory, or an existing directory.
        out(d.join("new"), false).check().unwrap();
        out(d.clone(), false).check().unwrap();
        // A trailing slash is a directory: made when the file comes; a
        // file of that name is refused.
        let slash = PathBuf::from(format!("{}/sub/", d.display()));
        out(slash.clone(), false).check().unwrap();
        assert_eq!(
            out(slash, false).target("f").unwrap(),
            d.join("sub").join("f")
        );
        let e = out(PathBuf::from(format!("{}/there/", d.display())), false)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        // A missing directory.
        let e = out(d.join("no/such/file"), false)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        // The sender's name in a directory that has it: refused.
        let e = out(d.clone(), false)
            .target("there")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
