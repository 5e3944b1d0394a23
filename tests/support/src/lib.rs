//! Test harness shared by natkit's crates (a dev-dependency only; never
//! published). One copy of each helper that several test binaries need:
//!
//! - [`ports`]: loopback ports free for UDP and TCP, relay port ranges kept
//!   apart per test binary;
//! - [`bins`]: another crate's binary next to the test executable (built
//!   when missing), and `--check-config` runs of a server binary;
//! - [`http`]: GET over HTTP/1.0 (`/metrics`, `/healthz`) and one series
//!   of the Prometheus text format;
//! - [`ready`]: waiting until the endpoint a test uses is up: a STUN
//!   Binding request answered over UDP or TCP, a TCP port accepting, an
//!   HTTP path answering 200, bounded in time;
//! - [`relay`]: natkit-turn on loopback, configured by a builder, killed on
//!   drop;
//! - [`stream`]: STUN over TCP from the client's side: reading a message,
//!   trickling one byte at a time;
//! - [`tempdir`]: a scratch directory removed on drop;
//! - [`tls`]: self-signed certificates written as PEM files, and TLS
//!   clients that trust only one of them;
//! - `turn_client` (feature `turn-client`): a blocking TURN test client
//!   over natkit-ice's `TurnConnection`.
//!
//! Everything panics on failure: these are test helpers, and a panic is how
//! a test reports.

pub mod bins;
pub mod http;
pub mod pebble;
pub mod ports;
pub mod ready;
pub mod relay;
pub mod stream;
pub mod tempdir;
pub mod tls;
#[cfg(feature = "turn-client")]
pub mod turn_client;

pub use ports::free_port;
pub use relay::{TurnRelay, TurnRelayBuilder};
pub use tempdir::TempDir;
#[cfg(feature = "turn-client")]
pub use turn_client::TurnTestClient;
