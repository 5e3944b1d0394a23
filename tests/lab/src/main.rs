//! `natkit-lab`: the NAT lab for people.
//!
//! ```text
//! natkit-lab up [--topology everything|matrix] [--kinds K,K...]   build a lab and leave it running
//! natkit-lab status                                                what `up` left running
//! natkit-lab down                                                  tear it down
//! natkit-lab netcheck [--kinds K,K...]                             natkit netcheck in each NAT, checked
//! natkit-lab matrix [--kinds K,K...] [--pairs all|hard] [--repetitions N]
//!                   [--hard-repetitions N [--hard-profile P]] [--json FILE] [--markdown FILE]
//!                                                                  the connection matrix
//! ```
//!
//! `up` and `matrix` also take `--profile unshaped|lan|broadband|mobile`
//! (latency, jitter and loss of every site's access link), `--port-mapping
//! off|on|refuse` (miniupnpd on every single NAT) and `--udp-timeout SECS` (the
//! NATs' UDP mapping lifetime). `matrix` takes comma-separated lists of
//! profiles and port-mapping settings and runs once per combination.
//!
//! Needs root, iproute2, nftables and conntrack (scripts/deps/lab.sh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use natkit_lab::lab::{clean, PERSISTENT_OWNER};
use natkit_lab::link::{self, LinkProfile};
use natkit_lab::matrix::{self, MatrixSpec, Page, PairSet};
use natkit_lab::{netcheck, netns, Lab, NatKind, PortMapping, TopologySpec};

/// The tag of labs `up` leaves running.
const UP_TAG: &str = "up";

#[derive(Parser)]
#[command(
    name = "natkit-lab",
    version,
    about = "natkit's NAT lab: network namespaces, nftables NATs, natkit inside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Topology {
    /// One site per NAT kind, plus hairpinning variants.
    Everything,
    /// Two sites per kind (what `matrix` builds).
    Matrix,
}

/// What `up` and `matrix` set on every site.
#[derive(clap::Args, Clone)]
struct SiteOptions {
    /// Latency, jitter and loss of each site's access link: unshaped, lan
    /// (~1 ms between peers), broadband (~20 ms to the internet, ~40 ms
    /// between peers), mobile (~60 ms to the internet, jitter, loss).
    /// `matrix` takes several (comma-separated) and runs once per profile.
    #[arg(long, default_value = "unshaped", value_delimiter = ',', value_parser = parse_profile)]
    profile: Vec<LinkProfile>,
    /// miniupnpd (UPnP IGD, NAT-PMP, PCP) on every single NAT (none on
    /// double-nat sites, whose carrier-grade NAT a mapping cannot open,
    /// nor on udp-blocked ones, whose network's policy it must not):
    /// off, on, or refuse (answers every request with an error).
    /// `matrix` takes several (comma-separated) and runs once per setting.
    #[arg(long, default_value = "off", value_delimiter = ',', value_parser = parse_port_mapping)]
    port_mapping: Vec<PortMapping>,
    /// The NATs' UDP mapping lifetime in seconds (default: conntrack's,
    /// 30 s unanswered, 120 s answered).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    udp_timeout: Option<u32>,
}

impl SiteOptions {
    /// The one profile and port-mapping setting `up` builds with.
    fn single(&self) -> anyhow::Result<(LinkProfile, PortMapping)> {
        match (&self.profile[..], &self.port_mapping[..]) {
            ([p], [m]) => Ok((*p, *m)),
            _ => bail!("give one --profile and one --port-mapping here (matrix takes several)"),
        }
    }

    /// `spec` with these options on every site, its links shaped as
    /// `profile`, port mapping as `pm`.
    fn apply(&self, spec: TopologySpec, profile: LinkProfile, pm: PortMapping) -> TopologySpec {
        let mut t = spec.with_profile(profile).with_port_mapping(pm);
        if let Some(secs) = self.udp_timeout {
            for s in &mut t.sites {
                s.udp_timeout = Some(secs);
            }
        }
        t
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Pairs {
    /// Every pair of the kinds.
    All,
    /// Only the hard pairs.
    Hard,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab and leave it running, for people to poke at.
    Up {
        /// Which topology.
        #[arg(long, value_enum, default_value = "everything")]
        topology: Topology,
        /// NAT kinds (comma-separated; default: all).
        #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
        kinds: Vec<NatKind>,
        #[command(flatten)]
        sites: SiteOptions,
    },
    /// The link emulator of one shaped access link (the lab starts it):
    /// frames between two TAP devices, delayed and dropped as the profile
    /// says.
    #[command(hide = true)]
    Wire {
        #[arg(long)]
        a_ns: String,
        #[arg(long)]
        a_dev: String,
        #[arg(long)]
        b_ns: String,
        #[arg(long)]
        b_dev: String,
        #[arg(long, value_parser = parse_profile)]
        profile: LinkProfile,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Show what `up` left running.
    Status,
    /// Tear down what `up` built (servers killed, namespaces deleted).
    Down,
    /// Run `natkit netcheck` in each NAT and compare with what was built.
    Netcheck {
        /// NAT kinds (comma-separated; default: all, with hairpinning
        /// variants).
        #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
        kinds: Vec<NatKind>,
    },
    /// Connect two natkit peers across every pair of NAT kinds and print
    /// the table (path, time to connect).
    Matrix {
        /// NAT kinds (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
        kinds: Vec<NatKind>,
        /// Bytes each side sends.
        #[arg(long, default_value_t = 256 * 1024)]
        payload: usize,
        /// Seconds the data is spread over (the session lives that long).
        #[arg(long, default_value_t = 3.0)]
        spread: f64,
        /// Pairs run at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// The peers' --timeout, seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Which pairs of the kinds: all, or only the hard ones (UDP open,
        /// a symmetric side, and plain hole punching unable to connect
        /// them).
        #[arg(long, value_enum, default_value = "all")]
        pairs: Pairs,
        /// Run each pair this many times (success rates and time-to-direct
        /// percentiles per pair; the rounds are interleaved).
        #[arg(long, default_value_t = 1)]
        repetitions: usize,
        /// After the matrices, run the hard pairs of the kinds this many
        /// times each, once per --port-mapping setting, in --hard-profile
        /// (their own section of the page, and the goals' success rates).
        #[arg(long, default_value_t = 0)]
        hard_repetitions: usize,
        /// The link profile of the hard pairs' repetitions.
        #[arg(long, default_value = "broadband", value_parser = parse_profile)]
        hard_profile: LinkProfile,
        /// Write the matrix as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the matrix as Markdown here (docs/NAT-MATRIX.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
        #[command(flatten)]
        sites: SiteOptions,
    },
}

fn parse_profile(s: &str) -> Result<LinkProfile, String> {
    LinkProfile::parse(s).ok_or_else(|| {
        let all: Vec<&str> = LinkProfile::ALL.iter().map(|p| p.name()).collect();
        format!("unknown profile {s:?}; one of {}", all.join(", "))
    })
}

fn parse_port_mapping(s: &str) -> Result<PortMapping, String> {
    PortMapping::parse(s).ok_or_else(|| format!("{s:?}: one of off, on, refuse"))
}

fn parse_kind(s: &str) -> Result<NatKind, String> {
    NatKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = NatKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown NAT kind {s:?}; one of {}", all.join(", "))
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, nftables)");
    }
    match cli.command {
        Command::Up {
            topology,
            kinds,
            sites,
        } => up(topology, kinds, sites),
        Command::Wire {
            a_ns,
            a_dev,
            b_ns,
            b_dev,
            profile,
            seed,
        } => Ok(link::run_wire(&a_ns, &a_dev, &b_ns, &b_dev, profile, seed)?),
        Command::Status => status(),
        Command::Down => {
            let n = clean(UP_TAG, Some(PERSISTENT_OWNER))?;
            println!("deleted {n} namespaces");
            Ok(())
        }
        Command::Netcheck { kinds } => run_netcheck(kinds),
        Command::Matrix {
            kinds,
            payload,
            spread,
            concurrency,
            timeout,
            pairs,
            repetitions,
            hard_repetitions,
            hard_profile,
            json,
            markdown,
            sites,
        } => {
            let spec = MatrixSpec {
                kinds: if kinds.is_empty() {
                    matrix::DEFAULT_KINDS.to_vec()
                } else {
                    kinds
                },
                payload,
                spread: Duration::from_secs_f64(spread.clamp(0.0, 600.0)),
                concurrency,
                peer_timeout: Duration::from_secs(timeout),
                pair_limit: Duration::from_secs(timeout * 2 + 10),
                repetitions: repetitions.max(1),
                port_mapping: PortMapping::Off,
                only: match pairs {
                    Pairs::All => PairSet::All,
                    Pairs::Hard => PairSet::Hard,
                },
            };
            let hard = (hard_repetitions > 0).then_some((hard_repetitions, hard_profile));
            run_matrix(&spec, sites, hard, json, markdown)
        }
    }
}

fn kinds_or_all(kinds: Vec<NatKind>) -> Vec<NatKind> {
    if kinds.is_empty() {
        NatKind::ALL.to_vec()
    } else {
        kinds
    }
}

fn up(topology: Topology, kinds: Vec<NatKind>, sites: SiteOptions) -> anyhow::Result<()> {
    let (profile, pm) = sites.single()?;
    let spec = sites.apply(
        match (topology, kinds.is_empty()) {
            (Topology::Everything, true) => TopologySpec::everything(),
            (Topology::Everything, false) => TopologySpec::one_of_each(&kinds, false),
            (Topology::Matrix, _) => TopologySpec::pairs(&kinds_or_all(kinds)),
        },
        profile,
        pm,
    );
    let lab = Lab::build_persistent(UP_TAG, &spec).context("building the lab")?;
    let s = lab.servers();
    println!("lab up in {:?}", lab.build_time());
    println!(
        "internet namespace {}: natkit-stun on {} (other {}), natkit-turn on {} (UDP, TCP) and {} (TLS, cert {})",
        lab.internet().name(),
        s.stun,
        s.stun_other,
        s.turn,
        s.turn_tls,
        s.ca.display()
    );
    println!(
        "TURN user {} password {} (REST secret {})\n",
        s.user, s.password, s.secret
    );
    println!(
        "{:<9} {:<22} {:<8} {:<10} {:<8} {:<16} {:<16} host namespace",
        "site", "kind", "hairpin", "link", "mapping", "host", "public"
    );
    for site in lab.sites() {
        println!(
            "{:<9} {:<22} {:<8} {:<10} {:<8} {:<16} {:<16} {}",
            site.name,
            site.kind.name(),
            site.hairpin,
            site.profile.name(),
            site.port_mapping.name(),
            site.host_addr,
            site.public_addr,
            site.host
        );
        if let Some(url) = site.igd_url() {
            println!(
                "          port mapping: upnpc -u {url} ..., natpmpc -g {}",
                site.gateway
            );
        }
    }
    if let Some(first) = lab.sites().first() {
        println!(
            "\ntry: ip netns exec {} {} netcheck --stun {}",
            first.host,
            lab.binaries().natkit.display(),
            s.stun
        );
    }
    println!("tear down: natkit-lab down");
    lab.detach();
    Ok(())
}

fn status() -> anyhow::Result<()> {
    let start = format!("{}-{UP_TAG}-{PERSISTENT_OWNER}-", natkit_lab::lab::PREFIX);
    let names: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect();
    if names.is_empty() {
        println!("no lab is up");
    }
    for n in names {
        let pids = natkit_lab::Netns::existing(&n).pids();
        println!("{n} (processes: {pids:?})");
    }
    Ok(())
}

fn run_netcheck(kinds: Vec<NatKind>) -> anyhow::Result<()> {
    let spec = if kinds.is_empty() {
        TopologySpec::everything()
    } else {
        TopologySpec::one_of_each(&kinds, false)
    };
    let lab = Lab::build("nccli", &spec).context("building the lab")?;
    let mut bad = 0;
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = lab
            .sites()
            .iter()
            .map(|site| {
                let lab = &lab;
                s.spawn(move || (site, netcheck::run(lab, site)))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("netcheck thread"))
            .collect()
    });
    println!(
        "{:<7} {:<21} {:<8} {:<27} {:<27} {:<8} {:<23} as built",
        "site", "kind", "hairpin", "mapping", "filtering", "hairpin", "nat type"
    );
    for (site, run) in results {
        let run = run?;
        let v = &run.verdict;
        let check = netcheck::check(site, &run);
        let ok = check.is_ok();
        bad += usize::from(!ok);
        println!(
            "{:<7} {:<21} {:<8} {:<27} {:<27} {:<8} {:<23} {}",
            site.name,
            site.kind.name(),
            site.hairpin,
            v.mapping,
            v.filtering,
            v.hairpinning.map_or("-".into(), |b| b.to_string()),
            v.nat_type,
            if ok { "yes" } else { "NO" }
        );
        if let Err(e) = check {
            eprintln!("  {e}");
        }
    }
    if bad > 0 {
        bail!("{bad} sites reported other than built");
    }
    Ok(())
}

/// The 1-minute load average now (`uptime`'s first figure).
fn load_now() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Build the lab for `spec` in `profile` and run it.
fn run_one(
    spec: &MatrixSpec,
    sites: &SiteOptions,
    profile: LinkProfile,
) -> anyhow::Result<matrix::Matrix> {
    let lab = Lab::build(
        "mxcli",
        &sites.apply(spec.topology(), profile, spec.port_mapping),
    )
    .context("building the lab")?;
    eprintln!(
        "lab of {} sites ({} links, port mapping {}) built in {:?}; {} runs, {} at a time; load {}",
        lab.sites().len(),
        profile.name(),
        spec.port_mapping,
        lab.build_time(),
        spec.runs().len(),
        spec.concurrency,
        load_now()
    );
    let m = matrix::run(&lab, spec, &|c| {
        eprintln!("  {} x {}: {}", c.listen, c.connect, c.short());
    });
    print!("{}", m.table());
    Ok(m)
}

fn run_matrix(
    spec: &MatrixSpec,
    sites: SiteOptions,
    hard: Option<(usize, LinkProfile)>,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let load_start = load_now();
    let mut runs = Vec::new();
    for &profile in &sites.profile {
        for &pm in &sites.port_mapping {
            let spec = MatrixSpec {
                port_mapping: pm,
                ..spec.clone()
            };
            runs.push(run_one(&spec, &sites, profile)?);
        }
    }
    let mut hard_runs = Vec::new();
    if let Some((repetitions, profile)) = hard {
        for &pm in &sites.port_mapping {
            let spec = MatrixSpec {
                port_mapping: pm,
                only: PairSet::Hard,
                repetitions,
                ..spec.clone()
            };
            if spec.pairs().is_empty() {
                bail!("no hard pairs among the kinds (give a symmetric kind and one it cannot punch plainly)");
            }
            hard_runs.push(run_one(&spec, &sites, profile)?);
        }
    }
    eprintln!("took {:.1} s", t0.elapsed().as_secs_f64());
    let command = std::iter::once("natkit-lab".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let when = matrix::utc_now();
    let load = format!(
        "{load_start} at the start, {} at the end (1 minute)",
        load_now()
    );
    let page = Page {
        command: &command,
        when: &when,
        load: &load,
        matrices: &runs,
        hard: &hard_runs,
    };
    if let Some(p) = json {
        let doc = matrix::json(&page);
        std::fs::write(&p, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = markdown {
        std::fs::write(&p, matrix::markdown(&page))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if !runs.iter().chain(&hard_runs).all(|m| m.all_ok()) {
        bail!("some pairs failed");
    }
    Ok(())
}
