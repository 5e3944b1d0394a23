//! Harness for natkit-ice's session tests: natkit-turn on loopback (the
//! binary the workspace builds, found next to the test executable and built
//! if missing), killed by PID on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, RequestOptions};

pub const USER: &str = "ice";
pub const PASS: &str = "ice-test-password";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A loopback port free for UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// The workspace's target directory holding this test's binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// natkit-turn, built by `cargo build -p natkit-turn` when missing (a lone
/// `cargo test -p natkit-ice` does not build other crates' binaries).
pub fn natkit_turn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATKIT_TURN_BIN") {
        return PathBuf::from(p);
    }
    let bin = bin_dir().join("natkit-turn");
    if !bin.is_file() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "natkit-turn", "--bin", "natkit-turn"])
            .status()
            .expect("run cargo build");
        assert!(st.success(), "cargo build -p natkit-turn failed");
    }
    assert!(bin.is_file(), "{} missing", bin.display());
    bin
}

/// natkit-turn on 127.0.0.1 (UDP and TCP), user `ice`.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SIGKILL: no drain wanted in tests.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert path, key
/// path, DER).
pub fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

impl Relay {
    pub fn start() -> Relay {
        Relay::start_with(&[])
    }

    /// With extra flags (e.g. a TLS listener).
    pub fn start_with(extra: &[String]) -> Relay {
        let port = free_port();
        // 22000-23999: relay ports of natkit-ice's tests, apart from the
        // other crates' ranges.
        // The PID spreads processes (nextest runs each test in its own),
        // the counter spreads relays of one process.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 4;
        let base = 22_000 + ((std::process::id() % 25) as u16 * 4 + n) * 20;
        let child = Command::new(natkit_turn_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--relay-ip",
                "127.0.0.1",
                "--min-port",
                &base.to_string(),
                "--max-port",
                &(base + 19).to_string(),
                "--user",
                &format!("{USER}:{PASS}"),
                "--allow-peer",
                "127.0.0.0/8",
                "--drain-grace",
                "0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start natkit-turn");
        let mut r = Relay {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut req = [0u8; 64];
        let n = binding::write_request(&mut req, &[7; 12], &RequestOptions::default()).unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("natkit-turn exited at start-up: {status}");
            }
            assert!(Instant::now() < end, "natkit-turn did not start");
            sock.send_to(&req[..n], self.addr).unwrap();
            if sock.recv_from(&mut buf).is_ok() {
                return;
            }
        }
    }
}
