//! UPnP IGD: SSDP discovery, the device description, then
//! GetExternalIPAddress, AddPortMapping and GetSpecificPortMappingEntry
//! over HTTP; renewals are AddPortMapping again.

// The mapper's state, types and imports (this file is part of its impl).
use super::*;

impl PortMapper {
    pub(super) fn send_search(&mut self) {
        let gw = SocketAddr::new(self.cfg.gateway, ssdp::PORT);
        self.out.push_back(Output::Transmit {
            to: gw,
            payload: ssdp::search_request(gw),
        });
        // The multicast group only from a LAN address: from a loopback one
        // (a test's gateway on loopback) the search would leave by the
        // default route's interface, onto a real network.
        if !self.cfg.internal.ip().is_loopback() {
            self.out.push_back(Output::Transmit {
                to: ssdp::MULTICAST_V4,
                payload: ssdp::search_request(ssdp::MULTICAST_V4),
            });
        }
    }

    pub(super) fn on_ssdp(&mut self, data: &[u8], now: Instant) {
        if !matches!(self.upnp, Upnp::Discovering(_)) {
            return;
        }
        let Some(loc) = ssdp::location(data) else {
            return;
        };
        self.answered = true;
        match Url::parse(&loc) {
            Ok(url) => self.describe(url, now),
            Err(e) => self.upnp_failed(Failure::Location(e)),
        }
    }

    pub(super) fn describe(&mut self, url: Url, now: Instant) {
        self.upnp = Upnp::Describing;
        self.http_start(Purpose::Describe, url.addr, http::get(&url), now);
        // Where the description came from, for relative control URLs.
        self.describe_url = Some(url);
    }

    /// Whether port 5351 has been silent past [`UDP_PATIENCE`].
    pub(super) fn udp_silent(&self, now: Instant) -> bool {
        !self.udp_answered && now >= self.patience_at
    }

    /// PCP went unanswered past [`UDP_PATIENCE`] and UPnP is ready: stop
    /// waiting for it.
    pub(super) fn abandon_udp(&mut self, now: Instant) {
        if let Pcp::Requesting(u) = &self.pcp {
            let f = Failure::NoAnswer {
                sent: u.tx.sent(),
                waited: now.saturating_duration_since(u.tx.first_sent()),
            };
            self.pcp = Pcp::Abandoned;
            self.set(Protocol::Pcp, Status::Failed(f));
            self.after_pcp(false, now);
        }
    }

    pub(super) fn upnp_failed(&mut self, f: Failure) {
        self.upnp = Upnp::Done;
        self.set(Protocol::Upnp, Status::Failed(f));
        self.finish_if_failed();
    }

    /// PCP and NAT-PMP are out: UPnP may map (now, or once discovered).
    pub(super) fn upnp_may_map(&mut self, now: Instant) {
        self.upnp_go = true;
        if matches!(self.upnp, Upnp::Ready(_)) {
            if let Upnp::Ready(services) = std::mem::replace(&mut self.upnp, Upnp::Done) {
                self.upnp_external_ip(services, now);
            }
        }
        self.finish_if_failed();
    }

    pub(super) fn upnp_external_ip(&mut self, services: Vec<Service>, now: Instant) {
        let Some(s) = services.first() else {
            return self.upnp_failed(Failure::Description(DescriptionError::NoWanService));
        };
        let req = upnp::request(s, SoapAction::GetExternalIpAddress);
        let to = s.control.addr;
        self.upnp = Upnp::ExternalIp(services);
        self.http_start(
            Purpose::Soap(SoapAction::GetExternalIpAddress),
            to,
            req,
            now,
        );
    }

    pub(super) fn upnp_add(
        &mut self,
        services: Vec<Service>,
        external_ip: IpAddr,
        port: u16,
        lease: u32,
        tries: u32,
        now: Instant,
    ) {
        let Some(client) = self.v4() else { return };
        let action = SoapAction::AddPortMapping {
            external_port: port,
            internal_port: self.cfg.internal.port(),
            internal_client: client,
            lease,
        };
        let req = upnp::request(&services[0], action);
        let to = services[0].control.addr;
        self.upnp = Upnp::Adding {
            services,
            external_ip,
            port,
            lease,
            tries,
        };
        self.http_start(Purpose::Soap(action), to, req, now);
    }

    pub(super) fn on_http_answer(
        &mut self,
        purpose: Purpose,
        answer: Result<http::Response, Failure>,
        now: Instant,
    ) {
        let upnp = std::mem::replace(&mut self.upnp, Upnp::Done);
        match (purpose, upnp) {
            (Purpose::Describe, Upnp::Describing) => {
                let loc = self.describe_url.clone();
                let r = answer.and_then(|resp| {
                    if resp.status != 200 {
                        return Err(Failure::Soap {
                            action: "GET description",
                            error: SoapError::Http(resp.status),
                        });
                    }
                    let text = String::from_utf8_lossy(&resp.body);
                    let loc = loc.ok_or_else(|| Failure::BadAnswer("no location".into()))?;
                    upnp::wan_services(&text, &loc).map_err(Failure::Description)
                });
                match r {
                    Ok(services) => {
                        self.answered = true;
                        if !self.upnp_go && self.udp_silent(now) {
                            self.abandon_udp(now);
                        }
                        if self.upnp_go {
                            self.upnp_external_ip(services, now);
                        } else {
                            self.upnp = Upnp::Ready(services);
                        }
                    }
                    Err(f) => self.upnp_failed(f),
                }
            }
            (
                Purpose::Soap(action @ SoapAction::GetExternalIpAddress),
                Upnp::ExternalIp(mut services),
            ) => {
                let r = soap(answer, action).and_then(|args| {
                    upnp::external_ip(&args).map_err(|error| Failure::Soap {
                        action: action.name(),
                        error,
                    })
                });
                match r {
                    Ok(ip) => {
                        let port = self.cfg.internal.port();
                        let lease = secs_u32(self.cfg.lifetime);
                        self.upnp_add(services, ip, port, lease, 1, now);
                    }
                    // The next WAN connection service, if any.
                    Err(f) if services.len() > 1 => {
                        tracing::debug!(failure = %f, "UPnP WAN service unusable; trying the next");
                        services.remove(0);
                        self.upnp_external_ip(services, now);
                    }
                    Err(f) => self.upnp_failed(f),
                }
            }
            (
                Purpose::Soap(action @ SoapAction::AddPortMapping { .. }),
                Upnp::Adding {
                    services,
                    external_ip,
                    port,
                    lease,
                    tries,
                },
            ) => {
                let r = soap(answer, action);
                match r {
                    Ok(_) => {
                        // IGD:1 grants the lease silently, maybe shorter
                        // than asked: ask what it holds.
                        let service = services[0].clone();
                        let check = SoapAction::GetSpecificPortMappingEntry {
                            external_port: port,
                        };
                        let (req, to) = (upnp::request(&service, check), service.control.addr);
                        self.upnp = Upnp::Checking {
                            service,
                            external_ip,
                            port,
                            lease,
                        };
                        self.http_start(Purpose::Soap(check), to, req, now);
                    }
                    Err(Failure::Soap {
                        error: SoapError::Fault { code, .. },
                        ..
                    }) if code == ErrorCode::CONFLICT && tries < UPNP_TRIES => {
                        // Another host has that external port: another one
                        // at random from the dynamic range (RFC 6335 §6).
                        let p = self.rng.gen_range(49152..=65535);
                        self.upnp_add(services, external_ip, p, lease, tries + 1, now);
                    }
                    Err(Failure::Soap {
                        error: SoapError::Fault { code, .. },
                        ..
                    }) if code == ErrorCode::ONLY_PERMANENT_LEASES && lease != 0 => {
                        // Permanent then; deleted on close all the same.
                        self.upnp_add(services, external_ip, port, 0, tries, now);
                    }
                    Err(f) => self.upnp_failed(f),
                }
            }
            (
                Purpose::Soap(action @ SoapAction::GetSpecificPortMappingEntry { .. }),
                Upnp::Checking {
                    service,
                    external_ip,
                    port,
                    lease,
                },
            ) => {
                // A device that cannot say keeps the lease asked for.
                let held = answer
                    .ok()
                    .and_then(|resp| upnp::answer(&resp, action).ok())
                    .and_then(|args| upnp::lease(&args));
                let lease = match held {
                    Some(h) if h > 0 && (lease == 0 || h < lease) => h,
                    _ => lease,
                };
                let external = SocketAddr::new(external_ip, port);
                if let Err(f) = self.check_external(external) {
                    return self.upnp_failed(f);
                }
                self.upnp = Upnp::Mapped {
                    service,
                    port,
                    lease,
                    renewing: false,
                };
                self.mapped(
                    Mapping {
                        protocol: Protocol::Upnp,
                        external,
                        internal: self.cfg.internal,
                        gateway: self.cfg.gateway,
                        lifetime: (lease > 0).then(|| Duration::from_secs(lease.into())),
                    },
                    now,
                );
            }
            (
                Purpose::Soap(action @ SoapAction::AddPortMapping { .. }),
                Upnp::Mapped {
                    service,
                    port,
                    lease,
                    ..
                },
            ) => {
                let r = soap(answer, action);
                self.upnp = Upnp::Mapped {
                    service,
                    port,
                    lease,
                    renewing: false,
                };
                match r {
                    Ok(_) => {
                        if let Some(a) = &self.active {
                            let m = a.mapping.clone();
                            self.renewed(m, now);
                        }
                    }
                    // The device refused: the mapping is as good as gone.
                    Err(f @ Failure::Soap { .. }) => {
                        self.upnp = Upnp::Done;
                        self.lost(f);
                    }
                    // Silence or a broken connection: try again later.
                    Err(f) => {
                        tracing::debug!(failure = %f, "UPnP renewal failed; trying again");
                        self.schedule_retry(now);
                    }
                }
            }
            (Purpose::Soap(SoapAction::DeletePortMapping { .. }), Upnp::Deleting) => {
                if let Err(f) = answer {
                    tracing::debug!(failure = %f, "UPnP deletion not confirmed");
                }
                self.close_done();
            }
            (_, other) => self.upnp = other,
        }
    }

    pub(super) fn http_start(
        &mut self,
        purpose: Purpose,
        to: SocketAddr,
        request: Vec<u8>,
        now: Instant,
    ) {
        let id = HttpId(self.next_http);
        self.next_http += 1;
        self.http.push(Exchange {
            id,
            purpose,
            parser: ResponseParser::new(),
            deadline: now + self.cfg.http_timeout,
        });
        self.out.push_back(Output::Http {
            id,
            from: self.cfg.internal.ip(),
            to,
            request,
        });
    }

    /// Bytes from the connection of exchange `id`.
    pub fn handle_http_data(&mut self, id: HttpId, data: &[u8], now: Instant) {
        self.now = now;
        let Some(i) = self.http.iter().position(|e| e.id == id) else {
            return;
        };
        match self.http[i].parser.push(data) {
            Ok(None) => {}
            Ok(Some(resp)) => {
                let e = self.http.remove(i);
                self.out.push_back(Output::CloseHttp(id));
                self.on_http_answer(e.purpose, Ok(resp), now);
            }
            Err(err) => {
                let e = self.http.remove(i);
                self.out.push_back(Output::CloseHttp(id));
                self.on_http_answer(e.purpose, Err(Failure::Http(err)), now);
            }
        }
    }

    /// The connection of exchange `id` ended: `Ok` when the device closed
    /// it, `Err` with the reason when it could not be made or broke.
    pub fn handle_http_end(&mut self, id: HttpId, result: Result<(), String>, now: Instant) {
        self.now = now;
        let Some(i) = self.http.iter().position(|e| e.id == id) else {
            return;
        };
        let mut e = self.http.remove(i);
        let answer = match result {
            Ok(()) => e.parser.finish().map_err(Failure::Http),
            Err(why) => Err(Failure::Connection(why)),
        };
        self.on_http_answer(e.purpose, answer, now);
    }
}

/// The output arguments of a SOAP action's HTTP answer, or why it failed.
fn soap(
    answer: Result<http::Response, Failure>,
    action: SoapAction,
) -> Result<Vec<(String, String)>, Failure> {
    answer.and_then(|resp| {
        upnp::answer(&resp, action).map_err(|error| Failure::Soap {
            action: action.name(),
            error,
        })
    })
}
