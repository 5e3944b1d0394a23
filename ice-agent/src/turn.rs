//! TURN over tokio: the one copy of the TURN client's I/O.
//!
//! - `stream` (private): a TCP or TLS connection to a TURN server, read
//!   through proto's deframer and written from a bounded queue; the
//!   session's driver and [`TurnConnection`] both use it.
//! - [`TurnConnection`]: one allocation over UDP, TCP or TLS, driven by
//!   tokio, for tools that talk to a TURN server directly (`natkit turn`,
//!   the set-up of `natkit bench turn`, tests).
//!
//! The protocol itself (the 401/438 dance, refreshes, permissions,
//! channels) is proto's sans-IO [`Client`](natkit_proto::turn::client::Client).

mod connection;
pub(crate) mod stream;

pub use connection::{ConnectError, Incoming, LinkError, SendError, TurnConnection};
pub use stream::TlsInfo;
