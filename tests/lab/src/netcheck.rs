//! Running `natkit netcheck --json` inside a site, and what it must report
//! there given the NAT the lab built (RFC 5780 §4.3-§4.5 verdicts).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{LabError, Result};
use crate::lab::{Lab, Site};
use crate::nat::{Filtering, NatKind};

/// The verdicts of one run (or the ones expected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `mapping.behavior` (e.g. `endpoint_independent`, `no_nat`).
    pub mapping: String,
    /// `filtering.behavior`.
    pub filtering: String,
    /// `hairpinning`: `Some(true/false)`, `None` when not tested.
    pub hairpinning: Option<bool>,
    /// `nat_type` (RFC 3489 name, snake_case).
    pub nat_type: String,
}

fn filtering_name(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint_independent",
        Filtering::AddressDependent => "address_dependent",
        Filtering::AddressAndPortDependent => "address_and_port_dependent",
    }
}

/// What netcheck must report in `site`; `None` for a site where UDP does
/// not get out (only `nat_type` `udp_blocked` is expected there, checked by
/// [`expected_nat_type`]).
pub fn expected(site: &Site) -> Option<Verdict> {
    let k = site.kind;
    if !k.udp_allowed() {
        return None;
    }
    let mapping = if k.is_public() {
        "no_nat"
    } else if k.endpoint_dependent_mapping() {
        "address_and_port_dependent"
    } else {
        "endpoint_independent"
    };
    let filtering = k.filtering().map_or("endpoint_independent", filtering_name);
    let nat_type = expected_nat_type(k);
    // Without NAT the probe to our own address comes straight back (the
    // kernel delivers it locally). The double NAT's outer NAT never
    // hairpins; the others do as built.
    let hairpinning = match k {
        NatKind::Open | NatKind::NoNat => true,
        NatKind::DoubleNat => false,
        _ => site.hairpin,
    };
    Some(Verdict {
        mapping: mapping.into(),
        filtering: filtering.into(),
        hairpinning: Some(hairpinning),
        nat_type: nat_type.into(),
    })
}

/// The RFC 3489 type name netcheck must print for `kind`.
pub fn expected_nat_type(kind: NatKind) -> &'static str {
    match kind {
        NatKind::Open => "open_internet",
        NatKind::NoNat => "symmetric_udp_firewall",
        NatKind::FullCone => "full_cone",
        NatKind::RestrictedCone => "restricted_cone",
        NatKind::PortRestrictedCone | NatKind::DoubleNat => "port_restricted_cone",
        NatKind::Symmetric | NatKind::SymmetricSequential | NatKind::SymmetricPreserving => {
            "symmetric"
        }
        NatKind::UdpBlocked => "udp_blocked",
    }
}

/// Whether `run` reports `site` as the lab built it: the expected
/// verdicts, a success exit and the site's public address as the mapped
/// IP; where UDP does not get out, `udp_blocked` and a failure exit.
pub fn check(site: &Site, run: &Run) -> std::result::Result<(), String> {
    let Some(want) = expected(site) else {
        let want = expected_nat_type(site.kind);
        if run.verdict.nat_type != want || run.success {
            return Err(format!(
                "{}: nat_type {:?} (exit ok: {}), want {want:?} and a failure exit",
                site.name, run.verdict.nat_type, run.success
            ));
        }
        return Ok(());
    };
    if run.verdict != want || !run.success {
        return Err(format!(
            "{} ({}, hairpin {}): got {:?} (exit ok: {}), want {want:?}",
            site.name, site.kind, site.hairpin, run.verdict, run.success
        ));
    }
    let mapped = run.json["mapped"].as_str().unwrap_or("");
    let want_ip = std::net::IpAddr::V4(site.public_addr);
    if mapped.parse::<std::net::SocketAddr>().map(|a| a.ip()) != Ok(want_ip) {
        return Err(format!(
            "{}: mapped address {mapped:?}, want IP {want_ip}",
            site.name
        ));
    }
    Ok(())
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The verdicts read from the JSON.
    pub verdict: Verdict,
    /// Whether natkit exited with success.
    pub success: bool,
    /// How long it took.
    pub elapsed: Duration,
    /// The whole JSON output.
    pub json: serde_json::Value,
}

/// Run `natkit netcheck --json --stun <lab STUN>` in `site`'s host.
pub fn run(lab: &Lab, site: &Site) -> Result<Run> {
    let mut c = site.host_ns().command(&lab.binaries().natkit)?;
    c.args(["netcheck", "--json", "--stun"])
        .arg(lab.servers().stun.to_string());
    if !site.kind.udp_allowed() {
        // Nothing will answer: 3 sends over 3.5 s instead of RFC 8489's
        // full 39.5 s budget.
        c.args(["--rc", "3", "--rm", "4"]);
    }
    let t0 = Instant::now();
    let out = c
        .output()
        .map_err(|e| LabError::io(format!("running natkit netcheck in {}", site.name), e))?;
    let elapsed = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        LabError::Other(format!(
            "natkit netcheck in {} printed no JSON ({e}); stdout: {text}; stderr: {}",
            site.name,
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let verdict = Verdict {
        mapping: s(&json["mapping"]["behavior"]),
        filtering: s(&json["filtering"]["behavior"]),
        hairpinning: json["hairpinning"].as_bool(),
        nat_type: s(&json["nat_type"]),
    };
    Ok(Run {
        verdict,
        success: out.status.success(),
        elapsed,
        json,
    })
}
