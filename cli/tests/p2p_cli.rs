//! `natkit listen` / `connect` / `send` / `receive` through the binary, two
//! processes on loopback exchanging descriptions through files: data both
//! ways byte for byte, the report, relay-only through natkit-turn over UDP
//! and TCP, a verified file transfer, and the failures that must be named
//! (damaged description, wrong TURN password, a peer killed mid-transfer).
//! Every child is killed by PID when its handle drops; every wait is
//! bounded.

mod p2p_support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use natkit_testkit::{free_port, ready, tls, TempDir, TurnRelay};
use p2p_support::*;
use serde_json::Value;

/// Run listen and connect with these inputs; both must exit 0 with the
/// other's input on their stdout.
fn pipe_pair(dir: &TempDir, extra: &[&str], a: &[u8], b: &[u8]) {
    std::fs::write(dir.join("a.in"), a).unwrap();
    std::fs::write(dir.join("b.in"), b).unwrap();
    let (mut l, _) = spawn(
        dir,
        "listen",
        &cmd(&["listen"], side(dir, "listen", "connect", extra)),
        Input::File(&dir.join("a.in")),
    );
    let (mut c, _) = spawn(
        dir,
        "connect",
        &cmd(&["connect"], side(dir, "connect", "listen", extra)),
        Input::File(&dir.join("b.in")),
    );
    let (sl, sc) = (l.wait_or_kill(LIMIT), c.wait_or_kill(LIMIT));
    assert!(
        sl.is_some_and(|s| s.success()) && sc.is_some_and(|s| s.success()),
        "listen: {sl:?}, connect: {sc:?}\nlisten's stderr:\n{}\nconnect's stderr:\n{}",
        l.err(),
        c.err()
    );
    let got_c = std::fs::read(dir.join("connect.out")).unwrap();
    let got_l = std::fs::read(dir.join("listen.out")).unwrap();
    assert_eq!(got_c.len(), a.len());
    assert!(
        sha(&got_c) == sha(a),
        "connect's stdout differs from listen's stdin"
    );
    assert_eq!(got_l.len(), b.len());
    assert!(
        sha(&got_l) == sha(b),
        "listen's stdout differs from connect's stdin"
    );
}

/// The two reports agree with each other and with what was moved.
fn check_reports(dir: &TempDir, a: usize, b: usize, kind: &str) {
    let l = report(dir, "listen");
    let c = report(dir, "connect");
    for (r, role, sent, got) in [(&l, "controlled", a, b), (&c, "controlling", b, a)] {
        assert_eq!(r["status"], "ok", "{r:#}");
        assert_eq!(r["role"], role, "{r:#}");
        assert_eq!(r["path"], kind, "{r:#}");
        assert_eq!(r["bytes_sent"], sent as u64, "{r:#}");
        assert_eq!(r["bytes_received"], got as u64, "{r:#}");
        let ms = r["connect_ms"].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 15_000.0, "{r:#}");
        assert!(r["rtt_ms"].as_f64().is_some_and(|x| x >= 0.0), "{r:#}");
        // One host pair on loopback: nothing to change to.
        assert_eq!(r["path_changes"].as_array().map(Vec::len), Some(0), "{r:#}");
        assert!(r["error"].is_null(), "{r:#}");
    }
    // One path, seen from both ends.
    assert_eq!(l["local"], c["remote"], "{l:#}\n{c:#}");
    assert_eq!(l["remote"], c["local"], "{l:#}\n{c:#}");
    assert_eq!(l["local_kind"], c["remote_kind"]);
    assert_eq!(l["remote_kind"], c["local_kind"]);
}

#[test]
fn listen_and_connect_pipe_a_mebibyte_each_way() {
    let dir = scratch("pipe");
    let (a, b) = (data(1_300_000, 7), data(1_100_000, 11));
    let t0 = Instant::now();
    pipe_pair(&dir, &[], &a, &b);
    check_reports(&dir, a.len(), b.len(), "host");
    let r = report(&dir, "connect");
    assert_eq!(r["local_kind"], "host");
    assert!(
        r["local"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r:#}"
    );
    // The path and the time are told on stderr too.
    let err = std::fs::read_to_string(dir.join("connect.err")).unwrap();
    assert!(
        err.contains("connected in") && err.contains("over host path"),
        "{err}"
    );
    assert!(t0.elapsed() < LIMIT, "{:?}", t0.elapsed());
}

/// natkit-turn with TURN over TLS too, on `tls_port`, with a fresh
/// self-signed certificate (returned as PEM, for --ca).
fn start_tls_relay(dir: &TempDir, tls_port: u16) -> (TurnRelay, PathBuf) {
    let (c, k) = tls::self_signed_ca(dir.path(), "relay");
    let listen = format!("127.0.0.1:{tls_port}");
    let (cs, ks) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay(&["--tls-listen", &listen, "--cert", &cs, "--key", &ks]);
    ready::wait_tcp(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        "natkit-turn's TLS port",
        Duration::from_secs(20),
    );
    (relay, c)
}

fn relay_only(transport: &str) {
    let dir = scratch(&format!("relay-{transport}"));
    let (_relay, uri, ca) = if transport == "tls" {
        let tls_port = free_port();
        let (relay, ca) = start_tls_relay(&dir, tls_port);
        (relay, format!("turns:127.0.0.1:{tls_port}"), Some(ca))
    } else {
        let relay = start_relay(&[]);
        let uri = relay_uri(&relay, transport);
        (relay, uri, None)
    };
    let ca = ca.map(|p| p.display().to_string());
    let mut extra = vec![
        "--relay-only",
        "--turn",
        uri.as_str(),
        "--turn-user",
        "p2p",
        "--turn-password",
        "right-pw",
    ];
    if let Some(ca) = &ca {
        extra.extend(["--ca", ca.as_str()]);
    }
    let (a, b) = (data(200_000, 3), data(150_000, 5));
    pipe_pair(&dir, &extra, &a, &b);
    check_reports(&dir, a.len(), b.len(), "relay");
    let r = report(&dir, "connect");
    assert_eq!(r["local_kind"], "relay", "{r:#}");
    assert_eq!(r["remote_kind"], "relay", "{r:#}");
}

#[test]
fn relay_only_over_turn_udp_reports_the_relay_path() {
    relay_only("udp");
}

#[test]
fn relay_only_over_turn_tcp_reports_the_relay_path() {
    relay_only("tcp");
}

#[test]
fn relay_only_over_turns_reports_the_relay_path() {
    relay_only("tls");
}

#[test]
fn send_and_receive_move_a_verified_file() {
    let dir = scratch("file");
    let content = data(2_500_000, 13);
    std::fs::write(dir.join("payload.bin"), &content).unwrap();
    std::fs::create_dir(dir.join("inbox")).unwrap();
    let (mut s, _) = spawn(
        &dir,
        "send",
        &cmd(
            &["send", &dir.join("payload.bin").display().to_string()],
            side(&dir, "send", "receive", &[]),
        ),
        Input::Null,
    );
    let (mut r, _) = spawn(
        &dir,
        "receive",
        &cmd(
            &[
                "receive",
                "--yes",
                "--output",
                &dir.join("inbox").display().to_string(),
            ],
            side(&dir, "receive", "send", &[]),
        ),
        Input::Null,
    );
    assert_ok(&mut r);
    assert_ok(&mut s);
    let got = std::fs::read(dir.join("inbox/payload.bin")).unwrap();
    assert!(got == content, "received file differs");
    // Nothing else in the output directory: the temporary name is gone.
    let names: Vec<_> = std::fs::read_dir(dir.join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let hash: String = sha(&content).iter().map(|b| format!("{b:02x}")).collect();
    let (se, re) = (s.err(), r.err());
    assert!(
        se.contains("verified by the receiver") && se.contains(&hash),
        "{se}"
    );
    assert!(re.contains(&hash) && re.contains("verified"), "{re}");
    assert_eq!(report(&dir, "send")["bytes_sent"], content.len() as u64);
    assert_eq!(
        report(&dir, "receive")["bytes_received"],
        content.len() as u64
    );
}

#[test]
fn a_damaged_description_is_named_as_such() {
    let dir = scratch("damaged");
    let good = a_description(&dir);
    // Cut short (a partial paste) and one character changed.
    let cut = good[..good.len() - 6].to_owned();
    let mut edited = good.clone().into_bytes();
    let i = edited.len() / 2;
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    for bad in [cut.as_str(), edited.as_str(), "hello"] {
        let t0 = Instant::now();
        let out = Command::new(natkit())
            .args(["connect", "--loopback", "--bind", "127.0.0.1", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(err.contains("description is unusable"), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    }
    // The same through --remote FILE: reported as damaged, not as a timeout.
    std::fs::write(dir.join("bad.desc"), &cut).unwrap();
    let out = Command::new(natkit())
        .args(["listen", "--loopback", "--bind", "127.0.0.1", "--wait", "1"])
        .arg("--remote")
        .arg(dir.join("bad.desc"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("description is unusable"), "{err}");
}

#[test]
fn a_wrong_turn_password_is_named_as_such() {
    let relay = start_relay(&[]);
    let dir = scratch("creds");
    let desc = a_description(&dir);
    let t0 = Instant::now();
    let out = Command::new(natkit())
        .args([
            "connect",
            "--loopback",
            "--bind",
            "127.0.0.1",
            "--relay-only",
            "--turn",
            &relay_uri(&relay, "udp"),
            "--turn-user",
            "p2p",
            "--turn-password",
            "wrong-pw",
            "--timeout",
            "10",
            &desc,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("wrong TURN credentials"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", relay.port())),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[test]
fn an_unreachable_turn_server_is_named_as_such() {
    let dir = scratch("unreachable");
    let desc = a_description(&dir);
    // A port nothing listens on: TCP is refused at once.
    let port = free_port();
    let uri = format!("turn:127.0.0.1:{port}?transport=tcp");
    let t0 = Instant::now();
    let out = Command::new(natkit())
        .args([
            "connect",
            "--loopback",
            "--bind",
            "127.0.0.1",
            "--relay-only",
            "--turn",
            &uri,
            "--turn-user",
            "p2p",
            "--turn-password",
            "pw",
            "--timeout",
            "10",
            &desc,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("servers unreachable"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
}

#[test]
fn no_usable_path_lists_what_was_tried_within_the_timeout() {
    let dir = scratch("nopath");
    // The donor is killed once its description is out: nobody answers.
    let desc = a_description(&dir);
    let t0 = Instant::now();
    let out = Command::new(natkit())
        .args([
            "connect",
            "--loopback",
            "--bind",
            "127.0.0.1",
            "--timeout",
            "3",
            &desc,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no usable path to the peer"), "{err}");
    assert!(err.contains("-> host 127.0.0.1:"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_fingerprint_that_does_not_match_is_refused_on_both_sides() {
    let dir = scratch("fingerprint");
    let (mut l, _l_in) = spawn(
        &dir,
        "listen",
        &cmd(&["listen", "--json"], side(&dir, "listen", "connect", &[])),
        Input::Pipe,
    );
    wait_until(
        Duration::from_secs(15),
        "the listener's description",
        || std::fs::read_to_string(dir.join("listen.desc")).is_ok_and(|t| !t.trim().is_empty()),
    );
    // The listener's description with one byte of its fingerprint changed:
    // whoever answers is not who the description names.
    let mut d: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("listen.desc")).unwrap()).unwrap();
    let fp = d["fingerprint"].as_str().unwrap().to_owned();
    let first = if fp.starts_with("00") { "11" } else { "00" };
    d["fingerprint"] = Value::String(format!("{first}{}", &fp[2..]));
    std::fs::write(dir.join("forged.desc"), d.to_string()).unwrap();
    let mut args = side(&dir, "connect", "forged", &[]);
    args.insert(0, "connect".into());
    let (mut c, _) = spawn(&dir, "connect", &args, Input::Null);
    let (sc, sl) = (c.wait(LIMIT), l.wait(LIMIT));
    let (ec, el) = (c.err(), l.err());
    assert!(!sc.success() && !sl.success(), "{ec}\n{el}");
    assert!(ec.contains("fingerprint mismatch"), "{ec}");
    assert!(el.contains("fingerprint mismatch"), "{el}");
}

#[test]
fn a_relay_that_dies_under_the_connection_is_named() {
    let mut relay = start_relay(&[]);
    let dir = scratch("relaylost");
    let uri = relay_uri(&relay, "tcp");
    let flags = [
        "--relay-only",
        "--turn",
        uri.as_str(),
        "--turn-user",
        "p2p",
        "--turn-password",
        "right-pw",
        "--consent-timeout",
        "3",
    ];
    let (mut l, _l_in) = spawn(
        &dir,
        "listen",
        &cmd(&["listen"], side(&dir, "listen", "connect", &flags)),
        Input::Pipe,
    );
    let (mut c, _c_in) = spawn(
        &dir,
        "connect",
        &cmd(&["connect"], side(&dir, "connect", "listen", &flags)),
        Input::Pipe,
    );
    wait_until(Duration::from_secs(15), "both connected", || {
        l.err().contains("connected in") && c.err().contains("connected in")
    });
    relay.child.kill().unwrap();
    let t0 = Instant::now();
    // Both try an ICE restart (the files allow it); with the only relay
    // gone no new path can come, and each names the relay.
    let (sl, sc) = (l.wait(LIMIT), c.wait(LIMIT));
    let took = t0.elapsed();
    for (p, s) in [(&l, sl), (&c, sc)] {
        let err = p.err();
        assert!(!s.success(), "{err}");
        assert!(err.contains("error: relay lost"), "{err}");
        assert!(
            err.contains(&format!("127.0.0.1:{}", relay.port())),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(took < Duration::from_secs(20), "{took:?}");
    // The connecting (controlling) side did try the restart.
    let r = report(&dir, "connect");
    assert!(
        r["restarts_started"].as_u64().is_some_and(|n| n >= 1),
        "{r:#}"
    );
}

#[test]
fn a_peer_killed_mid_transfer_is_reported_as_vanished() {
    let dir = scratch("vanish");
    // No ICE restart on the silence (--degraded-after beyond the consent
    // timeout): consent (RFC 7675) is what notices.
    let fast = ["--consent-timeout", "2", "--degraded-after", "30"];
    let (mut l, _l_in) = spawn(
        &dir,
        "listen",
        &cmd(&["listen"], side(&dir, "listen", "connect", &fast)),
        Input::Pipe,
    );
    let (mut c, c_in) = spawn(
        &dir,
        "connect",
        &cmd(&["connect"], side(&dir, "connect", "listen", &fast)),
        Input::Pipe,
    );
    // Data flows (stdin stays open, so the transfer is never complete).
    let mut c_in = c_in.unwrap();
    c_in.write_all(&data(100_000, 17)).unwrap();
    c_in.flush().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let got = std::fs::metadata(dir.join("listen.out")).map_or(0, |m| m.len());
        if got == 100_000 {
            break;
        }
        assert!(
            Instant::now() < end,
            "data did not arrive ({got} bytes); stderr:\n{}\n{}",
            l.err(),
            c.err()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    l.child.kill().unwrap();
    let t0 = Instant::now();
    let status = c.wait(Duration::from_secs(15));
    let took = t0.elapsed();
    let err = c.err();
    assert!(!status.success(), "{err}");
    assert!(err.contains("the peer vanished"), "{err}");
    assert!(err.contains("consent to send was lost"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let r = report(&dir, "connect");
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["bytes_sent"], 100_000, "{r:#}");
    drop(c_in);
}

#[test]
fn a_silent_path_restarts_ice_through_the_files_and_the_stream_goes_on() {
    let dir = scratch("restart");
    let flags = ["--degraded-after", "0.6", "--consent-timeout", "12"];
    let (l, l_in) = spawn(
        &dir,
        "listen",
        &cmd(&["listen"], side(&dir, "listen", "connect", &flags)),
        Input::Pipe,
    );
    let (c, c_in) = spawn(
        &dir,
        "connect",
        &cmd(&["connect"], side(&dir, "connect", "listen", &flags)),
        Input::Pipe,
    );
    let (mut l, mut c, mut l_in, mut c_in) = (l, c, l_in.unwrap(), c_in.unwrap());
    let (a1, b1) = (data(60_000, 21), data(50_000, 23));
    c_in.write_all(&b1).unwrap();
    wait_until(Duration::from_secs(15), "the first data", || {
        out_len(&dir, "listen") == b1.len() as u64
    });
    // The listener goes silent long enough for the path to be called
    // degraded: the connecting side restarts ICE (RFC 8445 §9) through
    // --desc-out, and the listener answers once it runs again.
    signal(&l, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2000));
    signal(&l, libc::SIGCONT);
    wait_until(
        Duration::from_secs(15),
        "the restart and its answer",
        || {
            let read = |n| {
                std::fs::read_to_string(dir.join(n))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            };
            let (rc, rl) = (read("connect.json"), read("listen.json"));
            rc.is_some_and(|r| r["restarts_started"].as_u64() >= Some(1))
                && rl.is_some_and(|r| r["restarts_answered"].as_u64() >= Some(1))
                && c.err().contains("the peer answered the ICE restart")
        },
    );
    // The same QUIC stream carries on, both ways.
    let b2 = data(70_000, 25);
    c_in.write_all(&b2).unwrap();
    l_in.write_all(&a1).unwrap();
    drop((c_in, l_in));
    let (sl, sc) = (l.wait_or_kill(LIMIT), c.wait_or_kill(LIMIT));
    assert!(
        sl.is_some_and(|s| s.success()) && sc.is_some_and(|s| s.success()),
        "listen: {sl:?}, connect: {sc:?}\nlisten's stderr:\n{}\nconnect's stderr:\n{}",
        l.err(),
        c.err()
    );
    let want_l: Vec<u8> = b1.iter().chain(&b2).copied().collect();
    assert!(std::fs::read(dir.join("listen.out")).unwrap() == want_l);
    assert!(std::fs::read(dir.join("connect.out")).unwrap() == a1);
    let err = c.err();
    assert!(err.contains("restarted ICE"), "{err}");
    assert!(err.contains("the peer answered the ICE restart"), "{err}");
    assert!(l.err().contains("the peer restarted ICE"), "{}", l.err());
}
