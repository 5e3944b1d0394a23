//! Configuration: natkit-stun's keys, each defined once. The shared ones (listen, TLS,
//! metrics, logging, threads, TCP limits) are `natkit_runtime::config::Common`; `other` is
//! natkit-stun's own. Every key is a flag, a `NATKIT_STUN_*` environment variable and a key of
//! the TOML file (`--config`); flags win over environment variables, those over the file, the
//! file over the defaults (see `natkit_runtime::config`).

use std::net::SocketAddr;
use std::path::PathBuf;

use natkit_runtime::config::{CommandLine, Common, Schema, Settings};

use crate::responder::Endpoint;

natkit_runtime::settings! {
    /// natkit-stun's own keys.
    pub struct StunKeys {
        /// Alternate address and port for RFC 5780 (turns on CHANGE-REQUEST, RESPONSE-ORIGIN,
        /// OTHER-ADDRESS). Pairs with the first listen address.
        other: Option<SocketAddr> ["IP:PORT"] = (_, "off (no RFC 5780)");
    }
}

/// natkit-stun's configuration interface: the shared keys with its own defaults (a Binding
/// exchange is short: connections idle for 30 s are closed), and its own keys.
pub fn schema() -> Schema {
    Schema::new(
        "natkit-stun",
        env!("CARGO_PKG_VERSION"),
        "natkit-stun: a STUN server (RFC 8489) with RFC 5780 NAT behavior discovery.",
        "NATKIT_STUN",
    )
    .with::<Common>()
    .with::<StunKeys>()
    .default_of("tcp-idle-timeout", "30")
    .default_of("max-tcp-connections", "4096")
    .examples(EXAMPLES)
}

/// The end of `natkit-stun --help`. A test runs each line with `--check-config` (in a
/// directory holding the files they name), so they stay runnable.
pub const EXAMPLES: &str = "\
Examples:
  natkit-stun --listen 0.0.0.0:3478                 # plain STUN over UDP and TCP
  natkit-stun --listen 192.0.2.1:3478 --other 192.0.2.2:3479
                                                    # RFC 5780: NAT behavior discovery
  natkit-stun --tls-listen 0.0.0.0:5349 --cert cert.pem --key key.pem
                                                    # STUN over TLS as well
  natkit-stun --listen 0.0.0.0:3478 --metrics 127.0.0.1:9101 --log-format json
  NATKIT_STUN_LISTEN=0.0.0.0:3478 natkit-stun       # any flag as an environment variable
  natkit-stun --config stun.toml --check-config     # validate a config file and exit

Each flag is also a NATKIT_STUN_* variable and a key of the --config file;
the reference table is in the README (natkit-stun --print-config-reference).";

/// The command line and environment, parsed once (`schema().parse()`).
pub type Args = CommandLine;

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The keys both servers have.
    pub common: Common,
    /// natkit-stun's own keys.
    pub stun: StunKeys,
    /// The `cert` and `key` files; `natkit_runtime::config::load_tls` loads them.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// Resolves every key from its sources (reading the file `args` names) and validates.
    pub fn resolve(args: &Args) -> anyhow::Result<Config> {
        let s = args.sources()?;
        let common = Common::resolve(&s)?;
        let stun = StunKeys::resolve(&s)?;
        let tls = common.validate(&s)?;
        if let Some(other) = stun.other {
            let primary = common.listen[0];
            let why = if other.is_ipv4() != primary.is_ipv4() {
                Some(format!(
                    "{other} and the first listen address {primary} must be of the same IP family"
                ))
            } else if other.ip() == primary.ip() || other.port() == primary.port() {
                Some(format!(
                    "{other} must differ from {primary} in both address and port (RFC 5780 §4.1)"
                ))
            } else if primary.ip().is_unspecified() || other.ip().is_unspecified() {
                Some(format!("RFC 5780 needs concrete addresses, not {}: responses must come from a known address", primary.ip()))
            } else if primary.port() == 0 || other.port() == 0 {
                Some("RFC 5780 needs fixed ports, not 0".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                return Err(s.rule("other", why).into());
            }
        }
        Ok(Config { common, stun, tls })
    }

    /// Every UDP/TCP endpoint the server binds. With `other`, the first
    /// listen address becomes the RFC 5780 square of four.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut v = Vec::new();
        let listen = &self.common.listen;
        let mut rest = &listen[..];
        if let Some(o) = self.stun.other {
            let p = listen[0];
            for (a, ip) in [(0u8, p.ip()), (1, o.ip())] {
                for (q, port) in [(0u8, p.port()), (1, o.port())] {
                    v.push(Endpoint {
                        addr: SocketAddr::new(ip, port),
                        rfc5780: Some((a, q)),
                    });
                }
            }
            rest = &listen[1..];
        }
        v.extend(rest.iter().map(|&addr| Endpoint {
            addr,
            rfc5780: None,
        }));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let mut v = vec!["natkit-stun"];
        v.extend_from_slice(args);
        Config::resolve(&schema().try_parse_from(v)?)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.common.listen,
            vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.common.tcp);
        // natkit-stun's own defaults of shared keys.
        assert_eq!(
            c.common.tcp_idle_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(c.common.max_tcp_connections, 4096);
        assert_eq!(c.endpoints().len(), 1);
    }

    #[test]
    fn rfc5780_square() {
        let c = parse(&["--listen", "127.0.0.1:3478", "--other", "127.0.0.2:3479"]).unwrap();
        let e: Vec<String> = c.endpoints().iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            e,
            [
                "127.0.0.1:3478",
                "127.0.0.1:3479",
                "127.0.0.2:3478",
                "127.0.0.2:3479"
            ]
        );
        assert!(parse(&["--listen", "127.0.0.1:3478", "--other", "127.0.0.2:3478"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:3478", "--other", "[::1]:3479"]).is_err());
        assert!(parse(&["--listen", "0.0.0.0:3478", "--other", "127.0.0.2:3479"]).is_err());
    }

    #[test]
    fn file_and_flags_merge_and_bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("natkit-stun-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "listen = [\"127.0.0.1:4000\"]\ntcp = false\nthreads = 3\n",
        )
        .unwrap();
        let c = parse(&["--config", good.to_str().unwrap(), "--threads", "2"]).unwrap();
        assert_eq!(c.common.listen[0].port(), 4000);
        assert!(!c.common.tcp);
        assert_eq!(c.common.threads, 2);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "listen = [\"127.0.0.1:4000\"]\nlisen = 1\n").unwrap();
        let e = format!(
            "{:#}",
            parse(&["--config", bad.to_str().unwrap()]).unwrap_err()
        );
        assert!(e.contains("lisen"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_needs_cert_and_key() {
        assert!(parse(&["--tls-listen", "127.0.0.1:5349"]).is_err());
        assert!(parse(&["--cert", "/x.pem"]).is_err());
    }

    /// The README's configuration table is the schema's reference, so it lists every key
    /// with its flag, variable, default and documentation as the binary has them.
    #[test]
    fn the_readme_table_is_generated_from_the_schema() {
        let stale = schema().stale_reference(include_str!("../../README.md"));
        assert!(stale.is_none(), "README.md: {}", stale.unwrap_or_default());
    }
}
