//! `natkit creds --secret S --user U --ttl 1h`: mint REST-style TURN
//! credentials (draft-uberti-behave-turn-rest, coturn's `use-auth-secret`)
//! the way a web service hands them to its clients, with the RTCIceServer
//! entry a browser takes (W3C WebRTC §4.2.1). The credential code is
//! `natkit_proto::rest`.

use std::time::{Duration, SystemTime};

use anyhow::bail;
use natkit_proto::rest;
use serde::Serialize;

/// Flags of `natkit creds`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The shared secret configured on the TURN server (coturn's
    /// static-auth-secret, natkit-turn's --auth-secret).
    #[arg(
        long,
        value_name = "SECRET",
        env = "NATKIT_TURN_SECRET",
        hide_env_values = true,
        required_unless_present = "secret_file"
    )]
    pub secret: Option<String>,
    /// Read the shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Who the credentials are for (the part after the expiry in the
    /// username); empty gives a timestamp-only username.
    #[arg(long, short = 'u', value_name = "USER", default_value = "")]
    pub user: String,
    /// How long they stay valid: N, Ns, Nm, Nh or Nd.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A TURN URI for the RTCIceServer entry (RFC 7065), e.g.
    /// turn:turn.example.org:3478?transport=udp; repeat for several.
    #[arg(long = "url", value_name = "URI", value_parser = parse_url)]
    pub urls: Vec<String>,
    /// Print only JSON.
    #[arg(long)]
    pub json: bool,
}

/// The RTCIceServer dictionary (W3C WebRTC, `RTCIceServer`).
#[derive(Debug, Serialize)]
struct IceServer<'a> {
    urls: &'a [String],
    username: &'a str,
    credential: &'a str,
}

#[derive(Debug, Serialize)]
struct Output<'a> {
    username: &'a str,
    password: &'a str,
    /// Unix seconds.
    expires_at: u64,
    /// RFC 3339, UTC.
    expires: String,
    ttl_s: u64,
    ice_server: IceServer<'a>,
}

/// Run `natkit creds`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let secret = crate::secret::resolve(
        args.secret.as_deref(),
        args.secret_file.as_deref(),
        "--secret-file",
    )?
    .unwrap_or_default();
    if secret.is_empty() {
        // An empty HMAC key would let anyone mint the same credentials.
        bail!("--secret must not be empty");
    }
    if args.user.contains(rest::SEPARATOR) && args.user.starts_with(|c: char| c.is_ascii_digit()) {
        // Harmless to the server (the expiry is before the first ':'),
        // but likely a username pasted in by mistake.
        errln!(
            "warning: --user {:?} looks like a REST username already; it becomes the user part",
            args.user
        );
    }
    let c = rest::generate(secret.as_bytes(), &args.user, args.ttl, SystemTime::now());
    let out = Output {
        username: &c.username,
        password: &c.password,
        expires_at: c.expires_at,
        expires: natkit_runtime::time::rfc3339(c.expires_at),
        ttl_s: args.ttl.as_secs(),
        ice_server: IceServer {
            urls: &args.urls,
            username: &c.username,
            credential: &c.password,
        },
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    outln!("username    {}", out.username);
    outln!("password    {}", out.password);
    outln!("expires     {} ({} s from now)", out.expires, out.ttl_s);
    outln!("ice server  {}", serde_json::to_string(&out.ice_server)?);
    if args.urls.is_empty() {
        errln!(
            "note: no --url given: an RTCIceServer needs at least one, \
             e.g. --url turn:turn.example.org:3478"
        );
    }
    Ok(())
}

/// `90`, `90s`, `15m`, `1h`, `7d` (the shared duration spelling), whole
/// seconds, at least one.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s)?;
    if d < Duration::from_secs(1) {
        return Err("the ttl must be at least 1 s".into());
    }
    Ok(Duration::from_secs(d.as_secs()))
}

/// A TURN or STUN URI (RFC 7065, RFC 7064), checked only for its scheme
/// and host: browsers reject an RTCIceServer with anything else.
fn parse_url(s: &str) -> Result<String, String> {
    let rest = ["turn:", "turns:", "stun:", "stuns:"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .ok_or_else(|| format!("{s:?} is not a turn:, turns:, stun: or stuns: URI"))?;
    if rest.is_empty() || rest.starts_with('?') || rest.starts_with("//") {
        return Err(format!(
            "{s:?} has no host (RFC 7065: turn:HOST[:PORT][?transport=udp|tcp])"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "h",
            "0",
            "0h",
            "1w",
            "-1h",
            "99999999999999999999d",
            "36600d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn urls_need_a_scheme_and_host() {
        assert!(parse_url("turn:turn.example.org:3478?transport=tcp").is_ok());
        assert!(parse_url("turns:[2001:db8::1]:5349").is_ok());
        for bad in [
            "turn.example.org",
            "http://x",
            "turn:",
            "turn:?transport=udp",
            "turn://x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
