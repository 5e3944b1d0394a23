//! Usage records through the binary: one JSON line per allocation when it
//! ends, interim ones while it lives, the right fields and reasons, no
//! secrets, and the file reopened on SIGHUP for logrotate.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::turn::client::Transport;
use serde_json::Value;

/// The records in `path` so far (none if it does not exist yet).
fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Wait until `path` holds a record that `pick` accepts; returns it.
fn wait_record(path: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + STEP;
    loop {
        if let Some(r) = records(path).into_iter().find(|r| pick(r)) {
            return r;
        }
        assert!(
            Instant::now() < end,
            "no usage record {what} in {} within {STEP:?}; have {:?}",
            path.display(),
            records(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn for_client(addr: std::net::SocketAddr, end: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["client"] == addr.to_string() && r["end"] == end
}

#[test]
fn allocations_leave_usage_records_and_sighup_reopens_the_file() {
    let dir = TempDir::new("usage");
    let log = dir.join("usage.jsonl");
    let mut relay = Relay::start(&[
        "--usage-log",
        log.to_str().unwrap(),
        "--usage-interval",
        "1",
        "--drain-grace",
        "0",
    ]);
    // Two allocations over UDP exchange data: 3 packets A -> B, 1 back.
    let (mut a, ra) = allocate(relay.addr, Transport::Udp);
    let (mut b, rb) = allocate(relay.addr, Transport::Tcp);
    a.permit(rb).unwrap();
    b.permit(ra).unwrap();
    for d in [&b"one"[..], b"two", b"three"] {
        a.send(rb, d);
        assert_eq!(b.recv().1, d);
    }
    b.send(ra, b"back");
    assert_eq!(a.recv().1, b"back");
    let a_addr = a.local_addr();
    let b_addr = b.local_addr();

    // B lives on: an interim record with its totals so far.
    let interim = wait_record(&log, "interim for B", |r| {
        r["client"] == b_addr.to_string() && r["record"] == "interim"
    });
    assert_eq!(interim["end"], Value::Null);
    assert_eq!(interim["transport"], "tcp");

    a.close();
    let r = wait_record(&log, "A deleted", for_client(a_addr, "deleted"));
    assert_eq!(r["record"], "end");
    assert_eq!(r["user"], USER);
    assert_eq!(r["transport"], "udp");
    assert_eq!(r["relayed"], serde_json::json!([ra.to_string()]));
    // A sent 3 packets (3+3+5 bytes) to its peer and got 1 (4 bytes) back.
    assert_eq!(
        (r["to_peer_packets"].as_u64(), r["to_peer_bytes"].as_u64()),
        (Some(3), Some(11))
    );
    assert_eq!(
        (
            r["to_client_packets"].as_u64(),
            r["to_client_bytes"].as_u64()
        ),
        (Some(1), Some(4))
    );
    assert_eq!(r["peers"], 1);
    assert_eq!(r["peers_capped"], false);
    let start = r["start"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "RFC 3339: {start}"
    );
    assert!(r["duration_ms"].as_u64().is_some());

    // logrotate: move the file away, SIGHUP; the relay writes a new one.
    let rotated = dir.join("usage.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    relay.signal(libc::SIGHUP);
    let end = Instant::now() + STEP;
    while !log.exists() {
        assert!(Instant::now() < end, "the usage log was not reopened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // B's connection closes: its record goes to the new file.
    drop(b);
    let r = wait_record(&log, "B gone", for_client(b_addr, "client_gone"));
    assert_eq!(r["to_client_bytes"], 11);
    assert_eq!(r["to_peer_bytes"], 4);
    assert!(records(&rotated)
        .iter()
        .any(|r| r["client"] == a_addr.to_string()));

    // SIGTERM with no grace: the allocations left end as drained, written
    // before the process exits.
    let (c, _) = allocate(relay.addr, Transport::Udp);
    let c_addr = c.local_addr();
    relay.signal(libc::SIGTERM);
    assert!(relay.wait_exit(STEP).success());
    assert!(records(&log).iter().any(for_client(c_addr, "drained")));

    // Never a secret.
    for f in [&log, &rotated] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.contains(PASS), "password in {}", f.display());
    }
}

#[test]
fn usage_metrics_and_an_unwritable_log() {
    let dir = TempDir::new("usage-metrics");
    let log = dir.join("u.jsonl");
    let relay = Relay::start(&["--usage-log", log.to_str().unwrap()]);
    let (mut a, _) = allocate(relay.addr, Transport::Udp);
    a.close();
    wait_record(&log, "deleted", |r| r["end"] == "deleted");
    assert_eq!(
        relay.metric("natkit_turn_allocations_ended_total{reason=\"deleted\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("natkit_turn_usage_records_total{result=\"written\"}"),
        1.0
    );
    // A log the relay cannot open is refused at start, naming the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natkit-turn"))
        .args([
            "--user",
            "u:p",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--usage-log",
            "/nonexistent-dir/u.jsonl",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent-dir/u.jsonl"), "{err}");
}

/// A TCP allocation's (RFC 6062) record counts the bytes its spliced
/// connection carried, each way.
#[test]
fn tcp_allocations_count_spliced_bytes() {
    use std::io::{Read, Write};
    let dir = TempDir::new("usage-tcp");
    let log = dir.join("usage.jsonl");
    let relay = Relay::start(&[
        "--usage-log",
        log.to_str().unwrap(),
        "--usage-interval",
        "1",
        "--allow-peer",
        "127.0.0.0/8",
    ]);
    let (mut n, _) = tcp_allocate(relay.addr);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let id = tcp_connect(&mut n, listener.local_addr().unwrap()).expect("Connect");
    let (mut peer, _) = listener.accept().unwrap();
    let mut data = n.bind_data_connection(relay.addr, id).expect("bound");
    peer.set_read_timeout(Some(STEP)).unwrap();
    data.set_read_timeout(Some(STEP)).unwrap();
    data.write_all(&[1u8; 30_000]).unwrap();
    peer.read_exact(&mut [0u8; 30_000]).unwrap();
    peer.write_all(&[2u8; 20_000]).unwrap();
    data.read_exact(&mut [0u8; 20_000]).unwrap();
    let client = n.local_addr().to_string();
    let r = wait_record(&log, "with the spliced bytes", |r| {
        r["client"] == client.as_str()
            && r["to_peer_bytes"] == 30_000
            && r["to_client_bytes"] == 20_000
    });
    assert_eq!(r["transport"], "tcp");
}
