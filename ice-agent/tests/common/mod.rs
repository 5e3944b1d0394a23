//! A deterministic simulated network for driving two agents: links with
//! delay and loss, optional NATs with RFC 4787 mapping and filtering
//! behaviours, and a simulated clock. No sockets, no real time.

#![allow(dead_code)]

pub mod gateway;
mod nat;

pub use nat::{Filtering, Mapping, Nat};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natkit_ice::{
    Agent, Candidate, CandidateKind, Config, Event, PairInfo, PairState, Role, SelectedPair,
    Transmit,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Packet {
    at: Instant,
    seq: u64,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// One simulated host: an agent, its interface addresses, maybe a NAT.
pub struct Node {
    pub agent: Agent,
    pub hosts: Vec<SocketAddr>,
    pub nat: Option<Nat>,
    /// Relayed addresses: a stand-in for TURN allocations. Packets from
    /// these bases leave from the relay (no NAT on the way); packets to them
    /// reach the node, as a TURN client's Data indications would.
    pub relays: Vec<SocketAddr>,
    /// A vanished node neither sends nor receives.
    pub down: bool,
    /// Events with the simulated time they were seen at.
    pub events: Vec<(Duration, Event)>,
    /// Datagrams the agent refused (handle_input errors).
    pub refused: usize,
}

/// Two agents on a simulated network.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub nodes: [Node; 2],
    pub delay: Duration,
    pub loss: f64,
    rng: StdRng,
    inflight: Vec<Packet>,
    seq: u64,
    pub delivered: u64,
    /// Drops the datagrams it returns true for, given their source (after
    /// NAT), destination and payload: losses aimed at chosen messages.
    pub drop_if: Option<DropFilter>,
    /// Gives the datagrams it returns an address for that source instead
    /// of their own (after NAT), given their source, destination and
    /// payload: answers from an unexpected address, as from a multihomed
    /// or misbehaving peer.
    pub spoof_source: Option<SourceFilter>,
    /// `(relayed, seen)`: what a relayed address sends arrives from `seen`,
    /// and what is sent to `seen` reaches the relayed address, as through a
    /// NAT before the peer that rewrote the relay's port (Linux conntrack
    /// resolving a clash with a port mapping's flow).
    pub relay_port_rewrite: Option<(SocketAddr, SocketAddr)>,
}

/// See [`Sim::drop_if`].
pub type DropFilter = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> bool>;

/// See [`Sim::spoof_source`].
pub type SourceFilter = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) -> Option<SocketAddr>>;

/// A config for tests: reproducible randomness.
pub fn config(role: Role, seed: u64) -> Config {
    Config {
        role,
        seed: Some(seed),
        ..Config::default()
    }
}

/// Both agents' selected pairs are the two ends of one path: each side's
/// local address is the other's remote address.
pub fn assert_same_path(a: &SelectedPair, b: &SelectedPair) {
    assert_eq!(a.local.addr, b.remote.addr, "A local vs B remote");
    assert_eq!(a.remote.addr, b.local.addr, "A remote vs B local");
}

/// Checking is over for this check list: every pair succeeded or failed
/// and no check (a nomination included) is in flight. The controlling agent
/// nominates a better succeeded pair at once when no better one is pending,
/// so from then on its selection is final.
pub fn checking_over(list: &[PairInfo]) -> bool {
    list.iter()
        .all(|p| matches!(p.state, PairState::Succeeded | PairState::Failed) && p.in_flight == 0)
}

/// Node `i`'s selected pair now.
pub fn final_selected(sim: &Sim, i: usize) -> SelectedPair {
    sim.nodes[i].agent.selected_pair().expect("selected pair")
}

impl Sim {
    /// Two agents with the given configs and host addresses; `nats` puts
    /// NATs in front of them.
    pub fn new(cfgs: [Config; 2], hosts: [&[&str]; 2], nats: [Option<Nat>; 2], seed: u64) -> Self {
        let start = Instant::now();
        let [ca, cb] = cfgs;
        let [na, nb] = nats;
        let mk = |cfg: Config, hosts: &[&str], nat: Option<Nat>| {
            let mut agent = Agent::new(cfg, start);
            let hosts: Vec<SocketAddr> = hosts.iter().map(|h| h.parse().unwrap()).collect();
            for (i, h) in hosts.iter().enumerate() {
                let lp = natkit_ice::candidate::local_preference(h.ip(), i as u16);
                agent.add_local_candidate(Candidate::host(*h, lp)).unwrap();
            }
            Node {
                agent,
                hosts,
                nat,
                relays: Vec::new(),
                down: false,
                events: Vec::new(),
                refused: 0,
            }
        };
        Sim {
            start,
            now: start,
            nodes: [mk(ca, hosts[0], na), mk(cb, hosts[1], nb)],
            delay: Duration::from_millis(10),
            loss: 0.0,
            rng: StdRng::seed_from_u64(seed),
            inflight: Vec::new(),
            seq: 0,
            delivered: 0,
            drop_if: None,
            spoof_source: None,
            relay_port_rewrite: None,
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Ask a (simulated) STUN server at `server` what node `i`'s host `host`
    /// maps to, and add the server-reflexive candidate.
    pub fn gather_srflx(&mut self, i: usize, host: SocketAddr, server: SocketAddr) -> Candidate {
        let n = &mut self.nodes[i];
        let mapped = n
            .nat
            .as_mut()
            .expect("server-reflexive candidates need a NAT")
            .outbound(host, server);
        let lp = natkit_ice::candidate::local_preference(host.ip(), 0);
        let c = Candidate::server_reflexive(mapped, host, server.ip(), lp);
        n.agent.add_local_candidate(c.clone()).unwrap();
        c
    }

    /// Give node `i` a relayed candidate at `relayed` on a TURN server at
    /// `server`, allocated from its first host.
    pub fn add_relay(&mut self, i: usize, relayed: SocketAddr, server: SocketAddr) -> Candidate {
        let n = &mut self.nodes[i];
        let host = n.hosts[0];
        let mapped = match &mut n.nat {
            Some(nat) => nat.outbound(host, server),
            None => host,
        };
        let lp = natkit_ice::candidate::local_preference(relayed.ip(), 0);
        let c = Candidate::relayed(relayed, mapped, host.ip(), server.ip(), lp);
        n.agent.add_local_candidate(c.clone()).unwrap();
        n.relays.push(relayed);
        c
    }

    /// Give node `to` the credentials of node `from`.
    pub fn give_credentials(&mut self, from: usize, to: usize) {
        let c = self.nodes[from].agent.local_credentials().clone();
        self.nodes[to]
            .agent
            .set_remote_credentials(&c.ufrag, &c.pwd)
            .unwrap();
    }

    /// Give node `to` the signalled (non-peer-reflexive) candidates of node
    /// `from`, as the peer would receive them.
    pub fn give_candidates(&mut self, from: usize, to: usize, end: bool) {
        self.give_candidates_where(from, to, end, |_| true);
    }

    /// Like [`Sim::give_candidates`], but only those `keep` accepts: the
    /// others stand for candidates the driver could not use at all (e.g.
    /// signalled as mDNS `.local` names it cannot resolve) and skipped.
    pub fn give_candidates_where(
        &mut self,
        from: usize,
        to: usize,
        end: bool,
        keep: impl Fn(&Candidate) -> bool,
    ) {
        let cands: Vec<Candidate> = self.nodes[from]
            .agent
            .local_candidates()
            .iter()
            .filter(|c| c.kind != CandidateKind::PeerReflexive && keep(c))
            .map(|c| {
                let mut r = Candidate::remote(c.kind, c.addr, c.priority, &c.foundation);
                r.related = c.related;
                r
            })
            .collect();
        for c in cands {
            let _ = self.nodes[to].agent.add_remote_candidate(c);
        }
        if end {
            self.nodes[to].agent.end_of_remote_candidates();
        }
    }

    /// Exchange everything both ways, with end-of-candidates.
    pub fn exchange_all(&mut self) {
        self.give_credentials(0, 1);
        self.give_credentials(1, 0);
        self.give_candidates(0, 1, true);
        self.give_candidates(1, 0, true);
    }

    /// Each agent learns what the other announces (its Ta, natkit's
    /// renomination), as natkit's descriptions carry it: natkit peers.
    /// Without this call each takes the other for a standard agent.
    pub fn announce_options(&mut self) {
        for i in 0..2 {
            let o = self.nodes[1 - i].agent.local_ice_options();
            self.nodes[i].agent.set_remote_ice_options(o);
        }
    }

    /// Packet trace on stderr when SIMTRACE is set (debugging aid).
    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if std::env::var_os("SIMTRACE").is_some() {
            eprintln!("{:>12?} {what}", self.now - self.start);
        }
    }

    fn send(&mut self, i: usize, t: Transmit) {
        if self.nodes[i].down {
            return;
        }
        let relayed = self.nodes[i].relays.contains(&t.from);
        assert!(
            relayed || self.nodes[i].hosts.contains(&t.from),
            "agent sent from {} which is not one of its bases",
            t.from
        );
        let mut src = match &mut self.nodes[i].nat {
            Some(nat) if !relayed => nat.outbound(t.from, t.to),
            _ => t.from,
        };
        if let Some((relayed, seen)) = self.relay_port_rewrite {
            if src == relayed {
                src = seen;
            }
        }
        if let Some(spoofed) = self
            .spoof_source
            .as_mut()
            .and_then(|f| f(src, t.to, &t.payload))
        {
            src = spoofed;
        }
        if self.loss > 0.0 && self.rng.gen::<f64>() < self.loss {
            self.trace(format_args!("lost    {i}: {src} -> {}", t.to));
            return;
        }
        if self
            .drop_if
            .as_mut()
            .is_some_and(|f| f(src, t.to, &t.payload))
        {
            self.trace(format_args!("dropped {i}: {src} -> {}", t.to));
            return;
        }
        self.trace(format_args!("send    {i}: {src} -> {}", t.to));
        self.seq += 1;
        self.inflight.push(Packet {
            at: self.now + self.delay,
            seq: self.seq,
            src,
            dst: t.to,
            payload: t.payload,
        });
    }

    fn deliver(&mut self, mut p: Packet) {
        if let Some((relayed, seen)) = self.relay_port_rewrite {
            if p.dst == seen {
                p.dst = relayed;
            }
        }
        for j in 0..2 {
            let n = &self.nodes[j];
            let to_local = match &n.nat {
                _ if n.relays.contains(&p.dst) => Some(p.dst),
                Some(nat) if nat.public_ip == p.dst.ip() => nat.inbound(p.dst.port(), p.src),
                Some(_) => None,
                None => n.hosts.contains(&p.dst).then_some(p.dst),
            };
            if let Some(to_local) = to_local {
                if n.down {
                    return;
                }
                self.trace(format_args!(
                    "deliver {j}: {} -> {} (on {to_local})",
                    p.src, p.dst
                ));
                self.delivered += 1;
                let n = &mut self.nodes[j];
                if n.agent
                    .handle_input(p.src, to_local, &p.payload, self.now)
                    .is_err()
                {
                    n.refused += 1;
                }
                return;
            }
        }
    }

    fn flush(&mut self) {
        for i in 0..2 {
            while let Some(t) = self.nodes[i].agent.poll_transmit() {
                self.send(i, t);
            }
            while let Some(e) = self.nodes[i].agent.poll_event() {
                let at = self.now - self.start;
                self.nodes[i].events.push((at, e));
            }
        }
    }

    /// Run until `until` (simulated time since start) or `stop` holds.
    /// Returns whether `stop` held.
    pub fn run(&mut self, until: Duration, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.start + until;
        // Timers first: a new agent may have checks due at once.
        for n in &mut self.nodes {
            n.agent.handle_timeout(self.now);
        }
        let mut steps = 0u32;
        loop {
            self.flush();
            if stop(self) {
                return true;
            }
            steps += 1;
            assert!(steps < 2_000_000, "simulation does not settle");
            let next_packet = self.inflight.iter().map(|p| p.at).min();
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| !n.down)
                .filter_map(|n| n.agent.poll_timeout())
                .min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                self.now = deadline;
                return stop(self);
            };
            if next > deadline {
                self.now = deadline;
                return stop(self);
            }
            // A timer in the past means "now" (never move the clock back).
            self.now = self.now.max(next);
            let mut due: Vec<Packet> = Vec::new();
            let mut i = 0;
            while i < self.inflight.len() {
                if self.inflight[i].at <= self.now {
                    due.push(self.inflight.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            due.sort_by_key(|p| (p.at, p.seq));
            for p in due {
                self.deliver(p);
            }
            for n in &mut self.nodes {
                if !n.down && n.agent.poll_timeout().is_some_and(|t| t <= self.now) {
                    n.agent.handle_timeout(self.now);
                }
            }
        }
    }

    /// Add `d` to the run horizon from the current time.
    pub fn run_for(&mut self, d: Duration, stop: impl FnMut(&Sim) -> bool) -> bool {
        let until = self.elapsed() + d;
        self.run(until, stop)
    }

    /// The selected pair node `i` connected on, from its first Connected.
    pub fn connected(&self, i: usize) -> Option<&SelectedPair> {
        self.nodes[i].events.iter().find_map(|(_, e)| match e {
            Event::Connected(p) => Some(p),
            _ => None,
        })
    }

    /// When node `i` first connected.
    pub fn connected_at(&self, i: usize) -> Option<Duration> {
        self.nodes[i]
            .events
            .iter()
            .find_map(|(t, e)| matches!(e, Event::Connected(_)).then_some(*t))
    }

    /// Both connected.
    pub fn both_connected(&self) -> bool {
        self.connected(0).is_some() && self.connected(1).is_some()
    }

    /// Checking is over on both sides ([`checking_over`]).
    pub fn checking_over(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| checking_over(&n.agent.check_list()))
    }
}
