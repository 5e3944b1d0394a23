//! Client transactions over UDP (RFC 8489 §6.2.1), sans-IO.
//!
//! [`Transaction`] is the retransmission timer alone: it says when to send the
//! request again and when to give up. [`BindingTransaction`] puts a Binding
//! request ([`crate::binding`]) on that timer: it hands out the datagrams to
//! send, matches the response by transaction ID and reports the outcome. The
//! caller owns the socket and the clock.
//!
//! RFC 8489 §6.2.1: the first retransmission waits RTO, every later one doubles
//! the wait, the request is sent at most Rc times, and after the last send the
//! client waits Rm × RTO more before giving up. With the defaults (RTO 500 ms,
//! Rc 7, Rm 16) the request goes out at 0, 500, 1500, 3500, 7500, 15500 and
//! 31500 ms and the transaction fails at 39500 ms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::binding::{self, RequestOptions, Response};

/// Longest single wait the timer schedules. It keeps `Instant` arithmetic from
/// overflowing with absurd configurations; the RFC's own figures stay far
/// below it.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Retransmission parameters (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Initial retransmission timeout. RFC 8489 §6.2.1 recommends 500 ms
    /// when nothing is known about the path.
    pub rto: Duration,
    /// Rc: how many times the request is sent in all (first send included).
    /// Values below 1 are treated as 1.
    pub rc: u32,
    /// Rm: after the last send, wait `rm × rto` before giving up.
    pub rm: u32,
}

impl Default for Config {
    /// RFC 8489 §6.2.1 defaults: RTO 500 ms, Rc 7, Rm 16.
    fn default() -> Self {
        Config {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
        }
    }
}

impl Config {
    fn sends(&self) -> u32 {
        self.rc.max(1)
    }

    /// The wait after send number `n` (1-based).
    fn wait_after(&self, n: u32) -> Duration {
        let wait = if n >= self.sends() {
            // RFC 8489 §6.2.1: Rm times the (initial) RTO after the last send.
            self.rto.saturating_mul(self.rm)
        } else {
            // RTO doubles after each retransmission: RTO·2^(n-1).
            self.rto
                .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
        };
        wait.min(MAX_WAIT)
    }

    /// When each send happens, as offsets from the first send, if no
    /// response arrives: `[0, 500, 1500, ...]` ms with the defaults.
    pub fn send_offsets(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        let mut out = Vec::with_capacity(self.sends() as usize);
        for n in 1..=self.sends() {
            out.push(at);
            at = at.saturating_add(self.wait_after(n));
        }
        out
    }

    /// The whole time budget: from the first send until the transaction
    /// fails without a response (39.5 s with the defaults).
    pub fn budget(&self) -> Duration {
        (1..=self.sends()).fold(Duration::ZERO, |acc, n| {
            acc.saturating_add(self.wait_after(n))
        })
    }
}

/// What the caller should do after [`Transaction::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the same request again (same transaction ID, same bytes).
    Retransmit,
    /// Nothing to do yet (or the transaction is already over).
    Wait,
    /// No response after all the retransmissions: the transaction failed.
    /// Reported once, with the scheduled time from the first send to the
    /// final deadline.
    TimedOut {
        /// Time from the first send until giving up.
        waited: Duration,
        /// How many times the request was sent.
        sent: u32,
    },
}

/// How a transaction ended with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Time from the first send to the response.
    pub elapsed: Duration,
    /// Time from the last send to the response.
    pub since_last_send: Duration,
    /// How many times the request had been sent.
    pub sent: u32,
}

impl Completion {
    /// The round-trip time, only when it is unambiguous: with retransmissions
    /// the response may answer any of the sends (Karn's algorithm, RFC 6298
    /// §3), so there is no RTT sample.
    pub fn rtt(&self) -> Option<Duration> {
        (self.sent == 1).then_some(self.elapsed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Answered,
    TimedOut,
}

/// The retransmission timer of one client transaction over UDP
/// (RFC 8489 §6.2.1).
#[derive(Debug, Clone)]
pub struct Transaction {
    cfg: Config,
    first_sent: Instant,
    last_sent: Instant,
    sent: u32,
    deadline: Instant,
    state: State,
}

impl Transaction {
    /// Start a transaction whose request the caller sends at `now`.
    pub fn new(now: Instant, cfg: Config) -> Self {
        Transaction {
            cfg,
            first_sent: now,
            last_sent: now,
            sent: 1,
            deadline: now + cfg.wait_after(1),
            state: State::Pending,
        }
    }

    /// The next instant [`Transaction::handle_timeout`] must be called at;
    /// `None` once the transaction is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state == State::Pending).then_some(self.deadline)
    }

    /// Advance the timer to `now`.
    ///
    /// The next wait is counted from the deadline that just passed, not from
    /// `now`, so a driver that wakes a few milliseconds late does not push
    /// the whole schedule back (the sends stay at 0, 500, 1500... ms). A
    /// driver so late that the next deadline has passed too restarts the
    /// wait from `now` instead, rather than bunching retransmissions.
    pub fn handle_timeout(&mut self, now: Instant) -> Action {
        if self.state != State::Pending || now < self.deadline {
            return Action::Wait;
        }
        if self.sent >= self.cfg.sends() {
            self.state = State::TimedOut;
            // The scheduled wait, not `now`: how late the driver woke up is
            // not part of what the transaction waited for.
            return Action::TimedOut {
                waited: self.deadline.saturating_duration_since(self.first_sent),
                sent: self.sent,
            };
        }
        self.sent += 1;
        self.last_sent = now;
        let wait = self.cfg.wait_after(self.sent);
        let next = self.deadline + wait;
        self.deadline = if next > now { next } else { now + wait };
        Action::Retransmit
    }

    /// A response arrived at `now`: the transaction completes. `None` if it
    /// was already over (a late or duplicate response).
    pub fn on_response(&mut self, now: Instant) -> Option<Completion> {
        if self.state != State::Pending {
            return None;
        }
        self.state = State::Answered;
        Some(Completion {
            elapsed: now.saturating_duration_since(self.first_sent),
            since_last_send: now.saturating_duration_since(self.last_sent),
            sent: self.sent,
        })
    }

    /// How many times the request has been sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// When the request was first sent.
    pub fn first_sent(&self) -> Instant {
        self.first_sent
    }

    /// Whether the transaction is over (answered or timed out).
    pub fn is_finished(&self) -> bool {
        self.state != State::Pending
    }

    /// The configuration this transaction runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// A fresh random transaction ID. RFC 8489 §6: uniformly random from
/// [0, 2^96 - 1], from a cryptographically strong source, so off-path
/// attackers cannot forge responses.
pub fn new_transaction_id() -> [u8; 12] {
    rand::random()
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// How a [`BindingTransaction`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingOutcome {
    /// A Binding response (success or error) with our transaction ID.
    Answered {
        /// Where the response came from (as seen by the client's socket).
        from: SocketAddr,
        /// The parsed response.
        response: Response,
        /// Timing.
        completion: Completion,
    },
    /// No response after all the retransmissions.
    TimedOut {
        /// Time from the first send until giving up.
        waited: Duration,
        /// How many times the request was sent.
        sent: u32,
    },
}

/// A Binding request on the RFC 8489 §6.2.1 timer, sans-IO.
///
/// Drive it with [`BindingTransaction::poll_transmit`],
/// [`BindingTransaction::poll_timeout`], [`BindingTransaction::handle_timeout`]
/// and [`BindingTransaction::handle_datagram`] until
/// [`BindingTransaction::outcome`] is `Some`.
#[derive(Debug, Clone)]
pub struct BindingTransaction {
    to: SocketAddr,
    transaction_id: [u8; 12],
    request: Vec<u8>,
    timer: Transaction,
    send_pending: bool,
    outcome: Option<BindingOutcome>,
}

/// Size of the Binding request [`binding::write_request`] produces at most
/// for `opts`: header, CHANGE-REQUEST, RESPONSE-PORT and FINGERPRINT (8 bytes
/// each), and PADDING with its own padding to 4 bytes (RFC 8489 §14).
fn request_capacity(opts: &RequestOptions) -> usize {
    let padding = opts
        .padding
        .map_or(0, |n| 4 + usize::from(n).div_ceil(4) * 4);
    20 + 3 * 8 + padding
}

impl BindingTransaction {
    /// A Binding request to `to` with a random transaction ID, first sent at
    /// `now` (the first [`BindingTransaction::poll_transmit`] returns it).
    pub fn new(now: Instant, to: SocketAddr, opts: &RequestOptions, cfg: Config) -> Self {
        Self::with_transaction_id(now, to, new_transaction_id(), opts, cfg)
    }

    /// Same as [`BindingTransaction::new`] with a given transaction ID.
    pub fn with_transaction_id(
        now: Instant,
        to: SocketAddr,
        transaction_id: [u8; 12],
        opts: &RequestOptions,
        cfg: Config,
    ) -> Self {
        let mut request = vec![0u8; request_capacity(opts)];
        // The capacity covers every attribute write_request adds, so this
        // cannot fail; if it ever did, an empty datagram is sent and the
        // transaction times out rather than panicking.
        let n = binding::write_request(&mut request, &transaction_id, opts).unwrap_or(0);
        request.truncate(n);
        BindingTransaction {
            to,
            transaction_id,
            request,
            timer: Transaction::new(now, cfg),
            send_pending: true,
            outcome: None,
        }
    }

    /// The transaction ID.
    pub fn transaction_id(&self) -> [u8; 12] {
        self.transaction_id
    }

    /// Where the request goes.
    pub fn destination(&self) -> SocketAddr {
        self.to
    }

    /// The next datagram to send, if any (the request, or a retransmission).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !std::mem::take(&mut self.send_pending) {
            return None;
        }
        Some(Transmit {
            to: self.to,
            payload: self.request.clone(),
        })
    }

    /// When [`BindingTransaction::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer.poll_timeout()
    }

    /// Advance the clock.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer.handle_timeout(now) {
            Action::Retransmit => self.send_pending = true,
            Action::Wait => {}
            Action::TimedOut { waited, sent } => {
                self.send_pending = false;
                self.outcome = Some(BindingOutcome::TimedOut { waited, sent });
            }
        }
    }

    /// Offer a received datagram. Returns `true` when it was this
    /// transaction's response (which completes the transaction); anything
    /// else — other transactions, other protocols, garbage, late duplicates —
    /// returns `false` and changes nothing.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let Ok(response) = binding::parse_response(datagram) else {
            return false;
        };
        if response.transaction_id != self.transaction_id {
            return false;
        }
        let Some(completion) = self.timer.on_response(now) else {
            return false;
        };
        self.send_pending = false;
        self.outcome = Some(BindingOutcome::Answered {
            from,
            response,
            completion,
        });
        true
    }

    /// How the transaction ended, once it has.
    pub fn outcome(&self) -> Option<&BindingOutcome> {
        self.outcome.as_ref()
    }

    /// How many times the request has been sent so far.
    pub fn sent(&self) -> u32 {
        self.timer.sent()
    }

    /// When the request was first sent (the transaction's start).
    pub fn first_sent(&self) -> Instant {
        self.timer.first_sent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{write_error, write_success, SuccessFields};
    use crate::raw::method;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Run a transaction that never gets an answer on a simulated clock that
    /// jumps from deadline to deadline; return the send offsets and the
    /// give-up offset.
    fn schedule(cfg: Config) -> (Vec<Duration>, Duration, u32) {
        let t0 = Instant::now();
        let mut t = Transaction::new(t0, cfg);
        let mut sends = vec![Duration::ZERO];
        for _ in 0..1000 {
            let at = t
                .poll_timeout()
                .expect("pending transaction has a deadline");
            // Waking early does nothing.
            assert_eq!(t.handle_timeout(at - ms(1)), Action::Wait);
            match t.handle_timeout(at) {
                Action::Retransmit => sends.push(at - t0),
                Action::TimedOut { waited, sent } => {
                    assert_eq!(waited, at - t0);
                    assert_eq!(t.poll_timeout(), None);
                    assert_eq!(t.handle_timeout(at + ms(10_000)), Action::Wait);
                    return (sends, waited, sent);
                }
                Action::Wait => panic!("deadline reached but nothing happened"),
            }
        }
        panic!("transaction never timed out");
    }

    #[test]
    fn rfc8489_default_schedule() {
        let (sends, gave_up, sent) = schedule(Config::default());
        let want: Vec<Duration> = [0, 500, 1500, 3500, 7500, 15500, 31500]
            .into_iter()
            .map(ms)
            .collect();
        assert_eq!(sends, want);
        assert_eq!(gave_up, ms(39_500));
        assert_eq!(sent, 7);
        assert_eq!(Config::default().budget(), ms(39_500));
        assert_eq!(Config::default().send_offsets(), want);
    }

    #[test]
    fn custom_schedule_and_budget() {
        let cfg = Config {
            rto: ms(100),
            rc: 3,
            rm: 4,
        };
        let (sends, gave_up, sent) = schedule(cfg);
        assert_eq!(sends, vec![ms(0), ms(100), ms(300)]);
        assert_eq!(gave_up, ms(700));
        assert_eq!(sent, 3);
        assert_eq!(cfg.budget(), ms(700));

        // Rc = 1: one send, then Rm × RTO. Rc = 0 behaves as 1.
        for rc in [0, 1] {
            let cfg = Config {
                rto: ms(50),
                rc,
                rm: 2,
            };
            let (sends, gave_up, sent) = schedule(cfg);
            assert_eq!(sends, vec![ms(0)]);
            assert_eq!((gave_up, sent), (ms(100), 1));
            assert_eq!(cfg.budget(), ms(100));
        }
    }

    #[test]
    fn absurd_config_does_not_overflow() {
        let cfg = Config {
            rto: Duration::from_secs(u64::MAX / 4),
            rc: 200,
            rm: u32::MAX,
        };
        let t0 = Instant::now();
        let mut t = Transaction::new(t0, cfg);
        let first = t.poll_timeout().unwrap();
        assert_eq!(first - t0, MAX_WAIT);
        assert_eq!(t.handle_timeout(first), Action::Retransmit);
        assert!(cfg.budget() >= MAX_WAIT);
    }

    #[test]
    fn late_driver_keeps_the_schedule() {
        let t0 = Instant::now();
        let mut t = Transaction::new(t0, Config::default());
        // Woken 200 ms late for the first retransmission: the second one is
        // still due at 1500 ms.
        assert_eq!(t.handle_timeout(t0 + ms(700)), Action::Retransmit);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(1500)));
        // Woken after the next deadline too (at 3600 ms, not 1500): one
        // retransmission now and a full 2000 ms wait, not a burst.
        assert_eq!(t.handle_timeout(t0 + ms(3600)), Action::Retransmit);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(5600)));
        assert_eq!(t.handle_timeout(t0 + ms(3601)), Action::Wait);
        // Giving up late: `waited` is the schedule, not the driver's
        // lateness.
        let cfg = Config {
            rto: ms(100),
            rc: 2,
            rm: 2,
        };
        let mut t = Transaction::new(t0, cfg);
        assert_eq!(t.handle_timeout(t0 + ms(150)), Action::Retransmit);
        assert_eq!(
            t.handle_timeout(t0 + ms(999)),
            Action::TimedOut {
                waited: ms(300),
                sent: 2
            }
        );
    }

    #[test]
    fn response_completes_once() {
        let t0 = Instant::now();
        let mut t = Transaction::new(t0, Config::default());
        assert_eq!(t.handle_timeout(t0 + ms(500)), Action::Retransmit);
        let c = t.on_response(t0 + ms(620)).unwrap();
        assert_eq!(c.elapsed, ms(620));
        assert_eq!(c.since_last_send, ms(120));
        assert_eq!(c.sent, 2);
        // Karn: no RTT sample after a retransmission.
        assert_eq!(c.rtt(), None);
        assert!(t.is_finished());
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.on_response(t0 + ms(700)), None);
        assert_eq!(t.handle_timeout(t0 + ms(100_000)), Action::Wait);

        let mut t = Transaction::new(t0, Config::default());
        assert_eq!(t.on_response(t0 + ms(3)).unwrap().rtt(), Some(ms(3)));
    }

    fn server() -> SocketAddr {
        "192.0.2.1:3478".parse().unwrap()
    }

    #[test]
    fn binding_transaction_retransmits_same_bytes_and_matches_response() {
        let t0 = Instant::now();
        let mut b = BindingTransaction::with_transaction_id(
            t0,
            server(),
            [7; 12],
            &RequestOptions::default(),
            Config::default(),
        );
        let first = b.poll_transmit().unwrap();
        assert_eq!(first.to, server());
        assert_eq!(
            binding::parse_request(&first.payload)
                .unwrap()
                .transaction_id,
            [7; 12]
        );
        assert_eq!(b.poll_transmit(), None);
        b.handle_timeout(t0 + ms(499));
        assert_eq!(b.poll_transmit(), None);
        b.handle_timeout(t0 + ms(500));
        assert_eq!(b.poll_transmit(), Some(first.clone()));

        let mapped: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let mut buf = [0u8; 128];
        // Another transaction's response and garbage are ignored.
        let fields = SuccessFields {
            mapped,
            response_origin: None,
            other_address: None,
            padding: None,
            fingerprint: false,
        };
        let n = write_success(&mut buf, &[8; 12], &fields).unwrap();
        assert!(!b.handle_datagram(t0 + ms(501), server(), &buf[..n]));
        assert!(!b.handle_datagram(t0 + ms(501), server(), b"garbage"));
        assert!(!b.handle_datagram(t0 + ms(501), server(), &first.payload));
        assert!(b.outcome().is_none());

        let n = write_success(&mut buf, &[7; 12], &fields).unwrap();
        assert!(b.handle_datagram(t0 + ms(530), server(), &buf[..n]));
        match b.outcome() {
            Some(BindingOutcome::Answered {
                from,
                response,
                completion,
            }) => {
                assert_eq!(*from, server());
                assert_eq!(response.mapped, Some(mapped));
                assert_eq!(completion.sent, 2);
                assert_eq!(completion.since_last_send, ms(30));
            }
            other => panic!("unexpected outcome {other:?}"),
        }
        // A duplicate does not change the outcome, nor is it sent again.
        assert!(!b.handle_datagram(t0 + ms(540), server(), &buf[..n]));
        b.handle_timeout(t0 + ms(100_000));
        assert_eq!(b.poll_transmit(), None);
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn binding_transaction_error_response_and_timeout() {
        let t0 = Instant::now();
        let opts = RequestOptions {
            change: Some(binding::ChangeRequest::BOTH),
            response_port: Some(9),
            padding: Some(1001),
            fingerprint: true,
        };
        let mut b = BindingTransaction::with_transaction_id(
            t0,
            server(),
            [1; 12],
            &opts,
            Config::default(),
        );
        let req = b.poll_transmit().unwrap();
        let parsed = binding::parse_request(&req.payload).unwrap();
        assert_eq!(parsed.change, Some(binding::ChangeRequest::BOTH));
        assert!(parsed.fingerprint);
        assert_eq!(parsed.padding, Some(1001));
        let mut buf = [0u8; 64];
        let n = write_error(&mut buf, method::BINDING, &[1; 12], 420, &[3], false).unwrap();
        assert!(b.handle_datagram(t0 + ms(5), server(), &buf[..n]));
        assert!(matches!(
            b.outcome(),
            Some(BindingOutcome::Answered { response, .. }) if response.outcome == Err(420)
        ));

        let cfg = Config {
            rto: ms(10),
            rc: 2,
            rm: 3,
        };
        let mut b = BindingTransaction::new(t0, server(), &RequestOptions::default(), cfg);
        let mut sends = 0;
        let mut now = t0;
        while b.outcome().is_none() {
            while b.poll_transmit().is_some() {
                sends += 1;
            }
            now = b.poll_timeout().unwrap();
            b.handle_timeout(now);
        }
        assert_eq!(sends, 2);
        assert_eq!(now - t0, ms(40));
        assert_eq!(
            b.outcome(),
            Some(&BindingOutcome::TimedOut {
                waited: ms(40),
                sent: 2
            })
        );
    }
}
