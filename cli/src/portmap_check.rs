//! The port-mapping part of `natkit netcheck`: ask the gateway for a UDP
//! mapping with each of PCP, NAT-PMP and UPnP IGD (one
//! [`natkit_ice::portmap::PortMapper`] per protocol, each on a socket of
//! its own, at the same time), report what each said, and delete what was
//! mapped.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_ice::portmap::{driver::Driver, gateway, Config, PortMapper, Protocol, Status};
use serde::Serialize;

/// What was asked and what each protocol said.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The gateway asked.
    pub gateway: IpAddr,
    /// Where it was asked from.
    pub local: IpAddr,
    /// One entry per protocol, in natkit's order of preference.
    pub protocols: Vec<ProtocolReport>,
    /// The first protocol's mapping (PCP, then NAT-PMP, then UPnP): what a
    /// session would offer.
    pub mapped: Option<SocketAddr>,
    /// Which protocol that is.
    pub via: Option<&'static str>,
    /// Whether any protocol got an answer.
    pub answered: bool,
    /// How long it took, mapping and deleting, in milliseconds.
    pub elapsed_ms: u64,
}

/// One protocol's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolReport {
    /// `pcp`, `nat-pmp` or `upnp`.
    pub protocol: &'static str,
    /// `mapped`, `refused`, `no answer`, `not tried` or `failed`.
    pub result: &'static str,
    /// Whether the gateway answered (a refusal counts).
    pub answered: bool,
    /// The mapped address.
    pub mapped: Option<SocketAddr>,
    /// The lifetime granted, seconds (`None`: permanent or no mapping).
    pub lifetime_secs: Option<u64>,
    /// Whether the mapping was deleted again (confirmed or not).
    pub deleted: bool,
    /// The details, in words.
    pub detail: String,
}

/// Why the check was not run.
pub fn skip_reason(local: IpAddr, gateway: IpAddr) -> Option<&'static str> {
    if local.is_ipv4() != gateway.is_ipv4() {
        Some("the gateway is of another address family than the local address")
    } else if local.is_loopback() != gateway.is_loopback() {
        Some("the local address is loopback")
    } else {
        None
    }
}

/// The gateway to ask: `explicit`, else the default IPv4 route's.
pub fn find_gateway(explicit: Option<IpAddr>) -> Result<IpAddr, String> {
    if let Some(g) = explicit {
        return Ok(g);
    }
    match gateway::system_default_v4() {
        Ok(Some((route, _))) => Ok(IpAddr::V4(route.gateway)),
        Ok(None) => Err("no default route (give --gateway)".into()),
        Err(e) => Err(format!(
            "cannot read the routing table: {e} (give --gateway)"
        )),
    }
}

/// The local address the system sends to `gateway` from (a connected UDP
/// socket sends nothing).
pub fn local_for(gateway: IpAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = if gateway.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(any)?;
    s.connect((gateway, natkit_ice::portmap::SERVER_PORT))?;
    Ok(s.local_addr()?.ip())
}

/// Map, report, delete: each protocol on its own socket from `local`.
pub fn check(gateway: IpAddr, local: IpAddr) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let protocols = rt.block_on(async {
        let runs = Protocol::ALL.map(|p| one(p, gateway, local));
        let [a, b, c] = runs;
        let (a, b, c) = tokio::join!(a, b, c);
        [a, b, c]
    });
    let mut protocols: Vec<ProtocolReport> = protocols.into_iter().collect::<Result<_, _>>()?;
    protocols.sort_by_key(|p| p.protocol != "pcp");
    let first = protocols.iter().find(|p| p.mapped.is_some());
    Ok(Report {
        gateway,
        local,
        mapped: first.and_then(|p| p.mapped),
        via: first.map(|p| p.protocol),
        answered: protocols.iter().any(|p| p.answered),
        protocols,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// One protocol: map, then delete.
async fn one(p: Protocol, gateway: IpAddr, local: IpAddr) -> anyhow::Result<ProtocolReport> {
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    let mut cfg = Config::new(gateway, sock.local_addr()?);
    cfg.protocols = vec![p];
    // netcheck keeps nothing: a short lifetime in case the deletion is lost.
    cfg.lifetime = Duration::from_secs(120);
    let mut m = PortMapper::new(cfg, Instant::now());
    let mut d = Driver::new(&sock);
    d.run_until(&mut m, |m| m.settled()).await?;
    let status = m
        .status()
        .first()
        .map(|(_, s)| s.clone())
        .unwrap_or(Status::Waiting);
    let mapping = m.mapping().cloned();
    m.close(Instant::now());
    d.run_until(&mut m, |m| m.is_closed()).await?;
    let (result, answered, detail) = match &status {
        Status::Mapped(_) => ("mapped", true, String::new()),
        Status::Failed(f) => {
            let result = match f {
                natkit_ice::portmap::Failure::NoAnswer { .. } => "no answer",
                natkit_ice::portmap::Failure::NotTried(_) => "not tried",
                natkit_ice::portmap::Failure::Pcp(_)
                | natkit_ice::portmap::Failure::NatPmp(_)
                | natkit_ice::portmap::Failure::Soap { .. } => "refused",
                _ => "failed",
            };
            (result, f.answered(), f.to_string())
        }
        Status::Waiting | Status::Trying => ("failed", false, "unfinished".into()),
    };
    Ok(ProtocolReport {
        protocol: p.key(),
        result,
        answered,
        mapped: mapping.as_ref().map(|m| m.external),
        lifetime_secs: mapping
            .as_ref()
            .and_then(|m| m.lifetime)
            .map(|l| l.as_secs()),
        deleted: mapping.is_some() && m.is_closed(),
        detail,
    })
}

fn name(key: &str) -> &'static str {
    Protocol::ALL
        .into_iter()
        .find(|p| p.key() == key)
        .map_or("?", |p| p.name())
}

/// The report in words: an aligned block.
pub fn human(r: &Report) -> String {
    let mut s = format!("Port mapping (gateway {}, from {})\n", r.gateway, r.local);
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "  {k:<17} {v}");
    };
    for p in &r.protocols {
        let v = match (p.mapped, p.lifetime_secs) {
            (Some(a), Some(l)) => format!("mapped {a} (lifetime {l} s){}", deleted(p)),
            (Some(a), None) => format!("mapped {a} (permanent lease){}", deleted(p)),
            (None, _) => p.detail.clone(),
        };
        line(name(p.protocol), &v);
    }
    match (r.mapped, r.via) {
        (Some(a), Some(via)) => line("mapped address", &format!("{a} ({})", name(via))),
        _ if !r.answered => line(
            "mapped address",
            "none: the gateway answers none of PCP, NAT-PMP and UPnP IGD",
        ),
        _ => line(
            "mapped address",
            "none: the gateway answered but mapped nothing",
        ),
    }
    line(
        "took",
        &crate::udp_driver::human(Duration::from_millis(r.elapsed_ms)),
    );
    s
}

fn deleted(p: &ProtocolReport) -> &'static str {
    if p.deleted {
        ", deleted again"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocol: &'static str, result: &'static str, mapped: Option<&str>) -> ProtocolReport {
        ProtocolReport {
            protocol,
            result,
            answered: result != "no answer",
            mapped: mapped.map(|m| m.parse().unwrap()),
            lifetime_secs: mapped.map(|_| 120),
            deleted: mapped.is_some(),
            detail: match result {
                "no answer" => "no answer to 4 requests in 3.75 s".into(),
                "refused" => "refused: NOT_AUTHORIZED (2)".into(),
                _ => String::new(),
            },
        }
    }

    fn report(protocols: Vec<ProtocolReport>) -> Report {
        let first = protocols.iter().find(|p| p.mapped.is_some());
        Report {
            gateway: "198.51.100.1".parse().unwrap(),
            local: "198.51.100.10".parse().unwrap(),
            mapped: first.and_then(|p| p.mapped),
            via: first.map(|p| p.protocol),
            answered: protocols.iter().any(|p| p.answered),
            protocols,
            elapsed_ms: 12,
        }
    }

    #[test]
    fn the_report_names_each_protocol_and_the_mapped_address() {
        let r = report(vec![
            entry("pcp", "refused", None),
            entry("nat-pmp", "mapped", Some("203.0.113.1:40001")),
            entry("upnp", "mapped", Some("203.0.113.1:40002")),
        ]);
        let t = human(&r);
        assert!(
            t.starts_with("Port mapping (gateway 198.51.100.1, from 198.51.100.10)\n"),
            "{t}"
        );
        assert!(
            t.contains("  PCP               refused: NOT_AUTHORIZED (2)\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  NAT-PMP           mapped 203.0.113.1:40001 (lifetime 120 s), deleted again\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("  mapped address    203.0.113.1:40001 (NAT-PMP)\n"),
            "{t}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["mapped"], "203.0.113.1:40001");
        assert_eq!(j["via"], "nat-pmp");
        assert_eq!(j["protocols"][0]["result"], "refused");
    }

    #[test]
    fn a_gateway_that_answers_nothing_gets_a_clear_line() {
        let r = report(vec![
            entry("pcp", "no answer", None),
            entry("nat-pmp", "no answer", None),
            entry("upnp", "no answer", None),
        ]);
        assert!(human(&r).contains(
            "  mapped address    none: the gateway answers none of PCP, NAT-PMP and UPnP IGD\n"
        ));
        let r = report(vec![entry("pcp", "refused", None)]);
        assert!(human(&r).contains("none: the gateway answered but mapped nothing"));
    }

    #[test]
    fn loopback_and_family_mismatches_are_not_checked() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let gw: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(skip_reason(lo, gw), Some("the local address is loopback"));
        assert!(skip_reason("2001:db8::1".parse().unwrap(), gw).is_some());
        assert_eq!(skip_reason("192.0.2.7".parse().unwrap(), gw), None);
        // A loopback gateway (a test's) with a loopback address is fine.
        assert_eq!(skip_reason(lo, lo), None);
    }
}
