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

/// `code`'s number, and the code with that number and other words.
fn wrong_code(code: &str) -> (String, String) {
    let (port, words) = code.split_once('-').unwrap();
    let wrong = if words == "acid-acid-acid" {
        format!("{port}-acorn-acid-acid")
    } else {
        format!("{port}-acid-acid-acid")
    };
    (port.to_owned(), wrong)
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
    let (port, wrong) = wrong_code(&code);
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
fn ctrl_c_during_setup_deletes_the_relay_allocations_within_a_second() {
    let dir = scratch("early-int");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let relay = start_relay(&["--metrics", &metrics.to_string()]);
    ready::wait_tcp(metrics, "natkit-turn's metrics", Duration::from_secs(20));
    let live = || http::metric(&http::metrics(metrics), "natkit_turn_allocations");
    // A peer that is gone: ICE through the relay to it runs until
    // --timeout (15 s) unless interrupted.
    let gone = a_description(&dir);
    let knock_at = format!("{}-acid-acid-acid", free_port());
    // Waiting for a code to be used; waiting for a paste; knocking at a
    // code nobody waits behind; ICE checks towards a vanished peer.
    // Each: the command, the line that says it waits, the phase named.
    let exchange = "before the descriptions were exchanged";
    let cases = [
        ("code", vec!["listen"], &[][..], "natkit: code: ", exchange),
        (
            "paste",
            vec!["listen"],
            &["--paste"][..],
            "natkit: this side's description",
            "while waiting for the peer's description",
        ),
        (
            "knock",
            vec!["connect", &knock_at],
            &[][..],
            "exchanging descriptions through the relay",
            exchange,
        ),
        (
            "ice",
            vec!["connect", &gone],
            &["--relay-only"][..],
            "natkit: this side's description",
            "while connecting (ICE)",
        ),
    ];
    for (name, line, extra, ready, phase) in cases {
        let (mut l, _l_in) = spawn(&dir, name, &cmd(&line, flags(&relay, extra)), Input::Pipe);
        wait_until(Duration::from_secs(15), "the command waiting", || {
            l.err().contains(ready)
        });
        assert!(live() >= 1.0, "{name}: no allocation to delete");
        let t0 = Instant::now();
        signal(&l, libc::SIGINT);
        let status = l.wait(Duration::from_secs(10));
        let exited = t0.elapsed();
        assert!(!status.success());
        let err = l.err();
        assert!(
            err.contains(&format!("interrupted (Ctrl-C) {phase}")),
            "{err}"
        );
        // Deleted (Refresh with lifetime 0), not left to expire.
        wait_until(Duration::from_secs(5), "the allocations deleted", || {
            live() == 0.0
        });
        let gone_after = t0.elapsed();
        eprintln!("{name}: exited after {exited:?}, allocations gone after {gone_after:?}");
        assert!(exited < Duration::from_secs(1), "{name}: {exited:?}");
        assert!(
            gone_after < Duration::from_secs(1),
            "{name}: {gone_after:?}"
        );
    }
}

#[test]
fn several_files_and_folders_go_in_one_session_accepted_as_a_list() {
    let dir = scratch("many");
    let (a, b, c) = (data(1_000, 73), data(600_000, 79), data(90_000, 83));
    std::fs::create_dir_all(dir.join("album/2024")).unwrap();
    std::fs::write(dir.join("a.txt"), &a).unwrap();
    std::fs::write(dir.join("b.bin"), &b).unwrap();
    std::fs::write(dir.join("album/2024/c.bin"), &c).unwrap();
    // An earlier, cut try left b.bin's first 200 000 bytes; a.txt is
    // there already, the same.
    let inbox = dir.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join(".b.bin.natkit-part"), &b[..200_000]).unwrap();
    std::fs::write(inbox.join("a.txt"), &a).unwrap();
    std::fs::write(dir.join("answer"), "y\n").unwrap();
    let paths = ["a.txt", "b.bin", "album"].map(|n| dir.join(n).display().to_string());
    let mut send = vec!["send"];
    send.extend(paths.iter().map(String::as_str));
    let (mut s, _) = spawn(
        &dir,
        "send",
        &cmd(&send, side(&dir, "send", "receive", &[])),
        Input::Null,
    );
    let inbox_s = inbox.display().to_string();
    let (mut r, _) = spawn(
        &dir,
        "receive",
        &cmd(
            &["receive", "-o", &inbox_s, "--json"],
            side(&dir, "receive", "send", &[]),
        ),
        Input::File(&dir.join("answer")),
    );
    assert_ok(&mut r);
    assert_ok(&mut s);
    // The list was shown before anything moved: names, sizes, the total.
    let err = r.err();
    for line in [
        "the peer offers 3 items (3 files, ",
        "  a.txt (",
        "  b.bin (",
        "  album/ (1 files, ",
        "resume? [y/N]",
    ] {
        assert!(err.contains(line), "{line:?} missing:\n{err}");
    }
    assert!(std::fs::read(inbox.join("a.txt")).unwrap() == a);
    assert!(std::fs::read(inbox.join("b.bin")).unwrap() == b);
    assert!(std::fs::read(inbox.join("album/2024/c.bin")).unwrap() == c);
    assert!(!inbox.join(".b.bin.natkit-part").exists());
    // Resumed per file: only the rest of b.bin and all of c.bin moved.
    let sent = report(&dir, "send")["bytes_sent"].as_u64().unwrap();
    assert_eq!(sent, (b.len() - 200_000 + c.len()) as u64);
    assert!(err.contains("received 3 files into"), "{err}");
    assert!(err.contains("each verified"), "{err}");
    assert!(s.err().contains("sent 3 items: 3 files"), "{}", s.err());
    // --json: one document on stdout, as the report has it.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("receive.out")).unwrap()).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(doc["error"].is_null(), "{doc}");
    assert_eq!(doc["command"], "receive");
    assert_eq!(doc["bytes_received"].as_u64(), Some(sent));

    // The same name twice is refused before anything is said.
    std::fs::create_dir(dir.join("other")).unwrap();
    std::fs::write(dir.join("other/a.txt"), b"x").unwrap();
    let (ok, err) = run(&[
        "send",
        &paths[0],
        &dir.join("other/a.txt").display().to_string(),
    ]);
    assert!(!ok);
    assert!(err.contains("would both arrive as a.txt"), "{err}");
    assert!(!err.contains("description"), "{err}");
}

/// A `--json` document: stdout's whole, or (where stdout is the peer's
/// data) stderr's last line.
fn json_doc(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn json_failures_are_one_document_with_a_kind_and_a_closed_stdout_is_no_panic() {
    let dir = scratch("json-fail");
    let relay = start_relay(&[]);
    std::fs::write(dir.join("f.bin"), data(10_000, 89)).unwrap();
    let file = dir.join("f.bin").display().to_string();

    // A wrong code: both sides say so, each in one document on stdout.
    let (mut s, _) = spawn(
        &dir,
        "send",
        &cmd(&["send", &file, "--json"], flags(&relay, &[])),
        Input::Null,
    );
    let code = code_of(&s);
    let (port, wrong) = wrong_code(&code);
    let (mut r, _) = spawn(
        &dir,
        "receive",
        &cmd(&["receive", &wrong, "--json", "--yes"], flags(&relay, &[])),
        Input::Null,
    );
    for p in [&mut r, &mut s] {
        let status = p.wait(Duration::from_secs(15));
        assert_eq!(status.code(), Some(1), "{}", p.err());
        let doc = json_doc(&std::fs::read_to_string(dir.join(format!("{}.out", p.name))).unwrap());
        assert_eq!(doc["ok"], false, "{doc}");
        assert_eq!(doc["error"]["kind"], "wrong_code", "{doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("wrong code"),
            "{doc}"
        );
    }

    // An unreachable relay: nothing listens on that port (TCP is refused
    // at once).
    let nobody = format!("turn:127.0.0.1:{}?transport=tcp", free_port());
    let dead = |extra: &[&str]| {
        let mut v = loopback();
        v.extend(
            [
                "--turn",
                &nobody,
                "--turn-user",
                "p2p",
                "--turn-password",
                "pw",
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        v
    };
    let out = Command::new(natkit())
        .args(cmd(&["send", &file, "--json"], dead(&[])))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc = json_doc(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(doc["error"]["kind"], "unreachable", "{doc}");
    // connect's stdout is the peer's data: the document is stderr's last
    // line, and stdout stays empty.
    let out = Command::new(natkit())
        .args(cmd(
            &["connect", &format!("{port}-acid-acid-acid"), "--json"],
            dead(&[]),
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let doc = json_doc(err.lines().last().unwrap());
    assert_eq!(doc["error"]["kind"], "unreachable", "{doc}");
    // A file that is not there: before any socket, still one document.
    let out = Command::new(natkit())
        .args(["send", "no-such-file", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json_doc(&String::from_utf8_lossy(&out.stdout))["error"]["kind"],
        "io"
    );

    // A closed stdout: the document is dropped, exit 1, no panic.
    let mut child = Command::new(natkit())
        .args(cmd(&["send", &file, "--json"], dead(&[])))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
