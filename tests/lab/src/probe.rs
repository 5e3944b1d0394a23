//! Small network probes the lab runs from inside its namespaces: a STUN
//! Binding round trip (to see a server is up) and single datagrams (to see
//! what a router lets through).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// A Binding request (RFC 8489 §5, §6): type 0x0001, no attributes, the
/// magic cookie, and a transaction id.
fn binding_request(id: &[u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[8..20].copy_from_slice(id);
    m
}

/// Whether `server` answers a Binding request over UDP within `limit`
/// (success response, class 0b10, same transaction id). Run it inside a
/// namespace with [`crate::Netns::enter`].
pub fn stun_answers(server: SocketAddr, limit: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let id: [u8; 12] = rand::random();
    let req = binding_request(&id);
    let end = Instant::now() + limit;
    let mut buf = [0u8; 1500];
    while Instant::now() < end {
        if sock.send_to(&req, server).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 20 && buf[0..2] == 0x0101u16.to_be_bytes() && buf[8..20] == id {
                return true;
            }
        }
    }
    false
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
    let id: [u8; 12] = rand::random();
    let req = binding_request(&id);
    let mut buf = [0u8; 1500];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    for _ in 0..tries {
        sock.send_to(&req, server).ok()?;
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 20 && buf[0..2] == 0x0101u16.to_be_bytes() && buf[8..20] == id {
                return xor_mapped(&buf[20..n]);
            }
        }
    }
    None
}

/// XOR-MAPPED-ADDRESS (type 0x0020), IPv4, from a message's attributes.
fn xor_mapped(mut attrs: &[u8]) -> Option<SocketAddr> {
    while attrs.len() >= 4 {
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let value = attrs.get(4..4 + len)?;
        if t == 0x0020 && len == 8 && value[1] == 0x01 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ 0x2112_A442;
            return Some(SocketAddr::from((std::net::Ipv4Addr::from(ip), port)));
        }
        // Attributes are padded to 4 bytes (RFC 8489 §14).
        let padded = (4 + len + 3) & !3;
        attrs = attrs.get(padded..)?;
    }
    None
}
