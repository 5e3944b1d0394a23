//! natkit-stun through its public interface: the binary, its flags, its
//! sockets and its metrics endpoint. Loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natkit_proto::binding::{parse_response, write_request, ChangeRequest, RequestOptions};

/// A running natkit-stun, killed on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(args: &[String]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start natkit-stun");
        Server { child }
    }

    /// Wait until a Binding request to `addr` is answered.
    fn wait_ready(&mut self, addr: SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("natkit-stun exited early: {status}");
            }
            if binding(&s, addr, RequestOptions::default()).is_some() {
                return;
            }
        }
        panic!("natkit-stun did not answer on {addr}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for UDP and TCP on 127.0.0.1 and 127.0.0.2.
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        let ok = TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.2", p)).is_ok()
            && TcpListener::bind(("127.0.0.2", p)).is_ok();
        if ok {
            return p;
        }
    }
}

/// Send one Binding request and return (response, the address it came from).
fn binding(
    s: &UdpSocket,
    to: SocketAddr,
    opts: RequestOptions,
) -> Option<(natkit_proto::binding::Response, SocketAddr)> {
    let tid: [u8; 12] = rand_tid();
    let mut buf = [0u8; 128];
    let n = write_request(&mut buf, &tid, &opts).unwrap();
    s.send_to(&buf[..n], to).unwrap();
    let mut rx = [0u8; 1500];
    loop {
        let (n, from) = s.recv_from(&mut rx).ok()?;
        if let Ok(r) = parse_response(&rx[..n]) {
            if r.transaction_id == tid {
                return Some((r, from));
            }
        }
    }
}

fn rand_tid() -> [u8; 12] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t[8..].copy_from_slice(&std::process::id().to_be_bytes());
    t
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found in:\n{text}"))
}

fn rfc5780_server(extra: &[&str]) -> (Server, SocketAddr, SocketAddr, u16) {
    let (p, q, m) = (free_port(), free_port(), free_port());
    let primary = addr(&format!("127.0.0.1:{p}"));
    let other = addr(&format!("127.0.0.2:{q}"));
    let mut args: Vec<String> = vec![
        "--listen".into(),
        primary.to_string(),
        "--other".into(),
        other.to_string(),
        "--metrics".into(),
        format!("127.0.0.1:{m}"),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut srv = Server::start(&args);
    srv.wait_ready(primary);
    (srv, primary, other, m)
}

#[test]
fn rfc5780_change_request_response_origin_other_address() {
    let (_srv, primary, other, _) = rfc5780_server(&[]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let me = client.local_addr().unwrap();
    let (p, q) = (primary.port(), other.port());
    let cases = [
        (ChangeRequest::NONE, format!("127.0.0.1:{p}")),
        (ChangeRequest::PORT, format!("127.0.0.1:{q}")),
        (ChangeRequest { ip: true, port: false }, format!("127.0.0.2:{p}")),
        (ChangeRequest::BOTH, format!("127.0.0.2:{q}")),
    ];
    for (change, origin) in cases {
        let opts = RequestOptions {
            change: Some(change),
            fingerprint: true,
            ..Default::default()
        };
        let (r, from) = binding(&client, primary, opts).expect("answer");
        assert_eq!(r.outcome, Ok(()));
        assert_eq!(r.mapped, Some(me));
        // The datagram really came from RESPONSE-ORIGIN.
        assert_eq!(from, addr(&origin), "{change:?}");
        assert_eq!(r.response_origin, Some(from));
        assert_eq!(r.other_address, Some(other));
    }
    // RESPONSE-PORT: the answer goes to another port of the client's IP.
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    target
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = write_request(
        &mut buf,
        &[9; 12],
        &RequestOptions {
            response_port: Some(target.local_addr().unwrap().port()),
            ..Default::default()
        },
    )
    .unwrap();
    client.send_to(&buf[..n], primary).unwrap();
    let mut rx = [0u8; 256];
    let (n, _) = target.recv_from(&mut rx).expect("answer at RESPONSE-PORT");
    let r = parse_response(&rx[..n]).unwrap();
    assert_eq!(r.mapped, Some(me));
}

#[test]
fn without_other_change_request_gets_420() {
    let p = free_port();
    let primary = addr(&format!("127.0.0.1:{p}"));
    let mut srv = Server::start(&["--listen".into(), primary.to_string()]);
    srv.wait_ready(primary);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let opts = RequestOptions {
        change: Some(ChangeRequest::BOTH),
        ..Default::default()
    };
    let (r, _) = binding(&client, primary, opts).unwrap();
    assert_eq!(r.outcome, Err(420));
    let (r, _) = binding(&client, primary, RequestOptions::default()).unwrap();
    assert_eq!(r.outcome, Ok(()));
    assert_eq!((r.response_origin, r.other_address), (None, None));
}

#[test]
fn bad_input_is_counted_and_the_server_keeps_serving() {
    let (_srv, primary, _, m) = rfc5780_server(&[]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut good = [0u8; 64];
    let n = write_request(
        &mut good,
        &[1; 12],
        &RequestOptions {
            fingerprint: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut wrong_cookie = good;
    wrong_cookie[4] ^= 0xFF;
    let mut bad_fp = good;
    bad_fp[n - 1] ^= 0xFF;
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7919 % 251) as u8).collect();
    let bad: Vec<Vec<u8>> = vec![
        good[..n - 3].to_vec(),   // truncated
        wrong_cookie[..n].to_vec(),
        garbage,
        vec![0u8; 3000],          // oversized
        vec![],                   // empty
    ];
    for b in &bad {
        client.send_to(b, primary).unwrap();
    }
    client.send_to(&bad_fp[..n], primary).unwrap();
    // Nothing comes back for any of them, and a good request is answered.
    let (r, _) = binding(&client, primary, RequestOptions::default()).unwrap();
    assert_eq!(r.outcome, Ok(()));
    let text = metrics(m);
    assert!(metric(&text, "natkit_stun_messages_total{outcome=\"malformed\",transport=\"udp\"}") >= 4.0);
    assert!(metric(&text, "natkit_stun_messages_total{outcome=\"bad_fingerprint\",transport=\"udp\"}") >= 1.0);
    assert!(metric(&text, "natkit_stun_messages_total{outcome=\"success\",transport=\"udp\"}") >= 2.0);
    assert!(metric(&text, "natkit_stun_bytes_received_total{transport=\"udp\"}") > 3000.0);
    assert!(metric(&text, "natkit_stun_bytes_sent_total{transport=\"udp\"}") > 0.0);
}

fn read_stun_frame(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let mut v = h.to_vec();
    v.resize(20 + len, 0);
    s.read_exact(&mut v[20..])?;
    Ok(v)
}

#[test]
fn tcp_binding_idle_timeout_and_connection_cap() {
    let (_srv, primary, _, m) =
        rfc5780_server(&["--tcp-idle-timeout", "1", "--max-tcp-connections", "2"]);
    // Two requests in one write, answered in order on one connection.
    let mut c = TcpStream::connect(primary).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 128];
    let n1 = write_request(&mut buf, &[1; 12], &RequestOptions::default()).unwrap();
    let n2 = write_request(&mut buf[n1..], &[2; 12], &RequestOptions::default()).unwrap();
    c.write_all(&buf[..n1 + n2]).unwrap();
    for tid in [[1u8; 12], [2; 12]] {
        let r = parse_response(&read_stun_frame(&mut c).unwrap()).unwrap();
        assert_eq!(r.transaction_id, tid);
        assert_eq!(r.mapped, Some(c.local_addr().unwrap()));
    }
    // CHANGE-REQUEST over TCP: 400.
    let n = write_request(
        &mut buf,
        &[3; 12],
        &RequestOptions {
            change: Some(ChangeRequest::BOTH),
            ..Default::default()
        },
    )
    .unwrap();
    c.write_all(&buf[..n]).unwrap();
    assert_eq!(parse_response(&read_stun_frame(&mut c).unwrap()).unwrap().outcome, Err(400));

    // A half-open peer (half a header, then silence) is closed after the
    // idle timeout.
    let mut half = TcpStream::connect(primary).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.write_all(&buf[..10]).unwrap();
    let t = Instant::now();
    let mut one = [0u8; 1];
    assert_eq!(half.read(&mut one).unwrap_or(0), 0);
    assert!(t.elapsed() < Duration::from_secs(4), "closed after {:?}", t.elapsed());

    // Cap of two: with `c` and one more open, a third is refused.
    let mut c2 = TcpStream::connect(primary).unwrap();
    c2.write_all(&buf[..n1]).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = read_stun_frame(&mut c2);
    let mut c3 = TcpStream::connect(primary).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c3.write_all(&buf[..n1]);
    assert!(read_stun_frame(&mut c3).is_err(), "third connection must be refused");

    // Garbage on a stream closes that connection, not the server.
    let mut g = TcpStream::connect(primary).unwrap();
    drop(c);
    drop(c2);
    g.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = g.write_all(b"\xff\xff\xff\xff garbage garbage garbage");
    assert_eq!(g.read(&mut one).unwrap_or(0), 0);

    let text = metrics(m);
    assert!(metric(&text, "natkit_stun_connections_total{result=\"rejected_cap\",transport=\"tcp\"}") >= 1.0);
    assert!(metric(&text, "natkit_stun_connections_closed_total{reason=\"idle\",transport=\"tcp\"}") >= 1.0);
    assert!(metric(&text, "natkit_stun_messages_total{outcome=\"success\",transport=\"tcp\"}") >= 3.0);
}

#[test]
fn tls_binding() {
    let dir = std::env::temp_dir().join(format!("natkit-stun-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let (p, t) = (free_port(), free_port());
    let primary = addr(&format!("127.0.0.1:{p}"));
    let tls_addr = addr(&format!("127.0.0.1:{t}"));
    let mut srv = Server::start(&[
        "--listen".into(),
        primary.to_string(),
        "--tls-listen".into(),
        tls_addr.to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]);
    srv.wait_ready(primary);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(tls_addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let local = tcp.local_addr().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 64];
    let n = write_request(&mut buf, &[5; 12], &RequestOptions::default()).unwrap();
    tls.write_all(&buf[..n]).unwrap();
    let r = parse_response(&read_stun_frame(&mut tls).unwrap()).unwrap();
    assert_eq!(r.outcome, Ok(()));
    assert_eq!(r.mapped, Some(local));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_stops_cleanly() {
    let p = free_port();
    let primary = addr(&format!("127.0.0.1:{p}"));
    let mut srv = Server::start(&["--listen".into(), primary.to_string()]);
    srv.wait_ready(primary);
    // SAFETY: plain kill(2) on our own child's PID.
    let rc = unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let t = Instant::now();
    loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = std::env::temp_dir().join(format!("natkit-stun-cc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:3478\"]\nthreds = 4\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
        .args(["--check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("threds"), "{err}");
    let good = dir.join("good.toml");
    std::fs::write(&good, "listen = [\"127.0.0.1:3478\"]\nother = \"127.0.0.2:3479\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
        .args(["--check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Env vars are keys too.
    let out = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
        .arg("--check-config")
        .env("NATKIT_STUN_LISTEN", "127.0.0.1:3478")
        .env("NATKIT_STUN_OTHER", "127.0.0.1:3479")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "same IP for --other must be refused");
    std::fs::remove_dir_all(&dir).unwrap();
}
