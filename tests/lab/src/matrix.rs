//! The connection matrix (issue 5, test 2): for every pair of NAT kinds,
//! `natkit listen` behind one and `natkit connect` behind the other move
//! data over QUIC; the path must be direct wherever hole punching can work
//! and relayed otherwise ([`NatKind::direct_possible`]).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::lab::Lab;
use crate::nat::NatKind;
use crate::peer::{self, Pair, PeerOptions, Transfer};
use crate::topology::TopologySpec;

/// The kinds the matrix covers by default.
pub const DEFAULT_KINDS: [NatKind; 7] = [
    NatKind::Open,
    NatKind::NoNat,
    NatKind::FullCone,
    NatKind::RestrictedCone,
    NatKind::PortRestrictedCone,
    NatKind::Symmetric,
    NatKind::DoubleNat,
];

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
        }
    }
}

impl MatrixSpec {
    /// The topology the matrix runs in: two sites per kind.
    pub fn topology(&self) -> TopologySpec {
        TopologySpec::pairs(&self.kinds)
    }

    /// The pairs, listen kind first, in table order.
    pub fn pairs(&self) -> Vec<(NatKind, NatKind)> {
        let mut v = Vec::new();
        for (i, &a) in self.kinds.iter().enumerate() {
            for &b in &self.kinds[i..] {
                v.push((a, b));
            }
        }
        v
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
    /// The path the NATs allow.
    pub expected: Expect,
    /// The path kind the peers reported (host, srflx, prflx, relay).
    pub path: Option<String>,
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
}

/// The whole matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    /// Kinds in table order.
    pub kinds: Vec<NatKind>,
    /// Bytes each side sent per pair.
    pub payload_bytes: usize,
    /// One cell per pair.
    pub cells: Vec<Cell>,
}

/// The path the NATs of `listen` and `connect` allow
/// ([`NatKind::direct_possible`]).
pub fn expect_for(listen: NatKind, connect: NatKind) -> Expect {
    if listen.direct_possible(connect) {
        Expect::Direct
    } else {
        Expect::Relay
    }
}

fn judge(listen: NatKind, connect: NatKind, t: Transfer) -> Cell {
    let expected = expect_for(listen, connect);
    let path = t.path();
    let path_ok = matches!(
        (expected, path.as_deref()),
        (Expect::Relay, Some("relay")) | (Expect::Direct, Some("host" | "srflx" | "prflx"))
    );
    let mut error = t.error.clone();
    if !path_ok && t.exited_ok {
        let e = format!("path {path:?}, expected {expected:?}");
        error = Some(error.map_or(e.clone(), |x| format!("{e}; {x}")));
    }
    let conn = t.connect.as_ref();
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
        connect_ms: conn.and_then(|r| r.connect_ms),
        settled_ms,
        rtt_ms: conn
            .and_then(|r| r.rtt_ms)
            .or_else(|| t.listen.as_ref().and_then(|r| r.rtt_ms)),
        data_ok: t.data_ok,
        ok: t.exited_ok && t.data_ok && path_ok,
        wall_ms: t.wall_ms,
        error,
    }
}

/// Run one pair: listen in `<a>a`, connect in `<b>b`.
pub fn run_pair(lab: &Lab, spec: &MatrixSpec, a: NatKind, b: NatKind) -> Result<Cell> {
    let sa = lab.site(&format!("{}a", a.short()))?;
    let sb = lab.site(&format!("{}b", b.short()))?;
    let mut oa = PeerOptions::for_site(sa);
    let mut ob = PeerOptions::for_site(sb);
    oa.timeout = spec.peer_timeout;
    ob.timeout = spec.peer_timeout;
    let pair = Pair::start(
        lab,
        sa,
        &oa,
        sb,
        &ob,
        &format!("{}-{}", a.short(), b.short()),
    )?;
    let to_listen = peer::payload(spec.payload);
    let to_connect = peer::payload(spec.payload);
    let t = peer::transfer(pair, &to_listen, &to_connect, spec.spread, spec.pair_limit);
    Ok(judge(a, b, t))
}

/// Run every pair of `spec` in `lab` (built from [`MatrixSpec::topology`]),
/// `spec.concurrency` at a time; `progress` sees each cell as it finishes.
pub fn run(lab: &Lab, spec: &MatrixSpec, progress: &(dyn Fn(&Cell) + Sync)) -> Matrix {
    let todo = Mutex::new(spec.pairs().into_iter().enumerate().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..spec.concurrency.max(1) {
            s.spawn(|| loop {
                let next = todo.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((i, (a, b))) = next else {
                    break;
                };
                let cell = run_pair(lab, spec, a, b).unwrap_or_else(|e| Cell {
                    listen: a,
                    connect: b,
                    expected: expect_for(a, b),
                    path: None,
                    connect_ms: None,
                    settled_ms: None,
                    rtt_ms: None,
                    data_ok: false,
                    ok: false,
                    wall_ms: 0.0,
                    error: Some(e.to_string()),
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
        kinds: spec.kinds.clone(),
        payload_bytes: spec.payload,
        cells: cells.into_iter().map(|(_, c)| c).collect(),
    }
}

impl Cell {
    /// Short text for a table cell: `srflx 312 ms`, `FAIL`.
    pub fn short(&self) -> String {
        let path = self.path.as_deref().unwrap_or("none");
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

impl Matrix {
    /// The cell for a pair, in either order.
    pub fn cell(&self, a: NatKind, b: NatKind) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| (c.listen, c.connect) == (a, b) || (c.listen, c.connect) == (b, a))
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
        for c in self.cells.iter().filter(|c| !c.ok) {
            let _ = writeln!(
                s,
                "FAIL {} x {}: {}",
                c.listen,
                c.connect,
                c.error.as_deref().unwrap_or("?")
            );
        }
        s
    }

    /// The Markdown page (docs/NAT-MATRIX.md), naming the command that
    /// made it.
    pub fn markdown(&self, command: &str, when: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# NAT connection matrix\n");
        let _ = writeln!(
            s,
            "Two natkit peers, `natkit listen` behind the row's NAT and `natkit connect` behind the \
             column's, each in its own site of the NAT lab (`tests/lab`: network namespaces, veth \
             pairs and nftables NATs, natkit-stun and natkit-turn in an \"internet\" namespace), \
             connect with ICE and exchange {} bytes each way over QUIC, spread over a few seconds \
             and checked with SHA-256. A cell gives the path the session ended on and the connect \
             side's `connect_ms` (from having the peer's description to a usable QUIC connection). \
             The expected path is direct (host, srflx, prflx) wherever hole punching can work and \
             `relay` where it cannot: an address-and-port-dependent mapping (symmetric NAT) facing \
             another one or an address-and-port-dependent filter, and any network that lets no UDP \
             out (there the peer reaches the relay over TCP or TLS).\n",
            self.payload_bytes
        );
        let _ = writeln!(
            s,
            "Made by `{command}` on {when}, as root from the repository root \
             (`cargo run -p natkit-lab -- matrix ...`; `natkit-lab matrix --help` lists the \
             options). The lab's own tests run the same matrix: `cargo test -p natkit-lab --test matrix`.\n"
        );
        let rows = self.grid();
        for (i, r) in rows.iter().enumerate() {
            let _ = writeln!(s, "| {} |", r.join(" | "));
            if i == 0 {
                let _ = writeln!(s, "|{}", "---|".repeat(r.len()));
            }
        }
        let passed = self.cells.iter().filter(|c| c.ok).count();
        let _ = writeln!(s, "\n{passed} of {} pairs passed.\n", self.cells.len());
        let _ = writeln!(
            s,
            "The NATs (Linux nftables; every router but `open`, the unfiltered baseline, drops unsolicited inbound traffic):\n"
        );
        for k in &self.kinds {
            let _ = writeln!(s, "- `{k}`: {}", k.describe());
        }
        let _ = writeln!(s);
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
                c.path.as_deref().unwrap_or("-"),
                ms(c.connect_ms),
                ms(c.settled_ms),
                ms(c.rtt_ms),
                if c.data_ok { "yes" } else { "no" },
                c.wall_ms,
                if c.ok {
                    "ok".to_string()
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
        s
    }

    /// The JSON document.
    pub fn json(&self, command: &str, when: &str) -> serde_json::Value {
        serde_json::json!({
            "command": command,
            "generated_at": when,
            "matrix": self,
        })
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
