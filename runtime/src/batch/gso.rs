//! UDP generic segmentation offload (GSO, `udp(7)` `UDP_SEGMENT`, Linux ≥
//! 4.18): one `sendmsg` hands the kernel a train of equal-size datagrams
//! (the last may be shorter) for one destination, and the train crosses the
//! sending half of the stack once instead of once per datagram. The
//! receiver still gets separate datagrams.
//!
//! This is what a relay wants for one client's burst to one peer: the same
//! socket, the same destination, usually the same size.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr;

use super::sys;

/// `SOL_UDP` and `UDP_SEGMENT` from linux/udp.h (the libc crate does not
/// export them for glibc targets).
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments in one train (`UDP_MAX_SEGMENTS` on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one train: one IP datagram's worth.
pub const MAX_TRAIN_BYTES: usize = 65_000;

/// Send `buf` as datagrams of `segment` bytes (the last may be shorter) to
/// `dest`, or to the connected peer when `dest` is `None`. Returns the bytes
/// sent. Fails with `InvalidInput` for an empty buffer, a zero segment, or
/// more than [`MAX_SEGMENTS`] segments or [`MAX_TRAIN_BYTES`] bytes; a kernel
/// without GSO, or a segment larger than the path allows, fails with the
/// kernel's error (`EINVAL`, `EIO`, `EMSGSIZE`): the caller then sends the
/// datagrams one by one.
pub fn send_segments<S: AsFd + ?Sized>(
    sock: &S,
    buf: &[u8],
    segment: usize,
    dest: Option<SocketAddr>,
) -> io::Result<usize> {
    if segment == 0
        || segment > u16::MAX as usize
        || buf.is_empty()
        || buf.len() > MAX_TRAIN_BYTES
        || buf.len().div_ceil(segment) > MAX_SEGMENTS
    {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut name = sys::zeroed_storage();
    let namelen = match &dest {
        Some(d) => sys::write_sockaddr(d, &mut name),
        None => 0,
    };
    // Room for one cmsghdr carrying a u16, aligned as the kernel expects.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer stored in it (name, iov,
    // control) points to a local that outlives the sendmsg call, and the
    // CMSG_* macros stay within `control`, which is larger than
    // CMSG_SPACE(2). The kernel only reads these buffers.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        if dest.is_some() {
            msg.msg_name = ptr::from_mut(&mut name).cast();
            msg.msg_namelen = namelen;
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment as u16);
        loop {
            let rc = libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, 0);
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_train_arrives_as_separate_datagrams_connected_or_not() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut train = Vec::new();
        for i in 0..3u8 {
            train.extend_from_slice(&[i; 10]);
        }
        train.extend_from_slice(&[9; 4]);
        let dest = rx.local_addr().unwrap();
        assert_eq!(send_segments(&tx, &train, 10, Some(dest)).unwrap(), 34);
        tx.connect(dest).unwrap();
        assert_eq!(send_segments(&tx, &train[..20], 10, None).unwrap(), 20);
        let mut buf = [0u8; 64];
        for want in [
            &[0u8; 10][..],
            &[1; 10],
            &[2; 10],
            &[9; 4],
            &[0; 10],
            &[1; 10],
        ] {
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (want, tx.local_addr().unwrap()));
        }
    }

    #[test]
    fn bad_trains_are_refused_before_the_kernel() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = Some(tx.local_addr().unwrap());
        for (buf, seg) in [(vec![1u8; 10], 0), (vec![], 10), (vec![0; 65 * 10], 10)] {
            let e = send_segments(&tx, &buf, seg, d).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
