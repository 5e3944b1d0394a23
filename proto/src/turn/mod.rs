//! TURN (RFC 8656, RFC 6156), sans-IO.
//!
//! | module | what it does |
//! |---|---|
//! | [`client`] | a TURN client: allocate (with the 401/438 dance), refresh, permissions, channels, Send/Data, TCP allocations (RFC 6062), following 300 Try Alternate once |
//! | [`request`] | zero-allocation parsing of TURN attributes |
//! | [`server`] | the relay's protocol core: allocations, auth, permissions, channels, the data path, usage records, 300 Try Alternate |

pub mod client;
pub mod request;
pub mod server;
