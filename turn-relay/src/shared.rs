//! State the worker shards share. Touched on the control path (allocations,
//! permissions, reloads), never per relayed packet of an established flow.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use natkit_proto::nonce::NonceKey;
use natkit_proto::turn::server::{Credentials, QuotaError, UnauthLimiter};

use crate::peer_policy::PeerPolicy;
use crate::ports::PortPool;

/// The relay's addresses for one family: where relay sockets bind, and what
/// clients are told (differs behind a 1:1 NAT, `--external-ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    pub bind: IpAddr,
    pub advertised: IpAddr,
}

/// What can change on SIGHUP, swapped as a whole.
pub struct Reloadable {
    pub credentials: Arc<Credentials>,
    pub policy: Arc<PeerPolicy>,
}

/// Shared by every worker.
pub struct Shared {
    reloadable: RwLock<Reloadable>,
    /// Bumped on every reload; workers compare it once per loop.
    pub generation: AtomicU64,
    /// Relayed addresses (bound and advertised) of every allocation on this
    /// relay: peers at these addresses are always allowed, whatever range
    /// they are in (two clients relayed through one server must reach each
    /// other).
    relayed: RwLock<HashSet<SocketAddr>>,
    pub ports: PortPool,
    /// Relay addresses: index 0 IPv4, 1 IPv6.
    pub relay: [Option<RelayAddress>; 2],
    per_user: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    pub max_allocations: usize,
    pub user_quota: usize,
    pub draining: AtomicBool,
    /// The relay's own nonce key, random per process: it issues when the
    /// credentials bring no keys (static users only), and always verifies.
    pub nonce_key: NonceKey,
    /// Unauthenticated work per source, shared by every shard so the limit
    /// is per source and not per thread.
    pub limiter: Arc<UnauthLimiter>,
}

impl Shared {
    pub fn new(
        reloadable: Reloadable,
        ports: PortPool,
        relay: [Option<RelayAddress>; 2],
        max_allocations: usize,
        user_quota: usize,
        unauth_rate: u32,
    ) -> Self {
        Shared {
            reloadable: RwLock::new(reloadable),
            generation: AtomicU64::new(0),
            relayed: RwLock::new(HashSet::new()),
            ports,
            relay,
            per_user: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            max_allocations,
            user_quota,
            draining: AtomicBool::new(false),
            nonce_key: NonceKey::random(),
            limiter: Arc::new(UnauthLimiter::new(unauth_rate, std::time::Instant::now())),
        }
    }

    /// The current credentials and peer policy.
    pub fn current(&self) -> (Arc<Credentials>, Arc<PeerPolicy>) {
        let r = self.reloadable.read().unwrap_or_else(|e| e.into_inner());
        (r.credentials.clone(), r.policy.clone())
    }

    /// Install reloaded credentials and policy.
    pub fn reload(&self, new: Reloadable) {
        *self.reloadable.write().unwrap_or_else(|e| e.into_inner()) = new;
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relayed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&addr)
    }

    pub fn add_relayed(&self, addrs: &[SocketAddr]) {
        let mut r = self.relayed.write().unwrap_or_else(|e| e.into_inner());
        r.extend(addrs.iter().copied());
    }

    pub fn remove_relayed(&self, addrs: &[SocketAddr]) {
        let mut r = self.relayed.write().unwrap_or_else(|e| e.into_inner());
        for a in addrs {
            r.remove(a);
        }
    }

    /// Count an allocation against the total and per-user quotas.
    pub fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_allocations {
            return Err(QuotaError::Total);
        }
        let n = per_user.entry(user.to_string()).or_default();
        if *n >= self.user_quota {
            return Err(QuotaError::PerUser);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn release(&self, user: &str) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Live allocations over all workers.
    pub fn total_allocations(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}
