//! Which of a load-generator thread's sockets have datagrams waiting, from
//! tokio's reactor: the CLI waits on sockets one way. The hot loops stay
//! synchronous (sendmmsg/recvmmsg batches on their own sockets) and ask
//! here, between batches, what is ready; measured as fast as their own
//! epoll set was (docs/PERFORMANCE.md, "The load generators' waiting").
//!
//! tokio reports a socket readable once per arrival (edge-triggered), so a
//! loop that stops reading before the socket is empty (to serve the
//! others) is told again next time; only [`Readiness::drained`] (the last
//! read found nothing more) forgets it until more arrives.

use std::future::{poll_fn, Future};
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The sockets of one thread, each under a key of the caller's choice.
pub struct Readiness {
    rt: tokio::runtime::Runtime,
    /// Each socket's registration (the caller keeps reading and writing
    /// the socket itself), by key. The descriptor is the caller's, not a
    /// duplicate: a generator with 10,000 allocations has 20,000 sockets
    /// already. Registered for reading only: a registration for writing
    /// too would be told each time a sent datagram leaves the socket
    /// buffer.
    socks: Vec<Option<AsyncFd<Fd>>>,
    /// The keys, in the order they were added.
    keys: Vec<u64>,
}

/// A socket's descriptor, owned by the caller (see [`Readiness::add`]).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Readiness {
    /// An empty set, with a one-thread tokio runtime for this thread.
    pub fn new() -> io::Result<Readiness> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(Readiness {
            rt,
            socks: Vec::new(),
            keys: Vec::new(),
        })
    }

    /// Watch `sock` for datagrams; `key` (a small number: it indexes a
    /// table) comes back from [`Readiness::wait`].
    ///
    /// # Safety
    /// `sock` must stay open (and not be replaced) until this set is
    /// dropped: the set watches its descriptor.
    pub unsafe fn add(&mut self, sock: &UdpSocket, key: u64) -> io::Result<()> {
        let s = {
            let _rt = self.rt.enter();
            // SAFETY: the caller keeps the descriptor open and the same
            // for the set's life, which is the registration's.
            unsafe { AsyncFd::register_with_interest(Fd(sock.as_raw_fd()), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?
        };
        let k = usize::try_from(key).map_err(|_| io::Error::other("key too large"))?;
        if self.socks.len() <= k {
            self.socks.resize_with(k + 1, || None);
        }
        self.socks[k] = Some(s);
        self.keys.push(key);
        Ok(())
    }

    /// Wait until some sockets have datagrams, or `timeout`; their keys go
    /// to `ready` (empty on timeout).
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<u64>) {
        ready.clear();
        let (socks, keys) = (&self.socks, &self.keys);
        self.rt.block_on(async {
            let mut sleep = pin!(tokio::time::sleep(timeout));
            poll_fn(|cx| {
                for &k in keys {
                    if let Some(s) = &socks[k as usize] {
                        // Ready also on an error (an ICMP report): the
                        // read that follows returns it.
                        if s.poll_read_ready(cx).is_ready() {
                            ready.push(k);
                        }
                    }
                }
                if !ready.is_empty() || sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await
        });
    }

    /// The socket of `key` has been read empty: not ready until the next
    /// datagram.
    pub fn drained(&mut self, key: u64) {
        if let Some(Some(s)) = self.socks.get(key as usize) {
            // tokio forgets readiness when the read it guards would block,
            // which is what the caller's last read found (a datagram
            // arriving since is a new event, reported at the next wait).
            let _ = s.try_io(Interest::READABLE, |_| {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_sockets_until_they_are_drained() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let mut r = Readiness::new().unwrap();
        // SAFETY: both sockets outlive `r` (declared before it).
        unsafe {
            r.add(&a, 10).unwrap();
            r.add(&b, 3).unwrap();
        }
        let mut ready = Vec::new();
        r.wait(Duration::ZERO, &mut ready);
        assert!(ready.is_empty());
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        a.send_to(b"y", b.local_addr().unwrap()).unwrap();
        r.wait(Duration::from_secs(5), &mut ready);
        assert_eq!(ready, [3]);
        // Read one of two: still ready (the loop moved on, not drained).
        let mut buf = [0u8; 4];
        b.recv(&mut buf).unwrap();
        r.wait(Duration::ZERO, &mut ready);
        assert_eq!(ready, [3]);
        b.recv(&mut buf).unwrap();
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        r.drained(3);
        r.wait(Duration::from_millis(20), &mut ready);
        assert!(ready.is_empty());
        // A new datagram after draining is news again.
        a.send_to(b"z", b.local_addr().unwrap()).unwrap();
        r.wait(Duration::from_secs(5), &mut ready);
        assert_eq!(ready, [3]);
    }
}
