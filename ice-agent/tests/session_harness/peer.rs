//! One simulated host running a [`SessionCore`], and the simulated
//! application protocol it carries: opaque datagrams in QUIC's first-byte
//! range (RFC 9443 §3), numbered so that losses and reordering show.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::session_core::{Route, StreamId, Via};
use natkit_ice::{SessionCore, SessionEvent};

use std::collections::HashMap;

use crate::common::gateway::SimGateway;
use crate::common::Nat;

/// An application datagram sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSent {
    /// Simulated time.
    pub at: Duration,
    /// Its number.
    pub seq: u32,
    /// The route it took.
    pub route: Route,
}

/// An application datagram received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRx {
    /// Simulated time.
    pub at: Duration,
    /// Its number.
    pub seq: u32,
    /// Where it arrived: a host base, or a connection to a TURN server.
    pub on: Via,
    /// Who sent it to us: the peer (directly or through its relay), or our
    /// TURN server (unwrapped from our allocation).
    pub from: SocketAddr,
    /// Whether it came through our own allocation (unwrapped by the core).
    pub via_our_relay: bool,
}

/// One host: a session core, its interfaces, maybe a NAT in front.
pub struct Peer {
    /// For traces.
    pub name: &'static str,
    /// The session.
    pub core: SessionCore,
    /// Its host addresses (the core's bases).
    pub hosts: Vec<SocketAddr>,
    /// The NAT in front of it, if any.
    pub nat: Option<Nat>,
    /// Its NAT's port-mapping side (PCP, NAT-PMP, UPnP), if any.
    pub gateway: Option<SimGateway>,
    /// Flows that came in through a port the gateway forwards, as
    /// conntrack remembers them: (base, remote) -> external port. Replies
    /// on them leave from that port.
    pub(super) forwarded: HashMap<(SocketAddr, SocketAddr), u16>,
    /// Off the network: nothing it sends leaves, nothing reaches it.
    pub down: bool,
    /// When its core wants `handle_timeout`.
    pub(super) timer: Instant,
    /// Every event, with the simulated time it came at.
    pub events: Vec<(Duration, SessionEvent)>,
    /// Application datagrams sent, with their routes.
    pub sent: Vec<AppSent>,
    /// Application datagrams the application had no route for.
    pub unrouted: u32,
    /// Application datagrams received.
    pub rx: Vec<AppRx>,
    /// Connections the core asked for, and closed.
    pub connects: Vec<StreamId>,
    pub disconnects: Vec<StreamId>,
    pub(super) next_seq: u32,
    pub(super) next_ephemeral: u16,
    /// Sockets opened and closed for the hard-NAT punch.
    pub punch_opened: usize,
    pub punch_closed: usize,
}

impl Peer {
    pub(super) fn new(
        name: &'static str,
        core: SessionCore,
        hosts: Vec<SocketAddr>,
        nat: Option<Nat>,
        now: Instant,
    ) -> Peer {
        Peer {
            name,
            core,
            hosts,
            nat,
            gateway: None,
            forwarded: HashMap::new(),
            down: false,
            timer: now,
            events: Vec::new(),
            sent: Vec::new(),
            unrouted: 0,
            rx: Vec::new(),
            connects: Vec::new(),
            disconnects: Vec::new(),
            next_seq: 0,
            next_ephemeral: 30000,
            punch_opened: 0,
            punch_closed: 0,
        }
    }

    /// When the first event matching `f` came.
    pub fn event_at(&self, f: impl Fn(&SessionEvent) -> bool) -> Option<Duration> {
        self.events.iter().find_map(|(t, e)| f(e).then_some(*t))
    }

    /// The first event matching `f`.
    pub fn find<T>(&self, f: impl Fn(&SessionEvent) -> Option<T>) -> Option<T> {
        self.events.iter().find_map(|(_, e)| f(e))
    }

    /// How many events match `f`.
    pub fn count(&self, f: impl Fn(&SessionEvent) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }

    /// Whether it has connected.
    pub fn connected(&self) -> bool {
        self.count(|e| matches!(e, SessionEvent::Connected(_))) > 0
    }

    /// Received datagram numbers, in arrival order.
    pub fn rx_seqs(&self) -> Vec<u32> {
        self.rx.iter().map(|r| r.seq).collect()
    }
}

/// Application datagram `seq` from peer `from`: its first byte in QUIC's
/// range 0x40..=0x7f (cycling through all of it, the ChannelData look-alikes
/// 0x40..=0x4f included), odd lengths (ChannelData on streams is padded).
pub fn app_datagram(from: usize, seq: u32) -> Vec<u8> {
    let len = 40 + (seq % 61) as usize;
    let mut d = Vec::with_capacity(len);
    d.push(0x40 + (seq % 64) as u8);
    d.push(from as u8);
    d.extend_from_slice(&seq.to_be_bytes());
    while d.len() < len {
        d.push((seq as usize).wrapping_mul(31).wrapping_add(d.len()) as u8);
    }
    d
}

/// The sender and number of an application datagram, if it is exactly
/// what [`app_datagram`] made (no byte more or less, none changed).
pub fn parse_app(d: &[u8]) -> Option<(usize, u32)> {
    let from = usize::from(*d.get(1)?);
    let seq = u32::from_be_bytes(d.get(2..6)?.try_into().ok()?);
    (app_datagram(from, seq) == d).then_some((from, seq))
}
