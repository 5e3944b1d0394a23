//! natkit-turn on loopback and the `natkit` CLI against it, the way the
//! turn-relay tests start it (turn-relay/tests/common/mod.rs): concrete
//! listen address, relay IP and port range, metrics endpoint, 2 threads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bins;
use natkit_testkit::ready;

use crate::net::{http_get, wait_http_ok};
use crate::process::{run_with_timeout, Proc};

/// How long a server may take to come up on a loaded 2-core machine.
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// How long one `natkit turn` / `natkit stun` run may take.
pub const CLI_LIMIT: Duration = Duration::from_secs(60);

/// A natkit-turn process on loopback, killed by PID on drop.
pub struct Turn {
    /// The process.
    pub proc: Proc,
    /// Client address (UDP and TCP).
    pub listen: SocketAddr,
    /// `/metrics` and `/healthz`.
    pub metrics: SocketAddr,
}

impl Turn {
    /// Starts natkit-turn on `listen` with relay ports `relay_ports`
    /// (inclusive), metrics on `metrics`, its log in `log`, and `extra`
    /// flags (credentials among them); waits until it serves.
    pub fn start(
        listen: SocketAddr,
        metrics: SocketAddr,
        relay_ports: (u16, u16),
        extra: &[&str],
        log: &Path,
    ) -> Turn {
        let mut cmd = Command::new(bins::path("natkit-turn"));
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--relay-ip")
            .arg(listen.ip().to_string())
            .arg("--min-port")
            .arg(relay_ports.0.to_string())
            .arg("--max-port")
            .arg(relay_ports.1.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--threads")
            .arg("2")
            .args(extra);
        let mut proc = Proc::spawn("natkit-turn", &mut cmd, log);
        // Every endpoint the tests use: UDP and TCP clients, the metrics.
        ready::wait_binding(proc.child(), "natkit-turn", listen, START_LIMIT);
        ready::wait_binding_tcp(proc.child(), "natkit-turn", listen, START_LIMIT);
        wait_http_ok(metrics, "/metrics", START_LIMIT);
        proc.assert_running();
        Turn {
            proc,
            listen,
            metrics,
        }
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let (code, body) = http_get(self.metrics, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// SIGHUP: re-read the config, the secret file and the certificate.
    pub fn reload(&mut self) {
        self.proc.signal(libc::SIGHUP);
    }

    /// Stops it at once: SIGINT (SIGTERM would drain for drain-grace).
    pub fn stop(&mut self) {
        self.proc
            .signal_and_wait(libc::SIGINT, Duration::from_secs(20));
    }
}

/// Runs `natkit ARGS --json` (bounded by [`CLI_LIMIT`]); its JSON report
/// and its stderr, whatever the exit status.
pub fn natkit_json(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = run_with_timeout(
        Command::new(bins::path("natkit")).args(args).arg("--json"),
        CLI_LIMIT,
    );
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "natkit {args:?} printed no JSON ({e}):\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    });
    (out.status.success(), v, out.stderr)
}

/// `natkit turn SERVER --user U --password P`: allocate twice, relay
/// `count` round trips A -> B -> A through the server. Panics with the
/// report unless it succeeded and every round trip came back; the report.
pub fn turn_check(server: SocketAddr, user: &str, password: &str, count: u32) -> serde_json::Value {
    let server = server.to_string();
    let count = count.to_string();
    let (ok, v, stderr) = natkit_json(&[
        "turn",
        &server,
        "--user",
        user,
        "--password",
        password,
        "--count",
        &count,
    ]);
    assert!(
        ok && v["ok"] == true,
        "natkit turn {server} failed: {v:#}\n{stderr}"
    );
    let rt = &v["round_trip"];
    assert_eq!(
        rt["received"].as_u64(),
        Some(count.parse().unwrap()),
        "{v:#}"
    );
    v
}

/// REST credentials from `natkit creds --secret S --user U`: (username,
/// password).
pub fn creds(secret: &str, user: &str) -> (String, String) {
    let (ok, v, stderr) =
        natkit_json(&["creds", "--secret", secret, "--user", user, "--ttl", "10m"]);
    assert!(ok, "natkit creds failed: {stderr}");
    let u = v["username"].as_str().expect("username").to_string();
    let p = v["password"].as_str().expect("password").to_string();
    assert!(u.ends_with(&format!(":{user}")), "{u}");
    (u, p)
}
