//! The port-mapped candidate: a [`PortMapper`] on one host base (PCP,
//! NAT-PMP or UPnP IGD on the gateway), its mapping added to the agent as
//! a candidate, renewed while the session lives and deleted when it
//! closes (before [`SessionEvent::Closed`]).
//!
//! Gathering waits for the mapping only while the gateway has answered
//! something and mapping is not over. Before any answer it waits no
//! longer than the STUN and TURN servers take (a gateway one hop away
//! answers before a server beyond it does), or, with no server to ask,
//! [`PORTMAP_FIRST_ANSWER`]: on the many networks whose gateway maps
//! nothing the description must not wait for retransmissions to run out.
//! A mapping made later still trickles.

use crate::portmap::{self, HttpId, Mapping, PortMapper};

// The core's state, types and imports (this file is part of its impl).
use super::*;

/// How long gathering waits for a first answer from the gateway when there
/// is no STUN or TURN server whose answers bound the wait.
pub const PORTMAP_FIRST_ANSWER: Duration = Duration::from_millis(100);

/// The mapper of the session and what the core knows of it.
pub(super) struct Mapper {
    pub m: PortMapper,
    /// The base it maps (and sends from).
    pub base: SocketAddr,
    /// Gathering stops waiting for a first answer at this time.
    pub first_answer_by: Instant,
    /// HTTP exchanges and the streams the driver knows them by.
    pub http: Vec<(HttpId, StreamId)>,
}

impl Mapper {
    /// A mapper for `cfg`, if its internal address is one of `bases`.
    pub fn new(cfg: portmap::Config, bases: &[SocketAddr], now: Instant) -> Option<Mapper> {
        let base = cfg.internal;
        if !bases.contains(&base) {
            tracing::warn!(%base, "port mapping asked for an address that is no base: off");
            return None;
        }
        Some(Mapper {
            m: PortMapper::new(cfg, now),
            base,
            first_answer_by: now + PORTMAP_FIRST_ANSWER,
            http: Vec::new(),
        })
    }

    /// Whether gathering should wait for it at `now`; `servers`: whether
    /// STUN or TURN servers are asked too (their answers bound the wait
    /// for a first answer from the gateway).
    pub fn holds_gathering(&self, now: Instant, servers: bool) -> bool {
        !self.m.settled() && (self.m.answered() || (!servers && now < self.first_answer_by))
    }
}

/// Port mapping: the mapper's outputs, events and HTTP exchanges.
impl SessionCore {
    /// The port mapping in force, if any.
    pub fn port_mapping(&self) -> Option<&Mapping> {
        self.mapper.as_ref().and_then(|m| m.m.mapping())
    }

    /// Each port-mapping protocol and where it stands (empty when port
    /// mapping is off).
    pub fn port_mapping_status(&self) -> &[(portmap::Protocol, portmap::Status)] {
        self.mapper.as_ref().map_or(&[], |m| m.m.status())
    }

    /// Bytes that arrived on the TCP connection of stream `stream` (a UPnP
    /// exchange, [`Output::Http`]).
    pub fn handle_http_data(&mut self, stream: StreamId, data: &[u8], now: Instant) {
        self.now = now;
        if let Some(mp) = &mut self.mapper {
            if let Some(&(id, _)) = mp.http.iter().find(|(_, s)| *s == stream) {
                mp.m.handle_http_data(id, data, now);
                self.dirty = true;
            }
        }
    }

    /// The TCP connection of stream `stream` ended: `Ok` when the device
    /// closed it, `Err` when it could not be made or broke.
    pub fn handle_http_end(
        &mut self,
        stream: StreamId,
        result: Result<(), ConnectionError>,
        now: Instant,
    ) {
        self.now = now;
        if let Some(mp) = &mut self.mapper {
            if let Some(i) = mp.http.iter().position(|(_, s)| *s == stream) {
                let (id, _) = mp.http.remove(i);
                mp.m.handle_http_end(id, result.map_err(|e| e.to_string()), now);
                self.dirty = true;
            }
        }
    }

    /// Whether the datagram is the gateway's answer (consumed).
    pub(super) fn mapper_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let Some(mp) = &mut self.mapper else {
            return false;
        };
        if mp.base != local || !mp.m.handle_datagram(from, data, now) {
            return false;
        }
        self.dirty = true;
        true
    }

    pub(super) fn pump_mapper(&mut self) {
        let Some(mp) = &mut self.mapper else { return };
        let mut events = Vec::new();
        while let Some(o) = mp.m.poll_output() {
            match o {
                portmap::Output::Transmit { to, payload } => {
                    self.transmits.push_back(Transmit {
                        via: Via::Base(mp.base),
                        to,
                        payload,
                    });
                }
                portmap::Output::Http {
                    id,
                    from,
                    to,
                    request,
                } => {
                    let stream = StreamId(self.next_stream);
                    self.next_stream += 1;
                    mp.http.push((id, stream));
                    self.streams.push_back(Output::Http {
                        stream,
                        from,
                        to,
                        request,
                    });
                }
                portmap::Output::CloseHttp(id) => {
                    if let Some(i) = mp.http.iter().position(|(h, _)| *h == id) {
                        let (_, stream) = mp.http.remove(i);
                        self.streams.push_back(Output::Disconnect { stream });
                    }
                }
                portmap::Output::Event(e) => events.push(e),
            }
        }
        for e in events {
            self.dirty = true;
            self.on_mapper_event(e);
        }
    }

    fn on_mapper_event(&mut self, e: portmap::Event) {
        match e {
            portmap::Event::Mapped(m) => {
                self.add_mapped(&m);
                self.events.push_back(SessionEvent::PortMapped(m));
            }
            portmap::Event::Renewed(m) => {
                // A gateway that lost its state may map us elsewhere: that
                // address is a new candidate (the old one fails its checks).
                self.add_mapped(&m);
            }
            portmap::Event::Failed(status) => {
                let answered = status
                    .iter()
                    .any(|(_, s)| matches!(s, portmap::Status::Failed(f) if f.answered()));
                if answered {
                    tracing::info!(?status, "no port mapping");
                } else {
                    tracing::debug!(?status, "no port mapping: the gateway does not answer");
                }
                self.events
                    .push_back(SessionEvent::PortMappingFailed(status));
            }
            portmap::Event::Lost { mapping, failure } => {
                self.events
                    .push_back(SessionEvent::PortMappingLost { mapping, failure });
            }
            portmap::Event::Closed => {}
        }
    }

    fn add_mapped(&mut self, m: &Mapping) {
        if self.cfg.relay_only
            || self
                .agent
                .local_candidates()
                .iter()
                .any(|c| c.addr == m.external && c.base == m.internal)
        {
            return;
        }
        let i = self
            .bases
            .iter()
            .position(|b| *b == m.internal)
            .unwrap_or(0);
        let pref = local_preference(m.internal.ip(), i as u16);
        self.add_local(Candidate::port_mapped(
            m.external, m.internal, m.gateway, pref,
        ));
    }
}
