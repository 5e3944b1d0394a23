//! A TURN client for synchronous tests: natkit-ice's [`TurnConnection`]
//! (the one copy of the TURN client's I/O, UDP and TCP here) behind a
//! blocking facade. Each client owns a one-thread tokio runtime and drives
//! its connection only while one of its methods runs; what arrives in
//! between waits in the socket. Two clients talking through a relay
//! therefore take turns: send from one, then wait on the other.
//!
//! Every wait is bounded by [`STEP`] and panics with what it was waiting
//! for and what came instead.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::turn::{Incoming, LinkError, TurnConnection};
use natkit_proto::turn::client::{Client, ClientError, Config, Event};

/// Longest one wait may take.
pub const STEP: Duration = Duration::from_secs(10);

/// Data relayed from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The peer.
    pub peer: SocketAddr,
    /// The payload.
    pub data: Vec<u8>,
    /// The channel it came on: `Some` for ChannelData, `None` for a Data
    /// indication.
    pub channel: Option<u16>,
}

/// One allocation, driven on demand.
pub struct TurnTestClient {
    // Dropped before the runtime its socket is registered with.
    conn: TurnConnection,
    rt: tokio::runtime::Runtime,
    /// Events not taken yet (peer data is in [`TurnTestClient::data`]).
    pub events: Vec<Event>,
    /// Peer data not taken yet, in arrival order.
    pub data: VecDeque<Received>,
    /// ICMP errors about the server seen so far (UDP).
    pub unreachable: usize,
}

impl std::fmt::Debug for TurnTestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnTestClient")
            .field("conn", &self.conn)
            .field("events", &self.events)
            .field("data", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl TurnTestClient {
    /// Connect to `cfg.server` over `cfg.transport` (UDP or TCP) and start
    /// allocating.
    ///
    /// # Panics
    /// When the connection cannot be made, or for TLS.
    pub fn connect(cfg: Config) -> TurnTestClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a one-thread tokio runtime");
        let server = cfg.server;
        let conn = rt
            .block_on(TurnConnection::connect(cfg, None, STEP))
            .unwrap_or_else(|e| panic!("connect to TURN server {server}: {e}"));
        TurnTestClient {
            conn,
            rt,
            events: Vec::new(),
            data: VecDeque::new(),
            unreachable: 0,
        }
    }

    /// The sans-IO client (state, relayed addresses, channels, stats; and
    /// the calls that queue requests, sent by the next wait).
    pub fn client(&mut self) -> &mut Client {
        self.conn.client()
    }

    /// Our end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.conn.local_addr()
    }

    /// Drive the connection until `end`, or until `stop` says so after
    /// something arrived; keeps what arrived. Returns whether `stop` ended
    /// it.
    fn drive_until(&mut self, end: Instant, mut stop: impl FnMut(&mut Self) -> bool) -> bool {
        loop {
            if stop(self) {
                return true;
            }
            let got = self.step(end);
            if !got.unwrap_or_else(|e| panic!("connection to {} failed: {e}", self.conn.server())) {
                return false;
            }
        }
    }

    /// Wait until `end` for one thing to arrive and keep it: `Ok(false)`
    /// when `end` came first, the error when the connection failed.
    fn step(&mut self, end: Instant) -> Result<bool, LinkError> {
        match self.rt.block_on(self.conn.next_until(end))? {
            None => return Ok(false),
            Some(Incoming::Event(e)) => self.events.push(e),
            Some(Incoming::Data {
                peer,
                data,
                channel,
                ..
            }) => self.data.push_back(Received {
                peer,
                data,
                channel,
            }),
            Some(Incoming::Unreachable(_)) => self.unreachable += 1,
        }
        Ok(true)
    }

    /// Drive the connection until the server closes it (or it breaks):
    /// how long that took, or `None` if it was still open after `limit`.
    /// What arrives meanwhile is kept.
    pub fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let end = start + limit;
        loop {
            match self.step(end) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => return Some(start.elapsed()),
            }
        }
    }

    /// Drive the connection for `d`, keeping what arrives.
    pub fn run_for(&mut self, d: Duration) {
        self.drive_until(Instant::now() + d, |_| false);
    }

    /// Wait until `pick` accepts an event (kept ones first) and return
    /// what it made of it; the event is taken, the others stay.
    ///
    /// # Panics
    /// After [`STEP`], naming `what`.
    pub fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let mut found = None;
        let ok = self.drive_until(Instant::now() + STEP, |c| {
            found = c
                .events
                .iter()
                .enumerate()
                .find_map(|(i, e)| pick(e).map(|v| (i, v)))
                .map(|(i, v)| {
                    c.events.remove(i);
                    v
                });
            found.is_some()
        });
        assert!(
            ok,
            "timed out after {STEP:?} waiting for {what}; events {:?}, state {:?}",
            self.events,
            self.conn.client().state()
        );
        found.expect("the picked event")
    }

    /// Wait for the allocation: its (first) relayed address, or the
    /// failure.
    pub fn allocated(&mut self) -> Result<SocketAddr, ClientError> {
        self.wait("the allocation", |e| match e {
            Event::Allocated { relayed, .. } => Some(Ok(relayed[0])),
            Event::Failed(err) => Some(Err(err.clone())),
            _ => None,
        })
    }

    /// Wait for the client to fail; its error.
    pub fn failed(&mut self) -> ClientError {
        self.wait("a failure", |e| match e {
            Event::Failed(err) => Some(err.clone()),
            _ => None,
        })
    }

    /// Create a permission for `peer`; `Ok`, or the error the server gave.
    ///
    /// # Panics
    /// When the client cannot ask (not allocated).
    pub fn permit(&mut self, peer: SocketAddr) -> Result<(), ClientError> {
        self.client()
            .create_permission(peer, Instant::now())
            .unwrap_or_else(|e| panic!("permission for {peer}: {e}"));
        self.wait("the permission", |e| match e {
            Event::PermissionCreated { .. } => Some(Ok(())),
            Event::PermissionFailed { error, .. } => Some(Err(error.clone())),
            _ => None,
        })
    }

    /// Bind a channel to `peer`; its number, or the error the server gave.
    ///
    /// # Panics
    /// When the client cannot ask (not allocated).
    pub fn bind(&mut self, peer: SocketAddr) -> Result<u16, ClientError> {
        self.client()
            .bind_channel(peer, Instant::now())
            .unwrap_or_else(|e| panic!("channel to {peer}: {e}"));
        self.wait("the channel", |e| match e {
            Event::ChannelBound { channel, .. } => Some(Ok(*channel)),
            Event::ChannelFailed { error, .. } => Some(Err(error.clone())),
            _ => None,
        })
    }

    /// Relay `data` to `peer` (ChannelData with a channel, else a Send
    /// indication).
    ///
    /// # Panics
    /// When the client cannot frame it (no permission) or the connection
    /// failed.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) {
        self.rt
            .block_on(self.conn.send_to(peer, data))
            .unwrap_or_else(|e| panic!("send to {peer} through the relay: {e}"));
    }

    /// Wait for data from a peer (kept data first).
    ///
    /// # Panics
    /// After [`STEP`].
    pub fn recv_data(&mut self) -> Received {
        let ok = self.drive_until(Instant::now() + STEP, |c| !c.data.is_empty());
        assert!(
            ok,
            "no data from a peer within {STEP:?}; events {:?}",
            self.events
        );
        self.data.pop_front().expect("data")
    }

    /// Wait for data from a peer: (peer, payload).
    pub fn recv(&mut self) -> (SocketAddr, Vec<u8>) {
        let d = self.recv_data();
        (d.peer, d.data)
    }

    /// All the data peers send within `limit` (and what was kept).
    pub fn recv_for(&mut self, limit: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        self.run_for(limit);
        self.data.drain(..).map(|d| (d.peer, d.data)).collect()
    }

    /// Delete the allocation (Refresh with LIFETIME 0) and wait for the
    /// server's answer.
    pub fn close(&mut self) {
        self.client().close(Instant::now());
        self.wait("the deletion", |e| (*e == Event::Closed).then_some(()));
    }

    /// Open a client data connection to `server` and bind it to peer
    /// connection `connection_id` (RFC 6062 §4.4), answering a 401/438
    /// once: the bound stream, or how the server refused.
    ///
    /// # Panics
    /// When the connection cannot be made or no answer comes within [`STEP`].
    pub fn bind_data_connection(
        &mut self,
        server: SocketAddr,
        connection_id: u32,
    ) -> Result<std::net::TcpStream, ClientError> {
        use natkit_proto::turn::client::BindOutcome;
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(server).expect("data connection");
        s.set_read_timeout(Some(STEP)).unwrap();
        let mut bind = self
            .client()
            .connection_bind(connection_id)
            .expect("a TCP allocation to bind for");
        loop {
            s.write_all(bind.request()).unwrap();
            let answer = crate::stream::read_stun_message(&mut s).expect("an answer");
            match bind.handle_response(&answer) {
                BindOutcome::Bound => return Ok(s),
                BindOutcome::Retry => continue,
                BindOutcome::Failed(e) => return Err(e),
                BindOutcome::Ignored => panic!("ConnectionBind {connection_id}: answer ignored"),
            }
        }
    }
}
