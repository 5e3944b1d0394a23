//! Setup and teardown of `natkit bench turn`'s allocations: each one a
//! natkit-ice `TurnConnection` on its own UDP socket (an allocation is
//! identified by its 5-tuple, RFC 8656 §2.2), thousands of them driven from
//! one thread by a tokio runtime, a bounded number with a request in
//! flight. This is not the measured data path, but its pace is the
//! allocation rate that is reported. Afterwards the load generator takes
//! each allocation's socket and client over (`into_udp_parts`), and hands
//! them back for the deletion.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_ice::turn::{Incoming, TurnConnection};
use natkit_proto::turn::client::{Client, Config, Event};
use natkit_runtime::batch::{udp_socket, UdpSocketOptions};
use tokio::task::JoinSet;

/// Socket buffers of the generator's sockets: enough for a window of small
/// datagrams, without reserving 4 MiB each for thousands of sockets.
const SOCKET_BUFFER: usize = 1 << 20;

/// One allocation of the generator, with the socket that owns its 5-tuple.
pub struct Allocation {
    /// The TURN client state (refreshes keep running during the load).
    pub client: Client,
    /// The client socket, connected to the server.
    pub sock: UdpSocket,
    /// The relayed address.
    pub relayed: SocketAddr,
    /// Channel bound to the peer, once bound.
    pub channel: u16,
}

/// The local address for client socket `i`: a distinct 127.x.y.z address
/// per client when the server is on IPv4 loopback. Real clients come from
/// many addresses, and a relay's per-source-address limits (such as
/// natkit-turn's rate limit on 401 answers) would otherwise throttle the
/// generator's first, unauthenticated Allocate requests.
pub fn client_ip(server: SocketAddr, i: usize) -> IpAddr {
    match server.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let i = i % (250 * 250 * 250);
            IpAddr::V4(Ipv4Addr::new(
                127,
                1 + (i / 62_500) as u8,
                ((i / 250) % 250) as u8,
                1 + (i % 250) as u8,
            ))
        }
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) if super::is_loopback(IpAddr::V6(v6)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A non-blocking UDP socket bound to `local` (port chosen by the kernel).
pub fn open_socket(local: IpAddr) -> anyhow::Result<UdpSocket> {
    let opts = UdpSocketOptions {
        nonblocking: true,
        recv_buffer: Some(SOCKET_BUFFER),
        send_buffer: Some(SOCKET_BUFFER),
        ..UdpSocketOptions::default()
    };
    udp_socket(SocketAddr::new(local, 0), &opts).with_context(|| {
        format!("cannot open a UDP socket on {local} (raise `ulimit -n` for many allocations)")
    })
}

/// How a phase ended for one allocation: the connection, or why it
/// failed.
pub type Outcome = Result<Conn, String>;

/// Boxed: connections move from phase to phase, into and out of the
/// tasks; a pointer copy each time instead of half a kilobyte.
pub type Conn = Box<TurnConnection>;

/// Run `step` on every item of `items`, `window` at a time, until all are
/// done or `deadline`; returns the connections (`None` where the step
/// failed, with `tolerate_failures`) and the phase's wall time. Without
/// `tolerate_failures` the first failure or the deadline fails the phase;
/// with it (teardown) they only end it.
///
/// `window` tasks each take the next item as soon as their last one is
/// done: an item's step starts (and with it its request's timer) only
/// then, and a task per item would cost a spawn and a large allocation
/// each.
async fn drive<T, F, Fut>(
    what: &str,
    items: Vec<T>,
    window: usize,
    deadline: Instant,
    tolerate_failures: bool,
    step: F,
) -> anyhow::Result<(Vec<Option<Conn>>, Duration)>
where
    T: Send + 'static,
    F: Fn(usize, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let t0 = Instant::now();
    let n = items.len();
    let todo = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let step = Arc::new(step);
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..window.clamp(1, n.max(1)) {
        let (todo, step, done) = (todo.clone(), step.clone(), done.clone());
        workers.spawn(async move {
            let mut finished = Vec::new();
            loop {
                let next = todo.lock().expect("no worker panics holding it").next();
                let Some((i, item)) = next else {
                    return Ok(finished);
                };
                match step(i, item).await {
                    Ok(c) => {
                        finished.push((i, c));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if tolerate_failures => {}
                    Err(why) => return Err((i, why)),
                }
            }
        });
    }
    let mut out: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    loop {
        // Dropping `workers` (bail, break) aborts the ones still running.
        let (i, why) = match tokio::time::timeout_at(deadline.into(), workers.join_next()).await {
            Ok(Some(joined)) => match joined.context("a setup task panicked")? {
                Ok(finished) => {
                    for (i, c) in finished {
                        out[i] = Some(c);
                    }
                    continue;
                }
                Err(failed) => failed,
            },
            Ok(None) => break,
            Err(_) if tolerate_failures => break,
            Err(_) => bail!(
                "{what}: {} of {n} done when the setup timeout expired",
                done.load(Ordering::Relaxed)
            ),
        };
        bail!("{what} #{i} failed: {why}");
    }
    Ok((out, t0.elapsed()))
}

/// Drive `c` until `done` accepts an event, or `failed` names why one
/// ends the step (a failed client always does). ICMP port unreachable
/// fails at once: a load generator has no use for the RFC's 39.5 s of
/// retransmissions to a closed port.
async fn until(
    mut c: Conn,
    done: impl Fn(&Event) -> bool,
    failed: impl Fn(&Event) -> Option<String>,
) -> Outcome {
    loop {
        match c.next().await {
            Ok(Incoming::Event(Event::Failed(err))) => return Err(err.to_string()),
            Ok(Incoming::Event(e)) if done(&e) => return Ok(c),
            Ok(Incoming::Event(e)) => {
                if let Some(why) = failed(&e) {
                    return Err(why);
                }
            }
            Ok(Incoming::Unreachable(io::ErrorKind::ConnectionRefused)) => {
                return Err(format!(
                    "the server at {} refused (ICMP port unreachable: nothing listens there)",
                    c.server()
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{}: {e}", c.server())),
        }
    }
}

/// No event but [`Event::Failed`] fails the step.
fn no_failure(_: &Event) -> Option<String> {
    None
}

/// Drive `c` until its allocation is there.
pub async fn allocated(c: Conn) -> Outcome {
    until(c, |e| matches!(e, Event::Allocated { .. }), no_failure).await
}

/// Bind a channel from `c` to `peer` and drive it until bound.
pub async fn channel_bound(mut c: Conn, peer: SocketAddr) -> Outcome {
    c.client()
        .bind_channel(peer, Instant::now())
        .map_err(|e| format!("ChannelBind to {peer}: {e}"))?;
    let bound = |e: &Event| matches!(e, Event::ChannelBound { peer: p, .. } if *p == peer);
    let refused = |e: &Event| match e {
        Event::ChannelFailed { error, .. } => Some(format!(
            "ChannelBind to {peer}: {error} (does the relay allow this peer?)"
        )),
        _ => None,
    };
    until(c, bound, refused).await
}

/// Delete `c`'s allocation (Refresh with LIFETIME 0) and drive it until
/// the server confirmed.
pub async fn closed(mut c: Conn) -> Outcome {
    c.client().close(Instant::now());
    until(c, |e| *e == Event::Closed, no_failure).await
}

/// Allocate with a fresh client on each socket (connected to the server
/// already: connecting is not part of the allocation rate).
pub async fn allocate(
    socks: Vec<UdpSocket>,
    config: &Config,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<(Vec<Conn>, Duration)> {
    let config = config.clone();
    let (conns, took) = drive("Allocate", socks, window, deadline, false, move |_, s| {
        let client = Client::new(config.clone(), Instant::now());
        let c = TurnConnection::from_udp_parts(client, s)
            .map(Box::new)
            .map_err(|e| format!("cannot use a UDP socket with tokio: {e}"));
        async move { allocated(c?).await }
    })
    .await?;
    Ok((conns.into_iter().flatten().collect(), took))
}

/// Bind a channel from connection `i` to `peers[i]`.
pub async fn bind_channels(
    conns: Vec<Conn>,
    peers: &[SocketAddr],
    window: usize,
    deadline: Instant,
) -> anyhow::Result<(Vec<Conn>, Duration)> {
    let peers = peers.to_vec();
    let (conns, took) = drive(
        "ChannelBind",
        conns,
        window,
        deadline,
        false,
        move |i, c| channel_bound(c, peers[i]),
    )
    .await?;
    Ok((conns.into_iter().flatten().collect(), took))
}

/// Delete each allocation (Refresh with LIFETIME 0), best effort until
/// `deadline`; returns how long it took.
pub async fn close(
    allocations: Vec<Allocation>,
    window: usize,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    let (_, took) = drive(
        "Refresh (delete)",
        allocations,
        window,
        deadline,
        true,
        |_, a| {
            let c = TurnConnection::from_udp_parts(a.client, a.sock)
                .map(Box::new)
                .map_err(|e| format!("cannot take an allocation's socket back: {e}"));
            async move { closed(c?).await }
        },
    )
    .await?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn client_ips_are_distinct_loopback_addresses() {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let ips: HashSet<IpAddr> = (0..20_000).map(|i| client_ip(server, i)).collect();
        assert_eq!(ips.len(), 20_000);
        for ip in &ips {
            assert!(super::super::is_loopback(*ip), "{ip}");
            assert_ne!(*ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
            if let IpAddr::V4(v4) = ip {
                assert!(v4.octets()[3] != 0 && v4.octets()[3] != 255, "{v4}");
            }
        }
        let v6: SocketAddr = "[::1]:3478".parse().unwrap();
        assert_eq!(client_ip(v6, 5), IpAddr::V6(Ipv6Addr::LOCALHOST));
        let remote: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        assert_eq!(client_ip(remote, 5), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
}
