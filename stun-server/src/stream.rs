//! STUN over TCP and TLS (RFC 8489 §6.2.2, §6.2.3): one tokio task per
//! connection, framing by the STUN header, with an idle timeout and a cap on
//! open connections so half-open or idle peers cannot exhaust the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use natkit_proto::framing::{self, FrameKind};
use natkit_runtime::shutdown::Shutdown;
use natkit_runtime::tls::ReloadableAcceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::{Metrics, Tally};
use crate::responder::{Responder, Transport, MAX_REPLY_LEN};

/// Largest STUN message accepted on a stream. Binding requests are tiny;
/// anything bigger is a misbehaving peer.
const MAX_FRAME: usize = 2048;

/// Settings shared by all stream listeners.
#[derive(Clone)]
pub struct StreamContext {
    pub responder: Arc<Responder>,
    pub metrics: Metrics,
    pub idle_timeout: Duration,
    pub slots: Arc<Semaphore>,
    pub shutdown: Shutdown,
}

/// Accept connections on `listener` (bound to endpoint `local`) until
/// shutdown. With `tls`, each connection is a TLS server session first, with
/// the certificate current when it is accepted (SIGHUP replaces it).
pub async fn serve(
    listener: TcpListener,
    local: usize,
    tls: Option<ReloadableAcceptor>,
    ctx: StreamContext,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let shutdown = &ctx.shutdown;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => return,
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
        let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
            ctx.metrics.connection(transport, "rejected_cap");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.as_ref().map(ReloadableAcceptor::current);
        tokio::spawn(async move {
            let _permit = permit;
            let gauge = ctx.metrics.connection_open(transport);
            gauge.inc();
            let reason = match tls {
                None => {
                    ctx.metrics.connection(transport, "accepted");
                    connection(stream, transport, local, peer, &ctx).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(ctx.idle_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            ctx.metrics.connection(transport, "accepted");
                            connection(s, transport, local, peer, &ctx).await
                        }
                        _ => {
                            ctx.metrics.connection(transport, "tls_failed");
                            "tls_handshake"
                        }
                    }
                }
            };
            gauge.dec();
            ctx.metrics.connection_closed(transport, reason);
        });
    }
}

/// Serve one connection; returns why it ended.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    transport: Transport,
    local: usize,
    peer: SocketAddr,
    ctx: &StreamContext,
) -> &'static str {
    let counters = ctx.metrics.counters(transport);
    let mut tally = Tally::default();
    let mut buf = vec![0u8; MAX_FRAME * 2];
    let mut filled = 0;
    let mut out = [0u8; MAX_REPLY_LEN];
    let shutdown = &ctx.shutdown;
    let reason = 'conn: loop {
        // Answer every whole frame already buffered.
        let mut start = 0;
        loop {
            match framing::next_frame(&buf[start..filled], false, MAX_FRAME) {
                Ok(Some(f)) => {
                    debug_assert_eq!(f.kind, FrameKind::Stun);
                    let msg = &buf[start..start + f.message_len];
                    let (outcome, reply) =
                        ctx.responder.respond(transport, local, peer, msg, &mut out);
                    tally.message(outcome, f.consumed);
                    start += f.consumed;
                    if let Some(r) = reply {
                        if s.write_all(&out[..r.len]).await.is_err() {
                            break 'conn "error";
                        }
                        tally.sent(r.len);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(%peer, error = %e, "closing stream");
                    tally.message(crate::responder::Outcome::Malformed, filled - start);
                    break 'conn "framing";
                }
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        tally.flush(&counters);
        let read = tokio::select! {
            r = tokio::time::timeout(ctx.idle_timeout, s.read(&mut buf[filled..])) => r,
            _ = shutdown.wait() => break 'conn "shutdown",
        };
        match read {
            Err(_) => break 'conn "idle",
            Ok(Ok(0)) => break 'conn "eof",
            Ok(Ok(n)) => filled += n,
            Ok(Err(_)) => break 'conn "error",
        }
    };
    tally.flush(&counters);
    let _ = s.shutdown().await;
    reason
}
