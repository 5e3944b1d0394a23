//! The default gateway, from Linux's routing tables as text: IPv4 from
//! `/proc/net/route`, IPv6 from `/proc/net/ipv6_route`. The parsers are
//! pure functions of the text (tested on fixtures); [`system_default_v4`]
//! and [`system_default_v6`] read the files.
//!
//! Port mapping talks to the gateway of the default route: that is the NAT
//! our traffic to the internet crosses (RFC 6887 §8.1: "the PCP client
//! ... sends to its default router"; RFC 6886 §3.1 the same).

use std::net::{Ipv4Addr, Ipv6Addr};

/// RTF_UP and RTF_GATEWAY (linux/route.h).
const RTF_UP: u32 = 0x0001;
const RTF_GATEWAY: u32 = 0x0002;
/// RTF_REJECT: an "unreachable" route (the kernel lists one on `lo`).
const RTF_REJECT: u32 = 0x0200;

/// A default route over IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRouteV4 {
    /// Its next hop.
    pub gateway: Ipv4Addr,
    /// The interface it leaves on.
    pub interface: String,
    /// Its metric (the lowest wins).
    pub metric: u32,
}

/// A default route over IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRouteV6 {
    /// Its next hop (usually link-local: it needs `interface` as scope).
    pub gateway: Ipv6Addr,
    /// The interface it leaves on.
    pub interface: String,
    /// Its metric (the lowest wins).
    pub metric: u32,
}

/// One line of `/proc/net/route`: interface, destination, gateway, flags,
/// metric, mask.
struct RouteV4<'a> {
    interface: &'a str,
    destination: Ipv4Addr,
    gateway: Ipv4Addr,
    flags: u32,
    metric: u32,
    mask: Ipv4Addr,
}

/// The kernel prints each address as the hex of its 32 bits read in the
/// host's byte order (`%08X` of a `__be32`): the bytes come back with
/// `to_ne_bytes`.
fn addr_v4(hex: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(hex, 16)
        .ok()
        .map(|x| Ipv4Addr::from(x.to_ne_bytes()))
}

fn routes_v4(text: &str) -> impl Iterator<Item = RouteV4<'_>> {
    // The first line names the columns.
    text.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return None;
        }
        Some(RouteV4 {
            interface: f[0],
            destination: addr_v4(f[1])?,
            gateway: addr_v4(f[2])?,
            flags: u32::from_str_radix(f[3], 16).ok()?,
            metric: f[6].parse().ok()?,
            mask: addr_v4(f[7])?,
        })
    })
}

/// The default IPv4 route with the lowest metric in `/proc/net/route`'s
/// text: destination and mask 0.0.0.0, up, through a gateway.
pub fn default_route_v4(route_text: &str) -> Option<DefaultRouteV4> {
    routes_v4(route_text)
        .filter(|r| {
            r.destination.is_unspecified()
                && r.mask.is_unspecified()
                && r.flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
                && r.flags & RTF_REJECT == 0
                && !r.gateway.is_unspecified()
        })
        .min_by_key(|r| r.metric)
        .map(|r| DefaultRouteV4 {
            gateway: r.gateway,
            interface: r.interface.to_string(),
            metric: r.metric,
        })
}

/// Whether `ip` is on a network directly connected to `interface` (a route
/// without gateway there covers it): the local address to talk to that
/// interface's gateway from.
pub fn on_link_v4(route_text: &str, interface: &str, ip: Ipv4Addr) -> bool {
    routes_v4(route_text).any(|r| {
        r.interface == interface
            && r.flags & RTF_GATEWAY == 0
            && r.flags & RTF_UP != 0
            && !r.mask.is_unspecified()
            && u32::from(ip) & u32::from(r.mask) == u32::from(r.destination) & u32::from(r.mask)
    })
}

fn addr_v6(hex: &str) -> Option<Ipv6Addr> {
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// The default IPv6 route with the lowest metric in
/// `/proc/net/ipv6_route`'s text: `::/0`, up, through a gateway, not a
/// reject route. Columns: destination, prefix length, source, its prefix
/// length, next hop, metric, refcount, use, flags, interface (all hex but
/// the name; addresses in network order).
pub fn default_route_v6(route_text: &str) -> Option<DefaultRouteV6> {
    route_text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let dest = addr_v6(f[0])?;
            let prefix = u8::from_str_radix(f[1], 16).ok()?;
            let gateway = addr_v6(f[4])?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let usable = dest.is_unspecified()
                && prefix == 0
                && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
                && flags & RTF_REJECT == 0
                && !gateway.is_unspecified()
                && f[9] != "lo";
            usable.then(|| DefaultRouteV6 {
                gateway,
                interface: f[9].to_string(),
                metric,
            })
        })
        .min_by_key(|r| r.metric)
}

/// A file of the calling thread's network namespace: `/proc/net` follows
/// the process's main thread, `/proc/thread-self/net` (Linux 3.17) this
/// one's, which differ in a thread that joined another namespace.
fn read_net(file: &str) -> std::io::Result<String> {
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/net/{file}")))
}

/// This machine's default IPv4 route (Linux; elsewhere `None`), with the
/// routing table's text for [`on_link_v4`].
pub fn system_default_v4() -> std::io::Result<Option<(DefaultRouteV4, String)>> {
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let text = read_net("route")?;
    Ok(default_route_v4(&text).map(|r| (r, text)))
}

/// This machine's default IPv6 route (Linux; elsewhere `None`).
pub fn system_default_v6() -> std::io::Result<Option<DefaultRouteV6>> {
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    // No IPv6 at all: no file.
    match read_net("ipv6_route") {
        Ok(text) => Ok(default_route_v6(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/route` of a little-endian host on Wi-Fi and a VPN: two
    /// defaults (metrics 600 and 50), the LAN 192.168.1.0/24, a VPN net.
    /// The kernel pads each line with spaces.
    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0                                                                               
wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0                                                                               
eth1\t00000000\t010200C0\t0003\t0\t0\t50\t00000000\t0\t0\t0                                                                               
eth1\t000200C0\t00000000\t0001\t0\t0\t50\t00FFFFFF\t0\t0\t0                                                                               
tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0                                                                               
";

    #[test]
    #[cfg(target_endian = "little")]
    fn the_lowest_metric_default_route_wins() {
        let r = default_route_v4(ROUTE).unwrap();
        assert_eq!(r.gateway, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!((r.interface.as_str(), r.metric), ("eth1", 50));
        // Without it, the Wi-Fi one.
        let wifi: String = ROUTE
            .lines()
            .filter(|l| !l.starts_with("eth1"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = default_route_v4(&wifi).unwrap();
        assert_eq!(r.gateway, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(r.interface, "wlan0");
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn on_link_finds_the_address_to_use() {
        assert!(on_link_v4(ROUTE, "eth1", Ipv4Addr::new(192, 0, 2, 77)));
        assert!(!on_link_v4(ROUTE, "eth1", Ipv4Addr::new(192, 168, 1, 5)));
        assert!(on_link_v4(ROUTE, "wlan0", Ipv4Addr::new(192, 168, 1, 5)));
        // The default route itself (mask 0) says nothing about the link.
        assert!(!on_link_v4(ROUTE, "wlan0", Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn no_default_route() {
        let header = ROUTE.lines().next().unwrap();
        assert_eq!(default_route_v4(header), None);
        assert_eq!(default_route_v4(""), None);
        // A route down, or not through a gateway, is no default.
        let down =
            format!("{header}\neth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(default_route_v4(&down), None);
        let direct =
            format!("{header}\neth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(default_route_v4(&direct), None);
        // Junk lines are skipped, not a panic.
        let junk = format!("{header}\neth0\tzz\t0101A8C0\t0003\n\n\t\t\n");
        assert_eq!(default_route_v4(&junk), None);
    }

    /// `/proc/net/ipv6_route`: a link route, the default through a
    /// link-local router on eth0 (metric 0x400), a second one on wlan0
    /// (0x600), and the kernel's reject routes on lo.
    const ROUTE6: &str = "\
20010db8000000010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000021122fffe334455 00000400 00000003 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000600 00000001 00000000 00000003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo
";

    #[test]
    fn ipv6_default_route() {
        let r = default_route_v6(ROUTE6).unwrap();
        assert_eq!(
            r.gateway,
            "fe80::211:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!((r.interface.as_str(), r.metric), ("eth0", 0x400));
        // Only the reject route on lo: none.
        let lo: String = ROUTE6
            .lines()
            .filter(|l| l.ends_with("lo"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(default_route_v6(&lo), None);
        assert_eq!(default_route_v6("garbage\n1 2 3\n"), None);
    }
}
