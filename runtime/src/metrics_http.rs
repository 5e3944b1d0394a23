//! The metrics and health endpoint: Prometheus text at `GET /metrics`, liveness at
//! `GET /healthz`, 404 elsewhere, on a small hyper HTTP/1.1 server.
//!
//! The endpoint is meant for an operator's network, but it still bounds what a client can cost:
//! at most [`MAX_CONNECTIONS`] at once, a header read timeout, and one request per connection
//! (no idle keep-alive connections to hold slots).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// Most connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `/healthz` answers 200 (`ok`) or 503 (`draining`). Cheap to clone; every clone
/// shares the state.
#[derive(Debug, Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A healthy state.
    pub fn new() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Sets whether the server is ready; `false` makes `/healthz` answer 503, e.g. while
    /// draining before shutdown so a load balancer stops sending new clients.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The current state.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A running endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    /// The address actually bound (useful when asked for port 0).
    pub local_addr: SocketAddr,
    /// The accept loop; it ends after the shutdown handle is triggered.
    pub task: JoinHandle<()>,
}

/// Binds `addr` and serves `registry` and `health` until `shutdown` is triggered.
///
/// Must be called inside a tokio runtime. Fails only if the address cannot be bound.
pub async fn spawn(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: Shutdown,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, registry, health, shutdown));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    registry: Registry,
    health: Health,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Typically EMFILE or a connection reset before accept; back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let resp = respond(&req, &registry, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "metrics endpoint: connection error");
            }
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn respond(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if path == "/healthz" {
        return if health.is_ready() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        };
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(4096);
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        tracing::warn!(error = %e, "metrics endpoint: encoding failed");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    if let Ok(v) = HeaderValue::from_str(encoder.format_type()) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Sends one raw HTTP/1.1 request and returns (status code, whole response text).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        (status, text)
    }

    async fn start() -> (MetricsServer, IntCounter, Health, Shutdown) {
        let registry = Registry::new();
        let counter = IntCounter::new("natkit_test_requests_total", "Test requests").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        let health = Health::new();
        let shutdown = Shutdown::new();
        let server = spawn(
            "127.0.0.1:0".parse().unwrap(),
            registry,
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        (server, counter, health, shutdown)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_404() {
        let (server, counter, health, shutdown) = start().await;
        assert_ne!(server.local_addr.port(), 0);
        counter.inc_by(7);

        let (status, body) = get(server.local_addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("text/plain; version=0.0.4"), "{body}");
        assert!(
            body.contains("# TYPE natkit_test_requests_total counter"),
            "{body}"
        );
        assert!(body.contains("\nnatkit_test_requests_total 7\n"), "{body}");

        let (status, body) = get(server.local_addr, "GET", "/healthz").await;
        assert_eq!(status, 200);
        assert!(body.ends_with("\r\n\r\nok\n"), "{body}");

        health.set_ready(false);
        let (status, body) = get(server.local_addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        assert!(body.ends_with("draining\n"), "{body}");
        health.set_ready(true);
        assert_eq!(get(server.local_addr, "GET", "/healthz").await.0, 200);

        assert_eq!(get(server.local_addr, "GET", "/").await.0, 404);
        assert_eq!(get(server.local_addr, "GET", "/metricsx").await.0, 404);
        let (status, body) = get(server.local_addr, "POST", "/metrics").await;
        assert_eq!(status, 405);
        assert!(
            body.to_ascii_lowercase().contains("allow: get, head"),
            "{body}"
        );

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .expect("accept loop stopped")
            .unwrap();
        assert!(TcpStream::connect(server.local_addr).await.is_err());
    }

    #[tokio::test]
    async fn garbage_request_gets_an_error_not_a_hang() {
        let (server, _counter, _health, shutdown) = start().await;
        let mut s = TcpStream::connect(server.local_addr).await.unwrap();
        s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("connection closed in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{text}"
        );
        // The server keeps serving.
        assert_eq!(get(server.local_addr, "GET", "/healthz").await.0, 200);
        shutdown.trigger();
    }

    #[tokio::test]
    async fn bind_failure_is_reported() {
        let (server, _c, _h, shutdown) = start().await;
        let err = spawn(
            server.local_addr,
            Registry::new(),
            Health::new(),
            Shutdown::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        shutdown.trigger();
    }
}
