//! `natkit netcheck --compare A.json B.json`: what two saved reports
//! predict for a connection between those peers, the way natkit-ice would
//! try it: host candidates, port-mapped ones (PCP, NAT-PMP, UPnP IGD),
//! server-reflexive ones with hole punching (peer-reflexive candidates
//! learned on the way, RFC 8445 §7.3.1.3), else a TURN relay. The rules are
//! RFC 4787's behaviors: a direct path needs each side's first packet to
//! get through the other side's filter, at the address the other learned.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// One peer, as its report describes it (the first address family that
/// ran, as the report's top level).
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub file: String,
    pub family: String,
    pub mapped: Option<String>,
    /// `endpoint_independent`, `address_dependent`,
    /// `address_and_port_dependent`, `no_nat` or `unknown`.
    pub mapping: String,
    pub filtering: String,
    pub udp: String,
    pub tcp: Option<bool>,
    /// The gateway's port mapping, if one was granted.
    pub port_mapped: Option<String>,
    /// Relays measured from there that worked.
    pub relays: Vec<String>,
    /// The report says IPv6 works without NAT.
    pub ipv6_open: bool,
}

/// The prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// `direct`, `relay` or `uncertain`.
    pub outcome: &'static str,
    /// How: `host`, `port_mapping`, `hole_punching`, `peer_reflexive`,
    /// `turn_udp`, `turn_tcp`, or `none`.
    pub method: &'static str,
    pub why: String,
    pub a: Peer,
    pub b: Peer,
}

fn peer(file: &Path) -> anyhow::Result<Peer> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a natkit netcheck --json report", file.display()))?;
    if v.get("mapping").is_none() && v.get("udp").is_none() {
        anyhow::bail!(
            "{} has no mapping or udp field: not a natkit netcheck --json report",
            file.display()
        );
    }
    let s = |v: &Value| v.as_str().unwrap_or("unknown").to_string();
    let ipv6_open = v["families"].as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f["family"] == "IPv6" && f["mapping"]["behavior"] == "no_nat")
    });
    Ok(Peer {
        file: file.display().to_string(),
        family: s(&v["family"]),
        mapped: v["mapped"].as_str().map(str::to_string),
        mapping: s(&v["mapping"]["behavior"]),
        filtering: s(&v["filtering"]["behavior"]),
        udp: v["udp"]
            .as_str()
            .unwrap_or(if v["mapped"].is_string() {
                "works"
            } else {
                "blocked"
            })
            .to_string(),
        // A stream that works, TCP or TLS: what a TURN relay over TCP/TLS needs.
        tcp: match (v["tcp"]["works"].as_bool(), v["tls"]["works"].as_bool()) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (None, None) => None,
            _ => Some(false),
        },
        port_mapped: v["port_mapping"]["mapped"].as_str().map(str::to_string),
        relays: v["relays"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| r["ok"] == true)
                    .filter_map(|r| r["uri"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        ipv6_open,
    })
}

impl Peer {
    /// Anyone may send to it first: no NAT and no filter, or a port
    /// mapping on the gateway.
    fn open_inbound(&self) -> Option<&'static str> {
        if self.port_mapped.is_some() {
            Some("port_mapping")
        } else if self.mapping == "no_nat" && self.filtering == "endpoint_independent" {
            Some("host")
        } else {
            None
        }
    }

    /// The mapped address is the same towards every destination.
    fn stable_mapping(&self) -> Option<bool> {
        match self.mapping.as_str() {
            "endpoint_independent" | "no_nat" => Some(true),
            "address_dependent" | "address_and_port_dependent" => Some(false),
            _ => None,
        }
    }

    fn name(&self) -> String {
        let how = match (self.mapping.as_str(), self.filtering.as_str()) {
            ("no_nat", "endpoint_independent") => "no NAT, no filter".to_string(),
            ("no_nat", f) => format!("no NAT, {} filtering", f.replace('_', "-")),
            (m, f) => format!(
                "{} mapping, {} filtering",
                m.replace('_', "-"),
                f.replace('_', "-")
            ),
        };
        format!("{} ({how})", self.file)
    }
}

/// Predict a connection between `a` and `b`.
pub fn predict(a: Peer, b: Peer) -> Prediction {
    let p = |outcome, method, why: String| Prediction {
        outcome,
        method,
        why,
        a: a.clone(),
        b: b.clone(),
    };
    // UDP must get out on both sides for any direct path.
    if a.udp != "works" || b.udp != "works" {
        let blocked = if a.udp != "works" { &a } else { &b };
        let tcp = [&a, &b]
            .iter()
            .filter(|x| x.udp != "works")
            .all(|x| x.tcp == Some(true));
        let relay = relay_word(&a, &b);
        return if tcp {
            p(
                "relay",
                "turn_tcp",
                format!(
                    "UDP is blocked at {} but TCP works: natkit-ice reaches a TURN relay over TCP or TLS{relay}",
                    blocked.file
                ),
            )
        } else {
            p(
                "relay",
                "none",
                format!(
                    "UDP is blocked at {} and TCP was not seen working: only a TURN relay over TCP or TLS \
                     could help, if that network lets it out{relay}",
                    blocked.file
                ),
            )
        };
    }
    if a.ipv6_open && b.ipv6_open {
        return p(
            "direct",
            "host",
            "both have IPv6 without NAT: host candidates connect directly over IPv6".into(),
        );
    }
    for (x, y) in [(&a, &b), (&b, &a)] {
        if let Some(method) = x.open_inbound() {
            let how = if method == "port_mapping" {
                format!(
                    "{} has a port mapped on its gateway ({}), offered as a candidate",
                    x.file,
                    x.port_mapped.as_deref().unwrap_or("?")
                )
            } else {
                format!("{} has no NAT and no filter", x.file)
            };
            return p(
                "direct",
                method,
                format!(
                    "{how}: {}'s checks reach it whatever its own NAT does",
                    y.file
                ),
            );
        }
    }
    let (sa, sb) = (a.stable_mapping(), b.stable_mapping());
    let relay = relay_word(&a, &b);
    match (sa, sb) {
        (Some(true), Some(true)) => p(
            "direct",
            "hole_punching",
            format!(
                "both map endpoint-independently ({} and {}): each side's checks go to the \
                 other's server-reflexive address and open its own filter for the answer",
                a.name(),
                b.name()
            ),
        ),
        (Some(true), Some(false)) | (Some(false), Some(true)) => {
            let (stable, moving) = if sa == Some(true) { (&a, &b) } else { (&b, &a) };
            // The moving side's packets come from a port the stable side
            // never saw: its filter must not look at ports.
            if matches!(
                stable.filtering.as_str(),
                "endpoint_independent" | "address_dependent"
            ) {
                p(
                    "direct",
                    "peer_reflexive",
                    format!(
                        "{} maps per destination, but {} filters by address only: the checks from \
                         the new port get in, and the answer goes back through it (a peer-reflexive \
                         candidate)",
                        moving.name(),
                        stable.name()
                    ),
                )
            } else if stable.filtering == "address_and_port_dependent" {
                p(
                    "relay",
                    "turn_udp",
                    format!(
                        "{} maps per destination and {} filters by address and port: the checks \
                         arrive from a port that was never sent to and are dropped{relay}",
                        moving.name(),
                        stable.name()
                    ),
                )
            } else {
                p(
                    "uncertain",
                    "hole_punching",
                    format!(
                        "{} maps per destination and {}'s filtering is unknown: direct works only \
                         if it filters by address alone{relay}",
                        moving.name(),
                        stable.name()
                    ),
                )
            }
        }
        (Some(false), Some(false)) => p(
            "relay",
            "turn_udp",
            format!(
                "both map per destination ({} and {}): neither learns the port the other will \
                 use{relay}",
                a.name(),
                b.name()
            ),
        ),
        _ => p(
            "uncertain",
            "hole_punching",
            format!(
                "the mapping behavior is unknown at {} (no RFC 5780 server answered): natkit-ice \
                 will try hole punching and fall back to a relay{relay}",
                if sa.is_none() { &a.file } else { &b.file }
            ),
        ),
    }
}

fn relay_word(a: &Peer, b: &Peer) -> String {
    let both: Vec<&String> = a.relays.iter().filter(|r| b.relays.contains(r)).collect();
    match (both.first(), a.relays.first().or(b.relays.first())) {
        (Some(r), _) => format!("; {r} worked from both, use it"),
        (None, Some(r)) => format!("; {r} worked from one side (check it from the other)"),
        (None, None) => "; give a TURN server (neither report measured one: --turn)".into(),
    }
}

/// Run `natkit netcheck --compare A B`.
pub fn run(a: &Path, b: &Path, json: bool) -> anyhow::Result<()> {
    let peers = peer(a).and_then(|a| Ok((a, peer(b)?)));
    let (a, b) = match peers {
        Ok(p) => p,
        Err(e) => {
            if json {
                crate::output::failure_json("usage", &format!("{e:#}"));
            }
            return Err(e);
        }
    };
    let p = predict(a, b);
    if json {
        let mut v = serde_json::to_value(&p)?;
        v["ok"] = true.into();
        v["error"] = Value::Null;
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("Connection between {} and {}", p.a.file, p.b.file);
        outln!(
            "  {:<17} {} ({})",
            "prediction",
            p.outcome,
            p.method.replace('_', " ")
        );
        outln!("  {:<17} {}", "why", p.why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(mapping: &str, filtering: &str) -> Peer {
        Peer {
            file: format!("{mapping}/{filtering}"),
            family: "IPv4".into(),
            mapped: None,
            mapping: mapping.into(),
            filtering: filtering.into(),
            udp: "works".into(),
            tcp: None,
            port_mapped: None,
            relays: Vec::new(),
            ipv6_open: false,
        }
    }

    #[test]
    fn rfc_4787_pairs() {
        let eim = "endpoint_independent";
        let apd = "address_and_port_dependent";
        let ad = "address_dependent";
        let ei = "endpoint_independent";
        let cases = [
            ((eim, apd), (eim, apd), "direct", "hole_punching"),
            ((eim, ei), (apd, apd), "direct", "peer_reflexive"),
            ((eim, ad), (apd, apd), "direct", "peer_reflexive"),
            ((eim, apd), (apd, apd), "relay", "turn_udp"),
            ((apd, apd), (apd, apd), "relay", "turn_udp"),
            (("no_nat", ei), (apd, apd), "direct", "host"),
            (
                ("unknown", "unknown"),
                (eim, apd),
                "uncertain",
                "hole_punching",
            ),
        ];
        for ((ma, fa), (mb, fb), outcome, method) in cases {
            let p = predict(peer(ma, fa), peer(mb, fb));
            assert_eq!(
                (p.outcome, p.method),
                (outcome, method),
                "{ma}/{fa} vs {mb}/{fb}"
            );
            let q = predict(peer(mb, fb), peer(ma, fa));
            assert_eq!((q.outcome, q.method), (outcome, method), "swapped");
        }
        // A port mapping makes a symmetric NAT reachable.
        let mut a = peer(apd, apd);
        a.port_mapped = Some("203.0.113.1:40000".into());
        let p = predict(a, peer(apd, apd));
        assert_eq!((p.outcome, p.method), ("direct", "port_mapping"));
        // UDP blocked with TCP: relay over TCP/TLS.
        let mut a = peer(eim, apd);
        a.udp = "blocked".into();
        a.tcp = Some(true);
        let p = predict(a, peer(eim, apd));
        assert_eq!((p.outcome, p.method), ("relay", "turn_tcp"));
    }
}
