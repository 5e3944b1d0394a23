//! A sans-IO TURN client (RFC 8656, RFC 6156).
//!
//! [`Client`] holds one allocation on one TURN server. The application owns
//! the socket (UDP) or the connection (TCP, TLS) and the clock, and drives
//! the client the way quinn-proto and str0m are driven:
//!
//! - feed what arrives from the server to [`Client::handle_input`] (one
//!   datagram, or one frame cut from a stream with [`crate::framing`]);
//! - send what [`Client::poll_transmit`] returns to the server;
//! - call [`Client::handle_timeout`] at [`Client::poll_timeout`];
//! - read [`Client::poll_event`] for allocation, permission, channel and
//!   data events.
//!
//! The client allocates on creation (with the 401 / 438 dance of
//! RFC 8489 §9.2), refreshes the allocation at 75 % of its lifetime,
//! refreshes permissions and channel bindings before they expire
//! (RFC 8656 §9, §12), and verifies MESSAGE-INTEGRITY(-SHA256) on every
//! response once it has credentials. The data path allocates nothing:
//! [`Client::send_to`] writes ChannelData (when the peer has a bound channel)
//! or a Send indication straight into a caller buffer, and
//! [`Client::recv`] returns received peer data borrowed from the input.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::channel_data::{self, ChannelDataError, CHANNEL_MAX, CHANNEL_MIN};
use crate::integrity::{self, LongTermKey, PasswordAlgorithm};
use crate::raw::{self, method, Class, Header};
use crate::transaction::{self, new_transaction_id, Transaction};

mod config;
mod error;
mod tcp;
mod wire;

#[cfg(test)]
mod tests;

pub use config::{AddressFamily, Config, Credentials, PortRequest, RelayedTransport, Transport};
pub use error::{ClientError, UsageError};
pub use tcp::{BindOutcome, ConnectionBind};
/// A message for the server: `to` is always [`Config::server`].
pub use transaction::Transmit;

use wire::{Auth, Op};

/// Largest CreatePermission batch: keeps the request well under a 1280-byte
/// path MTU with IPv6 peers and long credentials (RFC 8489 §6.1).
const MAX_PEERS_PER_REQUEST: usize = 32;

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation exists.
    Allocated {
        /// The relayed transport addresses: one, or two for a dual
        /// allocation (RFC 8656 §7.1, RFC 6156).
        relayed: Vec<SocketAddr>,
        /// The client's address as the server saw it (XOR-MAPPED-ADDRESS).
        mapped: SocketAddr,
        /// The lifetime the server granted.
        lifetime: Duration,
    },
    /// The allocation was refreshed.
    Refreshed {
        /// The lifetime the server granted.
        lifetime: Duration,
    },
    /// Permissions were installed for these peers (first install only;
    /// refreshes are silent).
    PermissionCreated {
        /// The peers of the request (only their IP addresses matter,
        /// RFC 8656 §9).
        peers: Vec<SocketAddr>,
    },
    /// A CreatePermission (first or refresh) failed; the permissions are
    /// dropped. The allocation itself is unaffected.
    PermissionFailed {
        /// The peers of the request.
        peers: Vec<SocketAddr>,
        /// Why, e.g. [`ClientError::Forbidden`] for a peer the relay denies.
        error: ClientError,
    },
    /// A channel is bound: [`Client::send_to`] now uses ChannelData for the
    /// peer.
    ChannelBound {
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
    /// A ChannelBind (first or refresh) failed: data to the peer goes in
    /// Send indications until a bind succeeds. The peer keeps its channel
    /// number (RFC 8656 §12), and ChannelData the server relays on it still
    /// arrives. After a [`ClientError::Timeout`] the server may well have
    /// bound it: [`Client::bind_channel`] asks again with the same number.
    /// After an error answer the server refused it, and `bind_channel`
    /// says so ([`UsageError::ChannelRefused`]).
    ChannelFailed {
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
        /// Why.
        error: ClientError,
    },
    /// Data from a peer (Data indication or ChannelData).
    Data {
        /// The peer that sent it.
        peer: SocketAddr,
        /// The payload.
        data: Vec<u8>,
    },
    /// The server answered the Allocate with 300 Try Alternate
    /// (RFC 8489 §10, RFC 8656 §7.2: it is draining or full): the client
    /// now allocates on `to` ([`Client::server`]), starting the
    /// authentication afresh. A UDP driver that sends to
    /// [`Transmit::to`] needs do nothing; a stream driver opens a
    /// connection to `to` (checking its certificate against `domain`, when
    /// given) before sending what [`Client::poll_transmit`] returns. Once
    /// only: a second 300 fails with [`ClientError::RedirectLoop`].
    Redirected {
        /// The server that redirected.
        from: SocketAddr,
        /// The alternate.
        to: SocketAddr,
        /// ALTERNATE-DOMAIN (RFC 8489 §14.16): the alternate's name for
        /// TLS, if the server gave one.
        domain: Option<String>,
    },
    /// TCP allocations (RFC 6062 §4.3): the relay connected to `peer`
    /// after [`Client::connect`]; bind a new data connection to it with
    /// [`Client::connection_bind`] (the relay closes it if that does not
    /// happen within 30 s).
    Connected {
        /// The peer.
        peer: SocketAddr,
        /// Its CONNECTION-ID.
        connection_id: u32,
    },
    /// A [`Client::connect`] failed: e.g. [`ClientError::ConnectionFailed`]
    /// (447) or [`ClientError::Forbidden`] (a peer the relay denies).
    ConnectFailed {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        error: ClientError,
    },
    /// TCP allocations (RFC 6062 §4.5): `peer` connected to the relayed
    /// address (it needs a permission); accept it by binding a new data
    /// connection with [`Client::connection_bind`] within 30 s.
    ConnectionAttempt {
        /// The peer.
        peer: SocketAddr,
        /// Its CONNECTION-ID.
        connection_id: u32,
    },
    /// The allocation was deleted after [`Client::close`].
    Closed,
    /// The allocation could not be made or kept; the client is done.
    Failed(ClientError),
}

/// Where the allocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Allocate in progress.
    Allocating,
    /// Allocated and being refreshed.
    Allocated,
    /// Deleting (Refresh with LIFETIME 0 sent).
    Closing,
    /// Deleted or abandoned after [`Client::close`].
    Closed,
    /// Failed; see the [`Event::Failed`] that was reported.
    Failed,
}

/// Counters of messages the client ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that did not parse (bad STUN, bad FINGERPRINT, error
    /// responses without ERROR-CODE, Data indications without data...).
    pub malformed: u64,
    /// Responses whose MESSAGE-INTEGRITY(-SHA256) did not verify.
    pub forged: u64,
    /// Responses to no pending transaction (late duplicates, strays) and
    /// messages a client does not take (requests, other indications).
    pub stray: u64,
    /// ChannelData on a channel number the client never asked for.
    pub unknown_channel: u64,
}

/// Data from a peer, borrowed from the message given to [`Client::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerData<'a> {
    /// The peer that sent it.
    pub peer: SocketAddr,
    /// The payload.
    pub data: &'a [u8],
    /// The channel it came on, `None` for a Data indication.
    pub channel: Option<u16>,
}

/// Write a Send indication (RFC 8656 §11.1) carrying `data` to `peer` into
/// `out`; returns its length. Stateless: for a driver that frames data
/// itself once the client has a permission for `peer` (a Send indication to
/// a peer without one is dropped by the relay).
pub fn send_indication(out: &mut [u8], peer: SocketAddr, data: &[u8]) -> Result<usize, UsageError> {
    // Header, XOR-PEER-ADDRESS (up to 24) and the DATA attribute header.
    if data.len() > usize::from(u16::MAX) - 28 - 3 {
        return Err(UsageError::DataTooLarge(data.len()));
    }
    // RFC 8656 §11.1: indications are not authenticated; a fresh random
    // transaction ID still keeps them distinct.
    wire::write_send_indication(out, &new_transaction_id(), peer, data)
        .map_err(|_| UsageError::BufferTooSmall)
}

/// A request in flight.
struct Pending {
    transaction_id: [u8; 12],
    op: Op,
    bytes: Vec<u8>,
    timer: Transaction,
    /// 438 answers received so far for this operation.
    stale: u8,
    /// Whether the request carried credentials.
    authenticated: bool,
    /// Whether it is the retry of a request answered 401 after
    /// credentials (see `on_response`).
    reauthenticated: bool,
}

/// A permission, keyed by peer IP (RFC 8656 §9).
struct Permission {
    /// The address sent in XOR-PEER-ADDRESS (the port does not matter, but
    /// a real one keeps strict servers happy).
    peer: SocketAddr,
    installed: bool,
    in_flight: bool,
    refresh_at: Instant,
}

/// A channel binding, keyed by peer address (RFC 8656 §12).
///
/// Once a ChannelBind for a peer has been sent, the peer keeps its number
/// for the allocation's life, whatever the answer: a request whose answers
/// were all lost may have bound it on the server, which then relays the
/// peer's data on it (RFC 8656 §12.7) and refuses any other number for
/// the peer with a 400 (§12.2). So the number is never given to another
/// peer, ChannelData on it is always taken, and a new bind after a timeout
/// reuses it, which binds or refreshes (§12.1) and so converges.
struct Channel {
    number: u16,
    /// A success answer confirmed the binding: data goes in ChannelData.
    bound: bool,
    in_flight: bool,
    /// The error answer that refused the last bind; no new bind is sent.
    refused: Option<ClientError>,
    refresh_at: Instant,
}

/// A TURN client for one allocation. See the [module docs](self).
pub struct Client {
    cfg: Config,
    state: State,
    auth: Option<Auth>,
    pending: Vec<Pending>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    relayed: Vec<SocketAddr>,
    mapped: Option<SocketAddr>,
    lifetime: Duration,
    refresh_at: Option<Instant>,
    reservation_token: Option<u64>,
    permissions: HashMap<IpAddr, Permission>,
    channels: HashMap<SocketAddr, Channel>,
    channel_peers: HashMap<u16, SocketAddr>,
    next_channel: u16,
    stats: Stats,
    /// The server that redirected the Allocate, once it has (RFC 8489 §10).
    redirected_from: Option<SocketAddr>,
    /// Its ALTERNATE-DOMAIN.
    alternate_domain: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.cfg.server)
            .field("state", &self.state)
            .field("relayed", &self.relayed)
            .field("permissions", &self.permissions.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that sends its first Allocate at `now` (the first
    /// [`Client::poll_transmit`] returns it). RFC 8489 §9.2.3: the first
    /// request goes without credentials; the server's 401 supplies the realm
    /// and nonce.
    pub fn new(config: Config, now: Instant) -> Self {
        let mut c = Client {
            cfg: config,
            state: State::Allocating,
            auth: None,
            pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            relayed: Vec::new(),
            mapped: None,
            lifetime: Duration::ZERO,
            refresh_at: None,
            reservation_token: None,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_peers: HashMap::new(),
            next_channel: CHANNEL_MIN,
            stats: Stats::default(),
            redirected_from: None,
            alternate_domain: None,
        };
        c.start(Op::Allocate, 0, now);
        c
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The server the client talks to: [`Config::server`], or the
    /// alternate it was redirected to ([`Event::Redirected`]).
    pub fn server(&self) -> SocketAddr {
        self.cfg.server
    }

    /// The ALTERNATE-DOMAIN of the redirect that was followed (RFC 8489
    /// §14.16): the name a TLS driver checks the alternate's certificate
    /// against.
    pub fn alternate_domain(&self) -> Option<&str> {
        self.alternate_domain.as_deref()
    }

    /// Where the allocation stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The REALM and password algorithm the client authenticates with
    /// (RFC 8489 §9.2), once a 401 or 438 has told it; `None` before.
    /// MD5 goes with MESSAGE-INTEGRITY, SHA-256 with MESSAGE-INTEGRITY-SHA256.
    pub fn authentication(&self) -> Option<(&str, PasswordAlgorithm)> {
        self.auth.as_ref().map(|a| (a.realm.as_str(), a.algorithm))
    }

    /// The relayed addresses, once allocated.
    pub fn relayed_addresses(&self) -> &[SocketAddr] {
        &self.relayed
    }

    /// The relayed address of `peer`'s family, if the allocation has one.
    pub fn relayed_address_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.relayed
            .iter()
            .copied()
            .find(|r| r.is_ipv4() == peer.is_ipv4())
    }

    /// The client's server-reflexive address (XOR-MAPPED-ADDRESS), once
    /// allocated.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The lifetime the server last granted.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The RESERVATION-TOKEN the server returned for
    /// `EVEN-PORT` with the R bit (RFC 8656 §7.2), to use in another
    /// client's [`PortRequest::ReservationToken`].
    pub fn reservation_token(&self) -> Option<u64> {
        self.reservation_token
    }

    /// The channel number bound (or being bound) for `peer`; `None` when
    /// none is, even if the peer has a number from a failed bind (see
    /// [`Event::ChannelFailed`]).
    pub fn channel_for(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .get(&peer)
            .filter(|c| c.bound || c.in_flight)
            .map(|c| c.number)
    }

    /// Whether a permission for `peer`'s IP is installed (confirmed by the
    /// server).
    pub fn has_permission(&self, peer: SocketAddr) -> bool {
        self.permissions
            .get(&peer.ip())
            .is_some_and(|p| p.installed)
    }

    /// Counters of ignored messages.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Ask for permissions for `peers` (one CreatePermission per 32 peers,
    /// RFC 8656 §9.1). Peers whose IP already has a permission, installed or
    /// requested, are skipped; the client refreshes permissions itself.
    /// [`Event::PermissionCreated`] or [`Event::PermissionFailed`] follows.
    pub fn create_permissions(
        &mut self,
        peers: &[SocketAddr],
        now: Instant,
    ) -> Result<(), UsageError> {
        self.check_allocated()?;
        if let Some(p) = peers
            .iter()
            .find(|p| self.relayed_address_for(**p).is_none())
        {
            return Err(UsageError::FamilyNotRelayed(*p));
        }
        let mut new = Vec::new();
        for &peer in peers {
            if self.permissions.contains_key(&peer.ip()) {
                continue;
            }
            self.permissions.insert(
                peer.ip(),
                Permission {
                    peer,
                    installed: false,
                    in_flight: true,
                    refresh_at: now,
                },
            );
            new.push(peer);
        }
        for chunk in new.chunks(MAX_PEERS_PER_REQUEST) {
            self.start(Op::CreatePermission(chunk.to_vec()), 0, now);
        }
        Ok(())
    }

    /// Ask for a permission for one peer; see [`Client::create_permissions`].
    pub fn create_permission(&mut self, peer: SocketAddr, now: Instant) -> Result<(), UsageError> {
        self.create_permissions(&[peer], now)
    }

    /// Bind a channel to `peer` (RFC 8656 §12) and return its number; the
    /// number already bound (or being bound) to `peer` if there is one. A
    /// peer whose last bind got no answer is bound again with the number it
    /// had (RFC 8656 §12: one number per peer). A ChannelBind also installs
    /// a permission for the peer's IP. [`Event::ChannelBound`] or
    /// [`Event::ChannelFailed`] follows.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) -> Result<u16, UsageError> {
        self.check_allocated()?;
        if self.relayed_address_for(peer).is_none() {
            return Err(UsageError::FamilyNotRelayed(peer));
        }
        let number = match self.channels.get_mut(&peer) {
            Some(c) if c.bound || c.in_flight => return Ok(c.number),
            Some(Channel {
                refused: Some(error),
                ..
            }) => {
                return Err(UsageError::ChannelRefused {
                    peer,
                    error: error.clone(),
                })
            }
            Some(c) => {
                c.in_flight = true;
                c.number
            }
            None => {
                let number = self.free_channel().ok_or(UsageError::ChannelsExhausted)?;
                self.channels.insert(
                    peer,
                    Channel {
                        number,
                        bound: false,
                        in_flight: true,
                        refused: None,
                        refresh_at: now,
                    },
                );
                self.channel_peers.insert(number, peer);
                number
            }
        };
        self.start(
            Op::ChannelBind {
                channel: number,
                peer,
            },
            0,
            now,
        );
        Ok(number)
    }

    fn free_channel(&mut self) -> Option<u16> {
        let span = usize::from(CHANNEL_MAX - CHANNEL_MIN) + 1;
        if self.channel_peers.len() >= span {
            return None;
        }
        loop {
            let n = self.next_channel;
            self.next_channel = if n == CHANNEL_MAX { CHANNEL_MIN } else { n + 1 };
            if !self.channel_peers.contains_key(&n) {
                return Some(n);
            }
        }
    }

    /// Write `data` for `peer` into `out`, ready to send to the server:
    /// ChannelData when a channel to `peer` is bound (padded on TCP/TLS,
    /// RFC 8656 §12.5), otherwise a Send indication (RFC 8656 §11.1).
    /// Returns the message length. Needs a permission (or a channel)
    /// requested for the peer: the relay drops data for peers without one.
    pub fn send_to(
        &self,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, UsageError> {
        self.check_allocated()?;
        if let Some(c) = self.channels.get(&peer).filter(|c| c.bound) {
            return channel_data::encode(out, c.number, data, self.cfg.transport.is_stream())
                .map_err(|e| match e {
                    _ if data.len() > usize::from(u16::MAX) => UsageError::DataTooLarge(data.len()),
                    ChannelDataError::BufferTooSmall => UsageError::BufferTooSmall,
                    _ => UsageError::DataTooLarge(data.len()),
                });
        }
        let channel_asked = self
            .channels
            .get(&peer)
            .is_some_and(|c| c.refused.is_none());
        if !self.permissions.contains_key(&peer.ip()) && !channel_asked {
            return Err(UsageError::NoPermission(peer));
        }
        send_indication(out, peer, data)
    }

    /// [`Client::send_to`] into a new buffer, queued as a [`Transmit`]
    /// (convenient off the hot path).
    pub fn queue_send(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), UsageError> {
        let mut buf = vec![0u8; data.len() + 64];
        let n = self.send_to(peer, data, &mut buf)?;
        buf.truncate(n);
        self.transmits.push_back(Transmit {
            to: self.cfg.server,
            payload: buf,
        });
        Ok(())
    }

    /// Ask the relay to open a TCP connection to `peer` from the relayed
    /// address (RFC 6062 §4.3; a TCP allocation only). [`Event::Connected`]
    /// or [`Event::ConnectFailed`] follows.
    pub fn connect(&mut self, peer: SocketAddr, now: Instant) -> Result<(), UsageError> {
        self.check_tcp()?;
        if self.relayed_address_for(peer).is_none() {
            return Err(UsageError::FamilyNotRelayed(peer));
        }
        self.start(Op::Connect(peer), 0, now);
        Ok(())
    }

    /// The ConnectionBind for a new data connection to the server (RFC 6062
    /// §4.4), for peer connection `connection_id` ([`Event::Connected`],
    /// [`Event::ConnectionAttempt`]), signed with this allocation's
    /// credentials.
    pub fn connection_bind(&self, connection_id: u32) -> Result<ConnectionBind, UsageError> {
        self.check_tcp()?;
        let auth = self.auth.clone().ok_or(UsageError::NotAllocated)?;
        ConnectionBind::new(self.cfg.clone(), auth, connection_id)
            .map_err(|_| UsageError::BufferTooSmall)
    }

    fn check_tcp(&self) -> Result<(), UsageError> {
        self.check_allocated()?;
        if self.cfg.relayed != RelayedTransport::Tcp {
            return Err(UsageError::NotTcpAllocation);
        }
        Ok(())
    }

    /// Refresh the allocation at once instead of at its scheduled time: a
    /// probe of the server when the path through it went silent. The
    /// answer is an [`Event::Refreshed`], or an [`Event::Failed`] when the
    /// server is gone (no answer) or lost the allocation (437). Does
    /// nothing unless allocated, or while a refresh is in flight.
    pub fn refresh_now(&mut self, now: Instant) {
        if self.state == State::Allocated && !self.refresh_in_flight() {
            self.refresh_at = Some(now);
            self.handle_timeout(now);
        }
    }

    /// Delete the allocation (Refresh with LIFETIME 0, RFC 8656 §8).
    /// [`Event::Closed`] follows when the server confirms (or immediately
    /// when nothing was allocated yet). Permissions and channels stop being
    /// refreshed.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Allocated => {
                self.drop_all_but_allocation();
                // A Refresh in flight would only race the deletion.
                self.pending.clear();
                self.state = State::Closing;
                self.refresh_at = None;
                self.start(Op::Refresh(Some(0)), 0, now);
            }
            State::Allocating => {
                self.pending.clear();
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
            }
            State::Closing | State::Closed | State::Failed => {}
        }
    }

    /// The next message to send to the server (control messages and
    /// [`Client::queue_send`] data).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.pending.iter().filter_map(|p| p.timer.poll_timeout());
        let refresh = self.refresh_at.filter(|_| !self.refresh_in_flight());
        let perms = self
            .permissions
            .values()
            .filter(|p| p.installed && !p.in_flight)
            .map(|p| p.refresh_at);
        let chans = self
            .channels
            .values()
            .filter(|c| c.bound && !c.in_flight)
            .map(|c| c.refresh_at);
        timers.chain(refresh).chain(perms).chain(chans).min()
    }

    /// Advance the clock: retransmit, give up on unanswered requests, and
    /// refresh the allocation, permissions and channels that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for p in &mut self.pending {
            match p.timer.handle_timeout(now) {
                transaction::Action::Retransmit => self.transmits.push_back(Transmit {
                    to: self.cfg.server,
                    payload: p.bytes.clone(),
                }),
                transaction::Action::Wait => {}
                transaction::Action::TimedOut { waited, sent } => {
                    timed_out.push((p.transaction_id, waited, sent))
                }
            }
        }
        for (tid, waited, attempts) in timed_out {
            if let Some(i) = self.pending.iter().position(|p| p.transaction_id == tid) {
                let p = self.pending.swap_remove(i);
                self.fail(p.op, ClientError::Timeout { waited, attempts });
            }
        }
        if self.state != State::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|t| now >= t) && !self.refresh_in_flight() {
            let lifetime = self.requested_lifetime();
            self.start(Op::Refresh(lifetime), 0, now);
        }
        let mut due: Vec<SocketAddr> = self
            .permissions
            .values_mut()
            .filter(|p| p.installed && !p.in_flight && now >= p.refresh_at)
            .map(|p| {
                p.in_flight = true;
                p.peer
            })
            .collect();
        due.sort();
        for chunk in due.chunks(MAX_PEERS_PER_REQUEST) {
            self.start(Op::CreatePermission(chunk.to_vec()), 0, now);
        }
        let mut due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter_mut()
            .filter(|(_, c)| c.bound && !c.in_flight && now >= c.refresh_at)
            .map(|(peer, c)| {
                c.in_flight = true;
                (*peer, c.number)
            })
            .collect();
        due.sort();
        for (peer, channel) in due {
            self.start(Op::ChannelBind { channel, peer }, 0, now);
        }
    }

    /// Take one message from the server (a datagram, or one frame from a
    /// stream): responses advance the state machine, peer data becomes an
    /// [`Event::Data`]. The driver must only feed what comes from the
    /// server.
    pub fn handle_input(&mut self, msg: &[u8], now: Instant) {
        if let Some(d) = self.recv(msg, now) {
            self.events.push_back(Event::Data {
                peer: d.peer,
                data: d.data.to_vec(),
            });
        }
    }

    /// Like [`Client::handle_input`], but peer data is returned borrowed
    /// from `msg` instead of queued as an event: the allocation-free
    /// receive path.
    pub fn recv<'a>(&mut self, msg: &'a [u8], now: Instant) -> Option<PeerData<'a>> {
        let first = *msg.first()?;
        if first >> 6 == 0b01 {
            // RFC 8656 §12.5: ChannelData; UDP may carry padding after it.
            let Ok(cd) = channel_data::decode(msg) else {
                self.stats.malformed += 1;
                return None;
            };
            let Some(&peer) = self.channel_peers.get(&cd.channel) else {
                self.stats.unknown_channel += 1;
                return None;
            };
            return Some(PeerData {
                peer,
                data: cd.data,
                channel: Some(cd.channel),
            });
        }
        let h = match raw::parse_datagram(msg) {
            Ok(h) => h,
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        match (h.class(), h.method()) {
            (Class::Indication, method::DATA) => match wire::parse_data_indication(msg, &h) {
                Some((peer, data)) => Some(PeerData {
                    peer,
                    data,
                    channel: None,
                }),
                None => {
                    self.stats.malformed += 1;
                    None
                }
            },
            (Class::Indication, method::CONNECTION_ATTEMPT) => {
                match wire::parse_connection_attempt(msg, &h) {
                    Some((peer, connection_id)) => {
                        self.events.push_back(Event::ConnectionAttempt {
                            peer,
                            connection_id,
                        })
                    }
                    None => self.stats.malformed += 1,
                }
                None
            }
            (Class::Success | Class::Error, _) => {
                self.on_response(msg, &h, now);
                None
            }
            _ => {
                self.stats.stray += 1;
                None
            }
        }
    }

    fn check_allocated(&self) -> Result<(), UsageError> {
        if self.state == State::Allocated {
            Ok(())
        } else {
            Err(UsageError::NotAllocated)
        }
    }

    fn refresh_in_flight(&self) -> bool {
        self.pending.iter().any(|p| matches!(p.op, Op::Refresh(_)))
    }

    fn requested_lifetime(&self) -> Option<u32> {
        self.cfg
            .lifetime
            .map(|l| l.as_secs().min(u64::from(u32::MAX)) as u32)
            // LIFETIME 0 deletes the allocation (RFC 8656 §8): never in a
            // periodic refresh.
            .filter(|l| *l > 0)
    }

    /// Send a new request for `op` with a fresh transaction ID.
    fn start(&mut self, op: Op, stale: u8, now: Instant) {
        self.send_request(op, stale, false, now);
    }

    fn send_request(&mut self, op: Op, stale: u8, reauthenticated: bool, now: Instant) {
        let transaction_id = new_transaction_id();
        let bytes = match wire::build_request(&op, &transaction_id, &self.cfg, self.auth.as_ref()) {
            Ok(b) => b,
            Err(e) => return self.fail(op, e),
        };
        self.transmits.push_back(Transmit {
            to: self.cfg.server,
            payload: bytes.clone(),
        });
        self.pending.push(Pending {
            transaction_id,
            op,
            bytes,
            timer: Transaction::new(now, self.cfg.timer()),
            stale,
            authenticated: self.auth.is_some(),
            reauthenticated,
        });
    }

    fn on_response(&mut self, msg: &[u8], h: &Header, now: Instant) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.transaction_id == h.transaction_id && p.op.method() == h.method())
        else {
            self.stats.stray += 1;
            return;
        };
        let resp = match wire::parse_response(msg, h) {
            Ok(r) => r,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let code = resp.code;
        if let (Some(auth), true) = (&self.auth, self.pending[i].authenticated) {
            // RFC 8489 §9.2.5: once authenticated, check the integrity of
            // every response but 400, 401 and 438 (which the server cannot
            // or need not sign). Error responses that carry no integrity at
            // all are taken as they are: servers (coturn among them) leave
            // it off some errors, and the random transaction ID already
            // keeps off-path attackers from forging them.
            // A 300 must be signed (RFC 8489 §10: the server authenticates
            // it), or anyone who saw the transaction ID could send the
            // client to a relay of their choosing.
            let exempt = matches!(code, Some(400 | 401 | 438));
            let must = code.is_none() || code == Some(300) || (!exempt && resp.has_integrity);
            if must && integrity::verify(msg, h, auth.key.as_bytes()).is_err() {
                self.stats.forged += 1;
                return;
            }
        }
        let mut p = self.pending.swap_remove(i);
        p.timer.on_response(now);
        match code {
            None => self.on_success(p.op, resp, now),
            Some(401) if !p.authenticated => match self.learn_auth(&resp) {
                Ok(()) => self.start(p.op, p.stale, now),
                Err(e) => self.fail(p.op, e),
            },
            // RFC 8489 §9.2.5: a client SHOULD retry a 401 with the NONCE
            // it carries. The Allocate proved the credentials, so a 401 to
            // a later request says the server no longer takes our nonce,
            // typically because our address changed (natkit's relay binds
            // nonces to the client's address): the retry then gets the
            // answer that fits, e.g. 437 for an allocation left behind on
            // the old 5-tuple, instead of a misleading "wrong
            // credentials". Only once: a second 401 means the credentials
            // themselves are refused now (REST credentials expired).
            Some(401) if !matches!(p.op, Op::Allocate) && !p.reauthenticated => {
                match self.update_nonce(&resp) {
                    Ok(()) => self.send_request(p.op, p.stale, true, now),
                    Err(e) => self.fail(p.op, e),
                }
            }
            Some(401) => self.fail(p.op, ClientError::WrongCredentials),
            Some(300) if matches!(p.op, Op::Allocate) && self.state == State::Allocating => {
                self.redirect(&resp, now)
            }
            Some(438) => {
                let attempts = p.stale.saturating_add(1);
                if attempts > self.cfg.max_stale_nonce_retries {
                    return self.fail(p.op, ClientError::StaleNonceLoop { attempts });
                }
                match self.update_nonce(&resp) {
                    Ok(()) => self.start(p.op, attempts, now),
                    Err(e) => self.fail(p.op, e),
                }
            }
            // RFC 8656 §12.2: a 400 to a ChannelBind says the peer or the
            // number is bound otherwise on the server.
            Some(400) if matches!(p.op, Op::ChannelBind { .. }) => {
                self.fail(p.op, ClientError::ChannelConflict)
            }
            Some(c) => self.fail(p.op, ClientError::from_code(c)),
        }
    }

    /// RFC 8489 §10, RFC 8656 §7.2: allocate on the alternate instead,
    /// once. Its realm and nonces are its own: authentication starts over.
    fn redirect(&mut self, resp: &wire::Response, now: Instant) {
        let Some(to) = resp.alternate else {
            return self.fail(
                Op::Allocate,
                ClientError::Malformed("300 Try Alternate without ALTERNATE-SERVER"),
            );
        };
        let from = self.cfg.server;
        if let Some(first) = self.redirected_from {
            return self.fail(
                Op::Allocate,
                ClientError::RedirectLoop {
                    first,
                    second: from,
                },
            );
        }
        // RFC 8489 §14.15: the alternate is of the request's family; the
        // client's socket could not reach another one anyway.
        if to.is_ipv4() != from.is_ipv4() || to == from {
            return self.fail(
                Op::Allocate,
                ClientError::Malformed("300 Try Alternate names this server or another family"),
            );
        }
        self.redirected_from = Some(from);
        // Retransmissions for the old server are moot.
        self.transmits.retain(|t| t.to != from);
        self.alternate_domain = resp.alternate_domain.clone();
        self.cfg.server = to;
        self.auth = None;
        self.events.push_back(Event::Redirected {
            from,
            to,
            domain: resp.alternate_domain.clone(),
        });
        self.start(Op::Allocate, 0, now);
    }

    /// Take REALM, NONCE and PASSWORD-ALGORITHMS from a 401 and derive the
    /// key (RFC 8489 §9.2.3).
    fn learn_auth(&mut self, resp: &wire::Response) -> Result<(), ClientError> {
        let (Some(realm), Some(nonce)) = (&resp.realm, &resp.nonce) else {
            return Err(ClientError::Malformed("401 without REALM and NONCE"));
        };
        // RFC 8489 §9.2.4: pick from the server's list; prefer SHA-256.
        let algorithm = match &resp.algorithms {
            None => PasswordAlgorithm::Md5,
            Some(v) => {
                let offered = wire::password_algorithms(v);
                if offered.contains(&PasswordAlgorithm::Sha256) {
                    PasswordAlgorithm::Sha256
                } else if offered.contains(&PasswordAlgorithm::Md5) {
                    PasswordAlgorithm::Md5
                } else {
                    return Err(ClientError::Malformed(
                        "PASSWORD-ALGORITHMS offers no supported algorithm",
                    ));
                }
            }
        };
        let c = &self.cfg.credentials;
        self.auth = Some(Auth {
            realm: realm.clone(),
            nonce: nonce.clone(),
            algorithm,
            algorithms: resp.algorithms.clone(),
            key: LongTermKey::derive(algorithm, &c.username, realm, &c.password),
        });
        Ok(())
    }

    /// RFC 8489 §9.2.5: a 438 carries a new NONCE (and REALM) to retry with.
    fn update_nonce(&mut self, resp: &wire::Response) -> Result<(), ClientError> {
        let Some(nonce) = &resp.nonce else {
            return Err(ClientError::Malformed("438 without NONCE"));
        };
        let Some(auth) = &mut self.auth else {
            // A 438 before any 401: learn everything from it.
            return self.learn_auth(resp);
        };
        auth.nonce = nonce.clone();
        if let Some(realm) = resp.realm.as_ref().filter(|r| **r != auth.realm) {
            let c = &self.cfg.credentials;
            auth.key = LongTermKey::derive(auth.algorithm, &c.username, realm, &c.password);
            auth.realm = realm.clone();
        }
        Ok(())
    }

    fn on_success(&mut self, op: Op, resp: wire::Response, now: Instant) {
        match op {
            Op::Allocate => {
                if self.state != State::Allocating {
                    return;
                }
                let (Some(mapped), Some(lifetime)) = (resp.mapped, resp.lifetime) else {
                    return self.fail(
                        Op::Allocate,
                        ClientError::Malformed(
                            "Allocate success without XOR-MAPPED-ADDRESS or LIFETIME",
                        ),
                    );
                };
                if resp.relayed.is_empty() {
                    return self.fail(
                        Op::Allocate,
                        ClientError::Malformed("Allocate success without XOR-RELAYED-ADDRESS"),
                    );
                }
                let lifetime = Duration::from_secs(lifetime.into());
                self.state = State::Allocated;
                self.relayed = resp.relayed.clone();
                self.mapped = Some(mapped);
                self.reservation_token = resp.reservation_token;
                self.set_lifetime(lifetime, now);
                self.events.push_back(Event::Allocated {
                    relayed: resp.relayed,
                    mapped,
                    lifetime,
                });
            }
            Op::Refresh(Some(0)) => {
                if self.state == State::Closing {
                    self.state = State::Closed;
                    self.events.push_back(Event::Closed);
                }
            }
            Op::Refresh(requested) => {
                if self.state != State::Allocated {
                    return;
                }
                // RFC 8656 §8: LIFETIME is in the success response; if a
                // server leaves it out, assume what was asked for (or the
                // default 600 s).
                let secs = resp.lifetime.or(requested).unwrap_or(600);
                let lifetime = Duration::from_secs(secs.into());
                self.set_lifetime(lifetime, now);
                self.events.push_back(Event::Refreshed { lifetime });
            }
            Op::CreatePermission(peers) => {
                let mut fresh = Vec::new();
                for peer in peers {
                    if let Some(p) = self.permissions.get_mut(&peer.ip()) {
                        if !p.installed {
                            fresh.push(peer);
                        }
                        p.installed = true;
                        p.in_flight = false;
                        p.refresh_at = now + self.cfg.permission_refresh;
                    }
                }
                if !fresh.is_empty() {
                    self.events
                        .push_back(Event::PermissionCreated { peers: fresh });
                }
            }
            Op::Connect(peer) => match resp.connection_id {
                Some(connection_id) => self.events.push_back(Event::Connected {
                    peer,
                    connection_id,
                }),
                None => self.fail(
                    Op::Connect(peer),
                    ClientError::Malformed("Connect success without CONNECTION-ID"),
                ),
            },
            // Sent on data connections by `ConnectionBind`, never here.
            Op::ConnectionBind(_) => {}
            Op::ChannelBind { channel, peer } => {
                let Some(c) = self.channels.get_mut(&peer).filter(|c| c.number == channel) else {
                    return;
                };
                let first = !c.bound;
                c.bound = true;
                c.in_flight = false;
                c.refresh_at = now + self.cfg.channel_refresh;
                // RFC 8656 §11.2: a successful ChannelBind installs or
                // refreshes the permission for the peer's IP too.
                let refresh_at = now + self.cfg.permission_refresh;
                let p = self.permissions.entry(peer.ip()).or_insert(Permission {
                    peer,
                    installed: true,
                    in_flight: false,
                    refresh_at,
                });
                p.installed = true;
                if !p.in_flight {
                    p.refresh_at = refresh_at;
                }
                if first {
                    self.events.push_back(Event::ChannelBound { peer, channel });
                }
            }
        }
    }

    fn set_lifetime(&mut self, lifetime: Duration, now: Instant) {
        self.lifetime = lifetime;
        let pct = u32::from(self.cfg.refresh_percent.clamp(1, 100));
        // At least a second: a server granting a lifetime of 0 or 1 s must
        // not make the client refresh in a tight loop.
        self.refresh_at = Some(now + (lifetime * pct / 100).max(Duration::from_secs(1)));
    }

    /// An operation failed: what that means depends on the operation.
    fn fail(&mut self, op: Op, error: ClientError) {
        match op {
            Op::Allocate | Op::Refresh(_) => {
                let closing = self.state == State::Closing;
                if matches!(self.state, State::Closed | State::Failed) {
                    return;
                }
                self.drop_all_but_allocation();
                self.pending.clear();
                self.refresh_at = None;
                // RFC 8656 §8: a 437 to the deleting Refresh means the
                // allocation is already gone, which is what was wanted.
                if closing && error == ClientError::AllocationMismatch {
                    self.state = State::Closed;
                    self.events.push_back(Event::Closed);
                } else {
                    self.state = State::Failed;
                    self.events.push_back(Event::Failed(error));
                }
            }
            Op::CreatePermission(peers) => {
                for peer in &peers {
                    self.permissions.remove(&peer.ip());
                }
                self.events
                    .push_back(Event::PermissionFailed { peers, error });
            }
            Op::Connect(peer) => self.events.push_back(Event::ConnectFailed { peer, error }),
            Op::ConnectionBind(_) => {}
            Op::ChannelBind { channel, peer } => {
                // The peer keeps its number (see `Channel`): after a timeout
                // the server may hold the binding and relay on it. An error
                // answer refuses the bind; RFC 8656 §12.3 recommends a new
                // allocation when a 400 shows client and server out of sync.
                // That is left to the application: the allocation and its
                // relayed candidate keep working with Send and Data
                // indications, and this client never asks for a conflicting
                // binding itself, so it does not send the same bind again.
                if let Some(c) = self.channels.get_mut(&peer).filter(|c| c.number == channel) {
                    c.bound = false;
                    c.in_flight = false;
                    if !matches!(error, ClientError::Timeout { .. }) {
                        c.refused = Some(error.clone());
                    }
                }
                self.events.push_back(Event::ChannelFailed {
                    peer,
                    channel,
                    error,
                });
            }
        }
    }

    /// Forget permissions and channels and their pending requests.
    fn drop_all_but_allocation(&mut self) {
        self.permissions.clear();
        self.channels.clear();
        self.channel_peers.clear();
        self.pending
            .retain(|p| matches!(p.op, Op::Allocate | Op::Refresh(_)));
    }
}
