//! How one key's value is read: from the text of a flag or environment variable, and from a
//! TOML value. [`Value`] is one item (an address, a number); [`Setting`] is what a key holds:
//! one item, an optional item, or a list of them (a server may implement it for a shape of
//! its own, such as a table).
//!
//! The file is strict about types: `threads = "3"` is refused (a number is expected), as
//! serde would refuse it; only types that accept several forms say so (a size with a suffix
//! may be a string or an integer).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;

/// A value that was refused: what it was (as the user wrote it, or `None` for a secret, which
/// is never echoed) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The offending value, quoted as given (a TOML value as TOML), or `None` for a secret.
    pub value: Option<String>,
    /// What is wrong or what was expected: "expected IP:PORT", "out of range (0 to 65535)".
    pub reason: String,
}

impl Invalid {
    /// `text` (a flag or environment value) refused for `reason`; `secret` hides the text.
    pub fn text(text: &str, secret: bool, reason: impl Into<String>) -> Self {
        Invalid {
            value: (!secret).then(|| format!("{text:?}")),
            reason: reason.into(),
        }
    }

    /// A TOML value refused for `reason`; `secret` hides it.
    pub fn toml(v: &toml::Value, secret: bool, reason: impl Into<String>) -> Self {
        Invalid {
            value: (!secret).then(|| v.to_string()),
            reason: reason.into(),
        }
    }
}

/// One item of a key's value.
pub trait Value: Sized {
    /// What a valid value looks like, for error messages: "IP:PORT", "a whole number".
    const EXPECTED: &'static str;
    /// The value is a secret: errors never echo it, `--help` hides it when it comes from the
    /// environment.
    const SECRET: bool = false;
    /// A list of these may be given as one comma-separated flag or environment value. False
    /// for values that may contain commas themselves (passwords).
    const COMMAS: bool = true;

    /// From the text of a flag or environment variable. The error says what was expected; the
    /// caller adds the key, the value and where it came from.
    fn parse(text: &str) -> Result<Self, String>;

    /// From the config file. Default: a TOML string, read like a flag's text.
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Self::parse(s),
            other => Err(expected(&format!("a string ({})", Self::EXPECTED), other)),
        }
    }
}

/// "expected WHAT, found an integer".
pub fn expected(what: &str, found: &toml::Value) -> String {
    format!("expected {what}, found {}", toml_type(found))
}

/// The TOML type of `v`, with its article, for messages.
pub fn toml_type(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// How a key is written in the file, for the reference table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value (`key = value`).
    One,
    /// A list (`key = [a, b]`); as a flag, repeatable.
    List,
    /// A table (`[key]` with `name = value` lines); as a flag, repeatable `NAME:VALUE`.
    Table,
}

/// What a key holds, and how each source gives it.
pub trait Setting: Sized {
    /// How the key is written in the file; [`Shape::One`] takes one flag, the others several.
    const SHAPE: Shape;
    /// See [`Value::COMMAS`]; only for lists and tables.
    const COMMAS: bool;
    /// See [`Value::SECRET`].
    const SECRET: bool;

    /// From the flag's values (or the environment variable's, split at commas when
    /// [`Setting::COMMAS`]): exactly one for [`Shape::One`], one or more otherwise.
    fn from_texts(texts: &[&str]) -> Result<Self, Invalid>;

    /// From the file's value.
    fn from_toml(v: &toml::Value) -> Result<Self, Invalid>;

    /// The value when no source sets the key and it has no default: `None` means the key is
    /// required.
    fn unset() -> Option<Self>;
}

/// The first text of a one-value key (clap refuses a second one).
fn only<'a>(texts: &[&'a str]) -> &'a str {
    texts.first().copied().unwrap_or_default()
}

impl<T: Value> Setting for T {
    const SHAPE: Shape = Shape::One;
    const COMMAS: bool = T::COMMAS;
    const SECRET: bool = T::SECRET;

    fn from_texts(texts: &[&str]) -> Result<Self, Invalid> {
        let t = only(texts);
        T::parse(t).map_err(|r| Invalid::text(t, T::SECRET, r))
    }

    fn from_toml(v: &toml::Value) -> Result<Self, Invalid> {
        T::from_toml(v).map_err(|r| Invalid::toml(v, T::SECRET, r))
    }

    fn unset() -> Option<Self> {
        None
    }
}

impl<T: Value> Setting for Option<T> {
    const SHAPE: Shape = Shape::One;
    const COMMAS: bool = T::COMMAS;
    const SECRET: bool = T::SECRET;

    fn from_texts(texts: &[&str]) -> Result<Self, Invalid> {
        T::from_texts(texts).map(Some)
    }

    fn from_toml(v: &toml::Value) -> Result<Self, Invalid> {
        <T as Setting>::from_toml(v).map(Some)
    }

    fn unset() -> Option<Self> {
        Some(None)
    }
}

impl<T: Value> Setting for Vec<T> {
    const SHAPE: Shape = Shape::List;
    const COMMAS: bool = T::COMMAS;
    const SECRET: bool = T::SECRET;

    fn from_texts(texts: &[&str]) -> Result<Self, Invalid> {
        texts
            .iter()
            .map(|t| T::parse(t).map_err(|r| Invalid::text(t, T::SECRET, r)))
            .collect()
    }

    fn from_toml(v: &toml::Value) -> Result<Self, Invalid> {
        let toml::Value::Array(items) = v else {
            // "a sequence", as serde says it: operators may grep for it.
            return Err(Invalid::toml(
                v,
                T::SECRET,
                expected(
                    &format!("a sequence of {} (a TOML array: [..])", T::EXPECTED),
                    v,
                ),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                T::from_toml(item).map_err(|r| {
                    Invalid::toml(item, T::SECRET, format!("item {} of the list: {r}", i + 1))
                })
            })
            .collect()
    }

    fn unset() -> Option<Self> {
        Some(Vec::new())
    }
}

/// Whole numbers: decimal text, or a TOML integer, within the type's range.
macro_rules! whole_numbers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const EXPECTED: &'static str = "a whole number";

            fn parse(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| {
                    format!("expected a whole number from {} to {}", <$t>::MIN, <$t>::MAX)
                })
            }

            fn from_toml(v: &toml::Value) -> Result<Self, String> {
                match v {
                    toml::Value::Integer(i) => <$t>::try_from(*i).map_err(|_| {
                        format!("out of range ({} to {})", <$t>::MIN, <$t>::MAX)
                    }),
                    other => Err(expected(Self::EXPECTED, other)),
                }
            }
        }
    )*};
}
whole_numbers!(u16, u32, u64, usize);

/// Whole seconds (`--drain-grace 30`, `drain-grace = 30`).
impl Value for Duration {
    const EXPECTED: &'static str = "a whole number of seconds";

    fn parse(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("expected {}", Self::EXPECTED))
    }

    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(i) => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| "must not be negative".to_owned()),
            other => Err(expected(Self::EXPECTED, other)),
        }
    }
}

impl Value for bool {
    const EXPECTED: &'static str = "true or false";

    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("expected {}", Self::EXPECTED))
    }

    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(expected(Self::EXPECTED, other)),
        }
    }
}

impl Value for String {
    const EXPECTED: &'static str = "text";

    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl Value for PathBuf {
    const EXPECTED: &'static str = "a path";

    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("expected a path, found an empty string".into());
        }
        Ok(PathBuf::from(text))
    }
}

/// A network range: CIDR (`10.0.0.0/8`) or a bare IP (one address). Host bits set are
/// refused, since `10.0.0.1/8` more likely means a mistake than `10.0.0.0/8`.
impl Value for ipnet::IpNet {
    const EXPECTED: &'static str = "a CIDR range or IP address";

    fn parse(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ipnet::IpNet::from(ip));
        }
        let net: ipnet::IpNet = s
            .parse()
            .map_err(|_| format!("expected {}", Self::EXPECTED))?;
        if net.trunc() != net {
            return Err(format!("has host bits set; did you mean {}?", net.trunc()));
        }
        Ok(net)
    }
}

/// Values read with their `FromStr`: what a valid one looks like, and examples.
macro_rules! from_str_values {
    ($($t:ty => $expected:literal, $examples:literal;)*) => {$(
        impl Value for $t {
            const EXPECTED: &'static str = $expected;

            fn parse(text: &str) -> Result<Self, String> {
                text.trim()
                    .parse()
                    .map_err(|_| format!("expected {}{}", $expected, $examples))
            }
        }
    )*};
}
from_str_values! {
    SocketAddr => "IP:PORT", " (192.0.2.1:3478, [2001:db8::1]:3478)";
    IpAddr => "an IP address", " (192.0.2.1, 2001:db8::1)";
    LogFormat => "\"text\" or \"json\"", "";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_value(text: &str) -> toml::Value {
        let t: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
        t["v"].clone()
    }

    #[test]
    fn numbers_are_range_checked_and_typed() {
        assert_eq!(<u16 as Setting>::from_texts(&["3478"]), Ok(3478));
        let e = <u16 as Setting>::from_texts(&["65536"]).unwrap_err();
        assert_eq!(e.value.as_deref(), Some("\"65536\""));
        assert!(e.reason.contains("0 to 65535"), "{e:?}");
        assert_eq!(<u16 as Setting>::from_toml(&toml_value("80")), Ok(80));
        let e = <u16 as Setting>::from_toml(&toml_value("-1")).unwrap_err();
        assert_eq!(
            (e.value.as_deref(), e.reason.as_str()),
            (Some("-1"), "out of range (0 to 65535)")
        );
        let e = <usize as Setting>::from_toml(&toml_value("\"3\"")).unwrap_err();
        assert_eq!(e.reason, "expected a whole number, found a string");
        assert_eq!(
            <Duration as Setting>::from_toml(&toml_value("30")),
            Ok(Duration::from_secs(30))
        );
        assert!(<bool as Setting>::from_texts(&["yes"]).is_err());
        assert_eq!(
            <bool as Setting>::from_toml(&toml_value("false")),
            Ok(false)
        );
    }

    #[test]
    fn lists_name_the_bad_item_and_want_an_array() {
        let v = toml_value("[\"127.0.0.1:1\", \"nope\"]");
        let e = <Vec<SocketAddr> as Setting>::from_toml(&v).unwrap_err();
        assert_eq!(e.value.as_deref(), Some("\"nope\""));
        assert!(
            e.reason.starts_with("item 2 of the list: expected IP:PORT"),
            "{e:?}"
        );
        let e =
            <Vec<SocketAddr> as Setting>::from_toml(&toml_value("\"127.0.0.1:1\"")).unwrap_err();
        assert!(e.reason.contains("expected a sequence of IP:PORT"), "{e:?}");
        assert!(e.reason.ends_with("found a string"), "{e:?}");
        assert_eq!(
            <Vec<IpAddr> as Setting>::from_texts(&["192.0.2.1", "::1"])
                .unwrap()
                .len(),
            2
        );
        assert_eq!(<Vec<IpAddr> as Setting>::unset(), Some(Vec::new()));
        assert_eq!(<Option<IpAddr> as Setting>::unset(), Some(None));
        assert_eq!(<IpAddr as Setting>::unset(), None);
    }
}
