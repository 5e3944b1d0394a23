//! The matrix as a document: docs/NAT-MATRIX.md and its JSON twin, with
//! issue 13's goals checked against the figures.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{Expect, Matrix, TimeStats};
use crate::link::LinkProfile;
use crate::nat::NatKind;
use crate::portmap::PortMapping;

/// Whether the matrix had `kind` before issue 13 added the sequential and
/// preserving symmetric NATs: "nothing regresses in today's 36 pairs".
fn before_issue_13(kind: NatKind) -> bool {
    !matches!(
        kind,
        NatKind::SymmetricSequential | NatKind::SymmetricPreserving
    )
}

/// Success a hard pair needs over its repetitions.
const HARD_SUCCESS: f64 = 0.95;
/// Repetitions a hard pair needs before its success rate counts.
const HARD_RUNS: usize = 20;
/// The hard-NAT punch's bound at p90 in `broadband`.
const PUNCH_P90: Duration = Duration::from_secs(2);

/// What one `natkit-lab matrix` run measured.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// The command line.
    pub command: &'a str,
    /// When it ran ([`super::utc_now`]).
    pub when: &'a str,
    /// The machine's load average while it ran (it is shared).
    pub load: &'a str,
    /// The whole matrix, one per link profile and port-mapping setting.
    pub matrices: &'a [Matrix],
    /// The hard pairs ([`super::hard_pair`]) repeated, one per
    /// port-mapping setting.
    pub hard: &'a [Matrix],
}

/// One of issue 13's goals against the figure measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// The goal.
    pub goal: String,
    /// What was measured.
    pub figure: String,
    /// Whether the figure meets it.
    pub met: bool,
}

/// A peer-to-peer round trip of `profile`, nominal (its links' delays; the
/// README's lab section and `link.rs` give the measured ones).
fn peer_rtt_ms(profile: LinkProfile) -> f64 {
    // Two access links, each crossed both ways.
    profile
        .shape()
        .map_or(0.0, |s| 4.0 * s.delay.as_secs_f64() * 1000.0)
}

/// Whether a run passed on a direct path.
fn ended_direct(c: &super::Cell) -> bool {
    c.ok && c.direct_ms().is_some()
}

/// Issue 13's goals, checked against the page's figures.
pub fn goals(page: &Page) -> Vec<Goal> {
    let mut v = Vec::new();
    let all: Vec<&super::Cell> = page
        .matrices
        .iter()
        .chain(page.hard)
        .flat_map(|m| &m.cells)
        .collect();
    let want_direct: Vec<_> = all
        .iter()
        .filter(|c| c.expected == Expect::Direct)
        .collect();
    let direct = want_direct.iter().filter(|c| ended_direct(c)).count();
    v.push(Goal {
        goal: "Direct in every pair where UDP is open and one side maps endpoint-independently \
               or has a port mapping"
            .into(),
        figure: format!(
            "{direct} of {} such runs direct (every profile and port-mapping setting, hard-pair \
             repetitions included)",
            want_direct.len()
        ),
        met: !want_direct.is_empty() && direct == want_direct.len(),
    });
    let relayed: Vec<_> = all
        .iter()
        .filter(|c| c.path.as_deref() == Some("relay"))
        .collect();
    let stray = relayed
        .iter()
        .filter(|c| c.expected != Expect::Relay)
        .count();
    v.push(Goal {
        goal: "Relay only where UDP is blocked or both sides are hard without port mapping".into(),
        figure: format!(
            "{} runs relayed, {stray} of them where a direct path was due",
            relayed.len()
        ),
        met: stray == 0,
    });
    match page
        .hard
        .iter()
        .flat_map(Matrix::pair_stats)
        .min_by(|a, b| {
            (a.passed as f64 / a.runs as f64).total_cmp(&(b.passed as f64 / b.runs as f64))
        }) {
        Some(worst) => {
            let few = page
                .hard
                .iter()
                .flat_map(Matrix::pair_stats)
                .any(|p| p.runs < HARD_RUNS);
            v.push(Goal {
                goal: format!(">= 95 % success over {HARD_RUNS} runs of each hard pair"),
                figure: format!(
                    "lowest {} of {} ({} x {}){}",
                    worst.passed,
                    worst.runs,
                    worst.listen,
                    worst.connect,
                    if few {
                        "; some pair ran fewer times"
                    } else {
                        ""
                    }
                ),
                met: !few && worst.passed as f64 >= HARD_SUCCESS * worst.runs as f64,
            });
        }
        None => v.push(Goal {
            goal: format!(">= 95 % success over {HARD_RUNS} runs of each hard pair"),
            figure: "not measured (--hard-repetitions)".into(),
            met: false,
        }),
    }
    // The punch alone: port mapping off, a hard side facing an easy one.
    let punched = TimeStats::of(
        page.hard
            .iter()
            .filter(|m| m.profile == LinkProfile::Broadband && m.port_mapping != PortMapping::On)
            .flat_map(|m| &m.cells)
            .filter(|c| c.expected == Expect::Direct)
            .filter_map(|c| c.direct_ms())
            .collect(),
    );
    v.push(Goal {
        goal: "Hard-NAT punch within 2 s at p90 in broadband (time to the direct path, no port \
               mapping)"
            .into(),
        figure: punched.map_or("not measured".into(), |t| t.to_string()),
        met: punched.is_some_and(|t| t.p90_ms <= PUNCH_P90.as_secs_f64() * 1000.0),
    });
    for m in page.matrices {
        let rtt = peer_rtt_ms(m.profile);
        let t = m.connect_times();
        let bound = match m.profile {
            LinkProfile::Broadband => Some((3.0 * rtt + 30.0, "3 RTT + 30 ms")),
            LinkProfile::Lan => Some((50.0, "50 ms")),
            _ => None,
        };
        let median = |path: &str, how: &str, bound: f64, stats: Option<TimeStats>| Goal {
            goal: format!(
                "{path} connect median <= {how} ({bound:.0} ms) in {}, port mapping {}",
                m.profile, m.port_mapping
            ),
            figure: stats.map_or("none".into(), |d| format!("{:.1} ms", d.p50_ms)),
            met: stats.is_some_and(|d| d.p50_ms <= bound),
        };
        if let Some((bound, how)) = bound {
            v.push(median("Direct", how, bound, t.direct));
        }
        v.push(median(
            "Relayed",
            "4 RTT + 50 ms",
            4.0 * rtt + 50.0,
            t.relayed,
        ));
    }
    let before: Vec<_> = page
        .matrices
        .iter()
        .filter(|m| m.port_mapping == PortMapping::Off)
        .flat_map(|m| &m.cells)
        .filter(|c| before_issue_13(c.listen) && before_issue_13(c.connect))
        .collect();
    let ok = before.iter().filter(|c| c.ok).count();
    v.push(Goal {
        goal: "Nothing regresses in the 36 pairs of before (port mapping off)".into(),
        figure: format!("{ok} of {} runs passed", before.len()),
        met: !before.is_empty() && ok == before.len(),
    });
    v
}

/// The JSON document: every matrix with its connect-time summary and
/// pairs, the hard pairs, the goals.
pub fn json(page: &Page) -> serde_json::Value {
    let one = |m: &Matrix| {
        serde_json::json!({
            "connect_times": m.connect_times(),
            "pairs": m.pair_stats(),
            "matrix": m,
        })
    };
    serde_json::json!({
        "command": page.command,
        "generated_at": page.when,
        "load": page.load,
        "runs": page.matrices.iter().map(one).collect::<Vec<_>>(),
        "hard_pairs": page.hard.iter().map(one).collect::<Vec<_>>(),
        "goals": goals(page),
    })
}

/// Runs that ended direct, as `n of m (p %)`.
fn direct_rate(m: &Matrix) -> String {
    let n = m.cells.iter().filter(|c| ended_direct(c)).count();
    let all = m.cells.len().max(1);
    format!(
        "{n} of {} ({:.0} %)",
        m.cells.len(),
        100.0 * n as f64 / all as f64
    )
}

/// The Markdown page (docs/NAT-MATRIX.md).
pub fn markdown(page: &Page) -> String {
    let mut s = String::new();
    let Some(first) = page.matrices.first().or(page.hard.first()) else {
        return s;
    };
    let _ = writeln!(s, "# NAT connection matrix\n");
    let _ = writeln!(
        s,
        "Two natkit peers, `natkit listen` behind the row's NAT and `natkit connect` behind the \
         column's, each in its own site of the NAT lab (`tests/lab`: network namespaces, veth \
         pairs and nftables NATs, natkit-stun and natkit-turn in an \"internet\" namespace), \
         connect with ICE and exchange {} bytes each way over QUIC, spread over a few seconds \
         and checked with SHA-256. A cell gives the path the session ended on (`+pm`: over a \
         port-mapped candidate) and the connect side's `connect_ms` (from having the peer's \
         description to a usable QUIC connection).\n",
        first.payload_bytes
    );
    let _ = writeln!(
        s,
        "Each matrix runs with port mapping off (no daemon on the NATs) and on (miniupnpd, \
         answering UPnP IGD, NAT-PMP and PCP, on every NAT it can open: not the public sites, \
         not the double NAT, whose carrier-grade NAT a home mapping cannot open, and not the \
         UDP-blocked network, whose block a mapping must not open). The \
         expected path is direct wherever UDP gets out of both sites and at least one side \
         maps endpoint-independently or has a port mapping: by plain hole punching, by natkit's \
         hard-NAT punch (a symmetric NAT, of any of the three allocators, facing an \
         endpoint-independent mapping whatever it filters), or over the port-mapped candidate \
         (two symmetric NATs, one of them mapping). It is `relay` where UDP is blocked (the peer \
         reaches the relay over TCP or TLS) and where both sides are symmetric without a port \
         mapping: there natkit tries no punch (both reports say `both_hard`), since neither \
         side has a port the other could aim at.\n"
    );
    let _ = writeln!(
        s,
        "Made by `{}` on {}, as root from the repository root (`cargo run -p natkit-lab -- \
         matrix ...`; `natkit-lab matrix --help` lists the options), load average {} (two \
         shared cores: other engineers build and run labs at the same time, so the times \
         carry that load). The lab's own test runs a representative subset: `cargo nextest \
         run -p natkit-lab --test matrix`.\n",
        page.command, page.when, page.load
    );
    let _ = writeln!(s, "## Goals (issue 13)\n");
    let _ = writeln!(
        s,
        "RTT is the profile's nominal peer-to-peer round trip (lan 1 ms, broadband 40 ms, \
         mobile 120 ms; unshaped about 0.1 ms).\n"
    );
    let _ = writeln!(s, "| goal | measured | met |\n|---|---|---|");
    for g in goals(page) {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            g.goal,
            g.figure,
            if g.met { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(
        s,
        "\n## Summary\n\nPercentiles by nearest rank over the runs that passed, by the path \
         they ended on; direct: runs that ended on a direct path.\n"
    );
    let _ = writeln!(
        s,
        "| profile | port mapping | passed | direct | direct p50 ms | direct p90 ms | direct runs | relayed p50 ms | relayed p90 ms | relayed runs |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for m in page.matrices {
        let t = m.connect_times();
        let cols = |x: Option<TimeStats>| {
            x.map_or("- | - | 0".to_string(), |x| {
                format!("{:.1} | {:.1} | {}", x.p50_ms, x.p90_ms, x.n)
            })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} of {} | {} | {} | {} |",
            m.profile,
            m.port_mapping,
            m.cells.iter().filter(|c| c.ok).count(),
            m.cells.len(),
            direct_rate(m),
            cols(t.direct),
            cols(t.relayed)
        );
    }
    let _ = writeln!(
        s,
        "\nThe NATs (Linux nftables; every router but `open`, the unfiltered baseline, drops \
         unsolicited inbound traffic):\n"
    );
    for k in &first.kinds {
        let _ = writeln!(s, "- `{k}`: {}", k.describe());
    }
    for m in page.hard {
        let reps = m.pair_stats().iter().map(|p| p.runs).max().unwrap_or(0);
        let _ = writeln!(
            s,
            "\n## Hard pairs, {reps} runs each: profile `{}`, port mapping `{}`\n",
            m.profile, m.port_mapping
        );
        let _ = writeln!(
            s,
            "The pairs plain hole punching cannot connect though UDP gets out (a symmetric \
             side facing address-and-port-dependent filtering or another symmetric NAT), \
             their runs interleaved. Direct here is natkit's punch or a port mapping.\n"
        );
        m.markdown_section(&mut s, false);
    }
    for m in page.matrices {
        let _ = writeln!(
            s,
            "\n## Profile `{}`, port mapping `{}`\n",
            m.profile, m.port_mapping
        );
        m.markdown_section(&mut s, true);
    }
    s
}
