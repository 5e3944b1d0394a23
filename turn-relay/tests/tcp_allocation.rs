//! TCP allocations (RFC 6062) through the binary, with natkit's own TURN
//! client (natkit-proto's, driven by natkit-testkit's `TurnTestClient`):
//! Connect and ConnectionAttempt, data connections bound and carrying
//! bytes both ways (checked byte for byte), the error cases. Loopback only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::raw::{attr, method, Class};
use natkit_proto::turn::client::{ClientError, Event};

/// A relay that lets peers on loopback be relayed to.
fn relay() -> Relay {
    Relay::start(&["--allow-peer", "127.0.0.0/8"])
}

/// `len` bytes no two connections of a test share.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// `len` bytes each way at once between a bound data connection and its
/// peer, each side checked byte for byte.
fn both_ways(data: &mut TcpStream, peer: &mut TcpStream, len: usize, seed: u8) {
    let up = pattern(seed, len);
    let down = pattern(seed.wrapping_add(1), len);
    for s in [&*data, &*peer] {
        s.set_read_timeout(Some(STEP)).unwrap();
    }
    // Writers on their own threads: neither side waits for the other to
    // read before it can write.
    let mut d = data.try_clone().unwrap();
    let mut p = peer.try_clone().unwrap();
    let (u, w) = (up.clone(), down.clone());
    let writers = [
        std::thread::spawn(move || d.write_all(&u).unwrap()),
        std::thread::spawn(move || p.write_all(&w).unwrap()),
    ];
    let mut got = vec![0u8; len];
    peer.read_exact(&mut got)
        .expect("the client's bytes at the peer");
    assert!(got == up, "client -> peer bytes differ");
    data.read_exact(&mut got)
        .expect("the peer's bytes at the client");
    assert!(got == down, "peer -> client bytes differ");
    for w in writers {
        w.join().unwrap();
    }
}

/// Whether `s` reaches EOF (or a reset) within `STEP`, reading nothing else.
fn closes(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(n) => panic!("{n} unexpected bytes"),
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// A TCP allocation that Connected to a loopback listener (RFC 6062
/// §4.3): the client, its relayed address, the CONNECTION-ID and the
/// peer's end of the connection, not bound yet.
fn allocation_connected_to_a_peer(relay: &Relay) -> (TurnTestClient, SocketAddr, u32, TcpStream) {
    let (mut n, relayed) = tcp_allocate(relay.addr);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let id = tcp_connect(&mut n, listener.local_addr().unwrap()).expect("Connect");
    let (peer, _) = listener.accept().unwrap();
    (n, relayed, id, peer)
}

/// Wait for `n`'s next ConnectionAttempt (§4.5): the peer and the
/// CONNECTION-ID.
fn connection_attempt(n: &mut TurnTestClient) -> (SocketAddr, u32) {
    n.wait("ConnectionAttempt", |e| match e {
        Event::ConnectionAttempt {
            peer,
            connection_id,
        } => Some((*peer, *connection_id)),
        _ => None,
    })
}

/// Active (Connect, §4.3) and passive (ConnectionAttempt, §4.5)
/// connections through natkit-turn, each bound on a data connection of its
/// own and carrying 256 KiB each way; closing one side closes the other.
#[test]
fn connect_and_connection_attempt_carry_bytes_both_ways() {
    let relay = relay();
    let (mut n, relayed) = tcp_allocate(relay.addr);
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = listener.local_addr().unwrap();

    // Active: the relay connects from the relayed address.
    let id = tcp_connect(&mut n, peer_addr).expect("Connect");
    let (mut peer, from) = listener.accept().unwrap();
    assert_eq!(from, relayed, "the peer sees the relayed address");
    // A second Connect to the same peer while the first lives: 446.
    assert_eq!(
        tcp_connect(&mut n, peer_addr),
        Err(ClientError::ConnectionAlreadyExists)
    );
    // Bytes the peer sends before the bind wait for it (§5.2).
    peer.write_all(b"early").unwrap();
    let mut data = n.bind_data_connection(relay.addr, id).expect("bound");
    let mut early = [0u8; 5];
    data.set_read_timeout(Some(STEP)).unwrap();
    data.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"early");
    both_ways(&mut data, &mut peer, 256 * 1024, 1);

    // Passive: the Connect installed the peer's permission, so a
    // connection from it to the relayed address is announced.
    let mut peer2 = TcpStream::connect(relayed).expect("connect to the relayed address");
    let (from, id2) = connection_attempt(&mut n);
    assert_eq!(from, peer2.local_addr().unwrap());
    assert_ne!(id2, id);
    let mut data2 = n.bind_data_connection(relay.addr, id2).expect("bound");
    both_ways(&mut data2, &mut peer2, 256 * 1024, 7);
    // The id is used up: binding it again is 400.
    assert_eq!(
        n.bind_data_connection(relay.addr, id2).err(),
        Some(ClientError::Other(400))
    );

    // The peer closes: the client's data connection closes too; and the
    // other way round.
    drop(peer);
    assert!(closes(&mut data), "the data connection follows its peer");
    drop(data2);
    assert!(closes(&mut peer2), "the peer follows its data connection");

    assert!(
        relay.metric("natkit_turn_tcp_relayed_bytes_total{direction=\"to_peer\"}")
            >= 2.0 * 256.0 * 1024.0
    );
    assert!(
        relay.metric("natkit_turn_tcp_relayed_bytes_total{direction=\"to_client\"}")
            >= 2.0 * 256.0 * 1024.0 + 5.0
    );
    assert_eq!(
        relay.metric("natkit_turn_tcp_peer_connections_total{event=\"bound\"}"),
        2.0
    );
}

/// A ConnectionBind on a new data connection passes at once with the
/// nonce its allocation's control connection holds (RFC 6062 §5.4; as
/// coturn does): no challenge per data connection, so a client that keeps
/// one nonce for its allocation is never handed a nonce for another
/// address (coturn's `turnutils_uclient -T` stalled on exactly that).
#[test]
fn connection_bind_passes_with_the_allocations_nonce() {
    use natkit_proto::turn::client::BindOutcome;
    let relay = relay();
    let (mut n, _, id, mut peer) = allocation_connected_to_a_peer(&relay);
    let mut data = TcpStream::connect(relay.addr).unwrap();
    data.set_read_timeout(Some(STEP)).unwrap();
    let mut bind = n.client().connection_bind(id).unwrap();
    data.write_all(bind.request()).unwrap();
    let answer = natkit_testkit::stream::read_stun_message(&mut data).expect("an answer");
    assert!(
        matches!(bind.handle_response(&answer), BindOutcome::Bound),
        "the first ConnectionBind is answered with success"
    );
    both_ways(&mut data, &mut peer, 1000, 5);
    // The control connection's nonce is still good.
    n.client().refresh_now(Instant::now());
    n.wait("the Refresh", |e| {
        matches!(e, Event::Refreshed { .. }).then_some(())
    });
    assert_eq!(relay.metric("natkit_turn_auth_failures_total"), 0.0);
}

/// Two TCP allocations of one relay Connect to each other's relayed
/// addresses. The first Connect makes the connection, which the other
/// allocation's client hears of as a ConnectionAttempt from the first's
/// relayed address; its own Connect to that address would be the same TCP
/// connection (one 4-tuple), so it gets 446 Connection Already Exists
/// (RFC 6062 §5.2), as from coturn, and never a connection from some other
/// port that the peer could not tell apart from a stranger. The one
/// connection, bound at both ends, carries bytes both ways.
#[test]
fn allocations_connecting_to_each_other_share_one_connection() {
    let relay = relay();
    let (mut a, ra) = tcp_allocate(relay.addr);
    let (mut b, rb) = tcp_allocate(relay.addr);
    b.permit(ra).expect("B's permission for A");
    let id_a = tcp_connect(&mut a, rb).expect("A's Connect");
    let (from, id_b) = connection_attempt(&mut b);
    assert_eq!(from, ra, "the connection comes from A's relayed address");
    assert_eq!(
        tcp_connect(&mut b, ra),
        Err(ClientError::ConnectionAlreadyExists)
    );
    let mut da = a.bind_data_connection(relay.addr, id_a).expect("A bound");
    let mut db = b.bind_data_connection(relay.addr, id_b).expect("B bound");
    both_ways(&mut da, &mut db, 64 * 1024, 21);
    assert_eq!(
        relay.metric("natkit_turn_tcp_peer_connections_total{event=\"bound\"}"),
        2.0
    );
}

/// Ending the allocation (Refresh 0) closes its spliced connections; a
/// peer without a permission is closed at once and never announced.
#[test]
fn allocation_end_closes_connections_and_strangers_are_refused() {
    let relay = relay();
    let (mut n, relayed, id, mut peer) = allocation_connected_to_a_peer(&relay);
    let mut data = n.bind_data_connection(relay.addr, id).expect("bound");
    both_ways(&mut data, &mut peer, 1000, 3);

    // From 127.0.0.2: no permission for that IP.
    let stranger =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stranger
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    stranger.connect(&relayed.into()).unwrap();
    let mut stranger: TcpStream = stranger.into();
    assert!(closes(&mut stranger), "no permission, no connection");
    assert_eq!(
        relay.metric("natkit_turn_tcp_peer_connections_total{event=\"refused\"}"),
        1.0
    );
    assert!(n
        .events
        .iter()
        .all(|e| !matches!(e, Event::ConnectionAttempt { .. })));

    n.close();
    assert!(closes(&mut peer), "the allocation's end closes the peer");
    assert!(closes(&mut data), "and the data connection");
}

/// The errors of RFC 6062 through the binary: a TCP allocation over UDP
/// (442), Connect to a denied peer (403) and to a closed port (447), a
/// ConnectionBind with an unknown CONNECTION-ID (400).
#[test]
fn tcp_allocation_errors() {
    let relay = relay();
    // Over UDP: 442 Unsupported Transport Protocol (§5.1).
    let mut udp = RawUdp::new("127.0.0.1", relay.addr);
    let tcp = |w: &mut natkit_proto::writer::Writer<'_>| {
        w.u32(attr::REQUESTED_TRANSPORT, 6 << 24).unwrap()
    };
    let t = udp.tid();
    let r = udp.exchange(&raw_request(method::ALLOCATE, t, tcp, None, true));
    let auth = RawAuth::answering(&r, USER, PASS);
    let t = udp.tid();
    let r = udp.exchange(&raw_request(method::ALLOCATE, t, tcp, Some(&auth), true));
    assert_eq!((r.class, r.code), (Class::Error, Some(442)), "{r:?}");

    let (mut n, _) = tcp_allocate(relay.addr);
    // 10.0.0.0/8 is on the default deny list: 403.
    let denied: SocketAddr = "10.1.2.3:80".parse().unwrap();
    assert_eq!(tcp_connect(&mut n, denied), Err(ClientError::Forbidden));
    // A loopback port nothing listens on: refused, 447.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    assert_eq!(
        tcp_connect(&mut n, closed_addr),
        Err(ClientError::ConnectionFailed)
    );
    // No such connection: 400 (§5.4).
    assert_eq!(
        n.bind_data_connection(relay.addr, 0x0bad_cafe).err(),
        Some(ClientError::Other(400))
    );
    assert!(
        relay.metric("natkit_turn_tcp_peer_connections_total{event=\"connect_failed\"}") >= 1.0
    );
}

/// A TCP control connection that holds an allocation lives by the
/// allocation's lifetime, not by `tcp-idle-timeout` (RFC 8656 §7: a
/// client may send nothing but a Refresh every few minutes; closing its
/// connection would end the allocation, §3.1, and the peer connections
/// spliced for it). With a 1 s idle timeout: a connection without an
/// allocation is closed after about 1 s of silence; one with a TCP
/// allocation stays open through quiet spells of 1.5 s, refreshing in
/// between, and its spliced data connection keeps carrying bytes; once
/// the allocation is deleted the idle timeout applies to it again.
#[test]
fn an_allocation_keeps_its_quiet_control_connection_past_the_idle_timeout() {
    const IDLE: Duration = Duration::from_secs(1);
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8", "--tcp-idle-timeout", "1"]);

    // Without an allocation: closed for idleness.
    let mut bare = TcpStream::connect(relay.addr).unwrap();
    let start = Instant::now();
    assert!(
        closes(&mut bare),
        "an idle connection without an allocation"
    );
    let after = start.elapsed();
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "closed after {after:?}"
    );

    let (mut n, _, id, mut peer) = allocation_connected_to_a_peer(&relay);
    let mut data = n.bind_data_connection(relay.addr, id).expect("bound");
    for round in 0..3u8 {
        // Silence on the control connection for longer than the idle
        // timeout (driving it: a close would fail the test at once).
        assert_eq!(
            n.closed_within(IDLE + IDLE / 2),
            None,
            "round {round}: the control connection closed"
        );
        n.client().refresh_now(Instant::now());
        n.wait("the Refresh", |e| {
            matches!(e, Event::Refreshed { .. }).then_some(())
        });
        both_ways(&mut data, &mut peer, 1000, 10 + round);
    }

    // Deleted: the connection has no allocation, so silence closes it.
    n.close();
    assert!(closes(&mut data), "the deletion closes the data connection");
    let after = n
        .closed_within(STEP)
        .expect("the idle timeout closes the control connection");
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "closed {after:?} after the deletion"
    );
}
