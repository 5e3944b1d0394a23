//! NAT-PMP (RFC 6886) requests and responses: the wire format only.
//!
//! Two requests matter: the external address (opcode 0, §3.2) and a UDP
//! mapping (opcode 1, §3.3). A response's opcode is the request's plus 128;
//! every response carries a result code and the server's epoch (§3.2).

use std::fmt;
use std::net::Ipv4Addr;

/// The NAT-PMP version (RFC 6886 §3.2).
pub const VERSION: u8 = 0;
/// Opcode: what is the external address (RFC 6886 §3.2).
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode: map a UDP port (RFC 6886 §3.3).
pub const OP_MAP_UDP: u8 = 1;

/// A NAT-PMP result code (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u16);

impl ResultCode {
    /// Success.
    pub const SUCCESS: ResultCode = ResultCode(0);

    /// The words RFC 6886 §3.5 uses.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "success",
            1 => "unsupported version",
            2 => "not authorized/refused",
            3 => "network failure",
            4 => "out of resources",
            5 => "unsupported opcode",
            _ => "unknown result",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (result {})", self.name(), self.0)
    }
}

/// The external address request: two bytes (RFC 6886 §3.2).
pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// A UDP mapping request (RFC 6886 §3.3): `lifetime` 0 with suggested
/// port 0 deletes the mapping of `internal_port` (§3.4).
pub fn map_request(internal_port: u16, suggested_port: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = OP_MAP_UDP;
    // b[2..4] reserved.
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&suggested_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// A response from the gateway's NAT-PMP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// To an external address request.
    ExternalAddress {
        /// The result.
        result: ResultCode,
        /// Seconds since the server's epoch (§3.6).
        epoch: u32,
        /// The address (meaningful on success).
        address: Ipv4Addr,
    },
    /// To a UDP mapping request.
    Map {
        /// The result.
        result: ResultCode,
        /// Seconds since the server's epoch.
        epoch: u32,
        /// The internal port, echoed.
        internal_port: u16,
        /// The external port assigned.
        external_port: u16,
        /// The lifetime granted, seconds.
        lifetime: u32,
    },
    /// An error answer too short for its opcode's fields (some servers send
    /// only the 8-byte header with an error), or to another opcode.
    Error {
        /// The opcode answered (without the 128).
        opcode: u8,
        /// The result.
        result: ResultCode,
        /// Seconds since the server's epoch.
        epoch: u32,
    },
}

/// Why a datagram is not a NAT-PMP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Another version (a PCP answer, for instance).
    #[error("not NAT-PMP (version {0})")]
    Version(u8),
    /// Not a response, or too short for one.
    #[error("not a NAT-PMP response")]
    NotResponse,
}

/// Parse a datagram from the gateway's NAT-PMP port.
pub fn parse(b: &[u8]) -> Result<Response, ParseError> {
    if b.len() < 8 {
        return Err(ParseError::NotResponse);
    }
    if b[0] != VERSION {
        return Err(ParseError::Version(b[0]));
    }
    if b[1] < 128 {
        return Err(ParseError::NotResponse);
    }
    let opcode = b[1] - 128;
    let result = ResultCode(u16::from_be_bytes([b[2], b[3]]));
    let epoch = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Ok(match opcode {
        OP_EXTERNAL_ADDRESS if b.len() >= 12 => Response::ExternalAddress {
            result,
            epoch,
            address: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
        },
        OP_MAP_UDP if b.len() >= 16 => Response::Map {
            result,
            epoch,
            internal_port: u16::from_be_bytes([b[8], b[9]]),
            external_port: u16::from_be_bytes([b[10], b[11]]),
            lifetime: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        },
        _ if result != ResultCode::SUCCESS => Response::Error {
            opcode,
            result,
            epoch,
        },
        _ => return Err(ParseError::NotResponse),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_section_3() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_request(40001, 40001, 7200),
            [0, 1, 0, 0, 0x9c, 0x41, 0x9c, 0x41, 0, 0, 0x1c, 0x20]
        );
        // §3.4: deletion is lifetime 0 and suggested port 0.
        assert_eq!(
            map_request(40001, 0, 0),
            [0, 1, 0, 0, 0x9c, 0x41, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn responses_parse() {
        let ext = [0, 128, 0, 0, 0, 0, 0, 42, 203, 0, 113, 1];
        assert_eq!(
            parse(&ext),
            Ok(Response::ExternalAddress {
                result: ResultCode::SUCCESS,
                epoch: 42,
                address: Ipv4Addr::new(203, 0, 113, 1)
            })
        );
        let map = [
            0, 129, 0, 0, 0, 0, 0, 43, 0x9c, 0x41, 0x9c, 0x42, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(
            parse(&map),
            Ok(Response::Map {
                result: ResultCode::SUCCESS,
                epoch: 43,
                internal_port: 40001,
                external_port: 40002,
                lifetime: 3600
            })
        );
    }

    #[test]
    fn result_codes_and_short_errors() {
        let refused = [0, 129, 0, 2, 0, 0, 0, 1, 0x9c, 0x41, 0, 0, 0, 0, 0, 0];
        let Ok(Response::Map { result, .. }) = parse(&refused) else {
            panic!()
        };
        assert_eq!(result.to_string(), "not authorized/refused (result 2)");
        for (code, name) in [
            (1, "unsupported version"),
            (3, "network failure"),
            (4, "out of resources"),
            (5, "unsupported opcode"),
            (77, "unknown result"),
        ] {
            assert_eq!(ResultCode(code).name(), name);
        }
        // Header only, with an error.
        assert_eq!(
            parse(&[0, 129, 0, 4, 0, 0, 0, 1]),
            Ok(Response::Error {
                opcode: 1,
                result: ResultCode(4),
                epoch: 1
            })
        );
        // Header only with success: the fields are missing.
        assert_eq!(
            parse(&[0, 129, 0, 0, 0, 0, 0, 1]),
            Err(ParseError::NotResponse)
        );
    }

    #[test]
    fn junk_is_refused() {
        assert_eq!(parse(&[0, 128, 0]), Err(ParseError::NotResponse));
        assert_eq!(parse(&[2; 60]), Err(ParseError::Version(2)));
        // Our own request reflected back.
        assert_eq!(parse(&map_request(1, 1, 1)), Err(ParseError::NotResponse));
    }
}
