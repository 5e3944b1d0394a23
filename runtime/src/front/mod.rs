//! What happens to a TCP/TLS connection before the protocol sees it: whose it is (PROXY
//! protocol v2 from trusted front proxies, [`proxy`]) and, on a TLS port shared with a web
//! site, whether it is TURN at all ([`share`]). [`FrontDoor`] is the listeners' settings for
//! both, built from the `Common` config keys.

pub mod proxy;
pub mod rewind;
pub mod share;

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use self::proxy::{looks_like_header, read_header, ProxyError};
use self::rewind::Rewind;
use crate::config::Common;

/// ALPN protocol ID of STUN/TURN over TLS (RFC 7443 §4.1: "stun.turn").
pub const TURN_ALPN: &[u8] = b"stun.turn";

/// The listeners' front-door settings.
#[derive(Debug, Clone, Default)]
pub struct FrontDoor {
    /// Front proxies (TCP load balancers) whose connections start with a PROXY protocol v2
    /// header. Empty: no header is read from anyone.
    pub proxies: Vec<IpNet>,
    /// The TLS listeners share their port with a web site.
    pub share: Option<share::WebShare>,
}

impl FrontDoor {
    /// From the shared config keys (already validated).
    pub fn from_config(c: &Common) -> FrontDoor {
        let share =
            (c.web_backend.is_some() || c.passthrough_backend.is_some()).then(|| share::WebShare {
                backend: c.web_backend,
                passthrough: c.passthrough_backend.map(|backend| share::Passthrough {
                    backend,
                    names: c
                        .passthrough_server_name
                        .iter()
                        .map(|n| share::NamePattern::new(n))
                        .collect(),
                }),
                proxy_header: c.backend_proxy_protocol,
                turn_names: c
                    .turn_server_name
                    .iter()
                    .map(|n| share::NamePattern::new(n))
                    .collect(),
                web_alpn: c.web_alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
            });
        FrontDoor {
            proxies: c.proxy_protocol_from.clone(),
            share,
        }
    }

    /// Whether connections from `peer` must carry a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        // A dual-stack listener sees IPv4 proxies as IPv4-mapped IPv6 addresses.
        let ip = peer.to_canonical();
        self.proxies.iter().any(|n| n.contains(&ip))
    }

    /// Learns whose connection `stream` (accepted from `peer`) is: from a trusted proxy the
    /// PROXY v2 header is read and required; from anyone else, when proxies are configured,
    /// the first bytes are checked and a header (either version) is refused. Returns the
    /// stream (with any bytes read for the check given back) and the client's address.
    /// Bounded by `deadline`.
    pub async fn admit(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<(Rewind<TcpStream>, SocketAddr), ProxyError> {
        if self.proxies.is_empty() {
            return Ok((Rewind::new(Vec::new(), stream), peer));
        }
        if self.trusts(peer.ip()) {
            let limit = deadline.saturating_duration_since(Instant::now());
            let header = read_header(&mut stream, limit).await?;
            return Ok((Rewind::new(Vec::new(), stream), header.client(peer)));
        }
        // At most 12 bytes (the v2 signature) decide; a client that sends nothing in time is
        // left to the protocol's own timers.
        let mut start = Vec::with_capacity(proxy::SIGNATURE.len());
        let mut tmp = [0u8; proxy::SIGNATURE.len()];
        while looks_like_header(&start).is_none() {
            let want = proxy::SIGNATURE.len() - start.len();
            match tokio::time::timeout_at(deadline, stream.read(&mut tmp[..want])).await {
                Ok(Ok(n)) if n > 0 => start.extend_from_slice(&tmp[..n]),
                _ => break,
            }
        }
        if looks_like_header(&start) == Some(true) {
            return Err(ProxyError::Untrusted);
        }
        Ok((Rewind::new(start, stream), peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn admit_one(
        front: &FrontDoor,
        send: &[u8],
    ) -> Result<(Vec<u8>, SocketAddr), ProxyError> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        c.write_all(send).await.unwrap();
        c.shutdown().await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut s, client) = front.admit(s, peer, deadline).await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        Ok((rest, client))
    }

    #[tokio::test]
    async fn trusted_proxies_must_send_a_header_and_others_must_not() {
        let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let header = proxy::encode(client, "198.51.100.1:443".parse().unwrap());
        let trusting = FrontDoor {
            proxies: vec!["127.0.0.0/8".parse().unwrap()],
            share: None,
        };
        let mut with_header = header.clone();
        with_header.extend_from_slice(b"turn bytes");
        assert_eq!(
            admit_one(&trusting, &with_header).await,
            Ok((b"turn bytes".to_vec(), client))
        );
        assert_eq!(
            admit_one(&trusting, b"\x00\x01\x00\x00 no header").await,
            Err(ProxyError::Missing)
        );
        // From an address outside the list: no header is believed; other bytes pass whole.
        let elsewhere = FrontDoor {
            proxies: vec!["192.0.2.0/24".parse().unwrap()],
            share: None,
        };
        assert_eq!(
            admit_one(&elsewhere, &with_header).await,
            Err(ProxyError::Untrusted)
        );
        assert_eq!(
            admit_one(&elsewhere, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await,
            Err(ProxyError::Untrusted)
        );
        let (rest, from) = admit_one(&elsewhere, b"\x00\x01\x00\x00 STUN")
            .await
            .unwrap();
        assert_eq!(rest, b"\x00\x01\x00\x00 STUN");
        assert_eq!(from.ip(), IpAddr::from([127, 0, 0, 1]));
        let (rest, _) = admit_one(&elsewhere, b"\r\n").await.unwrap();
        assert_eq!(rest, b"\r\n");
        // No proxies configured: nothing is read or checked.
        let (rest, _) = admit_one(&FrontDoor::default(), &header).await.unwrap();
        assert_eq!(rest, header);
        assert!(trusting.trusts("::ffff:127.0.0.1".parse().unwrap()));
    }
}
