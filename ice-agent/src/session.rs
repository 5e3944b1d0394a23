//! The tokio session: gathering, ICE and the QUIC upgrade behind one short
//! API.
//!
//! ```no_run
//! # async fn demo(remote_text: &str) -> Result<(), natkit_ice::Error> {
//! use natkit_ice::Session;
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
//! - Everything that decides (gathering, the TURN allocations, ICE, the
//!   route of the selected pair, consent across restarts) is the sans-IO
//!   [`SessionCore`].
//! - [`Session::builder`] opens one UDP socket per local address (the host
//!   candidates' bases), makes a self-signed certificate, and starts a
//!   quinn [`quinn::Endpoint`] over all of them through the session's
//!   socket, inside which the thin driver runs: quinn's endpoint task is
//!   the one task that reads every base and feeds the core (see
//!   `socket.rs`).
//! - [`Session::connect`] gives the core the peer's description, waits for
//!   a selected pair, and runs the QUIC handshake over it: the controlling
//!   agent is the QUIC client, each side pinned to the certificate whose
//!   fingerprint the other signalled.
//! - When ICE selects another pair later (a direct pair after the relay
//!   won, or after [`Session::restart`]), only the route under quinn's
//!   fixed peer address changes: the QUIC connection and its open streams
//!   carry on.

mod driver;
mod error;
mod interfaces;
mod socket;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{TransportErrorCode, VarInt};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{ConfigError, Error, SetupError};
use socket::VIRTUAL_REMOTE;

pub use crate::tls::{IdentityError, TlsSetupError};

use crate::description::{Description, TrickleCandidate};
use crate::event::FailedPair;
use crate::fingerprint::Fingerprint;
use crate::session_core::{
    CoreConfig, Ending, PathInfo, ServerProblem, SessionCore, SessionEvent, TurnServer,
};
use crate::tls::{self, Identity, MismatchFlag, PeerPin};
use crate::{Config, PairInfo, Role};
use driver::{Command, Driver, Status, Subscribers};

/// QUIC application error code sent when consent is lost (the path died).
pub const CLOSE_CONSENT_LOST: u32 = 0x1ce1;
/// QUIC application error code of [`Session::close`].
pub const CLOSE_NORMAL: u32 = 0;

/// Builds a [`Session`].
#[derive(Debug, Clone)]
pub struct Builder {
    stun: Vec<SocketAddr>,
    turn: Vec<TurnServer>,
    turn_tls: Option<Arc<rustls::ClientConfig>>,
    relay_only: bool,
    loopback: bool,
    bind: Vec<IpAddr>,
    gather_timeout: Duration,
    connect_timeout: Duration,
    ice: Config,
    idle_timeout: Duration,
    degraded_after: Option<Duration>,
    port_mapping: bool,
    gateway: Option<IpAddr>,
}

impl Builder {
    /// Ask this STUN server for a server-reflexive candidate (repeatable).
    pub fn stun_server(mut self, addr: SocketAddr) -> Self {
        self.stun.push(addr);
        self
    }

    /// Allocate a relayed candidate on this TURN server (repeatable).
    pub fn turn_server(mut self, server: TurnServer) -> Self {
        self.turn.push(server);
        self
    }

    /// The TLS client configuration (trusted roots) for TURN servers over
    /// TLS ([`TurnServer::tls`]); each server's certificate must carry the
    /// name it was given.
    pub fn turn_tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.turn_tls = Some(config);
        self
    }

    /// Use only relayed candidates (privacy, or to test the relay path):
    /// host and server-reflexive candidates are neither signalled nor
    /// paired. Needs at least one TURN server.
    pub fn relay_only(mut self, yes: bool) -> Self {
        self.relay_only = yes;
        self
    }

    /// Offer loopback addresses as host candidates too (off by default:
    /// they only work between processes of one machine).
    pub fn loopback(mut self, yes: bool) -> Self {
        self.loopback = yes;
        self
    }

    /// Use exactly these local addresses for host candidates instead of
    /// every interface's.
    pub fn bind(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.bind = ips.into_iter().collect();
        self
    }

    /// Ask the gateway to map a port (PCP, then NAT-PMP, then UPnP IGD;
    /// see [`crate::portmap`]) and offer the mapped address as a candidate
    /// ([`crate::Candidate::port_mapped`]). On by default: behind a NAT
    /// that maps ports, it connects directly where STUN's address is
    /// filtered or useless (a symmetric NAT), as Tailscale, iroh and libnice
    /// do; the mapping is renewed while the session lives and deleted when
    /// it closes. It costs one datagram to the gateway (and an SSDP search)
    /// where nothing answers, and does not hold gathering then (without
    /// STUN or TURN servers, at most
    /// [`crate::session_core::PORTMAP_FIRST_ANSWER`]). Only a non-loopback
    /// IPv4 base is mapped, through the default route's gateway (from
    /// `/proc/net/route`) unless [`Builder::gateway`] names one.
    pub fn port_mapping(mut self, yes: bool) -> Self {
        self.port_mapping = yes;
        self
    }

    /// The gateway to ask for port mapping, instead of the default
    /// route's. A loopback gateway maps a loopback base (for tests).
    pub fn gateway(mut self, ip: IpAddr) -> Self {
        self.gateway = Some(ip);
        self
    }

    /// The ICE role to start in. The side that calls itself controlling is
    /// the QUIC client; if both pick the same role ICE resolves the
    /// conflict (RFC 8445 §7.3.1.1) and QUIC follows the outcome.
    pub fn role(mut self, role: Role) -> Self {
        self.ice.role = role;
        self
    }

    /// The most time gathering may take before the description is given
    /// with what was found (late candidates still trickle). Default 5 s.
    pub fn gather_timeout(mut self, d: Duration) -> Self {
        self.gather_timeout = d;
        self
    }

    /// The most time [`Session::connect`] may take. Default 30 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The ICE agent's settings (pacing, consent interval and timeout...).
    /// Its `role` is overwritten by [`Builder::role`] when that is called
    /// later.
    pub fn ice_config(mut self, ice: Config) -> Self {
        self.ice = ice;
        self
    }

    /// How long the selected pair may go without an answered consent check
    /// before [`SessionEvent::PathDegraded`] is raised (the cue for an ICE
    /// restart, long before consent expires). Default: 2.5 consent
    /// intervals.
    pub fn degraded_after(mut self, d: Duration) -> Self {
        self.degraded_after = Some(d);
        self
    }

    /// How long QUIC waits without hearing from the peer before closing the
    /// connection (default 30 s, as RFC 7675's consent timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Open the sockets, start the QUIC endpoint and start gathering.
    pub async fn build(self) -> Result<Session, Error> {
        Session::start(self)
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    identity: Identity,
    mismatch: Arc<MismatchFlag>,
    pin: Arc<PeerPin>,
    transport: Arc<quinn::TransportConfig>,
    cmd: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    subscribers: Subscribers,
    bases: Vec<SocketAddr>,
    connect_timeout: Duration,
    /// [`Session::close`] was called.
    close_requested: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"session closed");
        // The driver deletes the TURN allocations and ends (the closed
        // command channel says the same, this is only sooner).
        let _ = self.cmd.send(Command::Close);
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

/// The session's events, in order, from the moment [`Session::events`] was
/// called. Nothing is dropped: the queue is unbounded (events are few: one
/// per candidate, server problem or path change).
#[derive(Debug)]
pub struct Events(mpsc::UnboundedReceiver<SessionEvent>);

impl Events {
    /// The next event; `None` once the session is gone.
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        self.0.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<SessionEvent> {
        self.0.try_recv().ok()
    }
}

impl Session {
    /// Start building a session.
    pub fn builder() -> Builder {
        Builder {
            stun: Vec::new(),
            turn: Vec::new(),
            turn_tls: None,
            relay_only: false,
            loopback: false,
            bind: Vec::new(),
            gather_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            ice: Config::default(),
            idle_timeout: Duration::from_secs(30),
            degraded_after: None,
            port_mapping: true,
            gateway: None,
        }
    }

    fn start(b: Builder) -> Result<Session, Error> {
        for t in b
            .turn
            .iter()
            .filter(|t| t.transport == natkit_proto::turn::client::Transport::Tls)
        {
            let name = t
                .tls_name
                .clone()
                .ok_or(ConfigError::TlsWithoutName(t.addr))?;
            if b.turn_tls.is_none() {
                return Err(ConfigError::TlsWithoutConfig(t.addr).into());
            }
            if ServerName::try_from(name.clone()).is_err() {
                return Err(ConfigError::BadTlsName {
                    server: t.addr,
                    name,
                }
                .into());
            }
        }
        let identity = Identity::generate().map_err(SetupError::from)?;
        let now = Instant::now();
        let ips = host_ips(&b)?;
        let mut bases = Vec::new();
        for ip in &ips {
            bases.push(socket::Base::new(bind_udp(SocketAddr::new(*ip, 0))?)?);
        }
        let base_addrs: Vec<SocketAddr> = bases.iter().map(|b| b.addr).collect();
        let mut cfg = CoreConfig::new(identity.fingerprint());
        cfg.stun = b.stun.clone();
        cfg.turn = b.turn.clone();
        cfg.relay_only = b.relay_only;
        cfg.gather_timeout = b.gather_timeout;
        cfg.ice = b.ice.clone();
        cfg.degraded_after = b.degraded_after;
        if b.port_mapping && !b.relay_only {
            cfg.port_mapping = port_mapping_config(b.gateway, &base_addrs);
        }
        let core = SessionCore::new(cfg, base_addrs.clone(), now).map_err(ConfigError::from)?;

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                b.idle_timeout
                    .try_into()
                    .map_err(|_| ConfigError::IdleTimeoutTooLarge(b.idle_timeout))?,
            ))
            .keep_alive_interval(Some(b.idle_timeout / 3));
        let transport = Arc::new(transport);

        let (status_tx, status_rx) = watch::channel(Status {
            description: core.local_description(),
            path: None,
            role: core.role(),
            problems: Vec::new(),
            ending: None,
            closed: false,
            port_mapping: None,
        });
        let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let driver = Driver::new(
            core,
            cmd_rx,
            status_tx,
            subscribers.clone(),
            b.turn_tls.clone(),
            b.gather_timeout,
            now,
        );
        let sock = Arc::new(socket::IceSocket::new(bases, driver));

        let mut endpoint_cfg = quinn::EndpointConfig::default();
        // RFC 9287 §3.1 lets peers randomize QUIC's fixed bit when both
        // allow it; the first-byte demultiplexing of RFC 9443 §5 needs it
        // set, so never advertise grease_quic_bit.
        endpoint_cfg.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_cfg,
            None,
            sock,
            Arc::new(quinn::TokioRuntime),
        )?;
        let mismatch = Arc::new(MismatchFlag::default());
        let pin = Arc::new(PeerPin::default());
        let server =
            tls::server_config(&identity, pin.clone(), mismatch.clone(), transport.clone())
                .map_err(SetupError::from)?;
        endpoint.set_server_config(Some(server));
        tokio::spawn(supervise(endpoint.clone(), status_rx.clone()));
        Ok(Session {
            inner: Arc::new(Inner {
                endpoint,
                identity,
                mismatch,
                pin,
                transport,
                cmd: cmd_tx,
                status: status_rx,
                subscribers,
                bases: base_addrs,
                connect_timeout: b.connect_timeout,
                close_requested: AtomicBool::new(false),
            }),
        })
    }

    fn send(&self, c: Command) -> Result<(), Error> {
        self.inner.cmd.send(c).map_err(|_| Error::Closed)
    }

    /// The local addresses the session's sockets are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.bases
    }

    /// The fingerprint of this session's certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// The session's events from now on (candidates to trickle, path
    /// changes, consent loss...), none dropped. Each call is its own
    /// subscription.
    pub fn events(&self) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        Events(rx)
    }

    /// The description to signal, once gathering is done (or its timeout
    /// passed). For Trickle ICE, use [`Session::local_description_now`] and
    /// forward [`SessionEvent::Candidate`]s.
    pub async fn local_description(&self) -> Description {
        let mut rx = self.inner.status.clone();
        let _ = rx
            .wait_for(|s| s.description.end_of_candidates || s.closed)
            .await;
        self.local_description_now()
    }

    /// The description with the candidates gathered so far.
    pub fn local_description_now(&self) -> Description {
        self.inner.status.borrow().description.clone()
    }

    /// The path in use, once connected.
    pub fn path(&self) -> Option<PathInfo> {
        self.inner.status.borrow().path.clone()
    }

    /// The port mapping the gateway made for this session, while it holds
    /// (see [`Builder::port_mapping`]).
    pub fn port_mapping(&self) -> Option<crate::portmap::Mapping> {
        self.inner.status.borrow().port_mapping.clone()
    }

    /// The current ICE role (after any role conflict).
    pub fn role(&self) -> Role {
        self.inner.status.borrow().role
    }

    /// Servers that gave no candidate, or lost the one they gave (one entry
    /// per server, the latest).
    pub fn server_problems(&self) -> Vec<ServerProblem> {
        self.inner.status.borrow().problems.clone()
    }

    /// The check list, for diagnostics.
    pub async fn check_list(&self) -> Vec<PairInfo> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::CheckList(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Give the agent a candidate the peer trickled (RFC 8838). Candidates
    /// of another ICE generation (ufrag) are ignored.
    pub fn add_remote_candidate(&self, c: TrickleCandidate) -> Result<(), Error> {
        self.send(Command::AddRemote(c))
    }

    /// Give the agent the peer's description without waiting for a
    /// connection. Returns `true` when the description started an ICE
    /// restart on the peer's side (a new ufrag while connected): this side
    /// restarted too, and must send [`Session::local_description`] back.
    pub async fn set_remote_description(&self, remote: Description) -> Result<bool, Error> {
        remote.validate()?;
        self.inner.pin.set(remote.fingerprint);
        let (tx, rx) = oneshot::channel();
        self.send(Command::SetRemote {
            desc: Box::new(remote),
            reply: tx,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// ICE restart (RFC 8445 §9), e.g. after a network change: new
    /// credentials, server-reflexive candidates gathered again. Send the
    /// returned description to the peer, and give its answer to
    /// [`Session::set_remote_description`]. The QUIC connection stays up
    /// and moves to the new path when one is selected.
    pub async fn restart(&self) -> Result<Description, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Restart { reply: tx })?;
        let ufrag = rx.await.map_err(|_| Error::Closed)?;
        let mut st = self.inner.status.clone();
        let s = st
            .wait_for(|s| {
                s.closed || (s.description.ufrag == ufrag && s.description.end_of_candidates)
            })
            .await
            .map_err(|_| Error::Closed)?;
        if s.closed {
            return Err(Error::Closed);
        }
        Ok(s.description.clone())
    }

    /// Connect to the peer whose description is `remote`: ICE, then QUIC
    /// over the selected pair. The controlling side opens the QUIC
    /// connection, the controlled side accepts it; either way both get the
    /// same [`quinn::Connection`]. Bounded by the connect timeout.
    pub async fn connect(&self, remote: Description) -> Result<quinn::Connection, Error> {
        let started = Instant::now();
        let deadline = started + self.inner.connect_timeout;
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
                .map_err(SetupError::from)?;
                let connecting = self
                    .inner
                    .endpoint
                    .connect_with(client, VIRTUAL_REMOTE, tls::SERVER_NAME)
                    .map_err(SetupError::from)?;
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
            rx.wait_for(|s| s.path.is_some() || s.ending.is_some()),
        )
        .await
        // Owned at once: a watch guard held across an await would make
        // this future !Send (and block the driver's updates).
        .map(|r| {
            r.map(|s| match &s.path {
                Some(_) => None,
                None => s.ending.clone(),
            })
        });
        match r {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(e))) => Err(e.into()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(self.no_path(started).await),
        }
    }

    /// Why connecting timed out: what ended the session, else every pair
    /// of the check list and its state.
    async fn no_path(&self, started: Instant) -> Error {
        let s = self.inner.status.borrow().clone();
        if let Some(e) = s.ending {
            return e.into();
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
            reason: None,
            pairs,
            problems: s.problems,
        }
    }

    /// Wait until the session ends on its own: consent lost (the peer
    /// vanished), the relay under the path lost, ICE failed (after a
    /// restart), or nothing left to gather. Returns the reason.
    pub async fn closed(&self) -> Error {
        let mut rx = self.inner.status.clone();
        let r = rx.wait_for(|s| s.ending.is_some()).await;
        match r {
            Ok(s) => s.ending.clone().map_or(Error::Closed, Error::from),
            Err(_) => Error::Closed,
        }
    }

    /// Close the QUIC connection, delete the TURN allocations and stop the
    /// session.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"closed");
        self.inner.close_requested.store(true, Ordering::Relaxed);
        let _ = self.send(Command::Close);
    }

    /// After [`Session::close`]: wait until QUIC has told the peer about
    /// closed connections and the TURN allocations are deleted (RFC 8656
    /// §8), at most 2 s; call before exiting the process, whose end would
    /// otherwise leave them to time out.
    pub async fn wait_idle(&self) {
        let closing = self.inner.close_requested.load(Ordering::Relaxed);
        let mut st = self.inner.status.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.inner.endpoint.wait_idle().await;
            if closing {
                let _ = st.wait_for(|s| s.closed).await;
            }
        })
        .await;
    }
}

/// The session's supervisor: closes QUIC when consent is lost (quinn's own
/// API cannot be called from inside its endpoint task, where the driver
/// runs), and keeps the endpoint, and so the driver, alive until the core
/// has deleted its TURN allocations.
async fn supervise(endpoint: quinn::Endpoint, mut status: watch::Receiver<Status>) {
    let mut closed_quic = false;
    loop {
        let (consent_lost, closed) = {
            let s = status.borrow_and_update();
            (matches!(s.ending, Some(Ending::ConsentLost(_))), s.closed)
        };
        if consent_lost && !closed_quic {
            closed_quic = true;
            endpoint.close(VarInt::from_u32(CLOSE_CONSENT_LOST), b"ICE consent lost");
        }
        if closed || status.changed().await.is_err() {
            return;
        }
    }
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

/// The port mapping of the session: the gateway (`explicit`, else the
/// default IPv4 route's) and the base to map, one that reaches it (same
/// family, loopback only with a loopback gateway), preferring one on the
/// gateway's link.
fn port_mapping_config(
    explicit: Option<IpAddr>,
    bases: &[SocketAddr],
) -> Option<crate::portmap::Config> {
    use crate::portmap::gateway;
    let (gw, on_link) = match explicit {
        Some(ip) => (ip, None),
        None => match gateway::system_default_v4() {
            Ok(Some((route, text))) => (IpAddr::V4(route.gateway), Some((route.interface, text))),
            Ok(None) => {
                tracing::debug!("no default route: no port mapping");
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "routing table unreadable: no port mapping");
                return None;
            }
        },
    };
    if gw.is_unspecified() || gw.is_multicast() {
        return None;
    }
    let gw_sock = SocketAddr::new(gw, crate::portmap::SERVER_PORT);
    let usable: Vec<SocketAddr> = bases
        .iter()
        .copied()
        .filter(|b| crate::session_core::reaches(*b, gw_sock))
        .collect();
    let base = on_link
        .and_then(|(iface, text)| {
            usable.iter().copied().find(|b| match b.ip() {
                IpAddr::V4(ip) => gateway::on_link_v4(&text, &iface, ip),
                IpAddr::V6(_) => false,
            })
        })
        .or_else(|| usable.first().copied())?;
    tracing::debug!(gateway = %gw, %base, "port mapping");
    Some(crate::portmap::Config::new(gw, base))
}

/// The addresses to bind host bases on.
fn host_ips(b: &Builder) -> Result<Vec<IpAddr>, Error> {
    if !b.bind.is_empty() {
        return Ok(b.bind.clone());
    }
    let mut ips: Vec<IpAddr> = interfaces::list()?
        .into_iter()
        .filter(|a| interfaces::usable(a.ip) && (b.loopback || !a.loopback))
        .map(|a| a.ip)
        .collect();
    ips.dedup();
    if ips.is_empty() {
        return Err(ConfigError::NoUsableAddress.into());
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
