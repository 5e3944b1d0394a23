//! UPnP IGD control, sans-IO: the device description (UPnP Device
//! Architecture 1.1 §2) and the SOAP actions of the WANIPConnection service
//! (UPnP IGD WANIPConnection:1 §2.4 and :2): `GetExternalIPAddress`,
//! `AddPortMapping`, `DeletePortMapping`.
//!
//! XML is read with `roxmltree` (a small, well-kept, read-only parser with
//! no dependencies of its own; DTDs are refused, so no entity expansion
//! from a hostile device), by local element names, since devices use
//! whatever namespace prefixes they like.
//!
//! Nothing here validates the gateway the way libminiupnpc's
//! `UPNP_GetValidIGD` does: an IGD whose external address is private or
//! reserved (documentation ranges included) is used anyway. Behind such a
//! gateway the mapped address may serve only peers on that side of the
//! next NAT; ICE finds out by checking it, and refusing it would also make
//! the NAT lab (which lives in documentation ranges) untestable.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::http::{self, Url};

/// The WAN connection services natkit maps ports with, best first.
const SERVICE_TYPES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// What natkit calls its mappings on the gateway (shown in router UIs).
pub const DESCRIPTION: &str = "natkit";

/// A WAN connection service of an IGD: where to send its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its service type (the SOAP namespace of its actions).
    pub service_type: String,
    /// Its control URL.
    pub control: Url,
}

/// Why a description or an answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    /// Not XML (or a DTD, which is refused).
    #[error("the device description is not usable XML: {0}")]
    Xml(String),
    /// No WANIPConnection or WANPPPConnection service.
    #[error("the device has no WANIPConnection or WANPPPConnection service")]
    NoWanService,
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .map(str::trim)
}

/// The WAN connection services of the description `xml` fetched from
/// `location`, best type first (then in document order).
pub fn wan_services(xml: &str, location: &Url) -> Result<Vec<Service>, DescriptionError> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| DescriptionError::Xml(e.to_string()))?;
    // UDA 1.0's URLBase, if any, is what relative URLs are resolved
    // against (UDA 1.1 dropped it; the location is the base then).
    let base = doc
        .root_element()
        .children()
        .find(|c| c.is_element() && c.tag_name().name() == "URLBase")
        .and_then(|c| c.text())
        .and_then(|u| Url::parse(u).ok())
        .unwrap_or_else(|| location.clone());
    let mut found: Vec<(usize, Service)> = Vec::new();
    for s in doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "service")
    {
        let Some(st) = child_text(s, "serviceType") else {
            continue;
        };
        let Some(rank) = SERVICE_TYPES.iter().position(|t| *t == st) else {
            continue;
        };
        let Some(control) = child_text(s, "controlURL").and_then(|c| base.join(c).ok()) else {
            continue;
        };
        found.push((
            rank,
            Service {
                service_type: st.to_string(),
                control,
            },
        ));
    }
    if found.is_empty() {
        return Err(DescriptionError::NoWanService);
    }
    // Stable: document order within a type.
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().map(|(_, s)| s).collect())
}

/// A SOAP action of WANIPConnection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// What the gateway's external address is.
    GetExternalIpAddress,
    /// Map UDP `external_port` to `internal_client:internal_port` for
    /// `lease` seconds (0: until deleted).
    AddPortMapping {
        /// The external port.
        external_port: u16,
        /// The internal port.
        internal_port: u16,
        /// The internal host (ours).
        internal_client: Ipv4Addr,
        /// Lease duration, seconds.
        lease: u32,
    },
    /// The UDP mapping of `external_port` as the device holds it (its
    /// lease left, which may be less than asked).
    GetSpecificPortMappingEntry {
        /// The external port.
        external_port: u16,
    },
    /// Remove the UDP mapping of `external_port`.
    DeletePortMapping {
        /// The external port.
        external_port: u16,
    },
}

impl Action {
    /// The action's name.
    pub fn name(self) -> &'static str {
        match self {
            Action::GetExternalIpAddress => "GetExternalIPAddress",
            Action::AddPortMapping { .. } => "AddPortMapping",
            Action::GetSpecificPortMappingEntry { .. } => "GetSpecificPortMappingEntry",
            Action::DeletePortMapping { .. } => "DeletePortMapping",
        }
    }

    /// The arguments, in the order the service description lists them
    /// (some devices insist on it).
    fn args(self) -> Vec<(&'static str, String)> {
        match self {
            Action::GetExternalIpAddress => Vec::new(),
            Action::AddPortMapping {
                external_port,
                internal_port,
                internal_client,
                lease,
            } => vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external_port.to_string()),
                ("NewProtocol", "UDP".into()),
                ("NewInternalPort", internal_port.to_string()),
                ("NewInternalClient", internal_client.to_string()),
                ("NewEnabled", "1".into()),
                ("NewPortMappingDescription", DESCRIPTION.into()),
                ("NewLeaseDuration", lease.to_string()),
            ],
            Action::GetSpecificPortMappingEntry { external_port }
            | Action::DeletePortMapping { external_port } => vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external_port.to_string()),
                ("NewProtocol", "UDP".into()),
            ],
        }
    }
}

/// The HTTP request that invokes `action` on `service` (UDA 1.1 §3.2.1).
/// The arguments are numbers, addresses and a fixed word: nothing to
/// escape.
pub fn request(service: &Service, action: Action) -> Vec<u8> {
    let name = action.name();
    let st = &service.service_type;
    let mut args = String::new();
    for (k, v) in action.args() {
        args.push_str(&format!("<{k}>{v}</{k}>"));
    }
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{name} xmlns:u=\"{st}\">{args}</u:{name}></s:Body></s:Envelope>\r\n"
    );
    let soap_action = format!("\"{st}#{name}\"");
    http::post_xml(&service.control, &[("SOAPAction", &soap_action)], &body)
}

/// A UPnP error code (UDA 1.1 §3.2.2, IGD WANIPConnection §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// 606 Action not authorized.
    pub const NOT_AUTHORIZED: ErrorCode = ErrorCode(606);
    /// 718 ConflictInMappingEntry: the external port is another host's.
    pub const CONFLICT: ErrorCode = ErrorCode(718);
    /// 725 OnlyPermanentLeasesSupported: lease must be 0.
    pub const ONLY_PERMANENT_LEASES: ErrorCode = ErrorCode(725);

    /// The name the specifications give it.
    pub fn name(self) -> &'static str {
        match self.0 {
            401 => "Invalid Action",
            402 => "Invalid Args",
            501 => "Action Failed",
            606 => "Action not authorized",
            714 => "NoSuchEntryInArray",
            715 => "WildCardNotPermittedInSrcIP",
            716 => "WildCardNotPermittedInExtPort",
            718 => "ConflictInMappingEntry",
            724 => "SamePortValuesRequired",
            725 => "OnlyPermanentLeasesSupported",
            726 => "RemoteHostOnlySupportsWildcard",
            727 => "ExternalPortOnlySupportsWildcard",
            728 => "NoPortMapsAvailable",
            729 => "ConflictWithOtherMechanisms",
            _ => "error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UPnP error {} ({})", self.0, self.name())
    }
}

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// The device answered with a UPnP error.
    #[error("{code}: {description}")]
    Fault {
        /// The error code.
        code: ErrorCode,
        /// The device's words (at most 200 characters).
        description: String,
    },
    /// An HTTP error without a UPnP error in it.
    #[error("HTTP status {0}")]
    Http(u16),
    /// Not a SOAP answer to the action.
    #[error("malformed SOAP answer: {0}")]
    Malformed(String),
}

/// The output arguments of `action`'s answer `resp`, or its failure.
pub fn answer(resp: &http::Response, action: Action) -> Result<Vec<(String, String)>, SoapError> {
    let text =
        std::str::from_utf8(&resp.body).map_err(|_| SoapError::Malformed("not UTF-8".into()))?;
    let doc = match roxmltree::Document::parse(text) {
        Ok(d) => d,
        Err(_) if resp.status != 200 => return Err(SoapError::Http(resp.status)),
        Err(e) => return Err(SoapError::Malformed(e.to_string())),
    };
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.is_element() && n.tag_name().name() == name)
    };
    // UDA 1.1 §3.2.2: HTTP 500 with a SOAP Fault whose detail is a
    // UPnPError (errorCode, errorDescription).
    if let Some(e) = find("UPnPError") {
        let code = child_text(e, "errorCode")
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| SoapError::Malformed("UPnPError without errorCode".into()))?;
        let description = child_text(e, "errorDescription")
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(SoapError::Fault {
            code: ErrorCode(code),
            description,
        });
    }
    if resp.status != 200 {
        return Err(SoapError::Http(resp.status));
    }
    let want = format!("{}Response", action.name());
    let r = find(&want).ok_or_else(|| SoapError::Malformed(format!("no {want}")))?;
    Ok(r.children()
        .filter(|c| c.is_element())
        .map(|c| {
            (
                c.tag_name().name().to_string(),
                c.text().unwrap_or("").trim().to_string(),
            )
        })
        .collect())
}

/// The lease left in a `GetSpecificPortMappingEntry` answer's arguments,
/// seconds (0: permanent).
pub fn lease(args: &[(String, String)]) -> Option<u32> {
    args.iter()
        .find(|(k, _)| k == "NewLeaseDuration")
        .and_then(|(_, v)| v.parse().ok())
}

/// The external address in a `GetExternalIPAddress` answer's arguments:
/// any unicast address (see the module docs on reserved ones); empty or
/// 0.0.0.0 means the WAN connection is down.
pub fn external_ip(args: &[(String, String)]) -> Result<IpAddr, SoapError> {
    let v = args
        .iter()
        .find(|(k, _)| k == "NewExternalIPAddress")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| SoapError::Malformed("no NewExternalIPAddress".into()))?;
    match v.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback() => Ok(ip),
        _ => Err(SoapError::Malformed(format!(
            "external address {:?} (WAN connection down?)",
            v.chars().take(50).collect::<String>()
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// miniupnpd 2.3's description, shortened: the IGD, its WANDevice and
    /// WANConnectionDevice with WANIPConnection:1.
    pub const ROOT_DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337"><specVersion><major>1</major><minor>1</minor></specVersion><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><friendlyName>natkit-lab router</friendlyName><manufacturer>Debian</manufacturer><UDN>uuid:6e61746b-6974-6c61-6200-000000000001</UDN><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId><SCPDURL>/L3F.xml</SCPDURL><controlURL>/ctl/L3F</controlURL><eventSubURL>/evt/L3F</eventSubURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType><serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId><SCPDURL>/WANCfg.xml</SCPDURL><controlURL>/ctl/CmnIfCfg</controlURL><eventSubURL>/evt/CmnIfCfg</eventSubURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/WANIPCn.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service></serviceList></device></deviceList></device></deviceList><presentationURL>http://198.51.100.1/</presentationURL></device></root>"#;

    fn location() -> Url {
        Url::parse("http://198.51.100.1:5000/rootDesc.xml").unwrap()
    }

    pub fn ok(body: &str) -> http::Response {
        http::Response {
            status: 200,
            body: body.as_bytes().to_vec(),
        }
    }

    /// A SOAP fault as miniupnpd sends it.
    pub fn fault(code: u16, words: &str) -> http::Response {
        http::Response {
            status: 500,
            body: format!(r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode><errorDescription>{words}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#).into_bytes(),
        }
    }

    #[test]
    fn the_wan_ip_connection_service_is_found() {
        let s = wan_services(ROOT_DESC, &location()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].service_type,
            "urn:schemas-upnp-org:service:WANIPConnection:1"
        );
        assert_eq!(
            s[0].control.to_string(),
            "http://198.51.100.1:5000/ctl/IPConn"
        );
    }

    #[test]
    fn services_are_ranked_and_urls_resolved() {
        let xml = r#"<root xmlns="urn:schemas-upnp-org:device-1-0"><URLBase>http://192.0.2.1:49152/</URLBase><device><serviceList>
            <service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>ppp</controlURL></service>
            <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/upnp/control/ip2</controlURL></service>
            <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType></service>
        </serviceList></device></root>"#;
        let s = wan_services(xml, &location()).unwrap();
        let urls: Vec<String> = s.iter().map(|s| s.control.to_string()).collect();
        // IP:2 first, then PPP; the one without a control URL is skipped.
        assert_eq!(
            urls,
            [
                "http://192.0.2.1:49152/upnp/control/ip2",
                "http://192.0.2.1:49152/ppp"
            ]
        );
    }

    #[test]
    fn unusable_descriptions() {
        assert!(matches!(
            wan_services("<root><device/>", &location()),
            Err(DescriptionError::Xml(_))
        ));
        // A DTD (entity expansion) is refused outright.
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><root>&lol2;</root>"#;
        assert!(matches!(
            wan_services(bomb, &location()),
            Err(DescriptionError::Xml(_))
        ));
        // A media server: UPnP, but no WAN connection.
        let media = r#"<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:ContentDirectory:1</serviceType><controlURL>/cd</controlURL></service></serviceList></device></root>"#;
        assert_eq!(
            wan_services(media, &location()),
            Err(DescriptionError::NoWanService)
        );
    }

    #[test]
    fn requests_carry_the_action() {
        let svc = &wan_services(ROOT_DESC, &location()).unwrap()[0];
        let add = Action::AddPortMapping {
            external_port: 40000,
            internal_port: 40000,
            internal_client: Ipv4Addr::new(198, 51, 100, 10),
            lease: 7200,
        };
        let r = String::from_utf8(request(svc, add)).unwrap();
        assert!(r.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 198.51.100.1:5000\r\n"));
        assert!(r.contains(
            "SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\"\r\n"
        ));
        assert!(r.contains("<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewRemoteHost></NewRemoteHost><NewExternalPort>40000</NewExternalPort><NewProtocol>UDP</NewProtocol><NewInternalPort>40000</NewInternalPort><NewInternalClient>198.51.100.10</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>natkit</NewPortMappingDescription><NewLeaseDuration>7200</NewLeaseDuration></u:AddPortMapping>"));
        // The body is what Content-Length says.
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        let del = String::from_utf8(request(svc, Action::DeletePortMapping { external_port: 9 }))
            .unwrap();
        assert!(del.contains("<NewExternalPort>9</NewExternalPort><NewProtocol>UDP</NewProtocol></u:DeletePortMapping>"));
    }

    #[test]
    fn answers_and_faults() {
        let a = ok(r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1"><NewExternalIPAddress>203.0.113.1</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>"#);
        let args = answer(&a, Action::GetExternalIpAddress).unwrap();
        // A documentation-range address is used (see the module docs).
        assert_eq!(
            external_ip(&args),
            Ok("203.0.113.1".parse::<IpAddr>().unwrap())
        );
        // The wrong action's answer.
        assert!(matches!(
            answer(&a, Action::DeletePortMapping { external_port: 1 }),
            Err(SoapError::Malformed(_))
        ));
        for (code, words) in [
            (606, "Action not authorized"),
            (718, "ConflictInMappingEntry"),
            (725, "OnlyPermanentLeasesSupported"),
        ] {
            let e = answer(&fault(code, words), Action::GetExternalIpAddress).unwrap_err();
            assert_eq!(
                e,
                SoapError::Fault {
                    code: ErrorCode(code),
                    description: words.into()
                }
            );
            assert_eq!(ErrorCode(code).name(), words);
        }
        assert_eq!(
            fault_text(606),
            "UPnP error 606 (Action not authorized): Action not authorized"
        );
        // HTTP errors without SOAP, or with junk.
        let e = http::Response {
            status: 404,
            body: b"Not found".to_vec(),
        };
        assert_eq!(
            answer(&e, Action::GetExternalIpAddress),
            Err(SoapError::Http(404))
        );
        // A down WAN.
        let args = vec![("NewExternalIPAddress".to_string(), "0.0.0.0".to_string())];
        assert!(external_ip(&args).is_err());
        assert!(external_ip(&[]).is_err());
    }

    fn fault_text(code: u16) -> String {
        answer(
            &fault(code, ErrorCode(code).name()),
            Action::GetExternalIpAddress,
        )
        .unwrap_err()
        .to_string()
    }
}
