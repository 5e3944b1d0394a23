//! One message per way a session can fail, each saying what to do about
//! it. The library's errors already name what happened; this adds the
//! command-line hint (which flag to change) and a stable first word.

use natkit_ice::session::{Error, CLOSE_CONSENT_LOST};

use super::rendezvous::ExchangeError;
use super::signal::RemoteError;
use crate::turn::Failure;

/// An error with its `--json` kind (the same [`Failure`] `natkit turn`
/// reports, so one shape everywhere).
pub fn kinded(kind: &'static str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure::new(kind, message))
}

/// The `--json` kind of a peer-to-peer command's error: the kind it was
/// made with, else that of the exchange or description error under it,
/// else `io` or `error` (see `crate::output::kind_of`).
pub fn kind(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.kind;
        }
        if let Some(x) = cause.downcast_ref::<ExchangeError>() {
            return x.kind();
        }
        if let Some(r) = cause.downcast_ref::<RemoteError>() {
            return match r {
                RemoteError::Timeout { .. } => "timeout",
                RemoteError::StdinEnded => "no_description",
                RemoteError::Io(_) => "io",
                _ => "bad_description",
            };
        }
    }
    crate::output::kind_of(e)
}

/// The user-facing error for a session error. `servers` are the STUN and
/// TURN servers as given on the command line, named when none of them
/// answered before gathering ended.
pub fn explain_with(e: Error, servers: &[String]) -> anyhow::Error {
    match &e {
        Error::NoCandidates { problems } if problems.is_empty() && !servers.is_empty() => kinded(
            "unreachable",
            format!(
                "servers unreachable: no candidate could be gathered; no answer in time from:{}\n\
                 hint: check these addresses and that those servers run and are reachable \
                 from here",
                servers
                    .iter()
                    .map(|s| format!("\n  - {s}"))
                    .collect::<String>()
            ),
        ),
        _ => explain(e),
    }
}

/// The user-facing error for a session error, with its `--json` kind.
pub fn explain(e: Error) -> anyhow::Error {
    kinded(kind_of_session(&e), message(&e))
}

/// The `--json` kind of a session error.
fn kind_of_session(e: &Error) -> &'static str {
    match e {
        Error::Io(_) | Error::Setup(_) => "io",
        Error::Config(_) => "usage",
        Error::Description(_) => "bad_description",
        Error::TurnCredentials { .. } => "wrong_credentials",
        Error::NoCandidates { .. } => "unreachable",
        Error::NoPath { .. } => "no_path",
        Error::FingerprintMismatch { .. } => "fingerprint_mismatch",
        Error::ConsentLost { .. } => "peer_vanished",
        Error::Quic(q) => quic_kind(q),
        Error::RelayLost { .. } => "relay_lost",
        _ => "error",
    }
}

/// The `--json` kind of a QUIC connection error (see [`quic`]).
pub fn quic_kind(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError::*;
    match e {
        ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(super::cancel::CLOSE_CANCELLED) =>
        {
            "peer_cancelled"
        }
        ApplicationClosed(c) if c.error_code.into_inner() == u64::from(super::CLOSE_ERROR) => {
            "peer_failed"
        }
        ApplicationClosed(_) | TimedOut | Reset => "peer_vanished",
        LocallyClosed => "interrupted",
        _ => "error",
    }
}

/// A QUIC connection error as an error with its kind.
pub fn quic_error(e: &quinn::ConnectionError) -> anyhow::Error {
    kinded(quic_kind(e), quic(e))
}

/// The words of a session error.
fn message(e: &Error) -> String {
    match e {
        Error::Io(_) => format!("{e}; check the addresses given with --bind"),
        Error::Config(_) => e.to_string(),
        // One wording for an unusable description, wherever it is found.
        Error::Description(d) => crate::p2p::signal::RemoteError::Unusable(d.clone()).to_string(),
        Error::TurnCredentials { .. } => {
            format!("wrong TURN credentials: {e}")
        }
        Error::NoCandidates { .. } => format!(
            "servers unreachable: {e}\nhint: check the --stun/--turn addresses and that \
             those servers run and are reachable from here"
        ),
        Error::NoPath { problems, .. } => {
            let hint = if problems.is_empty() {
                "hint: if both peers are behind NATs that filter, add a TURN server with \
                 --turn on both sides"
            } else {
                "hint: the servers above gave no candidate; fix them or add another --turn"
            };
            format!("{e}\n{hint}")
        }
        Error::FingerprintMismatch { .. } => format!(
            "fingerprint mismatch: {e}; exchange the descriptions again over a channel \
             you trust"
        ),
        Error::ConsentLost { .. } => format!("the peer vanished: {e}"),
        Error::Quic(q) => quic(q),
        Error::Setup(_) => format!("local setup failed: {e}"),
        Error::RelayLost { .. } => format!("relay lost: {e}"),
        Error::Closed => "the session ended unexpectedly (its task stopped)".to_owned(),
        // A variant added to the library later (the enum is
        // non_exhaustive) still gets its own text.
        _ => format!("session failed: {e}"),
    }
}

/// A QUIC connection error after the handshake, in words.
pub fn quic(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError::*;
    match e {
        ApplicationClosed(c) if c.error_code.into_inner() == u64::from(CLOSE_CONSENT_LOST) => {
            "the peer lost consent to send to us (RFC 7675) and closed the connection: \
             it stopped hearing from us"
                .to_owned()
        }
        ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(super::cancel::CLOSE_CANCELLED) =>
        {
            format!("the peer cancelled: {}", String::from_utf8_lossy(&c.reason))
        }
        ApplicationClosed(c) if c.error_code.into_inner() == u64::from(super::CLOSE_ERROR) => {
            format!("the peer gave up: {}", String::from_utf8_lossy(&c.reason))
        }
        ApplicationClosed(c) => format!(
            "the peer closed the connection before the transfer ended (code {})",
            c.error_code
        ),
        // Also how a vanished peer ends after an ICE restart that was
        // never answered: the restart begins new consent bookkeeping.
        TimedOut => "the peer vanished: QUIC heard nothing from it for its idle timeout \
                     (1.5 times --consent-timeout)"
            .into(),
        Reset => "QUIC reset: the peer restarted and no longer knows this connection".into(),
        LocallyClosed => "the connection was closed here".into(),
        other => format!("QUIC connection failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host(n: u8) -> natkit_ice::Candidate {
        natkit_ice::Candidate::host(([192, 0, 2, n], 5000).into(), 65535)
    }

    #[test]
    fn each_variant_has_its_own_message() {
        let errors = vec![
            Error::Io(std::io::Error::other("x")),
            Error::Config(natkit_ice::session::ConfigError::RelayOnlyWithoutTurn),
            Error::Description(natkit_ice::DescriptionError::Checksum),
            Error::TurnCredentials {
                server: "127.0.0.1:3478".parse().unwrap(),
            },
            Error::NoCandidates {
                problems: Vec::new(),
            },
            Error::NoPath {
                waited: Duration::from_secs(3),
                reason: None,
                pairs: Vec::new(),
                problems: Vec::new(),
            },
            Error::FingerprintMismatch {
                expected: natkit_ice::Fingerprint([1; 32]),
            },
            Error::ConsentLost {
                path: Box::new(natkit_ice::PathInfo::new(host(1), host(2), None)),
            },
            Error::Quic(quinn::ConnectionError::TimedOut),
            Error::RelayLost {
                problem: natkit_ice::ServerProblem {
                    server: "127.0.0.1:3478".parse().unwrap(),
                    kind: natkit_ice::ServerKind::Turn(natkit_ice::Transport::Udp),
                    problem: natkit_ice::Problem::NoAnswer {
                        sent: 8,
                        waited: Duration::from_secs(4),
                    },
                },
            },
            Error::Setup(natkit_ice::session::SetupError::Connect(
                quinn::ConnectError::EndpointStopping,
            )),
            Error::Closed,
        ];
        let n = errors.len();
        let mut msgs: Vec<String> = errors.into_iter().map(|e| explain(e).to_string()).collect();
        assert!(msgs.iter().all(|m| !m.is_empty()));
        msgs.sort();
        msgs.dedup();
        assert_eq!(msgs.len(), n, "{msgs:?}");
    }
}
