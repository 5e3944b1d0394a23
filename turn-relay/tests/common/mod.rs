//! Harness for natkit-turn's integration tests: the binary on loopback, and
//! natkit's TURN client (natkit-testkit's blocking `TurnTestClient`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use natkit_proto::turn::client::{Config, Credentials, Transport};
pub use natkit_testkit::TurnTestClient;
use natkit_testkit::{ports, ready};

pub const USER: &str = "alice";
pub const PASS: &str = "wonderland";
/// Longest one step may take.
pub const STEP: Duration = Duration::from_secs(10);
/// Longest the relay may take to open an endpoint: a debug build on a
/// loaded 2-core machine (as natkit-testkit's relay builder allows).
pub const START: Duration = Duration::from_secs(30);

static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

// Not every test binary uses both.
#[allow(unused_imports)]
pub use natkit_testkit::{free_port, TempDir};

/// A running natkit-turn, killed by PID on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: u16,
}

impl Relay {
    /// Start on a free loopback port with relay ports of its own, user
    /// `alice`, metrics, and `extra` flags.
    pub fn start(extra: &[&str]) -> Relay {
        Self::start_at(free_port(), free_port(), extra)
    }

    /// [`Relay::start`] on ports chosen ahead (two relays that name each
    /// other, e.g. as alternates).
    pub fn start_at(port: u16, metrics: u16, extra: &[&str]) -> Relay {
        let slot = NEXT_RANGE.fetch_add(1, Ordering::SeqCst);
        // 12000-19999: relay ports of these tests, apart from the other test
        // binaries' ranges and below the ephemeral ports. The PID spreads
        // processes (nextest runs each test in its own); a port another
        // process holds is skipped by the relay anyway.
        let (min, max) = ports::pid_block(12_000, 40, 4, slot, 50);
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--relay-ip".into(),
            "127.0.0.1".into(),
            "--min-port".into(),
            min.to_string(),
            "--max-port".into(),
            max.to_string(),
            "--user".into(),
            format!("{USER}:{PASS}"),
            "--metrics".into(),
            format!("127.0.0.1:{metrics}"),
            "--threads".into(),
            "2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(args, port, metrics)
    }

    pub fn start_with(args: Vec<String>, port: u16, metrics: u16) -> Relay {
        let stderr = if std::env::var_os("NATKIT_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::spawn(args, port, metrics, stderr, &[])
    }

    /// Start with its log (stderr) written to `log`, with extra environment.
    pub fn start_logged(
        args: Vec<String>,
        port: u16,
        metrics: u16,
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Relay {
        let file = std::fs::File::create(log).unwrap();
        Self::spawn(args, port, metrics, Stdio::from(file), env)
    }

    fn spawn(
        args: Vec<String>,
        port: u16,
        metrics: u16,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_natkit-turn"))
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start natkit-turn");
        let mut r = Relay {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics,
        };
        r.wait_ready();
        r.wait_serving();
        r
    }

    fn wait_ready(&mut self) {
        ready::wait_binding(&mut self.child, "natkit-turn", self.addr, START);
    }

    /// GET a path of the metrics endpoint; returns (status line, body).
    pub fn http(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// The value of one metric series (name with labels, as printed).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http("/metrics");
        natkit_testkit::http::metric(&body, series)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Wait for the process to exit; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < end,
                "natkit-turn did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A REST credential minted from `secret` for `user`, valid 10 minutes.
pub fn rest(secret: &str, user: &str) -> (String, String) {
    let c = natkit_proto::rest::generate(
        secret.as_bytes(),
        user,
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    );
    (c.username, c.password)
}

/// natkit's TURN client (natkit-testkit's `TurnTestClient`: natkit-ice's
/// `TurnConnection` behind a blocking facade) for `user`, over UDP or TCP.
pub fn node(server: SocketAddr, transport: Transport, user: &str, pass: &str) -> TurnTestClient {
    let mut cfg = Config::new(server, transport, Credentials::new(user, pass));
    // Loopback: no need to wait the RFC's 39.5 s for a lost answer.
    cfg.transaction.rto = Duration::from_millis(100);
    TurnTestClient::connect(cfg)
}

/// An allocation of this crate's user, or a panic.
pub fn allocate(server: SocketAddr, transport: Transport) -> (TurnTestClient, SocketAddr) {
    let mut n = node(server, transport, USER, PASS);
    let relayed = n.allocated().expect("allocation");
    (n, relayed)
}

/// A TCP allocation (RFC 6062) of this crate's user over a TCP control
/// connection, or a panic.
pub fn tcp_allocate(server: SocketAddr) -> (TurnTestClient, SocketAddr) {
    let mut cfg = Config::new(server, Transport::Tcp, Credentials::new(USER, PASS));
    cfg.relayed = natkit_proto::turn::client::RelayedTransport::Tcp;
    cfg.transaction.rto = Duration::from_millis(100);
    let mut n = TurnTestClient::connect(cfg);
    let relayed = n.allocated().expect("a TCP allocation");
    (n, relayed)
}

/// Ask `n`'s relay to connect to `peer` (RFC 6062 §4.3): the CONNECTION-ID,
/// or the error.
pub fn tcp_connect(
    n: &mut TurnTestClient,
    peer: SocketAddr,
) -> Result<u32, natkit_proto::turn::client::ClientError> {
    use natkit_proto::turn::client::Event;
    n.client().connect(peer, Instant::now()).unwrap();
    n.wait("Connected or ConnectFailed", |e| match e {
        Event::Connected {
            peer: p,
            connection_id,
        } if *p == peer => Some(Ok(*connection_id)),
        Event::ConnectFailed { peer: p, error } if *p == peer => Some(Err(error.clone())),
        _ => None,
    })
}

impl Relay {
    /// Wait (bounded by [`START`]) until the TCP listener answers a Binding
    /// request and the metrics endpoint serves `/metrics`: each endpoint the
    /// tests use, asked itself.
    pub fn wait_serving(&mut self) {
        ready::wait_binding_tcp(&mut self.child, "natkit-turn", self.addr, START);
        ready::wait_http_ok(
            SocketAddr::from(([127, 0, 0, 1], self.metrics)),
            "/metrics",
            START,
        );
    }

    /// Wait until the TLS listener on `addr` accepts connections.
    pub fn wait_tls(&self, addr: SocketAddr) {
        ready::wait_tcp(addr, "natkit-turn's TLS listener", START);
    }
}

// ---------------------------------------------------------------- raw TURN

use natkit_proto::integrity::{LongTermKey, PasswordAlgorithm};
use natkit_proto::raw::{self, attr, method, Attributes, Class};
use natkit_proto::writer::Writer;

/// Long-term credentials for a hand-built request (MD5 keys, RFC 8489
/// §9.2.2): what a client answering a 401 sends.
#[derive(Debug, Clone)]
pub struct RawAuth {
    pub user: String,
    pub pass: String,
    pub realm: String,
    pub nonce: String,
}

impl RawAuth {
    /// The credentials of `user` answering `challenge`, which must be a 401 with REALM and
    /// NONCE (RFC 8489 §9.2.4).
    pub fn answering(challenge: &RawAnswer, user: &str, pass: &str) -> RawAuth {
        assert_eq!(challenge.code, Some(401), "{challenge:?}");
        RawAuth {
            user: user.into(),
            pass: pass.into(),
            realm: challenge.text(attr::REALM).unwrap(),
            nonce: challenge.text(attr::NONCE).unwrap(),
        }
    }
}

/// A hand-built TURN request: method `m`, attributes from `body`, then
/// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY with `auth`, then
/// FINGERPRINT when `fingerprint`.
pub fn raw_request(
    m: u16,
    tid: [u8; 12],
    body: impl FnOnce(&mut Writer<'_>),
    auth: Option<&RawAuth>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let mut w = Writer::new(&mut buf, m, Class::Request, &tid).unwrap();
    body(&mut w);
    if let Some(a) = auth {
        w.bytes(attr::USERNAME, a.user.as_bytes()).unwrap();
        w.bytes(attr::REALM, a.realm.as_bytes()).unwrap();
        w.bytes(attr::NONCE, a.nonce.as_bytes()).unwrap();
        let key = LongTermKey::derive(PasswordAlgorithm::Md5, &a.user, &a.realm, &a.pass);
        w.message_integrity(key.as_bytes()).unwrap();
    }
    let n = if fingerprint {
        w.fingerprint().unwrap()
    } else {
        w.finish()
    };
    buf.truncate(n);
    buf
}

/// REQUESTED-TRANSPORT UDP, for Allocate bodies.
pub fn udp_transport(w: &mut Writer<'_>) {
    w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
}

/// A STUN answer, decoded enough for tests.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub len: usize,
    pub class: Class,
    pub tid: [u8; 12],
    pub code: Option<u16>,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl RawAnswer {
    /// Decode `bytes` (a whole STUN message), or `None`.
    pub fn parse(bytes: &[u8]) -> Option<RawAnswer> {
        let h = raw::parse_datagram(bytes).ok()?;
        let attrs: Vec<(u16, Vec<u8>)> = Attributes::new(bytes, &h)
            .map(|a| a.map(|a| (a.typ, a.value.to_vec())))
            .collect::<Result<_, _>>()
            .ok()?;
        let code = attrs
            .iter()
            .find(|(t, _)| *t == attr::ERROR_CODE)
            .and_then(|(_, v)| raw::decode_error_code(v));
        Some(RawAnswer {
            len: bytes.len(),
            class: h.class(),
            tid: h.transaction_id,
            code,
            attrs,
        })
    }

    pub fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| &v[..])
    }

    pub fn text(&self, t: u16) -> Option<String> {
        self.get(t).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The reason phrase of ERROR-CODE.
    pub fn reason(&self) -> String {
        self.get(attr::ERROR_CODE)
            .map(|v| String::from_utf8_lossy(&v[4..]).into_owned())
            .unwrap_or_default()
    }
}

/// A UDP socket sending hand-built requests to a relay, waiting up to
/// `STEP` for the answer with the same transaction ID.
pub struct RawUdp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    next: u64,
}

impl RawUdp {
    pub fn new(local_ip: &str, server: SocketAddr) -> RawUdp {
        let sock = UdpSocket::bind((local_ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        RawUdp {
            sock,
            server,
            next: 1,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn tid(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.next.to_be_bytes());
        t[8..].copy_from_slice(&std::process::id().to_be_bytes());
        self.next += 1;
        t
    }

    /// Send `msg` (retransmitted every 200 ms, as RFC 8489 §6.2.1 allows)
    /// until its answer comes, within `limit`.
    pub fn exchange_within(&self, msg: &[u8], limit: Duration) -> Option<RawAnswer> {
        let tid: [u8; 12] = msg[8..20].try_into().unwrap();
        let end = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            self.sock.send_to(msg, self.server).unwrap();
            let wait_until = (Instant::now() + Duration::from_millis(200)).min(end);
            while Instant::now() < wait_until {
                if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                    if from != self.server {
                        continue;
                    }
                    if let Some(a) = RawAnswer::parse(&buf[..n]) {
                        if a.tid == tid {
                            return Some(a);
                        }
                    }
                }
            }
        }
        None
    }

    pub fn exchange(&self, msg: &[u8]) -> RawAnswer {
        self.exchange_within(msg, STEP)
            .unwrap_or_else(|| panic!("no answer from {} within {STEP:?}", self.server))
    }

    /// A 401 for an Allocate, then an authenticated Allocate: the relayed
    /// address and the credentials that worked (with their nonce).
    pub fn allocate(&mut self, user: &str, pass: &str) -> (SocketAddr, RawAuth) {
        let t = self.tid();
        let r = self.exchange(&raw_request(method::ALLOCATE, t, udp_transport, None, true));
        let auth = RawAuth::answering(&r, user, pass);
        let t = self.tid();
        let r = self.exchange(&raw_request(
            method::ALLOCATE,
            t,
            udp_transport,
            Some(&auth),
            true,
        ));
        assert_eq!((r.class, r.code), (Class::Success, None), "{r:?}");
        let relayed =
            raw::decode_xor_address(r.get(attr::XOR_RELAYED_ADDRESS).unwrap(), &r.tid).unwrap();
        (relayed, auth)
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Allocate over a stream (TCP or TLS; 401, then with credentials): (XOR-MAPPED-ADDRESS, relayed), or
/// the error code of the second answer.
pub fn stream_allocate(
    s: &mut (impl Read + Write),
    user: &str,
    pass: &str,
) -> Result<(SocketAddr, SocketAddr), u16> {
    let tid = |n: u8| [n, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7];
    s.write_all(&raw_request(
        method::ALLOCATE,
        tid(1),
        udp_transport,
        None,
        true,
    ))
    .unwrap();
    let r = RawAnswer::parse(
        &natkit_testkit::stream::read_stun_message(s).expect("an answer to Allocate"),
    )
    .unwrap();
    let auth = RawAuth::answering(&r, user, pass);
    s.write_all(&raw_request(
        method::ALLOCATE,
        tid(2),
        udp_transport,
        Some(&auth),
        true,
    ))
    .unwrap();
    let r = RawAnswer::parse(
        &natkit_testkit::stream::read_stun_message(s).expect("an answer to Allocate"),
    )
    .unwrap();
    if r.class != Class::Success {
        return Err(r.code.unwrap_or(0));
    }
    let addr = |a| raw::decode_xor_address(r.get(a).unwrap(), &r.tid).unwrap();
    Ok((
        addr(attr::XOR_MAPPED_ADDRESS),
        addr(attr::XOR_RELAYED_ADDRESS),
    ))
}
