//! Interop: coturn's load client `turnutils_uclient` against natkit-turn,
//! with coturn's `turnutils_peer` (a UDP echo server) as the peer (issue 7,
//! "Interoperability"). Both come from Debian's `coturn` package.
//!
//! uclient allocates (with EVEN-PORT and RESERVATION-TOKEN for its RTP/RTCP
//! pair unless `-c`), installs permissions or binds channels, sends `-n`
//! messages per client through the relay to the peer, which echoes them
//! back, and prints a final report: messages sent and received, lost
//! packets, send drops. Each test runs one bounded session (well under ten
//! seconds: uclient lingers about five seconds after its last message),
//! parses that report and checks it against natkit-turn's own metrics, so a
//! relay that loses, duplicates or bypasses traffic fails.
//!
//! The peer listens on loopback, so the relay runs with
//! `--allow-peer 127.0.0.0/8`; natkit-turn still refuses its own listening
//! address, so the peer port (and the port above it, which uclient uses as
//! the RTCP peer) are chosen away from it.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UCLIENT: &str = "/usr/bin/turnutils_uclient";
const PEER: &str = "/usr/bin/turnutils_peer";
/// Messages per session: at uclient's 5 ms interval, one second of sending.
const MESSAGES: u64 = 200;
/// Concurrent uclient sessions (`-m`; uclient counts an RTP and an RTCP
/// session per connection, so this is two connections).
const CLIENTS: u64 = 4;
/// Payload bytes per message.
const LEN: u64 = 200;
/// Interval between one session's messages, in ms (uclient's `-z`): 200
/// messages/s per session, 800/s for the run, a moderate rate.
const INTERVAL_MS: u64 = 5;
/// Longest a uclient run may take before the test kills it and fails (a
/// `-P` run takes about 17 s: uclient waits out its stopping time for the
/// half it counts as lost).
const RUN_LIMIT: Duration = Duration::from_secs(45);

/// A child process killed (by PID, through `Child::kill`) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The totals of uclient's final report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
}

/// The number right after `key` in `line` (`key` included up to `=` or a
/// space), if any.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Parses the end of uclient's output. The totals come from its last lines:
///
/// ```text
/// 6: : start_mclient: tot_send_msgs=800, tot_recv_msgs=800
/// 6: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
/// ```
///
/// (the per-second progress lines also say `tot_send_msgs=` but carry
/// `msz=` first; they are skipped).
fn parse_report(out: &str) -> Option<Report> {
    let totals = out
        .lines()
        .rev()
        .find(|l| l.contains("start_mclient: tot_send_msgs=") && !l.contains("msz="))?;
    let losses = out
        .lines()
        .rev()
        .find(|l| l.contains("Total lost packets "))?;
    Some(Report {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(losses, "Total lost packets ")?,
        send_dropped: number_after(losses, "total send dropped ")?,
    })
}

/// Whether coturn's tools are installed; they are required unless
/// `NATKIT_SKIP_COTURN` is set (then the test says so and passes).
fn coturn_tools() -> bool {
    let present = Path::new(UCLIENT).exists() && Path::new(PEER).exists();
    if !present && std::env::var_os("NATKIT_SKIP_COTURN").is_some() {
        eprintln!("skipped: {UCLIENT} or {PEER} missing and NATKIT_SKIP_COTURN is set");
        return false;
    }
    assert!(
        present,
        "{UCLIENT} and {PEER} are needed (Debian package coturn); \
         set NATKIT_SKIP_COTURN=1 to skip"
    );
    true
}

/// A loopback port for the peer such that neither it nor the port above it
/// (uclient's RTCP peer) is the relay's listener or metrics port, both of
/// which natkit-turn refuses as peers or which are not echo servers.
fn peer_port(relay: &Relay) -> u16 {
    for _ in 0..100 {
        let p = free_port();
        let taken = [relay.addr.port(), relay.metrics];
        if p < u16::MAX && !taken.contains(&p) && !taken.contains(&(p + 1)) {
            return p;
        }
    }
    panic!("no usable peer port");
}

/// Starts `turnutils_peer` on a loopback port from [`peer_port`] and checks
/// that it echoes there (it retries a taken port instead of exiting, so a
/// port lost to another process between the pick and its bind shows as
/// silence: then another port is tried). Returns the guard and the port.
fn start_peer(relay: &Relay) -> (Guard, u16) {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for _ in 0..5 {
        let port = peer_port(relay);
        let child = Command::new(PEER)
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer");
        let g = Guard(child);
        let end = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            probe.send_to(b"echo?", ("127.0.0.1", port)).unwrap();
            if let Ok((n, from)) = probe.recv_from(&mut buf) {
                if from.port() == port && &buf[..n] == b"echo?" {
                    return (g, port);
                }
            }
        }
    }
    panic!("turnutils_peer did not echo on any of 5 ports");
}

/// Runs uclient against `relay` with `flags`, bounded by [`RUN_LIMIT`];
/// its exit status and output (stdout and stderr).
fn run_uclient(relay: &Relay, peer: u16, flags: &[&str], clients: u64) -> (ExitStatus, String) {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "-p",
            &relay.addr.port().to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer.to_string(),
            "-u",
            USER,
            "-w",
            PASS,
            "-n",
            &MESSAGES.to_string(),
            "-m",
            &clients.to_string(),
            "-l",
            &LEN.to_string(),
            "-z",
            &INTERVAL_MS.to_string(),
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let log = TempDir::new("natkit-turn-uclient");
    let path = log.join("out");
    let file = std::fs::File::create(&path).unwrap();
    let child = Command::new(UCLIENT)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start turnutils_uclient");
    let mut g = Guard(child);
    let end = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = g.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let mut out = String::new();
            let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut out));
            panic!("turnutils_uclient {args:?} still running after {RUN_LIMIT:?}; output:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status, out)
}

/// Waits (up to two seconds: workers publish their counters on their
/// ticks) until the metric `series` reaches `at_least`; its last value.
fn metric_reaching(relay: &Relay, series: &str, at_least: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let v = relay.metric(series);
        if v >= at_least || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How uclient sends its data through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// ChannelBind, then ChannelData (uclient's default).
    Channels,
    /// CreatePermission, then Send and Data indications (`-s`).
    SendIndications,
}

/// One uclient session through a fresh relay; checks uclient's report and
/// the relay's metrics.
fn relay_with_uclient(tcp: bool, method: Method) {
    if !coturn_tools() {
        return;
    }
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let (_peer, port) = start_peer(&relay);
    let mut flags = Vec::new();
    if tcp {
        flags.push("-t");
    }
    if method == Method::SendIndications {
        flags.push("-s");
    }
    let (status, out) = run_uclient(&relay, port, &flags, CLIENTS);
    let ctx = format!("uclient {flags:?}; output:\n{out}");
    assert!(status.success(), "uclient failed ({status}); {ctx}");
    let report = parse_report(&out).unwrap_or_else(|| panic!("no final report; {ctx}"));

    // uclient's own view: every message sent, echoed and received.
    let expected = MESSAGES * CLIENTS;
    assert_eq!(report.sent, expected, "messages sent; {ctx}");
    assert_eq!(report.received, expected, "messages received; {ctx}");
    assert_eq!(report.lost, 0, "lost packets; {ctx}");
    assert_eq!(report.send_dropped, 0, "send drops; {ctx}");

    // The relay's view: the traffic really went through natkit-turn, both
    // ways, with the payload sizes uclient sent.
    let n = expected as f64;
    let to_peer = metric_reaching(
        &relay,
        "natkit_turn_relayed_packets_total{direction=\"to_peer\"}",
        n,
    );
    let to_client = metric_reaching(
        &relay,
        "natkit_turn_relayed_packets_total{direction=\"to_client\"}",
        n,
    );
    assert!(to_peer >= n, "relayed to peer {to_peer} < {n}; {ctx}");
    assert!(to_client >= n, "relayed to client {to_client} < {n}; {ctx}");
    let bytes = relay.metric("natkit_turn_relayed_bytes_total{direction=\"to_client\"}");
    assert!(
        bytes >= n * LEN as f64,
        "relayed {bytes} bytes to clients, want {}; {ctx}",
        n * LEN as f64
    );
    // The method asked for is the one used.
    let channels = relay.metric("natkit_turn_channels_bound_total");
    let permissions = relay.metric("natkit_turn_permissions_created_total");
    match method {
        // Per connection, the RTP allocation binds a channel to the RTCP
        // peer (then refreshes it) and one to the peer; the RTCP allocation
        // binds one.
        Method::Channels => assert_eq!(channels, (3 * CLIENTS / 2) as f64, "channels bound; {ctx}"),
        Method::SendIndications => {
            assert_eq!(channels, 0.0, "channels bound with -s; {ctx}");
            assert!(
                permissions >= CLIENTS as f64,
                "{permissions} permissions for {CLIENTS} clients; {ctx}"
            );
        }
    }
    // uclient counts RTP and RTCP sessions as clients: CLIENTS / 2
    // connections, each a probe allocation then an RTP/RTCP pair, all with
    // EVEN-PORT and RESERVATION-TOKEN (RFC 8656 §7.2), all granted.
    let allocations = relay.metric("natkit_turn_allocation_attempts_total{outcome=\"success\"}");
    assert_eq!(
        allocations,
        (3 * CLIENTS / 2) as f64,
        "successful allocations; {ctx}"
    );
    eprintln!(
        "uclient {flags:?}: {report:?}; relay: {allocations} allocations, {permissions} \
         permissions, {channels} channels, {to_peer} packets to peer, {to_client} to \
         client, {bytes} bytes to client"
    );
    // Nothing uclient sent was refused or dropped on the way.
    for reason in [
        "malformed",
        "no_allocation",
        "no_channel",
        "no_permission",
        "denied_peer",
        "quota",
        "rate_limited",
    ] {
        let d = relay.metric(&format!("natkit_turn_dropped_total{{reason=\"{reason}\"}}"));
        assert_eq!(d, 0.0, "dropped as {reason}; {ctx}");
    }
    assert_eq!(
        relay.metric("natkit_turn_auth_failures_total"),
        0.0,
        "auth failures; {ctx}"
    );
}

/// The parser reads real uclient output and refuses output without a
/// report (so a crashed or truncated run cannot pass as zero loss).
#[test]
fn uclient_report_parser() {
    let sample = "\
2: : start_mclient: msz=4, tot_send_msgs=400, tot_recv_msgs=398, tot_send_bytes ~ 80000, tot_recv_bytes ~ 79600
6: : start_mclient: tot_send_msgs=800, tot_recv_msgs=797
6: : start_mclient: tot_send_bytes ~ 160000, tot_recv_bytes ~ 159400
6: : Total transmit time is 6
6: : Total lost packets 3 (0.375000%), total send dropped 1 (0.125000%)
6: : Average round trip delay 0.000000 ms; min = 0 ms, max = 0 ms
";
    assert_eq!(
        parse_report(sample),
        Some(Report {
            sent: 800,
            received: 797,
            lost: 3,
            send_dropped: 1,
        })
    );
    assert_eq!(parse_report("0: : channel bind: error 400 ()\n"), None);
    let progress_only = sample
        .lines()
        .filter(|l| l.contains("msz="))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(parse_report(&progress_only), None);
}

/// Channels over UDP: uclient's default, with its RTP/RTCP allocation pair
/// (EVEN-PORT with the R bit, then RESERVATION-TOKEN). uclient picks its
/// channel numbers at random in RFC 5766's 0x4000-0x7FFF, three per client:
/// a relay that accepts only RFC 8656's 0x4000-0x4FFF fails this nearly
/// always.
#[test]
fn uclient_channels_over_udp() {
    relay_with_uclient(false, Method::Channels);
}

/// Channels over TCP (`-t`): ChannelData framed and padded on the stream
/// (RFC 8656 §12.5).
#[test]
fn uclient_channels_over_tcp() {
    relay_with_uclient(true, Method::Channels);
}

/// Send and Data indications over UDP (`-s`).
#[test]
fn uclient_send_indications_over_udp() {
    relay_with_uclient(false, Method::SendIndications);
}

/// Send and Data indications over TCP (`-t -s`).
#[test]
fn uclient_send_indications_over_tcp() {
    relay_with_uclient(true, Method::SendIndications);
}

/// Sessions of the RFC 6062 runs (`-m`). With `-T` each session Connects
/// to the relayed address of every later one, so four sessions make six
/// Connects, six ConnectionAttempts and twelve data connections bound at
/// once, all on one control connection per session: what coturn's own
/// turnserver completes. (Each ConnectionBind must pass with the nonce
/// of its allocation: uclient keeps one nonce per session, and a 401 on a
/// data connection would hand its control connection a nonce for another
/// address, so that its next Connect met a 401 and was sent again to the
/// wrong peer; that stalled runs of three sessions or more.)
const TCP_CLIENTS: u64 = 4;

/// uclient's RFC 6062 mode against natkit-turn: `flags` (`-T` active:
/// every session's TCP allocation reaches the others' through their
/// relayed addresses, so every message crosses two spliced connections;
/// `-P` passive: half the sessions are plain TCP peers connecting in).
/// The report and the relay's TCP metrics: at least `bound` connections
/// bound, and not one request challenged for a wrong nonce.
fn tcp_allocations_with_uclient(flags: &[&str], bound: u64) -> Report {
    let want_bound = bound as f64;
    if !coturn_tools() {
        return Report {
            sent: 0,
            received: 0,
            lost: 0,
            send_dropped: 0,
        };
    }
    let relay = Relay::start(&["--allow-peer", "127.0.0.0/8"]);
    let port = peer_port(&relay);
    let (status, out) = run_uclient(&relay, port, flags, TCP_CLIENTS);
    let ctx = format!("uclient {flags:?}; output:\n{out}");
    assert!(status.success(), "uclient failed ({status}); {ctx}");
    let report = parse_report(&out).unwrap_or_else(|| panic!("no report; {ctx}"));
    assert_eq!(report.sent, MESSAGES * TCP_CLIENTS, "{ctx}");
    let bound = metric_reaching(
        &relay,
        "natkit_turn_tcp_peer_connections_total{event=\"bound\"}",
        want_bound,
    );
    assert!(bound >= want_bound, "{bound} bound; {ctx}");
    let bytes = metric_reaching(
        &relay,
        "natkit_turn_tcp_relayed_bytes_total{direction=\"to_peer\"}",
        (report.received * LEN) as f64,
    );
    assert!(
        bytes >= (report.received * LEN) as f64,
        "{bytes} bytes; {ctx}"
    );
    assert_eq!(
        relay.metric("natkit_turn_auth_failures_total"),
        0.0,
        "auth failures; {ctx}"
    );
    report
}

/// `-T`: every session Connects to each later session's relayed address
/// (Connect, ConnectionBind), which accepts (ConnectionAttempt,
/// ConnectionBind); every message sent is received.
#[test]
fn uclient_tcp_allocations_active() {
    // Every pair of sessions binds both ends (§5.4): n(n-1) connections.
    let r = tcp_allocations_with_uclient(&["-T"], TCP_CLIENTS * (TCP_CLIENTS - 1));
    assert_eq!(
        (r.received, r.lost, r.send_dropped),
        (r.sent, 0, 0),
        "{r:?}"
    );
}

/// `-P`: passive, the peer side connects in. uclient counts only one
/// direction as received in this mode: coturn 4.6's own turnserver gives
/// the same report (half "lost"), so the check is that natkit-turn's
/// report equals that one.
#[test]
fn uclient_tcp_allocations_passive() {
    // uclient pairs its sessions here, an allocation and a plain TCP peer
    // that connects in: one bind per pair.
    let r = tcp_allocations_with_uclient(&["-P"], TCP_CLIENTS / 2);
    assert_eq!((r.received, r.send_dropped), (r.sent / 2, 0), "{r:?}");
}
