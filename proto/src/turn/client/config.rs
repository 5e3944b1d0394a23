//! Configuration of a TURN client: server, transport, credentials and what
//! to ask for in the Allocate request.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::transaction;

/// How the client reaches the TURN server. The relayed transport is always
/// UDP (RFC 8656 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: requests are retransmitted (RFC 8489 §6.2.1), ChannelData is
    /// sent unpadded.
    Udp,
    /// TCP: no retransmissions (RFC 8489 §6.2.2), ChannelData padded to 4
    /// bytes (RFC 8656 §12.5).
    Tcp,
    /// TLS over TCP: same rules as TCP.
    Tls,
}

impl Transport {
    /// Whether this is a stream transport (TCP or TLS).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// What the relayed transport address relays (RFC 8656 §7.1 REQUESTED-TRANSPORT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RelayedTransport {
    /// UDP datagrams (RFC 8656).
    #[default]
    Udp,
    /// TCP connections (RFC 6062): over a TCP or TLS control connection
    /// only; peers are reached with [`Client::connect`](super::Client::connect)
    /// and come in as [`Event::ConnectionAttempt`](super::Event::ConnectionAttempt),
    /// each data connection bound with
    /// [`Client::connection_bind`](super::Client::connection_bind).
    Tcp,
}

/// Which relayed address families to ask for (RFC 8656 §7.1, RFC 6156).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddressFamily {
    /// One IPv4 relayed address (the default when nothing is requested).
    #[default]
    V4,
    /// One IPv6 relayed address (REQUESTED-ADDRESS-FAMILY = IPv6).
    V6,
    /// An IPv4 and an IPv6 relayed address (ADDITIONAL-ADDRESS-FAMILY = IPv6,
    /// RFC 8656 §7.1).
    Dual,
}

/// What to ask for with EVEN-PORT / RESERVATION-TOKEN (RFC 8656 §14.6,
/// §14.9). The two are mutually exclusive in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortRequest {
    /// EVEN-PORT: an even relayed port; with `reserve_next` the server also
    /// keeps the next port for a later allocation and returns a
    /// RESERVATION-TOKEN (see [`Client::reservation_token`](super::Client::reservation_token)).
    EvenPort {
        /// The R bit: reserve the next higher port.
        reserve_next: bool,
    },
    /// RESERVATION-TOKEN: take the port reserved by an earlier allocation.
    ReservationToken(u64),
}

/// Long-term credentials (RFC 8489 §9.2). `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username (a plain user, or a REST `"<expiry>:<user>"` name).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Static credentials.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// REST credentials made from a shared secret (coturn's
    /// `use-auth-secret`), valid for `ttl` from `now`; see [`crate::rest`].
    pub fn from_rest_secret(secret: &[u8], user: &str, ttl: Duration, now: SystemTime) -> Self {
        let c = crate::rest::generate(secret, user, ttl, now);
        Credentials {
            username: c.username,
            password: c.password,
        }
    }
}

impl From<crate::rest::Credentials> for Credentials {
    fn from(c: crate::rest::Credentials) -> Self {
        Credentials {
            username: c.username,
            password: c.password,
        }
    }
}

/// Everything a [`Client`](super::Client) needs to allocate.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TURN server's address (where every transmit goes).
    pub server: SocketAddr,
    /// How the server is reached.
    pub transport: Transport,
    /// Long-term credentials.
    pub credentials: Credentials,
    /// Relayed address families to ask for.
    pub family: AddressFamily,
    /// UDP (the default) or TCP (RFC 6062) relaying.
    pub relayed: RelayedTransport,
    /// LIFETIME to request (RFC 8656 §7.2: the server picks the lifetime,
    /// by default 600 s). `None` sends no LIFETIME attribute.
    pub lifetime: Option<Duration>,
    /// Send DONT-FRAGMENT (RFC 8656 §14.8) in the Allocate request.
    pub dont_fragment: bool,
    /// EVEN-PORT or RESERVATION-TOKEN.
    pub port: Option<PortRequest>,
    /// Retransmission timer for requests over UDP. Over TCP/TLS only its
    /// total budget is used, as the single timeout (RFC 8489 §6.2.2).
    pub transaction: transaction::Config,
    /// Refresh the allocation at this fraction of its granted lifetime
    /// (in 1/100ths; 75 by default).
    pub refresh_percent: u8,
    /// How often a permission is refreshed (RFC 8656 §9: permissions last
    /// 300 s; 240 s by default).
    pub permission_refresh: Duration,
    /// How often a channel binding is refreshed (RFC 8656 §12: bindings last
    /// 600 s; 540 s by default).
    pub channel_refresh: Duration,
    /// How many 438 (Stale Nonce) answers one request may get before the
    /// client gives up with [`ClientError::StaleNonceLoop`](super::ClientError::StaleNonceLoop)
    /// (3 by default).
    pub max_stale_nonce_retries: u8,
}

impl Config {
    /// A configuration with the defaults: IPv4, the server's default
    /// lifetime, no DONT-FRAGMENT or EVEN-PORT, RFC 8489 retransmissions.
    pub fn new(server: SocketAddr, transport: Transport, credentials: Credentials) -> Self {
        Config {
            server,
            transport,
            credentials,
            family: AddressFamily::V4,
            relayed: RelayedTransport::Udp,
            lifetime: None,
            dont_fragment: false,
            port: None,
            transaction: transaction::Config::default(),
            refresh_percent: 75,
            permission_refresh: Duration::from_secs(240),
            channel_refresh: Duration::from_secs(540),
            max_stale_nonce_retries: 3,
        }
    }

    /// The timer configuration actually used for requests: over streams a
    /// single send with the whole UDP budget as its timeout
    /// (RFC 8489 §6.2.2: Ti = 39.5 s, the reliable transport retransmits).
    pub(crate) fn timer(&self) -> transaction::Config {
        if self.transport.is_stream() {
            transaction::Config {
                rto: self.transaction.budget(),
                rc: 1,
                rm: 1,
            }
        } else {
            self.transaction
        }
    }
}
