//! Usage accounting per allocation, for billing and abuse handling: what
//! each allocation relayed, to how many peers, and why it ended. The data
//! path only adds to counters the allocation already holds; a
//! [`UsageRecord`] is built when an allocation ends (and every reporting
//! interval while it lives), on the control path, and handed to the
//! driver to write.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::allocation::Via;

/// Distinct peer IPs remembered per allocation: beyond it the count in the
/// record is a lower bound ([`UsageRecord::peers_capped`]), so a client
/// spraying permissions cannot grow the relay's memory.
pub const MAX_TRACKED_PEERS: usize = 1024;

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Its lifetime ran out without a refresh (RFC 8656 §8).
    Expired,
    /// The client deleted it (Refresh with LIFETIME 0, RFC 8656 §8).
    Deleted,
    /// Its TCP/TLS connection closed (RFC 8656 §3.1).
    ClientGone,
    /// The relay stopped at the end of a drain (SIGTERM).
    Drained,
    /// The relay stopped without draining (SIGINT).
    Shutdown,
    /// The relay closed the client's connection: it did not read its
    /// answers, or its stream broke.
    Error,
}

impl EndReason {
    /// Labels (for metrics and records), in [`EndReason::index`] order.
    pub const LABELS: [&'static str; 6] = [
        "expired",
        "deleted",
        "client_gone",
        "drained",
        "shutdown",
        "error",
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

/// Packets and application bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// The usage an allocation has accumulated.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Wall-clock start, for the record.
    pub started: SystemTime,
    pub since: Instant,
    pub to_peer: Traffic,
    pub to_client: Traffic,
    /// Distinct peer IPs given a permission (CreatePermission, ChannelBind),
    /// up to [`MAX_TRACKED_PEERS`].
    peers: Vec<IpAddr>,
    peers_capped: bool,
    /// When the next interim record is due (`None`: only at the end).
    pub next_report: Option<Instant>,
}

impl Usage {
    pub fn new(started: SystemTime, now: Instant, interval: Option<Duration>) -> Self {
        Usage {
            started,
            since: now,
            to_peer: Traffic::default(),
            to_client: Traffic::default(),
            peers: Vec::new(),
            peers_capped: false,
            next_report: interval.map(|i| now + i),
        }
    }

    /// A peer IP was given a permission.
    pub fn note_peer(&mut self, ip: IpAddr) {
        if self.peers.contains(&ip) {
            return;
        }
        if self.peers.len() < MAX_TRACKED_PEERS {
            self.peers.push(ip);
        } else {
            self.peers_capped = true;
        }
    }

    /// Distinct peer IPs, and whether the count hit [`MAX_TRACKED_PEERS`].
    pub fn peers(&self) -> (usize, bool) {
        (self.peers.len(), self.peers_capped)
    }
}

/// One allocation's usage, at its end or at an interim report. Carries no
/// secret: the username (a static user's name, or a REST username
/// `expiry:name`), addresses and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub user: Arc<str>,
    pub client: SocketAddr,
    /// How the client reached the relay (the driver knows TCP from TLS).
    pub via: Via,
    /// The relayed addresses (IPv4, IPv6).
    pub relayed: [Option<SocketAddr>; 2],
    pub started: SystemTime,
    pub duration: Duration,
    pub to_peer: Traffic,
    pub to_client: Traffic,
    /// Distinct peer IPs given a permission.
    pub peers: usize,
    /// Whether `peers` is only a lower bound ([`MAX_TRACKED_PEERS`]).
    pub peers_capped: bool,
    /// Why it ended; `None` for an interim record of a live allocation
    /// (its counters are the totals so far).
    pub end: Option<EndReason>,
}
