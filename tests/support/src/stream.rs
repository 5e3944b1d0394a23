//! STUN over a byte stream from the client's side: reading one message,
//! and trickling one (a slow-loris peer).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use natkit_proto::binding::{self, RequestOptions};

/// Reads one whole STUN message (RFC 8489 §6.2.2: the header's length
/// delimits it on a stream) from `r`.
pub fn read_stun_message(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 20];
    r.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    r.read_exact(&mut msg[20..])?;
    Ok(msg)
}

/// Sends a Binding request one byte every `gap` (a slow-loris peer) and
/// returns how long after the first byte the server closed the connection
/// (EOF, reset or a failed write), or `None` if the whole request went
/// through and was answered.
pub fn trickle_binding(s: &mut TcpStream, gap: Duration) -> Option<Duration> {
    let mut req = [0u8; 64];
    let n = binding::write_request(&mut req, &[5; 12], &RequestOptions::default())
        .expect("a Binding request fits in 64 bytes");
    trickle_until_closed(s, &req[..n], gap)
}

fn trickle_until_closed(s: &mut TcpStream, frame: &[u8], gap: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(gap)).expect("a read timeout");
    let start = Instant::now();
    let mut one = [0u8; 1];
    for &b in frame {
        if s.write_all(&[b]).is_err() {
            return Some(start.elapsed());
        }
        match s.read(&mut one) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(n) if n > 0 => return None,
            _ => return Some(start.elapsed()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener};

    #[test]
    fn a_message_is_read_whole_and_a_closing_server_is_timed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // A 24-byte message in two writes, then: read 3 bytes and close.
            let mut msg = [0u8; 24];
            msg[3] = 4;
            s.write_all(&msg[..10]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(&msg[10..]).unwrap();
            let mut b = [0u8; 3];
            s.read_exact(&mut b).unwrap();
            s.shutdown(Shutdown::Both).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        assert_eq!(read_stun_message(&mut c).unwrap().len(), 24);
        let closed = trickle_until_closed(&mut c, &[1; 20], Duration::from_millis(50));
        assert!(
            closed.is_some_and(|d| d < Duration::from_secs(1)),
            "{closed:?}"
        );
        server.join().unwrap();
    }
}
