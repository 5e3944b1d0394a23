//! Waiting until a test server is up, bounded in time: each probe asks the
//! very endpoint a test is about to use (the UDP port, a TCP or TLS port,
//! the metrics endpoint), never a neighbour that happens to open at about
//! the same time.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Child;
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::transaction;

/// How long one probe waits for its answer.
const PROBE: Duration = Duration::from_millis(50);

/// Sends one Binding request from `sock` to `server` and waits up to
/// `sock`'s read timeout for the matching success response (RFC 8489 §6.3:
/// same transaction ID). Every STUN and TURN server answers one on its
/// listening port (RFC 8656 §17), which makes it the readiness probe.
pub fn answers_binding(sock: &UdpSocket, server: SocketAddr) -> bool {
    let tid = transaction::new_transaction_id();
    let mut buf = [0u8; 512];
    let n = binding::write_request(&mut buf, &tid, &RequestOptions::default())
        .expect("a Binding request fits in 512 bytes");
    if sock.send_to(&buf[..n], server).is_err() {
        return false;
    }
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => binding::parse_response(&buf[..n]).is_ok_and(|r| r.transaction_id == tid),
        Err(_) => false,
    }
}

/// Waits until `server` answers a Binding request over UDP.
///
/// # Panics
/// When `child` (the server, called `name` in messages) exits first, or
/// after `timeout`.
pub fn wait_binding(child: &mut Child, name: &str, server: SocketAddr, timeout: Duration) {
    wait_binding_of(Some(child), name, server, timeout);
}

/// [`wait_binding`] for a server that is not our child process (in a
/// container, say).
///
/// # Panics
/// After `timeout`.
pub fn wait_binding_at(name: &str, server: SocketAddr, timeout: Duration) {
    wait_binding_of(None, name, server, timeout);
}

fn wait_binding_of(child: Option<&mut Child>, name: &str, server: SocketAddr, timeout: Duration) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback probe socket");
    sock.set_read_timeout(Some(PROBE)).unwrap();
    wait_until(child, name, timeout, || answers_binding(&sock, server)).unwrap_or_else(|| {
        panic!("{name} did not answer a Binding request on {server} within {timeout:?}")
    });
}

/// Calls `probe` until it says yes; `None` after `timeout`.
///
/// # Panics
/// When `child` (called `name`) exits first.
fn wait_until(
    mut child: Option<&mut Child>,
    name: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> Option<()> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            panic!("{name} exited at start-up: {status}");
        }
        if Instant::now() >= end {
            return None;
        }
        if probe() {
            return Some(());
        }
    }
}

/// Waits until a TCP connection to `addr` succeeds (a TLS or metrics
/// listener, which opens after the UDP socket).
///
/// # Panics
/// After `timeout`, naming `what`.
pub fn wait_tcp(addr: SocketAddr, what: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < end,
            "{what} on {addr} did not accept TCP within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one Binding request over a new TCP connection to `server` and
/// waits up to `PROBE` for the matching success response (RFC 8489 §6.2.2:
/// the same message over a stream).
pub fn answers_binding_tcp(server: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&server, PROBE) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE * 4));
    let tid = transaction::new_transaction_id();
    let mut buf = [0u8; 512];
    let n = binding::write_request(&mut buf, &tid, &RequestOptions::default())
        .expect("a Binding request fits in 512 bytes");
    if s.write_all(&buf[..n]).is_err() {
        return false;
    }
    crate::stream::read_stun_message(&mut s)
        .is_ok_and(|m| binding::parse_response(&m).is_ok_and(|r| r.transaction_id == tid))
}

/// Waits until `server` answers a Binding request over TCP.
///
/// # Panics
/// When `child` (called `name` in messages) exits first, or after `timeout`.
pub fn wait_binding_tcp(child: &mut Child, name: &str, server: SocketAddr, timeout: Duration) {
    wait_until(Some(child), name, timeout, || {
        answers_binding_tcp(server) || {
            std::thread::sleep(Duration::from_millis(20));
            false
        }
    })
    .unwrap_or_else(|| {
        panic!("{name} did not answer a Binding request over TCP on {server} within {timeout:?}")
    });
}

/// Waits (bounded by `limit`) until `GET path` on `addr` answers 200: the
/// metrics endpoint (`/healthz`, `/metrics`) or another HTTP service.
///
/// # Panics
/// After `limit`, with the last answer or error.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) {
    wait_http_status(addr, path, 200, limit)
}

/// Waits (bounded by `limit`) until `GET path` on `addr` answers `status`:
/// e.g. natkit-turn's `/healthz` turning 503 once it drains.
///
/// # Panics
/// After `limit`, with the last answer or error.
pub fn wait_http_status(addr: SocketAddr, path: &str, status: u16, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < end {
        match crate::http::get(addr, path) {
            Ok((code, _)) if code == status => return,
            Ok((code, body)) => last = format!("{code}: {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("http://{addr}{path} not {status} after {limit:?}; last: {last}");
}

/// Waits (bounded by `limit`) until `series` on `addr`'s `/metrics` reaches `at_least`, and
/// returns its value: e.g. a certificate issued.
///
/// # Panics
/// After `limit`, with the last value or error.
pub fn wait_metric(addr: SocketAddr, series: &str, at_least: f64, limit: Duration) -> f64 {
    let end = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < end {
        match crate::http::get(addr, "/metrics") {
            Ok((200, body)) => match crate::http::metric_value(&body, series) {
                Some(v) if v >= at_least => return v,
                v => last = format!("{v:?}"),
            },
            Ok((code, body)) => last = format!("{code}: {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{series} on http://{addr}/metrics not >= {at_least} after {limit:?}; last: {last}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_silent_socket_does_not_answer() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(PROBE)).unwrap();
        assert!(!answers_binding(&sock, silent.local_addr().unwrap()));
    }

    #[test]
    fn a_tcp_listener_that_does_not_speak_stun_is_not_ready() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 20];
            let _ = s.read_exact(&mut b);
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        });
        assert!(!answers_binding_tcp(addr));
        t.join().unwrap();
        let r = std::panic::catch_unwind(|| wait_http_ok(addr, "/", Duration::from_millis(100)));
        assert!(r.is_err());
    }

    #[test]
    fn a_tcp_listener_is_seen_and_a_closed_port_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        wait_tcp(l.local_addr().unwrap(), "listener", Duration::from_secs(5));
        let closed = l.local_addr().unwrap();
        drop(l);
        let r = std::panic::catch_unwind(|| wait_tcp(closed, "closed", Duration::from_millis(100)));
        assert!(r.is_err());
    }
}
