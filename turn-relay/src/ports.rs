//! Relay ports: which UDP port a new allocation's relayed address gets
//! (RFC 8656 §7.2), EVEN-PORT and RESERVATION-TOKEN, and DONT-FRAGMENT.
//!
//! [`PortPool`] hands out bound, non-blocking UDP sockets on a relay IP with
//! a port from the configured range (`--min-port`..=`--max-port`):
//!
//! - Ports are picked in an unpredictable order (RFC 8656 §7.2 recommends
//!   it, after RFC 6056: a guessable relayed port helps an attacker inject
//!   data): a random start and a random stride coprime with the number of
//!   candidates, so one pass still visits every candidate once.
//! - Ports this pool holds are skipped without a system call; ports other
//!   processes hold are found by `bind` failing and skipped too, up to
//!   [`MAX_BIND_FAILURES`] failures per request, after which the request
//!   fails with [`PortError::Exhausted`] (508 Insufficient Capacity).
//! - EVEN-PORT (RFC 8656 §7.2, attribute in §18.7) asks for an even port;
//!   with its R bit the next port up is bound too and held for
//!   [`RESERVATION_LIFETIME`] under a random 64-bit RESERVATION-TOKEN. A
//!   later Allocate with that token gets the held socket ([`PortRequest::token`]);
//!   [`PortPool::sweep`] closes reservations nobody claimed.
//! - DONT-FRAGMENT (RFC 8656 §18.9): the DF bit is set on the relayed IPv4
//!   packets (`IP_MTU_DISCOVER = IP_PMTUDISC_DO`) and IPv6 packets are not
//!   fragmented at the source (`IPV6_DONTFRAG`), only when the client asked;
//!   otherwise IPv4 DF is cleared (`IP_PMTUDISC_DONT`) so that what the
//!   client sent gets through (RFC 8656 §14, "alternate behavior"). With DF,
//!   a send larger than the path MTU fails with `EMSGSIZE`: the caller drops
//!   that datagram.
//! - Socket buffers are modest ([`SOCKET_BUFFER`]): a relay may hold 10,000
//!   relay sockets, and the kernel charges every queued byte.
//! - IPv6 sockets are `IPV6_V6ONLY`: an IPv6 relayed address relays IPv6
//!   only (RFC 6156), and it leaves the IPv4 port free for the IPv4 pool.
//!
//! The pool is shared by every worker behind one mutex: it is only touched
//! on the control path (Allocate, Refresh to 0, expiry), never per packet.
//! Ports are counted per relay IP: an IPv4 and an IPv6 relayed address may
//! use the same port number.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};

/// How long a port reserved by EVEN-PORT's R bit is held (RFC 8656 §7.2:
/// "approximately 30 seconds").
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Receive and send buffer size asked for each relay socket (the kernel
/// doubles it for bookkeeping and caps it at `net.core.rmem_max` /
/// `wmem_max`).
pub const SOCKET_BUFFER: usize = 256 * 1024;

/// How many `bind` failures (ports held by other processes) one request
/// tolerates before giving up with [`PortError::Exhausted`].
pub const MAX_BIND_FAILURES: usize = 128;

/// What an Allocate asks of its relayed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortRequest {
    /// EVEN-PORT: the port must be even.
    pub even: bool,
    /// EVEN-PORT's R bit: also reserve the next port up (implies `even`).
    pub reserve_next: bool,
    /// RESERVATION-TOKEN: take the port an earlier request reserved
    /// (`even` and `reserve_next` are then ignored; the core refuses the
    /// combination with 400 anyway).
    pub token: Option<u64>,
    /// DONT-FRAGMENT.
    pub dont_fragment: bool,
}

/// A relay socket [`PortPool::open`] bound.
#[derive(Debug)]
pub struct Opened {
    /// Bound to the relay IP and `port`, non-blocking.
    pub socket: UdpSocket,
    /// The relayed port.
    pub port: u16,
    /// RESERVATION-TOKEN for the next port, when `reserve_next` was asked.
    pub token: Option<u64>,
}

/// Why no relay socket could be opened.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Every port of the range is taken (508).
    #[error("no free relay port in the configured range")]
    Exhausted,
    /// The RESERVATION-TOKEN is unknown, expired, or for another relay IP
    /// (508, RFC 8656 §7.2).
    #[error("unknown or expired reservation token")]
    BadToken,
    /// The socket could not be created or configured, or the relay IP
    /// cannot be bound (not an address of this host).
    #[error("cannot open a relay socket: {0}")]
    Io(#[from] io::Error),
}

/// The relay port range of one server. `Send + Sync`; see the module docs.
#[derive(Debug)]
pub struct PortPool {
    /// First candidate port (never 0: binding port 0 picks an ephemeral one).
    min: u16,
    max: u16,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every port this pool holds, open or reserved.
    used: HashSet<(IpAddr, u16)>,
    /// Reserved ports by token.
    reserved: HashMap<u64, Held>,
}

#[derive(Debug)]
struct Held {
    ip: IpAddr,
    port: u16,
    socket: UdpSocket,
    since: Instant,
}

impl PortPool {
    /// A pool over `min..=max` (the config checks `min <= max`; an empty
    /// range makes every [`PortPool::open`] fail with
    /// [`PortError::Exhausted`]). Port 0 is never handed out.
    pub fn new(min: u16, max: u16) -> Self {
        PortPool {
            min: min.max(1),
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Binds a relay socket on `ip` (a relay IP of this host) as `req`
    /// asks. The caller owns the socket and gives the port back with
    /// [`PortPool::release`] when the allocation ends.
    pub fn open(&self, ip: IpAddr, req: PortRequest, now: Instant) -> Result<Opened, PortError> {
        let mut g = self.lock();
        if let Some(token) = req.token {
            return take_reservation(&mut g, ip, token, req.dont_fragment, now);
        }
        let reserve = req.reserve_next;
        let even = req.even || reserve;
        if self.min > self.max {
            return Err(PortError::Exhausted);
        }
        let step: u32 = if even { 2 } else { 1 };
        let first = u32::from(self.min) + u32::from(even && self.min % 2 == 1);
        // With a reservation, port + 1 must also be in the range
        // (`max >= min >= 1`, so this does not underflow).
        let last = u32::from(self.max) - u32::from(reserve);
        if first > last {
            return Err(PortError::Exhausted);
        }
        let mut rng = rand::thread_rng();
        let mut failures = 0;
        for port in spread(first, last, step) {
            if g.used.contains(&(ip, port)) || (reserve && g.used.contains(&(ip, port + 1))) {
                continue;
            }
            let socket = match bind(ip, port, req.dont_fragment) {
                Ok(s) => s,
                Err(e) if taken(&e) => {
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(PortError::Io(e)),
            };
            let mut token = None;
            if reserve {
                let next = match bind(ip, port + 1, false) {
                    Ok(s) => s,
                    Err(e) if taken(&e) => {
                        failures += 1;
                        if failures >= MAX_BIND_FAILURES {
                            break;
                        }
                        continue;
                    }
                    Err(e) => return Err(PortError::Io(e)),
                };
                let t = loop {
                    let t: u64 = rng.gen();
                    if !g.reserved.contains_key(&t) {
                        break t;
                    }
                };
                g.used.insert((ip, port + 1));
                g.reserved.insert(
                    t,
                    Held {
                        ip,
                        port: port + 1,
                        socket: next,
                        since: now,
                    },
                );
                token = Some(t);
            }
            g.used.insert((ip, port));
            return Ok(Opened {
                socket,
                port,
                token,
            });
        }
        Err(PortError::Exhausted)
    }

    /// Binds a listening TCP socket on a free port of `ip`, the relayed
    /// address of a TCP allocation (RFC 6062 §5.1); give the port back
    /// with [`PortPool::release`]. SO_REUSEADDR and SO_REUSEPORT: the
    /// relay's connections to peers (§5.2) leave from this same address.
    pub fn open_tcp(&self, ip: IpAddr) -> Result<(TcpListener, u16), PortError> {
        let mut g = self.lock();
        if self.min > self.max {
            return Err(PortError::Exhausted);
        }
        let mut failures = 0;
        for port in spread(u32::from(self.min), u32::from(self.max), 1) {
            if g.used.contains(&(ip, port)) {
                continue;
            }
            match bind_tcp(ip, port) {
                Ok(l) => {
                    g.used.insert((ip, port));
                    return Ok((l, port));
                }
                Err(e) if taken(&e) => {
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES {
                        break;
                    }
                }
                Err(e) => return Err(PortError::Io(e)),
            }
        }
        Err(PortError::Exhausted)
    }

    /// Gives back `port` on `ip` after its socket was closed (or is about to
    /// be: until it is, a new `bind` of that port fails and is skipped).
    /// Only for ports [`PortPool::open`] returned: reserved ports are given
    /// back by [`PortPool::sweep`] or by claiming them.
    pub fn release(&self, ip: IpAddr, port: u16) {
        self.lock().used.remove(&(ip, port));
    }

    /// Closes reservations older than [`RESERVATION_LIFETIME`] and frees
    /// their ports. Call it every few seconds.
    pub fn sweep(&self, now: Instant) {
        let mut g = self.lock();
        let Inner { used, reserved } = &mut *g;
        reserved.retain(|_, h| {
            let keep = !expired(h, now);
            if !keep {
                used.remove(&(h.ip, h.port));
            }
            keep
        });
    }

    /// Ports held now, open or reserved, on every relay IP.
    pub fn in_use(&self) -> usize {
        self.lock().used.len()
    }

    /// Ports held by reservations nobody claimed yet.
    pub fn reserved(&self) -> usize {
        self.lock().reserved.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent across a panic elsewhere: every
        // mutation is a single insert or remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Claims the socket held under `token` (RFC 8656 §7.2).
fn take_reservation(
    g: &mut Inner,
    ip: IpAddr,
    token: u64,
    dont_fragment: bool,
    now: Instant,
) -> Result<Opened, PortError> {
    match g.reserved.get(&token) {
        // A token for another relay IP stays valid for its own.
        Some(h) if h.ip != ip => return Err(PortError::BadToken),
        Some(_) => {}
        None => return Err(PortError::BadToken),
    }
    let Some(h) = g.reserved.remove(&token) else {
        return Err(PortError::BadToken);
    };
    if expired(&h, now) {
        g.used.remove(&(h.ip, h.port));
        return Err(PortError::BadToken);
    }
    // The reserved socket was bound without DF; this request decides.
    if let Err(e) = set_dont_fragment(&h.socket, ip.is_ipv4(), dont_fragment) {
        g.used.remove(&(h.ip, h.port));
        return Err(PortError::Io(e));
    }
    Ok(Opened {
        socket: h.socket,
        port: h.port,
        token: None,
    })
}

fn expired(h: &Held, now: Instant) -> bool {
    now.saturating_duration_since(h.since) >= RESERVATION_LIFETIME
}

/// A random step in `1..n` coprime with `n` (1 when `n` is 1 or 2), so
/// that `start + i * stride mod n` visits each of the `n` candidates once.
fn coprime_stride(rng: &mut impl Rng, n: u32) -> u32 {
    if n <= 2 {
        return 1;
    }
    // About 60% of numbers are coprime with a given n; 32 tries fail with
    // negligible probability, and 1 is always a valid fallback.
    for _ in 0..32 {
        let s = rng.gen_range(1..n);
        if gcd(s, n) == 1 {
            return s;
        }
    }
    1
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Whether a bind error means "someone else has this port" (try another).
fn taken(e: &io::Error) -> bool {
    // EACCES: a port below 1024 without CAP_NET_BIND_SERVICE.
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// The ports `first..=last` (every `step`-th), from a random one on in a
/// random stride coprime with their number: each once, in an order a
/// client cannot predict.
fn spread(first: u32, last: u32, step: u32) -> impl Iterator<Item = u16> {
    let n = (last - first) / step + 1;
    let mut rng = rand::thread_rng();
    let start = rng.gen_range(0..n);
    let stride = coprime_stride(&mut rng, n);
    (0..n).map(move |i| {
        let idx = (u64::from(start) + u64::from(i) * u64::from(stride)) % u64::from(n);
        // `first + idx * step <= last <= 65535`: the casts are exact.
        (first + idx as u32 * step) as u16
    })
}

/// A non-blocking TCP listener on `ip:port`, SO_REUSEPORT (see
/// [`PortPool::open_tcp`]).
fn bind_tcp(ip: IpAddr, port: u16) -> io::Result<TcpListener> {
    let s = tcp_socket(ip)?;
    s.bind(&SocketAddr::new(ip, port).into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// A socket of `ip`'s family; IPv6 ones are `IPV6_V6ONLY` (see the
/// module's notes).
fn socket(ip: IpAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, ty, Some(proto))?;
    if ip.is_ipv6() {
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// A non-blocking TCP socket for `ip`'s family with SO_REUSEADDR and
/// SO_REUSEPORT, so a listener and connections may share a relayed
/// address (RFC 6062 §5.2: Connect leaves from the relayed address).
fn tcp_socket(ip: IpAddr) -> io::Result<Socket> {
    let s = socket(ip, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A non-blocking UDP socket bound to `ip:port`.
fn bind(ip: IpAddr, port: u16, dont_fragment: bool) -> io::Result<UdpSocket> {
    let s = socket(ip, Type::DGRAM, Protocol::UDP)?;
    // Buffer sizes are a request the kernel may cap; a refusal is not a
    // reason to fail the allocation.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    set_dont_fragment(&s, ip.is_ipv4(), dont_fragment)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(ip, port).into())?;
    Ok(s.into())
}

/// DONT-FRAGMENT on (`IP_PMTUDISC_DO` / `IPV6_DONTFRAG` 1) or off
/// (`IP_PMTUDISC_DONT` / `IPV6_DONTFRAG` 0).
fn set_dont_fragment(s: &impl AsRawFd, v4: bool, on: bool) -> io::Result<()> {
    let (level, name, value) = if v4 {
        let v = if on {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_DONT
        };
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, i32::from(on))
    };
    // SAFETY: a valid fd, and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU16, Ordering};

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A block of `n` consecutive ports, starting even, free on 127.0.0.1
    /// and ::1 right now, in 21000-24999 (a range no other test of the
    /// workspace uses, below the Linux ephemeral ports where other sockets
    /// land). Test runners like nextest give each test its own process, and
    /// other checkouts may run these tests at the same time: the starting
    /// point is drawn from the PID and the clock, not a counter alone, so two
    /// processes rarely probe the same blocks.
    fn free_block(n: u16) -> u16 {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = ((std::process::id().wrapping_mul(2_654_435_761) ^ nanos) % 3990) as u16;
        for _ in 0..200 {
            let base = 21000 + (start + NEXT.fetch_add(n + n % 2, Ordering::Relaxed)) % 3990;
            let base = base + base % 2;
            let probe: Result<Vec<_>, _> = (base..base + n)
                .flat_map(|p| {
                    [
                        SocketAddr::new(LO, p),
                        SocketAddr::new("::1".parse().unwrap(), p),
                    ]
                })
                .map(UdpSocket::bind)
                .collect();
            if probe.is_ok() {
                return base;
            }
        }
        panic!("no free block of {n} ports on loopback");
    }

    fn plain() -> PortRequest {
        PortRequest::default()
    }

    #[test]
    fn hands_out_every_port_once_then_exhausts() {
        let base = free_block(3);
        let pool = PortPool::new(base, base + 2);
        let now = Instant::now();
        let mut got: Vec<Opened> = (0..3)
            .map(|_| pool.open(LO, plain(), now).unwrap())
            .collect();
        got.sort_by_key(|o| o.port);
        let ports: Vec<u16> = got.iter().map(|o| o.port).collect();
        assert_eq!(ports, [base, base + 1, base + 2]);
        for o in &got {
            assert_eq!(o.socket.local_addr().unwrap(), SocketAddr::new(LO, o.port));
            assert_eq!(o.token, None);
        }
        assert_eq!(pool.in_use(), 3);
        assert!(matches!(
            pool.open(LO, plain(), now),
            Err(PortError::Exhausted)
        ));
    }

    #[test]
    fn skips_ports_other_processes_hold() {
        let base = free_block(2);
        let _other = UdpSocket::bind(SocketAddr::new(LO, base)).unwrap();
        let pool = PortPool::new(base, base + 1);
        let now = Instant::now();
        let o = pool.open(LO, plain(), now).unwrap();
        assert_eq!(o.port, base + 1);
        assert!(matches!(
            pool.open(LO, plain(), now),
            Err(PortError::Exhausted)
        ));
        assert_eq!(pool.in_use(), 1);
    }

    #[test]
    fn release_makes_a_port_reusable() {
        let base = free_block(1);
        let pool = PortPool::new(base, base);
        let now = Instant::now();
        let o = pool.open(LO, plain(), now).unwrap();
        assert!(matches!(
            pool.open(LO, plain(), now),
            Err(PortError::Exhausted)
        ));
        drop(o.socket);
        pool.release(LO, o.port);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.open(LO, plain(), now).unwrap().port, base);
    }

    #[test]
    fn even_port_gives_even_ports_only() {
        let base = free_block(6);
        // Start on an odd port: the first even candidate is base + 2.
        let pool = PortPool::new(base + 1, base + 5);
        let now = Instant::now();
        let even = PortRequest {
            even: true,
            ..plain()
        };
        let a = pool.open(LO, even, now).unwrap();
        let b = pool.open(LO, even, now).unwrap();
        let mut ports = [a.port, b.port];
        ports.sort_unstable();
        assert_eq!(ports, [base + 2, base + 4]);
        assert!(matches!(
            pool.open(LO, even, now),
            Err(PortError::Exhausted)
        ));
        // The odd ports are still there for requests without EVEN-PORT.
        assert_eq!(pool.open(LO, plain(), now).unwrap().port % 2, 1);
    }

    #[test]
    fn reservation_round_trip() {
        let base = free_block(2);
        let pool = PortPool::new(base, base + 1);
        let t0 = Instant::now();
        let req = PortRequest {
            even: true,
            reserve_next: true,
            ..plain()
        };
        let first = pool.open(LO, req, t0).unwrap();
        assert_eq!(first.port, base);
        let token = first.token.expect("a reservation token");
        assert_eq!((pool.in_use(), pool.reserved()), (2, 1));
        // The next port is really held.
        assert!(UdpSocket::bind(SocketAddr::new(LO, base + 1)).is_err());
        assert!(matches!(
            pool.open(LO, plain(), t0),
            Err(PortError::Exhausted)
        ));

        let claim = PortRequest {
            token: Some(token),
            ..plain()
        };
        // A token for another relay IP is refused and stays valid.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(matches!(
            pool.open(other, claim, t0),
            Err(PortError::BadToken)
        ));
        let second = pool.open(LO, claim, t0 + Duration::from_secs(29)).unwrap();
        assert_eq!(second.port, base + 1);
        assert_eq!(second.token, None);
        assert_eq!(
            second.socket.local_addr().unwrap(),
            SocketAddr::new(LO, base + 1)
        );
        assert_eq!((pool.in_use(), pool.reserved()), (2, 0));
        // A token works once.
        assert!(matches!(pool.open(LO, claim, t0), Err(PortError::BadToken)));
    }

    #[test]
    fn reservation_needs_room_for_the_next_port() {
        let base = free_block(4);
        let req = PortRequest {
            even: true,
            reserve_next: true,
            ..plain()
        };
        // Only base + 2 is even with base + 3 in range: one reservation.
        let pool = PortPool::new(base + 1, base + 3);
        let o = pool.open(LO, req, Instant::now()).unwrap();
        assert_eq!(o.port, base + 2);
        assert!(matches!(
            pool.open(LO, req, Instant::now()),
            Err(PortError::Exhausted)
        ));
        // The next port held by someone else: that candidate is skipped.
        let base = free_block(4);
        let _other = UdpSocket::bind(SocketAddr::new(LO, base + 1)).unwrap();
        let pool = PortPool::new(base, base + 3);
        let o = pool.open(LO, req, Instant::now()).unwrap();
        assert_eq!(o.port, base + 2);
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn unknown_and_expired_tokens_are_refused() {
        let base = free_block(2);
        let pool = PortPool::new(base, base + 1);
        let t0 = Instant::now();
        let unknown = PortRequest {
            token: Some(42),
            ..plain()
        };
        assert!(matches!(
            pool.open(LO, unknown, t0),
            Err(PortError::BadToken)
        ));
        let req = PortRequest {
            reserve_next: true,
            ..plain()
        };
        let token = pool.open(LO, req, t0).unwrap().token.unwrap();
        let claim = PortRequest {
            token: Some(token),
            ..plain()
        };
        let late = t0 + RESERVATION_LIFETIME;
        assert!(matches!(
            pool.open(LO, claim, late),
            Err(PortError::BadToken)
        ));
        // The expired reservation's port was freed on the way.
        assert_eq!((pool.in_use(), pool.reserved()), (1, 0));
    }

    #[test]
    fn sweep_closes_old_reservations() {
        let base = free_block(2);
        let pool = PortPool::new(base, base + 1);
        let t0 = Instant::now();
        let req = PortRequest {
            reserve_next: true,
            ..plain()
        };
        let o = pool.open(LO, req, t0).unwrap();
        pool.sweep(t0 + Duration::from_secs(29));
        assert_eq!((pool.in_use(), pool.reserved()), (2, 1));
        pool.sweep(t0 + Duration::from_secs(31));
        assert_eq!((pool.in_use(), pool.reserved()), (1, 0));
        // The held socket is closed: the port can be bound again.
        drop(UdpSocket::bind(SocketAddr::new(LO, base + 1)).unwrap());
        let claim = PortRequest {
            token: o.token,
            ..plain()
        };
        assert!(matches!(pool.open(LO, claim, t0), Err(PortError::BadToken)));
        assert_eq!(pool.open(LO, plain(), t0).unwrap().port, base + 1);
    }

    fn sockopt(s: &UdpSocket, level: i32, name: i32) -> i32 {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid fd and a c_int-sized out buffer.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn socket_options() {
        let base = free_block(4);
        let pool = PortPool::new(base, base + 3);
        let now = Instant::now();
        let df = PortRequest {
            dont_fragment: true,
            ..plain()
        };
        let v4df = pool.open(LO, df, now).unwrap().socket;
        let v4 = pool.open(LO, plain(), now).unwrap().socket;
        let (ip, mtu) = (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER);
        assert_eq!(sockopt(&v4df, ip, mtu), libc::IP_PMTUDISC_DO);
        assert_eq!(sockopt(&v4, ip, mtu), libc::IP_PMTUDISC_DONT);
        let mut buf = [0u8; 4];
        let e = v4.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // The kernel doubles the asked size; at least what we asked unless
        // capped by rmem_max, and far below the 4 MiB of the listeners.
        let rcv = sockopt(&v4, libc::SOL_SOCKET, libc::SO_RCVBUF);
        assert!(rcv > 0 && rcv <= 2 * SOCKET_BUFFER as i32, "{rcv}");

        let v6ip: IpAddr = "::1".parse().unwrap();
        let v6df = pool.open(v6ip, df, now).unwrap();
        let v6 = pool.open(v6ip, plain(), now).unwrap().socket;
        let (ip6, dontfrag) = (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG);
        assert_eq!(sockopt(&v6df.socket, ip6, dontfrag), 1);
        assert_eq!(sockopt(&v6, ip6, dontfrag), 0);
        assert_eq!(sockopt(&v6, ip6, libc::IPV6_V6ONLY), 1);
        // Ports are counted per IP: 2 on 127.0.0.1 and 2 on ::1.
        assert_eq!(pool.in_use(), 4);
    }

    #[test]
    fn claimed_reservation_takes_this_requests_dont_fragment() {
        let base = free_block(2);
        let pool = PortPool::new(base, base + 1);
        let now = Instant::now();
        let req = PortRequest {
            reserve_next: true,
            ..plain()
        };
        let token = pool.open(LO, req, now).unwrap().token;
        let claim = PortRequest {
            token,
            dont_fragment: true,
            ..plain()
        };
        let s = pool.open(LO, claim, now).unwrap().socket;
        assert_eq!(
            sockopt(&s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_DO
        );
    }

    #[test]
    fn ports_are_unpredictable() {
        // Fresh pools over 64 ports: the first port differs between pools
        // (all equal by chance: probability 64^-9).
        let base = free_block(64);
        let firsts: HashSet<u16> = (0..10)
            .map(|_| {
                let pool = PortPool::new(base, base + 63);
                pool.open(LO, plain(), Instant::now()).unwrap().port
            })
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
        // And pools do not hand out ascending runs (a stride of 1 with no
        // wrap-around happens to one pool in ~40; to all five, never).
        let ascending = (0..5)
            .filter(|_| {
                let pool = PortPool::new(base, base + 63);
                let seq: Vec<u16> = (0..8)
                    .map(|_| pool.open(LO, plain(), Instant::now()).unwrap().port)
                    .collect();
                seq.windows(2).all(|w| w[1] == w[0] + 1)
            })
            .count();
        assert!(ascending < 5);
    }

    #[test]
    fn empty_and_degenerate_ranges() {
        let now = Instant::now();
        assert!(matches!(
            PortPool::new(0, 0).open(LO, plain(), now),
            Err(PortError::Exhausted)
        ));
        assert!(matches!(
            PortPool::new(30001, 30000).open(LO, plain(), now),
            Err(PortError::Exhausted)
        ));
        let even = PortRequest {
            even: true,
            ..plain()
        };
        assert!(matches!(
            PortPool::new(65535, 65535).open(LO, even, now),
            Err(PortError::Exhausted)
        ));
        // An IP that is not on this host is an I/O error, not exhaustion.
        let base = free_block(1);
        let r = PortPool::new(base, base).open("192.0.2.1".parse().unwrap(), plain(), now);
        assert!(matches!(r, Err(PortError::Io(_))), "{r:?}");
    }

    #[test]
    fn strides_visit_every_candidate() {
        let mut rng = rand::thread_rng();
        for n in [1u32, 2, 3, 4, 12, 97, 100, 16384] {
            let stride = coprime_stride(&mut rng, n);
            let start = rng.gen_range(0..n);
            let seen: HashSet<u64> = (0..n)
                .map(|i| (u64::from(start) + u64::from(i) * u64::from(stride)) % u64::from(n))
                .collect();
            assert_eq!(seen.len(), n as usize, "n={n} stride={stride}");
        }
    }
}
