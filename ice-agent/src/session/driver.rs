//! The session's task: gathering (STUN Binding transactions, TURN
//! clients), the ICE agent, and the socket's route. Everything it drives is
//! sans-IO; this file only moves datagrams and time between them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_proto::binding::RequestOptions;
use natkit_proto::demux::{classify, PacketKind};
use natkit_proto::transaction::{self, BindingOutcome, BindingTransaction};
use natkit_proto::turn::client::{self as turn, Client, Transport};
use quinn::VarInt;
use tokio::sync::{broadcast, mpsc, watch};

use super::error::{Problem, ServerProblem};
use super::socket::{IceSocket, Inbound, Route};
use super::stream::{self, StreamEvent};
use super::{Command, PathInfo, SessionConfig, SessionEvent, Status, CLOSE_CONSENT_LOST};
use crate::candidate::local_preference;
use crate::description::{Description, SignalledCandidate, TrickleCandidate};
use crate::{Agent, Candidate, Event, SelectedPair};

/// Retransmissions for gathering requests: a STUN or TURN server that has
/// not answered within about 4 s is reported unreachable (RFC 8489 §6.2.1
/// allows a shorter budget than 39.5 s; gathering must not hold up a
/// connection that host candidates can make).
const GATHER_RTO: transaction::Config = transaction::Config {
    rto: Duration::from_millis(250),
    rc: 5,
    rm: 8,
};

/// The most a restart waits for gathering before its description is
/// given (see [`Driver::restart`]).
const RESTART_GATHER: Duration = Duration::from_secs(2);

/// How long a closing session keeps its TURN allocations, so that QUIC's
/// CONNECTION_CLOSE can still cross the relay.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// One STUN server asked from one base.
struct Probe {
    base: usize,
    server: SocketAddr,
    tx: BindingTransaction,
    done: bool,
}

/// One TURN allocation.
struct Alloc {
    /// Unique for the session: names the allocation in stream events.
    id: u64,
    server: super::TurnServer,
    client: Client,
    /// UDP: the base the allocation was made from.
    base: Option<usize>,
    /// TCP/TLS: the stream writer's queue.
    stream: Option<mpsc::Sender<Vec<u8>>>,
    relayed: Vec<SocketAddr>,
    /// Bound channels, by peer.
    bound: HashMap<SocketAddr, u16>,
    done: bool,
}

pub(super) struct Parts {
    pub agent: Agent,
    pub sock: Arc<IceSocket>,
    pub endpoint: quinn::Endpoint,
    pub cfg: SessionConfig,
    pub inbound: mpsc::Receiver<Inbound>,
    pub cmds: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<SessionEvent>,
    pub status: watch::Sender<Status>,
    pub now: Instant,
}

pub(super) struct Driver {
    agent: Agent,
    sock: Arc<IceSocket>,
    endpoint: quinn::Endpoint,
    cfg: SessionConfig,
    inbound: mpsc::Receiver<Inbound>,
    cmds: mpsc::Receiver<Command>,
    events: broadcast::Sender<SessionEvent>,
    status: watch::Sender<Status>,
    stream_tx: mpsc::Sender<StreamEvent>,
    stream_rx: mpsc::Receiver<StreamEvent>,
    probes: Vec<Probe>,
    allocs: Vec<Alloc>,
    gather_deadline: Instant,
    gathering_done: bool,
    selected: Option<SelectedPair>,
    known_remote: usize,
    restart_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    next_alloc_id: u64,
    /// Where relayed QUIC came from before a pair was selected: (our
    /// relayed base, the peer).
    relay_reply: Option<(SocketAddr, SocketAddr)>,
    /// Set by [`Command::Close`]: when to delete the allocations and stop.
    closing: Option<Instant>,
    /// The command channel closed (every `Session` handle dropped).
    orphaned: bool,
    /// The last time the selected path answered a check; survives ICE
    /// restarts, which reset the agent's own consent state.
    heard_at: Option<Instant>,
    /// `heard_at` of the silence already reported as consent lost.
    consent_lost_reported: Option<Instant>,
    /// When ICE last started checking (remote description or restart).
    checking_since: Instant,
    /// Consent time of the silence already reported as degraded.
    degraded_reported: Option<Instant>,
    scratch: Vec<u8>,
}

impl Driver {
    pub(super) fn new(p: Parts) -> Driver {
        let (stream_tx, stream_rx) = mpsc::channel(1024);
        let mut d = Driver {
            agent: p.agent,
            sock: p.sock,
            endpoint: p.endpoint,
            gather_deadline: p.now + p.cfg.gather_timeout,
            cfg: p.cfg,
            inbound: p.inbound,
            cmds: p.cmds,
            events: p.events,
            status: p.status,
            stream_tx,
            stream_rx,
            probes: Vec::new(),
            allocs: Vec::new(),
            gathering_done: false,
            selected: None,
            known_remote: 0,
            restart_waiters: Vec::new(),
            next_alloc_id: 0,
            relay_reply: None,
            degraded_reported: None,
            checking_since: p.now,
            closing: None,
            orphaned: false,
            heard_at: None,
            consent_lost_reported: None,
            scratch: vec![0u8; 65536 + 64],
        };
        d.start_gathering(p.now);
        d
    }

    /// RFC 8445 §5.1.1: host candidates at once, then server-reflexive and
    /// relayed ones from every server.
    fn start_gathering(&mut self, now: Instant) {
        let bases: Vec<SocketAddr> = self.sock.bases().iter().map(|b| b.addr).collect();
        if !self.cfg.relay_only {
            for (i, a) in bases.iter().enumerate() {
                let pref = local_preference(a.ip(), i as u16);
                self.add_local(Candidate::host(*a, pref));
            }
        }
        self.start_probes(now);
        for t in self.cfg.turn.clone() {
            self.start_alloc(t, now);
        }
    }

    fn start_probes(&mut self, now: Instant) {
        self.probes.clear();
        if self.cfg.relay_only {
            return;
        }
        let bases: Vec<SocketAddr> = self.sock.bases().iter().map(|b| b.addr).collect();
        for server in self.cfg.stun.clone() {
            for (bi, b) in bases.iter().enumerate() {
                if b.is_ipv4() != server.is_ipv4()
                    || b.ip().is_loopback() != server.ip().is_loopback()
                {
                    continue;
                }
                let opts = RequestOptions {
                    fingerprint: true,
                    ..RequestOptions::default()
                };
                self.probes.push(Probe {
                    base: bi,
                    server,
                    tx: BindingTransaction::new(now, server, &opts, GATHER_RTO),
                    done: false,
                });
            }
        }
    }

    fn start_alloc(&mut self, server: super::TurnServer, now: Instant) {
        let mut tc = turn::Config::new(server.addr, server.transport, server.credentials.clone());
        tc.transaction = GATHER_RTO;
        tc.family = if server.addr.is_ipv4() {
            turn::AddressFamily::V4
        } else {
            turn::AddressFamily::V6
        };
        let id = self.next_alloc_id;
        self.next_alloc_id += 1;
        let (base, stream) = match server.transport {
            Transport::Udp => {
                let base = self.sock.bases().iter().position(|b| {
                    b.addr.is_ipv4() == server.addr.is_ipv4()
                        && b.addr.ip().is_loopback() == server.addr.ip().is_loopback()
                });
                if base.is_none() {
                    self.problem(ServerProblem {
                        server: server.addr,
                        kind: server.kind(),
                        problem: Problem::Unreachable(
                            "no local address of the server's family".into(),
                        ),
                    });
                    return;
                }
                (base, None)
            }
            Transport::Tcp | Transport::Tls => {
                let tx = stream::spawn(
                    id,
                    server.addr,
                    server.tls.clone(),
                    GATHER_RTO.budget(),
                    self.stream_tx.clone(),
                );
                (None, Some(tx))
            }
        };
        self.allocs.push(Alloc {
            id,
            client: Client::new(tc, now),
            server,
            base,
            stream,
            relayed: Vec::new(),
            bound: HashMap::new(),
            done: false,
        });
    }

    pub(super) async fn run(mut self) {
        loop {
            self.flush(Instant::now());
            let wake = self.next_timeout();
            tokio::select! {
                m = self.inbound.recv() => {
                    let Some(m) = m else { break };
                    let now = Instant::now();
                    self.on_inbound(m, now);
                    // Drain what else is queued before flushing once.
                    while let Ok(m) = self.inbound.try_recv() {
                        self.on_inbound(m, now);
                    }
                }
                c = self.cmds.recv(), if !self.orphaned => {
                    match c {
                        // Every Session handle is gone: close as if asked.
                        None => {
                            self.orphaned = true;
                            self.closing.get_or_insert(Instant::now() + CLOSE_GRACE);
                        }
                        Some(c) => self.on_command(c, Instant::now()),
                    }
                }
                Some(s) = self.stream_rx.recv() => self.on_stream(s, Instant::now()),
                _ = tokio::time::sleep_until(wake.into()) => self.on_timeout(Instant::now()),
            }
            if self.closing.is_some_and(|t| Instant::now() >= t) {
                self.close_allocations(Instant::now());
                break;
            }
        }
        self.status.send_modify(|s| s.closed = true);
    }

    fn next_timeout(&self) -> Instant {
        let mut t = Instant::now() + Duration::from_secs(3600);
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        take(self.agent.poll_timeout());
        for p in self.probes.iter().filter(|p| !p.done) {
            take(p.tx.poll_timeout());
        }
        for a in &self.allocs {
            take(a.client.poll_timeout());
        }
        if !self.gathering_done {
            take(Some(self.gather_deadline));
        }
        take(self.closing);
        if let Some(last) = self.heard_at {
            if self.consent_lost_reported != Some(last) {
                take(Some(last + self.cfg.ice.consent_timeout));
            }
        }
        if let Some(last) = self.agent.last_consent() {
            if self.degraded_reported != Some(last) {
                take(Some(last + self.degraded_after()));
            }
        }
        t
    }

    fn degraded_after(&self) -> Duration {
        self.cfg
            .degraded_after
            .unwrap_or(self.cfg.ice.consent_interval.mul_f64(2.5))
    }

    /// RFC 7675 §5.1 across ICE restarts: the agent forgets consent when it
    /// restarts, but the peer must still answer within the consent timeout
    /// of the last answer, or the session ends as consent lost (a restart
    /// that gets no answer would otherwise leave only QUIC's idle timeout).
    fn note_heard(&mut self) {
        if let Some(last) = self.agent.last_consent() {
            self.heard_at = Some(self.heard_at.map_or(last, |h| h.max(last)));
        }
    }

    fn check_silence(&mut self, now: Instant) {
        self.note_heard();
        let Some(heard) = self.heard_at else { return };
        if self.agent.last_consent().is_some()
            || now < heard + self.cfg.ice.consent_timeout
            || self.consent_lost_reported == Some(heard)
        {
            return;
        }
        self.consent_lost_reported = Some(heard);
        if let Some(sp) = self.selected.clone() {
            self.on_agent_event(Event::ConsentLost(sp), now);
        }
    }

    /// Raise [`SessionEvent::PathDegraded`] once per silence.
    fn check_degraded(&mut self, now: Instant) {
        self.check_silence(now);
        let Some(last) = self.agent.last_consent() else {
            return;
        };
        let silent_for = now.saturating_duration_since(last);
        if silent_for < self.degraded_after() || self.degraded_reported == Some(last) {
            return;
        }
        self.degraded_reported = Some(last);
        if let Some(sp) = self.selected.clone() {
            // A path through our own relay may have gone silent because the
            // relay did: ask it now (a Refresh) rather than at its next
            // scheduled refresh minutes away; no answer, or a 437, reports
            // the relay lost.
            if let Some(a) = self
                .allocs
                .iter_mut()
                .find(|a| a.relayed.contains(&sp.local.base))
            {
                a.client.refresh_now(now);
            }
            let path = PathInfo::new(sp.local, sp.remote, sp.rtt);
            tracing::info!(%path, ?silent_for, "path degraded: consent checks unanswered");
            let _ = self
                .events
                .send(SessionEvent::PathDegraded { path, silent_for });
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        self.check_degraded(now);
        for p in self.probes.iter_mut().filter(|p| !p.done) {
            if p.tx.poll_timeout().is_some_and(|t| t <= now) {
                p.tx.handle_timeout(now);
            }
        }
        for a in &mut self.allocs {
            if a.client.poll_timeout().is_some_and(|t| t <= now) {
                a.client.handle_timeout(now);
            }
        }
    }

    fn on_inbound(&mut self, m: Inbound, now: Instant) {
        match m {
            Inbound::Datagram { base, from, data } => self.on_datagram(base, from, &data, now),
            Inbound::Outgoing(data) => {
                // quinn's datagram for a relayed pair whose channel is not
                // bound yet: a Send indication (RFC 8656 §11).
                let path = self
                    .selected
                    .as_ref()
                    .map(|sp| (sp.local.base, sp.remote.addr))
                    .or(self.relay_reply);
                if let Some((base, to)) = path {
                    self.send_via_relay(base, to, &data, now);
                }
            }
        }
    }

    fn on_datagram(&mut self, base: usize, from: SocketAddr, data: &[u8], now: Instant) {
        let turn = self
            .allocs
            .iter()
            .position(|a| a.base == Some(base) && a.server.addr == from);
        // Closing: only the TURN servers' answers to our deletions matter
        // (`on_turn_message` takes only those); ICE checks go unanswered, as
        // from a gone peer.
        if self.closing.is_none() {
            // STUN server answers for gathering.
            for p in self.probes.iter_mut().filter(|p| p.base == base && !p.done) {
                if p.server == from && p.tx.handle_datagram(now, from, data) {
                    return;
                }
            }
        }
        // TURN over UDP: responses and peer data.
        if let Some(ai) = turn {
            self.on_turn_message(ai, data, now);
        } else if self.closing.is_none() {
            let local = self.sock.bases()[base].addr;
            self.deliver(from, local, data, now);
        }
    }

    /// A message from TURN allocation `ai`'s server.
    fn on_turn_message(&mut self, ai: usize, data: &[u8], now: Instant) {
        let a = &mut self.allocs[ai];
        if self.closing.is_some() {
            a.client.handle_input(data, now);
            return;
        }
        let Some(relayed) = a.relayed.first().copied() else {
            a.client.handle_input(data, now);
            return;
        };
        // The peer data is borrowed from `data`, not copied.
        if let Some(d) = a.client.recv(data, now) {
            let relayed = a.client.relayed_address_for(d.peer).unwrap_or(relayed);
            self.deliver(d.peer, relayed, d.data, now);
        }
    }

    /// A datagram from `from` on local base `local` (a host or relayed
    /// address): ICE checks to the agent, QUIC to quinn.
    fn deliver(&mut self, from: SocketAddr, local: SocketAddr, data: &[u8], now: Instant) {
        match classify(data, false) {
            PacketKind::Stun => {
                if let Err(e) = self.agent.handle_input(from, local, data, now) {
                    tracing::trace!(%from, error = %e, "datagram not used by ICE");
                }
                self.sync_peers();
            }
            // QUIC that only the driver could unwrap (Data indications,
            // TCP/TLS relays) or from an address learned a moment ago.
            PacketKind::Quic
                if self
                    .agent
                    .remote_candidates()
                    .iter()
                    .any(|c| c.addr == from) =>
            {
                self.sock.add_peer(from);
                let via = match self.sock.bases().iter().position(|b| b.addr == local) {
                    Some(base) => Route::Direct { base, to: from },
                    None => {
                        self.relay_reply = Some((local, from));
                        Route::Driver
                    }
                };
                self.sock.inject(data.to_vec(), via);
            }
            _ => {}
        }
    }

    /// Peer-reflexive remote candidates become addresses quinn accepts.
    fn sync_peers(&mut self) {
        let rc = self.agent.remote_candidates();
        if rc.len() != self.known_remote {
            for c in rc {
                self.sock.add_peer(c.addr);
            }
            self.known_remote = rc.len();
        }
    }

    fn on_stream(&mut self, s: StreamEvent, now: Instant) {
        let id = match &s {
            StreamEvent::Up { alloc }
            | StreamEvent::Frame { alloc, .. }
            | StreamEvent::Down { alloc, .. } => *alloc,
        };
        // Events of an allocation replaced by a restart are dropped.
        let Some(alloc) = self.allocs.iter().position(|a| a.id == id) else {
            return;
        };
        match s {
            StreamEvent::Up { .. } => tracing::debug!(alloc, "TURN stream connected"),
            StreamEvent::Frame { frame, .. } => self.on_turn_message(alloc, &frame, now),
            StreamEvent::Down { error, .. } => {
                let a = &mut self.allocs[alloc];
                a.stream = None;
                let was_done = a.done;
                a.done = true;
                let (server, kind) = (a.server.addr, a.server.kind());
                let p = ServerProblem {
                    server,
                    kind,
                    problem: Problem::Unreachable(error),
                };
                if !was_done {
                    self.problem(p);
                } else {
                    tracing::info!("TURN connection lost: {p}");
                    self.relay_lost(alloc, p);
                }
            }
        }
    }

    /// RFC 8656 §8: delete the allocations rather than leave them to
    /// expire on the server (one Refresh with LIFETIME 0 each, not waited
    /// for: the session is ending).
    fn close_allocations(&mut self, now: Instant) {
        for ai in 0..self.allocs.len() {
            self.allocs[ai].client.close(now);
            while let Some(t) = self.allocs[ai].client.poll_transmit() {
                self.send_to_server(ai, &t.payload);
            }
        }
    }

    fn on_command(&mut self, c: Command, now: Instant) {
        match c {
            // QUIC's CONNECTION_CLOSE may still have to cross our relay:
            // delete the allocations a moment later (see `run`).
            Command::Close => {
                self.closing.get_or_insert(now + CLOSE_GRACE);
            }
            Command::SetRemote { desc, reply } => {
                let r = self.set_remote(desc, now);
                let _ = reply.send(r);
            }
            Command::AddRemote(t) => {
                if t.ufrag
                    != self
                        .agent
                        .remote_credentials()
                        .map(|c| c.ufrag.clone())
                        .unwrap_or_default()
                {
                    tracing::debug!("trickled candidate of another ICE generation ignored");
                    return;
                }
                match t.candidate {
                    Some(c) => self.add_remote(&c, now),
                    None => self.agent.end_of_remote_candidates(),
                }
            }
            Command::Restart { reply } => {
                self.restart(now);
                self.restart_waiters.push(reply);
            }
            Command::CheckList(reply) => {
                let _ = reply.send(self.agent.check_list());
            }
        }
    }

    fn set_remote(&mut self, desc: Description, now: Instant) -> Result<bool, super::Error> {
        let mut restarted = false;
        self.checking_since = now;
        if let Some(cur) = self.agent.remote_credentials() {
            if cur.ufrag == desc.ufrag && cur.pwd == desc.pwd {
                // The same description again: only new candidates matter.
                for c in &desc.candidates {
                    self.add_remote(c, now);
                }
                return Ok(false);
            }
            // RFC 8445 §9: new credentials from the peer mean it restarted
            // ICE; restart too and answer with our new description.
            self.restart(now);
            restarted = true;
        }
        self.agent
            .set_remote_credentials(&desc.ufrag, &desc.pwd)
            .map_err(|e| super::Error::Description(e.into()))?;
        for c in &desc.candidates {
            self.add_remote(c, now);
        }
        if desc.end_of_candidates {
            self.agent.end_of_remote_candidates();
        }
        Ok(restarted)
    }

    fn add_remote(&mut self, c: &SignalledCandidate, now: Instant) {
        self.sock.add_peer(c.addr);
        if let Err(e) = self.agent.add_remote_candidate(c.to_remote()) {
            tracing::debug!(candidate = %c, error = %e, "remote candidate not used");
            return;
        }
        // RFC 8656 §9: relayed bases can only reach peers with a permission.
        for a in &mut self.allocs {
            if !a.relayed.is_empty() && a.relayed.iter().any(|r| r.is_ipv4() == c.addr.is_ipv4()) {
                let _ = a.client.create_permission(c.addr, now);
            }
        }
    }

    fn restart(&mut self, now: Instant) {
        // Remember when the path last answered: the restart forgets it.
        self.note_heard();
        let creds = self.agent.restart().clone();
        self.known_remote = 0;
        // New mappings may exist after a network change: ask again. Failed
        // allocations are tried again too.
        self.start_probes(now);
        let failed: Vec<usize> = (0..self.allocs.len())
            .filter(|&i| {
                matches!(
                    self.allocs[i].client.state(),
                    turn::State::Failed | turn::State::Closed
                )
            })
            .collect();
        for i in failed.into_iter().rev() {
            let a = self.allocs.remove(i);
            self.start_alloc(a.server, now);
        }
        self.gathering_done = false;
        self.checking_since = now;
        // A restart is urgent (the path may be dead): the new description
        // goes out after at most 2 s of gathering; later candidates trickle.
        self.gather_deadline = now + self.cfg.gather_timeout.min(RESTART_GATHER);
        let local = self.agent.local_candidates().to_vec();
        self.status.send_modify(|s| {
            s.ufrag = creds.ufrag;
            s.pwd = creds.pwd;
            s.local = local;
            s.gathering_done = false;
            s.failed = None;
            s.consent_lost = None;
        });
    }

    fn add_local(&mut self, c: Candidate) {
        match self.agent.add_local_candidate(c.clone()) {
            Ok(()) => {
                tracing::debug!(candidate = %c, "local candidate");
                let ufrag = self.agent.local_credentials().ufrag.clone();
                let _ = self.events.send(SessionEvent::Candidate(TrickleCandidate {
                    ufrag,
                    candidate: Some(SignalledCandidate::from_local(&c)),
                }));
                let local = self.agent.local_candidates().to_vec();
                self.status.send_modify(|s| s.local = local);
            }
            Err(e) => tracing::debug!(candidate = %c, error = %e, "local candidate not added"),
        }
    }

    /// Allocation `ai` is gone. If the selected path runs through it, say
    /// so: the peer will stop hearing us there, and the application learns
    /// why (an ICE restart allocates again).
    fn relay_lost(&mut self, ai: usize, p: ServerProblem) {
        let Some(sp) = &self.selected else { return };
        if !self.allocs[ai].relayed.contains(&sp.local.base) {
            return;
        }
        let _ = self.events.send(SessionEvent::ServerProblem(p.clone()));
        self.status.send_modify(|s| s.relay_lost = Some(p));
    }

    fn problem(&mut self, p: ServerProblem) {
        tracing::debug!("{p}");
        let _ = self.events.send(SessionEvent::ServerProblem(p.clone()));
        // One entry per server: a later, more precise answer (a 401 after
        // "no answer yet") replaces the earlier one.
        self.status.send_modify(|s| {
            match s
                .problems
                .iter_mut()
                .find(|q| q.server == p.server && q.kind == p.kind)
            {
                Some(q) => *q = p,
                None => s.problems.push(p),
            }
        });
    }

    /// Send what the state machines queued, act on their events.
    fn flush(&mut self, now: Instant) {
        self.flush_probes();
        self.flush_allocs(now);
        self.flush_agent(now);
        self.check_gathering(now);
    }

    fn flush_probes(&mut self) {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for p in self.probes.iter_mut().filter(|p| !p.done) {
            while let Some(t) = p.tx.poll_transmit() {
                let _ = self.sock.bases()[p.base].try_send_to(&t.payload, t.to);
            }
            let Some(o) = p.tx.outcome() else { continue };
            p.done = true;
            let base = self.sock.bases()[p.base].addr;
            match o {
                BindingOutcome::Answered { response, .. } => {
                    match (response.outcome, response.mapped) {
                        (Ok(()), Some(mapped)) => found.push((mapped, base, p.server, p.base)),
                        (Ok(()), None) => problems.push(ServerProblem {
                            server: p.server,
                            kind: "stun",
                            problem: Problem::Refused("no mapped address in the response".into()),
                        }),
                        (Err(code), _) => problems.push(ServerProblem {
                            server: p.server,
                            kind: "stun",
                            problem: Problem::Refused(format!("error {code}")),
                        }),
                    }
                }
                BindingOutcome::TimedOut { waited, sent } => problems.push(ServerProblem {
                    server: p.server,
                    kind: "stun",
                    problem: Problem::Unreachable(format!(
                        "no answer to {sent} requests in {:.1} s",
                        waited.as_secs_f64()
                    )),
                }),
            }
        }
        for (mapped, base, server, bi) in found {
            if mapped != base {
                let pref = local_preference(base.ip(), bi as u16);
                self.add_local(Candidate::server_reflexive(mapped, base, server.ip(), pref));
            }
        }
        for p in problems {
            self.problem(p);
        }
    }

    fn send_to_server(&mut self, ai: usize, payload: &[u8]) {
        let a = &self.allocs[ai];
        if let Some(b) = a.base {
            let _ = self.sock.bases()[b].try_send_to(payload, a.server.addr);
        } else if let Some(tx) = &a.stream {
            let _ = tx.try_send(payload.to_vec());
        }
    }

    fn flush_allocs(&mut self, now: Instant) {
        for ai in 0..self.allocs.len() {
            while let Some(t) = self.allocs[ai].client.poll_transmit() {
                self.send_to_server(ai, &t.payload);
            }
            while let Some(e) = self.allocs[ai].client.poll_event() {
                self.on_turn_event(ai, e, now);
            }
            // Events may have queued requests (permissions, channels).
            while let Some(t) = self.allocs[ai].client.poll_transmit() {
                self.send_to_server(ai, &t.payload);
            }
        }
    }

    fn on_turn_event(&mut self, ai: usize, e: turn::Event, now: Instant) {
        let (server, kind) = (self.allocs[ai].server.addr, self.allocs[ai].server.kind());
        match e {
            turn::Event::Allocated {
                relayed, mapped, ..
            } => {
                self.allocs[ai].relayed = relayed.clone();
                self.allocs[ai].done = true;
                // A relay lost earlier serves us again (a restart allocated
                // anew): no longer a reason to end the session.
                self.status.send_if_modified(|s| {
                    let back = s.relay_lost.as_ref().is_some_and(|p| p.server == server);
                    if back {
                        s.relay_lost = None;
                    }
                    back
                });
                let host_ip = match self.allocs[ai].base {
                    Some(b) => self.sock.bases()[b].addr.ip(),
                    None => mapped.ip(),
                };
                for (i, r) in relayed.iter().enumerate() {
                    let pref = local_preference(r.ip(), (ai * 2 + i) as u16);
                    self.add_local(Candidate::relayed(*r, mapped, host_ip, server.ip(), pref));
                }
                // RFC 8445 §5.1.1.2: the mapped address a TURN server
                // reports is a server-reflexive candidate too.
                if let (Some(b), false) = (self.allocs[ai].base, self.cfg.relay_only) {
                    let base = self.sock.bases()[b].addr;
                    if mapped != base {
                        let pref = local_preference(base.ip(), b as u16);
                        self.add_local(Candidate::server_reflexive(
                            mapped,
                            base,
                            server.ip(),
                            pref,
                        ));
                    }
                }
                let peers: Vec<SocketAddr> = self
                    .agent
                    .remote_candidates()
                    .iter()
                    .map(|c| c.addr)
                    .collect();
                for p in peers {
                    let _ = self.allocs[ai].client.create_permission(p, now);
                }
            }
            turn::Event::Failed(err) => {
                let was_done = self.allocs[ai].done;
                self.allocs[ai].done = true;
                let p = ServerProblem::from_turn(server, kind, &err);
                if was_done {
                    tracing::info!("TURN allocation lost: {p}");
                    self.relay_lost(ai, p);
                } else {
                    self.problem(p);
                }
            }
            turn::Event::ChannelBound { peer, channel } => {
                self.allocs[ai].bound.insert(peer, channel);
                self.sock.add_relay_in(server, channel);
                if let Some(sp) = self.selected.clone() {
                    if sp.remote.addr == peer && self.allocs[ai].relayed.contains(&sp.local.base) {
                        let route = self.route_for(&sp, now);
                        self.sock.set_route(Some(route));
                    }
                }
            }
            turn::Event::ChannelFailed { peer, error, .. } => {
                tracing::debug!(%peer, %error, "TURN channel bind failed; data goes in Send indications");
                self.allocs[ai].bound.remove(&peer);
            }
            turn::Event::PermissionFailed { peers, error } => {
                tracing::debug!(?peers, %error, "TURN permission refused");
            }
            turn::Event::Data { peer, data } => {
                let relayed = self.allocs[ai].relayed.first().copied();
                if let Some(r) = relayed {
                    self.deliver(peer, r, &data, now);
                }
            }
            turn::Event::Refreshed { .. }
            | turn::Event::PermissionCreated { .. }
            | turn::Event::Closed => {}
        }
    }

    /// Send `data` from relayed base `base` to `to` through its TURN
    /// allocation.
    fn send_via_relay(&mut self, base: SocketAddr, to: SocketAddr, data: &[u8], now: Instant) {
        let Some(ai) = self.allocs.iter().position(|a| a.relayed.contains(&base)) else {
            return;
        };
        let c = &mut self.allocs[ai].client;
        if !c.has_permission(to) {
            let _ = c.create_permission(to, now);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        match self.allocs[ai].client.send_to(to, data, &mut scratch) {
            Ok(n) => self.send_to_server(ai, &scratch[..n]),
            Err(e) => tracing::debug!(%to, error = %e, "cannot relay"),
        }
        self.scratch = scratch;
        while let Some(t) = self.allocs[ai].client.poll_transmit() {
            self.send_to_server(ai, &t.payload);
        }
    }

    fn flush_agent(&mut self, now: Instant) {
        self.send_agent_transmits(now);
        while let Some(e) = self.agent.poll_event() {
            self.on_agent_event(e, now);
        }
        self.note_heard();
        // Events (role changes) may queue more.
        self.send_agent_transmits(now);
    }

    /// The agent's checks and answers: from a host base directly, from a
    /// relayed base through its TURN allocation.
    fn send_agent_transmits(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_transmit() {
            if let Some(b) = self.sock.bases().iter().find(|b| b.addr == t.from) {
                let _ = b.try_send_to(&t.payload, t.to);
            } else {
                self.send_via_relay(t.from, t.to, &t.payload, now);
            }
        }
    }

    fn route_for(&mut self, sp: &SelectedPair, now: Instant) -> Route {
        if let Some(base) = self
            .sock
            .bases()
            .iter()
            .position(|b| b.addr == sp.local.base)
        {
            return Route::Direct {
                base,
                to: sp.remote.addr,
            };
        }
        let peer = sp.remote.addr;
        let Some(ai) = self
            .allocs
            .iter()
            .position(|a| a.relayed.contains(&sp.local.base))
        else {
            return Route::Driver;
        };
        let a = &mut self.allocs[ai];
        match a.bound.get(&peer) {
            Some(&channel) => match (a.base, &a.stream) {
                (Some(base), _) => Route::RelayUdp {
                    base,
                    server: a.server.addr,
                    channel,
                },
                (None, Some(tx)) => Route::RelayStream {
                    tx: tx.clone(),
                    channel,
                },
                (None, None) => Route::Driver,
            },
            None => {
                // RFC 8656 §12: a channel makes relayed QUIC 4 bytes of
                // overhead instead of 36; Send indications until it is bound.
                if a.client.channel_for(peer).is_none() {
                    if let Err(e) = a.client.bind_channel(peer, now) {
                        tracing::debug!(%peer, error = %e, "no channel; Send indications");
                    }
                }
                Route::Driver
            }
        }
    }

    fn on_agent_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected(sp) | Event::SelectedPairChanged(sp) => {
                let first = self.selected.is_none();
                let route = self.route_for(&sp, now);
                tracing::debug!(pair = %sp, "selected pair");
                self.sock.set_route(Some(route));
                self.selected = Some(sp.clone());
                let info = PathInfo::new(sp.local.clone(), sp.remote.clone(), sp.rtt);
                let role = self.agent.role();
                self.status.send_modify(|s| {
                    s.path = Some(info.clone());
                    s.role = role;
                    s.consent_lost = None;
                    s.relay_lost = None;
                });
                let _ = self.events.send(if first {
                    SessionEvent::Connected(info)
                } else {
                    SessionEvent::PathChanged(info)
                });
            }
            Event::ConsentLost(sp) => {
                self.consent_lost_reported = self.heard_at;
                let info = PathInfo::new(sp.local, sp.remote, sp.rtt);
                tracing::info!(path = %info, "consent lost");
                // The reason first: whoever sees the connection close can
                // then read why at once.
                self.status
                    .send_modify(|s| s.consent_lost = Some(info.clone()));
                self.endpoint
                    .close(VarInt::from_u32(CLOSE_CONSENT_LOST), b"ICE consent lost");
                let _ = self.events.send(SessionEvent::ConsentLost(info));
            }
            Event::Failed(pairs) => {
                let after = now.saturating_duration_since(self.checking_since);
                self.status.send_modify(|s| {
                    s.failed = Some(pairs.clone());
                    s.failed_after = after;
                });
                let _ = self.events.send(SessionEvent::Failed(pairs));
            }
            Event::RoleChanged(role) => {
                self.status.send_modify(|s| s.role = role);
            }
            Event::PeerReflexiveCandidate(_) => {}
        }
    }

    fn check_gathering(&mut self, now: Instant) {
        if self.gathering_done {
            return;
        }
        let all = self.probes.iter().all(|p| p.done) && self.allocs.iter().all(|a| a.done);
        if !all && now < self.gather_deadline {
            return;
        }
        self.gathering_done = true;
        if !all {
            // Servers still unanswered at the deadline are named now, so an
            // empty description says why; a late answer still trickles.
            let wait = format!(
                "no answer within the gathering timeout ({:.1} s)",
                self.cfg.gather_timeout.as_secs_f64()
            );
            let mut pending: Vec<ServerProblem> = self
                .probes
                .iter()
                .filter(|p| !p.done)
                .map(|p| ServerProblem {
                    server: p.server,
                    kind: "stun",
                    problem: Problem::Unreachable(wait.clone()),
                })
                .collect();
            pending.dedup_by_key(|p| p.server);
            pending.extend(
                self.allocs
                    .iter()
                    .filter(|a| !a.done)
                    .map(|a| ServerProblem {
                        server: a.server.addr,
                        kind: a.server.kind(),
                        problem: Problem::Unreachable(wait.clone()),
                    }),
            );
            for p in pending {
                self.problem(p);
            }
        }
        self.agent.end_of_local_candidates();
        let ufrag = self.agent.local_credentials().ufrag.clone();
        let local = self.agent.local_candidates().to_vec();
        self.status.send_modify(|s| {
            s.gathering_done = true;
            s.local = local;
        });
        let _ = self.events.send(SessionEvent::Candidate(TrickleCandidate {
            ufrag,
            candidate: None,
        }));
        let _ = self.events.send(SessionEvent::GatheringDone);
        for w in self.restart_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}
