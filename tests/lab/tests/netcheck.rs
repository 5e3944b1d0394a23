//! Test 1 of issue 5: `natkit netcheck`, run inside each NAT of the lab,
//! reports its mapping, filtering and hairpinning as built; and every
//! router drops unsolicited inbound traffic.

use std::net::SocketAddr;

use natkit_lab::netcheck;
use natkit_lab::probe::gets_in;
use natkit_lab::{Lab, NatKind, SiteSpec, TopologySpec};

fn topology() -> TopologySpec {
    use NatKind::*;
    let mut t = TopologySpec::default();
    for (name, kind, hairpin) in [
        ("op", Open, false),
        ("nn", NoNat, false),
        ("fc-hp", FullCone, true),
        ("fc", FullCone, false),
        ("rc", RestrictedCone, false),
        ("rc-hp", RestrictedCone, true),
        ("pr", PortRestrictedCone, false),
        ("pr-hp", PortRestrictedCone, true),
        ("sy", Symmetric, false),
        ("sy-hp", Symmetric, true),
        ("dn", DoubleNat, true),
        ("ub", UdpBlocked, false),
    ] {
        t.sites.push(SiteSpec::new(name, kind, hairpin));
    }
    t
}

/// One test for the whole file: nextest runs every test function in a
/// process of its own, and the lab is built once per file.
#[test]
fn netcheck_reports_each_nat_and_routers_drop_unsolicited_inbound() {
    let lab = Lab::build("nc", &topology()).expect("build the lab");
    eprintln!(
        "lab of {} sites built in {:?}",
        lab.sites().len(),
        lab.build_time()
    );
    let mut failures = Vec::new();

    // All sites at once: each run waits out its negative probes.
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = lab
            .sites()
            .iter()
            .enumerate()
            .map(|(i, site)| {
                let lab = &lab;
                s.spawn(move || {
                    let run = netcheck::run(lab, site);
                    let inbound = unsolicited(lab, site, 41_000 + i as u16);
                    (site, run, inbound)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (site, run, inbound) in runs {
        if let Err(e) = inbound {
            failures.push(format!("{}: {e}", site.name));
        }
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", site.name));
                continue;
            }
        };
        eprintln!(
            "{:<6} {:<22} {:?} in {:?}",
            site.name,
            site.kind.name(),
            run.verdict,
            run.elapsed
        );
        if let Err(e) = netcheck::check(site, &run) {
            failures.push(e);
        }
    }

    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// A datagram from the internet to the site's public address, on a port
/// the host listens on but never sent from, must not get in (except with no
/// firewall at all, where it must: the probe itself is checked). Then the
/// host sends out from that port and the internet's reply gets in: the
/// path works.
fn unsolicited(lab: &Lab, site: &natkit_lab::Site, remote_port: u16) -> Result<(), String> {
    let port = 40_000;
    let sock = site
        .host_ns()
        .bind_udp((site.host_addr, port))
        .map_err(|e| e.to_string())?;
    let public = SocketAddr::from((site.public_addr, port));
    let remote = SocketAddr::from((natkit_lab::addr::INTERNET_GATEWAY, remote_port));
    let outside = lab.internet().bind_udp(remote).map_err(|e| e.to_string())?;
    let arrived = gets_in(&outside, &sock, public);
    let want = site.kind == NatKind::Open;
    if arrived != want {
        return Err(format!(
            "unsolicited datagram to {public} got in: {arrived}, want {want}"
        ));
    }
    if !site.kind.udp_allowed() {
        return Ok(());
    }
    // Positive control: solicited traffic does get back in.
    sock.send_to(b"out", remote).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = outside
        .recv_from(&mut buf)
        .map_err(|e| format!("outbound datagram to {remote} lost: {e}"))?;
    if from.ip() != std::net::IpAddr::V4(site.public_addr) || &buf[..n] != b"out" {
        return Err(format!(
            "outbound came from {from}, want {}",
            site.public_addr
        ));
    }
    if !gets_in(&outside, &sock, from) {
        return Err(format!("the reply from {remote} to {from} did not get in"));
    }
    Ok(())
}
