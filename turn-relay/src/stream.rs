//! TURN over TCP and TLS (RFC 8656 §3.1): one tokio task per connection
//! reads the stream into the [`Deframer`] and hands whole STUN and
//! ChannelData frames to a shard through a bounded queue; when the queue is
//! full the task waits, and the connection is not read meanwhile
//! (backpressure on the client that sends too much, not on the others).
//! The shard's answers and peer data come back through another bounded
//! queue to a writer task. The allocation lives as long as the connection;
//! on EOF every frame already read is answered before the connection
//! closes (a client may half-close after its last request). The idle
//! timeout closes a silent connection only while it holds no allocation:
//! one that does lives by the allocation's lifetime, which the core
//! enforces (it says which connections hold one, `Env::stream_held`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use natkit_proto::framing::Deframer;
use natkit_proto::turn::server::tcp::connection_bind_id;
use natkit_runtime::stream::{
    read_more, read_more_with, write_queued, AcceptOutcome, StreamEnd, StreamKind, StreamLimits,
    StreamService,
};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::metrics::Metrics;
use crate::worker::{Inbox, StreamLink, WorkerHandle};

/// Largest frame accepted from a client.
const MAX_FRAME: usize = crate::worker::MAX_DATAGRAM + 64;
/// Frames read from one client and not yet taken by its shard. Full: the
/// connection is not read until the shard catches up.
const IN_QUEUE: usize = 32;
/// Answers and peer data queued towards one client. Peer data beyond it is
/// dropped (a slow TCP client loses datagrams, as UDP would); an answer
/// beyond it closes the connection (the client does not read).
const OUT_QUEUE: usize = 256;

/// What every stream listener shares; the runtime's accept loop
/// (`natkit_runtime::stream::listen`) hands it each connection.
#[derive(Clone)]
pub struct StreamContext {
    pub workers: Arc<Vec<WorkerHandle>>,
    pub metrics: Metrics,
    pub limits: StreamLimits,
    pub next_conn: Arc<AtomicU64>,
}

impl StreamService for StreamContext {
    fn count(&self, kind: StreamKind, outcome: AcceptOutcome) {
        self.metrics
            .connections
            .with_label_values(&[kind.label(), outcome.label()])
            .inc();
    }

    fn open_gauge(&self, kind: StreamKind) -> IntGauge {
        self.metrics
            .connections_open
            .with_label_values(&[kind.label()])
    }

    async fn serve<S>(&self, stream: S, kind: StreamKind, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        connection(stream, peer, kind == StreamKind::Tls, self).await;
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    tls: bool,
    ctx: &StreamContext,
) {
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut stream = Box::pin(stream);
    let mut d = Deframer::new(MAX_FRAME, true);
    // The first message says what the connection is: a client data
    // connection (RFC 6062 §4.4) starts with a ConnectionBind, which the
    // shard its CONNECTION-ID names answers; anything else makes it a
    // control connection, on the shard it is given here.
    let first = loop {
        match d.next_frame() {
            Ok(Some(f)) => break f.message.to_vec(),
            Ok(None) => {}
            Err(e) => {
                debug!(%peer, error = %e, "closing client stream");
                return;
            }
        }
        tokio::select! {
            r = read_more(&mut stream, &mut d, ctx.limits.idle_timeout) => {
                if let Err(end) = r {
                    debug!(%peer, reason = end.label(), "client stream ending");
                    return;
                }
            }
            _ = ctx.limits.shutdown.wait() => return,
        }
    };
    if connection_bind_id(&first).is_some() {
        crate::tcp::data_connection(stream, d, first, peer, conn, ctx).await;
        return;
    }
    let worker = &ctx.workers[(conn % ctx.workers.len() as u64) as usize];
    let (frames, frames_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_QUEUE);
    let (out, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let scheduled = Arc::new(AtomicBool::new(false));
    // Kept only to notice the writer giving up (its queue closes).
    let writer_alive = out.clone();
    let (held_tx, mut held) = tokio::sync::watch::channel(false);
    let opened = worker.send(Inbox::Opened(StreamLink {
        conn,
        addr: peer,
        tls,
        frames: frames_rx,
        out,
        scheduled: scheduled.clone(),
        held: held_tx,
    }));
    if !opened {
        return;
    }
    let (mut reader, writer) = tokio::io::split(stream);
    let write_task = tokio::spawn(write_queued(writer, out_rx, ctx.limits.idle_timeout));
    let mut first = Some(first);
    let end = 'conn: loop {
        // Hand every whole frame to the shard, waiting for room.
        loop {
            let next = match first.take() {
                Some(f) => Ok(Some(f)),
                None => d.next_frame().map(|f| f.map(|f| f.message.to_vec())),
            };
            let frame = match next {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "closing client stream");
                    break 'conn StreamEnd::Framing;
                }
            };
            let queued = tokio::select! {
                r = frames.send(frame) => r.is_ok(),
                _ = writer_alive.closed() => break 'conn StreamEnd::WriteTimeout,
                _ = ctx.limits.shutdown.wait() => break 'conn StreamEnd::Shutdown,
            };
            // The shard closed the connection (it does not read its
            // answers), or has stopped.
            if !queued || !worker.ready(conn, &scheduled) {
                break 'conn StreamEnd::Error;
            }
        }
        // While the connection holds an allocation its lifetime governs
        // the connection (RFC 8656 §7: a client may send nothing but a
        // Refresh every few minutes), so silence does not close it; a
        // frame still has the idle timeout from its first byte. When the
        // allocation begins or ends, the wait starts over: the idle
        // timeout counts from the allocation's end.
        let idle = ctx.limits.idle_timeout;
        let quiet = (!*held.borrow_and_update()).then_some(idle);
        tokio::select! {
            r = read_more_with(&mut reader, &mut d, quiet, idle) => {
                if let Err(end) = r {
                    break end;
                }
            }
            r = held.changed() => if r.is_err() {
                // The shard forgot the connection (it closed it, or stopped).
                break StreamEnd::Error;
            },
            _ = writer_alive.closed() => break StreamEnd::WriteTimeout,
            _ = ctx.limits.shutdown.wait() => break StreamEnd::Shutdown,
        }
    };
    debug!(%peer, reason = end.label(), "client stream ending");
    // No more frames: once it has handled those queued, the shard ends the
    // allocation and drops its end of the answer queue; the writer sends
    // what is left (bounded by the idle timeout) and closes.
    drop(frames);
    drop(writer_alive);
    worker.ready(conn, &scheduled);
    if let Ok(Err(e)) = write_task.await {
        debug!(%peer, reason = e.label(), "client stream write side ended");
    }
}
