//! Driving a [`PortMapper`] on tokio (feature `tokio`): the HTTP
//! exchanges of UPnP over TCP ([`http_exchange`], which the session's
//! driver uses too), and [`Driver`], a complete driver for one UDP socket
//! (what `natkit netcheck` and the NAT lab's tests use).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::http::MAX_RESPONSE;
use super::{Event, HttpId, Output, PortMapper};

/// Which step of an HTTP exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStage {
    /// Connecting (or binding the local address).
    Connect,
    /// Writing the request or reading the response.
    Exchange,
}

/// What an HTTP exchange gives back, piece by piece.
#[derive(Debug)]
pub enum HttpPiece {
    /// Bytes of the response.
    Data(Vec<u8>),
    /// The end: `Ok` when the device closed the connection.
    End(Result<(), (HttpStage, io::Error)>),
}

/// One HTTP exchange: a TCP connection from `from` (any port) to `to`
/// within `limit`, `request` written, then each piece of the answer sent
/// on `tx` with `key`, until the device closes the connection (or sends
/// more than an answer may hold). Abort the task to cancel it.
pub async fn http_exchange<K: Copy>(
    key: K,
    from: IpAddr,
    to: SocketAddr,
    request: Vec<u8>,
    limit: Duration,
    tx: mpsc::UnboundedSender<(K, HttpPiece)>,
) {
    let connect = async {
        let sock = match to {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        sock.bind(SocketAddr::new(from, 0))?;
        sock.connect(to).await
    };
    let mut stream = match tokio::time::timeout(limit, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = tx.send((key, HttpPiece::End(Err((HttpStage::Connect, e)))));
            return;
        }
        Err(_) => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            let _ = tx.send((key, HttpPiece::End(Err((HttpStage::Connect, e)))));
            return;
        }
    };
    let exchange = async {
        stream.write_all(&request).await?;
        let mut total = 0;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            total += n;
            if tx.send((key, HttpPiece::Data(buf[..n].to_vec()))).is_err() {
                return Ok(());
            }
            // The parser refuses more than this anyway.
            if total > MAX_RESPONSE {
                return Ok(());
            }
        }
    };
    let end = match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "exchange timed out",
        )),
    };
    let _ = tx.send((
        key,
        HttpPiece::End(end.map_err(|e| (HttpStage::Exchange, e))),
    ));
}

/// Runs a [`PortMapper`] on one UDP socket: the one bound to the mapper's
/// internal address.
#[derive(Debug)]
pub struct Driver<'a> {
    sock: &'a UdpSocket,
    tx: mpsc::UnboundedSender<(HttpId, HttpPiece)>,
    rx: mpsc::UnboundedReceiver<(HttpId, HttpPiece)>,
    tasks: HashMap<HttpId, AbortHandle>,
    /// Every event so far.
    pub events: Vec<Event>,
}

impl Drop for Driver<'_> {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

impl<'a> Driver<'a> {
    /// A driver sending from `sock`.
    pub fn new(sock: &'a UdpSocket) -> Driver<'a> {
        let (tx, rx) = mpsc::unbounded_channel();
        Driver {
            sock,
            tx,
            rx,
            tasks: HashMap::new(),
            events: Vec::new(),
        }
    }

    async fn outputs(&mut self, m: &mut PortMapper) {
        let limit = m.config().http_timeout;
        while let Some(o) = m.poll_output() {
            match o {
                Output::Transmit { to, payload } => {
                    // An unreachable network: the retransmissions and the
                    // mapper's timers decide.
                    if let Err(e) = self.sock.send_to(&payload, to).await {
                        tracing::debug!(%to, error = %e, "port mapping request not sent");
                    }
                }
                Output::Http {
                    id,
                    from,
                    to,
                    request,
                } => {
                    let task =
                        tokio::spawn(http_exchange(id, from, to, request, limit, self.tx.clone()));
                    self.tasks.insert(id, task.abort_handle());
                }
                Output::CloseHttp(id) => {
                    if let Some(t) = self.tasks.remove(&id) {
                        t.abort();
                    }
                }
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// Drive `m` until `stop(m)` holds (checked after every step) or it
    /// has nothing more to wait for.
    pub async fn run_until(
        &mut self,
        m: &mut PortMapper,
        stop: impl Fn(&PortMapper) -> bool,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 2048];
        loop {
            self.outputs(m).await;
            if stop(m) {
                return Ok(());
            }
            let Some(deadline) = m.poll_timeout() else {
                return Ok(());
            };
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        m.handle_datagram(from, &buf[..n], Instant::now());
                    }
                    // ICMP errors surface here: the timers decide.
                    Err(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                    Err(e) => return Err(e),
                },
                Some((id, piece)) = self.rx.recv() => match piece {
                    HttpPiece::Data(d) => m.handle_http_data(id, &d, Instant::now()),
                    HttpPiece::End(r) => {
                        self.tasks.remove(&id);
                        m.handle_http_end(id, r.map_err(|(_, e)| e.to_string()), Instant::now());
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => m.handle_timeout(Instant::now()),
            }
        }
    }
}
