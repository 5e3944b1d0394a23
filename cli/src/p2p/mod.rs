//! `natkit listen`, `connect`, `send` and `receive`: two peers exchange
//! one description each (copy-paste, files or stdin), connect with ICE
//! (RFC 8445) and QUIC through [`natkit_ice::Session`], then pipe stdin and
//! stdout, or move a file, over one QUIC stream.
//!
//! `listen` and `send` start ICE-controlled (the QUIC server); `connect`
//! and `receive` controlling (the QUIC client). The side that ends up
//! controlling opens the stream, whatever ICE's role conflict resolution
//! (RFC 8445 §7.3.1.1) decided.
//!
//! Network changes: with `--remote FILE` the file is watched; a new ufrag
//! in it is the peer's ICE restart (RFC 8445 §9), answered by writing our
//! new description to `--desc-out`. When the path goes silent
//! (`SessionEvent::PathDegraded`), or the relay under it is lost, the
//! controlling side restarts ICE itself (see `restart`). The QUIC
//! connection, and the stream, carry on over the new path.

mod args;
mod failure;
mod pipe;
mod progress;
mod report;
mod restart;
mod signal;
mod transfer;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use natkit_ice::session::{Error as SessionError, CLOSE_NORMAL};
use natkit_ice::{Description, Role, Session};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, BufReader};

pub use args::Common;
use report::Report;
use restart::Restarts;
use signal::RemoteError;

/// QUIC application error code when this side gives up (the reason
/// phrase carries the error); the peer reports it instead of waiting for
/// consent to expire.
pub const CLOSE_ERROR: u32 = 1;
/// Longest reason phrase sent with [`CLOSE_ERROR`] (it must fit a packet).
const MAX_CLOSE_REASON: usize = 400;

/// How long to wait, after the data stream failed, for the session to say
/// why (consent lost names the dead path; the stream error does not).
const WHY_GRACE: Duration = Duration::from_millis(1500);

/// Flags of `natkit listen`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    #[command(flatten)]
    common: Common,
}

/// Flags of `natkit connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The peer's description (the nk1. text or its JSON). Without it, and
    /// without --remote, the first line of stdin is read.
    #[arg(value_name = "DESCRIPTION")]
    description: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Flags of `natkit send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The file to send.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    common: Common,
}

/// Flags of `natkit receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    /// Where to write the file: a file name, or a directory to put it in
    /// under the sender's name (default: the sender's name here, never
    /// replacing a file).
    #[arg(long, short = 'o', value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

/// What the command does once connected.
enum Work {
    Pipe,
    Send(PathBuf),
    Receive(transfer::Output),
}

impl Work {
    /// The word each side writes first on the stream: it tells the other
    /// side what this one does, so `send` facing `connect` fails with a
    /// clear message instead of misreading data.
    fn word(&self) -> &'static [u8; 4] {
        match self {
            Work::Pipe => b"NKP1",
            Work::Send(_) => b"NKS1",
            Work::Receive(_) => b"NKR1",
        }
    }

    /// The word the peer must write for this side's work.
    fn wants(&self) -> (&'static [u8; 4], &'static str) {
        match self {
            Work::Pipe => (b"NKP1", "natkit listen / natkit connect"),
            Work::Send(_) => (b"NKR1", "natkit receive"),
            Work::Receive(_) => (b"NKS1", "natkit send FILE"),
        }
    }
}

/// Run `natkit listen`.
pub fn listen(a: ListenArgs) -> anyhow::Result<()> {
    run("listen", Role::Controlled, a.common, None, Work::Pipe)
}

/// Run `natkit connect`.
pub fn connect(a: ConnectArgs) -> anyhow::Result<()> {
    run(
        "connect",
        Role::Controlling,
        a.common,
        a.description,
        Work::Pipe,
    )
}

/// Run `natkit send`.
pub fn send(a: SendArgs) -> anyhow::Result<()> {
    run("send", Role::Controlled, a.common, None, Work::Send(a.file))
}

/// Run `natkit receive`.
pub fn receive(a: ReceiveArgs) -> anyhow::Result<()> {
    let out = match a.output {
        Some(p) => transfer::Output::Given(p),
        None => transfer::Output::Here,
    };
    run(
        "receive",
        Role::Controlling,
        a.common,
        None,
        Work::Receive(out),
    )
}

fn run(
    command: &'static str,
    role: Role,
    common: Common,
    given: Option<String>,
    work: Work,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = Report::new(common.report.clone(), command, role);
    let r = rt.block_on(session_main(command, role, &common, given, work, &report));
    report.finish(r.as_ref().err());
    // A read of stdin may still be blocked in tokio's blocking pool (the
    // peer vanished while the terminal was quiet): do not wait for it.
    rt.shutdown_background();
    r
}

async fn session_main(
    command: &'static str,
    role: Role,
    c: &Common,
    given: Option<String>,
    work: Work,
    report: &Report,
) -> anyhow::Result<()> {
    // Refuse what can be refused before any socket is opened.
    let given = match given {
        Some(g) => Some(Description::parse_any(&g).map_err(RemoteError::Unusable)?),
        None => None,
    };
    let mut file = None;
    if let Work::Send(path) = &work {
        let f = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = f.metadata().await?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        file = Some((f, meta.len(), transfer::announced_name(path)?));
    }

    let session = c.builder(role)?.build().await.map_err(failure::explain)?;
    let events = session.events();
    let local = session.local_description().await;
    for p in session.server_problems() {
        eprintln!("warning: {p}");
    }
    publish(command, c, &local)?;

    // The data of listen/connect is stdin; its first line may be the
    // description.
    let mut stdin = BufReader::with_capacity(64 << 10, tokio::io::stdin());
    let remote = if let Some(d) = given {
        d
    } else if let Some(path) = &c.remote {
        signal::from_file(path, c.wait).await?
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("natkit: paste the peer's description and press Enter:");
        }
        signal::from_first_line(&mut stdin, c.wait).await?
    };

    let restarts = Arc::new(Restarts::default());
    let t0 = Instant::now();
    let remote_ufrag = remote.ufrag.clone();
    let conn =
        match tokio::time::timeout(c.timeout + Duration::from_secs(10), session.connect(remote))
            .await
        {
            Ok(r) => r.map_err(|e| failure::explain_with(e, &c.servers()))?,
            // The session bounds itself by --timeout; this is the backstop.
            Err(_) => bail!(
                "timeout: no connection within --timeout {:.0} s, and the session did not \
                 give up by itself",
                c.timeout.as_secs_f64()
            ),
        };
    let took = t0.elapsed();
    let path = session.path();
    match &path {
        Some(p) => eprintln!("natkit: connected in {} ms over {p}", took.as_millis()),
        None => eprintln!("natkit: connected in {} ms", took.as_millis()),
    }
    report.connected(path.as_ref(), session.role(), took);

    let watchers = [
        tokio::spawn(restart::watch_events(
            session.clone(),
            events,
            report.clone(),
            c.clone(),
            restarts.clone(),
        )),
        tokio::spawn(restart::watch_remote(
            session.clone(),
            c.clone(),
            report.clone(),
            remote_ufrag,
        )),
    ];

    let data = async {
        let (send, recv) = stream(&conn, session.role(), &work).await?;
        match work {
            Work::Pipe => {
                pipe::run(
                    send,
                    recv,
                    stdin,
                    tokio::io::stdout(),
                    &report.sent,
                    &report.received,
                )
                .await?;
                eprintln!(
                    "natkit: done: sent {} bytes, received {} bytes",
                    report.sent.load(Ordering::Relaxed),
                    report.received.load(Ordering::Relaxed)
                );
                Ok(())
            }
            Work::Send(_) => {
                let (f, size, name) = file.take().expect("opened above");
                send_file(send, recv, f, size, &name, report).await
            }
            Work::Receive(out) => receive_file(send, recv, &out, report).await,
        }
    };
    let r = tokio::select! {
        r = data => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(why_stream_failed(&session, &conn, e).await),
        },
        why = restart::ended(&session, c, report, &restarts) => Err(failure::explain(why)),
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    for w in watchers {
        w.abort();
    }
    // Close QUIC first and let it drain (it repeats the close to any packet
    // of the peer's meanwhile), so the peer sees a clean end, or our error
    // at once instead of waiting for consent to expire; only then the
    // session, which deletes TURN allocations (a close sent after that
    // would never be relayed).
    match &r {
        Ok(()) => conn.close(VarInt::from_u32(CLOSE_NORMAL), b"done"),
        Err(e) => {
            let reason = format!("{e:#}");
            let reason = truncate_utf8(&reason, MAX_CLOSE_REASON);
            conn.close(VarInt::from_u32(CLOSE_ERROR), reason.as_bytes());
        }
    }
    session.wait_idle().await;
    session.close();
    session.wait_idle().await;
    r
}

/// The data stream failed with `e`: when the connection was closed here,
/// the session knows why (consent lost, RFC 7675, on which path; or the
/// relay under it lost), which says more than the stream's error.
async fn why_stream_failed(
    session: &Session,
    conn: &quinn::Connection,
    e: anyhow::Error,
) -> anyhow::Error {
    let ours = matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::LocallyClosed | quinn::ConnectionError::TimedOut)
    );
    if !ours {
        return e;
    }
    match tokio::time::timeout(WHY_GRACE, session.closed()).await {
        Ok(why @ SessionError::ConsentLost { .. }) => anyhow!("{} ({e:#})", failure::explain(why)),
        // The stream then only timed out; the relay is the news.
        Ok(why @ SessionError::RelayLost { .. }) => failure::explain(why),
        _ => e,
    }
}

/// Print our description for the peer, and write it to `--desc-out`.
fn publish(command: &str, c: &Common, local: &Description) -> anyhow::Result<()> {
    let text = signal::render(local, c.json);
    let how = match command {
        "listen" => "run `natkit connect DESCRIPTION` on the peer, or paste it into a waiting `natkit connect`",
        "send" => "run `natkit receive` on the peer and paste it there",
        "receive" => "paste it into the terminal of `natkit send` on the peer",
        _ => "paste it into the terminal of `natkit listen` on the peer",
    };
    match &c.desc_out {
        Some(f) => {
            signal::write_atomic(f, &text)?;
            eprintln!(
                "natkit: this side's description ({how}; also written to {}):",
                f.display()
            );
        }
        None => eprintln!("natkit: this side's description ({how}):"),
    }
    eprintln!("{text}");
    Ok(())
}

/// The data stream: the controlling side (the QUIC client) opens it. Each
/// side writes its word first, so the stream reaches the peer even before
/// any data, and checks the peer's.
async fn stream(
    conn: &quinn::Connection,
    role: Role,
    work: &Work,
) -> anyhow::Result<(SendStream, RecvStream)> {
    let (mut send, mut recv) = match role {
        Role::Controlling => conn.open_bi().await,
        Role::Controlled => conn.accept_bi().await,
    }
    .map_err(|e| anyhow!(failure::quic(&e)))?;
    send.write_all(work.word())
        .await
        .map_err(pipe::write_error)?;
    let mut word = [0u8; 4];
    recv.read_exact(&mut word).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(e) => pipe::read_error(e),
        quinn::ReadExactError::FinishedEarly(_) => {
            anyhow!("the peer ended the stream before saying what it does")
        }
    })?;
    let (want, who) = work.wants();
    if &word != want {
        let theirs = match &word {
            b"NKP1" => "natkit listen/connect",
            b"NKS1" => "natkit send",
            b"NKR1" => "natkit receive",
            _ => "not a natkit peer-to-peer command of this version",
        };
        bail!("the peer runs {theirs}, but this side needs {who} on the other end");
    }
    Ok((send, recv))
}

async fn send_file(
    mut send: SendStream,
    mut recv: RecvStream,
    mut file: tokio::fs::File,
    size: u64,
    name: &str,
    report: &Report,
) -> anyhow::Result<()> {
    let mut progress = progress::Progress::new("sending", size);
    let r = transfer::send(
        &mut send,
        name,
        &mut file,
        size,
        &mut progress,
        &report.sent,
    )
    .await;
    progress.clear();
    let hash = r?;
    pipe::finish(&mut send).await?;
    let mut verdict = Vec::new();
    (&mut recv)
        .take(transfer::MAX_VERDICT as u64)
        .read_to_end(&mut verdict)
        .await
        .context("the receiver's answer did not arrive")?;
    transfer::read_verdict(&verdict)?;
    eprintln!(
        "natkit: sent {name}: {}, sha256 {}, verified by the receiver",
        progress.summary(),
        transfer::hex(&hash)
    );
    Ok(())
}

async fn receive_file(
    mut send: SendStream,
    mut recv: RecvStream,
    out: &transfer::Output,
    report: &Report,
) -> anyhow::Result<()> {
    let mut progress = None;
    let r = transfer::receive(&mut recv, out, &report.received, &mut progress).await;
    if let Some(p) = &progress {
        p.clear();
    }
    // Tell the sender either way; a lost answer only costs it a clear
    // message, so its failure is not ours.
    if send.write_all(&transfer::verdict(&r)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), pipe::finish(&mut send)).await;
    }
    let got = r?;
    let summary = progress.map(|p| p.summary()).unwrap_or_default();
    eprintln!(
        "natkit: received {}: {summary}, sha256 {} verified",
        got.path.display(),
        transfer::hex(&got.hash)
    );
    debug_assert_eq!(got.size, report.received.load(Ordering::Relaxed));
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary (reasons and verdicts travel with a byte limit).
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    let cut = (0..=s.len().min(max))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..cut]
}
