//! What the agent tells its driver: events, datagrams to send, and the
//! descriptions of pairs in them.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::candidate::Candidate;
use crate::Role;

/// A datagram the driver must send from the local address `from` (a
/// candidate's base: a host socket, or a TURN allocation for a relayed
/// base) to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The local base to send from.
    pub from: SocketAddr,
    /// Destination.
    pub to: SocketAddr,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// The pair the agent selected.
///
/// Application data goes from `local.base` to `remote.addr`. `local` is the
/// valid pair's local candidate (RFC 8445 §7.2.5.3.2): for a check from a
/// host base it is the server- or peer-reflexive candidate the peer saw,
/// so its type says which kind of path won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPair {
    /// Our side.
    pub local: Candidate,
    /// The peer's side.
    pub remote: Candidate,
    /// Round-trip time of the last check on the pair with an unambiguous
    /// sample (no retransmission, RFC 6298 §3 Karn's rule).
    pub rtt: Option<Duration>,
}

impl fmt::Display for SelectedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)?;
        if let Some(rtt) = self.rtt {
            write!(f, " rtt {:.1} ms", rtt.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Why a candidate pair failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairFailure {
    /// No response to any of the check's transmissions (RFC 8445 §7.2.5.2,
    /// RFC 8489 §6.2.1).
    TimedOut {
        /// How many times the check was sent.
        sent: u32,
        /// Time from the first send to giving up.
        waited: Duration,
    },
    /// The peer answered with an error (other than 487, which is retried).
    ErrorResponse(u16),
    /// The pair was still being checked (or waiting its turn) when the
    /// connection's time ran out: listed by [`crate::session::Error::NoPath`].
    Unfinished {
        /// Its state then.
        state: crate::PairState,
        /// Checks sent on it so far (0 when it never got its turn).
        sent: u32,
    },
    /// The response came from, or arrived on, other addresses than the
    /// request used (RFC 8445 §7.2.5.2.1).
    NonSymmetric {
        /// Where the response came from.
        from: SocketAddr,
        /// The local address it arrived on.
        to: SocketAddr,
    },
    /// Its local socket was closed: one of the hard-NAT punch's sockets
    /// that the selected pair does not use
    /// ([`crate::Agent::remove_punch_base`]).
    BaseClosed,
}

impl fmt::Display for PairFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairFailure::TimedOut { sent, waited } => write!(
                f,
                "no response to {sent} checks in {:.1} s",
                waited.as_secs_f64()
            ),
            PairFailure::ErrorResponse(code) => write!(f, "peer answered error {code}"),
            PairFailure::Unfinished { state, sent } => {
                let what = match state {
                    crate::PairState::Frozen | crate::PairState::Waiting => "never got its turn",
                    crate::PairState::InProgress => "still being checked",
                    crate::PairState::Succeeded => "worked but was not nominated",
                    crate::PairState::Failed => "failed",
                };
                write!(f, "{what} when time ran out ({sent} checks sent)")
            }
            PairFailure::NonSymmetric { from, to } => {
                write!(f, "response from {from} on {to}: addresses not symmetric")
            }
            PairFailure::BaseClosed => {
                f.write_str("its socket (a hard-NAT punch socket) was closed")
            }
        }
    }
}

/// A pair that was tried and failed, listed in [`Event::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPair {
    /// Our candidate (a base: host or relayed).
    pub local: Candidate,
    /// The peer's candidate.
    pub remote: Candidate,
    /// Why it failed.
    pub reason: PairFailure,
}

impl fmt::Display for FailedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.local, self.remote, self.reason)
    }
}

/// Why ICE failed, in [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// Every candidate pair was checked and failed (RFC 8445 §8.1.3), and
    /// no check from the peer revived one before the PAC timer ran out
    /// (RFC 8863 §3). [`Failure::pairs`] says why each pair failed.
    AllPairsFailed,
    /// The PAC timer ran out (RFC 8863 §3) with no candidate pair at all:
    /// none of the peer's signalled candidates could be paired with a local
    /// base (see [`Failure::unpaired_remote`]; candidates the driver could
    /// not even give the agent, such as unresolved mDNS names, are not
    /// counted), and no check from the peer arrived to teach a
    /// peer-reflexive one (RFC 8445 §7.3.1.3). The peer never reached us.
    NoCheckArrived,
}

/// How and why ICE failed: [`crate::Agent::failure`], from the
/// [`Event::Failed`] on until an ICE restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: FailureReason,
    /// Every pair tried and why it failed (what [`Event::Failed`] carries).
    pub pairs: Vec<FailedPair>,
    /// The peer's candidates that were never paired: no local base of their
    /// address family (RFC 8445 §6.1.2.2).
    pub unpaired_remote: Vec<Candidate>,
    /// From the start of checking (the peer's credentials) to the failure:
    /// at least [`crate::Config::pac_timeout`].
    pub after: Duration,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.after.as_secs_f64();
        match self.reason {
            FailureReason::AllPairsFailed => write!(
                f,
                "every candidate pair failed ({} tried) and no check from the peer arrived to revive one within {secs:.1} s (RFC 8863)",
                self.pairs.len()
            )?,
            FailureReason::NoCheckArrived => write!(
                f,
                "the peer never reached us: no check arrived within {secs:.1} s (RFC 8863), and none of its candidates could be paired with ours"
            )?,
        }
        if !self.unpaired_remote.is_empty() {
            f.write_str("; no local base of the family of:")?;
            for c in &self.unpaired_remote {
                write!(f, " {}", c.addr)?;
            }
        }
        Ok(())
    }
}

/// Something the driver or the application may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A pair was selected for the first time (since creation or the last
    /// ICE restart): the application can start sending.
    Connected(SelectedPair),
    /// The selected pair changed (a better pair was nominated): move the
    /// application's traffic to it.
    SelectedPairChanged(SelectedPair),
    /// RFC 7675: no check on the selected pair was answered for the consent
    /// timeout. The application must stop sending on it; an ICE restart may
    /// find another path.
    ConsentLost(SelectedPair),
    /// ICE failed: the peer signalled end-of-candidates (RFC 8838 §8),
    /// every pair failed (RFC 8445 §8.1.3) or there was none, and the PAC
    /// timer ran out ([`crate::Config::pac_timeout`], RFC 8863 §3). No
    /// connection without an ICE restart; until then the agent answers no
    /// check. Lists every pair tried and why it failed;
    /// [`crate::Agent::failure`] says why ICE as a whole failed (e.g. that
    /// no check from the peer ever arrived).
    Failed(Vec<FailedPair>),
    /// Role conflict resolution changed our role (RFC 8445 §7.3.1.1,
    /// §7.2.5.1).
    RoleChanged(Role),
    /// A local peer-reflexive candidate was learned from a check
    /// (RFC 8445 §7.2.5.3.1). It is not signalled (RFC 8445 §5.1.3); the
    /// event is informational.
    PeerReflexiveCandidate(crate::Candidate),
}
