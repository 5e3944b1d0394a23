//! Start every listener, wait for a signal, shut down cleanly. SIGHUP
//! reloads the TLS certificate and key (RFC 8489 §6.2.3 servers renew them
//! like any TLS server); nothing else is read again.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use natkit_runtime::acme::{self, AcmeMetrics};
use natkit_runtime::config::TlsKeyError;
use natkit_runtime::front::FrontDoor;
use natkit_runtime::shutdown::{Shutdown, Signal, Signals};
use natkit_runtime::stream::{self, StreamLimits};
use natkit_runtime::tls::ReloadableAcceptor;
use natkit_runtime::watch::FileWatch;
use tracing::{error, info};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::responder::Responder;
use crate::stream::StreamContext;
use crate::udp;

/// Run the server until SIGTERM or SIGINT. `tls`: the certificate and key
/// loaded by `natkit_runtime::config::load_tls` (`None` without TLS).
pub fn run(cfg: Config, tls: Option<Arc<rustls::ServerConfig>>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.common.threads.clamp(1, 4))
        .thread_name("natkit-stun-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = Shutdown::new();
    let metrics = Metrics::new();
    let responder = Arc::new(
        Responder::new(cfg.endpoints()).map_err(|e| anyhow::anyhow!("invalid endpoints: {e}"))?,
    );
    let workers = udp::start(responder.clone(), cfg.common.threads, &metrics, &shutdown)?;
    for e in responder.endpoints() {
        info!(
            addr = %e.addr,
            rfc5780 = e.rfc5780.is_some(),
            threads = cfg.common.threads,
            "listening on UDP"
        );
    }
    let result = rt.block_on(serve_async(&cfg, tls, responder, metrics, shutdown.clone()));
    shutdown.trigger();
    for w in workers {
        let _ = w.join();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    info!("stopped");
    result
}

async fn serve_async(
    cfg: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    responder: Arc<Responder>,
    metrics: Metrics,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // One subscription for the life of the process, before any endpoint
    // opens (a signal to a server that answers is handled, never fatal),
    // and a signal that comes during a reload is handled after it.
    let mut signals = Signals::new().context("cannot install signal handlers")?;
    let ctx = StreamContext {
        responder: responder.clone(),
        metrics: metrics.clone(),
        limits: StreamLimits::new(
            cfg.common.tcp_idle_timeout,
            cfg.common.max_tcp_connections,
            shutdown.clone(),
        )
        .with_front(FrontDoor::from_config(&cfg.common)),
        local: Responder::STREAM_ONLY,
    };
    if cfg.common.tcp {
        for (i, e) in responder.endpoints().iter().enumerate() {
            let local = StreamContext {
                local: i,
                ..ctx.clone()
            };
            stream::listen(e.addr, None, ctx.limits.clone(), local)
                .await
                .with_context(|| format!("cannot bind TCP {}", e.addr))?;
        }
    }
    let mut acceptor: Option<ReloadableAcceptor> = None;
    if let Some(tls) = tls {
        let shared = ReloadableAcceptor::new(tls);
        for addr in &cfg.common.tls_listen {
            stream::listen(*addr, Some(shared.clone()), ctx.limits.clone(), ctx.clone())
                .await
                .with_context(|| format!("cannot bind TLS {addr}"))?;
        }
        if let Some(settings) = cfg.common.acme() {
            let m = AcmeMetrics::new(&metrics.registry, "natkit_stun")
                .context("cannot register the ACME metrics")?;
            acme::spawn(settings, shared.clone(), m, shutdown.clone());
        }
        acceptor = Some(shared);
    }
    if let Some(addr) = cfg.common.metrics {
        let health = natkit_runtime::metrics_http::Health::new();
        let bound = natkit_runtime::metrics_http::spawn(
            addr,
            metrics.registry.clone(),
            health,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!(addr = %bound.local_addr, "serving /metrics and /healthz");
    }
    // The certificate and key are also loaded again when they change.
    let mut watch = FileWatch::new(cfg.tls.iter().flat_map(|(c, k)| [c.clone(), k.clone()]));
    let mut tick = tokio::time::interval(cfg.common.watch_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watching = !cfg.common.watch_interval.is_zero() && !watch.is_empty();
    loop {
        let cause = tokio::select! {
            s = signals.next() => match s {
                Signal::Hangup => "SIGHUP",
                s => {
                    info!(signal = ?s, "shutting down");
                    break;
                }
            },
            _ = tick.tick(), if watching => {
                if !watch.changed() {
                    continue;
                }
                "file change"
            }
        };
        reload_tls(cfg, acceptor.as_ref(), cause);
        watch.changed();
    }
    Ok(())
}

/// SIGHUP or a changed file (`cause`): load the certificate and key files
/// again (same paths) and serve new connections with them; open connections
/// keep theirs. If the new files do not load, the running ones stay and the
/// error is logged.
fn reload_tls(cfg: &Config, acceptor: Option<&ReloadableAcceptor>, cause: &str) {
    // An acceptor exists exactly when `cfg.tls` is set (validated at start-up).
    let (Some(acceptor), Some((cert, key))) = (acceptor, cfg.tls.as_ref()) else {
        info!("{cause}: no TLS certificate files configured (none, or ACME's), nothing to reload");
        return;
    };
    match acceptor.reload(cert, key) {
        Ok(()) => info!("{cause}: reloaded the TLS certificate and key"),
        // Named by config key (`cert: …` / `key: …`), as at start-up.
        Err(e) => error!(
            "{cause}: keeping the old TLS certificate and key: {}",
            TlsKeyError::from(e)
        ),
    }
}
