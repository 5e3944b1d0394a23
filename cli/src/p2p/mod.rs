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
mod cancel;
mod code;
mod failure;
mod interrupt;
mod pipe;
mod progress;
mod rendezvous;
mod report;
mod restart;
mod signal;
mod transfer;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
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

/// Ctrl-C before the peer's description came.
const INTERRUPTED_WAITING: &str = "while waiting for the peer's description";

/// The error of a Ctrl-C `what` (`while ...`).
fn interrupted(what: &str) -> anyhow::Error {
    failure::kinded("interrupted", format!("interrupted (Ctrl-C) {what}"))
}

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
    /// The short code `natkit listen --turn ...` printed (with the same
    /// --turn), or the peer's description (the nk1. text or its JSON).
    /// Without it, and without --remote, the first line of stdin is read.
    #[arg(value_name = "CODE|DESCRIPTION")]
    description: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Flags of `natkit send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The files and folders to send, in one session (the receiver
    /// accepts the list, then each is resumable and verified on its
    /// own); `-` sends stdin (alone, as "stdin", or --name).
    #[arg(value_name = "FILE|FOLDER|-", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The name to offer one file or folder under (default: its own;
    /// "stdin" for -).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Flags of `natkit receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiveArgs {
    /// The short code `natkit send FILE --turn ...` printed (with the same
    /// --turn), or the sender's description. Without it, and without
    /// --remote, the description is read from stdin.
    #[arg(value_name = "CODE|DESCRIPTION")]
    code: Option<String>,
    /// Where to write the file: a file name, or a directory to put it in
    /// under the sender's name (an existing one, or any path ending in /,
    /// made if missing); `-` writes to stdout. Default: the sender's name
    /// here. An existing file is never replaced without --force (in a
    /// folder, files already there and the same are skipped).
    #[arg(long, short = 'o', value_name = "PATH")]
    output: Option<PathBuf>,
    /// Replace a file that exists where the received file goes.
    #[arg(long)]
    force: bool,
    /// Accept the sender's file without asking (by default its name and
    /// size are shown and a "y" on stdin accepts it before data flows).
    #[arg(long, short = 'y')]
    yes: bool,
    #[command(flatten)]
    common: Common,
}

/// What the command does once connected.
enum Work {
    Pipe,
    Send(transfer::Outgoing),
    Receive(transfer::Output, bool),
}

impl Work {
    /// The word each side writes first on the stream: it tells the other
    /// side what this one does, so `send` facing `connect` fails with a
    /// clear message instead of misreading data.
    fn word(&self) -> &'static [u8; 4] {
        match self {
            Work::Pipe => b"NKP1",
            Work::Send(_) => b"NKS1",
            Work::Receive(..) => b"NKR1",
        }
    }

    /// Whether stdout carries the peer's data (so `--json` puts its
    /// document on stderr).
    fn stdout_is_data(&self) -> bool {
        match self {
            Work::Pipe => true,
            Work::Send(_) => false,
            Work::Receive(out, _) => out.is_stdout(),
        }
    }

    /// Whether stdin carries data after the description (so a bad line
    /// cannot be taken for another paste).
    fn data_on_stdin(&self) -> bool {
        match self {
            Work::Pipe => true,
            Work::Send(o) => o.reads_stdin(),
            Work::Receive(..) => false,
        }
    }

    /// The word the peer must write for this side's work.
    fn wants(&self) -> (&'static [u8; 4], &'static str) {
        match self {
            Work::Pipe => (b"NKP1", "natkit listen / natkit connect"),
            Work::Send(_) => (b"NKR1", "natkit receive"),
            Work::Receive(..) => (b"NKS1", "natkit send FILE"),
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
    // Checked (and folders walked) before any socket is opened.
    let out = transfer::Outgoing::prepare_all(&a.files, a.name.as_deref())
        .map_err(|e| early_failure(a.common.json, false, e))?;
    for s in &out.skipped {
        errln!("warning: not sent: {s}");
    }
    run("send", Role::Controlled, a.common, None, Work::Send(out))
}

/// Run `natkit receive`.
pub fn receive(a: ReceiveArgs) -> anyhow::Result<()> {
    let out = transfer::Output {
        path: a.output,
        force: a.force,
    };
    run(
        "receive",
        Role::Controlling,
        a.common,
        a.code,
        Work::Receive(out, a.yes),
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
    let stdout_is_data = work.stdout_is_data();
    let r = rt.block_on(async {
        // Before anything is allocated: from here every wait ends on
        // Ctrl-C and cleans up.
        interrupt::listen();
        session_main(command, role, &common, given, work, &report).await
    });
    report.finish(r.as_ref().err());
    if common.json {
        outcome(&report.outcome(r.as_ref().err()), stdout_is_data);
    }
    // A read of stdin may still be blocked in tokio's blocking pool (the
    // peer vanished while the terminal was quiet): do not wait for it.
    rt.shutdown_background();
    r
}

/// With `--json`: how the run ended, one document (see
/// [`Report::outcome`]): on stdout, or where stdout carries the peer's
/// data (listen, connect, `receive -o -`) as the last line of stderr.
fn outcome(doc: &serde_json::Value, stdout_is_data: bool) {
    if stdout_is_data {
        crate::output::last_err_line(doc.to_string());
    } else {
        outln!("{doc:#}");
    }
}

/// A failure before the run started (nothing to report but the error):
/// with `--json` its document, as [`outcome`] writes it.
fn early_failure(json: bool, stdout_is_data: bool, e: anyhow::Error) -> anyhow::Error {
    if json {
        let doc = serde_json::json!({
            "ok": false,
            "error": { "kind": failure::kind(&e), "message": format!("{e:#}") },
        });
        outcome(&doc, stdout_is_data);
    }
    e
}

/// How the descriptions travel.
enum Exchange {
    /// Copy-paste, files or an argument (`Some`: given on the command line).
    Paste(Option<Description>),
    /// Print a short code and wait for the other side to use it.
    Wait,
    /// Use the other side's short code.
    Knock(code::ShortCode),
}

impl Exchange {
    /// What the command line asks for: a code given, or printed by a
    /// waiting side that has a relay and no files to exchange through.
    fn of(command: &str, c: &Common, given: Option<String>) -> anyhow::Result<Exchange> {
        if let Some(g) = given {
            if code::ShortCode::looks_like_one(&g) {
                let code = code::ShortCode::parse(&g)
                    .map_err(|e| failure::kinded("bad_code", format!("{e:#}")))?;
                if c.relay.turn.is_empty() {
                    return Err(failure::kinded(
                        "usage",
                        "a short code needs the relay it was made on: add --turn with the same \
                         server (and credentials) as the other side",
                    ));
                }
                return Ok(Exchange::Knock(code));
            }
            let d = Description::parse_any(&g).map_err(RemoteError::Unusable)?;
            signal::check_usable(&d)?;
            return Ok(Exchange::Paste(Some(d)));
        }
        let waits = matches!(command, "send" | "listen");
        if waits && !c.relay.turn.is_empty() && !c.paste && c.remote.is_none() {
            return Ok(Exchange::Wait);
        }
        Ok(Exchange::Paste(None))
    }
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
    let exchange = Exchange::of(command, c, given)?;
    if let Work::Receive(out, _) = &work {
        out.check()
            .map_err(|e| failure::kinded("usage", format!("{e:#}")))?;
    }

    let session = c.builder(role)?.build().await.map_err(failure::explain)?;
    let events = session.events();

    // The data of listen/connect is stdin; its first line may be the
    // description.
    let mut stdin = BufReader::with_capacity(64 << 10, tokio::io::stdin());
    let mut linger = None;
    // Everything up to a connection. Gathering and ICE end on Ctrl-C here;
    // the exchange of descriptions ends on it by itself (the rendezvous
    // deletes its own allocation first). On any failure the session's TURN
    // allocations (Refresh with lifetime 0, RFC 8656 §7) and its port
    // mapping are deleted below, before the process exits.
    let setup = async {
        let local = tokio::select! {
            d = session.local_description() => d,
            _ = interrupt::pressed() => return Err(interrupted("while gathering candidates")),
        };
        for p in session.server_problems() {
            errln!("warning: {p}");
        }
        let remote =
            exchange_descriptions(command, c, exchange, &work, &local, &mut stdin, &mut linger)
                .await?;
        let t0 = Instant::now();
        let remote_ufrag = remote.ufrag.clone();
        let limit = c.timeout + Duration::from_secs(10);
        let conn = tokio::select! {
            r = tokio::time::timeout(limit, session.connect(remote)) => match r {
                Ok(r) => r.map_err(|e| failure::explain_with(e, &c.servers()))?,
                // The session bounds itself by --timeout; this is the backstop.
                Err(_) => {
                    return Err(failure::kinded(
                        "timeout",
                        format!(
                            "timeout: no connection within --timeout {:.0} s, and the session \
                             did not give up by itself",
                            c.timeout.as_secs_f64()
                        ),
                    ))
                }
            },
            _ = interrupt::pressed() => return Err(interrupted("while connecting (ICE)")),
        };
        Ok((conn, t0.elapsed(), remote_ufrag))
    };
    let (conn, took, remote_ufrag) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            // The rendezvous allocation (if still answering repeats) and
            // the session's go together; each is bounded (about 2 s), and
            // takes a round trip on a live relay.
            let rendezvous = async {
                if let Some(l) = linger.take() {
                    l.finish().await;
                }
            };
            session.close();
            tokio::join!(rendezvous, session.wait_idle());
            return Err(e);
        }
    };
    if let Some(l) = linger.take() {
        l.finish().await;
    }
    let restarts = Arc::new(Restarts::default());
    let path = session.path();
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
        let (send, recv, peer_took) = stream(&conn, session.role(), &work, took).await?;
        // Each side counts from when it had the other's description; the
        // later of the two moments is when both were in, so the smaller
        // count is the connect time (a copy-paste side's count includes
        // the other person's typing).
        let took = took.min(peer_took);
        report.connect_time(took);
        match &path {
            Some(p) => errln!("natkit: connected in {} ms over {p}", took.as_millis()),
            None => errln!("natkit: connected in {} ms", took.as_millis()),
        }
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
                errln!(
                    "natkit: done: sent {} bytes, received {} bytes",
                    report.sent.load(Ordering::Relaxed),
                    report.received.load(Ordering::Relaxed)
                );
                Ok(())
            }
            Work::Send(out) => send_file(send, recv, &out, &mut stdin, report).await,
            Work::Receive(out, yes) => {
                let accept = if yes {
                    transfer::Accept::Always
                } else {
                    transfer::Accept::Ask(&mut stdin)
                };
                receive_file(send, recv, &out, accept, report).await
            }
        }
    };
    let r = tokio::select! {
        r = data => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(why_stream_failed(&session, &conn, e).await),
        },
        why = restart::ended(&session, c, report, &restarts) => Err(failure::explain(why)),
        why = cancel::heard(&conn) => Err(why),
        _ = interrupt::pressed() => {
            let reason = format!("natkit {command} was interrupted (Ctrl-C)");
            cancel::tell(&conn, &reason).await;
            Err(failure::kinded("interrupted", "interrupted (Ctrl-C); the peer was told"))
        }
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

/// Exchange descriptions as `exchange` says: print ours (or a short code)
/// and get the peer's. Ctrl-C ends each wait with an error; the
/// rendezvous of a short code deletes its allocation first, or leaves it
/// in `linger` to answer the peer's repeats until connected.
async fn exchange_descriptions(
    command: &'static str,
    c: &Common,
    exchange: Exchange,
    work: &Work,
    local: &Description,
    stdin: &mut BufReader<tokio::io::Stdin>,
    linger: &mut Option<rendezvous::Linger>,
) -> anyhow::Result<Description> {
    Ok(match exchange {
        Exchange::Paste(Some(d)) => {
            publish(command, c, local)?;
            signal::check_not_ours(&d, local)?;
            d
        }
        Exchange::Paste(None) => {
            publish(command, c, local)?;
            let d = if let Some(path) = &c.remote {
                let d = tokio::select! {
                    r = signal::from_file(path, c.wait) => r?,
                    _ = interrupt::pressed() => return Err(interrupted(INTERRUPTED_WAITING)),
                };
                signal::check_not_ours(&d, local)?;
                d
            } else {
                // A bad paste is asked again where stdin is only for the
                // description (a terminal, or send/receive); in a pipe of
                // listen/connect the lines after it are data.
                let again = std::io::stdin().is_terminal() || !work.data_on_stdin();
                if std::io::stdin().is_terminal() {
                    errln!("natkit: waiting for you to paste the peer's description (then Enter):");
                }
                // Ctrl-C while waiting for a paste: the session's TURN
                // allocations are deleted below.
                tokio::select! {
                    r = signal::from_first_line(stdin, c.wait, local, again) => r?,
                    _ = interrupt::pressed() => return Err(interrupted(INTERRUPTED_WAITING)),
                }
            };
            errln!(
                "natkit: have the peer's description; connecting (waiting for the peer to \
                 paste this side's, if it has not yet)"
            );
            d
        }
        Exchange::Wait => {
            let (server, tls) = first_turn(c)?;
            let mut rv = rendezvous::Rendezvous::open(&server, tls, c.timeout).await?;
            rv.open_door().await?;
            let code = code::ShortCode::new(rv.port());
            let other = match command {
                "send" => "receive",
                _ => "connect",
            };
            let wait = c.wait.as_secs_f64();
            errln!("natkit: code: {code}");
            errln!(
                "natkit: on the other machine run `natkit {other} {code}` with the same \
                 --turn server and credentials; waiting for it (at most --wait {wait:.0} s)"
            );
            let (d, l) = rv.wait_for_knock(&code, local, c.wait).await?;
            *linger = Some(l);
            d
        }
        Exchange::Knock(code) => {
            let (server, tls) = first_turn(c)?;
            let rv = rendezvous::Rendezvous::open(&server, tls, c.timeout).await?;
            errln!("natkit: exchanging descriptions through the relay under the code");
            let (d, l) = rv.knock(&code, local).await?;
            *linger = Some(l);
            d
        }
    })
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

/// The first --turn server: the rendezvous of a short code.
fn first_turn(
    c: &Common,
) -> anyhow::Result<(natkit_ice::TurnServer, Option<Arc<rustls::ClientConfig>>)> {
    let (servers, tls) = c.turn_servers()?;
    let first = servers
        .into_iter()
        .next()
        .context("a short code needs a relay: add --turn")?;
    Ok((first, tls))
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
            errln!(
                "natkit: this side's description ({how}; also written to {}):",
                f.display()
            );
        }
        None => errln!("natkit: this side's description ({how}):"),
    }
    errln!("{text}");
    Ok(())
}

/// The data stream: the controlling side (the QUIC client) opens it. Each
/// side writes its word first, so the stream reaches the peer even before
/// any data, and checks the peer's; then how long it took to connect from
/// its side (microseconds, u64), returned with the streams.
async fn stream(
    conn: &quinn::Connection,
    role: Role,
    work: &Work,
    took: Duration,
) -> anyhow::Result<(SendStream, RecvStream, Duration)> {
    let (mut send, mut recv) = match role {
        Role::Controlling => conn.open_bi().await,
        Role::Controlled => conn.accept_bi().await,
    }
    .map_err(|e| failure::quic_error(&e))?;
    let mut hello = work.word().to_vec();
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    hello.extend_from_slice(&us.to_be_bytes());
    send.write_all(&hello).await.map_err(pipe::write_error)?;
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
        return Err(failure::kinded(
            "mismatch",
            format!("the peer runs {theirs}, but this side needs {who} on the other end"),
        ));
    }
    let mut us = [0u8; 8];
    recv.read_exact(&mut us)
        .await
        .map_err(|_| anyhow!("the peer ended the stream before saying what it does"))?;
    let peer_took = Duration::from_micros(u64::from_be_bytes(us));
    Ok((send, recv, peer_took))
}

async fn send_file<I: tokio::io::AsyncRead + Unpin>(
    mut send: SendStream,
    mut recv: RecvStream,
    out: &transfer::Outgoing,
    stdin: &mut I,
    report: &Report,
) -> anyhow::Result<()> {
    let name = &out.offer.name;
    let n = out.offer.entries.len();
    match out.offer.kind {
        transfer::Kind::Many => {
            errln!("natkit: offered {name} ({n} entries); waiting for the receiver to accept them")
        }
        _ => errln!("natkit: offered {name}; waiting for the receiver to accept it"),
    }
    let mut progress = None;
    let r = transfer::send(
        &mut send,
        &mut recv,
        out,
        stdin,
        &mut progress,
        &report.sent,
    )
    .await;
    if let Some(p) = &progress {
        p.clear();
    }
    let sent = r?;
    pipe::finish(&mut send).await?;
    let mut verdict = Vec::new();
    (&mut recv)
        .take(transfer::MAX_VERDICT as u64)
        .read_to_end(&mut verdict)
        .await
        .context("the receiver's answer did not arrive")?;
    transfer::read_verdict(&verdict)?;
    let summary = progress.map(|p| p.summary()).unwrap_or_default();
    match sent.hash {
        Some(h) => errln!(
            "natkit: sent {name}: {summary}, sha256 {}, verified by the receiver",
            transfer::hex(&h)
        ),
        None if out.offer.kind == transfer::Kind::Many => errln!(
            "natkit: sent {name}: {} files, {summary}, each verified by the receiver",
            sent.files
        ),
        None => errln!(
            "natkit: sent folder {name}: {} files, {summary}, each verified by the receiver",
            sent.files
        ),
    }
    Ok(())
}

async fn receive_file(
    mut send: SendStream,
    mut recv: RecvStream,
    out: &transfer::Output,
    accept: transfer::Accept<'_>,
    report: &Report,
) -> anyhow::Result<()> {
    let mut progress = None;
    let mut stdout = tokio::io::stdout();
    let r = transfer::receive(
        &mut recv,
        &mut send,
        out,
        accept,
        &mut stdout,
        &report.received,
        &mut progress,
    )
    .await;
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
    let same = match got.same {
        0 => String::new(),
        n => format!(" ({n} already here and the same)"),
    };
    match got.hash {
        Some(h) => errln!(
            "natkit: received {} ({} bytes): {summary}, sha256 {} verified",
            got.path.display(),
            got.size,
            transfer::hex(&h)
        ),
        None if got.many => errln!(
            "natkit: received {} files into {}, {} bytes{same}: {summary}, each verified",
            got.files,
            got.path.display(),
            got.size
        ),
        None => errln!(
            "natkit: received folder {}: {} files, {} bytes{same}: {summary}, each verified",
            got.path.display(),
            got.files,
            got.size
        ),
    }
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
