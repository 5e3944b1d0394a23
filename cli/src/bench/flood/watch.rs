//! What `natkit bench flood` measures: an existing allocation's stream and
//! the peer that echoes it, Binding requests, new users, the relay's memory.
//! The TURN clients are natkit-ice `TurnConnection`s and every socket is
//! waited on through tokio, like the rest of the CLI; each of these runs on
//! a thread of its own (with a one-thread runtime) so that the flood
//! threads and the other watchers do not delay the stream's pacing.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use natkit_ice::turn::{Incoming, TurnConnection};
use natkit_proto::turn::client::Config;
use tokio::sync::watch;

use super::{local_ip, socket, NewUsersReport, ProbeReport, NET_NEW_USERS, NET_PROBE};
use crate::bench::memory;
use crate::bench::turn_setup::{allocated, channel_bound, closed, Conn};

/// How long a Binding probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_millis(500);
/// How long a new user may take to allocate.
const NEW_USER_LIMIT: Duration = Duration::from_secs(5);
/// How long a new user waits for the deletion of its allocation.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);
/// How long the existing allocation and its channel may take.
const SETUP_LIMIT: Duration = Duration::from_secs(10);
/// Socket buffers of the TURN clients and the probe.
const CLIENT_BUFFER: usize = 1 << 20;
/// How often a loop that waits for data checks whether it must stop.
const STOP_CHECK: Duration = Duration::from_millis(10);

/// Resolves once `stop` is set (checked every [`STOP_CHECK`]): the flag is
/// set by plain threads, outside any runtime.
pub(super) async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(STOP_CHECK).await;
    }
}

/// A client of the relay on its own connected socket.
pub(super) fn client_socket(server: SocketAddr, ip: IpAddr) -> anyhow::Result<UdpSocket> {
    let s = socket(ip, CLIENT_BUFFER)?;
    s.connect(server)
        .with_context(|| format!("cannot connect a UDP socket to {server}"))?;
    Ok(s)
}

/// A TURN client from `ip` (a socket of its own: an allocation is its
/// 5-tuple, RFC 8656 §2.2), on the current runtime.
fn turn_client(ip: IpAddr, config: &Config) -> anyhow::Result<Conn> {
    let sock = socket(ip, CLIENT_BUFFER)?;
    let c = TurnConnection::over_udp(sock, config.clone())
        .with_context(|| format!("cannot use a UDP socket on {ip} for {}", config.server))?;
    Ok(Box::new(c))
}

/// `step` within `limit`, or why not.
async fn within<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or_else(|_| Err(format!("no {what} within {limit:?}")))
}

/// Allocate (401, then the authenticated Allocate): the connection and how
/// long it took, or why it did not.
async fn allocate(c: Conn, limit: Duration) -> Result<(Conn, Duration), String> {
    let t0 = Instant::now();
    let c = within(limit, "allocation", allocated(c)).await?;
    Ok((c, t0.elapsed()))
}

/// The existing allocation, from `ip`, with a channel to `peer`; and its
/// relayed address.
pub(super) async fn existing_allocation(
    ip: IpAddr,
    config: &Config,
    peer: SocketAddr,
) -> anyhow::Result<(Conn, SocketAddr)> {
    let (c, _) = allocate(turn_client(ip, config)?, SETUP_LIMIT)
        .await
        .map_err(|e| anyhow::anyhow!("the first allocation failed: {e}"))?;
    let mut c = within(SETUP_LIMIT, "answer to ChannelBind", channel_bound(c, peer))
        .await
        .map_err(anyhow::Error::msg)?;
    let relayed = *c
        .client()
        .relayed_addresses()
        .first()
        .context("an allocation without a relayed address")?;
    Ok((c, relayed))
}

/// Stream packets: kind byte, 8-byte sequence number, padding.
pub(super) const STREAM: u8 = 0x5A;

pub(super) fn seq_of(data: &[u8]) -> Option<u64> {
    match data {
        [STREAM, s @ ..] if s.len() >= 8 => Some(u64::from_be_bytes(s[..8].try_into().ok()?)),
        _ => None,
    }
}

/// Which sequence numbers arrived.
#[derive(Default)]
pub(super) struct Seen(Vec<u64>);

impl Seen {
    pub(super) fn mark(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    pub(super) fn count(&self, range: std::ops::Range<u64>) -> u64 {
        range
            .filter(|&s| {
                self.0
                    .get((s / 64) as usize)
                    .is_some_and(|w| w & (1 << (s % 64)) != 0)
            })
            .count() as u64
    }
}

/// Where the run is, told to the stream by the thread that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// The warm-up: the baseline.
    Baseline,
    /// The floods.
    Flood,
    /// The stream has stopped; what is in flight arrives or is lost.
    Drain,
    /// Done.
    Stop,
}

/// What the stream sent and got back.
pub(super) struct Stream {
    /// The packets that came back (those sent are numbered from 0).
    pub(super) back: Seen,
    /// The sequence numbers sent during the floods.
    pub(super) flood: std::ops::Range<u64>,
}

/// The existing allocation: send `rate` packets per second through its
/// channel to `peer`, count those that come back, keep it refreshed, until
/// `phase` says [`Phase::Stop`] (or its sender is gone).
pub(super) async fn victim(
    mut conn: Conn,
    peer: SocketAddr,
    rate: u64,
    size: usize,
    mut phase: watch::Receiver<Phase>,
) -> anyhow::Result<Stream> {
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let mut payload = vec![0u8; size];
    payload[0] = STREAM;
    let mut back = Seen::default();
    let mut seq = 0u64;
    let (mut flood_from, mut flood_until) = (None, None);
    let mut now_phase = *phase.borrow_and_update();
    let mut next = tokio::time::Instant::now();
    let mut tick = pin!(tokio::time::sleep_until(next));
    loop {
        // The stream stops with the floods; what is in flight drains.
        let sending = now_phase < Phase::Drain;
        tokio::select! {
            // First the phase, then the pace, then what came back: a busy
            // socket must not hold a packet back.
            biased;
            changed = phase.changed() => {
                now_phase = match changed {
                    Ok(()) => *phase.borrow_and_update(),
                    Err(_) => Phase::Stop,
                };
                // A phase may be skipped over (a zero-length one).
                if now_phase >= Phase::Flood {
                    flood_from.get_or_insert(seq);
                }
                if now_phase >= Phase::Drain {
                    flood_until.get_or_insert(seq);
                }
                if now_phase == Phase::Stop {
                    break;
                }
            }
            () = &mut tick, if sending => {
                // tokio's timers have millisecond resolution: send every
                // packet that is due, so the rate is exact on average.
                let now = tokio::time::Instant::now();
                while next <= now {
                    payload[1..9].copy_from_slice(&seq.to_be_bytes());
                    // A packet that cannot be sent counts as lost on the
                    // way to the peer, which is what is measured.
                    let _ = conn.send_to(peer, &payload).await;
                    seq += 1;
                    next += gap;
                }
                tick.as_mut().reset(next);
            }
            got = conn.next() => {
                if let Incoming::Data { data, .. } = got.context("the existing allocation's socket failed")? {
                    if let Some(s) = seq_of(&data) {
                        back.mark(s);
                    }
                }
            }
        }
    }
    let from = flood_from.unwrap_or(seq);
    Ok(Stream {
        back,
        flood: from..flood_until.unwrap_or(seq).max(from),
    })
}

/// The peer: echo every stream packet from the relayed address until
/// `stop`; which ones arrived.
pub(super) async fn peer(
    sock: UdpSocket,
    relayed: SocketAddr,
    stop: &AtomicBool,
) -> anyhow::Result<Seen> {
    let sock = tokio::net::UdpSocket::from_std(sock).context("cannot use the peer's socket")?;
    let mut seen = Seen::default();
    let mut buf = [0u8; 2048];
    let mut stopped = pin!(stopped(stop));
    loop {
        tokio::select! {
            () = &mut stopped => return Ok(seen),
            got = sock.recv_from(&mut buf) => {
                // Errors (an ICMP report) say nothing about the stream.
                let Ok((n, from)) = got else { continue };
                if from == relayed {
                    if let Some(s) = seq_of(&buf[..n]) {
                        seen.mark(s);
                    }
                    let _ = sock.send_to(&buf[..n], relayed).await;
                }
            }
        }
    }
}

pub(super) fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// One Binding request every 100 ms until `stop`, each waited for up to
/// [`PROBE_WAIT`].
pub(super) async fn probes(server: SocketAddr, stop: &AtomicBool) -> anyhow::Result<ProbeReport> {
    let sock = client_socket(server, local_ip(server, NET_PROBE, 0))?;
    let sock = tokio::net::UdpSocket::from_std(sock).context("cannot use the probe's socket")?;
    let mut times = Vec::new();
    let mut sent = 0u64;
    let mut buf = [0u8; 512];
    let mut req = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let tid = natkit_proto::transaction::new_transaction_id();
        let n = natkit_proto::binding::write_request(&mut req, &tid, &Default::default())?;
        let _ = sock.send(&req[..n]).await;
        sent += 1;
        let answer = async {
            loop {
                if let Ok(n) = sock.recv(&mut buf).await {
                    if natkit_proto::binding::parse_response(&buf[..n])
                        .is_ok_and(|r| r.transaction_id == tid)
                    {
                        return t0.elapsed();
                    }
                }
            }
        };
        if let Ok(took) = tokio::time::timeout_at((t0 + PROBE_WAIT).into(), answer).await {
            times.push(took);
        }
        tokio::time::sleep_until((t0 + Duration::from_millis(100)).into()).await;
    }
    times.sort();
    Ok(ProbeReport {
        sent,
        answered: times.len() as u64,
        median_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
    })
}

/// A new user from a new address every `every` until `stop`; each deletes
/// its allocation once it has it.
pub(super) async fn new_users(
    server: SocketAddr,
    config: &Config,
    every: Duration,
    first: usize,
    stop: &AtomicBool,
) -> anyhow::Result<(NewUsersReport, usize)> {
    let mut r = NewUsersReport::default();
    let mut times = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let c = turn_client(local_ip(server, NET_NEW_USERS, i), config)?;
        i += 1;
        r.tried += 1;
        match allocate(c, NEW_USER_LIMIT).await {
            Ok((c, took)) => {
                times.push(took);
                r.allocated += 1;
                // Best effort: the relay frees it at its lifetime anyway.
                let _ = tokio::time::timeout(CLOSE_LIMIT, closed(c)).await;
            }
            Err(e) => {
                r.failure.get_or_insert(e);
            }
        }
        tokio::time::sleep_until((t0 + every).into()).await;
    }
    times.sort();
    r.median_ms = percentile(&times, 0.5);
    r.max_ms = times.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok((r, i))
}

/// Sample `pid`'s resident memory every 100 ms until `stop`: the largest.
pub(super) fn rss_max(pid: u32, stop: &AtomicBool) -> Option<f64> {
    let mut max = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(m) = memory::sample(pid) {
            max = max.max(m.rss_kib);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (max > 0).then(|| max as f64 / 1024.0)
}
