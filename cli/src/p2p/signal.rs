//! Moving descriptions between the peers: printed for copy-paste, written
//! to a file atomically, read from a file (polled), an argument or the
//! first line of stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use natkit_ice::{Description, DescriptionError};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How often a `--remote` file is looked at once the session runs (the
/// peer's ICE restarts).
pub const POLL: Duration = Duration::from_millis(100);

/// How often the `--remote` file is looked at while the peer's first
/// description is awaited. Each side starts checking when it reads the
/// other's description, so this poll is a lag between the two starts: at
/// 100 ms it was up to 100 ms added to the connect time (NAT'd peers' checks
/// only get through once both sides send). A look is one failed open(2)
/// while the file is missing: 100 a second costs nothing.
pub const ARRIVAL_POLL: Duration = Duration::from_millis(10);

/// The description as text: the one-line `nk1.` form, or JSON.
pub fn render(d: &Description, json: bool) -> String {
    if json {
        serde_json::to_string(d).expect("a description always serializes")
    } else {
        d.to_string()
    }
}

/// Write `text` to `path` so that a reader never sees half of it: a
/// temporary file in the same directory, then rename(2), which replaces
/// the old file in one step.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot write {}", path.display()))
}

/// What a look at the `--remote` file found.
#[derive(Debug)]
pub enum FileState {
    /// Not there (yet).
    Missing,
    /// There, but not a description (being written by hand, or damaged).
    Bad(DescriptionError),
    /// A description.
    Good(Description),
}

/// Look at the `--remote` file once.
pub fn look(path: &Path) -> anyhow::Result<FileState> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(FileState::Missing);
    }
    Ok(match Description::parse_any(&text) {
        Ok(d) => FileState::Good(d),
        Err(e) => FileState::Bad(e),
    })
}

/// Why no remote description came.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// It came but does not parse.
    #[error("the peer's description is unusable: {0}; copy it again, whole (one line starting with \"nk1.\", or its JSON)")]
    Unusable(#[from] DescriptionError),
    /// Nothing came in time.
    #[error("timed out after {:.0} s waiting for the peer's description {where_}; start the peer, or raise --wait", .waited.as_secs_f64())]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// Where it was expected.
        where_: String,
    },
    /// It parses but offers no address to try.
    #[error("the peer's description has no candidates: it offers no address to reach it; the peer must gather some (check its --bind, --stun, --turn)")]
    NoCandidates,
    /// It is this side's own.
    #[error("that is this side's own description: paste the one the peer printed")]
    Ours,
    /// stdin ended first.
    #[error("stdin ended before the peer's description: paste it as the first line, or use --remote FILE")]
    StdinEnded,
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// Refuse a description that cannot lead to a connection: no candidates.
pub fn check_usable(d: &Description) -> Result<(), RemoteError> {
    if d.candidates.is_empty() {
        return Err(RemoteError::NoCandidates);
    }
    Ok(())
}

/// Refuse this side's own description (pasted back by mistake): its
/// credentials and certificate are ours.
pub fn check_not_ours(d: &Description, local: &Description) -> Result<(), RemoteError> {
    if d.ufrag == local.ufrag && d.fingerprint == local.fingerprint {
        return Err(RemoteError::Ours);
    }
    Ok(())
}

/// Wait for the `--remote` file to exist and parse. A file that stays
/// unparsable until `wait` is over is reported as such, not as a timeout.
pub async fn from_file(path: &Path, wait: Duration) -> Result<Description, RemoteError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let last_bad = match look(path)? {
            FileState::Good(d) => {
                check_usable(&d)?;
                return Ok(d);
            }
            FileState::Bad(e) => Some(e),
            FileState::Missing => None,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_bad {
                Some(e) => RemoteError::Unusable(e),
                None => RemoteError::Timeout {
                    waited: wait,
                    where_: format!("in {}", path.display()),
                },
            });
        }
        tokio::time::sleep(ARRIVAL_POLL).await;
    }
}

/// The first line of `input` (a terminal paste) that is the peer's
/// description; what follows stays in the reader for the data. Blank lines
/// before it are skipped. A line that is no usable description, or is
/// `local` itself, ends the wait with its error, or with `again` is
/// reported on stderr and the next line is read (a bad paste costs a
/// paste, not the session).
pub async fn from_first_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
    wait: Duration,
    local: &Description,
    again: bool,
) -> Result<Description, RemoteError> {
    let read = async {
        loop {
            let mut line = String::new();
            let n = input
                .read_line(&mut line)
                .await
                .context("cannot read stdin")?;
            if n == 0 {
                return Err(RemoteError::StdinEnded);
            }
            if line.trim().is_empty() {
                continue;
            }
            let r = Description::parse_any(&line)
                .map_err(RemoteError::from)
                .and_then(|d| {
                    check_usable(&d)?;
                    check_not_ours(&d, local)?;
                    Ok(d)
                });
            match r {
                Ok(d) => return Ok(d),
                Err(e) if again => {
                    errln!("natkit: {e}");
                    errln!("natkit: paste the peer's description again (then Enter):");
                }
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(wait, read).await {
        Ok(r) => r,
        Err(_) => Err(RemoteError::Timeout {
            waited: wait,
            where_: "on stdin".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "natkit-signal-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn sample() -> Description {
        let s = natkit_ice::Session::builder()
            .bind(["127.0.0.1".parse().unwrap()])
            .build()
            .await
            .unwrap();
        s.local_description().await
    }

    #[tokio::test]
    async fn files_are_replaced_whole_and_read_in_both_forms() {
        let d = dir();
        let p = d.join("desc");
        let desc = sample().await;
        for json in [false, true] {
            write_atomic(&p, &render(&desc, json)).unwrap();
            match look(&p).unwrap() {
                FileState::Good(got) => assert_eq!(got, desc),
                other => panic!("{other:?}"),
            }
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_file_is_a_description_error_not_a_timeout() {
        let d = dir();
        let p = d.join("desc");
        let text = sample().await.to_string();
        std::fs::write(&p, &text[..text.len() - 4]).unwrap();
        let e = from_file(&p, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, RemoteError::Unusable(_)), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = from_file(&p, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, RemoteError::Timeout { .. }), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn the_first_line_is_the_description_and_the_rest_is_data() {
        let desc = sample().await;
        let input = format!("\n{desc}\nhello\nworld");
        let mut r = BufReader::new(input.as_bytes());
        let ours = sample().await;
        let got = from_first_line(&mut r, Duration::from_secs(5), &ours, false)
            .await
            .unwrap();
        assert_eq!(got, desc);
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut rest)
            .await
            .unwrap();
        assert_eq!(rest, "hello\nworld");
        let mut r = BufReader::new(&b"nk1.garbage\n"[..]);
        let e = from_first_line(&mut r, Duration::from_secs(5), &ours, false)
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Unusable(_)), "{e}");
        let mut r = BufReader::new(&b"\n\n"[..]);
        let e = from_first_line(&mut r, Duration::from_secs(5), &ours, false)
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::StdinEnded), "{e}");
        // Our own description, then garbage, then the peer's: asked again
        // until the peer's comes.
        let input = format!("{ours}\nnk1.garbage\n{desc}\nrest");
        let mut r = BufReader::new(input.as_bytes());
        let got = from_first_line(&mut r, Duration::from_secs(5), &ours, true)
            .await
            .unwrap();
        assert_eq!(got, desc);
        let only_ours = format!("{ours}\n");
        let mut r = BufReader::new(only_ours.as_bytes());
        let e = from_first_line(&mut r, Duration::from_secs(5), &ours, false)
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Ours), "{e}");
        let mut none = desc.clone();
        none.candidates.clear();
        assert!(matches!(
            check_usable(&none),
            Err(RemoteError::NoCandidates)
        ));
    }
}
