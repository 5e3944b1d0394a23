//! The flags of `natkit turn`, and what they mean: credentials, server,
//! transport.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use natkit_proto::turn::client::{Credentials, Transport};

use super::failure::Failure;
use crate::secret;
use crate::udp_driver::{self, ServerSpec, TimingArgs};

/// Default port for TURN over TLS (RFC 8656 §18, "turns").
const TLS_PORT: u16 = 5349;

/// How long REST credentials minted from `--secret` last.
const REST_TTL: Duration = Duration::from_secs(3600);

/// Flags of `natkit turn`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// TURN server: HOST[:PORT], IPv4[:PORT], [IPv6][:PORT] or a
    /// turn:/turns: URI (RFC 7065); port 3478 by default, 5349 for TLS.
    #[arg(value_name = "SERVER[:PORT]")]
    pub server: String,
    /// Username (with --password), or the user part of REST credentials
    /// (with --secret).
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Password for --user (long-term credentials, RFC 8489 §9.2).
    #[arg(
        long,
        short = 'p',
        value_name = "PASSWORD",
        env = "NATKIT_TURN_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Read the password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<std::path::PathBuf>,
    /// Shared secret of the server's REST API (coturn's
    /// static-auth-secret): credentials valid for 1 h are minted from it.
    #[arg(
        long,
        value_name = "SECRET",
        env = "NATKIT_TURN_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Read the shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// How to reach the server (the relayed transport is always UDP).
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Relay to this UDP echo service instead of to a second allocation.
    #[arg(long, value_name = "IP:PORT")]
    pub peer: Option<SocketAddr>,
    /// Round trips to measure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Payload bytes per round trip.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(16..=1200))]
    pub size: u32,
    /// How long to wait for each echo (e.g. 2s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = crate::duration::positive)]
    pub data_timeout: Duration,
    /// TLS: trust this PEM file (a private CA or the server's self-signed
    /// certificate) instead of the system's CAs.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: do not verify the server's certificate (prints a warning).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// TLS: the name the certificate must carry (default: the server's
    /// host as given).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub timing: TimingArgs,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// UDP (retransmissions per RFC 8489 §6.2.1).
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Udp => Transport::Udp,
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Tls => Transport::Tls,
        }
    }
}

/// Credentials from the flags, and whether they are REST ones.
pub fn credentials(args: &Args) -> Result<(Credentials, bool), Failure> {
    let usage = |e: anyhow::Error| Failure::new("usage", format!("{e:#}"));
    let password = secret::resolve(
        args.password.as_deref(),
        args.password_file.as_deref(),
        "--password-file",
    )
    .map_err(usage)?;
    let shared = secret::resolve(
        args.secret.as_deref(),
        args.secret_file.as_deref(),
        "--secret-file",
    )
    .map_err(usage)?;
    credentials_from(
        args.user.as_deref(),
        password.as_deref(),
        shared.as_deref(),
        ("--user", "--password", "--secret"),
    )
}

/// Credentials from a user, a password and a REST secret, whichever were
/// given (`flags` names them in messages); shared with `natkit listen`
/// and friends.
pub(crate) fn credentials_from(
    user: Option<&str>,
    password: Option<&str>,
    secret: Option<&str>,
    flags: (&str, &str, &str),
) -> Result<(Credentials, bool), Failure> {
    let (fu, fp, fs) = flags;
    let usage = |m: String| Failure::new("usage", m);
    match (secret, password, user) {
        (Some(_), Some(_), _) => Err(usage(format!("give {fp} or {fs}, not both"))),
        (Some(s), None, user) => {
            if s.is_empty() {
                return Err(usage(format!("{fs} must not be empty")));
            }
            let user = user.unwrap_or("");
            Ok((
                Credentials::from_rest_secret(s.as_bytes(), user, REST_TTL, SystemTime::now()),
                true,
            ))
        }
        (None, Some(p), Some(u)) => Ok((Credentials::new(u.to_owned(), p.to_owned()), false)),
        (None, Some(_), None) => Err(usage(format!("{fp} needs {fu}"))),
        (None, None, _) => Err(usage(format!(
            "credentials needed: {fu} U {fp} P, or {fs} S [{fu} U]"
        ))),
    }
}

/// The server spec and transport from `SERVER` and `--transport`: a
/// turn:/turns: URI (RFC 7065) may carry both.
pub fn target(args: &Args) -> Result<(ServerSpec, TransportArg), Failure> {
    parse_target(&args.server, args.transport)
}

/// A TURN server as written (HOST[:PORT] or a turn:/turns: URI, RFC 7065)
/// and the transport a flag asked for, if any: the server spec (3478 by
/// default, 5349 for TLS) and the transport to use.
pub(crate) fn parse_target(
    server: &str,
    flag: Option<TransportArg>,
) -> Result<(ServerSpec, TransportArg), Failure> {
    let usage = |m: String| Failure::new("usage", m);
    let s = server.trim();
    let (uri_transport, rest) = if let Some(r) = s.strip_prefix("turns:") {
        (Some(TransportArg::Tls), r)
    } else if let Some(r) = s.strip_prefix("turn:") {
        (None, r)
    } else {
        (None, s)
    };
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let uri_transport = match (query, uri_transport) {
        (None, t) => t,
        (Some("transport=udp"), None) => Some(TransportArg::Udp),
        (Some("transport=tcp"), None) => Some(TransportArg::Tcp),
        (Some("transport=tcp"), Some(TransportArg::Tls)) => Some(TransportArg::Tls),
        (Some(q), _) => return Err(usage(format!("unsupported URI query {q:?} in {s:?}"))),
    };
    let transport = match (uri_transport, flag) {
        (Some(u), Some(f)) if u != f => {
            return Err(usage(format!(
                "{s:?} says {u:?} but --transport says {f:?}"
            )))
        }
        (u, f) => f.or(u).unwrap_or(TransportArg::Udp),
    };
    let mut spec = udp_driver::parse_server(hostport).map_err(|e| usage(format!("{e:#}")))?;
    // parse_server fills in 3478; TLS defaults to 5349 unless a port was
    // written.
    let port_given = hostport.ends_with(&format!(":{}", spec.port));
    if transport == TransportArg::Tls && !port_given {
        spec.port = TLS_PORT;
    }
    Ok((spec, transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        let mut v = vec!["natkit-turn"];
        v.extend_from_slice(line);
        Cli::try_parse_from(v).unwrap().args
    }

    #[test]
    fn tls_defaults_to_5349_unless_a_port_is_given() {
        let (s, t) = target(&args(&["h.example", "--transport", "tls", "--secret", "x"])).unwrap();
        assert_eq!((s.port, t), (5349, TransportArg::Tls));
        let (s, t) = target(&args(&[
            "h.example:3478",
            "--transport",
            "tls",
            "--secret",
            "x",
        ]))
        .unwrap();
        assert_eq!((s.port, t), (3478, TransportArg::Tls));
        let (s, t) = target(&args(&["h.example", "--secret", "x"])).unwrap();
        assert_eq!((s.port, t), (3478, TransportArg::Udp));
    }

    #[test]
    fn turn_uris_carry_the_transport() {
        let (s, t) = target(&args(&["turns:h.example", "--secret", "x"])).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, t),
            ("h.example", 5349, TransportArg::Tls)
        );
        let (s, t) = target(&args(&["turn:[::1]:3479?transport=tcp", "--secret", "x"])).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, t),
            ("::1", 3479, TransportArg::Tcp)
        );
        let e = target(&args(&[
            "turn:h?transport=tcp",
            "--transport",
            "udp",
            "--secret",
            "x",
        ]))
        .unwrap_err();
        assert_eq!(e.kind, "usage");
        assert!(target(&args(&["turn:h?transport=sctp", "--secret", "x"])).is_err());
    }

    #[test]
    fn credentials_need_one_source() {
        assert_eq!(credentials(&args(&["h"])).unwrap_err().kind, "usage");
        assert_eq!(
            credentials(&args(&["h", "-p", "x"])).unwrap_err().message,
            "--password needs --user"
        );
        let e = credentials(&args(&["h", "-u", "a", "-p", "x", "--secret", "s"])).unwrap_err();
        assert!(e.message.contains("not both"));
        let (c, rest) = credentials(&args(&["h", "-u", "bob", "--secret", "s"])).unwrap();
        assert!(rest);
        let (exp, user) = c.username.split_once(':').unwrap();
        assert_eq!(user, "bob");
        let exp: u64 = exp.parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 3590..=now + 3610).contains(&exp), "{exp} vs {now}");
    }
}
