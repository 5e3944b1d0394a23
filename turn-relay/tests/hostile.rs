//! natkit-turn attacked through its public interface (issue 15): credential
//! tricks, floods from one address, slow and half-closed streams, restarts,
//! odd datagrams and oversized requests. Loopback only; every load loop is
//! bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::raw::{attr, method, Class};
use natkit_proto::turn::client::Transport;
use natkit_testkit::stream::trickle_binding;

/// Bare unauthenticated Allocates from `ports` sockets on 127.0.0.1, `pps`
/// in all, until `stop` (at most 30 s): strangers on the victim's address.
fn flood_allocates(server: SocketAddr, ports: usize, pps: u64, stop: Arc<AtomicBool>) {
    let socks: Vec<UdpSocket> = (0..ports)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let msg = raw_request(method::ALLOCATE, [7; 12], udp_transport, None, false);
    let gap = Duration::from_nanos(1_000_000_000 / pps);
    let end = Instant::now() + Duration::from_secs(30);
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let _ = socks[i % ports].send_to(&msg, server);
        i += 1;
        next += gap;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// Issue 15, defect 2: a few hundred packets per second from strangers on a
/// client's IP (400 here: twenty times `--unauth-rate`) must not lock that
/// address out. The client that holds an
/// allocation gets its 438 after its nonce goes stale and refreshes; a new
/// client on another port of the same IP gets its 401 and allocates.
#[test]
fn strangers_flooding_from_a_clients_ip_do_not_lock_it_out() {
    let relay = Relay::start(&["--nonce-ttl", "2"]);
    let mut a = RawUdp::new("127.0.0.1", relay.addr);
    let (_, auth) = a.allocate(USER, PASS);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let server = relay.addr;
        std::thread::spawn(move || flood_allocates(server, 4, 400, stop))
    };
    // Let the flood spend the IP's budget, and the nonce go stale (more
    // than 2 whole seconds old).
    std::thread::sleep(Duration::from_millis(3200));
    let t = a.tid();
    let refresh = |auth: &RawAuth, t| raw_request(method::REFRESH, t, |_| {}, Some(auth), true);
    let r = a.exchange_within(&refresh(&auth, t), Duration::from_secs(1));
    let r = r.expect("the 438 to a client with a live allocation is not starved");
    assert_eq!(r.code, Some(438), "{r:?}");
    let fresh = RawAuth {
        nonce: r.text(attr::NONCE).unwrap(),
        ..auth
    };
    let t = a.tid();
    let r = a
        .exchange_within(&refresh(&fresh, t), Duration::from_secs(1))
        .expect("the refresh is answered");
    assert_eq!((r.class, r.code), (Class::Success, None), "{r:?}");
    // A new client on the flooded IP: its first 401 within 2 s, then its
    // allocation.
    let mut b = RawUdp::new("127.0.0.1", relay.addr);
    let t = b.tid();
    let first = raw_request(method::ALLOCATE, t, udp_transport, None, true);
    let r = b
        .exchange_within(&first, Duration::from_secs(2))
        .unwrap_or_else(|| {
            let (_, m) = relay.http("/metrics");
            let drops: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("natkit_turn_dropped_total") || l.contains("unauth"))
                .collect();
            panic!(
                "a new client on the flooded IP gets no 401 within 2 s; relay counters: {drops:#?}"
            )
        });
    assert_eq!(r.code, Some(401));
    b.allocate(USER, PASS);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(relay.metric("natkit_turn_dropped_total{reason=\"rate_limited\"}") > 100.0);
}

/// Issue 15, defect 3: `--unauth-rate` is per source IP over all worker
/// threads: 20 per second with a burst of 80, not that per thread.
#[test]
fn unauth_rate_is_per_ip_across_threads() {
    // Relay::start runs two worker threads.
    let relay = Relay::start(&["--unauth-rate", "20"]);
    // 64 ports (the kernel spreads them over both threads' sockets), 20
    // requests per second each, for 2 seconds.
    let socks: Vec<UdpSocket> = (0..64)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let msg = raw_request(method::REFRESH, [3; 12], |_| {}, None, false);
    let start = Instant::now();
    let mut answers = 0;
    let mut buf = [0u8; 512];
    let mut drain = |socks: &[UdpSocket]| {
        for s in socks {
            while s.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
        }
    };
    for round in 0..40u32 {
        for s in &socks {
            s.send_to(&msg, relay.addr).unwrap();
        }
        drain(&socks);
        let next = start + Duration::from_millis(50) * (round + 1);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let elapsed = start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    drain(&socks);
    // The burst, plus 20 per second of the time it took.
    let most = 80 + (20.0 * elapsed.as_secs_f64()).ceil() as usize + 2;
    assert!(
        (80..=most).contains(&answers),
        "{answers} answers to 2560 requests from one IP in {elapsed:?} (at most {most})"
    );
}

/// Issue 15, defect 5: a frame has a deadline from its first byte. One
/// byte every 1.8 s with a 3 s idle timeout is closed about 3 s after the
/// first byte.
#[test]
fn a_frame_trickled_byte_by_byte_is_closed_at_its_deadline() {
    let relay = Relay::start(&["--tcp-idle-timeout", "3"]);
    let mut s = TcpStream::connect(relay.addr).unwrap();
    let open = trickle_binding(&mut s, Duration::from_millis(1800))
        .expect("the whole frame went through, one byte at a time");
    assert!(
        open >= Duration::from_millis(2500) && open < Duration::from_millis(5000),
        "closed after {open:?}"
    );
}

/// Issue 15, defect 6: a client that sends a request and half-closes
/// (SHUT_WR) gets its answer before the connection closes, every time.
#[test]
fn a_half_closed_client_gets_every_answer() {
    let relay = Relay::start(&[]);
    let mut req = [0u8; 64];
    for i in 0..10u8 {
        let n = binding::write_request(&mut req, &[i; 12], &RequestOptions::default()).unwrap();
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.write_all(&req[..n]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let r = binding::parse_response(&got)
            .unwrap_or_else(|e| panic!("try {i}: {} bytes, not an answer: {e}", got.len()));
        assert_eq!(r.transaction_id, [i; 12]);
    }
}

/// REST credentials for `user` from `secret`, valid an hour.
fn rest(secret: &str, user: &str) -> (String, String) {
    let c = natkit_proto::rest::generate(
        secret.as_bytes(),
        user,
        Duration::from_secs(3600),
        SystemTime::now(),
    );
    (c.username, c.password)
}

fn relay_args(port: u16, metrics: u16, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "20400",
        "--max-port",
        "20449",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--auth-secret",
        "fleet-secret-Hq3",
        "--realm",
        "fleet.example",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Issue 15, defect 7: the nonce key comes from the REST secret, so a
/// nonce outlives a restart and is good on another relay with the same
/// secret; once stale it gets 438 (RFC 8656 §5), not 401.
#[test]
fn nonces_survive_restarts_and_cross_relays_sharing_a_secret() {
    let (port, metrics) = (free_port(), free_port());
    let first = Relay::start_with(relay_args(port, metrics, &[]), port, metrics);
    let mut c = RawUdp::new("127.0.0.1", first.addr);
    let t = c.tid();
    let r = c.exchange(&raw_request(method::ALLOCATE, t, udp_transport, None, true));
    assert_eq!(r.code, Some(401));
    let (user, pass) = rest("fleet-secret-Hq3", "erin");
    let auth = RawAuth {
        user,
        pass,
        realm: r.text(attr::REALM).unwrap(),
        nonce: r.text(attr::NONCE).unwrap(),
    };
    let issued = Instant::now();
    drop(first);

    // Another relay with the same secret (the same one restarted, here):
    // the nonce is its own.
    let second = Relay::start_with(relay_args(port, metrics, &[]), port, metrics);
    let t = c.tid();
    let r = c.exchange(&raw_request(
        method::ALLOCATE,
        t,
        udp_transport,
        Some(&auth),
        true,
    ));
    assert_eq!((r.class, r.code), (Class::Success, None), "{r:?}");
    drop(second);

    // Restarted with a 1 s nonce lifetime, once the nonce is older: 438.
    let third = Relay::start_with(
        relay_args(port, metrics, &["--nonce-ttl", "1"]),
        port,
        metrics,
    );
    if let Some(d) = (issued + Duration::from_millis(2100)).checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
    let mut other_port = RawUdp::new("127.0.0.1", third.addr);
    let c_auth = auth.clone();
    let t = c.tid();
    let r = c.exchange(&raw_request(
        method::ALLOCATE,
        t,
        udp_transport,
        Some(&c_auth),
        true,
    ));
    assert_eq!(r.code, Some(438), "{r:?}");
    // A nonce issued to another address is not accepted, stale or not.
    let t = other_port.tid();
    let r = other_port.exchange(&raw_request(
        method::ALLOCATE,
        t,
        udp_transport,
        Some(&auth),
        true,
    ));
    assert_eq!(r.code, Some(401), "{r:?}");
}

/// Issue 15, defect 8: an empty datagram is relayed as an empty datagram,
/// also in a burst where it follows one of another size (it must not join
/// a GSO train, where a zero-length segment is nothing at all).
#[test]
fn empty_datagrams_in_a_burst_reach_the_peer() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let peer_sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    peer_sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let peer = peer_sock.local_addr().unwrap();
    let (mut a, _) = allocate(relay.addr, Transport::Udp);
    a.bind(peer).unwrap();
    let before = relay.metric("natkit_turn_relayed_packets_total{direction=\"to_peer\"}");
    for _ in 0..20 {
        a.send(peer, b"abc");
        a.send(peer, b"");
    }
    let mut sizes = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = peer_sock.recv_from(&mut buf) {
        sizes.push(n);
    }
    let empty = sizes.iter().filter(|&&n| n == 0).count();
    let three = sizes.iter().filter(|&&n| n == 3).count();
    assert_eq!((three, empty), (20, 20), "sizes at the peer: {sizes:?}");
    let after = relay.metric("natkit_turn_relayed_packets_total{direction=\"to_peer\"}");
    assert_eq!(after - before, 40.0);
}

/// Issue 15, defect 10: one CreatePermission may name several peers (RFC
/// 8656 §9.1): up to `--max-permissions` are installed at once, more are
/// refused with 508 and a reason naming the limit.
#[test]
fn create_permission_with_many_peers() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8", "--max-permissions", "32"]);
    let mut c = RawUdp::new("127.0.0.1", relay.addr);
    let (_, auth) = c.allocate(USER, PASS);
    let peers = |n: u8| {
        move |w: &mut natkit_proto::writer::Writer<'_>| {
            for i in 0..n {
                w.xor_address(
                    attr::XOR_PEER_ADDRESS,
                    SocketAddr::from(([127, 0, 1, i + 1], 9)),
                )
                .unwrap();
            }
        }
    };
    let t = c.tid();
    let r = c.exchange(&raw_request(
        method::CREATE_PERMISSION,
        t,
        peers(20),
        Some(&auth),
        true,
    ));
    assert_eq!((r.class, r.code), (Class::Success, None), "{r:?}");
    assert_eq!(relay.metric("natkit_turn_permissions_created_total"), 20.0);
    let t = c.tid();
    let r = c.exchange(&raw_request(
        method::CREATE_PERMISSION,
        t,
        peers(33),
        Some(&auth),
        true,
    ));
    assert_eq!(r.code, Some(508), "{r:?}");
    assert!(
        r.reason().contains("33 peers") && r.reason().contains("32 permissions"),
        "{}",
        r.reason()
    );
}

/// Issue 15, defect 11: what a spoofed, unauthenticated request draws is
/// at most 3 times its size (coturn's best is 3.6).
#[test]
fn unauthenticated_answers_stay_within_three_times_the_request() {
    let relay = Relay::start(&[]);
    let mut c = RawUdp::new("127.0.0.1", relay.addr);
    let peer = |w: &mut natkit_proto::writer::Writer<'_>| {
        w.xor_address(attr::XOR_PEER_ADDRESS, "192.0.2.1:9".parse().unwrap())
            .unwrap()
    };
    let channel = |w: &mut natkit_proto::writer::Writer<'_>| {
        w.u32(attr::CHANNEL_NUMBER, 0x4000 << 16).unwrap();
        peer(w);
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bare Allocate",
            raw_request(method::ALLOCATE, c.tid(), |_| {}, None, false),
        ),
        (
            "bare Refresh",
            raw_request(method::REFRESH, c.tid(), |_| {}, None, false),
        ),
        (
            "Allocate",
            raw_request(method::ALLOCATE, c.tid(), udp_transport, None, false),
        ),
        (
            "Allocate + FINGERPRINT",
            raw_request(method::ALLOCATE, c.tid(), udp_transport, None, true),
        ),
        (
            "CreatePermission",
            raw_request(method::CREATE_PERMISSION, c.tid(), peer, None, false),
        ),
        (
            "ChannelBind",
            raw_request(method::CHANNEL_BIND, c.tid(), channel, None, false),
        ),
    ];
    for (what, req) in &cases {
        let r = c.exchange(req);
        assert_eq!(r.code, Some(401), "{what}");
        assert!(
            r.len <= 3 * req.len(),
            "{what}: {} bytes draw {} (x{:.1})",
            req.len(),
            r.len,
            r.len as f64 / req.len() as f64
        );
    }
    // The usual first Allocate (with FINGERPRINT, 36 bytes) is still offered
    // SHA-256 (RFC 8489 §9.2.1).
    let r = c.exchange(&cases[3].1);
    assert!(r.get(attr::PASSWORD_ALGORITHMS).is_some(), "{r:?}");
    let t = c.tid();
    let r = c.exchange(&raw_request(method::BINDING, t, |_| {}, None, false));
    assert_eq!((r.class, r.len), (Class::Success, 32));
}
