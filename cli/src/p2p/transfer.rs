//! `natkit send` / `receive`: one file over one QUIC stream, checked end
//! to end.
//!
//! On the stream, after the mode words (see `super::stream`):
//!
//! ```text
//! sender -> receiver: "NKH1" | name length (u16) | name (UTF-8) | size (u64)
//!                     | size bytes of data | SHA-256 of the data (32 bytes) | FIN
//! receiver -> sender: "OK" | FIN            (verified and renamed into place)
//!                     "ER" message | FIN    (refused; the message says why)
//! ```
//!
//! QUIC already protects against corruption in transit; the hash covers
//! what QUIC cannot see: the file changing while being read, a short or
//! damaged write on the receiving disk, a bug anywhere between. The
//! receiver writes to a temporary name and renames only a verified file,
//! so a failed transfer never leaves a plausible-looking output behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::progress::Progress;

/// The header's first bytes.
const HEADER_MAGIC: &[u8; 4] = b"NKH1";
/// Chunk size for reading the file and the stream.
const CHUNK: usize = 64 << 10;
/// The longest file name accepted (most file systems' limit).
const MAX_NAME: usize = 255;
/// The longest verdict message read back.
pub const MAX_VERDICT: usize = 4096;

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

/// A name from the peer must not leave the output directory.
fn check_name(name: &str) -> anyhow::Result<()> {
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

/// Send the header, `size` bytes of `file`, and the hash. Returns the hash.
pub async fn send<F, W>(
    w: &mut W,
    name: &str,
    file: &mut F,
    size: u64,
    progress: &mut Progress,
    sent: &AtomicU64,
) -> anyhow::Result<[u8; 32]>
where
    F: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(14 + name.len());
    head.extend_from_slice(HEADER_MAGIC);
    head.extend_from_slice(&(name.len() as u16).to_be_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&size.to_be_bytes());
    w.write_all(&head).await.context("sending the header")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file
            .read(&mut buf[..want])
            .await
            .context("reading the file")?;
        if n == 0 {
            bail!(
                "the file shrank while being sent: {} of {size} bytes read",
                size - left
            );
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await.context("sending the data")?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        progress.advance(n as u64);
        left -= n as u64;
    }
    let hash: [u8; 32] = hasher.finalize().into();
    w.write_all(&hash).await.context("sending the hash")?;
    Ok(hash)
}

/// Where `natkit receive` puts the file.
#[derive(Debug, Clone)]
pub enum Output {
    /// `--output PATH`: this file, or into this directory under the
    /// sender's name. An existing file is replaced.
    Given(PathBuf),
    /// No `--output`: the sender's name in the current directory, never
    /// replacing a file (the name came from the peer).
    Here,
}

impl Output {
    fn target(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(match self {
            Output::Given(p) if p.is_dir() => p.join(name),
            Output::Given(p) => p.clone(),
            Output::Here => {
                let p = PathBuf::from(name);
                if p.exists() {
                    bail!(
                        "{name} already exists here; not replacing it with the peer's file \
                         (use --output PATH)"
                    );
                }
                p
            }
        })
    }
}

/// A verified file.
#[derive(Debug)]
pub struct Received {
    /// Where it is now.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub hash: [u8; 32],
}

/// Deletes the partial file unless the transfer succeeded.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Read the header, the data and the hash; write the data to a temporary
/// file, verify, and rename it into place. `progress` is made once the
/// size is known.
pub async fn receive<R: AsyncRead + Unpin>(
    r: &mut R,
    output: &Output,
    received: &AtomicU64,
    progress: &mut Option<Progress>,
) -> anyhow::Result<Received> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .await
        .context("the sender's header did not arrive")?;
    if &magic != HEADER_MAGIC {
        bail!("the peer sent no natkit file header (another natkit version?)");
    }
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.context("header cut short")?;
    let mut name = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut name).await.context("header cut short")?;
    let name = String::from_utf8(name).context("the sender's file name is not UTF-8")?;
    check_name(&name)?;
    let mut size = [0u8; 8];
    r.read_exact(&mut size).await.context("header cut short")?;
    let size = u64::from_be_bytes(size);

    let target = output.target(&name)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.natkit-part-{}",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone()),
        std::process::id()
    ));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut partial = Partial(Some(tmp.clone()));
    let p = progress.insert(Progress::new("receiving", size));

    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < size {
        let want = buf
            .len()
            .min(usize::try_from(size - got).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..want]).await {
            Ok(0) => bail!(
                "short transfer: the sender's data ended after {got} of {size} bytes of {name}"
            ),
            Ok(n) => n,
            Err(e) => bail!("transfer cut short after {got} of {size} bytes of {name}: {e}"),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        got += n as u64;
        received.fetch_add(n as u64, Ordering::Relaxed);
        p.advance(n as u64);
    }
    let mut theirs = [0u8; 32];
    r.read_exact(&mut theirs).await.with_context(|| {
        format!("short transfer: all {size} bytes of {name} came but not their SHA-256")
    })?;
    let mut extra = [0u8; 1];
    match r.read(&mut extra).await {
        Ok(0) => {}
        Ok(_) => bail!("the sender sent more than the {size} bytes it announced"),
        Err(e) => bail!("the stream failed after the data: {e}"),
    }
    let ours: [u8; 32] = hasher.finalize().into();
    if ours != theirs {
        bail!(
            "integrity check failed: the SHA-256 of the {size} bytes received is {}, \
             the sender's is {}; the file was not kept",
            hex(&ours),
            hex(&theirs)
        );
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    tokio::fs::rename(&tmp, &target)
        .await
        .with_context(|| format!("cannot move the file into place at {}", target.display()))?;
    partial.0 = None;
    Ok(Received {
        path: target,
        size,
        hash: ours,
    })
}

/// The receiver's verdict, as sent back.
pub fn verdict(r: &anyhow::Result<Received>) -> Vec<u8> {
    match r {
        Ok(_) => b"OK".to_vec(),
        Err(e) => {
            let mut v = b"ER".to_vec();
            let m = format!("{e:#}");
            // Cut on a character boundary: the sender prints it.
            v.extend_from_slice(crate::p2p::truncate_utf8(&m, MAX_VERDICT - 2).as_bytes());
            v
        }
    }
}

/// What the sender makes of the verdict.
pub fn read_verdict(v: &[u8]) -> anyhow::Result<()> {
    match v {
        b"OK" => Ok(()),
        [b'E', b'R', m @ ..] => bail!(
            "the receiver refused the file: {}",
            String::from_utf8_lossy(m)
        ),
        [] => bail!("the receiver ended without confirming the file"),
        _ => bail!("the receiver's answer is not a natkit verdict"),
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "natkit-transfer-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// What the sender puts on the stream for `content`.
    async fn wire(name: &str, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut p = Progress::new("sending", content.len() as u64);
        let sent = AtomicU64::new(0);
        let mut src = content;
        send(
            &mut out,
            name,
            &mut src,
            content.len() as u64,
            &mut p,
            &sent,
        )
        .await
        .unwrap();
        assert_eq!(sent.load(Ordering::Relaxed), content.len() as u64);
        out
    }

    async fn recv(d: &Path, stream: &[u8]) -> anyhow::Result<Received> {
        let mut r = stream;
        let n = AtomicU64::new(0);
        receive(&mut r, &Output::Given(d.to_path_buf()), &n, &mut None).await
    }

    fn files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_file_arrives_verified_under_its_name() {
        let d = dir();
        let content = data(300_000);
        let got = recv(&d, &wire("a.bin", &content).await).await.unwrap();
        assert_eq!(got.path, d.join("a.bin"));
        assert_eq!(got.size, content.len() as u64);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), content);
        assert_eq!(got.hash, <[u8; 32]>::from(Sha256::digest(&content)));
        assert_eq!(files(&d), ["a.bin"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn damaged_data_fails_the_check_and_leaves_nothing() {
        let d = dir();
        let mut w = wire("a.bin", &data(100_000)).await;
        w[5000] ^= 1;
        let e = recv(&d, &w).await.unwrap_err().to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_short_transfer_is_named_and_leaves_nothing() {
        let d = dir();
        let w = wire("a.bin", &data(100_000)).await;
        let e = recv(&d, &w[..60_000]).await.unwrap_err().to_string();
        assert!(e.contains("short transfer"), "{e}");
        let e = recv(&d, &w[..w.len() - 10]).await.unwrap_err().to_string();
        assert!(e.contains("SHA-256"), "{e}");
        let mut long = w.clone();
        long.push(0);
        let e = recv(&d, &long).await.unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn names_cannot_escape_the_directory() {
        let d = dir();
        for bad in ["../x", "a/b", "..", ""] {
            let w = wire_raw(bad);
            let e = recv(&d, &w).await.unwrap_err().to_string();
            assert!(e.contains("unusable file name"), "{bad}: {e}");
        }
        assert!(announced_name(Path::new("/tmp/dir/ok.txt")).is_ok());
        assert!(announced_name(Path::new("/")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn wire_raw(name: &str) -> Vec<u8> {
        let mut v = HEADER_MAGIC.to_vec();
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        v
    }

    #[test]
    fn verdicts_round_trip() {
        assert!(read_verdict(&verdict(&Ok(Received {
            path: PathBuf::new(),
            size: 0,
            hash: [0; 32]
        })))
        .is_ok());
        let e = read_verdict(&verdict(&Err(anyhow::anyhow!("integrity check failed"))))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused the file: integrity check failed"),
            "{e}"
        );
        assert!(read_verdict(b"").is_err());
        assert!(read_verdict(b"??").is_err());
    }
}
