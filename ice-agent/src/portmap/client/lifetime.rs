//! A mapping's life: made, renewed between 1/2 and 5/8 of its lifetime
//! (RFC 6887 §11.2.1), lost; and the report when nothing maps.

// The mapper's state, types and imports (this file is part of its impl).
use super::*;

impl PortMapper {
    pub(super) fn udp_send(&mut self, payload: Vec<u8>) {
        self.out.push_back(Output::Transmit {
            to: SocketAddr::new(self.cfg.gateway, SERVER_PORT),
            payload,
        });
    }

    pub(super) fn mapped(&mut self, mapping: Mapping, now: Instant) {
        tracing::info!(%mapping, "port mapped");
        self.ever_mapped = true;
        self.set(mapping.protocol, Status::Mapped(mapping.external));
        // The ones not needed any more: UPnP's discovery or description
        // (nothing mapped there, nothing to undo).
        if mapping.protocol != Protocol::Upnp {
            for e in self.http.drain(..) {
                self.out.push_back(Output::CloseHttp(e.id));
            }
            if !matches!(self.upnp, Upnp::Idle | Upnp::Done) {
                self.upnp = Upnp::Done;
                self.set(
                    Protocol::Upnp,
                    Status::Failed(Failure::NotTried("another protocol mapped first")),
                );
            }
        }
        self.active = Some(self.schedule(mapping.clone(), now));
        self.out.push_back(Output::Event(Event::Mapped(mapping)));
        if self.closing {
            self.start_delete(now);
        }
    }

    pub(super) fn renewed(&mut self, mapping: Mapping, now: Instant) {
        tracing::debug!(%mapping, "port mapping renewed");
        self.set(mapping.protocol, Status::Mapped(mapping.external));
        self.active = Some(self.schedule(mapping.clone(), now));
        self.out.push_back(Output::Event(Event::Renewed(mapping)));
    }

    /// RFC 6887 §11.2.1: renew at a random time between 1/2 and 5/8 of
    /// the lifetime (RFC 6886 §3.3 says half-way, "like DHCP").
    pub(super) fn schedule(&mut self, mapping: Mapping, now: Instant) -> Active {
        let (expires, renew_at) = match mapping.lifetime {
            Some(l) => {
                let f = self.rng.gen_range(0.5..0.625);
                (
                    Some(now + l),
                    Some(now + l.mul_f64(f).max(Duration::from_secs(1))),
                )
            }
            None => (None, None),
        };
        Active {
            mapping,
            expires,
            renew_at,
        }
    }

    /// A renewal went unanswered: another single one between 1/2 and 5/8
    /// of the time left (RFC 6887 §11.2.1), until too close to expiry.
    pub(super) fn schedule_retry(&mut self, now: Instant) {
        let f = self.rng.gen_range(0.5..0.625);
        if let Some(a) = &mut self.active {
            let left = a
                .expires
                .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
            a.renew_at = (left > LAST_RENEWAL).then(|| now + left.mul_f64(f));
        }
    }

    pub(super) fn lost(&mut self, failure: Failure) {
        let Some(a) = self.active.take() else { return };
        tracing::info!(mapping = %a.mapping, %failure, "port mapping lost");
        self.set(a.mapping.protocol, Status::Failed(failure.clone()));
        self.out.push_back(Output::Event(Event::Lost {
            mapping: a.mapping,
            failure,
        }));
    }

    pub(super) fn renew(&mut self, now: Instant) {
        let Some(a) = &self.active else { return };
        let m = a.mapping.clone();
        self.schedule_retry(now);
        match m.protocol {
            Protocol::Pcp => {
                // One datagram, same nonce, the assignment suggested.
                let p = self.pcp_request(secs_u32(self.cfg.lifetime), m.external);
                self.udp_send(p);
                self.pcp = Pcp::Renewing;
            }
            Protocol::NatPmp => {
                let p = natpmp::map_request(
                    self.cfg.internal.port(),
                    m.external.port(),
                    secs_u32(self.cfg.lifetime),
                );
                self.udp_send(p.to_vec());
                self.natpmp = NatPmp::Renewing;
            }
            Protocol::Upnp => {
                let Some(client) = self.v4() else { return };
                let internal_port = self.cfg.internal.port();
                let Upnp::Mapped {
                    service,
                    port,
                    lease,
                    renewing,
                } = &mut self.upnp
                else {
                    return;
                };
                if *renewing {
                    return;
                }
                *renewing = true;
                let action = SoapAction::AddPortMapping {
                    external_port: *port,
                    internal_port,
                    internal_client: client,
                    lease: *lease,
                };
                let (req, to) = (upnp::request(service, action), service.control.addr);
                self.http_start(Purpose::Soap(action), to, req, now);
            }
        }
    }

    /// Renew the mapping now (after a network change, say): a refusal, or
    /// silence until expiry, is [`Event::Lost`].
    pub fn renew_now(&mut self, now: Instant) {
        self.now = now;
        if self.closing || self.active.is_none() {
            return;
        }
        self.renew(now);
    }

    /// Every protocol is out without a mapping: say so, once.
    pub(super) fn finish_if_failed(&mut self) {
        if self.reported_failure || self.active.is_some() || self.closing {
            return;
        }
        if self
            .status
            .iter()
            .all(|(_, s)| matches!(s, Status::Failed(_)))
        {
            self.reported_failure = true;
            self.out
                .push_back(Output::Event(Event::Failed(self.status.clone())));
        } else if self
            .status
            .iter()
            .all(|(_, s)| matches!(s, Status::Failed(_) | Status::Waiting))
            && self.upnp_go
        {
            // What still waits can no longer start (e.g. UPnP not wanted
            // after PCP failed).
            for (_, s) in &mut self.status {
                if *s == Status::Waiting {
                    *s = Status::Failed(Failure::NotTried("nothing left to try"));
                }
            }
            self.reported_failure = true;
            self.out
                .push_back(Output::Event(Event::Failed(self.status.clone())));
        }
    }
}
