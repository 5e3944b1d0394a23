//! What can go wrong in a session, each case its own variant so an
//! application (and `natkit`) can say exactly what happened.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use natkit_proto::turn::client::ClientError;

use crate::description::DescriptionError;
use crate::event::FailedPair;
use crate::tls::Fingerprint;

/// A STUN or TURN server that did not give us a candidate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProblem {
    /// The server.
    pub server: SocketAddr,
    /// `"stun"`, `"turn/udp"`, `"turn/tcp"` or `"turn/tls"`.
    pub kind: &'static str,
    /// What went wrong.
    pub problem: Problem,
}

/// Why a server gave no candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No answer in time (RFC 8489 §6.2.1 retransmissions exhausted, or no
    /// TCP/TLS connection).
    Unreachable(String),
    /// The TURN server refused our credentials (401 after the nonce dance).
    WrongCredentials,
    /// The server answered with an error.
    Refused(String),
}

impl fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} server {}: ", self.kind, self.server)?;
        match &self.problem {
            Problem::Unreachable(why) => write!(f, "unreachable ({why})"),
            Problem::WrongCredentials => f.write_str("refused the credentials (401)"),
            Problem::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

impl ServerProblem {
    pub(crate) fn from_turn(server: SocketAddr, kind: &'static str, e: &ClientError) -> Self {
        let problem = match e {
            ClientError::WrongCredentials => Problem::WrongCredentials,
            ClientError::Timeout { .. } => Problem::Unreachable(e.to_string()),
            other => Problem::Refused(other.to_string()),
        };
        ServerProblem {
            server,
            kind,
            problem,
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return " none".to_owned();
    }
    items.iter().map(|i| format!("\n  - {i}")).collect()
}

/// A session error. More kinds may come: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Sockets could not be opened, or no local address is usable.
    #[error("cannot open the session's sockets: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work (e.g. relay-only without TURN servers).
    #[error("invalid session configuration: {0}")]
    Config(String),
    /// The peer's description could not be read.
    #[error(transparent)]
    Description(#[from] DescriptionError),
    /// A TURN server refused our credentials, and no other candidate could
    /// replace the relay (relay-only, or nothing else gathered).
    #[error("TURN server {server} refused the credentials (401 Unauthorized): check the username and password, or that the REST secret matches the server's")]
    TurnCredentials {
        /// The server.
        server: SocketAddr,
    },
    /// Every STUN/TURN server that was needed was unreachable, and no
    /// candidate was left to try.
    #[error("no candidate could be gathered; servers tried:{}", list(.problems))]
    NoCandidates {
        /// Each server and what happened.
        problems: Vec<ServerProblem>,
    },
    /// ICE found no working pair in time: every pair tried is listed with
    /// the reason it failed.
    #[error("no usable path to the peer after {:.1} s; pairs tried:{}{}", .waited.as_secs_f64(), list(.pairs), servers_note(.problems))]
    NoPath {
        /// How long connecting took before giving up.
        waited: Duration,
        /// Every pair checked and why it failed (or its last state).
        pairs: Vec<FailedPair>,
        /// Servers that gave no candidate.
        problems: Vec<ServerProblem>,
    },
    /// The peer presented a certificate other than the one its description
    /// announced: someone else answered, or the description was altered.
    #[error("the peer's certificate does not match the fingerprint in its description (expected {expected}): the connection was refused")]
    FingerprintMismatch {
        /// The fingerprint the description announced.
        expected: Fingerprint,
    },
    /// Consent freshness (RFC 7675) failed: the peer stopped answering on
    /// the selected path (it vanished, or the network between us broke).
    #[error("the peer stopped answering: consent to send was lost on {path} (RFC 7675)")]
    ConsentLost {
        /// The path that died.
        path: String,
    },
    /// The TURN server our selected path went through stopped serving our
    /// allocation (it stopped, restarted, or dropped the TCP/TLS
    /// connection).
    #[error("the TURN relay {} that carried the connection was lost ({}): restart ICE to allocate again or find another path", .problem.server, problem_text(.problem))]
    RelayLost {
        /// The relay and what happened.
        problem: ServerProblem,
    },
    /// The QUIC handshake or connection failed for another reason.
    #[error("QUIC connection failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// TLS or QUIC could not be set up locally.
    #[error("{0}")]
    Setup(String),
    /// The session's task ended (the session was closed or dropped).
    #[error("the session is closed")]
    Closed,
}

fn problem_text(p: &ServerProblem) -> String {
    match &p.problem {
        Problem::Unreachable(why) | Problem::Refused(why) => why.clone(),
        Problem::WrongCredentials => "it refused the credentials".into(),
    }
}

fn servers_note(problems: &[ServerProblem]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!("\nservers that gave no candidate:{}", list(problems))
    }
}
