//! PCP (RFC 6887): the MAP request, its answers, the fall-back to
//! NAT-PMP a NAT-PMP-only gateway asks for (§9).

// The mapper's state, types and imports (this file is part of its impl).
use super::*;

impl PortMapper {
    pub(super) fn pcp_request(&self, lifetime: u32, suggested: SocketAddr) -> Vec<u8> {
        pcp::MapRequest {
            lifetime,
            client: self.cfg.internal.ip(),
            nonce: self.nonce,
            internal_port: self.cfg.internal.port(),
            suggested,
        }
        .encode()
        .to_vec()
    }

    pub(super) fn start_pcp(&mut self, now: Instant) {
        self.set(Protocol::Pcp, Status::Trying);
        let payload = self.pcp_request(
            secs_u32(self.cfg.lifetime),
            pcp::any_external(self.cfg.internal.ip()),
        );
        self.udp_send(payload.clone());
        self.pcp = Pcp::Requesting(Udp {
            tx: Transaction::new(now, self.cfg.retransmit),
            payload,
        });
    }

    pub(super) fn on_pcp(&mut self, data: &[u8], now: Instant) {
        let parsed = match pcp::parse(data) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "datagram from the PCP port ignored");
                return;
            }
        };
        let r = match parsed {
            pcp::Parsed::NatPmpOnly => {
                if matches!(self.pcp, Pcp::Requesting(_)) {
                    self.answered = true;
                    self.udp_answered = true;
                    self.pcp = Pcp::Done;
                    self.set(Protocol::Pcp, Status::Failed(Failure::Unsupported));
                    // RFC 6887 §9: fall back to NAT-PMP.
                    self.after_pcp(true, now);
                }
                return;
            }
            pcp::Parsed::Map(r) => r,
        };
        if let Some(m) = &r.map {
            if m.nonce != self.nonce
                || m.protocol != pcp::PROTO_UDP
                || m.internal_port != self.cfg.internal.port()
            {
                tracing::debug!("PCP answer for another mapping ignored");
                return;
            }
        }
        self.answered = true;
        self.udp_answered = true;
        match std::mem::replace(&mut self.pcp, Pcp::Done) {
            Pcp::Abandoned => {
                // UPnP took over: undo what the late answer made.
                if r.result == pcp::ResultCode::SUCCESS && r.lifetime != 0 {
                    tracing::debug!("late PCP mapping deleted (UPnP took over)");
                    let p = self.pcp_request(0, pcp::any_external(self.cfg.internal.ip()));
                    self.udp_send(p);
                }
            }
            Pcp::Requesting(_) => match self.pcp_mapping(&r) {
                Ok(mapping) => {
                    self.pcp = Pcp::Mapped;
                    self.mapped(mapping, now);
                }
                Err(f) => {
                    let unsupported = f == Failure::Unsupported;
                    self.set(Protocol::Pcp, Status::Failed(f));
                    self.after_pcp(unsupported, now);
                }
            },
            Pcp::Renewing | Pcp::Mapped => match self.pcp_mapping(&r) {
                Ok(mapping) => {
                    self.pcp = Pcp::Mapped;
                    self.renewed(mapping, now);
                }
                Err(f) => self.lost(f),
            },
            // The answer to the deletion, not a late one to the request.
            Pcp::Deleting(u) if r.lifetime != 0 && r.result == pcp::ResultCode::SUCCESS => {
                self.pcp = Pcp::Deleting(u);
            }
            Pcp::Deleting(_) => self.close_done(),
            other => self.pcp = other,
        }
    }

    pub(super) fn pcp_mapping(&self, r: &pcp::MapResponse) -> Result<Mapping, Failure> {
        if r.result == pcp::ResultCode::UNSUPP_VERSION {
            return Err(Failure::Unsupported);
        }
        if r.result != pcp::ResultCode::SUCCESS {
            return Err(Failure::Pcp(r.result));
        }
        let Some(m) = r.map else {
            return Err(Failure::BadAnswer("no MAP data".into()));
        };
        if r.lifetime == 0 {
            return Err(Failure::BadAnswer("lifetime 0".into()));
        }
        self.check_external(m.external)?;
        Ok(Mapping {
            protocol: Protocol::Pcp,
            external: m.external,
            internal: self.cfg.internal,
            gateway: self.cfg.gateway,
            lifetime: Some(Duration::from_secs(r.lifetime.into())),
        })
    }

    pub(super) fn check_external(&self, ext: SocketAddr) -> Result<(), Failure> {
        let ip = ext.ip();
        if ext.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || ip.is_loopback()
            || ip.is_ipv4() != self.cfg.internal.is_ipv4()
        {
            return Err(Failure::BadAnswer(format!("external address {ext}")));
        }
        Ok(())
    }

    /// PCP is out: NAT-PMP next only when the gateway said it speaks it
    /// (RFC 6887 §9); a PCP server that refused, or silence on the port
    /// both share, says NAT-PMP would do no better.
    pub(super) fn after_pcp(&mut self, natpmp_only: bool, now: Instant) {
        if self.wants(Protocol::NatPmp) && self.v4().is_some() {
            if natpmp_only {
                self.start_natpmp(now);
                return;
            }
            let why = match self.status_of(Protocol::Pcp) {
                Some(Status::Failed(Failure::NoAnswer { .. })) => {
                    "PCP went unanswered on the port NAT-PMP shares"
                }
                _ => "the gateway speaks PCP",
            };
            self.set(Protocol::NatPmp, Status::Failed(Failure::NotTried(why)));
        }
        self.upnp_may_map(now);
    }

    pub(super) fn status_of(&self, p: Protocol) -> Option<&Status> {
        self.status.iter().find(|(q, _)| *q == p).map(|(_, s)| s)
    }
}
