//! Interoperability: natkit-ice's sans-IO [`Agent`] completes ICE with an
//! independent implementation, aioice (Python, PyPI), on loopback, then
//! exchanges data over the selected pair (issue 4, "Interoperability"; ICE
//! level only, no QUIC).
//!
//! The aioice side is `tests/aioice/peer.py`, run as a child process (killed
//! by PID on drop). The test exchanges the two descriptions over the child's
//! stdin/stdout (one JSON line each way), drives natkit's agent with std UDP
//! sockets on 127.0.0.x and a small polling loop, waits until natkit reports
//! [`Event::Connected`] and aioice's `connect()` returns, then sends 50
//! datagrams of 4 to 1200 bytes from natkit over its selected pair, which
//! aioice's `recv()` returns and its `send()` echoes back, reversed behind
//! an "E", over the pair it uses.
//!
//! What "agree on the pair" means depends on who nominates (see
//! [`check_paths`]): natkit nominating, aioice must take exactly natkit's
//! pair; aioice nominating, it uses RFC 5245 aggressive nomination and
//! nominates every pair it checks, natkit must select the highest-priority
//! one of them (RFC 8445 §8.1.1), while aioice itself sends on the pair it
//! nominated last, which with several candidates is a different (valid)
//! pair. The run prints it when that happens.
//!
//! aioice must be installed (`bash scripts/deps/aioice.sh`, which
//! `scripts/test.sh` runs, or `python3 -m pip install aioice`): without it
//! every test here fails saying so, it never passes silently.
//!
//! Run with `cargo nextest run -p natkit-ice --test interop_aioice`; add
//! `--no-capture` to see the selected pairs and timings, and
//! `AIOICE_VERBOSE=1` for aioice's log of every STUN message (shown when a
//! test fails).

mod interop;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use interop::{json_addr, mirrored, peer_description, role_name, Natkit, Path, PeerProcess};
use natkit_ice::{CandidateKind, Event, Role, SelectedPair};
use serde_json::Value;

/// From handing natkit's description to aioice until both agents report a
/// selected pair. Loopback ICE takes well under a second; the margin is for
/// a loaded 2-core machine starting Python.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// For aioice to start, gather and print its description (Python and
/// aioice's imports take about 0.3 s idle, a few seconds under load).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(8);
/// For every data datagram to come back (about 20 ms idle).
const DATA_TIMEOUT: Duration = Duration::from_secs(4);
/// For aioice to answer "bye", and then to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(3);

/// Data datagrams sent natkit -> aioice -> natkit.
const DATAGRAMS: usize = 50;
/// Largest data datagram (a typical QUIC packet size).
const MAX_DATAGRAM: usize = 1200;
/// Datagrams in flight at once: loopback loses nothing unless a socket
/// buffer overflows, and this keeps far below any buffer.
const WINDOW: usize = 8;

// --- the aioice peer ------------------------------------------------------

/// `python3` can import aioice, or the test fails here telling how to
/// install it (CI installs it through scripts/deps/aioice.sh).
fn require_aioice() {
    interop::require_python(
        "python3",
        "import aioice",
        "the aioice interop test needs Python 3 with the aioice package: \
         run `bash scripts/deps/aioice.sh` (as root on Debian it installs it) \
         or `python3 -m pip install aioice`",
    );
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/aioice/peer.py")
}

/// Start aioice as `role` ("controlling" or "controlled") with host
/// candidates on `addresses`.
fn spawn_aioice(role: &str, addresses: &[IpAddr]) -> PeerProcess {
    require_aioice();
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(peer_script()).args(["--role", role]);
    for a in addresses {
        cmd.args(["--address", &a.to_string()]);
    }
    // Bounded on the Python side too, should this process die without
    // closing the child's stdin.
    cmd.args(["--connect-timeout", "15", "--lifetime", "40"]);
    if std::env::var_os("AIOICE_VERBOSE").is_some() {
        cmd.arg("--verbose");
    }
    PeerProcess::spawn("aioice", cmd)
}

// --- data: natkit -> aioice -> natkit --------------------------------------

/// Data datagram `seq` of `len` bytes (4..=MAX_DATAGRAM).
///
/// Byte 0 is 'D' (0x44): not 0-3, so neither side takes it for STUN
/// (RFC 7983 §7). Bytes 2-3 are 0xFFFF because aioice's parser tells STUN
/// from data only by "20 + the length field = datagram size" and a known
/// method (it never checks the magic cookie): a length field of 65535
/// matches no datagram we send. The rest is pseudo-random.
fn data_datagram(seq: u8, len: usize) -> Vec<u8> {
    let mut d = vec![b'D', seq, 0xFF, 0xFF];
    let mut x: u32 = 0x9E37_79B9 ^ (u32::from(seq) << 16) ^ len as u32;
    while d.len() < len {
        // xorshift32
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        d.push(x as u8);
    }
    d.truncate(len);
    d
}

/// Sizes covering the edges (STUN header size, a UDP/IPv4 576-byte path)
/// and a spread up to [`MAX_DATAGRAM`].
fn datagram_sizes() -> Vec<usize> {
    let edges = [
        4,
        5,
        19,
        20,
        21,
        28,
        100,
        548,
        576,
        1024,
        1199,
        MAX_DATAGRAM,
    ];
    let mut sizes: Vec<usize> = edges.to_vec();
    let mut x: u32 = 12345;
    while sizes.len() < DATAGRAMS {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        sizes.push(4 + (x >> 8) as usize % (MAX_DATAGRAM - 3));
    }
    sizes
}

/// The echo peer.py sends for `d`.
fn echo_of(d: &[u8]) -> Vec<u8> {
    let mut e = vec![b'E'];
    e.extend(d.iter().rev());
    e
}

/// What came back.
struct Echoes {
    took: Duration,
    /// How many echoes arrived over each path, as (our socket, from).
    paths: BTreeMap<Path, usize>,
}

/// Send [`DATAGRAMS`] datagrams over natkit's selected pair with a window
/// of [`WINDOW`] in flight, and check each comes back echoed exactly once
/// and intact. The agent keeps running meanwhile (aioice's consent checks
/// need answers).
fn exchange_data(nk: &mut Natkit, peer: &mut PeerProcess, pair: &SelectedPair) -> Echoes {
    let (local, remote) = (pair.local.base, pair.remote.addr);
    let sizes = datagram_sizes();
    let sent: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| data_datagram(i as u8, n))
        .collect();
    let mut echoed = [false; DATAGRAMS];
    let mut paths = BTreeMap::new();
    let (mut next, mut done) = (0usize, 0usize);
    let t0 = Instant::now();
    let deadline = t0 + DATA_TIMEOUT;
    while done < DATAGRAMS {
        assert!(
            Instant::now() < deadline,
            "{done} of {DATAGRAMS} echoes back within {DATA_TIMEOUT:?} (next to send: {next})\n{}",
            nk.diagnostics()
        );
        while next < DATAGRAMS && next - done < WINDOW {
            nk.socket_for(local)
                .send_to(&sent[next], remote)
                .expect("send a data datagram");
            next += 1;
        }
        if let Some(v) = peer.try_line() {
            panic!("aioice printed {v} during the data exchange");
        }
        nk.pump();
        while let Some((from, to, d)) = nk.app.pop_front() {
            assert!(
                d.len() >= 3 && d[0] == b'E',
                "not an echo: {:02x?}",
                &d[..d.len().min(16)]
            );
            // The reversed datagram ends with 'D', seq.
            let seq = d[d.len() - 2] as usize;
            assert!(seq < DATAGRAMS, "echo of an unknown datagram {seq}");
            assert_eq!(d, echo_of(&sent[seq]), "echo of datagram {seq} corrupted");
            assert!(!echoed[seq], "datagram {seq} echoed twice");
            echoed[seq] = true;
            done += 1;
            *paths.entry((to, from)).or_insert(0) += 1;
        }
    }
    Echoes {
        took: t0.elapsed(),
        paths,
    }
}

// --- one interop run --------------------------------------------------------

struct Case {
    natkit_role: Role,
    aioice_role: &'static str,
    /// natkit's host addresses.
    natkit_addrs: &'static [&'static str],
    /// aioice's host addresses.
    aioice_addrs: &'static [&'static str],
}

fn ips(a: &[&str]) -> Vec<IpAddr> {
    a.iter().map(|s| s.parse().unwrap()).collect()
}

/// What a run observed, for the tests' own assertions.
struct Outcome {
    natkit_role: Role,
    aioice_role: String,
    natkit: Natkit,
}

fn run(case: Case) -> Outcome {
    let start = Instant::now();
    let mut peer = spawn_aioice(case.aioice_role, &ips(case.aioice_addrs));
    let mut nk = Natkit::new(case.natkit_role, &ips(case.natkit_addrs));

    // Signalling: aioice's description first, then natkit's.
    let desc = peer.line(STARTUP_TIMEOUT, "its description");
    assert_eq!(desc["type"], "description", "{desc}");
    nk.set_remote(&desc);
    peer.send_line(&peer_description(&nk.agent));
    let t0 = Instant::now();

    // ICE: until natkit reports Connected and aioice's connect() returns.
    let deadline = t0 + CONNECT_TIMEOUT;
    let mut natkit_ms = None;
    let mut connected: Option<Value> = None;
    while natkit_ms.is_none() || connected.is_none() {
        if Instant::now() >= deadline {
            panic!(
                "ICE did not complete within {CONNECT_TIMEOUT:?}: natkit connected {}, aioice connected {}\n{}",
                natkit_ms.is_some(),
                connected.is_some(),
                nk.diagnostics()
            );
        }
        nk.pump();
        if let Some(f) = nk.failure() {
            panic!("natkit failed: {f}\n{}", nk.diagnostics());
        }
        if natkit_ms.is_none() && nk.connected().is_some() {
            natkit_ms = Some(t0.elapsed());
        }
        if let Some(v) = peer.try_line() {
            assert_eq!(v["type"], "connected", "aioice: {v}");
            connected = Some(v);
        }
    }
    let connected = connected.unwrap();
    let first = nk.connected().unwrap().clone();

    let selected = nk.settle_connected();
    // Only signalled candidates: no NAT on loopback, nothing peer-reflexive.
    assert_eq!(selected.local.kind, CandidateKind::Host, "{selected}");
    assert_eq!(selected.remote.kind, CandidateKind::Host, "{selected}");
    // Exactly one controlling agent (RFC 8445 §6.1.1, §7.3.1.1).
    let aioice_role = connected["role"].as_str().unwrap_or_default().to_owned();
    assert_ne!(
        role_name(nk.agent.role()),
        aioice_role,
        "both agents ended {aioice_role}"
    );

    let echoes = exchange_data(&mut nk, &mut peer, &selected);

    // Shut down: "bye" over the pair; aioice reports its pairs and exits 0.
    nk.socket_for(selected.local.base)
        .send_to(b"bye", selected.remote.addr)
        .expect("send bye");
    let bye_deadline = Instant::now() + EXIT_TIMEOUT;
    let bye = loop {
        nk.pump();
        if let Some(v) = peer.try_line() {
            break v;
        }
        assert!(
            Instant::now() < bye_deadline,
            "aioice did not answer bye within {EXIT_TIMEOUT:?}"
        );
    };
    assert_eq!(bye["type"], "closed", "{bye}");
    assert_eq!(bye["reason"], "bye", "{bye}");
    assert_eq!(bye["echoed"], DATAGRAMS, "{bye}");
    let status = peer.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "aioice exited with {status}");

    let symmetric = check_paths(&nk, &selected, &aioice_role, &connected, &bye, &echoes);

    println!(
        "natkit {} vs aioice {} (ended {} / {aioice_role}): natkit connected in {:.0} ms, \
         aioice's connect() returned in {} ms; natkit selected {selected} (first {first}); \
         aioice sends on {} -> {}{}; {DATAGRAMS} echoes in {:.0} ms over {:?}; \
         {} STUN datagrams refused by natkit; whole run {:.2} s",
        role_name(case.natkit_role),
        case.aioice_role,
        role_name(nk.agent.role()),
        natkit_ms.unwrap().as_secs_f64() * 1e3,
        connected["ms"],
        json_addr(&bye["local"]),
        json_addr(&bye["remote"]),
        if symmetric {
            ""
        } else {
            " (NOT natkit's selected pair: aioice sends on the pair it nominated last)"
        },
        echoes.took.as_secs_f64() * 1e3,
        echoes.paths,
        nk.refused.len(),
        start.elapsed().as_secs_f64()
    );
    Outcome {
        natkit_role: case.natkit_role,
        aioice_role,
        natkit: nk,
    }
}

/// Whether the agents agree on the pair and the data used valid pairs.
/// Returns whether aioice ended sending on natkit's selected pair.
///
/// - aioice controlled: natkit nominated once (regular nomination, RFC 8445
///   §8.1.1); aioice must have taken exactly that pair (§7.3.1.5) and the
///   echoes must come back over it.
/// - aioice controlling: aioice nominates aggressively (RFC 5245 §8.1.1.2:
///   USE-CANDIDATE on every check), so several pairs end nominated. RFC 8445
///   §8.1.1 then says both agents use the highest-priority one: natkit's
///   selected pair must be among aioice's nominated pairs with no nominated
///   pair above it. aioice itself sends on the pair whose check completed
///   last, which may differ; its echoes must still come over a pair both
///   sides validated.
fn check_paths(
    nk: &Natkit,
    selected: &SelectedPair,
    aioice_role: &str,
    connected: &Value,
    bye: &Value,
    echoes: &Echoes,
) -> bool {
    let sel: Path = (selected.local.base, selected.remote.addr);
    let list = nk.agent.check_list();
    let succeeded = |p: Path| {
        list.iter()
            .find(|q| (q.local.addr, q.remote.addr) == p)
            .filter(|q| q.state == natkit_ice::PairState::Succeeded)
            .map(|q| q.priority)
    };
    let nominated: Vec<Path> = bye["nominated"]
        .as_array()
        .unwrap_or_else(|| panic!("aioice lists no nominated pairs: {bye}"))
        .iter()
        .map(mirrored)
        .collect();
    let (at_connect, at_end) = (mirrored(connected), mirrored(bye));
    let diag = || {
        format!(
            "natkit selected {selected}; aioice nominated {nominated:?}, sent on {at_connect:?} \
             at connect() and {at_end:?} at the end; echoes over {:?}\n{}",
            echoes.paths,
            nk.diagnostics()
        )
    };
    // Whatever aioice nominated or sent on, natkit validated too.
    for p in nominated.iter().chain([&at_connect, &at_end]) {
        assert!(
            succeeded(*p).is_some(),
            "aioice used pair {p:?}, not a valid pair for natkit\n{}",
            diag()
        );
    }
    assert!(
        !nominated.is_empty(),
        "aioice nominated nothing\n{}",
        diag()
    );
    if aioice_role == "controlled" {
        assert_eq!(nominated, vec![sel], "{}", diag());
        assert_eq!(at_connect, sel, "{}", diag());
        assert_eq!(at_end, sel, "{}", diag());
        assert_eq!(
            echoes.paths.keys().collect::<Vec<_>>(),
            vec![&sel],
            "echoes off the selected pair\n{}",
            diag()
        );
    } else {
        assert!(
            nominated.contains(&sel),
            "natkit selected a pair aioice never nominated\n{}",
            diag()
        );
        let best = nominated.iter().filter_map(|p| succeeded(*p)).max();
        assert_eq!(
            succeeded(sel),
            best,
            "natkit did not select the highest-priority nominated pair (RFC 8445 §8.1.1)\n{}",
            diag()
        );
        for p in echoes.paths.keys() {
            assert!(
                nominated.contains(p) || *p == at_end || *p == at_connect,
                "echo over {p:?}, a pair aioice never nominated\n{}",
                diag()
            );
        }
    }
    at_end == sel
}

// --- the tests --------------------------------------------------------------

#[test]
fn natkit_controlling_aioice_controlled() {
    let o = run(Case {
        natkit_role: Role::Controlling,
        aioice_role: "controlled",
        natkit_addrs: &["127.0.0.1"],
        aioice_addrs: &["127.0.0.1"],
    });
    assert_eq!(o.natkit.agent.role(), o.natkit_role);
}

#[test]
fn natkit_controlled_aioice_controlling() {
    let o = run(Case {
        natkit_role: Role::Controlled,
        aioice_role: "controlling",
        natkit_addrs: &["127.0.0.1"],
        aioice_addrs: &["127.0.0.1"],
    });
    assert_eq!(o.natkit.agent.role(), o.natkit_role);
}

/// Two host candidates on each side (127.0.0.1 and 127.0.0.2): four pairs,
/// two foundations a side, so pairing, unfreezing and the choice of the
/// nominated pair are exercised.
#[test]
fn natkit_controlling_aioice_controlled_two_addresses() {
    let o = run(Case {
        natkit_role: Role::Controlling,
        aioice_role: "controlled",
        natkit_addrs: &["127.0.0.1", "127.0.0.2"],
        aioice_addrs: &["127.0.0.1", "127.0.0.2"],
    });
    assert_eq!(o.natkit.agent.role(), o.natkit_role);
    // Every pair works on loopback, so natkit nominates a pair of the top
    // priority (aioice gives both its host candidates the same priority, so
    // two pairs tie there).
    let top = o.natkit.agent.check_list()[0].priority;
    let sel = o.natkit.agent.selected_pair().unwrap();
    let sel_priority = o
        .natkit
        .agent
        .check_list()
        .iter()
        .find(|p| (p.local.addr, p.remote.addr) == (sel.local.base, sel.remote.addr))
        .map(|p| p.priority);
    assert_eq!(sel_priority, Some(top), "selected {sel}");
}

/// aioice nominates every pair it checks (aggressive nomination): natkit
/// must keep the highest-priority nominated one (checked in `check_paths`).
#[test]
fn natkit_controlled_aioice_controlling_two_addresses() {
    let o = run(Case {
        natkit_role: Role::Controlled,
        aioice_role: "controlling",
        natkit_addrs: &["127.0.0.1", "127.0.0.2"],
        aioice_addrs: &["127.0.0.1", "127.0.0.2"],
    });
    assert_eq!(o.natkit.agent.role(), o.natkit_role);
}

/// Both start controlling: the tie-breakers decide (RFC 8445 §7.3.1.1,
/// 487 Role Conflict in §7.2.5.1); either may win, but exactly one ends
/// controlling (checked in `run`) and natkit reports a switch if it made one.
#[test]
fn role_conflict_both_controlling() {
    let o = run(Case {
        natkit_role: Role::Controlling,
        aioice_role: "controlling",
        natkit_addrs: &["127.0.0.1"],
        aioice_addrs: &["127.0.0.1"],
    });
    check_role_events(&o);
}

/// Both start controlled: the tie-breakers pick one to become controlling.
#[test]
fn role_conflict_both_controlled() {
    let o = run(Case {
        natkit_role: Role::Controlled,
        aioice_role: "controlled",
        natkit_addrs: &["127.0.0.1"],
        aioice_addrs: &["127.0.0.1"],
    });
    check_role_events(&o);
}

/// natkit's RoleChanged events match the role it ended in.
fn check_role_events(o: &Outcome) {
    let switched = o.natkit.events.iter().rev().find_map(|e| match e {
        Event::RoleChanged(r) => Some(*r),
        _ => None,
    });
    let end = o.natkit.agent.role();
    match switched {
        Some(r) => assert_eq!(r, end),
        None => assert_eq!(end, o.natkit_role, "role changed without RoleChanged"),
    }
    println!(
        "role conflict: natkit ended {} ({}), aioice {}",
        role_name(end),
        if switched.is_some() {
            "switched"
        } else {
            "kept its role"
        },
        o.aioice_role
    );
}
