//! TURN client messages on the wire: building requests with the
//! long-term credential attributes and reading the responses and Data
//! indications the server sends back. Built on [`crate::writer`] and
//! [`crate::raw`].

use std::net::SocketAddr;

use super::config::{AddressFamily, Config, PortRequest, RelayedTransport};
use super::error::ClientError;
use crate::integrity::{LongTermKey, PasswordAlgorithm};
use crate::raw::{self, attr, method, Attributes, Class, Header, RawError};
use crate::writer::Writer;

/// RFC 8656 §14.7: REQUESTED-TRANSPORT carries the IANA protocol number;
/// 17 is UDP, the only relayed transport RFC 8656 defines.
const PROTOCOL_UDP: u8 = 17;
/// RFC 6062 §6.1: TCP.
const PROTOCOL_TCP: u8 = 6;

/// Space for everything in a request but the variable-length strings and
/// peers: header, LIFETIME, transport, family, EVEN-PORT or token,
/// DONT-FRAGMENT, CHANNEL-NUMBER, PASSWORD-ALGORITHM, integrity (36) and
/// FINGERPRINT, rounded up generously.
const FIXED_SPACE: usize = 256;
/// Largest XOR-PEER-ADDRESS attribute (IPv6): 4 + 20 bytes.
const PEER_SPACE: usize = 24;

/// What the client has learned from the server's 401 and holds to
/// authenticate (RFC 8489 §9.2.3-§9.2.5).
#[derive(Clone)]
pub(crate) struct Auth {
    pub realm: String,
    pub nonce: String,
    /// The algorithm the key was derived with.
    pub algorithm: PasswordAlgorithm,
    /// PASSWORD-ALGORITHMS exactly as the server sent it; echoed with
    /// PASSWORD-ALGORITHM (RFC 8489 §9.2.4). `None` when it offered none.
    pub algorithms: Option<Vec<u8>>,
    pub key: LongTermKey,
}

/// The request operations of a TURN client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Allocate,
    /// Refresh with this LIFETIME (0 deletes the allocation, RFC 8656 §8);
    /// `None` lets the server pick.
    Refresh(Option<u32>),
    /// One CreatePermission for several peers (RFC 8656 §9.1).
    CreatePermission(Vec<SocketAddr>),
    ChannelBind {
        channel: u16,
        peer: SocketAddr,
    },
    /// RFC 6062 §4.3: the relay connects to the peer.
    Connect(SocketAddr),
    /// RFC 6062 §4.4: on a new data connection, tie it to a peer
    /// connection.
    ConnectionBind(u32),
}

impl Op {
    pub(crate) fn method(&self) -> u16 {
        match self {
            Op::Allocate => method::ALLOCATE,
            Op::Refresh(_) => method::REFRESH,
            Op::CreatePermission(_) => method::CREATE_PERMISSION,
            Op::ChannelBind { .. } => method::CHANNEL_BIND,
            Op::Connect(_) => method::CONNECT,
            Op::ConnectionBind(_) => method::CONNECTION_BIND,
        }
    }
}

/// Write a request for `op` with `transaction_id`, authenticated when `auth`
/// is known.
pub(crate) fn build_request(
    op: &Op,
    transaction_id: &[u8; 12],
    cfg: &Config,
    auth: Option<&Auth>,
) -> Result<Vec<u8>, ClientError> {
    let strings = auth.map_or(0, |a| {
        cfg.credentials.username.len()
            + a.realm.len()
            + a.nonce.len()
            + a.algorithms.as_ref().map_or(0, Vec::len)
    });
    let peers = match op {
        Op::CreatePermission(p) => p.len(),
        _ => 1,
    };
    let mut buf = vec![0u8; FIXED_SPACE + strings + 16 + PEER_SPACE * peers];
    let n = write_request(&mut buf, op, transaction_id, cfg, auth)
        .map_err(|_| ClientError::RequestTooLarge)?;
    buf.truncate(n);
    Ok(buf)
}

fn write_request(
    buf: &mut [u8],
    op: &Op,
    tid: &[u8; 12],
    cfg: &Config,
    auth: Option<&Auth>,
) -> Result<usize, crate::writer::BufferTooSmall> {
    let mut w = Writer::new(buf, op.method(), Class::Request, tid)?;
    match op {
        Op::Allocate => {
            // RFC 8656 §7.1 and §14.7: the protocol number, then 24 RFFU bits.
            let protocol = match cfg.relayed {
                RelayedTransport::Udp => PROTOCOL_UDP,
                RelayedTransport::Tcp => PROTOCOL_TCP,
            };
            w.bytes(attr::REQUESTED_TRANSPORT, &[protocol, 0, 0, 0])?;
            if let Some(l) = cfg.lifetime {
                w.u32(attr::LIFETIME, l.as_secs().min(u32::MAX as u64) as u32)?;
            }
            match cfg.family {
                AddressFamily::V4 => {}
                // RFC 8656 §14.1: family byte, then 24 RFFU bits.
                AddressFamily::V6 => {
                    w.bytes(attr::REQUESTED_ADDRESS_FAMILY, &[raw::FAMILY_IPV6, 0, 0, 0])?
                }
                // RFC 8656 §7.1: a dual allocation is IPv4 (implicit) plus
                // ADDITIONAL-ADDRESS-FAMILY IPv6, and no
                // REQUESTED-ADDRESS-FAMILY.
                AddressFamily::Dual => w.bytes(
                    attr::ADDITIONAL_ADDRESS_FAMILY,
                    &[raw::FAMILY_IPV6, 0, 0, 0],
                )?,
            }
            match cfg.port {
                None => {}
                // RFC 8656 §14.6: one byte, R in the top bit.
                Some(PortRequest::EvenPort { reserve_next }) => {
                    w.bytes(attr::EVEN_PORT, &[if reserve_next { 0x80 } else { 0 }])?
                }
                Some(PortRequest::ReservationToken(t)) => w.u64(attr::RESERVATION_TOKEN, t)?,
            }
            if cfg.dont_fragment {
                w.bytes(attr::DONT_FRAGMENT, &[])?;
            }
        }
        Op::Refresh(lifetime) => {
            if let Some(l) = lifetime {
                w.u32(attr::LIFETIME, *l)?;
            }
        }
        Op::CreatePermission(peers) => {
            for p in peers {
                w.xor_address(attr::XOR_PEER_ADDRESS, *p)?;
            }
        }
        Op::ChannelBind { channel, peer } => {
            // RFC 8656 §14.1: channel number, then 16 RFFU bits.
            let c = channel.to_be_bytes();
            w.bytes(attr::CHANNEL_NUMBER, &[c[0], c[1], 0, 0])?;
            w.xor_address(attr::XOR_PEER_ADDRESS, *peer)?;
        }
        Op::Connect(peer) => w.xor_address(attr::XOR_PEER_ADDRESS, *peer)?,
        Op::ConnectionBind(id) => w.u32(attr::CONNECTION_ID, *id)?,
    }
    if let Some(a) = auth {
        // RFC 8489 §9.2.4: USERNAME, REALM, NONCE, and with a
        // PASSWORD-ALGORITHMS offer, the offer echoed and the choice.
        w.bytes(attr::USERNAME, cfg.credentials.username.as_bytes())?;
        w.bytes(attr::REALM, a.realm.as_bytes())?;
        w.bytes(attr::NONCE, a.nonce.as_bytes())?;
        if let Some(algs) = &a.algorithms {
            w.bytes(attr::PASSWORD_ALGORITHMS, algs)?;
            // Algorithm number, then a zero-length parameter list.
            let n = a.algorithm.number().to_be_bytes();
            w.bytes(attr::PASSWORD_ALGORITHM, &[n[0], n[1], 0, 0])?;
        }
        match a.algorithm {
            PasswordAlgorithm::Sha256 => w.message_integrity_sha256(a.key.as_bytes())?,
            PasswordAlgorithm::Md5 => w.message_integrity(a.key.as_bytes())?,
        }
    }
    // FINGERPRINT lets a socket shared with ICE and other protocols tell our
    // messages apart (RFC 8489 §7).
    w.fingerprint()
}

/// The algorithms listed in a PASSWORD-ALGORITHMS value (RFC 8489 §14.11):
/// entries of algorithm (2 bytes), parameter length (2 bytes) and
/// parameters padded to 4. Unknown algorithms are skipped; a malformed list
/// yields what was read before the damage.
pub(crate) fn password_algorithms(value: &[u8]) -> Vec<PasswordAlgorithm> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= value.len() {
        let n = u16::from_be_bytes([value[pos], value[pos + 1]]);
        let plen = u16::from_be_bytes([value[pos + 2], value[pos + 3]]) as usize;
        if let Some(a) = PasswordAlgorithm::from_number(n) {
            out.push(a);
        }
        pos += 4 + ((plen + 3) & !3);
    }
    out
}

/// The attributes of a response that the client uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Response {
    /// ERROR-CODE, for error responses.
    pub code: Option<u16>,
    pub realm: Option<String>,
    pub nonce: Option<String>,
    pub algorithms: Option<Vec<u8>>,
    /// XOR-RELAYED-ADDRESS, once or twice (dual allocations, RFC 8656 §7.1).
    pub relayed: Vec<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    pub reservation_token: Option<u64>,
    /// CONNECTION-ID of a Connect success (RFC 6062 §6.2.1).
    pub connection_id: Option<u32>,
    /// ALTERNATE-SERVER of a 300 (RFC 8489 §14.15).
    pub alternate: Option<SocketAddr>,
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    pub alternate_domain: Option<String>,
    /// Whether MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 is present.
    pub has_integrity: bool,
}

/// Why a response was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    Raw(RawError),
    /// An error response without a usable ERROR-CODE.
    NoErrorCode,
    BadFingerprint,
    /// REALM or NONCE is not UTF-8 (or longer than RFC 8489 §14.9 allows).
    BadString,
}

/// Read a success or error response (the header already parsed). The first
/// of a repeated attribute counts (RFC 8489 §14), except that a dual
/// allocation carries two XOR-RELAYED-ADDRESS; nothing after the integrity
/// attributes counts (§14.5).
pub(crate) fn parse_response(msg: &[u8], h: &Header) -> Result<Response, Malformed> {
    let mut r = Response::default();
    let text = |v| {
        raw::decode_text(v, raw::MAX_TEXT_LEN)
            .map(str::to_string)
            .ok_or(Malformed::BadString)
    };
    for a in Attributes::new(msg, h).counted() {
        let a = a.map_err(Malformed::Raw)?;
        match a.typ {
            attr::ERROR_CODE if r.code.is_none() => r.code = raw::decode_error_code(a.value),
            attr::REALM if r.realm.is_none() => r.realm = Some(text(a.value)?),
            attr::NONCE if r.nonce.is_none() => r.nonce = Some(text(a.value)?),
            attr::PASSWORD_ALGORITHMS if r.algorithms.is_none() => {
                r.algorithms = Some(a.value.to_vec())
            }
            attr::XOR_RELAYED_ADDRESS => {
                if let Some(addr) = raw::decode_xor_address(a.value, &h.transaction_id) {
                    r.relayed.push(addr);
                }
            }
            attr::XOR_MAPPED_ADDRESS if r.mapped.is_none() => {
                r.mapped = raw::decode_xor_address(a.value, &h.transaction_id)
            }
            attr::LIFETIME if r.lifetime.is_none() => r.lifetime = raw::decode_u32(a.value),
            attr::RESERVATION_TOKEN if r.reservation_token.is_none() => {
                r.reservation_token = raw::decode_u64(a.value)
            }
            attr::CONNECTION_ID if r.connection_id.is_none() => {
                r.connection_id = raw::decode_u32(a.value)
            }
            attr::ALTERNATE_SERVER if r.alternate.is_none() => {
                r.alternate = raw::decode_address(a.value)
            }
            attr::ALTERNATE_DOMAIN if r.alternate_domain.is_none() => {
                r.alternate_domain = Some(text(a.value)?)
            }
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 => r.has_integrity = true,
            attr::FINGERPRINT => {
                crate::integrity::check_fingerprint(msg, h)
                    .map_err(|_| Malformed::BadFingerprint)?;
            }
            _ => {}
        }
    }
    if h.class() == Class::Error && r.code.is_none() {
        return Err(Malformed::NoErrorCode);
    }
    Ok(r)
}

/// The peer and data of a Data indication (RFC 8656 §11.4), borrowed from
/// the message. `None` when either attribute is missing.
pub(crate) fn parse_data_indication<'a>(
    msg: &'a [u8],
    h: &Header,
) -> Option<(SocketAddr, &'a [u8])> {
    let mut peer = None;
    let mut data = None;
    for a in Attributes::new(msg, h) {
        let a = a.ok()?;
        match a.typ {
            attr::XOR_PEER_ADDRESS if peer.is_none() => {
                peer = raw::decode_xor_address(a.value, &h.transaction_id)
            }
            attr::DATA if data.is_none() => data = Some(a.value),
            _ => {}
        }
    }
    Some((peer?, data?))
}

/// The peer and CONNECTION-ID of a ConnectionAttempt indication
/// (RFC 6062 §4.5). `None` when either is missing.
pub(crate) fn parse_connection_attempt(msg: &[u8], h: &Header) -> Option<(SocketAddr, u32)> {
    let mut peer = None;
    let mut id = None;
    for a in Attributes::new(msg, h) {
        let a = a.ok()?;
        match a.typ {
            attr::XOR_PEER_ADDRESS if peer.is_none() => {
                peer = raw::decode_xor_address(a.value, &h.transaction_id)
            }
            attr::CONNECTION_ID if id.is_none() => id = raw::decode_u32(a.value),
            _ => {}
        }
    }
    Some((peer?, id?))
}

/// Write a Send indication (RFC 8656 §11.1) carrying `data` to `peer` into
/// `out`; returns its length.
pub(crate) fn write_send_indication(
    out: &mut [u8],
    tid: &[u8; 12],
    peer: SocketAddr,
    data: &[u8],
) -> Result<usize, crate::writer::BufferTooSmall> {
    let mut w = Writer::new(out, method::SEND, Class::Indication, tid)?;
    w.xor_address(attr::XOR_PEER_ADDRESS, peer)?;
    w.bytes(attr::DATA, data)?;
    Ok(w.finish())
}
