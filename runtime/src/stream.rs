//! What the servers' TCP and TLS connections share: one accept loop
//! ([`listen`], [`accept_loop`]) with a cap on open connections and a bounded
//! TLS handshake, and around [`natkit_proto::framing::Deframer`], reading
//! with two deadlines and a writer task with a bounded queue and bounded
//! writes. A server says what a connection is for by implementing
//! [`StreamService`].
//!
//! A connection is closed when it makes no progress: no bytes for the idle
//! timeout while no frame has started, or a frame not finished within the
//! idle timeout of its first byte (so one byte now and then cannot hold a
//! connection open), or a write that does not complete within the idle
//! timeout (a client that sends and never reads).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natkit_proto::framing::Deframer;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, info, warn};

use crate::front::share::{self, Decision, Routed, ShareError};
use crate::front::FrontDoor;
use crate::shutdown::Shutdown;
use crate::tls::{CurrentTls, ReloadableAcceptor};

/// A stream listener's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl StreamKind {
    /// The metric label: `tcp` or `tls`.
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Tcp => "tcp",
            StreamKind::Tls => "tls",
        }
    }
}

/// What became of an accepted connection before it was served: the `result`
/// label of the servers' connection counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Taken (after its TLS handshake, for TLS).
    Accepted,
    /// Closed at once: the cap on open connections is reached.
    RejectedCap,
    /// The TLS handshake failed or did not finish in time.
    TlsFailed,
    /// Closed at once: a trusted front proxy sent no valid PROXY v2 header, or another
    /// address sent one.
    ProxyRefused,
    /// On a shared TLS port: not TURN, handed to the web backend (TLS terminated).
    Web,
    /// On a shared TLS port: passed through untouched by server name.
    Passthrough,
    /// On a shared TLS port: the backend could not be reached.
    BackendFailed,
    /// An ACME tls-alpn-01 validation handshake (RFC 8737 §3), answered and closed.
    AcmeChallenge,
}

impl AcceptOutcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AcceptOutcome::Accepted => "accepted",
            AcceptOutcome::RejectedCap => "rejected_cap",
            AcceptOutcome::TlsFailed => "tls_failed",
            AcceptOutcome::ProxyRefused => "proxy_refused",
            AcceptOutcome::Web => "web",
            AcceptOutcome::Passthrough => "passthrough",
            AcceptOutcome::BackendFailed => "backend_failed",
            AcceptOutcome::AcmeChallenge => "acme_challenge",
        }
    }
}

/// What a server does with the connections its stream listeners accept.
pub trait StreamService: Clone + Send + Sync + 'static {
    /// Counts what became of an accepted connection.
    fn count(&self, kind: StreamKind, outcome: AcceptOutcome);

    /// The gauge of open connections of `kind`.
    fn open_gauge(&self, kind: StreamKind) -> IntGauge;

    /// Serves one connection until it ends.
    fn serve<S>(
        &self,
        stream: S,
        kind: StreamKind,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Send + 'static;
}

/// The limits a server's stream listeners share.
#[derive(Clone)]
pub struct StreamLimits {
    /// The idle timeout of a connection (see [`read_more`], [`write_queued`]).
    pub idle_timeout: Duration,
    /// One permit per open connection.
    pub slots: Arc<Semaphore>,
    /// Stops the listeners and their connections.
    pub shutdown: Shutdown,
    /// PROXY protocol and port sharing ([`FrontDoor`]).
    pub front: Arc<FrontDoor>,
}

impl StreamLimits {
    /// At most `max_connections` open at once, each closed after `idle_timeout` without
    /// progress.
    pub fn new(idle_timeout: Duration, max_connections: usize, shutdown: Shutdown) -> Self {
        StreamLimits {
            idle_timeout,
            slots: Arc::new(Semaphore::new(max_connections)),
            shutdown,
            front: Arc::default(),
        }
    }

    /// With the listeners' PROXY protocol and port sharing settings.
    pub fn with_front(mut self, front: FrontDoor) -> Self {
        self.front = Arc::new(front);
        self
    }

    /// How long a TLS handshake may take: a few round trips, so at most 10 s (a client that
    /// stalls it holds a connection slot), and never more than the idle timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.idle_timeout.min(Duration::from_secs(10))
    }
}

/// Binds `addr` and serves it in a task until shutdown: TLS with `tls` (the
/// certificate current when each connection is accepted: SIGHUP replaces it),
/// plain TCP without.
pub async fn listen<H: StreamService>(
    addr: SocketAddr,
    tls: Option<ReloadableAcceptor>,
    limits: StreamLimits,
    service: H,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let kind = if tls.is_some() { "TLS" } else { "TCP" };
    info!(addr = %bound, "listening on {kind}");
    tokio::spawn(accept_loop(listener, tls, limits, service));
    Ok(bound)
}

/// Accepts connections on `listener` until shutdown, each in a task of its
/// own holding a slot of `limits` (none free: closed at once). With `tls`,
/// each is a TLS server session first, with the certificate current when it
/// is accepted.
pub async fn accept_loop<H: StreamService>(
    listener: TcpListener,
    tls: Option<ReloadableAcceptor>,
    limits: StreamLimits,
    service: H,
) {
    let kind = if tls.is_some() {
        StreamKind::Tls
    } else {
        StreamKind::Tcp
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = limits.shutdown.wait() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limits.slots.clone().try_acquire_owned() else {
            service.count(kind, AcceptOutcome::RejectedCap);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let acceptor = tls.as_ref().map(ReloadableAcceptor::current);
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let open = service.open_gauge(kind);
            open.inc();
            admit(stream, peer, kind, acceptor, &limits, &service).await;
            open.dec();
        });
    }
}

/// Takes one accepted connection through the front door (PROXY header, TLS, port sharing)
/// to the service or a backend. Everything before the service is bounded by the handshake
/// timeout.
async fn admit<H: StreamService>(
    stream: TcpStream,
    peer: SocketAddr,
    kind: StreamKind,
    acceptor: Option<CurrentTls>,
    limits: &StreamLimits,
    service: &H,
) {
    let deadline = Instant::now() + limits.handshake_timeout();
    let local = stream.local_addr().unwrap_or(peer);
    let front = &limits.front;
    let (stream, client) = match front.admit(stream, peer, deadline).await {
        Ok(x) => x,
        Err(e) => {
            service.count(kind, AcceptOutcome::ProxyRefused);
            if front.trusts(peer.ip()) {
                warn!(proxy = %peer, "connection from a trusted front proxy refused: {e}");
            } else {
                debug!(%peer, "connection refused: {e}");
            }
            return;
        }
    };
    let Some(a) = acceptor else {
        service.count(kind, AcceptOutcome::Accepted);
        service.serve(stream, kind, client).await;
        return;
    };
    let Some(share) = &front.share else {
        // The ClientHello first: a tls-alpn-01 validation (RFC 8737 §3) is answered with
        // the challenge certificate, everything else with the served one.
        let handshake = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let (config, challenge) = a.config_for(&start.client_hello());
            Ok::<_, std::io::Error>((start.into_stream(config).await?, challenge))
        };
        match tokio::time::timeout_at(deadline, handshake).await {
            // The validator closes after the handshake; nothing is served.
            Ok(Ok((_, true))) => service.count(kind, AcceptOutcome::AcmeChallenge),
            Ok(Ok((s, false))) => {
                service.count(kind, AcceptOutcome::Accepted);
                service.serve(s, kind, client).await;
            }
            _ => service.count(kind, AcceptOutcome::TlsFailed),
        }
        return;
    };
    let routed = share
        .route(
            stream,
            client,
            local,
            &a,
            deadline,
            limits.idle_timeout,
            &limits.shutdown,
            &|r| {
                service.count(
                    kind,
                    match r {
                        Routed::Web => AcceptOutcome::Web,
                        Routed::Passthrough => AcceptOutcome::Passthrough,
                    },
                )
            },
        )
        .await;
    match routed {
        Ok(Decision::Turn(s)) => {
            service.count(kind, AcceptOutcome::Accepted);
            service.serve(s, kind, client).await;
        }
        // Counted when the backend took it.
        Ok(Decision::Routed(_)) => {}
        Ok(Decision::AcmeChallenge) => service.count(kind, AcceptOutcome::AcmeChallenge),
        Err(e) => {
            share::log_failure(client, &e);
            service.count(
                kind,
                match e {
                    ShareError::Backend { .. } => AcceptOutcome::BackendFailed,
                    ShareError::Tls(_) => AcceptOutcome::TlsFailed,
                },
            );
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed its side (after what it sent was answered).
    Eof,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A frame was not complete within the idle timeout of its first byte.
    FrameTimeout,
    /// The stream is not STUN or ChannelData, or a frame is too large.
    Framing,
    /// Answers could not be written within the idle timeout: the client
    /// does not read them.
    WriteTimeout,
    /// Reading or writing failed (reset, TLS error).
    Error,
    /// The server is stopping.
    Shutdown,
}

impl StreamEnd {
    /// Every label, for metrics created up front.
    pub const LABELS: [&'static str; 7] = [
        "eof",
        "idle",
        "frame_timeout",
        "framing",
        "write_timeout",
        "error",
        "shutdown",
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// Read once more into `d`, waiting at most until the connection's
/// deadline: `idle` from now when no frame has started, else `idle` from
/// the first byte of the unfinished frame ([`Deframer::partial_since`]).
/// Cancel-safe: dropped before it completes, it has consumed nothing.
pub async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    d: &mut Deframer,
    idle: Duration,
) -> Result<(), StreamEnd> {
    read_more_with(r, d, Some(idle), idle).await
}

/// [`read_more`] with the two deadlines apart: `idle` bounds the wait for
/// a frame to start (`None`: nothing does, for a connection something
/// else keeps alive, such as a TURN allocation, RFC 8656 §7), `frame` an
/// unfinished frame from its first byte. Cancel-safe.
pub async fn read_more_with<R: AsyncRead + Unpin>(
    r: &mut R,
    d: &mut Deframer,
    idle: Option<Duration>,
    frame: Duration,
) -> Result<(), StreamEnd> {
    let (deadline, late) = match (d.partial_since(), idle) {
        (Some(first), _) => (
            Some(Instant::from_std(first) + frame),
            StreamEnd::FrameTimeout,
        ),
        (None, Some(idle)) => (Some(Instant::now() + idle), StreamEnd::Idle),
        (None, None) => (None, StreamEnd::Idle),
    };
    let expired = async {
        match deadline {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    let read = tokio::select! {
        r = r.read(d.read_buf()) => r,
        _ = expired => return Err(late),
    };
    match read {
        Ok(0) => Err(StreamEnd::Eof),
        Ok(n) => {
            // tokio's clock: the deadline above is on it (tests pause it).
            d.filled(n, Instant::now().into_std());
            Ok(())
        }
        Err(_) => Err(StreamEnd::Error),
    }
}

/// Most bytes gathered from the queue into one write.
const COALESCE: usize = 64 * 1024;

/// The writing half of a connection: sends what arrives on `rx`, in
/// order, several queued messages per write, each write (and its flush,
/// which TLS needs) bounded by `timeout`. When every sender is gone and
/// the queue is sent, it closes the stream's write side (a client that
/// half-closed gets every answer, then EOF). On a failed or late write it
/// stops and drops `rx`, so senders see the queue closed.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Result<(), StreamEnd> {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < COALESCE {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StreamEnd::Error),
            Err(_) => return Err(StreamEnd::WriteTimeout),
        }
    }
    let _ = tokio::time::timeout(timeout, w.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const BINDING: [u8; 20] = [
        0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_times_out_from_its_first_byte() {
        let (mut client, mut server) = duplex(1024);
        let mut d = Deframer::new(2048, false);
        let idle = Duration::from_secs(3);
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for b in BINDING {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1800)).await;
            }
        });
        let end = loop {
            match read_more(&mut server, &mut d, idle).await {
                Ok(()) => assert!(d.next_frame().unwrap().is_none()),
                Err(e) => break e,
            }
        };
        assert_eq!(end, StreamEnd::FrameTimeout);
        assert_eq!(start.elapsed(), idle);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn whole_frames_keep_a_connection_open_and_silence_ends_it() {
        let (mut client, mut server) = duplex(1024);
        let mut d = Deframer::new(2048, false);
        let idle = Duration::from_secs(3);
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..4 {
                client.write_all(&BINDING).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut frames = 0;
        let end = loop {
            match read_more(&mut server, &mut d, idle).await {
                Ok(()) => {
                    while d.next_frame().unwrap().is_some() {
                        frames += 1;
                    }
                }
                Err(e) => break e,
            }
        };
        assert_eq!((end, frames), (StreamEnd::Idle, 4));
        // The last frame came at 6 s; idle 3 s after it.
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_bound_silence_is_kept_but_a_trickled_frame_is_not() {
        let (mut client, mut server) = duplex(1024);
        let mut d = Deframer::new(2048, false);
        let frame = Duration::from_secs(3);
        let start = Instant::now();
        // An hour of silence, then half a frame that never ends.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client.write_all(&BINDING[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let end = loop {
            match read_more_with(&mut server, &mut d, None, frame).await {
                Ok(()) => assert!(d.next_frame().unwrap().is_none()),
                Err(e) => break e,
            }
        };
        assert_eq!(end, StreamEnd::FrameTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(3600) + frame);
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_sends_everything_then_closes_or_gives_up_on_a_non_reader() {
        let (client, server) = duplex(64);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(write_queued(server, rx, Duration::from_secs(3)));
        for i in 0..3u8 {
            tx.send(vec![i; 10]).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 30);
        assert_eq!(writer.await.unwrap(), Ok(()));

        // Nobody reads: the write stalls and is given up after the timeout,
        // and the queue closes for its senders.
        let (_client, server) = duplex(64);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(write_queued(server, rx, Duration::from_secs(3)));
        tx.send(vec![0; 1000]).await.unwrap();
        assert_eq!(writer.await.unwrap(), Err(StreamEnd::WriteTimeout));
        assert!(tx.send(vec![1]).await.is_err());
    }

    /// Records what the accept loop reports and holds each connection until
    /// the client closes it.
    #[derive(Clone)]
    struct Recorder {
        outcomes: Arc<std::sync::Mutex<Vec<(StreamKind, AcceptOutcome)>>>,
        open: IntGauge,
    }

    impl StreamService for Recorder {
        fn count(&self, kind: StreamKind, outcome: AcceptOutcome) {
            self.outcomes.lock().unwrap().push((kind, outcome));
        }

        fn open_gauge(&self, _kind: StreamKind) -> IntGauge {
            self.open.clone()
        }

        async fn serve<S>(&self, stream: S, _kind: StreamKind, _peer: SocketAddr)
        where
            S: AsyncRead + AsyncWrite + Send + 'static,
        {
            let mut stream = Box::pin(stream);
            let mut buf = [0u8; 16];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    }

    #[tokio::test]
    async fn the_loop_caps_open_connections_and_counts_every_outcome() {
        let shutdown = Shutdown::new();
        let limits = StreamLimits::new(Duration::from_secs(3), 1, shutdown.clone());
        let rec = Recorder {
            outcomes: Arc::default(),
            open: IntGauge::new("open", "open connections").unwrap(),
        };
        let addr = listen("127.0.0.1:0".parse().unwrap(), None, limits, rec.clone())
            .await
            .unwrap();
        let outcomes = || rec.outcomes.lock().unwrap().clone();
        let wait_for = |n: usize| async move {
            for _ in 0..500 {
                if outcomes().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("no outcome {n}: {:?}", outcomes());
        };
        let first = tokio::net::TcpStream::connect(addr).await.unwrap();
        wait_for(1).await;
        assert_eq!(rec.open.get(), 1);
        // The one slot is taken: the next client is closed at once.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        wait_for(2).await;
        let mut b = [0u8; 1];
        assert_eq!(second.read(&mut b).await.unwrap(), 0);
        drop(first);
        // The slot comes back when the first connection ends.
        let mut served = None;
        for _ in 0..500 {
            if rec.open.get() == 0 {
                served = Some(tokio::net::TcpStream::connect(addr).await.unwrap());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served.is_some(), "the first connection never closed");
        wait_for(3).await;
        let tcp = StreamKind::Tcp;
        assert_eq!(
            outcomes(),
            [
                (tcp, AcceptOutcome::Accepted),
                (tcp, AcceptOutcome::RejectedCap),
                (tcp, AcceptOutcome::Accepted)
            ]
        );
        shutdown.trigger();
    }

    #[test]
    fn a_tls_handshake_is_bounded_by_10_s_and_the_idle_timeout() {
        let limits = |idle| StreamLimits::new(Duration::from_secs(idle), 1, Shutdown::new());
        assert_eq!(limits(300).handshake_timeout(), Duration::from_secs(10));
        assert_eq!(limits(3).handshake_timeout(), Duration::from_secs(3));
    }
}
