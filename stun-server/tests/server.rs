//! natkit-stun through its public interface: the binary, its flags, its
//! sockets and its metrics endpoint. Loopback only.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::binding::{parse_response, write_request, ChangeRequest, RequestOptions};
use natkit_testkit::stream::read_stun_message;
use natkit_testkit::{ready, tls, TempDir};

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
        (
            ChangeRequest {
                ip: true,
                port: false,
            },
            format!("127.0.0.2:{p}"),
        ),
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

    // PADDING (RFC 5780 §7.6): a request padded past the MTU gets an answer
    // padded the same, so both fragment alike.
    let opts = RequestOptions {
        change: Some(ChangeRequest::BOTH),
        padding: Some(1500),
        ..Default::default()
    };
    let mut big = [0u8; 1600];
    let n = write_request(&mut big, &[8; 12], &opts).unwrap();
    client.send_to(&big[..n], primary).unwrap();
    let mut rx = [0u8; 4096];
    let (len, from) = client
        .recv_from(&mut rx)
        .expect("answer to a padded request");
    assert_eq!(from, other);
    assert!(
        len >= 1500 + 20,
        "answer of {len} bytes carries the padding"
    );
    assert_eq!(parse_response(&rx[..len]).unwrap().outcome, Ok(()));
}

#[test]
fn without_other_change_request_gets_420() {
    let p = free_port();
    let primary = addr(&format!("127.0.0.1:{p}"));
    let mut srv = Server::spawn(&["--listen".into(), primary.to_string()], Stdio::null());
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
        good[..n - 3].to_vec(), // truncated
        wrong_cookie[..n].to_vec(),
        garbage,
        vec![0u8; 3000], // oversized
        vec![],          // empty
    ];
    for b in &bad {
        client.send_to(b, primary).unwrap();
    }
    client.send_to(&bad_fp[..n], primary).unwrap();
    // Nothing comes back for any of them, and a good request is answered.
    let (r, _) = binding(&client, primary, RequestOptions::default()).unwrap();
    assert_eq!(r.outcome, Ok(()));
    let text = metrics(m);
    assert!(
        metric(
            &text,
            "natkit_stun_messages_total{outcome=\"malformed\",transport=\"udp\"}"
        ) >= 4.0
    );
    assert!(
        metric(
            &text,
            "natkit_stun_messages_total{outcome=\"bad_fingerprint\",transport=\"udp\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "natkit_stun_messages_total{outcome=\"success\",transport=\"udp\"}"
        ) >= 2.0
    );
    // The oversized datagram counts as the 1500 bytes read of it.
    assert!(metric(&text, "natkit_stun_bytes_received_total{transport=\"udp\"}") > 1500.0);
    assert!(metric(&text, "natkit_stun_bytes_sent_total{transport=\"udp\"}") > 0.0);
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
        let r = parse_response(&read_stun_message(&mut c).unwrap()).unwrap();
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
    assert_eq!(
        parse_response(&read_stun_message(&mut c).unwrap())
            .unwrap()
            .outcome,
        Err(400)
    );

    // A half-open peer (half a header, then silence) is closed after the
    // idle timeout.
    let mut half = TcpStream::connect(primary).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    half.write_all(&buf[..10]).unwrap();
    let t = Instant::now();
    let mut one = [0u8; 1];
    assert_eq!(half.read(&mut one).unwrap_or(0), 0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        t.elapsed()
    );

    // Cap of two: with two connections open, a third is refused.
    drop((c, half));
    std::thread::sleep(Duration::from_millis(200));
    let n1 = write_request(&mut buf, &[4; 12], &RequestOptions::default()).unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(primary).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(&buf[..n1]).unwrap();
        if let Err(e) = read_stun_message(&mut c) {
            panic!("not answered within the cap: {e}\n{}", metrics(m));
        }
        open.push(c);
    }
    let mut c3 = TcpStream::connect(primary).unwrap();
    c3.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c3.write_all(&buf[..n1]);
    assert!(
        read_stun_message(&mut c3).is_err(),
        "third connection must be refused"
    );
    drop(open);

    // Garbage on a stream closes that connection, not the server.
    std::thread::sleep(Duration::from_millis(200));
    let mut g = TcpStream::connect(primary).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = g.write_all(b"\xff\xff\xff\xff garbage garbage garbage");
    assert_eq!(g.read(&mut one).unwrap_or(0), 0);

    let text = metrics(m);
    assert!(
        metric(
            &text,
            "natkit_stun_connections_total{result=\"rejected_cap\",transport=\"tcp\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "natkit_stun_connections_closed_total{reason=\"idle\",transport=\"tcp\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "natkit_stun_messages_total{outcome=\"success\",transport=\"tcp\"}"
        ) >= 3.0
    );
}

#[test]
fn tls_binding() {
    let dir = TempDir::new("natkit-stun-tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ck = tls::self_signed(&["localhost"], &cert, &key);
    let (p, t) = (free_port(), free_port());
    let primary = addr(&format!("127.0.0.1:{p}"));
    let tls_addr = addr(&format!("127.0.0.1:{t}"));
    let mut srv = Server::spawn(
        &[
            "--listen".into(),
            primary.to_string(),
            "--tls-listen".into(),
            tls_addr.to_string(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
        Stdio::null(),
    );
    srv.wait_ready(primary);
    ready::wait_tcp(tls_addr, "natkit-stun's TLS listener", START);

    let mut tls = tls::connect(tls_addr, &ck, "localhost", Duration::from_secs(3));
    let local = tls.sock.local_addr().unwrap();
    let mut buf = [0u8; 64];
    let n = write_request(&mut buf, &[5; 12], &RequestOptions::default()).unwrap();
    tls.write_all(&buf[..n]).unwrap();
    let r = parse_response(&read_stun_message(&mut tls).unwrap()).unwrap();
    assert_eq!(r.outcome, Ok(()));
    assert_eq!(r.mapped, Some(local));
}

#[test]
fn sigterm_stops_cleanly() {
    let p = free_port();
    let primary = addr(&format!("127.0.0.1:{p}"));
    let mut srv = Server::spawn(&["--listen".into(), primary.to_string()], Stdio::null());
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
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = TempDir::new("natkit-stun-cc");
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
    std::fs::write(
        &good,
        "listen = [\"127.0.0.1:3478\"]\nother = \"127.0.0.2:3479\"\n",
    )
    .unwrap();
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
    assert_eq!(
        out.status.code(),
        Some(2),
        "same IP for --other must be refused"
    );
}

/// Another process's SO_REUSEPORT socket on the port: natkit-stun must not
/// silently join its group and split the traffic; it refuses to start.
#[test]
fn refuses_a_port_another_process_holds() {
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let taken = other.local_addr().unwrap().as_socket().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
        .args(["--listen", &taken.to_string(), "--tcp", "false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
}
