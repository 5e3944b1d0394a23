//! `natkit netcheck --turn URI...`: the round trips through each relay
//! (one `natkit turn` check per relay, at the same time as the NAT tests),
//! so a diagnosis also says whether the fallback path works, and at what
//! cost; over TCP or TLS it is also the "where given" half of the UDP
//! verdict.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::stun::ErrorOut;
use crate::turn;
use crate::udp_driver::TimingArgs;

/// The TURN flags shared by `natkit netcheck --turn` and the
/// peer-to-peer commands: one spelling, one meaning.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnFlags {
    /// TURN server: turn:HOST[:PORT][?transport=udp|tcp] or
    /// turns:HOST[:PORT] (RFC 7065; repeatable; ports 3478 and 5349 by
    /// default).
    #[arg(long = "turn", value_name = "URI")]
    pub turn: Vec<String>,
    /// TURN username (with --turn-password), or the user part of REST
    /// credentials (with --turn-secret).
    #[arg(long, value_name = "U")]
    pub turn_user: Option<String>,
    /// TURN password (long-term credentials, RFC 8489 §9.2).
    #[arg(
        long,
        value_name = "P",
        env = "NATKIT_TURN_PASSWORD",
        hide_env_values = true
    )]
    pub turn_password: Option<String>,
    /// Read the TURN password from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "turn_password")]
    pub turn_password_file: Option<PathBuf>,
    /// Shared secret of the TURN server's REST API: credentials valid for
    /// 1 h are minted from it.
    #[arg(
        long,
        value_name = "S",
        env = "NATKIT_TURN_SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,
    /// Read the TURN shared secret from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "turn_secret")]
    pub turn_secret_file: Option<PathBuf>,
    /// TLS (turns:, and stuns: on netcheck): trust this PEM file (a private
    /// CA or the server's certificate) instead of the system's CAs.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: do not verify the server's certificate (prints a warning).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// turns: the name the server's certificate must carry (default: the
    /// host of the URI).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
}

impl TurnFlags {
    /// The credentials the flags give (a password or REST secret may come
    /// from a file or the environment), or a usage error naming these
    /// flags: `--turn-user`, not `natkit turn`'s `--user`.
    pub fn credentials(&self) -> anyhow::Result<(natkit_proto::turn::client::Credentials, bool)> {
        let password = crate::secret::resolve(
            self.turn_password.as_deref(),
            self.turn_password_file.as_deref(),
            "--turn-password-file",
        )?;
        let shared = crate::secret::resolve(
            self.turn_secret.as_deref(),
            self.turn_secret_file.as_deref(),
            "--turn-secret-file",
        )?;
        turn::args::credentials_from(
            self.turn_user.as_deref(),
            password.as_deref(),
            shared.as_deref(),
            ("--turn-user", "--turn-password", "--turn-secret"),
        )
        .map_err(Into::into)
    }
}

/// One relay's result.
#[derive(Debug, Clone, Serialize)]
pub struct RelayOut {
    pub uri: String,
    pub server: Option<SocketAddr>,
    pub transport: &'static str,
    pub ok: bool,
    /// The relayed address allocated.
    pub relayed: Option<SocketAddr>,
    pub sent: u32,
    pub received: u32,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub error: Option<ErrorOut>,
}

/// Round trips through each relay.
const ROUND_TRIPS: u32 = 3;

/// Start one check per `--turn` URI, each on a thread of its own.
pub fn start(args: &TurnFlags, timing: &TimingArgs) -> Vec<JoinHandle<RelayOut>> {
    args.turn
        .iter()
        .map(|uri| {
            let t = turn::Args {
                server: uri.clone(),
                user: args.turn_user.clone(),
                password: args.turn_password.clone(),
                password_file: args.turn_password_file.clone(),
                secret: args.turn_secret.clone(),
                secret_file: args.turn_secret_file.clone(),
                transport: None,
                peer: None,
                count: ROUND_TRIPS,
                size: 100,
                // Each echo within a fraction of the run's budget.
                data_timeout: (timing.timeout / 4).max(Duration::from_millis(100)),
                ca: args.ca.clone(),
                insecure: args.insecure,
                tls_name: args.tls_name.clone(),
                json: true,
                timing: timing.clone(),
            };
            let uri = uri.clone();
            std::thread::spawn(move || out(uri, turn::check(&t)))
        })
        .collect()
}

fn out(uri: String, r: turn::report::Report) -> RelayOut {
    let rt = r.round_trip.as_ref();
    RelayOut {
        uri,
        server: r.server,
        transport: r.transport,
        ok: r.ok,
        relayed: r
            .allocations
            .first()
            .and_then(|a| a.relayed.first().copied()),
        sent: rt.map_or(0, |t| t.sent),
        received: rt.map_or(0, |t| t.received),
        rtt_min_ms: rt.and_then(|t| t.min_ms),
        rtt_avg_ms: rt.and_then(|t| t.avg_ms),
        rtt_max_ms: rt.and_then(|t| t.max_ms),
        error: r.error.map(|e| ErrorOut {
            kind: e.kind,
            message: e.message,
        }),
    }
}

/// The relays for people: an aligned block.
pub fn human(relays: &[RelayOut]) -> String {
    use std::fmt::Write as _;
    let mut s = "Relays (TURN round trips)\n".to_string();
    for r in relays {
        let v = match (&r.error, r.rtt_avg_ms) {
            (Some(e), _) => format!("failed: {}", e.message),
            (None, Some(avg)) => format!(
                "{}/{} echoed over {}, rtt min {:.2} / avg {:.2} / max {:.2} ms, relayed {}",
                r.received,
                r.sent,
                r.transport,
                r.rtt_min_ms.unwrap_or(avg),
                avg,
                r.rtt_max_ms.unwrap_or(avg),
                r.relayed.map_or("?".into(), |a| a.to_string())
            ),
            (None, None) => "no round trip".to_string(),
        };
        let _ = writeln!(s, "  {:<17} {v}", r.uri);
    }
    s
}
