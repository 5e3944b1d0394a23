//! Loopback ports and HTTP for `/metrics`, `/healthz` and Prometheus's
//! API (the client and the metric reader are natkit-testkit's `http`).

use std::net::SocketAddr;

/// 100 fixed loopback ports owned by one test file: `base..base+100`,
/// within 21000-21999.
#[derive(Debug, Clone, Copy)]
pub struct PortBlock(pub u16);

impl PortBlock {
    /// Port number `i` of the block.
    pub fn port(self, i: u16) -> u16 {
        assert!(i < 100, "port {i} is outside the block of 100");
        assert!(
            (21_000..=21_900).contains(&self.0),
            "block outside 21000-21999"
        );
        self.0 + i
    }

    /// `127.0.0.1:port(i)`.
    pub fn addr(self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(i)))
    }
}

pub use natkit_testkit::http::{get as http_get, metric_value};
pub use natkit_testkit::ready::wait_http_ok;

/// Percent-encodes a query-string value (RFC 3986 §2.1: everything but the
/// unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
