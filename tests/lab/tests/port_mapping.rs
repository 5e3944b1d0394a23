//! Issue 13, part 1: a NAT running miniupnpd maps a port asked for with
//! UPnP IGD (`upnpc`), NAT-PMP (`natpmpc`) and PCP (RFC 6887 MAP), and the
//! internet then reaches the host through it; the refusing gateway answers
//! every request "not authorized" (UPnP 606, NAT-PMP and PCP result 2) and
//! nothing gets in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use natkit_lab::bins;
use natkit_lab::portmap::{
    natpmp_map_udp, pcp_map_udp, reachable, NOT_AUTHORIZED, PCP_FIRST_RESEND, SUCCESS,
};
use natkit_lab::{Lab, NatKind, PortMapping, Site, SiteSpec, TopologySpec};

/// How long a request to a gateway may take: a refusal makes miniupnpd try
/// every external port first (1-3 s here, see `portmap::quiet_console`).
const ASK: Duration = Duration::from_secs(20);

/// How long a client (upnpc, natpmpc) may run before it is killed: they
/// take milliseconds to a few seconds here; natpmpc's own retries could go
/// on for two minutes.
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

/// Run a port-mapping client (from Debian package `package`) in the site's
/// host namespace, killed by PID if it runs past [`CLIENT_LIMIT`]:
/// (success, what it printed).
fn client(lab: &Lab, site: &Site, program: &str, package: &str, args: &[&str]) -> (bool, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let path = bins::system(program, package).unwrap();
    let name = format!("{program}-{}", RUNS.fetch_add(1, Ordering::Relaxed));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut p = lab.spawn_in(&site.host_ns(), &name, &path, &args).unwrap();
    let status = p.wait_for(CLIENT_LIMIT);
    p.kill();
    let out = p.log_tail(100);
    match status {
        Some(s) => (s.success(), out),
        None => (
            false,
            format!("{program} still running after {CLIENT_LIMIT:?}, killed; it printed:\n{out}"),
        ),
    }
}

/// `natpmpc -g GATEWAY -a PORT PORT udp 600` in `site`'s host.
fn natpmp_add(lab: &Lab, site: &Site, port: u16) -> (bool, String) {
    let (gw, port) = (site.gateway.to_string(), port.to_string());
    let args = ["-g", &gw, "-a", &port, &port, "udp", "600"];
    client(lab, site, "natpmpc", "natpmpc", &args)
}

/// `upnpc -u URL -a HOST PORT PORT UDP` in `site`'s host, for its own
/// address.
fn upnp_add(lab: &Lab, site: &Site, port: u16) -> (bool, String) {
    let url = site.igd_url().expect("the site maps ports");
    let (host, port) = (site.host_addr.to_string(), port.to_string());
    let args = ["-u", &url, "-a", &host, &port, &port, "UDP"];
    client(lab, site, "upnpc", "miniupnpc", &args)
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
    let public = |port| SocketAddr::from((on.public_addr, port));
    let bind = |site: &Site, port| site.host_ns().bind_udp((site.host_addr, port)).unwrap();

    // Control: without a mapping nothing gets in.
    let unmapped = bind(on, 40_010);
    if reachable(&lab, &unmapped, public(40_010), 9000) {
        failures.push("an unmapped port let the internet in".to_string());
    }

    // UPnP IGD.
    let sock = bind(on, 40_000);
    let (ok, out) = upnp_add(&lab, on, 40_000);
    if !ok || !out.contains("is redirected") {
        failures.push(format!("upnpc -a: {out}"));
    } else if !reachable(&lab, &sock, public(40_000), 9001) {
        failures.push("the UPnP mapping did not let the internet in".to_string());
    }

    // NAT-PMP.
    let sock = bind(on, 40_001);
    let (ok, out) = natpmp_add(&lab, on, 40_001);
    if !ok || !out.contains("Mapped public port 40001") {
        failures.push(format!("natpmpc -a: {out}"));
    } else if !reachable(&lab, &sock, public(40_001), 9002) {
        failures.push("the NAT-PMP mapping did not let the internet in".to_string());
    }

    // PCP (Debian's build has it; `enable_natpmp` turns it on).
    let sock = bind(on, 40_002);
    match pcp_map_udp(&sock, on.gateway, 600, PCP_FIRST_RESEND, ASK) {
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
    let (ok, out) = upnp_add(&lab, syon, 40_000);
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

    // The refusing gateway: each protocol's "not authorized", and nothing
    // gets in.
    let no = lab.site("no").unwrap();
    let sock = bind(no, 40_000);
    let (ok, out) = upnp_add(&lab, no, 40_000);
    if ok || !out.contains("606") {
        failures.push(format!(
            "refusing upnpc -a: want error 606 (Action not authorized), got {out}"
        ));
    }
    // NAT-PMP result 2, "Not Authorized/Refused" (RFC 6886 §3.5), and
    // PCP NOT_AUTHORIZED (RFC 6887 §7.4), also 2, asked directly: one copy
    // of each request (see `portmap::NATPMP_FIRST_RESEND`). natpmpc would
    // resend every 250 ms and, as miniupnpd answers the copies late, take
    // one of those answers for its mapping's ("Mapped public port 2929
    // protocol UNKNOWN"): it is tried against the mapping gateway only.
    let asker = bind(no, 40_001);
    match natpmp_map_udp(&asker, no.gateway, 40_001, 600, ASK, ASK) {
        Some((NOT_AUTHORIZED, _)) => {}
        other => failures.push(format!(
            "refusing NAT-PMP map: (result, port) {other:?}, want result {NOT_AUTHORIZED}"
        )),
    }
    let asker = bind(no, 40_003);
    match pcp_map_udp(&asker, no.gateway, 600, ASK, ASK) {
        Some((NOT_AUTHORIZED, _)) => {}
        other => failures.push(format!(
            "refusing PCP MAP: (result, address) {other:?}, want result {NOT_AUTHORIZED}"
        )),
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
