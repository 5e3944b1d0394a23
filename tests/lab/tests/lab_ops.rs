//! The lab's own operations that later tests lean on: renumbering a NAT's
//! outside address and flushing its mappings change what the internet sees,
//! an endpoint-independent NAT keeps the source port, and waiting for a
//! process to be ready stops as soon as it exits.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use natkit_lab::probe::stun_mapped;
use natkit_lab::{Lab, LabError, NatKind, SiteSpec, TopologySpec};

#[test]
fn renumbering_and_flushing_change_the_mapping() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
            SiteSpec::new("sy", NatKind::Symmetric, false),
        ],
    };
    let lab = Lab::build("ops", &spec).expect("build the lab");
    let stun = lab.servers().stun;

    // Port-restricted (EIM): the port is kept; renumbering moves the IP.
    let pr = lab.site("pr").unwrap();
    let bind = SocketAddr::from((pr.host_addr, 40_000));
    let sock = pr.host_ns().bind_udp(bind).unwrap();
    let before = stun_mapped(&sock, stun, 6).expect("mapped address before");
    assert_eq!(before, SocketAddr::from((pr.public_addr, 40_000)));
    let new = lab.renumber_wan(pr).expect("renumber");
    assert_ne!(new, pr.public_addr);
    let after = stun_mapped(&sock, stun, 6).expect("mapped address after renumbering");
    assert_eq!(
        after.ip(),
        IpAddr::V4(new),
        "before {before}, after {after}"
    );

    // Symmetric (random ports): the same socket gets a new port per flow,
    // and again after its mappings are flushed.
    let sy = lab.site("sy").unwrap();
    let sock = sy
        .host_ns()
        .bind_udp(SocketAddr::from((sy.host_addr, 40_000)))
        .unwrap();
    let first = stun_mapped(&sock, stun, 6).expect("mapped address");
    let again = stun_mapped(&sock, stun, 6).expect("mapped address again");
    assert_eq!(first, again, "one flow keeps its mapping");
    let other = stun_mapped(&sock, lab.servers().stun_other, 6).expect("other server");
    assert_ne!(
        first.port(),
        other.port(),
        "a new destination gets a new port"
    );
    lab.flush_conntrack(sy).expect("conntrack -F");
    let flushed = stun_mapped(&sock, stun, 6).expect("mapped address after flush");
    assert_ne!(first, flushed, "flushing gives the flow a new mapping");

    // A process that dies at start-up: the wait ends with its exit status
    // and what it printed, not after the whole limit.
    let dying = lab
        .spawn_in(
            lab.internet(),
            "dying",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "echo cannot bind 203.0.113.1:3478 >&2; exit 3".into(),
            ],
        )
        .expect("start sh");
    lab.track(dying);
    let t0 = Instant::now();
    let err = lab
        .wait_ready("dying", Duration::from_secs(30), || Err("not yet".into()))
        .expect_err("a dead process is never ready");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        t0.elapsed()
    );
    assert!(
        matches!(&err, LabError::Exited { status, log, .. }
            if status.code() == Some(3) && log.contains("cannot bind")),
        "{err}"
    );
}
