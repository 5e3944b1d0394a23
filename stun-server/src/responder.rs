//! The server's decision for each request, sans-IO: which socket answers,
//! to where, with which bytes. No I/O, no allocation, no locks; the UDP
//! workers and the TCP/TLS tasks call [`Responder::respond`] per message.

use std::net::SocketAddr;

use natkit_proto::binding::{self, ChangeRequest, RequestError, SuccessFields};
use natkit_proto::raw::{self, attr, Class};

/// Transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One local (address, port) the server answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The bound address.
    pub addr: SocketAddr,
    /// Position in the RFC 5780 square: (address index, port index), each 0
    /// for the primary and 1 for the alternate. `None` for plain endpoints.
    pub rfc5780: Option<(u8, u8)>,
}

/// What happened to a message, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Success response sent.
    Success,
    /// Error response sent with this code.
    Error(u16),
    /// A Binding indication (a keepalive): nothing to send (RFC 8489 §6.3.2).
    Indication,
    /// Dropped: not a well-formed STUN request.
    Malformed,
    /// Dropped: the FINGERPRINT did not match (RFC 8489 §7.3).
    BadFingerprint,
    /// Dropped: a response or other message a server does not answer.
    Ignored,
}

impl Outcome {
    /// Metric labels, in [`Outcome::index`] order.
    pub const LABELS: [&'static str; 8] = [
        "success",
        "error_400",
        "error_420",
        "error_other",
        "indication",
        "malformed",
        "bad_fingerprint",
        "ignored",
    ];

    /// Position in [`Outcome::LABELS`]; lets the hot path count into a
    /// plain array.
    pub fn index(self) -> usize {
        match self {
            Outcome::Success => 0,
            Outcome::Error(400) => 1,
            Outcome::Error(420) => 2,
            Outcome::Error(_) => 3,
            Outcome::Indication => 4,
            Outcome::Malformed => 5,
            Outcome::BadFingerprint => 6,
            Outcome::Ignored => 7,
        }
    }
}

/// A reply to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Index of the endpoint whose socket sends it.
    pub from: usize,
    /// Destination.
    pub to: SocketAddr,
    /// Bytes written at the start of the output buffer.
    pub len: usize,
}

/// Decides the answers. Built once at start-up, shared read-only.
#[derive(Debug, Clone)]
pub struct Responder {
    endpoints: Vec<Endpoint>,
    /// Endpoint index for each (address index, port index) of the RFC 5780
    /// square, when it is configured.
    square: Option<[[usize; 2]; 2]>,
}

/// Largest answer to an unpadded request: header, XOR-MAPPED-ADDRESS,
/// RESPONSE-ORIGIN and OTHER-ADDRESS for IPv6, FINGERPRINT. Answers to
/// requests with PADDING (RFC 5780 §7.6) are as long as the request plus this.
pub const MAX_REPLY_LEN: usize = 20 + 3 * 24 + 8;

impl Responder {
    /// The `local` index for listeners that are not endpoints of their own
    /// (TLS): answers are plain, never RFC 5780.
    pub const STREAM_ONLY: usize = usize::MAX;

    /// Build from the endpoints. Endpoints with `rfc5780` set must form the
    /// whole square (all four positions), or none may be set.
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Self, &'static str> {
        let mut square = [[usize::MAX; 2]; 2];
        let mut seen = 0;
        for (i, e) in endpoints.iter().enumerate() {
            if let Some((a, p)) = e.rfc5780 {
                let slot = square
                    .get_mut(a as usize)
                    .and_then(|r| r.get_mut(p as usize))
                    .ok_or("RFC 5780 position out of range")?;
                if *slot != usize::MAX {
                    return Err("RFC 5780 position used twice");
                }
                *slot = i;
                seen += 1;
            }
        }
        let square = match seen {
            0 => None,
            4 => Some(square),
            _ => return Err("RFC 5780 needs all four address/port combinations"),
        };
        Ok(Responder { endpoints, square })
    }

    /// The endpoints, in index order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Answer one message that arrived on endpoint `local` from `src`,
    /// writing any reply into `out` (at least [`MAX_REPLY_LEN`] bytes).
    pub fn respond(
        &self,
        transport: Transport,
        local: usize,
        src: SocketAddr,
        msg: &[u8],
        out: &mut [u8],
    ) -> (Outcome, Option<Reply>) {
        let req = match binding::parse_request(msg) {
            Ok(r) => r,
            Err(RequestError::Malformed(_)) => return (Outcome::Malformed, None),
            Err(RequestError::BadFingerprint) => return (Outcome::BadFingerprint, None),
            Err(RequestError::BadAttribute(_, tid)) => {
                return self.error(local, src, &tid, raw::method::BINDING, 400, &[], false, out)
            }
            Err(RequestError::NotBindingRequest(_)) => {
                let Ok(h) = raw::parse_datagram(msg) else {
                    return (Outcome::Malformed, None);
                };
                return match h.class() {
                    Class::Indication if h.method() == raw::method::BINDING => {
                        (Outcome::Indication, None)
                    }
                    // RFC 8489 §6.3.1: a request for a method the server does
                    // not know gets a 400.
                    Class::Request => {
                        let (tid, m) = (h.transaction_id, h.method());
                        self.error(local, src, &tid, m, 400, &[], false, out)
                    }
                    _ => (Outcome::Ignored, None),
                };
            }
        };
        let tid = req.transaction_id;
        let fp = req.fingerprint;
        if !req.unknown().is_empty() {
            return self.error(
                local,
                src,
                &tid,
                raw::method::BINDING,
                420,
                req.unknown(),
                fp,
                out,
            );
        }
        let position = self.endpoints.get(local).and_then(|e| e.rfc5780);
        let change = req.change.unwrap_or(ChangeRequest::NONE);
        let uses_rfc5780 = change.any() || req.response_port.is_some() || req.padding.is_some();
        let (Some(square), Some((a, p))) = (self.square, position) else {
            if uses_rfc5780 {
                // RFC 5780 §6.1: without an alternate address the server
                // does not support CHANGE-REQUEST (or RESPONSE-PORT): 420
                // listing the attribute.
                let which: &[u16] = if change.any() {
                    &[attr::CHANGE_REQUEST]
                } else if req.response_port.is_some() {
                    &[attr::RESPONSE_PORT]
                } else {
                    &[attr::PADDING]
                };
                return self.error(local, src, &tid, raw::method::BINDING, 420, which, fp, out);
            }
            return self.success(local, src, &tid, fp, out);
        };
        if uses_rfc5780 && transport != Transport::Udp {
            // RFC 5780 §6.1: CHANGE-REQUEST and RESPONSE-PORT only make sense
            // over UDP; a stream cannot be answered from another address.
            return self.error(local, src, &tid, raw::method::BINDING, 400, &[], fp, out);
        }
        let from_a = if change.ip { a ^ 1 } else { a };
        let from_p = if change.port { p ^ 1 } else { p };
        let from = square[from_a as usize][from_p as usize];
        // RFC 5780 §7.4: OTHER-ADDRESS is the address and port that differ in
        // both from the ones the request was received on.
        let other = self.endpoints[square[(a ^ 1) as usize][(p ^ 1) as usize]].addr;
        let to = match req.response_port {
            // RFC 5780 §7.5: answer to the source IP at this port.
            Some(port) => SocketAddr::new(src.ip(), port),
            None => src,
        };
        let f = SuccessFields {
            mapped: src,
            response_origin: Some(self.endpoints[from].addr),
            other_address: Some(other),
            padding: req.padding,
            fingerprint: fp,
        };
        match binding::write_success(out, &tid, &f) {
            Ok(len) => (Outcome::Success, Some(Reply { from, to, len })),
            Err(_) => (Outcome::Ignored, None),
        }
    }

    fn success(
        &self,
        local: usize,
        src: SocketAddr,
        tid: &[u8; 12],
        fingerprint: bool,
        out: &mut [u8],
    ) -> (Outcome, Option<Reply>) {
        let f = SuccessFields {
            mapped: src,
            response_origin: None,
            other_address: None,
            padding: None,
            fingerprint,
        };
        match binding::write_success(out, tid, &f) {
            Ok(len) => (
                Outcome::Success,
                Some(Reply {
                    from: local,
                    to: src,
                    len,
                }),
            ),
            Err(_) => (Outcome::Ignored, None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &self,
        local: usize,
        src: SocketAddr,
        tid: &[u8; 12],
        method: u16,
        code: u16,
        unknown: &[u16],
        fingerprint: bool,
        out: &mut [u8],
    ) -> (Outcome, Option<Reply>) {
        match binding::write_error(out, method, tid, code, unknown, fingerprint) {
            Ok(len) => (
                Outcome::Error(code),
                Some(Reply {
                    from: local,
                    to: src,
                    len,
                }),
            ),
            Err(_) => (Outcome::Ignored, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_proto::binding::{parse_response, write_request, RequestOptions};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn square() -> Responder {
        let mut e = Vec::new();
        for (i, ip) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
            for (j, port) in [3478, 3479].iter().enumerate() {
                e.push(Endpoint {
                    addr: a(&format!("{ip}:{port}")),
                    rfc5780: Some((i as u8, j as u8)),
                });
            }
        }
        e.push(Endpoint {
            addr: a("198.51.100.1:3478"),
            rfc5780: None,
        });
        Responder::new(e).unwrap()
    }

    fn ask(
        r: &Responder,
        t: Transport,
        local: usize,
        opts: RequestOptions,
    ) -> (Outcome, Option<Reply>, Option<binding::Response>) {
        let mut req = [0u8; 64];
        let n = write_request(&mut req, &[7; 12], &opts).unwrap();
        let mut out = [0u8; MAX_REPLY_LEN];
        let (o, reply) = r.respond(t, local, a("203.0.113.5:40000"), &req[..n], &mut out);
        let parsed = reply.map(|rep| parse_response(&out[..rep.len]).unwrap());
        (o, reply, parsed)
    }

    #[test]
    fn change_request_picks_the_right_socket_and_reports_addresses() {
        let r = square();
        let cases = [
            (ChangeRequest::NONE, 0, "192.0.2.1:3478"),
            (ChangeRequest::PORT, 1, "192.0.2.1:3479"),
            (
                ChangeRequest {
                    ip: true,
                    port: false,
                },
                2,
                "192.0.2.2:3478",
            ),
            (ChangeRequest::BOTH, 3, "192.0.2.2:3479"),
        ];
        for (change, from, origin) in cases {
            let opts = RequestOptions {
                change: Some(change),
                ..Default::default()
            };
            let (o, reply, resp) = ask(&r, Transport::Udp, 0, opts);
            let (reply, resp) = (reply.unwrap(), resp.unwrap());
            assert_eq!(o, Outcome::Success);
            assert_eq!(reply.from, from, "{change:?}");
            assert_eq!(reply.to, a("203.0.113.5:40000"));
            assert_eq!(resp.mapped, Some(a("203.0.113.5:40000")));
            assert_eq!(resp.response_origin, Some(a(origin)));
            assert_eq!(resp.other_address, Some(a("192.0.2.2:3479")));
        }
        // Received on the alternate/alternate endpoint: OTHER-ADDRESS is the primary.
        let (_, _, resp) = ask(&r, Transport::Udp, 3, RequestOptions::default());
        assert_eq!(resp.unwrap().other_address, Some(a("192.0.2.1:3478")));
    }

    #[test]
    fn response_port_redirects_to_the_source_ip() {
        let r = square();
        let opts = RequestOptions {
            response_port: Some(5000),
            ..Default::default()
        };
        let (_, reply, _) = ask(&r, Transport::Udp, 0, opts);
        assert_eq!(reply.unwrap().to, a("203.0.113.5:5000"));
    }

    #[test]
    fn without_rfc5780_change_request_gets_420() {
        let r = square();
        let opts = RequestOptions {
            change: Some(ChangeRequest::BOTH),
            ..Default::default()
        };
        let (o, reply, resp) = ask(&r, Transport::Udp, 4, opts);
        assert_eq!(o, Outcome::Error(420));
        assert_eq!(reply.unwrap().from, 4);
        assert_eq!(resp.unwrap().outcome, Err(420));
        // A plain Binding on the plain endpoint: no RFC 5780 attributes.
        let (o, _, resp) = ask(&r, Transport::Udp, 4, RequestOptions::default());
        let resp = resp.unwrap();
        assert_eq!(o, Outcome::Success);
        assert_eq!((resp.response_origin, resp.other_address), (None, None));
        // CHANGE-REQUEST with no flag set asks for nothing: answered.
        let opts = RequestOptions {
            change: Some(ChangeRequest::NONE),
            ..Default::default()
        };
        assert_eq!(ask(&r, Transport::Udp, 4, opts).0, Outcome::Success);
    }

    #[test]
    fn change_request_over_tcp_is_a_bad_request() {
        let r = square();
        let opts = RequestOptions {
            change: Some(ChangeRequest::PORT),
            ..Default::default()
        };
        let (o, reply, _) = ask(&r, Transport::Tcp, 0, opts);
        assert_eq!(o, Outcome::Error(400));
        assert_eq!(reply.unwrap().from, 0);
    }

    #[test]
    fn bad_input_is_dropped_or_answered_400() {
        let r = square();
        let mut out = [0u8; MAX_REPLY_LEN];
        let src = a("203.0.113.5:1");
        assert_eq!(
            r.respond(Transport::Udp, 0, src, b"garbage", &mut out),
            (Outcome::Malformed, None)
        );
        // Wrong cookie.
        let mut req = [0u8; 64];
        let n = write_request(&mut req, &[1; 12], &RequestOptions::default()).unwrap();
        let mut bad = req;
        bad[5] ^= 1;
        assert_eq!(
            r.respond(Transport::Udp, 0, src, &bad[..n], &mut out).0,
            Outcome::Malformed
        );
        // Truncated.
        assert_eq!(
            r.respond(Transport::Udp, 0, src, &req[..n - 1], &mut out).0,
            Outcome::Malformed
        );
        // Bad fingerprint.
        let n = write_request(
            &mut req,
            &[1; 12],
            &RequestOptions {
                fingerprint: true,
                ..Default::default()
            },
        )
        .unwrap();
        req[n - 1] ^= 1;
        assert_eq!(
            r.respond(Transport::Udp, 0, src, &req[..n], &mut out).0,
            Outcome::BadFingerprint
        );
        // An Allocate request to a STUN server: 400 with the Allocate method.
        let mut w = natkit_proto::writer::Writer::new(
            &mut req,
            raw::method::ALLOCATE,
            Class::Request,
            &[2; 12],
        )
        .unwrap();
        w.u32(attr::REQUESTED_TRANSPORT, 17 << 24).unwrap();
        let n = w.finish();
        let (o, reply) = r.respond(Transport::Udp, 0, src, &req[..n], &mut out);
        assert_eq!(o, Outcome::Error(400));
        let h = raw::parse_datagram(&out[..reply.unwrap().len]).unwrap();
        assert_eq!(
            (h.method(), h.class()),
            (raw::method::ALLOCATE, Class::Error)
        );
        // A Binding indication is a keepalive: no answer.
        let n = natkit_proto::writer::Writer::new(
            &mut req,
            raw::method::BINDING,
            Class::Indication,
            &[3; 12],
        )
        .unwrap()
        .finish();
        assert_eq!(
            r.respond(Transport::Udp, 0, src, &req[..n], &mut out),
            (Outcome::Indication, None)
        );
    }

    #[test]
    fn incomplete_square_is_refused() {
        let e = vec![Endpoint {
            addr: a("192.0.2.1:1"),
            rfc5780: Some((0, 0)),
        }];
        assert!(Responder::new(e).is_err());
    }
}
