//! `natkit send` / `receive`: a file, a folder or stdin over one QUIC
//! stream, offered, accepted, resumable, and checked end to end.
//!
//! On the stream, after the mode words (see `super::stream`):
//!
//! ```text
//! sender -> receiver: the offer (wire.rs): "NKH3" | kind (file, folder, stream)
//!                     | name | entries: directory flag, path, size
//! receiver -> sender: "GO" | per entry: complete (u8) | have (u64) | SHA-256 of those bytes
//!                     "ER" message | FIN                       declined
//! sender -> receiver: per file entry, in order: from (u64) | the data after it
//!                     | SHA-256 of the whole file (32 bytes)
//!                     (a stream, from stdin, is framed: u32 length | bytes, 0 ends it)
//!                     then FIN
//! receiver -> sender: "OK" | FIN            (verified and renamed into place)
//!                     "ER" message | FIN    (refused; the message says why)
//! ```
//!
//! The receiver writes each file to a part file next to it
//! (`.NAME.natkit-part`) and renames only a verified file, so a failed
//! transfer never leaves a plausible-looking output behind. An interrupted
//! transfer keeps its part files: the next `receive` offers their bytes
//! ("have"), the sender checks them against the start of its file by hash
//! and sends only the rest (`from`). A file already in place is offered as
//! complete: the sender skips it if it is the same, or sends it whole
//! (which the receiver takes only with --force). The final hash covers the
//! whole file, so a resumed file is verified exactly like a fresh one.
//!
//! QUIC already protects against corruption in transit; the hash covers
//! what QUIC cannot see: the file changing while being read, a short or
//! damaged write on the receiving disk, a bug anywhere between.

mod sink;
mod source;
mod wire;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::failure::kinded;
use super::progress::Progress;
use sink::{part_path, Partial};
pub use sink::{Accept, Output};
pub use source::Outgoing;
use source::{check_name, check_rel};
pub use wire::Kind;
use wire::{Have, Offer, UNKNOWN};

/// Chunk size for reading files and the stream.
const CHUNK: usize = 64 << 10;
/// The longest verdict message read back.
pub const MAX_VERDICT: usize = 4096;

/// What the sender sent.
#[derive(Debug)]
pub struct Sent {
    /// The SHA-256 of the one file (or stream); `None` for a folder.
    pub hash: Option<[u8; 32]>,
    /// Files in the offer.
    pub files: usize,
}

/// Offer `out`, and once the receiver accepted, send what it lacks of each
/// file, and the hashes. `stdin` is read for a stream. `progress` is made
/// once the receiver answered.
pub async fn send<W, R, I>(
    w: &mut W,
    r: &mut R,
    out: &Outgoing,
    stdin: &mut I,
    progress: &mut Option<Progress>,
    sent: &AtomicU64,
) -> anyhow::Result<Sent>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    I: AsyncRead + Unpin,
{
    w.write_all(&out.offer.encode())
        .await
        .context("sending the offer")?;
    w.flush().await.context("sending the offer")?;

    let mut word = [0u8; 2];
    r.read_exact(&mut word)
        .await
        .context("the receiver ended before accepting or declining")?;
    if &word == b"ER" {
        let mut m = Vec::new();
        r.take(MAX_VERDICT as u64).read_to_end(&mut m).await.ok();
        let why = String::from_utf8_lossy(&m);
        return Err(kinded("declined", format!("the receiver declined: {why}")));
    }
    if &word != b"GO" {
        bail!("the receiver's answer is not a natkit answer (another natkit version?)");
    }
    let mut haves = Vec::with_capacity(out.offer.entries.len());
    for _ in &out.offer.entries {
        let mut b = [0u8; Have::WIRE];
        r.read_exact(&mut b)
            .await
            .context("the receiver's answer was cut short")?;
        haves.push(Have::decode(&b));
    }

    let total = out.offer.total().unwrap_or(UNKNOWN);
    let p = progress.insert(Progress::resumed("sending", total, 0));
    let mut files = 0;
    let mut last = None;
    for ((e, src), have) in out.offer.entries.iter().zip(&out.sources).zip(haves) {
        if e.dir {
            continue;
        }
        files += 1;
        last = Some(match src {
            None => send_stream(w, stdin, p, sent).await?,
            Some(path) => send_file(w, path, e.size, have, p, sent).await?,
        });
    }
    let one = matches!(out.offer.kind, Kind::File | Kind::Stream);
    Ok(Sent {
        hash: if one { last } else { None },
        files,
    })
}

/// One file: where to start (after what the receiver has, if it is the
/// start of this file), the rest, and the hash of the whole.
async fn send_file<W: AsyncWrite + Unpin>(
    w: &mut W,
    path: &Path,
    size: u64,
    have: Have,
    p: &mut Progress,
    sent: &AtomicU64,
) -> anyhow::Result<[u8; 32]> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut from = 0;
    // A complete file there counts only whole; a part file as a prefix.
    let usable = if have.complete {
        have.len == size
    } else {
        have.len > 0 && have.len <= size
    };
    if usable {
        read_into(&mut file, &mut hasher, have.len)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if hasher.clone().finalize().as_slice() == have.hash {
            from = have.len;
        } else {
            hasher = Sha256::new();
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    w.write_all(&from.to_be_bytes())
        .await
        .context("sending the data")?;
    p.skipped(from);
    let mut buf = vec![0u8; CHUNK];
    let mut left = size - from;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file
            .read(&mut buf[..want])
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            bail!(
                "{} shrank while being sent: {} of {size} bytes read",
                path.display(),
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

/// stdin until it ends, in frames (its length is not known), and the
/// hash.
async fn send_stream<W, I>(
    w: &mut W,
    input: &mut I,
    p: &mut Progress,
    sent: &AtomicU64,
) -> anyhow::Result<[u8; 32]>
where
    W: AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
{
    w.write_all(&0u64.to_be_bytes())
        .await
        .context("sending the data")?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 + CHUNK];
    loop {
        let n = input
            .read(&mut buf[4..])
            .await
            .context("cannot read stdin")?;
        buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
        w.write_all(&buf[..4 + n])
            .await
            .context("sending the data")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[4..4 + n]);
        sent.fetch_add(n as u64, Ordering::Relaxed);
        p.advance(n as u64);
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
        let got = file.read(&mut buf[..want]).await?;
        if got == 0 {
            bail!("the file ended {left} bytes early");
        }
        hasher.update(&buf[..got]);
        left -= got as u64;
    }
    Ok(())
}

/// What arrived, verified.
#[derive(Debug)]
pub struct Received {
    /// Where it is now (the file or folder; `-` for stdout).
    pub path: PathBuf,
    /// Files in it.
    pub files: usize,
    /// Their bytes.
    pub size: u64,
    /// The SHA-256 of the one file (or stream); `None` for a folder.
    pub hash: Option<[u8; 32]>,
    /// Files that were here already, the same.
    pub same: usize,
    /// Several files and folders came (`path` is the directory they are
    /// in).
    pub many: bool,
}

/// What is here of one entry, and where it goes.
struct Slot {
    /// The file's final place; `None` for stdout and directories.
    target: Option<PathBuf>,
    have: Have,
    /// The hash state after `have.len` bytes of a part file.
    hasher: Sha256,
}

/// Look at what is here of `target` (`size` bytes announced): a complete
/// file (only when it may be replaced or skipped), or a part file.
async fn look_here(target: &Path, size: u64, stream: bool) -> anyhow::Result<(Have, Sha256)> {
    let mut hasher = Sha256::new();
    if target.is_file() {
        let mut f = tokio::fs::File::open(target)
            .await
            .with_context(|| format!("cannot read {}", target.display()))?;
        let len = f.metadata().await?.len();
        read_into(&mut f, &mut hasher, len)
            .await
            .with_context(|| format!("cannot read {}", target.display()))?;
        let hash = hasher.finalize().into();
        let have = Have {
            complete: true,
            len,
            hash,
        };
        return Ok((have, Sha256::new()));
    }
    if stream {
        return Ok((Have::default(), hasher));
    }
    let part = part_path(target);
    let Ok(mut f) = tokio::fs::File::open(&part).await else {
        return Ok((Have::default(), hasher));
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len == 0 || len > size || read_into(&mut f, &mut hasher, len).await.is_err() {
        return Ok((Have::default(), Sha256::new()));
    }
    let have = Have {
        complete: false,
        len,
        hash: hasher.clone().finalize().into(),
    };
    Ok((have, hasher))
}

/// Read the offer, ask `accept`, then each file's data and hash: write it
/// to its part file (or `stdout` for `-o -`), verify, and rename it into
/// place. `progress` is made once the data starts.
pub async fn receive<R, W, O>(
    r: &mut R,
    w: &mut W,
    output: &Output,
    mut accept: Accept<'_>,
    stdout: &mut O,
    received: &AtomicU64,
    progress: &mut Option<Progress>,
) -> anyhow::Result<Received>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    O: AsyncWrite + Unpin,
{
    let offer = Offer::read(r).await?;
    check_name(&offer.name)?;
    for e in &offer.entries {
        match offer.kind {
            Kind::Folder | Kind::Many => check_rel(&e.rel)?,
            _ => check_name(&e.rel)?,
        }
    }
    let to_stdout = output.is_stdout();
    let root = match offer.kind {
        Kind::Folder => Some(output.folder_path(&offer.name)?),
        Kind::Many => Some(output.many_path()?),
        _ => None,
    };
    // One file's hash is printed; a folder's or several files' are each
    // checked, not printed.
    let one = matches!(offer.kind, Kind::File | Kind::Stream);
    let stream = offer.kind == Kind::Stream;
    let mut slots = Vec::with_capacity(offer.entries.len());
    for e in &offer.entries {
        let target = match (&root, e.dir, to_stdout) {
            (_, true, _) | (None, _, true) => None,
            (Some(root), false, _) => Some(root.join(&e.rel)),
            (None, false, false) => Some(output.target(&offer.name)?),
        };
        let (have, hasher) = match &target {
            Some(t) => look_here(t, e.size, stream).await?,
            None => (Have::default(), Sha256::new()),
        };
        slots.push(Slot {
            target,
            have,
            hasher,
        });
    }
    let here: u64 = slots.iter().map(|s| s.have.len).sum();
    if !accept.decide(&offer, here).await? {
        return Err(kinded(
            "declined",
            format!("the user did not accept {}", offer.name),
        ));
    }
    if let Some(root) = &root {
        tokio::fs::create_dir_all(root)
            .await
            .with_context(|| format!("cannot make folder {}", root.display()))?;
        for e in offer.entries.iter().filter(|e| e.dir) {
            let d = root.join(&e.rel);
            tokio::fs::create_dir_all(&d)
                .await
                .with_context(|| format!("cannot make folder {}", d.display()))?;
        }
    }
    let mut go = b"GO".to_vec();
    for s in &slots {
        s.have.encode(&mut go);
    }
    w.write_all(&go).await.context("answering the sender")?;
    w.flush().await.context("answering the sender")?;

    let p = progress.insert(Progress::resumed(
        "receiving",
        offer.total().unwrap_or(UNKNOWN),
        0,
    ));
    let mut files = 0;
    let mut same = 0;
    let mut size = 0;
    let mut last = None;
    for (e, slot) in offer.entries.iter().zip(slots) {
        if e.dir {
            continue;
        }
        files += 1;
        let from = r
            .read_u64()
            .await
            .context("the sender ended before its data")?;
        let name = &e.rel;
        let Slot {
            target,
            have,
            hasher,
        } = slot;
        let (got, hash) = match &target {
            None => {
                if from != 0 {
                    bail!("the sender would resume {name} at byte {from}, but nothing is here");
                }
                let (n, hash) = copy_in(r, stdout, e.size, Sha256::new(), from, p, received)
                    .await
                    .context("writing to stdout")?;
                stdout.flush().await.context("cannot write stdout")?;
                let theirs = read_hash(r, name, n).await?;
                if theirs != hash {
                    return Err(kinded(
                        "integrity",
                        format!(
                            "integrity check failed for {name}: the SHA-256 of the {n} bytes \
                             received is {}, the sender's is {}; they were written to stdout \
                             already",
                            hex(&hash),
                            hex(&theirs)
                        ),
                    ));
                }
                (n, hash)
            }
            Some(target) => {
                let (n, hash, was_here) = receive_file(
                    r,
                    target,
                    e.size,
                    (have, hasher),
                    from,
                    output.force,
                    p,
                    received,
                )
                .await?;
                same += usize::from(was_here);
                (n, hash)
            }
        };
        size += got;
        last = Some(hash);
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra).await {
        Ok(0) => {}
        Ok(_) => bail!("the sender sent more than it announced"),
        Err(e) => bail!("the stream failed after the data: {e}"),
    }
    let path = match (&root, to_stdout) {
        (Some(root), _) => root.clone(),
        (None, true) => PathBuf::from("-"),
        (None, false) => output.target_path(&offer.name),
    };
    Ok(Received {
        path,
        files,
        size,
        hash: if one { last } else { None },
        same,
        many: offer.kind == Kind::Many,
    })
}

/// One file into its part file from byte `from`, verified and renamed
/// into place. Returns the file's size and hash, and whether the same
/// file was here already.
#[allow(clippy::too_many_arguments)]
async fn receive_file<R: AsyncRead + Unpin>(
    r: &mut R,
    target: &Path,
    size: u64,
    (have, mut hasher): (Have, Sha256),
    from: u64,
    force: bool,
    p: &mut Progress,
    received: &AtomicU64,
) -> anyhow::Result<(u64, [u8; 32], bool)> {
    let name = target.display();
    if have.complete {
        if from == have.len && from == size {
            // The same file is here: nothing came but its hash.
            let theirs = read_hash(r, &name.to_string(), size).await?;
            if theirs != have.hash {
                bail!("{name} is here with another SHA-256 than the sender's");
            }
            p.skipped(size);
            return Ok((size, theirs, true));
        }
        if from != 0 {
            bail!("the sender would resume {name} at byte {from} of a complete file");
        }
        if !force {
            bail!("{name} exists and differs from the sender's; --force replaces it");
        }
        hasher = Sha256::new();
    } else if from != 0 && from != have.len {
        bail!(
            "the sender would resume {name} at byte {from}, but {} are here",
            have.len
        );
    } else if from == 0 && have.len > 0 {
        errln!(
            "natkit: the {} bytes of {name} here from an earlier try are not the start of \
             this file; starting over",
            have.len
        );
        hasher = Sha256::new();
    }
    p.skipped(from);
    if let Some(d) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(d)
            .await
            .with_context(|| format!("cannot make folder {}", d.display()))?;
    }
    let part = part_path(target);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .open(&part)
        .await
        .with_context(|| format!("cannot create {}", part.display()))?;
    file.set_len(from)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    file.seek(std::io::SeekFrom::Start(from))
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut partial = Partial {
        path: Some(part.clone()),
    };
    let (n, ours) = copy_in(r, &mut file, size, hasher, from, p, received)
        .await
        .with_context(|| format!("{name}"))?;
    file.flush()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let theirs = read_hash(r, &name.to_string(), n).await?;
    if ours != theirs {
        partial.discard();
        return Err(kinded(
            "integrity",
            format!(
                "integrity check failed for {name}: the SHA-256 of the {n} bytes received is \
                 {}, the sender's is {}; the file was not kept",
                hex(&ours),
                hex(&theirs)
            ),
        ));
    }
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    drop(file);
    tokio::fs::rename(&part, target)
        .await
        .with_context(|| format!("cannot move the file into place at {name}"))?;
    partial.path = None;
    Ok((n, ours, false))
}

/// The data of one entry from `r` to `out`: `size - from` bytes, or
/// frames until an empty one when `size` is [`UNKNOWN`]. Returns the total
/// length (with `from`) and the hash, continued from `hasher`.
async fn copy_in<R, O>(
    r: &mut R,
    out: &mut O,
    size: u64,
    mut hasher: Sha256,
    from: u64,
    p: &mut Progress,
    received: &AtomicU64,
) -> anyhow::Result<(u64, [u8; 32])>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut got = from;
    let cut = |got: u64, e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "transfer cut short after {got} bytes (a part file is kept for a resume: receive \
             it again): {e}"
        )
    };
    loop {
        let want = if size == UNKNOWN {
            let n = r.read_u32().await.map_err(|e| cut(got, &e))?;
            if n as usize > CHUNK {
                bail!("the sender's frame of {n} bytes is larger than {CHUNK}");
            }
            if n == 0 {
                break;
            }
            let n = n as usize;
            r.read_exact(&mut buf[..n])
                .await
                .map_err(|e| cut(got, &e))?;
            n
        } else {
            if got == size {
                break;
            }
            let want = buf
                .len()
                .min(usize::try_from(size - got).unwrap_or(usize::MAX));
            match r.read(&mut buf[..want]).await {
                Ok(0) => {
                    return Err(cut(
                        got,
                        &format!("the sender's data ended before {size} bytes"),
                    ))
                }
                Ok(n) => n,
                Err(e) => return Err(cut(got, &e)),
            }
        };
        hasher.update(&buf[..want]);
        out.write_all(&buf[..want]).await?;
        got += want as u64;
        received.fetch_add(want as u64, Ordering::Relaxed);
        p.advance(want as u64);
    }
    Ok((got, hasher.finalize().into()))
}

async fn read_hash<R: AsyncRead + Unpin>(
    r: &mut R,
    name: &str,
    n: u64,
) -> anyhow::Result<[u8; 32]> {
    let mut theirs = [0u8; 32];
    r.read_exact(&mut theirs).await.with_context(|| {
        format!("short transfer: all {n} bytes of {name} came but not their SHA-256")
    })?;
    Ok(theirs)
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
        [b'E', b'R', m @ ..] => Err(kinded(
            "refused",
            format!(
                "the receiver refused the file: {}",
                String::from_utf8_lossy(m)
            ),
        )),
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
    use wire::Entry;

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

    fn offer_of(name: &str, size: u64) -> Vec<u8> {
        Offer {
            kind: Kind::File,
            name: name.into(),
            entries: vec![Entry {
                dir: false,
                rel: name.into(),
                size,
            }],
        }
        .encode()
    }

    /// What a sender puts on the stream for `content` when the receiver
    /// answers with `from` bytes in hand.
    fn wire(name: &str, content: &[u8], from: usize) -> Vec<u8> {
        let mut v = offer_of(name, content.len() as u64);
        v.extend_from_slice(&(from as u64).to_be_bytes());
        v.extend_from_slice(&content[from..]);
        v.extend_from_slice(&Sha256::digest(content));
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
        let mut stdout = tokio::io::sink();
        receive(
            &mut r,
            &mut answer,
            &out,
            Accept::Always,
            &mut stdout,
            &n,
            &mut None,
        )
        .await
    }

    /// What one run of the real sender and receiver did.
    struct Run {
        sent: anyhow::Result<Sent>,
        received: anyhow::Result<Received>,
        /// Bytes of data the sender sent.
        moved: u64,
        /// What the receiver wrote to stdout.
        stdout: Vec<u8>,
    }

    /// The real sender of `what` (stdin `input` for `-`) against the real
    /// receiver writing to `out`, over two pipes; `answer` is the
    /// receiver's stdin.
    async fn both(what: &Path, input: &[u8], out: Output, answer: &str) -> Run {
        both_all(&[what.to_path_buf()], input, out, answer).await
    }

    /// [`both`] with several paths in one offer.
    async fn both_all(what: &[PathBuf], input: &[u8], out: Output, answer: &str) -> Run {
        let (mut s_w, mut r_r) = tokio::io::duplex(1 << 16);
        let (mut r_w, mut s_r) = tokio::io::duplex(1 << 16);
        let sent = AtomicU64::new(0);
        let received = AtomicU64::new(0);
        let outgoing = Outgoing::prepare_all(what, None).unwrap();
        let mut stdin = answer.as_bytes();
        let mut data_in = input;
        let mut stdout = Vec::new();
        let sender = async {
            let r = send(
                &mut s_w,
                &mut s_r,
                &outgoing,
                &mut data_in,
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
                &mut stdout,
                &received,
                &mut None,
            )
            .await;
            // What `super::receive_file` does: tell the sender.
            let _ = r_w.write_all(&verdict(&r)).await;
            drop(r_w);
            r
        };
        let (sent_r, received_r) = tokio::join!(sender, receiver);
        Run {
            sent: sent_r,
            received: received_r,
            moved: sent.load(Ordering::Relaxed),
            stdout,
        }
    }

    fn into(d: &Path) -> Output {
        Output {
            path: Some(d.to_path_buf()),
            force: false,
        }
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
    async fn an_accepted_file_arrives_and_a_cut_one_resumes_where_it_stopped() {
        let (src, d) = (dir(), dir());
        let content = data(300_000);
        std::fs::write(src.join("a.bin"), &content).unwrap();
        // A first try cut after 100 000 bytes left its part file.
        let cut = wire("a.bin", &content, 0);
        let head = offer_of("a.bin", 300_000).len() + 8;
        let e = recv(&d, &cut[..head + 100_000]).await.unwrap_err();
        assert!(format!("{e:#}").contains("kept for a resume"), "{e:#}");
        assert_eq!(files(&d), [".a.bin.natkit-part"]);
        // The second try sends only the rest, and the whole file verifies.
        let run = both(&src.join("a.bin"), b"", into(&d), "y\n").await;
        let got = run.received.unwrap();
        assert_eq!(run.sent.unwrap().hash, got.hash);
        assert_eq!(run.moved, 200_000);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), content);
        assert_eq!(got.hash, Some(<[u8; 32]>::from(Sha256::digest(&content))));
        assert_eq!(files(&d), ["a.bin"]);
        for x in [src, d] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[tokio::test]
    async fn a_part_file_of_another_file_is_sent_over_whole() {
        let (src, d) = (dir(), dir());
        let content = data(50_000);
        std::fs::write(src.join("a.bin"), &content).unwrap();
        std::fs::write(d.join(".a.bin.natkit-part"), vec![7u8; 40_000]).unwrap();
        let run = both(&src.join("a.bin"), b"", into(&d), "yes\n").await;
        run.sent.unwrap();
        run.received.unwrap();
        assert_eq!(run.moved, 50_000);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), content);
        assert_eq!(files(&d), ["a.bin"]);
        for x in [src, d] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[tokio::test]
    async fn a_declined_offer_moves_nothing_and_the_sender_hears_why() {
        let (src, d) = (dir(), dir());
        std::fs::write(src.join("a.bin"), data(10_000)).unwrap();
        for answer in ["n\n", ""] {
            let run = both(&src.join("a.bin"), b"", into(&d), answer).await;
            let se = run.sent.unwrap_err().to_string();
            let re = run.received.unwrap_err().to_string();
            assert!(se.contains("the receiver declined"), "{se}");
            assert_eq!(run.moved, 0);
            if answer.is_empty() {
                assert!(re.contains("--yes"), "{re}");
            } else {
                assert!(re.contains("did not accept a.bin"), "{re}");
            }
        }
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        for x in [src, d] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[tokio::test]
    async fn a_folder_arrives_whole_and_again_only_what_differs_moves() {
        let (src, d) = (dir(), dir());
        let top = src.join("top");
        std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(top.join("empty")).unwrap();
        std::fs::write(top.join("one.txt"), data(1000)).unwrap();
        std::fs::write(top.join("sub/two.bin"), data(70_000)).unwrap();
        std::fs::write(top.join("sub/deeper/three"), b"").unwrap();
        let run = both(&top, b"", into(&d), "y\n").await;
        let got = run.received.unwrap();
        assert_eq!((got.files, got.size, got.same), (3, 71_000, 0));
        assert_eq!(got.path, d.join("top"));
        assert_eq!(run.sent.unwrap().files, 3);
        assert_eq!(std::fs::read(d.join("top/one.txt")).unwrap(), data(1000));
        assert_eq!(
            std::fs::read(d.join("top/sub/two.bin")).unwrap(),
            data(70_000)
        );
        assert!(d.join("top/sub/deeper/three").is_file());
        assert!(d.join("top/empty").is_dir());
        // Again, with one file changed at the sender: the same ones are
        // skipped, the changed one needs --force.
        std::fs::write(top.join("one.txt"), data(999)).unwrap();
        let run = both(&top, b"", into(&d), "y\n").await;
        let e = run.received.unwrap_err().to_string();
        assert!(e.contains("differs from the sender's; --force"), "{e}");
        let forced = Output {
            force: true,
            ..into(&d)
        };
        let run = both(&top, b"", forced, "y\n").await;
        let got = run.received.unwrap();
        assert_eq!((got.files, got.same), (3, 2));
        assert_eq!(run.moved, 999);
        assert_eq!(std::fs::read(d.join("top/one.txt")).unwrap(), data(999));
        for x in [src, d] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[tokio::test]
    async fn several_files_and_a_folder_arrive_side_by_side_and_resume_per_file() {
        let (src, d) = (dir(), dir());
        std::fs::create_dir_all(src.join("album/2024")).unwrap();
        std::fs::write(src.join("a.txt"), data(1000)).unwrap();
        std::fs::write(src.join("b.bin"), data(200_000)).unwrap();
        std::fs::write(src.join("album/2024/c.bin"), data(70_000)).unwrap();
        // What an earlier, cut try left: b.bin's first 50 000 bytes; a.txt
        // is here whole and the same.
        std::fs::write(d.join(".b.bin.natkit-part"), &data(200_000)[..50_000]).unwrap();
        std::fs::write(d.join("a.txt"), data(1000)).unwrap();
        let what = ["a.txt", "b.bin", "album"].map(|n| src.join(n));
        let run = both_all(&what, b"", into(&d), "y\n").await;
        let got = run.received.unwrap();
        assert_eq!((got.files, got.same, got.many), (3, 1, true));
        assert_eq!(got.size, 271_000);
        assert_eq!(got.hash, None);
        assert_eq!(got.path, d);
        // Only what was missing moved: the rest of b.bin and c.bin.
        assert_eq!(run.moved, 150_000 + 70_000);
        assert_eq!(run.sent.unwrap().files, 3);
        assert_eq!(std::fs::read(d.join("b.bin")).unwrap(), data(200_000));
        assert_eq!(
            std::fs::read(d.join("album/2024/c.bin")).unwrap(),
            data(70_000)
        );
        assert_eq!(files(&d), ["a.txt", "album", "b.bin"]);
        for x in [src, d] {
            std::fs::remove_dir_all(x).unwrap();
        }
    }

    #[tokio::test]
    async fn one_damaged_file_of_several_is_named_and_the_others_are_kept() {
        let d = dir();
        let (a, b) = (data(10_000), data(20_000));
        let mut w = Offer {
            kind: Kind::Many,
            name: "2 items".into(),
            entries: vec![
                Entry {
                    dir: false,
                    rel: "a.bin".into(),
                    size: 10_000,
                },
                Entry {
                    dir: false,
                    rel: "b.bin".into(),
                    size: 20_000,
                },
            ],
        }
        .encode();
        for content in [&a, &b] {
            w.extend_from_slice(&0u64.to_be_bytes());
            w.extend_from_slice(content);
            w.extend_from_slice(&Sha256::digest(content));
        }
        let at = w.len() - 32 - 5000;
        w[at] ^= 1;
        let e = recv(&d, &w).await.unwrap_err().to_string();
        assert!(e.contains("integrity check failed for"), "{e}");
        assert!(e.contains("b.bin"), "{e}");
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), a);
        assert_eq!(files(&d), ["a.bin"]);
        // Several files never go to stdout, nor into a file.
        let to = |p: PathBuf| Output {
            path: Some(p),
            force: true,
        };
        for out in [to(PathBuf::from("-")), to(d.join("a.bin"))] {
            let mut r = &w[..];
            let e = receive(
                &mut r,
                &mut Vec::new(),
                &out,
                Accept::Always,
                &mut tokio::io::sink(),
                &AtomicU64::new(0),
                &mut None,
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(e.contains("several files"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn stdin_goes_to_a_file_or_to_stdout_verified() {
        let d = dir();
        let input = data(200_000);
        let run = both(Path::new("-"), &input, into(&d), "y\n").await;
        let got = run.received.unwrap();
        assert_eq!(std::fs::read(d.join("stdin")).unwrap(), input);
        assert_eq!(got.size, 200_000);
        assert_eq!(got.hash, run.sent.unwrap().hash);
        let to_stdout = Output {
            path: Some(PathBuf::from("-")),
            force: false,
        };
        let run = both(Path::new("-"), &input, to_stdout, "y\n").await;
        assert_eq!(run.received.unwrap().path, PathBuf::from("-"));
        assert!(run.stdout == input);
        assert_eq!(files(&d), ["stdin"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_file_arrives_verified_under_its_name() {
        let d = dir();
        let content = data(300_000);
        let got = recv(&d, &wire("a.bin", &content, 0)).await.unwrap();
        assert_eq!(got.path, d.join("a.bin"));
        assert_eq!(got.size, content.len() as u64);
        assert_eq!(std::fs::read(d.join("a.bin")).unwrap(), content);
        assert_eq!(got.hash, Some(<[u8; 32]>::from(Sha256::digest(&content))));
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
        let e = recv(&d, &w[..60_000]).await.unwrap_err();
        assert!(format!("{e:#}").contains("cut short"), "{e:#}");
        assert_eq!(files(&d), [".a.bin.natkit-part"]);
        let e = recv(&d, &w[..w.len() - 10]).await.unwrap_err().to_string();
        assert!(e.contains("SHA-256"), "{e}");
        let mut long = w.clone();
        long.push(0);
        let e = recv(&d, &long).await.unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn names_cannot_escape_the_directory() {
        let d = dir();
        for bad in ["../x", "a/b", "..", ""] {
            let e = recv(&d, &offer_of(bad, 0)).await.unwrap_err().to_string();
            assert!(e.contains("unusable file name"), "{bad}: {e}");
        }
        let folder = Offer {
            kind: Kind::Folder,
            name: "ok".into(),
            entries: vec![Entry {
                dir: false,
                rel: "a/../../etc/x".into(),
                size: 0,
            }],
        };
        let e = recv(&d, &folder.encode()).await.unwrap_err().to_string();
        assert!(e.contains("unusable path"), "{e}");
        assert!(files(&d).is_empty(), "{:?}", files(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn verdicts_round_trip() {
        assert!(read_verdict(&verdict(&Ok(Received {
            path: PathBuf::new(),
            files: 1,
            size: 0,
            hash: None,
            same: 0,
            many: false,
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
