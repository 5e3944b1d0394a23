//! Agent configuration.

use std::time::Duration;

use natkit_proto::transaction;

use crate::Role;

/// How an [`crate::Agent`] behaves. `Default` gives RFC 8445 / RFC 7675
/// values tuned for fast connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The role the agent starts in (RFC 8445 §6.1.1: the offerer is
    /// usually controlling). Role conflicts are resolved on the wire.
    pub role: Role,
    /// The Ta this agent proposes, the interval between new checks (RFC
    /// 8445 §14.2): announced to the peer ([`Agent::local_ice_options`],
    /// carried by natkit's [`crate::Description`] like SDP's `ice-pacing`,
    /// RFC 8839 §5.5). The agent paces at the larger of both proposals, a
    /// peer that proposed none counting as RFC 8445's default of 50 ms (a
    /// standard agent paced by another signalling), and never below 5 ms
    /// (§14.2). natkit proposes 5 ms and slows down on large check lists
    /// (see [`Agent::pacing`]).
    ///
    /// [`Agent::local_ice_options`]: crate::Agent::local_ice_options
    /// [`Agent::pacing`]: crate::Agent::pacing
    pub ta: Duration,
    /// Retransmission timer of each check. ICE uses a shorter RTO than plain
    /// STUN (RFC 8445 §14.3): checks run on paths that are about to carry
    /// interactive traffic, and a dead pair should not hold up failure
    /// reporting for the 39.5 s of RFC 8489's defaults. The default (RTO
    /// 250 ms, Rc 6, Rm 8) sends at 0, 0.25, 0.75, 1.75, 3.75 and 7.75 s and
    /// fails a pair at 9.75 s.
    pub check_retransmit: transaction::Config,
    /// How long the controlling agent waits, after a pair first succeeds,
    /// for a higher-priority pair before nominating it anyway (regular
    /// nomination, RFC 8445 §8.1.1). It nominates at once when no
    /// higher-priority pair can still succeed. Not used when the peer
    /// announced natkit's renomination ([`IceOptions::renomination`]):
    /// then every check nominates its pair, the first pair that works is
    /// selected and better ones after it.
    pub nomination_delay: Duration,
    /// Whether the controlling agent nominates again when a higher-priority
    /// pair succeeds after selection (e.g. a direct pair after the relay
    /// won), and keeps checking the remaining pairs to find one. RFC 8445
    /// §8.1.1 nominates once per session; this is natkit's extension. A
    /// controlled natkit agent follows the highest-priority nomination, not
    /// the latest (§8.1.1: with several nominated pairs both agents use the
    /// highest-priority one; priorities of the valid pairs): the controlling
    /// agent only renominates upwards, so a nomination below the selected
    /// pair is a stale retransmission and is ignored.
    ///
    /// Announced as [`IceOptions::renomination`]; with a peer that
    /// announced it too, every check of the controlling agent nominates its
    /// pair (USE-CANDIDATE), with no [`Config::nomination_delay`] and no
    /// second check to nominate. Toward other peers it keeps regular
    /// nomination's wait and renominates only when a better pair succeeds
    /// after it: a standard controlled agent that accepts several
    /// nominations uses the highest-priority one (§8.1.1), as libnice does,
    /// or the latest, as aioice does, which is the same pair; one that
    /// refuses answers with an error (§7.3.1.5) and the pair fails here,
    /// leaving both on the first.
    pub renominate: bool,
    /// RFC 7675 §5.1: consent checks on the selected pair every this much,
    /// randomized to 0.8-1.2 times it. They double as keepalives (RFC 8445
    /// §11).
    pub consent_interval: Duration,
    /// RFC 7675 §5.1: consent is lost when no check was answered for this
    /// long (30 s).
    pub consent_timeout: Duration,
    /// The PAC timer of RFC 8863 §3 ("Patiently Awaiting Connectivity"):
    /// the least time the agent keeps checking before it may report
    /// [`crate::Event::Failed`], counted from the start of checking (the
    /// peer's credentials given, [`crate::Agent::set_remote_credentials`]).
    /// While it runs, neither end-of-candidates (RFC 8863 §4) nor an empty
    /// or all-failed check list fails the agent: a check from the peer can
    /// still teach a peer-reflexive candidate that connects (RFC 8445
    /// §7.3.1.3), e.g. when every candidate the peer signalled was unusable
    /// here (a browser's mDNS `.local` names, a family we have no base for).
    ///
    /// RFC 8863 recommends the check transaction timeout with its
    /// retransmissions, 39.5 s with RFC 5389's defaults (RTO 500 ms, Rc 7,
    /// Rm 16). natkit's own checks give up sooner
    /// ([`Config::check_retransmit`]: 9.75 s), but what the timer waits for
    /// is the *peer's* checks, and a peer with the default timers keeps
    /// checking a pair for 39.5 s: hence that default. It starts again with
    /// each ICE restart (RFC 8445 §9) and plays no part once a pair was
    /// selected (losing that pair is consent's business, RFC 7675).
    pub pac_timeout: Duration,
    /// RFC 8445 §6.1.2.5: the most candidate pairs kept (100).
    pub max_pairs: usize,
    /// The most remote candidates kept (signalled and peer-reflexive).
    pub max_remote_candidates: usize,
    /// Seed for the agent's random numbers (credentials, tie-breaker,
    /// transaction IDs, jitter). `None` seeds from the operating system;
    /// tests set it for reproducible runs. Never set it in production:
    /// credentials and transaction IDs must be unpredictable.
    pub seed: Option<u64>,
}

/// The least Ta (RFC 8445 §14.2: "MUST NOT be sent more often than once
/// every 5 ms"), natkit's proposal.
pub const MIN_TA: Duration = Duration::from_millis(5);

/// RFC 8445 §14.2's default Ta: the pacing of a peer that proposed none.
pub const DEFAULT_TA: Duration = Duration::from_millis(50);

/// What an agent announces to its peer beyond credentials and candidates,
/// for natkit's [`crate::Description`] to carry (SDP's counterparts are
/// `ice-pacing` and `ice-options`, RFC 8839 §5.5-§5.6). The default is what
/// a standard agent that says nothing gets: RFC 8445's pacing, no
/// renomination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IceOptions {
    /// The Ta the agent proposes (RFC 8445 §14.2); `None`: RFC 8445's
    /// default, 50 ms.
    pub pacing: Option<Duration>,
    /// natkit's renomination: as the controlled agent it follows the
    /// highest-priority nomination (RFC 8445 §8.1.1), ranked by the valid
    /// pairs' priorities both agents compute alike, and ignores lower ones
    /// as stale; so a controlling agent may nominate every pair it checks
    /// and take the first that works, then better ones as they succeed. (Not
    /// libwebrtc's renomination, which numbers nominations with a NOMINATION
    /// attribute; natkit sends nothing but standard USE-CANDIDATE.)
    pub renomination: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: Role::Controlling,
            ta: MIN_TA,
            check_retransmit: transaction::Config {
                rto: Duration::from_millis(250),
                rc: 6,
                rm: 8,
            },
            nomination_delay: Duration::from_millis(150),
            renominate: true,
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            pac_timeout: Duration::from_millis(39_500),
            max_pairs: 100,
            max_remote_candidates: 100,
            seed: None,
        }
    }
}
