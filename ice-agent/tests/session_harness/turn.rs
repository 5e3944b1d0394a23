//! A simulated TURN server: proto's real relay core ([`Server`]) behind a
//! fake [`Env`] whose relayed addresses live in the simulated internet,
//! reachable over UDP and simulated TCP, with the faults the core will not
//! produce on demand (a forgotten allocation, Refresh requests left
//! unanswered, the server gone).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use natkit_proto::nonce::NonceKey;
use natkit_proto::raw::{self, attr, method, Attributes, Class};
use natkit_proto::rest::RestSecrets;
use natkit_proto::turn::request;
use natkit_proto::turn::server::{
    ClientAction, ClientKey, Config, Credentials, Drop as RelayDrop, EndReason, Env, OpenedRelay,
    QuotaError, RelayError, RelayId, RelayRequest, Server, MAX_FRAMING,
};

/// The one user the simulated servers know.
pub const USER: &str = "sim-user";
/// Its password.
pub const PASS: &str = "sim-password";

/// First relayed port; relayed addresses are the server's IP and a port
/// from here up.
const RELAY_PORT_BASE: u16 = 49152;

/// The relay's outside world: relay "sockets" are addresses in the
/// simulated internet; the quota and the free ports are knobs for 486 and
/// 508.
pub struct SimEnv {
    ip: IpAddr,
    /// The wall clock the nonces and REST expiry read.
    system_now: SystemTime,
    relays: BTreeMap<RelayId, SocketAddr>,
    next_id: RelayId,
    /// Relay ports left; at 0 an Allocate gets 508 (Insufficient Capacity).
    pub ports_left: usize,
    /// Allocations per user; past it an Allocate gets 486 (Allocation
    /// Quota Reached).
    pub quota: usize,
    per_user: HashMap<String, usize>,
}

impl Env for SimEnv {
    fn system_now(&self) -> SystemTime {
        self.system_now
    }

    fn open_relay(&mut self, req: RelayRequest) -> Result<OpenedRelay, RelayError> {
        if req.family != usize::from(self.ip.is_ipv6()) {
            return Err(RelayError::Family);
        }
        if self.ports_left == 0 {
            return Err(RelayError::NoPorts);
        }
        self.ports_left -= 1;
        let id = self.next_id;
        self.next_id += 1;
        let addr = SocketAddr::new(self.ip, RELAY_PORT_BASE + id as u16);
        self.relays.insert(id, addr);
        Ok(OpenedRelay {
            id,
            addr,
            token: None,
        })
    }

    fn close_relay(&mut self, id: RelayId) {
        if self.relays.remove(&id).is_some() {
            self.ports_left += 1;
        }
    }

    fn peer_allowed(&self, _: SocketAddr) -> bool {
        true
    }

    fn peer_ip_allowed(&self, _: IpAddr) -> bool {
        true
    }

    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        ip == self.ip
    }

    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError> {
        let n = self.per_user.entry(user.to_string()).or_default();
        if *n >= self.quota {
            return Err(QuotaError::PerUser);
        }
        *n += 1;
        Ok(())
    }

    fn release_allocation(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A TURN request or response the server saw or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnLog {
    /// Simulated time.
    pub at: Duration,
    /// The client (its address as the server sees it, and how it came).
    pub client: ClientKey,
    /// STUN method.
    pub method: u16,
    /// Request, success or error.
    pub class: Class,
    /// ERROR-CODE of an error response.
    pub code: Option<u16>,
    /// LIFETIME of a request (a Refresh with 0 deletes).
    pub lifetime: Option<u32>,
}

/// What the server sends.
pub enum TurnOut {
    /// To a client, on the way it came (UDP listener or its connection).
    ToClient(ClientKey, Vec<u8>),
    /// To a peer, from a relayed address.
    ToPeer {
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    },
}

/// One simulated TURN server; see the module docs.
pub struct SimTurn {
    /// Its UDP (and TCP) listening address.
    pub addr: SocketAddr,
    /// Whether it accepts TCP connections on `addr`.
    pub tcp: bool,
    /// The relay core.
    pub server: Server,
    /// Its environment (quota and port knobs).
    pub env: SimEnv,
    /// Gone: nothing reaches it or leaves it, its connections are reset.
    pub down: bool,
    /// Refresh requests from these client IPs go unanswered (a refresh
    /// that fails; deletions too).
    pub ignore_refresh_from: Vec<IpAddr>,
    /// Every request and response.
    pub log: Vec<TurnLog>,
    /// Datagrams from peers the relay did not pass on: when, from whom,
    /// to which relayed address, and why (e.g. no permission yet).
    pub peer_drops: Vec<(Duration, SocketAddr, SocketAddr, RelayDrop)>,
    start: Instant,
    system_start: SystemTime,
    out: Vec<u8>,
}

impl SimTurn {
    /// A server at `addr` with the relay settings `cfg`, started at `start`.
    pub fn new(addr: SocketAddr, cfg: Config, start: Instant) -> SimTurn {
        let users = HashMap::from([(USER.to_string(), PASS.to_string())]);
        let creds = Credentials::new(users, RestSecrets::new(Vec::<String>::new()));
        // A fixed key: the nonces (and so the whole run) are reproducible.
        let server = Server::new(cfg, Arc::new(creds), NonceKey::from_bytes([9; 32]), start);
        let system_start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        SimTurn {
            addr,
            tcp: true,
            server,
            env: SimEnv {
                ip: addr.ip(),
                system_now: system_start,
                relays: BTreeMap::new(),
                next_id: 0,
                ports_left: 1000,
                quota: 10,
                per_user: HashMap::new(),
            },
            down: false,
            ignore_refresh_from: Vec::new(),
            log: Vec::new(),
            peer_drops: Vec::new(),
            start,
            system_start,
            out: vec![0; 65536 + MAX_FRAMING],
        }
    }

    fn tick(&mut self, now: Instant) {
        self.env.system_now = self.system_start + (now - self.start);
    }

    fn record(
        &mut self,
        at: Duration,
        client: ClientKey,
        h: &raw::Header,
        code: Option<u16>,
        lifetime: Option<u32>,
    ) {
        self.log.push(TurnLog {
            at,
            client,
            method: h.method(),
            class: h.class(),
            code,
            lifetime,
        });
    }

    /// The relay socket at `addr`, if it is one of this server's.
    pub fn relay_at(&self, addr: SocketAddr) -> Option<RelayId> {
        self.env
            .relays
            .iter()
            .find_map(|(id, a)| (*a == addr).then_some(*id))
    }

    /// A message from `client` (a datagram on the listener, or a frame from
    /// its connection).
    pub fn on_client(&mut self, client: ClientKey, msg: &[u8], now: Instant) -> Vec<TurnOut> {
        self.tick(now);
        let at = now - self.start;
        if let Ok(req) = request::parse(msg) {
            let h = req.header;
            if h.class() == Class::Request {
                self.record(at, client, &h, None, req.lifetime);
                if h.method() == method::REFRESH
                    && self.ignore_refresh_from.contains(&client.addr.ip())
                {
                    return Vec::new();
                }
            }
        }
        match self
            .server
            .handle_client(&mut self.env, client, msg, now, &mut self.out)
        {
            ClientAction::Reply(n) => {
                let reply = self.out[..n].to_vec();
                if let Ok(h) = raw::parse_datagram(&reply) {
                    let code = Attributes::new(&reply, &h)
                        .flatten()
                        .find(|a| a.typ == attr::ERROR_CODE)
                        .and_then(|a| raw::decode_error_code(a.value));
                    self.record(at, client, &h, code, None);
                }
                vec![TurnOut::ToClient(client, reply)]
            }
            ClientAction::Relay { relay, peer, data } => match self.env.relays.get(&relay) {
                Some(&from) => vec![TurnOut::ToPeer {
                    from,
                    to: peer,
                    data: msg[data].to_vec(),
                }],
                None => Vec::new(),
            },
            ClientAction::Drop(_) => Vec::new(),
            // Sessions allocate UDP relays: no RFC 6062 Connect or
            // ConnectionBind reaches this simulated relay.
            ClientAction::Connect { .. } | ClientAction::Bind { .. } => {
                panic!("simulated relay: an RFC 6062 request from {client:?}")
            }
        }
    }

    /// A datagram from `peer` on relay socket `relay`: framed for its
    /// client, if a permission lets it through.
    pub fn on_peer(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<TurnOut> {
        self.tick(now);
        let route = match self.server.route_peer(relay, peer, data.len(), now) {
            Ok(r) => r,
            Err(why) => {
                let to = self.env.relays.get(&relay).copied();
                self.peer_drops
                    .push((now - self.start, peer, to.unwrap_or(self.addr), why));
                return None;
            }
        };
        let n = route.framing.write(&mut self.out, data)?;
        Some(TurnOut::ToClient(route.client, self.out[..n].to_vec()))
    }

    /// Expire what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        if now >= self.server.poll_timeout() {
            self.server.handle_timeout(&mut self.env, now);
        }
    }

    /// The clients (as the server sees them) whose Allocate succeeded and
    /// whose allocation still lives.
    pub fn live_clients(&self) -> Vec<ClientKey> {
        let mut keys: Vec<ClientKey> = self
            .log
            .iter()
            .filter(|l| l.method == method::ALLOCATE && l.class == Class::Success)
            .map(|l| l.client)
            .filter(|k| self.server.allocation(k).is_some())
            .collect();
        keys.dedup();
        keys
    }

    /// Forget `client`'s allocation, as a relay that restarted or expired
    /// it would: its next request gets 437.
    pub fn forget(&mut self, client: &ClientKey) {
        let now = self.now();
        self.server
            .client_gone(&mut self.env, client, EndReason::Expired, now);
    }

    /// The simulated clock's time, as `tick` last set it.
    fn now(&self) -> Instant {
        let since = self.env.system_now.duration_since(self.system_start);
        self.start + since.unwrap_or_default()
    }

    /// The client's connection ended (its allocation goes with it,
    /// RFC 8656 §3.1).
    pub fn connection_closed(&mut self, client: &ClientKey) {
        let now = self.now();
        self.server
            .client_gone(&mut self.env, client, EndReason::ClientGone, now);
    }

    /// Log entries matching `f`.
    pub fn count(&self, f: impl Fn(&TurnLog) -> bool) -> usize {
        self.log.iter().filter(|l| f(l)).count()
    }

    /// How many messages of method `m`, class `class` and error code
    /// `code` the server exchanged with clients at IP `ip`.
    pub fn count_of(&self, ip: &str, m: u16, class: Class, code: Option<u16>) -> usize {
        let ip: IpAddr = ip.parse().unwrap();
        self.count(|l| {
            l.client.addr.ip() == ip && l.method == m && l.class == class && l.code == code
        })
    }
}
