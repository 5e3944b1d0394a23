//! Building a lab from a [`TopologySpec`] and tearing it down.
//!
//! Every namespace of a lab is named `nkl-<tag>-<owner>-<node>`: the tag is
//! chosen per test file (so parallel test binaries never collide), the owner
//! is the PID of the process that built it (or `up` for a lab left running
//! by `natkit-lab up`). Building first deletes the namespaces of the same
//! tag whose owner process is gone: what an interrupted run left behind.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use natkit_testkit::ready::answers_binding;
use serde::Serialize;

use crate::addr::{self, INTERNET_GATEWAY, INTERNET_PREFIX, LAN_PREFIX};
use crate::bins::{self, Binaries};
use crate::error::{LabError, Result};
use crate::link::LinkProfile;
use crate::nat::{self, Filtering, NatKind, RouterMapping, RouterSpec, LAN, WAN};
use crate::netns::{self, Netns};
use crate::portmap::{self, PortMapping};
use crate::process::Process;
use crate::topology::{SiteSpec, TopologySpec};

/// First part of every namespace name the lab creates.
pub const PREFIX: &str = "nkl";
/// The owner part of a lab left running on purpose (`natkit-lab up`).
pub const PERSISTENT_OWNER: &str = "up";

/// The TURN relay's static user and password in every lab.
pub const TURN_USER: &str = "lab";
/// See [`TURN_USER`].
pub const TURN_PASSWORD: &str = "lab-password";
/// The relay's shared secret for REST credentials.
pub const TURN_SECRET: &str = "lab-secret";

/// How long servers get to answer after start.
const READY: Duration = Duration::from_secs(20);
/// How long a link's wire gets to attach its devices.
const WIRE_READY: Duration = Duration::from_secs(10);
/// How long one readiness probe waits for its answer.
const PROBE: Duration = Duration::from_millis(250);

/// Whether `server` answers a Binding request from `sock` (RFC 8489 §6.3:
/// a response with the request's transaction id) within the socket's read
/// timeout.
fn binding_answered(sock: &UdpSocket, server: SocketAddr) -> std::result::Result<(), String> {
    if answers_binding(sock, server) {
        Ok(())
    } else {
        Err(format!("no Binding answer from {server}"))
    }
}

/// Whether a TCP connection to `addr` opens within [`PROBE`] (from the
/// calling thread's namespace).
fn tcp_accepts(addr: SocketAddr) -> std::result::Result<(), String> {
    TcpStream::connect_timeout(&addr, PROBE)
        .map(drop)
        .map_err(|e| format!("TCP to {addr}: {e}"))
}

/// Where the lab's servers listen, and how to use them.
#[derive(Debug, Clone, Serialize)]
pub struct Servers {
    /// STUN, RFC 5780 primary address (A1:P1), UDP and TCP.
    pub stun: SocketAddr,
    /// STUN alternate address (A2:P2).
    pub stun_other: SocketAddr,
    /// TURN over UDP and TCP.
    pub turn: SocketAddr,
    /// TURN over TLS.
    pub turn_tls: SocketAddr,
    /// Static TURN user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Shared secret for REST credentials.
    pub secret: String,
    /// PEM certificate of the relay's TLS listener (self-signed, for the
    /// relay's IP address): what clients must trust.
    pub ca: PathBuf,
}

/// A built site.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    /// Name from the spec.
    pub name: String,
    /// NAT kind.
    pub kind: NatKind,
    /// Whether the (home) NAT hairpins.
    pub hairpin: bool,
    /// The host's namespace (where peers and probes run).
    pub host: String,
    /// The host's address.
    pub host_addr: Ipv4Addr,
    /// The router namespaces, outermost first (two for the double NAT).
    pub routers: Vec<String>,
    /// The address the internet sees the host's traffic come from.
    pub public_addr: Ipv4Addr,
    /// The host's default gateway: its (home) router's LAN address.
    pub gateway: Ipv4Addr,
    /// How the site's access link is shaped.
    pub profile: LinkProfile,
    /// Whether the (home) NAT answers port-mapping requests.
    pub port_mapping: PortMapping,
}

impl Site {
    /// The host's namespace.
    pub fn host_ns(&self) -> Netns {
        Netns::existing(&self.host)
    }

    /// The namespace of the router the host sits behind (the home NAT).
    pub fn home_router(&self) -> Netns {
        Netns::existing(self.routers.last().expect("every site has a router"))
    }

    /// The UPnP IGD description URL, when the site runs a port-mapping
    /// daemon (`upnpc -u URL ...`).
    pub fn igd_url(&self) -> Option<String> {
        (self.port_mapping != PortMapping::Off).then(|| portmap::igd_url(self.gateway))
    }
}

/// A built lab; dropping it kills its processes and deletes its namespaces.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    internet: Netns,
    sites: Vec<Site>,
    servers: Servers,
    binaries: Binaries,
    namespaces: Vec<Netns>,
    processes: Mutex<Vec<Process>>,
    turn_args: Vec<String>,
    /// The outermost router's spec of each site, by site index.
    router_specs: Vec<RouterSpec>,
    dir: PathBuf,
    persistent: bool,
    build_time: Duration,
}

/// Whether the owner part of a namespace name belongs to a process that is
/// gone (or dying: a zombie, killed but not yet reaped).
fn stale(owner: &str) -> bool {
    let Ok(pid) = owner.parse::<u32>() else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Delete every namespace (and working directory) of labs tagged `tag`
/// whose owner is `owner`, or, with `owner` `None`, whose owner process is
/// gone.
pub fn clean(tag: &str, owner: Option<&str>) -> Result<usize> {
    let mut n = 0;
    let start = format!("{PREFIX}-{tag}-");
    let mut owners = Vec::new();
    for name in netns::list()? {
        let Some(rest) = name.strip_prefix(&start) else {
            continue;
        };
        let o = rest.split('-').next().unwrap_or("");
        let hit = match owner {
            Some(want) => o == want,
            None => stale(o),
        };
        if hit {
            // Best effort: one namespace that will not go must not keep the
            // others.
            if Netns::existing(&name).destroy().is_ok() {
                n += 1;
            }
            if !owners.iter().any(|x| x == o) {
                owners.push(o.to_string());
            }
        }
    }
    for o in owners {
        let _ = std::fs::remove_dir_all(work_dir(tag, &o));
    }
    // Working directories kept for the logs of failed runs go with the
    // next run of the same tag.
    if owner.is_none() {
        let start = format!("natkit-lab-{tag}-");
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.strip_prefix(&start).is_some_and(stale) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    Ok(n)
}

fn work_dir(tag: &str, owner: &str) -> PathBuf {
    std::env::temp_dir().join(format!("natkit-lab-{tag}-{owner}"))
}

/// The next free /29 block of 192.0.2.0/24, counting `used` up.
fn next_block(used: &mut usize) -> Result<usize> {
    let b = *used;
    if b >= addr::MAX_BLOCKS {
        return Err(LabError::Topology(
            "more than 16 public LANs and carrier links".into(),
        ));
    }
    *used += 1;
    Ok(b)
}

impl Lab {
    /// Build the lab `spec` under `tag` (a few lowercase letters, unique per
    /// test file) and start its servers.
    pub fn build(tag: &str, spec: &TopologySpec) -> Result<Lab> {
        Self::build_as(tag, &std::process::id().to_string(), spec)
    }

    /// Build a lab left running when this process ends: [`Lab::detach`] it,
    /// and `clean(tag, Some(PERSISTENT_OWNER))` removes it.
    pub fn build_persistent(tag: &str, spec: &TopologySpec) -> Result<Lab> {
        clean(tag, Some(PERSISTENT_OWNER))?;
        let mut lab = Self::build_as(tag, PERSISTENT_OWNER, spec)?;
        lab.persistent = true;
        Ok(lab)
    }

    fn build_as(tag: &str, owner: &str, spec: &TopologySpec) -> Result<Lab> {
        let t0 = Instant::now();
        spec.validate()?;
        if spec.sites.len() > addr::MAX_BLOCKS {
            return Err(LabError::Topology(format!(
                "at most {} sites",
                addr::MAX_BLOCKS
            )));
        }
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(LabError::Topology(format!(
                "tag {tag:?}: use lowercase letters and digits"
            )));
        }
        let binaries = bins::find()?;
        clean(tag, None)?;
        let prefix = format!("{PREFIX}-{tag}-{owner}");
        let dir = work_dir(tag, owner);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let ca = dir.join("turn-cert.pem");
        let mut lab = Lab {
            internet: Netns::existing(&format!("{prefix}-inet")),
            prefix,
            sites: Vec::new(),
            servers: Servers {
                stun: SocketAddr::V4(SocketAddrV4::new(addr::STUN_PRIMARY, 3478)),
                stun_other: SocketAddr::V4(SocketAddrV4::new(addr::STUN_OTHER, 3479)),
                turn: SocketAddr::V4(SocketAddrV4::new(addr::TURN, 3478)),
                turn_tls: SocketAddr::V4(SocketAddrV4::new(addr::TURN, 5349)),
                user: TURN_USER.into(),
                password: TURN_PASSWORD.into(),
                secret: TURN_SECRET.into(),
                ca,
            },
            binaries,
            namespaces: Vec::new(),
            processes: Mutex::new(Vec::new()),
            turn_args: Vec::new(),
            router_specs: Vec::new(),
            dir,
            persistent: false,
            build_time: Duration::ZERO,
        };
        // From here on, a failure drops `lab`, which deletes what was built.
        lab.build_internet()?;
        let mut blocks = 0;
        for (n, s) in spec.sites.iter().enumerate() {
            let site = lab.build_site(n, s, &mut blocks)?;
            lab.sites.push(site);
        }
        lab.start_servers()?;
        lab.start_port_mapping()?;
        lab.build_time = t0.elapsed();
        Ok(lab)
    }

    fn namespace(&mut self, node: &str) -> Result<Netns> {
        let ns = Netns::create(&format!("{}-{node}", self.prefix))?;
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    fn build_internet(&mut self) -> Result<()> {
        let inet = self.namespace("inet")?;
        inet.ip(&["link", "add", "br0", "type", "bridge"])?;
        for a in [
            addr::STUN_PRIMARY,
            addr::STUN_OTHER,
            addr::TURN,
            INTERNET_GATEWAY,
        ] {
            inet.ip(&[
                "addr",
                "add",
                &format!("{a}/{INTERNET_PREFIX}"),
                "dev",
                "br0",
            ])?;
        }
        inet.ip(&["link", "set", "br0", "up"])?;
        inet.sysctl("net/ipv4/ip_forward", "1")?;
        // Routers share the bridge with the gateway: no ICMP redirects, so
        // every hop stays as built.
        inet.sysctl("net/ipv4/conf/all/send_redirects", "0")?;
        inet.sysctl("net/ipv4/conf/default/send_redirects", "0")?;
        self.internet = inet;
        Ok(())
    }

    /// A veth pair from `a`'s `a_dev` to `b`'s `b_dev`, created directly in
    /// the namespaces (never in the root namespace), both ends up.
    fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
        crate::cmd::ip(&[
            "link",
            "add",
            "name",
            a_dev,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_dev,
            "netns",
            b.name(),
        ])?;
        a.ip(&["link", "set", a_dev, "up"])?;
        b.ip(&["link", "set", b_dev, "up"])?;
        Ok(())
    }

    fn address(ns: &Netns, dev: &str, a: Ipv4Addr, prefix: u8) -> Result<()> {
        ns.ip(&["addr", "add", &format!("{a}/{prefix}"), "dev", dev])
            .map(drop)
    }

    fn default_route(ns: &Netns, via: Ipv4Addr) -> Result<()> {
        ns.ip(&["route", "add", "default", "via", &via.to_string()])
            .map(drop)
    }

    /// A router namespace with its ruleset loaded, then IP forwarding on.
    fn router(&mut self, node: &str, spec: &RouterSpec, wan: Ipv4Addr) -> Result<Netns> {
        let r = self.namespace(node)?;
        r.sysctl("net/ipv4/conf/all/rp_filter", "0")?;
        r.sysctl("net/ipv4/conf/default/rp_filter", "0")?;
        r.sysctl("net/ipv4/conf/all/accept_redirects", "0")?;
        r.nft(&nat::ruleset(spec, wan))?;
        if spec.port_mapping {
            r.nft(&nat::port_mapping_table())?;
        }
        if let Some(secs) = spec.udp_timeout {
            // After the ruleset: its `ct` rules load nf_conntrack where it
            // is a module (Debian's kernels), and these sysctls exist only
            // then. Per namespace (checked: a write inside one leaves the
            // root namespace's value alone). Both the unanswered and the
            // answered ("stream") lifetime, so any mapping idles out.
            let secs = secs.to_string();
            r.sysctl("net/netfilter/nf_conntrack_udp_timeout", &secs)?;
            r.sysctl("net/netfilter/nf_conntrack_udp_timeout_stream", &secs)?;
        }
        // Last: the router never forwards without its filter and NAT.
        r.sysctl("net/ipv4/ip_forward", "1")?;
        Ok(r)
    }

    /// Site `n`'s outermost router `node`: built from `spec` (kept for
    /// [`Lab::renumber_wan`]), its WAN linked to the internet bridge by a
    /// veth pair, or by a shaped link ([`crate::link`]).
    fn outer_router(
        &mut self,
        n: usize,
        node: &str,
        spec: RouterSpec,
        profile: LinkProfile,
    ) -> Result<Netns> {
        let wan = addr::site_wan(n);
        let r = self.router(node, &spec, wan)?;
        self.router_specs.push(spec);
        let port = format!("s{n}");
        if profile.shape().is_some() {
            self.shaped_link(n, &r, &port, profile)?;
        } else {
            Self::veth(&r, WAN, &self.internet, &port)?;
        }
        self.internet.ip(&["link", "set", &port, "master", "br0"])?;
        Self::address(&r, WAN, wan, INTERNET_PREFIX)?;
        Self::default_route(&r, INTERNET_GATEWAY)?;
        Ok(r)
    }

    /// Join `r`'s WAN and the internet's `port` by two TAP devices and a
    /// wire process shaping both directions as `profile`; returns once the
    /// wire holds both devices (their carrier is up).
    fn shaped_link(&mut self, n: usize, r: &Netns, port: &str, profile: LinkProfile) -> Result<()> {
        let inet = self.internet.clone();
        for (ns, dev) in [(r, WAN), (&inet, port)] {
            ns.ip(&["tuntap", "add", "dev", dev, "mode", "tap"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        let mut c = std::process::Command::new(&self.binaries.lab);
        c.args(["wire", "--a-ns", r.name(), "--a-dev", WAN, "--b-ns"])
            .arg(inet.name())
            .args(["--b-dev", port, "--profile", profile.name(), "--seed"])
            .arg(n.to_string());
        let log = self.dir.join(format!("wire-{port}.log"));
        let wire = Process::spawn_logged(&format!("wire-{port}"), c, &log)?;
        let name = wire.name().to_string();
        self.track(wire);
        let carrier = |ns: &Netns, dev: &str| {
            ns.ip(&["link", "show", "dev", dev])
                .is_ok_and(|out| out.contains("LOWER_UP"))
        };
        self.wait_ready(&name, WIRE_READY, || {
            if carrier(r, WAN) && carrier(&inet, port) {
                Ok(())
            } else {
                Err(format!(
                    "no carrier yet on {WAN} in {} or {port} in {}",
                    r.name(),
                    inet.name()
                ))
            }
        })
    }

    fn build_site(&mut self, n: usize, s: &SiteSpec, blocks: &mut usize) -> Result<Site> {
        let nat_router = |mapping, filtering| RouterSpec {
            mapping,
            filtering: Some(filtering),
            hairpin: s.hairpin,
            tcp_only_to: None,
            udp_timeout: s.udp_timeout,
            port_mapping: s.port_mapping != PortMapping::Off,
        };
        let eim = RouterMapping::EndpointIndependent;
        let wan = addr::site_wan(n);
        let name = &s.name;
        // (routers outermost first, the host's router, LAN addresses)
        let (routers, home, router_lan, host_addr, public_addr) = match s.kind {
            NatKind::Open | NatKind::NoNat => {
                let spec = RouterSpec {
                    udp_timeout: s.udp_timeout,
                    ..RouterSpec::nat(
                        RouterMapping::None,
                        (s.kind == NatKind::NoNat).then_some(Filtering::AddressAndPortDependent),
                    )
                };
                let r = self.outer_router(n, &format!("{name}-r"), spec, s.profile)?;
                let b = next_block(blocks)?;
                let (gw, host) = (addr::public(b, 1), addr::public(b, 2));
                self.internet.ip(&[
                    "route",
                    "add",
                    &addr::lan_net(host),
                    "via",
                    &wan.to_string(),
                ])?;
                (vec![r.clone()], r, gw, host, host)
            }
            NatKind::DoubleNat => {
                let cgn_spec = RouterSpec {
                    udp_timeout: s.udp_timeout,
                    ..RouterSpec::nat(eim, Some(Filtering::AddressDependent))
                };
                let cgn = self.outer_router(n, &format!("{name}-cgn"), cgn_spec, s.profile)?;
                let b = next_block(blocks)?;
                let (cgn_in, home_wan) = (addr::public(b, 1), addr::public(b, 2));
                let home_spec = nat_router(eim, Filtering::AddressAndPortDependent);
                let home = self.router(&format!("{name}-r"), &home_spec, home_wan)?;
                Self::veth(&cgn, LAN, &home, WAN)?;
                Self::address(&cgn, LAN, cgn_in, LAN_PREFIX)?;
                Self::address(&home, WAN, home_wan, LAN_PREFIX)?;
                Self::default_route(&home, cgn_in)?;
                (
                    vec![cgn, home.clone()],
                    home,
                    addr::private(n, 1),
                    addr::private(n, 2),
                    wan,
                )
            }
            kind => {
                let spec = match kind {
                    NatKind::FullCone => nat_router(eim, Filtering::EndpointIndependent),
                    NatKind::RestrictedCone => nat_router(eim, Filtering::AddressDependent),
                    NatKind::PortRestrictedCone => {
                        nat_router(eim, Filtering::AddressAndPortDependent)
                    }
                    NatKind::Symmetric => nat_router(
                        RouterMapping::AddressAndPortDependent,
                        Filtering::AddressAndPortDependent,
                    ),
                    NatKind::SymmetricSequential => nat_router(
                        RouterMapping::Sequential,
                        Filtering::AddressAndPortDependent,
                    ),
                    NatKind::SymmetricPreserving => nat_router(
                        RouterMapping::Preserving,
                        Filtering::AddressAndPortDependent,
                    ),
                    _ => RouterSpec {
                        tcp_only_to: Some((addr::TURN, [3478, 5349])),
                        ..nat_router(eim, Filtering::AddressAndPortDependent)
                    },
                };
                let r = self.outer_router(n, &format!("{name}-r"), spec, s.profile)?;
                (
                    vec![r.clone()],
                    r,
                    addr::private(n, 1),
                    addr::private(n, 2),
                    wan,
                )
            }
        };
        let host = self.namespace(&format!("{name}-h"))?;
        Self::veth(&home, LAN, &host, "eth0")?;
        Self::address(&home, LAN, router_lan, LAN_PREFIX)?;
        Self::address(&host, "eth0", host_addr, LAN_PREFIX)?;
        Self::default_route(&host, router_lan)?;
        Ok(Site {
            name: s.name.clone(),
            kind: s.kind,
            hairpin: s.hairpin,
            host: host.name().to_string(),
            host_addr,
            routers: routers.iter().map(|r| r.name().to_string()).collect(),
            public_addr,
            gateway: router_lan,
            profile: s.profile,
            port_mapping: s.port_mapping,
        })
    }

    /// Start miniupnpd on the home router of every site that asks for it
    /// (after natkit-stun answers: it tests its outside address with STUN at
    /// start and exits if nobody answers), and wait until each answers
    /// NAT-PMP and opens its UPnP HTTP port.
    fn start_port_mapping(&mut self) -> Result<()> {
        for (n, site) in self.sites.iter().enumerate() {
            if site.port_mapping == PortMapping::Off {
                continue;
            }
            let inst = portmap::Instance::new(&self.dir, &site.name);
            let allow = site.port_mapping == PortMapping::On;
            let conf = portmap::config(&inst, n, &addr::lan_net(site.host_addr), allow);
            std::fs::write(&inst.conf, conf)
                .map_err(|e| LabError::io(format!("writing {}", inst.conf.display()), e))?;
            let name = format!("miniupnpd-{}", site.name);
            let program = bins::system("miniupnpd", "miniupnpd-nftables")?;
            let mut c = site.home_router().command(&program)?;
            c.args(inst.args());
            portmap::quiet_console(&mut c);
            let log = self.dir.join(format!("{name}.log"));
            let p = Process::spawn_logged(&name, c, &log)?;
            self.track(p);
            let (gw, public) = (site.gateway, site.public_addr);
            let upnp = SocketAddr::from((gw, portmap::HTTP_PORT));
            let host = site.host_ns();
            let sock = host.bind_udp((site.host_addr, 0))?;
            // Ready when NAT-PMP answers with success and the address its
            // STUN test found (a failed test leaves it answering errors or
            // exiting), and the UPnP HTTP port accepts.
            host.enter(|| {
                self.wait_ready(&name, READY, || {
                    match portmap::natpmp_external_address(&sock, gw, PROBE, PROBE) {
                        Some((portmap::SUCCESS, a)) if a == public => {}
                        Some((result, a)) => {
                            return Err(format!(
                                "NAT-PMP on {gw} answered result {result}, address {a}; \
                                 want {}, {public}",
                                portmap::SUCCESS
                            ))
                        }
                        None => return Err(format!("no NAT-PMP answer from {gw}")),
                    }
                    tcp_accepts(upnp)
                })
            })??;
        }
        Ok(())
    }

    fn start_servers(&mut self) -> Result<()> {
        let ck = rcgen::generate_simple_self_signed(vec![addr::TURN.to_string()])
            .map_err(|e| LabError::Other(format!("generating the relay's certificate: {e}")))?;
        let key = self.dir.join("turn-key.pem");
        // Not natkit_testkit::tls::self_signed: it panics when a write
        // fails, and building a lab is fallible (`natkit-lab up` reports a
        // LabError instead of aborting).
        let write = |p: &Path, s: String| {
            std::fs::write(p, s).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
        };
        write(&self.servers.ca, ck.cert.pem())?;
        write(&key, ck.key_pair.serialize_pem())?;

        let s = self.servers.clone();
        let stun_args = vec![
            "--listen".to_string(),
            s.stun.to_string(),
            "--other".into(),
            s.stun_other.to_string(),
            "--threads".into(),
            "1".into(),
        ];
        let stun = self.spawn_in(
            &self.internet,
            "natkit-stun",
            &self.binaries.stun,
            &stun_args,
        )?;
        self.track(stun);

        let mut turn_args = vec![
            "--listen".to_string(),
            s.turn.to_string(),
            "--tls-listen".into(),
            s.turn_tls.to_string(),
            "--cert".into(),
            s.ca.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--user".into(),
            format!("{}:{}", s.user, s.password),
            "--auth-secret".into(),
            s.secret.clone(),
            "--relay-ip".into(),
            addr::TURN.to_string(),
            "--threads".into(),
            "1".into(),
            "--drain-grace".into(),
            "1".into(),
        ];
        // The relay refuses documentation ranges as peers by default; the
        // lab lives in them.
        for r in addr::DOC_RANGES {
            turn_args.push("--allow-peer".into());
            turn_args.push(r.into());
        }
        self.turn_args = turn_args;
        self.start_turn()?;

        let sock = self.probe_socket()?;
        self.wait_ready("natkit-stun", READY, || {
            binding_answered(&sock, s.stun)?;
            binding_answered(&sock, s.stun_other)
        })
    }

    /// Start natkit-turn in the internet namespace and wait until it
    /// answers on UDP, TCP and TLS ports.
    fn start_turn(&self) -> Result<()> {
        let p = self.spawn_in(
            &self.internet,
            "natkit-turn",
            &self.binaries.turn,
            &self.turn_args,
        )?;
        self.track(p);
        let s = &self.servers;
        let sock = self.probe_socket()?;
        self.internet.enter(|| {
            self.wait_ready("natkit-turn", READY, || {
                binding_answered(&sock, s.turn)?;
                tcp_accepts(s.turn)?;
                tcp_accepts(s.turn_tls)
            })
        })?
    }

    /// A UDP socket in the internet namespace for readiness probes, each
    /// waiting [`PROBE`] for its answer.
    fn probe_socket(&self) -> Result<UdpSocket> {
        let sock = self.internet.bind_udp((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_read_timeout(Some(PROBE))
            .map_err(|e| LabError::io("setting a probe socket's timeout", e))?;
        Ok(sock)
    }

    /// Wait until `ready` (a probe of the very endpoint about to be used,
    /// saying what it found when not ready) succeeds, calling it about every
    /// 20 ms. Fails at once with the exit status and log of the tracked
    /// process `name` if it exits first (a server refusing its
    /// configuration, miniupnpd whose STUN test failed, a wire that cannot
    /// open its devices), and after `limit` with what the last probe found.
    pub fn wait_ready(
        &self,
        name: &str,
        limit: Duration,
        mut ready: impl FnMut() -> std::result::Result<(), String>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status(name) {
                return Err(LabError::Exited {
                    name: name.to_string(),
                    status,
                    log: self.server_log(name),
                });
            }
            let last = match ready() {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if start.elapsed() >= limit {
                return Err(LabError::NotReady {
                    name: name.to_string(),
                    waited: start.elapsed(),
                    last,
                    log: self.server_log(name),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status of the tracked process `name`, if it has exited.
    fn exit_status(&self, name: &str) -> Option<ExitStatus> {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter_mut()
            .rev()
            .find(|p| p.name() == name)
            .and_then(Process::try_status)
    }

    /// The last lines of the log of the tracked server `name`: the lab
    /// deletes its directory when a build fails, so a readiness error
    /// carries them.
    fn server_log(&self, name: &str) -> String {
        let procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter()
            .rev()
            .find(|p| p.name() == name)
            .map_or_else(|| format!("({name} is not tracked)"), |p| p.log_tail(30))
    }

    /// Stop the relay: SIGKILL (a crash, allocations lost) or SIGTERM (a
    /// drain of `--drain-grace` 1 s), and wait for it to exit.
    pub fn stop_turn(&self, graceful: bool) -> Result<()> {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = procs.iter().position(|p| p.name() == "natkit-turn") else {
            return Err(LabError::Other("natkit-turn is not running".into()));
        };
        let mut p = procs.remove(i);
        if graceful {
            p.signal(libc::SIGTERM);
            // Drain grace is 1 s; a second signal stops it at once.
            if p.wait_for(Duration::from_secs(5)).is_none() {
                p.signal(libc::SIGTERM);
            }
        }
        p.kill();
        Ok(())
    }

    /// Start the relay again after [`Lab::stop_turn`] (same ports, same
    /// credentials, no allocations).
    pub fn restart_turn(&self) -> Result<()> {
        self.start_turn()
    }

    /// Flush the connection tracking table (every NAT mapping) of each of
    /// `site`'s routers: established flows must find new mappings.
    pub fn flush_conntrack(&self, site: &Site) -> Result<()> {
        for r in &site.routers {
            Netns::existing(r).run("conntrack", &["-F"], None)?;
        }
        Ok(())
    }

    /// Give `site`'s outermost NAT a new outside address (the old one plus
    /// 100) and flush its mappings: what a home router does when the ISP
    /// renumbers it. Returns the new address. NAT sites only (a public
    /// host's address is its identity, not a mapping).
    pub fn renumber_wan(&self, site: &Site) -> Result<Ipv4Addr> {
        if site.kind.is_public() {
            return Err(LabError::Topology(format!(
                "{} has no NAT to renumber",
                site.name
            )));
        }
        let n = self
            .sites
            .iter()
            .position(|s| s.name == site.name)
            .ok_or_else(|| LabError::Topology(format!("no site {}", site.name)))?;
        let old = addr::site_wan(n);
        let o = old.octets();
        let new = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 100);
        let r = Netns::existing(&site.routers[0]);
        // Keep the subnet route when the old (primary) address goes.
        r.sysctl(&format!("net/ipv4/conf/{WAN}/promote_secondaries"), "1")?;
        Self::address(&r, WAN, new, INTERNET_PREFIX)?;
        r.ip(&[
            "addr",
            "del",
            &format!("{old}/{INTERNET_PREFIX}"),
            "dev",
            WAN,
        ])?;
        r.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &INTERNET_GATEWAY.to_string(),
        ])?;
        // The prerouting rules name the outside address: reload them
        // (only the lab's table: miniupnpd's keeps its mappings).
        r.run("nft", &["delete", "table", "ip", "natlab"], None)?;
        r.nft(&nat::ruleset(&self.router_specs[n], new))?;
        r.run("conntrack", &["-F"], None)?;
        Ok(new)
    }

    /// Start `program args...` inside `ns`, its output logged to the lab's
    /// directory; the caller owns the guard.
    pub fn spawn_in(
        &self,
        ns: &Netns,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<Process> {
        let mut c = ns.command(program)?;
        c.args(args);
        let log = self.dir.join(format!("{name}.log"));
        Process::spawn_logged(name, c, &log)
    }

    /// Keep `p` until the lab is dropped.
    pub fn track(&self, p: Process) {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// The sites, in spec order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> Result<&Site> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| LabError::Topology(format!("no site named {name:?}")))
    }

    /// The internet namespace (servers live here).
    pub fn internet(&self) -> &Netns {
        &self.internet
    }

    /// Where the servers are and how to use them.
    pub fn servers(&self) -> &Servers {
        &self.servers
    }

    /// The binaries the lab runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The lab's working directory (certificate, logs, peers' files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long building took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// Leave the lab running after this process ends (for
    /// `natkit-lab up`): servers keep running, namespaces stay.
    pub fn detach(mut self) {
        let procs = std::mem::take(&mut *self.processes.lock().unwrap_or_else(|e| e.into_inner()));
        for p in procs {
            std::mem::forget(p);
        }
        self.namespaces.clear();
        self.persistent = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.processes.lock().unwrap_or_else(|e| e.into_inner()));
        drop(procs);
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ns.destroy() {
                eprintln!("natkit-lab: {e}");
            }
        }
        if self.persistent {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "natkit-lab: kept {} for its logs (the test failed)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
