//! # natkit-ice
//!
//! Connect two peers behind NATs and get a QUIC connection between them:
//! ICE (RFC 8445, Trickle ICE per RFC 8838, consent freshness per RFC 7675,
//! RFC 8863's patience) over host, server-reflexive (STUN), port-mapped
//! (PCP, NAT-PMP, UPnP IGD on the gateway) and relayed (TURN over UDP, TCP
//! or TLS) candidates, then QUIC (quinn) on the winning
//! pair, both certificates pinned by the fingerprints the peers signalled.
//!
//! ## The Session: what apps use
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use natkit_ice::{Description, Role, Session, TurnCredentials, TurnServer};
//!
//! let session = Session::builder()
//!     .role(Role::Controlling) // the other side: Role::Controlled
//!     .stun_server("192.0.2.1:3478".parse()?)
//!     .turn_server(TurnServer::udp(
//!         "192.0.2.1:3478".parse()?,
//!         TurnCredentials::new("alice", "secret"),
//!     ))
//!     .build()
//!     .await?;
//! // Signalling is yours: send this one line to the peer...
//! println!("{}", session.local_description().await);
//! // ...and read theirs.
//! let remote: Description = "nk1....".parse()?;
//! let conn: quinn::Connection = session.connect(remote).await?;
//! println!("connected over {}", session.path().unwrap());
//! let (mut send, _recv) = conn.open_bi().await?;
//! send.write_all(b"hello").await?;
//! # Ok(()) }
//! ```
//!
//! Everything an app needs is at the crate root: [`Session`] and its
//! [`session::Builder`], [`Description`] (one copy-pasteable word or JSON)
//! and [`TrickleCandidate`], [`TurnServer`] with [`TurnCredentials`],
//! [`SessionEvent`]s (candidates to trickle, path changes, consent loss;
//! never dropped), [`PathInfo`], and [`Error`], one variant per way a
//! session fails, each with typed fields. [`Session::restart`] is an ICE
//! restart; the QUIC connection survives it and any change of path (a
//! direct pair taking over from the relay), because QUIC sees one fixed
//! peer address while the route under it changes.
//! `examples/loopback.rs` is the shortest complete program,
//! `examples/chat.rs` a two-terminal chat.
//!
//! ## Layers
//!
//! | layer | what | I/O |
//! |---|---|---|
//! | [`Session`] ([`session`]) | the tokio driver: sockets, TCP/TLS connections to TURN servers, timers, the QUIC endpoint; decides nothing | tokio, quinn, rustls (feature `tokio`, on by default) |
//! | [`SessionCore`] ([`session_core`]) | the whole session: the agent, STUN probes, TURN allocations (proto's sans-IO client), the route of the selected pair, consent across restarts | none: datagrams and time in, transmits, timers and events out |
//! | [`Agent`] ([`agent`]) | the ICE agent: pairs, checks, nomination, consent | none |
//!
//! Without the `tokio` feature (`default-features = false`) the crate is
//! the sans-IO layers only, with no tokio, quinn, rustls or rcgen: drive
//! [`SessionCore`] from your own event loop (its module docs say how; the
//! crate's tests drive two of them over simulated NATs, STUN and TURN
//! servers in simulated time). [`turn::TurnConnection`] (feature `tokio`)
//! is one TURN allocation over tokio, for tools that talk to a TURN server
//! directly.
//!
//! ## The Agent alone
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
//! ## Modules
//!
//! | module | what it does |
//! |---|---|
//! | [`session`] | the tokio [`Session`]: builder, errors, events; private `driver` (runs the core inside quinn's endpoint task) and `socket` (quinn's socket: reads every base, sends by the published route) |
//! | [`session_core`] | [`SessionCore`]; private submodules `gather` (STUN probes), `relays` (TURN allocations), `port_mapping` (the port-mapped candidate), `punch` (the hard-NAT punch: N sockets, M probes, between natkit peers), `route`, `freshness` (consent across restarts), `report` (events, paths, problems) |
//! | [`portmap`] | port mapping on the gateway, sans-IO: PCP (RFC 6887), NAT-PMP (RFC 6886), UPnP IGD; the default gateway from the routing table; with `tokio`, a driver |
//! | [`turn`] | TURN over tokio: [`turn::TurnConnection`] and the TCP/TLS stream both it and the session use |
//! | [`candidate`] | candidate types, priorities, foundations (RFC 8445 §5.1), pair priority (§6.1.2.3) |
//! | [`credentials`] | ufrag and password generation and checks (RFC 8445 §5.3, RFC 8839 §5.4) |
//! | [`config`] | pacing, retransmission, nomination and consent settings |
//! | [`agent`] | the state machine and its API; private submodules `checklist` (pairing, states, Ta pacing), `checks` (checks, answers, role conflicts, peer-reflexive candidates) and `selection` (nomination, consent, failure) |
//! | [`event`] | events, transmits, selected and failed pairs |
//! | [`description`] | what peers signal: [`Description`] (JSON or the `nk1.` word with a checksum) and [`TrickleCandidate`] |
//! | `wire` | check requests and responses on `natkit_proto`'s writer and attribute walker |
//! | `fingerprint`, `tls` | certificate fingerprints (sans-IO); the pinned QUIC TLS configuration (private) |
//!
//! STUN encoding, integrity, fingerprints and retransmission timers come
//! from `natkit_proto`; nothing here re-implements them.
//!
//! natkit-specific choices of the agent, each configurable in [`Config`]: a 250 ms
//! check RTO (RFC 8445 §14.3 allows ICE its own), regular nomination after
//! a short wait for better pairs, and renomination upwards when a better
//! pair succeeds later (the controlled agent ignores nominations of pairs
//! below its selected one, which are stale retransmissions). Host pairs
//! between two peers behind different NATs are checked after the pairs
//! likely to work (srflx, prflx, relayed).
//!
//! Between two natkit agents, which announce it in their descriptions
//! ([`IceOptions`]), connecting takes a round trip or two: checks paced at
//! 5 ms (RFC 8445 §14.2's floor; slower on large check lists) instead of
//! the default 50 ms, and every check of the controlling agent nominates
//! its pair, so the first pair that works is selected as its check
//! succeeds and better ones after it (both agents follow the
//! highest-priority nomination). With other agents the agent keeps RFC
//! 8445's pacing and regular nomination.

#![deny(missing_docs)]

pub mod agent;
pub mod candidate;
pub mod config;
pub mod credentials;
pub mod description;
pub mod event;
mod fingerprint;
pub mod portmap;
#[cfg(feature = "tokio")]
pub mod session;
pub mod session_core;
#[cfg(feature = "tokio")]
mod tls;
#[cfg(feature = "tokio")]
pub mod turn;
#[cfg(feature = "tokio")]
mod udp;
mod wire;

pub use agent::{Agent, CandidateError, IceState, InputError, PairInfo, PairState};
pub use candidate::{Candidate, CandidateKind};
pub use config::{Config, IceOptions};
pub use credentials::{Credentials, CredentialsError};
pub use description::{
    Description, DescriptionError, NatMapping, SignalledCandidate, TrickleCandidate,
};
pub use event::{Event, FailedPair, Failure, FailureReason, PairFailure, SelectedPair, Transmit};
pub use fingerprint::{Fingerprint, FingerprintParseError};
/// TURN credentials (long-term or REST), for [`TurnServer`].
pub use natkit_proto::turn::client::{Credentials as TurnCredentials, Transport};
#[cfg(feature = "tokio")]
pub use session::{Error, Events, Session};
pub use session_core::{
    PathInfo, PathKind, Problem, PunchReport, ServerKind, ServerProblem, SessionCore, SessionEvent,
    TurnServer,
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
