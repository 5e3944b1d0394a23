//! natkit's sans-IO TURN client against coturn's `turnserver` on loopback,
//! over UDP and TCP, driven by natkit-testkit's `TurnTestClient` (natkit-ice's
//! `TurnConnection` behind a blocking facade: the one copy of the client's
//! I/O).
//!
//! Each test starts its own `turnserver` on free loopback ports and kills it
//! (by PID) when done. coturn must be installed (`/usr/bin/turnserver`, the
//! Debian package `coturn`); the README test command installs it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, SystemTime};

use natkit_proto::transaction;
use natkit_proto::turn::client::{ClientError, Config, Credentials, State, Transport};
use natkit_testkit::{free_port, ready, TempDir, TurnTestClient};

const TURNSERVER: &str = "/usr/bin/turnserver";
const USER: &str = "u";
const PASS: &str = "p";
const REALM: &str = "natkit";
/// A peer address the relay is told to deny, to see its 403.
const DENIED_PEER: &str = "127.0.0.99:9";
/// Longest coturn may take to come up.
const START: Duration = Duration::from_secs(10);

/// Relay port ranges handed out to the servers of this test binary, so
/// tests running in parallel do not share ports.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

/// A `turnserver` process, killed by PID on drop.
struct Coturn {
    child: Child,
    port: u16,
    _dir: TempDir,
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
        let dir = TempDir::new("natkit-coturn");
        let pidfile = dir.path().join("turn.pid");
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
            .arg(format!(
                "--log-file={}",
                dir.path().join("turn.log").display()
            ))
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
        let mut server = Coturn {
            child,
            port,
            _dir: dir,
        };
        // Answers over UDP, then accepts TCP (the TCP tests' listener).
        let addr = server.addr();
        ready::wait_binding(&mut server.child, "turnserver", addr, START);
        ready::wait_tcp(addr, "turnserver", START);
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of `server` over `transport`, allocating.
fn client(server: &Coturn, transport: Transport, creds: Credentials) -> TurnTestClient {
    TurnTestClient::connect(Config::new(server.addr(), transport, creds))
}

fn allocate(node: &mut TurnTestClient) -> SocketAddr {
    let relayed = node.allocated().expect("allocation");
    let (mapped, lifetime) = (
        node.client().mapped_address().expect("a mapped address"),
        node.client().lifetime(),
    );
    assert_eq!(node.client().relayed_addresses().len(), 1);
    assert_eq!(mapped.ip(), relayed.ip(), "all on loopback");
    assert!(lifetime >= Duration::from_secs(60));
    relayed
}

/// Both directions, first by Send/Data indications, then over channels.
fn relay_between_two_clients(transport: Transport) {
    let server = Coturn::start(None);
    let creds = Credentials::new(USER, PASS);
    let mut a = client(&server, transport, creds.clone());
    let mut b = client(&server, transport, creds);
    let ra = allocate(&mut a);
    let rb = allocate(&mut b);
    assert_ne!(ra, rb);

    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    assert!(a.client().has_permission(rb) && b.client().has_permission(ra));

    // Send indications out, Data indications in.
    exchange(&mut a, &mut b, ra, rb, 20, false);

    let ca = a.bind(rb).unwrap();
    let cb = b.bind(ra).unwrap();
    assert_eq!(a.client().channel_for(rb), Some(ca));
    assert_eq!(b.client().channel_for(ra), Some(cb));

    // ChannelData both ways.
    exchange(&mut a, &mut b, ra, rb, 20, true);

    // A denied peer: coturn answers 403, the allocation lives on.
    let denied: SocketAddr = DENIED_PEER.parse().unwrap();
    assert_eq!(a.permit(denied), Err(ClientError::Forbidden));
    assert_eq!(a.client().state(), State::Allocated);

    a.close();
    b.close();
    assert_eq!(a.client().stats().forged, 0);
    assert_eq!(a.client().stats().malformed, 0);
}

/// `count` messages each way; checks every payload, its source and the
/// message kind on the wire.
fn exchange(
    a: &mut TurnTestClient,
    b: &mut TurnTestClient,
    ra: SocketAddr,
    rb: SocketAddr,
    count: usize,
    channel: bool,
) {
    let kind = if channel { "channel" } else { "send" };
    // The client frames ChannelData exactly when a channel is bound.
    assert_eq!(a.client().channel_for(rb).is_some(), channel);
    assert_eq!(b.client().channel_for(ra).is_some(), channel);
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for i in 0..count {
        let to_b = format!("a->b {i} {kind}").into_bytes();
        let to_a = format!("b->a {i} {kind}").into_bytes();
        a.send(rb, &to_b);
        b.send(ra, &to_a);
        want_a.push((rb, to_a));
        want_b.push((ra, to_b));
    }
    for (n, mut want) in [(&mut *a, want_a), (&mut *b, want_b)] {
        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for _ in 0..count {
            let d = n.recv_data();
            // The relay answers a bound channel with ChannelData too
            // (RFC 8656 §12.6); before that, with Data indications.
            assert_eq!(d.channel.is_some(), channel, "{d:?}");
            got.push((d.peer, d.data));
        }
        // Loopback UDP does not reorder in practice, but order is not what
        // this checks: every payload arrives once, from the right peer.
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
    // And nothing more.
    for n in [a, b] {
        assert!(n.recv_for(Duration::from_millis(50)).is_empty());
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
        let mut n = client(&server, transport, Credentials::new(USER, "wrong"));
        assert_eq!(n.failed(), ClientError::WrongCredentials, "{transport:?}");
        assert_eq!(n.client().state(), State::Failed);
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
    let mut n = client(&server, Transport::Udp, creds);
    allocate(&mut n);
    // Expired REST credentials are refused.
    let old = Credentials::from_rest_secret(
        b"natkit-test-secret",
        "alice",
        Duration::from_secs(60),
        SystemTime::now() - Duration::from_secs(3600),
    );
    let mut n = client(&server, Transport::Udp, old);
    assert_eq!(n.failed(), ClientError::WrongCredentials);
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
    let mut n = TurnTestClient::connect(cfg);
    match n.failed() {
        ClientError::Timeout { waited, attempts } => {
            assert_eq!(attempts, 3);
            assert!(waited >= Duration::from_millis(140), "{waited:?}");
        }
        e => panic!("expected a timeout, got {e:?}"),
    }
    // The closed port answered with ICMP; the timers still decided.
    assert!(n.unreachable >= 1);
}

/// Bytes both ways between a bound data connection and the peer.
fn echo_both_ways(data: &mut std::net::TcpStream, peer: &mut std::net::TcpStream) {
    use std::io::{Read, Write};
    peer.set_read_timeout(Some(START)).unwrap();
    data.write_all(b"from the client").unwrap();
    let mut buf = [0u8; 15];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the client");
    peer.write_all(b"from the peer").unwrap();
    let mut buf = [0u8; 13];
    data.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the peer");
}

/// RFC 6062 against coturn: a TCP allocation over a TCP control
/// connection; Connect to a peer (active), and a peer connecting in
/// (passive, a ConnectionAttempt), each bound on a data connection of its
/// own and carrying bytes both ways.
#[test]
fn tcp_allocation_connects_and_accepts_through_coturn() {
    use natkit_proto::turn::client::{Event, RelayedTransport};
    let server = Coturn::start(None);
    let mut cfg = Config::new(server.addr(), Transport::Tcp, Credentials::new(USER, PASS));
    cfg.relayed = RelayedTransport::Tcp;
    let mut node = TurnTestClient::connect(cfg);
    let relayed = node.allocated().expect("a TCP allocation");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap();
    node.permit(peer_addr).expect("permission for the peer");

    // Active: the relay connects to the peer.
    node.client()
        .connect(peer_addr, std::time::Instant::now())
        .unwrap();
    let id = node.wait("Connected", |e| match e {
        Event::Connected {
            peer,
            connection_id,
        } if *peer == peer_addr => Some(*connection_id),
        Event::ConnectFailed { error, .. } => panic!("Connect failed: {error}"),
        _ => None,
    });
    let (mut peer, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), relayed.ip());
    assert_eq!(from.port(), relayed.port(), "from the relayed address");
    let mut data = node.bind_data_connection(server.addr(), id).expect("bound");
    echo_both_ways(&mut data, &mut peer);

    // Passive: a peer connects to the relayed address.
    let mut peer2 = std::net::TcpStream::connect(relayed).expect("connect to the relayed address");
    let id2 = node.wait("ConnectionAttempt", |e| match e {
        Event::ConnectionAttempt { connection_id, .. } => Some(*connection_id),
        _ => None,
    });
    assert_ne!(id2, id);
    let mut data2 = node
        .bind_data_connection(server.addr(), id2)
        .expect("bound");
    echo_both_ways(&mut data2, &mut peer2);
}
