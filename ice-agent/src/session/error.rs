//! What can go wrong in a session, each case its own variant with typed
//! fields, so an application (and `natkit`) can say exactly what happened.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::description::DescriptionError;
use crate::event::{FailedPair, FailureReason};
use crate::fingerprint::Fingerprint;
use crate::session_core::{CoreConfigError, Ending, PathInfo, ServerProblem};
use crate::tls::{IdentityError, TlsSetupError};

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return " none".to_owned();
    }
    items.iter().map(|i| format!("\n  - {i}")).collect()
}

fn reason_note(reason: &Option<FailureReason>) -> &'static str {
    match reason {
        Some(FailureReason::NoCheckArrived) => {
            " (the peer never reached us: no check from it arrived, RFC 8863)"
        }
        Some(FailureReason::AllPairsFailed) => " (every pair failed, RFC 8863)",
        _ => "",
    }
}

fn servers_note(problems: &[ServerProblem]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!("\nservers that gave no candidate:{}", list(problems))
    }
}

/// A session configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Relay-only without a TURN server would gather nothing.
    #[error("relay-only needs at least one TURN server")]
    RelayOnlyWithoutTurn,
    /// A TLS TURN server without the name its certificate carries.
    #[error("TURN server {0} over TLS needs the name its certificate carries")]
    TlsWithoutName(SocketAddr),
    /// A TLS TURN server, but no TLS client configuration to trust it with.
    #[error(
        "TURN server {0} over TLS needs a TLS client configuration (Builder::turn_tls_config)"
    )]
    TlsWithoutConfig(SocketAddr),
    /// A TLS server name that is not a DNS name or IP address.
    #[error("{name:?} is not a valid TLS server name for TURN server {server}")]
    BadTlsName {
        /// The server.
        server: SocketAddr,
        /// The name given.
        name: String,
    },
    /// No interface is up with a usable address.
    #[error("no usable local address: no interface is up (use loopback mode for a local test)")]
    NoUsableAddress,
    /// The QUIC idle timeout is longer than QUIC can express.
    #[error("the idle timeout {0:?} is too large for QUIC")]
    IdleTimeoutTooLarge(Duration),
}

impl From<CoreConfigError> for ConfigError {
    fn from(e: CoreConfigError) -> Self {
        match e {
            CoreConfigError::RelayOnlyWithoutTurn => ConfigError::RelayOnlyWithoutTurn,
            CoreConfigError::TlsWithoutName(a) => ConfigError::TlsWithoutName(a),
        }
    }
}

/// Local setup that failed (certificates, TLS, QUIC): not the peer's or the
/// network's doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The self-signed certificate could not be made.
    #[error(transparent)]
    Certificate(#[from] IdentityError),
    /// The QUIC TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// quinn refused to start the connection.
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
}

/// A session error. More kinds may come: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Sockets could not be opened.
    #[error("cannot open the session's sockets: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work.
    #[error("invalid session configuration: {0}")]
    Config(#[from] ConfigError),
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
    #[error("no usable path to the peer after {:.1} s{}; pairs tried:{}{}", .waited.as_secs_f64(), reason_note(.reason), list(.pairs), servers_note(.problems))]
    NoPath {
        /// How long connecting took before giving up.
        waited: Duration,
        /// Why ICE as a whole failed, when it did (rather than the connect
        /// timeout running out first).
        reason: Option<FailureReason>,
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
        path: Box<PathInfo>,
    },
    /// The TURN server our selected path went through stopped serving our
    /// allocation (it stopped, restarted, or dropped the TCP/TLS
    /// connection).
    #[error("the TURN relay {} that carried the connection was lost ({}): restart ICE to allocate again or find another path", .problem.server, .problem.problem)]
    RelayLost {
        /// The relay and what happened.
        problem: ServerProblem,
    },
    /// The QUIC handshake or connection failed for another reason.
    #[error("QUIC connection failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// TLS or QUIC could not be set up locally.
    #[error("{0}")]
    Setup(#[from] SetupError),
    /// The session was closed (or dropped).
    #[error("the session is closed")]
    Closed,
}

impl From<Ending> for Error {
    fn from(e: Ending) -> Self {
        match e {
            Ending::RelayLost(problem) => Error::RelayLost { problem },
            Ending::ConsentLost(path) => Error::ConsentLost { path },
            Ending::TurnCredentials { server } => Error::TurnCredentials { server },
            Ending::NoCandidates(problems) => Error::NoCandidates { problems },
            Ending::NoPath {
                waited,
                reason,
                pairs,
                problems,
            } => Error::NoPath {
                waited,
                reason,
                pairs,
                problems,
            },
            Ending::Closed => Error::Closed,
        }
    }
}
