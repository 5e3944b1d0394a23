//! Wall-clock times as RFC 3339 text (UTC), for records and tokens that
//! people and log pipelines read. No calendar crate: the proleptic
//! Gregorian date of a Unix day is a few lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds as an RFC 3339 UTC time, e.g. `2026-11-25T13:36:11Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A wall-clock time as RFC 3339 UTC with milliseconds, e.g.
/// `2026-11-25T13:36:11.042Z`; times before 1970 print as the epoch.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = rfc3339(since.as_secs());
    s.pop();
    s.push_str(&format!(".{:03}Z", since.subsec_millis()));
    s
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(1_764_081_371), "2025-11-25T14:36:11Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
        // Consecutive days around a year end.
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_735_689_600), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn millis_are_kept() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_081_371_042);
        assert_eq!(rfc3339_millis(t), "2025-11-25T14:36:11.042Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
    }
}
