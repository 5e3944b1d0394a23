//! Small network probes the lab's tests run from inside its namespaces: a
//! STUN mapped address, single datagrams (to see what a router lets
//! through) and round-trip times. (The lab's readiness probes are in
//! [`crate::lab`].)

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, RequestOptions};
use natkit_proto::transaction;

/// The mapped address `server` sees for `sock` (XOR-MAPPED-ADDRESS of a
/// Binding success response, RFC 8489 §14.2), asked over UDP with up to
/// `tries` sends 500 ms apart.
pub fn stun_mapped(sock: &UdpSocket, server: SocketAddr, tries: u32) -> Option<SocketAddr> {
    let tid = transaction::new_transaction_id();
    let mut req = [0u8; 64];
    let n = binding::write_request(&mut req, &tid, &RequestOptions::default()).ok()?;
    let mut buf = [0u8; 1500];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    for _ in 0..tries {
        sock.send_to(&req[..n], server).ok()?;
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            // Answers to earlier sends of the same request carry the same
            // transaction id; anything else is not ours.
            match binding::parse_response(&buf[..len]) {
                Ok(r) if r.transaction_id == tid && r.outcome.is_ok() => return r.mapped,
                _ => {}
            }
        }
    }
    None
}

/// Whether a datagram from `outside` (a socket in the internet namespace)
/// to `public` reaches `inside` (a socket in a site), and `inside`'s answer
/// gets back to `outside` from `public`: what a NAT mapping or firewall
/// lets in, and out again. Three tries, a second each: one lost datagram
/// proves nothing either way. Sets both sockets' read timeouts.
pub fn gets_in(outside: &UdpSocket, inside: &UdpSocket, public: SocketAddr) -> bool {
    const PROBE: &[u8] = b"from outside";
    const ANSWER: &[u8] = b"from inside";
    let wait = Some(Duration::from_secs(1));
    if outside.set_read_timeout(wait).is_err() || inside.set_read_timeout(wait).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        if outside.send_to(PROBE, public).is_err() {
            return false;
        }
        let Ok((n, from)) = inside.recv_from(&mut buf) else {
            continue;
        };
        if &buf[..n] != PROBE || inside.send_to(ANSWER, from).is_err() {
            return false;
        }
        return matches!(outside.recv_from(&mut buf),
            Ok((n, f)) if f == public && &buf[..n] == ANSWER);
    }
    false
}

/// Round trips measured by [`udp_rtt`].
#[derive(Debug, Clone)]
pub struct RttStats {
    /// Datagrams sent.
    pub sent: usize,
    /// Round-trip times of those answered, sorted.
    pub rtts: Vec<Duration>,
}

impl RttStats {
    /// The median round trip (zero when nothing came back).
    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The round trip below which a share `q` (0.0 to 1.0) of the answered
    /// ones fall (zero when nothing came back).
    pub fn quantile(&self, q: f64) -> Duration {
        let i = ((self.rtts.len() as f64 * q) as usize).min(self.rtts.len().saturating_sub(1));
        self.rtts.get(i).copied().unwrap_or_default()
    }

    /// The mean round trip (zero when nothing came back).
    pub fn mean(&self) -> Duration {
        let n = u32::try_from(self.rtts.len()).unwrap_or(u32::MAX).max(1);
        self.rtts.iter().sum::<Duration>() / n
    }

    /// The share of datagrams not answered, 0.0 to 1.0.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.rtts.len() as f64 / self.sent as f64
    }
}

/// Send `count` numbered datagrams from `sock` to the UDP echo at `echo`
/// (see [`udp_echo`]), one every `interval`, and time each answer; answers
/// are awaited until `grace` after the last send. Sends and receives
/// overlap, so a lossy or slow path costs no more time than a clean one.
pub fn udp_rtt(
    sock: &UdpSocket,
    echo: SocketAddr,
    count: usize,
    interval: Duration,
    grace: Duration,
) -> std::io::Result<RttStats> {
    let start = Instant::now();
    let mut sent_at = vec![None; count];
    let mut rtts = Vec::with_capacity(count);
    let mut next = 0;
    let mut last_send = start;
    let mut buf = [0u8; 64];
    loop {
        let now = Instant::now();
        if next < count && now >= start + interval * next as u32 {
            sock.send_to(&(next as u32).to_be_bytes(), echo)?;
            last_send = Instant::now();
            sent_at[next] = Some(last_send);
            next += 1;
            continue;
        }
        let deadline = if next < count {
            start + interval * next as u32
        } else {
            if now >= last_send + grace || rtts.len() == count {
                break;
            }
            last_send + grace
        };
        let wait = deadline.saturating_duration_since(now);
        sock.set_read_timeout(Some(wait.max(Duration::from_micros(100))))?;
        match sock.recv_from(&mut buf) {
            Ok((4, from)) if from == echo => {
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if let Some(t) = sent_at.get_mut(seq).and_then(Option::take) {
                    rtts.push(t.elapsed());
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    rtts.sort();
    Ok(RttStats { sent: count, rtts })
}

/// Answer every datagram `sock` receives with the same bytes, until `stop`
/// is set (checked every 100 ms). Run it on a thread of its own.
pub fn udp_echo(sock: &UdpSocket, stop: &std::sync::atomic::AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 1500];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}
