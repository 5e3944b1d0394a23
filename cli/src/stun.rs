//! `natkit stun SERVER[:PORT]`: one Binding transaction (RFC 8489 §6.2.1
//! retransmissions included) to learn the mapped address and the round trip.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::bail;
use natkit_proto::binding::RequestOptions;
use natkit_proto::transaction::{BindingOutcome, BindingTransaction};
use serde::Serialize;

use crate::udp_driver::{self, millis, secs, TimingArgs};

/// Flags of `natkit stun`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// STUN server: HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT]; port 3478 by default.
    #[arg(value_name = "SERVER[:PORT]")]
    pub server: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Local address to send from (default: the address the system routes
    /// to the server from, any port).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    #[command(flatten)]
    pub timing: TimingArgs,
}

#[derive(Serialize)]
struct Output {
    server: SocketAddr,
    server_name: String,
    local: SocketAddr,
    mapped: SocketAddr,
    answered_from: SocketAddr,
    response_origin: Option<SocketAddr>,
    other_address: Option<SocketAddr>,
    /// Round-trip time; `null` after retransmissions (ambiguous).
    rtt_ms: Option<f64>,
    /// From the first send to the answer.
    elapsed_ms: f64,
    sends: u32,
    retransmitted: bool,
}

/// Run `natkit stun`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = udp_driver::parse_server(&args.server)?;
    let server = udp_driver::resolve(&spec, args.bind.map(|b| b.is_ipv4()))?;
    let (sock, local) = udp_driver::bind_for(server, args.bind)?;
    let opts = RequestOptions {
        fingerprint: true,
        ..Default::default()
    };
    let mut txn = BindingTransaction::new(Instant::now(), server, &opts, args.timing.config());
    udp_driver::run(sock, &mut txn)?;
    let (from, response, completion) = match txn.outcome() {
        Some(BindingOutcome::Answered {
            from,
            response,
            completion,
        }) => (*from, *response, *completion),
        Some(BindingOutcome::TimedOut { waited, sent }) => bail!(
            "no answer from {server} after {sent} tries over {} (server down, wrong address or port, or UDP blocked)",
            secs(*waited)
        ),
        None => bail!("internal error: transaction did not finish"),
    };
    if let Err(code) = response.outcome {
        bail!("{server} answered with error {code}");
    }
    let Some(mapped) = response.mapped else {
        bail!("{server} answered without a mapped address (no XOR-MAPPED-ADDRESS)");
    };
    let out = Output {
        server,
        server_name: spec.to_string(),
        local,
        mapped,
        answered_from: from,
        response_origin: response.response_origin,
        other_address: response.other_address,
        rtt_ms: completion.rtt().map(udp_driver::json_ms),
        elapsed_ms: udp_driver::json_ms(completion.elapsed),
        sends: completion.sent,
        retransmitted: completion.sent > 1,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let name = if spec.host.parse::<std::net::IpAddr>().is_ok() {
        String::new()
    } else {
        format!(" ({spec})")
    };
    println!("server    {server}{name}");
    if from != server {
        println!("answered  from {from}");
    }
    println!("local     {local}");
    println!(
        "mapped    {mapped}{}",
        if mapped == local {
            " (same as local: no NAT)"
        } else {
            ""
        }
    );
    match completion.rtt() {
        Some(rtt) => println!("rtt       {}", millis(rtt)),
        None => println!(
            "rtt       unknown: retransmitted, answered {} after the first of {} sends ({} after the last)",
            millis(completion.elapsed),
            completion.sent,
            millis(completion.since_last_send)
        ),
    }
    if let Some(o) = response.other_address {
        println!(
            "other     {o} (RFC 5780 OTHER-ADDRESS: try `natkit netcheck --stun {}`)",
            args.server
        );
    }
    Ok(())
}
