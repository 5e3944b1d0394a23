//! Shared by the interoperability tests (interop_aioice.rs,
//! interop_libnice.rs): a peer ICE agent in a child process that talks JSON
//! lines, the JSON form of its descriptions, and natkit's sans-IO agent
//! driven on std UDP sockets by a small polling loop (ICE level only: no
//! Session, no QUIC).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natkit_ice::{Agent, Candidate, CandidateKind, Config, Event, IceState, Role, SelectedPair};
use serde_json::{json, Value};

// --- the peer process -------------------------------------------------------

/// `python -c import_code` works, or the test fails here with `hint`: the
/// peer's prerequisites are missing (a test never passes silently without
/// its peer).
pub fn require_python(python: &str, import_code: &str, hint: &str) {
    match Command::new(python)
        .args(["-c", import_code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{hint}\n({python} -c {import_code:?} failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("{hint}\n(cannot run {python}: {e})"),
    }
}

/// A role as the peer scripts name it.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Controlling => "controlling",
        Role::Controlled => "controlled",
    }
}

/// A peer ICE agent in a child process (a `peer.py` of tests/aioice or
/// tests/libnice) that talks JSON lines on stdin/stdout and logs on
/// stderr. Killed by PID on drop, which shows its log when the test is
/// failing.
pub struct PeerProcess {
    /// Its name in messages.
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    /// JSON lines from its stdout, parsed by a reader thread.
    lines: Receiver<Result<Value, String>>,
    /// Its stderr (the peer's log), shown when the test fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl PeerProcess {
    /// Start `cmd` (a peer script) with piped stdio.
    pub fn spawn(name: &'static str, mut cmd: Command) -> PeerProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} peer ({cmd:?}): {e}"));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str::<Value>(&line)
                    .map_err(|e| format!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        let stdin = child.stdin.take();
        PeerProcess {
            name,
            child,
            stdin,
            lines,
            log,
        }
    }

    /// The next line if one arrived, without waiting. A line that is not
    /// JSON, an "error" line, or the child's stdout closing fails the test.
    pub fn try_line(&mut self) -> Option<Value> {
        match self.lines.try_recv() {
            Ok(v) => Some(self.checked(v)),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => self.died("closed its stdout"),
        }
    }

    /// The next line, waiting at most `timeout`.
    pub fn line(&mut self, timeout: Duration, waiting_for: &str) -> Value {
        match self.lines.recv_timeout(timeout) {
            Ok(v) => self.checked(v),
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} printed no {waiting_for} within {timeout:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.died(&format!("exited before printing {waiting_for}"))
            }
        }
    }

    fn checked(&mut self, v: Result<Value, String>) -> Value {
        match v {
            Ok(v) if v["type"] == "error" => panic!("{} failed: {}", self.name, v["message"]),
            Ok(v) => v,
            Err(e) => panic!("{} printed {e}", self.name),
        }
    }

    fn died(&mut self, what: &str) -> ! {
        let status = self.child.wait().ok();
        panic!("{} {what} (exit status {status:?})", self.name)
    }

    pub fn send_line(&mut self, v: &Value) {
        let name = self.name;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{v}").unwrap_or_else(|e| panic!("write to {name}'s stdin: {e}"));
        stdin
            .flush()
            .unwrap_or_else(|e| panic!("flush {name}'s stdin: {e}"));
    }

    /// Wait for the child to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for the peer") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // Closing stdin alone would stop it; killing by PID does not wait
        // for Python to notice.
        self.stdin.take();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Give the reader thread a moment to take the last lines.
            std::thread::sleep(Duration::from_millis(50));
            let log = self.log.lock().unwrap();
            eprintln!("---- {}'s log ({} lines) ----", self.name, log.len());
            for l in log.iter() {
                eprintln!("{l}");
            }
            eprintln!("---- end of {}'s log ----", self.name);
        }
    }
}

// --- descriptions: the peer scripts' JSON and natkit's candidates ---------

/// A peer script's candidate JSON ({"foundation", "priority", "host",
/// "port", "type"}: both peer.py's `candidate_json`) as natkit's remote
/// candidate.
pub fn natkit_candidate(c: &Value) -> Candidate {
    let kind = match c["type"].as_str() {
        Some("host") => CandidateKind::Host,
        Some("srflx") => CandidateKind::ServerReflexive,
        Some("prflx") => CandidateKind::PeerReflexive,
        Some("relay") => CandidateKind::Relayed,
        other => panic!("peer candidate of unknown type {other:?}: {c}"),
    };
    let priority = c["priority"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("peer candidate priority: {c}"));
    let foundation = c["foundation"].as_str().expect("peer candidate foundation");
    Candidate::remote(kind, socket_addr(c), priority, foundation)
}

/// The transport address in a peer script's JSON: {"host", "port", ...}.
pub fn socket_addr(v: &Value) -> SocketAddr {
    let ip: IpAddr = v["host"]
        .as_str()
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("peer address host not an IP address: {v}"));
    let port = v["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("peer address port: {v}"));
    SocketAddr::new(ip, port)
}

/// natkit's credentials and candidates in the peer scripts' description
/// format. Only host and relayed candidates are signalled: prflx ones are
/// learned, never signalled (RFC 8445 §5.1.3), and aioice refuses them.
pub fn peer_description(agent: &Agent) -> Value {
    let creds = agent.local_credentials();
    let cands: Vec<Value> = agent
        .local_candidates()
        .iter()
        .filter(|c| c.kind != CandidateKind::PeerReflexive)
        .map(|c| {
            json!({
                "foundation": c.foundation,
                "priority": c.priority,
                "host": c.addr.ip().to_string(),
                "port": c.addr.port(),
                "type": c.kind.as_str(),
            })
        })
        .collect();
    json!({ "ufrag": creds.ufrag, "pwd": creds.pwd, "candidates": cands })
}

/// The address of a candidate in the peer scripts' JSON.
pub fn json_addr(c: &Value) -> SocketAddr {
    natkit_candidate(c).addr
}

/// A pair as natkit sees it: (our base, the peer's address).
pub type Path = (SocketAddr, SocketAddr);

/// A pair in the peer scripts' JSON ({"local", "remote"}), seen from
/// natkit's side.
pub fn mirrored(pair: &Value) -> Path {
    (json_addr(&pair["remote"]), json_addr(&pair["local"]))
}

// --- natkit's side: the agent on std UDP sockets ---------------------------

/// natkit's agent with one non-blocking UDP socket per host candidate.
pub struct Natkit {
    pub agent: Agent,
    sockets: Vec<UdpSocket>,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Non-STUN datagrams: (from, arrived on, bytes), for the application.
    pub app: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// STUN datagrams the agent refused, with why (diagnostics only: late
    /// retransmitted responses are refused as unknown transactions).
    pub refused: Vec<String>,
}

impl Natkit {
    /// An agent in `role` with a socket on each of `addresses`.
    pub fn new(role: Role, addresses: &[IpAddr]) -> Natkit {
        Natkit::with_config(
            Config {
                role,
                ..Config::default()
            },
            addresses,
        )
    }

    /// An agent with `cfg` and a socket on each of `addresses`; it has
    /// given all its candidates (end-of-candidates).
    pub fn with_config(cfg: Config, addresses: &[IpAddr]) -> Natkit {
        let mut agent = Agent::new(cfg, Instant::now());
        let mut sockets = Vec::new();
        for (i, ip) in addresses.iter().enumerate() {
            let s = UdpSocket::bind((*ip, 0)).expect("bind a loopback UDP socket");
            s.set_nonblocking(true).unwrap();
            let addr = s.local_addr().unwrap();
            let pref = natkit_ice::candidate::local_preference(*ip, i as u16);
            agent
                .add_local_candidate(Candidate::host(addr, pref))
                .expect("natkit accepts its host candidate");
            sockets.push(s);
        }
        agent.end_of_local_candidates();
        Natkit {
            agent,
            sockets,
            events: Vec::new(),
            app: VecDeque::new(),
            refused: Vec::new(),
        }
    }

    /// Give the agent the peer script's description: all its candidates and
    /// end-of-candidates.
    pub fn set_remote(&mut self, desc: &Value) {
        let ufrag = desc["ufrag"].as_str().expect("peer ufrag");
        let pwd = desc["pwd"].as_str().expect("peer pwd");
        self.agent
            .set_remote_credentials(ufrag, pwd)
            .unwrap_or_else(|e| panic!("natkit refused the peer's credentials {ufrag:?}: {e}"));
        let cands = desc["candidates"].as_array().expect("peer candidates");
        assert!(!cands.is_empty(), "the peer signalled no candidate: {desc}");
        for c in cands {
            self.agent
                .add_remote_candidate(natkit_candidate(c))
                .unwrap_or_else(|e| panic!("natkit refused the peer's candidate {c}: {e}"));
        }
        self.agent.end_of_remote_candidates();
    }

    pub fn socket_for(&self, local: SocketAddr) -> &UdpSocket {
        self.sockets
            .iter()
            .find(|s| s.local_addr().unwrap() == local)
            .unwrap_or_else(|| {
                panic!("natkit asked to send from {local}, which is no socket of ours")
            })
    }

    /// One round of the driver: due timers, datagrams to send, events,
    /// datagrams received; then a short sleep when nothing happened (at most
    /// until the agent's next timer).
    pub fn pump(&mut self) {
        let now = Instant::now();
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        let mut busy = self.flush();
        let mut buf = [0u8; 2048];
        for i in 0..self.sockets.len() {
            let local = self.sockets[i].local_addr().unwrap();
            loop {
                let (n, from) = match self.sockets[i].recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // An ICMP error from an earlier send: not a datagram.
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
                    Err(e) => panic!("recv on {local}: {e}"),
                };
                busy = true;
                match self
                    .agent
                    .handle_input(from, local, &buf[..n], Instant::now())
                {
                    Ok(()) => {}
                    Err(e) if e.is_not_stun() => {
                        self.app.push_back((from, local, buf[..n].to_vec()))
                    }
                    Err(e) => self
                        .refused
                        .push(format!("{n} bytes from {from} on {local}: {e}")),
                }
            }
        }
        busy |= self.flush();
        if !busy {
            let wait = self
                .agent
                .poll_timeout()
                .map_or(Duration::from_millis(2), |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .min(Duration::from_millis(2));
            std::thread::sleep(wait);
        }
    }

    /// Send what the agent has to send and collect its events.
    pub fn flush(&mut self) -> bool {
        let mut any = false;
        while let Some(t) = self.agent.poll_transmit() {
            any = true;
            if let Err(e) = self.socket_for(t.from).send_to(&t.payload, t.to) {
                // Loopback sends fail only when a buffer is full: the check
                // is retransmitted, as on any lossy path.
                eprintln!("natkit: send {} -> {}: {e}", t.from, t.to);
            }
        }
        while let Some(e) = self.agent.poll_event() {
            any = true;
            self.events.push(e);
        }
        any
    }

    pub fn connected(&self) -> Option<&SelectedPair> {
        self.events.iter().find_map(|e| match e {
            Event::Connected(p) => Some(p),
            _ => None,
        })
    }

    pub fn failure(&self) -> Option<String> {
        self.events.iter().find_map(|e| match e {
            Event::Failed(pairs) => Some(format!(
                "{}; pairs: [{}]",
                self.agent
                    .failure()
                    .map_or_else(|| "ICE failed".to_owned(), |f| f.to_string()),
                pairs
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Event::ConsentLost(p) => Some(format!("consent lost on {p}")),
            _ => None,
        })
    }

    /// Keep the agent running a moment (300 ms) so that straggling checks,
    /// nominations and role switches land; then it must be connected: its
    /// selected pair.
    pub fn settle_connected(&mut self) -> SelectedPair {
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            self.pump();
        }
        assert_eq!(
            self.agent.state(),
            IceState::Connected,
            "{}",
            self.diagnostics()
        );
        self.agent.selected_pair().expect("natkit's selected pair")
    }

    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "natkit state {:?}, role {:?}\nevents: {:?}\ncheck list:\n",
            self.agent.state(),
            self.agent.role(),
            self.events
        );
        for p in self.agent.check_list() {
            s += &format!(
                "  {} -> {}: {:?} nominated {} {:?}\n",
                p.local, p.remote, p.state, p.nominated, p.failure
            );
        }
        s += &format!("refused STUN: {:?}", self.refused);
        s
    }
}
