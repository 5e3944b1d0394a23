//! Sessions through natkit-turn on loopback: relay-only over UDP and TCP,
//! the relay's failures named, and a direct pair taking over from the relay
//! under a running QUIC stream.

mod relay_harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_ice::{CandidateKind, Config, Role, TurnServer};
use natkit_ice::{Error, PathKind, Problem, ServerKind, Session, SessionEvent};
use natkit_proto::turn::client::{ClientError, Credentials, Transport};
use relay_harness::{start_relay, start_relay_with, PASS, USER};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn ice(role: Role) -> Config {
    Config {
        role,
        consent_interval: Duration::from_millis(500),
        consent_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

fn relay_only_builder(role: Role, turn: TurnServer) -> natkit_ice::session::Builder {
    relay_harness::init_tracing();
    Session::builder()
        .bind([LO])
        .turn_server(turn)
        .relay_only(true)
        .ice_config(ice(role))
        .connect_timeout(Duration::from_secs(15))
}

async fn relay_only(role: Role, turn: TurnServer) -> Result<Session, Error> {
    relay_only_builder(role, turn).build().await
}

fn creds() -> Credentials {
    Credentials::new(USER, PASS)
}

/// Connect both, move 256 KiB each way, check it.
async fn connect_and_echo(a: &Session, b: &Session) -> Duration {
    let (da, db) = (a.local_description().await, b.local_description().await);
    let t0 = Instant::now();
    let (ca, cb) = tokio::join!(a.connect(db), b.connect(da));
    let took = t0.elapsed();
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let echo = tokio::spawn(async move {
        let (mut s, mut r) = cb.accept_bi().await.unwrap();
        let got = r.read_to_end(1 << 20).await.unwrap();
        s.write_all(&got).await.unwrap();
        s.finish().unwrap();
        s.stopped().await.ok();
    });
    let (mut s, mut r) = ca.open_bi().await.unwrap();
    s.write_all(&data).await.unwrap();
    s.finish().unwrap();
    let back = r.read_to_end(1 << 20).await.unwrap();
    echo.await.unwrap();
    assert!(back == data, "relayed echo differs");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_over_udp_and_over_tcp() {
    let relay = start_relay();
    for (name, turn) in [
        ("udp", TurnServer::udp(relay.addr, creds())),
        ("tcp", TurnServer::tcp(relay.addr, creds())),
    ] {
        let a = relay_only(Role::Controlling, turn.clone()).await.unwrap();
        let b = relay_only(Role::Controlled, turn).await.unwrap();
        let da = a.local_description().await;
        assert!(
            da.candidates
                .iter()
                .all(|c| c.kind == CandidateKind::Relayed)
                && !da.candidates.is_empty(),
            "{name}: {da:?}"
        );
        let took = connect_and_echo(&a, &b).await;
        let p = a.path().unwrap();
        assert_eq!(p.kind, PathKind::Relay, "{name}: {p}");
        assert!(took < Duration::from_secs(10), "{name}: {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_turn_password_is_its_own_error() {
    let relay = start_relay();
    let bad = TurnServer::udp(relay.addr, Credentials::new(USER, "not-the-password"));
    let a = relay_only(Role::Controlling, bad).await.unwrap();
    let b = Session::builder().bind([LO]).build().await.unwrap();
    let db = b.local_description().await;
    let t0 = Instant::now();
    let e = a.connect(db).await.unwrap_err();
    assert!(
        matches!(e, Error::TurnCredentials { server } if server == relay.addr),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(e.to_string().contains("credentials"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_are_named() {
    relay_harness::init_tracing();
    // Nothing listens on these ports (bound here and dropped).
    let dead_udp = SocketAddr::from(([127, 0, 0, 1], relay_harness::free_port()));
    let dead_tcp = SocketAddr::from(([127, 0, 0, 1], relay_harness::free_port()));
    let a = Session::builder()
        .bind([LO])
        .stun_server(dead_udp)
        .turn_server(TurnServer::udp(dead_udp, creds()))
        .turn_server(TurnServer::tcp(dead_tcp, creds()))
        .relay_only(true)
        .gather_timeout(Duration::from_secs(8))
        .build()
        .await
        .unwrap();
    let t0 = Instant::now();
    let d = a.local_description().await;
    assert!(d.candidates.is_empty(), "{d:?}");
    assert!(t0.elapsed() < Duration::from_secs(9));
    let b = Session::builder().bind([LO]).build().await.unwrap();
    let e = a.connect(b.local_description().await).await.unwrap_err();
    match &e {
        Error::NoCandidates { problems } => {
            assert_eq!(problems.len(), 2, "{e}");
            for p in problems {
                assert!(
                    matches!(
                        p.problem,
                        Problem::Connection(_)
                            | Problem::Turn(ClientError::Timeout { .. })
                            | Problem::GatheringTimeout { .. }
                    ),
                    "{p}"
                );
            }
            let text = e.to_string();
            assert!(
                text.contains(&dead_udp.to_string()) && text.contains(&dead_tcp.to_string()),
                "{text}"
            );
        }
        other => panic!("expected NoCandidates, got {other:?}"),
    }
}

/// The relay wins first (the peer's host candidate is trickled late); when
/// the direct pair succeeds, ICE renominates and QUIC moves to it with the
/// stream open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_pair_takes_over_from_the_relay_without_reconnecting() {
    let relay = start_relay();
    relay_harness::init_tracing();
    let a = Session::builder()
        .bind([LO])
        .turn_server(TurnServer::udp(relay.addr, creds()))
        .ice_config(ice(Role::Controlling))
        .build()
        .await
        .unwrap();
    let b = Session::builder()
        .bind([LO])
        .turn_server(TurnServer::udp(relay.addr, creds()))
        .ice_config(ice(Role::Controlled))
        .build()
        .await
        .unwrap();
    let full_a = a.local_description().await;
    let full_b = b.local_description().await;
    // Both signal only their relayed candidates first.
    let relayed_only = |d: &natkit_ice::Description| {
        let mut d = d.clone();
        d.candidates.retain(|c| c.kind == CandidateKind::Relayed);
        d.end_of_candidates = false;
        d
    };
    let (da, db) = (relayed_only(&full_a), relayed_only(&full_b));
    let mut events = a.events();
    let (ca, cb) = tokio::join!(a.connect(db), b.connect(da));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(
        a.path().unwrap().kind,
        PathKind::Relay,
        "{}",
        a.path().unwrap()
    );

    // A stream runs across the change: a counter each way.
    let (mut s, mut r) = ca.open_bi().await.unwrap();
    s.write_all(b"before").await.unwrap();
    let (mut bs, mut br) = cb.accept_bi().await.unwrap();
    let mut buf = [0u8; 6];
    br.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    // Now the host candidates arrive (trickled).
    for (to, from) in [(&a, &full_b), (&b, &full_a)] {
        let host = from
            .candidates
            .iter()
            .find(|c| c.kind == CandidateKind::Host)
            .unwrap()
            .clone();
        to.add_remote_candidate(natkit_ice::TrickleCandidate {
            ufrag: from.ufrag.clone(),
            candidate: Some(host),
        })
        .unwrap();
    }
    let changed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(SessionEvent::PathChanged(p)) = events.recv().await {
                if p.kind != PathKind::Relay {
                    return p;
                }
            }
        }
    })
    .await;
    let changed = match changed {
        Ok(p) => p,
        Err(_) => panic!(
            "no path change to the direct pair; controlling side's check list: {:#?}\ncontrolled: {:#?}",
            a.check_list().await,
            b.check_list().await
        ),
    };
    assert_eq!(changed.kind, PathKind::Host, "{changed}");

    // The same stream and connection carry on, both ways.
    s.write_all(b"after!").await.unwrap();
    s.finish().unwrap();
    let rest = br.read_to_end(1024).await.unwrap();
    assert_eq!(rest, b"after!");
    bs.write_all(b"reply").await.unwrap();
    bs.finish().unwrap();
    let reply = r.read_to_end(1024).await.unwrap();
    assert_eq!(reply, b"reply");
    assert!(ca.close_reason().is_none() && cb.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_over_tls() {
    let dir = natkit_testkit::TempDir::new("natkit-ice-tls");
    let (cert, key, der) = relay_harness::tls_files(dir.path());
    let addr = SocketAddr::from(([127, 0, 0, 1], relay_harness::free_port()));
    let relay = start_relay_with(&natkit_testkit::tls::listener_args(addr, &cert, &key));
    let config = natkit_testkit::tls::client_config(der.into());
    // The relay is ready once it answers on UDP; its TLS listener opens
    // after that: wait for the very port the sessions use.
    natkit_testkit::ready::wait_tcp(addr, "the TLS listener", Duration::from_secs(10));
    let turn = TurnServer::tls(addr, creds(), Ipv4Addr::LOCALHOST.to_string());
    let config = Arc::new(config);
    let tls = |role| {
        relay_only_builder(role, turn.clone())
            .turn_tls_config(config.clone())
            .build()
    };
    let a = tls(Role::Controlling).await.unwrap();
    let b = tls(Role::Controlled).await.unwrap();
    connect_and_echo(&a, &b).await;
    assert_eq!(a.path().unwrap().kind, PathKind::Relay);
    drop(relay);
}

/// A full relay sends allocations to its alternate (300 Try Alternate,
/// RFC 8489 §10): sessions that reach it over UDP talk to the alternate
/// from then on; over TCP and over TLS they open a new connection to it
/// and relay through it, the TLS one checking the alternate's certificate
/// against ALTERNATE-DOMAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_followed_to_the_alternate_over_udp_tcp_and_tls() {
    let dir = natkit_testkit::TempDir::new("natkit-ice-redirect");
    let (cert, key, der) = relay_harness::tls_files(dir.path());
    let tls_flags = |port: u16| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        natkit_testkit::tls::listener_args(addr, &cert, &key)
    };
    let (b_tls, b_metrics) = (relay_harness::free_port(), relay_harness::free_port());
    let b_metrics = SocketAddr::from(([127, 0, 0, 1], b_metrics));
    let mut b_args = tls_flags(b_tls);
    b_args.extend(["--metrics".into(), b_metrics.to_string()]);
    let b = start_relay_with(&b_args);
    // The alternate over TLS is B's TLS port (the certificate is for
    // 127.0.0.1, as ALTERNATE-DOMAIN says); one alternate per family, so
    // each transport gets its own A.
    let full_relay = |alternate: u16, a_tls: u16| {
        let mut args = tls_flags(a_tls);
        args.extend([
            "--max-allocations".into(),
            "1".into(),
            "--alternate-server".into(),
            format!("127.0.0.1:{alternate}"),
            "--alternate-domain".into(),
            "127.0.0.1".into(),
            "--alternate-when-full".into(),
            "true".into(),
        ]);
        start_relay_with(&args)
    };
    let config = Arc::new(natkit_testkit::tls::client_config(der.into()));
    let mut kept = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        let a_tls = relay_harness::free_port();
        let alternate = match transport {
            Transport::Tls => b_tls,
            _ => b.port(),
        };
        let a = full_relay(alternate, a_tls);
        let a_tls_addr = SocketAddr::from(([127, 0, 0, 1], a_tls));
        natkit_testkit::ready::wait_tcp(a_tls_addr, "the TLS listener", Duration::from_secs(10));
        // One allocation fills A.
        let filler = relay_only(Role::Controlling, TurnServer::udp(a.addr, creds()))
            .await
            .unwrap();
        assert_eq!(filler.local_description().await.candidates.len(), 1);
        let turn = match transport {
            Transport::Tls => TurnServer::tls(a_tls_addr, creds(), "127.0.0.1"),
            Transport::Tcp => TurnServer::tcp(a.addr, creds()),
            Transport::Udp => TurnServer::udp(a.addr, creds()),
        };
        let session = |role| {
            relay_only_builder(role, turn.clone())
                .turn_tls_config(config.clone())
                .build()
        };
        let (x, y) = (
            session(Role::Controlling).await.unwrap(),
            session(Role::Controlled).await.unwrap(),
        );
        for s in [&x, &y] {
            let d = s.local_description().await;
            assert_eq!(
                d.candidates.len(),
                1,
                "{transport:?}: {:?}",
                s.server_problems()
            );
        }
        connect_and_echo(&x, &y).await;
        assert_eq!(x.path().unwrap().kind, PathKind::Relay);
        // Both allocations live on B (port {alternate}), with the
        // earlier rounds' sessions, kept open.
        kept.extend([x, y, filler]);
        let held = 2.0 * (kept.len() / 3) as f64;
        let on_b = natkit_testkit::ready::wait_metric(
            b_metrics,
            "natkit_turn_allocations",
            held,
            Duration::from_secs(10),
        );
        assert_eq!(on_b, held, "{transport:?} via {alternate}");
        drop(a);
    }
}

/// A closed session deletes its allocation (RFC 8656 §8) instead of leaving
/// it to expire: with a quota of one allocation per user, sessions can
/// follow one another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_session_frees_its_allocation() {
    let relay = start_relay_with(&["--user-quota".into(), "1".into()]);
    for round in 0..3 {
        let s = relay_only(Role::Controlling, TurnServer::udp(relay.addr, creds()))
            .await
            .unwrap();
        let d = s.local_description().await;
        assert_eq!(
            d.candidates.len(),
            1,
            "round {round}: {:?}",
            s.server_problems()
        );
        s.close();
        // The Refresh (LIFETIME 0) goes out after the close grace (250 ms,
        // for QUIC's CONNECTION_CLOSE to cross the relay first); wait_idle
        // returns once the relay confirmed the deletion.
        s.wait_idle().await;
        drop(s);
    }
}

/// The relay under a TCP-relayed path stops: the session names the relay,
/// not the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_is_relay_lost() {
    let relay = start_relay();
    let turn = TurnServer::tcp(relay.addr, creds());
    let a = relay_only(Role::Controlling, turn.clone()).await.unwrap();
    let b = relay_only(Role::Controlled, turn).await.unwrap();
    connect_and_echo(&a, &b).await;
    let server = relay.addr;
    drop(relay);
    let e = tokio::time::timeout(Duration::from_secs(10), a.closed())
        .await
        .expect("relay loss reported");
    match &e {
        Error::RelayLost { problem } => assert_eq!(problem.server, server, "{e}"),
        other => panic!("expected RelayLost, got {other:?}"),
    }
    assert!(e.to_string().contains(&server.to_string()), "{e}");
}

/// Servers that have not answered when the gathering timeout ends are named
/// at once, so an empty description says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_pending_at_the_gathering_deadline_are_named() {
    relay_harness::init_tracing();
    let dead = SocketAddr::from(([127, 0, 0, 1], relay_harness::free_port()));
    let a = Session::builder()
        .bind([LO])
        .turn_server(TurnServer::udp(dead, creds()))
        .relay_only(true)
        .gather_timeout(Duration::from_millis(800))
        .build()
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(a.local_description().await.candidates.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(2));
    let problems = a.server_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("gathering timeout"),
        "{}",
        problems[0]
    );
}

/// The relay under a UDP-relayed path stops: UDP gives no signal, so the
/// silent path is noticed (PathDegraded), the relay is asked at once (a
/// Refresh), and its silence names it, before consent would run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_relay_that_stops_is_found_by_probing_it() {
    relay_harness::init_tracing();
    let relay = start_relay();
    let turn = TurnServer::udp(relay.addr, creds());
    let mk = |role| {
        Session::builder()
            .bind([LO])
            .turn_server(turn.clone())
            .relay_only(true)
            .ice_config(Config {
                role,
                consent_interval: Duration::from_millis(500),
                consent_timeout: Duration::from_secs(20),
                ..Config::default()
            })
            .degraded_after(Duration::from_millis(1500))
            .build()
    };
    let (a, b) = (
        mk(Role::Controlling).await.unwrap(),
        mk(Role::Controlled).await.unwrap(),
    );
    connect_and_echo(&a, &b).await;
    let server = relay.addr;
    drop(relay);
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(15), a.closed())
        .await
        .expect("relay loss reported before consent ran out");
    match &e {
        Error::RelayLost { problem } => assert_eq!(problem.server, server, "{e}"),
        other => panic!("expected RelayLost, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
}

/// An ICE restart replaces failed allocations. A replaced allocation's
/// TCP connection still ends afterwards; that late event must not land on
/// another allocation (stream events name allocations by a unique id, not
/// by their place in the list) and, say, declare the relay under the
/// selected path lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replacing_a_failed_allocation_leaves_the_others_alone() {
    relay_harness::init_tracing();
    let relay = start_relay();
    let a = Session::builder()
        .bind([LO])
        // First in the list: refused (401) over TCP, its connection open.
        .turn_server(TurnServer::tcp(relay.addr, Credentials::new(USER, "wrong")))
        .turn_server(TurnServer::udp(relay.addr, creds()))
        .relay_only(true)
        .ice_config(ice(Role::Controlling))
        .build()
        .await
        .unwrap();
    let b = relay_only(Role::Controlled, TurnServer::udp(relay.addr, creds()))
        .await
        .unwrap();
    connect_and_echo(&a, &b).await;
    assert_eq!(a.path().unwrap().kind, PathKind::Relay);
    // The restart replaces the refused TCP allocation (now first in the
    // list is the UDP one the path runs through).
    let _offer = a.restart().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_millis(1500), a.closed()).await;
    assert!(ended.is_err(), "the session ended: {:?}", ended.unwrap());
    let problems = a.server_problems();
    assert!(
        problems
            .iter()
            .all(|p| p.kind == ServerKind::Turn(Transport::Tcp)),
        "the UDP allocation was blamed: {problems:?}"
    );
}
