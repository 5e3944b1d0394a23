//! natkit-turn through its public interface: the binary, its flags, its
//! sockets, its metrics endpoint and its signals. Loopback only.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use natkit_proto::binding::{parse_response, write_request, RequestOptions};
use natkit_proto::turn::client::{ClientError, Transport};
use natkit_testkit::tls;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Two clients relayed through one server reach each other through their
/// relayed addresses, on loopback, with the default deny list on: the
/// relay-to-relay rule (issue 7).
#[test]
fn two_allocations_exchange_data_through_each_others_relayed_address() {
    let relay = Relay::start(&[]);
    for transport in [Transport::Udp, Transport::Tcp] {
        let (mut a, ra) = allocate(relay.addr, transport);
        let (mut b, rb) = allocate(relay.addr, transport);
        assert_eq!(ra.ip().to_string(), "127.0.0.1");
        a.permit(rb).expect("A may reach B's relayed address");
        b.permit(ra).expect("B may reach A's relayed address");
        // Send indications both ways.
        a.send(rb, b"hello from a");
        assert_eq!(b.recv(), (ra, b"hello from a".to_vec()));
        b.send(ra, b"hello from b");
        assert_eq!(a.recv(), (rb, b"hello from b".to_vec()));
        // Then channels: ChannelData both ways.
        a.bind(rb).unwrap();
        b.bind(ra).unwrap();
        for i in 0..20u8 {
            a.send(rb, &[i; 100]);
            assert_eq!(b.recv(), (ra, vec![i; 100]));
            b.send(ra, &[i; 1000]);
            assert_eq!(a.recv(), (rb, vec![i; 1000]));
        }
    }
    assert!(relay.metric("natkit_turn_relayed_packets_total{direction=\"to_peer\"}") >= 84.0);
    assert!(relay.metric("natkit_turn_relayed_packets_total{direction=\"to_client\"}") >= 84.0);
}

/// Every default deny range is refused on CreatePermission and
/// ChannelBind with 403, including IPv4 hidden in IPv6 forms.
#[test]
fn default_deny_list_refuses_private_and_special_peers() {
    let relay = Relay::start(&[]);
    let (mut a, ra) = allocate(relay.addr, Transport::Udp);
    let denied = [
        "127.0.0.1:9",
        "10.1.2.3:9",
        "172.16.0.1:9",
        "192.168.1.1:9",
        "100.64.0.1:9",
        "169.254.169.254:80",
        "0.0.0.1:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ];
    for p in denied {
        assert_eq!(a.permit(addr(p)), Err(ClientError::Forbidden), "{p}");
    }
    assert_eq!(a.bind(addr("10.0.0.1:9")), Err(ClientError::Forbidden));
    // The allocation survives refusals and still works.
    let (mut b, rb) = allocate(relay.addr, Transport::Udp);
    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    a.send(rb, b"still relaying");
    assert_eq!(b.recv().1, b"still relaying");
    assert!(relay.metric("natkit_turn_dropped_total{reason=\"denied_peer\"}") >= 10.0);
}

#[test]
fn ipv6_relay_refuses_embedded_ipv4_and_special_v6_peers() {
    let port = free_port();
    let metrics = free_port();
    let args: Vec<String> = [
        "--listen",
        &format!("[::1]:{port}"),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "::1",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        &format!("{USER}:{PASS}"),
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--min-port",
        "20000",
        "--max-port",
        "20049",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _relay = Relay::start_with(args, port, metrics);
    let server6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mut cfg = natkit_proto::turn::client::Config::new(
        server6,
        Transport::Udp,
        natkit_proto::turn::client::Credentials::new(USER, PASS),
    );
    // Dual: an IPv4 and an IPv6 relayed address (RFC 8656 §7.2), so an
    // IPv4-mapped peer is judged as the IPv4 peer it is.
    cfg.family = natkit_proto::turn::client::AddressFamily::Dual;
    let mut n = TurnTestClient::connect(cfg);
    n.allocated().expect("dual allocation");
    let relayed = n.client().relayed_addresses().to_vec();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(relayed.iter().any(|a| a.is_ipv6()) && relayed.iter().any(|a| a.is_ipv4()));
    for p in [
        "[::1]:9",
        "[::ffff:127.0.0.1]:9",
        "[::ffff:10.0.0.1]:9",
        "[64:ff9b::a00:1]:9",
        "[2002:a00:1::1]:9",
        "[fe80::1]:9",
        "[fc00::1]:9",
        "[ff02::1]:9",
        "[2001::1]:9",
        "[::]:9",
    ] {
        assert_eq!(n.permit(addr(p)), Err(ClientError::Forbidden), "{p}");
    }
}

/// --allow-peer opens a range; the relay's own listening address stays
/// closed (no TURN loops) even inside it.
#[test]
fn allow_peer_reaches_loopback_but_never_the_relays_own_listener() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    echo.set_read_timeout(Some(STEP)).unwrap();
    let peer = echo.local_addr().unwrap();
    let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
    a.permit(peer).unwrap();
    a.send(peer, b"ping");
    let mut buf = [0u8; 64];
    let (n, from) = echo.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], relayed));
    echo.send_to(b"pong", relayed).unwrap();
    assert_eq!(a.recv(), (peer, b"pong".to_vec()));
    // The listener itself: refused on ChannelBind (per address).
    assert_eq!(a.bind(relay.addr), Err(ClientError::Forbidden));
}

#[test]
fn quotas_per_user_permissions_and_401_rate() {
    let relay = Relay::start(&[
        "--user-quota",
        "1",
        "--max-permissions",
        "1",
        "--allow-peer",
        "127.0.0.0/8",
    ]);
    let (mut a, _) = allocate(relay.addr, Transport::Udp);
    let mut second = node(relay.addr, Transport::Udp, USER, PASS);
    assert_eq!(second.allocated(), Err(ClientError::QuotaReached));
    a.permit(addr("127.0.0.5:1")).unwrap();
    assert_eq!(
        a.permit(addr("127.0.0.6:1")),
        Err(ClientError::InsufficientCapacity)
    );
    assert!(relay.metric("natkit_turn_allocation_attempts_total{outcome=\"486\"}") >= 1.0);
    assert!(relay.metric("natkit_turn_allocations_refused_total{reason=\"user_quota\"}") >= 1.0);
    // A flood of unauthenticated Allocates from one address: most are not
    // answered (20/s, burst 80).
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut req = [0u8; 64];
    let mut w = natkit_proto::writer::Writer::new(
        &mut req,
        natkit_proto::raw::method::ALLOCATE,
        natkit_proto::raw::Class::Request,
        &[1; 12],
    )
    .unwrap();
    w.u32(natkit_proto::raw::attr::REQUESTED_TRANSPORT, 17 << 24)
        .unwrap();
    let n = w.finish();
    for _ in 0..300 {
        s.send_to(&req[..n], relay.addr).unwrap();
    }
    let mut answers = 0;
    let mut buf = [0u8; 512];
    while s.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    assert!(
        answers < 150,
        "{answers} answers to 300 unauthenticated requests"
    );
    assert!(relay.metric("natkit_turn_dropped_total{reason=\"rate_limited\"}") >= 100.0);
}

#[test]
fn wrong_credentials_and_rest_secrets_with_rotation() {
    let relay = Relay::start(&["--auth-secret", "new-secret", "--auth-secret", "old-secret"]);
    let mut n = node(relay.addr, Transport::Udp, USER, "not-the-password");
    assert_eq!(n.allocated(), Err(ClientError::WrongCredentials));
    let now = std::time::SystemTime::now();
    for secret in ["new-secret", "old-secret"] {
        let c =
            natkit_proto::rest::generate(secret.as_bytes(), "carol", Duration::from_secs(600), now);
        let mut n = node(relay.addr, Transport::Udp, &c.username, &c.password);
        n.allocated().unwrap_or_else(|e| panic!("{secret}: {e:?}"));
    }
    let c = natkit_proto::rest::generate(
        b"new-secret",
        "carol",
        Duration::ZERO,
        now - Duration::from_secs(60),
    );
    let mut n = node(relay.addr, Transport::Udp, &c.username, &c.password);
    assert_eq!(n.allocated(), Err(ClientError::WrongCredentials), "expired");
    let c = natkit_proto::rest::generate(b"unknown-secret", "carol", Duration::from_secs(600), now);
    let mut n = node(relay.addr, Transport::Udp, &c.username, &c.password);
    assert_eq!(n.allocated(), Err(ClientError::WrongCredentials));
    assert!(relay.metric("natkit_turn_auth_failures_total") >= 3.0);
}

/// Metrics are live, and /healthz answers.
#[test]
fn metrics_are_live() {
    let relay = Relay::start(&[]);
    let (status, body) = relay.http("/healthz");
    assert!(status.contains("200"), "{status} {body}");
    let (mut a, ra) = allocate(relay.addr, Transport::Udp);
    let (mut b, rb) = allocate(relay.addr, Transport::Udp);
    assert_eq!(relay.metric("natkit_turn_allocations"), 2.0);
    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    a.bind(rb).unwrap();
    for _ in 0..10 {
        a.send(rb, &[7; 500]);
        b.recv();
    }
    assert!(relay.metric("natkit_turn_relayed_bytes_total{direction=\"to_peer\"}") >= 5000.0);
    assert!(relay.metric("natkit_turn_channels_bound_total") >= 1.0);
    assert!(relay.metric("natkit_turn_permissions_created_total") >= 2.0);
    assert!(relay.metric("natkit_turn_allocation_attempts_total{outcome=\"success\"}") >= 2.0);
    a.client().close(std::time::Instant::now());
    a.wait("close", |e| {
        matches!(e, natkit_proto::turn::client::Event::Closed).then_some(())
    });
    assert_eq!(relay.metric("natkit_turn_allocations"), 1.0);
    let (status, _) = relay.http("/nope");
    assert!(status.contains("404"));
}

/// SIGHUP reloads users and peer lists without dropping allocations.
#[test]
fn sighup_reloads_users_and_keeps_allocations() {
    let dir = TempDir::new("natkit-turn-reload");
    let cfg = dir.join("turn.toml");
    let port = free_port();
    let metrics = free_port();
    let write = |users: &str| {
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:{port}\"]\nrelay-ip = [\"127.0.0.1\"]\nmin-port = 20050\nmax-port = 20099\nmetrics = \"127.0.0.1:{metrics}\"\n{users}"
            ),
        )
        .unwrap();
    };
    write(&format!(
        "[users]\n{USER} = \"{PASS}\"\nbob = \"builder\"\n"
    ));
    let relay = Relay::start_with(
        vec!["--config".into(), cfg.display().to_string()],
        port,
        metrics,
    );
    let (mut a, ra) = allocate(relay.addr, Transport::Udp);
    let (mut b, rb) = allocate(relay.addr, Transport::Udp);
    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    // Drop bob, keep alice.
    write(&format!("[users]\n{USER} = \"{PASS}\"\n"));
    relay.signal(libc::SIGHUP);
    let end = std::time::Instant::now() + STEP;
    loop {
        let mut bob = node(relay.addr, Transport::Udp, "bob", "builder");
        if bob.allocated() == Err(ClientError::WrongCredentials) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "reload did not take effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The allocations made before the reload still relay.
    a.send(rb, b"still here");
    assert_eq!(b.recv(), (ra, b"still here".to_vec()));
    // A broken file is refused and the old config stays.
    std::fs::write(&cfg, "this is not toml = = =").unwrap();
    relay.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let (_, _) = allocate(relay.addr, Transport::Udp);
}

/// SIGTERM drains: new allocations are refused, existing ones relay until
/// the grace period ends, then the process exits cleanly.
#[test]
fn sigterm_drains_then_exits() {
    let mut relay = Relay::start(&["--drain-grace", "2"]);
    let (mut a, ra) = allocate(relay.addr, Transport::Udp);
    let (mut b, rb) = allocate(relay.addr, Transport::Udp);
    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    relay.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = relay.http("/healthz");
    assert!(
        status.contains("503"),
        "draining relays report unhealthy: {status}"
    );
    let mut c = node(relay.addr, Transport::Udp, USER, PASS);
    assert_eq!(c.allocated(), Err(ClientError::InsufficientCapacity));
    a.send(rb, b"during drain");
    assert_eq!(b.recv(), (ra, b"during drain".to_vec()));
    let status = relay.wait_exit(Duration::from_secs(6));
    assert!(status.success(), "{status}");
}

#[test]
fn garbage_is_dropped_and_the_relay_keeps_serving() {
    let relay = Relay::start(&[]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 10],
        vec![0x40, 0x00, 0xff, 0xff, 1, 2],
        vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42],
        vec![0u8; 9000],
    ];
    for j in &junk {
        s.send_to(j, relay.addr).unwrap();
    }
    // A Binding answered on the same socket: the same worker read the junk
    // before it (one 5-tuple, one SO_REUSEPORT socket) and counts before
    // answering. An allocation from another socket may land on another
    // worker and prove nothing about the junk.
    s.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 128];
    let n = write_request(&mut buf, &[7; 12], &RequestOptions::default()).unwrap();
    s.send_to(&buf[..n], relay.addr).unwrap();
    let mut rx = [0u8; 1500];
    let (n, _) = s
        .recv_from(&mut rx)
        .expect("the Binding after the junk answered");
    assert!(parse_response(&rx[..n]).unwrap().outcome.is_ok());
    assert!(relay.metric("natkit_turn_dropped_total{reason=\"malformed\"}") >= 3.0);
    // And the relay still allocates.
    let (_a, _) = allocate(relay.addr, Transport::Udp);
}

#[test]
fn check_config_refuses_an_open_relay_and_names_bad_keys() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natkit-turn"))
        .args(["--check-config", "--listen", "127.0.0.1:3478"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--user") && err.contains("--auth-secret"),
        "{err}"
    );
    let dir = TempDir::new("natkit-turn-cc");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = [\"127.0.0.1:3478\"]\nrelay-ip = [\"127.0.0.1\"]\nmin-prot = 3\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natkit-turn"))
        .args([
            "--check-config",
            "--config",
            bad.to_str().unwrap(),
            "--user",
            "a:b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("min-prot"));
}

/// Behind a 1:1 NAT the relay advertises the external address; the relay
/// socket still binds the internal one.
#[test]
fn external_ip_is_advertised() {
    let relay = Relay::start(&[
        "--external-ip",
        "203.0.113.7/127.0.0.1",
        "--allow-peer",
        "127.0.0.0/8",
    ]);
    let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
    assert_eq!(relayed.ip().to_string(), "203.0.113.7");
    // The socket behind it is on the internal address: a peer reaches the
    // client there.
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    a.permit(peer.local_addr().unwrap()).unwrap();
    peer.send_to(b"via the inside", ("127.0.0.1", relayed.port()))
        .unwrap();
    assert_eq!(
        a.recv(),
        (peer.local_addr().unwrap(), b"via the inside".to_vec())
    );
}

/// The total allocation quota holds across users and shards. Reaching it
/// is the server's capacity, 508 (RFC 8656 §7.2), not the user's quota
/// (486, issue 15 defect 9), and the two are counted apart.
#[test]
fn total_allocation_quota() {
    let relay = Relay::start(&["--max-allocations", "2", "--user", "bob:builder"]);
    let (_a, _) = allocate(relay.addr, Transport::Udp);
    let mut b = node(relay.addr, Transport::Udp, "bob", "builder");
    b.allocated().expect("second allocation fits");
    let mut c = node(relay.addr, Transport::Udp, "bob", "builder");
    assert_eq!(c.allocated(), Err(ClientError::InsufficientCapacity));
    assert_eq!(
        relay.metric("natkit_turn_allocations_refused_total{reason=\"max_allocations\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("natkit_turn_allocations_refused_total{reason=\"user_quota\"}"),
        0.0
    );
    assert_eq!(
        relay.metric("natkit_turn_allocation_attempts_total{outcome=\"508\"}"),
        1.0
    );
}

/// SIGHUP applies a new peer list: a range allowed before is refused after,
/// and permissions into it are dropped.
#[test]
fn sighup_reloads_peer_lists() {
    let dir = TempDir::new("natkit-turn-reload-peers");
    let cfg = dir.join("turn.toml");
    let port = free_port();
    let metrics = free_port();
    let write = |allow: &str| {
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:{port}\"]\nrelay-ip = [\"127.0.0.1\"]\nmin-port = 20100\nmax-port = 20149\nmetrics = \"127.0.0.1:{metrics}\"\n{allow}[users]\n{USER} = \"{PASS}\"\n"
            ),
        )
        .unwrap();
    };
    write("allow-peer = [\"127.0.0.0/8\"]\n");
    let relay = Relay::start_with(
        vec!["--config".into(), cfg.display().to_string()],
        port,
        metrics,
    );
    // 127.0.0.2: not the relay's own IP, whose permissions the
    // relay-to-relay rule keeps.
    let echo = UdpSocket::bind("127.0.0.2:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let peer = echo.local_addr().unwrap();
    let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
    a.permit(peer).unwrap();
    echo.send_to(b"before", relayed).unwrap();
    assert_eq!(a.recv(), (peer, b"before".to_vec()));
    write("");
    relay.signal(libc::SIGHUP);
    // The client asks once per IP, so each try names another loopback IP.
    let mut last = 10u8;
    loop {
        let other = SocketAddr::from(([127, 0, 0, last], 9));
        if a.permit(other) == Err(ClientError::Forbidden) {
            break;
        }
        last += 1;
        assert!(last < 100, "reload did not take effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The installed permission went with the reload: the peer's data no
    // longer gets through.
    echo.send_to(b"after", relayed).unwrap();
    assert!(a.recv_for(Duration::from_millis(300)).is_empty());
}

/// Passwords, secrets and keys never reach the log, even at debug level and
/// when authentication fails.
#[test]
fn secrets_never_reach_the_log() {
    let dir = TempDir::new("natkit-turn-log");
    let log = dir.join("turn.log");
    let port = free_port();
    let metrics = free_port();
    let password = "pw-Zq8vT1xK";
    let secret = "secret-Wm3pR7yB";
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "20350",
        "--max-port",
        "20399",
        "--user",
        &format!("{USER}:{password}"),
        "--auth-secret",
        secret,
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut relay = Relay::start_logged(args, port, metrics, &log, &[("RUST_LOG", "trace")]);
    let (mut a, _) = {
        let mut n = node(relay.addr, Transport::Udp, USER, password);
        let r = n.allocated().expect("allocation");
        (n, r)
    };
    let mut wrong = node(relay.addr, Transport::Udp, USER, "not-it");
    assert_eq!(wrong.allocated(), Err(ClientError::WrongCredentials));
    let c = natkit_proto::rest::generate(
        secret.as_bytes(),
        "carol",
        Duration::from_secs(60),
        std::time::SystemTime::now(),
    );
    let mut rest = node(relay.addr, Transport::Udp, &c.username, &c.password);
    rest.allocated().expect("REST allocation");
    a.client().close(std::time::Instant::now());
    relay.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    relay.signal(libc::SIGINT);
    relay.wait_exit(STEP);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("listening on UDP"),
        "the log was written: {text}"
    );
    for s in [password, secret, c.password.as_str()] {
        assert!(!text.contains(s), "{s} leaked into the log");
    }
}

/// A TLS handshake with the relay, trusting only `ca`: whether it works.
fn tls_handshake(addr: SocketAddr, ca: &rcgen::CertifiedKey) -> bool {
    use std::io::{Read, Write};
    let mut tls = tls::connect(addr, ca, "localhost", STEP);
    // A Binding request over TLS: answered only after a good handshake.
    let mut req = [0u8; 20];
    let n = natkit_proto::binding::write_request(&mut req, &[4; 12], &Default::default()).unwrap();
    if tls.write_all(&req[..n]).is_err() {
        return false;
    }
    let mut head = [0u8; 20];
    tls.read_exact(&mut head).is_ok()
}

/// SIGHUP reloads the TLS certificate: new handshakes present the new one.
#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = TempDir::new("natkit-turn-tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let write = |ck: &rcgen::CertifiedKey| tls::write_pem(ck, &cert, &key);
    let old = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let new = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    write(&old);
    let tls_port = free_port();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let relay = Relay::start(&[
        "--tls-listen",
        &tls_addr.to_string(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--watch-interval",
        "0",
    ]);
    relay.wait_tls(tls_addr);
    assert!(tls_handshake(tls_addr, &old));
    assert!(!tls_handshake(tls_addr, &new));
    write(&new);
    relay.signal(libc::SIGHUP);
    let end = std::time::Instant::now() + STEP;
    while !tls_handshake(tls_addr, &new) {
        assert!(std::time::Instant::now() < end, "certificate not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tls_handshake(tls_addr, &old));
}

/// A certificate that fails to load on SIGHUP keeps the running one, and
/// the log says so (naming the key at fault) instead of claiming a reload;
/// users, secrets and peer lists are still reloaded.
#[test]
fn sighup_with_a_broken_certificate_keeps_the_running_one() {
    let dir = TempDir::new("natkit-turn-tls-broken");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let log = dir.join("turn.log");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    tls::write_pem(&ck, &cert, &key);
    let (port, metrics, tls_port) = (free_port(), free_port(), free_port());
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "20350",
        "--max-port",
        "20399",
        "--user",
        &format!("{USER}:{PASS}"),
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--tls-listen",
        &tls_addr.to_string(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        // SIGHUP alone: not the file watch (tests/front_door.rs tests that).
        "--watch-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let relay = Relay::start_logged(args, port, metrics, &log, &[]);
    relay.wait_tls(tls_addr);
    assert!(tls_handshake(tls_addr, &ck));

    std::fs::write(&cert, "not a certificate\n").unwrap();
    relay.signal(libc::SIGHUP);
    let end = std::time::Instant::now() + STEP;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("keeping the old TLS certificate and key") {
            break text;
        }
        assert!(
            std::time::Instant::now() < end,
            "no TLS outcome logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        text.contains("cert: ") && text.contains("no certificate found"),
        "{text}"
    );
    assert!(!text.contains("reloaded the TLS certificate"), "{text}");
    assert!(
        text.contains("SIGHUP: reloaded users, secrets and peer lists"),
        "{text}"
    );
    assert!(tls_handshake(tls_addr, &ck));
}

/// A burst from one client to one peer leaves the relay as GSO segment
/// trains: every datagram arrives, separately, whole and in order, also
/// when sizes change within the burst.
#[test]
fn bursts_to_one_peer_arrive_whole_and_in_order() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let peer_sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    peer_sock.set_read_timeout(Some(STEP)).unwrap();
    let peer = peer_sock.local_addr().unwrap();
    let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
    a.bind(peer).unwrap();
    let sizes: Vec<usize> = (0..150)
        .map(|i| match i {
            0..=99 => 300,
            100..=109 => 17,
            110..=119 => 1200,
            _ => 40 + i % 7,
        })
        .collect();
    for (i, &n) in sizes.iter().enumerate() {
        let mut d = vec![(i % 251) as u8; n];
        d[0] = i as u8;
        a.send(peer, &d);
    }
    let mut buf = [0u8; 2048];
    for (i, &n) in sizes.iter().enumerate() {
        let (len, from) = peer_sock.recv_from(&mut buf).expect("datagram lost");
        assert_eq!(from, relayed);
        assert_eq!(len, n, "datagram {i} arrived whole");
        assert_eq!(buf[0], i as u8, "in order");
        assert!(buf[1..len].iter().all(|&b| b == (i % 251) as u8));
    }
    // And back: the peer's burst reaches the client as ChannelData trains.
    for (i, &n) in sizes.iter().enumerate() {
        let mut d = vec![(i % 251) as u8; n];
        d[0] = i as u8;
        peer_sock.send_to(&d, relayed).unwrap();
    }
    let mut got = Vec::new();
    let end = std::time::Instant::now() + STEP;
    while got.len() < sizes.len() && std::time::Instant::now() < end {
        got.extend(a.recv_for(Duration::from_millis(20)));
    }
    assert_eq!(got.len(), sizes.len(), "every datagram back");
    for (i, ((from, d), &n)) in got.iter().zip(&sizes).enumerate() {
        assert_eq!(*from, peer);
        assert_eq!(d.len(), n, "datagram {i} whole");
        assert_eq!(d[0], i as u8, "in order");
    }
}

/// Data a client sends right before deleting its allocation (Refresh with
/// LIFETIME 0) still reaches the peer: the relay used to send a batch's
/// data after handling the whole batch, when the deletion had already
/// closed the relayed socket. Repeated, since the race needs the data and
/// the deletion in one receive batch.
#[test]
fn data_sent_just_before_the_deletion_still_leaves() {
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let peer_sock = UdpSocket::bind("127.0.0.2:0").unwrap();
    let peer = peer_sock.local_addr().unwrap();
    for round in 0..20u8 {
        let (mut a, relayed) = allocate(relay.addr, Transport::Udp);
        a.bind(peer).unwrap();
        for i in 0..32u8 {
            a.send(peer, &[round, i]);
        }
        a.close();
        // Bounded: a lost datagram ends the wait after a second.
        peer_sock
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 32 {
            let Ok((n, from)) = peer_sock.recv_from(&mut buf) else {
                break;
            };
            assert_eq!(from, relayed);
            got.push(buf[..n].to_vec());
        }
        let want: Vec<Vec<u8>> = (0..32u8).map(|i| vec![round, i]).collect();
        assert_eq!(got, want, "round {round}: every datagram, in order");
    }
}
