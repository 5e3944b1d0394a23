//! Loopback ports for test servers.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// How many ports to try before giving up (a loaded machine may lose a
/// race now and then, never a hundred times in a row).
const TRIES: usize = 100;

/// A port free for both UDP and TCP on 127.0.0.1 right now (servers listen
/// on both transports on the same port).
pub fn free_port() -> u16 {
    free_port_on(&[Ipv4Addr::LOCALHOST])
}

/// A port free for both UDP and TCP on 127.0.0.1 and 127.0.0.2 right now:
/// the two addresses of an RFC 5780 server on loopback (RFC 5780 §4.1:
/// OTHER-ADDRESS differs in address and port).
pub fn free_port_rfc5780() -> u16 {
    free_port_on(&[Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)])
}

/// A port free for both UDP and TCP on every address of `ips` right now
/// (RFC 5780 servers listen on two addresses with the same port). The
/// port is picked by the kernel on the first address.
///
/// # Panics
/// When `ips` is empty, or no port is found in a hundred tries.
pub fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    let (first, rest) = ips.split_first().expect("at least one address");
    for _ in 0..TRIES {
        let u = UdpSocket::bind((*first, 0)).unwrap();
        let port = u.local_addr().unwrap().port();
        let free = TcpListener::bind((*first, port)).is_ok()
            && rest.iter().all(|ip| {
                UdpSocket::bind((*ip, port)).is_ok() && TcpListener::bind((*ip, port)).is_ok()
            });
        if free {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ips:?}");
}

/// A relay port range `(min, max)` of `width` ports: block number
/// `random % blocks` above `base`. Test binaries that start relays from
/// many threads at once use it to keep their ranges apart by chance.
pub fn random_block(base: u16, blocks: u16, width: u16) -> (u16, u16) {
    let min = base + (rand::random::<u16>() % blocks) * width;
    (min, min + width - 1)
}

/// A relay port range `(min, max)` of `width` ports above `base`, chosen by
/// this process's PID (`pid % processes`, since nextest runs each test in a
/// process of its own) and by `slot % slots` (relays of one process, from a
/// counter kept by the caller).
pub fn pid_block(base: u16, processes: u32, slots: u16, slot: u16, width: u16) -> (u16, u16) {
    let min = base + ((std::process::id() % processes) as u16 * slots + slot % slots) * width;
    (min, min + width - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_binds_for_udp_and_tcp() {
        let p = free_port();
        assert_ne!(p, 0);
        let _u = UdpSocket::bind(("127.0.0.1", p)).unwrap();
        let _t = TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn blocks_stay_inside_their_ranges() {
        for _ in 0..200 {
            let (a, b) = random_block(20_000, 2_000, 20);
            assert!((20_000..=59_980).contains(&a), "{a}");
            assert_eq!(b, a + 19);
            assert_eq!((a - 20_000) % 20, 0);
        }
        for slot in 0..8 {
            let (a, b) = pid_block(22_000, 25, 4, slot, 20);
            assert!((22_000..24_000).contains(&a) && b < 24_000, "{a}-{b}");
            assert_eq!(b, a + 19);
        }
    }
}
