//! Issue 14: IPv4 and IPv6 in one `natkit netcheck` run, each with its own
//! result, on a dual-stack network as many homes have it: IPv4 behind a
//! NAT (nftables masquerade, a port-restricted cone), IPv6 routed without
//! NAT through the same router's stateful firewall. Two natkit-stun
//! servers (one per family, each RFC 5780 with two addresses) live in the
//! "internet" namespace. The lab crate is IPv4-only, so this file builds
//! its three namespaces itself, with documentation ranges only
//! (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), and deletes them by
//! name on drop.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_lab::netns::Netns;
use natkit_lab::process::Process;
use natkit_proto::binding::{self, RequestOptions};

/// The namespaces, deleted (and whatever runs inside killed) on drop.
struct Net {
    client: Netns,
    router: Netns,
    internet: Netns,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.internet] {
            if let Err(e) = ns.destroy() {
                eprintln!("{e}");
            }
        }
    }
}

fn ns(node: &str) -> Netns {
    let name = format!("nkl-v6-{}-{node}", std::process::id());
    let ns = Netns::create(&name).expect("create namespace");
    // The lab turns IPv6 off; this network needs it (no DAD: addresses are
    // added nodad).
    ns.sysctl("net/ipv6/conf/all/disable_ipv6", "0").unwrap();
    ns.sysctl("net/ipv6/conf/default/disable_ipv6", "0")
        .unwrap();
    ns
}

fn build() -> Net {
    let net = Net {
        client: ns("c"),
        router: ns("r"),
        internet: ns("i"),
    };
    let (c, r, i) = (&net.client, &net.router, &net.internet);
    c.ip(&[
        "link",
        "add",
        "c0",
        "type",
        "veth",
        "peer",
        "name",
        "r-lan",
        "netns",
        r.name(),
    ])
    .unwrap();
    r.ip(&[
        "link",
        "add",
        "r-wan",
        "type",
        "veth",
        "peer",
        "name",
        "i0",
        "netns",
        i.name(),
    ])
    .unwrap();
    let addrs: [(&Netns, &str, &[&str]); 4] = [
        (c, "c0", &["198.51.100.10/24", "2001:db8:1::10/64"]),
        (r, "r-lan", &["198.51.100.1/24", "2001:db8:1::1/64"]),
        (r, "r-wan", &["203.0.113.254/24", "2001:db8:2::fe/64"]),
        (
            i,
            "i0",
            &[
                "203.0.113.1/24",
                "203.0.113.2/24",
                "2001:db8:2::1/64",
                "2001:db8:2::2/64",
            ],
        ),
    ];
    for (ns, dev, list) in addrs {
        for a in list {
            let mut args = vec!["addr", "add", a, "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args).unwrap();
        }
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    c.ip(&["route", "add", "default", "via", "198.51.100.1"])
        .unwrap();
    c.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
        .unwrap();
    i.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:1::/64",
        "via",
        "2001:db8:2::fe",
    ])
    .unwrap();
    r.sysctl("net/ipv4/ip_forward", "1").unwrap();
    r.sysctl("net/ipv6/conf/all/forwarding", "1").unwrap();
    // IPv4: masquerade (endpoint-independent mapping while the port is
    // free). Both families: a stateful filter that drops new inbound
    // traffic (address-and-port-dependent filtering).
    r.nft(
        r#"table inet home {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    oifname "r-wan" ip saddr 198.51.100.0/24 masquerade
  }
  chain forward { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "r-lan" oifname "r-wan" accept
  }
}"#,
    )
    .unwrap();
    net
}

/// A Binding round trip from inside `ns` to `server`, retried until `limit`.
fn answers(ns: &Netns, server: SocketAddr, limit: Duration) -> bool {
    ns.enter(move || {
        let any: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let Ok(s) = UdpSocket::bind(any) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let end = Instant::now() + limit;
        let mut req = [0u8; 64];
        let n = binding::write_request(&mut req, &[7; 12], &RequestOptions::default()).unwrap();
        let mut buf = [0u8; 512];
        while Instant::now() < end {
            let _ = s.send_to(&req[..n], server);
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                if binding::parse_response(&buf[..len]).is_ok() {
                    return true;
                }
            }
        }
        false
    })
    .unwrap_or(false)
}

#[test]
fn ipv4_behind_nat_and_ipv6_without_each_get_their_own_verdict() {
    let bins = natkit_lab::bins::find().expect("binaries");
    let net = build();
    let servers = [
        ("203.0.113.1:3478", "203.0.113.2:3479"),
        ("[2001:db8:2::1]:3478", "[2001:db8:2::2]:3479"),
    ];
    let mut procs = Vec::new();
    for (primary, other) in servers {
        let mut c = net.internet.command(&bins.stun).unwrap();
        c.args(["--listen", primary, "--other", other]);
        procs.push(Process::spawn("natkit-stun", c).expect("start natkit-stun"));
    }
    for (primary, other) in servers {
        for a in [primary, other] {
            let a: SocketAddr = a.parse().unwrap();
            assert!(
                answers(&net.client, a, Duration::from_secs(20)),
                "natkit-stun at {a} never answered from the client"
            );
        }
    }
    let mut c = net.client.command(&bins.natkit).unwrap();
    c.args([
        "netcheck",
        "--json",
        "--no-port-mapping",
        "--no-hairpin",
        "--timeout",
        "5s",
    ])
    .args([servers[0].0, servers[1].0]);
    let t0 = Instant::now();
    let out = c.output().expect("run natkit netcheck");
    let took = t0.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!(
        "exit {} in {took:?}\n{v:#}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let f = v["families"].as_array().expect("families");
    assert_eq!(f.len(), 2);
    let (v4, v6) = (&f[0], &f[1]);
    assert_eq!(v4["family"], "IPv4");
    assert_eq!(v4["mapping"]["behavior"], "endpoint_independent");
    assert_eq!(v4["filtering"]["behavior"], "address_and_port_dependent");
    assert_eq!(v4["nat_type"], "port_restricted_cone");
    assert!(v4["mapped"].as_str().unwrap().starts_with("203.0.113.254:"));
    assert_eq!(v6["family"], "IPv6");
    assert_eq!(v6["mapping"]["behavior"], "no_nat");
    assert_eq!(v6["filtering"]["behavior"], "address_and_port_dependent");
    assert_eq!(v6["nat_type"], "symmetric_udp_firewall");
    assert!(v6["mapped"]
        .as_str()
        .unwrap()
        .starts_with("[2001:db8:1::10]:"));
    // Both TCP checks go through the router too.
    assert_eq!(v4["tcp"]["works"], true, "{v4}");
    assert_eq!(v6["tcp"]["works"], true, "{v6}");
    // The top level is IPv4's, as in a one-family run.
    assert_eq!(v["nat_type"], "port_restricted_cone");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("has no"), "{text}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    drop(procs);
}
