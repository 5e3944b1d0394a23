//! RFC 5780 NAT behavior discovery, sans-IO.
//!
//! [`Discovery`] runs the client side of RFC 5780 §4 over one local UDP
//! socket: it hands out Binding requests to send, takes the datagrams the
//! socket receives and the time, and ends with a [`Report`]: mapping
//! behavior (§4.3), filtering behavior (§4.4), hairpinning (§4.5), the mapped
//! addresses seen, whether the mapping varies by server, and the classic
//! RFC 3489 name.
//!
//! The order of the probes matters because every datagram the client sends
//! opens the NAT's filter for its destination:
//!
//! 1. Test I (a plain Binding) to each server in turn until one answers with
//!    OTHER-ADDRESS (RFC 5780 §7.4); that server's primary address A1:P1 and
//!    alternate A2:P2 are used for the rest. Hairpinning starts as soon as a
//!    first mapped address is known, alongside the rest.
//! 2. Filtering tests II and III (§4.4: CHANGE-REQUEST for IP and port, then
//!    port only) come **before** mapping tests II and III, because those send
//!    to A2 and would open the filter the filtering tests look at.
//! 3. Mapping tests II (A2:P1) and III (A2:P2) (§4.3).
//! 4. Test I to the remaining servers, to see whether the mapped address
//!    varies by server.
//!
//! Filtering tests and the hairpinning probe expect silence as a normal
//! answer, so they run on a shorter retransmission schedule
//! ([`Config::negative_probe`]): Test I has already shown the path works and
//! roughly how long the server takes, so three sends over 3.5 s (with the
//! default RTO) are enough to ride out loss without making every run wait the
//! full RFC 8489 budget of 39.5 s.
//!
//! Hairpinning is probed from the same socket: a Binding request to our own
//! mapped address, which comes back to us if the NAT hairpins. RFC 5780 §4.5
//! sends it from a different port; from the same socket the hairpinned packet
//! comes from an address this socket has just sent to, so an address- or
//! port-dependent filter does not hide a NAT that does hairpin.
//!
//! Two inputs end waits early: [`Discovery::handle_unreachable`] (the
//! socket reported ICMP port unreachable for a server: nothing listens
//! there, so Test I moves on at once) and [`Discovery::give_up`] (the
//! caller's overall deadline: probes cut short conclude nothing).
//!
//! The report is typed (enums, addresses, durations): how it reads, in
//! sentences or in JSON, is the CLI's business.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::binding::{self, ChangeRequest, RequestOptions};
use crate::transaction::{
    self, new_transaction_id, Action, BindingOutcome, BindingTransaction, Transaction, Transmit,
};

/// Timers and options of a discovery run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Retransmissions of probes that expect an answer (Test I, mapping
    /// tests II and III): RFC 8489 §6.2.1 defaults unless changed.
    pub probe: transaction::Config,
    /// Retransmissions of probes where silence is a normal answer (filtering
    /// tests II and III, hairpinning): shorter, see the module docs.
    pub negative_probe: transaction::Config,
    /// Add FINGERPRINT to the requests (RFC 8489 §7), which helps servers
    /// that share the port with other protocols.
    pub fingerprint: bool,
    /// Run the hairpinning probe.
    pub hairpinning: bool,
}

impl Config {
    /// Use `probe` for probes that expect an answer, and derive the
    /// negative probes' schedule from it: same RTO, at most 3 sends, then
    /// 4 × RTO (3.5 s with a 500 ms RTO).
    pub fn with_probe(probe: transaction::Config) -> Self {
        Config {
            probe,
            negative_probe: transaction::Config {
                rto: probe.rto,
                rc: probe.rc.clamp(1, 3),
                rm: 4,
            },
            fingerprint: true,
            hairpinning: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::with_probe(transaction::Config::default())
    }
}

/// NAT mapping behavior (RFC 4787 §4.1, found by RFC 5780 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The same mapped address whatever the destination.
    EndpointIndependent,
    /// A new mapping per destination IP address.
    AddressDependent,
    /// A new mapping per destination IP address and port ("symmetric").
    AddressAndPortDependent,
    /// The mapped address is the local address: no NAT on the path.
    NoNat,
    /// Could not be determined, and why.
    Unknown(Undetermined),
}

/// NAT (or firewall) filtering behavior (RFC 4787 §5, found by RFC 5780
/// §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to the mapped address.
    EndpointIndependent,
    /// Only IP addresses the client has sent to may send back.
    AddressDependent,
    /// Only IP address and port pairs the client has sent to may send back.
    AddressAndPortDependent,
    /// Could not be determined, and why.
    Unknown(Undetermined),
}

/// Why a mapping or filtering behavior could not be determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undetermined {
    /// No server answered Test I.
    NoAnswer,
    /// No server with RFC 5780 support (OTHER-ADDRESS) answered.
    NoRfc5780,
    /// The test did not run to its end.
    Incomplete,
    /// Mapping test II or III (`test`) got no answer from the server's
    /// alternate address `to`.
    MappingTimedOut {
        test: Test,
        to: SocketAddr,
        sends: u32,
        waited: Duration,
    },
    /// Mapping test II or III was answered with an error.
    MappingError {
        test: Test,
        to: SocketAddr,
        code: u16,
    },
    /// Mapping test II or III was answered without XOR-MAPPED-ADDRESS.
    MappingWithoutAddress { test: Test, to: SocketAddr },
    /// The server answered a filtering test's CHANGE-REQUEST with an error.
    ChangeRejected { server: SocketAddr, code: u16 },
    /// Filtering test `test` asked `server` to answer from its other
    /// address and port (or port), and the answer came from `from`.
    ChangeIgnored {
        test: Test,
        server: SocketAddr,
        from: SocketAddr,
    },
    /// An earlier probe to `opener` may have opened the filter for `from`,
    /// where the filtering test's answer came from.
    FilterOpened {
        opener: SocketAddr,
        from: SocketAddr,
    },
}

/// Something worth telling the user about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A server never answered Test I.
    NoAnswer {
        server: SocketAddr,
        sends: u32,
        waited: Duration,
    },
    /// A server answered Test I with an error.
    ErrorAnswer { server: SocketAddr, code: u16 },
    /// RESPONSE-ORIGIN (RFC 5780 §7.3) is not where the answer came from:
    /// the server is behind a NAT or misconfigured.
    ResponseOriginDiffers {
        server: SocketAddr,
        origin: SocketAddr,
        from: SocketAddr,
    },
    /// OTHER-ADDRESS is of the other address family (RFC 5780 §7.4): the
    /// RFC 5780 tests were skipped.
    OtherAddressFamily {
        server: SocketAddr,
        other: SocketAddr,
    },
    /// OTHER-ADDRESS does not differ from the primary address in both IP
    /// and port (RFC 5780 §7.4): the RFC 5780 tests were skipped.
    OtherAddressNotDistinct {
        server: SocketAddr,
        other: SocketAddr,
    },
    /// The server's answer had no OTHER-ADDRESS: no RFC 5780 support.
    NoRfc5780 { server: SocketAddr },
    /// The server's success answer had no XOR-MAPPED-ADDRESS.
    NoMappedAddress { server: SocketAddr },
    /// The socket reported an ICMP error (port or host unreachable) for
    /// `server`: nothing listens there, so the probe ended at once.
    Unreachable {
        server: SocketAddr,
        test: Test,
        after: Duration,
    },
    /// The caller's overall deadline ended `test` to `to` before it had an
    /// answer or its own timeout ([`Discovery::give_up`]): it tells nothing.
    CutShort { test: Test, to: SocketAddr },
}

/// The classic (RFC 3489) name of the NAT type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatType {
    /// No NAT and no filtering found.
    OpenInternet,
    /// No NAT, but a firewall filters inbound traffic.
    SymmetricUdpFirewall,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address and port-dependent filtering.
    PortRestrictedCone,
    /// Address- or address and port-dependent mapping.
    Symmetric,
    /// No server answered at all.
    UdpBlocked,
    /// Not enough information.
    Unknown,
}

impl NatType {
    /// Name the NAT from what was found. `varies_by_server` stands in for
    /// the mapping when RFC 5780 was unavailable: a mapped address that
    /// changes with the server is what makes a NAT symmetric.
    pub fn classify(
        any_answer: bool,
        mapping: &Mapping,
        filtering: &Filtering,
        varies_by_server: Option<bool>,
    ) -> NatType {
        if !any_answer {
            return NatType::UdpBlocked;
        }
        match mapping {
            Mapping::NoNat => match filtering {
                Filtering::AddressDependent | Filtering::AddressAndPortDependent => {
                    NatType::SymmetricUdpFirewall
                }
                Filtering::EndpointIndependent | Filtering::Unknown(_) => NatType::OpenInternet,
            },
            Mapping::EndpointIndependent => match filtering {
                Filtering::EndpointIndependent => NatType::FullCone,
                Filtering::AddressDependent => NatType::RestrictedCone,
                Filtering::AddressAndPortDependent => NatType::PortRestrictedCone,
                Filtering::Unknown(_) => NatType::Unknown,
            },
            Mapping::AddressDependent | Mapping::AddressAndPortDependent => NatType::Symmetric,
            Mapping::Unknown(_) if varies_by_server == Some(true) => NatType::Symmetric,
            Mapping::Unknown(_) => NatType::Unknown,
        }
    }
}

/// Which probe an [`Observation`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// Test I: a plain Binding request (each server gets one).
    Binding,
    /// Filtering test II: CHANGE-REQUEST for IP and port (RFC 5780 §4.4).
    FilteringChangeIpPort,
    /// Filtering test III: CHANGE-REQUEST for port (RFC 5780 §4.4).
    FilteringChangePort,
    /// Mapping test II: to the alternate IP, primary port (RFC 5780 §4.3).
    MappingAlternateIp,
    /// Mapping test III: to the alternate IP and port (RFC 5780 §4.3).
    MappingAlternateIpPort,
    /// Hairpinning: a Binding request to our own mapped address (§4.5).
    Hairpinning,
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Which probe.
    pub test: Test,
    /// Where the request went.
    pub to: SocketAddr,
    /// Where the answer came from; `None` if none came. For hairpinning,
    /// where our own request came back from.
    pub answered_from: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS of the answer.
    pub mapped: Option<SocketAddr>,
    /// RESPONSE-ORIGIN of the answer (RFC 5780 §7.3).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS of the answer (RFC 5780 §7.4).
    pub other_address: Option<SocketAddr>,
    /// ERROR-CODE, for an error response.
    pub error_code: Option<u16>,
    /// How many times the request was sent.
    pub sends: u32,
    /// Time from the first send to the answer, or to giving up.
    pub elapsed: Duration,
    /// Round-trip time, when unambiguous (answered after one send).
    pub rtt: Option<Duration>,
}

/// The outcome of a discovery run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The local address of the socket the probes went from.
    pub local: SocketAddr,
    /// The server whose RFC 5780 support was used (its primary address).
    pub server: Option<SocketAddr>,
    /// That server's OTHER-ADDRESS.
    pub other_address: Option<SocketAddr>,
    /// Whether a server with RFC 5780 support (OTHER-ADDRESS) answered.
    pub rfc5780: bool,
    /// The mapped (server-reflexive) address: from Test I of the RFC 5780
    /// server, else from the first server that answered.
    pub mapped: Option<SocketAddr>,
    /// Mapping behavior.
    pub mapping: Mapping,
    /// Filtering behavior.
    pub filtering: Filtering,
    /// Whether the NAT hairpins; `None` when not tested.
    pub hairpinning: Option<bool>,
    /// Whether servers saw different mapped addresses; `None` with fewer
    /// than two answers.
    pub mapping_varies_by_server: Option<bool>,
    /// The classic name.
    pub nat_type: NatType,
    /// Every probe, in the order they ended.
    pub observations: Vec<Observation>,
    /// Things worth telling the user: unreachable servers, servers without
    /// RFC 5780, inconclusive tests.
    pub notes: Vec<Note>,
    /// Total time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// Test I observations, one per server that was probed, in order.
    pub fn servers(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter().filter(|o| o.test == Test::Binding)
    }

    /// Whether anything was learned: at least a mapped address. (A server
    /// that only answered with errors taught nothing.)
    pub fn learned_anything(&self) -> bool {
        self.mapped.is_some()
    }
}

/// Why a discovery run cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// No server to ask.
    #[error("no STUN server given")]
    NoServers,
    /// A server of the other address family than the local socket.
    #[error("server {server} and local address {local} are not of the same address family")]
    FamilyMismatch {
        /// The server.
        server: SocketAddr,
        /// The local socket address.
        local: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Test I to server `n`, looking for one with RFC 5780.
    Search(usize),
    FilterBoth,
    FilterPort,
    MapII,
    MapIII,
    /// Test I to one of the servers after the RFC 5780 one.
    Other,
}

#[derive(Debug)]
struct Active {
    purpose: Purpose,
    test: Test,
    txn: BindingTransaction,
}

#[derive(Debug)]
struct Hairpin {
    transaction_id: [u8; 12],
    to: SocketAddr,
    payload: Vec<u8>,
    timer: Transaction,
    send_pending: bool,
}

#[derive(Debug, Clone, Copy)]
struct Chosen {
    index: usize,
    primary: SocketAddr,
    other: SocketAddr,
    /// Mapped address of Test I.
    x1: SocketAddr,
}

/// The RFC 5780 client state machine. See the module docs for the order of
/// the probes.
#[derive(Debug)]
pub struct Discovery {
    cfg: Config,
    start: Instant,
    local: SocketAddr,
    servers: Vec<SocketAddr>,
    active: Vec<Active>,
    hairpin: Option<Hairpin>,
    chosen: Option<Chosen>,
    first_mapped: Option<SocketAddr>,
    /// Mapped address of mapping test II.
    x2: Option<SocketAddr>,
    mapping: Option<Mapping>,
    filtering: Option<Filtering>,
    hairpinning: Option<bool>,
    /// Every destination this socket has sent to: each may have opened the
    /// NAT's filter.
    contacted: Vec<SocketAddr>,
    observations: Vec<Observation>,
    notes: Vec<Note>,
    report: Option<Report>,
}

impl Discovery {
    /// Start discovery at `now` from a socket bound to `local` (its real
    /// address, not a wildcard: RFC 5780 §4.3 compares it with the mapped
    /// address), against `servers` in order of preference.
    pub fn new(
        now: Instant,
        local: SocketAddr,
        servers: Vec<SocketAddr>,
        cfg: Config,
    ) -> Result<Self, DiscoveryError> {
        let Some(&first) = servers.first() else {
            return Err(DiscoveryError::NoServers);
        };
        if let Some(&server) = servers.iter().find(|s| s.is_ipv4() != local.is_ipv4()) {
            return Err(DiscoveryError::FamilyMismatch { server, local });
        }
        let mut d = Discovery {
            cfg,
            start: now,
            local,
            servers,
            active: Vec::new(),
            hairpin: None,
            chosen: None,
            first_mapped: None,
            x2: None,
            mapping: None,
            filtering: None,
            hairpinning: None,
            contacted: Vec::new(),
            observations: Vec::new(),
            notes: Vec::new(),
            report: None,
        };
        d.launch(now, Purpose::Search(0), Test::Binding, first, None);
        Ok(d)
    }

    /// The next datagram to send from the socket, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        for a in &mut self.active {
            if let Some(t) = a.txn.poll_transmit() {
                return Some(t);
            }
        }
        let h = self.hairpin.as_mut()?;
        std::mem::take(&mut h.send_pending).then(|| Transmit {
            to: h.to,
            payload: h.payload.clone(),
        })
    }

    /// When [`Discovery::handle_timeout`] must be called next; `None` when
    /// finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hairpin = self.hairpin.as_ref().and_then(|h| h.timer.poll_timeout());
        self.active
            .iter()
            .filter_map(|a| a.txn.poll_timeout())
            .chain(hairpin)
            .min()
    }

    /// Advance the clock to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for a in &mut self.active {
            a.txn.handle_timeout(now);
        }
        if let Some(h) = &mut self.hairpin {
            match h.timer.handle_timeout(now) {
                Action::Retransmit => h.send_pending = true,
                Action::Wait => {}
                Action::TimedOut { waited, sent } => {
                    h.send_pending = false;
                    self.hairpinning = Some(false);
                    let to = h.to;
                    self.observations.push(observation(
                        Test::Hairpinning,
                        to,
                        None,
                        sent,
                        waited,
                        None,
                    ));
                }
            }
        }
        self.process(now);
    }

    /// A datagram arrived on the socket from `from` at `now`. Anything that
    /// is not an answer to a pending probe is ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        if self.hairpin_arrived(now, from, datagram) {
            return;
        }
        for a in &mut self.active {
            if a.txn.handle_datagram(now, from, datagram) {
                break;
            }
        }
        self.process(now);
    }

    /// The socket reported an ICMP error for `to` (RFC 8489 §6.2.1 leaves
    /// the reaction to the client; RFC 1122 §4.1.3.3 passes it up): no
    /// server listens there, so every probe waiting on `to` ends now instead
    /// of at its last retransmission, and Test I moves on to the next server.
    pub fn handle_unreachable(&mut self, now: Instant, to: SocketAddr) {
        if self.report.is_some() {
            return;
        }
        while let Some(i) = self.active.iter().position(|a| a.txn.destination() == to) {
            let a = self.active.remove(i);
            let sent = a.txn.sent();
            let after = now.saturating_duration_since(a.txn.first_sent());
            self.observations
                .push(observation(a.test, to, None, sent, after, None));
            self.notes.push(Note::Unreachable {
                server: to,
                test: a.test,
                after,
            });
            if let Purpose::Search(i) = a.purpose {
                if let Some(&next) = self.servers.get(i + 1) {
                    self.launch(now, Purpose::Search(i + 1), Test::Binding, next, None);
                }
            }
            // Other probes to an unreachable server conclude nothing: the
            // behavior they test stays unknown (incomplete).
        }
        self.process(now);
    }

    /// The caller's overall deadline passed: stop and report what is known.
    /// Probes still waiting conclude nothing (a filtering test cut short is
    /// not a timeout), servers not yet tried stay untried.
    pub fn give_up(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        for a in std::mem::take(&mut self.active) {
            let to = a.txn.destination();
            if matches!(a.purpose, Purpose::Search(_) | Purpose::Other) {
                let (sent, waited) = (
                    a.txn.sent(),
                    now.saturating_duration_since(a.txn.first_sent()),
                );
                self.observations
                    .push(observation(a.test, to, None, sent, waited, None));
                self.notes.push(Note::NoAnswer {
                    server: to,
                    sends: sent,
                    waited,
                });
            } else {
                self.notes.push(Note::CutShort { test: a.test, to });
            }
        }
        if let Some(h) = self.hairpin.take() {
            if !h.timer.is_finished() {
                self.notes.push(Note::CutShort {
                    test: Test::Hairpinning,
                    to: h.to,
                });
            }
        }
        self.report = Some(self.build_report(now));
    }

    /// Whether the run is over ([`Discovery::report`] is then `Some`).
    pub fn is_done(&self) -> bool {
        self.report.is_some()
    }

    /// The report, once the run is over.
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Take the report out, once the run is over.
    pub fn into_report(self) -> Option<Report> {
        self.report
    }

    /// Our own Binding request coming back through the NAT (RFC 5780 §4.5).
    fn hairpin_arrived(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) -> bool {
        let Some(h) = &mut self.hairpin else {
            return false;
        };
        match binding::parse_request(datagram) {
            Ok(req) if req.transaction_id == h.transaction_id => {}
            _ => return false,
        }
        if let Some(c) = h.timer.on_response(now) {
            h.send_pending = false;
            self.hairpinning = Some(true);
            let o = observation(
                Test::Hairpinning,
                h.to,
                Some(from),
                c.sent,
                c.elapsed,
                c.rtt(),
            );
            self.observations.push(o);
            self.process(now);
        }
        true
    }

    fn launch(
        &mut self,
        now: Instant,
        purpose: Purpose,
        test: Test,
        to: SocketAddr,
        change: Option<ChangeRequest>,
    ) {
        let opts = RequestOptions {
            change,
            response_port: None,
            padding: None,
            fingerprint: self.cfg.fingerprint,
        };
        let tcfg = match purpose {
            Purpose::FilterBoth | Purpose::FilterPort => self.cfg.negative_probe,
            _ => self.cfg.probe,
        };
        self.contacted.push(to);
        self.active.push(Active {
            purpose,
            test,
            txn: BindingTransaction::new(now, to, &opts, tcfg),
        });
    }

    fn start_hairpin(&mut self, now: Instant, mapped: SocketAddr) {
        if !self.cfg.hairpinning || self.hairpin.is_some() {
            return;
        }
        let transaction_id = new_transaction_id();
        let mut buf = [0u8; 64];
        let opts = RequestOptions {
            fingerprint: self.cfg.fingerprint,
            ..Default::default()
        };
        // 64 bytes hold a Binding request with FINGERPRINT; on the
        // impossible failure, skip the probe rather than send garbage.
        let Ok(n) = binding::write_request(&mut buf, &transaction_id, &opts) else {
            return;
        };
        self.contacted.push(mapped);
        self.hairpin = Some(Hairpin {
            transaction_id,
            to: mapped,
            payload: buf[..n].to_vec(),
            timer: Transaction::new(now, self.cfg.negative_probe),
            send_pending: true,
        });
    }

    /// Handle every finished probe, launch what follows, and build the
    /// report when nothing is left in flight.
    fn process(&mut self, now: Instant) {
        while let Some(i) = self.active.iter().position(|a| a.txn.outcome().is_some()) {
            let a = self.active.remove(i);
            let Some(&outcome) = a.txn.outcome() else {
                continue;
            };
            let to = a.txn.destination();
            self.observations.push(match outcome {
                BindingOutcome::Answered {
                    from,
                    response,
                    completion: c,
                } => Observation {
                    test: a.test,
                    to,
                    answered_from: Some(from),
                    mapped: response.mapped,
                    response_origin: response.response_origin,
                    other_address: response.other_address,
                    error_code: response.outcome.err(),
                    sends: c.sent,
                    elapsed: c.elapsed,
                    rtt: c.rtt(),
                },
                BindingOutcome::TimedOut { waited, sent } => {
                    observation(a.test, to, None, sent, waited, None)
                }
            });
            self.advance(now, a.purpose, to, outcome);
        }
        let hairpin_done = self
            .hairpin
            .as_ref()
            .map_or(true, |h| h.timer.is_finished());
        if self.active.is_empty() && hairpin_done && self.report.is_none() {
            self.report = Some(self.build_report(now));
        }
    }

    fn advance(&mut self, now: Instant, purpose: Purpose, to: SocketAddr, outcome: BindingOutcome) {
        match purpose {
            Purpose::Search(i) => self.after_search(now, i, to, outcome),
            Purpose::FilterBoth => self.after_filter_both(now, outcome),
            Purpose::FilterPort => self.after_filter_port(now, outcome),
            Purpose::MapII => self.after_map_ii(now, to, outcome),
            Purpose::MapIII => self.after_map_iii(now, to, outcome),
            Purpose::Other => {
                if let Some(note) = unanswered_note(to, &outcome) {
                    self.notes.push(note);
                }
            }
        }
    }

    fn after_search(&mut self, now: Instant, i: usize, to: SocketAddr, outcome: BindingOutcome) {
        if let Some(note) = unanswered_note(to, &outcome) {
            self.notes.push(note);
        }
        if let BindingOutcome::Answered { from, response, .. } = outcome {
            if let Some(origin) = response.response_origin.filter(|o| *o != from) {
                // RFC 5780 §7.3: RESPONSE-ORIGIN is where the server sent
                // from; a different source means a NAT in front of the server.
                self.notes.push(Note::ResponseOriginDiffers {
                    server: to,
                    origin,
                    from,
                });
            }
            match (response.outcome, response.mapped) {
                (Ok(()), Some(mapped)) => {
                    if self.first_mapped.is_none() {
                        self.first_mapped = Some(mapped);
                        self.start_hairpin(now, mapped);
                    }
                    match response.other_address.map(|o| check_other(to, o)) {
                        Some(Ok(other)) => {
                            self.chosen = Some(Chosen {
                                index: i,
                                primary: to,
                                other,
                                x1: mapped,
                            });
                            if mapped == self.local {
                                // RFC 5780 §4.3: not NATed; mapping is
                                // endpoint-independent by definition. The
                                // filtering tests still find a firewall.
                                self.mapping = Some(Mapping::NoNat);
                            }
                            self.launch(
                                now,
                                Purpose::FilterBoth,
                                Test::FilteringChangeIpPort,
                                to,
                                Some(ChangeRequest::BOTH),
                            );
                            return;
                        }
                        Some(Err(why)) => self.notes.push(why),
                        None => self.notes.push(Note::NoRfc5780 { server: to }),
                    }
                }
                (Ok(()), None) => self.notes.push(Note::NoMappedAddress { server: to }),
                (Err(_), _) => {}
            }
        }
        if let Some(&next) = self.servers.get(i + 1) {
            self.launch(now, Purpose::Search(i + 1), Test::Binding, next, None);
        }
    }

    fn after_filter_both(&mut self, now: Instant, outcome: BindingOutcome) {
        let Some(c) = self.chosen else { return };
        let filtering = match outcome {
            BindingOutcome::TimedOut { .. } => {
                // RFC 5780 §4.4: no answer from A2:P2, try test III.
                self.launch(
                    now,
                    Purpose::FilterPort,
                    Test::FilteringChangePort,
                    c.primary,
                    Some(ChangeRequest::PORT),
                );
                return;
            }
            BindingOutcome::Answered { response, .. } if response.outcome.is_err() => {
                rejected_change(c.primary, response.outcome)
            }
            BindingOutcome::Answered { from, .. } => {
                if from.ip() == c.primary.ip() || from.port() == c.primary.port() {
                    Filtering::Unknown(Undetermined::ChangeIgnored {
                        test: Test::FilteringChangeIpPort,
                        server: c.primary,
                        from,
                    })
                } else if let Some(opener) = self.opened_filter(|a| a.ip() == from.ip()) {
                    Filtering::Unknown(Undetermined::FilterOpened { opener, from })
                } else {
                    Filtering::EndpointIndependent
                }
            }
        };
        self.filtering = Some(filtering);
        self.start_mapping(now);
    }

    fn after_filter_port(&mut self, now: Instant, outcome: BindingOutcome) {
        let Some(c) = self.chosen else { return };
        let filtering = match outcome {
            BindingOutcome::TimedOut { .. } => Filtering::AddressAndPortDependent,
            BindingOutcome::Answered { response, .. } if response.outcome.is_err() => {
                rejected_change(c.primary, response.outcome)
            }
            BindingOutcome::Answered { from, .. } => {
                if from.ip() != c.primary.ip() || from.port() == c.primary.port() {
                    Filtering::Unknown(Undetermined::ChangeIgnored {
                        test: Test::FilteringChangePort,
                        server: c.primary,
                        from,
                    })
                } else if let Some(opener) = self.opened_filter(|a| a == from) {
                    Filtering::Unknown(Undetermined::FilterOpened { opener, from })
                } else {
                    Filtering::AddressDependent
                }
            }
        };
        self.filtering = Some(filtering);
        self.start_mapping(now);
    }

    /// An earlier destination (other than the one the filtering test went
    /// to) that would let `from` through the filter on its own.
    fn opened_filter(&self, opens: impl Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        let primary = self.chosen.map(|c| c.primary);
        self.contacted
            .iter()
            .copied()
            .find(|&a| Some(a) != primary && opens(a))
    }

    fn start_mapping(&mut self, now: Instant) {
        let Some(c) = self.chosen else { return };
        if self.mapping == Some(Mapping::NoNat) {
            self.start_others(now);
            return;
        }
        // RFC 5780 §4.3 test II: alternate address, primary port.
        let to = SocketAddr::new(c.other.ip(), c.primary.port());
        self.launch(now, Purpose::MapII, Test::MappingAlternateIp, to, None);
    }

    fn after_map_ii(&mut self, now: Instant, to: SocketAddr, outcome: BindingOutcome) {
        let Some(c) = self.chosen else { return };
        match mapped_of(to, Test::MappingAlternateIp, outcome) {
            Ok(x2) if x2 == c.x1 => self.mapping = Some(Mapping::EndpointIndependent),
            Ok(x2) => {
                // RFC 5780 §4.3 test III: alternate address and port.
                self.x2 = Some(x2);
                self.launch(
                    now,
                    Purpose::MapIII,
                    Test::MappingAlternateIpPort,
                    c.other,
                    None,
                );
                return;
            }
            Err(why) => self.mapping = Some(Mapping::Unknown(why)),
        }
        self.start_others(now);
    }

    fn after_map_iii(&mut self, now: Instant, to: SocketAddr, outcome: BindingOutcome) {
        let mapping = match mapped_of(to, Test::MappingAlternateIpPort, outcome) {
            Ok(x3) if Some(x3) == self.x2 => Mapping::AddressDependent,
            Ok(_) => Mapping::AddressAndPortDependent,
            Err(why) => Mapping::Unknown(why),
        };
        self.mapping = Some(mapping);
        self.start_others(now);
    }

    /// Test I to the servers after the RFC 5780 one, all at once: the
    /// filtering tests are over, so their traffic can no longer mislead.
    fn start_others(&mut self, now: Instant) {
        let Some(c) = self.chosen else { return };
        for i in c.index + 1..self.servers.len() {
            let to = self.servers[i];
            self.launch(now, Purpose::Other, Test::Binding, to, None);
        }
    }

    fn build_report(&self, now: Instant) -> Report {
        let mapped = self.chosen.map(|c| c.x1).or(self.first_mapped);
        let mut seen = self.servers().filter_map(|o| o.mapped);
        let mapping_varies_by_server = seen
            .next()
            .and_then(|first| seen.map(|m| m != first).reduce(|a, b| a || b));
        let any_answer = self.servers().any(|o| o.answered_from.is_some());
        let why = if !any_answer {
            Undetermined::NoAnswer
        } else if self.chosen.is_none() {
            Undetermined::NoRfc5780
        } else {
            Undetermined::Incomplete
        };
        let mapping = match (&self.mapping, mapped) {
            (Some(m), _) => m.clone(),
            (None, Some(m)) if m == self.local => Mapping::NoNat,
            (None, _) => Mapping::Unknown(why),
        };
        let filtering = self.filtering.clone().unwrap_or(Filtering::Unknown(why));
        let nat_type =
            NatType::classify(any_answer, &mapping, &filtering, mapping_varies_by_server);
        Report {
            local: self.local,
            server: self.chosen.map(|c| c.primary),
            other_address: self.chosen.map(|c| c.other),
            rfc5780: self.chosen.is_some(),
            mapped,
            mapping,
            filtering,
            hairpinning: self.hairpinning,
            mapping_varies_by_server,
            nat_type,
            observations: self.observations.clone(),
            notes: self.notes.clone(),
            elapsed: now.saturating_duration_since(self.start),
        }
    }

    fn servers(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter().filter(|o| o.test == Test::Binding)
    }
}

/// The mapped address of a successful answer to mapping test `test`, or
/// why there is none.
fn mapped_of(
    to: SocketAddr,
    test: Test,
    outcome: BindingOutcome,
) -> Result<SocketAddr, Undetermined> {
    match outcome {
        BindingOutcome::TimedOut { waited, sent } => Err(Undetermined::MappingTimedOut {
            test,
            to,
            sends: sent,
            waited,
        }),
        BindingOutcome::Answered { response, .. } => match (response.outcome, response.mapped) {
            (Err(code), _) => Err(Undetermined::MappingError { test, to, code }),
            (Ok(()), None) => Err(Undetermined::MappingWithoutAddress { test, to }),
            (Ok(()), Some(m)) => Ok(m),
        },
    }
}

/// A filtering test's CHANGE-REQUEST answered with an error.
fn rejected_change(server: SocketAddr, outcome: Result<(), u16>) -> Filtering {
    let code = outcome.err().unwrap_or(0);
    Filtering::Unknown(Undetermined::ChangeRejected { server, code })
}

/// The note for a Test I that got no usable answer.
fn unanswered_note(to: SocketAddr, outcome: &BindingOutcome) -> Option<Note> {
    match *outcome {
        BindingOutcome::TimedOut { waited, sent } => Some(Note::NoAnswer {
            server: to,
            sends: sent,
            waited,
        }),
        BindingOutcome::Answered { response, .. } => response
            .outcome
            .err()
            .map(|code| Note::ErrorAnswer { server: to, code }),
    }
}

/// RFC 5780 §7.4: OTHER-ADDRESS must differ from the primary address in both
/// IP and port, in the same family, or tests II and III measure nothing.
fn check_other(primary: SocketAddr, other: SocketAddr) -> Result<SocketAddr, Note> {
    if other.is_ipv4() != primary.is_ipv4() {
        Err(Note::OtherAddressFamily {
            server: primary,
            other,
        })
    } else if other.ip() == primary.ip() || other.port() == primary.port() {
        Err(Note::OtherAddressNotDistinct {
            server: primary,
            other,
        })
    } else {
        Ok(other)
    }
}

fn observation(
    test: Test,
    to: SocketAddr,
    answered_from: Option<SocketAddr>,
    sends: u32,
    elapsed: Duration,
    rtt: Option<Duration>,
) -> Observation {
    Observation {
        test,
        to,
        answered_from,
        mapped: None,
        response_origin: None,
        other_address: None,
        error_code: None,
        sends,
        elapsed,
        rtt,
    }
}

#[cfg(test)]
mod tests {
    //! A deterministic simulation: one client behind a simulated NAT (or
    //! none), simulated 4-address RFC 5780 servers, 20 ms one-way latency,
    //! and a clock that jumps from event to event.

    use super::*;
    use crate::binding::{parse_request, write_error, write_success, SuccessFields};
    use crate::raw::{attr, method};
    use std::collections::{HashMap, HashSet};
    use std::net::IpAddr;

    const LATENCY: Duration = Duration::from_millis(20);

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dep {
        Independent,
        Address,
        AddressAndPort,
    }

    /// An RFC 5780 server: primary A1:P1 and alternate A2:P2, listening on
    /// all four combinations (or only on A1:P1 without RFC 5780).
    #[derive(Clone, Copy)]
    struct SimServer {
        primary: SocketAddr,
        other: SocketAddr,
        rfc5780: bool,
        /// Answer CHANGE-REQUEST from the address it arrived on (a broken
        /// server).
        ignore_change: bool,
        /// The alternate IP is unreachable.
        alternate_ip_dead: bool,
    }

    impl SimServer {
        fn new(primary: &str, other: &str) -> Self {
            SimServer {
                primary: a(primary),
                other: a(other),
                rfc5780: true,
                ignore_change: false,
                alternate_ip_dead: false,
            }
        }

        fn listens_on(&self, to: SocketAddr) -> bool {
            if !self.rfc5780 {
                return to == self.primary;
            }
            let ip_ok = to.ip() == self.primary.ip()
                || (to.ip() == self.other.ip() && !self.alternate_ip_dead);
            ip_ok && (to.port() == self.primary.port() || to.port() == self.other.port())
        }

        fn flip_ip(&self, ip: IpAddr) -> IpAddr {
            if ip == self.primary.ip() {
                self.other.ip()
            } else {
                self.primary.ip()
            }
        }

        fn flip_port(&self, port: u16) -> u16 {
            if port == self.primary.port() {
                self.other.port()
            } else {
                self.primary.port()
            }
        }

        /// The answer to `req` received on `to` from `from`: (source, bytes).
        fn handle(
            &self,
            to: SocketAddr,
            from: SocketAddr,
            req: &[u8],
        ) -> Option<(SocketAddr, Vec<u8>)> {
            if !self.listens_on(to) {
                return None;
            }
            let r = parse_request(req).ok()?;
            let mut buf = [0u8; 128];
            if !self.rfc5780 && r.change.is_some() {
                // A plain RFC 8489 server does not know CHANGE-REQUEST.
                let n = write_error(
                    &mut buf,
                    method::BINDING,
                    &r.transaction_id,
                    420,
                    &[attr::CHANGE_REQUEST],
                    false,
                )
                .ok()?;
                return Some((to, buf[..n].to_vec()));
            }
            let change = r.change.unwrap_or_default();
            let mut src = to;
            if !self.ignore_change {
                if change.ip {
                    src.set_ip(self.flip_ip(to.ip()));
                }
                if change.port {
                    src.set_port(self.flip_port(to.port()));
                }
            }
            if self.alternate_ip_dead && src.ip() == self.other.ip() {
                return None;
            }
            let diagonal = SocketAddr::new(self.flip_ip(to.ip()), self.flip_port(to.port()));
            let fields = SuccessFields {
                mapped: from,
                response_origin: self.rfc5780.then_some(src),
                other_address: self.rfc5780.then_some(diagonal),
                padding: None,
                fingerprint: r.fingerprint,
            };
            let n = write_success(&mut buf, &r.transaction_id, &fields).ok()?;
            Some((src, buf[..n].to_vec()))
        }
    }

    /// A NAT per RFC 4787 with a given mapping and filtering behavior.
    struct SimNat {
        public_ip: IpAddr,
        /// Keep the internal address and port (a firewall without NAT).
        preserve: bool,
        mapping: Dep,
        filtering: Dep,
        hairpin: bool,
        next_port: u16,
        ports: HashMap<(SocketAddr, Option<IpAddr>, Option<SocketAddr>), u16>,
        internal: HashMap<u16, SocketAddr>,
        sent: HashSet<(u16, SocketAddr)>,
    }

    impl SimNat {
        fn new(mapping: Dep, filtering: Dep) -> Self {
            SimNat {
                public_ip: "203.0.113.1".parse().unwrap(),
                preserve: false,
                mapping,
                filtering,
                hairpin: true,
                next_port: 40000,
                ports: HashMap::new(),
                internal: HashMap::new(),
                sent: HashSet::new(),
            }
        }

        fn outbound(&mut self, from: SocketAddr, to: SocketAddr) -> SocketAddr {
            let key = match self.mapping {
                Dep::Independent => (from, None, None),
                Dep::Address => (from, Some(to.ip()), None),
                Dep::AddressAndPort => (from, None, Some(to)),
            };
            let port = match self.ports.get(&key) {
                Some(&p) => p,
                None => {
                    let p = if self.preserve {
                        from.port()
                    } else {
                        self.next_port
                    };
                    self.next_port += 1;
                    self.ports.insert(key, p);
                    self.internal.insert(p, from);
                    p
                }
            };
            self.sent.insert((port, to));
            SocketAddr::new(self.public_ip, port)
        }

        fn inbound(&self, from: SocketAddr, port: u16) -> Option<SocketAddr> {
            let internal = *self.internal.get(&port)?;
            let allowed = match self.filtering {
                Dep::Independent => true,
                Dep::Address => self
                    .sent
                    .iter()
                    .any(|&(p, r)| p == port && r.ip() == from.ip()),
                Dep::AddressAndPort => self.sent.contains(&(port, from)),
            };
            allowed.then_some(internal)
        }
    }

    struct World {
        client: SocketAddr,
        nat: Option<SimNat>,
        servers: Vec<SimServer>,
        drop_all: bool,
        /// Datagrams on their way to the client: (arrival, seq, from, bytes).
        queue: Vec<(Instant, u64, SocketAddr, Vec<u8>)>,
        seq: u64,
        /// Every datagram the client sent: (time, destination).
        log: Vec<(Instant, SocketAddr)>,
    }

    impl World {
        fn new(nat: Option<SimNat>, servers: Vec<SimServer>) -> Self {
            let client = if nat.as_ref().is_some_and(|n| !n.preserve) {
                a("10.0.0.2:5000")
            } else {
                a("203.0.113.1:5000")
            };
            World {
                client,
                nat,
                servers,
                drop_all: false,
                queue: Vec::new(),
                seq: 0,
                log: Vec::new(),
            }
        }

        fn deliver(&mut self, at: Instant, from: SocketAddr, bytes: Vec<u8>) {
            self.seq += 1;
            self.queue.push((at, self.seq, from, bytes));
        }

        fn send(&mut self, now: Instant, t: Transmit) {
            self.log.push((now, t.to));
            if self.drop_all {
                return;
            }
            let src = match &mut self.nat {
                Some(nat) => {
                    let ext = nat.outbound(self.client, t.to);
                    if t.to.ip() == nat.public_ip {
                        // Hairpinning: the NAT turns it around.
                        if nat.hairpin && nat.inbound(ext, t.to.port()).is_some() {
                            self.deliver(now + LATENCY, ext, t.payload);
                        }
                        return;
                    }
                    ext
                }
                None => {
                    if t.to == self.client {
                        self.deliver(now, self.client, t.payload);
                        return;
                    }
                    self.client
                }
            };
            let answers: Vec<_> = self
                .servers
                .iter()
                .filter_map(|s| s.handle(t.to, src, &t.payload))
                .collect();
            for (from, bytes) in answers {
                let passes = match &self.nat {
                    Some(nat) => nat.inbound(from, src.port()).is_some(),
                    None => true,
                };
                if passes {
                    self.deliver(now + 2 * LATENCY, from, bytes);
                }
            }
        }
    }

    /// Run discovery to the end; return the report and the simulated time.
    fn run(world: &mut World, cfg: Config) -> (Report, Duration) {
        let servers = world.servers.iter().map(|s| s.primary).collect();
        run_with(world, servers, cfg)
    }

    fn run_with(world: &mut World, servers: Vec<SocketAddr>, cfg: Config) -> (Report, Duration) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut d = Discovery::new(now, world.client, servers, cfg).unwrap();
        for _ in 0..100_000 {
            while let Some(t) = d.poll_transmit() {
                world.send(now, t);
            }
            if d.is_done() {
                assert_eq!(d.poll_timeout(), None);
                let r = d.into_report().unwrap();
                assert_eq!(r.elapsed, now - t0);
                return (r, now - t0);
            }
            let next = world
                .queue
                .iter()
                .enumerate()
                .min_by_key(|(_, (at, seq, ..))| (*at, *seq))
                .map(|(i, (at, ..))| (i, *at));
            let timer = d.poll_timeout();
            match next {
                Some((i, at)) if timer.map_or(true, |t| at <= t) => {
                    let (at, _, from, bytes) = world.queue.remove(i);
                    now = at;
                    d.handle_datagram(now, from, &bytes);
                }
                _ => {
                    now = timer.expect("stalled: nothing to wait for and no report");
                    d.handle_timeout(now);
                }
            }
        }
        panic!("discovery did not finish");
    }

    fn s1() -> SimServer {
        SimServer::new("192.0.2.1:3478", "192.0.2.2:3479")
    }

    fn s2() -> SimServer {
        SimServer::new("198.51.100.1:3478", "198.51.100.2:3479")
    }

    fn tests_run(r: &Report) -> Vec<Test> {
        r.observations.iter().map(|o| o.test).collect()
    }

    #[test]
    fn every_nat_combination() {
        use Dep::*;
        let deps = [Independent, Address, AddressAndPort];
        for m in deps {
            for f in deps {
                let mut w = World::new(Some(SimNat::new(m, f)), vec![s1()]);
                let (r, _) = run(&mut w, Config::default());
                let want_mapping = match m {
                    Independent => Mapping::EndpointIndependent,
                    Address => Mapping::AddressDependent,
                    AddressAndPort => Mapping::AddressAndPortDependent,
                };
                let want_filtering = match f {
                    Independent => Filtering::EndpointIndependent,
                    Address => Filtering::AddressDependent,
                    AddressAndPort => Filtering::AddressAndPortDependent,
                };
                let want_type = match (m, f) {
                    (Independent, Independent) => NatType::FullCone,
                    (Independent, Address) => NatType::RestrictedCone,
                    (Independent, AddressAndPort) => NatType::PortRestrictedCone,
                    _ => NatType::Symmetric,
                };
                let ctx = format!("mapping {m:?} filtering {f:?}: {r:#?}");
                assert_eq!(r.mapping, want_mapping, "{ctx}");
                assert_eq!(r.filtering, want_filtering, "{ctx}");
                assert_eq!(r.nat_type, want_type, "{ctx}");
                assert!(r.rfc5780, "{ctx}");
                assert_eq!(r.server, Some(a("192.0.2.1:3478")));
                assert_eq!(r.other_address, Some(a("192.0.2.2:3479")));
                assert_eq!(r.mapped, Some(a("203.0.113.1:40000")), "{ctx}");
                // From the same socket, a dependent mapping gives the
                // hairpinned packet a new source, which only an
                // endpoint-independent filter lets in.
                assert_eq!(
                    r.hairpinning,
                    Some(m == Independent || f == Independent),
                    "{ctx}"
                );
                assert_eq!(r.mapping_varies_by_server, None);
                assert!(r.notes.is_empty(), "{ctx}");
                // Filtering before mapping; test III only when needed.
                let order: Vec<Test> = tests_run(&r)
                    .into_iter()
                    .filter(|t| *t != Test::Hairpinning)
                    .collect();
                let mut want = vec![Test::Binding, Test::FilteringChangeIpPort];
                if f != Independent {
                    want.push(Test::FilteringChangePort);
                }
                want.push(Test::MappingAlternateIp);
                if m != Independent {
                    want.push(Test::MappingAlternateIpPort);
                }
                assert_eq!(order, want, "{ctx}");
            }
        }
    }

    #[test]
    fn full_cone_timing_is_round_trips_only() {
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s1()],
        );
        let (r, took) = run(&mut w, Config::default());
        // Test I, filtering II, mapping II: three round trips in a row; the
        // hairpin probe runs alongside.
        assert_eq!(took, 3 * 2 * LATENCY);
        assert!(r
            .observations
            .iter()
            .all(|o| o.sends == 1 && o.rtt.is_some()));
    }

    #[test]
    fn port_restricted_waits_out_the_negative_probes() {
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::AddressAndPort)),
            vec![s1()],
        );
        let cfg = Config::default();
        let (r, took) = run(&mut w, cfg);
        assert_eq!(r.nat_type, NatType::PortRestrictedCone);
        let negative = cfg.negative_probe.budget();
        assert_eq!(negative, Duration::from_millis(3500));
        // Test I, two silent filtering tests, mapping test II.
        assert_eq!(took, 2 * LATENCY + 2 * negative + 2 * LATENCY);
        let filtering: Vec<_> = r
            .observations
            .iter()
            .filter(|o| o.test == Test::FilteringChangePort)
            .collect();
        assert_eq!(filtering.len(), 1);
        assert_eq!(filtering[0].sends, 3);
        assert_eq!(filtering[0].answered_from, None);
    }

    #[test]
    fn no_nat_is_open_internet() {
        let mut w = World::new(None, vec![s1()]);
        let (r, _) = run(&mut w, Config::default());
        assert_eq!(r.mapping, Mapping::NoNat);
        assert_eq!(r.filtering, Filtering::EndpointIndependent);
        assert_eq!(r.nat_type, NatType::OpenInternet);
        assert_eq!(r.mapped, Some(w.client));
        assert_eq!(r.hairpinning, Some(true));
        // RFC 5780 §4.3: no mapping tests II and III without a NAT.
        assert!(!tests_run(&r).contains(&Test::MappingAlternateIp));
    }

    #[test]
    fn firewall_without_nat() {
        let mut nat = SimNat::new(Dep::Independent, Dep::AddressAndPort);
        nat.preserve = true;
        let mut w = World::new(Some(nat), vec![s1()]);
        let (r, _) = run(&mut w, Config::default());
        assert_eq!(r.mapping, Mapping::NoNat);
        assert_eq!(r.filtering, Filtering::AddressAndPortDependent);
        assert_eq!(r.nat_type, NatType::SymmetricUdpFirewall);
    }

    #[test]
    fn nat_without_hairpinning() {
        let mut nat = SimNat::new(Dep::Independent, Dep::Independent);
        nat.hairpin = false;
        let mut w = World::new(Some(nat), vec![s1()]);
        let (r, _) = run(&mut w, Config::default());
        assert_eq!(r.hairpinning, Some(false));
        assert_eq!(r.nat_type, NatType::FullCone);

        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s1()],
        );
        let cfg = Config {
            hairpinning: false,
            ..Config::default()
        };
        let (r, _) = run(&mut w, cfg);
        assert_eq!(r.hairpinning, None);
        assert!(!tests_run(&r).contains(&Test::Hairpinning));
    }

    #[test]
    fn server_without_rfc5780() {
        let mut s = s1();
        s.rfc5780 = false;
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::AddressAndPort)),
            vec![s],
        );
        let (r, _) = run(&mut w, Config::default());
        assert!(!r.rfc5780);
        assert_eq!(r.mapped, Some(a("203.0.113.1:40000")));
        assert!(matches!(r.mapping, Mapping::Unknown(_)), "{r:?}");
        assert!(matches!(r.filtering, Filtering::Unknown(_)), "{r:?}");
        assert_eq!(r.nat_type, NatType::Unknown);
        assert!(r.learned_anything());
        assert_eq!(
            r.notes,
            vec![Note::NoRfc5780 {
                server: s1().primary
            }]
        );
        // No CHANGE-REQUEST was sent to a server that cannot honour it.
        assert_eq!(
            tests_run(&r)
                .into_iter()
                .filter(|t| *t != Test::Hairpinning)
                .collect::<Vec<_>>(),
            vec![Test::Binding]
        );
    }

    #[test]
    fn second_server_supplies_rfc5780() {
        let mut plain = s2();
        plain.rfc5780 = false;
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Address)),
            vec![plain, s1()],
        );
        let (r, _) = run(&mut w, Config::default());
        assert!(r.rfc5780);
        assert_eq!(r.server, Some(s1().primary));
        assert_eq!(r.nat_type, NatType::RestrictedCone);
        assert_eq!(r.mapping_varies_by_server, Some(false));
        assert_eq!(r.servers().count(), 2);
    }

    #[test]
    fn mapping_varies_by_server() {
        for (m, varies) in [
            (Dep::Independent, false),
            (Dep::Address, true),
            (Dep::AddressAndPort, true),
        ] {
            let mut w = World::new(Some(SimNat::new(m, Dep::AddressAndPort)), vec![s1(), s2()]);
            let (r, _) = run(&mut w, Config::default());
            assert_eq!(r.mapping_varies_by_server, Some(varies), "{m:?}: {r:#?}");
            // The second server is only contacted after the filtering tests,
            // which stay correct.
            assert_eq!(r.filtering, Filtering::AddressAndPortDependent, "{m:?}");
            let first_to_s2 = w
                .log
                .iter()
                .position(|(_, to)| to.ip() == s2().primary.ip());
            let last_filter = w.log.iter().rposition(|(_, to)| *to == s1().primary);
            assert!(first_to_s2 > last_filter, "{m:?}: {:?}", w.log);
        }
    }

    #[test]
    fn symmetric_inferred_from_plain_servers() {
        let mut p1 = s1();
        p1.rfc5780 = false;
        let mut p2 = s2();
        p2.rfc5780 = false;
        let mut w = World::new(Some(SimNat::new(Dep::Address, Dep::Address)), vec![p1, p2]);
        let (r, _) = run(&mut w, Config::default());
        assert!(!r.rfc5780);
        assert_eq!(r.mapping_varies_by_server, Some(true));
        assert!(matches!(r.mapping, Mapping::Unknown(_)));
        assert_eq!(r.nat_type, NatType::Symmetric);
    }

    #[test]
    fn total_loss_is_udp_blocked_after_the_rfc_budget() {
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s1()],
        );
        w.drop_all = true;
        let (r, took) = run(&mut w, Config::default());
        assert_eq!(took, Duration::from_millis(39_500));
        assert_eq!(r.nat_type, NatType::UdpBlocked);
        assert_eq!(r.mapped, None);
        assert_eq!(r.hairpinning, None);
        assert!(!r.learned_anything());
        let o = &r.observations[0];
        assert_eq!((o.sends, o.answered_from), (7, None));
        assert_eq!(
            r.notes,
            vec![Note::NoAnswer {
                server: s1().primary,
                sends: 7,
                waited: Duration::from_millis(39_500)
            }]
        );
        // Sent at the RFC 8489 instants.
        let t0 = w.log[0].0;
        let offsets: Vec<u128> = w.log.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
        assert_eq!(offsets, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);

        // Two servers: tried one after the other.
        let mut w = World::new(None, vec![s1(), s2()]);
        w.drop_all = true;
        let (r, took) = run(&mut w, Config::default());
        assert_eq!(took, Duration::from_millis(79_000));
        assert_eq!(r.servers().count(), 2);
        assert_eq!(r.nat_type, NatType::UdpBlocked);
    }

    #[test]
    fn dead_first_server_falls_back_to_the_next() {
        let dead = a("192.0.2.99:3478");
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s1()],
        );
        let cfg = Config::with_probe(transaction::Config {
            rto: Duration::from_millis(100),
            rc: 2,
            rm: 2,
        });
        let (r, _) = run_with(&mut w, vec![dead, s1().primary], cfg);
        assert_eq!(r.nat_type, NatType::FullCone);
        assert_eq!(
            r.notes,
            vec![Note::NoAnswer {
                server: dead,
                sends: 2,
                waited: Duration::from_millis(300)
            }]
        );
        assert_eq!(r.mapping_varies_by_server, None);
    }

    #[test]
    fn unreachable_server_ends_its_probe_at_once_and_the_next_is_tried() {
        let t0 = Instant::now();
        let (dead, next) = (a("192.0.2.99:3478"), a("192.0.2.98:3478"));
        let local = a("10.0.0.2:5000");
        let mut d = Discovery::new(t0, local, vec![dead, next], Config::default()).unwrap();
        assert_eq!(d.poll_transmit().unwrap().to, dead);
        // Unrelated addresses change nothing.
        d.handle_unreachable(t0, a("192.0.2.1:9"));
        assert!(d.poll_transmit().is_none());
        let later = t0 + Duration::from_millis(3);
        d.handle_unreachable(later, dead);
        assert_eq!(d.poll_transmit().unwrap().to, next);
        d.handle_unreachable(later, next);
        assert!(d.is_done());
        let r = d.into_report().unwrap();
        assert_eq!(r.nat_type, NatType::UdpBlocked);
        assert_eq!(
            r.notes,
            vec![
                Note::Unreachable {
                    server: dead,
                    test: Test::Binding,
                    after: Duration::from_millis(3)
                },
                Note::Unreachable {
                    server: next,
                    test: Test::Binding,
                    after: Duration::ZERO
                }
            ]
        );
        assert_eq!(r.servers().count(), 2);
    }

    #[test]
    fn giving_up_concludes_nothing_from_probes_cut_short() {
        let t0 = Instant::now();
        let (p, local) = (a("192.0.2.1:3478"), a("10.0.0.2:5000"));
        let mut d = Discovery::new(t0, local, vec![p], Config::default()).unwrap();
        let req = d.poll_transmit().unwrap();
        let r = parse_request(&req.payload).unwrap();
        let mut buf = [0u8; 128];
        let fields = SuccessFields {
            mapped: a("203.0.113.1:40000"),
            response_origin: Some(p),
            other_address: Some(a("192.0.2.2:3479")),
            padding: None,
            fingerprint: false,
        };
        let n = write_success(&mut buf, &r.transaction_id, &fields).unwrap();
        d.handle_datagram(t0 + Duration::from_millis(5), p, &buf[..n]);
        // The filtering test (and the hairpin probe) are now waiting.
        assert!(!d.is_done());
        d.give_up(t0 + Duration::from_millis(600));
        let r = d.into_report().unwrap();
        assert_eq!(r.filtering, Filtering::Unknown(Undetermined::Incomplete));
        assert_eq!(r.mapping, Mapping::Unknown(Undetermined::Incomplete));
        assert_eq!(r.hairpinning, None);
        assert!(r.notes.contains(&Note::CutShort {
            test: Test::FilteringChangeIpPort,
            to: p
        }));
        assert_eq!(r.mapped, Some(a("203.0.113.1:40000")));
    }

    #[test]
    fn server_ignoring_change_request() {
        let mut s = s1();
        s.ignore_change = true;
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s],
        );
        let (r, _) = run(&mut w, Config::default());
        assert_eq!(
            r.filtering,
            Filtering::Unknown(Undetermined::ChangeIgnored {
                test: Test::FilteringChangeIpPort,
                server: s1().primary,
                from: s1().primary,
            })
        );
        // Mapping still works, and the classic name needs filtering.
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.nat_type, NatType::Unknown);
    }

    #[test]
    fn dead_alternate_address() {
        let mut s = s1();
        s.alternate_ip_dead = true;
        let mut w = World::new(
            Some(SimNat::new(Dep::Address, Dep::AddressAndPort)),
            vec![s],
        );
        let cfg = Config::with_probe(transaction::Config {
            rto: Duration::from_millis(100),
            rc: 3,
            rm: 4,
        });
        let (r, _) = run(&mut w, cfg);
        assert!(
            matches!(
                r.mapping,
                Mapping::Unknown(Undetermined::MappingTimedOut {
                    test: Test::MappingAlternateIp,
                    to,
                    sends: 3,
                    ..
                }) if to == a("192.0.2.2:3478")
            ),
            "{:?}",
            r.mapping
        );
        // Silence to CHANGE-REQUEST reads as port-dependent filtering: a
        // server whose alternate address is dead cannot be told apart from
        // a filtering NAT, which is why mapping reports the dead address.
        assert_eq!(r.filtering, Filtering::AddressAndPortDependent);
    }

    #[test]
    fn earlier_probe_that_opened_the_filter_makes_filtering_inconclusive() {
        // The first server lacks RFC 5780 and shares its IP with the second
        // server's alternate address: Test I to it opens an address-dependent
        // filter for the address filtering test II answers from.
        let mut plain = SimServer::new("192.0.2.2:9999", "192.0.2.99:1");
        plain.rfc5780 = false;
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Address)),
            vec![plain, s1()],
        );
        let (r, _) = run(&mut w, Config::default());
        assert_eq!(r.server, Some(s1().primary));
        assert!(
            matches!(
                r.filtering,
                Filtering::Unknown(Undetermined::FilterOpened { opener, .. })
                    if opener == a("192.0.2.2:9999")
            ),
            "{:?}",
            r.filtering
        );
    }

    #[test]
    fn bad_other_address_is_not_used() {
        let s = SimServer::new("192.0.2.1:3478", "192.0.2.1:3479");
        let mut w = World::new(
            Some(SimNat::new(Dep::Independent, Dep::Independent)),
            vec![s],
        );
        let (r, _) = run(&mut w, Config::default());
        assert!(!r.rfc5780);
        assert_eq!(
            r.notes,
            vec![Note::OtherAddressNotDistinct {
                server: a("192.0.2.1:3478"),
                other: a("192.0.2.1:3479")
            }]
        );
    }

    #[test]
    fn junk_and_stray_datagrams_change_nothing() {
        let t0 = Instant::now();
        let local = a("10.0.0.2:5000");
        let mut d = Discovery::new(t0, local, vec![s1().primary], Config::default()).unwrap();
        let req = d.poll_transmit().unwrap();
        let tid = parse_request(&req.payload).unwrap().transaction_id;
        d.handle_datagram(t0, s1().primary, b"");
        d.handle_datagram(t0, s1().primary, &[0xff; 40]);
        // A response to somebody else's transaction.
        let mut buf = [0u8; 128];
        let fields = SuccessFields {
            mapped: local,
            response_origin: None,
            other_address: None,
            padding: None,
            fingerprint: false,
        };
        let mut other = tid;
        other[0] ^= 1;
        let n = write_success(&mut buf, &other, &fields).unwrap();
        d.handle_datagram(t0, s1().primary, &buf[..n]);
        assert!(!d.is_done());
        assert_eq!(d.poll_transmit(), None);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn bad_arguments() {
        let t0 = Instant::now();
        assert_eq!(
            Discovery::new(t0, a("10.0.0.2:1"), vec![], Config::default()).unwrap_err(),
            DiscoveryError::NoServers
        );
        assert!(matches!(
            Discovery::new(
                t0,
                a("10.0.0.2:1"),
                vec![a("[2001:db8::1]:3478")],
                Config::default()
            ),
            Err(DiscoveryError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn classify() {
        use Filtering as F;
        use Mapping as M;
        let u = || F::Unknown(Undetermined::Incomplete);
        assert_eq!(
            NatType::classify(false, &M::NoNat, &F::EndpointIndependent, None),
            NatType::UdpBlocked
        );
        assert_eq!(
            NatType::classify(true, &M::NoNat, &u(), None),
            NatType::OpenInternet
        );
        assert_eq!(
            NatType::classify(
                true,
                &M::Unknown(Undetermined::NoRfc5780),
                &u(),
                Some(false)
            ),
            NatType::Unknown
        );
        assert_eq!(
            NatType::classify(true, &M::Unknown(Undetermined::NoRfc5780), &u(), Some(true)),
            NatType::Symmetric
        );
        assert_eq!(
            NatType::classify(true, &M::AddressDependent, &F::EndpointIndependent, None),
            NatType::Symmetric
        );
    }
}
