//! natkit-turn: a TURN relay (RFC 8656, RFC 6156).
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | flags, `NATKIT_TURN_*` env vars and the TOML file, merged and validated |
//! | [`peer_policy`] | which peers may be relayed to: the default deny list, operator ranges, IPv4 embedded in IPv6 |
//! | [`ports`] | relay port allocation in the configured range, EVEN-PORT and reservations |
//! | [`shared`] | state the shards share: credentials, policy, quotas, relayed addresses |
//! | [`worker`] | one shard: mio loop, batched listener I/O, relay sockets, the sans-IO core |
//! | [`stream`] | TURN over TCP and TLS, feeding the shards |
//! | [`tcp`] | TCP allocations' sockets (RFC 6062): relayed listeners, Connect, data connections spliced with peers |
//! | [`metrics`] | live Prometheus metrics |
//! | [`usage`] | usage records (JSON lines) of allocations, written off the data path |
//! | [`server`] | starts everything; SIGHUP reload, SIGTERM drain |

pub mod config;
pub mod metrics;
pub mod peer_policy;
pub mod ports;
pub mod server;
pub mod shared;
pub mod stream;
pub mod tcp;
pub mod usage;
pub mod worker;
