//! Connectivity checks (RFC 8445 §7): sending them, answering the peer's,
//! processing responses, role conflicts, peer-reflexive candidates.

use std::net::SocketAddr;
use std::time::Instant;

use natkit_proto::integrity;
use natkit_proto::raw::Class;
use natkit_proto::transaction::{Action, Transaction};
use rand::Rng;

use super::{is_base, Agent, Check, IceState, InputError, PairState};
use crate::candidate::{Candidate, CandidateKind};
use crate::event::{Event, PairFailure, Transmit};
use crate::wire::{self, CheckRequest, Message};
use crate::Role;

/// Most local peer-reflexive candidates learned (one per NAT mapping the
/// peer reports; a handful in practice).
const MAX_LOCAL_PRFLX: usize = 32;

impl Agent {
    fn local_prflx(&self) -> usize {
        self.local
            .iter()
            .filter(|c| c.kind == CandidateKind::PeerReflexive)
            .count()
    }

    /// The PRIORITY a check from local candidate `l` carries.
    ///
    /// RFC 8445 §7.1.1 gives it the peer-reflexive type preference, the
    /// priority of the candidate the peer learns should our check arrive
    /// from an address it was not told of. From a relayed base that
    /// address is our relayed candidate itself (the relay sends from it),
    /// so a peer that has not been told of it yet (a relayed candidate
    /// allocated after the description went out, or not trickled) learns
    /// our relay as peer-reflexive, type preference 110: above every
    /// direct server-reflexive (100) and port-mapped (105) pair, while we
    /// rank the same path by our relayed candidate (0). natkit's
    /// renomination needs both agents to rank valid pairs alike
    /// ([`IceOptions::renomination`](crate::IceOptions)); with the two
    /// rankings apart the peer ignored our upward renomination to the
    /// direct path as stale and the session stayed on the relay (the NAT
    /// lab's port-mapped runs, docs/NAT-MATRIX.md). So between natkit
    /// agents a check from a relayed base carries the relayed candidate's
    /// own priority; a standard peer gets §7.1.1's value.
    pub(super) fn check_priority(&self, l: &Candidate) -> u32 {
        if l.kind == CandidateKind::Relayed && self.remote_options.renomination {
            l.priority
        } else {
            l.peer_reflexive_priority()
        }
    }

    /// Send a check on pair `p` (RFC 8445 §7.2.4).
    pub(super) fn start_check(
        &mut self,
        p: usize,
        now: Instant,
        use_candidate: bool,
        consent: bool,
    ) {
        let nominates =
            !consent && !use_candidate && self.role == Role::Controlling && self.nominate_first();
        let Some(rc) = &self.remote_creds else { return };
        let pair = &self.pairs[p];
        let (l, r) = (&self.local[pair.local], &self.remote[pair.remote]);
        let username = format!("{}:{}", rc.ufrag, self.local_creds.ufrag);
        let tid: [u8; 12] = self.rng.gen();
        let req = CheckRequest {
            username: &username,
            key: rc.pwd.as_bytes(),
            priority: self.check_priority(l),
            role: self.role,
            tiebreaker: self.tiebreaker,
            use_candidate: use_candidate || nominates,
        };
        // The buffer fits the largest check; an error cannot happen with
        // validated credentials, and skipping the check is the safe outcome.
        let Ok(payload) = wire::request(&tid, &req) else {
            return;
        };
        let (from, to) = (l.base, r.addr);
        self.transmits.push_back(Transmit {
            from,
            to,
            payload: payload.clone(),
        });
        self.checks.push(Check {
            tid,
            pair: p,
            tx: Transaction::new(now, self.cfg.check_retransmit),
            payload,
            from,
            to,
            role: self.role,
            use_candidate,
            nominates,
            consent,
            cancelled: false,
        });
        if !consent {
            let pair = &mut self.pairs[p];
            pair.nominate = false;
            if pair.state != PairState::Succeeded {
                pair.state = PairState::InProgress;
            }
        }
    }

    pub(super) fn run_transactions(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.checks.len() {
            match self.checks[i].tx.handle_timeout(now) {
                Action::Retransmit if self.checks[i].cancelled => {}
                Action::Retransmit => {
                    let c = &self.checks[i];
                    self.transmits.push_back(Transmit {
                        from: c.from,
                        to: c.to,
                        payload: c.payload.clone(),
                    });
                }
                Action::TimedOut { sent, waited } => {
                    let c = self.checks.swap_remove(i);
                    let why = PairFailure::TimedOut { sent, waited };
                    // A nominating check that times out fails its pair (or is
                    // sent again, see `nomination_timed_out`); an ordinary
                    // one only if the pair is still waiting for it (another
                    // check may have succeeded meanwhile).
                    let pending = self.pairs[c.pair].state == PairState::InProgress
                        && !self
                            .checks
                            .iter()
                            .any(|o| o.pair == c.pair && !o.consent && !o.cancelled);
                    if !c.consent && !c.cancelled {
                        if c.use_candidate {
                            self.nomination_timed_out(c.pair, why);
                        } else if pending {
                            self.fail_pair(c.pair, why);
                        }
                    }
                    continue;
                }
                Action::Wait => {}
            }
            i += 1;
        }
    }

    pub(super) fn fail_pair(&mut self, p: usize, why: PairFailure) {
        if self.nominating == Some(p) {
            self.nominating = None;
        }
        let pair = &mut self.pairs[p];
        pair.state = PairState::Failed;
        pair.failure = Some(why);
        pair.nominate = false;
    }

    /// RFC 8445 §7.3: answer a check from the peer.
    pub(super) fn on_request(
        &mut self,
        from: SocketAddr,
        to_local: SocketAddr,
        bytes: &[u8],
        m: &Message<'_>,
        now: Instant,
    ) -> Result<(), InputError> {
        // RFC 8445 §7.3: USERNAME is "our ufrag:peer ufrag", MESSAGE-INTEGRITY
        // keyed with our password. Anything else is dropped unanswered, so
        // unauthenticated senders cannot use us as a reflector.
        let username = m.username.ok_or(InputError::UnknownUsername)?;
        let ours = username
            .split(|&b| b == b':')
            .next()
            .filter(|u| *u == self.local_creds.ufrag.as_bytes() && username.contains(&b':'));
        if ours.is_none() {
            return Err(InputError::UnknownUsername);
        }
        integrity::verify(bytes, &m.header, self.local_creds.pwd.as_bytes())
            .map_err(|_| InputError::Unauthenticated)?;
        if self.state == IceState::Failed {
            // RFC 8445 §7.3 accepts a USERNAME whose first part is our ufrag
            // "for a session in progress", and a failed session is over:
            // its credentials are treated like those retired by a restart,
            // dropped without an answer. A success response would tell the
            // peer the path works and let it go connected against an agent
            // that gave up; silence fails the peer's pair by its own timer,
            // as with a vanished agent. (No ICE error code says "failed":
            // 401, RFC 8489's for a stale username, makes libwebrtc retry
            // anyway, and inventing another, e.g. 403, is not ICE.)
            return Err(InputError::IceFailed);
        }
        let tid = m.header.transaction_id;
        if !m.unknown.is_empty() {
            // RFC 8489 §6.3.1.1: 420 with UNKNOWN-ATTRIBUTES.
            self.answer_error(tid, 420, m.unknown.as_slice(), from, to_local);
            return Ok(());
        }
        // RFC 8445 §7.3.1.1: role conflicts.
        match (self.role, m.controlling, m.controlled) {
            (Role::Controlling, Some(theirs), _) => {
                if self.tiebreaker >= theirs {
                    self.answer_error(tid, 487, &[], from, to_local);
                    return Ok(());
                }
                self.switch_role(Role::Controlled);
            }
            (Role::Controlled, _, Some(theirs)) => {
                if self.tiebreaker >= theirs {
                    self.switch_role(Role::Controlling);
                } else {
                    self.answer_error(tid, 487, &[], from, to_local);
                    return Ok(());
                }
            }
            _ => {}
        }
        // RFC 8445 §7.3.1.2: success with the source as XOR-MAPPED-ADDRESS.
        if let Ok(payload) = wire::success(&tid, from, self.local_creds.pwd.as_bytes()) {
            self.transmits.push_back(Transmit {
                from: to_local,
                to: from,
                payload,
            });
        }
        if matches!(self.state, IceState::Failed | IceState::Disconnected) {
            return Ok(());
        }
        let Some(li) = self
            .local
            .iter()
            .position(|c| is_base(c) && c.base == to_local)
            .or_else(|| self.promote_punch_base(to_local))
        else {
            return Ok(());
        };
        let ri = match self.remote.iter().position(|c| c.addr == from) {
            Some(ri) => ri,
            None => {
                // RFC 8445 §7.3.1.3: a peer-reflexive remote candidate, with
                // the PRIORITY of the check and a fresh foundation.
                let Some(priority) = m.priority.filter(|&p| p > 0) else {
                    return Ok(());
                };
                if self.remote.len() >= self.cfg.max_remote_candidates {
                    return Ok(());
                }
                let foundation = self.fresh_remote_foundation();
                self.remote.push(Candidate::remote(
                    CandidateKind::PeerReflexive,
                    from,
                    priority,
                    &foundation,
                ));
                self.remote.len() - 1
            }
        };
        let Some(p) = self.try_pair(li, ri) else {
            return Ok(());
        };
        // RFC 8445 §7.3.1.5: USE-CANDIDATE at the controlled agent.
        // A nomination of a pair below the selected one is a stale
        // retransmission from before a renomination (the controlling agent
        // only renominates upwards): following it would split the agents.
        // "Below" compares valid pairs (see `valid_priority`), so a pair not
        // succeeded yet is only marked: the comparison waits for its valid
        // pair, when our check on it succeeds (§7.3.1.5 nominates the valid
        // pair then too).
        if m.use_candidate && self.role == Role::Controlled {
            if self.pairs[p].state != PairState::Succeeded {
                self.pairs[p].remote_nominated = true;
            } else if self.outranks_selected(p) {
                self.pairs[p].remote_nominated = true;
                self.pairs[p].nominated = true;
                self.select(p, now);
                return Ok(());
            }
        }
        // RFC 8445 §7.3.1.4: triggered checks.
        match self.pairs[p].state {
            PairState::Frozen | PairState::Waiting => {
                self.pairs[p].state = PairState::Waiting;
                self.enqueue_triggered(p);
            }
            PairState::Failed => {
                self.pairs[p].state = PairState::Waiting;
                self.pairs[p].failure = None;
                self.enqueue_triggered(p);
            }
            PairState::InProgress => {
                if self.resend_in_flight(p) {
                    return Ok(());
                }
                // The peer's check got through while ours may have been
                // lost: cancel ours and check again now, which the path just
                // proved likely to work.
                for c in &mut self.checks {
                    if c.pair == p && !c.consent {
                        c.cancelled = true;
                    }
                }
                self.pairs[p].state = PairState::Waiting;
                self.enqueue_triggered(p);
            }
            PairState::Succeeded => {}
        }
        Ok(())
    }

    /// The peer's check arrived on pair `p`, whose own check is in flight:
    /// between natkit agents, send that check's request again at once
    /// instead of cancelling it for a triggered check in the next pacing
    /// slot (RFC 8445 §7.3.1.4). The peer's check proved that the path
    /// works now, and ours was likely lost on the way to a NAT or relay
    /// that did not let it in yet (above all a relayed check that reached
    /// the peer's relay before the peer's permission for us, RFC 8656 §9):
    /// the slot's wait (up to 5 ms) was what kept relayed connects
    /// bimodal. It is a retransmission of the same transaction, one for
    /// each check of the peer, not a new transaction for §14.2 to pace,
    /// and it costs what the triggered check would have. Returns whether
    /// it did (else the standard way applies: with a standard peer, or
    /// when the request carries a role we no longer have, §7.2.5.1).
    fn resend_in_flight(&mut self, p: usize) -> bool {
        if !self.remote_options.renomination {
            return false;
        }
        let role = self.role;
        let Some(c) = self
            .checks
            .iter()
            .rev()
            .find(|c| c.pair == p && !c.consent && !c.cancelled && c.role == role)
        else {
            return false;
        };
        self.transmits.push_back(Transmit {
            from: c.from,
            to: c.to,
            payload: c.payload.clone(),
        });
        true
    }

    pub(super) fn fresh_remote_foundation(&mut self) -> String {
        loop {
            self.prflx_count += 1;
            let f = format!("prflx{}", self.prflx_count);
            if !self.remote.iter().any(|r| r.foundation == f) {
                return f;
            }
        }
    }

    pub(super) fn answer_error(
        &mut self,
        tid: [u8; 12],
        code: u16,
        unknown: &[u16],
        to: SocketAddr,
        from: SocketAddr,
    ) {
        if let Ok(payload) = wire::error(&tid, code, unknown, self.local_creds.pwd.as_bytes()) {
            self.transmits.push_back(Transmit { from, to, payload });
        }
    }

    pub(super) fn switch_role(&mut self, role: Role) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.recompute_priorities();
        self.nominating = None;
        for p in &mut self.pairs {
            p.nominate = false;
        }
        self.events.push_back(Event::RoleChanged(role));
    }

    /// Responses are signed with the password the request used: the
    /// peer's (RFC 8445 §7.2.5.1).
    pub(super) fn verify_response(&self, bytes: &[u8], m: &Message<'_>) -> Result<(), InputError> {
        let key = self
            .remote_creds
            .as_ref()
            .ok_or(InputError::UnknownTransaction)?;
        integrity::verify(bytes, &m.header, key.pwd.as_bytes())
            .map(|_| ())
            .map_err(|_| InputError::Unauthenticated)
    }

    /// RFC 8445 §7.2.5: a response to one of our checks.
    pub(super) fn on_response(
        &mut self,
        from: SocketAddr,
        to_local: SocketAddr,
        bytes: &[u8],
        m: &Message<'_>,
        now: Instant,
    ) -> Result<(), InputError> {
        let Some(i) = self
            .checks
            .iter()
            .position(|c| c.tid == m.header.transaction_id)
        else {
            return self.on_probe_response(from, to_local, bytes, m);
        };
        self.verify_response(bytes, m)?;
        let class = m.header.class();
        if (class == Class::Success && m.xor_mapped.is_none())
            || (class == Class::Error && m.error_code.is_none())
        {
            return Err(InputError::IncompleteResponse);
        }
        let mut c = self.checks.swap_remove(i);
        let rtt = c.tx.on_response(now).and_then(|x| x.rtt());
        let p = c.pair;
        // The nomination in flight ends with its check's answer, whatever
        // the answer says (what follows depends on it): left set, it would
        // keep the controlling agent from ever nominating again.
        if c.use_candidate && self.nominating == Some(p) {
            self.nominating = None;
        }
        // RFC 8445 §7.2.5.2.1: the response must come from where the request
        // went, and arrive where it left from, or the pair fails. A stray
        // answer to an ordinary check does not undo a pair another check
        // proved; but a nominating check is the one whose success nominates
        // the pair (§7.2.5.3.4), so its pair fails, and nomination moves on
        // to the next valid pair (§8.1.1).
        if from != c.to || to_local != c.from {
            if !c.consent && (c.use_candidate || self.pairs[p].state != PairState::Succeeded) {
                self.fail_pair(p, PairFailure::NonSymmetric { from, to: to_local });
            }
            return Ok(());
        }
        if class == Class::Error {
            let code = m.error_code.unwrap_or_default();
            if c.consent {
                return Ok(());
            }
            if code == 487 {
                // RFC 8445 §7.2.5.1: switch to the role opposite of the one
                // the request claimed (unless already done) and retry.
                if c.role == self.role {
                    self.switch_role(c.role.flip());
                }
                if self.pairs[p].state != PairState::Succeeded {
                    self.pairs[p].state = PairState::Waiting;
                }
                self.enqueue_triggered(p);
            } else {
                self.fail_pair(p, PairFailure::ErrorResponse(code));
            }
            return Ok(());
        }
        let Some(mapped) = m.xor_mapped else {
            return Err(InputError::IncompleteResponse);
        };
        if let Some(r) = rtt {
            self.pairs[p].rtt = Some(r);
        }
        if c.consent {
            // RFC 7675 §5.1: an answered check renews consent.
            if self.selected == Some(p) {
                if let Some(cs) = &mut self.consent {
                    cs.expires = now + self.cfg.consent_timeout;
                }
            }
            return Ok(());
        }
        // RFC 8445 §7.2.5.3.1: the mapped address names the valid pair's
        // local candidate; an unknown one is peer-reflexive.
        let vi = match self
            .local
            .iter()
            .position(|l| l.addr == mapped && l.base == c.from)
        {
            Some(vi) => vi,
            // Bounded: a peer answering with ever-new mapped addresses must
            // not grow our list without end; past the cap the pair reports
            // its base instead.
            None if self.local_prflx() >= MAX_LOCAL_PRFLX => self.pairs[p].local,
            None => {
                // §7.2.5.3.1: the PRIORITY the check carried. Between natkit
                // agents a check from a relayed base carries the relayed
                // priority (`check_priority`), and so does what it learns:
                // seen from the peer at another address of the relay (a NAT
                // before the peer rewrote the relay's port: Linux conntrack
                // does when a port-mapped flow clashes with one of its own),
                // the path still runs through our relay, and must not rank
                // as a direct peer-reflexive one.
                let prio = self.check_priority(&self.local[self.pairs[p].local]);
                let cand = Candidate::peer_reflexive_local(mapped, c.from, prio);
                self.events
                    .push_back(Event::PeerReflexiveCandidate(cand.clone()));
                self.local.push(cand);
                self.local.len() - 1
            }
        };
        {
            let pair = &mut self.pairs[p];
            pair.state = PairState::Succeeded;
            pair.failure = None;
            pair.valid_local = Some(vi);
            pair.succeeded_at.get_or_insert(now);
        }
        // RFC 8445 §7.2.5.3.3: unfreeze the pairs of the same foundation.
        for q in 0..self.pairs.len() {
            if self.pairs[q].state == PairState::Frozen
                && self.same_foundation(&self.pairs[q], &self.pairs[p])
            {
                self.pairs[q].state = PairState::Waiting;
            }
        }
        // RFC 8445 §7.2.5.3.4 / §8.1.1: nomination completes.
        let nominated = (((c.use_candidate || c.nominates) && self.role == Role::Controlling)
            || (self.role == Role::Controlled && self.pairs[p].remote_nominated))
            && self.outranks_selected(p);
        if nominated {
            self.pairs[p].nominated = true;
            self.select(p, now);
        } else if self.selected == Some(p) {
            if let Some(cs) = &mut self.consent {
                cs.expires = now + self.cfg.consent_timeout;
            }
        }
        Ok(())
    }
}
