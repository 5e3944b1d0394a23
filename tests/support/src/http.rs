//! A minimal HTTP client for the servers' `/metrics` and `/healthz`
//! endpoints (and Prometheus's API), and reading one series of the
//! Prometheus text exposition format.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// GET `path` from `addr` over HTTP/1.0 (so the answer is neither chunked
/// nor kept alive); the status code and the body. Bounded in time: 5 s to
/// connect and to write, 30 s to read.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    get_on(&mut s, &addr.to_string(), path)
}

/// GET `path` from `host` over HTTP/1.0 on an open stream `s` (a TLS client, say; its
/// timeouts bound the wait): the status code and the body.
pub fn get_on(
    s: &mut (impl Read + Write),
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after a whole answer.
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((code, body.to_string()))
}

/// The body of `GET /metrics` from `addr`.
///
/// # Panics
/// When the request fails or the answer is not 200.
pub fn metrics(addr: SocketAddr) -> String {
    let (code, body) =
        get(addr, "/metrics").unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
    assert_eq!(code, 200, "GET http://{addr}/metrics: {body}");
    body
}

/// The value of one series in Prometheus text exposition `body`: the line
/// whose name-and-labels part is exactly `series` (labels as the server
/// prints them, e.g. `natkit_turn_allocations{transport="udp"}`).
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// [`metric_value`], for tests that need the series to be there.
///
/// # Panics
/// When `body` has no such series (the message shows `body`).
pub fn metric(body: &str, series: &str) -> f64 {
    metric_value(body, series).unwrap_or_else(|| panic!("metric {series} not found in:\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const BODY: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\na_total{x=\"10\"} 7.5\nb 1e3\n";

    #[test]
    fn a_series_is_matched_whole() {
        assert_eq!(metric_value(BODY, "a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(metric_value(BODY, "a_total{x=\"10\"}"), Some(7.5));
        assert_eq!(metric_value(BODY, "b"), Some(1000.0));
        // A prefix of a series is not the series.
        assert_eq!(metric_value(BODY, "a_total"), None);
        assert_eq!(metric_value(BODY, "a_total{x=\""), None);
        assert!(std::panic::catch_unwind(|| metric(BODY, "c")).is_err());
    }

    #[test]
    fn get_reads_status_and_body() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The whole request (it may come in several writes): closing
            // with some of it unread would reset the connection.
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 8\r\n\r\ndraining")
                .unwrap();
            req
        });
        let (code, body) = get(addr, "/healthz").unwrap();
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
        assert_eq!((code, body.as_str()), (503, "draining"));
    }
}
