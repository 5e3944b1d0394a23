//! Automatic certificates (ACME, RFC 8555) through the binary, against pebble on loopback
//! with real tls-alpn-01 validation (RFC 8737) on natkit-turn's own TLS listener: pebble's
//! mock DNS resolves every name to 127.0.0.1 and its validator connects to the TLS port.
//! pebble and pebble-challtestsrv come from scripts/deps/acme.sh.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use natkit_testkit::pebble::Pebble;
use natkit_testkit::{bins, ready, tls};
use rustls::pki_types::{pem::PemObject, CertificateDer};

const DOMAIN: &str = "turn.example.test";
const ISSUED: &str = "natkit_turn_acme_certificates_issued_total";
/// Validation handshakes answered on the TLS listeners.
const CHALLENGES: &str =
    r#"natkit_turn_connections_total{result="acme_challenge",transport="tls"}"#;
/// Issuance on a loaded 2-core machine: account, order, validation, finalize.
const ISSUE: Duration = Duration::from_secs(90);

fn acme_args(tls_port: u16, pebble: &Pebble, state: &Path) -> Vec<String> {
    let mut args = pebble.server_args(tls_port, DOMAIN, state);
    args.extend(["--acme-contact".into(), "ops@example.test".into()]);
    args
}

fn start(args: &[String]) -> Relay {
    Relay::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn metrics_addr(r: &Relay) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], r.metrics))
}

/// A TURN Allocate over TLS to `port` for DOMAIN, trusting only `root`: the relayed address,
/// and the leaf certificate the server presented.
fn allocate_over_tls(port: u16, root: &CertificateDer<'static>) -> (SocketAddr, Vec<u8>) {
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = tls::connect_trusting(server, root.clone(), DOMAIN, STEP);
    let (_, relayed) = stream_allocate(&mut s, USER, PASS).expect("Allocate over TLS succeeds");
    let leaf = s.conn.peer_certificates().expect("a certificate")[0].to_vec();
    (relayed, leaf)
}

/// natkit-turn starts with no certificate, gets one from pebble (validated on its own TLS
/// listener), serves it to a client that trusts only pebble's root (a TURN Allocate over
/// TLS), keeps the account and pair in the state directory (key owner-only), and renews at
/// 2/3 of the (12 s) lifetime: the new certificate is served without a restart.
#[test]
fn obtains_serves_and_renews_a_certificate_without_restart() {
    let dir = TempDir::new("natkit-turn-acme");
    let tls_port = free_port();
    let pebble = Pebble::start(dir.path(), tls_port, Duration::from_secs(12));
    let state = dir.join("acme");
    let mut relay = start(&acme_args(tls_port, &pebble, &state));
    ready::wait_metric(metrics_addr(&relay), ISSUED, 1.0, ISSUE);

    let root = pebble.issuing_root();
    let (relayed, first) = allocate_over_tls(tls_port, &root);
    assert_eq!(relayed.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    // The served pair and the account are kept in the state directory.
    CertificateDer::from_pem_file(state.join("cert.pem")).unwrap();
    assert!(state.join("account.json").is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key.pem is {mode:o}");

    // Renewal (due 8 s after issuance): a later certificate, same process.
    let issued = relay.metric(ISSUED);
    ready::wait_metric(metrics_addr(&relay), ISSUED, issued + 1.0, ISSUE);
    // The swap precedes the count by a moment: a connection may see the new certificate
    // before the counter does, so wait on the served certificate itself.
    let end = std::time::Instant::now() + ISSUE;
    let second = loop {
        let (_, leaf) = allocate_over_tls(tls_port, &root);
        if leaf != first {
            break leaf;
        }
        assert!(
            std::time::Instant::now() < end,
            "the renewed certificate is not served"
        );
    };
    assert!(!second.is_empty());
    assert!(relay.child.try_wait().unwrap().is_none(), "no restart");
    assert_eq!(relay.metric("natkit_turn_acme_failures_total"), 0.0);
    // The validation was answered on the TLS listener and counted apart (a renewal may
    // reuse the still-valid authorization, RFC 8555 §7.1.4, and need none).
    assert!(relay.metric(CHALLENGES) >= 1.0);
}

/// On a TLS port shared with a web site, a certificate is obtained too; a restart serves the
/// stored certificate at once (nothing issued), and an unreachable ACME server is counted as
/// a failure and retried.
#[test]
fn a_restart_serves_the_stored_certificate_and_failures_keep_it() {
    let dir = TempDir::new("natkit-turn-acme-restart");
    let tls_port = free_port();
    let pebble = Pebble::start(dir.path(), tls_port, Duration::from_secs(3600));
    let state = dir.join("acme");
    // The TLS port shared with a web site: validation is answered before routing. (Nothing
    // listens at the backend; no connection here goes there.)
    let mut args = acme_args(tls_port, &pebble, &state);
    args.extend(["--web-backend".into(), format!("127.0.0.1:{}", free_port())]);
    let relay = start(&args);
    ready::wait_metric(metrics_addr(&relay), ISSUED, 1.0, ISSUE);
    assert!(relay.metric(CHALLENGES) >= 1.0);
    drop(relay);
    let stored = CertificateDer::from_pem_file(state.join("cert.pem")).unwrap();
    let root = pebble.issuing_root();

    let relay = start(&args);
    ready::wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        "natkit-turn's TLS listener",
        START,
    );
    let (_, served) = allocate_over_tls(tls_port, &root);
    assert_eq!(served, stored.to_vec());
    assert_eq!(relay.metric(ISSUED), 0.0);
    assert!(relay.metric("natkit_turn_acme_certificate_not_after_seconds") > 0.0);
    drop(relay);

    // The ACME server gone, and a second domain the stored certificate does not name: the
    // first attempt is due at once, fails, is counted and retried later.
    drop(pebble);
    let mut other = args.clone();
    let at = other.iter().position(|a| a == DOMAIN).unwrap();
    other.insert(at + 1, "--acme-domain".into());
    other.insert(at + 2, "relay2.example.test".into());
    let relay = start(&other);
    ready::wait_metric(
        metrics_addr(&relay),
        "natkit_turn_acme_failures_total",
        1.0,
        ISSUE,
    );
    assert_eq!(relay.metric(ISSUED), 0.0);
    // The TLS listener is up all the same (with a self-signed stand-in).
    ready::wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        "natkit-turn's TLS listener",
        START,
    );
}

/// ACME and certificate files exclude each other, and ACME needs a TLS listener and a state
/// directory: refused at start-up, naming the key.
#[test]
fn acme_config_errors_are_clear() {
    let turn = env!("CARGO_BIN_EXE_natkit-turn");
    let base = [
        "--listen",
        "127.0.0.1:3478",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "a:b",
    ];
    let refused = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        bins::config_refused(turn, &args)
    };
    // A complete ACME setting, then what each case adds.
    let acme = |domain: &str, extra: &[&str]| {
        let mut a = vec![
            "--tls-listen",
            "127.0.0.1:5349",
            "--acme-domain",
            domain,
            "--acme-state-dir",
            "/tmp/x",
        ];
        a.extend_from_slice(extra);
        refused(&a)
    };
    let e = acme(DOMAIN, &["--cert", "c.pem", "--key", "k.pem"]);
    assert!(e.contains("cert: set together with acme-domain"), "{e}");
    let e = refused(&["--acme-domain", DOMAIN, "--acme-state-dir", "/tmp/x"]);
    assert!(e.contains("acme-domain: set without tls-listen"), "{e}");
    let e = refused(&["--tls-listen", "127.0.0.1:5349", "--acme-domain", DOMAIN]);
    assert!(e.contains("set without acme-state-dir"), "{e}");
    let e = acme("*.example.test", &[]);
    assert!(e.contains("no wildcards"), "{e}");
    let e = acme(DOMAIN, &["--acme-directory", "http://127.0.0.1:14000/dir"]);
    assert!(e.contains("acme-directory: must be an https:// URL"), "{e}");
}
