//! Consent freshness of the selected path across ICE restarts (RFC 7675
//! §5.1) and the early warning before it runs out.
//!
//! The agent keeps consent for its selected pair, but forgets it when it
//! restarts (new credentials, new check list). The peer must still answer
//! within the consent timeout of the last answer, or the session ends as
//! consent lost: a restart that gets no answer would otherwise leave only
//! QUIC's idle timeout to notice the peer is gone.

use std::time::{Duration, Instant};

use crate::Agent;
// The core's state, types and imports (this file is part of its impl).
use super::*;

/// What [`Freshness::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing to report.
    Fresh,
    /// No answer for the degraded time (once per silence).
    Degraded {
        /// How long the path has been silent.
        silent_for: Duration,
    },
    /// No answer within the consent timeout across a restart.
    Lost,
}

#[derive(Debug, Default)]
pub(super) struct Freshness {
    /// The last time the selected path answered a check; survives restarts.
    heard_at: Option<Instant>,
    /// `heard_at` of the silence already reported as lost.
    lost_reported: Option<Instant>,
    /// The agent's consent time of the silence already reported degraded.
    degraded_reported: Option<Instant>,
}

impl Freshness {
    /// Take the agent's latest consent time (call after it handled input,
    /// and before it restarts).
    pub fn note(&mut self, agent: &Agent) {
        if let Some(last) = agent.last_consent() {
            self.heard_at = Some(self.heard_at.map_or(last, |h| h.max(last)));
        }
    }

    /// The agent itself reported consent lost: this silence is reported.
    pub fn lost_reported(&mut self) {
        self.lost_reported = self.heard_at;
    }

    /// When [`Freshness::check`] has something to say next.
    pub fn poll_timeout(
        &self,
        agent: &Agent,
        timeout: Duration,
        degraded_after: Duration,
    ) -> Option<Instant> {
        let lost = self
            .heard_at
            .filter(|h| self.lost_reported != Some(*h))
            .map(|h| h + timeout);
        let degraded = agent
            .last_consent()
            .filter(|l| self.degraded_reported != Some(*l))
            .map(|l| l + degraded_after);
        lost.into_iter().chain(degraded).min()
    }

    /// What the silence on the path amounts to at `now`.
    pub fn check(
        &mut self,
        agent: &Agent,
        now: Instant,
        timeout: Duration,
        degraded_after: Duration,
    ) -> Verdict {
        self.note(agent);
        if let Some(heard) = self.heard_at {
            // While the agent holds consent (not restarted), it decides.
            if agent.last_consent().is_none()
                && now >= heard + timeout
                && self.lost_reported != Some(heard)
            {
                self.lost_reported = Some(heard);
                return Verdict::Lost;
            }
        }
        let Some(last) = agent.last_consent() else {
            return Verdict::Fresh;
        };
        let silent_for = now.saturating_duration_since(last);
        if silent_for < degraded_after || self.degraded_reported == Some(last) {
            return Verdict::Fresh;
        }
        self.degraded_reported = Some(last);
        Verdict::Degraded { silent_for }
    }
}

/// Consent across restarts, as the core applies it.
impl SessionCore {
    pub(super) fn check_freshness(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        let verdict = self.freshness.check(
            &self.agent,
            now,
            self.cfg.ice.consent_timeout,
            self.cfg.degraded_after(),
        );
        let Some(sp) = self.selected.clone() else {
            return;
        };
        match verdict {
            Verdict::Fresh => {}
            Verdict::Lost => self.on_agent_event(Event::ConsentLost(sp), now),
            Verdict::Degraded { silent_for } => {
                // A path through our own relay may have gone silent because
                // the relay did: ask it now (a Refresh) rather than at its
                // next scheduled refresh minutes away; no answer, or a 437,
                // reports the relay lost.
                if let Some(a) = self.allocs.iter_mut().find(|a| a.relays(sp.local.base)) {
                    a.client.refresh_now(now);
                }
                let path = self.path_info(sp);
                tracing::info!(%path, ?silent_for, "path degraded: consent checks unanswered");
                self.events
                    .push_back(SessionEvent::PathDegraded { path, silent_for });
            }
        }
    }
}
