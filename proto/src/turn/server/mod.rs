//! The relay's protocol core (RFC 8656, RFC 6156), sans-IO.
//!
//! One [`Server`] owns the allocations of one shard (one worker thread of
//! the relay). The driver hands it client messages and peer datagrams with
//! the current time and gets back what to send where. What needs the
//! outside world (binding relay sockets, the peer policy, quotas shared
//! between shards, the wall clock for REST expiry) comes through [`Env`],
//! which tests fake.
//!
//! The data path never allocates: ChannelData and Send indications are
//! relayed as slices of the received buffer, and peer data is framed by
//! [`Framing::write`] straight into the driver's send buffer.
//!
//! TCP allocations (RFC 6062, [`tcp`]): the core keeps the CONNECTION-ID
//! table and decides; the driver connects, accepts and splices
//! ([`ClientAction::Connect`], [`Server::connect_result`],
//! [`Server::peer_connected`], [`ClientAction::Bind`]).

mod allocation;
mod auth;
pub mod tcp;
mod usage;

pub use allocation::{Allocation, Bucket, Channel, ClientKey, RelayId, Via};
pub use auth::{AuthError, Authenticator, Credentials, UnauthLimiter, OFFERED_ALGORITHMS};
pub use tcp::{ConnectionId, TcpEvent};
pub use usage::{EndReason, Traffic, Usage, UsageRecord, MAX_TRACKED_PEERS};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::channel_data;
use crate::demux::{self, PacketKind};
use crate::integrity::IntegrityKind;
use crate::nonce::{NonceForm, NonceKey};
use crate::raw::{self, attr, method, Class};
use crate::turn::request::{
    self, TurnRequest, FAMILY_IPV4, FAMILY_IPV6, TRANSPORT_TCP, TRANSPORT_UDP,
};
use crate::writer::{BufferTooSmall, Writer};

use auth::Verified;

/// Most bytes [`Framing::write`] adds around peer data: a Data indication
/// to an IPv6 peer takes 20 (header) + 24 (XOR-PEER-ADDRESS) + 4 (DATA
/// header) in front and up to 3 bytes of padding after.
pub const MAX_FRAMING: usize = 48 + 3;

/// Most bytes a 401 or 438 may be per byte of the request it answers:
/// anyone can draw one with a spoofed source address. coturn's best is
/// ×3.6 (docs/PERFORMANCE.md); with a realm of up to 11 characters no
/// answer of ours exceeds ×3.2.
pub const AMPLIFICATION_LIMIT: usize = 3;

/// RFC 8656 §9: permissions last 300 seconds.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last 600 seconds.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// Relay settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    /// How long a nonce stays fresh before 438.
    pub nonce_ttl: Duration,
    /// RFC 8656 §7.2: default and maximum allocation lifetimes.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Bytes per second per allocation, each direction counted; 0 = no limit.
    pub bandwidth: u64,
    /// Unauthenticated answers per second per source IP (burst 4x; see
    /// [`UnauthLimiter`]); 0 = no limit. The driver builds the limiter from
    /// it and shares it between shards.
    pub unauth_rate: u32,
    /// Refuse new allocations (drain).
    pub draining: bool,
    /// RFC 8489 §10, RFC 8656 §7.2: the relay to send Allocates to instead
    /// of answering 508 while draining, by family of the client's address
    /// (index 0 IPv4, 1 IPv6: RFC 8489 §14.15 wants the alternate in the
    /// family the request came from). `None`: 508 as before.
    pub alternate: [Option<SocketAddr>; 2],
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16) sent with the alternate: the name
    /// a TLS client checks the alternate's certificate against.
    pub alternate_domain: Option<String>,
    /// Also redirect when full (max-allocations reached or no relay port
    /// left), not only when draining.
    pub alternate_when_full: bool,
    /// Queue a [`UsageRecord`] when an allocation ends
    /// ([`Server::take_usage`]).
    pub usage_records: bool,
    /// With `usage_records`, also one every this long while it lives.
    pub usage_interval: Option<Duration>,
    /// RFC 6062: most peer connections per TCP allocation; 0 refuses TCP
    /// allocations (442).
    pub max_peer_connections: usize,
    /// This shard's index and the number of shards: CONNECTION-IDs name
    /// their shard ([`tcp::shard_of`]).
    pub shard: (u32, u32),
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "natkit".into(),
            nonce_ttl: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_permissions: 32,
            max_channels: 32,
            bandwidth: 0,
            unauth_rate: 20,
            draining: false,
            alternate: [None, None],
            alternate_domain: None,
            alternate_when_full: false,
            usage_records: false,
            usage_interval: None,
            max_peer_connections: 16,
            shard: (0, 1),
        }
    }
}

/// What a relay socket request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRequest {
    /// 0 for IPv4, 1 for IPv6.
    pub family: usize,
    /// EVEN-PORT: an even port; with `reserve`, also hold the next one.
    pub even_port: bool,
    pub reserve: bool,
    /// RESERVATION-TOKEN from an earlier EVEN-PORT allocation.
    pub token: Option<u64>,
    pub dont_fragment: bool,
    /// A TCP relayed address (RFC 6062 §5.1): a listening socket.
    pub tcp: bool,
}

/// A relay socket the driver opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedRelay {
    /// The socket's number: small and reused (the core indexes a table
    /// with it).
    pub id: RelayId,
    /// The relayed transport address (what XOR-RELAYED-ADDRESS says: the
    /// external address when the relay is behind a 1:1 NAT).
    pub addr: SocketAddr,
    /// Token for the reserved next port, when `reserve` was asked.
    pub token: Option<u64>,
}

/// Why no relay socket could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayError {
    /// No relay address of that family (440).
    Family,
    /// Port range exhausted (508).
    NoPorts,
    /// Unknown or expired reservation token (508).
    BadToken,
}

/// Why a quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    PerUser,
    Total,
}

/// The outside world, as the core needs it.
pub trait Env {
    /// Wall clock, for REST credential expiry and nonces.
    fn system_now(&self) -> SystemTime;
    /// Open a relay socket.
    fn open_relay(&mut self, req: RelayRequest) -> Result<OpenedRelay, RelayError>;
    /// Close a relay socket.
    fn close_relay(&mut self, id: RelayId);
    /// Whether `peer` may be relayed to: the deny and allow lists, with the
    /// relayed addresses of this relay's allocations always allowed.
    fn peer_allowed(&self, peer: SocketAddr) -> bool;
    /// Whether the peer lists allow some port of `ip`. Permissions are per
    /// IP (RFC 8656 §9), so CreatePermission asks this (or
    /// [`Env::peer_allowed`] for the exact address, for the relay-to-relay
    /// rule); sends and channels are checked per address.
    fn peer_ip_allowed(&self, ip: IpAddr) -> bool;
    /// Whether `ip` is one this relay relays from: permissions for it come
    /// from the relay-to-relay rule and survive a reload.
    fn is_relay_ip(&self, ip: IpAddr) -> bool;
    /// Count one more allocation for `user`, within the quotas.
    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError>;
    /// Give back an allocation slot.
    fn release_allocation(&mut self, user: &str);
    /// Close peer connection `id` of a TCP allocation (RFC 6062), and the
    /// client data connection bound to it, if any.
    fn close_connection(&mut self, id: ConnectionId) {
        let _ = id;
    }
    /// Stream (TCP/TLS) client `client` now holds an allocation (`true`)
    /// or no longer does (`false`). While it holds one the allocation's
    /// lifetime governs the connection, not the driver's idle timeout: a
    /// client may send nothing but a Refresh every few minutes (RFC 8656
    /// §7: lifetime 600 s by default, refreshed before it runs out), and
    /// closing its connection would end the allocation (§3.1) and its
    /// TCP peer connections (RFC 6062).
    fn stream_held(&mut self, client: &ClientKey, held: bool) {
        let _ = (client, held);
    }
}

/// Why a datagram was dropped, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Not STUN or ChannelData, or malformed.
    Malformed,
    /// ChannelData or Send indication without an allocation.
    NoAllocation,
    /// ChannelData on an unbound channel.
    NoChannel,
    /// No permission for the peer (RFC 8656 §9).
    NoPermission,
    /// Peer on the deny list.
    DeniedPeer,
    /// Bandwidth quota.
    Quota,
    /// Request of a source over its unauthenticated budget, dropped
    /// unanswered ([`UnauthLimiter`]).
    RateLimited,
    /// A response or indication that needs no answer.
    Ignored,
}

impl Drop {
    /// Metric labels, in [`Drop::index`] order.
    pub const LABELS: [&'static str; 8] = [
        "malformed",
        "no_allocation",
        "no_channel",
        "no_permission",
        "denied_peer",
        "quota",
        "rate_limited",
        "ignored",
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an authenticated Allocate was refused for want of room: the four
/// call for different actions, so they are counted apart (RFC 8656 §7.2:
/// 486 for the user's quota, 508 for the server's capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 486 Allocation Quota Reached: the user holds `user-quota` already.
    UserQuota,
    /// 508 Insufficient Capacity: the relay holds `max-allocations`.
    MaxAllocations,
    /// 508: no relay port free in the range.
    RelayPorts,
    /// 508: draining (SIGTERM), no new allocations.
    Draining,
}

impl Refusal {
    /// Metric labels, in [`Refusal::index`] order.
    pub const LABELS: [&'static str; 4] =
        ["user_quota", "max_allocations", "relay_ports", "draining"];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The error code the client gets.
    pub fn code(self) -> u16 {
        match self {
            Refusal::UserQuota => 486,
            _ => 508,
        }
    }
}

/// What to do with a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Send `out[..len]` back to the client.
    Reply(usize),
    /// Send `msg[data]` to `peer` from relay socket `relay`.
    Relay {
        relay: RelayId,
        peer: SocketAddr,
        data: Range<usize>,
    },
    /// Nothing to send.
    Drop(Drop),
    /// RFC 6062 §5.2: open a TCP connection from relay `relay` (a TCP
    /// relayed address) to `peer`, within [`tcp::CONNECT_TIMEOUT`], and
    /// tell [`Server::connect_result`] how it went: that answers the
    /// client.
    Connect {
        id: ConnectionId,
        relay: RelayId,
        peer: SocketAddr,
    },
    /// RFC 6062 §5.4: send `out[..reply]` (the ConnectionBind success) on
    /// this client data connection, then splice it with peer connection
    /// `id`: from now on it carries the peer's bytes as they are.
    Bind { id: ConnectionId, reply: usize },
}

/// Where a peer datagram goes and how it is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub client: ClientKey,
    pub framing: Framing,
}

/// How peer data is framed for the client (RFC 8656 §10.3, §12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// ChannelData on this channel; padded on streams.
    Channel { number: u16, stream: bool },
    /// A Data indication from this peer.
    Indication { peer: SocketAddr },
}

impl Framing {
    /// Write the framed message into `out`; `None` if it does not fit.
    #[inline]
    pub fn write(&self, out: &mut [u8], data: &[u8]) -> Option<usize> {
        match *self {
            Framing::Channel { number, stream } => {
                channel_data::encode(out, number, data, stream).ok()
            }
            Framing::Indication { peer } => {
                let tid: [u8; 12] = rand::random();
                let mut w = Writer::new(out, method::DATA, Class::Indication, &tid).ok()?;
                w.xor_address(attr::XOR_PEER_ADDRESS, peer).ok()?;
                w.bytes(attr::DATA, data).ok()?;
                Some(w.finish())
            }
        }
    }
}

/// Counters the driver turns into metrics. Plain integers: the shard is
/// single-threaded; the driver reads and resets them once per batch.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Allocate outcomes: success, then error codes.
    pub allocations: u64,
    pub allocate_errors: HashMap<u16, u64>,
    pub auth_failures: u64,
    pub permissions: u64,
    pub channels: u64,
    pub drops: [u64; 8],
    /// Packets and bytes client → peer, peer → client.
    pub to_peer: (u64, u64),
    pub to_client: (u64, u64),
    /// Allocations that ended (expired, deleted, or their client went away).
    pub allocations_closed: u64,
    /// Authenticated Allocates refused for want of room, by [`Refusal`].
    pub refused: [u64; 4],
    /// Allocations that ended, by [`EndReason`].
    pub ended: [u64; 6],
    /// Peer connections of TCP allocations, by [`TcpEvent`].
    pub tcp: [u64; 6],
}

/// One shard's allocations.
pub struct Server {
    cfg: Config,
    creds: Arc<Credentials>,
    /// The credentials before the last reload: their nonce keys still
    /// verify, so a SIGHUP does not turn live nonces into 401s.
    previous_creds: Option<Arc<Credentials>>,
    auth: Authenticator,
    limiter: Arc<UnauthLimiter>,
    allocations: Vec<Option<Allocation>>,
    free: Vec<u32>,
    by_client: HashMap<ClientKey, u32>,
    /// Allocation by relay socket, indexed by [`RelayId`]: the driver
    /// numbers its relay sockets densely, so peer data finds its allocation
    /// with an index instead of a hash.
    by_relay: Vec<Option<Slot>>,
    live: usize,
    next_sweep: Instant,
    /// Whether the request being answered carried FINGERPRINT.
    request_fingerprint: bool,
    /// Length of the request being answered (bounds unauthenticated
    /// answers, [`AMPLIFICATION_LIMIT`]).
    request_len: usize,
    /// Usage records not yet taken by the driver.
    usage: Vec<UsageRecord>,
    /// Peer connections of TCP allocations (RFC 6062).
    tcp: tcp::Connections,
    pub stats: Stats,
}

/// Allocation slot index.
type Slot = u32;

/// An authenticated request, as the method handlers see it.
struct Authed<'r, 'm> {
    client: ClientKey,
    req: &'r TurnRequest<'m>,
    v: Verified,
    username: String,
    now: Instant,
}

impl Server {
    /// A shard with this config, credentials and nonce key (all shards of a
    /// relay share the key, so a nonce from one verifies on another; it
    /// issues only when the credentials bring no nonce keys of their own,
    /// [`Credentials::with_nonce_keys`], and always verifies). The shard
    /// has a limiter of its own; a relay of several shards gives them one
    /// with [`Server::with_limiter`], so the limit is per source, not per
    /// shard.
    pub fn new(cfg: Config, creds: Arc<Credentials>, nonce_key: NonceKey, now: Instant) -> Self {
        let auth = Authenticator::new(cfg.realm.clone(), nonce_key, cfg.nonce_ttl);
        let limiter = Arc::new(UnauthLimiter::new(cfg.unauth_rate, now));
        let tcp = tcp::Connections::new(cfg.shard.0, cfg.shard.1);
        Server {
            cfg,
            creds,
            previous_creds: None,
            auth,
            limiter,
            allocations: Vec::new(),
            free: Vec::new(),
            by_client: HashMap::new(),
            by_relay: Vec::new(),
            live: 0,
            next_sweep: now,
            request_fingerprint: false,
            request_len: 0,
            usage: Vec::new(),
            tcp,
            stats: Stats::default(),
        }
    }

    /// Charge unauthenticated work to `limiter`, shared with the relay's
    /// other shards, instead of a limiter of this shard's own.
    pub fn with_limiter(mut self, limiter: Arc<UnauthLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Replace the credentials (SIGHUP); live allocations keep their keys,
    /// and nonces issued under the old credentials' keys stay valid until
    /// the next reload.
    pub fn set_credentials(&mut self, creds: Arc<Credentials>) {
        self.previous_creds = Some(std::mem::replace(&mut self.creds, creds));
    }

    /// Refuse new allocations from now on (SIGTERM drain); existing ones
    /// keep relaying and may refresh.
    pub fn set_draining(&mut self, draining: bool) {
        self.cfg.draining = draining;
    }

    /// Number of live allocations.
    pub fn allocation_count(&self) -> usize {
        self.live
    }

    /// The allocation of a client, if any.
    pub fn allocation(&self, client: &ClientKey) -> Option<&Allocation> {
        self.by_client
            .get(client)
            .and_then(|&s| self.allocations[s as usize].as_ref())
    }

    /// The usage records queued since the last call (with
    /// [`Config::usage_records`]): for the driver to write, off the data
    /// path.
    pub fn take_usage(&mut self) -> std::vec::Drain<'_, UsageRecord> {
        self.usage.drain(..)
    }

    /// End every allocation (the relay is stopping), each with a usage
    /// record saying why.
    pub fn shutdown(&mut self, env: &mut impl Env, reason: EndReason, now: Instant) {
        for s in 0..self.allocations.len() {
            self.remove(env, s as Slot, reason, now);
        }
    }

    /// When [`Server::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Expire allocations, permissions and channels.
    pub fn handle_timeout(&mut self, env: &mut impl Env, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        self.expire_connections(env, now);
        let interval = self.cfg.usage_interval.filter(|_| self.cfg.usage_records);
        for s in 0..self.allocations.len() {
            let expired = match &mut self.allocations[s] {
                Some(a) if a.expires <= now => true,
                Some(a) => {
                    a.sweep(now);
                    false
                }
                None => false,
            };
            if expired {
                self.remove(env, s as Slot, EndReason::Expired, now);
                continue;
            }
            // Interim usage of a long allocation (totals so far).
            if let (Some(every), Some(a)) = (interval, &mut self.allocations[s]) {
                if a.usage.next_report.is_some_and(|t| t <= now) {
                    a.usage.next_report = Some(now + every);
                    let r = a.usage_record(now, None);
                    self.usage.push(r);
                }
            }
        }
    }

    /// A client's stream connection closed: its allocation goes with it
    /// (RFC 8656 §3.1: over TCP the allocation lives as long as the
    /// connection). `why`: [`EndReason::ClientGone`], or
    /// [`EndReason::Error`] when the relay closed it.
    pub fn client_gone(
        &mut self,
        env: &mut impl Env,
        client: &ClientKey,
        why: EndReason,
        now: Instant,
    ) {
        if let Some(&s) = self.by_client.get(client) {
            self.remove(env, s, why, now);
        }
    }

    /// Re-check every permission and channel against the peer policy (after
    /// a reload changed the lists).
    pub fn revalidate_peers(&mut self, env: &impl Env) {
        for a in self.allocations.iter_mut().flatten() {
            a.permissions
                .retain(|&(ip, _)| env.peer_ip_allowed(ip) || env.is_relay_ip(ip));
            a.channels.retain(|c| env.peer_allowed(c.peer));
        }
    }

    fn remove(&mut self, env: &mut impl Env, s: Slot, why: EndReason, now: Instant) {
        let Some(a) = self.allocations[s as usize].take() else {
            return;
        };
        self.stats.ended[why.index()] += 1;
        if self.cfg.usage_records {
            self.usage.push(a.usage_record(now, Some(why)));
        }
        self.by_client.remove(&a.client);
        if a.client.via.is_stream() {
            env.stream_held(&a.client, false);
        }
        // RFC 6062: the allocation's peer connections (and the client data
        // connections bound to them) end with it.
        if a.tcp {
            for (id, _) in self.tcp.drain_where(|c| c.slot == s) {
                env.close_connection(id);
            }
        }
        for (id, _) in a.relays.iter().flatten() {
            if let Some(e) = self.by_relay.get_mut(*id as usize) {
                *e = None;
            }
            env.close_relay(*id);
        }
        env.release_allocation(&a.username);
        self.free.push(s);
        self.live -= 1;
        self.stats.allocations_closed += 1;
    }

    // ---------------------------------------------------------------- data

    /// A message from a client: STUN or ChannelData. Replies are written to
    /// `out` (at least 256 bytes).
    pub fn handle_client(
        &mut self,
        env: &mut impl Env,
        client: ClientKey,
        msg: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> ClientAction {
        match demux::classify(msg, true) {
            PacketKind::Stun => self.client_stun(env, client, msg, now, out),
            // Nothing but STUN and ChannelData reaches a relay's listener,
            // so 0x40-0x7F is ChannelData here, RFC 5766 numbers included.
            PacketKind::ChannelData | PacketKind::Quic if msg[0] < 0x80 => {
                self.client_channel_data(client, msg, now)
            }
            _ => self.drop(Drop::Malformed),
        }
    }

    fn drop<T: From<Drop>>(&mut self, d: Drop) -> T {
        self.stats.drops[d.index()] += 1;
        T::from(d)
    }

    /// RFC 8656 §12.4: ChannelData from the client goes to the bound peer.
    #[inline]
    fn client_channel_data(&mut self, client: ClientKey, msg: &[u8], now: Instant) -> ClientAction {
        let Ok(cd) = channel_data::decode(msg) else {
            return self.drop(Drop::Malformed);
        };
        let Some(&s) = self.by_client.get(&client) else {
            return self.drop(Drop::NoAllocation);
        };
        let Some(a) = self.allocations[s as usize].as_mut() else {
            return self.drop(Drop::NoAllocation);
        };
        let Some(ch) = a.channel(cd.channel, now).copied() else {
            return self.drop(Drop::NoChannel);
        };
        // The channel's permission may have lapsed (RFC 8656 §12: channels
        // and permissions are refreshed separately).
        if !a.permitted(ch.peer.ip(), now) {
            return self.drop(Drop::NoPermission);
        }
        let Some((relay, _)) = a.relay_for(ch.peer.ip()) else {
            return self.drop(Drop::NoPermission);
        };
        let len = cd.data.len();
        if self.cfg.bandwidth > 0
            && !a
                .bucket
                .take(len as u64, self.cfg.bandwidth, self.cfg.bandwidth, now)
        {
            return self.drop(Drop::Quota);
        }
        a.usage.to_peer.add(len);
        self.stats.to_peer.0 += 1;
        self.stats.to_peer.1 += len as u64;
        ClientAction::Relay {
            relay,
            peer: ch.peer,
            data: channel_data::HEADER_LEN..channel_data::HEADER_LEN + len,
        }
    }

    /// A datagram of `len` bytes from `peer` arrived on relay socket
    /// `relay`: to which client, framed how ([`Framing::write`])?
    #[inline]
    pub fn route_peer(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Result<PeerRoute, Drop> {
        let Some(&Some(s)) = self.by_relay.get(relay as usize) else {
            return Err(self.drop(Drop::NoAllocation));
        };
        let Some(a) = self.allocations[s as usize].as_mut() else {
            return Err(self.drop(Drop::NoAllocation));
        };
        // RFC 8656 §10.3 / §12.5: only peers with a permission get through.
        if !a.permitted(peer.ip(), now) {
            return Err(self.drop(Drop::NoPermission));
        }
        if self.cfg.bandwidth > 0
            && !a
                .bucket
                .take(len as u64, self.cfg.bandwidth, self.cfg.bandwidth, now)
        {
            return Err(self.drop(Drop::Quota));
        }
        let framing = match a.channel_to(peer, now) {
            Some(ch) => Framing::Channel {
                number: ch.number,
                stream: a.client.via.is_stream(),
            },
            None => Framing::Indication { peer },
        };
        a.usage.to_client.add(len);
        self.stats.to_client.0 += 1;
        self.stats.to_client.1 += len as u64;
        Ok(PeerRoute {
            client: a.client,
            framing,
        })
    }

    // --------------------------------------------------------------- control

    fn client_stun(
        &mut self,
        env: &mut impl Env,
        client: ClientKey,
        msg: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> ClientAction {
        let Ok(req) = request::parse(msg) else {
            return self.drop(Drop::Malformed);
        };
        let h = req.header;
        if h.class() == Class::Indication {
            return match h.method() {
                method::SEND => self.send_indication(env, client, msg, &req, now),
                _ => self.drop(Drop::Ignored),
            };
        }
        if h.class() != Class::Request {
            return self.drop(Drop::Ignored);
        }
        let fp = fingerprint_check(msg, &h);
        self.request_fingerprint = fp == Some(true);
        self.request_len = msg.len();
        if let Some(fp) = fp {
            if !fp {
                return self.drop(Drop::Malformed);
            }
        }
        let m = h.method();
        let tid = h.transaction_id;
        // Binding: a plain STUN server on the same ports (RFC 8656 §6).
        if m == method::BINDING {
            return self.reply(
                out,
                |w| w.xor_address(attr::XOR_MAPPED_ADDRESS, client.addr),
                m,
                Class::Success,
                &tid,
                None,
            );
        }
        if !matches!(
            m,
            method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::CONNECT
                | method::CONNECTION_BIND
        ) {
            return self.error(out, m, &tid, 400, None);
        }
        if !req.unknown().is_empty() {
            let unknown = req.unknown;
            return self.reply(
                out,
                |w| {
                    w.error_code(420, "")?;
                    w.unknown_attributes(unknown.as_slice())
                },
                m,
                Class::Error,
                &tid,
                None,
            );
        }
        // Authenticate (RFC 8656 §5): every request but Binding. The nonce
        // first: whether it is ours for this address decides which budget
        // the source's failures are charged to.
        let sys = env.system_now();
        let nonce = |addr| {
            self.auth
                .check_nonce(&self.creds, self.previous_creds.as_deref(), &req, addr, sys)
        };
        // A ConnectionBind (RFC 6062 §5.4) also passes with the nonce of
        // the control connection whose allocation it binds for, as
        // coturn's does: a client holds one nonce for its allocation.
        let owner = (m == method::CONNECTION_BIND)
            .then(|| self.bind_owner(&req, client))
            .flatten();
        let form = match owner.and_then(|o| nonce(o).ok()) {
            Some(form) => Ok(form),
            None => nonce(client.addr),
        };
        let form = match form {
            Ok(form) => form,
            Err(e) => return self.auth_failure(e, client, m, &tid, now, sys, out),
        };
        // A source that proved its address but keeps failing costs a hash
        // lookup, not a key derivation and an HMAC per request.
        if !self.limiter.failures_left(client.addr, now) {
            return self.drop(Drop::RateLimited);
        }
        let (v, username) = match self
            .auth
            .check_credentials(&self.creds, msg, &h, &req, form, sys)
        {
            Ok(v) => v,
            Err(e) => return self.auth_failure(e, client, m, &tid, now, sys, out),
        };
        if req.bad_attribute.is_some() {
            return self.error(out, m, &tid, 400, Some(v));
        }
        let cx = Authed {
            client,
            req: &req,
            v,
            username,
            now,
        };
        match m {
            method::ALLOCATE => self.allocate(env, cx, out),
            method::REFRESH => self.refresh(env, cx, out),
            method::CREATE_PERMISSION => self.create_permission(env, cx, out),
            method::CONNECT => self.connect(env, cx, out),
            method::CONNECTION_BIND => self.connection_bind(cx, out),
            _ => self.channel_bind(env, cx, out),
        }
    }

    /// Answer a request that did not authenticate: 400, 401 or 438
    /// (RFC 8489 §9.2.4), within the source's budget ([`UnauthLimiter`]).
    #[allow(clippy::too_many_arguments)]
    fn auth_failure(
        &mut self,
        e: AuthError,
        client: ClientKey,
        m: u16,
        tid: &[u8; 12],
        now: Instant,
        sys: SystemTime,
        out: &mut [u8],
    ) -> ClientAction {
        if e.nonce_proven() {
            // The sender receives at its address: charged to that address
            // and port alone, so floods from elsewhere on its IP cannot
            // starve it (a live allocation's 438 above all).
            if !self.limiter.failures_left(client.addr, now) {
                return self.drop(Drop::RateLimited);
            }
            self.limiter.charge_failure(client.addr, now);
        } else if !self.limiter.allow_unproven(client.addr, now) {
            return self.drop(Drop::RateLimited);
        }
        let code = match e {
            AuthError::Missing => 401,
            AuthError::StaleNonce => 438,
            AuthError::BadRequest => return self.error(out, m, tid, 400, None),
            AuthError::BadNonce
            | AuthError::Unauthorized
            | AuthError::Expired
            | AuthError::UnknownUser => {
                self.stats.auth_failures += 1;
                401
            }
        };
        let form = self.challenge_form();
        let nonce = self.auth.nonce(&self.creds, form, client.addr, sys);
        let realm = self.auth.realm.clone();
        // RFC 8489 §9.2.4: 401 and 438 carry REALM and NONCE, and with a
        // nonce of the features form the PASSWORD-ALGORITHMS we accept;
        // nothing else, no reason phrase.
        self.reply(
            out,
            |w| {
                w.error_code(code, "")?;
                w.bytes(attr::REALM, realm.as_bytes())?;
                w.bytes(attr::NONCE, nonce.as_str().as_bytes())?;
                if form == NonceForm::Features {
                    w.bytes(attr::PASSWORD_ALGORITHMS, OFFERED_ALGORITHMS)?;
                }
                Ok(())
            },
            m,
            Class::Error,
            tid,
            None,
        )
    }

    /// Which nonce a 401 or 438 carries: the features form (nonce cookie
    /// and PASSWORD-ALGORITHMS, so the client may pick SHA-256) when the
    /// answer stays within [`AMPLIFICATION_LIMIT`] times the request, else
    /// the plain form (MD5). A client's usual first Allocate, with
    /// REQUESTED-TRANSPORT and FINGERPRINT, gets the features form; a bare
    /// 20-byte request, what a reflector sends, gets the plain one.
    fn challenge_form(&self) -> NonceForm {
        let attr_len = |value: usize| 4 + value.next_multiple_of(4);
        let full = raw::HEADER_LEN
            + attr_len(4) // ERROR-CODE, no reason phrase
            + attr_len(self.auth.realm.len())
            + attr_len(crate::nonce::NONCE_LEN)
            + attr_len(OFFERED_ALGORITHMS.len())
            + if self.request_fingerprint { 8 } else { 0 };
        if full <= AMPLIFICATION_LIMIT * self.request_len {
            NonceForm::Features
        } else {
            NonceForm::Plain
        }
    }

    fn error(
        &mut self,
        out: &mut [u8],
        m: u16,
        tid: &[u8; 12],
        code: u16,
        v: Option<Verified>,
    ) -> ClientAction {
        self.error_with_reason(out, m, tid, code, "", v)
    }

    /// An error with a reason phrase (RFC 8489 §14.8): only in answers to
    /// authenticated requests, which reflect nothing.
    fn error_with_reason(
        &mut self,
        out: &mut [u8],
        m: u16,
        tid: &[u8; 12],
        code: u16,
        reason: &str,
        v: Option<Verified>,
    ) -> ClientAction {
        if m == method::ALLOCATE {
            *self.stats.allocate_errors.entry(code).or_default() += 1;
        }
        self.reply(out, |w| w.error_code(code, reason), m, Class::Error, tid, v)
    }

    /// Refuse an authenticated Allocate for want of room: 486 or 508, or
    /// 300 Try Alternate (RFC 8489 §10, RFC 8656 §7.2) when the relay is
    /// draining (or full, if so configured) and has an alternate of the
    /// client's family. The 300 is authenticated like any answer to an
    /// authenticated request, so the client can trust where it is sent.
    fn refuse(
        &mut self,
        out: &mut [u8],
        tid: &[u8; 12],
        client: SocketAddr,
        why: Refusal,
        v: Verified,
    ) -> ClientAction {
        self.stats.refused[why.index()] += 1;
        let redirect = match why {
            Refusal::Draining => true,
            Refusal::MaxAllocations | Refusal::RelayPorts => self.cfg.alternate_when_full,
            // The user's own quota is the same on every relay of the group.
            Refusal::UserQuota => false,
        };
        let alternate = self.cfg.alternate[allocation::family_index(client.ip())];
        match alternate {
            Some(alt) if redirect => {
                *self.stats.allocate_errors.entry(300).or_default() += 1;
                let domain = self.cfg.alternate_domain.clone();
                self.reply(
                    out,
                    |w| {
                        w.error_code(300, "Try Alternate")?;
                        w.address(attr::ALTERNATE_SERVER, alt)?;
                        if let Some(d) = &domain {
                            w.bytes(attr::ALTERNATE_DOMAIN, d.as_bytes())?;
                        }
                        Ok(())
                    },
                    method::ALLOCATE,
                    Class::Error,
                    tid,
                    Some(v),
                )
            }
            _ => self.error(out, method::ALLOCATE, tid, why.code(), Some(v)),
        }
    }

    /// Write a response: `body` adds attributes, then integrity (when the
    /// request was authenticated) and FINGERPRINT (when authenticated, or
    /// when the request had one: an unauthenticated answer stays as small as
    /// it can, which is what limits reflection).
    fn reply(
        &mut self,
        out: &mut [u8],
        body: impl FnOnce(&mut Writer<'_>) -> Result<(), BufferTooSmall>,
        m: u16,
        class: Class,
        tid: &[u8; 12],
        v: Option<Verified>,
    ) -> ClientAction {
        let fingerprint = self.request_fingerprint;
        let write = || -> Result<usize, BufferTooSmall> {
            let mut w = Writer::new(out, m, class, tid)?;
            body(&mut w)?;
            if let Some(v) = v {
                match v.kind {
                    IntegrityKind::Sha1 => w.message_integrity(v.key.as_bytes())?,
                    IntegrityKind::Sha256 => w.message_integrity_sha256(v.key.as_bytes())?,
                }
            }
            if v.is_some() || fingerprint {
                w.fingerprint()
            } else {
                Ok(w.finish())
            }
        };
        match write() {
            Ok(n) => ClientAction::Reply(n),
            Err(_) => self.drop(Drop::Malformed),
        }
    }

    /// RFC 8656 §7.2.
    fn allocate(&mut self, env: &mut impl Env, cx: Authed<'_, '_>, out: &mut [u8]) -> ClientAction {
        let Authed {
            client,
            req,
            v,
            now,
            ..
        } = cx;
        let username = cx.username.as_str();
        let m = method::ALLOCATE;
        let tid = req.header.transaction_id;
        if let Some(&s) = self.by_client.get(&client) {
            let a = self.allocations[s as usize].as_ref().expect("indexed");
            // A retransmitted Allocate gets the same success again.
            if a.allocate_tid == tid && *a.username == *username {
                return self.allocate_success(s, req, v, out, now);
            }
            return self.error(out, m, &tid, 437, Some(v));
        }
        if self.cfg.draining {
            return self.refuse(out, &tid, client.addr, Refusal::Draining, v);
        }
        let tcp = match req.requested_transport {
            None => return self.error(out, m, &tid, 400, Some(v)),
            Some(TRANSPORT_UDP) => false,
            // RFC 6062 §5.1: a TCP allocation only over a TCP or TLS
            // control connection (else 442), when this relay offers them.
            Some(TRANSPORT_TCP) if client.via.is_stream() && self.cfg.max_peer_connections > 0 => {
                true
            }
            Some(_) => return self.error(out, m, &tid, 442, Some(v)),
        };
        // RFC 6062 §5.1: DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN
        // mean nothing for TCP: 400.
        if tcp && (req.dont_fragment || req.even_port.is_some() || req.reservation_token.is_some())
        {
            return self.error(out, m, &tid, 400, Some(v));
        }
        // RFC 8656 §7.2 step 4-6: EVEN-PORT, RESERVATION-TOKEN and the
        // address family attributes exclude one another in these ways.
        let token = req.reservation_token;
        if token.is_some() && (req.even_port.is_some() || req.requested_family.is_some()) {
            return self.error(out, m, &tid, 400, Some(v));
        }
        if req.additional_family.is_some() && req.requested_family.is_some() {
            return self.error(out, m, &tid, 400, Some(v));
        }
        let family = match req.requested_family {
            None | Some(FAMILY_IPV4) => 0,
            Some(FAMILY_IPV6) => 1,
            Some(_) => return self.error(out, m, &tid, 440, Some(v)),
        };
        let dual = match req.additional_family {
            None => false,
            Some(FAMILY_IPV6) => true,
            // RFC 8656 §7.2: ADDITIONAL-ADDRESS-FAMILY may only ask for IPv6.
            Some(_) => return self.error(out, m, &tid, 400, Some(v)),
        };
        // RFC 8656 §7.2: 486 is the user's quota; the server's capacity is
        // 508 (Insufficient Capacity).
        match env.acquire_allocation(username) {
            Ok(()) => {}
            Err(QuotaError::PerUser) => {
                return self.refuse(out, &tid, client.addr, Refusal::UserQuota, v)
            }
            Err(QuotaError::Total) => {
                return self.refuse(out, &tid, client.addr, Refusal::MaxAllocations, v)
            }
        }
        let first = env.open_relay(RelayRequest {
            family,
            even_port: req.even_port.is_some(),
            reserve: req.even_port == Some(true),
            token,
            dont_fragment: req.dont_fragment,
            tcp,
        });
        let first = match first {
            Ok(r) => r,
            Err(e) => {
                env.release_allocation(username);
                return match e {
                    RelayError::Family => self.error(out, m, &tid, 440, Some(v)),
                    RelayError::NoPorts => {
                        self.refuse(out, &tid, client.addr, Refusal::RelayPorts, v)
                    }
                    // A token that is not (or no longer) ours: RFC 8656
                    // §7.2 step 6 answers 508 too, but it is not capacity.
                    RelayError::BadToken => self.error(out, m, &tid, 508, Some(v)),
                };
            }
        };
        let mut relays = [None, None];
        relays[family] = Some((first.id, first.addr));
        // Dual allocation: the IPv6 half is best effort (RFC 8656 §7.2: on
        // failure, ADDRESS-ERROR-CODE in the success response). A TCP
        // allocation has one relayed address.
        if dual && !tcp {
            if let Ok(r) = env.open_relay(RelayRequest {
                family: 1,
                even_port: false,
                reserve: false,
                token: None,
                dont_fragment: req.dont_fragment,
                tcp: false,
            }) {
                relays[1] = Some((r.id, r.addr));
            }
        }
        let lifetime = self.lifetime(req.lifetime);
        let alloc = Allocation {
            client,
            relays,
            username: username.into(),
            key: v.key,
            integrity: v.kind,
            expires: now + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_tid: tid,
            reservation: first.token,
            bucket: Bucket::new(now, self.cfg.bandwidth),
            usage: Usage::new(env.system_now(), now, self.cfg.usage_interval),
            tcp,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.allocations[s as usize] = Some(alloc);
                s
            }
            None => {
                self.allocations.push(Some(alloc));
                (self.allocations.len() - 1) as Slot
            }
        };
        for (id, _) in relays.iter().flatten() {
            let i = *id as usize;
            if self.by_relay.len() <= i {
                self.by_relay.resize(i + 1, None);
            }
            self.by_relay[i] = Some(s);
        }
        self.by_client.insert(client, s);
        if client.via.is_stream() {
            env.stream_held(&client, true);
        }
        self.live += 1;
        self.stats.allocations += 1;
        self.allocate_success(s, req, v, out, now)
    }

    fn allocate_success(
        &mut self,
        s: Slot,
        req: &TurnRequest<'_>,
        v: Verified,
        out: &mut [u8],
        now: Instant,
    ) -> ClientAction {
        let a = self.allocations[s as usize].as_ref().expect("live");
        let relays = a.relays;
        let client = a.client.addr;
        let token = a.reservation;
        let lifetime = a.expires.saturating_duration_since(now).as_secs() as u32;
        let want_v6_too = req.additional_family == Some(FAMILY_IPV6) && relays[1].is_none();
        let tid = req.header.transaction_id;
        self.reply(
            out,
            |w| {
                for (_, addr) in relays.iter().flatten() {
                    w.xor_address(attr::XOR_RELAYED_ADDRESS, *addr)?;
                }
                if want_v6_too {
                    // RFC 8656 §7.2: the IPv6 half failed; 440 covers both
                    // "no IPv6 relay address" and "no IPv6 port left".
                    let val = w.attribute(attr::ADDRESS_ERROR_CODE, 4)?;
                    val.copy_from_slice(&[FAMILY_IPV6, 0, 4, 40]);
                }
                w.u32(attr::LIFETIME, lifetime)?;
                if let Some(t) = token {
                    w.u64(attr::RESERVATION_TOKEN, t)?;
                }
                w.xor_address(attr::XOR_MAPPED_ADDRESS, client)
            },
            method::ALLOCATE,
            Class::Success,
            &tid,
            Some(v),
        )
    }

    fn lifetime(&self, requested: Option<u32>) -> Duration {
        // RFC 8656 §7.2: the client's value, capped at the maximum, and not
        // below the default.
        let want = requested.map_or(self.cfg.default_lifetime, |s| Duration::from_secs(s as u64));
        let floor = self.cfg.default_lifetime.min(self.cfg.max_lifetime);
        want.clamp(floor, self.cfg.max_lifetime)
    }

    /// The allocation a request other than Allocate acts on: the 5-tuple's
    /// (else 437), made by the same user (RFC 8656 §5: else 441). The error
    /// is the reply to send.
    fn owned(&mut self, cx: &Authed<'_, '_>, out: &mut [u8]) -> Result<Slot, ClientAction> {
        let found = self
            .by_client
            .get(&cx.client)
            .and_then(|&s| Some((s, self.allocations[s as usize].as_ref()?)));
        let code = match found {
            Some((s, a)) if *a.username == *cx.username => return Ok(s),
            Some(_) => 441,
            None => 437,
        };
        let h = &cx.req.header;
        Err(self.error(out, h.method(), &h.transaction_id, code, Some(cx.v)))
    }

    /// RFC 8656 §8.
    fn refresh(&mut self, env: &mut impl Env, cx: Authed<'_, '_>, out: &mut [u8]) -> ClientAction {
        let s = match self.owned(&cx, out) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let Authed { req, v, now, .. } = cx;
        let m = method::REFRESH;
        let tid = req.header.transaction_id;
        if let Some(f) = req.requested_family {
            let idx = match f {
                FAMILY_IPV4 => 0,
                FAMILY_IPV6 => 1,
                _ => return self.error(out, m, &tid, 440, Some(v)),
            };
            let a = self.allocations[s as usize].as_ref().expect("live");
            if a.relays[idx].is_none() {
                return self.error(out, m, &tid, 443, Some(v));
            }
        }
        let lifetime = match req.lifetime {
            Some(0) => {
                self.remove(env, s, EndReason::Deleted, now);
                Duration::ZERO
            }
            l => {
                let d = self.lifetime(l);
                if let Some(a) = self.allocations[s as usize].as_mut() {
                    a.expires = now + d;
                }
                d
            }
        };
        self.reply(
            out,
            |w| w.u32(attr::LIFETIME, lifetime.as_secs() as u32),
            m,
            Class::Success,
            &tid,
            Some(v),
        )
    }

    /// RFC 8656 §9.
    fn create_permission(
        &mut self,
        env: &mut impl Env,
        cx: Authed<'_, '_>,
        out: &mut [u8],
    ) -> ClientAction {
        let s = match self.owned(&cx, out) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let Authed { req, v, now, .. } = cx;
        let m = method::CREATE_PERMISSION;
        let tid = req.header.transaction_id;
        if req.peer_count == 0 {
            return self.error(out, m, &tid, 400, Some(v));
        }
        // RFC 8656 §9.2: several XOR-PEER-ADDRESS are allowed; one request
        // can install at most the allocation's quota.
        let max = self.cfg.max_permissions;
        if req.peer_count > max {
            let reason = format!(
                "{} peers in one request; this relay allows {max} permissions per allocation",
                req.peer_count
            );
            return self.error_with_reason(out, m, &tid, 508, &reason, Some(v));
        }
        let a = self.allocations[s as usize].as_ref().expect("live");
        for peer in req.peers() {
            if a.relay_for(peer.ip()).is_none() {
                return self.error(out, m, &tid, 443, Some(v));
            }
            if !env.peer_ip_allowed(peer.ip()) && !env.peer_allowed(peer) {
                self.stats.drops[Drop::DeniedPeer.index()] += 1;
                return self.error(out, m, &tid, 403, Some(v));
            }
        }
        let a = self.allocations[s as usize].as_mut().expect("live");
        // All or nothing (RFC 8656 §9.2): check room before installing.
        let fresh = req
            .peers()
            .filter(|p| {
                !a.permissions
                    .iter()
                    .any(|(ip, e)| *ip == p.ip() && *e > now)
            })
            .count();
        a.permissions.retain(|&(_, e)| e > now);
        if a.permissions.len() + fresh > max {
            return self.error(out, m, &tid, 508, Some(v));
        }
        for peer in req.peers() {
            a.permit(peer.ip(), now + PERMISSION_LIFETIME, now, max);
            a.usage.note_peer(peer.ip());
        }
        self.stats.permissions += fresh as u64;
        self.reply(out, |_| Ok(()), m, Class::Success, &tid, Some(v))
    }

    /// RFC 8656 §11.
    fn channel_bind(
        &mut self,
        env: &mut impl Env,
        cx: Authed<'_, '_>,
        out: &mut [u8],
    ) -> ClientAction {
        let s = match self.owned(&cx, out) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let Authed { req, v, now, .. } = cx;
        let m = method::CHANNEL_BIND;
        let tid = req.header.transaction_id;
        let (Some(number), Some(peer), 1) = (req.channel, req.peer, req.peer_count) else {
            return self.error(out, m, &tid, 400, Some(v));
        };
        // RFC 8656 §11.2 asks for 0x4000-0x4FFF; RFC 5766 clients use up to
        // 0x7FFF, and refusing them breaks deployed software.
        if !channel_data::is_channel_number(number) {
            return self.error(out, m, &tid, 400, Some(v));
        }
        let a = self.allocations[s as usize].as_ref().expect("live");
        // RFC 6062 §5: a TCP allocation has no channels.
        if a.tcp {
            return self.error(out, m, &tid, 400, Some(v));
        }
        if let Err(reply) = self.relay_to(env, s, peer, m, &tid, v, out) {
            return reply;
        }
        let a = self.allocations[s as usize].as_ref().expect("live");
        // RFC 8656 §11.2: the number may not be bound to another peer, nor
        // the peer to another number (including recently expired ones).
        let conflict = a
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return self.error(out, m, &tid, 400, Some(v));
        }
        let max_c = self.cfg.max_channels;
        let max_p = self.cfg.max_permissions;
        let a = self.allocations[s as usize].as_mut().expect("live");
        let existing = a.channels.iter_mut().find(|c| c.number == number);
        match existing {
            Some(c) => c.expires = now + CHANNEL_LIFETIME,
            None => {
                a.channels
                    .retain(|c| c.expires + Duration::from_secs(300) > now);
                if a.channels.len() >= max_c {
                    return self.error(out, m, &tid, 508, Some(v));
                }
                a.channels.push(Channel {
                    number,
                    peer,
                    expires: now + CHANNEL_LIFETIME,
                });
                self.stats.channels += 1;
            }
        }
        // RFC 8656 §11.2: binding also installs or refreshes the permission.
        if !a.permit(peer.ip(), now + PERMISSION_LIFETIME, now, max_p) {
            return self.error(out, m, &tid, 508, Some(v));
        }
        a.usage.note_peer(peer.ip());
        self.reply(out, |_| Ok(()), m, Class::Success, &tid, Some(v))
    }

    /// The relay socket of allocation `s` that reaches `peer` (else 443),
    /// if the peer policy allows `peer` (else 403): for requests that name
    /// one peer (ChannelBind, Connect). The error is the reply to send.
    #[allow(clippy::too_many_arguments)]
    fn relay_to(
        &mut self,
        env: &impl Env,
        s: Slot,
        peer: SocketAddr,
        m: u16,
        tid: &[u8; 12],
        v: Verified,
        out: &mut [u8],
    ) -> Result<RelayId, ClientAction> {
        let a = self.allocations[s as usize].as_ref().expect("live");
        let Some((relay, _)) = a.relay_for(peer.ip()) else {
            return Err(self.error(out, m, tid, 443, Some(v)));
        };
        if !env.peer_allowed(peer) {
            self.stats.drops[Drop::DeniedPeer.index()] += 1;
            return Err(self.error(out, m, tid, 403, Some(v)));
        }
        Ok(relay)
    }

    /// RFC 8656 §10.2: a Send indication's DATA goes to XOR-PEER-ADDRESS if
    /// a permission exists. Indications are never answered.
    fn send_indication(
        &mut self,
        env: &mut impl Env,
        client: ClientKey,
        msg: &[u8],
        req: &TurnRequest<'_>,
        now: Instant,
    ) -> ClientAction {
        let (Some(peer), Some(data)) = (req.peer, req.data) else {
            return self.drop(Drop::Malformed);
        };
        let Some(&s) = self.by_client.get(&client) else {
            return self.drop(Drop::NoAllocation);
        };
        let Some(a) = self.allocations[s as usize].as_mut() else {
            return self.drop(Drop::NoAllocation);
        };
        // RFC 6062 §5: no Send indications on a TCP allocation.
        if a.tcp || !a.permitted(peer.ip(), now) {
            return self.drop(Drop::NoPermission);
        }
        let Some((relay, _)) = a.relay_for(peer.ip()) else {
            return self.drop(Drop::NoPermission);
        };
        if self.cfg.bandwidth > 0
            && !a.bucket.take(
                data.len() as u64,
                self.cfg.bandwidth,
                self.cfg.bandwidth,
                now,
            )
        {
            return self.drop(Drop::Quota);
        }
        // The permission is per IP; the port is checked here (no sending
        // to the relay's own listeners through a relay-to-relay permission).
        if !env.peer_allowed(peer) {
            return self.drop(Drop::DeniedPeer);
        }
        a.usage.to_peer.add(data.len());
        let start = data.as_ptr() as usize - msg.as_ptr() as usize;
        self.stats.to_peer.0 += 1;
        self.stats.to_peer.1 += data.len() as u64;
        ClientAction::Relay {
            relay,
            peer,
            data: start..start + data.len(),
        }
    }
}

impl From<Drop> for ClientAction {
    fn from(d: Drop) -> Self {
        ClientAction::Drop(d)
    }
}

/// `Some(valid)` when the message has a FINGERPRINT.
fn fingerprint_check(msg: &[u8], h: &raw::Header) -> Option<bool> {
    match crate::integrity::check_fingerprint(msg, h) {
        Ok(true) => Some(true),
        Ok(false) => None,
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests;
