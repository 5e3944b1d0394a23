//! Issue 13, part 3: natkit's hard-NAT punch through the lab's real NATs,
//! with `natkit listen` and `natkit connect`.
//!
//! - A symmetric NAT (`masquerade random`) facing an endpoint-independent
//!   mapping with address-and-port-dependent filtering (a stateful
//!   firewall, a port-restricted cone, a double NAT): plain ICE can only
//!   relay there (`tests/hole_punch.rs` pins that); the punch makes the
//!   path direct, and both reports say what was tried.
//! - The sequential symmetric NAT is punched through the predicted window.
//! - Two symmetric NATs: the relay, and both reports say that nothing was
//!   tried and why.

use std::time::Duration;

use natkit_lab::peer::{payload, transfer, Pair, PeerOptions, Report};
use natkit_lab::{Lab, NatKind, TopologySpec};

/// The `punch` object of a report.
fn punch(r: &Option<Report>) -> serde_json::Value {
    r.as_ref()
        .map_or(serde_json::Value::Null, |r| r.raw["punch"].clone())
}

#[test]
fn hard_nats_are_punched_directly_and_two_of_them_relay() {
    use NatKind::*;
    let kinds = [
        NoNat,
        PortRestrictedCone,
        Symmetric,
        SymmetricSequential,
        DoubleNat,
    ];
    let lab = Lab::build("hn", &TopologySpec::pairs(&kinds)).expect("build the lab");
    // (listen, connect): the hard side on either end of the signalling.
    let pairs = [
        (NoNat, Symmetric),
        (PortRestrictedCone, Symmetric),
        (Symmetric, DoubleNat),
        (SymmetricSequential, PortRestrictedCone),
        (Symmetric, Symmetric),
    ];
    let mut failures = Vec::new();
    for (a, b) in pairs {
        let name = format!("{a} x {b}");
        let sa = lab.site(&format!("{}a", a.short())).unwrap();
        let sb = lab.site(&format!("{}b", b.short())).unwrap();
        let (oa, ob) = (PeerOptions::for_site(sa), PeerOptions::for_site(sb));
        let pair = match Pair::start(
            &lab,
            sa,
            &oa,
            sb,
            &ob,
            &format!("{}-{}", a.short(), b.short()),
        ) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let data = payload(64 * 1024);
        // The session lives 3 s: the punch ends well within it.
        let t = transfer(
            pair,
            &data,
            &data,
            Duration::from_secs(3),
            Duration::from_secs(40),
        );
        let (pl, pc) = (punch(&t.listen), punch(&t.connect));
        eprintln!(
            "{name}: path {:?}; listen punch {pl}; connect punch {pc}",
            t.path()
        );
        if let Some(e) = &t.error {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        if !t.data_ok {
            failures.push(format!("{name}: data not intact"));
        }
        let (hard, easy) = match (
            a.endpoint_dependent_mapping(),
            b.endpoint_dependent_mapping(),
        ) {
            (true, true) => {
                if !t.relayed() {
                    failures.push(format!("{name}: path {:?}, want relay", t.path()));
                }
                for p in [&pl, &pc] {
                    if p["tried"] != "both_hard" {
                        failures.push(format!("{name}: punch report {p}, want both_hard"));
                    }
                }
                continue;
            }
            (true, false) => (&pl, &pc),
            _ => (&pc, &pl),
        };
        if t.relayed() || t.path().is_none() {
            failures.push(format!("{name}: path {:?}, want direct", t.path()));
        }
        // The sequential NAT's prediction may hit the mapping of the hard
        // side's own ICE checks first, before its sockets open.
        let by_sockets = hard["reached"].is_string() && hard["sockets"] == 256;
        if hard["tried"] != "opened" || !(by_sockets || a == SymmetricSequential) {
            failures.push(format!("{name}: hard side's punch report {hard}"));
        }
        if easy["tried"] != "probed" || easy["hit"].is_null() {
            failures.push(format!("{name}: easy side's punch report {easy}"));
        }
        // Port prediction: found in the predicted window.
        if a == SymmetricSequential && easy["hit_predicted"] != true {
            failures.push(format!("{name}: not found by prediction: {easy}"));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
