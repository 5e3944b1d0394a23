//! [`TurnConnection`]: one TURN allocation driven over tokio, for tools
//! that talk to a TURN server directly (`natkit turn`, `natkit bench turn`,
//! tests). Sessions manage their allocations inside
//! [`SessionCore`](crate::session_core::SessionCore) instead; both use
//! proto's sans-IO [`Client`] and the same [`ServerStream`] for TCP and TLS.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_proto::framing::FramingError;
use natkit_proto::turn::client::{self as turn, Client, Transport, UsageError};
use rustls::pki_types::ServerName;
use tokio::net::UdpSocket;
use tokio::time::Sleep;

use super::stream::{ServerStream, TlsInfo};
use crate::session_core::ConnectionError;
use crate::udp::send_now;

/// Why a [`TurnConnection`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The UDP socket could not be opened.
    #[error("cannot open a UDP socket for {server}: {source}")]
    Socket {
        /// The TURN server.
        server: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The TCP connection or TLS handshake failed.
    #[error("cannot reach TURN server {server}: {error}")]
    Connection {
        /// The TURN server.
        server: SocketAddr,
        /// What failed.
        error: ConnectionError,
    },
    /// TLS was asked for without a client configuration and server name.
    #[error("TURN over TLS to {0} needs a TLS configuration and the server's name")]
    TlsSettingsMissing(SocketAddr),
}

/// Why the connection to the server failed after it was set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Sending or receiving failed (for a stream: the connection broke; the
    /// kind is `UnexpectedEof` when the server closed it).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are neither STUN nor ChannelData.
    #[error("the server sent data that is not TURN: {0}")]
    Framing(#[from] FramingError),
    /// The server redirected the Allocate (300 Try Alternate) to an
    /// alternate that could not be reached over TCP/TLS.
    #[error("cannot reach the alternate TURN server {server} (redirected by {from}): {error}")]
    Alternate {
        /// The server that redirected.
        from: SocketAddr,
        /// The alternate.
        server: SocketAddr,
        /// What failed.
        error: ConnectionError,
    },
}

/// Why [`TurnConnection::send_to`] did not send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The client cannot frame it (no allocation, no permission...).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The connection failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// What arrived from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The client's allocation, permission or channel news.
    Event(turn::Event),
    /// UDP only: the system reported an ICMP error about the server
    /// (`ConnectionRefused`: port unreachable, nothing listens there).
    /// News, not failure: the client's timers still decide when silence
    /// means the server is gone (an ICMP error can be stale or forged,
    /// RFC 8085 §5.2), but a tool may give up at once.
    Unreachable(io::ErrorKind),
    /// Data relayed from a peer.
    Data {
        /// The peer.
        peer: SocketAddr,
        /// The payload.
        data: Vec<u8>,
        /// The channel it came on; `None` for a Data indication.
        channel: Option<u16>,
        /// When it was read.
        at: Instant,
    },
}

enum Link {
    /// A UDP socket connected to the server: it hears only the server, and
    /// ICMP errors about it surface on reads.
    Udp(UdpSocket),
    Stream(ServerStream),
}

/// One allocation on one TURN server over UDP, TCP or TLS, driven by
/// tokio. The allocation starts as soon as the connection is up; its
/// refreshes run whenever [`TurnConnection::next`] is awaited.
///
/// [`TurnConnection::next`] and [`TurnConnection::flush`] are cancel-safe:
/// dropping them before they finish (a `tokio::select!` over several
/// connections) loses and repeats nothing; a message the system could not
/// take yet is sent by the next call.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use natkit_ice::turn::{Incoming, TurnConnection};
/// use natkit_proto::turn::client::{Config, Credentials, Event, Transport};
///
/// let server = "192.0.2.1:3478".parse()?;
/// let cfg = Config::new(server, Transport::Udp, Credentials::new("alice", "secret"));
/// let mut turn = TurnConnection::connect(cfg, None, Duration::from_secs(5)).await?;
/// loop {
///     match turn.next().await? {
///         Incoming::Event(Event::Allocated { relayed, .. }) => {
///             println!("relayed address: {relayed:?}");
///             break;
///         }
///         Incoming::Event(Event::Failed(e)) => return Err(e.into()),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct TurnConnection {
    link: Link,
    server: SocketAddr,
    /// Boxed: a connection is moved around (into tasks, between a load
    /// generator's phases), and the client is most of its size.
    client: Box<Client>,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    incoming: VecDeque<Incoming>,
    /// Where [`TurnConnection::send_to`] frames (grown on first use).
    buf: Vec<u8>,
    /// The client's next timer, reset rather than made anew at each wait.
    timer: Pin<Box<Sleep>>,
    /// A message taken from the client that the socket has not taken yet
    /// (a cancelled flush): sent first by the next one.
    unsent: Option<Vec<u8>>,
    icmp: Option<io::ErrorKind>,
    /// How a stream was set up, to reach an alternate the same way
    /// (RFC 8489 §10): the TLS settings and the time limit per step.
    tls_settings: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    limit: Duration,
}

/// Room for the largest datagram the server may send: a UDP datagram's
/// payload is at most 65,507 bytes over IPv4 (65,527 over IPv6).
const RECV_BUF: usize = 65_536;

thread_local! {
    /// One receive buffer per thread for all the UDP connections on it: a
    /// datagram is read and handed to the client within one poll, so no
    /// connection needs 64 KiB of its own (a load generator has thousands).
    static RECV: RefCell<Box<[u8]>> = RefCell::new(vec![0; RECV_BUF].into_boxed_slice());
}

impl std::fmt::Debug for TurnConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConnection")
            .field("server", &self.server)
            .field("local", &self.local)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Errors a UDP read or write reports that say nothing final: signals, and
/// ICMP errors (noted, see [`TurnConnection::icmp_error`]).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Whether `e` is an ICMP error about the server (port unreachable; reset
/// is how some systems report it).
fn is_icmp(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

impl TurnConnection {
    /// Reach `cfg.server` over `cfg.transport` and start allocating. UDP
    /// binds the address the system routes to the server from; TCP and TLS
    /// connect (and for TLS handshake with `tls`: the client configuration
    /// and the name the server's certificate must carry), each step within
    /// `limit`.
    pub async fn connect(
        cfg: turn::Config,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        limit: Duration,
    ) -> Result<TurnConnection, ConnectError> {
        let server = cfg.server;
        match cfg.transport {
            Transport::Udp => {
                let any: SocketAddr = if server.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = std::net::UdpSocket::bind(any)
                    .map_err(|source| ConnectError::Socket { server, source })?;
                Self::over_udp(sock, cfg).map_err(|source| ConnectError::Socket { server, source })
            }
            Transport::Tcp | Transport::Tls => {
                let tls = match cfg.transport {
                    Transport::Tls => Some(tls.ok_or(ConnectError::TlsSettingsMissing(server))?),
                    _ => None,
                };
                let (stream, info) = ServerStream::connect(server, tls.clone(), limit)
                    .await
                    .map_err(|error| ConnectError::Connection { server, error })?;
                let local = stream.local_addr();
                let mut c = Self::new(
                    Link::Stream(stream),
                    local,
                    Client::new(cfg, Instant::now()),
                    info,
                );
                c.tls_settings = tls;
                c.limit = limit;
                Ok(c)
            }
        }
    }

    /// Allocate over UDP from a socket the caller bound (e.g. one of many
    /// loopback addresses of a load generator). The socket is connected to
    /// the server: an allocation is its 5-tuple (RFC 8656 §2.2).
    pub fn over_udp(sock: std::net::UdpSocket, cfg: turn::Config) -> io::Result<TurnConnection> {
        sock.connect(cfg.server)?;
        Self::from_udp_parts(Client::new(cfg, Instant::now()), sock)
    }

    /// Drive `client` again over `sock`, both taken with
    /// [`TurnConnection::into_udp_parts`] (e.g. to delete the allocations
    /// a load generator used). `sock` must be connected to the client's
    /// server.
    pub fn from_udp_parts(client: Client, sock: std::net::UdpSocket) -> io::Result<TurnConnection> {
        sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(sock)?;
        let local = sock.local_addr()?;
        Ok(Self::new(Link::Udp(sock), local, client, None))
    }

    fn new(link: Link, local: SocketAddr, client: Client, tls: Option<TlsInfo>) -> TurnConnection {
        TurnConnection {
            server: client.config().server,
            link,
            client: Box::new(client),
            local,
            tls,
            incoming: VecDeque::new(),
            buf: Vec::new(),
            // Armed at the first wait (see `next`).
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            unsent: None,
            icmp: None,
            tls_settings: None,
            limit: Duration::from_secs(5),
        }
    }

    /// The client was redirected (300 Try Alternate, RFC 8489 §10): talk
    /// to the alternate from now on. UDP points the socket at it; a stream
    /// connects anew, the same way, its certificate checked against
    /// ALTERNATE-DOMAIN when the server gave one (else the name used for
    /// the first server). The old stream is dropped: over TCP an
    /// allocation lives as long as its connection, and there is none.
    async fn follow_redirect(&mut self) -> Result<(), LinkError> {
        let (from, to) = (self.server, self.client.server());
        let domain = self.client.alternate_domain().map(str::to_owned);
        match &mut self.link {
            Link::Udp(s) => {
                s.connect(to).await?;
                self.local = s.local_addr()?;
            }
            Link::Stream(_) => {
                let mut tls = self.tls_settings.clone();
                if let (Some((_, name)), Some(d)) = (&mut tls, domain) {
                    if let Ok(n) = ServerName::try_from(d) {
                        *name = n;
                    }
                }
                let (stream, info) =
                    ServerStream::connect(to, tls, self.limit)
                        .await
                        .map_err(|error| LinkError::Alternate {
                            from,
                            server: to,
                            error,
                        })?;
                self.local = stream.local_addr();
                self.tls = info;
                self.link = Link::Stream(stream);
            }
        }
        self.server = to;
        Ok(())
    }

    /// Start the allocation over at `now` with a new client of the same
    /// configuration, for a caller that connects first and allocates
    /// later (`natkit turn` sets up all its connections, then allocates on
    /// one after the other): the client made at connect time would count
    /// the wait for its turn against its first request's retransmission
    /// timer. Call it before anything was sent: the server would answer a
    /// second Allocate on a 5-tuple that has an allocation with 437
    /// (RFC 8656 §7.2).
    pub fn restart(&mut self, now: Instant) {
        *self.client = Client::new(self.client.config().clone(), now);
        self.incoming.clear();
        self.unsent = None;
    }

    /// The sans-IO client: state, relayed addresses, and the calls that
    /// queue requests (permissions, channels, refresh, close).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Our end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// What the TLS handshake settled (TLS only).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The last ICMP error a UDP read or write reported
    /// (`ConnectionRefused`: the server's port is closed), which the
    /// client's timers otherwise only see as silence.
    pub fn icmp_error(&self) -> Option<io::ErrorKind> {
        self.icmp
    }

    /// Send what the client queued, then wait for the next thing from the
    /// server (or the client's timers): an event, or relayed data.
    pub async fn next(&mut self) -> Result<Incoming, LinkError> {
        loop {
            if let Some(i) = self.incoming.pop_front() {
                return Ok(i);
            }
            self.flush().await?;
            if let Some(i) = self.incoming.pop_front() {
                return Ok(i);
            }
            if let Some(e) = self.client.poll_event() {
                return Ok(Incoming::Event(e));
            }
            let wake = self.client.poll_timeout();
            if let Some(w) = wake.map(tokio::time::Instant::from_std) {
                if self.timer.deadline() != w || self.timer.is_elapsed() {
                    self.timer.as_mut().reset(w);
                }
            }
            tokio::select! {
                r = recv(&mut self.link, &mut self.client, &mut self.incoming, &mut self.icmp) => r?,
                _ = &mut self.timer, if wake.is_some() => {}
            }
            let now = Instant::now();
            if self.client.poll_timeout().is_some_and(|t| t <= now) {
                self.client.handle_timeout(now);
            }
        }
    }

    /// [`TurnConnection::next`] until `deadline`: `None` when it passed.
    pub async fn next_until(&mut self, deadline: Instant) -> Result<Option<Incoming>, LinkError> {
        match tokio::time::timeout_at(deadline.into(), self.next()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Relay `data` to `peer`: ChannelData when a channel is bound, else a
    /// Send indication (it needs a permission). Cancelled before it
    /// finishes, the data may not have been sent (like a lost datagram).
    pub async fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        // Whatever the client queued goes first: requests keep their order
        // with the data on a stream.
        self.flush().await?;
        // A Send indication's header, XOR-PEER-ADDRESS and DATA header
        // fit in 64 bytes (RFC 8656 §11.1).
        let need = data.len() + 64;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let n = self.client.send_to(peer, data, &mut self.buf)?;
        let msg = &self.buf[..n];
        match &mut self.link {
            Link::Udp(s) => send_udp(s, msg, &mut self.icmp, &mut self.incoming).await?,
            Link::Stream(s) => {
                queue_stream(s, msg).await?;
                poll_fn(|cx| s.poll_flush(cx))
                    .await
                    .map_err(LinkError::Io)?;
            }
        }
        Ok(())
    }

    /// Send what the client queued (requests, refreshes).
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        loop {
            // Redirected: what the client queues now is for the alternate
            // (a message left unsent for the old server by a cancelled
            // call goes there too: answered as a stray, harmless).
            if self.client.server() != self.server {
                self.follow_redirect().await?;
            }
            if self.unsent.is_none() {
                self.unsent = self.client.poll_transmit().map(|t| t.payload);
            }
            let Some(msg) = self.unsent.as_deref() else {
                break;
            };
            match &mut self.link {
                Link::Udp(s) => send_udp(s, msg, &mut self.icmp, &mut self.incoming).await?,
                // Once queued, the stream owns the bytes: writing them
                // below resumes where a cancelled call stopped.
                Link::Stream(s) => queue_stream(s, msg).await?,
            }
            self.unsent = None;
        }
        if let Link::Stream(s) = &mut self.link {
            poll_fn(|cx| s.poll_flush(cx)).await?;
        }
        Ok(())
    }

    /// The UDP socket and the client, for a load generator that takes the
    /// data path over (refreshes must then be driven by the caller; see
    /// [`TurnConnection::from_udp_parts`] to hand them back). Flush first:
    /// a message the socket had not taken yet is dropped.
    pub fn into_udp_parts(self) -> Option<(Client, std::net::UdpSocket)> {
        match self.link {
            Link::Udp(s) => s.into_std().ok().map(|s| (*self.client, s)),
            Link::Stream(_) => None,
        }
    }
}

/// Read what is there (at least one datagram or read) and feed it to the
/// client; peer data goes to `incoming`.
async fn recv(
    link: &mut Link,
    client: &mut Client,
    incoming: &mut VecDeque<Incoming>,
    icmp: &mut Option<io::ErrorKind>,
) -> Result<(), LinkError> {
    match link {
        Link::Udp(s) => loop {
            s.readable().await?;
            // Read and hand over within this poll (no await): the
            // thread's buffer serves every connection.
            let got = RECV.with_borrow_mut(|buf| match s.try_recv(buf) {
                Ok(n) => {
                    deliver(client, incoming, &buf[..n], Instant::now());
                    Ok(true)
                }
                // Readiness was stale: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) if transient(&e) => {
                    note_icmp(&e, icmp, incoming);
                    Ok(true)
                }
                Err(e) => Err(e),
            });
            if got? {
                return Ok(());
            }
        },
        Link::Stream(s) => {
            poll_fn(|cx| s.poll_read(cx, Instant::now())).await?;
            let now = Instant::now();
            while let Some(f) = s.next_frame()? {
                deliver(client, incoming, f.message, now);
            }
            Ok(())
        }
    }
}

/// Hand one message from the server to the client; peer data goes to
/// `incoming`.
fn deliver(client: &mut Client, incoming: &mut VecDeque<Incoming>, msg: &[u8], now: Instant) {
    if let Some(d) = client.recv(msg, now) {
        incoming.push_back(Incoming::Data {
            peer: d.peer,
            data: d.data.to_vec(),
            channel: d.channel,
            at: now,
        });
    }
}

/// Send one datagram to the server (cancel-safe: tokio sends all or
/// nothing). ICMP errors and signals are noted, not failures: the timers
/// decide when silence means failure.
async fn send_udp(
    s: &UdpSocket,
    msg: &[u8],
    icmp: &mut Option<io::ErrorKind>,
    incoming: &mut VecDeque<Incoming>,
) -> Result<(), LinkError> {
    // At once (see `crate::udp`); tokio's wait is for a full buffer.
    let r = match send_now(s, msg, None) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.send(msg).await,
        r => r,
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) if transient(&e) => {
            note_icmp(&e, icmp, incoming);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Queue one message on a stream, waiting for room: the queue bound
/// applies to relayed data, a tool waits instead of dropping.
async fn queue_stream(s: &mut ServerStream, msg: &[u8]) -> Result<(), LinkError> {
    while !s.queue(msg) {
        poll_fn(|cx| s.poll_flush(cx)).await?;
    }
    Ok(())
}

fn note_icmp(e: &io::Error, icmp: &mut Option<io::ErrorKind>, incoming: &mut VecDeque<Incoming>) {
    if is_icmp(e) {
        *icmp = Some(e.kind());
        incoming.push_back(Incoming::Unreachable(e.kind()));
    }
}
