//! Port mapping on the gateway: PCP (RFC 6887), NAT-PMP (RFC 6886) and
//! UPnP IGD, sans-IO.
//!
//! A NAT that maps a port on request lets the internet in whatever its
//! filtering: a port-mapped address is a candidate that works even behind
//! a symmetric NAT, where the STUN-learned one does not. [`PortMapper`]
//! makes and keeps one mapping:
//!
//! 1. PCP MAP (RFC 6887 §11) to the gateway's port 5351. A NAT-PMP-only
//!    gateway answers it with NAT-PMP's "unsupported version" (RFC 6887
//!    §9), and NAT-PMP (RFC 6886 §3.3) follows at once; a PCP refusal or
//!    silence on port 5351 ends both (the two share the port and, in
//!    practice, the daemon and its rules).
//! 2. Meanwhile UPnP IGD is discovered (SSDP M-SEARCH, the device
//!    description): only discovered, so that nothing needs undoing when
//!    PCP or NAT-PMP maps. Its mapping (`GetExternalIPAddress`, then
//!    `AddPortMapping`) starts when PCP and NAT-PMP have failed.
//!    PCP and NAT-PMP come first because they are lighter (one datagram
//!    each way against HTTP, XML and TCP), tie the mapping to the
//!    requester, and give lifetimes every gateway honours; UPnP is the
//!    fallback for the many home routers that only speak it.
//! 3. The mapping is renewed between 1/2 and 5/8 of the lifetime granted
//!    (RFC 6887 §11.2.1; RFC 6886 §3.3 says half-way), with one request at
//!    a time and again between 1/2 and 5/8 of what is left when one goes
//!    unanswered; a refused renewal, or the expiry, is
//!    [`Event::Lost`].
//! 4. [`PortMapper::close`] deletes it (PCP and NAT-PMP with lifetime 0,
//!    UPnP `DeletePortMapping`), requests still in flight included.
//!
//! The driver sends UDP from the socket of the internal address (PCP and
//! NAT-PMP map the requester's address), opens the TCP connections UPnP
//! needs from that address ([`Output::Http`]), and feeds back what comes
//! in; [`gateway`] finds the gateway in the routing table. With the
//! `tokio` feature, [`driver`] has the HTTP exchange and a complete driver
//! for one UDP socket.
//!
//! | module | what it does |
//! |---|---|
//! | `api` | what the mapper is asked, makes, reports and outputs |
//! | `client` | [`PortMapper`], the state machine (a file per protocol, the lifetime, the closing) |
//! | [`pcp`], [`natpmp`] | the two UDP protocols' messages |
//! | [`ssdp`], [`http`], [`upnp`] | UPnP IGD: discovery, HTTP/1.1, the device description and SOAP |
//! | [`gateway`] | the default gateway from `/proc/net/route` and `/proc/net/ipv6_route` |
//! | [`driver`] | (feature `tokio`) HTTP over TCP, and a driver for one socket |

mod api;
mod client;
#[cfg(feature = "tokio")]
pub mod driver;
pub mod gateway;
pub mod http;
pub mod natpmp;
pub mod pcp;
pub mod ssdp;
pub mod upnp;

pub use api::{Config, Event, Failure, HttpId, Mapping, Output, Protocol, Status, SERVER_PORT};
pub use client::{PortMapper, UDP_PATIENCE};
