//! The whole ICE session, sans-IO: the [`Agent`], server-reflexive
//! gathering from STUN servers, relayed gathering with proto's TURN
//! clients (the whole allocation lifecycle), the route of the selected
//! pair, and consent freshness across ICE restarts.
//!
//! [`SessionCore`] owns no socket, spawns nothing and reads no clock. It is
//! driven the way str0m's `Rtc` and quinn-proto are: give it what arrives
//! ([`SessionCore::handle_datagram`], [`SessionCore::handle_stream_frame`],
//! the `handle_stream_*` reports) and the time
//! ([`SessionCore::handle_timeout`]), then drain
//! [`SessionCore::poll_output`] until it returns [`Output::Timeout`]:
//!
//! - [`Output::Transmit`]: a datagram (or stream frame) to send;
//! - [`Output::Connect`] / [`Output::Disconnect`]: open or drop a TCP/TLS
//!   connection to a TURN server, then report it with
//!   [`SessionCore::handle_stream_connected`] or
//!   [`SessionCore::handle_stream_closed`];
//! - [`Output::Event`]: a [`SessionEvent`] for the application;
//! - [`Output::Timeout`]: when to call [`SessionCore::handle_timeout`].
//!
//! The application protocol (QUIC, for [`crate::Session`]) shares the
//! sockets: a datagram that carries it comes back from
//! [`SessionCore::handle_datagram`] as the range to hand over (unwrapped
//! from ChannelData or a Data indication when it came through our relay),
//! and what the application sends goes by [`SessionCore::route`], which
//! changes under it when ICE selects another pair.
//!
//! The tokio [`crate::Session`] is a thin driver around this; the tests in
//! `tests/session_sim.rs` drive two of them over simulated NATs, STUN and
//! TURN servers in simulated time.

mod freshness;
mod gather;
mod relays;
mod report;
mod route;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use natkit_proto::demux::{classify, PacketKind};
use natkit_proto::turn::client::{self as turn, Credentials, Transport};

pub use report::{
    ConnectionError, ConnectionStage, Ending, PathInfo, PathKind, Problem, ServerKind,
    ServerProblem, SessionEvent,
};
pub use route::{Route, StreamId, Via, Wrap, MAX_WRAP_OVERHEAD};

use crate::candidate::local_preference;
use crate::description::{Description, DescriptionError, SignalledCandidate, TrickleCandidate};
use crate::event::{FailedPair, FailureReason};
use crate::fingerprint::Fingerprint;
use crate::{Agent, Candidate, CandidateKind, Config, Event, PairInfo, Role, SelectedPair};

use freshness::{Freshness, Verdict};
use gather::{Found, Probe};
use relays::{Alloc, Link};

/// The most a restart waits for gathering before its description is given
/// (the path may be dead: later candidates trickle).
const RESTART_GATHER: Duration = Duration::from_secs(2);

/// How long a closing session keeps its TURN allocations, so that QUIC's
/// CONNECTION_CLOSE can still cross the relay.
pub const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How long a closing session waits for the TURN servers to confirm the
/// deletions (RFC 8656 §8) before it calls itself closed anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A TURN server to gather a relayed candidate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// How to reach it (the relayed transport is always UDP).
    pub transport: Transport,
    /// Long-term or REST credentials.
    pub credentials: Credentials,
    /// For [`Transport::Tls`]: the name its certificate must carry.
    pub tls_name: Option<String>,
}

impl TurnServer {
    /// A TURN server over UDP.
    pub fn udp(addr: SocketAddr, credentials: Credentials) -> Self {
        TurnServer {
            addr,
            transport: Transport::Udp,
            credentials,
            tls_name: None,
        }
    }

    /// A TURN server over TCP (for networks that block UDP).
    pub fn tcp(addr: SocketAddr, credentials: Credentials) -> Self {
        TurnServer {
            transport: Transport::Tcp,
            ..TurnServer::udp(addr, credentials)
        }
    }

    /// A TURN server over TLS (`turns:`) whose certificate names `name`.
    pub fn tls(addr: SocketAddr, credentials: Credentials, name: impl Into<String>) -> Self {
        TurnServer {
            transport: Transport::Tls,
            tls_name: Some(name.into()),
            ..TurnServer::udp(addr, credentials)
        }
    }

    /// What kind of server it is, for reports.
    pub fn kind(&self) -> ServerKind {
        ServerKind::Turn(self.transport)
    }
}

/// What a [`SessionCore`] is built from.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// STUN servers to ask for server-reflexive candidates.
    pub stun: Vec<SocketAddr>,
    /// TURN servers to allocate relayed candidates on.
    pub turn: Vec<TurnServer>,
    /// Use only relayed candidates (no host or server-reflexive ones are
    /// signalled or paired).
    pub relay_only: bool,
    /// The most time gathering may take before the description is given
    /// with what was found (late candidates still trickle).
    pub gather_timeout: Duration,
    /// The ICE agent's settings.
    pub ice: Config,
    /// How long the selected pair may go without an answered consent check
    /// before [`SessionEvent::PathDegraded`]; `None`: 2.5 consent
    /// intervals.
    pub degraded_after: Option<Duration>,
    /// The fingerprint of the certificate the application protocol
    /// presents, signalled in the description.
    pub fingerprint: Fingerprint,
}

impl CoreConfig {
    /// No servers, 5 s of gathering, default ICE settings.
    pub fn new(fingerprint: Fingerprint) -> Self {
        CoreConfig {
            stun: Vec::new(),
            turn: Vec::new(),
            relay_only: false,
            gather_timeout: Duration::from_secs(5),
            ice: Config::default(),
            degraded_after: None,
            fingerprint,
        }
    }

    fn degraded_after(&self) -> Duration {
        self.degraded_after
            .unwrap_or(self.ice.consent_interval.mul_f64(2.5))
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreConfigError {
    /// Relay-only without a TURN server would gather nothing.
    #[error("relay-only needs at least one TURN server")]
    RelayOnlyWithoutTurn,
    /// A TLS TURN server without the name its certificate must carry.
    #[error("TURN server {0} over TLS needs the name its certificate carries")]
    TlsWithoutName(SocketAddr),
}

/// A datagram (or stream frame) to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The socket or connection to send it on.
    pub via: Via,
    /// Its destination (for [`Via::Stream`], the TURN server at its end).
    pub to: SocketAddr,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// What the core asks of its driver; see the [module docs](self).
// Each output is taken at once by the driver, never stored in bulk: the
// size of the largest variant (an event with a path) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this.
    Transmit(Transmit),
    /// Open a TCP (or, with `tls_name`, TLS) connection to the TURN server
    /// `server` for stream `stream`.
    Connect {
        /// The name the core uses for it.
        stream: StreamId,
        /// Where to connect.
        server: SocketAddr,
        /// TCP or TLS.
        transport: Transport,
        /// For TLS, the name the certificate must carry.
        tls_name: Option<String>,
    },
    /// Close stream `stream` (after sending what was queued on it).
    Disconnect {
        /// The stream.
        stream: StreamId,
    },
    /// Tell the application.
    Event(SessionEvent),
    /// Nothing more now: call [`SessionCore::handle_timeout`] at this time
    /// (or earlier, when input arrives).
    Timeout(Instant),
}

/// Where the closing session stands.
#[derive(Debug, Clone, Copy)]
struct Closing {
    /// When to delete the allocations.
    delete_at: Instant,
    /// Deletions sent.
    deleted: bool,
    /// Done waiting for confirmations.
    give_up_at: Instant,
}

/// The whole session, sans-IO. See the [module docs](self).
pub struct SessionCore {
    cfg: CoreConfig,
    agent: Agent,
    bases: Vec<SocketAddr>,
    probes: Vec<Probe>,
    allocs: Vec<Alloc>,
    next_stream: u64,
    gather_deadline: Instant,
    gathering_done: bool,
    /// When ICE last started checking (remote description or restart).
    checking_since: Instant,
    selected: Option<SelectedPair>,
    path: Option<PathInfo>,
    /// Route of the selected pair.
    route: Option<Route>,
    /// Learned from the first application datagram while no pair is
    /// selected (the controlled side can see the peer's first QUIC packet a
    /// moment before its own agent reports the selection).
    learned: Option<Route>,
    route_version: u64,
    /// Peer addresses whose application datagrams are accepted (every
    /// remote candidate and peer-reflexive address of the session).
    peers: HashSet<SocketAddr>,
    known_remote: usize,
    freshness: Freshness,
    problems: Vec<ServerProblem>,
    failed: Option<(Vec<FailedPair>, Duration, Option<FailureReason>)>,
    consent_lost: Option<PathInfo>,
    relay_lost: Option<ServerProblem>,
    closing: Option<Closing>,
    closed: bool,
    transmits: VecDeque<Transmit>,
    streams: VecDeque<Output>,
    events: VecDeque<SessionEvent>,
    /// A sub-machine may have output to collect.
    dirty: bool,
    now: Instant,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("bases", &self.bases)
            .field("agent", &self.agent)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    /// A session over the host bases `bases` (the local addresses of the
    /// driver's UDP sockets), gathering from `now`: host candidates at once
    /// (RFC 8445 §5.1.1.1), then server-reflexive and relayed ones.
    pub fn new(
        cfg: CoreConfig,
        bases: Vec<SocketAddr>,
        now: Instant,
    ) -> Result<SessionCore, CoreConfigError> {
        if cfg.relay_only && cfg.turn.is_empty() {
            return Err(CoreConfigError::RelayOnlyWithoutTurn);
        }
        if let Some(t) = cfg
            .turn
            .iter()
            .find(|t| t.transport == Transport::Tls && t.tls_name.is_none())
        {
            return Err(CoreConfigError::TlsWithoutName(t.addr));
        }
        let agent = Agent::new(cfg.ice.clone(), now);
        let mut core = SessionCore {
            gather_deadline: now + cfg.gather_timeout,
            cfg,
            agent,
            bases,
            probes: Vec::new(),
            allocs: Vec::new(),
            next_stream: 0,
            gathering_done: false,
            checking_since: now,
            selected: None,
            path: None,
            route: None,
            learned: None,
            route_version: 0,
            peers: HashSet::new(),
            known_remote: 0,
            freshness: Freshness::default(),
            problems: Vec::new(),
            failed: None,
            consent_lost: None,
            relay_lost: None,
            closing: None,
            closed: false,
            transmits: VecDeque::new(),
            streams: VecDeque::new(),
            events: VecDeque::new(),
            dirty: true,
            now,
            scratch: vec![0; 65536 + MAX_WRAP_OVERHEAD],
        };
        if !core.cfg.relay_only {
            for (i, a) in core.bases.clone().into_iter().enumerate() {
                core.add_local(Candidate::host(a, local_preference(a.ip(), i as u16)));
            }
        }
        core.start_probes(now);
        for t in core.cfg.turn.clone() {
            core.start_alloc(t, now);
        }
        Ok(core)
    }

    // --- signalling ------------------------------------------------------

    /// The description to signal: credentials, the certificate fingerprint,
    /// the candidates gathered so far (RFC 8445 §5.1.3: not peer-reflexive
    /// ones), and end-of-candidates once gathering is done.
    pub fn local_description(&self) -> Description {
        let creds = self.agent.local_credentials();
        Description {
            ufrag: creds.ufrag.clone(),
            pwd: creds.pwd.clone(),
            fingerprint: self.cfg.fingerprint,
            candidates: self
                .agent
                .local_candidates()
                .iter()
                .filter(|c| c.kind != CandidateKind::PeerReflexive)
                .map(SignalledCandidate::from_local)
                .collect(),
            end_of_candidates: self.gathering_done,
        }
    }

    /// Take the peer's description. Returns `true` when it started an ICE
    /// restart on the peer's side (new credentials while we had others,
    /// RFC 8445 §9): this side restarted too and must signal its new
    /// description.
    pub fn set_remote_description(
        &mut self,
        desc: &Description,
        now: Instant,
    ) -> Result<bool, DescriptionError> {
        desc.validate()?;
        self.now = now;
        self.dirty = true;
        let mut restarted = false;
        self.checking_since = now;
        if let Some(cur) = self.agent.remote_credentials() {
            if cur.ufrag == desc.ufrag && cur.pwd == desc.pwd {
                // The same description again: only new candidates matter.
                for c in &desc.candidates {
                    self.add_remote(c, now);
                }
                if desc.end_of_candidates {
                    self.agent.end_of_remote_candidates();
                }
                return Ok(false);
            }
            self.restart(now);
            restarted = true;
        }
        self.agent.set_remote_credentials(&desc.ufrag, &desc.pwd)?;
        for c in &desc.candidates {
            self.add_remote(c, now);
        }
        if desc.end_of_candidates {
            self.agent.end_of_remote_candidates();
        }
        Ok(restarted)
    }

    /// A candidate the peer trickled (RFC 8838); `candidate: None` is its
    /// end-of-candidates. Candidates of another ICE generation (ufrag) are
    /// ignored.
    pub fn add_remote_candidate(&mut self, t: &TrickleCandidate, now: Instant) {
        self.now = now;
        self.dirty = true;
        let current = self.agent.remote_credentials().map(|c| c.ufrag.as_str());
        if current != Some(t.ufrag.as_str()) {
            tracing::debug!("trickled candidate of another ICE generation ignored");
            return;
        }
        match &t.candidate {
            Some(c) => self.add_remote(c, now),
            None => self.agent.end_of_remote_candidates(),
        }
    }

    /// ICE restart (RFC 8445 §9), e.g. after a network change: new
    /// credentials, server-reflexive candidates gathered again, failed
    /// allocations made again. Signal [`SessionCore::local_description`]
    /// once gathering is done again (at most 2 s). The route stays until a
    /// new pair is selected.
    pub fn restart(&mut self, now: Instant) {
        self.now = now;
        self.dirty = true;
        // Remember when the path last answered: the restart forgets it.
        self.freshness.note(&self.agent);
        self.agent.restart();
        self.known_remote = 0;
        // New mappings may exist after a network change: ask again.
        self.start_probes(now);
        let over: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| self.allocs[i].is_over() || matches!(self.allocs[i].link, Link::Down(_)))
            .collect();
        for i in over.into_iter().rev() {
            self.replace_alloc(i, now);
        }
        // The others may have died with the network (RFC 8656 §2.2: an
        // allocation is its 5-tuple): ask each server now rather than at the
        // next refresh minutes away, and allocate anew where it fails.
        for a in &mut self.allocs {
            if a.done && a.client.state() == turn::State::Allocated {
                a.revalidating = true;
                a.client.refresh_now(now);
            }
        }
        self.gathering_done = false;
        self.checking_since = now;
        self.gather_deadline = now + self.cfg.gather_timeout.min(RESTART_GATHER);
        self.failed = None;
        self.consent_lost = None;
    }

    /// Close: stop answering checks, keep the TURN allocations
    /// [`CLOSE_GRACE`] so the application's goodbye can still cross the
    /// relay, then delete them (RFC 8656 §8) and wait up to a second for
    /// the servers to confirm. [`SessionEvent::Closed`] comes at the end.
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        self.dirty = true;
        self.closing.get_or_insert(Closing {
            delete_at: now + CLOSE_GRACE,
            deleted: false,
            give_up_at: now + CLOSE_GRACE + CLOSE_WAIT,
        });
    }

    // --- input -----------------------------------------------------------

    /// A datagram that arrived on host base `local` from `from`. STUN and
    /// TURN traffic is consumed; when it carries the application's
    /// protocol from the peer (directly, or unwrapped from our relay), the
    /// range of `data` to hand to the application is returned (the data
    /// may have been moved within `data`).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) -> Option<Range<usize>> {
        self.now = now;
        if self.closing.is_some() {
            // Only the TURN servers' answers to our deletions matter; ICE
            // checks go unanswered, as from a gone peer.
            if let Some(a) = self
                .allocs
                .iter_mut()
                .find(|a| a.is_udp_server(local, from))
            {
                a.client.handle_input(data, now);
                self.dirty = true;
            }
            return None;
        }
        if self
            .probes
            .iter_mut()
            .any(|p| p.handle(local, from, data, now))
        {
            self.dirty = true;
            return None;
        }
        if let Some(ai) = self
            .allocs
            .iter()
            .position(|a| a.is_udp_server(local, from))
        {
            return self.on_turn_message(ai, data, now);
        }
        self.deliver(from, local, data, now)
    }

    /// A frame (STUN or ChannelData, padding removed) from the TURN server
    /// at the end of `stream`; like [`SessionCore::handle_datagram`].
    pub fn handle_stream_frame(
        &mut self,
        now: Instant,
        stream: StreamId,
        frame: &mut [u8],
    ) -> Option<Range<usize>> {
        self.now = now;
        let ai = self.alloc_of(stream)?;
        if self.closing.is_some() {
            self.allocs[ai].client.handle_input(frame, now);
            self.dirty = true;
            return None;
        }
        self.on_turn_message(ai, frame, now)
    }

    /// Whether an application datagram from `from` on host base `local` is
    /// the peer's (a remote candidate or peer-reflexive address): the
    /// driver's fast path for direct traffic, which then needs no
    /// [`SessionCore::handle_datagram`]. Before a pair is selected, the
    /// first one also teaches the route back.
    pub fn accept_app_datagram(&mut self, local: SocketAddr, from: SocketAddr) -> bool {
        if !self.peers.contains(&from) || self.closing.is_some() {
            return false;
        }
        if self.route.is_none() && self.learned.is_none() {
            self.learn_route(local, from);
        }
        true
    }

    /// Stream `stream` is connected: its allocation's requests go out.
    pub fn handle_stream_connected(&mut self, stream: StreamId, now: Instant) {
        self.now = now;
        if let Some(ai) = self.alloc_of(stream) {
            if self.allocs[ai].link == Link::Connecting(stream) {
                tracing::debug!(%stream, server = %self.allocs[ai].server.addr, "TURN stream connected");
                self.allocs[ai].link = Link::Up(stream);
                self.dirty = true;
            }
        }
    }

    /// Stream `stream` could not be made, or ended.
    pub fn handle_stream_closed(&mut self, stream: StreamId, error: ConnectionError, now: Instant) {
        self.now = now;
        let Some(ai) = self.alloc_of(stream) else {
            return;
        };
        self.dirty = true;
        let a = &mut self.allocs[ai];
        if matches!(a.link, Link::Down(_)) {
            return;
        }
        a.link = Link::Down(stream);
        // Whatever the client still had to say goes nowhere now.
        while a.client.poll_transmit().is_some() {}
        let was_done = std::mem::replace(&mut a.done, true);
        a.closed = true;
        let p = ServerProblem {
            server: a.server.addr,
            kind: a.kind(),
            problem: Problem::Connection(error),
        };
        if self.closing.is_some() {
            return;
        }
        if was_done {
            tracing::info!("TURN connection lost: {p}");
            self.relay_lost(ai, p);
        } else {
            self.problem(p);
        }
    }

    /// Time passed: fire what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.dirty = true;
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        self.check_freshness(now);
        for p in &mut self.probes {
            p.handle_timeout(now);
        }
        // An allocation whose connection is gone was reported already: its
        // client's timers have nothing more to say.
        for a in self
            .allocs
            .iter_mut()
            .filter(|a| !matches!(a.link, Link::Down(_)))
        {
            if a.client.poll_timeout().is_some_and(|t| t <= now) {
                a.client.handle_timeout(now);
            }
        }
        self.progress_close(now);
    }

    // --- output ----------------------------------------------------------

    /// The next thing to do; drain until [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        if self.dirty {
            self.pump();
        }
        if let Some(s) = self.streams.pop_front() {
            return s;
        }
        if let Some(t) = self.transmits.pop_front() {
            return Output::Transmit(t);
        }
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        Output::Timeout(
            self.poll_timeout()
                .unwrap_or(self.now + Duration::from_secs(3600)),
        )
    }

    /// When [`SessionCore::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.closing.is_none() {
            take(self.agent.poll_timeout());
            take(self.freshness.poll_timeout(
                &self.agent,
                self.cfg.ice.consent_timeout,
                self.cfg.degraded_after(),
            ));
        }
        for p in &self.probes {
            take(p.poll_timeout());
        }
        for a in self.allocs.iter().filter(|a| a.via().is_some()) {
            take(a.client.poll_timeout());
        }
        if !self.gathering_done {
            take(Some(self.gather_deadline));
        }
        if let Some(c) = &self.closing {
            take(Some(if c.deleted { c.give_up_at } else { c.delete_at }));
        }
        t
    }

    /// How the application's datagrams for the peer go now: the selected
    /// pair's route, else the way the peer's first datagram came. `None`:
    /// nowhere yet (drop them; the protocol retransmits).
    pub fn route(&self) -> Option<Route> {
        self.route.or(self.learned)
    }

    /// Changes whenever [`SessionCore::route`] does (a driver that caches
    /// the route compares this).
    pub fn route_version(&self) -> u64 {
        self.route_version
    }

    // --- state -----------------------------------------------------------

    /// The host bases.
    pub fn bases(&self) -> &[SocketAddr] {
        &self.bases
    }

    /// The path in use, once connected.
    pub fn path(&self) -> Option<&PathInfo> {
        self.path.as_ref()
    }

    /// The current ICE role (after any role conflict).
    pub fn role(&self) -> Role {
        self.agent.role()
    }

    /// Servers that gave no candidate so far, or lost the allocation of a
    /// relayed candidate the path does not use (one entry per server).
    pub fn problems(&self) -> &[ServerProblem] {
        &self.problems
    }

    /// Whether gathering is done (or its time ran out).
    pub fn gathering_done(&self) -> bool {
        self.gathering_done
    }

    /// Our candidates so far.
    pub fn local_candidates(&self) -> &[Candidate] {
        self.agent.local_candidates()
    }

    /// The check list, for diagnostics.
    pub fn check_list(&self) -> Vec<PairInfo> {
        self.agent.check_list()
    }

    /// How long ICE has been checking (since the remote description or the
    /// last restart).
    pub fn checking_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.checking_since)
    }

    /// Whether the session finished closing.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// What ended the session, if anything has: most specific first.
    pub fn ending(&self) -> Option<Ending> {
        if let Some(p) = &self.relay_lost {
            return Some(Ending::RelayLost(p.clone()));
        }
        if let Some(p) = &self.consent_lost {
            return Some(Ending::ConsentLost(Box::new(p.clone())));
        }
        // Nothing gathered explains an empty check list better than "every
        // pair failed" does.
        if self.gathering_done && self.agent.local_candidates().is_empty() {
            return Some(
                match self
                    .problems
                    .iter()
                    .find(|p| p.problem.is_wrong_credentials())
                {
                    Some(p) => Ending::TurnCredentials { server: p.server },
                    None => Ending::NoCandidates(self.problems.clone()),
                },
            );
        }
        if let Some((pairs, waited, reason)) = &self.failed {
            return Some(Ending::NoPath {
                waited: *waited,
                reason: *reason,
                pairs: pairs.clone(),
                problems: self.problems.clone(),
            });
        }
        (self.closing.is_some() || self.closed).then_some(Ending::Closed)
    }

    // --- internals -------------------------------------------------------

    fn alloc_of(&self, stream: StreamId) -> Option<usize> {
        self.allocs.iter().position(|a| a.stream() == Some(stream))
    }

    fn start_probes(&mut self, now: Instant) {
        self.probes = if self.cfg.relay_only {
            Vec::new()
        } else {
            Probe::start_all(&self.bases, &self.cfg.stun, now)
        };
    }

    /// Drop allocation `i` and make a new one on its server.
    fn replace_alloc(&mut self, i: usize, now: Instant) {
        let a = self.allocs.remove(i);
        if let Some(stream) = a.stream() {
            self.streams.push_back(Output::Disconnect { stream });
        }
        self.start_alloc(a.server, now);
    }

    fn start_alloc(&mut self, server: TurnServer, now: Instant) {
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        match Alloc::new(server, &self.bases, stream, now) {
            Ok(a) => {
                if let Link::Connecting(stream) = a.link {
                    self.streams.push_back(Output::Connect {
                        stream,
                        server: a.server.addr,
                        transport: a.server.transport,
                        tls_name: a.server.tls_name.clone(),
                    });
                }
                self.allocs.push(a);
            }
            Err(p) => self.problem(p),
        }
    }

    /// A message from allocation `ai`'s server: a response for its client,
    /// or peer data (ChannelData, Data indication) for the agent or the
    /// application.
    fn on_turn_message(
        &mut self,
        ai: usize,
        data: &mut [u8],
        now: Instant,
    ) -> Option<Range<usize>> {
        let a = &mut self.allocs[ai];
        let Some(&first) = a.relayed.first() else {
            a.client.handle_input(data, now);
            self.dirty = true;
            return None;
        };
        // The peer data is borrowed from `data`, not copied.
        let (peer, local, at) = {
            let d = a.client.recv(data, now);
            let Some(d) = d else {
                // A response (or something dropped and counted).
                self.dirty = true;
                return None;
            };
            let start = d.data.as_ptr() as usize - data.as_ptr() as usize;
            let local = a.client.relayed_address_for(d.peer).unwrap_or(first);
            (d.peer, local, start..start + d.data.len())
        };
        let r = self.deliver(peer, local, &mut data[at.clone()], now)?;
        Some(at.start + r.start..at.start + r.end)
    }

    /// A datagram from `from` on local base `local` (host or relayed):
    /// checks to the agent, the peer's application datagrams back to the
    /// caller.
    fn deliver(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) -> Option<Range<usize>> {
        match classify(data, false) {
            PacketKind::Stun => {
                if let Err(e) = self.agent.handle_input(from, local, data, now) {
                    tracing::trace!(%from, error = %e, "datagram not used by ICE");
                }
                self.sync_peers();
                self.dirty = true;
                None
            }
            PacketKind::Quic if self.peers.contains(&from) => {
                if self.route.is_none() && self.learned.is_none() {
                    self.learn_route(local, from);
                }
                Some(0..data.len())
            }
            _ => None,
        }
    }

    /// The way back to the peer's first datagram, before a selection.
    fn learn_route(&mut self, local: SocketAddr, from: SocketAddr) {
        let now = self.now;
        let r = if self.bases.contains(&local) {
            Some(Route::direct(local, from))
        } else {
            self.allocs
                .iter_mut()
                .find(|a| a.relays(local))
                .and_then(|a| a.route_to(from, now))
        };
        if let Some(r) = r {
            tracing::debug!(route = %r, "route learned from the peer's first datagram");
            self.learned = Some(r);
            self.route_version += 1;
            self.dirty = true;
        }
    }

    fn set_route(&mut self, r: Option<Route>) {
        if r != self.route || self.learned.is_some() {
            if let Some(r) = &r {
                tracing::debug!(route = %r, "route");
            }
            self.route = r;
            self.learned = None;
            self.route_version += 1;
        }
    }

    /// The route of the selected pair: from a host base straight to the
    /// peer, or through our allocation for a relayed base.
    fn route_for(&mut self, sp: &SelectedPair, now: Instant) -> Option<Route> {
        if self.bases.contains(&sp.local.base) {
            return Some(Route::direct(sp.local.base, sp.remote.addr));
        }
        self.allocs
            .iter_mut()
            .find(|a| a.relays(sp.local.base))
            .and_then(|a| a.route_to(sp.remote.addr, now))
    }

    fn refresh_route(&mut self, now: Instant) {
        if let Some(sp) = self.selected.clone() {
            let r = self.route_for(&sp, now);
            self.set_route(r);
        }
    }

    /// Peer-reflexive remote candidates become addresses whose application
    /// datagrams are accepted.
    fn sync_peers(&mut self) {
        let rc = self.agent.remote_candidates();
        if rc.len() != self.known_remote {
            self.peers.extend(rc.iter().map(|c| c.addr));
            self.known_remote = rc.len();
        }
    }

    fn add_remote(&mut self, c: &SignalledCandidate, now: Instant) {
        self.peers.insert(c.addr);
        if let Err(e) = self.agent.add_remote_candidate(c.to_remote()) {
            tracing::debug!(candidate = %c, error = %e, "remote candidate not used");
            return;
        }
        // RFC 8656 §9: relayed bases can only reach peers with a permission.
        for a in &mut self.allocs {
            if a.relayed.iter().any(|r| r.is_ipv4() == c.addr.is_ipv4()) {
                let _ = a.client.create_permission(c.addr, now);
            }
        }
    }

    fn add_local(&mut self, c: Candidate) {
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

    fn problem(&mut self, p: ServerProblem) {
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

    /// Allocation `ai` is gone. If the selected path runs through it, say
    /// so: the peer will stop hearing us there (an ICE restart allocates
    /// again). Otherwise only its relayed candidate is gone, and with it
    /// the fallback should the path die: a server problem, so the
    /// application learns it (and an ending lists it), but nothing ends.
    fn relay_lost(&mut self, ai: usize, p: ServerProblem) {
        let under_path = self
            .selected
            .as_ref()
            .is_some_and(|sp| self.allocs[ai].relays(sp.local.base));
        if !under_path {
            self.problem(p);
            return;
        }
        self.events.push_back(SessionEvent::RelayLost(p.clone()));
        self.relay_lost = Some(p);
    }

    fn check_freshness(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        let verdict = self.freshness.check(
            &self.agent,
            now,
            self.cfg.ice.consent_timeout,
            self.cfg.degraded_after(),
        );
        let Some(sp) = self.selected.clone() else {
            return;
        };
        match verdict {
            Verdict::Fresh => {}
            Verdict::Lost => self.on_agent_event(Event::ConsentLost(sp), now),
            Verdict::Degraded { silent_for } => {
                // A path through our own relay may have gone silent because
                // the relay did: ask it now (a Refresh) rather than at its
                // next scheduled refresh minutes away; no answer, or a 437,
                // reports the relay lost.
                if let Some(a) = self.allocs.iter_mut().find(|a| a.relays(sp.local.base)) {
                    a.client.refresh_now(now);
                }
                let path = PathInfo::new(sp.local, sp.remote, sp.rtt);
                tracing::info!(%path, ?silent_for, "path degraded: consent checks unanswered");
                self.events
                    .push_back(SessionEvent::PathDegraded { path, silent_for });
            }
        }
    }

    fn progress_close(&mut self, now: Instant) {
        let Some(c) = self.closing else { return };
        if self.closed {
            return;
        }
        if !c.deleted {
            if now < c.delete_at {
                return;
            }
            for a in &mut self.allocs {
                a.client.close(now);
            }
            self.closing = Some(Closing { deleted: true, ..c });
            self.dirty = true;
        }
        let confirmed = self
            .allocs
            .iter()
            .all(|a| a.closed || a.is_over() || a.via().is_none());
        if confirmed || now >= c.give_up_at {
            self.closed = true;
            for a in &self.allocs {
                if let Some(stream) = a.stream() {
                    self.streams.push_back(Output::Disconnect { stream });
                }
            }
            self.events.push_back(SessionEvent::Closed);
        }
    }

    /// Collect what the sub-machines queued and act on their events, until
    /// none has anything more.
    fn pump(&mut self) {
        let now = self.now;
        while std::mem::take(&mut self.dirty) {
            self.pump_probes();
            self.pump_allocs(now);
            self.pump_agent(now);
            self.check_gathering(now);
            self.progress_close(now);
        }
    }

    fn pump_probes(&mut self) {
        let mut found = Vec::new();
        for p in &mut self.probes {
            while let Some((base, to, payload)) = p.poll_transmit() {
                self.transmits.push_back(Transmit {
                    via: Via::Base(base),
                    to,
                    payload,
                });
            }
            if let Some(f) = p.take_outcome() {
                found.push(f);
            }
        }
        for f in found {
            self.dirty = true;
            match f {
                Found::Mapped {
                    base,
                    mapped,
                    server,
                } => {
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

    fn pump_allocs(&mut self, now: Instant) {
        for ai in 0..self.allocs.len() {
            if matches!(self.allocs[ai].link, Link::Down(_)) {
                let c = &mut self.allocs[ai].client;
                while c.poll_transmit().is_some() || c.poll_event().is_some() {}
                continue;
            }
            self.send_alloc_transmits(ai);
            while let Some(e) = self.allocs[ai].client.poll_event() {
                self.dirty = true;
                self.on_turn_event(ai, e, now);
            }
            self.send_alloc_transmits(ai);
        }
        // Allocations a restart's probe found dead are made again (their
        // loss was reported just above, with the probe's failure).
        let mut ai = 0;
        while ai < self.allocs.len() {
            let a = &self.allocs[ai];
            if a.revalidating && a.is_over() && self.closing.is_none() {
                tracing::debug!(server = %a.server.addr, "TURN allocation lost with the network: allocating again");
                self.replace_alloc(ai, now);
                self.dirty = true;
            } else {
                ai += 1;
            }
        }
    }

    fn send_alloc_transmits(&mut self, ai: usize) {
        let a = &mut self.allocs[ai];
        match a.via() {
            Some(via) => {
                while let Some(t) = a.client.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        via,
                        to: a.server.addr,
                        payload: t.payload,
                    });
                }
            }
            // Connecting: the requests wait in the client for the stream.
            None if matches!(a.link, Link::Connecting(_)) => {}
            None => while a.client.poll_transmit().is_some() {},
        }
    }

    fn on_turn_event(&mut self, ai: usize, e: turn::Event, now: Instant) {
        let server = self.allocs[ai].server.addr;
        let kind = self.allocs[ai].kind();
        match e {
            turn::Event::Allocated {
                relayed, mapped, ..
            } => {
                self.allocs[ai].relayed = relayed.clone();
                self.allocs[ai].done = true;
                // A relay lost earlier serves us again (a restart allocated
                // anew): no longer a reason to end the session.
                if self.relay_lost.as_ref().is_some_and(|p| p.server == server) {
                    self.relay_lost = None;
                }
                let base = match self.allocs[ai].link {
                    Link::Udp(b) => Some(b),
                    _ => None,
                };
                let host_ip = base.map_or(mapped.ip(), |b| b.ip());
                for (i, r) in relayed.iter().enumerate() {
                    let pref = local_preference(r.ip(), (ai * 2 + i) as u16);
                    self.add_local(Candidate::relayed(*r, mapped, host_ip, server.ip(), pref));
                }
                // RFC 8445 §5.1.1.2: the mapped address a TURN server
                // reports is a server-reflexive candidate too.
                if let (Some(b), false) = (base, self.cfg.relay_only) {
                    if mapped != b {
                        let i = self.bases.iter().position(|x| *x == b).unwrap_or(0);
                        let pref = local_preference(b.ip(), i as u16);
                        self.add_local(Candidate::server_reflexive(mapped, b, server.ip(), pref));
                    }
                }
                let peers: Vec<SocketAddr> = self
                    .agent
                    .remote_candidates()
                    .iter()
                    .map(|c| c.addr)
                    .collect();
                for p in peers {
                    let _ = self.allocs[ai].client.create_permission(p, now);
                }
            }
            turn::Event::Failed(err) => {
                let was_done = std::mem::replace(&mut self.allocs[ai].done, true);
                if self.closing.is_some() {
                    return;
                }
                let p = ServerProblem {
                    server,
                    kind,
                    problem: Problem::Turn(err),
                };
                if was_done {
                    tracing::info!("TURN allocation lost: {p}");
                    self.relay_lost(ai, p);
                } else {
                    self.problem(p);
                }
            }
            turn::Event::ChannelBound { peer, channel } => {
                self.allocs[ai].bound.insert(peer, channel);
                self.refresh_route(now);
            }
            turn::Event::ChannelFailed { peer, error, .. } => {
                tracing::debug!(%peer, %error, "TURN channel bind failed; data goes in Send indications");
                self.allocs[ai].bound.remove(&peer);
                self.refresh_route(now);
            }
            turn::Event::PermissionFailed { peers, error } => {
                tracing::debug!(?peers, %error, "TURN permission refused");
            }
            turn::Event::Closed => self.allocs[ai].closed = true,
            turn::Event::Refreshed { .. } => self.allocs[ai].revalidating = false,
            turn::Event::Data { .. } | turn::Event::PermissionCreated { .. } => {}
        }
    }

    fn pump_agent(&mut self, now: Instant) {
        self.send_agent_transmits(now);
        while let Some(e) = self.agent.poll_event() {
            self.dirty = true;
            self.on_agent_event(e, now);
        }
        self.freshness.note(&self.agent);
        // Events (role changes, selections) may queue more.
        self.send_agent_transmits(now);
    }

    /// The agent's checks and answers: from a host base directly, from a
    /// relayed base through its TURN allocation.
    fn send_agent_transmits(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_transmit() {
            if self.closing.is_some() {
                continue;
            }
            if self.bases.contains(&t.from) {
                self.transmits.push_back(Transmit {
                    via: Via::Base(t.from),
                    to: t.to,
                    payload: t.payload,
                });
                continue;
            }
            let Some(a) = self.allocs.iter_mut().find(|a| a.relays(t.from)) else {
                continue;
            };
            let Some(via) = a.via() else { continue };
            if !a.client.has_permission(t.to) {
                let _ = a.client.create_permission(t.to, now);
                self.dirty = true;
            }
            match a.client.send_to(t.to, &t.payload, &mut self.scratch) {
                Ok(n) => self.transmits.push_back(Transmit {
                    via,
                    to: a.server.addr,
                    payload: self.scratch[..n].to_vec(),
                }),
                Err(e) => tracing::debug!(to = %t.to, error = %e, "cannot relay a check"),
            }
        }
    }

    fn on_agent_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected(sp) | Event::SelectedPairChanged(sp) => {
                let first = self.selected.is_none();
                tracing::debug!(pair = %sp, "selected pair");
                let route = self.route_for(&sp, now);
                self.set_route(route);
                self.selected = Some(sp.clone());
                let info = PathInfo::new(sp.local, sp.remote, sp.rtt);
                self.path = Some(info.clone());
                self.consent_lost = None;
                self.relay_lost = None;
                self.events.push_back(if first {
                    SessionEvent::Connected(info)
                } else {
                    SessionEvent::PathChanged(info)
                });
            }
            Event::ConsentLost(sp) => {
                self.freshness.lost_reported();
                // Once per loss. The agent forgets its consent time as it
                // loses consent, so in the same step the core's own check
                // (meant for a restarted agent) can see the silence first
                // and report it; the agent's report then says nothing new.
                // A later loss comes after a new selection or a restart,
                // which both clear `consent_lost`.
                if self.consent_lost.is_some() {
                    return;
                }
                let info = PathInfo::new(sp.local, sp.remote, sp.rtt);
                tracing::info!(path = %info, "consent lost");
                self.consent_lost = Some(info.clone());
                self.events.push_back(SessionEvent::ConsentLost(info));
            }
            Event::Failed(pairs) => {
                let after = now.saturating_duration_since(self.checking_since);
                let reason = self.agent.failure().map(|f| f.reason);
                self.failed = Some((pairs.clone(), after, reason));
                self.events.push_back(SessionEvent::Failed(pairs));
            }
            Event::RoleChanged(role) => self.events.push_back(SessionEvent::RoleChanged(role)),
            Event::PeerReflexiveCandidate(_) => self.sync_peers(),
        }
    }

    fn check_gathering(&mut self, now: Instant) {
        if self.gathering_done {
            return;
        }
        let all = self.probes.iter().all(|p| p.done) && self.allocs.iter().all(|a| a.done);
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
}
