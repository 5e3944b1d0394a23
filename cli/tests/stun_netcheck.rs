//! `natkit stun` and `natkit netcheck` against small fake STUN servers on
//! loopback: a silent one, a plain RFC 8489 one without OTHER-ADDRESS, one
//! that drops the first requests, and a 4-socket RFC 5780 one on 127.0.0.1
//! and 127.0.0.2. Every server thread stops when its handle drops, and reads
//! with a short timeout, so nothing outlives the test.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, SuccessFields};
use natkit_proto::raw::{attr, method};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Read and never answer.
    Silent,
    /// Answer Binding without RFC 5780 attributes; 420 to CHANGE-REQUEST.
    Plain,
    /// Drop the first `n` requests, then behave like `Plain`.
    DropFirst(usize),
    /// RFC 5780: four sockets, CHANGE-REQUEST honoured.
    Rfc5780,
    /// Answer everything with 400 Bad Request.
    Error,
}

struct FakeServer {
    /// [A1:P1, A1:P2, A2:P1, A2:P2]; only the first for non-RFC 5780 modes.
    addrs: Vec<SocketAddr>,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind(ip: &str, port: u16) -> Option<UdpSocket> {
    let s = UdpSocket::bind((ip.parse::<IpAddr>().ok()?, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(20))).ok()?;
    Some(s)
}

/// Four sockets: 127.0.0.1 and `alt_ip`, on two ports free on both.
fn bind_four(alt_ip: &str) -> Vec<UdpSocket> {
    for _ in 0..50 {
        let a1p1 = bind("127.0.0.1", 0).unwrap();
        let p1 = a1p1.local_addr().unwrap().port();
        let Some(a2p1) = bind(alt_ip, p1) else {
            continue;
        };
        let a1p2 = bind("127.0.0.1", 0).unwrap();
        let p2 = a1p2.local_addr().unwrap().port();
        let Some(a2p2) = bind(alt_ip, p2) else {
            continue;
        };
        return vec![a1p1, a1p2, a2p1, a2p2];
    }
    panic!("no pair of ports free on both 127.0.0.1 and {alt_ip}");
}

impl FakeServer {
    fn start(mode: Mode) -> FakeServer {
        Self::start_on(mode, "127.0.0.1", "127.0.0.2")
    }

    fn start_on(mode: Mode, ip: &str, alt_ip: &str) -> FakeServer {
        let socks: Vec<UdpSocket> = if mode == Mode::Rfc5780 {
            bind_four(alt_ip)
        } else {
            vec![bind(ip, 0).expect("bind fake server")]
        };
        let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        let socks = Arc::new(socks);
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..socks.len())
            .map(|i| {
                let (socks, addrs) = (socks.clone(), addrs.clone());
                let (received, stop) = (received.clone(), stop.clone());
                std::thread::spawn(move || serve(mode, i, &socks, &addrs, &received, &stop))
            })
            .collect();
        FakeServer {
            addrs,
            received,
            stop,
            threads,
        }
    }

    fn primary(&self) -> SocketAddr {
        self.addrs[0]
    }
}

fn serve(
    mode: Mode,
    me: usize,
    socks: &[UdpSocket],
    addrs: &[SocketAddr],
    received: &AtomicUsize,
    stop: &AtomicBool,
) {
    // Bounded: a test never needs a server for more than a minute.
    let end = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        let Ok((n, from)) = socks[me].recv_from(&mut buf) else {
            continue;
        };
        let Ok(req) = binding::parse_request(&buf[..n]) else {
            continue;
        };
        let count = received.fetch_add(1, Ordering::SeqCst) + 1;
        let mut out = [0u8; 256];
        let (via, len) = match mode {
            Mode::Silent => continue,
            Mode::Error => {
                let n = binding::write_error(
                    &mut out,
                    method::BINDING,
                    &req.transaction_id,
                    400,
                    &[],
                    false,
                );
                (me, n.unwrap())
            }
            Mode::DropFirst(k) if count <= k => continue,
            Mode::Plain | Mode::DropFirst(_) => {
                let n = if req.change.is_some() {
                    binding::write_error(
                        &mut out,
                        method::BINDING,
                        &req.transaction_id,
                        420,
                        &[attr::CHANGE_REQUEST],
                        req.fingerprint,
                    )
                } else {
                    let f = SuccessFields {
                        mapped: from,
                        response_origin: None,
                        other_address: None,
                        padding: None,
                        fingerprint: req.fingerprint,
                    };
                    binding::write_success(&mut out, &req.transaction_id, &f)
                };
                (me, n.unwrap())
            }
            Mode::Rfc5780 => {
                // Index bits: 1 = other port, 2 = other IP (RFC 5780 §6.1).
                let change = req.change.unwrap_or_default();
                let via = me ^ (if change.port { 1 } else { 0 }) ^ (if change.ip { 2 } else { 0 });
                let f = SuccessFields {
                    mapped: from,
                    response_origin: Some(addrs[via]),
                    other_address: Some(addrs[me ^ 3]),
                    padding: None,
                    fingerprint: req.fingerprint,
                };
                (
                    via,
                    binding::write_success(&mut out, &req.transaction_id, &f).unwrap(),
                )
            }
        };
        let _ = socks[via].send_to(&out[..len], from);
    }
}

fn natkit(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run natkit");
    eprintln!(
        "natkit {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn addr(v: &Value) -> SocketAddr {
    v.as_str()
        .expect("address string")
        .parse()
        .expect("socket address")
}

#[test]
fn stun_json_reports_mapped_address_and_rtt() {
    let s = FakeServer::start(Mode::Plain);
    let server = s.primary().to_string();
    let out = natkit(&["stun", &server, "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(addr(&v["server"]), s.primary());
    assert_eq!(addr(&v["answered_from"]), s.primary());
    // Loopback: no NAT, the mapped address is the local socket's.
    assert_eq!(addr(&v["mapped"]), addr(&v["local"]));
    assert_eq!(
        addr(&v["local"]).ip(),
        "127.0.0.1".parse::<IpAddr>().unwrap()
    );
    assert_eq!(v["sends"], 1);
    assert_eq!(v["retransmitted"], false);
    let rtt = v["rtt_ms"].as_f64().expect("rtt after one send");
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    assert!(v["other_address"].is_null());
    assert_eq!(s.received.load(Ordering::SeqCst), 1);
}

#[test]
fn stun_reports_retransmissions() {
    let s = FakeServer::start(Mode::DropFirst(2));
    let server = s.primary().to_string();
    let out = natkit(&["stun", &server, "--json", "--rto", "30ms"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["sends"], 3);
    assert_eq!(v["retransmitted"], true);
    // Karn: no RTT sample after retransmissions.
    assert!(v["rtt_ms"].is_null());
    // Sent at 0, 30 and 90 ms.
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 90.0);

    let out = natkit(&["stun", &server, "--rto", "30ms"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mapped    127.0.0.1:"), "{text}");
    // The server only drops the first two requests overall: this run is
    // answered at once and has an RTT.
    assert!(
        text.contains("rtt       ") && text.contains(" ms"),
        "{text}"
    );
    assert!(!text.contains("retransmitted"), "{text}");
}

#[test]
fn stun_human_output() {
    let s = FakeServer::start(Mode::Rfc5780);
    let out = natkit(&["stun", &format!("stun:{}", s.primary())]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("server    {}", s.primary())),
        "{text}"
    );
    assert!(text.contains("(same as local: no NAT)"), "{text}");
    assert!(
        text.contains(&format!("other     {}", s.addrs[3])),
        "{text}"
    );
}

#[test]
fn stun_silent_server_says_how_long_it_waited() {
    let s = FakeServer::start(Mode::Silent);
    let server = s.primary().to_string();
    let started = Instant::now();
    let out = natkit(&["stun", &server, "--rto", "20ms", "--rc", "3", "--rm", "2"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    // Sends at 0, 20 and 60 ms, gives up at 60 + 2 × 20 = 100 ms.
    let want = format!("error: no answer from {server} after 3 tries over 0.1 s");
    assert!(stderr(&out).contains(&want), "want {want:?}");
    assert_eq!(s.received.load(Ordering::SeqCst), 3);
    assert!(took >= Duration::from_millis(100), "{took:?}");
}

#[test]
fn netcheck_silent_server_fails_with_the_rfc_retransmissions() {
    let s = FakeServer::start(Mode::Silent);
    let server = s.primary().to_string();
    let out = natkit(&["netcheck", "--stun", &server, "--rto", "10ms"]);
    assert_eq!(out.status.code(), Some(1));
    // A probe among several: 3 sends over 7 RTOs (70 ms); then TCP to the
    // same port is refused.
    let want = format!("error: no answer from {server} after 3 tries over 0.1 s");
    assert!(stderr(&out).contains(&want), "want {want:?}");
    assert!(
        stderr(&out).contains("TCP: connection refused"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(s.received.load(Ordering::SeqCst), 3);

    // --json still prints what was (not) learned, and still fails.
    let out = natkit(&[
        "netcheck", "--stun", &server, "--rto", "5ms", "--rc", "2", "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["nat_type"], "udp_blocked");
    assert!(v["mapped"].is_null());
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "timeout");
    assert_eq!(v["udp"], "blocked");
}

#[test]
fn error_responses_teach_nothing() {
    let s = FakeServer::start(Mode::Error);
    let server = s.primary().to_string();
    let out = natkit(&["stun", &server]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&format!("error: {server} answered with error 400")));
    let out = natkit(&["netcheck", "--stun", &server]);
    assert_eq!(out.status.code(), Some(1));
    let want =
        format!("error: nothing learned: {server} answered the Binding request with error 400");
    assert!(stderr(&out).contains(&want), "want {want:?}");
}

#[test]
fn netcheck_server_without_rfc5780_reports_what_it_can() {
    let s = FakeServer::start(Mode::Plain);
    let server = s.primary().to_string();
    let out = natkit(&["netcheck", "--stun", &server, "--json", "--rto", "20ms"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["rfc5780"], false);
    assert_eq!(addr(&v["mapped"]), addr(&v["local"]));
    // Mapped equals local: no NAT, whatever RFC 5780 says.
    assert_eq!(v["mapping"]["behavior"], "no_nat");
    assert_eq!(v["filtering"]["behavior"], "unknown");
    assert_eq!(v["servers_given"][0]["address"], server.as_str());
    let want = format!(
        "warning: IPv4: server does not support RFC 5780 (no OTHER-ADDRESS): filtering cannot be determined; mapped address is {} (same as local: no NAT)",
        addr(&v["mapped"])
    );
    assert!(stderr(&out).contains(&want), "want {want:?}");
    // Test I and the hairpin probe only: no CHANGE-REQUEST to a plain server.
    assert_eq!(s.received.load(Ordering::SeqCst), 1);
}

#[test]
fn netcheck_loopback_rfc5780_is_open_internet() {
    let s = FakeServer::start(Mode::Rfc5780);
    let out = natkit(&["netcheck", "--stun", &s.primary().to_string(), "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["rfc5780"], true);
    assert_eq!(addr(&v["server"]), s.primary());
    assert_eq!(addr(&v["other_address"]), s.addrs[3]);
    assert_eq!(addr(&v["mapped"]), addr(&v["local"]));
    assert_eq!(v["mapping"]["behavior"], "no_nat");
    assert_eq!(v["filtering"]["behavior"], "endpoint_independent");
    assert_eq!(v["nat_type"], "open_internet");
    assert_eq!(v["hairpinning"], true);
    assert!(v["notes"].as_array().unwrap().is_empty(), "{v}");
    // Test I plus filtering test II, answered at once from A2:P2.
    assert_eq!(s.received.load(Ordering::SeqCst), 2);
    // No retransmission wait anywhere: well under one RTO.
    assert!(v["elapsed_ms"].as_f64().unwrap() < 500.0, "{v}");
}

#[test]
fn netcheck_human_output_with_two_servers() {
    let s = FakeServer::start(Mode::Rfc5780);
    let plain = FakeServer::start_on(Mode::Plain, "127.0.0.3", "127.0.0.4");
    let out = natkit(&[
        "netcheck",
        "--stun",
        &s.primary().to_string(),
        "--stun",
        &plain.primary().to_string(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "NAT behavior discovery (RFC 5780)".to_string(),
        format!(
            "  RFC 5780 server   {} (other address {})",
            s.primary(),
            s.addrs[3]
        ),
        "  mapping           none (mapped address is the local address)".to_string(),
        "  filtering         endpoint-independent".to_string(),
        "  hairpinning       yes".to_string(),
        "  varies by server  no (2 servers answered)".to_string(),
        "  NAT type          Open Internet (no NAT)".to_string(),
        "  verdict           No NAT and no filtering: direct connections work with every peer"
            .to_string(),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    assert!(stderr(&out).is_empty() || !stderr(&out).contains("warning"));
    assert_eq!(plain.received.load(Ordering::SeqCst), 1);
}

#[test]
fn netcheck_ipv6_loopback() {
    // Skip quietly where the machine has no IPv6 loopback.
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback; skipped");
        return;
    }
    let s = FakeServer::start_on(Mode::Plain, "::1", "::1");
    let out = natkit(&["stun", &format!("[::1]:{}", s.primary().port()), "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(addr(&v["mapped"]).ip(), "::1".parse::<IpAddr>().unwrap());
}

#[test]
fn bad_arguments_are_explained() {
    let out = natkit(&["stun", "not a host"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad server \"not a host\""));

    // One unusable server among usable ones is skipped with a warning.
    let s = FakeServer::start(Mode::Plain);
    let out = natkit(&[
        "netcheck",
        "--stun",
        &s.primary().to_string(),
        "--stun",
        "[::1]:3478",
        "--no-hairpin",
    ]);
    // Each family gets its own run: no "has no IPv4 address" any more.
    assert!(out.status.success());
    assert!(!stderr(&out).contains("has no"), "{}", stderr(&out));
    // Nothing usable: every reason, and failure.
    let out = natkit(&["netcheck", "--stun", "bad:port", "--stun", "a b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad port \"port\""),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bad server \"a b\""),
        "{}",
        stderr(&out)
    );

    let out = natkit(&["stun", "127.0.0.1:3478", "--rto", "0ms"]);
    assert_ne!(out.status.code(), Some(0));
}
