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

    // First half, then wait until the listen side has most of it: the
    // transfer is under way on the first path.
    let half = CHUNK * CHUNKS / 2;
    let mut stdin = pair.connect.take_stdin().expect("connect stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data[..half]).map(|_| (stdin, data))
    });
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
    let (mut stdin, data) = writer.join().unwrap().expect("first half written");
    let rest = std::thread::spawn(move || {
        use std::io::Write;
        let r = stdin.write_all(&data[half..]);
        (r, data)
    });
    let done = pair.connect.wait(Duration::from_secs(90)).is_some()
        && pair.listen.wait(Duration::from_secs(30)).is_some();
    let (_, data) = rest.join().unwrap();
    let got = pair.listen.received();
    let got_back = pair.connect.received();
    assert!(
        done,
        "peers did not finish:\n{}\n{}",
        pair.listen.log_tail(20),
        pair.connect.log_tail(20)
    );
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
    // After the change the listen side talks to the NAT's new address.
    let report = pair.listen.report().expect("listen report");
    let remote = report.remote.clone().unwrap_or_default();
    let relayed = report.relayed();
    assert!(
        relayed || remote.contains(&new.to_string()),
        "listen's final path {:?} to {remote}, want the new address {new}",
        report.path
    );
}
