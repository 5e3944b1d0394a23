//! The session core's port-mapped candidate, in simulated time: a peer
//! behind a symmetric NAT whose gateway maps ports (PCP, NAT-PMP or UPnP,
//! `common/gateway.rs`) connects directly to another symmetric NAT where
//! it would otherwise relay; gathering waits for a gateway that answers
//! and not for a silent one; the mapping is deleted before the session
//! reports closed.

mod common;
// Re-exports the other simulations use.
#[allow(unused_imports)]
mod session_harness;

use std::time::Duration;

use common::gateway::{Answer, SimGateway};
use common::{Filtering, Mapping, Nat};
use natkit_ice::portmap::{self, Protocol};
use natkit_ice::{CandidateKind, PathKind, Role, SessionEvent};
use session_harness::{ms, relay_config, secs, Sim};

const STUN: &str = "203.0.113.5:3478";
const TURN: &str = "203.0.113.10:3478";
const A_HOST: &str = "10.0.0.1:1000";
const A_GW: &str = "10.0.0.254";
const A_PUBLIC: &str = "203.0.113.1";

fn symmetric(ip: &str) -> Option<Nat> {
    Some(Nat::new(
        ip,
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    ))
}

/// A (controlling) behind a symmetric NAT whose gateway answers as
/// `gateway` says (`None`: no port mapping asked), B behind another
/// symmetric NAT; STUN, and TURN when `turn`.
fn world(seed: u64, turn: bool, gateway: Option<fn(&mut SimGateway)>) -> Sim {
    let mut sim = Sim::new(seed);
    sim.add_stun(STUN);
    if turn {
        sim.add_turn(TURN, relay_config());
    }
    let mut ca = sim.config(Role::Controlling, 11);
    let cb = sim.config(Role::Controlled, 12);
    let gw = gateway.map(|f| {
        let mut g = SimGateway::new(A_GW, A_PUBLIC, sim.now);
        f(&mut g);
        let mut pm = portmap::Config::new(g.lan, A_HOST.parse().unwrap());
        pm.seed = Some(5);
        ca.port_mapping = Some(pm);
        g
    });
    sim.add_peer_behind("A", ca, &[A_HOST], symmetric(A_PUBLIC), gw);
    sim.add_peer("B", cb, &["10.1.0.1:2000"], symmetric("198.51.100.1"));
    sim
}

fn connect(sim: &mut Sim) {
    assert!(sim.run_for(secs(6), |s| s.both_gathered()));
    sim.exchange();
    assert!(
        sim.run_for(secs(15), |s| s.both_connected()),
        "not connected"
    );
}

/// A gateway that answers nothing at all.
fn all_silent(g: &mut SimGateway) {
    g.pcp = Answer::Silent;
    g.natpmp = Answer::Silent;
    g.upnp = Answer::Silent;
}

fn gathered_at(sim: &Sim, i: usize) -> Duration {
    sim.peers[i]
        .event_at(|e| matches!(e, SessionEvent::GatheringDone))
        .expect("gathering done")
}

#[test]
fn symmetric_to_symmetric_is_direct_through_the_port_mapping_not_relayed() {
    // Control: without port mapping the pair relays.
    let mut sim = world(1, true, None);
    connect(&mut sim);
    assert_eq!(sim.peers[0].core.path().unwrap().kind, PathKind::Relay);

    for (name, setup) in [
        ("pcp", (|_: &mut SimGateway| {}) as fn(&mut SimGateway)),
        ("nat-pmp", |g| g.pcp = Answer::NatPmpOnly),
        ("upnp", |g| {
            g.pcp = Answer::Silent;
            g.natpmp = Answer::Silent;
        }),
    ] {
        let mut sim = world(1, true, Some(setup));
        connect(&mut sim);
        let a = &sim.peers[0];
        let mapped = a
            .find(|e| match e {
                SessionEvent::PortMapped(m) => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no mapping"));
        assert_eq!(mapped.external.ip().to_string(), A_PUBLIC, "{name}");
        // The mapped candidate is in A's description as srflx, type
        // preference 105.
        let d = a.core.local_description();
        let c = d
            .candidates
            .iter()
            .find(|c| c.addr == mapped.external)
            .unwrap_or_else(|| panic!("{name}: {d:?}"));
        assert_eq!(
            (c.kind, c.priority >> 24),
            (CandidateKind::ServerReflexive, 105)
        );
        // Direct: B's checks reach A through the forwarded port.
        for p in &sim.peers {
            let path = p.core.path().unwrap();
            assert_ne!(
                path.kind,
                PathKind::Relay,
                "{name}: {} relays: {path}",
                p.name
            );
        }
        let b_path = sim.peers[1].core.path().unwrap().clone();
        assert_eq!(b_path.remote.addr, mapped.external, "{name}: {b_path}");
        assert!(b_path.remote.is_port_mapped(), "{name}");
        assert_eq!(
            sim.peers[0].core.port_mapping().unwrap().protocol.key(),
            name
        );
        sim.app_traffic(Some(ms(20)));
        sim.run_for(secs(1), |_| false);
        sim.app_traffic(None);
        sim.run_for(ms(300), |_| false);
        for p in &sim.peers {
            assert!(p.rx.len() >= 45, "{name}: {} got {}", p.name, p.rx.len());
            assert!(p.rx.iter().all(|r| !r.via_our_relay), "{name}");
        }
    }
}

#[test]
fn gathering_waits_for_a_gateway_that_answers_not_for_a_silent_one() {
    // PCP answers in 2 ms: the mapped candidate is in the description.
    let mut sim = world(2, false, Some(|_| {}));
    assert!(sim.run_for(secs(6), |s| s.peers[0].core.gathering_done()));
    let mapped = sim.peers[0]
        .event_at(|e| matches!(e, SessionEvent::PortMapped(_)))
        .unwrap();
    assert!(mapped <= gathered_at(&sim, 0));
    assert!(sim.peers[0]
        .core
        .local_description()
        .candidates
        .iter()
        .any(|c| c.priority >> 24 == 105));

    // UPnP only: SSDP answers, port 5351 stays silent; gathering waits
    // for the mapping (the patience, then three HTTP exchanges).
    let mut sim = world(
        2,
        false,
        Some(|g| {
            g.pcp = Answer::Silent;
            g.natpmp = Answer::Silent;
        }),
    );
    assert!(sim.run_for(secs(6), |s| s.peers[0].core.gathering_done()));
    let t = gathered_at(&sim, 0);
    assert!(t >= ms(500) && t < ms(600), "gathered at {t:?}");
    assert!(sim.peers[0].core.port_mapping().is_some());

    // Nothing answers: gathering ends when STUN answers (20 ms), not
    // later, and the failure comes later.
    let mut sim = world(2, false, Some(all_silent));
    assert!(sim.run_for(secs(6), |s| s.peers[0].core.gathering_done()));
    assert_eq!(gathered_at(&sim, 0), ms(20));
    assert!(sim.run_for(secs(6), |s| s.peers[0]
        .event_at(|e| matches!(e, SessionEvent::PortMappingFailed(_)))
        .is_some()));
    let failed = sim.peers[0]
        .event_at(|e| matches!(e, SessionEvent::PortMappingFailed(_)))
        .unwrap();
    assert_eq!(failed, ms(3750));
    // B, without port mapping, gathers as before: when STUN answers.
    assert_eq!(gathered_at(&sim, 1), ms(20));

    // Without STUN or TURN servers, a silent gateway holds gathering only
    // for the first-answer wait; one that answers, until it maps.
    for (silent, want) in [
        (true, natkit_ice::session_core::PORTMAP_FIRST_ANSWER),
        (false, ms(2)),
    ] {
        let mut sim = Sim::new(2);
        let mut cfg = session_harness::core_config(Role::Controlling, 1);
        let mut g = SimGateway::new(A_GW, A_PUBLIC, sim.now);
        if silent {
            all_silent(&mut g);
        }
        cfg.port_mapping = Some(portmap::Config::new(g.lan, A_HOST.parse().unwrap()));
        sim.add_peer_behind("A", cfg, &[A_HOST], symmetric(A_PUBLIC), Some(g));
        assert!(sim.run_for(secs(1), |s| s.peers[0].core.gathering_done()));
        assert_eq!(gathered_at(&sim, 0), want, "silent: {silent}");
    }

    // Closing early, while PCP still retransmits to the silent gateway:
    // no wait for a confirmation that cannot come.
    let mut sim = world(2, false, Some(all_silent));
    assert!(sim.run_for(ms(300), |s| s.peers[0].core.gathering_done()));
    let t_close = sim.t();
    sim.close(0);
    assert!(sim.run_for(secs(3), |s| s.peers[0].core.is_closed()));
    let closed = sim.peers[0]
        .event_at(|e| matches!(e, SessionEvent::Closed))
        .unwrap();
    assert_eq!(closed - t_close, natkit_ice::session_core::CLOSE_GRACE);
}

#[test]
fn a_refusing_gateway_is_reported_and_the_session_goes_on() {
    let mut sim = world(
        3,
        true,
        Some(|g| {
            g.pcp = Answer::Refuse;
            g.upnp = Answer::Refuse;
        }),
    );
    connect(&mut sim);
    let status = sim.peers[0]
        .find(|e| match e {
            SessionEvent::PortMappingFailed(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    let keys: Vec<&str> = status.iter().map(|(p, _)| p.key()).collect();
    assert_eq!(keys, ["pcp", "nat-pmp", "upnp"]);
    assert!(matches!(
        status[0].1,
        portmap::Status::Failed(portmap::Failure::Pcp(_))
    ));
    assert_eq!(sim.peers[0].core.path().unwrap().kind, PathKind::Relay);
    assert_eq!(sim.peers[0].core.port_mapping_status()[2].0, Protocol::Upnp);
}

#[test]
fn an_ice_restart_renews_the_mapping_and_a_refusal_reports_it_lost() {
    let mut sim = world(5, true, Some(|_| {}));
    connect(&mut sim);
    let asked = |sim: &Sim| {
        sim.peers[0]
            .gateway
            .as_ref()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.starts_with("pcp map"))
            .count()
    };
    assert_eq!(asked(&sim), 1);
    // A network change: the restart asks the gateway again at once.
    sim.restart(0);
    assert!(sim.run_for(ms(100), |s| asked(s) == 2));
    assert!(sim.peers[0].core.port_mapping().is_some());
    // The gateway now refuses: the next restart loses the mapping.
    sim.peers[0].gateway.as_mut().unwrap().pcp = Answer::Refuse;
    sim.restart(0);
    assert!(sim.run_for(ms(100), |s| s.peers[0]
        .event_at(|e| matches!(e, SessionEvent::PortMappingLost { .. }))
        .is_some()));
    assert!(sim.peers[0].core.port_mapping().is_none());
    // Nothing more to wait for: the restart's gathering is not held.
    assert!(sim.run_for(ms(200), |s| s.peers[0].core.gathering_done()));
}

#[test]
fn close_deletes_the_port_mapping_before_reporting_closed() {
    for setup in [(|_: &mut SimGateway| {}) as fn(&mut SimGateway), |g| {
        g.pcp = Answer::Silent;
        g.natpmp = Answer::Silent;
    }] {
        let mut sim = world(4, false, Some(setup));
        connect(&mut sim);
        assert_eq!(sim.peers[0].gateway.as_ref().unwrap().mappings.len(), 1);
        let t_close = sim.t();
        sim.close(0);
        assert!(sim.run_for(secs(5), |s| s.peers[0].core.is_closed()));
        let gw = sim.peers[0].gateway.as_ref().unwrap();
        assert!(gw.mappings.is_empty(), "{:?}", gw.mappings);
        let closed = sim.peers[0]
            .event_at(|e| matches!(e, SessionEvent::Closed))
            .unwrap();
        // The grace, then one LAN round trip or an HTTP exchange.
        let took = closed - t_close;
        assert!(
            took >= natkit_ice::session_core::CLOSE_GRACE && took < ms(300),
            "closed after {took:?}"
        );
        assert!(gw
            .log
            .last()
            .is_some_and(|l| l.ends_with("lifetime 0") || l == "upnp DeletePortMapping"));
    }
}
