//! REST-style expiring TURN credentials (draft-uberti-behave-turn-rest,
//! coturn's `use-auth-secret`).
//!
//! A web service and the TURN server share a secret. The service hands a
//! client a username `"<expiry unix seconds>:<user>"` and the password
//! `base64(HMAC-SHA1(secret, username))`; the TURN server recomputes the
//! password from the username alone, so it keeps no per-user state. The
//! password then feeds the usual long-term credential mechanism
//! (RFC 8489 §9.2) like any other password.
//!
//! Secrets rotate: [`RestSecrets`] holds several, signs with the first and
//! accepts credentials made with any of them, so a new secret can be rolled
//! out before the old one is retired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::integrity::{constant_time_eq, hmac_sha1};

/// Separator between the expiry and the user in a REST username (coturn's
/// default `rest-api-separator`).
pub const SEPARATOR: char = ':';

/// Credentials handed to a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `"<expiry>:<user>"`, or just `"<expiry>"` when the user is empty.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl std::fmt::Debug for Credentials {
    // The password is as good as the secret for this username: keep it out
    // of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a REST username was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// No shared secret is configured, so no REST credential can be checked.
    #[error("no REST API secret configured")]
    NoSecrets,
    /// The username's expiry time has passed.
    #[error("credentials expired at {expired_at} (unix seconds)")]
    Expired {
        /// The expiry carried in the username, in Unix seconds.
        expired_at: u64,
    },
    /// The username is not `"<expiry>"` or `"<expiry>:<user>"` with a
    /// decimal expiry.
    #[error("malformed REST username: {0}")]
    Malformed(&'static str),
    /// The password does not match the username under any secret.
    #[error("password does not match")]
    WrongPassword,
}

/// Seconds since the Unix epoch; times before it count as 0.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Make credentials for `user`, valid for `ttl` from `now`, signed with
/// `secret`. An empty `user` gives a timestamp-only username, which coturn
/// accepts too.
pub fn generate(secret: &[u8], user: &str, ttl: Duration, now: SystemTime) -> Credentials {
    let expires_at = unix_secs(now).saturating_add(ttl.as_secs());
    let username = if user.is_empty() {
        expires_at.to_string()
    } else {
        format!("{expires_at}{SEPARATOR}{user}")
    };
    let password = password(secret, &username);
    Credentials {
        username,
        password,
        expires_at,
    }
}

/// The password for a REST username under one secret.
fn password(secret: &[u8], username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret, username.as_bytes()))
}

/// The expiry carried by a REST username: the decimal number before the
/// first separator, or the whole username when it has none. The user part
/// may itself contain separators.
pub fn parse_expiry(username: &str) -> Result<u64, RestError> {
    let ts = match username.split_once(SEPARATOR) {
        Some((ts, _user)) => ts,
        None => username,
    };
    if ts.is_empty() {
        return Err(RestError::Malformed("no expiry before the separator"));
    }
    if !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RestError::Malformed("expiry is not a decimal number"));
    }
    ts.parse()
        .map_err(|_| RestError::Malformed("expiry does not fit in 64 bits"))
}

/// A set of shared secrets: the first signs new credentials, all of them
/// verify (rotation).
#[derive(Clone, Default)]
pub struct RestSecrets {
    secrets: Vec<Box<[u8]>>,
}

impl std::fmt::Debug for RestSecrets {
    // Secrets must never reach logs: show only how many there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestSecrets({} secrets)", self.secrets.len())
    }
}

impl RestSecrets {
    /// Secrets in order of preference; the first one signs. Empty secrets
    /// are dropped: an empty HMAC key would let anyone mint credentials.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        RestSecrets {
            secrets: secrets
                .into_iter()
                .filter(|s| !s.as_ref().is_empty())
                .map(|s| Box::from(s.as_ref()))
                .collect(),
        }
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Make credentials signed with the first secret.
    pub fn generate(
        &self,
        user: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Credentials, RestError> {
        let secret = self.secrets.first().ok_or(RestError::NoSecrets)?;
        Ok(generate(secret, user, ttl, now))
    }

    /// Check `username` (well formed, not expired at `now`) and return its
    /// password under the signing secret.
    pub fn password_for(&self, username: &str, now: SystemTime) -> Result<String, RestError> {
        self.passwords_for(username, now)?
            .next()
            .ok_or(RestError::NoSecrets)
    }

    /// Check `username` and return its password under every secret, signing
    /// secret first. A TURN server derives the long-term key from each in
    /// turn until MESSAGE-INTEGRITY verifies, which is how credentials made
    /// with a retiring secret keep working.
    pub fn passwords_for<'a>(
        &'a self,
        username: &'a str,
        now: SystemTime,
    ) -> Result<impl Iterator<Item = String> + 'a, RestError> {
        if self.secrets.is_empty() {
            return Err(RestError::NoSecrets);
        }
        let expiry = parse_expiry(username)?;
        // coturn refuses a username whose timestamp is before now; the
        // expiry second itself is still valid.
        if expiry < unix_secs(now) {
            return Err(RestError::Expired { expired_at: expiry });
        }
        Ok(self.secrets.iter().map(move |s| password(s, username)))
    }

    /// Check a username and password pair against every secret (for
    /// callers that get the password in clear, such as an admin API).
    pub fn verify(&self, username: &str, password: &str, now: SystemTime) -> Result<(), RestError> {
        let mut ok = false;
        for p in self.passwords_for(username, now)? {
            // No early exit, so timing does not tell which secret matched.
            ok |= constant_time_eq(p.as_bytes(), password.as_bytes());
        }
        if ok {
            Ok(())
        } else {
            Err(RestError::WrongPassword)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn generate_matches_an_independent_hmac() {
        let c = generate(b"north", "alice", Duration::from_secs(3600), at(1_000));
        assert_eq!(c.username, "4600:alice");
        assert_eq!(c.expires_at, 4600);
        // HMAC-SHA1 computed directly with the hmac crate, not via
        // crate::integrity, so a bug there would show.
        use hmac::{Hmac, Mac};
        let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"north").unwrap();
        m.update(b"4600:alice");
        let want = STANDARD.encode(m.finalize().into_bytes());
        assert_eq!(c.password, want);
        // base64 of 20 bytes is 28 characters with one '=' of padding, as
        // coturn's turnutils and the REST draft's examples use.
        assert_eq!(c.password.len(), 28);
        assert!(c.password.ends_with('='));
    }

    #[test]
    fn known_answer_rfc2202_key() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for
        // nothing?") = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        let p = password(b"Jefe", "what do ya want for nothing?");
        let raw = STANDARD.decode(p).unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn server_recomputes_the_password() {
        let s = RestSecrets::new(["s3cret"]);
        let c = s.generate("bob", Duration::from_secs(60), at(100)).unwrap();
        assert_eq!(s.password_for(&c.username, at(100)).unwrap(), c.password);
        assert_eq!(s.password_for(&c.username, at(160)).unwrap(), c.password);
        assert_eq!(s.verify(&c.username, &c.password, at(150)), Ok(()));
        assert_eq!(
            s.verify(&c.username, "not it", at(150)),
            Err(RestError::WrongPassword)
        );
        // A different user in the username changes the password.
        assert_ne!(s.password_for("160:eve", at(100)).unwrap(), c.password);
    }

    #[test]
    fn expired_usernames_are_refused_with_their_expiry() {
        let s = RestSecrets::new(["k"]);
        let c = s.generate("u", Duration::from_secs(10), at(1_000)).unwrap();
        assert_eq!(
            s.password_for(&c.username, at(1_011)),
            Err(RestError::Expired { expired_at: 1_010 })
        );
        assert_eq!(
            s.verify(&c.username, &c.password, at(5_000)),
            Err(RestError::Expired { expired_at: 1_010 })
        );
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = RestSecrets::new(["old"]);
        let rotated = RestSecrets::new(["new", "old"]);
        let made_with_old = old.generate("u", Duration::from_secs(60), at(0)).unwrap();
        let made_with_new = rotated
            .generate("u", Duration::from_secs(60), at(0))
            .unwrap();
        assert_ne!(made_with_old.password, made_with_new.password);
        let all: Vec<_> = rotated
            .passwords_for(&made_with_old.username, at(0))
            .unwrap()
            .collect();
        assert_eq!(
            all,
            vec![
                made_with_new.password.clone(),
                made_with_old.password.clone()
            ]
        );
        assert_eq!(
            rotated.verify(&made_with_old.username, &made_with_old.password, at(1)),
            Ok(())
        );
        assert_eq!(
            rotated
                .password_for(&made_with_new.username, at(1))
                .unwrap(),
            made_with_new.password
        );
        // Once the old secret is retired its credentials stop working.
        assert_eq!(
            RestSecrets::new(["new"]).verify(
                &made_with_old.username,
                &made_with_old.password,
                at(1)
            ),
            Err(RestError::WrongPassword)
        );
    }

    #[test]
    fn timestamp_only_usernames_are_accepted() {
        let s = RestSecrets::new(["k"]);
        let c = s.generate("", Duration::from_secs(5), at(10)).unwrap();
        assert_eq!(c.username, "15");
        assert_eq!(s.password_for("15", at(12)).unwrap(), c.password);
    }

    #[test]
    fn malformed_usernames_and_missing_secrets() {
        let s = RestSecrets::new(["k"]);
        for bad in [
            "alice",
            "",
            ":alice",
            "12a:alice",
            "-5:alice",
            "+5:x",
            " 5:x",
        ] {
            assert!(
                matches!(s.password_for(bad, at(0)), Err(RestError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            s.password_for("99999999999999999999999:x", at(0)),
            Err(RestError::Malformed(_))
        ));
        // The user part may contain the separator itself.
        assert!(s.password_for("100:a:b", at(0)).is_ok());
        let none = RestSecrets::new(Vec::<Vec<u8>>::new());
        assert_eq!(none.password_for("100:a", at(0)), Err(RestError::NoSecrets));
        assert_eq!(
            none.generate("a", Duration::from_secs(1), at(0)),
            Err(RestError::NoSecrets)
        );
        // Empty secrets are dropped, not used as keys.
        assert!(RestSecrets::new([""]).is_empty());
    }

    #[test]
    fn debug_never_shows_secrets_or_passwords() {
        let s = RestSecrets::new(["hunter2-secret", "other-secret"]);
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2") && !d.contains("other"), "{d}");
        assert!(d.contains('2'));
        let c = s.generate("u", Duration::from_secs(1), at(0)).unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains(&c.password), "{d}");
        assert!(d.contains(&c.username));
    }

    #[test]
    fn ttl_overflow_saturates() {
        let c = generate(b"k", "u", Duration::MAX, at(10));
        assert_eq!(c.expires_at, u64::MAX);
        assert!(RestSecrets::new(["k"])
            .password_for(&c.username, at(10))
            .is_ok());
    }
}
