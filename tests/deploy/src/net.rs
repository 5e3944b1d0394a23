//! Loopback ports and a minimal HTTP client for `/metrics`, `/healthz` and
//! Prometheus's API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// GET `path` from `addr` over HTTP/1.0 (so the answer is neither chunked nor
/// kept alive); the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((code, body.to_string()))
}

/// Waits (bounded by `limit`) until `GET path` answers 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < end {
        match http_get(addr, path) {
            Ok((200, _)) => return,
            Ok((code, body)) => last = format!("{code}: {body}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("http://{addr}{path} not 200 after {limit:?}; last: {last}");
}

/// Waits (bounded by `limit`) until a TCP connection to `addr` succeeds.
pub fn wait_tcp(addr: SocketAddr, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing accepts TCP on {addr} after {limit:?}");
}

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

/// The value of one series in Prometheus text exposition `body`: the line
/// whose name-and-labels part is exactly `series`.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
