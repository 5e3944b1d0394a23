//! SSDP discovery of an Internet Gateway Device (UPnP Device Architecture
//! 1.1 §1.3): an M-SEARCH request over UDP, answered with the URL of the
//! device's description (`LOCATION`).
//!
//! natkit sends the search to the gateway's own port 1900 (a unicast
//! M-SEARCH, UDA 1.1 §1.3.2, answered at once) and, from a non-loopback
//! address, to the multicast group (for devices that only listen there),
//! and accepts answers from the gateway only: an IGD elsewhere on the LAN
//! does not control the NAT our traffic crosses.

use std::net::{Ipv4Addr, SocketAddr};

/// The SSDP port (UDA 1.1 §1.3.2).
pub const PORT: u16 = 1900;
/// The SSDP multicast group of IPv4 (UDA 1.1 §1.3.2).
pub const MULTICAST_V4: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(239, 255, 255, 250),
    PORT,
));
/// What natkit searches for: an IGD of version 1 or later (a device
/// answers searches for lower versions of its type, UDA 1.1 §1.3.2).
pub const SEARCH_TARGET: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";

/// An M-SEARCH request to `to` (the multicast group or a device's own
/// address): `MX` (the most seconds a device may wait before answering a
/// multicast search) is 1, the least UDA 1.1 allows.
pub fn search_request(to: SocketAddr) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {to}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {SEARCH_TARGET}\r\n\r\n"
    )
    .into_bytes()
}

/// The description URL in a search answer (`HTTP/1.1 200 OK` with a
/// `LOCATION` header), or `None` for anything else (NOTIFY, errors,
/// junk).
pub fn location(answer: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut lines = text.lines();
    let status = lines.next()?;
    let mut parts = status.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") || parts.next()? != "200" {
        return None;
    }
    lines.find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_is_an_m_search_for_an_igd() {
        let r = String::from_utf8(search_request(MULTICAST_V4)).unwrap();
        assert_eq!(
            r,
            "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        );
    }

    #[test]
    fn answers_give_the_location() {
        // miniupnpd 2.3's answer.
        let a = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:6e61746b-6974-6c61-6200-000000000001::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\nLOCATION: http://198.51.100.1:5000/rootDesc.xml\r\nOPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\r\n";
        assert_eq!(
            location(a).as_deref(),
            Some("http://198.51.100.1:5000/rootDesc.xml")
        );
        // Any case, bare LF.
        let a = b"HTTP/1.1 200 OK\nlocation:http://192.0.2.1/d.xml\n\n";
        assert_eq!(location(a).as_deref(), Some("http://192.0.2.1/d.xml"));
    }

    #[test]
    fn other_datagrams_give_nothing() {
        for d in [
            &b"NOTIFY * HTTP/1.1\r\nLOCATION: http://192.0.2.1/d.xml\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\nLOCATION: http://192.0.2.1/d.xml\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nLOCATION:   \r\n\r\n",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(location(d), None, "{:?}", String::from_utf8_lossy(d));
        }
    }
}
