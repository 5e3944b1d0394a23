//! The long-term credential mechanism on the relay side (RFC 8489 §9.2,
//! RFC 8656 §5): static users and REST shared secrets, stateless nonces,
//! PASSWORD-ALGORITHMS, and a bounded per-source limiter for 401 answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use crate::integrity::{self, IntegrityKind, LongTermKey, PasswordAlgorithm};
use crate::nonce::{NonceError, NonceKey};
use crate::raw::Header;
use crate::rest::{RestError, RestSecrets};
use crate::turn::request::TurnRequest;

/// Who may allocate: static users and REST secrets. Swapped whole on reload.
#[derive(Debug, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
    rest: RestSecrets,
}

impl Credentials {
    /// Static users (name → password) and REST secrets (first one signs).
    pub fn new(users: HashMap<String, String>, rest: RestSecrets) -> Self {
        Credentials { users, rest }
    }

    /// Whether any way to authenticate is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.rest.is_empty()
    }

    /// Candidate passwords for `username`: its static password, else the
    /// REST passwords under every secret (for rotation).
    fn passwords(&self, username: &str, now: SystemTime) -> Result<Vec<String>, AuthError> {
        if let Some(p) = self.users.get(username) {
            return Ok(vec![p.clone()]);
        }
        match self.rest.passwords_for(username, now) {
            Ok(it) => Ok(it.collect()),
            Err(RestError::Expired { .. }) => Err(AuthError::Expired),
            Err(_) => Err(AuthError::UnknownUser),
        }
    }
}

/// Why a request did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials at all: answer 401 with a nonce (the first leg).
    Missing,
    /// NONCE is too old: answer 438 with a fresh one.
    StaleNonce,
    /// USERNAME, REALM or NONCE missing next to the integrity attribute, or
    /// PASSWORD-ALGORITHM(S) inconsistent: 400.
    BadRequest,
    /// Unknown user, forged nonce, wrong realm or integrity mismatch: 401.
    Unauthorized,
    /// REST credentials past their expiry: 401.
    Expired,
    /// Username not known (counted apart from wrong passwords).
    UnknownUser,
}

/// A verified request's key, used to sign the answer.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    pub key: LongTermKey,
    pub kind: IntegrityKind,
}

/// Nonce issuing and checking, and request verification.
pub struct Authenticator {
    pub realm: String,
    nonce_key: NonceKey,
    nonce_ttl: Duration,
}

impl Authenticator {
    pub fn new(realm: String, nonce_key: NonceKey, nonce_ttl: Duration) -> Self {
        Authenticator {
            realm,
            nonce_key,
            nonce_ttl,
        }
    }

    /// A fresh nonce for `client`.
    pub fn nonce(&self, client: SocketAddr, now: SystemTime) -> crate::nonce::Nonce {
        self.nonce_key.issue(client, now)
    }

    /// Verify a request's credentials (RFC 8489 §9.2.4).
    pub fn verify(
        &self,
        creds: &Credentials,
        msg: &[u8],
        header: &Header,
        req: &TurnRequest<'_>,
        client: SocketAddr,
        now: SystemTime,
    ) -> Result<(Verified, String), AuthError> {
        if req.integrity.is_none() {
            return Err(AuthError::Missing);
        }
        let (Some(username), Some(realm), Some(nonce)) = (req.username, req.realm, req.nonce)
        else {
            return Err(AuthError::BadRequest);
        };
        match self.nonce_key.verify(nonce, client, now, self.nonce_ttl) {
            Ok(()) => {}
            Err(NonceError::Stale) => return Err(AuthError::StaleNonce),
            Err(_) => return Err(AuthError::Unauthorized),
        }
        if realm != self.realm {
            return Err(AuthError::Unauthorized);
        }
        // RFC 8489 §9.2.4: PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS come
        // together, and the latter must be the list we offer (a bid-down
        // check); with neither, MD5.
        let algorithm = match (req.password_algorithm, req.password_algorithms) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(n), Some(list)) if list == OFFERED_ALGORITHMS => {
                PasswordAlgorithm::from_number(n).ok_or(AuthError::BadRequest)?
            }
            _ => return Err(AuthError::BadRequest),
        };
        for password in creds.passwords(username, now)? {
            let key = LongTermKey::derive(algorithm, username, realm, &password);
            if let Ok(kind) = integrity::verify(msg, header, key.as_bytes()) {
                return Ok((Verified { key, kind }, username.to_string()));
            }
        }
        Err(AuthError::Unauthorized)
    }
}

/// The PASSWORD-ALGORITHMS value natkit offers (RFC 8489 §14.11): SHA-256
/// first, then MD5, each with no parameters.
pub const OFFERED_ALGORITHMS: &[u8] = &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// Limits 401 answers per source address with a fixed-size table of token
/// buckets indexed by a hash of the IP: bounded memory whatever the number
/// of sources, nothing stored per client. A collision only shares a bucket.
pub struct UnauthLimiter {
    slots: Vec<(u32, Instant)>,
    per_second: u32,
    burst: u32,
    hash_key: u64,
}

impl UnauthLimiter {
    /// `per_second` answers per source on average, `burst` at once;
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32, burst: u32, table_size: usize, now: Instant) -> Self {
        UnauthLimiter {
            slots: vec![(burst, now); table_size.max(1)],
            per_second,
            burst: burst.max(1),
            hash_key: rand::random(),
        }
    }

    fn slot(&self, ip: IpAddr) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash_key.hash(&mut h);
        ip.hash(&mut h);
        (h.finish() % self.slots.len() as u64) as usize
    }

    /// Whether one more unauthenticated answer may go to `ip` now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let i = self.slot(ip);
        let (tokens, last) = &mut self.slots[i];
        let elapsed = now.saturating_duration_since(*last);
        let refill = (elapsed.as_millis() as u64 * self.per_second as u64 / 1000) as u32;
        if refill > 0 {
            *tokens = (*tokens).saturating_add(refill).min(self.burst);
            *last = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_bounds_answers_per_source() {
        let t0 = Instant::now();
        let mut l = UnauthLimiter::new(10, 5, 1024, t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..20).filter(|_| l.allow(a, t0)).count(), 5);
        assert!(l.allow(b, t0) || l.slot(a) == l.slot(b));
        // 10/s: after 500 ms five more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| l.allow(a, t1)).count(), 5);
        let mut off = UnauthLimiter::new(0, 0, 1, t0);
        assert!((0..100).all(|_| off.allow(a, t0)));
    }
}
