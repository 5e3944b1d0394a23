//! [`PortMapper`]: one port mapping on the gateway, sans-IO, from the first
//! request to the deletion: PCP first, NAT-PMP when the gateway only
//! speaks that, UPnP IGD when neither maps; renewals before the lifetime
//! ends; the deletion on close.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use natkit_proto::transaction::{self, Action as TxAction, Transaction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::http::{self, HttpError, ResponseParser, Url, UrlError};
use super::upnp::{self, Action as SoapAction, DescriptionError, ErrorCode, Service, SoapError};
use super::{natpmp, pcp, ssdp};

/// The NAT-PMP and PCP server port (RFC 6886 §3.1, RFC 6887 §19.1).
pub const SERVER_PORT: u16 = 5351;

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887), MAP opcode.
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device, WANIPConnection's AddPortMapping.
    Upnp,
}

impl Protocol {
    /// All three, in the order natkit tries them.
    pub const ALL: [Protocol; 3] = [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp];

    /// Its usual name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP IGD",
        }
    }

    /// A short machine-readable name: `pcp`, `nat-pmp`, `upnp`.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::Upnp => "upnp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a [`PortMapper`] does.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway: the default route's next hop
    /// ([`super::gateway`]), or one given explicitly.
    pub gateway: IpAddr,
    /// The local address and port to map: the socket the driver sends the
    /// UDP requests from (PCP and NAT-PMP map the requester's address).
    pub internal: SocketAddr,
    /// The protocols to try, in this order of preference (default: all,
    /// PCP first). NAT-PMP and UPnP are IPv4 only.
    pub protocols: Vec<Protocol>,
    /// The lifetime asked for. RFC 6886 §3.3 recommends 7200 s; the
    /// mapping is renewed at half of what the gateway grants and deleted
    /// on close, so a crashed process leaves it for at most this long.
    pub lifetime: Duration,
    /// Retransmissions of PCP, NAT-PMP and SSDP requests. RFC 6886 §3.1
    /// starts at 250 ms and doubles; natkit sends 4 times (0, 0.25, 0.75,
    /// 1.75 s) and gives up at 3.75 s, instead of NAT-PMP's 9 sends over
    /// 64 s: the gateway is one hop away, and a session must not wait on
    /// a gateway that does not answer. (RFC 6887 §8.1.1's 3 s initial
    /// timeout for PCP is meant for servers beyond the first hop too.)
    pub retransmit: transaction::Config,
    /// The most one HTTP exchange with a UPnP device may take.
    pub http_timeout: Duration,
    /// The UPnP device description URL, to skip SSDP discovery.
    pub upnp_location: Option<Url>,
    /// Seed for the PCP nonce, the renewal jitter and UPnP's fallback
    /// ports; `None` seeds from the operating system (tests set it).
    pub seed: Option<u64>,
}

impl Config {
    /// Map `internal` on `gateway` with the defaults.
    pub fn new(gateway: IpAddr, internal: SocketAddr) -> Config {
        Config {
            gateway,
            internal,
            protocols: Protocol::ALL.to_vec(),
            lifetime: Duration::from_secs(7200),
            retransmit: transaction::Config {
                rto: Duration::from_millis(250),
                rc: 4,
                rm: 8,
            },
            http_timeout: Duration::from_secs(2),
            upnp_location: None,
            seed: None,
        }
    }
}

/// A mapping the gateway made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// How it was made.
    pub protocol: Protocol,
    /// The address the internet reaches us at.
    pub external: SocketAddr,
    /// The local address it forwards to.
    pub internal: SocketAddr,
    /// The gateway that made it.
    pub gateway: IpAddr,
    /// What the gateway granted; `None`: until deleted (a UPnP device that
    /// only supports permanent leases).
    pub lifetime: Option<Duration>,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.external, self.protocol)?;
        match self.lifetime {
            Some(l) => write!(f, " (lifetime {} s)", l.as_secs()),
            None => f.write_str(" (permanent lease)"),
        }
    }
}

/// Why a protocol gave no mapping (or lost one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Nothing answered the requests.
    NoAnswer {
        /// Requests sent.
        sent: u32,
        /// From the first to giving up.
        waited: Duration,
    },
    /// Not tried, and why.
    NotTried(&'static str),
    /// The gateway answered PCP as a NAT-PMP server (RFC 6887 §9), or
    /// NAT-PMP with "unsupported version".
    Unsupported,
    /// PCP refused with this result code.
    Pcp(pcp::ResultCode),
    /// NAT-PMP refused with this result code.
    NatPmp(natpmp::ResultCode),
    /// A UPnP action failed.
    Soap {
        /// Which action.
        action: &'static str,
        /// How.
        error: SoapError,
    },
    /// The UPnP device description was unusable.
    Description(DescriptionError),
    /// The UPnP description URL was unusable.
    Location(UrlError),
    /// An HTTP exchange with the UPnP device failed.
    Http(HttpError),
    /// The TCP connection to the UPnP device failed.
    Connection(String),
    /// The UPnP device did not answer in time.
    HttpTimeout(Duration),
    /// An answer that makes no sense (a success with lifetime 0, an
    /// external address of the wrong family...).
    BadAnswer(String),
    /// The mapping expired: the renewals went unanswered.
    Expired,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAnswer { sent, waited } => write!(
                f,
                "no answer to {sent} requests in {:.2} s",
                waited.as_secs_f64()
            ),
            Failure::NotTried(why) => write!(f, "not tried: {why}"),
            Failure::Unsupported => f.write_str("not supported by the gateway"),
            Failure::Pcp(code) => write!(f, "refused: {code}"),
            Failure::NatPmp(code) => write!(f, "refused: {code}"),
            Failure::Soap { action, error } => write!(f, "{action} failed: {error}"),
            Failure::Description(e) => write!(f, "{e}"),
            Failure::Location(e) => write!(f, "{e}"),
            Failure::Http(e) => write!(f, "{e}"),
            Failure::Connection(e) => write!(f, "cannot connect to the device: {e}"),
            Failure::HttpTimeout(d) => {
                write!(
                    f,
                    "the device did not answer within {:.1} s",
                    d.as_secs_f64()
                )
            }
            Failure::BadAnswer(e) => write!(f, "bad answer: {e}"),
            Failure::Expired => f.write_str("the mapping expired: renewals went unanswered"),
        }
    }
}

impl Failure {
    /// Whether the gateway answered (refused or failed) rather than stayed
    /// silent or was never asked.
    pub fn answered(&self) -> bool {
        !matches!(
            self,
            Failure::NoAnswer { .. } | Failure::NotTried(_) | Failure::Connection(_)
        )
    }
}

/// Where one protocol stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not started (waiting for a better protocol to fail).
    Waiting,
    /// Asking.
    Trying,
    /// Mapped at this address.
    Mapped(SocketAddr),
    /// No mapping, and why.
    Failed(Failure),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A mapping was made.
    Mapped(Mapping),
    /// A renewal succeeded; the external address may have changed (a
    /// gateway that lost its state, RFC 6887 §8.5).
    Renewed(Mapping),
    /// No protocol gave a mapping: each one and why.
    Failed(Vec<(Protocol, Status)>),
    /// The mapping is gone: the gateway refused a renewal, or it expired.
    Lost {
        /// It.
        mapping: Mapping,
        /// Why.
        failure: Failure,
    },
    /// Closed: the mapping is deleted (or there was none, or the gateway
    /// did not confirm in time).
    Closed,
}

/// An HTTP exchange's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpId(pub u64);

impl fmt::Display for HttpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http#{}", self.0)
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this UDP datagram from the internal address's socket.
    Transmit {
        /// Where.
        to: SocketAddr,
        /// What.
        payload: Vec<u8>,
    },
    /// Open a TCP connection from `from` (any port) to `to`, write
    /// `request`, and give what comes back to
    /// [`PortMapper::handle_http_data`], then the end to
    /// [`PortMapper::handle_http_end`].
    Http {
        /// The exchange.
        id: HttpId,
        /// The local address to connect from (the UPnP device checks that
        /// the mapping is for the requester).
        from: IpAddr,
        /// The device.
        to: SocketAddr,
        /// The request's bytes.
        request: Vec<u8>,
    },
    /// The exchange is over (answered, or given up): close the connection.
    CloseHttp(HttpId),
    /// Tell the application.
    Event(Event),
}

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

    // --- PCP ---------------------------------------------------------------

    fn pcp_request(&self, lifetime: u32, suggested: SocketAddr) -> Vec<u8> {
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

    fn start_pcp(&mut self, now: Instant) {
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

    fn on_pcp(&mut self, data: &[u8], now: Instant) {
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

    fn pcp_mapping(&self, r: &pcp::MapResponse) -> Result<Mapping, Failure> {
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

    fn check_external(&self, ext: SocketAddr) -> Result<(), Failure> {
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
    fn after_pcp(&mut self, natpmp_only: bool, now: Instant) {
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

    fn status_of(&self, p: Protocol) -> Option<&Status> {
        self.status.iter().find(|(q, _)| *q == p).map(|(_, s)| s)
    }

    // --- NAT-PMP -----------------------------------------------------------

    fn start_natpmp(&mut self, now: Instant) {
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

    fn on_natpmp(&mut self, data: &[u8], now: Instant) {
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

    // --- UPnP --------------------------------------------------------------

    fn send_search(&mut self) {
        let gw = SocketAddr::new(self.cfg.gateway, ssdp::PORT);
        self.out.push_back(Output::Transmit {
            to: gw,
            payload: ssdp::search_request(gw),
        });
        self.out.push_back(Output::Transmit {
            to: ssdp::MULTICAST_V4,
            payload: ssdp::search_request(ssdp::MULTICAST_V4),
        });
    }

    fn on_ssdp(&mut self, data: &[u8], now: Instant) {
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

    fn describe(&mut self, url: Url, now: Instant) {
        self.upnp = Upnp::Describing;
        self.http_start(Purpose::Describe, url.addr, http::get(&url), now);
        // Where the description came from, for relative control URLs.
        self.describe_url = Some(url);
    }

    /// Whether port 5351 has been silent past [`UDP_PATIENCE`].
    fn udp_silent(&self, now: Instant) -> bool {
        !self.udp_answered && now >= self.patience_at
    }

    /// PCP went unanswered past [`UDP_PATIENCE`] and UPnP is ready: stop
    /// waiting for it.
    fn abandon_udp(&mut self, now: Instant) {
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

    fn upnp_failed(&mut self, f: Failure) {
        self.upnp = Upnp::Done;
        self.set(Protocol::Upnp, Status::Failed(f));
        self.finish_if_failed();
    }

    /// PCP and NAT-PMP are out: UPnP may map (now, or once discovered).
    fn upnp_may_map(&mut self, now: Instant) {
        self.upnp_go = true;
        if matches!(self.upnp, Upnp::Ready(_)) {
            if let Upnp::Ready(services) = std::mem::replace(&mut self.upnp, Upnp::Done) {
                self.upnp_external_ip(services, now);
            }
        }
        self.finish_if_failed();
    }

    fn upnp_external_ip(&mut self, services: Vec<Service>, now: Instant) {
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

    fn upnp_add(
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

    fn on_http_answer(
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

    fn http_start(&mut self, purpose: Purpose, to: SocketAddr, request: Vec<u8>, now: Instant) {
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

    // --- common ------------------------------------------------------------

    fn udp_send(&mut self, payload: Vec<u8>) {
        self.out.push_back(Output::Transmit {
            to: SocketAddr::new(self.cfg.gateway, SERVER_PORT),
            payload,
        });
    }

    fn mapped(&mut self, mapping: Mapping, now: Instant) {
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

    fn renewed(&mut self, mapping: Mapping, now: Instant) {
        tracing::debug!(%mapping, "port mapping renewed");
        self.set(mapping.protocol, Status::Mapped(mapping.external));
        self.active = Some(self.schedule(mapping.clone(), now));
        self.out.push_back(Output::Event(Event::Renewed(mapping)));
    }

    /// RFC 6887 §11.2.1: renew at a random time between 1/2 and 5/8 of
    /// the lifetime (RFC 6886 §3.3 says half-way, "like DHCP").
    fn schedule(&mut self, mapping: Mapping, now: Instant) -> Active {
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
    fn schedule_retry(&mut self, now: Instant) {
        let f = self.rng.gen_range(0.5..0.625);
        if let Some(a) = &mut self.active {
            let left = a
                .expires
                .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
            a.renew_at = (left > LAST_RENEWAL).then(|| now + left.mul_f64(f));
        }
    }

    fn lost(&mut self, failure: Failure) {
        let Some(a) = self.active.take() else { return };
        tracing::info!(mapping = %a.mapping, %failure, "port mapping lost");
        self.set(a.mapping.protocol, Status::Failed(failure.clone()));
        self.out.push_back(Output::Event(Event::Lost {
            mapping: a.mapping,
            failure,
        }));
    }

    fn renew(&mut self, now: Instant) {
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
    fn finish_if_failed(&mut self) {
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

    // --- closing -----------------------------------------------------------

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
        match (self.active.as_ref().map(|a| a.mapping.protocol), in_flight) {
            (Some(_), _) | (None, Some(_)) => self.start_delete(now),
            (None, None) => self.close_done(),
        }
    }

    fn start_delete(&mut self, now: Instant) {
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

    fn close_done(&mut self) {
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

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
