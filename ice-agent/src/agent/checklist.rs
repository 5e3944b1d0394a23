//! The check list (RFC 8445 §6.1.2): pairing, pruning, priorities, states,
//! the order of checks and their Ta pacing (§6.1.4.2, §14.2).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{is_base, Agent, IceState, Pair, PairState};
use crate::candidate::{pair_priority, Candidate, CandidateKind};
use crate::config::{DEFAULT_TA, MIN_TA};
use crate::Role;

/// How much Ta grows with each pair of the check list (see
/// [`Agent::pacing`]).
const TA_PER_PAIR: Duration = Duration::from_micros(500);

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
        Some(self.last_paced.map_or(self.now, |t| t + self.pacing()))
    }

    /// Ta, the interval between new checks now (RFC 8445 §14.2): the larger
    /// of our proposal ([`crate::Config::ta`]) and the peer's, a peer that
    /// proposed none counting as the default 50 ms (§14.2: "both agents
    /// MUST use the higher value of the proposed values"); never below
    /// 5 ms; and at least 0.5 ms per pair of the check list, up to 50 ms.
    ///
    /// Why it scales: a list of up to 10 pairs, the common case, is checked
    /// in one burst of at most 50 ms, a few round trips sooner than at 50 ms
    /// a check. A long list (several interfaces, both families, several
    /// relays) would keep the uplink and the NAT's mapping table busy at
    /// 200 new checks a second, plus their retransmissions, for seconds: it
    /// slows down to RFC 8445's default rate instead (100 pairs: 50 ms).
    /// Triggered checks, which the peer's checks clock, and a nomination
    /// (see `maybe_nominate`) are what connects; the ordinary ones only
    /// look for paths.
    pub fn pacing(&self) -> Duration {
        let agreed = self
            .cfg
            .ta
            .max(self.remote_options.pacing.unwrap_or(DEFAULT_TA));
        let by_size = TA_PER_PAIR
            .saturating_mul(u32::try_from(self.pairs.len()).unwrap_or(u32::MAX))
            .min(DEFAULT_TA);
        agreed.max(by_size).max(MIN_TA)
    }

    /// RFC 8445 §6.1.4.2: the triggered-check queue first, then the
    /// highest-priority Waiting pair, else unfreeze one Frozen pair per
    /// foundation with no Waiting or In-Progress pair and take the best.
    /// Pairs unlikely to work ([`Agent::unlikely`]) come after the others.
    pub(super) fn next_paced_pair(&mut self) -> Option<usize> {
        while let Some(p) = self.triggered.pop_front() {
            if self.triggered_ready(p) {
                return Some(p);
            }
        }
        if !self.ordinary_checks() {
            return None;
        }
        if let Some(p) = self.best_to_check() {
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
        self.best_to_check()
    }

    /// The Waiting pair to check next: by priority, those likely to work
    /// first.
    fn best_to_check(&self) -> Option<usize> {
        (0..self.pairs.len())
            .filter(|&i| self.pairs[i].state == PairState::Waiting)
            .max_by_key(|&i| (!self.unlikely(i), self.pairs[i].priority))
    }

    /// Whether pair `p` is unlikely to work, so its first check waits until
    /// the others have had theirs: a pair to the peer's host candidate when
    /// the peer is behind a NAT in that address family (it signalled a
    /// server-reflexive address that is none of its host addresses), so its
    /// host address is private, unless we are behind the same NAT (one of
    /// our server-reflexive addresses is one of its: the same LAN, where a
    /// host pair is the best path) and check from a host base. Behind
    /// different NATs, or from outside, a private address is not reached:
    /// checked in priority order, the host pairs (type preference 126)
    /// would hold up the server-reflexive and relayed pairs that connect by
    /// a Ta each, and their checks go on for the whole retransmission
    /// schedule. RFC 8445 §6.1.4.2 checks by priority alone; the order of
    /// checks is the agent's own business (the peer sees none of it), and
    /// the priorities that rank pairs for nomination are not touched.
    pub(super) fn unlikely(&self, p: usize) -> bool {
        let pair = &self.pairs[p];
        let (l, r) = (&self.local[pair.local], &self.remote[pair.remote]);
        if r.kind != CandidateKind::Host {
            return false;
        }
        let v4 = r.addr.is_ipv4();
        let remote_host = |ip: IpAddr| {
            self.remote
                .iter()
                .any(|c| c.kind == CandidateKind::Host && c.addr.ip() == ip)
        };
        let mut peer_srflx = self.remote.iter().filter(|c| {
            c.kind == CandidateKind::ServerReflexive
                && c.addr.is_ipv4() == v4
                && !remote_host(c.addr.ip())
        });
        let Some(first) = peer_srflx.next() else {
            return false;
        };
        let shared = |ip: IpAddr| {
            self.local.iter().any(|c| {
                c.kind == CandidateKind::ServerReflexive && c.addr.ip() == ip && c.base.ip() != ip
            })
        };
        let same_nat = shared(first.addr.ip()) || peer_srflx.any(|c| shared(c.addr.ip()));
        !(same_nat && l.kind == CandidateKind::Host)
    }
}
