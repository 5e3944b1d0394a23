//! Server-reflexive gathering (RFC 8445 §5.1.1.2): one STUN Binding
//! transaction per (STUN server, host base) of the same family, each on
//! proto's RFC 8489 §6.2.1 retransmission timer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_proto::binding::RequestOptions;
use natkit_proto::transaction::{self, BindingOutcome, BindingTransaction};

use super::report::{Problem, ServerKind, ServerProblem};
// The core's state, types and imports (this file is part of its impl).
use super::*;

/// Retransmissions for gathering requests: a STUN or TURN server that has
/// not answered within about 4 s is reported unreachable (RFC 8489 §6.2.1
/// allows a shorter budget than 39.5 s; gathering must not hold up a
/// connection that host candidates can make).
pub(super) const GATHER_RTO: transaction::Config = transaction::Config {
    rto: Duration::from_millis(250),
    rc: 5,
    rm: 8,
};

/// Whether a base can reach a server: same family, and loopback only with
/// loopback (a loopback base cannot reach a real server and vice versa).
pub(crate) fn reaches(base: SocketAddr, server: SocketAddr) -> bool {
    base.is_ipv4() == server.is_ipv4() && base.ip().is_loopback() == server.ip().is_loopback()
}

/// One STUN server asked from one base.
pub(super) struct Probe {
    pub base: SocketAddr,
    pub server: SocketAddr,
    tx: BindingTransaction,
    pub done: bool,
    /// Sent only to learn how the NAT maps (RFC 5780 §4.3: the server's
    /// other address), not for a candidate.
    pub detect: bool,
}

/// What a finished probe found.
pub(super) enum Found {
    /// The server saw `base` as `mapped`.
    Mapped {
        base: SocketAddr,
        mapped: SocketAddr,
        server: SocketAddr,
        /// The server's RFC 5780 OTHER-ADDRESS, if it gave one.
        other: Option<SocketAddr>,
        /// A detection probe's answer.
        detect: bool,
    },
    /// The server gave nothing.
    Problem(ServerProblem),
}

impl Probe {
    /// Probes of every STUN server from every base that reaches it.
    pub fn start_all(bases: &[SocketAddr], servers: &[SocketAddr], now: Instant) -> Vec<Probe> {
        let mut probes = Vec::new();
        for &server in servers {
            for &base in bases.iter().filter(|b| reaches(**b, server)) {
                probes.push(Probe::new(base, server, false, now));
            }
        }
        probes
    }

    /// A Binding request from `base` to `server`.
    pub fn new(base: SocketAddr, server: SocketAddr, detect: bool, now: Instant) -> Probe {
        let opts = RequestOptions {
            fingerprint: true,
            ..RequestOptions::default()
        };
        Probe {
            base,
            server,
            tx: BindingTransaction::new(now, server, &opts, GATHER_RTO),
            done: false,
            detect,
        }
    }

    /// Whether `data` from `from` on `base` answered this probe (it is
    /// consumed then).
    pub fn handle(
        &mut self,
        base: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        !self.done
            && self.base == base
            && self.server == from
            && self.tx.handle_datagram(now, from, data)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then(|| self.tx.poll_timeout()).flatten()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.tx.handle_timeout(now);
        }
    }

    /// The next request to send: (from base, to server, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if self.done {
            return None;
        }
        self.tx
            .poll_transmit()
            .map(|t| (self.base, t.to, t.payload))
    }

    /// The outcome, once, when the transaction has finished.
    pub fn take_outcome(&mut self) -> Option<Found> {
        if self.done {
            return None;
        }
        let o = self.tx.outcome()?;
        self.done = true;
        let problem = |problem| {
            Found::Problem(ServerProblem {
                server: self.server,
                kind: ServerKind::Stun,
                problem,
            })
        };
        Some(match o {
            BindingOutcome::Answered { response, .. } => {
                match (response.outcome, response.mapped) {
                    (Ok(()), Some(mapped)) => Found::Mapped {
                        base: self.base,
                        mapped,
                        server: self.server,
                        other: response.other_address,
                        detect: self.detect,
                    },
                    (Ok(()), None) => problem(Problem::NoMappedAddress),
                    (Err(code), _) => problem(Problem::StunError(code)),
                }
            }
            BindingOutcome::TimedOut { waited, sent } => problem(Problem::NoAnswer {
                sent: *sent,
                waited: *waited,
            }),
        })
    }
}

/// Gathering: STUN probes, local candidates, servers that gave none, and
/// the end of gathering.
impl SessionCore {
    pub(super) fn start_probes(&mut self, now: Instant) {
        self.probes = if self.cfg.relay_only {
            Vec::new()
        } else {
            Probe::start_all(&self.bases, &self.cfg.stun, now)
        };
        self.mappings.clear();
    }

    pub(super) fn pump_probes(&mut self) {
        let mut found = Vec::new();
        for (seq, p) in self.probes.iter_mut().enumerate() {
            while let Some((base, to, payload)) = p.poll_transmit() {
                self.transmits.push_back(Transmit {
                    via: Via::Base(base),
                    to,
                    payload,
                });
            }
            if let Some(f) = p.take_outcome() {
                found.push((seq, f));
            }
        }
        for (seq, f) in found {
            self.dirty = true;
            match f {
                Found::Mapped {
                    base,
                    mapped,
                    server,
                    other,
                    detect,
                } => {
                    self.mappings.note(seq, base, mapped);
                    if let Some(other) = other.filter(|_| !detect) {
                        self.detect_mapping(base, server, other);
                    }
                    if detect {
                        continue;
                    }
                    if mapped != base {
                        let i = self.bases.iter().position(|b| *b == base).unwrap_or(0);
                        let pref = local_preference(base.ip(), i as u16);
                        self.add_local(Candidate::server_reflexive(
                            mapped,
                            base,
                            server.ip(),
                            pref,
                        ));
                    }
                }
                Found::Problem(p) => self.problem(p),
            }
        }
    }

    /// RFC 5780 §4.3: ask the server's other address (another IP and
    /// port), then its other port on the same IP, from the same base, once
    /// per base. Mappings that differ mean an address-dependent mapping;
    /// the step between the last two (sent back to back) is the port
    /// prediction of a sequential allocator.
    fn detect_mapping(&mut self, base: SocketAddr, server: SocketAddr, other: SocketAddr) {
        if other.is_ipv4() != base.is_ipv4()
            || other == server
            || self.probes.iter().any(|p| p.detect && p.base == base)
        {
            return;
        }
        let now = self.now;
        for to in [other, SocketAddr::new(server.ip(), other.port())] {
            if to != server {
                self.probes.push(Probe::new(base, to, true, now));
            }
        }
        self.dirty = true;
    }

    pub(super) fn check_gathering(&mut self, now: Instant) {
        if self.gathering_done {
            return;
        }
        let servers = !self.probes.is_empty() || !self.allocs.is_empty();
        let all = self.probes.iter().all(|p| p.done)
            && self.allocs.iter().all(|a| a.done)
            && !self
                .mapper
                .as_ref()
                .is_some_and(|m| m.holds_gathering(now, servers));
        if !all && now < self.gather_deadline {
            return;
        }
        self.gathering_done = true;
        if !all {
            // Servers still unanswered at the deadline are named now, so an
            // empty description says why; a late answer still trickles.
            let problem = Problem::GatheringTimeout {
                after: self.cfg.gather_timeout,
            };
            let mut pending: Vec<ServerProblem> = self
                .probes
                .iter()
                .filter(|p| !p.done)
                .map(|p| ServerProblem {
                    server: p.server,
                    kind: ServerKind::Stun,
                    problem: problem.clone(),
                })
                .collect();
            pending.dedup_by_key(|p| p.server);
            pending.extend(
                self.allocs
                    .iter()
                    .filter(|a| !a.done)
                    .map(|a| ServerProblem {
                        server: a.server.addr,
                        kind: a.kind(),
                        problem: problem.clone(),
                    }),
            );
            for p in pending {
                self.problem(p);
            }
        }
        self.agent.end_of_local_candidates();
        let ufrag = self.agent.local_credentials().ufrag.clone();
        self.events
            .push_back(SessionEvent::Candidate(TrickleCandidate {
                ufrag,
                candidate: None,
            }));
        self.events.push_back(SessionEvent::GatheringDone);
    }

    pub(super) fn add_local(&mut self, c: Candidate) {
        match self.agent.add_local_candidate(c.clone()) {
            Ok(()) => {
                tracing::debug!(candidate = %c, "local candidate");
                let ufrag = self.agent.local_credentials().ufrag.clone();
                self.events
                    .push_back(SessionEvent::Candidate(TrickleCandidate {
                        ufrag,
                        candidate: Some(SignalledCandidate::from_local(&c)),
                    }));
            }
            Err(e) => tracing::debug!(candidate = %c, error = %e, "local candidate not added"),
        }
    }

    pub(super) fn problem(&mut self, p: ServerProblem) {
        tracing::debug!("{p}");
        self.events
            .push_back(SessionEvent::ServerProblem(p.clone()));
        // One entry per server: a later, more precise answer (a 401 after
        // "no answer yet") replaces the earlier one.
        match self
            .problems
            .iter_mut()
            .find(|q| q.server == p.server && q.kind == p.kind)
        {
            Some(q) => *q = p,
            None => self.problems.push(p),
        }
    }
}
