//! The exchange of descriptions behind a short code, through the user's
//! own TURN relay: no new kind of server.
//!
//! Each side makes one extra allocation on the first `--turn` server (the
//! rendezvous allocation, apart from the session's). The waiting side
//! (`send`, `listen`) prints a code whose number is its relayed port; the
//! other side (`receive`, `connect`) asks its own allocation for a
//! permission to that port on the relay's relayed IP and knocks there.
//! natkit-turn relays between two of its own relayed addresses whatever
//! range they are in (the relay-to-relay exception of its peer policy);
//! the waiting side permits its own relayed address, which installs the
//! permission for the relay's IP (RFC 8656 §9: permissions are per IP), so
//! the knock gets in. The relay's default peer policy stays as it is.
//!
//! On top, SPAKE2 (over Ed25519) with the code as password, and the
//! descriptions sealed with ChaCha20-Poly1305 under keys derived from its
//! result (HKDF-SHA256, one per direction):
//!
//! ```text
//! knocking -> waiting: "NKC1" 1 | SPAKE2 message A
//! waiting -> knocking: "NKC1" 2 | SPAKE2 message B | seal(waiting's description)
//! knocking -> waiting: "NKC1" 3 | seal(knocking's description)
//! waiting -> knocking: "NKC1" 4 | seal("")                   (got it)
//! either way:          "NKC1" 5                             (wrong code)
//! ```
//!
//! Each message is repeated until the next one arrives (datagrams get
//! lost). A description that does not open under the key means the two
//! codes differ: both sides stop and say so. The waiting side takes one
//! knock only, so a guesser has one try per code; the relay, which carries
//! everything, gets no more than a guesser (SPAKE2 leaks nothing about the
//! password to an eavesdropper, and the sealed descriptions are useless
//! without the key). The descriptions carry the QUIC certificate
//! fingerprints, so the connection that follows is authenticated by them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_ice::turn::{Incoming, TurnConnection};
use natkit_ice::{Description, TurnServer};
use natkit_proto::turn::client::{self as turn, Event};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::code::ShortCode;

/// Every message's first bytes.
const MAGIC: &[u8; 4] = b"NKC1";
const KNOCK: u8 = 1;
const REPLY: u8 = 2;
const ANSWER: u8 = 3;
const GOT_IT: u8 = 4;
const WRONG_CODE: u8 = 5;

/// What the waiting side and the knocking side should do after a wrong
/// code.
const WAITING_HINT: &str = "run this command again for a new code, and pass it on exactly";
const KNOCKING_HINT: &str =
    "check the code with the other side; it must start again to make a new one";

/// SPAKE2's identities: the side that knocks is A, the waiting side B.
const ID_KNOCKING: &[u8] = b"natkit code: knocking side";
const ID_WAITING: &[u8] = b"natkit code: waiting side";

/// First gap between repeats of an unanswered message (doubled up to
/// [`REPEAT_MAX`]).
const REPEAT_FIRST: Duration = Duration::from_millis(200);
const REPEAT_MAX: Duration = Duration::from_secs(1);
/// How long each step after the knock may take: both sides are running
/// then, so only lost datagrams or a dead relay can hold it up.
const STEP: Duration = Duration::from_secs(10);
/// How long the waiting side keeps answering repeats of the last message
/// (its "got it" may have been lost).
const LINGER: Duration = Duration::from_secs(10);
/// Largest message accepted from the relay: a description with many
/// candidates, sealed.
const MAX_MESSAGE: usize = 8 << 10;

/// Why the exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The relay could not be used.
    #[error("rendezvous on TURN server {server}: {what}")]
    Relay {
        /// The server.
        server: SocketAddr,
        /// What failed.
        what: String,
        /// The `--json` error kind (`unreachable`, `timeout`,
        /// `wrong_credentials`, `server_error`, `usage`).
        kind: &'static str,
    },
    /// The codes of the two sides differ.
    #[error(
        "wrong code: the two sides' codes differ ({side}); nothing was exchanged. A code \
         works for one try only: {hint}"
    )]
    WrongCode {
        /// Who noticed.
        side: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// Nobody knocked in time.
    #[error(
        "nobody used the code within {:.0} s (--wait); run the other side with the code and \
         the same --turn server",
        .0.as_secs_f64()
    )]
    NobodyCame(Duration),
    /// Nothing answers behind the code's port.
    #[error(
        "no answer behind code port {port} on TURN server {server} within {:.0} s: check the \
         number of the code, that the other side still waits, and that both use the same --turn \
         server",
        .waited.as_secs_f64()
    )]
    NoAnswer {
        /// The code's port.
        port: u16,
        /// The relay.
        server: SocketAddr,
        /// How long we knocked.
        waited: Duration,
    },
    /// The other side stopped answering halfway.
    #[error(
        "the other side stopped answering during the exchange ({step}) for {:.0} s",
        .waited.as_secs_f64()
    )]
    Stalled {
        /// The step that got no answer.
        step: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The other side's description opened but is not one.
    #[error("the other side sent an unusable description: {0}")]
    Unusable(natkit_ice::DescriptionError),
    /// The user pressed Ctrl-C first.
    #[error("interrupted (Ctrl-C) before the descriptions were exchanged")]
    Interrupted,
    /// Our description does not fit a datagram.
    #[error("this side's description is {0} bytes, too long for the rendezvous")]
    TooLong(usize),
}

impl ExchangeError {
    /// The `--json` error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ExchangeError::Relay { kind, .. } => kind,
            ExchangeError::WrongCode { .. } => "wrong_code",
            ExchangeError::NobodyCame(_) | ExchangeError::Stalled { .. } => "timeout",
            ExchangeError::NoAnswer { .. } => "no_answer",
            ExchangeError::Unusable(_) => "bad_description",
            ExchangeError::Interrupted => "interrupted",
            ExchangeError::TooLong(_) => "usage",
        }
    }
}

/// The rendezvous allocation.
pub struct Rendezvous {
    conn: TurnConnection,
    server: SocketAddr,
    relayed: SocketAddr,
}

impl Rendezvous {
    /// Allocate on `server` (over its transport; `tls` for turns:) within
    /// `limit`.
    pub async fn open(
        server: &TurnServer,
        tls: Option<Arc<rustls::ClientConfig>>,
        limit: Duration,
    ) -> Result<Rendezvous, ExchangeError> {
        let addr = server.addr;
        let fail = |kind, what: String| ExchangeError::Relay {
            server: addr,
            what,
            kind,
        };
        let cfg = turn::Config::new(addr, server.transport, server.credentials.clone());
        let tls = match (tls, &server.tls_name) {
            (Some(c), Some(name)) => Some((
                c,
                rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| fail("usage", format!("TLS name {name:?}: {e}")))?,
            )),
            _ => None,
        };
        // Ctrl-C while connecting: nothing is allocated yet.
        let mut conn = tokio::select! {
            r = TurnConnection::connect(cfg, tls, limit) => r.map_err(|e| fail("unreachable", e.to_string()))?,
            _ = super::interrupt::pressed() => return Err(ExchangeError::Interrupted),
        };
        let deadline = Instant::now() + limit;
        let allocated = async {
            loop {
                match conn.next_until(deadline).await {
                    Ok(Some(Incoming::Event(Event::Allocated { relayed, .. }))) => {
                        return Ok(relayed[0])
                    }
                    Ok(Some(Incoming::Event(Event::Failed(e)))) => {
                        let kind = match e {
                            turn::ClientError::WrongCredentials => "wrong_credentials",
                            _ => "server_error",
                        };
                        return Err(fail(kind, format!("cannot allocate: {e}")));
                    }
                    Ok(Some(Incoming::Unreachable(k))) => {
                        return Err(fail(
                            "unreachable",
                            format!("unreachable ({k}): is the server running?"),
                        ))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(fail("timeout", format!("no allocation within {limit:?}")))
                    }
                    Err(e) => return Err(fail("io", e.to_string())),
                }
            }
        };
        let r = tokio::select! {
            r = allocated => r,
            _ = super::interrupt::pressed() => Err(ExchangeError::Interrupted),
        };
        let mut rv = Rendezvous {
            conn,
            server: addr,
            // Until allocated: what close() needs no address.
            relayed: addr,
        };
        match r {
            Ok(relayed) => {
                rv.relayed = relayed;
                Ok(rv)
            }
            Err(e) => {
                // An Allocate may be in flight or granted: delete it.
                rv.close().await;
                Err(e)
            }
        }
    }

    /// The relayed port: the number of this side's code.
    pub fn port(&self) -> u16 {
        self.relayed.port()
    }

    fn fail(&self, what: impl Into<String>) -> ExchangeError {
        ExchangeError::Relay {
            server: self.server,
            what: what.into(),
            kind: "server_error",
        }
    }

    /// Ask for a permission to `peer` and wait until the relay installed
    /// it.
    async fn permit(&mut self, peer: SocketAddr) -> Result<(), ExchangeError> {
        self.conn
            .client()
            .create_permission(peer, Instant::now())
            .map_err(|e| self.fail(e.to_string()))?;
        let deadline = Instant::now() + STEP;
        loop {
            match self.conn.next_until(deadline).await {
                Ok(Some(Incoming::Event(Event::PermissionCreated { .. }))) => return Ok(()),
                Ok(Some(Incoming::Event(Event::PermissionFailed { error, .. }))) => {
                    return Err(self.fail(format!(
                        "the relay refused a permission for {peer}: {error}"
                    )))
                }
                Ok(Some(Incoming::Event(Event::Failed(e)))) => {
                    return Err(self.fail(format!("allocation lost: {e}")))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(self.fail("no answer to CreatePermission")),
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }

    /// The next message from `from` (any peer when `None`) until
    /// `deadline`, or `None` then. Messages of other peers and anything
    /// that is not ours are skipped.
    async fn next_from(
        &mut self,
        from: Option<SocketAddr>,
        deadline: Instant,
    ) -> Result<Option<(SocketAddr, Vec<u8>)>, ExchangeError> {
        loop {
            match self.conn.next_until(deadline).await {
                Ok(Some(Incoming::Data { peer, data, .. })) => {
                    if from.is_some_and(|f| f != peer)
                        || data.len() > MAX_MESSAGE
                        || data.len() < 5
                        || &data[..4] != MAGIC
                    {
                        tracing::debug!(%peer, len = data.len(), "rendezvous: ignored a datagram");
                        continue;
                    }
                    let (kind, len) = (data[4], data.len());
                    tracing::trace!(%peer, kind, len, "rendezvous: received");
                    return Ok(Some((peer, data)));
                }
                Ok(Some(Incoming::Event(Event::Failed(e)))) => {
                    return Err(self.fail(format!("allocation lost: {e}")))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }

    async fn send(&mut self, peer: SocketAddr, msg: &[u8]) -> Result<(), ExchangeError> {
        tracing::trace!(%peer, kind = msg[4], len = msg.len(), "rendezvous: sending");
        self.conn
            .send_to(peer, msg)
            .await
            .map_err(|e| self.fail(e.to_string()))
    }

    /// The waiting side, before its code is shown: let knocks in. Our own
    /// relayed address is one the relay allows; the permission covers its
    /// IP, which is every other allocation's too.
    /// On failure (Ctrl-C included) the allocation is deleted.
    pub async fn open_door(&mut self) -> Result<(), ExchangeError> {
        let me = self.relayed;
        let r = tokio::select! {
            r = self.permit(me) => r,
            _ = super::interrupt::pressed() => Err(ExchangeError::Interrupted),
        };
        if r.is_err() {
            self.close().await;
        }
        r
    }

    /// The waiting side (after [`Rendezvous::open_door`]): wait up to
    /// `wait` for one knock, and exchange descriptions with it. The
    /// returned [`Linger`] keeps answering the other side's repeats for a
    /// while; finish it once connected.
    pub async fn wait_for_knock(
        mut self,
        code: &ShortCode,
        local: &Description,
        wait: Duration,
    ) -> Result<(Description, Linger), ExchangeError> {
        // Ctrl-C is handled here, so that the allocation is deleted.
        let r = tokio::select! {
            r = self.waiting(code, local, wait) => r,
            _ = super::interrupt::pressed() => Err(ExchangeError::Interrupted),
        };
        let (remote, peer, got_it) = match r {
            Ok(r) => r,
            Err(e) => {
                self.close().await;
                return Err(e);
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let until = Instant::now() + LINGER;
            let answer = async {
                // A repeat of its description: our "got it" was lost.
                while let Ok(Some((_, m))) = self.next_from(Some(peer), until).await {
                    if m[4] == ANSWER {
                        let _ = self.send(peer, &got_it).await;
                    }
                }
            };
            tokio::select! {
                _ = answer => {}
                _ = stopped => {}
            }
            self.close().await;
        });
        Ok((
            remote,
            Linger {
                stop: Some(stop),
                task: Some(task),
            },
        ))
    }

    /// [`Rendezvous::wait_for_knock`] up to the other side's description:
    /// it, the other side, and our "got it" (to repeat).
    async fn waiting(
        &mut self,
        code: &ShortCode,
        local: &Description,
        wait: Duration,
    ) -> Result<(Description, SocketAddr, Vec<u8>), ExchangeError> {
        let ours = local.to_string();
        if ours.len() > MAX_MESSAGE - 64 {
            return Err(ExchangeError::TooLong(ours.len()));
        }
        let deadline = Instant::now() + wait;
        let (peer, knock) = loop {
            match self.next_from(None, deadline).await? {
                None => return Err(ExchangeError::NobodyCame(wait)),
                Some((peer, m)) if m[4] == KNOCK => break (peer, m),
                Some(_) => {}
            }
        };
        let wrong = ExchangeError::WrongCode {
            side: "noticed here",
            hint: WAITING_HINT,
        };
        let (spake, msg_b) = Spake2::<Ed25519Group>::start_b(
            &Password::new(code.password()),
            &Identity::new(ID_KNOCKING),
            &Identity::new(ID_WAITING),
        );
        let Ok(key) = spake.finish(&knock[5..]) else {
            // Not a SPAKE2 message: the one try is spent all the same.
            let _ = self.send(peer, &header(WRONG_CODE)).await;
            return Err(wrong);
        };
        let keys = Keys::derive(&key);
        let mut reply = header(REPLY);
        reply.extend_from_slice(&msg_b);
        reply.extend_from_slice(&keys.seal(Direction::FromWaiting, 0, REPLY, ours.as_bytes()));
        self.send(peer, &reply).await?;

        let deadline = Instant::now() + STEP;
        let theirs = loop {
            let Some((_, m)) = self.next_from(Some(peer), deadline).await? else {
                return Err(ExchangeError::Stalled {
                    step: "waiting for its description",
                    waited: STEP,
                });
            };
            match m[4] {
                KNOCK if m == knock => self.send(peer, &reply).await?,
                ANSWER => match keys.open(Direction::FromKnocking, 0, ANSWER, &m[5..]) {
                    Some(d) => break d,
                    None => {
                        let _ = self.send(peer, &header(WRONG_CODE)).await;
                        return Err(wrong);
                    }
                },
                WRONG_CODE => {
                    return Err(ExchangeError::WrongCode {
                        side: "the other side noticed",
                        hint: WAITING_HINT,
                    })
                }
                _ => {}
            }
        };
        let text = String::from_utf8_lossy(&theirs);
        let remote = Description::parse_any(&text).map_err(ExchangeError::Unusable)?;
        let mut got_it = header(GOT_IT);
        got_it.extend_from_slice(&keys.seal(Direction::FromWaiting, 1, GOT_IT, b""));
        self.send(peer, &got_it).await?;
        Ok((remote, peer, got_it))
    }

    /// The knocking side: knock at `code`'s port on the relay, and
    /// exchange descriptions with whoever waits there. The returned
    /// [`Linger`] is the deletion of the allocation, started at once while
    /// ICE runs; finish it before exiting (also after a Ctrl-C during
    /// ICE), so that the process does not end before the relay heard it.
    pub async fn knock(
        mut self,
        code: &ShortCode,
        local: &Description,
    ) -> Result<(Description, Linger), ExchangeError> {
        // Ctrl-C is handled here, so that the allocation is deleted.
        let r = tokio::select! {
            r = self.knocking(code, local) => r,
            _ = super::interrupt::pressed() => Err(ExchangeError::Interrupted),
        };
        match r {
            Ok(remote) => {
                let task = tokio::spawn(async move { self.close().await });
                Ok((
                    remote,
                    Linger {
                        stop: None,
                        task: Some(task),
                    },
                ))
            }
            Err(e) => {
                self.close().await;
                Err(e)
            }
        }
    }

    async fn knocking(
        &mut self,
        code: &ShortCode,
        local: &Description,
    ) -> Result<Description, ExchangeError> {
        let ours = local.to_string();
        if ours.len() > MAX_MESSAGE - 64 {
            return Err(ExchangeError::TooLong(ours.len()));
        }
        let peer = SocketAddr::new(self.relayed.ip(), code.port);
        self.permit(peer).await?;
        let (spake, msg_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(code.password()),
            &Identity::new(ID_KNOCKING),
            &Identity::new(ID_WAITING),
        );
        let mut knock = header(KNOCK);
        knock.extend_from_slice(&msg_a);
        let wrong = ExchangeError::WrongCode {
            side: "noticed here",
            hint: KNOCKING_HINT,
        };
        let server = self.server;
        let reply = self
            .repeat_until(peer, &knock, REPLY, "no reply to the knock")
            .await
            .map_err(|e| match e {
                ExchangeError::Stalled { waited, .. } => ExchangeError::NoAnswer {
                    port: code.port,
                    server,
                    waited,
                },
                e => e,
            })?;
        const B_LEN: usize = 33;
        if reply.len() < 5 + B_LEN {
            let _ = self.send(peer, &header(WRONG_CODE)).await;
            return Err(wrong);
        }
        let keys = match spake.finish(&reply[5..5 + B_LEN]) {
            Ok(k) => Keys::derive(&k),
            Err(_) => {
                let _ = self.send(peer, &header(WRONG_CODE)).await;
                return Err(wrong);
            }
        };
        let Some(theirs) = keys.open(Direction::FromWaiting, 0, REPLY, &reply[5 + B_LEN..]) else {
            // Repeated, spaced: the other side must not wait for an
            // answer that never comes. Not followed at once by the
            // deletion of the allocation: natkit-turn was seen to drop
            // data sent just before a Refresh with lifetime 0.
            for _ in 0..3 {
                let _ = self.send(peer, &header(WRONG_CODE)).await;
                tokio::time::sleep(REPEAT_FIRST / 4).await;
            }
            return Err(wrong);
        };
        let text = String::from_utf8_lossy(&theirs);
        let remote = Description::parse_any(&text).map_err(ExchangeError::Unusable)?;
        let mut answer = header(ANSWER);
        answer.extend_from_slice(&keys.seal(Direction::FromKnocking, 0, ANSWER, ours.as_bytes()));
        let got_it = self
            .repeat_until(peer, &answer, GOT_IT, "no confirmation of our description")
            .await?;
        if keys
            .open(Direction::FromWaiting, 1, GOT_IT, &got_it[5..])
            .is_none()
        {
            return Err(ExchangeError::Stalled {
                step: "its confirmation did not verify",
                waited: Duration::ZERO,
            });
        }
        Ok(remote)
    }

    /// Send `msg` to `peer` and repeat it until a message of kind `want`
    /// comes back (returned), a wrong-code notice, or [`STEP`].
    async fn repeat_until(
        &mut self,
        peer: SocketAddr,
        msg: &[u8],
        want: u8,
        step: &'static str,
    ) -> Result<Vec<u8>, ExchangeError> {
        let end = Instant::now() + STEP;
        let mut gap = REPEAT_FIRST;
        loop {
            self.send(peer, msg).await?;
            let next = (Instant::now() + gap).min(end);
            while let Some((_, m)) = self.next_from(Some(peer), next).await? {
                if m[4] == want {
                    return Ok(m);
                }
                if m[4] == WRONG_CODE {
                    return Err(ExchangeError::WrongCode {
                        side: "the other side noticed",
                        hint: KNOCKING_HINT,
                    });
                }
            }
            if Instant::now() >= end {
                return Err(ExchangeError::Stalled { step, waited: STEP });
            }
            gap = (gap * 2).min(REPEAT_MAX);
        }
    }

    /// Delete the allocation (best effort, bounded): the relay would
    /// otherwise keep it until its lifetime ends.
    async fn close(&mut self) {
        // Nothing to delete (never allocated, already failed or closed):
        // no answer will come, do not wait for one.
        if !matches!(
            self.conn.client().state(),
            turn::State::Allocated | turn::State::Allocating
        ) {
            return;
        }
        self.conn.client().close(Instant::now());
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(i)) = self.conn.next_until(deadline).await {
            if matches!(i, Incoming::Event(Event::Closed | Event::Failed(_))) {
                break;
            }
        }
    }
}

/// A rendezvous after the exchange: the waiting side's answers repeats
/// until dropped (or for [`LINGER`]), then deletes the allocation; the
/// knocking side's only deletes it.
pub struct Linger {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Linger {
    /// Stop answering and delete the allocation, waiting for that (at
    /// most about 2 s).
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        // Not finished: stop answering; the task still deletes the
        // allocation if the runtime lives long enough.
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn header(kind: u8) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(kind);
    v
}

#[derive(Clone, Copy)]
enum Direction {
    FromWaiting,
    FromKnocking,
}

/// One key per direction, so a message can never be reflected back to
/// its sender as the other side's.
struct Keys {
    from_waiting: LessSafeKey,
    from_knocking: LessSafeKey,
}

impl Keys {
    /// HKDF-SHA256 (RFC 5869) from SPAKE2's shared key.
    fn derive(shared: &[u8]) -> Keys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"natkit short code v1").extract(shared);
        let key = |info: &[u8]| {
            let info = [info];
            let okm = prk
                .expand(&info, &CHACHA20_POLY1305)
                .expect("32 bytes is within HKDF-SHA256's output limit");
            LessSafeKey::new(UnboundKey::from(okm))
        };
        Keys {
            from_waiting: key(b"from the waiting side"),
            from_knocking: key(b"from the knocking side"),
        }
    }

    fn key(&self, d: Direction) -> &LessSafeKey {
        match d {
            Direction::FromWaiting => &self.from_waiting,
            Direction::FromKnocking => &self.from_knocking,
        }
    }

    /// Seal `plain` as message number `n` (a key seals at most two
    /// messages, each with its own nonce) of kind `kind`.
    fn seal(&self, d: Direction, n: u8, kind: u8, plain: &[u8]) -> Vec<u8> {
        let mut out = plain.to_vec();
        self.key(d)
            .seal_in_place_append_tag(nonce(n), Aad::from([kind]), &mut out)
            .expect("a description is far below ChaCha20-Poly1305's limit");
        out
    }

    fn open(&self, d: Direction, n: u8, kind: u8, sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let plain = self
            .key(d)
            .open_in_place(nonce(n), Aad::from([kind]), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn nonce(n: u8) -> Nonce {
    let mut b = [0u8; aead::NONCE_LEN];
    b[aead::NONCE_LEN - 1] = n;
    Nonce::assume_unique_for_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str) -> (Keys, Keys) {
        let (sa, ma) = Spake2::<Ed25519Group>::start_a(
            &Password::new(a.as_bytes()),
            &Identity::new(ID_KNOCKING),
            &Identity::new(ID_WAITING),
        );
        let (sb, mb) = Spake2::<Ed25519Group>::start_b(
            &Password::new(b.as_bytes()),
            &Identity::new(ID_KNOCKING),
            &Identity::new(ID_WAITING),
        );
        (
            Keys::derive(&sa.finish(&mb).unwrap()),
            Keys::derive(&sb.finish(&ma).unwrap()),
        )
    }

    #[test]
    fn the_same_code_opens_the_other_sides_message() {
        let (k, w) = pair("1-acid-acorn-actor", "1-acid-acorn-actor");
        let m = w.seal(Direction::FromWaiting, 0, REPLY, b"nk1.desc");
        assert_eq!(
            k.open(Direction::FromWaiting, 0, REPLY, &m).unwrap(),
            b"nk1.desc"
        );
        // Not as another kind, number or direction, and not when altered.
        assert!(k.open(Direction::FromWaiting, 0, ANSWER, &m).is_none());
        assert!(k.open(Direction::FromWaiting, 1, REPLY, &m).is_none());
        assert!(k.open(Direction::FromKnocking, 0, REPLY, &m).is_none());
        let mut bad = m.clone();
        bad[0] ^= 1;
        assert!(k.open(Direction::FromWaiting, 0, REPLY, &bad).is_none());
    }

    #[test]
    fn a_different_code_opens_nothing() {
        let (k, w) = pair("1-acid-acorn-actor", "1-acid-acorn-adobe");
        let m = w.seal(Direction::FromWaiting, 0, REPLY, b"nk1.desc");
        assert!(k.open(Direction::FromWaiting, 0, REPLY, &m).is_none());
        let m = k.seal(Direction::FromKnocking, 0, ANSWER, b"nk1.desc");
        assert!(w.open(Direction::FromKnocking, 0, ANSWER, &m).is_none());
    }
}
