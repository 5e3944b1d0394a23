//! deploy/systemd: `systemd-analyze verify` accepts each unit without a
//! warning, and `systemd-analyze security --offline=true` rates each one
//! "OK" or better (exposure ≤ 4.9 on systemd's 0-10 scale), with the score
//! deploy/README.md states.
//!
//! `verify` checks that ExecStart's binary exists and is executable, and the
//! units name the installed path /usr/local/bin/natkit-*. So the test copies
//! each real unit file into a temp dir with that one path rewritten to the
//! binary this workspace just built, and leaves every other line as it is:
//! what is verified is the shipped unit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use natkit_deploy_tests::process::run;
use natkit_deploy_tests::{bins, deploy_dir, TempDir};

const LIMIT: Duration = Duration::from_secs(120);
/// The worst score systemd still calls "OK". Its bands
/// (src/analyze/analyze-security.c, systemd 252): 0 PERFECT, 0.1-0.9 SAFE,
/// 1.0-4.9 OK, 5.0-7.4 MEDIUM, 7.5-8.9 EXPOSED, 9.0-9.9 UNSAFE, 10 DANGEROUS.
const OK_MAX: f64 = 4.9;

/// The unit with `/usr/local/bin/NAME` pointed at the built binary.
fn unit_for_test(dir: &TempDir, name: &str) -> PathBuf {
    let src = deploy_dir().join("systemd").join(format!("{name}.service"));
    let text = std::fs::read_to_string(&src).expect("read unit");
    let installed = format!("/usr/local/bin/{name}");
    assert!(
        text.contains(&format!("ExecStart={installed} ")),
        "{} should start {installed}",
        src.display()
    );
    let built = bins::path(name);
    let out = dir.join(format!("{name}.service"));
    std::fs::write(
        &out,
        text.replace(&installed, built.to_str().expect("utf-8 path")),
    )
    .expect("write unit");
    out
}

fn verify(unit: &Path) {
    let out = run(
        "systemd-analyze",
        &["verify", unit.to_str().unwrap()],
        LIMIT,
    )
    .ok("systemd-analyze verify");
    // Unknown keys, bad values and missing binaries are warnings with exit
    // status 0: any output at all is a failure.
    assert!(
        out.stderr.trim().is_empty() && out.stdout.trim().is_empty(),
        "systemd-analyze verify {} complained:\n{}{}",
        unit.display(),
        out.stdout,
        out.stderr
    );
}

/// The overall exposure `systemd-analyze security` prints, and its rating.
fn exposure(unit: &Path) -> (f64, String) {
    let out = run(
        "systemd-analyze",
        &[
            "security",
            "--offline=true",
            "--no-pager",
            unit.to_str().unwrap(),
        ],
        LIMIT,
    );
    // "→ Overall exposure level for natkit-turn.service: 1.5 OK 🙂"
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{}\n{}", out.stdout, out.stderr));
    let rest = line.rsplit_once(": ").expect("score after ': '").1;
    let mut words = rest.split_whitespace();
    let score: f64 = words.next().and_then(|s| s.parse().ok()).expect("score");
    let rating = words.next().expect("rating").to_string();
    (score, rating)
}

fn check(name: &str) {
    let dir = TempDir::new("natkit-deploy-systemd");
    let unit = unit_for_test(&dir, name);
    verify(&unit);
    let (score, rating) = exposure(&unit);
    assert!(
        score <= OK_MAX && ["PERFECT", "SAFE", "OK"].contains(&rating.as_str()),
        "{name}: exposure {score} {rating}, want OK or better"
    );
    // The README states the score: keep it true.
    let readme = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    let claim = format!("| `{name}.service` | {score:.1} {rating} |");
    assert!(
        readme.contains(&claim),
        "deploy/README.md should have the row {claim:?}"
    );
}

#[test]
fn stun_unit_verifies_and_rates_ok() {
    check("natkit-stun");
}

#[test]
fn turn_unit_verifies_and_rates_ok() {
    check("natkit-turn");
}

/// Stop must outlast natkit-turn's SIGTERM drain (drain-grace, 30 s by
/// default: turn-relay/src/config.rs), and reload must be SIGHUP.
#[test]
fn turn_unit_waits_for_the_drain_and_reloads_with_sighup() {
    let text = std::fs::read_to_string(deploy_dir().join("systemd/natkit-turn.service")).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .trim()
            .to_string()
    };
    let stop: u64 = value("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let help = run(bins::path("natkit-turn"), &["--help"], LIMIT).ok("natkit-turn --help");
    // "--drain-grace <DRAIN_GRACE>  Seconds SIGTERM keeps relaying ... [default: 30]"
    let drain_help = help
        .stdout
        .split("--drain-grace")
        .nth(1)
        .expect("--drain-grace in --help");
    let default: u64 = drain_help
        .split("[default: ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .expect("drain-grace default in --help");
    assert!(
        stop > default,
        "TimeoutStopSec {stop} must exceed drain-grace {default}"
    );
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    for key in [
        "DynamicUser",
        "ProtectSystem",
        "PrivateTmp",
        "MemoryDenyWriteExecute",
        "NoNewPrivileges",
    ] {
        assert!(["yes", "strict"].contains(&value(key).as_str()), "{key}");
    }
    assert_eq!(value("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
}
