//! Configuration: one schema, three sources. Every key can be set in the TOML
//! file (`--config`), as a flag, or as a `NATKIT_STUN_*` environment variable;
//! flags and env vars win over the file, the file over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use natkit_runtime::logging::LogFormat;
use serde::Deserialize;

use crate::responder::Endpoint;

/// Default STUN port (RFC 8489 §18.1).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3478";

/// natkit-stun: a STUN server (RFC 8489) with RFC 5780 NAT behavior discovery.
#[derive(Debug, Parser, Default)]
#[command(name = "natkit-stun", version, about)]
pub struct Args {
    /// TOML config file; flags and env vars override its keys.
    #[arg(long, env = "NATKIT_STUN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to answer on, over UDP and TCP (repeatable) [default: 0.0.0.0:3478]
    #[arg(long, env = "NATKIT_STUN_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Alternate address and port for RFC 5780 (turns on CHANGE-REQUEST,
    /// RESPONSE-ORIGIN, OTHER-ADDRESS). Pairs with the first --listen address.
    #[arg(long, env = "NATKIT_STUN_OTHER")]
    pub other: Option<SocketAddr>,

    /// Address for STUN over TLS (repeatable; needs --cert and --key).
    #[arg(long, env = "NATKIT_STUN_TLS_LISTEN", value_delimiter = ',')]
    pub tls_listen: Vec<SocketAddr>,

    /// PEM certificate chain for TLS.
    #[arg(long, env = "NATKIT_STUN_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM private key for TLS.
    #[arg(long, env = "NATKIT_STUN_KEY")]
    pub key: Option<PathBuf>,

    /// Serve Prometheus metrics at /metrics and health at /healthz on this address.
    #[arg(long, env = "NATKIT_STUN_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// Log format: text or json [default: text]
    #[arg(long, env = "NATKIT_STUN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// UDP worker threads per socket [default: number of cores]
    #[arg(long, env = "NATKIT_STUN_THREADS")]
    pub threads: Option<usize>,

    /// Answer over TCP on the --listen addresses: true or false [default: true]
    #[arg(long, env = "NATKIT_STUN_TCP")]
    pub tcp: Option<bool>,

    /// Close TCP/TLS connections idle this many seconds [default: 30]
    #[arg(long, env = "NATKIT_STUN_TCP_IDLE_TIMEOUT")]
    pub tcp_idle_timeout: Option<u64>,

    /// Most TCP/TLS connections open at once [default: 4096]
    #[arg(long, env = "NATKIT_STUN_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,

    /// Validate the configuration and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file's schema: the same keys as the flags, in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub other: Option<SocketAddr>,
    pub tls_listen: Option<Vec<SocketAddr>>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub threads: Option<usize>,
    pub tcp: Option<bool>,
    pub tcp_idle_timeout: Option<u64>,
    pub max_tcp_connections: Option<usize>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub other: Option<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// The `cert` and `key` files; `natkit_runtime::config::load_tls` loads them.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub threads: usize,
    pub tcp: bool,
    pub tcp_idle_timeout: Duration,
    pub max_tcp_connections: usize,
}

impl Config {
    /// Merge flags/env over the file over the defaults, and validate.
    pub fn resolve(args: &Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => natkit_runtime::config::load_toml(p)?,
            None => FileConfig::default(),
        };
        let listen = match (args.listen.is_empty(), file.listen) {
            (false, _) => args.listen.clone(),
            (true, Some(l)) => l,
            (true, None) => vec![DEFAULT_LISTEN.parse().expect("valid default")],
        };
        let tls_listen = if args.tls_listen.is_empty() {
            file.tls_listen.unwrap_or_default()
        } else {
            args.tls_listen.clone()
        };
        let cert = args.cert.clone().or(file.cert);
        let key = args.key.clone().or(file.key);
        let cfg = Config {
            listen,
            other: args.other.or(file.other),
            tls: match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => bail!("cert is set but key is not: TLS needs both"),
                (None, Some(_)) => bail!("key is set but cert is not: TLS needs both"),
            },
            tls_listen,
            metrics: args.metrics.or(file.metrics),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            threads: args
                .threads
                .or(file.threads)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            tcp: args.tcp.or(file.tcp).unwrap_or(true),
            tcp_idle_timeout: Duration::from_secs(
                args.tcp_idle_timeout
                    .or(file.tcp_idle_timeout)
                    .unwrap_or(30),
            ),
            max_tcp_connections: args
                .max_tcp_connections
                .or(file.max_tcp_connections)
                .unwrap_or(4096),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() {
            bail!("listen: at least one address is needed");
        }
        if !self.tls_listen.is_empty() && self.tls.is_none() {
            bail!("tls-listen is set but cert and key are not: TLS needs both");
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("threads: {} is out of range (1-256)", self.threads);
        }
        if self.tcp_idle_timeout.is_zero() {
            bail!("tcp-idle-timeout: must be at least 1 second");
        }
        if self.max_tcp_connections == 0 {
            bail!("max-tcp-connections: must be at least 1");
        }
        if let Some(other) = self.other {
            let primary = self.listen[0];
            if other.is_ipv4() != primary.is_ipv4() {
                bail!("other: {other} and the first listen address {primary} must be of the same IP family");
            }
            if other.ip() == primary.ip() || other.port() == primary.port() {
                bail!("other: {other} must differ from {primary} in both address and port (RFC 5780 §4.1)");
            }
            if primary.ip().is_unspecified() || other.ip().is_unspecified() {
                bail!("other: RFC 5780 needs concrete addresses, not {}: responses must come from a known address", primary.ip());
            }
            if primary.port() == 0 || other.port() == 0 {
                bail!("other: RFC 5780 needs fixed ports, not 0");
            }
        }
        Ok(())
    }

    /// Every UDP/TCP endpoint the server binds. With `other`, the first
    /// listen address becomes the RFC 5780 square of four.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut v = Vec::new();
        let mut rest = &self.listen[..];
        if let Some(o) = self.other {
            let p = self.listen[0];
            for (a, ip) in [(0u8, p.ip()), (1, o.ip())] {
                for (q, port) in [(0u8, p.port()), (1, o.port())] {
                    v.push(Endpoint {
                        addr: SocketAddr::new(ip, port),
                        rfc5780: Some((a, q)),
                    });
                }
            }
            rest = &self.listen[1..];
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
        Config::resolve(&Args::try_parse_from(v)?)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.listen,
            vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert!(c.tcp);
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
        assert_eq!(c.listen[0].port(), 4000);
        assert!(!c.tcp);
        assert_eq!(c.threads, 2);

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
}
