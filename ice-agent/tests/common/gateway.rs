//! A simulated home gateway that maps ports: PCP (RFC 6887), NAT-PMP
//! (RFC 6886) and UPnP IGD (SSDP, device description, SOAP), each of which
//! can map, refuse or stay silent. It reads the requests by byte offsets
//! and text of its own, not with natkit's codecs, so that the tests check
//! the client against the RFCs rather than against itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How the gateway answers one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Maps.
    Map,
    /// Refuses: PCP NOT_AUTHORIZED (2), NAT-PMP result 2, UPnP 606.
    Refuse,
    /// PCP only: the server speaks NAT-PMP and answers version 2 with
    /// "unsupported version" (RFC 6886 §3.5).
    NatPmpOnly,
    /// UPnP: AddPortMapping fails with this error code; NAT-PMP: this
    /// result code.
    Fault(u16),
    /// No answer at all.
    Silent,
}

/// One mapping the gateway holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GwMapping {
    /// "pcp", "nat-pmp" or "upnp".
    pub by: &'static str,
    pub external_port: u16,
    pub internal: SocketAddr,
    /// `None`: permanent (UPnP lease 0).
    pub expires: Option<Instant>,
}

/// The gateway; see the module docs.
pub struct SimGateway {
    /// Its LAN address (the clients' default gateway).
    pub lan: IpAddr,
    /// Its internet address (what it maps on).
    pub external: IpAddr,
    pub pcp: Answer,
    pub natpmp: Answer,
    pub upnp: Answer,
    /// UPnP: answer 718 (conflict) this many times before mapping.
    pub upnp_conflicts: u32,
    /// UPnP: only permanent leases (725 for any other).
    pub upnp_permanent_only: bool,
    /// The most lifetime it grants (PCP, NAT-PMP, UPnP lease).
    pub max_lifetime: u32,
    pub mappings: Vec<GwMapping>,
    /// Every request it received, in words, for the tests' assertions.
    pub log: Vec<String>,
    started: Instant,
}

const DESC_PATH: &str = "/rootDesc.xml";
/// Its UPnP HTTP port.
pub const HTTP_PORT: u16 = 5000;

impl SimGateway {
    /// A gateway at `lan` mapping on `external`, answering everything.
    pub fn new(lan: &str, external: &str, now: Instant) -> SimGateway {
        SimGateway {
            lan: lan.parse().unwrap(),
            external: external.parse().unwrap(),
            pcp: Answer::Map,
            natpmp: Answer::Map,
            upnp: Answer::Map,
            upnp_conflicts: 0,
            upnp_permanent_only: false,
            max_lifetime: 7200,
            mappings: Vec::new(),
            log: Vec::new(),
            started: now,
        }
    }

    /// Its UPnP description URL.
    pub fn location(&self) -> String {
        format!("http://{}:{HTTP_PORT}{DESC_PATH}", self.lan)
    }

    /// The internal address a packet to `external_port` goes to.
    pub fn forward(&self, external_port: u16, now: Instant) -> Option<SocketAddr> {
        self.mappings
            .iter()
            .find(|m| m.external_port == external_port && m.expires.map_or(true, |e| e > now))
            .map(|m| m.internal)
    }

    fn epoch(&self, now: Instant) -> u32 {
        (now - self.started).as_secs() as u32
    }

    fn grant(&self, asked: u32) -> u32 {
        asked.min(self.max_lifetime)
    }

    /// Add or refresh (`lifetime` > 0) or remove (0) a mapping; returns the
    /// external port used.
    fn map(
        &mut self,
        by: &'static str,
        internal: SocketAddr,
        suggested: u16,
        lifetime: u32,
        now: Instant,
    ) -> u16 {
        let existing = self
            .mappings
            .iter()
            .position(|m| m.internal == internal && m.by == by);
        if lifetime == 0 {
            if let Some(i) = existing {
                let m = self.mappings.remove(i);
                return m.external_port;
            }
            return 0;
        }
        let expires = Some(now + Duration::from_secs(lifetime.into()));
        if let Some(i) = existing {
            self.mappings[i].expires = expires;
            return self.mappings[i].external_port;
        }
        let mut port = if suggested == 0 {
            internal.port()
        } else {
            suggested
        };
        while self.mappings.iter().any(|m| m.external_port == port) {
            port = port.wrapping_add(1).max(1024);
        }
        self.mappings.push(GwMapping {
            by,
            external_port: port,
            internal,
            expires,
        });
        port
    }

    /// A UDP datagram from `from` to the gateway's `port`: the answers,
    /// from which port of the gateway.
    pub fn udp(
        &mut self,
        from: SocketAddr,
        port: u16,
        d: &[u8],
        now: Instant,
    ) -> Vec<(u16, Vec<u8>)> {
        match port {
            5351 if d.first() == Some(&2) => self.pcp_request(from, d, now),
            5351 if d.first() == Some(&0) => self.natpmp_request(from, d, now),
            1900 if d.starts_with(b"M-SEARCH * HTTP/1.1\r\n") => {
                self.log.push("ssdp search".into());
                if self.upnp == Answer::Silent {
                    return Vec::new();
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: sim UPnP/1.1\r\nLOCATION: {}\r\n\r\n",
                    self.location()
                );
                vec![(1900, answer.into_bytes())]
            }
            _ => Vec::new(),
        }
    }

    fn pcp_request(&mut self, from: SocketAddr, d: &[u8], now: Instant) -> Vec<(u16, Vec<u8>)> {
        if d.len() != 60 || d[1] != 1 {
            return Vec::new();
        }
        let lifetime = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let iport = u16::from_be_bytes([d[40], d[41]]);
        let sport = u16::from_be_bytes([d[42], d[43]]);
        self.log
            .push(format!("pcp map {iport} lifetime {lifetime}"));
        let mut resp = d.to_vec();
        resp[1] |= 0x80;
        resp[8..12].copy_from_slice(&self.epoch(now).to_be_bytes());
        resp[12..24].fill(0);
        match self.pcp {
            Answer::Silent => return Vec::new(),
            Answer::NatPmpOnly => {
                // RFC 6886 §3.5: version 0, opcode 128 + 1, result 1.
                let mut r = vec![0, 129, 0, 1];
                r.extend_from_slice(&self.epoch(now).to_be_bytes());
                return vec![(5351, r)];
            }
            Answer::Map => {
                let internal = SocketAddr::new(from.ip(), iport);
                let granted = self.grant(lifetime);
                let port = self.map("pcp", internal, sport, granted, now);
                resp[3] = 0;
                resp[4..8].copy_from_slice(&granted.to_be_bytes());
                resp[42..44].copy_from_slice(&port.to_be_bytes());
                let IpAddr::V4(ext) = self.external else {
                    unreachable!()
                };
                resp[44..60].copy_from_slice(&ext.to_ipv6_mapped().octets());
            }
            Answer::Refuse | Answer::Fault(_) => {
                resp[3] = 2;
                resp[4..8].copy_from_slice(&30u32.to_be_bytes());
            }
        }
        vec![(5351, resp)]
    }

    fn natpmp_request(&mut self, from: SocketAddr, d: &[u8], now: Instant) -> Vec<(u16, Vec<u8>)> {
        let epoch = self.epoch(now).to_be_bytes();
        let result: u16 = match self.natpmp {
            Answer::Silent => return Vec::new(),
            Answer::Fault(code) => code,
            Answer::Refuse | Answer::NatPmpOnly => 2,
            Answer::Map => 0,
        };
        match (d.len(), d.get(1)) {
            (2, Some(0)) => {
                self.log.push("nat-pmp external address".into());
                let mut r = vec![0, 128];
                r.extend_from_slice(&result.to_be_bytes());
                r.extend_from_slice(&epoch);
                let IpAddr::V4(ext) = self.external else {
                    unreachable!()
                };
                r.extend_from_slice(&ext.octets());
                vec![(5351, r)]
            }
            (12, Some(1)) => {
                let iport = u16::from_be_bytes([d[4], d[5]]);
                let sport = u16::from_be_bytes([d[6], d[7]]);
                let lifetime = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                self.log
                    .push(format!("nat-pmp map {iport} lifetime {lifetime}"));
                let (port, granted) = if result == 0 {
                    let granted = self.grant(lifetime);
                    let internal = SocketAddr::new(from.ip(), iport);
                    (self.map("nat-pmp", internal, sport, granted, now), granted)
                } else {
                    (0, 0)
                };
                let mut r = vec![0, 129];
                r.extend_from_slice(&result.to_be_bytes());
                r.extend_from_slice(&epoch);
                r.extend_from_slice(&iport.to_be_bytes());
                r.extend_from_slice(&port.to_be_bytes());
                r.extend_from_slice(&granted.to_be_bytes());
                vec![(5351, r)]
            }
            _ => Vec::new(),
        }
    }

    /// An HTTP request from `client` to the gateway's UPnP port: the
    /// response (`None`: the device never answers).
    pub fn http(&mut self, client: IpAddr, req: &[u8], now: Instant) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(req).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if self.upnp == Answer::Silent {
            self.log.push("upnp http (silent)".into());
            return None;
        }
        if head.starts_with(&format!("GET {DESC_PATH} HTTP/1.1\r\n")) {
            self.log.push("upnp description".into());
            return Some(http_response(200, DESCRIPTION));
        }
        let action = head
            .lines()
            .find_map(|l| l.strip_prefix("SOAPAction: "))?
            .trim_matches('"')
            .rsplit('#')
            .next()?
            .to_string();
        let arg = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = body.find(&open)? + open.len();
            let end = body[start..].find(&format!("</{name}>"))? + start;
            Some(body[start..end].to_string())
        };
        self.log.push(format!("upnp {action}"));
        let ok = |name: &str, args: &str| {
            Some(http_response(
                200,
                &format!(
                    "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{name}Response xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">{args}</u:{name}Response></s:Body></s:Envelope>\r\n"
                ),
            ))
        };
        let fault = |code: u16| Some(http_response(500, &fault_body(code)));
        match action.as_str() {
            "GetExternalIPAddress" => ok(
                "GetExternalIPAddress",
                &format!(
                    "<NewExternalIPAddress>{}</NewExternalIPAddress>",
                    self.external
                ),
            ),
            "AddPortMapping" => {
                if let Answer::Fault(code) = self.upnp {
                    return fault(code);
                }
                if self.upnp == Answer::Refuse {
                    return fault(606);
                }
                if self.upnp_conflicts > 0 {
                    self.upnp_conflicts -= 1;
                    return fault(718);
                }
                let lease: u32 = arg("NewLeaseDuration")?.parse().ok()?;
                if self.upnp_permanent_only && lease != 0 {
                    return fault(725);
                }
                let eport: u16 = arg("NewExternalPort")?.parse().ok()?;
                let iport: u16 = arg("NewInternalPort")?.parse().ok()?;
                let iclient: Ipv4Addr = arg("NewInternalClient")?.parse().ok()?;
                // secure_mode: only for the requester itself.
                if IpAddr::V4(iclient) != client {
                    return fault(718);
                }
                let internal = SocketAddr::new(client, iport);
                self.mappings
                    .retain(|m| !(m.by == "upnp" && m.external_port == eport));
                self.mappings.push(GwMapping {
                    by: "upnp",
                    external_port: eport,
                    internal,
                    expires: (lease > 0)
                        .then(|| now + Duration::from_secs(self.grant(lease).into())),
                });
                ok("AddPortMapping", "")
            }
            "GetSpecificPortMappingEntry" => {
                let eport: u16 = arg("NewExternalPort")?.parse().ok()?;
                let Some(m) = self
                    .mappings
                    .iter()
                    .find(|m| m.by == "upnp" && m.external_port == eport)
                else {
                    return fault(714);
                };
                let left = m
                    .expires
                    .map_or(0, |e| e.saturating_duration_since(now).as_secs());
                ok(
                    "GetSpecificPortMappingEntry",
                    &format!(
                        "<NewInternalPort>{}</NewInternalPort><NewInternalClient>{}</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>natkit</NewPortMappingDescription><NewLeaseDuration>{left}</NewLeaseDuration>",
                        m.internal.port(),
                        m.internal.ip()
                    ),
                )
            }
            "DeletePortMapping" => {
                let eport: u16 = arg("NewExternalPort")?.parse().ok()?;
                let before = self.mappings.len();
                self.mappings
                    .retain(|m| !(m.by == "upnp" && m.external_port == eport));
                if self.mappings.len() == before {
                    return fault(714);
                }
                ok("DeletePortMapping", "")
            }
            _ => fault(401),
        }
    }
}

fn http_response(status: u16, body: &str) -> Vec<u8> {
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nConnection: close\r\nContent-Length: {}\r\nServer: sim UPnP/1.1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn fault_body(code: u16) -> String {
    format!("<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>error {code}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n")
}

const DESCRIPTION: &str = "<?xml version=\"1.0\"?>\r\n<root xmlns=\"urn:schemas-upnp-org:device-1-0\"><specVersion><major>1</major><minor>1</minor></specVersion><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><friendlyName>sim gateway</friendlyName><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/WANIPCn.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service></serviceList></device></deviceList></device></deviceList></device></root>\r\n";
