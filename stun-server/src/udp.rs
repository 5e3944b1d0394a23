//! The UDP data path: per core, one thread per endpoint, each with its own
//! SO_REUSEPORT socket, so the kernel spreads clients over cores and no two
//! threads share a receive queue. Datagrams come in with recvmmsg and go out
//! with sendmmsg, in batches; buffers are allocated once per thread.

use std::net::UdpSocket;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use natkit_runtime::batch::{self, RecvBatch, SendBatch, UdpSocketOptions};
use natkit_runtime::shutdown::Shutdown;
use tracing::warn;

use crate::metrics::{Metrics, Tally};
use crate::responder::{Outcome, Responder, Transport, MAX_REPLY_LEN};

/// Datagrams per recvmmsg/sendmmsg call.
const BATCH: usize = 64;
/// Receive buffer per datagram: room for RFC 5780 §7.6 PADDING up to a
/// jumbo-free MTU and then some; longer datagrams are truncated and dropped.
const RECV_BUF: usize = 4096;
/// How often a blocked worker wakes to look for shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Bind `threads` groups of sockets, one socket per endpoint in each group,
/// and start one worker per socket. Returns the join handles.
pub fn start(
    responder: Arc<Responder>,
    threads: usize,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // One SO_REUSEPORT group per endpoint, then one socket of each group
    // per thread group.
    let opts = UdpSocketOptions {
        recv_timeout: Some(POLL),
        ..Default::default()
    };
    let mut per_endpoint = Vec::new();
    for e in responder.endpoints() {
        let socks = batch::udp_socket_group(e.addr, threads, &opts)
            .with_context(|| format!("cannot bind UDP {}", e.addr))?;
        per_endpoint.push(socks.into_iter());
    }
    let groups: Vec<Arc<Vec<UdpSocket>>> = (0..threads)
        .map(|_| {
            Arc::new(
                per_endpoint
                    .iter_mut()
                    .map(|it| it.next().expect("one socket per thread"))
                    .collect(),
            )
        })
        .collect();
    let mut handles = Vec::new();
    for (g, group) in groups.into_iter().enumerate() {
        for local in 0..group.len() {
            let (group, responder, shutdown) = (group.clone(), responder.clone(), shutdown.clone());
            let counters = metrics.counters(Transport::Udp);
            let send_errors = metrics.send_errors.clone();
            let h = std::thread::Builder::new()
                .name(format!("udp-{g}-{local}"))
                .spawn(move || {
                    worker(&group, local, &responder, &shutdown, |tally, errors| {
                        tally.flush(&counters);
                        if errors > 0 {
                            send_errors.inc_by(errors);
                        }
                    })
                })
                .context("cannot start UDP worker thread")?;
            handles.push(h);
        }
    }
    Ok(handles)
}

/// One worker: receive on `group[local]`, answer from whichever socket the
/// responder picks (RFC 5780 CHANGE-REQUEST answers from another endpoint).
fn worker(
    group: &[UdpSocket],
    local: usize,
    responder: &Responder,
    shutdown: &Shutdown,
    mut flush: impl FnMut(&mut Tally, u64),
) {
    let mut rx = RecvBatch::new(BATCH, RECV_BUF);
    let mut tx: Vec<SendBatch> = group
        .iter()
        .map(|_| SendBatch::new(BATCH, MAX_REPLY_LEN))
        .collect();
    let mut tally = Tally::default();
    let mut scratch = vec![0u8; RECV_BUF + MAX_REPLY_LEN];
    while !shutdown.is_triggered() {
        let n = match rx.recv(&group[local]) {
            Ok(n) => n,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let mut direct_errors = 0u64;
        for d in rx.iter().take(n) {
            if d.truncated {
                tally.message(Outcome::Malformed, d.data.len());
                continue;
            }
            // RFC 5780 may answer from another endpoint's socket, known only
            // after deciding: write into a scratch buffer, then copy the few
            // dozen bytes into that socket's send slot.
            let (o, r) = responder.respond(Transport::Udp, local, d.source, d.data, &mut scratch);
            tally.message(o, d.data.len());
            let Some(r) = r else { continue };
            if r.len > MAX_REPLY_LEN {
                // A padded RFC 5780 answer: rare and large, sent on its own
                // rather than making every batch slot this big.
                match group[r.from].send_to(&scratch[..r.len], r.to) {
                    Ok(_) => tally.sent(r.len),
                    Err(_) => direct_errors += 1,
                }
                continue;
            }
            let queued = tx[r.from].push_with(r.to, |buf| {
                buf[..r.len].copy_from_slice(&scratch[..r.len]);
                r.len
            });
            if queued == Ok(true) {
                tally.sent(r.len);
            }
        }
        // Count the batch before its answers leave: whoever got an answer
        // then reads metrics that include its request (and the malformed
        // datagrams that came in the same batch before it).
        flush(&mut tally, 0);
        let mut errors = direct_errors;
        for (i, b) in tx.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            match b.flush(&group[i]) {
                Ok(stats) => errors += stats.failed as u64,
                Err(e) => {
                    // Whole-batch failure: drop it rather than retry forever.
                    warn!(error = %e, "UDP send failed");
                    errors += b.len() as u64;
                    b.clear();
                }
            }
        }
        if errors > 0 {
            flush(&mut tally, errors);
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}
