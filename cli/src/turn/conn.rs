//! The blocking connection to the TURN server for one allocation: a UDP
//! socket, a TCP stream or a TLS stream, each cut into whole STUN and
//! ChannelData messages for the sans-IO client. Reads happen only after
//! `poll(2)` says the socket is readable, so one `read` never blocks and two
//! allocations share one thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_proto::framing::{self, FramingError};
use natkit_proto::raw::MAX_MESSAGE_LEN;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// Largest frame accepted from a stream: one STUN message, or ChannelData
/// with its 4-byte header and padding (RFC 8656 §12.5).
const MAX_FRAME: usize = MAX_MESSAGE_LEN + 4;

/// Why the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Plain I/O failure.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server closed the stream.
    #[error("the server closed the connection")]
    Closed,
    /// The stream carried something that is neither STUN nor ChannelData.
    #[error("the server sent data that is not TURN: {0}")]
    Framing(#[from] FramingError),
    /// TLS failed after the handshake (bad record, alert).
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the TLS handshake settled, for the report.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "TLSv1_3" and the like.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
    /// How long the handshake took.
    pub handshake: Duration,
}

/// One connection to the TURN server.
pub enum Conn {
    /// UDP: only datagrams from `server` are taken.
    Udp {
        /// The socket.
        sock: UdpSocket,
        /// The TURN server.
        server: SocketAddr,
    },
    /// TCP: messages are cut from `buf` with [`framing::next_frame`].
    Tcp {
        /// The stream.
        sock: TcpStream,
        /// Bytes read but not yet framed.
        buf: Vec<u8>,
    },
    /// TLS over TCP (RFC 8656 §3.1), framed like TCP.
    Tls {
        /// The TCP stream.
        sock: TcpStream,
        /// The rustls state.
        tls: Box<ClientConnection>,
        /// Plaintext read but not yet framed.
        buf: Vec<u8>,
    },
}

impl Conn {
    /// A UDP socket for talking to `server`, bound to the local address
    /// the system routes to it from.
    pub fn udp(server: SocketAddr) -> anyhow::Result<(Conn, SocketAddr)> {
        let (sock, local) = crate::udp_driver::bind_for(server, None)?;
        Ok((Conn::Udp { sock, server }, local))
    }

    /// A TCP connection to `server`, or an error within `timeout`.
    pub fn tcp(server: SocketAddr, timeout: Duration) -> io::Result<(Conn, SocketAddr)> {
        let sock = connect_tcp(server, timeout)?;
        let local = sock.local_addr()?;
        Ok((
            Conn::Tcp {
                sock,
                buf: Vec::new(),
            },
            local,
        ))
    }

    /// A TLS connection to `server`: TCP connect, then the whole handshake,
    /// each bounded by `timeout`.
    pub fn tls(
        server: SocketAddr,
        name: ServerName<'static>,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<(Conn, SocketAddr, TlsInfo), TlsConnectError> {
        let mut sock = connect_tcp(server, timeout).map_err(TlsConnectError::Connect)?;
        let local = sock.local_addr().map_err(TlsConnectError::Connect)?;
        let mut tls = ClientConnection::new(config, name).map_err(TlsConnectError::Handshake)?;
        let start = Instant::now();
        // The handshake is the only place we block on reads without poll:
        // bound it by a socket timeout, removed afterwards.
        sock.set_read_timeout(Some(timeout))
            .map_err(TlsConnectError::Connect)?;
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut sock) {
                // rustls reports its own failures as InvalidData wrapping a
                // rustls::Error: pull it out for a precise message.
                let inner = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .cloned();
                return Err(match inner {
                    Some(r) => TlsConnectError::Handshake(r),
                    None => TlsConnectError::Io(e),
                });
            }
        }
        sock.set_read_timeout(None)
            .map_err(TlsConnectError::Connect)?;
        let info = TlsInfo {
            version: tls
                .protocol_version()
                .map_or_else(|| "unknown".into(), |v| format!("{v:?}")),
            cipher: tls
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |c| format!("{:?}", c.suite())),
            handshake: start.elapsed(),
        };
        Ok((
            Conn::Tls {
                sock,
                tls: Box::new(tls),
                buf: Vec::new(),
            },
            local,
            info,
        ))
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        match self {
            Conn::Udp { sock, .. } => sock.as_raw_fd(),
            Conn::Tcp { sock, .. } | Conn::Tls { sock, .. } => sock.as_raw_fd(),
        }
    }

    /// Send one message to the server.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), ConnError> {
        match self {
            Conn::Udp { sock, server } => {
                sock.send_to(msg, *server)?;
            }
            Conn::Tcp { sock, .. } => sock.write_all(msg)?,
            Conn::Tls { sock, tls, .. } => {
                tls.writer().write_all(msg)?;
                while tls.wants_write() {
                    tls.write_tls(sock)?;
                }
            }
        }
        Ok(())
    }

    /// Read once (the socket is readable) and append every whole message
    /// that is now available to `out`.
    pub fn read(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), ConnError> {
        let mut chunk = [0u8; 64 * 1024];
        match self {
            Conn::Udp { sock, server } => match sock.recv_from(&mut chunk) {
                // Datagrams from anyone but the server are not for the
                // client (RFC 8656 §3: all TURN traffic comes via the server).
                Ok((n, from)) if from == *server => out.push(chunk[..n].to_vec()),
                Ok(_) => {}
                // ICMP errors and signals: the client's timers decide when
                // to give up, not one error.
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e.into()),
            },
            Conn::Tcp { sock, buf } => match sock.read(&mut chunk) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    cut_frames(buf, out)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            },
            Conn::Tls { sock, tls, buf } => {
                match tls.read_tls(sock) {
                    Ok(0) => return Err(ConnError::Closed),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                let state = tls.process_new_packets()?;
                // Answer whatever the TLS layer itself wants to say
                // (alerts, key updates).
                while tls.wants_write() {
                    tls.write_tls(sock)?;
                }
                loop {
                    match tls.reader().read(&mut chunk) {
                        Ok(0) => return Err(ConnError::Closed),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                cut_frames(buf, out)?;
                if state.peer_has_closed() && buf.is_empty() {
                    return Err(ConnError::Closed);
                }
            }
        }
        Ok(())
    }
}

/// Why a TLS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// The TCP connection failed.
    #[error("{0}")]
    Connect(io::Error),
    /// The TLS handshake failed (certificate, protocol, alert).
    #[error("{0}")]
    Handshake(rustls::Error),
    /// The connection broke during the handshake.
    #[error("{0}")]
    Io(io::Error),
}

fn connect_tcp(server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let sock = TcpStream::connect_timeout(&server, timeout)?;
    // Small TURN messages must not wait for Nagle: the RTT is measured.
    sock.set_nodelay(true)?;
    Ok(sock)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Move every whole frame at the head of `buf` to `out` (RFC 8489 §6.2.2:
/// STUN's length field delimits messages on a stream; RFC 8656 §12.5:
/// ChannelData is padded to 4 bytes there).
fn cut_frames(buf: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) -> Result<(), FramingError> {
    let mut at = 0;
    while let Some(f) = framing::next_frame(&buf[at..], true, MAX_FRAME)? {
        out.push(buf[at..at + f.message_len].to_vec());
        at += f.consumed;
    }
    buf.drain(..at);
    Ok(())
}

/// Wait until one of `fds` is readable or `timeout` passes; returns which
/// are readable (or in error, which the following read reports).
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up so a wait of 0.3 ms does not become a busy 0 ms poll.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid, exclusively borrowed array of `len` pollfd.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use natkit_proto::channel_data;

    #[test]
    fn frames_are_cut_across_reads_with_padding() {
        let mut msg = [0u8; 16];
        let n = channel_data::encode(&mut msg, 0x4001, b"hello", true).unwrap();
        assert_eq!(n, 12, "5 bytes of data padded to 8 after the header");
        let mut stream = msg[..n].to_vec();
        stream.extend_from_slice(&msg[..n]);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        // Feed one byte at a time: a frame appears only once it is whole.
        for (i, b) in stream.iter().enumerate() {
            buf.push(*b);
            cut_frames(&mut buf, &mut out).unwrap();
            let want = (i + 1) / n;
            assert_eq!(out.len(), want, "after {} bytes", i + 1);
        }
        assert!(buf.is_empty());
        // The padding is not part of the message given to the client.
        assert_eq!(out[0].len(), 4 + 5);
        assert_eq!(&out[1][4..], b"hello");
    }

    #[test]
    fn garbage_on_the_stream_is_an_error() {
        // A TLS record where STUN was expected: no magic cookie.
        let mut buf = vec![0x16, 3, 1, 0, 0xA5, 1, 0, 0];
        let mut out = Vec::new();
        assert!(cut_frames(&mut buf, &mut out).is_err());
        assert!(out.is_empty());
    }
}
