//! Closing a session: the application's goodbye gets [`CLOSE_GRACE`] to
//! cross the relay, then the allocations are deleted (RFC 8656 §8) and the
//! servers get [`CLOSE_WAIT`] to confirm.

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
            self.closing = Some(Closing { deleted: true, ..c });
            self.dirty = true;
        }
        let confirmed = self
            .allocs
            .iter()
            .all(|a| a.closed || a.is_over() || a.via().is_none());
        if confirmed || now >= c.give_up_at {
            self.closed = true;
            for a in &self.allocs {
                if let Some(stream) = a.stream() {
                    self.streams.push_back(Output::Disconnect { stream });
                }
            }
            self.events.push_back(SessionEvent::Closed);
        }
    }
}
