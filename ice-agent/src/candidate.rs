//! Candidates (RFC 8445 §5.1): types, priorities and foundations.
//!
//! natkit's agent handles one component (RFC 8445 §5.1.1: component ID 1;
//! QUIC multiplexes everything on it), over UDP.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The only component ID natkit uses (RFC 8445 §5.1.1).
pub const COMPONENT_ID: u32 = 1;

/// Longest foundation RFC 8839 §5.1 allows (1 to 32 ice-chars).
pub const MAX_FOUNDATION_LEN: usize = 32;

/// Candidate types (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CandidateKind {
    /// An address of a local interface.
    #[serde(rename = "host")]
    Host,
    /// The address a STUN server saw our host candidate as (a NAT mapping).
    #[serde(rename = "srflx")]
    ServerReflexive,
    /// An address learned from a connectivity check (RFC 8445 §7.2.5.3.1,
    /// §7.3.1.3): the peer saw us (or we saw the peer) at an address nobody
    /// signalled.
    #[serde(rename = "prflx")]
    PeerReflexive,
    /// An address allocated on a TURN server.
    #[serde(rename = "relay")]
    Relayed,
}

impl CandidateKind {
    /// RFC 8445 §5.1.2.2 recommended type preferences: host 126,
    /// peer-reflexive 110, server-reflexive 100, relayed 0.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relayed => 0,
        }
    }

    /// The SDP name (RFC 8839 §5.1): host, srflx, prflx, relay.
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::Relayed => "relay",
        }
    }
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type preference of a port-mapped candidate (PCP, NAT-PMP or UPnP
/// IGD, see [`Candidate::port_mapped`]): between server-reflexive (100)
/// and peer-reflexive (110).
///
/// natkit treats "port-mapped" as a type of its own, so RFC 8445
/// §5.1.2.1's rule (one type preference per type, different types
/// different ones) holds; on the wire it is `srflx`, the only type a
/// standard peer knows that fits (an address of our NAT, related to our
/// host address), as libnice signals its UPnP mappings. It ranks above
/// the STUN-learned srflx because the NAT forwards it to us whatever its
/// filtering (the srflx of a symmetric or port-restricted NAT is filtered
/// or useless), and below prflx (learned from checks that worked) and host
/// (a path that does not cross the NAT at all).
pub const PORT_MAPPED_TYPE_PREFERENCE: u32 = 105;

/// Candidate priority (RFC 8445 §5.1.2.1):
/// `2^24 × type preference + 2^8 × local preference + (256 − component ID)`.
pub fn candidate_priority(kind: CandidateKind, local_preference: u16) -> u32 {
    (kind.type_preference() << 24) | (u32::from(local_preference) << 8) | (256 - COMPONENT_ID)
}

/// A local preference for an interface address (RFC 8445 §5.1.2.1 leaves
/// the choice to the agent).
///
/// Following RFC 8421 §4, IPv6 is preferred over IPv4, with the addresses
/// least likely to work (IPv6 link-local, unique-local and IPv4-mapped ones)
/// below IPv4. `interface_index` (0 = the preferred interface) orders
/// interfaces within a family; it keeps preferences unique per interface, as
/// RFC 8445 §5.1.2.1 asks for multihomed hosts.
pub fn local_preference(ip: IpAddr, interface_index: u16) -> u16 {
    // Three bands of 0x2000 (8192) values each; the top bits say the family
    // class, the low bits the interface order.
    let class: u16 = match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let link_local = s[0] & 0xffc0 == 0xfe80;
            let unique_local = s[0] & 0xfe00 == 0xfc00;
            if link_local || unique_local || v6.to_ipv4_mapped().is_some() {
                5
            } else {
                7
            }
        }
        IpAddr::V4(_) => 6,
    };
    (class << 13) | (0x1FFF - interface_index.min(0x1FFF))
}

/// Candidate pair priority (RFC 8445 §6.1.2.3), from the priority of the
/// controlling agent's candidate `g` and the controlled agent's `d`:
/// `2^32 × MIN(G,D) + 2 × MAX(G,D) + (G > D ? 1 : 0)`.
pub fn pair_priority(g: u32, d: u32) -> u64 {
    (1u64 << 32) * u64::from(g.min(d)) + 2 * u64::from(g.max(d)) + u64::from(g > d)
}

/// A foundation (RFC 8445 §5.1.1.3): equal for candidates of the same type,
/// from the same base IP address, learned from the same STUN/TURN server
/// (`server`), over the same transport (always UDP here); different
/// otherwise.
///
/// It is a pure function of those inputs (an FNV-1a hash, printed as 12 hex
/// digits, well within RFC 8839's 32 ice-chars), so the same candidate gets
/// the same foundation across ICE restarts and agents.
pub fn foundation(kind: CandidateKind, base_ip: IpAddr, server: Option<IpAddr>) -> String {
    let mut h = Fnv::new();
    h.write(kind.as_str().as_bytes());
    h.write(b"/udp/");
    write_ip(&mut h, base_ip);
    match server {
        Some(s) => {
            h.write(b"/");
            write_ip(&mut h, s);
        }
        None => h.write(b"/-"),
    }
    format!("{:012x}", h.0 & 0xFFFF_FFFF_FFFF)
}

fn write_ip(h: &mut Fnv, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` may change between
/// Rust releases, and foundations are compared across agents' lifetimes).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Whether `s` is a non-empty run of RFC 8839 §5.1 ice-chars
/// (ALPHA / DIGIT / "+" / "/") of at most `max` characters.
pub(crate) fn is_ice_chars(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// One ICE candidate of component 1 over UDP.
///
/// For local candidates, `base` is the address the agent sends from (RFC 8445
/// §5.1.1): the host address for host and server-reflexive candidates, the
/// relayed address itself for relayed ones (the driver sends through its
/// TURN allocation when a transmit comes from a relayed base). For remote
/// candidates `base` equals `addr`: the peer's bases are not ours to know.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// Candidate type.
    pub kind: CandidateKind,
    /// The transport address.
    pub addr: SocketAddr,
    /// The base (see the type's documentation).
    pub base: SocketAddr,
    /// Priority (RFC 8445 §5.1.2).
    pub priority: u32,
    /// Foundation (RFC 8445 §5.1.1.3).
    pub foundation: String,
    /// The related address signalled with server-reflexive, peer-reflexive
    /// and relayed candidates (RFC 8839 §5.1 raddr/rport), if any.
    pub related: Option<SocketAddr>,
}

impl Candidate {
    /// A local host candidate on `addr` (RFC 8445 §5.1.1.1).
    pub fn host(addr: SocketAddr, local_preference: u16) -> Self {
        Candidate {
            kind: CandidateKind::Host,
            addr,
            base: addr,
            priority: candidate_priority(CandidateKind::Host, local_preference),
            foundation: foundation(CandidateKind::Host, addr.ip(), None),
            related: None,
        }
    }

    /// A local server-reflexive candidate: STUN server `server` saw the host
    /// candidate `base` as `addr` (RFC 8445 §5.1.1.2).
    pub fn server_reflexive(
        addr: SocketAddr,
        base: SocketAddr,
        server: IpAddr,
        local_preference: u16,
    ) -> Self {
        let kind = CandidateKind::ServerReflexive;
        Candidate {
            kind,
            addr,
            base,
            priority: candidate_priority(kind, local_preference),
            foundation: foundation(kind, base.ip(), Some(server)),
            related: Some(base),
        }
    }

    /// A local port-mapped candidate: the gateway `gateway` forwards `addr`
    /// to the host candidate `base` (a PCP, NAT-PMP or UPnP IGD mapping).
    /// Signalled as `srflx` with type preference
    /// [`PORT_MAPPED_TYPE_PREFERENCE`] (see there why); its foundation is
    /// that of a server-reflexive candidate from the gateway.
    pub fn port_mapped(
        addr: SocketAddr,
        base: SocketAddr,
        gateway: IpAddr,
        local_preference: u16,
    ) -> Self {
        Candidate {
            priority: (PORT_MAPPED_TYPE_PREFERENCE << 24)
                | (u32::from(local_preference) << 8)
                | (256 - COMPONENT_ID),
            ..Candidate::server_reflexive(addr, base, gateway, local_preference)
        }
    }

    /// Whether this is a port-mapped candidate (ours, or a natkit peer's:
    /// a `srflx` with [`PORT_MAPPED_TYPE_PREFERENCE`]).
    pub fn is_port_mapped(&self) -> bool {
        self.kind == CandidateKind::ServerReflexive
            && self.priority >> 24 == PORT_MAPPED_TYPE_PREFERENCE
    }

    /// A local relayed candidate: TURN server `server`, reached from the
    /// host address `host_ip`, allocated `addr` and saw us as `mapped`
    /// (RFC 8445 §5.1.1.2). Its base is `addr` itself.
    pub fn relayed(
        addr: SocketAddr,
        mapped: SocketAddr,
        host_ip: IpAddr,
        server: IpAddr,
        local_preference: u16,
    ) -> Self {
        let kind = CandidateKind::Relayed;
        Candidate {
            kind,
            addr,
            base: addr,
            priority: candidate_priority(kind, local_preference),
            foundation: foundation(kind, host_ip, Some(server)),
            related: Some(mapped),
        }
    }

    /// A candidate received from the peer, as signalled.
    pub fn remote(kind: CandidateKind, addr: SocketAddr, priority: u32, foundation: &str) -> Self {
        Candidate {
            kind,
            addr,
            base: addr,
            priority,
            foundation: foundation.to_owned(),
            related: None,
        }
    }

    /// A local peer-reflexive candidate learned from a check's
    /// XOR-MAPPED-ADDRESS (RFC 8445 §7.2.5.3.1): its priority is the PRIORITY
    /// the check carried, its foundation follows §5.1.1.3.
    pub(crate) fn peer_reflexive_local(addr: SocketAddr, base: SocketAddr, priority: u32) -> Self {
        let kind = CandidateKind::PeerReflexive;
        Candidate {
            kind,
            addr,
            base,
            priority,
            foundation: foundation(kind, base.ip(), None),
            related: Some(base),
        }
    }

    /// The local preference inside the priority (RFC 8445 §5.1.2.1).
    pub fn local_preference(&self) -> u16 {
        ((self.priority >> 8) & 0xFFFF) as u16
    }

    /// The PRIORITY a check from this (base) candidate carries: the priority
    /// of a peer-reflexive candidate with the same local preference
    /// (RFC 8445 §7.1.1).
    pub fn peer_reflexive_priority(&self) -> u32 {
        candidate_priority(CandidateKind::PeerReflexive, self.local_preference())
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)?;
        if let Some(r) = self.related {
            write!(f, " (from {r})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_match_the_rfc_examples() {
        // RFC 8839 §5.1 / RFC 5245 §B.1 examples with local preference 65535:
        // "a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ host" and
        // "a=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx".
        assert_eq!(candidate_priority(CandidateKind::Host, 65535), 2130706431);
        assert_eq!(
            candidate_priority(CandidateKind::ServerReflexive, 65535),
            1694498815
        );
        assert_eq!(
            candidate_priority(CandidateKind::PeerReflexive, 65535),
            (110 << 24) + (65535 << 8) + 255
        );
        assert_eq!(candidate_priority(CandidateKind::Relayed, 65535), 16777215);
        let h = Candidate::host("10.0.1.1:8998".parse().unwrap(), 65535);
        assert_eq!(h.local_preference(), 65535);
        assert_eq!(h.peer_reflexive_priority(), 1862270975);
    }

    #[test]
    fn pair_priority_formula() {
        let (g, d) = (2130706431u32, 1694498815u32);
        assert_eq!(
            pair_priority(g, d),
            (1u64 << 32) * d as u64 + 2 * g as u64 + 1
        );
        assert_eq!(pair_priority(d, g), (1u64 << 32) * d as u64 + 2 * g as u64);
        // Symmetric up to the last bit, so both agents order pairs alike.
        assert_eq!(pair_priority(g, d) - pair_priority(d, g), 1);
        assert_eq!(pair_priority(7, 7), (1u64 << 32) * 7 + 14);
    }

    #[test]
    fn foundations_follow_section_5_1_1_3() {
        let a: IpAddr = "10.0.1.1".parse().unwrap();
        let b: IpAddr = "10.0.1.2".parse().unwrap();
        let s1: IpAddr = "192.0.2.1".parse().unwrap();
        let s2: IpAddr = "192.0.2.2".parse().unwrap();
        // Same type, base IP and server: same foundation, whatever the port.
        let h1 = Candidate::host("10.0.1.1:1000".parse().unwrap(), 1);
        let h2 = Candidate::host("10.0.1.1:2000".parse().unwrap(), 2);
        assert_eq!(h1.foundation, h2.foundation);
        // Any difference changes it.
        let all = [
            foundation(CandidateKind::Host, a, None),
            foundation(CandidateKind::Host, b, None),
            foundation(CandidateKind::ServerReflexive, a, Some(s1)),
            foundation(CandidateKind::ServerReflexive, a, Some(s2)),
            foundation(CandidateKind::Relayed, a, Some(s1)),
            foundation(CandidateKind::PeerReflexive, a, None),
        ];
        for (i, x) in all.iter().enumerate() {
            assert!(is_ice_chars(x, MAX_FOUNDATION_LEN), "{x}");
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn port_mapped_candidates_rank_between_srflx_and_prflx() {
        let base: SocketAddr = "192.168.1.2:5000".parse().unwrap();
        let ext: SocketAddr = "203.0.113.1:5000".parse().unwrap();
        let gw: IpAddr = "192.168.1.1".parse().unwrap();
        let m = Candidate::port_mapped(ext, base, gw, 65535);
        let s = Candidate::server_reflexive(ext, base, "192.0.2.1".parse().unwrap(), 65535);
        assert_eq!(m.kind, CandidateKind::ServerReflexive);
        assert_eq!(m.priority, (105 << 24) + (65535 << 8) + 255);
        assert!(m.priority > s.priority);
        assert!(m.priority < candidate_priority(CandidateKind::PeerReflexive, 0));
        assert!(m.is_port_mapped() && !s.is_port_mapped());
        assert_ne!(m.foundation, s.foundation);
        assert_eq!(m.related, Some(base));
        // A natkit peer's, as signalled, is recognised too.
        let r = Candidate::remote(m.kind, m.addr, m.priority, &m.foundation);
        assert!(r.is_port_mapped());
    }

    #[test]
    fn local_preference_puts_ipv6_first() {
        let v6 = local_preference("2001:db8::1".parse().unwrap(), 0);
        let v4 = local_preference("192.0.2.1".parse().unwrap(), 0);
        let ll = local_preference("fe80::1".parse().unwrap(), 0);
        assert!(v6 > v4 && v4 > ll);
        assert_eq!(v6, 0xFFFF);
        let v4b = local_preference("192.0.2.1".parse().unwrap(), 1);
        assert!(v4b < v4 && v4b > ll);
    }
}
