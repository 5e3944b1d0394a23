//! Waiting until a test server is up, bounded in time.

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
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback probe socket");
    sock.set_read_timeout(Some(PROBE)).unwrap();
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited at start-up: {status}");
        }
        assert!(
            Instant::now() < end,
            "{name} did not answer a Binding request on {server} within {timeout:?}"
        );
        if answers_binding(&sock, server) {
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_socket_does_not_answer() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(PROBE)).unwrap();
        assert!(!answers_binding(&sock, silent.local_addr().unwrap()));
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
