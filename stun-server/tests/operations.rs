//! natkit-stun's operator interface through the binary: what
//! `--check-config` reports (each piece of an error once, TLS files loaded
//! and checked) and the TLS certificate and key reloaded on SIGHUP and when
//! they change, or obtained from an ACME CA (pebble, scripts/deps/acme.sh).
//! Loopback only.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::binding::{parse_response, write_request, RequestOptions};
use natkit_testkit::pebble::Pebble;
use natkit_testkit::stream::read_stun_message;
use natkit_testkit::{bins, ready, tls, TempDir};

fn check_config(args: &[&str]) -> Output {
    bins::check_config(env!("CARGO_BIN_EXE_natkit-stun"), args)
}

/// Exit status 2; stderr, which must start with the configuration-error line.
fn refused(args: &[&str]) -> String {
    bins::config_refused(env!("CARGO_BIN_EXE_natkit-stun"), args)
}

#[test]
fn a_parse_error_names_the_file_and_the_toml_error_once() {
    let dir = TempDir::new("natkit-stun-ops-once");
    let bad = dir.join("bad-once.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:3478\"\nthreads = 2\n").unwrap();
    let err = refused(&["--config", bad.to_str().unwrap()]);
    assert_eq!(err.matches("bad-once.toml").count(), 1, "{err}");
    assert_eq!(err.matches("TOML parse error").count(), 1, "{err}");
    assert_eq!(err.matches("invalid config file").count(), 1, "{err}");
    let err = refused(&["--config", "/nonexistent/natkit-stun-once.toml"]);
    assert_eq!(err.matches("natkit-stun-once.toml").count(), 1, "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// A fresh self-signed certificate for `localhost`.
fn certificate() -> rcgen::CertifiedKey {
    rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap()
}

#[test]
fn check_config_loads_the_certificate_and_key() {
    let dir = TempDir::new("natkit-stun-ops-cc-tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    tls::write_pem(&certificate(), &cert, &key);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, certificate().key_pair.serialize_pem()).unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n%%%\n").unwrap();
    let missing = dir.join("missing.pem");
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let args = |c: &PathBuf, k: &PathBuf| {
        vec![
            "--listen".to_owned(),
            "127.0.0.1:3478".to_owned(),
            "--tls-listen".to_owned(),
            "127.0.0.1:5349".to_owned(),
            "--cert".to_owned(),
            s(c),
            "--key".to_owned(),
            s(k),
        ]
    };
    let run = |c: &PathBuf, k: &PathBuf| {
        let a = args(c, k);
        refused(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let a = args(&cert, &key);
    let out = check_config(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = run(&missing, &key);
    assert!(
        err.contains("error: cert: ") && err.contains("missing.pem"),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    let err = run(&junk, &key);
    assert!(
        err.contains("error: cert: ") && err.contains("not valid PEM"),
        "{err}"
    );
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
}

/// A Binding request over TLS to `addr`, trusting only `ca`: whether the
/// handshake succeeded and the request was answered.
fn tls_binding(addr: SocketAddr, ca: &rcgen::CertifiedKey) -> bool {
    let mut tls = tls::connect(addr, ca, "localhost", STEP);
    let mut req = [0u8; 64];
    let n = write_request(&mut req, &rand_tid(), &RequestOptions::default()).unwrap();
    if tls.write_all(&req[..n]).is_err() {
        return false;
    }
    read_stun_message(&mut tls).is_ok_and(|m| parse_response(&m).is_ok())
}

fn wait_log(log: &Path, text: &str) {
    let end = Instant::now() + STEP;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < end, "{text:?} never logged");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// natkit-stun with a TLS listener, serving `first` from `dir`'s cert.pem and key.pem, its
/// log in stun.log, and `--watch-interval watch`; ready on both ports.
struct TlsServer {
    srv: Server,
    primary: SocketAddr,
    tls: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    log: PathBuf,
}

fn tls_server(dir: &TempDir, first: &rcgen::CertifiedKey, watch: &str) -> TlsServer {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let log = dir.join("stun.log");
    tls::write_pem(first, &cert, &key);
    let primary = addr(&format!("127.0.0.1:{}", free_port()));
    let tls_addr = addr(&format!("127.0.0.1:{}", free_port()));
    let mut args = tls::listener_args(tls_addr, &cert, &key);
    let more = ["--listen", &primary.to_string(), "--threads", "1"];
    args.extend(
        more.into_iter()
            .chain(["--watch-interval", watch])
            .map(String::from),
    );
    let mut srv = Server::spawn(&args, log_file(&log));
    srv.wait_ready(primary);
    ready::wait_tcp(tls_addr, "natkit-stun's TLS listener", START);
    TlsServer {
        srv,
        primary,
        tls: tls_addr,
        cert,
        key,
        log,
    }
}

/// SIGHUP reloads the certificate and key: new TLS clients see the new
/// certificate. Files that do not load keep the old ones, and say why.
#[test]
fn sighup_reloads_the_tls_certificate() {
    let dir = TempDir::new("natkit-stun-ops-reload");
    let (old, new) = (certificate(), certificate());
    // SIGHUP alone, not the file watch (tested below).
    let mut s = tls_server(&dir, &old, "0");
    assert!(tls_binding(s.tls, &old));
    assert!(!tls_binding(s.tls, &new));

    tls::write_pem(&new, &s.cert, &s.key);
    signal(&s.srv, libc::SIGHUP);
    let end = Instant::now() + STEP;
    while !tls_binding(s.tls, &new) {
        assert!(Instant::now() < end, "certificate not reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tls_binding(s.tls, &old));
    wait_log(&s.log, "SIGHUP: reloaded the TLS certificate and key");

    // A broken certificate: the new one (now the running one) stays.
    std::fs::write(&s.cert, "not a certificate\n").unwrap();
    signal(&s.srv, libc::SIGHUP);
    wait_log(&s.log, "keeping the old TLS certificate and key");
    let text = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        text.contains("cert: ") && text.contains("no certificate found"),
        "{text}"
    );
    assert!(tls_binding(s.tls, &new));
    // Still serving plain STUN too.
    s.srv.wait_ready(s.primary);
}

/// A certificate replaced on disk is served without a signal (watch-interval), and the log
/// says what reloaded it.
#[test]
fn a_changed_certificate_is_loaded_without_a_signal() {
    let dir = TempDir::new("natkit-stun-ops-watch");
    let (old, new) = (certificate(), certificate());
    let s = tls_server(&dir, &old, "1");
    assert!(tls_binding(s.tls, &old));
    tls::write_pem(&new, &s.cert, &s.key);
    let end = Instant::now() + STEP;
    while !tls_binding(s.tls, &new) {
        assert!(
            Instant::now() < end,
            "certificate not reloaded without a signal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_log(&s.log, "file change: reloaded the TLS certificate and key");
}

fn signal(srv: &Server, sig: i32) {
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(srv.child.id() as i32, sig) }, 0);
}

#[test]
fn every_example_in_help_passes_check_config() {
    let bin = env!("CARGO_BIN_EXE_natkit-stun");
    let dir = TempDir::new("natkit-stun-examples");
    // The files the examples name.
    tls::self_signed(&["localhost"], &dir.join("cert.pem"), &dir.join("key.pem"));
    std::fs::write(dir.join("stun.toml"), "listen = [\"127.0.0.1:3478\"]\n").unwrap();
    let ran = bins::check_help_examples(bin, dir.path());
    assert!(ran >= 5, "only {ran} examples");
}

/// natkit-stun takes its TLS certificate from ACME too (the keys both servers share): pebble
/// validates tls-alpn-01 (RFC 8737) on its TLS listener, and a client that trusts only
/// pebble's issuing root gets a Binding answer over TLS (RFC 8489 §6.2.3).
#[test]
fn an_acme_certificate_serves_stun_over_tls() {
    const DOMAIN: &str = "stun.example.test";
    let dir = TempDir::new("natkit-stun-ops-acme");
    let primary = addr(&format!("127.0.0.1:{}", free_port()));
    let tls_addr = addr(&format!("127.0.0.1:{}", free_port()));
    let metrics = addr(&format!("127.0.0.1:{}", free_port()));
    let pebble = Pebble::start(dir.path(), tls_addr.port(), Duration::from_secs(3600));
    let mut args = pebble.server_args(tls_addr.port(), DOMAIN, &dir.join("acme"));
    let more = ["--listen", &primary.to_string(), "--threads", "1"];
    args.extend(more.into_iter().map(String::from));
    args.extend(["--metrics".into(), metrics.to_string()]);
    let mut srv = Server::spawn(&args, log_file(&dir.join("stun.log")));
    srv.wait_ready(primary);
    ready::wait_metric(
        metrics,
        "natkit_stun_acme_certificates_issued_total",
        1.0,
        Duration::from_secs(90),
    );
    let mut tls = tls::connect_trusting(tls_addr, pebble.issuing_root(), DOMAIN, STEP);
    let mut req = [0u8; 64];
    let n = write_request(&mut req, &rand_tid(), &RequestOptions::default()).unwrap();
    tls.write_all(&req[..n]).unwrap();
    let answer = read_stun_message(&mut tls).expect("a Binding answer over TLS");
    assert!(parse_response(&answer).is_ok());
}
