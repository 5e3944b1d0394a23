//! The agent's checks and answers, read and written with natkit-proto
//! directly (not through the agent's own parser), against RFC 8445 §7.

use std::net::SocketAddr;
use std::time::Instant;

use natkit_ice::{Agent, Candidate, CandidateKind, Config, Role};
use natkit_proto::integrity;
use natkit_proto::raw::{self, attr, method, Attributes, Class};
use natkit_proto::writer::Writer;

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

fn attrs(msg: &[u8]) -> (raw::Header, Vec<(u16, Vec<u8>)>) {
    let h = raw::parse_datagram(msg).unwrap();
    let v = Attributes::new(msg, &h)
        .map(|a| {
            let a = a.unwrap();
            (a.typ, a.value.to_vec())
        })
        .collect();
    (h, v)
}

#[test]
fn checks_carry_the_rfc_8445_attributes() {
    let now = Instant::now();
    let mut a = agent(Role::Controlling, 1, A, B, now);
    a.set_remote_credentials("BBBBufrag", "bbbbbbbbbbbbbbbbbbbbbbbbbbbb")
        .unwrap();
    a.handle_timeout(now);
    let t = a.poll_transmit().unwrap();
    let (h, v) = attrs(&t.payload);
    assert_eq!(h.method(), method::BINDING);
    assert_eq!(h.class(), Class::Request);
    let types: Vec<u16> = v.iter().map(|(t, _)| *t).collect();
    // USERNAME, PRIORITY, ICE-CONTROLLING, then MESSAGE-INTEGRITY and
    // FINGERPRINT last (RFC 8445 §7.1, RFC 8489 §14.5, §14.7).
    assert_eq!(
        types,
        [
            attr::USERNAME,
            attr::PRIORITY,
            attr::ICE_CONTROLLING,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    let username = String::from_utf8(v[0].1.clone()).unwrap();
    assert_eq!(
        username,
        format!("BBBBufrag:{}", a.local_credentials().ufrag)
    );
    // PRIORITY: a peer-reflexive priority with the base's local preference
    // (RFC 8445 §7.1.1).
    let prio = u32::from_be_bytes(v[1].1.clone().try_into().unwrap());
    assert_eq!(
        prio,
        natkit_ice::candidate::candidate_priority(CandidateKind::PeerReflexive, 65535)
    );
    assert_eq!(v[2].1.len(), 8);
    // Short-term credentials: keyed with the peer's password.
    assert!(integrity::verify(&t.payload, &h, b"bbbbbbbbbbbbbbbbbbbbbbbbbbbb").is_ok());
    assert_eq!(integrity::check_fingerprint(&t.payload, &h), Ok(true));
}

/// A check written by hand, as another ICE implementation would send it.
fn foreign_check(b: &Agent, extra: Option<u16>, tid: [u8; 12]) -> Vec<u8> {
    foreign_check_tb(b, extra, tid, 42)
}

fn foreign_check_tb(b: &Agent, extra: Option<u16>, tid: [u8; 12], tiebreaker: u64) -> Vec<u8> {
    let creds = b.local_credentials();
    let mut buf = vec![0u8; 512];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).unwrap();
    w.bytes(
        attr::USERNAME,
        format!("{}:AAAAufrag", creds.ufrag).as_bytes(),
    )
    .unwrap();
    w.u32(attr::PRIORITY, 1862270975).unwrap();
    w.u64(attr::ICE_CONTROLLING, tiebreaker).unwrap();
    if let Some(t) = extra {
        w.u32(t, 0).unwrap();
    }
    w.message_integrity(creds.pwd.as_bytes()).unwrap();
    let n = w.fingerprint().unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn answers_carry_xor_mapped_address_and_integrity() {
    let now = Instant::now();
    let mut b = agent(Role::Controlled, 2, B, A, now);
    // A source nobody signalled: answered all the same, and learned as a
    // peer-reflexive candidate with the check's PRIORITY (RFC 8445 §7.3.1.3).
    let src = addr("203.0.113.9:4444");
    let tid = [9u8; 12];
    b.handle_input(src, addr(B), &foreign_check(&b, None, tid), now)
        .unwrap();
    let r = b.poll_transmit().unwrap();
    assert_eq!((r.from, r.to), (addr(B), src));
    let (h, v) = attrs(&r.payload);
    assert_eq!(h.class(), Class::Success);
    assert_eq!(h.transaction_id, tid);
    assert_eq!(v[0].0, attr::XOR_MAPPED_ADDRESS);
    assert_eq!(raw::decode_xor_address(&v[0].1, &tid), Some(src));
    // Signed with B's own password (RFC 8445 §7.3.1.2).
    assert!(integrity::verify(&r.payload, &h, b.local_credentials().pwd.as_bytes()).is_ok());
    assert_eq!(integrity::check_fingerprint(&r.payload, &h), Ok(true));
    let prflx = b
        .remote_candidates()
        .iter()
        .find(|c| c.addr == src)
        .unwrap();
    assert_eq!(prflx.kind, CandidateKind::PeerReflexive);
    assert_eq!(prflx.priority, 1862270975);
}

#[test]
fn unknown_comprehension_required_attributes_get_420() {
    let now = Instant::now();
    let mut b = agent(Role::Controlled, 2, B, A, now);
    let tid = [3u8; 12];
    b.handle_input(addr(A), addr(B), &foreign_check(&b, Some(0x0031), tid), now)
        .unwrap();
    let r = b.poll_transmit().unwrap();
    let (h, v) = attrs(&r.payload);
    assert_eq!(h.class(), Class::Error);
    assert_eq!(raw::decode_error_code(&v[0].1), Some(420));
    assert_eq!(v[1], (attr::UNKNOWN_ATTRIBUTES, vec![0x00, 0x31]));
    // Comprehension-optional ones are ignored (RFC 8489 §14).
    b.handle_input(addr(A), addr(B), &foreign_check(&b, Some(0x8031), tid), now)
        .unwrap();
    let (h, _) = attrs(&b.poll_transmit().unwrap().payload);
    assert_eq!(h.class(), Class::Success);
}

#[test]
fn role_conflict_is_answered_with_487_by_the_higher_tiebreaker() {
    let now = Instant::now();
    // A controlling B receives ICE-CONTROLLING 42 (foreign_check); B's
    // random 64-bit tie-breaker is almost surely larger, so B keeps its
    // role and answers 487 (RFC 8445 §7.3.1.1).
    let mut b = agent(Role::Controlling, 2, B, A, now);
    b.handle_input(addr(A), addr(B), &foreign_check(&b, None, [4; 12]), now)
        .unwrap();
    let (h, v) = attrs(&b.poll_transmit().unwrap().payload);
    assert_eq!(h.class(), Class::Error);
    assert_eq!(raw::decode_error_code(&v[0].1), Some(487));
    assert_eq!(b.role(), Role::Controlling);
    assert_eq!(b.poll_event(), None);
}

#[test]
fn role_conflict_with_a_higher_peer_tiebreaker_switches_role() {
    let now = Instant::now();
    let mut b = agent(Role::Controlling, 2, B, A, now);
    let check = foreign_check_tb(&b, None, [5; 12], u64::MAX);
    b.handle_input(addr(A), addr(B), &check, now).unwrap();
    let (h, _) = attrs(&b.poll_transmit().unwrap().payload);
    assert_eq!(h.class(), Class::Success);
    assert_eq!(b.role(), Role::Controlled);
    assert_eq!(
        b.poll_event(),
        Some(natkit_ice::Event::RoleChanged(Role::Controlled))
    );
}
