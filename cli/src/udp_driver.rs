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
    /// Nothing more to do.
    fn is_done(&self) -> bool;
}

impl Machine for BindingTransaction {
    fn poll_transmit(&mut self) -> Option<Transmit> {
        BindingTransaction::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        BindingTransaction::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) {
        BindingTransaction::handle_timeout(self, now)
    }
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        BindingTransaction::handle_datagram(self, now, from, datagram);
    }
    fn is_done(&self) -> bool {
        self.outcome().is_some()
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
    fn is_done(&self) -> bool {
        Discovery::is_done(self)
    }
}

/// [`drive`] on a one-thread tokio runtime of its own, for the commands'
/// synchronous code.
pub fn run(sock: UdpSocket, m: &mut impl Machine) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        sock.set_nonblocking(true)?;
        let sock = AsyncUdpSocket::from_std(sock).context("cannot use the UDP socket")?;
        drive(&sock, m).await
    })
}

/// Run `m` on `sock` until it is done: send what it queues, then wait for
/// a datagram or its next deadline (the RFC 8489 §6.2.1 timers), nothing
/// else. tokio's timers fire within a millisecond of the deadline, so the
/// schedule does not drift over the retransmissions.
pub async fn drive(sock: &AsyncUdpSocket, m: &mut impl Machine) -> anyhow::Result<()> {
    // Larger than any datagram a Binding response can be on a sane path;
    // a larger one is truncated and then fails to parse, which is right.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(t) = m.poll_transmit() {
            sock.send_to(&t.payload, t.to)
                .await
                .with_context(|| format!("cannot send to {}", t.to))?;
        }
        if m.is_done() {
            return Ok(());
        }
        let Some(deadline) = m.poll_timeout() else {
            // Not done and nothing to wait for cannot happen with the proto
            // machines; stop rather than block forever.
            bail!("internal error: client has nothing to wait for");
        };
        let now = Instant::now();
        if deadline <= now {
            m.handle_timeout(now);
            continue;
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => m.handle_datagram(Instant::now(), from, &buf[..n]),
                // ICMP errors reported on the socket, signals: the timers
                // decide when to give up, not a single error.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("cannot receive"),
            },
            _ = tokio::time::sleep_until(deadline.into()) => m.handle_timeout(Instant::now()),
        }
    }
}

/// RFC 8489 §6.2.1 retransmission flags, shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct TimingArgs {
    /// Initial retransmission timeout in milliseconds (RFC 8489 §6.2.1: 500).
    #[arg(long, value_name = "MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub rto_ms: u64,
    /// Rc: how many times a request is sent before giving up.
    #[arg(long, value_name = "N", default_value_t = 7,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rc: u32,
    /// Rm: after the last send, wait Rm × RTO for an answer.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rm: u32,
}

impl TimingArgs {
    /// The transaction configuration.
    pub fn config(&self) -> transaction::Config {
        transaction::Config {
            rto: Duration::from_millis(self.rto_ms),
            rc: self.rc,
            rm: self.rm,
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
