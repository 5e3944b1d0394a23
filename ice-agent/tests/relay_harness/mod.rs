//! Harness for natkit-ice's session tests: natkit-turn on loopback (from
//! natkit-testkit: the binary found next to the test executable and built
//! if missing, killed by PID on drop), with this crate's user and relay
//! port range.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};

pub use natkit_testkit::free_port;
use natkit_testkit::{bins, ports, tls, TurnRelay};

pub const USER: &str = "ice";
pub const PASS: &str = "ice-test-password";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert path, key
/// path, DER).
pub fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ck = tls::self_signed(&["127.0.0.1"], &cert, &key);
    (cert, key, ck.cert.der().to_vec())
}

/// natkit-turn on 127.0.0.1 (UDP and TCP), user `ice`.
pub fn start_relay() -> TurnRelay {
    start_relay_with(&[])
}

/// natkit-turn with extra flags (e.g. a TLS listener).
pub fn start_relay_with(extra: &[String]) -> TurnRelay {
    // 22000-23999: relay ports of natkit-ice's tests, apart from the
    // other crates' ranges. The PID spreads processes (nextest runs each
    // test in its own), the counter spreads relays of one process.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::SeqCst);
    TurnRelay::builder(bins::natkit_turn())
        .relay_ports(ports::pid_block(22_000, 25, 4, slot, 20))
        .user(USER, PASS)
        .allow_loopback_peers()
        .no_drain_grace()
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::inherit())
        .start()
}
