//! natkit's hard-NAT punch: direct paths where one side's NAT maps each
//! destination to another port (RFC 4787 §4.1 address- and
//! address-and-port-dependent mapping, "symmetric") and the other side's
//! does not.
//!
//! Plain ICE fails there when the easy side filters by address and port:
//! the hard side's checks leave from ports nobody can guess, and the easy
//! side's checks go to the one port the hard side's STUN server saw, which
//! is mapped for the STUN server only. The punch makes the ports meet by
//! the birthday paradox:
//!
//! 1. **Detection while gathering** (`gather`): from each base, the STUN
//!    server is asked again at its RFC 5780 OTHER-ADDRESS (another IP and
//!    port) and at its other port on the same IP (§4.3's mapping test),
//!    and the answers of several STUN servers are compared. One mapping
//!    for all: easy (endpoint-independent). Different ones: hard; when the
//!    last two (sent back to back) differ by a small step, the allocator
//!    is sequential and the step is the port prediction.
//! 2. **Announcement**: [`Description::nat`] carries [`NatMapping`]:
//!    `Easy { addr }` (the address every peer sees; a port mapping's
//!    external address counts) or `Hard { ip, last_port, delta }`. Only
//!    natkit's own description carries it; a standard agent's description
//!    has none, so nothing below runs with a standard peer, and nothing on
//!    the wire of a standard agent changes.
//! 3. **The hard side** asks its driver for [`PUNCH_SOCKETS`] (N) more
//!    UDP sockets ([`Output::OpenSockets`]) and sends one Binding
//!    indication (RFC 8445 §11's keepalive, ignored by every agent) from
//!    each to the easy side's address: each opens a mapping (a random port
//!    of the NAT's range) for that address only. Not a check: where the
//!    easy side's filter lets them in, hundreds of checks would make it
//!    learn (and check) hundreds of peer-reflexive candidates.
//!    The sockets answer checks but form no pairs of their own
//!    ([`crate::Agent::add_punch_base`]).
//! 4. **The easy side** sends probes, Binding requests that are ordinary
//!    ICE checks on the wire, from its easy base to ports of the hard
//!    side's IP: the predicted window first ([`PREDICTION_WINDOW`] ports
//!    at `last_port + k * delta`, probed again after
//!    [`WINDOW_REPEAT_AFTER`] probes in case the hard side opened its
//!    sockets late), then random ports of [`FIRST_PORT`]..=65535, at most
//!    [`PROBE_BUDGET`] (M) in all, [`PROBE_BATCH`] every
//!    [`PROBE_INTERVAL`] (1000 probes/s). A probe that hits one of the N
//!    mappings is let in by the hard NAT (the mapping was made for the
//!    easy side's address), the hard side's agent answers it (through the
//!    easy side's filter, which the probe just opened for that port) and
//!    checks back: a peer-reflexive pair on both sides, which the
//!    controlling agent nominates above the relay.
//! 5. **The end**: a direct pair selected, the probe budget spent, or
//!    [`PUNCH_LIFETIME`] after the sockets opened. The sockets not under
//!    the selected pair are closed ([`Output::CloseSockets`]) and
//!    [`SessionEvent::Punch`] says what was tried ([`PunchReport`]). With
//!    both sides hard (and no port mapping) nothing is tried, and the
//!    report says so.
//!
//! **Success and cost.** Linux's `masquerade random` (the lab's symmetric
//! NAT) picks ports uniformly in 1024..=65535 (64512 ports;
//! `nf_nat_l4proto_unique_tuple` with `NF_NAT_RANGE_PROTO_RANDOM` and no
//! range given). With N = 256 mappings, each random probe hits with
//! p = 256/64512, so after k probes the punch succeeded with
//! 1 - (1 - p)^k: 50 % at k = 174, 90 % at 580, 95 % at 754 and 99.8 %
//! at M = 1536. At 1000 probes/s that is 0.58 s to 90 %, 1.54 s at most.
//! A sequential allocator is hit by the first pass over the window. One
//! attempt costs at most N + M = 1792 datagrams (the answers to the few
//! probes that hit aside): 256 keepalives of 28 bytes from the hard side,
//! 1536 probes of about 100 bytes from the easy side (about 160 kB in all,
//! 0.8 Mbit/s while it lasts), and N file descriptors on the hard side for
//! at most [`PUNCH_LIFETIME`] (closed at the first direct selection). A
//! session stops after [`MAX_FAILED_PUNCHES`] attempts that found nothing.
//! The lab's figures are in docs/PERFORMANCE.md.

use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::description::NatMapping;

// The core's state, types and imports (this file is part of its impl).
use super::*;

/// N: the sockets the hard side opens.
pub const PUNCH_SOCKETS: usize = 256;
/// M: the most probes the easy side sends in one attempt.
pub const PROBE_BUDGET: usize = 1536;
/// Probes sent together every [`PROBE_INTERVAL`].
pub const PROBE_BATCH: usize = 5;
/// The pacing of the probes: [`PROBE_BATCH`] per interval, 1000 per
/// second (RFC 8445 §14.2's 5 ms Ta, with a batch in each slot).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Ports probed first after the hard side's last mapping when its
/// allocator is sequential: its N sockets and the ICE checks it sent
/// before them, with room to spare.
pub const PREDICTION_WINDOW: usize = PUNCH_SOCKETS + 64;
/// How long the easy side waits for answers after its last probe before
/// it reports the punch failed (an RTT of the slowest links, with room).
const PROBE_LINGER: Duration = Duration::from_millis(500);
/// After this many probes the predicted window is probed once more.
pub const WINDOW_REPEAT_AFTER: usize = 200;
/// The lowest port probed: Linux NAT's random ports start here.
pub const FIRST_PORT: u16 = 1024;
/// Punches that found no direct path before the session stops trying
/// (each ICE restart may try again, e.g. after a network change; a path
/// that keeps degrading must not bring a flood each time).
pub const MAX_FAILED_PUNCHES: u32 = 2;
/// How long the hard side keeps its sockets when no pair on them is
/// selected (the easy side's whole budget takes about 1.5 s).
pub const PUNCH_LIFETIME: Duration = Duration::from_secs(5);

/// What the hard-NAT punch tried, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "tried", rename_all = "snake_case")]
pub enum PunchReport {
    /// Both sides are behind address-dependent mappings and neither has a
    /// port mapping: no punch can meet (the relay carries the session).
    BothHard,
    /// This side is the hard one: it opened `sockets` sockets, each of
    /// which sent to the peer's `target`.
    Opened {
        /// Sockets opened.
        sockets: usize,
        /// The peer's endpoint-independent address.
        target: SocketAddr,
        /// The socket a probe of the peer reached, if one did.
        reached: Option<SocketAddr>,
        /// From the start of the punch to a direct pair, if one came.
        #[serde(serialize_with = "ms_opt")]
        direct_after: Option<Duration>,
    },
    /// This side is the easy one: it probed `sent` ports of `ip`,
    /// `predicted` of them from the peer's port prediction.
    Probed {
        /// The peer's NAT's address.
        ip: IpAddr,
        /// Probes sent.
        sent: usize,
        /// Of which in the predicted window.
        predicted: usize,
        /// Whether the port that answered was a predicted one.
        hit_predicted: bool,
        /// The peer's address that answered, if one did.
        hit: Option<SocketAddr>,
        /// From the start of the punch to a direct pair, if one came.
        #[serde(serialize_with = "ms_opt")]
        direct_after: Option<Duration>,
    },
}

impl std::fmt::Display for PunchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let took = |d: &Option<Duration>| match d {
            Some(d) => format!("direct after {:.0} ms", d.as_secs_f64() * 1e3),
            None => "no direct path".to_string(),
        };
        match self {
            PunchReport::BothHard => f.write_str(
                "both NATs map each destination to another port (and neither maps a port): not tried",
            ),
            PunchReport::Opened {
                sockets,
                target,
                reached,
                direct_after,
            } => {
                write!(f, "{sockets} sockets sent to {target}; ")?;
                match reached {
                    Some(r) => write!(f, "the peer's probe reached {r}, ")?,
                    None => f.write_str("no probe of the peer reached one, ")?,
                }
                f.write_str(&took(direct_after))
            }
            PunchReport::Probed {
                ip,
                sent,
                predicted,
                hit,
                hit_predicted,
                direct_after,
            } => {
                write!(f, "{sent} ports of {ip} probed ({predicted} predicted); ")?;
                match hit {
                    Some(h) if *hit_predicted => write!(f, "{h} answered (predicted), ")?,
                    Some(h) => write!(f, "{h} answered, ")?,
                    None => f.write_str("none answered, ")?,
                }
                f.write_str(&took(direct_after))
            }
        }
    }
}

fn ms_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1e3)),
        None => s.serialize_none(),
    }
}

/// Mappings the STUN servers reported while gathering: (order sent, base,
/// mapped).
#[derive(Debug, Default)]
pub(super) struct Mappings(Vec<(usize, SocketAddr, SocketAddr)>);

impl Mappings {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn note(&mut self, seq: usize, base: SocketAddr, mapped: SocketAddr) {
        self.0.push((seq, base, mapped));
    }

    /// How the first base with two answers or more is mapped, and that
    /// base.
    pub fn classify(&self) -> Option<(SocketAddr, NatMapping)> {
        let mut bases: Vec<SocketAddr> = Vec::new();
        for (_, b, _) in &self.0 {
            if !bases.contains(b) {
                bases.push(*b);
            }
        }
        bases.into_iter().find_map(|b| {
            let mut seen: Vec<(usize, SocketAddr)> = self
                .0
                .iter()
                .filter(|(_, base, _)| *base == b)
                .map(|(seq, _, m)| (*seq, *m))
                .collect();
            seen.sort_by_key(|(seq, _)| *seq);
            let mapped: Vec<SocketAddr> = seen.into_iter().map(|(_, m)| m).collect();
            Some((b, classify(&mapped)?))
        })
    }
}

/// RFC 4787 §4.1 from the mappings one base got, in the order the requests
/// left: all the same is endpoint-independent; else address-dependent,
/// with a port prediction when the last two differ by a small step in the
/// direction of the first two (the two detection probes leave back to
/// back; other flows, e.g. to a TURN server, may come between the first
/// and the second).
pub(super) fn classify(mapped: &[SocketAddr]) -> Option<NatMapping> {
    let (&first, &last) = (mapped.first()?, mapped.last()?);
    if mapped.len() < 2 {
        return None;
    }
    if mapped.iter().all(|m| *m == first) {
        return Some(NatMapping::Easy { addr: first });
    }
    let delta = match mapped {
        [.., a, b, c] if a.ip() == b.ip() && b.ip() == c.ip() => {
            let d1 = i32::from(b.port()) - i32::from(a.port());
            let d2 = i32::from(c.port()) - i32::from(b.port());
            let ok = (1..=16).contains(&d2.abs())
                && d1.signum() == d2.signum()
                && d1.abs() <= 64 * d2.abs();
            ok.then_some(d2 as i16)
        }
        _ => None,
    };
    Some(NatMapping::Hard {
        ip: last.ip(),
        last_port: last.port(),
        delta,
    })
}

/// The easy side's order of ports: the predicted window, some random
/// ports, the window again, the rest of the random ports; [`PROBE_BUDGET`]
/// in all. Returns the order and the window (its ports once).
pub(super) fn probe_order(
    last_port: u16,
    delta: Option<i16>,
    rng: &mut impl Rng,
) -> (Vec<u16>, Vec<u16>) {
    let mut window = Vec::new();
    if let Some(d) = delta {
        for k in 1..=PREDICTION_WINDOW as i32 {
            let p = i32::from(last_port) + k * i32::from(d);
            if (i32::from(FIRST_PORT)..=65535).contains(&p) {
                window.push(p as u16);
            }
        }
    }
    let windows = (2 * window.len()).min(PROBE_BUDGET);
    let range = usize::from(u16::MAX - FIRST_PORT) + 1;
    // Distinct ports, none of the window's (sampled with room for them).
    let want = PROBE_BUDGET - windows;
    let random: Vec<u16> = rand::seq::index::sample(rng, range, want + window.len())
        .into_iter()
        .map(|i| FIRST_PORT + i as u16)
        .filter(|p| !window.contains(p))
        .take(want)
        .collect();
    let split = WINDOW_REPEAT_AFTER.min(random.len());
    let mut order = Vec::with_capacity(PROBE_BUDGET);
    order.extend_from_slice(&window);
    order.extend_from_slice(&random[..split]);
    order.extend_from_slice(&window);
    order.extend_from_slice(&random[split..]);
    order.truncate(PROBE_BUDGET);
    (order, window)
}

/// The punch of one ICE generation.
#[derive(Debug)]
pub(super) struct Punch {
    started: Instant,
    side: Side,
    /// Over: reported, sockets closed (but for the one in use).
    over: bool,
}

#[derive(Debug)]
enum Side {
    /// Nothing to do (both hard); reported.
    None,
    /// Nothing to do (no side hard, or no common family); not reported.
    Unneeded,
    Hard {
        target: SocketAddr,
        ip: IpAddr,
        /// The driver was asked for the sockets.
        asked: bool,
        sockets: Vec<SocketAddr>,
        opened_at: Option<Instant>,
        reached: Option<SocketAddr>,
    },
    Easy {
        base: SocketAddr,
        ip: IpAddr,
        order: Vec<u16>,
        next: usize,
        next_at: Instant,
        /// The predicted ports (once).
        window: Vec<u16>,
        hit: Option<SocketAddr>,
    },
}

/// The punch inside the core: when to start it, its sockets, its probes.
impl SessionCore {
    /// How this side's NAT maps, as announced: a port mapping's external
    /// address is endpoint-independent whatever the NAT does otherwise.
    pub(super) fn nat_mapping(&self) -> Option<(SocketAddr, NatMapping)> {
        if let Some(m) = self.port_mapping() {
            return Some((m.internal, NatMapping::Easy { addr: m.external }));
        }
        self.mappings.classify()
    }

    /// Whether `a` is one of the punch's sockets (a base like the host
    /// bases while it is open).
    pub(super) fn is_punch_socket(&self, a: SocketAddr) -> bool {
        self.punch_sockets.contains(&a)
    }

    /// Whether `a` is a host base or an open punch socket.
    pub(super) fn is_host_base(&self, a: SocketAddr) -> bool {
        self.bases.contains(&a) || self.is_punch_socket(a)
    }

    /// What the punch did so far in this ICE generation, if it ran.
    pub fn punch_report(&self) -> Option<PunchReport> {
        self.punch.as_ref().and_then(|p| self.report_of(p))
    }

    /// The sockets of [`Output::OpenSockets`] are open at `addrs` (fewer
    /// than asked when the system refused some; none on failure).
    pub fn handle_sockets_opened(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        self.now = now;
        self.dirty = true;
        let Some(Punch {
            side:
                Side::Hard {
                    target,
                    sockets,
                    opened_at,
                    ..
                },
            over: false,
            ..
        }) = &mut self.punch
        else {
            // Too late (the punch is over or another generation began).
            self.streams.push_back(Output::CloseSockets(addrs));
            return;
        };
        let target = *target;
        *opened_at = Some(now);
        tracing::debug!(sockets = addrs.len(), %target, "hard-NAT punch: sockets open");
        for &a in &addrs {
            self.agent.add_punch_base(a);
            // One keepalive each: the NAT maps the socket for the target
            // (the filter at the target may drop it; the mapping is what
            // matters).
            self.agent.punch_open(a, target);
        }
        sockets.extend_from_slice(&addrs);
        self.punch_sockets.extend(addrs);
    }

    /// Start the punch when both sides' mappings are known: after the
    /// remote description and the end of our gathering.
    pub(super) fn maybe_start_punch(&mut self, now: Instant) {
        if self.punch.is_some()
            || !self.gathering_done
            || self.cfg.relay_only
            || self.closing.is_some()
            || self.punch_failed >= MAX_FAILED_PUNCHES
        {
            return;
        }
        let Some(remote) = self.remote_nat else {
            return;
        };
        let Some((base, local)) = self.nat_mapping() else {
            return;
        };
        let side = match (local, remote) {
            (NatMapping::Hard { .. }, NatMapping::Hard { .. }) => Side::None,
            (NatMapping::Hard { ip, .. }, NatMapping::Easy { addr })
                if addr.is_ipv4() == ip.is_ipv4() =>
            {
                Side::Hard {
                    target: addr,
                    ip: base.ip(),
                    asked: false,
                    sockets: Vec::new(),
                    opened_at: None,
                    reached: None,
                }
            }
            (
                NatMapping::Easy { .. },
                NatMapping::Hard {
                    ip,
                    last_port,
                    delta,
                },
            ) if ip.is_ipv4() == base.is_ipv4() => {
                let mut rng = match self.cfg.ice.seed {
                    Some(s) => StdRng::seed_from_u64(s ^ 0x7075_6e63_6821),
                    None => StdRng::from_entropy(),
                };
                let (order, window) = probe_order(last_port, delta, &mut rng);
                Side::Easy {
                    base,
                    ip,
                    order,
                    next: 0,
                    next_at: now,
                    window,
                    hit: None,
                }
            }
            // Neither side hard, or the families differ: nothing to punch.
            // Settled once (over, unreported), so the pump does not
            // classify the mappings again for every datagram.
            _ => {
                self.punch = Some(Punch {
                    started: now,
                    side: Side::Unneeded,
                    over: true,
                });
                return;
            }
        };
        tracing::debug!(?local, ?remote, "hard-NAT punch");
        let mut p = Punch {
            started: now,
            side,
            over: false,
        };
        if matches!(p.side, Side::None) {
            p.over = true;
            self.events
                .push_back(SessionEvent::Punch(PunchReport::BothHard));
        }
        self.punch = Some(p);
        self.dirty = true;
    }

    /// Send what is due: the request for sockets, the probes of this slot.
    pub(super) fn pump_punch(&mut self, now: Instant) {
        self.maybe_start_punch(now);
        let Some(p) = &mut self.punch else { return };
        if p.over {
            return;
        }
        match &mut p.side {
            Side::None | Side::Unneeded => {}
            Side::Hard {
                ip,
                asked,
                opened_at,
                ..
            } => {
                if !*asked {
                    *asked = true;
                    self.streams.push_back(Output::OpenSockets {
                        ip: *ip,
                        count: PUNCH_SOCKETS,
                    });
                }
                if opened_at.is_some_and(|t| now >= t + PUNCH_LIFETIME) {
                    self.end_punch();
                }
            }
            Side::Easy {
                base,
                ip,
                order,
                next,
                next_at,
                hit,
                ..
            } => {
                if hit.is_none() {
                    *hit = self.agent.punch_hit();
                }
                if hit.is_some() {
                    return;
                }
                while *next_at <= now && *next < order.len() {
                    let end = (*next + PROBE_BATCH).min(order.len());
                    for &port in &order[*next..end] {
                        self.agent.punch_probe(*base, SocketAddr::new(*ip, port));
                    }
                    *next = end;
                    *next_at += PROBE_INTERVAL;
                }
                if *next >= order.len() && now >= *next_at + PROBE_LINGER {
                    // The budget is spent and the last answers had time
                    // to come back.
                    self.end_punch();
                }
            }
        }
    }

    pub(super) fn punch_timeout(&self) -> Option<Instant> {
        let p = self.punch.as_ref().filter(|p| !p.over)?;
        match &p.side {
            Side::None | Side::Unneeded => None,
            Side::Hard { opened_at, .. } => opened_at.map(|t| t + PUNCH_LIFETIME),
            Side::Easy {
                next_at,
                next,
                order,
                hit: None,
                ..
            } => Some(if *next < order.len() {
                *next_at
            } else {
                *next_at + PROBE_LINGER
            }),
            Side::Easy { .. } => None,
        }
    }

    /// A pair was selected: a direct one ends the punch.
    pub(super) fn punch_on_selected(&mut self, sp: &SelectedPair) {
        let direct =
            sp.local.kind != CandidateKind::Relayed && sp.remote.kind != CandidateKind::Relayed;
        let Some(p) = &mut self.punch else { return };
        if p.over || !direct {
            return;
        }
        match &mut p.side {
            Side::Hard { reached, .. } if self.punch_sockets.contains(&sp.local.base) => {
                *reached = Some(sp.local.base);
            }
            Side::Easy { ip, hit, .. } if sp.remote.addr.ip() == *ip && hit.is_none() => {
                *hit = Some(sp.remote.addr);
            }
            _ => {}
        }
        self.punch_direct = Some(self.now.saturating_duration_since(p.started));
        self.end_punch();
    }

    /// Report, and close the sockets not under the selected pair.
    pub(super) fn end_punch(&mut self) {
        let Some(p) = &mut self.punch else { return };
        if p.over {
            return;
        }
        p.over = true;
        if self.punch_direct.is_none() && !matches!(p.side, Side::None) {
            self.punch_failed += 1;
        }
        self.agent.forget_punch_probes();
        let keep = self.selected.as_ref().map(|s| s.local.base);
        let close: Vec<SocketAddr> = self
            .punch_sockets
            .iter()
            .copied()
            .filter(|a| Some(*a) != keep)
            .collect();
        for a in &close {
            self.agent.remove_punch_base(*a);
        }
        self.punch_sockets.retain(|a| Some(*a) == keep);
        if !close.is_empty() {
            self.streams.push_back(Output::CloseSockets(close));
        }
        if let Some(r) = self.punch.as_ref().and_then(|p| self.report_of(p)) {
            tracing::info!(report = ?r, "hard-NAT punch over");
            self.events.push_back(SessionEvent::Punch(r));
        }
        self.dirty = true;
    }

    fn report_of(&self, p: &Punch) -> Option<PunchReport> {
        let direct_after = self.punch_direct;
        Some(match &p.side {
            Side::Unneeded => return None,
            Side::None => PunchReport::BothHard,
            Side::Hard {
                target,
                sockets,
                reached,
                ..
            } => PunchReport::Opened {
                sockets: sockets.len(),
                target: *target,
                reached: *reached,
                direct_after,
            },
            Side::Easy {
                ip,
                order,
                next,
                window,
                hit,
                ..
            } => PunchReport::Probed {
                ip: *ip,
                sent: *next,
                predicted: order[..*next].iter().filter(|p| window.contains(p)).count(),
                hit_predicted: hit.is_some_and(|h| window.contains(&h.port())),
                hit: *hit,
                direct_after,
            },
        })
    }

    /// A new ICE generation: the punch may run again; sockets not under
    /// the route are closed.
    pub(super) fn reset_punch(&mut self) {
        self.end_punch();
        self.punch = None;
        self.punch_direct = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classification_and_port_prediction() {
        assert_eq!(classify(&[a("203.0.113.5:4000")]), None);
        assert_eq!(
            classify(&[a("203.0.113.5:4000"), a("203.0.113.5:4000")]),
            Some(NatMapping::Easy {
                addr: a("203.0.113.5:4000")
            })
        );
        // Sequential: a TURN flow between the first and the second.
        assert_eq!(
            classify(&[
                a("203.0.113.5:20000"),
                a("203.0.113.5:20002"),
                a("203.0.113.5:20003")
            ]),
            Some(NatMapping::Hard {
                ip: "203.0.113.5".parse().unwrap(),
                last_port: 20003,
                delta: Some(1),
            })
        );
        // Random: no prediction.
        assert_eq!(
            classify(&[
                a("203.0.113.5:51000"),
                a("203.0.113.5:1999"),
                a("203.0.113.5:33333")
            ]),
            Some(NatMapping::Hard {
                ip: "203.0.113.5".parse().unwrap(),
                last_port: 33333,
                delta: None,
            })
        );
        // Two answers that differ: hard, nothing to predict from.
        assert!(matches!(
            classify(&[a("203.0.113.5:1"), a("203.0.113.5:2")]),
            Some(NatMapping::Hard { delta: None, .. })
        ));
    }

    #[test]
    fn probe_order_puts_the_window_first_and_stays_in_budget() {
        let mut rng = StdRng::seed_from_u64(1);
        let (o, w) = probe_order(20003, Some(1), &mut rng);
        assert_eq!(o.len(), PROBE_BUDGET);
        assert_eq!(w.len(), PREDICTION_WINDOW);
        assert_eq!(
            o.iter().filter(|p| w.contains(p)).count(),
            2 * PREDICTION_WINDOW
        );
        assert_eq!(o[0], 20004);
        assert_eq!(o[PREDICTION_WINDOW - 1], 20003 + PREDICTION_WINDOW as u16);
        let again = PREDICTION_WINDOW + WINDOW_REPEAT_AFTER;
        assert_eq!(o[again], 20004);
        assert!(o.iter().all(|p| *p >= FIRST_PORT));
        let (o, w) = probe_order(4000, None, &mut rng);
        assert_eq!((o.len(), w.len()), (PROBE_BUDGET, 0));
        let mut d = o.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), o.len(), "random ports are distinct");
        // A window running off the port range is cut.
        let (o, w) = probe_order(65500, Some(1), &mut rng);
        assert_eq!(w.len(), 35);
        assert_eq!(o.len(), PROBE_BUDGET);
    }
}
