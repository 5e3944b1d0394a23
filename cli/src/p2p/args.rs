//! The flags shared by `natkit listen`, `connect`, `send` and `receive`,
//! and the [`natkit_ice::Session`] they describe.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use natkit_ice::session::Builder;
use natkit_ice::{Config, Role, Session, TurnServer};

use crate::turn::args::{parse_target, TransportArg};
use crate::turn::tls::{self, Trust};
use crate::udp_driver;

/// Flags common to the four peer-to-peer commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// STUN server to learn the NAT's mapping from: HOST[:PORT]
    /// (repeatable; port 3478 by default).
    #[arg(long = "stun", value_name = "HOST:PORT")]
    pub stun: Vec<String>,
    /// --turn and its credentials and TLS trust (the same flags as
    /// `natkit netcheck --turn`).
    #[command(flatten)]
    pub relay: crate::relays::TurnFlags,
    /// Use only relayed candidates (needs --turn): hides your addresses
    /// from the peer, or tests the relay path.
    #[arg(long)]
    pub relay_only: bool,
    /// Offer loopback addresses too (both peers on this machine).
    #[arg(long)]
    pub loopback: bool,
    /// Do not ask the gateway to map a port (PCP, NAT-PMP, UPnP IGD). By
    /// default the mapped address is offered as a candidate, renewed and
    /// deleted at the end.
    #[arg(long)]
    pub no_port_mapping: bool,
    /// The gateway to ask for a port mapping (default: the default route's).
    #[arg(long, value_name = "IP", conflicts_with = "no_port_mapping")]
    pub gateway: Option<IpAddr>,
    /// Use only this local address for host candidates (repeatable;
    /// default: every interface's).
    #[arg(long = "bind", value_name = "IP")]
    pub bind: Vec<IpAddr>,
    /// Also write your description to FILE (atomically), and rewrite it
    /// after an ICE restart.
    #[arg(long, value_name = "FILE")]
    pub desc_out: Option<PathBuf>,
    /// Read the peer's description from FILE (waits until it exists), and
    /// keep watching it for ICE restarts.
    #[arg(long, value_name = "FILE")]
    pub remote: Option<PathBuf>,
    /// Write a JSON report (path, RTT, times, byte counts) to FILE when
    /// connected and again at exit.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The most seconds connecting may take, from having the peer's
    /// description to a usable QUIC connection.
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = secs)]
    pub timeout: Duration,
    /// The most seconds to wait for the peer's description (file or
    /// terminal).
    #[arg(long, value_name = "DURATION", default_value = "600", value_parser = secs)]
    pub wait: Duration,
    /// Consent freshness (RFC 7675): the peer is gone when it answers no
    /// check for this long. Checks go every sixth of it (at most 5 s).
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = secs)]
    pub consent_timeout: Duration,
    /// Call the path degraded after this long without an answered check
    /// (default: 2.5 check intervals); the controlling side then restarts
    /// ICE if descriptions travel by file (--desc-out and --remote).
    #[arg(long, value_name = "DURATION", value_parser = secs)]
    pub degraded_after: Option<Duration>,
    /// Print and write your description as JSON instead of the nk1. text.
    #[arg(long)]
    pub json: bool,
    /// Exchange descriptions by copy-paste even with --turn: `send` and
    /// `listen` then print their description instead of a short code.
    #[arg(long)]
    pub paste: bool,
}

/// A duration flag (the shared spelling, `30s`, `2m`, or seconds): above
/// zero, at most a day.
fn secs(s: &str) -> Result<Duration, String> {
    let d = crate::duration::positive(s)?;
    if d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: at most a day (86400 s)"));
    }
    Ok(d)
}

/// RFC 7675 §5.1 checks every 5 s for a 30 s timeout: keep that ratio for
/// shorter timeouts, so a test can ask for a peer to be declared gone fast.
pub fn consent_interval(timeout: Duration) -> Duration {
    (timeout / 6).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

impl Common {
    /// The session builder these flags describe, in `role`. Server names
    /// are resolved here (the system resolver, only for names: IP literals
    /// are used as they are).
    pub fn builder(&self, role: Role) -> anyhow::Result<Builder> {
        if self.relay_only && self.relay.turn.is_empty() {
            bail!("--relay-only needs a TURN server: add --turn turn:HOST[:PORT]");
        }
        let mut b = Session::builder()
            .role(role)
            .loopback(self.loopback)
            .relay_only(self.relay_only)
            .port_mapping(!self.no_port_mapping)
            .connect_timeout(self.timeout)
            .gather_timeout(self.timeout.min(Duration::from_secs(5)))
            .ice_config(Config {
                role,
                consent_interval: consent_interval(self.consent_timeout),
                consent_timeout: self.consent_timeout,
                ..Config::default()
            })
            // QUIC's idle timer must not beat consent to it: the peer
            // vanishing is reported as consent loss (RFC 7675), with its
            // path, not as a bare QUIC timeout. It still ends a session
            // whose consent bookkeeping an unanswered ICE restart reset.
            .idle_timeout(self.consent_timeout * 3 / 2);
        if let Some(d) = self.degraded_after {
            b = b.degraded_after(d);
        }
        if !self.bind.is_empty() {
            b = b.bind(self.bind.iter().copied());
        }
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        for s in &self.stun {
            let spec = udp_driver::parse_server(s).with_context(|| format!("--stun {s}"))?;
            let addr = udp_driver::resolve(&spec, None).with_context(|| format!("--stun {s}"))?;
            b = b.stun_server(addr);
        }
        let (servers, tls) = self.turn_servers()?;
        for t in servers {
            b = b.turn_server(t);
        }
        if let Some(tls) = tls {
            b = b.turn_tls_config(tls);
        }
        Ok(b)
    }

    /// The servers as given, for messages.
    pub fn servers(&self) -> Vec<String> {
        let stun = self.stun.iter().map(|s| format!("--stun {s}"));
        stun.chain(self.relay.turn.iter().map(|t| format!("--turn {t}")))
            .collect()
    }

    /// The TURN servers of `--turn`, with their credentials, and the TLS
    /// client configuration when one is over TLS.
    #[allow(clippy::type_complexity)]
    pub fn turn_servers(
        &self,
    ) -> anyhow::Result<(
        Vec<TurnServer>,
        Option<std::sync::Arc<rustls::ClientConfig>>,
    )> {
        // A password or secret may come from the environment (NATKIT_TURN_*),
        // set for other runs: only flags say the user meant a relay.
        let any_creds = self.relay.turn_user.is_some()
            || self.relay.turn_password_file.is_some()
            || self.relay.turn_secret_file.is_some();
        if self.relay.turn.is_empty() {
            if any_creds {
                bail!("--turn-user, --turn-password and --turn-secret need --turn URI");
            }
            return Ok((Vec::new(), None));
        }
        let (creds, _rest) = self.relay.credentials()?;
        let mut out = Vec::new();
        let mut tls_config = None;
        for uri in &self.relay.turn {
            let (spec, transport) =
                parse_target(uri, None).map_err(|f| anyhow::anyhow!("--turn: {}", f.message))?;
            let addr = udp_driver::resolve(&spec, None).with_context(|| format!("--turn {uri}"))?;
            let server = match transport {
                TransportArg::Udp => TurnServer::udp(addr, creds.clone()),
                TransportArg::Tcp => TurnServer::tcp(addr, creds.clone()),
                TransportArg::Tls => {
                    if tls_config.is_none() {
                        tls_config = Some(tls::client_config(&self.trust())?);
                    }
                    let name = self.relay.tls_name.as_deref().unwrap_or(&spec.host);
                    // Checked here for a message that names the flag.
                    tls::server_name(name)?;
                    TurnServer::tls(addr, creds.clone(), name)
                }
            };
            out.push(server);
        }
        Ok((out, tls_config))
    }

    fn trust(&self) -> Trust {
        if self.relay.insecure {
            errln!(
                "warning: --insecure: the TURN server's certificate is not verified; \
                 anyone on the path could pose as the server"
            );
            return Trust::Insecure;
        }
        match &self.relay.ca {
            Some(f) => Trust::CaFile(f.clone()),
            None => Trust::System,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: Common,
    }

    fn parse(line: &[&str]) -> Result<Common, String> {
        let mut v = vec!["natkit"];
        v.extend_from_slice(line);
        Cli::try_parse_from(v)
            .map(|c| c.c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn seconds_take_fractions_and_refuse_nonsense() {
        assert_eq!(secs("1.5").unwrap(), Duration::from_millis(1500));
        assert!(secs("0").is_err());
        assert!(secs("-3").is_err());
        assert!(secs("abc").is_err());
        assert!(secs("NaN").is_err());
        assert!(secs("1e9").is_err());
    }

    #[test]
    fn consent_checks_keep_rfc_7675_ratio() {
        assert_eq!(
            consent_interval(Duration::from_secs(30)),
            Duration::from_secs(5)
        );
        assert_eq!(
            consent_interval(Duration::from_secs(3)),
            Duration::from_millis(500)
        );
        assert_eq!(
            consent_interval(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn turn_servers_follow_the_uri() {
        let c = parse(&[
            "--turn",
            "turn:127.0.0.1:3479",
            "--turn",
            "turn:[::1]?transport=tcp",
            "--turn-user",
            "u",
            "--turn-password",
            "p",
        ])
        .unwrap();
        let (t, tls) = c.turn_servers().unwrap();
        assert!(tls.is_none());
        assert_eq!(t[0].addr, "127.0.0.1:3479".parse().unwrap());
        assert_eq!(t[0].transport, natkit_proto::turn::client::Transport::Udp);
        assert_eq!(t[1].addr, "[::1]:3478".parse().unwrap());
        assert_eq!(t[1].transport, natkit_proto::turn::client::Transport::Tcp);
        assert_eq!(t[0].credentials.username, "u");
    }

    #[test]
    fn turn_needs_credentials_and_credentials_need_turn() {
        let c = parse(&["--turn", "turn:127.0.0.1"]).unwrap();
        let e = c.turn_servers().unwrap_err().to_string();
        assert!(e.contains("--turn-user"), "{e}");
        let c = parse(&["--turn-user", "u", "--turn-password", "p"]).unwrap();
        let e = c.turn_servers().unwrap_err().to_string();
        assert!(e.contains("need --turn"), "{e}");
        let c = parse(&[
            "--turn",
            "turn:127.0.0.1?transport=sctp",
            "--turn-secret",
            "s",
        ])
        .unwrap();
        assert!(c.turn_servers().is_err());
        let c = parse(&["--relay-only"]).unwrap();
        let e = c.builder(Role::Controlling).unwrap_err().to_string();
        assert!(e.contains("needs a TURN server"), "{e}");
        // Both a password and a secret: refused when the credentials are
        // built (either may come from the environment, so not by clap).
        let c = parse(&[
            "--turn",
            "turn:127.0.0.1",
            "--turn-secret",
            "s",
            "--turn-password",
            "p",
        ])
        .unwrap();
        let e = c.turn_servers().unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
    }
}
