//! The port mapper's public surface: the protocols, what it is asked to
//! do ([`Config`]), what it makes ([`Mapping`]), how it fails
//! ([`Failure`], [`Status`]), and what it tells its driver ([`Output`],
//! [`Event`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natkit_proto::transaction;

use super::http::{HttpError, Url, UrlError};
use super::upnp::{DescriptionError, SoapError};
#[cfg(doc)]
use super::PortMapper;
use super::{natpmp, pcp};

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
