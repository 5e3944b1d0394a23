//! Issue 14 in the lab: `natkit netcheck` where the network matters.
//!
//! - Where UDP does not get out but TCP to the relay does, it reports "UDP:
//!   blocked, TCP: works" as a verdict (exit 0), with the TCP mapping seen
//!   through the NAT; next door, behind a port-restricted NAT, UDP and TCP
//!   both work. The relay (which answers Binding over UDP and TCP) stands in
//!   for the STUN server: it is what the blocked network lets out to.
//! - `--lifetime` (RFC 5780 §4.6) behind a NAT whose UDP mappings expire
//!   after 3 s of silence (conntrack's UDP timeouts on the router) finds the
//!   expiry between the idle times it tried, within its time bound.
//!
//! Port mapping is off (`--no-port-mapping`): these tests are about UDP,
//! TCP and the NAT's timers, not the gateway.

use std::process::Output;
use std::time::{Duration, Instant};

use natkit_lab::{Lab, NatKind, Site, SiteSpec, TopologySpec};

/// `natkit netcheck --json --no-port-mapping ARGS` in `site`'s host: the
/// output, its JSON and how long it took.
fn netcheck(lab: &Lab, site: &Site, args: &[String]) -> (Output, serde_json::Value, Duration) {
    let mut c = site
        .host_ns()
        .command(&lab.binaries().natkit)
        .expect("command in namespace");
    c.args(["netcheck", "--json", "--no-port-mapping"])
        .args(args);
    let t0 = Instant::now();
    let out = c.output().expect("run natkit netcheck");
    let took = t0.elapsed();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!(
        "{}: exit {} in {took:?}: {v}\nstderr: {}",
        site.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out, v, took)
}

#[test]
fn udp_blocked_network_gets_a_tcp_verdict() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("ub", NatKind::UdpBlocked, false),
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
        ],
    };
    let lab = Lab::build("nv", &spec).expect("build the lab");
    let relay = lab.servers().turn.to_string();
    let mut failures = Vec::new();
    for site in lab.sites() {
        let args = [
            "--timeout".to_string(),
            "3s".into(),
            "-4".into(),
            relay.clone(),
        ];
        let (out, v, took) = netcheck(&lab, site, &args);
        let udp_want = if site.kind.udp_allowed() {
            "works"
        } else {
            "blocked"
        };
        let tcp_mapped = v["tcp"]["mapped"].as_str().unwrap_or("");
        let c = v["connectivity"].as_str().unwrap_or("");
        let want_text = if site.kind.udp_allowed() {
            "UDP: works, TCP: works"
        } else {
            "UDP: blocked, TCP: works: no direct connection"
        };
        if !out.status.success()
            || v["ok"] != true
            || v["udp"] != udp_want
            || v["tcp"]["works"] != true
            || !tcp_mapped.starts_with(&format!("{}:", site.public_addr))
            || !c.starts_with(want_text)
            || took > Duration::from_secs(6)
        {
            failures.push(format!(
                "{}: exit {}, udp {}, tcp {}, connectivity {c:?}, took {took:?}; stderr: {}",
                site.name,
                out.status,
                v["udp"],
                v["tcp"],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn lifetime_finds_the_nat_timeout() {
    let spec = TopologySpec {
        sites: vec![SiteSpec::new("pr", NatKind::PortRestrictedCone, false).with_udp_timeout(3)],
    };
    let lab = Lab::build("nl", &spec).expect("build the lab");
    let site = &lab.sites()[0];
    let args = [
        "--lifetime".to_string(),
        "8s".into(),
        lab.servers().stun.to_string(),
    ];
    let (out, v, took) = netcheck(&lab, site, &args);
    assert!(out.status.success());
    let alive = v["alive_after_ms"]
        .as_f64()
        .expect("alive after some idle time");
    let dead = v["expired_after_ms"].as_f64().expect("expired within 8 s");
    // conntrack drops the entry 3 s after the last packet (its garbage
    // collection may take a little longer).
    assert!((1000.0..=3500.0).contains(&alive), "alive after {alive} ms");
    assert!((2500.0..=8000.0).contains(&dead), "expired after {dead} ms");
    assert!(alive < dead);
    assert!(took < Duration::from_secs(45), "took {took:?}");
    let mapped = v["mapped"].as_str().unwrap_or("");
    assert!(
        mapped.starts_with(&format!("{}:", site.public_addr)),
        "{mapped}"
    );
}
