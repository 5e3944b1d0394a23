//! Batched UDP I/O for Linux: `recvmmsg(2)` / `sendmmsg(2)` over preallocated buffers.
//!
//! A STUN server answers many clients, each with one small datagram; one system call per datagram
//! costs more than the answer itself. [`RecvBatch`] takes up to N datagrams per call and
//! [`SendBatch`] sends up to N replies per call, each reply to its own destination (which is why
//! this is not quinn-udp: GSO batches only datagrams to one destination).
//!
//! Both structs own every buffer and every kernel-facing array (`mmsghdr`, `iovec`,
//! `sockaddr_storage`) and reuse them: no allocation happens per call. The raw pointers inside
//! `mmsghdr`/`iovec` are rebuilt at the start of each call from the owned heap buffers, so a moved
//! struct never hands the kernel a stale pointer.
//!
//! The socket is anything that is [`AsFd`](std::os::fd::AsFd): a `std::net::UdpSocket`, a
//! `socket2::Socket` or a `tokio::net::UdpSocket` (for tokio, call inside
//! `try_io(Interest::READABLE, ..)`).
//!
//! Files: `recv.rs` ([`RecvBatch`]), `send.rs` ([`SendBatch`]), `socket.rs` ([`udp_socket`]),
//! [`gso`] (segment trains to one destination with `UDP_SEGMENT`), `sys.rs` (zeroed C structs,
//! `sockaddr` conversions).

pub mod gso;
mod recv;
mod send;
mod socket;
mod sys;

pub use recv::{Datagram, RecvBatch};
pub use send::{FlushStats, PushError, SendBatch};
pub use socket::{udp_socket, udp_socket_group, UdpSocketOptions};

/// Largest batch the kernel accepts in one call (`UIO_MAXIOV`); larger `vlen` is silently capped.
const MAX_BATCH: usize = 1024;

/// Default number of datagrams per batch.
pub const DEFAULT_BATCH: usize = 64;
/// Default buffer size per datagram: larger than any Ethernet-MTU datagram, with room for the
/// biggest STUN messages we accept.
pub const DEFAULT_BUF_SIZE: usize = 2048;
/// Default socket buffer size requested by [`udp_socket`] (best effort; see there).
pub const DEFAULT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod test_util {
    pub(crate) use super::{udp_socket, RecvBatch, SendBatch, UdpSocketOptions};
    use std::net::SocketAddr;
    pub(crate) use std::time::Duration;

    pub(crate) fn v4_any() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    pub(crate) fn v6_any() -> SocketAddr {
        "[::1]:0".parse().unwrap()
    }

    /// Default options with a receive timeout, so a lost datagram fails a test instead of
    /// hanging it.
    pub(crate) fn opts() -> UdpSocketOptions {
        UdpSocketOptions {
            recv_timeout: Some(Duration::from_secs(2)),
            ..UdpSocketOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;

    /// A batch moved (to another thread, even) after use still works: pointers are rebuilt.
    #[test]
    fn batches_survive_moves() {
        let server = udp_socket(v4_any(), &opts()).unwrap();
        let client = udp_socket(v4_any(), &opts()).unwrap();
        let server_addr = server.local_addr().unwrap();
        let mut send = SendBatch::new(4, 64);
        let mut recv = RecvBatch::new(4, 64);
        send.push(server_addr, b"one").unwrap();
        send.flush(&client).unwrap();
        recv.recv(&server).unwrap();
        let (mut send, mut recv) = std::thread::spawn(move || {
            let moved = (Box::new(send), Box::new(recv));
            (*moved.0, *moved.1)
        })
        .join()
        .unwrap();
        send.push(server_addr, b"two").unwrap();
        let stats = send.flush(&client).unwrap();
        assert_eq!(stats.sent, 1);
        assert_eq!(recv.recv(&server).unwrap(), 1);
        assert_eq!(recv.get(0).unwrap().data, b"two");
    }
}
