//! RFC 8863 (ICE PAC, "Patiently Awaiting Connectivity") on the simulated
//! network: an agent given no usable candidate of the peer, or whose pairs
//! all failed, keeps waiting for the peer's checks until the PAC timer runs
//! out, connects through the peer-reflexive candidates those checks teach,
//! and once it has failed answers no check until an ICE restart.
//!
//! Node 0 ("A") is the agent under test; node 1 ("B") is its peer.

mod common;

use std::time::Duration;

use common::{assert_same_path, config, final_selected, Filtering, Mapping, Nat, Sim};
use natkit_ice::{CandidateKind, Config, Event, FailureReason, IceState, InputError, Role};
use natkit_proto::raw::{self, Class};

/// A has IPv4 only; B has IPv4 and IPv6.
const A_HOSTS: &[&str] = &["192.0.2.1:1000"];
const B_HOSTS: &[&str] = &["198.51.100.2:2000", "[2001:db8::2]:2000"];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn failed_at(sim: &Sim, i: usize) -> Option<Duration> {
    sim.nodes[i]
        .events
        .iter()
        .find_map(|(t, e)| matches!(e, Event::Failed(_)).then_some(*t))
}

/// A learns B's credentials and, of B's candidates, only the IPv6 one (a
/// family A has no base for) then end-of-candidates: B's IPv4 host
/// candidate stands for one a browser signalled as an mDNS `.local` name,
/// which A's driver could not resolve and skipped. A has given all its own
/// candidates. This is what made the agent fail within a millisecond while
/// still answering B's checks.
fn a_gets_nothing_usable(sim: &mut Sim) {
    sim.give_credentials(1, 0);
    sim.give_candidates_where(1, 0, true, |c| c.addr.is_ipv6());
    sim.nodes[0].agent.end_of_local_candidates();
}

/// B learns all of A (its checks reach A, from B's IPv4 host address).
fn b_gets_everything(sim: &mut Sim) {
    sim.give_credentials(0, 1);
    sim.give_candidates(0, 1, true);
    sim.nodes[1].agent.end_of_local_candidates();
}

/// Test 1: only unusable candidates plus end-of-candidates, and the peer's
/// checks reach us: we connect through the peer-reflexive candidate they
/// teach, both sides on the same pair, whoever nominates.
#[test]
fn unusable_candidates_then_end_of_candidates_connect_through_peer_reflexive() {
    for (a_role, seed) in [(Role::Controlled, 1), (Role::Controlling, 3)] {
        let mut sim = Sim::new(
            [config(a_role, seed), config(a_role.flip(), seed + 1)],
            [A_HOSTS, B_HOSTS],
            [None, None],
            seed,
        );
        a_gets_nothing_usable(&mut sim);
        assert!(sim.nodes[0].agent.check_list().is_empty());
        // B's description reaches A first; B's checks start 1 s later (its
        // answer to A's offer took time to arrive).
        assert!(!sim.run(ms(1000), |s| failed_at(s, 0).is_some()));
        assert_eq!(sim.nodes[0].agent.state(), IceState::Checking);
        b_gets_everything(&mut sim);
        assert!(
            sim.run(ms(3000), |s| s.both_connected()),
            "{a_role:?}: A {:?}, B {:?}",
            sim.nodes[0].agent.state(),
            sim.nodes[1].agent.state()
        );
        let (a, b) = (sim.connected(0).unwrap(), sim.connected(1).unwrap());
        assert_same_path(a, b);
        // A knows B's address only from B's check (RFC 8445 §7.3.1.3).
        assert_eq!(a.remote.kind, CandidateKind::PeerReflexive, "{a_role:?}");
        assert_eq!(a.remote.addr, "198.51.100.2:2000".parse().unwrap());
        assert_eq!(b.remote.kind, CandidateKind::Host);
        // Well past the PAC timer: still connected, never failed.
        sim.run_for(Duration::from_secs(45), |_| false);
        assert_same_path(&final_selected(&sim, 0), &final_selected(&sim, 1));
        for i in 0..2 {
            assert_eq!(failed_at(&sim, i), None, "{a_role:?} node {i}");
            assert_eq!(sim.nodes[i].agent.state(), IceState::Connected);
            assert_eq!(sim.nodes[i].refused, 0);
        }
    }
}

/// Test 2: the peer never sends. No failure while the PAC timer runs
/// (default 39.5 s, or as configured); failure the moment it runs out,
/// saying that no check arrived.
#[test]
fn a_peer_that_never_sends_fails_when_the_pac_timer_runs_out() {
    for pac in [None, Some(Duration::from_secs(5))] {
        let mut cfg = config(Role::Controlling, 11);
        if let Some(d) = pac {
            cfg.pac_timeout = d;
        }
        let expected = cfg.pac_timeout;
        let mut sim = Sim::new(
            [cfg, config(Role::Controlled, 12)],
            [A_HOSTS, B_HOSTS],
            [None, None],
            5,
        );
        sim.nodes[1].down = true;
        a_gets_nothing_usable(&mut sim);
        let before = expected - ms(1);
        assert!(
            !sim.run(before, |s| failed_at(s, 0).is_some()),
            "failed at {:?}, before the PAC timer ({expected:?}) ran out",
            failed_at(&sim, 0)
        );
        assert_eq!(sim.nodes[0].agent.state(), IceState::Checking);
        assert!(sim.nodes[0].agent.failure().is_none());
        assert!(sim.run(expected, |s| failed_at(s, 0).is_some()));
        assert_eq!(failed_at(&sim, 0), Some(expected));
        let a = &sim.nodes[0].agent;
        assert_eq!(a.state(), IceState::Failed);
        let failure = a.failure().expect("failure info");
        assert_eq!(failure.reason, FailureReason::NoCheckArrived);
        assert_eq!(failure.after, expected);
        assert!(failure.pairs.is_empty());
        let unpaired: Vec<_> = failure.unpaired_remote.iter().map(|c| c.addr).collect();
        assert_eq!(unpaired, ["[2001:db8::2]:2000".parse().unwrap()]);
        let text = failure.to_string();
        let within = format!(
            "no check arrived within {:.1} s (RFC 8863)",
            expected.as_secs_f64()
        );
        assert!(text.starts_with("the peer never reached us: "), "{text}");
        assert!(text.contains(&within), "{text}");
        assert!(a.poll_timeout().is_none(), "a failed agent sleeps");
    }
}

/// Test 3: once failed, an authentic check gets no answer at all (no
/// success, which would let the peer go connected alone); after an ICE
/// restart the agent answers again and connects.
#[test]
fn after_failing_checks_get_no_answer_until_an_ice_restart() {
    let mut sim = Sim::new(
        [config(Role::Controlled, 21), config(Role::Controlling, 22)],
        [A_HOSTS, B_HOSTS],
        [None, None],
        7,
    );
    a_gets_nothing_usable(&mut sim);
    assert!(sim.run(ms(39_500), |s| failed_at(s, 0).is_some()));
    // B starts late, after A gave up: its first check, a nominating one
    // under aggressive-style peers, reaches A.
    b_gets_everything(&mut sim);
    let now = sim.now;
    let first_check = |sim: &mut Sim| {
        let b = &mut sim.nodes[1].agent;
        b.handle_timeout(now);
        std::iter::from_fn(|| b.poll_transmit())
            .find(|t| t.to.is_ipv4())
            .expect("B checks A")
    };
    let t = first_check(&mut sim);
    let a = &mut sim.nodes[0].agent;
    assert_eq!(
        a.handle_input(t.from, t.to, &t.payload, now),
        Err(InputError::IceFailed)
    );
    assert_eq!(a.poll_transmit(), None, "no answer of any kind");
    assert_eq!(a.poll_event(), None);
    assert_eq!(a.state(), IceState::Failed);
    assert!(
        a.remote_candidates()
            .iter()
            .all(|c| c.kind != CandidateKind::PeerReflexive),
        "nothing learned from the check"
    );
    // Retransmissions get the same silence, so B never connects.
    assert!(!sim.run_for(Duration::from_secs(5), |s| s.connected(1).is_some()));
    assert!(sim.nodes[1].refused == 0 && sim.nodes[0].refused > 0);

    // RFC 8445 §9: both restart with fresh credentials.
    sim.nodes[0].agent.restart();
    sim.nodes[1].agent.restart();
    a_gets_nothing_usable(&mut sim);
    b_gets_everything(&mut sim);
    assert!(sim.nodes[0].agent.failure().is_none());
    let now = sim.now;
    let t = first_check(&mut sim);
    let a = &mut sim.nodes[0].agent;
    assert_eq!(a.handle_input(t.from, t.to, &t.payload, now), Ok(()));
    let answer = a.poll_transmit().expect("an answer after the restart");
    assert_eq!((answer.from, answer.to), (t.to, t.from));
    let h = raw::parse_datagram(&answer.payload).unwrap();
    assert_eq!(h.class(), Class::Success);
    assert!(sim.run_for(Duration::from_secs(3), |s| s.both_connected()));
    assert_same_path(&final_selected(&sim, 0), &final_selected(&sim, 1));
}

/// RFC 8863 §3 with pairs: A's only pair (to B's private address behind a
/// NAT) fails after 9.75 s, but the check list keeps running; B starts
/// checking at 20 s, through its NAT, and the peer-reflexive candidate its
/// check teaches connects.
#[test]
fn a_failed_check_list_is_revived_by_the_peers_check_before_the_pac_timer() {
    let nat = Nat::new(
        "203.0.113.1",
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    let mut sim = Sim::new(
        [config(Role::Controlling, 31), config(Role::Controlled, 32)],
        [A_HOSTS, &["10.0.1.1:2000"]],
        [None, Some(nat)],
        9,
    );
    // A gets B's host candidate, a private address it cannot reach.
    sim.give_credentials(1, 0);
    sim.give_candidates(1, 0, true);
    sim.nodes[0].agent.end_of_local_candidates();
    assert!(!sim.run(Duration::from_secs(20), |s| failed_at(s, 0).is_some()));
    let a = &sim.nodes[0].agent;
    assert_eq!(a.state(), IceState::Checking);
    let list = a.check_list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].state, natkit_ice::PairState::Failed);
    b_gets_everything(&mut sim);
    assert!(sim.run_for(Duration::from_secs(3), |s| s.both_connected()));
    let (a, b) = (sim.connected(0).unwrap(), sim.connected(1).unwrap());
    assert_same_path(a, b);
    assert_eq!(a.remote.kind, CandidateKind::PeerReflexive);
    assert_eq!(
        a.remote.addr.ip(),
        "203.0.113.1".parse::<std::net::IpAddr>().unwrap()
    );
    sim.run_for(Duration::from_secs(30), |_| false);
    assert_eq!(failed_at(&sim, 0), None);
    assert_same_path(&final_selected(&sim, 0), &final_selected(&sim, 1));
}

/// The timer starts when checking does (the peer's credentials), not when
/// the agent was created: an agent that waited for signalling still gets
/// the whole PAC time.
#[test]
fn the_pac_timer_counts_from_the_peers_credentials() {
    let mut sim = Sim::new(
        [config(Role::Controlling, 41), config(Role::Controlled, 42)],
        [A_HOSTS, B_HOSTS],
        [None, None],
        11,
    );
    sim.nodes[1].down = true;
    sim.run(Duration::from_secs(30), |_| false);
    a_gets_nothing_usable(&mut sim);
    let pac = Config::default().pac_timeout;
    assert!(!sim.run_for(pac - ms(1), |s| failed_at(s, 0).is_some()));
    assert!(sim.run_for(ms(1), |s| failed_at(s, 0).is_some()));
    assert_eq!(failed_at(&sim, 0), Some(Duration::from_secs(30) + pac));
    assert_eq!(sim.nodes[0].agent.failure().unwrap().after, pac);
}
