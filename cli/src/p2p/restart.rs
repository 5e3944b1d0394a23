//! Keeping the connection through network changes: ICE restarts (RFC 8445
//! §9) signalled through the `--desc-out` / `--remote` files while the QUIC
//! connection and its stream carry on.
//!
//! - The peer restarted: its description in `--remote` has a new ufrag;
//!   [`Session::set_remote_description`] says so, and our new description
//!   goes to `--desc-out`.
//! - We restart (controlling side only, at most one in flight): when the
//!   path goes silent ([`SessionEvent::PathDegraded`]) or the TURN relay
//!   under it is lost ([`SessionError::RelayLost`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natkit_ice::session::Error as SessionError;
use natkit_ice::{Role, Session, SessionEvent};

use super::args::Common;
use super::report::Report;
use super::signal::{self, FileState};

/// How often a lost relay is checked for having been replaced.
const RELAY_RECHECK: Duration = Duration::from_millis(200);

/// At most one ICE restart of ours in flight: from its start until a new
/// path is selected, or `--timeout` passed.
#[derive(Default)]
pub struct Restarts {
    in_flight: AtomicBool,
    /// Which restart is in flight, so a stale timer leaves a newer one be.
    generation: AtomicU64,
}

impl Restarts {
    /// Start one unless one is in flight; its generation.
    fn begin(&self) -> Option<u64> {
        if self.in_flight.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(self.generation.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// A new path was selected: the restart did its job.
    fn settled(&self) {
        self.in_flight.store(false, Ordering::SeqCst);
    }

    /// Restart `generation` got no answer in time.
    fn expire(&self, generation: u64) {
        if self.generation.load(Ordering::SeqCst) == generation {
            self.in_flight.store(false, Ordering::SeqCst);
        }
    }
}

/// Restarts can be signalled only when descriptions travel by file both
/// ways: the new description out, the peer's answer in.
pub fn possible(c: &Common) -> bool {
    c.desc_out.is_some() && c.remote.is_some()
}

/// Restart ICE if this side may: controlling, files both ways, none in
/// flight. The answer arrives through [`watch_remote`].
fn maybe_restart(session: &Session, c: &Common, report: &Report, restarts: &Arc<Restarts>) {
    let Some(out) = c.desc_out.clone() else {
        return;
    };
    if session.role() != Role::Controlling || !possible(c) {
        return;
    }
    let Some(generation) = restarts.begin() else {
        return;
    };
    let (session, report, restarts) = (session.clone(), report.clone(), restarts.clone());
    let (json, limit) = (c.json, c.timeout);
    tokio::spawn(async move {
        restart(&session, &out, json, &report).await;
        // A restart that never leads to a new path must not block the next
        // one for ever.
        tokio::time::sleep(limit).await;
        restarts.expire(generation);
    });
}

async fn restart(session: &Session, out: &Path, json: bool, report: &Report) {
    match session.restart().await {
        Ok(d) => match signal::write_atomic(out, &signal::render(&d, json)) {
            Ok(()) => {
                report.restart(true);
                errln!(
                    "natkit: restarted ICE; new description written to {}",
                    out.display()
                );
            }
            Err(e) => errln!("warning: ICE restart: {e:#}"),
        },
        Err(e) => errln!("warning: ICE restart failed: {e}"),
    }
}

/// Path changes (and port mappings) to stderr and the report; a degraded
/// path restarts ICE.
pub async fn watch_events(
    session: Session,
    mut events: natkit_ice::Events,
    report: Report,
    c: Common,
    restarts: Arc<Restarts>,
) {
    loop {
        let Some(ev) = events.recv().await else {
            return;
        };
        match ev {
            SessionEvent::PathChanged(p) => {
                errln!("natkit: path changed: {p}");
                report.path_changed(&p);
                restarts.settled();
            }
            SessionEvent::PathDegraded { path, silent_for } => {
                errln!(
                    "natkit: path degraded: no answer for {:.1} s on {path}",
                    silent_for.as_secs_f64()
                );
                maybe_restart(&session, &c, &report, &restarts);
            }
            SessionEvent::ConsentLost(p) => errln!("natkit: consent lost on {p}"),
            SessionEvent::PortMapped(m) => errln!("natkit: port mapped: {m}"),
            SessionEvent::Punch(r) => {
                errln!("natkit: hard-NAT punch: {r}");
                report.punch(&r);
            }
            SessionEvent::PortMappingLost { mapping, failure } => {
                errln!("natkit: port mapping {} lost: {failure}", mapping.external)
            }
            _ => {}
        }
    }
}

/// Keep reading `--remote`: a description with a new ufrag is an ICE
/// restart by the peer, or its answer to ours.
pub async fn watch_remote(session: Session, c: Common, report: Report, mut ufrag: String) {
    let Some(path) = c.remote.clone() else { return };
    loop {
        tokio::time::sleep(signal::POLL).await;
        let Ok(FileState::Good(d)) = signal::look(&path) else {
            continue;
        };
        // The same generation (ufrag) again: nothing new.
        if d.ufrag == ufrag {
            continue;
        }
        ufrag = d.ufrag.clone();
        match session.set_remote_description(d).await {
            Ok(true) => {
                report.restart(false);
                let local = session.local_description().await;
                let text = signal::render(&local, c.json);
                match &c.desc_out {
                    Some(out) => match signal::write_atomic(out, &text) {
                        Ok(()) => errln!(
                            "natkit: the peer restarted ICE; new description written to {}",
                            out.display()
                        ),
                        Err(e) => errln!("warning: ICE restart: {e:#}"),
                    },
                    None => errln!(
                        "natkit: the peer restarted ICE; give it this side's new description:\n{text}"
                    ),
                }
            }
            // The restart stays in flight until a new path is selected
            // (or it expires): a relay that stays lost must not make the
            // two sides restart in a loop.
            Ok(false) => errln!("natkit: the peer answered the ICE restart"),
            Err(e) => errln!("warning: the peer's new description was refused: {e}"),
        }
    }
}

/// Wait until the session ends on its own. A lost relay ends it only when
/// no restart can replace it; otherwise the controlling side restarts, and
/// consent (RFC 7675) or QUIC's idle timer end it if no new path comes.
pub async fn ended(
    session: &Session,
    c: &Common,
    report: &Report,
    restarts: &Arc<Restarts>,
) -> SessionError {
    let mut told = false;
    loop {
        let why = session.closed().await;
        if !matches!(why, SessionError::RelayLost { .. }) || !possible(c) {
            return why;
        }
        if !told {
            errln!("natkit: {why}");
            told = true;
        }
        maybe_restart(session, c, report, restarts);
        // Cleared when a new pair is selected.
        tokio::time::sleep(RELAY_RECHECK).await;
        if !matches!(
            tokio::time::timeout(Duration::ZERO, session.closed()).await,
            Ok(SessionError::RelayLost { .. })
        ) {
            told = false;
        }
    }
}
