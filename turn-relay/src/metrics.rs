//! Prometheus metrics, live: workers add their counters once per batch, so
//! a scrape sees traffic as it happens, not at the end of a session.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use natkit_proto::turn::server::{Drop, EndReason, Refusal, Stats, TcpEvent};

use crate::usage::UsageCounters;

/// All of natkit-turn's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub allocations: IntGauge,
    allocation_attempts: IntCounterVec,
    refused: IntCounterVec,
    pub allocations_closed: IntCounter,
    ended: IntCounterVec,
    usage_records: IntCounterVec,
    pub auth_failures: IntCounter,
    pub permissions: IntCounter,
    pub channels: IntCounter,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    drops: IntCounterVec,
    pub send_errors: IntCounter,
    pub connections_open: IntGaugeVec,
    pub connections: IntCounterVec,
    max_allocations: IntGauge,
    relay_ports: IntGauge,
    tcp_peer_connections: IntCounterVec,
    /// Client data connections spliced with a peer connection now
    /// (RFC 6062).
    pub tcp_spliced: IntGauge,
    tcp_bytes: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = Metrics {
            allocations: reg(
                &r,
                IntGauge::new("natkit_turn_allocations", "Live allocations").expect("valid"),
            ),
            allocation_attempts: vec(
                "natkit_turn_allocation_attempts_total",
                "Authenticated Allocate requests by outcome (success or the error code sent)",
                &["outcome"],
            ),
            refused: vec(
                "natkit_turn_allocations_refused_total",
                "Authenticated Allocates refused for want of room, by reason: user_quota (486), \
                 max_allocations, relay_ports, draining (508)",
                &["reason"],
            ),
            allocations_closed: counter(
                "natkit_turn_allocations_closed_total",
                "Allocations ended: expired, deleted, or their connection closed",
            ),
            ended: vec(
                "natkit_turn_allocations_ended_total",
                "Allocations ended, by reason: expired, deleted, client_gone, drained, shutdown, \
                 error",
                &["reason"],
            ),
            usage_records: vec(
                "natkit_turn_usage_records_total",
                "Usage records (usage-log) by result: written, dropped (the writer fell behind), \
                 failed (the file could not be written)",
                &["result"],
            ),
            auth_failures: counter(
                "natkit_turn_auth_failures_total",
                "Requests with wrong, unknown or expired credentials",
            ),
            permissions: counter(
                "natkit_turn_permissions_created_total",
                "Permissions installed (refreshes not counted)",
            ),
            channels: counter(
                "natkit_turn_channels_bound_total",
                "Channels bound (refreshes not counted)",
            ),
            packets: vec(
                "natkit_turn_relayed_packets_total",
                "Packets relayed, by direction (to_peer, to_client)",
                &["direction"],
            ),
            bytes: vec(
                "natkit_turn_relayed_bytes_total",
                "Application bytes relayed, by direction (to_peer, to_client)",
                &["direction"],
            ),
            drops: vec(
                "natkit_turn_dropped_total",
                "Datagrams dropped, by reason",
                &["reason"],
            ),
            send_errors: counter(
                "natkit_turn_send_errors_total",
                "Datagrams the kernel refused to send",
            ),
            connections_open: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("natkit_turn_connections_open", "Open TCP/TLS client connections"),
                    &["transport"],
                )
                .expect("valid"),
            ),
            connections: vec(
                "natkit_turn_connections_total",
                "TCP/TLS client connections by transport and result (accepted, rejected_cap, tls_failed, proxy_refused; on a shared TLS port also web, passthrough, backend_failed; acme_challenge: an ACME tls-alpn-01 validation answered)",
                &["transport", "result"],
            ),
            max_allocations: reg(
                &r,
                IntGauge::new(
                    "natkit_turn_max_allocations",
                    "Configured max-allocations: the most allocations this relay grants (always a limit, never 0)",
                )
                .expect("valid"),
            ),
            relay_ports: reg(
                &r,
                IntGauge::new(
                    "natkit_turn_relay_ports",
                    "Ports in the relay port range min-port..=max-port (per relay IP; one per allocation)",
                )
                .expect("valid"),
            ),
            tcp_peer_connections: vec(
                "natkit_turn_tcp_peer_connections_total",
                "Peer connections of TCP allocations (RFC 6062) by event: connected, connect_failed \
                 (447), accepted (ConnectionAttempt sent), refused (no permission or over the cap), \
                 bound, unbound_timeout (no ConnectionBind in 30 s)",
                &["event"],
            ),
            tcp_spliced: reg(
                &r,
                IntGauge::new(
                    "natkit_turn_tcp_spliced_connections",
                    "Client data connections spliced with a peer connection (RFC 6062)",
                )
                .expect("valid"),
            ),
            tcp_bytes: vec(
                "natkit_turn_tcp_relayed_bytes_total",
                "Bytes relayed over TCP allocations' spliced connections, by direction (to_peer, to_client)",
                &["direction"],
            ),
            registry: r,
        };
        // Series that exist from the start, so dashboards show zeros.
        for d in ["to_peer", "to_client"] {
            m.packets.with_label_values(&[d]);
            m.bytes.with_label_values(&[d]);
            m.tcp_bytes.with_label_values(&[d]);
        }
        for e in TcpEvent::LABELS {
            m.tcp_peer_connections.with_label_values(&[e]);
        }
        for d in Drop::LABELS {
            m.drops.with_label_values(&[d]);
        }
        for r in Refusal::LABELS {
            m.refused.with_label_values(&[r]);
        }
        for r in EndReason::LABELS {
            m.ended.with_label_values(&[r]);
        }
        m.allocation_attempts.with_label_values(&["success"]);
        m
    }

    /// Export the configured limits, so alerts divide by the relay's own
    /// quota rather than a number copied into the rules.
    pub fn set_limits(&self, max_allocations: usize, relay_ports: usize) {
        self.max_allocations
            .set(i64::try_from(max_allocations).unwrap_or(i64::MAX));
        self.relay_ports
            .set(i64::try_from(relay_ports).unwrap_or(i64::MAX));
    }

    /// The usage writer's counters (series created only when it runs).
    pub fn usage(&self) -> UsageCounters {
        let c = |r: &str| self.usage_records.with_label_values(&[r]);
        UsageCounters {
            written: c("written"),
            dropped: c("dropped"),
            failed: c("failed"),
        }
    }

    /// The byte counters of spliced TCP connections: (to_peer, to_client).
    pub fn tcp_bytes(&self) -> (IntCounter, IntCounter) {
        (
            self.tcp_bytes.with_label_values(&["to_peer"]),
            self.tcp_bytes.with_label_values(&["to_client"]),
        )
    }

    /// Counter handles a worker keeps, so the hot path does no label lookup.
    pub fn worker(&self) -> WorkerCounters {
        WorkerCounters {
            to_peer: (
                self.packets.with_label_values(&["to_peer"]),
                self.bytes.with_label_values(&["to_peer"]),
            ),
            to_client: (
                self.packets.with_label_values(&["to_client"]),
                self.bytes.with_label_values(&["to_client"]),
            ),
            drops: Drop::LABELS.map(|l| self.drops.with_label_values(&[l])),
            refused: Refusal::LABELS.map(|l| self.refused.with_label_values(&[l])),
            ended: EndReason::LABELS.map(|l| self.ended.with_label_values(&[l])),
            alloc_success: self.allocation_attempts.with_label_values(&["success"]),
            tcp: TcpEvent::LABELS.map(|l| self.tcp_peer_connections.with_label_values(&[l])),
            metrics: self.clone(),
            allocations: 0,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker's resolved counters.
pub struct WorkerCounters {
    to_peer: (IntCounter, IntCounter),
    to_client: (IntCounter, IntCounter),
    drops: [IntCounter; Drop::LABELS.len()],
    refused: [IntCounter; Refusal::LABELS.len()],
    ended: [IntCounter; EndReason::LABELS.len()],
    alloc_success: IntCounter,
    tcp: [IntCounter; TcpEvent::LABELS.len()],
    metrics: Metrics,
    /// This worker's share of the allocations gauge.
    allocations: i64,
}

impl WorkerCounters {
    /// Move a shard's counters into the metrics and zero them.
    pub fn flush(&mut self, stats: &mut Stats, live_allocations: usize, send_errors: u64) {
        let s = std::mem::take(stats);
        add(&self.to_peer.0, s.to_peer.0);
        add(&self.to_peer.1, s.to_peer.1);
        add(&self.to_client.0, s.to_client.0);
        add(&self.to_client.1, s.to_client.1);
        for (c, n) in self.drops.iter().zip(s.drops) {
            add(c, n);
        }
        for (c, n) in self.refused.iter().zip(s.refused) {
            add(c, n);
        }
        for (c, n) in self.ended.iter().zip(s.ended) {
            add(c, n);
        }
        for (c, n) in self.tcp.iter().zip(s.tcp) {
            add(c, n);
        }
        let m = &self.metrics;
        add(&self.alloc_success, s.allocations);
        for (code, n) in s.allocate_errors {
            add(
                &m.allocation_attempts
                    .with_label_values(&[&code.to_string()]),
                n,
            );
        }
        add(&m.auth_failures, s.auth_failures);
        add(&m.permissions, s.permissions);
        add(&m.channels, s.channels);
        add(&m.allocations_closed, s.allocations_closed);
        add(&m.send_errors, send_errors);
        let live = live_allocations as i64;
        if live != self.allocations {
            m.allocations.add(live - self.allocations);
            self.allocations = live;
        }
    }
}

#[inline]
fn add(c: &IntCounter, n: u64) {
    if n > 0 {
        c.inc_by(n);
    }
}
