//! Issue 13, part 1: the NAT behaviors added for hard-NAT work do what they
//! are named for, measured from outside: the sequential symmetric NAT hands
//! successive destinations consecutive ports, the port-preserving one keeps
//! the source port for a socket's first destination only, `natkit netcheck`
//! calls both symmetric, and a NAT with a short UDP mapping lifetime drops
//! an idle mapping but keeps one refreshed by keepalives.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_lab::addr::{INTERNET_GATEWAY, STUN_OTHER, STUN_PRIMARY};
use natkit_lab::nat::SEQUENTIAL_FIRST_PORT;
use natkit_lab::probe::stun_mapped;
use natkit_lab::{netcheck, Lab, NatKind, Site, SiteSpec, TopologySpec};

/// The short-timeout site's UDP mapping lifetime: short enough for a quick
/// test, the mechanism is the one `--udp-timeout 30` uses.
const SHORT: u32 = 6;

fn stun_servers() -> [SocketAddr; 4] {
    [
        SocketAddr::from((STUN_PRIMARY, 3478)),
        SocketAddr::from((STUN_OTHER, 3478)),
        SocketAddr::from((STUN_PRIMARY, 3479)),
        SocketAddr::from((STUN_OTHER, 3479)),
    ]
}

/// A socket on `local` in `site`'s host, and the outside port each of the
/// four STUN addresses sees it from, in order.
fn ports_seen(site: &Site, local: u16) -> (UdpSocket, Vec<u16>) {
    let sock = site.host_ns().bind_udp((site.host_addr, local)).unwrap();
    let ports = stun_servers()
        .iter()
        .map(|&d| stun_mapped(&sock, d, 6).expect("mapped").port())
        .collect();
    (sock, ports)
}

/// One test for the whole file: one lab.
#[test]
fn new_nat_kinds_map_and_expire_as_named() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("sq", NatKind::SymmetricSequential, false),
            SiteSpec::new("sp", NatKind::SymmetricPreserving, false),
            SiteSpec::new("short", NatKind::PortRestrictedCone, false).with_udp_timeout(SHORT),
        ],
    };
    let lab = Lab::build("nk", &spec).expect("build the lab");
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let lab = &lab;
        let short = s.spawn(move || short_timeout(lab));

        // Sequential: four destinations, four ports in a row; the first
        // destination again, the first mapping.
        let sq = lab.site("sq").unwrap();
        let (sock, ports) = ports_seen(sq, 41_000);
        eprintln!("sequential: ports {ports:?}");
        if ports.windows(2).any(|w| w[1] != w[0] + 1) || ports[0] < SEQUENTIAL_FIRST_PORT {
            failures.push(format!("sequential: ports {ports:?}, want consecutive"));
        }
        let again = stun_mapped(&sock, stun_servers()[0], 6).expect("mapped");
        if again.port() != ports[0] || again.ip() != IpAddr::V4(sq.public_addr) {
            failures.push(format!(
                "sequential: flow 1 again at {again}, was {}",
                ports[0]
            ));
        }

        // Preserving: the first destination keeps the port, later ones do
        // not; a second socket's first flow keeps its own.
        let sp = lab.site("sp").unwrap();
        for local in [41_000, 41_001] {
            let (_, ports) = ports_seen(sp, local);
            eprintln!("preserving: socket {local}: ports {ports:?}");
            if ports[0] != local || ports[1..].contains(&local) {
                failures.push(format!(
                    "preserving: socket {local}: ports {ports:?}, want {local} first only"
                ));
            }
            let mut uniq = ports.clone();
            uniq.sort();
            uniq.dedup();
            if uniq.len() != ports.len() {
                failures.push(format!("preserving: {ports:?} reuses a port"));
            }
        }

        // After the port measurements: netcheck's flows step the
        // sequential NAT's counter too.
        let checks: Vec<_> = ["sq", "sp"]
            .into_iter()
            .map(|name| {
                s.spawn(move || {
                    let site = lab.site(name).unwrap();
                    netcheck::run(lab, site).map(|r| (site, r))
                })
            })
            .collect();
        for c in checks {
            match c.join().unwrap() {
                Ok((site, run)) => {
                    eprintln!("{}: netcheck {:?}", site.name, run.verdict);
                    if let Err(e) = netcheck::check(site, &run) {
                        failures.push(e);
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if let Err(e) = short.join().unwrap() {
            failures.push(e);
        }
    });
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// Two sockets behind the short-timeout NAT open mappings to the internet;
/// one stays idle past the lifetime, the other sends a keepalive every
/// third of it. Then the internet answers both: only the refreshed mapping
/// still lets the answer in.
fn short_timeout(lab: &Lab) -> Result<(), String> {
    let site = lab.site("short").unwrap();
    let remote = SocketAddr::from((INTERNET_GATEWAY, 9000));
    let outside = lab.internet().bind_udp(remote).unwrap();
    outside
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let bind = |port| {
        let s = site.host_ns().bind_udp((site.host_addr, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s
    };
    let (idle, kept) = (bind(42_000), bind(42_001));
    let mut buf = [0u8; 64];
    let mut public = Vec::new();
    for s in [&idle, &kept] {
        s.send_to(b"open", remote).unwrap();
        let (_, from) = outside
            .recv_from(&mut buf)
            .map_err(|e| format!("short: first datagram lost: {e}"))?;
        public.push(from);
    }
    // Control: right now both mappings let the internet in.
    for (s, &p) in [&idle, &kept].into_iter().zip(&public) {
        outside.send_to(b"in", p).unwrap();
        s.recv_from(&mut buf)
            .map_err(|e| format!("short: fresh mapping {p} did not let the answer in: {e}"))?;
    }
    let start = Instant::now();
    let lifetime = Duration::from_secs(u64::from(SHORT));
    let mut next_keepalive = start;
    // Waiting out the lifetime is what is tested, not a synchronisation.
    while start.elapsed() < lifetime * 2 {
        if Instant::now() >= next_keepalive {
            kept.send_to(b"keepalive", remote).unwrap();
            next_keepalive += lifetime / 3;
        }
        std::thread::sleep(
            next_keepalive
                .min(start + lifetime * 2)
                .saturating_duration_since(Instant::now()),
        );
    }
    outside.send_to(b"late", public[0]).unwrap();
    outside.send_to(b"late", public[1]).unwrap();
    if idle.recv_from(&mut buf).is_ok() {
        return Err(format!(
            "short: the mapping idle for {:?} (lifetime {SHORT} s) still let the internet in",
            start.elapsed()
        ));
    }
    loop {
        match kept.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == b"late" => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "short: the mapping kept alive every {:?} let nothing in: {e}",
                    lifetime / 3
                ))
            }
        }
    }
    Ok(())
}
