//! `natkit netcheck --stun SERVER[:PORT]...`: RFC 5780 NAT behavior
//! discovery (mapping, filtering, hairpinning) with a verdict on peer-to-peer
//! prospects. The protocol is `natkit_proto::discovery`; this module resolves
//! names, binds the socket, runs the driver and prints (in the words of
//! [`crate::discovery_output`]). Meanwhile it asks the gateway for a port
//! mapping with PCP, NAT-PMP and UPnP IGD ([`crate::portmap_check`]).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use anyhow::bail;
use natkit_proto::discovery::{self, Discovery, Mapping, NatType, Observation, Report, Test};
use serde::Serialize;

use crate::discovery_output::{self as words, ReportJson};
use crate::portmap_check;
use crate::udp_driver::{self, millis, secs, TimingArgs};

/// Flags of `natkit netcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// STUN server, HOST[:PORT] (port 3478 by default); repeat for several.
    /// RFC 5780 tests use the first that supports them; the others show
    /// whether the mapped address varies by server.
    #[arg(long = "stun", value_name = "SERVER[:PORT]", required = true)]
    pub stun: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Local address to send from (default: the address the system routes
    /// to the first server from, any port).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// Skip the hairpinning test.
    #[arg(long)]
    pub no_hairpin: bool,
    /// Skip the port-mapping check (PCP, NAT-PMP, UPnP IGD on the gateway).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// The gateway to ask for a port mapping (default: the default route's).
    #[arg(long, value_name = "IP", conflicts_with = "no_port_mapping")]
    pub gateway: Option<IpAddr>,
    #[command(flatten)]
    pub timing: TimingArgs,
}

#[derive(Serialize)]
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

#[derive(Serialize)]
struct Output {
    servers_given: Vec<Given>,
    #[serde(flatten)]
    report: ReportJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    port_mapping: Option<PortMapping>,
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

/// Run `natkit netcheck`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut want_v4 = args.bind.map(|b| b.is_ipv4());
    let mut given = Vec::with_capacity(args.stun.len());
    let mut unusable = Vec::new();
    for s in &args.stun {
        // A server that cannot be used is skipped while another can: the
        // others may still tell the whole story.
        let resolved = udp_driver::parse_server(s).and_then(|spec| {
            let address = udp_driver::resolve(&spec, want_v4)?;
            Ok((spec, address))
        });
        match resolved {
            Ok((spec, address)) => {
                // One socket, one family: the first server fixes it.
                want_v4 = Some(address.is_ipv4());
                given.push(Given {
                    given: spec.to_string(),
                    address,
                });
            }
            Err(e) => unusable.push(e),
        }
    }
    if given.is_empty() {
        let why: Vec<String> = unusable.iter().map(|e| format!("{e:#}")).collect();
        bail!(why.join("; "));
    }
    for e in &unusable {
        eprintln!("warning: {e:#}; skipped");
    }
    let servers: Vec<SocketAddr> = given.iter().map(|g| g.address).collect();
    let (sock, local) = udp_driver::bind_for(servers[0], args.bind)?;
    let port_mapping = start_port_mapping(&args, local.ip());
    let mut cfg = discovery::Config::with_probe(args.timing.config());
    cfg.hairpinning = !args.no_hairpin;
    let mut d = Discovery::new(Instant::now(), local, servers, cfg)?;
    udp_driver::run(sock, &mut d)?;
    let Some(report) = d.into_report() else {
        bail!("internal error: discovery did not finish");
    };
    let port_mapping = port_mapping.map(|t| {
        t.join().unwrap_or_else(|_| PortMapping::Skipped {
            skipped: "internal error: the check panicked".into(),
        })
    });

    if args.json {
        let out = Output {
            servers_given: given,
            report: (&report).into(),
            port_mapping,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if report.learned_anything() {
            print!("{}", human(&report));
        }
        match &port_mapping {
            Some(PortMapping::Checked(r)) => print!("{}", portmap_check::human(r)),
            Some(PortMapping::Skipped { skipped }) if report.learned_anything() => {
                println!("Port mapping\n  not checked: {skipped}")
            }
            _ => {}
        }
    }
    if !report.learned_anything() {
        let why: Vec<String> = report.notes.iter().map(words::note).collect();
        let why = why.join("; ");
        if report.nat_type == NatType::UdpBlocked {
            bail!("{why} (server down, wrong address or port, or UDP blocked on this network)");
        }
        bail!("nothing learned: {why}");
    }
    if !report.rfc5780 {
        if let Some(m) = report.mapped {
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
            eprintln!(
                "warning: {who} RFC 5780 (no OTHER-ADDRESS): {what} be determined; mapped address is {m}{tail}"
            );
        }
    }
    Ok(())
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

/// The human-readable report: an aligned block.
fn human(r: &Report) -> String {
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
    format!("NAT behavior discovery (RFC 5780)\n{s}")
}
