//! Signalling: what each side sends the other before and while ICE runs.
//!
//! A [`Description`] carries the ICE credentials (RFC 8445 §5.3), the QUIC
//! certificate's fingerprint and the candidates gathered so far. It has two
//! forms:
//!
//! - serde (JSON or anything else) for applications with their own
//!   signalling channel;
//! - a compact text form for people, one copy-pasteable word:
//!   `nk1.` followed by base64url. It carries a CRC-32, so a truncated or
//!   mistyped paste is refused with a clear error instead of yielding wrong
//!   candidates. Whitespace inside it (terminal line wraps) is ignored.
//!
//! Candidates found later travel as [`TrickleCandidate`]s (RFC 8838 §9),
//! tagged with the ufrag so a stale one from before an ICE restart is
//! recognised.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::candidate::{is_ice_chars, CandidateKind, MAX_FOUNDATION_LEN};
use crate::config::IceOptions;
use crate::credentials::{Credentials, CredentialsError};
use crate::fingerprint::Fingerprint;
use crate::Candidate;

/// Prefix of the text form of a [`Description`].
pub const PREFIX: &str = "nk1.";
/// Prefix of the text form of a [`TrickleCandidate`].
pub const TRICKLE_PREFIX: &str = "nk1c.";
/// Most candidates one description may carry (the agent keeps at most 100
/// remote candidates).
pub const MAX_CANDIDATES: usize = 100;

/// A candidate as signalled: what the peer needs, nothing more (no base or
/// related address, which would only reveal private addresses).
///
/// Its address is an IP address, never a name: natkit does not hide host
/// addresses behind mDNS `.local` names, so its own descriptions never
/// carry one, and this format has no way to. A driver translating another
/// agent's signalling (a browser's SDP) resolves such names itself (mDNS is
/// I/O) or skips them; skipping loses nothing the agent needs, because it
/// waits out the PAC timer for the peer's checks, which arrive from the
/// hidden addresses and connect through peer-reflexive candidates
/// (RFC 8863 §3, see [`crate::Agent::add_remote_candidate`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignalledCandidate {
    /// Candidate type.
    pub kind: CandidateKind,
    /// Transport address (UDP).
    pub addr: SocketAddr,
    /// Priority (RFC 8445 §5.1.2).
    pub priority: u32,
    /// Foundation (RFC 8445 §5.1.1.3).
    pub foundation: String,
}

impl SignalledCandidate {
    /// The signalled form of a local candidate.
    pub fn from_local(c: &Candidate) -> Self {
        SignalledCandidate {
            kind: c.kind,
            addr: c.addr,
            priority: c.priority,
            foundation: c.foundation.clone(),
        }
    }

    /// The remote candidate the agent takes.
    pub fn to_remote(&self) -> Candidate {
        Candidate::remote(self.kind, self.addr, self.priority, &self.foundation)
    }
}

impl fmt::Display for SignalledCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)
    }
}

/// One side's session description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// ICE username fragment.
    pub ufrag: String,
    /// ICE password.
    pub pwd: String,
    /// SHA-256 fingerprint of the QUIC certificate this side will present.
    pub fingerprint: Fingerprint,
    /// Candidates gathered so far.
    pub candidates: Vec<SignalledCandidate>,
    /// No more candidates will follow (RFC 8838 §8.2).
    #[serde(default)]
    pub end_of_candidates: bool,
    /// The Ta this side proposes, in milliseconds (RFC 8445 §14.2; SDP's
    /// `ice-pacing`, RFC 8839 §5.5): both sides pace their checks at the
    /// larger proposal. Absent, as from an agent that proposes none:
    /// RFC 8445's default, 50 ms. The text form carries 1 to 63 ms (larger
    /// proposals as 63, which only makes the peer pace faster than we do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_pacing_ms: Option<u16>,
    /// This side does natkit's renomination ([`IceOptions::renomination`]):
    /// with both sides announcing it, the controlling side nominates the
    /// first pair that works at once and better ones after it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub renomination: bool,
    /// natkit only: how this side's NAT maps, as found while gathering,
    /// for the hard-NAT punch (`session_core::punch`). Absent when unknown
    /// (one STUN answer, no RFC 5780 other address) and from standard
    /// agents; a peer acts on it only when both sides announce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatMapping>,
}

/// How a NAT maps (RFC 4787 §4.1), as far as the punch needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "mapping", rename_all = "snake_case")]
pub enum NatMapping {
    /// Endpoint-independent mapping: every peer sees this side at `addr`
    /// (two STUN answers agreed, a gateway maps the port, or the host's
    /// own address is public). The peer's punch sockets send to it.
    Easy {
        /// The address every peer sees.
        addr: SocketAddr,
    },
    /// Address- or address-and-port-dependent mapping ("symmetric"): each
    /// destination gets another port of `ip`. `last_port` is the last
    /// mapping gathering saw; `delta` the step between successive mappings
    /// when they came in sequence (port prediction: the next ones are
    /// `last_port + k * delta`).
    Hard {
        /// The NAT's outside address.
        ip: IpAddr,
        /// The last mapped port seen.
        last_port: u16,
        /// The step between successive mappings, if constant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<i16>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Flag bits of the text form (the byte after the version). Readers ignore
/// bits they do not know, so new ones keep older natkits reading it.
mod flag {
    /// [`super::Description::end_of_candidates`].
    pub const END_OF_CANDIDATES: u8 = 1;
    /// [`super::Description::renomination`].
    pub const RENOMINATION: u8 = 1 << 1;
    /// [`super::Description::ice_pacing_ms`] sits in the top six bits
    /// (0: none).
    pub const PACING_SHIFT: u8 = 2;
    /// The largest pacing the six bits hold, in ms.
    pub const PACING_MAX: u16 = 63;
}

/// A description or trickled candidate that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    /// The text does not start with the expected prefix.
    #[error("not a natkit description: it should start with {expected:?} (did the copy miss its start?)")]
    Prefix {
        /// The prefix expected.
        expected: &'static str,
    },
    /// Characters outside base64url.
    #[error("the description has characters that base64url does not use (at byte {0})")]
    Base64(usize),
    /// The checksum does not match: truncated or altered in transit.
    #[error(
        "the description is damaged: its checksum does not match (was it cut short or edited?)"
    )]
    Checksum,
    /// It ends too early.
    #[error("the description is truncated: {0} is missing")]
    Truncated(&'static str),
    /// A newer format.
    #[error("description format version {0} is not supported by this natkit (it reads version 1)")]
    Version(u8),
    /// Credentials out of RFC 8839 bounds.
    #[error("the description's ICE credentials are invalid: {0}")]
    Credentials(#[from] CredentialsError),
    /// A candidate with an unknown type, an unusable address or a bad
    /// foundation.
    #[error("candidate {index} of the description is invalid: {reason}")]
    Candidate {
        /// Its position.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too many candidates.
    #[error("the description has {0} candidates; at most {MAX_CANDIDATES} are accepted")]
    TooMany(usize),
    /// Bytes after the end.
    #[error("the description has {0} unexpected bytes at its end")]
    Trailing(usize),
    /// JSON that does not parse into a description.
    #[error("the description is not valid JSON for a natkit description: {0}")]
    Json(String),
}

impl Description {
    /// Checks what serde cannot: credential and candidate bounds. The text
    /// parser runs it too.
    pub fn validate(&self) -> Result<(), DescriptionError> {
        Credentials::new(&self.ufrag, &self.pwd)?;
        if self.candidates.len() > MAX_CANDIDATES {
            return Err(DescriptionError::TooMany(self.candidates.len()));
        }
        for (index, c) in self.candidates.iter().enumerate() {
            validate_candidate(c)
                .map_err(|reason| DescriptionError::Candidate { index, reason })?;
        }
        Ok(())
    }

    /// Reads either form: the `nk1.` text or JSON (an application's own
    /// signalling, or `natkit` with `--json`).
    pub fn parse_any(s: &str) -> Result<Description, DescriptionError> {
        let t = s.trim();
        if t.starts_with('{') {
            let d: Description =
                serde_json::from_str(t).map_err(|e| DescriptionError::Json(e.to_string()))?;
            d.validate()?;
            Ok(d)
        } else {
            t.parse()
        }
    }

    /// What this side announced beyond standard ICE, for
    /// [`crate::Agent::set_remote_ice_options`].
    pub fn ice_options(&self) -> IceOptions {
        IceOptions {
            pacing: self
                .ice_pacing_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            renomination: self.renomination,
        }
    }

    /// Announce `o` (from [`crate::Agent::local_ice_options`]).
    pub fn set_ice_options(&mut self, o: IceOptions) {
        self.ice_pacing_ms = o
            .pacing
            .map(|d| u16::try_from(d.as_millis()).unwrap_or(u16::MAX));
        self.renomination = o.renomination;
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(1); // format version
        let pacing = self
            .ice_pacing_ms
            .map_or(0, |ms| ms.clamp(1, flag::PACING_MAX) as u8);
        out.push(
            (if self.end_of_candidates {
                flag::END_OF_CANDIDATES
            } else {
                0
            }) | (if self.renomination {
                flag::RENOMINATION
            } else {
                0
            }) | (pacing << flag::PACING_SHIFT),
        );
        put_str(out, &self.ufrag);
        put_str(out, &self.pwd);
        out.extend_from_slice(&self.fingerprint.0);
        out.push(self.candidates.len().min(255) as u8);
        for c in self.candidates.iter().take(255) {
            put_candidate(out, c);
        }
        if let Some(n) = &self.nat {
            put_nat(out, n);
        }
    }

    fn decode(b: &[u8]) -> Result<Description, DescriptionError> {
        let mut r = Reader(b);
        let version = r.u8("the format version")?;
        if version != 1 {
            return Err(DescriptionError::Version(version));
        }
        let flags = r.u8("the flags")?;
        let ufrag = r.string("the ufrag")?;
        let pwd = r.string("the password")?;
        let fingerprint = Fingerprint(r.array("the fingerprint")?);
        let n = usize::from(r.u8("the candidate count")?);
        let mut candidates = Vec::with_capacity(n);
        for index in 0..n {
            candidates.push(r.candidate(index)?);
        }
        let nat = r.extensions()?;
        let d = Description {
            ufrag,
            pwd,
            fingerprint,
            candidates,
            end_of_candidates: flags & flag::END_OF_CANDIDATES != 0,
            ice_pacing_ms: match u16::from(flags >> flag::PACING_SHIFT) {
                0 => None,
                ms => Some(ms),
            },
            renomination: flags & flag::RENOMINATION != 0,
            nat,
        };
        d.validate()?;
        Ok(d)
    }
}

impl fmt::Display for Description {
    /// The compact text form (`nk1.` + base64url).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = Vec::with_capacity(128);
        self.encode(&mut b);
        write!(f, "{PREFIX}{}", seal(b))
    }
}

impl FromStr for Description {
    type Err = DescriptionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Description::decode(&open(s, PREFIX)?)
    }
}

/// A candidate found after the description was sent (RFC 8838 §9), or the
/// end of candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrickleCandidate {
    /// The ufrag of the description it belongs to (RFC 8838 §9: a candidate
    /// of an earlier ICE generation is ignored).
    pub ufrag: String,
    /// The candidate, or `None` for end-of-candidates.
    pub candidate: Option<SignalledCandidate>,
}

impl fmt::Display for TrickleCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = Vec::with_capacity(48);
        put_str(&mut b, &self.ufrag);
        match &self.candidate {
            Some(c) => {
                b.push(1);
                put_candidate(&mut b, c);
            }
            None => b.push(0),
        }
        write!(f, "{TRICKLE_PREFIX}{}", seal(b))
    }
}

impl FromStr for TrickleCandidate {
    type Err = DescriptionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = open(s, TRICKLE_PREFIX)?;
        let mut r = Reader(&b);
        let ufrag = r.string("the ufrag")?;
        let candidate = match r.u8("the candidate flag")? {
            0 => None,
            _ => {
                let c = r.candidate(0)?;
                validate_candidate(&c)
                    .map_err(|reason| DescriptionError::Candidate { index: 0, reason })?;
                Some(c)
            }
        };
        if !r.0.is_empty() {
            return Err(DescriptionError::Trailing(r.0.len()));
        }
        Ok(TrickleCandidate { ufrag, candidate })
    }
}

fn validate_candidate(c: &SignalledCandidate) -> Result<(), &'static str> {
    if c.addr.port() == 0 {
        return Err("port 0");
    }
    let ip = c.addr.ip();
    if ip.is_unspecified() || ip.is_multicast() {
        return Err("unspecified or multicast address");
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err("broadcast address");
    }
    if c.priority == 0 {
        return Err("priority 0");
    }
    if !is_ice_chars(&c.foundation, MAX_FOUNDATION_LEN) {
        return Err("foundation must be 1 to 32 ice-chars");
    }
    Ok(())
}

/// Appends a CRC-32 and encodes base64url.
fn seal(mut b: Vec<u8>) -> String {
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

/// Strips the prefix and whitespace, decodes, checks the CRC.
fn open(s: &str, prefix: &'static str) -> Result<Vec<u8>, DescriptionError> {
    let s = s.trim();
    let body = s
        .strip_prefix(prefix)
        .ok_or(DescriptionError::Prefix { expected: prefix })?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(i) = compact
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
    {
        return Err(DescriptionError::Base64(i));
    }
    // A length that base64 cannot produce is a cut-off paste.
    let b = URL_SAFE_NO_PAD
        .decode(compact.as_bytes())
        .map_err(|_| DescriptionError::Checksum)?;
    if b.len() < 4 {
        return Err(DescriptionError::Truncated("the checksum"));
    }
    let (data, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(data).to_be_bytes() != crc {
        return Err(DescriptionError::Checksum);
    }
    Ok(data.to_vec())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Credentials longer than 255 bytes cannot be in the text form; the
    // agent's own are 8 and 24 characters.
    let b = &s.as_bytes()[..s.len().min(255)];
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}

fn kind_code(k: CandidateKind) -> u8 {
    match k {
        CandidateKind::Host => 0,
        CandidateKind::ServerReflexive => 1,
        CandidateKind::PeerReflexive => 2,
        CandidateKind::Relayed => 3,
    }
}

fn put_candidate(out: &mut Vec<u8>, c: &SignalledCandidate) {
    let v6 = c.addr.is_ipv6();
    out.push(kind_code(c.kind) | if v6 { 0x80 } else { 0 });
    match c.addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&c.addr.port().to_be_bytes());
    out.extend_from_slice(&c.priority.to_be_bytes());
    put_str(out, &c.foundation);
}

/// Extension records of the text form, after the candidates: a type
/// byte, a length byte, the value. Readers skip types they do not know;
/// natkit before the punch read no records at all and refuse a
/// description with one ("unexpected bytes at its end"), which is why a
/// description carries one only when gathering classified the NAT.
mod ext {
    /// [`super::NatMapping::Easy`]: address (4 or 16 bytes), port.
    pub const NAT_EASY: u8 = 1;
    /// [`super::NatMapping::Hard`]: address (4 or 16 bytes), last port,
    /// delta (i16, 0: none).
    pub const NAT_HARD: u8 = 2;
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
}

fn put_nat(out: &mut Vec<u8>, n: &NatMapping) {
    let mut v = Vec::with_capacity(20);
    let typ = match *n {
        NatMapping::Easy { addr } => {
            put_ip(&mut v, addr.ip());
            v.extend_from_slice(&addr.port().to_be_bytes());
            ext::NAT_EASY
        }
        NatMapping::Hard {
            ip,
            last_port,
            delta,
        } => {
            put_ip(&mut v, ip);
            v.extend_from_slice(&last_port.to_be_bytes());
            v.extend_from_slice(&delta.unwrap_or(0).to_be_bytes());
            ext::NAT_HARD
        }
    };
    out.push(typ);
    out.push(v.len() as u8);
    out.extend_from_slice(&v);
}

/// An IPv4 or IPv6 address of `len` bytes at the start of `v`.
fn ip_of(v: &[u8], len: usize) -> Option<IpAddr> {
    match len {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(&v[..4]).ok()?,
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&v[..16]).ok()?,
        ))),
        _ => None,
    }
}

fn nat_of(typ: u8, v: &[u8]) -> Result<Option<NatMapping>, DescriptionError> {
    let bad = DescriptionError::Truncated("the NAT mapping record");
    Ok(match typ {
        ext::NAT_EASY => {
            let ip = ip_of(v, v.len().wrapping_sub(2)).ok_or(bad)?;
            let port = u16::from_be_bytes([v[v.len() - 2], v[v.len() - 1]]);
            Some(NatMapping::Easy {
                addr: SocketAddr::new(ip, port),
            })
        }
        ext::NAT_HARD => {
            let ip = ip_of(v, v.len().wrapping_sub(4)).ok_or(bad)?;
            let t = &v[v.len() - 4..];
            let delta = i16::from_be_bytes([t[2], t[3]]);
            Some(NatMapping::Hard {
                ip,
                last_port: u16::from_be_bytes([t[0], t[1]]),
                delta: (delta != 0).then_some(delta),
            })
        }
        _ => None,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], DescriptionError> {
        if self.0.len() < n {
            return Err(DescriptionError::Truncated(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DescriptionError> {
        Ok(self.take(1, what)?[0])
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DescriptionError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn string(&mut self, what: &'static str) -> Result<String, DescriptionError> {
        let n = usize::from(self.u8(what)?);
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DescriptionError::Truncated(what))
    }
    /// The extension records up to the end (see [`ext`]).
    fn extensions(&mut self) -> Result<Option<NatMapping>, DescriptionError> {
        let mut nat = None;
        while !self.0.is_empty() {
            let typ = self.u8("an extension's type")?;
            let n = usize::from(self.u8("an extension's length")?);
            let v = self.take(n, "an extension")?;
            if let Some(m) = nat_of(typ, v)? {
                nat = Some(m);
            }
        }
        Ok(nat)
    }

    fn candidate(&mut self, index: usize) -> Result<SignalledCandidate, DescriptionError> {
        let bad = |reason| DescriptionError::Candidate { index, reason };
        let tag = self.u8("a candidate's type")?;
        let kind = match tag & 0x7F {
            0 => CandidateKind::Host,
            1 => CandidateKind::ServerReflexive,
            2 => CandidateKind::PeerReflexive,
            3 => CandidateKind::Relayed,
            _ => return Err(bad("unknown candidate type")),
        };
        let ip = if tag & 0x80 != 0 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>("a candidate's address")?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>("a candidate's address")?))
        };
        let port = u16::from_be_bytes(self.array("a candidate's port")?);
        let priority = u32::from_be_bytes(self.array("a candidate's priority")?);
        let foundation = self.string("a candidate's foundation")?;
        Ok(SignalledCandidate {
            kind,
            addr: SocketAddr::new(ip, port),
            priority,
            foundation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Description {
        let host = Candidate::host("192.0.2.10:40000".parse().unwrap(), 65535);
        let v6 = Candidate::host("[2001:db8::5]:40001".parse().unwrap(), 65000);
        let srflx = Candidate::server_reflexive(
            "203.0.113.7:61000".parse().unwrap(),
            "192.0.2.10:40000".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            65535,
        );
        Description {
            ufrag: "abcd1234".into(),
            pwd: "0123456789abcdefghijklmn".into(),
            fingerprint: Fingerprint([0xA5; 32]),
            candidates: [host, v6, srflx]
                .iter()
                .map(SignalledCandidate::from_local)
                .collect(),
            end_of_candidates: true,
            ice_pacing_ms: Some(5),
            renomination: true,
            nat: None,
        }
    }

    #[test]
    fn text_form_round_trips_and_is_compact() {
        let d = sample();
        let s = d.to_string();
        assert!(s.starts_with(PREFIX));
        assert!(s.len() < 260, "{} chars: {s}", s.len());
        assert_eq!(s.parse::<Description>().unwrap(), d);
        // Terminal line wraps and surrounding blanks are ignored.
        let wrapped: String = s
            .chars()
            .enumerate()
            .flat_map(|(i, c)| (i % 40 == 39).then_some('\n').into_iter().chain([c]))
            .collect();
        assert_eq!(format!("  {wrapped}\n").parse::<Description>().unwrap(), d);
    }

    #[test]
    fn ice_options_travel_in_both_forms_and_older_forms_read_without_them() {
        let d = sample();
        assert_eq!(
            d.ice_options(),
            IceOptions {
                pacing: Some(Duration::from_millis(5)),
                renomination: true,
            }
        );
        // An older natkit's description: only the end-of-candidates bit.
        let mut old = d.clone();
        old.set_ice_options(IceOptions::default());
        for form in [old.to_string(), serde_json::to_string(&old).unwrap()] {
            let back = Description::parse_any(&form).unwrap();
            assert_eq!(back.ice_options(), IceOptions::default(), "{form}");
            assert!(back.end_of_candidates);
        }
        let j = serde_json::to_string(&old).unwrap();
        assert!(!j.contains("pacing") && !j.contains("renomination"), "{j}");
        let mut b = Vec::new();
        old.encode(&mut b);
        assert_eq!(b[1], flag::END_OF_CANDIDATES);
        // The text form's six bits hold up to 63 ms; JSON any u16.
        let mut slow = d.clone();
        slow.ice_pacing_ms = Some(100);
        let text: Description = slow.to_string().parse().unwrap();
        assert_eq!(text.ice_pacing_ms, Some(63));
        assert!(text.renomination);
        let json = Description::parse_any(&serde_json::to_string(&slow).unwrap()).unwrap();
        assert_eq!(json.ice_pacing_ms, Some(100));
    }

    #[test]
    fn nat_mapping_travels_in_both_forms_and_unknown_records_are_skipped() {
        let hard = NatMapping::Hard {
            ip: "198.51.100.1".parse().unwrap(),
            last_port: 20003,
            delta: Some(-2),
        };
        let easy = NatMapping::Easy {
            addr: "[2001:db8::7]:4000".parse().unwrap(),
        };
        let random = NatMapping::Hard {
            ip: "198.51.100.1".parse().unwrap(),
            last_port: 61000,
            delta: None,
        };
        for n in [hard, easy, random] {
            let mut d = sample();
            d.nat = Some(n);
            assert_eq!(d.to_string().parse::<Description>().unwrap(), d);
            let j = serde_json::to_string(&d).unwrap();
            assert_eq!(Description::parse_any(&j).unwrap(), d, "{j}");
        }
        let j = serde_json::to_string(&sample()).unwrap();
        assert!(!j.contains("\"nat\""), "{j}");
        // A record of a later natkit is skipped; a cut one is refused.
        let mut b = Vec::new();
        let mut d = sample();
        d.nat = Some(hard);
        d.encode(&mut b);
        let mut later = b.clone();
        later.extend_from_slice(&[99, 3, 1, 2, 3]);
        let back: Description = format!("{PREFIX}{}", seal(later)).parse().unwrap();
        assert_eq!(back.nat, Some(hard));
        for cut in 1..=9 {
            let short = b[..b.len() - cut].to_vec();
            assert!(
                format!("{PREFIX}{}", seal(short))
                    .parse::<Description>()
                    .is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn json_form_round_trips() {
        let d = sample();
        let j = serde_json::to_string(&d).unwrap();
        assert!(j.contains("\"srflx\"") && j.contains("A5:A5"), "{j}");
        assert_eq!(Description::parse_any(&j).unwrap(), d);
        assert_eq!(Description::parse_any(&d.to_string()).unwrap(), d);
    }

    #[test]
    fn damaged_text_is_refused_with_a_reason() {
        let s = sample().to_string();
        assert_eq!(
            "hello".parse::<Description>(),
            Err(DescriptionError::Prefix { expected: PREFIX })
        );
        // Every truncation and every single-character edit is caught.
        for cut in 1..s.len() - PREFIX.len() {
            assert!(
                s[..s.len() - cut].parse::<Description>().is_err(),
                "cut {cut}"
            );
        }
        for i in PREFIX.len()..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert!(t.parse::<Description>().is_err(), "edit at {i}");
        }
        assert!(matches!(
            format!("{s}!").parse::<Description>(),
            Err(DescriptionError::Base64(_))
        ));
        assert!(matches!(
            Description::parse_any("{\"ufrag\": 3}"),
            Err(DescriptionError::Json(_))
        ));
    }

    #[test]
    fn well_sealed_but_invalid_content_is_refused() {
        let mut d = sample();
        d.pwd = "short".into();
        assert!(matches!(
            d.to_string().parse::<Description>(),
            Err(DescriptionError::Credentials(CredentialsError::BadPassword))
        ));
        let mut d = sample();
        d.candidates[1].addr.set_port(0);
        assert_eq!(
            d.to_string().parse::<Description>(),
            Err(DescriptionError::Candidate {
                index: 1,
                reason: "port 0"
            })
        );
        let mut b = Vec::new();
        sample().encode(&mut b);
        b[0] = 2;
        assert_eq!(
            format!("{PREFIX}{}", seal(b)).parse::<Description>(),
            Err(DescriptionError::Version(2))
        );
    }

    #[test]
    fn trickle_candidates_round_trip() {
        let d = sample();
        for c in d.candidates.iter().cloned().map(Some).chain([None]) {
            let t = TrickleCandidate {
                ufrag: d.ufrag.clone(),
                candidate: c,
            };
            let s = t.to_string();
            assert!(s.starts_with(TRICKLE_PREFIX));
            assert_eq!(s.parse::<TrickleCandidate>().unwrap(), t);
            assert!(s.parse::<Description>().is_err());
        }
    }
}
