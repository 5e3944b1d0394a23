//! Interop: the TURN client of webrtc-rs (crate `turn`, an independent
//! implementation) allocates on natkit-turn and relays through it (issue 7,
//! "Interoperability"). Loopback only; every wait is bounded.
//!
//! The `turn` client authenticates after the 401 with the REALM and NONCE
//! it is given (RFC 8489 §9.2), sends with Send indications until its
//! ChannelBind succeeds and then with ChannelData (RFC 8656 §10, §12), and
//! hands received Data indications and ChannelData back as datagrams from
//! the peer. The tests check every payload and its source address, and the
//! relay's metrics show which path carried them.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// Longest any single await may take.
const WAIT: Duration = Duration::from_secs(10);
/// Datagrams per direction and batch.
const COUNT: usize = 100;

/// A `turn` client on its own loopback UDP socket, listening.
async fn turn_client(server: SocketAddr, user: &str, pass: &str) -> Client {
    let conn = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.to_string(),
        password: pass.to_string(),
        // The client takes the REALM from the server's 401 answer.
        realm: String::new(),
        software: String::new(),
        // Loopback: retransmit after 100 ms rather than the RFC's 500 ms.
        rto_in_ms: 100,
        conn: Arc::new(conn),
        vnet: None,
    };
    let client = Client::new(cfg).await.expect("turn client");
    client.listen().await.expect("listen");
    client
}

/// Datagram `i` of batch `batch`: a header naming both, then filler up to
/// a size that varies with `i` (1 byte to about 1.2 kB, odd sizes included
/// so that ChannelData padding is exercised).
fn payload(tag: &str, batch: usize, i: usize) -> Vec<u8> {
    let mut p = format!("{tag}:{batch}:{i}:").into_bytes();
    let len = p.len() + (i * 37) % 1200;
    let mut x = (batch * 7919 + i) as u8;
    while p.len() < len {
        p.push(x);
        x = x.wrapping_mul(31).wrapping_add(7);
    }
    p
}

/// Receives exactly `want.len()` datagrams on `conn`, each from `from`, and
/// checks that they are the expected payloads (in any order: UDP). Any
/// datagram whose header does not start with `tag` is skipped (late
/// priming messages).
async fn expect_payloads(
    conn: &(dyn Conn + Send + Sync),
    from: SocketAddr,
    tag: &str,
    want: &BTreeSet<Vec<u8>>,
) {
    let mut got = BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    let prefix = format!("{tag}:");
    while got.len() < want.len() {
        let (n, src) = timeout(WAIT, conn.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} datagrams tagged {tag} arrived",
                    got.len(),
                    want.len()
                )
            })
            .expect("recv_from");
        if !buf[..n].starts_with(prefix.as_bytes()) {
            continue;
        }
        assert_eq!(src, from, "datagram source");
        let p = buf[..n].to_vec();
        assert!(want.contains(&p), "unexpected payload of {n} bytes");
        assert!(got.insert(p), "duplicate datagram");
    }
    assert_eq!(&got, want);
}

/// Polls a metric (workers publish counters on their ticks) until it
/// reaches `at_least` or two seconds pass; its last value.
fn metric_reaching(relay: &Relay, series: &str, at_least: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let v = relay.metric(series);
        if v >= at_least || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `turn` client and plain UDP peers on loopback (reachable with
/// `--allow-peer`): a STUN Binding on the TURN port, an allocation, then
/// two batches each way, the first sent while the client still uses Send
/// indications, the second once its channel is bound (ChannelData), and
/// from a second peer without a channel (Data indications). Closing
/// deletes the allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_relays_to_a_udp_peer() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let client = turn_client(relay.addr, USER, PASS).await;

    // STUN Binding on the relay's port: the mapped address is the client's
    // own loopback address (no NAT here).
    let mapped = timeout(WAIT, client.send_binding_request())
        .await
        .expect("binding timed out")
        .expect("binding");
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    assert_ne!(mapped.port(), 0);

    let relay_conn = timeout(WAIT, client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocate");
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert_ne!(relayed.port(), relay.addr.port());
    assert_eq!(metric_reaching(&relay, "natkit_turn_allocations", 1.0), 1.0);

    for batch in 0..2 {
        if batch == 1 {
            // The client binds a channel in the background after its first
            // send; the second batch must travel as ChannelData.
            let ch = metric_reaching(&relay, "natkit_turn_channels_bound_total", 1.0);
            assert!(ch >= 1.0, "the turn client never bound a channel");
        }
        // Client -> relay -> peer.
        let out: BTreeSet<Vec<u8>> = (0..COUNT).map(|i| payload("up", batch, i)).collect();
        for i in 0..COUNT {
            let p = payload("up", batch, i);
            let n = timeout(WAIT, relay_conn.send_to(&p, peer_addr))
                .await
                .expect("send_to timed out")
                .expect("send_to");
            // The client reports the bytes it wrote: the Send indication
            // or ChannelData message around the payload.
            assert!(n >= p.len() + 4, "{n} bytes written for {}", p.len());
            // A moderate pace: the peer's receive buffer is never the limit.
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        expect_payloads(&peer, relayed, "up", &out).await;

        // Peer -> relay -> client, as Data indications or ChannelData.
        let back: BTreeSet<Vec<u8>> = (0..COUNT).map(|i| payload("down", batch, i)).collect();
        for i in 0..COUNT {
            peer.send_to(&payload("down", batch, i), relayed)
                .await
                .unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        expect_payloads(&relay_conn, peer_addr, "down", &back).await;

        // A second peer on the same IP is covered by the permission (RFC
        // 8656 §9: permissions are per IP) but has no channel: the relay
        // hands its datagrams to the client as Data indications.
        let side: BTreeSet<Vec<u8>> = (0..COUNT).map(|i| payload("side", batch, i)).collect();
        for i in 0..COUNT {
            other
                .send_to(&payload("side", batch, i), relayed)
                .await
                .unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        expect_payloads(&relay_conn, other_addr, "side", &side).await;
    }
    assert_eq!(
        relay.metric("natkit_turn_channels_bound_total"),
        1.0,
        "one channel, to the first peer only"
    );

    let n = (2 * COUNT) as f64;
    assert_eq!(
        metric_reaching(
            &relay,
            "natkit_turn_relayed_packets_total{direction=\"to_peer\"}",
            n
        ),
        n
    );
    assert_eq!(
        metric_reaching(
            &relay,
            "natkit_turn_relayed_packets_total{direction=\"to_client\"}",
            2.0 * n
        ),
        2.0 * n
    );
    for reason in ["malformed", "no_channel", "no_permission", "denied_peer"] {
        let d = relay.metric(&format!("natkit_turn_dropped_total{{reason=\"{reason}\"}}"));
        assert_eq!(d, 0.0, "dropped as {reason}");
    }

    // Closing the relayed connection refreshes the allocation to 0
    // (RFC 8656 §7.3): the relay lets it go.
    timeout(WAIT, relay_conn.close())
        .await
        .expect("close timed out")
        .expect("close");
    let end = Instant::now() + Duration::from_secs(3);
    while relay.metric("natkit_turn_allocations") != 0.0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(relay.metric("natkit_turn_allocations"), 0.0);
    client.close().await.expect("client close");
}

/// Two `turn` clients exchange data through each other's relayed address,
/// with the default deny list on (loopback peers refused): the relay-to-
/// relay rule lets them through, and a plain loopback peer stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_turn_clients_exchange_data_through_their_relayed_addresses() {
    let relay = Relay::start(&[]);
    let a = turn_client(relay.addr, USER, PASS).await;
    let b = turn_client(relay.addr, USER, PASS).await;
    let ca = timeout(WAIT, a.allocate())
        .await
        .unwrap()
        .expect("allocate A");
    let cb = timeout(WAIT, b.allocate())
        .await
        .unwrap()
        .expect("allocate B");
    let (ra, rb) = (ca.local_addr().unwrap(), cb.local_addr().unwrap());
    assert_ne!(ra, rb);

    // An ordinary loopback peer is on the default deny list: the client's
    // CreatePermission gets 403 and its send fails.
    let outsider = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let refused = timeout(WAIT, ca.send_to(b"x", outsider.local_addr().unwrap()))
        .await
        .expect("send to a denied peer timed out");
    assert!(refused.is_err(), "a loopback peer was not refused");
    assert!(
        metric_reaching(
            &relay,
            "natkit_turn_dropped_total{reason=\"denied_peer\"}",
            1.0
        ) >= 1.0
    );

    // Each side's first send installs its permission for the other's
    // relayed address (A's first datagram may reach B's relay before B's
    // permission exists and be dropped: it is tagged "prime" and ignored).
    timeout(WAIT, ca.send_to(b"prime", rb))
        .await
        .unwrap()
        .expect("A permission");
    timeout(WAIT, cb.send_to(b"prime", ra))
        .await
        .unwrap()
        .expect("B permission");

    for batch in 0..2 {
        if batch == 1 {
            // Both clients bound their channel after their first send.
            let ch = metric_reaching(&relay, "natkit_turn_channels_bound_total", 2.0);
            assert!(ch >= 2.0, "{ch} channels bound, want 2");
        }
        let ab: BTreeSet<Vec<u8>> = (0..COUNT).map(|i| payload("ab", batch, i)).collect();
        let ba: BTreeSet<Vec<u8>> = (0..COUNT).map(|i| payload("ba", batch, i)).collect();
        for i in 0..COUNT {
            let p = payload("ab", batch, i);
            timeout(WAIT, ca.send_to(&p, rb))
                .await
                .unwrap()
                .expect("A send");
            let p = payload("ba", batch, i);
            timeout(WAIT, cb.send_to(&p, ra))
                .await
                .unwrap()
                .expect("B send");
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        expect_payloads(&cb, ra, "ab", &ab).await;
        expect_payloads(&ca, rb, "ba", &ba).await;
    }
    // Relay to relay, each datagram leaves one relay socket (to_peer) and
    // arrives at the other allocation's client (to_client).
    let n = (4 * COUNT) as f64;
    assert!(
        metric_reaching(
            &relay,
            "natkit_turn_relayed_packets_total{direction=\"to_peer\"}",
            n
        ) >= n
    );
    assert!(
        metric_reaching(
            &relay,
            "natkit_turn_relayed_packets_total{direction=\"to_client\"}",
            n
        ) >= n
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// The `turn` crate's REST credentials (`timestamp` username, base64
/// HMAC-SHA1 password) are accepted with `--auth-secret`; a wrong password
/// and credentials signed with another secret are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_credentials_rest_and_wrong_password() {
    let secret = "interop-shared-secret";
    let relay = Relay::start(&["--auth-secret", secret]);

    let (user, pass) =
        turn::auth::generate_long_term_credentials(secret, Duration::from_secs(600)).unwrap();
    let good = turn_client(relay.addr, &user, &pass).await;
    let conn = timeout(WAIT, good.allocate())
        .await
        .expect("allocate timed out")
        .expect("REST credentials from the turn crate");
    assert_eq!(conn.local_addr().unwrap().ip().to_string(), "127.0.0.1");

    let (user, pass) =
        turn::auth::generate_long_term_credentials("another-secret", Duration::from_secs(600))
            .unwrap();
    let forged = turn_client(relay.addr, &user, &pass).await;
    assert!(
        timeout(WAIT, forged.allocate()).await.unwrap().is_err(),
        "credentials signed with another secret were accepted"
    );

    let wrong = turn_client(relay.addr, USER, "not-the-password").await;
    assert!(
        timeout(WAIT, wrong.allocate()).await.unwrap().is_err(),
        "a wrong password was accepted"
    );
    assert!(metric_reaching(&relay, "natkit_turn_auth_failures_total", 2.0) >= 2.0);
    assert_eq!(relay.metric("natkit_turn_allocations"), 1.0);
    for c in [good, forged, wrong] {
        c.close().await.unwrap();
    }
}
