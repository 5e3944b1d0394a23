//! `natkit send` / `receive`: one file over one QUIC stream, offered,
//! accepted, resumable, and checked end to end.
//!
//! On the stream, after the mode words (see `super::stream`):
//!
//! ```text
//! sender -> receiver: "NKH2" | name length (u16) | name (UTF-8) | size (u64)
//! receiver -> sender: "GO" | have (u64) | SHA-256 of those bytes (32)   accepted
//!                     "ER" message | FIN                                 declined
//! sender -> receiver: from (u64: have, or 0 if the receiver's bytes are not
//!                     the start of this file) | the data after it
//!                     | SHA-256 of the whole file (32 bytes) | FIN
//! receiver -> sender: "OK" | FIN            (verified and renamed into place)
//!                     "ER" message | FIN    (refused; the message says why)
//! ```
//!
//! The receiver writes to a part file next to the target
//! (`.NAME.natkit-part`) and renames only a verified file, so a failed
//! transfer never leaves a plausible-looking output behind. An interrupted
//! transfer keeps its part file: the next `receive` of the same file offers
//! its bytes ("have"), the sender checks them against the start of its
//! file by hash and sends only the rest. The final hash covers the whole
//! file, so a resumed file is verified exactly like a fresh one.
//!
//! QUIC already protects against corruption in transit; the hash covers
//! what QUIC cannot see: the file changing while being read, a short or
//! damaged write on the receiving disk, a bug anywhere between.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite,
    AsyncWriteExt,
};

use super::progress::Progress;

/// The header's first bytes.
const HEADER_MAGIC: &[u8; 4] = b"NKH2";
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

/// Offer the file, and once the receiver accepted, send what it lacks
/// and the hash. Returns the hash; `progress` is made once the receiver
/// said where to start.
#[allow(clippy::too_many_arguments)]
pub async fn send<F, W, R>(
    w: &mut W,
    r: &mut R,
    name: &str,
    file: &mut F,
    size: u64,
    progress: &mut Option<Progress>,
    sent: &AtomicU64,
) -> anyhow::Result<[u8; 32]>
where
    F: AsyncRead + AsyncSeek + Unpin,
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(14 + name.len());
    head.extend_from_slice(HEADER_MAGIC);
    head.extend_from_slice(&(name.len() as u16).to_be_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&size.to_be_bytes());
    w.write_all(&head).await.context("sending the header")?;
    w.flush().await.context("sending the header")?;

    let mut word = [0u8; 2];
    r.read_exact(&mut word)
        .await
        .context("the receiver ended before accepting or declining")?;
    if &word == b"ER" {
        let mut m = Vec::new();
        r.take(MAX_VERDICT as u64).read_to_end(&mut m).await.ok();
        bail!("the receiver declined: {}", String::from_utf8_lossy(&m));
    }
    if &word != b"GO" {
        bail!("the receiver's answer is not a natkit answer (another natkit version?)");
    }
    let mut go = [0u8; 40];
    r.read_exact(&mut go)
        .await
        .context("the receiver's answer was cut short")?;
    let have = u64::from_be_bytes(go[..8].try_into().expect("8 bytes"));
    let theirs = &go[8..];

    // Resume only if the receiver's bytes are the start of this file.
    let mut hasher = Sha256::new();
    let mut from = 0;
    if have > 0 && have <= size {
        read_into(file, &mut hasher, have).await?;
        if hasher.clone().finalize().as_slice() == theirs {
            from = have;
        } else {
            hasher = Sha256::new();
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .context("reading the file")?;
        }
    }
    w.write_all(&from.to_be_bytes())
        .await
        .context("sending the data")?;
    let p = progress.insert(Progress::resumed("sending", size, from));
    let mut buf = vec![0u8; CHUNK];
    let mut left = size - from;
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
        p.advance(n as u64);
        left -= n as u64;
    }
    let hash: [u8; 32] = hasher.finalize().into();
    w.write_all(&hash).await.context("sending the hash")?;
    Ok(hash)
}

/// Feed the next `n` bytes of `file` to `hasher`.
async fn read_into<F: AsyncRead + Unpin>(
    file: &mut F,
    hasher: &mut Sha256,
    n: u64,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = file
            .read(&mut buf[..want])
            .await
            .context("reading the file")?;
        if got == 0 {
            bail!("the file ended {left} bytes early");
        }
        hasher.update(&buf[..got]);
        left -= got as u64;
    }
    Ok(())
}

/// Where `natkit receive` puts the file.
#[derive(Debug, Clone)]
pub struct Output {
    /// `--output PATH`: this file, or into this directory under the
    /// sender's name (an existing directory, or any path ending in `/`,
    /// made if missing). `None`: the sender's name in the current
    /// directory.
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

    /// Where the sender's `name` goes (a directory `DIR/` is made here).
    fn target(&self, name: &str) -> anyhow::Result<PathBuf> {
        let target = match &self.path {
            Some(p) if Self::is_dir(p) => {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("cannot make directory {}", p.display()))?;
                p.join(name)
            }
            Some(p) => p.clone(),
            None => PathBuf::from(name),
        };
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

/// What the sender offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The file name (a plain name, checked).
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Bytes of it already here from an interrupted transfer.
    pub have: u64,
}

/// How the receiver accepts an offer.
pub enum Accept<'a> {
    /// `--yes`: without asking.
    Always,
    /// Ask on stderr and read the answer, a line, from this input (stdin).
    Ask(&'a mut (dyn AsyncBufRead + Unpin + Send)),
}

impl Accept<'_> {
    /// Whether the user takes `offer`; `Err` when it cannot be asked.
    async fn decide(&mut self, offer: &Offer) -> anyhow::Result<bool> {
        let input = match self {
            Accept::Always => return Ok(true),
            Accept::Ask(i) => i,
        };
        let what = format!(
            "{} ({})",
            offer.name,
            super::progress::human_bytes(offer.size)
        );
        if offer.have > 0 {
            eprint!(
                "natkit: the peer offers {what}; {} of it are here from an earlier try. \
                 Resume? [y/N] ",
                super::progress::human_bytes(offer.have)
            );
        } else {
            eprint!("natkit: the peer offers {what}. Accept? [y/N] ");
        }
        let mut line = String::new();
        let n = input
            .read_line(&mut line)
            .await
            .context("cannot read the answer from stdin")?;
        if n == 0 {
            eprintln!();
            bail!("stdin ended before an answer: pass --yes to accept without asking");
        }
        Ok(matches!(
            line.trim().to_ascii_lowercase().as_str(),
            "y" | "yes"
        ))
    }
}

/// Deletes the part file when the transfer failed in a way that makes its
/// bytes worthless (an integrity failure, a refusal before any data);
/// keeps it when only the transfer was cut, for a resume.
struct Partial {
    path: Option<PathBuf>,
}

impl Partial {
    fn discard(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The part file of `target`: stable across runs, so that the next try
/// finds it.
fn part_path(target: &Path) -> PathBuf {
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

/// Read the offer, ask `accept`, then the data and the hash; write the
/// data to the part file, verify, and rename it into place. `progress` is
/// made once the data starts.
pub async fn receive<R, W>(
    r: &mut R,
    w: &mut W,
    output: &Output,
    mut accept: Accept<'_>,
    received: &AtomicU64,
    progress: &mut Option<Progress>,
) -> anyhow::Result<Received>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    let part = part_path(&target);
    // What an earlier, interrupted try left: the start of the file, if it
    // is this file (the sender checks the hash).
    let mut hasher = Sha256::new();
    let mut have = match tokio::fs::File::open(&part).await {
        Ok(mut f) => {
            let n = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if n <= size && read_into(&mut f, &mut hasher, n).await.is_ok() {
                n
            } else {
                hasher = Sha256::new();
                0
            }
        }
        Err(_) => 0,
    };
    let offer = Offer {
        name: name.clone(),
        size,
        have,
    };
    if !accept.decide(&offer).await? {
        bail!("the user did not accept {name} ({size} bytes)");
    }
    let mut go = b"GO".to_vec();
    go.extend_from_slice(&have.to_be_bytes());
    go.extend_from_slice(&hasher.clone().finalize());
    w.write_all(&go).await.context("answering the sender")?;
    w.flush().await.context("answering the sender")?;

    let mut from = [0u8; 8];
    r.read_exact(&mut from)
        .await
        .context("the sender ended before its data")?;
    let from = u64::from_be_bytes(from);
    if from != 0 && from != have {
        bail!("the sender would resume at byte {from}, but {have} are here");
    }
    if from == 0 && have > 0 {
        eprintln!(
            "natkit: the {have} bytes here from an earlier try are not the start of this file; \
             starting over"
        );
        hasher = Sha256::new();
        have = 0;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(have == 0)
        .open(&part)
        .await
        .with_context(|| format!("cannot create {}", part.display()))?;
    file.seek(std::io::SeekFrom::Start(have))
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    file.set_len(have)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut partial = Partial {
        path: Some(part.clone()),
    };
    let p = progress.insert(Progress::resumed("receiving", size, have));

    let mut buf = vec![0u8; CHUNK];
    let mut got = have;
    while got < size {
        let want = buf
            .len()
            .min(usize::try_from(size - got).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..want]).await {
            Ok(0) => bail!(
                "short transfer: the sender's data ended after {got} of {size} bytes of {name} \
                 (kept for a resume: receive it again)"
            ),
            Ok(n) => n,
            Err(e) => bail!(
                "transfer cut short after {got} of {size} bytes of {name} (kept for a resume: \
                 receive it again): {e}"
            ),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
        got += n as u64;
        received.fetch_add(n as u64, Ordering::Relaxed);
        p.advance(n as u64);
    }
    file.flush()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut theirs = [0u8; 32];
    r.read_exact(&mut theirs).await.with_context(|| {
        format!("short transfer: all {size} bytes of {name} came but not their SHA-256")
    })?;
    let mut extra = [0u8; 1];
    match r.read(&mut extra).await {
        Ok(0) => {}
        Ok(_) => {
            partial.discard();
            bail!("the sender sent more than the {size} bytes it announced")
        }
        Err(e) => bail!("the stream failed after the data: {e}"),
    }
    let ours: [u8; 32] = hasher.finalize().into();
    if ours != theirs {
        partial.discard();
        bail!(
            "integrity check failed: the SHA-256 of the {size} bytes received is {}, \
             the sender's is {}; the file was not kept",
            hex(&ours),
            hex(&theirs)
        );
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    drop(file);
    tokio::fs::rename(&part, &target)
        .await
        .with_context(|| format!("cannot move the file into place at {}", target.display()))?;
    partial.path = None;
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

    /// What a sender puts on the stream for `content` when the receiver
    /// answers with `from` bytes in hand.
    fn wire(name: &str, content: &[u8], from: usize) -> Vec<u8> {
        let mut v = wire_head(name, content.len() as u64);
        v.extend_from_slice(&(from as u64).to_be_bytes());
        v.extend_from_slice(&content[from..]);
        v.extend_from_slice(&Sha256::digest(content));
        v
    }

    fn wire_head(name: &str, size: u64) -> Vec<u8> {
        let mut v = HEADER_MAGIC.to_vec();
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&size.to_be_bytes());
        v
    }

    async fn recv(d: &Path, stream: &[u8]) -> anyhow::Result<Received> {
        let mut r = stream;
        let mut answer = Vec::new();
        let n = AtomicU64::new(0);
        let out = Output {
            path: Some(d.to_path_buf()),
            force: false,
        };
        receive(&mut r, &mut answer, &out, Accept::Always, &n, &mut None).await
    }

    /// The real sender against the real receiver, over two pipes.
    async fn both(
        d: &Path,
        name: &str,
        content: &[u8],
        answer: &str,
    ) -> (anyhow::Result<[u8; 32]>, anyhow::Result<Received>, u64) {
        let (mut s_w, mut r_r) = tokio::io::duplex(1 << 16);
        let (mut r_w, mut s_r) = tokio::io::duplex(1 << 16);
        let out = Output {
            path: Some(d.to_path_buf()),
            force: false,
        };
        let sent = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let mut file = std::io::Cursor::new(content.to_vec());
        let mut stdin = answer.as_bytes();
        let sender = async {
            let r = send(
                &mut s_w,
                &mut s_r,
                name,
                &mut file,
                content.len() as u64,
                &mut None,
                &sent,
            )
            .await;
            drop(s_w);
            r
        };
        let receiver = async {
            let r = receive(
                &mut r_r,
                &mut r_w,
                &out,
                Accept::Ask(&mut stdin),
                &received,
                &mut None,
            )
            .await;
            // What `super::receive_file` does: tell the sender.
            let _ = r_w.write_all(&verdict(&r)).await;
            drop(r_w);
            r
        };
        let (a, b) = tokio::join!(sender, receiver);
        (a, b, sent.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn an_accepted_file_arrives_and_a_cut_one_resumes_where_it_stopped() {
        let d = dir();
        let content = data(300_000);
        // A first try cut after 100 000 bytes left its part file.
        let cut = wire("a.bin", &content, 0);
        let head = wire_head("a.bin", 300_000).len() + 8;
        let e = recv(&d, &cut[..head + 100_000])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("kept for a resume"), "{e}");
        assert_eq!(files(&d), [".a.bin.natkit-part"]);
        // The second try sends only the rest, and the whole file verifies.
        let (s, r, sent) = both(&d, "a.bin", &content, "y\n").await;
        let got = r.unwrap();
        assert_eq!(s.unwrap(), got.hash);
        assert_eq!(sent, 200_000);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), content);
        assert_eq!(got.hash, <[u8; 32]>::from(Sha256::digest(&content)));
        assert_eq!(files(&d), ["a.bin"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_part_file_of_another_file_is_sent_over_whole() {
        let d = dir();
        let old = data(50_000);
        std::fs::write(d.join(".a.bin.natkit-part"), vec![7u8; 40_000]).unwrap();
        let (s, r, sent) = both(&d, "a.bin", &old, "yes\n").await;
        s.unwrap();
        r.unwrap();
        assert_eq!(sent, 50_000);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), old);
        assert_eq!(files(&d), ["a.bin"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_declined_offer_moves_nothing_and_the_sender_hears_why() {
        let d = dir();
        for answer in ["n\n", ""] {
            let (s, r, sent) = both(&d, "a.bin", &data(10_000), answer).await;
            let (se, re) = (s.unwrap_err().to_string(), r.unwrap_err().to_string());
            assert!(se.contains("the receiver declined"), "{se}");
            assert_eq!(sent, 0);
            if answer.is_empty() {
                assert!(re.contains("--yes"), "{re}");
            } else {
                assert!(re.contains("did not accept a.bin"), "{re}");
            }
        }
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        std::fs::remove_dir_all(&d).unwrap();
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
        let got = recv(&d, &wire("a.bin", &content, 0)).await.unwrap();
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
        let mut w = wire("a.bin", &data(100_000), 0);
        w[5000] ^= 1;
        let e = recv(&d, &w).await.unwrap_err().to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_short_transfer_is_named_and_kept_and_a_long_one_leaves_nothing() {
        let d = dir();
        let w = wire("a.bin", &data(100_000), 0);
        let e = recv(&d, &w[..60_000]).await.unwrap_err().to_string();
        assert!(e.contains("short transfer"), "{e}");
        assert_eq!(files(&d), [".a.bin.natkit-part"]);
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
        assert!(d.join("sub").is_dir());
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
