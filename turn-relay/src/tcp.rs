//! TCP allocations (RFC 6062), the I/O. The core
//! (`natkit_proto::turn::server::tcp`) decides; this does the sockets, as
//! tokio tasks the shard starts and hears back from through its inbox:
//! - the relayed address's listener: each peer that connects goes to the
//!   shard, which announces it (ConnectionAttempt, §5.3) or closes it;
//! - Connect (§5.2): a connection from the relayed address to the peer;
//! - a client data connection (§5.4): its ConnectionBind goes to the shard
//!   its CONNECTION-ID names; once bound it is spliced with the peer
//!   connection (tokio's `copy_bidirectional`: two fixed buffers, no
//!   allocation per read) until either side closes, the allocation ends
//!   (the shard drops the splice's kill switch) or the relay stops.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use natkit_proto::framing::Deframer;
use natkit_proto::turn::server::tcp::{connection_bind_id, shard_of, CONNECT_TIMEOUT};
use natkit_proto::turn::server::{ConnectionId, RelayId};
use natkit_runtime::stream::read_more;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::stream::StreamContext;
use crate::worker::{Inbox, WorkerHandle};

/// Bytes of each of a splice's two buffers.
const SPLICE_BUFFER: usize = 16 * 1024;
/// ConnectionBind requests one data connection may send: a data
/// connection is a new 5-tuple, so the first may meet a 401 or 438 (RFC
/// 6062 §4.4) and the client sends it again once.
const MAX_BIND_ATTEMPTS: usize = 3;
/// Pause after a failed accept (out of file descriptors): the listener
/// stays readable, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A peer connection, with the slot it holds in its relayed address's
/// accept budget (passive connections only).
pub struct PeerStream {
    pub stream: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Bytes a splice moved since the shard last looked, for usage records.
#[derive(Debug, Default)]
pub struct SpliceBytes {
    to_peer: AtomicU64,
    to_client: AtomicU64,
}

impl SpliceBytes {
    /// (to peer, to client) since the last call.
    pub fn take(&self) -> (u64, u64) {
        (
            self.to_peer.swap(0, Ordering::Relaxed),
            self.to_client.swap(0, Ordering::Relaxed),
        )
    }
}

/// What the shard hands a bound client data connection.
pub struct Splice {
    pub id: ConnectionId,
    pub peer: PeerStream,
    /// Resolves when the shard closes the connection (the allocation
    /// ended, or its 5 tuple did).
    pub kill: oneshot::Receiver<()>,
    pub bytes: Arc<SpliceBytes>,
}

/// The shard's answer to a ConnectionBind: the response to write (empty:
/// close the connection) and, on success, the peer connection.
pub struct BindAnswer {
    pub reply: Vec<u8>,
    pub splice: Option<Splice>,
}

/// Accept peers on the listener of TCP relay `relay` and hand each to the
/// shard. `slots` bounds the peer connections this address holds at once
/// (refused ones give theirs back at once): beyond it peers wait in the
/// kernel's backlog, not in the shard's inbox. Runs until aborted (the
/// allocation ended) or the shard stops.
pub async fn accept_peers(
    listener: TcpListener,
    relay: RelayId,
    worker: WorkerHandle,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "relay accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = PeerStream {
            stream,
            _slot: Some(slot),
        };
        if !worker.send(Inbox::PeerAccepted {
            relay,
            peer,
            stream,
        }) {
            return;
        }
    }
}

/// RFC 6062 §5.2: connect from the relayed address `from` to `peer`
/// within [`CONNECT_TIMEOUT`], and tell the shard how it went.
pub async fn connect_peer(
    id: ConnectionId,
    from: SocketAddr,
    peer: SocketAddr,
    worker: WorkerHandle,
) {
    // An IPv4 peer written as IPv4-mapped IPv6 went to the IPv4 relay.
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    // From the relayed address itself, always: the peer sees the address
    // its permission and the client's XOR-PEER-ADDRESS name. When that
    // 4-tuple is taken (a connection from the peer's very address came in
    // and is gone, but lingers in TIME_WAIT) the attempt fails: 447.
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect_from(from, peer)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(PeerStream {
                stream: s,
                _slot: None,
            })
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "Connect failed");
            None
        }
        Err(_) => {
            debug!(%peer, "Connect timed out");
            None
        }
    };
    worker.send(Inbox::Connected { id, stream });
}

/// A connection from `from` to `peer`.
async fn connect_from(from: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let s = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The listener of the relayed address has the port: share it.
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(from)?;
    s.connect(peer).await
}

/// A client data connection (RFC 6062 §4.4): `frame`, its first message,
/// is a ConnectionBind. Each one goes to the shard its CONNECTION-ID
/// names; a bound connection is spliced with the peer's, a refused one may
/// try again ([`MAX_BIND_ATTEMPTS`]), anything else closes it.
pub async fn data_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    mut d: Deframer,
    mut frame: Vec<u8>,
    addr: SocketAddr,
    conn: u64,
    ctx: &StreamContext,
) {
    for _ in 0..MAX_BIND_ATTEMPTS {
        let Some(id) = connection_bind_id(&frame) else {
            return;
        };
        let worker = &ctx.workers[shard_of(id, ctx.workers.len())];
        let (tx, rx) = oneshot::channel();
        if !worker.send(Inbox::Bind {
            conn,
            addr,
            frame,
            answer: tx,
        }) {
            return;
        }
        let answer = tokio::select! {
            a = rx => match a {
                Ok(a) => a,
                Err(_) => return,
            },
            _ = ctx.limits.shutdown.wait() => return,
        };
        if answer.reply.is_empty() {
            return;
        }
        if let Some(s) = answer.splice {
            // What the client sent after its ConnectionBind is the peer's.
            let early = d.remaining().to_vec();
            splice(&mut client, &answer.reply, &early, s, worker, ctx).await;
            return;
        }
        let idle = ctx.limits.idle_timeout;
        let write = async {
            client.write_all(&answer.reply).await?;
            client.flush().await
        };
        if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
            return;
        }
        frame = loop {
            match d.next_frame() {
                Ok(Some(f)) => break f.message.to_vec(),
                Ok(None) => {}
                Err(_) => return,
            }
            tokio::select! {
                r = read_more(&mut client, &mut d, idle) => if r.is_err() {
                    return;
                },
                _ = ctx.limits.shutdown.wait() => return,
            }
        };
    }
    debug!(%addr, "too many ConnectionBind attempts on one data connection");
}

/// Answer the ConnectionBind (`reply`), pass on `early`, then splice
/// until either side closes (the other side's write half is closed in
/// turn: copy_bidirectional forwards the FIN), the shard closes the
/// connection, or the relay stops. Tells the shard when done.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    reply: &[u8],
    early: &[u8],
    s: Splice,
    worker: &WorkerHandle,
    ctx: &StreamContext,
) {
    let Splice {
        id,
        peer,
        kill,
        bytes,
    } = s;
    let (to_peer, to_client) = ctx.metrics.tcp_bytes();
    let mut peer = Counted {
        inner: peer,
        bytes,
        to_peer,
        to_client,
    };
    ctx.metrics.tcp_spliced.inc();
    let work = async {
        client.write_all(reply).await?;
        client.flush().await?;
        peer.write_all(early).await?;
        tokio::io::copy_bidirectional_with_sizes(client, &mut peer, SPLICE_BUFFER, SPLICE_BUFFER)
            .await
    };
    tokio::select! {
        r = work => {
            if let Err(e) = r {
                debug!(connection = id, error = %e, "splice ended");
            }
        }
        _ = kill => {}
        _ = ctx.limits.shutdown.wait() => {}
    }
    ctx.metrics.tcp_spliced.dec();
    worker.send(Inbox::SpliceEnded(id));
}

/// The peer side of a splice, counting what passes: into the shard's
/// per-connection totals (usage records) and the metrics.
struct Counted {
    inner: PeerStream,
    bytes: Arc<SpliceBytes>,
    to_peer: IntCounter,
    to_client: IntCounter,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner.stream).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.bytes.to_client.fetch_add(n, Ordering::Relaxed);
            this.to_client.inc_by(n);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.bytes.to_peer.fetch_add(n as u64, Ordering::Relaxed);
            this.to_peer.inc_by(n as u64);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner.stream).poll_shutdown(cx)
    }
}
