//! # natkit-ice
//!
//! natkit's ICE agent (RFC 8445 full agent, Trickle ICE per RFC 8838,
//! consent freshness per RFC 7675), **sans-IO**: the [`Agent`] takes
//! datagrams and time in and gives datagrams, timers and events out. It
//! owns no socket and reads no clock, so it runs the same under tokio, a
//! thread, or the simulated network of its tests.
//!
//! Driving it (the quinn-proto / str0m style):
//!
//! 1. Give it local candidates ([`Agent::add_local_candidate`]): gathering
//!    is I/O and belongs to the driver. Signal them and
//!    [`Agent::local_credentials`] to the peer.
//! 2. Give it the peer's credentials and candidates, whenever they arrive
//!    ([`Agent::set_remote_credentials`], [`Agent::add_remote_candidate`],
//!    [`Agent::end_of_remote_candidates`]).
//! 3. Loop: feed every datagram received on a candidate's base to
//!    [`Agent::handle_input`] (non-STUN datagrams are refused with
//!    [`InputError::is_not_stun`], for the application), send everything
//!    [`Agent::poll_transmit`] returns, call [`Agent::handle_timeout`] at
//!    [`Agent::poll_timeout`], and act on [`Agent::poll_event`].
//!
//! Two agents wired back to back, with a hand-run clock:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use natkit_ice::{Agent, Candidate, Config, Event, Role};
//!
//! let t0 = Instant::now();
//! let cfg = |role| Config { role, ..Config::default() };
//! let mut a = Agent::new(cfg(Role::Controlling), t0);
//! let mut b = Agent::new(cfg(Role::Controlled), t0);
//! let (pa, pb) = ("192.0.2.1:5000".parse().unwrap(), "192.0.2.2:6000".parse().unwrap());
//! a.add_local_candidate(Candidate::host(pa, 65535)).unwrap();
//! b.add_local_candidate(Candidate::host(pb, 65535)).unwrap();
//!
//! // Signalling: credentials and candidates each way.
//! let (ca, cb) = (a.local_credentials().clone(), b.local_credentials().clone());
//! a.set_remote_credentials(&cb.ufrag, &cb.pwd).unwrap();
//! b.set_remote_credentials(&ca.ufrag, &ca.pwd).unwrap();
//! a.add_remote_candidate(b.local_candidates()[0].clone()).unwrap();
//! b.add_remote_candidate(a.local_candidates()[0].clone()).unwrap();
//! a.end_of_remote_candidates();
//! b.end_of_remote_candidates();
//!
//! // The driver loop: timers, then datagrams, until both connect.
//! let mut now = t0;
//! let mut connected = 0;
//! while connected < 2 && now < t0 + Duration::from_secs(5) {
//!     for agent in [&mut a, &mut b] {
//!         if agent.poll_timeout().is_some_and(|t| t <= now) {
//!             agent.handle_timeout(now);
//!         }
//!     }
//!     while let Some(t) = a.poll_transmit() {
//!         b.handle_input(t.from, t.to, &t.payload, now).unwrap();
//!     }
//!     while let Some(t) = b.poll_transmit() {
//!         a.handle_input(t.from, t.to, &t.payload, now).unwrap();
//!     }
//!     for agent in [&mut a, &mut b] {
//!         while let Some(e) = agent.poll_event() {
//!             if let Event::Connected(pair) = e {
//!                 println!("connected: {pair}");
//!                 connected += 1;
//!             }
//!         }
//!     }
//!     now += Duration::from_millis(5);
//! }
//! assert_eq!(connected, 2);
//! assert_eq!(a.selected_pair().unwrap().remote.addr, pb);
//! ```
//!
//! Layout:
//!
//! | module | what it does |
//! |---|---|
//! | [`candidate`] | candidate types, priorities, foundations (RFC 8445 §5.1), pair priority (§6.1.2.3) |
//! | [`credentials`] | ufrag and password generation and checks (RFC 8445 §5.3, RFC 8839 §5.4) |
//! | [`config`] | pacing, retransmission, nomination and consent settings |
//! | [`agent`] | the state machine and its API; private submodules `checklist` (pairing, states, Ta pacing), `checks` (checks, answers, role conflicts, peer-reflexive candidates) and `selection` (nomination, consent, failure) |
//! | [`event`] | events, transmits, selected and failed pairs |
//! | `wire` | check requests and responses on `natkit_proto`'s writer and attribute walker |
//!
//! STUN encoding, integrity, fingerprints and retransmission timers come
//! from `natkit_proto`; nothing here re-implements them.
//!
//! Scope: this crate is the ICE core. Gathering (interfaces, STUN and TURN
//! servers), TURN framing for relayed bases, the signalling text form and
//! the QUIC upgrade belong to the driver built on top of it.
//!
//! natkit-specific choices, each configurable in [`Config`]: a 250 ms
//! check RTO (RFC 8445 §14.3 allows ICE its own), regular nomination after
//! a short wait for better pairs, and renomination upwards when a better
//! pair succeeds later (the controlled agent ignores nominations of pairs
//! below its selected one, which are stale retransmissions).

#![deny(missing_docs)]

pub mod agent;
pub mod candidate;
pub mod config;
pub mod credentials;
pub mod description;
pub mod event;
mod fingerprint;
#[cfg(feature = "tokio")]
pub mod session;
pub mod session_core;
#[cfg(feature = "tokio")]
mod tls;
#[cfg(feature = "tokio")]
pub mod turn;
mod wire;

pub use agent::{Agent, CandidateError, IceState, InputError, PairInfo, PairState};
pub use candidate::{Candidate, CandidateKind};
pub use config::Config;
pub use credentials::{Credentials, CredentialsError};
pub use description::{Description, DescriptionError, SignalledCandidate, TrickleCandidate};
pub use event::{Event, FailedPair, Failure, FailureReason, PairFailure, SelectedPair, Transmit};
pub use fingerprint::{Fingerprint, FingerprintParseError};
/// TURN credentials (long-term or REST), for [`TurnServer`].
pub use natkit_proto::turn::client::{Credentials as TurnCredentials, Transport};
#[cfg(feature = "tokio")]
pub use session::{Error, Events, Session};
pub use session_core::{
    PathInfo, PathKind, Problem, ServerKind, ServerProblem, SessionCore, SessionEvent, TurnServer,
};
pub use wire::WireError;

use serde::{Deserialize, Serialize};

/// An agent's role (RFC 8445 §6.1.1): the controlling agent nominates the
/// pair; the controlled one follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Nominates (RFC 8445 §8.1.1). Will be the QUIC client.
    Controlling,
    /// Follows the peer's nomination.
    Controlled,
}

impl Role {
    /// The other role.
    pub fn flip(self) -> Role {
        match self {
            Role::Controlling => Role::Controlled,
            Role::Controlled => Role::Controlling,
        }
    }
}
