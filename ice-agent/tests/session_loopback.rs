//! Two sessions on loopback: ICE, then QUIC over the selected pair, with
//! data checked end to end; and the failures a session must name.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use natkit_ice::session::ConfigError;
use natkit_ice::{Config, Description, Role};
use natkit_ice::{Error, PathKind, Session};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn fast_ice(role: Role) -> Config {
    Config {
        role,
        consent_interval: Duration::from_millis(500),
        consent_timeout: Duration::from_secs(3),
        ..Config::default()
    }
}

async fn session(role: Role) -> Session {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Session::builder()
        .bind([LO])
        .ice_config(fast_ice(role))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap()
}

/// Both sides connect concurrently; returns (controlling, controlled).
async fn pair(a: &Session, b: &Session) -> (quinn::Connection, quinn::Connection) {
    let (da, db) = (a.local_description().await, b.local_description().await);
    let (ra, rb) = tokio::join!(a.connect(db), b.connect(da));
    (ra.unwrap(), rb.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pair_carries_a_quic_stream_both_ways() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let t0 = Instant::now();
    let (ca, cb) = pair(&a, &b).await;
    let took = t0.elapsed();
    let pa = a.path().unwrap();
    assert_eq!(pa.kind, PathKind::Host, "{pa}");
    assert_eq!(pa.remote.addr, b.local_addrs()[0]);
    assert!(took < Duration::from_secs(5), "{took:?}");

    // 1 MiB each way on one bidirectional stream, checked byte for byte.
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i: u32| (i * 7 + i / 251) as u8)
        .collect();
    let server = tokio::spawn(async move {
        let (mut s, mut r) = cb.accept_bi().await.unwrap();
        let got = r.read_to_end(4 << 20).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.finish().unwrap();
        s.stopped().await.ok();
        got.len()
    });
    let (mut s, mut r) = ca.open_bi().await.unwrap();
    s.write_all(&data).await.unwrap();
    s.finish().unwrap();
    let echoed = r.read_to_end(4 << 20).await.unwrap();
    assert_eq!(server.await.unwrap(), data.len());
    assert!(echoed == data, "echo differs");
}

#[tokio::test]
async fn a_wrong_fingerprint_fails_the_handshake_on_both_sides() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let (da, mut db) = (a.local_description().await, b.local_description().await);
    // A is told a fingerprint that B's certificate does not have.
    db.fingerprint.0[0] ^= 0xFF;
    let (ra, rb) = tokio::join!(a.connect(db), b.connect(da));
    assert!(
        matches!(ra, Err(Error::FingerprintMismatch { .. })),
        "controlling side: {ra:?}"
    );
    assert!(
        matches!(rb, Err(Error::FingerprintMismatch { .. })),
        "controlled side: {rb:?}"
    );
}

#[tokio::test]
async fn a_damaged_description_is_a_description_error() {
    let a = session(Role::Controlling).await;
    let text = a.local_description().await.to_string();
    let cut = &text[..text.len() - 5];
    let e = cut.parse::<Description>().unwrap_err();
    assert!(
        e.to_string().contains("damaged") || e.to_string().contains("truncated"),
        "{e}"
    );
}

#[tokio::test]
async fn no_usable_pair_is_reported_in_bounded_time_with_what_was_tried() {
    let a = Session::builder()
        .bind([LO])
        .ice_config(fast_ice(Role::Controlling))
        .connect_timeout(Duration::from_secs(4))
        .build()
        .await
        .unwrap();
    let b = session(Role::Controlled).await;
    let db = b.local_description().await;
    // B never runs ICE (it never gets A's description): nothing answers.
    drop(b);
    let t0 = Instant::now();
    let e = a.connect(db).await.unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(6), "{took:?}");
    match &e {
        Error::NoPath { pairs, .. } => {
            assert!(!pairs.is_empty(), "{e}");
            let text = e.to_string();
            assert!(text.contains("127.0.0.1"), "{e}");
            // Its checks were still being retransmitted when time ran out.
            assert!(
                text.contains("still being checked when time ran out"),
                "{e}"
            );
            assert!(!text.contains("(0 checks sent)"), "{e}");
        }
        other => panic!("expected NoPath, got {other:?}"),
    }
}

#[tokio::test]
async fn a_vanished_peer_is_consent_lost() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let (ca, _cb) = pair(&a, &b).await;
    let mut events = a.events();
    b.close();
    drop(b);
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), a.closed())
        .await
        .expect("consent loss within the timeout");
    assert!(matches!(e, Error::ConsentLost { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(8));
    // Degraded came first (2.5 consent intervals of silence), then lost.
    let mut seen = Vec::new();
    while let Some(ev) = events.try_recv() {
        seen.push(ev);
    }
    let degraded = seen
        .iter()
        .position(|e| matches!(e, natkit_ice::SessionEvent::PathDegraded { silent_for, .. } if *silent_for >= Duration::from_millis(1250)));
    let lost = seen
        .iter()
        .position(|e| matches!(e, natkit_ice::SessionEvent::ConsentLost(_)));
    assert!(
        matches!((degraded, lost), (Some(d), Some(l)) if d < l),
        "{seen:?}"
    );
    // The QUIC connection is closed with the consent-lost code.
    let reason = tokio::time::timeout(Duration::from_secs(5), ca.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            reason,
            quinn::ConnectionError::LocallyClosed
                | quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::TimedOut
        ),
        "{reason:?}"
    );
}

/// ICE restart (RFC 8445 §9) under a running QUIC stream: new credentials
/// both ways, a pair selected again, the stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_keeps_the_quic_connection() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let (ca, cb) = pair(&a, &b).await;
    let (mut s, mut r) = ca.open_bi().await.unwrap();
    s.write_all(b"one").await.unwrap();
    let (mut bs, mut br) = cb.accept_bi().await.unwrap();
    let mut buf = [0u8; 3];
    br.read_exact(&mut buf).await.unwrap();

    let old = a.local_description_now();
    let mut events = a.events();
    let offer = a.restart().await.unwrap();
    assert_ne!(offer.ufrag, old.ufrag);
    assert_ne!(offer.pwd, old.pwd);
    // The peer sees new credentials: it restarts too and answers.
    assert!(b.set_remote_description(offer).await.unwrap());
    let answer = b.local_description().await;
    assert!(!a.set_remote_description(answer).await.unwrap());
    let p = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(natkit_ice::SessionEvent::PathChanged(p)) => return p,
                Some(_) => {}
                None => panic!("the session ended"),
            }
        }
    })
    .await
    .expect("a pair selected after the restart");
    assert_eq!(p.kind, PathKind::Host);

    s.write_all(b"two").await.unwrap();
    s.finish().unwrap();
    assert_eq!(br.read_to_end(16).await.unwrap(), b"two");
    bs.write_all(b"ok").await.unwrap();
    bs.finish().unwrap();
    assert_eq!(r.read_to_end(16).await.unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_host_pair() {
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let mk = |role| {
        Session::builder()
            .bind([v6])
            .ice_config(fast_ice(role))
            .build()
    };
    let (a, b) = (
        mk(Role::Controlling).await.unwrap(),
        mk(Role::Controlled).await.unwrap(),
    );
    let (ca, cb) = pair(&a, &b).await;
    assert!(a.path().unwrap().remote.addr.is_ipv6());
    let mut s = ca.open_uni().await.unwrap();
    s.write_all(b"v6").await.unwrap();
    s.finish().unwrap();
    let mut r = cb.accept_uni().await.unwrap();
    assert_eq!(r.read_to_end(8).await.unwrap(), b"v6");
}

/// The controlled side answers checks before it has the peer's description
/// (RFC 8445 §7.3), so the controlling side can finish ICE and send its
/// QUIC Initial first. The Initial must wait for the description, not be
/// refused and retransmitted a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_description_on_the_controlled_side_costs_no_retransmission() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let (da, db) = (a.local_description().await, b.local_description().await);
    let a2 = a.clone();
    let ta = tokio::spawn(async move { a2.connect(db).await });
    // A's checks are answered; its Initial arrives before B knows A.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let cb = b.connect(da).await.unwrap();
    let took = t0.elapsed();
    let ca = ta.await.unwrap().unwrap();
    assert!(took < Duration::from_millis(500), "{took:?}");
    let mut s = ca.open_uni().await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.finish().unwrap();
    assert_eq!(
        cb.accept_uni().await.unwrap().read_to_end(4).await.unwrap(),
        b"x"
    );
}

/// Applications spawn these futures on multi-threaded runtimes.
#[test]
fn session_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let _check = |s: Session, d: Description, t: natkit_ice::TrickleCandidate| {
        send(s.connect(d.clone()));
        send(s.set_remote_description(d));
        send(s.add_remote_candidate(t));
        send(s.local_description());
        send(s.restart());
        send(s.check_list());
        send(s.closed());
        send(s.wait_idle());
    };
}

/// A restart that the peer never answers still ends as consent lost
/// (RFC 7675: the consent timeout counts from the last answer), not only
/// with QUIC's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_restart_ends_as_consent_lost() {
    let (a, b) = (
        session(Role::Controlling).await,
        session(Role::Controlled).await,
    );
    let (_ca, _cb) = pair(&a, &b).await;
    b.close();
    drop(b);
    // A restarts (as an application does on PathDegraded); nobody answers.
    let _offer = a.restart().await.unwrap();
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(8), a.closed())
        .await
        .expect("consent lost within the consent timeout");
    assert!(matches!(e, Error::ConsentLost { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

/// Two local addresses each (two host bases, four pairs): the session
/// reads both sockets and QUIC runs over the pair ICE selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bases_each() {
    let ips = [LO, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let mk = |role| {
        Session::builder()
            .bind(ips)
            .ice_config(fast_ice(role))
            .build()
    };
    let (a, b) = (
        mk(Role::Controlling).await.unwrap(),
        mk(Role::Controlled).await.unwrap(),
    );
    assert_eq!(a.local_addrs().len(), 2);
    assert_eq!(a.local_description().await.candidates.len(), 2);
    let (ca, cb) = pair(&a, &b).await;
    let (pa, pb) = (a.path().unwrap(), b.path().unwrap());
    // Both agree on the pair (each side's view mirrored).
    assert_eq!(pa.local.base, pb.remote.addr);
    assert_eq!(pa.remote.addr, pb.local.base);
    let mut s = ca.open_uni().await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.finish().unwrap();
    let got = cb
        .accept_uni()
        .await
        .unwrap()
        .read_to_end(200_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 100_000);
}

/// Host gathering from the interfaces (no traffic is sent: no servers, no
/// peer, and no port mapping, which would ask this machine's real
/// gateway): loopback addresses only when asked for.
#[tokio::test]
async fn host_candidates_come_from_the_interfaces_loopback_only_when_asked() {
    let with = Session::builder()
        .loopback(true)
        .port_mapping(false)
        .build()
        .await
        .unwrap();
    let ips: Vec<IpAddr> = with.local_addrs().iter().map(|a| a.ip()).collect();
    assert!(ips.contains(&LO), "{ips:?}");
    let d = with.local_description().await;
    assert!(d.candidates.iter().any(|c| c.addr.ip() == LO), "{d:?}");
    for c in &d.candidates {
        assert_eq!(c.kind, natkit_ice::CandidateKind::Host);
        assert!(!c.addr.ip().is_unspecified() && c.addr.port() != 0);
    }
    // Without loopback: whatever else is up (maybe nothing in a bare
    // namespace, which is a clear configuration error), never loopback.
    match Session::builder().port_mapping(false).build().await {
        Ok(without) => assert!(
            without.local_addrs().iter().all(|a| !a.ip().is_loopback()),
            "{:?}",
            without.local_addrs()
        ),
        Err(Error::Config(ConfigError::NoUsableAddress)) => {}
        Err(e) => panic!("{e:?}"),
    }
}
