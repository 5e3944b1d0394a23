//! Test 3 of issue 5: a peer whose network blocks UDP falls back to TURN
//! over TCP, or over TLS, and still connects (through the relay) and moves
//! data intact.

use std::time::Duration;

use natkit_lab::peer::{self, Pair, PeerOptions, TurnTransport};
use natkit_lab::{Lab, NatKind, SiteSpec, TopologySpec};

#[test]
fn udp_blocked_peer_connects_through_turn_over_tcp_and_tls() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("ub", NatKind::UdpBlocked, false),
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
        ],
    };
    let lab = Lab::build("fb", &spec).expect("build the lab");
    let ub = lab.site("ub").unwrap();
    let pr = lab.site("pr").unwrap();
    let mut failures = Vec::new();
    for (i, transport) in [TurnTransport::Tcp, TurnTransport::Tls]
        .into_iter()
        .enumerate()
    {
        // The blocked peer is given STUN and TURN over UDP as well: they
        // must fail and be left behind, not hold the connection back.
        let mut blocked = PeerOptions::for_site(pr);
        blocked.turn = vec![TurnTransport::Udp, transport];
        let open = PeerOptions::for_site(pr);
        // Each side once in each role.
        let (pair, who) = if i == 0 {
            (
                Pair::start(&lab, ub, &blocked, pr, &open, "tcp"),
                "ub listens",
            )
        } else {
            (
                Pair::start(&lab, pr, &open, ub, &blocked, "tls"),
                "ub connects",
            )
        };
        let pair = pair.expect("start the peers");
        let data_a = peer::payload(64 * 1024);
        let data_b = peer::payload(64 * 1024);
        let t = peer::transfer(
            pair,
            &data_a,
            &data_b,
            Duration::from_secs(1),
            Duration::from_secs(90),
        );
        eprintln!(
            "TURN over {transport:?} ({who}): path {:?}, data intact {}, {:.0} ms",
            t.path(),
            t.data_ok,
            t.wall_ms
        );
        if !(t.exited_ok && t.data_ok && t.relayed()) {
            failures.push(format!(
                "TURN over {transport:?} ({who}): exited ok {}, data ok {}, path {:?}: {}",
                t.exited_ok,
                t.data_ok,
                t.path(),
                t.error.as_deref().unwrap_or("")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
