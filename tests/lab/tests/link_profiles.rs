//! Issue 13, part 1: each link profile gives the round-trip time (and for
//! `mobile` the loss) it is documented to give, measured between two peers
//! with public addresses (no NAT in the way), each on an access link of the
//! profile, and from a site to the internet namespace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use natkit_lab::probe::{udp_echo, udp_rtt};
use natkit_lab::{Lab, LinkProfile, NatKind, SiteSpec, TopologySpec};

/// Bounds of a median RTT, in ms.
type Bounds = (f64, f64);

/// (profile, peer-to-peer median RTT bounds, site-to-internet bounds).
/// The lower bounds prove the delay is there; the upper ones, that it is
/// not doubled, with room for a loaded machine (the links are forwarded by
/// a user-space process, `natkit-lab wire`, which the scheduler may hold
/// up for a few milliseconds when other tests run).
const EXPECT: [(LinkProfile, Bounds, Bounds); 4] = [
    (LinkProfile::Unshaped, (0.0, 3.0), (0.0, 3.0)),
    (LinkProfile::Lan, (0.9, 8.0), (0.45, 6.0)),
    (LinkProfile::Broadband, (35.0, 70.0), (17.0, 38.0)),
    (LinkProfile::Mobile, (100.0, 200.0), (50.0, 100.0)),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One test for the whole file: one lab, two public sites per profile.
#[test]
fn each_profile_gives_its_round_trip_time_and_loss() {
    let mut spec = TopologySpec::default();
    for (p, _, _) in EXPECT {
        for side in ["a", "b"] {
            spec.sites.push(
                SiteSpec::new(format!("{}{side}", &p.name()[..2]), NatKind::Open, false)
                    .with_profile(p),
            );
        }
    }
    let lab = Lab::build("lp", &spec).expect("build the lab");
    eprintln!("lab built in {:?}", lab.build_time());
    let stop = AtomicBool::new(false);
    // Stops the echoes however the scope ends: a panic in it must not
    // leave the scope waiting on them.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        // An echo in every b site, and one in the internet namespace.
        let mut echoes = Vec::new();
        for (p, _, _) in EXPECT {
            let b = lab.site(&format!("{}b", &p.name()[..2])).unwrap();
            let addr = SocketAddr::from((b.host_addr, 7000));
            let sock = b.host_ns().bind_udp(addr).unwrap();
            echoes.push(addr);
            let stop = &stop;
            s.spawn(move || udp_echo(&sock, stop));
        }
        let inet_echo = SocketAddr::from((natkit_lab::addr::INTERNET_GATEWAY, 7000));
        let sock = lab.internet().bind_udp(inet_echo).unwrap();
        {
            let stop = &stop;
            s.spawn(move || udp_echo(&sock, stop));
        }

        // All profiles at once: each measurement paces its own sends.
        let runs: Vec<_> = EXPECT
            .iter()
            .zip(&echoes)
            .map(|(&(p, peer, site), &echo)| {
                let lab = &lab;
                s.spawn(move || {
                    let a = lab.site(&format!("{}a", &p.name()[..2])).unwrap();
                    let sock = a.host_ns().bind_udp((a.host_addr, 0)).unwrap();
                    // Mobile: enough datagrams that its ~2 % peer-to-peer
                    // loss shows (P(no loss in 400) < 0.1 %).
                    let n = if p == LinkProfile::Mobile { 400 } else { 50 };
                    let interval = Duration::from_millis(5);
                    let grace = Duration::from_millis(500);
                    let to_peer = udp_rtt(&sock, echo, n, interval, grace);
                    let to_inet = udp_rtt(&sock, inet_echo, 50, interval, grace);
                    (p, peer, site, to_peer.unwrap(), to_inet.unwrap())
                })
            })
            .collect();
        for r in runs {
            let Ok((p, (lo, hi), (slo, shi), to_peer, to_inet)) = r.join() else {
                failures.push("a measurement panicked".to_string());
                continue;
            };
            if to_peer.rtts.is_empty() || to_inet.rtts.is_empty() {
                failures.push(format!("{p}: no answers at all"));
                continue;
            }
            let (m, sm) = (ms(to_peer.median()), ms(to_inet.median()));
            eprintln!(
                "{p:<10} peer rtt median {m:.2} ms (min {:.2}, max {:.2}) loss {:.1} % of {}; \
                 to the internet {sm:.2} ms, loss {:.1} %",
                ms(to_peer.rtts.first().copied().unwrap_or_default()),
                ms(to_peer.rtts.last().copied().unwrap_or_default()),
                to_peer.loss() * 100.0,
                to_peer.sent,
                to_inet.loss() * 100.0,
            );
            if !(lo..=hi).contains(&m) {
                failures.push(format!("{p}: peer RTT {m:.2} ms, want {lo}-{hi}"));
            }
            if !(slo..=shi).contains(&sm) {
                failures.push(format!("{p}: site RTT {sm:.2} ms, want {slo}-{shi}"));
            }
            let loss = to_peer.loss();
            if p == LinkProfile::Mobile {
                if !(0.001..=0.08).contains(&loss) {
                    failures.push(format!("mobile: loss {:.2} %, want ~2 %", loss * 100.0));
                }
                // Jitter: ±10 ms on each of four link directions.
                let spread = ms(to_peer.rtts[to_peer.rtts.len() * 9 / 10])
                    - ms(to_peer.rtts[to_peer.rtts.len() / 10]);
                if spread < 5.0 {
                    failures.push(format!("mobile: p90-p10 {spread:.1} ms, want jitter"));
                }
            } else if to_peer.sent - to_peer.rtts.len() > 1 {
                // None configured; one late answer (past the grace) on a
                // loaded machine is not a lossy link.
                failures.push(format!("{p}: loss {:.1} %, want none", loss * 100.0));
            }
        }
    });
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
