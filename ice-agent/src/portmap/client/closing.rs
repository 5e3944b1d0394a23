//! The deletion on close: PCP and NAT-PMP with lifetime 0 (RFC 6887
//! §15, RFC 6886 §3.4), UPnP DeletePortMapping; requests in flight
//! included.

// The mapper's state, types and imports (this file is part of its impl).
use super::*;

impl PortMapper {
    /// Delete the mapping (RFC 6887 §15 lifetime 0, RFC 6886 §3.4,
    /// UPnP DeletePortMapping), and stop; [`Event::Closed`] comes when the
    /// gateway confirmed or gave up.
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.closing {
            return;
        }
        self.closing = true;
        // Requests still in flight may have made a mapping the answer to
        // which is on its way: delete that too.
        let in_flight = match (&self.pcp, &self.natpmp, &self.upnp) {
            (Pcp::Requesting(_), _, _) => Some(Protocol::Pcp),
            (_, NatPmp::Requesting { .. }, _) => Some(Protocol::NatPmp),
            (_, _, Upnp::Adding { .. } | Upnp::Checking { .. }) => Some(Protocol::Upnp),
            _ => None,
        };
        for e in self.http.drain(..) {
            self.out.push_back(Output::CloseHttp(e.id));
        }
        match (self.active.is_some(), in_flight) {
            (true, _) => self.start_delete(now),
            // A gateway that never answered on port 5351 has most likely
            // made nothing (no daemon, the common case): one deletion for
            // the case it did and the answer was lost, and no wait for a
            // confirmation that will not come.
            (false, Some(Protocol::Pcp)) if !self.udp_answered => {
                let p = self.pcp_request(0, pcp::any_external(self.cfg.internal.ip()));
                self.udp_send(p);
                self.pcp = Pcp::Done;
                self.close_done();
            }
            (false, Some(_)) => self.start_delete(now),
            (false, None) => self.close_done(),
        }
    }

    pub(super) fn start_delete(&mut self, now: Instant) {
        let protocol = match (&self.active, &self.pcp, &self.natpmp, &self.upnp) {
            (Some(a), ..) => a.mapping.protocol,
            (None, Pcp::Requesting(_), ..) => Protocol::Pcp,
            (None, _, NatPmp::Requesting { .. }, _) => Protocol::NatPmp,
            _ => Protocol::Upnp,
        };
        let mut rt = self.cfg.retransmit;
        // Closing must not hold the session: three sends, 1.75 s in all.
        rt.rc = rt.rc.min(3);
        rt.rm = rt.rm.min(4);
        match protocol {
            Protocol::Pcp => {
                let suggested = self
                    .active
                    .as_ref()
                    .map_or(pcp::any_external(self.cfg.internal.ip()), |a| {
                        a.mapping.external
                    });
                let payload = self.pcp_request(0, suggested);
                self.udp_send(payload.clone());
                self.pcp = Pcp::Deleting(Udp {
                    tx: Transaction::new(now, rt),
                    payload,
                });
            }
            Protocol::NatPmp => {
                let payload = natpmp::map_request(self.cfg.internal.port(), 0, 0).to_vec();
                self.udp_send(payload.clone());
                self.natpmp = NatPmp::Deleting(Udp {
                    tx: Transaction::new(now, rt),
                    payload,
                });
            }
            Protocol::Upnp => {
                let (service, port) = match std::mem::replace(&mut self.upnp, Upnp::Done) {
                    Upnp::Mapped { service, port, .. } => (service, port),
                    Upnp::Adding { services, port, .. } => (services[0].clone(), port),
                    Upnp::Checking { service, port, .. } => (service, port),
                    _ => return self.close_done(),
                };
                let action = SoapAction::DeletePortMapping {
                    external_port: port,
                };
                let (req, to) = (upnp::request(&service, action), service.control.addr);
                self.upnp = Upnp::Deleting;
                self.http_start(Purpose::Soap(action), to, req, now);
            }
        }
    }

    pub(super) fn close_done(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.active = None;
        for e in self.http.drain(..) {
            self.out.push_back(Output::CloseHttp(e.id));
        }
        self.out.push_back(Output::Event(Event::Closed));
    }
}
