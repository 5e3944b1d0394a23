//! The route of the selected pair: how each QUIC datagram for the peer
//! leaves, decided by the core and applied by whoever sends (the tokio
//! driver's socket, a simulation).
//!
//! QUIC sees one fixed peer address for the whole session; the route under
//! it changes when ICE selects another pair, so a direct pair can take over
//! from the relay (or a restart move the path) without a reconnect.

use std::fmt;
use std::net::SocketAddr;

use natkit_proto::channel_data;
use natkit_proto::turn::client::{self as turn, UsageError};
// The core's state, types and imports (this file is part of its impl).
use super::*;

/// A TCP or TLS connection to a TURN server, named by the core. Ids are
/// never reused within a session, so a late report about a replaced
/// connection cannot reach its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream#{}", self.0)
    }
}

/// Where a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The UDP socket bound to this local (host) address.
    Base(SocketAddr),
    /// This TCP/TLS connection to a TURN server.
    Stream(StreamId),
}

/// How a QUIC datagram is wrapped on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// Not at all: straight to the peer.
    None,
    /// ChannelData on a bound channel (RFC 8656 §12.4): 4 bytes of
    /// overhead; padded to 4 bytes on TCP/TLS (§12.5).
    ChannelData {
        /// The channel bound to the peer.
        channel: u16,
        /// Whether it goes over a stream (pad it).
        padded: bool,
    },
    /// A Send indication to `peer` (RFC 8656 §11), while the channel is not
    /// bound yet.
    SendIndication {
        /// The peer's address as the relay sees it.
        peer: SocketAddr,
    },
}

/// How QUIC datagrams for the peer go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The socket or connection to send on.
    pub via: Via,
    /// The destination: the peer itself, or the TURN server that relays.
    pub to: SocketAddr,
    /// How each datagram is wrapped.
    pub wrap: Wrap,
}

/// Most bytes [`Route::wrap_into`] adds to a datagram (a Send indication to
/// an IPv6 peer: header 20, XOR-PEER-ADDRESS 24, DATA header 4, padding 3).
pub const MAX_WRAP_OVERHEAD: usize = 20 + 24 + 4 + 3;

impl Route {
    /// A route straight from host base `base` to `peer`.
    pub fn direct(base: SocketAddr, peer: SocketAddr) -> Route {
        Route {
            via: Via::Base(base),
            to: peer,
            wrap: Wrap::None,
        }
    }

    /// Whether datagrams go unwrapped.
    pub fn is_direct(&self) -> bool {
        self.wrap == Wrap::None
    }

    /// Write `datagram` as it must go on the wire into `out`; returns the
    /// length. For [`Wrap::None`] the caller sends `datagram` itself (this
    /// copies it).
    pub fn wrap_into(&self, datagram: &[u8], out: &mut [u8]) -> Result<usize, UsageError> {
        match self.wrap {
            Wrap::None => {
                let dst = out
                    .get_mut(..datagram.len())
                    .ok_or(UsageError::BufferTooSmall)?;
                dst.copy_from_slice(datagram);
                Ok(datagram.len())
            }
            Wrap::ChannelData { channel, padded } => {
                channel_data::encode(out, channel, datagram, padded).map_err(|_| {
                    if datagram.len() > usize::from(u16::MAX) {
                        UsageError::DataTooLarge(datagram.len())
                    } else {
                        UsageError::BufferTooSmall
                    }
                })
            }
            Wrap::SendIndication { peer } => turn::send_indication(out, peer, datagram),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Via::Base(b) => write!(f, "from {b}")?,
            Via::Stream(s) => write!(f, "over {s}")?,
        }
        write!(f, " to {}", self.to)?;
        match self.wrap {
            Wrap::None => Ok(()),
            Wrap::ChannelData { channel, .. } => write!(f, " in channel {channel:#06x}"),
            Wrap::SendIndication { peer } => write!(f, " in Send indications for {peer}"),
        }
    }
}

/// The route of the selected pair, or the one learnt before a selection.
impl SessionCore {
    /// The way back to the peer's first datagram, before a selection.
    pub(super) fn learn_route(&mut self, local: SocketAddr, from: SocketAddr) {
        let now = self.now;
        let r = if self.is_host_base(local) {
            Some(Route::direct(local, from))
        } else {
            self.allocs
                .iter_mut()
                .find(|a| a.relays(local))
                .and_then(|a| a.route_to(from, now))
        };
        if let Some(r) = r {
            tracing::debug!(route = %r, "route learned from the peer's first datagram");
            self.learned = Some(r);
            self.route_version += 1;
            self.dirty = true;
        }
    }

    pub(super) fn set_route(&mut self, r: Option<Route>) {
        if r != self.route || self.learned.is_some() {
            if let Some(r) = &r {
                tracing::debug!(route = %r, "route");
            }
            self.route = r;
            self.learned = None;
            self.route_version += 1;
        }
    }

    /// The route of the selected pair: from a host base straight to the
    /// peer, or through our allocation for a relayed base.
    pub(super) fn route_for(&mut self, sp: &SelectedPair, now: Instant) -> Option<Route> {
        if self.is_host_base(sp.local.base) {
            return Some(Route::direct(sp.local.base, sp.remote.addr));
        }
        self.allocs
            .iter_mut()
            .find(|a| a.relays(sp.local.base))
            .and_then(|a| a.route_to(sp.remote.addr, now))
    }

    pub(super) fn refresh_route(&mut self, now: Instant) {
        if let Some(sp) = self.selected.clone() {
            let r = self.route_for(&sp, now);
            self.set_route(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_matches_the_turn_framing() {
        let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let data = [0x40u8, 1, 2, 3, 4];
        let mut out = [0u8; 128];
        let direct = Route::direct("192.0.2.1:5000".parse().unwrap(), peer);
        assert_eq!(direct.wrap_into(&data, &mut out), Ok(5));
        assert_eq!(out[..5], data);

        let cd = |padded| Route {
            via: Via::Base("192.0.2.1:5000".parse().unwrap()),
            to: server,
            wrap: Wrap::ChannelData {
                channel: 0x4001,
                padded,
            },
        };
        let n = cd(false).wrap_into(&data, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x40, 0x01, 0, 5, 0x40, 1, 2, 3, 4]);
        assert_eq!(cd(true).wrap_into(&data, &mut out), Ok(12));

        let ind = Route {
            via: Via::Stream(StreamId(3)),
            to: server,
            wrap: Wrap::SendIndication { peer },
        };
        let n = ind.wrap_into(&data, &mut out).unwrap();
        assert!(n <= data.len() + MAX_WRAP_OVERHEAD);
        // A Send indication (0x0016) carrying the data.
        assert_eq!(&out[..2], &[0x00, 0x16]);
        assert!(out[..n].windows(5).any(|w| w == data));
        assert_eq!(
            ind.wrap_into(&data, &mut out[..10]),
            Err(UsageError::BufferTooSmall)
        );
    }
}
