//! Short codes, paste handling, checks before talking, accepting,
//! resuming and cancelling transfers, through the binary on loopback (with
//! natkit-turn on loopback as the relay both sides name). Every child is
//! killed by PID when its handle drops; every wait is bounded.

mod p2p_support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use natkit_testkit::{free_port, http, ready, TempDir, TurnRelay};
use p2p_support::*;

/// Loopback-only flags of one side, with the relay's credentials.
fn flags(relay: &TurnRelay, extra: &[&str]) -> Vec<String> {
    flags_over(relay, "udp", extra)
}

/// [`flags`] with TURN over `transport` (udp or tcp).
fn flags_over(relay: &TurnRelay, transport: &str, extra: &[&str]) -> Vec<String> {
    let mut v = loopback();
    let turn = ["--turn", &relay_uri(relay, transport), "--turn-user", "p2p"];
    let pw = ["--turn-password", "right-pw"];
    v.extend(turn.iter().chain(&pw).chain(extra).map(|s| s.to_string()));
    v
}

/// The code a waiting side printed on stderr.
fn code_of(p: &Proc) -> String {
    let mut code = None;
    wait_until(Duration::from_secs(15), "the short code", || {
        code = p
            .err()
            .lines()
            .find_map(|l| l.strip_prefix("natkit: code: ").map(str::to_owned));
        code.is_some()
    });
    code.unwrap()
}

#[test]
fn a_short_code_sends_a_file_through_the_users_relay() {
    let dir = scratch("code-file");
    // The relay's default peer policy: the code's exchange needs no
    // relay option (relay-to-relay is allowed, loopback peers are not).
    let relay = start_relay_default_policy(&[]);
    let content = data(700_000, 41);
    std::fs::write(dir.join("payload.bin"), &content).unwrap();
    let file = dir.join("payload.bin").display().to_string();
    let (mut s, _) = spawn(
        &dir,
        "send",
        &cmd(&["send", &file], flags(&relay, &[])),
        Input::Null,
    );
    let code = code_of(&s);
    // A number and three words, nothing else: no description to carry.
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(parts.len(), 4, "{code}");
    assert!(parts[0].parse::<u16>().is_ok(), "{code}");
    assert!(!s.err().contains("nk1."), "{}", s.err());
    let inbox = format!("{}/inbox/", dir.path().display());
    let (mut r, r_in) = spawn(
        &dir,
        "receive",
        &cmd(&["receive", &code, "-o", &inbox], flags(&relay, &[])),
        Input::Pipe,
    );
    // Asked before data flows: the name and size, answered on stdin.
    wait_until(Duration::from_secs(15), "the offer", || {
        r.err()
            .contains("offers payload.bin (683.6 KiB). Accept? [y/N]")
    });
    assert!(s.err().contains("waiting for the receiver to accept"));
    assert!(!dir.join("inbox/payload.bin").exists());
    r_in.unwrap().write_all(b"y\n").unwrap();
    assert_ok(&mut r);
    assert_ok(&mut s);
    assert!(std::fs::read(dir.join("inbox/payload.bin")).unwrap() == content);
    assert!(r.err().contains("connected in"), "{}", r.err());
    assert!(s.err().contains("verified by the receiver"), "{}", s.err());
}

/// listen and connect through a short code, with TURN over `transport`
/// (the rendezvous allocation too).
fn code_pipe(transport: &str) {
    let dir = scratch(&format!("code-pipe-{transport}"));
    let relay = start_relay(&[]);
    let (a, b) = (data(120_000, 43), data(90_000, 47));
    std::fs::write(dir.join("a.in"), &a).unwrap();
    std::fs::write(dir.join("b.in"), &b).unwrap();
    let (mut l, _) = spawn(
        &dir,
        "listen",
        &cmd(&["listen"], flags_over(&relay, transport, &[])),
        Input::File(&dir.join("a.in")),
    );
    let code = code_of(&l);
    let (mut c, _) = spawn(
        &dir,
        "connect",
        &cmd(&["connect", &code], flags_over(&relay, transport, &[])),
        Input::File(&dir.join("b.in")),
    );
    assert_ok(&mut c);
    assert_ok(&mut l);
    assert!(std::fs::read(dir.join("connect.out")).unwrap() == a);
    assert!(std::fs::read(dir.join("listen.out")).unwrap() == b);
}

#[test]
fn a_short_code_connects_listen_and_connect_both_ways() {
    code_pipe("udp");
}

#[test]
fn a_short_code_works_with_turn_over_tcp() {
    code_pipe("tcp");
}

#[test]
fn a_wrong_code_fails_after_one_try_on_both_sides() {
    let dir = scratch("code-wrong");
    let relay = start_relay(&[]);
    let (mut l, _) = spawn(
        &dir,
        "listen",
        &cmd(&["listen"], flags(&relay, &[])),
        Input::Null,
    );
    let code = code_of(&l);
    // The right number, other words.
    let (port, words) = code.split_once('-').unwrap();
    let wrong = if words == "acid-acid-acid" {
        format!("{port}-acorn-acid-acid")
    } else {
        format!("{port}-acid-acid-acid")
    };
    let t0 = Instant::now();
    let (ok, err) = run(&cmd(&["connect", &wrong], flags(&relay, &[])));
    assert!(!ok, "{err}");
    assert!(err.contains("wrong code"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // The waiting side gave up too: the code is spent.
    let status = l.wait(Duration::from_secs(10));
    assert!(!status.success(), "{}", l.err());
    assert!(l.err().contains("wrong code"), "{}", l.err());
    // A typo in a word is named before anything is sent.
    let out = Command::new(natkit())
        .args(["connect", &format!("{port}-acid-acid-acidd")])
        .args(flags(&relay, &[]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"acidd\" is not one of the code's words"),
        "{err}"
    );
}

#[test]
fn a_bad_paste_is_asked_again_and_our_own_description_is_caught() {
    let dir = scratch("paste");
    let content = data(50_000, 53);
    std::fs::write(dir.join("p.bin"), &content).unwrap();
    let with_out = |me: &str| -> Vec<String> {
        let mut v = loopback();
        v.push("--desc-out".into());
        v.push(dir.join(format!("{me}.desc")).display().to_string());
        v
    };
    let file = dir.join("p.bin").display().to_string();
    let (mut s, s_in) = spawn(
        &dir,
        "send",
        &cmd(&["send", &file], with_out("send")),
        Input::Pipe,
    );
    let inbox = dir.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let (mut r, r_in) = spawn(
        &dir,
        "receive",
        &cmd(
            &["receive", "--yes", "-o", &inbox.display().to_string()],
            with_out("receive"),
        ),
        Input::Pipe,
    );
    let read = |n: &str| {
        let mut t = String::new();
        wait_until(Duration::from_secs(15), "a description", || {
            t = std::fs::read_to_string(dir.join(n)).unwrap_or_default();
            !t.is_empty()
        });
        t.trim().to_owned()
    };
    let (sd, rd) = (read("send.desc"), read("receive.desc"));
    let mut s_in = s_in.unwrap();
    // A half paste, then its own description, then the right one.
    writeln!(s_in, "{}", &rd[..rd.len() / 2]).unwrap();
    writeln!(s_in, "{sd}").unwrap();
    s_in.flush().unwrap();
    wait_until(
        Duration::from_secs(15),
        "the own description caught",
        || s.err().contains("that is this side's own description"),
    );
    writeln!(s_in, "{rd}").unwrap();
    writeln!(r_in.unwrap(), "{sd}").unwrap();
    assert_ok(&mut r);
    assert_ok(&mut s);
    let err = s.err();
    assert!(err.contains("description is unusable"), "{err}");
    assert!(err.contains("paste the peer's description again"), "{err}");
    assert!(err.contains("waiting for the peer to paste"), "{err}");
    assert!(std::fs::read(inbox.join("p.bin")).unwrap() == content);
}

/// `natkit ARGS` with stdin closed: its status and stderr.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(natkit())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_output_paths_and_empty_descriptions_are_refused_before_talking() {
    let dir = scratch("before");
    let lo = ["--loopback", "--bind", "127.0.0.1", "--wait", "2"];
    let there = dir.join("there.bin");
    std::fs::write(&there, b"x").unwrap();
    let there_s = there.display().to_string();
    let missing = dir.join("no/such/file").display().to_string();
    let not_dir = format!("{there_s}/");
    for (out, want) in [
        (there_s.as_str(), "--force"),
        (missing.as_str(), "does not exist"),
        (not_dir.as_str(), "not a directory"),
    ] {
        let mut a = vec!["receive", "-o", out];
        a.extend(lo);
        let (ok, err) = run(&a);
        assert!(!ok, "{err}");
        assert!(err.contains(want), "{out}: {err}");
        // Nothing was said to a peer: no description printed.
        assert!(!err.contains("nk1."), "{err}");
    }
    // A description without candidates: refused as an argument, before
    // this side's own is printed.
    let json = a_description_with(&dir, &["--json"]);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["candidates"] = serde_json::json!([]);
    let empty = v.to_string();
    let mut a = vec!["connect", empty.as_str()];
    a.extend(lo);
    let (ok, err) = run(&a);
    assert!(!ok, "{err}");
    assert!(err.contains("has no candidates"), "{err}");
    assert!(!err.contains("nk1."), "{err}");
}

#[test]
fn a_cancelled_transfer_reaches_the_receiver_at_once_and_then_resumes() {
    let dir = scratch("cancel");
    // A relay capped at 400 kB/s per allocation: the transfer fills the
    // bucket, so the cancel has to get through a relay dropping packets.
    let relay = start_relay(&["--bandwidth", "400K"]);
    let content = data(6_000_000, 59);
    std::fs::write(dir.join("big.bin"), &content).unwrap();
    let file = dir.join("big.bin").display().to_string();
    let inbox = dir.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let inbox_s = inbox.display().to_string();
    let (s, _) = spawn(
        &dir,
        "send",
        &cmd(&["send", &file], flags(&relay, &["--relay-only"])),
        Input::Null,
    );
    let code = code_of(&s);
    let (mut r, _) = spawn(
        &dir,
        "receive",
        &cmd(
            &["receive", &code, "--yes", "-o", &inbox_s],
            flags(&relay, &["--relay-only"]),
        ),
        Input::Null,
    );
    let part = inbox.join(".big.bin.natkit-part");
    let part_len = || std::fs::metadata(&part).map_or(0, |m| m.len());
    // Past the bucket's burst (one second's worth): the relay is dropping
    // what the sender pushes over the cap when the cancel goes.
    let started = Instant::now();
    wait_until(Duration::from_secs(20), "data in the part file", || {
        part_len() >= 1_000_000
    });
    assert!(started.elapsed() > Duration::from_secs(1), "not capped?");
    signal(&s, libc::SIGINT);
    let t0 = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the receiver hearing the cancel",
        || r.err().contains("the peer cancelled"),
    );
    let heard = t0.elapsed();
    assert!(heard < Duration::from_secs(1), "{heard:?}\n{}", r.err());
    let status = r.wait(Duration::from_secs(10));
    assert!(!status.success());
    assert!(r.err().contains("interrupted (Ctrl-C)"), "{}", r.err());
    drop(s);
    drop(relay);

    // Again, directly this time (descriptions through files): only the
    // rest moves, and the whole file verifies.
    let kept = part_len();
    assert!(kept > 0 && kept < content.len() as u64, "{kept}");
    let (mut s2, _) = spawn(
        &dir,
        "send2",
        &cmd(&["send", &file], side(&dir, "send2", "receive2", &[])),
        Input::Null,
    );
    let (mut r2, _) = spawn(
        &dir,
        "receive2",
        &cmd(
            &["receive", "--yes", "-o", &inbox_s],
            side(&dir, "receive2", "send2", &[]),
        ),
        Input::Null,
    );
    assert_ok(&mut r2);
    assert_ok(&mut s2);
    assert!(std::fs::read(inbox.join("big.bin")).unwrap() == content);
    assert!(!part.exists());
    let sent = report(&dir, "send2")["bytes_sent"].as_u64().unwrap();
    assert_eq!(sent, content.len() as u64 - kept);
    assert!(
        r2.err()
            .contains(&format!("resumed: {kept} bytes were there")),
        "{}",
        r2.err()
    );
}

/// `natkit send SEND...` and `natkit receive RECEIVE...` exchanging
/// descriptions through files (`NAME-send.desc`, `NAME-receive.desc`), the
/// sender's stdin from `input`; both must succeed. The receiver's stdout is
/// `NAME-receive.out`.
fn send_and_receive(dir: &TempDir, name: &str, send: &[&str], receive: &[&str], input: Input) {
    let (s_name, r_name) = (format!("{name}-send"), format!("{name}-receive"));
    let (mut s, _) = spawn(
        dir,
        &s_name,
        &cmd(send, side(dir, &s_name, &r_name, &[])),
        input,
    );
    let (mut r, _) = spawn(
        dir,
        &r_name,
        &cmd(receive, side(dir, &r_name, &s_name, &[])),
        Input::Null,
    );
    assert_ok(&mut r);
    assert_ok(&mut s);
}

#[test]
fn a_folder_and_stdin_travel_like_files() {
    let dir = scratch("folder");
    let top = dir.join("album");
    std::fs::create_dir_all(top.join("2024/raw")).unwrap();
    std::fs::create_dir_all(top.join("empty")).unwrap();
    let (a, b) = (data(300_000, 61), data(1_000, 67));
    std::fs::write(top.join("2024/raw/a.bin"), &a).unwrap();
    std::fs::write(top.join("notes.txt"), &b).unwrap();
    let inbox = format!("{}/inbox/", dir.path().display());
    let top_s = top.display().to_string();
    send_and_receive(
        &dir,
        "folder",
        &["send", &top_s],
        &["receive", "--yes", "-o", &inbox],
        Input::Null,
    );
    assert!(std::fs::read(dir.join("inbox/album/2024/raw/a.bin")).unwrap() == a);
    assert!(std::fs::read(dir.join("inbox/album/notes.txt")).unwrap() == b);
    assert!(dir.join("inbox/album/empty").is_dir());
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert!(read("folder-receive.err").contains("received folder"));
    assert!(read("folder-send.err").contains("2 files"));

    // stdin to the receiver's stdout, through the same commands.
    let piped = data(400_000, 71);
    std::fs::write(dir.join("piped.in"), &piped).unwrap();
    send_and_receive(
        &dir,
        "stdin",
        &["send", "-"],
        &["receive", "--yes", "-o", "-"],
        Input::File(&dir.join("piped.in")),
    );
    assert!(std::fs::read(dir.join("stdin-receive.out")).unwrap() == piped);
}

#[test]
fn connected_in_counts_from_when_both_descriptions_were_in() {
    let dir = scratch("both-in");
    let path = |n: &str| dir.join(n).display().to_string();
    let mut l_args = loopback();
    l_args.extend(
        [
            "--desc-out",
            &path("listen.written"),
            "--remote",
            &path("connect.desc"),
            "--report",
            &path("listen.json"),
        ]
        .map(String::from),
    );
    let (mut l, _) = spawn(&dir, "listen", &cmd(&["listen"], l_args), Input::Null);
    let mut c_args = loopback();
    c_args.extend(
        [
            "--desc-out",
            &path("connect.desc"),
            "--remote",
            &path("listen.desc"),
        ]
        .map(String::from),
    );
    let (mut c, _) = spawn(&dir, "connect", &cmd(&["connect"], c_args), Input::Null);
    // The listener has the connector's description at once; the connector
    // gets the listener's 2 s later, as if someone pasted it then.
    wait_until(Duration::from_secs(15), "both descriptions", || {
        dir.join("listen.written").exists() && dir.join("connect.desc").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    std::fs::copy(dir.join("listen.written"), dir.join("listen.desc")).unwrap();
    assert_ok(&mut c);
    assert_ok(&mut l);
    let ms = report(&dir, "listen")["connect_ms"].as_f64().unwrap();
    assert!(
        ms < 1500.0,
        "{ms} ms counts the wait for the other side's paste"
    );
    assert!(l.err().contains("connected in"), "{}", l.err());
}

#[test]
fn ctrl_c_before_the_peer_came_deletes_the_relay_allocations() {
    let dir = scratch("early-int");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = start_relay(&["--metrics", &metrics.to_string()]);
    ready::wait_tcp(metrics, "natkit-turn's metrics", Duration::from_secs(20));
    let live = || http::metric(&http::metrics(metrics), "natkit_turn_allocations");
    // Waiting for a code to be used, then waiting for a paste.
    for (name, extra, ready) in [
        ("code", &[][..], "natkit: code: "),
        ("paste", &["--paste"][..], "natkit: this side's description"),
    ] {
        let (mut l, _l_in) = spawn(
            &dir,
            name,
            &cmd(&["listen"], flags(&relay, extra)),
            Input::Pipe,
        );
        wait_until(Duration::from_secs(15), "the listener waiting", || {
            l.err().contains(ready)
        });
        assert!(live() >= 1.0, "{name}: no allocation to delete");
        signal(&l, libc::SIGINT);
        let status = l.wait(Duration::from_secs(10));
        assert!(!status.success());
        assert!(l.err().contains("interrupted (Ctrl-C)"), "{}", l.err());
        wait_until(Duration::from_secs(5), "the allocations deleted", || {
            live() == 0.0
        });
    }
}
