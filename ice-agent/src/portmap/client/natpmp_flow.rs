//! NAT-PMP (RFC 6886): the external address and the mapping, asked
//! together, and their answers.

// The mapper's state, types and imports (this file is part of its impl).
use super::*;

impl PortMapper {
    pub(super) fn start_natpmp(&mut self, now: Instant) {
        self.set(Protocol::NatPmp, Status::Trying);
        let ext = natpmp::external_address_request().to_vec();
        let map = natpmp::map_request(
            self.cfg.internal.port(),
            self.cfg.internal.port(),
            secs_u32(self.cfg.lifetime),
        )
        .to_vec();
        self.udp_send(ext.clone());
        self.udp_send(map.clone());
        self.natpmp = NatPmp::Requesting {
            ext: Udp {
                tx: Transaction::new(now, self.cfg.retransmit),
                payload: ext,
            },
            map: Udp {
                tx: Transaction::new(now, self.cfg.retransmit),
                payload: map,
            },
            address: None,
            port: None,
        };
    }

    pub(super) fn on_natpmp(&mut self, data: &[u8], now: Instant) {
        let r = match natpmp::parse(data) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "datagram from the NAT-PMP port ignored");
                return;
            }
        };
        let internal_port = self.cfg.internal.port();
        let (result, failure) = match r {
            natpmp::Response::Map {
                internal_port: p, ..
            } if p != internal_port => return,
            natpmp::Response::ExternalAddress { result, .. }
            | natpmp::Response::Map { result, .. }
            | natpmp::Response::Error { result, .. } => (
                result,
                if result.0 == 1 {
                    Failure::Unsupported
                } else {
                    Failure::NatPmp(result)
                },
            ),
        };
        self.answered = true;
        self.udp_answered = true;
        match &mut self.natpmp {
            NatPmp::Requesting {
                ext,
                map,
                address,
                port,
            } => {
                if result != natpmp::ResultCode::SUCCESS {
                    self.natpmp = NatPmp::Done;
                    self.set(Protocol::NatPmp, Status::Failed(failure));
                    self.upnp_may_map(now);
                    return;
                }
                match r {
                    natpmp::Response::ExternalAddress { address: a, .. } => {
                        ext.tx.on_response(now);
                        *address = Some(a);
                    }
                    natpmp::Response::Map {
                        external_port,
                        lifetime,
                        ..
                    } => {
                        map.tx.on_response(now);
                        *port = Some((external_port, lifetime));
                    }
                    natpmp::Response::Error { .. } => {}
                }
                if let (Some(a), Some((p, l))) = (*address, *port) {
                    let external = SocketAddr::from((a, p));
                    let r = if l == 0 {
                        Err(Failure::BadAnswer("lifetime 0".into()))
                    } else {
                        self.check_external(external)
                    };
                    match r {
                        Ok(()) => {
                            self.natpmp = NatPmp::Mapped;
                            let mapping = Mapping {
                                protocol: Protocol::NatPmp,
                                external,
                                internal: self.cfg.internal,
                                gateway: self.cfg.gateway,
                                lifetime: Some(Duration::from_secs(l.into())),
                            };
                            self.mapped(mapping, now);
                        }
                        Err(f) => {
                            self.natpmp = NatPmp::Done;
                            self.set(Protocol::NatPmp, Status::Failed(f));
                            self.upnp_may_map(now);
                        }
                    }
                }
            }
            NatPmp::Renewing | NatPmp::Mapped => {
                let natpmp::Response::Map {
                    external_port,
                    lifetime,
                    ..
                } = r
                else {
                    return;
                };
                if result != natpmp::ResultCode::SUCCESS || lifetime == 0 {
                    self.natpmp = NatPmp::Done;
                    return self.lost(failure);
                }
                let Some(a) = &self.active else { return };
                let mut mapping = a.mapping.clone();
                mapping.external.set_port(external_port);
                mapping.lifetime = Some(Duration::from_secs(lifetime.into()));
                self.natpmp = NatPmp::Mapped;
                self.renewed(mapping, now);
            }
            NatPmp::Deleting(_) => {
                let deletion = match r {
                    natpmp::Response::Map { lifetime, .. } => lifetime == 0 || result.0 != 0,
                    natpmp::Response::Error { .. } => true,
                    natpmp::Response::ExternalAddress { .. } => false,
                };
                if deletion {
                    self.natpmp = NatPmp::Done;
                    self.close_done();
                }
            }
            NatPmp::Idle | NatPmp::Done => {}
        }
    }
}
