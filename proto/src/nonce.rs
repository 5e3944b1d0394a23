//! Stateless nonces for the long-term credential mechanism (RFC 8489 §9.2).
//!
//! A nonce carries its own issue time and a MAC over that time and the
//! client's transport address, keyed with a server secret. The server keeps
//! no nonce table: a nonce it gets back is checked by recomputing the MAC, so
//! nothing can be flooded and restarts with the same key keep nonces valid.
//!
//! Two forms, both well under RFC 8489 §14.10's 128 characters:
//!
//! ```text
//! NonceForm::Features (29 characters):
//! "obMatJos2"  "gAAA"            base64url(timestamp[4] || mac[8])
//! nonce cookie security features  16 characters, no padding
//!
//! NonceForm::Plain (16 characters):
//! base64url(timestamp[4] || mac[8])
//! ```
//!
//! Short on purpose: the nonce rides in every 401 and 438, which anyone can
//! draw with a spoofed source address, so each byte is reflection. A 32-bit
//! timestamp lasts until 2106; a 64-bit MAC cannot be guessed online within
//! a nonce's minutes of life, one request per guess.
//!
//! In the features form the nonce cookie (RFC 8489 §9.2) comes first so
//! clients see that this server supports PASSWORD-ALGORITHMS and may pick
//! SHA-256. The MAC covers the cookie and feature bits too, so a man in the
//! middle cannot clear the bit to bid the client down to MD5 without the
//! nonce failing (§9.2.1). The plain form offers no security features
//! (the client uses MD5, RFC 8489 §9.2.4); it is the 13 characters a relay
//! saves when the answer must stay small (see the relay's amplification
//! bound). Each form's MAC has its own input, so one cannot pass for the
//! other. Every character is a letter, digit, `-` or `_`: `qdtext` in the
//! quoted-string grammar RFC 8489 §14.10 asks for.
//!
//! Keys: [`NonceKey::random`] for one process, [`NonceKey::from_bytes`] for
//! known bytes, and [`NonceKey::derive`] from a secret the relays behind one
//! name already share (their REST secret), so a nonce survives a restart
//! and is accepted by every relay of the fleet.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;

use crate::integrity::{constant_time_eq, hmac_sha256};
use crate::rest::unix_secs;

/// RFC 8489 §9.2: nonces starting with this tell the client the server
/// implements RFC 8489 (and so its security feature bits follow).
pub const NONCE_COOKIE: &str = "obMatJos2";

/// RFC 8489 §18.1 "STUN Security Features": bit 0 (the most significant of
/// the 24) is "Password algorithms".
pub const FEATURE_PASSWORD_ALGORITHMS: u32 = 1 << 23;
/// RFC 8489 §18.1: bit 1 is "Username anonymity" (USERHASH).
pub const FEATURE_USERNAME_ANONYMITY: u32 = 1 << 22;

/// The features natkit advertises: password algorithms (MD5 and SHA-256).
const FEATURES: u32 = FEATURE_PASSWORD_ALGORITHMS;

/// Length of the prefix: cookie plus 4 base64 characters of feature bits.
const PREFIX_LEN: usize = NONCE_COOKIE.len() + 4;
/// Bytes of truncated HMAC-SHA256: 64 bits, against forgery by online
/// guessing within a nonce's lifetime of minutes.
const MAC_LEN: usize = 8;
/// Timestamp bytes (Unix seconds, big endian, 32 bits: until 2106).
const TS_LEN: usize = 4;
/// Length of the base64url payload (timestamp and MAC) in characters.
const PAYLOAD_LEN: usize = (4 * (TS_LEN + MAC_LEN)).div_ceil(3);
/// Length of a nonce of the features form ([`NonceForm::Features`]) in
/// characters.
pub const NONCE_LEN: usize = PREFIX_LEN + PAYLOAD_LEN;
/// Length of a nonce of the plain form ([`NonceForm::Plain`]) in characters.
pub const PLAIN_NONCE_LEN: usize = PAYLOAD_LEN;

/// PBKDF2 iterations of [`NonceKey::derive`]: anyone can draw nonces, so a
/// secret must not be cheaper to guess offline against one than against a
/// REST password (which any holder of a credential can test at one HMAC
/// per guess): here a guess costs 16384 HMACs. About 10 ms per secret at
/// start-up and on reload.
pub const DERIVE_ITERATIONS: u32 = 1 << 14;

/// Which form a nonce has (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceForm {
    /// Nonce cookie and security feature bits first: the server offers
    /// PASSWORD-ALGORITHMS (RFC 8489 §9.2.1).
    Features,
    /// Timestamp and MAC only: no security features, MD5 keys.
    Plain,
}

/// The secret that signs and checks nonces.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
    prefix: [u8; PREFIX_LEN],
}

impl fmt::Debug for NonceKey {
    // A secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// An issued nonce, held on the stack.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce {
    buf: [u8; NONCE_LEN],
    len: u8,
}

impl Nonce {
    /// The nonce text, to put in a NONCE attribute.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or_default()
    }
}

impl AsRef<str> for Nonce {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({:?})", self.as_str())
    }
}

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// A nonce we issued to this client, but too old (or, after a clock
    /// step, too far in the future). TURN answers 438 (Stale Nonce) with a
    /// fresh nonce (RFC 8489 §9.2.4, RFC 8656 §7).
    #[error("stale nonce")]
    Stale,
    /// Not a nonce this server issued to this client: forged, tampered,
    /// issued to another address, or not a nonce of ours at all.
    #[error("invalid nonce")]
    Invalid,
}

impl NonceKey {
    /// A fresh random key from the operating system's generator.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_bytes(key)
    }

    /// A key derived from `secret` (PBKDF2-HMAC-SHA256,
    /// [`DERIVE_ITERATIONS`] rounds, salted with `context`, e.g. the realm):
    /// every server with the same secret and context has the same key, so
    /// its nonces survive restarts and are accepted across a fleet. The
    /// nonce key is not the secret: a nonce tells nothing about the secret
    /// that is cheaper to learn than by guessing it through the iterations.
    pub fn derive(secret: &[u8], context: &str) -> Self {
        Self::from_bytes(pbkdf2_sha256(secret, context.as_bytes(), DERIVE_ITERATIONS))
    }

    /// A key from known bytes (shared between servers behind one name, or
    /// kept across restarts).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..NONCE_COOKIE.len()].copy_from_slice(NONCE_COOKIE.as_bytes());
        // RFC 8489 §9.2: the 24 feature bits as 4 characters of base64.
        let bits = FEATURES.to_be_bytes();
        let written = STANDARD
            .encode_slice(&bits[1..], &mut prefix[NONCE_COOKIE.len()..])
            .unwrap_or(0);
        debug_assert_eq!(written, 4);
        NonceKey { key, prefix }
    }

    fn mac(&self, form: NonceForm, ts: &[u8; TS_LEN], client: SocketAddr) -> [u8; 32] {
        // Features: prefix || timestamp || family || address || port.
        // Plain: 0x00 || timestamp || ...: the prefix starts with 'o', so
        // the two inputs never coincide.
        let prefix: &[u8] = match form {
            NonceForm::Features => &self.prefix,
            NonceForm::Plain => &[0],
        };
        let mut input = [0u8; PREFIX_LEN + TS_LEN + 1 + 16 + 2];
        let mut n = 0;
        for part in [prefix, &ts[..]] {
            input[n..n + part.len()].copy_from_slice(part);
            n += part.len();
        }
        // A dual-stack socket may report an IPv4 client as ::ffff:a.b.c.d;
        // treat both spellings as the same client.
        match client.ip().to_canonical() {
            IpAddr::V4(ip) => {
                input[n] = 4;
                input[n + 1..n + 5].copy_from_slice(&ip.octets());
                n += 5;
            }
            IpAddr::V6(ip) => {
                input[n] = 6;
                input[n + 1..n + 17].copy_from_slice(&ip.octets());
                n += 17;
            }
        }
        input[n..n + 2].copy_from_slice(&client.port().to_be_bytes());
        n += 2;
        hmac_sha256(&self.key, &input[..n])
    }

    /// Issue a nonce of the features form for `client` at time `now`.
    pub fn issue(&self, client: SocketAddr, now: SystemTime) -> Nonce {
        self.issue_form(NonceForm::Features, client, now)
    }

    /// Issue a nonce of the given form for `client` at time `now`.
    pub fn issue_form(&self, form: NonceForm, client: SocketAddr, now: SystemTime) -> Nonce {
        let ts = (unix_secs(now).min(u32::MAX as u64) as u32).to_be_bytes();
        let mac = self.mac(form, &ts, client);
        let mut payload = [0u8; TS_LEN + MAC_LEN];
        payload[..TS_LEN].copy_from_slice(&ts);
        payload[TS_LEN..].copy_from_slice(&mac[..MAC_LEN]);
        let mut buf = [0u8; NONCE_LEN];
        let start = match form {
            NonceForm::Features => {
                buf[..PREFIX_LEN].copy_from_slice(&self.prefix);
                PREFIX_LEN
            }
            NonceForm::Plain => 0,
        };
        let written = URL_SAFE_NO_PAD
            .encode_slice(payload, &mut buf[start..])
            .unwrap_or(0);
        debug_assert_eq!(written, PAYLOAD_LEN);
        Nonce {
            buf,
            len: (start + PAYLOAD_LEN) as u8,
        }
    }

    /// Check a nonce a client sent back: issued by this key, to `client`,
    /// no more than `max_age` before `now`.
    pub fn verify(
        &self,
        nonce: &str,
        client: SocketAddr,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<(), NonceError> {
        self.verify_form(nonce, client, now, max_age).map(|_| ())
    }

    /// [`NonceKey::verify`], also saying which form the nonce has (whether
    /// this server offered PASSWORD-ALGORITHMS with it).
    pub fn verify_form(
        &self,
        nonce: &str,
        client: SocketAddr,
        now: SystemTime,
        max_age: Duration,
    ) -> Result<NonceForm, NonceError> {
        let b = nonce.as_bytes();
        let (form, encoded) = if b.len() == NONCE_LEN && b[..PREFIX_LEN] == self.prefix {
            (NonceForm::Features, &b[PREFIX_LEN..])
        } else if b.len() == PLAIN_NONCE_LEN {
            (NonceForm::Plain, b)
        } else {
            return Err(NonceError::Invalid);
        };
        // One spare byte: the decoder wants room for its length estimate.
        let mut payload = [0u8; TS_LEN + MAC_LEN + 1];
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut payload) {
            Ok(n) if n == TS_LEN + MAC_LEN => {}
            _ => return Err(NonceError::Invalid),
        }
        let mut ts = [0u8; TS_LEN];
        ts.copy_from_slice(&payload[..TS_LEN]);
        let mac = self.mac(form, &ts, client);
        if !constant_time_eq(&mac[..MAC_LEN], &payload[TS_LEN..TS_LEN + MAC_LEN]) {
            return Err(NonceError::Invalid);
        }
        // Only now is the timestamp trusted. One from the future can only
        // come from our own clock having stepped back; accept it within
        // max_age so a small step does not fail every client at once.
        let issued = u32::from_be_bytes(ts) as u64;
        let now = unix_secs(now);
        let max_age = max_age.as_secs();
        let fresh = if issued <= now {
            now - issued <= max_age
        } else {
            issued - now <= max_age
        };
        if fresh {
            Ok(form)
        } else {
            Err(NonceError::Stale)
        }
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) with one 32-byte output block.
fn pbkdf2_sha256(secret: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let prf = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    let mut first = prf.clone();
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = first.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut m = prf.clone();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// The RFC 8489 §9.2 security feature bits of a nonce, if it starts with
/// the nonce cookie (for clients deciding whether to offer SHA-256).
pub fn security_features(nonce: &str) -> Option<u32> {
    let rest = nonce.strip_prefix(NONCE_COOKIE)?;
    let chars = rest.as_bytes().get(..4)?;
    let mut bits = [0u8; 3];
    match STANDARD.decode_slice(chars, &mut bits) {
        Ok(3) => Some(u32::from_be_bytes([0, bits[0], bits[1], bits[2]])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn client() -> SocketAddr {
        "192.0.2.10:40000".parse().unwrap()
    }

    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn shape_is_a_short_quoted_string_safe_cookie_nonce() {
        let k = NonceKey::random();
        let n = k.issue(client(), at(1_700_000_000));
        let s = n.as_str();
        assert_eq!(s.len(), NONCE_LEN);
        assert_eq!(NONCE_LEN, 29);
        assert!(s.len() < 128);
        assert!(s.starts_with("obMatJos2gAAA"), "{s}");
        assert!(s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(security_features(s), Some(FEATURE_PASSWORD_ALGORITHMS));
        assert_eq!(n.to_string(), s);
    }

    #[test]
    fn valid_within_max_age() {
        let k = NonceKey::from_bytes([1; 32]);
        let n = k.issue(client(), at(1_000));
        assert_eq!(k.verify(n.as_str(), client(), at(1_000), MAX), Ok(()));
        assert_eq!(k.verify(n.as_str(), client(), at(1_600), MAX), Ok(()));
        // Same key bytes on another server instance: still valid.
        let k2 = NonceKey::from_bytes([1; 32]);
        assert_eq!(k2.verify(n.as_str(), client(), at(1_100), MAX), Ok(()));
    }

    #[test]
    fn expired_is_stale_not_invalid() {
        let k = NonceKey::from_bytes([2; 32]);
        let n = k.issue(client(), at(1_000));
        assert_eq!(
            k.verify(n.as_str(), client(), at(1_601), MAX),
            Err(NonceError::Stale)
        );
        // Far in the future after a clock step back: stale too.
        assert_eq!(
            k.verify(n.as_str(), client(), at(100), MAX),
            Err(NonceError::Stale)
        );
        assert_eq!(k.verify(n.as_str(), client(), at(500), MAX), Ok(()));
    }

    #[test]
    fn other_client_or_key_is_invalid() {
        let k = NonceKey::from_bytes([3; 32]);
        let n = k.issue(client(), at(1_000));
        for other in [
            "192.0.2.10:40001",
            "192.0.2.11:40000",
            "[2001:db8::1]:40000",
        ] {
            assert_eq!(
                k.verify(n.as_str(), other.parse().unwrap(), at(1_000), MAX),
                Err(NonceError::Invalid),
                "{other}"
            );
        }
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:40000".parse().unwrap();
        assert_eq!(k.verify(n.as_str(), mapped, at(1_000), MAX), Ok(()));
        assert_eq!(
            NonceKey::from_bytes([4; 32]).verify(n.as_str(), client(), at(1_000), MAX),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn tampering_anywhere_is_invalid() {
        let k = NonceKey::from_bytes([5; 32]);
        let n = k.issue(client(), at(1_000));
        let s = n.as_str();
        for i in 0..s.len() {
            for repl in ['A', 'z', '0', '-', '_', '+', '/', '='] {
                let mut t = s.as_bytes().to_vec();
                if t[i] == repl as u8 {
                    continue;
                }
                t[i] = repl as u8;
                let t = String::from_utf8(t).unwrap();
                assert_eq!(
                    k.verify(&t, client(), at(1_000), MAX),
                    Err(NonceError::Invalid),
                    "{t}"
                );
            }
        }
        // Clearing the PASSWORD-ALGORITHMS bit (a bid-down) is caught.
        let bid_down = s.replacen("gAAA", "AAAA", 1);
        assert_eq!(
            k.verify(&bid_down, client(), at(1_000), MAX),
            Err(NonceError::Invalid)
        );
        // Moving the timestamp forward to extend a nonce's life fails.
        let mut payload = URL_SAFE_NO_PAD.decode(&s[PREFIX_LEN..]).unwrap();
        payload[7] = payload[7].wrapping_add(100);
        let forged = format!("{}{}", &s[..PREFIX_LEN], URL_SAFE_NO_PAD.encode(&payload));
        assert_eq!(
            k.verify(&forged, client(), at(1_000), MAX),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn garbage_is_invalid_and_never_panics() {
        let k = NonceKey::from_bytes([6; 32]);
        let valid = k.issue(client(), at(1_000)).to_string();
        let cases = [
            String::new(),
            "x".into(),
            NONCE_COOKIE.into(),
            "obMatJos2gAAA".into(),
            "f//499k954d6OL34oL9FSTvy64sA".into(),
            valid[..NONCE_LEN - 1].into(),
            format!("{valid}A"),
            "obMatJos2gAAA€€€€€€€€€".into(),
            format!("{}{}", &valid[..PREFIX_LEN], "é".repeat(13) + "x"),
            "\0".repeat(NONCE_LEN),
        ];
        for c in &cases {
            assert_eq!(
                k.verify(c, client(), at(1_000), MAX),
                Err(NonceError::Invalid),
                "{c:?}"
            );
        }
    }

    #[test]
    fn security_features_of_foreign_nonces() {
        // RFC 8489 Appendix B.1 uses "obMatJos2AAAC...".
        assert_eq!(
            security_features("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA"),
            Some(2)
        );
        assert_eq!(security_features("obMatJos2wAAA"), Some(0xC0_0000));
        assert_eq!(security_features("f//499k954d6OL34oL9FSTvy64sA"), None);
        assert_eq!(security_features("obMatJos2gA"), None);
        assert_eq!(security_features("obMatJos2!!!!"), None);
    }

    #[test]
    fn plain_form_is_short_and_neither_form_passes_for_the_other() {
        let k = NonceKey::from_bytes([8; 32]);
        let plain = k.issue_form(NonceForm::Plain, client(), at(1_000));
        let full = k.issue(client(), at(1_000));
        assert_eq!(plain.as_str().len(), PLAIN_NONCE_LEN);
        assert_eq!(PLAIN_NONCE_LEN, 16);
        assert!(!plain.as_str().starts_with(NONCE_COOKIE));
        assert_eq!(security_features(plain.as_str()), None);
        let v = |n: &str, t| k.verify_form(n, client(), at(t), MAX);
        assert_eq!(v(plain.as_str(), 1_000), Ok(NonceForm::Plain));
        assert_eq!(v(full.as_str(), 1_000), Ok(NonceForm::Features));
        assert_eq!(v(plain.as_str(), 1_601), Err(NonceError::Stale));
        // The payload of one form under the other's prefix: refused (the
        // MAC inputs differ), so the cookie cannot be added or stripped.
        let stripped = &full.as_str()[NONCE_LEN - PLAIN_NONCE_LEN..];
        assert_eq!(v(stripped, 1_000), Err(NonceError::Invalid));
        let dressed = format!("{}{}", &full.as_str()[..PREFIX_LEN], plain.as_str());
        assert_eq!(v(&dressed, 1_000), Err(NonceError::Invalid));
        assert_eq!(
            k.verify(
                plain.as_str(),
                "192.0.2.10:40001".parse().unwrap(),
                at(1_000),
                MAX
            ),
            Err(NonceError::Invalid)
        );
    }

    #[test]
    fn pbkdf2_matches_rfc_7914_vectors() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // RFC 7914 §11, the first 32 bytes of each.
        assert_eq!(
            hex(pbkdf2_sha256(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex(pbkdf2_sha256(b"Password", b"NaCl", 80_000)),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn derived_keys_agree_across_instances_and_differ_by_secret_and_context() {
        let a = NonceKey::derive(b"shared-secret", "example.org");
        let n = a.issue(client(), at(1_000));
        let b = NonceKey::derive(b"shared-secret", "example.org");
        assert_eq!(b.verify(n.as_str(), client(), at(1_010), MAX), Ok(()));
        for other in [
            NonceKey::derive(b"other-secret", "example.org"),
            NonceKey::derive(b"shared-secret", "other.example"),
        ] {
            assert_eq!(
                other.verify(n.as_str(), client(), at(1_010), MAX),
                Err(NonceError::Invalid)
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let d = format!("{:?}", NonceKey::from_bytes([0xAB; 32]));
        assert!(
            !d.contains("171") && !d.to_lowercase().contains("ab"),
            "{d}"
        );
    }
}
