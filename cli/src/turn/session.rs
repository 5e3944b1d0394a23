//! The allocations of one `natkit turn` run, each a
//! [`TurnConnection`] (natkit-ice's one copy of the TURN client's I/O over
//! UDP, TCP and TLS), and the loop that waits on all of them at once: the
//! first one with news wins, the others' waits are dropped (cancel-safe).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use natkit_ice::turn::{Incoming, LinkError, TurnConnection};
use natkit_proto::integrity::PasswordAlgorithm;
use natkit_proto::turn::client::{Client, Event, State};

use super::failure::{Failure, Who};
use crate::udp_driver::secs;

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

/// One allocation: its connection, and what it reported that the steps
/// have not looked at yet.
pub struct Alloc {
    pub name: &'static str,
    pub conn: TurnConnection,
    pub events: VecDeque<Event>,
    pub data: VecDeque<Received>,
}

impl Alloc {
    /// A connection about to allocate: its client starts now (see
    /// [`TurnConnection::restart`]), so that waiting for an earlier
    /// allocation does not count against its first request's timer.
    pub fn start(name: &'static str, mut conn: TurnConnection, now: Instant) -> Alloc {
        conn.restart(now);
        Alloc {
            name,
            conn,
            events: VecDeque::new(),
            data: VecDeque::new(),
        }
    }

    pub fn client(&mut self) -> &mut Client {
        self.conn.client()
    }

    /// Queue `data` for `peer` (ChannelData if a channel is bound, else a
    /// Send indication); the next wait sends it.
    pub fn queue_data(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), Failure> {
        self.conn
            .client()
            .queue_send(peer, data)
            .map_err(|e| Failure::new("usage", format!("allocation {}: {e}", self.name)))
    }
}

/// The allocations and the loop that drives them.
pub struct Session {
    pub allocs: Vec<Alloc>,
    pub who: Who,
    /// Which allocation is asked first on the next turn (they take turns,
    /// so a busy one cannot keep the others waiting).
    first: usize,
    /// Print a progress line a second while waiting (not when another
    /// command reads the report).
    pub progress: bool,
}

impl Session {
    pub fn new(who: Who) -> Session {
        Session {
            allocs: Vec::new(),
            who,
            first: 0,
            progress: true,
        }
    }

    /// One round: wait until an allocation has news (an event, relayed
    /// data; each connection sends what its client queued and runs its
    /// timers while waiting) or `deadline`, and keep the news.
    async fn turn(&mut self, deadline: Option<Instant>) -> Result<(), Failure> {
        let n = self.allocs.len();
        if n == 0 {
            return Ok(());
        }
        self.first = (self.first + 1) % n;
        let first = self.first;
        let got = {
            let mut waits: Vec<_> = self
                .allocs
                .iter_mut()
                .enumerate()
                .map(|(i, a)| Box::pin(async move { (i, a.conn.next().await) }))
                .collect();
            waits.rotate_left(first);
            let any = poll_fn(|cx| {
                for w in waits.iter_mut() {
                    if let Poll::Ready(r) = Pin::as_mut(w).poll(cx) {
                        return Poll::Ready(r);
                    }
                }
                Poll::Pending
            });
            match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), any).await.ok(),
                None => Some(any.await),
            }
        };
        let Some((i, r)) = got else {
            return Ok(());
        };
        let a = &mut self.allocs[i];
        match r.map_err(|e| link_failure(a.name, self.who.server, &e))? {
            Incoming::Event(e) => a.events.push_back(e),
            Incoming::Data {
                peer,
                data,
                channel,
                at,
            } => a.data.push_back(Received {
                peer,
                data,
                channel,
                at,
            }),
            // ICMP port unreachable on the connected socket: nothing listens
            // on that UDP port, and waiting out the retransmissions would
            // only delay the same news (RFC 1122 §4.1.3.3 passes it up).
            Incoming::Unreachable(kind) => {
                if kind == io::ErrorKind::ConnectionRefused {
                    self.who.port_unreachable = true;
                    return Err(super::failure::unreachable(&self.who, a.name));
                }
            }
        }
        Ok(())
    }

    /// Run until `check` returns a value, or `deadline` passes (`None`).
    /// What `check` queues is sent by the next turn.
    pub async fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Session) -> Result<Option<T>, Failure>,
    ) -> Result<Option<T>, Failure> {
        let start = Instant::now();
        let mut lines = 0u32;
        loop {
            if let Some(v) = check(self)? {
                return Ok(Some(v));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // A line a second while nothing comes back: a silent server
            // must not look like a hang.
            let tick = start + Duration::from_secs(u64::from(lines) + 1);
            if now >= tick {
                lines += 1;
                if self.progress {
                    errln!(
                        "... waiting for {}: {}",
                        self.who.server,
                        secs(now.saturating_duration_since(start))
                    );
                }
                continue;
            }
            self.turn(Some(deadline.map_or(tick, |d| d.min(tick))))
                .await?;
        }
    }

    /// Wait for one event per allocation in `which` that `pick` accepts
    /// (other events are dropped: a short-lived check has no use for them).
    pub async fn wait_each<T: Clone>(
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
        })
        .await?;
        Ok(got)
    }

    /// Delete every allocation (Refresh with LIFETIME 0, RFC 8656 §8) and
    /// wait for the answers; returns the allocations that failed to close.
    pub async fn close(&mut self, deadline: Option<Instant>) -> Result<Vec<String>, Failure> {
        let now = Instant::now();
        // A failed or closed client has nothing to delete and will say
        // nothing more: waiting for it would only run out the deadline.
        let live: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| {
                !matches!(
                    self.allocs[i].client().state(),
                    State::Failed | State::Closed
                )
            })
            .collect();
        for &i in &live {
            // Earlier events are answered already; keep only what close says.
            self.allocs[i].events.clear();
            self.allocs[i].client().close(now);
        }
        let got = self
            .wait_each(&live, deadline, |_, ev| match ev {
                Event::Closed => Some(None),
                Event::Failed(e) => Some(Some(e)),
                _ => None,
            })
            .await?;
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

/// The connection of allocation `name` failed.
pub fn link_failure(name: &str, server: SocketAddr, e: &LinkError) -> Failure {
    Failure::new("io", format!("allocation {name}: {server}: {e}"))
}
