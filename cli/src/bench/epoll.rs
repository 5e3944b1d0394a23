//! A minimal level-triggered epoll set for the load generator's threads:
//! one `epoll_wait` tells which of a thread's sockets have answers, so the
//! thread neither spins on empty sockets nor pays poll(2)'s per-call scan of
//! every descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance watching sockets for readability (and errors).
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll set with room to report `capacity` ready sockets per wait.
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: plain system call; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` is a fresh descriptor we own exclusively.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    /// Watch `fd` for input; `key` comes back from [`wait`](Self::wait).
    /// EPOLLERR is always reported (an ICMP error on a connected socket).
    pub fn add(&mut self, fd: RawFd, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout_ms` for ready sockets and return their keys
    /// (empty on timeout or on a signal).
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = u64> + '_> {
        // SAFETY: `events` is a live buffer of `len` epoll_event structs the
        // kernel may fill; `len` is at least 1.
        let rc = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        let n = if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            rc as usize
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn reports_only_readable_sockets() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ep = Epoll::new(4).unwrap();
        ep.add(a.as_raw_fd(), 10).unwrap();
        ep.add(b.as_raw_fd(), 20).unwrap();
        assert_eq!(ep.wait(0).unwrap().count(), 0);
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let ready: Vec<u64> = ep.wait(1000).unwrap().collect();
        assert_eq!(ready, vec![20]);
        // Level-triggered: still ready until read.
        assert_eq!(ep.wait(0).unwrap().collect::<Vec<_>>(), vec![20]);
        let mut buf = [0u8; 4];
        b.recv(&mut buf).unwrap();
        assert_eq!(ep.wait(0).unwrap().count(), 0);
    }
}
