//! `natkit turn SERVER[:PORT]`: check a TURN server end to end. Allocate
//! (twice by default), create permissions, bind a channel, relay a few round
//! trips through the server and close, reporting each step with its timing.
//!
//! By default the peer is the command's own second allocation on the same
//! server: A sends ChannelData to B's relayed address, B gets it as a Data
//! indication and echoes it with a Send indication, and A gets the echo as
//! ChannelData (RFC 8656 §11, §12), so one run exercises both data paths of
//! the relay. With `--peer` the peer is any UDP echo service.
//!
//! The protocol is `natkit_proto::turn::client` (sans-IO), driven over
//! UDP, TCP or TLS by natkit-ice's `TurnConnection` on a one-thread tokio
//! runtime; one connection per allocation (RFC 8656 §2 ties an allocation
//! to its 5-tuple).

pub(crate) mod args;
mod failure;
pub(crate) mod report;
mod session;
pub(crate) mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use natkit_ice::session_core::{ConnectionError, ConnectionStage};
use natkit_ice::turn::{ConnectError, SendError, TurnConnection};
use natkit_proto::turn::client::{AddressFamily, Config, Event};

use crate::udp_driver;
pub use failure::Failure;
use failure::{Doing, Who};
use report::{AllocationOut, Printer, RoundTripOut};
use session::{Alloc, Session};

use args::{credentials, target};
pub use args::{Args, TransportArg};

/// How long to wait for the allocations' deletion when giving up after an
/// error: the error is what matters, a silent server must not hold it back.
const CLEANUP_WAIT: Duration = Duration::from_secs(2);

/// Run `natkit turn`.
pub fn run(args: Args) -> anyhow::Result<()> {
    // One thread: the allocations take turns on it, as the steps do.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = Printer::new(args.json);
    let result = rt.block_on(probe(&args, &mut out));
    let failure = result.err();
    out.finish(failure.as_ref())?;
    match failure {
        None => Ok(()),
        Some(f) => Err(f.into()),
    }
}

/// A whole check without output, for `natkit netcheck --turn`: the report,
/// failure included.
pub fn check(args: &Args) -> report::Report {
    let mut out = Printer::quiet();
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(probe(args, &mut out)),
        Err(e) => Err(Failure::new(
            "io",
            format!("cannot start the async runtime: {e}"),
        )),
    };
    let _ = out.finish(result.err().as_ref());
    out.report
}

async fn probe(args: &Args, out: &mut Printer) -> Result<(), Failure> {
    let (creds, rest) = credentials(args)?;
    let (spec, transport) = target(args)?;
    out.report.server_name = spec.to_string();
    out.report.transport = transport_name(transport);
    out.report.username = creds.username.clone();
    out.report.credentials = if rest { "rest" } else { "static" };
    let trust = match transport {
        TransportArg::Tls if args.insecure => {
            errln!(
                "warning: --insecure: the server's certificate is not verified; \
                 anyone on the path could pose as the server"
            );
            Some(tls::Trust::Insecure)
        }
        TransportArg::Tls => Some(match &args.ca {
            Some(f) => tls::Trust::CaFile(f.clone()),
            None => tls::Trust::System,
        }),
        _ => {
            if args.insecure || args.ca.is_some() || args.tls_name.is_some() {
                errln!("warning: --ca, --insecure and --tls-name apply to --transport tls only");
            }
            None
        }
    };
    let tls_setup = match &trust {
        Some(t) => {
            let config =
                tls::client_config(t).map_err(|e| Failure::new("tls", format!("{e:#}")))?;
            let name = args.tls_name.as_deref().unwrap_or(&spec.host);
            let name =
                tls::server_name(name).map_err(|e| Failure::new("usage", format!("{e:#}")))?;
            Some((config, name))
        }
        None => None,
    };

    // Resolve.
    let t = Instant::now();
    // The server's family need not be the peer's: the relayed address
    // family is asked for separately (RFC 6156).
    let server =
        udp_driver::resolve(&spec, None).map_err(|e| Failure::new("dns", format!("{e:#}")))?;
    out.report.server = Some(server);
    let how = if spec.host.parse::<std::net::IpAddr>().is_ok() {
        "an address, no lookup".to_string()
    } else {
        format!("resolved {}", spec.host)
    };
    out.step("resolve", t.elapsed(), format!("{server} ({how})"));

    let who = Who {
        username: creds.username.clone(),
        rest,
        server,
        stream: transport != TransportArg::Udp,
        port_unreachable: false,
    };

    // Connect: one socket or connection per allocation.
    let names: &[&'static str] = if args.peer.is_some() {
        &["A"]
    } else {
        &["A", "B"]
    };
    let connect_timeout = args.timing.config().budget().max(Duration::from_secs(1));
    let mut pending = Vec::new();
    for &name in names {
        let mut cfg = Config::new(server, transport.into(), creds.clone());
        cfg.transaction = args.timing.config();
        if args.peer.is_some_and(|p| p.is_ipv6()) {
            // RFC 6156: relay to an IPv6 peer from an IPv6 relayed address.
            cfg.family = AddressFamily::V6;
        }
        let t = Instant::now();
        let conn = TurnConnection::connect(cfg, tls_setup.clone(), connect_timeout)
            .await
            .map_err(|e| connect_failure(server, transport, &e, connect_timeout))?;
        let l = conn.local_addr();
        match (transport, conn.tls_info()) {
            (TransportArg::Udp, _) => {}
            (TransportArg::Tls, Some(info)) => {
                let d = format!(
                    "{name} {l} -> {server} over TLS: {} {}, handshake {}",
                    info.version,
                    info.cipher,
                    udp_driver::millis(info.handshake)
                );
                out.report.tls.get_or_insert(report::TlsOut {
                    version: info.version.clone(),
                    cipher: info.cipher.clone(),
                    handshake_ms: udp_driver::json_ms(info.handshake),
                });
                out.step("connect", t.elapsed(), d);
            }
            _ => out.step(
                "connect",
                t.elapsed(),
                format!("{name} {l} -> {server} over TCP"),
            ),
        }
        pending.push((name, conn));
    }
    let mut session = Session::new(who);
    session.progress = !out.is_quiet();
    let result = relay_check(args, pending, &mut session, out).await;
    if result.is_err() {
        // Free what was allocated; the error is the news, not this.
        let _ = session.close(Some(Instant::now() + CLEANUP_WAIT)).await;
    }
    result
}

/// Connected, not allocating yet: each allocation starts in its turn.
type Pending = (&'static str, TurnConnection);

async fn relay_check(
    args: &Args,
    pending: Vec<Pending>,
    s: &mut Session,
    out: &mut Printer,
) -> Result<(), Failure> {
    // Allocate (RFC 8656 §7), A then B: each timing is its own, and a
    // quota of one allocation always stops B, not a random one of the two.
    let mut relayed = Vec::new();
    for (i, (name, conn)) in pending.into_iter().enumerate() {
        let t0 = Instant::now();
        s.allocs.push(Alloc::start(name, conn, t0));
        let got = s
            .wait_each(&[i], None, |_, ev| match ev {
                Event::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                } => Some(Ok((relayed, mapped, lifetime))),
                Event::Failed(e) => Some(Err(e)),
                _ => None,
            })
            .await?;
        let a = &mut s.allocs[i];
        let Some((res, at)) = got[i].clone() else {
            return Err(Failure::new("io", "allocation did not finish"));
        };
        match res {
            Ok((r, mapped, lifetime)) => {
                let auth = session::AuthSeen::of(a.client());
                let mut detail = format!(
                    "relayed {}, mapped {mapped}, lifetime {} s",
                    join(&r),
                    lifetime.as_secs()
                );
                if let Some(au) = &auth {
                    detail += &format!(
                        ", auth {} ({}), realm {:?}",
                        au.algorithm, au.integrity, au.realm
                    );
                }
                let took = at - t0;
                out.step(step_name("allocate", a.name), took, detail);
                out.report.allocations.push(AllocationOut {
                    name: a.name,
                    local: a.conn.local_addr(),
                    relayed: r.clone(),
                    mapped,
                    lifetime_s: lifetime.as_secs(),
                    allocate_ms: udp_driver::json_ms(took),
                    realm: auth.as_ref().map(|x| x.realm.clone()),
                    password_algorithm: auth.as_ref().map(|x| x.algorithm),
                    integrity: auth.as_ref().map(|x| x.integrity),
                });
                relayed.push(r);
            }
            Err(e) => return Err(failure::from_client(&e, Doing::Allocate(a.name), &s.who)),
        }
    }

    // The peer of A, and of B the other way.
    let (peer_of_a, peer_of_b) = match args.peer {
        Some(p) => (p, None),
        None => {
            // The client reports Allocated only with a relayed address.
            let first = |i: usize| {
                relayed
                    .get(i)
                    .and_then(|r: &Vec<SocketAddr>| r.first().copied())
                    .ok_or_else(|| Failure::new("io", "allocation without a relayed address"))
            };
            (first(1)?, Some(first(0)?))
        }
    };
    out.report.peer = Some(report::PeerOut {
        address: peer_of_a,
        kind: if args.peer.is_some() {
            "given"
        } else {
            "own_allocation"
        },
    });

    // CreatePermission (RFC 8656 §9), both ways.
    let t = Instant::now();
    let mut targets = vec![(0usize, peer_of_a)];
    if let Some(p) = peer_of_b {
        targets.push((1, p));
    }
    for &(i, p) in &targets {
        let now = Instant::now();
        s.allocs[i]
            .client()
            .create_permission(p, now)
            .map_err(|e| Failure::new("usage", format!("permission for {p}: {e}")))?;
    }
    let which: Vec<usize> = targets.iter().map(|t| t.0).collect();
    let got = s
        .wait_each(&which, None, |_, ev| match ev {
            Event::PermissionCreated { peers } => Some(Ok(peers)),
            Event::PermissionFailed { peers, error } => Some(Err((peers, error, false))),
            Event::Failed(e) => Some(Err((Vec::new(), e, true))),
            _ => None,
        })
        .await?;
    for &(i, p) in &targets {
        match got[i].as_ref().map(|g| &g.0) {
            Some(Ok(_)) => {}
            Some(Err((_, e, true))) => {
                return Err(failure::from_client(
                    e,
                    Doing::Allocate(s.allocs[i].name),
                    &s.who,
                ))
            }
            Some(Err((_, e, false))) => {
                return Err(failure::from_client(
                    e,
                    Doing::Peer("permission", p),
                    &s.who,
                ))
            }
            None => return Err(Failure::new("io", "permission did not finish")),
        }
    }
    let detail: Vec<String> = targets
        .iter()
        .map(|&(i, p)| format!("{} -> {}", s.allocs[i].name, p.ip()))
        .collect();
    out.step("permission", t.elapsed(), detail.join(", "));

    // ChannelBind (RFC 8656 §11) from A to its peer only: the echo from B
    // then travels as a Send indication, so both data paths are used.
    let t = Instant::now();
    let channel = s.allocs[0]
        .client()
        .bind_channel(peer_of_a, Instant::now())
        .map_err(|e| Failure::new("usage", format!("channel to {peer_of_a}: {e}")))?;
    let got = s
        .wait_each(&[0], None, |_, ev| match ev {
            Event::ChannelBound { channel, .. } => Some(Ok(channel)),
            Event::ChannelFailed { error, .. } => Some(Err((error, false))),
            Event::Failed(e) => Some(Err((e, true))),
            _ => None,
        })
        .await?;
    match got[0].as_ref().map(|g| &g.0) {
        Some(Ok(_)) => {}
        Some(Err((e, true))) => return Err(failure::from_client(e, Doing::Allocate("A"), &s.who)),
        Some(Err((e, false))) => {
            return Err(failure::from_client(
                e,
                Doing::Peer("channel bind", peer_of_a),
                &s.who,
            ))
        }
        None => return Err(Failure::new("io", "channel bind did not finish")),
    }
    out.report.channel = Some(channel);
    out.step(
        "channel",
        t.elapsed(),
        format!("A bound channel {channel:#06x} to {peer_of_a}"),
    );

    // Round trips.
    let rt = round_trips(args, s, peer_of_a, peer_of_b).await?;
    let summary = rt.summary();
    let lost = rt.sent - rt.received;
    out.report.round_trip = Some(rt.clone());
    if rt.received == 0 {
        let message = match peer_of_b {
            None => format!(
                "no echo from {peer_of_a} through the relay after {} messages \
                 (the peer must send UDP datagrams back)",
                rt.sent
            ),
            Some(_) => format!(
                "no data came back through the relay: A sent {} messages to B's relayed address \
                 {peer_of_a}, B received {}",
                rt.sent,
                rt.b_received.unwrap_or(0)
            ),
        };
        return Err(Failure::new("no_echo", message));
    }
    out.step_text("round trip", summary);
    if lost > 0 {
        errln!(
            "warning: {lost} of {} round trips got no echo within {}",
            rt.sent,
            udp_driver::human(args.data_timeout)
        );
    }

    // Delete the allocations.
    let t = Instant::now();
    let problems = s.close(None).await?;
    out.report.closed = Some(problems.is_empty());
    if problems.is_empty() {
        let names: Vec<&str> = s.allocs.iter().map(|a| a.name).collect();
        out.step(
            "close",
            t.elapsed(),
            format!("{} deleted (Refresh, LIFETIME 0)", names.join(" and ")),
        );
    } else {
        out.step(
            "close",
            t.elapsed(),
            format!("not confirmed: {}", problems.join("; ")),
        );
        errln!(
            "warning: deleting the allocations failed: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// Send `args.count` payloads from A to `peer_of_a` and time each echo. B
/// (when it is the peer) echoes every message from A's relayed address
/// back to `peer_of_b`.
async fn round_trips(
    args: &Args,
    s: &mut Session,
    peer_of_a: SocketAddr,
    peer_of_b: Option<SocketAddr>,
) -> Result<RoundTripOut, Failure> {
    let mut rtts = Vec::new();
    let mut a_to_b = None;
    let mut b_to_a = None;
    let mut b_received = 0u32;
    let tag: u64 = rand::random();
    let wait = args.data_timeout;
    for seq in 0..args.count {
        // Payload: a run tag and the sequence number, padded; an echo of an
        // earlier (late) round never matches a later one.
        let mut payload = vec![0u8; args.size as usize];
        payload[..8].copy_from_slice(&tag.to_be_bytes());
        payload[8..12].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in payload.iter_mut().enumerate().skip(12) {
            *b = i as u8;
        }
        let sent_at = Instant::now();
        let server = s.who.server;
        let a = &mut s.allocs[0];
        a.conn
            .send_to(peer_of_a, &payload)
            .await
            .map_err(|e| match e {
                SendError::Usage(e) => Failure::new("usage", format!("allocation {}: {e}", a.name)),
                e => Failure::new("io", format!("cannot send to {server}: {e}")),
            })?;
        let got = s
            .wait(Some(sent_at + wait), |s| {
                if let (Some(back), Some(b)) = (peer_of_b, s.allocs.get_mut(1)) {
                    while let Some(d) = b.data.pop_front() {
                        if d.peer == back {
                            b_received += 1;
                            a_to_b = Some(d.channel);
                            b.queue_data(back, &d.data)?;
                        }
                    }
                }
                let a = &mut s.allocs[0];
                while let Some(d) = a.data.pop_front() {
                    if d.peer == peer_of_a && d.data == payload {
                        b_to_a = Some(d.channel);
                        return Ok(Some(d.at - sent_at));
                    }
                }
                Ok(None)
            })
            .await?;
        if let Some(rtt) = got {
            rtts.push(rtt);
        }
    }
    Ok(RoundTripOut::new(
        args.count,
        args.size,
        &rtts,
        peer_of_b.map(|_| b_received),
        peer_of_b.and(a_to_b).map(path_name),
        b_to_a.map(path_name),
    ))
}

fn path_name(channel: Option<u16>) -> &'static str {
    match channel {
        Some(_) => "ChannelData",
        None => "Data indication",
    }
}

fn step_name(step: &str, name: &str) -> String {
    format!("{step} {name}")
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

fn transport_name(t: TransportArg) -> &'static str {
    match t {
        TransportArg::Udp => "udp",
        TransportArg::Tcp => "tcp",
        TransportArg::Tls => "tls",
    }
}

/// Why the connection of an allocation could not be set up, with what to
/// try next.
fn connect_failure(
    server: SocketAddr,
    transport: TransportArg,
    e: &ConnectError,
    limit: Duration,
) -> Failure {
    let error = match e {
        ConnectError::Connection { error, .. } => error,
        e => return Failure::new("connect", e.to_string()),
    };
    let ConnectionError { kind, detail, .. } = error;
    match error.stage {
        ConnectionStage::Connect | ConnectionStage::Established => {
            let over = match transport {
                TransportArg::Tls => "TCP (for TLS)",
                _ => "TCP",
            };
            let hint = match kind {
                io::ErrorKind::ConnectionRefused => {
                    " (nothing listens there, or a firewall refuses)"
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    " (no answer: server down, or a firewall drops the packets)"
                }
                _ => "",
            };
            Failure::new(
                "connect",
                format!("cannot connect to {server} over {over}: {detail}{hint}"),
            )
        }
        ConnectionStage::Certificate => Failure::new(
            "tls",
            format!(
                "TLS handshake with {server} failed: {detail}; use --ca FILE to trust the \
                 server's CA or self-signed certificate (or --insecure to skip the check)"
            ),
        ),
        // rustls refused what the server said (an alert, a protocol
        // error): its own words say it.
        ConnectionStage::TlsHandshake if *kind == io::ErrorKind::InvalidData => Failure::new(
            "tls",
            format!("TLS handshake with {server} failed: {detail}"),
        ),
        ConnectionStage::TlsHandshake => {
            let why = match kind {
                io::ErrorKind::TimedOut => {
                    format!("no TLS answer within {}", udp_driver::secs(limit))
                }
                _ => detail.clone(),
            };
            Failure::new(
                "tls",
                format!(
                    "TLS handshake with {server} failed: {why} \
                     (is it a TLS port? try --transport tcp)"
                ),
            )
        }
    }
}
