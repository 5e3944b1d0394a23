//! Interoperability with libnice (issue 12, part 7: RFC 8863, ICE PAC):
//! natkit's sans-IO [`natkit_ice::Agent`] is given libnice's credentials but
//! none of its candidates, as when a browser signals mDNS `.local` names the
//! driver cannot resolve, then end-of-candidates; libnice (a full RFC 5245
//! agent in C, regular nomination) learns natkit's candidates. natkit must
//! not give up: libnice's checks reach it, teach it a peer-reflexive
//! candidate, and both agents connect on the same pair, whoever nominates.
//!
//! Before the fix natkit failed within a millisecond (no pair,
//! end-of-candidates) and still answered libnice's checks with success:
//! libnice went READY against an agent that had failed.
//!
//! The libnice side is `tests/libnice/peer.py`, run with Debian's
//! /usr/bin/python3 (GObject introspection); natkit's agent runs on std UDP
//! sockets on 127.0.0.1 (tests/interop). libnice must be installed
//! (`bash scripts/deps/libnice.sh`, which `scripts/test.sh` runs): without
//! it every test here fails saying so, it never passes silently.
//!
//! Run with `cargo nextest run -p natkit-ice --test interop_libnice`; add
//! `--no-capture` to see the pairs and timings.

mod interop;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use interop::{natkit_candidate, peer_description, role_name, socket_addr, Natkit, PeerProcess};
use natkit_ice::{CandidateKind, Role};
use serde_json::Value;

/// libnice's introspection bindings are Debian's: its python3 (another one
/// may come first on PATH).
const PYTHON: &str = "/usr/bin/python3";
/// For libnice to start, gather and print its description.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// From handing natkit's description to libnice until both agents have
/// selected a pair (well under a second on loopback; the margin is for a
/// loaded 2-core machine).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// libnice's bindings import, or the test fails here telling how to install
/// them (CI installs them through scripts/deps/libnice.sh).
fn require_libnice() {
    interop::require_python(
        PYTHON,
        "import gi; gi.require_version('Nice', '0.1'); from gi.repository import Nice",
        "the libnice interop test needs Debian's gir1.2-nice-0.1 and python3-gi: \
         run `bash scripts/deps/libnice.sh` (as root on Debian it installs them)",
    );
}

fn spawn_libnice(role: &str) -> PeerProcess {
    require_libnice();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/libnice/peer.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-u").arg(script).args(["--role", role]);
    cmd.args(["--address", &LO.to_string()]);
    // Bounded on the Python side too, should this process die without
    // closing the child's stdin.
    cmd.args(["--lifetime", "60"]);
    PeerProcess::spawn("libnice", cmd)
}

fn run(natkit_role: Role) {
    let start = Instant::now();
    let mut peer = spawn_libnice(role_name(natkit_role.flip()));
    let mut nk = Natkit::new(natkit_role, &[LO]);

    let desc = peer.line(STARTUP_TIMEOUT, "its description");
    assert_eq!(desc["type"], "description", "{desc}");
    let hidden: Vec<SocketAddr> = desc["candidates"]
        .as_array()
        .expect("libnice candidates")
        .iter()
        .map(|c| natkit_candidate(c).addr)
        .collect();
    assert!(!hidden.is_empty(), "libnice signalled no candidate: {desc}");
    // natkit gets libnice's credentials and end-of-candidates, but none of
    // its candidates: they stand for mDNS names the driver skipped.
    let ufrag = desc["ufrag"].as_str().expect("libnice ufrag");
    let pwd = desc["pwd"].as_str().expect("libnice pwd");
    nk.agent
        .set_remote_credentials(ufrag, pwd)
        .unwrap_or_else(|e| panic!("natkit refused libnice's credentials: {e}"));
    nk.agent.end_of_remote_candidates();
    nk.pump();
    peer.send_line(&peer_description(&nk.agent));
    let t0 = Instant::now();

    let deadline = t0 + CONNECT_TIMEOUT;
    let mut natkit_ms = None;
    let mut libnice: Option<Value> = None;
    let mut states = Vec::new();
    // When natkit has failed, libnice's last word is awaited too: the bug
    // was libnice going READY against it.
    let mut natkit_failed = None;
    while (natkit_ms.is_none() && natkit_failed.is_none()) || libnice.is_none() {
        if Instant::now() >= deadline {
            break;
        }
        nk.pump();
        if natkit_failed.is_none() {
            natkit_failed = nk.failure().map(|f| (t0.elapsed(), f));
        }
        if natkit_ms.is_none() && nk.connected().is_some() {
            natkit_ms = Some(t0.elapsed());
        }
        if let Some(v) = peer.try_line() {
            match v["type"].as_str() {
                Some("state") => {
                    let s = v["state"].as_str().unwrap_or_default().to_owned();
                    assert_ne!(s, "failed", "libnice failed\n{}", nk.diagnostics());
                    states.push(s);
                }
                Some("connected") => libnice = Some(v),
                _ => panic!("libnice: {v}"),
            }
        }
    }
    if let Some((at, f)) = natkit_failed {
        panic!(
            "natkit failed after {at:?} ({f}), libnice meanwhile: {states:?}{}\n{}",
            if libnice.is_some() {
                ", connected to natkit"
            } else {
                ""
            },
            nk.diagnostics()
        );
    }
    let Some(libnice) = libnice else {
        panic!(
            "ICE did not complete within {CONNECT_TIMEOUT:?}: natkit connected {}, libnice states {states:?}\n{}",
            natkit_ms.is_some(),
            nk.diagnostics()
        );
    };
    assert!(
        natkit_ms.is_some(),
        "libnice connected but natkit did not within {CONNECT_TIMEOUT:?}\n{}",
        nk.diagnostics()
    );
    let selected = nk.settle_connected();
    // natkit knows libnice only from its checks (RFC 8445 §7.3.1.3).
    assert_eq!(
        selected.remote.kind,
        CandidateKind::PeerReflexive,
        "{selected}"
    );
    assert!(hidden.contains(&selected.remote.addr), "{selected}");
    // Both ends of one path.
    assert_eq!(
        socket_addr(&libnice["local"]),
        selected.remote.addr,
        "{libnice}"
    );
    assert_eq!(
        socket_addr(&libnice["remote"]),
        selected.local.base,
        "{libnice}"
    );
    assert_ne!(
        libnice["role"].as_str().unwrap_or_default(),
        role_name(nk.agent.role()),
        "both agents ended in one role"
    );
    println!(
        "natkit {} vs libnice {}: natkit connected in {:.0} ms on {selected}; libnice {:?} on {} -> {}; whole run {:.2} s",
        role_name(natkit_role),
        libnice["role"],
        natkit_ms.unwrap().as_secs_f64() * 1e3,
        states,
        socket_addr(&libnice["local"]),
        socket_addr(&libnice["remote"]),
        start.elapsed().as_secs_f64()
    );
}

/// The reported case: libnice nominates (regular nomination) through the
/// peer-reflexive pair natkit learned from its checks.
#[test]
fn libnice_controlling_connects_to_natkit_that_had_none_of_its_candidates() {
    run(Role::Controlled);
}

/// natkit nominates the pair it learned from libnice's check.
#[test]
fn natkit_controlling_connects_to_libnice_through_its_peer_reflexive_candidate() {
    run(Role::Controlling);
}
