//! Scale-out without shared state (docs/SCALING.md): two natkit-turn
//! instances reading the same REST secrets from one `auth-secret-file` (as
//! the Kubernetes manifests mount one Secret on every relay), each on its
//! own address. Credentials `natkit creds` mints allocate on both, a client
//! relays through each, each advertises its own relay address, and during a
//! rotation (new secret first, old second) credentials from either secret
//! work on both while a stranger's are refused by both. Ending the rotation
//! (the old secret removed from the file, SIGHUP) refuses the old secret's
//! credentials on both and keeps the new one's.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use natkit_deploy_tests::net::{metric_value, PortBlock};
use natkit_deploy_tests::relay::{creds, natkit_json, turn_check, Turn};
use natkit_deploy_tests::TempDir;

/// 21100-21199: this file's loopback ports.
const PORTS: PortBlock = PortBlock(21_100);
const NEW: &str = "scale-out-new-secret";
const OLD: &str = "scale-out-old-secret";

fn start(logs: &TempDir, secrets: &Path, ip: [u8; 4], n: u16) -> Turn {
    let listen = SocketAddr::from((ip, PORTS.port(n * 10)));
    let metrics = PORTS.addr(n * 10 + 1);
    // Relay ports: 21150-21169 for the first relay, 21170-21189 for the second.
    let relay = (PORTS.port(50 + n * 20), PORTS.port(50 + n * 20 + 19));
    Turn::start(
        listen,
        metrics,
        relay,
        &["--auth-secret-file", secrets.to_str().unwrap()],
        &logs.join(format!("turn-{n}.log")),
    )
}

fn relayed_ip(report: &serde_json::Value) -> String {
    let r: SocketAddr = report["allocations"][0]["relayed"][0]
        .as_str()
        .expect("relayed address")
        .parse()
        .unwrap();
    r.ip().to_string()
}

#[test]
fn two_relays_share_one_secret_and_no_state() {
    let logs = TempDir::new("natkit-deploy-scale-out");
    // Mid-rotation: the new secret signs, the old one still verifies.
    let secrets = logs.join("auth-secrets");
    std::fs::write(&secrets, format!("{NEW}\n{OLD}\n")).unwrap();
    // Two loopback addresses stand for two hosts.
    let mut relays = [
        start(&logs, &secrets, [127, 0, 0, 1], 0),
        start(&logs, &secrets, [127, 0, 0, 2], 1),
    ];

    // One set of credentials, minted once, as a web service would hand
    // them to a client that may land on either relay.
    let (user, pass) = creds(NEW, "carol");
    for r in &relays {
        let report = turn_check(r.listen, &user, &pass, 3);
        // Each relay advertises its own address.
        assert_eq!(relayed_ip(&report), r.listen.ip().to_string(), "{report:#}");
        let body = r.metrics_text();
        assert_eq!(
            metric_value(
                &body,
                r#"natkit_turn_allocation_attempts_total{outcome="success"}"#
            ),
            Some(2.0),
            "{body}"
        );
        // 3 round trips of 100 bytes, A -> B and back: 600 bytes each way.
        assert_eq!(
            metric_value(
                &body,
                r#"natkit_turn_relayed_bytes_total{direction="to_peer"}"#
            ),
            Some(600.0),
            "{body}"
        );
    }

    // Rotation: credentials minted from the previous secret still work on both.
    let (old_user, old_pass) = creds(OLD, "dave");
    for r in &relays {
        turn_check(r.listen, &old_user, &old_pass, 1);
    }

    // A secret neither relay has: refused by both, and counted.
    let (bad_user, bad_pass) = creds("not-the-shared-secret", "mallory");
    for r in &relays {
        let server = r.listen.to_string();
        assert!(
            refused(r, &bad_user, &bad_pass).is_some(),
            "{server} accepted a stranger's credentials"
        );
        let failures = metric_value(&r.metrics_text(), "natkit_turn_auth_failures_total").unwrap();
        assert!(failures >= 1.0, "{server}: auth failures {failures}");
    }

    // The rotation ends: the old secret leaves the file, every relay reloads.
    std::fs::write(&secrets, format!("# rotated\n{NEW}\n")).unwrap();
    for r in &mut relays {
        r.reload();
    }
    for r in &relays {
        let end = Instant::now() + Duration::from_secs(30);
        while refused(r, &old_user, &old_pass).is_none() {
            assert!(
                Instant::now() < end,
                "{}: the removed secret is still accepted",
                r.listen
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        turn_check(r.listen, &user, &pass, 1);
    }
    for r in &mut relays {
        r.stop();
    }
}

/// `natkit turn` with these credentials: `Some(report)` if it was refused.
fn refused(r: &Turn, user: &str, pass: &str) -> Option<serde_json::Value> {
    let server = r.listen.to_string();
    let (ok, v, _) = natkit_json(&[
        "turn",
        &server,
        "--user",
        user,
        "--password",
        pass,
        "--count",
        "1",
    ]);
    (!ok && v["ok"] == false).then_some(v)
}
