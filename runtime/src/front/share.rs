//! One TLS port for TURN and a web site (RFC 7443 §4.1 ALPN, RFC 8489 §6.2.3).
//!
//! Restrictive networks let only TCP 443 out, and that port usually serves HTTPS already.
//! WebRTC clients send neither a useful server name nor an ALPN protocol with `turns:`, so a
//! front proxy cannot tell TURN from web traffic; the TURN server can, because it sees the
//! bytes after the handshake. Each connection on a shared TLS listener goes, in this order:
//!
//! 1. by server name (SNI), before the handshake: a `passthrough-server-name` goes to the
//!    `passthrough-backend` untouched (TLS not terminated: the web server keeps its own
//!    certificate), the ClientHello bytes already read replayed first;
//! 2. by the negotiated ALPN protocol: `stun.turn` is TURN, one of `web-alpn` is the web;
//! 3. by server name after the handshake: a `turn-server-name` is TURN;
//! 4. by its first bytes: a STUN header (RFC 8489 §5: top two bits zero, then the magic
//!    cookie at bytes 4-7) is TURN; anything else (an HTTP request line) is the web's. A new
//!    TLS connection has no allocation yet, so its first TURN message is always a STUN
//!    request (ChannelData needs a channel bound on this very connection first, RFC 8656
//!    §12), and eight bytes decide. A client that sends nothing before the deadline goes to
//!    the web backend.
//!
//! Web connections reach `web-backend` as plain bytes (what was read to decide replayed
//! first), optionally after a PROXY protocol v2 header with the client's address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::StartHandshake;
use tracing::{debug, warn};

use super::rewind::Rewind;
use super::TURN_ALPN;
use crate::shutdown::Shutdown;
use crate::tls::CurrentTls;

/// Most bytes read while waiting for a whole ClientHello. rustls refuses larger handshake
/// messages itself; this bounds what a client can make us hold before that.
const MAX_HELLO: usize = 64 * 1024;
/// Bytes after the handshake that decide TURN or web: a STUN header's first eight.
const SNIFF: usize = 8;
/// RFC 8489 §5: the magic cookie.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// A TLS server name to match: exact (case-insensitive), or `*.example.org` for any name
/// under example.org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// From a configured name.
    pub fn new(pattern: &str) -> Self {
        NamePattern(pattern.trim_end_matches('.').to_ascii_lowercase())
    }

    /// Whether `name` (a ClientHello's SNI) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self.0.strip_prefix("*.") {
            Some(suffix) => {
                name.len() > suffix.len() + 1 && {
                    let (head, tail) = name.split_at(name.len() - suffix.len());
                    head.ends_with('.') && tail.eq_ignore_ascii_case(suffix)
                }
            }
            None => name.eq_ignore_ascii_case(&self.0),
        }
    }
}

/// SNI-routed TLS pass-through.
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// Where the connections go (a TLS server).
    pub backend: SocketAddr,
    /// The server names that go there.
    pub names: Vec<NamePattern>,
}

/// How a shared TLS port routes what is not TURN.
#[derive(Debug, Clone)]
pub struct WebShare {
    /// Where terminated non-TURN connections go, as plain bytes. `None`: there is no web
    /// site behind the terminated side, every terminated connection is TURN's.
    pub backend: Option<SocketAddr>,
    /// Server names passed through without terminating TLS.
    pub passthrough: Option<Passthrough>,
    /// Send a PROXY protocol v2 header to the backends first.
    pub proxy_header: bool,
    /// Server names that mean TURN.
    pub turn_names: Vec<NamePattern>,
    /// ALPN protocols that mean the web (offered after `stun.turn`).
    pub web_alpn: Vec<Vec<u8>>,
}

/// Where a connection on a shared port went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// To the web backend, TLS terminated.
    Web,
    /// To the pass-through backend, TLS untouched.
    Passthrough,
}

/// Why a connection on a shared port was closed before it was served.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The ClientHello or the handshake failed or was late.
    #[error("TLS handshake: {0}")]
    Tls(String),
    /// The backend could not be reached.
    #[error("backend {addr} unreachable: {source}")]
    Backend {
        /// The backend.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What [`route`] decided.
pub enum Decision<S> {
    /// Serve it as TURN: the TLS stream, with any bytes read to decide given back (boxed:
    /// rustls' connection state is large, and this moves by value).
    Turn(Box<Rewind<tokio_rustls::server::TlsStream<S>>>),
    /// Handed to a backend, and served there until it ended.
    Routed(Routed),
    /// An ACME tls-alpn-01 validation handshake (RFC 8737 §3), answered and closed.
    AcmeChallenge,
}

/// Is this the start of a STUN message (RFC 8489 §5)? `None`: too few bytes to tell.
fn is_stun_start(b: &[u8]) -> Option<bool> {
    match b.first() {
        None => None,
        Some(first) if first & 0xC0 != 0 => Some(false),
        Some(_) if b.len() < SNIFF => None,
        Some(_) => Some(b[4..8] == MAGIC_COOKIE),
    }
}

impl WebShare {
    fn passthrough_for(&self, sni: Option<&str>) -> Option<SocketAddr> {
        let p = self.passthrough.as_ref()?;
        let sni = sni?;
        p.names.iter().any(|n| n.matches(sni)).then_some(p.backend)
    }

    /// `config` with this port's ALPN list: `stun.turn` first, then the web's.
    fn with_alpn(&self, config: &ServerConfig) -> Arc<ServerConfig> {
        let mut c = config.clone();
        c.alpn_protocols = std::iter::once(TURN_ALPN.to_vec())
            .chain(self.web_alpn.iter().cloned())
            .collect();
        Arc::new(c)
    }

    /// Decides where `stream` (a TLS connection from `client`, accepted on `local`) goes,
    /// within `deadline`, and serves the web's part itself until it ends (closed after
    /// `idle` without bytes either way, or at shutdown). `routed` is told as soon as a
    /// backend has taken a connection.
    #[allow(clippy::too_many_arguments)]
    pub async fn route<S>(
        &self,
        mut stream: S,
        client: SocketAddr,
        local: SocketAddr,
        tls: &CurrentTls,
        deadline: Instant,
        idle: Duration,
        shutdown: &Shutdown,
        routed: &(dyn Fn(Routed) + Sync),
    ) -> Result<Decision<S>, ShareError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let late = || ShareError::Tls("not finished in time".into());
        // 1. The ClientHello, kept to replay when passed through.
        let mut acceptor = rustls::server::Acceptor::default();
        let mut hello = Vec::new();
        let mut buf = vec![0u8; 4096];
        let accepted = loop {
            let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return Err(late()),
                Ok(Err(e)) => return Err(ShareError::Tls(e.to_string())),
                Ok(Ok(0)) => return Err(ShareError::Tls("closed before its ClientHello".into())),
                Ok(Ok(n)) => n,
            };
            hello.extend_from_slice(&buf[..n]);
            if hello.len() > MAX_HELLO {
                return Err(ShareError::Tls("ClientHello too large".into()));
            }
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                // rustls takes what fits in its buffer; nothing taken from a non-empty slice
                // means it can take no more, and looping would spin.
                match acceptor.read_tls(&mut rd) {
                    Ok(0) => return Err(ShareError::Tls("ClientHello too large".into())),
                    Ok(_) => {}
                    Err(e) => return Err(ShareError::Tls(e.to_string())),
                }
            }
            match acceptor.accept() {
                Ok(Some(a)) => break a,
                Ok(None) => {}
                Err((e, _)) => return Err(ShareError::Tls(e.to_string())),
            }
        };
        let sni = accepted.client_hello().server_name().map(str::to_owned);
        if let Some(backend) = self.passthrough_for(sni.as_deref()) {
            self.forward(
                stream,
                &hello,
                (backend, Routed::Passthrough),
                client,
                local,
                (idle, shutdown),
                routed,
            )
            .await?;
            return Ok(Decision::Routed(Routed::Passthrough));
        }
        drop(hello);
        // A tls-alpn-01 validation (RFC 8737 §3) offers only acme-tls/1: answered here, with
        // the challenge certificate, and closed.
        let (config, challenge) = tls.config_for(&accepted.client_hello());
        if challenge {
            tokio::time::timeout_at(
                deadline,
                StartHandshake::from_parts(accepted, stream).into_stream(config),
            )
            .await
            .map_err(|_| late())?
            .map_err(|e| ShareError::Tls(e.to_string()))?;
            return Ok(Decision::AcmeChallenge);
        }
        // 2. The handshake, with `stun.turn` and the web's protocols on offer.
        let tls = tokio::time::timeout_at(
            deadline,
            StartHandshake::from_parts(accepted, stream).into_stream(self.with_alpn(&config)),
        )
        .await
        .map_err(|_| late())?
        .map_err(|e| ShareError::Tls(e.to_string()))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let decided = match alpn.as_deref() {
            Some(TURN_ALPN) => Some(true),
            Some(p) if self.web_alpn.iter().any(|w| w == p) => Some(false),
            // 3. By name.
            _ if sni
                .as_deref()
                .is_some_and(|s| self.turn_names.iter().any(|n| n.matches(s))) =>
            {
                Some(true)
            }
            _ => None,
        };
        let mut tls = tls;
        let mut first = Vec::with_capacity(SNIFF);
        let turn = match decided {
            Some(turn) => turn,
            None => {
                // 4. By the first bytes.
                let mut b = [0u8; SNIFF];
                while is_stun_start(&first).is_none() {
                    let want = SNIFF - first.len();
                    match tokio::time::timeout_at(deadline, tls.read(&mut b[..want])).await {
                        Ok(Ok(n)) if n > 0 => first.extend_from_slice(&b[..n]),
                        // Closed, failed or silent: not a TURN client.
                        _ => break,
                    }
                }
                is_stun_start(&first) == Some(true)
            }
        };
        match (turn, self.backend) {
            (false, Some(backend)) => {
                self.forward(
                    tls,
                    &first,
                    (backend, Routed::Web),
                    client,
                    local,
                    (idle, shutdown),
                    routed,
                )
                .await?;
                Ok(Decision::Routed(Routed::Web))
            }
            // TURN, or nowhere else to go: TURN's framing refuses what is not its own.
            _ => Ok(Decision::Turn(Box::new(Rewind::new(first, tls)))),
        }
    }

    /// Connects to `backend`, sends the PROXY header (when configured) and `already` (bytes
    /// read from `client_stream` to decide), tells `routed`, then copies both ways until
    /// either side ends.
    #[allow(clippy::too_many_arguments)]
    async fn forward<C>(
        &self,
        client_stream: C,
        already: &[u8],
        (backend, kind): (SocketAddr, Routed),
        client: SocketAddr,
        local: SocketAddr,
        (idle, shutdown): (Duration, &Shutdown),
        routed: &(dyn Fn(Routed) + Sync),
    ) -> Result<(), ShareError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let unreachable = |source| ShareError::Backend {
            addr: backend,
            source,
        };
        let connect = tokio::time::timeout(idle.min(Duration::from_secs(10)), async {
            let mut b = TcpStream::connect(backend).await?;
            b.set_nodelay(true)?;
            if self.proxy_header {
                b.write_all(&super::proxy::encode(client, local)).await?;
            }
            b.write_all(already).await?;
            Ok::<_, std::io::Error>(b)
        });
        let b = match connect.await {
            Ok(r) => r.map_err(unreachable)?,
            Err(_) => return Err(unreachable(std::io::ErrorKind::TimedOut.into())),
        };
        routed(kind);
        let activity = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut c = Active::new(client_stream, &activity, start);
        let mut b = Active::new(b, &activity, start);
        let watch = async {
            loop {
                let last = activity.load(Ordering::Relaxed);
                tokio::time::sleep_until(start + Duration::from_millis(last) + idle).await;
                if activity.load(Ordering::Relaxed) == last {
                    return;
                }
            }
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut c, &mut b) => {
                if let Err(e) = r {
                    debug!(%client, %backend, error = %e, "backend connection ended");
                }
            }
            _ = watch => debug!(%client, %backend, "backend connection idle: closed"),
            _ = shutdown.wait() => {}
        }
        Ok(())
    }
}

/// A stream that notes when bytes last moved through it (milliseconds since `start` in a
/// shared counter), so a forwarded connection idle both ways can be closed.
struct Active<'a, S> {
    inner: S,
    last: &'a AtomicU64,
    start: Instant,
}

impl<'a, S> Active<'a, S> {
    fn new(inner: S, last: &'a AtomicU64, start: Instant) -> Self {
        Active { inner, last, start }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs a failed routing as an operator needs it: an unreachable backend is the operator's
/// problem (warn), a client's bad handshake is not (debug).
pub fn log_failure(client: SocketAddr, e: &ShareError) {
    match e {
        ShareError::Backend { .. } => warn!(%client, "shared TLS port: {e}"),
        ShareError::Tls(_) => debug!(%client, "shared TLS port: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is not a ClientHello, or nothing at all, is refused (never a hang, never a
    /// backend): the bytes are garbage to rustls, and the deadline bounds a silent client.
    #[tokio::test]
    async fn garbage_and_silence_are_refused_before_routing() {
        use tokio::io::AsyncWriteExt;
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![ck.cert.der().clone()], key)
                .unwrap();
        let cfg = crate::tls::ReloadableAcceptor::new(Arc::new(cfg)).current();
        // A backend that would notice being used: none is reachable at port 9.
        let share = WebShare {
            backend: Some("127.0.0.1:9".parse().unwrap()),
            passthrough: None,
            proxy_header: false,
            turn_names: Vec::new(),
            web_alpn: vec![b"http/1.1".to_vec()],
        };
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let shutdown = Shutdown::new();
        let idle = Duration::from_secs(5);
        let route = |s, limit| {
            let (share, cfg, shutdown) = (&share, &cfg, &shutdown);
            async move {
                let deadline = Instant::now() + limit;
                let r = share
                    .route(s, addr, addr, cfg, deadline, idle, shutdown, &|_| {
                        panic!("routed")
                    })
                    .await;
                r.map(|_| ())
            }
        };
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let r = route(server, idle).await;
        assert!(matches!(r, Err(ShareError::Tls(_))), "{r:?}");
        let (_client, server) = tokio::io::duplex(1024);
        let r = route(server, Duration::from_millis(50)).await;
        assert!(
            matches!(&r, Err(ShareError::Tls(m)) if m.contains("in time")),
            "{r:?}"
        );
    }

    #[test]
    fn names_match_exactly_or_under_a_wildcard() {
        let www = NamePattern::new("WWW.Example.org.");
        assert!(www.matches("www.example.org"));
        assert!(www.matches("www.EXAMPLE.org."));
        assert!(!www.matches("example.org"));
        let any = NamePattern::new("*.example.org");
        assert!(any.matches("a.example.org"));
        assert!(any.matches("a.b.example.org"));
        assert!(!any.matches("example.org"));
        assert!(!any.matches("badexample.org"));
        assert!(!any.matches(".example.org"));
    }

    #[test]
    fn a_stun_header_is_told_from_http_by_its_first_bytes() {
        let binding = [0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(is_stun_start(&[]), None);
        assert_eq!(is_stun_start(&binding[..3]), None);
        assert_eq!(is_stun_start(&binding), Some(true));
        assert_eq!(is_stun_start(b"G"), Some(false));
        assert_eq!(is_stun_start(b"PRI * HT"), Some(false));
        // A ChannelData header cannot start a new TLS connection's TURN traffic.
        assert_eq!(is_stun_start(&[0x40, 0, 0, 4]), Some(false));
        // STUN-like first byte without the cookie (RFC 3489 clients are not served).
        assert_eq!(is_stun_start(&[0, 1, 0, 0, 1, 2, 3, 4]), Some(false));
    }
}
