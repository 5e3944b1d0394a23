//! natkit-turn on loopback for tests, killed by PID on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::ready::{wait_binding, wait_binding_tcp};

/// A running natkit-turn listening on 127.0.0.1 (UDP and TCP, same port),
/// relaying from 127.0.0.1. Killed (SIGKILL: no drain wanted in tests) and
/// reaped on drop, also when the test panics.
#[derive(Debug)]
pub struct TurnRelay {
    /// The process, for tests that signal or kill it themselves.
    pub child: Child,
    /// The listening address (UDP and TCP).
    pub addr: SocketAddr,
}

impl TurnRelay {
    /// A builder for natkit-turn at `bin` (see [`crate::bins`]).
    pub fn builder(bin: impl Into<PathBuf>) -> TurnRelayBuilder {
        TurnRelayBuilder {
            bin: bin.into(),
            port: None,
            relay_ports: None,
            user: None,
            allow_loopback_peers: false,
            no_drain_grace: false,
            extra: Vec::new(),
            env: Vec::new(),
            stdout: None,
            stderr: None,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TurnRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a [`TurnRelay`]: `--listen 127.0.0.1:<port> --relay-ip
/// 127.0.0.1`, then the options set here, then the extra flags.
#[derive(Debug)]
pub struct TurnRelayBuilder {
    bin: PathBuf,
    port: Option<u16>,
    relay_ports: Option<(u16, u16)>,
    user: Option<String>,
    allow_loopback_peers: bool,
    no_drain_grace: bool,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    ready_timeout: Duration,
}

impl TurnRelayBuilder {
    /// The listening port (default: a [`free_port`]).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// `--min-port`/`--max-port`: each test binary keeps relay ports of its
    /// own (see [`crate::ports::random_block`], [`crate::ports::pid_block`]).
    pub fn relay_ports(mut self, (min, max): (u16, u16)) -> Self {
        self.relay_ports = Some((min, max));
        self
    }

    /// `--user user:password`.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some(format!("{user}:{password}"));
        self
    }

    /// `--allow-peer 127.0.0.0/8`: peers (and relayed addresses) on loopback,
    /// which natkit-turn refuses by default.
    pub fn allow_loopback_peers(mut self) -> Self {
        self.allow_loopback_peers = true;
        self
    }

    /// `--drain-grace 0`: stop at once on a signal.
    pub fn no_drain_grace(mut self) -> Self {
        self.no_drain_grace = true;
        self
    }

    /// Extra flags, after all others.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.extra
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// An environment variable of the process (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Where its stdout goes (default: nowhere).
    pub fn stdout(mut self, out: impl Into<Stdio>) -> Self {
        self.stdout = Some(out.into());
        self
    }

    /// Where its log (stderr) goes (default: nowhere).
    pub fn stderr(mut self, err: impl Into<Stdio>) -> Self {
        self.stderr = Some(err.into());
        self
    }

    /// How long it may take to answer a Binding request (default 30 s: a
    /// loaded 2-core machine).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts natkit-turn and waits until it answers a Binding request on
    /// its UDP port.
    ///
    /// # Panics
    /// When it cannot start, exits, or does not answer in time (it is
    /// killed first).
    pub fn start(self) -> TurnRelay {
        let port = self.port.unwrap_or_else(free_port);
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--relay-ip".into(),
            "127.0.0.1".into(),
        ];
        if let Some((min, max)) = self.relay_ports {
            args.extend(["--min-port".into(), min.to_string()]);
            args.extend(["--max-port".into(), max.to_string()]);
        }
        if let Some(user) = self.user {
            args.extend(["--user".into(), user]);
        }
        if self.allow_loopback_peers {
            args.extend(["--allow-peer".into(), "127.0.0.0/8".into()]);
        }
        if self.no_drain_grace {
            args.extend(["--drain-grace".into(), "0".into()]);
        }
        let tcp_off = self
            .extra
            .windows(2)
            .any(|w| w[0] == "--tcp" && w[1] == "false")
            || self.extra.iter().any(|a| a == "--tcp=false");
        args.extend(self.extra);
        let child = Command::new(&self.bin)
            .args(&args)
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(self.stdout.unwrap_or_else(Stdio::null))
            .stderr(self.stderr.unwrap_or_else(Stdio::null))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        // Killed on drop from here on, even if it never answers.
        let mut relay = TurnRelay {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_binding(
            &mut relay.child,
            "natkit-turn",
            relay.addr,
            self.ready_timeout,
        );
        // The TCP listener opens after the UDP workers answer: a test that
        // allocates over TCP connected before it and was refused (seen in
        // natkit-ice's turn_connection, one run in a few hundred). Wait on
        // the endpoint the tests use too.
        if !tcp_off {
            wait_binding_tcp(
                &mut relay.child,
                "natkit-turn",
                relay.addr,
                self.ready_timeout,
            );
        }
        relay
    }
}
