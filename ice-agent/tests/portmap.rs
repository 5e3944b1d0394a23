//! The port mapper ([`natkit_ice::portmap::PortMapper`]) against a
//! simulated gateway (`common/gateway.rs`) in simulated time: which
//! protocol maps, refusals (PCP NOT_AUTHORIZED, NAT-PMP result codes, UPnP
//! faults 606 and 718), silence (gives up within a bound), renewals before
//! the lifetime ends, deletion on close.

// The NAT models re-exported there are the other simulations'.
#[allow(unused_imports)]
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::gateway::{Answer, SimGateway};
use natkit_ice::portmap::{Config, Event, Failure, HttpId, Output, PortMapper, Protocol, Status};

const INTERNAL: &str = "10.0.0.2:40000";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

enum Ev {
    ToGateway {
        port: u16,
        data: Vec<u8>,
    },
    ToClient {
        from: SocketAddr,
        data: Vec<u8>,
    },
    HttpRequest {
        id: HttpId,
        from: IpAddr,
        data: Vec<u8>,
    },
    HttpData {
        id: HttpId,
        data: Vec<u8>,
    },
    HttpEnd {
        id: HttpId,
        result: Result<(), String>,
    },
}

/// One client and the gateway, 1 ms apart.
struct World {
    start: Instant,
    now: Instant,
    gw: SimGateway,
    m: PortMapper,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    delay: Duration,
    events: Vec<(Duration, Event)>,
    /// UDP datagrams the client sent: (time, destination, bytes).
    sent: Vec<(Duration, SocketAddr, Vec<u8>)>,
    closed_http: Vec<HttpId>,
}

impl World {
    fn new(gw: impl FnOnce(&mut SimGateway), cfg: impl FnOnce(&mut Config)) -> World {
        let start = Instant::now();
        let mut g = SimGateway::new("10.0.0.1", "203.0.113.7", start);
        gw(&mut g);
        let mut c = Config::new(g.lan, INTERNAL.parse().unwrap());
        c.seed = Some(7);
        cfg(&mut c);
        let mut w = World {
            start,
            now: start,
            gw: g,
            m: PortMapper::new(c, start),
            queue: BTreeMap::new(),
            seq: 0,
            delay: ms(1),
            events: Vec::new(),
            sent: Vec::new(),
            closed_http: Vec::new(),
        };
        w.pump();
        w
    }

    fn t(&self) -> Duration {
        self.now - self.start
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn pump(&mut self) {
        while let Some(o) = self.m.poll_output() {
            match o {
                Output::Transmit { to, payload } => {
                    self.sent.push((self.t(), to, payload.clone()));
                    // The multicast group reaches the gateway too.
                    if to.ip() == self.gw.lan || to.ip().is_multicast() {
                        self.at(
                            self.delay,
                            Ev::ToGateway {
                                port: to.port(),
                                data: payload,
                            },
                        );
                    }
                }
                Output::Http {
                    id,
                    from,
                    to,
                    request,
                } => {
                    assert_eq!(to.ip(), self.gw.lan, "HTTP to {to}, not the gateway");
                    // SYN, SYN-ACK, then the request.
                    self.at(
                        self.delay * 3,
                        Ev::HttpRequest {
                            id,
                            from,
                            data: request,
                        },
                    );
                }
                Output::CloseHttp(id) => self.closed_http.push(id),
                Output::Event(e) => {
                    let t = self.t();
                    self.events.push((t, e));
                }
            }
        }
    }

    fn step(&mut self) -> bool {
        let next_q = self.queue.keys().next().map(|k| k.0);
        let next_t = self.m.poll_timeout();
        let next = match (next_q, next_t) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(x) => x,
                None => return false,
            },
        };
        self.now = self.now.max(next);
        while let Some(e) = self.queue.first_entry() {
            if e.key().0 > self.now {
                break;
            }
            let ev = e.remove();
            self.handle(ev);
        }
        if self.m.poll_timeout().is_some_and(|t| t <= self.now) {
            self.m.handle_timeout(self.now);
        }
        self.pump();
        true
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::ToGateway { port, data } => {
                let from: SocketAddr = INTERNAL.parse().unwrap();
                for (p, answer) in self.gw.udp(from, port, &data, now) {
                    let from = SocketAddr::new(self.gw.lan, p);
                    self.at(self.delay, Ev::ToClient { from, data: answer });
                }
            }
            Ev::ToClient { from, data } => {
                assert!(self.m.handle_datagram(from, &data, now));
            }
            Ev::HttpRequest { id, from, data } => {
                if self.closed_http.contains(&id) {
                    return;
                }
                if let Some(resp) = self.gw.http(from, &data, now) {
                    // In two pieces, then the close.
                    let mid = resp.len() / 2;
                    self.at(
                        self.delay,
                        Ev::HttpData {
                            id,
                            data: resp[..mid].to_vec(),
                        },
                    );
                    self.at(
                        self.delay * 2,
                        Ev::HttpData {
                            id,
                            data: resp[mid..].to_vec(),
                        },
                    );
                    self.at(self.delay * 3, Ev::HttpEnd { id, result: Ok(()) });
                }
            }
            Ev::HttpData { id, data } => {
                if !self.closed_http.contains(&id) {
                    self.m.handle_http_data(id, &data, now);
                }
            }
            Ev::HttpEnd { id, result } => {
                if !self.closed_http.contains(&id) {
                    self.m.handle_http_end(id, result, now);
                }
            }
        }
    }

    /// Run until `stop` or `limit` of simulated time.
    fn run(&mut self, limit: Duration, mut stop: impl FnMut(&World) -> bool) -> bool {
        while self.t() < limit {
            if stop(self) {
                return true;
            }
            if !self.step() {
                return stop(self);
            }
        }
        stop(self)
    }

    fn mapped(&self) -> Option<(Duration, natkit_ice::portmap::Mapping)> {
        self.events.iter().find_map(|(t, e)| match e {
            Event::Mapped(m) => Some((*t, m.clone())),
            _ => None,
        })
    }

    fn failed(&self) -> Option<(Duration, Vec<(Protocol, Status)>)> {
        self.events.iter().find_map(|(t, e)| match e {
            Event::Failed(s) => Some((*t, s.clone())),
            _ => None,
        })
    }

    fn has(&self, f: impl Fn(&Event) -> bool) -> bool {
        self.events.iter().any(|(_, e)| f(e))
    }

    fn close(&mut self) {
        let now = self.now;
        self.m.close(now);
        self.pump();
    }
}

/// A gateway that only speaks UPnP.
fn silent_5351(g: &mut SimGateway) {
    g.pcp = Answer::Silent;
    g.natpmp = Answer::Silent;
}

fn status(s: &[(Protocol, Status)], p: Protocol) -> Status {
    s.iter().find(|(q, _)| *q == p).unwrap().1.clone()
}

#[test]
fn pcp_maps_first_and_upnp_is_only_discovered() {
    let mut w = World::new(|_| {}, |_| {});
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    let (t, m) = w.mapped().unwrap();
    assert_eq!(m.protocol, Protocol::Pcp);
    assert_eq!(m.external, "203.0.113.7:40000".parse().unwrap());
    assert_eq!(m.lifetime, Some(Duration::from_secs(7200)));
    assert!(t <= ms(2), "mapped after {t:?}");
    // Let the UPnP discovery run out: nothing is added there.
    w.run(ms(100), |_| false);
    assert_eq!(w.gw.mappings.len(), 1);
    assert_eq!(w.gw.mappings[0].by, "pcp");
    assert!(
        !w.gw.log.iter().any(|l| l.contains("AddPortMapping")),
        "{:?}",
        w.gw.log
    );
    assert!(w.m.answered() && w.m.settled());
}

#[test]
fn a_nat_pmp_only_gateway_maps_with_nat_pmp() {
    let mut w = World::new(|g| g.pcp = Answer::NatPmpOnly, |_| {});
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    let (t, m) = w.mapped().unwrap();
    assert_eq!((m.protocol, m.external.port()), (Protocol::NatPmp, 40000));
    // One round trip for PCP's "unsupported version", one for NAT-PMP.
    assert!(t <= ms(4), "mapped after {t:?}");
    assert_eq!(
        status(w.m.status(), Protocol::Pcp),
        Status::Failed(Failure::Unsupported)
    );
    assert_eq!(
        w.gw.log[..],
        [
            "ssdp search",
            "ssdp search",
            "pcp map 40000 lifetime 7200",
            "nat-pmp external address",
            "nat-pmp map 40000 lifetime 7200",
        ][..]
    );
}

#[test]
fn upnp_maps_when_port_5351_is_silent() {
    let mut w = World::new(silent_5351, |_| {});
    assert!(w.run(ms(2000), |w| w.mapped().is_some()));
    let (t, m) = w.mapped().unwrap();
    assert_eq!(m.protocol, Protocol::Upnp);
    assert_eq!(m.external, "203.0.113.7:40000".parse().unwrap());
    // Not PCP's whole 3.75 s: the patience, then two HTTP exchanges.
    assert!(t >= ms(500) && t < ms(600), "mapped after {t:?}");
    match status(w.m.status(), Protocol::Pcp) {
        Status::Failed(Failure::NoAnswer { sent: 2, .. }) => {}
        s => panic!("PCP: {s:?}"),
    }
    assert!(matches!(
        status(w.m.status(), Protocol::NatPmp),
        Status::Failed(Failure::NotTried(_))
    ));
    assert_eq!(w.gw.forward(40000, w.now), Some(INTERNAL.parse().unwrap()));
    // Every HTTP connection was closed once answered.
    assert!(w.closed_http.len() >= 3, "{:?}", w.closed_http);
}

#[test]
fn a_late_pcp_answer_after_upnp_took_over_is_deleted() {
    let mut w = World::new(silent_5351, |_| {});
    assert!(w.run(ms(2000), |w| w.mapped().is_some()));
    // PCP was asked twice, then given up for UPnP.
    let pcp: Vec<Vec<u8>> = w
        .sent
        .iter()
        .filter(|(_, to, _)| to.port() == 5351)
        .map(|(_, _, p)| p.clone())
        .collect();
    assert_eq!(pcp.len(), 2);
    // A slow gateway answers the last one now: a success with our nonce.
    let mut late = pcp[1].clone();
    late[1] |= 0x80;
    late[3] = 0;
    late[42..44].copy_from_slice(&40000u16.to_be_bytes());
    late[44..60].copy_from_slice(
        &"203.0.113.7"
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .to_ipv6_mapped()
            .octets(),
    );
    let now = w.now;
    assert!(w
        .m
        .handle_datagram("10.0.0.1:5351".parse().unwrap(), &late, now));
    w.pump();
    // What it made is deleted at once (lifetime 0, same nonce); the UPnP
    // mapping stays.
    let (_, to, del) = w.sent.last().unwrap().clone();
    assert_eq!(to.port(), 5351);
    assert_eq!((&del[4..8], &del[24..36]), (&[0u8; 4][..], &pcp[1][24..36]));
    assert_eq!(w.m.mapping().unwrap().protocol, Protocol::Upnp);
}

#[test]
fn pcp_not_authorized_skips_nat_pmp_and_falls_to_upnp() {
    let mut w = World::new(|g| g.pcp = Answer::Refuse, |_| {});
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    assert_eq!(w.mapped().unwrap().1.protocol, Protocol::Upnp);
    assert_eq!(
        status(w.m.status(), Protocol::Pcp),
        Status::Failed(Failure::Pcp(
            natkit_ice::portmap::pcp::ResultCode::NOT_AUTHORIZED
        ))
    );
    assert_eq!(
        status(w.m.status(), Protocol::NatPmp),
        Status::Failed(Failure::NotTried("the gateway speaks PCP"))
    );
}

#[test]
fn a_refusing_gateway_fails_fast_with_each_reason() {
    // miniupnpd with a deny rule: PCP NOT_AUTHORIZED, UPnP 606.
    let mut w = World::new(
        |g| {
            g.pcp = Answer::Refuse;
            g.upnp = Answer::Refuse;
        },
        |_| {},
    );
    assert!(w.run(ms(5000), |w| w.failed().is_some()));
    let (t, s) = w.failed().unwrap();
    assert!(t < ms(50), "failed after {t:?}");
    assert_eq!(
        status(&s, Protocol::Pcp).clone(),
        Status::Failed(Failure::Pcp(natkit_ice::portmap::pcp::ResultCode(2)))
    );
    match status(&s, Protocol::Upnp) {
        Status::Failed(f @ Failure::Soap { .. }) => {
            assert_eq!(
                f.to_string(),
                "AddPortMapping failed: UPnP error 606 (Action not authorized): error 606"
            );
        }
        s => panic!("UPnP: {s:?}"),
    }
    assert!(w.m.answered() && w.m.settled() && w.m.mapping().is_none());
    // Closing with nothing mapped is immediate.
    w.close();
    assert!(w.has(|e| *e == Event::Closed) && w.m.is_closed());
}

#[test]
fn nat_pmp_result_codes_are_reported() {
    for (code, words) in [
        (2u16, "not authorized/refused (result 2)"),
        (3, "network failure (result 3)"),
        (4, "out of resources (result 4)"),
    ] {
        let mut w = World::new(
            |g| g.natpmp = Answer::Fault(code),
            |c| c.protocols = vec![Protocol::NatPmp],
        );
        assert!(w.run(ms(1000), |w| w.failed().is_some()));
        let (t, s) = w.failed().unwrap();
        assert!(t <= ms(2), "{t:?}");
        let Status::Failed(Failure::NatPmp(c)) = status(&s, Protocol::NatPmp) else {
            panic!("{s:?}")
        };
        assert_eq!((c.0, c.to_string().as_str()), (code, words));
    }
}

#[test]
fn upnp_718_conflicts_move_to_another_port_and_725_to_a_permanent_lease() {
    let mut w = World::new(
        |g| {
            g.upnp_conflicts = 2;
            g.upnp_permanent_only = true;
        },
        |c| c.protocols = vec![Protocol::Upnp],
    );
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    let m = w.mapped().unwrap().1;
    assert_ne!(m.external.port(), 40000, "718 twice: another port");
    assert!(m.external.port() >= 49152);
    assert_eq!(m.lifetime, None, "725: a permanent lease");
    assert_eq!(w.gw.mappings[0].expires, None);
    // Permanent: no renewal ever, and the deletion on close.
    w.run(Duration::from_secs(10_000), |_| false);
    assert!(!w.has(|e| matches!(e, Event::Renewed(_) | Event::Lost { .. })));
    w.close();
    assert!(w.run(Duration::from_secs(10_100), |w| w.m.is_closed()));
    assert!(w.gw.mappings.is_empty());
}

#[test]
fn a_given_description_url_skips_ssdp() {
    let mut w = World::new(
        |_| {},
        |c| {
            c.protocols = vec![Protocol::Upnp];
            c.upnp_location = Some(
                natkit_ice::portmap::http::Url::parse("http://10.0.0.1:5000/rootDesc.xml").unwrap(),
            );
        },
    );
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    assert!(w.sent.is_empty(), "no SSDP: {:?}", w.sent);
    assert_eq!(w.gw.log[0], "upnp description");
}

#[test]
fn upnp_718_every_time_gives_up_after_three_tries() {
    let mut w = World::new(
        |g| g.upnp_conflicts = 10,
        |c| c.protocols = vec![Protocol::Upnp],
    );
    assert!(w.run(ms(1000), |w| w.failed().is_some()));
    let (_, s) = w.failed().unwrap();
    assert!(
        matches!(
            status(&s, Protocol::Upnp),
            Status::Failed(Failure::Soap { .. })
        ),
        "{s:?}"
    );
    assert_eq!(
        w.gw.log
            .iter()
            .filter(|l| *l == "upnp AddPortMapping")
            .count(),
        3
    );
}

#[test]
fn silence_everywhere_gives_up_within_the_retransmission_budget() {
    let mut w = World::new(
        |g| {
            g.pcp = Answer::Silent;
            g.natpmp = Answer::Silent;
            g.upnp = Answer::Silent;
        },
        |_| {},
    );
    assert!(w.run(Duration::from_secs(60), |w| w.failed().is_some()));
    let (t, s) = w.failed().unwrap();
    // 250 ms doubling, 4 sends: 0, 0.25, 0.75, 1.75 s, given up at 3.75 s.
    assert_eq!(t, ms(3750));
    assert!(!w.m.answered());
    let Status::Failed(Failure::NoAnswer { sent, waited }) = status(&s, Protocol::Pcp) else {
        panic!("{s:?}")
    };
    assert_eq!((sent, waited), (4, ms(3750)));
    let pcp_sends: Vec<Duration> = w
        .sent
        .iter()
        .filter(|(_, to, _)| to.port() == 5351)
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(pcp_sends, [ms(0), ms(250), ms(750), ms(1750)]);
    // SSDP: unicast to the gateway and multicast, on the same schedule.
    assert_eq!(
        w.sent.iter().filter(|(_, to, _)| to.port() == 1900).count(),
        8
    );
    assert!(matches!(
        status(&s, Protocol::Upnp),
        Status::Failed(Failure::NoAnswer { .. })
    ));
    // Nothing more afterwards.
    assert_eq!(w.m.poll_timeout(), None);
}

#[test]
fn a_silent_upnp_device_after_discovery_times_out() {
    // Answers SSDP, never HTTP.
    let mut w = World::new(
        |_| {},
        |c| {
            c.protocols = vec![Protocol::Upnp];
            c.http_timeout = ms(300);
        },
    );
    w.gw.upnp = Answer::Map;
    // Discovery succeeds, then the device goes quiet.
    assert!(w.run(ms(2), |w| w.gw.log.iter().any(|l| l == "ssdp search")));
    w.gw.upnp = Answer::Silent;
    assert!(w.run(ms(2000), |w| w.failed().is_some()));
    let (t, s) = w.failed().unwrap();
    assert!(t <= ms(310), "{t:?}");
    assert_eq!(
        status(&s, Protocol::Upnp),
        Status::Failed(Failure::HttpTimeout(ms(300)))
    );
}

#[test]
fn mappings_are_renewed_before_they_expire() {
    for proto in [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp] {
        let mut w = World::new(|g| g.max_lifetime = 120, |c| c.protocols = vec![proto]);
        assert!(w.run(ms(500), |w| w.mapped().is_some()), "{proto}");
        let (t0, m) = w.mapped().unwrap();
        // UPnP learns the lease left (GetSpecificPortMappingEntry), in
        // whole seconds, a few milliseconds after the grant.
        let l = m.lifetime.unwrap().as_secs();
        assert!((119..=120).contains(&l), "{proto}: lifetime {l}");
        // An hour: about 60 renewals, the mapping never lapses.
        let mut lapsed = None;
        let end = Duration::from_secs(3600);
        while w.t() < end && w.step() {
            if w.gw.forward(m.external.port(), w.now).is_none() {
                lapsed = Some(w.t());
                break;
            }
        }
        assert_eq!(lapsed, None, "{proto}: the mapping lapsed");
        let renewals: Vec<Duration> = w
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Renewed(_)))
            .map(|(t, _)| *t)
            .collect();
        assert!(renewals.len() >= 50, "{proto}: {} renewals", renewals.len());
        // RFC 6887 §11.2.1: between 1/2 and 5/8 of the lifetime.
        let first = renewals[0] - t0;
        assert!(
            first >= Duration::from_secs(60) && first <= Duration::from_secs(76),
            "{proto}: first renewal after {first:?}"
        );
    }
}

#[test]
fn unanswered_renewals_end_in_a_lost_mapping_at_expiry() {
    let mut w = World::new(
        |g| g.max_lifetime = 120,
        |c| c.protocols = vec![Protocol::Pcp],
    );
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    let t0 = w.mapped().unwrap().0;
    w.gw.pcp = Answer::Silent;
    assert!(w.run(Duration::from_secs(200), |w| w
        .has(|e| matches!(e, Event::Lost { .. }))));
    let (t, failure) = w
        .events
        .iter()
        .find_map(|(t, e)| match e {
            Event::Lost { failure, .. } => Some((*t, failure.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(failure, Failure::Expired);
    assert_eq!(t - t0, Duration::from_secs(120));
    // Several single renewals were tried, each later than the last.
    let renewals = w.gw.log.iter().filter(|l| l.starts_with("pcp map")).count();
    assert!(renewals >= 4, "{renewals}: {:?}", w.gw.log);
}

#[test]
fn a_refused_renewal_loses_the_mapping() {
    let mut w = World::new(
        |g| g.max_lifetime = 120,
        |c| c.protocols = vec![Protocol::NatPmp],
    );
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    w.gw.natpmp = Answer::Refuse;
    assert!(w.run(Duration::from_secs(200), |w| w
        .has(|e| matches!(e, Event::Lost { .. }))));
    assert!(w.has(|e| matches!(
        e,
        Event::Lost { failure: Failure::NatPmp(c), .. } if c.0 == 2
    )));
}

#[test]
fn close_deletes_the_mapping_with_each_protocol() {
    for proto in [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp] {
        let mut w = World::new(|_| {}, |c| c.protocols = vec![proto]);
        assert!(w.run(ms(500), |w| w.mapped().is_some()), "{proto}");
        assert_eq!(w.gw.mappings.len(), 1);
        w.close();
        assert!(w.run(ms(1000), |w| w.m.is_closed()), "{proto}");
        assert!(w.gw.mappings.is_empty(), "{proto}: {:?}", w.gw.mappings);
        assert!(w.t() < ms(600), "{proto}: closed after {:?}", w.t());
        let last = w.gw.log.last().unwrap().clone();
        let want = match proto {
            Protocol::Pcp => "pcp map 40000 lifetime 0",
            Protocol::NatPmp => "nat-pmp map 40000 lifetime 0",
            Protocol::Upnp => "upnp DeletePortMapping",
        };
        assert_eq!(last, want, "{proto}");
        assert_eq!(w.m.poll_timeout(), None);
    }
}

#[test]
fn close_while_the_request_is_in_flight_deletes_what_it_made() {
    let mut w = World::new(|_| {}, |c| c.protocols = vec![Protocol::Pcp]);
    // The request is on its way; close before the answer. Nothing
    // answered yet: one deletion goes out, and the mapper is closed at
    // once (no wait for a gateway that may not exist).
    w.close();
    assert!(w.m.is_closed() && w.has(|e| *e == Event::Closed));
    w.run(ms(1000), |_| false);
    assert!(w.gw.mappings.is_empty(), "{:?}", w.gw.mappings);
    assert_eq!(
        w.gw.log,
        ["pcp map 40000 lifetime 7200", "pcp map 40000 lifetime 0"]
    );
}

#[test]
fn close_after_an_answer_waits_for_the_deletion_of_what_is_in_flight() {
    // NAT-PMP only: PCP's "unsupported version" is an answer on 5351, so
    // the NAT-PMP request in flight is deleted and confirmed.
    let mut w = World::new(|g| g.pcp = Answer::NatPmpOnly, |_| {});
    assert!(w.run(ms(3), |w| w
        .gw
        .log
        .iter()
        .any(|l| l.starts_with("nat-pmp map"))));
    assert!(w.mapped().is_none(), "{:?}", w.events);
    w.close();
    assert!(!w.m.is_closed());
    assert!(w.run(ms(1000), |w| w.m.is_closed()));
    assert!(w.gw.mappings.is_empty(), "{:?}", w.gw.mappings);
}

#[test]
fn a_silent_gateway_does_not_hold_close() {
    let mut w = World::new(
        |g| g.max_lifetime = 120,
        |c| c.protocols = vec![Protocol::Pcp],
    );
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
    w.gw.pcp = Answer::Silent;
    w.close();
    assert!(w.run(ms(5000), |w| w.m.is_closed()));
    // Three sends, 1.75 s.
    assert!(w.t() <= ms(1760), "{:?}", w.t());
}

#[test]
fn a_loopback_address_never_searches_the_multicast_group() {
    let mut c = Config::new(
        "127.83.51.1".parse().unwrap(),
        "127.0.0.1:40000".parse().unwrap(),
    );
    c.protocols = vec![Protocol::Upnp];
    let mut m = PortMapper::new(c, Instant::now());
    let mut to = Vec::new();
    while let Some(o) = m.poll_output() {
        if let Output::Transmit { to: t, .. } = o {
            to.push(t);
        }
    }
    assert_eq!(to, ["127.83.51.1:1900".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn answers_from_elsewhere_are_not_the_mappers() {
    let mut w = World::new(|_| {}, |_| {});
    let now = w.now;
    // Another host's 5351, the gateway's other ports.
    assert!(!w
        .m
        .handle_datagram("10.0.0.9:5351".parse().unwrap(), &[2; 60], now));
    assert!(!w
        .m
        .handle_datagram("10.0.0.1:3478".parse().unwrap(), &[0, 1], now));
    // Junk from the gateway's ports is consumed and ignored.
    assert!(w
        .m
        .handle_datagram("10.0.0.1:5351".parse().unwrap(), b"junk", now));
    assert!(w
        .m
        .handle_datagram("10.0.0.1:1900".parse().unwrap(), b"\xff", now));
    assert!(w.run(ms(500), |w| w.mapped().is_some()));
}

#[test]
fn ipv6_uses_pcp_only_and_a_family_mismatch_tries_nothing() {
    let mut c = Config::new(
        "fe80::1".parse().unwrap(),
        "[2001:db8::2]:40000".parse().unwrap(),
    );
    c.seed = Some(1);
    let start = Instant::now();
    let mut m = PortMapper::new(c, start);
    let mut sends = Vec::new();
    while let Some(o) = m.poll_output() {
        if let Output::Transmit { to, .. } = o {
            sends.push(to);
        }
    }
    assert_eq!(sends, ["[fe80::1]:5351".parse::<SocketAddr>().unwrap()]);
    assert_eq!(
        m.status()[1],
        (
            Protocol::NatPmp,
            Status::Failed(Failure::NotTried("IPv4 only"))
        )
    );

    let c = Config::new("fe80::1".parse().unwrap(), INTERNAL.parse().unwrap());
    let mut m = PortMapper::new(c, start);
    let mut failed = false;
    while let Some(o) = m.poll_output() {
        assert!(!matches!(o, Output::Transmit { .. }));
        failed |= matches!(o, Output::Event(Event::Failed(_)));
    }
    assert!(failed && m.settled());
}

proptest::proptest! {
    /// Whatever the gateway's ports and its HTTP connection send, the
    /// mapper neither panics nor stops keeping time.
    #[test]
    fn junk_from_the_gateway_never_panics(
        udp in proptest::collection::vec(
            (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
            0..8,
        ),
        http in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        close_http in proptest::bool::ANY,
    ) {
        let start = Instant::now();
        let mut c = Config::new("10.0.0.1".parse().unwrap(), INTERNAL.parse().unwrap());
        c.seed = Some(3);
        c.upnp_location = Some(
            natkit_ice::portmap::http::Url::parse("http://10.0.0.1:5000/d.xml").unwrap(),
        );
        let mut m = PortMapper::new(c, start);
        let mut ids = Vec::new();
        while let Some(o) = m.poll_output() {
            if let Output::Http { id, .. } = o {
                ids.push(id);
            }
        }
        for (ssdp, d) in &udp {
            let port = if *ssdp { 1900 } else { 5351 };
            let from = SocketAddr::new("10.0.0.1".parse().unwrap(), port);
            proptest::prop_assert!(m.handle_datagram(from, d, start + ms(1)));
        }
        for id in ids {
            m.handle_http_data(id, &http, start + ms(2));
            if close_http {
                m.handle_http_end(id, Ok(()), start + ms(3));
            }
        }
        let mut now = start;
        for _ in 0..200 {
            while m.poll_output().is_some() {}
            let Some(t) = m.poll_timeout() else { break };
            proptest::prop_assert!(t >= now);
            now = t;
            m.handle_timeout(now);
        }
    }
}
