//! Issue 13, part 1: a NAT running miniupnpd maps a port asked for with
//! UPnP IGD (`upnpc`), NAT-PMP (`natpmpc`) and PCP (RFC 6887 MAP), and the
//! internet then reaches the host through it; the refusing gateway answers
//! every request with an error and nothing gets in.

use std::net::SocketAddr;
use std::time::Duration;

use natkit_lab::portmap::{pcp_map_udp, reachable, SUCCESS};
use natkit_lab::{Lab, NatKind, PortMapping, Site, SiteSpec, TopologySpec};

/// How long a request to a gateway may take: a refusal makes miniupnpd try
/// every external port first (~1.5 s here, see `portmap::quiet_console`).
const ASK: Duration = Duration::from_secs(10);

/// Run a port-mapping client in the site's host namespace: (success, output).
fn client(site: &Site, program: &str, args: &[&str]) -> (bool, String) {
    let mut c = site.host_ns().command(program).unwrap();
    c.args(args);
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `upnpc -u URL -a HOST PORT PORT UDP` in `site`'s host, for its own
/// address: (success, output).
fn upnp_add(site: &Site, port: u16) -> (bool, String) {
    let url = site.igd_url().expect("the site maps ports");
    let (host, port) = (site.host_addr.to_string(), port.to_string());
    client(
        site,
        "upnpc",
        &["-u", &url, "-a", &host, &port, &port, "UDP"],
    )
}

/// One test for the whole file: one lab, a mapping and a refusing gateway.
#[test]
fn miniupnpd_maps_ports_and_the_refusing_gateway_refuses() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("on", NatKind::PortRestrictedCone, false)
                .with_port_mapping(PortMapping::On),
            SiteSpec::new("no", NatKind::Symmetric, false).with_port_mapping(PortMapping::Refuse),
            SiteSpec::new("syon", NatKind::Symmetric, false).with_port_mapping(PortMapping::On),
        ],
    };
    let lab = Lab::build("pm", &spec).expect("build the lab");
    let mut failures = Vec::new();

    let on = lab.site("on").unwrap();
    let gw = on.gateway.to_string();
    let public = |port| SocketAddr::from((on.public_addr, port));
    let bind = |site: &Site, port| site.host_ns().bind_udp((site.host_addr, port)).unwrap();

    // Control: without a mapping nothing gets in.
    let unmapped = bind(on, 40_010);
    if reachable(&lab, &unmapped, public(40_010), 9000) {
        failures.push("an unmapped port let the internet in".to_string());
    }

    // UPnP IGD.
    let sock = bind(on, 40_000);
    let (ok, out) = upnp_add(on, 40_000);
    if !ok || !out.contains("is redirected") {
        failures.push(format!("upnpc -a: {out}"));
    } else if !reachable(&lab, &sock, public(40_000), 9001) {
        failures.push("the UPnP mapping did not let the internet in".to_string());
    }

    // NAT-PMP.
    let sock = bind(on, 40_001);
    let (ok, out) = client(
        on,
        "natpmpc",
        &["-g", &gw, "-a", "40001", "40001", "udp", "600"],
    );
    if !ok || !out.contains("Mapped public port 40001") {
        failures.push(format!("natpmpc -a: {out}"));
    } else if !reachable(&lab, &sock, public(40_001), 9002) {
        failures.push("the NAT-PMP mapping did not let the internet in".to_string());
    }

    // PCP (Debian's build has it; `enable_natpmp` turns it on).
    let sock = bind(on, 40_002);
    match pcp_map_udp(&sock, on.gateway, 600, ASK) {
        Some((SUCCESS, ext)) if ext.ip() == public(0).ip() => {
            if !reachable(&lab, &sock, ext, 9003) {
                failures.push(format!("the PCP mapping {ext} did not let the internet in"));
            }
        }
        other => failures.push(format!(
            "PCP MAP: {other:?}, want success for {}",
            on.public_addr
        )),
    }

    // A symmetric NAT maps ports too (its own traffic is not translated,
    // so miniupnpd's STUN test passes).
    let syon = lab.site("syon").unwrap();
    let sock = bind(syon, 40_000);
    let (ok, out) = upnp_add(syon, 40_000);
    if !ok || !out.contains("is redirected") {
        failures.push(format!("symmetric upnpc -a: {out}"));
    } else if !reachable(
        &lab,
        &sock,
        SocketAddr::from((syon.public_addr, 40_000)),
        9005,
    ) {
        failures.push("the symmetric NAT's UPnP mapping did not let the internet in".to_string());
    }

    // The refusing gateway: errors, and nothing gets in.
    let no = lab.site("no").unwrap();
    let sock = bind(no, 40_000);
    let (_, out) = upnp_add(no, 40_000);
    if !out.contains("606") {
        failures.push(format!("refusing upnpc -a: want error 606, got {out}"));
    }
    let (ok, out) = client(
        no,
        "natpmpc",
        &[
            "-g",
            &no.gateway.to_string(),
            "-a",
            "40000",
            "40000",
            "udp",
            "600",
        ],
    );
    if ok && out.contains("Mapped public port") {
        failures.push(format!("refusing natpmpc -a mapped: {out}"));
    }
    if reachable(
        &lab,
        &sock,
        SocketAddr::from((no.public_addr, 40_000)),
        9004,
    ) {
        failures.push("the refusing gateway let the internet in".to_string());
    }

    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
