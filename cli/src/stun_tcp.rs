//! One STUN Binding over TCP or TLS (RFC 8489 §6.2.2, §6.2.3: no
//! retransmissions, the message framed by its own length), for the UDP
//! verdict: when UDP gets no answer, whether the server answers over TCP or
//! TLS says whether a relay over TCP or TLS would work.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::framing::Deframer;
use natkit_proto::transaction::new_transaction_id;
use serde::Serialize;

use crate::udp_driver::json_ms;

/// What TCP said.
#[derive(Debug, Clone, Serialize)]
pub struct TcpOut {
    /// The server asked.
    pub server: SocketAddr,
    /// Whether it answered a Binding request over TCP.
    pub works: bool,
    /// The mapped address it saw (the TCP mapping: may differ from UDP's).
    pub mapped: Option<SocketAddr>,
    /// Connect plus Binding round trip.
    pub ms: Option<f64>,
    /// Why not, when it did not.
    pub error: Option<String>,
}

/// Ask `server` over TCP, giving up at `deadline`.
pub fn probe(server: SocketAddr, deadline: Instant) -> TcpOut {
    outcome(server, Instant::now(), binding(server, None, deadline))
}

/// Ask `server` over TLS (certificate checked against `name` with
/// `config`), giving up at `deadline`.
pub fn probe_tls(
    server: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    deadline: Instant,
) -> TcpOut {
    outcome(
        server,
        Instant::now(),
        binding(server, Some((name, config)), deadline),
    )
}

fn outcome(server: SocketAddr, t0: Instant, r: Result<SocketAddr, String>) -> TcpOut {
    match r {
        Ok(mapped) => TcpOut {
            server,
            works: true,
            mapped: Some(mapped),
            ms: Some(json_ms(t0.elapsed())),
            error: None,
        },
        Err(e) => TcpOut {
            server,
            works: false,
            mapped: None,
            ms: None,
            error: Some(e),
        },
    }
}

/// A check that could not start (bad name, bad trust file).
pub fn failed(server: SocketAddr, why: String) -> TcpOut {
    TcpOut {
        server,
        works: false,
        mapped: None,
        ms: None,
        error: Some(why),
    }
}

/// The result of a check still connecting when the run moved on.
pub fn unfinished(server: SocketAddr, grace: Duration) -> TcpOut {
    TcpOut {
        server,
        works: false,
        mapped: None,
        ms: None,
        error: Some(format!(
            "no answer within {} after the UDP tests (a firewall dropping TCP?)",
            crate::udp_driver::human(grace)
        )),
    }
}

fn binding(
    server: SocketAddr,
    tls: Option<(ServerName<'static>, Arc<ClientConfig>)>,
    deadline: Instant,
) -> Result<SocketAddr, String> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let tcp = TcpStream::connect_timeout(&server, left()).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            "no answer to the TCP handshake (blocked?)".to_string()
        }
        _ => format!("cannot connect: {e}"),
    })?;
    // One budget for the handshake and the exchange: the socket's
    // timeouts bound every read and write, TLS records included.
    tcp.set_read_timeout(Some(left())).ok();
    tcp.set_write_timeout(Some(left())).ok();
    match tls {
        None => exchange(tcp),
        Some((name, config)) => {
            let conn = ClientConnection::new(config, name)
                .map_err(|e| format!("TLS set-up failed: {e}"))?;
            exchange(StreamOwned::new(conn, tcp))
        }
    }
}

/// One Binding request and its answer on a connected stream.
fn exchange(mut s: impl Read + Write) -> Result<SocketAddr, String> {
    let tid = new_transaction_id();
    let mut req = [0u8; 64];
    let opts = RequestOptions {
        fingerprint: true,
        ..Default::default()
    };
    let n = binding::write_request(&mut req, &tid, &opts).map_err(|e| e.to_string())?;
    s.write_all(&req[..n])
        .and_then(|()| s.flush())
        .map_err(|e| format!("cannot send: {e}"))?;
    // RFC 8489 §6.2.2: the header's length field frames the message; the
    // one stream deframer checks the cookie and bounds the length.
    let mut d = Deframer::new(2048, false);
    let buf = loop {
        if let Some(f) = d
            .next_frame()
            .map_err(|e| format!("not a STUN answer ({e})"))?
        {
            break f.message.to_vec();
        }
        let n = s.read(d.read_buf()).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "connected, but no answer to the Binding request".to_string()
            }
            _ => format!("connected, then: {e}"),
        })?;
        if n == 0 {
            return Err("connected, then: the server closed the connection".into());
        }
        d.filled(n, Instant::now());
    };
    let r = binding::parse_response(&buf).map_err(|e| format!("not a STUN answer: {e}"))?;
    if r.transaction_id != tid {
        return Err("answer to another transaction".into());
    }
    match (r.outcome, r.mapped) {
        (Err(code), _) => Err(format!("answered with error {code}")),
        (Ok(()), None) => Err("answered without XOR-MAPPED-ADDRESS".into()),
        (Ok(()), Some(m)) => Ok(m),
    }
}
