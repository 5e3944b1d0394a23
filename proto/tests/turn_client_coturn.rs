//! natkit's sans-IO TURN client against coturn's `turnserver` on loopback,
//! through small blocking drivers (UDP and TCP) written here.
//!
//! Each test starts its own `turnserver` on free loopback ports and kills it
//! (by PID) when done. coturn must be installed (`/usr/bin/turnserver`, the
//! Debian package `coturn`); the README test command installs it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime};

use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::framing::{self, FrameKind};
use natkit_proto::transaction;
use natkit_proto::turn::client::{
    Client, ClientError, Config, Credentials, Event, State, Transport,
};

const TURNSERVER: &str = "/usr/bin/turnserver";
const USER: &str = "u";
const PASS: &str = "p";
const REALM: &str = "natkit";
/// A peer address the relay is told to deny, to see its 403.
const DENIED_PEER: &str = "127.0.0.99:9";
/// Longest any single step may take.
const STEP: Duration = Duration::from_secs(10);

/// Relay port ranges handed out to the servers of this test binary, so
/// tests running in parallel do not share ports.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

/// A `turnserver` process, killed by PID on drop.
struct Coturn {
    child: Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

impl Coturn {
    /// Start with long-term credentials `u:p` (`auth` = None) or with a REST
    /// shared secret.
    fn start(rest_secret: Option<&str>) -> Coturn {
        let port = free_port();
        let range = NEXT_RANGE.fetch_add(1, Ordering::SeqCst);
        // 50 relay ports per server, above the usual ephemeral range start
        // of other tools, offset by our PID so that two test runs differ.
        // 25000-27999: apart from the other test binaries' relay ranges and
        // below the ephemeral ports.
        let base = 25_000 + ((std::process::id() % 15) as u16 * 4 + range % 4) * 50;
        let dir = std::env::temp_dir().join(format!("natkit-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("turn.pid");
        let mut cmd = Command::new(TURNSERVER);
        cmd.arg("-n")
            .arg(format!("--pidfile={}", pidfile.display()))
            .args(["--listening-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--relay-ip", "127.0.0.1"])
            .args(["--min-port", &base.to_string()])
            .args(["--max-port", &(base + 49).to_string()])
            .args(["--realm", REALM])
            .arg("--allow-loopback-peers")
            .arg(format!(
                "--denied-peer-ip={}",
                DENIED_PEER.split(':').next().unwrap()
            ))
            .args(["--no-cli", "--no-tls", "--no-dtls", "--no-stdout-log"])
            .arg(format!("--log-file={}", dir.join("turn.log").display()))
            .arg("--simple-log");
        match rest_secret {
            None => {
                cmd.args(["--user", &format!("{USER}:{PASS}"), "--lt-cred-mech"]);
            }
            Some(s) => {
                cmd.arg("--use-auth-secret")
                    .arg(format!("--static-auth-secret={s}"));
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (is coturn installed?)");
        let server = Coturn {
            child,
            port,
            _dir: TempDir(dir),
        };
        server.wait_ready();
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Poll with Binding requests until the server answers over UDP and
    /// accepts TCP connections (bounded: 10 s).
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while Instant::now() < end {
            let tid = transaction::new_transaction_id();
            let n = binding::write_request(&mut buf, &tid, &RequestOptions::default()).unwrap();
            sock.send_to(&buf[..n], self.addr()).unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if binding::parse_response(&buf[..n]).is_ok_and(|r| r.transaction_id == tid)
                    && TcpStream::connect(self.addr()).is_ok()
                {
                    return;
                }
            }
        }
        panic!("turnserver did not come up on {}", self.addr());
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a node talks to the server.
enum Link {
    Udp(UdpSocket, SocketAddr),
    Tcp { stream: TcpStream, buf: Vec<u8> },
}

impl Link {
    fn connect(transport: Transport, server: SocketAddr) -> Link {
        match transport {
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                Link::Udp(s, server)
            }
            Transport::Tcp => {
                let s = TcpStream::connect(server).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_nonblocking(true).unwrap();
                Link::Tcp {
                    stream: s,
                    buf: Vec::new(),
                }
            }
            Transport::Tls => panic!("this test drives UDP and TCP links only"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Udp(s, server) => {
                s.send_to(bytes, *server).unwrap();
            }
            Link::Tcp { stream, .. } => {
                // Nonblocking: retry until the whole message is written
                // (bounded by STEP).
                let end = Instant::now() + STEP;
                let mut rest = bytes;
                while !rest.is_empty() {
                    match stream.write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(e) => panic!("TCP write: {e}"),
                    }
                }
            }
        }
    }

    /// Everything that has arrived, one message each.
    fn recv_all(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut tmp = [0u8; 65_536];
        match self {
            Link::Udp(s, server) => loop {
                match s.recv_from(&mut tmp) {
                    Ok((n, from)) if from == *server => out.push(tmp[..n].to_vec()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            },
            Link::Tcp { stream, buf } => {
                loop {
                    match stream.read(&mut tmp) {
                        Ok(0) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        Err(_) => break,
                    }
                }
                // RFC 8489 §6.2.2, RFC 8656 §12.5: cut the stream into
                // STUN messages and padded ChannelData.
                while let Some(f) = framing::next_frame(buf, true, 65_536 + 20).unwrap() {
                    let end = match f.kind {
                        FrameKind::Stun => f.message_len,
                        FrameKind::ChannelData => f.consumed,
                    };
                    out.push(buf[..end].to_vec());
                    buf.drain(..f.consumed);
                }
            }
        }
        out
    }
}

/// A client with its link and the events it has reported.
struct Node {
    client: Client,
    link: Link,
    events: Vec<Event>,
    /// ChannelData messages received from the server.
    channel_data_in: usize,
}

impl Node {
    fn new(cfg: Config) -> Node {
        let link = Link::connect(cfg.transport, cfg.server);
        Node {
            client: Client::new(cfg, Instant::now()),
            link,
            events: Vec::new(),
            channel_data_in: 0,
        }
    }

    /// One round of the driver loop.
    fn step(&mut self) {
        let now = Instant::now();
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        while let Some(t) = self.client.poll_transmit() {
            self.link.send(&t.payload);
        }
        for msg in self.link.recv_all() {
            self.channel_data_in += usize::from(msg[0] >> 6 == 1);
            self.client.handle_input(&msg, Instant::now());
        }
        while let Some(t) = self.client.poll_transmit() {
            self.link.send(&t.payload);
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
    }

    /// Remove and return the first event `pick` accepts.
    fn take<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> Option<T> {
        let i = self.events.iter().position(|e| pick(e).is_some())?;
        pick(&self.events.remove(i))
    }

    /// Send `data` to `peer` through the relay (ChannelData or Send).
    fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let n = self.client.send_to(peer, data, &mut buf).unwrap();
        self.link.send(&buf[..n]);
        buf[..n].to_vec()
    }
}

/// Run the nodes until `done` holds (bounded by STEP).
fn pump<T>(
    nodes: &mut [&mut Node],
    what: &str,
    mut done: impl FnMut(&mut [&mut Node]) -> Option<T>,
) -> T {
    let end = Instant::now() + STEP;
    loop {
        for n in nodes.iter_mut() {
            n.step();
        }
        if let Some(v) = done(nodes) {
            return v;
        }
        if Instant::now() > end {
            let evs: Vec<_> = nodes
                .iter()
                .map(|n| (&n.events, n.client.state()))
                .collect();
            panic!("timed out waiting for {what}; events and states: {evs:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn allocate(node: &mut Node) -> SocketAddr {
    pump(&mut [node], "allocation", |n| {
        if let Some(e) = n[0].take(|e| matches!(e, Event::Failed(_)).then(|| e.clone())) {
            panic!("allocation failed: {e:?}");
        }
        n[0].take(|e| match e {
            Event::Allocated {
                relayed,
                mapped,
                lifetime,
            } => {
                assert_eq!(relayed.len(), 1);
                assert_eq!(mapped.ip(), relayed[0].ip(), "all on loopback");
                assert!(*lifetime >= Duration::from_secs(60));
                Some(relayed[0])
            }
            _ => None,
        })
    })
}

fn config(server: &Coturn, transport: Transport, creds: Credentials) -> Config {
    Config::new(server.addr(), transport, creds)
}

/// Both directions, first by Send/Data indications, then over channels.
fn relay_between_two_clients(transport: Transport) {
    let server = Coturn::start(None);
    let creds = Credentials::new(USER, PASS);
    let mut a = Node::new(config(&server, transport, creds.clone()));
    let mut b = Node::new(config(&server, transport, creds));
    let ra = allocate(&mut a);
    let rb = allocate(&mut b);
    assert_ne!(ra, rb);

    let now = Instant::now();
    a.client.create_permission(rb, now).unwrap();
    b.client.create_permission(ra, now).unwrap();
    pump(&mut [&mut a, &mut b], "permissions", |n| {
        // Look without taking: one side may be ready rounds before the other.
        let ok = |n: &Node| {
            n.events
                .iter()
                .any(|e| matches!(e, Event::PermissionCreated { .. }))
        };
        (ok(n[0]) && ok(n[1])).then_some(())
    });
    assert!(a.client.has_permission(rb) && b.client.has_permission(ra));

    // Send indications out, Data indications in.
    exchange(&mut a, &mut b, ra, rb, 20, false);

    let ca = a.client.bind_channel(rb, Instant::now()).unwrap();
    let cb = b.client.bind_channel(ra, Instant::now()).unwrap();
    pump(&mut [&mut a, &mut b], "channel binds", |n| {
        let ok = |n: &Node| {
            n.events
                .iter()
                .any(|e| matches!(e, Event::ChannelBound { .. }))
        };
        (ok(n[0]) && ok(n[1])).then_some(())
    });
    assert_eq!(a.client.channel_for(rb), Some(ca));
    assert_eq!(b.client.channel_for(ra), Some(cb));

    // ChannelData both ways.
    exchange(&mut a, &mut b, ra, rb, 20, true);

    // A denied peer: coturn answers 403, the allocation lives on.
    let denied: SocketAddr = DENIED_PEER.parse().unwrap();
    a.client.create_permission(denied, Instant::now()).unwrap();
    let err = pump(&mut [&mut a], "denied permission", |n| {
        n[0].take(|e| match e {
            Event::PermissionFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
    });
    assert_eq!(err, ClientError::Forbidden);
    assert_eq!(a.client.state(), State::Allocated);

    for n in [&mut a, &mut b] {
        n.client.close(Instant::now());
        pump(&mut [n], "close", |n| {
            n[0].take(|e| (*e == Event::Closed).then_some(()))
        });
    }
    assert_eq!(a.client.stats().forged, 0);
    assert_eq!(a.client.stats().malformed, 0);
}

/// `count` messages each way; checks every payload, its source and the
/// message kind on the wire.
fn exchange(
    a: &mut Node,
    b: &mut Node,
    ra: SocketAddr,
    rb: SocketAddr,
    count: usize,
    channel: bool,
) {
    let kind = if channel { "channel" } else { "send" };
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for i in 0..count {
        let to_b = format!("a->b {i} {kind}").into_bytes();
        let to_a = format!("b->a {i} {kind}").into_bytes();
        // ChannelData starts with 0b01, STUN with 0b00 (RFC 7983).
        assert_eq!(a.send_to(rb, &to_b)[0] >> 6 == 1, channel);
        assert_eq!(b.send_to(ra, &to_a)[0] >> 6 == 1, channel);
        want_a.push((rb, to_a));
        want_b.push((ra, to_b));
    }
    let data_count = |n: &Node| {
        n.events
            .iter()
            .filter(|e| matches!(e, Event::Data { .. }))
            .count()
    };
    pump(&mut [&mut *a, &mut *b], "data", |n| {
        (data_count(n[0]) >= count && data_count(n[1]) >= count).then_some(())
    });
    for (n, mut want) in [(a, want_a), (b, want_b)] {
        // The relay answers a bound channel with ChannelData too
        // (RFC 8656 §12.6); before that, with Data indications.
        assert_eq!(n.channel_data_in, if channel { count } else { 0 });
        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        n.events.retain(|e| match e {
            Event::Data { peer, data } => {
                got.push((*peer, data.clone()));
                false
            }
            _ => true,
        });
        // Loopback UDP does not reorder in practice, but order is not what
        // this checks: every payload arrives once, from the right peer.
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}

#[test]
fn udp_clients_relay_through_coturn_by_send_indication_and_channel() {
    relay_between_two_clients(Transport::Udp);
}

#[test]
fn tcp_clients_relay_through_coturn_by_send_indication_and_channel() {
    relay_between_two_clients(Transport::Tcp);
}

#[test]
fn wrong_password_is_wrong_credentials() {
    let server = Coturn::start(None);
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut n = Node::new(config(&server, transport, Credentials::new(USER, "wrong")));
        let err = pump(&mut [&mut n], "failure", |n| {
            n[0].take(|e| match e {
                Event::Failed(err) => Some(err.clone()),
                _ => None,
            })
        });
        assert_eq!(err, ClientError::WrongCredentials, "{transport:?}");
        assert_eq!(n.client.state(), State::Failed);
    }
}

#[test]
fn rest_credentials_from_a_shared_secret() {
    let server = Coturn::start(Some("natkit-test-secret"));
    let creds = Credentials::from_rest_secret(
        b"natkit-test-secret",
        "alice",
        Duration::from_secs(3600),
        SystemTime::now(),
    );
    let mut n = Node::new(config(&server, Transport::Udp, creds));
    allocate(&mut n);
    // Expired REST credentials are refused.
    let old = Credentials::from_rest_secret(
        b"natkit-test-secret",
        "alice",
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    );
    let mut n = Node::new(config(&server, Transport::Udp, old));
    let err = pump(&mut [&mut n], "failure", |n| {
        n[0].take(|e| match e {
            Event::Failed(err) => Some(err.clone()),
            _ => None,
        })
    });
    assert_eq!(err, ClientError::WrongCredentials);
}

#[test]
fn unreachable_server_times_out() {
    // Nothing listens on this port; a short timer keeps the test quick.
    let port = free_port();
    let mut cfg = Config::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Transport::Udp,
        Credentials::new(USER, PASS),
    );
    cfg.transaction = transaction::Config {
        rto: Duration::from_millis(20),
        rc: 3,
        rm: 4,
    };
    let mut n = Node::new(cfg);
    let err = pump(&mut [&mut n], "timeout", |n| {
        n[0].take(|e| match e {
            Event::Failed(err) => Some(err.clone()),
            _ => None,
        })
    });
    match err {
        ClientError::Timeout { waited, attempts } => {
            assert_eq!(attempts, 3);
            assert!(waited >= Duration::from_millis(140), "{waited:?}");
        }
        e => panic!("expected a timeout, got {e:?}"),
    }
}
