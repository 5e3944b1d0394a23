//! [`PortMapper`]: one port mapping on the gateway, sans-IO, from the first
//! request to the deletion: PCP first, NAT-PMP when the gateway only
//! speaks that, UPnP IGD when neither maps; renewals before the lifetime
//! ends; the deletion on close.
//!
//! | module | what it does |
//! |---|---|
//! | this one | the state, the start, the driver's side (datagrams, timers, outputs) |
//! | `pcp_flow` | PCP MAP requests and answers (RFC 6887) |
//! | `natpmp_flow` | NAT-PMP's two requests and answers (RFC 6886) |
//! | `upnp_flow` | UPnP IGD: SSDP, the description, the SOAP actions over HTTP |
//! | `lifetime` | a mapping made, renewed, lost; the failure report |
//! | `closing` | the deletion |

mod closing;
mod lifetime;
mod natpmp_flow;
mod pcp_flow;
mod upnp_flow;

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_proto::transaction::{Action as TxAction, Transaction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::api::{Config, Event, Failure, HttpId, Mapping, Output, Protocol, Status, SERVER_PORT};
use super::http::{self, ResponseParser, Url};
use super::upnp::{self, Action as SoapAction, DescriptionError, ErrorCode, Service, SoapError};
use super::{natpmp, pcp, ssdp};

/// What an HTTP exchange is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Describe,
    Soap(SoapAction),
}

struct Exchange {
    id: HttpId,
    purpose: Purpose,
    parser: ResponseParser,
    deadline: Instant,
}

/// A UDP request on the retransmission timer.
struct Udp {
    tx: Transaction,
    payload: Vec<u8>,
}

/// Where a mapping stands once made, for renewals.
#[derive(Debug, Clone)]
struct Active {
    mapping: Mapping,
    /// When the gateway forgets it.
    expires: Option<Instant>,
    /// When to send the next renewal.
    renew_at: Option<Instant>,
}

/// Per-protocol state.
enum Pcp {
    Idle,
    Requesting(Udp),
    Mapped,
    /// Renewal sent (one datagram, RFC 6887 §11.2.1); waiting.
    Renewing,
    Deleting(Udp),
    /// Given up unanswered for UPnP: a late success is deleted at once.
    Abandoned,
    Done,
}

enum NatPmp {
    Idle,
    Requesting {
        ext: Udp,
        map: Udp,
        address: Option<std::net::Ipv4Addr>,
        port: Option<(u16, u32)>,
    },
    Mapped,
    Renewing,
    Deleting(Udp),
    Done,
}

enum Upnp {
    Idle,
    Discovering(Transaction),
    Describing,
    /// Discovered; mapping waits for PCP and NAT-PMP to fail.
    Ready(Vec<Service>),
    /// Asking the external address on `services[0]`.
    ExternalIp(Vec<Service>),
    /// Adding the mapping on `services[0]`.
    Adding {
        services: Vec<Service>,
        external_ip: IpAddr,
        port: u16,
        lease: u32,
        tries: u32,
    },
    /// Added; asking the device what lease it granted.
    Checking {
        service: Service,
        external_ip: IpAddr,
        port: u16,
        lease: u32,
    },
    Mapped {
        service: Service,
        port: u16,
        lease: u32,
        renewing: bool,
    },
    Deleting,
    Done,
}

/// One port mapping on the gateway, sans-IO; see the [module docs](super).
pub struct PortMapper {
    cfg: Config,
    rng: StdRng,
    now: Instant,
    nonce: [u8; 12],
    pcp: Pcp,
    natpmp: NatPmp,
    upnp: Upnp,
    status: Vec<(Protocol, Status)>,
    active: Option<Active>,
    /// Whether UPnP may map (PCP and NAT-PMP are out).
    upnp_go: bool,
    answered: bool,
    /// Whether anything answered on port 5351 (PCP or NAT-PMP).
    udp_answered: bool,
    /// When UPnP may map without waiting longer for a silent port 5351.
    patience_at: Instant,
    /// Where the UPnP description came from (relative control URLs).
    describe_url: Option<Url>,
    closing: bool,
    closed: bool,
    reported_failure: bool,
    /// A mapping was made (and may since be lost): nothing more to wait
    /// for.
    ever_mapped: bool,
    http: Vec<Exchange>,
    next_http: u64,
    out: VecDeque<Output>,
}

impl fmt::Debug for PortMapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortMapper")
            .field("gateway", &self.cfg.gateway)
            .field("internal", &self.cfg.internal)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The most UPnP AddPortMapping tries on port conflicts (718).
const UPNP_TRIES: u32 = 3;
/// How long port 5351 may stay silent before a discovered UPnP device maps
/// without waiting for PCP's last retransmission: a gateway one hop away
/// that speaks PCP or NAT-PMP answers within milliseconds, and the many
/// routers that only speak UPnP should not cost a session 3.75 s.
pub const UDP_PATIENCE: Duration = Duration::from_millis(500);
/// Renewals stop this close to expiry: the mapping is as good as gone.
const LAST_RENEWAL: Duration = Duration::from_secs(2);

impl PortMapper {
    /// Start mapping at `now`: the first requests are ready to poll.
    pub fn new(cfg: Config, now: Instant) -> PortMapper {
        let mut rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let nonce = rng.gen();
        let mut protocols: Vec<Protocol> = Vec::new();
        for p in &cfg.protocols {
            if !protocols.contains(p) {
                protocols.push(*p);
            }
        }
        let status = protocols.iter().map(|p| (*p, Status::Waiting)).collect();
        // Absurd durations would overflow `Instant` arithmetic (a panic).
        let day = Duration::from_secs(24 * 3600);
        let cfg = Config {
            http_timeout: cfg.http_timeout.min(day),
            lifetime: cfg.lifetime.min(Duration::from_secs(u32::MAX.into())),
            ..cfg
        };
        let mut m = PortMapper {
            cfg: Config { protocols, ..cfg },
            rng,
            now,
            nonce,
            pcp: Pcp::Idle,
            natpmp: NatPmp::Idle,
            upnp: Upnp::Idle,
            status,
            active: None,
            upnp_go: false,
            answered: false,
            udp_answered: false,
            patience_at: now + UDP_PATIENCE,
            describe_url: None,
            closing: false,
            closed: false,
            reported_failure: false,
            ever_mapped: false,
            http: Vec::new(),
            next_http: 0,
            out: VecDeque::new(),
        };
        m.start(now);
        m
    }

    fn wants(&self, p: Protocol) -> bool {
        self.cfg.protocols.contains(&p)
    }

    fn set(&mut self, p: Protocol, s: Status) {
        if let Some(e) = self.status.iter_mut().find(|(q, _)| *q == p) {
            e.1 = s;
        }
    }

    fn v4(&self) -> Option<std::net::Ipv4Addr> {
        match self.cfg.internal.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    fn start(&mut self, now: Instant) {
        let same_family = self.cfg.gateway.is_ipv4() == self.cfg.internal.is_ipv4();
        if !same_family {
            for p in self.cfg.protocols.clone() {
                self.set(
                    p,
                    Status::Failed(Failure::NotTried(
                        "the gateway is of another address family",
                    )),
                );
            }
            self.finish_if_failed();
            return;
        }
        if self.v4().is_none() {
            for p in [Protocol::NatPmp, Protocol::Upnp] {
                self.set(p, Status::Failed(Failure::NotTried("IPv4 only")));
            }
        }
        if self.wants(Protocol::Upnp) && self.v4().is_some() {
            self.set(Protocol::Upnp, Status::Trying);
            // Discovery runs at once, alongside PCP: only the mapping
            // waits for PCP and NAT-PMP to fail.
            match self.cfg.upnp_location.clone() {
                Some(url) => self.describe(url, now),
                None => {
                    self.upnp = Upnp::Discovering(Transaction::new(now, self.cfg.retransmit));
                    self.send_search();
                }
            }
        }
        if self.wants(Protocol::Pcp) {
            self.start_pcp(now);
        } else if self.wants(Protocol::NatPmp) && self.v4().is_some() {
            self.start_natpmp(now);
        } else {
            self.upnp_may_map(now);
        }
    }

    // --- the driver's side -------------------------------------------------

    /// Whether `from` is the gateway's PCP/NAT-PMP or SSDP port: such a
    /// datagram is the mapper's ([`PortMapper::handle_datagram`]).
    pub fn is_gateway(&self, from: SocketAddr) -> bool {
        from.ip() == self.cfg.gateway && matches!(from.port(), SERVER_PORT | ssdp::PORT)
    }

    /// A UDP datagram that arrived on the internal address's socket.
    /// Returns whether it was the gateway's (consumed).
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> bool {
        self.now = now;
        if !self.is_gateway(from) {
            return false;
        }
        if from.port() == ssdp::PORT {
            self.on_ssdp(data, now);
        } else if data.first() == Some(&natpmp::VERSION) && !matches!(self.pcp, Pcp::Requesting(_))
        {
            self.on_natpmp(data, now);
        } else {
            // PCP's answers, and a NAT-PMP server's "unsupported version"
            // to our PCP request (RFC 6887 §9).
            self.on_pcp(data, now);
        }
        true
    }

    /// When [`PortMapper::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut due: Vec<Option<Instant>> = Vec::new();
        match &self.pcp {
            Pcp::Requesting(u) | Pcp::Deleting(u) => due.push(u.tx.poll_timeout()),
            _ => {}
        }
        match &self.natpmp {
            NatPmp::Requesting { ext, map, .. } => {
                due.extend([ext.tx.poll_timeout(), map.tx.poll_timeout()]);
            }
            NatPmp::Deleting(u) => due.push(u.tx.poll_timeout()),
            _ => {}
        }
        if let Upnp::Discovering(tx) = &self.upnp {
            due.push(tx.poll_timeout());
        }
        if matches!(self.upnp, Upnp::Ready(_)) && matches!(self.pcp, Pcp::Requesting(_)) {
            due.push(Some(self.patience_at));
        }
        due.extend(self.http.iter().map(|e| Some(e.deadline)));
        if let (false, Some(a)) = (self.closing, &self.active) {
            due.extend([a.renew_at, a.expires]);
        }
        due.into_iter().flatten().min()
    }

    /// Time passed: retransmit, give up, renew, expire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if matches!(self.upnp, Upnp::Ready(_)) && self.udp_silent(now) {
            self.abandon_udp(now);
        }
        // PCP.
        let pcp_action = match &mut self.pcp {
            Pcp::Requesting(u) | Pcp::Deleting(u) => {
                Some((u.tx.handle_timeout(now), u.payload.clone()))
            }
            _ => None,
        };
        if let Some((a, payload)) = pcp_action {
            match a {
                TxAction::Retransmit => self.udp_send(payload),
                TxAction::Wait => {}
                TxAction::TimedOut { waited, sent } => {
                    if matches!(self.pcp, Pcp::Deleting(_)) {
                        self.pcp = Pcp::Done;
                        self.close_done();
                    } else {
                        self.pcp = Pcp::Done;
                        self.set(
                            Protocol::Pcp,
                            Status::Failed(Failure::NoAnswer { sent, waited }),
                        );
                        self.after_pcp(false, now);
                    }
                }
            }
        }
        // NAT-PMP.
        let mut natpmp_sends = Vec::new();
        let mut natpmp_timeout = None;
        match &mut self.natpmp {
            NatPmp::Requesting { ext, map, .. } => {
                for u in [ext, map] {
                    match u.tx.handle_timeout(now) {
                        TxAction::Retransmit => natpmp_sends.push(u.payload.clone()),
                        TxAction::TimedOut { waited, sent } => {
                            natpmp_timeout = Some((sent, waited))
                        }
                        TxAction::Wait => {}
                    }
                }
            }
            NatPmp::Deleting(u) => match u.tx.handle_timeout(now) {
                TxAction::Retransmit => natpmp_sends.push(u.payload.clone()),
                TxAction::TimedOut { sent, waited } => natpmp_timeout = Some((sent, waited)),
                TxAction::Wait => {}
            },
            _ => {}
        }
        for p in natpmp_sends {
            self.udp_send(p);
        }
        if let Some((sent, waited)) = natpmp_timeout {
            if matches!(self.natpmp, NatPmp::Deleting(_)) {
                self.natpmp = NatPmp::Done;
                self.close_done();
            } else {
                self.natpmp = NatPmp::Done;
                self.set(
                    Protocol::NatPmp,
                    Status::Failed(Failure::NoAnswer { sent, waited }),
                );
                self.upnp_may_map(now);
            }
        }
        // SSDP.
        if let Upnp::Discovering(tx) = &mut self.upnp {
            match tx.handle_timeout(now) {
                TxAction::Retransmit => self.send_search(),
                TxAction::Wait => {}
                TxAction::TimedOut { sent, waited } => {
                    self.upnp_failed(Failure::NoAnswer { sent, waited });
                }
            }
        }
        // HTTP exchanges past their time.
        let timeout = self.cfg.http_timeout;
        let mut i = 0;
        while i < self.http.len() {
            if self.http[i].deadline <= now {
                let e = self.http.remove(i);
                self.out.push_back(Output::CloseHttp(e.id));
                self.on_http_answer(e.purpose, Err(Failure::HttpTimeout(timeout)), now);
            } else {
                i += 1;
            }
        }
        // Renewals and expiry.
        if !self.closing {
            if let Some(a) = self.active.clone() {
                if a.expires.is_some_and(|e| e <= now) {
                    match a.mapping.protocol {
                        Protocol::Pcp => self.pcp = Pcp::Done,
                        Protocol::NatPmp => self.natpmp = NatPmp::Done,
                        Protocol::Upnp => self.upnp = Upnp::Done,
                    }
                    self.lost(Failure::Expired);
                } else if a.renew_at.is_some_and(|r| r <= now) {
                    self.renew(now);
                }
            }
        }
        self.finish_if_failed();
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // --- state -------------------------------------------------------------

    /// The mapping in force, if any.
    pub fn mapping(&self) -> Option<&Mapping> {
        self.active.as_ref().map(|a| &a.mapping)
    }

    /// Each protocol asked for and where it stands.
    pub fn status(&self) -> &[(Protocol, Status)] {
        &self.status
    }

    /// Whether the gateway has answered anything yet (a refusal counts):
    /// a session waits for a mapping only from a gateway that speaks.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// Whether mapping is over: mapped (even if lost since), or every
    /// protocol failed.
    pub fn settled(&self) -> bool {
        self.ever_mapped || self.reported_failure || self.closed
    }

    /// Whether [`PortMapper::close`] finished.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
