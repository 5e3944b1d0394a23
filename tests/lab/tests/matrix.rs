//! Test 2 of issue 5, the connection matrix: for every pair of NAT kinds,
//! `natkit listen` and `natkit connect` connect and move data over QUIC
//! (checked with SHA-256 both ways), on a direct path wherever hole
//! punching can work and through the relay otherwise.

use natkit_lab::matrix::{self, Expect, MatrixSpec};
use natkit_lab::Lab;

#[test]
fn every_pair_of_nat_kinds_connects_on_the_expected_path() {
    let spec = MatrixSpec {
        payload: 128 * 1024,
        ..MatrixSpec::default()
    };
    let lab = Lab::build("mx", &spec.topology()).expect("build the lab");
    eprintln!(
        "lab of {} sites built in {:?}; {} pairs",
        lab.sites().len(),
        lab.build_time(),
        spec.pairs().len()
    );
    let m = matrix::run(&lab, &spec, &|c| {
        eprintln!("{} x {}: {}", c.listen, c.connect, c.short());
    });
    eprintln!("{}", m.table());
    assert_eq!(m.cells.len(), spec.pairs().len());
    // The matrix must exercise both outcomes, or it proves little.
    assert!(m.cells.iter().any(|c| c.expected == Expect::Relay));
    assert!(m.cells.iter().any(|c| c.expected == Expect::Direct));
    assert!(m.all_ok(), "{}", m.table());
}
