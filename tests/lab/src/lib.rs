//! # natkit-lab
//!
//! The NAT lab (issue 5): topologies of network namespaces joined by veth
//! pairs, with Linux NATs built from nftables between the peers, an
//! "internet" namespace with natkit-stun (RFC 5780, two addresses) and
//! natkit-turn, and harnesses that run natkit inside them.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `conntrack`
//! (`scripts/deps/lab.sh` installs them). Addresses come only from the
//! documentation ranges ([`addr`]), inside the lab's namespaces.
//!
//! A lab is a [`TopologySpec`] (sites, each a host behind a [`NatKind`])
//! built by [`Lab::build`]:
//!
//! ```text
//!  host ── lan [NAT router] wan ──┐
//!  host ── lan [NAT router] wan ──┼── br0 (203.0.113.0/24) internet namespace:
//!  host ── [home NAT] ── [CGNAT] ─┘      natkit-stun .1 + .2, natkit-turn .3
//! ```
//!
//! Dropping the [`Lab`] kills its processes and deletes its namespaces;
//! the next build under the same tag deletes what a killed run left. The
//! `natkit-lab` binary builds one for people (`up`, `down`), checks
//! `natkit netcheck` in every NAT (`netcheck`) and runs the connection
//! matrix (`matrix`, [`matrix`]).
//!
//! The integration tests in `tests/lab/tests/` each build their lab once
//! (one test function per file: nextest runs each function in a process
//! of its own) under a tag of their own.

#![warn(missing_docs)]

pub mod addr;
pub mod bins;
pub mod cmd;
pub mod error;
pub mod lab;
pub mod link;
pub mod matrix;
pub mod nat;
pub mod netcheck;
pub mod netns;
pub mod peer;
pub mod portmap;
pub mod probe;
pub mod process;
pub mod punch;
pub mod topology;

pub use error::{LabError, Result};
pub use lab::{clean, Lab, Servers, Site};
pub use link::LinkProfile;
pub use nat::NatKind;
pub use netns::Netns;
pub use portmap::PortMapping;
pub use process::Process;
pub use topology::{SiteSpec, TopologySpec};
