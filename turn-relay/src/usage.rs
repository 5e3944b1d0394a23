//! Usage records as JSON lines, for billing and abuse handling: one line
//! when an allocation ends, and one every `usage-interval` while a long
//! one lives (`"end": null`, totals so far). Written by a thread of its
//! own: the shards hand records over a bounded queue once per poll round
//! and never wait for the disk (a full queue drops the record and counts
//! it). The file is appended to and reopened on SIGHUP, so logrotate can
//! move it away. Records carry the username, addresses and counters, never
//! a password, key or secret.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use natkit_proto::turn::server::{UsageRecord, Via};
use natkit_runtime::time::rfc3339_millis;
use prometheus::IntCounter;
use serde::Serialize;
use tracing::{error, info, warn};

/// Records waiting for the writer. A stalled disk fills it; then records
/// are dropped (and counted) rather than held in memory without bound.
const QUEUE: usize = 65_536;

/// Where records go (`usage-log`): a file path, or `-` for stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

impl Sink {
    pub fn parse(s: &Path) -> Sink {
        if s.as_os_str() == "-" {
            Sink::Stdout
        } else {
            Sink::File(s.to_owned())
        }
    }
}

/// How the client reached the relay, for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    Udp,
    Tcp,
    Tls,
}

impl ClientTransport {
    fn label(self) -> &'static str {
        match self {
            ClientTransport::Udp => "udp",
            ClientTransport::Tcp => "tcp",
            ClientTransport::Tls => "tls",
        }
    }

    /// The transport of `via`; `tls` says what a stream is.
    pub fn of(via: Via, tls: bool) -> Self {
        match via {
            Via::Udp(_) => ClientTransport::Udp,
            Via::Stream(_) if tls => ClientTransport::Tls,
            Via::Stream(_) => ClientTransport::Tcp,
        }
    }
}

enum Msg {
    Record(Box<UsageRecord>, ClientTransport),
    /// SIGHUP: reopen the file (logrotate moved it).
    Reopen,
}

/// Counters of what became of records.
#[derive(Clone)]
pub struct UsageCounters {
    pub written: IntCounter,
    /// Not queued: the writer is behind (queue full) or gone.
    pub dropped: IntCounter,
    /// Queued but not written: the file could not be written.
    pub failed: IntCounter,
}

/// The shards' end of the queue.
#[derive(Clone)]
pub struct UsageSender {
    tx: SyncSender<Msg>,
    dropped: IntCounter,
}

impl UsageSender {
    /// Queue a record; never blocks.
    pub fn send(&self, r: UsageRecord, transport: ClientTransport) {
        match self.tx.try_send(Msg::Record(Box::new(r), transport)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Reopen the file (SIGHUP).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }
}

/// The writer thread; [`UsageLog::finish`] writes what is queued and
/// stops it.
pub struct UsageLog {
    sender: UsageSender,
    thread: JoinHandle<()>,
}

impl UsageLog {
    /// Open `sink` (a file is created if missing, appended to) and start
    /// the writer. An unwritable file is an error now, not at the first
    /// record.
    pub fn start(sink: Sink, counters: UsageCounters) -> io::Result<UsageLog> {
        let out = open(&sink)?;
        let (tx, rx) = sync_channel(QUEUE);
        let sender = UsageSender {
            tx,
            dropped: counters.dropped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || write_loop(sink, out, rx, counters))?;
        Ok(UsageLog { sender, thread })
    }

    pub fn sender(&self) -> UsageSender {
        self.sender.clone()
    }

    /// Write every queued record and stop. Call after the shards stopped
    /// (their last records are queued) and dropped their senders.
    pub fn finish(self) {
        drop(self.sender);
        let _ = self.thread.join();
    }
}

fn open(sink: &Sink) -> io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(io::stdout()),
        Sink::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
        ),
    })
}

fn write_loop(sink: Sink, out: Box<dyn Write + Send>, rx: Receiver<Msg>, counters: UsageCounters) {
    let mut out = BufWriter::new(out);
    let mut line = Vec::with_capacity(512);
    // Writes fail until the file is fixed; one log line per run of
    // failures, not one per record.
    let mut failing = false;
    // Block for the first message, then take what else is queued before
    // flushing: one write per burst.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r, t) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &JsonRecord::new(&r, t)).is_err() {
                        counters.failed.inc();
                    } else {
                        line.push(b'\n');
                        match out.write_all(&line) {
                            Ok(()) => counters.written.inc(),
                            Err(e) => {
                                counters.failed.inc();
                                if !std::mem::replace(&mut failing, true) {
                                    error!(error = %e, "cannot write usage records");
                                }
                            }
                        }
                    }
                }
                Msg::Reopen => {
                    let _ = out.flush();
                    if let Sink::File(p) = &sink {
                        match open(&sink) {
                            Ok(f) => {
                                out = BufWriter::new(f);
                                failing = false;
                                info!(path = %p.display(), "SIGHUP: reopened the usage log");
                            }
                            Err(e) => {
                                warn!(error = %e, "SIGHUP: cannot reopen the usage log; writing to the old one")
                            }
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            if !std::mem::replace(&mut failing, true) {
                error!(error = %e, "cannot write usage records");
            }
        }
    }
    let _ = out.flush();
}

/// One line. Field names are the format's contract: see the README.
#[derive(Serialize)]
struct JsonRecord<'a> {
    /// "end" (the allocation ended) or "interim".
    record: &'static str,
    user: &'a str,
    client: String,
    transport: &'static str,
    relayed: Vec<String>,
    start: String,
    duration_ms: u128,
    to_peer_packets: u64,
    to_peer_bytes: u64,
    to_client_packets: u64,
    to_client_bytes: u64,
    peers: usize,
    /// `peers` is a lower bound: the allocation gave permissions to more
    /// distinct IPs than the relay tracks.
    peers_capped: bool,
    end: Option<&'static str>,
}

impl<'a> JsonRecord<'a> {
    fn new(r: &'a UsageRecord, t: ClientTransport) -> Self {
        JsonRecord {
            record: if r.end.is_some() { "end" } else { "interim" },
            user: &r.user,
            client: r.client.to_string(),
            transport: t.label(),
            relayed: r.relayed.iter().flatten().map(|a| a.to_string()).collect(),
            start: rfc3339_millis(r.started),
            duration_ms: r.duration.as_millis(),
            to_peer_packets: r.to_peer.packets,
            to_peer_bytes: r.to_peer.bytes,
            to_client_packets: r.to_client.packets,
            to_client_bytes: r.to_client.bytes,
            peers: r.peers,
            peers_capped: r.peers_capped,
            end: r.end.map(|e| e.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_proto::turn::server::{EndReason, Traffic};
    use std::time::{Duration, SystemTime};

    /// A file's records.
    fn read(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn counters() -> UsageCounters {
        let c = |n: &str| IntCounter::new(n, "test").unwrap();
        UsageCounters {
            written: c("w"),
            dropped: c("d"),
            failed: c("f"),
        }
    }

    fn record(end: Option<EndReason>) -> UsageRecord {
        UsageRecord {
            user: "1767225600:alice \"quoted\"".into(),
            client: "198.51.100.7:40000".parse().unwrap(),
            via: Via::Stream(3),
            relayed: [Some("203.0.113.1:50000".parse().unwrap()), None],
            started: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_081_371_042),
            duration: Duration::from_millis(61_500),
            to_peer: Traffic {
                packets: 2,
                bytes: 8,
            },
            to_client: Traffic {
                packets: 1,
                bytes: 100,
            },
            peers: 2,
            peers_capped: false,
            end,
        }
    }

    #[test]
    fn records_are_json_lines_and_the_file_is_reopened() {
        let dir = std::env::temp_dir().join(format!("natkit-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("usage.jsonl");
        let _ = std::fs::remove_file(&path);
        let c = counters();
        let log = UsageLog::start(Sink::File(path.clone()), c.clone()).unwrap();
        let tx = log.sender();
        tx.send(record(None), ClientTransport::Tls);
        // logrotate: move the file, then SIGHUP.
        let rotated = dir.join("usage.jsonl.1");
        tx.send(record(Some(EndReason::ClientGone)), ClientTransport::Tcp);
        // The writer holds the file it opened until told to reopen: what
        // was queued before goes to the rotated file, whenever written.
        std::fs::rename(&path, &rotated).unwrap();
        tx.reopen();
        tx.send(record(Some(EndReason::Expired)), ClientTransport::Udp);
        drop(tx);
        log.finish();
        let old = read(&rotated);
        let new = read(&path);
        assert_eq!((old.len(), new.len()), (2, 1));
        assert_eq!(c.written.get(), 3);
        let all: Vec<_> = old.iter().chain(&new).collect();
        let r = all[0];
        assert_eq!(r["record"], "interim");
        assert_eq!(r["user"], "1767225600:alice \"quoted\"");
        assert_eq!(r["client"], "198.51.100.7:40000");
        assert_eq!(r["transport"], "tls");
        assert_eq!(r["relayed"], serde_json::json!(["203.0.113.1:50000"]));
        assert_eq!(r["start"], "2025-11-25T14:36:11.042Z");
        assert_eq!(r["duration_ms"], 61_500);
        assert_eq!(r["to_peer_bytes"], 8);
        assert_eq!(r["to_client_packets"], 1);
        assert_eq!(r["peers"], 2);
        assert_eq!(r["end"], serde_json::Value::Null);
        // The last one went to the reopened file.
        assert_eq!(new.last().unwrap()["end"], "expired");
        assert_eq!(all[1]["end"], "client_gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_file_is_refused_at_start() {
        let e = UsageLog::start(
            Sink::File("/nonexistent-dir/usage.jsonl".into()),
            counters(),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("/nonexistent-dir/usage.jsonl"),
            "{e}"
        );
    }
}
