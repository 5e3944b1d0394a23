//! What `natkit turn` prints: a step list for people as the steps finish,
//! or one JSON object at the end.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::failure::Failure;
use crate::udp_driver::{json_ms, millis};

/// One finished step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// "resolve", "connect", "allocate A", ...
    pub step: String,
    /// How long it took.
    pub ms: Option<f64>,
    /// What it found.
    pub detail: String,
}

/// The TLS session.
#[derive(Debug, Clone, Serialize)]
pub struct TlsOut {
    pub version: String,
    pub cipher: String,
    pub handshake_ms: f64,
}

/// One allocation.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationOut {
    pub name: &'static str,
    pub local: SocketAddr,
    pub relayed: Vec<SocketAddr>,
    pub mapped: SocketAddr,
    pub lifetime_s: u64,
    pub allocate_ms: f64,
    pub realm: Option<String>,
    /// "SHA-256" or "MD5" (RFC 8489 §18.5).
    pub password_algorithm: Option<&'static str>,
    /// "MESSAGE-INTEGRITY-SHA256" or "MESSAGE-INTEGRITY".
    pub integrity: Option<&'static str>,
}

/// Where A relayed to.
#[derive(Debug, Clone, Serialize)]
pub struct PeerOut {
    pub address: SocketAddr,
    /// "own_allocation" (B's relayed address) or "given" (`--peer`).
    pub kind: &'static str,
}

/// The round trips through the relay.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTripOut {
    pub sent: u32,
    pub received: u32,
    pub lost: u32,
    pub payload_bytes: u32,
    pub min_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Messages B got from A (own-allocation mode only).
    pub b_received: Option<u32>,
    /// How A's data reached B: "ChannelData" or "Data indication".
    pub a_to_b: Option<&'static str>,
    /// How the echo reached A.
    pub b_to_a: Option<&'static str>,
    #[serde(skip)]
    rtts: Vec<Duration>,
}

impl RoundTripOut {
    /// Figures from the measured round-trip times.
    pub fn new(
        sent: u32,
        payload_bytes: u32,
        rtts: &[Duration],
        b_received: Option<u32>,
        a_to_b: Option<&'static str>,
        b_to_a: Option<&'static str>,
    ) -> Self {
        let received = rtts.len() as u32;
        let min = rtts.iter().min().copied();
        let max = rtts.iter().max().copied();
        let avg = (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / received);
        RoundTripOut {
            sent,
            received,
            lost: sent.saturating_sub(received),
            payload_bytes,
            min_ms: min.map(json_ms),
            avg_ms: avg.map(json_ms),
            max_ms: max.map(json_ms),
            b_received,
            a_to_b,
            b_to_a,
            rtts: rtts.to_vec(),
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}/{} echoed ({} bytes)",
            self.received, self.sent, self.payload_bytes
        );
        if !self.rtts.is_empty() {
            let min = self.rtts.iter().min().copied().unwrap_or_default();
            let max = self.rtts.iter().max().copied().unwrap_or_default();
            let avg = self.rtts.iter().sum::<Duration>() / self.rtts.len() as u32;
            s += &format!(
                ", rtt min {} / avg {} / max {}",
                millis(min),
                millis(avg),
                millis(max)
            );
        }
        match (self.a_to_b, self.b_to_a) {
            (Some(ab), Some(ba)) => s += &format!("; A->B arrived as {ab}, B->A as {ba}"),
            (None, Some(ba)) => s += &format!("; the echo arrived as {ba}"),
            _ => {}
        }
        s
    }
}

/// The error, in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorOut {
    pub kind: &'static str,
    pub message: String,
}

/// Everything `--json` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub server_name: String,
    pub server: Option<SocketAddr>,
    pub transport: &'static str,
    pub username: String,
    /// "static" or "rest".
    pub credentials: &'static str,
    pub steps: Vec<Step>,
    pub tls: Option<TlsOut>,
    pub allocations: Vec<AllocationOut>,
    pub peer: Option<PeerOut>,
    pub channel: Option<u16>,
    pub round_trip: Option<RoundTripOut>,
    /// Whether the allocations' deletion was confirmed.
    pub closed: Option<bool>,
    pub error: Option<ErrorOut>,
}

/// Prints steps as they finish (text) or the whole report at the end (JSON).
pub struct Printer {
    json: bool,
    /// Print nothing at all (another command reads the report).
    quiet: bool,
    /// What has been found so far.
    pub report: Report,
}

impl Printer {
    /// A printer for text or JSON.
    pub fn new(json: bool) -> Self {
        Printer {
            json,
            quiet: false,
            report: Report::default(),
        }
    }

    /// A printer that prints nothing: the caller reads `report`.
    pub fn quiet() -> Self {
        Printer {
            json: true,
            quiet: true,
            report: Report::default(),
        }
    }

    /// Whether nothing is printed (another command reads the report).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// A step finished after `took`.
    pub fn step(&mut self, step: impl Into<String>, took: Duration, detail: String) {
        self.push(step.into(), Some(took), detail);
    }

    /// A step whose detail carries its own figures.
    pub fn step_text(&mut self, step: impl Into<String>, detail: String) {
        self.push(step.into(), None, detail);
    }

    fn push(&mut self, step: String, took: Option<Duration>, detail: String) {
        if !self.json {
            let t = took.map(millis).unwrap_or_default();
            outln!("{step:<11} {t:>9}  {detail}");
        }
        self.report.steps.push(Step {
            step,
            ms: took.map(json_ms),
            detail,
        });
    }

    /// The run ended; with `--json` print the report (errors included,
    /// so a script gets one object either way).
    pub fn finish(&mut self, failure: Option<&Failure>) -> anyhow::Result<()> {
        self.report.ok = failure.is_none();
        self.report.error = failure.map(|f| ErrorOut {
            kind: f.kind,
            message: f.message.clone(),
        });
        if self.json && !self.quiet {
            outln!("{}", serde_json::to_string_pretty(&self.report)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_figures() {
        let ms = Duration::from_millis;
        let r = RoundTripOut::new(
            5,
            100,
            &[ms(2), ms(4), ms(6)],
            Some(4),
            Some("Data indication"),
            Some("ChannelData"),
        );
        assert_eq!((r.received, r.lost), (3, 2));
        assert_eq!(
            (r.min_ms, r.avg_ms, r.max_ms),
            (Some(2.0), Some(4.0), Some(6.0))
        );
        let s = r.summary();
        assert!(
            s.starts_with("3/5 echoed (100 bytes), rtt min 2.00 ms / avg 4.00 ms / max 6.00 ms"),
            "{s}"
        );
        assert!(
            s.ends_with("A->B arrived as Data indication, B->A as ChannelData"),
            "{s}"
        );
        let none = RoundTripOut::new(2, 100, &[], None, None, None);
        assert_eq!((none.min_ms, none.lost), (None, 2));
    }
}
