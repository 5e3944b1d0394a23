//! The tokio driver: gathering, ICE and the QUIC upgrade behind one short
//! API.
//!
//! ```no_run
//! # async fn demo(remote_text: &str) -> Result<(), natkit_ice::session::Error> {
//! use natkit_ice::session::Session;
//!
//! let session = Session::builder()
//!     .stun_server("192.0.2.1:3478".parse().unwrap())
//!     .build()
//!     .await?;
//! // Send this to the peer, any way you like (it is one line of text).
//! println!("{}", session.local_description().await);
//! // ...and read theirs.
//! let remote = remote_text.parse()?;
//! let conn: quinn::Connection = session.connect(remote).await?;
//! println!("connected over {}", session.path().unwrap());
//! let (mut send, _recv) = conn.open_bi().await.unwrap();
//! send.write_all(b"hello").await.unwrap();
//! # Ok(()) }
//! ```
//!
//! How it fits together:
//!
//! - [`Session::builder`] opens one UDP socket per local address (the host
//!   candidates' bases), makes a self-signed certificate, starts a quinn
//!   [`quinn::Endpoint`] over all of them through `socket::IceSocket`, and
//!   spawns the driver task, which gathers server-reflexive candidates from
//!   STUN servers and relayed ones from TURN servers (UDP, TCP or TLS).
//! - The driver runs the sans-IO [`crate::Agent`]: STUN and TURN traffic
//!   is demultiplexed from QUIC by first byte and source (RFC 7983,
//!   RFC 9443) in the socket, which hands it to the driver.
//! - [`Session::connect`] gives the agent the peer's description, waits for
//!   a selected pair, and runs the QUIC handshake over it: the controlling
//!   agent is the QUIC client, each side pinned to the certificate whose
//!   fingerprint the other signalled.
//! - When ICE selects another pair later (a direct pair after the relay
//!   won, or after [`Session::restart`]), only the socket's route changes:
//!   the QUIC connection and its open streams carry on.

mod driver;
mod error;
pub mod interfaces;
mod socket;
mod stream;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_proto::turn::client::{Credentials as TurnCredentials, Transport};
use quinn::{TransportErrorCode, VarInt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use error::{Error, Problem, ServerProblem};
pub use socket::{VIRTUAL_LOCAL, VIRTUAL_REMOTE};
pub use stream::TlsSettings;

use crate::candidate::CandidateKind;
use crate::description::{Description, SignalledCandidate, TrickleCandidate};
use crate::event::FailedPair;
use crate::tls::{self, Fingerprint, Identity, MismatchFlag, PeerPin};
use crate::{Candidate, Config, PairInfo, Role};

/// QUIC application error code sent when consent is lost (the path died).
pub const CLOSE_CONSENT_LOST: u32 = 0x1ce1;
/// QUIC application error code of [`Session::close`].
pub const CLOSE_NORMAL: u32 = 0;

/// A TURN server to gather a relayed candidate from.
#[derive(Debug, Clone)]
pub struct TurnServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// How to reach it (the relayed transport is always UDP).
    pub transport: Transport,
    /// Long-term or REST credentials.
    pub credentials: TurnCredentials,
    /// TLS settings, for [`Transport::Tls`].
    pub tls: Option<TlsSettings>,
}

impl TurnServer {
    /// A TURN server over UDP.
    pub fn udp(addr: SocketAddr, credentials: TurnCredentials) -> Self {
        TurnServer {
            addr,
            transport: Transport::Udp,
            credentials,
            tls: None,
        }
    }

    /// A TURN server over TCP (for networks that block UDP).
    pub fn tcp(addr: SocketAddr, credentials: TurnCredentials) -> Self {
        TurnServer {
            addr,
            transport: Transport::Tcp,
            credentials,
            tls: None,
        }
    }

    /// A TURN server over TLS (`turns:`).
    pub fn tls(addr: SocketAddr, credentials: TurnCredentials, tls: TlsSettings) -> Self {
        TurnServer {
            addr,
            transport: Transport::Tls,
            credentials,
            tls: Some(tls),
        }
    }

    fn kind(&self) -> &'static str {
        match self.transport {
            Transport::Udp => "turn/udp",
            Transport::Tcp => "turn/tcp",
            Transport::Tls => "turn/tls",
        }
    }
}

/// Everything a [`Session`] is built from; see [`Builder`] for each field.
#[derive(Debug, Clone)]
struct SessionConfig {
    stun: Vec<SocketAddr>,
    turn: Vec<TurnServer>,
    relay_only: bool,
    loopback: bool,
    bind: Vec<IpAddr>,
    gather_timeout: Duration,
    connect_timeout: Duration,
    ice: Config,
    idle_timeout: Duration,
    degraded_after: Option<Duration>,
}

/// Builds a [`Session`].
#[derive(Debug, Clone)]
pub struct Builder {
    cfg: SessionConfig,
}

impl Builder {
    /// Ask this STUN server for a server-reflexive candidate (repeatable).
    pub fn stun_server(mut self, addr: SocketAddr) -> Self {
        self.cfg.stun.push(addr);
        self
    }

    /// Allocate a relayed candidate on this TURN server (repeatable).
    pub fn turn_server(mut self, server: TurnServer) -> Self {
        self.cfg.turn.push(server);
        self
    }

    /// Use only relayed candidates (privacy, or to test the relay path):
    /// host and server-reflexive candidates are neither signalled nor
    /// paired. Needs at least one TURN server.
    pub fn relay_only(mut self, yes: bool) -> Self {
        self.cfg.relay_only = yes;
        self
    }

    /// Offer loopback addresses as host candidates too (off by default:
    /// they only work between processes of one machine).
    pub fn loopback(mut self, yes: bool) -> Self {
        self.cfg.loopback = yes;
        self
    }

    /// Use exactly these local addresses for host candidates instead of
    /// every interface's.
    pub fn bind(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.cfg.bind = ips.into_iter().collect();
        self
    }

    /// The ICE role to start in. The side that calls itself controlling is
    /// the QUIC client; if both pick the same role ICE resolves the
    /// conflict (RFC 8445 §7.3.1.1) and QUIC follows the outcome.
    pub fn role(mut self, role: Role) -> Self {
        self.cfg.ice.role = role;
        self
    }

    /// The most time gathering may take before the description is given
    /// with what was found (late candidates still trickle). Default 5 s.
    pub fn gather_timeout(mut self, d: Duration) -> Self {
        self.cfg.gather_timeout = d;
        self
    }

    /// The most time [`Session::connect`] may take. Default 30 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.cfg.connect_timeout = d;
        self
    }

    /// The ICE agent's settings (pacing, consent interval and timeout...).
    /// Its `role` is overwritten by [`Builder::role`] when that is called
    /// later.
    pub fn ice_config(mut self, ice: Config) -> Self {
        self.cfg.ice = ice;
        self
    }

    /// How long the selected pair may go without an answered consent check
    /// before [`SessionEvent::PathDegraded`] is raised (the cue for an ICE
    /// restart, long before consent expires). Default: 2.5 consent
    /// intervals.
    pub fn degraded_after(mut self, d: Duration) -> Self {
        self.cfg.degraded_after = Some(d);
        self
    }

    /// How long QUIC waits without hearing from the peer before closing the
    /// connection (default 30 s, as RFC 7675's consent timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.cfg.idle_timeout = d;
        self
    }

    /// Open the sockets, start the QUIC endpoint and start gathering.
    pub async fn build(self) -> Result<Session, Error> {
        Session::start(self.cfg).await
    }
}

/// Which kind of path a pair is, from the application's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Both sides on host addresses (same network, or no NAT).
    Host,
    /// Through a NAT mapping learned from STUN.
    Srflx,
    /// Through a NAT mapping learned from the checks themselves.
    Prflx,
    /// Through a TURN relay (either side's).
    Relay,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Prflx => "prflx",
            PathKind::Relay => "relay",
        })
    }
}

/// The path the session's traffic takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// What kind of path it is.
    pub kind: PathKind,
    /// Our candidate of the selected pair.
    pub local: Candidate,
    /// The peer's candidate.
    pub remote: Candidate,
    /// Round-trip time measured by the checks.
    pub rtt: Option<Duration>,
}

impl PathInfo {
    fn new(local: Candidate, remote: Candidate, rtt: Option<Duration>) -> Self {
        use CandidateKind::*;
        let kinds = [local.kind, remote.kind];
        let kind = if kinds.contains(&Relayed) {
            PathKind::Relay
        } else if kinds.contains(&PeerReflexive) {
            PathKind::Prflx
        } else if kinds.contains(&ServerReflexive) {
            PathKind::Srflx
        } else {
            PathKind::Host
        };
        PathInfo {
            kind,
            local,
            remote,
            rtt,
        }
    }
}

impl fmt::Display for PathInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} path: {} {} -> {} {}",
            self.kind, self.local.kind, self.local.addr, self.remote.kind, self.remote.addr
        )?;
        if let Some(rtt) = self.rtt {
            write!(f, ", rtt {:.2} ms", rtt.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// What happens in a session, for applications that watch
/// ([`Session::events`]). More kinds may come: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A local candidate was gathered: trickle it to the peer (RFC 8838).
    Candidate(TrickleCandidate),
    /// Gathering finished (the last [`SessionEvent::Candidate`] was sent
    /// with `candidate: None`).
    GatheringDone,
    /// A STUN or TURN server gave no candidate.
    ServerProblem(ServerProblem),
    /// ICE selected its first pair.
    Connected(PathInfo),
    /// ICE moved to another pair; QUIC follows without reconnecting.
    PathChanged(PathInfo),
    /// No check on the selected path was answered for the
    /// [`Builder::degraded_after`] time: the network may have changed.
    /// Consider [`Session::restart`]; consent is not lost yet, and the event
    /// comes once per silence.
    PathDegraded {
        /// The path.
        path: PathInfo,
        /// How long it has been silent.
        silent_for: Duration,
    },
    /// RFC 7675: the peer stopped answering on the selected path. The
    /// session closes its QUIC connection with [`CLOSE_CONSENT_LOST`].
    ConsentLost(PathInfo),
    /// Every pair failed after the peer's end-of-candidates.
    Failed(Vec<FailedPair>),
}

/// What the driver publishes about the session.
#[derive(Debug, Clone)]
struct Status {
    ufrag: String,
    pwd: String,
    local: Vec<Candidate>,
    gathering_done: bool,
    role: Role,
    path: Option<PathInfo>,
    failed: Option<Vec<FailedPair>>,
    /// How long ICE had been checking when it failed.
    failed_after: Duration,
    consent_lost: Option<PathInfo>,
    /// Our TURN allocation under the selected path failed or its
    /// connection dropped (the relay stopped or restarted).
    relay_lost: Option<ServerProblem>,
    problems: Vec<ServerProblem>,
    /// The task stopped.
    closed: bool,
}

impl Status {
    /// What ends the session, if anything has: the one place that turns the
    /// driver's status into an [`Error`], most specific first.
    fn ending(&self) -> Option<Error> {
        if let Some(problem) = self.relay_lost.clone() {
            return Some(Error::RelayLost { problem });
        }
        if let Some(p) = &self.consent_lost {
            return Some(Error::ConsentLost {
                path: p.to_string(),
            });
        }
        // Nothing gathered explains an empty check list better than "every
        // pair failed" does.
        if self.gathering_done && self.local.is_empty() {
            return Some(gathering_error(self.problems.clone()));
        }
        if let Some(pairs) = &self.failed {
            return Some(Error::NoPath {
                waited: self.failed_after,
                pairs: pairs.clone(),
                problems: self.problems.clone(),
            });
        }
        self.closed.then_some(Error::Closed)
    }
}

/// Requests from the API to the driver.
enum Command {
    SetRemote {
        desc: Description,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    AddRemote(TrickleCandidate),
    Restart {
        reply: oneshot::Sender<()>,
    },
    CheckList(oneshot::Sender<Vec<PairInfo>>),
    /// Delete TURN allocations (RFC 8656 §8: Refresh with LIFETIME 0) and
    /// stop.
    Close,
}

struct Inner {
    endpoint: quinn::Endpoint,
    identity: Identity,
    mismatch: Arc<MismatchFlag>,
    pin: Arc<PeerPin>,
    transport: Arc<quinn::TransportConfig>,
    cmd: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    events: broadcast::Sender<SessionEvent>,
    bases: Vec<SocketAddr>,
    cfg: SessionConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"session closed");
        // The driver deletes its TURN allocations and ends; if the queue is
        // full it ends anyway when the command channel closes.
        let _ = self.cmd.try_send(Command::Close);
    }
}

/// One ICE + QUIC session with one peer. Cheap to clone (a handle); the
/// session ends when the last handle is dropped or [`Session::close`] is
/// called.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("bases", &self.inner.bases)
            .field("fingerprint", &self.inner.identity.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Start building a session.
    pub fn builder() -> Builder {
        Builder {
            cfg: SessionConfig {
                stun: Vec::new(),
                turn: Vec::new(),
                relay_only: false,
                loopback: false,
                bind: Vec::new(),
                gather_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(30),
                ice: Config::default(),
                idle_timeout: Duration::from_secs(30),
                degraded_after: None,
            },
        }
    }

    async fn start(cfg: SessionConfig) -> Result<Session, Error> {
        if cfg.relay_only && cfg.turn.is_empty() {
            return Err(Error::Config(
                "relay-only needs at least one TURN server".into(),
            ));
        }
        let ips = host_ips(&cfg)?;
        let mut bases = Vec::new();
        for ip in &ips {
            let sock = bind_udp(SocketAddr::new(*ip, 0))?;
            bases.push(socket::Base::new(sock)?);
        }
        let base_addrs: Vec<SocketAddr> = bases.iter().map(|b| b.addr).collect();
        let (in_tx, in_rx) = mpsc::channel(socket::DRIVER_QUEUE);
        let sock = Arc::new(socket::IceSocket::new(bases, in_tx));
        for s in &cfg.stun {
            sock.add_server(*s);
        }
        for t in &cfg.turn {
            sock.add_server(t.addr);
        }
        let identity = Identity::generate().map_err(|e| Error::Setup(e.to_string()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                cfg.idle_timeout
                    .try_into()
                    .map_err(|_| Error::Config("idle timeout too large".into()))?,
            ))
            .keep_alive_interval(Some(cfg.idle_timeout / 3));
        let transport = Arc::new(transport);
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        // RFC 9287 §3.1 lets peers randomize QUIC's fixed bit when both
        // allow it; the first-byte demultiplexing of RFC 9443 §5 needs it
        // set, so never advertise grease_quic_bit.
        endpoint_cfg.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_cfg,
            None,
            sock.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        let mismatch = Arc::new(MismatchFlag::default());
        let pin = Arc::new(PeerPin::default());
        let server =
            tls::server_config(&identity, pin.clone(), mismatch.clone(), transport.clone())
                .map_err(|e| Error::Setup(e.to_string()))?;
        endpoint.set_server_config(Some(server));
        let now = Instant::now();
        let agent = crate::Agent::new(cfg.ice.clone(), now);
        let creds = agent.local_credentials().clone();
        let (status_tx, status_rx) = watch::channel(Status {
            ufrag: creds.ufrag,
            pwd: creds.pwd,
            local: Vec::new(),
            gathering_done: false,
            role: agent.role(),
            path: None,
            failed: None,
            failed_after: Duration::ZERO,
            consent_lost: None,
            relay_lost: None,
            problems: Vec::new(),
            closed: false,
        });
        let (events, _) = broadcast::channel(256);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let driver = driver::Driver::new(driver::Parts {
            agent,
            sock,
            endpoint: endpoint.clone(),
            cfg: cfg.clone(),
            inbound: in_rx,
            cmds: cmd_rx,
            events: events.clone(),
            status: status_tx,
            now,
        });
        tokio::spawn(driver.run());
        Ok(Session {
            inner: Arc::new(Inner {
                endpoint,
                identity,
                mismatch,
                pin,
                transport,
                cmd: cmd_tx,
                status: status_rx,
                events,
                bases: base_addrs,
                cfg,
            }),
        })
    }

    /// The local addresses the session's sockets are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.bases
    }

    /// The fingerprint of this session's certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// Watch the session's events (candidates to trickle, path changes,
    /// consent loss...). Events before the call are not replayed.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// The description to signal, once gathering is done (or its timeout
    /// passed). For Trickle ICE, use [`Session::local_description_now`] and
    /// forward [`SessionEvent::Candidate`]s.
    pub async fn local_description(&self) -> Description {
        let mut rx = self.inner.status.clone();
        let _ = rx.wait_for(|s| s.gathering_done || s.closed).await;
        self.local_description_now()
    }

    /// The description with the candidates gathered so far.
    pub fn local_description_now(&self) -> Description {
        let s = self.inner.status.borrow();
        Description {
            ufrag: s.ufrag.clone(),
            pwd: s.pwd.clone(),
            fingerprint: self.fingerprint(),
            // RFC 8445 §5.1.3: peer-reflexive candidates are not signalled.
            candidates: s
                .local
                .iter()
                .filter(|c| c.kind != CandidateKind::PeerReflexive)
                .map(SignalledCandidate::from_local)
                .collect(),
            end_of_candidates: s.gathering_done,
        }
    }

    /// The path in use, once connected.
    pub fn path(&self) -> Option<PathInfo> {
        self.inner.status.borrow().path.clone()
    }

    /// The current ICE role (after any role conflict).
    pub fn role(&self) -> Role {
        self.inner.status.borrow().role
    }

    /// Servers that gave no candidate so far.
    pub fn server_problems(&self) -> Vec<ServerProblem> {
        self.inner.status.borrow().problems.clone()
    }

    /// The check list, for diagnostics.
    pub async fn check_list(&self) -> Vec<PairInfo> {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::CheckList(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Give the agent a candidate the peer trickled (RFC 8838). Candidates
    /// of another ICE generation (ufrag) are ignored.
    pub async fn add_remote_candidate(&self, c: TrickleCandidate) -> Result<(), Error> {
        self.inner
            .cmd
            .send(Command::AddRemote(c))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Give the agent the peer's description without waiting for a
    /// connection. Returns `true` when the description started an ICE
    /// restart on the peer's side (a new ufrag while connected): this side
    /// restarted too, and must send [`Session::local_description`] back.
    pub async fn set_remote_description(&self, remote: Description) -> Result<bool, Error> {
        remote.validate()?;
        self.inner.pin.set(remote.fingerprint);
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::SetRemote {
                desc: remote,
                reply: tx,
            })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// ICE restart (RFC 8445 §9), e.g. after a network change: new
    /// credentials, server-reflexive candidates gathered again. Send the
    /// returned description to the peer, and give its answer to
    /// [`Session::set_remote_description`]. The QUIC connection stays up
    /// and moves to the new path when one is selected.
    pub async fn restart(&self) -> Result<Description, Error> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd
            .send(Command::Restart { reply: tx })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?;
        Ok(self.local_description().await)
    }

    /// Connect to the peer whose description is `remote`: ICE, then QUIC
    /// over the selected pair. The controlling side opens the QUIC
    /// connection, the controlled side accepts it; either way both get the
    /// same [`quinn::Connection`]. Bounded by the connect timeout.
    pub async fn connect(&self, remote: Description) -> Result<quinn::Connection, Error> {
        let started = Instant::now();
        let deadline = started + self.inner.cfg.connect_timeout;
        let expected = remote.fingerprint;
        self.set_remote_description(remote).await?;
        self.wait_selected(started, deadline).await?;
        let role = self.role();
        let conn = tokio::time::timeout_at(deadline.into(), self.handshake(role, expected)).await;
        match conn {
            Ok(r) => r,
            Err(_) => Err(self.no_path(started).await),
        }
    }

    async fn handshake(
        &self,
        role: Role,
        expected: Fingerprint,
    ) -> Result<quinn::Connection, Error> {
        let map = |e: quinn::ConnectionError| -> Error {
            if self.inner.mismatch.seen() || refused_certificate(&e) {
                Error::FingerprintMismatch { expected }
            } else {
                Error::Quic(e)
            }
        };
        match role {
            Role::Controlling => {
                let client = tls::client_config(
                    &self.inner.identity,
                    expected,
                    self.inner.mismatch.clone(),
                    self.inner.transport.clone(),
                )
                .map_err(|e| Error::Setup(e.to_string()))?;
                let connecting = self
                    .inner
                    .endpoint
                    .connect_with(client, VIRTUAL_REMOTE, tls::SERVER_NAME)
                    .map_err(|e| Error::Setup(format!("QUIC connect: {e}")))?;
                connecting.await.map_err(map)
            }
            Role::Controlled => loop {
                let incoming = self.inner.endpoint.accept().await.ok_or(Error::Closed)?;
                if incoming.remote_address() != VIRTUAL_REMOTE {
                    incoming.ignore();
                    continue;
                }
                return incoming.await.map_err(map);
            },
        }
    }

    async fn wait_selected(&self, started: Instant, deadline: Instant) -> Result<(), Error> {
        let mut rx = self.inner.status.clone();
        let r = tokio::time::timeout_at(
            deadline.into(),
            rx.wait_for(|s| s.path.is_some() || s.ending().is_some()),
        )
        .await
        // Owned at once: a watch guard held across an await would make
        // this future !Send (and block the driver's updates).
        .map(|r| r.map(|s| if s.path.is_some() { None } else { s.ending() }));
        match r {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(self.no_path(started).await),
        }
    }

    /// Why connecting timed out: what ended the session, else every pair
    /// of the check list and its state.
    async fn no_path(&self, started: Instant) -> Error {
        let s = self.inner.status.borrow().clone();
        if let Some(e) = s.ending() {
            return e;
        }
        let pairs = self
            .check_list()
            .await
            .into_iter()
            .map(|p| FailedPair {
                reason: p.failure.clone().unwrap_or(crate::PairFailure::Unfinished {
                    state: p.state,
                    sent: p.in_flight,
                }),
                local: p.local,
                remote: p.remote,
            })
            .collect();
        Error::NoPath {
            waited: started.elapsed(),
            pairs,
            problems: s.problems,
        }
    }

    /// Wait until the session ends on its own: consent lost (the peer
    /// vanished), the relay under the path lost, ICE failed (after a
    /// restart), or nothing left to gather. Returns the reason.
    pub async fn closed(&self) -> Error {
        let mut rx = self.inner.status.clone();
        let r = rx.wait_for(|s| s.ending().is_some()).await;
        match r {
            Ok(s) => s.ending().unwrap_or(Error::Closed),
            Err(_) => Error::Closed,
        }
    }

    /// Close the QUIC connection, delete the TURN allocations and stop the
    /// session.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"closed");
        let _ = self.inner.cmd.try_send(Command::Close);
    }

    /// Wait until QUIC has told the peer about closed connections (bounded
    /// by the idle timeout); call before exiting the process.
    pub async fn wait_idle(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

/// The error when gathering left no candidate.
fn gathering_error(problems: Vec<ServerProblem>) -> Error {
    if let Some(p) = problems
        .iter()
        .find(|p| p.problem == Problem::WrongCredentials)
    {
        return Error::TurnCredentials { server: p.server };
    }
    Error::NoCandidates { problems }
}

/// Whether the peer closed the handshake because it refused our
/// certificate (the pinned verifier's access_denied alert).
fn refused_certificate(e: &quinn::ConnectionError) -> bool {
    let code = TransportErrorCode::crypto(tls::ALERT_ACCESS_DENIED);
    match e {
        quinn::ConnectionError::TransportError(t) => t.code == code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == code,
        _ => false,
    }
}

/// The addresses to bind host bases on.
fn host_ips(cfg: &SessionConfig) -> Result<Vec<IpAddr>, Error> {
    if !cfg.bind.is_empty() {
        return Ok(cfg.bind.clone());
    }
    let mut ips: Vec<IpAddr> = interfaces::list()?
        .into_iter()
        .filter(|a| interfaces::usable(a.ip) && (cfg.loopback || !a.loopback))
        .map(|a| a.ip)
        .collect();
    ips.dedup();
    if ips.is_empty() {
        return Err(Error::Config(
            "no usable local address: no interface is up (use loopback mode for a local test)"
                .into(),
        ));
    }
    Ok(ips)
}

/// A UDP socket with receive and send buffers large enough for QUIC bulk
/// transfer bursts.
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}
