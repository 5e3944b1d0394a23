//! Closing a session: the application's goodbye gets [`CLOSE_GRACE`] to
//! cross the relay, then the allocations are deleted (RFC 8656 §8), the
//! port mapping too (RFC 6887 §15, RFC 6886 §3.4, UPnP
//! DeletePortMapping), and the servers and the gateway get [`CLOSE_WAIT`]
//! to confirm.

// The core's own state and types (a split of its impl).
use super::*;

/// Closing: the grace, the deletions, and the end.
impl SessionCore {
    pub(super) fn progress_close(&mut self, now: Instant) {
        let Some(c) = self.closing else { return };
        if self.closed {
            return;
        }
        if !c.deleted {
            if now < c.delete_at {
                return;
            }
            for a in &mut self.allocs {
                a.client.close(now);
            }
            if let Some(mp) = &mut self.mapper {
                mp.m.close(now);
            }
            self.closing = Some(Closing { deleted: true, ..c });
            self.dirty = true;
        }
        let confirmed = self
            .allocs
            .iter()
            .all(|a| a.closed || a.is_over() || a.via().is_none())
            && !self.mapper.as_ref().is_some_and(|m| !m.m.is_closed());
        if confirmed || now >= c.give_up_at {
            self.closed = true;
            for a in &self.allocs {
                if let Some(stream) = a.stream() {
                    self.streams.push_back(Output::Disconnect { stream });
                }
            }
            if let Some(mp) = &mut self.mapper {
                for (_, stream) in mp.http.drain(..) {
                    self.streams.push_back(Output::Disconnect { stream });
                }
            }
            self.events.push_back(SessionEvent::Closed);
        }
    }
}
