//! One allocation's state (RFC 8656 §2.2, §9, §12): relayed addresses,
//! permissions, channels, lifetime and bandwidth budget. Small vectors,
//! scanned linearly: quotas keep them to tens of entries, which beats hashing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::usage::{EndReason, Usage, UsageRecord};
use crate::integrity::{IntegrityKind, LongTermKey};

/// A relay socket, as numbered by the driver.
pub type RelayId = u32;

/// Where a client is: its transport address and how it reaches us. Two
/// clients behind one address on different listeners are different
/// allocations (RFC 8656 §2.2: the 5-tuple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The client's address and port as we see them.
    pub addr: SocketAddr,
    /// The listener (UDP) or connection (TCP/TLS) it arrived on.
    pub via: Via,
}

/// The server side of the client's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A UDP listener, by the driver's index.
    Udp(u16),
    /// A TCP or TLS connection, by the driver's connection ID.
    Stream(u64),
}

impl Via {
    /// Whether ChannelData to this client must be padded (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        matches!(self, Via::Stream(_))
    }
}

/// A channel binding (RFC 8656 §12).
#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// A token bucket in bytes (bandwidth quota per allocation).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: u64,
    last: Instant,
}

impl Bucket {
    pub fn new(now: Instant, burst: u64) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Take `n` bytes if the budget (`rate` bytes/s, `burst` at most) allows.
    #[inline]
    pub fn take(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(1) {
            let add = elapsed.as_micros() as u64 * rate / 1_000_000;
            self.tokens = self.tokens.saturating_add(add).min(burst);
            self.last = now;
        }
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

/// One allocation.
#[derive(Debug)]
pub struct Allocation {
    pub client: ClientKey,
    /// Relay sockets by family: index 0 IPv4, 1 IPv6.
    pub relays: [Option<(RelayId, SocketAddr)>; 2],
    pub username: Arc<str>,
    pub key: LongTermKey,
    pub integrity: IntegrityKind,
    pub expires: Instant,
    /// (peer IP, expiry).
    pub permissions: Vec<(IpAddr, Instant)>,
    pub channels: Vec<Channel>,
    /// The Allocate transaction that made it, to answer its retransmissions
    /// (RFC 8656 §7.2).
    pub allocate_tid: [u8; 12],
    /// Reservation token handed out with EVEN-PORT R=1, if any.
    pub reservation: Option<u64>,
    pub bucket: Bucket,
    /// What it relayed, for its usage records.
    pub usage: Usage,
    /// A TCP allocation (RFC 6062): its relayed address is a listening
    /// socket, its data goes over peer connections, not datagrams.
    pub tcp: bool,
}

/// Family index of an address: 0 for IPv4, 1 for IPv6.
#[inline]
pub fn family_index(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => 0,
        IpAddr::V6(_) => 1,
    }
}

impl Allocation {
    /// The relay that reaches `peer`, if the allocation has its family.
    #[inline]
    pub fn relay_for(&self, peer: IpAddr) -> Option<(RelayId, SocketAddr)> {
        self.relays[family_index(peer)]
    }

    /// Whether a live permission covers `ip` (RFC 8656 §9).
    #[inline]
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|&(p, exp)| p == ip && exp > now)
    }

    /// Install or refresh a permission. Returns false when it would exceed
    /// `max`.
    pub fn permit(&mut self, ip: IpAddr, until: Instant, now: Instant, max: usize) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|(p, _)| *p == ip) {
            p.1 = until;
            return true;
        }
        self.permissions.retain(|&(_, exp)| exp > now);
        if self.permissions.len() >= max {
            return false;
        }
        self.permissions.push((ip, until));
        true
    }

    /// The live channel with this number.
    #[inline]
    pub fn channel(&self, number: u16, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    /// The live channel bound to this peer.
    #[inline]
    pub fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Its usage so far, as a record (`end`: why it ended; `None` for an
    /// interim record).
    pub fn usage_record(&self, now: Instant, end: Option<EndReason>) -> UsageRecord {
        let (peers, peers_capped) = self.usage.peers();
        UsageRecord {
            user: self.username.clone(),
            client: self.client.addr,
            via: self.client.via,
            relayed: self.relays.map(|r| r.map(|(_, addr)| addr)),
            started: self.usage.started,
            duration: now.saturating_duration_since(self.usage.since),
            to_peer: self.usage.to_peer,
            to_client: self.usage.to_client,
            peers,
            peers_capped,
            end,
        }
    }

    /// Drop expired permissions and channels. RFC 8656 §12: an expired
    /// channel number and peer stay unusable for another 5 minutes, so a
    /// channel is only forgotten then.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|&(_, exp)| exp > now);
        self.channels
            .retain(|c| c.expires + Duration::from_secs(300) > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, 1000);
        assert!(b.take(1000, 1000, 1000, t0));
        assert!(!b.take(1, 1000, 1000, t0));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(500, 1000, 1000, t1));
        assert!(!b.take(1, 1000, 1000, t1));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        assert_eq!(family_index("::ffff:192.0.2.1".parse().unwrap()), 0);
        assert_eq!(family_index("2001:db8::1".parse().unwrap()), 1);
    }
}
