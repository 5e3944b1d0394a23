//! Small network probes the lab runs from inside its namespaces: a STUN
//! Binding round trip (to see a server is up) and single datagrams (to see
//! what a router lets through).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::transaction;
use natkit_testkit::ready::answers_binding;

/// Whether `server` answers a Binding request over UDP within `limit`
/// (a response with the request's transaction id, RFC 8489 §6.3). Run it
/// inside a namespace with [`crate::Netns::enter`].
pub fn stun_answers(server: SocketAddr, limit: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    if sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return false;
    }
    wait_until(limit, || answers_binding(&sock, server))
}

/// Whether a TCP connection to `addr` opens within `limit`.
pub fn tcp_opens(addr: SocketAddr, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Poll `ready` every 50 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mapped address `server` sees for `sock` (XOR-MAPPED-ADDRESS of a
/// Binding success response, RFC 8489 §14.2), asked over UDP with up to
/// `tries` sends 500 ms apart.
pub fn stun_mapped(sock: &UdpSocket, server: SocketAddr, tries: u32) -> Option<SocketAddr> {
    let tid = transaction::new_transaction_id();
    let mut req = [0u8; 64];
    let n = binding::write_request(&mut req, &tid, &RequestOptions::default()).ok()?;
    let mut buf = [0u8; 1500];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    for _ in 0..tries {
        sock.send_to(&req[..n], server).ok()?;
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            // Answers to earlier sends of the same request carry the same
            // transaction id; anything else is not ours.
            match binding::parse_response(&buf[..len]) {
                Ok(r) if r.transaction_id == tid && r.outcome.is_ok() => return r.mapped,
                _ => {}
            }
        }
    }
    None
}
