//! Port mapping on a NAT router: miniupnpd (Debian's `miniupnpd-nftables`,
//! UPnP IGD, NAT-PMP RFC 6886 and PCP RFC 6887) run by the lab.
//!
//! What Debian's build (2.3.1, nftables backend) does, checked here: PCP is
//! compiled in (its startup line says `starting NAT-PMP/PCP UPnP-IGD`) and
//! the one switch `enable_natpmp=yes` turns on NAT-PMP and PCP together on
//! UDP 5351; UPnP IGD answers on `http_port` (the lab uses 5000) and SSDP.
//! It creates no nftables table of its own (and Debian's `nft_init.sh` is
//! broken), so the lab creates [`crate::nat::port_mapping_table`].
//!
//! miniupnpd refuses to map when its outside address is private or reserved,
//! and counts the documentation ranges the lab lives in as reserved. The way
//! round that it offers is `ext_perform_stun=yes`: it asks a STUN server
//! (RFC 3489 CHANGE-REQUEST from four sockets) and, when every answer shows
//! a 1:1 unfiltered address, enables port forwarding whatever the address.
//! natkit-stun in the internet namespace answers those requests (it honours
//! CHANGE-REQUEST, RFC 5780 §7.2, from its two addresses and two ports), so
//! each instance starts after natkit-stun answers, and the router lets the
//! changed-address answers in ([`crate::nat::RouterSpec::port_mapping`]).
//!
//! Clients need the gateway's description URL (`upnpc -u URL`): libminiupnpc
//! also rejects an IGD whose outside address is reserved.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::addr::{self, INTERNET_GATEWAY};
use crate::lab::Lab;
use crate::nat::{LAN, UPNP_TABLE, WAN};

/// Whether and how a NAT answers port-mapping requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PortMapping {
    /// No daemon: requests go unanswered.
    #[default]
    Off,
    /// miniupnpd maps ports of the LAN's hosts (their own address only,
    /// ports 1024-65535).
    On,
    /// miniupnpd with a deny-everything rule: every request answered with
    /// an error (UPnP 606, NAT-PMP and PCP result 2 "not authorized").
    Refuse,
}

impl PortMapping {
    /// Every setting.
    pub const ALL: [PortMapping; 3] = [PortMapping::Off, PortMapping::On, PortMapping::Refuse];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PortMapping::Off => "off",
            PortMapping::On => "on",
            PortMapping::Refuse => "refuse",
        }
    }

    /// Parse a name as [`PortMapping::name`] gives it.
    pub fn parse(s: &str) -> Option<PortMapping> {
        PortMapping::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// UPnP IGD's HTTP port on the router's LAN address.
pub const HTTP_PORT: u16 = 5000;
/// NAT-PMP and PCP (RFC 6886 §3, RFC 6887 §19.1).
pub const NATPMP_PORT: u16 = 5351;

/// Files of one miniupnpd instance, in the lab's directory.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Its configuration.
    pub conf: PathBuf,
    /// Its pidfile (the default one is shared by every namespace).
    pub pidfile: PathBuf,
    /// Where it keeps its mappings.
    pub leases: PathBuf,
}

impl Instance {
    /// The files of site `site`'s instance under `dir`.
    pub fn new(dir: &Path, site: &str) -> Instance {
        Instance {
            conf: dir.join(format!("miniupnpd-{site}.conf")),
            pidfile: dir.join(format!("miniupnpd-{site}.pid")),
            leases: dir.join(format!("miniupnpd-{site}.leases")),
        }
    }

    /// miniupnpd's arguments: foreground (`-d`, which also logs at debug
    /// level to stderr, the lab's log file), its own pidfile.
    pub fn args(&self) -> Vec<String> {
        vec![
            "-f".into(),
            self.conf.display().to_string(),
            "-d".into(),
            "-P".into(),
            self.pidfile.display().to_string(),
        ]
    }
}

/// The configuration of site number `n`'s instance, its LAN `lan_net`
/// (`a.b.c.d/29`): with `allow`, the LAN's hosts may map their own ports
/// 1024-65535 ([`PortMapping::On`]); without, every request is refused
/// ([`PortMapping::Refuse`]; RFC 6887 §13.1 lets a server refuse).
pub fn config(inst: &Instance, n: usize, lan_net: &str, allow: bool) -> String {
    let deny = "deny 0-65535 0.0.0.0/0 0-65535\n";
    // secure_mode also keeps a host from mapping for another one (UPnP 718).
    let permissions = if allow {
        format!("allow 1024-65535 {lan_net} 1024-65535\n{deny}")
    } else {
        deny.to_string()
    };
    format!(
        "# natkit-lab: miniupnpd of site {n}
ext_ifname={WAN}
listening_ip={LAN}
http_port={HTTP_PORT}
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
system_uptime=yes
uuid=6e61746b-6974-6c61-6200-0000000000{n:02x}
lease_file={leases}
ext_perform_stun=yes
ext_stun_host={stun}
ext_stun_port=3478
upnp_table_name={UPNP_TABLE}
upnp_nat_table_name={UPNP_TABLE}
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
{permissions}",
        leases = inst.leases.display(),
        stun = addr::STUN_PRIMARY,
    )
}

/// The UPnP description URL of the IGD on `gateway` (what `upnpc -u`
/// takes).
pub fn igd_url(gateway: Ipv4Addr) -> String {
    format!("http://{gateway}:{HTTP_PORT}/rootDesc.xml")
}

/// Result code of a successful NAT-PMP or PCP request (RFC 6886 §3.5,
/// RFC 6887 §7.4).
pub const SUCCESS: u16 = 0;
/// Result code of a request the server's policy refuses: NAT-PMP's "Not
/// Authorized/Refused" and PCP's NOT_AUTHORIZED are both 2.
pub const NOT_AUTHORIZED: u16 = 2;

/// NAT-PMP's first retransmission, doubled each time (RFC 6886 §3.1).
///
/// The functions below take the first retransmission time as an argument:
/// asking a refusing miniupnpd, wait longer than this. Every copy of a
/// refused request costs it a pass over all 65535 external ports (one to
/// three seconds here), so resending at this pace piles up copies, and
/// every request behind them waits for each pass.
pub const NATPMP_FIRST_RESEND: Duration = Duration::from_millis(250);
/// PCP's initial retransmission time, IRT (RFC 6887 §8.1.1).
pub const PCP_FIRST_RESEND: Duration = Duration::from_secs(3);

/// Send `request` from `sock` to the NAT-PMP/PCP port of `gateway` and
/// return the first answer from there that `parse` takes, resending after
/// `first_resend`, then twice that, and so on, until `limit` has passed.
pub fn ask<T>(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    request: &[u8],
    first_resend: Duration,
    limit: Duration,
    mut parse: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let server = SocketAddr::from((gateway, NATPMP_PORT));
    let end = Instant::now() + limit;
    let mut wait = first_resend;
    let mut buf = [0u8; 1100];
    loop {
        sock.send_to(request, server).ok()?;
        let resend = (Instant::now() + wait).min(end);
        loop {
            let left = resend.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left)).ok()?;
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from == server {
                    if let Some(t) = parse(&buf[..n]) {
                        return Some(t);
                    }
                }
            }
        }
        if Instant::now() >= end {
            return None;
        }
        wait *= 2;
    }
}

/// Ask the NAT-PMP server on `gateway` for its external address (RFC 6886
/// §3.2: version 0, opcode 0; the answer is opcode 128), resending after
/// `first_resend` (see [`NATPMP_FIRST_RESEND`]): the result code and the
/// address.
pub fn natpmp_external_address(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    first_resend: Duration,
    limit: Duration,
) -> Option<(u16, Ipv4Addr)> {
    ask(sock, gateway, &[0, 0], first_resend, limit, |d| {
        (d.len() >= 12 && d[0] == 0 && d[1] == 128).then(|| {
            let result = u16::from_be_bytes([d[2], d[3]]);
            (result, Ipv4Addr::new(d[8], d[9], d[10], d[11]))
        })
    })
}

/// Ask the NAT-PMP server on `gateway` to map UDP `port` of this host to
/// the same external port for `lifetime` seconds (RFC 6886 §3.3: opcode 1;
/// the answer is opcode 129), resending after `first_resend` (see
/// [`NATPMP_FIRST_RESEND`]): the result code and the external port it
/// mapped.
pub fn natpmp_map_udp(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    port: u16,
    lifetime: u32,
    first_resend: Duration,
    limit: Duration,
) -> Option<(u16, u16)> {
    let mut req = vec![0, 1, 0, 0];
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&lifetime.to_be_bytes());
    ask(sock, gateway, &req, first_resend, limit, |d| {
        // Version, opcode, result, epoch, internal port, external port,
        // lifetime: the answer names the internal port it is about.
        (d.len() >= 16 && d[0] == 0 && d[1] == 129 && d[8..10] == port.to_be_bytes()).then(|| {
            let result = u16::from_be_bytes([d[2], d[3]]);
            (result, u16::from_be_bytes([d[10], d[11]]))
        })
    })
}

/// An IPv4 address as PCP carries it: IPv4-mapped IPv6 (RFC 6887 §5).
fn v4_mapped(ip: Ipv4Addr) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&ip.octets());
    a
}

/// Send a PCP MAP request (RFC 6887 §11.1, §7.1) for UDP on `sock`'s port,
/// the same external port suggested, to `gateway`, resending after
/// `first_resend` (see [`PCP_FIRST_RESEND`]): the result code and the
/// external address and port it assigned.
pub fn pcp_map_udp(
    sock: &UdpSocket,
    gateway: Ipv4Addr,
    lifetime: u32,
    first_resend: Duration,
    limit: Duration,
) -> Option<(u16, SocketAddr)> {
    let SocketAddr::V4(local) = sock.local_addr().ok()? else {
        return None;
    };
    let nonce: [u8; 12] = rand::random();
    // Header: version 2, opcode MAP, reserved, lifetime, client address.
    let mut req = vec![2, 1, 0, 0];
    req.extend_from_slice(&lifetime.to_be_bytes());
    req.extend_from_slice(&v4_mapped(*local.ip()));
    // MAP: nonce, protocol (UDP), reserved, internal port, suggested
    // external port and address (any).
    req.extend_from_slice(&nonce);
    req.extend_from_slice(&[17, 0, 0, 0]);
    req.extend_from_slice(&local.port().to_be_bytes());
    req.extend_from_slice(&local.port().to_be_bytes());
    req.extend_from_slice(&v4_mapped(Ipv4Addr::UNSPECIFIED));
    ask(sock, gateway, &req, first_resend, limit, |d| {
        // Response: version 2, R bit + MAP, result at byte 3, then from
        // byte 24 the MAP payload, whose nonce must be ours (§11.3).
        (d.len() >= 60 && d[0] == 2 && d[1] == 0x81 && d[24..36] == nonce).then(|| {
            let eport = u16::from_be_bytes([d[42], d[43]]);
            let eip = Ipv4Addr::new(d[56], d[57], d[58], d[59]);
            (u16::from(d[3]), SocketAddr::from((eip, eport)))
        })
    })
}

/// Whether a datagram from the internet (from `remote_port` of the
/// internet namespace's gateway address) to `public` reaches `sock` in a
/// site's host, and the answer gets back out from `public`: what a port
/// mapping must do ([`crate::probe::gets_in`]).
pub fn reachable(lab: &Lab, sock: &UdpSocket, public: SocketAddr, remote_port: u16) -> bool {
    lab.internet()
        .bind_udp((INTERNET_GATEWAY, remote_port))
        .is_ok_and(|outside| crate::probe::gets_in(&outside, sock, public))
}

/// Run `cmd` in a mount namespace of its own where /dev/console is
/// /dev/null.
///
/// miniupnpd in the foreground (`-d`) logs every message at debug level
/// through syslog(3) with LOG_CONS; with no syslog daemon (no /dev/log)
/// glibc writes each line to /dev/console instead, about 1.5 ms a line
/// here. A refused NAT-PMP or PCP request makes miniupnpd try all 65535
/// external ports, logging each refusal: 107 s for one `natpmpc -a`
/// against the refusing gateway. The lines still reach its stderr (the
/// lab's log file), which is fast.
pub fn quiet_console(cmd: &mut Command) {
    // SAFETY: unshare(2) and mount(2) with static C strings, between fork
    // and exec; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Keep the bind mount out of the parent's namespace.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                c"/dev/null".as_ptr(),
                c"/dev/console".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
}
