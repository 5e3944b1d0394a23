//! Ctrl-C, heard once for the whole run.
//!
//! A `tokio::signal::ctrl_c()` future only sees a SIGINT that arrives
//! while it exists, and once one was made the signal no longer ends the
//! process: a Ctrl-C between two waits would be lost and the command would
//! hang on. [`listen`] installs the handler once, at the start of a run,
//! and remembers the press; every wait of the run (gathering, the exchange
//! of descriptions, ICE, the transfer) selects on [`pressed`], and each
//! stage cleans up what it holds (TURN allocations are deleted with a
//! Refresh of lifetime 0, RFC 8656 §7; a port mapping is deleted) before
//! the process exits.

use std::sync::OnceLock;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

static PRESSED: OnceLock<watch::Receiver<bool>> = OnceLock::new();

/// Listen for Ctrl-C from now on (call inside the runtime, before anything
/// is allocated): from here SIGINT only ends the waits that select on
/// [`pressed`].
pub fn listen() {
    PRESSED.get_or_init(|| {
        let (tx, rx) = watch::channel(false);
        // Registered here, synchronously: a press right after this call
        // is not lost while the task below is not yet polled.
        let sig = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match sig {
                Ok(mut s) => {
                    s.recv().await;
                    let _ = tx.send(true);
                    // The clean-up is bounded (about a second), but a user
                    // who presses again wants out now: a second Ctrl-C
                    // exits at once, as the default handler would (128 +
                    // SIGINT), leaving the allocation to its lifetime.
                    if s.recv().await.is_some() {
                        std::process::exit(130);
                    }
                }
                Err(e) => tracing::warn!("cannot listen for Ctrl-C: {e}"),
            }
            // Keep the sender: a closed channel would read as a press.
            std::future::pending::<()>().await;
        });
        rx
    });
}

/// Resolves once Ctrl-C was pressed (at once if it was already).
pub async fn pressed() {
    listen();
    let Some(rx) = PRESSED.get() else {
        return std::future::pending().await;
    };
    let mut rx = rx.clone();
    if rx.wait_for(|p| *p).await.is_err() {
        // The listening task is gone with its runtime: no press to wait for.
        std::future::pending::<()>().await;
    }
}
