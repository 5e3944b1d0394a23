//! The long-term credential mechanism on the relay side (RFC 8489 §9.2,
//! RFC 8656 §5): static users and REST shared secrets, stateless nonces,
//! PASSWORD-ALGORITHMS, and a bounded per-source limiter for 401 answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use crate::integrity::{self, IntegrityKind, LongTermKey, PasswordAlgorithm};
use crate::nonce::{NonceError, NonceForm, NonceKey};
use crate::raw::Header;
use crate::rest::{RestError, RestSecrets};
use crate::turn::request::TurnRequest;

/// Who may allocate: static users and REST secrets, and the keys of the
/// nonces issued to them. Swapped whole on reload.
#[derive(Debug, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
    rest: RestSecrets,
    /// The first issues nonces, all verify. Empty: the relay's own key.
    nonce_keys: Vec<NonceKey>,
}

impl Credentials {
    /// Static users (name → password) and REST secrets (first one signs).
    pub fn new(users: HashMap<String, String>, rest: RestSecrets) -> Self {
        Credentials {
            users,
            rest,
            nonce_keys: Vec::new(),
        }
    }

    /// Nonce keys that come with these credentials (derived from the REST
    /// secrets, so every relay sharing them shares the keys): the first
    /// issues, every one verifies. Without any, the relay's own key does.
    pub fn with_nonce_keys(mut self, keys: Vec<NonceKey>) -> Self {
        self.nonce_keys = keys;
        self
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
    /// USERNAME, REALM or NONCE missing next to the integrity attribute, or
    /// PASSWORD-ALGORITHM(S) inconsistent: 400.
    BadRequest,
    /// A NONCE this relay did not issue to this client (forged, issued to
    /// another address, or under a key no longer in use): 401.
    BadNonce,
    /// NONCE is too old: answer 438 with a fresh one.
    StaleNonce,
    /// Wrong realm or integrity mismatch: 401.
    Unauthorized,
    /// REST credentials past their expiry: 401.
    Expired,
    /// Username not known (counted apart from wrong passwords).
    UnknownUser,
}

impl AuthError {
    /// Whether the request carried a nonce this relay issued to the
    /// sender's very address (fresh or stale): the sender receives there,
    /// so answering it reflects nothing at anyone else.
    pub fn nonce_proven(self) -> bool {
        matches!(
            self,
            AuthError::StaleNonce
                | AuthError::Unauthorized
                | AuthError::Expired
                | AuthError::UnknownUser
        )
    }
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
    /// Used when the credentials bring no nonce keys, and always accepted.
    own_key: NonceKey,
    nonce_ttl: Duration,
}

impl Authenticator {
    pub fn new(realm: String, own_key: NonceKey, nonce_ttl: Duration) -> Self {
        Authenticator {
            realm,
            own_key,
            nonce_ttl,
        }
    }

    /// A fresh nonce of `form` for `client`, under the key that issues.
    pub fn nonce(
        &self,
        creds: &Credentials,
        form: NonceForm,
        client: SocketAddr,
        now: SystemTime,
    ) -> crate::nonce::Nonce {
        creds
            .nonce_keys
            .first()
            .unwrap_or(&self.own_key)
            .issue_form(form, client, now)
    }

    /// The first step of RFC 8489 §9.2.4: are the credential attributes
    /// there, and is NONCE one we issued to `client`, and fresh? Keys: the
    /// credentials', those of the credentials before the last reload
    /// (`previous`: nonces stay valid across a SIGHUP), and our own.
    pub fn check_nonce(
        &self,
        creds: &Credentials,
        previous: Option<&Credentials>,
        req: &TurnRequest<'_>,
        client: SocketAddr,
        now: SystemTime,
    ) -> Result<NonceForm, AuthError> {
        if req.integrity.is_none() {
            return Err(AuthError::Missing);
        }
        let (Some(_), Some(_), Some(nonce)) = (req.username, req.realm, req.nonce) else {
            return Err(AuthError::BadRequest);
        };
        let keys = creds
            .nonce_keys
            .iter()
            .chain(previous.into_iter().flat_map(|p| &p.nonce_keys))
            .chain(std::iter::once(&self.own_key));
        for key in keys {
            match key.verify_form(nonce, client, now, self.nonce_ttl) {
                Ok(form) => return Ok(form),
                Err(NonceError::Stale) => return Err(AuthError::StaleNonce),
                Err(NonceError::Invalid) => {}
            }
        }
        Err(AuthError::BadNonce)
    }

    /// The rest of RFC 8489 §9.2.4 once the nonce checked out: realm,
    /// password algorithm and MESSAGE-INTEGRITY(-SHA256).
    pub fn check_credentials(
        &self,
        creds: &Credentials,
        msg: &[u8],
        header: &Header,
        req: &TurnRequest<'_>,
        form: NonceForm,
        now: SystemTime,
    ) -> Result<(Verified, String), AuthError> {
        let (Some(username), Some(realm)) = (req.username, req.realm) else {
            return Err(AuthError::BadRequest);
        };
        if realm != self.realm {
            return Err(AuthError::Unauthorized);
        }
        // RFC 8489 §9.2.4: PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS come
        // together, and the latter must be the list we offer (a bid-down
        // check); with neither, MD5. A plain nonce offered no algorithms,
        // so a request with them did not come from its 401.
        let algorithm = match (req.password_algorithm, req.password_algorithms, form) {
            (None, None, _) => PasswordAlgorithm::Md5,
            (Some(n), Some(list), NonceForm::Features) if list == OFFERED_ALGORITHMS => {
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

    /// Both steps: verify a request's credentials (RFC 8489 §9.2.4).
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &self,
        creds: &Credentials,
        previous: Option<&Credentials>,
        msg: &[u8],
        header: &Header,
        req: &TurnRequest<'_>,
        client: SocketAddr,
        now: SystemTime,
    ) -> Result<(Verified, String), AuthError> {
        let form = self.check_nonce(creds, previous, req, client, now)?;
        self.check_credentials(creds, msg, header, req, form, now)
    }
}

/// The PASSWORD-ALGORITHMS value natkit offers (RFC 8489 §14.11): SHA-256
/// first, then MD5, each with no parameters.
pub const OFFERED_ALGORITHMS: &[u8] = &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// Charges unauthenticated work to its source, with bounded memory whatever
/// the number of sources: fixed-size tables of token buckets indexed by a
/// keyed hash, shared by every shard of a relay (lock-free, so the limit is
/// per source, not per thread). Each source has two buckets in a table, each
/// with half its budget, and spends from the fuller: a source that shares
/// one bucket with a flooding stranger still has the other (with one bucket
/// per source, a flood from 256 addresses silenced one new address in 64).
///
/// Two budgets, from one rate `R` (`--unauth-rate`):
///
/// - per source IP, `R`/s with a burst of `4R`: answers to requests that
///   prove nothing about their source (no credentials, or a NONCE this
///   relay did not issue to that address). These are what a spoofer can
///   reflect at a victim, so the victim's address bounds them. A port that
///   got such an answer less than a second ago gets another only from the
///   upper half of its address's budget: one busy (or spoofed) port cannot
///   spend it all, and a new client behind the same address still gets its
///   first 401. (Ports only ever lower a source's priority, never block
///   it: a flood from many ports cannot fill a table and silence others.)
/// - per source address and port, `R/4`/s with a burst of `R`: requests
///   that carry a nonce issued to that very address (so the sender
///   receives there: no reflection) but fail to authenticate. They are
///   answered without touching the first two budgets, so strangers
///   flooding from the same IP cannot starve a client that holds a nonce
///   (its 438s and 401s, RFC 8656 §5); once this budget is spent, the
///   source's requests are dropped before any credential is checked.
pub struct UnauthLimiter {
    per_ip: BucketTable,
    /// When each (address, port) last got an unproven answer: milliseconds
    /// since `epoch`, plus one (0: never). Two slots per key; only a
    /// collision on both lowers a port's priority.
    answered: Vec<std::sync::atomic::AtomicU64>,
    failures: BucketTable,
    /// Keys the slot hash: random in [`UnauthLimiter::new`], so nobody can
    /// aim a flood at a victim's slots.
    key: (u64, u64),
    epoch: Instant,
}

/// Slots of the per-address table: 65536 × 8 bytes. With two slots per
/// address, a flood from 4000 addresses leaves a new one its budget 98
/// times in 100 (with one slot of 16384: 78 in 100).
const IP_SLOTS: usize = 1 << 16;
/// Slots of the per-port tables (answers, failures): 16384 × 8 bytes each.
const PORT_SLOTS: usize = 1 << 14;

impl UnauthLimiter {
    /// The limiter of `per_second` (`R` above); 0 turns every budget off.
    pub fn new(per_second: u32, now: Instant) -> Self {
        Self::with_key(per_second, now, (rand::random(), rand::random()))
    }

    /// [`UnauthLimiter::new`] with a chosen key for the slot hash: the same
    /// sources share the same slots every run (tests, simulations).
    pub fn with_key(per_second: u32, now: Instant, key: (u64, u64)) -> Self {
        // Budgets in sixteenths of an answer, split over the two buckets.
        let r = per_second as u64 * TOKEN / 2;
        UnauthLimiter {
            per_ip: BucketTable::new(IP_SLOTS, r, 4 * r),
            answered: (0..if r == 0 { 0 } else { PORT_SLOTS })
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            failures: BucketTable::new(PORT_SLOTS, r / 4, r),
            key,
            epoch: now,
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A source's two slots of `n`: two halves of one keyed hash.
    fn slots(&self, n: usize, key: impl std::hash::Hash) -> [usize; 2] {
        use std::hash::{Hash, Hasher};
        // SipHash (std's DefaultHasher) keyed by a secret prefix.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.key.hash(&mut hasher);
        key.hash(&mut hasher);
        let h = hasher.finish();
        let a = (h % n as u64) as usize;
        let b = ((h >> 32) % n as u64) as usize;
        [a, if b == a { (a + 1) % n } else { b }]
    }

    fn slots_ip(&self, ip: IpAddr) -> [usize; 2] {
        self.slots(IP_SLOTS, (0u8, ip.to_canonical()))
    }

    fn slots_addr(&self, kind: u8, a: SocketAddr) -> [usize; 2] {
        self.slots(PORT_SLOTS, (kind, a.ip().to_canonical(), a.port()))
    }

    /// Whether one more answer may go to `addr` for a request that proves
    /// nothing about its source; charges it if so.
    pub fn allow_unproven(&self, addr: SocketAddr, now: Instant) -> bool {
        use std::sync::atomic::Ordering;
        if self.answered.is_empty() {
            return true; // no limit
        }
        let t = self.ms(now) + 1;
        // A port is a repeat when both its slots say so: a new client whose
        // one slot collides with a busy port's keeps its priority.
        let seen = self.slots_addr(1, addr).map(|i| &self.answered[i]);
        let repeat = seen.iter().all(|s| {
            let last = s.load(Ordering::Relaxed);
            last != 0 && t.saturating_sub(last) < 1000
        });
        let keep = if repeat { self.per_ip.burst / 2 } else { 0 };
        let ok = self.per_ip.take(self.slots_ip(addr.ip()), t, keep);
        if ok {
            for s in seen {
                s.store(t, Ordering::Relaxed);
            }
        }
        ok
    }

    /// Whether `addr`, which proved it receives at its address, may still
    /// fail to authenticate (checked before the credentials are).
    pub fn failures_left(&self, addr: SocketAddr, now: Instant) -> bool {
        self.failures.peek(self.slots_addr(2, addr), self.ms(now))
    }

    /// Charge one failed authentication to `addr`.
    pub fn charge_failure(&self, addr: SocketAddr, now: Instant) {
        self.failures
            .take(self.slots_addr(2, addr), self.ms(now), 0);
    }
}

/// Token buckets packed in one `AtomicU64` each: the time of the last
/// refill in milliseconds (upper 40 bits: 34 years) and the tokens in
/// sixteenths (lower 24 bits: bursts up to a million).
struct BucketTable {
    slots: Vec<std::sync::atomic::AtomicU64>,
    /// Sixteenths of a token per second.
    rate: u64,
    /// Most sixteenths a bucket holds.
    burst: u64,
}

const TOKEN: u64 = 16;
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;

impl BucketTable {
    /// `n` buckets of `rate` sixteenths per second, `burst` at most (at
    /// least a sixteenth per second and one whole answer); rate 0: no
    /// table, no limit.
    fn new(n: usize, rate: u64, burst: u64) -> Self {
        let burst = burst.clamp(TOKEN, TOKEN_MASK);
        BucketTable {
            // Time 0 with a full bucket: a source never seen starts full.
            slots: (0..if rate == 0 { 0 } else { n })
                .map(|_| std::sync::atomic::AtomicU64::new(burst))
                .collect(),
            rate: rate.max(1),
            burst,
        }
    }

    /// The tokens slot `i` holds at `now_ms`.
    fn level(&self, i: usize, now_ms: u64) -> u64 {
        let packed = self.slots[i].load(std::sync::atomic::Ordering::Relaxed);
        self.refilled(packed, now_ms).0
    }

    /// The bucket's tokens (sixteenths) at `now_ms`, and the packed value
    /// to store with them.
    fn refilled(&self, packed: u64, now_ms: u64) -> (u64, u64) {
        let last = packed >> TOKEN_BITS;
        let tokens = packed & TOKEN_MASK;
        // Another shard may have stored a later time: no refill then.
        let elapsed = now_ms.saturating_sub(last);
        let add = elapsed.saturating_mul(self.rate) / 1000;
        if add == 0 {
            return (tokens, packed);
        }
        let tokens = (tokens + add).min(self.burst);
        (tokens, (now_ms.max(last) << TOKEN_BITS) | tokens)
    }

    /// Whether one of a source's slots holds a whole token now (does not
    /// take it).
    fn peek(&self, [a, b]: [usize; 2], now_ms: u64) -> bool {
        if self.slots.is_empty() {
            return true; // rate 0: no limit
        }
        self.level(a, now_ms).max(self.level(b, now_ms)) >= TOKEN
    }

    /// Take one token from the fuller of a source's slots, if it has one
    /// more than `keep` (sixteenths).
    fn take(&self, [a, b]: [usize; 2], now_ms: u64, keep: u64) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let (first, second) = if self.level(a, now_ms) >= self.level(b, now_ms) {
            (a, b)
        } else {
            (b, a)
        };
        self.take_one(first, now_ms, keep) || self.take_one(second, now_ms, keep)
    }

    /// Take one token from slot `i` if it has one more than `keep`.
    fn take_one(&self, i: usize, now_ms: u64, keep: u64) -> bool {
        use std::sync::atomic::Ordering;
        let slot = &self.slots[i];
        let mut packed = slot.load(Ordering::Relaxed);
        loop {
            let (tokens, refilled) = self.refilled(packed, now_ms);
            if tokens < keep + TOKEN {
                // Keep the refill (it moved the clock forward).
                if refilled != packed {
                    let _ = slot.compare_exchange(
                        packed,
                        refilled,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return false;
            }
            let next = refilled - TOKEN;
            match slot.compare_exchange_weak(packed, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => packed = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unproven_answers_are_bounded_per_address_and_per_port() {
        let t0 = Instant::now();
        let l = UnauthLimiter::with_key(20, t0, (1, 2));
        // One port: the upper half of its address's burst of 80; the lower
        // half is for the address's other ports.
        let n = (0..100)
            .filter(|_| l.allow_unproven(a("192.0.2.1:1000"), t0))
            .count();
        assert_eq!(n, 40);
        let n = (0..100u16)
            .filter(|p| {
                l.allow_unproven(SocketAddr::new("192.0.2.1".parse().unwrap(), 2000 + p), t0)
            })
            .count();
        assert_eq!(n, 40);
        // Many ports of one address: the address's burst of 80 in all.
        let n = (0..1000u16)
            .filter(|p| {
                l.allow_unproven(SocketAddr::new("192.0.2.2".parse().unwrap(), 2000 + p), t0)
            })
            .count();
        assert_eq!(n, 80);
        // IPv4-mapped IPv6 is the same source.
        assert!(!l.allow_unproven(a("[::ffff:192.0.2.2]:4000"), t0));
        // Refill at 20/s: 500 ms later, 10 more for the address, for ports
        // that had no answer in the last second (none for one that had).
        let t1 = t0 + Duration::from_millis(500);
        assert!(!l.allow_unproven(a("192.0.2.2:2000"), t1));
        let n = (0..1000u16)
            .filter(|p| {
                l.allow_unproven(
                    SocketAddr::new("192.0.2.2".parse().unwrap(), 3000 + p % 50),
                    t1,
                )
            })
            .count();
        assert_eq!(n, 10);
        // Another address is not affected (unless both its slots are the
        // flooded address's).
        assert!(
            l.allow_unproven(a("192.0.2.3:1000"), t1) || {
                let mut x = l.slots_ip("192.0.2.3".parse().unwrap());
                let mut y = l.slots_ip("192.0.2.2".parse().unwrap());
                x.sort();
                y.sort();
                x == y
            }
        );
    }

    #[test]
    fn failures_are_charged_per_port_and_do_not_touch_the_address_budget() {
        let t0 = Instant::now();
        let l = UnauthLimiter::with_key(20, t0, (1, 2));
        let src = a("192.0.2.9:5000");
        let mut failed = 0;
        while l.failures_left(src, t0) {
            l.charge_failure(src, t0);
            failed += 1;
            assert!(failed <= 20);
        }
        assert_eq!(failed, 20);
        // The address's unproven budget and another port's failures are intact.
        assert!(l.allow_unproven(a("192.0.2.9:5001"), t0));
        assert!(l.failures_left(a("192.0.2.9:5001"), t0));
        // 5/s refill, over two buckets: a whole one in 400 ms.
        assert!(!l.failures_left(src, t0 + Duration::from_millis(300)));
        assert!(l.failures_left(src, t0 + Duration::from_millis(400)));
    }

    /// A flood from 4000 addresses, each from many ports, drains their
    /// buckets; a new address is silenced only when both of its slots are
    /// among theirs: about 1.3 in 100 (one slot of 16384 each, as before:
    /// 22 in 100). Ports never silence anyone.
    #[test]
    fn a_flood_from_many_addresses_and_ports_leaves_new_addresses_their_budget() {
        let t0 = Instant::now();
        let l = UnauthLimiter::with_key(20, t0, (1, 2));
        for i in 0..4000u32 {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000 + i);
            for p in 0..100u16 {
                l.allow_unproven(SocketAddr::new(ip.into(), 1000 + p), t0);
            }
        }
        let silenced = (0..4000u32)
            .filter(|i| {
                let ip = std::net::Ipv4Addr::from(0x0B00_0000 + i);
                !l.allow_unproven(SocketAddr::new(ip.into(), 5000), t0)
            })
            .count();
        assert!(silenced < 160, "{silenced} of 4000 new addresses silenced");
    }

    #[test]
    fn shards_share_the_limit() {
        let t0 = Instant::now();
        let l = std::sync::Arc::new(UnauthLimiter::with_key(20, t0, (1, 2)));
        let answered: usize = (0..4)
            .map(|k| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..200u16)
                        .filter(|p| {
                            l.allow_unproven(
                                SocketAddr::new("198.51.100.1".parse().unwrap(), 1000 * k + p),
                                t0,
                            )
                        })
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(answered, 80);
        let off = UnauthLimiter::new(0, t0);
        assert!((0..1000).all(|_| off.allow_unproven(a("192.0.2.1:1"), t0)));
        assert!(off.failures_left(a("192.0.2.1:1"), t0));
    }
}
