//! In a network that lets out only TCP to the relay, `natkit turn` over TCP
//! and over TLS reaches the relay and relays data, and over UDP it does not;
//! from a port-restricted NAT next door all three work (so the UDP failure
//! is the network's doing, not the relay's).

use std::process::Output;

use natkit_lab::{Lab, NatKind, Site, SiteSpec, TopologySpec};

fn natkit_turn(lab: &Lab, site: &Site, transport: &str) -> Output {
    let s = lab.servers();
    let server = if transport == "tls" {
        s.turn_tls
    } else {
        s.turn
    };
    let mut c = site
        .host_ns()
        .command(&lab.binaries().natkit)
        .expect("command in namespace");
    c.args(["turn", "--json", "--transport", transport, "--user"])
        .arg(&s.user)
        .arg("--password")
        .arg(&s.password)
        // A blocked UDP run gives up after 3 sends over 3.5 s.
        .args(["--count", "3", "--rc", "3", "--rm", "4"]);
    if transport == "tls" {
        c.arg("--ca").arg(&s.ca);
    }
    c.arg(server.to_string());
    c.output().expect("run natkit turn")
}

#[test]
fn udp_blocked_network_reaches_the_relay_over_tcp_and_tls_only() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("ub", NatKind::UdpBlocked, false),
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
        ],
    };
    let lab = Lab::build("tf", &spec).expect("build the lab");
    let mut failures = Vec::new();
    for site in lab.sites() {
        for transport in ["udp", "tcp", "tls"] {
            let out = natkit_turn(&lab, site, transport);
            let want = site.kind.udp_allowed() || transport != "udp";
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            // When it worked, the JSON must show the data relayed both
            // ways, from the site's public address (through its NAT).
            let trips = json["round_trip"]["received"].as_u64().unwrap_or(0);
            let mapped = json["allocations"][0]["mapped"].as_str().unwrap_or("");
            let via_nat = mapped.starts_with(&format!("{}:", site.public_addr));
            eprintln!(
                "{} {transport}: exit ok {}, {trips} round trips, mapped {mapped}, error {}",
                site.name,
                out.status.success(),
                json["error"]
            );
            if out.status.success() != want || (want && (trips != 3 || !via_nat)) {
                failures.push(format!(
                    "{} over {transport}: success {} (want {want}), {trips} round trips\nstdout: {}\nstderr: {}",
                    site.name,
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
