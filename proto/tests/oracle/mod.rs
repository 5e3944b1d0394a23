//! The differential oracle: the same bytes go through natkit's walker
//! (`raw`, `integrity`, and the parsers built on them: `binding`,
//! `turn::request`) and through `stun-rs`, an independent decoder, and the
//! two must agree on whether the datagram is a valid STUN message and, when
//! both accept it, on the header and on every attribute both understand.
//!
//! Shared by `proto/tests/differential.rs` (proptest) and the `differential`
//! fuzz target (`proto/fuzz/fuzz_targets/differential.rs` includes this
//! file), so both check the same thing.
//!
//! Validity is judged with integrity checking on: `stun-rs` with a decoder
//! context holding the key (FINGERPRINT, MESSAGE-INTEGRITY and
//! MESSAGE-INTEGRITY-SHA256 verified), and the walker as natkit's servers
//! use it: header, attribute framing, the value of each attribute that
//! counts (RFC 8489 §14.5), FINGERPRINT, and the integrity attribute.
//!
//! # Allowed differences
//!
//! Places where the RFCs leave room and the two decoders take different
//! sides. Each is recognised narrowly (the attribute and the reason), so a
//! walker bug cannot hide behind it.
//!
//! 1. [`Difference::OverlongValue`]: a fixed-size value (an address, a
//!    32/64-bit number, CHANNEL-NUMBER, REQUESTED-TRANSPORT, the address
//!    families, RESPONSE-PORT, FINGERPRINT) of the wrong length. `stun-rs`
//!    reads what it needs from the front and ignores the rest (and takes a
//!    2-byte RESPONSE-PORT); the walker wants the size RFC 8489 §14.1-§14.2,
//!    RFC 8656 §18 and RFC 5780 §7.5 define, as a value of another size is
//!    not that attribute.
//! 2. [`Difference::TextRules`]: `stun-rs` checks text beyond UTF-8 and
//!    length: USERNAME through the PRECIS OpaqueString profile (RFC 8265),
//!    REALM and NONCE against the quoted-string grammar, PADDING as UTF-8;
//!    and it allows a USERNAME of up to 763 bytes. These are sender rules
//!    (RFC 8489 §14.3, §14.9, §14.10; RFC 5780 §7.6 says PADDING's value
//!    does not matter): natkit compares these values byte for byte with the
//!    ones it issued, so it checks only UTF-8 and the length a receiver
//!    must accept (USERNAME: RFC 5389's "less than 513 bytes").
//! 3. [`Difference::TruncatedSha256`]: MESSAGE-INTEGRITY-SHA256 shorter
//!    than 32 bytes. RFC 8489 §14.6 allows truncation to 16-28 bytes in
//!    steps of 4; `stun-rs` takes only 32.
//! 4. [`Difference::AfterFingerprint`]: attributes after FINGERPRINT.
//!    `stun-rs` ignores them; the walker rejects the message, because
//!    RFC 8489 §14.7 makes FINGERPRINT the last attribute, and its check is
//!    what tells STUN apart from other protocols on a shared port.
//! 5. [`Difference::BothIntegrities`]: a message with both integrity
//!    attributes. RFC 8489 prefers MESSAGE-INTEGRITY-SHA256 when both are
//!    present (§9.1.4, §9.2.4), and natkit's `integrity::verify` checks
//!    that one alone; `stun-rs` verifies both, so a wrong MESSAGE-INTEGRITY
//!    next to a right MESSAGE-INTEGRITY-SHA256 divides them.
//! 6. [`Difference::UnknownFamily`]: REQUESTED-ADDRESS-FAMILY or
//!    ADDITIONAL-ADDRESS-FAMILY with a family other than 0x01 and 0x02.
//!    RFC 8656 §7.2 answers that with 440 (Address Family not Supported),
//!    so it is a well-formed request to natkit; `stun-rs` rejects it.
//! 7. [`Difference::NotRead`]: a malformed value in an attribute natkit
//!    never reads: one RFC 8489 §14.5 says to ignore (after the integrity
//!    attributes), or one of UNKNOWN-ATTRIBUTES, USERHASH,
//!    PASSWORD-ALGORITHMS (compared as bytes with the server's offer,
//!    §9.2.5), ADDRESS-ERROR-CODE, ICMP. `stun-rs` decodes them all.

#![allow(dead_code)] // each includer uses its part

use std::net::SocketAddr;

use natkit_proto::binding::{self, ChangeRequest};
use natkit_proto::integrity::{self, IntegrityError, IntegrityKind};
use natkit_proto::raw::{self, attr, method, Attributes, Class, Header, RawError};
use natkit_proto::turn::request;
use stun_rs::attributes::discovery::ChangeRequestFlags;
use stun_rs::error::{StunDecodeError, StunErrorLevel};
use stun_rs::{
    AddressFamily, DecoderContextBuilder, HMACKey, MessageClass, MessageDecoderBuilder,
    StunAttribute, StunMessage,
};

/// The short-term password of the messages the generators protect.
pub const PASSWORD: &str = "natkit-oracle";

/// The key for [`PASSWORD`].
pub fn key() -> HMACKey {
    HMACKey::new_short_term(PASSWORD).expect("ASCII password")
}

/// Append an attribute (with padding) to a message and fix the header's
/// length field: for generators that build what the writer will not
/// (truncated MACs, attributes after FINGERPRINT).
pub fn append(m: &mut Vec<u8>, typ: u16, value: &[u8]) {
    m.extend_from_slice(&typ.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    m.resize((m.len() + 3) & !3, 0);
    let len = (m.len() - raw::HEADER_LEN) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

/// Append an attribute of `len` bytes whose value is `compute` of the
/// message before it, with the length field already counting it (how
/// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are computed, RFC 8489 §14.5-§14.7).
pub fn append_computed(m: &mut Vec<u8>, typ: u16, len: usize, compute: impl Fn(&[u8]) -> Vec<u8>) {
    let start = m.len();
    append(m, typ, &vec![0; len]);
    let v = compute(&m[..start]);
    m[start + 4..start + 4 + len].copy_from_slice(&v[..len]);
}

/// What the two decoders made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Both accepted, and agreed on every value both understand.
    BothAccept,
    /// Both rejected.
    BothReject,
    /// They differ in one of the allowed ways.
    Allowed(Difference),
}

/// The allowed differences; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Difference {
    OverlongValue,
    TextRules,
    TruncatedSha256,
    AfterFingerprint,
    BothIntegrities,
    UnknownFamily,
    NotRead,
}

/// Feed `bytes` (one datagram) to both decoders with `key` for integrity.
/// `Err` describes a disagreement.
pub fn check(bytes: &[u8], key: &HMACKey) -> Result<Outcome, String> {
    let walker = walk(bytes, key.as_bytes());
    let theirs = stun_rs_decode(bytes, key);
    match (walker, theirs) {
        (Ok(w), Ok(msg)) => {
            compare(bytes, &w, &msg)?;
            Ok(Outcome::BothAccept)
        }
        (Err(_), Err(_)) => Ok(Outcome::BothReject),
        (Ok(w), Err(e)) => stun_rs_only_rejects(&w, &e)
            .map(Outcome::Allowed)
            .ok_or_else(|| format!("walker accepts, stun-rs rejects: {e}; walker saw {w:?}")),
        (Err(why), Ok(msg)) => walker_only_rejects(&why)
            .map(Outcome::Allowed)
            .ok_or_else(|| {
                format!("stun-rs accepts, walker rejects: {why:?}; stun-rs saw {msg:?}")
            }),
    }
}

/// Why `stun-rs` rejects a datagram.
#[derive(Debug)]
enum TheirError {
    Decode(StunDecodeError),
    /// A message followed by more bytes: one datagram holds one message
    /// (RFC 8489 §6.1), and `stun-rs` decodes a prefix.
    TrailingBytes,
}

impl std::fmt::Display for TheirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TheirError::Decode(e) => write!(f, "{e}"),
            TheirError::TrailingBytes => f.write_str("bytes after the message"),
        }
    }
}

fn stun_rs_decode(bytes: &[u8], key: &HMACKey) -> Result<StunMessage, TheirError> {
    let ctx = DecoderContextBuilder::default()
        .with_key(key.clone())
        .with_validation()
        .build();
    let (msg, size) = MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(bytes)
        .map_err(TheirError::Decode)?;
    if size != bytes.len() {
        return Err(TheirError::TrailingBytes);
    }
    Ok(msg)
}

/// One attribute as the walker saw it.
#[derive(Debug, Clone, Copy)]
struct Attr<'a> {
    typ: u16,
    value: &'a [u8],
    /// Whether it counts (RFC 8489 §14.5), as `Attributes::counted` says.
    counted: bool,
}

/// A message the walker accepts.
#[derive(Debug)]
struct Walked<'a> {
    header: Header,
    attrs: Vec<Attr<'a>>,
}

impl<'a> Walked<'a> {
    fn counted(&self) -> impl Iterator<Item = &Attr<'a>> {
        self.attrs.iter().filter(|a| a.counted)
    }

    fn first(&self, typ: u16) -> Option<&'a [u8]> {
        self.counted().find(|a| a.typ == typ).map(|a| a.value)
    }
}

/// Why the walker rejects a message.
#[derive(Debug)]
enum Rejected<'a> {
    Framing(RawError),
    /// A counted attribute whose value the walker's decoder refuses.
    Value(Attr<'a>),
    Fingerprint(IntegrityError, Option<Attr<'a>>),
    Integrity(IntegrityError),
}

/// The walker's verdict, built only from natkit-proto's own functions.
fn walk<'a>(bytes: &'a [u8], key: &[u8]) -> Result<Walked<'a>, Rejected<'a>> {
    let header = raw::parse_datagram(bytes).map_err(Rejected::Framing)?;
    let mut attrs = Vec::new();
    for a in Attributes::new(bytes, &header) {
        let a = a.map_err(Rejected::Framing)?;
        attrs.push((a.offset, a.typ, a.value));
    }
    let counted: Vec<usize> = Attributes::new(bytes, &header)
        .counted()
        .map(|a| a.map(|a| a.offset))
        .collect::<Result<_, _>>()
        .map_err(Rejected::Framing)?;
    let attrs: Vec<Attr> = attrs
        .into_iter()
        .map(|(offset, typ, value)| Attr {
            typ,
            value,
            counted: counted.contains(&offset),
        })
        .collect();
    let w = Walked { header, attrs };
    for a in w.counted() {
        if walker_decodes(a.typ, a.value, &header.transaction_id) == Some(false) {
            return Err(Rejected::Value(*a));
        }
    }
    if let Err(e) = integrity::check_fingerprint(bytes, &header) {
        let fp = w.attrs.iter().find(|a| a.typ == attr::FINGERPRINT).copied();
        return Err(Rejected::Fingerprint(e, fp));
    }
    let protected = w.counted().any(|a| {
        matches!(
            a.typ,
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256
        )
    });
    if protected {
        integrity::verify(bytes, &header, key).map_err(Rejected::Integrity)?;
    }
    Ok(w)
}

/// Whether the walker's decoder for `typ` takes `value`; `None` for the
/// attributes natkit never reads (and those with no value to decode are
/// `Some(true)`; the integrity attributes are checked whole-message).
fn walker_decodes(typ: u16, value: &[u8], tid: &[u8; 12]) -> Option<bool> {
    let ok = match typ {
        attr::MAPPED_ADDRESS
        | attr::RESPONSE_ORIGIN
        | attr::OTHER_ADDRESS
        | attr::ALTERNATE_SERVER => raw::decode_address(value).is_some(),
        attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
            raw::decode_xor_address(value, tid).is_some()
        }
        attr::ERROR_CODE => raw::decode_error(value).is_some(),
        attr::USERNAME => raw::decode_text(value, raw::MAX_USERNAME_LEN).is_some(),
        attr::REALM | attr::NONCE | attr::SOFTWARE => {
            raw::decode_text(value, raw::MAX_TEXT_LEN).is_some()
        }
        attr::LIFETIME | attr::PRIORITY | attr::CHANGE_REQUEST => raw::decode_u32(value).is_some(),
        attr::ICE_CONTROLLED | attr::ICE_CONTROLLING | attr::RESERVATION_TOKEN => {
            raw::decode_u64(value).is_some()
        }
        attr::CHANNEL_NUMBER => raw::decode_channel_number(value).is_some(),
        attr::RESPONSE_PORT => raw::decode_response_port(value).is_some(),
        attr::REQUESTED_TRANSPORT
        | attr::REQUESTED_ADDRESS_FAMILY
        | attr::ADDITIONAL_ADDRESS_FAMILY => raw::decode_leading_byte(value).is_some(),
        attr::PASSWORD_ALGORITHM => raw::decode_password_algorithm(value).is_some(),
        // RFC 8656 §18.5: one byte holding the R bit.
        attr::EVEN_PORT => !value.is_empty(),
        attr::DATA
        | attr::DONT_FRAGMENT
        | attr::USE_CANDIDATE
        | attr::PADDING
        | attr::MESSAGE_INTEGRITY
        | attr::MESSAGE_INTEGRITY_SHA256
        | attr::FINGERPRINT => true,
        _ => return None,
    };
    Some(ok)
}

/// Attribute types `stun-rs` decodes and natkit never reads.
const NOT_READ: &[u16] = &[
    attr::UNKNOWN_ATTRIBUTES,
    attr::USERHASH,
    attr::PASSWORD_ALGORITHMS,
    attr::ADDRESS_ERROR_CODE,
    attr::ICMP,
];

/// The size the RFCs give a fixed-size value, for difference 1.
fn fixed_len(typ: u16, value: &[u8]) -> Option<usize> {
    match typ {
        attr::MAPPED_ADDRESS
        | attr::RESPONSE_ORIGIN
        | attr::OTHER_ADDRESS
        | attr::ALTERNATE_SERVER
        | attr::XOR_MAPPED_ADDRESS
        | attr::XOR_PEER_ADDRESS
        | attr::XOR_RELAYED_ADDRESS => match value.get(1) {
            Some(&raw::FAMILY_IPV4) => Some(8),
            Some(&raw::FAMILY_IPV6) => Some(20),
            _ => None,
        },
        attr::LIFETIME
        | attr::PRIORITY
        | attr::CHANGE_REQUEST
        | attr::CHANNEL_NUMBER
        | attr::RESPONSE_PORT
        | attr::REQUESTED_TRANSPORT
        | attr::REQUESTED_ADDRESS_FAMILY
        | attr::ADDITIONAL_ADDRESS_FAMILY
        | attr::FINGERPRINT => Some(4),
        attr::ICE_CONTROLLED | attr::ICE_CONTROLLING | attr::RESERVATION_TOKEN => Some(8),
        _ => None,
    }
}

/// The walker accepts, `stun-rs` rejects: which allowed difference, if any.
fn stun_rs_only_rejects(w: &Walked, e: &TheirError) -> Option<Difference> {
    let TheirError::Decode(StunDecodeError(StunErrorLevel::Attribute(ae))) = e else {
        return None;
    };
    // `position` counts every attribute stun-rs walked, as `attrs` does.
    let a = w.attrs.get(ae.position)?;
    if ae.attr_type.map(|t| t.as_u16()) != Some(a.typ) {
        return None;
    }
    if !a.counted || NOT_READ.contains(&a.typ) {
        return Some(Difference::NotRead);
    }
    match a.typ {
        attr::USERNAME | attr::REALM | attr::NONCE | attr::PADDING => Some(Difference::TextRules),
        attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY
            if !matches!(a.value[0], raw::FAMILY_IPV4 | raw::FAMILY_IPV6) =>
        {
            Some(Difference::UnknownFamily)
        }
        attr::MESSAGE_INTEGRITY_SHA256 if a.value.len() < 32 => Some(Difference::TruncatedSha256),
        attr::MESSAGE_INTEGRITY if w.counted().any(|b| b.typ == attr::MESSAGE_INTEGRITY_SHA256) => {
            Some(Difference::BothIntegrities)
        }
        _ => None,
    }
}

/// `stun-rs` accepts, the walker rejects: which allowed difference, if any.
fn walker_only_rejects(why: &Rejected) -> Option<Difference> {
    match why {
        Rejected::Value(a) => {
            if fixed_len(a.typ, a.value).is_some_and(|n| n != a.value.len()) {
                Some(Difference::OverlongValue)
            } else if a.typ == attr::USERNAME && a.value.len() > raw::MAX_USERNAME_LEN {
                Some(Difference::TextRules)
            } else {
                None
            }
        }
        Rejected::Fingerprint(IntegrityError::FingerprintNotLast, _) => {
            Some(Difference::AfterFingerprint)
        }
        Rejected::Fingerprint(IntegrityError::BadFingerprint, Some(fp)) if fp.value.len() != 4 => {
            Some(Difference::OverlongValue)
        }
        _ => None,
    }
}

fn class_of(c: MessageClass) -> Class {
    match c {
        MessageClass::Request => Class::Request,
        MessageClass::Indication => Class::Indication,
        MessageClass::SuccessResponse => Class::Success,
        MessageClass::ErrorResponse => Class::Error,
    }
}

fn family_byte(f: AddressFamily) -> u8 {
    match f {
        AddressFamily::IPv4 => raw::FAMILY_IPV4,
        AddressFamily::IPv6 => raw::FAMILY_IPV6,
    }
}

/// Text that the OpaqueString profile leaves as it is (printable ASCII), so
/// `stun-rs`'s USERNAME must equal the bytes.
fn opaque_string_identity(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..0x7F).contains(&b))
}

macro_rules! same {
    ($what:expr, $ours:expr, $theirs:expr) => {{
        let (ours, theirs) = ($ours, $theirs);
        if ours != theirs {
            return Err(format!(
                "{}: walker {:?}, stun-rs {:?}",
                $what, ours, theirs
            ));
        }
    }};
}

/// Both accept: header, attribute list, values, and the production
/// parsers' view must match `stun-rs`'s.
fn compare(bytes: &[u8], w: &Walked, msg: &StunMessage) -> Result<(), String> {
    let h = &w.header;
    same!("method", h.method(), msg.method().as_u16());
    same!("class", h.class(), class_of(msg.class()));
    same!(
        "transaction id",
        &h.transaction_id,
        msg.transaction_id().as_bytes()
    );
    let ours: Vec<u16> = w.counted().map(|a| a.typ).collect();
    let theirs: Vec<u16> = msg
        .attributes()
        .iter()
        .map(|a| a.attribute_type().as_u16())
        .collect();
    same!("attributes that count", &ours, &theirs);
    for (a, t) in w.counted().zip(msg.attributes()) {
        compare_value(a, t, &h.transaction_id)
            .map_err(|e| format!("attribute {:#06x}: {e}", a.typ))?;
    }
    compare_binding(bytes, w, msg)?;
    compare_turn_request(bytes, w, msg)
}

fn compare_value(a: &Attr, t: &StunAttribute, tid: &[u8; 12]) -> Result<(), String> {
    let v = a.value;
    let addr = |s: &SocketAddr| Some(*s);
    match t {
        StunAttribute::MappedAddress(x) => {
            same!("address", raw::decode_address(v), addr(x.socket_address()))
        }
        StunAttribute::ResponseOrigin(x) => {
            same!("address", raw::decode_address(v), addr(x.socket_address()))
        }
        StunAttribute::OtherAddress(x) => {
            same!("address", raw::decode_address(v), addr(x.socket_address()))
        }
        StunAttribute::AlternateServer(x) => {
            same!("address", raw::decode_address(v), addr(x.socket_address()))
        }
        StunAttribute::XorMappedAddress(x) => same!(
            "XOR address",
            raw::decode_xor_address(v, tid),
            addr(x.socket_address())
        ),
        StunAttribute::XorPeerAddress(x) => same!(
            "XOR address",
            raw::decode_xor_address(v, tid),
            addr(x.socket_address())
        ),
        StunAttribute::XorRelayedAddress(x) => same!(
            "XOR address",
            raw::decode_xor_address(v, tid),
            addr(x.socket_address())
        ),
        StunAttribute::ErrorCode(x) => {
            let e = x.error_code();
            same!(
                "error",
                raw::decode_error(v),
                Some((e.error_code(), e.reason()))
            )
        }
        StunAttribute::UserName(x) => {
            let ours = raw::decode_text(v, raw::MAX_USERNAME_LEN);
            // Difference 2: OpaqueString may map non-ASCII text.
            if ours.is_some_and(opaque_string_identity) {
                same!("username", ours, Some(x.as_str()))
            }
        }
        StunAttribute::Realm(x) => same!(
            "realm",
            raw::decode_text(v, raw::MAX_TEXT_LEN),
            Some(x.as_str())
        ),
        StunAttribute::Nonce(x) => same!(
            "nonce",
            raw::decode_text(v, raw::MAX_TEXT_LEN),
            Some(x.as_str())
        ),
        StunAttribute::Software(x) => same!(
            "software",
            raw::decode_text(v, raw::MAX_TEXT_LEN),
            Some(x.as_str())
        ),
        StunAttribute::LifeTime(x) => same!("lifetime", raw::decode_u32(v), Some(x.as_u32())),
        StunAttribute::Priority(x) => same!("priority", raw::decode_u32(v), Some(x.as_u32())),
        StunAttribute::ChangeRequest(x) => {
            let f = x.flags();
            let ours = raw::decode_u32(v).map(|v| (v & 0x4 != 0, v & 0x2 != 0));
            let theirs = (
                f.contains(ChangeRequestFlags::ChangeIp),
                f.contains(ChangeRequestFlags::ChangePort),
            );
            same!("change request", ours, Some(theirs))
        }
        StunAttribute::IceControlled(x) => {
            same!("tie-breaker", raw::decode_u64(v), Some(x.as_u64()))
        }
        StunAttribute::IceControlling(x) => {
            same!("tie-breaker", raw::decode_u64(v), Some(x.as_u64()))
        }
        StunAttribute::ReservationToken(x) => same!(
            "reservation token",
            raw::decode_u64(v).map(u64::to_be_bytes),
            <[u8; 8]>::try_from(x.token()).ok()
        ),
        StunAttribute::ChannelNumber(x) => {
            same!("channel", raw::decode_channel_number(v), Some(x.number()))
        }
        StunAttribute::ResponsePort(x) => same!(
            "response port",
            raw::decode_response_port(v),
            Some(x.as_u16())
        ),
        StunAttribute::RequestedTrasport(x) => same!(
            "protocol",
            raw::decode_leading_byte(v),
            Some(x.protocol().as_u8())
        ),
        StunAttribute::RequestedAddressFamily(x) => same!(
            "family",
            raw::decode_leading_byte(v),
            Some(family_byte(x.family()))
        ),
        StunAttribute::AdditionalAddressFamily(x) => same!(
            "family",
            raw::decode_leading_byte(v),
            Some(family_byte(x.family()))
        ),
        StunAttribute::EvenPort(x) => {
            same!("R bit", v.first().map(|b| b & 0x80 != 0), Some(x.reserve()))
        }
        StunAttribute::PasswordAlgorithm(x) => same!(
            "password algorithm",
            raw::decode_password_algorithm(v),
            Some(u16::from(x.algorithm()))
        ),
        StunAttribute::Data(x) => same!("data", v, x.as_bytes()),
        StunAttribute::Padding(x) => same!("padding", v, x.as_str().as_bytes()),
        // Presence only; their checks decided validity for both.
        StunAttribute::MessageIntegrity(_)
        | StunAttribute::MessageIntegritySha256(_)
        | StunAttribute::Fingerprint(_)
        | StunAttribute::DontFragment(_)
        | StunAttribute::UseCandidate(_) => {}
        StunAttribute::Unknown(_) => same!(
            "walker reads a type stun-rs does not know",
            walker_decodes(a.typ, v, tid),
            None
        ),
        // Difference 7: not read by natkit.
        _ => {}
    }
    Ok(())
}

/// `stun-rs`'s attributes of type `typ`, in order.
fn all_of(msg: &StunMessage, typ: u16) -> impl Iterator<Item = &StunAttribute> {
    msg.attributes()
        .iter()
        .filter(move |a| a.attribute_type().as_u16() == typ)
}

/// The Binding parsers (the STUN server's and the clients') against the
/// first occurrences `stun-rs` decoded (RFC 8489 §14: the first counts).
fn compare_binding(bytes: &[u8], w: &Walked, msg: &StunMessage) -> Result<(), String> {
    let h = &w.header;
    if h.method() != method::BINDING {
        return Ok(());
    }
    let first = |typ| all_of(msg, typ).next();
    let has_fp = first(attr::FINGERPRINT).is_some();
    if h.class() == Class::Request {
        let req =
            binding::parse_request(bytes).map_err(|e| format!("binding::parse_request: {e}"))?;
        let change = first(attr::CHANGE_REQUEST)
            .and_then(|a| a.as_change_request().ok())
            .map(|c| ChangeRequest {
                ip: c.flags().contains(ChangeRequestFlags::ChangeIp),
                port: c.flags().contains(ChangeRequestFlags::ChangePort),
            });
        same!("binding CHANGE-REQUEST", req.change, change);
        let port = first(attr::RESPONSE_PORT)
            .and_then(|a| a.as_response_port().ok())
            .map(|p| p.as_u16());
        same!("binding RESPONSE-PORT", req.response_port, port);
        let padding = first(attr::PADDING)
            .and_then(|a| a.as_padding().ok())
            .map(|p| p.as_str().len() as u16);
        same!("binding PADDING", req.padding, padding);
        same!("binding FINGERPRINT", req.fingerprint, has_fp);
        return Ok(());
    }
    if h.class() == Class::Indication {
        return Ok(());
    }
    let resp =
        binding::parse_response(bytes).map_err(|e| format!("binding::parse_response: {e}"))?;
    let xor = first(attr::XOR_MAPPED_ADDRESS)
        .and_then(|a| a.as_xor_mapped_address().ok())
        .map(|a| *a.socket_address());
    let plain = first(attr::MAPPED_ADDRESS)
        .and_then(|a| a.as_mapped_address().ok())
        .map(|a| *a.socket_address());
    same!("binding mapped address", resp.mapped, xor.or(plain));
    // RFC 3489's SOURCE-ADDRESS and CHANGED-ADDRESS stand in when the RFC
    // 5780 attributes are absent; stun-rs does not decode them.
    let origin = first(attr::RESPONSE_ORIGIN)
        .and_then(|a| a.as_response_origin().ok())
        .map(|a| *a.socket_address());
    if origin.is_some() || w.first(attr::SOURCE_ADDRESS).is_none() {
        same!("binding RESPONSE-ORIGIN", resp.response_origin, origin);
    }
    let other = first(attr::OTHER_ADDRESS)
        .and_then(|a| a.as_other_address().ok())
        .map(|a| *a.socket_address());
    if other.is_some() || w.first(attr::CHANGED_ADDRESS).is_none() {
        same!("binding OTHER-ADDRESS", resp.other_address, other);
    }
    let outcome = match h.class() {
        Class::Error => Err(first(attr::ERROR_CODE)
            .and_then(|a| a.as_error_code().ok())
            .map_or(400, |e| e.error_code().error_code())),
        _ => Ok(()),
    };
    same!("binding outcome", resp.outcome, outcome);
    Ok(())
}

/// The TURN relay's request parser against the first occurrences.
fn compare_turn_request(bytes: &[u8], w: &Walked, msg: &StunMessage) -> Result<(), String> {
    let r = request::parse(bytes).map_err(|e| format!("turn::request::parse: {e}"))?;
    let first = |typ| all_of(msg, typ).next();
    let peers: Vec<SocketAddr> = all_of(msg, attr::XOR_PEER_ADDRESS)
        .filter_map(|a| a.as_xor_peer_address().ok())
        .map(|a| *a.socket_address())
        .collect();
    // Every XOR-PEER-ADDRESS counts (RFC 8656 §9.1): how many one request
    // may name is the relay's permission quota, not the parser's business.
    same!("turn bad attribute", r.bad_attribute, None);
    same!("turn peer count", r.peer_count, peers.len());
    same!("turn peers", r.peers().collect::<Vec<_>>(), peers);
    if let Some(u) = r.username.filter(|u| opaque_string_identity(u)) {
        let theirs = first(attr::USERNAME).and_then(|a| a.as_user_name().ok());
        same!("turn username", Some(u), theirs.map(|x| x.as_str()));
    }
    let realm = first(attr::REALM).and_then(|a| a.as_realm().ok());
    same!("turn realm", r.realm, realm.map(|x| x.as_str()));
    let nonce = first(attr::NONCE).and_then(|a| a.as_nonce().ok());
    same!("turn nonce", r.nonce, nonce.map(|x| x.as_str()));
    let lifetime = first(attr::LIFETIME).and_then(|a| a.as_life_time().ok());
    same!("turn lifetime", r.lifetime, lifetime.map(|x| x.as_u32()));
    let transport = first(attr::REQUESTED_TRANSPORT).and_then(|a| a.as_requested_trasport().ok());
    same!(
        "turn requested transport",
        r.requested_transport,
        transport.map(|x| x.protocol().as_u8())
    );
    let even = first(attr::EVEN_PORT).and_then(|a| a.as_even_port().ok());
    same!("turn even port", r.even_port, even.map(|x| x.reserve()));
    let token = first(attr::RESERVATION_TOKEN).and_then(|a| a.as_reservation_token().ok());
    same!(
        "turn reservation token",
        r.reservation_token.map(u64::to_be_bytes),
        token.and_then(|x| <[u8; 8]>::try_from(x.token()).ok())
    );
    let fam =
        first(attr::REQUESTED_ADDRESS_FAMILY).and_then(|a| a.as_requested_address_family().ok());
    same!(
        "turn requested family",
        r.requested_family,
        fam.map(|x| family_byte(x.family()))
    );
    let fam =
        first(attr::ADDITIONAL_ADDRESS_FAMILY).and_then(|a| a.as_additional_address_family().ok());
    same!(
        "turn additional family",
        r.additional_family,
        fam.map(|x| family_byte(x.family()))
    );
    let channel = first(attr::CHANNEL_NUMBER).and_then(|a| a.as_channel_number().ok());
    same!("turn channel", r.channel, channel.map(|x| x.number()));
    let data = first(attr::DATA).and_then(|a| a.as_data().ok());
    same!("turn data", r.data, data.map(|x| x.as_bytes()));
    same!(
        "turn DONT-FRAGMENT",
        r.dont_fragment,
        first(attr::DONT_FRAGMENT).is_some()
    );
    let alg = first(attr::PASSWORD_ALGORITHM).and_then(|a| a.as_password_algorithm().ok());
    same!(
        "turn password algorithm",
        r.password_algorithm,
        alg.map(|x| u16::from(x.algorithm()))
    );
    same!(
        "turn PASSWORD-ALGORITHMS",
        r.password_algorithms,
        w.first(attr::PASSWORD_ALGORITHMS)
    );
    let integrity = if first(attr::MESSAGE_INTEGRITY_SHA256).is_some() {
        Some(IntegrityKind::Sha256)
    } else if first(attr::MESSAGE_INTEGRITY).is_some() {
        Some(IntegrityKind::Sha1)
    } else {
        None
    };
    same!("turn integrity", r.integrity, integrity);
    Ok(())
}
