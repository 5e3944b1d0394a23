//! The socket quinn runs over: every host base's UDP socket at once, with
//! STUN, TURN and QUIC demultiplexed by first byte and source (RFC 7983,
//! RFC 9443).
//!
//! quinn sees one fixed peer address ([`VIRTUAL_REMOTE`]) for the whole
//! session. Sending to it follows the current [`Route`]: straight to the
//! peer from a host base, or wrapped in ChannelData through a TURN
//! allocation. When ICE selects another pair only the route changes: QUIC's
//! connection, its streams and its congestion state carry on, which is how a
//! direct pair takes over from the relay without a reconnect.
//!
//! The reading is done here, by quinn's endpoint task, so the bulk path has
//! no extra hop: QUIC datagrams from a known peer address go to quinn in
//! place. Everything else (ICE checks, STUN and TURN responses, Data
//! indications, QUIC that arrived in a way only the driver can unwrap) goes
//! to the driver task; QUIC the driver unwraps comes back through
//! [`IceSocket::inject`].

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use natkit_proto::channel_data;
use natkit_proto::demux::{classify, PacketKind};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::mpsc;

thread_local! {
    /// ChannelData framing space for relayed sends: one buffer per thread,
    /// no allocation per datagram.
    static RELAY_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The peer's address as quinn sees it. It never reaches the wire: sends to
/// it follow the route. (A documentation address, so it could not collide
/// with a real peer even if it leaked into a log.)
pub const VIRTUAL_REMOTE: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1ce, 0, 0, 0, 0, 2)),
    1,
);

/// Our own address as quinn sees it.
pub const VIRTUAL_LOCAL: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1ce, 0, 0, 0, 0, 1)),
    1,
);

/// Most datagrams queued for the driver; beyond it they are dropped (UDP:
/// the senders retransmit), so a flood cannot grow memory.
pub const DRIVER_QUEUE: usize = 1024;
/// Most injected QUIC datagrams waiting for quinn.
const INJECT_QUEUE: usize = 1024;

/// One host base: a UDP socket bound to one local address.
pub struct Base {
    /// The address it is bound to (a host candidate).
    pub addr: SocketAddr,
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base({})", self.addr)
    }
}

impl Base {
    /// Wrap a bound socket (it must be non-blocking... tokio makes it so).
    pub fn new(sock: std::net::UdpSocket) -> io::Result<Base> {
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new((&sock).into())?;
        let addr = sock.local_addr()?;
        Ok(Base {
            addr,
            io: tokio::net::UdpSocket::from_std(sock)?,
            state,
        })
    }

    /// Send one datagram now, or fail with `WouldBlock`.
    pub fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.io.try_send_to(data, to)
    }
}

/// Where QUIC datagrams for the peer go.
#[derive(Debug, Clone)]
pub enum Route {
    /// From host base `base` straight to `to` (host, server- or
    /// peer-reflexive pairs, and pairs to the peer's relayed candidate).
    Direct {
        /// Index of the base.
        base: usize,
        /// The peer's address.
        to: SocketAddr,
    },
    /// Through our TURN allocation on a UDP server, in ChannelData.
    RelayUdp {
        /// Index of the base the allocation was made from.
        base: usize,
        /// The TURN server.
        server: SocketAddr,
        /// The channel bound to the peer.
        channel: u16,
    },
    /// Through our TURN allocation over TCP or TLS: padded ChannelData
    /// frames handed to the stream's writer task.
    RelayStream {
        /// The stream writer's queue.
        tx: mpsc::Sender<Vec<u8>>,
        /// The channel bound to the peer.
        channel: u16,
    },
    /// Through the driver (a relayed pair before its channel is bound:
    /// Send indications).
    Driver,
}

/// A datagram for the driver.
#[derive(Debug)]
pub enum Inbound {
    /// Arrived on host base `base` from `from`.
    Datagram {
        /// Index of the base.
        base: usize,
        /// Sender.
        from: SocketAddr,
        /// The bytes.
        data: Vec<u8>,
    },
    /// QUIC from quinn to send through the driver ([`Route::Driver`]).
    Outgoing(Vec<u8>),
}

/// The routing state shared by quinn's side and the driver.
#[derive(Debug, Default)]
struct Table {
    route: Option<Route>,
    /// Learned from the first QUIC datagram while no route is set (the
    /// controlled side can see the peer's Initial a moment before its own
    /// agent reports the selection).
    learned: Option<Route>,
    /// Peer addresses whose QUIC we accept (every remote candidate and
    /// peer-reflexive address of the session).
    peers: HashSet<SocketAddr>,
    /// STUN and TURN servers: their datagrams are for the driver, and
    /// ChannelData from them may carry the peer's QUIC.
    servers: HashSet<SocketAddr>,
    /// ChannelData that carries the peer's QUIC: (server, channel).
    relay_in: Vec<(SocketAddr, u16)>,
}

impl Table {
    /// While no pair is selected, remember the first way the peer's QUIC
    /// came, to answer it the same way.
    fn learn(&mut self, via: Route) {
        if self.route.is_none() && self.learned.is_none() {
            self.learned = Some(via);
        }
    }
}

/// quinn's socket (see the module documentation).
pub struct IceSocket {
    bases: Vec<Base>,
    table: Mutex<Table>,
    to_driver: mpsc::Sender<Inbound>,
    injected: Mutex<(VecDeque<Vec<u8>>, Option<Waker>)>,
    gso: usize,
    next_base: AtomicUsize,
}

impl fmt::Debug for IceSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceSocket")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl IceSocket {
    /// A socket over `bases`, sending what is not QUIC to `to_driver`.
    pub fn new(bases: Vec<Base>, to_driver: mpsc::Sender<Inbound>) -> IceSocket {
        let gso = bases
            .iter()
            .map(|b| b.state.max_gso_segments())
            .min()
            .unwrap_or(1);
        IceSocket {
            bases,
            table: Mutex::new(Table::default()),
            to_driver,
            injected: Mutex::new((VecDeque::new(), None)),
            gso,
            next_base: AtomicUsize::new(0),
        }
    }

    /// The host bases.
    pub fn bases(&self) -> &[Base] {
        &self.bases
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere while holding the lock leaves a table that is
        // still consistent (plain assignments): keep using it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the route for QUIC (the selected pair) and where relayed QUIC
    /// comes from.
    pub fn set_route(&self, route: Option<Route>) {
        let mut t = self.table();
        t.route = route;
        t.learned = None;
    }

    /// Add peer addresses whose QUIC is accepted.
    pub fn add_peer(&self, addr: SocketAddr) {
        self.table().peers.insert(addr);
    }

    /// Add a STUN or TURN server: its datagrams go to the driver.
    pub fn add_server(&self, addr: SocketAddr) {
        self.table().servers.insert(addr);
    }

    /// Accept the peer's QUIC in ChannelData `channel` from `server`.
    pub fn add_relay_in(&self, server: SocketAddr, channel: u16) {
        let mut t = self.table();
        if !t.relay_in.contains(&(server, channel)) {
            t.relay_in.push((server, channel));
        }
    }

    /// Hand quinn a QUIC datagram the driver unwrapped; `via` is how it
    /// came, the way back while no pair is selected yet.
    pub fn inject(&self, datagram: Vec<u8>, via: Route) {
        self.table().learn(via);
        let mut q = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        if q.0.len() < INJECT_QUEUE {
            q.0.push_back(datagram);
        }
        if let Some(w) = q.1.take() {
            w.wake();
        }
    }

    fn pop_injected(&self, cx: &Context) -> Option<Vec<u8>> {
        let mut q = self.injected.lock().unwrap_or_else(|e| e.into_inner());
        match q.0.pop_front() {
            Some(d) => Some(d),
            None => {
                q.1 = Some(cx.waker().clone());
                None
            }
        }
    }

    fn divert(&self, base: usize, from: SocketAddr, data: &[u8]) {
        // Full queue: drop (see DRIVER_QUEUE).
        let _ = self.to_driver.try_send(Inbound::Datagram {
            base,
            from,
            data: data.to_vec(),
        });
    }

    /// Sort the `n` datagrams just read on base `bi`: QUIC from the peer
    /// stays for quinn (its source rewritten to [`VIRTUAL_REMOTE`]),
    /// relayed QUIC is unwrapped in place, the rest goes to the driver and
    /// is left empty (quinn skips empty datagrams).
    fn sort(&self, bi: usize, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) {
        let mut t = self.table();
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            let from = m.addr;
            let data = &mut buf[..m.len];
            if t.peers.contains(&from) && classify(data, false) == PacketKind::Quic {
                // RFC 9443 §3: QUIC, when it comes from the peer (a peer
                // never sends ChannelData).
                t.learn(Route::Direct { base: bi, to: from });
                m.addr = VIRTUAL_REMOTE;
                m.dst_ip = None;
                continue;
            }
            if t.servers.contains(&from)
                && classify(data, true) == PacketKind::ChannelData
                && m.stride == m.len
            {
                // ChannelData from a TURN server (RFC 7983 §7: 64-79).
                if let Ok(cd) = channel_data::decode(data) {
                    if t.relay_in.contains(&(from, cd.channel))
                        && classify(cd.data, false) == PacketKind::Quic
                    {
                        let len = cd.data.len();
                        t.learn(Route::RelayUdp {
                            base: bi,
                            server: from,
                            channel: cd.channel,
                        });
                        data.copy_within(
                            channel_data::HEADER_LEN..channel_data::HEADER_LEN + len,
                            0,
                        );
                        m.len = len;
                        m.stride = len;
                        m.addr = VIRTUAL_REMOTE;
                        m.dst_ip = None;
                        continue;
                    }
                }
            }
            // Everything else, segment by segment (a GRO batch from a server
            // holds several messages).
            let stride = m.stride.max(1);
            for seg in data.chunks(stride) {
                self.divert(bi, from, seg);
            }
            m.len = 0;
            m.stride = 0;
        }
    }

    fn current_route(&self) -> Option<Route> {
        let t = self.table();
        t.route.clone().or_else(|| t.learned.clone())
    }

    fn send_relay_udp(
        &self,
        base: usize,
        server: SocketAddr,
        channel: u16,
        t: &Transmit<'_>,
    ) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let b = &self.bases[base];
        RELAY_SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            for s in t.contents.chunks(seg) {
                let need = channel_data::framed_len(s.len(), false);
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let n = channel_data::encode(&mut buf, channel, s, false)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                b.io.try_io(Interest::WRITABLE, || b.io.try_send_to(&buf[..n], server))?;
            }
            Ok(())
        })
    }
}

impl AsyncUdpSocket for IceSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            sock: self,
            fut: None,
        })
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        if t.destination != VIRTUAL_REMOTE {
            // quinn only ever talks to the peer; anything else is dropped.
            return Ok(());
        }
        match self.current_route() {
            // No pair yet: drop, QUIC retransmits.
            None => Ok(()),
            Some(Route::Direct { base, to }) => {
                let b = &self.bases[base];
                let tx = Transmit {
                    destination: to,
                    ecn: t.ecn,
                    contents: t.contents,
                    segment_size: t.segment_size,
                    src_ip: None,
                };
                b.io.try_io(Interest::WRITABLE, || b.state.send((&b.io).into(), &tx))
            }
            Some(Route::RelayUdp {
                base,
                server,
                channel,
            }) => self.send_relay_udp(base, server, channel, t),
            Some(Route::RelayStream { tx, channel }) => {
                let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
                for s in t.contents.chunks(seg) {
                    let mut frame = vec![0u8; channel_data::framed_len(s.len(), true)];
                    if let Ok(n) = channel_data::encode(&mut frame, channel, s, true) {
                        frame.truncate(n);
                        // Full writer queue: drop (QUIC sees loss and slows).
                        let _ = tx.try_send(frame);
                    }
                }
                Ok(())
            }
            Some(Route::Driver) => {
                let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
                for s in t.contents.chunks(seg) {
                    let _ = self.to_driver.try_send(Inbound::Outgoing(s.to_vec()));
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if let Some(d) = self.pop_injected(cx) {
            let n = d.len().min(bufs[0].len());
            bufs[0][..n].copy_from_slice(&d[..n]);
            meta[0] = RecvMeta {
                addr: VIRTUAL_REMOTE,
                len: n,
                stride: n,
                ecn: None,
                dst_ip: None,
            };
            return Poll::Ready(Ok(1));
        }
        // Start at a different base each time, so one busy base cannot
        // starve the others.
        let n_bases = self.bases.len();
        let start = self.next_base.fetch_add(1, Ordering::Relaxed);
        for k in 0..n_bases {
            let bi = (start + k) % n_bases;
            let b = &self.bases[bi];
            // ICMP errors (a peer's port closed) surface on a read and say
            // nothing quinn needs: keep reading, a bounded number of times
            // (then ask to be polled again rather than spin here).
            let mut tries = 0;
            loop {
                tries += 1;
                if tries > 64 {
                    cx.waker().wake_by_ref();
                    break;
                }
                match b.io.poll_recv_ready(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                match b.io.try_io(Interest::READABLE, || {
                    b.state.recv((&b.io).into(), bufs, meta)
                }) {
                    Ok(n) => {
                        self.sort(bi, bufs, meta, n);
                        return Poll::Ready(Ok(n));
                    }
                    Err(_) => continue,
                }
            }
        }
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(VIRTUAL_LOCAL)
    }

    fn max_transmit_segments(&self) -> usize {
        self.gso
    }

    fn max_receive_segments(&self) -> usize {
        self.bases
            .iter()
            .map(|b| b.state.gro_segments())
            .min()
            .unwrap_or(1)
    }

    fn may_fragment(&self) -> bool {
        self.bases.iter().any(|b| b.state.may_fragment())
    }
}

/// Write readiness of the base the current route sends from.
struct Poller {
    sock: Arc<IceSocket>,
    fut: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Poller")
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fut.is_none() {
            let sock = this.sock.clone();
            this.fut = Some(Box::pin(async move {
                let base = match sock.current_route() {
                    Some(Route::Direct { base, .. } | Route::RelayUdp { base, .. }) => base,
                    // Queues drop instead of blocking.
                    _ => return Ok(()),
                };
                sock.bases[base].io.writable().await
            }));
        }
        let r = this
            .fut
            .as_mut()
            .map_or(Poll::Ready(Ok(())), |f| f.as_mut().poll(cx));
        if r.is_ready() {
            this.fut = None;
        }
        r
    }
}
