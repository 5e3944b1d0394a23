//! TURN over TCP and TLS (RFC 8656 §3.1): one tokio task per connection
//! splits the stream into STUN and ChannelData frames and hands them to a
//! shard; the shard's answers and peer data come back through a bounded
//! queue. The allocation lives as long as the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natkit_proto::framing;
use natkit_runtime::shutdown::Shutdown;
use natkit_runtime::tls::ReloadableAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::Metrics;
use crate::worker::{Inbox, WorkerHandle};

/// Largest frame accepted from a client.
const MAX_FRAME: usize = crate::worker::MAX_DATAGRAM + 64;
/// Frames queued towards a slow client before new ones are dropped.
const OUT_QUEUE: usize = 1024;

/// What every stream listener shares.
#[derive(Clone)]
pub struct StreamContext {
    pub workers: Arc<Vec<WorkerHandle>>,
    pub metrics: Metrics,
    pub idle_timeout: Duration,
    pub slots: Arc<Semaphore>,
    pub shutdown: Shutdown,
    pub next_conn: Arc<AtomicU64>,
}

/// Accept clients until shutdown. With `tls`, each connection is a TLS
/// server session first, with the certificate current when it is accepted
/// (SIGHUP replaces it).
pub async fn serve(listener: TcpListener, tls: Option<ReloadableAcceptor>, ctx: StreamContext) {
    let label = if tls.is_some() { "tls" } else { "tcp" };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.shutdown.wait() => return,
        };
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            ctx.metrics
                .connections
                .with_label_values(&[label, "rejected_cap"])
                .inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let acceptor = tls.as_ref().map(ReloadableAcceptor::current);
        tokio::spawn(async move {
            let _permit = permit;
            let open = ctx.metrics.connections_open.with_label_values(&[label]);
            open.inc();
            match acceptor {
                None => {
                    ctx.metrics
                        .connections
                        .with_label_values(&[label, "accepted"])
                        .inc();
                    connection(stream, peer, &ctx).await;
                }
                Some(a) => match tokio::time::timeout(
                    ctx.idle_timeout.min(Duration::from_secs(10)),
                    a.accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        ctx.metrics
                            .connections
                            .with_label_values(&[label, "accepted"])
                            .inc();
                        connection(s, peer, &ctx).await;
                    }
                    _ => {
                        ctx.metrics
                            .connections
                            .with_label_values(&[label, "tls_failed"])
                            .inc();
                    }
                },
            }
            open.dec();
        });
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    ctx: &StreamContext,
) {
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let worker = &ctx.workers[(conn % ctx.workers.len() as u64) as usize];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    if !worker.send(Inbox::Opened { conn, tx }) {
        return;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write_task = tokio::spawn(async move {
        while let Some(v) = rx.recv().await {
            if writer.write_all(&v).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = vec![0u8; MAX_FRAME * 2];
    let mut filled = 0;
    let reason = 'conn: loop {
        let mut start = 0;
        loop {
            match framing::next_frame(&buf[start..filled], true, MAX_FRAME) {
                Ok(Some(f)) => {
                    let data = buf[start..start + f.message_len].to_vec();
                    start += f.consumed;
                    if !worker.send(Inbox::Message {
                        conn,
                        addr: peer,
                        data,
                    }) {
                        break 'conn "shutdown";
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "closing client stream");
                    break 'conn "framing";
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        let read = tokio::select! {
            r = tokio::time::timeout(ctx.idle_timeout, reader.read(&mut buf[filled..])) => r,
            _ = ctx.shutdown.wait() => break 'conn "shutdown",
        };
        match read {
            Err(_) => break 'conn "idle",
            Ok(Ok(0)) => break 'conn "eof",
            Ok(Ok(n)) => filled += n,
            Ok(Err(_)) => break 'conn "error",
        }
    };
    debug!(%peer, reason, "client stream closed");
    worker.send(Inbox::Closed { conn, addr: peer });
    write_task.abort();
}
