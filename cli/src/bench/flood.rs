//! `natkit bench flood`: a TURN relay under unauthenticated floods, measured
//! from the side of the clients it should keep serving (issue 15).
//!
//! While a UDP flood (unauthenticated Allocate and Refresh requests from
//! many source addresses, sendmmsg batches, unpaced) and a TCP flood
//! (connections pipelining CreatePermission requests with a nonce from a
//! 401, a username and a wrong MESSAGE-INTEGRITY, as fast as the relay
//! takes them) run at the most this generator can send, it measures:
//!
//! - an existing allocation's steady stream (ChannelData to a peer that
//!   echoes it back): the loss each way;
//! - Binding requests to the relay's UDP listener: how many are answered
//!   within 500 ms, and how fast;
//! - new users on other addresses: how many allocate, and how fast;
//! - with `--server-pid`, the relay's resident memory.
//!
//! The same figures before the floods (`--warmup`) are the baseline.
//! `--ceiling` floods a local socket that never reads instead: the rate the
//! generator itself can send, to show it is not what a run measures.

mod attack;
mod watch;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::turn::client::{Config, Transport};
use natkit_runtime::batch::{udp_socket, UdpSocketOptions};
use serde::Serialize;

use super::memory;
use super::{check_target, parse_duration, parse_run_duration, process_cpu_time, resolve};
use attack::{tcp_flood, udp_flood};
use watch::{existing_allocation, new_users, peer, probes, rss_max, victim, Phase};

/// Arguments of `natkit bench flood`.
#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    /// TURN server under test, HOST[:PORT] (port 3478 by default). Only
    /// loopback addresses unless --allow-remote is given. It must relay to
    /// loopback peers (natkit-turn: --allow-peer 127.0.0.0/8; coturn:
    /// --allow-loopback-peers).
    #[arg(required_unless_present = "ceiling")]
    pub server: Option<String>,
    /// Username of the existing allocation and the new users (static user,
    /// or the user part of REST credentials with --secret).
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// Password of a static user.
    #[arg(long, env = "NATKIT_TURN_PASSWORD", hide_env_values = true,
          conflicts_with_all = ["secret", "secret_file"])]
    pub password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<std::path::PathBuf>,
    /// Shared secret for REST credentials.
    #[arg(long, env = "NATKIT_TURN_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Read the shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// How long the floods run (e.g. 10s; at most 600s).
    #[arg(long, default_value = "10s", value_parser = parse_run_duration)]
    pub duration: Duration,
    /// The same measurements without the floods first: the baseline.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Packets per second of the existing allocation's stream.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Payload bytes of the stream's packets (at least 16).
    #[arg(long, default_value_t = 160)]
    pub size: usize,
    /// Source addresses of the UDP flood (one socket each); 0: no UDP flood.
    #[arg(long, default_value_t = 256)]
    pub udp_sources: usize,
    /// Connections of the TCP flood; 0: no TCP flood.
    #[arg(long, default_value_t = 8)]
    pub tcp_connections: usize,
    /// A new user allocates this often during the run.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub new_user_every: Duration,
    /// PID of the relay (on this machine): its memory is sampled.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// No server: flood a local UDP socket that never reads, for the
    /// generator's own ceiling.
    #[arg(long)]
    pub ceiling: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Allow a target outside loopback. Load only servers you run.
    #[arg(long)]
    pub allow_remote: bool,
}

fn validate(a: &FloodArgs) -> anyhow::Result<()> {
    if !(1..=100_000).contains(&a.rate) {
        bail!("--rate must be between 1 and 100000 packets per second");
    }
    if !(16..=1200).contains(&a.size) {
        bail!("--size must be between 16 and 1200 bytes");
    }
    if a.udp_sources > 60_000 {
        bail!("--udp-sources is at most 60000");
    }
    if a.tcp_connections > 1000 {
        bail!("--tcp-connections is at most 1000");
    }
    if a.new_user_every < Duration::from_millis(10) {
        bail!("--new-user-every must be at least 10ms");
    }
    if a.warmup > super::MAX_DURATION {
        bail!(
            "--warmup is above the {}s limit",
            super::MAX_DURATION.as_secs()
        );
    }
    if !a.ceiling
        && a.password.is_none()
        && a.secret.is_none()
        && a.password_file.is_none()
        && a.secret_file.is_none()
    {
        bail!("give --password (static user) or --secret (REST credentials)");
    }
    Ok(())
}

/// A loopback address of the generator: 127.`net`.`i`-th host, so each role
/// (and each flood source) comes from addresses of its own. For a remote
/// server: any address.
pub(super) fn local_ip(server: SocketAddr, net: u8, i: usize) -> IpAddr {
    if super::is_loopback(server.ip()) && server.is_ipv4() {
        let i = i % (250 * 250);
        IpAddr::V4(Ipv4Addr::new(
            127,
            net,
            (i / 250) as u8,
            1 + (i % 250) as u8,
        ))
    } else if server.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    }
}

/// Address blocks (second octet of 127.x.y.z) of each role.
pub(super) const NET_VICTIM: u8 = 90;
pub(super) const NET_NEW_USERS: u8 = 91;
pub(super) const NET_PROBE: u8 = 92;
pub(super) const NET_UDP_FLOOD: u8 = 93;
pub(super) const NET_TCP_FLOOD: u8 = 94;

pub(super) fn socket(ip: IpAddr, buffer: usize) -> anyhow::Result<UdpSocket> {
    let opts = UdpSocketOptions {
        nonblocking: true,
        recv_buffer: Some(buffer),
        send_buffer: Some(buffer),
        ..UdpSocketOptions::default()
    };
    udp_socket(SocketAddr::new(ip, 0), &opts)
        .with_context(|| format!("cannot open a UDP socket on {ip}"))
}

/// A one-thread tokio runtime, for one of the generator's threads.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Run `task` on a thread of its own, on a one-thread tokio runtime.
fn spawn_async<T, F>(task: impl FnOnce() -> F + Send + 'static) -> JoinHandle<anyhow::Result<T>>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>>,
{
    std::thread::spawn(move || runtime()?.block_on(task()))
}

/// Binding requests to the relay's UDP listener.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProbeReport {
    pub sent: u64,
    pub answered: u64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

/// New users allocating during the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct NewUsersReport {
    pub tried: u64,
    pub allocated: u64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// The first failure, if any.
    pub failure: Option<String>,
}

/// What the TCP flood did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TcpFloodReport {
    pub connections: usize,
    /// Requests written (whole or in part).
    pub requests: u64,
    pub requests_per_second: f64,
    /// Connections the server closed (each replaced).
    pub closed_by_server: u64,
}

/// One phase's figures (the baseline, or under the floods).
#[derive(Debug, Default, Clone, Serialize)]
pub struct PhaseReport {
    pub seconds: f64,
    /// Stream packets sent, that reached the peer, and that came back.
    pub stream_sent: u64,
    pub stream_at_peer: u64,
    pub stream_back: u64,
    pub loss_to_peer_percent: f64,
    pub loss_back_percent: f64,
    pub bindings: ProbeReport,
    pub new_users: NewUsersReport,
    /// The relay's resident memory: largest sample in the phase (MiB).
    pub server_rss_max_mib: Option<f64>,
}

/// `natkit bench flood`'s report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub server: String,
    pub udp_sources: usize,
    /// UDP flood datagrams the kernel took, and their rate.
    pub udp_flood_sent: u64,
    pub udp_flood_per_second: f64,
    pub tcp_flood: TcpFloodReport,
    pub baseline: PhaseReport,
    pub flood: PhaseReport,
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    /// The generator's CPU time over the run, in seconds.
    pub generator_cpu_seconds: f64,
}

fn pct_lost(sent: u64, got: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        100.0 * sent.saturating_sub(got) as f64 / sent as f64
    }
}

impl Report {
    fn human(&self) -> String {
        let mut s = String::new();
        let rss = |v: Option<f64>| v.map_or("-".into(), |m| format!("{m:.1} MiB"));
        s += &format!("natkit bench flood {}\n", self.server);
        s += &format!(
            "floods: UDP {} datagrams/s from {} addresses; TCP {} requests/s on {} connections ({} closed by the server)\n",
            self.udp_flood_per_second.round(),
            self.udp_sources,
            self.tcp_flood.requests_per_second.round(),
            self.tcp_flood.connections,
            self.tcp_flood.closed_by_server,
        );
        for (name, p) in [("baseline", &self.baseline), ("under flood", &self.flood)] {
            s += &format!(
                "{name} ({:.1} s): stream loss {:.2} % to the peer, {:.2} % back ({} sent); \
                 Binding {}/{} answered (median {:.2} ms, p99 {:.2} ms); \
                 new users {}/{} allocated (median {:.1} ms, max {:.1} ms); relay RSS max {}\n",
                p.seconds,
                p.loss_to_peer_percent,
                p.loss_back_percent,
                p.stream_sent,
                p.bindings.answered,
                p.bindings.sent,
                p.bindings.median_ms,
                p.bindings.p99_ms,
                p.new_users.allocated,
                p.new_users.tried,
                p.new_users.median_ms,
                p.new_users.max_ms,
                rss(p.server_rss_max_mib),
            );
            if let Some(f) = &p.new_users.failure {
                s += &format!("  first new-user failure: {f}\n");
            }
        }
        s += &format!(
            "relay RSS before {} after {}; generator CPU {:.1} s\n",
            rss(self.server_rss_before_mib),
            rss(self.server_rss_after_mib),
            self.generator_cpu_seconds
        );
        s
    }
}

/// Measurements that run in both phases: probes, new users, memory.
struct Watchers {
    stop: Arc<AtomicBool>,
    probes: JoinHandle<anyhow::Result<ProbeReport>>,
    users: JoinHandle<anyhow::Result<(NewUsersReport, usize)>>,
    rss: Option<JoinHandle<Option<f64>>>,
    start: Instant,
}

impl Watchers {
    fn start(a: &FloodArgs, server: SocketAddr, config: &Config, first_user: usize) -> Watchers {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = {
            let stop = stop.clone();
            spawn_async(move || async move { probes(server, &stop).await })
        };
        let users = {
            let stop = stop.clone();
            let config = config.clone();
            let every = a.new_user_every;
            spawn_async(move || async move {
                new_users(server, &config, every, first_user, &stop).await
            })
        };
        let rss = a.server_pid.map(|pid| {
            let stop = stop.clone();
            std::thread::spawn(move || rss_max(pid, &stop))
        });
        Watchers {
            stop,
            probes,
            users,
            rss,
            start: Instant::now(),
        }
    }

    fn finish(self, p: &mut PhaseReport) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        p.seconds = self.start.elapsed().as_secs_f64();
        p.bindings = join(self.probes)??;
        let (users, next) = join(self.users)??;
        p.new_users = users;
        p.server_rss_max_mib = self.rss.map(join).transpose()?.flatten();
        Ok(next)
    }
}

fn join<T>(h: JoinHandle<T>) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))
}

fn rss_now(pid: Option<u32>) -> anyhow::Result<Option<f64>> {
    Ok(pid
        .map(memory::sample)
        .transpose()?
        .map(|m| m.rss_kib as f64 / 1024.0))
}

/// Open the UDP flood's sockets: one per source address.
fn flood_sockets(server: SocketAddr, n: usize) -> anyhow::Result<Vec<UdpSocket>> {
    (0..n)
        .map(|i| socket(local_ip(server, NET_UDP_FLOOD, i), 1 << 16))
        .collect()
}

/// `--ceiling`: the UDP flood at a local socket that never reads.
fn ceiling(a: &FloodArgs) -> anyhow::Result<()> {
    let sink = UdpSocket::bind("127.0.0.1:0").context("cannot bind the sink socket")?;
    let target = sink.local_addr()?;
    let socks = flood_sockets(target, a.udp_sources.max(1))?;
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let sent = std::thread::scope(|s| {
        let h = s.spawn(|| udp_flood(&socks, target, &stop));
        std::thread::sleep(a.duration);
        stop.store(true, Ordering::Relaxed);
        h.join()
    })
    .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
    let rate = sent as f64 / t0.elapsed().as_secs_f64();
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"ceiling": true, "udp_flood_sent": sent, "udp_flood_per_second": rate})
        );
    } else {
        outln!(
            "natkit bench flood --ceiling: {} datagrams/s into a socket that never reads ({} in {:.1} s)",
            rate.round(),
            sent,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Run `natkit bench flood`.
pub fn run(a: FloodArgs) -> anyhow::Result<()> {
    validate(&a)?;
    if a.ceiling {
        return ceiling(&a);
    }
    let server = resolve(a.server.as_deref().unwrap_or_default(), 3478)?;
    check_target(server, a.allow_remote)?;
    let credentials = super::credentials(
        &a.user,
        (a.password.as_deref(), a.password_file.as_deref()),
        (a.secret.as_deref(), a.secret_file.as_deref()),
    )?;
    let config = Config::new(server, Transport::Udp, credentials);
    let cpu0 = process_cpu_time();
    let mut report = Report {
        server: server.to_string(),
        udp_sources: a.udp_sources,
        server_rss_before_mib: rss_now(a.server_pid)?,
        ..Report::default()
    };

    // The existing allocation, with a channel to a peer that echoes. Its
    // thread's runtime is made here: a connection stays on the runtime
    // it was made on.
    let psock = socket(local_ip(server, NET_VICTIM, 1), 4 << 20)?;
    let peer_addr = SocketAddr::new(
        if psock.local_addr()?.ip().is_unspecified() {
            server.ip()
        } else {
            psock.local_addr()?.ip()
        },
        psock.local_addr()?.port(),
    );
    let victim_rt = runtime()?;
    let (vconn, relayed) = victim_rt.block_on(existing_allocation(
        local_ip(server, NET_VICTIM, 0),
        &config,
        peer_addr,
    ))?;

    let (phase, phase_rx) = tokio::sync::watch::channel(Phase::Baseline);
    let peer_stop = Arc::new(AtomicBool::new(false));
    let peer_t = {
        let stop = peer_stop.clone();
        spawn_async(move || async move { peer(psock, relayed, &stop).await })
    };
    let victim_t = {
        let (rate, size) = (a.rate, a.size);
        std::thread::spawn(move || {
            victim_rt.block_on(victim(vconn, peer_addr, rate, size, phase_rx))
        })
    };

    // Baseline.
    let w = Watchers::start(&a, server, &config, 0);
    std::thread::sleep(a.warmup);
    let next_user = w.finish(&mut report.baseline)?;

    // The floods.
    let socks = flood_sockets(server, a.udp_sources)?;
    let flood_stop = Arc::new(AtomicBool::new(false));
    phase.send_replace(Phase::Flood);
    let w = Watchers::start(&a, server, &config, next_user);
    let t_flood = Instant::now();
    let (udp_sent, tcp) = std::thread::scope(|s| -> anyhow::Result<(u64, (u64, u64))> {
        let udp = (!socks.is_empty()).then(|| s.spawn(|| udp_flood(&socks, server, &flood_stop)));
        let tcp = (a.tcp_connections > 0)
            .then(|| s.spawn(|| tcp_flood(server, &a.user, a.tcp_connections, &flood_stop)));
        std::thread::sleep(a.duration);
        flood_stop.store(true, Ordering::Relaxed);
        let panicked = |_| anyhow::anyhow!("a flood thread panicked");
        let udp = udp
            .map(|h| h.join().map_err(panicked))
            .transpose()?
            .unwrap_or(0);
        let tcp = tcp
            .map(|h| h.join().map_err(panicked))
            .transpose()?
            .transpose()?
            .unwrap_or((0, 0));
        Ok((udp, tcp))
    })?;
    let flood_secs = t_flood.elapsed().as_secs_f64();
    phase.send_replace(Phase::Drain);
    w.finish(&mut report.flood)?;
    // What is still in flight arrives or is lost.
    std::thread::sleep(Duration::from_secs(1));
    phase.send_replace(Phase::Stop);
    let stream = join(victim_t)??;
    peer_stop.store(true, Ordering::Relaxed);
    let at_peer = join(peer_t)??;

    for (p, range) in [
        (&mut report.baseline, 0..stream.flood.start),
        (&mut report.flood, stream.flood.clone()),
    ] {
        p.stream_sent = range.end - range.start;
        p.stream_at_peer = at_peer.count(range.clone());
        p.stream_back = stream.back.count(range);
        p.loss_to_peer_percent = pct_lost(p.stream_sent, p.stream_at_peer);
        p.loss_back_percent = pct_lost(p.stream_at_peer, p.stream_back);
    }
    report.udp_flood_sent = udp_sent;
    report.udp_flood_per_second = udp_sent as f64 / flood_secs;
    report.tcp_flood = TcpFloodReport {
        connections: a.tcp_connections,
        requests: tcp.0,
        requests_per_second: tcp.0 as f64 / flood_secs,
        closed_by_server: tcp.1,
    };
    report.server_rss_after_mib = rss_now(a.server_pid)?;
    report.generator_cpu_seconds = process_cpu_time().saturating_sub(cpu0).as_secs_f64();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.human());
    }
    if report.baseline.stream_back == 0 {
        bail!("no stream packet came back through the relay at {server}, even before the floods");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::attack::{request, udp_flood_messages};
    use super::watch::{percentile, seq_of, Seen, STREAM};
    use super::*;
    use natkit_proto::integrity::{LongTermKey, PasswordAlgorithm};
    use natkit_proto::raw::{self, method};

    #[test]
    fn sequence_numbers_are_counted_per_range() {
        let mut s = Seen::default();
        for q in [0, 1, 2, 63, 64, 200] {
            s.mark(q);
        }
        assert_eq!(s.count(0..3), 3);
        assert_eq!(s.count(3..65), 2);
        assert_eq!(s.count(65..1000), 1);
        let mut p = vec![STREAM; 16];
        p[1..9].copy_from_slice(&77u64.to_be_bytes());
        assert_eq!(seq_of(&p), Some(77));
        assert_eq!(seq_of(&p[..5]), None);
        assert_eq!(seq_of(&[0u8; 16]), None);
    }

    #[test]
    fn percentiles_and_loss() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), 51.0);
        assert_eq!(percentile(&d, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(pct_lost(1000, 990), 1.0);
        assert_eq!(pct_lost(0, 0), 0.0);
    }

    #[test]
    fn flood_requests_are_the_unauthenticated_kinds() {
        let lens: Vec<usize> = udp_flood_messages().iter().map(Vec::len).collect();
        assert_eq!(lens, [20, 28, 20]);
        let tid = [3; 12];
        let m = request(
            method::CREATE_PERMISSION,
            &tid,
            |_| {},
            Some(("u", "p", "r", "n")),
        );
        let h = raw::parse_datagram(&m).unwrap();
        let key = LongTermKey::derive(PasswordAlgorithm::Md5, "u", "r", "p");
        assert!(natkit_proto::integrity::verify(&m, &h, key.as_bytes()).is_ok());
    }

    #[test]
    fn roles_come_from_addresses_of_their_own() {
        let s: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(local_ip(s, NET_UDP_FLOOD, 0).to_string(), "127.93.0.1");
        assert_eq!(local_ip(s, NET_UDP_FLOOD, 251).to_string(), "127.93.1.2");
        assert_ne!(local_ip(s, NET_VICTIM, 0), local_ip(s, NET_NEW_USERS, 0));
        let remote: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        assert!(local_ip(remote, NET_VICTIM, 0).is_unspecified());
    }
}
