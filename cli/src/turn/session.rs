//! The allocations of one `natkit turn` run and the blocking loop that
//! drives their sans-IO clients: send what they queue, wait on all sockets
//! at once with `poll(2)` until input or the next timer, feed the input.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_proto::integrity::PasswordAlgorithm;
use natkit_proto::turn::client::{Client, Event, State};

use super::conn::{self, Conn};
use super::failure::{Failure, Who};

/// Data from a peer, as it arrived.
pub struct Received {
    pub peer: SocketAddr,
    pub data: Vec<u8>,
    /// `Some` for ChannelData, `None` for a Data indication.
    pub channel: Option<u16>,
    pub at: Instant,
}

/// How the client authenticated: the realm, and the password algorithm
/// with its integrity attribute (RFC 8489 §9.2), as the TURN client chose
/// them from the server's 401.
#[derive(Debug, Clone)]
pub struct AuthSeen {
    pub realm: String,
    pub algorithm: &'static str,
    pub integrity: &'static str,
}

impl AuthSeen {
    pub fn of(client: &Client) -> Option<AuthSeen> {
        let (realm, alg) = client.authentication()?;
        let (algorithm, integrity) = match alg {
            PasswordAlgorithm::Md5 => ("MD5", "MESSAGE-INTEGRITY"),
            PasswordAlgorithm::Sha256 => ("SHA-256", "MESSAGE-INTEGRITY-SHA256"),
        };
        Some(AuthSeen {
            realm: realm.to_string(),
            algorithm,
            integrity,
        })
    }
}

/// One allocation: the sans-IO client and its connection.
pub struct Alloc {
    pub name: &'static str,
    pub client: Client,
    pub conn: Conn,
    pub local: SocketAddr,
    pub events: VecDeque<Event>,
    pub data: VecDeque<Received>,
}

impl Alloc {
    /// Send what the client queued; collect its events.
    pub fn flush(&mut self, who: &Who) -> Result<(), Failure> {
        while let Some(t) = self.client.poll_transmit() {
            self.conn
                .send(&t.payload)
                .map_err(|e| Failure::new("io", format!("cannot send to {}: {e}", who.server)))?;
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push_back(e);
        }
        Ok(())
    }

    /// Relay `data` to `peer` (ChannelData if a channel is bound, else a
    /// Send indication).
    pub fn send_data(&mut self, peer: SocketAddr, data: &[u8], who: &Who) -> Result<(), Failure> {
        let mut buf = vec![0u8; data.len() + 64];
        let n = self
            .client
            .send_to(peer, data, &mut buf)
            .map_err(|e| Failure::new("usage", format!("allocation {}: {e}", self.name)))?;
        self.conn
            .send(&buf[..n])
            .map_err(|e| Failure::new("io", format!("cannot send to {}: {e}", who.server)))
    }
}

/// The allocations and the I/O loop that drives them.
pub struct Session {
    pub allocs: Vec<Alloc>,
    pub who: Who,
}

impl Session {
    /// One round: send, wait for input until the earliest timer or
    /// `deadline`, feed what came, fire due timers.
    pub fn turn(&mut self, deadline: Option<Instant>) -> Result<(), Failure> {
        for a in &mut self.allocs {
            a.flush(&self.who)?;
        }
        let now = Instant::now();
        let wake = self
            .allocs
            .iter()
            .filter_map(|a| a.client.poll_timeout())
            .chain(deadline)
            .min()
            // Nothing scheduled cannot happen while a step waits (each
            // request has a timer); still, never block without bound.
            .unwrap_or(now + Duration::from_secs(1));
        let fds: Vec<_> = self.allocs.iter().map(|a| a.conn.fd()).collect();
        let ready = conn::wait_readable(&fds, wake.saturating_duration_since(now))
            .map_err(|e| Failure::new("io", format!("poll: {e}")))?;
        let mut frames = Vec::new();
        for (a, ready) in self.allocs.iter_mut().zip(ready) {
            if !ready {
                continue;
            }
            frames.clear();
            a.conn.read(&mut frames).map_err(|e| {
                Failure::new(
                    "io",
                    format!("allocation {}: {}: {e}", a.name, self.who.server),
                )
            })?;
            let at = Instant::now();
            for f in &frames {
                if let Some(d) = a.client.recv(f, at) {
                    a.data.push_back(Received {
                        peer: d.peer,
                        data: d.data.to_vec(),
                        channel: d.channel,
                        at,
                    });
                }
            }
        }
        let now = Instant::now();
        for a in &mut self.allocs {
            if a.client.poll_timeout().is_some_and(|t| t <= now) {
                a.client.handle_timeout(now);
            }
            a.flush(&self.who)?;
        }
        Ok(())
    }

    /// Run until `check` returns a value, or `deadline` passes (`None`).
    pub fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Session) -> Result<Option<T>, Failure>,
    ) -> Result<Option<T>, Failure> {
        loop {
            for a in &mut self.allocs {
                a.flush(&self.who)?;
            }
            if let Some(v) = check(self)? {
                return Ok(Some(v));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            self.turn(deadline)?;
        }
    }

    /// Wait for one event per allocation in `which` that `pick` accepts
    /// (other events are dropped: a short-lived check has no use for them).
    pub fn wait_each<T: Clone>(
        &mut self,
        which: &[usize],
        deadline: Option<Instant>,
        mut pick: impl FnMut(&str, Event) -> Option<T>,
    ) -> Result<Vec<Option<(T, Instant)>>, Failure> {
        let mut got: Vec<Option<(T, Instant)>> = vec![None; self.allocs.len()];
        self.wait(deadline, |s| {
            for &i in which {
                let a = &mut s.allocs[i];
                while got[i].is_none() {
                    let Some(ev) = a.events.pop_front() else {
                        break;
                    };
                    if let Some(v) = pick(a.name, ev) {
                        got[i] = Some((v, Instant::now()));
                    }
                }
            }
            Ok(which.iter().all(|&i| got[i].is_some()).then_some(()))
        })?;
        Ok(got)
    }

    /// Delete every allocation (Refresh with LIFETIME 0, RFC 8656 §8) and
    /// wait for the answers; returns the allocations that failed to close.
    pub fn close(&mut self, deadline: Option<Instant>) -> Result<Vec<String>, Failure> {
        let now = Instant::now();
        // A failed or closed client has nothing to delete and will say
        // nothing more: waiting for it would only run out the deadline.
        let live: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| !matches!(self.allocs[i].client.state(), State::Failed | State::Closed))
            .collect();
        for &i in &live {
            // Earlier events are answered already; keep only what close says.
            self.allocs[i].events.clear();
            self.allocs[i].client.close(now);
        }
        let got = self.wait_each(&live, deadline, |_, ev| match ev {
            Event::Closed => Some(None),
            Event::Failed(e) => Some(Some(e)),
            _ => None,
        })?;
        let mut problems = Vec::new();
        for &i in &live {
            let name = self.allocs[i].name;
            match &got[i] {
                Some((None, _)) => {}
                Some((Some(e), _)) => problems.push(format!("{name}: {e}")),
                None => problems.push(format!("{name}: no answer to the deletion")),
            }
        }
        Ok(problems)
    }
}
