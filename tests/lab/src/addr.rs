//! The lab's address plan: documentation ranges only (RFC 5737), all of it
//! inside the lab's namespaces, nothing routed out.
//!
//! - 203.0.113.0/24 is "the internet": one bridge in the internet namespace;
//!   .1 and .2 are the STUN server's two addresses (RFC 5780), .3 the TURN
//!   relay, .254 the internet's router, .10 + n the outside address of the
//!   n-th site's (outermost) router.
//! - 198.51.100.0/24 holds the private LANs behind NATs, a /29 per site:
//!   the router is .1 and the host .2 of its /29 (32 sites: the matrix has
//!   two per NAT kind).
//! - 192.0.2.0/24 holds public LANs (sites without NAT) and the links
//!   between a carrier-grade NAT and the home NAT behind it, a /29 each.

use std::net::Ipv4Addr;

/// The STUN server's primary address (RFC 5780 A1), port 3478.
pub const STUN_PRIMARY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The STUN server's alternate address (RFC 5780 A2), port 3479.
pub const STUN_OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The TURN relay's address.
pub const TURN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The internet namespace's router address on the bridge.
pub const INTERNET_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// Prefix length of the internet bridge.
pub const INTERNET_PREFIX: u8 = 24;
/// Prefix length of every LAN and carrier link.
pub const LAN_PREFIX: u8 = 29;
/// Most sites with a private LAN, and most public LANs plus carrier links.
pub const MAX_BLOCKS: usize = 32;

/// The outside address of site `n`'s outermost router.
pub fn site_wan(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + n as u8)
}

/// Address `host` of private /29 number `block` (198.51.100.0/24).
pub fn private(block: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (block * 8) as u8 + host)
}

/// Address `host` of public /29 number `block` (192.0.2.0/24).
pub fn public(block: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (block * 8) as u8 + host)
}

/// The network address of the /29 holding `a`, as `a.b.c.d/29`.
pub fn lan_net(a: Ipv4Addr) -> String {
    let o = a.octets();
    format!("{}.{}.{}.{}/{LAN_PREFIX}", o[0], o[1], o[2], o[3] & 0xf8)
}

/// The documentation ranges, for the relay's peer allow list.
pub const DOC_RANGES: [&str; 3] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
