//! `natkit stun [SERVER[:PORT]...]`: one Binding transaction (RFC 8489
//! §6.2.1 retransmissions included) per server and address family, all at
//! once, to learn the mapped addresses and round trips. No server: the
//! default list ([`crate::servers`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_proto::binding::RequestOptions;
use natkit_proto::transaction::{BindingOutcome, BindingTransaction};
use serde::Serialize;

use crate::servers::{self, Resolved};
use crate::udp_driver::{self, millis, secs, Probe, Progress, TimingArgs};

/// Flags of `natkit stun`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// STUN servers: HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT]; port 3478
    /// by default. None: the default list (docs/CLI.md), or
    /// $NATKIT_STUN_SERVERS (comma-separated).
    #[arg(value_name = "SERVER[:PORT]")]
    pub servers: Vec<String>,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4")]
    pub only_v4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6", conflicts_with = "only_v4")]
    pub only_v6: bool,
    /// Print one JSON document (also on failure) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Local address to send from, IP or IP:PORT (default: the address the
    /// system routes to the server from, any port). Fixes the family.
    #[arg(long, value_name = "IP[:PORT]", value_parser = servers::parse_bind)]
    pub bind: Option<SocketAddr>,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// Why a server gave no mapped address.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorOut {
    /// Stable kind: `timeout`, `unreachable`, `no_route`, `server_error`,
    /// `dns`, `io`.
    pub kind: &'static str,
    /// What to tell the user.
    pub message: String,
}

/// One server over one address family.
#[derive(Debug, Clone, Serialize)]
struct ServerOut {
    family: &'static str,
    server: SocketAddr,
    server_name: String,
    local: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    answered_from: Option<SocketAddr>,
    response_origin: Option<SocketAddr>,
    other_address: Option<SocketAddr>,
    /// Round-trip time; `null` after retransmissions (ambiguous).
    rtt_ms: Option<f64>,
    /// From the first send to the answer (or to giving up).
    elapsed_ms: f64,
    sends: u32,
    retransmitted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOut>,
}

/// The document `--json` prints: the first answer's fields at the top
/// (what a one-server run reports), every result in `results`.
#[derive(Serialize)]
struct Output {
    ok: bool,
    error: Option<ErrorOut>,
    #[serde(flatten)]
    first: Option<ServerOut>,
    results: Vec<ServerOut>,
    /// Servers that could not be used (bad name, no address).
    skipped: Vec<String>,
}

/// Run `natkit stun`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + args.timing.timeout;
    let (list, _default) = servers::chosen(&args.servers);
    let (resolved, skipped) = servers::resolve_all(&list);
    let families = servers::families(args.only_v4, args.only_v6, args.bind);
    let mut results = Vec::new();
    let mut family_errors = Vec::new();
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = families
            .iter()
            .map(|&v4| {
                let (resolved, args) = (&resolved, &args);
                s.spawn(move || family_run(v4, resolved, args, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(internal())))
            .collect()
    });
    for r in runs {
        match r {
            Ok(Some(mut v)) => results.append(&mut v),
            Ok(None) => {}
            Err(e) => family_errors.push(e),
        }
    }
    let first = results.iter().find(|r| r.error.is_none()).cloned();
    let error = if first.is_some() {
        None
    } else {
        let mut why: Vec<String> = results
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| e.message.clone()))
            .chain(family_errors.iter().map(|e| e.message.clone()))
            .chain(skipped.iter().cloned())
            .collect();
        why.dedup();
        let kind = results
            .iter()
            .filter_map(|r| r.error.as_ref())
            .chain(family_errors.iter())
            .map(|e| e.kind)
            .next()
            .unwrap_or(if skipped.is_empty() { "usage" } else { "dns" });
        Some(ErrorOut {
            kind,
            message: if why.is_empty() {
                "no server to ask".into()
            } else {
                why.join("; ")
            },
        })
    };
    let out = Output {
        ok: error.is_none(),
        error: error.clone(),
        first,
        results,
        skipped,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in &out.skipped {
            errln!("warning: {s}; skipped");
        }
        if out.ok {
            out!("{}", human(&out.results));
        }
        for e in &family_errors {
            if out.ok {
                errln!("warning: {}", e.message);
            }
        }
    }
    match error {
        None => Ok(()),
        Some(e) => Err(crate::turn::Failure::new(e.kind, e.message).into()),
    }
}

fn internal() -> ErrorOut {
    ErrorOut {
        kind: "io",
        message: "internal error: a probe thread panicked".into(),
    }
}

/// Every server of one family at once, on one socket. `None`: no server
/// of that family given (nothing to say).
fn family_run(
    v4: bool,
    resolved: &[Resolved],
    args: &Args,
    deadline: Instant,
) -> Result<Option<Vec<ServerOut>>, ErrorOut> {
    let targets: Vec<(&Resolved, SocketAddr)> = resolved
        .iter()
        .filter_map(|r| r.of_family(v4).map(|a| (r, a)))
        .collect();
    let Some(&(_, first)) = targets.first() else {
        return Ok(None);
    };
    let family = servers::family_name(v4);
    let (sock, local) = udp_driver::bind_for(first, args.bind).map_err(|e| ErrorOut {
        kind: "no_route",
        message: format!("{family}: {e:#} (this host has no {family} connectivity)"),
    })?;
    let opts = RequestOptions {
        fingerprint: true,
        ..Default::default()
    };
    let now = Instant::now();
    let cfg = args.timing.config();
    let mut probes: Vec<Probe> = targets
        .iter()
        .map(|&(_, a)| Probe::new(BindingTransaction::new(now, a, &opts, cfg)))
        .collect();
    let what = match targets.len() {
        1 => format!("waiting for {first}"),
        n => format!("waiting for {n} {family} servers"),
    };
    let progress = Progress::new(what, deadline);
    udp_driver::run(sock, &mut probes, deadline, &progress).map_err(|e| ErrorOut {
        kind: "io",
        message: format!("{e:#}"),
    })?;
    Ok(Some(
        targets
            .iter()
            .zip(&probes)
            .map(|(&(r, server), p)| result(family, r, server, local, p, args))
            .collect(),
    ))
}

fn result(
    family: &'static str,
    r: &Resolved,
    server: SocketAddr,
    local: SocketAddr,
    p: &Probe,
    args: &Args,
) -> ServerOut {
    let mut o = ServerOut {
        family,
        server,
        server_name: r.spec.to_string(),
        local: Some(local),
        mapped: None,
        answered_from: None,
        response_origin: None,
        other_address: None,
        rtt_ms: None,
        elapsed_ms: 0.0,
        sends: p.txn.sent(),
        retransmitted: p.txn.sent() > 1,
        error: None,
    };
    let fail = |kind, message: String| Some(ErrorOut { kind, message });
    match (p.txn.outcome(), p.unreachable) {
        (_, Some(after)) => {
            o.elapsed_ms = udp_driver::json_ms(after);
            o.error = fail(
                "unreachable",
                format!(
                    "{server} is unreachable: ICMP port unreachable after {} \
                     (nothing listens on that port, or a firewall rejects it)",
                    millis(after)
                ),
            );
        }
        (Some(BindingOutcome::TimedOut { waited, sent }), None) => {
            o.elapsed_ms = udp_driver::json_ms(*waited);
            o.error = fail(
                "timeout",
                format!(
                    "no answer from {server} after {sent} tries over {} \
                     (server down, wrong address or port, or UDP blocked)",
                    secs(*waited)
                ),
            );
        }
        (None, None) => {
            let waited = args.timing.timeout;
            o.elapsed_ms = udp_driver::json_ms(waited);
            o.error = fail(
                "timeout",
                format!(
                    "no answer from {server} after {} tries within --timeout {} \
                     (server down, wrong address or port, or UDP blocked)",
                    p.txn.sent(),
                    secs(waited)
                ),
            );
        }
        (
            Some(BindingOutcome::Answered {
                from,
                response,
                completion,
            }),
            None,
        ) => {
            o.answered_from = Some(*from);
            o.response_origin = response.response_origin;
            o.other_address = response.other_address;
            o.mapped = response.mapped;
            o.rtt_ms = completion.rtt().map(udp_driver::json_ms);
            o.elapsed_ms = udp_driver::json_ms(completion.elapsed);
            o.sends = completion.sent;
            o.retransmitted = completion.sent > 1;
            o.error = match (response.outcome, response.mapped) {
                (Err(code), _) => fail(
                    "server_error",
                    format!("{server} answered with error {code}"),
                ),
                (Ok(()), None) => fail(
                    "server_error",
                    format!("{server} answered without a mapped address (no XOR-MAPPED-ADDRESS)"),
                ),
                (Ok(()), Some(_)) => None,
            };
        }
    }
    o
}

/// The results for people: one aligned block per server and family.
fn human(results: &[ServerOut]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let name = if r.server_name.starts_with(&r.server.ip().to_string())
            || r.server_name.starts_with('[')
        {
            String::new()
        } else {
            format!(" ({})", r.server_name)
        };
        let _ = writeln!(s, "family    {}", r.family);
        let _ = writeln!(s, "server    {}{name}", r.server);
        if let Some(e) = &r.error {
            let _ = writeln!(s, "error     {}", e.message);
            continue;
        }
        if let Some(from) = r.answered_from.filter(|f| *f != r.server) {
            let _ = writeln!(s, "answered  from {from}");
        }
        if let Some(l) = r.local {
            let _ = writeln!(s, "local     {l}");
        }
        if let Some(m) = r.mapped {
            let same = if Some(m) == r.local {
                " (same as local: no NAT)"
            } else {
                ""
            };
            let _ = writeln!(s, "mapped    {m}{same}");
        }
        match r.rtt_ms {
            Some(ms) => {
                let _ = writeln!(s, "rtt       {}", millis(Duration::from_secs_f64(ms / 1e3)));
            }
            None => {
                let _ = writeln!(
                    s,
                    "rtt       unknown: retransmitted, answered {} after the first of {} sends",
                    millis(Duration::from_secs_f64(r.elapsed_ms / 1e3)),
                    r.sends
                );
            }
        }
        if let Some(o) = r.other_address {
            let _ = writeln!(
                s,
                "other     {o} (RFC 5780 OTHER-ADDRESS: try `natkit netcheck {}`)",
                r.server_name
            );
        }
    }
    s
}
