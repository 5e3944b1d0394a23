//! `natkit netcheck --lifetime MAX`: how long the NAT keeps an idle UDP
//! mapping, by RFC 5780 §4.6. Socket X learns its mapping from the server,
//! stays silent for T, then socket Y asks the server to answer at X's
//! mapped port (RESPONSE-PORT, RFC 5780 §7.5): the answer reaches X only
//! while the mapping lives. T doubles from 1 s up to MAX, then the bounds
//! are narrowed by bisection; the whole run is bounded (about twice MAX).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::transaction::new_transaction_id;
use serde::Serialize;

use super::Args;
use crate::servers;
use crate::udp_driver::{self, human, json_ms};

/// One idle test.
#[derive(Debug, Clone, Serialize)]
struct Test {
    idle_ms: f64,
    alive: bool,
}

#[derive(Serialize)]
struct Output {
    ok: bool,
    error: Option<crate::stun::ErrorOut>,
    server: SocketAddr,
    local: SocketAddr,
    mapped: Option<SocketAddr>,
    /// The longest idle time the mapping survived.
    alive_after_ms: Option<f64>,
    /// The shortest idle time after which it was gone (`null`: it outlived
    /// every test, see `alive_after_ms`).
    expired_after_ms: Option<f64>,
    tests: Vec<Test>,
}

/// How many bisection steps at most, after the doubling.
const BISECT: u32 = 4;

/// Run the lifetime discovery, waiting at most `max` idle.
pub fn run(args: &Args, max: Duration) -> anyhow::Result<()> {
    let mut given = args.servers.clone();
    given.extend(args.stun.iter().cloned());
    let (list, _) = servers::chosen(&given);
    let (resolved, skipped) = servers::resolve_all(&list);
    let v4 = servers::families(args.only_v4, args.only_v6, args.bind)[0];
    let Some(server) = resolved.iter().find_map(|r| r.of_family(v4)) else {
        bail!(
            "no {} STUN server to ask{}",
            servers::family_name(v4),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(": {}", skipped.join("; "))
            }
        );
    };
    let (x, local) = udp_driver::bind_for(server, args.bind)?;
    let (y, _) = udp_driver::bind_for(server, args.bind.map(|b| SocketAddr::new(b.ip(), 0)))?;
    let wait = args.timing.rto().max(Duration::from_millis(200)) * 2;
    let mut tests = Vec::new();
    let mut mapped = None;
    let mut alive: Option<Duration> = None;
    let mut dead: Option<Duration> = None;
    let mut failure = None;
    let mut idle = Duration::from_secs(1).min(max);
    let mut steps = 0;
    loop {
        if !args.json {
            errln!("... idle {} then probe", human(idle));
        }
        match one(&x, &y, server, idle, wait) {
            Ok((m, ok)) => {
                mapped = Some(m);
                tests.push(Test {
                    idle_ms: json_ms(idle),
                    alive: ok,
                });
                if ok {
                    alive = Some(idle);
                } else {
                    dead = Some(idle);
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        // Double while alive, then bisect between the bounds.
        idle = match (alive, dead) {
            (Some(a), None) if a >= max => break,
            (Some(a), None) => (a * 2).min(max),
            (lo, Some(hi)) => {
                let lo = lo.unwrap_or(Duration::ZERO);
                steps += 1;
                if steps > BISECT || hi - lo <= (lo / 4).max(Duration::from_millis(500)) {
                    break;
                }
                lo + (hi - lo) / 2
            }
            (None, None) => break,
        };
    }
    let error = failure
        .as_ref()
        .map(|e: &anyhow::Error| crate::stun::ErrorOut {
            kind: "server_error",
            message: format!("{e:#}"),
        });
    let out = Output {
        ok: error.is_none(),
        error: error.clone(),
        server,
        local,
        mapped,
        alive_after_ms: alive.map(json_ms),
        expired_after_ms: dead.map(json_ms),
        tests: tests.clone(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else if error.is_none() {
        outln!("Mapping lifetime (RFC 5780 §4.6)");
        outln!("  {:<17} {server}", "server");
        outln!("  {:<17} {local}", "local address");
        if let Some(m) = mapped {
            outln!("  {:<17} {m}", "mapped address");
        }
        for t in &tests {
            let idle = human(Duration::from_secs_f64(t.idle_ms / 1e3));
            let v = if t.alive { "still mapped" } else { "gone" };
            outln!("  {:<17} {v}", format!("idle {idle}"));
        }
        let verdict = match (alive, dead) {
            (Some(a), Some(d)) => format!(
                "between {} and {}: keep-alives must come more often",
                human(a),
                human(d)
            ),
            (Some(a), None) => format!("at least {} (it outlived every test)", human(a)),
            (None, Some(d)) => format!("under {}", human(d)),
            (None, None) => "unknown".into(),
        };
        outln!("  {:<17} {verdict}", "lifetime");
    }
    match error {
        None => Ok(()),
        Some(e) => Err(crate::turn::Failure::new(e.kind, e.message).into()),
    }
}

/// Refresh X's mapping, stay idle for `idle`, then have Y ask for an answer
/// at X's mapped port: (the mapping, whether X got the answer).
fn one(
    x: &UdpSocket,
    y: &UdpSocket,
    server: SocketAddr,
    idle: Duration,
    wait: Duration,
) -> anyhow::Result<(SocketAddr, bool)> {
    let (mapped, _) = transact(x, x, server, None, wait)
        .context("the server did not answer the first Binding")?
        .context("the server did not answer the first Binding")?;
    std::thread::sleep(idle);
    // The answer comes back to X if the mapping lives; an error comes back
    // to Y (RESPONSE-PORT not supported: 420).
    match transact(y, x, server, Some(mapped.port()), wait)? {
        Some(_) => Ok((mapped, true)),
        None => Ok((mapped, false)),
    }
}

/// Send a Binding from `from` (RESPONSE-PORT `port`), wait for the answer
/// on `on` (three tries); an error answer on `from` is an error.
fn transact(
    from: &UdpSocket,
    on: &UdpSocket,
    server: SocketAddr,
    port: Option<u16>,
    wait: Duration,
) -> anyhow::Result<Option<(SocketAddr, SocketAddr)>> {
    let tid = new_transaction_id();
    let opts = RequestOptions {
        response_port: port,
        fingerprint: true,
        ..Default::default()
    };
    let mut req = [0u8; 64];
    let n = binding::write_request(&mut req, &tid, &opts)?;
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        from.send_to(&req[..n], server)
            .with_context(|| format!("cannot send to {server}"))?;
        let end = Instant::now() + wait;
        while Instant::now() < end {
            let left = end
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            for s in [on, from] {
                s.set_read_timeout(Some(left.min(Duration::from_millis(20))))?;
                let Ok((len, src)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(r) = binding::parse_response(&buf[..len]) else {
                    continue;
                };
                if r.transaction_id != tid {
                    continue;
                }
                match (r.outcome, r.mapped) {
                    (Err(420), _) => bail!(
                        "{server} does not support RESPONSE-PORT (RFC 5780 §7.5): the lifetime \
                         test needs an RFC 5780 server"
                    ),
                    (Err(code), _) => bail!("{server} answered with error {code}"),
                    (Ok(()), Some(m)) if std::ptr::eq(s, on) => return Ok(Some((m, src))),
                    _ => {}
                }
            }
        }
    }
    Ok(None)
}
