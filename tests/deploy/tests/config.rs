//! deploy/config: every example loads with the server's `--check-config`,
//! and a broken config fails naming the key and the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use natkit_deploy_tests::process::{run, Output};
use natkit_deploy_tests::{bins, deploy_dir, TempDir};

const LIMIT: Duration = Duration::from_secs(60);

/// The examples for `server` ("stun" or "turn"), sorted.
fn examples(server: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("config"))
        .expect("deploy/config")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{server}-")))
        })
        .collect();
    v.sort();
    v
}

fn check_config(server: &str, file: &Path) -> Output {
    run(
        bins::path(&format!("natkit-{server}")),
        &["--config", file.to_str().unwrap(), "--check-config"],
        LIMIT,
    )
}

fn examples_load(server: &str) {
    let files = examples(server);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The three situations the README promises, for each server.
    for kind in ["small", "large", "behind-nat"] {
        assert!(
            names.contains(&format!("{server}-{kind}.toml")),
            "deploy/config/{server}-{kind}.toml missing: {names:?}"
        );
    }
    for f in &files {
        let out = check_config(server, f);
        assert!(
            out.status.success() && out.stdout.contains("configuration OK"),
            "{} does not load: {}{}",
            f.display(),
            out.stdout,
            out.stderr
        );
        // Examples explain themselves: most settings carry a comment.
        let text = std::fs::read_to_string(f).unwrap();
        let comments = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count();
        let keys = text.lines().filter(|l| l.contains(" = ")).count();
        assert!(
            comments >= keys,
            "{}: {comments} comment lines for {keys} keys",
            f.display()
        );
    }
}

/// Writes `body` to a file, runs `--check-config`, and wants exit status 2
/// and an error on stderr that contains each of `want` (the key and the
/// reason).
fn rejects(server: &str, body: &str, want: &[&str]) {
    let dir = TempDir::new("badconfig");
    let f = dir.join("bad.toml");
    std::fs::write(&f, body).unwrap();
    let out = check_config(server, &f);
    assert_eq!(out.status.code(), Some(2), "{body:?} was accepted: {out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("configuration error"),
        "{body:?}: first line {first:?}"
    );
    for w in want {
        assert!(
            out.stderr.contains(w),
            "{body:?}: error lacks {w:?}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn stun_examples_load() {
    examples_load("stun");
}

#[test]
fn turn_examples_load() {
    examples_load("turn");
}

#[test]
fn stun_bad_configs_name_the_key_and_the_reason() {
    rejects(
        "stun",
        "listen = [\"127.0.0.1:3478\"]\nthreads = 0\n",
        &["threads", "out of range"],
    );
    rejects(
        "stun",
        "listen = [\"127.0.0.1:3478\"]\nlisten-port = 3478\n",
        &["unknown field `listen-port`", "line 2"],
    );
    rejects(
        "stun",
        "listen = \"127.0.0.1:3478\"\n",
        &["listen", "expected a sequence"],
    );
}

#[test]
fn turn_bad_configs_name_the_key_and_the_reason() {
    let base = "listen = [\"127.0.0.1:3478\"]\nauth-secret = [\"s\"]\n";
    rejects(
        "turn",
        &format!("{base}min-port = 50000\nmax-port = 40000\n"),
        &["min-port", "max-port", "above"],
    );
    rejects(
        "turn",
        &format!("{base}bandwidth = \"10Q\"\n"),
        &["bandwidth", "not bytes per second"],
    );
    rejects(
        "turn",
        &format!("{base}external-ip = [\"203.0.113.7/10.0.0.9\"]\n"),
        &["external-ip", "is not the IPv4 relay-ip"],
    );
    rejects(
        "turn",
        &format!("{base}drain-grace = 100000\n"),
        &["drain-grace", "out of range"],
    );
    rejects(
        "turn",
        "listen = [\"127.0.0.1:3478\"]\n",
        &["open relay", "auth-secret"],
    );
    rejects(
        "turn",
        &format!("{base}relay-port = 5\n"),
        &["unknown field `relay-port`"],
    );
}
