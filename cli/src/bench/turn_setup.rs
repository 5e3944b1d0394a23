//! Setup and teardown of `natkit bench turn`'s allocations with the sans-IO
//! TURN client: many clients driven at once from one thread, a bounded number
//! of them with a request in flight, each on its own UDP socket (an
//! allocation is identified by its 5-tuple, RFC 8656 §2.2). This is not the
//! measured data path, but its pace is the allocation rate that is reported.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::turn::client::{Client, Config, Event};
use natkit_runtime::batch::{udp_socket, UdpSocketOptions};

use super::epoll::Epoll;

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

/// Where a phase stands for one allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Waiting,
    Running,
    Done,
}

/// What a phase does to each client and which event ends it.
pub trait Phase {
    /// Start the step for client `i` (queue its request).
    fn start(&mut self, i: usize, c: &mut Option<Client>, now: Instant) -> anyhow::Result<()>;
    /// Whether `e` ends the step for client `i`: `Some(Ok)` done,
    /// `Some(Err)` failed, `None` not this one.
    fn finished(&mut self, i: usize, c: &Client, e: &Event) -> Option<Result<(), String>>;
}

/// Drive every client of `clients` through `phase`, at most `window` at a
/// time, until all are done or `deadline`. Returns the phase's wall time.
/// With `tolerate_failures`, failures and the deadline end the phase early
/// instead of failing it (teardown).
pub fn drive(
    what: &str,
    socks: &[UdpSocket],
    clients: &mut [Option<Client>],
    phase: &mut dyn Phase,
    window: usize,
    deadline: Instant,
    tolerate_failures: bool,
) -> anyhow::Result<Duration> {
    let n = clients.len();
    let mut steps = vec![Step::Waiting; n];
    let mut running: Vec<usize> = Vec::with_capacity(window);
    let mut epoll = Epoll::new(256)?;
    // Only the sockets with a request in flight are watched: answers to
    // earlier phases (there are none pending) cannot starve the others.
    let mut watched = vec![false; n];
    let mut next = 0;
    let mut done = 0;
    let mut failed = 0;
    let mut buf = vec![0u8; 2048];
    let t0 = Instant::now();
    while done + failed < n {
        let now = Instant::now();
        while running.len() < window && next < n {
            phase.start(next, &mut clients[next], now)?;
            steps[next] = Step::Running;
            running.push(next);
            if !watched[next] {
                epoll.add(socks[next].as_raw_fd(), next as u64)?;
                watched[next] = true;
            }
            flush(&socks[next], clients[next].as_mut())?;
            next += 1;
        }
        if now >= deadline {
            if tolerate_failures {
                break;
            }
            bail!("{what}: {done} of {n} done when the setup timeout expired");
        }
        let ready: Vec<u64> = epoll.wait(5)?.collect();
        let now = Instant::now();
        let mut touched: Vec<usize> = ready.iter().map(|&k| k as usize).collect();
        for &i in &touched {
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            for _ in 0..16 {
                match socks[i].recv(&mut buf) {
                    Ok(len) => c.handle_input(&buf[..len], now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        bail!(
                            "{what}: the server at {} refused (ICMP port unreachable: nothing \
                             listens there)",
                            c.config().server
                        )
                    }
                    Err(e) => return Err(e).context("receive from the TURN server"),
                }
            }
        }
        for &i in &running {
            if let Some(c) = clients[i].as_mut() {
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                    touched.push(i);
                }
            }
        }
        for i in touched {
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            while let Some(e) = c.poll_event() {
                if steps[i] != Step::Running {
                    continue;
                }
                match phase.finished(i, c, &e) {
                    Some(Ok(())) => {
                        steps[i] = Step::Done;
                        done += 1;
                    }
                    Some(Err(why)) if tolerate_failures => {
                        steps[i] = Step::Done;
                        failed += 1;
                        let _ = why;
                    }
                    Some(Err(why)) => bail!("{what} #{i} failed: {why}"),
                    None => {}
                }
            }
            flush(&socks[i], Some(c))?;
        }
        running.retain(|&i| steps[i] == Step::Running);
    }
    Ok(t0.elapsed())
}

/// Send what the client queued (control messages: one send per message is
/// fine off the data path). A full socket buffer drops the message; the
/// client's retransmission timer covers it.
fn flush(sock: &UdpSocket, c: Option<&mut Client>) -> anyhow::Result<()> {
    let Some(c) = c else { return Ok(()) };
    while let Some(t) = c.poll_transmit() {
        match sock.send(&t.payload) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e).context("send to the TURN server"),
        }
    }
    Ok(())
}

/// Allocate with a fresh client.
pub struct AllocatePhase {
    /// Configuration of every client.
    pub config: Config,
}

impl Phase for AllocatePhase {
    fn start(&mut self, _i: usize, c: &mut Option<Client>, now: Instant) -> anyhow::Result<()> {
        *c = Some(Client::new(self.config.clone(), now));
        Ok(())
    }

    fn finished(&mut self, _i: usize, _c: &Client, e: &Event) -> Option<Result<(), String>> {
        match e {
            Event::Allocated { .. } => Some(Ok(())),
            Event::Failed(err) => Some(Err(err.to_string())),
            _ => None,
        }
    }
}

/// Bind a channel from client `i` to `peers[i]`.
pub struct ChannelPhase {
    /// The peer of each client.
    pub peers: Vec<SocketAddr>,
}

impl Phase for ChannelPhase {
    fn start(&mut self, i: usize, c: &mut Option<Client>, now: Instant) -> anyhow::Result<()> {
        let c = c.as_mut().context("no client")?;
        c.bind_channel(self.peers[i], now)
            .map_err(|e| anyhow::anyhow!("ChannelBind to {}: {e}", self.peers[i]))?;
        Ok(())
    }

    fn finished(&mut self, i: usize, _c: &Client, e: &Event) -> Option<Result<(), String>> {
        match e {
            Event::ChannelBound { peer, .. } if *peer == self.peers[i] => Some(Ok(())),
            Event::ChannelFailed { error, .. } => Some(Err(format!(
                "ChannelBind to {}: {error} (does the relay allow this peer?)",
                self.peers[i]
            ))),
            Event::Failed(err) => Some(Err(err.to_string())),
            _ => None,
        }
    }
}

/// Delete each allocation (Refresh with LIFETIME 0).
pub struct ClosePhase;

impl Phase for ClosePhase {
    fn start(&mut self, _i: usize, c: &mut Option<Client>, now: Instant) -> anyhow::Result<()> {
        if let Some(c) = c {
            c.close(now);
        }
        Ok(())
    }

    fn finished(&mut self, _i: usize, _c: &Client, e: &Event) -> Option<Result<(), String>> {
        match e {
            Event::Closed => Some(Ok(())),
            Event::Failed(err) => Some(Err(err.to_string())),
            _ => None,
        }
    }
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
