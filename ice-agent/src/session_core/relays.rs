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
// The core's state, types and imports (this file is part of its impl).
use super::*;

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

/// The TURN allocations: creating and replacing them, their servers'
/// messages, their events (candidates, channels, losses).
impl SessionCore {
    pub(super) fn alloc_of(&self, stream: StreamId) -> Option<usize> {
        self.allocs.iter().position(|a| a.stream() == Some(stream))
    }

    /// Drop allocation `i` and make a new one on its server.
    pub(super) fn replace_alloc(&mut self, i: usize, now: Instant) {
        let a = self.allocs.remove(i);
        if let Some(stream) = a.stream() {
            self.streams.push_back(Output::Disconnect { stream });
        }
        self.start_alloc(a.server, now);
    }

    pub(super) fn start_alloc(&mut self, server: TurnServer, now: Instant) {
        let stream = StreamId(self.next_stream);
        self.next_stream += 1;
        match Alloc::new(server, &self.bases, stream, now) {
            Ok(a) => {
                if let Link::Connecting(stream) = a.link {
                    self.streams.push_back(Output::Connect {
                        stream,
                        server: a.server.addr,
                        transport: a.server.transport,
                        tls_name: a.server.tls_name.clone(),
                    });
                }
                self.allocs.push(a);
            }
            Err(p) => self.problem(p),
        }
    }

    /// A message from allocation `ai`'s server: a response for its client,
    /// or peer data (ChannelData, Data indication) for the agent or the
    /// application.
    pub(super) fn on_turn_message(
        &mut self,
        ai: usize,
        data: &mut [u8],
        now: Instant,
    ) -> Option<Range<usize>> {
        let a = &mut self.allocs[ai];
        let Some(&first) = a.relayed.first() else {
            a.client.handle_input(data, now);
            self.dirty = true;
            return None;
        };
        // The peer data is borrowed from `data`, not copied.
        let (peer, local, at) = {
            let d = a.client.recv(data, now);
            let Some(d) = d else {
                // A response (or something dropped and counted).
                self.dirty = true;
                return None;
            };
            let start = d.data.as_ptr() as usize - data.as_ptr() as usize;
            let local = a.client.relayed_address_for(d.peer).unwrap_or(first);
            (d.peer, local, start..start + d.data.len())
        };
        let r = self.deliver(peer, local, &mut data[at.clone()], now)?;
        Some(at.start + r.start..at.start + r.end)
    }

    pub(super) fn pump_allocs(&mut self, now: Instant) {
        for ai in 0..self.allocs.len() {
            if matches!(self.allocs[ai].link, Link::Down(_)) {
                let c = &mut self.allocs[ai].client;
                while c.poll_transmit().is_some() || c.poll_event().is_some() {}
                continue;
            }
            // Events first: a redirect (RFC 8489 §10) moves the allocation
            // to another server, and the Allocate the client queued for the
            // alternate must not leave on the old server's stream.
            while let Some(e) = self.allocs[ai].client.poll_event() {
                self.dirty = true;
                self.on_turn_event(ai, e, now);
            }
            self.send_alloc_transmits(ai);
        }
        // Allocations a restart's probe found dead are made again (their
        // loss was reported just above, with the probe's failure).
        let mut ai = 0;
        while ai < self.allocs.len() {
            let a = &self.allocs[ai];
            if a.revalidating && a.is_over() && self.closing.is_none() {
                tracing::debug!(server = %a.server.addr, "TURN allocation lost with the network: allocating again");
                self.replace_alloc(ai, now);
                self.dirty = true;
            } else {
                ai += 1;
            }
        }
    }

    pub(super) fn send_alloc_transmits(&mut self, ai: usize) {
        let a = &mut self.allocs[ai];
        match a.via() {
            Some(via) => {
                while let Some(t) = a.client.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        via,
                        // The client's own server: the alternate at once
                        // after a redirect over UDP.
                        to: t.to,
                        payload: t.payload,
                    });
                }
            }
            // Connecting: the requests wait in the client for the stream.
            None if matches!(a.link, Link::Connecting(_)) => {}
            None => while a.client.poll_transmit().is_some() {},
        }
    }

    pub(super) fn on_turn_event(&mut self, ai: usize, e: turn::Event, now: Instant) {
        let server = self.allocs[ai].server.addr;
        let kind = self.allocs[ai].kind();
        match e {
            turn::Event::Allocated {
                relayed, mapped, ..
            } => {
                self.allocs[ai].relayed = relayed.clone();
                self.allocs[ai].done = true;
                // A relay lost earlier serves us again (a restart allocated
                // anew): no longer a reason to end the session.
                if self.relay_lost.as_ref().is_some_and(|p| p.server == server) {
                    self.relay_lost = None;
                }
                let base = match self.allocs[ai].link {
                    Link::Udp(b) => Some(b),
                    _ => None,
                };
                let host_ip = base.map_or(mapped.ip(), |b| b.ip());
                for (i, r) in relayed.iter().enumerate() {
                    let pref = local_preference(r.ip(), (ai * 2 + i) as u16);
                    self.add_local(Candidate::relayed(*r, mapped, host_ip, server.ip(), pref));
                }
                // RFC 8445 §5.1.1.2: the mapped address a TURN server
                // reports is a server-reflexive candidate too.
                if let (Some(b), false) = (base, self.cfg.relay_only) {
                    if mapped != b {
                        let i = self.bases.iter().position(|x| *x == b).unwrap_or(0);
                        let pref = local_preference(b.ip(), i as u16);
                        self.add_local(Candidate::server_reflexive(mapped, b, server.ip(), pref));
                    }
                }
                let peers: Vec<SocketAddr> = self
                    .agent
                    .remote_candidates()
                    .iter()
                    .map(|c| c.addr)
                    .collect();
                for p in peers {
                    let _ = self.allocs[ai].client.create_permission(p, now);
                }
            }
            turn::Event::Failed(err) => {
                let was_done = std::mem::replace(&mut self.allocs[ai].done, true);
                if self.closing.is_some() {
                    return;
                }
                let p = ServerProblem {
                    server,
                    kind,
                    problem: Problem::Turn(err),
                };
                if was_done {
                    tracing::info!("TURN allocation lost: {p}");
                    self.relay_lost(ai, p);
                } else {
                    self.problem(p);
                }
            }
            turn::Event::ChannelBound { peer, channel } => {
                self.allocs[ai].bound.insert(peer, channel);
                self.refresh_route(now);
            }
            turn::Event::ChannelFailed { peer, error, .. } => {
                tracing::debug!(%peer, %error, "TURN channel bind failed; data goes in Send indications");
                self.allocs[ai].bound.remove(&peer);
                self.refresh_route(now);
            }
            turn::Event::PermissionFailed { peers, error } => {
                tracing::debug!(?peers, %error, "TURN permission refused");
            }
            // RFC 8489 §10: the server sent the Allocate to an alternate
            // (the client follows one redirect, never a second). Over UDP
            // the allocation simply talks to it from now on; over TCP/TLS
            // the alternate needs a connection of its own: the old stream
            // is closed and a new one opened, and the client's Allocate
            // waits in it until the stream is up (as at the start). TLS
            // checks the alternate's certificate against ALTERNATE-DOMAIN
            // when the server gave one, else against the name first used.
            turn::Event::Redirected { to, domain, .. } => {
                tracing::debug!(from = %server, %to, "TURN server redirected the allocation");
                let old = self.allocs[ai].stream();
                let a = &mut self.allocs[ai];
                a.server.addr = to;
                match old {
                    None => self.send_alloc_transmits(ai),
                    Some(old) => {
                        if let Some(d) = domain {
                            a.server.tls_name = Some(d);
                        }
                        let stream = StreamId(self.next_stream);
                        self.next_stream += 1;
                        a.link = Link::Connecting(stream);
                        self.streams.push_back(Output::Disconnect { stream: old });
                        self.streams.push_back(Output::Connect {
                            stream,
                            server: to,
                            transport: a.server.transport,
                            tls_name: a.server.tls_name.clone(),
                        });
                    }
                }
            }
            turn::Event::Closed => self.allocs[ai].closed = true,
            turn::Event::Refreshed { .. } => self.allocs[ai].revalidating = false,
            // Sessions allocate UDP relays (RFC 6062 events never come).
            turn::Event::Data { .. }
            | turn::Event::PermissionCreated { .. }
            | turn::Event::Connected { .. }
            | turn::Event::ConnectFailed { .. }
            | turn::Event::ConnectionAttempt { .. } => {}
        }
    }

    /// Allocation `ai` is gone. If the selected path runs through it, say
    /// so: the peer will stop hearing us there (an ICE restart allocates
    /// again). Otherwise only its relayed candidate is gone, and with it
    /// the fallback should the path die: a server problem, so the
    /// application learns it (and an ending lists it), but nothing ends.
    pub(super) fn relay_lost(&mut self, ai: usize, p: ServerProblem) {
        let under_path = self
            .selected
            .as_ref()
            .is_some_and(|sp| self.allocs[ai].relays(sp.local.base));
        if !under_path {
            self.problem(p);
            return;
        }
        self.events.push_back(SessionEvent::RelayLost(p.clone()));
        self.relay_lost = Some(p);
    }
}
