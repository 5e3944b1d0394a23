//! The keys both servers have, defined once: where they listen (UDP, TCP, TLS), the TLS
//! certificate, the metrics endpoint, logging, threads and the limits of TCP/TLS connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{ConfigError, Sources};
use crate::acme::AcmeSettings;
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
        /// PEM certificate chain for TLS; read again on SIGHUP and when it changes.
        cert: Option<PathBuf> ["PATH"] = _;
        /// PEM private key for TLS; read again on SIGHUP and when it changes.
        key: Option<PathBuf> ["PATH"] = _;
        /// Serve Prometheus metrics at /metrics and health at /healthz on this address.
        metrics: Option<SocketAddr> ["IP:PORT"] = (_, "off");
        /// Log format: text or json.
        log_format: LogFormat ["text|json"] = "text";
        /// Worker threads (1 to 256).
        threads: usize ["N"] = (cores(), "number of cores");
        /// Seconds a TCP/TLS connection may stay idle (one holding a TURN allocation lives by
        /// the allocation's lifetime instead); also bounds a frame from its first byte, and a
        /// write.
        tcp_idle_timeout: Duration ["SECS"] = "300";
        /// Most TCP/TLS connections open at once.
        max_tcp_connections: usize ["N"] = "10000";
        /// Front proxies (TCP load balancers), CIDR or bare IP (repeatable): their TCP and TLS
        /// connections must start with a PROXY protocol v2 header, whose client address is the
        /// one served and policed; a header from any other address is refused.
        proxy_protocol_from: Vec<IpNet> ["CIDR"] = _;
        /// Share the TLS port with a web site: connections that are not TURN (told by ALPN,
        /// server name or first bytes) go to this address as plain bytes after the TLS
        /// handshake, e.g. the web server's HTTP port on loopback.
        web_backend: Option<SocketAddr> ["IP:PORT"] = _;
        /// ALPN protocols (besides stun.turn) offered on a shared TLS port; a connection that
        /// picks one goes to web-backend at once, which must speak it in clear (add h2 only
        /// for a backend that takes h2c).
        web_alpn: Vec<String> ["PROTO"] = "http/1.1";
        /// TLS server names (SNI) that mean TURN on a shared TLS port (repeatable;
        /// *.example.org for names under it).
        turn_server_name: Vec<String> ["NAME"] = _;
        /// TLS server names (SNI) passed through untouched to passthrough-backend, TLS not
        /// terminated, so the web server keeps its own certificate (repeatable;
        /// *.example.org for names under it).
        passthrough_server_name: Vec<String> ["NAME"] = _;
        /// Where passthrough-server-name connections go: a TLS server.
        passthrough_backend: Option<SocketAddr> ["IP:PORT"] = _;
        /// Seconds between checks of the cert and key files (and natkit-turn's
        /// auth-secret-file) for changes, symlink swaps included; a change is loaded as SIGHUP
        /// loads it, and a bad new file keeps the running one. 0 = only on SIGHUP.
        watch_interval: Duration ["SECS"] = "2";
        /// Start each connection to web-backend and passthrough-backend with a PROXY protocol
        /// v2 header carrying the client's address: true or false.
        backend_proxy_protocol: bool ["BOOL"] = "false";
        /// Get the TLS certificate automatically (ACME, RFC 8555) for this DNS name
        /// (repeatable; instead of cert and key): validated with tls-alpn-01 on the TLS
        /// listeners, so one of them must be reachable on port 443 under each name; renewed at
        /// 2/3 of its lifetime while serving.
        acme_domain: Vec<String> ["NAME"] = _;
        /// Directory URL of the ACME certificate authority (HTTPS).
        acme_directory: String ["URL"] = "https://acme-v02.api.letsencrypt.org/directory";
        /// Contact email address for the ACME account: expiry and policy notices (repeatable).
        acme_contact: Vec<String> ["EMAIL"] = _;
        /// Directory keeping the ACME account key, the certificate and its key (kept across
        /// restarts: a valid stored certificate is served at once); required with acme-domain.
        acme_state_dir: Option<PathBuf> ["PATH"] = _;
        /// PEM root certificate to trust for the ACME server's HTTPS instead of the system's
        /// roots (a private or test CA).
        acme_ca_file: Option<PathBuf> ["PATH"] = _;
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
        self.validate_acme(s, tls.is_some())?;
        if !self.tls_listen.is_empty() && tls.is_none() && self.acme_domain.is_empty() {
            return Err(s.rule(
                "tls_listen",
                "set without cert and key (or acme-domain): TLS needs a certificate",
            ));
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
        self.validate_sharing(s)?;
        Ok(tls)
    }

    /// The ACME settings, when certificates come from ACME (already validated).
    pub fn acme(&self) -> Option<AcmeSettings> {
        if self.acme_domain.is_empty() {
            return None;
        }
        Some(AcmeSettings {
            domains: self.acme_domain.clone(),
            directory: self.acme_directory.clone(),
            contact: self.acme_contact.clone(),
            state_dir: self.acme_state_dir.clone()?,
            ca_file: self.acme_ca_file.clone(),
        })
    }

    /// The rules of the ACME keys.
    fn validate_acme(&self, s: &Sources<'_>, files: bool) -> Result<(), ConfigError> {
        if self.acme_domain.is_empty() {
            return Ok(());
        }
        if files {
            let key = if self.cert.is_some() { "cert" } else { "key" };
            return Err(s.rule(
                key,
                "set together with acme-domain: the certificate comes either from cert and key or from ACME, not both",
            ));
        }
        if self.tls_listen.is_empty() {
            return Err(s.rule(
                "acme_domain",
                "set without tls-listen: ACME validation (tls-alpn-01) is answered on the TLS listeners",
            ));
        }
        if self.acme_state_dir.is_none() {
            return Err(s.rule(
                "acme_domain",
                "set without acme-state-dir: the account and certificate need a directory to live in",
            ));
        }
        for d in &self.acme_domain {
            // RFC 8737 §3: tls-alpn-01 cannot validate wildcard names; IP addresses are
            // RFC 8738's, which Let's Encrypt does not issue for TLS-ALPN.
            let bad = d.is_empty()
                || d.contains('*')
                || d.contains(char::is_whitespace)
                || d.parse::<std::net::IpAddr>().is_ok();
            if bad {
                return Err(s.rule(
                    "acme_domain",
                    format!(
                        "{d:?} is not a DNS name (no wildcards or IP addresses with tls-alpn-01)"
                    ),
                ));
            }
        }
        // RFC 8555 §6.1: ACME runs over HTTPS only.
        if !self.acme_directory.starts_with("https://") {
            return Err(s.rule("acme_directory", "must be an https:// URL"));
        }
        Ok(())
    }

    /// The rules of the port-sharing keys.
    fn validate_sharing(&self, s: &Sources<'_>) -> Result<(), ConfigError> {
        let shared = self.web_backend.is_some() || self.passthrough_backend.is_some();
        if shared && self.tls_listen.is_empty() {
            let key = if self.web_backend.is_some() {
                "web_backend"
            } else {
                "passthrough_backend"
            };
            return Err(s.rule(key, "only TLS listeners share their port: set tls-listen"));
        }
        if self.passthrough_server_name.is_empty() != self.passthrough_backend.is_none() {
            let key = if self.passthrough_backend.is_none() {
                "passthrough_server_name"
            } else {
                "passthrough_backend"
            };
            return Err(s.rule(
                key,
                "passthrough-server-name and passthrough-backend go together",
            ));
        }
        if self.backend_proxy_protocol && !shared {
            return Err(s.rule(
                "backend_proxy_protocol",
                "set without web-backend or passthrough-backend",
            ));
        }
        for p in &self.web_alpn {
            if p.is_empty() || p.len() > 255 || p.as_bytes() == crate::front::TURN_ALPN {
                return Err(s.rule(
                    "web_alpn",
                    format!("{p:?} is not a web ALPN protocol (1-255 bytes, not stun.turn)"),
                ));
            }
        }
        for n in self
            .turn_server_name
            .iter()
            .chain(&self.passthrough_server_name)
        {
            let bare = n.strip_prefix("*.").unwrap_or(n);
            if bare.is_empty() || bare.contains('*') || bare.contains(char::is_whitespace) {
                let key = if self.turn_server_name.contains(n) {
                    "turn_server_name"
                } else {
                    "passthrough_server_name"
                };
                return Err(s.rule(key, format!("{n:?} is not a server name or *.name pattern")));
            }
        }
        Ok(())
    }
}
