//! The thin driver: moves bytes and time between the sockets and the
//! sans-IO [`SessionCore`]. It runs inside quinn's endpoint task (see
//! `socket.rs`): each `poll_recv` takes the handle's commands, fires the
//! core's timer, reads the TCP/TLS connections and the UDP bases, carries
//! out what the core asks (transmits, connections, events) and publishes
//! its route for quinn's writes. Nothing here decides anything.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use natkit_proto::demux::{classify, PacketKind};
use natkit_proto::turn::client::Transport;
use quinn::udp::RecvMeta;
use rustls::pki_types::ServerName;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::socket::{Base, Outbound, Sender, SharedStream, VIRTUAL_REMOTE};
use super::Error;
use crate::description::{Description, TrickleCandidate};
use crate::portmap::driver::{http_exchange, HttpPiece, HttpStage};
use crate::session_core::{
    ConnectionError, ConnectionStage, Ending, Output, PathInfo, ServerProblem, SessionCore,
    SessionEvent, StreamId, Transmit, Via,
};
use crate::turn::stream::{ServerStream, TlsInfo};
use crate::udp::send_now;
use crate::{PairInfo, Role};

/// Most QUIC datagrams unwrapped out of order (from TCP/TLS relays, Data
/// indications, mixed GRO batches) waiting for quinn; beyond it they are
/// dropped, as a full socket buffer would.
const APP_QUEUE: usize = 4096;
/// Reads of one TURN connection per poll, so one busy connection cannot
/// starve the UDP bases.
const STREAM_READS: usize = 16;
/// How long a closed connection may take to send what it had queued.
const STREAM_LINGER: Duration = Duration::from_secs(1);
/// Rounds of one `poll_recv` before it yields (and asks to be polled again).
const ROUNDS: usize = 64;
/// The most one HTTP exchange with the gateway's UPnP device may take (the
/// core's port mapper gives up sooner; this only bounds the task).
const HTTP_LIMIT: Duration = Duration::from_secs(5);

/// Bind `count` UDP sockets on `ip` for the punch (in a blocking task,
/// inside the runtime); as many as the system gives (a descriptor limit
/// ends it early).
fn open_punch(ip: std::net::IpAddr, count: usize) -> Vec<Base> {
    let mut opened = Vec::with_capacity(count);
    for _ in 0..count {
        match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(Base::new) {
            Ok(b) => opened.push(b),
            Err(e) => {
                tracing::warn!(%ip, opened = opened.len(), error = %e, "hard-NAT punch: cannot open more sockets");
                break;
            }
        }
    }
    opened
}

/// A batch from `b` if one is ready (`None`: nothing). ICMP errors (a
/// peer's port closed) surface on a read and say nothing quinn needs: the
/// read is tried again, a bounded number of times.
fn recv_from(
    b: &Base,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> io::Result<Option<usize>> {
    for _ in 0..64 {
        match b.io.poll_recv_ready(cx) {
            Poll::Pending => return Ok(None),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) => {}
        }
        if let Ok(n) = b.io.try_io(Interest::READABLE, || {
            b.state.recv((&b.io).into(), bufs, meta)
        }) {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Requests from the [`Session`](super::Session) handle.
pub(super) enum Command {
    SetRemote {
        desc: Box<Description>,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    AddRemote(TrickleCandidate),
    /// ICE restart; the reply is the new ufrag.
    Restart {
        reply: oneshot::Sender<String>,
    },
    CheckList(oneshot::Sender<Vec<PairInfo>>),
    /// Close: delete TURN allocations and stop.
    Close,
}

/// What the driver publishes about the session for the handle.
#[derive(Debug, Clone)]
pub(super) struct Status {
    pub description: Description,
    pub path: Option<PathInfo>,
    pub role: Role,
    pub problems: Vec<ServerProblem>,
    pub ending: Option<Ending>,
    pub closed: bool,
    pub port_mapping: Option<crate::portmap::Mapping>,
}

impl Status {
    fn of(core: &SessionCore) -> Status {
        Status {
            description: core.local_description(),
            path: core.path().cloned(),
            role: core.role(),
            problems: core.problems().to_vec(),
            ending: core.ending(),
            closed: core.is_closed(),
            port_mapping: core.port_mapping().cloned(),
        }
    }
}

/// Where the application's event subscribers are.
pub(super) type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<SessionEvent>>>>;

type Connecting =
    Pin<Box<dyn Future<Output = Result<(ServerStream, Option<TlsInfo>), ConnectionError>> + Send>>;

enum StreamState {
    Connecting(Connecting),
    Up(Arc<SharedStream>),
    Closing(Arc<SharedStream>, Instant),
}

/// The driver; see the module documentation.
pub(super) struct Driver {
    core: SessionCore,
    cmds: mpsc::UnboundedReceiver<Command>,
    cmds_closed: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Instant,
    streams: HashMap<StreamId, StreamState>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_limit: Duration,
    status: watch::Sender<Status>,
    subscribers: Subscribers,
    /// QUIC datagrams for quinn that could not stay in quinn's buffers.
    app: VecDeque<Vec<u8>>,
    /// The core was given something: drain its output.
    touched: bool,
    /// Events or commands changed what the handle sees.
    status_dirty: bool,
    published_route: Option<u64>,
    next_base: usize,
    /// UPnP's HTTP exchanges (port mapping): their tasks, and what they
    /// read.
    http_tasks: HashMap<StreamId, tokio::task::AbortHandle>,
    http_tx: mpsc::UnboundedSender<(StreamId, HttpPiece)>,
    http_rx: mpsc::UnboundedReceiver<(StreamId, HttpPiece)>,
    /// The hard-NAT punch's sockets ([`Output::OpenSockets`]).
    punch: Vec<Arc<Base>>,
    next_punch: usize,
    /// Sockets bound off the driver's task (hundreds of binds would hold
    /// up everything else for tens of milliseconds).
    punch_tx: mpsc::UnboundedSender<Vec<Base>>,
    punch_rx: mpsc::UnboundedReceiver<Vec<Base>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        for t in self.http_tasks.values() {
            t.abort();
        }
    }
}

impl Driver {
    pub fn new(
        core: SessionCore,
        cmds: mpsc::UnboundedReceiver<Command>,
        status: watch::Sender<Status>,
        subscribers: Subscribers,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_limit: Duration,
        now: Instant,
    ) -> Driver {
        let (http_tx, http_rx) = mpsc::unbounded_channel();
        let (punch_tx, punch_rx) = mpsc::unbounded_channel();
        Driver {
            punch_tx,
            punch_rx,
            http_tasks: HashMap::new(),
            http_tx,
            http_rx,
            core,
            cmds,
            cmds_closed: false,
            timer: Box::pin(tokio::time::sleep_until(now.into())),
            timer_at: now,
            streams: HashMap::new(),
            tls,
            connect_limit,
            status,
            subscribers,
            app: VecDeque::new(),
            touched: true,
            status_dirty: true,
            published_route: None,
            next_base: 0,
            punch: Vec::new(),
            next_punch: 0,
        }
    }

    /// One `poll_recv` of quinn's: do all the session's work that is ready,
    /// and return the peer's QUIC datagrams, if any arrived.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        bases: &[Base],
        out: &ArcSwapOption<Outbound>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..ROUNDS {
            let now = Instant::now();
            let mut worked = self.poll_commands(cx, now);
            if now >= self.timer_at {
                self.core.handle_timeout(now);
                self.touched = true;
                worked = true;
            }
            worked |= self.poll_streams(cx, now);
            worked |= self.poll_http(cx, now);
            worked |= self.poll_punch(cx, now);
            self.drain(now, bases, out);
            worked |= self.flush_streams(cx);
            if let Some(n) = self.hand_app(bufs, meta) {
                return Poll::Ready(Ok(n));
            }
            match self.read_bases(cx, now, bases, bufs, meta) {
                Err(e) => return Poll::Ready(Err(e)),
                Ok(Some(n)) => {
                    self.drain(now, bases, out);
                    self.flush_streams(cx);
                    return Poll::Ready(Ok(n));
                }
                Ok(None) => {}
            }
            // Nothing more to read: the timer is the last thing to wait on.
            if self.timer.deadline() != self.timer_at.into() {
                self.timer.as_mut().reset(self.timer_at.into());
            }
            if self.timer.as_mut().poll(cx).is_ready() {
                continue;
            }
            if !worked {
                return Poll::Pending;
            }
        }
        // Much to do: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut worked = false;
        while !self.cmds_closed {
            match self.cmds.poll_recv(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(c)) => self.on_command(c, now),
                // Every handle is gone: close as if asked.
                Poll::Ready(None) => {
                    self.cmds_closed = true;
                    self.core.close(now);
                }
            }
            worked = true;
            self.touched = true;
            self.status_dirty = true;
        }
        worked
    }

    /// Carry out a command. What it changed is published before the reply,
    /// so a caller that reads the status after the reply sees it (e.g. the
    /// description of a restart, not the one before).
    fn on_command(&mut self, c: Command, now: Instant) {
        match c {
            Command::SetRemote { desc, reply } => {
                let r = self
                    .core
                    .set_remote_description(&desc, now)
                    .map_err(Error::Description);
                self.status.send_replace(Status::of(&self.core));
                let _ = reply.send(r);
            }
            Command::AddRemote(t) => self.core.add_remote_candidate(&t, now),
            Command::Restart { reply } => {
                self.core.restart(now);
                self.status.send_replace(Status::of(&self.core));
                let _ = reply.send(self.core.local_description().ufrag);
            }
            Command::CheckList(reply) => {
                let _ = reply.send(self.core.check_list());
            }
            Command::Close => self.core.close(now),
        }
    }

    /// What UPnP's HTTP exchanges read.
    fn poll_http(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut worked = false;
        while let Poll::Ready(Some((stream, piece))) = self.http_rx.poll_recv(cx) {
            worked = true;
            self.touched = true;
            match piece {
                HttpPiece::Data(d) => self.core.handle_http_data(stream, &d, now),
                HttpPiece::End(r) => {
                    self.http_tasks.remove(&stream);
                    let r = r.map_err(|(stage, e)| {
                        let stage = match stage {
                            HttpStage::Connect => ConnectionStage::Connect,
                            HttpStage::Exchange => ConnectionStage::Established,
                        };
                        ConnectionError::new(stage, &e)
                    });
                    self.core.handle_http_end(stream, r, now);
                }
            }
        }
        worked
    }

    /// Sockets for the punch, bound.
    fn poll_punch(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut worked = false;
        while let Poll::Ready(Some(bases)) = self.punch_rx.poll_recv(cx) {
            worked = true;
            self.touched = true;
            let addrs = bases.iter().map(|b| b.addr).collect();
            self.punch.extend(bases.into_iter().map(Arc::new));
            self.core.handle_sockets_opened(addrs, now);
        }
        worked
    }

    /// Connections being made, read, or closed.
    fn poll_streams(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut worked = false;
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let Some(state) = self.streams.get_mut(&id) else {
                continue;
            };
            match state {
                StreamState::Connecting(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok((s, _))) => {
                        *state = StreamState::Up(Arc::new(SharedStream::new(s)));
                        self.core.handle_stream_connected(id, now);
                        self.touched = true;
                        worked = true;
                    }
                    Poll::Ready(Err(e)) => {
                        self.streams.remove(&id);
                        self.core.handle_stream_closed(id, e, now);
                        self.touched = true;
                        worked = true;
                    }
                },
                StreamState::Up(s) => {
                    let s = s.clone();
                    if let Err(e) = self.read_stream(cx, now, id, &s, &mut worked) {
                        self.streams.remove(&id);
                        self.core.handle_stream_closed(id, e, now);
                        self.touched = true;
                        worked = true;
                    }
                }
                StreamState::Closing(s, until) => {
                    let done = now >= *until || s.lock().stream.poll_close(cx).is_ready();
                    if done {
                        self.streams.remove(&id);
                    }
                }
            }
        }
        worked
    }

    fn read_stream(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        id: StreamId,
        s: &SharedStream,
        worked: &mut bool,
    ) -> Result<(), ConnectionError> {
        let lost = |e: &io::Error| ConnectionError::new(ConnectionStage::Established, e);
        let mut slot = s.lock();
        slot.waker = Some(cx.waker().clone());
        for i in 0..STREAM_READS {
            match slot.stream.poll_read(cx, now) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(lost(&e)),
                Poll::Ready(Ok(())) => {}
            }
            *worked = true;
            self.touched = true;
            loop {
                let f = match slot.stream.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(lost(&io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                };
                if let Some(r) = self.core.handle_stream_frame(now, id, f.message) {
                    if self.app.len() < APP_QUEUE {
                        self.app.push_back(f.message[r].to_vec());
                    }
                }
            }
            if i + 1 == STREAM_READS {
                // More may be waiting: another round.
                cx.waker().wake_by_ref();
            }
        }
        Ok(())
    }

    /// Write what the core and quinn queued on the connections.
    fn flush_streams(&mut self, cx: &mut Context<'_>) -> bool {
        let mut failed = Vec::new();
        for (id, state) in &self.streams {
            if let StreamState::Up(s) = state {
                let mut slot = s.lock();
                if slot.stream.queued() > 0 {
                    if let Poll::Ready(Err(e)) = slot.stream.poll_flush(cx) {
                        failed.push((*id, e));
                    }
                }
            }
        }
        let worked = !failed.is_empty();
        let now = Instant::now();
        for (id, e) in failed {
            self.streams.remove(&id);
            self.core.handle_stream_closed(
                id,
                ConnectionError::new(ConnectionStage::Established, &e),
                now,
            );
            self.touched = true;
        }
        worked
    }

    /// Carry out what the core asks, until it only has a timer left.
    fn drain(&mut self, now: Instant, bases: &[Base], out: &ArcSwapOption<Outbound>) {
        if !std::mem::take(&mut self.touched) {
            return;
        }
        let mut events = Vec::new();
        loop {
            match self.core.poll_output() {
                Output::Transmit(t) => self.send(t, bases),
                Output::Connect {
                    stream,
                    server,
                    transport,
                    tls_name,
                } => self.connect(stream, server, transport, tls_name),
                Output::Http {
                    stream,
                    from,
                    to,
                    request,
                } => {
                    let task = tokio::spawn(http_exchange(
                        stream,
                        from,
                        to,
                        request,
                        HTTP_LIMIT,
                        self.http_tx.clone(),
                    ));
                    self.http_tasks.insert(stream, task.abort_handle());
                }
                Output::Disconnect { stream } => {
                    if let Some(t) = self.http_tasks.remove(&stream) {
                        t.abort();
                    }
                    if let Some(StreamState::Up(s)) = self.streams.remove(&stream) {
                        self.streams
                            .insert(stream, StreamState::Closing(s, now + STREAM_LINGER));
                    }
                }
                Output::OpenSockets { ip, count } => {
                    let tx = self.punch_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let _ = tx.send(open_punch(ip, count));
                    });
                }
                Output::CloseSockets(addrs) => {
                    self.punch.retain(|b| !addrs.contains(&b.addr));
                }
                Output::Event(e) => {
                    self.status_dirty = true;
                    events.push(e);
                }
                Output::Timeout(t) => {
                    self.timer_at = t;
                    break;
                }
            }
        }
        if self.published_route != Some(self.core.route_version()) {
            self.publish_route(bases, out);
        }
        // The status first: an application that reads the session's state
        // on an event sees what the event says (the path of Connected, the
        // mapping of PortMapped).
        if std::mem::take(&mut self.status_dirty) {
            self.status.send_replace(Status::of(&self.core));
        }
        for e in events {
            self.publish_event(e);
        }
    }

    fn send(&mut self, t: Transmit, bases: &[Base]) {
        match t.via {
            Via::Base(addr) => {
                let b = bases.iter().find(|b| b.addr == addr).or_else(|| {
                    self.punch
                        .iter()
                        .find(|b| b.addr == addr)
                        .map(|b| b.as_ref())
                });
                if let Some(b) = b {
                    // At once, even on a socket tokio has not seen
                    // writable yet (see `crate::udp`): the session's first
                    // STUN probes went to waste otherwise. A full socket
                    // buffer drops it; the core retransmits.
                    if let Err(e) = send_now(&b.io, &t.payload, Some(t.to)) {
                        tracing::trace!(to = %t.to, error = %e, "send failed");
                    }
                }
            }
            Via::Stream(id) => {
                if let Some(StreamState::Up(s)) = self.streams.get(&id) {
                    if !s.lock().stream.queue(&t.payload) {
                        tracing::debug!(stream = %id, "TURN connection queue full: message dropped");
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        stream: StreamId,
        server: SocketAddr,
        transport: Transport,
        tls_name: Option<String>,
    ) {
        let limit = self.connect_limit;
        let tls = match (transport, tls_name, &self.tls) {
            (Transport::Tls, Some(name), Some(config)) => match ServerName::try_from(name) {
                Ok(name) => Some((config.clone(), name)),
                Err(e) => {
                    let e = io::Error::new(io::ErrorKind::InvalidInput, e);
                    let fut: Connecting = Box::pin(async move {
                        Err(ConnectionError::new(ConnectionStage::TlsHandshake, &e))
                    });
                    self.streams.insert(stream, StreamState::Connecting(fut));
                    return;
                }
            },
            (Transport::Tls, _, _) => {
                // The builder refuses this configuration; stay safe anyway.
                let e = io::Error::new(io::ErrorKind::InvalidInput, "no TLS configuration");
                let fut: Connecting = Box::pin(async move {
                    Err(ConnectionError::new(ConnectionStage::TlsHandshake, &e))
                });
                self.streams.insert(stream, StreamState::Connecting(fut));
                return;
            }
            _ => None,
        };
        let fut: Connecting = Box::pin(ServerStream::connect(server, tls, limit));
        self.streams.insert(stream, StreamState::Connecting(fut));
    }

    fn publish_route(&mut self, bases: &[Base], out: &ArcSwapOption<Outbound>) {
        self.published_route = Some(self.core.route_version());
        let o = self.core.route().and_then(|route| {
            let sender = match route.via {
                Via::Base(a) => bases
                    .iter()
                    .position(|b| b.addr == a)
                    .map(Sender::Base)
                    .or_else(|| {
                        let b = self.punch.iter().find(|b| b.addr == a)?;
                        Some(Sender::Punch(b.clone()))
                    }),
                Via::Stream(id) => match self.streams.get(&id) {
                    Some(StreamState::Up(s)) => Some(Sender::Stream(s.clone())),
                    _ => None,
                },
            }?;
            Some(Arc::new(Outbound { route, sender }))
        });
        out.store(o);
    }

    fn publish_event(&mut self, e: SessionEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        // A subscriber that dropped its receiver is forgotten; the others
        // get every event (unbounded: events are few, see `Events`).
        subs.retain(|tx| tx.send(e.clone()).is_ok());
    }

    /// Give quinn the unwrapped datagrams waiting.
    fn hand_app(&mut self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Option<usize> {
        if self.app.is_empty() {
            return None;
        }
        let mut n = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some(d) = self.app.pop_front() else { break };
            let len = d.len().min(buf.len());
            buf[..len].copy_from_slice(&d[..len]);
            *m = RecvMeta {
                addr: VIRTUAL_REMOTE,
                len,
                stride: len,
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        Some(n)
    }

    /// Read the next base that has datagrams (a different one first each
    /// time, so one busy base cannot starve the others).
    fn read_bases(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        bases: &[Base],
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<Option<usize>> {
        let nb = bases.len();
        for k in 0..nb {
            let bi = (self.next_base + k) % nb;
            let b = &bases[bi];
            if let Some(n) = recv_from(b, cx, bufs, meta)? {
                self.next_base = bi + 1;
                self.sort(b.addr, now, bufs, meta, n);
                return Ok(Some(n));
            }
        }
        // The punch's sockets: few datagrams (probes, checks), one each
        // per round, a different one first each time. An error on one (an
        // ICMP report) is no reason to stop the session.
        let np = self.punch.len();
        for k in 0..np {
            let pi = (self.next_punch + k) % np;
            let b = self.punch[pi].clone();
            if let Ok(Some(n)) = recv_from(&b, cx, bufs, meta) {
                self.next_punch = pi + 1;
                self.sort(b.addr, now, bufs, meta, n);
                return Ok(Some(n));
            }
        }
        Ok(None)
    }

    /// Sort the `n` datagrams just read on base `local`: the peer's QUIC
    /// stays for quinn (its source rewritten to [`VIRTUAL_REMOTE`]), the
    /// rest goes to the core segment by segment; QUIC it unwraps is packed
    /// in place when the batch stays a valid GRO batch, else queued.
    fn sort(
        &mut self,
        local: SocketAddr,
        now: Instant,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
    ) {
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            let from = m.addr;
            let stride = m.stride.max(1);
            let data = &mut buf[..m.len];
            let all_quic = data
                .chunks(stride)
                .all(|s| classify(s, false) == PacketKind::Quic);
            // RFC 9443 §3: QUIC, when it comes from the peer.
            if all_quic && self.core.accept_app_datagram(local, from) {
                m.addr = VIRTUAL_REMOTE;
                m.dst_ip = None;
                continue;
            }
            self.touched = true;
            let mut packed = 0;
            let mut seg_len: Option<usize> = None;
            let mut uniform = true;
            let mut last_short = false;
            let mut start = 0;
            let mut overflow: Vec<Vec<u8>> = Vec::new();
            while start < data.len() {
                let end = (start + stride).min(data.len());
                let Some(r) = self
                    .core
                    .handle_datagram(now, local, from, &mut data[start..end])
                else {
                    start = end;
                    continue;
                };
                let (a, len) = (start + r.start, r.len());
                // GRO's shape: equal lengths, the last one maybe shorter.
                match seg_len {
                    None => seg_len = Some(len),
                    Some(l) if len == l && !last_short => {}
                    Some(l) if len < l && !last_short => last_short = true,
                    Some(_) => uniform = false,
                }
                if uniform && len > 0 {
                    data.copy_within(a..a + len, packed);
                    packed += len;
                } else {
                    overflow.push(data[a..a + len].to_vec());
                }
                start = end;
            }
            for d in overflow {
                if self.app.len() < APP_QUEUE {
                    self.app.push_back(d);
                }
            }
            match seg_len {
                Some(l) if packed > 0 => {
                    m.len = packed;
                    m.stride = l;
                    m.addr = VIRTUAL_REMOTE;
                    m.dst_ip = None;
                }
                _ => {
                    m.len = 0;
                    m.stride = 0;
                }
            }
        }
    }
}
