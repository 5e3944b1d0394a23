//! Two [`SessionCore`]s (both peers of a session) in simulated time, each
//! behind an optional NAT of `tests/common` (RFC 4787 models), on a
//! simulated internet with latency and seeded loss, with:
//!
//! - STUN servers answering Binding requests with the source they see
//!   (proto's binding helpers);
//! - TURN servers that are proto's relay core (`turn.rs`), over UDP and
//!   simulated TCP connections, with fault injection;
//! - a simulated application protocol (`peer.rs`): numbered datagrams in
//!   QUIC's first-byte range, sent on `core.route()` with
//!   `Route::wrap_into` and taken from what `handle_datagram` /
//!   `handle_stream_frame` return, as the tokio driver does;
//! - signalling done by the test (descriptions, trickled candidates).
//!
//! Everything is deterministic from the seeds: one clock, one ordered
//! queue of deliveries, one seeded RNG for losses. Every step goes into a
//! trace that is printed only when the test fails.

#![allow(dead_code)]

mod peer;
mod turn;

pub use peer::{app_datagram, parse_app, AppRx, AppSent, Peer};
pub use turn::{SimTurn, TurnLog, TurnOut, PASS, USER};

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::description::{SignalledCandidate, TrickleCandidate};
use natkit_ice::session_core::{
    ConnectionError, ConnectionStage, CoreConfig, Output, StreamId, Via, MAX_WRAP_OVERHEAD,
};
use natkit_ice::{Config, Fingerprint, Role, SessionCore, SessionEvent, TurnServer};
use natkit_proto::binding::{self, SuccessFields};
use natkit_proto::demux::{classify, PacketKind};
use natkit_proto::framing;
use natkit_proto::raw::{self, method, Attributes, Class};
use natkit_proto::turn::client::Credentials;
use natkit_proto::turn::server::{self, ClientKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::gateway::SimGateway;
use crate::common::Nat;

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The session settings the scenarios start from: seeded, and consent
/// timers short enough for tests (checks every second, lost after 15 s of
/// silence, degraded after 2.5 s).
pub fn core_config(role: Role, seed: u64) -> CoreConfig {
    let mut c = CoreConfig::new(Fingerprint([seed as u8; 32]));
    c.ice = Config {
        role,
        seed: Some(seed),
        consent_interval: secs(1),
        consent_timeout: secs(15),
        ..Config::default()
    };
    c
}

/// A TURN server entry for a session config, with the right credentials.
pub fn turn_udp(addr: SocketAddr) -> TurnServer {
    TurnServer::udp(addr, Credentials::new(USER, PASS))
}

/// The same over TCP.
pub fn turn_tcp(addr: SocketAddr) -> TurnServer {
    TurnServer::tcp(addr, Credentials::new(USER, PASS))
}

/// Relay settings for the simulated servers: the defaults, without the
/// per-source 401 limit (both peers may sit behind one address).
pub fn relay_config() -> server::Config {
    server::Config {
        unauth_rate: 0,
        ..server::Config::default()
    }
}

enum Ev {
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    },
    /// Bytes on connection `conn`, towards the server or the client.
    ToServer {
        conn: usize,
        bytes: Vec<u8>,
    },
    ToClient {
        conn: usize,
        bytes: Vec<u8>,
    },
    Connected {
        conn: usize,
    },
    Refused {
        conn: usize,
    },
    /// The client's close reaches the server.
    ClientClosed {
        conn: usize,
    },
    /// The server's reset reaches the client.
    ServerClosed {
        conn: usize,
    },
    /// A trickled candidate reaches peer `to` through the signalling.
    Signal {
        to: usize,
        cand: TrickleCandidate,
    },
    /// A datagram from peer `peer`'s base `src` reaches its gateway's
    /// `port`.
    GatewayUdp {
        peer: usize,
        src: SocketAddr,
        port: u16,
        payload: Vec<u8>,
    },
    /// The gateway's answer reaches the peer's base `to`.
    FromGateway {
        peer: usize,
        from: SocketAddr,
        to: SocketAddr,
        payload: Vec<u8>,
    },
    /// An HTTP request of the peer's reaches its gateway (after the
    /// handshake).
    HttpRequest {
        peer: usize,
        stream: StreamId,
        from: std::net::IpAddr,
        payload: Vec<u8>,
    },
    HttpData {
        peer: usize,
        stream: StreamId,
        data: Vec<u8>,
    },
    HttpEnd {
        peer: usize,
        stream: StreamId,
        result: Result<(), ConnectionError>,
    },
}

/// One-way latency between a host and its own gateway.
pub const LAN_DELAY: Duration = Duration::from_millis(1);

/// A simulated TCP connection from a peer to a TURN server.
struct Conn {
    peer: usize,
    id: StreamId,
    turn: Option<usize>,
    key: ClientKey,
    connected: bool,
    client_open: bool,
    server_open: bool,
    at_server: Vec<u8>,
    at_client: Vec<u8>,
}

/// The simulated world; see the module docs.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    /// One-way latency of every hop.
    pub delay: Duration,
    /// Chance that a UDP datagram is lost (streams are reliable).
    pub loss: f64,
    rng: StdRng,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    pub peers: Vec<Peer>,
    /// STUN servers' addresses.
    pub stun: Vec<SocketAddr>,
    /// What the STUN servers saw: (server, the source it answered).
    pub stun_seen: Vec<(SocketAddr, SocketAddr)>,
    /// RFC 5780 servers: every address of the square (primary and other
    /// IP, primary and other port) and the OTHER-ADDRESS they announce.
    pub stun_square: Vec<(SocketAddr, SocketAddr)>,
    pub turns: Vec<SimTurn>,
    conns: Vec<Conn>,
    /// Send an application datagram from each peer this often.
    app_every: Option<Duration>,
    next_app: Instant,
    /// Forward every trickled candidate to the other peer.
    pub auto_trickle: bool,
    /// How long signalling takes.
    pub signal_delay: Duration,
    trace: Vec<String>,
    /// UDP datagrams dropped by the loss model.
    pub lost: u64,
    /// Drops the UDP datagrams it returns true for, given their source
    /// (after NAT), destination and payload: losses aimed at chosen
    /// messages, whatever the timing.
    pub drop_if: Option<DropFilter>,
}

/// See [`Sim::drop_if`].
pub type DropFilter = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> bool>;

impl Drop for Sim {
    /// On failure: the end of the trace on stderr, the whole of it in a
    /// file named there. SIMTRACE=1 prints every run's whole trace.
    fn drop(&mut self) {
        if std::env::var_os("SIMTRACE").is_some() {
            for l in &self.trace {
                eprintln!("{l}");
            }
            return;
        }
        if !std::thread::panicking() {
            return;
        }
        let name = std::thread::current()
            .name()
            .unwrap_or("session_sim")
            .replace("::", "-");
        let file = std::env::temp_dir().join(format!("{name}.trace"));
        let saved = std::fs::write(&file, self.trace.join("\n"))
            .map(|()| format!("whole trace in {}", file.display()))
            .unwrap_or_else(|e| format!("trace not saved: {e}"));
        let skip = self.trace.len().saturating_sub(400);
        eprintln!(
            "--- simulation trace: the last {} of {} lines ({saved}) ---",
            self.trace.len() - skip,
            self.trace.len()
        );
        for l in &self.trace[skip..] {
            eprintln!("{l}");
        }
    }
}

/// A short name for a STUN/TURN message or data, for the trace.
fn describe(msg: &[u8]) -> String {
    let Some(&first) = msg.first() else {
        return "empty".into();
    };
    if first >= 0x40 {
        return format!("{first:#04x}.. {} bytes", msg.len());
    }
    let Ok(h) = raw::parse_datagram(msg) else {
        return format!("junk {} bytes", msg.len());
    };
    let m = match h.method() {
        method::BINDING => "Binding",
        method::ALLOCATE => "Allocate",
        method::REFRESH => "Refresh",
        method::SEND => "Send",
        method::DATA => "Data",
        method::CREATE_PERMISSION => "CreatePermission",
        method::CHANNEL_BIND => "ChannelBind",
        _ => "other",
    };
    let class = match h.class() {
        Class::Request => "request".to_string(),
        Class::Indication => "indication".to_string(),
        Class::Success => "success".to_string(),
        Class::Error => {
            let code = Attributes::new(msg, &h)
                .flatten()
                .find(|a| a.typ == raw::attr::ERROR_CODE)
                .and_then(|a| raw::decode_error_code(a.value));
            format!("error {}", code.unwrap_or(0))
        }
    };
    format!("{m} {class}")
}

impl Sim {
    /// An empty world; `seed` drives the losses.
    pub fn new(seed: u64) -> Sim {
        let start = Instant::now();
        Sim {
            start,
            now: start,
            delay: ms(10),
            loss: 0.0,
            rng: StdRng::seed_from_u64(seed),
            queue: BTreeMap::new(),
            seq: 0,
            peers: Vec::new(),
            stun: Vec::new(),
            stun_seen: Vec::new(),
            stun_square: Vec::new(),
            turns: Vec::new(),
            conns: Vec::new(),
            app_every: None,
            next_app: start,
            auto_trickle: false,
            signal_delay: ms(50),
            trace: Vec::new(),
            lost: 0,
            drop_if: None,
        }
    }

    /// Simulated time since the start.
    pub fn t(&self) -> Duration {
        self.now - self.start
    }

    /// The trace so far.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    fn log(&mut self, what: String) {
        let t = self.t();
        self.trace
            .push(format!("{:>10.3}ms {what}", t.as_secs_f64() * 1e3));
    }

    /// A STUN server at `addr`.
    pub fn add_stun(&mut self, addr: &str) -> SocketAddr {
        let a = addr.parse().unwrap();
        self.stun.push(a);
        a
    }

    /// An RFC 5780 STUN server: `primary` (the one sessions are given)
    /// and `other`, answering on all four combinations of their IPs and
    /// ports with OTHER-ADDRESS `other`.
    pub fn add_stun_5780(&mut self, primary: &str, other: &str) -> SocketAddr {
        let (p, o): (SocketAddr, SocketAddr) = (primary.parse().unwrap(), other.parse().unwrap());
        self.stun.push(p);
        for a in [
            p,
            o,
            SocketAddr::new(p.ip(), o.port()),
            SocketAddr::new(o.ip(), p.port()),
        ] {
            self.stun_square.push((a, o));
        }
        p
    }

    /// A TURN server at `addr` (UDP and TCP) with relay settings `cfg`.
    pub fn add_turn(&mut self, addr: &str, cfg: server::Config) -> usize {
        self.turns
            .push(SimTurn::new(addr.parse().unwrap(), cfg, self.start));
        self.turns.len() - 1
    }

    /// A peer on host addresses `hosts`, behind `nat` if given, its session
    /// starting now.
    pub fn add_peer(
        &mut self,
        name: &'static str,
        cfg: CoreConfig,
        hosts: &[&str],
        nat: Option<Nat>,
    ) -> usize {
        self.add_peer_behind(name, cfg, hosts, nat, None)
    }

    /// [`Sim::add_peer`] with a port-mapping gateway on its NAT (the
    /// config's `port_mapping` says whether the session uses it).
    pub fn add_peer_behind(
        &mut self,
        name: &'static str,
        cfg: CoreConfig,
        hosts: &[&str],
        nat: Option<Nat>,
        gateway: Option<SimGateway>,
    ) -> usize {
        let hosts: Vec<SocketAddr> = hosts.iter().map(|h| h.parse().unwrap()).collect();
        let core = SessionCore::new(cfg, hosts.clone(), self.now).expect("valid config");
        let mut peer = Peer::new(name, core, hosts, nat, self.now);
        peer.gateway = gateway;
        self.peers.push(peer);
        let i = self.peers.len() - 1;
        self.pump(i);
        i
    }

    /// [`core_config`] with every STUN server and every TURN server (over
    /// UDP) of the world so far.
    pub fn config(&self, role: Role, seed: u64) -> CoreConfig {
        let mut c = core_config(role, seed);
        c.stun = self.stun.clone();
        c.turn = self.turns.iter().map(|t| turn_udp(t.addr)).collect();
        c
    }

    /// Send an application datagram from each peer every `every` from now
    /// on (`None`: stop).
    pub fn app_traffic(&mut self, every: Option<Duration>) {
        self.app_every = every;
        self.next_app = self.now;
    }

    // --- signalling --------------------------------------------------------

    /// Give peer `to` peer `from`'s description, only the candidates `keep`
    /// accepts (and end-of-candidates only if all were kept). Returns
    /// whether it restarted `to` (RFC 8445 §9).
    pub fn signal_where(
        &mut self,
        from: usize,
        to: usize,
        keep: impl Fn(&SignalledCandidate) -> bool,
    ) -> bool {
        let mut d = self.peers[from].core.local_description();
        let n = d.candidates.len();
        d.candidates.retain(|c| keep(c));
        d.end_of_candidates &= d.candidates.len() == n;
        self.log(format!(
            "signal {} -> {}: {} candidates{}",
            self.peers[from].name,
            self.peers[to].name,
            d.candidates.len(),
            if d.end_of_candidates { ", end" } else { "" }
        ));
        let now = self.now;
        let restarted = self.peers[to]
            .core
            .set_remote_description(&d, now)
            .expect("valid description");
        self.pump(to);
        restarted
    }

    /// Give peer `to` peer `from`'s description as `edit` changes it
    /// (e.g. without natkit's extensions, as a standard agent's).
    pub fn signal_edited(
        &mut self,
        from: usize,
        to: usize,
        edit: impl FnOnce(&mut natkit_ice::Description),
    ) {
        let mut d = self.peers[from].core.local_description();
        edit(&mut d);
        self.log(format!(
            "signal {} -> {} (edited)",
            self.peers[from].name, self.peers[to].name
        ));
        let now = self.now;
        self.peers[to]
            .core
            .set_remote_description(&d, now)
            .expect("valid description");
        self.pump(to);
    }

    /// Give peer `to` peer `from`'s whole description.
    pub fn signal(&mut self, from: usize, to: usize) -> bool {
        self.signal_where(from, to, |_| true)
    }

    /// Both descriptions, both ways.
    pub fn exchange(&mut self) {
        self.signal(0, 1);
        self.signal(1, 0);
    }

    /// Both descriptions, both ways, only the candidates `keep` accepts.
    pub fn exchange_where(&mut self, keep: impl Fn(&SignalledCandidate) -> bool) {
        self.signal_where(0, 1, &keep);
        self.signal_where(1, 0, &keep);
    }

    /// Trickle to `to` the candidates `from` announced
    /// ([`SessionEvent::Candidate`]) in its current ICE generation that
    /// `keep` accepts (end-of-candidates too when `keep(None)`).
    pub fn trickle_where(
        &mut self,
        from: usize,
        to: usize,
        keep: impl Fn(Option<&SignalledCandidate>) -> bool,
    ) -> usize {
        let ufrag = self.peers[from].core.local_description().ufrag;
        let cands: Vec<TrickleCandidate> = self.peers[from]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                SessionEvent::Candidate(t) if t.ufrag == ufrag && keep(t.candidate.as_ref()) => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect();
        let now = self.now;
        for c in &cands {
            self.peers[to].core.add_remote_candidate(c, now);
        }
        self.log(format!(
            "trickle {} -> {}: {} candidates",
            self.peers[from].name,
            self.peers[to].name,
            cands.len()
        ));
        self.pump(to);
        cands.len()
    }

    /// ICE restart of peer `i`.
    pub fn restart(&mut self, i: usize) {
        self.log(format!("{} restarts", self.peers[i].name));
        let now = self.now;
        self.peers[i].core.restart(now);
        self.pump(i);
    }

    /// Close peer `i`'s session.
    pub fn close(&mut self, i: usize) {
        self.log(format!("{} closes", self.peers[i].name));
        let now = self.now;
        self.peers[i].core.close(now);
        self.pump(i);
    }

    // --- faults ------------------------------------------------------------

    /// TURN server `t` forgets the allocations of peer `i` (matched by the
    /// client address it sees: the peer's hosts or NAT address). Returns
    /// how many.
    pub fn forget_allocations(&mut self, t: usize, i: usize) -> usize {
        let ips: Vec<_> = self.public_ips(i);
        let keys: Vec<ClientKey> = self.turns[t]
            .live_clients()
            .into_iter()
            .filter(|k| ips.contains(&k.addr.ip()))
            .collect();
        for k in &keys {
            self.log(format!("turn{t} forgets the allocation of {}", k.addr));
            self.turns[t].forget(k);
        }
        keys.len()
    }

    /// The addresses servers see peer `i` from.
    pub fn public_ips(&self, i: usize) -> Vec<std::net::IpAddr> {
        let p = &self.peers[i];
        match &p.nat {
            Some(n) => vec![n.public_ip],
            None => p.hosts.iter().map(|h| h.ip()).collect(),
        }
    }

    /// TURN server `t` goes away: it stops answering and relaying, and
    /// resets its connections.
    pub fn turn_down(&mut self, t: usize) {
        self.log(format!("turn{t} goes down"));
        self.turns[t].down = true;
        for c in 0..self.conns.len() {
            if self.conns[c].turn == Some(t) {
                self.reset_conn(c);
            }
        }
    }

    /// The TURN server resets peer `i`'s connection `id`.
    pub fn reset_stream(&mut self, i: usize, id: StreamId) {
        let c = self
            .conns
            .iter()
            .position(|c| c.peer == i && c.id == id)
            .expect("no such connection");
        self.log(format!("{id} of {} reset", self.peers[i].name));
        self.reset_conn(c);
    }

    fn reset_conn(&mut self, c: usize) {
        if self.conns[c].server_open {
            self.close_server_side(c);
            self.schedule(self.delay, Ev::ServerClosed { conn: c });
        }
    }

    /// The server's end of connection `c` closes: the allocation on it goes
    /// with it (RFC 8656 §3.1).
    fn close_server_side(&mut self, c: usize) {
        if !std::mem::replace(&mut self.conns[c].server_open, false) {
            return;
        }
        if let Some(t) = self.conns[c].turn {
            let key = self.conns[c].key;
            self.turns[t].connection_closed(&key);
        }
    }

    /// Connection `c` could not be made, or broke: tell its core.
    fn stream_failed(&mut self, c: usize, stage: ConnectionStage, kind: io::ErrorKind) {
        let conn = &mut self.conns[c];
        if !std::mem::replace(&mut conn.client_open, false) {
            return;
        }
        let (i, id) = (conn.peer, conn.id);
        self.log(format!("{id} of {} closed: {kind}", self.peers[i].name));
        let e = ConnectionError::new(stage, &io::Error::from(kind));
        let now = self.now;
        self.peers[i].core.handle_stream_closed(id, e, now);
        self.pump(i);
    }

    /// The open connections of peer `i`.
    pub fn streams_of(&self, i: usize) -> Vec<StreamId> {
        self.conns
            .iter()
            .filter(|c| c.peer == i && c.connected && c.client_open)
            .map(|c| c.id)
            .collect()
    }

    // --- running -------------------------------------------------------------

    /// Run until `until` (simulated time since the start) or until `stop`
    /// holds; returns whether it did.
    pub fn run_until(&mut self, until: Duration, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.start + until;
        let mut steps = 0u32;
        loop {
            if stop(self) {
                return true;
            }
            steps += 1;
            assert!(steps < 1_000_000, "the simulation does not settle");
            let next = self.next_time();
            if next > deadline {
                self.now = self.now.max(deadline);
                return stop(self);
            }
            self.now = self.now.max(next);
            self.step();
        }
    }

    /// Run for `d` more, or until `stop` holds.
    pub fn run_for(&mut self, d: Duration, stop: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.t() + d;
        self.run_until(until, stop)
    }

    fn next_time(&self) -> Instant {
        let mut t = self
            .queue
            .keys()
            .next()
            .map(|k| k.0)
            .unwrap_or(self.now + secs(3600));
        for p in &self.peers {
            t = t.min(p.timer);
        }
        for s in &self.turns {
            t = t.min(s.server.poll_timeout());
        }
        if self.app_every.is_some() {
            t = t.min(self.next_app);
        }
        t
    }

    fn step(&mut self) {
        while let Some(e) = self.queue.first_entry() {
            if e.key().0 > self.now {
                break;
            }
            let ev = e.remove();
            self.handle(ev);
        }
        for i in 0..self.peers.len() {
            if self.peers[i].timer <= self.now {
                let now = self.now;
                self.peers[i].core.handle_timeout(now);
                self.pump(i);
            }
        }
        for s in &mut self.turns {
            s.handle_timeout(self.now);
        }
        if let Some(every) = self.app_every {
            if self.next_app <= self.now {
                self.next_app = self.now + every;
                self.send_app();
            }
        }
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    /// Drain peer `i`'s core until it only has a timer left (as a driver
    /// must after every input).
    fn pump(&mut self, i: usize) {
        for _ in 0..100_000 {
            match self.peers[i].core.poll_output() {
                Output::Transmit(t) => match t.via {
                    Via::Base(b) => self.send_udp(Some(i), b, t.to, t.payload),
                    Via::Stream(s) => self.stream_send(i, s, t.payload),
                },
                Output::Connect { stream, server, .. } => self.connect(i, stream, server),
                Output::Http {
                    stream,
                    from,
                    to,
                    request,
                } => self.http_request(i, stream, from, to, request),
                Output::Disconnect { stream } => self.disconnect(i, stream),
                Output::OpenSockets { ip, count } => {
                    let p = &mut self.peers[i];
                    let mut opened = Vec::with_capacity(count);
                    for _ in 0..count {
                        opened.push(SocketAddr::new(ip, p.next_ephemeral));
                        p.next_ephemeral += 1;
                    }
                    p.hosts.extend_from_slice(&opened);
                    p.punch_opened += opened.len();
                    let name = p.name;
                    self.log(format!("{name} opens {count} sockets"));
                    let now = self.now;
                    self.peers[i].core.handle_sockets_opened(opened, now);
                }
                Output::CloseSockets(addrs) => {
                    let p = &mut self.peers[i];
                    p.hosts.retain(|h| !addrs.contains(h));
                    p.punch_closed += addrs.len();
                    let name = p.name;
                    self.log(format!("{name} closes {} sockets", addrs.len()));
                }
                Output::Event(e) => self.on_event(i, e),
                Output::Timeout(t) => {
                    self.peers[i].timer = t;
                    return;
                }
            }
        }
        panic!("{}'s core never stops producing output", self.peers[i].name);
    }

    fn on_event(&mut self, i: usize, e: SessionEvent) {
        self.log(format!("{} event {e:?}", self.peers[i].name));
        if let (true, SessionEvent::Candidate(c)) = (self.auto_trickle, &e) {
            let to = 1 - i;
            self.schedule(
                self.signal_delay,
                Ev::Signal {
                    to,
                    cand: c.clone(),
                },
            );
        }
        let t = self.t();
        self.peers[i].events.push((t, e));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Udp { src, dst, payload } => self.deliver_udp(src, dst, payload),
            Ev::ToServer { conn, bytes } => self.arrive_at_server(conn, bytes),
            Ev::ToClient { conn, bytes } => self.arrive_at_client(conn, bytes),
            Ev::Connected { conn } => {
                let c = &mut self.conns[conn];
                c.connected = true;
                let (i, id) = (c.peer, c.id);
                self.log(format!("{id} of {} connected", self.peers[i].name));
                let now = self.now;
                self.peers[i].core.handle_stream_connected(id, now);
                self.pump(i);
            }
            Ev::Refused { conn } => {
                self.conns[conn].server_open = false;
                self.stream_failed(
                    conn,
                    ConnectionStage::Connect,
                    io::ErrorKind::ConnectionRefused,
                );
            }
            Ev::ClientClosed { conn } => self.close_server_side(conn),
            Ev::ServerClosed { conn } => {
                self.stream_failed(
                    conn,
                    ConnectionStage::Established,
                    io::ErrorKind::ConnectionReset,
                );
            }
            Ev::Signal { to, cand } => {
                let now = self.now;
                self.peers[to].core.add_remote_candidate(&cand, now);
                self.pump(to);
            }
            Ev::GatewayUdp {
                peer,
                src,
                port,
                payload,
            } => {
                let now = self.now;
                let Some(gw) = &mut self.peers[peer].gateway else {
                    return;
                };
                let lan = gw.lan;
                for (p, answer) in gw.udp(src, port, &payload, now) {
                    let from = SocketAddr::new(lan, p);
                    self.schedule(
                        LAN_DELAY,
                        Ev::FromGateway {
                            peer,
                            from,
                            to: src,
                            payload: answer,
                        },
                    );
                }
            }
            Ev::FromGateway {
                peer,
                from,
                to,
                mut payload,
            } => {
                if self.peers[peer].down {
                    return;
                }
                self.log(format!("gateway {from} -> {to}: {} bytes", payload.len()));
                let now = self.now;
                let r = self.peers[peer]
                    .core
                    .handle_datagram(now, to, from, &mut payload);
                assert!(r.is_none(), "the gateway's answer went to the application");
                self.pump(peer);
            }
            Ev::HttpRequest {
                peer,
                stream,
                from,
                payload,
            } => {
                if self.peers[peer].disconnects.contains(&stream) {
                    return;
                }
                let now = self.now;
                let Some(gw) = &mut self.peers[peer].gateway else {
                    return;
                };
                if let Some(resp) = gw.http(from, &payload, now) {
                    self.schedule(
                        LAN_DELAY,
                        Ev::HttpData {
                            peer,
                            stream,
                            data: resp,
                        },
                    );
                    self.schedule(
                        LAN_DELAY * 2,
                        Ev::HttpEnd {
                            peer,
                            stream,
                            result: Ok(()),
                        },
                    );
                }
            }
            Ev::HttpData { peer, stream, data } => {
                if self.peers[peer].disconnects.contains(&stream) {
                    return;
                }
                let now = self.now;
                self.peers[peer].core.handle_http_data(stream, &data, now);
                self.pump(peer);
            }
            Ev::HttpEnd {
                peer,
                stream,
                result,
            } => {
                if self.peers[peer].disconnects.contains(&stream) {
                    return;
                }
                let now = self.now;
                self.peers[peer].core.handle_http_end(stream, result, now);
                self.pump(peer);
            }
        }
    }

    // --- UDP -------------------------------------------------------------------

    /// A datagram from `src` (peer `from`'s base, or a server) to `dst`.
    fn send_udp(
        &mut self,
        from: Option<usize>,
        src: SocketAddr,
        dst: SocketAddr,
        payload: Vec<u8>,
    ) {
        let mut src = src;
        if let Some(i) = from {
            let p = &mut self.peers[i];
            assert!(
                p.hosts.contains(&src),
                "{} sent from {src}, not one of its bases",
                p.name
            );
            if p.down {
                return;
            }
            // The LAN: the gateway itself, and the SSDP multicast group.
            if let Some(gw) = &p.gateway {
                if dst.ip() == gw.lan || dst.ip().is_multicast() {
                    let port = dst.port();
                    self.log(format!("send {src} -> gateway port {port}"));
                    self.schedule(
                        LAN_DELAY,
                        Ev::GatewayUdp {
                            peer: i,
                            src,
                            port,
                            payload,
                        },
                    );
                    return;
                }
            }
            let forwarded = p.forwarded.get(&(src, dst)).copied();
            if let Some(nat) = &mut p.nat {
                src = match forwarded {
                    // The reply direction of a forwarded flow (conntrack).
                    Some(port) => SocketAddr::new(nat.public_ip, port),
                    None => nat.outbound(src, dst),
                };
            }
        }
        if self.loss > 0.0 && self.rng.gen::<f64>() < self.loss {
            self.lost += 1;
            self.log(format!("lost {src} -> {dst} {}", describe(&payload)));
            return;
        }
        if self.drop_if.as_mut().is_some_and(|f| f(src, dst, &payload)) {
            self.log(format!("dropped {src} -> {dst} {}", describe(&payload)));
            return;
        }
        self.log(format!("send {src} -> {dst} {}", describe(&payload)));
        self.schedule(self.delay, Ev::Udp { src, dst, payload });
    }

    fn deliver_udp(&mut self, src: SocketAddr, dst: SocketAddr, mut payload: Vec<u8>) {
        if self.stun.contains(&dst) || self.stun_square.iter().any(|(a, _)| *a == dst) {
            return self.answer_stun(src, dst, &payload);
        }
        if let Some(t) = self.turns.iter().position(|t| t.addr == dst) {
            if self.turns[t].down {
                return;
            }
            let key = ClientKey {
                addr: src,
                via: server::Via::Udp(0),
            };
            let now = self.now;
            let out = self.turns[t].on_client(key, &payload, now);
            return self.turn_out(t, out);
        }
        if let Some((t, relay)) = self
            .turns
            .iter()
            .enumerate()
            .find_map(|(t, s)| Some((t, s.relay_at(dst)?)))
        {
            if self.turns[t].down {
                return;
            }
            let now = self.now;
            let out = self.turns[t].on_peer(relay, src, &payload, now);
            if out.is_none() {
                self.log(format!("turn{t} drops {src} -> {dst}"));
            }
            return self.turn_out(t, out.into_iter().collect());
        }
        for j in 0..self.peers.len() {
            let p = &self.peers[j];
            let forward = p
                .gateway
                .as_ref()
                .and_then(|g| g.forward(dst.port(), self.now));
            let mut via_forward = false;
            let (owns, local) = match &p.nat {
                Some(nat) if nat.public_ip == dst.ip() => {
                    // A port the gateway forwards lets anyone in.
                    let mapped = nat.inbound(dst.port(), src);
                    via_forward = mapped.is_none() && forward.is_some();
                    (true, mapped.or(forward))
                }
                Some(_) => (false, None),
                None => (p.hosts.contains(&dst), Some(dst)),
            };
            if !owns {
                continue;
            }
            let (name, down) = (p.name, p.down);
            let Some(local) = local else {
                self.log(format!("nat of {name} filters {src} -> {dst}"));
                return;
            };
            if down {
                return;
            }
            if via_forward {
                self.peers[j].forwarded.insert((local, src), dst.port());
            }
            self.log(format!(
                "deliver {src} -> {dst} (on {local}) {}",
                describe(&payload)
            ));
            let now = self.now;
            let core = &mut self.peers[j].core;
            // As the driver does: the peer's QUIC straight to the
            // application, the rest through the core.
            if classify(&payload, false) == PacketKind::Quic && core.accept_app_datagram(local, src)
            {
                self.app_rx(j, Via::Base(local), src, false, &payload);
            } else if let Some(r) = core.handle_datagram(now, local, src, &mut payload) {
                let ours = self.turns.iter().any(|t| t.addr == src);
                self.app_rx(j, Via::Base(local), src, ours, &payload[r]);
            }
            self.pump(j);
            return;
        }
        self.log(format!("no route {src} -> {dst}"));
    }

    fn answer_stun(&mut self, src: SocketAddr, server: SocketAddr, msg: &[u8]) {
        let Ok(req) = binding::parse_request(msg) else {
            return;
        };
        self.stun_seen.push((server, src));
        let mut out = [0u8; 128];
        let n = binding::write_success(
            &mut out,
            &req.transaction_id,
            &SuccessFields {
                mapped: src,
                response_origin: None,
                other_address: self
                    .stun_square
                    .iter()
                    .find(|(a, _)| *a == server)
                    .map(|(_, o)| *o),
                padding: None,
                fingerprint: req.fingerprint,
            },
        )
        .expect("fits");
        self.send_udp(None, server, src, out[..n].to_vec());
    }

    fn turn_out(&mut self, t: usize, out: Vec<TurnOut>) {
        for o in out {
            match o {
                TurnOut::ToClient(key, bytes) => match key.via {
                    server::Via::Udp(_) => {
                        let from = self.turns[t].addr;
                        self.send_udp(None, from, key.addr, bytes);
                    }
                    server::Via::Stream(conn) => {
                        let conn = conn as usize;
                        if self.conns[conn].server_open {
                            self.schedule(self.delay, Ev::ToClient { conn, bytes });
                        }
                    }
                },
                TurnOut::ToPeer { from, to, data } => self.send_udp(None, from, to, data),
            }
        }
    }

    // --- TCP -------------------------------------------------------------------

    fn connect(&mut self, i: usize, id: StreamId, server: SocketAddr) {
        let turn = self
            .turns
            .iter()
            .position(|t| t.addr == server && t.tcp && !t.down);
        let p = &mut self.peers[i];
        p.connects.push(id);
        let internal = SocketAddr::new(p.hosts[0].ip(), p.next_ephemeral);
        p.next_ephemeral += 1;
        let addr = match &mut p.nat {
            Some(nat) => nat.outbound(internal, server),
            None => internal,
        };
        let refused = turn.is_none() || p.down;
        let conn = self.conns.len();
        self.conns.push(Conn {
            peer: i,
            id,
            turn,
            key: ClientKey {
                addr,
                via: server::Via::Stream(conn as u64),
            },
            connected: false,
            client_open: true,
            server_open: !refused,
            at_server: Vec::new(),
            at_client: Vec::new(),
        });
        self.log(format!(
            "{} connects {id} {addr} -> {server}",
            self.peers[i].name
        ));
        // SYN, SYN-ACK (or RST): one round trip.
        let ev = if refused {
            Ev::Refused { conn }
        } else {
            Ev::Connected { conn }
        };
        self.schedule(self.delay * 2, ev);
    }

    /// An HTTP exchange with peer `i`'s gateway (UPnP): after the TCP
    /// handshake the request arrives; anything else is refused.
    fn http_request(
        &mut self,
        i: usize,
        stream: StreamId,
        from: std::net::IpAddr,
        to: SocketAddr,
        payload: Vec<u8>,
    ) {
        self.log(format!("{} HTTP {stream} -> {to}", self.peers[i].name));
        let ours = self.peers[i]
            .gateway
            .as_ref()
            .is_some_and(|g| g.lan == to.ip() && to.port() == crate::common::gateway::HTTP_PORT);
        let ev = if ours {
            Ev::HttpRequest {
                peer: i,
                stream,
                from,
                payload,
            }
        } else {
            Ev::HttpEnd {
                peer: i,
                stream,
                result: Err(ConnectionError::new(
                    ConnectionStage::Connect,
                    &io::Error::from(io::ErrorKind::ConnectionRefused),
                )),
            }
        };
        self.schedule(LAN_DELAY * 3, ev);
    }

    fn disconnect(&mut self, i: usize, id: StreamId) {
        self.peers[i].disconnects.push(id);
        let Some(conn) = self.conns.iter().position(|c| c.peer == i && c.id == id) else {
            return;
        };
        self.log(format!("{} disconnects {id}", self.peers[i].name));
        if std::mem::replace(&mut self.conns[conn].client_open, false) {
            // What was sent before still arrives, then the close.
            self.schedule(self.delay, Ev::ClientClosed { conn });
        }
    }

    fn stream_send(&mut self, i: usize, id: StreamId, bytes: Vec<u8>) {
        let Some(conn) = self
            .conns
            .iter()
            .position(|c| c.peer == i && c.id == id && c.connected && c.client_open)
        else {
            panic!("{} sent on {id}, which is not open", self.peers[i].name);
        };
        if self.peers[i].down {
            return;
        }
        self.log(format!(
            "{} {id} sends {}",
            self.peers[i].name,
            describe(&bytes)
        ));
        self.schedule(self.delay, Ev::ToServer { conn, bytes });
    }

    /// Cut whole frames (RFC 8489 §6.2.2, RFC 8656 §12.5: ChannelData padded
    /// to 4 bytes) off `buf`.
    fn frames(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match framing::next_frame(buf, true, 65536 + 64) {
                Ok(Some(f)) => {
                    out.push(buf[..f.message_len].to_vec());
                    buf.drain(..f.consumed);
                }
                Ok(None) => return out,
                Err(e) => panic!("bad framing on a TURN connection: {e}"),
            }
        }
    }

    fn arrive_at_server(&mut self, conn: usize, bytes: Vec<u8>) {
        let c = &mut self.conns[conn];
        if !c.server_open {
            return;
        }
        let Some(t) = c.turn else { return };
        c.at_server.extend_from_slice(&bytes);
        let frames = Self::frames(&mut c.at_server);
        let key = c.key;
        for f in frames {
            let now = self.now;
            let out = self.turns[t].on_client(key, &f, now);
            self.turn_out(t, out);
        }
    }

    fn arrive_at_client(&mut self, conn: usize, bytes: Vec<u8>) {
        let c = &mut self.conns[conn];
        if !c.client_open {
            return;
        }
        c.at_client.extend_from_slice(&bytes);
        let frames = Self::frames(&mut c.at_client);
        let (i, id) = (c.peer, c.id);
        if self.peers[i].down {
            return;
        }
        for mut f in frames {
            self.log(format!(
                "{} {id} receives {}",
                self.peers[i].name,
                describe(&f)
            ));
            let now = self.now;
            let server = self.conns[conn].key.addr;
            if let Some(r) = self.peers[i].core.handle_stream_frame(now, id, &mut f) {
                self.app_rx(i, Via::Stream(id), server, true, &f[r]);
            }
            self.pump(i);
        }
    }

    // --- the application ---------------------------------------------------------

    fn send_app(&mut self) {
        let at = self.t();
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            if p.down || p.core.is_closed() {
                continue;
            }
            let seq = p.next_seq;
            p.next_seq += 1;
            let Some(route) = p.core.route() else {
                p.unrouted += 1;
                continue;
            };
            let data = app_datagram(i, seq);
            let mut out = vec![0u8; data.len() + MAX_WRAP_OVERHEAD];
            let n = route.wrap_into(&data, &mut out).expect("wraps");
            out.truncate(n);
            p.sent.push(AppSent { at, seq, route });
            match route.via {
                Via::Base(b) => self.send_udp(Some(i), b, route.to, out),
                Via::Stream(s) => self.stream_send(i, s, out),
            }
        }
    }

    fn app_rx(&mut self, i: usize, on: Via, from: SocketAddr, ours: bool, data: &[u8]) {
        let Some((sender, seq)) = parse_app(data) else {
            panic!(
                "{} got a corrupt application datagram from {from}: {data:02x?}",
                self.peers[i].name
            );
        };
        assert_ne!(sender, i, "{} got its own datagram", self.peers[i].name);
        self.log(format!(
            "{} app rx #{seq} from {from}{}",
            self.peers[i].name,
            if ours { " (our relay)" } else { "" }
        ));
        let at = self.t();
        self.peers[i].rx.push(AppRx {
            at,
            seq,
            on,
            from,
            via_our_relay: ours,
        });
    }

    // --- state -------------------------------------------------------------------

    /// Both peers connected.
    pub fn both_connected(&self) -> bool {
        self.peers.iter().all(|p| p.connected())
    }

    /// Checking is over on both sides ([`crate::common::checking_over`]).
    pub fn checking_over(&self) -> bool {
        self.peers
            .iter()
            .all(|p| crate::common::checking_over(&p.core.check_list()))
    }

    /// Both peers done gathering.
    pub fn both_gathered(&self) -> bool {
        self.peers.iter().all(|p| p.core.gathering_done())
    }
}
