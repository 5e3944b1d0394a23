//! natkit-turn's operator interface through the binary: what
//! `--check-config` reports (each piece of an error once, TLS files loaded
//! and checked), the configured limits as metrics, and REST secrets from
//! `auth-secret-file` rotated with SIGHUP. Loopback only.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::turn::client::{ClientError, Transport};
use natkit_testkit::{bins, tls};

fn check_config(args: &[&str]) -> Output {
    bins::check_config(env!("CARGO_BIN_EXE_natkit-turn"), args)
}

/// Exit status 2 and stderr, which must start with the configuration-error line.
fn refused(args: &[&str]) -> String {
    bins::config_refused(env!("CARGO_BIN_EXE_natkit-turn"), args)
}

#[test]
fn a_parse_error_names_the_file_and_the_toml_error_once() {
    let dir = TempDir::new("natkit-turn-once");
    let bad = dir.join("bad-once.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:3478\"\nrealm = 3\n").unwrap();
    let err = refused(&["--config", bad.to_str().unwrap(), "--user", "a:b"]);
    assert_eq!(err.matches("bad-once.toml").count(), 1, "{err}");
    assert_eq!(err.matches("TOML parse error").count(), 1, "{err}");
    assert_eq!(err.matches("invalid config file").count(), 1, "{err}");
    assert!(err.contains("line 1") || err.contains("line 2"), "{err}");
    // A missing file: the name and the OS error once each.
    let err = refused(&[
        "--config",
        "/nonexistent/natkit-turn-once.toml",
        "--user",
        "a:b",
    ]);
    assert_eq!(err.matches("natkit-turn-once.toml").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// A certificate and key pair written to `dir`: (cert path, key path).
fn pair(dir: &Path, tag: &str) -> (String, String) {
    let cert = dir.join(format!("{tag}-cert.pem"));
    let key = dir.join(format!("{tag}-key.pem"));
    tls::self_signed(&["localhost"], &cert, &key);
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn check_config_loads_the_certificate_and_key() {
    let dir = TempDir::new("natkit-turn-cc-tls");
    let (cert, key) = pair(dir.path(), "a");
    let (_, other_key) = pair(dir.path(), "b");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n%%%\n").unwrap();
    let junk = junk.display().to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let base = ["--listen", "127.0.0.1:3478", "--user", "a:b"];
    let with = |c: &str, k: &str| {
        let mut v = base.to_vec();
        v.extend(["--tls-listen", "127.0.0.1:5349", "--cert", c, "--key", k]);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |c: &str, k: &str| {
        let args = with(c, k);
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let out = check_config(
        &with(&cert, &key)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = run(&missing, &key);
    assert!(err.contains("error: cert: "), "{err}");
    assert!(
        err.contains("missing.pem") && err.contains("No such file"),
        "{err}"
    );
    let err = run(&junk, &key);
    assert!(
        err.contains("error: cert: ") && err.contains("junk.pem") && err.contains("not valid PEM"),
        "{err}"
    );
    // The key file as the certificate: no certificate in it.
    let err = run(&key, &key);
    assert!(
        err.contains("error: cert: ") && err.contains("no certificate found"),
        "{err}"
    );
    let err = run(&cert, &missing);
    assert!(
        err.contains("error: key: ") && err.contains("missing.pem"),
        "{err}"
    );
    let err = run(&cert, &cert);
    assert!(
        err.contains("error: key: ") && err.contains("no private key found"),
        "{err}"
    );
    let err = run(&cert, &other_key);
    assert!(
        err.contains("error: key: ") && err.contains("does not match"),
        "{err}"
    );
    // Each reason once.
    let err = run(&missing, &key);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// `natkit_turn_max_allocations` and `natkit_turn_relay_ports` show the
/// limits the relay runs with; SIGHUP reloads what it can and the gauges
/// keep showing the limits that still apply (quotas and the port range
/// need a restart).
#[test]
fn configured_limits_are_metrics() {
    let dir = TempDir::new("natkit-turn-limits");
    let cfg = dir.join("turn.toml");
    let port = free_port();
    let metrics = free_port();
    let write = |max: u32, user: &str| {
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:{port}\"]\nrelay-ip = [\"127.0.0.1\"]\nmin-port = 20200\nmax-port = 20229\nmetrics = \"127.0.0.1:{metrics}\"\nmax-allocations = {max}\n[users]\n{user} = \"{PASS}\"\n"
            ),
        )
        .unwrap();
    };
    write(7, USER);
    let relay = Relay::start_with(
        vec!["--config".into(), cfg.display().to_string()],
        port,
        metrics,
    );
    assert_eq!(relay.metric("natkit_turn_max_allocations"), 7.0);
    assert_eq!(relay.metric("natkit_turn_relay_ports"), 30.0);
    let (_a, _) = allocate(relay.addr, Transport::Udp);
    // A reload with another quota and another user: the user changes, the
    // quota (and its gauge) stay until a restart.
    write(9, "bob");
    relay.signal(libc::SIGHUP);
    let end = Instant::now() + STEP;
    loop {
        if node(relay.addr, Transport::Udp, "bob", PASS)
            .allocated()
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < end, "reload did not take effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(relay.metric("natkit_turn_max_allocations"), 7.0);
    assert_eq!(relay.metric("natkit_turn_relay_ports"), 30.0);
}

fn allocate_with(relay: &Relay, secret: &str) -> Result<(), ClientError> {
    let (u, p) = rest(secret, "carol");
    node(relay.addr, Transport::Udp, &u, &p)
        .allocated()
        .map(|_| ())
}

/// Rotation with `auth-secret-file`: every listed secret verifies; after
/// the file is rewritten and SIGHUP, a removed secret is refused and a new
/// one accepted, allocations made before stay, and no secret reaches the
/// log.
#[test]
fn auth_secret_file_rotates_on_sighup() {
    let dir = TempDir::new("natkit-turn-secret-file");
    let secrets = dir.join("auth-secrets");
    let log = dir.join("turn.log");
    let (current, previous, next) = ("current-Rq7wX2", "previous-Lm4tB9", "next-Yc8nK1");
    std::fs::write(
        &secrets,
        format!("# signing secret first\n{current}\n\n{previous}\n"),
    )
    .unwrap();
    let port = free_port();
    let metrics = free_port();
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "20150",
        "--max-port",
        "20199",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
        "--threads",
        "2",
        "--allow-peer",
        "127.0.0.0/8",
        // SIGHUP alone: not the file watch (tests/front_door.rs tests that).
        "--watch-interval",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut relay = Relay::start_logged(
        args,
        port,
        metrics,
        &log,
        &[
            ("NATKIT_TURN_AUTH_SECRET_FILE", secrets.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    allocate_with(&relay, current).expect("the first secret verifies");
    allocate_with(&relay, previous).expect("the second secret verifies");
    assert_eq!(
        allocate_with(&relay, next),
        Err(ClientError::WrongCredentials)
    );
    // An allocation that must survive the rotation.
    let (u, p) = rest(previous, "dave");
    let mut held = node(relay.addr, Transport::Udp, &u, &p);
    held.allocated().expect("allocation before the rotation");
    let echo = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    echo.set_read_timeout(Some(STEP)).unwrap();
    let peer = echo.local_addr().unwrap();
    held.permit(peer).unwrap();

    // Rotate: the next secret signs, the current one stays for credentials
    // already handed out, the previous one goes.
    std::fs::write(&secrets, format!("{next}\n{current}\n")).unwrap();
    relay.signal(libc::SIGHUP);
    let end = Instant::now() + STEP;
    while allocate_with(&relay, previous) != Err(ClientError::WrongCredentials) {
        assert!(Instant::now() < end, "the removed secret is still accepted");
        std::thread::sleep(Duration::from_millis(100));
    }
    allocate_with(&relay, next).expect("the new secret verifies");
    allocate_with(&relay, current).expect("the kept secret verifies");
    held.send(peer, b"after the rotation");
    let mut buf = [0u8; 64];
    let (n, _) = echo.recv_from(&mut buf).expect("relayed after SIGHUP");
    assert_eq!(&buf[..n], b"after the rotation");

    // A file the relay cannot use keeps the running secrets.
    std::fs::write(&secrets, "# nothing here\n").unwrap();
    relay.signal(libc::SIGHUP);
    let end = Instant::now() + STEP;
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("holds no secret")
    {
        assert!(Instant::now() < end, "the broken file was not reported");
        std::thread::sleep(Duration::from_millis(50));
    }
    allocate_with(&relay, next).expect("the running secrets stay");

    relay.signal(libc::SIGINT);
    relay.wait_exit(STEP);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGHUP: reloaded"), "{text}");
    // No TLS configured: a reload says nothing about a certificate.
    assert!(!text.contains("TLS certificate"), "{text}");
    for s in [current, previous, next] {
        assert!(!text.contains(s), "{s} leaked into the log");
    }
}

#[test]
fn every_example_in_help_passes_check_config() {
    let bin = env!("CARGO_BIN_EXE_natkit-turn");
    let dir = TempDir::new("natkit-turn-examples");
    // The files the examples name.
    tls::self_signed(&["localhost"], &dir.join("cert.pem"), &dir.join("key.pem"));
    std::fs::write(dir.join("secret.txt"), "an-example-secret\n").unwrap();
    std::fs::write(
        dir.join("turn.toml"),
        "listen = [\"127.0.0.1:3478\"]\nauth-secret-file = \"secret.txt\"\n",
    )
    .unwrap();
    let ran = bins::check_help_examples(bin, dir.path());
    assert!(ran >= 6, "only {ran} examples");
}
