//! Creating the UDP sockets the batches run on.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::DEFAULT_SOCKET_BUFFER;

/// Options for [`udp_socket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSocketOptions {
    /// Set `SO_REUSEPORT` so several threads can each bind their own socket to the same address
    /// and the kernel spreads datagrams across them.
    pub reuse_port: bool,
    /// `SO_RCVTIMEO`: a blocking `recv` returns `WouldBlock` after this long, which lets a worker
    /// thread check for shutdown. `None` blocks forever.
    pub recv_timeout: Option<Duration>,
    /// Requested `SO_RCVBUF` in bytes (best effort), `None` to keep the system default.
    pub recv_buffer: Option<usize>,
    /// Requested `SO_SNDBUF` in bytes (best effort), `None` to keep the system default.
    pub send_buffer: Option<usize>,
    /// Put the socket in non-blocking mode (required before handing it to tokio).
    pub nonblocking: bool,
}

impl Default for UdpSocketOptions {
    /// Reuse-port off, no timeout, 4 MiB buffers, blocking.
    fn default() -> Self {
        Self {
            reuse_port: false,
            recv_timeout: None,
            recv_buffer: Some(DEFAULT_SOCKET_BUFFER),
            send_buffer: Some(DEFAULT_SOCKET_BUFFER),
            nonblocking: false,
        }
    }
}

/// Sets a socket buffer size, falling back to the privileged `*BUFFORCE` option when
/// `net.core.{r,w}mem_max` caps the normal one. Best effort: failures are only logged.
fn set_buffer(sock: &Socket, size: usize, recv: bool) {
    let res = if recv {
        sock.set_recv_buffer_size(size)
    } else {
        sock.set_send_buffer_size(size)
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, size, recv, "could not set socket buffer size");
    }
    let got = if recv {
        sock.recv_buffer_size()
    } else {
        sock.send_buffer_size()
    };
    // The kernel doubles the value it stores (socket(7)), so `got >= size` means it was granted.
    if matches!(got, Ok(got) if got >= size) {
        return;
    }
    let opt = if recv {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_SNDBUFFORCE
    };
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and we pass its exact size; the fd is valid for the
    // duration of the call because `sock` is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            ptr::from_ref(&value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Without CAP_NET_ADMIN we keep what the kernel granted.
        tracing::debug!(
            error = %io::Error::last_os_error(),
            requested = size,
            granted = ?got.ok(),
            recv,
            "socket buffer capped by net.core.{{r,w}}mem_max"
        );
    }
}

/// Creates a UDP socket bound to `addr` with the given options.
///
/// IPv6 sockets get `IPV6_V6ONLY`, so an IPv4 and an IPv6 socket can share a port number and
/// every source address we see is in its native family. Buffer sizes are best effort (the
/// kernel's limits may cap them; as root the cap is bypassed).
pub fn udp_socket(addr: SocketAddr, opts: &UdpSocketOptions) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if let Some(size) = opts.recv_buffer {
        set_buffer(&sock, size, true);
    }
    if let Some(size) = opts.send_buffer {
        set_buffer(&sock, size, false);
    }
    // A zero timeout would mean "block forever" to the kernel; make it the smallest real one.
    sock.set_read_timeout(opts.recv_timeout.map(|t| t.max(Duration::from_micros(1))))?;
    sock.set_nonblocking(opts.nonblocking)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Binds `count` SO_REUSEPORT sockets to `addr`, one per worker thread, so
/// the kernel spreads flows across them.
///
/// Any process of the same user can join a reuse-port group and silently
/// take a share of the traffic, and a group we join would share ours: so the
/// address is first bound once *without* SO_REUSEPORT, which fails with
/// `AddrInUse` if anyone holds it. With port 0, the first socket picks the
/// port and the others join it. `opts.reuse_port` is ignored (always on).
pub fn udp_socket_group(
    addr: SocketAddr,
    count: usize,
    opts: &UdpSocketOptions,
) -> io::Result<Vec<UdpSocket>> {
    let reuse = UdpSocketOptions {
        reuse_port: true,
        ..opts.clone()
    };
    let mut addr = addr;
    if addr.port() != 0 {
        let probe = UdpSocketOptions {
            reuse_port: false,
            recv_buffer: None,
            send_buffer: None,
            ..opts.clone()
        };
        drop(udp_socket(addr, &probe).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{addr} is in use by another socket or process: {e}"),
            )
        })?);
    }
    let mut socks = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let s = udp_socket(addr, &reuse)?;
        addr = s.local_addr()?;
        socks.push(s);
    }
    Ok(socks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_util::*;
    use crate::batch::RecvBatch;

    #[test]
    fn socket_group_refuses_an_address_someone_holds() {
        let reuse = UdpSocketOptions {
            reuse_port: true,
            ..opts()
        };
        // Another process's reuse-port socket: we must not join its group.
        let other = udp_socket(v4_any(), &reuse).unwrap();
        let taken = other.local_addr().unwrap();
        let err = udp_socket_group(taken, 2, &opts()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("in use"), "{err}");
        // A free address: every socket of the group on one port.
        let group = udp_socket_group(v4_any(), 3, &opts()).unwrap();
        let a = group[0].local_addr().unwrap();
        assert_ne!(a.port(), 0);
        assert!(group.iter().all(|s| s.local_addr().unwrap() == a));
        let group2 = udp_socket_group(SocketAddr::new(a.ip(), 0), 1, &opts()).unwrap();
        assert_ne!(group2[0].local_addr().unwrap(), a);
    }

    #[test]
    fn reuse_port_lets_sockets_share_an_address() {
        let reuse = UdpSocketOptions {
            reuse_port: true,
            ..opts()
        };
        let a = udp_socket(v4_any(), &reuse).unwrap();
        let addr = a.local_addr().unwrap();
        let b = udp_socket(addr, &reuse).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        // Without SO_REUSEPORT the same bind fails.
        assert!(udp_socket(addr, &opts()).is_err());
        // The kernel spreads flows across the group; every datagram lands on one of them.
        let client = udp_socket(v4_any(), &opts()).unwrap();
        client.send_to(b"hi", addr).unwrap();
        let mut batch = RecvBatch::new(4, 16);
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let got: usize = [&a, &b].iter().map(|s| batch.recv(*s).unwrap_or(0)).sum();
        assert_eq!(got, 1);
    }

    #[test]
    fn ipv6_socket_is_v6_only() {
        let s = Socket::from(udp_socket(v6_any(), &opts()).unwrap());
        assert!(s.only_v6().unwrap());
        let s = Socket::from(udp_socket(v4_any(), &opts()).unwrap());
        assert!(s.recv_buffer_size().is_ok());
    }

    #[test]
    fn buffer_sizes_are_applied() {
        let small = UdpSocketOptions {
            recv_buffer: Some(64 * 1024),
            send_buffer: Some(96 * 1024),
            ..opts()
        };
        let s = Socket::from(udp_socket(v4_any(), &small).unwrap());
        // socket(7): the kernel doubles the value to account for bookkeeping.
        assert_eq!(s.recv_buffer_size().unwrap(), 128 * 1024);
        assert_eq!(s.send_buffer_size().unwrap(), 192 * 1024);
        // The 4 MiB default is best effort, but never smaller than leaving the default alone.
        let plain = UdpSocketOptions {
            recv_buffer: None,
            send_buffer: None,
            ..opts()
        };
        let big = Socket::from(udp_socket(v4_any(), &opts()).unwrap());
        let dflt = Socket::from(udp_socket(v4_any(), &plain).unwrap());
        assert!(big.recv_buffer_size().unwrap() >= dflt.recv_buffer_size().unwrap());
        assert!(big.send_buffer_size().unwrap() >= dflt.send_buffer_size().unwrap());
    }
}
