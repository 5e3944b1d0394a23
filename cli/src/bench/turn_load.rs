//! The measured phase of `natkit bench turn`: ChannelData through the relay
//! and back, batched on both ends.
//!
//! Each lane is one allocation with a window of probes in flight. A probe is
//! a ChannelData message (RFC 8656 §12.4) sent with sendmmsg on the
//! allocation's socket; the relay forwards its payload from the relayed
//! address to the peer; the peer echoes it (recvmmsg, then sendmmsg of the
//! whole batch) and the relay brings it back as ChannelData. The peer is a
//! plain UDP socket (`--peer-mode udp`) or another allocation of the run
//! (`--peer-mode relay`: the partner answers through its own channel, so
//! every probe crosses the relay twice between two relayed addresses).
//! The payload starts with a kind byte and the window's 12-byte identifier,
//! so an answer is matched to its slot by indexing.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_proto::channel_data;
use natkit_proto::turn::client::Event;
use natkit_runtime::batch::{gso, RecvBatch, SendBatch};

use super::histogram::Histogram;
use super::readiness::Readiness;
use super::turn_setup::Allocation;
use super::window::{parse_transaction_id, transaction_id, Answer, Window};

/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;
/// Most receive calls per socket before moving on to the next one.
const RECV_ROUNDS: usize = 4;
/// Longest wait for datagrams.
const MAX_WAIT_MS: u64 = 10;
/// Payload kinds (first byte).
const PING: u8 = 0x50;
const PONG: u8 = 0x51;
/// Kind byte, 3 bytes of padding, 12-byte identifier.
pub const MIN_PAYLOAD: usize = 16;

/// One allocation under load.
pub struct Lane {
    /// The allocation (its client keeps refreshing it).
    pub alloc: Allocation,
    /// The echoing peer socket (`--peer-mode udp`), connected to the
    /// allocation's relayed address.
    pub peer: Option<UdpSocket>,
    window: Window,
    /// Next send time when paced (nanoseconds since the start).
    next_send: u64,
}

impl Lane {
    /// A lane with a window of `window` probes.
    pub fn new(alloc: Allocation, peer: Option<UdpSocket>, window: usize) -> Lane {
        Lane {
            alloc,
            peer,
            window: Window::new(window),
            next_send: 0,
        }
    }
}

/// The shape of the run, shared by all workers.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The TURN server.
    pub server: SocketAddr,
    /// Measurement window, offsets from the common start (nanoseconds).
    pub measure_from: u64,
    /// End of the measurement window.
    pub measure_until: u64,
    /// A probe unanswered this long is lost.
    pub timeout: u64,
    /// Payload bytes per probe.
    pub size: usize,
    /// Nanoseconds between probes of one lane; 0 = as fast as the window
    /// allows.
    pub interval: u64,
    /// Send probes and echoes as UDP GSO trains instead of sendmmsg batches.
    pub gso: bool,
}

impl Plan {
    fn in_window(&self, now: u64) -> bool {
        now >= self.measure_from && now < self.measure_until
    }
}

/// Counters of one worker (then of the run).
#[derive(Default)]
pub struct Stats {
    /// Probes sent in the window.
    pub sent: u64,
    /// Probes that reached the peer through the relay in the window (one
    /// way, client to peer).
    pub peer_received: u64,
    /// Echoes back at the sender in the window (round trips).
    pub received: u64,
    /// Probes sent in the window never answered within the timeout.
    pub lost: u64,
    /// Answers to probes already counted lost.
    pub late: u64,
    /// Datagrams that are none of ours.
    pub unexpected: u64,
    /// ICMP errors on the sockets.
    pub refused: u64,
    /// Datagrams the kernel refused (or had no room for) to send.
    pub send_failed: u64,
    /// Echoes the peer could not send (full socket buffer).
    pub echo_failed: u64,
    /// Control failures during the load (a refresh that failed).
    pub control_failed: u64,
    /// Round-trip latency.
    pub latency: Histogram,
}

impl Stats {
    /// Add `o`'s counts.
    pub fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.peer_received += o.peer_received;
        self.received += o.received;
        self.lost += o.lost;
        self.late += o.late;
        self.unexpected += o.unexpected;
        self.refused += o.refused;
        self.send_failed += o.send_failed;
        self.echo_failed += o.echo_failed;
        self.control_failed += o.control_failed;
        self.latency.merge(&o.latency);
    }
}

/// What one [`Out::flush`] did.
#[derive(Default)]
struct Sent {
    /// Datagrams the kernel refused (dropped).
    failed: usize,
    /// Datagrams not sent because the socket buffer is full (the caller
    /// takes them back).
    pending: usize,
    /// The kernel reported ICMP port unreachable.
    refused: bool,
}

/// Outgoing datagrams for one socket at a time: a sendmmsg batch with a
/// destination per datagram, or (with `--gso`) one UDP GSO train of
/// equal-size datagrams to the socket's connected destination.
struct Out {
    batch: SendBatch,
    train: Vec<u8>,
    /// Segment size of the train (the size of its first datagram).
    segment: usize,
    queued: usize,
    slot_size: usize,
    gso: bool,
}

/// Why [`Out::push_with`] queued nothing.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    /// Flush, then push again.
    Flush,
    /// The writer wrote nothing.
    Empty,
}

impl Out {
    fn new(slot_size: usize, gso: bool) -> Out {
        Out {
            batch: SendBatch::new(BATCH, slot_size),
            train: Vec::with_capacity(gso::MAX_SEGMENTS * slot_size),
            segment: 0,
            queued: 0,
            slot_size,
            gso,
        }
    }

    fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queue a datagram for `dest` written by `write` (its length, 0 for
    /// nothing). A GSO train only takes datagrams to the socket's connected
    /// destination (`dest` is then ignored) and of the train's segment size.
    fn push_with(
        &mut self,
        dest: SocketAddr,
        write: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), Full> {
        if !self.gso {
            return match self.batch.push_with(dest, write) {
                Ok(true) => {
                    self.queued += 1;
                    Ok(())
                }
                Ok(false) => Err(Full::Empty),
                Err(_) => Err(Full::Flush),
            };
        }
        if self.queued >= gso::MAX_SEGMENTS.min(BATCH) {
            return Err(Full::Flush);
        }
        let at = self.train.len();
        self.train.resize(at + self.slot_size, 0);
        let len = write(&mut self.train[at..]).min(self.slot_size);
        if len == 0 {
            self.train.truncate(at);
            return Err(Full::Empty);
        }
        if self.queued > 0 && len != self.segment {
            // Only the last segment of a train may differ: start a new one.
            self.train.truncate(at);
            return Err(Full::Flush);
        }
        self.train.truncate(at + len);
        self.segment = len;
        self.queued += 1;
        Ok(())
    }

    /// Send what is queued on `sock`; the queue is empty afterwards.
    fn flush(&mut self, sock: &UdpSocket) -> io::Result<Sent> {
        let n = self.queued;
        self.queued = 0;
        if n == 0 {
            return Ok(Sent::default());
        }
        if !self.gso {
            let st = self.batch.flush(sock)?;
            self.batch.clear();
            return Ok(Sent {
                failed: st.failed,
                pending: st.pending,
                refused: st
                    .last_error
                    .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused),
            });
        }
        let r = gso::send_segments(sock, &self.train, self.segment, None);
        self.train.clear();
        Ok(match r {
            Ok(_) => Sent::default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sent {
                pending: n,
                ..Sent::default()
            },
            Err(e) => Sent {
                failed: n,
                refused: e.kind() == io::ErrorKind::ConnectionRefused,
                ..Sent::default()
            },
        })
    }
}

/// Write a probe payload of `size` bytes.
pub fn write_payload(buf: &mut [u8], kind: u8, tid: &[u8; 12], size: usize) -> Option<usize> {
    let out = buf.get_mut(..size.max(MIN_PAYLOAD))?;
    out[0] = kind;
    out[1..4].fill(0);
    out[4..16].copy_from_slice(tid);
    // Filler bytes are left as they are: their content does not matter.
    Some(out.len())
}

/// The kind byte and identifier of a payload.
pub fn read_payload(data: &[u8]) -> Option<(u8, [u8; 12])> {
    if data.len() < MIN_PAYLOAD {
        return None;
    }
    Some((data[0], data[4..16].try_into().ok()?))
}

/// The readiness key of lane `i`'s allocation socket (2i) or peer socket
/// (2i+1).
fn key(i: usize, peer: bool) -> u64 {
    (2 * i + usize::from(peer)) as u64
}

/// Run one worker over `lanes` until the measurement (and its drain) ends.
/// In relay mode a lane's partner must be in the same worker only for the
/// figures to be per-thread; echoes go out on the receiving lane's socket.
pub fn worker(lanes: &mut [Lane], plan: &Plan, start: Instant) -> io::Result<Stats> {
    let salt: [u8; 4] = rand::random();
    let mut stats = Stats::default();
    let buf_size = plan.size.max(MIN_PAYLOAD) + channel_data::HEADER_LEN + 4;
    let mut send = Out::new(buf_size, plan.gso);
    let mut echo = Out::new(buf_size, plan.gso);
    let mut recv = RecvBatch::new(BATCH, 2048);
    let mut readiness = Readiness::new()?;
    let mut ready: Vec<u64> = Vec::new();
    for (i, l) in lanes.iter().enumerate() {
        // SAFETY: the lanes (and their sockets, never replaced) are
        // borrowed for this whole function, which drops `readiness`.
        unsafe {
            readiness.add(&l.alloc.sock, key(i, false))?;
            if let Some(p) = &l.peer {
                readiness.add(p, key(i, true))?;
            }
        }
    }
    let scan_every = (plan.timeout / 4).max(1_000_000);
    let mut next_scan = scan_every;
    let mut next_control = 0u64;
    let drain_until = plan.measure_until + plan.timeout;
    let now_ns = || start.elapsed().as_nanos() as u64;
    // Stagger paced lanes over one interval so they do not send in bursts.
    let n_lanes = lanes.len().max(1) as u64;
    for (i, l) in lanes.iter_mut().enumerate() {
        l.next_send = plan.interval * i as u64 / n_lanes;
    }

    loop {
        let now = now_ns();
        if now >= drain_until {
            break;
        }
        let sending = now < plan.measure_until;
        if !sending && lanes.iter().all(|l| l.window.outstanding_counted() == 0) {
            break;
        }
        let mut wake = next_scan.min(drain_until);
        if sending {
            let counted = plan.in_window(now);
            for (i, l) in lanes.iter_mut().enumerate() {
                fill(i as u16, l, &mut send, salt, now, counted, plan, &mut stats)?;
                if plan.interval > 0 && l.window.has_free() {
                    wake = wake.min(l.next_send);
                }
            }
            wake = wake.min(plan.measure_until);
            if now < plan.measure_from {
                wake = wake.min(plan.measure_from);
            }
        }
        let ms = wake
            .saturating_sub(now)
            .div_ceil(1_000_000)
            .min(MAX_WAIT_MS);
        readiness.wait(Duration::from_millis(ms), &mut ready);
        for &k in &ready {
            let i = (k / 2) as usize;
            let drained = if k % 2 == 1 {
                peer_echo(
                    &mut lanes[i],
                    &mut recv,
                    &mut echo,
                    plan,
                    now_ns,
                    &mut stats,
                )?
            } else {
                on_allocation_socket(
                    i, lanes, &mut recv, &mut echo, salt, plan, now_ns, &mut stats,
                )?
            };
            if drained {
                readiness.drained(k);
            }
        }
        let now = now_ns();
        if now >= next_scan {
            next_scan = now + scan_every;
            for l in lanes.iter_mut() {
                stats.lost += l.window.expire(now, plan.timeout);
            }
        }
        // Refreshes of allocations, permissions and channels (RFC 8656 §7,
        // §9, §12) stay due during a long run; checked twice a second.
        if now >= next_control {
            next_control = now + 500_000_000;
            let t = Instant::now();
            for l in lanes.iter_mut() {
                let c = &mut l.alloc.client;
                if c.poll_timeout().is_some_and(|d| d <= t) {
                    c.handle_timeout(t);
                }
                while let Some(e) = c.poll_event() {
                    if matches!(e, Event::Failed(_) | Event::ChannelFailed { .. }) {
                        stats.control_failed += 1;
                    }
                }
                while let Some(tx) = c.poll_transmit() {
                    let _ = l.alloc.sock.send(&tx.payload);
                }
            }
        }
    }
    for l in lanes.iter() {
        stats.lost += l.window.outstanding_counted();
    }
    Ok(stats)
}

/// Send probes on every idle slot of lane `i` (those due, when paced), in
/// batches.
#[allow(clippy::too_many_arguments)]
fn fill(
    i: u16,
    l: &mut Lane,
    send: &mut Out,
    salt: [u8; 4],
    now: u64,
    counted: bool,
    plan: &Plan,
    stats: &mut Stats,
) -> io::Result<()> {
    let mut slots = [0u16; BATCH];
    loop {
        let mut n = 0;
        while n < BATCH && (plan.interval == 0 || l.next_send <= now) {
            let Some((si, generation)) = l.window.take(now, counted) else {
                break;
            };
            let tid = transaction_id(salt, i, si, generation);
            let ch = l.alloc.channel;
            let pushed = send.push_with(plan.server, |buf| {
                encode_probe(buf, ch, PING, &tid, plan.size).unwrap_or(0)
            });
            if pushed.is_err() {
                l.window.untake(si);
                break;
            }
            slots[n] = si;
            n += 1;
            if plan.interval > 0 {
                l.next_send += plan.interval;
                // After a stall, resume the pace instead of bursting to catch up.
                if now.saturating_sub(l.next_send) > 100 * plan.interval {
                    l.next_send = now;
                }
            }
        }
        if n == 0 {
            return Ok(());
        }
        let st = send.flush(&l.alloc.sock)?;
        stats.send_failed += st.failed as u64;
        stats.refused += u64::from(st.refused);
        if counted {
            // Probes issued, refused ones included: each ends as answered
            // or lost.
            stats.sent += (n - st.pending) as u64;
        }
        if st.pending > 0 {
            // The socket buffer is full: take the unsent probes back.
            for &si in &slots[n - st.pending..n] {
                l.window.untake(si);
            }
            return Ok(());
        }
    }
}

/// A ChannelData message on `channel` carrying a probe payload.
fn encode_probe(
    buf: &mut [u8],
    channel: u16,
    kind: u8,
    tid: &[u8; 12],
    size: usize,
) -> Option<usize> {
    let hl = channel_data::HEADER_LEN;
    let len = write_payload(buf.get_mut(hl..)?, kind, tid, size)?;
    channel_data::write_header(buf, channel, len, false).ok()?;
    Some(hl + len)
}

/// Echo what the UDP peer received back to the relayed address.
fn peer_echo(
    l: &mut Lane,
    recv: &mut RecvBatch,
    echo: &mut Out,
    plan: &Plan,
    now_ns: impl Fn() -> u64,
    stats: &mut Stats,
) -> io::Result<bool> {
    let Some(p) = &l.peer else { return Ok(true) };
    for _ in 0..RECV_ROUNDS {
        let n = match recv.recv(p) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                stats.refused += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let counted = plan.in_window(now_ns());
        for d in recv.iter() {
            if d.data.len() < MIN_PAYLOAD || d.data[0] != PING {
                stats.unexpected += 1;
                continue;
            }
            stats.peer_received += u64::from(counted);
            let write = |buf: &mut [u8]| {
                let Some(out) = buf.get_mut(..d.data.len()) else {
                    return 0;
                };
                out.copy_from_slice(d.data);
                out[0] = PONG;
                d.data.len()
            };
            if echo.push_with(l.alloc.relayed, write) == Err(Full::Flush) {
                flush_echo(echo, p, stats)?;
                let _ = echo.push_with(l.alloc.relayed, write);
            }
        }
        flush_echo(echo, p, stats)?;
        if n < recv.slots() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn flush_echo(echo: &mut Out, sock: &UdpSocket, stats: &mut Stats) -> io::Result<()> {
    if echo.is_empty() {
        return Ok(());
    }
    let st = echo.flush(sock)?;
    stats.echo_failed += (st.failed + st.pending) as u64;
    Ok(())
}

/// Datagrams from the relay on lane `i`'s allocation socket: answers to its
/// probes, probes of its partner to echo (relay mode), and control
/// responses for its client.
#[allow(clippy::too_many_arguments)]
fn on_allocation_socket(
    i: usize,
    lanes: &mut [Lane],
    recv: &mut RecvBatch,
    echo: &mut Out,
    salt: [u8; 4],
    plan: &Plan,
    now_ns: impl Fn() -> u64,
    stats: &mut Stats,
) -> io::Result<bool> {
    let l = &mut lanes[i];
    for _ in 0..RECV_ROUNDS {
        let n = match recv.recv(&l.alloc.sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                stats.refused += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = now_ns();
        let counted = plan.in_window(now);
        for d in recv.iter() {
            // RFC 8656 §12: ChannelData starts with 0b01; STUN with 0b00.
            if d.data.first().is_some_and(|b| b >> 6 == 0) {
                l.alloc.client.handle_input(d.data, Instant::now());
                continue;
            }
            let Ok(cd) = channel_data::decode(d.data) else {
                stats.unexpected += 1;
                continue;
            };
            let Some((kind, tid)) = read_payload(cd.data).filter(|_| cd.channel == l.alloc.channel)
            else {
                stats.unexpected += 1;
                continue;
            };
            match kind {
                PING => {
                    // The partner's probe: answer through our own channel.
                    stats.peer_received += u64::from(counted);
                    let ch = l.alloc.channel;
                    let size = cd.data.len();
                    let write =
                        |buf: &mut [u8]| encode_probe(buf, ch, PONG, &tid, size).unwrap_or(0);
                    if echo.push_with(plan.server, write) == Err(Full::Flush) {
                        flush_echo(echo, &l.alloc.sock, stats)?;
                        let _ = echo.push_with(plan.server, write);
                    }
                }
                PONG => {
                    let Some((fi, si, generation)) = parse_transaction_id(&tid, salt) else {
                        stats.unexpected += 1;
                        continue;
                    };
                    if fi as usize != i {
                        stats.unexpected += 1;
                        continue;
                    }
                    match l.window.complete(si, generation) {
                        Answer::Matched { sent_at } => {
                            if counted {
                                stats.received += 1;
                                stats.latency.record(now.saturating_sub(sent_at));
                            }
                        }
                        Answer::Late => stats.late += 1,
                        Answer::Unknown => stats.unexpected += 1,
                    }
                }
                _ => stats.unexpected += 1,
            }
        }
        flush_echo(echo, &l.alloc.sock, stats)?;
        if n < recv.slots() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Spread `n` lanes over `threads` workers, keeping relay-mode pairs
/// (2k, 2k+1) together: returns each worker's lane indices.
pub fn split(n: usize, threads: usize, pairs: bool) -> Vec<Vec<usize>> {
    let threads = threads.max(1);
    let unit = if pairs { 2 } else { 1 };
    let units = n / unit;
    let mut out = vec![Vec::new(); threads.min(units.max(1))];
    let k = out.len();
    for u in 0..units {
        for j in 0..unit {
            out[u % k].push(u * unit + j);
        }
    }
    out.retain(|v| !v.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let tid = transaction_id([9, 8, 7, 6], 3, 4, 5);
        let mut buf = [0u8; 200];
        assert_eq!(write_payload(&mut buf, PING, &tid, 100), Some(100));
        assert_eq!(read_payload(&buf[..100]), Some((PING, tid)));
        // Below the minimum, the payload is the minimum.
        assert_eq!(write_payload(&mut buf, PING, &tid, 3), Some(MIN_PAYLOAD));
        assert_eq!(write_payload(&mut buf[..10], PING, &tid, 3), None);
        assert_eq!(read_payload(&buf[..15]), None);
        let n = encode_probe(&mut buf, 0x4001, PONG, &tid, 40).unwrap();
        assert_eq!(n, 44);
        let cd = channel_data::decode(&buf[..n]).unwrap();
        assert_eq!(cd.channel, 0x4001);
        assert_eq!(read_payload(cd.data), Some((PONG, tid)));
    }

    #[test]
    fn split_keeps_pairs_together() {
        assert_eq!(split(5, 2, false), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(split(6, 2, true), vec![vec![0, 1, 4, 5], vec![2, 3]]);
        assert_eq!(split(2, 4, true), vec![vec![0, 1]]);
        assert_eq!(split(1, 4, false), vec![vec![0]]);
    }
}
