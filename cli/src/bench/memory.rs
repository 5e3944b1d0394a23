//! A server's memory as Linux accounts it, read from /proc: the user-space
//! memory a relay spends per allocation is the growth of its private
//! anonymous memory (heap, thread stacks in use) while allocations are made.
//! Kernel socket buffers are not in these figures.

use serde::Serialize;

/// Memory figures of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemorySample {
    /// Resident set size (`Rss` of smaps_rollup, else `VmRSS` of status).
    pub rss_kib: u64,
    /// Private dirty pages (`Private_Dirty`), 0 when smaps_rollup is absent.
    pub private_dirty_kib: u64,
    /// Anonymous memory (`Anonymous`; `RssAnon` of status as a fallback).
    pub anonymous_kib: u64,
}

/// The value in kB of the first line `key: <n> kB` of a /proc file.
pub fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let v = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(v),
            Some(_) => None,
        }
    })
}

/// Parse /proc/PID/smaps_rollup (preferred) or /proc/PID/status text.
pub fn parse_sample(smaps_rollup: Option<&str>, status: &str) -> Option<MemorySample> {
    if let Some(s) = smaps_rollup {
        if let (Some(rss), Some(anon)) = (parse_kib(s, "Rss"), parse_kib(s, "Anonymous")) {
            return Some(MemorySample {
                rss_kib: rss,
                private_dirty_kib: parse_kib(s, "Private_Dirty").unwrap_or(0),
                anonymous_kib: anon,
            });
        }
    }
    Some(MemorySample {
        rss_kib: parse_kib(status, "VmRSS")?,
        private_dirty_kib: 0,
        anonymous_kib: parse_kib(status, "RssAnon")?,
    })
}

/// Sample process `pid` now.
pub fn sample(pid: u32) -> anyhow::Result<MemorySample> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is --server-pid right?)"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok();
    parse_sample(rollup.as_deref(), &status)
        .with_context(|| format!("no VmRSS/RssAnon in /proc/{pid}/status"))
}

/// Growth between two samples, per item, in bytes (negative when memory
/// was given back).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerItem {
    /// Resident set growth per item.
    pub rss_bytes: f64,
    /// Private dirty growth per item.
    pub private_dirty_bytes: f64,
    /// Anonymous memory growth per item: the user-space cost.
    pub anonymous_bytes: f64,
}

/// (after - before) / items, in bytes.
pub fn per_item(before: &MemorySample, after: &MemorySample, items: usize) -> PerItem {
    let n = items.max(1) as f64;
    let d = |a: u64, b: u64| ((a as f64 - b as f64) * 1024.0 / n).round();
    PerItem {
        rss_bytes: d(after.rss_kib, before.rss_kib),
        private_dirty_bytes: d(after.private_dirty_kib, before.private_dirty_kib),
        anonymous_bytes: d(after.anonymous_kib, before.anonymous_kib),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0c0a4e000-7ffd5e5f5000 ---p 00000000 00:00 0   [rollup]\n\
        Rss:               12340 kB\nPss:               11000 kB\n\
        Private_Dirty:      9000 kB\nAnonymous:          8800 kB\nSwap: 0 kB\n";
    const STATUS: &str = "Name:\tnatkit-turn\nVmRSS:\t   12000 kB\nRssAnon:\t    8000 kB\n";

    #[test]
    fn parses_rollup_then_status() {
        assert_eq!(parse_kib(ROLLUP, "Rss"), Some(12_340));
        assert_eq!(parse_kib(ROLLUP, "Private_Dirty"), Some(9_000));
        // A key is matched whole: "Rss" is not "RssAnon".
        assert_eq!(parse_kib(STATUS, "Rss"), None);
        assert_eq!(parse_kib(STATUS, "VmRSS"), Some(12_000));
        assert_eq!(parse_kib("Rss: x kB", "Rss"), None);
        assert_eq!(parse_kib("Rss: 4 MB", "Rss"), None);
        assert_eq!(
            parse_sample(Some(ROLLUP), STATUS),
            Some(MemorySample {
                rss_kib: 12_340,
                private_dirty_kib: 9_000,
                anonymous_kib: 8_800
            })
        );
        assert_eq!(
            parse_sample(None, STATUS),
            Some(MemorySample {
                rss_kib: 12_000,
                private_dirty_kib: 0,
                anonymous_kib: 8_000
            })
        );
        assert_eq!(parse_sample(Some("garbage"), "nothing"), None);
    }

    #[test]
    fn per_item_growth() {
        let a = MemorySample {
            rss_kib: 1_000,
            private_dirty_kib: 500,
            anonymous_kib: 400,
        };
        let b = MemorySample {
            rss_kib: 11_000,
            private_dirty_kib: 5_500,
            anonymous_kib: 300,
        };
        let p = per_item(&a, &b, 10_000);
        assert_eq!(p.rss_bytes, 1024.0);
        assert_eq!(p.private_dirty_bytes, 512.0);
        assert_eq!(p.anonymous_bytes, -10.0);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.anonymous_kib > 0, "{s:?}");
    }
}
