//! A minimal UDP hole puncher, independent of natkit's ICE agent, to check
//! the lab's NATs against the expected-path rule
//! ([`crate::NatKind::direct_possible`]) on their own.
//!
//! Each side learns its server-reflexive address from the lab's STUN
//! server, the two swap them, then for a few seconds each sends a probe
//! every 50 ms to the other's reflexive address and to every address a
//! probe came from (what ICE calls peer-reflexive, RFC 8445 §7.2.5.3.1),
//! and answers every probe it receives. A side succeeds when an answer to
//! one of its own probes comes back: a two-way path exists.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::lab::{Lab, Site};
use crate::probe::stun_mapped;

/// How long the sides keep punching.
pub const PUNCH_FOR: Duration = Duration::from_secs(5);

/// The outcome for one pair.
#[derive(Debug, Clone)]
pub struct Punch {
    /// Whether both sides got answers to their probes.
    pub connected: bool,
    /// Each side's reflexive address as STUN saw it.
    pub reflexive: [SocketAddr; 2],
}

fn side(sock: &UdpSocket, me: u8, peer_reflexive: SocketAddr, barrier: &Barrier) -> bool {
    barrier.wait();
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut targets: HashSet<SocketAddr> = HashSet::from([peer_reflexive]);
    let mut answered = false;
    let mut buf = [0u8; 64];
    let end = Instant::now() + PUNCH_FOR;
    // Keep going a little after success so the peer gets its answer too.
    let mut linger: Option<Instant> = None;
    while Instant::now() < end && linger.map_or(true, |t| Instant::now() < t) {
        for t in &targets {
            let _ = sock.send_to(&[b'P', me], t);
        }
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            match &buf[..n] {
                [b'P', who] if *who != me => {
                    targets.insert(from);
                    let _ = sock.send_to(&[b'A', me], from);
                }
                [b'A', who] if *who != me => {
                    answered = true;
                    linger.get_or_insert(Instant::now() + Duration::from_secs(1));
                }
                _ => {}
            }
        }
    }
    answered
}

/// Punch between `a`'s host and `b`'s host.
pub fn punch(lab: &Lab, a: &Site, b: &Site) -> Result<Punch> {
    let stun = lab.servers().stun;
    let open = |s: &Site| -> Result<(UdpSocket, SocketAddr)> {
        let sock = s.host_ns().bind_udp((s.host_addr, 0))?;
        let mapped = stun_mapped(&sock, stun, 8)
            .ok_or_else(|| LabError::Timeout(format!("no STUN answer in {}", s.name)))?;
        Ok((sock, mapped))
    };
    let (sa, ra) = open(a)?;
    let (sb, rb) = open(b)?;
    let barrier = Barrier::new(2);
    let (ok_a, ok_b) = std::thread::scope(|s| {
        let ha = s.spawn(|| side(&sa, 0, rb, &barrier));
        let hb = s.spawn(|| side(&sb, 1, ra, &barrier));
        // A side that panicked is a broken test, not "no path": re-raise
        // it instead of counting it as a failed punch.
        let join = |h: std::thread::ScopedJoinHandle<'_, bool>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        (join(ha), join(hb))
    });
    Ok(Punch {
        connected: ok_a && ok_b,
        reflexive: [ra, rb],
    })
}
