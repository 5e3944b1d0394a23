//! A TURN server reached over TCP or TLS (RFC 8656 §3.1): one connection
//! per allocation, framed with `natkit_proto::framing` (RFC 8489 §6.2.2,
//! RFC 8656 §12.5). A reader task cuts frames and hands them to the driver;
//! a writer task sends what the driver and quinn's socket queue.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natkit_proto::framing;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Largest frame accepted from the server (a STUN message or ChannelData
/// with 64 KiB of data).
const MAX_FRAME: usize = 65536 + 8;
/// Frames queued for writing; beyond it data is dropped (QUIC sees loss).
pub const WRITE_QUEUE: usize = 512;

/// What a stream tells the driver.
#[derive(Debug)]
pub enum StreamEvent {
    /// Connected.
    Up {
        /// The allocation's id (ids are never reused, so a late event of a
        /// replaced allocation cannot reach its successor).
        alloc: u64,
    },
    /// A frame from the server.
    Frame {
        /// The allocation's id (ids are never reused, so a late event of a
        /// replaced allocation cannot reach its successor).
        alloc: u64,
        /// The frame (padding removed).
        frame: Vec<u8>,
    },
    /// The connection could not be made or ended.
    Down {
        /// The allocation's id (ids are never reused, so a late event of a
        /// replaced allocation cannot reach its successor).
        alloc: u64,
        /// Why.
        error: String,
    },
}

/// TLS settings for a `turns:` server.
#[derive(Clone)]
pub struct TlsSettings {
    /// rustls client configuration (trust anchors, ring provider).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsSettings({:?})", self.name)
    }
}

/// Start connecting to `server`; returns the writer's queue at once.
pub fn spawn(
    alloc: u64,
    server: SocketAddr,
    tls: Option<TlsSettings>,
    connect_timeout: Duration,
    events: mpsc::Sender<StreamEvent>,
) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(async move {
        let r = run(alloc, server, tls, connect_timeout, &events, rx).await;
        let error = match r {
            Ok(()) => "the server closed the connection".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = events.send(StreamEvent::Down { alloc, error }).await;
    });
    tx
}

async fn run(
    alloc: u64,
    server: SocketAddr,
    tls: Option<TlsSettings>,
    connect_timeout: Duration,
    events: &mpsc::Sender<StreamEvent>,
    rx: mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(server))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TCP connection not established within {connect_timeout:?}"),
            )
        })??;
    tcp.set_nodelay(true)?;
    match tls {
        None => pump(alloc, tcp, events, rx).await,
        Some(t) => {
            let conn = tokio_rustls::TlsConnector::from(t.config);
            let s = tokio::time::timeout(connect_timeout, conn.connect(t.name, tcp))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
            pump(alloc, s, events, rx).await
        }
    }
}

async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    alloc: u64,
    s: S,
    events: &mpsc::Sender<StreamEvent>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    if events.send(StreamEvent::Up { alloc }).await.is_err() {
        return Ok(());
    }
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = async move {
        while let Some(frame) = rx.recv().await {
            wr.write_all(&frame).await?;
        }
        wr.shutdown().await
    };
    let reader = async move {
        let mut buf = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16384];
        loop {
            while let Some(f) = framing::next_frame(&buf, true, MAX_FRAME)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            {
                let frame = buf[..f.message_len].to_vec();
                buf.drain(..f.consumed);
                if events
                    .send(StreamEvent::Frame { alloc, frame })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            let n = rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}
