//! # natkit-proto
//!
//! The one home of natkit's STUN and TURN protocol code. Everything here is
//! **sans-IO**: functions and state machines take bytes and time in and give
//! bytes, timers and events out. The servers, the CLI and the ICE agent wrap
//! these in their own I/O drivers.
//!
//! One STUN codec: [`raw`] decodes and [`writer`] encodes, on every path.
//! `stun-rs` is a dev-dependency only, the independent oracle the walker is
//! checked against (`tests/differential.rs`, the `differential` fuzz target).
//!
//! Layout:
//!
//! | module | what it does |
//! |---|---|
//! | [`raw`] | zero-copy STUN decoding: header, attribute walking (and which attributes count, RFC 8489 §14.5), typed attribute values, constants |
//! | [`writer`] | zero-allocation STUN message writer |
//! | [`binding`] | Binding request parsing and response building (RFC 8489, RFC 5780 attributes) |
//! | [`demux`] | classify a datagram as STUN, ChannelData, DTLS or QUIC by its first byte (RFC 7983, RFC 9443) |
//! | [`framing`] | STUN and ChannelData framing over stream transports |
//! | [`channel_data`] | ChannelData messages (RFC 8656 §12) |
//! | [`integrity`] | long-term keys, MESSAGE-INTEGRITY(-SHA256), FINGERPRINT (RFC 8489 §9, §14) |
//! | [`rest`] | REST-style expiring credentials from a shared secret, with rotation |
//! | [`nonce`] | stateless nonces: HMAC over client address and time |
//! | [`transaction`] | client transaction retransmission timer (RFC 8489 §6.2.1) |
//! | [`discovery`] | RFC 5780 NAT behavior discovery probes, as a state machine with a typed report |
//! | [`turn`] | TURN client (and the relay's protocol core), sans-IO |

pub mod binding;
pub mod channel_data;
pub mod demux;
pub mod discovery;
pub mod framing;
pub mod integrity;
pub mod nonce;
pub mod raw;
pub mod rest;
pub mod transaction;
pub mod turn;
pub mod writer;
