//! A fixed window of numbered probes in flight, shared by the load
//! generators: each probe carries (flow, slot, generation) in its 12-byte
//! identifier (a STUN transaction ID, or the head of a relayed payload), so
//! an answer is matched to its send time by indexing, with no allocation or
//! hashing. A probe unanswered after the timeout is counted lost and its slot
//! reused under a new generation, so the window never drains and a late
//! answer is recognised as late.

/// Identifier layout: a per-thread random salt (4 bytes), the flow index
/// (2), the slot index (2) and the slot's generation (4). RFC 8489 §5 wants
/// transaction IDs hard to guess for security; a benchmark only needs them
/// unique and cheap to map back to a slot.
pub fn transaction_id(salt: [u8; 4], flow: u16, slot: u16, generation: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[0..4].copy_from_slice(&salt);
    t[4..6].copy_from_slice(&flow.to_be_bytes());
    t[6..8].copy_from_slice(&slot.to_be_bytes());
    t[8..12].copy_from_slice(&generation.to_be_bytes());
    t
}

/// Inverse of [`transaction_id`] for IDs carrying `salt`: (flow, slot,
/// generation).
pub fn parse_transaction_id(t: &[u8; 12], salt: [u8; 4]) -> Option<(u16, u16, u32)> {
    if t[0..4] != salt {
        return None;
    }
    Some((
        u16::from_be_bytes([t[4], t[5]]),
        u16::from_be_bytes([t[6], t[7]]),
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
    ))
}

/// One probe slot of a window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Send time, nanoseconds since the run's start.
    sent_at: u64,
    /// Bumped at each send, so an answer to an earlier use of the slot (a
    /// late answer after a timeout) does not match.
    generation: u32,
    /// A probe is in flight.
    busy: bool,
    /// It was sent during the measurement window (it counts as sent, and as
    /// lost if it times out).
    counted: bool,
}

/// What an answer turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The answer to the probe in flight on that slot, sent at `sent_at`.
    Matched {
        /// Send time of the probe (nanoseconds since the start).
        sent_at: u64,
    },
    /// An answer to an earlier probe of the slot, already counted lost.
    Late,
    /// No such slot.
    Unknown,
}

/// A window of probe slots with a stack of idle ones (no allocation after
/// construction).
pub struct Window {
    slots: Box<[Slot]>,
    free: Vec<u16>,
}

impl Window {
    /// A window of `size` slots (at most 65,535), all idle.
    pub fn new(size: usize) -> Window {
        let size = size.min(u16::MAX as usize);
        Window {
            slots: vec![Slot::default(); size].into_boxed_slice(),
            // Reversed so slot 0 goes out first (only matters for traces).
            free: (0..size as u16).rev().collect(),
        }
    }

    /// Whether a slot is idle.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Take an idle slot for a probe sent at `now`; returns its index and
    /// new generation.
    pub fn take(&mut self, now: u64, counted: bool) -> Option<(u16, u32)> {
        let si = self.free.pop()?;
        let s = &mut self.slots[si as usize];
        s.generation = s.generation.wrapping_add(1);
        s.sent_at = now;
        s.busy = true;
        s.counted = counted;
        Some((si, s.generation))
    }

    /// Give back a slot taken for a probe that was not sent after all.
    pub fn untake(&mut self, si: u16) {
        if let Some(s) = self.slots.get_mut(si as usize).filter(|s| s.busy) {
            s.busy = false;
            self.free.push(si);
        }
    }

    /// An answer for `(slot, generation)` arrived: frees the slot if it
    /// matches the probe in flight.
    pub fn complete(&mut self, si: u16, generation: u32) -> Answer {
        let Some(s) = self.slots.get_mut(si as usize) else {
            return Answer::Unknown;
        };
        if !s.busy || s.generation != generation {
            return Answer::Late;
        }
        s.busy = false;
        self.free.push(si);
        Answer::Matched { sent_at: s.sent_at }
    }

    /// Free the slots whose probe has waited `timeout` or more; returns how
    /// many of them were counted (sent in the measurement window).
    pub fn expire(&mut self, now: u64, timeout: u64) -> u64 {
        let mut lost = 0;
        for (si, s) in self.slots.iter_mut().enumerate() {
            if s.busy && now.saturating_sub(s.sent_at) >= timeout {
                s.busy = false;
                lost += u64::from(s.counted);
                self.free.push(si as u16);
            }
        }
        lost
    }

    /// Counted probes still in flight.
    pub fn outstanding_counted(&self) -> u64 {
        self.slots.iter().filter(|s| s.busy && s.counted).count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_round_trip_and_reject_other_salts() {
        let salt = [1, 2, 3, 4];
        let t = transaction_id(salt, 7, 65_000, 0xDEAD_BEEF);
        assert_eq!(
            parse_transaction_id(&t, salt),
            Some((7, 65_000, 0xDEAD_BEEF))
        );
        assert_eq!(parse_transaction_id(&t, [1, 2, 3, 5]), None);
        assert_ne!(t, transaction_id(salt, 7, 65_000, 0xDEAD_BEF0));
    }

    #[test]
    fn window_matches_expires_and_recognises_late_answers() {
        let mut w = Window::new(2);
        let (a, ga) = w.take(100, true).unwrap();
        let (b, gb) = w.take(200, false).unwrap();
        assert!(!w.has_free());
        assert_eq!(w.take(300, true), None);
        assert_eq!(w.outstanding_counted(), 1);
        assert_eq!(w.complete(a, ga), Answer::Matched { sent_at: 100 });
        assert_eq!(w.complete(a, ga), Answer::Late);
        assert_eq!(w.complete(9, ga), Answer::Unknown);
        // b (not counted) times out: freed, but not counted lost.
        assert_eq!(w.expire(1_000, 500), 0);
        assert_eq!(w.complete(b, gb), Answer::Late);
        let (c, gc) = w.take(2_000, true).unwrap();
        assert_eq!(w.expire(2_400, 500), 0);
        assert_eq!(w.expire(2_500, 500), 1);
        assert_eq!(w.complete(c, gc), Answer::Late);
        // Reusing the slot bumps the generation: the old answer stays late.
        let (c2, gc2) = w.take(3_000, true).unwrap();
        assert_eq!(c2, c);
        assert_ne!(gc2, gc);
        assert_eq!(w.complete(c, gc), Answer::Late);
        w.untake(c2);
        assert_eq!(w.outstanding_counted(), 0);
        assert!(w.has_free());
    }
}
