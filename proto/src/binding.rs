//! Binding requests and responses (RFC 8489 §3, RFC 5780 §6-§7), without
//! allocation: the server side parses a request and writes the answer, the
//! client side writes a request and parses the answer.

use std::net::SocketAddr;

use crate::integrity::{self, IntegrityError};
use crate::raw::{self, attr, method, Attributes, Class, RawError};
use crate::writer::{BufferTooSmall, Writer};

/// RFC 5780 §7.2: CHANGE-REQUEST flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// Answer from the other IP address.
    pub ip: bool,
    /// Answer from the other port.
    pub port: bool,
}

impl ChangeRequest {
    /// No change: answer from where the request arrived.
    pub const NONE: ChangeRequest = ChangeRequest {
        ip: false,
        port: false,
    };
    /// Change both the address and the port.
    pub const BOTH: ChangeRequest = ChangeRequest {
        ip: true,
        port: true,
    };
    /// Change the port only.
    pub const PORT: ChangeRequest = ChangeRequest {
        ip: false,
        port: true,
    };

    fn to_u32(self) -> u32 {
        (if self.ip { 0x4 } else { 0 }) | (if self.port { 0x2 } else { 0 })
    }

    fn from_u32(v: u32) -> Self {
        ChangeRequest {
            ip: v & 0x4 != 0,
            port: v & 0x2 != 0,
        }
    }

    /// Whether any change is asked for.
    pub fn any(self) -> bool {
        self.ip || self.port
    }
}

/// A Binding request as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Transaction ID to echo.
    pub transaction_id: [u8; 12],
    /// CHANGE-REQUEST, if present (RFC 5780 §7.2).
    pub change: Option<ChangeRequest>,
    /// RESPONSE-PORT, if present (RFC 5780 §7.5).
    pub response_port: Option<u16>,
    /// Length of the PADDING value, if present (RFC 5780 §7.6): the answer
    /// carries PADDING of the same length, so it fragments like the request.
    pub padding: Option<u16>,
    /// Whether the request carried a (valid) FINGERPRINT; the answer then
    /// carries one too (RFC 8489 §7.3).
    pub fingerprint: bool,
    /// Unknown comprehension-required attributes; when there are any the
    /// answer is a 420 (RFC 8489 §6.3.1.1).
    pub unknown: raw::Unknown,
}

impl Request {
    /// Unknown comprehension-required attributes found.
    pub fn unknown(&self) -> &[u16] {
        self.unknown.as_slice()
    }
}

/// What the server should do with a datagram that is not a usable Binding
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not STUN or malformed: drop silently (RFC 8489 §6.3).
    #[error("malformed STUN message: {0}")]
    Malformed(#[from] RawError),
    /// A STUN message, but not a Binding request: another handler's job, or
    /// drop.
    #[error("not a Binding request (type {0:#06x})")]
    NotBindingRequest(u16),
    /// FINGERPRINT present but wrong: drop (RFC 8489 §7.3).
    #[error("bad FINGERPRINT")]
    BadFingerprint,
    /// An attribute the server understands has a malformed value: answer 400.
    #[error("malformed attribute {0:#06x}")]
    BadAttribute(u16, [u8; 12]),
}

/// Parse a Binding request that fills the whole datagram (or the whole stream
/// frame). Attributes the server does not act on (SOFTWARE, USERNAME,
/// integrity, ICE attributes...) are skipped; unknown comprehension-required
/// ones are collected for a 420.
pub fn parse_request(buf: &[u8]) -> Result<Request, RequestError> {
    let h = raw::parse_datagram(buf)?;
    if h.method() != method::BINDING || h.class() != Class::Request {
        return Err(RequestError::NotBindingRequest(h.msg_type));
    }
    let mut req = Request {
        transaction_id: h.transaction_id,
        change: None,
        response_port: None,
        padding: None,
        fingerprint: false,
        unknown: raw::Unknown::default(),
    };
    let bad = |typ| RequestError::BadAttribute(typ, h.transaction_id);
    // RFC 8489 §14: of a repeated attribute only the first counts; §14.5:
    // what follows the integrity attributes does not count at all.
    for a in Attributes::new(buf, &h).counted() {
        let a = a?;
        match a.typ {
            attr::CHANGE_REQUEST => {
                let v = raw::decode_u32(a.value).ok_or(bad(a.typ))?;
                req.change.get_or_insert(ChangeRequest::from_u32(v));
            }
            attr::RESPONSE_PORT => {
                let port = raw::decode_response_port(a.value).ok_or(bad(a.typ))?;
                req.response_port.get_or_insert(port);
            }
            attr::PADDING => {
                req.padding.get_or_insert(a.value.len() as u16);
            }
            attr::FINGERPRINT => match integrity::check_fingerprint(buf, &h) {
                Ok(_) => req.fingerprint = true,
                Err(IntegrityError::Malformed(e)) => return Err(e.into()),
                Err(_) => return Err(RequestError::BadFingerprint),
            },
            // Understood or harmless in a Binding request: ICE connectivity
            // checks (RFC 8445 §7.1) and authenticated Bindings carry these.
            attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::USERHASH
            | attr::REALM
            | attr::NONCE
            | attr::PRIORITY
            | attr::USE_CANDIDATE => {}
            t => req.unknown.note(t),
        }
    }
    Ok(req)
}

/// The addresses a server reports in a success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessFields {
    /// The client's reflexive address (XOR-MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// Where the response is sent from (RESPONSE-ORIGIN, RFC 5780 §7.3).
    pub response_origin: Option<SocketAddr>,
    /// The alternate address and port (OTHER-ADDRESS, RFC 5780 §7.4).
    pub other_address: Option<SocketAddr>,
    /// Length of a PADDING attribute to add (RFC 5780 §7.6), if any.
    pub padding: Option<u16>,
    /// Add FINGERPRINT (when the request had one).
    pub fingerprint: bool,
}

/// Write a Binding success response. No SOFTWARE, no MAPPED-ADDRESS: the
/// answer stays small so the server is a poor reflection amplifier.
pub fn write_success(
    out: &mut [u8],
    transaction_id: &[u8; 12],
    f: &SuccessFields,
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out, method::BINDING, Class::Success, transaction_id)?;
    w.xor_address(attr::XOR_MAPPED_ADDRESS, f.mapped)?;
    if let Some(a) = f.response_origin {
        w.address(attr::RESPONSE_ORIGIN, a)?;
    }
    if let Some(a) = f.other_address {
        w.address(attr::OTHER_ADDRESS, a)?;
    }
    if let Some(n) = f.padding {
        w.attribute(attr::PADDING, n as usize)?.fill(0);
    }
    if f.fingerprint {
        w.fingerprint()
    } else {
        Ok(w.finish())
    }
}

/// Write an error response for `method` with `code` and no reason phrase,
/// listing `unknown` attributes when the code is 420 (RFC 8489 §14.9).
pub fn write_error(
    out: &mut [u8],
    method: u16,
    transaction_id: &[u8; 12],
    code: u16,
    unknown: &[u16],
    fingerprint: bool,
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out, method, Class::Error, transaction_id)?;
    w.error_code(code, "")?;
    if !unknown.is_empty() {
        w.unknown_attributes(unknown)?;
    }
    if fingerprint {
        w.fingerprint()
    } else {
        Ok(w.finish())
    }
}

/// Options for a client Binding request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// CHANGE-REQUEST flags; `None` leaves the attribute out.
    pub change: Option<ChangeRequest>,
    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub response_port: Option<u16>,
    /// PADDING of this many bytes (RFC 5780 §7.6).
    pub padding: Option<u16>,
    /// Add FINGERPRINT.
    pub fingerprint: bool,
}

/// Write a Binding request.
pub fn write_request(
    out: &mut [u8],
    transaction_id: &[u8; 12],
    opts: &RequestOptions,
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(out, method::BINDING, Class::Request, transaction_id)?;
    if let Some(c) = opts.change {
        w.u32(attr::CHANGE_REQUEST, c.to_u32())?;
    }
    if let Some(p) = opts.response_port {
        w.u32(attr::RESPONSE_PORT, (p as u32) << 16)?;
    }
    if let Some(n) = opts.padding {
        w.attribute(attr::PADDING, n as usize)?.fill(0);
    }
    if opts.fingerprint {
        w.fingerprint()
    } else {
        Ok(w.finish())
    }
}

/// A Binding response as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Transaction ID, to match with the request.
    pub transaction_id: [u8; 12],
    /// `Ok` for a success response, `Err(code)` for an error response.
    pub outcome: Result<(), u16>,
    /// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from servers that send only that.
    pub mapped: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780 §7.3), or SOURCE-ADDRESS (RFC 3489).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780 §7.4), or CHANGED-ADDRESS (RFC 3489).
    pub other_address: Option<SocketAddr>,
}

/// Why a datagram is not a usable Binding response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed STUN message: {0}")]
    Malformed(#[from] RawError),
    #[error("not a Binding response (type {0:#06x})")]
    NotBindingResponse(u16),
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

/// The first value of each attribute a Binding response is read for.
#[derive(Default)]
struct Found<'a> {
    xor_mapped: Option<&'a [u8]>,
    mapped: Option<&'a [u8]>,
    response_origin: Option<&'a [u8]>,
    source_address: Option<&'a [u8]>,
    other_address: Option<&'a [u8]>,
    changed_address: Option<&'a [u8]>,
    error_code: Option<&'a [u8]>,
}

/// Parse a Binding success or error response.
pub fn parse_response(buf: &[u8]) -> Result<Response, ResponseError> {
    let h = raw::parse_datagram(buf)?;
    let class = h.class();
    if h.method() != method::BINDING || !matches!(class, Class::Success | Class::Error) {
        return Err(ResponseError::NotBindingResponse(h.msg_type));
    }
    let tid = h.transaction_id;
    let mut r = Response {
        transaction_id: tid,
        outcome: Ok(()),
        mapped: None,
        response_origin: None,
        other_address: None,
    };
    // The first of each attribute counts (RFC 8489 §14), and nothing after
    // the integrity attributes (§14.5). RFC 5780's attributes win over
    // their RFC 3489 forerunners wherever they stand.
    let mut first = Found::default();
    for a in Attributes::new(buf, &h).counted() {
        let a = a?;
        let slot = match a.typ {
            attr::XOR_MAPPED_ADDRESS => &mut first.xor_mapped,
            attr::MAPPED_ADDRESS => &mut first.mapped,
            attr::RESPONSE_ORIGIN => &mut first.response_origin,
            attr::SOURCE_ADDRESS => &mut first.source_address,
            attr::OTHER_ADDRESS => &mut first.other_address,
            attr::CHANGED_ADDRESS => &mut first.changed_address,
            attr::ERROR_CODE => &mut first.error_code,
            attr::FINGERPRINT => {
                integrity::check_fingerprint(buf, &h).map_err(|_| ResponseError::BadFingerprint)?;
                continue;
            }
            _ => continue,
        };
        slot.get_or_insert(a.value);
    }
    let address = |v: Option<&[u8]>| v.and_then(raw::decode_address);
    r.mapped = first
        .xor_mapped
        .and_then(|v| raw::decode_xor_address(v, &tid))
        .or_else(|| address(first.mapped));
    r.response_origin = address(first.response_origin).or_else(|| address(first.source_address));
    r.other_address = address(first.other_address).or_else(|| address(first.changed_address));
    let code = first.error_code.and_then(raw::decode_error_code);
    if class == Class::Error {
        // An error response without ERROR-CODE is malformed; report it as 400
        // rather than inventing a success.
        r.outcome = Err(code.unwrap_or(400));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn request_round_trip_with_rfc5780_attributes() {
        let mut buf = [0u8; 64];
        let tid = [1u8; 12];
        let opts = RequestOptions {
            change: Some(ChangeRequest::BOTH),
            response_port: Some(4242),
            padding: Some(6),
            fingerprint: true,
        };
        let n = write_request(&mut buf, &tid, &opts).unwrap();
        let r = parse_request(&buf[..n]).unwrap();
        assert_eq!(r.padding, Some(6));
        assert_eq!(r.transaction_id, tid);
        assert_eq!(r.change, Some(ChangeRequest::BOTH));
        assert_eq!(r.response_port, Some(4242));
        assert!(r.fingerprint);
        assert!(r.unknown().is_empty());
    }

    #[test]
    fn bad_fingerprint_and_unknown_attributes() {
        let mut buf = [0u8; 64];
        let n = write_request(
            &mut buf,
            &[2; 12],
            &RequestOptions {
                fingerprint: true,
                ..Default::default()
            },
        )
        .unwrap();
        buf[n - 1] ^= 0xFF;
        assert_eq!(parse_request(&buf[..n]), Err(RequestError::BadFingerprint));

        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[3; 12]).unwrap();
        w.u32(attr::RESPONSE_ADDRESS, 0).unwrap();
        w.u32(0x7777, 0).unwrap();
        w.u32(attr::SOFTWARE, 0).unwrap();
        let n = w.finish();
        let r = parse_request(&buf[..n]).unwrap();
        assert_eq!(r.unknown(), &[attr::RESPONSE_ADDRESS, 0x7777]);
    }

    #[test]
    fn success_response_round_trip() {
        let mut buf = [0u8; 128];
        let tid = [4u8; 12];
        let f = SuccessFields {
            mapped: addr("[2001:db8::5]:40000"),
            response_origin: Some(addr("192.0.2.1:3478")),
            other_address: Some(addr("192.0.2.2:3479")),
            padding: Some(5),
            fingerprint: true,
        };
        let n = write_success(&mut buf, &tid, &f).unwrap();
        let r = parse_response(&buf[..n]).unwrap();
        assert_eq!(r.outcome, Ok(()));
        assert_eq!(r.mapped, Some(f.mapped));
        assert_eq!(r.response_origin, f.response_origin);
        assert_eq!(r.other_address, f.other_address);
    }

    #[test]
    fn error_response_round_trip() {
        let mut buf = [0u8; 64];
        let n = write_error(
            &mut buf,
            method::BINDING,
            &[5; 12],
            420,
            &[attr::CHANGE_REQUEST],
            false,
        )
        .unwrap();
        // No reason phrase, no SOFTWARE: 20 header + 8 ERROR-CODE + 8 UNKNOWN-ATTRIBUTES.
        assert_eq!(n, 36);
        let r = parse_response(&buf[..n]).unwrap();
        assert_eq!(r.outcome, Err(420));
    }

    // Regression (found by the stun-rs differential oracle): the parsers
    // took the last of a repeated attribute, and acted on attributes after
    // MESSAGE-INTEGRITY, which RFC 8489 §14 and §14.5 say to ignore.
    #[test]
    fn request_first_occurrence_counts_and_nothing_after_integrity() {
        let mut buf = [0u8; 128];
        let tid = [4u8; 12];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &tid).unwrap();
        w.u32(attr::RESPONSE_PORT, 1000 << 16).unwrap();
        w.u32(attr::RESPONSE_PORT, 2000 << 16).unwrap();
        w.message_integrity(b"key").unwrap();
        w.u32(attr::CHANGE_REQUEST, ChangeRequest::BOTH.to_u32())
            .unwrap();
        w.bytes(attr::PADDING, &[0; 8]).unwrap();
        // Unknown and comprehension-required, but ignored: no 420.
        w.u32(0x0033, 0).unwrap();
        let n = w.fingerprint().unwrap();
        let req = parse_request(&buf[..n]).unwrap();
        assert_eq!(req.response_port, Some(1000));
        assert_eq!(req.change, None);
        assert_eq!(req.padding, None);
        assert!(req.unknown().is_empty());
        assert!(req.fingerprint);
    }

    #[test]
    fn response_first_occurrence_counts_and_nothing_after_integrity() {
        let mut buf = [0u8; 128];
        let tid = [5u8; 12];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Success, &tid).unwrap();
        w.xor_address(attr::XOR_MAPPED_ADDRESS, addr("192.0.2.1:1"))
            .unwrap();
        w.xor_address(attr::XOR_MAPPED_ADDRESS, addr("192.0.2.2:2"))
            .unwrap();
        w.message_integrity_sha256(b"key").unwrap();
        w.address(attr::OTHER_ADDRESS, addr("192.0.2.3:3")).unwrap();
        let n = w.finish();
        let r = parse_response(&buf[..n]).unwrap();
        assert_eq!(r.mapped, Some(addr("192.0.2.1:1")));
        assert_eq!(r.other_address, None);

        let mut w = Writer::new(&mut buf, method::BINDING, Class::Error, &tid).unwrap();
        w.message_integrity(b"key").unwrap();
        w.error_code(392, "").unwrap();
        let n = w.finish();
        // The ERROR-CODE does not count: an error response without one.
        assert_eq!(parse_response(&buf[..n]).unwrap().outcome, Err(400));
    }

    #[test]
    fn sizes_are_small() {
        let mut buf = [0u8; 128];
        let f = SuccessFields {
            mapped: addr("192.0.2.9:1"),
            response_origin: None,
            other_address: None,
            padding: None,
            fingerprint: false,
        };
        assert_eq!(write_success(&mut buf, &[0; 12], &f).unwrap(), 32);
        let f = SuccessFields {
            response_origin: Some(addr("192.0.2.1:1")),
            other_address: Some(addr("192.0.2.2:2")),
            ..f
        };
        assert_eq!(write_success(&mut buf, &[0; 12], &f).unwrap(), 56);
    }
}
