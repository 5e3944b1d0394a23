//! Start the shards and listeners, then wait for signals: SIGHUP reloads
//! users, secrets (re-reading `auth-secret-file`), peer lists and the TLS
//! certificate, and so does a change of the certificate, key or secret file
//! (polled every `watch-interval`); SIGTERM drains
//! (refuse new allocations, keep relaying for the grace period); SIGINT or a
//! second SIGTERM stops at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use natkit_runtime::acme::{self, AcmeMetrics};
use natkit_runtime::batch::{self, UdpSocketOptions};
use natkit_runtime::config::TlsKeyError;
use natkit_runtime::front::FrontDoor;
use natkit_runtime::metrics_http::{self, Health};
use natkit_runtime::shutdown::{Shutdown, Signal, Signals};
use natkit_runtime::stream::{self, StreamLimits};
use natkit_runtime::tls::ReloadableAcceptor;
use natkit_runtime::watch::FileWatch;
use tracing::{error, info, warn};

use crate::config::{Args, Config};
use crate::metrics::Metrics;
use crate::ports::PortPool;
use crate::shared::{RelayAddress, Reloadable, Shared};
use crate::stream::StreamContext;
use crate::usage::{Sink, UsageLog, UsageSender};
use crate::worker::{self, WorkerSetup};

/// Run the relay until it is told to stop. `tls`: the certificate and key
/// `natkit_runtime::config::load_tls` loaded (`None` without TLS). `args` are kept to
/// re-read the configuration on SIGHUP.
pub fn run(cfg: Config, tls: Option<Arc<rustls::ServerConfig>>, args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    // Fixed for the life of the process: SIGHUP does not change quotas or
    // the port range (a restart does), so the gauges show what runs.
    metrics.set_limits(cfg.turn.max_allocations, cfg.relay_ports());
    let shutdown = Shutdown::new();
    let relay = cfg.relay.map(|r| {
        r.map(|r| RelayAddress {
            bind: r.bind,
            advertised: r.advertised,
        })
    });
    let listeners = cfg.common.listen.clone();
    let mut bound_listeners = listeners.clone();
    bound_listeners.extend(&cfg.common.tls_listen);
    let shared = Arc::new(Shared::new(
        Reloadable {
            credentials: Arc::new(cfg.credentials()),
            policy: Arc::new(cfg.peer_policy(&bound_listeners)),
        },
        PortPool::new(cfg.turn.min_port, cfg.turn.max_port),
        relay,
        cfg.turn.max_allocations,
        cfg.turn.user_quota,
        cfg.turn.unauth_rate,
    ));

    // Before the shards: they hand it their records.
    let usage = match &cfg.turn.usage_log {
        Some(p) => Some(
            UsageLog::start(Sink::parse(p), metrics.usage())
                .with_context(|| format!("usage-log: cannot open {}", p.display()))?,
        ),
        None => None,
    };

    // Before the shards: TCP allocations' sockets (RFC 6062) run on it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("natkit-turn-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    // One shard per thread, each with its own SO_REUSEPORT socket on every
    // listen address.
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    let opts = UdpSocketOptions {
        nonblocking: true,
        ..Default::default()
    };
    let mut groups = Vec::new();
    for addr in &listeners {
        let socks = batch::udp_socket_group(*addr, cfg.common.threads, &opts)
            .with_context(|| format!("cannot bind UDP {addr}"))?;
        groups.push(socks.into_iter());
    }
    for index in 0..cfg.common.threads {
        let socks = groups
            .iter_mut()
            .map(|g| g.next().expect("one socket per thread"))
            .collect();
        let (handle, body) = worker::create(WorkerSetup {
            index,
            listeners: socks,
            core: natkit_proto::turn::server::Config {
                // CONNECTION-IDs name their shard (RFC 6062 data
                // connections are routed by them).
                shard: (index as u32, cfg.common.threads as u32),
                ..cfg.core_config()
            },
            shared: shared.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            usage: usage.as_ref().map(UsageLog::sender),
            rt: rt.handle().clone(),
        })
        .context("cannot start a relay worker")?;
        handles.push(handle);
        threads.push(
            std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(body)
                .context("cannot start a relay worker thread")?,
        );
    }
    for addr in &listeners {
        info!(%addr, threads = cfg.common.threads, "listening on UDP");
    }
    for r in relay.iter().flatten() {
        info!(bind = %r.bind, advertised = %r.advertised, ports = %format!("{}-{}", cfg.turn.min_port, cfg.turn.max_port), "relaying");
    }

    let result = rt.block_on(serve_async(
        cfg,
        tls,
        args,
        shared,
        Arc::new(handles),
        metrics,
        shutdown.clone(),
        usage.as_ref().map(UsageLog::sender),
    ));
    shutdown.trigger();
    for t in threads {
        let _ = t.join();
    }
    // The shards queued their allocations' last records before stopping.
    if let Some(u) = usage {
        u.finish();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    info!("stopped");
    result
}

// What `run` set up, handed over whole: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve_async(
    cfg: Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    args: Args,
    shared: Arc<Shared>,
    workers: Arc<Vec<worker::WorkerHandle>>,
    metrics: Metrics,
    shutdown: Shutdown,
    usage: Option<UsageSender>,
) -> anyhow::Result<()> {
    // One subscription for the life of the process, before any endpoint
    // opens (a signal to a server that answers is handled, never fatal),
    // and a signal that comes during a reload is handled after it.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let ctx = StreamContext {
        workers,
        metrics: metrics.clone(),
        limits: StreamLimits::new(
            cfg.common.tcp_idle_timeout,
            cfg.common.max_tcp_connections,
            shutdown.clone(),
        )
        .with_front(FrontDoor::from_config(&cfg.common)),
        next_conn: Arc::new(AtomicU64::new(0)),
    };
    if cfg.common.tcp {
        for addr in &cfg.common.listen {
            stream::listen(*addr, None, ctx.limits.clone(), ctx.clone())
                .await
                .with_context(|| format!("cannot bind TCP {addr}"))?;
        }
    }
    let mut acceptor: Option<ReloadableAcceptor> = None;
    if let Some(tls) = tls {
        let a = ReloadableAcceptor::new(tls);
        for addr in &cfg.common.tls_listen {
            stream::listen(*addr, Some(a.clone()), ctx.limits.clone(), ctx.clone())
                .await
                .with_context(|| format!("cannot bind TLS {addr}"))?;
        }
        if let Some(settings) = cfg.common.acme() {
            let m = AcmeMetrics::new(&metrics.registry, "natkit_turn")
                .context("cannot register the ACME metrics")?;
            acme::spawn(settings, a.clone(), m, shutdown.clone());
        }
        acceptor = Some(a);
    }
    let health = Health::new();
    if let Some(addr) = cfg.common.metrics {
        let m = metrics_http::spawn(
            addr,
            metrics.registry.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!(addr = %m.local_addr, "serving /metrics and /healthz");
    }
    let bound_listeners: Vec<SocketAddr> = cfg
        .common
        .listen
        .iter()
        .chain(&cfg.common.tls_listen)
        .copied()
        .collect();
    // Files loaded from paths are also loaded again when they change (Kubernetes Secret
    // rotation needs no signal).
    let mut watch = FileWatch::new(cfg.watched_files());
    let interval = cfg.common.watch_interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watching = !cfg.common.watch_interval.is_zero() && !watch.is_empty();
    loop {
        let cause = tokio::select! {
            s = signals.next() => match s {
                Signal::Hangup => {
                    // logrotate moved the usage log: write to a new one.
                    if let Some(u) = &usage {
                        u.reopen();
                    }
                    "SIGHUP"
                }
                Signal::Interrupt => {
                    info!("SIGINT: stopping");
                    return Ok(());
                }
                Signal::Terminate => {
                    drain(&cfg, &shared, &health, &mut signals, usage.as_ref()).await;
                    return Ok(());
                }
            },
            _ = tick.tick(), if watching => {
                if !watch.changed() {
                    continue;
                }
                "file change"
            }
        };
        if let Some(files) = reload(&args, &shared, acceptor.as_ref(), &bound_listeners, cause) {
            watch.set_paths(files);
        }
        // What this reload read is the version seen.
        watch.changed();
    }
}

/// SIGTERM: refuse new allocations, keep relaying until the grace period
/// ends or a second SIGTERM/SIGINT comes.
async fn drain(
    cfg: &Config,
    shared: &Shared,
    health: &Health,
    signals: &mut Signals,
    usage: Option<&UsageSender>,
) {
    info!(
        grace_secs = cfg.turn.drain_grace.as_secs(),
        allocations = shared.total_allocations(),
        "SIGTERM: draining; new allocations are refused"
    );
    shared.draining.store(true, Ordering::Relaxed);
    health.set_ready(false);
    let deadline = tokio::time::sleep(cfg.turn.drain_grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                info!(allocations = shared.total_allocations(), "drain grace period over: stopping");
                return;
            }
            s = signals.next() => match s {
                Signal::Hangup => {
                    if let Some(u) = usage {
                        u.reopen();
                    }
                    continue;
                }
                _ => {
                    info!("second signal during drain: stopping now");
                    return;
                }
            },
        }
    }
}

/// SIGHUP, or a watched file changed (`cause` says which): re-read the
/// configuration (and `auth-secret-file`); apply users, secrets, peer lists
/// and the TLS certificate. Anything else needs a restart, and a broken file
/// keeps the running configuration (a broken certificate keeps the running
/// certificate, the rest still applies). Logs say how many secrets there
/// are, never what they are. Returns the files to watch from now on, or
/// `None` when the configuration was not reloaded.
fn reload(
    args: &Args,
    shared: &Shared,
    acceptor: Option<&ReloadableAcceptor>,
    listeners: &[SocketAddr],
    cause: &str,
) -> Option<Vec<PathBuf>> {
    let cfg = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            error!("{cause}: configuration not reloaded, keeping the running one: {e:#}");
            return None;
        }
    };
    shared.reload(Reloadable {
        credentials: Arc::new(cfg.credentials()),
        policy: Arc::new(cfg.peer_policy(listeners)),
    });
    info!(
        users = cfg.turn.users.0.len(),
        secrets = cfg.auth_secrets.len(),
        secret_file = cfg
            .auth_secret_file
            .as_ref()
            .map(|p| p.display().to_string()),
        "{cause}: reloaded users, secrets and peer lists"
    );
    match (acceptor, cfg.tls.as_ref()) {
        (Some(a), Some((cert, key))) => match a.reload(cert, key) {
            Ok(()) => info!("{cause}: reloaded the TLS certificate and key"),
            // Named by config key (`cert: …` / `key: …`), as at start-up.
            Err(e) => error!(
                "{cause}: keeping the old TLS certificate and key: {}",
                TlsKeyError::from(e)
            ),
        },
        // ACME's task renews the certificate itself.
        (Some(_), None) if cfg.common.acme().is_some() => {}
        (Some(_), None) => warn!(
            "{cause}: cert and key are no longer set; the TLS listeners keep the old certificate until a restart"
        ),
        (None, Some(_)) => warn!(
            "{cause}: cert and key are set now; TLS listeners start only with a restart"
        ),
        (None, None) => {}
    }
    Some(cfg.watched_files())
}
