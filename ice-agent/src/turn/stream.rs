//! A TCP or TLS connection to a TURN server (RFC 8656 §3.1): connected with
//! time bounds, read into proto's [`Deframer`] (RFC 8489 §6.2.2, RFC 8656
//! §12.5), written from a bounded queue. Poll-based, so the session's
//! driver can run it inside the task that reads the UDP sockets, and
//! [`TurnConnection`](super::TurnConnection) can await it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use natkit_proto::framing::{DeframedFrame, Deframer, FramingError};
use natkit_proto::raw::MAX_MESSAGE_LEN;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::session_core::{ConnectionError, ConnectionStage};

/// Largest frame accepted from the server: one STUN message, or
/// ChannelData with its 4-byte header and padding (RFC 8656 §12.5).
const MAX_FRAME: usize = MAX_MESSAGE_LEN + 8;

/// Most bytes queued for writing; beyond it [`ServerStream::queue`]
/// refuses (relayed data is dropped like a lost UDP datagram, and the
/// protocol above slows down).
pub(crate) const WRITE_QUEUE: usize = 1 << 20;

/// What the TLS handshake settled, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1_3" and the like.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// How long the handshake took.
    pub handshake: Duration,
}

enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One connection to a TURN server, cut into frames.
pub(crate) struct ServerStream {
    io: Io,
    deframer: Deframer,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    local: SocketAddr,
}

impl std::fmt::Debug for ServerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStream")
            .field("local", &self.local)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} not done within {:.1} s", limit.as_secs_f64()),
    )
}

/// Where a failed handshake stopped: rustls hands its own errors up
/// inside the I/O error; a refused certificate is told apart, since the
/// remedy (trust settings) differs from that of a broken handshake.
fn handshake_stage(e: &io::Error) -> ConnectionStage {
    let certificate = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if certificate {
        ConnectionStage::Certificate
    } else {
        ConnectionStage::TlsHandshake
    }
}

impl ServerStream {
    /// Connect to `server` (TCP, then with `tls` the whole handshake), each
    /// step bounded by `limit`.
    pub async fn connect(
        server: SocketAddr,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        limit: Duration,
    ) -> Result<(ServerStream, Option<TlsInfo>), ConnectionError> {
        let connect = |e: io::Error| ConnectionError::new(ConnectionStage::Connect, &e);
        let tcp = tokio::time::timeout(limit, TcpStream::connect(server))
            .await
            .map_err(|_| connect(timed_out("TCP connection", limit)))?
            .map_err(connect)?;
        // Small TURN messages must not wait for Nagle.
        tcp.set_nodelay(true).map_err(connect)?;
        let local = tcp.local_addr().map_err(connect)?;
        let (io, info) = match tls {
            None => (Io::Tcp(tcp), None),
            Some((config, name)) => {
                let hs = |e: io::Error| ConnectionError::new(handshake_stage(&e), &e);
                let started = Instant::now();
                let s = tokio::time::timeout(
                    limit,
                    tokio_rustls::TlsConnector::from(config).connect(name, tcp),
                )
                .await
                .map_err(|_| hs(timed_out("TLS handshake", limit)))?
                .map_err(hs)?;
                let (_, conn) = s.get_ref();
                let info = TlsInfo {
                    version: conn
                        .protocol_version()
                        .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
                    handshake: started.elapsed(),
                };
                (Io::Tls(Box::new(s)), Some(info))
            }
        };
        Ok((
            ServerStream {
                io,
                deframer: Deframer::new(MAX_FRAME, true),
                out: Vec::new(),
                written: 0,
                local,
            },
            info,
        ))
    }

    /// Our end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Read once into the deframer: `Ready(Ok(()))` when bytes came (take
    /// the frames with [`ServerStream::next_frame`]), an error when the
    /// connection ended (`UnexpectedEof` for a close by the server).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, now: Instant) -> Poll<io::Result<()>> {
        let room = self.deframer.read_buf();
        let mut rb = ReadBuf::new(room);
        let r = match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, &mut rb),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut rb),
        };
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )));
                }
                self.deframer.filled(n, now);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The next whole frame read, if any.
    pub fn next_frame(&mut self) -> Result<Option<DeframedFrame<'_>>, FramingError> {
        self.deframer.next_frame()
    }

    /// Queue `bytes` for writing; `false` (nothing queued) when the queue
    /// is full.
    pub fn queue(&mut self, bytes: &[u8]) -> bool {
        if self.queued() + bytes.len() > WRITE_QUEUE {
            return false;
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        self.out.extend_from_slice(bytes);
        true
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Write what is queued: `Ready(Ok)` once all is written (and flushed
    /// through TLS).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let chunk = &self.out[self.written..];
            let r = match &mut self.io {
                Io::Tcp(s) => Pin::new(s).poll_write(cx, chunk),
                Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, chunk),
            };
            match r {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.written += n,
            }
        }
        self.out.clear();
        self.written = 0;
        match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Close our side once everything queued is written (TLS close_notify,
    /// TCP FIN).
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_flush(cx))?;
        match &mut self.io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
