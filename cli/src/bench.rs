//! `natkit bench`: load generators that measure a server, not themselves.
//!
//! A weak generator (one request per system call, one socket, one thread)
//! tops out near 30k requests/s on a small machine and reports that as the
//! server's limit. These generators batch with sendmmsg/recvmmsg, keep a
//! window of requests in flight on several connected sockets per thread, and
//! sleep in tokio's reactor when the window is full so the server gets the
//! CPU.

mod flood;
mod histogram;
mod memory;
mod readiness;
mod stun;
mod turn;
mod turn_load;
mod turn_setup;
mod window;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

pub use flood::FloodArgs;
pub use stun::StunArgs;
pub use turn::TurnArgs;

/// Longest run accepted: every load loop is bounded in time.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// `natkit bench` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Binding requests per second and latency percentiles of a STUN server.
    #[command(after_help = crate::examples::BENCH_STUN)]
    Stun(StunArgs),
    /// Relayed packets per second, loss and round-trip latency of a TURN
    /// relay (ChannelData to peers and back), and its allocation rate.
    #[command(after_help = crate::examples::BENCH_TURN)]
    Turn(TurnArgs),
    /// A TURN relay under unauthenticated UDP and TCP floods: an existing
    /// allocation's loss, Binding answers, new users' allocations and the
    /// relay's memory, before and during the floods.
    #[command(after_help = crate::examples::BENCH_FLOOD)]
    Flood(FloodArgs),
}

impl Command {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Command::Stun(a) => a.json,
            Command::Turn(a) => a.json,
            Command::Flood(a) => a.json,
        }
    }
}

/// The load generators' credentials: REST ones from the secret (flag,
/// `NATKIT_TURN_SECRET` or file; valid for the whole run and then some),
/// else the static user's password.
pub fn credentials(
    user: &str,
    password: (Option<&str>, Option<&std::path::Path>),
    secret: (Option<&str>, Option<&std::path::Path>),
) -> anyhow::Result<natkit_proto::turn::client::Credentials> {
    use natkit_proto::turn::client::Credentials;
    let secret = crate::secret::resolve(secret.0, secret.1, "--secret-file")?;
    let password = crate::secret::resolve(password.0, password.1, "--password-file")?;
    Ok(match secret {
        Some(s) => Credentials::from_rest_secret(
            s.as_bytes(),
            user,
            Duration::from_secs(24 * 3600),
            std::time::SystemTime::now(),
        ),
        None => Credentials::new(user, password.unwrap_or_default()),
    })
}

/// Run a benchmark subcommand.
pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Stun(a) => stun::run(a),
        Command::Turn(a) => turn::run(a),
        Command::Flood(a) => flood::run(a),
    }
}

/// The shared duration spelling (see [`crate::duration`]).
pub use crate::duration::parse as parse_duration;

/// Like [`parse_duration`], refusing zero and anything above [`MAX_DURATION`].
pub fn parse_run_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s} is above the {}s limit",
            MAX_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// Resolve `HOST[:PORT]` (default `default_port`) to one address.
pub fn resolve(target: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = target
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if target
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target:?}"))?
        .next()
        .with_context(|| format!("{target:?} resolved to no address"))
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuse to load anything but loopback unless the user opted in: a load
/// generator pointed at someone else's server is a denial-of-service tool.
pub fn check_target(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if !allow_remote && !is_loopback(addr.ip()) {
        bail!(
            "{addr} is not a loopback address; load-test only servers you run, and pass \
             --allow-remote to confirm"
        );
    }
    Ok(())
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_run_duration("0s").is_err());
        assert!(parse_run_duration("601s").is_err());
        assert_eq!(parse_run_duration("600s"), Ok(MAX_DURATION));
    }

    #[test]
    fn targets() {
        assert_eq!(
            resolve("127.0.0.1", 3478).unwrap(),
            "127.0.0.1:3478".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1:9", 3478).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]", 3478).unwrap(),
            "[::1]:3478".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]:7", 3478).unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(resolve("localhost:7", 3478).unwrap().port(), 7);
        for ok in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(check_target(ok.parse().unwrap(), false).is_ok(), "{ok}");
        }
        for remote in ["192.0.2.1:3478", "[2001:db8::1]:3478", "0.0.0.0:1"] {
            let a: SocketAddr = remote.parse().unwrap();
            assert!(check_target(a, false).is_err(), "{remote}");
            assert!(check_target(a, true).is_ok(), "{remote}");
        }
    }
}
