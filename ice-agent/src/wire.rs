//! Connectivity-check messages (RFC 8445 §7.1-§7.3): Binding requests and
//! responses with the ICE attributes, written with proto's [`Writer`] and
//! read with proto's attribute walker. Integrity is short-term: the key is
//! the password (RFC 8445 §7.2.2).

use std::net::SocketAddr;

use natkit_proto::integrity;
use natkit_proto::raw::{self, attr, method, Attributes, Class, Header, RawError};
use natkit_proto::writer::{BufferTooSmall, Writer};

use crate::Role;

/// Room for the largest check: header, USERNAME of two 256-char ufrags,
/// PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY, FINGERPRINT.
const MAX_LEN: usize = 20 + (4 + 516) + 8 + 12 + 4 + 24 + 8;

/// What goes into a connectivity check (RFC 8445 §7.1).
pub(crate) struct CheckRequest<'a> {
    /// "remote ufrag:local ufrag" (RFC 8445 §7.2.2).
    pub username: &'a str,
    /// The remote password.
    pub key: &'a [u8],
    /// PRIORITY (RFC 8445 §7.1.1).
    pub priority: u32,
    /// Which of ICE-CONTROLLING / ICE-CONTROLLED (RFC 8445 §7.1.3).
    pub role: Role,
    /// The tie-breaker carried in the role attribute.
    pub tiebreaker: u64,
    /// USE-CANDIDATE (RFC 8445 §7.1.2).
    pub use_candidate: bool,
}

/// Encode a check request.
pub(crate) fn request(tid: &[u8; 12], r: &CheckRequest<'_>) -> Result<Vec<u8>, BufferTooSmall> {
    let mut buf = vec![0u8; MAX_LEN];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, tid)?;
    w.bytes(attr::USERNAME, r.username.as_bytes())?;
    w.u32(attr::PRIORITY, r.priority)?;
    match r.role {
        Role::Controlling => w.u64(attr::ICE_CONTROLLING, r.tiebreaker)?,
        Role::Controlled => w.u64(attr::ICE_CONTROLLED, r.tiebreaker)?,
    }
    if r.use_candidate {
        w.bytes(attr::USE_CANDIDATE, &[])?;
    }
    w.message_integrity(r.key)?;
    let n = w.fingerprint()?;
    buf.truncate(n);
    Ok(buf)
}

/// Encode a Binding indication with FINGERPRINT: RFC 8445 §11's keepalive,
/// which every ICE agent ignores (RFC 7983 demultiplexing sees STUN).
pub(crate) fn keepalive(tid: &[u8; 12]) -> Result<Vec<u8>, BufferTooSmall> {
    let mut buf = vec![0u8; 28];
    let w = Writer::new(&mut buf, method::BINDING, Class::Indication, tid)?;
    let n = w.fingerprint()?;
    buf.truncate(n);
    Ok(buf)
}

/// Encode a success response carrying the request's source as
/// XOR-MAPPED-ADDRESS (RFC 8445 §7.3.1.2), signed with our password.
pub(crate) fn success(
    tid: &[u8; 12],
    mapped: SocketAddr,
    key: &[u8],
) -> Result<Vec<u8>, BufferTooSmall> {
    let mut buf = vec![0u8; 20 + 24 + 24 + 8];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Success, tid)?;
    w.xor_address(attr::XOR_MAPPED_ADDRESS, mapped)?;
    w.message_integrity(key)?;
    let n = w.fingerprint()?;
    buf.truncate(n);
    Ok(buf)
}

/// Encode an error response (487 Role Conflict, RFC 8445 §7.3.1.1; 420
/// with UNKNOWN-ATTRIBUTES, RFC 8489 §6.3.1.1), signed with our password.
pub(crate) fn error(
    tid: &[u8; 12],
    code: u16,
    unknown: &[u16],
    key: &[u8],
) -> Result<Vec<u8>, BufferTooSmall> {
    let mut buf = vec![0u8; 20 + 8 + 4 + 2 * raw::Unknown::CAPACITY + 24 + 8];
    let mut w = Writer::new(&mut buf, method::BINDING, Class::Error, tid)?;
    w.error_code(code, "")?;
    if !unknown.is_empty() {
        w.unknown_attributes(unknown)?;
    }
    w.message_integrity(key)?;
    let n = w.fingerprint()?;
    buf.truncate(n);
    Ok(buf)
}

/// Why a datagram is not a usable check message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not STUN at all (RFC 7983: first byte outside 0-3): someone else's
    /// datagram, e.g. QUIC on the same socket.
    #[error("not a STUN message")]
    NotStun,
    /// Looks like STUN but is malformed.
    #[error("malformed STUN message: {0}")]
    Malformed(#[from] RawError),
    /// A STUN message of another method (TURN's, say): not ICE's.
    #[error("STUN message of method {0:#05x}, not Binding")]
    NotBinding(u16),
    /// FINGERPRINT present and wrong (RFC 8445 §7.3: such messages are not
    /// ICE's).
    #[error("bad FINGERPRINT")]
    BadFingerprint,
    /// An ICE attribute with a malformed value.
    #[error("malformed attribute {0:#06x}")]
    BadAttribute(u16),
}

/// A Binding message as the agent reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub header: Header,
    pub username: Option<&'a [u8]>,
    pub priority: Option<u32>,
    pub use_candidate: bool,
    pub controlling: Option<u64>,
    pub controlled: Option<u64>,
    pub xor_mapped: Option<SocketAddr>,
    pub error_code: Option<u16>,
    /// Unknown comprehension-required attributes (before the integrity).
    pub unknown: raw::Unknown,
}

fn u32_value(typ: u16, v: &[u8]) -> Result<u32, WireError> {
    let b: [u8; 4] = v.try_into().map_err(|_| WireError::BadAttribute(typ))?;
    Ok(u32::from_be_bytes(b))
}

fn u64_value(typ: u16, v: &[u8]) -> Result<u64, WireError> {
    let b: [u8; 8] = v.try_into().map_err(|_| WireError::BadAttribute(typ))?;
    Ok(u64::from_be_bytes(b))
}

/// Parse a datagram as a Binding message. Integrity is not checked here:
/// the caller knows which password applies.
pub(crate) fn parse(buf: &[u8]) -> Result<Message<'_>, WireError> {
    // RFC 7983 §7: STUN starts with 0-3; anything else is for another
    // protocol on the same socket.
    match buf.first() {
        Some(0..=3) => {}
        _ => return Err(WireError::NotStun),
    }
    let header = raw::parse_datagram(buf)?;
    if header.method() != method::BINDING {
        return Err(WireError::NotBinding(header.method()));
    }
    integrity::check_fingerprint(buf, &header).map_err(|e| match e {
        integrity::IntegrityError::Malformed(r) => WireError::Malformed(r),
        _ => WireError::BadFingerprint,
    })?;
    let mut m = Message {
        header,
        username: None,
        priority: None,
        use_candidate: false,
        controlling: None,
        controlled: None,
        xor_mapped: None,
        error_code: None,
        unknown: raw::Unknown::default(),
    };
    for a in Attributes::new(buf, &header) {
        let a = a?;
        match a.typ {
            attr::USERNAME => m.username = Some(a.value),
            attr::PRIORITY => m.priority = Some(u32_value(a.typ, a.value)?),
            attr::USE_CANDIDATE => m.use_candidate = true,
            attr::ICE_CONTROLLING => m.controlling = Some(u64_value(a.typ, a.value)?),
            attr::ICE_CONTROLLED => m.controlled = Some(u64_value(a.typ, a.value)?),
            attr::XOR_MAPPED_ADDRESS => {
                m.xor_mapped = Some(
                    raw::decode_xor_address(a.value, &header.transaction_id)
                        .ok_or(WireError::BadAttribute(a.typ))?,
                )
            }
            attr::ERROR_CODE => m.error_code = raw::decode_error_code(a.value),
            // RFC 8489 §14.5: attributes after the integrity are ignored
            // (FINGERPRINT was checked above).
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 => break,
            attr::FINGERPRINT
            | attr::SOFTWARE
            | attr::MAPPED_ADDRESS
            | attr::UNKNOWN_ATTRIBUTES => {}
            t => m.unknown.note(t),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_integrity_and_fingerprint() {
        let tid = [5u8; 12];
        let b = request(
            &tid,
            &CheckRequest {
                username: "rfrag:lfrag",
                key: b"the remote password 123",
                priority: 1862270975,
                role: Role::Controlling,
                tiebreaker: 0x0102_0304_0506_0708,
                use_candidate: true,
            },
        )
        .unwrap();
        let m = parse(&b).unwrap();
        assert_eq!(m.header.class(), Class::Request);
        assert_eq!(m.username, Some(&b"rfrag:lfrag"[..]));
        assert_eq!(m.priority, Some(1862270975));
        assert_eq!(m.controlling, Some(0x0102_0304_0506_0708));
        assert_eq!(m.controlled, None);
        assert!(m.use_candidate);
        assert!(m.unknown.is_empty());
        assert!(integrity::verify(&b, &m.header, b"the remote password 123").is_ok());
        assert!(integrity::verify(&b, &m.header, b"another password").is_err());
    }

    #[test]
    fn responses_round_trip() {
        let tid = [6u8; 12];
        let a: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let b = success(&tid, a, b"pw").unwrap();
        let m = parse(&b).unwrap();
        assert_eq!(m.header.class(), Class::Success);
        assert_eq!(m.xor_mapped, Some(a));
        let e = error(&tid, 487, &[], b"pw").unwrap();
        let m = parse(&e).unwrap();
        assert_eq!(m.header.class(), Class::Error);
        assert_eq!(m.error_code, Some(487));
        assert!(integrity::verify(&e, &m.header, b"pw").is_ok());
    }

    #[test]
    fn non_stun_and_other_methods_are_told_apart() {
        assert_eq!(parse(&[0x40, 1, 2]).unwrap_err(), WireError::NotStun);
        assert_eq!(parse(&[]).unwrap_err(), WireError::NotStun);
        let mut buf = [0u8; 20];
        let w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[1; 12]).unwrap();
        let n = w.finish();
        assert_eq!(
            parse(&buf[..n]).unwrap_err(),
            WireError::NotBinding(method::ALLOCATE)
        );
    }
}
