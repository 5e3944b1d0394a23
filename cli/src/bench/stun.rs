//! `natkit bench stun`: Binding responses per second and latency percentiles.
//!
//! Each worker thread owns a few UDP sockets connected to the server (several
//! source ports, so a server with SO_REUSEPORT sockets sees several flows).
//! Every socket keeps a fixed window of requests in flight: a slot table
//! indexed by a counter embedded in the transaction ID holds each request's
//! send time, so a response is matched and timed without allocation or
//! hashing. Requests go out with sendmmsg and responses come back with
//! recvmmsg (natkit-runtime's `batch`). A request unanswered after the timeout
//! is counted lost and its slot is reused with a new transaction ID, so the
//! window never drains and a late answer is recognised as late.
//!
//! Figures cover only the measurement window that follows the warm-up.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::raw::{self, method, Class};
use natkit_runtime::batch::{udp_socket, RecvBatch, SendBatch, UdpSocketOptions};
use serde::Serialize;

use super::histogram::{Histogram, Latency};
use super::readiness::Readiness;
use super::window::{parse_transaction_id, transaction_id, Answer, Window};
use super::{check_target, parse_duration, parse_run_duration, process_cpu_time, resolve};

/// Datagrams per sendmmsg/recvmmsg call.
const BATCH: usize = 64;
/// Receive buffer per datagram: Binding responses are far smaller, but a
/// server may add SOFTWARE or other attributes.
const RECV_BUF: usize = 1500;
/// Room for a Binding request with FINGERPRINT (20 + 8 bytes).
const SEND_BUF: usize = 64;
/// Most receive calls per socket before moving on to the next one, so one
/// busy socket cannot starve the others (or the send side) of its thread.
const RECV_ROUNDS: usize = 4;
/// Longest wait for datagrams: the loop also wakes for timeouts and phase ends.
const MAX_WAIT_MS: u64 = 10;

/// Arguments of `natkit bench stun`.
#[derive(clap::Args, Debug)]
pub struct StunArgs {
    /// STUN server to load, HOST[:PORT] (port 3478 by default). Only loopback
    /// addresses unless --allow-remote is given.
    pub server: String,
    /// How long to measure, after the warm-up (e.g. 10s, 500ms; at most 600s).
    #[arg(long, default_value = "10s", value_parser = parse_run_duration)]
    pub duration: Duration,
    /// Load applied before measuring, excluded from every figure.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Requests in flight in total, spread over all sockets.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Connected UDP sockets per thread (distinct source ports).
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// A request unanswered for this long is counted lost and replaced.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Add FINGERPRINT to each request (the server then checks it and adds
    /// one to the answer).
    #[arg(long)]
    pub fingerprint: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow a target outside loopback. Load only servers you run.
    #[arg(long)]
    pub allow_remote: bool,
}

/// The shape of a run, shared by all workers.
#[derive(Debug, Clone, Copy)]
struct Plan {
    server: SocketAddr,
    /// Offsets from the common start, in nanoseconds.
    measure_from: u64,
    measure_until: u64,
    timeout: u64,
    fingerprint: bool,
}

impl Plan {
    fn in_window(&self, now: u64) -> bool {
        now >= self.measure_from && now < self.measure_until
    }
}

/// A connected socket and its window of requests.
struct Flow {
    sock: UdpSocket,
    window: Window,
}

/// Counters of one worker (then of the whole run, once merged).
#[derive(Default)]
struct Stats {
    /// Requests sent in the window.
    sent: u64,
    /// Success responses received in the window.
    received: u64,
    /// Error responses received in the window.
    errors: u64,
    /// Requests sent in the window and never answered within the timeout.
    lost: u64,
    /// Answers to requests already counted lost.
    late: u64,
    /// Datagrams that are not an answer to one of our requests.
    unexpected: u64,
    /// ICMP errors reported on the sockets (port unreachable: no server).
    refused: u64,
    /// Datagrams the kernel refused to send.
    send_failed: u64,
    latency: Histogram,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.received += o.received;
        self.errors += o.errors;
        self.lost += o.lost;
        self.late += o.late;
        self.unexpected += o.unexpected;
        self.refused += o.refused;
        self.send_failed += o.send_failed;
        self.latency.merge(&o.latency);
    }
}

/// Run `natkit bench stun`.
pub fn run(a: StunArgs) -> anyhow::Result<()> {
    let server = resolve(&a.server, 3478)?;
    check_target(server, a.allow_remote)?;
    if !(1..=64).contains(&a.threads) {
        bail!("--threads must be between 1 and 64");
    }
    if !(1..=64).contains(&a.sockets) {
        bail!("--sockets must be between 1 and 64");
    }
    let flows_total = a.threads * a.sockets;
    if a.concurrency < flows_total {
        bail!(
            "--concurrency {} is below one request per socket ({} threads x {} sockets)",
            a.concurrency,
            a.threads,
            a.sockets
        );
    }
    if a.concurrency > 1_000_000 || a.concurrency / flows_total >= u16::MAX as usize {
        bail!("--concurrency {} is too large", a.concurrency);
    }
    if a.timeout.is_zero() || a.timeout > Duration::from_secs(60) {
        bail!("--timeout must be above zero and at most 60s");
    }
    if a.warmup > super::MAX_DURATION {
        bail!(
            "--warmup is above the {}s limit",
            super::MAX_DURATION.as_secs()
        );
    }

    // Open every socket before starting the clock, so setup errors surface
    // as errors and not as a slow start.
    let mut per_thread: Vec<Vec<Flow>> = Vec::with_capacity(a.threads);
    for t in 0..a.threads {
        let mut flows = Vec::with_capacity(a.sockets);
        for s in 0..a.sockets {
            let i = t * a.sockets + s;
            // Spread the remainder so the windows add up to --concurrency.
            let window = a.concurrency / flows_total + usize::from(i < a.concurrency % flows_total);
            flows.push(open_flow(server, window)?);
        }
        per_thread.push(flows);
    }

    let plan = Plan {
        server,
        measure_from: a.warmup.as_nanos() as u64,
        measure_until: (a.warmup + a.duration).as_nanos() as u64,
        timeout: a.timeout.as_nanos() as u64,
        fingerprint: a.fingerprint,
    };
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let results: Vec<io::Result<Stats>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .map(|flows| {
                let plan = &plan;
                s.spawn(move || worker(flows, plan, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("worker thread panicked")))
            })
            .collect()
    });
    let cpu = process_cpu_time().saturating_sub(cpu_before);

    let mut total = Stats::default();
    for r in results {
        total.merge(&r.context("load generator worker failed")?);
    }
    let report = Report::new(&a, server, &total, cpu);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.human());
    }
    if total.received == 0 {
        let why = if total.refused > 0 {
            " (ICMP port unreachable: nothing listens there)"
        } else {
            ""
        };
        bail!("no Binding success responses from {server} during the measurement{why}");
    }
    Ok(())
}

fn open_flow(server: SocketAddr, window: usize) -> anyhow::Result<Flow> {
    let local = match (server.ip(), super::is_loopback(server.ip())) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let opts = UdpSocketOptions {
        nonblocking: true,
        ..UdpSocketOptions::default()
    };
    let sock = udp_socket(SocketAddr::new(local, 0), &opts)
        .with_context(|| format!("cannot open a UDP socket on {local}"))?;
    // Connected: the kernel drops datagrams from anyone but the server and
    // reports ICMP port unreachable as ECONNREFUSED.
    sock.connect(server)
        .with_context(|| format!("cannot connect a UDP socket to {server}"))?;
    Ok(Flow {
        sock,
        window: Window::new(window),
    })
}

fn worker(mut flows: Vec<Flow>, plan: &Plan, start: Instant) -> io::Result<Stats> {
    let salt: [u8; 4] = rand::random();
    let mut stats = Stats::default();
    let mut send = SendBatch::new(BATCH, SEND_BUF);
    let mut recv = RecvBatch::new(BATCH, RECV_BUF);
    // Slots of the batch being sent, to give back those the kernel did not take.
    let mut batch_slots = [0u16; BATCH];
    let mut readiness = Readiness::new()?;
    let mut ready = Vec::new();
    for (fi, f) in flows.iter().enumerate() {
        // SAFETY: the flows (and their sockets, never replaced) outlive
        // `readiness`, declared after them.
        unsafe { readiness.add(&f.sock, fi as u64)? };
    }
    let opts = RequestOptions {
        fingerprint: plan.fingerprint,
        ..RequestOptions::default()
    };
    // Scan for timed-out requests a few times per timeout.
    let scan_every = (plan.timeout / 4).max(1_000_000);
    let mut next_scan = scan_every;
    let drain_until = plan.measure_until + plan.timeout;
    let now_ns = || start.elapsed().as_nanos() as u64;

    loop {
        let now = now_ns();
        if now >= drain_until {
            break;
        }
        let sending = now < plan.measure_until;
        if !sending && flows.iter().all(|f| f.window.outstanding_counted() == 0) {
            break;
        }

        if sending {
            let counted = plan.in_window(now);
            for (fi, f) in flows.iter_mut().enumerate() {
                fill_window(
                    fi as u16,
                    f,
                    &mut send,
                    &mut batch_slots,
                    salt,
                    now,
                    counted,
                    plan,
                    &opts,
                    &mut stats,
                )?;
            }
        }

        // Wait until some socket has answers (leaving the CPU to the server
        // meanwhile), the next timeout scan or the end of a phase; then read
        // only the sockets that are ready, instead of spinning on empty ones.
        let mut wake = next_scan.min(drain_until);
        if sending {
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
        for &key in &ready {
            let fi = key as usize;
            let f = &mut flows[fi];
            for _ in 0..RECV_ROUNDS {
                match recv.recv(&f.sock) {
                    Ok(n) => {
                        let now = now_ns();
                        for d in recv.iter() {
                            on_datagram(d.data, fi as u16, f, salt, now, plan, &mut stats);
                        }
                        if n < recv.slots() {
                            readiness.drained(key);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        readiness.drained(key);
                        break;
                    }
                    // An ICMP error from an earlier request (EPOLLERR), reported once.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        stats.refused += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        let now = now_ns();
        if now >= next_scan {
            next_scan = now + scan_every;
            for f in flows.iter_mut() {
                stats.lost += f.window.expire(now, plan.timeout);
            }
        }
    }
    // Whatever is still unanswered has had its full timeout.
    for f in &flows {
        stats.lost += f.window.outstanding_counted();
    }
    Ok(stats)
}

/// Send requests on every idle slot of `f`'s window, in batches.
#[allow(clippy::too_many_arguments)]
fn fill_window(
    fi: u16,
    f: &mut Flow,
    send: &mut SendBatch,
    batch_slots: &mut [u16; BATCH],
    salt: [u8; 4],
    now: u64,
    counted: bool,
    plan: &Plan,
    opts: &RequestOptions,
    stats: &mut Stats,
) -> io::Result<()> {
    while f.window.has_free() {
        let mut n = 0;
        while n < BATCH {
            let Some((si, generation)) = f.window.take(now, counted) else {
                break;
            };
            let tid = transaction_id(salt, fi, si, generation);
            let pushed = send.push_with(plan.server, |buf| {
                binding::write_request(buf, &tid, opts).unwrap_or(0)
            });
            if pushed != Ok(true) {
                // Cannot happen with SEND_BUF sized for the request.
                f.window.untake(si);
                break;
            }
            batch_slots[n] = si;
            n += 1;
        }
        if n == 0 {
            break;
        }
        let st = send.flush(&f.sock)?;
        if st.failed > 0 {
            stats.send_failed += st.failed as u64;
            if st
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
            {
                stats.refused += 1;
            }
        }
        if counted {
            // Requests issued, refused ones included: each ends as answered
            // or lost.
            stats.sent += (n - st.pending) as u64;
        }
        // The socket buffer is full: take the unsent requests back (the
        // queue belongs to this socket only) and move on.
        if st.pending > 0 {
            for &si in &batch_slots[n - st.pending..n] {
                f.window.untake(si);
            }
            send.clear();
            break;
        }
    }
    Ok(())
}

/// Match one received datagram to its slot; only the header and the
/// transaction ID are looked at (the hot path of the generator).
fn on_datagram(
    data: &[u8],
    flow_index: u16,
    f: &mut Flow,
    salt: [u8; 4],
    now: u64,
    plan: &Plan,
    stats: &mut Stats,
) {
    let Ok(h) = raw::parse_datagram(data) else {
        stats.unexpected += 1;
        return;
    };
    let class = h.class();
    if h.method() != method::BINDING || !matches!(class, Class::Success | Class::Error) {
        stats.unexpected += 1;
        return;
    }
    let Some((fi, si, generation)) = parse_transaction_id(&h.transaction_id, salt) else {
        stats.unexpected += 1;
        return;
    };
    if fi != flow_index {
        stats.unexpected += 1;
        return;
    }
    let sent_at = match f.window.complete(si, generation) {
        Answer::Matched { sent_at } => sent_at,
        Answer::Late => {
            stats.late += 1;
            return;
        }
        Answer::Unknown => {
            stats.unexpected += 1;
            return;
        }
    };
    if !plan.in_window(now) {
        return;
    }
    if class == Class::Error {
        stats.errors += 1;
    } else {
        stats.received += 1;
        stats.latency.record(now.saturating_sub(sent_at));
    }
}

/// What `natkit bench stun` prints.
#[derive(Serialize)]
struct Report {
    server: SocketAddr,
    threads: usize,
    sockets_per_thread: usize,
    concurrency: usize,
    fingerprint: bool,
    warmup_s: f64,
    duration_s: f64,
    timeout_ms: f64,
    responses_per_sec: f64,
    sent: u64,
    received: u64,
    errors: u64,
    lost: u64,
    loss_ratio: f64,
    late: u64,
    unexpected: u64,
    refused: u64,
    send_failed: u64,
    latency_us: Option<Latency>,
    /// CPU the generator itself used, in cores (user + system time over the
    /// run, warm-up included): near the machine's core count means the
    /// generator, not the server, may be the limit.
    client_cpu_cores: f64,
}

impl Report {
    fn new(a: &StunArgs, server: SocketAddr, s: &Stats, cpu: Duration) -> Report {
        let secs = a.duration.as_secs_f64();
        let latency = Latency::from_nanos(&s.latency);
        let wall = (a.warmup + a.duration + a.timeout).as_secs_f64();
        Report {
            server,
            threads: a.threads,
            sockets_per_thread: a.sockets,
            concurrency: a.concurrency,
            fingerprint: a.fingerprint,
            warmup_s: a.warmup.as_secs_f64(),
            duration_s: secs,
            timeout_ms: a.timeout.as_secs_f64() * 1e3,
            responses_per_sec: (s.received as f64 / secs).round(),
            sent: s.sent,
            received: s.received,
            errors: s.errors,
            lost: s.lost,
            loss_ratio: if s.sent == 0 {
                0.0
            } else {
                s.lost as f64 / s.sent as f64
            },
            late: s.late,
            unexpected: s.unexpected,
            refused: s.refused,
            send_failed: s.send_failed,
            latency_us: latency,
            client_cpu_cores: (cpu.as_secs_f64() / wall * 100.0).round() / 100.0,
        }
    }

    fn human(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "natkit bench stun {}: {:.1} s measured after {:.1} s warm-up; {} threads x {} sockets, {} requests in flight{}",
            self.server,
            self.duration_s,
            self.warmup_s,
            self.threads,
            self.sockets_per_thread,
            self.concurrency,
            if self.fingerprint { ", with FINGERPRINT" } else { "" }
        );
        let _ = writeln!(o, "  responses/s  {:>12.0}", self.responses_per_sec);
        let _ = writeln!(o, "  sent         {:>12}", self.sent);
        let _ = writeln!(o, "  received     {:>12}", self.received);
        let _ = writeln!(
            o,
            "  lost         {:>12}  ({:.4} %, no answer within {} ms)",
            self.lost,
            self.loss_ratio * 100.0,
            self.timeout_ms
        );
        if self.errors > 0 {
            let _ = writeln!(o, "  error responses {:>9}", self.errors);
        }
        if self.late + self.unexpected > 0 {
            let _ = writeln!(
                o,
                "  late answers {:>12}, unexpected datagrams {}",
                self.late, self.unexpected
            );
        }
        if self.refused + self.send_failed > 0 {
            let _ = writeln!(
                o,
                "  ICMP refused {:>12}, send failures {}",
                self.refused, self.send_failed
            );
        }
        let _ = writeln!(
            o,
            "{}",
            Latency::line(&self.latency_us, "latency", "no responses")
        );
        let _ = writeln!(o, "  generator CPU {:>11.2} cores", self.client_cpu_cores);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny STUN responder on loopback, answering with the proto crate,
    /// dropping every `drop_every`-th request to exercise loss accounting.
    fn responder(
        drop_every: u64,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let mut out = [0u8; 128];
            let mut n_seen = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                n_seen += 1;
                if drop_every > 0 && n_seen % drop_every == 0 {
                    continue;
                }
                let Ok(req) = binding::parse_request(&buf[..n]) else {
                    continue;
                };
                let f = binding::SuccessFields {
                    mapped: from,
                    response_origin: None,
                    other_address: None,
                    fingerprint: req.fingerprint,
                    padding: None,
                };
                let m = binding::write_success(&mut out, &req.transaction_id, &f).unwrap();
                let _ = sock.send_to(&out[..m], from);
            }
        });
        addr
    }

    fn args(server: SocketAddr) -> StunArgs {
        StunArgs {
            server: server.to_string(),
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
            concurrency: 8,
            threads: 1,
            sockets: 2,
            timeout: Duration::from_millis(50),
            fingerprint: true,
            json: false,
            allow_remote: false,
        }
    }

    fn run_workers(a: &StunArgs, server: SocketAddr) -> Stats {
        let flows = vec![open_flow(server, 4).unwrap(), open_flow(server, 4).unwrap()];
        let plan = Plan {
            server,
            measure_from: a.warmup.as_nanos() as u64,
            measure_until: (a.warmup + a.duration).as_nanos() as u64,
            timeout: a.timeout.as_nanos() as u64,
            fingerprint: a.fingerprint,
        };
        worker(flows, &plan, Instant::now()).unwrap()
    }

    #[test]
    fn measures_a_real_responder() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = responder(0, stop.clone());
        // A timeout no scheduling hiccup on a busy test machine reaches, so
        // nothing may be counted lost.
        let a = StunArgs {
            timeout: Duration::from_secs(2),
            ..args(server)
        };
        let s = run_workers(&a, server);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(s.received > 100, "received {}", s.received);
        assert_eq!(s.lost, 0);
        assert_eq!(s.unexpected, 0);
        assert_eq!(s.latency.count(), s.received);
        // Sent and received in the window differ by at most one window: the
        // answers to the last warm-up requests arrive in it, those to the
        // last requests after it.
        assert!(
            s.sent.abs_diff(s.received) <= 8,
            "{} {}",
            s.sent,
            s.received
        );
        let r = Report::new(&a, server, &s, Duration::ZERO);
        assert!(r.responses_per_sec > 0.0);
        assert!(r.human().contains("responses/s"));
    }

    #[test]
    fn counts_dropped_requests_as_lost_and_keeps_the_window_full() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = responder(10, stop.clone());
        let a = args(server);
        let s = run_workers(&a, server);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(s.lost > 0, "nothing lost");
        // Lost slots were replaced: far more than one window was answered.
        assert!(s.received > 50, "received {}", s.received);
        assert!(
            s.lost + s.received <= s.sent + 8,
            "{} {} {}",
            s.lost,
            s.received,
            s.sent
        );
    }

    #[test]
    fn no_server_is_reported_as_refused() {
        // Bind then drop to get a loopback port with nobody behind it.
        let server = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let a = StunArgs {
            duration: Duration::from_millis(150),
            warmup: Duration::ZERO,
            ..args(server)
        };
        let s = run_workers(&a, server);
        assert_eq!(s.received, 0);
        assert!(s.refused > 0);
        assert_eq!(s.lost, s.sent);
    }

    #[test]
    fn refuses_remote_targets_without_the_flag() {
        let a = StunArgs {
            server: "192.0.2.1:3478".into(),
            ..args("127.0.0.1:9".parse().unwrap())
        };
        let e = run(a).unwrap_err().to_string();
        assert!(e.contains("--allow-remote"), "{e}");
    }
}
