//! The order and pace of an agent's checks (RFC 8445 §6.1.4.2, §14.2):
//! Ta agreed from both proposals and scaled to the check list, and pairs
//! unlikely to work (to private addresses behind another NAT) checked
//! after the others.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::{Agent, Candidate, CandidateKind, Config, IceOptions, Role};

/// A seeded config (reproducible runs).
fn config(role: Role, seed: u64) -> Config {
    Config {
        role,
        seed: Some(seed),
        ..Config::default()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const NATKIT: IceOptions = IceOptions {
    pacing: Some(Duration::from_millis(5)),
    renomination: true,
};

/// A controlling agent on host `host` (and behind a NAT mapping it to
/// `srflx`, if given), checking a peer that gave credentials and the
/// `remote` candidates.
fn agent(host: &str, srflx: Option<&str>, remote: &[(CandidateKind, &str)]) -> (Agent, Instant) {
    let t0 = Instant::now();
    let mut a = Agent::new(config(Role::Controlling, 7), t0);
    a.add_local_candidate(Candidate::host(addr(host), 65535))
        .unwrap();
    if let Some(s) = srflx {
        let stun = "192.0.2.200".parse().unwrap();
        a.add_local_candidate(Candidate::server_reflexive(
            addr(s),
            addr(host),
            stun,
            65535,
        ))
        .unwrap();
    }
    a.set_remote_credentials("peer", "peerpassword0123456789ab")
        .unwrap();
    for (i, (kind, at)) in remote.iter().enumerate() {
        let prio = natkit_ice::candidate::candidate_priority(*kind, 65535);
        a.add_remote_candidate(Candidate::remote(*kind, addr(at), prio, &format!("f{i}")))
            .unwrap();
    }
    a.set_remote_ice_options(NATKIT);
    (a, t0)
}

/// Where the first checks of an agent on `host` (behind a NAT mapping it
/// to `srflx`, if given) go, one Ta after another, given the peer's
/// `remote` candidates: one check for each.
fn first_checks(
    host: &str,
    srflx: Option<&str>,
    remote: &[(CandidateKind, &str)],
) -> Vec<SocketAddr> {
    let (mut a, t0) = agent(host, srflx, remote);
    let mut to = Vec::new();
    let mut now = t0;
    while to.len() < remote.len() && now < t0 + Duration::from_secs(1) {
        a.handle_timeout(now);
        to.extend(std::iter::from_fn(|| a.poll_transmit()).map(|t| t.to));
        now += a.pacing();
    }
    // The order of checks only: the pair priorities are RFC 8445's, the
    // host pair's highest.
    assert_eq!(a.check_list()[0].remote.kind, CandidateKind::Host);
    to
}

#[test]
fn ta_is_the_larger_proposal_never_below_5_ms() {
    let (mut a, _) = agent(
        "192.0.2.1:1000",
        None,
        &[(CandidateKind::Host, "192.0.2.2:2000")],
    );
    // natkit proposes 5 ms.
    assert_eq!(a.local_ice_options(), NATKIT);
    // A peer that proposed nothing (a standard agent): RFC 8445's 50 ms.
    a.set_remote_ice_options(IceOptions::default());
    assert_eq!(a.pacing(), ms(50));
    a.set_remote_ice_options(IceOptions {
        renomination: true,
        pacing: None,
    });
    assert_eq!(a.pacing(), ms(50));
    a.set_remote_ice_options(NATKIT);
    assert_eq!(a.pacing(), ms(5));
    a.set_remote_ice_options(IceOptions {
        pacing: Some(ms(20)),
        ..NATKIT
    });
    assert_eq!(a.pacing(), ms(20));
    // Never below RFC 8445 §14.2's 5 ms, whatever both propose.
    let mut cfg = config(Role::Controlling, 8);
    cfg.ta = Duration::from_micros(100);
    let mut b = Agent::new(cfg, Instant::now());
    b.set_remote_ice_options(IceOptions {
        pacing: Some(Duration::ZERO),
        renomination: true,
    });
    assert_eq!(
        b.local_ice_options().pacing,
        Some(Duration::from_micros(100))
    );
    assert_eq!(b.pacing(), ms(5));
}

#[test]
fn ta_grows_with_the_check_list_up_to_50_ms() {
    let remote: Vec<String> = (0..100)
        .map(|i| format!("192.0.2.{}:2000", i + 2))
        .collect();
    let cands = |n: usize| -> Vec<(CandidateKind, &str)> {
        remote[..n]
            .iter()
            .map(|s| (CandidateKind::Host, s.as_str()))
            .collect()
    };
    for (pairs, ta) in [(1, 5), (10, 5), (30, 15), (60, 30), (100, 50)] {
        let (a, _) = agent("192.0.2.1:1000", None, &cands(pairs));
        assert_eq!(a.check_list().len(), pairs);
        assert_eq!(a.pacing(), ms(ta), "{pairs} pairs");
    }
}

#[test]
fn one_check_per_ta() {
    let remote = [
        (CandidateKind::Host, "192.0.2.2:2000"),
        (CandidateKind::Host, "192.0.2.3:2000"),
        (CandidateKind::Host, "192.0.2.4:2000"),
    ];
    for (options, ta) in [(NATKIT, ms(5)), (IceOptions::default(), ms(50))] {
        let (mut a, t0) = agent("192.0.2.1:1000", None, &remote);
        a.set_remote_ice_options(options);
        let sent_at = |a: &mut Agent, at: Duration| {
            a.handle_timeout(t0 + at);
            std::iter::from_fn(|| a.poll_transmit()).count()
        };
        assert_eq!(sent_at(&mut a, Duration::ZERO), 1);
        assert_eq!(a.poll_timeout(), Some(t0 + ta));
        assert_eq!(sent_at(&mut a, ta - Duration::from_micros(1)), 0);
        assert_eq!(sent_at(&mut a, ta), 1);
        assert_eq!(sent_at(&mut a, ta * 2), 1);
    }
}

/// Where the first checks go, in these cases:
///
/// - behind a NAT (a server-reflexive address that is not the host's),
///   facing a peer behind another (its server-reflexive address is none of
///   its hosts'): the host pair, to a private address, goes last; the
///   server-reflexive and relayed pairs first, in priority order;
/// - from a public address, the same: the peer's host address is private;
/// - both behind the same NAT (the same server-reflexive address): the host
///   pair is the LAN path and goes first, by priority;
/// - a peer whose server-reflexive address is one of its host addresses is
///   not behind a NAT (a standard agent may signal such a candidate):
///   priority order.
#[test]
fn checks_go_first_to_pairs_likely_to_work() {
    use CandidateKind::{Host, Relayed, ServerReflexive as Srflx};
    let natted_peer = [
        (Host, "10.1.0.1:2000"),
        (Srflx, "198.51.100.1:50000"),
        (Relayed, "192.0.2.100:60000"),
    ];
    let same_nat = [(Host, "10.0.0.2:2000"), (Srflx, "203.0.113.1:40001")];
    let public_peer = [
        (Host, "198.51.100.2:2000"),
        (Srflx, "198.51.100.2:2001"),
        (Relayed, "192.0.2.100:60000"),
    ];
    let behind_nat = ("10.0.0.1:1000", Some("203.0.113.1:40000"));
    let public = ("192.0.2.1:1000", None);
    let cases: [(_, &[_], [usize; 3]); 4] = [
        (behind_nat, &natted_peer, [1, 2, 0]),
        (public, &natted_peer, [1, 2, 0]),
        (behind_nat, &same_nat, [0, 1, 2]),
        (behind_nat, &public_peer, [0, 1, 2]),
    ];
    for (i, ((host, srflx), remote, order)) in cases.into_iter().enumerate() {
        let expected: Vec<SocketAddr> = order
            .iter()
            .filter_map(|&k| remote.get(k))
            .map(|(_, a)| addr(a))
            .collect();
        assert_eq!(first_checks(host, srflx, remote), expected, "case {i}");
    }
}
