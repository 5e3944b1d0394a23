//! TCP allocations (RFC 6062), the core's side: the CONNECTION-ID table,
//! each peer connection's state and its timers. The driver does the
//! sockets (the relayed address's listener, connecting to peers, the
//! splice of a bound data connection); the core decides.
//!
//! A CONNECTION-ID names its shard: `id % shards == shard`. A client data
//! connection may land on any shard; the driver reads the id of its first
//! message ([`connection_bind_id`]) and hands it to the shard that holds
//! the peer connection ([`shard_of`]), so there is no shared table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{ClientKey, RelayId};
use super::auth::Verified;
use super::{Authed, ClientAction, Drop, Env, Server, TurnRequest, PERMISSION_LIFETIME};
use crate::raw::{self, attr, method, Attributes, Class};
use crate::writer::Writer;

/// A peer connection's CONNECTION-ID (RFC 6062 §6.2.1).
pub type ConnectionId = u32;

/// RFC 6062 §5.2, §5.3: a peer connection no client data connection binds
/// within 30 seconds is closed.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 6062 §5.2: the relay gives a Connect at least 30 seconds. The
/// driver bounds the attempt with this; the core forgets a Connect the
/// driver never answered a little later.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a peer connection is in its life.
#[derive(Debug, Clone, Copy)]
pub(super) enum State {
    /// Connect sent (active, §5.2): the driver is connecting; the answer
    /// to the client waits for the outcome, signed with this key.
    Connecting { tid: [u8; 12], v: Verified },
    /// Connected or accepted, waiting for a ConnectionBind (§5.3) until
    /// the deadline.
    Unbound,
    /// Bound to a client data connection: the driver splices the two.
    Bound,
}

/// One peer connection of a TCP allocation.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerConnection {
    /// The allocation's slot in the core.
    pub slot: u32,
    pub peer: SocketAddr,
    pub state: State,
    /// When it is given up on (Connecting, Unbound); `None` once bound.
    pub deadline: Option<Instant>,
}

/// What became of peer connections, for metrics ([`TcpEvent::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEvent {
    /// Connect succeeded: the relay reached the peer (§5.2).
    Connected,
    /// Connect failed or timed out: 447 (§5.2).
    ConnectFailed,
    /// A peer connected to the relayed address with a permission: a
    /// ConnectionAttempt went to the client (§5.3).
    Accepted,
    /// A peer connected without a permission, or over the allocation's
    /// connection cap: closed at once (§5.3).
    Refused,
    /// A client data connection bound a peer connection (§5.4).
    Bound,
    /// No ConnectionBind within 30 s: closed (§5.3).
    Unbound,
}

impl TcpEvent {
    /// Metric labels, in [`TcpEvent::index`] order.
    pub const LABELS: [&'static str; 6] = [
        "connected",
        "connect_failed",
        "accepted",
        "refused",
        "bound",
        "unbound_timeout",
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The shard a CONNECTION-ID belongs to, of `shards`.
#[inline]
pub fn shard_of(id: ConnectionId, shards: usize) -> usize {
    id as usize % shards.max(1)
}

/// The CONNECTION-ID of `msg` if it is a ConnectionBind request (RFC 6062
/// §4.4: the first message of a client data connection), for the driver
/// to route it; `None` for anything else.
pub fn connection_bind_id(msg: &[u8]) -> Option<ConnectionId> {
    let h = raw::parse_datagram(msg).ok()?;
    if h.method() != method::CONNECTION_BIND || h.class() != Class::Request {
        return None;
    }
    Attributes::new(msg, &h)
        .counted()
        .map_while(Result::ok)
        .find(|a| a.typ == attr::CONNECTION_ID)
        .and_then(|a| raw::decode_u32(a.value))
}

/// A shard's peer connections by CONNECTION-ID.
#[derive(Debug)]
pub(super) struct Connections {
    map: HashMap<ConnectionId, PeerConnection>,
    shard: u32,
    shards: u32,
}

impl Connections {
    pub fn new(shard: u32, shards: u32) -> Self {
        let shards = shards.max(1);
        Connections {
            map: HashMap::new(),
            shard: shard % shards,
            shards,
        }
    }

    /// Add a connection under a fresh id: random (a client cannot guess
    /// another's), of this shard, never 0, not in use.
    pub fn insert(&mut self, c: PeerConnection) -> ConnectionId {
        let shards = self.shards;
        let id = loop {
            let r: u32 = rand::random::<u32>() / shards * shards + self.shard;
            if r != 0 && !self.map.contains_key(&r) {
                break r;
            }
        };
        self.map.insert(id, c);
        id
    }

    pub fn get(&self, id: ConnectionId) -> Option<&PeerConnection> {
        self.map.get(&id)
    }

    pub fn get_mut(&mut self, id: ConnectionId) -> Option<&mut PeerConnection> {
        self.map.get_mut(&id)
    }

    pub fn remove(&mut self, id: ConnectionId) -> Option<PeerConnection> {
        self.map.remove(&id)
    }

    /// How many connections the allocation in `slot` has.
    pub fn count(&self, slot: u32) -> usize {
        self.map.values().filter(|c| c.slot == slot).count()
    }

    /// Whether the allocation in `slot` has a connection with `peer`: a
    /// Connect under way or done (RFC 6062 §5.2: 446), or one `peer` made
    /// to the relayed address. That one is the very connection a Connect
    /// would make (the same two addresses, one TCP 4-tuple): two TCP
    /// allocations that Connect to each other's relayed addresses, once
    /// the first connection is up, the second gets 446 (as with coturn),
    /// and its client has had the ConnectionAttempt for that connection.
    pub fn has_connection_with(&self, slot: u32, peer: SocketAddr) -> bool {
        self.map.values().any(|c| c.slot == slot && c.peer == peer)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Remove the connections `pick` selects; their ids and what they were.
    pub fn drain_where(
        &mut self,
        mut pick: impl FnMut(&PeerConnection) -> bool,
    ) -> Vec<(ConnectionId, PeerConnection)> {
        let ids: Vec<ConnectionId> = self
            .map
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| Some((id, self.map.remove(&id)?)))
            .collect()
    }
}

impl Server {
    /// RFC 6062 §5.2: Connect. The answer waits for the driver's attempt
    /// ([`ClientAction::Connect`], then [`Server::connect_result`]).
    pub(super) fn connect(
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
        let m = method::CONNECT;
        let tid = req.header.transaction_id;
        let a = self.allocations[s as usize].as_ref().expect("live");
        // Connect is for TCP allocations only.
        if !a.tcp {
            return self.error(out, m, &tid, 400, Some(v));
        }
        let (Some(peer), 1) = (req.peer, req.peer_count) else {
            return self.error(out, m, &tid, 400, Some(v));
        };
        let relay = match self.relay_to(env, s, peer, m, &tid, v, out) {
            Ok(relay) => relay,
            Err(reply) => return reply,
        };
        // §5.2: a connection to this peer being made, pending or active
        // already: 446.
        if self.tcp.has_connection_with(s, peer) {
            return self.error(out, m, &tid, 446, Some(v));
        }
        if self.tcp.count(s) >= self.cfg.max_peer_connections {
            return self.error_with_reason(
                out,
                m,
                &tid,
                508,
                "peer connection limit of the allocation reached",
                Some(v),
            );
        }
        // The peer gets a permission, as a ChannelBind gives one (RFC 8656
        // §11.2): it may then connect in too.
        let max_p = self.cfg.max_permissions;
        let a = self.allocations[s as usize].as_mut().expect("live");
        if !a.permit(peer.ip(), now + PERMISSION_LIFETIME, now, max_p) {
            return self.error(out, m, &tid, 508, Some(v));
        }
        a.usage.note_peer(peer.ip());
        let id = self.tcp.insert(PeerConnection {
            slot: s,
            peer,
            state: State::Connecting { tid, v },
            // The driver's attempt ends first; this only forgets a Connect
            // it never reported.
            deadline: Some(now + CONNECT_TIMEOUT + Duration::from_secs(5)),
        });
        ClientAction::Connect { id, relay, peer }
    }

    /// How the driver's attempt of [`ClientAction::Connect`] `id` went.
    /// Returns the answer to write (`out[..len]`) and the client to send
    /// it to; `None` when there is no one to answer (the allocation ended
    /// meanwhile): then close the connection if it opened.
    pub fn connect_result(
        &mut self,
        id: ConnectionId,
        connected: bool,
        now: Instant,
        out: &mut [u8],
    ) -> Option<(ClientKey, usize)> {
        let c = self.tcp.get_mut(id)?;
        let State::Connecting { tid, v } = c.state else {
            return None;
        };
        let Some(client) = self.allocations[c.slot as usize].as_ref().map(|a| a.client) else {
            self.tcp.remove(id);
            return None;
        };
        let m = method::CONNECT;
        let action = if connected {
            c.state = State::Unbound;
            c.deadline = Some(now + BIND_TIMEOUT);
            self.stats.tcp[TcpEvent::Connected.index()] += 1;
            self.reply(
                out,
                |w| w.u32(attr::CONNECTION_ID, id),
                m,
                Class::Success,
                &tid,
                Some(v),
            )
        } else {
            self.tcp.remove(id);
            self.stats.tcp[TcpEvent::ConnectFailed.index()] += 1;
            self.error(out, m, &tid, 447, Some(v))
        };
        match action {
            ClientAction::Reply(n) => Some((client, n)),
            _ => None,
        }
    }

    /// RFC 6062 §5.3: `peer` connected to TCP relay `relay`. With a
    /// permission (and room), the connection gets an id and the client a
    /// ConnectionAttempt indication (`out[..len]`); else the driver closes
    /// it at once.
    pub fn peer_connected(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Instant,
        out: &mut [u8],
    ) -> Result<(ClientKey, ConnectionId, usize), Drop> {
        let Some(&Some(s)) = self.by_relay.get(relay as usize) else {
            return Err(self.drop(Drop::NoAllocation));
        };
        let Some(a) = self.allocations[s as usize].as_ref().filter(|a| a.tcp) else {
            return Err(self.drop(Drop::NoAllocation));
        };
        let client = a.client;
        if !a.permitted(peer.ip(), now) {
            self.stats.tcp[TcpEvent::Refused.index()] += 1;
            return Err(self.drop(Drop::NoPermission));
        }
        if self.tcp.count(s) >= self.cfg.max_peer_connections {
            self.stats.tcp[TcpEvent::Refused.index()] += 1;
            return Err(self.drop(Drop::Quota));
        }
        let id = self.tcp.insert(PeerConnection {
            slot: s,
            peer,
            state: State::Unbound,
            deadline: Some(now + BIND_TIMEOUT),
        });
        let written = (|| {
            let tid: [u8; 12] = rand::random();
            let mut w = Writer::new(out, method::CONNECTION_ATTEMPT, Class::Indication, &tid)?;
            w.u32(attr::CONNECTION_ID, id)?;
            w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            w.fingerprint()
        })();
        match written {
            Ok(n) => {
                self.stats.tcp[TcpEvent::Accepted.index()] += 1;
                Ok((client, id, n))
            }
            Err(_) => {
                self.tcp.remove(id);
                Err(self.drop(Drop::Malformed))
            }
        }
    }

    /// The address of the control connection whose allocation holds the
    /// unbound peer connection a ConnectionBind from data connection
    /// `client` names (RFC 6062 §5.4), if any: its nonce authenticates the
    /// bind. A data connection is a new 5-tuple, and a nonce is bound to
    /// the address it was issued to; without this each data connection
    /// would first be challenged (401) for a nonce of its own, and a
    /// client that keeps one nonce per allocation (coturn's uclient does)
    /// would then send its next control request with the data
    /// connection's nonce and be challenged there in turn. The request
    /// must still carry the allocation's credentials, and the connection
    /// is a TCP one: its address is not spoofed.
    pub(super) fn bind_owner(
        &self,
        req: &TurnRequest<'_>,
        client: ClientKey,
    ) -> Option<SocketAddr> {
        if !client.via.is_stream() {
            return None;
        }
        let c = self.tcp.get(req.connection_id?)?;
        if !matches!(c.state, State::Unbound) {
            return None;
        }
        self.allocations[c.slot as usize]
            .as_ref()
            .map(|a| a.client.addr)
    }

    /// RFC 6062 §5.4: ConnectionBind, the first message of a new client
    /// data connection.
    pub(super) fn connection_bind(&mut self, cx: Authed<'_, '_>, out: &mut [u8]) -> ClientAction {
        let Authed { client, req, v, .. } = cx;
        let m = method::CONNECTION_BIND;
        let tid = req.header.transaction_id;
        // Only on a TCP or TLS connection that is not a control connection.
        if !client.via.is_stream() || self.by_client.contains_key(&client) {
            return self.error(out, m, &tid, 400, Some(v));
        }
        // §5.4: an id that names no pending peer connection: 400.
        let Some(c) = req.connection_id.and_then(|id| self.tcp.get_mut(id)) else {
            return self.error(out, m, &tid, 400, Some(v));
        };
        if !matches!(c.state, State::Unbound) {
            return self.error(out, m, &tid, 400, Some(v));
        }
        // The allocation's own user only, as RFC 8656 §5 asks of every
        // request on an allocation: 441 for anyone else.
        let owner = self.allocations[c.slot as usize]
            .as_ref()
            .map(|a| a.username.clone());
        if owner.as_deref() != Some(cx.username.as_str()) {
            return self.error(out, m, &tid, 441, Some(v));
        }
        c.state = State::Bound;
        c.deadline = None;
        let id = req.connection_id.expect("found by it");
        self.stats.tcp[TcpEvent::Bound.index()] += 1;
        match self.reply(out, |_| Ok(()), m, Class::Success, &tid, Some(v)) {
            ClientAction::Reply(reply) => ClientAction::Bind { id, reply },
            other => other,
        }
    }

    /// The driver's peer connection `id` ended (either side of its splice
    /// closed, or it broke before a bind): forget it, so the allocation
    /// may connect to that peer again.
    pub fn connection_closed(&mut self, id: ConnectionId) {
        self.tcp.remove(id);
    }

    /// Bytes spliced over peer connection `id` since the last call, for
    /// the allocation's usage records.
    pub fn credit_connection(&mut self, id: ConnectionId, to_peer: u64, to_client: u64) {
        let Some(c) = self.tcp.get_mut(id) else {
            return;
        };
        if let Some(a) = self.allocations[c.slot as usize].as_mut() {
            a.usage.to_peer.bytes += to_peer;
            a.usage.to_client.bytes += to_client;
        }
    }

    /// Close peer connections past their deadline: unbound for 30 s
    /// (§5.3), or a Connect the driver never answered.
    pub(super) fn expire_connections(&mut self, env: &mut impl Env, now: Instant) {
        if self.tcp.is_empty() {
            return;
        }
        for (id, c) in self
            .tcp
            .drain_where(|c| c.deadline.is_some_and(|d| d <= now))
        {
            if matches!(c.state, State::Unbound) {
                self.stats.tcp[TcpEvent::Unbound.index()] += 1;
            }
            env.close_connection(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> PeerConnection {
        PeerConnection {
            slot: 0,
            peer: "192.0.2.1:80".parse().unwrap(),
            state: State::Unbound,
            deadline: None,
        }
    }

    #[test]
    fn ids_name_their_shard() {
        for shard in 0..3 {
            let mut t = Connections::new(shard, 3);
            for _ in 0..100 {
                let id = t.insert(conn());
                assert_eq!(shard_of(id, 3), shard as usize);
                assert_ne!(id, 0);
            }
            assert_eq!(t.count(0), 100, "no id handed out twice");
        }
    }

    #[test]
    fn bind_id_is_read_only_from_connection_bind_requests() {
        let mut buf = [0u8; 64];
        let mut w =
            Writer::new(&mut buf, method::CONNECTION_BIND, Class::Request, &[1; 12]).unwrap();
        w.u32(attr::CONNECTION_ID, 0xdead_beef).unwrap();
        let n = w.finish();
        assert_eq!(connection_bind_id(&buf[..n]), Some(0xdead_beef));
        let mut w = Writer::new(&mut buf, method::CONNECT, Class::Request, &[1; 12]).unwrap();
        w.u32(attr::CONNECTION_ID, 7).unwrap();
        let n = w.finish();
        assert_eq!(connection_bind_id(&buf[..n]), None);
        assert_eq!(connection_bind_id(b"\x40\x00\x00\x04abcd"), None);
        assert_eq!(connection_bind_id(&[]), None);
    }
}
