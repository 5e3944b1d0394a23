//! Test 5 of issue 5: losing the peer, and the relay restarting under a
//! relayed session, are reported as the errors ice-agent defines (consent
//! lost, RFC 7675) within bounded time; after the restart the relay serves
//! new sessions.

use std::time::{Duration, Instant};

use natkit_lab::peer::{Pair, PeerOptions};
use natkit_lab::{Lab, NatKind, SiteSpec, TopologySpec};

/// How natkit words losing the peer: ice-agent's `Error::ConsentLost`
/// (RFC 7675), or the QUIC idle timeout that follows it, both as "the peer
/// vanished".
const PEER_GONE: &[&str] = &["the peer vanished"];
/// How natkit words losing the relay under a relay-only session: the relay
/// lost (`Error::RelayLost`: its TCP/TLS connection dropped, or a probe of a
/// silent UDP relay went unanswered or drew a 437), the peer vanished
/// (consent lost on the relayed path first: with this test's 5 s consent
/// timeout the UDP probe's retransmissions can outlast it), no usable path
/// left after the ICE restart (`Error::NoPath`), or no candidate at all
/// (`Error::NoCandidates`).
const RELAY_GONE: &[&str] = &[
    "relay lost",
    "the peer vanished",
    "no usable path to the peer",
    "servers unreachable",
];
/// The peers' consent timeout (RFC 7675 §5.1 says 30 s; natkit's
/// `--consent-timeout` shortens it for tests).
const CONSENT: Duration = Duration::from_secs(5);
/// How long the error may take: QUIC's idle timeout (twice the consent
/// timeout), plus a margin for a loaded machine.
const BOUND: Duration = Duration::from_secs(25);

/// The error the peer reported (its report's `error`, whose `status` must
/// be `error`), if it is one of `want`; otherwise why not.
fn reported(peer: &natkit_lab::peer::Peer, want: &[&str]) -> Result<String, String> {
    let log = peer.log_tail(30);
    let Some(report) = peer.report() else {
        return Err(format!("no report; stderr:\n{log}"));
    };
    let status = report.raw["status"].as_str().unwrap_or("");
    let error = report.raw["error"].as_str().unwrap_or("").to_string();
    if status != "error" || !want.iter().any(|w| error.starts_with(w)) {
        return Err(format!(
            "status {status:?}, error {error:?}, want one of {want:?}; stderr:\n{log}"
        ));
    }
    Ok(error)
}

fn connected(pair: &mut Pair) {
    pair.connect.write(b"hello").expect("write");
    let t0 = Instant::now();
    while pair.listen.received_so_far() < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never connected:\n{}\n{}",
            pair.listen.log_tail(20),
            pair.connect.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The listen side is killed; connect must report consent lost.
fn peer_loss(lab: &Lab, opts: &PeerOptions) -> Result<Duration, String> {
    let (fc, pr) = (lab.site("fc").unwrap(), lab.site("pr").unwrap());
    let mut pair = Pair::start(lab, fc, opts, pr, opts, "loss").map_err(|e| e.to_string())?;
    connected(&mut pair);
    pair.listen.kill();
    let t0 = Instant::now();
    let status = pair.connect.wait(BOUND);
    let took = t0.elapsed();
    let log = pair.connect.log_tail(30);
    if !status.is_some_and(|s| !s.success()) {
        return Err(format!(
            "connect after peer loss: {status:?} after {took:?}\n{log}"
        ));
    }
    let error = reported(&pair.connect, PEER_GONE)?;
    eprintln!("peer loss: connect reported {error:?} after {took:?}");
    Ok(took)
}

/// A relayed session loses its path when the relay dies: both sides must
/// report consent lost; once the relay is back, a new session connects.
fn relay_restart(lab: &Lab, opts: &PeerOptions) -> Result<Duration, String> {
    let (fc, pr) = (lab.site("fc").unwrap(), lab.site("pr").unwrap());
    let mut relay_only = opts.clone();
    relay_only.relay_only = true;
    let mut pair =
        Pair::start(lab, fc, &relay_only, pr, &relay_only, "relay").map_err(|e| e.to_string())?;
    connected(&mut pair);
    match pair.connect.report() {
        Some(r) if r.relayed() => {}
        Some(r) => return Err(format!("--relay-only session not relayed: {:?}", r.path)),
        None => return Err("--relay-only session wrote no connect report".into()),
    }
    lab.stop_turn(false).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (a, b) = (pair.listen.wait(BOUND), pair.connect.wait(BOUND));
    let took = t0.elapsed();
    for (peer, status) in [(&pair.listen, a), (&pair.connect, b)] {
        let log = peer.log_tail(30);
        if !status.is_some_and(|s| !s.success()) {
            return Err(format!(
                "{:?} after the relay died: {status:?} after {took:?}\n{log}",
                peer.role
            ));
        }
        let error = reported(peer, RELAY_GONE)?;
        eprintln!(
            "relay loss: {:?} reported {error:?} after {took:?}",
            peer.role
        );
    }
    lab.restart_turn().map_err(|e| e.to_string())?;
    let mut pair =
        Pair::start(lab, fc, &relay_only, pr, &relay_only, "again").map_err(|e| e.to_string())?;
    connected(&mut pair);
    Ok(took)
}

#[test]
fn peer_loss_and_relay_restart_are_reported() {
    let spec = TopologySpec {
        sites: vec![
            SiteSpec::new("fc", NatKind::FullCone, false),
            SiteSpec::new("pr", NatKind::PortRestrictedCone, false),
        ],
    };
    let lab = Lab::build("fl", &spec).expect("build the lab");
    let mut opts = PeerOptions::for_site(lab.site("pr").unwrap());
    opts.timeout = Duration::from_secs(60);
    opts.consent_timeout = Some(CONSENT);
    // Both at once: each waits out a consent timeout. The peer-loss pair
    // connects directly (full cone with port-restricted), so the relay
    // going away under the other does not touch it.
    let (loss, relay) = std::thread::scope(|s| {
        let a = s.spawn(|| peer_loss(&lab, &opts));
        let b = s.spawn(|| relay_restart(&lab, &opts));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("peer loss: {loss:?}; relay restart: {relay:?}");
    assert!(
        loss.is_ok() && relay.is_ok(),
        "peer loss: {loss:?}\nrelay restart: {relay:?}"
    );
}
