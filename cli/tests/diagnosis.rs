//! Issue 14, diagnosis and "everywhere", through the binary on loopback
//! only: fail fast on ICMP port unreachable, progress, --timeout, the
//! default server list (overridden: no test reaches a public server), IPv4
//! and IPv6 in one run, the UDP-blocked/TCP-works verdict, JSON documents
//! on failure, no panic on a closed pipe, secrets from env and files,
//! examples in every --help, -V on subcommands, no colour codes in logs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, SuccessFields};
use serde_json::Value;

fn natkit_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_natkit"));
    c.args(args)
        .env("RUST_LOG", "off")
        // Never the public defaults, whatever a test forgets.
        .env("NATKIT_STUN_SERVERS", "127.0.0.1:9")
        .env_remove("NATKIT_TURN_SECRET")
        .env_remove("NATKIT_TURN_PASSWORD");
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("run natkit");
    eprintln!(
        "{:?}: {}\nstdout:\n{}\nstderr:\n{}",
        c.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn natkit(args: &[&str]) -> Output {
    run(natkit_cmd(args))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON document")
}

/// A UDP port nothing listens on (bound, read, closed): the kernel answers
/// datagrams to it with ICMP port unreachable.
fn closed_udp(ip: &str) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.local_addr().unwrap()
}

/// A plain STUN server over UDP (and, if asked, TCP on the same port) that
/// stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The answer to `req` from `from`, and where it goes: RESPONSE-PORT (RFC
/// 5780 §7.5) sends it to the same IP at that port.
fn answer_to(req: &[u8], from: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
    let r = binding::parse_request(req).ok()?;
    let to = match r.response_port {
        Some(p) => SocketAddr::new(from.ip(), p),
        None => from,
    };
    Some((answer(req, from)?, to))
}

fn answer(req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let r = binding::parse_request(req).ok()?;
    let mut out = [0u8; 128];
    let f = SuccessFields {
        mapped: from,
        response_origin: None,
        other_address: None,
        padding: None,
        fingerprint: r.fingerprint,
    };
    let n = binding::write_success(&mut out, &r.transaction_id, &f).ok()?;
    Some(out[..n].to_vec())
}

impl Server {
    /// `udp`: answer over UDP (else read and stay silent); `tcp`: also
    /// answer over TCP on the same port.
    fn start(ip: &str, udp: bool, tcp: bool) -> Server {
        let u = UdpSocket::bind((ip, 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = u.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let st = stop.clone();
        threads.push(std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                let Ok((n, from)) = u.recv_from(&mut buf) else {
                    continue;
                };
                if let (true, Some((a, to))) = (udp, answer_to(&buf[..n], from)) {
                    let _ = u.send_to(&a, to);
                }
            }
        }));
        if tcp {
            let l = TcpListener::bind(addr).unwrap();
            l.set_nonblocking(true).unwrap();
            let st = stop.clone();
            threads.push(std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(60);
                while !st.load(Ordering::SeqCst) && Instant::now() < end {
                    let Ok((mut c, from)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut h = [0u8; 20];
                    if c.read_exact(&mut h).is_err() {
                        continue;
                    }
                    let len = u16::from_be_bytes([h[2], h[3]]) as usize;
                    let mut msg = h.to_vec();
                    msg.resize(20 + len, 0);
                    if c.read_exact(&mut msg[20..]).is_err() {
                        continue;
                    }
                    if let Some(a) = answer(&msg, from) {
                        let _ = c.write_all(&a);
                    }
                }
            }));
        }
        Server {
            addr,
            stop,
            threads,
        }
    }
}

#[test]
fn icmp_port_unreachable_ends_the_wait_at_once() {
    let closed = closed_udp("127.0.0.1").to_string();
    for cmd in [
        vec!["stun", closed.as_str(), "--json"],
        vec!["netcheck", closed.as_str(), "--json", "--no-tcp"],
        vec!["turn", closed.as_str(), "-u", "u", "-p", "p", "--json"],
    ] {
        let t = Instant::now();
        let out = natkit(&cmd);
        let took = t.elapsed();
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        // Well within the 5 s default: the kernel said so at once.
        assert!(took < Duration::from_secs(2), "{cmd:?} took {took:?}");
        let v = json(&out);
        assert_eq!(v["ok"], false, "{cmd:?}");
        assert_eq!(v["error"]["kind"], "unreachable", "{cmd:?}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("ICMP port unreachable"), "{cmd:?}: {msg}");
        assert!(stderr(&out).contains("error: "), "{cmd:?}");
    }
}

#[test]
fn a_silent_server_shows_progress_and_stops_at_the_timeout() {
    let s = Server::start("127.0.0.1", false, false);
    let server = s.addr.to_string();
    let t = Instant::now();
    let out = natkit(&["stun", &server, "--timeout", "1.5s"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let e = stderr(&out);
    assert!(
        e.contains(&format!("... waiting for {server}: 1.0 s of 1.5 s")),
        "{e}"
    );
    assert!(
        e.contains(&format!("error: no answer from {server}")),
        "{e}"
    );
    // The duration spelling is the same everywhere; nonsense is refused.
    let out = natkit(&["stun", &server, "--timeout", "5 parsecs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid duration"),
        "{}",
        stderr(&out)
    );
    // The default overall timeout is 5 s, in the help.
    let out = natkit(&["netcheck", "--help"]);
    assert!(stdout(&out).contains("[default: 5s]"), "{}", stdout(&out));
}

#[test]
fn no_argument_uses_the_default_list_which_tests_override() {
    let a = Server::start("127.0.0.1", true, false);
    let b = Server::start("127.0.0.1", true, false);
    let mut c = natkit_cmd(&["stun", "--json", "-4"]);
    c.env("NATKIT_STUN_SERVERS", format!("{}, {}", a.addr, b.addr));
    let out = run(c);
    assert!(out.status.success());
    let v = json(&out);
    let servers: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, [a.addr.to_string(), b.addr.to_string()]);
    let mut c = natkit_cmd(&["netcheck", "--json", "-4", "--no-tcp"]);
    c.env("NATKIT_STUN_SERVERS", a.addr.to_string());
    let out = run(c);
    assert!(out.status.success());
    assert_eq!(
        json(&out)["servers_given"][0]["address"],
        a.addr.to_string()
    );
    // The documented defaults are in the docs (asserted without sending).
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CLI.md"))
        .expect("docs/CLI.md");
    for d in [
        "stun.stunprotocol.org:3478",
        "stun.cloudflare.com:3478",
        "stun.l.google.com:19302",
    ] {
        assert!(docs.contains(d), "docs/CLI.md lacks {d}");
    }
}

#[test]
fn ipv4_and_ipv6_in_one_run_each_with_its_result() {
    let v4 = Server::start("127.0.0.1", true, false);
    let v6 = Server::start("::1", true, false);
    let (a, b) = (v4.addr.to_string(), v6.addr.to_string());
    let out = natkit(&["stun", &a, &b, "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    let fams: Vec<(&str, &str)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["family"].as_str().unwrap(), r["mapped"].as_str().unwrap()))
        .collect();
    assert_eq!(fams.len(), 2, "{v}");
    assert_eq!(fams[0].0, "IPv4");
    assert!(fams[0].1.starts_with("127.0.0.1:"));
    assert_eq!(fams[1].0, "IPv6");
    assert!(fams[1].1.starts_with("[::1]:"));

    let out = natkit(&["netcheck", &a, &b, "--json", "--no-tcp", "--no-hairpin"]);
    assert!(out.status.success());
    let v = json(&out);
    let f = v["families"].as_array().unwrap();
    assert_eq!(f.len(), 2);
    assert_eq!(f[0]["family"], "IPv4");
    assert_eq!(f[1]["family"], "IPv6");
    assert_eq!(f[1]["mapping"]["behavior"], "no_nat");
    assert_eq!(f[1]["udp"], "works");
    assert!(!stderr(&out).contains("has no"), "{}", stderr(&out));
    // Text: one block per family.
    let out = natkit(&["netcheck", &a, &b, "--no-tcp", "--no-hairpin"]);
    let t = stdout(&out);
    assert!(t.contains("NAT behavior discovery (RFC 5780), IPv4"), "{t}");
    assert!(t.contains("NAT behavior discovery (RFC 5780), IPv6"), "{t}");
}

#[test]
fn udp_blocked_but_tcp_works_is_a_verdict_not_an_error() {
    let s = Server::start("127.0.0.1", false, true);
    let server = s.addr.to_string();
    let out = natkit(&["netcheck", &server, "--json", "--timeout", "1s"]);
    assert!(
        out.status.success(),
        "UDP blocked with TCP working is an answer"
    );
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["udp"], "blocked");
    assert_eq!(v["tcp"]["works"], true);
    assert!(v["tcp"]["mapped"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let c = v["connectivity"].as_str().unwrap();
    assert!(
        c.starts_with("UDP: blocked, TCP: works: no direct connection"),
        "{c}"
    );
    assert!(c.contains("TURN relay over TCP or TLS"), "{c}");
    let out = natkit(&["netcheck", &server, "--timeout", "1s"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("UDP: blocked, TCP: works"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn json_failure_documents_carry_an_error_kind() {
    // A usage error, asked for JSON.
    let out = natkit(&["stun", "--timeout", "soon", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["error"]["kind"].clone()),
        (false.into(), "usage".into())
    );
    // creds with an empty secret file.
    let dir = std::env::temp_dir().join(format!("natkit-diag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = natkit(&["creds", "--secret-file", empty.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("first line is empty"));
    // A name that does not parse: stun's own document.
    let out = natkit(&["stun", "a b", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "dns");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_closed_stdout_is_no_panic_for_any_command() {
    let s = Server::start("127.0.0.1", true, false);
    let server = s.addr.to_string();
    for cmd in [
        vec!["stun", server.as_str(), "--json"],
        vec!["stun", server.as_str()],
        vec![
            "netcheck",
            server.as_str(),
            "--json",
            "--no-tcp",
            "--no-hairpin",
        ],
        vec!["netcheck", server.as_str(), "--no-tcp", "--no-hairpin"],
        vec!["creds", "--secret", "s", "--json"],
        vec!["creds", "--secret", "s"],
        vec!["--help"],
        vec!["stun", "--help"],
    ] {
        let mut c = natkit_cmd(&cmd);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        // Close the read end before natkit writes: `natkit ... | true`.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{cmd:?}: {e}");
        assert!(!e.contains("panicked"), "{cmd:?}: {e}");
        assert_eq!(out.status.code(), Some(0), "{cmd:?}: {e}");
    }
    // Both ends closed (`natkit ... 2>&1 | true`): warnings and errors go
    // to stderr, which is gone too.
    let closed = closed_udp("127.0.0.1").to_string();
    for cmd in [
        vec!["stun", closed.as_str()],
        vec!["netcheck", closed.as_str(), "--no-tcp"],
    ] {
        let mut c = natkit_cmd(&cmd);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        drop(child.stderr.take());
        // The run failed (nothing listens there): it still says so in
        // its exit status, the only channel left.
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{cmd:?}");
    }
    // The peer-to-peer commands print their description first (loopback
    // host candidates only: no STUN, no gateway asked).
    for cmd in ["listen", "connect"] {
        let mut c = natkit_cmd(&[cmd, "--loopback", "--no-port-mapping", "--wait", "2s"]);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{cmd}: {e}");
        assert!(!e.contains("panicked"), "{cmd}: {e}");
    }
}

#[test]
fn secrets_come_from_the_environment_or_a_file() {
    let dir = std::env::temp_dir().join(format!("natkit-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("secret");
    std::fs::write(&f, "s3cret\n").unwrap();
    let password = |o: &Output| {
        let v = json(o);
        (
            v["username"].as_str().unwrap().to_string(),
            v["password"].as_str().unwrap().to_string(),
        )
    };
    let flag = natkit(&[
        "creds", "--secret", "s3cret", "--user", "a", "--ttl", "1d", "--json",
    ]);
    let file = natkit(&[
        "creds",
        "--secret-file",
        f.to_str().unwrap(),
        "--user",
        "a",
        "--ttl",
        "1d",
        "--json",
    ]);
    let mut c = natkit_cmd(&["creds", "--user", "a", "--ttl", "1d", "--json"]);
    c.env("NATKIT_TURN_SECRET", "s3cret");
    let env = run(c);
    for o in [&flag, &file, &env] {
        assert!(o.status.success());
    }
    // Same secret, same HMAC (the expiry may tick over a second apart).
    let (u1, p1) = password(&flag);
    for o in [&file, &env] {
        let (u, p) = password(o);
        if u == u1 {
            assert_eq!(p, p1);
        }
    }
    // Help names the variable, never its value.
    let mut c = natkit_cmd(&["turn", "--help"]);
    c.env("NATKIT_TURN_SECRET", "do-not-show");
    let h = stdout(&run(c));
    assert!(
        h.contains("NATKIT_TURN_SECRET") && h.contains("--secret-file"),
        "{h}"
    );
    assert!(!h.contains("do-not-show"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_has_examples_everywhere_and_subcommands_take_v() {
    let top = stdout(&natkit(&["--help"]));
    for job in [
        "netcheck", "stun", "turn", "bench", "creds", "listen", "connect", "send", "receive",
    ] {
        assert!(top.contains(job), "top-level help lacks {job}");
    }
    for cmd in [
        "stun", "netcheck", "turn", "creds", "listen", "connect", "send", "receive", "bench",
    ] {
        let h = stdout(&natkit(&[cmd, "--help"]));
        assert!(h.contains("Examples:"), "{cmd} --help has no examples");
        let v = natkit(&[cmd, "-V"]);
        assert!(v.status.success(), "{cmd} -V");
        assert!(stdout(&v).contains(env!("CARGO_PKG_VERSION")), "{cmd} -V");
    }
    for sub in ["stun", "turn", "flood"] {
        let h = stdout(&natkit(&["bench", sub, "--help"]));
        assert!(h.contains("--json"), "bench {sub}");
        assert!(
            h.contains("Examples:"),
            "bench {sub} --help has no examples"
        );
    }
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    // An invalid RUST_LOG makes the CLI log a warning through tracing.
    let mut c = natkit_cmd(&["creds", "--secret", "s"]);
    c.env("RUST_LOG", "natkit=[");
    let out = run(c);
    let e = stderr(&out);
    assert!(e.contains("RUST_LOG"), "{e}");
    assert!(!e.contains('\u{1b}'), "colour codes in {e:?}");
}

#[test]
fn every_repeats_and_says_what_changed() {
    let s = Server::start("127.0.0.1", true, false);
    let server = s.addr.to_string();
    let base = [
        "netcheck",
        server.as_str(),
        "--no-tcp",
        "--no-hairpin",
        "--every",
        "200ms",
    ];
    let mut args = base.to_vec();
    args.extend(["--count", "2"]);
    let out = natkit(&args);
    assert!(out.status.success());
    let t = stdout(&out);
    assert!(t.contains("== run 1 (every 200.0 ms) =="), "{t}");
    assert!(
        t.contains("== run 2 (every 200.0 ms) ==\nno change since the last run"),
        "{t}"
    );
    args.push("--json");
    let out = natkit(&args);
    assert!(out.status.success());
    let docs: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(
        (docs[0]["round"].clone(), docs[1]["round"].clone()),
        (1.into(), 2.into())
    );
    assert!(docs[0].get("changes").is_none());
    assert_eq!(docs[1]["changes"], serde_json::json!([]));
    // --count needs --every.
    let out = natkit(&["netcheck", &server, "--count", "2"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn compare_predicts_a_connection_from_two_reports() {
    let s = Server::start("127.0.0.1", true, false);
    let dir = std::env::temp_dir().join(format!("natkit-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A real report from here (no NAT on loopback, filtering unknown: a
    // plain server) ...
    let addr = s.addr.to_string();
    let out = natkit(&["netcheck", &addr, "--json", "--no-tcp", "--no-hairpin"]);
    assert!(out.status.success());
    let here = dir.join("here.json");
    std::fs::write(&here, &out.stdout).unwrap();
    // ... and two written by hand, as natkit writes them.
    let report = |mapping: &str, filtering: &str, extra: Value| {
        let mut v = serde_json::json!({
            "ok": true, "error": null, "family": "IPv4", "udp": "works",
            "mapped": "203.0.113.1:40000",
            "mapping": {"behavior": mapping}, "filtering": {"behavior": filtering},
            "relays": [], "families": []
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let sym = dir.join("sym.json");
    let pr = dir.join("pr.json");
    let ub = dir.join("ub.json");
    let apd = "address_and_port_dependent";
    std::fs::write(&sym, report(apd, apd, serde_json::json!({})).to_string()).unwrap();
    std::fs::write(
        &pr,
        report("endpoint_independent", apd, serde_json::json!({})).to_string(),
    )
    .unwrap();
    std::fs::write(
        &ub,
        report(
            "unknown",
            "unknown",
            serde_json::json!({"udp": "blocked", "tcp": {"works": true}}),
        )
        .to_string(),
    )
    .unwrap();
    let cmp = |a: &std::path::Path, b: &std::path::Path| {
        let out = natkit(&[
            "netcheck",
            "--compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success());
        let v = json(&out);
        (
            v["outcome"].as_str().unwrap().to_string(),
            v["method"].as_str().unwrap().to_string(),
            v,
        )
    };
    assert_eq!(cmp(&pr, &pr).0, "direct");
    assert_eq!(cmp(&pr, &pr).1, "hole_punching");
    let (o, m, v) = cmp(&pr, &sym);
    assert_eq!((o.as_str(), m.as_str()), ("relay", "turn_udp"));
    assert!(v["why"].as_str().unwrap().contains("dropped"), "{v}");
    assert_eq!(cmp(&ub, &pr).1, "turn_tcp");
    // The real report: no NAT here; its filtering is unknown (a plain
    // server), so against a symmetric NAT the answer is hedged or direct,
    // never a crash; the text names both files.
    let out = natkit(&[
        "netcheck",
        "--compare",
        here.to_str().unwrap(),
        sym.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("prediction"), "{}", stdout(&out));
    // Not a report: a clear error, and JSON with a kind.
    let out = natkit(&[
        "netcheck",
        "--compare",
        here.to_str().unwrap(),
        "/nonexistent.json",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["ok"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lifetime_on_loopback_is_bounded_and_outlives_the_test() {
    let s = Server::start("127.0.0.1", true, false);
    let server = s.addr.to_string();
    let t = Instant::now();
    let out = natkit(&["netcheck", &server, "--lifetime", "1s", "--json"]);
    assert!(out.status.success());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let v = json(&out);
    // No NAT on loopback: the mapping outlives the longest test.
    assert_eq!(v["alive_after_ms"], 1000.0);
    assert!(v["expired_after_ms"].is_null());
    assert_eq!(v["tests"].as_array().unwrap().len(), 1);
}

#[test]
fn relays_round_trips_with_turn() {
    let bin = natkit_testkit::bins::natkit_turn_next_to(env!("CARGO_BIN_EXE_natkit"));
    let log = std::env::temp_dir().join(format!("natkit-turn-log-{}", std::process::id()));
    let relay = natkit_testkit::relay::TurnRelay::builder(bin)
        .user("u", "p")
        .allow_loopback_peers()
        .stderr(std::fs::File::create(&log).unwrap())
        .start();
    let s = Server::start("127.0.0.1", true, false);
    let uri = format!("turn:{}", relay.addr);
    let mut c = natkit_cmd(&[
        "netcheck",
        &s.addr.to_string(),
        "--no-tcp",
        "--no-hairpin",
        "--turn",
        &uri,
        "--turn-user",
        "u",
        "--json",
    ]);
    c.env("NATKIT_TURN_PASSWORD", "p");
    let out = run(c);
    assert!(out.status.success());
    let v = json(&out);
    let r = &v["relays"][0];
    assert_eq!(r["ok"], true, "{v}");
    assert_eq!(r["received"], 3);
    assert!(r["rtt_avg_ms"].as_f64().unwrap() > 0.0);
    let out = natkit(&[
        "netcheck",
        &s.addr.to_string(),
        "--no-tcp",
        "--turn",
        &uri,
        "--turn-user",
        "u",
        "--turn-password",
        "p",
    ]);
    assert!(
        stdout(&out).contains("Relays (TURN round trips)"),
        "{}",
        stdout(&out)
    );
    // The server's own log, written to a file: no colour codes.
    drop(relay);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty(), "natkit-turn logged nothing");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the server log: {text:?}"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_silent_tcp_port_does_not_hold_a_run_whose_udp_works() {
    let s = Server::start("127.0.0.1", true, false);
    // Listens (the kernel completes the handshake) but never answers.
    let _silent = TcpListener::bind(s.addr).unwrap();
    let t = Instant::now();
    let out = natkit(&["netcheck", &s.addr.to_string(), "--json", "--no-hairpin"]);
    let took = t.elapsed();
    assert!(out.status.success());
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} (timeout 5s)"
    );
    let v = json(&out);
    assert_eq!(v["udp"], "works");
    assert_eq!(v["tcp"]["works"], false);
    let e = v["tcp"]["error"].as_str().unwrap();
    assert!(
        e.contains("no answer within 1.0 s after the UDP tests"),
        "{e}"
    );
}

/// natkit-stun on loopback with STUN over TLS (a self-signed CA for
/// 127.0.0.1), killed on drop.
struct TlsStun {
    child: std::process::Child,
    udp: SocketAddr,
    tls: SocketAddr,
    ca: std::path::PathBuf,
    _dir: natkit_testkit::tempdir::TempDir,
}

impl Drop for TlsStun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_stun() -> TlsStun {
    use natkit_testkit::{bins::WorkspaceBin, free_port, ready, tempdir::TempDir, tls};
    let dir = TempDir::new("natkit-stuns");
    let (ca, key) = tls::self_signed_ca(dir.path(), "stun");
    let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let bin = WorkspaceBin::new("natkit-stun", "natkit-stun")
        .next_to(env!("CARGO_BIN_EXE_natkit"))
        .path();
    let mut child = Command::new(bin)
        .args([
            "--listen",
            &udp.to_string(),
            "--tls-listen",
            &tls_addr.to_string(),
        ])
        .arg("--cert")
        .arg(&ca)
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start natkit-stun");
    ready::wait_binding(&mut child, "natkit-stun", udp, Duration::from_secs(30));
    ready::wait_tcp(tls_addr, "natkit-stun TLS", Duration::from_secs(30));
    TlsStun {
        child,
        udp,
        tls: tls_addr,
        ca,
        _dir: dir,
    }
}

#[test]
fn stuns_servers_get_a_tls_check() {
    let s = tls_stun();
    let tls = format!("stuns:{}", s.tls);
    let udp = s.udp.to_string();
    let ca = s.ca.to_str().unwrap();
    let out = natkit(&[
        "netcheck",
        &udp,
        &tls,
        "--ca",
        ca,
        "-4",
        "--json",
        "--no-hairpin",
    ]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["tls"]["works"], true, "{v}");
    assert_eq!(v["tls"]["server"], s.tls.to_string());
    assert!(v["tls"]["mapped"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let c = v["connectivity"].as_str().unwrap();
    assert!(c.starts_with("UDP: works, TCP: works, TLS: works"), "{c}");
    // Without the CA the certificate is refused, and said so.
    let out = natkit(&["netcheck", &udp, &tls, "-4", "--json", "--no-hairpin"]);
    let v = json(&out);
    assert_eq!(v["tls"]["works"], false);
    let e = v["tls"]["error"].as_str().unwrap();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // --insecure: works without the CA, and says what it gives up.
    let out = natkit(&[
        "netcheck",
        &udp,
        &tls,
        "--insecure",
        "-4",
        "--json",
        "--no-hairpin",
    ]);
    assert_eq!(json(&out)["tls"]["works"], true);
    assert!(
        stderr(&out).contains("warning: --insecure"),
        "{}",
        stderr(&out)
    );
    // Text: a TLS line.
    let out = natkit(&["netcheck", &udp, &tls, "--ca", ca, "-4", "--no-hairpin"]);
    assert!(
        stdout(&out).contains("  TLS               works: "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn turn_shows_progress_and_keeps_to_the_timeout() {
    let s = Server::start("127.0.0.1", false, false);
    let server = s.addr.to_string();
    let t = Instant::now();
    let out = natkit(&[
        "turn",
        &server,
        "-u",
        "u",
        "-p",
        "p",
        "--timeout",
        "2s",
        "--json",
    ]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let e = stderr(&out);
    assert!(
        e.contains(&format!("... waiting for {server}: 1.0 s")),
        "{e}"
    );
    assert_eq!(json(&out)["error"]["kind"], "timeout");
}

/// `netcheck --turn` names its own flags when the credentials are wrong
/// (it used to fail each relay with `natkit turn`'s "--password needs
/// --user"), before any packet leaves.
#[test]
fn netcheck_turn_credentials_are_checked_in_its_own_flag_names() {
    let out = natkit(&[
        "netcheck",
        "127.0.0.1:9",
        "--turn",
        "turn:127.0.0.1:9",
        "--turn-password",
        "pw",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--turn-password needs --turn-user"), "{msg}");
}
