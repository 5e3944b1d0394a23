//! `natkit bench turn`: relayed packets per second, loss and round-trip
//! latency of a TURN relay, and its allocation rate.
//!
//! Setup (allocations, then one channel per allocation) runs natkit-ice's
//! `TurnConnection`s, many allocations in flight at once from one thread
//! (see `turn_setup`); its pace is reported as the allocation rate. The
//! measured phase is the batched path of `turn_load`: ChannelData out with
//! sendmmsg, echoes back with recvmmsg/sendmmsg. At the end the allocations
//! are deleted (Refresh with LIFETIME 0), so runs can follow each other
//! without filling the relay's quotas. `--hold` keeps the allocations idle
//! instead of loading them, and `--server-pid` samples the relay's memory
//! before and after setup: the per-allocation memory figure.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::turn::client::{Config, Transport};
use serde::Serialize;

use super::histogram::Latency;
use super::memory::{self, MemorySample, PerItem};
use super::turn_load::{self, Lane, Plan, Stats, MIN_PAYLOAD};
use super::turn_setup::{self, Allocation};
use super::{check_target, parse_duration, parse_run_duration, process_cpu_time, resolve};

/// Most allocations one run makes.
const MAX_ALLOCATIONS: usize = 50_000;

/// Who echoes the probes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMode {
    /// A plain UDP socket per allocation, on the generator's machine.
    Udp,
    /// Another allocation on the same relay (relay to relay): allocations
    /// are paired and each echoes its partner's probes through its channel.
    Relay,
}

/// Arguments of `natkit bench turn`.
#[derive(clap::Args, Debug)]
pub struct TurnArgs {
    /// TURN server to load, HOST[:PORT] (port 3478 by default), over UDP.
    /// Only loopback addresses unless --allow-remote is given.
    pub server: String,
    /// Username (static user, or the user part of REST credentials with --secret).
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// Password of a static user.
    #[arg(long, env = "NATKIT_TURN_PASSWORD", hide_env_values = true,
          conflicts_with_all = ["secret", "secret_file"],
          required_unless_present_any = ["secret", "secret_file", "password_file"])]
    pub password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<std::path::PathBuf>,
    /// Shared secret for REST credentials (coturn's use-auth-secret).
    #[arg(long, env = "NATKIT_TURN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Read the shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Allocations (each on its own UDP socket, with one channel to its peer).
    #[arg(long, default_value_t = 8)]
    pub allocations: usize,
    /// Who echoes: a UDP socket per allocation, or another allocation.
    #[arg(long, value_enum, default_value = "udp")]
    pub peer_mode: PeerMode,
    /// How long to measure, after the warm-up (e.g. 10s, 500ms; at most 600s).
    #[arg(long, default_value = "10s", value_parser = parse_run_duration)]
    pub duration: Duration,
    /// Load applied before measuring, excluded from every figure.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Probes per second per allocation; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Payload bytes per probe (at least 16: kind and identifier).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Probes in flight per allocation.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Send probes and echoes as UDP GSO segment trains (one sendmsg per
    /// train, Linux 4.18+) instead of sendmmsg batches: less of the
    /// machine's CPU for the generator. The relay still receives separate
    /// datagrams.
    #[arg(long)]
    pub gso: bool,
    /// Worker threads of the measured phase.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A probe unanswered for this long is counted lost and replaced.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Allocations (then channel bindings) in progress at once during setup.
    #[arg(long, default_value_t = 64)]
    pub setup_window: usize,
    /// Give up when setup takes longer than this.
    #[arg(long, default_value = "120s", value_parser = parse_run_duration)]
    pub setup_timeout: Duration,
    /// Hold the allocations idle this long instead of loading them (no data
    /// phase): with --server-pid, the memory figure of many allocations.
    #[arg(long, value_parser = parse_run_duration)]
    pub hold: Option<Duration>,
    /// PID of the relay (on this machine): its memory is sampled before and
    /// after setup and reported per allocation.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow a target outside loopback. Load only servers you run.
    #[arg(long)]
    pub allow_remote: bool,
}

fn validate(a: &TurnArgs) -> anyhow::Result<()> {
    if !(1..=MAX_ALLOCATIONS).contains(&a.allocations) {
        bail!("--allocations must be between 1 and {MAX_ALLOCATIONS}");
    }
    if a.peer_mode == PeerMode::Relay && a.allocations % 2 != 0 {
        bail!("--peer-mode relay pairs allocations: --allocations must be even");
    }
    if !(1..=64).contains(&a.threads) {
        bail!("--threads must be between 1 and 64");
    }
    if !(1..=4096).contains(&a.window) {
        bail!("--window must be between 1 and 4096");
    }
    if !(MIN_PAYLOAD..=1200).contains(&a.size) {
        bail!("--size must be between {MIN_PAYLOAD} and 1200 bytes");
    }
    if a.rate > 1_000_000 {
        bail!("--rate is at most 1000000 per allocation");
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
    if !(1..=10_000).contains(&a.setup_window) {
        bail!("--setup-window must be between 1 and 10000");
    }
    Ok(())
}

/// Raise the soft open-file limit to the hard one: each allocation needs a
/// socket (two with a UDP peer).
fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return r.rlim_max;
        }
    }
    r.rlim_cur
}

/// Run `natkit bench turn`.
pub fn run(a: TurnArgs) -> anyhow::Result<()> {
    validate(&a)?;
    let server = resolve(&a.server, 3478)?;
    check_target(server, a.allow_remote)?;
    // A socket per allocation, and one per UDP peer.
    let per_allocation = if a.peer_mode == PeerMode::Udp { 2 } else { 1 };
    let need = a.allocations * per_allocation + 64;
    let limit = raise_nofile_limit();
    if limit < need as u64 {
        bail!(
            "{} allocations need about {need} open files but the limit is {limit}: \
             run `ulimit -n {}` first",
            a.allocations,
            need.next_power_of_two()
        );
    }
    let credentials = super::credentials(
        &a.user,
        (a.password.as_deref(), a.password_file.as_deref()),
        (a.secret.as_deref(), a.secret_file.as_deref()),
    )?;
    let config = Config::new(server, Transport::Udp, credentials);

    let mem_before = a.server_pid.map(memory::sample).transpose()?;

    // Setup and teardown: one thread drives all the allocations' control
    // traffic, as a relay's clients would from many machines.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (lanes, setup) = rt.block_on(setup(&a, server, config))?;
    if let Some(h) = a.hold {
        std::thread::sleep(h);
    }
    let mem_after = a.server_pid.map(memory::sample).transpose()?;
    let memory = match (a.server_pid, mem_before, mem_after) {
        (Some(pid), Some(before), Some(after)) => Some(MemoryReport {
            pid,
            before,
            after,
            per_allocation: memory::per_item(&before, &after, a.allocations),
        }),
        _ => None,
    };

    let (lanes, measured) = match a.hold {
        None => {
            let (lanes, r) = load(&a, server, lanes);
            (lanes, Some(r))
        }
        Some(_) => (lanes, None),
    };
    // Also after a failed measurement: the relay's quotas are freed.
    let closed_in = rt.block_on(teardown(&a, lanes));
    let (load, cpu) = match measured.transpose()? {
        Some((stats, cpu)) => (Some(stats), cpu),
        None => (None, Duration::ZERO),
    };
    let closed_in = closed_in?;

    let report = Report::new(&a, server, setup, memory, load.as_ref(), cpu, closed_in);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.human());
    }
    if let Some(s) = &load {
        if s.received == 0 {
            bail!("no probe came back through the relay at {server} during the measurement");
        }
    }
    Ok(())
}

/// Open a socket per allocation, allocate, bind one channel per allocation
/// to its peer, and make the load lanes.
async fn setup(
    a: &TurnArgs,
    server: SocketAddr,
    config: Config,
) -> anyhow::Result<(Vec<Lane>, SetupReport)> {
    // Setup: one socket per allocation, allocate, then bind channels.
    let mut socks = Vec::with_capacity(a.allocations);
    for i in 0..a.allocations {
        let s = turn_setup::open_socket(turn_setup::client_ip(server, i))?;
        s.connect(server)
            .with_context(|| format!("cannot connect a UDP socket to {server}"))?;
        socks.push(s);
    }
    let deadline = Instant::now() + a.setup_timeout;
    let (mut conns, alloc_time) =
        turn_setup::allocate(socks, &config, a.setup_window, deadline).await?;
    let relayed: Vec<SocketAddr> = conns
        .iter_mut()
        .map(|c| {
            c.client()
                .relayed_addresses()
                .first()
                .copied()
                .context("an allocation without a relayed address")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut peer_socks: Vec<Option<std::net::UdpSocket>> = Vec::new();
    let peers: Vec<SocketAddr> = match a.peer_mode {
        PeerMode::Udp => {
            for (i, r) in relayed.iter().enumerate() {
                // The peer sits on the relayed address's side; a distinct
                // loopback address per peer spreads the relay's flows.
                let ip = if super::is_loopback(r.ip()) {
                    turn_setup::client_ip(server, a.allocations + i)
                } else {
                    turn_setup::client_ip(server, i)
                };
                let p = turn_setup::open_socket(ip)?;
                p.connect(r)
                    .with_context(|| format!("cannot connect a peer socket to {r}"))?;
                peer_socks.push(Some(p));
            }
            peer_socks
                .iter()
                .map(|p| p.as_ref().and_then(|p| p.local_addr().ok()))
                .collect::<Option<Vec<_>>>()
                .context("peer socket address")?
        }
        // Pairs (2k, 2k+1): each one's peer is the other's relayed address.
        PeerMode::Relay => (0..a.allocations).map(|i| relayed[i ^ 1]).collect(),
    };
    let (conns, chan_time) =
        turn_setup::bind_channels(conns, &peers, a.setup_window, deadline).await?;
    let setup = SetupReport {
        allocate_s: secs3(alloc_time),
        allocations_per_sec: (a.allocations as f64 / alloc_time.as_secs_f64()).round(),
        channels_s: secs3(chan_time),
        channels_per_sec: (a.allocations as f64 / chan_time.as_secs_f64()).round(),
    };
    let mut lanes: Vec<Lane> = Vec::with_capacity(a.allocations);
    for (i, c) in conns.into_iter().enumerate() {
        // The load generator takes the data path (and the refreshes) over.
        let (client, sock) = (*c).into_udp_parts().context("a UDP allocation")?;
        let channel = client
            .channel_for(peers[i])
            .context("no channel after ChannelBind")?;
        let alloc = Allocation {
            client,
            sock,
            relayed: relayed[i],
            channel,
        };
        let peer = peer_socks.get_mut(i).and_then(Option::take);
        lanes.push(Lane::new(alloc, peer, a.window));
    }
    Ok((lanes, setup))
}

/// The measured phase: the lanes spread over the worker threads. Returns
/// the lanes, whatever happened (the teardown deletes their allocations
/// also after a failure), and the merged counters and the CPU the
/// generator used.
fn load(
    a: &TurnArgs,
    server: SocketAddr,
    lanes: Vec<Lane>,
) -> (Vec<Lane>, anyhow::Result<(Stats, Duration)>) {
    let plan = Plan {
        server,
        measure_from: a.warmup.as_nanos() as u64,
        measure_until: (a.warmup + a.duration).as_nanos() as u64,
        timeout: a.timeout.as_nanos() as u64,
        size: a.size,
        // 0 = unpaced.
        interval: 1_000_000_000u64.checked_div(a.rate).unwrap_or(0),
        gso: a.gso,
    };
    let groups = turn_load::split(a.allocations, a.threads, a.peer_mode == PeerMode::Relay);
    let mut per_thread: Vec<Vec<Lane>> =
        groups.iter().map(|g| Vec::with_capacity(g.len())).collect();
    let mut owner = vec![0usize; a.allocations];
    for (t, g) in groups.iter().enumerate() {
        for &i in g {
            owner[i] = t;
        }
    }
    for (i, l) in lanes.into_iter().enumerate() {
        per_thread[owner[i]].push(l);
    }
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let results: Vec<io::Result<Stats>> = std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter_mut()
            .map(|lanes| {
                let plan = &plan;
                s.spawn(move || turn_load::worker(lanes, plan, start))
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
    let lanes = per_thread.into_iter().flatten().collect();
    let mut total = Stats::default();
    for r in results {
        match r {
            Ok(s) => total.merge(&s),
            Err(e) => return (lanes, Err(e).context("load generator worker failed")),
        }
    }
    (lanes, Ok((total, cpu)))
}

/// Delete the allocations so the relay's quotas are free for the next run
/// (best effort, bounded); returns how long it took.
async fn teardown(a: &TurnArgs, lanes: Vec<Lane>) -> anyhow::Result<Duration> {
    let allocations = lanes.into_iter().map(|l| l.alloc).collect();
    turn_setup::close(
        allocations,
        a.setup_window,
        Instant::now() + Duration::from_secs(10),
    )
    .await
}

fn secs3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Setup figures.
#[derive(Serialize)]
struct SetupReport {
    /// Wall time to allocate them all (401 round trip included).
    allocate_s: f64,
    /// Allocations per second during setup.
    allocations_per_sec: f64,
    /// Wall time to bind one channel per allocation.
    channels_s: f64,
    /// ChannelBind transactions per second.
    channels_per_sec: f64,
}

/// The relay's memory before and after setup.
#[derive(Serialize)]
struct MemoryReport {
    pid: u32,
    before: MemorySample,
    after: MemorySample,
    per_allocation: PerItem,
}

/// Figures of the measured phase.
#[derive(Serialize)]
struct LoadReport {
    /// Packets the relay forwarded per second: probes to the peers plus
    /// echoes back to the clients.
    relayed_packets_per_sec: f64,
    /// Completed round trips per second (each is two relayed packets).
    round_trips_per_sec: f64,
    /// Probes sent in the window.
    sent: u64,
    /// Probes that reached the peer through the relay (one way).
    peer_received: u64,
    /// Echoes back at the sender (round trips).
    received: u64,
    lost: u64,
    loss_ratio: f64,
    late: u64,
    unexpected: u64,
    refused: u64,
    send_failed: u64,
    echo_failed: u64,
    control_failed: u64,
    latency_us: Option<Latency>,
    /// CPU the generator itself used, in cores, over the whole load phase.
    client_cpu_cores: f64,
}

/// What `natkit bench turn` prints.
#[derive(Serialize)]
struct Report {
    server: SocketAddr,
    peer_mode: PeerMode,
    allocations: usize,
    threads: usize,
    window: usize,
    rate_per_allocation: u64,
    size: usize,
    warmup_s: f64,
    duration_s: f64,
    timeout_ms: f64,
    hold_s: Option<f64>,
    setup: SetupReport,
    server_memory: Option<MemoryReport>,
    load: Option<LoadReport>,
    teardown_s: f64,
}

impl Report {
    fn new(
        a: &TurnArgs,
        server: SocketAddr,
        setup: SetupReport,
        memory: Option<MemoryReport>,
        s: Option<&Stats>,
        cpu: Duration,
        teardown: Duration,
    ) -> Report {
        let secs = a.duration.as_secs_f64();
        let load = s.map(|s| {
            let wall = (a.warmup + a.duration + a.timeout).as_secs_f64();
            LoadReport {
                relayed_packets_per_sec: ((s.peer_received + s.received) as f64 / secs).round(),
                round_trips_per_sec: (s.received as f64 / secs).round(),
                sent: s.sent,
                peer_received: s.peer_received,
                received: s.received,
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
                echo_failed: s.echo_failed,
                control_failed: s.control_failed,
                latency_us: Latency::from_nanos(&s.latency),
                client_cpu_cores: (cpu.as_secs_f64() / wall * 100.0).round() / 100.0,
            }
        });
        Report {
            server,
            peer_mode: a.peer_mode,
            allocations: a.allocations,
            threads: a.threads,
            window: a.window,
            rate_per_allocation: a.rate,
            size: a.size,
            warmup_s: a.warmup.as_secs_f64(),
            duration_s: secs,
            timeout_ms: a.timeout.as_secs_f64() * 1e3,
            hold_s: a.hold.map(|h| h.as_secs_f64()),
            setup,
            server_memory: memory,
            load,
            teardown_s: secs3(teardown),
        }
    }

    fn human(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "natkit bench turn {}: {} allocations, peers: {}",
            self.server,
            self.allocations,
            match self.peer_mode {
                PeerMode::Udp => "UDP sockets",
                PeerMode::Relay => "each other (relay to relay)",
            }
        );
        let _ = writeln!(
            o,
            "  setup        {:.0} allocations/s ({:.3} s), {:.0} channel binds/s ({:.3} s)",
            self.setup.allocations_per_sec,
            self.setup.allocate_s,
            self.setup.channels_per_sec,
            self.setup.channels_s
        );
        if let Some(m) = &self.server_memory {
            let _ = writeln!(
                o,
                "  relay memory (pid {}): RSS {} -> {} KiB, anonymous {} -> {} KiB; per allocation {:.0} B anonymous, {:.0} B RSS",
                m.pid,
                m.before.rss_kib,
                m.after.rss_kib,
                m.before.anonymous_kib,
                m.after.anonymous_kib,
                m.per_allocation.anonymous_bytes,
                m.per_allocation.rss_bytes
            );
        }
        if let Some(h) = self.hold_s {
            let _ = writeln!(o, "  held idle for {h:.1} s");
        }
        if let Some(l) = &self.load {
            let _ = writeln!(
                o,
                "  {:.1} s measured after {:.1} s warm-up; window {} per allocation, {} B payload, rate {}",
                self.duration_s,
                self.warmup_s,
                self.window,
                self.size,
                if self.rate_per_allocation == 0 {
                    "unpaced".to_string()
                } else {
                    format!("{}/s per allocation", self.rate_per_allocation)
                }
            );
            let _ = writeln!(o, "  relayed packets/s {:>10.0}", l.relayed_packets_per_sec);
            let _ = writeln!(o, "  round trips/s     {:>10.0}", l.round_trips_per_sec);
            let _ = writeln!(
                o,
                "  sent {}  reached peer {}  echoed back {}",
                l.sent, l.peer_received, l.received
            );
            let _ = writeln!(
                o,
                "  lost {} ({:.4} %, no echo within {} ms)",
                l.lost,
                l.loss_ratio * 100.0,
                self.timeout_ms
            );
            if l.late + l.unexpected + l.refused + l.send_failed + l.echo_failed + l.control_failed
                > 0
            {
                let _ = writeln!(
                    o,
                    "  late {}  unexpected {}  ICMP refused {}  send failures {}  echo failures {}  control failures {}",
                    l.late, l.unexpected, l.refused, l.send_failed, l.echo_failed, l.control_failed
                );
            }
            let _ = writeln!(
                o,
                "{}",
                Latency::line(&l.latency_us, "round trip", "no echoes")
            );
            let _ = writeln!(o, "  generator CPU {:>8.2} cores", l.client_cpu_cores);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: TurnArgs,
    }

    fn parse(args: &[&str]) -> Result<TurnArgs, String> {
        let mut v = vec!["natkit", "127.0.0.1:3478"];
        v.extend_from_slice(args);
        let a = Cli::try_parse_from(v).map_err(|e| e.to_string())?.a;
        validate(&a).map_err(|e| e.to_string())?;
        Ok(a)
    }

    #[test]
    fn arguments_are_checked() {
        let a = parse(&["--password", "p"]).unwrap();
        assert_eq!(a.allocations, 8);
        assert_eq!(a.peer_mode, PeerMode::Udp);
        assert_eq!(a.user, "bench");
        assert!(parse(&["--secret", "s", "--peer-mode", "relay"]).is_ok());
        // Credentials: exactly one of --password and --secret.
        assert!(parse(&[]).is_err());
        assert!(parse(&["--password", "p", "--secret", "s"]).is_err());
        let e = parse(&[
            "--password",
            "p",
            "--peer-mode",
            "relay",
            "--allocations",
            "3",
        ]);
        assert!(e.unwrap_err().contains("even"));
        assert!(parse(&["--password", "p", "--size", "15"]).is_err());
        assert!(parse(&["--password", "p", "--allocations", "0"]).is_err());
        assert!(parse(&["--password", "p", "--window", "0"]).is_err());
        assert!(parse(&["--password", "p", "--duration", "0s"]).is_err());
        assert!(parse(&["--password", "p", "--hold", "601s"]).is_err());
        let a = parse(&["--password", "p", "--hold", "2s", "--server-pid", "1"]).unwrap();
        assert_eq!(a.hold, Some(Duration::from_secs(2)));
    }

    #[test]
    fn refuses_remote_targets_without_the_flag() {
        let mut a = parse(&["--password", "p"]).unwrap();
        a.server = "192.0.2.1:3478".into();
        let e = run(a).unwrap_err().to_string();
        assert!(e.contains("--allow-remote"), "{e}");
    }
}
