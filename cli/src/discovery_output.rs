//! How an RFC 5780 discovery report reads: the NAT type's name, behaviors
//! and why they are unknown, notes, the verdict on peer-to-peer prospects,
//! and the JSON shape of `natkit netcheck --json`. `natkit_proto::discovery`
//! reports in types; the words are the CLI's.

use std::net::SocketAddr;

use natkit_proto::discovery::{
    Filtering, Mapping, NatType, Note, Observation, Report, Test, Undetermined,
};
use serde::Serialize;

use crate::udp_driver::{json_ms, secs};

/// The human name of a NAT type.
pub fn nat_type_name(nat: NatType) -> &'static str {
    match nat {
        NatType::OpenInternet => "Open Internet (no NAT)",
        NatType::SymmetricUdpFirewall => "Symmetric UDP firewall (no NAT, filtered)",
        NatType::FullCone => "Full cone",
        NatType::RestrictedCone => "Restricted cone",
        NatType::PortRestrictedCone => "Port-restricted cone",
        NatType::Symmetric => "Symmetric",
        NatType::UdpBlocked => "UDP blocked (or server unreachable)",
        NatType::Unknown => "Unknown",
    }
}

/// The NAT type's identifier in JSON.
fn nat_type_id(nat: NatType) -> &'static str {
    match nat {
        NatType::OpenInternet => "open_internet",
        NatType::SymmetricUdpFirewall => "symmetric_udp_firewall",
        NatType::FullCone => "full_cone",
        NatType::RestrictedCone => "restricted_cone",
        NatType::PortRestrictedCone => "port_restricted_cone",
        NatType::Symmetric => "symmetric",
        NatType::UdpBlocked => "udp_blocked",
        NatType::Unknown => "unknown",
    }
}

/// The test's identifier in JSON.
fn test_id(test: Test) -> &'static str {
    match test {
        Test::Binding => "binding",
        Test::FilteringChangeIpPort => "filtering_change_ip_port",
        Test::FilteringChangePort => "filtering_change_port",
        Test::MappingAlternateIp => "mapping_alternate_ip",
        Test::MappingAlternateIpPort => "mapping_alternate_ip_port",
        Test::Hairpinning => "hairpinning",
    }
}

/// How a mapping test (the only tests an [`Undetermined`] names) reads.
fn mapping_test_name(test: Test) -> &'static str {
    if test == Test::MappingAlternateIpPort {
        "mapping test III"
    } else {
        "mapping test II"
    }
}

/// Why a behavior is unknown, in words.
pub fn undetermined(why: &Undetermined) -> String {
    match *why {
        Undetermined::NoAnswer => "no server answered".to_string(),
        Undetermined::NoRfc5780 => {
            "no server with RFC 5780 support (OTHER-ADDRESS) answered".to_string()
        }
        Undetermined::Incomplete => "test did not complete".to_string(),
        Undetermined::MappingTimedOut {
            test,
            to,
            sends,
            waited,
        } => format!(
            "no answer to {} from the server's alternate address {to} after {sends} tries over {}",
            mapping_test_name(test),
            secs(waited)
        ),
        Undetermined::MappingError { test, to, code } => {
            format!(
                "{to} answered {} with error {code}",
                mapping_test_name(test)
            )
        }
        Undetermined::MappingWithoutAddress { test, to } => format!(
            "{to} answered {} without XOR-MAPPED-ADDRESS",
            mapping_test_name(test)
        ),
        Undetermined::ChangeRejected { server, code } => {
            format!("{server} rejected CHANGE-REQUEST with error {code}")
        }
        Undetermined::ChangeIgnored { test, server, from } => {
            let asked = if test == Test::FilteringChangePort {
                "its other port"
            } else {
                "its other address and port"
            };
            format!("asked to answer from {asked}, {server} answered from {from}")
        }
        Undetermined::FilterOpened { opener, from } => format!(
            "inconclusive: the earlier probe to {opener} may have opened the filter for {from}"
        ),
    }
}

/// A note, in words.
pub fn note(n: &Note) -> String {
    match *n {
        Note::NoAnswer {
            server,
            sends,
            waited,
        } => format!("no answer from {server} after {sends} tries over {}", secs(waited)),
        Note::ErrorAnswer { server, code } => {
            format!("{server} answered the Binding request with error {code}")
        }
        Note::ResponseOriginDiffers {
            server,
            origin,
            from,
        } => format!(
            "{server}: RESPONSE-ORIGIN {origin} differs from the address the answer came from ({from}); the server is behind a NAT or misconfigured"
        ),
        Note::OtherAddressFamily { server, other } => format!(
            "{server} gives OTHER-ADDRESS {other} of another address family; RFC 5780 tests skipped"
        ),
        Note::OtherAddressNotDistinct { server, other } => format!(
            "{server} gives OTHER-ADDRESS {other}, which does not differ in both address and port; RFC 5780 tests skipped"
        ),
        Note::NoRfc5780 { server } => {
            format!("{server} does not support RFC 5780 (no OTHER-ADDRESS in its answer)")
        }
        Note::NoMappedAddress { server } => {
            format!("{server} answered without XOR-MAPPED-ADDRESS")
        }
        Note::Unreachable {
            server,
            test,
            after,
        } => format!(
            "{server} is unreachable (ICMP port unreachable after {}, {}): nothing listens there, or a firewall rejects it",
            crate::udp_driver::millis(after),
            test_name(test)
        ),
        Note::CutShort { test, to } => {
            format!("{} to {to} cut short by --timeout: it tells nothing", test_name(test))
        }
    }
}

/// A test, in words.
fn test_name(test: Test) -> &'static str {
    match test {
        Test::Binding => "Binding test I",
        Test::FilteringChangeIpPort => "filtering test II",
        Test::FilteringChangePort => "filtering test III",
        Test::MappingAlternateIp => "mapping test II",
        Test::MappingAlternateIpPort => "mapping test III",
        Test::Hairpinning => "the hairpinning probe",
    }
}

/// The mapping behavior, in words.
pub fn mapping(m: &Mapping) -> String {
    match m {
        Mapping::EndpointIndependent => "endpoint-independent".to_string(),
        Mapping::AddressDependent => "address-dependent".to_string(),
        Mapping::AddressAndPortDependent => "address and port-dependent".to_string(),
        Mapping::NoNat => "none (mapped address is the local address)".to_string(),
        Mapping::Unknown(why) => format!("unknown ({})", undetermined(why)),
    }
}

/// The filtering behavior, in words.
pub fn filtering(f: &Filtering) -> String {
    match f {
        Filtering::EndpointIndependent => "endpoint-independent".to_string(),
        Filtering::AddressDependent => "address-dependent".to_string(),
        Filtering::AddressAndPortDependent => "address and port-dependent".to_string(),
        Filtering::Unknown(why) => format!("unknown ({})", undetermined(why)),
    }
}

/// One-line verdict on peer-to-peer prospects.
pub fn verdict(r: &Report) -> &'static str {
    match r.nat_type {
        NatType::UdpBlocked => {
            "No STUN server answered over UDP: expect to need a TURN relay (over TCP or TLS)"
        }
        NatType::OpenInternet if matches!(r.filtering, Filtering::Unknown(_)) => {
            "No NAT: direct connections work with every peer, unless a firewall filters inbound UDP"
        }
        NatType::OpenInternet => "No NAT and no filtering: direct connections work with every peer",
        NatType::SymmetricUdpFirewall => {
            "No NAT but a filtering firewall: direct connections work with most peers once both sides send"
        }
        NatType::FullCone | NatType::RestrictedCone => "Direct connections work with most peers",
        NatType::PortRestrictedCone => {
            "Direct connections work with most peers but fail with symmetric-NAT peers; expect a TURN relay for those"
        }
        NatType::Symmetric => {
            "Direct connections fail with symmetric or port-restricted peers; expect a TURN relay for those"
        }
        NatType::Unknown => match r.mapping {
            Mapping::EndpointIndependent => {
                "Endpoint-independent mapping: direct connections should work with most peers (filtering unknown)"
            }
            _ if r.mapping_varies_by_server == Some(false) => {
                "Same mapped address from every server: direct connections likely work with most peers"
            }
            _ => "Not enough information for a verdict: use a STUN server with RFC 5780 support",
        },
    }
}

/// A behavior in JSON: `{"behavior": "...", "reason": "..."}`, the reason
/// only when unknown.
#[derive(Serialize)]
#[serde(tag = "behavior", content = "reason", rename_all = "snake_case")]
enum BehaviorJson {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
    NoNat,
    Unknown(String),
}

impl From<&Mapping> for BehaviorJson {
    fn from(m: &Mapping) -> Self {
        match m {
            Mapping::EndpointIndependent => BehaviorJson::EndpointIndependent,
            Mapping::AddressDependent => BehaviorJson::AddressDependent,
            Mapping::AddressAndPortDependent => BehaviorJson::AddressAndPortDependent,
            Mapping::NoNat => BehaviorJson::NoNat,
            Mapping::Unknown(why) => BehaviorJson::Unknown(undetermined(why)),
        }
    }
}

impl From<&Filtering> for BehaviorJson {
    fn from(f: &Filtering) -> Self {
        match f {
            Filtering::EndpointIndependent => BehaviorJson::EndpointIndependent,
            Filtering::AddressDependent => BehaviorJson::AddressDependent,
            Filtering::AddressAndPortDependent => BehaviorJson::AddressAndPortDependent,
            Filtering::Unknown(why) => BehaviorJson::Unknown(undetermined(why)),
        }
    }
}

/// One probe in JSON.
#[derive(Serialize)]
struct ObservationJson {
    test: &'static str,
    to: SocketAddr,
    answered_from: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    response_origin: Option<SocketAddr>,
    other_address: Option<SocketAddr>,
    error_code: Option<u16>,
    sends: u32,
    elapsed_ms: f64,
    rtt_ms: Option<f64>,
}

impl From<&Observation> for ObservationJson {
    fn from(o: &Observation) -> Self {
        ObservationJson {
            test: test_id(o.test),
            to: o.to,
            answered_from: o.answered_from,
            mapped: o.mapped,
            response_origin: o.response_origin,
            other_address: o.other_address,
            error_code: o.error_code,
            sends: o.sends,
            elapsed_ms: json_ms(o.elapsed),
            rtt_ms: o.rtt.map(json_ms),
        }
    }
}

/// A report in JSON (what `natkit netcheck --json` prints after the
/// servers given).
#[derive(Serialize)]
pub struct ReportJson {
    local: SocketAddr,
    server: Option<SocketAddr>,
    other_address: Option<SocketAddr>,
    rfc5780: bool,
    mapped: Option<SocketAddr>,
    mapping: BehaviorJson,
    filtering: BehaviorJson,
    hairpinning: Option<bool>,
    mapping_varies_by_server: Option<bool>,
    nat_type: &'static str,
    verdict: &'static str,
    observations: Vec<ObservationJson>,
    notes: Vec<String>,
    elapsed_ms: f64,
}

impl From<&Report> for ReportJson {
    fn from(r: &Report) -> Self {
        ReportJson {
            local: r.local,
            server: r.server,
            other_address: r.other_address,
            rfc5780: r.rfc5780,
            mapped: r.mapped,
            mapping: (&r.mapping).into(),
            filtering: (&r.filtering).into(),
            hairpinning: r.hairpinning,
            mapping_varies_by_server: r.mapping_varies_by_server,
            nat_type: nat_type_id(r.nat_type),
            verdict: verdict(r),
            observations: r.observations.iter().map(Into::into).collect(),
            notes: r.notes.iter().map(note).collect(),
            elapsed_ms: json_ms(r.elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_reason_and_note_reads_as_before() {
        let (p, o, f) = (
            a("192.0.2.1:3478"),
            a("192.0.2.2:3479"),
            a("198.51.100.7:9"),
        );
        let waited = Duration::from_millis(3500);
        let cases = [
            (Undetermined::NoAnswer, "no server answered".to_string()),
            (
                Undetermined::NoRfc5780,
                "no server with RFC 5780 support (OTHER-ADDRESS) answered".into(),
            ),
            (Undetermined::Incomplete, "test did not complete".into()),
            (
                Undetermined::MappingTimedOut {
                    test: Test::MappingAlternateIp,
                    to: o,
                    sends: 3,
                    waited,
                },
                format!("no answer to mapping test II from the server's alternate address {o} after 3 tries over 3.5 s"),
            ),
            (
                Undetermined::MappingError {
                    test: Test::MappingAlternateIpPort,
                    to: o,
                    code: 500,
                },
                format!("{o} answered mapping test III with error 500"),
            ),
            (
                Undetermined::MappingWithoutAddress {
                    test: Test::MappingAlternateIp,
                    to: o,
                },
                format!("{o} answered mapping test II without XOR-MAPPED-ADDRESS"),
            ),
            (
                Undetermined::ChangeRejected { server: p, code: 420 },
                format!("{p} rejected CHANGE-REQUEST with error 420"),
            ),
            (
                Undetermined::ChangeIgnored {
                    test: Test::FilteringChangeIpPort,
                    server: p,
                    from: f,
                },
                format!("asked to answer from its other address and port, {p} answered from {f}"),
            ),
            (
                Undetermined::ChangeIgnored {
                    test: Test::FilteringChangePort,
                    server: p,
                    from: f,
                },
                format!("asked to answer from its other port, {p} answered from {f}"),
            ),
            (
                Undetermined::FilterOpened { opener: o, from: f },
                format!("inconclusive: the earlier probe to {o} may have opened the filter for {f}"),
            ),
        ];
        for (why, want) in cases {
            assert_eq!(undetermined(&why), want);
            assert_eq!(mapping(&Mapping::Unknown(why)), format!("unknown ({want})"));
            assert_eq!(
                filtering(&Filtering::Unknown(why)),
                format!("unknown ({want})")
            );
        }
        let notes = [
            (
                Note::NoAnswer {
                    server: p,
                    sends: 7,
                    waited: Duration::from_millis(39_500),
                },
                format!("no answer from {p} after 7 tries over 39.5 s"),
            ),
            (
                Note::ErrorAnswer { server: p, code: 401 },
                format!("{p} answered the Binding request with error 401"),
            ),
            (
                Note::ResponseOriginDiffers {
                    server: p,
                    origin: o,
                    from: f,
                },
                format!("{p}: RESPONSE-ORIGIN {o} differs from the address the answer came from ({f}); the server is behind a NAT or misconfigured"),
            ),
            (
                Note::OtherAddressFamily { server: p, other: a("[2001:db8::1]:3479") },
                format!("{p} gives OTHER-ADDRESS [2001:db8::1]:3479 of another address family; RFC 5780 tests skipped"),
            ),
            (
                Note::OtherAddressNotDistinct { server: p, other: o },
                format!("{p} gives OTHER-ADDRESS {o}, which does not differ in both address and port; RFC 5780 tests skipped"),
            ),
            (
                Note::NoRfc5780 { server: p },
                format!("{p} does not support RFC 5780 (no OTHER-ADDRESS in its answer)"),
            ),
            (
                Note::NoMappedAddress { server: p },
                format!("{p} answered without XOR-MAPPED-ADDRESS"),
            ),
        ];
        for (n, want) in notes {
            assert_eq!(note(&n), want);
        }
    }

    fn report(nat_type: NatType, mapping: Mapping, filtering: Filtering) -> Report {
        Report {
            local: a("10.0.0.2:5000"),
            server: None,
            other_address: None,
            rfc5780: false,
            mapped: None,
            mapping,
            filtering,
            hairpinning: None,
            mapping_varies_by_server: None,
            nat_type,
            observations: Vec::new(),
            notes: Vec::new(),
            elapsed: Duration::from_micros(1_234_567),
        }
    }

    #[test]
    fn verdicts() {
        use Filtering as F;
        use Mapping as M;
        let unknown_f = || F::Unknown(Undetermined::NoRfc5780);
        let unknown_m = || M::Unknown(Undetermined::NoRfc5780);
        let v = |n| verdict(&report(n, M::EndpointIndependent, F::EndpointIndependent));
        assert_eq!(
            v(NatType::Symmetric),
            "Direct connections fail with symmetric or port-restricted peers; expect a TURN relay for those"
        );
        assert_eq!(
            v(NatType::PortRestrictedCone),
            "Direct connections work with most peers but fail with symmetric-NAT peers; expect a TURN relay for those"
        );
        assert_eq!(
            v(NatType::FullCone),
            "Direct connections work with most peers"
        );
        assert_eq!(
            v(NatType::RestrictedCone),
            "Direct connections work with most peers"
        );
        assert_eq!(
            v(NatType::UdpBlocked),
            "No STUN server answered over UDP: expect to need a TURN relay (over TCP or TLS)"
        );
        assert_eq!(
            v(NatType::SymmetricUdpFirewall),
            "No NAT but a filtering firewall: direct connections work with most peers once both sides send"
        );
        assert_eq!(
            v(NatType::OpenInternet),
            "No NAT and no filtering: direct connections work with every peer"
        );
        assert_eq!(
            verdict(&report(NatType::OpenInternet, M::NoNat, unknown_f())),
            "No NAT: direct connections work with every peer, unless a firewall filters inbound UDP"
        );
        assert_eq!(
            verdict(&report(NatType::Unknown, M::EndpointIndependent, unknown_f())),
            "Endpoint-independent mapping: direct connections should work with most peers (filtering unknown)"
        );
        let mut same = report(NatType::Unknown, unknown_m(), unknown_f());
        same.mapping_varies_by_server = Some(false);
        assert_eq!(
            verdict(&same),
            "Same mapped address from every server: direct connections likely work with most peers"
        );
        assert_eq!(
            verdict(&report(NatType::Unknown, unknown_m(), unknown_f())),
            "Not enough information for a verdict: use a STUN server with RFC 5780 support"
        );
    }

    #[test]
    fn json_shape() {
        let mut r = report(
            NatType::PortRestrictedCone,
            Mapping::EndpointIndependent,
            Filtering::Unknown(Undetermined::Incomplete),
        );
        r.observations.push(Observation {
            test: Test::FilteringChangeIpPort,
            to: a("192.0.2.1:3478"),
            answered_from: None,
            mapped: None,
            response_origin: None,
            other_address: None,
            error_code: Some(420),
            sends: 3,
            elapsed: Duration::from_micros(3_500_250),
            rtt: None,
        });
        r.notes.push(Note::NoRfc5780 {
            server: a("192.0.2.9:3478"),
        });
        let json = serde_json::to_string(&ReportJson::from(&r)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"local":"10.0.0.2:5000","server":null,"other_address":null,"rfc5780":false,"#,
                r#""mapped":null,"mapping":{"behavior":"endpoint_independent"},"#,
                r#""filtering":{"behavior":"unknown","reason":"test did not complete"},"#,
                r#""hairpinning":null,"mapping_varies_by_server":null,"nat_type":"port_restricted_cone","#,
                r#""verdict":"Direct connections work with most peers but fail with symmetric-NAT peers; expect a TURN relay for those","#,
                r#""observations":[{"test":"filtering_change_ip_port","to":"192.0.2.1:3478","answered_from":null,"#,
                r#""mapped":null,"response_origin":null,"other_address":null,"error_code":420,"sends":3,"#,
                r#""elapsed_ms":3500.25,"rtt_ms":null}],"#,
                r#""notes":["192.0.2.9:3478 does not support RFC 5780 (no OTHER-ADDRESS in its answer)"],"#,
                r#""elapsed_ms":1234.567}"#
            )
        );
    }
}
