//! The floods of `natkit bench flood`: unauthenticated UDP requests from
//! many addresses, and TCP connections pipelining requests that can never
//! authenticate.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natkit_proto::framing::Deframer;
use natkit_proto::integrity::{LongTermKey, PasswordAlgorithm};
use natkit_proto::raw::{self, attr, method, Attributes, Class};
use natkit_proto::writer::Writer;
use natkit_runtime::batch::SendBatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use super::watch::stopped;
use super::{local_ip, runtime, NET_TCP_FLOOD};

/// Requests in one TCP write of the flood.
const TCP_CHUNK: usize = 256;
/// Datagrams per sendmmsg of the UDP flood.
const UDP_BATCH: usize = 64;
/// How long a TCP flood connection may take to connect, and then to draw
/// its 401.
const TCP_SETUP_LIMIT: Duration = Duration::from_secs(5);
/// Pause after a reconnection failed, before the next try.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

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
async fn attacker(server: SocketAddr, ip: IpAddr, user: &str) -> anyhow::Result<Attacker> {
    let sock = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("cannot open a TCP socket")?;
    sock.bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("cannot bind a TCP socket to {ip}"))?;
    let mut stream = tokio::time::timeout(TCP_SETUP_LIMIT, sock.connect(server))
        .await
        .map_err(|_| anyhow::anyhow!("no TCP connection to {server} within {TCP_SETUP_LIMIT:?}"))?
        .with_context(|| format!("cannot connect to {server} over TCP"))?;
    stream.set_nodelay(true)?;
    let peer = |w: &mut Writer<'_>| {
        let _ = w.xor_address(
            attr::XOR_PEER_ADDRESS,
            SocketAddr::from(([127, 0, 0, 9], 9)),
        );
    };
    stream
        .write_all(&request(method::CREATE_PERMISSION, &[1; 12], peer, None))
        .await?;
    let (realm, nonce) = tokio::time::timeout(TCP_SETUP_LIMIT, challenge(&mut stream, server))
        .await
        .map_err(|_| {
            anyhow::anyhow!("no answer from {server} over TCP within {TCP_SETUP_LIMIT:?}")
        })??;
    let one = request(
        method::CREATE_PERMISSION,
        &[2; 12],
        peer,
        Some((user, "not-the-password", &realm, &nonce)),
    );
    Ok(Attacker {
        stream,
        chunk: one.repeat(TCP_CHUNK),
        at: 0,
    })
}

/// Read the 401 to the first request: its REALM and NONCE.
async fn challenge(stream: &mut TcpStream, server: SocketAddr) -> anyhow::Result<(String, String)> {
    let mut d = Deframer::new(4096, true);
    loop {
        let n = stream.read(d.read_buf()).await?;
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
            return match (realm, nonce) {
                (Some(r), Some(n)) => Ok((r, n)),
                _ => bail!("{server}'s answer over TCP has no REALM and NONCE"),
            };
        }
    }
}

/// What the TCP flood's connections share.
struct TcpFlood {
    server: SocketAddr,
    user: String,
    /// Bytes of requests written.
    bytes: AtomicU64,
    /// Connections the server closed.
    closed: AtomicU64,
    /// The next source address for a new connection.
    next_ip: AtomicUsize,
}

impl TcpFlood {
    /// Write `a`'s pipeline as fast as the server takes it, read and drop
    /// whatever comes back; when the server closes the connection (or it
    /// fails), count it and open another from a new address. Never ends:
    /// the caller drops it at the end of the flood.
    async fn keep_writing(&self, mut a: Attacker) {
        let mut sink = vec![0u8; 65536];
        loop {
            let (mut rd, mut wr) = a.stream.split();
            loop {
                tokio::select! {
                    got = rd.read(&mut sink) => {
                        if !matches!(got, Ok(n) if n > 0) {
                            break;
                        }
                    }
                    put = wr.write(&a.chunk[a.at..]) => match put {
                        Ok(k) => {
                            self.bytes.fetch_add(k as u64, Ordering::Relaxed);
                            a.at = (a.at + k) % a.chunk.len();
                        }
                        Err(_) => break,
                    }
                }
            }
            self.closed.fetch_add(1, Ordering::Relaxed);
            a = loop {
                let i = self.next_ip.fetch_add(1, Ordering::Relaxed);
                match attacker(
                    self.server,
                    local_ip(self.server, NET_TCP_FLOOD, i),
                    &self.user,
                )
                .await
                {
                    Ok(new) => break new,
                    Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
                }
            };
        }
    }
}

/// Run the TCP flood until `stop`, on a one-thread runtime of its own: `n`
/// connections, each its own task writing its pipeline as fast as the
/// server takes it. Returns the requests written (whole or in part) and
/// the connections the server closed.
pub(super) fn tcp_flood(
    server: SocketAddr,
    user: &str,
    n: usize,
    stop: &AtomicBool,
) -> anyhow::Result<(u64, u64)> {
    runtime()?.block_on(async {
        let mut first = Vec::with_capacity(n);
        for i in 0..n {
            first.push(attacker(server, local_ip(server, NET_TCP_FLOOD, i), user).await?);
        }
        let one = first.first().map_or(1, |c| c.chunk.len() / TCP_CHUNK) as u64;
        let flood = Arc::new(TcpFlood {
            server,
            user: user.to_owned(),
            bytes: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            next_ip: AtomicUsize::new(n),
        });
        let mut conns = JoinSet::new();
        for a in first {
            let flood = flood.clone();
            conns.spawn(async move { flood.keep_writing(a).await });
        }
        tokio::select! {
            () = stopped(stop) => {}
            Some(Err(e)) = conns.join_next() => bail!("a TCP flood connection's task failed: {e}"),
        }
        // Dropping the set ends the connections' tasks.
        conns.abort_all();
        Ok((
            flood.bytes.load(Ordering::Relaxed) / one,
            flood.closed.load(Ordering::Relaxed),
        ))
    })
}
