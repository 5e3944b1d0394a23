//! The relay core driven message by message with a fake environment and a
//! simulated clock: no sockets, deterministic.

use super::*;
use crate::integrity::{LongTermKey, PasswordAlgorithm};
use crate::raw::{parse_datagram, Attributes};
use crate::rest::RestSecrets;

const REALM: &str = "natkit";

struct FakeEnv {
    now: SystemTime,
    next: u32,
    open: HashMap<RelayId, SocketAddr>,
    v6: bool,
    ports_left: usize,
    denied: Vec<IpAddr>,
    per_user: HashMap<String, usize>,
    max_per_user: usize,
    max_total: usize,
    /// TCP relays opened (RFC 6062), and peer connections closed.
    tcp_relays: Vec<RelayId>,
    closed: Vec<ConnectionId>,
    /// Stream connections holding an allocation ([`Env::stream_held`]).
    held: Vec<ClientKey>,
}

impl FakeEnv {
    fn new() -> Self {
        FakeEnv {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            next: 1,
            open: HashMap::new(),
            v6: false,
            ports_left: 100,
            denied: vec!["10.0.0.1".parse().unwrap()],
            per_user: HashMap::new(),
            max_per_user: 10,
            max_total: 1000,
            tcp_relays: Vec::new(),
            closed: Vec::new(),
            held: Vec::new(),
        }
    }
}

impl Env for FakeEnv {
    fn system_now(&self) -> SystemTime {
        self.now
    }
    fn open_relay(&mut self, req: RelayRequest) -> Result<OpenedRelay, RelayError> {
        if req.family == 1 && !self.v6 {
            return Err(RelayError::Family);
        }
        if req.token == Some(0xBAD) {
            return Err(RelayError::BadToken);
        }
        if self.ports_left == 0 {
            return Err(RelayError::NoPorts);
        }
        self.ports_left -= 1;
        let id = self.next;
        self.next += 1;
        let port = 50000 + 2 * id as u16;
        let addr: SocketAddr = if req.family == 0 {
            SocketAddr::new("203.0.113.1".parse().unwrap(), port)
        } else {
            SocketAddr::new("2001:db8::1".parse().unwrap(), port)
        };
        self.open.insert(id, addr);
        if req.tcp {
            self.tcp_relays.push(id);
        }
        Ok(OpenedRelay {
            id,
            addr,
            token: req.reserve.then_some(0x1234_5678),
        })
    }
    fn close_relay(&mut self, id: RelayId) {
        self.open.remove(&id);
    }
    fn peer_allowed(&self, peer: SocketAddr) -> bool {
        !self.denied.contains(&peer.ip())
    }
    fn peer_ip_allowed(&self, ip: IpAddr) -> bool {
        !self.denied.contains(&ip)
    }
    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        ip.to_string() == "203.0.113.1"
    }
    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError> {
        if self.per_user.values().sum::<usize>() >= self.max_total {
            return Err(QuotaError::Total);
        }
        let n = self.per_user.entry(user.into()).or_default();
        if *n >= self.max_per_user {
            return Err(QuotaError::PerUser);
        }
        *n += 1;
        Ok(())
    }
    fn release_allocation(&mut self, user: &str) {
        *self.per_user.get_mut(user).unwrap() -= 1;
    }
    fn close_connection(&mut self, id: ConnectionId) {
        self.closed.push(id);
    }
    fn stream_held(&mut self, client: &ClientKey, held: bool) {
        assert!(client.via.is_stream(), "told of a UDP client");
        assert_eq!(self.held.contains(client), !held, "told twice");
        if held {
            self.held.push(*client);
        } else {
            self.held.retain(|c| c != client);
        }
    }
}

fn server(cfg: Config) -> (Server, FakeEnv, Instant) {
    let mut users = HashMap::new();
    users.insert("alice".to_string(), "secret".to_string());
    users.insert("bob".to_string(), "hunter2".to_string());
    let creds = Credentials::new(users, RestSecrets::new(["restsecret"]));
    let t0 = Instant::now();
    // A fixed slot layout for the limiter: counts of answered requests do
    // not depend on which random slots many sources happened to share.
    let limiter = Arc::new(UnauthLimiter::with_key(cfg.unauth_rate, t0, (7, 7)));
    let s =
        Server::new(cfg, Arc::new(creds), NonceKey::from_bytes([7; 32]), t0).with_limiter(limiter);
    (s, FakeEnv::new(), t0)
}

fn client(port: u16) -> ClientKey {
    ClientKey {
        addr: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        via: Via::Udp(0),
    }
}

/// Credentials a test client signs with.
#[derive(Clone)]
struct Auth {
    user: String,
    pass: String,
    nonce: String,
    sha256: bool,
}

fn build(
    m: u16,
    class: Class,
    tid: [u8; 12],
    body: impl FnOnce(&mut Writer<'_>),
    auth: Option<&Auth>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut w = Writer::new(&mut buf, m, class, &tid).unwrap();
    body(&mut w);
    if let Some(a) = auth {
        w.bytes(attr::USERNAME, a.user.as_bytes()).unwrap();
        w.bytes(attr::REALM, REALM.as_bytes()).unwrap();
        w.bytes(attr::NONCE, a.nonce.as_bytes()).unwrap();
        let alg = if a.sha256 {
            w.bytes(attr::PASSWORD_ALGORITHMS, OFFERED_ALGORITHMS)
                .unwrap();
            w.bytes(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]).unwrap();
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        let key = LongTermKey::derive(alg, &a.user, REALM, &a.pass);
        if a.sha256 {
            w.message_integrity_sha256(key.as_bytes()).unwrap();
        } else {
            w.message_integrity(key.as_bytes()).unwrap();
        }
    }
    let n = w.fingerprint().unwrap();
    buf.truncate(n);
    buf
}

struct Resp {
    class: Class,
    code: Option<u16>,
    attrs: Vec<(u16, Vec<u8>)>,
    tid: [u8; 12],
}

impl Resp {
    fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| &v[..])
    }
    fn all(&self, t: u16) -> Vec<&[u8]> {
        self.attrs
            .iter()
            .filter(|(a, _)| *a == t)
            .map(|(_, v)| &v[..])
            .collect()
    }
    fn addr(&self, t: u16) -> Option<SocketAddr> {
        raw::decode_xor_address(self.get(t)?, &self.tid)
    }
}

fn parse(out: &[u8]) -> Resp {
    let h = parse_datagram(out).unwrap();
    let attrs: Vec<_> = Attributes::new(out, &h)
        .map(|a| a.unwrap())
        .map(|a| (a.typ, a.value.to_vec()))
        .collect();
    let code = attrs
        .iter()
        .find(|(t, _)| *t == attr::ERROR_CODE)
        .and_then(|(_, v)| raw::decode_error_code(v));
    Resp {
        class: h.class(),
        code,
        attrs,
        tid: h.transaction_id,
    }
}

fn send(s: &mut Server, env: &mut FakeEnv, c: ClientKey, msg: &[u8], now: Instant) -> Option<Resp> {
    let mut out = [0u8; 512];
    match s.handle_client(env, c, msg, now, &mut out) {
        ClientAction::Reply(n) => Some(parse(&out[..n])),
        _ => None,
    }
}

fn tid(n: u8) -> [u8; 12] {
    [n; 12]
}

fn udp_transport(w: &mut Writer<'_>) {
    w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
}

/// 401 then an authenticated Allocate; returns the relayed address and auth.
fn allocate(
    s: &mut Server,
    env: &mut FakeEnv,
    c: ClientKey,
    user: &str,
    pass: &str,
    sha256: bool,
    now: Instant,
) -> (SocketAddr, Auth) {
    let r = send(
        s,
        env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(1),
            udp_transport,
            None,
        ),
        now,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
    assert_eq!(r.get(attr::REALM), Some(REALM.as_bytes()));
    assert_eq!(r.get(attr::PASSWORD_ALGORITHMS), Some(OFFERED_ALGORITHMS));
    assert!(r.get(attr::SOFTWARE).is_none());
    let nonce = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    let auth = Auth {
        user: user.into(),
        pass: pass.into(),
        nonce,
        sha256,
    };
    let r = send(
        s,
        env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(2),
            udp_transport,
            Some(&auth),
        ),
        now,
    )
    .unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None), "{:?}", r.code);
    assert_eq!(r.addr(attr::XOR_MAPPED_ADDRESS), Some(c.addr));
    let lifetime = u32::from_be_bytes(r.get(attr::LIFETIME).unwrap().try_into().unwrap());
    assert_eq!(lifetime, 600);
    let want_mi = if sha256 {
        attr::MESSAGE_INTEGRITY_SHA256
    } else {
        attr::MESSAGE_INTEGRITY
    };
    assert!(
        r.get(want_mi).is_some(),
        "response is signed like the request"
    );
    (r.addr(attr::XOR_RELAYED_ADDRESS).unwrap(), auth)
}

/// `auth` with a nonce issued to `c` (nonces are bound to the client's
/// address).
fn rebind(s: &mut Server, env: &mut FakeEnv, c: ClientKey, auth: &Auth, now: Instant) -> Auth {
    let r = send(
        s,
        env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(99),
            udp_transport,
            None,
        ),
        now,
    )
    .unwrap();
    let nonce = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    Auth {
        nonce,
        ..auth.clone()
    }
}

fn permission(peer: SocketAddr) -> impl Fn(&mut Writer<'_>) {
    move |w| w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap()
}

#[test]
fn allocate_md5_and_sha256_and_verify_response_integrity() {
    let (mut s, mut env, t0) = server(Config::default());
    let (relayed, _) = allocate(&mut s, &mut env, client(1000), "alice", "secret", false, t0);
    assert_eq!(relayed.ip().to_string(), "203.0.113.1");
    let (_, auth) = allocate(&mut s, &mut env, client(1001), "bob", "hunter2", true, t0);
    assert_eq!(s.allocation_count(), 2);
    // The response verifies with the client's key.
    let msg = build(method::REFRESH, Class::Request, tid(9), |_| {}, Some(&auth));
    let mut out = [0u8; 512];
    let ClientAction::Reply(n) = s.handle_client(&mut env, client(1001), &msg, t0, &mut out) else {
        panic!("no reply")
    };
    let key = LongTermKey::derive(PasswordAlgorithm::Sha256, "bob", REALM, "hunter2");
    let h = parse_datagram(&out[..n]).unwrap();
    assert_eq!(
        crate::integrity::verify(&out[..n], &h, key.as_bytes()),
        Ok(IntegrityKind::Sha256)
    );
}

#[test]
fn wrong_password_stale_nonce_and_rate_limit() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(1),
            udp_transport,
            None,
        ),
        t0,
    )
    .unwrap();
    let nonce = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    let bad = Auth {
        user: "alice".into(),
        pass: "wrong".into(),
        nonce: nonce.clone(),
        sha256: false,
    };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(2),
            udp_transport,
            Some(&bad),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
    assert_eq!(s.stats.auth_failures, 1);
    assert_eq!(s.allocation_count(), 0);
    // Unknown user: 401 too.
    let ghost = Auth {
        user: "mallory".into(),
        ..bad.clone()
    };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(3),
            udp_transport,
            Some(&ghost),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
    // A nonce from the past: 438 with a fresh nonce.
    env.now += Duration::from_secs(3600);
    let good = Auth {
        pass: "secret".into(),
        ..bad
    };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(4),
            udp_transport,
            Some(&good),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(438));
    let fresh = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    assert_ne!(fresh, nonce);
    // A nonce issued to another client address is not accepted.
    let r = send(
        &mut s,
        &mut env,
        client(2000),
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(5),
            udp_transport,
            Some(&Auth {
                nonce: fresh,
                ..good
            }),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
    // The 401 limiter: 20/s with a burst of 80 per source IP.
    let answered = (0..200u8)
        .filter(|i| {
            send(
                &mut s,
                &mut env,
                client(3000),
                &build(
                    method::ALLOCATE,
                    Class::Request,
                    tid(*i),
                    udp_transport,
                    None,
                ),
                t0,
            )
            .is_some()
        })
        .count();
    assert!(answered <= 80, "{answered} answers");
    assert!(s.stats.drops[Drop::RateLimited.index()] >= 100);
}

#[test]
fn rest_credentials_and_expiry_on_allocate_and_refresh() {
    let (mut s, mut env, t0) = server(Config::default());
    let creds = crate::rest::generate(b"restsecret", "carol", Duration::from_secs(60), env.now);
    let c = client(1000);
    let (_, auth) = allocate(
        &mut s,
        &mut env,
        c,
        &creds.username,
        &creds.password,
        false,
        t0,
    );
    env.now += Duration::from_secs(120);
    // Fresh nonce, same (now expired) credentials: refused on Refresh.
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(method::REFRESH, Class::Request, tid(7), |_| {}, None),
        t0,
    )
    .unwrap();
    let nonce = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    let auth = Auth { nonce, ..auth };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(method::REFRESH, Class::Request, tid(8), |_| {}, Some(&auth)),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
    // And on Allocate from a new client.
    let r = send(
        &mut s,
        &mut env,
        client(1001),
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(9),
            udp_transport,
            None,
        ),
        t0,
    )
    .unwrap();
    let nonce = String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap();
    let auth = Auth { nonce, ..auth };
    let r = send(
        &mut s,
        &mut env,
        client(1001),
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(10),
            udp_transport,
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(401));
}

#[test]
fn allocate_errors() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let c2 = client(1001);
    let auth2 = rebind(&mut s, &mut env, c2, &auth, t0);
    let code =
        |s: &mut Server, env: &mut FakeEnv, c: ClientKey, t: u8, body: &dyn Fn(&mut Writer<'_>)| {
            let a = if c == c2 { &auth2 } else { &auth };
            send(
                s,
                env,
                c,
                &build(method::ALLOCATE, Class::Request, tid(t), body, Some(a)),
                t0,
            )
            .unwrap()
            .code
        };
    // Retransmission of the Allocate that worked: the same success.
    assert_eq!(code(&mut s, &mut env, c, 2, &udp_transport), None);
    // Another Allocate on the same 5-tuple: 437.
    assert_eq!(code(&mut s, &mut env, c, 3, &udp_transport), Some(437));
    assert_eq!(code(&mut s, &mut env, c2, 4, &|_| {}), Some(400));
    assert_eq!(
        code(&mut s, &mut env, c2, 5, &|w| w
            .u32(attr::REQUESTED_TRANSPORT, 6 << 24)
            .unwrap()),
        Some(442)
    );
    assert_eq!(
        code(&mut s, &mut env, c2, 6, &|w| {
            udp_transport(w);
            w.u32(attr::REQUESTED_ADDRESS_FAMILY, 0x02 << 24).unwrap();
        }),
        Some(440)
    );
    assert_eq!(
        code(&mut s, &mut env, c2, 7, &|w| {
            udp_transport(w);
            w.u64(attr::RESERVATION_TOKEN, 0xBAD).unwrap();
        }),
        Some(508)
    );
    assert_eq!(
        code(&mut s, &mut env, c2, 8, &|w| {
            udp_transport(w);
            w.u64(attr::RESERVATION_TOKEN, 1).unwrap();
            w.bytes(attr::EVEN_PORT, &[0]).unwrap();
        }),
        Some(400)
    );
    assert_eq!(
        code(&mut s, &mut env, c2, 9, &|w| {
            udp_transport(w);
            w.u32(0x0030, 0).unwrap();
        }),
        Some(420)
    );
    // RFC 8656 §7.2: 486 for the user's quota, 508 for the server's
    // capacity (max-allocations, ports, draining), each counted apart.
    env.max_per_user = 1;
    assert_eq!(code(&mut s, &mut env, c2, 10, &udp_transport), Some(486));
    env.max_per_user = 10;
    env.max_total = 1;
    assert_eq!(code(&mut s, &mut env, c2, 14, &udp_transport), Some(508));
    env.max_total = 1000;
    env.ports_left = 0;
    assert_eq!(code(&mut s, &mut env, c2, 11, &udp_transport), Some(508));
    env.ports_left = 10;
    s.set_draining(true);
    assert_eq!(code(&mut s, &mut env, c2, 12, &udp_transport), Some(508));
    s.set_draining(false);
    assert_eq!(s.stats.refused, [1, 1, 1, 1]);
    // EVEN-PORT with R: a reservation token comes back.
    let r = send(
        &mut s,
        &mut env,
        c2,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(13),
            |w| {
                udp_transport(w);
                w.bytes(attr::EVEN_PORT, &[0x80]).unwrap();
            },
            Some(&auth2),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, None);
    assert_eq!(
        r.get(attr::RESERVATION_TOKEN),
        Some(&0x1234_5678u64.to_be_bytes()[..])
    );
}

/// An authenticated Allocate for UDP.
fn signed_allocate(t: u8, auth: &Auth) -> Vec<u8> {
    build(
        method::ALLOCATE,
        Class::Request,
        tid(t),
        udp_transport,
        Some(auth),
    )
}

/// RFC 8489 §10 / RFC 8656 §7.2: a draining relay (and a full one, when
/// told to) sends Allocates to its alternate of the client's family with an
/// authenticated 300; the user's own quota and a relay without an alternate
/// of that family still answer 486 / 508.
#[test]
fn draining_or_full_relay_answers_try_alternate() {
    let alt4: SocketAddr = "192.0.2.9:3478".parse().unwrap();
    let cfg = Config {
        alternate: [Some(alt4), None],
        alternate_domain: Some("turn2.example.test".into()),
        ..Config::default()
    };
    let (mut s, mut env, t0) = server(cfg.clone());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", true, t0);
    let c2 = client(1001);
    let auth2 = rebind(&mut s, &mut env, c2, &auth, t0);
    let ask = |s: &mut Server, env: &mut FakeEnv, t: u8| {
        let mut out = [0u8; 512];
        let msg = signed_allocate(t, &auth2);
        match s.handle_client(env, c2, &msg, t0, &mut out) {
            ClientAction::Reply(n) => (parse(&out[..n]), out[..n].to_vec()),
            other => panic!("no reply: {other:?}"),
        }
    };
    s.set_draining(true);
    let (r, bytes) = ask(&mut s, &mut env, 10);
    assert_eq!((r.class, r.code), (Class::Error, Some(300)));
    assert_eq!(
        raw::decode_address(r.get(attr::ALTERNATE_SERVER).unwrap()),
        Some(alt4)
    );
    assert_eq!(
        r.get(attr::ALTERNATE_DOMAIN),
        Some(&b"turn2.example.test"[..])
    );
    // Signed with the user's key: a client can trust the redirect.
    let key = LongTermKey::derive(PasswordAlgorithm::Sha256, "alice", REALM, "secret");
    let h = parse_datagram(&bytes).unwrap();
    assert!(crate::integrity::verify(&bytes, &h, key.as_bytes()).is_ok());
    assert_eq!(s.stats.refused[Refusal::Draining.index()], 1);
    assert_eq!(s.stats.allocate_errors.get(&300), Some(&1));
    s.set_draining(false);

    // Full: 508 unless alternate-when-full.
    env.max_total = 1;
    assert_eq!(ask(&mut s, &mut env, 11).0.code, Some(508));
    env.ports_left = 0;
    env.max_total = 1000;
    assert_eq!(ask(&mut s, &mut env, 12).0.code, Some(508));
    let (mut s, mut env, t0) = server(Config {
        alternate_when_full: true,
        ..cfg
    });
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let auth2 = rebind(&mut s, &mut env, c2, &auth, t0);
    let code = |s: &mut Server, env: &mut FakeEnv, c: ClientKey, t: u8| {
        let msg = signed_allocate(t, &auth2);
        send(s, env, c, &msg, t0).unwrap().code
    };
    env.max_total = 1;
    assert_eq!(code(&mut s, &mut env, c2, 13), Some(300));
    env.max_total = 1000;
    env.ports_left = 0;
    assert_eq!(code(&mut s, &mut env, c2, 14), Some(300));
    env.ports_left = 10;
    // The user's quota is the same on the alternate: no redirect.
    env.max_per_user = 1;
    assert_eq!(code(&mut s, &mut env, c2, 15), Some(486));
    env.max_per_user = 10;
    // No alternate of the client's family (RFC 8489 §14.15): 508.
    let c6 = ClientKey {
        addr: "[2001:db8::7]:1000".parse().unwrap(),
        via: Via::Udp(0),
    };
    let auth6 = rebind(&mut s, &mut env, c6, &auth, t0);
    s.set_draining(true);
    let msg = signed_allocate(16, &auth6);
    assert_eq!(
        send(&mut s, &mut env, c6, &msg, t0).unwrap().code,
        Some(508)
    );
}

/// Usage records: interim ones at the interval with the totals so far,
/// a final one saying why the allocation ended; traffic both ways and the
/// distinct peers counted; nothing when records are off.
#[test]
fn usage_records_count_traffic_peers_and_the_end() {
    let cfg = Config {
        usage_records: true,
        usage_interval: Some(Duration::from_secs(60)),
        ..Config::default()
    };
    let (mut s, mut env, t0) = server(cfg);
    let c = client(1000);
    let (relayed, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let started = env.now;
    let (p1, p2): (SocketAddr, SocketAddr) = (
        "192.0.2.50:7000".parse().unwrap(),
        "192.0.2.51:7000".parse().unwrap(),
    );
    for (t, p) in [(3, p1), (4, p2), (5, p1)] {
        let msg = build(
            method::CREATE_PERMISSION,
            Class::Request,
            tid(t),
            permission(p),
            Some(&auth),
        );
        assert_eq!(send(&mut s, &mut env, c, &msg, t0).unwrap().code, None);
    }
    let send_ind = |s: &mut Server, env: &mut FakeEnv, data: &[u8]| {
        let msg = build(
            method::SEND,
            Class::Indication,
            tid(9),
            |w| {
                w.xor_address(attr::XOR_PEER_ADDRESS, p1).unwrap();
                w.bytes(attr::DATA, data).unwrap();
            },
            None,
        );
        let mut out = [0u8; 256];
        let a = s.handle_client(env, c, &msg, t0, &mut out);
        assert!(matches!(a, ClientAction::Relay { .. }), "{a:?}");
    };
    send_ind(&mut s, &mut env, b"12345");
    send_ind(&mut s, &mut env, b"678");
    let relay_id = *env.open.keys().next().unwrap();
    s.route_peer(relay_id, p2, 100, t0).unwrap();
    assert_eq!(s.take_usage().count(), 0, "nothing before the interval");
    s.handle_timeout(&mut env, t0 + Duration::from_secs(61));
    let interim: Vec<_> = s.take_usage().collect();
    assert_eq!(interim.len(), 1);
    let r = &interim[0];
    assert_eq!(r.end, None);
    assert_eq!(&*r.user, "alice");
    assert_eq!((r.client, r.via), (c.addr, c.via));
    assert_eq!(r.relayed, [Some(relayed), None]);
    assert_eq!(r.started, started);
    assert_eq!(r.duration, Duration::from_secs(61));
    assert_eq!((r.to_peer.packets, r.to_peer.bytes), (2, 8));
    assert_eq!((r.to_client.packets, r.to_client.bytes), (1, 100));
    assert_eq!((r.peers, r.peers_capped), (2, false));
    // Not again until the next interval.
    s.handle_timeout(&mut env, t0 + Duration::from_secs(100));
    assert_eq!(s.take_usage().count(), 0);
    // Deleted: the final record.
    let msg = build(
        method::REFRESH,
        Class::Request,
        tid(10),
        |w| w.u32(attr::LIFETIME, 0).unwrap(),
        Some(&auth),
    );
    let later = t0 + Duration::from_secs(130);
    send(&mut s, &mut env, c, &msg, later).unwrap();
    let last: Vec<_> = s.take_usage().collect();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].end, Some(EndReason::Deleted));
    assert_eq!(last[0].duration, Duration::from_secs(130));
    assert_eq!(last[0].to_peer.bytes, 8);
    assert_eq!(s.stats.ended[EndReason::Deleted.index()], 1);
    // Expiry and shutdown say so.
    allocate(&mut s, &mut env, c, "alice", "secret", false, later);
    allocate(
        &mut s,
        &mut env,
        client(1001),
        "bob",
        "hunter2",
        false,
        later,
    );
    s.handle_timeout(&mut env, later + Duration::from_secs(601));
    let ends: Vec<_> = s.take_usage().filter_map(|r| r.end).collect();
    assert_eq!(ends, [EndReason::Expired, EndReason::Expired]);
    allocate(&mut s, &mut env, c, "alice", "secret", false, later);
    s.shutdown(&mut env, EndReason::Drained, later);
    assert_eq!(s.allocation_count(), 0);
    let ends: Vec<_> = s.take_usage().filter_map(|r| r.end).collect();
    assert_eq!(ends, [EndReason::Drained]);
    // Off: counted in the stats, no records.
    let (mut s, mut env, t0) = server(Config::default());
    allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    s.shutdown(&mut env, EndReason::Shutdown, t0);
    assert_eq!(s.take_usage().count(), 0);
    assert_eq!(s.stats.ended[EndReason::Shutdown.index()], 1);
}

#[test]
fn usage_peers_are_bounded() {
    let mut u = Usage::new(SystemTime::UNIX_EPOCH, Instant::now(), None);
    for i in 0..(MAX_TRACKED_PEERS as u32 + 10) {
        u.note_peer(IpAddr::from((0xC000_0200u32 + i).to_be_bytes()));
        u.note_peer(IpAddr::from((0xC000_0200u32 + i).to_be_bytes()));
    }
    assert_eq!(u.peers(), (MAX_TRACKED_PEERS, true));
}

#[test]
fn dual_stack_allocation_reports_the_missing_family() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let dual = |w: &mut Writer<'_>| {
        udp_transport(w);
        w.u32(attr::ADDITIONAL_ADDRESS_FAMILY, 0x02 << 24).unwrap();
    };
    let a1 = rebind(&mut s, &mut env, client(1001), &auth, t0);
    let r = send(
        &mut s,
        &mut env,
        client(1001),
        &build(method::ALLOCATE, Class::Request, tid(3), dual, Some(&a1)),
        t0,
    )
    .unwrap();
    assert_eq!(r.all(attr::XOR_RELAYED_ADDRESS).len(), 1);
    assert_eq!(r.get(attr::ADDRESS_ERROR_CODE), Some(&[2, 0, 4, 40][..]));
    env.v6 = true;
    let a2 = rebind(&mut s, &mut env, client(1002), &auth, t0);
    let r = send(
        &mut s,
        &mut env,
        client(1002),
        &build(method::ALLOCATE, Class::Request, tid(4), dual, Some(&a2)),
        t0,
    )
    .unwrap();
    assert_eq!(r.all(attr::XOR_RELAYED_ADDRESS).len(), 2);
}

#[test]
fn permissions_channels_and_the_data_path() {
    let (mut s, mut env, t0) = server(Config {
        max_permissions: 2,
        ..Config::default()
    });
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
    let denied: SocketAddr = "10.0.0.1:7000".parse().unwrap();
    let v6peer: SocketAddr = "[2001:db8::9]:7000".parse().unwrap();
    let cp = |s: &mut Server, env: &mut FakeEnv, t: u8, body: &dyn Fn(&mut Writer<'_>)| {
        send(
            s,
            env,
            c,
            &build(
                method::CREATE_PERMISSION,
                Class::Request,
                tid(t),
                body,
                Some(&auth),
            ),
            t0,
        )
        .unwrap()
        .code
    };
    assert_eq!(cp(&mut s, &mut env, 3, &|_| {}), Some(400));
    assert_eq!(cp(&mut s, &mut env, 4, &permission(denied)), Some(403));
    assert_eq!(cp(&mut s, &mut env, 5, &permission(v6peer)), Some(443));

    // Data from the peer before any permission is dropped.
    let mut buf = [0u8; 128];
    let relay_id = *env.open.keys().next().unwrap();
    assert_eq!(s.route_peer(relay_id, peer, 5, t0), Err(Drop::NoPermission));
    assert_eq!(cp(&mut s, &mut env, 6, &permission(peer)), None);
    // Now it arrives as a Data indication.
    let route = s.route_peer(relay_id, peer, 5, t0).unwrap();
    assert_eq!(route.client, c);
    let n = route.framing.write(&mut buf, b"hello").unwrap();
    let r = parse(&buf[..n]);
    assert_eq!(r.class, Class::Indication);
    assert_eq!(r.addr(attr::XOR_PEER_ADDRESS), Some(peer));
    assert_eq!(r.get(attr::DATA), Some(&b"hello"[..]));

    // A Send indication goes to the peer, zero-copy.
    let msg = build(
        method::SEND,
        Class::Indication,
        tid(7),
        |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            w.bytes(attr::DATA, b"ping").unwrap();
        },
        None,
    );
    let mut out = [0u8; 256];
    let ClientAction::Relay {
        relay,
        peer: p,
        data,
    } = s.handle_client(&mut env, c, &msg, t0, &mut out)
    else {
        panic!("not relayed")
    };
    assert_eq!((relay, p, &msg[data]), (relay_id, peer, &b"ping"[..]));
    // Send to a peer without permission: dropped silently.
    let other: SocketAddr = "192.0.2.51:7000".parse().unwrap();
    let msg = build(
        method::SEND,
        Class::Indication,
        tid(8),
        |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, other).unwrap();
            w.bytes(attr::DATA, b"ping").unwrap();
        },
        None,
    );
    assert_eq!(
        s.handle_client(&mut env, c, &msg, t0, &mut out),
        ClientAction::Drop(Drop::NoPermission)
    );

    // ChannelBind: bad numbers, then a channel; conflicting rebinds fail.
    let cb = |s: &mut Server, env: &mut FakeEnv, t: u8, n: u16, p: SocketAddr| {
        send(
            s,
            env,
            c,
            &build(
                method::CHANNEL_BIND,
                Class::Request,
                tid(t),
                |w| {
                    w.u32(attr::CHANNEL_NUMBER, (n as u32) << 16).unwrap();
                    w.xor_address(attr::XOR_PEER_ADDRESS, p).unwrap();
                },
                Some(&auth),
            ),
            t0,
        )
        .unwrap()
        .code
    };
    assert_eq!(cb(&mut s, &mut env, 9, 0x3FFF, peer), Some(400));
    assert_eq!(cb(&mut s, &mut env, 9, 0x8000, peer), Some(400));
    assert_eq!(cb(&mut s, &mut env, 10, 0x4000, denied), Some(403));
    assert_eq!(cb(&mut s, &mut env, 11, 0x4000, peer), None);
    assert_eq!(cb(&mut s, &mut env, 12, 0x4000, peer), None, "refresh");
    assert_eq!(
        cb(&mut s, &mut env, 13, 0x4001, peer),
        Some(400),
        "peer on another channel"
    );
    assert_eq!(
        cb(&mut s, &mut env, 14, 0x4000, other),
        Some(400),
        "channel to another peer"
    );
    // Permission quota of 2: `other` fits via ChannelBind, a third does not.
    assert_eq!(cb(&mut s, &mut env, 15, 0x4001, other), None);
    assert_eq!(
        cp(
            &mut s,
            &mut env,
            16,
            &permission("192.0.2.52:1".parse().unwrap())
        ),
        Some(508)
    );

    // ChannelData both ways.
    let mut cd = [0u8; 16];
    let n = channel_data::encode(&mut cd, 0x4000, b"abc", false).unwrap();
    let ClientAction::Relay {
        relay,
        peer: p,
        data,
    } = s.handle_client(&mut env, c, &cd[..n], t0, &mut out)
    else {
        panic!("not relayed")
    };
    assert_eq!((relay, p, &cd[data]), (relay_id, peer, &b"abc"[..]));
    let n = channel_data::encode(&mut cd, 0x4ABC, b"abc", false).unwrap();
    assert_eq!(
        s.handle_client(&mut env, c, &cd[..n], t0, &mut out),
        ClientAction::Drop(Drop::NoChannel)
    );
    let route = s.route_peer(relay_id, peer, 5, t0).unwrap();
    let n = route.framing.write(&mut buf, b"hello").unwrap();
    let got = channel_data::decode(&buf[..n]).unwrap();
    assert_eq!((got.channel, got.data), (0x4000, &b"hello"[..]));
    assert_eq!(s.stats.to_peer.0, 2);
    assert_eq!(s.stats.to_client.0, 2);

    // Permissions lapse after 300 s unless refreshed; channels after 600 s.
    let later = t0 + Duration::from_secs(301);
    assert_eq!(
        s.route_peer(relay_id, peer, 5, later),
        Err(Drop::NoPermission)
    );
}

#[test]
fn stream_clients_get_padded_channel_data() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = ClientKey {
        addr: "198.51.100.7:1000".parse().unwrap(),
        via: Via::Stream(42),
    };
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::CHANNEL_BIND,
            Class::Request,
            tid(5),
            |w| {
                w.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).unwrap();
                w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            },
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, None);
    let mut buf = [0u8; 128];
    let relay_id = *env.open.keys().next().unwrap();
    let route = s.route_peer(relay_id, peer, 5, t0).unwrap();
    assert_eq!(
        route.framing.write(&mut buf, b"hello"),
        Some(12),
        "4 + 5 padded to 12"
    );
    // The connection closing ends the allocation.
    s.client_gone(&mut env, &c, EndReason::ClientGone, t0);
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(s.stats.ended[EndReason::ClientGone.index()], 1);
    assert!(env.open.is_empty());
}

/// The driver hears when a stream connection holds an allocation and when
/// it stops (deleted, expired, or the connection went): while it holds one
/// the allocation's lifetime governs the connection, not the idle timeout.
/// UDP clients are never reported (the fake env asserts it).
#[test]
fn stream_connections_are_held_while_their_allocation_lives() {
    let (mut s, mut env, t0) = server(Config::default());
    let udp = client(999);
    allocate(&mut s, &mut env, udp, "alice", "secret", false, t0);
    let c = stream_client(1000, 42);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    assert_eq!(env.held, vec![c]);
    let refresh = |n: u8, lifetime: u32| {
        build(
            method::REFRESH,
            Class::Request,
            tid(n),
            |w| w.u32(attr::LIFETIME, lifetime).unwrap(),
            Some(&auth),
        )
    };
    // A Refresh keeps it held; a Refresh to 0 (RFC 8656 §7.4) lets go.
    let r = send(&mut s, &mut env, c, &refresh(3, 600), t0).unwrap();
    assert_eq!(r.code, None);
    assert_eq!(env.held, vec![c]);
    let r = send(&mut s, &mut env, c, &refresh(4, 0), t0).unwrap();
    assert_eq!(r.code, None);
    assert!(env.held.is_empty());
    // Allocated again on the same connection, then the connection went.
    let again = build(
        method::ALLOCATE,
        Class::Request,
        tid(5),
        udp_transport,
        Some(&auth),
    );
    let r = send(&mut s, &mut env, c, &again, t0).unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
    assert_eq!(env.held, vec![c]);
    s.client_gone(&mut env, &c, EndReason::ClientGone, t0);
    assert!(env.held.is_empty());
    // Another connection's allocation expires (600 s, unrefreshed).
    let c2 = stream_client(1001, 43);
    allocate(&mut s, &mut env, c2, "alice", "secret", false, t0);
    assert_eq!(env.held, vec![c2]);
    s.handle_timeout(&mut env, t0 + Duration::from_secs(599));
    assert_eq!(env.held, vec![c2]);
    s.handle_timeout(&mut env, t0 + Duration::from_secs(601));
    assert!(env.held.is_empty(), "expired");
}

#[test]
fn refresh_delete_expiry_and_wrong_user() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    // Same 5-tuple, other user: 441.
    let bob = Auth {
        user: "bob".into(),
        pass: "hunter2".into(),
        ..auth.clone()
    };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(method::REFRESH, Class::Request, tid(3), |_| {}, Some(&bob)),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(441));
    // Refresh to 1200 s, capped at the maximum for a larger ask.
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::REFRESH,
            Class::Request,
            tid(4),
            |w| w.u32(attr::LIFETIME, 99_999).unwrap(),
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.get(attr::LIFETIME), Some(&3600u32.to_be_bytes()[..]));
    // Expiry by the clock.
    s.handle_timeout(&mut env, t0 + Duration::from_secs(3599));
    assert_eq!(s.allocation_count(), 1);
    s.handle_timeout(&mut env, t0 + Duration::from_secs(3601));
    assert_eq!(s.allocation_count(), 0);
    assert!(env.open.is_empty(), "relay socket closed");
    assert_eq!(env.per_user["alice"], 0, "quota slot returned");
    // Delete with LIFETIME 0.
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::REFRESH,
            Class::Request,
            tid(5),
            |w| w.u32(attr::LIFETIME, 0).unwrap(),
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(
        (r.code, r.get(attr::LIFETIME)),
        (None, Some(&[0u8, 0, 0, 0][..]))
    );
    assert_eq!(s.allocation_count(), 0);
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(method::REFRESH, Class::Request, tid(6), |_| {}, Some(&auth)),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(437));
}

#[test]
fn bandwidth_quota_drops_excess() {
    let (mut s, mut env, t0) = server(Config {
        bandwidth: 100,
        ..Config::default()
    });
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
    send(
        &mut s,
        &mut env,
        c,
        &build(
            method::CHANNEL_BIND,
            Class::Request,
            tid(5),
            |w| {
                w.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).unwrap();
                w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            },
            Some(&auth),
        ),
        t0,
    );
    let mut cd = [0u8; 64];
    let n = channel_data::encode(&mut cd, 0x4000, &[1; 40], false).unwrap();
    let mut out = [0u8; 256];
    let sent = (0..10)
        .filter(|_| {
            matches!(
                s.handle_client(&mut env, c, &cd[..n], t0, &mut out),
                ClientAction::Relay { .. }
            )
        })
        .count();
    assert_eq!(sent, 2, "100 bytes of budget, 40 per packet");
    assert_eq!(s.stats.drops[Drop::Quota.index()], 8);
}

#[test]
fn binding_is_answered_and_garbage_dropped() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(method::BINDING, Class::Request, tid(1), |_| {}, None),
        t0,
    )
    .unwrap();
    assert_eq!(r.addr(attr::XOR_MAPPED_ADDRESS), Some(c.addr));
    let mut out = [0u8; 256];
    assert_eq!(
        s.handle_client(&mut env, c, b"\xff\xffgarbage", t0, &mut out),
        ClientAction::Drop(Drop::Malformed)
    );
    assert_eq!(
        s.handle_client(&mut env, c, &[0x40, 0, 0, 9, 1], t0, &mut out),
        ClientAction::Drop(Drop::Malformed)
    );
    assert_eq!(
        s.handle_client(&mut env, c, &[0x40, 0, 0, 1, 1], t0, &mut out),
        ClientAction::Drop(Drop::NoAllocation)
    );
}

/// RFC 5766 clients (coturn's turnutils_uclient among them) bind channel
/// numbers up to 0x7FFF; the relay accepts and relays them.
#[test]
fn rfc5766_channel_numbers_are_accepted() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::CHANNEL_BIND,
            Class::Request,
            tid(5),
            |w| {
                w.u32(attr::CHANNEL_NUMBER, 0x7ABC << 16).unwrap();
                w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            },
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, None);
    let mut cd = [0u8; 16];
    let n = channel_data::encode(&mut cd, 0x7ABC, b"old", false).unwrap();
    let mut out = [0u8; 256];
    let ClientAction::Relay { peer: p, data, .. } =
        s.handle_client(&mut env, c, &cd[..n], t0, &mut out)
    else {
        panic!("not relayed")
    };
    assert_eq!((p, &cd[data]), (peer, &b"old"[..]));
    let relay_id = *env.open.keys().next().unwrap();
    let route = s.route_peer(relay_id, peer, 3, t0).unwrap();
    let n = route.framing.write(&mut cd, b"new").unwrap();
    assert_eq!(channel_data::decode(&cd[..n]).unwrap().channel, 0x7ABC);
}

/// What a spoofed request can make the relay send (reflection): answers to
/// unauthenticated requests carry no SOFTWARE, no reason phrase, and no
/// FINGERPRINT unless the request had one.
#[test]
fn unauthenticated_answers_are_small() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let mut out = [0u8; 512];
    let mut req = [0u8; 64];
    let mut w = Writer::new(&mut req, method::ALLOCATE, Class::Request, &tid(1)).unwrap();
    udp_transport(&mut w);
    let n = w.finish();
    assert_eq!(n, 28);
    let ClientAction::Reply(len) = s.handle_client(&mut env, c, &req[..n], t0, &mut out) else {
        panic!("no 401")
    };
    // 20 + ERROR-CODE 8 + REALM "natkit" 12 + a plain NONCE 20: the
    // features form (cookie and PASSWORD-ALGORITHMS, 88 bytes) would be
    // more than 3x the request.
    assert_eq!(len, 60, "401 is x{:.1}", len as f64 / n as f64);
    let r = parse(&out[..len]);
    assert!(r.get(attr::FINGERPRINT).is_none() && r.get(attr::SOFTWARE).is_none());
    assert!(r.get(attr::PASSWORD_ALGORITHMS).is_none());
    assert_eq!(
        r.get(attr::NONCE).unwrap().len(),
        crate::nonce::PLAIN_NONCE_LEN
    );
    // A bare 20-byte Refresh: the worst case, x3.0.
    let w = Writer::new(&mut req, method::REFRESH, Class::Request, &tid(4)).unwrap();
    let n = w.finish();
    let ClientAction::Reply(len) = s.handle_client(&mut env, c, &req[..n], t0, &mut out) else {
        panic!("no 401")
    };
    assert_eq!((n, len), (20, 60));
    // The usual first Allocate (REQUESTED-TRANSPORT and FINGERPRINT, 36
    // bytes) is offered SHA-256: 96 bytes, x2.7.
    let mut w = Writer::new(&mut req, method::ALLOCATE, Class::Request, &tid(5)).unwrap();
    udp_transport(&mut w);
    let n = w.fingerprint().unwrap();
    let ClientAction::Reply(len) = s.handle_client(&mut env, c, &req[..n], t0, &mut out) else {
        panic!("no 401")
    };
    assert_eq!((n, len), (36, 96));
    let r = parse(&out[..len]);
    assert_eq!(r.get(attr::PASSWORD_ALGORITHMS), Some(OFFERED_ALGORITHMS));
    assert!(r.get(attr::NONCE).unwrap().starts_with(b"obMatJos2"));
    let w = Writer::new(&mut req, method::BINDING, Class::Request, &tid(2)).unwrap();
    let n = w.finish();
    let ClientAction::Reply(len) = s.handle_client(&mut env, c, &req[..n], t0, &mut out) else {
        panic!("no Binding answer")
    };
    assert_eq!(len, 32, "Binding: header + XOR-MAPPED-ADDRESS");
    // With FINGERPRINT in the request, the answer has one too.
    let w = Writer::new(&mut req, method::BINDING, Class::Request, &tid(3)).unwrap();
    let n = w.fingerprint().unwrap();
    let ClientAction::Reply(len) = s.handle_client(&mut env, c, &req[..n], t0, &mut out) else {
        panic!("no Binding answer")
    };
    assert_eq!(len, 40);
}

#[test]
fn channel_quota_per_allocation() {
    let (mut s, mut env, t0) = server(Config {
        max_channels: 1,
        ..Config::default()
    });
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let bind = |s: &mut Server, env: &mut FakeEnv, t: u8, n: u16, p: &str| {
        let peer: SocketAddr = p.parse().unwrap();
        send(
            s,
            env,
            c,
            &build(
                method::CHANNEL_BIND,
                Class::Request,
                tid(t),
                |w| {
                    w.u32(attr::CHANNEL_NUMBER, (n as u32) << 16).unwrap();
                    w.xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
                },
                Some(&auth),
            ),
            t0,
        )
        .unwrap()
        .code
    };
    assert_eq!(bind(&mut s, &mut env, 3, 0x4000, "192.0.2.1:1"), None);
    assert_eq!(bind(&mut s, &mut env, 4, 0x4001, "192.0.2.2:1"), Some(508));
    assert_eq!(
        bind(&mut s, &mut env, 5, 0x4000, "192.0.2.1:1"),
        None,
        "refresh fits"
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// STUN-shaped bytes: a valid header with a random method and class and
    /// random attributes, so parsing gets past the header checks.
    fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(t, body)| {
            let len = body.len() & !3;
            let mut m = Vec::with_capacity(20 + len);
            m.extend_from_slice(&(t & 0x3FFF).to_be_bytes());
            m.extend_from_slice(&(len as u16).to_be_bytes());
            m.extend_from_slice(&raw::MAGIC_COOKIE.to_be_bytes());
            m.extend_from_slice(&[7; 12]);
            m.extend_from_slice(&body[..len]);
            m
        })
    }

    proptest! {
        /// Whatever a client sends, before or after allocating, the relay
        /// answers, relays or drops: it never panics, and a reply fits the
        /// buffer it was given.
        #[test]
        fn client_input(msgs in prop::collection::vec(
            prop_oneof![prop::collection::vec(any::<u8>(), 0..120), stun_shaped()],
            1..8,
        )) {
            let (mut s, mut env, t0) = server(Config::default());
            let c = client(1000);
            let (_, _auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
            let mut out = [0u8; 512];
            for (i, m) in msgs.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                if let ClientAction::Reply(n) = s.handle_client(&mut env, c, m, now, &mut out) {
                    prop_assert!(n <= out.len());
                    prop_assert!(raw::parse_datagram(&out[..n]).is_ok());
                }
                let other = client(2000 + i as u16);
                let _ = s.handle_client(&mut env, other, m, now, &mut out);
                let relay_id = *env.open.keys().next().unwrap();
                let _ = s.route_peer(relay_id, "192.0.2.9:9".parse().unwrap(), m.len(), now);
            }
            s.handle_timeout(&mut env, t0 + Duration::from_secs(4000));
            prop_assert_eq!(s.allocation_count(), 0);
        }
    }
}

/// RFC 8656 §9.1: one CreatePermission may name several peers; up to
/// max-permissions are installed at once, more are refused with a reason.
#[test]
fn create_permission_takes_as_many_peers_as_the_quota() {
    let (mut s, mut env, t0) = server(Config {
        max_permissions: 40,
        ..Config::default()
    });
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let peers = |n: u8| {
        move |w: &mut Writer<'_>| {
            for i in 0..n {
                w.xor_address(
                    attr::XOR_PEER_ADDRESS,
                    SocketAddr::from(([192, 0, 2, i + 1], 9)),
                )
                .unwrap();
            }
        }
    };
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::CREATE_PERMISSION,
            Class::Request,
            tid(3),
            peers(40),
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
    assert_eq!(s.allocation(&c).unwrap().permissions.len(), 40);
    assert_eq!(s.stats.permissions, 40);
    let r = send(
        &mut s,
        &mut env,
        c,
        &build(
            method::CREATE_PERMISSION,
            Class::Request,
            tid(4),
            peers(41),
            Some(&auth),
        ),
        t0,
    )
    .unwrap();
    assert_eq!(r.code, Some(508));
    let reason = String::from_utf8_lossy(&r.get(attr::ERROR_CODE).unwrap()[4..]).into_owned();
    assert!(
        reason.contains("41 peers") && reason.contains("40 permissions"),
        "{reason}"
    );
}

/// A flood from strangers on a client's IP spends the IP's budget for
/// unauthenticated answers; a client holding a nonce issued to its own
/// address still gets its 438 and its allocation, and a new client on
/// another port of that IP its first 401.
#[test]
fn strangers_on_the_same_ip_do_not_starve_a_client_with_a_nonce() {
    let (mut s, mut env, t0) = server(Config::default());
    let c = client(1000);
    let (_, auth) = allocate(&mut s, &mut env, c, "alice", "secret", false, t0);
    let bare = |t: u8| {
        build(
            method::ALLOCATE,
            Class::Request,
            tid(t),
            udp_transport,
            None,
        )
    };
    // 40 ports flood the IP, 10 requests each: each port's first is
    // answered, its repeats only from the upper half of the IP's burst of
    // 80 (the first client's own 401 took one of it): none.
    let mut answered = 0;
    for i in 0..400u16 {
        if send(&mut s, &mut env, client(2000 + i % 40), &bare(7), t0).is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 40);
    // A new port on the IP still gets its first 401 (39 left); then the
    // IP's budget is spent for everyone without a nonce.
    assert!(send(&mut s, &mut env, client(5000), &bare(8), t0).is_some());
    for i in 0..38u16 {
        assert!(send(&mut s, &mut env, client(6000 + i), &bare(9), t0).is_some());
    }
    assert!(send(&mut s, &mut env, client(7000), &bare(10), t0).is_none());
    // The nonce went stale: the Refresh of the live allocation gets 438.
    env.now += Duration::from_secs(601);
    let refresh = |a: &Auth, t| build(method::REFRESH, Class::Request, tid(t), |_| {}, Some(a));
    let r = send(&mut s, &mut env, c, &refresh(&auth, 9), t0).expect("438 answered");
    assert_eq!(r.code, Some(438));
    let fresh = Auth {
        nonce: String::from_utf8(r.get(attr::NONCE).unwrap().to_vec()).unwrap(),
        ..auth.clone()
    };
    let r = send(&mut s, &mut env, c, &refresh(&fresh, 10), t0).unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
    // Its failures are its own budget's (20, the 438 was one): a wrong
    // password from a port with a nonce is answered 19 more times, then
    // dropped unchecked.
    let wrong = Auth {
        pass: "wrong".into(),
        ..fresh.clone()
    };
    let answered = (0..30u8)
        .filter(|i| send(&mut s, &mut env, c, &refresh(&wrong, 20 + i), t0).is_some())
        .count();
    assert_eq!(answered, 19);
    let failures = s.stats.auth_failures;
    assert!(send(&mut s, &mut env, c, &refresh(&wrong, 60), t0).is_none());
    assert_eq!(s.stats.auth_failures, failures, "dropped before any check");
}

/// Nonce keys that come with the credentials (derived from the REST
/// secret) outlive a restart: a stale nonce from before it gets 438, not
/// 401; and a reload keeps the previous keys valid.
#[test]
fn nonce_keys_from_the_credentials_survive_restarts_and_reloads() {
    let keyed = |key: u8| {
        Arc::new(
            Credentials::new(HashMap::new(), RestSecrets::new(["s1"]))
                .with_nonce_keys(vec![NonceKey::from_bytes([key; 32])]),
        )
    };
    let t0 = Instant::now();
    let fresh_server = |creds: Arc<Credentials>| {
        Server::new(
            Config::default(),
            creds,
            // A key of its own, random per process.
            NonceKey::random(),
            t0,
        )
        .with_limiter(Arc::new(UnauthLimiter::with_key(20, t0, (7, 7))))
    };
    let mut env = FakeEnv::new();
    let c = client(1000);
    let rest = crate::rest::generate(b"s1", "carol", Duration::from_secs(7200), env.now);
    let mut before = fresh_server(keyed(1));
    let carol = Auth {
        user: rest.username.clone(),
        pass: rest.password.clone(),
        nonce: String::new(),
        sha256: true,
    };
    let auth = rebind(&mut before, &mut env, c, &carol, t0);
    drop(before);
    let alloc = |a: &Auth, t| {
        build(
            method::ALLOCATE,
            Class::Request,
            tid(t),
            udp_transport,
            Some(a),
        )
    };
    // "Restarted": another instance, another random key of its own.
    let mut after = fresh_server(keyed(1));
    env.now += Duration::from_secs(700);
    assert_eq!(
        send(&mut after, &mut env, c, &alloc(&auth, 2), t0)
            .unwrap()
            .code,
        Some(438)
    );
    // Without keys from the credentials, the same gets 401.
    let mut bare = fresh_server(Arc::new(Credentials::new(
        HashMap::new(),
        RestSecrets::new(["s1"]),
    )));
    assert_eq!(
        send(&mut bare, &mut env, c, &alloc(&auth, 3), t0)
            .unwrap()
            .code,
        Some(401)
    );
    // A reload to other keys: a nonce of the old ones still verifies.
    let auth = rebind(&mut after, &mut env, c, &auth, t0);
    after.set_credentials(keyed(2));
    let r = send(&mut after, &mut env, c, &alloc(&auth, 4), t0).unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
}

// ------------------------------------------------------- RFC 6062 (TCP)

fn stream_client(port: u16, conn: u64) -> ClientKey {
    ClientKey {
        addr: SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        via: Via::Stream(conn),
    }
}

fn tcp_transport(w: &mut Writer<'_>) {
    w.u32(attr::REQUESTED_TRANSPORT, 6 << 24).unwrap();
}

/// A TCP allocation for alice over stream connection `c`.
fn tcp_allocate(s: &mut Server, env: &mut FakeEnv, c: ClientKey, now: Instant) -> Auth {
    let (_, auth) = allocate(s, env, c, "alice", "secret", false, now);
    // That made a UDP one (the helper's transport); replace it with TCP.
    let del = build(
        method::REFRESH,
        Class::Request,
        tid(3),
        |w| w.u32(attr::LIFETIME, 0).unwrap(),
        Some(&auth),
    );
    send(s, env, c, &del, now).unwrap();
    let r = send(
        s,
        env,
        c,
        &build(
            method::ALLOCATE,
            Class::Request,
            tid(4),
            tcp_transport,
            Some(&auth),
        ),
        now,
    )
    .unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
    assert_eq!(env.tcp_relays.len(), 1, "a TCP relay was opened");
    auth
}

fn connect_msg(n: u8, peer: SocketAddr, auth: &Auth) -> Vec<u8> {
    build(
        method::CONNECT,
        Class::Request,
        tid(n),
        permission(peer),
        Some(auth),
    )
}

fn bind_msg(n: u8, id: ConnectionId, auth: &Auth) -> Vec<u8> {
    build(
        method::CONNECTION_BIND,
        Class::Request,
        tid(n),
        |w| w.u32(attr::CONNECTION_ID, id).unwrap(),
        Some(auth),
    )
}

#[test]
fn tcp_allocation_needs_a_stream_control_connection() {
    let (mut s, mut env, t0) = server(Config::default());
    let (_, auth) = allocate(&mut s, &mut env, client(1000), "alice", "secret", false, t0);
    let c = client(1001);
    let auth = rebind(&mut s, &mut env, c, &auth, t0);
    let msg = build(
        method::ALLOCATE,
        Class::Request,
        tid(5),
        tcp_transport,
        Some(&auth),
    );
    // RFC 6062 §5.1: over UDP, 442.
    assert_eq!(send(&mut s, &mut env, c, &msg, t0).unwrap().code, Some(442));
    // Over TCP: granted, with a TCP relay; EVEN-PORT with it is 400.
    let c = stream_client(1002, 7);
    let auth = rebind(&mut s, &mut env, c, &auth, t0);
    let even = build(
        method::ALLOCATE,
        Class::Request,
        tid(6),
        |w| {
            tcp_transport(w);
            w.bytes(attr::EVEN_PORT, &[0]).unwrap();
        },
        Some(&auth),
    );
    assert_eq!(
        send(&mut s, &mut env, c, &even, t0).unwrap().code,
        Some(400)
    );
    let msg = build(
        method::ALLOCATE,
        Class::Request,
        tid(7),
        tcp_transport,
        Some(&auth),
    );
    let r = send(&mut s, &mut env, c, &msg, t0).unwrap();
    assert_eq!((r.class, r.code), (Class::Success, None));
    assert_eq!(env.tcp_relays.len(), 1);
    // No channels on a TCP allocation.
    let cb = build(
        method::CHANNEL_BIND,
        Class::Request,
        tid(8),
        |w| {
            w.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).unwrap();
            w.xor_address(attr::XOR_PEER_ADDRESS, "192.0.2.1:80".parse().unwrap())
                .unwrap();
        },
        Some(&auth),
    );
    assert_eq!(send(&mut s, &mut env, c, &cb, t0).unwrap().code, Some(400));
    // With the cap at 0, TCP allocations are off: 442.
    let (mut s, mut env, t0) = server(Config {
        max_peer_connections: 0,
        ..Config::default()
    });
    let c = stream_client(1003, 8);
    let (_, auth) = allocate(
        &mut s,
        &mut env,
        stream_client(1004, 9),
        "alice",
        "secret",
        false,
        t0,
    );
    let auth = rebind(&mut s, &mut env, c, &auth, t0);
    let msg = build(
        method::ALLOCATE,
        Class::Request,
        tid(9),
        tcp_transport,
        Some(&auth),
    );
    assert_eq!(send(&mut s, &mut env, c, &msg, t0).unwrap().code, Some(442));
}

#[test]
fn connect_then_bind_on_a_data_connection() {
    let (mut s, mut env, t0) = server(Config {
        shard: (1, 3),
        ..Config::default()
    });
    let ctl = stream_client(2000, 1);
    let auth = tcp_allocate(&mut s, &mut env, ctl, t0);
    let mut out = [0u8; 512];
    // A denied peer: 403 (RFC 6062 §5.2, local policy).
    let denied = connect_msg(10, "10.0.0.1:80".parse().unwrap(), &auth);
    assert_eq!(
        send(&mut s, &mut env, ctl, &denied, t0).unwrap().code,
        Some(403)
    );
    let peer: SocketAddr = "192.0.2.1:80".parse().unwrap();
    let ClientAction::Connect { id, peer: to, .. } =
        s.handle_client(&mut env, ctl, &connect_msg(11, peer, &auth), t0, &mut out)
    else {
        panic!("no Connect")
    };
    assert_eq!(to, peer);
    assert_eq!(tcp::shard_of(id, 3), 1, "the id names its shard");
    // The same peer again while connecting: 446.
    let again = connect_msg(12, peer, &auth);
    assert_eq!(
        send(&mut s, &mut env, ctl, &again, t0).unwrap().code,
        Some(446)
    );
    // Connected: the answer carries the CONNECTION-ID, to the control
    // connection, for the Connect's transaction.
    let (to, n) = s.connect_result(id, true, t0, &mut out).unwrap();
    assert_eq!(to, ctl);
    let r = parse(&out[..n]);
    assert_eq!((r.class, r.tid), (Class::Success, tid(11)));
    assert_eq!(r.get(attr::CONNECTION_ID), Some(&id.to_be_bytes()[..]));
    // Permission installed with the Connect.
    assert!(s.allocation(&ctl).unwrap().permitted(peer.ip(), t0));
    // A data connection: unknown id 400; the right one binds, once.
    let data = stream_client(2001, 2);
    let dauth = rebind(&mut s, &mut env, data, &auth, t0);
    let unknown = bind_msg(13, id ^ 0x100, &dauth);
    assert_eq!(
        send(&mut s, &mut env, data, &unknown, t0).unwrap().code,
        Some(400)
    );
    // Bob may not bind alice's connection.
    let bob = Auth {
        user: "bob".into(),
        pass: "hunter2".into(),
        ..dauth.clone()
    };
    assert_eq!(
        send(&mut s, &mut env, data, &bind_msg(14, id, &bob), t0)
            .unwrap()
            .code,
        Some(441)
    );
    match s.handle_client(&mut env, data, &bind_msg(15, id, &dauth), t0, &mut out) {
        ClientAction::Bind { id: bound, reply } => {
            assert_eq!(bound, id);
            let r = parse(&out[..reply]);
            assert_eq!((r.class, r.code), (Class::Success, None));
        }
        other => panic!("not bound: {other:?}"),
    }
    assert_eq!(
        send(&mut s, &mut env, data, &bind_msg(16, id, &dauth), t0)
            .unwrap()
            .code,
        Some(400)
    );
    // A bound connection is not timed out.
    s.handle_timeout(&mut env, t0 + Duration::from_secs(40));
    assert!(env.closed.is_empty());
    // A failed Connect is 447, and frees the peer for another try.
    let other: SocketAddr = "192.0.2.2:81".parse().unwrap();
    let ClientAction::Connect { id: id2, .. } =
        s.handle_client(&mut env, ctl, &connect_msg(17, other, &auth), t0, &mut out)
    else {
        panic!("no Connect")
    };
    let (_, n) = s.connect_result(id2, false, t0, &mut out).unwrap();
    assert_eq!(parse(&out[..n]).code, Some(447));
    assert!(matches!(
        s.handle_client(&mut env, ctl, &connect_msg(18, other, &auth), t0, &mut out),
        ClientAction::Connect { .. }
    ));
    // The allocation ends: its connections are closed.
    let del = build(
        method::REFRESH,
        Class::Request,
        tid(19),
        |w| w.u32(attr::LIFETIME, 0).unwrap(),
        Some(&auth),
    );
    send(&mut s, &mut env, ctl, &del, t0 + Duration::from_secs(41)).unwrap();
    assert_eq!(env.closed.len(), 2);
    assert!(env.closed.contains(&id));
    assert_eq!(s.stats.tcp[TcpEvent::Connected.index()], 1);
    assert_eq!(s.stats.tcp[TcpEvent::ConnectFailed.index()], 1);
    assert_eq!(s.stats.tcp[TcpEvent::Bound.index()], 1);
}

#[test]
fn peers_connecting_in_need_a_permission_and_a_bind_within_30_s() {
    let (mut s, mut env, t0) = server(Config {
        max_peer_connections: 2,
        ..Config::default()
    });
    let ctl = stream_client(3000, 1);
    let auth = tcp_allocate(&mut s, &mut env, ctl, t0);
    let relay = env.tcp_relays[0];
    let mut out = [0u8; 512];
    let peer: SocketAddr = "192.0.2.9:4000".parse().unwrap();
    // RFC 6062 §5.3: no permission, no connection.
    assert_eq!(
        s.peer_connected(relay, peer, t0, &mut out),
        Err(Drop::NoPermission)
    );
    let perm = build(
        method::CREATE_PERMISSION,
        Class::Request,
        tid(20),
        permission(peer),
        Some(&auth),
    );
    assert_eq!(
        send(&mut s, &mut env, ctl, &perm, t0).unwrap().class,
        Class::Success
    );
    let (to, id, n) = s.peer_connected(relay, peer, t0, &mut out).unwrap();
    assert_eq!(to, ctl);
    let h = parse_datagram(&out[..n]).unwrap();
    assert_eq!(
        (h.method(), h.class()),
        (method::CONNECTION_ATTEMPT, Class::Indication)
    );
    let r = parse(&out[..n]);
    assert_eq!(r.get(attr::CONNECTION_ID), Some(&id.to_be_bytes()[..]));
    assert_eq!(r.addr(attr::XOR_PEER_ADDRESS), Some(peer));
    // The cap: two connections, then refused.
    let (_, id2, _) = s.peer_connected(relay, peer, t0, &mut out).unwrap();
    assert_eq!(
        s.peer_connected(relay, peer, t0, &mut out),
        Err(Drop::Quota)
    );
    // Unbound for 30 s: closed.
    s.handle_timeout(&mut env, t0 + Duration::from_secs(29));
    assert!(env.closed.is_empty());
    s.handle_timeout(&mut env, t0 + Duration::from_secs(31));
    env.closed.sort();
    let mut want = vec![id, id2];
    want.sort();
    assert_eq!(env.closed, want);
    assert_eq!(s.stats.tcp[TcpEvent::Unbound.index()], 2);
    assert_eq!(s.stats.tcp[TcpEvent::Refused.index()], 2);
    // Bytes spliced count in the usage record.
    let later = t0 + Duration::from_secs(32);
    let (_, id3, _) = s.peer_connected(relay, peer, later, &mut out).unwrap();
    s.credit_connection(id3, 1000, 2000);
    let a = s.allocation(&ctl).unwrap();
    assert_eq!(
        (a.usage.to_peer.bytes, a.usage.to_client.bytes),
        (1000, 2000)
    );
    s.connection_closed(id3);
    assert!(s.peer_connected(relay, peer, later, &mut out).is_ok());
}
