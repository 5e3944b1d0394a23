//! The STUN servers a diagnosis asks: the ones given, else a small default
//! list (docs/CLI.md says which support what), resolved per address family
//! so IPv4 and IPv6 each get their own run.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::udp_driver::{self, ServerSpec};

/// Public STUN servers asked when none is given (docs/CLI.md): the first
/// supports RFC 5780 (stuntman's OTHER-ADDRESS), the others answer plain
/// RFC 8489 Binding over UDP and TCP (Cloudflare) or UDP (Google), over
/// IPv4 and IPv6, and show whether the mapping varies by server.
pub const DEFAULTS: &[&str] = &[
    "stun.stunprotocol.org:3478",
    "stun.cloudflare.com:3478",
    "stun.l.google.com:19302",
];

/// Replaces [`DEFAULTS`] (comma-separated `HOST[:PORT]`): for networks
/// with their own servers, and for tests, which never reach the public
/// ones.
pub const ENV_DEFAULTS: &str = "NATKIT_STUN_SERVERS";

/// The servers to ask: `given`, else `$NATKIT_STUN_SERVERS`, else
/// [`DEFAULTS`]. The flag says which it was.
pub fn chosen(given: &[String]) -> (Vec<String>, bool) {
    if !given.is_empty() {
        return (given.to_vec(), false);
    }
    let list = match std::env::var(ENV_DEFAULTS) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => DEFAULTS.iter().map(|s| s.to_string()).collect(),
    };
    (list, true)
}

/// A server as given, and its addresses.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// As the user wrote it (normalised).
    pub spec: ServerSpec,
    /// Every address it has, IPv4 first.
    pub addrs: Vec<SocketAddr>,
}

impl Resolved {
    /// Its first address of the family (`v4`), if any.
    pub fn of_family(&self, v4: bool) -> Option<SocketAddr> {
        self.addrs.iter().copied().find(|a| a.is_ipv4() == v4)
    }
}

/// Parse and resolve each of `list`; the ones that fail come back as
/// messages (one bad name must not stop the others).
pub fn resolve_all(list: &[String]) -> (Vec<Resolved>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        match udp_driver::parse_server(s).and_then(|spec| {
            let addrs = lookup(&spec)?;
            Ok(Resolved { spec, addrs })
        }) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    (ok, bad)
}

/// Default port of STUN over TLS (RFC 8489 §18.6, "stuns").
pub const TLS_PORT: u16 = 5349;

/// [`resolve_all`] for `stuns:HOST[:PORT]` entries (RFC 7064), port 5349
/// unless written.
pub fn resolve_tls_all(list: &[String]) -> (Vec<Resolved>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for s in list {
        let hostport = s.trim().trim_start_matches("stuns:");
        match udp_driver::parse_server(hostport).and_then(|mut spec| {
            if !hostport.ends_with(&format!(":{}", spec.port)) {
                spec.port = TLS_PORT;
            }
            let addrs = lookup(&spec)?;
            Ok(Resolved { spec, addrs })
        }) {
            Ok(r) => ok.push(r),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    (ok, bad)
}

fn lookup(spec: &ServerSpec) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = match spec.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, spec.port)],
        Err(_) => (spec.host.as_str(), spec.port)
            .to_socket_addrs()
            .map(|it| it.collect())
            .map_err(|e: io::Error| anyhow::anyhow!("cannot resolve {}: {e}", spec.host))?,
    };
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    if addrs.is_empty() {
        anyhow::bail!("cannot resolve {}: no addresses", spec.host);
    }
    Ok(addrs)
}

/// The address families to run: both unless `-4`/`-6` or `--bind` say one.
pub fn families(only_v4: bool, only_v6: bool, bind: Option<SocketAddr>) -> Vec<bool> {
    match (only_v4, only_v6, bind) {
        (_, _, Some(b)) => vec![b.is_ipv4()],
        (true, false, _) => vec![true],
        (false, true, _) => vec![false],
        _ => vec![true, false],
    }
}

/// `IP` or `IP:PORT` for `--bind` (the local address to send from; port 0,
/// any, when not given): the same meaning on every command.
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip = t.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 0))
        .map_err(|_| format!("{s:?}: expected IP or IP:PORT ([IPv6]:PORT)"))
}

/// The name of an address family.
pub fn family_name(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_spellings() {
        assert_eq!(parse_bind("127.0.0.1"), Ok("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            parse_bind("127.0.0.1:9"),
            Ok("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(parse_bind("::1"), Ok("[::1]:0".parse().unwrap()));
        assert_eq!(parse_bind("[::1]"), Ok("[::1]:0".parse().unwrap()));
        assert_eq!(parse_bind("[::1]:7"), Ok("[::1]:7".parse().unwrap()));
        assert!(parse_bind("host").is_err());
    }

    #[test]
    fn families_follow_the_flags() {
        assert_eq!(families(false, false, None), vec![true, false]);
        assert_eq!(families(true, false, None), vec![true]);
        assert_eq!(families(false, true, None), vec![false]);
        let b = "[::1]:0".parse().ok();
        assert_eq!(families(false, false, b), vec![false]);
    }

    #[test]
    fn defaults_parse() {
        for s in DEFAULTS {
            udp_driver::parse_server(s).unwrap();
        }
        let (list, default) = chosen(&["x:1".to_string()]);
        assert_eq!((list, default), (vec!["x:1".to_string()], false));
    }
}
