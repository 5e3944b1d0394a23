//! NAT behaviors and the nftables rulesets that give them.
//!
//! Vocabulary of RFC 4787: mapping behavior (§4.1) and filtering behavior
//! (§5), hairpinning (§6). How each is obtained from Linux netfilter:
//!
//! - `masquerade` keeps the source port when it is free, and conntrack
//!   reuses nothing per destination, so the mapping is endpoint-independent
//!   (EIM); `masquerade random` picks a fresh random port for every new flow,
//!   which is address-and-port-dependent mapping (APDM, "symmetric").
//! - Two more APDM allocators seen in the wild (RFC 4787 §4.2.1 port
//!   preservation, and the sequential allocators port prediction feeds on):
//!   `snat to WAN:numgen inc` hands each new flow the next port of a counter;
//!   and "preserving" keeps the inside source port while no mapping holds it
//!   as an outside port (a dynamic set the router learns after NAT), and
//!   picks a random one otherwise, so a socket's first flow keeps its port
//!   and every later destination gets another.
//! - The UDP mapping lifetime is conntrack's UDP timeouts, which are per
//!   network namespace (`net.netfilter.nf_conntrack_udp_timeout` and
//!   `..._stream`); a router can get short ones (RFC 4787 §4.3 asks for at
//!   least 2 min; many home routers use 30 s).
//! - Conntrack alone lets in only replies to flows the inside opened:
//!   address-and-port-dependent filtering (APDF). Looser filtering needs
//!   the inbound half by hand: the router learns each mapping (outside
//!   port → inside address and port) in a dynamic map after source NAT,
//!   and DNATs new inbound flows by that map, for anyone (endpoint-independent
//!   filtering, EIF) or only for remote addresses the mapping has sent to (a
//!   dynamic set, address-dependent filtering, ADF).
//! - Hairpinning (RFC 4787 §6, REQ-9) uses the same map for packets from the
//!   inside to the router's own outside address, and masquerades them so
//!   they arrive from the outside address.
//! - Every router drops unsolicited inbound traffic: the forward chain
//!   accepts established flows and flows its own DNAT let in, nothing else
//!   from outside; the input chain drops new traffic from outside.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

/// Filtering behavior of an endpoint-independent-mapping NAT (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filtering {
    /// Anyone may send to a mapping (full cone).
    EndpointIndependent,
    /// Only addresses the mapping has sent to (restricted cone).
    AddressDependent,
    /// Only address and port pairs the mapping has sent to (port-restricted).
    AddressAndPortDependent,
}

/// What stands between a site's host and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// Public address, plain router: no NAT, no filtering.
    Open,
    /// Public address behind a stateful firewall: no NAT, unsolicited
    /// inbound dropped (RFC 5780 calls the result a "symmetric UDP firewall").
    NoNat,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    RestrictedCone,
    /// EIM + APDF.
    PortRestrictedCone,
    /// APDM (+ APDF), a random port per flow.
    Symmetric,
    /// APDM (+ APDF), ports handed out in sequence: each new flow gets the
    /// previous one's port plus one.
    SymmetricSequential,
    /// APDM (+ APDF) with port preservation: a flow keeps its inside source
    /// port when no other mapping holds it, else gets a random one.
    SymmetricPreserving,
    /// A carrier-grade NAT (EIM + ADF, RFC 6888 asks for EIM) in front of a
    /// home NAT (EIM + APDF): together EIM + APDF.
    DoubleNat,
    /// A port-restricted NAT whose network lets out only TCP to the relay's
    /// TURN and TURN-over-TLS ports: no UDP at all.
    UdpBlocked,
}

impl NatKind {
    /// Every kind, in table order.
    pub const ALL: [NatKind; 10] = [
        NatKind::Open,
        NatKind::NoNat,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
        NatKind::SymmetricSequential,
        NatKind::SymmetricPreserving,
        NatKind::DoubleNat,
        NatKind::UdpBlocked,
    ];

    /// The kebab-case name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::NoNat => "no-nat",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::Symmetric => "symmetric",
            NatKind::SymmetricSequential => "symmetric-sequential",
            NatKind::SymmetricPreserving => "symmetric-preserving",
            NatKind::DoubleNat => "double-nat",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// One line on what the lab builds for this kind (RFC 4787 terms).
    pub fn describe(self) -> &'static str {
        match self {
            NatKind::Open => "public address, plain router: no NAT, nothing filtered",
            NatKind::NoNat => {
                "public address behind a stateful firewall: no NAT, unsolicited inbound dropped"
            }
            NatKind::FullCone => {
                "endpoint-independent mapping and filtering (SNAT, inbound DNAT by a learned map)"
            }
            NatKind::RestrictedCone => {
                "endpoint-independent mapping, address-dependent filtering (learned map and set)"
            }
            NatKind::PortRestrictedCone => {
                "endpoint-independent mapping, address-and-port-dependent filtering (masquerade)"
            }
            NatKind::Symmetric => {
                "address-and-port-dependent mapping and filtering (masquerade random)"
            }
            NatKind::SymmetricSequential => {
                "address-and-port-dependent mapping and filtering, ports in sequence (snat to a numgen counter)"
            }
            NatKind::SymmetricPreserving => {
                "address-and-port-dependent mapping and filtering, keeps the source port while free (masquerade, random when taken)"
            }
            NatKind::DoubleNat => {
                "a carrier-grade NAT (EIM, address-dependent filtering) in front of a port-restricted home NAT"
            }
            NatKind::UdpBlocked => {
                "port-restricted NAT that lets out only TCP to the relay's TURN and TURN-over-TLS ports"
            }
        }
    }

    /// A short tag for namespace names.
    pub fn short(self) -> &'static str {
        match self {
            NatKind::Open => "op",
            NatKind::NoNat => "nn",
            NatKind::FullCone => "fc",
            NatKind::RestrictedCone => "rc",
            NatKind::PortRestrictedCone => "pr",
            NatKind::Symmetric => "sy",
            NatKind::SymmetricSequential => "sq",
            NatKind::SymmetricPreserving => "sp",
            NatKind::DoubleNat => "dn",
            NatKind::UdpBlocked => "ub",
        }
    }

    /// Parse a name as [`NatKind::name`] gives it.
    pub fn parse(s: &str) -> Option<NatKind> {
        NatKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the site's host has a public address (no NAT on the way).
    pub fn is_public(self) -> bool {
        matches!(self, NatKind::Open | NatKind::NoNat)
    }

    /// Whether the mapping, as seen from outside, depends on the
    /// destination (APDM).
    pub fn endpoint_dependent_mapping(self) -> bool {
        matches!(
            self,
            NatKind::Symmetric | NatKind::SymmetricSequential | NatKind::SymmetricPreserving
        )
    }

    /// The filtering seen from outside, all NATs on the way together
    /// (`None`: nothing filters).
    pub fn filtering(self) -> Option<Filtering> {
        match self {
            NatKind::Open => None,
            NatKind::FullCone => Some(Filtering::EndpointIndependent),
            NatKind::RestrictedCone => Some(Filtering::AddressDependent),
            NatKind::NoNat
            | NatKind::PortRestrictedCone
            | NatKind::Symmetric
            | NatKind::SymmetricSequential
            | NatKind::SymmetricPreserving
            | NatKind::DoubleNat
            | NatKind::UdpBlocked => Some(Filtering::AddressAndPortDependent),
        }
    }

    /// Whether a port-mapping daemon on the site's (home) NAT can open it
    /// to the internet. Not without a NAT, and not behind the double NAT's
    /// carrier-grade NAT: a mapping on the home NAT leaves the CGN's
    /// filter closed, and miniupnpd sees that at start (its RFC 3489 test
    /// gets no answer from the STUN server's other address through the
    /// CGN's address-dependent filtering), says "Port forwarding is now
    /// disabled" and answers every request with an error (UPnP 501,
    /// NAT-PMP 3 "network failure"). RFC 6887 §5 leaves that case to a
    /// PCP server on the CGN itself, which real carriers rarely run.
    ///
    /// Nor on the UDP-blocked network: its block is the network's policy
    /// (a firewall the user cannot ask), not a home gateway's. In the lab
    /// miniupnpd there did open it: a mapped port's inbound flows pass the
    /// router's forward chain as its own DNAT (`ct status dnat`) and the
    /// answers as established, so the peer connected directly over UDP
    /// through a network that "lets out no UDP".
    pub fn port_mapping_possible(self) -> bool {
        !self.is_public() && !matches!(self, NatKind::DoubleNat | NatKind::UdpBlocked)
    }

    /// Whether UDP gets out of the site at all.
    pub fn udp_allowed(self) -> bool {
        self != NatKind::UdpBlocked
    }

    /// Whether two peers, one behind `self` and one behind `other`, can
    /// reach each other directly by hole punching (UDP, RFC 8445), given
    /// what each NAT does; `false` means only a relay connects them.
    ///
    /// A peer behind an address-and-port-dependent mapping shows the other
    /// side a port it could not predict. If the other side filters by
    /// address and port (or maps that way too), the checks it sends go to
    /// the wrong port or the checks it receives come from one its filter
    /// has never seen, so no direct pair ever works. Everything else
    /// punches through (RFC 4787 §4, §5; RFC 5128 §3).
    pub fn direct_possible(self, other: NatKind) -> bool {
        if !self.udp_allowed() || !other.udp_allowed() {
            return false;
        }
        let blocks = |sym: NatKind, peer: NatKind| {
            sym.endpoint_dependent_mapping()
                && (peer.endpoint_dependent_mapping()
                    || peer.filtering() == Some(Filtering::AddressAndPortDependent))
        };
        !blocks(self, other) && !blocks(other, self)
    }

    /// Whether two natkit peers behind `self` and `other` connect directly:
    /// where plain hole punching does ([`NatKind::direct_possible`]), and
    /// also where one side maps each destination to another port and the
    /// other side's mapping is endpoint-independent, whatever it filters:
    /// natkit's hard-NAT punch (many sockets on the hard side, many probed
    /// ports from the easy side) meets there. Two such mappings face each
    /// other only through the relay (or a port mapping: [`NatSide`]).
    ///
    /// The preserving symmetric NAT counts as hard like the others, as
    /// natkit sees it: its gathering asks the STUN server from one socket at
    /// two addresses, the first flow keeps the socket's port and the second
    /// finds that port held and gets a random one, so natkit announces a
    /// hard mapping. Facing an easy side, the punch works as with the random
    /// allocator (each of the hard side's fresh sockets keeps its own port,
    /// which is as unpredictable to the peer as a random one); facing
    /// another hard side, natkit tries nothing and relays.
    pub fn natkit_direct(self, other: NatKind) -> bool {
        self.direct_possible(other)
            || (self.udp_allowed()
                && other.udp_allowed()
                && !(self.endpoint_dependent_mapping() && other.endpoint_dependent_mapping()))
    }
}

/// One side of a pair in the matrix: its NAT, and whether that NAT maps a
/// port for it (PCP, NAT-PMP or UPnP IGD answered: a port-mapped candidate,
/// open to every remote address and port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatSide {
    /// The NAT.
    pub kind: NatKind,
    /// Whether the peer gets a port mapping from it.
    pub mapped: bool,
}

impl NatSide {
    /// Whether two natkit peers on `self` and `other` connect directly:
    /// where [`NatKind::natkit_direct`] says so, and wherever either side
    /// has a port mapping and both get UDP out. A port-mapped candidate is
    /// an endpoint-independent mapping with endpoint-independent filtering
    /// (the gateway forwards the external port whoever sends to it,
    /// RFC 6887 §11.1), so the other side's checks reach it from whatever
    /// port its own NAT picks, and the answers go back on the mapping those
    /// checks opened: two symmetric NATs meet that way.
    pub fn natkit_direct(self, other: NatSide) -> bool {
        let udp = self.kind.udp_allowed() && other.kind.udp_allowed();
        self.kind.natkit_direct(other.kind) || (udp && (self.mapped || other.mapped))
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Mapping behavior of one router (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterMapping {
    /// No translation: the router only routes (and maybe filters).
    None,
    /// Endpoint-independent mapping.
    EndpointIndependent,
    /// Address-and-port-dependent mapping, a random port per flow.
    AddressAndPortDependent,
    /// Address-and-port-dependent mapping, ports from a counter.
    Sequential,
    /// Address-and-port-dependent mapping, the source port kept while no
    /// mapping holds it.
    Preserving,
}

/// First outside port the sequential allocator hands out.
pub const SEQUENTIAL_FIRST_PORT: u16 = 20_000;
/// How many ports it cycles through (20000-21999) before starting over.
pub const SEQUENTIAL_PORTS: u32 = 2_000;

/// What one router does; [`ruleset`] turns it into nftables rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSpec {
    /// How it maps.
    pub mapping: RouterMapping,
    /// How it filters new inbound flows; `None` lets everything in.
    pub filtering: Option<Filtering>,
    /// Whether it hairpins (NATs only).
    pub hairpin: bool,
    /// If set, only TCP to this address on these ports leaves the inside.
    pub tcp_only_to: Option<(Ipv4Addr, [u16; 2])>,
    /// The UDP mapping lifetime in seconds when not conntrack's default
    /// (the learned maps follow it).
    pub udp_timeout: Option<u32>,
    /// Whether a port-mapping daemon (miniupnpd) runs on the router: it
    /// needs the answers of the lab's STUN server let in (it tests its own
    /// outside address with RFC 3489 CHANGE-REQUESTs), its own packets
    /// left untranslated, and its own table.
    pub port_mapping: bool,
}

impl RouterSpec {
    /// A router that maps and filters as given, nothing else.
    pub fn nat(mapping: RouterMapping, filtering: Option<Filtering>) -> RouterSpec {
        RouterSpec {
            mapping,
            filtering,
            hairpin: false,
            tcp_only_to: None,
            udp_timeout: None,
            port_mapping: false,
        }
    }
}

/// Interface names inside every router namespace.
pub const WAN: &str = "wan";
/// See [`WAN`].
pub const LAN: &str = "lan";

/// How long a learned mapping or contacted address stays (longer than
/// conntrack's UDP timeouts, refreshed by every outbound packet).
const MAP_TIMEOUT: &str = "3m";
/// conntrack's default lifetime of an answered UDP flow after its last
/// packet (`nf_conntrack_udp_timeout_stream`), in seconds: how long the
/// preserving NAT counts an outside port as held.
const CONNTRACK_UDP_STREAM_SECS: u32 = 120;

/// The nftables table miniupnpd writes its rules to (see [`port_mapping_table`]).
pub const UPNP_TABLE: &str = "miniupnpd";

/// The nftables ruleset of a router whose outside address is `wan_addr`.
pub fn ruleset(spec: &RouterSpec, wan_addr: Ipv4Addr) -> String {
    let nat = spec.mapping != RouterMapping::None;
    let mut pre = Vec::new();
    let mut post = Vec::new();
    let mut learn = Vec::new();
    let mut forward = vec![
        "ct state established,related accept".to_string(),
        // New flows our own DNAT let in: full/restricted cone inbound and
        // hairpinned packets.
        "ct status dnat accept".to_string(),
    ];
    let dnat_by_map = "dnat ip addr . port to udp dport map @mapping";
    if nat {
        if spec.port_mapping {
            // The router's own traffic keeps its address and port:
            // miniupnpd's STUN test must see it 1:1 (a random port from
            // `masquerade random` would make it disable port forwarding).
            // Nothing else on a router sends from its outside address.
            post.push(format!("oifname \"{WAN}\" ip saddr {wan_addr} accept"));
        }
        match spec.mapping {
            RouterMapping::AddressAndPortDependent => {
                post.push(format!("oifname \"{WAN}\" masquerade random"));
            }
            RouterMapping::Sequential => {
                // The counter steps once per new flow: NAT chains see only
                // a flow's first packet. Through a map: numgen's value is in
                // host byte order and nft hands it to NAT unconverted (the
                // ports came out byte-swapped, 20000 as 8270).
                let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
                    .map(|i| format!("{i} : {}", u32::from(SEQUENTIAL_FIRST_PORT) + i))
                    .collect();
                post.push(format!(
                    "oifname \"{WAN}\" meta l4proto udp snat to {wan_addr} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}",
                    ports.join(", ")
                ));
                post.push(format!("oifname \"{WAN}\" masquerade random"));
            }
            RouterMapping::Preserving => {
                // Before NAT `udp sport` is the inside port: taken as an
                // outside port by a live mapping -> random.
                post.push(format!(
                    "oifname \"{WAN}\" meta l4proto udp udp sport @held masquerade random"
                ));
                post.push(format!("oifname \"{WAN}\" masquerade"));
                // A port is held while its flow lives: refreshed by packets
                // both ways, as conntrack's timer is, and expiring when an
                // answered flow would (see `held` below). Refreshed by
                // outbound packets only, with the 3 min of the maps, a
                // socket whose flow had expired still saw its own port
                // "held" for minutes and got a random one.
                learn.push(format!(
                    "oifname \"{WAN}\" meta l4proto udp ct direction original update @held {{ ct reply proto-dst }}"
                ));
                learn.push(format!(
                    "oifname \"{LAN}\" meta l4proto udp ct direction reply update @held {{ ct reply proto-dst }}"
                ));
            }
            _ => post.push(format!("oifname \"{WAN}\" masquerade")),
        }
        // After source NAT, `ct reply proto-dst` is the outside port the
        // flow got. Only original-direction packets: for an inbound flow
        // DNAT let in, the reply tuple holds the remote's port instead.
        learn.push(format!(
            "oifname \"{WAN}\" meta l4proto udp ct direction original update @mapping {{ ct reply proto-dst : ct original ip saddr . ct original proto-src }}"
        ));
        match spec.filtering {
            Some(Filtering::EndpointIndependent) | None => {
                pre.push(format!(
                    "iifname \"{WAN}\" ip daddr {wan_addr} meta l4proto udp {dnat_by_map}"
                ));
            }
            Some(Filtering::AddressDependent) => {
                learn.push(format!(
                    "oifname \"{WAN}\" meta l4proto udp ct direction original update @contacted {{ ct reply proto-dst . ip daddr }}"
                ));
                pre.push(format!(
                    "iifname \"{WAN}\" ip daddr {wan_addr} meta l4proto udp udp dport . ip saddr @contacted {dnat_by_map}"
                ));
            }
            Some(Filtering::AddressAndPortDependent) => {}
        }
        if spec.hairpin {
            pre.push(format!(
                "iifname \"{LAN}\" ip daddr {wan_addr} meta l4proto udp {dnat_by_map}"
            ));
            post.push(format!(
                "iifname \"{LAN}\" oifname \"{LAN}\" ct status dnat masquerade"
            ));
        }
    } else if spec.filtering.is_none() {
        forward.push(format!("iifname \"{WAN}\" accept"));
    }
    match spec.tcp_only_to {
        Some((addr, [p1, p2])) => {
            forward.push(format!(
                "iifname \"{LAN}\" ip daddr {addr} tcp dport {{ {p1}, {p2} }} accept"
            ));
        }
        None => forward.push(format!("iifname \"{LAN}\" accept")),
    }
    let mut input = vec![format!(
        "iifname \"{WAN}\" ct state established,related accept"
    )];
    if spec.port_mapping {
        // miniupnpd's RFC 3489 test (ext_perform_stun) asks the STUN server
        // to answer from its other address and port: new flows to conntrack.
        input.push(format!(
            "iifname \"{WAN}\" ip saddr {{ {}, {} }} udp sport {{ 3478, 3479 }} accept",
            crate::addr::STUN_PRIMARY,
            crate::addr::STUN_OTHER
        ));
    }
    input.push(format!("iifname \"{WAN}\" drop"));
    let map_timeout = spec
        .udp_timeout
        .map_or(MAP_TIMEOUT.to_string(), |s| format!("{s}s"));
    let lines = |v: &[String]| v.iter().map(|l| format!("    {l}\n")).collect::<String>();
    let mut s = String::from("table ip natlab {\n");
    if nat {
        s.push_str(&format!(
            "  map mapping {{ type inet_service : ipv4_addr . inet_service; flags dynamic, timeout; timeout {map_timeout}; }}\n"
        ));
        s.push_str(&format!(
            "  set contacted {{ type inet_service . ipv4_addr; flags dynamic, timeout; timeout {map_timeout}; }}\n"
        ));
        // Never shorter than a live flow, so a port is never "free" while a
        // mapping holds it; longer only for an unanswered flow, which
        // conntrack drops after 30 s and the set after 120 s.
        let held_timeout = spec.udp_timeout.unwrap_or(CONNTRACK_UDP_STREAM_SECS);
        s.push_str(&format!(
            "  set held {{ type inet_service; flags dynamic, timeout; timeout {held_timeout}s; }}\n"
        ));
        s.push_str(&format!(
            "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{}  }}\n",
            lines(&pre)
        ));
        s.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{}  }}\n",
            lines(&post)
        ));
        s.push_str(&format!(
            "  chain learn {{\n    type filter hook postrouting priority srcnat + 10; policy accept;\n{}  }}\n",
            lines(&learn)
        ));
    }
    s.push_str(&format!(
        "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n{}  }}\n",
        lines(&forward)
    ));
    s.push_str(&format!(
        "  chain input {{\n    type filter hook input priority filter; policy accept;\n{}  }}\n",
        lines(&input)
    ));
    s.push_str("}\n");
    s
}

/// The table and chains miniupnpd adds its rules to (it creates none, and
/// Debian's nft_init.sh is broken): base chains that jump to the chains it
/// fills. Its DNAT runs before the lab's NAT; its SNAT (an outbound flow of
/// a mapped port keeps the mapped port) before the lab's masquerade. The
/// lab's forward chain accepts what it DNATs (`ct status dnat`).
pub fn port_mapping_table() -> String {
    format!(
        "table inet {UPNP_TABLE} {{
  chain forward {{ type filter hook forward priority filter - 5; policy accept; jump miniupnpd; }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept; jump prerouting_miniupnpd; }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting {{ type nat hook postrouting priority srcnat - 5; policy accept; jump postrouting_miniupnpd; }}
  chain postrouting_miniupnpd {{ }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_paths_follow_rfc4787() {
        use NatKind::*;
        assert!(!Symmetric.direct_possible(Symmetric));
        assert!(!Symmetric.direct_possible(PortRestrictedCone));
        assert!(!PortRestrictedCone.direct_possible(Symmetric));
        assert!(!Symmetric.direct_possible(NoNat));
        assert!(!Symmetric.direct_possible(DoubleNat));
        assert!(Symmetric.direct_possible(RestrictedCone));
        assert!(Symmetric.direct_possible(FullCone));
        assert!(Symmetric.direct_possible(Open));
        assert!(PortRestrictedCone.direct_possible(PortRestrictedCone));
        assert!(DoubleNat.direct_possible(NoNat));
        assert!(!UdpBlocked.direct_possible(Open));
        // natkit's hard-NAT punch: a symmetric side and an
        // endpoint-independent one, whatever it filters.
        for hard in [Symmetric, SymmetricSequential, SymmetricPreserving] {
            for easy in [NoNat, PortRestrictedCone, DoubleNat, RestrictedCone, Open] {
                assert!(hard.natkit_direct(easy) && easy.natkit_direct(hard));
            }
            assert!(!hard.natkit_direct(Symmetric) && !Symmetric.natkit_direct(hard));
            assert!(!hard.natkit_direct(UdpBlocked));
        }
        assert!(PortRestrictedCone.natkit_direct(DoubleNat));
        assert!(!UdpBlocked.natkit_direct(Open));
    }

    #[test]
    fn a_port_mapping_on_either_side_makes_two_hard_nats_direct() {
        use NatKind::*;
        let side = |kind, mapped| NatSide { kind, mapped };
        for a in [Symmetric, SymmetricSequential, SymmetricPreserving] {
            for b in [Symmetric, SymmetricSequential, SymmetricPreserving] {
                assert!(!side(a, false).natkit_direct(side(b, false)));
                assert!(side(a, true).natkit_direct(side(b, false)));
                assert!(side(a, false).natkit_direct(side(b, true)));
            }
            // No mapping opens a network that lets no UDP out.
            assert!(!side(a, true).natkit_direct(side(UdpBlocked, false)));
        }
        assert!(!side(UdpBlocked, true).natkit_direct(side(Open, false)));
        // Without a mapping, what natkit's punch gives.
        assert!(side(Symmetric, false).natkit_direct(side(DoubleNat, false)));
    }

    #[test]
    fn every_router_drops_new_inbound() {
        for mapping in [
            RouterMapping::EndpointIndependent,
            RouterMapping::AddressAndPortDependent,
            RouterMapping::Sequential,
            RouterMapping::Preserving,
        ] {
            let r = ruleset(
                &RouterSpec::nat(mapping, Some(Filtering::AddressAndPortDependent)),
                Ipv4Addr::new(203, 0, 113, 10),
            );
            assert!(r.contains("policy drop"), "{r}");
            assert!(!r.contains("iifname \"wan\" accept"), "{r}");
            assert!(!r.contains("dnat ip addr"), "{r}");
        }
    }

    #[test]
    fn only_a_port_mapping_router_leaves_its_own_traffic_untranslated() {
        let wan = Ipv4Addr::new(203, 0, 113, 10);
        let rule = format!("ip saddr {wan} accept");
        let plain = RouterSpec::nat(
            RouterMapping::AddressAndPortDependent,
            Some(Filtering::AddressAndPortDependent),
        );
        assert!(!ruleset(&plain, wan).contains(&rule));
        let mapping = RouterSpec {
            port_mapping: true,
            ..plain
        };
        assert!(ruleset(&mapping, wan).contains(&rule));
    }
}
