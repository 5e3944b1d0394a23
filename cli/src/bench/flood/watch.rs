//! What `natkit bench flood` measures: an existing allocation's stream and
//! the peer that echoes it, Binding requests, new users, the relay's memory.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use natkit_proto::turn::client::{Client, Config, Event};

use super::{local_ip, socket, NewUsersReport, ProbeReport, NET_NEW_USERS, NET_PROBE};
use crate::bench::memory;

/// How long a Binding probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_millis(500);
/// How long a new user may take to allocate.
const NEW_USER_LIMIT: Duration = Duration::from_secs(5);

/// Wait up to `wait` for `sock` to be readable.
pub(super) fn wait_readable(sock: &impl AsRawFd, wait: Duration) {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Drive `client` on `sock` until `pick` accepts an event or `limit`.
pub(super) fn drive<T>(
    client: &mut Client,
    sock: &UdpSocket,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> Option<T> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        while let Some(t) = client.poll_transmit() {
            let _ = sock.send(&t.payload);
        }
        while let Some(e) = client.poll_event() {
            if let Some(v) = pick(&e) {
                return Some(v);
            }
        }
        if now >= end {
            return None;
        }
        wait_readable(sock, Duration::from_millis(5));
        while let Ok(n) = sock.recv(&mut buf) {
            client.handle_input(&buf[..n], Instant::now());
        }
    }
}

/// A client of the relay on its own connected socket.
pub(super) fn client_socket(server: SocketAddr, ip: IpAddr) -> anyhow::Result<UdpSocket> {
    let s = socket(ip, 1 << 20)?;
    s.connect(server)
        .with_context(|| format!("cannot connect a UDP socket to {server}"))?;
    Ok(s)
}

/// Allocate (401, then the authenticated Allocate): how long it took, or
/// why it did not.
pub(super) fn allocate(
    client: &mut Client,
    sock: &UdpSocket,
    limit: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    match drive(client, sock, limit, |e| match e {
        Event::Allocated { .. } => Some(Ok(())),
        Event::Failed(err) => Some(Err(err.to_string())),
        _ => None,
    }) {
        Some(Ok(())) => Ok(t0.elapsed()),
        Some(Err(e)) => Err(e),
        None => Err(format!("no allocation within {limit:?}")),
    }
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

/// The stream's sequence numbers at the phase boundaries.
pub(super) struct Phases {
    /// 0: warm-up (baseline), 1: floods, 2: draining, 3: stop.
    pub(super) phase: AtomicU64,
    pub(super) flood_from: AtomicU64,
    pub(super) flood_until: AtomicU64,
}

/// The existing allocation: send `rate` packets per second through its
/// channel, count those that come back, keep it refreshed.
pub(super) fn victim(
    mut client: Client,
    sock: UdpSocket,
    peer: SocketAddr,
    rate: u64,
    size: usize,
    phases: &Phases,
) -> (u64, Seen) {
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let mut payload = vec![0u8; size];
    payload[0] = STREAM;
    let mut out = vec![0u8; size + 64];
    let mut buf = [0u8; 2048];
    let mut back = Seen::default();
    let mut seq = 0u64;
    let mut phase = 0;
    let start = Instant::now();
    let mut next = start;
    loop {
        let p = phases.phase.load(Ordering::Acquire);
        if p != phase {
            match p {
                1 => phases.flood_from.store(seq, Ordering::Release),
                2 => phases.flood_until.store(seq, Ordering::Release),
                _ => {}
            }
            phase = p;
        }
        if phase >= 3 {
            return (seq, back);
        }
        let now = Instant::now();
        // The stream stops with the floods; what is in flight drains.
        while phase < 2 && next <= now {
            payload[1..9].copy_from_slice(&seq.to_be_bytes());
            if let Ok(n) = client.send_to(peer, &payload, &mut out) {
                let _ = sock.send(&out[..n]);
            }
            seq += 1;
            next += gap;
        }
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_timeout(now);
        }
        while let Some(t) = client.poll_transmit() {
            let _ = sock.send(&t.payload);
        }
        while let Ok(n) = sock.recv(&mut buf) {
            client.handle_input(&buf[..n], Instant::now());
        }
        while let Some(e) = client.poll_event() {
            if let Event::Data { data, .. } = e {
                if let Some(s) = seq_of(&data) {
                    back.mark(s);
                }
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        wait_readable(&sock, wait.min(Duration::from_millis(2)));
    }
}

/// The peer: echo every stream packet from the relayed address.
pub(super) fn peer(sock: UdpSocket, relayed: SocketAddr, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        wait_readable(&sock, Duration::from_millis(20));
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == relayed {
                if let Some(s) = seq_of(&buf[..n]) {
                    seen.mark(s);
                }
                let _ = sock.send_to(&buf[..n], relayed);
            }
        }
    }
    seen
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
pub(super) fn probes(server: SocketAddr, stop: &AtomicBool) -> anyhow::Result<ProbeReport> {
    let sock = client_socket(server, local_ip(server, NET_PROBE, 0))?;
    let mut times = Vec::new();
    let mut sent = 0u64;
    let mut buf = [0u8; 512];
    let mut req = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let tid = natkit_proto::transaction::new_transaction_id();
        let n = natkit_proto::binding::write_request(&mut req, &tid, &Default::default())?;
        let _ = sock.send(&req[..n]);
        sent += 1;
        let end = t0 + PROBE_WAIT;
        'wait: while Instant::now() < end {
            wait_readable(&sock, end.saturating_duration_since(Instant::now()));
            while let Ok(n) = sock.recv(&mut buf) {
                if natkit_proto::binding::parse_response(&buf[..n])
                    .is_ok_and(|r| r.transaction_id == tid)
                {
                    times.push(t0.elapsed());
                    break 'wait;
                }
            }
        }
        if let Some(d) = (t0 + Duration::from_millis(100)).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
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
pub(super) fn new_users(
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
        let sock = client_socket(server, local_ip(server, NET_NEW_USERS, i))?;
        i += 1;
        let mut c = Client::new(config.clone(), Instant::now());
        r.tried += 1;
        match allocate(&mut c, &sock, NEW_USER_LIMIT) {
            Ok(d) => {
                times.push(d);
                r.allocated += 1;
                c.close(Instant::now());
                drive(&mut c, &sock, Duration::from_secs(1), |e| {
                    matches!(e, Event::Closed).then_some(())
                });
            }
            Err(e) => {
                r.failure.get_or_insert(e);
            }
        }
        if let Some(d) = (t0 + every).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
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
