//! What the peer-to-peer tests of the binary share: children killed by
//! PID on drop, bounded waits, descriptions through files, natkit-turn on
//! loopback.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use natkit_testkit::{bins, ports, TempDir, TurnRelay};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The most any one process of these tests may run.
pub const LIMIT: Duration = Duration::from_secs(25);

pub fn natkit() -> &'static str {
    env!("CARGO_BIN_EXE_natkit")
}

/// A scratch directory for one test, removed on drop.
pub fn scratch(tag: &str) -> TempDir {
    TempDir::new(&format!("natkit-p2p-{tag}"))
}

/// A child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub stderr: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Wait for the exit, at most `limit`; panics (and kills) after it.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "{} still running after {limit:?}; stderr:\n{}",
                    self.name,
                    self.err()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit, at most `limit`; `None` (killed) after it.
    pub fn wait_or_kill(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Where a child's stdin comes from.
pub enum Input<'a> {
    File(&'a Path),
    Pipe,
    Null,
}

/// Start `natkit ARGS` with stdout and stderr to files in `dir`.
pub fn spawn(
    dir: &TempDir,
    name: &str,
    args: &[String],
    input: Input,
) -> (Proc, Option<ChildStdin>) {
    let stderr = dir.join(format!("{name}.err"));
    let stdin = match input {
        Input::File(p) => Stdio::from(File::open(p).unwrap()),
        Input::Pipe => Stdio::piped(),
        Input::Null => Stdio::null(),
    };
    let mut child = Command::new(natkit())
        .args(args)
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdin(stdin)
        .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .expect("start natkit");
    let pipe = child.stdin.take();
    (
        Proc {
            child,
            name: name.to_owned(),
            stderr,
        },
        pipe,
    )
}

/// Loopback only, 15 s to connect and to wait for the peer.
pub fn loopback() -> Vec<String> {
    [
        "--loopback",
        "--bind",
        "127.0.0.1",
        "--timeout",
        "15",
        "--wait",
        "15",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Flags for one side: loopback only, descriptions through files named
/// after the sides.
pub fn side(dir: &TempDir, me: &str, peer: &str, extra: &[&str]) -> Vec<String> {
    let mut v = loopback();
    for (flag, file) in [
        ("--desc-out", format!("{me}.desc")),
        ("--remote", format!("{peer}.desc")),
        ("--report", format!("{me}.json")),
    ] {
        v.push(flag.into());
        v.push(dir.join(&file).display().to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn cmd(first: &[&str], rest: Vec<String>) -> Vec<String> {
    first.iter().map(|s| s.to_string()).chain(rest).collect()
}

/// Deterministic, incompressible-enough test data.
pub fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

pub fn report(dir: &TempDir, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json")))
        .unwrap_or_else(|e| panic!("{name}.json: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json: {e}: {text}"))
}

pub fn assert_ok(p: &mut Proc) {
    let s = p.wait(LIMIT);
    assert!(s.success(), "{} exited {s}; stderr:\n{}", p.name, p.err());
}

/// natkit-turn on loopback with user `p2p`, killed on drop.
pub fn start_relay(extra: &[&str]) -> TurnRelay {
    // Both peers' addresses are on loopback, which the relay refuses as
    // peers by default.
    relay(extra, true)
}

/// natkit-turn as deployed: its default peer policy (no loopback peers;
/// only its own relayed addresses on loopback, relay to relay).
pub fn start_relay_default_policy(extra: &[&str]) -> TurnRelay {
    relay(extra, false)
}

fn relay(extra: &[&str], loopback_peers: bool) -> TurnRelay {
    let mut b = TurnRelay::builder(bins::natkit_turn_next_to(natkit()))
        .relay_ports(ports::random_block(20_000, 2_000, 20))
        .user("p2p", "right-pw")
        .no_drain_grace()
        .args(extra)
        .ready_timeout(Duration::from_secs(20));
    if loopback_peers {
        b = b.allow_loopback_peers();
    }
    b.start()
}

/// The TURN URI of `relay` over `transport`.
pub fn relay_uri(relay: &TurnRelay, transport: &str) -> String {
    format!("turn:127.0.0.1:{}?transport={transport}", relay.port())
}

/// Wait until `f` holds, at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn out_len(dir: &TempDir, name: &str) -> u64 {
    std::fs::metadata(dir.join(format!("{name}.out"))).map_or(0, |m| m.len())
}

pub fn signal(p: &Proc, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(p.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's PID, which is not reaped yet
    // (the Proc still holds it).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// A valid description from a real session (the listener is killed once
/// it has written it).
pub fn a_description(dir: &TempDir) -> String {
    a_description_with(dir, &[])
}

/// [`a_description`] with more flags for the listener (e.g. `--json`).
pub fn a_description_with(dir: &TempDir, extra: &[&str]) -> String {
    let (mut p, _) = spawn(
        dir,
        "donor",
        &cmd(
            &[
                "listen",
                "--loopback",
                "--bind",
                "127.0.0.1",
                "--wait",
                "20",
            ],
            [
                "--desc-out".to_string(),
                dir.join("donor.desc").display().to_string(),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect(),
        ),
        Input::Pipe,
    );
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("donor.desc")) {
            let _ = p.child.kill();
            return t.trim().to_owned();
        }
        assert!(Instant::now() < end, "no description; stderr:\n{}", p.err());
        std::thread::sleep(Duration::from_millis(20));
    }
}
