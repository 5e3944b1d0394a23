//! Configuration: natkit-turn's keys, each defined once. The shared ones (listen, TLS,
//! metrics, logging, threads, TCP limits) are `natkit_runtime::config::Common`; the rest are
//! [`TurnKeys`]. Every key is a flag, a `NATKIT_TURN_*` environment variable (the flag's name
//! in upper case with `_`: `--min-port` is `NATKIT_TURN_MIN_PORT`) and a key of the TOML file
//! (`--config`, `min-port`). Flags win over environment variables, those over the file, the
//! file over the defaults; a list given as a flag or env var replaces the file's list whole
//! (see `natkit_runtime::config`).
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
//! line, re-read on every SIGHUP and when it changes: on Kubernetes a Secret mounted as a file
//! can then list the old and the new secret during a rotation, which one
//! environment variable cannot (see [`read_secret_file`]). The list and
//! the file are two forms of one setting: given as a flag or env var,
//! either replaces both forms in the config file; both forms at the same
//! level are refused.
//!
//! Passwords and secrets are [`Secret`]s: their `Debug` prints
//! `<redacted>`, they have no `Display`, and errors never repeat them, so
//! neither `{:?}` of [`Args`] / [`Config`] nor an error message leaks them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use ipnet::IpNet;
use natkit_proto::nonce::NonceKey;
use natkit_proto::rest::RestSecrets;
use natkit_proto::turn::server::{self as core, Credentials};
use natkit_runtime::config::{
    expected, CommandLine, Common, Invalid, Schema, Setting, Settings, Shape, Sources, Value,
};

use crate::peer_policy::{self, PeerPolicy};

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
/// Longest `max-lifetime`, `nonce-ttl` and `drain-grace`: a day.
const MAX_SECS: Duration = Duration::from_secs(86_400);

natkit_runtime::settings! {
    /// natkit-turn's own keys; the shared ones are `Common`.
    pub struct TurnKeys {
        /// REALM of the long-term credentials.
        realm: String ["REALM"] = "natkit";
        /// Static user (repeatable). In the file: a `[users]` table, name = "password".
        users: Users ["NAME:PASS", flag = "user"] = _;
        /// Shared secret for REST credentials (repeatable, for rotation: the first signs, all
        /// verify).
        auth_secret: Vec<Secret> ["SECRET"] = _;
        /// File of REST shared secrets, one per line (blank lines and lines starting with `#`
        /// ignored): the first is the one new credentials are expected to be signed with,
        /// every line verifies. Re-read on SIGHUP and when it changes (watch-interval).
        /// Instead of auth-secret, not with it;
        /// either of them as a flag or env var replaces the config file's auth-secret and
        /// auth-secret-file.
        auth_secret_file: Option<PathBuf> ["PATH"] = _;
        /// Address relay sockets bind to (repeatable: at most one IPv4 and one IPv6).
        relay_ip: Vec<IpAddr> ["IP"] = (_, "the IP of the concrete listen addresses");
        /// Address advertised to clients behind a 1:1 NAT, EXT or EXT/INT where INT is the
        /// relay IP it maps to (repeatable, one per family).
        external_ip: Vec<ExternalIp> ["EXT[/INT]"] = _;
        /// Lowest relay port (the IANA dynamic ports by default, RFC 8656 §7.2).
        min_port: u16 ["PORT"] = "49152";
        /// Highest relay port.
        max_port: u16 ["PORT"] = "65535";
        /// Peer range to allow although the default deny list has it, CIDR or bare IP
        /// (repeatable; e.g. 127.0.0.0/8 for tests on loopback).
        allow_peer: Vec<PeerNet> ["CIDR"] = _;
        /// Peer range to deny, CIDR or bare IP (repeatable; wins over allow-peer).
        deny_peer: Vec<PeerNet> ["CIDR"] = _;
        /// Most allocations on the relay (508 when reached).
        max_allocations: usize ["N"] = "10000";
        /// Most allocations per user (486 when reached).
        user_quota: usize ["N"] = "100";
        /// Most permissions per allocation.
        max_permissions: usize ["N"] = "32";
        /// Most channels per allocation (at most 4096, RFC 8656 §12).
        max_channels: usize ["N"] = "32";
        /// Most peer connections per TCP allocation (RFC 6062), made by Connect or accepted on
        /// the relayed address; 0 turns TCP allocations off (442).
        max_peer_connections: usize ["N"] = "16";
        /// Bytes per second per allocation, each direction counted; suffixes K, M, G (x1000)
        /// and Ki, Mi, Gi (x1024); 0 = unlimited.
        bandwidth: Bandwidth ["BYTES"] = "0";
        /// Unauthenticated answers (401, 438) per second per source IP, burst 4x, over all
        /// threads; a port answered in the last second gets more only from the upper half
        /// (the rest is for the address's other ports). Clients answering with a nonce issued
        /// to their own address are charged to their address and port instead. 0 =
        /// unlimited, at most 100000.
        unauth_rate: u32 ["N"] = "20";
        /// Longest allocation lifetime granted, in seconds (600 to 86400).
        max_lifetime: Duration ["SECS"] = "3600";
        /// Seconds a nonce stays fresh before 438 Stale Nonce (1 to 86400).
        nonce_ttl: Duration ["SECS"] = "600";
        /// Seconds SIGTERM keeps relaying existing allocations (new ones are refused) before
        /// exiting (0 to 86400).
        drain_grace: Duration ["SECS"] = "30";
        /// Relay to send new allocations to while draining, instead of refusing them with 508:
        /// 300 Try Alternate (RFC 8489 §10). Repeatable, at most one per family: a client is
        /// sent to the one of its own address family (RFC 8489 §14.15), or refused if none.
        alternate_server: Vec<SocketAddr> ["IP:PORT"] = _;
        /// Name sent with alternate-server (ALTERNATE-DOMAIN, RFC 8489 §14.16): the name
        /// TLS clients check the alternate's certificate against.
        alternate_domain: Option<String> ["NAME"] = _;
        /// Also send new allocations to alternate-server when full (max-allocations reached or
        /// no relay port left), not only when draining: true or false.
        alternate_when_full: bool ["BOOL"] = "false";
        /// Write a usage record (one JSON line: user, addresses, traffic each way, peers, why
        /// it ended) for every allocation that ends, to this file (appended; reopened on
        /// SIGHUP, for logrotate) or `-` for stdout.
        usage_log: Option<PathBuf> ["PATH|-"] = (_, "off");
        /// Seconds between interim usage records of a live allocation (totals so far); 0:
        /// only when it ends (at most 86400).
        usage_interval: Duration ["SECS"] = "900";
    }
}

/// natkit-turn's configuration interface: the shared keys and its own.
pub fn schema() -> Schema {
    Schema::new(
        "natkit-turn",
        env!("CARGO_PKG_VERSION"),
        "natkit-turn: a TURN relay (RFC 8656, RFC 6156), secure by default.",
        "NATKIT_TURN",
    )
    .with::<Common>()
    .with::<TurnKeys>()
    .examples(EXAMPLES)
}

/// The end of `natkit-turn --help`. A test runs each line with `--check-config` (in a
/// directory holding the files they name), so they stay runnable.
pub const EXAMPLES: &str = "\
Examples:
  natkit-turn --listen 192.0.2.1:3478 --user alice:secret
                                                   # long-term credentials
  natkit-turn --listen 192.0.2.1:3478 --auth-secret-file secret.txt
                                                   # REST credentials (natkit creds mints them)
  natkit-turn --listen 10.0.0.5:3478 --relay-ip 10.0.0.5 --external-ip 203.0.113.7/10.0.0.5 --auth-secret-file secret.txt
                                                   # behind a 1:1 NAT
  natkit-turn --listen 192.0.2.1:3478 --tls-listen 192.0.2.1:5349 --cert cert.pem --key key.pem --auth-secret-file secret.txt
                                                   # TURN over TLS as well (turns:)
  natkit-turn --listen 192.0.2.1:3478 --user alice:secret --bandwidth 1M --user-quota 10 --metrics 127.0.0.1:9102
                                                   # limits, and Prometheus metrics
  NATKIT_TURN_AUTH_SECRET_FILE=secret.txt natkit-turn --listen 192.0.2.1:3478
                                                   # any flag as an environment variable
  natkit-turn --config turn.toml --check-config    # validate a config file and exit

Each flag is also a NATKIT_TURN_* variable and a key of the --config file;
the reference table is in the README (natkit-turn --print-config-reference).";

/// The command line and environment, parsed once (`schema().parse()`) and kept to resolve
/// the configuration again on SIGHUP.
pub type Args = CommandLine;

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
    /// The keys both servers have.
    pub common: Common,
    /// natkit-turn's own keys, as given.
    pub turn: TurnKeys,
    /// Certificate chain and key files, when TLS is configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// REST shared secrets in effect, the first one signs: from `auth-secret`, or read from
    /// `auth_secret_file`.
    pub auth_secrets: Vec<Secret>,
    /// Where `auth_secrets` were read from, if from a file.
    pub auth_secret_file: Option<PathBuf>,
    /// Relay addresses by family: index 0 IPv4, 1 IPv6 (the index of
    /// `natkit_proto::turn::server::RelayRequest::family`). At least one is set.
    pub relay: [Option<RelayIp>; 2],
}

impl Config {
    /// The files loaded by path that are loaded again when they change: the certificate,
    /// the key and `auth-secret-file`.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let tls = self.tls.iter().flat_map(|(c, k)| [c.clone(), k.clone()]);
        tls.chain(self.auth_secret_file.clone()).collect()
    }

    /// Resolves every key from its sources and validates. Call it again (same `args`) on
    /// SIGHUP: it re-reads the file.
    pub fn resolve(args: &Args) -> anyhow::Result<Config> {
        let s = args.sources()?;
        let common = Common::resolve(&s)?;
        let turn = TurnKeys::resolve(&s)?;
        let (auth_secrets, auth_secret_file) = rest_secrets(&s, &turn)?;
        // Before anything else: the most important refusal comes first.
        if turn.users.0.is_empty() && auth_secrets.is_empty() {
            bail!("natkit-turn refuses to run an open relay: give --user or --auth-secret or --auth-secret-file (or [users], auth-secret or auth-secret-file in the config file)");
        }
        let tls = common.validate(&s)?;
        let relay = relay_addresses(
            &turn.relay_ip,
            &turn.external_ip,
            &common.listen,
            &common.tls_listen,
        )?;
        let cfg = Config {
            common,
            turn,
            tls,
            auth_secrets,
            auth_secret_file,
            relay,
        };
        cfg.validate(&s)?;
        Ok(cfg)
    }

    fn validate(&self, s: &Sources<'_>) -> anyhow::Result<()> {
        let t = &self.turn;
        for (name, pass) in &t.users.0 {
            check_user(name, pass)?;
        }
        if self.auth_secrets.iter().any(|s| s.expose().is_empty()) {
            bail!("auth-secret: a secret is empty (an empty HMAC key would let anyone mint credentials)");
        }
        if t.realm.is_empty() {
            return Err(s.rule("realm", "must not be empty").into());
        }
        // RFC 8489 §14.9: REALM is fewer than 128 characters.
        if t.realm.chars().count() >= 128 || t.realm.chars().any(char::is_control) {
            return Err(s
                .rule(
                    "realm",
                    "must be fewer than 128 characters, without control characters (RFC 8489 §14.9)",
                )
                .into());
        }
        if t.min_port == 0 {
            return Err(s.rule("min_port", "must be at least 1").into());
        }
        if t.min_port > t.max_port {
            bail!("min-port {} is above max-port {}", t.min_port, t.max_port);
        }
        if t.max_port - t.min_port < 1 {
            bail!(
                "min-port/max-port: the range {}-{} has one port; at least 2 are needed (EVEN-PORT reserves pairs)",
                t.min_port,
                t.max_port
            );
        }
        for (field, v) in [
            ("max_allocations", t.max_allocations),
            ("user_quota", t.user_quota),
            ("max_permissions", t.max_permissions),
            ("max_channels", t.max_channels),
        ] {
            if v == 0 {
                return Err(s.rule(field, "must be at least 1").into());
            }
        }
        if t.max_channels > MAX_CHANNEL_NUMBERS {
            return Err(s
                .rule(
                    "max_channels",
                    format!(
                        "{} is more than the {MAX_CHANNEL_NUMBERS} channel numbers there are (RFC 8656 §12)",
                        t.max_channels
                    ),
                )
                .into());
        }
        if t.bandwidth.0 != 0 && t.bandwidth.0 < MIN_BANDWIDTH {
            return Err(s
                .rule(
                    "bandwidth",
                    format!(
                        "{} bytes/s is below {MIN_BANDWIDTH} (one full-size packet per second); use 0 for no limit",
                        t.bandwidth.0
                    ),
                )
                .into());
        }
        if t.unauth_rate > MAX_UNAUTH_RATE {
            return Err(s
                .rule(
                    "unauth_rate",
                    format!(
                        "{} is above {MAX_UNAUTH_RATE} per second; use 0 for no limit",
                        t.unauth_rate
                    ),
                )
                .into());
        }
        for (field, v, least) in [
            // RFC 8656 §7.2: the core grants at least the 600 s default.
            ("max_lifetime", t.max_lifetime, DEFAULT_LIFETIME),
            ("nonce_ttl", t.nonce_ttl, Duration::from_secs(1)),
            ("drain_grace", t.drain_grace, Duration::ZERO),
            ("usage_interval", t.usage_interval, Duration::ZERO),
        ] {
            if v < least || v > MAX_SECS {
                return Err(s
                    .rule(
                        field,
                        format!(
                            "{} s is out of range ({}-{})",
                            v.as_secs(),
                            least.as_secs(),
                            MAX_SECS.as_secs()
                        ),
                    )
                    .into());
            }
        }
        self.validate_alternate(s)
    }

    /// RFC 8489 §10: one alternate per family, never this relay itself
    /// (a client would be sent back to the server that refused it).
    fn validate_alternate(&self, s: &Sources<'_>) -> anyhow::Result<()> {
        let t = &self.turn;
        let mut seen = [false; 2];
        for a in &t.alternate_server {
            let f = usize::from(a.is_ipv6());
            if std::mem::replace(&mut seen[f], true) {
                return Err(s
                    .rule(
                        "alternate_server",
                        "at most one IPv4 and one IPv6 address: a client is sent to the one of its family",
                    )
                    .into());
            }
            let own = self.common.listen.iter().chain(&self.common.tls_listen);
            if own.into_iter().any(|l| l == a) {
                return Err(s
                    .rule(
                        "alternate_server",
                        format!("{a} is this relay's own listen address"),
                    )
                    .into());
            }
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(s
                    .rule(
                        "alternate_server",
                        format!("{a} is not an address clients can reach"),
                    )
                    .into());
            }
        }
        if t.alternate_server.is_empty() {
            for (field, set) in [
                ("alternate_domain", t.alternate_domain.is_some()),
                ("alternate_when_full", t.alternate_when_full),
            ] {
                if set {
                    return Err(s.rule(field, "needs alternate-server").into());
                }
            }
        }
        if let Some(d) = &t.alternate_domain {
            // RFC 8489 §14.16: a domain name (RFC 1035: at most 253
            // characters), sent to every redirected client.
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(s
                    .rule(
                        "alternate_domain",
                        "must be a domain name (letters, digits, '-' and '.', at most 253)",
                    )
                    .into());
            }
        }
        Ok(())
    }

    /// How many relay ports the range holds (per relay IP).
    pub fn relay_ports(&self) -> usize {
        usize::from(self.turn.max_port - self.turn.min_port) + 1
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
            nets(&self.turn.allow_peer),
            nets(&self.turn.deny_peer),
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
            .turn
            .users
            .0
            .iter()
            .map(|(n, p)| (n.clone(), p.expose().to_owned()))
            .collect();
        let rest = RestSecrets::new(self.auth_secrets.iter().map(|s| s.expose().as_bytes()));
        let nonce_keys = self
            .auth_secrets
            .iter()
            .map(|s| NonceKey::derive(s.expose().as_bytes(), &self.turn.realm))
            .collect();
        Credentials::new(users, rest).with_nonce_keys(nonce_keys)
    }

    /// The protocol core's settings (`draining` false).
    pub fn core_config(&self) -> core::Config {
        core::Config {
            realm: self.turn.realm.clone(),
            nonce_ttl: self.turn.nonce_ttl,
            default_lifetime: DEFAULT_LIFETIME,
            max_lifetime: self.turn.max_lifetime,
            max_permissions: self.turn.max_permissions,
            max_channels: self.turn.max_channels,
            bandwidth: self.turn.bandwidth.0,
            unauth_rate: self.turn.unauth_rate,
            draining: false,
            alternate: [
                self.turn
                    .alternate_server
                    .iter()
                    .copied()
                    .find(SocketAddr::is_ipv4),
                self.turn
                    .alternate_server
                    .iter()
                    .copied()
                    .find(SocketAddr::is_ipv6),
            ],
            alternate_domain: self.turn.alternate_domain.clone(),
            alternate_when_full: self.turn.alternate_when_full,
            usage_records: self.turn.usage_log.is_some(),
            usage_interval: Some(self.turn.usage_interval).filter(|i| !i.is_zero()),
            max_peer_connections: self.turn.max_peer_connections,
            shard: (0, 1),
        }
    }
}

fn nets(v: &[PeerNet]) -> Vec<IpNet> {
    v.iter().map(|n| n.0).collect()
}

/// Static users: `--user NAME:PASS` (repeatable; the password may hold ':' and ',') and a
/// `[users]` table (name = "password") in the file. Errors name the user, never the password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users(pub BTreeMap<String, Secret>);

impl Setting for Users {
    const SHAPE: Shape = Shape::Table;
    const COMMAS: bool = false;
    const SECRET: bool = true;

    fn from_texts(texts: &[&str]) -> Result<Self, Invalid> {
        let mut users = BTreeMap::new();
        let refuse = |reason: String| Invalid {
            value: None,
            reason,
        };
        for (i, u) in texts.iter().enumerate() {
            let Some((name, pass)) = u.split_once(':') else {
                return Err(refuse(format!(
                    "value #{} is not NAME:PASS (no ':' in it)",
                    i + 1
                )));
            };
            if users.insert(name.to_owned(), Secret::new(pass)).is_some() {
                return Err(refuse(format!("{name:?} is given twice")));
            }
        }
        Ok(Users(users))
    }

    fn from_toml(v: &toml::Value) -> Result<Self, Invalid> {
        let refuse = |reason: String| Invalid {
            value: None,
            reason,
        };
        let toml::Value::Table(t) = v else {
            return Err(refuse(expected("a table of name = \"password\"", v)));
        };
        t.iter()
            .map(|(name, pass)| match pass {
                toml::Value::String(p) => Ok((name.clone(), Secret::new(p.as_str()))),
                other => Err(refuse(format!(
                    "user {name:?}: {}",
                    expected("a password string", other)
                ))),
            })
            .collect::<Result<_, _>>()
            .map(Users)
    }

    fn unset() -> Option<Self> {
        Some(Users::default())
    }
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

/// The REST secrets in effect, and the file they were read from. The list and the file are
/// two forms of one setting: flags and env vars win over the config file as a whole, as for
/// every other key, so a Kubernetes Secret mounted as NATKIT_TURN_AUTH_SECRET_FILE overrides
/// the file's `auth-secret`. Both forms at the same level are refused: which would win is a
/// guess.
fn rest_secrets(
    s: &Sources<'_>,
    turn: &TurnKeys,
) -> anyhow::Result<(Vec<Secret>, Option<PathBuf>)> {
    let cli = |field| s.origin(field).is_some_and(|o| o.is_command_line());
    let (list_cli, file_cli) = (cli("auth_secret"), cli("auth_secret_file"));
    let command_line = list_cli || file_cli;
    // The forms at the level that counts: a form set only below it is replaced.
    let list: &[Secret] = if list_cli || !command_line {
        &turn.auth_secret
    } else {
        &[]
    };
    let file = if file_cli || !command_line {
        turn.auth_secret_file.clone()
    } else {
        None
    };
    match file {
        None => Ok((list.to_vec(), None)),
        Some(_) if !list.is_empty() => {
            let other = if command_line {
                "--auth-secret"
            } else {
                "the config file's auth-secret"
            };
            Err(s
                .rule(
                    "auth_secret_file",
                    format!("{other} is set too; give the REST secrets in one place (the file can list several)"),
                )
                .into())
        }
        Some(path) => Ok((read_secret_file(&path)?, Some(path))),
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

impl Value for Secret {
    const EXPECTED: &'static str = "a secret";
    // Never echoed, and never split at commas: a secret may hold one.
    const SECRET: bool = true;
    const COMMAS: bool = false;

    fn parse(text: &str) -> Result<Self, String> {
        Ok(Secret::new(text))
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

impl Value for ExternalIp {
    const EXPECTED: &'static str = "EXT or EXT/INT";

    fn parse(s: &str) -> Result<Self, String> {
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

impl Value for PeerNet {
    const EXPECTED: &'static str = <IpNet as Value>::EXPECTED;

    fn parse(s: &str) -> Result<Self, String> {
        <IpNet as Value>::parse(s).map(PeerNet)
    }
}

/// Bytes per second: a number with an optional K, M, G (x1000) or Ki, Mi,
/// Gi (x1024) suffix; in the file also a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth(pub u64);

impl Value for Bandwidth {
    const EXPECTED: &'static str = "bytes per second";

    fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, suffix) = t.split_at(digits);
        let bad = || "not bytes per second (e.g. 1000000, 500K, 10M, 1Gi)".to_owned();
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

    /// In the file also a plain integer.
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) => u64::try_from(*n)
                .map(Bandwidth)
                .map_err(|_| "must not be negative".into()),
            toml::Value::String(s) => Self::parse(s),
            other => Err(expected(
                "bytes per second (an integer, or a string with a suffix: \"10M\")",
                other,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_runtime::logging::LogFormat;
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
        Config::resolve(&schema().try_parse_from(v)?)
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
            c.common.listen,
            vec!["127.0.0.1:3478".parse::<SocketAddr>().unwrap()]
        );
        assert!(c.common.tcp);
        assert_eq!(c.turn.realm, "natkit");
        assert_eq!((c.turn.min_port, c.turn.max_port), (49152, 65535));
        assert_eq!(
            (
                c.turn.max_allocations,
                c.turn.user_quota,
                c.turn.max_permissions,
                c.turn.max_channels
            ),
            (10_000, 100, 32, 32)
        );
        assert_eq!((c.turn.bandwidth.0, c.turn.unauth_rate), (0, 20));
        assert_eq!(c.turn.max_lifetime, Duration::from_secs(3600));
        assert_eq!(c.turn.nonce_ttl, Duration::from_secs(600));
        assert_eq!(c.common.tcp_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.common.max_tcp_connections, 10_000);
        assert_eq!(c.turn.drain_grace, Duration::from_secs(30));
        assert!(c.common.threads >= 1);
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
        assert_eq!(core.max_lifetime, c.turn.max_lifetime);
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
            c.common.listen,
            vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
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
        assert_eq!((c.turn.min_port, c.turn.max_port), (40000, 40001));
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
            parse(&["--max-channels", "4096"])
                .unwrap()
                .turn
                .max_channels,
            4096
        );
        assert!(err(&["--max-lifetime", "599"]).starts_with("max-lifetime:"));
        assert!(err(&["--nonce-ttl", "0"]).starts_with("nonce-ttl:"));
        assert!(err(&["--threads", "0"]).starts_with("threads:"));
        assert!(err(&["--tcp-idle-timeout", "0"]).starts_with("tcp-idle-timeout:"));
        assert_eq!(
            parse(&["--drain-grace", "0"]).unwrap().turn.drain_grace,
            Duration::ZERO
        );
        assert!(err(&["--bandwidth", "100"]).starts_with("bandwidth:"));
        assert!(err(&["--realm", ""]).starts_with("realm:"));
        let long = "r".repeat(128);
        assert!(err(&["--realm", &long]).starts_with("realm:"));
    }

    #[test]
    fn bandwidth_suffixes() {
        let b = |s: &str| Bandwidth::parse(s).map(|b| b.0);
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
            parse(&["--bandwidth", "10M"]).unwrap().turn.bandwidth.0,
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
        let s = |v: &[PeerNet]| v.iter().map(|n| n.0.to_string()).collect::<Vec<_>>();
        assert_eq!(s(&c.turn.allow_peer), ["127.0.0.0/8", "::1/128"]);
        assert_eq!(s(&c.turn.deny_peer), ["8.8.8.8/32", "2001:db8::/32"]);
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
        assert_eq!(c.turn.users.0["bob"].expose(), "se:cr,et");
        let dbg = format!("{c:?}");
        for secret in ["pw", "se:cr,et", "hunter2"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(dbg.contains("alice") && dbg.contains("<redacted>"), "{dbg}");
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let args = schema()
            .try_parse_from([
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
        assert!(err(&["--cert", "/x.pem"]).starts_with("cert: set without key"));
        assert!(err(&["--key", "/x.pem"]).starts_with("key: set without cert"));
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
        assert_eq!(c.common.listen[0].port(), 4000);
        assert!(!c.common.tcp);
        assert_eq!(c.turn.realm, "file.example");
        assert_eq!(c.turn.users.0.len(), 2);
        assert_eq!(c.turn.users.0["erin"].expose(), "from-file");
        assert_eq!(c.auth_secrets, vec![Secret::new("s1"), Secret::new("s2")]);
        assert_eq!(c.relay[0].unwrap().advertised.to_string(), "192.0.2.9");
        assert_eq!((c.turn.min_port, c.turn.max_port), (30000, 30999));
        assert_eq!(c.turn.allow_peer.len(), 1);
        assert_eq!(c.turn.deny_peer[0].0.to_string(), "127.0.0.9/32");
        assert_eq!(
            (
                c.turn.max_allocations,
                c.turn.user_quota,
                c.turn.max_permissions,
                c.turn.max_channels
            ),
            (50, 5, 8, 9)
        );
        assert_eq!((c.turn.bandwidth.0, c.turn.unauth_rate), (2_000_000, 7));
        assert_eq!(c.turn.max_lifetime, Duration::from_secs(1200));
        assert_eq!(c.turn.nonce_ttl, Duration::from_secs(60));
        assert_eq!(c.common.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.common.log_format, LogFormat::Json);
        assert_eq!(c.common.threads, 3);
        assert_eq!(c.common.tcp_idle_timeout, Duration::from_secs(45));
        assert_eq!(c.common.max_tcp_connections, 77);
        assert_eq!(c.turn.drain_grace, Duration::from_secs(5));
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
        assert_eq!(c.turn.users.0.keys().collect::<Vec<_>>(), ["gina"]);
        assert_eq!(c.common.threads, 2);
        assert_eq!((c.turn.min_port, c.turn.max_port), (30000, 30001));
        assert!(c.common.tcp);
        assert_eq!(c.turn.realm, "file.example");

        // Env vars win over the file, flags over env vars.
        let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("NATKIT_TURN_REALM", "env.example");
        std::env::set_var("NATKIT_TURN_MAX_CHANNELS", "11");
        std::env::set_var("NATKIT_TURN_USER", "hank:env,pass");
        std::env::set_var("NATKIT_TURN_ALLOW_PEER", "10.0.0.0/8,192.168.0.0/16");
        let parsed = schema()
            .try_parse_from(["natkit-turn", "--config", &path, "--max-channels", "12"])
            .map_err(anyhow::Error::from)
            .and_then(|a| Config::resolve(&a));
        for k in ["REALM", "MAX_CHANNELS", "USER", "ALLOW_PEER"] {
            std::env::remove_var(format!("NATKIT_TURN_{k}"));
        }
        drop(_g);
        let c = parsed.unwrap();
        assert_eq!(c.turn.realm, "env.example");
        assert_eq!(c.turn.max_channels, 12);
        assert_eq!(c.turn.users.0["hank"].expose(), "env,pass");
        assert_eq!(c.turn.allow_peer.len(), 2);
        assert_eq!(c.turn.max_permissions, 8);
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
        let parsed = schema()
            .try_parse_from(["natkit-turn", "--relay-ip", "127.0.0.1"])
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
            let parsed = schema()
                .try_parse_from(["natkit-turn", "--config", cfg])
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
        let a = schema()
            .try_parse_from(["natkit-turn", "--check-config"])
            .unwrap();
        assert!(a.check_config());
    }

    /// The README's configuration table is the schema's reference, so it lists every key
    /// with its flag, variable, default and documentation as the binary has them.
    #[test]
    fn the_readme_table_is_generated_from_the_schema() {
        let stale = schema().stale_reference(include_str!("../../README.md"));
        assert!(stale.is_none(), "README.md: {}", stale.unwrap_or_default());
    }
}
