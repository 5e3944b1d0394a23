//! `natkit netcheck --stun SERVER[:PORT]...`: RFC 5780 NAT behavior
//! discovery (mapping, filtering, hairpinning) with a verdict on peer-to-peer
//! prospects. The protocol is `natkit_proto::discovery`; this module resolves
//! names, binds the socket, runs the driver and prints (in the words of
//! [`crate::discovery_output`]). Meanwhile it asks the gateway for a port
//! mapping with PCP, NAT-PMP and UPnP IGD ([`crate::portmap_check`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use natkit_proto::discovery::{self, Discovery, Mapping, NatType, Note, Observation, Report, Test};
use serde::Serialize;

use crate::discovery_output::{self as words, ReportJson};
use crate::portmap_check;
use crate::relays::{self, RelayOut, TurnFlags};
use crate::servers;
use crate::stun::ErrorOut;
use crate::stun_tcp::{self, TcpOut};
use crate::udp_driver::{self, millis, secs, Progress, TimingArgs};

mod compare;
mod lifetime;

/// Flags of `natkit netcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// STUN servers, HOST[:PORT] (port 3478 by default). RFC 5780 tests use
    /// the first that supports them; the others show whether the mapped
    /// address varies by server. stuns:HOST[:PORT] (5349 by default) adds
    /// a Binding over TLS. None: the default list (docs/CLI.md), or
    /// $NATKIT_STUN_SERVERS (comma-separated).
    #[arg(value_name = "SERVER[:PORT]")]
    pub servers: Vec<String>,
    /// Another STUN server (the same as a positional one; repeatable).
    #[arg(long = "stun", value_name = "SERVER[:PORT]")]
    pub stun: Vec<String>,
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
    /// system routes to the first server from, any port). Fixes the family.
    #[arg(long, value_name = "IP[:PORT]", value_parser = servers::parse_bind)]
    pub bind: Option<SocketAddr>,
    /// Skip the hairpinning test.
    #[arg(long)]
    pub no_hairpin: bool,
    /// Skip the TCP check (a Binding over TCP to the first server).
    #[arg(long)]
    pub no_tcp: bool,
    /// Skip the port-mapping check (PCP, NAT-PMP, UPnP IGD on the gateway).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// The gateway to ask for a port mapping (default: the default route's).
    #[arg(long, value_name = "IP", conflicts_with = "no_port_mapping")]
    pub gateway: Option<IpAddr>,
    /// Repeat every DURATION (e.g. 30s) and show what changed; Ctrl-C
    /// stops (or --count). With --json: one document per line.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::positive)]
    pub every: Option<Duration>,
    /// With --every: stop after N runs.
    #[arg(long, value_name = "N", requires = "every",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// Predict a connection between two peers from their saved reports
    /// (`natkit netcheck --json > A.json`): direct, how, or relayed, and why.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"],
          conflicts_with_all = ["every", "lifetime"])]
    pub compare: Option<Vec<PathBuf>>,
    /// Measure how long the NAT keeps an idle UDP mapping (RFC 5780 §4.6),
    /// waiting at most DURATION (e.g. 2m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::positive,
          conflicts_with = "every")]
    pub lifetime: Option<Duration>,
    #[command(flatten)]
    pub relays: TurnFlags,
    #[command(flatten)]
    pub timing: TimingArgs,
}

#[derive(Serialize, Clone)]
struct Given {
    given: String,
    address: SocketAddr,
}

/// The port-mapping check's outcome.
#[derive(Serialize)]
#[serde(untagged)]
enum PortMapping {
    Checked(portmap_check::Report),
    Skipped { skipped: String },
}

/// One address family's run.
#[derive(Serialize)]
struct FamilyOut {
    family: &'static str,
    servers_given: Vec<Given>,
    #[serde(flatten)]
    report: Option<ReportJson>,
    /// `works` (a server answered over UDP), `blocked`, or `not_tested`.
    udp: &'static str,
    /// The Binding over TCP to the first server (`null`: not tried).
    tcp: Option<TcpOut>,
    /// The Binding over TLS to the first `stuns:` server (`null`: none given).
    tls: Option<TcpOut>,
    /// What UDP and TCP together mean for peer-to-peer connections.
    connectivity: String,
    /// Why the family could not run at all (no route, no server).
    #[serde(skip_serializing_if = "Option::is_none")]
    family_error: Option<String>,
    #[serde(skip)]
    learned: bool,
    #[serde(skip)]
    raw: Option<Report>,
}

/// The document: the first family's fields at the top (one-family runs
/// read as before), every family in `families`.
#[derive(Serialize)]
struct Output<'a> {
    ok: bool,
    error: Option<ErrorOut>,
    #[serde(flatten)]
    primary: Option<&'a FamilyOut>,
    families: Vec<serde_json::Value>,
    skipped: Vec<String>,
    /// `--turn`: the round trips through each relay.
    relays: Vec<RelayOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port_mapping: Option<&'a PortMapping>,
    /// `--every`: which run this is (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    round: Option<u32>,
    /// `--every`: what differs from the previous run.
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<String>>,
}

/// Start the port-mapping check on a thread of its own (it runs while the
/// STUN tests do) for `local`, the address the STUN tests use (a loopback
/// one maps nothing, so tests against loopback servers never ask the real
/// gateway); `None` when it is off.
fn start_port_mapping(args: &Args, local: IpAddr) -> Option<std::thread::JoinHandle<PortMapping>> {
    if args.no_port_mapping {
        return None;
    }
    let explicit = args.gateway;
    Some(std::thread::spawn(move || {
        let skipped = |why: String| PortMapping::Skipped { skipped: why };
        let gateway = match portmap_check::find_gateway(explicit) {
            Ok(g) => g,
            Err(e) => return skipped(e),
        };
        let local = if local.is_unspecified() {
            match portmap_check::local_for(gateway) {
                Ok(ip) => ip,
                Err(e) => return skipped(format!("no route to the gateway {gateway}: {e}")),
            }
        } else {
            local
        };
        if let Some(why) = portmap_check::skip_reason(local, gateway) {
            return skipped(why.to_string());
        }
        match portmap_check::check(gateway, local) {
            Ok(r) => PortMapping::Checked(r),
            Err(e) => skipped(format!("{e:#}")),
        }
    }))
}

/// What UDP and TCP results mean for a connection to a peer.
fn connectivity(udp: &str, tcp: Option<&TcpOut>, tls: Option<&TcpOut>) -> String {
    let word = |t: Option<&TcpOut>| match t {
        None => "not tested",
        Some(t) if t.works => "works",
        Some(_) => "blocked",
    };
    let works = |t: Option<&TcpOut>| t.map(|t| t.works);
    let meaning = match (udp, works(tcp), works(tls)) {
        ("works", ..) => "direct UDP connections are possible (see the verdict)",
        (_, Some(true), _) => {
            "no direct connection: peers connect only through a TURN relay over TCP or TLS"
        }
        (_, _, Some(true)) => {
            "no direct connection: peers connect only through a TURN relay over TLS"
        }
        (_, Some(false), None | Some(false)) | (_, None, Some(false)) => {
            "no connection at all from this network to these servers"
        }
        _ => "UDP gets no answer: expect a TURN relay over TCP or TLS",
    };
    let tls_part = match tls {
        None => String::new(),
        Some(_) => format!(", TLS: {}", word(tls)),
    };
    format!("UDP: {udp}, TCP: {}{tls_part}: {meaning}", word(tcp))
}

/// A TLS check to run: the server's address, the name its certificate
/// must carry, and the trust to check it with.
#[derive(Clone)]
struct TlsTarget {
    address: SocketAddr,
    name: Result<rustls::pki_types::ServerName<'static>, String>,
    config: Result<std::sync::Arc<rustls::ClientConfig>, String>,
}

/// Run `probe` on a detached thread (it ends by `deadline` on its own).
fn background(
    probe: impl FnOnce() -> TcpOut + Send + 'static,
) -> std::sync::mpsc::Receiver<TcpOut> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(probe());
    });
    rx
}

/// How long the TCP check may go on once UDP has answered.
const TCP_GRACE: Duration = Duration::from_secs(1);

/// One family: Discovery on its own socket, and the TCP check beside it.
fn family_run(
    v4: bool,
    targets: Vec<(String, SocketAddr)>,
    tls: Option<TlsTarget>,
    bound: anyhow::Result<(std::net::UdpSocket, SocketAddr)>,
    args: &Args,
    deadline: Instant,
) -> FamilyOut {
    let family = servers::family_name(v4);
    let given: Vec<Given> = targets
        .iter()
        .map(|(g, a)| Given {
            given: g.clone(),
            address: *a,
        })
        .collect();
    let mut out = FamilyOut {
        family,
        servers_given: given,
        report: None,
        udp: "not_tested",
        tcp: None,
        tls: None,
        connectivity: String::new(),
        family_error: None,
        learned: false,
        raw: None,
    };
    let (sock, local) = match bound {
        Ok(b) => b,
        Err(e) => {
            out.family_error = Some(format!(
                "{family}: {e:#} (this host has no {family} connectivity)"
            ));
            out.connectivity = format!("{family}: not available on this host");
            return out;
        }
    };
    let servers: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
    let first = servers[0];
    let tcp = (!args.no_tcp).then(|| background(move || stun_tcp::probe(first, deadline)));
    let tls = tls.map(|t| {
        let address = t.address;
        let rx = background(move || match (t.name, t.config) {
            (Ok(name), Ok(config)) => stun_tcp::probe_tls(address, name, config, deadline),
            (Err(e), _) | (_, Err(e)) => stun_tcp::failed(address, e),
        });
        (address, rx)
    });
    let mut cfg = discovery::Config::with_probe(args.timing.probe_config());
    cfg.hairpinning = !args.no_hairpin;
    let report = Discovery::new(Instant::now(), local, servers, cfg)
        .map_err(anyhow::Error::from)
        .and_then(|mut d| {
            let what = format!("{family} NAT tests");
            let progress = Progress::new(what, deadline);
            udp_driver::run(sock, &mut d, deadline, &progress)?;
            d.into_report()
                .ok_or_else(|| anyhow::anyhow!("internal error: discovery did not finish"))
        });
    // When UDP works, TCP is a side note: a firewall that drops the SYN
    // must not hold the run until the deadline.
    let udp_works = report
        .as_ref()
        .is_ok_and(|r| r.servers().any(|o| o.answered_from.is_some()));
    let until = if udp_works {
        deadline.min(Instant::now() + TCP_GRACE)
    } else {
        deadline
    };
    let collect = |server: SocketAddr, rx: std::sync::mpsc::Receiver<TcpOut>| {
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| stun_tcp::unfinished(server, TCP_GRACE))
    };
    out.tcp = tcp.map(|rx| collect(first, rx));
    out.tls = tls.map(|(a, rx)| collect(a, rx));
    match report {
        Ok(r) => {
            out.learned = r.learned_anything();
            out.udp = if r.servers().any(|o| o.answered_from.is_some()) {
                "works"
            } else {
                "blocked"
            };
            out.report = Some((&r).into());
            out.raw = Some(r);
        }
        Err(e) => out.family_error = Some(format!("{family}: {e:#}")),
    }
    out.connectivity = connectivity(out.udp, out.tcp.as_ref(), out.tls.as_ref());
    out
}

/// The TLS trust for `stuns:` checks: --ca or --insecure, else the
/// system's CAs.
fn tls_trust(flags: &TurnFlags) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use crate::turn::tls::{client_config, Trust};
    let trust = match (&flags.ca, flags.insecure) {
        (Some(f), _) => Trust::CaFile(f.clone()),
        (None, true) => {
            // Once, not on every --every round.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                errln!(
                    "warning: --insecure: the stuns: servers' certificates are not verified; \
                     anyone on the path could pose as them"
                )
            });
            Trust::Insecure
        }
        (None, false) => Trust::System,
    };
    client_config(&trust).map_err(|e| format!("{e:#}"))
}

/// One run's findings.
struct Diagnosis {
    ok: bool,
    error: Option<ErrorOut>,
    runs: Vec<FamilyOut>,
    skipped: Vec<String>,
    port_mapping: Option<PortMapping>,
    relays: Vec<RelayOut>,
}

/// Run `natkit netcheck`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(files) = &args.compare {
        return compare::run(&files[0], &files[1], args.json);
    }
    if let Some(lifetime) = args.lifetime {
        return lifetime::run(&args, lifetime);
    }
    // Checked once, up front, in the flags' own names (each relay check
    // would otherwise fail with `natkit turn`'s).
    if !args.relays.turn.is_empty() {
        if let Err(e) = args.relays.credentials() {
            if args.json {
                crate::output::failure_json(crate::output::kind_of(&e), &format!("{e:#}"));
            }
            return Err(e);
        }
    }
    let rounds = match args.every {
        None => 1,
        Some(_) => args.count.unwrap_or(u32::MAX),
    };
    let mut previous: Option<BTreeMap<String, String>> = None;
    let mut last = Ok(());
    for round in 0..rounds {
        let started = Instant::now();
        let d = diagnose(&args);
        let summary = summary(&d);
        let changes = previous.as_ref().map(|p| changes(p, &summary));
        print(&args, &d, changes.as_deref(), round)?;
        previous = Some(summary);
        last = match d.error {
            None => Ok(()),
            Some(e) => Err(crate::turn::Failure::new(e.kind, e.message).into()),
        };
        let (Some(every), true) = (args.every, round + 1 < rounds) else {
            break;
        };
        if args.every.is_some() && last.is_err() && !args.json {
            if let Err(e) = &last {
                errln!("error: {e:#}");
            }
        }
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
    last
}

/// What `--every` compares between runs: per family the mapped address,
/// the behaviors and UDP/TCP; the relays; the port mapping.
fn summary(d: &Diagnosis) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for f in &d.runs {
        let k = |what: &str| format!("{} {what}", f.family);
        if let Some(r) = &f.raw {
            // The IP, not the port: each run sends from a new local port.
            let public = r.mapped.map_or("none".to_string(), |a| a.ip().to_string());
            m.insert(k("public address"), public);
            m.insert(k("mapping"), words::mapping(&r.mapping));
            m.insert(k("filtering"), words::filtering(&r.filtering));
            m.insert(k("NAT type"), words::nat_type_name(r.nat_type).to_string());
        }
        m.insert(k("UDP"), f.udp.to_string());
        for (name, t) in [("TCP", &f.tcp), ("TLS", &f.tls)] {
            if let Some(t) = t {
                m.insert(k(name), if t.works { "works" } else { "blocked" }.into());
            }
        }
    }
    for r in &d.relays {
        m.insert(
            format!("relay {}", r.uri),
            if r.ok { "works" } else { "fails" }.into(),
        );
    }
    if let Some(PortMapping::Checked(p)) = &d.port_mapping {
        m.insert(
            "port mapping".into(),
            p.via.map_or("none".to_string(), str::to_string),
        );
    }
    m
}

/// Lines for what differs from the previous run.
fn changes(before: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in now {
        match before.get(k) {
            Some(old) if old != v => out.push(format!("{k}: {old} -> {v}")),
            None => out.push(format!("{k}: (new) {v}")),
            _ => {}
        }
    }
    for (k, old) in before {
        if !now.contains_key(k) {
            out.push(format!("{k}: {old} -> (gone)"));
        }
    }
    out
}

/// One diagnosis: both families, TCP, relays and port mapping at once.
fn diagnose(args: &Args) -> Diagnosis {
    let start = Instant::now();
    let deadline = start + args.timing.timeout;
    let mut given = args.servers.clone();
    given.extend(args.stun.iter().cloned());
    // stuns: servers get the TLS check; alone, their hosts on 3478 get the
    // UDP and TCP tests.
    let (tls_given, mut plain): (Vec<String>, Vec<String>) = given
        .into_iter()
        .partition(|s| s.trim_start().starts_with("stuns:"));
    let (tls_resolved, mut skipped) = servers::resolve_tls_all(&tls_given);
    if plain.is_empty() {
        plain = tls_resolved.iter().map(|r| r.spec.host.clone()).collect();
    }
    let (list, _default) = servers::chosen(&plain);
    let (resolved, more_skipped) = servers::resolve_all(&list);
    skipped.extend(more_skipped);
    let families = servers::families(args.only_v4, args.only_v6, args.bind);
    let relays = relays::start(&args.relays, &args.timing);
    let trust = if tls_resolved.is_empty() {
        Err("no stuns: server".to_string())
    } else {
        tls_trust(&args.relays)
    };
    // Bind each family's socket first: the port-mapping check needs the
    // IPv4 run's local address.
    let mut plans = Vec::new();
    let mut pm_local = None;
    for &v4 in &families {
        let targets: Vec<(String, SocketAddr)> = resolved
            .iter()
            .filter_map(|r| r.of_family(v4).map(|a| (r.spec.to_string(), a)))
            .collect();
        let Some(&(_, first)) = targets.first() else {
            continue;
        };
        let bound = udp_driver::bind_for(first, args.bind);
        if let (true, Ok((_, l))) = (v4, &bound) {
            pm_local = Some(l.ip());
        }
        let tls = tls_resolved.iter().find_map(|r| {
            let address = r.of_family(v4)?;
            Some(TlsTarget {
                address,
                name: crate::turn::tls::server_name(&r.spec.host).map_err(|e| format!("{e:#}")),
                config: trust.clone(),
            })
        });
        plans.push((v4, targets, tls, bound));
    }
    let port_mapping = pm_local.and_then(|ip| start_port_mapping(args, ip));
    let runs: Vec<FamilyOut> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|(v4, targets, tls, bound)| {
                s.spawn(move || family_run(v4, targets, tls, bound, args, deadline))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let port_mapping = port_mapping.map(|t| {
        t.join().unwrap_or_else(|_| PortMapping::Skipped {
            skipped: "internal error: the check panicked".into(),
        })
    });
    let relays: Vec<RelayOut> = relays.into_iter().filter_map(|h| h.join().ok()).collect();
    let works = |t: &Option<TcpOut>| t.as_ref().is_some_and(|t| t.works);
    let ok = runs
        .iter()
        .any(|f| f.learned || works(&f.tcp) || works(&f.tls))
        || relays.iter().any(|r| r.ok);
    let error = (!ok).then(|| failure(&runs, &skipped));
    Diagnosis {
        ok,
        error,
        runs,
        skipped,
        port_mapping,
        relays,
    }
}

fn print(args: &Args, d: &Diagnosis, changes: Option<&[String]>, round: u32) -> anyhow::Result<()> {
    let ok = d.ok;
    if round == 0 {
        for f in &d.runs {
            if let Some(r) = f.raw.as_ref().filter(|r| r.learned_anything()) {
                warn_no_rfc5780(f.family, r);
            }
        }
    }
    if args.json {
        let families = d
            .runs
            .iter()
            .map(|f| serde_json::to_value(f).unwrap_or_default())
            .collect();
        // The first family that ran fills the top level.
        let primary = d
            .runs
            .iter()
            .position(|f| f.raw.is_some())
            .or((!d.runs.is_empty()).then_some(0))
            .map(|i| &d.runs[i]);
        let out = Output {
            ok,
            error: d.error.clone(),
            primary,
            families,
            skipped: d.skipped.clone(),
            relays: d.relays.clone(),
            port_mapping: d.port_mapping.as_ref(),
            round: args.every.map(|_| round + 1),
            changes: changes.map(<[String]>::to_vec),
        };
        if args.every.is_some() {
            // --every: one compact document per line (JSON Lines).
            outln!("{}", serde_json::to_string(&out)?);
        } else {
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
        return Ok(());
    }
    if round == 0 {
        for s in &d.skipped {
            errln!("warning: {s}; skipped");
        }
    }
    if let Some(every) = args.every {
        outln!(
            "== run {} (every {}) ==",
            round + 1,
            udp_driver::human(every)
        );
        match changes {
            None => {}
            Some([]) => outln!("no change since the last run\n"),
            Some(c) => {
                outln!("changed since the last run:");
                for line in c {
                    outln!("  - {line}");
                }
                outln!();
            }
        }
    }
    for f in &d.runs {
        match (&f.raw, &f.family_error) {
            (Some(r), _) if f.learned || ok => {
                out!(
                    "{}",
                    human(
                        f.family,
                        r,
                        [f.tcp.as_ref(), f.tls.as_ref()],
                        &f.connectivity
                    )
                )
            }
            (_, Some(e)) if ok => outln!("{}\n  {e}\n", f.family),
            _ => {}
        }
    }
    if !d.relays.is_empty() {
        out!("{}", relays::human(&d.relays));
    }
    match &d.port_mapping {
        Some(PortMapping::Checked(r)) => out!("{}", portmap_check::human(r)),
        Some(PortMapping::Skipped { skipped }) if ok => {
            outln!("Port mapping\n  not checked: {skipped}")
        }
        _ => {}
    }
    Ok(())
}

/// The error when nothing was learned: what the notes say.
fn failure(runs: &[FamilyOut], skipped: &[String]) -> ErrorOut {
    let mut why: Vec<String> = Vec::new();
    let mut kind = "usage";
    for f in runs {
        if let Some(r) = &f.raw {
            let notes: Vec<String> = r.notes.iter().map(words::note).collect();
            let mut line = notes.join("; ");
            if r.nat_type == NatType::UdpBlocked {
                kind = if r
                    .notes
                    .iter()
                    .all(|n| matches!(n, Note::Unreachable { .. }))
                {
                    "unreachable"
                } else {
                    "timeout"
                };
                line.push_str(
                    " (server down, wrong address or port, or UDP blocked on this network)",
                );
                if let Some(t) = f.tcp.as_ref().and_then(|t| t.error.as_ref()) {
                    line.push_str(&format!("; TCP: {t}"));
                }
            } else {
                kind = "incomplete";
                line = format!("nothing learned: {line}");
            }
            why.push(line);
        } else if let Some(e) = &f.family_error {
            if kind == "usage" {
                kind = "no_route";
            }
            why.push(e.clone());
        }
    }
    if runs.is_empty() {
        kind = if skipped.is_empty() { "usage" } else { "dns" };
        why.extend(skipped.iter().cloned());
    }
    if why.is_empty() {
        why.push("no STUN server to ask".into());
    }
    ErrorOut {
        kind,
        message: why.join("; "),
    }
}

fn warn_no_rfc5780(family: &str, report: &Report) {
    if report.rfc5780 {
        return;
    }
    let Some(m) = report.mapped else { return };
    let who = if report.servers().count() > 1 {
        "no server supports"
    } else {
        "server does not support"
    };
    // Without a NAT the mapping is known anyway (RFC 5780 §4.3).
    let (what, tail) = if report.mapping == Mapping::NoNat {
        ("filtering cannot", " (same as local: no NAT)")
    } else {
        ("mapping and filtering cannot", "")
    };
    errln!(
        "warning: {family}: {who} RFC 5780 (no OTHER-ADDRESS): {what} be determined; mapped address is {m}{tail}"
    );
}

fn yes_no(b: Option<bool>, none: &str) -> String {
    match b {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => none.into(),
    }
}

fn server_line(o: &Observation) -> String {
    match (o.answered_from, o.mapped, o.error_code) {
        (None, ..) => format!(
            "{} -> no answer after {} tries over {}",
            o.to,
            o.sends,
            secs(o.elapsed)
        ),
        (Some(_), _, Some(code)) => format!("{} -> error {code}", o.to),
        (Some(_), mapped, None) => {
            let mapped = mapped.map_or("no mapped address".to_string(), |m| m.to_string());
            let timing = match o.rtt {
                Some(rtt) => millis(rtt),
                None => format!("{} sends, {}", o.sends, millis(o.elapsed)),
            };
            let rfc5780 = if o.other_address.is_some() {
                ", RFC 5780"
            } else {
                ""
            };
            format!("{} -> {mapped} ({timing}{rfc5780})", o.to)
        }
    }
}

/// The human-readable report of one family: an aligned block.
fn human(family: &str, r: &Report, streams: [Option<&TcpOut>; 2], connectivity: &str) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "  {k:<17} {v}");
    };
    let mut servers = r.servers();
    if let Some(first) = servers.next() {
        line("servers", &server_line(first));
    }
    for o in servers {
        line("", &server_line(o));
    }
    line("local address", &r.local.to_string());
    line(
        "mapped address",
        &r.mapped.map_or("unknown".to_string(), |m| m.to_string()),
    );
    match (r.server, r.other_address) {
        (Some(p), Some(o)) => line("RFC 5780 server", &format!("{p} (other address {o})")),
        _ => line("RFC 5780 server", "none: no server gave OTHER-ADDRESS"),
    }
    line("mapping", &words::mapping(&r.mapping));
    line("filtering", &words::filtering(&r.filtering));
    line("hairpinning", &yes_no(r.hairpinning, "not tested"));
    let n = r.servers().filter(|o| o.mapped.is_some()).count();
    line(
        "varies by server",
        &match r.mapping_varies_by_server {
            Some(v) => format!("{} ({n} servers answered)", yes_no(Some(v), "")),
            None => "not tested (give several --stun servers)".to_string(),
        },
    );
    line("NAT type", words::nat_type_name(r.nat_type));
    line("verdict", words::verdict(r));
    for (name, t) in ["TCP", "TLS"].into_iter().zip(streams) {
        let Some(t) = t else { continue };
        let v = match (t.works, t.mapped, &t.error) {
            (true, Some(m), _) => format!(
                "works: {} -> {m}{}",
                t.server,
                t.ms.map_or(String::new(), |ms| format!(" ({ms:.1} ms)"))
            ),
            (_, _, Some(e)) => format!("{} -> {e}", t.server),
            _ => format!("{} -> no answer", t.server),
        };
        line(name, &v);
    }
    line("UDP and TCP", connectivity);
    line("took", &udp_driver::human(r.elapsed));
    let hairpin_note = r
        .observations
        .iter()
        .find(|o| o.test == Test::Hairpinning && o.answered_from.is_none())
        .map(|o| format!("hairpinning: our request to {} did not come back", o.to));
    let notes: Vec<String> = r
        .notes
        .iter()
        .map(words::note)
        .chain(hairpin_note)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "notes:");
        for n in notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    format!("NAT behavior discovery (RFC 5780), {family}\n{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_what_moved() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = m(&[
            ("IPv4 public address", "203.0.113.1"),
            ("IPv4 UDP", "works"),
        ]);
        let b = m(&[
            ("IPv4 public address", "203.0.113.9"),
            ("IPv6 UDP", "works"),
        ]);
        assert_eq!(
            changes(&a, &b),
            vec![
                "IPv4 public address: 203.0.113.1 -> 203.0.113.9".to_string(),
                "IPv6 UDP: (new) works".into(),
                "IPv4 UDP: works -> (gone)".into(),
            ]
        );
        assert!(changes(&a, &a).is_empty());
    }
}
