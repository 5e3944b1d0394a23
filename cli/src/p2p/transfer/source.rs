//! What `natkit send` sends: a regular file, a folder (walked once, before
//! anything is said to the peer) or stdin (`-`), and the checks on names
//! that both sides apply.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::wire::{Entry, Kind, Offer, MAX_ENTRIES, UNKNOWN};

/// The longest file name accepted (most file systems' limit).
const MAX_NAME: usize = 255;
/// The longest path inside a folder (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// The name stdin is offered under unless `--name` says otherwise.
pub const STDIN_NAME: &str = "stdin";

/// A name from the peer must not leave the output directory.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
    {
        bail!("unusable file name {name:?} (it must be a plain file name)");
    }
    Ok(())
}

/// A path inside a folder from the peer: plain names joined by `/`, so it
/// stays inside the folder (no `..`, no absolute path, no empty part).
pub fn check_rel(rel: &str) -> anyhow::Result<()> {
    if rel.len() > MAX_PATH {
        bail!("unusable path in the folder: {} bytes", rel.len());
    }
    for part in rel.split('/') {
        check_name(part).with_context(|| format!("unusable path in the folder: {rel:?}"))?;
    }
    Ok(())
}

/// The file name to announce: the last component of `path`.
pub fn announced_name(path: &Path) -> anyhow::Result<String> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 file name", path.display()))?;
    check_name(name)?;
    Ok(name.to_owned())
}

/// What is sent, and where each entry's bytes come from.
#[derive(Debug)]
pub struct Outgoing {
    /// What the peer is offered.
    pub offer: Offer,
    /// For each entry: the file to read (`None` for directories and
    /// stdin).
    pub sources: Vec<Option<PathBuf>>,
    /// What was left out of a folder, and why (symbolic links, special
    /// files), to say before sending.
    pub skipped: Vec<String>,
}

impl Outgoing {
    /// Whether the data is stdin (`natkit send -`).
    pub fn reads_stdin(&self) -> bool {
        self.offer.kind == Kind::Stream
    }

    /// `natkit send PATH`: `-` is stdin (offered as `name`, default
    /// "stdin"), a directory a folder, anything else must be a regular
    /// file. Checked here, before a socket is opened.
    pub fn prepare(path: &Path, name: Option<&str>) -> anyhow::Result<Outgoing> {
        if path == Path::new("-") {
            let name = name.unwrap_or(STDIN_NAME).to_owned();
            check_name(&name).context("--name")?;
            return Ok(Outgoing {
                offer: Offer {
                    kind: Kind::Stream,
                    entries: vec![Entry {
                        dir: false,
                        rel: name.clone(),
                        size: UNKNOWN,
                    }],
                    name,
                },
                sources: vec![None],
                skipped: Vec::new(),
            });
        }
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        let name = match name {
            Some(n) => {
                check_name(n).context("--name")?;
                n.to_owned()
            }
            None => announced_name(&std::fs::canonicalize(path).unwrap_or(path.to_path_buf()))?,
        };
        if meta.is_dir() {
            return Self::folder(path, name);
        }
        if !meta.is_file() {
            bail!("{} is not a regular file or a folder", path.display());
        }
        // Readable now, not only when the peer is there.
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Outgoing {
            offer: Offer {
                kind: Kind::File,
                entries: vec![Entry {
                    dir: false,
                    rel: name.clone(),
                    size: meta.len(),
                }],
                name,
            },
            sources: vec![Some(path.to_path_buf())],
            skipped: Vec::new(),
        })
    }

    /// `natkit send PATH...`: one path as [`Outgoing::prepare`]; several
    /// (files and folders, not `-`) as one offer of [`Kind::Many`], each
    /// under its own name, which must differ. Checked here, before a
    /// socket is opened.
    pub fn prepare_all(paths: &[PathBuf], name: Option<&str>) -> anyhow::Result<Outgoing> {
        match paths {
            [] => bail!("nothing to send: name a file, a folder or -"),
            [one] => return Self::prepare(one, name),
            _ => {}
        }
        if paths.iter().any(|p| p == Path::new("-")) {
            bail!("- (stdin) is sent alone, not with other files");
        }
        if name.is_some() {
            bail!("--name renames one file or folder; several are sent under their own names");
        }
        let mut out = Outgoing {
            offer: Offer {
                kind: Kind::Many,
                name: format!("{} items", paths.len()),
                entries: Vec::new(),
            },
            sources: Vec::new(),
            skipped: Vec::new(),
        };
        let mut names: Vec<(String, &Path)> = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let name = announced_name(&std::fs::canonicalize(path).unwrap_or(path.to_path_buf()))?;
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                bail!(
                    "{} and {} would both arrive as {name}: send them apart, or rename one",
                    first.display(),
                    path.display()
                );
            }
            names.push((name.clone(), path));
            if meta.is_dir() {
                out.offer.entries.push(Entry {
                    dir: true,
                    rel: name.clone(),
                    size: 0,
                });
                out.sources.push(None);
                out.walk(path, name)?;
            } else if meta.is_file() {
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                out.offer.entries.push(Entry {
                    dir: false,
                    rel: name,
                    size: meta.len(),
                });
                out.sources.push(Some(path.clone()));
            } else {
                bail!("{} is not a regular file or a folder", path.display());
            }
            if out.offer.entries.len() > MAX_ENTRIES as usize {
                bail!("more than {MAX_ENTRIES} entries to send");
            }
        }
        Ok(out)
    }

    /// A folder, walked depth first in name order: directories (also
    /// empty ones) and regular files. Symbolic links are not followed
    /// (they could point anywhere, or in a circle) and are reported.
    fn folder(root: &Path, name: String) -> anyhow::Result<Outgoing> {
        let mut out = Outgoing {
            offer: Offer {
                kind: Kind::Folder,
                name,
                entries: Vec::new(),
            },
            sources: Vec::new(),
            skipped: Vec::new(),
        };
        out.walk(root, String::new())?;
        Ok(out)
    }

    /// Add what is under `root` (see [`Outgoing::folder`]), its paths
    /// under `prefix` (none when empty).
    fn walk(&mut self, root: &Path, prefix: String) -> anyhow::Result<()> {
        let out = self;
        let mut stack = vec![(root.to_path_buf(), prefix)];
        while let Some((dir, prefix)) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read folder {}", dir.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("cannot read folder {}", dir.display()))?;
            names.sort_by_key(|e| e.file_name());
            let mut subdirs = Vec::new();
            for e in names {
                let path = e.path();
                let Some(n) = e.file_name().to_str().map(str::to_owned) else {
                    bail!("{} is not a UTF-8 file name", path.display());
                };
                let rel = if prefix.is_empty() {
                    n
                } else {
                    format!("{prefix}/{n}")
                };
                check_rel(&rel)?;
                let t = e
                    .file_type()
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if t.is_dir() {
                    out.offer.entries.push(Entry {
                        dir: true,
                        rel: rel.clone(),
                        size: 0,
                    });
                    out.sources.push(None);
                    subdirs.push((path, rel));
                } else if t.is_file() {
                    let size = e
                        .metadata()
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .len();
                    out.offer.entries.push(Entry {
                        dir: false,
                        rel,
                        size,
                    });
                    out.sources.push(Some(path));
                } else if t.is_symlink() {
                    out.skipped.push(format!("{rel} (a symbolic link)"));
                } else {
                    out.skipped.push(format!("{rel} (not a regular file)"));
                }
                if out.offer.entries.len() > MAX_ENTRIES as usize {
                    bail!("{} has more than {MAX_ENTRIES} entries", root.display());
                }
            }
            // Depth first, in name order: push in reverse.
            stack.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_cannot_escape() {
        for bad in ["../x", "a/b", "..", "", "a\\b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for bad in ["../x", "a/../../b", "/etc/passwd", "a//b", "a/", ".."] {
            assert!(check_rel(bad).is_err(), "{bad}");
        }
        check_rel("a/b/c.txt").unwrap();
        assert!(announced_name(Path::new("/tmp/dir/ok.txt")).is_ok());
        assert!(announced_name(Path::new("/")).is_err());
    }

    #[test]
    fn a_folder_is_walked_in_order_without_following_links() {
        let d = std::env::temp_dir().join(format!("natkit-source-{}", rand::random::<u32>()));
        std::fs::create_dir_all(d.join("top/b/deep")).unwrap();
        std::fs::create_dir_all(d.join("top/a")).unwrap();
        std::fs::create_dir_all(d.join("top/empty")).unwrap();
        std::fs::write(d.join("top/z.txt"), b"zz").unwrap();
        std::fs::write(d.join("top/b/deep/x.bin"), b"xxx").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("top/link")).unwrap();
        let o = Outgoing::prepare(&d.join("top"), None).unwrap();
        assert_eq!(o.offer.kind, Kind::Folder);
        assert_eq!(o.offer.name, "top");
        let rels: Vec<(&str, bool, u64)> = o
            .offer
            .entries
            .iter()
            .map(|e| (e.rel.as_str(), e.dir, e.size))
            .collect();
        assert_eq!(
            rels,
            [
                ("a", true, 0),
                ("b", true, 0),
                ("empty", true, 0),
                ("z.txt", false, 2),
                ("b/deep", true, 0),
                ("b/deep/x.bin", false, 3),
            ]
        );
        assert_eq!(o.skipped, ["link (a symbolic link)"]);
        assert_eq!(o.offer.total(), Some(5));
        let e = Outgoing::prepare(&d.join("nothing"), None).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
        // Several: each under its own name, a folder's entries under it.
        std::fs::write(d.join("one.txt"), b"1").unwrap();
        let o = Outgoing::prepare_all(&[d.join("one.txt"), d.join("top/b")], None).unwrap();
        assert_eq!(o.offer.kind, Kind::Many);
        let rels: Vec<&str> = o.offer.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["one.txt", "b", "b/deep", "b/deep/x.bin"]);
        assert_eq!(
            o.offer.top_level(),
            [("one.txt".to_owned(), 1, 1), ("b/".to_owned(), 1, 3)]
        );
        // Refused: the same name twice, stdin among others, --name.
        std::fs::create_dir_all(d.join("other")).unwrap();
        std::fs::write(d.join("other/one.txt"), b"2").unwrap();
        let twice = [d.join("one.txt"), d.join("other/one.txt")];
        let e = Outgoing::prepare_all(&twice, None).unwrap_err();
        assert!(e.to_string().contains("both arrive as one.txt"), "{e}");
        let e = Outgoing::prepare_all(&[d.join("one.txt"), PathBuf::from("-")], None);
        assert!(e.unwrap_err().to_string().contains("sent alone"));
        let e = Outgoing::prepare_all(&[d.join("one.txt"), d.join("top")], Some("x"));
        assert!(e.unwrap_err().to_string().contains("--name"));
        let s = Outgoing::prepare(Path::new("-"), None).unwrap();
        assert_eq!(
            (s.offer.kind, s.offer.name.as_str()),
            (Kind::Stream, "stdin")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
