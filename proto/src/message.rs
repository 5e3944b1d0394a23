//! Full STUN message decoding and encoding on [`stun_rs`], for code off the
//! hot path (the CLI, the discovery client, TURN control messages, tests).
//!
//! Framing, FINGERPRINT and MESSAGE-INTEGRITY(-SHA256) are checked with this
//! crate's own [`raw`](crate::raw) and [`integrity`](crate::integrity)
//! code before `stun-rs` sees the bytes, so both paths agree on what a valid
//! message is and keys are the same bytes everywhere: a short-term password
//! or [`LongTermKey::as_bytes`](crate::integrity::LongTermKey::as_bytes).

use std::net::SocketAddr;

use stun_rs::error::{StunDecodeError, StunEncodeError};
use stun_rs::{MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessage};

use crate::integrity::{self, IntegrityError, IntegrityKind};
use crate::raw::{self, RawError, MAX_MESSAGE_LEN};

/// Why a message could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not a well-formed STUN message (header, length, attribute framing).
    #[error("not a STUN message: {0}")]
    Malformed(#[from] RawError),
    /// FINGERPRINT or MESSAGE-INTEGRITY(-SHA256) did not check out.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// `stun-rs` refused an attribute value.
    #[error("{0}")]
    Decode(#[source] StunDecodeError),
    /// `stun-rs` could not encode the message (usually: buffer too small).
    #[error("{0}")]
    Encode(#[source] StunEncodeError),
}

/// Decode a datagram holding exactly one STUN message. A FINGERPRINT, if
/// present, must be right and last (RFC 8489 §14.7); integrity is not
/// checked (see [`decode_with_key`]).
pub fn decode(bytes: &[u8]) -> Result<StunMessage, MessageError> {
    let header = raw::parse_datagram(bytes)?;
    integrity::check_fingerprint(bytes, &header)?;
    decode_unchecked(bytes)
}

/// Decode a datagram and verify its MESSAGE-INTEGRITY-SHA256 or
/// MESSAGE-INTEGRITY with `key` (RFC 8489 §9.1.4, §9.2.4): a short-term
/// password's bytes or a long-term key's. Returns which attribute was
/// checked, so an answer can be protected the same way.
pub fn decode_with_key(
    bytes: &[u8],
    key: &[u8],
) -> Result<(StunMessage, IntegrityKind), MessageError> {
    let header = raw::parse_datagram(bytes)?;
    integrity::check_fingerprint(bytes, &header)?;
    let kind = integrity::verify(bytes, &header, key)?;
    Ok((decode_unchecked(bytes)?, kind))
}

fn decode_unchecked(bytes: &[u8]) -> Result<StunMessage, MessageError> {
    // No decoder context: stun-rs does no validation of its own (that was
    // done above) and, as RFC 8489 §14.5 asks, drops attributes that follow
    // the integrity attributes other than FINGERPRINT.
    let (msg, _) = MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .map_err(MessageError::Decode)?;
    Ok(msg)
}

/// Encode `msg` into `buf`, returning the length. MESSAGE-INTEGRITY and
/// FINGERPRINT attributes in `msg` are computed by `stun-rs` as it writes.
pub fn encode(msg: &StunMessage, buf: &mut [u8]) -> Result<usize, MessageError> {
    MessageEncoderBuilder::default()
        .build()
        .encode(buf, msg)
        .map_err(MessageError::Encode)
}

/// Encode `msg` into a new vector of exactly its length.
pub fn encode_to_vec(msg: &StunMessage) -> Result<Vec<u8>, MessageError> {
    // Most messages fit a path MTU; try that before the largest size.
    let mut buf = vec![0u8; 1500];
    let n = match encode(msg, &mut buf) {
        Ok(n) => n,
        Err(_) => {
            buf.resize(MAX_MESSAGE_LEN, 0);
            encode(msg, &mut buf)?
        }
    };
    buf.truncate(n);
    Ok(buf)
}

/// The first attribute of type `typ` (a [`raw::attr`] constant), including
/// types `stun-rs` does not know (as `StunAttribute::Unknown`).
pub fn attribute(msg: &StunMessage, typ: u16) -> Option<&StunAttribute> {
    msg.attributes()
        .iter()
        .find(|a| a.attribute_type().as_u16() == typ)
}

/// The XOR-MAPPED-ADDRESS of a response, or its MAPPED-ADDRESS if it has
/// only that (RFC 8489 §14.1: servers for RFC 3489 clients send it).
pub fn mapped_address(msg: &StunMessage) -> Option<SocketAddr> {
    let xor = attribute(msg, raw::attr::XOR_MAPPED_ADDRESS)
        .and_then(|a| a.as_xor_mapped_address().ok())
        .map(|a| *a.socket_address());
    xor.or_else(|| {
        attribute(msg, raw::attr::MAPPED_ADDRESS)
            .and_then(|a| a.as_mapped_address().ok())
            .map(|a| *a.socket_address())
    })
}

/// The ERROR-CODE number (e.g. 401, 438) of an error response.
pub fn error_code(msg: &StunMessage) -> Option<u16> {
    attribute(msg, raw::attr::ERROR_CODE)
        .and_then(|a| a.as_error_code().ok())
        .map(|a| a.error_code().error_code())
}

/// The REALM and NONCE of a 401 or 438 answer, which a client needs for its
/// next attempt (RFC 8489 §9.2.3).
pub fn realm_and_nonce(msg: &StunMessage) -> Option<(&str, &str)> {
    let realm = attribute(msg, raw::attr::REALM)?.as_realm().ok()?;
    let nonce = attribute(msg, raw::attr::NONCE)?.as_nonce().ok()?;
    Some((realm.as_str(), nonce.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::{LongTermKey, PasswordAlgorithm};
    use crate::raw::{attr, method, Class};
    use crate::writer::Writer;
    use stun_rs::attributes::stun::{ErrorCode, Nonce, Realm, Software, XorMappedAddress};
    use stun_rs::methods::BINDING;
    use stun_rs::{MessageClass, StunMessageBuilder, TransactionId};

    #[test]
    fn writer_output_decodes_with_conveniences() {
        let key = LongTermKey::derive(PasswordAlgorithm::Sha256, "u", "example.org", "p");
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Error, &[1; 12]).unwrap();
        w.error_code(438, "Stale Nonce").unwrap();
        w.bytes(attr::REALM, b"example.org").unwrap();
        w.bytes(attr::NONCE, b"obMatJos2gAAAabc").unwrap();
        w.bytes(0x7F00, b"mystery").unwrap();
        w.message_integrity_sha256(key.as_bytes()).unwrap();
        let n = w.fingerprint().unwrap();

        let m = decode(&buf[..n]).unwrap();
        assert_eq!(m.class(), MessageClass::ErrorResponse);
        assert_eq!(m.method().as_u16(), method::ALLOCATE);
        assert_eq!(error_code(&m), Some(438));
        assert_eq!(
            realm_and_nonce(&m),
            Some(("example.org", "obMatJos2gAAAabc"))
        );
        assert!(attribute(&m, 0x7F00).is_some_and(|a| a.is_unknown()));
        assert!(attribute(&m, attr::SOFTWARE).is_none());

        let (_, kind) = decode_with_key(&buf[..n], key.as_bytes()).unwrap();
        assert_eq!(kind, IntegrityKind::Sha256);
        assert!(matches!(
            decode_with_key(&buf[..n], b"wrong"),
            Err(MessageError::Integrity(IntegrityError::Mismatch))
        ));
    }

    #[test]
    fn framing_fingerprint_and_missing_integrity_are_errors() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Request, &[2; 12]).unwrap();
        w.bytes(attr::SOFTWARE, b"x").unwrap();
        let n = w.fingerprint().unwrap();
        assert!(decode(&buf[..n]).is_ok());
        assert!(matches!(
            decode_with_key(&buf[..n], b"k"),
            Err(MessageError::Integrity(IntegrityError::Missing))
        ));
        // Trailing bytes after the message: not one datagram message.
        assert!(matches!(
            decode(&buf[..n + 4]),
            Err(MessageError::Malformed(RawError::LengthMismatch))
        ));
        assert!(matches!(
            decode(&buf[..10]),
            Err(MessageError::Malformed(RawError::Truncated))
        ));
        buf[n - 1] ^= 0xFF;
        assert!(matches!(
            decode(&buf[..n]),
            Err(MessageError::Integrity(IntegrityError::BadFingerprint))
        ));
    }

    #[test]
    fn stun_rs_attribute_errors_surface_as_decode_errors() {
        // XOR-MAPPED-ADDRESS with an unknown family: framing is fine, the
        // value is not.
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, method::BINDING, Class::Success, &[3; 12]).unwrap();
        w.bytes(attr::XOR_MAPPED_ADDRESS, &[0, 9, 0, 0, 1, 2, 3, 4])
            .unwrap();
        let n = w.finish();
        assert!(matches!(decode(&buf[..n]), Err(MessageError::Decode(_))));
    }

    #[test]
    fn encode_round_trips_and_matches_raw_parsing() {
        let tid = TransactionId::from([7u8; 12]);
        let addr: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
        let msg = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(tid)
            .with_attribute(Software::new("natkit").unwrap())
            .with_attribute(XorMappedAddress::from(addr))
            .build();
        let bytes = encode_to_vec(&msg).unwrap();
        let h = raw::parse_datagram(&bytes).unwrap();
        assert_eq!(h.class(), Class::Success);
        assert_eq!(h.transaction_id, [7u8; 12]);
        let back = decode(&bytes).unwrap();
        assert_eq!(mapped_address(&back), Some(addr));
        assert_eq!(back.transaction_id().as_bytes(), &[7u8; 12]);

        let mut small = [0u8; 24];
        assert!(matches!(
            encode(&msg, &mut small),
            Err(MessageError::Encode(_))
        ));
    }

    #[test]
    fn error_response_helpers() {
        let msg = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
            .with_attribute(ErrorCode::new(
                stun_rs::ErrorCode::new(401, "Unauthenticated").unwrap(),
            ))
            .with_attribute(Realm::new("r").unwrap())
            .with_attribute(Nonce::new("n").unwrap())
            .build();
        let back = decode(&encode_to_vec(&msg).unwrap()).unwrap();
        assert_eq!(error_code(&back), Some(401));
        assert_eq!(realm_and_nonce(&back), Some(("r", "n")));
        assert_eq!(mapped_address(&back), None);
    }
}
