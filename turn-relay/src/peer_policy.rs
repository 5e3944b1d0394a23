//! Which peers the relay may send to (RFC 8656 §21, RFC 6156 §9.1).
//!
//! An open TURN relay is a proxy into whatever network it sits in: without a
//! deny list, any client with credentials can reach the relay host's loopback
//! services, the cloud metadata endpoint, or the operator's private network.
//! [`PeerPolicy`] is the relay's answer, checked on CreatePermission,
//! ChannelBind and every Send indication / ChannelData.
//!
//! # Order of the checks ([`PeerPolicy::check`])
//!
//! 1. **The relay's own listening addresses** (IP and port) are always denied,
//!    whatever the lists say: relaying to them would make the relay its own
//!    client (TURN loops, RFC 8656 §21.2). A listener on an unspecified IP
//!    (`0.0.0.0:3478`, `[::]:3478`) stands for that port on every relay IP
//!    (of both families: a `[::]` socket may accept IPv4 too), on loopback
//!    and on the unspecified address itself (which Linux delivers locally).
//!    A listener on one of the relay's own IPs also stands for that port on
//!    the others: behind a 1:1 NAT the external IP hairpins to it.
//! 2. **The operator's deny list** (`--deny-peer`).
//! 3. **The operator's allow list** (`--allow-peer`): this is how tests reach
//!    peers on loopback (`--allow-peer 127.0.0.0/8`), and how a private
//!    deployment reaches its LAN.
//! 4. **The default deny list** below.
//! 5. Otherwise allowed.
//!
//! The relay-to-relay exception — a peer that is the relayed address of
//! another allocation on this relay is allowed whatever range it is in
//! (two clients relayed through one server must reach each other, also when
//! the relay address is on loopback in tests) — is the caller's job: it knows
//! the live allocations and checks that before calling [`PeerPolicy::check`].
//!
//! # IPv4 embedded in IPv6
//!
//! Before any check, the peer address is reduced to the address the traffic
//! really reaches ([`effective_ip`]): IPv4-mapped (`::ffff:0:0/96`),
//! IPv4-compatible (`::/96`, but not `::` and `::1`), NAT64 well-known prefix
//! (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002::/16`, the IPv4 address in bits
//! 16-48, RFC 3056) addresses are checked as the IPv4 address inside them,
//! so `::ffff:127.0.0.1` or `2002:a00:1::` are as denied as `127.0.0.1` and
//! `10.0.0.1`. Operator allow ranges are matched against that effective
//! address only (allowing `2002::/16` must not open 6to4 paths to `10/8`);
//! deny ranges against both the effective address and the address as
//! written (deny is the conservative side).
//!
//! # Default deny list (each one is a [`DenyReason`])
//!
//! IPv4 (IANA IPv4 Special-Purpose Address Registry, RFC 6890):
//!
//! | range | reason |
//! |---|---|
//! | 0.0.0.0/8 | "this network" (RFC 791); 0.0.0.0 is delivered locally by Linux |
//! | 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 | RFC 1918 private |
//! | 100.64.0.0/10 | RFC 6598 shared address space (carrier-grade NAT) |
//! | 100.100.100.200/32 | cloud metadata (Alibaba Cloud), inside the range above |
//! | 127.0.0.0/8 | loopback |
//! | 169.254.169.254/32, 169.254.170.2/32 | cloud metadata (AWS, GCP, Azure, OCI; AWS ECS task metadata) |
//! | 169.254.0.0/16 | link-local (RFC 3927) |
//! | 192.0.0.0/24 | IETF protocol assignments (RFC 6890; includes the PCP and TURN anycast addresses, which a relay has no business forwarding to) |
//! | 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 | documentation (RFC 5737): never on the Internet; the NAT lab must `--allow-peer` them |
//! | 192.88.99.0/24 | 6to4 relay anycast (RFC 7526, deprecated): a path into IPv6 tunnels |
//! | 198.18.0.0/15 | benchmarking (RFC 2544) |
//! | 224.0.0.0/4 | multicast |
//! | 255.255.255.255/32 | limited broadcast |
//! | 240.0.0.0/4 | reserved (RFC 1112) |
//!
//! IPv6 (IANA IPv6 Special-Purpose Address Registry):
//!
//! | range | reason |
//! |---|---|
//! | ::/128 | unspecified |
//! | ::1/128 | loopback |
//! | 64:ff9b:1::/48 | NAT64 local-use prefix (RFC 8215): the operator picks where IPv4 sits inside it, so it cannot be unwrapped reliably; denied whole |
//! | ::/8 (the rest, e.g. SIIT `::ffff:0:0:0/96`) | reserved |
//! | 100::/64 | discard-only (RFC 6666) |
//! | 2001::/32 | Teredo (RFC 4380): tunnels to obfuscated IPv4 addresses that cannot be checked |
//! | 2001:2::/48 | benchmarking (RFC 5180) |
//! | 2001:10::/28, 2001:20::/28 | ORCHID (RFC 4843, RFC 7343): not routable |
//! | 2001:db8::/32, 3fff::/20 | documentation (RFC 3849, RFC 9637) |
//! | fd00:ec2::254/128 | cloud metadata (AWS IMDS over IPv6), inside fc00::/7 |
//! | fc00::/7 | unique local (RFC 4193) |
//! | fe80::/10 | link-local |
//! | fec0::/10 | site-local (RFC 3879, deprecated but still routed by some stacks) |
//! | ff00::/8 | multicast |
//! | everything else outside 2000::/3 | reserved: not global unicast (e.g. SRv6 SIDs 5f00::/16, RFC 9602) |
//!
//! Not handled: ISATAP interface identifiers (`::5efe:a.b.c.d`) name a
//! tunnel end point inside a global IPv6 prefix, not the destination; they
//! are treated as the IPv6 address they are.
//!
//! # Cost
//!
//! [`PeerPolicy::check`] runs on every Send indication and never allocates:
//! it walks two small constant tables and the operator's (short) lists.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why a peer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// One of the relay's own listening addresses (no TURN loops).
    RelayAddress,
    /// The operator's `--deny-peer` list.
    OperatorDeny,
    /// 0.0.0.0/8, "this network".
    ThisNetwork,
    /// `::`.
    Unspecified,
    /// 127.0.0.0/8 or `::1`.
    Loopback,
    /// RFC 1918 private ranges.
    Private,
    /// 100.64.0.0/10, RFC 6598 shared address space (carrier-grade NAT).
    SharedAddress,
    /// A cloud provider's instance metadata service.
    CloudMetadata,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// 192.0.0.0/24, IETF protocol assignments.
    IetfProtocol,
    /// RFC 5737 / RFC 3849 / RFC 9637 documentation ranges.
    Documentation,
    /// 192.88.99.0/24, 6to4 relay anycast.
    SixToFourRelay,
    /// 198.18.0.0/15 or 2001:2::/48.
    Benchmarking,
    /// 224.0.0.0/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4, or IPv6 outside 2000::/3 not named otherwise.
    Reserved,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10.
    SiteLocal,
    /// 2001::/32.
    Teredo,
    /// 2001:10::/28 and 2001:20::/28.
    Orchid,
    /// 100::/64.
    DiscardOnly,
    /// 64:ff9b:1::/48.
    Nat64LocalUse,
}

impl DenyReason {
    /// A short human description (also what [`fmt::Display`] prints).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::RelayAddress => "relay listening address",
            DenyReason::OperatorDeny => "operator deny list",
            DenyReason::ThisNetwork => "\"this network\" (0.0.0.0/8)",
            DenyReason::Unspecified => "unspecified address",
            DenyReason::Loopback => "loopback",
            DenyReason::Private => "RFC 1918 private",
            DenyReason::SharedAddress => "RFC 6598 shared address space (CGNAT)",
            DenyReason::CloudMetadata => "cloud metadata service",
            DenyReason::LinkLocal => "link-local",
            DenyReason::IetfProtocol => "IETF protocol assignment (192.0.0.0/24)",
            DenyReason::Documentation => "documentation range",
            DenyReason::SixToFourRelay => "6to4 relay anycast",
            DenyReason::Benchmarking => "benchmarking range",
            DenyReason::Multicast => "multicast",
            DenyReason::Broadcast => "broadcast",
            DenyReason::Reserved => "reserved range",
            DenyReason::UniqueLocal => "unique local (fc00::/7)",
            DenyReason::SiteLocal => "site-local (fec0::/10)",
            DenyReason::Teredo => "Teredo (2001::/32)",
            DenyReason::Orchid => "ORCHID",
            DenyReason::DiscardOnly => "discard-only (100::/64)",
            DenyReason::Nat64LocalUse => "NAT64 local-use prefix (64:ff9b:1::/48)",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`PeerPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The relay may send to the peer.
    Allowed,
    /// The relay must not (403 on CreatePermission and ChannelBind, a silent
    /// drop on Send indications and ChannelData, RFC 8656 §10.2, §11.2).
    Denied(DenyReason),
}

impl Verdict {
    /// Whether this is [`Verdict::Allowed`].
    pub fn is_allowed(self) -> bool {
        self == Verdict::Allowed
    }
}

/// The peer rules of one configuration: immutable, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// Listening addresses, IPs already reduced by [`effective_ip`].
    listeners: Vec<SocketAddr>,
    /// Every IP the relay answers on (reduced by [`effective_ip`]), for
    /// listeners on an unspecified IP.
    relay_ips: Vec<IpAddr>,
}

impl PeerPolicy {
    /// Builds the policy.
    ///
    /// - `allow`, `deny`: the operator's `--allow-peer` / `--deny-peer` ranges.
    /// - `listeners`: every address the relay listens on for clients (UDP,
    ///   TCP and TLS), as bound: pass the sockets' `local_addr()` when a
    ///   configured port was 0.
    /// - `relay_ips`: every IP the relay host answers on: the relay IPs, the
    ///   external (advertised) IPs — a 1:1 NAT hairpins them back to the
    ///   listeners — and ideally every local interface address
    ///   ([`local_ips`]), so that a listener on `0.0.0.0` cannot be reached
    ///   through a LAN address the operator allowed.
    pub fn new(
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
        listeners: Vec<SocketAddr>,
        relay_ips: Vec<IpAddr>,
    ) -> Self {
        let listeners = listeners
            .into_iter()
            .map(|l| SocketAddr::new(effective_ip(l.ip()), l.port()))
            .collect();
        let mut relay_ips: Vec<IpAddr> = relay_ips.into_iter().map(effective_ip).collect();
        relay_ips.sort_unstable();
        relay_ips.dedup();
        PeerPolicy {
            allow: allow.into_iter().map(|n| n.trunc()).collect(),
            deny: deny.into_iter().map(|n| n.trunc()).collect(),
            listeners,
            relay_ips,
        }
    }

    /// Whether the relay may send to `peer` (see the module docs for the
    /// order of the rules). Never allocates.
    pub fn check(&self, peer: SocketAddr) -> Verdict {
        let ip = effective_ip(peer.ip());
        if self.is_listener(ip, peer.port()) {
            return Verdict::Denied(DenyReason::RelayAddress);
        }
        match self.list_verdict(peer.ip(), ip) {
            Some(v) => v,
            None => match default_deny(ip) {
                Some(r) => Verdict::Denied(r),
                None => Verdict::Allowed,
            },
        }
    }

    /// Whether some port of `ip` may be relayed to: the same rules as
    /// [`PeerPolicy::check`] without the per-port listener rule. Permissions
    /// are per IP (RFC 8656 §9), so this is the check for CreatePermission
    /// and for re-checking installed permissions after a reload.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let eff = effective_ip(ip);
        match self.list_verdict(ip, eff) {
            Some(v) => v.is_allowed(),
            None => default_deny(eff).is_none(),
        }
    }

    /// The operator lists' say, if they have one: deny first, then allow.
    fn list_verdict(&self, written: IpAddr, eff: IpAddr) -> Option<Verdict> {
        if self
            .deny
            .iter()
            .any(|n| n.contains(&eff) || n.contains(&written))
        {
            return Some(Verdict::Denied(DenyReason::OperatorDeny));
        }
        if self.allow.iter().any(|n| n.contains(&eff)) {
            return Some(Verdict::Allowed);
        }
        None
    }

    /// Whether `ip:port` (an effective IP) reaches one of our listeners.
    fn is_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners.iter().any(|l| {
            if l.port() != port {
                return false;
            }
            let lip = l.ip();
            let own = |a: &IpAddr| self.relay_ips.binary_search(a).is_ok();
            lip == ip
                // A datagram to 0.0.0.0 or :: is delivered to the local host.
                || (ip.is_unspecified() && (lip.is_loopback() || lip.is_unspecified()))
                || (lip.is_unspecified() && (ip.is_loopback() || own(&ip)))
                // The relay's own addresses alias each other: an external
                // IP hairpins through a 1:1 NAT to the listener's IP.
                || (own(&lip) && own(&ip))
        })
    }
}

/// The address traffic to `ip` actually reaches: IPv4 embedded in IPv6
/// (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is
/// unwrapped; anything else is returned as is.
pub fn effective_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

/// The IPv4 address embedded in `v6`, for the forms the module docs list.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = v6.to_bits();
    let low32 = Ipv4Addr::from_bits(bits as u32);
    // IPv4-mapped ::ffff:a.b.c.d (RFC 4291 §2.5.5.2).
    if bits >> 32 == 0xffff {
        return Some(low32);
    }
    // IPv4-compatible ::a.b.c.d (RFC 4291 §2.5.5.1, deprecated); :: and ::1
    // are IPv6's own unspecified and loopback addresses.
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052 §2.1).
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32);
    }
    // 6to4 2002:V4ADDR::/48 (RFC 3056 §2).
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

/// The default deny list's verdict on an effective address.
fn default_deny(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => {
            let a = v4.to_bits();
            V4_DENY
                .iter()
                .find(|&&(net, len, _)| a & mask32(len) == net)
                .map(|&(_, _, r)| r)
        }
        IpAddr::V6(v6) => {
            let a = v6.to_bits();
            let named = V6_DENY
                .iter()
                .find(|&&(net, len, _)| a & mask128(len) == net)
                .map(|&(_, _, r)| r);
            // Only 2000::/3 is allocated for global unicast (RFC 4291 §2.4).
            named.or((a >> 125 != 0b001).then_some(DenyReason::Reserved))
        }
    }
}

const fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

const fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    Ipv4Addr::new(a, b, c, d).to_bits()
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16) -> u128 {
    Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits()
}

/// IPv4 default deny ranges; the first match names the reason, so the
/// specific entries come before the ranges that contain them.
const V4_DENY: &[(u32, u8, DenyReason)] = &[
    (v4(255, 255, 255, 255), 32, DenyReason::Broadcast),
    (v4(169, 254, 169, 254), 32, DenyReason::CloudMetadata),
    (v4(169, 254, 170, 2), 32, DenyReason::CloudMetadata),
    (v4(100, 100, 100, 200), 32, DenyReason::CloudMetadata),
    (v4(0, 0, 0, 0), 8, DenyReason::ThisNetwork),
    (v4(10, 0, 0, 0), 8, DenyReason::Private),
    (v4(100, 64, 0, 0), 10, DenyReason::SharedAddress),
    (v4(127, 0, 0, 0), 8, DenyReason::Loopback),
    (v4(169, 254, 0, 0), 16, DenyReason::LinkLocal),
    (v4(172, 16, 0, 0), 12, DenyReason::Private),
    (v4(192, 0, 0, 0), 24, DenyReason::IetfProtocol),
    (v4(192, 0, 2, 0), 24, DenyReason::Documentation),
    (v4(192, 88, 99, 0), 24, DenyReason::SixToFourRelay),
    (v4(192, 168, 0, 0), 16, DenyReason::Private),
    (v4(198, 18, 0, 0), 15, DenyReason::Benchmarking),
    (v4(198, 51, 100, 0), 24, DenyReason::Documentation),
    (v4(203, 0, 113, 0), 24, DenyReason::Documentation),
    (v4(224, 0, 0, 0), 4, DenyReason::Multicast),
    (v4(240, 0, 0, 0), 4, DenyReason::Reserved),
];

/// IPv6 default deny ranges (after unwrapping embedded IPv4), specific
/// entries first; everything outside 2000::/3 is denied after these.
const V6_DENY: &[(u128, u8, DenyReason)] = &[
    (0, 128, DenyReason::Unspecified),
    (1, 128, DenyReason::Loopback),
    (
        v6(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        128,
        DenyReason::CloudMetadata,
    ),
    (
        v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        DenyReason::Nat64LocalUse,
    ),
    (0, 8, DenyReason::Reserved),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0), 64, DenyReason::DiscardOnly),
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, DenyReason::Teredo),
    (
        v6(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        DenyReason::Benchmarking,
    ),
    (v6(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28, DenyReason::Orchid),
    (v6(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28, DenyReason::Orchid),
    (
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        DenyReason::Documentation,
    ),
    (
        v6(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        DenyReason::Documentation,
    ),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, DenyReason::UniqueLocal),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, DenyReason::LinkLocal),
    (v6(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, DenyReason::SiteLocal),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, DenyReason::Multicast),
];

/// Every address configured on the host's interfaces (`getifaddrs`), for
/// [`PeerPolicy::new`]'s `relay_ips` when a listener is on an unspecified IP.
pub fn local_ips() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its
            // real type; we read the larger types only for their family.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// No operator lists, no listeners: only the default deny list.
    fn defaults() -> PeerPolicy {
        PeerPolicy::new(vec![], vec![], vec![], vec![])
    }

    fn verdict(p: &PeerPolicy, addr: &str) -> Verdict {
        p.check(SocketAddr::new(ip(addr), 40000))
    }

    #[test]
    fn every_default_ipv4_range_with_its_edges() {
        use DenyReason::*;
        let p = defaults();
        let cases: &[(&str, Option<DenyReason>)] = &[
            ("0.0.0.0", Some(ThisNetwork)),
            ("0.255.255.255", Some(ThisNetwork)),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(SharedAddress)),
            ("100.127.255.255", Some(SharedAddress)),
            ("100.100.100.200", Some(CloudMetadata)),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.170.2", Some(CloudMetadata)),
            ("169.254.255.255", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.0.0.9", Some(IetfProtocol)),
            ("192.0.1.0", None),
            ("192.0.2.1", Some(Documentation)),
            ("192.0.3.0", None),
            ("192.88.99.1", Some(SixToFourRelay)),
            ("192.88.100.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("192.169.0.0", None),
            ("198.17.255.255", None),
            ("198.18.0.0", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.0", None),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.7", Some(Documentation)),
            ("203.0.114.0", None),
            ("223.255.255.255", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.0", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
        ];
        for &(a, want) in cases {
            let want = want.map_or(Verdict::Allowed, Verdict::Denied);
            assert_eq!(verdict(&p, a), want, "{a}");
            assert_eq!(p.ip_allowed(ip(a)), want.is_allowed(), "{a}");
        }
    }

    #[test]
    fn every_default_ipv6_range_with_its_edges() {
        use DenyReason::*;
        let p = defaults();
        let cases: &[(&str, Option<DenyReason>)] = &[
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            // SIIT "IPv4-translated" form: not unwrapped, reserved.
            ("::ffff:0:1.2.3.4", Some(Reserved)),
            ("64:ff9b:1::1", Some(Nat64LocalUse)),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(Nat64LocalUse)),
            ("64:ff9b:2::1", Some(Reserved)),
            ("100::1", Some(DiscardOnly)),
            ("100:0:0:1::1", Some(Reserved)),
            ("2001::1", Some(Teredo)),
            ("2001:0:ffff:ffff::1", Some(Teredo)),
            ("2001:1::1", None),
            ("2001:2::1", Some(Benchmarking)),
            ("2001:2:1::1", None),
            ("2001:10::1", Some(Orchid)),
            ("2001:1f:ffff::1", Some(Orchid)),
            ("2001:2f:ffff::1", Some(Orchid)),
            ("2001:30::1", None),
            ("2001:db8::1", Some(Documentation)),
            ("2001:db9::1", None),
            ("3fff::1", Some(Documentation)),
            ("3fff:fff::1", Some(Documentation)),
            ("3fff:1000::1", None),
            ("2606:4700::1111", None),
            ("1fff:ffff::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("5f00::1", Some(Reserved)),
            ("fbff::1", Some(Reserved)),
            ("fc00::1", Some(UniqueLocal)),
            ("fdff:ffff::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fd00:ec2::253", Some(UniqueLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("ffff:ffff::1", Some(Multicast)),
        ];
        for &(a, want) in cases {
            let want = want.map_or(Verdict::Allowed, Verdict::Denied);
            assert_eq!(verdict(&p, a), want, "{a}");
            assert_eq!(p.ip_allowed(ip(a)), want.is_allowed(), "{a}");
        }
    }

    #[test]
    fn embedded_ipv4_is_checked_as_ipv4_in_every_form() {
        let p = defaults();
        // (IPv4, its mapped, compatible, NAT64 and 6to4 forms)
        let cases = [
            (
                "127.0.0.1",
                "::ffff:127.0.0.1",
                "::127.0.0.1",
                "64:ff9b::7f00:1",
                "2002:7f00:1::",
            ),
            (
                "10.1.2.3",
                "::ffff:10.1.2.3",
                "::10.1.2.3",
                "64:ff9b::a01:203",
                "2002:a01:203:1::5",
            ),
            (
                "169.254.169.254",
                "::ffff:169.254.169.254",
                "::169.254.169.254",
                "64:ff9b::a9fe:a9fe",
                "2002:a9fe:a9fe::1",
            ),
            (
                "192.168.1.1",
                "::ffff:c0a8:101",
                "::c0a8:101",
                "64:ff9b::192.168.1.1",
                "2002:c0a8:101::",
            ),
            (
                "100.64.0.1",
                "::ffff:100.64.0.1",
                "::100.64.0.1",
                "64:ff9b::6440:1",
                "2002:6440:1::",
            ),
            (
                "0.0.0.0",
                "::ffff:0.0.0.0",
                "::0.0.0.2",
                "64:ff9b::",
                "2002::",
            ),
            (
                "224.0.0.1",
                "::ffff:224.0.0.1",
                "::224.0.0.1",
                "64:ff9b::e000:1",
                "2002:e000:1::",
            ),
            (
                "8.8.8.8",
                "::ffff:8.8.8.8",
                "::8.8.8.8",
                "64:ff9b::808:808",
                "2002:808:808::1",
            ),
        ];
        for (v4s, mapped, compat, nat64, six2four) in cases {
            let want = verdict(&p, v4s);
            for form in [mapped, compat, nat64, six2four] {
                let got = verdict(&p, form);
                // 0.0.0.2 (from ::0.0.0.2) is in the same /8 as 0.0.0.0.
                assert_eq!(got, want, "{form} should be checked as {v4s}");
                assert_eq!(p.ip_allowed(ip(form)), want.is_allowed(), "{form}");
                assert!(effective_ip(ip(form)).is_ipv4(), "{form}");
            }
        }
        // :: and ::1 are IPv6's own, not IPv4-compatible addresses.
        assert_eq!(effective_ip(ip("::")), ip("::"));
        assert_eq!(effective_ip(ip("::1")), ip("::1"));
        assert_eq!(effective_ip(ip("2002:c000:204::")), ip("192.0.2.4"));
        assert_eq!(effective_ip(ip("64:ff9b::c000:204")), ip("192.0.2.4"));
        assert_eq!(effective_ip(ip("2606:4700::1111")), ip("2606:4700::1111"));
    }

    #[test]
    fn listeners_are_denied_before_everything() {
        let p = PeerPolicy::new(
            nets(&["127.0.0.0/8", "203.0.113.0/24", "::1/128"]),
            vec![],
            vec![sa("127.0.0.1:3478"), sa("203.0.113.5:5349")],
            vec![ip("203.0.113.5")],
        );
        let relay = Verdict::Denied(DenyReason::RelayAddress);
        assert_eq!(p.check(sa("127.0.0.1:3478")), relay);
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:3478")), relay);
        assert_eq!(p.check(sa("[64:ff9b::7f00:1]:3478")), relay);
        assert_eq!(p.check(sa("203.0.113.5:5349")), relay);
        // 0.0.0.0 is delivered to the local host, so it reaches 127.0.0.1.
        assert_eq!(p.check(sa("0.0.0.0:3478")), relay);
        // Other ports and other loopback addresses are allowed by the list.
        assert!(p.check(sa("127.0.0.1:3479")).is_allowed());
        assert!(p.check(sa("127.0.0.2:3478")).is_allowed());
        assert!(p.check(sa("203.0.113.5:3478")).is_allowed());
        // The IP-wide check ignores the per-port listener rule.
        assert!(p.ip_allowed(ip("127.0.0.1")));
    }

    #[test]
    fn an_unspecified_listener_covers_relay_ips_and_loopback() {
        let p = PeerPolicy::new(
            nets(&["0.0.0.0/0", "::/0"]),
            vec![],
            vec![sa("0.0.0.0:3478")],
            vec![ip("198.51.100.9"), ip("2001:db8::9")],
        );
        let relay = Verdict::Denied(DenyReason::RelayAddress);
        for peer in [
            "198.51.100.9:3478",
            "[2001:db8::9]:3478",
            "127.0.0.1:3478",
            "127.3.2.1:3478",
            "[::1]:3478",
            "[::ffff:198.51.100.9]:3478",
            "0.0.0.0:3478",
            "[::]:3478",
        ] {
            assert_eq!(p.check(sa(peer)), relay, "{peer}");
        }
        assert!(p.check(sa("198.51.100.10:3478")).is_allowed());
        assert!(p.check(sa("198.51.100.9:3479")).is_allowed());
        // A [::] listener covers IPv4 relay IPs too (a dual-stack socket).
        let p = PeerPolicy::new(
            nets(&["0.0.0.0/0"]),
            vec![],
            vec![sa("[::]:3478")],
            vec![ip("198.51.100.9")],
        );
        assert_eq!(p.check(sa("198.51.100.9:3478")), relay);
    }

    #[test]
    fn a_listener_is_reached_through_the_external_ip_too() {
        // Behind a 1:1 NAT: listening on the internal address, advertised
        // as 203.0.113.5, which the NAT hairpins back to the listener.
        let p = PeerPolicy::new(
            nets(&["0.0.0.0/0"]),
            vec![],
            vec![sa("10.0.0.5:3478")],
            vec![ip("10.0.0.5"), ip("203.0.113.5")],
        );
        let relay = Verdict::Denied(DenyReason::RelayAddress);
        assert_eq!(p.check(sa("203.0.113.5:3478")), relay);
        assert_eq!(p.check(sa("10.0.0.5:3478")), relay);
        assert!(p.check(sa("203.0.113.5:3479")).is_allowed());
        assert!(p.check(sa("203.0.113.6:3478")).is_allowed());
        // Without the listener's IP among the relay's own IPs, nothing else aliases it.
        let p = PeerPolicy::new(
            nets(&["0.0.0.0/0"]),
            vec![],
            vec![sa("10.0.0.5:3478")],
            vec![ip("203.0.113.5")],
        );
        assert!(p.check(sa("203.0.113.5:3478")).is_allowed());
    }

    #[test]
    fn operator_deny_beats_allow_and_allow_beats_defaults() {
        let p = PeerPolicy::new(
            nets(&["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]),
            nets(&["127.0.0.5/32", "8.8.8.0/24", "10.9.0.0/16"]),
            vec![],
            vec![],
        );
        let deny = Verdict::Denied(DenyReason::OperatorDeny);
        assert!(p.check(sa("127.0.0.1:5000")).is_allowed());
        assert!(p.check(sa("[::ffff:127.0.0.1]:5000")).is_allowed());
        assert!(p.check(sa("10.1.1.1:5000")).is_allowed());
        assert!(p.check(sa("[fd12::1]:5000")).is_allowed());
        assert_eq!(p.check(sa("127.0.0.5:5000")), deny);
        assert_eq!(p.check(sa("[::ffff:127.0.0.5]:5000")), deny);
        assert_eq!(p.check(sa("10.9.3.3:5000")), deny);
        assert_eq!(p.check(sa("8.8.8.8:53")), deny);
        assert_eq!(p.check(sa("[2002:808:808::]:53")), deny);
        assert!(!p.ip_allowed(ip("8.8.8.8")));
        assert!(p.ip_allowed(ip("10.1.1.1")));
        // Not on either list: the defaults decide.
        assert_eq!(
            p.check(sa("192.168.1.1:5000")),
            Verdict::Denied(DenyReason::Private)
        );
        assert!(p.check(sa("8.8.4.4:53")).is_allowed());
    }

    #[test]
    fn operator_ranges_match_the_right_form() {
        // Allowing 2002::/16 does not open 6to4 paths into private ranges:
        // allow ranges see the effective (IPv4) address.
        let p = PeerPolicy::new(nets(&["2002::/16"]), vec![], vec![], vec![]);
        assert_eq!(
            p.check(sa("[2002:a00:1::]:5000")),
            Verdict::Denied(DenyReason::Private)
        );
        // Deny ranges see both forms: denying NAT64 denies it for public IPv4.
        let p = PeerPolicy::new(vec![], nets(&["64:ff9b::/96"]), vec![], vec![]);
        assert_eq!(
            p.check(sa("[64:ff9b::808:808]:53")),
            Verdict::Denied(DenyReason::OperatorDeny)
        );
        assert!(p.check(sa("8.8.8.8:53")).is_allowed());
        // Host bits in an operator range are ignored.
        let p = PeerPolicy::new(nets(&["127.0.0.1/8"]), vec![], vec![], vec![]);
        assert!(p.check(sa("127.9.9.9:1")).is_allowed());
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(DenyReason::Loopback.to_string(), "loopback");
        assert_eq!(DenyReason::Private.to_string(), "RFC 1918 private");
        assert_eq!(
            DenyReason::RelayAddress.to_string(),
            "relay listening address"
        );
        assert_eq!(DenyReason::OperatorDeny.to_string(), "operator deny list");
        assert_eq!(
            verdict(&defaults(), "169.254.169.254"),
            Verdict::Denied(DenyReason::CloudMetadata)
        );
        assert_eq!(
            DenyReason::CloudMetadata.to_string(),
            "cloud metadata service"
        );
    }

    #[test]
    fn local_ips_include_loopback() {
        let ips = local_ips().unwrap();
        assert!(ips.contains(&ip("127.0.0.1")), "{ips:?}");
    }
}
