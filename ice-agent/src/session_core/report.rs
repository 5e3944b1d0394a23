//! What a session reports: its events, the path it uses, the servers that
//! gave no candidate and why, and why it ended. Plain data, shared by the
//! sans-IO [`SessionCore`](super::SessionCore) and the tokio
//! [`Session`](crate::Session).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use natkit_proto::turn::client::{ClientError, Transport};

use crate::candidate::{Candidate, CandidateKind};
use crate::description::TrickleCandidate;
use crate::event::{FailedPair, FailureReason};
use crate::Role;

/// Which kind of path a pair is, from the application's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Both sides on host addresses (same network, or no NAT).
    Host,
    /// Through a NAT mapping learned from STUN.
    Srflx,
    /// Through a NAT mapping learned from the checks themselves.
    Prflx,
    /// Through a TURN relay (either side's).
    Relay,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Host => "host",
            PathKind::Srflx => "srflx",
            PathKind::Prflx => "prflx",
            PathKind::Relay => "relay",
        })
    }
}

/// The path the session's traffic takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// What kind of path it is.
    pub kind: PathKind,
    /// Our candidate of the selected pair.
    pub local: Candidate,
    /// The peer's candidate.
    pub remote: Candidate,
    /// Round-trip time measured by the checks.
    pub rtt: Option<Duration>,
}

impl PathInfo {
    /// The path of a pair: relayed if either side is, else the most
    /// indirect kind of either side.
    pub fn new(local: Candidate, remote: Candidate, rtt: Option<Duration>) -> Self {
        use CandidateKind::*;
        let kinds = [local.kind, remote.kind];
        let kind = if kinds.contains(&Relayed) {
            PathKind::Relay
        } else if kinds.contains(&PeerReflexive) {
            PathKind::Prflx
        } else if kinds.contains(&ServerReflexive) {
            PathKind::Srflx
        } else {
            PathKind::Host
        };
        PathInfo {
            kind,
            local,
            remote,
            rtt,
        }
    }
}

impl fmt::Display for PathInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} path: {} {} -> {} {}",
            self.kind, self.local.kind, self.local.addr, self.remote.kind, self.remote.addr
        )?;
        if let Some(rtt) = self.rtt {
            write!(f, ", rtt {:.2} ms", rtt.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// What kind of server a [`ServerProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// A STUN server asked for a server-reflexive candidate.
    Stun,
    /// A TURN server reached over this transport.
    Turn(Transport),
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Stun => "stun",
            ServerKind::Turn(Transport::Udp) => "turn/udp",
            ServerKind::Turn(Transport::Tcp) => "turn/tcp",
            ServerKind::Turn(Transport::Tls) => "turn/tls",
        })
    }
}

/// Which step of a TCP or TLS connection to a TURN server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStage {
    /// The TCP connection.
    Connect,
    /// The TLS handshake (protocol, alert, a peer that does not speak TLS).
    TlsHandshake,
    /// The TLS handshake refused the server's certificate (untrusted
    /// issuer, wrong name, expired): a matter of trust settings rather
    /// than of the network.
    Certificate,
    /// The connection was up and broke or was closed.
    Established,
}

/// A TCP or TLS connection to a TURN server that could not be made or
/// ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    /// Where it failed.
    pub stage: ConnectionStage,
    /// The I/O error's kind (`UnexpectedEof` when the server closed the
    /// connection, `TimedOut` when a step took too long).
    pub kind: io::ErrorKind,
    /// The operating system's or TLS library's words, for people.
    pub detail: String,
}

impl ConnectionError {
    /// A connection that failed at `stage` with `e`.
    pub fn new(stage: ConnectionStage, e: &io::Error) -> Self {
        ConnectionError {
            stage,
            kind: e.kind(),
            detail: e.to_string(),
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stage {
            ConnectionStage::Connect => write!(f, "TCP connection failed: {}", self.detail),
            ConnectionStage::TlsHandshake | ConnectionStage::Certificate => {
                write!(f, "TLS handshake failed: {}", self.detail)
            }
            ConnectionStage::Established if self.kind == io::ErrorKind::UnexpectedEof => {
                f.write_str("the server closed the connection")
            }
            ConnectionStage::Established => write!(f, "connection lost: {}", self.detail),
        }
    }
}

/// Why a server gave no candidate (or stopped serving one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// No answer: RFC 8489 §6.2.1 retransmissions exhausted.
    NoAnswer {
        /// Requests sent.
        sent: u32,
        /// From the first send to giving up.
        waited: Duration,
    },
    /// Still unanswered when the gathering time ran out (a late answer
    /// still trickles).
    GatheringTimeout {
        /// The gathering time.
        after: Duration,
    },
    /// No local address of the server's family to reach it from.
    NoLocalAddress,
    /// The TCP or TLS connection to the server failed or ended.
    Connection(ConnectionError),
    /// The STUN server answered without a mapped address.
    NoMappedAddress,
    /// The STUN server answered with this error code.
    StunError(u16),
    /// The TURN server refused or failed the allocation (wrong
    /// credentials, quota, capacity, no answer...).
    Turn(ClientError),
}

impl Problem {
    /// Whether this is a refusal of our TURN credentials.
    pub fn is_wrong_credentials(&self) -> bool {
        matches!(self, Problem::Turn(ClientError::WrongCredentials))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoAnswer { sent, waited } => write!(
                f,
                "unreachable (no answer to {sent} requests in {:.1} s)",
                waited.as_secs_f64()
            ),
            Problem::GatheringTimeout { after } => write!(
                f,
                "unreachable (no answer within the gathering timeout ({:.1} s))",
                after.as_secs_f64()
            ),
            Problem::NoLocalAddress => {
                f.write_str("unreachable (no local address of the server's family)")
            }
            Problem::Connection(e) => write!(f, "unreachable ({e})"),
            Problem::NoMappedAddress => f.write_str("refused: no mapped address in the response"),
            Problem::StunError(code) => write!(f, "refused: error {code}"),
            Problem::Turn(ClientError::WrongCredentials) => {
                f.write_str("refused the credentials (401)")
            }
            Problem::Turn(e @ ClientError::Timeout { .. }) => write!(f, "unreachable ({e})"),
            Problem::Turn(e) => write!(f, "refused: {e}"),
        }
    }
}

/// A STUN or TURN server that did not give us a candidate, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerProblem {
    /// The server.
    pub server: SocketAddr,
    /// What kind of server it is.
    pub kind: ServerKind,
    /// What went wrong.
    pub problem: Problem,
}

impl fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} server {}: {}", self.kind, self.server, self.problem)
    }
}

/// What happens in a session. More kinds may come: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A local candidate was gathered: trickle it to the peer (RFC 8838).
    /// The last one of a generation has `candidate: None`
    /// (end-of-candidates).
    Candidate(TrickleCandidate),
    /// Gathering finished (or its time ran out).
    GatheringDone,
    /// A STUN or TURN server gave no candidate, or lost the allocation of
    /// a relayed candidate that the selected path does not use (one that
    /// it does use is [`SessionEvent::RelayLost`]).
    ServerProblem(ServerProblem),
    /// ICE selected its first pair.
    Connected(PathInfo),
    /// ICE moved to another pair; QUIC follows without reconnecting.
    PathChanged(PathInfo),
    /// No check on the selected path was answered for the degraded time:
    /// the network may have changed. Consider an ICE restart; consent is
    /// not lost yet, and the event comes once per silence.
    PathDegraded {
        /// The path.
        path: PathInfo,
        /// How long it has been silent.
        silent_for: Duration,
    },
    /// RFC 7675: the peer stopped answering on the selected path.
    ConsentLost(PathInfo),
    /// Our TURN allocation under the selected path failed, or its TCP/TLS
    /// connection dropped.
    RelayLost(ServerProblem),
    /// Every pair failed after the peer's end-of-candidates.
    Failed(Vec<FailedPair>),
    /// The ICE role changed (RFC 8445 §7.3.1.1 role conflict).
    RoleChanged(Role),
    /// The gateway mapped a port: its external address is a local
    /// candidate now ([`crate::Candidate::port_mapped`]).
    PortMapped(crate::portmap::Mapping),
    /// No port mapping: each protocol and why (usually: the gateway
    /// answers none).
    PortMappingFailed(Vec<(crate::portmap::Protocol, crate::portmap::Status)>),
    /// The port mapping is gone (a refused renewal, or it expired): its
    /// candidate no longer works.
    PortMappingLost {
        /// The mapping.
        mapping: crate::portmap::Mapping,
        /// Why.
        failure: crate::portmap::Failure,
    },
    /// What the hard-NAT punch tried and how it ended (once per ICE
    /// generation; only between natkit peers whose NATs map differently,
    /// see `session_core::punch`).
    Punch(super::PunchReport),
    /// The session finished closing (TURN allocations and the port
    /// mapping deleted).
    Closed,
}

/// Why a session ended, most specific first (see
/// [`SessionCore::ending`](super::SessionCore::ending)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The TURN allocation under the selected path was lost.
    RelayLost(ServerProblem),
    /// Consent freshness failed on this path (RFC 7675).
    ConsentLost(Box<PathInfo>),
    /// Gathering found no candidate because this TURN server refused the
    /// credentials.
    TurnCredentials {
        /// The server.
        server: SocketAddr,
    },
    /// Gathering found no candidate; each server and what happened.
    NoCandidates(Vec<ServerProblem>),
    /// ICE failed: every pair and why.
    NoPath {
        /// How long ICE had been checking.
        waited: Duration,
        /// Why ICE as a whole failed (RFC 8863).
        reason: Option<FailureReason>,
        /// Every pair and its failure.
        pairs: Vec<FailedPair>,
        /// Servers that gave no candidate.
        problems: Vec<ServerProblem>,
    },
    /// The session was closed.
    Closed,
}
