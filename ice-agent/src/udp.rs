//! Sending a datagram on a tokio UDP socket without waiting for tokio.
//!
//! tokio answers `try_send`/`try_send_to` with `WouldBlock` until its
//! reactor has seen the socket writable once, which a socket registered a
//! moment ago has not: the first datagrams of a new socket (a session's
//! first STUN probes, a load generator's Allocate) would be dropped, or
//! wait a reactor turn. A UDP socket almost always has room, so the kernel
//! is asked at once; only its own `WouldBlock` (a full send buffer) is
//! left to the caller, who drops the datagram (the sender's timers
//! retransmit) or waits with tokio's `send`, whose wait is for exactly
//! that case.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Send `msg` now (to `to`, or to the connected peer with `None`);
/// `WouldBlock` only when the socket's send buffer is full.
pub(crate) fn send_now(sock: &UdpSocket, msg: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let s = socket2::SockRef::from(sock);
    match to {
        Some(to) => s.send_to(msg, &to.into()),
        None => s.send(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn the_first_datagram_of_a_new_socket_leaves_at_once() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // What this module is for: tokio refuses before its reactor ran.
        assert_eq!(
            tx.try_send_to(b"tokio", to).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(send_now(&tx, b"first", Some(to)).unwrap(), 5);
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"first"[..], tx.local_addr().unwrap()));
        tx.connect(to).await.unwrap();
        assert_eq!(send_now(&tx, b"second", None).unwrap(), 6);
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"second");
    }
}
