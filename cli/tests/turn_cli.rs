//! `natkit turn` and `natkit creds` through the binary, against coturn's
//! `turnserver` (Debian package `coturn`) started by each test on loopback,
//! and against small fake servers for what coturn cannot be made to do
//! (a stale-nonce loop). Every server is killed by PID when its handle
//! drops; every wait is bounded.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use natkit_proto::raw::{self, attr, Class};
use natkit_proto::writer::Writer;
use natkit_testkit::{bins, free_port, ports, ready, tls};
use serde_json::Value;

/// A range of relay ports unlikely to be used by a parallel test.
fn relay_range() -> (u16, u16) {
    ports::random_block(20_000, 2_000, 20)
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "natkit-turn-cli-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A relay server process, killed by PID on drop.
struct Server {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    relay: (u16, u16),
    dir: PathBuf,
    name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Leave the server's log for the failing test's reader.
            eprintln!("{} log in {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Server {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// coturn with the options every test needs plus `extra`.
    fn coturn(extra: &[&str]) -> Server {
        Self::coturn_with(extra, None)
    }

    /// coturn, with a TLS port serving `tls` (certificate, key) if given.
    fn coturn_with(extra: &[&str], tls: Option<(&Path, &Path)>) -> Server {
        let dir = scratch_dir("coturn");
        let port = free_port();
        let relay = relay_range();
        let pid = dir.join("turn.pid");
        let log = dir.join("turn.log");
        let mut args: Vec<String> = [
            "-n",
            &format!("--pidfile={}", pid.display()),
            "--log-file",
            &log.display().to_string(),
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &relay.0.to_string(),
            "--max-port",
            &relay.1.to_string(),
            "--realm",
            "natkit",
            "--no-cli",
            "--no-dtls",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut tls_port = None;
        match tls {
            Some((cert, key)) => {
                let p = free_port();
                tls_port = Some(p);
                args.extend([
                    "--tls-listening-port".to_string(),
                    p.to_string(),
                    "--cert".into(),
                    cert.display().to_string(),
                    "--pkey".into(),
                    key.display().to_string(),
                ]);
            }
            None => args.push("--no-tls".into()),
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("turnserver")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (Debian package coturn)");
        let mut s = Server {
            child,
            port,
            tls_port,
            relay,
            dir,
            name: "coturn",
        };
        s.wait_ready();
        s
    }

    /// natkit-turn (built by `cargo test` at the workspace root next to
    /// `natkit`; `NATKIT_TURN_BIN` overrides) on loopback, with `extra`.
    fn natkit_turn(extra: &[&str], tls: Option<(&Path, &Path)>) -> Server {
        let bin = bins::natkit_turn_next_to(env!("CARGO_BIN_EXE_natkit"));
        let dir = scratch_dir("natkit-turn");
        let port = free_port();
        let relay = relay_range();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--relay-ip".into(),
            "127.0.0.1".into(),
            "--min-port".into(),
            relay.0.to_string(),
            "--max-port".into(),
            relay.1.to_string(),
            "--user".into(),
            "u:p".into(),
        ];
        let mut tls_port = None;
        if let Some((cert, key)) = tls {
            let p = free_port();
            tls_port = Some(p);
            args.extend([
                "--tls-listen".to_string(),
                format!("127.0.0.1:{p}"),
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::File::create(dir.join("natkit-turn.log")).unwrap();
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut s = Server {
            child,
            port,
            tls_port,
            relay,
            dir,
            name: "natkit-turn",
        };
        s.wait_ready();
        s
    }

    /// Wait until the server answers a STUN Binding request on its UDP port
    /// (and accepts TCP on its TLS port, if any).
    fn wait_ready(&mut self) {
        // coturn usually answers at once, but was seen taking 10 s to start
        // its relay threads on a loaded 2-core machine.
        let limit = Duration::from_secs(30);
        let t0 = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        ready::wait_binding(&mut self.child, self.name, addr, limit);
        if let Some(p) = self.tls_port {
            let tls = SocketAddr::from(([127, 0, 0, 1], p));
            ready::wait_tcp(tls, "the TLS port", limit.saturating_sub(t0.elapsed()));
        }
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
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn addr(v: &Value) -> SocketAddr {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a string"))
        .parse()
        .expect("socket address")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The checks every successful own-allocation round trip must pass.
fn check_round_trip(v: &Value, server: &Server, transport: &str, count: u64) {
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["transport"], transport);
    assert_eq!(addr(&v["server"]), server.addr().parse().unwrap());
    let allocs = v["allocations"].as_array().unwrap();
    assert_eq!(allocs.len(), 2, "{v:#}");
    let mut relayed = Vec::new();
    for a in allocs {
        let r = addr(&a["relayed"][0]);
        assert_eq!(r.ip().to_string(), "127.0.0.1");
        assert!(
            (server.relay.0..=server.relay.1).contains(&r.port()),
            "relayed port {} outside {:?}",
            r.port(),
            server.relay
        );
        // No NAT on loopback: the server sees our own address.
        assert_eq!(addr(&a["mapped"]), addr(&a["local"]));
        assert_eq!(a["realm"], "natkit");
        assert!(a["lifetime_s"].as_u64().unwrap() > 0);
        assert!(a["allocate_ms"].as_f64().unwrap() > 0.0);
        relayed.push(r);
    }
    assert_ne!(relayed[0], relayed[1]);
    assert_eq!(v["peer"]["kind"], "own_allocation");
    assert_eq!(addr(&v["peer"]["address"]), relayed[1]);
    let ch = v["channel"].as_u64().unwrap();
    assert!((0x4000..=0x4FFF).contains(&ch), "channel {ch:#x}");
    let rt = &v["round_trip"];
    assert_eq!(rt["sent"], count);
    assert_eq!(rt["received"], count, "{rt:#}");
    assert_eq!(rt["lost"], 0);
    assert_eq!(rt["b_received"], count);
    let (min, avg, max) = (
        rt["min_ms"].as_f64().unwrap(),
        rt["avg_ms"].as_f64().unwrap(),
        rt["max_ms"].as_f64().unwrap(),
    );
    assert!(
        0.0 < min && min <= avg && avg <= max && max < 2000.0,
        "{rt:#}"
    );
    // A has a channel to B, B only a permission for A (see turn.rs).
    assert_eq!(rt["a_to_b"], "Data indication");
    assert_eq!(rt["b_to_a"], "ChannelData");
    assert_eq!(v["closed"], true);
    let steps: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for want in [
        "resolve",
        "allocate A",
        "allocate B",
        "permission",
        "channel",
        "round trip",
        "close",
    ] {
        assert!(steps.contains(&want), "no step {want:?} in {steps:?}");
    }
    let connects = steps.iter().filter(|s| **s == "connect").count();
    assert_eq!(
        connects,
        if transport == "udp" { 0 } else { 2 },
        "{steps:?}"
    );
}

#[test]
fn coturn_udp_round_trip() {
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech", "--allow-loopback-peers"]);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--json",
        "--count",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0));
    check_round_trip(&json(&out), &s, "udp", 3);
    // The text form names every step, one per line, in order.
    let out = natkit(&["turn", &s.addr(), "--user", "u", "--password", "p"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let firsts: Vec<&str> = text
        .lines()
        .map(|l| l.split("  ").next().unwrap().trim())
        .collect();
    assert_eq!(
        firsts,
        [
            "resolve",
            "allocate A",
            "allocate B",
            "permission",
            "channel",
            "round trip",
            "close"
        ],
        "{text}"
    );
    assert!(text.contains("5/5 echoed"), "{text}");
    assert!(text.contains("auth MD5 (MESSAGE-INTEGRITY)"), "{text}");
}

#[test]
fn coturn_tcp_round_trip() {
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech", "--allow-loopback-peers"]);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tcp",
        "--json",
        "--count",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    check_round_trip(&v, &s, "tcp", 4);
    // Over TCP the mapped address is the connection's own.
    for a in v["allocations"].as_array().unwrap() {
        assert_eq!(addr(&a["mapped"]), addr(&a["local"]));
    }

    // TLS to a port without TLS (--no-tls): a handshake failure, not a hang.
    let t = Instant::now();
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tls",
        "--insecure",
        "--json",
        // The handshake waits as long as a request may (here 1 s): coturn
        // sometimes resets the connection, sometimes stays silent.
        "--rto",
        "10ms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "tls");
    assert!(
        stderr(&out).contains(&format!("TLS handshake with {} failed", s.addr())),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A self-signed certificate for 127.0.0.1 made the way `openssl req
/// -x509` makes one (marked as a CA), in `dir`.
#[test]
fn coturn_tls_with_ca_file_and_handshake_failures() {
    let dir = scratch_dir("tls");
    let (cert, key) = tls::self_signed_ca(&dir, "server");
    let (other, _) = tls::self_signed_ca(&dir, "other");
    let s = Server::coturn_with(
        &["--user", "u:p", "--lt-cred-mech", "--allow-loopback-peers"],
        Some((&cert, &key)),
    );
    let target = format!("127.0.0.1:{}", s.tls_port.unwrap());
    let ca = cert.display().to_string();
    let out = natkit(&[
        "turn",
        &target,
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tls",
        "--ca",
        &ca,
        "--json",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["transport"], "tls");
    assert!(
        v["tls"]["version"].as_str().unwrap().starts_with("TLSv1_"),
        "{v:#}"
    );
    assert_eq!(v["round_trip"]["received"], 2);
    assert_eq!(v["closed"], true);

    // Another certificate in --ca: the server is not trusted.
    let wrong = other.display().to_string();
    let out = natkit(&[
        "turn",
        &target,
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tls",
        "--ca",
        &wrong,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "tls", "{v:#}");
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "error: TLS handshake with {target} failed: invalid peer certificate"
        )),
        "{e}"
    );
    assert!(e.contains("--ca FILE"), "{e}");

    // --insecure connects anyway, and says so.
    let out = natkit(&[
        "turn",
        &target,
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tls",
        "--insecure",
        "--count",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: --insecure"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_password_is_a_credentials_error() {
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech", "--allow-loopback-peers"]);
    let out = natkit(&["turn", &s.addr(), "-u", "u", "-p", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("error: the server refused the credentials for user u (401)"),
        "{e}"
    );
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "nope",
        "--transport",
        "tcp",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["kind"], "wrong_credentials");
    assert_eq!(v["allocations"].as_array().unwrap().len(), 0);
}

#[test]
fn unreachable_server_fails_at_once() {
    let port = free_port();
    let server = format!("127.0.0.1:{port}");
    let t = Instant::now();
    let out = natkit(&["turn", &server, "-u", "u", "-p", "p", "--rto", "10ms"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1));
    // ICMP port unreachable on loopback: the answer is at once, not after
    // the retransmissions.
    let e = stderr(&out);
    assert!(
        e.contains(&format!("error: {server} is unreachable (allocation A)")),
        "{e}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // Over TCP nothing listening is a refused connection.
    let out = natkit(&[
        "turn",
        &server,
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tcp",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "connect");
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
}

/// The lookup runs in a network namespace of its own with only loopback
/// (`unshare --net`, root), so the query cannot leave the machine: the
/// system resolver is not on loopback here, and tests send nothing off it.
#[test]
fn dns_failure_is_reported_as_such() {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_natkit"))
        .args([
            "turn",
            "no-such-host.invalid",
            "-u",
            "u",
            "-p",
            "p",
            "--json",
        ])
        .env("RUST_LOG", "off")
        .output()
        .expect("unshare (util-linux) runs the lookup without a network; needs root");
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "dns", "{v:#}");
    assert!(
        stderr(&out).contains("error: cannot resolve no-such-host.invalid"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn quota_and_denied_peer_on_coturn() {
    // One allocation per user: the second (B) gets 486.
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech", "--user-quota", "1"]);
    let out = natkit(&["turn", &s.addr(), "-u", "u", "-p", "p", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "quota", "{v:#}");
    let e = stderr(&out);
    assert!(
        e.contains("allocation quota reached for user u (486"),
        "{e}"
    );
    assert!(e.contains("--peer"), "{e}");
    // Without --allow-loopback-peers coturn refuses loopback peers. (A
    // fresh server: coturn frees the quota of a deleted allocation late.)
    drop(s);
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech"]);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--peer",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "error: the server refuses to relay to 127.0.0.1:9 (403 Forbidden): it is on its deny list"
        ),
        "{}",
        stderr(&out)
    );
}

/// A UDP echo service on loopback, stopped on drop.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn given_peer_echoes_through_coturn() {
    let s = Server::coturn(&["--user", "u:p", "--lt-cred-mech", "--allow-loopback-peers"]);
    let echo = Echo::start();
    let peer = echo.addr.to_string();
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--peer",
        &peer,
        "--count",
        "3",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["allocations"].as_array().unwrap().len(), 1);
    assert_eq!(v["peer"]["kind"], "given");
    assert_eq!(addr(&v["peer"]["address"]), echo.addr);
    assert_eq!(v["round_trip"]["received"], 3);
    assert_eq!(v["round_trip"]["b_to_a"], "ChannelData");
    assert_eq!(v["round_trip"]["b_received"], Value::Null);

    // A peer that does not echo: a clear error once every wait has run out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--peer",
        &peer,
        "--count",
        "2",
        "--data-timeout",
        "200ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "no_echo", "{v:#}");
    assert_eq!(v["round_trip"]["lost"], 2);
    // The datagrams did reach the peer through the relay.
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = silent.recv_from(&mut buf).expect("relayed datagram");
    assert_eq!(n, 100);
    assert_eq!(from, addr(&v["allocations"][0]["relayed"][0]));
}

#[test]
fn rest_secret_credentials_against_coturn() {
    let s = Server::coturn(&[
        "--use-auth-secret",
        "--static-auth-secret",
        "north-wind",
        "--allow-loopback-peers",
    ]);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "--secret",
        "north-wind",
        "--user",
        "alice",
        "--json",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    check_round_trip(&v, &s, "udp", 2);
    assert_eq!(v["credentials"], "rest");
    let user = v["username"].as_str().unwrap();
    let (exp, name) = user.split_once(':').unwrap();
    assert_eq!(name, "alice");
    let exp: u64 = exp.parse().unwrap();
    let now = unix_now();
    assert!((now + 3500..=now + 3700).contains(&exp), "{exp} vs {now}");

    let out = natkit(&[
        "turn",
        &s.addr(),
        "--secret",
        "south-wind",
        "--user",
        "alice",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refused the credentials for user"),
        "{}",
        stderr(&out)
    );
}

/// `natkit creds` output checked with an independent HMAC, then used as
/// plain credentials against coturn in REST mode.
#[test]
fn creds_verify_and_work_against_coturn() {
    let secret = "s3cret-for-creds";
    let out = natkit(&[
        "creds",
        "--secret",
        secret,
        "--user",
        "bob",
        "--ttl",
        "90m",
        "--url",
        "turn:127.0.0.1:3478",
        "--url",
        "turn:127.0.0.1:3478?transport=tcp",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    let username = v["username"].as_str().unwrap().to_string();
    let password = v["password"].as_str().unwrap().to_string();
    let (exp, user) = username.split_once(':').unwrap();
    assert_eq!(user, "bob");
    let exp: u64 = exp.parse().unwrap();
    let now = unix_now();
    assert!((now + 5390..=now + 5410).contains(&exp), "{exp} vs {now}");
    assert_eq!(v["expires_at"], exp);
    assert_eq!(v["ttl_s"], 5400);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(password, want);
    assert_eq!(
        v["ice_server"],
        serde_json::json!({
            "urls": ["turn:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=tcp"],
            "username": username,
            "credential": password,
        })
    );
    assert!(v["expires"].as_str().unwrap().ends_with('Z'));

    // The text form says the same.
    let out = natkit(&["creds", "--secret", secret, "--user", "bob", "--ttl", "1h"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let line = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .trim()
            .to_string()
    };
    let ice: Value = serde_json::from_str(&line("ice server")).unwrap();
    assert_eq!(ice["username"].as_str().unwrap(), line("username"));
    assert_eq!(ice["credential"].as_str().unwrap(), line("password"));

    // The minted credentials open an allocation on coturn's REST mode.
    let s = Server::coturn(&[
        "--use-auth-secret",
        "--static-auth-secret",
        secret,
        "--allow-loopback-peers",
    ]);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        &username,
        "-p",
        &password,
        "--json",
        "--count",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["credentials"], "static");
    // A password for another user name does not.
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        &format!("{exp}:eve"),
        "-p",
        &password,
    ]);
    assert_eq!(out.status.code(), Some(1));

    // Bad flags are refused before anything is printed.
    for bad in [["--ttl", "0"], ["--ttl", "1w"], ["--url", "http://x"]] {
        let mut a = vec!["creds", "--secret", secret];
        a.extend(bad);
        let out = natkit(&a);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty());
    }
}

/// A TURN server that asks for credentials and then answers every
/// authenticated request with 438 and yet another nonce.
struct StaleNonceServer {
    addr: SocketAddr,
    stale_sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaleNonceServer {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stale_sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stop2) = (stale_sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = &buf[..n];
                let Ok(h) = raw::parse_datagram(msg) else {
                    continue;
                };
                if h.class() != Class::Request {
                    continue;
                }
                let authenticated = raw::Attributes::new(msg, &h)
                    .flatten()
                    .any(|a| a.typ == attr::USERNAME);
                let (code, reason) = if authenticated {
                    (438, "Stale Nonce")
                } else {
                    (401, "Unauthorized")
                };
                let k = count.fetch_add(usize::from(authenticated), Ordering::SeqCst);
                let mut out = [0u8; 256];
                let mut w =
                    Writer::new(&mut out, h.method(), Class::Error, &h.transaction_id).unwrap();
                w.error_code(code, reason).unwrap();
                w.bytes(attr::REALM, b"fake").unwrap();
                w.bytes(attr::NONCE, format!("nonce-{k}").as_bytes())
                    .unwrap();
                let len = w.finish();
                let _ = sock.send_to(&out[..len], from);
            }
        });
        StaleNonceServer {
            addr,
            stale_sent,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StaleNonceServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn stale_nonce_loop_is_detected() {
    let s = StaleNonceServer::start();
    let server = s.addr.to_string();
    let out = natkit(&[
        "turn",
        &server,
        "-u",
        "u",
        "-p",
        "p",
        "--peer",
        "127.0.0.1:9",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "stale_nonce", "{v:#}");
    let e = stderr(&out);
    assert!(
        e.contains(&format!(
            "error: stale nonce loop: {server} answered 438 (Stale Nonce) 4 times in a row"
        )),
        "{e}"
    );
    // One allocation: 1 + 3 retries, each answered 438, then it stops.
    assert_eq!(s.stale_sent.load(Ordering::SeqCst), 4);
}

#[test]
fn usage_errors_exit_before_any_traffic() {
    let out = natkit(&["turn", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("credentials needed"),
        "{}",
        stderr(&out)
    );
    let out = natkit(&["turn", "127.0.0.1:9", "-u", "a", "-p", "b", "--secret", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not both"), "{}", stderr(&out));
    let mut child = Command::new(env!("CARGO_BIN_EXE_natkit"))
        .args(["turn", "--help"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut help = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut help)
        .unwrap();
    assert!(child.wait().unwrap().success());
    for flag in [
        "--transport",
        "--peer",
        "--secret",
        "--ca",
        "--insecure",
        "--json",
        "--rto",
        "--timeout",
        "--password-file",
        "--secret-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn natkit_turn_round_trips_over_udp_and_tcp() {
    let s = Server::natkit_turn(&["--allow-peer", "127.0.0.0/8"], None);
    for transport in ["udp", "tcp"] {
        let out = natkit(&[
            "turn",
            &s.addr(),
            "-u",
            "u",
            "-p",
            "p",
            "--transport",
            transport,
            "--json",
            "--count",
            "3",
        ]);
        assert_eq!(out.status.code(), Some(0), "{transport}");
        let v = json(&out);
        check_round_trip(&v, &s, transport, 3);
        // natkit-turn offers PASSWORD-ALGORITHMS: the client takes SHA-256
        // (RFC 8489 §9.2.4), unlike with coturn.
        for a in v["allocations"].as_array().unwrap() {
            assert_eq!(a["password_algorithm"], "SHA-256", "{v:#}");
            assert_eq!(a["integrity"], "MESSAGE-INTEGRITY-SHA256");
        }
    }
    let out = natkit(&["turn", &s.addr(), "-u", "u", "-p", "wrong", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["kind"], "wrong_credentials");
    assert!(
        stderr(&out).contains("the server refused the credentials for user u (401)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn natkit_turn_denies_loopback_peers_but_relays_between_its_allocations() {
    // No --allow-peer: 127.0.0.0/8 is on the default deny list.
    let s = Server::natkit_turn(&["--user-quota", "2"], None);
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--peer",
        "127.0.0.1:9",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "peer_denied", "{v:#}");
    assert!(
        stderr(&out).contains(
            "error: the server refuses to relay to 127.0.0.1:9 (403 Forbidden): it is on its deny list"
        ),
        "{}",
        stderr(&out)
    );
    // Relay to relay is always allowed, even on loopback (issue 7).
    let out = natkit(&[
        "turn",
        &s.addr(),
        "-u",
        "u",
        "-p",
        "p",
        "--json",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0));
    check_round_trip(&json(&out), &s, "udp", 2);
}

#[test]
fn natkit_turn_quota_and_tls() {
    let dir = scratch_dir("nt-tls");
    let (cert, key) = tls::self_signed_ca(&dir, "server");
    let s = Server::natkit_turn(
        &["--user-quota", "1", "--allow-peer", "127.0.0.0/8"],
        Some((&cert, &key)),
    );
    let out = natkit(&["turn", &s.addr(), "-u", "u", "-p", "p", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["error"]["kind"], "quota", "{v:#}");
    assert!(
        stderr(&out).contains("allocation quota reached for user u (486"),
        "{}",
        stderr(&out)
    );
    // One allocation is within the quota: relay to an echo peer over TLS.
    let echo = Echo::start();
    let target = format!("127.0.0.1:{}", s.tls_port.unwrap());
    let ca = cert.display().to_string();
    let peer = echo.addr.to_string();
    let out = natkit(&[
        "turn",
        &target,
        "-u",
        "u",
        "-p",
        "p",
        "--transport",
        "tls",
        "--ca",
        &ca,
        "--peer",
        &peer,
        "--count",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["round_trip"]["received"], 2);
    assert!(v["tls"]["version"].as_str().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
