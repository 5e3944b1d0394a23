//! Interop with a browser (issue 7, Interoperability): headless Chromium
//! relays an RTCDataChannel message between two RTCPeerConnections in one
//! page through natkit-turn, with `iceTransportPolicy: "relay"`: over UDP, and (issue 16)
//! over `turns:` on a TLS port 443 that natkit-turn shares with the web site serving the
//! page (the page's HTTPS requests are forwarded to the web backend).
//!
//! Chromium gathers no candidates when it sees only loopback interfaces, so
//! the test builds a network namespace of its own (`natkit-chr-<pid>-<n>`)
//! with lo and a veth pair whose one end carries 192.0.2.1/24 (RFC 5737
//! documentation range; there is no default route, nothing leaves the
//! namespace). natkit-turn, a tiny HTTP server (std `TcpListener`, bound
//! from a thread that entered the namespace with setns(2)) and Chromium all
//! live there. The page (tests/chromium/page.html) POSTs its result to
//! /result; the test waits for it with a bound and checks the message, the
//! selected candidate pair (relay on both ends, on natkit-turn's relay
//! ports) and natkit-turn's relayed-packet counters.
//!
//! Needs root, iproute2's `ip` and Chromium (Debian: `apt-get install -y
//! chromium`); without them the test fails and says what is missing.
//! Every process it starts is killed by process group, and the namespace is
//! deleted, on success and on panic (Drop guards); a namespace left by a
//! killed test run is removed by the next run (its PID is in the name).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use natkit_testkit::http::{self, metric};
use natkit_testkit::{ready, TempDir};

/// The page, compiled in so the test has no working-directory assumptions.
const PAGE: &str = include_str!("chromium/page.html");

const NS_PREFIX: &str = "natkit-chr-";
const TMP_PREFIX: &str = "natkit-turn-chromium-";
/// The namespace's only non-loopback address (RFC 5737 TEST-NET-1).
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Fixed ports: the namespace is private to this test, nothing else binds.
const TURN_PORT: u16 = 3478;
const METRICS_PORT: u16 = 9100;
const HTTP_PORT: u16 = 8080;
const MIN_RELAY_PORT: u16 = 49152;
const MAX_RELAY_PORT: u16 = 49199;
const USER: &str = "browser";
const PASS: &str = "relay-me";

/// Fewest datagrams natkit-turn must have relayed each way (see the test).
const MIN_RELAYED: f64 = 10.0;
/// How long the page gives itself before reporting a timeout.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the test waits for any report (page load, Chromium start-up
/// included): more than the page's own timeout so that one is what shows.
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one setup step (relay start-up, an HTTP exchange) may take.
const STEP: Duration = Duration::from_secs(10);

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

#[test]
fn chromium_relays_a_data_channel_message_through_natkit_turn() {
    relay_a_data_channel(&Route::Udp);
}

/// Issue 16: `turns:` on 443 shared with a web site. The page itself is loaded from
/// natkit-turn's TLS port (not TURN: forwarded to the test's HTTP server as the web
/// backend), and the data channel is relayed over TURN over TLS on that same port.
#[test]
fn chromium_relays_over_turns_on_a_port_shared_with_the_web_site() {
    relay_a_data_channel(&Route::SharedTls);
}

/// How the page reaches natkit-turn.
enum Route {
    /// The page over plain HTTP, TURN over UDP.
    Udp,
    /// The page over HTTPS and TURN over TLS, both on natkit-turn's TLS port 443.
    SharedTls,
}

/// natkit-turn's TLS port in [`Route::SharedTls`].
const TLS_PORT: u16 = 443;

fn relay_a_data_channel(route: &Route) {
    let started = Instant::now();
    preflight();
    let chromium = find_in_path("chromium").unwrap_or_else(|| {
        panic!(
            "Chromium is not installed: this test runs headless Chromium. \
             Install it with (as root): apt-get update && apt-get install -y chromium"
        )
    });

    // Guards are dropped in reverse order: Chromium first, the namespace last.
    let ns = Netns::create();
    // <TMP_PREFIX><pid>-<n>, which the stale-run sweep recognises.
    let tmp = TempDir::new(TMP_PREFIX.trim_end_matches('-'));
    let t_ns = started.elapsed();

    let turn_log = tmp.join("natkit-turn.log");
    let mut turn = Proc::spawn(
        "natkit-turn",
        ns.exec(env!("CARGO_BIN_EXE_natkit-turn"))
            .args(["--listen", &format!("{HOST}:{TURN_PORT}")])
            .args(["--relay-ip", &HOST.to_string()])
            .args(["--min-port", &MIN_RELAY_PORT.to_string()])
            .args(["--max-port", &MAX_RELAY_PORT.to_string()])
            .args(["--user", &format!("{USER}:{PASS}")])
            .args(["--realm", "natkit"])
            // No --allow-peer: 192.0.2.0/24 is on the default deny list, and
            // both peers are relayed addresses of this relay, which the
            // relay-to-relay rule (issue 7) must let through by itself.
            .args(["--metrics", &format!("{HOST}:{METRICS_PORT}")])
            .args(["--threads", "2"])
            .args(shared_tls_args(route, &tmp))
            .stderr(File::create(&turn_log).expect("create natkit-turn log")),
        &turn_log,
    );
    wait_relay_ready(&ns, &turn);
    // The metrics endpoint, read at the end.
    ns.enter(|| ready::wait_http_ok(SocketAddr::from((HOST, METRICS_PORT)), "/metrics", STEP));
    let t_relay = started.elapsed();

    let (results, server) = HttpServer::start(&ns);

    let token = format!("{:016x}", rand::random::<u64>());
    let (page, turn_url) = match route {
        Route::Udp => (
            format!("http://{HOST}:{HTTP_PORT}"),
            format!("turn:{HOST}:{TURN_PORT}?transport=udp"),
        ),
        Route::SharedTls => {
            ns.enter(|| ready::wait_tcp(SocketAddr::from((HOST, TLS_PORT)), "TLS port", STEP));
            (
                format!("https://{HOST}:{TLS_PORT}"),
                format!("turns:{HOST}:{TLS_PORT}?transport=tcp"),
            )
        }
    };
    let url = format!(
        "{page}/?turn={}&user={}&pass={}&token={token}&timeout={}",
        urlencode(&turn_url),
        urlencode(USER),
        urlencode(PASS),
        PAGE_TIMEOUT.as_millis()
    );
    let profile = tmp.join("profile");
    let chrome_log = tmp.join("chromium.log");
    let mut chrome = Proc::spawn(
        "chromium",
        ns.exec(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Raw host addresses instead of mDNS names.
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                // The test's self-signed certificate, for the page and for `turns:`.
                "--ignore-certificate-errors",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            // Keep Chromium's dot-files in the test's own directory.
            .env("HOME", tmp.path())
            .env("XDG_CONFIG_HOME", tmp.join("config"))
            .env("XDG_CACHE_HOME", tmp.join("cache"))
            .stdout(Stdio::null())
            .stderr(File::create(&chrome_log).expect("create chromium log")),
        &chrome_log,
    );
    let t_chrome = started.elapsed();

    let body = wait_result(&results, &mut chrome, &mut turn);
    let t_result = started.elapsed();
    let r = parse_result(&body);
    let field = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(
        field("ok"),
        "true",
        "the page reported a failure: {}\nresult: {body}\n{}\n{}",
        field("error"),
        chrome.log_tail(),
        turn.log_tail()
    );
    assert_eq!(
        field("message"),
        format!("natkit:{token}"),
        "wrong message; result: {body}"
    );
    // iceTransportPolicy "relay" (W3C webrtc-pc §4.2.5) allows only relayed
    // candidates, and both ends of the pair must be natkit-turn's relayed
    // transport addresses (RFC 8656 §2), one per peer connection.
    for side in ["a", "b"] {
        for end in ["local", "remote"] {
            assert_eq!(
                field(&format!("{side}_{end}")),
                "relay",
                "peer connection {side}: the selected pair's {end} candidate is not relayed; result: {body}"
            );
            let addr = field(&format!("{side}_{end}_addr"));
            let addr: SocketAddr = addr.parse().unwrap_or_else(|_| {
                panic!("peer connection {side}: bad {end} address {addr:?}; result: {body}")
            });
            assert!(
                addr.ip() == HOST && (MIN_RELAY_PORT..=MAX_RELAY_PORT).contains(&addr.port()),
                "peer connection {side}: {end} candidate {addr} is not one of natkit-turn's \
                 relayed addresses ({HOST}:{MIN_RELAY_PORT}-{MAX_RELAY_PORT}); result: {body}"
            );
        }
    }
    assert_eq!(
        field("a_local_addr"),
        field("b_remote_addr"),
        "the two sides disagree on the pair; result: {body}"
    );
    assert_eq!(
        field("b_local_addr"),
        field("a_remote_addr"),
        "the two sides disagree on the pair; result: {body}"
    );
    let want = match route {
        Route::Udp => "udp",
        Route::SharedTls => "tls",
    };
    assert_eq!(
        field("a_relay_protocol"),
        want,
        "allocation made over another transport; result: {body}"
    );
    if let Route::SharedTls = route {
        // The page and its result came through the shared port to the web backend.
        let web = metric(
            &http_get(&ns, METRICS_PORT, "/metrics"),
            "natkit_turn_connections_total{result=\"web\",transport=\"tls\"}",
        );
        assert!(
            web >= 2.0,
            "page and result not forwarded: web connections {web}"
        );
    }

    // natkit-turn's own view: everything went through it. Between the two
    // allocations each datagram is counted once to_peer (into the sending
    // allocation) and once to_client (out of the receiving one). Before the
    // message arrives there must have been at least: 2 ICE checks and their
    // 2 responses (RFC 8445 §7.2), 3 DTLS flights (4 in DTLS 1.2, RFC 6347
    // §4.2.4; 3 in DTLS 1.3, RFC 9147 §5), the 4-way SCTP handshake
    // (RFC 9260 §5.1), DCEP OPEN (RFC 8832 §5.1) and the message: 13, of
    // which 10 is a safe floor.
    let metrics = http_get(&ns, METRICS_PORT, "/metrics");
    let to_peer = metric(
        &metrics,
        "natkit_turn_relayed_packets_total{direction=\"to_peer\"}",
    );
    let to_client = metric(
        &metrics,
        "natkit_turn_relayed_packets_total{direction=\"to_client\"}",
    );
    assert!(
        to_peer >= MIN_RELAYED && to_client >= MIN_RELAYED,
        "natkit-turn relayed too few packets for a data channel (to_peer {to_peer}, \
         to_client {to_client}, expected at least {MIN_RELAYED} each)"
    );
    let t_end = started.elapsed();
    eprintln!(
        "chromium interop: namespace {:?}, relay up {:?}, chromium started {:?}, \
         result {:?} (page: {} ms from script start to message), checks done {:?}; \
         relayed packets to_peer {to_peer}, to_client {to_client}; candidates a [{}] b [{}]",
        t_ns,
        t_relay,
        t_chrome,
        t_result,
        field("elapsed_ms"),
        t_end,
        field("candidates_a"),
        field("candidates_b"),
    );
    drop(chrome);
    drop(server);
}

/// natkit-turn's extra flags for `route`: for [`Route::SharedTls`] a TLS listener on 443 with
/// a self-signed certificate for the namespace's address, sharing the port with the test's
/// HTTP server as the web backend.
fn shared_tls_args(route: &Route, tmp: &TempDir) -> Vec<String> {
    let Route::SharedTls = route else {
        return Vec::new();
    };
    let (cert, key) = (tmp.join("cert.pem"), tmp.join("key.pem"));
    natkit_testkit::tls::self_signed(&[&HOST.to_string()], &cert, &key);
    [
        "--tls-listen",
        &format!("{HOST}:{TLS_PORT}"),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--web-backend",
        &format!("{HOST}:{HTTP_PORT}"),
    ]
    .map(String::from)
    .to_vec()
}

/// The page's report, waited for at most RESULT_TIMEOUT; fails early, with
/// the logs, when Chromium or natkit-turn exits first.
fn wait_result(results: &mpsc::Receiver<String>, chrome: &mut Proc, turn: &mut Proc) -> String {
    let end = Instant::now() + RESULT_TIMEOUT;
    while Instant::now() < end {
        if let Ok(body) = results.recv_timeout(Duration::from_millis(100)) {
            return body;
        }
        let exited =
            [&mut *chrome, &mut *turn]
                .into_iter()
                .find_map(|p| match p.child.try_wait() {
                    Ok(Some(status)) => Some((p.what, status)),
                    _ => None,
                });
        if let Some((what, status)) = exited {
            panic!(
                "{what} exited ({status}) before the page reported\n{}\n{}",
                chrome.log_tail(),
                turn.log_tail()
            );
        }
    }
    panic!(
        "no result from the page within {RESULT_TIMEOUT:?}\n{}\n{}",
        chrome.log_tail(),
        turn.log_tail()
    );
}

/// Root and `ip` are needed to build the namespace: fail with what to do.
fn preflight() {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test builds a network namespace and must run as root (euid is {euid}); \
         run it as root, as CI does"
    );
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        ip.is_ok_and(|s| s.success()),
        "iproute2's `ip` command is missing: install it (Debian: apt-get install -y iproute2)"
    );
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Run `ip` with these arguments; panic with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace made by this test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        remove_stale_leftovers();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        // The guard exists from here on, so a failed step below still
        // deletes the namespace.
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        // Both ends of the veth pair stay inside the namespace: the link
        // is up (Chromium skips interfaces without one) and leads nowhere.
        ip(&[
            "-n", n, "link", "add", "natkit0", "type", "veth", "peer", "name", "natkit1",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{HOST}/24"),
            "dev",
            "natkit0",
        ]);
        ip(&["-n", n, "link", "set", "natkit0", "up"]);
        ip(&["-n", n, "link", "set", "natkit1", "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace. `ip netns exec`
    /// execs it in place, so the child's PID is the program's.
    fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Run `f` on a thread that joined the namespace: sockets it creates
    /// live there and can then be used from any thread.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/run/netns").join(&self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        thread::spawn(move || {
            // SAFETY: setns(2) on a valid namespace fd; CLONE_NEWNET moves
            // only this thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

/// `ip netns pids NAME`.
fn namespace_pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill the processes left in a namespace this test made (Chromium's
/// crash handler leaves the browser's process group on its own), by PID,
/// then delete it. Bounded: gives up waiting after a few seconds.
fn delete_namespace(name: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = namespace_pids(name);
        if pids.is_empty() || Instant::now() >= end {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process inside the test's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// Delete namespaces (and temporary directories) this test left behind in
/// runs that were killed before their guards ran: the PID in the name is
/// no longer alive.
fn remove_stale_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if is_stale(name, NS_PREFIX) {
                delete_namespace(name);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            if is_stale(&entry.file_name().to_string_lossy(), TMP_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Whether `name` is `<prefix><pid>-<n>` for a PID that no longer runs.
fn is_stale(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && !Path::new("/proc").join(pid).exists()
}

/// A process started by the test in a process group of its own; the whole
/// group (Chromium's helpers too) is killed by that ID on drop.
struct Proc {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(what: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Proc {
            child,
            what,
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The last lines of the process's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- last lines of {} ({}):\n{tail}",
            self.what,
            self.log.display()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created (the
        // child is its leader, so its PID is the group ID).
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Wait until natkit-turn answers a STUN Binding request on its listening
/// address inside the namespace (RFC 8656 §17: a TURN server is also a STUN
/// server on the same port).
fn wait_relay_ready(ns: &Netns, turn: &Proc) {
    let sock = ns.enter(|| UdpSocket::bind((HOST, 0)).expect("bind probe socket"));
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + STEP;
    while Instant::now() < end {
        if ready::answers_binding(&sock, SocketAddr::from((HOST, TURN_PORT))) {
            return;
        }
    }
    panic!(
        "natkit-turn did not answer on {HOST}:{TURN_PORT} within {STEP:?}\n{}",
        turn.log_tail()
    );
}

/// GET a path from an HTTP server in the namespace; the body.
fn http_get(ns: &Netns, port: u16, path: &'static str) -> String {
    let (code, body) = ns
        .enter(move || http::get(SocketAddr::from((HOST, port)), path))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

/// The page's report: `key=value` lines.
fn parse_result(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Percent-encode everything but unreserved characters (RFC 3986 §2.3).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page's HTTP server: serves the page at `/` and forwards the body of
/// each `POST /result` to the test. Stops on drop.
struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(ns: &Netns) -> (mpsc::Receiver<String>, HttpServer) {
        let listener =
            ns.enter(|| TcpListener::bind((HOST, HTTP_PORT)).expect("bind the page's HTTP server"));
        listener.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            // Bounded: the test stops it, and it gives up on its own after
            // well over the test's own limits.
            let end = Instant::now() + RESULT_TIMEOUT + STEP * 3;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A connection per thread: Chromium may open idle
                        // (preconnected) connections that must not stall
                        // the one carrying the result.
                        let tx = tx.clone();
                        thread::spawn(move || {
                            let _ = serve(stream, &tx);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        (
            rx,
            HttpServer {
                stop,
                thread: Some(thread),
            },
        )
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one HTTP/1.1 request and close.
fn serve(mut s: TcpStream, results: &mpsc::Sender<String>) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(STEP))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..buf.len().min(head_end + length)];
    let (status, ctype, reply): (&str, &str, &[u8]) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", PAGE.as_bytes()),
        ("POST", "/result") => {
            let _ = results.send(String::from_utf8_lossy(body).into_owned());
            ("204 No Content", "text/plain", b"")
        }
        _ => ("404 Not Found", "text/plain", b"not found\n"),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.len()
    )?;
    s.write_all(reply)?;
    s.flush()
}
