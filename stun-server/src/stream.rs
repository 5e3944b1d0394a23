//! STUN over TCP and TLS (RFC 8489 §6.2.2, §6.2.3): one tokio task per
//! connection reads the stream into the [`Deframer`] and answers every
//! whole message; a writer task sends the answers. Bounded everywhere, so
//! no peer can hold the server's memory or a connection slot for long: a
//! cap on open connections, an idle timeout, a deadline for each frame from
//! its first byte, a bounded queue of unsent answers (when it is full the
//! connection is not read) and writes bounded by the idle timeout (a client
//! that sends and never reads is closed).

use std::net::SocketAddr;
use std::sync::Arc;

use natkit_proto::framing::Deframer;
use natkit_runtime::stream::{
    read_more, write_queued, AcceptOutcome, StreamEnd, StreamKind, StreamLimits, StreamService,
};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::metrics::{Metrics, Tally};
use crate::responder::{Outcome, Responder, Transport, MAX_REPLY_LEN};

/// Largest STUN message accepted on a stream. Binding requests are tiny;
/// anything bigger is a misbehaving peer.
const MAX_FRAME: usize = 2048;
/// Chunks of unsent answers (each the answers to one read: at most a few
/// KiB) queued per connection. Full: the connection is not read until the
/// client takes its answers.
const OUT_QUEUE: usize = 16;

/// What a stream listener serves its connections with; the runtime's accept
/// loop (`natkit_runtime::stream::listen`) hands it each connection.
#[derive(Clone)]
pub struct StreamContext {
    pub responder: Arc<Responder>,
    pub metrics: Metrics,
    pub limits: StreamLimits,
    /// The endpoint the listener is bound to ([`Responder::STREAM_ONLY`] for TLS).
    pub local: usize,
}

fn transport(kind: StreamKind) -> Transport {
    match kind {
        StreamKind::Tcp => Transport::Tcp,
        StreamKind::Tls => Transport::Tls,
    }
}

impl StreamService for StreamContext {
    fn count(&self, kind: StreamKind, outcome: AcceptOutcome) {
        let t = transport(kind);
        self.metrics.connection(t, outcome.label());
        if outcome == AcceptOutcome::TlsFailed {
            self.metrics.connection_closed(t, "tls_handshake");
        }
    }

    fn open_gauge(&self, kind: StreamKind) -> IntGauge {
        self.metrics.connection_open(transport(kind))
    }

    async fn serve<S>(&self, stream: S, kind: StreamKind, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let t = transport(kind);
        let reason = connection(stream, t, self.local, peer, self).await;
        self.metrics.connection_closed(t, reason);
    }
}

/// Serve one connection; returns why it ended.
async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    s: S,
    transport: Transport,
    local: usize,
    peer: SocketAddr,
    ctx: &StreamContext,
) -> &'static str {
    let counters = ctx.metrics.counters(transport);
    let mut tally = Tally::default();
    let (reply_tx, reply_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let (mut reader, writer) = tokio::io::split(s);
    let write_task = tokio::spawn(write_queued(writer, reply_rx, ctx.limits.idle_timeout));
    let mut d = Deframer::new(MAX_FRAME, false);
    let mut out = [0u8; MAX_REPLY_LEN];
    let shutdown = &ctx.limits.shutdown;
    let end = 'conn: loop {
        // Answer every whole frame read so far, in one chunk for the writer.
        let mut answers = Vec::new();
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let (outcome, reply) = ctx
                        .responder
                        .respond(transport, local, peer, f.message, &mut out);
                    tally.message(outcome, f.message.len());
                    if let Some(r) = reply {
                        answers.extend_from_slice(&out[..r.len]);
                        tally.sent(r.len);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "closing stream");
                    tally.message(Outcome::Malformed, d.buffered());
                    break 'conn StreamEnd::Framing;
                }
            }
        }
        tally.flush(&counters);
        if !answers.is_empty() {
            // Waits while the queue is full: the client is not read until
            // it takes its answers, or the writer gives up on it.
            let queued = tokio::select! {
                r = reply_tx.send(answers) => r.is_ok(),
                _ = shutdown.wait() => break 'conn StreamEnd::Shutdown,
            };
            if !queued {
                break StreamEnd::WriteTimeout;
            }
        }
        tokio::select! {
            r = read_more(&mut reader, &mut d, ctx.limits.idle_timeout) => {
                if let Err(end) = r {
                    break end;
                }
            }
            _ = reply_tx.closed() => break StreamEnd::WriteTimeout,
            _ = shutdown.wait() => break StreamEnd::Shutdown,
        }
    };
    tally.flush(&counters);
    // The writer sends what is queued (a client that half-closed gets every
    // answer), then closes; a write that fails or stalls is the reason.
    drop(reply_tx);
    match write_task.await {
        Ok(Err(w)) if matches!(end, StreamEnd::Eof | StreamEnd::WriteTimeout) => w.label(),
        _ => end.label(),
    }
}
