//! Zero-allocation parsing of the TURN attributes of a request or
//! indication (RFC 8656 §18, RFC 8489 §14), for the relay's control path.

use std::net::SocketAddr;

use crate::integrity::IntegrityKind;
use crate::raw::{self, attr, Attributes, Header, RawError};

/// RFC 8656 §18.3: the REQUESTED-TRANSPORT protocol number for UDP.
pub const TRANSPORT_UDP: u8 = 17;
/// RFC 6062 §6.1: REQUESTED-TRANSPORT for a TCP allocation.
pub const TRANSPORT_TCP: u8 = 6;
/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY value for IPv4.
pub const FAMILY_IPV4: u8 = 0x01;
/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY value for IPv6.
pub const FAMILY_IPV6: u8 = 0x02;

/// The attributes of one TURN message that the relay acts on.
#[derive(Debug, Clone, Copy)]
pub struct TurnRequest<'a> {
    /// The checked header.
    pub header: Header,
    pub username: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub nonce: Option<&'a str>,
    /// Which integrity attribute the message carries, if any (not yet
    /// verified).
    pub integrity: Option<IntegrityKind>,
    /// PASSWORD-ALGORITHM's algorithm number (RFC 8489 §14.12).
    pub password_algorithm: Option<u16>,
    /// The raw value of PASSWORD-ALGORITHMS, if present (RFC 8489 §14.11).
    pub password_algorithms: Option<&'a [u8]>,
    /// REQUESTED-TRANSPORT protocol number.
    pub requested_transport: Option<u8>,
    /// LIFETIME in seconds.
    pub lifetime: Option<u32>,
    pub dont_fragment: bool,
    /// EVEN-PORT, with its R (reserve next port) bit.
    pub even_port: Option<bool>,
    pub reservation_token: Option<u64>,
    pub requested_family: Option<u8>,
    pub additional_family: Option<u8>,
    /// The first XOR-PEER-ADDRESS, decoded ([`TurnRequest::peers`] has
    /// them all).
    pub peer: Option<SocketAddr>,
    /// How many XOR-PEER-ADDRESS attributes there are (RFC 8656 §9.1: a
    /// CreatePermission may carry several; no fixed cap here, the relay
    /// compares with its permission quota).
    pub peer_count: usize,
    /// The message, to decode the other peers from without buffering them.
    msg: &'a [u8],
    pub channel: Option<u16>,
    /// CONNECTION-ID (RFC 6062 §6.2.1).
    pub connection_id: Option<u32>,
    /// DATA attribute value, borrowed from the message.
    pub data: Option<&'a [u8]>,
    /// Unknown comprehension-required attributes (answer 420).
    pub unknown: raw::Unknown,
    /// An understood attribute with a malformed value (answer 400).
    pub bad_attribute: Option<u16>,
}

impl<'a> TurnRequest<'a> {
    /// The decoded peer addresses, in message order (decoded again from
    /// the message: [`parse`] checked each one, and keeps no list).
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let tid = self.header.transaction_id;
        // The attributes that count, as parse saw them (RFC 8489 §14.5).
        Attributes::new(self.msg, &self.header)
            .counted()
            .map_while(Result::ok)
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS)
            .filter_map(move |a| raw::decode_xor_address(a.value, &tid))
    }

    /// The unknown comprehension-required attributes.
    pub fn unknown(&self) -> &[u16] {
        self.unknown.as_slice()
    }
}

/// Parse a STUN message (already known to start with a valid header) for the
/// attributes the relay needs. Of a repeated attribute the first counts
/// (RFC 8489 §14; XOR-PEER-ADDRESS may repeat, RFC 8656 §10); attributes
/// after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and
/// FINGERPRINT are ignored (RFC 8489 §14.5).
pub fn parse(msg: &[u8]) -> Result<TurnRequest<'_>, RawError> {
    let header = raw::parse_datagram(msg)?;
    let tid = header.transaction_id;
    let mut r = TurnRequest {
        header,
        username: None,
        realm: None,
        nonce: None,
        integrity: None,
        password_algorithm: None,
        password_algorithms: None,
        requested_transport: None,
        lifetime: None,
        dont_fragment: false,
        even_port: None,
        reservation_token: None,
        requested_family: None,
        additional_family: None,
        peer: None,
        peer_count: 0,
        msg,
        channel: None,
        connection_id: None,
        data: None,
        unknown: raw::Unknown::default(),
        bad_attribute: None,
    };
    let bad = |r: &mut TurnRequest, t: u16| {
        r.bad_attribute.get_or_insert(t);
    };
    for a in Attributes::new(msg, &header).counted() {
        let a = a?;
        let v = a.value;
        // Each decoded value goes to its field unless an earlier one did.
        fn first<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
            match v {
                Some(v) => {
                    slot.get_or_insert(v);
                    true
                }
                None => false,
            }
        }
        let understood = match a.typ {
            attr::USERNAME => first(&mut r.username, raw::decode_text(v, raw::MAX_USERNAME_LEN)),
            attr::REALM => first(&mut r.realm, raw::decode_text(v, raw::MAX_TEXT_LEN)),
            attr::NONCE => first(&mut r.nonce, raw::decode_text(v, raw::MAX_TEXT_LEN)),
            // With both, MESSAGE-INTEGRITY-SHA256 is the one checked
            // (RFC 8489 §9.2.4).
            attr::MESSAGE_INTEGRITY => first(&mut r.integrity, Some(IntegrityKind::Sha1)),
            attr::MESSAGE_INTEGRITY_SHA256 => {
                r.integrity = Some(IntegrityKind::Sha256);
                true
            }
            attr::FINGERPRINT | attr::SOFTWARE | attr::ICMP => true,
            attr::PASSWORD_ALGORITHM => {
                first(&mut r.password_algorithm, raw::decode_password_algorithm(v))
            }
            attr::PASSWORD_ALGORITHMS => first(&mut r.password_algorithms, Some(v)),
            attr::REQUESTED_TRANSPORT => {
                first(&mut r.requested_transport, raw::decode_leading_byte(v))
            }
            attr::LIFETIME => first(&mut r.lifetime, raw::decode_u32(v)),
            attr::DONT_FRAGMENT => {
                r.dont_fragment = true;
                true
            }
            // RFC 8656 §18.5: the R bit is the top bit of the one byte.
            attr::EVEN_PORT => first(&mut r.even_port, v.first().map(|b| b & 0x80 != 0)),
            attr::RESERVATION_TOKEN => first(&mut r.reservation_token, raw::decode_u64(v)),
            attr::REQUESTED_ADDRESS_FAMILY => {
                first(&mut r.requested_family, raw::decode_leading_byte(v))
            }
            attr::ADDITIONAL_ADDRESS_FAMILY => {
                first(&mut r.additional_family, raw::decode_leading_byte(v))
            }
            attr::XOR_PEER_ADDRESS => match raw::decode_xor_address(v, &tid) {
                Some(p) => {
                    r.peer.get_or_insert(p);
                    r.peer_count += 1;
                    true
                }
                None => false,
            },
            attr::CHANNEL_NUMBER => first(&mut r.channel, raw::decode_channel_number(v)),
            attr::DATA => first(&mut r.data, Some(v)),
            attr::CONNECTION_ID => first(&mut r.connection_id, raw::decode_u32(v)),
            t => {
                r.unknown.note(t);
                true
            }
        };
        if !understood {
            bad(&mut r, a.typ);
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{method, Class};
    use crate::writer::Writer;

    #[test]
    fn parses_allocate_and_ignores_after_integrity() {
        let mut buf = [0u8; 256];
        let tid = [1u8; 12];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &tid).unwrap();
        w.u32(attr::REQUESTED_TRANSPORT, (TRANSPORT_UDP as u32) << 24)
            .unwrap();
        w.u32(attr::LIFETIME, 1200).unwrap();
        w.bytes(attr::EVEN_PORT, &[0x80]).unwrap();
        w.bytes(attr::USERNAME, b"alice").unwrap();
        w.xor_address(attr::XOR_PEER_ADDRESS, "192.0.2.4:5".parse().unwrap())
            .unwrap();
        w.message_integrity(b"k").unwrap();
        w.u32(attr::LIFETIME, 0).unwrap(); // after MI: must be ignored
        let n = w.fingerprint().unwrap();
        let r = parse(&buf[..n]).unwrap();
        assert_eq!(r.requested_transport, Some(TRANSPORT_UDP));
        assert_eq!(r.lifetime, Some(1200));
        assert_eq!(r.even_port, Some(true));
        assert_eq!(r.username, Some("alice"));
        assert_eq!(r.integrity, Some(IntegrityKind::Sha1));
        assert_eq!(
            r.peers().collect::<Vec<_>>(),
            vec!["192.0.2.4:5".parse().unwrap()]
        );
        assert!(r.bad_attribute.is_none() && r.unknown().is_empty());
    }

    // Regression (found by the stun-rs differential oracle): the last of a
    // repeated attribute won; RFC 8489 §14 makes the first count.
    #[test]
    fn first_occurrence_counts() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[3; 12]).unwrap();
        w.u32(attr::REQUESTED_TRANSPORT, (TRANSPORT_UDP as u32) << 24)
            .unwrap();
        w.u32(attr::REQUESTED_TRANSPORT, 6 << 24).unwrap();
        w.u32(attr::LIFETIME, 600).unwrap();
        w.u32(attr::LIFETIME, 0).unwrap();
        w.bytes(attr::DATA, b"first").unwrap();
        w.bytes(attr::DATA, b"second").unwrap();
        w.bytes(attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]).unwrap();
        w.bytes(attr::PASSWORD_ALGORITHM, &[0, 1, 0, 0]).unwrap();
        let n = w.finish();
        let r = parse(&buf[..n]).unwrap();
        assert_eq!(r.requested_transport, Some(TRANSPORT_UDP));
        assert_eq!(r.lifetime, Some(600));
        assert_eq!(r.data, Some(&b"first"[..]));
        assert_eq!(r.password_algorithm, Some(2));
        assert!(r.bad_attribute.is_none());
    }

    #[test]
    fn many_peers_are_counted_and_listed_in_order() {
        let mut buf = [0u8; 2048];
        let mut w = Writer::new(
            &mut buf,
            method::CREATE_PERMISSION,
            Class::Request,
            &[3; 12],
        )
        .unwrap();
        let peers: Vec<SocketAddr> = (0..100u16)
            .map(|i| SocketAddr::from(([192, 0, 2, (i % 250) as u8], 1000 + i)))
            .collect();
        for p in &peers {
            w.xor_address(attr::XOR_PEER_ADDRESS, *p).unwrap();
        }
        w.message_integrity(b"k").unwrap();
        // After MESSAGE-INTEGRITY: ignored.
        w.xor_address(attr::XOR_PEER_ADDRESS, "198.51.100.1:1".parse().unwrap())
            .unwrap();
        let n = w.finish();
        let r = parse(&buf[..n]).unwrap();
        assert_eq!(r.peer_count, 100);
        assert_eq!(r.peer, Some(peers[0]));
        assert_eq!(r.peers().collect::<Vec<_>>(), peers);
        assert!(r.bad_attribute.is_none());
    }

    #[test]
    fn malformed_values_are_flagged() {
        let mut buf = [0u8; 256];
        let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[2; 12]).unwrap();
        w.bytes(attr::LIFETIME, &[1, 2]).unwrap();
        w.u32(0x0033, 0).unwrap();
        let n = w.finish();
        let r = parse(&buf[..n]).unwrap();
        assert_eq!(r.bad_attribute, Some(attr::LIFETIME));
        assert_eq!(r.unknown(), &[0x0033]);

        // PASSWORD-ALGORITHM announcing parameters it does not carry, and a
        // USERNAME over RFC 5389's "less than 513 bytes".
        for (typ, value) in [
            (attr::PASSWORD_ALGORITHM, vec![0, 2, 0, 4]),
            (attr::USERNAME, vec![b'u'; 513]),
        ] {
            let mut buf = [0u8; 1024];
            let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[2; 12]).unwrap();
            w.bytes(typ, &value).unwrap();
            let n = w.finish();
            assert_eq!(parse(&buf[..n]).unwrap().bad_attribute, Some(typ));
        }
    }
}
