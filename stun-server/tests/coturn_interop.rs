//! coturn's RFC 5780 client (`turnutils_stunclient -f`) against natkit-stun.
//! coturn comes from Debian's `coturn` package; scripts/test.sh installs it.

mod common;

use std::process::Command;

use common::*;

/// The (response origin, other address, reflexive address) of each
/// "RFC 5780 response N" block that turnutils_stunclient prints.
fn blocks(out: &str) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for block in out.split("RFC 5780 response").skip(1) {
        let field = |key: &str| {
            block
                .lines()
                .rfind(|l| l.contains(key))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_default()
                .to_string()
        };
        v.push((
            field("Response origin:"),
            field("Other addr:"),
            field("UDP reflexive addr:"),
        ));
    }
    v
}

#[test]
fn turnutils_stunclient_rfc5780_probe() {
    let (_srv, primary, other, _) = rfc5780_server(&[]);
    let out = Command::new("turnutils_stunclient")
        .args(["-f", "-p", &primary.port().to_string(), "127.0.0.1"])
        .output()
        .expect("turnutils_stunclient not found: install Debian's coturn package (scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stunclient failed: {text}");
    let b = blocks(&text);
    assert_eq!(b.len(), 3, "three RFC 5780 responses expected:\n{text}");
    // 1: plain request; answered from where it was sent, OTHER-ADDRESS is
    // the alternate address and port.
    assert_eq!(b[0].0, primary.to_string(), "{text}");
    assert_eq!(b[0].1, other.to_string(), "{text}");
    // 2: change IP and port; answered from the alternate pair.
    assert_eq!(b[1].0, other.to_string(), "{text}");
    assert_eq!(b[1].1, other.to_string(), "{text}");
    assert_eq!(b[1].2, b[0].2, "same socket, same mapping: {text}");
    // 3: padded request from a second socket, changed IP and port.
    assert_eq!(b[2].0, other.to_string(), "{text}");
    assert!(b[2].2.starts_with("127.0.0.1:"), "{text}");
    assert_ne!(b[2].2, b[0].2, "{text}");
}
