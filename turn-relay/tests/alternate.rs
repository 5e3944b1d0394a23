//! ALTERNATE-SERVER (RFC 8489 §10, RFC 8656 §7.2) between two natkit-turn
//! relays: a draining relay (and a full one, when told to) answers Allocate
//! with 300 Try Alternate, and natkit's TURN client allocates on the
//! alternate instead, once: a second redirect is an error naming the
//! servers.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use natkit_proto::turn::client::{ClientError, Event, Transport};

/// The redirect the client followed.
fn redirected(c: &mut TurnTestClient) -> (SocketAddr, SocketAddr, Option<String>) {
    c.wait("the redirect", |e| match e {
        Event::Redirected { from, to, domain } => Some((*from, *to, domain.clone())),
        _ => None,
    })
}

#[test]
fn a_full_relay_sends_allocations_to_its_alternate_over_udp_and_tcp() {
    let b = Relay::start(&[]);
    let a = Relay::start(&[
        "--max-allocations",
        "1",
        "--alternate-server",
        &b.addr.to_string(),
        "--alternate-domain",
        "turn-b.example.test",
        "--alternate-when-full",
        "true",
    ]);
    let (_first, _) = allocate(a.addr, Transport::Udp);
    // Kept: a TCP client's allocation ends with its connection.
    let mut clients = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut c = node(a.addr, transport, USER, PASS);
        c.allocated().expect("allocated on the alternate");
        assert_eq!(
            redirected(&mut c),
            (a.addr, b.addr, Some("turn-b.example.test".into()))
        );
        assert_eq!(c.client().server(), b.addr);
        // B holds it: B counts it, A does not.
        assert_eq!(a.metric("natkit_turn_allocations"), 1.0);
        // The allocation works on B: a refresh is answered.
        c.client().refresh_now(Instant::now());
        c.wait("the refresh on the alternate", |e| {
            matches!(e, Event::Refreshed { .. }).then_some(())
        });
        clients.push(c);
    }
    assert_eq!(b.metric("natkit_turn_allocations"), 2.0);
    // At least one each: a UDP retransmission (100 ms timer on a loaded
    // machine) is answered, and counted, again.
    let redirected = a.metric("natkit_turn_allocation_attempts_total{outcome=\"300\"}");
    assert!(redirected >= 2.0, "{redirected}");
    assert_eq!(
        a.metric("natkit_turn_allocations_refused_total{reason=\"max_allocations\"}"),
        redirected
    );
    // A user at their own quota is not sent on: it is the same there.
    let a2 = Relay::start(&[
        "--user-quota",
        "1",
        "--alternate-server",
        &b.addr.to_string(),
        "--alternate-when-full",
        "true",
    ]);
    let (_one, _) = allocate(a2.addr, Transport::Udp);
    let mut c = node(a2.addr, Transport::Udp, USER, PASS);
    assert_eq!(c.allocated(), Err(ClientError::QuotaReached));
}

#[test]
fn a_draining_relay_sends_allocations_to_its_alternate() {
    let b = Relay::start(&[]);
    let a = Relay::start(&[
        "--drain-grace",
        "60",
        "--alternate-server",
        &b.addr.to_string(),
    ]);
    let (mut old, _) = allocate(a.addr, Transport::Udp);
    a.signal(libc::SIGTERM);
    // Draining is on once /healthz says so (the flag is set first).
    natkit_testkit::ready::wait_http_status(
        SocketAddr::from(([127, 0, 0, 1], a.metrics)),
        "/healthz",
        503,
        START,
    );
    let mut c = node(a.addr, Transport::Udp, USER, PASS);
    c.allocated().expect("allocated on the alternate");
    assert_eq!(redirected(&mut c).1, b.addr);
    // (Retransmissions are answered, and counted, again.)
    assert!(a.metric("natkit_turn_allocations_refused_total{reason=\"draining\"}") >= 1.0);
    // The draining relay's own allocation keeps working.
    old.client().refresh_now(Instant::now());
    old.wait("the refresh while draining", |e| {
        matches!(e, Event::Refreshed { .. }).then_some(())
    });
}

#[test]
fn a_second_redirect_is_an_error_naming_the_servers() {
    let (pa, pb) = (free_port(), free_port());
    let (ma, mb) = (free_port(), free_port());
    let (addr_a, addr_b) = (
        SocketAddr::from(([127, 0, 0, 1], pa)),
        SocketAddr::from(([127, 0, 0, 1], pb)),
    );
    // Two full relays, each the other's alternate.
    let full = |port, metrics, alt: SocketAddr| {
        let alt = alt.to_string();
        Relay::start_at(
            port,
            metrics,
            &[
                "--max-allocations",
                "1",
                "--alternate-server",
                &alt,
                "--alternate-when-full",
                "true",
            ],
        )
    };
    let a = full(pa, ma, addr_b);
    let b = full(pb, mb, addr_a);
    let (_on_a, _) = allocate(a.addr, Transport::Udp);
    let (_on_b, _) = allocate(b.addr, Transport::Udp);
    let mut c = node(a.addr, Transport::Udp, USER, PASS);
    let e = c.allocated().unwrap_err();
    assert_eq!(
        e,
        ClientError::RedirectLoop {
            first: addr_a,
            second: addr_b,
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&addr_a.to_string()) && msg.contains(&addr_b.to_string()),
        "{msg}"
    );
}

#[test]
fn alternate_keys_are_checked() {
    let bin = env!("CARGO_BIN_EXE_natkit-turn");
    let base = ["--user", "u:p", "--listen", "127.0.0.1:3478"];
    let refused = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        natkit_testkit::bins::config_refused(bin, &args)
    };
    let e = refused(&[
        "--alternate-server",
        "192.0.2.1:3478",
        "--alternate-server",
        "192.0.2.2:3478",
    ]);
    assert!(
        e.contains("alternate-server") && e.contains("one IPv4"),
        "{e}"
    );
    let e = refused(&["--alternate-server", "127.0.0.1:3478"]);
    assert!(e.contains("own listen address"), "{e}");
    let e = refused(&["--alternate-when-full", "true"]);
    assert!(e.contains("needs alternate-server"), "{e}");
    let e = refused(&[
        "--alternate-server",
        "192.0.2.1:3478",
        "--alternate-domain",
        "not a name",
    ]);
    assert!(e.contains("alternate-domain"), "{e}");
}
