//! The one spelling of durations on every natkit flag: `250ms`, `5s`,
//! `1.5s`, `2m`, `1h`, `7d`, or a bare number of seconds.

use std::time::Duration;

/// The longest duration any flag takes (a century, for credentials'
/// lifetimes); each flag may accept less.
const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parse a duration such as `5s`, `250ms`, `2m`, `1h`, `1d` or a bare
/// number of seconds (fractions allowed).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 5s, 250ms, 2m, 1h"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86_400.0,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX.as_secs_f64() {
        return Err(format!("invalid duration {s:?} (at most 100 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`parse`], and above zero.
pub fn positive(s: &str) -> Result<Duration, String> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be above zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let ms = Duration::from_millis;
        for (s, want) in [
            ("5s", ms(5000)),
            ("5", ms(5000)),
            ("1.5s", ms(1500)),
            ("250ms", ms(250)),
            ("2m", ms(120_000)),
            ("2min", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("1d", ms(86_400_000)),
            (" 30 ", ms(30_000)),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
        for bad in ["", "s", "5x", "-1s", "1e3", "1..2s", "36600d"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(positive("0s").is_err());
        assert_eq!(positive("1ms"), Ok(ms(1)));
    }
}
