//! Relayed gathering (RFC 8445 §5.1.1.2, RFC 8656): one TURN allocation
//! per configured server, each a proto sans-IO [`Client`] that does the
//! whole lifecycle (401/438 dance, refreshes, permissions, channels). This
//! module knows where each allocation's messages travel (a host base for
//! UDP, a TCP/TLS connection otherwise).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use natkit_proto::turn::client::{self as turn, Client, Transport};

use super::gather::{reaches, GATHER_RTO};
use super::report::{ServerKind, ServerProblem};
use super::route::{Route, StreamId, Via, Wrap};
use super::TurnServer;

/// Where an allocation's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// UDP from this host base: always up.
    Udp(SocketAddr),
    /// TCP/TLS connection being made.
    Connecting(StreamId),
    /// TCP/TLS connection up.
    Up(StreamId),
    /// TCP/TLS connection gone.
    Down(StreamId),
}

/// One TURN allocation.
pub(super) struct Alloc {
    pub server: TurnServer,
    pub client: Client,
    pub link: Link,
    pub relayed: Vec<SocketAddr>,
    /// Channels bound, by peer.
    pub bound: HashMap<SocketAddr, u16>,
    /// Gathering is over for it: allocated, or failed.
    pub done: bool,
    /// Closing: the deletion was confirmed (or nothing to delete).
    pub closed: bool,
    /// Probed by an ICE restart (a network change may have killed its
    /// 5-tuple): replaced by a new allocation if the probe fails.
    pub revalidating: bool,
}

impl Alloc {
    /// A new allocation on `server` from `bases` (UDP: the first base that
    /// reaches it), or why it cannot be made. TCP/TLS allocations get
    /// stream `id` and must be connected by the driver first.
    pub fn new(
        server: TurnServer,
        bases: &[SocketAddr],
        id: StreamId,
        now: Instant,
    ) -> Result<Alloc, ServerProblem> {
        let link = match server.transport {
            Transport::Udp => match bases.iter().find(|b| reaches(**b, server.addr)) {
                Some(b) => Link::Udp(*b),
                None => {
                    return Err(ServerProblem {
                        server: server.addr,
                        kind: server.kind(),
                        problem: super::report::Problem::NoLocalAddress,
                    })
                }
            },
            Transport::Tcp | Transport::Tls => Link::Connecting(id),
        };
        let mut tc = turn::Config::new(server.addr, server.transport, server.credentials.clone());
        tc.transaction = GATHER_RTO;
        tc.family = if server.addr.is_ipv4() {
            turn::AddressFamily::V4
        } else {
            turn::AddressFamily::V6
        };
        Ok(Alloc {
            client: Client::new(tc, now),
            server,
            link,
            relayed: Vec::new(),
            bound: HashMap::new(),
            done: false,
            closed: false,
            revalidating: false,
        })
    }

    pub fn kind(&self) -> ServerKind {
        self.server.kind()
    }

    /// The way to the server, when messages can go now.
    pub fn via(&self) -> Option<Via> {
        match self.link {
            Link::Udp(b) => Some(Via::Base(b)),
            Link::Up(s) => Some(Via::Stream(s)),
            Link::Connecting(_) | Link::Down(_) => None,
        }
    }

    /// The stream, for TCP/TLS allocations.
    pub fn stream(&self) -> Option<StreamId> {
        match self.link {
            Link::Udp(_) => None,
            Link::Connecting(s) | Link::Up(s) | Link::Down(s) => Some(s),
        }
    }

    /// Whether `from` on `base` is this allocation's server over UDP.
    pub fn is_udp_server(&self, base: SocketAddr, from: SocketAddr) -> bool {
        self.link == Link::Udp(base) && self.server.addr == from
    }

    /// Whether `base` is one of this allocation's relayed addresses.
    pub fn relays(&self, base: SocketAddr) -> bool {
        self.relayed.contains(&base)
    }

    /// Whether the client is finished (failed or deleted).
    pub fn is_over(&self) -> bool {
        matches!(
            self.client.state(),
            turn::State::Failed | turn::State::Closed
        )
    }

    /// How QUIC for `peer` goes through this allocation: in its channel
    /// once bound, in Send indications until then. Asks for a channel (and
    /// a permission) when there is none yet.
    pub fn route_to(&mut self, peer: SocketAddr, now: Instant) -> Option<Route> {
        let via = self.via()?;
        if !self.client.has_permission(peer) {
            let _ = self.client.create_permission(peer, now);
        }
        let wrap = match self.bound.get(&peer) {
            Some(&channel) => Wrap::ChannelData {
                channel,
                padded: self.server.transport.is_stream(),
            },
            None => {
                // RFC 8656 §12: a channel makes relayed QUIC 4 bytes of
                // overhead instead of 36; Send indications until it is bound.
                if self.client.channel_for(peer).is_none() {
                    if let Err(e) = self.client.bind_channel(peer, now) {
                        tracing::debug!(%peer, error = %e, "no channel; Send indications");
                    }
                }
                Wrap::SendIndication { peer }
            }
        };
        Some(Route {
            via,
            to: self.server.addr,
            wrap,
        })
    }
}
