//! The ICE agent state machine (RFC 8445 §6-§8, RFC 8838, RFC 7675), sans-IO.
//!
//! One data stream, one component, UDP. The check list holds pairs of a
//! local *base* candidate (host or relayed) and a remote candidate: checks
//! are sent from bases (RFC 8445 §6.1.2.4 replaces server-reflexive local
//! candidates with their bases and prunes the resulting duplicates, so
//! server-reflexive candidates are only signalled, never paired).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_proto::raw::Class;
use natkit_proto::transaction::Transaction;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::candidate::{is_ice_chars, Candidate, CandidateKind, MAX_FOUNDATION_LEN};
use crate::config::{Config, IceOptions};
use crate::credentials::{Credentials, CredentialsError};
use crate::event::{Event, Failure, PairFailure, SelectedPair, Transmit};
use crate::wire::{self, WireError};
use crate::Role;

mod checklist;
mod checks;
mod punch;
mod selection;

/// RFC 8445 §6.1.2.6 candidate pair states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairState {
    /// Not checked yet; waits for a pair of its foundation to complete.
    Frozen,
    /// Will be checked when its turn comes.
    Waiting,
    /// A check is in flight.
    InProgress,
    /// A check succeeded: the pair (or the valid pair it produced) works.
    Succeeded,
    /// The check failed.
    Failed,
}

/// The agent's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IceState {
    /// Waiting for the peer's credentials.
    New,
    /// Checking pairs.
    Checking,
    /// A pair is selected.
    Connected,
    /// ICE failed (see [`Event::Failed`] and [`Agent::failure`]): the
    /// agent answers no check until an ICE restart.
    Failed,
    /// Consent on the selected pair was lost (see [`Event::ConsentLost`]).
    Disconnected,
}

/// A snapshot of one pair of the check list, for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInfo {
    /// Our base candidate.
    pub local: Candidate,
    /// The peer's candidate.
    pub remote: Candidate,
    /// Its state.
    pub state: PairState,
    /// Pair priority (RFC 8445 §6.1.2.3), for the current role.
    pub priority: u64,
    /// Whether it was nominated.
    pub nominated: bool,
    /// Why it failed, when it did.
    pub failure: Option<PairFailure>,
    /// Checks (transmissions included) sent on it that are still in
    /// flight.
    pub in_flight: u32,
}

/// Why a datagram given to [`Agent::handle_input`] was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not a Binding message (see [`InputError::is_not_stun`]) or malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A request whose USERNAME is missing or not "our ufrag:..."
    /// (RFC 8445 §7.3): dropped.
    #[error("check USERNAME missing or not for this agent")]
    UnknownUsername,
    /// MESSAGE-INTEGRITY missing or wrong for the password that applies
    /// (RFC 8489 §9.1.3): dropped without an answer.
    #[error("check MESSAGE-INTEGRITY missing or wrong")]
    Unauthenticated,
    /// A response to no check in flight (late, duplicate or forged).
    #[error("response to no check in flight")]
    UnknownTransaction,
    /// A response without the XOR-MAPPED-ADDRESS or ERROR-CODE it needs.
    #[error("response lacks XOR-MAPPED-ADDRESS or ERROR-CODE")]
    IncompleteResponse,
    /// An authentic check that arrived after ICE failed: dropped without an
    /// answer (see [`Agent::handle_input`]) until an ICE restart.
    #[error("check for an ICE session that has failed: not answered until an ICE restart")]
    IceFailed,
}

impl InputError {
    /// Whether the datagram is not STUN at all: the driver should hand it
    /// to the application protocol (QUIC) sharing the socket.
    pub fn is_not_stun(&self) -> bool {
        matches!(self, InputError::Wire(WireError::NotStun))
    }
}

/// Why a candidate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// Foundation not 1-32 ice-chars (RFC 8839 §5.1).
    #[error("candidate foundation must be 1 to 32 characters of A-Z a-z 0-9 + /")]
    BadFoundation,
    /// Priority 0, or a priority that does not fit a local candidate's type.
    #[error("candidate priority must be between 1 and 2^31-1")]
    BadPriority,
    /// Port 0, or an unspecified or multicast IP address.
    #[error("candidate address is not a usable unicast address")]
    BadAddress,
    /// Local peer-reflexive candidates are learned, not given; a host
    /// candidate's base must be its address.
    #[error("candidate type or base not acceptable as a local candidate")]
    BadKind,
    /// Already known.
    #[error("candidate already known")]
    Duplicate,
    /// [`Config::max_remote_candidates`] reached.
    #[error("too many candidates")]
    TooMany,
}

#[derive(Debug)]
struct Pair {
    /// Index of the local base candidate.
    local: usize,
    /// Index of the remote candidate.
    remote: usize,
    priority: u64,
    state: PairState,
    /// Local candidate of the valid pair this pair produced (RFC 8445
    /// §7.2.5.3.2).
    valid_local: Option<usize>,
    succeeded_at: Option<Instant>,
    /// Controlling: the next check on this pair carries USE-CANDIDATE.
    nominate: bool,
    /// Controlled: the peer sent USE-CANDIDATE on this pair (§7.3.1.5).
    remote_nominated: bool,
    /// Controlling: nominating checks on this pair that got no answer.
    nomination_timeouts: u8,
    nominated: bool,
    failure: Option<PairFailure>,
    rtt: Option<Duration>,
}

#[derive(Debug)]
struct Check {
    tid: [u8; 12],
    pair: usize,
    tx: Transaction,
    payload: Vec<u8>,
    from: SocketAddr,
    to: SocketAddr,
    /// The role attribute the request carried (for 487 handling, §7.2.5.1).
    role: Role,
    /// Regular nomination's nominating check (RFC 8445 §8.1.1), sent by
    /// `maybe_nominate` on a pair that succeeded.
    use_candidate: bool,
    /// Carries USE-CANDIDATE without being a nominating check: between
    /// natkit agents every check of the controlling agent nominates its
    /// pair (see `Agent::nominate_first`). Its success nominates the pair
    /// like a nominating check's; its timeout fails the pair like an
    /// ordinary check's.
    nominates: bool,
    /// RFC 7675 consent check rather than a connectivity check.
    consent: bool,
    /// Superseded by a triggered check (RFC 8445 §7.3.1.4): no more
    /// retransmissions, and no failure on timeout, but a late response
    /// still counts.
    cancelled: bool,
}

/// The PAC timer (RFC 8863 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pac {
    /// Not checking: no remote credentials.
    Off,
    /// Checking started (the peer's credentials arrived) at a time the
    /// agent was not told: the next `handle_timeout` or `handle_input`
    /// starts the timer with its `now`, and `poll_timeout` asks for one at
    /// once.
    Starting,
    /// Running since then.
    Since(Instant),
}

#[derive(Debug, Clone, Copy)]
struct Consent {
    next_send: Instant,
    expires: Instant,
}

/// An ICE agent for one data stream with one component. See the crate
/// documentation for how to drive it.
pub struct Agent {
    cfg: Config,
    rng: StdRng,
    role: Role,
    tiebreaker: u64,
    local_creds: Credentials,
    remote_creds: Option<Credentials>,
    /// What the peer announced (see [`Agent::set_remote_ice_options`]).
    remote_options: IceOptions,
    local: Vec<Candidate>,
    remote: Vec<Candidate>,
    pairs: Vec<Pair>,
    triggered: VecDeque<usize>,
    checks: Vec<Check>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    state: IceState,
    remote_eoc: bool,
    local_eoc: bool,
    last_paced: Option<Instant>,
    now: Instant,
    selected: Option<usize>,
    nominating: Option<usize>,
    consent: Option<Consent>,
    prflx_count: u32,
    pac: Pac,
    failure: Option<Failure>,
    /// natkit's hard-NAT punch (see `punch`).
    punch: punch::PunchState,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("local_ufrag", &self.local_creds.ufrag)
            .field("local", &self.local.len())
            .field("remote", &self.remote.len())
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

/// Longest timer setting honoured (see [`Agent::new`]).
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

fn is_base(c: &Candidate) -> bool {
    matches!(c.kind, CandidateKind::Host | CandidateKind::Relayed)
}

fn usable_address(a: SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

impl Agent {
    /// A new agent at time `now`, with fresh credentials (RFC 8445 §5.3)
    /// and tie-breaker (§7.1.3).
    pub fn new(mut cfg: Config, now: Instant) -> Self {
        // Absurd durations would overflow `Instant` arithmetic (a panic);
        // a day is beyond any sensible setting.
        for d in [
            &mut cfg.ta,
            &mut cfg.nomination_delay,
            &mut cfg.consent_interval,
            &mut cfg.consent_timeout,
            &mut cfg.pac_timeout,
        ] {
            *d = (*d).min(MAX_TIMER);
        }
        let mut rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let local_creds = Credentials::random(&mut rng);
        let tiebreaker = rng.gen();
        Agent {
            role: cfg.role,
            cfg,
            rng,
            tiebreaker,
            local_creds,
            remote_creds: None,
            remote_options: IceOptions::default(),
            local: Vec::new(),
            remote: Vec::new(),
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            checks: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            state: IceState::New,
            remote_eoc: false,
            local_eoc: false,
            last_paced: None,
            now,
            selected: None,
            nominating: None,
            consent: None,
            prflx_count: 0,
            pac: Pac::Off,
            failure: None,
            punch: punch::PunchState::default(),
        }
    }

    /// Our ufrag and password, to signal to the peer.
    pub fn local_credentials(&self) -> &Credentials {
        &self.local_creds
    }

    /// The peer's credentials, once given.
    pub fn remote_credentials(&self) -> Option<&Credentials> {
        self.remote_creds.as_ref()
    }

    /// What this agent announces to the peer (signal it with the
    /// credentials; natkit's [`crate::Description`] carries it): the Ta it
    /// proposes ([`Config::ta`]) and natkit's renomination
    /// ([`Config::renominate`]).
    pub fn local_ice_options(&self) -> IceOptions {
        IceOptions {
            pacing: Some(self.cfg.ta),
            renomination: self.cfg.renominate,
        }
    }

    /// What the peer announced. Without this call the peer counts as a
    /// standard agent that announced nothing: Ta at RFC 8445's default
    /// 50 ms and regular nomination. It holds across ICE restarts (the
    /// peer is the same program) until called again.
    pub fn set_remote_ice_options(&mut self, options: IceOptions) {
        self.remote_options = options;
    }

    /// What the peer announced ([`Agent::set_remote_ice_options`]).
    pub fn remote_ice_options(&self) -> IceOptions {
        self.remote_options
    }

    /// Our current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The overall state.
    pub fn state(&self) -> IceState {
        self.state
    }

    /// Our local candidates: those given, and peer-reflexive ones learned.
    pub fn local_candidates(&self) -> &[Candidate] {
        &self.local
    }

    /// The peer's candidates: signalled, and peer-reflexive ones learned.
    pub fn remote_candidates(&self) -> &[Candidate] {
        &self.remote
    }

    /// The selected pair, if any (it stays readable after consent loss).
    pub fn selected_pair(&self) -> Option<SelectedPair> {
        let p = &self.pairs[self.selected?];
        let local = self.local[p.valid_local.unwrap_or(p.local)].clone();
        Some(SelectedPair {
            local,
            remote: self.remote[p.remote].clone(),
            rtt: p.rtt,
        })
    }

    /// How and why ICE failed, from [`Event::Failed`] until an ICE restart
    /// (either side's, RFC 8445 §9); `None` otherwise.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// When the selected pair last had a check answered (RFC 7675: what
    /// consent freshness counts from). `None` before selection and after
    /// consent loss. A driver can call a path degraded well before consent
    /// expires when this grows old.
    pub fn last_consent(&self) -> Option<Instant> {
        self.consent.map(|c| c.expires - self.cfg.consent_timeout)
    }

    /// A snapshot of the check list, highest priority first.
    pub fn check_list(&self) -> Vec<PairInfo> {
        let mut v: Vec<PairInfo> = self
            .pairs
            .iter()
            .enumerate()
            .map(|(i, p)| PairInfo {
                local: self.local[p.local].clone(),
                remote: self.remote[p.remote].clone(),
                state: p.state,
                priority: p.priority,
                nominated: p.nominated,
                failure: p.failure.clone(),
                in_flight: self
                    .checks
                    .iter()
                    .filter(|c| c.pair == i && !c.consent)
                    .map(|c| c.tx.sent())
                    .sum(),
            })
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.priority));
        v
    }

    /// Add a local candidate (gathered by the driver). Host and relayed
    /// candidates are paired with every remote candidate of the same address
    /// family; server-reflexive ones are only for signalling (their checks go
    /// from their host base, RFC 8445 §6.1.2.4).
    pub fn add_local_candidate(&mut self, c: Candidate) -> Result<(), CandidateError> {
        if !is_ice_chars(&c.foundation, MAX_FOUNDATION_LEN) {
            return Err(CandidateError::BadFoundation);
        }
        if c.priority == 0 || c.priority > i32::MAX as u32 {
            return Err(CandidateError::BadPriority);
        }
        if !usable_address(c.addr) || !usable_address(c.base) {
            return Err(CandidateError::BadAddress);
        }
        let base_ok = match c.kind {
            CandidateKind::Host | CandidateKind::Relayed => c.base == c.addr,
            CandidateKind::ServerReflexive => true,
            CandidateKind::PeerReflexive => false,
        };
        if !base_ok {
            return Err(CandidateError::BadKind);
        }
        if self
            .local
            .iter()
            .any(|l| l.addr == c.addr && l.base == c.base)
        {
            return Err(CandidateError::Duplicate);
        }
        self.local.push(c);
        let li = self.local.len() - 1;
        for ri in 0..self.remote.len() {
            self.try_pair(li, ri);
        }
        Ok(())
    }

    /// The driver has given every local candidate it will. With no pair at
    /// all, failure waits for this (a local candidate gathered later could
    /// still pair with the peer's), besides the PAC timer.
    pub fn end_of_local_candidates(&mut self) {
        self.local_eoc = true;
        self.check_failed();
    }

    /// Set the peer's ufrag and password. Changing them after they were set
    /// means the peer restarted ICE (RFC 8445 §9): the peer's candidates and
    /// the check list are dropped, and the driver should call
    /// [`Agent::restart`] too so both sides use fresh credentials.
    ///
    /// Checking starts here, and with it the PAC timer (RFC 8863 §3,
    /// [`Config::pac_timeout`]): the agent does not fail before it runs
    /// out. This call takes no time, so the timer starts at the `now` of
    /// the next [`Agent::handle_timeout`] or [`Agent::handle_input`]
    /// ([`Agent::poll_timeout`] asks for one at once).
    pub fn set_remote_credentials(
        &mut self,
        ufrag: &str,
        pwd: &str,
    ) -> Result<(), CredentialsError> {
        let c = Credentials::new(ufrag, pwd)?;
        match &self.remote_creds {
            Some(old) if *old == c => return Ok(()),
            Some(_) => self.reset_remote(),
            None => {}
        }
        self.remote_creds = Some(c);
        if self.state == IceState::New {
            self.state = IceState::Checking;
        }
        self.pac = Pac::Starting;
        Ok(())
    }

    /// Add a candidate the peer signalled, at any time (Trickle ICE,
    /// RFC 8838 §11). A candidate at the address of a peer-reflexive one
    /// learned earlier replaces its type, priority and foundation.
    ///
    /// A candidate of an address family we have no base for is kept
    /// (a local candidate of its family may come later) but makes no pair.
    /// A candidate the driver cannot turn into an address at all, such as
    /// a browser's mDNS `.local` name it could not resolve, is simply not
    /// given: the agent needs no record of it, because nothing fails early
    /// for want of usable candidates. With none at all, the agent waits out
    /// the PAC timer (RFC 8863 §3) for the peer's checks, which reach us
    /// from the very addresses the names hide and connect through
    /// peer-reflexive candidates (RFC 8445 §7.3.1.3).
    pub fn add_remote_candidate(&mut self, mut c: Candidate) -> Result<(), CandidateError> {
        if !is_ice_chars(&c.foundation, MAX_FOUNDATION_LEN) {
            return Err(CandidateError::BadFoundation);
        }
        if c.priority == 0 || c.priority > i32::MAX as u32 {
            return Err(CandidateError::BadPriority);
        }
        if !usable_address(c.addr) {
            return Err(CandidateError::BadAddress);
        }
        c.base = c.addr;
        let c_addr = c.addr;
        if let Some(r) = self.remote.iter_mut().find(|r| r.addr == c.addr) {
            if r.kind != CandidateKind::PeerReflexive {
                return Err(CandidateError::Duplicate);
            }
            // RFC 8838 §11.4 (and RFC 8445 §7.3.1.3's note): the signalled
            // candidate replaces the peer-reflexive one learned first.
            *r = c;
            self.recompute_priorities();
            // The peer-reflexive candidate was only paired with the base
            // its check arrived on; the signalled one pairs with every base
            // (e.g. a host pair when the check came through our relay).
            if let Some(ri) = self.remote.iter().position(|r| r.addr == c_addr) {
                for li in 0..self.local.len() {
                    if self.is_punch_candidate(li) {
                        continue;
                    }
                    self.try_pair(li, ri);
                }
            }
            return Ok(());
        }
        if self.remote.len() >= self.cfg.max_remote_candidates {
            return Err(CandidateError::TooMany);
        }
        self.remote.push(c);
        let ri = self.remote.len() - 1;
        for li in 0..self.local.len() {
            // A punch base pairs only with the remote that checked it.
            if self.is_punch_candidate(li) {
                continue;
            }
            self.try_pair(li, ri);
        }
        Ok(())
    }

    /// The peer signalled end-of-candidates (RFC 8838 §13): once every pair
    /// has failed (or there is none, and the driver called
    /// [`Agent::end_of_local_candidates`]) and the PAC timer has run out
    /// (RFC 8863 §4: end-of-candidates does not cut it short), the agent
    /// reports [`Event::Failed`].
    pub fn end_of_remote_candidates(&mut self) {
        self.remote_eoc = true;
        self.check_failed();
    }

    /// ICE restart (RFC 8445 §9): fresh local credentials, the peer's
    /// credentials and candidates, the check list and the selected pair
    /// dropped. Local candidates stay (the driver may add more). Signal the
    /// returned credentials and the candidates again.
    pub fn restart(&mut self) -> &Credentials {
        self.local_creds = Credentials::random(&mut self.rng);
        // The punch's bases belong to the last generation's punch.
        let punch = std::mem::take(&mut self.punch);
        self.local
            .retain(|c| c.kind != CandidateKind::PeerReflexive && !punch.is_promoted(c.base));
        self.reset_remote();
        self.remote_creds = None;
        self.state = IceState::New;
        self.pac = Pac::Off;
        &self.local_creds
    }

    fn reset_remote(&mut self) {
        self.remote.clear();
        self.pairs.clear();
        self.triggered.clear();
        self.checks.clear();
        self.selected = None;
        self.nominating = None;
        self.consent = None;
        self.remote_eoc = false;
        self.last_paced = None;
        self.failure = None;
        if matches!(
            self.state,
            IceState::Connected | IceState::Failed | IceState::Disconnected
        ) {
            self.state = IceState::Checking;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Agent::handle_timeout`] must be called next; `None` when the
    /// agent waits only for input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in &self.checks {
            take(c.tx.poll_timeout());
        }
        take(self.paced_due());
        take(self.pac_due());
        if self.state == IceState::Connected {
            if let Some(c) = self.consent {
                take(Some(c.next_send.min(c.expires)));
            }
        }
        if self.may_nominate() {
            take(self.nomination_candidate().map(|(_, at)| at));
        }
        t
    }

    /// Advance timers to `now`: retransmit or fail checks, start the next
    /// paced check, nominate, run consent freshness.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.start_pac(now);
        self.run_transactions(now);
        self.run_consent(now);
        self.maybe_nominate(now);
        if self.paced_due().is_some_and(|due| now >= due) {
            if let Some(p) = self.next_paced_pair() {
                let nominate = self.pairs[p].nominate;
                self.start_check(p, now, nominate, false);
                self.last_paced = Some(now);
            }
        }
        self.check_failed();
    }

    /// Handle a datagram that arrived from `from` on the local base
    /// `to_local` at `now`. STUN Binding messages for ICE are consumed;
    /// anything else is refused with an error saying why (a non-STUN
    /// datagram, see [`InputError::is_not_stun`], belongs to the
    /// application). Never panics, whatever the bytes.
    ///
    /// After ICE failed, authentic checks are dropped unanswered
    /// ([`InputError::IceFailed`]) until an ICE restart: a success response
    /// would tell the peer that a path works to an agent that has given up
    /// (it would go connected alone).
    pub fn handle_input(
        &mut self,
        from: SocketAddr,
        to_local: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), InputError> {
        self.now = now;
        self.start_pac(now);
        let m = wire::parse(bytes)?;
        let r = match m.header.class() {
            Class::Request => self.on_request(from, to_local, bytes, &m, now),
            Class::Success | Class::Error => self.on_response(from, to_local, bytes, &m, now),
            // RFC 8445 §11: Binding indications are keepalives; nothing to do.
            Class::Indication => Ok(()),
        };
        self.maybe_nominate(now);
        self.check_failed();
        r
    }
}
