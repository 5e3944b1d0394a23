//! The keys both servers have, defined once: where they listen (UDP, TCP, TLS), the TLS
//! certificate, the metrics endpoint, logging, threads and the limits of TCP/TLS connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, Sources};
use crate::logging::LogFormat;

/// Most worker threads a server starts.
pub const MAX_THREADS: usize = 256;

/// One worker per core, if the number of cores can be had.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

crate::settings! {
    /// The keys both servers have. A server whose sensible default differs says so with
    /// [`Schema::default_of`](super::Schema::default_of).
    pub struct Common {
        /// Address for clients, over UDP and TCP (repeatable).
        listen: Vec<SocketAddr> ["IP:PORT"] = "0.0.0.0:3478";
        /// Also answer over TCP on the listen addresses: true or false.
        tcp: bool ["BOOL"] = "true";
        /// Address for clients over TLS (repeatable; needs cert and key).
        tls_listen: Vec<SocketAddr> ["IP:PORT"] = _;
        /// PEM certificate chain for TLS; read again on SIGHUP.
        cert: Option<PathBuf> ["PATH"] = _;
        /// PEM private key for TLS; read again on SIGHUP.
        key: Option<PathBuf> ["PATH"] = _;
        /// Serve Prometheus metrics at /metrics and health at /healthz on this address.
        metrics: Option<SocketAddr> ["IP:PORT"] = (_, "off");
        /// Log format: text or json.
        log_format: LogFormat ["text|json"] = "text";
        /// Worker threads (1 to 256).
        threads: usize ["N"] = (cores(), "number of cores");
        /// Seconds a TCP/TLS connection may stay idle; also bounds a frame from its first byte,
        /// and a write.
        tcp_idle_timeout: Duration ["SECS"] = "300";
        /// Most TCP/TLS connections open at once.
        max_tcp_connections: usize ["N"] = "10000";
    }
}

impl Common {
    /// Checks the shared keys' rules and returns the certificate and key files, when TLS is
    /// configured.
    pub fn validate(&self, s: &Sources<'_>) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
        let tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(s.rule("cert", "set without key: TLS needs both")),
            (None, Some(_)) => return Err(s.rule("key", "set without cert: TLS needs both")),
        };
        if self.listen.is_empty() {
            return Err(s.rule("listen", "at least one address is needed"));
        }
        if !self.tls_listen.is_empty() && tls.is_none() {
            return Err(s.rule("tls_listen", "set without cert and key: TLS needs both"));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(s.rule(
                "threads",
                format!("{} is out of range (1-{MAX_THREADS})", self.threads),
            ));
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(s.rule("tcp_idle_timeout", "must be at least 1 second"));
        }
        if self.max_tcp_connections == 0 {
            return Err(s.rule("max_tcp_connections", "must be at least 1"));
        }
        Ok(tls)
    }
}
