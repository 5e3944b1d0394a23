//! The lab's NATs on their own, without natkit's ICE agent: a minimal hole
//! puncher (STUN for the reflexive address, probes to it and to every
//! address probes come from) connects exactly the pairs of NAT kinds the
//! matrix expects to connect directly, and no others, for every pair of
//! NAT kinds that lets UDP out. This pins the expected paths of the matrix
//! test to what the NATs really do.

use natkit_lab::matrix::MatrixSpec;
use natkit_lab::punch::punch;
use natkit_lab::Lab;

#[test]
fn hole_punching_works_exactly_where_expected() {
    let spec = MatrixSpec::default();
    let lab = Lab::build("hp", &spec.topology()).expect("build the lab");
    // Punching needs UDP out of both sites: the UDP-blocked network has
    // its own tests (fallback, turn_fallback), here it would only fail to
    // get a STUN answer.
    let pairs: Vec<_> = spec
        .pairs()
        .into_iter()
        .filter(|&(a, b)| a.udp_allowed() && b.udp_allowed())
        .collect();
    assert!(
        pairs.len() < spec.pairs().len(),
        "the UDP-blocked kind left out"
    );
    // All pairs at once: each punches for a few seconds, on its own ports.
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = pairs
            .iter()
            .map(|&(a, b)| {
                let lab = &lab;
                s.spawn(move || {
                    let sa = lab.site(&format!("{}a", a.short())).unwrap();
                    let sb = lab.site(&format!("{}b", b.short())).unwrap();
                    (a, b, punch(lab, sa, sb))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    let (mut direct, mut relay) = (0, 0);
    for (a, b, r) in results {
        let want = a.direct_possible(b);
        match r {
            Ok(p) => {
                eprintln!(
                    "{a} x {b}: punched {} (want {want}) {:?}",
                    p.connected, p.reflexive
                );
                if p.connected != want {
                    failures.push(format!("{a} x {b}: punched {}, want {want}", p.connected));
                }
            }
            Err(e) => failures.push(format!("{a} x {b}: {e}")),
        }
        if want {
            direct += 1;
        } else {
            relay += 1;
        }
    }
    assert!(direct > 0 && relay > 0, "both outcomes must be exercised");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
