//! `TurnConnection` against natkit-turn on loopback (and against silent or
//! closed UDP ports): allocation, relayed data both ways over UDP and TCP,
//! two connections raced in one `select!` (cancel safety), ICMP news,
//! handing the UDP parts out and back, and a deferred start.

mod relay_harness;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_ice::turn::{Incoming, TurnConnection};
use natkit_proto::transaction;
use natkit_proto::turn::client::{Config, Credentials, Event, Transport};
use relay_harness::{free_port, start_relay, PASS, USER};

/// Longest one step may take.
const STEP: Duration = Duration::from_secs(10);

fn config(server: SocketAddr, transport: Transport) -> Config {
    Config::new(server, transport, Credentials::new(USER, PASS))
}

/// The next event `pick` accepts (data and other events are dropped).
async fn event<T>(
    c: &mut TurnConnection,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let end = Instant::now() + STEP;
    loop {
        match c.next_until(end).await.unwrap() {
            Some(Incoming::Event(Event::Failed(e))) => panic!("{what}: failed: {e}"),
            Some(Incoming::Event(e)) => {
                if let Some(v) = pick(&e) {
                    return v;
                }
            }
            Some(_) => {}
            None => panic!("no {what} within {STEP:?}"),
        }
    }
}

async fn allocate(c: &mut TurnConnection) -> SocketAddr {
    event(c, "allocation", |e| match e {
        Event::Allocated { relayed, .. } => Some(relayed[0]),
        _ => None,
    })
    .await
}

/// Two allocations relay to each other, first by Send/Data indications,
/// then over channels; their `next()`s race in one `select!`, so the loser
/// is dropped mid-wait again and again: every message must arrive once.
async fn relay_between_two(transport: Transport) {
    let relay = start_relay();
    let limit = Duration::from_secs(5);
    let mut a = TurnConnection::connect(config(relay.addr, transport), None, limit)
        .await
        .unwrap();
    let mut b = TurnConnection::connect(config(relay.addr, transport), None, limit)
        .await
        .unwrap();
    assert_ne!(a.local_addr(), b.local_addr());
    assert_eq!(a.server(), relay.addr);
    let (ra, rb) = (allocate(&mut a).await, allocate(&mut b).await);
    let now = Instant::now();
    a.client().create_permission(rb, now).unwrap();
    b.client().create_permission(ra, now).unwrap();
    let created = |e: &Event| matches!(e, Event::PermissionCreated { .. }).then_some(());
    event(&mut a, "permission", created).await;
    event(&mut b, "permission", created).await;

    for channel in [false, true] {
        if channel {
            let ca = a.client().bind_channel(rb, Instant::now()).unwrap();
            let bound = |e: &Event| matches!(e, Event::ChannelBound { .. }).then_some(());
            event(&mut a, "channel", bound).await;
            assert_eq!(a.client().channel_for(rb), Some(ca));
        }
        // Few enough to fit the sockets' buffers while nobody reads.
        const N: usize = 50;
        for i in 0..N {
            a.send_to(rb, format!("a->b {i}").as_bytes()).await.unwrap();
        }
        // B echoes every message; A collects the echoes.
        let (mut at_b, mut at_a) = (Vec::new(), Vec::new());
        let end = Instant::now() + STEP;
        while at_a.len() < N {
            assert!(Instant::now() < end, "{} of {N} echoes", at_a.len());
            tokio::select! {
                r = a.next() => {
                    if let Incoming::Data { peer, data, channel: c, .. } = r.unwrap() {
                        assert_eq!(peer, rb);
                        // A channel carries the peer's data to its binder
                        // too (RFC 8656 §12.6).
                        assert_eq!(c.is_some(), channel, "ChannelData iff A bound one");
                        at_a.push(String::from_utf8(data).unwrap());
                    }
                }
                r = b.next() => {
                    if let Incoming::Data { peer, data, channel: c, .. } = r.unwrap() {
                        assert_eq!(peer, ra);
                        // B has no channel: A's data comes as Data indications.
                        assert_eq!(c, None);
                        b.client().queue_send(ra, &data).unwrap();
                        at_b.push(String::from_utf8(data).unwrap());
                    }
                }
                _ = tokio::time::sleep_until(end.into()) => {}
            }
        }
        let mut want: Vec<String> = (0..N).map(|i| format!("a->b {i}")).collect();
        // Every message exactly once (the order is not what this checks).
        want.sort();
        at_a.sort();
        at_b.sort();
        assert_eq!(at_b, want);
        assert_eq!(at_a, want);
    }
    for c in [&mut a, &mut b] {
        c.client().close(Instant::now());
        event(c, "close", |e| (*e == Event::Closed).then_some(())).await;
    }
    assert_eq!(a.client().stats().malformed, 0);
}

#[tokio::test]
async fn relays_both_ways_over_udp() {
    relay_between_two(Transport::Udp).await;
}

#[tokio::test]
async fn relays_both_ways_over_tcp() {
    relay_between_two(Transport::Tcp).await;
}

#[tokio::test]
async fn a_closed_port_is_news_and_the_timers_still_decide() {
    // Nothing listens there.
    let port = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cfg = config(port, Transport::Udp);
    cfg.transaction = transaction::Config {
        rto: Duration::from_millis(20),
        rc: 3,
        rm: 4,
    };
    let mut c = TurnConnection::connect(cfg, None, STEP).await.unwrap();
    let end = Instant::now() + STEP;
    let mut unreachable = 0;
    loop {
        match c.next_until(end).await.unwrap().expect("an event in time") {
            Incoming::Unreachable(kind) => {
                assert_eq!(kind, io::ErrorKind::ConnectionRefused);
                unreachable += 1;
            }
            Incoming::Event(Event::Failed(e)) => {
                assert!(
                    matches!(
                        e,
                        natkit_proto::turn::client::ClientError::Timeout { attempts: 3, .. }
                    ),
                    "{e:?}"
                );
                break;
            }
            i => panic!("unexpected {i:?}"),
        }
    }
    assert!(unreachable >= 1);
    assert_eq!(c.icmp_error(), Some(io::ErrorKind::ConnectionRefused));
}

#[tokio::test]
async fn udp_parts_go_out_to_a_load_generator_and_back() {
    let relay = start_relay();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let mut c = TurnConnection::over_udp(sock, config(relay.addr, Transport::Udp)).unwrap();
    assert_eq!(c.local_addr(), local);
    let relayed = allocate(&mut c).await;
    let (client, sock) = c.into_udp_parts().expect("a UDP connection");
    assert_eq!(client.relayed_addresses(), [relayed]);
    // The generator's own use of the socket: a Binding request (RFC 8656
    // §17: the server answers one on the allocation's 5-tuple).
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(STEP)).unwrap();
    assert!(natkit_testkit::ready::answers_binding(&sock, relay.addr));
    let mut c = TurnConnection::from_udp_parts(client, sock).unwrap();
    assert_eq!(c.local_addr(), local);
    c.client().close(Instant::now());
    event(&mut c, "close", |e| (*e == Event::Closed).then_some(())).await;
}

#[tokio::test]
async fn restart_starts_the_first_request_timer_afresh() {
    // A server that never answers: count the Allocates it gets.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let mut cfg = config(server.local_addr().unwrap(), Transport::Udp);
    cfg.transaction.rto = Duration::from_millis(300);
    let mut c = TurnConnection::connect(cfg, None, STEP).await.unwrap();
    // Its turn comes late: the first request's timer has already run out.
    std::thread::sleep(Duration::from_millis(400));
    c.restart(Instant::now());
    assert!(c
        .next_until(Instant::now() + Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    let mut buf = [0u8; 1500];
    let mut got = 0;
    while server.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    // Without the restart the overdue timer would have sent a second one.
    assert_eq!(got, 1);
}
