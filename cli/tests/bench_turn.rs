//! `natkit bench turn` and `natkit bench flood` through the binary against
//! natkit-turn on loopback: short runs (for `bench turn`, one in each peer
//! mode), checking that the JSON figures are consistent with each other.
//! The relay is killed by PID when its handle drops; every wait is bounded.

use std::process::Command;

use natkit_testkit::{bins, ports, TurnRelay};
use serde_json::Value;

/// natkit-turn on loopback with user `bench`, killed on drop.
fn start_relay() -> TurnRelay {
    TurnRelay::builder(bins::natkit_turn_next_to(env!("CARGO_BIN_EXE_natkit")))
        .relay_ports(ports::random_block(20_000, 2_000, 20))
        .user("bench", "secret-pw")
        .allow_loopback_peers()
        .no_drain_grace()
        .start()
}

fn bench(relay: &TurnRelay, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench".to_string(),
        "turn".into(),
        format!("127.0.0.1:{}", relay.port()),
        "--user".into(),
        "bench".into(),
        "--password".into(),
        "secret-pw".into(),
        "--allocations".into(),
        "2".into(),
        "--duration".into(),
        "1s".into(),
        "--warmup".into(),
        "200ms".into(),
        // A timeout no scheduling hiccup of a busy test machine reaches.
        "--timeout".into(),
        "2s".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    natkit_json(&args)
}

/// Run natkit with `args`, which must succeed: its JSON report.
fn natkit_json(args: &[String]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run natkit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "natkit {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

fn u(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a count in {v:#}"))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v:#}"))
}

fn check_consistent(r: &Value, window: u64) {
    let sent = u(r, &["load", "sent"]);
    let reached = u(r, &["load", "peer_received"]);
    let received = u(r, &["load", "received"]);
    let lost = u(r, &["load", "lost"]);
    assert!(received > 0, "{r:#}");
    // Only what was sent can come back; the window's edges allow at most
    // one window per allocation of answers to warm-up probes.
    let slack = 2 * window;
    assert!(received <= sent + slack, "{r:#}");
    assert!(reached <= sent + slack, "{r:#}");
    assert!(received <= reached + slack, "{r:#}");
    assert!(lost + received <= sent + slack, "{r:#}");
    // Loss is reported, and with a 2 s timeout on loopback nothing is lost.
    assert_eq!(lost, 0, "{r:#}");
    assert_eq!(f(r, &["load", "loss_ratio"]), 0.0);
    let pps = f(r, &["load", "relayed_packets_per_sec"]);
    let rtt = f(r, &["load", "round_trips_per_sec"]);
    assert!(pps > 0.0 && rtt > 0.0, "{r:#}");
    assert_eq!(pps, ((reached + received) as f64 / 1.0).round());
    assert_eq!(rtt, received as f64);
    let p50 = f(r, &["load", "latency_us", "p50"]);
    let p99 = f(r, &["load", "latency_us", "p99"]);
    let max = f(r, &["load", "latency_us", "max"]);
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:#}");
    assert!(f(r, &["setup", "allocations_per_sec"]) > 0.0, "{r:#}");
    assert_eq!(u(r, &["allocations"]), 2);
}

#[test]
fn bench_turn_udp_peers() {
    let relay = start_relay();
    let r = bench(&relay, &["--window", "8"]);
    assert_eq!(r["peer_mode"], "udp");
    check_consistent(&r, 8);
}

#[test]
fn bench_turn_udp_peers_with_gso_trains() {
    let relay = start_relay();
    let r = bench(&relay, &["--window", "8", "--gso", "--size", "40"]);
    assert_eq!(r["size"], 40);
    check_consistent(&r, 8);
}

#[test]
fn bench_turn_relay_to_relay_paced() {
    let relay = start_relay();
    // 500 probes/s per allocation for 1 s: about 1000 round trips; probes
    // and echoes go out as GSO trains.
    let r = bench(
        &relay,
        &[
            "--peer-mode",
            "relay",
            "--rate",
            "500",
            "--window",
            "4",
            "--gso",
        ],
    );
    assert_eq!(r["peer_mode"], "relay");
    check_consistent(&r, 4);
    let received = u(&r, &["load", "received"]);
    assert!((800..=1100).contains(&received), "{r:#}");
}

#[test]
fn bench_turn_reports_relay_memory_when_holding() {
    let relay = start_relay();
    let pid = relay.child.id().to_string();
    let r = bench(&relay, &["--hold", "100ms", "--server-pid", &pid]);
    assert!(r["load"].is_null(), "{r:#}");
    let m = &r["server_memory"];
    assert_eq!(u(m, &["pid"]), u64::from(relay.child.id()));
    assert!(u(m, &["before", "rss_kib"]) > 0 && u(m, &["after", "rss_kib"]) > 0);
    assert!(m["per_allocation"]["anonymous_bytes"].is_number(), "{r:#}");
}

#[test]
fn bench_turn_wrong_password_is_a_clear_error() {
    let relay = start_relay();
    let out = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args([
            "bench",
            "turn",
            &format!("127.0.0.1:{}", relay.port()),
            "--password",
            "wrong",
            "--allocations",
            "2",
            "--duration",
            "1s",
            "--setup-timeout",
            "20s",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Allocate #"), "{err}");
}

/// Heavy (unpaced floods): it has the machine to itself under cargo-nextest
/// (.config/nextest.toml).
#[test]
fn bench_flood_measures_through_the_floods() {
    let relay = start_relay();
    let pid = relay.child.id().to_string();
    let args = [
        "bench",
        "flood",
        &format!("127.0.0.1:{}", relay.port()),
        "--password",
        "secret-pw",
        "--warmup",
        "1s",
        "--duration",
        "1s",
        "--rate",
        "200",
        "--udp-sources",
        "4",
        "--tcp-connections",
        "2",
        "--new-user-every",
        "200ms",
        "--server-pid",
        &pid,
        "--json",
    ];
    let r = natkit_json(&args.map(String::from));
    assert!(u(&r, &["udp_flood_sent"]) > 0, "{r:#}");
    assert!(u(&r, &["tcp_flood", "requests"]) > 0, "{r:#}");
    assert_eq!(u(&r, &["tcp_flood", "connections"]), 2);
    for phase in ["baseline", "flood"] {
        let p = &r[phase];
        let sent = u(p, &["stream_sent"]);
        let at_peer = u(p, &["stream_at_peer"]);
        let back = u(p, &["stream_back"]);
        assert!(back <= at_peer && at_peer <= sent, "{phase}: {r:#}");
        // The stream is paced at --rate through both phases (the baseline's
        // stream also runs while the watchers stop); the floods stop on
        // time.
        let seconds = f(p, &["seconds"]);
        assert!((1.0..2.0).contains(&seconds), "{phase}: {r:#}");
        let rate = sent as f64 / seconds;
        assert!((100.0..350.0).contains(&rate), "{phase}: {r:#}");
        // A Binding every 100 ms, a new user every 200 ms.
        assert!(u(p, &["bindings", "sent"]) >= 5, "{phase}: {r:#}");
        assert!(u(p, &["new_users", "tried"]) >= 3, "{phase}: {r:#}");
        assert!(f(p, &["server_rss_max_mib"]) > 0.0, "{phase}: {r:#}");
    }
    // Before the floods nothing on loopback is lost or late.
    let b = &r["baseline"];
    assert_eq!(u(b, &["stream_back"]), u(b, &["stream_sent"]), "{r:#}");
    assert_eq!(u(b, &["bindings", "answered"]), u(b, &["bindings", "sent"]));
    assert_eq!(
        u(b, &["new_users", "allocated"]),
        u(b, &["new_users", "tried"])
    );
    assert!(b["new_users"]["failure"].is_null(), "{r:#}");
}
