//! Checks from outside the simulation: authentication, non-STUN input, and
//! random or corrupted datagrams (which must never panic).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::{Agent, Candidate, Config, InputError, Role, Transmit, WireError};
use proptest::prelude::*;

const A: &str = "192.0.2.1:1000";
const B: &str = "198.51.100.2:2000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn agent(role: Role, seed: u64, local: &str, remote: &str, now: Instant) -> Agent {
    let mut a = Agent::new(
        Config {
            role,
            seed: Some(seed),
            ..Config::default()
        },
        now,
    );
    a.add_local_candidate(Candidate::host(addr(local), 65535))
        .unwrap();
    let r = Candidate::host(addr(remote), 65535);
    a.add_remote_candidate(Candidate::remote(r.kind, r.addr, r.priority, &r.foundation))
        .unwrap();
    a
}

/// A (controlling) and B (controlled) with A knowing B's ufrag and the
/// password `pwd_for_b`; B knows A's real credentials.
fn pair(pwd_for_b: Option<&str>, now: Instant) -> (Agent, Agent) {
    let mut a = agent(Role::Controlling, 1, A, B, now);
    let mut b = agent(Role::Controlled, 2, B, A, now);
    let ca = a.local_credentials().clone();
    let cb = b.local_credentials().clone();
    a.set_remote_credentials(&cb.ufrag, pwd_for_b.unwrap_or(&cb.pwd))
        .unwrap();
    b.set_remote_credentials(&ca.ufrag, &ca.pwd).unwrap();
    (a, b)
}

fn first_check(a: &mut Agent, now: Instant) -> Transmit {
    a.handle_timeout(now);
    let t = a.poll_transmit().expect("a check");
    assert_eq!((t.from, t.to), (addr(A), addr(B)));
    t
}

#[test]
fn checks_with_the_wrong_password_are_ignored() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Some("WrongPasswordWrongPassword"), now);
    let t = first_check(&mut a, now);
    assert_eq!(
        b.handle_input(t.from, t.to, &t.payload, now),
        Err(InputError::Unauthenticated)
    );
    assert_eq!(
        b.poll_transmit(),
        None,
        "no answer to an unauthenticated check"
    );
    assert!(
        b.remote_candidates().len() == 1,
        "no peer-reflexive candidate learned"
    );

    // The same check with the right password is answered.
    let (mut a, mut b) = pair(None, now);
    let t = first_check(&mut a, now);
    assert_eq!(b.handle_input(t.from, t.to, &t.payload, now), Ok(()));
    let r = b.poll_transmit().expect("an answer");
    assert_eq!((r.from, r.to), (addr(B), addr(A)));
    // ...and the answer is accepted by A.
    assert_eq!(
        a.handle_input(r.from, r.to, &r.payload, now + Duration::from_millis(5)),
        Ok(())
    );
    // A replayed answer matches no check any more.
    assert_eq!(
        a.handle_input(r.from, r.to, &r.payload, now + Duration::from_millis(6)),
        Err(InputError::UnknownTransaction)
    );
}

#[test]
fn checks_for_another_ufrag_are_ignored() {
    let now = Instant::now();
    let (mut a, _) = pair(None, now);
    // C has its own credentials: A's check (USERNAME "B's ufrag:A's ufrag")
    // is not for it.
    let mut c = agent(Role::Controlled, 3, B, A, now);
    let t = first_check(&mut a, now);
    assert_eq!(
        c.handle_input(t.from, t.to, &t.payload, now),
        Err(InputError::UnknownUsername)
    );
    assert_eq!(c.poll_transmit(), None);
}

#[test]
fn responses_from_the_wrong_address_fail_the_pair() {
    let now = Instant::now();
    let (mut a, mut b) = pair(None, now);
    let t = first_check(&mut a, now);
    b.handle_input(t.from, t.to, &t.payload, now).unwrap();
    let r = b.poll_transmit().unwrap();
    // RFC 8445 §7.2.5.2.1: a response from elsewhere is not symmetric.
    let elsewhere = addr("198.51.100.9:2000");
    assert_eq!(a.handle_input(elsewhere, r.to, &r.payload, now), Ok(()));
    let list = a.check_list();
    assert_eq!(list[0].state, natkit_ice::PairState::Failed);
    assert!(matches!(
        list[0].failure,
        Some(natkit_ice::PairFailure::NonSymmetric { .. })
    ));
}

#[test]
fn non_stun_datagrams_are_left_to_the_application() {
    let now = Instant::now();
    let (_, mut b) = pair(None, now);
    // A QUIC long header (first byte 0xC0) and a short header (0x40).
    for d in [&[0xC0u8, 0, 0, 0, 1][..], &[0x40, 1, 2, 3]] {
        let e = b.handle_input(addr(A), addr(B), d, now).unwrap_err();
        assert!(e.is_not_stun(), "{e:?}");
    }
    let e = b
        .handle_input(addr(A), addr(B), &[0, 1, 0, 0], now)
        .unwrap_err();
    assert!(matches!(e, InputError::Wire(WireError::Malformed(_))));
    assert!(!e.is_not_stun());
}

#[test]
fn ice_restart_renews_credentials() {
    let now = Instant::now();
    let (mut a, mut b) = pair(None, now);
    let old = a.local_credentials().clone();
    let new = a.restart().clone();
    assert_ne!(old.ufrag, new.ufrag);
    assert_ne!(old.pwd, new.pwd);
    assert!(a.remote_credentials().is_none());
    assert!(a.remote_candidates().is_empty());
    assert!(a.check_list().is_empty());
    // B still holds A's old credentials: its checks no longer authenticate.
    b.handle_timeout(now);
    let t = b.poll_transmit().unwrap();
    assert_eq!(
        a.handle_input(t.from, t.to, &t.payload, now),
        Err(InputError::UnknownUsername)
    );
}

fn stun_like(body: Vec<u8>, first: u8, method_low: u8) -> Vec<u8> {
    // A plausible STUN header with a matching length, so the fuzzer gets
    // past the header checks into the attribute walker.
    let len = (body.len() / 4 * 4) as u16;
    let mut m = vec![first, method_low, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    m[2..4].copy_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&[7u8; 12]);
    m.extend_from_slice(&body[..len as usize]);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let now = Instant::now();
        let (mut a, mut b) = pair(None, now);
        a.handle_timeout(now);
        let _ = a.handle_input(addr(B), addr(A), &bytes, now);
        let _ = b.handle_input(addr(A), addr(B), &bytes, now);
        // The agents still work afterwards.
        b.handle_timeout(now);
        prop_assert!(b.poll_transmit().is_some());
    }

    #[test]
    fn stun_shaped_garbage_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        class in 0usize..4,
    ) {
        let now = Instant::now();
        let (mut a, mut b) = pair(None, now);
        a.handle_timeout(now);
        // Binding request, indication, success and error types (RFC 8489 §5).
        let t = [0x0001u16, 0x0011, 0x0101, 0x0111][class].to_be_bytes();
        let m = stun_like(body, t[0], t[1]);
        let _ = a.handle_input(addr(B), addr(A), &m, now);
        let _ = b.handle_input(addr(A), addr(B), &m, now);
    }

    #[test]
    fn corrupted_checks_and_answers_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = pair(None, now);
        let t = first_check(&mut a, now);
        let mut check = t.payload.clone();
        for (i, x) in &flips {
            let n = check.len();
            check[i % n] ^= x;
        }
        let _ = b.handle_input(t.from, t.to, &check, now);
        let _ = b.handle_input(t.from, t.to, &check[..cut % (check.len() + 1)], now);
        // A genuine check, then a corrupted answer to it.
        b.handle_input(t.from, t.to, &t.payload, now).unwrap();
        let r = std::iter::from_fn(|| b.poll_transmit())
            .find(|r| r.to == addr(A) && r.payload.len() > 20 && r.payload[0] == 0x01)
            .expect("an answer");
        let mut answer = r.payload.clone();
        for (i, x) in &flips {
            let n = answer.len();
            answer[i % n] ^= x;
        }
        let _ = a.handle_input(r.from, r.to, &answer, now);
        let _ = a.handle_input(r.from, r.to, &answer[..cut % (answer.len() + 1)], now);
        a.handle_timeout(now + Duration::from_secs(1));
    }
}

#[test]
fn no_pair_at_all_fails_once_both_sides_are_done() {
    let now = Instant::now();
    let mut a = Agent::new(
        Config {
            seed: Some(5),
            ..Config::default()
        },
        now,
    );
    a.add_local_candidate(Candidate::host(addr(A), 65535))
        .unwrap();
    a.set_remote_credentials("abcd", "0123456789012345678901")
        .unwrap();
    // IPv6 only on the other side: nothing pairs with IPv4 (RFC 8445 §6.1.2.2).
    let r = Candidate::host(addr("[2001:db8::2]:2000"), 65535);
    a.add_remote_candidate(r).unwrap();
    a.end_of_remote_candidates();
    assert!(a.check_list().is_empty());
    a.handle_timeout(now);
    assert_eq!(a.poll_event(), None, "more local candidates may come");
    a.end_of_local_candidates();
    // RFC 8863 §3: not before the PAC timer runs out (a check from the peer
    // could still teach a peer-reflexive candidate of our family).
    assert_eq!(a.poll_event(), None);
    let pac = Config::default().pac_timeout;
    assert_eq!(a.poll_timeout(), Some(now + pac));
    a.handle_timeout(now + pac);
    assert_eq!(a.poll_event(), Some(natkit_ice::Event::Failed(vec![])));
    assert_eq!(a.state(), natkit_ice::IceState::Failed);
    let failure = a.failure().unwrap();
    assert_eq!(failure.reason, natkit_ice::FailureReason::NoCheckArrived);
    assert_eq!(failure.unpaired_remote.len(), 1);
    assert!(
        failure
            .to_string()
            .ends_with("no local base of the family of: [2001:db8::2]:2000"),
        "{failure}"
    );
}

#[test]
fn bad_candidates_are_refused() {
    use natkit_ice::{CandidateError, CandidateKind};
    let now = Instant::now();
    let (mut a, _) = pair(None, now);
    let ok = Candidate::remote(CandidateKind::Host, addr("192.0.2.50:1"), 100, "f1");
    let mut bad = ok.clone();
    bad.foundation = "no spaces".into();
    assert_eq!(
        a.add_remote_candidate(bad),
        Err(CandidateError::BadFoundation)
    );
    let mut bad = ok.clone();
    bad.priority = 0;
    assert_eq!(
        a.add_remote_candidate(bad),
        Err(CandidateError::BadPriority)
    );
    let mut bad = ok.clone();
    bad.addr = addr("0.0.0.0:1");
    assert_eq!(a.add_remote_candidate(bad), Err(CandidateError::BadAddress));
    assert_eq!(a.add_remote_candidate(ok.clone()), Ok(()));
    assert_eq!(a.add_remote_candidate(ok), Err(CandidateError::Duplicate));
    // Local peer-reflexive candidates are learned, never given.
    let mut prflx = Candidate::host(addr("192.0.2.60:1"), 1);
    prflx.kind = CandidateKind::PeerReflexive;
    assert_eq!(a.add_local_candidate(prflx), Err(CandidateError::BadKind));
    assert_eq!(
        a.add_local_candidate(Candidate::host(addr(A), 1)),
        Err(CandidateError::Duplicate)
    );
}

/// RFC 8838 §11.4: a candidate signalled after its address was learned as
/// peer-reflexive (through one base) replaces it and is paired with every
/// base, not only the one the check arrived on.
#[test]
fn a_signalled_candidate_replacing_a_prflx_pairs_with_every_base() {
    let now = Instant::now();
    let mut a = Agent::new(
        Config {
            role: Role::Controlling,
            seed: Some(1),
            ..Config::default()
        },
        now,
    );
    a.add_local_candidate(Candidate::host(addr(A), 65535))
        .unwrap();
    let mut b = Agent::new(
        Config {
            role: Role::Controlled,
            seed: Some(2),
            ..Config::default()
        },
        now,
    );
    let (b1, b2) = (addr(B), addr("198.51.100.3:3000"));
    b.add_local_candidate(Candidate::host(b1, 65535)).unwrap();
    b.add_local_candidate(Candidate::host(b2, 65000)).unwrap();
    let (ca, cb) = (a.local_credentials().clone(), b.local_credentials().clone());
    a.set_remote_credentials(&cb.ufrag, &cb.pwd).unwrap();
    b.set_remote_credentials(&ca.ufrag, &ca.pwd).unwrap();
    // A knows only B's first base; B knows nothing of A yet.
    let r = Candidate::host(b1, 65535);
    a.add_remote_candidate(Candidate::remote(r.kind, r.addr, r.priority, &r.foundation))
        .unwrap();
    let t = first_check(&mut a, now);
    b.handle_input(t.from, t.to, &t.payload, now).unwrap();
    let learned: Vec<_> = b
        .check_list()
        .iter()
        .map(|p| (p.local.base, p.remote.addr))
        .collect();
    assert_eq!(
        learned,
        vec![(b1, addr(A))],
        "prflx paired with the base it came on"
    );
    // Now A's host candidate is signalled.
    let h = Candidate::host(addr(A), 65535);
    b.add_remote_candidate(Candidate::remote(h.kind, h.addr, h.priority, &h.foundation))
        .unwrap();
    let mut pairs: Vec<_> = b
        .check_list()
        .iter()
        .map(|p| (p.local.base, p.remote.addr))
        .collect();
    pairs.sort();
    assert_eq!(pairs, vec![(b1, addr(A)), (b2, addr(A))]);
    assert!(b
        .remote_candidates()
        .iter()
        .all(|c| c.kind == natkit_ice::CandidateKind::Host));
}
