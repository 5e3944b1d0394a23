//! Nomination and selection (RFC 8445 §8), consent freshness (RFC 7675)
//! and overall failure (RFC 8445 §8.1.3, RFC 8838 §8) with the PAC timer
//! (RFC 8863).

use std::time::{Duration, Instant};

use rand::Rng;

use super::{Agent, Consent, IceState, Pac, PairState};
use crate::event::{Event, FailedPair, Failure, FailureReason, PairFailure};
use crate::Role;

/// How many nominating checks a pair that had succeeded gets before a
/// timeout fails it (see [`Agent::nomination_timed_out`]). Two: every
/// answer to two whole transactions lost on a path that worked is already
/// far-fetched, and a dead path must not hold up the next pair for long.
const NOMINATION_ATTEMPTS: u8 = 2;

impl Agent {
    pub(super) fn may_nominate(&self) -> bool {
        self.role == Role::Controlling
            && self.nominating.is_none()
            && self.checking()
            && (self.selected.is_none() || self.cfg.renominate)
    }

    /// Whether the controlling agent nominates the first pair that works at
    /// once and better ones after it: both agents renominate (natkit's
    /// extension, announced by the peer, [`IceOptions::renomination`]), so
    /// the controlled one follows the highest-priority nomination and a
    /// first nomination is no commitment. Waiting for better pairs would
    /// only delay the connection: a better pair that succeeds later is
    /// nominated then.
    ///
    /// The nomination then rides on every check (USE-CANDIDATE, as RFC
    /// 5245's aggressive nomination did), not on a second check after the
    /// first succeeded: the controlling agent selects a pair when its check
    /// succeeds, the controlled one when its own check on a pair the peer's
    /// checks nominated succeeds (RFC 8445 §7.3.1.5), a round trip sooner
    /// than regular nomination's. Both rank pairs alike (their valid pairs'
    /// priorities, see [`Agent::valid_priority`]) and only move upwards,
    /// so they end on the same pair: the best that works both ways. (RFC
    /// 8445 dropped aggressive nomination because standard controlled
    /// agents may take a nomination once and keep it; natkit's follow the
    /// highest.)
    ///
    /// [`IceOptions::renomination`]: crate::IceOptions::renomination
    pub(super) fn nominate_first(&self) -> bool {
        self.cfg.renominate && self.remote_options.renomination
    }

    /// The pair the controlling agent would nominate and from when (RFC 8445
    /// §8.1.1 leaves the stopping rule to the agent): the best succeeded
    /// pair, at once if no higher-priority pair can still succeed or the
    /// peer renominates too ([`Agent::nominate_first`]), else after
    /// [`Config::nomination_delay`].
    ///
    /// Pairs are ranked by their valid pairs' priorities (see
    /// [`Agent::valid_priority`]): the numbers the controlled agent ranks
    /// them by too.
    pub(super) fn nomination_candidate(&self) -> Option<(usize, Instant)> {
        let best = (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == PairState::Succeeded)
            .max_by_key(|&i| self.valid_priority(i))?;
        let best_priority = self.valid_priority(best);
        if let Some(s) = self.selected {
            if best == s || best_priority <= self.valid_priority(s) {
                return None;
            }
        }
        let bp = &self.pairs[best];
        let succeeded = bp.succeeded_at.unwrap_or(self.now);
        // A pair still being checked can at best produce a valid pair of its
        // own priority (its local candidate may turn out peer-reflexive or
        // server-reflexive, of a lower type preference, never higher).
        let better_pending = !self.nominate_first()
            && self.pairs.iter().any(|q| {
                q.priority > best_priority
                    && matches!(
                        q.state,
                        PairState::Frozen | PairState::Waiting | PairState::InProgress
                    )
            });
        Some((
            best,
            if better_pending {
                succeeded + self.cfg.nomination_delay
            } else {
                succeeded
            },
        ))
    }

    pub(super) fn maybe_nominate(&mut self, now: Instant) {
        if !self.may_nominate() {
            return;
        }
        if let Some((p, at)) = self.nomination_candidate() {
            if now >= at {
                self.pairs[p].nominate = true;
                self.nominating = Some(p);
                self.triggered.retain(|&q| q != p);
                // natkit sends the nominating check at once instead of in
                // the next Ta slot (RFC 8445 §14.2 paces every check): one
                // check on a pair already proven to work adds no load worth
                // pacing, and it saves up to Ta (50 ms) of connection time.
                self.start_check(p, now, true, false);
            }
        }
    }

    /// The nominating check on pair `p` got no answer. The peer may still
    /// have taken the nomination: a controlled agent nominates the pair as
    /// soon as the request arrives (RFC 8445 §7.3.1.5), and only our
    /// answers may have been lost. Nominating a lower pair next would not
    /// undo that: with several nominations both agents use the highest
    /// priority one (§8.1.1), and the peer would keep this one while we
    /// used the other. So a pair that had succeeded (its valid pair works)
    /// is nominated again, with a fresh check, up to
    /// [`NOMINATION_ATTEMPTS`] times in all; only then it fails.
    pub(super) fn nomination_timed_out(&mut self, p: usize, why: PairFailure) {
        let pair = &mut self.pairs[p];
        pair.nomination_timeouts = pair.nomination_timeouts.saturating_add(1);
        if pair.state == PairState::Succeeded && pair.nomination_timeouts < NOMINATION_ATTEMPTS {
            if self.nominating == Some(p) {
                self.nominating = None;
            }
            return;
        }
        self.fail_pair(p, why);
    }

    // ----- consent and failure -----

    pub(super) fn consent_jitter(&mut self) -> Duration {
        // RFC 7675 §5.1: uniformly random in 0.8-1.2 × the interval.
        self.cfg
            .consent_interval
            .mul_f64(self.rng.gen_range(0.8..1.2))
    }

    pub(super) fn run_consent(&mut self, now: Instant) {
        if self.state != IceState::Connected {
            return;
        }
        let (Some(s), Some(cs)) = (self.selected, self.consent) else {
            return;
        };
        if now >= cs.expires {
            // RFC 7675 §5.1: consent expired; stop sending on the pair.
            self.state = IceState::Disconnected;
            self.consent = None;
            self.checks.retain(|c| !c.consent);
            if let Some(sp) = self.selected_pair() {
                self.events.push_back(Event::ConsentLost(sp));
            }
            return;
        }
        if now >= cs.next_send {
            self.start_check(s, now, false, true);
            let next = now + self.consent_jitter();
            if let Some(c) = &mut self.consent {
                c.next_send = next;
            }
        }
    }

    /// Checking started with no time given (see [`Pac::Starting`]): the PAC
    /// timer starts now.
    pub(super) fn start_pac(&mut self, now: Instant) {
        if self.pac == Pac::Starting {
            self.pac = Pac::Since(now);
        }
    }

    /// When the PAC timer needs a wake-up: at once to start it, or when it
    /// runs out if ICE would fail then. Pure, like `paced_due`.
    pub(super) fn pac_due(&self) -> Option<Instant> {
        match self.pac {
            Pac::Starting if self.checking() => Some(self.now),
            Pac::Since(t) if self.failure_pending() => Some(t + self.cfg.pac_timeout),
            _ => None,
        }
    }

    /// Whether ICE has failed but for the PAC timer: RFC 8445 §8.1.3 /
    /// RFC 8838 §8, end-of-candidates from the peer and every pair failed
    /// (with no pair at all, the driver must have given every local
    /// candidate too, or a later one could still pair), and no check in
    /// flight.
    fn failure_pending(&self) -> bool {
        if self.state != IceState::Checking || self.selected.is_some() || !self.remote_eoc {
            return false;
        }
        if self.pairs.is_empty() {
            if !self.local_eoc {
                return false;
            }
        } else if self.pairs.iter().any(|p| p.state != PairState::Failed) {
            return false;
        }
        !self.checks.iter().any(|c| !c.consent)
    }

    /// Declare failure when it is due. RFC 8863 §3: a running check list
    /// does not fail before the PAC timer runs out, even with no pair left
    /// to check, and §4: end-of-candidates does not change that. Until then
    /// a check from the peer can still teach a peer-reflexive candidate
    /// (or revive a failed pair) that connects.
    pub(super) fn check_failed(&mut self) {
        if !self.failure_pending() {
            return;
        }
        let Pac::Since(since) = self.pac else {
            return;
        };
        if self.now < since + self.cfg.pac_timeout {
            return;
        }
        self.state = IceState::Failed;
        let tried: Vec<FailedPair> = self
            .pairs
            .iter()
            .filter_map(|p| {
                Some(FailedPair {
                    local: self.local[p.local].clone(),
                    remote: self.remote[p.remote].clone(),
                    reason: p.failure.clone()?,
                })
            })
            .collect();
        let unpaired_remote = (0..self.remote.len())
            .filter(|&ri| !self.pairs.iter().any(|p| p.remote == ri))
            .map(|ri| self.remote[ri].clone())
            .collect();
        self.failure = Some(Failure {
            reason: if self.pairs.is_empty() {
                FailureReason::NoCheckArrived
            } else {
                FailureReason::AllPairsFailed
            },
            pairs: tried.clone(),
            unpaired_remote,
            after: self.now.saturating_duration_since(since),
        });
        self.events.push_back(Event::Failed(tried));
    }

    /// The priority that ranks pair `p` for nomination and selection: that
    /// of the valid pair it produced, once it succeeded, else its own.
    ///
    /// RFC 8445 §7.2.5.3.2: the valid pair's local candidate is the one
    /// the response's mapped address names, often a peer-reflexive
    /// candidate whose priority is the PRIORITY attribute of the check, and
    /// the valid pair's priority is computed (§6.1.2.3) with it, not with
    /// the base's. Both agents then rank a path by the same two numbers: our
    /// candidate at the mapped address has the priority the peer knows it
    /// by (signalled, or the check's PRIORITY for a peer-reflexive one,
    /// §7.3.1.3), and the peer's candidate we sent to has the priority the
    /// peer gave us, which its own valid pair uses too. Ranking by the
    /// check-list pair instead (our base's host priority, which the peer
    /// never sees) can order two pairs one way here and the other way at
    /// the peer: the controlling agent then renominates a pair the
    /// controlled agent takes for a stale nomination of a worse one, and
    /// each ends up sending on a different path.
    pub(super) fn valid_priority(&self, p: usize) -> u64 {
        let pair = &self.pairs[p];
        match pair.valid_local {
            Some(vi) => self.priority_of(&self.local[vi], &self.remote[pair.remote]),
            None => pair.priority,
        }
    }

    /// Whether pair `p` may become (or stays) the selected pair: it is the
    /// selected one, or its valid pair ranks above the selected one's. Both
    /// agents rank by the same numbers ([`Agent::valid_priority`]) and the
    /// controlling agent only renominates upwards, so at the controlled
    /// agent a nomination of a lower pair is a stale retransmission.
    pub(super) fn outranks_selected(&self, p: usize) -> bool {
        match self.selected {
            None => true,
            Some(s) => s == p || self.valid_priority(p) > self.valid_priority(s),
        }
    }

    pub(super) fn select(&mut self, p: usize, now: Instant) {
        if self.selected == Some(p) {
            return;
        }
        let first = self.selected.is_none();
        self.selected = Some(p);
        self.state = IceState::Connected;
        let next_send = now + self.consent_jitter();
        self.consent = Some(Consent {
            next_send,
            expires: now + self.cfg.consent_timeout,
        });
        if let Some(sp) = self.selected_pair() {
            self.events.push_back(if first {
                Event::Connected(sp)
            } else {
                Event::SelectedPairChanged(sp)
            });
        }
    }
}
