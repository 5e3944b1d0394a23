//! The floods of `natkit bench flood`: unauthenticated UDP requests from
//! many addresses, and TCP connections pipelining requests that can never
//! authenticate.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::framing::Deframer;
use natkit_proto::integrity::{LongTermKey, PasswordAlgorithm};
use natkit_proto::raw::{self, attr, method, Attributes, Class};
use natkit_proto::writer::Writer;
use natkit_runtime::batch::SendBatch;

use super::{local_ip, NET_TCP_FLOOD};

/// Requests in one TCP write of the flood.
const TCP_CHUNK: usize = 256;
/// Datagrams per sendmmsg of the UDP flood.
const UDP_BATCH: usize = 64;

/// A hand-built request: method `m`, `body`, then USERNAME, REALM, NONCE
/// and MESSAGE-INTEGRITY (MD5 key of `user`/`pass`) with `auth`.
pub(super) fn request(
    m: u16,
    tid: &[u8; 12],
    body: impl FnOnce(&mut Writer<'_>),
    auth: Option<(&str, &str, &str, &str)>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut w = Writer::new(&mut buf, m, Class::Request, tid).expect("room for a header");
    body(&mut w);
    if let Some((user, pass, realm, nonce)) = auth {
        let _ = w.bytes(attr::USERNAME, user.as_bytes());
        let _ = w.bytes(attr::REALM, realm.as_bytes());
        let _ = w.bytes(attr::NONCE, nonce.as_bytes());
        let key = LongTermKey::derive(PasswordAlgorithm::Md5, user, realm, pass);
        let _ = w.message_integrity(key.as_bytes());
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// What the UDP flood sends: bare Allocate and Refresh requests (what a
/// reflector sends, 20 bytes) and Allocates with REQUESTED-TRANSPORT (28).
pub(super) fn udp_flood_messages() -> Vec<Vec<u8>> {
    let tid = [0x46; 12];
    vec![
        request(method::ALLOCATE, &tid, |_| {}, None),
        request(
            method::ALLOCATE,
            &tid,
            |w| {
                let _ = w.u32(attr::REQUESTED_TRANSPORT, 17 << 24);
            },
            None,
        ),
        request(method::REFRESH, &tid, |_| {}, None),
    ]
}

/// Send the UDP flood from `socks` to `target` until `stop`: sendmmsg
/// batches, unpaced, each request with its own transaction ID. Never reads
/// the answers. Returns the datagrams the kernel took.
pub(super) fn udp_flood(socks: &[UdpSocket], target: SocketAddr, stop: &AtomicBool) -> u64 {
    let msgs = udp_flood_messages();
    let mut batch = SendBatch::new(UDP_BATCH, 64);
    let mut sent = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for s in socks {
            for _ in 0..UDP_BATCH {
                let m = &msgs[(n % msgs.len() as u64) as usize];
                n += 1;
                let _ = batch.push_with(target, |buf| {
                    buf[..m.len()].copy_from_slice(m);
                    buf[8..16].copy_from_slice(&n.to_be_bytes());
                    m.len()
                });
            }
            match batch.flush(s) {
                Ok(st) => sent += st.sent as u64,
                Err(_) => batch.clear(),
            }
        }
    }
    sent
}

/// One connection of the TCP flood, with its pipeline of requests.
struct Attacker {
    stream: TcpStream,
    chunk: Vec<u8>,
    at: usize,
}

/// Connect from `ip`, draw a 401 for a nonce, and build the pipeline:
/// CreatePermission with that nonce, a real username and a wrong
/// MESSAGE-INTEGRITY (issue 15's attack).
fn attacker(server: SocketAddr, ip: IpAddr, user: &str) -> anyhow::Result<Attacker> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&server.into(), Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {server} over TCP"))?;
    let mut stream: TcpStream = sock.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = |w: &mut Writer<'_>| {
        let _ = w.xor_address(
            attr::XOR_PEER_ADDRESS,
            SocketAddr::from(([127, 0, 0, 9], 9)),
        );
    };
    stream.write_all(&request(method::CREATE_PERMISSION, &[1; 12], peer, None))?;
    let mut d = Deframer::new(4096, true);
    let (realm, nonce) = loop {
        let n = stream.read(d.read_buf())?;
        if n == 0 {
            bail!("{server} closed the connection instead of answering with 401");
        }
        d.filled(n, Instant::now());
        if let Some(f) = d.next_frame()? {
            let h = raw::parse_datagram(f.message)?;
            let mut realm = None;
            let mut nonce = None;
            for a in Attributes::new(f.message, &h).flatten() {
                match a.typ {
                    attr::REALM => realm = Some(String::from_utf8_lossy(a.value).into_owned()),
                    attr::NONCE => nonce = Some(String::from_utf8_lossy(a.value).into_owned()),
                    _ => {}
                }
            }
            match (realm, nonce) {
                (Some(r), Some(n)) => break (r, n),
                _ => bail!("{server}'s answer over TCP has no REALM and NONCE"),
            }
        }
    };
    let one = request(
        method::CREATE_PERMISSION,
        &[2; 12],
        peer,
        Some((user, "not-the-password", &realm, &nonce)),
    );
    stream.set_nonblocking(true)?;
    Ok(Attacker {
        stream,
        chunk: one.repeat(TCP_CHUNK),
        at: 0,
    })
}

/// Run the TCP flood until `stop`: write the pipelines as fast as the
/// server takes them, read and drop whatever comes back, reconnect what
/// the server closes.
pub(super) fn tcp_flood(
    server: SocketAddr,
    user: &str,
    n: usize,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, u64)> {
    let mut conns: Vec<Attacker> = (0..n)
        .map(|i| attacker(server, local_ip(server, NET_TCP_FLOOD, i), user))
        .collect::<anyhow::Result<_>>()?;
    let one = conns.first().map_or(1, |c| c.chunk.len() / TCP_CHUNK);
    let mut bytes = 0u64;
    let mut closed = 0u64;
    let mut sink = vec![0u8; 65536];
    let mut next_ip = n;
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        for (i, p) in fds.iter().enumerate() {
            let c = &mut conns[i];
            let mut dead = p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
            if p.revents & libc::POLLIN != 0 {
                loop {
                    match c.stream.read(&mut sink) {
                        Ok(0) => {
                            dead = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
            if !dead && p.revents & libc::POLLOUT != 0 {
                match c.stream.write(&c.chunk[c.at..]) {
                    Ok(k) => {
                        bytes += k as u64;
                        c.at = (c.at + k) % c.chunk.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => dead = true,
                }
            }
            if dead {
                closed += 1;
                if let Ok(a) = attacker(server, local_ip(server, NET_TCP_FLOOD, next_ip), user) {
                    conns[i] = a;
                }
                next_ip += 1;
            }
        }
    }
    Ok((bytes / one as u64, closed))
}
