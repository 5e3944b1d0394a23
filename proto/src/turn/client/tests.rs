//! The client against a scripted fake server: no sockets, a simulated clock.

use super::*;
use crate::integrity::IntegrityKind;
use crate::raw::{attr, parse_datagram, Attributes};
use crate::writer::Writer;

const REALM: &str = "natkit";
const USER: &str = "alice";
const PASS: &str = "secret";

fn server() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}
fn relayed() -> SocketAddr {
    "192.0.2.1:50000".parse().unwrap()
}
fn mapped() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}
fn peer(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([203, 0, 113, n]), port)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(transport: Transport) -> Config {
    Config::new(server(), transport, Credentials::new(USER, PASS))
}

/// A request the client sent, taken apart.
struct Req {
    bytes: Vec<u8>,
    header: Header,
}

impl Req {
    fn new(t: Transmit) -> Self {
        Req::at(t, server())
    }
    /// A request that must go to `server`.
    fn at(t: Transmit, server: SocketAddr) -> Self {
        assert_eq!(t.to, server);
        let header = parse_datagram(&t.payload).expect("client sends well-formed STUN");
        assert_eq!(header.class(), Class::Request);
        assert_eq!(
            integrity::check_fingerprint(&t.payload, &header),
            Ok(true),
            "requests carry FINGERPRINT"
        );
        Req {
            bytes: t.payload,
            header,
        }
    }
    fn method(&self) -> u16 {
        self.header.method()
    }
    fn tid(&self) -> [u8; 12] {
        self.header.transaction_id
    }
    fn all(&self, typ: u16) -> Vec<Vec<u8>> {
        Attributes::new(&self.bytes, &self.header)
            .map(|a| a.unwrap())
            .filter(|a| a.typ == typ)
            .map(|a| a.value.to_vec())
            .collect()
    }
    fn get(&self, typ: u16) -> Option<Vec<u8>> {
        self.all(typ).into_iter().next()
    }
    fn peers(&self) -> Vec<SocketAddr> {
        self.all(attr::XOR_PEER_ADDRESS)
            .iter()
            .map(|v| raw::decode_xor_address(v, &self.tid()).unwrap())
            .collect()
    }
    fn lifetime(&self) -> Option<u32> {
        self.get(attr::LIFETIME)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }
}

/// The server side: nonce, password algorithm offer, and response writers.
struct Fake {
    nonce: String,
    offer_sha256: bool,
}

impl Fake {
    fn md5() -> Self {
        Fake {
            nonce: "nonce-1".into(),
            offer_sha256: false,
        }
    }

    fn key(&self, alg: PasswordAlgorithm) -> LongTermKey {
        LongTermKey::derive(alg, USER, REALM, PASS)
    }

    fn algorithms_value(&self) -> Vec<u8> {
        // MD5 and SHA-256, each with no parameters (RFC 8489 §14.11).
        vec![0, 1, 0, 0, 0, 2, 0, 0]
    }

    /// Check the request's credentials as a server would; returns the key.
    fn check_auth(&self, r: &Req) -> LongTermKey {
        assert_eq!(r.get(attr::USERNAME).unwrap(), USER.as_bytes());
        assert_eq!(r.get(attr::REALM).unwrap(), REALM.as_bytes());
        assert_eq!(r.get(attr::NONCE).unwrap(), self.nonce.as_bytes());
        let alg = if self.offer_sha256 {
            assert_eq!(
                r.get(attr::PASSWORD_ALGORITHMS).unwrap(),
                self.algorithms_value()
            );
            assert_eq!(r.get(attr::PASSWORD_ALGORITHM).unwrap(), vec![0, 2, 0, 0]);
            PasswordAlgorithm::Sha256
        } else {
            assert_eq!(r.get(attr::PASSWORD_ALGORITHM), None);
            PasswordAlgorithm::Md5
        };
        let key = self.key(alg);
        let kind = integrity::verify(&r.bytes, &r.header, key.as_bytes()).unwrap();
        assert_eq!(
            kind,
            if self.offer_sha256 {
                IntegrityKind::Sha256
            } else {
                IntegrityKind::Sha1
            }
        );
        key
    }

    fn respond(
        &self,
        r: &Req,
        class: Class,
        key: Option<&LongTermKey>,
        fill: impl FnOnce(&mut Writer),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut w = Writer::new(&mut buf, r.method(), class, &r.tid()).unwrap();
        fill(&mut w);
        if let Some(k) = key {
            if self.offer_sha256 {
                w.message_integrity_sha256(k.as_bytes()).unwrap();
            } else {
                w.message_integrity(k.as_bytes()).unwrap();
            }
        }
        let n = w.fingerprint().unwrap();
        buf.truncate(n);
        buf
    }

    fn unauthorized(&self, r: &Req) -> Vec<u8> {
        self.respond(r, Class::Error, None, |w| {
            w.error_code(401, "").unwrap();
            w.bytes(attr::REALM, REALM.as_bytes()).unwrap();
            w.bytes(attr::NONCE, self.nonce.as_bytes()).unwrap();
            if self.offer_sha256 {
                w.bytes(attr::PASSWORD_ALGORITHMS, &self.algorithms_value())
                    .unwrap();
            }
        })
    }

    fn stale(&mut self, r: &Req, new_nonce: &str) -> Vec<u8> {
        self.nonce = new_nonce.into();
        self.respond(r, Class::Error, None, |w| {
            w.error_code(438, "").unwrap();
            w.bytes(attr::REALM, REALM.as_bytes()).unwrap();
            w.bytes(attr::NONCE, new_nonce.as_bytes()).unwrap();
        })
    }

    fn error(&self, r: &Req, code: u16, key: Option<&LongTermKey>) -> Vec<u8> {
        self.respond(r, Class::Error, key, |w| w.error_code(code, "").unwrap())
    }

    fn allocate_ok(
        &self,
        r: &Req,
        key: &LongTermKey,
        relayed: &[SocketAddr],
        lifetime: u32,
    ) -> Vec<u8> {
        self.respond(r, Class::Success, Some(key), |w| {
            for a in relayed {
                w.xor_address(attr::XOR_RELAYED_ADDRESS, *a).unwrap();
            }
            w.xor_address(attr::XOR_MAPPED_ADDRESS, mapped()).unwrap();
            w.u32(attr::LIFETIME, lifetime).unwrap();
        })
    }

    fn ok(&self, r: &Req, key: &LongTermKey) -> Vec<u8> {
        self.respond(r, Class::Success, Some(key), |_| {})
    }

    fn refresh_ok(&self, r: &Req, key: &LongTermKey, lifetime: u32) -> Vec<u8> {
        self.respond(r, Class::Success, Some(key), |w| {
            w.u32(attr::LIFETIME, lifetime).unwrap()
        })
    }
}

fn next_req(c: &mut Client) -> Req {
    Req::new(c.poll_transmit().expect("a request to send"))
}

fn events(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// The client's events are exactly one [`Event::ChannelBound`].
fn assert_bound(c: &mut Client, peer: SocketAddr, channel: u16) {
    assert_eq!(events(c), vec![Event::ChannelBound { peer, channel }]);
}

/// Allocate through the 401 dance; returns the client, the key and t0.
fn allocated(fake: &Fake, cfg: Config) -> (Client, LongTermKey, Instant) {
    let t0 = Instant::now();
    let mut c = Client::new(cfg, t0);
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::ALLOCATE);
    assert_eq!(
        r.get(attr::USERNAME),
        None,
        "first Allocate has no credentials"
    );
    assert_eq!(r.get(attr::REQUESTED_TRANSPORT), Some(vec![17, 0, 0, 0]));
    c.handle_input(&fake.unauthorized(&r), t0);
    let r2 = next_req(&mut c);
    assert_ne!(r2.tid(), r.tid(), "a new transaction after the 401");
    let key = fake.check_auth(&r2);
    c.handle_input(&fake.allocate_ok(&r2, &key, &[relayed()], 600), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Allocated {
            relayed: vec![relayed()],
            mapped: mapped(),
            lifetime: secs(600),
        }]
    );
    assert_eq!(c.state(), State::Allocated);
    assert!(c.poll_transmit().is_none());
    (c, key, t0)
}

#[test]
fn allocate_with_md5_when_no_algorithms_are_offered() {
    let (c, _, t0) = allocated(&Fake::md5(), config(Transport::Udp));
    assert_eq!(c.relayed_addresses(), &[relayed()]);
    assert_eq!(c.mapped_address(), Some(mapped()));
    // Refresh at 75 % of 600 s.
    assert_eq!(c.poll_timeout(), Some(t0 + secs(450)));
}

#[test]
fn allocate_with_sha256_when_offered() {
    let fake = Fake {
        nonce: "obMatJos2gAAAxyz".into(),
        offer_sha256: true,
    };
    let (c, _, _) = allocated(&fake, config(Transport::Udp));
    assert_eq!(c.authentication(), Some((REALM, PasswordAlgorithm::Sha256)));
    let (c, _, _) = allocated(&Fake::md5(), config(Transport::Udp));
    assert_eq!(c.authentication(), Some((REALM, PasswordAlgorithm::Md5)));
    assert_eq!(
        Client::new(config(Transport::Udp), Instant::now()).authentication(),
        None,
        "nothing is known before the 401"
    );
}

#[test]
fn allocate_request_carries_configured_options() {
    let mut cfg = config(Transport::Udp);
    cfg.family = AddressFamily::Dual;
    cfg.lifetime = Some(secs(1200));
    cfg.dont_fragment = true;
    cfg.port = Some(PortRequest::EvenPort { reserve_next: true });
    let fake = Fake::md5();
    let t0 = Instant::now();
    let mut c = Client::new(cfg, t0);
    let r = next_req(&mut c);
    assert_eq!(
        r.get(attr::ADDITIONAL_ADDRESS_FAMILY),
        Some(vec![2, 0, 0, 0])
    );
    assert_eq!(r.get(attr::REQUESTED_ADDRESS_FAMILY), None);
    assert_eq!(r.lifetime(), Some(1200));
    assert_eq!(r.get(attr::DONT_FRAGMENT), Some(vec![]));
    assert_eq!(r.get(attr::EVEN_PORT), Some(vec![0x80]));
    c.handle_input(&fake.unauthorized(&r), t0);
    let r = next_req(&mut c);
    let key = fake.check_auth(&r);
    let v6: SocketAddr = "[2001:db8::1]:50002".parse().unwrap();
    let ok = fake.respond(&r, Class::Success, Some(&key), |w| {
        w.xor_address(attr::XOR_RELAYED_ADDRESS, relayed()).unwrap();
        w.xor_address(attr::XOR_RELAYED_ADDRESS, v6).unwrap();
        w.xor_address(attr::XOR_MAPPED_ADDRESS, mapped()).unwrap();
        w.u32(attr::LIFETIME, 1200).unwrap();
        w.u64(attr::RESERVATION_TOKEN, 0xABCD).unwrap();
    });
    c.handle_input(&ok, t0);
    assert!(matches!(&events(&mut c)[..], [Event::Allocated { relayed: r, .. }] if r.len() == 2));
    assert_eq!(
        c.relayed_address_for("[2001:db8::9]:1".parse().unwrap()),
        Some(v6)
    );
    assert_eq!(c.reservation_token(), Some(0xABCD));

    let mut cfg = config(Transport::Udp);
    cfg.family = AddressFamily::V6;
    cfg.port = Some(PortRequest::ReservationToken(7));
    let mut c = Client::new(cfg, t0);
    let r = next_req(&mut c);
    assert_eq!(
        r.get(attr::REQUESTED_ADDRESS_FAMILY),
        Some(vec![2, 0, 0, 0])
    );
    assert_eq!(
        r.get(attr::RESERVATION_TOKEN),
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(r.get(attr::EVEN_PORT), None);
}

#[test]
fn stale_nonce_is_retried_three_times_then_fails() {
    for stale_answers in [3u8, 4] {
        let mut fake = Fake::md5();
        let t0 = Instant::now();
        let mut c = Client::new(config(Transport::Udp), t0);
        let r = next_req(&mut c);
        c.handle_input(&fake.unauthorized(&r), t0);
        for i in 0..stale_answers {
            let r = next_req(&mut c);
            fake.check_auth(&r);
            let nonce = format!("nonce-{}", i + 2);
            c.handle_input(&fake.stale(&r, &nonce), t0);
        }
        if stale_answers == 3 {
            let r = next_req(&mut c);
            let key = fake.check_auth(&r);
            assert_eq!(r.get(attr::NONCE).unwrap(), b"nonce-4");
            c.handle_input(&fake.allocate_ok(&r, &key, &[relayed()], 600), t0);
            assert!(matches!(&events(&mut c)[..], [Event::Allocated { .. }]));
        } else {
            assert!(c.poll_transmit().is_none());
            assert_eq!(
                events(&mut c),
                vec![Event::Failed(ClientError::StaleNonceLoop { attempts: 4 })]
            );
            assert_eq!(c.state(), State::Failed);
            assert_eq!(c.poll_timeout(), None);
        }
    }
}

#[test]
fn wrong_password_is_reported_after_the_second_401() {
    let fake = Fake::md5();
    let t0 = Instant::now();
    let mut cfg = config(Transport::Udp);
    cfg.credentials = Credentials::new(USER, "not the password");
    let mut c = Client::new(cfg, t0);
    let r = next_req(&mut c);
    c.handle_input(&fake.unauthorized(&r), t0);
    let r = next_req(&mut c);
    // The fake server sees a bad MESSAGE-INTEGRITY.
    assert!(integrity::verify(
        &r.bytes,
        &r.header,
        fake.key(PasswordAlgorithm::Md5).as_bytes()
    )
    .is_err());
    c.handle_input(&fake.unauthorized(&r), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(ClientError::WrongCredentials)]
    );
    assert!(c.poll_transmit().is_none());
    assert!(format!("{:?}", c.config().credentials).contains("<redacted>"));
}

/// A client whose Allocate got the 401 and went again with credentials:
/// the client, that request (unanswered), its key and t0.
fn signed_allocate(fake: &Fake) -> (Client, Req, LongTermKey, Instant) {
    let t0 = Instant::now();
    let mut c = Client::new(config(Transport::Udp), t0);
    let r = next_req(&mut c);
    c.handle_input(&fake.unauthorized(&r), t0);
    let r = next_req(&mut c);
    let key = fake.check_auth(&r);
    (c, r, key, t0)
}

#[test]
fn allocate_error_codes_map_to_distinct_errors() {
    for (code, want) in [
        (486, ClientError::QuotaReached),
        (508, ClientError::InsufficientCapacity),
        (442, ClientError::UnsupportedTransport),
        (440, ClientError::AddressFamilyNotSupported),
        (437, ClientError::AllocationMismatch),
        (403, ClientError::Forbidden),
        (500, ClientError::Other(500)),
    ] {
        let fake = Fake::md5();
        let (mut c, r, key, t0) = signed_allocate(&fake);
        c.handle_input(&fake.error(&r, code, Some(&key)), t0);
        assert_eq!(events(&mut c), vec![Event::Failed(want)], "code {code}");
    }
}

/// RFC 8489 §10: a signed 300 sends the Allocate to the alternate, with a
/// fresh authentication; a second 300 is an error naming both servers; an
/// unsigned one is ignored.
#[test]
fn try_alternate_is_followed_once() {
    let alt: SocketAddr = "192.0.2.2:3478".parse().unwrap();
    let third: SocketAddr = "192.0.2.3:3478".parse().unwrap();
    let fake = Fake::md5();
    let (mut c, r, key, t0) = signed_allocate(&fake);
    let try_alternate = |r: &Req, to: SocketAddr, key: Option<&LongTermKey>| {
        fake.respond(r, Class::Error, key, |w| {
            w.error_code(300, "Try Alternate").unwrap();
            w.address(attr::ALTERNATE_SERVER, to).unwrap();
            w.bytes(attr::ALTERNATE_DOMAIN, b"turn2.example.test")
                .unwrap();
        })
    };
    // Unsigned: anyone who saw the transaction ID could have sent it.
    c.handle_input(&try_alternate(&r, alt, None), t0);
    assert_eq!(c.stats().forged, 1);
    assert!(events(&mut c).is_empty());
    c.handle_input(&try_alternate(&r, alt, Some(&key)), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Redirected {
            from: server(),
            to: alt,
            domain: Some("turn2.example.test".into()),
        }]
    );
    assert_eq!(c.server(), alt);
    assert_eq!(c.state(), State::Allocating);
    // The alternate gets an Allocate without credentials: its realm and
    // nonce are its own.
    let r = Req::at(c.poll_transmit().unwrap(), alt);
    assert_eq!(r.method(), method::ALLOCATE);
    assert_eq!(r.get(attr::USERNAME), None);
    c.handle_input(&fake.unauthorized(&r), t0);
    let r = Req::at(c.poll_transmit().unwrap(), alt);
    let key = fake.check_auth(&r);
    c.handle_input(&try_alternate(&r, third, Some(&key)), t0);
    let ev = events(&mut c);
    assert_eq!(
        ev,
        vec![Event::Failed(ClientError::RedirectLoop {
            first: server(),
            second: alt,
        })]
    );
    let Event::Failed(e) = &ev[0] else {
        unreachable!()
    };
    let msg = e.to_string();
    assert!(
        msg.contains("192.0.2.1:3478") && msg.contains("192.0.2.2:3478"),
        "{msg}"
    );
    assert_eq!(c.state(), State::Failed);
    assert!(c.poll_transmit().is_none());
}

/// RFC 6062: a TCP allocation asks for protocol 6, Connect gives a
/// CONNECTION-ID (or 446/447), ConnectionAttempt indications become
/// events, and a data connection's ConnectionBind is signed, retried once
/// with the nonce a 438 brings, and ends Bound.
#[test]
fn tcp_allocations_connect_accept_and_bind() {
    let fake = Fake::md5();
    let t0 = Instant::now();
    let mut cfg = config(Transport::Tcp);
    cfg.relayed = RelayedTransport::Tcp;
    let mut c = Client::new(cfg, t0);
    let r = next_req(&mut c);
    assert_eq!(r.get(attr::REQUESTED_TRANSPORT), Some(vec![6, 0, 0, 0]));
    c.handle_input(&fake.unauthorized(&r), t0);
    let r = next_req(&mut c);
    let key = fake.check_auth(&r);
    c.handle_input(&fake.allocate_ok(&r, &key, &[relayed()], 600), t0);
    assert!(matches!(events(&mut c)[..], [Event::Allocated { .. }]));

    // Connect: the peer in XOR-PEER-ADDRESS; success carries CONNECTION-ID.
    let p = peer(1, 8080);
    c.connect(p, t0).unwrap();
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::CONNECT);
    assert_eq!(r.peers(), vec![p]);
    fake.check_auth(&r);
    let ok = fake.respond(&r, Class::Success, Some(&key), |w| {
        w.u32(attr::CONNECTION_ID, 0x1234).unwrap()
    });
    c.handle_input(&ok, t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Connected {
            peer: p,
            connection_id: 0x1234
        }]
    );
    for (code, want) in [
        (446, ClientError::ConnectionAlreadyExists),
        (447, ClientError::ConnectionFailed),
        (403, ClientError::Forbidden),
    ] {
        c.connect(p, t0).unwrap();
        let r = next_req(&mut c);
        c.handle_input(&fake.error(&r, code, Some(&key)), t0);
        assert_eq!(
            events(&mut c),
            vec![Event::ConnectFailed {
                peer: p,
                error: want
            }]
        );
    }
    assert_eq!(
        c.state(),
        State::Allocated,
        "a failed Connect keeps the allocation"
    );

    // A peer connecting in: a ConnectionAttempt indication.
    let mut buf = vec![0u8; 256];
    let mut w = Writer::new(
        &mut buf,
        method::CONNECTION_ATTEMPT,
        Class::Indication,
        &[9; 12],
    )
    .unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, peer(2, 4000))
        .unwrap();
    w.u32(attr::CONNECTION_ID, 77).unwrap();
    let n = w.fingerprint().unwrap();
    assert!(c.recv(&buf[..n], t0).is_none());
    assert_eq!(
        events(&mut c),
        vec![Event::ConnectionAttempt {
            peer: peer(2, 4000),
            connection_id: 77
        }]
    );

    // The data connection: ConnectionBind with CONNECTION-ID, signed.
    let mut b = c.connection_bind(77).unwrap();
    let req = |b: &ConnectionBind| {
        let h = parse_datagram(b.request()).unwrap();
        Req {
            bytes: b.request().to_vec(),
            header: h,
        }
    };
    let r = req(&b);
    assert_eq!(r.method(), method::CONNECTION_BIND);
    assert_eq!(
        r.get(attr::CONNECTION_ID),
        Some(77u32.to_be_bytes().to_vec())
    );
    fake.check_auth(&r);
    // Another 5-tuple: the server wants its own nonce; one retry.
    let mut fake2 = Fake::md5();
    let stale = fake2.stale(&r, "nonce-for-the-data-connection");
    assert_eq!(b.handle_response(&stale), BindOutcome::Retry);
    let r2 = req(&b);
    assert_ne!(r2.tid(), r.tid());
    fake2.check_auth(&r2);
    // Answers to another transaction, or unsigned, are ignored.
    assert_eq!(b.handle_response(&fake.ok(&r, &key)), BindOutcome::Ignored);
    let unsigned = fake2.respond(&r2, Class::Success, None, |_| {});
    assert_eq!(b.handle_response(&unsigned), BindOutcome::Ignored);
    assert_eq!(b.handle_response(&fake2.ok(&r2, &key)), BindOutcome::Bound);
    // A second 438 is not retried; a 400 (unknown id) fails.
    let mut b = c.connection_bind(78).unwrap();
    let r = req(&b);
    assert_eq!(
        b.handle_response(&fake2.stale(&r, "n2")),
        BindOutcome::Retry
    );
    let r = req(&b);
    assert!(matches!(
        b.handle_response(&fake2.stale(&r, "n3")),
        BindOutcome::Failed(ClientError::StaleNonceLoop { .. })
    ));
    let mut b = c.connection_bind(79).unwrap();
    let r = req(&b);
    assert_eq!(
        b.handle_response(&fake.error(&r, 400, Some(&key))),
        BindOutcome::Failed(ClientError::Other(400))
    );
}

#[test]
fn tcp_calls_need_a_tcp_allocation() {
    let (mut c, _, t0) = allocated(&Fake::md5(), config(Transport::Udp));
    assert_eq!(
        c.connect(peer(1, 80), t0),
        Err(UsageError::NotTcpAllocation)
    );
    assert_eq!(
        c.connection_bind(1).err(),
        Some(UsageError::NotTcpAllocation)
    );
    let c = Client::new(config(Transport::Tcp), t0);
    assert_eq!(c.connection_bind(1).err(), Some(UsageError::NotAllocated));
}

#[test]
fn forged_and_malformed_responses_are_ignored() {
    let fake = Fake::md5();
    let (mut c, r, key, t0) = signed_allocate(&fake);
    let wrong = LongTermKey::derive(PasswordAlgorithm::Md5, USER, REALM, "guess");
    c.handle_input(&fake.allocate_ok(&r, &wrong, &[peer(9, 9)], 600), t0);
    // No integrity at all on a success is as bad as a wrong one.
    let unsigned = fake.respond(&r, Class::Success, None, |w| {
        w.xor_address(attr::XOR_RELAYED_ADDRESS, peer(9, 9))
            .unwrap();
    });
    c.handle_input(&unsigned, t0);
    // A forged error with a bad MAC is ignored too.
    c.handle_input(&fake.error(&r, 486, Some(&wrong)), t0);
    assert_eq!(c.stats().forged, 3);
    for junk in [
        &b""[..],
        b"\x00\x01",
        &[0xFF; 40],
        &r.bytes[..30],
        &[0x40, 0, 0, 9],
        &[0x40, 0, 0, 0],
    ] {
        c.handle_input(junk, t0);
    }
    // A corrupted FINGERPRINT.
    let mut bad = fake.allocate_ok(&r, &key, &[relayed()], 600);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    c.handle_input(&bad, t0);
    assert!(c.stats().malformed >= 3, "{:?}", c.stats());
    assert_eq!(c.stats().unknown_channel, 1);
    assert_eq!(c.state(), State::Allocating);
    assert!(events(&mut c).is_empty());
    c.handle_input(&fake.allocate_ok(&r, &key, &[relayed()], 600), t0);
    assert_eq!(c.state(), State::Allocated);
    // A late duplicate is a stray.
    c.handle_input(&fake.allocate_ok(&r, &key, &[relayed()], 600), t0);
    assert_eq!(c.stats().stray, 1);
}

#[test]
fn allocation_is_refreshed_at_three_quarters_of_its_lifetime() {
    let fake = Fake::md5();
    let mut cfg = config(Transport::Udp);
    cfg.lifetime = Some(secs(600));
    let (mut c, key, t0) = allocated(&fake, cfg);
    c.handle_timeout(t0 + secs(449));
    assert!(c.poll_transmit().is_none());
    let t1 = t0 + secs(450);
    c.handle_timeout(t1);
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::REFRESH);
    assert_eq!(r.lifetime(), Some(600));
    fake.check_auth(&r);
    // While the Refresh is in flight the next wake-up is its retransmission.
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_millis(500)));
    c.handle_input(&fake.refresh_ok(&r, &key, 300), t1);
    assert_eq!(
        events(&mut c),
        vec![Event::Refreshed {
            lifetime: secs(300)
        }]
    );
    assert_eq!(c.lifetime(), secs(300));
    assert_eq!(c.poll_timeout(), Some(t1 + secs(225)));
}

#[test]
fn refresh_now_probes_the_server_at_once_and_only_once() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let t1 = t0 + secs(10);
    c.refresh_now(t1);
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::REFRESH);
    fake.check_auth(&r);
    // A second call while the first is in flight sends nothing more.
    c.refresh_now(t1);
    assert!(c.poll_transmit().is_none());
    c.handle_input(&fake.refresh_ok(&r, &key, 600), t1);
    assert_eq!(
        events(&mut c),
        vec![Event::Refreshed {
            lifetime: secs(600)
        }]
    );
    // The schedule restarts from the answer.
    assert_eq!(c.poll_timeout(), Some(t1 + secs(450)));
}

#[test]
fn refresh_that_gets_no_answer_fails_the_allocation() {
    let fake = Fake::md5();
    let (mut c, _, t0) = allocated(&fake, config(Transport::Udp));
    let mut now = t0 + secs(450);
    c.handle_timeout(now);
    let mut sends = 0;
    while let Some(t) = c.poll_timeout() {
        while c.poll_transmit().is_some() {
            sends += 1;
        }
        now = t;
        c.handle_timeout(now);
    }
    assert_eq!(sends, 7);
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(ClientError::Timeout {
            waited: Duration::from_millis(39_500),
            attempts: 7
        })]
    );
}

#[test]
fn unreachable_server_times_out_per_transport() {
    for (transport, attempts) in [
        (Transport::Udp, 7),
        (Transport::Tcp, 1),
        (Transport::Tls, 1),
    ] {
        let t0 = Instant::now();
        let mut c = Client::new(config(transport), t0);
        let mut sends = 0;
        let mut now = t0;
        loop {
            while c.poll_transmit().is_some() {
                sends += 1;
            }
            let Some(t) = c.poll_timeout() else { break };
            now = t;
            c.handle_timeout(now);
        }
        assert_eq!(sends, attempts, "{transport:?}");
        // RFC 8489 §6.2.2: Ti = 39.5 s over streams too.
        let waited = Duration::from_millis(39_500);
        assert_eq!(now - t0, waited);
        assert_eq!(
            events(&mut c),
            vec![Event::Failed(ClientError::Timeout { waited, attempts })]
        );
    }
}

#[test]
fn permissions_are_batched_refreshed_and_can_fail() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let mut buf = [0u8; 256];
    assert_eq!(
        c.send_to(peer(1, 1000), b"x", &mut buf),
        Err(UsageError::NoPermission(peer(1, 1000)))
    );
    // Two peers on one IP need one permission.
    c.create_permissions(&[peer(1, 1000), peer(1, 2000), peer(2, 1000)], t0)
        .unwrap();
    let r = next_req(&mut c);
    assert!(c.poll_transmit().is_none(), "one batched request");
    assert_eq!(r.method(), method::CREATE_PERMISSION);
    assert_eq!(r.peers(), vec![peer(1, 1000), peer(2, 1000)]);
    fake.check_auth(&r);
    // Asking again while in flight sends nothing.
    c.create_permission(peer(2, 5), t0).unwrap();
    assert!(c.poll_transmit().is_none());
    assert!(!c.has_permission(peer(1, 1)));
    c.handle_input(&fake.ok(&r, &key), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::PermissionCreated {
            peers: vec![peer(1, 1000), peer(2, 1000)]
        }]
    );
    assert!(c.has_permission(peer(1, 7)));
    assert_eq!(c.poll_timeout(), Some(t0 + secs(240)));
    c.handle_timeout(t0 + secs(240));
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::CREATE_PERMISSION);
    assert_eq!(r.peers(), vec![peer(1, 1000), peer(2, 1000)]);
    // The relay now denies them: 403 drops both permissions.
    c.handle_input(&fake.error(&r, 403, Some(&key)), t0 + secs(240));
    assert_eq!(
        events(&mut c),
        vec![Event::PermissionFailed {
            peers: vec![peer(1, 1000), peer(2, 1000)],
            error: ClientError::Forbidden
        }]
    );
    assert!(!c.has_permission(peer(1, 1000)));
    assert_eq!(c.state(), State::Allocated);
    assert_eq!(c.poll_timeout(), Some(t0 + secs(450)));
    // A v6 peer on a v4-only allocation is refused locally (RFC 8656 §9.1, 443).
    let v6: SocketAddr = "[2001:db8::2]:5".parse().unwrap();
    assert_eq!(
        c.create_permission(v6, t0),
        Err(UsageError::FamilyNotRelayed(v6))
    );
}

#[test]
fn more_than_32_permissions_take_several_requests() {
    let fake = Fake::md5();
    let (mut c, _, t0) = allocated(&fake, config(Transport::Udp));
    let peers: Vec<SocketAddr> = (1..=40).map(|n| peer(n, 9)).collect();
    c.create_permissions(&peers, t0).unwrap();
    let sizes: Vec<usize> = std::iter::from_fn(|| c.poll_transmit())
        .map(|t| Req::new(t).peers().len())
        .collect();
    assert_eq!(sizes, vec![32, 8]);
}

#[test]
fn data_goes_by_send_indication_then_by_channel_both_ways() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(5, 7000);
    c.create_permission(p, t0).unwrap();
    let r = next_req(&mut c);
    c.handle_input(&fake.ok(&r, &key), t0);
    events(&mut c);

    // Out, without a channel: a Send indication.
    let mut buf = [0u8; 256];
    let n = c.send_to(p, b"hello", &mut buf).unwrap();
    let h = parse_datagram(&buf[..n]).unwrap();
    assert_eq!((h.method(), h.class()), (method::SEND, Class::Indication));
    assert_eq!(
        wire::parse_data_indication(&buf[..n], &h),
        Some((p, &b"hello"[..]))
    );
    assert_eq!(
        c.send_to(p, b"hello", &mut buf[..30]),
        Err(UsageError::BufferTooSmall)
    );

    // In: a Data indication.
    let mut data_ind = vec![0u8; 128];
    let mut w = Writer::new(&mut data_ind, method::DATA, Class::Indication, &[4; 12]).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, p).unwrap();
    w.bytes(attr::DATA, b"from peer").unwrap();
    let n = w.finish();
    c.handle_input(&data_ind[..n], t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Data {
            peer: p,
            data: b"from peer".to_vec()
        }]
    );

    // Bind a channel; until it is confirmed data still goes by Send.
    let ch = c.bind_channel(p, t0).unwrap();
    assert_eq!(ch, CHANNEL_MIN);
    assert_eq!(c.bind_channel(p, t0), Ok(ch));
    let r = next_req(&mut c);
    assert_eq!(r.method(), method::CHANNEL_BIND);
    assert_eq!(r.get(attr::CHANNEL_NUMBER), Some(vec![0x40, 0, 0, 0]));
    assert_eq!(r.peers(), vec![p]);
    fake.check_auth(&r);
    let n = c.send_to(p, b"hello", &mut buf).unwrap();
    assert_eq!(buf[0] >> 6, 0, "still STUN");
    assert!(n > 20);
    c.handle_input(&fake.ok(&r, &key), t0);
    assert_bound(&mut c, p, ch);
    assert_eq!(c.channel_for(p), Some(ch));

    // Out on the channel: ChannelData, unpadded over UDP.
    let n = c.send_to(p, b"hello", &mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x00, 0, 5, b'h', b'e', b'l', b'l', b'o']);

    // In on the channel (with UDP padding), zero-copy and as an event.
    let msg = [0x40, 0x00, 0, 3, b'a', b'b', b'c', 0];
    assert_eq!(
        c.recv(&msg, t0),
        Some(PeerData {
            peer: p,
            data: b"abc",
            channel: Some(ch)
        })
    );
    c.handle_input(&msg, t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Data {
            peer: p,
            data: b"abc".to_vec()
        }]
    );
    c.handle_input(&[0x40, 0x01, 0, 1, b'z'], t0);
    assert_eq!(c.stats().unknown_channel, 1);
    assert!(events(&mut c).is_empty());
}

#[test]
fn channel_data_is_padded_on_streams() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Tcp));
    let p = peer(5, 7000);
    c.bind_channel(p, t0).unwrap();
    let r = next_req(&mut c);
    c.handle_input(&fake.ok(&r, &key), t0);
    events(&mut c);
    let mut buf = [0xAAu8; 64];
    let n = c.send_to(p, b"hello", &mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &[0x40, 0x00, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]
    );
}

#[test]
fn channels_and_their_permissions_are_refreshed_on_time() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(6, 6000);
    c.bind_channel(p, t0).unwrap();
    let r = next_req(&mut c);
    c.handle_input(&fake.ok(&r, &key), t0);
    events(&mut c);
    // RFC 8656 §11.2: the bind installed the permission too.
    assert!(c.has_permission(p));
    let mut now = t0;
    let mut seen = Vec::new();
    // Walk 20 minutes answering everything; record what is sent when.
    while now < t0 + secs(1200) {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        while let Some(t) = c.poll_transmit() {
            let r = Req::new(t);
            seen.push(((now - t0).as_secs(), r.method()));
            let resp = match r.method() {
                method::REFRESH => fake.refresh_ok(&r, &key, 600),
                _ => fake.ok(&r, &key),
            };
            c.handle_input(&resp, now);
        }
    }
    let at = |m| -> Vec<u64> {
        seen.iter()
            .filter(|(_, x)| *x == m)
            .map(|(t, _)| *t)
            .collect()
    };
    // Each ChannelBind refreshes the permission too (RFC 8656 §11.2), so
    // the CreatePermission after the bind at 540 s waits until 780 s: the
    // permission is never older than 240 s either way.
    assert_eq!(
        at(method::CREATE_PERMISSION),
        vec![240, 480, 780, 1020, 1320]
    );
    assert_eq!(at(method::CHANNEL_BIND), vec![540, 1080]);
    assert_eq!(at(method::REFRESH), vec![450, 900]);
    assert!(events(&mut c)
        .iter()
        .all(|e| matches!(e, Event::Refreshed { .. })));
}

#[test]
fn channel_bind_failure_falls_back_to_send_indications() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(7, 7);
    c.create_permission(p, t0).unwrap();
    c.bind_channel(p, t0).unwrap();
    let perm = next_req(&mut c);
    let bind = next_req(&mut c);
    c.handle_input(&fake.ok(&perm, &key), t0);
    c.handle_input(&fake.error(&bind, 508, Some(&key)), t0);
    assert_eq!(
        events(&mut c),
        vec![
            Event::PermissionCreated { peers: vec![p] },
            Event::ChannelFailed {
                peer: p,
                channel: CHANNEL_MIN,
                error: ClientError::InsufficientCapacity
            }
        ]
    );
    assert_eq!(c.channel_for(p), None);
    let mut buf = [0u8; 64];
    let n = c.send_to(p, b"x", &mut buf).unwrap();
    assert_eq!(buf[0] >> 6, 0);
    assert!(n > 20);
    // The server said no: asking again would only be refused again.
    assert_eq!(
        c.bind_channel(p, t0),
        Err(UsageError::ChannelRefused {
            peer: p,
            error: ClientError::InsufficientCapacity
        })
    );
    assert!(c.poll_transmit().is_none());
}

/// Run the clock until the client reports something, losing every answer
/// (the server is taken to process each send). Returns the requests sent
/// meanwhile and when the events came.
fn lose_answers_until_an_event(c: &mut Client) -> (Vec<Req>, Instant) {
    let mut sent = Vec::new();
    loop {
        let now = c.poll_timeout().expect("a timer runs");
        c.handle_timeout(now);
        sent.extend(std::iter::from_fn(|| c.poll_transmit()).map(Req::new));
        if c.events
            .iter()
            .any(|e| !matches!(e, Event::Refreshed { .. }))
        {
            return (sent, now);
        }
    }
}

fn channel_number(r: &Req) -> u16 {
    let v = r.get(attr::CHANNEL_NUMBER).expect("CHANNEL-NUMBER");
    u16::from_be_bytes([v[0], v[1]])
}

/// Found by a session sweep at 20 % loss: the server bound the channel but
/// every answer was lost, the client forgot the number and bound the peer
/// to the next one, which the server refused (400, RFC 8656 §12.2), while
/// it relayed the peer's data on the first number, which the client then
/// dropped. The peer must keep its number: its data keeps arriving, and
/// binding again refreshes the server's binding (§12.1).
#[test]
fn a_channel_bind_whose_answers_are_all_lost_keeps_its_number() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(8, 8000);
    let ch = c.bind_channel(p, t0).unwrap();
    let first = next_req(&mut c);
    let (resent, now) = lose_answers_until_an_event(&mut c);
    // RFC 8489 §6.2.1: the same transaction, sent 7 times in all.
    assert_eq!(resent.len(), 6);
    assert!(resent.iter().all(|r| r.bytes == first.bytes));
    let ev = events(&mut c);
    assert!(
        matches!(
            ev[..],
            [Event::ChannelFailed {
                peer: q,
                channel,
                error: ClientError::Timeout { attempts: 7, .. },
            }] if q == p && channel == ch
        ),
        "{ev:?}"
    );

    // The server relays the peer's data on the channel it bound.
    let msg = [0x40, 0x00, 0, 2, b'h', b'i'];
    assert_eq!(
        c.recv(&msg, now),
        Some(PeerData {
            peer: p,
            data: b"hi",
            channel: Some(ch)
        })
    );
    assert_eq!(c.stats().unknown_channel, 0);
    // Unconfirmed: data out goes in Send indications meanwhile.
    assert_eq!(c.channel_for(p), None);
    let mut buf = [0u8; 64];
    c.send_to(p, b"x", &mut buf).unwrap();
    assert_eq!(buf[0] >> 6, 0, "a Send indication");

    // A new bind: a new transaction for the same number, which the server
    // takes as a refresh.
    assert_eq!(c.bind_channel(p, now), Ok(ch));
    let again = next_req(&mut c);
    assert_ne!(again.tid(), first.tid());
    assert_eq!((channel_number(&again), again.peers()), (ch, vec![p]));
    assert_eq!(c.channel_for(p), Some(ch));
    assert_eq!(c.bind_channel(p, now), Ok(ch), "one bind in flight");
    assert!(c.poll_transmit().is_none());
    c.handle_input(&fake.ok(&again, &key), now);
    assert_bound(&mut c, p, ch);
    let n = c.send_to(p, b"x", &mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x40, 0x00, 0, 1, b'x']);
    // A late answer to the first transaction changes nothing.
    c.handle_input(&fake.ok(&first, &key), now);
    assert!(events(&mut c).is_empty());
    assert_eq!(c.stats().stray, 1);
    // The number is the peer's: another peer gets the next one.
    assert_eq!(c.bind_channel(peer(9, 9000), now), Ok(ch + 1));
}

/// The same when the answers to a channel refresh are lost: the server's
/// binding is alive (refreshed or not yet expired), so its data keeps
/// coming on the channel, and the next bind refreshes it again.
#[test]
fn a_channel_refresh_whose_answers_are_all_lost_keeps_its_number() {
    let fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(8, 8000);
    let ch = c.bind_channel(p, t0).unwrap();
    let r = next_req(&mut c);
    c.handle_input(&fake.ok(&r, &key), t0);
    events(&mut c);
    // Answer the allocation and permission refreshes, lose the channel's.
    let (refresh, now) = loop {
        let now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        let mut bind = None;
        while let Some(t) = c.poll_transmit() {
            let r = Req::new(t);
            match r.method() {
                method::CHANNEL_BIND => bind = Some(r),
                method::REFRESH => c.handle_input(&fake.refresh_ok(&r, &key, 600), now),
                _ => c.handle_input(&fake.ok(&r, &key), now),
            }
        }
        if let Some(b) = bind {
            break (b, now);
        }
    };
    assert_eq!(now - t0, secs(540));
    assert_eq!(channel_number(&refresh), ch);
    events(&mut c);
    let (resent, now) = lose_answers_until_an_event(&mut c);
    assert!(resent
        .iter()
        .all(|r| r.method() != method::CHANNEL_BIND || r.bytes == refresh.bytes));
    let ev = events(&mut c);
    assert!(
        matches!(
            ev[..],
            [Event::ChannelFailed { peer: q, channel, error: ClientError::Timeout { .. } }]
                if q == p && channel == ch
        ),
        "{ev:?}"
    );
    let msg = [0x40, 0x00, 0, 2, b'h', b'i'];
    assert_eq!(c.recv(&msg, now).map(|d| d.peer), Some(p));
    assert_eq!(c.stats().unknown_channel, 0);
    assert_eq!(c.bind_channel(p, now), Ok(ch));
    let again = next_req(&mut c);
    assert_eq!(channel_number(&again), ch);
    c.handle_input(&fake.ok(&again, &key), now);
    assert_bound(&mut c, p, ch);
}

/// RFC 8656 §12.2: a 400 to a ChannelBind means the server has the peer or
/// the number bound otherwise, so client and server are out of sync
/// (§12.3). Binding again cannot help: the client reports the conflict,
/// sends no more binds for the peer (no storm of 400s) and keeps the
/// number out of other peers' reach. Data to the peer goes in Send
/// indications, under a permission of its own.
#[test]
fn a_400_to_a_channel_bind_is_a_conflict_and_is_not_retried() {
    let fake = Fake::md5();
    let (mut c, _, t0) = allocated(&fake, config(Transport::Udp));
    let p = peer(8, 8000);
    let ch = c.bind_channel(p, t0).unwrap();
    let r = next_req(&mut c);
    // 400 is exempt from the integrity check (RFC 8489 §9.2.5).
    c.handle_input(&fake.error(&r, 400, None), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::ChannelFailed {
            peer: p,
            channel: ch,
            error: ClientError::ChannelConflict
        }]
    );
    assert_eq!(
        c.bind_channel(p, t0),
        Err(UsageError::ChannelRefused {
            peer: p,
            error: ClientError::ChannelConflict
        })
    );
    assert!(c.poll_transmit().is_none(), "no new ChannelBind");
    assert_eq!(c.channel_for(p), None);
    // The refused bind installed no permission either.
    let mut buf = [0u8; 64];
    assert_eq!(
        c.send_to(p, b"x", &mut buf),
        Err(UsageError::NoPermission(p))
    );
    assert_eq!(c.bind_channel(peer(9, 9000), t0), Ok(ch + 1));
}

#[test]
fn close_deletes_the_allocation() {
    let fake = Fake::md5();
    for answer in [None, Some(437)] {
        let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
        c.create_permission(peer(1, 1), t0).unwrap();
        next_req(&mut c);
        c.close(t0);
        let r = next_req(&mut c);
        assert_eq!(r.method(), method::REFRESH);
        assert_eq!(r.lifetime(), Some(0));
        assert_eq!(c.state(), State::Closing);
        let resp = match answer {
            None => fake.refresh_ok(&r, &key, 0),
            Some(code) => fake.error(&r, code, Some(&key)),
        };
        c.handle_input(&resp, t0);
        assert_eq!(events(&mut c), vec![Event::Closed]);
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.poll_timeout(), None);
        let mut buf = [0u8; 64];
        assert_eq!(
            c.send_to(peer(1, 1), b"x", &mut buf),
            Err(UsageError::NotAllocated)
        );
    }
}

#[test]
fn rest_credentials_authenticate() {
    let now = std::time::SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let creds = Credentials::from_rest_secret(b"shared", "bob", secs(3600), now);
    assert_eq!(creds.username, "1700003600:bob");
    let secrets = crate::rest::RestSecrets::new([b"shared".to_vec()]);
    assert_eq!(
        secrets.verify(&creds.username, &creds.password, now),
        Ok(())
    );
}

#[test]
fn stale_nonce_on_a_permission_is_retried_with_the_new_nonce() {
    let mut fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    c.create_permission(peer(3, 3), t0).unwrap();
    let r = next_req(&mut c);
    c.handle_input(&fake.stale(&r, "nonce-2"), t0);
    let r2 = next_req(&mut c);
    assert_ne!(r2.tid(), r.tid());
    assert_eq!(r2.peers(), vec![peer(3, 3)]);
    fake.check_auth(&r2);
    c.handle_input(&fake.ok(&r2, &key), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::PermissionCreated {
            peers: vec![peer(3, 3)]
        }]
    );
    // Later requests keep the new nonce.
    c.close(t0);
    let r3 = next_req(&mut c);
    fake.check_auth(&r3);
}

#[test]
fn unusable_401_and_bad_indications_are_reported_or_counted() {
    let fake = Fake::md5();
    let t0 = Instant::now();
    let mut c = Client::new(config(Transport::Udp), t0);
    let r = next_req(&mut c);
    // A 401 without REALM/NONCE cannot be answered.
    c.handle_input(&fake.error(&r, 401, None), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(ClientError::Malformed(
            "401 without REALM and NONCE"
        ))]
    );

    // Only unknown password algorithms on offer.
    let mut c = Client::new(config(Transport::Udp), t0);
    let r = next_req(&mut c);
    let resp = fake.respond(&r, Class::Error, None, |w| {
        w.error_code(401, "").unwrap();
        w.bytes(attr::REALM, REALM.as_bytes()).unwrap();
        w.bytes(attr::NONCE, b"n").unwrap();
        w.bytes(attr::PASSWORD_ALGORITHMS, &[0, 9, 0, 0]).unwrap();
    });
    c.handle_input(&resp, t0);
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Failed(ClientError::Malformed(_))]
    ));

    // A Data indication without DATA, and a request, are not data.
    let (mut c, _, t0) = allocated(&fake, config(Transport::Udp));
    let mut buf = vec![0u8; 64];
    let mut w = Writer::new(&mut buf, method::DATA, Class::Indication, &[1; 12]).unwrap();
    w.xor_address(attr::XOR_PEER_ADDRESS, peer(1, 1)).unwrap();
    let n = w.finish();
    c.handle_input(&buf[..n], t0);
    let n = Writer::new(&mut buf, method::BINDING, Class::Request, &[1; 12])
        .unwrap()
        .finish();
    c.handle_input(&buf[..n], t0);
    assert!(events(&mut c).is_empty());
    assert_eq!((c.stats().malformed, c.stats().stray), (1, 1));
}

#[test]
fn password_algorithms_list_is_parsed_with_parameters() {
    // MD5 with 2 bytes of parameters (padded to 4), then SHA-256, then junk.
    let v = [0, 1, 0, 2, 9, 9, 0, 0, 0, 2, 0, 0, 0, 7];
    assert_eq!(
        wire::password_algorithms(&v),
        vec![PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256]
    );
}

#[test]
fn a_401_after_the_allocation_is_retried_once_with_its_nonce() {
    // The client's address changed: the relay refuses the nonce it issued
    // to the old address (401 with a new nonce). The retry carries the new
    // one and gets the real answer: the allocation is not on this 5-tuple.
    let mut fake = Fake::md5();
    let (mut c, key, t0) = allocated(&fake, config(Transport::Udp));
    c.refresh_now(t0);
    let r = next_req(&mut c);
    fake.nonce = "nonce-2".into();
    c.handle_input(&fake.unauthorized(&r), t0);
    assert!(events(&mut c).is_empty());
    let r2 = next_req(&mut c);
    assert_eq!(r2.method(), method::REFRESH);
    assert_ne!(r2.tid(), r.tid());
    fake.check_auth(&r2);
    c.handle_input(&fake.error(&r2, 437, Some(&key)), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::Failed(ClientError::AllocationMismatch)]
    );

    // A second 401 in a row: the credentials are refused now.
    let mut fake = Fake::md5();
    let (mut c, _, t0) = allocated(&fake, config(Transport::Udp));
    c.create_permission(peer(3, 3), t0).unwrap();
    let r = next_req(&mut c);
    fake.nonce = "nonce-2".into();
    c.handle_input(&fake.unauthorized(&r), t0);
    let r2 = next_req(&mut c);
    assert_eq!(r2.peers(), vec![peer(3, 3)]);
    fake.check_auth(&r2);
    c.handle_input(&fake.unauthorized(&r2), t0);
    assert_eq!(
        events(&mut c),
        vec![Event::PermissionFailed {
            peers: vec![peer(3, 3)],
            error: ClientError::WrongCredentials
        }]
    );
    assert!(c.poll_transmit().is_none());
    assert_eq!(c.state(), State::Allocated);
}
