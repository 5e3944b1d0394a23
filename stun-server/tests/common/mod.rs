//! Harness shared by natkit-stun's integration tests.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use natkit_proto::binding::{parse_response, write_request, RequestOptions};
use natkit_testkit::{http, ready};

/// A running natkit-stun, killed on drop.
pub struct Server {
    pub child: Child,
}

impl Server {
    /// Start natkit-stun with `args`, its log (stderr) going to `stderr`
    /// (`Stdio::null()`, or a file: see [`log_file`]).
    pub fn spawn(args: &[String], stderr: Stdio) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_natkit-stun"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start natkit-stun");
        Server { child }
    }

    /// Wait until a Binding request to `addr` is answered over UDP.
    pub fn wait_ready(&mut self, addr: SocketAddr) {
        ready::wait_binding(&mut self.child, "natkit-stun", addr, START);
    }

    /// Wait until a Binding request to `addr` is answered over TCP.
    pub fn wait_tcp_ready(&mut self, addr: SocketAddr) {
        ready::wait_binding_tcp(&mut self.child, "natkit-stun", addr, START);
    }

    /// Wait until the metrics endpoint on 127.0.0.1:`port` serves
    /// `/metrics`.
    pub fn wait_metrics(&mut self, port: u16) {
        ready::wait_http_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics", START);
    }
}

/// Longest one step may take on a loaded machine.
pub const STEP: Duration = Duration::from_secs(10);
/// Longest a server may take to open an endpoint: a debug build on a loaded
/// 2-core machine (as natkit-testkit's relay builder allows).
pub const START: Duration = Duration::from_secs(30);

/// A new file at `path` to pass as [`Server::spawn`]'s `stderr`.
pub fn log_file(path: &std::path::Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).expect("create the log file"))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for UDP and TCP on 127.0.0.1 and 127.0.0.2.
pub use natkit_testkit::ports::free_port_rfc5780 as free_port;

/// Send one Binding request and return (response, the address it came from).
pub fn binding(
    s: &UdpSocket,
    to: SocketAddr,
    opts: RequestOptions,
) -> Option<(natkit_proto::binding::Response, SocketAddr)> {
    let tid: [u8; 12] = rand_tid();
    let mut buf = [0u8; 128];
    let n = write_request(&mut buf, &tid, &opts).unwrap();
    s.send_to(&buf[..n], to).unwrap();
    let mut rx = [0u8; 1500];
    loop {
        let (n, from) = s.recv_from(&mut rx).ok()?;
        if let Ok(r) = parse_response(&rx[..n]) {
            if r.transaction_id == tid {
                return Some((r, from));
            }
        }
    }
}

pub fn rand_tid() -> [u8; 12] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t[8..].copy_from_slice(&std::process::id().to_be_bytes());
    t
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The `/metrics` text of the server whose metrics endpoint is on
/// 127.0.0.1:`port`.
pub fn metrics(port: u16) -> String {
    http::metrics(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The value of one series (name and labels exactly as printed) in `text`.
// Not every test binary that includes this module reads metrics.
#[allow(unused_imports)]
pub use natkit_testkit::http::metric;

/// Start natkit-stun in RFC 5780 mode on 127.0.0.1 and 127.0.0.2 with metrics;
/// returns (server, primary, other, metrics port) once every endpoint a test
/// may use answers: both UDP addresses, TCP on the primary one (unless
/// `extra` turns TCP off), and the metrics endpoint.
pub fn rfc5780_server(extra: &[&str]) -> (Server, SocketAddr, SocketAddr, u16) {
    let (p, q, m) = (free_port(), free_port(), free_port());
    let primary = addr(&format!("127.0.0.1:{p}"));
    let other = addr(&format!("127.0.0.2:{q}"));
    let mut args: Vec<String> = vec![
        "--listen".into(),
        primary.to_string(),
        "--other".into(),
        other.to_string(),
        "--metrics".into(),
        format!("127.0.0.1:{m}"),
        "--threads".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut srv = Server::spawn(&args, Stdio::null());
    srv.wait_ready(primary);
    srv.wait_ready(other);
    if !extra.windows(2).any(|w| w == ["--tcp", "false"]) {
        srv.wait_tcp_ready(primary);
    }
    srv.wait_metrics(m);
    (srv, primary, other, m)
}
