//! Receiving: [`RecvBatch`] over `recvmmsg(2)`.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr;

use super::sys::{empty_iovec, read_sockaddr, zeroed_mmsghdr, zeroed_storage};
use super::MAX_BATCH;

/// One received datagram, borrowed from a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The payload (at most the batch's buffer size).
    pub data: &'a [u8],
    /// Who sent it.
    pub source: SocketAddr,
    /// The datagram was larger than the buffer and was cut (`MSG_TRUNC`); `data` is incomplete
    /// and should be dropped as malformed.
    pub truncated: bool,
}

/// Where one received datagram lives in the batch.
#[derive(Debug, Clone, Copy)]
struct Received {
    slot: usize,
    len: usize,
    source: SocketAddr,
    truncated: bool,
}

/// Receives up to N datagrams per `recvmmsg(2)` call into N preallocated buffers.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// use natkit_runtime::batch::{udp_socket, RecvBatch, UdpSocketOptions};
/// let sock = udp_socket("127.0.0.1:3478".parse().unwrap(), &UdpSocketOptions::default())?;
/// let mut batch = RecvBatch::new(64, 2048);
/// let n = batch.recv(&sock)?;
/// for d in batch.iter() {
///     println!("{} bytes from {}", d.data.len(), d.source);
/// }
/// # let _ = n; Ok(()) }
/// ```
pub struct RecvBatch {
    /// `slots * buf_size` bytes; slot `i` is `bufs[i * buf_size..(i + 1) * buf_size]`.
    bufs: Box<[u8]>,
    buf_size: usize,
    iovecs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// Datagrams of the last call; capacity `slots`, so pushing never reallocates.
    received: Vec<Received>,
}

// SAFETY: the raw pointers stored in `iovecs`/`hdrs` only ever point into heap memory owned by
// this same struct (`bufs`, `iovecs`, `addrs`) and are rewritten before every system call; they
// are never dereferenced by Rust code. Moving the struct to another thread therefore moves sole
// ownership of everything they point to.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.hdrs.len())
            .field("buf_size", &self.buf_size)
            .field("received", &self.received.len())
            .finish()
    }
}

impl RecvBatch {
    /// Allocates a batch of `slots` buffers of `buf_size` bytes each. `slots` is clamped to
    /// 1..=1024 (the kernel's `UIO_MAXIOV`), `buf_size` to at least 1.
    pub fn new(slots: usize, buf_size: usize) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        let buf_size = buf_size.max(1);
        Self {
            bufs: vec![0u8; slots * buf_size].into_boxed_slice(),
            buf_size,
            iovecs: vec![empty_iovec(); slots].into_boxed_slice(),
            addrs: vec![zeroed_storage(); slots].into_boxed_slice(),
            hdrs: (0..slots).map(|_| zeroed_mmsghdr()).collect(),
            received: Vec::with_capacity(slots),
        }
    }

    /// Number of buffers (the most datagrams one call can return).
    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Points every header at its own buffer and address slot and resets the fields the kernel
    /// writes back. Done before every call, so the pointers are always current.
    fn prepare(&mut self) {
        let buf_size = self.buf_size;
        let base = self.bufs.as_mut_ptr();
        for (i, ((iov, addr), hdr)) in self
            .iovecs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .zip(self.hdrs.iter_mut())
            .enumerate()
        {
            // SAFETY: `i < slots`, so `i * buf_size` is within `bufs` (length `slots * buf_size`).
            iov.iov_base = unsafe { base.add(i * buf_size) }.cast();
            iov.iov_len = buf_size;
            hdr.msg_hdr.msg_name = ptr::from_mut(addr).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
    }

    /// Receives datagrams: blocks (per the socket's mode and `SO_RCVTIMEO`) until the first one
    /// arrives, then takes whatever else is already queued, up to [`slots`](Self::slots)
    /// (`MSG_WAITFORONE`). Returns how many datagrams are now available through
    /// [`get`](Self::get) / [`iter`](Self::iter); the previous call's datagrams are discarded.
    ///
    /// Errors are the socket's: `WouldBlock` on a non-blocking socket with nothing queued or
    /// when a receive timeout expires. `EINTR` is retried.
    pub fn recv<S: AsFd + ?Sized>(&mut self, sock: &S) -> io::Result<usize> {
        self.received.clear();
        self.prepare();
        let fd = sock.as_fd().as_raw_fd();
        let n = loop {
            // SAFETY: `hdrs` holds `slots` initialised headers whose `msg_name`/`msg_iov` point
            // into buffers owned by `self` (just rebuilt by `prepare`), each with the length
            // given; `self` is borrowed mutably for the whole call so nothing else touches them.
            // A null timeout is allowed.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    self.hdrs.len() as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        for (slot, (hdr, addr)) in self.hdrs.iter().zip(self.addrs.iter()).take(n).enumerate() {
            // A UDP socket only reports IPv4/IPv6 sources; anything else cannot be answered.
            let Some(source) = read_sockaddr(addr, hdr.msg_hdr.msg_namelen) else {
                continue;
            };
            self.received.push(Received {
                slot,
                len: (hdr.msg_len as usize).min(self.buf_size),
                source,
                truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(self.received.len())
    }

    /// Number of datagrams from the last [`recv`](Self::recv).
    pub fn len(&self) -> usize {
        self.received.len()
    }

    /// True if the last [`recv`](Self::recv) returned no datagram (or none was made yet).
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// The `i`-th datagram of the last [`recv`](Self::recv).
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        let r = self.received.get(i)?;
        let start = r.slot * self.buf_size;
        Some(Datagram {
            data: &self.bufs[start..start + r.len],
            source: r.source,
            truncated: r.truncated,
        })
    }

    /// The datagrams of the last [`recv`](Self::recv), in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        (0..self.received.len()).filter_map(move |i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_util::*;
    use std::time::Duration;

    /// Sends `count` distinct datagrams from `from` to `to` one by one, then receives them all
    /// with batches, checking payloads and sources.
    fn recv_roundtrip(bind: SocketAddr) {
        let server = udp_socket(bind, &opts()).unwrap();
        let server_addr = server.local_addr().unwrap();
        let client = udp_socket(bind, &opts()).unwrap();
        let client_addr = client.local_addr().unwrap();
        let count = 10;
        for i in 0..count {
            let payload = format!("datagram {i}");
            client.send_to(payload.as_bytes(), server_addr).unwrap();
        }
        let mut batch = RecvBatch::new(4, 64);
        let mut seen = Vec::new();
        while seen.len() < count {
            let n = batch.recv(&server).unwrap();
            assert!((1..=4).contains(&n), "n = {n}");
            assert_eq!(n, batch.len());
            for d in batch.iter() {
                assert_eq!(d.source, client_addr);
                assert!(!d.truncated);
                seen.push(String::from_utf8(d.data.to_vec()).unwrap());
            }
        }
        let expected: Vec<String> = (0..count).map(|i| format!("datagram {i}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn recv_batch_ipv4() {
        recv_roundtrip(v4_any());
    }

    #[test]
    fn recv_batch_ipv6() {
        recv_roundtrip(v6_any());
    }

    #[test]
    fn recv_takes_everything_queued_in_one_call() {
        let server = udp_socket(v4_any(), &opts()).unwrap();
        let client = udp_socket(v4_any(), &opts()).unwrap();
        for i in 0..5u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        // Loopback delivery is synchronous: all five are queued before we call recv.
        let mut batch = RecvBatch::new(64, 16);
        assert_eq!(batch.recv(&server).unwrap(), 5);
        let data: Vec<&[u8]> = batch.iter().map(|d| d.data).collect();
        assert_eq!(
            data,
            vec![&[0u8; 3][..], &[1; 3], &[2; 3], &[3; 3], &[4; 3]]
        );
        assert!(batch.get(5).is_none());
    }

    #[test]
    fn recv_reports_truncation() {
        let server = udp_socket(v4_any(), &opts()).unwrap();
        let client = udp_socket(v4_any(), &opts()).unwrap();
        client
            .send_to(&[7u8; 100], server.local_addr().unwrap())
            .unwrap();
        client
            .send_to(&[8u8; 8], server.local_addr().unwrap())
            .unwrap();
        let mut batch = RecvBatch::new(8, 32);
        assert_eq!(batch.recv(&server).unwrap(), 2);
        let first = batch.get(0).unwrap();
        assert!(first.truncated);
        assert_eq!(first.data, &[7u8; 32][..]);
        let second = batch.get(1).unwrap();
        assert!(!second.truncated);
        assert_eq!(second.data, &[8u8; 8][..]);
    }

    #[test]
    fn recv_times_out_with_would_block() {
        let server = udp_socket(
            v4_any(),
            &UdpSocketOptions {
                recv_timeout: Some(Duration::from_millis(50)),
                ..UdpSocketOptions::default()
            },
        )
        .unwrap();
        let mut batch = RecvBatch::new(4, 64);
        let start = std::time::Instant::now();
        let err = batch.recv(&server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert!(batch.is_empty());
    }

    #[test]
    fn recv_nonblocking_returns_would_block() {
        let server = udp_socket(
            v4_any(),
            &UdpSocketOptions {
                nonblocking: true,
                ..UdpSocketOptions::default()
            },
        )
        .unwrap();
        let mut batch = RecvBatch::new(4, 64);
        let err = batch.recv(&server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
