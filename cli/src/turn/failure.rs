//! What went wrong, said so a person can act on it, with a stable `kind`
//! for `--json`. Each TURN error code gets its own wording (RFC 8656 §19,
//! RFC 8489 §14.8).

use std::net::SocketAddr;
use std::time::Duration;

use natkit_proto::turn::client::ClientError;

use crate::udp_driver::secs;

/// A failed `natkit turn` run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Stable machine-readable kind: `dns`, `connect`, `tls`, `timeout`,
    /// `wrong_credentials`, `stale_nonce`, `quota`, `peer_denied`,
    /// `forbidden`, `capacity`, `server_error`, `no_echo`, `usage`, `io`.
    pub kind: &'static str,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new("io", format!("{e:#}"))
    }
}

/// Who the credentials are for, for the messages.
#[derive(Debug, Clone)]
pub struct Who {
    /// The username sent (a REST name is `"<expiry>:<user>"`).
    pub username: String,
    /// Whether the credentials were minted from `--secret`.
    pub rest: bool,
    /// The server's address.
    pub server: SocketAddr,
    /// Whether the transport is a stream (TCP, TLS): no retransmissions.
    pub stream: bool,
    /// Whether an ICMP port unreachable about the server came back (UDP).
    pub port_unreachable: bool,
}

/// What was being done when the server answered with an error.
#[derive(Debug, Clone, Copy)]
pub enum Doing {
    /// Allocating (the first or the second allocation, named).
    Allocate(&'static str),
    /// CreatePermission or ChannelBind for a peer.
    Peer(&'static str, SocketAddr),
}

/// The failure for a TURN client error.
pub fn from_client(e: &ClientError, doing: Doing, who: &Who) -> Failure {
    let user = &who.username;
    let server = who.server;
    let what = match doing {
        Doing::Allocate(name) => format!("allocation {name}"),
        Doing::Peer(step, peer) => format!("{step} for {peer}"),
    };
    match e {
        ClientError::WrongCredentials => {
            let hint = if who.rest {
                "wrong --secret, or the server's clock says the credentials expired"
            } else {
                "wrong username or password, or not a user of this realm"
            };
            Failure::new(
                "wrong_credentials",
                format!("the server refused the credentials for user {user} (401): {hint}"),
            )
        }
        ClientError::StaleNonceLoop { attempts } => Failure::new(
            "stale_nonce",
            format!(
                "stale nonce loop: {server} answered 438 (Stale Nonce) {attempts} times in a row \
                 to {what}, each time with a new nonce; the server's nonce handling is broken"
            ),
        ),
        ClientError::QuotaReached => {
            let hint = match doing {
                Doing::Allocate("B") => {
                    "; the default test needs two allocations: use --peer IP:PORT to need one"
                }
                _ => "",
            };
            Failure::new(
                "quota",
                format!(
                    "allocation quota reached for user {user} (486 Allocation Quota Reached) \
                     on {what}{hint}"
                ),
            )
        }
        ClientError::Forbidden => match doing {
            Doing::Peer(_, peer) => Failure::new(
                "peer_denied",
                format!(
                    "the server refuses to relay to {peer} (403 Forbidden): it is on its deny list"
                ),
            ),
            Doing::Allocate(_) => Failure::new(
                "forbidden",
                format!("the server refused {what} for user {user} (403 Forbidden)"),
            ),
        },
        ClientError::InsufficientCapacity => Failure::new(
            "capacity",
            format!("the server has no capacity for {what} (508 Insufficient Capacity)"),
        ),
        ClientError::Timeout { waited, attempts } => timeout(who, *waited, *attempts),
        other => Failure::new("server_error", format!("{what} failed: {other}")),
    }
}

/// ICMP port unreachable came back for allocation `name`'s requests.
pub fn unreachable(who: &Who, name: &str) -> Failure {
    Failure::new(
        "unreachable",
        format!(
            "{} is unreachable (allocation {name}): ICMP port unreachable came back \
             (nothing listens on that UDP port: wrong port, or the server is not running)",
            who.server
        ),
    )
}

/// No answer from the server: RFC 8489 §6.2.1 retransmissions over UDP, one
/// long wait over a stream (§6.2.2).
pub fn timeout(who: &Who, waited: Duration, attempts: u32) -> Failure {
    let server = who.server;
    let message = if who.stream {
        format!(
            "no answer from {server} within {} (the connection is open, the server is silent)",
            secs(waited)
        )
    } else if who.port_unreachable {
        format!(
            "no answer from {server} after {attempts} tries over {}: ICMP port unreachable came \
             back (nothing listens on that UDP port: wrong port, or the server is not running)",
            secs(waited)
        )
    } else {
        format!(
            "no answer from {server} after {attempts} tries over {} \
             (server down, wrong address or port, or UDP blocked)",
            secs(waited)
        )
    };
    Failure::new("timeout", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(rest: bool) -> Who {
        Who {
            username: "alice".into(),
            rest,
            server: "192.0.2.1:3478".parse().unwrap(),
            stream: false,
            port_unreachable: false,
        }
    }

    #[test]
    fn each_error_has_its_own_kind_and_words() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let f = from_client(
            &ClientError::WrongCredentials,
            Doing::Allocate("A"),
            &who(false),
        );
        assert_eq!(f.kind, "wrong_credentials");
        assert!(f
            .message
            .starts_with("the server refused the credentials for user alice (401)"));
        let f = from_client(
            &ClientError::Forbidden,
            Doing::Peer("permission", peer),
            &who(false),
        );
        assert_eq!(f.kind, "peer_denied");
        assert_eq!(
            f.message,
            "the server refuses to relay to 127.0.0.1:9 (403 Forbidden): it is on its deny list"
        );
        let f = from_client(
            &ClientError::QuotaReached,
            Doing::Allocate("B"),
            &who(false),
        );
        assert_eq!(f.kind, "quota");
        assert!(
            f.message.contains("486") && f.message.contains("--peer"),
            "{}",
            f.message
        );
        let f = from_client(
            &ClientError::StaleNonceLoop { attempts: 4 },
            Doing::Allocate("A"),
            &who(true),
        );
        assert_eq!(f.kind, "stale_nonce");
        assert!(
            f.message.contains("438 (Stale Nonce) 4 times"),
            "{}",
            f.message
        );
        let f = from_client(
            &ClientError::Timeout {
                waited: Duration::from_millis(39_500),
                attempts: 7,
            },
            Doing::Allocate("A"),
            &who(false),
        );
        assert_eq!(f.kind, "timeout");
        assert!(f
            .message
            .starts_with("no answer from 192.0.2.1:3478 after 7 tries over 39.5 s"));
        assert!(f.message.contains("UDP blocked"), "{}", f.message);
        let refused = Who {
            port_unreachable: true,
            ..who(false)
        };
        let f = from_client(
            &ClientError::Timeout {
                waited: Duration::from_millis(790),
                attempts: 7,
            },
            Doing::Allocate("A"),
            &refused,
        );
        assert_eq!(f.kind, "timeout");
        assert!(
            f.message.starts_with(
                "no answer from 192.0.2.1:3478 after 7 tries over 0.8 s: ICMP port unreachable"
            ),
            "{}",
            f.message
        );
        let f = from_client(&ClientError::Other(599), Doing::Allocate("A"), &who(false));
        assert_eq!(f.kind, "server_error");
        assert!(f.message.contains("599"), "{}", f.message);
    }

    #[test]
    fn rest_credentials_get_a_rest_hint() {
        let f = from_client(
            &ClientError::WrongCredentials,
            Doing::Allocate("A"),
            &who(true),
        );
        assert!(f.message.contains("--secret"), "{}", f.message);
    }
}
