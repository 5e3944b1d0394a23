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
//! - [`Output::Http`]: one HTTP exchange with the gateway's UPnP device
//!   (port mapping): feed what comes back to
//!   [`SessionCore::handle_http_data`] and the end to
//!   [`SessionCore::handle_http_end`] ([`Output::Disconnect`] cancels it);
//! - [`Output::OpenSockets`] / [`Output::CloseSockets`]: UDP sockets for
//!   the hard-NAT punch (`punch`), reported with
//!   [`SessionCore::handle_sockets_opened`];
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
//!
//! | module | what it does |
//! |---|---|
//! | this one | the types, the public surface, and `pump` (collect what the sub-machines queued) |
//! | `checks` | the ICE agent inside: checks in and out (through a relay for relayed bases), remote candidates, selection, consent loss, failure |
//! | `gather` | STUN probes (RFC 8445 §5.1.1.2), local candidates, servers that gave none, the end of gathering |
//! | `relays` | TURN allocations (proto's client): where their messages travel, their events, replacing lost ones |
//! | `route` | [`Route`]: how application datagrams go, for the selected pair or learnt before it |
//! | `freshness` | consent across ICE restarts (RFC 7675) and the degraded-path warning |
//! | `port_mapping` | the port-mapped candidate ([`crate::portmap`]: PCP, NAT-PMP, UPnP IGD), its renewals and deletion |
//! | `punch` | the hard-NAT punch between natkit peers: how the NAT maps (from gathering), the announcement, the hard side's sockets ([`Output::OpenSockets`]), the easy side's probes, the [`PunchReport`]; its docs give N, M, the pacing and the cost |
//! | `closing` | the close grace and the deletions (RFC 8656 §8, the port mapping's) |
//! | `report` | events, paths, server problems, endings |

mod checks;
mod closing;
mod freshness;
mod gather;
mod port_mapping;
mod punch;
mod relays;
mod report;
mod route;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use natkit_proto::demux::{classify, PacketKind};
use natkit_proto::turn::client::{self as turn, Credentials, Transport};

pub use port_mapping::PORTMAP_FIRST_ANSWER;
pub use punch::{
    PunchReport, FIRST_PORT, MAX_FAILED_PUNCHES, PREDICTION_WINDOW, PROBE_BATCH, PROBE_BUDGET,
    PROBE_INTERVAL, PUNCH_LIFETIME, PUNCH_SOCKETS, WINDOW_REPEAT_AFTER,
};
pub use report::{
    ConnectionError, ConnectionStage, Ending, PathInfo, PathKind, Problem, ServerKind,
    ServerProblem, SessionEvent,
};
pub use route::{Route, StreamId, Via, Wrap, MAX_WRAP_OVERHEAD};

use crate::candidate::local_preference;
use crate::description::{
    Description, DescriptionError, NatMapping, SignalledCandidate, TrickleCandidate,
};
use crate::event::{FailedPair, FailureReason};
use crate::fingerprint::Fingerprint;
use crate::{Agent, Candidate, CandidateKind, Config, Event, PairInfo, Role, SelectedPair};

use freshness::Freshness;
#[cfg(feature = "tokio")]
pub(crate) use gather::reaches;
use gather::Probe;
use port_mapping::Mapper;
use punch::{Mappings, Punch};
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
    /// Map the port of one host base on the gateway (PCP, NAT-PMP, UPnP
    /// IGD) and offer the mapped address as a candidate: `internal` is
    /// the base. `None` (the default): no port mapping. The tokio
    /// [`crate::Session`] fills it from the routing table.
    pub port_mapping: Option<crate::portmap::Config>,
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
            port_mapping: None,
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
    /// Open a TCP connection from `from` (any port) to `to` for stream
    /// `stream`, send `request`, and give what comes back to
    /// [`SessionCore::handle_http_data`], then the end to
    /// [`SessionCore::handle_http_end`]: one HTTP exchange with the
    /// gateway's UPnP device.
    Http {
        /// The name the core uses for it.
        stream: StreamId,
        /// The local address to connect from (the base being mapped).
        from: std::net::IpAddr,
        /// The device.
        to: SocketAddr,
        /// The request.
        request: Vec<u8>,
    },
    /// Close stream `stream` (after sending what was queued on it).
    Disconnect {
        /// The stream.
        stream: StreamId,
    },
    /// Open `count` UDP sockets on `ip` (any port) for the hard-NAT punch
    /// and report their addresses with
    /// [`SessionCore::handle_sockets_opened`]; until
    /// [`Output::CloseSockets`] they are bases like the host ones:
    /// datagrams arriving on them go to
    /// [`SessionCore::handle_datagram`], [`Via::Base`] may name them.
    OpenSockets {
        /// The address to bind them to (a host base's).
        ip: std::net::IpAddr,
        /// How many.
        count: usize,
    },
    /// Close these sockets of [`Output::OpenSockets`].
    CloseSockets(Vec<SocketAddr>),
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
    mapper: Option<Mapper>,
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
    /// Mappings the STUN servers reported (how the NAT maps).
    mappings: Mappings,
    /// How the peer's NAT maps, as its description announced.
    remote_nat: Option<NatMapping>,
    /// The hard-NAT punch of this ICE generation, once started.
    punch: Option<Punch>,
    /// Sockets open for the punch (bases while open).
    punch_sockets: Vec<SocketAddr>,
    /// How long the punch took to a direct pair.
    punch_direct: Option<Duration>,
    /// Punches that found no direct path (see `punch::MAX_FAILED_PUNCHES`).
    punch_failed: u32,
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
        let mapper = match (&cfg.port_mapping, cfg.relay_only) {
            (Some(pm), false) => Mapper::new(pm.clone(), &bases, now),
            _ => None,
        };
        let mut core = SessionCore {
            mapper,
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
            mappings: Mappings::default(),
            remote_nat: None,
            punch: None,
            punch_sockets: Vec::new(),
            punch_direct: None,
            punch_failed: 0,
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
    /// ones), end-of-candidates once gathering is done, and the agent's
    /// ICE options (its Ta, natkit's renomination).
    pub fn local_description(&self) -> Description {
        let creds = self.agent.local_credentials();
        let mut d = Description {
            ufrag: creds.ufrag.clone(),
            pwd: creds.pwd.clone(),
            fingerprint: self.cfg.fingerprint,
            candidates: self
                .agent
                .local_candidates()
                .iter()
                // Not peer-reflexive ones, nor the punch's sockets.
                .filter(|c| {
                    c.kind != CandidateKind::PeerReflexive
                        && !self.is_punch_socket(c.base)
                        && !self.agent.punch_base_used(c.base)
                })
                .map(SignalledCandidate::from_local)
                .collect(),
            end_of_candidates: self.gathering_done,
            ice_pacing_ms: None,
            renomination: false,
            // natkit's own extension: known once gathering classified it.
            nat: self.nat_mapping().map(|(_, m)| m),
        };
        d.set_ice_options(self.agent.local_ice_options());
        d
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
        self.agent.set_remote_ice_options(desc.ice_options());
        self.remote_nat = desc.nat;
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
        self.reset_punch();
        self.agent.restart();
        self.known_remote = 0;
        // New mappings may exist after a network change: ask again.
        self.start_probes(now);
        // And the port mapping may be gone: renew it now (a refusal or
        // silence till expiry is SessionEvent::PortMappingLost).
        if let Some(mp) = &mut self.mapper {
            mp.m.renew_now(now);
        }
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
        self.end_punch();
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
            // Only the TURN servers' and the gateway's answers to our
            // deletions matter; ICE checks go unanswered, as from a gone
            // peer.
            if self.mapper_datagram(local, from, data, now) {
                return None;
            }
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
        if self.mapper_datagram(local, from, data, now) {
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
        if let Some(mp) = &mut self.mapper {
            if mp.m.poll_timeout().is_some_and(|t| t <= now) {
                mp.m.handle_timeout(now);
            }
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
        if let Some(mp) = &self.mapper {
            take(mp.m.poll_timeout());
            if !self.gathering_done && self.now < mp.first_answer_by {
                take(Some(mp.first_answer_by));
            }
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
        take(self.punch_timeout());
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

    // --- internals (the rest is in the submodules) ---------------------

    /// Collect what the sub-machines queued and act on their events, until
    /// none has anything more.
    fn pump(&mut self) {
        let now = self.now;
        while std::mem::take(&mut self.dirty) {
            self.pump_probes();
            self.pump_mapper();
            self.pump_allocs(now);
            self.pump_agent(now);
            self.check_gathering(now);
            self.pump_punch(now);
            self.progress_close(now);
        }
    }
}
