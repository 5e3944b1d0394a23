//! Message integrity and fingerprints (RFC 8489 §9, §14.5-§14.7), without
//! allocation: keys, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and
//! FINGERPRINT computed and checked over a borrowed message.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use crate::raw::{attr, Attributes, Header, RawError, HEADER_LEN};

/// RFC 8489 §14.7: the CRC-32 is XORed with this constant ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// HMAC-SHA1 of `data` under `key`.
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    hmac_sha1_parts(key, &[data])
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    hmac_sha256_parts(key, &[data])
}

fn hmac_sha1_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn hmac_sha256_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// FINGERPRINT value over `data` (the message up to the attribute, with the
/// header length already covering the FINGERPRINT attribute).
pub fn fingerprint(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}

/// Password algorithms of RFC 8489 §18.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PasswordAlgorithm {
    /// MD5, the RFC 5389 default (algorithm number 0x0001).
    Md5,
    /// SHA-256 (algorithm number 0x0002).
    Sha256,
}

impl PasswordAlgorithm {
    /// The number used in PASSWORD-ALGORITHM(S).
    pub fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm with this number, if known.
    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// A long-term credential key (RFC 8489 §9.2.2). Holds up to 32 bytes; MD5
/// keys use the first 16.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey {
    bytes: [u8; 32],
    len: u8,
}

impl std::fmt::Debug for LongTermKey {
    // Keys are secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LongTermKey({} bytes)", self.len)
    }
}

impl LongTermKey {
    /// key = H(username ":" realm ":" password), H being MD5 or SHA-256.
    /// RFC 8489 §9.2.2 asks for OpaqueString processing of realm and password;
    /// natkit passes them through unchanged, which is what that profile does
    /// for the ASCII credentials every deployed TURN server uses.
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Self {
        let parts: [&[u8]; 5] = [
            username.as_bytes(),
            b":",
            realm.as_bytes(),
            b":",
            password.as_bytes(),
        ];
        let mut bytes = [0u8; 32];
        let len = match algorithm {
            PasswordAlgorithm::Md5 => {
                let mut h = Md5::new();
                parts.iter().for_each(|p| h.update(p));
                bytes[..16].copy_from_slice(&h.finalize());
                16
            }
            PasswordAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                bytes.copy_from_slice(&h.finalize());
                32
            }
        };
        LongTermKey {
            bytes,
            len: len as u8,
        }
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Which integrity attribute protected a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// Why an integrity or fingerprint check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("malformed message: {0}")]
    Malformed(#[from] RawError),
    #[error("no MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 attribute")]
    Missing,
    #[error("integrity attribute has a bad length")]
    BadLength,
    #[error("message integrity check failed")]
    Mismatch,
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
}

/// Header bytes with the length field rewritten to `len` (integrity and
/// fingerprints are computed as if the message ended at their attribute).
fn header_with_length(msg: &[u8], len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&msg[..HEADER_LEN]);
    h[2..4].copy_from_slice(&((len - HEADER_LEN) as u16).to_be_bytes());
    h
}

/// Check the FINGERPRINT of a message, if it has one. Returns whether one was
/// present. RFC 8489 §14.7: it must be the last attribute.
pub fn check_fingerprint(msg: &[u8], header: &Header) -> Result<bool, IntegrityError> {
    let mut found = None;
    for a in Attributes::new(msg, header) {
        let a = a?;
        if found.is_some() {
            return Err(IntegrityError::FingerprintNotLast);
        }
        if a.typ == attr::FINGERPRINT {
            found = Some(a);
        }
    }
    let Some(a) = found else { return Ok(false) };
    if a.value.len() != 4 {
        return Err(IntegrityError::BadFingerprint);
    }
    let want = u32::from_be_bytes([a.value[0], a.value[1], a.value[2], a.value[3]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header_with_length(msg, a.offset + 8));
    crc.update(&msg[HEADER_LEN..a.offset]);
    if crc.finalize() ^ FINGERPRINT_XOR != want {
        return Err(IntegrityError::BadFingerprint);
    }
    Ok(true)
}

/// Verify the integrity attribute of a message with `key` (a long-term key's
/// bytes, or a short-term password). When both are present,
/// MESSAGE-INTEGRITY-SHA256 is checked (RFC 8489 §9.1.4 prefers it).
/// Attributes after the integrity attribute other than FINGERPRINT (and
/// MESSAGE-INTEGRITY-SHA256 after MESSAGE-INTEGRITY) are ignored, as RFC 8489
/// §14.5 requires.
pub fn verify(msg: &[u8], header: &Header, key: &[u8]) -> Result<IntegrityKind, IntegrityError> {
    let mut sha1 = None;
    let mut sha256 = None;
    for a in Attributes::new(msg, header) {
        let a = a?;
        match a.typ {
            attr::MESSAGE_INTEGRITY if sha1.is_none() && sha256.is_none() => sha1 = Some(a),
            attr::MESSAGE_INTEGRITY_SHA256 if sha256.is_none() => {
                sha256 = Some(a);
                break;
            }
            _ if sha1.is_some() => {}
            _ => {}
        }
    }
    if let Some(a) = sha256 {
        // RFC 8489 §14.6: may be truncated to no less than 16 bytes, in
        // multiples of 4.
        let n = a.value.len();
        if !(16..=32).contains(&n) || n % 4 != 0 {
            return Err(IntegrityError::BadLength);
        }
        let end = a.offset + 4 + n;
        let mac = hmac_sha256_parts(
            key,
            &[&header_with_length(msg, end), &msg[HEADER_LEN..a.offset]],
        );
        return if constant_time_eq(&mac[..n], a.value) {
            Ok(IntegrityKind::Sha256)
        } else {
            Err(IntegrityError::Mismatch)
        };
    }
    if let Some(a) = sha1 {
        if a.value.len() != 20 {
            return Err(IntegrityError::BadLength);
        }
        let mac = hmac_sha1_parts(
            key,
            &[
                &header_with_length(msg, a.offset + 24),
                &msg[HEADER_LEN..a.offset],
            ],
        );
        return if constant_time_eq(&mac, a.value) {
            Ok(IntegrityKind::Sha1)
        } else {
            Err(IntegrityError::Mismatch)
        };
    }
    Err(IntegrityError::Missing)
}

/// Compare MACs without an early exit, so timing does not reveal how many
/// leading bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{method, parse_datagram, Class};
    use crate::writer::Writer;

    #[test]
    fn long_term_key_md5_matches_rfc5769() {
        // RFC 5769 §2.4: username "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>",
        // realm "example.org", password "TheMatrIX" (after SASLprep).
        let k = LongTermKey::derive(
            PasswordAlgorithm::Md5,
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
            "TheMatrIX",
        );
        assert_eq!(k.as_bytes().len(), 16);
        assert_eq!(format!("{k:?}"), "LongTermKey(16 bytes)");
    }

    #[test]
    fn writer_and_verify_agree_and_detect_tampering() {
        let key = LongTermKey::derive(PasswordAlgorithm::Sha256, "u", "r", "p");
        for kind in [IntegrityKind::Sha1, IntegrityKind::Sha256] {
            let mut buf = [0u8; 256];
            let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[3; 12]).unwrap();
            w.bytes(attr::USERNAME, b"u").unwrap();
            match kind {
                IntegrityKind::Sha1 => w.message_integrity(key.as_bytes()).unwrap(),
                IntegrityKind::Sha256 => w.message_integrity_sha256(key.as_bytes()).unwrap(),
            }
            let n = w.fingerprint().unwrap();
            let h = parse_datagram(&buf[..n]).unwrap();
            assert_eq!(verify(&buf[..n], &h, key.as_bytes()), Ok(kind));
            assert_eq!(check_fingerprint(&buf[..n], &h), Ok(true));
            assert_eq!(
                verify(&buf[..n], &h, b"wrong key"),
                Err(IntegrityError::Mismatch)
            );
            buf[24] ^= 1;
            assert_eq!(
                verify(&buf[..n], &h, key.as_bytes()),
                Err(IntegrityError::Mismatch)
            );
            assert_eq!(
                check_fingerprint(&buf[..n], &h),
                Err(IntegrityError::BadFingerprint)
            );
        }
    }
}
