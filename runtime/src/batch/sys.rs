//! The kernel-facing structs: zeroed C structs and `sockaddr` conversions.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

/// A zeroed `mmsghdr`.
pub(super) fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers (plus private padding
    // fields on some libcs); the all-zero bit pattern is valid for every field (null pointers,
    // zero lengths).
    unsafe { mem::zeroed() }
}

/// A zeroed `sockaddr_storage`.
pub(super) fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: `sockaddr_storage` is a plain C struct of integers; all-zero is valid (AF_UNSPEC).
    unsafe { mem::zeroed() }
}

pub(super) fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }
}

/// Writes `addr` into `storage` in the kernel's layout and returns the length to pass.
pub(super) fn write_sockaddr(
    addr: &SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    // The octets are already in network order; keep the bytes as they are.
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is at least as large and as aligned as `sockaddr_in`
            // (that is its purpose), and `storage` is a valid, exclusive reference.
            unsafe { ptr::write(ptr::from_mut(storage).cast::<libc::sockaddr_in>(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, `sockaddr_storage` can hold a `sockaddr_in6`.
            unsafe { ptr::write(ptr::from_mut(storage).cast::<libc::sockaddr_in6>(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the address the kernel wrote into `storage`; `None` for a family other than IPv4/IPv6
/// or a length too short for it.
pub(super) fn read_sockaddr(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a `sockaddr_in` (family AF_INET, length checked);
            // `sockaddr_storage` is suitably sized and aligned for it.
            let sin = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a `sockaddr_in6` (family AF_INET6, length checked);
            // `sockaddr_storage` is suitably sized and aligned for it.
            let sin6 = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn sockaddr_roundtrip() {
        let addrs: [SocketAddr; 3] = [
            "192.0.2.1:3478".parse().unwrap(),
            "[2001:db8::1]:5349".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0x12345, 3)),
        ];
        let mut set = BTreeSet::new();
        for a in addrs {
            let mut st = zeroed_storage();
            let len = write_sockaddr(&a, &mut st);
            assert_eq!(read_sockaddr(&st, len), Some(a));
            set.insert(len);
            // A length too short for the family is rejected, not misread.
            assert_eq!(read_sockaddr(&st, len - 1), None);
        }
        assert_eq!(set.len(), 2);
        assert_eq!(read_sockaddr(&zeroed_storage(), 128), None);
    }
}
