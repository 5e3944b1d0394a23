//! natkit's hard-NAT punch (`session_core::punch`) in simulated time: a
//! peer behind a symmetric NAT (random or sequential ports) and a peer
//! behind a port-restricted one, an RFC 5780 STUN server and a TURN relay.
//! Plain ICE can only relay there; the punch must make the path direct,
//! with the packets bounded, the sockets closed, and nothing done with a
//! standard peer or when both sides are hard. Deterministic from the seeds;
//! each run takes well under a second.

mod common;
// Re-exports the other simulations use.
#[allow(unused_imports)]
mod session_harness;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Filtering, Mapping, Nat};
use natkit_ice::session_core::{PROBE_BUDGET, PUNCH_LIFETIME, PUNCH_SOCKETS};
use natkit_ice::{NatMapping, PathKind, PunchReport, Role, SessionEvent};
use session_harness::{ms, relay_config, secs, Sim};

const STUN: &str = "203.0.113.5:3478";
const STUN_OTHER: &str = "203.0.113.6:3479";
const TURN: &str = "203.0.113.10:3478";
const HARD_IP: &str = "198.51.100.1";
const EASY_IP: &str = "203.0.113.1";

/// Endpoint-independent mapping, address-and-port-dependent filtering.
fn port_restricted(ip: &str) -> Nat {
    Nat::new(
        ip,
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    )
}

/// A symmetric NAT whose ports come in sequence.
fn sequential(ip: &str) -> Nat {
    Nat::new(
        ip,
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    )
}

/// A world with the RFC 5780 STUN server and the relay: A (controlling)
/// behind `a`, B behind `b`, one-way delay `delay` (broadband: 10 ms per
/// hop, 40 ms between the peers), descriptions exchanged once gathered.
fn world(seed: u64, a: Nat, b: Nat, delay: Duration) -> Sim {
    let mut sim = Sim::new(seed);
    sim.delay = delay;
    sim.add_stun_5780(STUN, STUN_OTHER);
    sim.add_turn(TURN, relay_config());
    let (ca, cb) = (
        sim.config(Role::Controlling, seed * 2 + 1),
        sim.config(Role::Controlled, seed * 2 + 2),
    );
    sim.add_peer("A", ca, &["10.0.0.1:1000"], Some(a));
    sim.add_peer("B", cb, &["10.1.0.1:2000"], Some(b));
    sim.auto_trickle = true;
    assert!(sim.run_for(secs(6), |s| s.both_gathered()));
    sim
}

fn report(sim: &Sim, i: usize) -> Option<PunchReport> {
    sim.peers[i].find(|e| match e {
        SessionEvent::Punch(r) => Some(r.clone()),
        _ => None,
    })
}

fn direct(sim: &Sim) -> bool {
    sim.peers
        .iter()
        .all(|p| p.core.path().is_some_and(|x| x.kind != PathKind::Relay))
}

/// Run until both sides are on a direct path and have reported, or 4 s.
/// Returns when the hard side (B) went direct, from the exchange.
fn punch(sim: &mut Sim) -> Option<Duration> {
    let t0 = sim.t();
    sim.exchange();
    let ok = sim.run_for(secs(4), |s| {
        direct(s) && report(s, 0).is_some() && report(s, 1).is_some()
    });
    ok.then(|| {
        let at = sim.peers[1]
            .event_at(|e| {
                matches!(e, SessionEvent::Connected(p) | SessionEvent::PathChanged(p)
                    if p.kind != PathKind::Relay)
            })
            .expect("a direct path");
        at - t0
    })
}

#[test]
fn gathering_tells_easy_from_hard_and_predicts_sequential_ports() {
    let sim = world(1, port_restricted(EASY_IP), sequential(HARD_IP), ms(10));
    let (a, b) = (
        sim.peers[0].core.local_description(),
        sim.peers[1].core.local_description(),
    );
    assert!(matches!(
        a.nat,
        Some(NatMapping::Easy { addr }) if addr.ip().to_string() == EASY_IP
    ));
    // The simulated sequential NAT steps by one; the last mapping seen is
    // the last of the detection probes.
    match b.nat {
        Some(NatMapping::Hard {
            ip,
            last_port,
            delta,
        }) => {
            assert_eq!(ip.to_string(), HARD_IP);
            assert_eq!(delta, Some(1));
            let seen = sim
                .stun_seen
                .iter()
                .filter(|(_, s)| s.ip() == ip)
                .map(|(_, s)| s.port())
                .max();
            assert_eq!(Some(last_port), seen);
        }
        other => panic!("B: {other:?}"),
    }
    // Both forms carry it.
    for d in [&a, &b] {
        let text: natkit_ice::Description = d.to_string().parse().unwrap();
        assert_eq!(text.nat, d.nat);
        let json = natkit_ice::Description::parse_any(&serde_json::to_string(d).unwrap()).unwrap();
        assert_eq!(json.nat, d.nat);
    }
}

#[test]
fn sequential_ports_are_hit_in_the_predicted_window() {
    let mut sim = world(2, port_restricted(EASY_IP), sequential(HARD_IP), ms(10));
    let after = punch(&mut sim).expect("direct");
    assert!(after < ms(500), "{after:?}");
    match report(&sim, 0) {
        Some(PunchReport::Probed {
            sent,
            predicted,
            hit: Some(hit),
            hit_predicted,
            ..
        }) => {
            assert_eq!(hit.ip().to_string(), HARD_IP);
            // Found in the first pass over the window, before any random
            // probe.
            assert!(hit_predicted);
            assert!(sent == predicted && sent < 2 * PUNCH_SOCKETS, "{sent}");
        }
        r => panic!("A: {r:?}"),
    }
    assert_sockets_closed(&sim);
}

/// The hard side keeps only the socket under the selected pair, and the
/// selected pair is the same on both sides.
fn assert_sockets_closed(sim: &Sim) {
    let b = &sim.peers[1];
    assert_eq!(b.punch_opened, PUNCH_SOCKETS);
    let path = b.core.path().expect("B's path");
    let kept = b.punch_opened - b.punch_closed;
    assert!(kept <= 1, "{kept} punch sockets still open");
    assert_eq!(b.hosts.len(), 1 + kept);
    assert!(b.hosts.contains(&path.local.base));
    let a = sim.peers[0].core.path().expect("A's path");
    assert_eq!(a.remote.addr.ip().to_string(), HARD_IP);
    assert_eq!(path.remote.addr, a.local.addr, "B -> A's address");
    match report(sim, 1) {
        Some(PunchReport::Opened {
            sockets,
            reached: Some(_),
            direct_after: Some(_),
            ..
        }) => assert_eq!(sockets, PUNCH_SOCKETS),
        r => panic!("B: {r:?}"),
    }
}

/// Seed sweep over the random symmetric NAT (the birthday punch): at least
/// 95 % of runs direct; each bounded by N + M probes.
#[test]
fn random_ports_are_punched_in_at_least_95_percent_of_runs() {
    let runs = 40u64;
    let mut times = Vec::new();
    for seed in 0..runs {
        let hard = Nat::symmetric_random(HARD_IP, 1000 + seed);
        let mut sim = world(100 + seed, port_restricted(EASY_IP), hard, ms(10));
        let t = punch(&mut sim);
        // Whatever the outcome, the easy side stayed in budget.
        if let Some(PunchReport::Probed { sent, .. }) = report(&sim, 0) {
            assert!(sent <= PROBE_BUDGET, "seed {seed}: {sent} probes");
        }
        if let Some(t) = t {
            assert_sockets_closed(&sim);
            times.push(t);
        }
    }
    let ok = times.len() as f64 / runs as f64;
    times.sort();
    let p90 = times[(times.len() * 9).div_ceil(10) - 1];
    eprintln!(
        "direct in {} of {runs}; p50 {:?}, p90 {:?}",
        times.len(),
        times[times.len() / 2],
        p90
    );
    assert!(ok >= 0.95, "only {} of {runs} direct", times.len());
    assert!(p90 < secs(2), "p90 {p90:?}");
}

#[test]
fn a_hard_side_gives_up_in_bounded_time_and_closes_every_socket() {
    let mut sim = world(3, port_restricted(EASY_IP), sequential(HARD_IP), ms(10));
    // Every probe lost: nothing can meet.
    sim.drop_if = Some(Box::new(|_, dst, _| dst.ip().to_string() == HARD_IP));
    sim.exchange();
    sim.run_for(PUNCH_LIFETIME + secs(1), |_| false);
    let b = &sim.peers[1];
    assert_eq!(b.punch_opened, PUNCH_SOCKETS);
    assert_eq!(b.punch_closed, PUNCH_SOCKETS);
    assert_eq!(b.hosts.len(), 1);
    assert!(matches!(
        report(&sim, 1),
        Some(PunchReport::Opened { reached: None, .. })
    ));
    match report(&sim, 0) {
        Some(PunchReport::Probed {
            sent, hit: None, ..
        }) => assert_eq!(sent, PROBE_BUDGET),
        r => panic!("A: {r:?}"),
    }
}

#[test]
fn both_sides_hard_try_nothing_and_say_so() {
    let mut sim = world(
        4,
        Nat::symmetric_random(EASY_IP, 7),
        Nat::symmetric_random(HARD_IP, 8),
        ms(10),
    );
    sim.exchange();
    assert!(sim.run_for(secs(5), |s| s.both_connected()));
    sim.run_for(secs(1), |_| false);
    for i in 0..2 {
        assert_eq!(report(&sim, i), Some(PunchReport::BothHard));
        assert_eq!(sim.peers[i].punch_opened, 0);
        assert_eq!(sim.peers[i].core.path().unwrap().kind, PathKind::Relay);
    }
}

/// A standard agent's description carries no NAT mapping: the natkit side
/// opens no socket and sends no probe, whether it is the easy or the hard
/// one.
#[test]
fn nothing_is_tried_with_a_standard_peer() {
    for standard in [0, 1] {
        let mut sim = world(5, port_restricted(EASY_IP), sequential(HARD_IP), ms(10));
        let other = 1 - standard;
        // A standard agent announces nothing, and ignores what it does
        // not know.
        sim.signal_edited(standard, other, |d| d.nat = None);
        sim.signal_edited(other, standard, |d| d.nat = None);
        let probes = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let count = probes.clone();
        let (hard, easy): (IpAddr, IpAddr) = (HARD_IP.parse().unwrap(), EASY_IP.parse().unwrap());
        let known: Vec<SocketAddr> = sim.peers[1]
            .core
            .local_description()
            .candidates
            .iter()
            .map(|c| c.addr)
            .collect();
        sim.drop_if = Some(Box::new(move |src, dst, _| {
            if src.ip() == easy && dst.ip() == hard && !known.contains(&dst) {
                count.set(count.get() + 1);
            }
            false
        }));
        sim.run_for(secs(3), |_| false);
        for p in &sim.peers {
            assert_eq!(p.punch_opened, 0, "{}", p.name);
            assert!(report(&sim, 0).is_none() && report(&sim, 1).is_none());
        }
        // Only ICE's own checks to what B signalled (none to guessed ports).
        assert_eq!(probes.get(), 0, "standard side {standard}");
    }
}

/// Where the easy side's filter lets the hard side's packets in (a
/// restricted cone), plain ICE connects anyway, and the hard side's 256
/// opening packets must not flood the easy side's agent: they are
/// keepalives, not checks, so it learns no candidate from them.
#[test]
fn opening_packets_through_a_loose_filter_teach_the_easy_side_nothing() {
    let restricted = Nat::new(
        EASY_IP,
        Mapping::EndpointIndependent,
        Filtering::AddressDependent,
    );
    let mut sim = world(6, restricted, Nat::symmetric_random(HARD_IP, 9), ms(10));
    assert!(punch(&mut sim).is_some(), "direct");
    sim.run_for(secs(2), |_| false);
    let hard_pairs = sim.peers[0]
        .core
        .check_list()
        .iter()
        .filter(|p| p.remote.addr.ip().to_string() == HARD_IP)
        .count();
    assert!(hard_pairs < 10, "{hard_pairs} pairs to the hard side");
    assert!(direct(&sim));
}
