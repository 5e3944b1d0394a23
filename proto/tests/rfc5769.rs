//! The RFC 5769 test vectors (§2.1-§2.4) and the RFC 8489 Appendix B.1
//! vector (with RFC errata 6268 applied), byte for byte, checked with
//! natkit's walker (raw parser, typed values, integrity code, Binding
//! parsers), cross-checked with `stun-rs`'s own validator and run through
//! the differential oracle (`oracle/mod.rs`).

use std::net::SocketAddr;

use natkit_proto::binding;
use natkit_proto::integrity::{
    check_fingerprint, verify, IntegrityError, IntegrityKind, LongTermKey, PasswordAlgorithm,
};
use natkit_proto::nonce;
use natkit_proto::raw::{self, attr, method, Attributes, Class, RawAttribute};
use stun_rs::{Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageDecoderBuilder};

mod oracle;

/// RFC 5769 §2.1-§2.3 short-term password.
const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// RFC 5769 §2.4 / RFC 8489 B.1 username: "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>".
const LT_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// The password "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep / OpaqueString.
const LT_PASSWORD: &str = "TheMatrIX";
const LT_REALM: &str = "example.org";

/// RFC 5769 §2.1: sample request.
const SAMPLE_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, //    Request type and message length
    0x21, 0x12, 0xa4, 0x42, //    Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x10, //    SOFTWARE attribute header
    0x53, 0x54, 0x55, 0x4e, // }
    0x20, 0x74, 0x65, 0x73, // }  User-agent...
    0x74, 0x20, 0x63, 0x6c, // }  ...name
    0x69, 0x65, 0x6e, 0x74, // }
    0x00, 0x24, 0x00, 0x04, //    PRIORITY attribute header
    0x6e, 0x00, 0x01, 0xff, //    ICE priority value
    0x80, 0x29, 0x00, 0x08, //    ICE-CONTROLLED attribute header
    0x93, 0x2f, 0xf9, 0xb1, // }  Pseudo-random tie breaker...
    0x51, 0x26, 0x3b, 0x36, // }   ...for ICE control
    0x00, 0x06, 0x00, 0x09, //    USERNAME attribute header
    0x65, 0x76, 0x74, 0x6a, // }
    0x3a, 0x68, 0x36, 0x76, // }  Username (9 bytes) and padding (3 bytes)
    0x59, 0x20, 0x20, 0x20, // }
    0x00, 0x08, 0x00, 0x14, //    MESSAGE-INTEGRITY attribute header
    0x9a, 0xea, 0xa7, 0x0c, // }
    0xbf, 0xd8, 0xcb, 0x56, // }
    0x78, 0x1e, 0xf2, 0xb5, // }  HMAC-SHA1 fingerprint
    0xb2, 0xd3, 0xf2, 0x49, // }
    0xc1, 0xb5, 0x71, 0xa2, // }
    0x80, 0x28, 0x00, 0x04, //    FINGERPRINT attribute header
    0xe5, 0x7a, 0x3b, 0xcf, //    CRC32 fingerprint
];

/// RFC 5769 §2.2: sample IPv4 response.
const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, //    Response type and message length
    0x21, 0x12, 0xa4, 0x42, //    Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, //    SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x08, //    XOR-MAPPED-ADDRESS attribute header
    0x00, 0x01, 0xa1, 0x47, //    Address family (IPv4) and xor'd mapped port number
    0xe1, 0x12, 0xa6, 0x43, //    Xor'd mapped IPv4 address
    0x00, 0x08, 0x00, 0x14, //    MESSAGE-INTEGRITY attribute header
    0x2b, 0x91, 0xf5, 0x99, // }
    0xfd, 0x9e, 0x90, 0xc3, // }
    0x8c, 0x74, 0x89, 0xf9, // }  HMAC-SHA1 fingerprint
    0x2a, 0xf9, 0xba, 0x53, // }
    0xf0, 0x6b, 0xe7, 0xd7, // }
    0x80, 0x28, 0x00, 0x04, //    FINGERPRINT attribute header
    0xc0, 0x7d, 0x4c, 0x96, //    CRC32 fingerprint
];

/// RFC 5769 §2.3: sample IPv6 response.
const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, //    Response type and message length
    0x21, 0x12, 0xa4, 0x42, //    Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, //    SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x14, //    XOR-MAPPED-ADDRESS attribute header
    0x00, 0x02, 0xa1, 0x47, //    Address family (IPv6) and xor'd mapped port number
    0x01, 0x13, 0xa9, 0xfa, // }
    0xa5, 0xd3, 0xf1, 0x79, // }  Xor'd mapped IPv6 address
    0xbc, 0x25, 0xf4, 0xb5, // }
    0xbe, 0xd2, 0xb9, 0xd9, // }
    0x00, 0x08, 0x00, 0x14, //    MESSAGE-INTEGRITY attribute header
    0xa3, 0x82, 0x95, 0x4e, // }
    0x4b, 0xe6, 0x7b, 0xf1, // }
    0x17, 0x84, 0xc9, 0x7c, // }  HMAC-SHA1 fingerprint
    0x82, 0x92, 0xc2, 0x75, // }
    0xbf, 0xe3, 0xed, 0x41, // }
    0x80, 0x28, 0x00, 0x04, //    FINGERPRINT attribute header
    0xc8, 0xfb, 0x0b, 0x4c, //    CRC32 fingerprint
];

/// RFC 5769 §2.4: sample request with long-term authentication.
const SAMPLE_REQUEST_LONG_TERM: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, //    Request type and message length
    0x21, 0x12, 0xa4, 0x42, //    Magic cookie
    0x78, 0xad, 0x34, 0x33, // }
    0xc6, 0xad, 0x72, 0xc0, // }  Transaction ID
    0x29, 0xda, 0x41, 0x2e, // }
    0x00, 0x06, 0x00, 0x12, //    USERNAME attribute header
    0xe3, 0x83, 0x9e, 0xe3, // }
    0x83, 0x88, 0xe3, 0x83, // }
    0xaa, 0xe3, 0x83, 0x83, // }  Username value (18 bytes) and padding (2 bytes)
    0xe3, 0x82, 0xaf, 0xe3, // }
    0x82, 0xb9, 0x00, 0x00, // }
    0x00, 0x15, 0x00, 0x1c, //    NONCE attribute header
    0x66, 0x2f, 0x2f, 0x34, // }
    0x39, 0x39, 0x6b, 0x39, // }
    0x35, 0x34, 0x64, 0x36, // }
    0x4f, 0x4c, 0x33, 0x34, // }  Nonce value
    0x6f, 0x4c, 0x39, 0x46, // }
    0x53, 0x54, 0x76, 0x79, // }
    0x36, 0x34, 0x73, 0x41, // }
    0x00, 0x14, 0x00, 0x0b, //    REALM attribute header
    0x65, 0x78, 0x61, 0x6d, // }
    0x70, 0x6c, 0x65, 0x2e, // }  Realm value (11 bytes) and padding (1 byte)
    0x6f, 0x72, 0x67, 0x00, // }
    0x00, 0x08, 0x00, 0x14, //    MESSAGE-INTEGRITY attribute header
    0xf6, 0x70, 0x24, 0x65, // }
    0x6d, 0xd6, 0x4a, 0x3e, // }
    0x02, 0xb8, 0xe0, 0x71, // }  HMAC-SHA1 fingerprint
    0x2e, 0x85, 0xc9, 0xa2, // }
    0x8c, 0xa8, 0x96, 0x66, // }
];

/// RFC 8489 Appendix B.1 (as corrected by errata 6268): request with
/// long-term authentication, MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM
/// and USERHASH. Nonce "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA".
const SAMPLE_REQUEST_SHA256: [u8; 164] = [
    0x00, 0x01, 0x00, 0x90, //    Request type and message length
    0x21, 0x12, 0xa4, 0x42, //    Magic cookie
    0x78, 0xad, 0x34, 0x33, // }
    0xc6, 0xad, 0x72, 0xc0, // }  Transaction ID
    0x29, 0xda, 0x41, 0x2e, // }
    0x00, 0x1e, 0x00, 0x20, //    USERHASH attribute header
    0x4a, 0x3c, 0xf3, 0x8f, // }
    0xef, 0x69, 0x92, 0xbd, // }
    0xa9, 0x52, 0xc6, 0x78, // }
    0x04, 0x17, 0xda, 0x0f, // }  Userhash value (32 bytes)
    0x24, 0x81, 0x94, 0x15, // }
    0x56, 0x9e, 0x60, 0xb2, // }
    0x05, 0xc4, 0x6e, 0x41, // }
    0x40, 0x7f, 0x17, 0x04, // }
    0x00, 0x15, 0x00, 0x29, //    NONCE attribute header
    0x6f, 0x62, 0x4d, 0x61, // }
    0x74, 0x4a, 0x6f, 0x73, // }
    0x32, 0x41, 0x41, 0x41, // }
    0x43, 0x66, 0x2f, 0x2f, // }
    0x34, 0x39, 0x39, 0x6b, // }  Nonce value and padding (3 bytes)
    0x39, 0x35, 0x34, 0x64, // }
    0x36, 0x4f, 0x4c, 0x33, // }
    0x34, 0x6f, 0x4c, 0x39, // }
    0x46, 0x53, 0x54, 0x76, // }
    0x79, 0x36, 0x34, 0x73, // }
    0x41, 0x00, 0x00, 0x00, // }
    0x00, 0x14, 0x00, 0x0b, //    REALM attribute header
    0x65, 0x78, 0x61, 0x6d, // }
    0x70, 0x6c, 0x65, 0x2e, // }  Realm value (11 bytes) and padding (1 byte)
    0x6f, 0x72, 0x67, 0x00, // }
    0x00, 0x1d, 0x00, 0x04, //    PASSWORD-ALGORITHM attribute header
    0x00, 0x02, 0x00, 0x00, //    PASSWORD-ALGORITHM value (4 bytes)
    0x00, 0x1c, 0x00, 0x20, //    MESSAGE-INTEGRITY-SHA256 attribute header
    0xb5, 0xc7, 0xbf, 0x00, // }
    0x5b, 0x6c, 0x52, 0xa2, // }
    0x1c, 0x51, 0xc5, 0xe8, // }
    0x92, 0xf8, 0x19, 0x24, // }  HMAC-SHA256 value
    0x13, 0x62, 0x96, 0xcb, // }
    0x92, 0x7c, 0x43, 0x14, // }
    0x93, 0x09, 0x27, 0x8c, // }
    0xc6, 0x51, 0x8e, 0x65, // }
];

fn attrs(msg: &[u8]) -> Vec<RawAttribute<'_>> {
    let h = raw::parse_datagram(msg).expect("vector parses");
    Attributes::new(msg, &h)
        .collect::<Result<_, _>>()
        .expect("attributes walk")
}

fn types(msg: &[u8]) -> Vec<u16> {
    attrs(msg).iter().map(|a| a.typ).collect()
}

fn value(msg: &[u8], typ: u16) -> &[u8] {
    attrs(msg)
        .into_iter()
        .find(|a| a.typ == typ)
        .unwrap_or_else(|| panic!("no attribute {typ:#06x}"))
        .value
}

/// Flip each byte up to the end of the integrity attribute in turn: the
/// message must then fail to parse or fail integrity, never verify.
fn every_flip_fails(msg: &[u8], key: &[u8], integrity_type: u16) {
    let a = attrs(msg)
        .into_iter()
        .find(|a| a.typ == integrity_type)
        .unwrap();
    let end = a.offset + 4 + a.value.len();
    for i in 0..end {
        for bit in [0x01u8, 0x80] {
            let mut m = msg.to_vec();
            m[i] ^= bit;
            let r = raw::parse_datagram(&m)
                .map_err(IntegrityError::from)
                .and_then(|h| verify(&m, &h, key));
            assert!(
                r.is_err(),
                "flipping bit {bit:#04x} of byte {i} still verifies"
            );
        }
    }
}

/// `stun-rs`'s own long-term key for the RFC 5769 §2.4 credentials (it
/// applies OpaqueString itself).
fn their_long_term_key(algorithm: AlgorithmId) -> HMACKey {
    HMACKey::new_long_term(
        LT_USERNAME,
        LT_REALM,
        LT_PASSWORD,
        Algorithm::from(algorithm),
    )
    .unwrap()
}

/// Cross-check with `stun-rs`'s own validator (independent HMAC code).
fn stun_rs_validates(msg: &[u8], key: HMACKey) {
    let ctx = DecoderContextBuilder::default()
        .with_key(key)
        .with_validation()
        .build();
    let (_, size) = MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(msg)
        .expect("stun-rs validates the vector");
    assert_eq!(size, msg.len());
}

#[test]
fn rfc5769_2_1_sample_request() {
    let m = &SAMPLE_REQUEST;
    let h = raw::parse_datagram(m).unwrap();
    assert_eq!(h.method(), method::BINDING);
    assert_eq!(h.class(), Class::Request);
    assert_eq!(h.total_len(), 108);
    assert_eq!(
        types(m),
        [
            attr::SOFTWARE,
            attr::PRIORITY,
            attr::ICE_CONTROLLED,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(value(m, attr::SOFTWARE), b"STUN test client");
    // The username's padding is three spaces, not zeros: padding content is
    // arbitrary (RFC 8489 §14) and the walker must not look at it.
    assert_eq!(value(m, attr::USERNAME), b"evtj:h6vY");
    assert_eq!(value(m, attr::PRIORITY), 0x6e0001ffu32.to_be_bytes());
    assert_eq!(
        value(m, attr::ICE_CONTROLLED),
        0x932ff9b151263b36u64.to_be_bytes()
    );

    assert_eq!(verify(m, &h, PASSWORD.as_bytes()), Ok(IntegrityKind::Sha1));
    assert_eq!(check_fingerprint(m, &h), Ok(true));
    assert_eq!(
        verify(m, &h, b"VOkJxbRl1RmTxUk/WvJxBu"),
        Err(IntegrityError::Mismatch)
    );

    // The server's Binding parser accepts it: ICE attributes are understood,
    // ICE-CONTROLLED is comprehension-optional.
    let req = binding::parse_request(m).unwrap();
    assert_eq!(req.transaction_id, m[8..20]);
    assert!(req.fingerprint);
    assert!(req.unknown().is_empty());
    assert_eq!(req.change, None);

    // The typed values.
    let text = |t| raw::decode_text(value(m, t), raw::MAX_TEXT_LEN);
    assert_eq!(text(attr::SOFTWARE), Some("STUN test client"));
    assert_eq!(
        raw::decode_text(value(m, attr::USERNAME), raw::MAX_USERNAME_LEN),
        Some("evtj:h6vY")
    );
    assert_eq!(raw::decode_u32(value(m, attr::PRIORITY)), Some(0x6e0001ff));
    assert_eq!(
        raw::decode_u64(value(m, attr::ICE_CONTROLLED)),
        Some(0x932ff9b151263b36)
    );

    let short_term = HMACKey::new_short_term(PASSWORD).unwrap();
    stun_rs_validates(m, short_term.clone());
    assert_eq!(
        oracle::check(m, &short_term),
        Ok(oracle::Outcome::BothAccept)
    );
    every_flip_fails(m, PASSWORD.as_bytes(), attr::MESSAGE_INTEGRITY);
}

fn check_response(m: &[u8], want: SocketAddr) {
    let h = raw::parse_datagram(m).unwrap();
    assert_eq!(h.method(), method::BINDING);
    assert_eq!(h.class(), Class::Success);
    assert_eq!(
        types(m),
        [
            attr::SOFTWARE,
            attr::XOR_MAPPED_ADDRESS,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(value(m, attr::SOFTWARE), b"test vector");
    assert_eq!(
        raw::decode_xor_address(value(m, attr::XOR_MAPPED_ADDRESS), &h.transaction_id),
        Some(want)
    );
    assert_eq!(verify(m, &h, PASSWORD.as_bytes()), Ok(IntegrityKind::Sha1));
    assert_eq!(check_fingerprint(m, &h), Ok(true));

    let resp = binding::parse_response(m).unwrap();
    assert_eq!(resp.outcome, Ok(()));
    assert_eq!(resp.mapped, Some(want));
    assert_eq!(resp.transaction_id, h.transaction_id);

    let short_term = HMACKey::new_short_term(PASSWORD).unwrap();
    stun_rs_validates(m, short_term.clone());
    assert_eq!(
        oracle::check(m, &short_term),
        Ok(oracle::Outcome::BothAccept)
    );
    every_flip_fails(m, PASSWORD.as_bytes(), attr::MESSAGE_INTEGRITY);
}

#[test]
fn rfc5769_2_2_sample_ipv4_response() {
    check_response(&SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853".parse().unwrap());
}

#[test]
fn rfc5769_2_3_sample_ipv6_response() {
    check_response(
        &SAMPLE_IPV6_RESPONSE,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap(),
    );
}

#[test]
fn rfc5769_2_4_sample_request_long_term() {
    let m = &SAMPLE_REQUEST_LONG_TERM;
    let h = raw::parse_datagram(m).unwrap();
    assert_eq!(h.class(), Class::Request);
    assert_eq!(
        types(m),
        [
            attr::USERNAME,
            attr::NONCE,
            attr::REALM,
            attr::MESSAGE_INTEGRITY
        ]
    );
    assert_eq!(value(m, attr::USERNAME), LT_USERNAME.as_bytes());
    assert_eq!(value(m, attr::NONCE), b"f//499k954d6OL34oL9FSTvy64sA");
    assert_eq!(value(m, attr::REALM), LT_REALM.as_bytes());
    // An RFC 5389 nonce: no RFC 8489 nonce cookie.
    assert_eq!(
        nonce::security_features("f//499k954d6OL34oL9FSTvy64sA"),
        None
    );

    let key = LongTermKey::derive(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, LT_PASSWORD);
    assert_eq!(verify(m, &h, key.as_bytes()), Ok(IntegrityKind::Sha1));
    // No FINGERPRINT in this vector.
    assert_eq!(check_fingerprint(m, &h), Ok(false));
    // The password before SASLprep is not the key material.
    let raw_pw = LongTermKey::derive(
        PasswordAlgorithm::Md5,
        LT_USERNAME,
        LT_REALM,
        "The\u{00AD}M\u{00AA}tr\u{2168}",
    );
    assert_eq!(
        verify(m, &h, raw_pw.as_bytes()),
        Err(IntegrityError::Mismatch)
    );

    let text = |t| raw::decode_text(value(m, t), raw::MAX_TEXT_LEN);
    assert_eq!(text(attr::REALM), Some(LT_REALM));
    assert_eq!(text(attr::NONCE), Some("f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(
        raw::decode_text(value(m, attr::USERNAME), raw::MAX_USERNAME_LEN),
        Some(LT_USERNAME)
    );

    // stun-rs derives the same key independently (it applies OpaqueString).
    let theirs = their_long_term_key(AlgorithmId::MD5);
    assert_eq!(theirs.as_bytes(), key.as_bytes());
    stun_rs_validates(m, theirs.clone());
    assert_eq!(oracle::check(m, &theirs), Ok(oracle::Outcome::BothAccept));
    every_flip_fails(m, key.as_bytes(), attr::MESSAGE_INTEGRITY);
}

#[test]
fn rfc8489_b_1_sha256_with_userhash() {
    use sha2::{Digest, Sha256};

    let m = &SAMPLE_REQUEST_SHA256;
    let h = raw::parse_datagram(m).unwrap();
    assert_eq!(h.class(), Class::Request);
    assert_eq!(
        types(m),
        [
            attr::USERHASH,
            attr::NONCE,
            attr::REALM,
            attr::PASSWORD_ALGORITHM,
            attr::MESSAGE_INTEGRITY_SHA256
        ]
    );
    // RFC 8489 §14.4: userhash = SHA-256(username ":" realm).
    let userhash = Sha256::digest(format!("{LT_USERNAME}:{LT_REALM}").as_bytes());
    assert_eq!(value(m, attr::USERHASH), userhash.as_slice());
    // RFC 8489 §14.12: algorithm 0x0002 (SHA-256), no parameters.
    let alg = value(m, attr::PASSWORD_ALGORITHM);
    assert_eq!(
        PasswordAlgorithm::from_number(u16::from_be_bytes([alg[0], alg[1]])),
        Some(PasswordAlgorithm::Sha256)
    );
    let nonce_text = std::str::from_utf8(value(m, attr::NONCE)).unwrap();
    assert_eq!(nonce_text, "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA");
    // The vector carries the nonce cookie; its feature bits as printed.
    assert_eq!(nonce::security_features(nonce_text), Some(2));

    let key = LongTermKey::derive(
        PasswordAlgorithm::Sha256,
        LT_USERNAME,
        LT_REALM,
        LT_PASSWORD,
    );
    assert_eq!(key.as_bytes().len(), 32);
    assert_eq!(verify(m, &h, key.as_bytes()), Ok(IntegrityKind::Sha256));
    assert_eq!(check_fingerprint(m, &h), Ok(false));
    let md5_key = LongTermKey::derive(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, LT_PASSWORD);
    assert_eq!(
        verify(m, &h, md5_key.as_bytes()),
        Err(IntegrityError::Mismatch)
    );

    assert_eq!(
        raw::decode_password_algorithm(alg),
        Some(PasswordAlgorithm::Sha256.number())
    );
    assert_eq!(
        raw::decode_text(value(m, attr::REALM), raw::MAX_TEXT_LEN),
        Some(LT_REALM)
    );

    let theirs = their_long_term_key(AlgorithmId::SHA256);
    assert_eq!(theirs.as_bytes(), key.as_bytes());
    stun_rs_validates(m, theirs.clone());
    assert_eq!(oracle::check(m, &theirs), Ok(oracle::Outcome::BothAccept));
    every_flip_fails(m, key.as_bytes(), attr::MESSAGE_INTEGRITY_SHA256);
}

#[test]
fn one_flipped_byte_fails_integrity_and_fingerprint() {
    // The plain negative the brief asks for, on a value byte (SOFTWARE),
    // so the message still parses and the failure is the MAC's.
    for v in [
        &SAMPLE_REQUEST[..],
        &SAMPLE_IPV4_RESPONSE,
        &SAMPLE_IPV6_RESPONSE,
    ] {
        let mut m = v.to_vec();
        m[24] ^= 0x20;
        let h = raw::parse_datagram(&m).unwrap();
        assert_eq!(
            verify(&m, &h, PASSWORD.as_bytes()),
            Err(IntegrityError::Mismatch)
        );
        assert_eq!(
            check_fingerprint(&m, &h),
            Err(IntegrityError::BadFingerprint)
        );
        // stun-rs rejects it too.
        let short_term = HMACKey::new_short_term(PASSWORD).unwrap();
        assert_eq!(
            oracle::check(&m, &short_term),
            Ok(oracle::Outcome::BothReject)
        );
    }
    let mut m = SAMPLE_REQUEST_LONG_TERM.to_vec();
    m[60] ^= 1; // inside the NONCE value
    let key = LongTermKey::derive(PasswordAlgorithm::Md5, LT_USERNAME, LT_REALM, LT_PASSWORD);
    let h = raw::parse_datagram(&m).unwrap();
    assert_eq!(
        verify(&m, &h, key.as_bytes()),
        Err(IntegrityError::Mismatch)
    );
    let theirs = their_long_term_key(AlgorithmId::MD5);
    assert_eq!(oracle::check(&m, &theirs), Ok(oracle::Outcome::BothReject));
}
