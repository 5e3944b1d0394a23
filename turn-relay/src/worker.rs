//! One shard of the relay: a thread with its own mio poll, its own
//! SO_REUSEPORT listener sockets, the relay sockets of the allocations it
//! made, and the sans-IO [`Server`] core that owns those allocations.
//!
//! The kernel hashes each client's 5-tuple to one listener socket, so a
//! client's messages always reach the shard that holds its allocation: no
//! locks on the data path. Listeners are read with recvmmsg; answers and
//! peer data to clients leave in sendmmsg batches, flushed once per poll
//! round. TCP/TLS clients reach a shard through bounded per-connection
//! queues ([`StreamLink`]).
//!
//! Every poll round gives each busy source a fixed budget (a few receive
//! batches per UDP listener and relay socket, a few messages per TCP
//! connection and a cap for all of them) and comes back at once for what
//! is left: no source, however fast it sends, keeps the shard from the
//! others. A connection whose queue is full is not read until the shard
//! takes from it (the reader waits), so nothing grows without bound.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use natkit_proto::turn::server::{
    ClientAction, ClientKey, Config as CoreConfig, ConnectionId, EndReason, Env, Framing,
    OpenedRelay, QuotaError, RelayError, RelayId, RelayRequest, Server, Via, MAX_FRAMING,
};
use natkit_runtime::batch::{gso, RecvBatch, SendBatch};
use natkit_runtime::shutdown::Shutdown;
use tokio::sync::mpsc::error::{TryRecvError as StreamTryRecvError, TrySendError};
use tokio::sync::mpsc::{Receiver as StreamReceiver, Sender as StreamSender};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::metrics::{Metrics, WorkerCounters};
use crate::peer_policy::{PeerPolicy, Verdict};
use crate::ports::PortRequest;
use crate::shared::{RelayAddress, Shared};
use crate::tcp::{self, BindAnswer, PeerStream, Splice, SpliceBytes};
use crate::usage::{ClientTransport, UsageSender};

/// Datagrams per recvmmsg/sendmmsg.
const BATCH: usize = 64;
/// Largest datagram relayed. Bigger ones are truncated by the kernel and
/// dropped as malformed.
pub const MAX_DATAGRAM: usize = 8192;
/// Receive errors tolerated in one drain before leaving a socket for the
/// next readiness event.
const MAX_RECV_ERRORS: u32 = 8;
/// Longest a shard sleeps without looking at timers and signals.
const TICK: Duration = Duration::from_millis(100);
/// Receive batches per UDP listener in one poll round.
const LISTENER_BATCHES: usize = 8;
/// Receive batches per relay socket in one poll round.
const RELAY_BATCHES: usize = 4;
/// Relay sockets read in one poll round; the others wait their turn.
const RELAYS_PER_ROUND: usize = 64;
/// Messages from one TCP/TLS connection in one poll round.
const STREAM_PER_CONN: usize = 8;
/// Messages from all TCP/TLS connections in one poll round: about what
/// the UDP listeners' budget costs when their requests need a MAC each.
const STREAM_PER_ROUND: usize = 64;

const WAKER: Token = Token(0);
const LISTENER_BASE: usize = 1;
const RELAY_BASE: usize = 1 << 20;

/// A TCP/TLS connection as its shard sees it: both queues are bounded.
pub struct StreamLink {
    pub conn: u64,
    /// The client's address.
    pub addr: SocketAddr,
    /// TLS (else plain TCP), for usage records.
    pub tls: bool,
    /// Frames read from the client. When full, the reader stops reading
    /// the connection until the shard takes some. Disconnected (and empty)
    /// once the reader is done: the allocation ends (RFC 8656 §3.1) after
    /// every frame read before is answered.
    pub frames: StreamReceiver<Vec<u8>>,
    /// Answers and peer data for the client; the writer task sends them.
    /// Dropping it lets the writer finish what is queued and close.
    pub out: StreamSender<Vec<u8>>,
    /// Set while the connection is in the shard's ready list or on its way
    /// there ([`WorkerHandle::ready`]), so it is there at most once.
    pub scheduled: Arc<AtomicBool>,
    /// Whether the connection holds an allocation, as the core says
    /// ([`Env::stream_held`]): the reader's idle timeout applies only
    /// while it does not.
    pub held: watch::Sender<bool>,
}

/// A message for a shard from the TCP/TLS side. At most one `Opened` and
/// one outstanding `Ready` per connection, so the inbox stays bounded by
/// the connection cap; the messages of TCP allocations (RFC 6062) are
/// bounded by their peer connections, at most `max-peer-connections` per
/// allocation, and one `Bind` per data connection at a time.
pub enum Inbox {
    /// A connection opened.
    Opened(StreamLink),
    /// A connection has frames (or has ended): put it on the ready list.
    Ready(u64),
    /// A Connect attempt ended (RFC 6062 §5.2): the stream if it connected.
    Connected {
        id: ConnectionId,
        stream: Option<PeerStream>,
    },
    /// A peer connected to the relayed address of TCP relay `relay` (§5.3).
    PeerAccepted {
        relay: RelayId,
        peer: SocketAddr,
        stream: PeerStream,
    },
    /// A client data connection's ConnectionBind (§5.4), routed to this
    /// shard by its CONNECTION-ID.
    Bind {
        conn: u64,
        addr: SocketAddr,
        frame: Vec<u8>,
        answer: oneshot::Sender<BindAnswer>,
    },
    /// The splice of peer connection `id` ended.
    SpliceEnded(ConnectionId),
}

/// How the rest of the relay reaches a shard.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Inbox>,
    waker: Arc<Waker>,
}

impl WorkerHandle {
    /// Queue a message and wake the shard. Returns false if it has stopped.
    pub fn send(&self, m: Inbox) -> bool {
        if self.tx.send(m).is_err() {
            return false;
        }
        self.waker.wake().is_ok()
    }

    /// Tell the shard that connection `conn` has something (frames, or its
    /// end), unless it already knows. Returns false if it has stopped.
    pub fn ready(&self, conn: u64, scheduled: &AtomicBool) -> bool {
        if scheduled.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.send(Inbox::Ready(conn))
    }
}

/// What the shard keeps of a connection.
struct Stream {
    addr: SocketAddr,
    tls: bool,
    frames: StreamReceiver<Vec<u8>>,
    out: StreamSender<Vec<u8>>,
    scheduled: Arc<AtomicBool>,
    held: watch::Sender<bool>,
}

/// Sources with work left from an earlier round (their readiness edge is
/// spent, so nothing else would bring the shard back to them).
struct Pending {
    listeners: Vec<bool>,
    /// Relay sockets, in turn; `relay_queued[id]` says whether one is in.
    relays: VecDeque<RelayId>,
    relay_queued: Vec<bool>,
    /// Connections with frames or an end to handle, in turn.
    streams: VecDeque<u64>,
}

impl Pending {
    fn relay(&mut self, id: RelayId) {
        let i = id as usize;
        if self.relay_queued.len() <= i {
            self.relay_queued.resize(i + 1, false);
        }
        if !self.relay_queued[i] {
            self.relay_queued[i] = true;
            self.relays.push_back(id);
        }
    }

    fn any(&self) -> bool {
        self.listeners.iter().any(|&l| l) || !self.relays.is_empty() || !self.streams.is_empty()
    }
}

/// One relay socket.
struct RelaySock {
    sock: mio::net::UdpSocket,
    bound: SocketAddr,
    advertised: SocketAddr,
}

/// The shard's relay sockets, by [`RelayId`].
struct RelayTable {
    socks: Vec<Option<RelaySock>>,
    free: Vec<u32>,
}

/// A TCP relayed address (RFC 6062): its listener's accept task.
struct TcpRelay {
    accept: AbortHandle,
    bound: SocketAddr,
    advertised: SocketAddr,
}

/// A peer connection of a TCP allocation, as the shard holds it.
enum PeerConn {
    /// Connect in progress (its task).
    Connecting(AbortHandle),
    /// Connected or accepted, waiting for a ConnectionBind: not read, so
    /// what the peer sends waits in the kernel (bounded by its buffer).
    Parked(PeerStream),
    /// Spliced with a client data connection; dropping the sender ends
    /// the splice.
    Spliced {
        _kill: oneshot::Sender<()>,
        bytes: Arc<SpliceBytes>,
    },
}

/// The shard's side of TCP allocations' I/O: tasks on the relay's tokio
/// runtime that report to this shard.
struct TcpIo {
    rt: tokio::runtime::Handle,
    me: WorkerHandle,
    relays: HashMap<RelayId, TcpRelay>,
    peers: HashMap<ConnectionId, PeerConn>,
    /// Passive connections one relayed address holds at once.
    max_peer_connections: usize,
}

impl TcpIo {
    fn open(
        &mut self,
        id: RelayId,
        listener: std::net::TcpListener,
        ra: RelayAddress,
        port: u16,
    ) -> io::Result<()> {
        let _rt = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slots = Arc::new(Semaphore::new(self.max_peer_connections.max(1)));
        let task = self
            .rt
            .spawn(tcp::accept_peers(listener, id, self.me.clone(), slots));
        self.relays.insert(
            id,
            TcpRelay {
                accept: task.abort_handle(),
                bound: SocketAddr::new(ra.bind, port),
                advertised: SocketAddr::new(ra.advertised, port),
            },
        );
        Ok(())
    }

    /// Start Connect `id` from TCP relay `relay`; false if it has none.
    fn connect(&mut self, id: ConnectionId, relay: RelayId, peer: SocketAddr) -> bool {
        let Some(from) = self.relays.get(&relay).map(|r| r.bound) else {
            return false;
        };
        let task = self
            .rt
            .spawn(tcp::connect_peer(id, from, peer, self.me.clone()));
        self.peers
            .insert(id, PeerConn::Connecting(task.abort_handle()));
        true
    }
}

/// The [`Env`] a shard gives its core: relay sockets, policy, quotas.
struct WorkerEnv<'a> {
    shared: &'a Shared,
    policy: &'a PeerPolicy,
    relays: &'a mut RelayTable,
    tcp: &'a mut TcpIo,
    streams: &'a HashMap<u64, Stream>,
    registry: &'a Registry,
    now: Instant,
}

impl WorkerEnv<'_> {
    /// A relay number: a free one, or the next.
    fn relay_id(&mut self) -> RelayId {
        match self.relays.free.pop() {
            Some(id) => id,
            None => {
                self.relays.socks.push(None);
                (self.relays.socks.len() - 1) as u32
            }
        }
    }

    /// RFC 6062 §5.1: a TCP relayed address, a listener on a relay port.
    /// Its number comes from the UDP relays' table (the core indexes
    /// allocations by it), whose entry stays empty.
    fn open_tcp_relay(&mut self, ra: RelayAddress) -> Result<OpenedRelay, RelayError> {
        let (listener, port) = self
            .shared
            .ports
            .open_tcp(ra.bind)
            .map_err(|_| RelayError::NoPorts)?;
        let id = self.relay_id();
        if let Err(e) = self.tcp.open(id, listener, ra, port) {
            warn!(error = %e, "cannot start a TCP relay listener");
            self.relays.free.push(id);
            self.shared.ports.release(ra.bind, port);
            return Err(RelayError::NoPorts);
        }
        let bound = SocketAddr::new(ra.bind, port);
        let advertised = SocketAddr::new(ra.advertised, port);
        self.shared.add_relayed(&[bound, advertised]);
        Ok(OpenedRelay {
            id,
            addr: advertised,
            token: None,
        })
    }
}

impl Env for WorkerEnv<'_> {
    fn system_now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn open_relay(&mut self, req: RelayRequest) -> Result<OpenedRelay, RelayError> {
        let Some(ra) = self.shared.relay[req.family] else {
            return Err(RelayError::Family);
        };
        if req.tcp {
            return self.open_tcp_relay(ra);
        }
        let pr = PortRequest {
            even: req.even_port,
            reserve_next: req.reserve,
            token: req.token,
            dont_fragment: req.dont_fragment,
        };
        let opened = self
            .shared
            .ports
            .open(ra.bind, pr, self.now)
            .map_err(|e| match e {
                crate::ports::PortError::BadToken => RelayError::BadToken,
                _ => RelayError::NoPorts,
            })?;
        let mut sock = mio::net::UdpSocket::from_std(opened.socket);
        let id = self.relay_id();
        if let Err(e) = self.registry.register(
            &mut sock,
            Token(RELAY_BASE + id as usize),
            Interest::READABLE,
        ) {
            warn!(error = %e, "cannot register relay socket");
            self.relays.free.push(id);
            self.shared.ports.release(ra.bind, opened.port);
            return Err(RelayError::NoPorts);
        }
        let bound = SocketAddr::new(ra.bind, opened.port);
        let advertised = SocketAddr::new(ra.advertised, opened.port);
        self.shared.add_relayed(&[bound, advertised]);
        self.relays.socks[id as usize] = Some(RelaySock {
            sock,
            bound,
            advertised,
        });
        Ok(OpenedRelay {
            id,
            addr: advertised,
            token: opened.token,
        })
    }

    fn close_relay(&mut self, id: RelayId) {
        if let Some(r) = self.tcp.relays.remove(&id) {
            r.accept.abort();
            self.shared.remove_relayed(&[r.bound, r.advertised]);
            self.shared.ports.release(r.bound.ip(), r.bound.port());
            self.relays.free.push(id);
            return;
        }
        let Some(slot) = self.relays.socks.get_mut(id as usize) else {
            return;
        };
        if let Some(mut r) = slot.take() {
            let _ = self.registry.deregister(&mut r.sock);
            self.shared.remove_relayed(&[r.bound, r.advertised]);
            drop(r.sock);
            self.shared.ports.release(r.bound.ip(), r.bound.port());
            self.relays.free.push(id);
        }
    }

    fn peer_allowed(&self, peer: SocketAddr) -> bool {
        // The common case first: an ordinary peer the policy allows, with
        // no lock. Then the relay-to-relay exception.
        matches!(self.policy.check(peer), Verdict::Allowed) || self.shared.is_relayed(peer)
    }

    fn peer_ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.policy.ip_allowed(ip)
    }

    fn is_relay_ip(&self, ip: std::net::IpAddr) -> bool {
        self.shared
            .relay
            .iter()
            .flatten()
            .any(|r| r.bind == ip || r.advertised == ip)
    }

    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError> {
        self.shared.acquire(user)
    }

    fn release_allocation(&mut self, user: &str) {
        self.shared.release(user);
    }

    fn close_connection(&mut self, id: ConnectionId) {
        // Dropped: a parked stream closes, a splice's kill switch fires.
        if let Some(PeerConn::Connecting(task)) = self.tcp.peers.remove(&id) {
            task.abort();
        }
    }

    fn stream_held(&mut self, client: &ClientKey, held: bool) {
        if let Via::Stream(conn) = client.via {
            if let Some(s) = self.streams.get(&conn) {
                // No reader left to tell is fine: the connection is closing.
                s.held.send_replace(held);
            }
        }
    }
}

/// The [`WorkerEnv`] of a worker, borrowing only the fields it needs, so
/// the core (another field) stays free to borrow mutably.
macro_rules! worker_env {
    ($w:expr, $now:expr) => {
        WorkerEnv {
            shared: &$w.shared,
            policy: &$w.policy,
            relays: &mut $w.relays,
            tcp: &mut $w.tcp,
            streams: &$w.streams,
            registry: $w.poll.registry(),
            now: $now,
        }
    };
}

/// Everything a shard needs to start.
pub struct WorkerSetup {
    pub index: usize,
    /// Its own SO_REUSEPORT socket on each UDP listen address, in order.
    pub listeners: Vec<UdpSocket>,
    pub core: CoreConfig,
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// Where usage records go (`usage-log`), if anywhere.
    pub usage: Option<UsageSender>,
    /// The relay's tokio runtime: TCP allocations' sockets (RFC 6062) run
    /// there.
    pub rt: tokio::runtime::Handle,
}

/// Create a shard: returns its handle and the thread body to run.
pub fn create(setup: WorkerSetup) -> io::Result<(WorkerHandle, impl FnOnce() + Send)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, inbox) = std::sync::mpsc::channel();
    let mut listeners = Vec::new();
    for (i, s) in setup.listeners.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut m = mio::net::UdpSocket::from_std(s);
        poll.registry()
            .register(&mut m, Token(LISTENER_BASE + i), Interest::READABLE)?;
        listeners.push(m);
    }
    let (creds, policy) = setup.shared.current();
    let max_peer_connections = setup.core.max_peer_connections;
    let core = Server::new(
        setup.core,
        creds,
        setup.shared.nonce_key.clone(),
        Instant::now(),
    )
    .with_limiter(setup.shared.limiter.clone());
    let n = listeners.len();
    let handle = WorkerHandle { tx, waker };
    let w = Worker {
        index: setup.index,
        poll,
        listeners,
        relays: RelayTable {
            socks: Vec::new(),
            free: Vec::new(),
        },
        core,
        generation: setup.shared.generation.load(Ordering::Acquire),
        policy,
        shared: setup.shared,
        inbox,
        streams: HashMap::new(),
        pending: Pending {
            listeners: vec![false; n],
            relays: VecDeque::new(),
            relay_queued: Vec::new(),
            streams: VecDeque::new(),
        },
        rx: RecvBatch::new(BATCH, MAX_DATAGRAM),
        tx: (0..n)
            .map(|_| SendBatch::new(BATCH, MAX_DATAGRAM + MAX_FRAMING))
            .collect(),
        out: vec![0u8; 1024],
        relay_out: RelayOut::new(),
        client_out: ClientOut::new(),
        counters: setup.metrics.worker(),
        send_errors: 0,
        shutdown: setup.shutdown,
        draining: false,
        usage: setup.usage,
        tcp: TcpIo {
            rt: setup.rt,
            me: handle.clone(),
            relays: HashMap::new(),
            peers: HashMap::new(),
            max_peer_connections,
        },
    };
    Ok((handle, move || w.run()))
}

struct Worker {
    index: usize,
    poll: Poll,
    listeners: Vec<mio::net::UdpSocket>,
    relays: RelayTable,
    core: Server,
    shared: Arc<Shared>,
    policy: Arc<PeerPolicy>,
    generation: u64,
    inbox: Receiver<Inbox>,
    streams: HashMap<u64, Stream>,
    pending: Pending,
    rx: RecvBatch,
    tx: Vec<SendBatch>,
    out: Vec<u8>,
    relay_out: RelayOut,
    client_out: ClientOut,
    counters: WorkerCounters,
    send_errors: u64,
    shutdown: Shutdown,
    draining: bool,
    usage: Option<UsageSender>,
    tcp: TcpIo,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown.is_triggered() {
            let now = Instant::now();
            // Work left over from the last round: look for new events
            // without sleeping, then go on with it.
            let timeout = if self.pending.any() {
                Duration::ZERO
            } else {
                self.core
                    .poll_timeout()
                    .saturating_duration_since(now)
                    .min(TICK)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(error = %e, "poll failed");
                }
                continue;
            }
            let now = Instant::now();
            self.housekeeping(now);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= RELAY_BASE => self.pending.relay((t - RELAY_BASE) as RelayId),
                    Token(t) => {
                        if let Some(p) = self.pending.listeners.get_mut(t - LISTENER_BASE) {
                            *p = true;
                        }
                    }
                }
            }
            self.round(now);
            self.flush();
        }
        // The allocations end with the process: their last records say
        // whether it drained first.
        let why = if self.shared.draining.load(Ordering::Relaxed) {
            EndReason::Drained
        } else {
            EndReason::Shutdown
        };
        let now = Instant::now();
        let mut env = worker_env!(self, now);
        self.core.shutdown(&mut env, why, now);
        self.flush();
        debug!(worker = self.index, "stopped");
    }

    /// One poll round: every source with work gets its budget.
    fn round(&mut self, now: Instant) {
        // Connections opening and announcing frames: a few entries each.
        self.drain_inbox(now);
        for i in 0..self.pending.listeners.len() {
            if self.pending.listeners[i] {
                self.pending.listeners[i] = !self.drain_listener(i, now);
            }
        }
        for _ in 0..self.pending.relays.len().min(RELAYS_PER_ROUND) {
            let Some(id) = self.pending.relays.pop_front() else {
                break;
            };
            if self.drain_relay(id, now) {
                self.pending.relay_queued[id as usize] = false;
            } else {
                self.pending.relays.push_back(id);
            }
        }
        self.drain_streams(now);
    }

    /// Reloads, drain, timers, metrics.
    fn housekeeping(&mut self, now: Instant) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            let (creds, policy) = self.shared.current();
            self.core.set_credentials(creds);
            self.policy = policy;
            let env = worker_env!(self, now);
            self.core.revalidate_peers(&env);
        }
        let draining = self.shared.draining.load(Ordering::Relaxed);
        if draining != self.draining {
            self.draining = draining;
            self.core.set_draining(draining);
        }
        if now >= self.core.poll_timeout() {
            // Spliced bytes into the usage records, before any expires.
            for (id, p) in &self.tcp.peers {
                if let PeerConn::Spliced { bytes, .. } = p {
                    let (to_peer, to_client) = bytes.take();
                    if to_peer + to_client > 0 {
                        self.core.credit_connection(*id, to_peer, to_client);
                    }
                }
            }
            let mut env = worker_env!(self, now);
            self.core.handle_timeout(&mut env, now);
            if self.index == 0 {
                self.shared.ports.sweep(now);
            }
        }
    }

    fn flush(&mut self) {
        self.ship_usage();
        // Metrics first: a client that reads them after its answer sees
        // what the answer did (send errors of this flush count next round).
        publish(&mut self.counters, &mut self.core, &mut self.send_errors);
        for (i, b) in self.tx.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            match b.flush(&self.listeners[i]) {
                Ok(s) => self.send_errors += s.failed as u64,
                Err(e) => {
                    debug!(error = %e, "listener send failed");
                    self.send_errors += b.len() as u64;
                    b.clear();
                }
            }
        }
    }

    /// Hand the core's usage records to the writer (once per round, off
    /// the data path; the queue never blocks).
    fn ship_usage(&mut self) {
        let Some(tx) = &self.usage else {
            return;
        };
        for r in self.core.take_usage() {
            let tls = match r.via {
                Via::Stream(conn) => self.streams.get(&conn).is_some_and(|s| s.tls),
                Via::Udp(_) => false,
            };
            let transport = ClientTransport::of(r.via, tls);
            tx.send(r, transport);
        }
    }

    /// Read listener `i`, at most [`LISTENER_BATCHES`] batches; whether it
    /// was read dry.
    fn drain_listener(&mut self, i: usize, now: Instant) -> bool {
        let Worker {
            listeners,
            relays,
            core,
            shared,
            policy,
            rx,
            tx,
            out,
            send_errors,
            poll,
            relay_out,
            counters,
            tcp,
            streams,
            ..
        } = self;
        let Some(sock) = listeners.get(i) else {
            return true;
        };
        let mut errors = 0;
        let mut batches = 0;
        loop {
            if batches == LISTENER_BATCHES {
                return false;
            }
            batches += 1;
            let n = match rx.recv(sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // A pending ICMP error (ECONNREFUSED after a client went
                // away) is reported once, ahead of any queued data: read on,
                // or the queue would wait for the next edge. Bounded.
                Err(e) if errors < MAX_RECV_ERRORS => {
                    debug!(error = %e, "listener receive failed");
                    errors += 1;
                    continue;
                }
                // Still failing: as before, what is behind the errors comes
                // with the next readiness edge (no spinning on a socket that
                // keeps failing).
                Err(_) => return true,
            };
            let mut env = WorkerEnv {
                shared,
                policy,
                relays,
                tcp,
                streams,
                registry: poll.registry(),
                now,
            };
            for (k, d) in rx.iter().enumerate() {
                if d.truncated {
                    core.stats.drops[natkit_proto::turn::server::Drop::Malformed.index()] += 1;
                    continue;
                }
                let client = ClientKey {
                    addr: d.source,
                    via: Via::Udp(i as u16),
                };
                if is_request(d.data) {
                    // A request may delete the allocation (Refresh with
                    // lifetime 0, RFC 8656 §7.4): the data its client sent
                    // before it leaves first, while the relay socket lives.
                    relay_out.flush(env.relays, rx, send_errors);
                }
                match core.handle_client(&mut env, client, d.data, now, out) {
                    ClientAction::Reply(len) => {
                        if tx[i].is_full() {
                            flush_one(&mut tx[i], sock, send_errors);
                        }
                        let _ = tx[i].push(d.source, &out[..len]);
                    }
                    ClientAction::Relay { relay, peer, data } => {
                        relay_out.stage(relay, peer, k, data)
                    }
                    // TCP allocations and their data connections are
                    // for stream clients only.
                    ClientAction::Drop(_)
                    | ClientAction::Connect { .. }
                    | ClientAction::Bind { .. } => {}
                }
            }
            // Metrics first, as in `flush`: whoever sees the data arrive
            // then reads metrics that count it.
            publish(counters, core, send_errors);
            // Before the next receive overwrites the batch's buffers.
            relay_out.flush(env.relays, rx, send_errors);
            // recvmmsg returned less than a full batch: the queue was empty
            // a moment ago, and anything newer raises a new edge.
            if n < BATCH {
                return true;
            }
        }
    }

    /// Read relay socket `id`, at most [`RELAY_BATCHES`] batches; whether
    /// it was read dry (or is gone).
    fn drain_relay(&mut self, id: RelayId, now: Instant) -> bool {
        let Worker {
            listeners,
            relays,
            core,
            rx,
            tx,
            streams,
            send_errors,
            client_out,
            counters,
            ..
        } = self;
        let mut errors = 0;
        let mut batches = 0;
        loop {
            let Some(Some(r)) = relays.socks.get(id as usize) else {
                return true;
            };
            if batches == RELAY_BATCHES {
                return false;
            }
            batches += 1;
            let n = match rx.recv(&r.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // ICMP errors from peers (ECONNREFUSED) surface here, once,
                // ahead of queued data: read on, bounded.
                Err(e) if errors < MAX_RECV_ERRORS => {
                    debug!(error = %e, "relay receive failed");
                    errors += 1;
                    continue;
                }
                Err(_) => return true,
            };
            for d in rx.iter() {
                if d.truncated {
                    core.stats.drops[natkit_proto::turn::server::Drop::Malformed.index()] += 1;
                    continue;
                }
                let Ok(route) = core.route_peer(id, d.source, d.data.len(), now) else {
                    continue;
                };
                match route.client.via {
                    Via::Udp(l) => {
                        let l = l as usize;
                        if !client_out.add(l, route.client.addr, &route.framing, d.data) {
                            // Not the batch's client (cannot happen: one
                            // relay socket, one allocation): send it alone.
                            if tx[l].is_full() {
                                flush_one(&mut tx[l], &listeners[l], send_errors);
                            }
                            let _ = tx[l].push_with(route.client.addr, |buf| {
                                route.framing.write(buf, d.data).unwrap_or(0)
                            });
                        }
                    }
                    Via::Stream(conn) => {
                        let mut v = vec![0u8; d.data.len() + MAX_FRAMING];
                        if let Some(n) = route.framing.write(&mut v, d.data) {
                            v.truncate(n);
                            // A slow TCP client loses datagrams, as UDP would.
                            if let Some(s) = streams.get(&conn) {
                                if s.out.try_send(v).is_err() {
                                    *send_errors += 1;
                                }
                            }
                        }
                    }
                }
            }
            // Metrics first (see `drain_listener`).
            publish(counters, core, send_errors);
            client_out.flush(listeners, tx, send_errors);
            if n < BATCH {
                return true;
            }
        }
    }

    /// Connections that opened or have something: onto the ready list;
    /// and the news of TCP allocations' sockets.
    fn drain_inbox(&mut self, now: Instant) {
        loop {
            match self.inbox.try_recv() {
                Ok(Inbox::Opened(l)) => {
                    self.streams.insert(
                        l.conn,
                        Stream {
                            addr: l.addr,
                            tls: l.tls,
                            frames: l.frames,
                            out: l.out,
                            scheduled: l.scheduled,
                            held: l.held,
                        },
                    );
                }
                Ok(Inbox::Ready(conn)) => self.pending.streams.push_back(conn),
                Ok(Inbox::Connected { id, stream }) => self.connected(id, stream, now),
                Ok(Inbox::PeerAccepted {
                    relay,
                    peer,
                    stream,
                }) => self.peer_accepted(relay, peer, stream, now),
                Ok(Inbox::Bind {
                    conn,
                    addr,
                    frame,
                    answer,
                }) => self.bind(conn, addr, &frame, answer, now),
                Ok(Inbox::SpliceEnded(id)) => {
                    if let Some(PeerConn::Spliced { bytes, .. }) = self.tcp.peers.remove(&id) {
                        let (to_peer, to_client) = bytes.take();
                        self.core.credit_connection(id, to_peer, to_client);
                    }
                    self.core.connection_closed(id);
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Handle frames of ready connections: [`STREAM_PER_CONN`] each in turn,
    /// [`STREAM_PER_ROUND`] in all; connections with more go to the back.
    fn drain_streams(&mut self, now: Instant) {
        let mut budget = STREAM_PER_ROUND;
        for _ in 0..self.pending.streams.len() {
            if budget == 0 {
                return;
            }
            let Some(conn) = self.pending.streams.pop_front() else {
                return;
            };
            let mut taken = 0;
            // (None: closed meanwhile.)
            while let Some(st) = self.streams.get_mut(&conn) {
                if taken == STREAM_PER_CONN || budget == 0 {
                    self.pending.streams.push_back(conn);
                    break;
                }
                match st.frames.try_recv() {
                    Ok(frame) => {
                        taken += 1;
                        budget -= 1;
                        self.stream_message(conn, &frame, now);
                    }
                    Err(StreamTryRecvError::Empty) => {
                        // Off the list; unless a frame came in between,
                        // whose reader saw the flag still set.
                        st.scheduled.store(false, Ordering::SeqCst);
                        if !st.frames.is_empty() && !st.scheduled.swap(true, Ordering::SeqCst) {
                            self.pending.streams.push_back(conn);
                        }
                        break;
                    }
                    // The reader is done and every frame it read has been
                    // handled: the allocation goes with the connection.
                    Err(StreamTryRecvError::Disconnected) => {
                        self.close_stream(conn, now, EndReason::ClientGone);
                        break;
                    }
                }
            }
        }
    }

    fn stream_message(&mut self, conn: u64, data: &[u8], now: Instant) {
        let Some(addr) = self.streams.get(&conn).map(|s| s.addr) else {
            return;
        };
        let key = ClientKey {
            addr,
            via: Via::Stream(conn),
        };
        let mut env = worker_env!(self, now);
        match self
            .core
            .handle_client(&mut env, key, data, now, &mut self.out)
        {
            ClientAction::Reply(len) => self.answer_stream(conn, len, now),
            ClientAction::Relay {
                relay,
                peer,
                data: r,
            } => relay_send(env.relays, relay, peer, &data[r], &mut self.send_errors),
            ClientAction::Connect { id, relay, peer } => {
                if !env.tcp.connect(id, relay, peer) {
                    self.connected(id, None, now);
                }
            }
            // A ConnectionBind on a control connection is answered with
            // an error, never bound.
            ClientAction::Drop(_) | ClientAction::Bind { .. } => {}
        }
    }

    /// Queue `self.out[..len]` to stream connection `conn`.
    fn answer_stream(&mut self, conn: u64, len: usize, now: Instant) {
        let Some(s) = self.streams.get(&conn) else {
            return;
        };
        match s.out.try_send(self.out[..len].to_vec()) {
            Ok(()) => {}
            // Its answers pile up unread: a client that sends and
            // does not read is closed rather than buffered for.
            Err(TrySendError::Full(_)) => {
                debug!(addr = %s.addr, "client does not read its answers: closing");
                self.send_errors += 1;
                self.close_stream(conn, now, EndReason::Error);
            }
            // The writer is gone (write timeout): closing already.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Answer the control connection of `key` with `self.out[..len]`.
    fn answer_client(&mut self, key: ClientKey, len: usize, now: Instant) {
        // TCP allocations live on stream control connections only.
        if let Via::Stream(conn) = key.via {
            self.answer_stream(conn, len, now);
        }
    }

    /// A Connect attempt ended (RFC 6062 §5.2): the core answers the
    /// client (CONNECTION-ID or 447); a connection that no one waits for
    /// any more is closed (dropped).
    fn connected(&mut self, id: ConnectionId, stream: Option<PeerStream>, now: Instant) {
        // Closed meanwhile (its allocation ended): the core forgot it too.
        let waited = matches!(self.tcp.peers.remove(&id), Some(PeerConn::Connecting(_)));
        let ok = waited && stream.is_some();
        if let Some((client, len)) = self.core.connect_result(id, ok, now, &mut self.out) {
            if let (true, Some(s)) = (ok, stream) {
                self.tcp.peers.insert(id, PeerConn::Parked(s));
            }
            self.answer_client(client, len, now);
        }
    }

    /// A peer connected to a TCP relayed address (RFC 6062 §5.3): parked
    /// and announced, or closed.
    fn peer_accepted(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        stream: PeerStream,
        now: Instant,
    ) {
        if let Ok((client, id, len)) = self.core.peer_connected(relay, peer, now, &mut self.out) {
            self.tcp.peers.insert(id, PeerConn::Parked(stream));
            self.answer_client(client, len, now);
        }
    }

    /// A client data connection's ConnectionBind (RFC 6062 §5.4): the
    /// core's answer, and with a success the peer connection to splice.
    fn bind(
        &mut self,
        conn: u64,
        addr: SocketAddr,
        frame: &[u8],
        answer: oneshot::Sender<BindAnswer>,
        now: Instant,
    ) {
        let key = ClientKey {
            addr,
            via: Via::Stream(conn),
        };
        let mut env = worker_env!(self, now);
        let action = self
            .core
            .handle_client(&mut env, key, frame, now, &mut self.out);
        let reply = match action {
            ClientAction::Reply(len) => BindAnswer {
                reply: self.out[..len].to_vec(),
                splice: None,
            },
            ClientAction::Bind { id, reply } => match self.tcp.peers.remove(&id) {
                Some(PeerConn::Parked(peer)) => {
                    let (kill_tx, kill) = oneshot::channel();
                    let bytes = Arc::new(SpliceBytes::default());
                    self.tcp.peers.insert(
                        id,
                        PeerConn::Spliced {
                            _kill: kill_tx,
                            bytes: bytes.clone(),
                        },
                    );
                    BindAnswer {
                        reply: self.out[..reply].to_vec(),
                        splice: Some(Splice {
                            id,
                            peer,
                            kill,
                            bytes,
                        }),
                    }
                }
                // The core binds only connections it has as unbound, and
                // the shard holds those parked: not reached; close both.
                _ => {
                    self.core.connection_closed(id);
                    BindAnswer {
                        reply: Vec::new(),
                        splice: None,
                    }
                }
            },
            _ => BindAnswer {
                reply: Vec::new(),
                splice: None,
            },
        };
        // The data connection went away meanwhile: so does the peer's.
        if let Err(BindAnswer {
            splice: Some(s), ..
        }) = answer.send(reply)
        {
            self.tcp.peers.remove(&s.id);
            self.core.connection_closed(s.id);
        }
    }

    /// Forget a connection: its allocation ends (RFC 8656 §3.1); dropping
    /// its queues stops the reader and lets the writer send what is queued
    /// and close.
    fn close_stream(&mut self, conn: u64, now: Instant, why: EndReason) {
        let Some(s) = self.streams.get(&conn) else {
            return;
        };
        let key = ClientKey {
            addr: s.addr,
            via: Via::Stream(conn),
        };
        let mut env = worker_env!(self, now);
        self.core.client_gone(&mut env, &key, why, now);
        // Its record, while the connection still says TCP or TLS.
        self.ship_usage();
        self.streams.remove(&conn);
    }
}

/// Add what the core counted since the last call (and the send errors) to
/// the shared metrics. Called before the answers and data it counts leave,
/// so whoever sees them arrive reads metrics that include them.
fn publish(counters: &mut WorkerCounters, core: &mut Server, send_errors: &mut u64) {
    let live = core.allocation_count();
    counters.flush(&mut core.stats, live, std::mem::take(send_errors));
}

/// Whether `data` is a STUN request (RFC 8489 §5: class bits C1 C0 both
/// zero), not an indication or ChannelData: the client's control messages,
/// rare next to its data.
#[inline]
fn is_request(data: &[u8]) -> bool {
    data.len() >= 2 && data[0] & 0xC0 == 0 && u16::from_be_bytes([data[0], data[1]]) & 0x0110 == 0
}

fn flush_one(b: &mut SendBatch, sock: &mio::net::UdpSocket, errors: &mut u64) {
    match b.flush(sock) {
        Ok(s) => *errors += s.failed as u64,
        Err(_) => {
            *errors += b.len() as u64;
            b.clear();
        }
    }
}

/// Client → peer datagrams of one receive batch, staged and then sent
/// grouped by relay socket and peer: a run of equal-size datagrams for one
/// peer leaves as one GSO train (one trip through the kernel's send path
/// instead of one per datagram), anything else one `sendto` each. Order
/// within a flow is kept (the sort is stable); flows are independent.
struct RelayOut {
    /// (relay socket, peer, index in the receive batch, data range).
    staged: Vec<(RelayId, SocketAddr, usize, std::ops::Range<usize>)>,
    /// One train, copied together.
    train: Vec<u8>,
    /// Cleared after the kernel refuses GSO once (old kernel, odd device).
    gso: bool,
}

impl RelayOut {
    fn new() -> Self {
        RelayOut {
            staged: Vec::with_capacity(BATCH),
            train: Vec::with_capacity(gso::MAX_TRAIN_BYTES),
            gso: true,
        }
    }

    #[inline]
    fn stage(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        index: usize,
        data: std::ops::Range<usize>,
    ) {
        self.staged.push((relay, peer, index, data));
    }

    fn flush(&mut self, relays: &RelayTable, rx: &RecvBatch, errors: &mut u64) {
        if self.staged.is_empty() {
            return;
        }
        self.staged
            .sort_by_key(|&(relay, peer, _, _)| (relay, peer));
        let staged = std::mem::take(&mut self.staged);
        let data = |k: usize, r: &std::ops::Range<usize>| rx.get(k).map(|d| &d.data[r.clone()]);
        let mut i = 0;
        while i < staged.len() {
            let (relay, peer, k, ref r) = staged[i];
            let Some(Some(sock)) = relays.socks.get(relay as usize) else {
                i += 1;
                continue;
            };
            // The train: following datagrams of this flow with the first's
            // size (the last of a train may be shorter, but not empty: a
            // zero-length segment is no datagram at all, so an empty
            // datagram always leaves alone), within GSO limits.
            let seg = r.len();
            let mut end = i + 1;
            let mut bytes = seg;
            while self.gso
                && seg > 0
                && end < staged.len()
                && end - i < gso::MAX_SEGMENTS
                && staged[end].0 == relay
                && staged[end].1 == peer
                && !staged[end].3.is_empty()
                && staged[end].3.len() <= seg
                && bytes + staged[end].3.len() <= gso::MAX_TRAIN_BYTES
            {
                bytes += staged[end].3.len();
                end += 1;
                if staged[end - 1].3.len() < seg {
                    break;
                }
            }
            if end - i == 1 {
                if let Some(d) = data(k, r) {
                    if sock.sock.send_to(d, peer).is_err() {
                        *errors += 1;
                    }
                }
                i += 1;
                continue;
            }
            self.train.clear();
            for (_, _, k, r) in &staged[i..end] {
                if let Some(d) = data(*k, r) {
                    self.train.extend_from_slice(d);
                }
            }
            match gso::send_segments(&sock.sock, &self.train, seg, Some(peer)) {
                Ok(_) => {}
                // A full socket buffer drops the train, as it would drop
                // the datagrams one by one.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *errors += (end - i) as u64,
                Err(e) => {
                    // Not for this train (EMSGSIZE: a segment too large for
                    // the path), or no GSO here at all: one by one, and no
                    // more trains from this worker in the second case.
                    if e.raw_os_error() != Some(libc::EMSGSIZE) {
                        debug!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                        self.gso = false;
                    }
                    for (_, _, k, r) in &staged[i..end] {
                        if let Some(d) = data(*k, r) {
                            if sock.sock.send_to(d, peer).is_err() {
                                *errors += 1;
                            }
                        }
                    }
                }
            }
            i = end;
        }
        self.staged = staged;
        self.staged.clear();
    }
}

/// Peer → client datagrams of one relay-socket batch, framed back to back.
/// One relay socket serves one allocation, so they all go to one client:
/// runs of equal size leave as GSO trains on the listener socket, single
/// datagrams join the listener's sendmmsg batch. The listener's batch is
/// flushed before a train, so a flow's datagrams keep their order.
struct ClientOut {
    buf: Vec<u8>,
    lens: Vec<usize>,
    dest: Option<(usize, SocketAddr)>,
    gso: bool,
}

impl ClientOut {
    fn new() -> Self {
        ClientOut {
            buf: Vec::with_capacity(BATCH * (MAX_DATAGRAM + MAX_FRAMING)),
            lens: Vec::with_capacity(BATCH),
            dest: None,
            gso: true,
        }
    }

    /// Frame `data` for the batch's client; false if `addr` is another
    /// client than the batch's.
    #[inline]
    fn add(&mut self, l: usize, addr: SocketAddr, framing: &Framing, data: &[u8]) -> bool {
        match self.dest {
            None => self.dest = Some((l, addr)),
            Some(d) if d == (l, addr) => {}
            Some(_) => return false,
        }
        let start = self.buf.len();
        self.buf.resize(start + data.len() + MAX_FRAMING, 0);
        match framing.write(&mut self.buf[start..], data) {
            Some(n) => {
                self.buf.truncate(start + n);
                self.lens.push(n);
            }
            None => self.buf.truncate(start),
        }
        true
    }

    fn flush(&mut self, listeners: &[mio::net::UdpSocket], tx: &mut [SendBatch], errors: &mut u64) {
        let Some((l, addr)) = self.dest.take() else {
            return;
        };
        let (sock, batch) = (&listeners[l], &mut tx[l]);
        let mut off = 0;
        let mut i = 0;
        while i < self.lens.len() {
            let seg = self.lens[i];
            let mut end = i + 1;
            let mut bytes = seg;
            while self.gso
                && end < self.lens.len()
                && end - i < gso::MAX_SEGMENTS
                && self.lens[end] <= seg
                && bytes + self.lens[end] <= gso::MAX_TRAIN_BYTES
            {
                bytes += self.lens[end];
                end += 1;
                if self.lens[end - 1] < seg {
                    break;
                }
            }
            let train = &self.buf[off..off + bytes];
            let mut sent = false;
            if end - i > 1 {
                if !batch.is_empty() {
                    flush_one(batch, sock, errors);
                }
                match gso::send_segments(sock, train, seg, Some(addr)) {
                    Ok(_) => sent = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *errors += (end - i) as u64;
                        sent = true;
                    }
                    Err(e) => {
                        if e.raw_os_error() != Some(libc::EMSGSIZE) {
                            debug!(error = %e, "UDP GSO unavailable; sending datagrams one by one");
                            self.gso = false;
                        }
                    }
                }
            }
            if !sent {
                let mut o = 0;
                for &n in &self.lens[i..end] {
                    if batch.is_full() {
                        flush_one(batch, sock, errors);
                    }
                    let _ = batch.push(addr, &train[o..o + n]);
                    o += n;
                }
            }
            off += bytes;
            i = end;
        }
        self.buf.clear();
        self.lens.clear();
    }
}

/// Send client data to a peer from the allocation's relay socket.
#[inline]
fn relay_send(relays: &RelayTable, id: RelayId, peer: SocketAddr, data: &[u8], errors: &mut u64) {
    let Some(Some(r)) = relays.socks.get(id as usize) else {
        return;
    };
    if r.sock.send_to(data, peer).is_err() {
        *errors += 1;
    }
}
