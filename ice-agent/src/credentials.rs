//! ICE credentials (RFC 8445 §5.3): the username fragment and password each
//! agent signals, used as short-term credentials on connectivity checks.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::candidate::is_ice_chars;

/// RFC 8839 §5.4 ice-chars, the alphabet of ufrags and passwords.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of generated ufrags: 8 ice-chars carry 48 random bits, above the
/// 24 bits RFC 8445 §5.3 requires.
pub const UFRAG_LEN: usize = 8;
/// Length of generated passwords: 24 ice-chars carry 144 random bits, above
/// the 128 bits RFC 8445 §5.3 requires.
pub const PWD_LEN: usize = 24;

/// Shortest ufrag accepted from a peer (RFC 8839 §5.4: 4 to 256 chars).
pub const MIN_UFRAG_LEN: usize = 4;
/// Shortest password accepted from a peer (RFC 8839 §5.4: 22 to 256 chars).
pub const MIN_PWD_LEN: usize = 22;
/// Longest ufrag or password accepted (RFC 8839 §5.4).
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// A ufrag and password. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Username fragment.
    pub ufrag: String,
    /// Password: the short-term credential key (RFC 8445 §7.2.2).
    pub pwd: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

/// Why a peer's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The ufrag is not 4-256 ice-chars (RFC 8839 §5.4).
    #[error("ICE ufrag must be 4 to 256 characters of A-Z a-z 0-9 + /")]
    BadUfrag,
    /// The password is not 22-256 ice-chars (RFC 8839 §5.4).
    #[error("ICE password must be 22 to 256 characters of A-Z a-z 0-9 + /")]
    BadPassword,
}

impl Credentials {
    /// Fresh random credentials (RFC 8445 §5.3), drawn from `rng` (the
    /// agent's cryptographically strong generator).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut draw = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ICE_CHARS[rng.gen_range(0..ICE_CHARS.len())]))
                .collect()
        };
        let ufrag = draw(UFRAG_LEN);
        let pwd = draw(PWD_LEN);
        Credentials { ufrag, pwd }
    }

    /// Credentials from a peer, checked against RFC 8839 §5.4.
    pub fn new(ufrag: &str, pwd: &str) -> Result<Self, CredentialsError> {
        if ufrag.len() < MIN_UFRAG_LEN || !is_ice_chars(ufrag, MAX_CREDENTIAL_LEN) {
            return Err(CredentialsError::BadUfrag);
        }
        if pwd.len() < MIN_PWD_LEN || !is_ice_chars(pwd, MAX_CREDENTIAL_LEN) {
            return Err(CredentialsError::BadPassword);
        }
        Ok(Credentials {
            ufrag: ufrag.to_owned(),
            pwd: pwd.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_credentials_are_valid_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = Credentials::random(&mut rng);
        let b = Credentials::random(&mut rng);
        assert_ne!(a, b);
        assert_eq!(a.ufrag.len(), UFRAG_LEN);
        assert_eq!(a.pwd.len(), PWD_LEN);
        assert_eq!(Credentials::new(&a.ufrag, &a.pwd), Ok(a.clone()));
        assert!(!format!("{a:?}").contains(&a.pwd));
    }

    #[test]
    fn peer_credentials_are_checked() {
        let pwd = "asd88fgpdd777uzjYhagZg";
        assert!(Credentials::new("abcd", pwd).is_ok());
        assert_eq!(
            Credentials::new("abc", pwd),
            Err(CredentialsError::BadUfrag)
        );
        assert_eq!(
            Credentials::new("ab:d", pwd),
            Err(CredentialsError::BadUfrag)
        );
        assert_eq!(
            Credentials::new("abcd", "short"),
            Err(CredentialsError::BadPassword)
        );
    }
}
