//! The connection matrix (issue 5, test 2): for every pair of NAT kinds,
//! `natkit listen` behind one and `natkit connect` behind the other move
//! data over QUIC; the path must be direct wherever hole punching (with
//! natkit's hard-NAT punch) can work and relayed otherwise
//! ([`NatSide::natkit_direct`]: a port mapping on either side counts).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::lab::Lab;
use crate::link::LinkProfile;
use crate::nat::{NatKind, NatSide};
use crate::peer::{self, Pair, PeerOptions, Transfer};
use crate::portmap::PortMapping;
use crate::topology::TopologySpec;

mod page;
pub use page::{json, markdown, Goal, Page};

/// The kinds the matrix covers by default: every one.
pub const DEFAULT_KINDS: [NatKind; 10] = NatKind::ALL;

/// Which pairs of the kinds run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PairSet {
    /// Every unordered pair, each kind with itself too.
    #[default]
    All,
    /// Only the hard pairs ([`hard_pair`]).
    Hard,
    /// These (listen, connect) pairs, in this order (the kinds must
    /// include both sides).
    Listed(Vec<(NatKind, NatKind)>),
}

/// Whether a pair is one of the hard ones: UDP gets out of both sites, at
/// least one side maps each destination to another port, and plain hole
/// punching cannot connect them ([`NatKind::direct_possible`]). Only
/// natkit's hard-NAT punch or a port mapping makes these direct (or
/// nothing does, with both sides hard): their success rate is the figure.
pub fn hard_pair(a: NatKind, b: NatKind) -> bool {
    a.udp_allowed()
        && b.udp_allowed()
        && (a.endpoint_dependent_mapping() || b.endpoint_dependent_mapping())
        && !a.direct_possible(b)
}

/// How to run the matrix.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    /// The NAT kinds; every unordered pair (each kind with itself too).
    pub kinds: Vec<NatKind>,
    /// Bytes each side sends.
    pub payload: usize,
    /// How long the data is spread over: the session lives at least that
    /// long, so an agent that connected through the relay first has time to
    /// move to a direct pair that succeeds later (RFC 8445 §8.1.1 leaves
    /// the choice to the controlling agent).
    pub spread: Duration,
    /// Pairs run at once.
    pub concurrency: usize,
    /// The peers' `--timeout`.
    pub peer_timeout: Duration,
    /// How long one pair may take in all before it is killed.
    pub pair_limit: Duration,
    /// How many times each pair runs (success rates of the hard pairs).
    pub repetitions: usize,
    /// miniupnpd on every NAT it can open
    /// ([`NatKind::port_mapping_possible`]), or not.
    pub port_mapping: PortMapping,
    /// Which pairs of [`MatrixSpec::kinds`] run.
    pub only: PairSet,
}

impl Default for MatrixSpec {
    fn default() -> Self {
        MatrixSpec {
            kinds: DEFAULT_KINDS.to_vec(),
            payload: 256 * 1024,
            spread: Duration::from_secs(3),
            concurrency: 4,
            peer_timeout: Duration::from_secs(30),
            pair_limit: Duration::from_secs(60),
            repetitions: 1,
            port_mapping: PortMapping::Off,
            only: PairSet::All,
        }
    }
}

impl MatrixSpec {
    /// The topology the matrix runs in: two sites per kind that some pair
    /// uses, the port-mapping daemon as [`MatrixSpec::port_mapping`] says.
    pub fn topology(&self) -> TopologySpec {
        let pairs = self.pairs();
        let used: Vec<NatKind> = self
            .kinds
            .iter()
            .copied()
            .filter(|&k| pairs.iter().any(|&(a, b)| a == k || b == k))
            .collect();
        TopologySpec::pairs(&used).with_port_mapping(self.port_mapping)
    }

    /// The pairs, listen kind first, in table order.
    pub fn pairs(&self) -> Vec<(NatKind, NatKind)> {
        if let PairSet::Listed(pairs) = &self.only {
            return pairs
                .iter()
                .copied()
                .filter(|(a, b)| self.kinds.contains(a) && self.kinds.contains(b))
                .collect();
        }
        let mut v = Vec::new();
        for (i, &a) in self.kinds.iter().enumerate() {
            for &b in &self.kinds[i..] {
                if self.only == PairSet::All || hard_pair(a, b) {
                    v.push((a, b));
                }
            }
        }
        v
    }

    /// Every run: each pair [`MatrixSpec::repetitions`] times, the
    /// repetitions of one pair apart (rounds interleaved).
    pub fn runs(&self) -> Vec<(NatKind, NatKind)> {
        let pairs = self.pairs();
        (0..self.repetitions.max(1))
            .flat_map(|_| pairs.iter().copied())
            .collect()
    }
}

/// Direct or relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Hole punching must work: host, srflx or prflx.
    Direct,
    /// Only the relay can connect them.
    Relay,
}

/// One pair's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Kind of the listen side's NAT.
    pub listen: NatKind,
    /// Kind of the connect side's NAT.
    pub connect: NatKind,
    /// The path the NATs (and port mappings) allow.
    pub expected: Expect,
    /// The path kind the peers reported (host, srflx, prflx, relay).
    pub path: Option<String>,
    /// Whether the path runs over a port-mapped candidate (either end's,
    /// as the connect side reports).
    pub port_mapped: bool,
    /// The connect side's candidates on the path: `kind address` of its
    /// own and of the peer's.
    pub local: Option<String>,
    /// See [`Cell::local`].
    pub remote: Option<String>,
    /// Time to connect the connect side reported, in ms.
    pub connect_ms: Option<f64>,
    /// When the connect side moved to its final path, in ms from its start
    /// (the last of its `path_changes`), if it moved after connecting.
    pub settled_ms: Option<f64>,
    /// Round-trip time on the path, in ms.
    pub rtt_ms: Option<f64>,
    /// Whether the data arrived intact both ways (SHA-256).
    pub data_ok: bool,
    /// Whether the pair passed: connected, data intact, path as expected.
    pub ok: bool,
    /// Wall time of the whole run (both processes, start to exit), in ms.
    pub wall_ms: f64,
    /// What went wrong.
    pub error: Option<String>,
    /// Something the run showed that did not fail it.
    pub note: Option<String>,
}

/// The whole matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// The sites' access links.
    pub profile: LinkProfile,
    /// The NATs' port-mapping daemon.
    pub port_mapping: PortMapping,
    /// Kinds in table order.
    pub kinds: Vec<NatKind>,
    /// Bytes each side sent per pair.
    pub payload_bytes: usize,
    /// One cell per pair.
    pub cells: Vec<Cell>,
}

/// The path the NATs of `listen` and `connect` allow natkit when every NAT
/// that can runs the port-mapping daemon as `pm` says
/// ([`NatSide::natkit_direct`]; a refusing daemon maps nothing).
pub fn expect_for(listen: NatKind, connect: NatKind, pm: PortMapping) -> Expect {
    let side = |kind: NatKind| NatSide {
        kind,
        mapped: pm == PortMapping::On && kind.port_mapping_possible(),
    };
    if side(listen).natkit_direct(side(connect)) {
        Expect::Direct
    } else {
        Expect::Relay
    }
}

fn judge(listen: NatKind, connect: NatKind, pm: PortMapping, t: Transfer) -> Cell {
    let expected = expect_for(listen, connect, pm);
    let reported = t.path();
    // The lab goes by addresses: a path with an end on the relay's address
    // is relayed, whatever kind the report gives it. natkit reports a
    // peer-reflexive candidate it learned on its TURN allocation as
    // `prflx` (seen from a UDP-blocked peer facing a port-mapped one).
    let on_relay = [&t.listen, &t.connect].iter().any(|r| {
        r.as_ref().is_some_and(|r| {
            [&r.local, &r.remote].iter().any(|a| {
                a.as_deref()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|a| a.ip() == crate::addr::TURN)
            })
        })
    });
    let relabelled = on_relay && reported.as_deref() != Some("relay");
    let path = if on_relay {
        Some("relay".to_string())
    } else {
        reported.clone()
    };
    let path_ok = matches!(
        (expected, path.as_deref()),
        (Expect::Relay, Some("relay")) | (Expect::Direct, Some("host" | "srflx" | "prflx"))
    );
    let mut error = t.error.clone();
    if !path_ok && t.exited_ok {
        let e = format!("path {path:?}, expected {expected:?}");
        error = Some(error.map_or(e.clone(), |x| format!("{e}; {x}")));
    }
    let note = relabelled.then(|| {
        format!(
            "natkit reported {:?} for a path over the relay's address",
            reported.as_deref().unwrap_or("none")
        )
    });
    let conn = t.connect.as_ref();
    let port_mapped = conn
        .is_some_and(|r| r.raw["local_port_mapped"] == true || r.raw["remote_port_mapped"] == true);
    let end = |addr: &str, kind: &str| {
        conn.and_then(|r| {
            Some(format!(
                "{} {}",
                r.raw.get(kind)?.as_str()?,
                r.raw.get(addr)?.as_str()?
            ))
        })
    };
    let settled_ms = conn.and_then(|r| {
        r.raw
            .get("path_changes")?
            .as_array()?
            .last()?
            .get("at_ms")?
            .as_f64()
    });
    Cell {
        listen,
        connect,
        expected,
        path,
        port_mapped,
        local: end("local", "local_kind"),
        remote: end("remote", "remote_kind"),
        connect_ms: conn.and_then(|r| r.connect_ms),
        settled_ms,
        rtt_ms: conn
            .and_then(|r| r.rtt_ms)
            .or_else(|| t.listen.as_ref().and_then(|r| r.rtt_ms)),
        data_ok: t.data_ok,
        ok: t.exited_ok && t.data_ok && path_ok,
        wall_ms: t.wall_ms,
        error,
        note,
    }
}

/// Run one pair: listen in `<a>a`, connect in `<b>b`.
pub fn run_pair(lab: &Lab, spec: &MatrixSpec, a: NatKind, b: NatKind) -> Result<Cell> {
    run_repetition(lab, spec, a, b, 0)
}

/// Repetition `rep` of a pair: its own directory (descriptions, reports,
/// logs), as repetitions of one pair may run at the same time.
pub fn run_repetition(
    lab: &Lab,
    spec: &MatrixSpec,
    a: NatKind,
    b: NatKind,
    rep: usize,
) -> Result<Cell> {
    let id = match rep {
        0 => format!("{}-{}", a.short(), b.short()),
        r => format!("{}-{}-{r}", a.short(), b.short()),
    };
    let sa = lab.site(&format!("{}a", a.short()))?;
    let sb = lab.site(&format!("{}b", b.short()))?;
    let mut oa = PeerOptions::for_site(sa);
    let mut ob = PeerOptions::for_site(sb);
    oa.timeout = spec.peer_timeout;
    ob.timeout = spec.peer_timeout;
    let pair = Pair::start(lab, sa, &oa, sb, &ob, &id)?;
    let to_listen = peer::payload(spec.payload);
    let to_connect = peer::payload(spec.payload);
    let t = peer::transfer(pair, &to_listen, &to_connect, spec.spread, spec.pair_limit);
    Ok(judge(a, b, spec.port_mapping, t))
}

/// Run every pair of `spec` in `lab` (built from [`MatrixSpec::topology`]),
/// `spec.concurrency` at a time; `progress` sees each cell as it finishes.
pub fn run(lab: &Lab, spec: &MatrixSpec, progress: &(dyn Fn(&Cell) + Sync)) -> Matrix {
    let pairs = spec.pairs().len().max(1);
    let mut runs: Vec<_> = spec.runs().into_iter().enumerate().collect();
    // Popped from the end: the first rounds first.
    runs.reverse();
    let todo = Mutex::new(runs);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..spec.concurrency.max(1) {
            s.spawn(|| loop {
                let next = todo.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((i, (a, b))) = next else {
                    break;
                };
                let rep = i / pairs;
                let cell = run_repetition(lab, spec, a, b, rep).unwrap_or_else(|e| Cell {
                    listen: a,
                    connect: b,
                    expected: expect_for(a, b, spec.port_mapping),
                    path: None,
                    port_mapped: false,
                    local: None,
                    remote: None,
                    connect_ms: None,
                    settled_ms: None,
                    rtt_ms: None,
                    data_ok: false,
                    ok: false,
                    wall_ms: 0.0,
                    error: Some(e.to_string()),
                    note: None,
                });
                progress(&cell);
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, cell));
            });
        }
    });
    let mut cells = done.into_inner().unwrap_or_else(|e| e.into_inner());
    cells.sort_by_key(|(i, _)| *i);
    Matrix {
        profile: lab
            .sites()
            .first()
            .map_or_else(LinkProfile::default, |s| s.profile),
        port_mapping: spec.port_mapping,
        kinds: spec.kinds.clone(),
        payload_bytes: spec.payload,
        cells: cells.into_iter().map(|(_, c)| c).collect(),
    }
}

/// One pair over its repetitions ([`MatrixSpec::repetitions`]).
#[derive(Debug, Clone, Serialize)]
pub struct PairStats {
    /// Kind of the listen side's NAT.
    pub listen: NatKind,
    /// Kind of the connect side's NAT.
    pub connect: NatKind,
    /// The path the NATs allow.
    pub expected: Expect,
    /// Runs.
    pub runs: usize,
    /// Runs that passed (path as expected, data intact).
    pub passed: usize,
    /// Runs that ended on a direct path.
    pub direct: usize,
    /// From having the peer's description to the final direct path
    /// ([`Cell::direct_ms`]), over the runs that ended direct.
    pub time_to_direct: Option<TimeStats>,
}

impl Cell {
    /// From having the peer's description to the direct path the session
    /// ended on (connected there, or moved there from the relay), in ms;
    /// `None` unless it ended direct.
    pub fn direct_ms(&self) -> Option<f64> {
        if !matches!(self.path.as_deref(), Some("host" | "srflx" | "prflx")) {
            return None;
        }
        Some(self.connect_ms? + self.settled_ms.unwrap_or(0.0))
    }

    /// Short text for a table cell: `srflx 312 ms`, `FAIL`.
    pub fn short(&self) -> String {
        let path = match (self.path.as_deref(), self.port_mapped) {
            (Some(p), true) => format!("{p}+pm"),
            (p, _) => p.unwrap_or("none").to_string(),
        };
        let time = self
            .connect_ms
            .map_or(String::new(), |ms| format!(" {ms:.0} ms"));
        if self.ok {
            format!("{path}{time}")
        } else {
            format!("FAIL ({path}{time})")
        }
    }
}

/// Connect times of some pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimeStats {
    /// How many pairs.
    pub n: usize,
    /// Median connect time, ms (nearest rank).
    pub p50_ms: f64,
    /// 90th percentile, ms (nearest rank).
    pub p90_ms: f64,
}

impl TimeStats {
    /// Of `times` (ms); `None` when empty.
    pub fn of(mut times: Vec<f64>) -> Option<TimeStats> {
        if times.is_empty() {
            return None;
        }
        times.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the samples
        // at or below it.
        let rank =
            |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        Some(TimeStats {
            n: times.len(),
            p50_ms: rank(0.5),
            p90_ms: rank(0.9),
        })
    }
}

impl std::fmt::Display for TimeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p90 {:.1} ms ({} pairs)",
            self.p50_ms, self.p90_ms, self.n
        )
    }
}

/// Connect times of the pairs that passed, by the path they connected on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConnectTimes {
    /// Direct paths (host, srflx, prflx).
    pub direct: Option<TimeStats>,
    /// Relayed paths.
    pub relayed: Option<TimeStats>,
}

impl std::fmt::Display for ConnectTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |s: Option<TimeStats>| s.map_or("none".to_string(), |s| s.to_string());
        write!(
            f,
            "direct {}; relayed {}",
            show(self.direct),
            show(self.relayed)
        )
    }
}

impl Matrix {
    /// Connect times (the connect side's `connect_ms`) of the pairs that
    /// passed, direct and relayed apart.
    pub fn connect_times(&self) -> ConnectTimes {
        let of = |relayed: bool| {
            TimeStats::of(
                self.cells
                    .iter()
                    .filter(|c| c.ok && (c.path.as_deref() == Some("relay")) == relayed)
                    .filter_map(|c| c.connect_ms)
                    .collect(),
            )
        };
        ConnectTimes {
            direct: of(false),
            relayed: of(true),
        }
    }

    /// The cell for a pair, in either order.
    pub fn cell(&self, a: NatKind, b: NatKind) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| (c.listen, c.connect) == (a, b) || (c.listen, c.connect) == (b, a))
    }

    /// Each pair over its runs, in table order.
    pub fn pair_stats(&self) -> Vec<PairStats> {
        let mut v: Vec<PairStats> = Vec::new();
        for c in &self.cells {
            if v.iter()
                .any(|p| (p.listen, p.connect) == (c.listen, c.connect))
            {
                continue;
            }
            let runs: Vec<&Cell> = self
                .cells
                .iter()
                .filter(|x| (x.listen, x.connect) == (c.listen, c.connect))
                .collect();
            v.push(PairStats {
                listen: c.listen,
                connect: c.connect,
                expected: c.expected,
                runs: runs.len(),
                passed: runs.iter().filter(|x| x.ok).count(),
                direct: runs.iter().filter(|x| x.direct_ms().is_some()).count(),
                time_to_direct: TimeStats::of(runs.iter().filter_map(|x| x.direct_ms()).collect()),
            });
        }
        v
    }

    /// Whether some pair ran more than once.
    fn repeated(&self) -> bool {
        self.pair_stats().iter().any(|p| p.runs > 1)
    }

    /// Whether every pair passed.
    pub fn all_ok(&self) -> bool {
        self.cells.iter().all(|c| c.ok)
    }

    /// The grid: rows are the listen side's NAT, columns the connect
    /// side's; each pair once (upper triangle).
    fn grid(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut head = vec!["listen \\ connect".to_string()];
        head.extend(self.kinds.iter().map(|k| k.name().to_string()));
        rows.push(head);
        for (i, &a) in self.kinds.iter().enumerate() {
            let mut row = vec![a.name().to_string()];
            for (j, &b) in self.kinds.iter().enumerate() {
                row.push(if j < i {
                    String::new()
                } else {
                    self.cell(a, b).map_or("-".into(), Cell::short)
                });
            }
            rows.push(row);
        }
        rows
    }

    /// The table for a terminal.
    pub fn table(&self) -> String {
        let rows = self.grid();
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(s, "{}", line.join("  ").trim_end());
        }
        let passed = self.cells.iter().filter(|c| c.ok).count();
        let _ = writeln!(
            s,
            "{passed}/{} pairs passed (path as expected, {} bytes each way intact)",
            self.cells.len(),
            self.payload_bytes
        );
        let _ = writeln!(
            s,
            "connect time, profile {}: {}",
            self.profile.name(),
            self.connect_times()
        );
        if self.repeated() {
            for p in self.pair_stats() {
                let t = p.time_to_direct.map_or("none".into(), |t| t.to_string());
                let _ = writeln!(
                    s,
                    "{} x {}: {}/{} passed, {} direct; time to direct {t}",
                    p.listen, p.connect, p.passed, p.runs, p.direct
                );
            }
        }
        for c in self.cells.iter().filter(|c| !c.ok) {
            let _ = writeln!(
                s,
                "FAIL {} x {}: {} (local {}, remote {})",
                c.listen,
                c.connect,
                c.error.as_deref().unwrap_or("?"),
                c.local.as_deref().unwrap_or("-"),
                c.remote.as_deref().unwrap_or("-")
            );
        }
        s
    }

    /// This matrix's section of the Markdown page: the grid, the pass
    /// count, the connect times, each pair over its repetitions and, with
    /// `runs`, one row per run.
    pub(crate) fn markdown_section(&self, s: &mut String, runs: bool) {
        if runs {
            let rows = self.grid();
            for (i, r) in rows.iter().enumerate() {
                let _ = writeln!(s, "| {} |", r.join(" | "));
                if i == 0 {
                    let _ = writeln!(s, "|{}", "---|".repeat(r.len()));
                }
            }
            let _ = writeln!(s);
        }
        let passed = self.cells.iter().filter(|c| c.ok).count();
        let _ = writeln!(
            s,
            "{passed} of {} runs passed. Connect time: {}.\n",
            self.cells.len(),
            self.connect_times()
        );
        if self.repeated() {
            let _ = writeln!(
                s,
                "Repetitions (time to direct: from having the peer's description to the direct path the session ended on, nearest rank):\n"
            );
            let _ = writeln!(
                s,
                "| listen | connect | expected | passed | direct | time to direct p50 ms | p90 ms |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for p in self.pair_stats() {
                let (p50, p90) = p.time_to_direct.map_or(("-".into(), "-".into()), |t| {
                    (format!("{:.1}", t.p50_ms), format!("{:.1}", t.p90_ms))
                });
                let _ = writeln!(
                    s,
                    "| {} | {} | {:?} | {} of {} | {} | {p50} | {p90} |",
                    p.listen, p.connect, p.expected, p.passed, p.runs, p.direct
                );
            }
            let _ = writeln!(s);
        }
        if !runs {
            return;
        }
        let _ = writeln!(
            s,
            "| listen | connect | expected | path | connect ms | final path at ms | rtt ms | data intact | wall ms | result |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for c in &self.cells {
            let ms = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
            let _ = writeln!(
                s,
                "| {} | {} | {:?} | {} | {} | {} | {} | {} | {:.0} | {} |",
                c.listen,
                c.connect,
                c.expected,
                match (c.path.as_deref(), c.port_mapped) {
                    (Some(p), true) => format!("{p} (port-mapped)"),
                    (p, _) => p.unwrap_or("-").to_string(),
                },
                ms(c.connect_ms),
                ms(c.settled_ms),
                ms(c.rtt_ms),
                if c.data_ok { "yes" } else { "no" },
                c.wall_ms,
                if c.ok {
                    c.note
                        .as_ref()
                        .map_or("ok".to_string(), |n| format!("ok ({n})"))
                } else {
                    format!(
                        "FAIL: {}",
                        c.error
                            .as_deref()
                            .unwrap_or("?")
                            .lines()
                            .next()
                            .unwrap_or("")
                            .replace('|', "\\|")
                    )
                }
            );
        }
    }
}

/// Now as `YYYY-MM-DD HH:MM UTC` (no time zone database needed).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(path: &str, ms: f64, ok: bool) -> Cell {
        Cell {
            listen: NatKind::Open,
            connect: NatKind::Open,
            expected: Expect::Direct,
            path: Some(path.into()),
            port_mapped: false,
            local: None,
            remote: None,
            connect_ms: Some(ms),
            settled_ms: None,
            rtt_ms: None,
            data_ok: ok,
            ok,
            wall_ms: 0.0,
            error: None,
            note: None,
        }
    }

    #[test]
    fn the_hard_pairs_are_the_ones_plain_punching_cannot_connect() {
        use NatKind::*;
        let spec = MatrixSpec {
            only: PairSet::Hard,
            ..MatrixSpec::default()
        };
        let pairs = spec.pairs();
        // Three symmetric allocators: each with no-nat, port-restricted
        // and double-nat (9), and with each other (6).
        assert_eq!(pairs.len(), 15, "{pairs:?}");
        assert!(pairs.contains(&(NoNat, Symmetric)));
        assert!(pairs.contains(&(SymmetricPreserving, SymmetricPreserving)));
        assert!(!pairs.contains(&(FullCone, Symmetric)));
        assert!(!pairs
            .iter()
            .any(|&(a, b)| a == UdpBlocked || b == UdpBlocked));
        // Only the kinds those pairs use get sites.
        let sites = spec.topology().sites;
        assert_eq!(sites.len(), 2 * 6);
        assert!(!sites.iter().any(|s| s.kind == Open));
        // Port mapping turns the hard-hard pairs direct, not the rest.
        for (a, b, pm, want) in [
            (Symmetric, Symmetric, PortMapping::Off, Expect::Relay),
            (Symmetric, Symmetric, PortMapping::Refuse, Expect::Relay),
            (Symmetric, Symmetric, PortMapping::On, Expect::Direct),
            (Symmetric, UdpBlocked, PortMapping::On, Expect::Relay),
            (NoNat, Symmetric, PortMapping::Off, Expect::Direct),
        ] {
            assert_eq!(expect_for(a, b, pm), want, "{a} x {b}, port mapping {pm}");
        }
    }

    #[test]
    fn connect_times_by_nearest_rank_direct_and_relayed_apart() {
        assert_eq!(TimeStats::of(Vec::new()), None);
        let t = TimeStats::of((1..=10).rev().map(f64::from).collect()).unwrap();
        assert_eq!((t.n, t.p50_ms, t.p90_ms), (10, 5.0, 9.0));
        let one = TimeStats::of(vec![7.0]).unwrap();
        assert_eq!((one.p50_ms, one.p90_ms), (7.0, 7.0));
        let m = Matrix {
            profile: LinkProfile::Lan,
            port_mapping: PortMapping::Off,
            kinds: vec![NatKind::Open],
            payload_bytes: 0,
            cells: vec![
                cell("host", 3.0, true),
                cell("srflx", 5.0, true),
                cell("prflx", 4.0, true),
                cell("relay", 20.0, true),
                // A failed pair counts in neither.
                cell("srflx", 900.0, false),
            ],
        };
        let t = m.connect_times();
        let d = t.direct.unwrap();
        assert_eq!((d.n, d.p50_ms, d.p90_ms), (3, 4.0, 5.0));
        assert_eq!(t.relayed.unwrap().n, 1);
        assert!(m
            .table()
            .contains("connect time, profile lan: direct p50 4.0 ms"));
        let page = markdown(&Page {
            command: "natkit-lab matrix",
            when: "now",
            load: "1.0",
            matrices: &[m],
            hard: &[],
        });
        assert!(
            page.contains(
                "| lan | off | 4 of 5 | 3 of 5 (60 %) | 4.0 | 5.0 | 3 | 20.0 | 20.0 | 1 |"
            ),
            "{page}"
        );
        // The lan goal (median 4 ms <= 50 ms) is met; the hard pairs were
        // not measured, so their goal is not.
        assert!(
            page.contains("| Direct connect median <= 50 ms (50 ms) in lan, port mapping off | 4.0 ms | yes |"),
            "{page}"
        );
        assert!(
            page.contains("not measured (--hard-repetitions) | **no** |"),
            "{page}"
        );
    }
}
