//! The ICE agent inside the session core (RFC 8445): what arrives on a
//! base or through a relay goes to it, its checks go out from a host base or
//! through the allocation of a relayed base, and its events become the
//! session's (selection, consent, failure).

// The core's own state and types (a split of its impl).
use super::*;

/// The ICE agent inside the core: checks in and out (through the
/// allocations for relayed bases), remote candidates, and its events.
impl SessionCore {
    /// A datagram from `from` on local base `local` (host or relayed):
    /// checks to the agent, the peer's application datagrams back to the
    /// caller.
    pub(super) fn deliver(
        &mut self,
        from: SocketAddr,
        local: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) -> Option<Range<usize>> {
        match classify(data, false) {
            PacketKind::Stun => {
                if let Err(e) = self.agent.handle_input(from, local, data, now) {
                    tracing::trace!(%from, error = %e, "datagram not used by ICE");
                }
                self.sync_peers();
                self.dirty = true;
                None
            }
            PacketKind::Quic if self.peers.contains(&from) => {
                if self.route.is_none() && self.learned.is_none() {
                    self.learn_route(local, from);
                }
                Some(0..data.len())
            }
            _ => None,
        }
    }

    /// Peer-reflexive remote candidates become addresses whose application
    /// datagrams are accepted.
    pub(super) fn sync_peers(&mut self) {
        let rc = self.agent.remote_candidates();
        if rc.len() != self.known_remote {
            self.peers.extend(rc.iter().map(|c| c.addr));
            self.known_remote = rc.len();
        }
    }

    pub(super) fn add_remote(&mut self, c: &SignalledCandidate, now: Instant) {
        self.peers.insert(c.addr);
        if let Err(e) = self.agent.add_remote_candidate(c.to_remote()) {
            tracing::debug!(candidate = %c, error = %e, "remote candidate not used");
            return;
        }
        // RFC 8656 §9: relayed bases can only reach peers with a permission.
        for a in &mut self.allocs {
            if a.relayed.iter().any(|r| r.is_ipv4() == c.addr.is_ipv4()) {
                let _ = a.client.create_permission(c.addr, now);
            }
        }
    }

    pub(super) fn pump_agent(&mut self, now: Instant) {
        self.send_agent_transmits(now);
        while let Some(e) = self.agent.poll_event() {
            self.dirty = true;
            self.on_agent_event(e, now);
        }
        self.freshness.note(&self.agent);
        // Events (role changes, selections) may queue more.
        self.send_agent_transmits(now);
    }

    /// The agent's checks and answers: from a host base directly, from a
    /// relayed base through its TURN allocation.
    pub(super) fn send_agent_transmits(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_transmit() {
            if self.closing.is_some() {
                continue;
            }
            if self.is_host_base(t.from) {
                self.transmits.push_back(Transmit {
                    via: Via::Base(t.from),
                    to: t.to,
                    payload: t.payload,
                });
                continue;
            }
            let Some(a) = self.allocs.iter_mut().find(|a| a.relays(t.from)) else {
                continue;
            };
            let Some(via) = a.via() else { continue };
            if !a.client.has_permission(t.to) {
                let _ = a.client.create_permission(t.to, now);
                self.dirty = true;
            }
            match a.client.send_to(t.to, &t.payload, &mut self.scratch) {
                Ok(n) => self.transmits.push_back(Transmit {
                    via,
                    to: a.server.addr,
                    payload: self.scratch[..n].to_vec(),
                }),
                Err(e) => tracing::debug!(to = %t.to, error = %e, "cannot relay a check"),
            }
        }
    }

    /// What the application is told of selected pair `sp`. A peer-reflexive
    /// candidate learned on one of our relayed addresses (the peer saw the
    /// relay at another port: a NAT before it rewrote the port) is still
    /// our relay: the path is relayed, whatever its candidate's type.
    pub(super) fn path_info(&self, sp: SelectedPair) -> PathInfo {
        let via_relay = sp.local.kind == CandidateKind::PeerReflexive
            && self.allocs.iter().any(|a| a.relays(sp.local.base));
        let mut info = PathInfo::new(sp.local, sp.remote, sp.rtt);
        if via_relay {
            info.kind = PathKind::Relay;
        }
        info
    }

    pub(super) fn on_agent_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected(sp) | Event::SelectedPairChanged(sp) => {
                let first = self.selected.is_none();
                tracing::debug!(pair = %sp, "selected pair");
                let route = self.route_for(&sp, now);
                self.set_route(route);
                self.selected = Some(sp.clone());
                self.punch_on_selected(&sp);
                let info = self.path_info(sp);
                self.path = Some(info.clone());
                self.consent_lost = None;
                self.relay_lost = None;
                self.events.push_back(if first {
                    SessionEvent::Connected(info)
                } else {
                    SessionEvent::PathChanged(info)
                });
            }
            Event::ConsentLost(sp) => {
                self.freshness.lost_reported();
                // Once per loss. The agent forgets its consent time as it
                // loses consent, so in the same step the core's own check
                // (meant for a restarted agent) can see the silence first
                // and report it; the agent's report then says nothing new.
                // A later loss comes after a new selection or a restart,
                // which both clear `consent_lost`.
                if self.consent_lost.is_some() {
                    return;
                }
                let info = self.path_info(sp);
                tracing::info!(path = %info, "consent lost");
                self.consent_lost = Some(info.clone());
                self.events.push_back(SessionEvent::ConsentLost(info));
            }
            Event::Failed(pairs) => {
                let after = now.saturating_duration_since(self.checking_since);
                let reason = self.agent.failure().map(|f| f.reason);
                self.failed = Some((pairs.clone(), after, reason));
                self.events.push_back(SessionEvent::Failed(pairs));
            }
            Event::RoleChanged(role) => self.events.push_back(SessionEvent::RoleChanged(role)),
            Event::PeerReflexiveCandidate(_) => self.sync_peers(),
        }
    }
}
