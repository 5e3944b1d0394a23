//! Errors of the TURN client: what the server answered (each one a user can
//! act on) and misuse of the API.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a TURN request (Allocate, Refresh, CreatePermission, ChannelBind)
/// failed. Codes are RFC 8656 §19 and RFC 8489 §14.8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 401 after the request carried credentials: wrong username or
    /// password (or expired REST credentials).
    #[error("the server refused the credentials (401 Unauthorized)")]
    WrongCredentials,
    /// The server kept answering 438 (Stale Nonce) with fresh nonces.
    #[error("stale nonce loop: the server answered 438 {attempts} times in a row")]
    StaleNonceLoop {
        /// How many 438 answers were received for the request.
        attempts: u8,
    },
    /// 486: the user's allocation quota is reached.
    #[error("allocation quota reached (486)")]
    QuotaReached,
    /// 403: refused by server policy, e.g. a peer address the relay denies.
    #[error("forbidden by the server's policy (403)")]
    Forbidden,
    /// 508: the server has no capacity (ports, memory) for this request.
    #[error("the server has insufficient capacity (508)")]
    InsufficientCapacity,
    /// 437: no allocation matches (expired, or another client's 5-tuple).
    #[error("allocation mismatch (437): the allocation does not exist")]
    AllocationMismatch,
    /// 442: the server does not relay the requested transport.
    #[error("unsupported transport protocol (442)")]
    UnsupportedTransport,
    /// 440: the server does not support the requested address family.
    #[error("address family not supported (440)")]
    AddressFamilyNotSupported,
    /// 443: the peer's address family differs from the relayed address's.
    #[error("peer address family mismatch (443)")]
    PeerAddressFamilyMismatch,
    /// 400 to a ChannelBind: the server has the peer bound to another
    /// channel number, or the number bound to another peer (RFC 8656
    /// §12.2), which this client never asked for. Client and server are
    /// out of sync; RFC 8656 §12.3 recommends a new allocation.
    #[error(
        "the server holds a conflicting channel binding (400): client and server are out of \
         sync; data to the peer goes in Send indications, a new allocation starts afresh"
    )]
    ChannelConflict,
    /// The server never answered: RFC 8489 §6.2 retransmissions exhausted.
    #[error("no answer from the TURN server after {attempts} sends over {waited:?}")]
    Timeout {
        /// Time from the first send until giving up.
        waited: Duration,
        /// How many times the request was sent.
        attempts: u32,
    },
    /// An authentic response lacked an attribute it must carry.
    #[error("malformed response from the server: {0}")]
    Malformed(&'static str),
    /// The request would not fit in a STUN message (absurdly long
    /// username, realm or nonce).
    #[error("request too large for a STUN message")]
    RequestTooLarge,
    /// 300 Try Alternate (RFC 8489 §10) from the alternate too: the client
    /// follows one redirect, never a chain (no loops between relays that
    /// each send it to the other).
    #[error(
        "redirected twice: {first} sent the Allocate to {second} (300 Try Alternate), which \
         redirected it again; a client follows one redirect only"
    )]
    RedirectLoop {
        /// The server first asked.
        first: SocketAddr,
        /// The alternate it named, which redirected too.
        second: SocketAddr,
    },
    /// 300 Try Alternate to a driver that does not follow redirects over
    /// its transport (a session's TCP/TLS link): the server is draining
    /// or full and wants the client at `to`.
    #[error("the server redirected the allocation to {to} (300 Try Alternate)")]
    Redirected {
        /// The alternate.
        to: SocketAddr,
    },
    /// 446 to a Connect (RFC 6062 §5.2): a connection to that peer exists
    /// or is being made.
    #[error("a connection to that peer already exists (446)")]
    ConnectionAlreadyExists,
    /// 447 to a Connect (RFC 6062 §5.2): the relay could not reach the
    /// peer (refused, unreachable, or no answer within 30 s).
    #[error("the relay could not connect to the peer (447)")]
    ConnectionFailed,
    /// Any other error code.
    #[error("the server answered error {0}")]
    Other(u16),
}

impl ClientError {
    /// The error for an error response code (401 and 438 are handled by the
    /// client before they get here).
    pub(crate) fn from_code(code: u16) -> Self {
        match code {
            401 => ClientError::WrongCredentials,
            403 => ClientError::Forbidden,
            437 => ClientError::AllocationMismatch,
            440 => ClientError::AddressFamilyNotSupported,
            442 => ClientError::UnsupportedTransport,
            443 => ClientError::PeerAddressFamilyMismatch,
            446 => ClientError::ConnectionAlreadyExists,
            447 => ClientError::ConnectionFailed,
            486 => ClientError::QuotaReached,
            508 => ClientError::InsufficientCapacity,
            c => ClientError::Other(c),
        }
    }
}

/// A call on the [`Client`](super::Client) that cannot be carried out now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// There is no allocation (not yet allocated, closed or failed).
    #[error("no TURN allocation")]
    NotAllocated,
    /// No permission was requested for this peer's IP address
    /// (RFC 8656 §9: the relay drops data to peers without one).
    #[error("no permission for peer {0}")]
    NoPermission(SocketAddr),
    /// The allocation has no relayed address of the peer's family
    /// (RFC 8656 §9.1 would answer 443).
    #[error("no relayed address of the family of peer {0}")]
    FamilyNotRelayed(SocketAddr),
    /// All 4096 channel numbers are taken (a peer keeps its number for the
    /// allocation's life, RFC 8656 §12).
    #[error("all channel numbers are in use")]
    ChannelsExhausted,
    /// The server refused a channel to this peer (see
    /// [`Event::ChannelFailed`](super::Event::ChannelFailed)); data to it
    /// goes in Send indications.
    #[error(
        "the server refused a channel to peer {peer}: {error}; data to it goes in Send indications"
    )]
    ChannelRefused {
        /// The peer.
        peer: SocketAddr,
        /// The server's answer.
        error: ClientError,
    },
    /// Connect and ConnectionBind need a TCP allocation (RFC 6062), and
    /// data over it goes on its data connections, not in Send
    /// indications.
    #[error(
        "not a TCP allocation (RFC 6062): allocate with RelayedTransport::Tcp over TCP or TLS"
    )]
    NotTcpAllocation,
    /// The output buffer cannot hold the message.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The data does not fit in one ChannelData or Send indication.
    #[error("data of {0} bytes is too large for one message")]
    DataTooLarge(usize),
}
