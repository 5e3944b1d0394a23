//! Nomination and selection (RFC 8445 §8), consent freshness (RFC 7675)
//! and overall failure (RFC 8445 §8.1.3, RFC 8838 §8) with the PAC timer
//! (RFC 8863).

use std::time::{Duration, Instant};

use rand::Rng;

use super::{Agent, Consent, IceState, Pac, PairState};
use crate::event::{Event, FailedPair, Failure, FailureReason};
use crate::Role;

impl Agent {
    pub(super) fn may_nominate(&self) -> bool {
        self.role == Role::Controlling
            && self.nominating.is_none()
            && self.checking()
            && (self.selected.is_none() || self.cfg.renominate)
    }

    /// The pair the controlling agent would nominate and from when (RFC 8445
    /// §8.1.1 leaves the stopping rule to the agent): the best succeeded
    /// pair, at once if no higher-priority pair can still succeed, else
    /// after [`Config::nomination_delay`].
    pub(super) fn nomination_candidate(&self) -> Option<(usize, Instant)> {
        let best = self.best_in(PairState::Succeeded)?;
        let bp = &self.pairs[best];
        if let Some(s) = self.selected {
            if best == s || bp.priority <= self.pairs[s].priority {
                return None;
            }
        }
        let succeeded = bp.succeeded_at.unwrap_or(self.now);
        let better_pending = self.pairs.iter().any(|q| {
            q.priority > bp.priority
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

    /// Whether pair `p` may become (or stays) the selected pair: it is the
    /// selected one, or ranks above it.
    pub(super) fn outranks_selected(&self, p: usize) -> bool {
        match self.selected {
            None => true,
            Some(s) => s == p || self.pairs[p].priority > self.pairs[s].priority,
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
