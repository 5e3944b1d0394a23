//! Prometheus metrics. Label children are resolved once at start-up; the UDP
//! workers tally into plain arrays and add them up once per batch, so the hot
//! path takes no lock and touches shared atomics once per batch, not once per
//! packet.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::responder::{Outcome, Transport};

/// All of natkit-stun's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    messages: IntCounterVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    pub send_errors: IntCounter,
    connections_open: IntGaugeVec,
    connections: IntCounterVec,
    connections_closed: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let messages = counter_vec(
            &registry,
            "natkit_stun_messages_total",
            "STUN messages received, by transport and outcome (success, error_400, error_420, \
             indication; malformed, bad_fingerprint and ignored were dropped)",
            &["transport", "outcome"],
        );
        let bytes_in = counter_vec(
            &registry,
            "natkit_stun_bytes_received_total",
            "Bytes received, by transport",
            &["transport"],
        );
        let bytes_out = counter_vec(
            &registry,
            "natkit_stun_bytes_sent_total",
            "Bytes sent, by transport",
            &["transport"],
        );
        let send_errors = IntCounter::new(
            "natkit_stun_send_errors_total",
            "Replies the kernel refused to send",
        )
        .expect("valid metric");
        registry
            .register(Box::new(send_errors.clone()))
            .expect("unique metric");
        let connections_open = IntGaugeVec::new(
            Opts::new("natkit_stun_connections_open", "Open TCP/TLS connections"),
            &["transport"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections_open.clone()))
            .expect("unique metric");
        let connections = counter_vec(
            &registry,
            "natkit_stun_connections_total",
            "TCP/TLS connections, by transport and result (accepted, rejected_cap, tls_failed, proxy_refused; on a shared TLS port also web, passthrough, backend_failed; acme_challenge: an ACME tls-alpn-01 validation answered)",
            &["transport", "result"],
        );
        let connections_closed = counter_vec(
            &registry,
            "natkit_stun_connections_closed_total",
            "TCP/TLS connections closed, by reason (eof, idle, frame_timeout, framing, write_timeout, \
             error, shutdown, tls_handshake)",
            &["transport", "reason"],
        );
        // Pre-create the common series so dashboards see zeros, not gaps.
        for t in ["udp", "tcp", "tls"] {
            for o in Outcome::LABELS {
                messages.with_label_values(&[t, o]);
            }
            bytes_in.with_label_values(&[t]);
            bytes_out.with_label_values(&[t]);
        }
        Metrics {
            registry,
            messages,
            bytes_in,
            bytes_out,
            send_errors,
            connections_open,
            connections,
            connections_closed,
        }
    }

    /// Counter handles for one transport, for a worker to keep.
    pub fn counters(&self, t: Transport) -> Counters {
        let l = t.label();
        Counters {
            outcomes: Outcome::LABELS.map(|o| self.messages.with_label_values(&[l, o])),
            bytes_in: self.bytes_in.with_label_values(&[l]),
            bytes_out: self.bytes_out.with_label_values(&[l]),
        }
    }

    pub fn connection_open(&self, t: Transport) -> IntGauge {
        self.connections_open.with_label_values(&[t.label()])
    }

    pub fn connection(&self, t: Transport, result: &str) {
        self.connections
            .with_label_values(&[t.label(), result])
            .inc();
    }

    pub fn connection_closed(&self, t: Transport, reason: &str) {
        self.connections_closed
            .with_label_values(&[t.label(), reason])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolved counters for one transport.
#[derive(Clone)]
pub struct Counters {
    outcomes: [IntCounter; Outcome::LABELS.len()],
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

/// A worker's local tally, flushed into [`Counters`] once per batch.
#[derive(Debug, Default)]
pub struct Tally {
    outcomes: [u64; Outcome::LABELS.len()],
    bytes_in: u64,
    bytes_out: u64,
}

impl Tally {
    #[inline]
    pub fn message(&mut self, outcome: Outcome, len: usize) {
        self.outcomes[outcome.index()] += 1;
        self.bytes_in += len as u64;
    }

    #[inline]
    pub fn sent(&mut self, len: usize) {
        self.bytes_out += len as u64;
    }

    /// Add the tally to the shared counters and reset it.
    pub fn flush(&mut self, c: &Counters) {
        for (n, counter) in self.outcomes.iter_mut().zip(&c.outcomes) {
            if *n > 0 {
                counter.inc_by(*n);
                *n = 0;
            }
        }
        if self.bytes_in > 0 {
            c.bytes_in.inc_by(std::mem::take(&mut self.bytes_in));
        }
        if self.bytes_out > 0 {
            c.bytes_out.inc_by(std::mem::take(&mut self.bytes_out));
        }
    }
}
