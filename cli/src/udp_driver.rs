//! The UDP driver shared by `natkit stun` and `natkit netcheck`: server
//! names, the local socket, and the loop that feeds a sans-IO client state
//! machine from `natkit_proto` with datagrams and time, on tokio (the CLI
//! waits on sockets one way).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::discovery::Discovery;
use natkit_proto::transaction::{self, BindingTransaction, Transmit};
use tokio::net::UdpSocket as AsyncUdpSocket;

/// Default STUN port (RFC 8489 §18.6).
pub const DEFAULT_PORT: u16 = 3478;

/// A sans-IO client the driver can run.
pub trait Machine {
    /// Next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When to call `handle_timeout` next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The clock reached `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// A datagram arrived.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);
    /// The socket reported an ICMP error (port, host or network
    /// unreachable) for datagrams sent to `to`.
    fn handle_unreachable(&mut self, now: Instant, to: SocketAddr);
    /// The overall deadline passed: stop waiting.
    fn give_up(&mut self, now: Instant);
    /// Nothing more to do.
    fn is_done(&self) -> bool;
}

/// One Binding transaction that also ends on an ICMP error or a deadline.
#[derive(Debug)]
pub struct Probe {
    /// The transaction.
    pub txn: BindingTransaction,
    /// How long after the first send the server was reported unreachable.
    pub unreachable: Option<Duration>,
    /// The overall deadline ended it.
    pub gave_up: bool,
}

impl Probe {
    /// A probe running `txn`.
    pub fn new(txn: BindingTransaction) -> Probe {
        Probe {
            txn,
            unreachable: None,
            gave_up: false,
        }
    }
}

impl Machine for Probe {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.is_done() {
            return None;
        }
        self.txn.poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        self.txn.poll_timeout()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.txn.handle_timeout(now)
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if !self.is_done() {
            self.txn.handle_datagram(now, from, datagram);
        }
    }
    fn handle_unreachable(&mut self, now: Instant, to: SocketAddr) {
        if to == self.txn.destination() && !self.is_done() {
            self.unreachable = Some(now.saturating_duration_since(self.txn.first_sent()));
        }
    }
    fn give_up(&mut self, _now: Instant) {
        if !self.is_done() {
            self.gave_up = true;
        }
    }
    fn is_done(&self) -> bool {
        self.txn.outcome().is_some() || self.unreachable.is_some() || self.gave_up
    }
}

/// Several probes on one socket, at the same time.
impl Machine for Vec<Probe> {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.iter_mut().find_map(|p| p.poll_transmit())
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.iter().filter_map(|p| p.poll_timeout()).min()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.iter_mut().for_each(|p| p.handle_timeout(now))
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.iter_mut()
            .for_each(|p| p.handle_datagram(now, from, datagram))
    }
    fn handle_unreachable(&mut self, now: Instant, to: SocketAddr) {
        self.iter_mut().for_each(|p| p.handle_unreachable(now, to))
    }
    fn give_up(&mut self, now: Instant) {
        self.iter_mut().for_each(|p| p.give_up(now))
    }
    fn is_done(&self) -> bool {
        self.iter().all(|p| p.is_done())
    }
}

impl Machine for Discovery {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Discovery::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Discovery::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Discovery::handle_timeout(self, now)
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        Discovery::handle_datagram(self, now, from, datagram)
    }
    fn handle_unreachable(&mut self, now: Instant, to: SocketAddr) {
        Discovery::handle_unreachable(self, now, to)
    }
    fn give_up(&mut self, now: Instant) {
        Discovery::give_up(self, now)
    }
    fn is_done(&self) -> bool {
        Discovery::is_done(self)
    }
}

/// [`drive`] on a one-thread tokio runtime of its own, for the commands'
/// synchronous code.
pub fn run(
    sock: UdpSocket,
    m: &mut impl Machine,
    deadline: Instant,
    progress: &Progress,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        sock.set_nonblocking(true)?;
        // Best effort: without it ICMP errors on an unconnected socket stay
        // silent and the timers decide, as before.
        let _ = icmp::enable(&sock);
        let sock = AsyncUdpSocket::from_std(sock).context("cannot use the UDP socket")?;
        drive(&sock, m, deadline, progress).await
    })
}

/// Run `m` on `sock` until it is done or `deadline` passes: send what it
/// queues, then wait for a datagram, an ICMP error, its next deadline (the
/// RFC 8489 §6.2.1 timers) or the next progress line. tokio's timers fire
/// within a millisecond of the deadline, so the schedule does not drift
/// over the retransmissions.
pub async fn drive(
    sock: &AsyncUdpSocket,
    m: &mut impl Machine,
    deadline: Instant,
    progress: &Progress,
) -> anyhow::Result<()> {
    // Larger than any datagram a Binding response can be on a sane path;
    // a larger one is truncated and then fails to parse, which is right.
    let mut buf = vec![0u8; 64 * 1024];
    let v6 = sock.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    loop {
        while let Some(t) = m.poll_transmit() {
            match sock.send_to(&t.payload, t.to).await {
                Ok(_) => {}
                // An ICMP error for an earlier datagram can surface on the
                // next send: the error queue says for whom.
                Err(e) if icmp::is_unreachable(&e) => {
                    for to in icmp::drain(sock, v6) {
                        m.handle_unreachable(Instant::now(), to);
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot send to {}", t.to)),
            }
        }
        if m.is_done() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            m.give_up(now);
            return Ok(());
        }
        let Some(next) = m.poll_timeout() else {
            // Not done and nothing to wait for cannot happen with the proto
            // machines; stop rather than block forever.
            bail!("internal error: client has nothing to wait for");
        };
        if next <= now {
            m.handle_timeout(now);
            continue;
        }
        let wake = next.min(deadline).min(progress.next());
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => m.handle_datagram(Instant::now(), from, &buf[..n]),
                Err(e) if icmp::is_unreachable(&e) => {
                    for to in icmp::drain(sock, v6) {
                        m.handle_unreachable(Instant::now(), to);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot receive"),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                progress.tick(now);
                if now >= next {
                    m.handle_timeout(now);
                }
            }
        }
    }
}

/// Progress on stderr while a command waits for answers: a line a second
/// after the first second of silence, so an unanswered probe never looks
/// like a hang.
#[derive(Debug)]
pub struct Progress {
    what: String,
    start: Instant,
    deadline: Instant,
    terminal: bool,
    printed: std::cell::Cell<u32>,
}

impl Progress {
    /// Progress for `what` ("waiting for 192.0.2.1:3478"), from now until
    /// `deadline`.
    pub fn new(what: impl Into<String>, deadline: Instant) -> Progress {
        Progress {
            what: what.into(),
            start: Instant::now(),
            deadline,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            printed: std::cell::Cell::new(0),
        }
    }

    /// When the next line is due.
    fn next(&self) -> Instant {
        self.start + Duration::from_secs(u64::from(self.printed.get()) + 1)
    }

    /// Print a line if one is due.
    fn tick(&self, now: Instant) {
        if now < self.next() {
            return;
        }
        self.printed.set(self.printed.get() + 1);
        let line = format!(
            "... {}: {} of {}",
            self.what,
            secs(now.saturating_duration_since(self.start)),
            secs(self.deadline.saturating_duration_since(self.start))
        );
        if self.terminal {
            // One line, rewritten in place, erased when done.
            err!("\r{line}\x1b[K");
        } else {
            errln!("{line}");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.terminal && self.printed.get() > 0 {
            err!("\r\x1b[K");
        }
    }
}

/// ICMP errors on an unconnected UDP socket (Linux `IP_RECVERR`, `ip(7)`):
/// the error queue names the destination of the datagram that bounced, so
/// one socket can talk to many servers and still learn which is closed.
mod icmp {
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    /// Ask the kernel to queue ICMP errors on `sock`.
    pub fn enable(sock: &impl AsRawFd) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        let on: libc::c_int = 1;
        let set = |level, name| {
            // SAFETY: a valid fd and a c_int option of the right size.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // An IPv6 socket may carry IPv4-mapped traffic too: set both.
        let v4 = set(libc::SOL_IP, libc::IP_RECVERR);
        let v6 = set(libc::SOL_IPV6, libc::IPV6_RECVERR);
        v4.or(v6)
    }

    /// Whether `e` is the socket reporting an ICMP unreachable.
    pub fn is_unreachable(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH)
        )
    }

    /// Read the error queue empty; the destinations that bounced as
    /// unreachable.
    pub fn drain(sock: &impl AsRawFd, _v6: bool) -> Vec<SocketAddr> {
        let fd = sock.as_raw_fd();
        let mut out = Vec::new();
        // Bounded: the queue is short, and a loop must end.
        for _ in 0..64 {
            // SAFETY: zeroed plain C structs; recvmsg writes within the
            // lengths given.
            let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut data = [0u8; 64];
            let mut control = [0u64; 64];
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: msg points at live buffers for the call.
            let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            if unreachable_errno(&msg) {
                if let Some(a) = to_socket_addr(&name) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Whether the queued error is an ICMP (v4 or v6) unreachable.
    fn unreachable_errno(msg: &libc::msghdr) -> bool {
        // SAFETY: walking the control messages recvmsg filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(msg);
            while !c.is_null() {
                let h = &*c;
                let ours = (h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                    || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_RECVERR);
                if ours {
                    let e: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    let icmp = e.ee_origin == libc::SO_EE_ORIGIN_ICMP
                        || e.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
                    let errno = e.ee_errno as i32;
                    return icmp
                        && matches!(
                            errno,
                            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH
                        );
                }
                c = libc::CMSG_NXTHDR(msg, c);
            }
        }
        false
    }

    fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says it is a sockaddr_in.
                let a: libc::sockaddr_in =
                    unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says it is a sockaddr_in6.
                let a: libc::sockaddr_in6 =
                    unsafe { std::ptr::read((s as *const libc::sockaddr_storage).cast()) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                let port = u16::from_be(a.sin6_port);
                // A v4-mapped destination is the IPv4 server it stands for.
                Some(match ip.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                    None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, a.sin6_scope_id)),
                })
            }
            _ => None,
        }
    }
}

/// The overall time limit and the RFC 8489 §6.2.1 retransmission flags,
/// shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct TimingArgs {
    /// Give up after this long in all (e.g. 5s, 1.5s, 500ms). An ICMP port
    /// unreachable ends the wait on that server at once.
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = crate::duration::positive)]
    pub timeout: Duration,
    /// Initial retransmission timeout (RFC 8489 §6.2.1; default: a
    /// twentieth of --timeout, at most 500ms).
    #[arg(long, value_name = "DURATION", value_parser = rto)]
    pub rto: Option<Duration>,
    /// Rc: how many times a request is sent before giving up (default: as
    /// many as fit in --timeout; netcheck: 3 per probe, so a silent server
    /// leaves time for the next).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rc: Option<u32>,
    /// Rm: after the last send, wait Rm × RTO for an answer (default: the
    /// rest of --timeout; netcheck: 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rm: Option<u32>,
}

fn rto(s: &str) -> Result<Duration, String> {
    let d = crate::duration::positive(s)?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
        return Err(format!("{s:?}: give 1ms to 60s"));
    }
    Ok(d)
}

impl TimingArgs {
    /// The initial RTO: given, else a twentieth of the timeout (250 ms for
    /// 5 s), between 10 ms and RFC 8489's 500 ms.
    pub fn rto(&self) -> Duration {
        self.rto.unwrap_or_else(|| {
            (self.timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(500))
        })
    }

    /// One transaction that may use the whole timeout: sends at 0, 1, 3,
    /// 7, 15 RTOs while they fit, then waits out the rest.
    pub fn config(&self) -> transaction::Config {
        let rto = self.rto();
        let units = (self.timeout.as_secs_f64() / rto.as_secs_f64())
            .floor()
            .max(1.0) as u64;
        // Send n goes at 2^(n-1) - 1 RTOs; keep at least one RTO to wait.
        let mut rc = 1u32;
        while rc < 7 && (1u64 << rc) - 1 < units {
            rc += 1;
        }
        let last = (1u64 << (rc - 1)) - 1;
        let rm = (units.saturating_sub(last)).clamp(1, 1000) as u32;
        transaction::Config {
            rto,
            rc: self.rc.unwrap_or(rc),
            rm: self.rm.unwrap_or(rm),
        }
    }

    /// A probe among several in one run (netcheck): three sends over 7
    /// RTOs (1.75 s with a 5 s timeout), so a silent server leaves time
    /// for the next.
    pub fn probe_config(&self) -> transaction::Config {
        transaction::Config {
            rto: self.rto(),
            rc: self.rc.unwrap_or(3),
            rm: self.rm.unwrap_or(4),
        }
    }
}

/// `SERVER[:PORT]` as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Host name or address literal (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parse `HOST`, `HOST:PORT`, `IPv4[:PORT]`, `[IPv6][:PORT]`, a bare IPv6
/// address, optionally after a `stun:` URI scheme (RFC 7064).
pub fn parse_server(s: &str) -> anyhow::Result<ServerSpec> {
    let s = s.trim();
    let s = s.strip_prefix("stun:").unwrap_or(s);
    let bad = || format!("bad server {s:?}: expected HOST[:PORT], IPv4[:PORT] or [IPv6][:PORT]");
    let port = |p: &str| -> anyhow::Result<u16> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => bail!("bad port {p:?} in server {s:?}"),
            Ok(p) => Ok(p),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').with_context(bad)?;
        host.parse::<Ipv6Addr>().with_context(bad)?;
        let port = match tail {
            "" => DEFAULT_PORT,
            t => port(t.strip_prefix(':').with_context(bad)?)?,
        };
        return Ok(ServerSpec {
            host: host.to_string(),
            port,
        });
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok(ServerSpec {
            host: s.to_string(),
            port: DEFAULT_PORT,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (s, DEFAULT_PORT),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if host.is_empty() || !host.chars().all(valid) {
        bail!(bad());
    }
    Ok(ServerSpec {
        host: host.to_string(),
        port,
    })
}

/// Resolve `spec` with the system resolver. `want_v4` picks the address
/// family when the socket's is already fixed.
pub fn resolve(spec: &ServerSpec, want_v4: Option<bool>) -> anyhow::Result<SocketAddr> {
    resolve_with(spec, want_v4, |host, port| {
        (host, port).to_socket_addrs().map(|it| it.collect())
    })
}

/// [`resolve`] with a given lookup function (tests).
pub fn resolve_with(
    spec: &ServerSpec,
    want_v4: Option<bool>,
    lookup: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>>,
) -> anyhow::Result<SocketAddr> {
    let addrs = match spec.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, spec.port)],
        Err(_) => lookup(&spec.host, spec.port)
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", spec.host))?,
    };
    let pick = match want_v4 {
        Some(v4) => addrs.iter().find(|a| a.is_ipv4() == v4),
        // Prefer IPv4 when free to choose: RFC 5780 servers with two IPv4
        // addresses are the common deployment.
        None => addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()),
    };
    match (pick, want_v4) {
        (Some(a), _) => Ok(*a),
        (None, Some(v4)) if !addrs.is_empty() => bail!(
            "{} has no {} address (all servers must use the same address family)",
            spec.host,
            if v4 { "IPv4" } else { "IPv6" }
        ),
        (None, _) => bail!("cannot resolve {}: no addresses", spec.host),
    }
}

/// Bind the UDP socket the probes go from and find its real local address.
///
/// RFC 5780 §4.3 compares the mapped address with the local one, so a
/// wildcard bind is not enough: the local IP is the one the kernel would use
/// to reach `server`, found by connecting a probe socket (which sends
/// nothing), and the real socket is bound to it.
pub fn bind_for(
    server: SocketAddr,
    bind: Option<SocketAddr>,
) -> anyhow::Result<(UdpSocket, SocketAddr)> {
    if let Some(b) = bind {
        if b.is_ipv4() != server.is_ipv4() {
            bail!("--bind {b} and server {server} are not of the same address family");
        }
    }
    let wildcard: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let port = bind.map_or(0, |b| b.port());
    let ip = match bind.map(|b| b.ip()).filter(|ip| !ip.is_unspecified()) {
        Some(ip) => ip,
        None => {
            let probe = UdpSocket::bind(SocketAddr::new(wildcard, 0))
                .context("cannot open a UDP socket")?;
            probe
                .connect(server)
                .with_context(|| format!("no route to {server}"))?;
            probe.local_addr()?.ip()
        }
    };
    let addr = SocketAddr::new(ip, port);
    let sock = UdpSocket::bind(addr).with_context(|| format!("cannot bind UDP {addr}"))?;
    let local = sock.local_addr()?;
    Ok((sock, local))
}

/// Seconds with one decimal, the way the error messages say them.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Milliseconds with microsecond precision, for JSON.
pub fn json_ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A duration for people: milliseconds below a second, else seconds.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        millis(d)
    } else {
        secs(d)
    }
}

/// Milliseconds, two decimals below 10 ms.
pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, port: u16) -> ServerSpec {
        ServerSpec {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn server_syntax() {
        assert_eq!(
            parse_server("stun.example").unwrap(),
            spec("stun.example", 3478)
        );
        assert_eq!(
            parse_server("stun.example:19302").unwrap(),
            spec("stun.example", 19302)
        );
        assert_eq!(parse_server("192.0.2.1").unwrap(), spec("192.0.2.1", 3478));
        assert_eq!(parse_server("192.0.2.1:1").unwrap(), spec("192.0.2.1", 1));
        assert_eq!(
            parse_server("[2001:db8::1]").unwrap(),
            spec("2001:db8::1", 3478)
        );
        assert_eq!(
            parse_server("[2001:db8::1]:5349").unwrap(),
            spec("2001:db8::1", 5349)
        );
        assert_eq!(
            parse_server("2001:db8::1").unwrap(),
            spec("2001:db8::1", 3478)
        );
        assert_eq!(
            parse_server("stun:localhost:9").unwrap(),
            spec("localhost", 9)
        );
        assert_eq!(spec("2001:db8::1", 3478).to_string(), "[2001:db8::1]:3478");
        for bad in [
            "",
            ":3478",
            "host:",
            "host:0",
            "host:70000",
            "[::1",
            "[::1]x",
            "[nope]:1",
            "a b",
            "h:1:2",
        ] {
            assert!(parse_server(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn resolution_errors_name_the_host() {
        let fail = |_: &str, _: u16| -> io::Result<Vec<SocketAddr>> {
            Err(io::Error::other(
                "failed to lookup address information: Name or service not known",
            ))
        };
        let e = resolve_with(&spec("stun.example", 3478), None, fail).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot resolve stun.example: failed to lookup address information: Name or service not known"
        );
        let v6only = |_: &str, p: u16| Ok(vec![SocketAddr::new("2001:db8::1".parse().unwrap(), p)]);
        let e = resolve_with(&spec("v6.example", 3478), Some(true), v6only).unwrap_err();
        assert!(e.to_string().contains("no IPv4 address"), "{e}");
        let both = |_: &str, p: u16| {
            Ok(vec![
                SocketAddr::new("2001:db8::1".parse().unwrap(), p),
                SocketAddr::new("192.0.2.1".parse().unwrap(), p),
            ])
        };
        assert_eq!(
            resolve_with(&spec("x", 7), None, both).unwrap(),
            "192.0.2.1:7".parse().unwrap()
        );
        assert_eq!(
            resolve_with(&spec("x", 7), Some(false), both).unwrap(),
            "[2001:db8::1]:7".parse().unwrap()
        );
        // Literals never reach the resolver.
        assert_eq!(
            resolve_with(&spec("127.0.0.1", 9), None, fail).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
    }

    #[test]
    fn local_address_is_concrete() {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let (_s, local) = bind_for(server, None).unwrap();
        assert_eq!(local.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_ne!(local.port(), 0);
        let (_s, local) = bind_for(server, Some("0.0.0.0:0".parse().unwrap())).unwrap();
        assert!(!local.ip().is_unspecified());
        assert!(bind_for(server, Some("[::1]:0".parse().unwrap())).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(secs(Duration::from_millis(39_500)), "39.5 s");
        assert_eq!(millis(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(millis(Duration::from_micros(12345)), "12.3 ms");
        assert_eq!(human(Duration::from_micros(12345)), "12.3 ms");
        assert_eq!(human(Duration::from_millis(3500)), "3.5 s");
        assert_eq!(json_ms(Duration::from_nanos(303_761)), 0.303);
    }
}
