//! natkit-ice's benchmark (issue 4, "Performance"): prints figures, asserts
//! nothing.
//!
//!   cargo bench -p natkit-ice --bench session
//!
//! 1. Time from `connect()` to a usable QUIC connection on loopback, host
//!    pair and relay-only (through natkit-turn over UDP): median and p90 of
//!    ROUNDS sessions each (default 30).
//! 2. Bulk throughput of one QUIC stream over a natkit session (host pair)
//!    against plain quinn over a plain UDP socket, same TLS configuration,
//!    measured side by side in alternating rounds (MIB per transfer,
//!    default 256).
//! 3. Bulk throughput through natkit-turn (relay-only sessions over UDP),
//!    MIB/4 per transfer.
//!
//! Environment: ROUNDS, MIB, BULK_ROUNDS (bulk rounds of each kind,
//! default 5), NATKIT_TURN_BIN (else target/release/natkit-turn,
//! built when missing). Loopback only; every process started is killed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_ice::{PathKind, Role, Session, TurnCredentials, TurnServer};
use natkit_testkit::{bins, TurnRelay};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// natkit-turn on loopback (relay ports 24000-24999), killed on drop.
fn start_relay() -> TurnRelay {
    TurnRelay::builder(bins::natkit_turn())
        .relay_ports((24_000, 24_999))
        .user("bench", "bench-password")
        .allow_loopback_peers()
        .no_drain_grace()
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .ready_timeout(Duration::from_secs(10))
        .start()
}

async fn connect_once(turn: Option<SocketAddr>) -> (Duration, PathKind) {
    let build = |role| {
        let mut b = Session::builder()
            .bind([LO])
            .role(role)
            .connect_timeout(Duration::from_secs(10));
        if let Some(t) = turn {
            b = b
                .turn_server(TurnServer::udp(
                    t,
                    TurnCredentials::new("bench", "bench-password"),
                ))
                .relay_only(true);
        }
        b.build()
    };
    let (a, b) = (
        build(Role::Controlling).await.unwrap(),
        build(Role::Controlled).await.unwrap(),
    );
    let (da, db) = (a.local_description().await, b.local_description().await);
    let t0 = Instant::now();
    let (ca, cb) = tokio::join!(a.connect(db), b.connect(da));
    let took = t0.elapsed();
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let kind = a.path().unwrap().kind;
    ca.close(0u32.into(), b"");
    cb.close(0u32.into(), b"");
    (took, kind)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn connect_times(name: &str, rounds: usize, turn: Option<SocketAddr>) {
    let mut times = Vec::with_capacity(rounds);
    let mut kind = None;
    for _ in 0..rounds {
        let (t, k) = connect_once(turn).await;
        times.push(t);
        kind = Some(k);
    }
    let med = percentile(&mut times, 0.5);
    let p90 = percentile(&mut times, 0.9);
    println!(
        "connect {name:<10} path {:<5} rounds {rounds:>3}  median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
        kind.unwrap().to_string(),
        med.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
}

/// Send `bytes` on one uni stream from `tx` to `rx`; returns the elapsed
/// time until the receiver read it all.
async fn bulk(tx: &quinn::Connection, rx: &quinn::Connection, bytes: usize) -> Duration {
    let chunk = vec![0x5au8; 64 * 1024];
    let rx = rx.clone();
    let reader = tokio::spawn(async move {
        let mut r = rx.accept_uni().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0usize;
        while let Some(k) = r.read(&mut buf).await.unwrap() {
            n += k;
        }
        n
    });
    let t0 = Instant::now();
    let mut s = tx.open_uni().await.unwrap();
    let mut sent = 0;
    while sent < bytes {
        let k = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..k]).await.unwrap();
        sent += k;
    }
    s.finish().unwrap();
    let got = reader.await.unwrap();
    assert_eq!(got, bytes);
    t0.elapsed()
}

/// Plain quinn over plain UDP sockets: TLS 1.3 with the same provider
/// (ring), cipher suites and ALPN as a session, the server's self-signed
/// certificate trusted as a root instead of pinned (bulk throughput depends
/// on the record protection, not on how the certificate was checked).
async fn plain_pair() -> (
    quinn::Endpoint,
    quinn::Endpoint,
    quinn::Connection,
    quinn::Connection,
) {
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let name = "natkit.invalid";
    let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    server_tls.alpn_protocols = vec![b"natkit/1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"natkit/1".to_vec()];
    let server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
    ));
    let client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
    ));
    // The same socket buffers as a session's bases (4 MiB): the ceiling
    // must not lose for want of them.
    let endpoint = |server: Option<quinn::ServerConfig>| {
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            udp_socket_like_a_session(),
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap()
    };
    let server = endpoint(Some(server_cfg));
    let client = endpoint(None);
    let addr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() })
    };
    let cc = client
        .connect_with(client_cfg, addr, name)
        .unwrap()
        .await
        .unwrap();
    let sc = accept.await.unwrap();
    (server, client, cc, sc)
}

/// A UDP socket on 127.0.0.1 with the buffers a session asks for.
fn udp_socket_like_a_session() -> std::net::UdpSocket {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::from((LO, 0)).into()).unwrap();
    s.into()
}

async fn throughput(rounds: usize, mib: usize) {
    let bytes = mib << 20;
    let a = Session::builder()
        .bind([LO])
        .role(Role::Controlling)
        .build()
        .await
        .unwrap();
    let b = Session::builder()
        .bind([LO])
        .role(Role::Controlled)
        .build()
        .await
        .unwrap();
    let (da, db) = (a.local_description().await, b.local_description().await);
    let (ca, cb) = tokio::join!(a.connect(db), b.connect(da));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let (_se, _ce, pc, ps) = plain_pair().await;
    // Warm both up (congestion window, MTU discovery).
    bulk(&ca, &cb, 16 << 20).await;
    bulk(&pc, &ps, 16 << 20).await;
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = bulk(&ca, &cb, bytes).await;
        ours.push(bytes as f64 / t.as_secs_f64() / 1e6);
        let t = bulk(&pc, &ps, bytes).await;
        plain.push(bytes as f64 / t.as_secs_f64() / 1e6);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (o, p) = (med(&mut ours), med(&mut plain));
    println!("bulk {mib} MiB x {rounds} rounds, one stream, loopback:");
    println!("  natkit session (host pair)     median {o:>8.1} MB/s  all {ours:.0?}");
    println!("  plain quinn over UDP socket    median {p:>8.1} MB/s  all {plain:.0?}");
    println!("  ratio natkit / plain: {:.2}", o / p);
}

/// Bulk throughput through the relay (relay-only sessions over natkit-turn
/// on UDP): QUIC in ChannelData both ways, wrapped and unwrapped in the
/// task that reads the socket.
async fn relay_throughput(relay: SocketAddr, rounds: usize, mib: usize) {
    let bytes = mib << 20;
    let build = |role| {
        Session::builder()
            .bind([LO])
            .role(role)
            .turn_server(TurnServer::udp(
                relay,
                TurnCredentials::new("bench", "bench-password"),
            ))
            .relay_only(true)
            .build()
    };
    let (a, b) = (
        build(Role::Controlling).await.unwrap(),
        build(Role::Controlled).await.unwrap(),
    );
    let (da, db) = (a.local_description().await, b.local_description().await);
    let (ca, cb) = tokio::join!(a.connect(db), b.connect(da));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(a.path().unwrap().kind, PathKind::Relay);
    bulk(&ca, &cb, 16 << 20).await;
    let mut v = Vec::new();
    for _ in 0..rounds {
        let t = bulk(&ca, &cb, bytes).await;
        v.push(bytes as f64 / t.as_secs_f64() / 1e6);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "bulk {mib} MiB x {rounds} rounds through natkit-turn (relay-only, UDP): median {:>8.1} MB/s  all {v:.0?}",
        v[v.len() / 2]
    );
}

fn main() {
    // `cargo bench` passes --bench. Without it this binary is being listed
    // or run as a test (`cargo test --all-targets`, nextest): it has no
    // tests, and a benchmark is not one.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_usize("ROUNDS", 30);
    let mib = env_usize("MIB", 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        connect_times("host", rounds, None).await;
        let relay = start_relay();
        connect_times("relay-only", rounds, Some(relay.addr)).await;
        throughput(env_usize("BULK_ROUNDS", 5), mib).await;
        relay_throughput(relay.addr, 3, mib / 4).await;
        drop(relay);
    });
}
