//! natkit-stun's TCP side attacked through the binary (issue 15): a client
//! that sends and never reads, and one that trickles a frame. Loopback
//! only; every loop is bounded in time.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::binding::{self, RequestOptions};
use natkit_testkit::http::metric_value;
use natkit_testkit::stream::trickle_binding;

/// Issue 15, defect 4: a client that pipelines requests and never reads
/// its answers is closed (answers are written with a deadline, and their
/// queue is bounded), instead of holding a connection and memory forever.
#[test]
fn a_client_that_never_reads_is_closed() {
    let (_srv, primary, _, m) = rfc5780_server(&["--tcp-idle-timeout", "3"]);
    let mut s = TcpStream::connect(primary).unwrap();
    s.set_nonblocking(true).unwrap();
    // 5 MB of pipelined Binding requests, written as fast as they go.
    let mut one = [0u8; 64];
    let n = binding::write_request(&mut one, &[9; 12], &RequestOptions::default()).unwrap();
    let chunk: Vec<u8> = one[..n].iter().copied().cycle().take(n * 3200).collect();
    let start = Instant::now();
    let mut written = 0usize;
    let mut at = 0usize;
    let mut next_look = start;
    let closed = "natkit_stun_connections_closed_total{reason=\"write_timeout\",transport=\"tcp\"}";
    let text = loop {
        assert!(
            start.elapsed() < Duration::from_secs(12),
            "still open after {:?} ({written} bytes written, none read)",
            start.elapsed()
        );
        if written < 5_000_000 {
            match s.write(&chunk[at..]) {
                Ok(k) => {
                    written += k;
                    at = (at + k) % chunk.len();
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Reset or broken pipe: the server closed it.
                Err(_) => written = usize::MAX,
            }
        }
        if Instant::now() >= next_look {
            let text = metrics(m);
            if metric_value(&text, closed).is_some_and(|n| n >= 1.0) {
                break text;
            }
            next_look += Duration::from_millis(200);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let closed_after = start.elapsed();
    assert!(closed_after < Duration::from_secs(10), "{closed_after:?}");
    assert_eq!(metric(&text, closed), 1.0, "{text}");
    assert_eq!(
        metric(&text, "natkit_stun_connections_open{transport=\"tcp\"}"),
        0.0
    );
}

/// Issue 15, defect 5: a frame has a deadline from its first byte. One
/// byte every 1.8 s with a 3 s idle timeout is closed about 3 s after the
/// first byte.
#[test]
fn a_frame_trickled_byte_by_byte_is_closed_at_its_deadline() {
    let (_srv, primary, _, m) = rfc5780_server(&["--tcp-idle-timeout", "3"]);
    let mut s = TcpStream::connect(primary).unwrap();
    let open = trickle_binding(&mut s, Duration::from_millis(1800))
        .expect("the whole frame went through, one byte at a time");
    assert!(
        open >= Duration::from_millis(2500) && open < Duration::from_millis(5000),
        "closed after {open:?}"
    );
    let text = metrics(m);
    assert_eq!(
        metric(
            &text,
            "natkit_stun_connections_closed_total{reason=\"frame_timeout\",transport=\"tcp\"}"
        ),
        1.0,
        "{text}"
    );
}
