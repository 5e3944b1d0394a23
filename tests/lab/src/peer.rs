//! Two natkit peers in two sites: `natkit listen` (controlled side, QUIC
//! server) and `natkit connect` (controlling side, QUIC client), signalling
//! through files in the lab's directory, piping data both ways, each
//! writing a JSON report of the path it used.
//!
//! The command-line interface driven here (issue 4):
//!
//! ```text
//! natkit listen|connect [--stun HOST:PORT]... [--turn turn:HOST:PORT?transport=udp|tcp | turns:HOST:PORT]...
//!     [--turn-user U --turn-password P] [--ca PEM] [--relay-only] [--desc-out FILE]
//!     [--remote FILE] [--report FILE] [--timeout SECS] [--wait SECS] [--consent-timeout SECS]
//!     [--degraded-after SECS]
//! ```
//!
//! Each side writes its description to `--desc-out`, polls `--remote` for
//! the other's, connects, copies its stdin to the peer's stdout over a QUIC
//! stream, and writes its report (path kind host/srflx/prflx/relay, local
//! and remote address, rtt_ms, connect_ms) to `--report`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{LabError, Result};
use crate::lab::{Lab, Site};
use crate::process::Process;

/// Which end of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `natkit listen`: ICE controlled, QUIC server.
    Listen,
    /// `natkit connect`: ICE controlling, QUIC client.
    Connect,
}

impl Role {
    /// The subcommand.
    pub fn command(self) -> &'static str {
        match self {
            Role::Listen => "listen",
            Role::Connect => "connect",
        }
    }
}

/// How a peer reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS.
    Tls,
}

/// What a peer is given.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Use the lab's STUN server.
    pub stun: bool,
    /// TURN transports to gather relayed candidates over (one URL each).
    pub turn: Vec<TurnTransport>,
    /// Only relayed candidates.
    pub relay_only: bool,
    /// `--timeout`: how long the peer may take to connect once it has the
    /// other's description (also its `--wait` for that description).
    pub timeout: Duration,
    /// `--consent-timeout`: how long without answered consent checks
    /// before the peer is declared gone (RFC 7675; natkit's default 30 s).
    pub consent_timeout: Option<Duration>,
    /// `--degraded-after`: how long without answered checks before the
    /// path counts as degraded (and the connecting side restarts ICE).
    pub degraded_after: Option<Duration>,
    /// Any further flags.
    pub extra: Vec<String>,
}

impl PeerOptions {
    /// STUN plus TURN over UDP, or over TCP and TLS for a site where UDP
    /// does not get out.
    pub fn for_site(site: &Site) -> PeerOptions {
        let turn = if site.kind.udp_allowed() {
            vec![TurnTransport::Udp]
        } else {
            vec![TurnTransport::Tcp, TurnTransport::Tls]
        };
        PeerOptions {
            stun: site.kind.udp_allowed(),
            turn,
            relay_only: false,
            timeout: Duration::from_secs(30),
            consent_timeout: None,
            degraded_after: None,
            extra: Vec::new(),
        }
    }

    /// The command line after the subcommand.
    pub fn args(&self, lab: &Lab) -> Vec<String> {
        let s = lab.servers();
        let mut a = Vec::new();
        if self.stun {
            a.push("--stun".to_string());
            a.push(s.stun.to_string());
        }
        for t in &self.turn {
            a.push("--turn".into());
            a.push(match t {
                TurnTransport::Udp => format!("turn:{}?transport=udp", s.turn),
                TurnTransport::Tcp => format!("turn:{}?transport=tcp", s.turn),
                TurnTransport::Tls => format!("turns:{}", s.turn_tls),
            });
        }
        if !self.turn.is_empty() {
            a.extend([
                "--turn-user".to_string(),
                s.user.clone(),
                "--turn-password".into(),
                s.password.clone(),
            ]);
            if self.turn.contains(&TurnTransport::Tls) {
                a.push("--ca".into());
                a.push(s.ca.display().to_string());
            }
        }
        if self.relay_only {
            a.push("--relay-only".into());
        }
        let secs = self.timeout.as_secs().max(1).to_string();
        a.extend(["--timeout".to_string(), secs.clone(), "--wait".into(), secs]);
        if let Some(c) = self.consent_timeout {
            a.push("--consent-timeout".into());
            a.push(format!("{}", c.as_secs_f64()));
        }
        if let Some(d) = self.degraded_after {
            a.push("--degraded-after".into());
            a.push(format!("{}", d.as_secs_f64()));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// What a peer's `--report` says, the fields the lab reads. The layout is
/// the one `natkit`'s `cli/src/p2p/report.rs` writes: the selected path's
/// fields flat at the top level, absent until a path is selected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Path kind: host, srflx, prflx or relay.
    pub path: Option<String>,
    /// Our address on the selected pair.
    pub local: Option<String>,
    /// The peer's address on the selected pair.
    pub remote: Option<String>,
    /// Round-trip time of the checks.
    pub rtt_ms: Option<f64>,
    /// Time from start to connected.
    pub connect_ms: Option<f64>,
    /// The whole report.
    #[serde(skip_deserializing)]
    pub raw: serde_json::Value,
}

impl Report {
    /// Read the report's JSON text.
    pub fn parse(text: &str) -> serde_json::Result<Report> {
        let raw: serde_json::Value = serde_json::from_str(text)?;
        let mut r: Report = serde_json::from_value(raw.clone())?;
        r.raw = raw;
        Ok(r)
    }

    /// Whether the path goes through the relay.
    pub fn relayed(&self) -> bool {
        self.path.as_deref() == Some("relay")
    }
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a peer's stdout delivered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Received {
    /// Bytes read.
    pub bytes: u64,
    /// SHA-256 of them, hex.
    pub sha256: String,
}

/// One running peer; killed on drop.
#[derive(Debug)]
pub struct Peer {
    /// Listen or connect.
    pub role: Role,
    /// Site name.
    pub site: String,
    process: Process,
    stdin: Option<ChildStdin>,
    progress: Arc<AtomicU64>,
    reader: Option<JoinHandle<Received>>,
    report_path: PathBuf,
}

impl Peer {
    /// Start `natkit <role>` in `site`'s host, with `dir` holding the
    /// signalling files (`listen.desc`, `connect.desc`) and reports.
    pub fn start(
        lab: &Lab,
        site: &Site,
        role: Role,
        opts: &PeerOptions,
        dir: &Path,
    ) -> Result<Peer> {
        let me = role.command();
        let other = match role {
            Role::Listen => "connect",
            Role::Connect => "listen",
        };
        let report_path = dir.join(format!("{me}.report.json"));
        let mut c = site.host_ns().command(&lab.binaries().natkit)?;
        c.arg(me)
            .args(opts.args(lab))
            .arg("--desc-out")
            .arg(dir.join(format!("{me}.desc")))
            .arg("--remote")
            .arg(dir.join(format!("{other}.desc")))
            .arg("--report")
            .arg(&report_path);
        let log = dir.join(format!("{me}.log"));
        let err = std::fs::File::create(&log)
            .map_err(|e| LabError::io(format!("creating {}", log.display()), e))?;
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .env("RUST_LOG", "info");
        let mut process = Process::spawn(&format!("natkit {me} in {}", site.name), c)?;
        process.set_log(&log);
        let stdin = process.child_mut().stdin.take();
        let mut stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| LabError::Other("no stdout pipe".into()))?;
        let progress = Arc::new(AtomicU64::new(0));
        let counter = progress.clone();
        let reader = std::thread::spawn(move || {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut n_total = 0u64;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                n_total += n as u64;
                counter.store(n_total, Ordering::Relaxed);
            }
            Received {
                bytes: n_total,
                sha256: hex(&h.finalize()),
            }
        });
        Ok(Peer {
            role,
            site: site.name.clone(),
            process,
            stdin,
            progress,
            reader: Some(reader),
            report_path,
        })
    }

    /// Write `data` to the peer's stdin (blocks while the pipe is full).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let Some(s) = self.stdin.as_mut() else {
            return Err(LabError::Other("stdin already closed".into()));
        };
        s.write_all(data)
            .map_err(|e| LabError::io(format!("writing to {}'s stdin", self.process.name()), e))
    }

    /// Close stdin: the end of what this side sends.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Take stdin, to feed it from another thread.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Bytes received on stdout so far.
    pub fn received_so_far(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Wait for exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.process.wait_for(limit)
    }

    /// Kill the process (peer loss).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// What stdout delivered; call after the process exited (or was killed).
    pub fn received(&mut self) -> Received {
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }

    /// The report, if written.
    pub fn report(&self) -> Option<Report> {
        let text = std::fs::read_to_string(&self.report_path).ok()?;
        Report::parse(&text).ok()
    }

    /// The last lines of stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// A listen/connect pair sharing a signalling directory.
#[derive(Debug)]
pub struct Pair {
    /// `natkit listen`.
    pub listen: Peer,
    /// `natkit connect`.
    pub connect: Peer,
    /// The signalling directory.
    pub dir: PathBuf,
}

impl Pair {
    /// Start `listen` in site `a` and `connect` in site `b`; `id` names the
    /// pair's directory under the lab's.
    pub fn start(
        lab: &Lab,
        a: &Site,
        a_opts: &PeerOptions,
        b: &Site,
        b_opts: &PeerOptions,
        id: &str,
    ) -> Result<Pair> {
        let dir = lab.dir().join("pairs").join(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let listen = Peer::start(lab, a, Role::Listen, a_opts, &dir)?;
        let connect = Peer::start(lab, b, Role::Connect, b_opts, &dir)?;
        Ok(Pair {
            listen,
            connect,
            dir,
        })
    }
}

/// The outcome of one transfer between a pair.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// Whether both processes exited with success.
    pub exited_ok: bool,
    /// Whether each side received exactly what the other sent.
    pub data_ok: bool,
    /// The listen side's report.
    pub listen: Option<Report>,
    /// The connect side's report.
    pub connect: Option<Report>,
    /// Wall time from start to both exits.
    pub wall_ms: f64,
    /// What went wrong, with the peers' last log lines.
    pub error: Option<String>,
}

impl Transfer {
    /// Whether either side's report says the path is relayed.
    pub fn relayed(&self) -> bool {
        [&self.listen, &self.connect]
            .iter()
            .any(|r| r.as_ref().is_some_and(Report::relayed))
    }

    /// The path kind (the connect side's, or the listen side's).
    pub fn path(&self) -> Option<String> {
        if self.relayed() {
            return Some("relay".into());
        }
        self.connect
            .as_ref()
            .and_then(|r| r.path.clone())
            .or_else(|| self.listen.as_ref().and_then(|r| r.path.clone()))
    }
}

/// Write `data` to `stdin` in 16 chunks spread over `spread` (all at once
/// when zero), then close it.
fn feed(mut stdin: ChildStdin, data: &[u8], spread: Duration) {
    let chunks = if spread.is_zero() { 1 } else { 16 };
    let size = data.len().div_ceil(chunks).max(1);
    for (i, chunk) in data.chunks(size).enumerate() {
        if i > 0 {
            std::thread::sleep(spread / chunks as u32);
        }
        // A peer that dies early closes the pipe: its exit status and log
        // tell why.
        if stdin.write_all(chunk).is_err() {
            return;
        }
    }
}

/// Feed `to_listen` and `to_connect` to the pair's stdins (spread over
/// `spread`, so the session lives that long and ICE can settle on its best
/// pair), close them, wait for both to exit (at most `limit`), and check
/// what each side received.
pub fn transfer(
    mut pair: Pair,
    to_listen: &[u8],
    to_connect: &[u8],
    spread: Duration,
    limit: Duration,
) -> Transfer {
    let t0 = Instant::now();
    let want_at_connect = sha256_hex(to_listen);
    let want_at_listen = sha256_hex(to_connect);
    let mut errors = Vec::new();
    std::thread::scope(|s| {
        for (peer, data) in [
            (&mut pair.listen, to_listen),
            (&mut pair.connect, to_connect),
        ] {
            if let Some(stdin) = peer.take_stdin() {
                s.spawn(move || feed(stdin, data, spread));
            }
        }
        let end = t0 + limit;
        for peer in [&mut pair.listen, &mut pair.connect] {
            let left = end.saturating_duration_since(Instant::now());
            match peer.wait(left) {
                Some(st) if st.success() => {}
                Some(st) => errors.push(format!(
                    "{} in {} exited with {st}:\n{}",
                    peer.role.command(),
                    peer.site,
                    peer.log_tail(15)
                )),
                None => {
                    errors.push(format!(
                        "{} in {} still running after {limit:?}:\n{}",
                        peer.role.command(),
                        peer.site,
                        peer.log_tail(15)
                    ));
                    peer.kill();
                }
            }
        }
    });
    let exited_ok = errors.is_empty();
    let at_listen = pair.listen.received();
    let at_connect = pair.connect.received();
    let data_ok = at_listen.sha256 == want_at_listen && at_connect.sha256 == want_at_connect;
    if !data_ok {
        errors.push(format!(
            "data: listen got {} bytes (sha256 {}), want {} bytes ({want_at_listen}); connect got {} bytes ({}), want {} bytes ({want_at_connect})",
            at_listen.bytes,
            at_listen.sha256,
            to_connect.len(),
            at_connect.bytes,
            at_connect.sha256,
            to_listen.len()
        ));
    }
    Transfer {
        exited_ok,
        data_ok,
        listen: pair.listen.report(),
        connect: pair.connect.report(),
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        error: (!errors.is_empty()).then(|| errors.join("\n")),
    }
}

/// `n` random bytes.
pub fn payload(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read_in_the_cli_layout() {
        let text = r#"{"command":"connect","role":"controlling","path":"srflx",
            "local":"192.0.2.2:4000","local_kind":"host","remote":"192.0.2.20:5000",
            "remote_kind":"srflx","rtt_ms":1.5,"connect_ms":210.25,"bytes_sent":5,
            "bytes_received":0,"path_changes":[],"restarts_started":0,
            "restarts_answered":0,"status":"ok","error":null}"#;
        let r = Report::parse(text).unwrap();
        assert_eq!(r.path.as_deref(), Some("srflx"));
        assert_eq!(r.local.as_deref(), Some("192.0.2.2:4000"));
        assert_eq!(r.remote.as_deref(), Some("192.0.2.20:5000"));
        assert_eq!((r.rtt_ms, r.connect_ms), (Some(1.5), Some(210.25)));
        assert_eq!(r.raw["status"], "ok");
        assert!(!r.relayed());
    }

    #[test]
    fn a_report_before_connecting_has_no_path() {
        let text = r#"{"command":"listen","role":"controlled","connect_ms":null,
            "bytes_sent":0,"bytes_received":0,"path_changes":[],"restarts_started":0,
            "restarts_answered":0,"status":"error","error":"timeout"}"#;
        let r = Report::parse(text).unwrap();
        assert_eq!((r.path, r.remote, r.connect_ms), (None, None, None));
        assert_eq!(r.raw["error"], "timeout");
        // A path given in another layout is not this report.
        assert!(Report::parse(r#"{"path":{"kind":"relay"}}"#).is_err());
        assert!(Report::parse(r#"{"path":"relay"}"#).unwrap().relayed());
    }
}
