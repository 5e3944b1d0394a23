//! Zero-copy view of STUN messages: header parsing, attribute walking and the
//! numeric constants every other module uses.
//!
//! Nothing here allocates. This walker and [`crate::writer`] are natkit's
//! one STUN codec, on every path; `stun-rs` checks them as an independent
//! differential oracle (`proto/tests/differential.rs` and the `differential`
//! fuzz target), never in production.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// RFC 8489 §5: the fixed magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Largest STUN message we accept. RFC 8489 §6.1 keeps messages under the path
/// MTU; a UDP datagram cannot be larger than this anyway.
pub const MAX_MESSAGE_LEN: usize = 65_535 + HEADER_LEN;

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17).
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
    /// RFC 6062 §6.1: TCP allocations.
    pub const CONNECT: u16 = 0x00A;
    pub const CONNECTION_BIND: u16 = 0x00B;
    pub const CONNECTION_ATTEMPT: u16 = 0x00C;
}

/// STUN message classes (RFC 8489 §5), as the two class bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// Attribute types (RFC 8489 §18.3, RFC 5780 §7, RFC 8656 §18, RFC 8445 §16).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// RFC 6062 §6.2: which peer data connection (TCP allocations).
    pub const CONNECTION_ID: u16 = 0x002A;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const ICMP: u16 = 0x8004;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// RFC 8489 §14: types 0x0000-0x7FFF are comprehension-required.
    pub fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// Why bytes are not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("shorter than a STUN header")]
    Truncated,
    #[error("first two bits are not zero")]
    NotStun,
    #[error("wrong magic cookie")]
    BadCookie,
    #[error("message length is not a multiple of 4")]
    BadLength,
    #[error("message length field does not match the data")]
    LengthMismatch,
    #[error("an attribute runs past the end of the message")]
    AttributeOverrun,
}

/// The fixed STUN header (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The 14-bit message type (method and class interleaved).
    pub msg_type: u16,
    /// Length of the attribute section in bytes.
    pub length: u16,
    /// The 96-bit transaction ID.
    pub transaction_id: [u8; 12],
}

impl Header {
    /// The method, with the class bits taken out (RFC 8489 §5).
    pub fn method(&self) -> u16 {
        let t = self.msg_type;
        (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
    }

    /// The message class.
    pub fn class(&self) -> Class {
        match ((self.msg_type >> 7) & 0b10) | ((self.msg_type >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }

    /// Total size of the message: header plus attributes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.length as usize
    }
}

/// Compose a message type from method and class (RFC 8489 §5, figure 3).
pub const fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

impl Class {
    /// The class of a message type.
    pub fn of(msg_type: u16) -> Class {
        Header {
            msg_type,
            length: 0,
            transaction_id: [0; 12],
        }
        .class()
    }
}

/// Parse the header of the STUN message at the start of `buf`, checking the
/// leading zero bits, the magic cookie, the length's alignment and that the
/// whole message is present. `buf` may hold more bytes after the message
/// (stream transports); for a datagram, compare [`Header::total_len`] with the
/// datagram length.
pub fn parse_header(buf: &[u8]) -> Result<Header, RawError> {
    if buf.len() < HEADER_LEN {
        return Err(RawError::Truncated);
    }
    let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
    if msg_type & 0xC000 != 0 {
        return Err(RawError::NotStun);
    }
    let length = u16::from_be_bytes([buf[2], buf[3]]);
    if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
        return Err(RawError::BadCookie);
    }
    if length % 4 != 0 {
        return Err(RawError::BadLength);
    }
    if HEADER_LEN + length as usize > buf.len() {
        return Err(RawError::LengthMismatch);
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&buf[8..20]);
    Ok(Header {
        msg_type,
        length,
        transaction_id,
    })
}

/// Parse a STUN message that must fill the whole datagram.
pub fn parse_datagram(buf: &[u8]) -> Result<Header, RawError> {
    let h = parse_header(buf)?;
    if h.total_len() != buf.len() {
        return Err(RawError::LengthMismatch);
    }
    Ok(h)
}

/// One attribute seen by [`Attributes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Attribute value, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute's type field from the start of the message.
    pub offset: usize,
}

/// Iterator over the attributes of a message whose header has been checked
/// with [`parse_header`]. Yields an error (once) if an attribute overruns.
pub struct Attributes<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
    failed: bool,
}

impl<'a> Attributes<'a> {
    /// Walk the attributes of `msg` (the message, starting at its header).
    pub fn new(msg: &'a [u8], header: &Header) -> Self {
        Attributes {
            msg,
            pos: HEADER_LEN,
            end: header.total_len().min(msg.len()),
            failed: false,
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<RawAttribute<'a>, RawError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        if self.pos + 4 > self.end {
            self.failed = true;
            return Some(Err(RawError::AttributeOverrun));
        }
        let typ = u16::from_be_bytes([self.msg[self.pos], self.msg[self.pos + 1]]);
        let len = u16::from_be_bytes([self.msg[self.pos + 2], self.msg[self.pos + 3]]) as usize;
        let start = self.pos + 4;
        if start + len > self.end {
            self.failed = true;
            return Some(Err(RawError::AttributeOverrun));
        }
        let offset = self.pos;
        // RFC 8489 §14: values are padded to a multiple of 4 bytes.
        self.pos = start + ((len + 3) & !3);
        Some(Ok(RawAttribute {
            typ,
            value: &self.msg[start..start + len],
            offset,
        }))
    }
}

impl<'a> Attributes<'a> {
    /// Only the attributes a receiver acts on: RFC 8489 §14.5 and §14.6 say
    /// to ignore everything after MESSAGE-INTEGRITY except
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and everything after
    /// MESSAGE-INTEGRITY-SHA256 except FINGERPRINT; nothing follows
    /// FINGERPRINT (§14.7). Framing errors anywhere are still reported: the
    /// ignored attributes must be well framed too.
    pub fn counted(self) -> Counted<'a> {
        Counted {
            inner: self,
            cutoff: IntegrityCutoff::default(),
        }
    }
}

/// The attributes of a message that count; see [`Attributes::counted`].
pub struct Counted<'a> {
    inner: Attributes<'a>,
    cutoff: IntegrityCutoff,
}

impl<'a> Iterator for Counted<'a> {
    type Item = Result<RawAttribute<'a>, RawError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next()? {
                Ok(a) if !self.cutoff.counts(a.typ) => continue,
                other => return Some(other),
            }
        }
    }
}

/// The RFC 8489 §14.5-§14.7 rule of which attributes count, fed the
/// attribute types of a message in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrityCutoff {
    integrity: bool,
    integrity_sha256: bool,
    fingerprint: bool,
}

impl IntegrityCutoff {
    /// Whether the next attribute, of type `typ`, counts.
    pub fn counts(&mut self, typ: u16) -> bool {
        let counts = match typ {
            attr::MESSAGE_INTEGRITY_SHA256 => !self.integrity_sha256 && !self.fingerprint,
            attr::FINGERPRINT => !self.fingerprint,
            _ => !self.integrity && !self.integrity_sha256 && !self.fingerprint,
        };
        if counts {
            match typ {
                attr::MESSAGE_INTEGRITY => self.integrity = true,
                attr::MESSAGE_INTEGRITY_SHA256 => self.integrity_sha256 = true,
                attr::FINGERPRINT => self.fingerprint = true,
                _ => {}
            }
        }
        counts
    }
}

/// The unknown comprehension-required attributes of a request, for a 420
/// answer's UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1). Keeps the first
/// [`Unknown::CAPACITY`], which is all a client needs to see what failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unknown {
    types: [u16; Unknown::CAPACITY],
    len: usize,
}

impl Unknown {
    /// Most attribute types kept.
    pub const CAPACITY: usize = 4;

    /// Record `t` if it is comprehension-required (the caller has already
    /// decided it does not understand it).
    pub fn note(&mut self, t: u16) {
        if attr::is_comprehension_required(t)
            && self.len < Self::CAPACITY
            && !self.as_slice().contains(&t)
        {
            self.types[self.len] = t;
            self.len += 1;
        }
    }

    /// The recorded types.
    pub fn as_slice(&self) -> &[u16] {
        &self.types[..self.len]
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Address family codes used in address attributes (RFC 8489 §14.1).
pub const FAMILY_IPV4: u8 = 0x01;
/// IPv6 family code.
pub const FAMILY_IPV6: u8 = 0x02;

/// Decode a plain address attribute value (MAPPED-ADDRESS, RESPONSE-ORIGIN,
/// OTHER-ADDRESS, ALTERNATE-SERVER).
pub fn decode_address(value: &[u8]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([value[2], value[3]]);
    match (value[1], value.len()) {
        (FAMILY_IPV4, 8) => {
            let ip = Ipv4Addr::new(value[4], value[5], value[6], value[7]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (FAMILY_IPV6, 20) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&value[4..20]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(b)), port))
        }
        _ => None,
    }
}

/// Decode an XOR address attribute value (XOR-MAPPED-ADDRESS,
/// XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS; RFC 8489 §14.2).
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let plain = decode_address(value)?;
    Some(xor_address(plain, transaction_id))
}

/// Longest text value accepted in REALM, NONCE, SOFTWARE and an ERROR-CODE
/// reason phrase: RFC 8489 §14.8-§14.10 and §14.14 allow fewer than 128
/// characters, "as long as 763 bytes when decoding them".
pub const MAX_TEXT_LEN: usize = 763;

/// Longest USERNAME accepted: RFC 5389 §15.3 allows "less than 513 bytes"
/// (RFC 8489 §14.3 lowered it to fewer than 509 for senders; clients of the
/// older RFC are still accepted).
pub const MAX_USERNAME_LEN: usize = 512;

/// Decode an ERROR-CODE attribute value (RFC 8489 §14.8): the code (class ×
/// 100 + number) and the reason phrase. `None` when the value is shorter
/// than 4 bytes, the class is outside 3-6, the number above 99, or the
/// reason is not UTF-8 of at most [`MAX_TEXT_LEN`] bytes. The 21 reserved
/// bits are ignored.
pub fn decode_error(value: &[u8]) -> Option<(u16, &str)> {
    if value.len() < 4 || value[3] > 99 {
        return None;
    }
    let code = (value[2] & 0x7) as u16 * 100 + value[3] as u16;
    if !(300..700).contains(&code) {
        return None;
    }
    Some((code, decode_text(&value[4..], MAX_TEXT_LEN)?))
}

/// The numeric code of an ERROR-CODE attribute value; see [`decode_error`].
pub fn decode_error_code(value: &[u8]) -> Option<u16> {
    decode_error(value).map(|(code, _)| code)
}

/// Decode a text attribute value (USERNAME, REALM, NONCE, SOFTWARE): UTF-8
/// of at most `max_len` bytes ([`MAX_USERNAME_LEN`] or [`MAX_TEXT_LEN`]).
pub fn decode_text(value: &[u8], max_len: usize) -> Option<&str> {
    if value.len() > max_len {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// Decode a 32-bit attribute value (LIFETIME, PRIORITY, CHANGE-REQUEST...):
/// exactly 4 bytes.
pub fn decode_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

/// Decode a 64-bit attribute value (ICE-CONTROLLING, ICE-CONTROLLED,
/// RESERVATION-TOKEN): exactly 8 bytes.
pub fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// Decode a value whose first byte is the field and whose other 3 bytes are
/// reserved (REQUESTED-TRANSPORT's protocol, RFC 8656 §18.7;
/// REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY, §18.8, §18.11):
/// exactly 4 bytes. The byte is not checked here: an unknown family is a
/// 440 answer, an unknown protocol a 442, not a malformed message.
pub fn decode_leading_byte(value: &[u8]) -> Option<u8> {
    decode_u32(value).map(|v| (v >> 24) as u8)
}

/// Decode CHANNEL-NUMBER (RFC 8656 §18.1): a 16-bit number and 16 reserved
/// bits, exactly 4 bytes. The range (0x4000-0x4FFF) is the caller's check:
/// a number outside it is a 400 answer, not a malformed message.
pub fn decode_channel_number(value: &[u8]) -> Option<u16> {
    leading_u16(value)
}

/// Decode RESPONSE-PORT (RFC 5780 §7.5): a 16-bit port and 2 bytes of
/// padding, exactly 4 bytes.
pub fn decode_response_port(value: &[u8]) -> Option<u16> {
    leading_u16(value)
}

/// The first 16 bits of a 4-byte value whose last 16 bits are reserved.
fn leading_u16(value: &[u8]) -> Option<u16> {
    decode_u32(value).map(|v| (v >> 16) as u16)
}

/// Decode PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm number, given
/// that the parameters its length field announces are present.
pub fn decode_password_algorithm(value: &[u8]) -> Option<u16> {
    if value.len() < 4 {
        return None;
    }
    let params = u16::from_be_bytes([value[2], value[3]]) as usize;
    (4 + params <= value.len()).then(|| u16::from_be_bytes([value[0], value[1]]))
}

/// XOR an address with the magic cookie and transaction ID. The operation is
/// its own inverse, so it both encodes and decodes.
pub fn xor_address(addr: SocketAddr, transaction_id: &[u8; 12]) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            let x = [
                o[0] ^ cookie[0],
                o[1] ^ cookie[1],
                o[2] ^ cookie[2],
                o[3] ^ cookie[3],
            ];
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port)
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            for (i, b) in o.iter_mut().enumerate() {
                *b ^= if i < 4 {
                    cookie[i]
                } else {
                    transaction_id[i - 4]
                };
            }
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_method_and_class() {
        for method in [
            method::BINDING,
            method::ALLOCATE,
            method::CHANNEL_BIND,
            0xFFF,
        ] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(method, class);
                let h = Header {
                    msg_type: t,
                    length: 0,
                    transaction_id: [0; 12],
                };
                assert_eq!(h.method(), method);
                assert_eq!(h.class(), class);
            }
        }
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
    }

    #[test]
    fn header_checks() {
        let mut m = [0u8; 20];
        m[1] = 1;
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert!(parse_datagram(&m).is_ok());
        assert_eq!(parse_header(&m[..19]), Err(RawError::Truncated));
        let mut bad = m;
        bad[4] = 0;
        assert_eq!(parse_header(&bad), Err(RawError::BadCookie));
        let mut bad = m;
        bad[0] = 0x80;
        assert_eq!(parse_header(&bad), Err(RawError::NotStun));
        let mut bad = m;
        bad[3] = 2;
        assert_eq!(parse_header(&bad), Err(RawError::BadLength));
        let mut bad = m;
        bad[3] = 4;
        assert_eq!(parse_header(&bad), Err(RawError::LengthMismatch));
    }

    #[test]
    fn attribute_overrun_is_reported_once() {
        let mut m = vec![0u8; 28];
        m[1] = 1;
        m[3] = 8;
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m[20..22].copy_from_slice(&0x8022u16.to_be_bytes());
        m[22..24].copy_from_slice(&9u16.to_be_bytes());
        let h = parse_datagram(&m).unwrap();
        let v: Vec<_> = Attributes::new(&m, &h).collect();
        assert_eq!(v, vec![Err(RawError::AttributeOverrun)]);
    }

    #[test]
    fn counted_stops_after_the_integrity_attributes() {
        use crate::writer::Writer;
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[1; 12]).unwrap();
        w.u32(attr::PRIORITY, 1).unwrap();
        w.message_integrity(b"k").unwrap();
        w.u32(attr::PRIORITY, 2).unwrap(); // ignored (RFC 8489 §14.5)
        w.message_integrity(b"k").unwrap(); // ignored: a second one
        w.message_integrity_sha256(b"k").unwrap();
        w.u32(attr::LIFETIME, 3).unwrap(); // ignored (§14.6)
        let n = w.fingerprint().unwrap();
        let h = parse_datagram(&buf[..n]).unwrap();
        let types: Vec<u16> = Attributes::new(&buf[..n], &h)
            .counted()
            .map(|a| a.unwrap().typ)
            .collect();
        assert_eq!(
            types,
            [
                attr::PRIORITY,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
                attr::FINGERPRINT
            ]
        );
    }

    #[test]
    fn typed_values() {
        assert_eq!(decode_error(&[0, 0, 4, 38, b'S']), Some((438, "S")));
        // Class 7, number 100, a reason that is not UTF-8: malformed.
        assert_eq!(decode_error(&[0, 0, 7, 0]), None);
        assert_eq!(decode_error(&[0, 0, 4, 100]), None);
        assert_eq!(decode_error(&[0, 0, 4, 1, 0xFF]), None);
        assert_eq!(decode_error_code(&[0xFF, 0xFF, 0xFC, 1]), Some(401));
        assert_eq!(
            decode_text(&[b'a'; 512], MAX_USERNAME_LEN).map(str::len),
            Some(512)
        );
        assert_eq!(decode_text(&[b'a'; 513], MAX_USERNAME_LEN), None);
        assert_eq!(decode_u32(&[0, 0, 1, 0]), Some(256));
        assert_eq!(decode_u32(&[0, 0, 1, 0, 0]), None);
        assert_eq!(decode_u64(&[0; 4]), None);
        assert_eq!(
            decode_channel_number(&[0x40, 0x01, 0xAA, 0xBB]),
            Some(0x4001)
        );
        assert_eq!(decode_response_port(&[0x0D, 0x96, 0, 0]), Some(3478));
        assert_eq!(decode_leading_byte(&[17, 1, 2, 3]), Some(17));
        assert_eq!(decode_password_algorithm(&[0, 2, 0, 0]), Some(2));
        assert_eq!(decode_password_algorithm(&[0, 2, 0, 4, 1, 2]), None);
        assert_eq!(
            decode_password_algorithm(&[0, 2, 0, 2, 1, 2, 0, 0]),
            Some(2)
        );
    }

    #[test]
    fn xor_address_is_an_involution() {
        let tid = [7u8; 12];
        for a in ["192.0.2.1:3478", "[2001:db8::1]:5349"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_ne!(xor_address(a, &tid), a);
            assert_eq!(xor_address(xor_address(a, &tid), &tid), a);
        }
    }
}
