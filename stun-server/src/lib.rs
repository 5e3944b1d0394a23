//! natkit-stun: a STUN server (RFC 8489) with RFC 5780 NAT behavior
//! discovery.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | flags, env vars and the TOML file, merged and validated |
//! | [`responder`] | sans-IO: which socket answers which request, with what |
//! | [`udp`] | the UDP data path: per-core SO_REUSEPORT sockets, batched syscalls |
//! | [`stream`] | STUN over TCP and TLS, with idle timeouts and a connection cap |
//! | [`metrics`] | Prometheus metrics, tallied per batch |
//! | [`server`] | starts everything, reloads the TLS certificate on SIGHUP, shuts down on SIGTERM/SIGINT |

pub mod config;
pub mod metrics;
pub mod responder;
pub mod server;
pub mod stream;
pub mod udp;
