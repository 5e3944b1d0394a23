//! Configuration: one schema, three sources. Every key can be set in the
//! TOML file (`--config`), as a flag, or as a `NATKIT_TURN_*` environment
//! variable (the flag's name in upper case with `_`, e.g. `--min-port` is
//! `NATKIT_TURN_MIN_PORT` and `min-port` in the file). Flags and env vars
//! win over the file, the file over the defaults. A list given as a flag
//! or env var replaces the file's list whole (lists are not merged).
//!
//! Repeatable keys take several flags (`--listen A --listen B`) or one
//! comma-separated value (`--listen A,B`, which is also how their env vars
//! hold several), except `--user` and `--auth-secret`, whose values may
//! contain commas: their env vars hold one value each; use the file for
//! more.
//!
//! Users are `--user NAME:PASS` on the command line and a table in the file:
//!
//! ```toml
//! realm = "example.org"
//! relay-ip = ["203.0.113.5"]
//! auth-secret = ["current-secret", "previous-secret"]
//!
//! [users]
//! alice = "correct horse"
//! bob = "battery staple"
//! ```
//!
//! REST secrets can also come from a file (`auth-secret-file`), one per
//! line, re-read on every SIGHUP: on Kubernetes a Secret mounted as a file
//! can then list the old and the new secret during a rotation, which one
//! environment variable cannot (see [`read_secret_file`]). The list and
//! the file are two forms of one setting: given as a flag or env var,
//! either replaces both forms in the config file; both forms at the same
//! level are refused.
//!
//! Passwords and secrets are [`Secret`]s: their `Debug` prints
//! `<redacted>`, they have no `Display`, and parse errors never repeat
//! them, so neither `{:?}` of [`Args`] / [`Config`] nor an error message
//! leaks them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use ipnet::IpNet;
use natkit_proto::nonce::NonceKey;
use natkit_proto::rest::RestSecrets;
use natkit_proto::turn::server::{self as core, Credentials};
use natkit_runtime::logging::LogFormat;
use serde::{Deserialize, Deserializer};

use crate::peer_policy::{self, PeerPolicy};

/// Default listen address: the TURN port (RFC 8656 §4) on every IPv4 address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3478";
/// Default REALM.
pub const DEFAULT_REALM: &str = "natkit";
/// Default relay port range: the IANA dynamic ports (RFC 6335 §6), as
/// RFC 8656 §7.2 suggests.
pub const DEFAULT_MIN_PORT: u16 = 49152;
/// See [`DEFAULT_MIN_PORT`].
pub const DEFAULT_MAX_PORT: u16 = 65535;
/// RFC 8656 §7.2: the default allocation lifetime (10 minutes); also the
/// least `max-lifetime` can be, since the core never grants less.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §12: channel numbers 0x4000 through 0x4FFF.
pub const MAX_CHANNEL_NUMBERS: usize = 0x1000;
/// Largest `unauth-rate`: the limiter's buckets hold bursts of up to a
/// million answers (4x the rate).
pub const MAX_UNAUTH_RATE: u32 = 100_000;
/// Smallest non-zero `bandwidth`: one full-size (1500-byte) packet per
/// second. The budget refills every second, so a datagram larger than it
/// could never be relayed.
pub const MIN_BANDWIDTH: u64 = 1500;

/// natkit-turn: a TURN relay (RFC 8656, RFC 6156), secure by default.
#[derive(Debug, Parser, Default)]
#[command(name = "natkit-turn", version, about)]
pub struct Args {
    /// TOML config file; flags and env vars override its keys.
    #[arg(long, env = "NATKIT_TURN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address for clients, over UDP and TCP (repeatable) [default: 0.0.0.0:3478]
    #[arg(long, env = "NATKIT_TURN_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Also answer over TCP on the --listen addresses: true or false [default: true]
    #[arg(long, env = "NATKIT_TURN_TCP")]
    pub tcp: Option<bool>,

    /// Address for TURN over TLS (repeatable; needs --cert and --key).
    #[arg(long, env = "NATKIT_TURN_TLS_LISTEN", value_delimiter = ',')]
    pub tls_listen: Vec<SocketAddr>,

    /// PEM certificate chain for TLS.
    #[arg(long, env = "NATKIT_TURN_CERT")]
    pub cert: Option<PathBuf>,

    /// PEM private key for TLS.
    #[arg(long, env = "NATKIT_TURN_KEY")]
    pub key: Option<PathBuf>,

    /// REALM of the long-term credentials [default: natkit]
    #[arg(long, env = "NATKIT_TURN_REALM")]
    pub realm: Option<String>,

    /// Static user (repeatable). In the file: a `[users]` table, name = "password".
    #[arg(
        long,
        env = "NATKIT_TURN_USER",
        value_name = "NAME:PASS",
        hide_env_values = true
    )]
    pub user: Vec<Secret>,

    /// Shared secret for REST credentials (repeatable, for rotation: the
    /// first signs, all verify).
    #[arg(
        long,
        env = "NATKIT_TURN_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub auth_secret: Vec<Secret>,

    /// File of REST shared secrets, one per line (blank lines and lines
    /// starting with `#` ignored): the first is the one new credentials
    /// are expected to be signed with, every line verifies. Re-read on
    /// SIGHUP. Instead of --auth-secret, not with it; either of them
    /// replaces the config file's `auth-secret` and `auth-secret-file`.
    #[arg(long, env = "NATKIT_TURN_AUTH_SECRET_FILE", value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,

    /// Address relay sockets bind to (repeatable: at most one IPv4 and one
    /// IPv6) [default: the IP of the concrete --listen addresses]
    #[arg(long, env = "NATKIT_TURN_RELAY_IP", value_delimiter = ',')]
    pub relay_ip: Vec<IpAddr>,

    /// Address advertised to clients behind a 1:1 NAT, EXT or EXT/INT where
    /// INT is the relay IP it maps to (repeatable, one per family).
    #[arg(
        long,
        env = "NATKIT_TURN_EXTERNAL_IP",
        value_delimiter = ',',
        value_name = "EXT[/INT]"
    )]
    pub external_ip: Vec<ExternalIp>,

    /// Lowest relay port [default: 49152]
    #[arg(long, env = "NATKIT_TURN_MIN_PORT")]
    pub min_port: Option<u16>,

    /// Highest relay port [default: 65535]
    #[arg(long, env = "NATKIT_TURN_MAX_PORT")]
    pub max_port: Option<u16>,

    /// Peer range to allow although the default deny list has it, CIDR or
    /// bare IP (repeatable; e.g. 127.0.0.0/8 for tests on loopback).
    #[arg(
        long,
        env = "NATKIT_TURN_ALLOW_PEER",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_peer: Vec<PeerNet>,

    /// Peer range to deny, CIDR or bare IP (repeatable; wins over --allow-peer).
    #[arg(
        long,
        env = "NATKIT_TURN_DENY_PEER",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub deny_peer: Vec<PeerNet>,

    /// Most allocations on the relay [default: 10000]
    #[arg(long, env = "NATKIT_TURN_MAX_ALLOCATIONS")]
    pub max_allocations: Option<usize>,

    /// Most allocations per user [default: 100]
    #[arg(long, env = "NATKIT_TURN_USER_QUOTA")]
    pub user_quota: Option<usize>,

    /// Most permissions per allocation [default: 32]
    #[arg(long, env = "NATKIT_TURN_MAX_PERMISSIONS")]
    pub max_permissions: Option<usize>,

    /// Most channels per allocation [default: 32]
    #[arg(long, env = "NATKIT_TURN_MAX_CHANNELS")]
    pub max_channels: Option<usize>,

    /// Bytes per second per allocation, each direction counted; suffixes
    /// K, M, G (x1000) and Ki, Mi, Gi (x1024); 0 = unlimited [default: 0]
    #[arg(long, env = "NATKIT_TURN_BANDWIDTH")]
    pub bandwidth: Option<Bandwidth>,

    /// Unauthenticated answers (401, 438) per second per source IP, burst
    /// 4x, over all threads; a port answered in the last second gets more
    /// only from the upper half (the rest is for the address's other
    /// ports). Clients answering with a nonce issued to their own address
    /// are charged to their address and port instead. 0 = unlimited
    /// [default: 20]
    #[arg(long, env = "NATKIT_TURN_UNAUTH_RATE")]
    pub unauth_rate: Option<u32>,

    /// Longest allocation lifetime granted, in seconds [default: 3600]
    #[arg(long, env = "NATKIT_TURN_MAX_LIFETIME")]
    pub max_lifetime: Option<u64>,

    /// Seconds a nonce stays fresh before 438 Stale Nonce [default: 600]
    #[arg(long, env = "NATKIT_TURN_NONCE_TTL")]
    pub nonce_ttl: Option<u64>,

    /// Serve Prometheus metrics at /metrics and health at /healthz on this address.
    #[arg(long, env = "NATKIT_TURN_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// Log format: text or json [default: text]
    #[arg(long, env = "NATKIT_TURN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Worker threads [default: number of cores]
    #[arg(long, env = "NATKIT_TURN_THREADS")]
    pub threads: Option<usize>,

    /// Close TCP/TLS client connections idle this many seconds [default: 300]
    #[arg(long, env = "NATKIT_TURN_TCP_IDLE_TIMEOUT")]
    pub tcp_idle_timeout: Option<u64>,

    /// Most TCP/TLS client connections open at once [default: 10000]
    #[arg(long, env = "NATKIT_TURN_MAX_TCP_CONNECTIONS")]
    pub max_tcp_connections: Option<usize>,

    /// Seconds SIGTERM keeps relaying existing allocations (new ones are
    /// refused) before exiting [default: 30]
    #[arg(long, env = "NATKIT_TURN_DRAIN_GRACE")]
    pub drain_grace: Option<u64>,

    /// Validate the configuration and exit without serving.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file's schema: the same keys as the flags, in kebab-case,
/// except `--user NAME:PASS`, which is the `[users]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub tcp: Option<bool>,
    pub tls_listen: Option<Vec<SocketAddr>>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub realm: Option<String>,
    /// name = "password"
    pub users: Option<BTreeMap<String, Secret>>,
    pub auth_secret: Option<Vec<Secret>>,
    pub auth_secret_file: Option<PathBuf>,
    pub relay_ip: Option<Vec<IpAddr>>,
    pub external_ip: Option<Vec<ExternalIp>>,
    pub min_port: Option<u16>,
    pub max_port: Option<u16>,
    pub allow_peer: Option<Vec<PeerNet>>,
    pub deny_peer: Option<Vec<PeerNet>>,
    pub max_allocations: Option<usize>,
    pub user_quota: Option<usize>,
    pub max_permissions: Option<usize>,
    pub max_channels: Option<usize>,
    pub bandwidth: Option<Bandwidth>,
    pub unauth_rate: Option<u32>,
    pub max_lifetime: Option<u64>,
    pub nonce_ttl: Option<u64>,
    pub metrics: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub threads: Option<usize>,
    pub tcp_idle_timeout: Option<u64>,
    pub max_tcp_connections: Option<usize>,
    pub drain_grace: Option<u64>,
}

/// The relay addresses of one IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    /// What relay sockets bind to (`--relay-ip`).
    pub bind: IpAddr,
    /// What XOR-RELAYED-ADDRESS tells clients: the `--external-ip` mapped
    /// to `bind`, else `bind` itself.
    pub advertised: IpAddr,
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP (and TCP, with `tcp`) client addresses.
    pub listen: Vec<SocketAddr>,
    /// Whether to answer over TCP on `listen`.
    pub tcp: bool,
    /// TLS client addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate chain and key files, when TLS is configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// REALM.
    pub realm: String,
    /// Static users: name to password.
    pub users: BTreeMap<String, Secret>,
    /// REST shared secrets, the first one signs: from `auth-secret`, or
    /// read from `auth_secret_file`.
    pub auth_secrets: Vec<Secret>,
    /// Where `auth_secrets` were read from, if from a file.
    pub auth_secret_file: Option<PathBuf>,
    /// Relay addresses by family: index 0 IPv4, 1 IPv6 (the index of
    /// `natkit_proto::turn::server::RelayRequest::family`). At least one is set.
    pub relay: [Option<RelayIp>; 2],
    /// Relay port range, inclusive, at least 2 ports.
    pub min_port: u16,
    /// See `min_port`.
    pub max_port: u16,
    /// Operator allow ranges (`--allow-peer`).
    pub allow_peer: Vec<IpNet>,
    /// Operator deny ranges (`--deny-peer`).
    pub deny_peer: Vec<IpNet>,
    /// Most allocations in total.
    pub max_allocations: usize,
    /// Most allocations per user.
    pub user_quota: usize,
    /// Most permissions per allocation.
    pub max_permissions: usize,
    /// Most channels per allocation.
    pub max_channels: usize,
    /// Bytes per second per allocation; 0 = unlimited.
    pub bandwidth: u64,
    /// Unauthenticated answers per second per source IP; 0 = unlimited.
    pub unauth_rate: u32,
    /// Longest allocation lifetime.
    pub max_lifetime: Duration,
    /// How long a nonce stays fresh.
    pub nonce_ttl: Duration,
    /// Metrics and health endpoint.
    pub metrics: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Worker threads.
    pub threads: usize,
    /// Idle timeout of TCP/TLS client connections.
    pub tcp_idle_timeout: Duration,
    /// Most TCP/TLS client connections.
    pub max_tcp_connections: usize,
    /// How long SIGTERM keeps relaying.
    pub drain_grace: Duration,
}

impl Config {
    /// Merges flags/env over the file over the defaults, and validates.
    /// Call it again (same `args`) on SIGHUP: it re-reads the file.
    pub fn resolve(args: &Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => natkit_runtime::config::load_toml(p)?,
            None => FileConfig::default(),
        };
        let listen = list(&args.listen, file.listen, || {
            vec![DEFAULT_LISTEN.parse().expect("valid default")]
        });
        let tls_listen = list(&args.tls_listen, file.tls_listen, Vec::new);
        let cert = args.cert.clone().or(file.cert);
        let key = args.key.clone().or(file.key);
        let tls = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => bail!("cert is set but key is not: TLS needs both"),
            (None, Some(_)) => bail!("key is set but cert is not: TLS needs both"),
        };
        let users = if args.user.is_empty() {
            file.users.unwrap_or_default()
        } else {
            parse_users(&args.user)?
        };
        // The REST secrets are one setting given in one of two forms (a list or a file): flags
        // and env vars win over the config file as a whole, as for every other key, so a
        // Kubernetes Secret mounted as NATKIT_TURN_AUTH_SECRET_FILE overrides the file's
        // `auth-secret`. Both forms at the same level are refused: which would win is a guess.
        let (auth_secrets, auth_secret_file) = match rest_secrets(
            "--auth-secret",
            &args.auth_secret,
            args.auth_secret_file.clone(),
        )? {
            Some(s) => s,
            None => rest_secrets(
                "the config file's auth-secret",
                file.auth_secret.as_deref().unwrap_or_default(),
                file.auth_secret_file,
            )?
            .unwrap_or_default(),
        };
        // Before anything else: the most important refusal comes first.
        if users.is_empty() && auth_secrets.is_empty() {
            bail!("natkit-turn refuses to run an open relay: give --user or --auth-secret or --auth-secret-file (or [users], auth-secret or auth-secret-file in the config file)");
        }
        let relay_ips = list(&args.relay_ip, file.relay_ip, Vec::new);
        let external = list(&args.external_ip, file.external_ip, Vec::new);
        let relay = relay_addresses(&relay_ips, &external, &listen, &tls_listen)?;
        let secs = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_secs(flag.or(file).unwrap_or(default))
        };
        let cfg = Config {
            tcp: args.tcp.or(file.tcp).unwrap_or(true),
            realm: args
                .realm
                .clone()
                .or(file.realm)
                .unwrap_or_else(|| DEFAULT_REALM.into()),
            users,
            auth_secrets,
            auth_secret_file,
            relay,
            min_port: args.min_port.or(file.min_port).unwrap_or(DEFAULT_MIN_PORT),
            max_port: args.max_port.or(file.max_port).unwrap_or(DEFAULT_MAX_PORT),
            allow_peer: nets(list(&args.allow_peer, file.allow_peer, Vec::new)),
            deny_peer: nets(list(&args.deny_peer, file.deny_peer, Vec::new)),
            max_allocations: args
                .max_allocations
                .or(file.max_allocations)
                .unwrap_or(10_000),
            user_quota: args.user_quota.or(file.user_quota).unwrap_or(100),
            max_permissions: args.max_permissions.or(file.max_permissions).unwrap_or(32),
            max_channels: args.max_channels.or(file.max_channels).unwrap_or(32),
            bandwidth: args.bandwidth.or(file.bandwidth).map_or(0, |b| b.0),
            unauth_rate: args.unauth_rate.or(file.unauth_rate).unwrap_or(20),
            max_lifetime: secs(args.max_lifetime, file.max_lifetime, 3600),
            nonce_ttl: secs(args.nonce_ttl, file.nonce_ttl, 600),
            metrics: args.metrics.or(file.metrics),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            threads: args
                .threads
                .or(file.threads)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            tcp_idle_timeout: secs(args.tcp_idle_timeout, file.tcp_idle_timeout, 300),
            max_tcp_connections: args
                .max_tcp_connections
                .or(file.max_tcp_connections)
                .unwrap_or(10_000),
            drain_grace: secs(args.drain_grace, file.drain_grace, 30),
            listen,
            tls_listen,
            tls,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (name, pass) in &self.users {
            check_user(name, pass)?;
        }
        if self.auth_secrets.iter().any(|s| s.expose().is_empty()) {
            bail!("auth-secret: a secret is empty (an empty HMAC key would let anyone mint credentials)");
        }
        if self.listen.is_empty() {
            bail!("listen: at least one address is needed");
        }
        if !self.tls_listen.is_empty() && self.tls.is_none() {
            bail!("tls-listen is set but cert and key are not: TLS needs both");
        }
        if self.realm.is_empty() {
            bail!("realm: must not be empty");
        }
        // RFC 8489 §14.9: REALM is fewer than 128 characters.
        if self.realm.chars().count() >= 128 || self.realm.chars().any(char::is_control) {
            bail!("realm: must be fewer than 128 characters, without control characters (RFC 8489 §14.9)");
        }
        if self.min_port == 0 {
            bail!("min-port: must be at least 1");
        }
        if self.min_port > self.max_port {
            bail!(
                "min-port {} is above max-port {}",
                self.min_port,
                self.max_port
            );
        }
        if self.max_port - self.min_port < 1 {
            bail!(
                "min-port/max-port: the range {}-{} has one port; at least 2 are needed (EVEN-PORT reserves pairs)",
                self.min_port,
                self.max_port
            );
        }
        for (key, v) in [
            ("max-allocations", self.max_allocations),
            ("user-quota", self.user_quota),
            ("max-permissions", self.max_permissions),
            ("max-channels", self.max_channels),
            ("max-tcp-connections", self.max_tcp_connections),
        ] {
            if v == 0 {
                bail!("{key}: must be at least 1");
            }
        }
        if self.max_channels > MAX_CHANNEL_NUMBERS {
            bail!(
                "max-channels: {} is more than the {MAX_CHANNEL_NUMBERS} channel numbers there are (RFC 8656 §12)",
                self.max_channels
            );
        }
        if self.bandwidth != 0 && self.bandwidth < MIN_BANDWIDTH {
            bail!(
                "bandwidth: {} bytes/s is below {MIN_BANDWIDTH} (one full-size packet per second); use 0 for no limit",
                self.bandwidth
            );
        }
        if self.unauth_rate > MAX_UNAUTH_RATE {
            bail!(
                "unauth-rate: {} is above {MAX_UNAUTH_RATE} per second; use 0 for no limit",
                self.unauth_rate
            );
        }
        if self.max_lifetime < DEFAULT_LIFETIME || self.max_lifetime > Duration::from_secs(86_400) {
            bail!(
                "max-lifetime: {} s is out of range (600-86400; RFC 8656 §7.2 grants at least the 600 s default)",
                self.max_lifetime.as_secs()
            );
        }
        if self.nonce_ttl.is_zero() || self.nonce_ttl > Duration::from_secs(86_400) {
            bail!(
                "nonce-ttl: {} s is out of range (1-86400)",
                self.nonce_ttl.as_secs()
            );
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("threads: {} is out of range (1-256)", self.threads);
        }
        if self.tcp_idle_timeout.is_zero() {
            bail!("tcp-idle-timeout: must be at least 1 second");
        }
        if self.drain_grace > Duration::from_secs(86_400) {
            bail!(
                "drain-grace: {} s is out of range (0-86400)",
                self.drain_grace.as_secs()
            );
        }
        Ok(())
    }

    /// How many relay ports the range holds (per relay IP).
    pub fn relay_ports(&self) -> usize {
        usize::from(self.max_port - self.min_port) + 1
    }

    /// The relay's IPs: every bind and advertised address (advertised ones
    /// hairpin back through a 1:1 NAT).
    pub fn own_ips(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .relay
            .iter()
            .flatten()
            .flat_map(|r| [r.bind, r.advertised])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The peer policy of this configuration. `bound_listeners`: the client
    /// sockets' actual addresses (UDP, TCP, TLS). The relay's own IPs are
    /// [`Config::own_ips`] plus every local interface address (for listeners
    /// on an unspecified IP; if they cannot be listed, the relay IPs only).
    pub fn peer_policy(&self, bound_listeners: &[SocketAddr]) -> PeerPolicy {
        let mut ips = self.own_ips();
        ips.extend(peer_policy::local_ips().unwrap_or_default());
        PeerPolicy::new(
            self.allow_peer.clone(),
            self.deny_peer.clone(),
            bound_listeners.to_vec(),
            ips,
        )
    }

    /// Static users and REST secrets, as the protocol core takes them, with
    /// the nonce keys derived from the REST secrets and the realm: the
    /// relays that share a secret share the keys, so a nonce survives a
    /// restart (a stale one gets 438, not 401) and is good on every relay
    /// behind one name. The first secret's key issues; every listed
    /// secret's key verifies, so a rotation keeps nonces valid. Static
    /// users bring no key (a key derived from passwords would let anyone
    /// holding a nonce test guesses of them offline): with static users
    /// only, nonces are under the relay's own random key, and a restart
    /// answers an old nonce with 401, which clients recover from.
    pub fn credentials(&self) -> Credentials {
        let users: HashMap<String, String> = self
            .users
            .iter()
            .map(|(n, p)| (n.clone(), p.expose().to_owned()))
            .collect();
        let rest = RestSecrets::new(self.auth_secrets.iter().map(|s| s.expose().as_bytes()));
        let nonce_keys = self
            .auth_secrets
            .iter()
            .map(|s| NonceKey::derive(s.expose().as_bytes(), &self.realm))
            .collect();
        Credentials::new(users, rest).with_nonce_keys(nonce_keys)
    }

    /// The protocol core's settings (`draining` false).
    pub fn core_config(&self) -> core::Config {
        core::Config {
            realm: self.realm.clone(),
            nonce_ttl: self.nonce_ttl,
            default_lifetime: DEFAULT_LIFETIME,
            max_lifetime: self.max_lifetime,
            max_permissions: self.max_permissions,
            max_channels: self.max_channels,
            bandwidth: self.bandwidth,
            unauth_rate: self.unauth_rate,
            draining: false,
        }
    }
}

/// The flag's list if given, else the file's, else the default.
fn list<T: Clone>(flag: &[T], file: Option<Vec<T>>, default: impl FnOnce() -> Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file.unwrap_or_else(default)
    } else {
        flag.to_vec()
    }
}

fn nets(v: Vec<PeerNet>) -> Vec<IpNet> {
    v.into_iter().map(|n| n.0).collect()
}

/// `--user NAME:PASS` values into the users table. Messages name the user,
/// never the password.
fn parse_users(args: &[Secret]) -> anyhow::Result<BTreeMap<String, Secret>> {
    let mut users = BTreeMap::new();
    for (i, u) in args.iter().enumerate() {
        let Some((name, pass)) = u.expose().split_once(':') else {
            bail!("user: value #{} is not NAME:PASS (no ':' in it)", i + 1);
        };
        if users.insert(name.to_owned(), Secret::new(pass)).is_some() {
            bail!("user: {name:?} is given twice");
        }
    }
    Ok(users)
}

fn check_user(name: &str, pass: &Secret) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("user: a user name is empty");
    }
    // REST usernames are "expiry:name"; a static name with ':' could not
    // be given as NAME:PASS either.
    if name.contains(':') {
        bail!("user: {name:?} contains ':', which user names cannot");
    }
    // RFC 8489 §14.3: USERNAME is under 509 bytes.
    if name.len() >= 509 || name.chars().any(char::is_control) {
        bail!(
            "user: {name:?} must be under 509 bytes, without control characters (RFC 8489 §14.3)"
        );
    }
    if pass.expose().is_empty() {
        bail!("user: {name:?} has an empty password");
    }
    Ok(())
}

/// Works out the relay address of each family: `--relay-ip`, else the IP
/// of the concrete listen addresses; then maps `--external-ip` onto them.
fn relay_addresses(
    relay_ips: &[IpAddr],
    external: &[ExternalIp],
    listen: &[SocketAddr],
    tls_listen: &[SocketAddr],
) -> anyhow::Result<[Option<RelayIp>; 2]> {
    let mut binds: [Option<IpAddr>; 2] = [None, None];
    if relay_ips.is_empty() {
        let mut seen: [Vec<IpAddr>; 2] = [Vec::new(), Vec::new()];
        for a in listen.iter().chain(tls_listen) {
            let ip = a.ip().to_canonical();
            if !ip.is_unspecified() && !seen[family(ip)].contains(&ip) {
                seen[family(ip)].push(ip);
            }
        }
        for (f, ips) in seen.iter().enumerate() {
            match ips.as_slice() {
                [] => {}
                [one] => binds[f] = Some(*one),
                many => bail!(
                    "relay-ip: cannot be derived: the listen addresses have several {} addresses ({}); pass --relay-ip",
                    family_name(f),
                    many.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        if binds.iter().all(Option::is_none) {
            bail!(
                "relay-ip: cannot be derived: no listen address is a concrete IP ({}); pass --relay-ip with this host's address",
                listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
    } else {
        for &ip in relay_ips {
            let ip = ip.to_canonical();
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255])
            {
                bail!("relay-ip: {ip} is not a unicast address of this host");
            }
            let f = family(ip);
            if let Some(prev) = binds[f] {
                bail!(
                    "relay-ip: two {} addresses ({prev}, {ip}); at most one IPv4 and one IPv6",
                    family_name(f)
                );
            }
            binds[f] = Some(ip);
        }
    }
    let mut relay = binds.map(|b| {
        b.map(|bind| RelayIp {
            bind,
            advertised: bind,
        })
    });
    let mut mapped = [false; 2];
    for e in external {
        let ext = e.external.to_canonical();
        if ext.is_unspecified() || ext.is_multicast() {
            bail!("external-ip: {e} is not a unicast address");
        }
        let f = family(ext);
        let Some(r) = relay[f].as_mut() else {
            bail!(
                "external-ip: {e} has no {} relay-ip to map to",
                family_name(f)
            );
        };
        if let Some(int) = e.internal {
            let int = int.to_canonical();
            if family(int) != f {
                bail!("external-ip: {e}: both addresses must be of the same IP family");
            }
            if int != r.bind {
                bail!(
                    "external-ip: {e}: {int} is not the {} relay-ip ({})",
                    family_name(f),
                    r.bind
                );
            }
        }
        if mapped[f] {
            bail!(
                "external-ip: two external addresses for relay-ip {}",
                r.bind
            );
        }
        mapped[f] = true;
        r.advertised = ext;
    }
    Ok(relay)
}

fn family(ip: IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

fn family_name(f: usize) -> &'static str {
    if f == 0 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The REST secrets given at one level (flags and env vars, or the config file): `Ok(None)` if
/// neither form is there, the secrets (and the file they came from) if one is, an error naming
/// `list` (the list form at this level) if both are.
fn rest_secrets(
    list: &str,
    secrets: &[Secret],
    file: Option<PathBuf>,
) -> anyhow::Result<Option<(Vec<Secret>, Option<PathBuf>)>> {
    match file {
        None if secrets.is_empty() => Ok(None),
        None => Ok(Some((secrets.to_vec(), None))),
        Some(_) if !secrets.is_empty() => bail!(
            "auth-secret-file: {list} is set too; give the REST secrets in one place (the file can list several)"
        ),
        Some(path) => Ok(Some((read_secret_file(&path)?, Some(path)))),
    }
}

/// Most bytes an `auth-secret-file` may have: a few secrets, not a data
/// file given by mistake.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads an `auth-secret-file`: one secret per line, surrounding
/// whitespace (and a `\r` of CRLF files) trimmed, blank lines and lines
/// whose first non-blank character is `#` ignored. Order is kept: the
/// first secret is the one new credentials are expected to use (the relay
/// verifies with all). Errors name the file and what is wrong with it as a
/// whole (unreadable, too big, not UTF-8, no secret), never a secret.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<Secret>> {
    let fail = |why: String| anyhow::anyhow!("auth-secret-file: {}: {why}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(fail(format!(
            "{} bytes, more than the {MAX_SECRET_FILE} a list of secrets needs",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    // Not `String::from_utf8(..)?`: its error would carry the bytes.
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(fail("not UTF-8 text".into()));
    };
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect();
    if secrets.is_empty() {
        return Err(fail(
            "holds no secret (one per line; blank lines and # comments are ignored)".into(),
        ));
    }
    Ok(secrets)
}

/// A password or shared secret. `Debug` prints `<redacted>`; there is no
/// `Display`: the only way to the text is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret text, for the code that needs it (key derivation).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    // Never fails, so clap never echoes the value in an error.
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `--external-ip EXT` or `EXT/INT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    /// The address clients are told.
    pub external: IpAddr,
    /// The relay IP it maps to; none: the relay IP of the same family.
    pub internal: Option<IpAddr>,
}

impl fmt::Display for ExternalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.internal {
            Some(i) => write!(f, "{}/{i}", self.external),
            None => write!(f, "{}", self.external),
        }
    }
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{t:?} is not an IP address (expected EXT or EXT/INT)"))
        };
        match s.split_once('/') {
            Some((e, i)) => Ok(ExternalIp {
                external: ip(e)?,
                internal: Some(ip(i)?),
            }),
            None => Ok(ExternalIp {
                external: ip(s)?,
                internal: None,
            }),
        }
    }
}

/// A peer range: CIDR (`10.0.0.0/8`) or a bare IP (one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet(pub IpNet);

impl FromStr for PeerNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerNet(IpNet::from(ip)));
        }
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR range or IP address"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(PeerNet(net))
    }
}

/// Bytes per second: a number with an optional K, M, G (x1000) or Ki, Mi,
/// Gi (x1024) suffix; in the file also a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl FromStr for Bandwidth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, suffix) = t.split_at(digits);
        let bad = || format!("{s:?} is not bytes per second (e.g. 1000000, 500K, 10M, 1Gi)");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match suffix {
            "" => 1,
            "K" | "k" => 1_000,
            "M" | "m" => 1_000_000,
            "G" | "g" => 1_000_000_000,
            "Ki" | "ki" => 1 << 10,
            "Mi" | "mi" => 1 << 20,
            "Gi" | "gi" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Bandwidth).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Bandwidth(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Types parsed from a string in the file, with their `FromStr` message.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(ExternalIp, PeerNet);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Tests that parse `Args` read `NATKIT_TURN_*` variables; the env test
    /// sets some, so every parse holds this lock.
    static ENV: Mutex<()> = Mutex::new(());

    /// Enough for a valid config; tests add or override.
    const BASE: &[&str] = &["--user", "alice:pw", "--listen", "127.0.0.1:3478"];

    fn parse_raw(args: &[&str]) -> anyhow::Result<Config> {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let mut v = vec!["natkit-turn"];
        v.extend_from_slice(args);
        Config::resolve(&Args::try_parse_from(v)?)
    }

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let mut v = BASE.to_vec();
        v.extend_from_slice(args);
        parse_raw(&v)
    }

    fn err(args: &[&str]) -> String {
        format!("{:#}", parse(args).unwrap_err())
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let d =
                std::env::temp_dir().join(format!("natkit-turn-cfg-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn file(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_owned()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:3478".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.tcp);
        assert_eq!(c.realm, "natkit");
        assert_eq!((c.min_port, c.max_port), (49152, 65535));
        assert_eq!(
            (
                c.max_allocations,
                c.user_quota,
                c.max_permissions,
                c.max_channels
            ),
            (10_000, 100, 32, 32)
        );
        assert_eq!((c.bandwidth, c.unauth_rate), (0, 20));
        assert_eq!(c.max_lifetime, Duration::from_secs(3600));
        assert_eq!(c.nonce_ttl, Duration::from_secs(600));
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.max_tcp_connections, 10_000);
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert!(c.threads >= 1);
        // The relay IP comes from the concrete listen address.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            c.relay,
            [
                Some(RelayIp {
                    bind: lo,
                    advertised: lo
                }),
                None
            ]
        );
        let core = c.core_config();
        assert_eq!(core.default_lifetime, DEFAULT_LIFETIME);
        assert_eq!(core.max_lifetime, c.max_lifetime);
        assert!(!c.credentials().is_empty());
    }

    #[test]
    fn no_auth_is_refused() {
        let e = format!("{:#}", parse_raw(&["--relay-ip", "127.0.0.1"]).unwrap_err());
        assert!(e.contains("refuses to run an open relay"), "{e}");
        assert!(e.contains("--user or --auth-secret"), "{e}");
        // A shared secret alone is enough.
        let c = parse_raw(&["--relay-ip", "127.0.0.1", "--auth-secret", "s3"]).unwrap();
        assert_eq!(c.auth_secrets, vec![Secret::new("s3")]);
    }

    #[test]
    fn the_default_listen_address_needs_a_relay_ip() {
        let e = format!("{:#}", parse_raw(&[]).unwrap_err());
        assert!(e.contains("refuses to run an open relay"), "{e}");
        let e = format!("{:#}", parse_raw(&["--user", "a:b"]).unwrap_err());
        assert!(e.contains("relay-ip") && e.contains("--relay-ip"), "{e}");
        assert!(e.contains("0.0.0.0:3478"), "{e}");
        let c = parse_raw(&["--user", "a:b", "--relay-ip", "192.0.2.7"]).unwrap();
        assert_eq!(
            c.listen,
            vec![DEFAULT_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.relay[0].unwrap().bind,
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn relay_ips_one_per_family() {
        let c = parse(&["--relay-ip", "192.0.2.1,2001:db8::1"]).unwrap();
        assert_eq!(c.relay[0].unwrap().bind.to_string(), "192.0.2.1");
        assert_eq!(c.relay[1].unwrap().bind.to_string(), "2001:db8::1");
        let e = err(&["--relay-ip", "192.0.2.1", "--relay-ip", "192.0.2.2"]);
        assert!(e.starts_with("relay-ip: two IPv4"), "{e}");
        let e = err(&["--relay-ip", "2001:db8::1,2001:db8::2"]);
        assert!(e.starts_with("relay-ip: two IPv6"), "{e}");
        assert!(err(&["--relay-ip", "0.0.0.0"]).starts_with("relay-ip:"));
        assert!(err(&["--relay-ip", "224.0.0.1"]).starts_with("relay-ip:"));
        // Derived per family from several listen addresses.
        let c = parse(&["--listen", "127.0.0.1:3478,[::1]:3478,127.0.0.1:3479"]).unwrap();
        assert_eq!(c.relay[1].unwrap().bind.to_string(), "::1");
        let e = err(&["--listen", "127.0.0.1:3478,127.0.0.2:3478"]);
        assert!(
            e.contains("several IPv4") && e.contains("--relay-ip"),
            "{e}"
        );
    }

    #[test]
    fn external_ips_pair_with_relay_ips() {
        let c = parse(&[
            "--relay-ip",
            "10.0.0.5,fd00::5",
            "--external-ip",
            "203.0.113.5/10.0.0.5,2001:db8::5",
        ])
        .unwrap();
        let r4 = c.relay[0].unwrap();
        assert_eq!(
            (r4.bind.to_string(), r4.advertised.to_string()),
            ("10.0.0.5".into(), "203.0.113.5".into())
        );
        assert_eq!(c.relay[1].unwrap().advertised.to_string(), "2001:db8::5");
        let own: Vec<String> = c.own_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(own, ["10.0.0.5", "203.0.113.5", "2001:db8::5", "fd00::5"]);

        let e = err(&[
            "--relay-ip",
            "10.0.0.5",
            "--external-ip",
            "203.0.113.5/10.0.0.6",
        ]);
        assert!(e.starts_with("external-ip: 203.0.113.5/10.0.0.6"), "{e}");
        let e = err(&["--relay-ip", "10.0.0.5", "--external-ip", "2001:db8::5"]);
        assert!(e.contains("no IPv6 relay-ip"), "{e}");
        let e = err(&[
            "--relay-ip",
            "10.0.0.5",
            "--external-ip",
            "203.0.113.5/fd00::5",
        ]);
        assert!(e.contains("same IP family"), "{e}");
        let e = err(&[
            "--relay-ip",
            "10.0.0.5",
            "--external-ip",
            "203.0.113.5,203.0.113.6",
        ]);
        assert!(e.contains("two external addresses"), "{e}");
        assert!(err(&["--external-ip", "0.0.0.0"]).starts_with("external-ip:"));
        let e = format!("{:#}", parse(&["--external-ip", "1.2.3.4/x"]).unwrap_err());
        assert!(e.contains("--external-ip") && e.contains("\"x\""), "{e}");
    }

    #[test]
    fn ports_are_validated() {
        let c = parse(&["--min-port", "40000", "--max-port", "40001"]).unwrap();
        assert_eq!((c.min_port, c.max_port), (40000, 40001));
        let e = err(&["--min-port", "50000", "--max-port", "40000"]);
        assert!(e.contains("min-port 50000 is above max-port 40000"), "{e}");
        let e = err(&["--min-port", "40000", "--max-port", "40000"]);
        assert!(e.starts_with("min-port/max-port:"), "{e}");
        assert!(err(&["--min-port", "0"]).starts_with("min-port:"));
        assert!(parse(&["--max-port", "65536"]).is_err());
    }

    #[test]
    fn quotas_and_durations_are_validated() {
        for key in [
            "--max-allocations",
            "--user-quota",
            "--max-permissions",
            "--max-channels",
            "--max-tcp-connections",
        ] {
            let e = err(&[key, "0"]);
            assert!(e.starts_with(&key[2..]), "{key}: {e}");
        }
        assert!(err(&["--max-channels", "4097"]).starts_with("max-channels:"));
        assert_eq!(
            parse(&["--max-channels", "4096"]).unwrap().max_channels,
            4096
        );
        assert!(err(&["--max-lifetime", "599"]).starts_with("max-lifetime:"));
        assert!(err(&["--nonce-ttl", "0"]).starts_with("nonce-ttl:"));
        assert!(err(&["--threads", "0"]).starts_with("threads:"));
        assert!(err(&["--tcp-idle-timeout", "0"]).starts_with("tcp-idle-timeout:"));
        assert_eq!(
            parse(&["--drain-grace", "0"]).unwrap().drain_grace,
            Duration::ZERO
        );
        assert!(err(&["--bandwidth", "100"]).starts_with("bandwidth:"));
        assert!(err(&["--realm", ""]).starts_with("realm:"));
        let long = "r".repeat(128);
        assert!(err(&["--realm", &long]).starts_with("realm:"));
    }

    #[test]
    fn bandwidth_suffixes() {
        let b = |s: &str| s.parse::<Bandwidth>().map(|b| b.0);
        assert_eq!(b("0"), Ok(0));
        assert_eq!(b("125000"), Ok(125_000));
        assert_eq!(b("500K"), Ok(500_000));
        assert_eq!(b("10M"), Ok(10_000_000));
        assert_eq!(b("1G"), Ok(1_000_000_000));
        assert_eq!(b("64Ki"), Ok(65_536));
        assert_eq!(b("2Mi"), Ok(2 << 20));
        assert!(b("10X").is_err());
        assert!(b("M").is_err());
        assert!(b("1.5M").is_err());
        assert!(b("99999999999999G").is_err());
        assert_eq!(
            parse(&["--bandwidth", "10M"]).unwrap().bandwidth,
            10_000_000
        );
    }

    #[test]
    fn peer_ranges_parse_and_bad_ones_are_named() {
        let c = parse(&[
            "--allow-peer",
            "127.0.0.0/8,::1",
            "--deny-peer",
            "8.8.8.8",
            "--deny-peer",
            "2001:db8::/32",
        ])
        .unwrap();
        let s = |v: &[IpNet]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&c.allow_peer), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(s(&c.deny_peer), ["8.8.8.8/32", "2001:db8::/32"]);
        let e = format!("{:#}", parse(&["--allow-peer", "10.0.0.0/33"]).unwrap_err());
        assert!(
            e.contains("--allow-peer") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = format!("{:#}", parse(&["--deny-peer", "10.0.0.1/8"]).unwrap_err());
        assert!(
            e.contains("--deny-peer") && e.contains("did you mean 10.0.0.0/8"),
            "{e}"
        );
        // The policy built from the config uses them.
        let p = c.peer_policy(&["127.0.0.1:3478".parse().unwrap()]);
        assert!(p.check("127.0.0.1:9".parse().unwrap()).is_allowed());
        assert!(!p.check("127.0.0.1:3478".parse().unwrap()).is_allowed());
        assert!(!p.check("8.8.8.8:53".parse().unwrap()).is_allowed());
    }

    #[test]
    fn users_are_checked_and_never_printed() {
        let c = parse(&["--user", "bob:se:cr,et", "--auth-secret", "hunter2"]).unwrap();
        // NAME:PASS splits at the first ':'; the password keeps the rest.
        assert_eq!(c.users["bob"].expose(), "se:cr,et");
        let dbg = format!("{c:?}");
        for secret in ["pw", "se:cr,et", "hunter2"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("alice") && dbg.contains("<redacted>"), "{dbg}");
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let args = Args::try_parse_from([
            "natkit-turn",
            "--user",
            "carol:xyzzy",
            "--auth-secret",
            "plugh",
        ])
        .unwrap();
        let dbg = format!("{args:?}");
        assert!(!dbg.contains("xyzzy") && !dbg.contains("plugh"), "{dbg}");
        drop(_g);

        let e = err(&["--user", "nocolon"]);
        assert!(e.starts_with("user:") && !e.contains("nocolon"), "{e}");
        let e = err(&["--user", "alice:other"]);
        assert!(
            e.contains("\"alice\" is given twice") && !e.contains("other"),
            "{e}"
        );
        let e = err(&["--user", "dave:"]);
        assert!(e.contains("\"dave\" has an empty password"), "{e}");
        assert!(err(&["--user", ":pw2"]).contains("user name is empty"));
        let e = err(&["--auth-secret", ""]);
        assert!(e.starts_with("auth-secret:"), "{e}");
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let e = err(&["--tls-listen", "127.0.0.1:5349"]);
        assert!(e.starts_with("tls-listen"), "{e}");
        assert!(err(&["--cert", "/x.pem"]).starts_with("cert is set"));
        assert!(err(&["--key", "/x.pem"]).starts_with("key is set"));
        let c = parse(&[
            "--tls-listen",
            "127.0.0.1:5349",
            "--cert",
            "/c.pem",
            "--key",
            "/k.pem",
        ])
        .unwrap();
        assert_eq!(
            c.tls,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
    }

    #[test]
    fn file_flags_and_env_merge_in_order() {
        let dir = TempDir::new("merge");
        let path = dir.file(
            "relay.toml",
            r#"
listen = ["127.0.0.1:4000"]
tcp = false
realm = "file.example"
auth-secret = ["s1", "s2"]
relay-ip = ["127.0.0.1"]
external-ip = ["192.0.2.9"]
min-port = 30000
max-port = 30999
allow-peer = ["127.0.0.0/8"]
deny-peer = ["127.0.0.9"]
max-allocations = 50
user-quota = 5
max-permissions = 8
max-channels = 9
bandwidth = "2M"
unauth-rate = 7
max-lifetime = 1200
nonce-ttl = 60
metrics = "127.0.0.1:9100"
log-format = "json"
threads = 3
tcp-idle-timeout = 45
max-tcp-connections = 77
drain-grace = 5

[users]
erin = "from-file"
frank = "also-from-file"
"#,
        );
        // The file alone (no BASE: its users and listen apply).
        let c = parse_raw(&["--config", &path]).unwrap();
        assert_eq!(c.listen[0].port(), 4000);
        assert!(!c.tcp);
        assert_eq!(c.realm, "file.example");
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users["erin"].expose(), "from-file");
        assert_eq!(c.auth_secrets, vec![Secret::new("s1"), Secret::new("s2")]);
        assert_eq!(c.relay[0].unwrap().advertised.to_string(), "192.0.2.9");
        assert_eq!((c.min_port, c.max_port), (30000, 30999));
        assert_eq!(c.allow_peer.len(), 1);
        assert_eq!(c.deny_peer[0].to_string(), "127.0.0.9/32");
        assert_eq!(
            (
                c.max_allocations,
                c.user_quota,
                c.max_permissions,
                c.max_channels
            ),
            (50, 5, 8, 9)
        );
        assert_eq!((c.bandwidth, c.unauth_rate), (2_000_000, 7));
        assert_eq!(c.max_lifetime, Duration::from_secs(1200));
        assert_eq!(c.nonce_ttl, Duration::from_secs(60));
        assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.threads, 3);
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(45));
        assert_eq!(c.max_tcp_connections, 77);
        assert_eq!(c.drain_grace, Duration::from_secs(5));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("from-file") && !dbg.contains("s1"), "{dbg}");

        // Flags win, key by key; a list flag replaces the file's list.
        let c = parse_raw(&[
            "--config",
            &path,
            "--user",
            "gina:flag",
            "--threads",
            "2",
            "--max-port",
            "30001",
            "--tcp",
            "true",
        ])
        .unwrap();
        assert_eq!(c.users.keys().collect::<Vec<_>>(), ["gina"]);
        assert_eq!(c.threads, 2);
        assert_eq!((c.min_port, c.max_port), (30000, 30001));
        assert!(c.tcp);
        assert_eq!(c.realm, "file.example");

        // Env vars win over the file, flags over env vars.
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("NATKIT_TURN_REALM", "env.example");
        std::env::set_var("NATKIT_TURN_MAX_CHANNELS", "11");
        std::env::set_var("NATKIT_TURN_USER", "hank:env,pass");
        std::env::set_var("NATKIT_TURN_ALLOW_PEER", "10.0.0.0/8,192.168.0.0/16");
        let parsed =
            Args::try_parse_from(["natkit-turn", "--config", &path, "--max-channels", "12"])
                .map_err(anyhow::Error::from)
                .and_then(|a| Config::resolve(&a));
        for k in ["REALM", "MAX_CHANNELS", "USER", "ALLOW_PEER"] {
            std::env::remove_var(format!("NATKIT_TURN_{k}"));
        }
        drop(_g);
        let c = parsed.unwrap();
        assert_eq!(c.realm, "env.example");
        assert_eq!(c.max_channels, 12);
        assert_eq!(c.users["hank"].expose(), "env,pass");
        assert_eq!(c.allow_peer.len(), 2);
        assert_eq!(c.max_permissions, 8);
    }

    #[test]
    fn bad_file_keys_and_values_are_named() {
        let dir = TempDir::new("bad");
        let cases = [
            ("typo.toml", "lisen = [\"127.0.0.1:4000\"]\n", "lisen"),
            (
                "cidr.toml",
                "allow-peer = [\"10.0.0.0/40\"]\n",
                "allow-peer",
            ),
            ("ext.toml", "external-ip = [\"nope\"]\n", "external-ip"),
            ("bw.toml", "bandwidth = \"fast\"\n", "bandwidth"),
            ("users.toml", "users = [\"a:b\"]\n", "users"),
        ];
        for (name, text, key) in cases {
            let path = dir.file(name, text);
            let e = format!("{:#}", parse(&["--config", &path]).unwrap_err());
            assert!(e.contains(key), "{name}: {e}");
            assert!(e.contains(name), "{name}: {e}");
        }
        // Users from the file go through the same checks as flags.
        let path = dir.file("empty.toml", "[users]\nivan = \"\"\n");
        let e = format!(
            "{:#}",
            parse_raw(&["--config", &path, "--relay-ip", "127.0.0.1"]).unwrap_err()
        );
        assert!(e.contains("\"ivan\" has an empty password"), "{e}");
        let e = format!(
            "{:#}",
            parse(&["--config", "/nonexistent/natkit-turn.toml"]).unwrap_err()
        );
        assert!(e.contains("/nonexistent/natkit-turn.toml"), "{e}");
    }

    #[test]
    fn auth_secret_file_lists_secrets_in_order() {
        let dir = TempDir::new("secret-file");
        let path = dir.file(
            "secrets",
            "# signing secret first\n  new-Kq2 \r\n\n\t# the previous one, until its credentials expire\nold-Zp9#not-a-comment\n",
        );
        let c = parse_raw(&["--relay-ip", "127.0.0.1", "--auth-secret-file", &path]).unwrap();
        assert_eq!(
            c.auth_secrets,
            vec![Secret::new("new-Kq2"), Secret::new("old-Zp9#not-a-comment")]
        );
        assert_eq!(c.auth_secret_file.as_deref(), Some(Path::new(&path)));
        assert!(!format!("{c:?}").contains("Kq2"));
        // The TOML key and the env var.
        let cfg = dir.file("turn.toml", &format!("auth-secret-file = \"{path}\"\n"));
        let c = parse_raw(&["--relay-ip", "127.0.0.1", "--config", &cfg]).unwrap();
        assert_eq!(c.auth_secrets.len(), 2);
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("NATKIT_TURN_AUTH_SECRET_FILE", &path);
        let parsed = Args::try_parse_from(["natkit-turn", "--relay-ip", "127.0.0.1"])
            .map_err(anyhow::Error::from)
            .and_then(|a| Config::resolve(&a));
        std::env::remove_var("NATKIT_TURN_AUTH_SECRET_FILE");
        drop(_g);
        assert_eq!(parsed.unwrap().auth_secrets[0], Secret::new("new-Kq2"));
    }

    /// The Kubernetes case: the config file lists `auth-secret` (or a file of its own) and
    /// the pod's environment points at a mounted Secret. The env var wins over the file's
    /// setting whole, like any other key; both forms at the file's level are still refused.
    #[test]
    fn auth_secret_file_from_env_overrides_the_files_secrets() {
        let dir = TempDir::new("secret-file-env");
        let mounted = dir.file(
            "mounted",
            "mounted-Wq8
previous-Tz3
",
        );
        let other = dir.file(
            "other",
            "other-Lm5
",
        );
        let list_cfg = dir.file(
            "list.toml",
            "listen = [\"127.0.0.1:3478\"]\nauth-secret = [\"from-file-Rr1\"]\n",
        );
        let file_cfg = dir.file(
            "file.toml",
            &format!("listen = [\"127.0.0.1:3478\"]\nauth-secret-file = \"{other}\"\n"),
        );
        let both_cfg = dir.file(
            "both.toml",
            &format!(
                "listen = [\"127.0.0.1:3478\"]\nauth-secret = [\"from-file-Rr1\"]\nauth-secret-file = \"{other}\"\n"
            ),
        );
        let with_env = |cfg: &str| {
            let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
            std::env::set_var("NATKIT_TURN_AUTH_SECRET_FILE", &mounted);
            let parsed = Args::try_parse_from(["natkit-turn", "--config", cfg])
                .map_err(anyhow::Error::from)
                .and_then(|a| Config::resolve(&a));
            std::env::remove_var("NATKIT_TURN_AUTH_SECRET_FILE");
            parsed
        };
        let want = vec![Secret::new("mounted-Wq8"), Secret::new("previous-Tz3")];
        for cfg in [&list_cfg, &file_cfg] {
            let c = with_env(cfg).unwrap();
            assert_eq!(c.auth_secrets, want, "{cfg}");
            assert_eq!(c.auth_secret_file.as_deref(), Some(Path::new(&mounted)));
        }
        // The flag form of the list overrides the file's secret file too.
        let c = parse_raw(&["--config", &file_cfg, "--auth-secret", "flag-Yx2"]).unwrap();
        assert_eq!(c.auth_secrets, vec![Secret::new("flag-Yx2")]);
        assert_eq!(c.auth_secret_file, None);
        // Without the env var, the file's own setting applies.
        let c = parse_raw(&["--config", &list_cfg]).unwrap();
        assert_eq!(c.auth_secrets, vec![Secret::new("from-file-Rr1")]);
        // Both forms in the file (and nothing from flags or env): which one was meant is a
        // guess, so it is refused.
        let e = format!("{:#}", parse_raw(&["--config", &both_cfg]).unwrap_err());
        assert!(
            e.starts_with("auth-secret-file:") && e.contains("one place"),
            "{e}"
        );
        assert!(!e.contains("Rr1") && !e.contains("Lm5"), "{e}");
    }

    #[test]
    fn bad_auth_secret_files_are_named_without_their_secrets() {
        let dir = TempDir::new("secret-file-bad");
        let empty = dir.file("empty", "\n# only a comment\n   \n");
        let e = err(&["--auth-secret-file", &empty]);
        assert!(
            e.starts_with("auth-secret-file:") && e.contains("holds no secret"),
            "{e}"
        );
        let e = err(&["--auth-secret-file", "/nonexistent/natkit-secrets"]);
        assert!(
            e.starts_with("auth-secret-file: /nonexistent/natkit-secrets: cannot read it"),
            "{e}"
        );
        let e = err(&["--auth-secret-file", &dir.0.display().to_string()]);
        assert!(e.contains("not a regular file"), "{e}");
        let binary = dir.0.join("binary");
        std::fs::write(&binary, [b's', b'3', 0xff, 0xfe, b'\n']).unwrap();
        let e = err(&["--auth-secret-file", binary.to_str().unwrap()]);
        assert!(e.contains("not UTF-8"), "{e}");
        let good = dir.file("good", "sekrit-Vb4\n");
        let e = err(&["--auth-secret-file", &good, "--auth-secret", "other-Hj7"]);
        assert!(
            e.starts_with("auth-secret-file:") && e.contains("one place"),
            "{e}"
        );
        assert!(!e.contains("sekrit-Vb4") && !e.contains("other-Hj7"), "{e}");
        // Without users the file alone is enough; without both, the
        // refusal names the file key too.
        let e = format!("{:#}", parse_raw(&["--relay-ip", "127.0.0.1"]).unwrap_err());
        assert!(e.contains("--auth-secret-file"), "{e}");
    }

    #[test]
    fn check_config_flag_parses() {
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let a = Args::try_parse_from(["natkit-turn", "--check-config"]).unwrap();
        assert!(a.check_config);
    }
}
