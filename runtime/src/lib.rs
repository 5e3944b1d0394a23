//! natkit-runtime: what natkit's binaries share outside the protocol.
//!
//! Protocol code lives in `natkit-proto` (sans-IO); this crate is the I/O and process plumbing
//! around it:
//!
//! - [`acme`]: automatic certificates for the TLS listeners (ACME, RFC 8555; tls-alpn-01,
//!   RFC 8737, answered on the listeners themselves), renewed and swapped in while serving.
//! - [`batch`]: batched UDP I/O on Linux (`recvmmsg`/`sendmmsg` over preallocated buffers, one
//!   destination per datagram) and [`batch::udp_socket`] (SO_REUSEPORT, big buffers, V6ONLY).
//! - [`metrics_http`]: Prometheus text at `GET /metrics` and `GET /healthz` (settable 200/503),
//!   a hyper task that stops with the [`shutdown::Shutdown`] handle.
//! - [`logging`]: `tracing` to stderr for servers (text or JSON, `RUST_LOG`) and for the CLI
//!   (warnings only by default).
//! - [`shutdown`]: which of SIGTERM/SIGINT/SIGHUP came, and a cloneable shutdown flag for tasks
//!   and blocking worker threads.
//! - [`tls`]: a rustls (ring) server configuration from PEM certificate and key files, with
//!   errors that name the file.
//! - [`config`]: loading a server's TOML file with errors that name file, key and line.
//! - [`front`]: before the protocol: PROXY protocol v2 from trusted front proxies, and a TLS
//!   port shared with a web site (TURN told apart by ALPN, SNI or first bytes; the rest
//!   forwarded, or passed through by SNI).
//! - [`time`]: wall-clock times as RFC 3339 text.
//! - [`stream`]: TCP/TLS connections of the servers: reading into the protocol's deframer with
//!   an idle timeout and a deadline per frame, and a writer with a bounded queue and bounded
//!   writes.
//! - [`watch`]: noticing that loaded files (certificates, secrets) changed, symlink swaps
//!   included, so they are loaded again without a signal.

#![warn(missing_docs)]

pub mod acme;
#[cfg(target_os = "linux")]
pub mod batch;
pub mod config;
pub mod front;
pub mod logging;
pub mod metrics_http;
pub mod shutdown;
pub mod stream;
pub mod time;
pub mod tls;
pub mod watch;
