//! The data connection side of a TCP allocation (RFC 6062 §4.4): the
//! ConnectionBind a client sends first on a new TCP or TLS connection to
//! the server, to tie it to a peer connection ([`super::Event::Connected`]
//! or [`super::Event::ConnectionAttempt`]). Once bound, the connection
//! carries the peer's bytes as they are: no more STUN on it.

use super::config::Config;
use super::error::ClientError;
use super::wire::{self, Auth, Op};
use crate::integrity::{self, LongTermKey};
use crate::raw::{self, method, Class};
use crate::transaction::new_transaction_id;

/// A ConnectionBind in progress on one data connection. Send
/// [`ConnectionBind::request`], feed the answer (one STUN message framed
/// from the stream) to [`ConnectionBind::handle_response`].
pub struct ConnectionBind {
    cfg: Config,
    auth: Auth,
    id: u32,
    tid: [u8; 12],
    request: Vec<u8>,
    /// A 401 or 438 was answered once already.
    retried: bool,
}

impl std::fmt::Debug for ConnectionBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionBind")
            .field("connection_id", &self.id)
            .field("retried", &self.retried)
            .finish_non_exhaustive()
    }
}

/// What an answer to a ConnectionBind means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// Bound: from now on the connection carries the peer's bytes.
    Bound,
    /// The server wants the request again with the nonce it sent (the
    /// data connection is a new 5-tuple, and nonces may be bound to the
    /// client's address): send [`ConnectionBind::request`] again.
    Retry,
    /// Refused (400: no such connection, or it is bound already; 447...).
    Failed(ClientError),
    /// Not an answer to this request, or not signed by the server: ignore
    /// it.
    Ignored,
}

impl ConnectionBind {
    pub(crate) fn new(cfg: Config, auth: Auth, id: u32) -> Result<Self, ClientError> {
        let mut b = ConnectionBind {
            cfg,
            auth,
            id,
            tid: [0; 12],
            request: Vec::new(),
            retried: false,
        };
        b.rebuild()?;
        Ok(b)
    }

    fn rebuild(&mut self) -> Result<(), ClientError> {
        self.tid = new_transaction_id();
        self.request = wire::build_request(
            &Op::ConnectionBind(self.id),
            &self.tid,
            &self.cfg,
            Some(&self.auth),
        )?;
        Ok(())
    }

    /// The CONNECTION-ID being bound.
    pub fn connection_id(&self) -> u32 {
        self.id
    }

    /// The request to write on the data connection.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Take the server's answer.
    pub fn handle_response(&mut self, msg: &[u8]) -> BindOutcome {
        let Ok(h) = raw::parse_datagram(msg) else {
            return BindOutcome::Ignored;
        };
        if h.transaction_id != self.tid
            || h.method() != method::CONNECTION_BIND
            || !matches!(h.class(), Class::Success | Class::Error)
        {
            return BindOutcome::Ignored;
        }
        let Ok(resp) = wire::parse_response(msg, &h) else {
            return BindOutcome::Ignored;
        };
        // RFC 8489 §9.2.5: a success must be signed with our key.
        let signed = || integrity::verify(msg, &h, self.auth.key.as_bytes()).is_ok();
        match resp.code {
            None if signed() => BindOutcome::Bound,
            None => BindOutcome::Ignored,
            Some(401 | 438) if !self.retried => {
                let Some(nonce) = resp.nonce else {
                    return BindOutcome::Failed(ClientError::Malformed("401/438 without NONCE"));
                };
                self.retried = true;
                self.auth.nonce = nonce;
                if let Some(realm) = resp.realm.filter(|r| *r != self.auth.realm) {
                    let c = &self.cfg.credentials;
                    self.auth.key =
                        LongTermKey::derive(self.auth.algorithm, &c.username, &realm, &c.password);
                    self.auth.realm = realm;
                }
                match self.rebuild() {
                    Ok(()) => BindOutcome::Retry,
                    Err(e) => BindOutcome::Failed(e),
                }
            }
            Some(401) => BindOutcome::Failed(ClientError::WrongCredentials),
            Some(438) => BindOutcome::Failed(ClientError::StaleNonceLoop { attempts: 2 }),
            Some(c) => BindOutcome::Failed(ClientError::from_code(c)),
        }
    }
}
