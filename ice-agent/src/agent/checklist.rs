//! The check list (RFC 8445 §6.1.2): pairing, pruning, priorities, states,
//! and the Ta pacing of checks (§6.1.4.2).

use std::time::Instant;

use super::{is_base, Agent, IceState, Pair, PairState};
use crate::candidate::{pair_priority, Candidate};
use crate::Role;

impl Agent {
    pub(super) fn priority_of(&self, l: &Candidate, r: &Candidate) -> u64 {
        match self.role {
            Role::Controlling => pair_priority(l.priority, r.priority),
            Role::Controlled => pair_priority(r.priority, l.priority),
        }
    }

    pub(super) fn recompute_priorities(&mut self) {
        for i in 0..self.pairs.len() {
            let (l, r) = (self.pairs[i].local, self.pairs[i].remote);
            self.pairs[i].priority = self.priority_of(&self.local[l], &self.remote[r]);
        }
    }

    pub(super) fn same_foundation(&self, a: &Pair, b: &Pair) -> bool {
        self.local[a.local].foundation == self.local[b.local].foundation
            && self.remote[a.remote].foundation == self.remote[b.remote].foundation
    }

    /// Whether another pair of `p`'s foundation is Waiting or In-Progress.
    pub(super) fn foundation_active(&self, p: usize) -> bool {
        self.pairs.iter().enumerate().any(|(i, q)| {
            i != p
                && matches!(q.state, PairState::Waiting | PairState::InProgress)
                && self.same_foundation(q, &self.pairs[p])
        })
    }

    /// Pair local candidate `li` with remote `ri` if they make a new pair
    /// (RFC 8445 §6.1.2.2, pruned per §6.1.2.4); returns the pair (new or
    /// the existing one with the same base and remote address).
    pub(super) fn try_pair(&mut self, li: usize, ri: usize) -> Option<usize> {
        let (l, r) = (&self.local[li], &self.remote[ri]);
        if !is_base(l) || l.addr.is_ipv4() != r.addr.is_ipv4() {
            return None;
        }
        let (base, raddr) = (l.base, r.addr);
        if let Some(p) = self
            .pairs
            .iter()
            .position(|p| self.local[p.local].base == base && self.remote[p.remote].addr == raddr)
        {
            return Some(p);
        }
        if self.pairs.len() >= self.cfg.max_pairs {
            return None;
        }
        let priority = self.priority_of(l, r);
        self.pairs.push(Pair {
            local: li,
            remote: ri,
            priority,
            state: PairState::Frozen,
            valid_local: None,
            succeeded_at: None,
            nominate: false,
            remote_nominated: false,
            nomination_timeouts: 0,
            nominated: false,
            failure: None,
            rtt: None,
        });
        let p = self.pairs.len() - 1;
        // RFC 8445 §6.1.2.6 / RFC 8838 §10: a new pair starts Waiting unless
        // a pair of its foundation is already being checked.
        if !self.foundation_active(p) {
            self.pairs[p].state = PairState::Waiting;
        }
        Some(p)
    }

    pub(super) fn enqueue_triggered(&mut self, p: usize) {
        if !self.triggered.contains(&p) {
            self.triggered.push_back(p);
        }
    }

    /// Whether ordinary (non-triggered) checks still run: not after a
    /// selection unless renomination is on (RFC 8445 §8.1.2).
    pub(super) fn ordinary_checks(&self) -> bool {
        self.selected.is_none() || self.cfg.renominate
    }

    pub(super) fn checking(&self) -> bool {
        self.remote_creds.is_some()
            && matches!(self.state, IceState::Checking | IceState::Connected)
    }

    pub(super) fn triggered_ready(&self, p: usize) -> bool {
        let pr = &self.pairs[p];
        pr.state == PairState::Waiting || (pr.nominate && pr.state == PairState::Succeeded)
    }

    /// When the next paced check is due (RFC 8445 §6.1.4.2: one every Ta),
    /// if any pair can be checked. Pure, so [`Agent::poll_timeout`] never
    /// asks for a wake-up that [`Agent::handle_timeout`] would not use.
    pub(super) fn paced_due(&self) -> Option<Instant> {
        if !self.checking() {
            return None;
        }
        let work = self.triggered.iter().any(|&p| self.triggered_ready(p))
            || (self.ordinary_checks()
                && self.pairs.iter().enumerate().any(|(i, p)| {
                    p.state == PairState::Waiting
                        || (p.state == PairState::Frozen && !self.foundation_active(i))
                }));
        if !work {
            return None;
        }
        Some(self.last_paced.map_or(self.now, |t| t + self.cfg.ta))
    }

    /// RFC 8445 §6.1.4.2: the triggered-check queue first, then the
    /// highest-priority Waiting pair, else unfreeze one Frozen pair per
    /// foundation with no Waiting or In-Progress pair and take the best.
    pub(super) fn next_paced_pair(&mut self) -> Option<usize> {
        while let Some(p) = self.triggered.pop_front() {
            if self.triggered_ready(p) {
                return Some(p);
            }
        }
        if !self.ordinary_checks() {
            return None;
        }
        if let Some(p) = self.best_in(PairState::Waiting) {
            return Some(p);
        }
        let mut frozen: Vec<usize> = (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == PairState::Frozen)
            .collect();
        frozen.sort_by_key(|&i| std::cmp::Reverse(self.pairs[i].priority));
        for i in frozen {
            if !self.foundation_active(i) {
                self.pairs[i].state = PairState::Waiting;
            }
        }
        self.best_in(PairState::Waiting)
    }

    pub(super) fn best_in(&self, state: PairState) -> Option<usize> {
        (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == state)
            .max_by_key(|&i| self.pairs[i].priority)
    }
}
