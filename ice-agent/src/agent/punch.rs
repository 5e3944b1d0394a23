//! natkit's hard-NAT punch, the agent's part (see
//! `session_core::punch` for the whole method and its cost). Used only
//! when both agents announced it in natkit's own description: nothing here
//! changes what a standard ICE peer sees.
//!
//! - The side behind the address-and-port-dependent mapping ("hard") opens
//!   extra sockets: [`Agent::add_punch_base`] makes each a base that
//!   answers checks but forms no pair of its own. The first authentic check
//!   that arrives on one makes it a host candidate paired with the sender
//!   only (RFC 8445 §7.3.1.3/§7.3.1.4: peer-reflexive remote, triggered
//!   check), so a few hundred sockets never enter the check list.
//! - The other side ("easy") sends [`Agent::punch_probe`]s: Binding
//!   requests that are ordinary checks on the wire (USERNAME, PRIORITY,
//!   role, MESSAGE-INTEGRITY, RFC 8445 §7.2.2), to ports of the hard side's
//!   address that no candidate names. An authentic success response from
//!   where the probe went makes that address a peer-reflexive remote
//!   candidate, checked at once (a triggered check).

use std::collections::VecDeque;
use std::net::SocketAddr;

use natkit_proto::raw::Class;
use rand::Rng;

use super::{Agent, InputError, PairState};
use crate::candidate::{candidate_priority, Candidate, CandidateKind};
use crate::event::{PairFailure, Transmit};
use crate::wire::{self, CheckRequest, Message};

/// The most probes whose answer is still recognised (a punch sends at most
/// `session_core::punch::PROBE_BUDGET`); older ones are forgotten.
const MAX_PROBES: usize = 4096;

/// The foundation of a remote candidate learned by a probe's answer.
const PROBE_FOUNDATION: &str = "punch";

/// A probe in flight: its transaction ID, the base it left from and where
/// it went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    tid: [u8; 12],
    from: SocketAddr,
    to: SocketAddr,
}

/// The punch's state inside the agent.
#[derive(Debug, Default)]
pub(super) struct PunchState {
    /// Extra bases that answer checks and pair only with their sender.
    bases: Vec<SocketAddr>,
    /// Punch bases a check promoted to host candidates.
    promoted: Vec<SocketAddr>,
    /// Probes sent, oldest first.
    probes: VecDeque<Probe>,
    /// The first address whose answer to a probe proved a path.
    hit: Option<SocketAddr>,
}

impl PunchState {
    pub(super) fn is_promoted(&self, base: SocketAddr) -> bool {
        self.promoted.contains(&base)
    }
}

impl Agent {
    /// Make `base` (a socket the driver opened for the hard-NAT punch) a
    /// base that answers the peer's checks; a check that arrives on it pairs
    /// it with the check's source only. Not a signalled candidate.
    pub fn add_punch_base(&mut self, base: SocketAddr) {
        if !self.punch.bases.contains(&base) && !self.local.iter().any(|c| c.base == base) {
            self.punch.bases.push(base);
        }
    }

    /// `base` is closed: checks arriving on it are no longer expected.
    /// A punch base that a check already paired stays a local candidate
    /// (indices hold), but its pairs fail ([`PairFailure::BaseClosed`])
    /// and its checks stop, so no nomination can select a pair on a
    /// closed socket; the selected pair is left alone (the driver keeps
    /// its socket).
    pub fn remove_punch_base(&mut self, base: SocketAddr) {
        self.punch.bases.retain(|b| *b != base);
        if !self.punch.promoted.contains(&base) {
            return;
        }
        let on_base: Vec<usize> = (0..self.pairs.len())
            .filter(|&p| self.local[self.pairs[p].local].base == base && self.selected != Some(p))
            .collect();
        for &p in &on_base {
            self.fail_pair(p, PairFailure::BaseClosed);
        }
        self.checks.retain(|c| !on_base.contains(&c.pair));
        self.triggered.retain(|p| !on_base.contains(p));
    }

    /// Whether `base` is a punch base that a check of the peer paired (it
    /// must stay open while its pair may be used).
    pub fn punch_base_used(&self, base: SocketAddr) -> bool {
        self.punch.promoted.contains(&base)
    }

    /// A probe from host base `from` to `to`: a Binding request that is a
    /// connectivity check on the wire (RFC 8445 §7.2.2), queued for sending
    /// (see [`Agent::poll_transmit`]). Its authentic success response from
    /// `to` makes `to` a peer-reflexive remote candidate, checked at once.
    /// Returns `false` (nothing sent) before the peer's credentials are
    /// known or when `from` is not a host base.
    pub fn punch_probe(&mut self, from: SocketAddr, to: SocketAddr) -> bool {
        let Some(rc) = &self.remote_creds else {
            return false;
        };
        let Some(priority) = self
            .local
            .iter()
            .find(|c| c.kind == CandidateKind::Host && c.base == from)
            .map(Candidate::peer_reflexive_priority)
        else {
            return false;
        };
        let username = format!("{}:{}", rc.ufrag, self.local_creds.ufrag);
        let tid: [u8; 12] = self.rng.gen();
        let req = CheckRequest {
            username: &username,
            key: rc.pwd.as_bytes(),
            priority,
            role: self.role,
            tiebreaker: self.tiebreaker,
            use_candidate: false,
        };
        let Ok(payload) = wire::request(&tid, &req) else {
            return false;
        };
        self.transmits.push_back(Transmit { from, to, payload });
        if self.punch.probes.len() >= MAX_PROBES {
            self.punch.probes.pop_front();
        }
        self.punch.probes.push_back(Probe { tid, from, to });
        true
    }

    /// The packet a punch base sends to open its NAT mapping towards `to`:
    /// a Binding indication (RFC 8445 §11's keepalive), queued for sending.
    /// Not a check: where the peer's filter lets it in (a full or
    /// restricted cone, where plain ICE works anyway), it must not make the
    /// peer learn hundreds of peer-reflexive candidates (its list holds
    /// 100) and check them all; the path is made by the peer's probe that
    /// hits the mapping, which the punch base answers and checks back.
    pub fn punch_open(&mut self, from: SocketAddr, to: SocketAddr) -> bool {
        if !self.punch.bases.contains(&from) {
            return false;
        }
        let tid: [u8; 12] = self.rng.gen();
        let Ok(payload) = wire::keepalive(&tid) else {
            return false;
        };
        self.transmits.push_back(Transmit { from, to, payload });
        true
    }

    /// Forget the probes sent (the punch is over; late answers are
    /// dropped like any unknown transaction's).
    pub fn forget_punch_probes(&mut self) {
        self.punch.probes.clear();
    }

    /// The first address whose answer to a probe proved a path, if any.
    pub fn punch_hit(&self) -> Option<SocketAddr> {
        self.punch.hit
    }

    /// A check arrived on `to_local`, which is no base of the check list:
    /// if it is a punch base, it becomes a host candidate (paired only by
    /// the caller, with the check's source). Returns its index.
    pub(super) fn promote_punch_base(&mut self, to_local: SocketAddr) -> Option<usize> {
        let i = self.punch.bases.iter().position(|b| *b == to_local)?;
        self.punch.bases.swap_remove(i);
        self.punch.promoted.push(to_local);
        // Local preference 0: below every signalled host candidate.
        self.local.push(Candidate::host(to_local, 0));
        Some(self.local.len() - 1)
    }

    /// Whether local candidate `li` is a punch base promoted by a check:
    /// it pairs only with the remote that checked it.
    pub(super) fn is_punch_candidate(&self, li: usize) -> bool {
        self.punch.promoted.contains(&self.local[li].base)
    }

    /// A response whose transaction is no check's: a probe's answer?
    pub(super) fn on_probe_response(
        &mut self,
        from: SocketAddr,
        to_local: SocketAddr,
        bytes: &[u8],
        m: &Message<'_>,
    ) -> Result<(), InputError> {
        let i = self
            .punch
            .probes
            .iter()
            .position(|p| p.tid == m.header.transaction_id)
            .ok_or(InputError::UnknownTransaction)?;
        self.verify_response(bytes, m)?;
        let p = self.punch.probes[i];
        // RFC 8445 §7.2.5.2.1: only an answer from where the probe went,
        // to where it left from, proves the path.
        if m.header.class() != Class::Success || from != p.to || to_local != p.from {
            return Ok(());
        }
        self.punch.probes.remove(i);
        self.punch.hit.get_or_insert(from);
        let ri = match self.remote.iter().position(|c| c.addr == from) {
            Some(ri) => ri,
            None => {
                if self.remote.len() >= self.cfg.max_remote_candidates {
                    return Ok(());
                }
                // The priority the peer's check from that address would
                // carry (RFC 8445 §7.3.1.3 learns it from PRIORITY).
                let prio = candidate_priority(CandidateKind::PeerReflexive, 0);
                self.remote.push(Candidate::remote(
                    CandidateKind::PeerReflexive,
                    from,
                    prio,
                    PROBE_FOUNDATION,
                ));
                self.remote.len() - 1
            }
        };
        let Some(li) = self
            .local
            .iter()
            .position(|c| c.kind == CandidateKind::Host && c.base == to_local)
            .or_else(|| self.promote_punch_base(to_local))
        else {
            return Ok(());
        };
        if let Some(q) = self.try_pair(li, ri) {
            if matches!(
                self.pairs[q].state,
                PairState::Frozen | PairState::Waiting | PairState::Failed
            ) {
                self.pairs[q].state = PairState::Waiting;
                self.pairs[q].failure = None;
                self.enqueue_triggered(q);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{Config, PairInfo, Role};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The peer's check (from `from`, on our `to`), as the peer would send
    /// it with our credentials.
    fn check(agent: &Agent, peer_ufrag: &str) -> Vec<u8> {
        let lc = agent.local_credentials();
        let username = format!("{}:{peer_ufrag}", lc.ufrag);
        let req = CheckRequest {
            username: &username,
            key: lc.pwd.as_bytes(),
            priority: 1_000_000,
            role: Role::Controlling,
            tiebreaker: 7,
            use_candidate: false,
        };
        wire::request(&[9; 12], &req).unwrap()
    }

    #[test]
    fn a_punch_base_pairs_only_with_its_checker_and_its_pairs_fail_when_closed() {
        let now = Instant::now();
        let mut agent = Agent::new(
            Config {
                role: Role::Controlled,
                seed: Some(3),
                ..Config::default()
            },
            now,
        );
        agent
            .add_local_candidate(Candidate::host(a("10.1.0.1:2000"), 65535))
            .unwrap();
        agent
            .set_remote_credentials("peerufrag", "peerpassword0123456789ab")
            .unwrap();
        let (base, peer, other) = (
            a("10.1.0.1:31000"),
            a("203.0.113.1:40001"),
            a("203.0.113.9:5000"),
        );
        agent.add_punch_base(base);
        // A punch base forms no pair of its own.
        agent
            .add_remote_candidate(Candidate::remote(
                CandidateKind::ServerReflexive,
                other,
                100,
                "x",
            ))
            .unwrap();
        assert!(agent.check_list().iter().all(|p| p.local.base != base));
        // The peer's check on it: answered, and paired with the sender only.
        let req = check(&agent, "peerufrag");
        agent.handle_input(peer, base, &req, now).unwrap();
        let on_base: Vec<PairInfo> = agent
            .check_list()
            .into_iter()
            .filter(|p| p.local.base == base)
            .collect();
        assert_eq!(on_base.len(), 1);
        assert_eq!(on_base[0].remote.addr, peer);
        assert!(agent.punch_base_used(base));
        let answered =
            std::iter::from_fn(|| agent.poll_transmit()).any(|t| t.from == base && t.to == peer);
        assert!(answered);
        // A remote candidate trickled later does not pair with it.
        agent
            .add_remote_candidate(Candidate::remote(
                CandidateKind::ServerReflexive,
                a("203.0.113.9:5001"),
                100,
                "y",
            ))
            .unwrap();
        assert_eq!(
            agent
                .check_list()
                .iter()
                .filter(|p| p.local.base == base)
                .count(),
            1
        );
        // Closed: its pair fails, and nothing more leaves from it.
        agent.remove_punch_base(base);
        let p = agent
            .check_list()
            .into_iter()
            .find(|p| p.local.base == base)
            .unwrap();
        assert_eq!(p.state, PairState::Failed);
        assert_eq!(p.failure, Some(PairFailure::BaseClosed));
        agent.handle_timeout(now + std::time::Duration::from_secs(1));
        assert!(std::iter::from_fn(|| agent.poll_transmit()).all(|t| t.from != base));
        // The description side: never a local candidate to signal twice.
        agent.restart();
        assert!(agent.local_candidates().iter().all(|c| c.base != base));
    }
}
