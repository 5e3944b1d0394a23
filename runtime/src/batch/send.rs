//! Sending: [`SendBatch`] over `sendmmsg(2)`, one destination per datagram.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr;

use super::sys::{empty_iovec, write_sockaddr, zeroed_mmsghdr, zeroed_storage};
use super::MAX_BATCH;

/// Why [`SendBatch::push_with`] did not queue a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Every slot is taken: [`SendBatch::flush`] first.
    #[error("send batch is full")]
    Full,
    /// The writer claimed more bytes than the slot holds (a bug in the caller).
    #[error("datagram length {len} exceeds the slot size {capacity}")]
    TooLong {
        /// Length returned by the writer.
        len: usize,
        /// Slot size.
        capacity: usize,
    },
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Bytes in those datagrams.
    pub bytes: usize,
    /// Datagrams the kernel refused (e.g. `EPERM` from a firewall, `ECONNREFUSED`, `EINVAL` for
    /// an address of the wrong family); dropped.
    pub failed: usize,
    /// Datagrams still queued because the socket would block (`EAGAIN` on a non-blocking socket
    /// or after `SO_SNDTIMEO`); the next `flush` sends them first.
    pub pending: usize,
    /// The last per-datagram error, for logging.
    pub last_error: Option<io::Error>,
}

/// Queues up to N outgoing datagrams, each to its own destination, and sends them with one
/// `sendmmsg(2)` call (more only when the kernel stops early).
///
/// The caller writes each datagram straight into a slot buffer with
/// [`push_with`](Self::push_with), so nothing is copied between encoding and the kernel.
pub struct SendBatch {
    bufs: Box<[u8]>,
    buf_size: usize,
    /// Length of the datagram in each queued slot.
    lens: Box<[usize]>,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    iovecs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    /// First slot not yet sent (non-zero only after a flush that hit `EAGAIN`).
    head: usize,
    /// Number of slots in use; slots `head..queued` wait to be sent.
    queued: usize,
}

// SAFETY: as for `RecvBatch`: the raw pointers in `iovecs`/`hdrs` point only into heap memory
// owned by this struct, are rewritten before every system call and never dereferenced by Rust.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("slots", &self.hdrs.len())
            .field("buf_size", &self.buf_size)
            .field("pending", &self.len())
            .finish()
    }
}

/// Errors from `sendmmsg` that say the socket (or our arguments) is unusable, not one datagram.
fn is_fatal_send_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EDESTADDRREQ | libc::EISCONN)
    )
}

impl SendBatch {
    /// Allocates `slots` buffers of `buf_size` bytes each. `slots` is clamped to 1..=1024,
    /// `buf_size` to at least 1.
    pub fn new(slots: usize, buf_size: usize) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        let buf_size = buf_size.max(1);
        Self {
            bufs: vec![0u8; slots * buf_size].into_boxed_slice(),
            buf_size,
            lens: vec![0; slots].into_boxed_slice(),
            addrs: vec![zeroed_storage(); slots].into_boxed_slice(),
            addr_lens: vec![0; slots].into_boxed_slice(),
            iovecs: vec![empty_iovec(); slots].into_boxed_slice(),
            hdrs: (0..slots).map(|_| zeroed_mmsghdr()).collect(),
            head: 0,
            queued: 0,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// Size of each slot buffer (the largest datagram that can be queued).
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Datagrams waiting to be sent.
    pub fn len(&self) -> usize {
        self.queued - self.head
    }

    /// True if nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if no slot is free: [`flush`](Self::flush) before pushing more.
    pub fn is_full(&self) -> bool {
        self.queued == self.slots()
    }

    /// Drops every queued datagram.
    pub fn clear(&mut self) {
        self.head = 0;
        self.queued = 0;
    }

    /// Queues a datagram for `dest` whose bytes `write` puts directly into the slot buffer
    /// (`buf_size` bytes long), returning how many it wrote.
    ///
    /// Returns `Ok(true)` if queued, `Ok(false)` if `write` returned 0 (the caller decided, while
    /// encoding, that there is nothing to send; the slot stays free). When the batch is full,
    /// `write` is not called and [`PushError::Full`] is returned.
    pub fn push_with<F>(&mut self, dest: SocketAddr, write: F) -> Result<bool, PushError>
    where
        F: FnOnce(&mut [u8]) -> usize,
    {
        if self.is_full() {
            return Err(PushError::Full);
        }
        let slot = self.queued;
        let start = slot * self.buf_size;
        let len = write(&mut self.bufs[start..start + self.buf_size]);
        if len > self.buf_size {
            return Err(PushError::TooLong {
                len,
                capacity: self.buf_size,
            });
        }
        if len == 0 {
            return Ok(false);
        }
        self.lens[slot] = len;
        self.addr_lens[slot] = write_sockaddr(&dest, &mut self.addrs[slot]);
        self.queued += 1;
        Ok(true)
    }

    /// Queues a copy of `data` for `dest` (convenience for cold paths; the hot path uses
    /// [`push_with`](Self::push_with)). An empty `data` is not queued.
    pub fn push(&mut self, dest: SocketAddr, data: &[u8]) -> Result<bool, PushError> {
        if data.len() > self.buf_size {
            return Err(PushError::TooLong {
                len: data.len(),
                capacity: self.buf_size,
            });
        }
        self.push_with(dest, |buf| {
            buf[..data.len()].copy_from_slice(data);
            data.len()
        })
    }

    /// Points the headers of the queued slots at their buffers and addresses.
    fn prepare(&mut self) {
        let buf_size = self.buf_size;
        let base = self.bufs.as_mut_ptr();
        for i in self.head..self.queued {
            let iov = &mut self.iovecs[i];
            // SAFETY: `i < slots`, so `i * buf_size` is within `bufs`.
            iov.iov_base = unsafe { base.add(i * buf_size) }.cast();
            iov.iov_len = self.lens[i];
            let hdr = &mut self.hdrs[i];
            hdr.msg_hdr.msg_name = ptr::from_mut(&mut self.addrs[i]).cast();
            hdr.msg_hdr.msg_namelen = self.addr_lens[i];
            hdr.msg_hdr.msg_iov = ptr::from_mut(iov);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
    }

    /// Sends every queued datagram.
    ///
    /// A datagram the kernel refuses (`EPERM`, `ECONNREFUSED`, `EINVAL`, `EMSGSIZE`, ...) is
    /// dropped and counted in [`FlushStats::failed`]; the rest of the batch is still sent.
    /// `EINTR` is retried. On `EAGAIN` the unsent datagrams stay queued
    /// ([`FlushStats::pending`]); wait for writability and flush again, or [`clear`](Self::clear).
    ///
    /// Returns `Err` only when the socket itself is unusable (`EBADF`, `ENOTSOCK`, ...); the
    /// batch is then cleared.
    pub fn flush<S: AsFd + ?Sized>(&mut self, sock: &S) -> io::Result<FlushStats> {
        let mut stats = FlushStats::default();
        self.prepare();
        let fd = sock.as_fd().as_raw_fd();
        while self.head < self.queued {
            let remaining = self.queued - self.head;
            // SAFETY: headers `head..queued` were initialised by `prepare` and point into buffers
            // and addresses owned by `self` with their true lengths; `self` is borrowed mutably
            // for the whole call. `remaining >= 1` and fits a c_uint (at most 1024).
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr().add(self.head),
                    remaining as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                let n = rc as usize;
                stats.sent += n;
                stats.bytes += self.hdrs[self.head..self.head + n]
                    .iter()
                    .map(|h| h.msg_len as usize)
                    .sum::<usize>();
                self.head += n;
                continue;
            }
            if rc == 0 {
                // Cannot happen with `remaining >= 1`; fail rather than spin.
                self.clear();
                return Err(io::Error::other("sendmmsg sent no datagram"));
            }
            // sendmmsg returns -1 only when the first datagram of this call failed (an error
            // after some succeeded is reported as a short count, and the failing datagram then
            // comes first in the next call), so the error belongs to slot `head`.
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    stats.pending = self.queued - self.head;
                    return Ok(stats);
                }
                _ if is_fatal_send_error(&err) => {
                    self.clear();
                    return Err(err);
                }
                _ => {
                    stats.failed += 1;
                    stats.last_error = Some(err);
                    self.head += 1;
                }
            }
        }
        self.clear();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::test_util::*;
    use crate::batch::RecvBatch;
    use std::net::UdpSocket;

    fn send_to_many(bind: SocketAddr) {
        let sender = udp_socket(bind, &opts()).unwrap();
        let receivers: Vec<UdpSocket> =
            (0..3).map(|_| udp_socket(bind, &opts()).unwrap()).collect();
        let mut batch = SendBatch::new(16, 128);
        for (i, r) in receivers.iter().enumerate() {
            for j in 0..2u8 {
                let queued = batch
                    .push_with(r.local_addr().unwrap(), |buf| {
                        buf[0] = i as u8;
                        buf[1] = j;
                        2
                    })
                    .unwrap();
                assert!(queued);
            }
        }
        assert_eq!(batch.len(), 6);
        let stats = batch.flush(&sender).unwrap();
        assert_eq!(stats.sent, 6);
        assert_eq!(stats.bytes, 12);
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.pending, 0);
        assert!(batch.is_empty());
        let mut rb = RecvBatch::new(8, 64);
        for (i, r) in receivers.iter().enumerate() {
            assert_eq!(rb.recv(r).unwrap(), 2);
            for (j, d) in rb.iter().enumerate() {
                assert_eq!(d.data, &[i as u8, j as u8][..]);
                assert_eq!(d.source, sender.local_addr().unwrap());
            }
        }
    }

    #[test]
    fn send_batch_to_many_destinations_ipv4() {
        send_to_many(v4_any());
    }

    #[test]
    fn send_batch_to_many_destinations_ipv6() {
        send_to_many(v6_any());
    }

    #[test]
    fn failed_datagrams_are_counted_and_the_rest_sent() {
        let sender = udp_socket(v4_any(), &opts()).unwrap();
        let receiver = udp_socket(v4_any(), &opts()).unwrap();
        let good = receiver.local_addr().unwrap();
        let mut batch = SendBatch::new(8, 64);
        batch.push(good, b"a").unwrap();
        // An IPv6 destination on an IPv4 socket: the kernel refuses this one datagram.
        batch.push("[::1]:9".parse().unwrap(), b"x").unwrap();
        batch.push(good, b"b").unwrap();
        // Port 0 is not a valid destination (EINVAL).
        batch.push("127.0.0.1:0".parse().unwrap(), b"y").unwrap();
        batch.push(good, b"c").unwrap();
        let stats = batch.flush(&sender).unwrap();
        assert_eq!(stats.sent, 3, "{stats:?}");
        assert_eq!(stats.failed, 2, "{stats:?}");
        assert!(stats.last_error.is_some());
        assert!(batch.is_empty());
        let mut rb = RecvBatch::new(8, 64);
        let mut got = Vec::new();
        while got.len() < 3 {
            rb.recv(&receiver).unwrap();
            got.extend(rb.iter().map(|d| d.data.to_vec()));
        }
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn push_limits() {
        let mut batch = SendBatch::new(2, 4);
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            batch.push(dest, b"too long"),
            Err(PushError::TooLong {
                len: 8,
                capacity: 4
            })
        );
        assert_eq!(
            batch.push_with(dest, |_| 5),
            Err(PushError::TooLong {
                len: 5,
                capacity: 4
            })
        );
        assert_eq!(batch.push_with(dest, |_| 0), Ok(false));
        assert!(batch.is_empty());
        assert_eq!(batch.push(dest, b"1"), Ok(true));
        assert_eq!(batch.push(dest, b"2"), Ok(true));
        assert!(batch.is_full());
        let mut called = false;
        assert_eq!(
            batch.push_with(dest, |_| {
                called = true;
                1
            }),
            Err(PushError::Full)
        );
        assert!(!called);
        batch.clear();
        assert!(batch.is_empty() && !batch.is_full());
    }

    #[test]
    fn flush_on_a_closed_fd_is_an_error_and_clears() {
        let mut batch = SendBatch::new(2, 16);
        batch.push("127.0.0.1:9".parse().unwrap(), b"z").unwrap();
        // A file that is not a socket: the whole call is unusable, not one datagram.
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = batch.flush(&file).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
        assert!(batch.is_empty());
    }

    #[test]
    fn empty_flush_sends_nothing() {
        let sender = udp_socket(v4_any(), &opts()).unwrap();
        let stats = SendBatch::new(4, 16).flush(&sender).unwrap();
        assert_eq!((stats.sent, stats.failed, stats.pending), (0, 0, 0));
    }
}
