//! Signals and a shutdown handle shared by tasks and blocking worker threads.
//!
//! A server's `main` makes one [`Signals`] and awaits [`Signals::next`] in a loop (a signal
//! that comes while it handles the previous one, a SIGINT during a SIGHUP reload say, waits
//! for the next call instead of being lost), logs which one came, and calls
//! [`Shutdown::trigger`].
//! Async tasks `select!` on [`Shutdown::wait`]; blocking UDP workers (which wake up at least
//! once per receive timeout) poll [`Shutdown::is_triggered`], a single atomic load.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal as unix_signal, SignalKind};
use tokio::sync::watch;

/// The signal that asked the process to stop (or, for [`Signal::Hangup`], to reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM: a service manager asks for a clean stop.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGHUP: conventionally "reload configuration"; the caller decides.
    Hangup,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        })
    }
}

/// Waits for the next SIGTERM, SIGINT or SIGHUP and says which one came. A signal that
/// arrives between two calls is not seen by the second: a loop should keep one [`Signals`].
///
/// Must run inside a tokio runtime. Fails only if the handlers cannot be installed. Once
/// installed, tokio's handlers replace the default action (terminate) for the rest of the
/// process, so keep calling this (or exit) after each signal.
pub async fn signal() -> io::Result<Signal> {
    Ok(Signals::new()?.next().await)
}

/// SIGTERM, SIGINT and SIGHUP, subscribed once: every signal from [`Signals::new`] on is
/// reported by [`Signals::next`], also one that came while the caller was busy.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Subscribe. Must run inside a tokio runtime; fails only if the handlers cannot be
    /// installed. From now on tokio's handlers replace the default action (terminate).
    pub fn new() -> io::Result<Signals> {
        Ok(Signals {
            term: unix_signal(SignalKind::terminate())?,
            int: unix_signal(SignalKind::interrupt())?,
            hup: unix_signal(SignalKind::hangup())?,
        })
    }

    /// The next signal (one that came since the last call, at once).
    pub async fn next(&mut self) -> Signal {
        // `recv` yields `None` only if the driver shuts down; then no signal can come any
        // more, which we report as a termination so the caller stops instead of hanging.
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

struct Inner {
    /// Fast path for blocking workers: one relaxed-enough atomic load per poll.
    flag: AtomicBool,
    /// Wakes async waiters.
    tx: watch::Sender<bool>,
}

/// A cheap-to-clone shutdown flag: trigger once, observed by every clone.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, untriggered handle.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                tx,
            }),
        }
    }

    /// Asks everyone holding a clone to stop. Idempotent.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::Release);
        // `send_replace` works even when no receiver exists yet.
        self.inner.tx.send_replace(true);
    }

    /// True once [`trigger`](Self::trigger) was called on any clone.
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::Acquire)
    }

    /// Completes when [`trigger`](Self::trigger) is called (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.inner.tx.subscribe();
        // The sender lives in `self.inner`, which we borrow, so `wait_for` cannot see it
        // dropped; an error would only mean "closed", which also means "stop".
        let _ = rx.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wait_completes_after_trigger_from_another_clone() {
        let s = Shutdown::new();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        assert!(!s.is_triggered());
        s.clone().trigger();
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        assert!(s.is_triggered());
        // Already triggered: returns at once; triggering again is harmless.
        s.trigger();
        tokio::time::timeout(Duration::from_secs(1), s.wait())
            .await
            .unwrap();
    }

    #[test]
    fn blocking_thread_sees_trigger() {
        let s = Shutdown::default();
        let worker = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut polls = 0u32;
                // Bounded: gives up after ~5 s.
                while !s.is_triggered() && polls < 5000 {
                    std::thread::sleep(Duration::from_millis(1));
                    polls += 1;
                }
                s.is_triggered()
            })
        };
        s.trigger();
        assert!(worker.join().unwrap());
    }

    #[tokio::test]
    async fn signal_reports_which_signal_came() {
        // Install tokio's handlers for the process first, so a signal raised before the waiter
        // subscribes is swallowed instead of killing the test binary.
        let _keep = [
            unix_signal(SignalKind::hangup()).unwrap(),
            unix_signal(SignalKind::terminate()).unwrap(),
            unix_signal(SignalKind::interrupt()).unwrap(),
        ];
        for (sig, expected) in [
            (libc::SIGHUP, Signal::Hangup),
            (libc::SIGTERM, Signal::Terminate),
            (libc::SIGINT, Signal::Interrupt),
        ] {
            // Let stray deliveries of the previous signal drain first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let waiter = tokio::spawn(signal());
            // The waiter only sees signals raised after it subscribed, so raise until it reports
            // (bounded: 40 tries, 2 s).
            for _ in 0..40 {
                // SAFETY: `kill` on our own pid with a signal whose handler tokio installed.
                let rc = unsafe { libc::kill(libc::getpid(), sig) };
                assert_eq!(rc, 0);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if waiter.is_finished() {
                    break;
                }
            }
            assert!(waiter.is_finished(), "no report for {expected}");
            assert_eq!(waiter.await.unwrap().unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_signal_that_comes_between_two_waits_is_not_lost() {
        let mut signals = Signals::new().unwrap();
        // SAFETY: `kill` on our own pid with a signal whose handler tokio installed.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
        // Busy elsewhere meanwhile (a reload, say).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = tokio::time::timeout(Duration::from_secs(2), signals.next()).await;
        assert_eq!(got.expect("the signal is kept"), Signal::Hangup);
    }

    #[test]
    fn signal_names() {
        assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
        assert_eq!(Signal::Interrupt.to_string(), "SIGINT");
        assert_eq!(Signal::Hangup.to_string(), "SIGHUP");
    }
}
