//! Link profiles: latency, jitter and loss on a site's access link (between
//! its outermost router and the internet bridge).
//!
//! The issue asked for `tc qdisc ... netem`. This machine's kernel is built
//! without it (`CONFIG_NET_SCH_NETEM` is not set and there are no modules:
//! `tc qdisc add ... netem` says "Specified qdisc kind is unknown"), and
//! nftables' `queue` is missing too, so the lab emulates the link in user
//! space, which works on any kernel with TAP devices: a shaped link is a
//! pair of TAP devices (the router's `wan`, the bridge's `s<n>`) joined by a
//! "wire" process (`natkit-lab wire`) that reads each Ethernet frame from
//! one side and writes it to the other after the profile's one-way delay,
//! plus a jitter offset, or drops it with the profile's loss probability.
//! Like netem, each direction is delayed separately, so a profile's
//! round-trip time is twice its one-way delay.
//!
//! Unlike netem with jitter, frames are never reordered (real access links
//! are FIFO; netem's reordering under jitter is a known artefact), and the
//! mean delay is the profile's at any packet rate. Both come from how the
//! jitter offset is drawn: not per frame, but as a value uniform in
//! ± jitter every [`jitter_period`] (4 × the jitter: 40 ms for `mobile`),
//! the offset moving linearly from one value to the next in between (like
//! netem's correlation, the delay of frames close in time is close). The
//! offset then changes at most half as fast as time passes, so a later
//! frame is always due later. (Drawing per frame and holding each frame
//! behind the one before made every frame wait for the slowest draw of the
//! last jitter window: 31.7 ms one way at a frame every 5 ms, 38 ms in
//! bulk, for a nominal 30 ms, simulated; in the lab, mobile's peer RTT
//! measured 131.6 ms every 5 ms, 144.5 ms every 1 ms and 155 ms every
//! 0.2 ms, for a nominal 120. A constant offset per 10 ms period still
//! holds frames back each time the offset drops: 31.5 ms in bulk.) The
//! queue holds at most 1000 frames per direction (netem's default
//! `limit`); more are dropped as a full queue would.
//!
//! The figures (one way, on each site's access link, both directions),
//! and the medians measured by `cargo nextest run -p natkit-lab --test
//! link_profiles --no-capture` (five runs, load average 4.6-5.5 on two
//! cores; peer ↔ peer with a datagram every 5 ms / every 1 ms):
//!
//! | profile     | delay   | jitter   | loss | site ↔ internet RTT | peer ↔ peer RTT | measured peer ↔ peer | measured site |
//! |-------------|---------|----------|------|---------------------|-----------------|----------------------|---------------|
//! | `unshaped`  | -       | -        | -    | ~0.05 ms (veth)     | ~0.1 ms         | 0.04-0.09 / 0.17-0.20 ms | 0.04-0.18 ms |
//! | `lan`       | 0.25 ms | -        | -    | 0.5 ms              | 1 ms            | 1.30-1.44 / 1.35-1.38 ms | 0.69-0.76 ms |
//! | `broadband` | 10 ms   | ± 1 ms   | -    | 20 ms               | 40 ms           | 40.5-41.3 / 40.5-40.9 ms | 19.8-20.4 ms |
//! | `mobile`    | 30 ms   | ± 10 ms  | 0.5 %| 60 ms               | 120 ms          | 122-126 / 120.5-124.6 ms | 59-64 ms |
//!
//! Mobile's 0.5 % per direction makes about 1 % per round trip to the
//! internet (and about 2 % between two mobile peers, whose datagrams cross
//! four link directions).

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{LabError, Result};
use crate::netns::Netns;

/// How a site's access link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LinkProfile {
    /// A plain veth pair: what the lab always had (~0.1 ms between peers).
    #[default]
    Unshaped,
    /// About 1 ms between two peers.
    Lan,
    /// About 20 ms to the internet, 40 ms between two peers.
    Broadband,
    /// About 60 ms to the internet with jitter and loss.
    Mobile,
}

/// One direction of a shaped link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// One-way delay.
    pub delay: Duration,
    /// The delay varies uniformly within ± this.
    pub jitter: Duration,
    /// Probability a frame is dropped.
    pub loss: f64,
}

impl LinkProfile {
    /// Every profile.
    pub const ALL: [LinkProfile; 4] = [
        LinkProfile::Unshaped,
        LinkProfile::Lan,
        LinkProfile::Broadband,
        LinkProfile::Mobile,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LinkProfile::Unshaped => "unshaped",
            LinkProfile::Lan => "lan",
            LinkProfile::Broadband => "broadband",
            LinkProfile::Mobile => "mobile",
        }
    }

    /// Parse a name as [`LinkProfile::name`] gives it.
    pub fn parse(s: &str) -> Option<LinkProfile> {
        LinkProfile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// What each direction of the access link does; `None` for a plain
    /// veth.
    pub fn shape(self) -> Option<Shape> {
        let us = Duration::from_micros;
        match self {
            LinkProfile::Unshaped => None,
            LinkProfile::Lan => Some(Shape {
                delay: us(250),
                jitter: Duration::ZERO,
                loss: 0.0,
            }),
            LinkProfile::Broadband => Some(Shape {
                delay: us(10_000),
                jitter: us(1_000),
                loss: 0.0,
            }),
            LinkProfile::Mobile => Some(Shape {
                delay: us(30_000),
                jitter: us(10_000),
                loss: 0.005,
            }),
        }
    }
}

impl fmt::Display for LinkProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Frames held per direction before new ones are dropped (netem's default
/// `limit`).
const QUEUE_LIMIT: usize = 1000;
/// Largest frame read from a TAP device (no GSO without IFF_VNET_HDR, so
/// an MTU-sized frame; room for jumbo ones anyway).
const FRAME_MAX: usize = 65_536;

/// Open the existing TAP device `dev` in namespace `ns`, non-blocking.
/// Opened on a thread inside `ns` ([`Netns::enter`]): a tun file is bound
/// to the namespace it was opened in, and TUNSETIFF looks `dev` up there;
/// the calling thread stays where it is.
fn open_tap(ns: &str, dev: &str) -> Result<File> {
    if dev.len() >= libc::IFNAMSIZ {
        return Err(LabError::Other(format!("device name {dev:?} too long")));
    }
    Netns::existing(ns).enter(|| {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|e| LabError::io(format!("opening /dev/net/tun in {ns}"), e))?;
        // SAFETY: an all-zero ifreq is valid (name empty, union zero).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives on this
        // stack frame for the call.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(LabError::io(
                format!("attaching to TAP device {dev} in {ns}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(tun)
    })?
}

/// How often the jitter offset gets a new value: 4 × the jitter, so the
/// offset (moving linearly between values up to 2 × jitter apart) changes at
/// most half as fast as time passes and never reorders frames.
pub fn jitter_period(jitter: Duration) -> Duration {
    jitter * 4
}

/// The jitter offset of one direction over time: values drawn uniformly in
/// ± jitter every [`jitter_period`], joined linearly.
struct Jitter {
    /// Nanoseconds of ± jitter.
    range: i64,
    period: Duration,
    /// Start of the current period and the offsets (ns) at its two ends.
    from: Instant,
    at_from: i64,
    at_to: i64,
}

impl Jitter {
    fn new(jitter: Duration, now: Instant, rng: &mut StdRng) -> Jitter {
        let range = jitter.as_nanos() as i64;
        let mut j = Jitter {
            range,
            period: jitter_period(jitter),
            from: now,
            at_from: 0,
            at_to: 0,
        };
        j.at_from = j.draw(rng);
        j.at_to = j.draw(rng);
        j
    }

    fn draw(&self, rng: &mut StdRng) -> i64 {
        if self.range > 0 {
            rng.gen_range(-self.range..=self.range)
        } else {
            0
        }
    }

    /// The offset in nanoseconds at `now` (not earlier than the last call).
    fn offset(&mut self, now: Instant, rng: &mut StdRng) -> i64 {
        if self.range == 0 {
            return 0;
        }
        while now >= self.from + self.period {
            self.from += self.period;
            self.at_from = self.at_to;
            self.at_to = self.draw(rng);
        }
        let f = now.duration_since(self.from).as_nanos() as i64;
        let p = self.period.as_nanos() as i64;
        self.at_from + (self.at_to - self.at_from) * f / p
    }
}

/// Frames in flight in one direction, due in order.
struct Direction {
    shape: Shape,
    jitter: Jitter,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// When the last queued frame leaves: no frame overtakes it (with the
    /// jitter's slow drift none would; this holds if the clock stalls).
    last_due: Instant,
}

impl Direction {
    fn new(shape: Shape, rng: &mut StdRng) -> Direction {
        let now = Instant::now();
        Direction {
            shape,
            jitter: Jitter::new(shape.jitter, now, rng),
            queue: VecDeque::with_capacity(QUEUE_LIMIT),
            last_due: now,
        }
    }

    /// Queue `frame` (copied into a buffer from `pool`), or drop it.
    fn admit(&mut self, frame: &[u8], now: Instant, rng: &mut StdRng, pool: &mut Vec<Vec<u8>>) {
        if self.queue.len() >= QUEUE_LIMIT
            || (self.shape.loss > 0.0 && rng.gen_bool(self.shape.loss))
        {
            return;
        }
        let offset = self.jitter.offset(now, rng);
        let delay = (self.shape.delay.as_nanos() as i64 + offset).max(0) as u64;
        let due = (now + Duration::from_nanos(delay)).max(self.last_due);
        self.last_due = due;
        let mut buf = pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.queue.push_back((due, buf));
    }
}

/// Run the wire between TAP `a_dev` in `a_ns` and TAP `b_dev` in `b_ns`
/// with `profile`'s shape each way, until killed. Both devices' carrier
/// comes up once they are attached: what the lab waits for.
pub fn run_wire(
    a_ns: &str,
    a_dev: &str,
    b_ns: &str,
    b_dev: &str,
    profile: LinkProfile,
    seed: u64,
) -> Result<()> {
    let shape = profile.shape().ok_or_else(|| {
        LabError::Other(format!("profile {profile} is a plain veth: no wire to run"))
    })?;
    // Wake-ups as close to the due time as the kernel can: the lan profile
    // delays by 250 µs, and the default slack is 50 µs.
    // SAFETY: prctl(2) with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64);
    }
    let mut taps = [open_tap(a_ns, a_dev)?, open_tap(b_ns, b_dev)?];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dirs = [
        Direction::new(shape, &mut rng),
        Direction::new(shape, &mut rng),
    ];
    // Buffers of frames in flight, reused: the pool grows to the most
    // frames ever in flight (at most 2 x QUEUE_LIMIT, ~4 MB of MTU-sized
    // frames; no GSO without IFF_VNET_HDR, so a frame is at most the MTU)
    // and allocates no more after that.
    let mut pool: Vec<Vec<u8>> = (0..64).map(|_| Vec::with_capacity(2048)).collect();
    let mut frame = vec![0u8; FRAME_MAX];
    loop {
        let now = Instant::now();
        // Deliver what is due: direction 0 goes a -> b, 1 goes b -> a.
        for (d, dir) in dirs.iter_mut().enumerate() {
            while dir.queue.front().is_some_and(|(due, _)| *due <= now) {
                let Some((_, buf)) = dir.queue.pop_front() else {
                    break;
                };
                // A full device queue or a link going down loses the
                // frame, as a real link would.
                let _ = taps[1 - d].write(&buf);
                pool.push(buf);
            }
        }
        let next = dirs
            .iter()
            .filter_map(|d| d.queue.front().map(|f| f.0))
            .min();
        let ts = next.map(|due| {
            let wait = due.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            }
        });
        let mut fds = [
            libc::pollfd {
                fd: taps[0].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: taps[1].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: two valid pollfds; the timespec outlives the call.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, tsp, std::ptr::null()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LabError::io("ppoll on the TAP devices", e));
        }
        let now = Instant::now();
        for (d, fd) in fds.iter().enumerate() {
            if fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(LabError::Other(format!(
                    "TAP device {} went away",
                    if d == 0 { a_dev } else { b_dev }
                )));
            }
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            // Drain what is there now; the next poll sees the rest.
            for _ in 0..64 {
                match taps[d].read(&mut frame) {
                    Ok(0) => break,
                    Ok(n) => dirs[d].admit(&frame[..n], now, &mut rng, &mut pool),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LabError::io("reading a TAP device", e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed one direction a frame every `spacing` for 20 s of simulated
    /// time, delivering what is due: (mean delay, min, max), in ms, and
    /// whether the frames left in order.
    fn run(shape: Shape, spacing: Duration) -> (f64, f64, f64, bool) {
        let mut rng = StdRng::seed_from_u64(7);
        let mut dir = Direction::new(shape, &mut rng);
        let start = dir.last_due;
        let mut pool = Vec::new();
        let (mut sum, mut min, mut max, mut n) = (0.0, f64::MAX, 0.0f64, 0u32);
        let mut in_order = true;
        let mut last_out = start;
        let mut now = start;
        while now < start + Duration::from_secs(20) {
            // Each frame carries its send time, in ns since start.
            let sent = now.duration_since(start).as_nanos() as u64;
            dir.admit(&sent.to_be_bytes(), now, &mut rng, &mut pool);
            now += spacing;
            while dir.queue.front().is_some_and(|(due, _)| *due <= now) {
                let (due, buf) = dir.queue.pop_front().unwrap();
                in_order &= due >= last_out;
                last_out = due;
                let sent = u64::from_be_bytes(buf[..8].try_into().unwrap());
                let d = due.duration_since(start + Duration::from_nanos(sent));
                let ms = d.as_secs_f64() * 1000.0;
                sum += ms;
                min = min.min(ms);
                max = max.max(ms);
                n += 1;
                pool.push(buf);
            }
        }
        (sum / f64::from(n), min, max, in_order)
    }

    #[test]
    fn mobile_delay_keeps_its_mean_at_any_rate_without_reordering() {
        let shape = LinkProfile::Mobile.shape().unwrap();
        let shape = Shape { loss: 0.0, ..shape };
        // From bulk (a frame every 100 µs) to sparse (every 50 ms).
        for us in [100, 1_000, 5_000, 50_000] {
            let (mean, min, max, in_order) = run(shape, Duration::from_micros(us));
            assert!(in_order, "every {us} µs: frames reordered");
            assert!(
                (29.5..=30.5).contains(&mean),
                "every {us} µs: mean one-way delay {mean:.2} ms, want 30"
            );
            assert!(
                min >= 20.0 && max <= 40.0,
                "every {us} µs: delay {min:.1}-{max:.1} ms, want within 30 ± 10"
            );
            assert!(
                max - min >= 10.0,
                "every {us} µs: {min:.1}-{max:.1} ms, want jitter"
            );
        }
    }

    #[test]
    fn lan_delay_is_exact() {
        let shape = LinkProfile::Lan.shape().unwrap();
        let (mean, min, max, in_order) = run(shape, Duration::from_micros(100));
        assert!(in_order);
        assert!(
            (mean - 0.25).abs() < 1e-6 && min == max,
            "{mean} {min} {max}"
        );
    }
}
