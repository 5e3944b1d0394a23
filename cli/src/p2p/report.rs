//! The `--report FILE` JSON: which path won, how fast, how much moved, and
//! every path change. Written when connected, on each path change, and at
//! exit with the final byte counts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natkit_ice::{PathInfo, Role};
use serde::Serialize;

use super::signal::write_atomic;

/// Milliseconds with microsecond resolution, for JSON.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A path as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PathOut {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub path: String,
    /// Our candidate's address.
    pub local: String,
    /// Our candidate's type.
    pub local_kind: String,
    /// The peer's candidate's address.
    pub remote: String,
    /// The peer's candidate's type.
    pub remote_kind: String,
    /// Whether our candidate is port-mapped (PCP, NAT-PMP, UPnP IGD).
    pub local_port_mapped: bool,
    /// Whether the peer's is (a natkit peer's port-mapped candidate).
    pub remote_port_mapped: bool,
    /// RTT of the checks, if measured.
    pub rtt_ms: Option<f64>,
}

impl From<&PathInfo> for PathOut {
    fn from(p: &PathInfo) -> Self {
        PathOut {
            path: p.kind.to_string(),
            local: p.local.addr.to_string(),
            local_kind: p.local.kind.to_string(),
            remote: p.remote.addr.to_string(),
            remote_kind: p.remote.kind.to_string(),
            local_port_mapped: p.local.is_port_mapped(),
            remote_port_mapped: p.remote.is_port_mapped(),
            rtt_ms: p.rtt.map(ms),
        }
    }
}

/// A path change seen while connected.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeOut {
    /// Milliseconds since the connection was usable.
    pub at_ms: f64,
    /// The new path.
    #[serde(flatten)]
    pub path: PathOut,
}

/// The report's content.
#[derive(Debug, Clone, Serialize)]
pub struct ReportOut {
    /// `listen`, `connect`, `send` or `receive`.
    pub command: &'static str,
    /// The ICE role after any role conflict: `controlling` or `controlled`.
    pub role: &'static str,
    /// The path in use (the first selected, or the latest change).
    #[serde(flatten)]
    pub path: Option<PathOut>,
    /// From having the peer's description to a usable QUIC connection.
    pub connect_ms: Option<f64>,
    /// Application bytes written to the peer.
    pub bytes_sent: u64,
    /// Application bytes received from the peer.
    pub bytes_received: u64,
    /// Every path change after the first selection.
    pub path_changes: Vec<ChangeOut>,
    /// ICE restarts this side started (on a degraded path).
    pub restarts_started: u32,
    /// ICE restarts the peer started that this side answered.
    pub restarts_answered: u32,
    /// What the hard-NAT punch tried, when it ran (between natkit peers
    /// whose NATs map differently, or `both_hard`).
    pub punch: Option<natkit_ice::PunchReport>,
    /// `connected` while running, then `ok` or `error`.
    pub status: &'static str,
    /// The error that ended the run, if any.
    pub error: Option<String>,
}

/// The report, shared by the tasks that update it.
#[derive(Clone)]
pub struct Report {
    file: Option<PathBuf>,
    out: Arc<Mutex<ReportOut>>,
    connected_at: Arc<Mutex<Option<Instant>>>,
    /// Bytes sent to the peer (the pipe or transfer adds to it).
    pub sent: Arc<AtomicU64>,
    /// Bytes received from the peer.
    pub received: Arc<AtomicU64>,
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Controlling => "controlling",
        Role::Controlled => "controlled",
    }
}

impl Report {
    /// A report for `command`, written to `file` if given.
    pub fn new(file: Option<PathBuf>, command: &'static str, role: Role) -> Self {
        Report {
            file,
            out: Arc::new(Mutex::new(ReportOut {
                command,
                role: role_name(role),
                path: None,
                connect_ms: None,
                bytes_sent: 0,
                bytes_received: 0,
                path_changes: Vec::new(),
                restarts_started: 0,
                restarts_answered: 0,
                punch: None,
                status: "connecting",
                error: None,
            })),
            connected_at: Arc::new(Mutex::new(None)),
            sent: Arc::new(AtomicU64::new(0)),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ReportOut)) {
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut o);
    }

    /// The connection is usable.
    pub fn connected(&self, path: Option<&PathInfo>, role: Role, took: Duration) {
        *self.connected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.update(|o| {
            o.path = path.map(PathOut::from);
            o.role = role_name(role);
            o.connect_ms = Some(ms(took));
            o.status = "connected";
        });
        self.write();
    }

    /// The connect time, corrected once the peer told its own (see
    /// `super::stream`): from when both descriptions were in.
    pub fn connect_time(&self, took: Duration) {
        self.update(|o| o.connect_ms = Some(ms(took)));
        self.write();
    }

    /// ICE moved to another path.
    pub fn path_changed(&self, path: &PathInfo) {
        let at = self
            .connected_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.update(|o| {
            let p = PathOut::from(path);
            o.path = Some(p.clone());
            o.path_changes.push(ChangeOut {
                at_ms: ms(at),
                path: p,
            });
        });
        self.write();
    }

    /// The hard-NAT punch ended (or was found useless).
    pub fn punch(&self, r: &natkit_ice::PunchReport) {
        self.update(|o| o.punch = Some(r.clone()));
        self.write();
    }

    /// This side restarted ICE (`ours`), or answered the peer's restart.
    pub fn restart(&self, ours: bool) {
        self.update(|o| {
            if ours {
                o.restarts_started += 1;
            } else {
                o.restarts_answered += 1;
            }
        });
        self.write();
    }

    /// The run ended: final counts and outcome.
    pub fn finish(&self, error: Option<&anyhow::Error>) {
        self.update(|o| {
            o.status = if error.is_some() { "error" } else { "ok" };
            o.error = error.map(|e| format!("{e:#}"));
        });
        self.write();
    }

    /// The `--json` document of a run that ended with `error` (or not):
    /// the report's fields, and `ok` and `error` (`{kind, message}` or
    /// `null`) as every natkit JSON document has them.
    pub fn outcome(&self, error: Option<&anyhow::Error>) -> serde_json::Value {
        let mut doc = serde_json::to_value(self.snapshot()).expect("report serializes");
        doc["ok"] = serde_json::Value::Bool(error.is_none());
        doc["error"] = match error {
            Some(e) => serde_json::json!({
                "kind": super::failure::kind(e),
                "message": format!("{e:#}"),
            }),
            None => serde_json::Value::Null,
        };
        doc
    }

    /// A copy of the report as it stands.
    pub fn snapshot(&self) -> ReportOut {
        let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner()).clone();
        o.bytes_sent = self.sent.load(Ordering::Relaxed);
        o.bytes_received = self.received.load(Ordering::Relaxed);
        o
    }

    fn write(&self) {
        let Some(file) = &self.file else { return };
        let text = serde_json::to_string_pretty(&self.snapshot()).expect("report serializes");
        if let Err(e) = write_atomic(file, &text) {
            errln!("warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_ice::{Candidate, PathKind};

    #[test]
    fn the_json_has_the_promised_fields() {
        let r = Report::new(None, "connect", Role::Controlling);
        let local = Candidate::host("127.0.0.1:5000".parse().unwrap(), 65535);
        let mut remote = local.clone();
        remote.addr = "127.0.0.1:6000".parse().unwrap();
        let p = PathInfo {
            kind: PathKind::Host,
            local,
            remote,
            rtt: Some(Duration::from_micros(120)),
        };
        r.connected(Some(&p), Role::Controlling, Duration::from_millis(43));
        r.sent.fetch_add(10, Ordering::Relaxed);
        r.path_changed(&p);
        let v = serde_json::to_value(r.snapshot()).unwrap();
        assert_eq!(v["path"], "host");
        assert_eq!(v["local"], "127.0.0.1:5000");
        assert_eq!(v["local_kind"], "host");
        assert_eq!(v["remote"], "127.0.0.1:6000");
        assert_eq!(v["remote_kind"], "host");
        assert_eq!(v["local_port_mapped"], false);
        assert_eq!(v["remote_port_mapped"], false);
        assert_eq!(v["rtt_ms"], 0.12);
        assert_eq!(v["connect_ms"], 43.0);
        assert_eq!(v["role"], "controlling");
        assert_eq!(v["bytes_sent"], 10);
        assert_eq!(v["bytes_received"], 0);
        assert_eq!(v["path_changes"].as_array().unwrap().len(), 1);
        assert_eq!(v["path_changes"][0]["path"], "host");
    }
}
