//! `natkit stun` and `natkit netcheck` against real servers on loopback:
//! natkit-stun (built from this workspace) and coturn's `turnserver`
//! (Debian's coturn package; scripts/test.sh installs it). On loopback there
//! is no NAT, so the right report is "open internet" with
//! endpoint-independent filtering, and hairpinning works.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natkit_testkit::bins::WorkspaceBin;
use natkit_testkit::ports::free_port_rfc5780;
use serde_json::Value;

/// A server process killed by PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// natkit-stun from this workspace's target directory, built if needed
/// (cargo builds only this package's binaries for its tests).
fn natkit_stun() -> PathBuf {
    WorkspaceBin::new("natkit-stun", "natkit-stun")
        .next_to(env!("CARGO_BIN_EXE_natkit"))
        .build_if_missing()
        .path()
}

fn natkit(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, format!("{stdout}\n{stderr}"))
}

/// Wait until `natkit stun` gets an answer from `server`.
fn wait_ready(server: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if natkit(&["stun", server, "--rto", "100ms", "--rc", "2"]).0 {
            return;
        }
    }
    panic!("{server} never answered");
}

fn assert_open_internet(report: &Value, text: &str) {
    assert_eq!(report["rfc5780"], true, "{text}");
    assert_eq!(report["mapping"]["behavior"], "no_nat", "{text}");
    assert_eq!(
        report["filtering"]["behavior"], "endpoint_independent",
        "{text}"
    );
    assert_eq!(report["hairpinning"], true, "{text}");
    assert_eq!(report["nat_type"], "open_internet", "{text}");
    assert_eq!(report["mapped"], report["local"], "{text}");
}

#[test]
fn netcheck_against_natkit_stun() {
    let (p, q) = (free_port_rfc5780(), free_port_rfc5780());
    let _srv = Proc(
        Command::new(natkit_stun())
            .args([
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--other",
                &format!("127.0.0.2:{q}"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = format!("127.0.0.1:{p}");
    wait_ready(&server);
    let (ok, report, text) = natkit(&["netcheck", "--stun", &server, "--json"]);
    assert!(ok, "{text}");
    assert_open_internet(&report, &text);
    assert_eq!(report["other_address"], format!("127.0.0.2:{q}"), "{text}");
    // Human output says the same in words.
    let (ok, _, text) = natkit(&["netcheck", "--stun", &server]);
    assert!(ok, "{text}");
    assert!(text.to_lowercase().contains("open internet"), "{text}");
    // `natkit stun`: the mapped address is our own on loopback.
    let (ok, j, text) = natkit(&["stun", &server, "--json"]);
    assert!(ok, "{text}");
    assert!(
        j["mapped"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{text}"
    );
}

#[test]
fn netcheck_against_natkit_stun_without_rfc5780_says_so() {
    let p = free_port_rfc5780();
    let _srv = Proc(
        Command::new(natkit_stun())
            .args(["--listen", &format!("127.0.0.1:{p}")])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = format!("127.0.0.1:{p}");
    wait_ready(&server);
    let (ok, report, text) = natkit(&["netcheck", "--stun", &server, "--json"]);
    assert!(ok, "what can be known is reported: {text}");
    assert_eq!(report["rfc5780"], false, "{text}");
    assert!(report["mapped"].as_str().is_some(), "{text}");
    let (_, _, text) = natkit(&["netcheck", "--stun", &server]);
    assert!(text.contains("RFC 5780"), "{text}");
}

#[test]
fn netcheck_against_coturn_rfc5780() {
    let (p, alt) = (free_port_rfc5780(), free_port_rfc5780());
    let dir = std::env::temp_dir().join(format!("natkit-netcheck-coturn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _srv = Proc(
        Command::new("turnserver")
            .args(["-n", &format!("--pidfile={}", dir.join("pid").display())])
            .args(["--listening-ip", "127.0.0.1", "--listening-ip", "127.0.0.2"])
            .args([
                "--listening-port",
                &p.to_string(),
                "--alt-listening-port",
                &alt.to_string(),
            ])
            .args([
                "--stun-only",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--no-stdout-log",
            ])
            .arg(format!("--log-file={}", dir.join("log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver not found: install Debian's coturn package (scripts/test.sh does)"),
    );
    let server = format!("127.0.0.1:{p}");
    wait_ready(&server);
    let (ok, report, text) = natkit(&["netcheck", "--stun", &server, "--json"]);
    assert!(ok, "{text}");
    assert_open_internet(&report, &text);
    assert_eq!(
        report["other_address"],
        format!("127.0.0.2:{alt}"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
