//! Test 4 of issue 5: mid-transfer, one side's NAT is renumbered (new
//! outside address, every mapping flushed). The agent must notice, restart
//! ICE, and the QUIC transfer must complete intact.

use std::time::{Duration, Instant};

use natkit_lab::peer::{self, Pair, PeerOptions};
use natkit_lab::{Lab, NatKind, SiteSpec, TopologySpec};

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 32;

#[test]
fn transfer_survives_a_renumbered_nat() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("fc", NatKind::FullCone, false),
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
        ],
    };
    let lab = Lab::build("nw", &spec).expect("build the lab");
    let fc = lab.site("fc").unwrap();
    let pr = lab.site("pr").unwrap();
    let mut opts = PeerOptions::for_site(pr);
    opts.timeout = Duration::from_secs(60);
    // The connect side calls the path degraded, and restarts ICE, after
    // 3 s without answered checks; consent stays at RFC 7675's 30 s, so
    // neither side gives the other up while the restart (new gathering
    // from the new address, new descriptions through the files) runs.
    opts.degraded_after = Some(Duration::from_secs(3));
    let mut pair = Pair::start(&lab, fc, &opts, pr, &opts, "renumber").expect("start peers");
    let data = peer::payload(CHUNK * CHUNKS);
    let back = peer::payload(CHUNK);
    pair.listen.write(&back).expect("listen stdin");
    pair.listen.close_stdin();

    // One writer: the first half, then (once the NAT is renumbered) the
    // rest, so the renumbering always lands mid-transfer. If this thread
    // panics first, the channel closes and the writer stops.
    let half = CHUNK * CHUNKS / 2;
    let mut stdin = pair.connect.take_stdin().expect("connect stdin");
    let (renumbered, go_on) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data[..half])?;
        if go_on.recv().is_err() {
            return Err(std::io::Error::other("the test gave up before renumbering"));
        }
        stdin.write_all(&data[half..])?;
        Ok(data)
    });
    // Wait until the listen side has a good part of the first half: the
    // transfer is under way on the first path.
    let t0 = Instant::now();
    while (pair.listen.received_so_far() as usize) < half / 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first path never carried data:\n{}\n{}",
            pair.listen.log_tail(20),
            pair.connect.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = lab.renumber_wan(pr).expect("renumber the NAT");
    eprintln!(
        "renumbered {} to {new} after {} bytes",
        pr.name,
        pair.listen.received_so_far()
    );
    // A writer that already failed shows its error when joined.
    let _ = renumbered.send(());
    // Bounded waits; on timeout the peers are killed, which also ends a
    // writer blocked on the connect side's stdin (broken pipe).
    let done = pair.connect.wait(Duration::from_secs(90)).is_some()
        && pair.listen.wait(Duration::from_secs(30)).is_some();
    if !done {
        pair.connect.kill();
        pair.listen.kill();
    }
    let got = pair.listen.received();
    let got_back = pair.connect.received();
    assert!(
        done,
        "peers did not finish:\n{}\n{}",
        pair.listen.log_tail(20),
        pair.connect.log_tail(20)
    );
    let data = writer
        .join()
        .expect("the writer thread")
        .expect("all data written to the connect side");
    assert_eq!(
        (got.bytes as usize, got.sha256.as_str()),
        (data.len(), peer::sha256_hex(&data).as_str()),
        "data across the renumbering:\n{}",
        pair.connect.log_tail(20)
    );
    assert_eq!(got_back.sha256, peer::sha256_hex(&back));
    // The agent noticed and restarted ICE (connect restarts, listen
    // answers).
    let count = |r: Option<peer::Report>, k: &str| {
        r.and_then(|r| r.raw.get(k).and_then(|v| v.as_u64()))
            .unwrap_or(0)
    };
    let restarts = count(pair.connect.report(), "restarts_started")
        + count(pair.listen.report(), "restarts_answered");
    eprintln!(
        "listen report: {}\nconnect report: {}",
        pair.listen
            .report()
            .map_or(String::new(), |r| r.raw.to_string()),
        pair.connect
            .report()
            .map_or(String::new(), |r| r.raw.to_string())
    );
    assert!(restarts >= 1, "no ICE restart reported");
    // Full cone with port-restricted cone punches directly (the matrix
    // and hole_punch tests pin that), so after the restart the listen
    // side's path is direct, to the NAT's new outside address.
    let report = pair.listen.report().expect("listen report");
    let changes = report.raw["path_changes"].as_array().map_or(0, Vec::len);
    assert!(changes >= 1, "listen reported no path change");
    let remote = report.remote.clone().unwrap_or_default();
    assert!(
        !report.relayed() && remote.starts_with(&format!("{new}:")),
        "listen's final path {:?} to {remote:?}, want a direct path to the new address {new}",
        report.path
    );
}
