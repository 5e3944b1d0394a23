//! The socket quinn runs over: every host base's UDP socket, with the
//! session's driver inside.
//!
//! One task reads: quinn's endpoint task calls [`IceSocket`]'s `poll_recv`,
//! which runs the [`Driver`]: it reads every base (GRO batches kept), hands
//! the peer's QUIC to quinn in place, and feeds everything else (ICE checks,
//! STUN and TURN traffic, QUIC that came through our relay) to the sans-IO
//! [`SessionCore`](crate::session_core::SessionCore), in the same task. TCP
//! and TLS connections to TURN servers, commands from the
//! [`Session`](super::Session) handle and the core's timer are polled there
//! too.
//!
//! quinn writes from its connection task through `try_send`, which reads
//! the route the core published (an atomic pointer swap, no lock) and sends
//! directly: from a host base to the peer (GSO kept), wrapped in
//! ChannelData or a Send indication to our TURN server, or into the TCP/TLS
//! connection to it. No route table is changed by two tasks, and relayed
//! QUIC crosses no more task boundaries than direct QUIC (none).
//!
//! quinn sees one fixed peer address ([`VIRTUAL_REMOTE`]) for the whole
//! session; only the route under it changes, so a direct pair can take
//! over from the relay without a reconnect.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwapOption;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

use super::driver::Driver;
use crate::session_core::{Route, Wrap, MAX_WRAP_OVERHEAD};
use crate::turn::stream::ServerStream;

thread_local! {
    /// Framing space for wrapped sends: one buffer per thread, no
    /// allocation per datagram.
    static WRAP_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The peer's address as quinn sees it. It never reaches the wire: sends to
/// it follow the route. (A documentation address, so it could not collide
/// with a real peer even if it leaked into a log.)
pub(super) const VIRTUAL_REMOTE: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1ce, 0, 0, 0, 0, 2)),
    1,
);

/// Our own address as quinn sees it.
pub(super) const VIRTUAL_LOCAL: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x1ce, 0, 0, 0, 0, 1)),
    1,
);

/// One host base: a UDP socket bound to one local address.
pub(super) struct Base {
    /// The address it is bound to (a host candidate's base).
    pub addr: SocketAddr,
    pub io: tokio::net::UdpSocket,
    pub state: UdpSocketState,
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base({})", self.addr)
    }
}

impl Base {
    /// Wrap a bound socket.
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
}

/// A TCP/TLS connection to a TURN server, shared by the driver (which reads
/// it and sends the core's messages) and quinn's writes (relayed QUIC).
#[derive(Debug)]
pub(super) struct SharedStream(Mutex<StreamSlot>);

#[derive(Debug)]
pub(super) struct StreamSlot {
    pub stream: ServerStream,
    /// The driver's task: woken when a write from quinn's side could not
    /// finish, so the driver flushes the rest.
    pub waker: Option<Waker>,
}

impl SharedStream {
    pub fn new(stream: ServerStream) -> Self {
        SharedStream(Mutex::new(StreamSlot {
            stream,
            waker: None,
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, StreamSlot> {
        // A panic while holding the lock leaves a stream that is still
        // consistent (a queue and a socket): keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where quinn's datagrams go: the core's route, resolved to a socket.
#[derive(Debug)]
pub(super) struct Outbound {
    pub route: Route,
    pub sender: Sender,
}

#[derive(Debug)]
pub(super) enum Sender {
    /// Index of a host base.
    Base(usize),
    /// A socket of the hard-NAT punch, owned by the driver.
    Punch(Arc<Base>),
    /// A connection to a TURN server.
    Stream(Arc<SharedStream>),
}

/// quinn's socket (see the module documentation).
pub(super) struct IceSocket {
    bases: Vec<Base>,
    driver: Mutex<Driver>,
    out: ArcSwapOption<Outbound>,
    gso: usize,
    gro: usize,
}

impl fmt::Debug for IceSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceSocket")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl IceSocket {
    pub fn new(bases: Vec<Base>, driver: Driver) -> IceSocket {
        let gso = bases
            .iter()
            .map(|b| b.state.max_gso_segments())
            .min()
            .unwrap_or(1);
        let gro = bases
            .iter()
            .map(|b| b.state.gro_segments())
            .min()
            .unwrap_or(1);
        IceSocket {
            bases,
            driver: Mutex::new(driver),
            out: ArcSwapOption::empty(),
            gso,
            gro,
        }
    }

    fn send_wrapped(&self, b: &Base, route: &Route, t: &Transmit<'_>) -> io::Result<()> {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        WRAP_SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            for (i, s) in t.contents.chunks(seg).enumerate() {
                let need = s.len() + MAX_WRAP_OVERHEAD;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let n = route
                    .wrap_into(s, &mut buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                match b.io.try_send_to(&buf[..n], route.to) {
                    Ok(_) => {}
                    // Nothing sent yet: quinn waits for writability and
                    // retries. Part sent: the rest is lost, as UDP may.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && i == 0 => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
            Ok(())
        })
    }

    fn send_stream(&self, s: &SharedStream, route: &Route, t: &Transmit<'_>) {
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let mut slot = s.lock();
        WRAP_SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            for s in t.contents.chunks(seg) {
                let need = s.len() + MAX_WRAP_OVERHEAD;
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let Ok(n) = route.wrap_into(s, &mut buf) else {
                    continue;
                };
                // A full queue drops the datagram: QUIC sees loss and
                // slows down.
                if !slot.stream.queue(&buf[..n]) {
                    break;
                }
            }
        });
        // Write now, in this task; when the socket is full the driver's
        // task is woken (its waker is registered) and writes the rest.
        if let Some(w) = slot.waker.clone() {
            let mut cx = Context::from_waker(&w);
            let _ = slot.stream.poll_flush(&mut cx);
        }
    }
}

impl AsyncUdpSocket for IceSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller { sock: self })
    }

    fn try_send(&self, t: &Transmit<'_>) -> io::Result<()> {
        if t.destination != VIRTUAL_REMOTE {
            // quinn only ever talks to the peer; anything else is dropped.
            return Ok(());
        }
        let out = self.out.load();
        // No route yet: drop, QUIC retransmits.
        let Some(out) = out.as_ref() else {
            return Ok(());
        };
        match &out.sender {
            Sender::Base(_) | Sender::Punch(_) => {
                let b = match &out.sender {
                    Sender::Punch(b) => b,
                    Sender::Base(i) => &self.bases[*i],
                    Sender::Stream(_) => return Ok(()),
                };
                if out.route.wrap == Wrap::None {
                    let tx = Transmit {
                        destination: out.route.to,
                        ecn: t.ecn,
                        contents: t.contents,
                        segment_size: t.segment_size,
                        src_ip: None,
                    };
                    b.io.try_io(Interest::WRITABLE, || b.state.send((&b.io).into(), &tx))
                } else {
                    self.send_wrapped(b, &out.route, t)
                }
            }
            Sender::Stream(s) => {
                self.send_stream(s, &out.route, t);
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
        let mut d = self.driver.lock().unwrap_or_else(|e| e.into_inner());
        d.poll_recv(cx, &self.bases, &self.out, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(VIRTUAL_LOCAL)
    }

    fn max_transmit_segments(&self) -> usize {
        self.gso
    }

    fn max_receive_segments(&self) -> usize {
        self.gro
    }

    fn may_fragment(&self) -> bool {
        self.bases.iter().any(|b| b.state.may_fragment())
    }
}

/// Write readiness of the base the current route sends from.
struct Poller {
    sock: Arc<IceSocket>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Poller")
    }
}

impl UdpPoller for Poller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = self.sock.out.load();
        match out.as_ref().map(|o| &o.sender) {
            Some(Sender::Base(i)) => self.sock.bases[*i].io.poll_send_ready(cx),
            Some(Sender::Punch(b)) => b.io.poll_send_ready(cx),
            // A stream's queue drops instead of blocking; no route drops.
            _ => Poll::Ready(Ok(())),
        }
    }
}
