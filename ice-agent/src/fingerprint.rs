//! Certificate fingerprints (RFC 8122 §5 "sha-256"): what a description
//! signals so each side can pin the other's self-signed QUIC certificate.
//! Sans-IO: computing and parsing one needs no TLS library.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint (RFC 8122 §5 "sha-256").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    /// Upper-case hex pairs joined by colons, as in SDP's `a=fingerprint`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint that is not 32 colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad certificate fingerprint {0:?}: expected 32 hex bytes separated by colons")]
pub struct FingerprintParseError(String);

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintParseError(s.chars().take(120).collect());
        let mut out = [0u8; 32];
        let mut n = 0;
        for part in s.split(':') {
            if n == 32 || part.len() != 2 {
                return Err(bad());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            n += 1;
        }
        if n != 32 {
            return Err(bad());
        }
        Ok(Fingerprint(out))
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.to_string()
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = FingerprintParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
