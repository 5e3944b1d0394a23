//! PCP (RFC 6887) MAP requests and responses: the wire format only.
//!
//! A MAP request asks the gateway to forward an external port to an
//! internal address and port (RFC 6887 §11). Every PCP message starts with
//! a 24-byte common header (§7.1, §7.2); MAP adds 36 bytes (§11.1). IP
//! addresses are always 16 bytes, IPv4 as IPv4-mapped IPv6 (§5).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The PCP version this client speaks (RFC 6887 §7.1).
pub const VERSION: u8 = 2;
/// The MAP opcode (RFC 6887 §19.2).
pub const OP_MAP: u8 = 1;
/// The R bit of the opcode byte: set in responses (RFC 6887 §7.2).
const RESPONSE: u8 = 0x80;
/// IANA protocol number of UDP, the only protocol natkit maps.
pub const PROTO_UDP: u8 = 17;
/// Common header (24) + MAP opcode data (36), RFC 6887 §7.1 and §11.1.
pub const MAP_LEN: usize = 60;
/// Longest PCP message (RFC 6887 §7: 1100 bytes).
pub const MAX_LEN: usize = 1100;

/// A PCP result code (RFC 6887 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u8);

impl ResultCode {
    /// SUCCESS.
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// UNSUPP_VERSION: the server speaks another version (a NAT-PMP-only
    /// server answers a PCP request this way, RFC 6887 §9).
    pub const UNSUPP_VERSION: ResultCode = ResultCode(1);
    /// NOT_AUTHORIZED: the server refuses (policy).
    pub const NOT_AUTHORIZED: ResultCode = ResultCode(2);

    /// The name RFC 6887 §7.4 gives it.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "SUCCESS",
            1 => "UNSUPP_VERSION",
            2 => "NOT_AUTHORIZED",
            3 => "MALFORMED_REQUEST",
            4 => "UNSUPP_OPCODE",
            5 => "UNSUPP_OPTION",
            6 => "MALFORMED_OPTION",
            7 => "NETWORK_FAILURE",
            8 => "NO_RESOURCES",
            9 => "UNSUPP_PROTOCOL",
            10 => "USER_EX_QUOTA",
            11 => "CANNOT_PROVIDE_EXTERNAL",
            12 => "ADDRESS_MISMATCH",
            13 => "EXCESSIVE_REMOTE_PEERS",
            _ => "unknown result",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A MAP request (RFC 6887 §11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// Requested lifetime in seconds; 0 deletes the mapping (§15).
    pub lifetime: u32,
    /// The PCP client's IP address: the source address of the request
    /// (§8.1; a mismatch is ADDRESS_MISMATCH).
    pub client: IpAddr,
    /// The mapping nonce: the same for renewals and the deletion of one
    /// mapping (§11.1, §11.2.1).
    pub nonce: [u8; 12],
    /// The internal port to map.
    pub internal_port: u16,
    /// Suggested external address and port: unspecified (all zeros, of
    /// the client's family) for "any", the assigned ones on renewal.
    pub suggested: SocketAddr,
}

/// The 16-byte form of an address (RFC 6887 §5): IPv4 as IPv4-mapped IPv6.
fn to_16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address from its 16-byte form: IPv4-mapped ones as IPv4.
fn from_16(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// "Any external address" of the client's family (RFC 6887 §11.1: all
/// zeros, `::ffff:0.0.0.0` for IPv4).
pub fn any_external(client: IpAddr) -> SocketAddr {
    match client {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

impl MapRequest {
    /// The request's 60 bytes (RFC 6887 §7.1 header, §11.1 MAP data).
    pub fn encode(&self) -> [u8; MAP_LEN] {
        let mut b = [0u8; MAP_LEN];
        b[0] = VERSION;
        b[1] = OP_MAP;
        // b[2..4] reserved.
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&to_16(self.client));
        b[24..36].copy_from_slice(&self.nonce);
        b[36] = PROTO_UDP;
        // b[37..40] reserved.
        b[40..42].copy_from_slice(&self.internal_port.to_be_bytes());
        b[42..44].copy_from_slice(&self.suggested.port().to_be_bytes());
        b[44..60].copy_from_slice(&to_16(self.suggested.ip()));
        b
    }
}

/// A MAP response (RFC 6887 §7.2, §11.1), or an error header without the
/// MAP data (a server may not echo it with some errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapResponse {
    /// The result.
    pub result: ResultCode,
    /// On success, the lifetime granted (seconds); on error, how long the
    /// error holds (§7.2).
    pub lifetime: u32,
    /// The server's epoch time (seconds since it lost its state, §8.5).
    pub epoch: u32,
    /// The MAP data, when present.
    pub map: Option<MapData>,
}

/// The MAP data of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapData {
    /// The request's nonce, echoed.
    pub nonce: [u8; 12],
    /// The protocol, echoed.
    pub protocol: u8,
    /// The internal port, echoed.
    pub internal_port: u16,
    /// The assigned external address and port.
    pub external: SocketAddr,
}

/// What a datagram from the PCP port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A PCP MAP response.
    Map(MapResponse),
    /// A NAT-PMP answer (version 0) to our PCP request: the server speaks
    /// only NAT-PMP (RFC 6887 §9, RFC 6886 §3.5).
    NatPmpOnly,
}

/// Why a datagram is not a MAP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header, longer than 1100 bytes, or not a multiple
    /// of 4 (RFC 6887 §7).
    #[error("bad PCP message length {0}")]
    Length(usize),
    /// Another version, a request, or another opcode.
    #[error("not a PCP MAP response")]
    NotMapResponse,
}

/// Parse a datagram from the gateway's PCP port.
pub fn parse(b: &[u8]) -> Result<Parsed, ParseError> {
    // RFC 6887 §9: a NAT-PMP server answers version 2 with its own
    // version 0 and "unsupported version" (RFC 6886 §3.5).
    if b.len() >= 4 && b[0] == 0 && b[1] & RESPONSE != 0 {
        return Ok(Parsed::NatPmpOnly);
    }
    if b.len() < 24 || b.len() > MAX_LEN || b.len() % 4 != 0 {
        return Err(ParseError::Length(b.len()));
    }
    if b[0] != VERSION || b[1] != RESPONSE | OP_MAP {
        return Err(ParseError::NotMapResponse);
    }
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let result = ResultCode(b[3]);
    let map = if b.len() >= MAP_LEN {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[24..36]);
        let mut ext = [0u8; 16];
        ext.copy_from_slice(&b[44..60]);
        Some(MapData {
            nonce,
            protocol: b[36],
            internal_port: u16::from_be_bytes([b[40], b[41]]),
            external: SocketAddr::new(from_16(ext), u16::from_be_bytes([b[42], b[43]])),
        })
    } else if result == ResultCode::SUCCESS {
        // A success must carry the assignment.
        return Err(ParseError::Length(b.len()));
    } else {
        None
    };
    Ok(Parsed::Map(MapResponse {
        result,
        lifetime: be32(4),
        epoch: be32(8),
        map,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as miniupnpd builds it: the request with the R bit, the
    /// result, lifetime, epoch, and the assignment filled in.
    pub(crate) fn response(
        req: &[u8; MAP_LEN],
        result: u8,
        lifetime: u32,
        epoch: u32,
        ext: SocketAddr,
    ) -> Vec<u8> {
        let mut b = req.to_vec();
        b[1] |= RESPONSE;
        b[3] = result;
        b[4..8].copy_from_slice(&lifetime.to_be_bytes());
        b[8..12].copy_from_slice(&epoch.to_be_bytes());
        b[12..24].fill(0);
        b[42..44].copy_from_slice(&ext.port().to_be_bytes());
        b[44..60].copy_from_slice(&to_16(ext.ip()));
        b
    }

    #[test]
    fn map_request_layout_follows_section_11_1() {
        let req = MapRequest {
            lifetime: 7200,
            client: "198.51.100.10".parse().unwrap(),
            nonce: [7; 12],
            internal_port: 40000,
            suggested: any_external("198.51.100.10".parse().unwrap()),
        };
        let b = req.encode();
        assert_eq!(&b[..4], &[2, 1, 0, 0]);
        assert_eq!(&b[4..8], &7200u32.to_be_bytes());
        // ::ffff:198.51.100.10
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 10]
        );
        assert_eq!(&b[24..36], &[7; 12]);
        assert_eq!(&b[36..40], &[17, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x9c, 0x40, 0, 0]);
        // ::ffff:0.0.0.0, "any external address" of IPv4.
        assert_eq!(
            &b[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        // The same bytes as the lab's hand-made request
        // (tests/lab/tests/port_mapping.rs) apart from lifetime and nonce.
    }

    #[test]
    fn responses_parse_with_their_assignment() {
        let req = MapRequest {
            lifetime: 600,
            client: "198.51.100.10".parse().unwrap(),
            nonce: [9; 12],
            internal_port: 40003,
            suggested: any_external("198.51.100.10".parse().unwrap()),
        }
        .encode();
        let ext: SocketAddr = "203.0.113.1:40003".parse().unwrap();
        let Parsed::Map(r) = parse(&response(&req, 0, 600, 1234, ext)).unwrap() else {
            panic!("not a MAP response");
        };
        assert_eq!(r.result, ResultCode::SUCCESS);
        assert_eq!((r.lifetime, r.epoch), (600, 1234));
        let m = r.map.unwrap();
        assert_eq!((m.nonce, m.protocol, m.internal_port), ([9; 12], 17, 40003));
        assert_eq!(m.external, ext);

        // An IPv6 assignment stays IPv6.
        let ext6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let Parsed::Map(r) = parse(&response(&req, 0, 600, 1, ext6)).unwrap() else {
            panic!()
        };
        assert_eq!(r.map.unwrap().external, ext6);
    }

    #[test]
    fn errors_parse_with_or_without_map_data() {
        let req = [0u8; MAP_LEN];
        let mut req = req;
        req[0] = 2;
        req[1] = 1;
        let ext = any_external("198.51.100.10".parse().unwrap());
        let Parsed::Map(r) = parse(&response(&req, 2, 30, 5, ext)).unwrap() else {
            panic!()
        };
        assert_eq!(r.result, ResultCode::NOT_AUTHORIZED);
        assert_eq!(r.result.to_string(), "NOT_AUTHORIZED (2)");
        // Header only: an error may come without the MAP data...
        let short = &response(&req, 3, 0, 5, ext)[..24];
        let Parsed::Map(r) = parse(short).unwrap() else {
            panic!()
        };
        assert_eq!((r.result.name(), r.map), ("MALFORMED_REQUEST", None));
        // ...a success may not.
        let mut ok = response(&req, 0, 0, 5, ext);
        ok.truncate(24);
        assert_eq!(parse(&ok), Err(ParseError::Length(24)));
    }

    #[test]
    fn a_nat_pmp_server_is_recognised() {
        // RFC 6886 §3.5: version 0, opcode 128 + ours, result 1.
        assert_eq!(parse(&[0, 129, 0, 1, 0, 0, 0, 9]), Ok(Parsed::NatPmpOnly));
    }

    #[test]
    fn junk_is_refused() {
        assert_eq!(parse(&[]), Err(ParseError::Length(0)));
        assert_eq!(parse(&[2; 23]), Err(ParseError::Length(23)));
        assert_eq!(parse(&[2; 26]), Err(ParseError::Length(26)));
        assert_eq!(parse(&[2; 1104]), Err(ParseError::Length(1104)));
        // Our own request reflected back.
        let mut req = [0u8; MAP_LEN];
        req[0] = 2;
        req[1] = 1;
        assert_eq!(parse(&req), Err(ParseError::NotMapResponse));
        // A PEER response (opcode 2).
        req[1] = 0x82;
        assert_eq!(parse(&req), Err(ParseError::NotMapResponse));
    }
}
