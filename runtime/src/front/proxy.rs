//! PROXY protocol version 2 (HAProxy's "PROXY protocol" spec, §2.2): the binary header a
//! TCP load balancer puts before a connection's bytes to say whose connection it is.
//!
//! A listener trusts it only from the front proxies it is configured with: from them the
//! header is required (without it any client that reaches the port directly would be taken
//! for whoever it claims to be, or a proxy's own address would be policed), and from anyone
//! else a header is refused, since anyone can write one. The text form (version 1) is never
//! accepted: [`looks_like_header`] spots it only to refuse it clearly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every version 2 header starts with (§2.2).
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// How a version 1 (text) header starts (§2.1).
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest address block plus TLVs accepted. §2.2 allows 65535 bytes, but addresses take at
/// most 216 and what real proxies add (ALPN, authority, SSL, unique ID) stays far below
/// this; a proxy sending more is misconfigured, and a bound keeps a slot from reading forever.
pub const MAX_BODY: usize = 2048;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// A trusted proxy's connection did not start with the version 2 signature.
    #[error("no PROXY protocol v2 header (the connection must start with one from a trusted front proxy)")]
    Missing,
    /// Version or command nibble not 2 / LOCAL or PROXY.
    #[error("unsupported PROXY header version/command byte {0:#04x} (expected 0x20 LOCAL or 0x21 PROXY)")]
    Version(u8),
    /// A PROXY command for something other than TCP over IPv4 or IPv6.
    #[error("PROXY header for family/protocol byte {0:#04x}: only TCP over IPv4 (0x11) or IPv6 (0x21) is accepted on a stream listener")]
    Family(u8),
    /// The length field is shorter than the addresses of its family, or over [`MAX_BODY`].
    #[error("PROXY header length {0} is invalid for its address family or over {MAX_BODY}")]
    Length(usize),
    /// The connection ended or failed inside the header.
    #[error("connection ended inside the PROXY header")]
    Truncated,
    /// The header did not arrive in time.
    #[error("PROXY header not received within {0:?}")]
    Timeout(Duration),
    /// A connection from an address not in the trusted list starts with a PROXY header.
    #[error("PROXY header from an address that is not a trusted front proxy")]
    Untrusted,
}

/// What a version 2 header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// LOCAL: the proxy's own connection (a health check): use the real addresses (§2.2).
    Local,
    /// PROXY: the client's address and the address it connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client reached (the proxy's listener).
        destination: SocketAddr,
    },
}

impl ProxyHeader {
    /// The client's address: the header's source, or `peer` (the proxy) for LOCAL.
    pub fn client(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Local => peer,
            ProxyHeader::Proxied { source, .. } => *source,
        }
    }
}

/// Parses the 16-byte fixed part: the signature, version/command and family, and the
/// length of what follows. Returns (command is PROXY, family byte, length).
fn parse_fixed(head: &[u8; 16]) -> Result<(bool, u8, usize), ProxyError> {
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let proxy = match head[12] {
        0x20 => false,
        0x21 => true,
        b => return Err(ProxyError::Version(b)),
    };
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_BODY {
        return Err(ProxyError::Length(len));
    }
    Ok((proxy, head[13], len))
}

/// Parses the address block after the fixed part. TLVs after the addresses are ignored:
/// none changes whose connection it is.
fn parse_body(proxy: bool, family: u8, body: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if !proxy {
        // §2.2: with LOCAL the receiver must ignore the address information.
        return Ok(ProxyHeader::Local);
    }
    match family {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 => {
            let a = body.get(..12).ok_or(ProxyError::Length(body.len()))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let a = body.get(..36).ok_or(ProxyError::Length(body.len()))?;
            let ip = |o: usize| {
                let b: [u8; 16] = a[o..o + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        f => Err(ProxyError::Family(f)),
    }
}

/// Parses a whole header from `buf`: the header and its length, or `Ok(None)` when `buf`
/// holds only the start of a valid one.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(head) = buf.get(..16) else {
        let n = buf.len().min(12);
        return if buf[..n] == SIGNATURE[..n] {
            Ok(None)
        } else {
            Err(ProxyError::Missing)
        };
    };
    let (proxy, family, len) = parse_fixed(head.try_into().expect("16 bytes"))?;
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    Ok(Some((parse_body(proxy, family, body)?, 16 + len)))
}

/// Reads exactly one version 2 header from `r` (nothing after it: the length field says
/// where it ends), within `limit`.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<ProxyHeader, ProxyError> {
    let read = async {
        // Byte by byte as they come, so what is plainly no header is refused at once (not
        // after the deadline, not as "truncated").
        let mut head = [0u8; 16];
        let mut have = 0;
        while have < head.len() {
            match r.read(&mut head[have..]).await {
                Ok(0) | Err(_) if have == 0 => return Err(ProxyError::Truncated),
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
            let n = have.min(SIGNATURE.len());
            if head[..n] != SIGNATURE[..n] {
                return Err(ProxyError::Missing);
            }
        }
        if have < head.len() {
            return Err(ProxyError::Truncated);
        }
        let (proxy, family, len) = parse_fixed(&head)?;
        let mut body = [0u8; MAX_BODY];
        r.read_exact(&mut body[..len])
            .await
            .map_err(|_| ProxyError::Truncated)?;
        parse_body(proxy, family, &body[..len])
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(ProxyError::Timeout(limit)))
}

/// Whether `start` (the first bytes of a connection) is, or may still become, a PROXY
/// header of either version: `Some(true)` it is one, `Some(false)` it is not, `None` more
/// bytes are needed to tell.
pub fn looks_like_header(start: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for sig in [&SIGNATURE[..], V1_PREFIX] {
        let n = start.len().min(sig.len());
        if start[..n] == sig[..n] {
            if n == sig.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// Writes a version 2 PROXY header for a TCP connection from `source` to `destination`
/// (both of one family; a mixed pair is written as IPv6 with IPv4-mapped addresses).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What haproxy 2.6 `send-proxy-v2` sent for 127.0.0.1:37948 -> 127.0.0.1:18443.
    const HAPROXY_V4: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00,
        0x0c, 0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0x94, 0x3c, 0x48, 0x0b,
    ];

    #[test]
    fn parses_what_haproxy_sends_and_what_encode_writes() {
        let src: SocketAddr = "127.0.0.1:37948".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:18443".parse().unwrap();
        let want = ProxyHeader::Proxied {
            source: src,
            destination: dst,
        };
        assert_eq!(parse(&HAPROXY_V4), Ok(Some((want, 28))));
        assert_eq!(encode(src, dst), HAPROXY_V4);
        let (s6, d6): (SocketAddr, SocketAddr) = (
            "[2001:db8::1]:5000".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
        );
        let h = encode(s6, d6);
        assert_eq!(h.len(), 52);
        assert_eq!(
            parse(&h),
            Ok(Some((
                ProxyHeader::Proxied {
                    source: s6,
                    destination: d6
                },
                52
            )))
        );
        // TLVs after the addresses are skipped, and bytes after the header are not ours.
        let mut tlv = HAPROXY_V4.to_vec();
        tlv[15] = 12 + 7;
        tlv.extend_from_slice(&[0x01, 0x00, 0x04, b'h', b't', b't', b'p', 0xAA]);
        assert_eq!(parse(&tlv), Ok(Some((want, 35))));
        // LOCAL (a health check) carries no client.
        let mut local = HAPROXY_V4;
        local[12] = 0x20;
        let (h, _) = parse(&local).unwrap().unwrap();
        assert_eq!(h.client(dst), dst);
    }

    #[test]
    fn refuses_what_is_not_a_valid_tcp_header() {
        assert_eq!(parse(&HAPROXY_V4[..10]), Ok(None));
        assert_eq!(parse(&HAPROXY_V4[..20]), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(ProxyError::Missing));
        let with = |i: usize, b: u8| {
            let mut h = HAPROXY_V4;
            h[i] = b;
            parse(&h)
        };
        assert_eq!(with(12, 0x11), Err(ProxyError::Version(0x11)));
        assert_eq!(with(13, 0x12), Err(ProxyError::Family(0x12)));
        assert_eq!(with(13, 0x31), Err(ProxyError::Family(0x31)));
        // Shorter than an IPv4 address block.
        assert_eq!(with(15, 4), Err(ProxyError::Length(4)));
        // IPv6 family with an IPv4-sized block.
        assert_eq!(with(13, 0x21), Err(ProxyError::Length(12)));
        let mut long = HAPROXY_V4;
        long[14] = 0x10;
        assert_eq!(parse(&long), Err(ProxyError::Length(0x100c)));
    }

    #[test]
    fn either_version_is_recognized_from_its_first_bytes() {
        assert_eq!(looks_like_header(b""), None);
        assert_eq!(looks_like_header(&SIGNATURE[..5]), None);
        assert_eq!(looks_like_header(&SIGNATURE), Some(true));
        assert_eq!(looks_like_header(b"PROX"), None);
        assert_eq!(looks_like_header(b"PROXY TCP4 "), Some(true));
        assert_eq!(looks_like_header(b"POST /"), Some(false));
        assert_eq!(looks_like_header(&[0x00, 0x01, 0x00, 0x00]), Some(false));
        assert_eq!(looks_like_header(&[0x16, 0x03, 0x01]), Some(false));
    }

    #[tokio::test]
    async fn reads_exactly_the_header_within_the_limit() {
        let mut bytes = HAPROXY_V4.to_vec();
        bytes.extend_from_slice(b"after");
        let mut r = &bytes[..];
        let h = read_header(&mut r, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(h, ProxyHeader::Proxied { .. }));
        assert_eq!(r, b"after");
        let mut short = &HAPROXY_V4[..20];
        assert_eq!(
            read_header(&mut short, Duration::from_secs(1)).await,
            Err(ProxyError::Truncated)
        );
        let (_keep, mut silent) = tokio::io::duplex(64);
        let limit = Duration::from_millis(50);
        assert_eq!(
            read_header(&mut silent, limit).await,
            Err(ProxyError::Timeout(limit))
        );
    }
}
