//! Issue 15, defect 1, through the binary: a pipeline of requests that can
//! never authenticate, from four TCP connections, must not stall the relay
//! nor grow its memory. Heavy: it has the machine to itself under
//! cargo-nextest (.config/nextest.toml) and is the only test of its binary.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::framing::Deframer;
use natkit_proto::raw::{attr, method};
use natkit_proto::turn::client::Transport;
use natkit_testkit::ready;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(4);

/// One attacker: a TCP connection that gets a nonce from a 401, then sends
/// CreatePermission requests with that nonce, a username and a wrong
/// MESSAGE-INTEGRITY as fast as the relay takes them, reading and dropping
/// whatever comes back, until `stop` (bounded by 30 s).
fn attacker(server: SocketAddr, stop: Arc<AtomicBool>) {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let peer = |w: &mut natkit_proto::writer::Writer<'_>| {
        w.xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.9:9".parse().unwrap())
            .unwrap()
    };
    s.write_all(&raw_request(
        method::CREATE_PERMISSION,
        [1; 12],
        peer,
        None,
        false,
    ))
    .unwrap();
    let mut d = Deframer::new(4096, true);
    let challenge = loop {
        let n = s.read(d.read_buf()).unwrap();
        assert!(n > 0, "closed before the 401");
        d.filled(n, Instant::now());
        if let Some(f) = d.next_frame().unwrap() {
            break RawAnswer::parse(f.message).unwrap();
        }
    };
    assert_eq!(challenge.code, Some(401));
    let auth = RawAuth {
        user: USER.into(),
        pass: "not-the-password".into(),
        realm: challenge.text(attr::REALM).unwrap(),
        nonce: challenge.text(attr::NONCE).unwrap(),
    };
    let one = raw_request(method::CREATE_PERMISSION, [2; 12], peer, Some(&auth), false);
    let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * 500).collect();
    let mut reader = s.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let end = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        if s.write_all(&burst).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = drain.join();
}

#[test]
fn unauthenticatable_tcp_pipelines_do_not_stall_the_relay_or_grow_it() {
    // Relay::start runs two worker threads.
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let pid = relay.child.id();
    // An existing allocation with a channel to a peer that echoes.
    let echo = UdpSocket::bind("127.0.0.2:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let peer = echo.local_addr().unwrap();
    let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
    a.bind(peer).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut got = 0u64;
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    if from == relayed {
                        got += 1;
                        let _ = echo.send_to(&buf[..n], relayed);
                    }
                }
            }
            got
        })
    };
    let rss_before = rss_kib(pid);

    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let server = relay.addr;
            std::thread::spawn(move || attacker(server, stop))
        })
        .collect();
    // Let the pipelines fill.
    std::thread::sleep(Duration::from_millis(500));

    // During the flood: a steady stream through the allocation, Binding
    // requests on the UDP listener, and the relay's memory.
    let start = Instant::now();
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0u64;
    let mut back = 0u64;
    let mut bindings = 0;
    let mut max_rss = rss_before;
    let mut next_binding = start;
    while start.elapsed() < FLOOD {
        for _ in 0..5 {
            a.send(peer, &sent.to_be_bytes());
            sent += 1;
        }
        back += a.recv_for(Duration::from_millis(10)).len() as u64;
        if Instant::now() >= next_binding && bindings < 8 {
            assert!(
                ready::answers_binding(&probe, relay.addr),
                "Binding request {} not answered within 500 ms during the flood",
                bindings + 1
            );
            bindings += 1;
            next_binding += FLOOD / 8;
        }
        max_rss = max_rss.max(rss_kib(pid));
    }
    back += a.recv_for(Duration::from_millis(500)).len() as u64;
    stop.store(true, Ordering::Relaxed);
    for t in attackers {
        t.join().unwrap();
    }
    let to_peer = echoer.join().unwrap();
    assert_eq!(bindings, 8);
    let lost_to_peer = 1.0 - to_peer as f64 / sent as f64;
    let lost_back = 1.0 - back as f64 / to_peer.max(1) as f64;
    assert!(
        lost_to_peer < 0.05 && lost_back < 0.05,
        "sent {sent}, {to_peer} reached the peer, {back} came back"
    );
    assert!(
        max_rss < 64 * 1024,
        "RSS {rss_before} KiB before the flood, up to {max_rss} KiB during it"
    );
    // The flood was refused, cheaply: most of it dropped unchecked.
    assert!(relay.metric("natkit_turn_dropped_total{reason=\"rate_limited\"}") > 1000.0);
}
