//! A server's keys, each defined once: [`settings!`](crate::settings) turns a table of typed
//! fields into a struct, the [`Key`]s that describe them (flag, environment variable, TOML
//! key, default, documentation) and the code that resolves them from the [`Sources`]. A
//! [`Schema`] puts a server's [`Settings`] together under its environment prefix, and from it
//! come the command line (clap), the file's list of known keys, and the reference table the
//! README shows.

use clap::builder::ValueParser;
use clap::{Arg, ArgAction, Command};

use super::sources::Sources;
use super::value::{Setting, Shape};
use super::ConfigError;

/// A key's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// None: the key is off, empty, or (for a plain value) required.
    None,
    /// This text, read as a flag's value would be (a list's items separated by commas).
    Text(&'static str),
    /// Computed when the configuration resolves, or worked out by the server from other keys;
    /// the text says what it is ("number of cores").
    Described(&'static str),
}

/// One key, as the sources and the documentation see it.
#[derive(Debug, Clone)]
pub struct Key {
    /// The Rust field (`max_channels`); also the clap argument id.
    pub field: &'static str,
    /// The TOML key (`max-channels`).
    pub name: String,
    /// The long flag without its dashes (`max-channels`); the environment variable is the
    /// schema's prefix and this, in upper case with `_` (`NATKIT_TURN_MAX_CHANNELS`).
    pub flag: String,
    /// What a value looks like in `--help` (`N`, `IP:PORT`).
    pub value_name: &'static str,
    /// The documentation, one paragraph.
    pub doc: String,
    /// The default.
    pub default: KeyDefault,
    /// One value, a list or a table.
    pub shape: Shape,
    /// A list given as one flag or environment value may be comma-separated.
    pub commas: bool,
    /// Values are secrets: never echoed, hidden in `--help`.
    pub secret: bool,
}

impl Key {
    /// The key of field `field` holding a `T`; `doc` are the lines of its doc comment.
    pub fn new<T: Setting>(
        field: &'static str,
        value_name: &'static str,
        doc: &[&str],
        default: KeyDefault,
    ) -> Key {
        let name = field.replace('_', "-");
        Key {
            field,
            flag: name.clone(),
            name,
            value_name,
            doc: doc
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            default,
            shape: T::SHAPE,
            commas: T::COMMAS,
            secret: T::SECRET,
        }
    }

    /// A flag (and environment variable) named otherwise than the TOML key: `--user` for the
    /// `[users]` table.
    pub fn with_flag(mut self, flag: &str) -> Key {
        self.flag = flag.to_owned();
        self
    }

    /// The default as `--help` and the reference show it, if there is one.
    fn default_text(&self) -> Option<&'static str> {
        match self.default {
            KeyDefault::None => None,
            KeyDefault::Text(t) | KeyDefault::Described(t) => Some(t),
        }
    }
}

/// A group of keys defined with [`settings!`](crate::settings).
pub trait Settings: Sized {
    /// The keys, in the order they are documented.
    fn keys() -> Vec<Key>;
    /// Each key from the highest source that sets it: flag, environment, file, default.
    fn resolve(sources: &Sources<'_>) -> Result<Self, ConfigError>;
}

/// Arguments of the command line that are not keys.
pub(crate) const CONFIG: &str = "config";
pub(crate) const CHECK_CONFIG: &str = "check-config";
pub(crate) const PRINT_REFERENCE: &str = "print-config-reference";

/// A server's whole configuration interface: its name, its environment prefix and its keys.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The binary's name (`natkit-turn`).
    pub bin: &'static str,
    version: &'static str,
    about: &'static str,
    /// Environment variables are this, `_`, and the flag (`NATKIT_TURN`).
    pub env_prefix: &'static str,
    keys: Vec<Key>,
    /// The block `--help` ends with ([`Schema::examples`]).
    examples: Option<&'static str>,
}

impl Schema {
    /// An empty schema; add keys with [`Schema::with`].
    pub fn new(
        bin: &'static str,
        version: &'static str,
        about: &'static str,
        env_prefix: &'static str,
    ) -> Schema {
        Schema {
            bin,
            version,
            about,
            env_prefix,
            keys: Vec::new(),
            examples: None,
        }
    }

    /// The examples `--help` ends with (clap's `after_help`), as the CLI's commands have:
    /// `"Examples:\n"`, then one command line per line, indented by two spaces, each
    /// followed by `#` and what it does. Each server's tests run every line with
    /// `--check-config` (`natkit_testkit::bins::help_examples`), so they stay runnable.
    pub fn examples(mut self, text: &'static str) -> Schema {
        self.examples = Some(text);
        self
    }

    /// Adds the keys of `S`.
    ///
    /// # Panics
    /// If a key or flag is already there, or is one of the arguments that are not keys
    /// (`config`, `check-config`): a server defines each key once.
    pub fn with<S: Settings>(mut self) -> Schema {
        for k in S::keys() {
            assert!(
                ![CONFIG, CHECK_CONFIG, PRINT_REFERENCE].contains(&k.flag.as_str())
                    && self
                        .keys
                        .iter()
                        .all(|o| o.name != k.name && o.flag != k.flag && o.field != k.field),
                "config key {} defined twice",
                k.name
            );
            self.keys.push(k);
        }
        self
    }

    /// Sets the default of the key `name` for this server (shared keys whose sensible
    /// default differs between servers).
    ///
    /// # Panics
    /// If there is no such key.
    pub fn default_of(mut self, name: &str, text: &'static str) -> Schema {
        let key = self
            .keys
            .iter_mut()
            .find(|k| k.name == name)
            .unwrap_or_else(|| panic!("no config key {name}"));
        key.default = KeyDefault::Text(text);
        self
    }

    /// Every key, in documentation order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key of the Rust field `field`.
    pub fn key(&self, field: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.field == field)
    }

    /// The environment variable of `key` (`NATKIT_TURN_MAX_CHANNELS`).
    pub fn env_var(&self, key: &Key) -> String {
        self.env_name(&key.flag)
    }

    fn env_name(&self, flag: &str) -> String {
        format!(
            "{}_{}",
            self.env_prefix,
            flag.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The command line: `--config`, `--check-config`, and a flag with its environment
    /// variable for every key. Values stay text here; [`Sources`] reads them, so a bad value
    /// is reported like one from the file, naming the key and where it came from.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin)
            .version(self.version)
            .about(self.about)
            .arg(
                Arg::new(CONFIG)
                    .long(CONFIG)
                    .env(self.env_name(CONFIG))
                    .value_name("PATH")
                    .value_parser(ValueParser::os_string())
                    .help("TOML config file; flags and environment variables override its keys"),
            )
            .arg(
                Arg::new(CHECK_CONFIG)
                    .long(CHECK_CONFIG)
                    .action(ArgAction::SetTrue)
                    .help("Validate the configuration (loading the TLS files) and exit without serving"),
            )
            .arg(
                Arg::new(PRINT_REFERENCE)
                    .long(PRINT_REFERENCE)
                    .action(ArgAction::SetTrue)
                    .hide(true)
                    .help("Print the configuration reference (Markdown) and exit"),
            );
        if let Some(text) = self.examples {
            cmd = cmd.after_help(text);
        }
        for k in &self.keys {
            let help = match k.default_text() {
                Some(d) => format!("{} [default: {d}]", k.doc),
                None => k.doc.clone(),
            };
            let mut arg = Arg::new(k.field)
                .long(k.flag.clone())
                .env(self.env_var(k))
                .value_name(k.value_name)
                .value_parser(ValueParser::string())
                .hide_env_values(k.secret)
                .help(help);
            arg = match k.shape {
                Shape::One => arg.action(ArgAction::Set),
                Shape::List | Shape::Table => arg.action(ArgAction::Append),
            };
            if k.shape != Shape::One && k.commas {
                arg = arg.value_delimiter(',');
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    /// The configuration reference as a Markdown table, one row per key: the README's
    /// tables are this text (a test in each server compares them).
    pub fn reference(&self) -> String {
        let mut s = String::from(
            "| TOML key | flag | environment | default | what |\n|---|---|---|---|---|\n",
        );
        for k in &self.keys {
            let (toml, flag, env) = match (k.shape, k.commas) {
                (Shape::One, _) => (format!("`{}`", k.name), "", ""),
                (Shape::List, true) => (
                    format!("`{}` (list)", k.name),
                    " (repeatable)",
                    " (comma-separated)",
                ),
                (Shape::List, false) => (
                    format!("`{}` (list)", k.name),
                    " (repeatable)",
                    " (one value)",
                ),
                (Shape::Table, _) => (
                    format!("`[{}]` (table)", k.name),
                    " (repeatable)",
                    " (one value)",
                ),
            };
            let default = match k.default {
                KeyDefault::None => "none".to_owned(),
                KeyDefault::Text(t) => format!("`{t}`"),
                KeyDefault::Described(t) => t.to_owned(),
            };
            let cells = [
                toml,
                format!("`--{} {}`{flag}", k.flag, k.value_name),
                format!("`{}`{env}", self.env_var(k)),
                default,
                k.doc.clone(),
            ];
            s.push('|');
            for c in cells {
                s.push(' ');
                s.push_str(&c.replace('|', "\\|"));
                s.push_str(" |");
            }
            s.push('\n');
        }
        s
    }

    /// The reference table inside `doc` (the README), between the lines
    /// `<!-- BIN --print-config-reference -->` and `<!-- end BIN --print-config-reference -->`;
    /// `None` without them. Each server's tests compare it with [`Schema::reference`].
    pub fn reference_in<'d>(&self, doc: &'d str) -> Option<&'d str> {
        let start = format!("<!-- {} --print-config-reference -->\n", self.bin);
        let end = format!("<!-- end {} --print-config-reference -->", self.bin);
        let from = doc.find(&start)? + start.len();
        let len = doc[from..].find(&end)?;
        Some(&doc[from..from + len])
    }

    /// What is wrong with the reference table in `doc` (the README): `None` when it is
    /// [`Schema::reference`], else what to do about it.
    pub fn stale_reference(&self, doc: &str) -> Option<String> {
        let want = self.reference();
        let fix = format!(
            "replace it with the output of `cargo run -p {bin} -- --print-config-reference`",
            bin = self.bin
        );
        match self.reference_in(doc) {
            Some(have) if have == want => None,
            Some(_) => Some(format!("{}'s configuration table is stale: {fix}", self.bin)),
            None => Some(format!(
                "no {}'s configuration table between `<!-- {0} --print-config-reference -->` and `<!-- end {0} --print-config-reference -->`: {fix}",
                self.bin
            )),
        }
    }
}

/// Defines a group of configuration keys once: each field's doc comment, type, value name
/// and default yield its flag, environment variable, TOML key, `--help` line and reference
/// row, and the resolved struct itself.
///
/// ```
/// use std::net::SocketAddr;
/// use std::time::Duration;
///
/// natkit_runtime::settings! {
///     /// An example server's own keys.
///     pub struct Example {
///         /// Seconds a nonce stays fresh.
///         nonce_ttl: Duration ["SECS"] = "600";
///         /// Where to send reports (repeatable).
///         report_to: Vec<SocketAddr> ["IP:PORT"] = _;
///         /// Static user (repeatable). In the file: a `[users]` table.
///         users: Option<String> ["NAME:PASS", flag = "user"] = _;
///         /// Worker threads.
///         workers: usize ["N"] = (2 + 2, "four");
///         /// Where relays bind.
///         relay_ip: Option<std::net::IpAddr> ["IP"] = (_, "the listen address");
///     }
/// }
/// let schema = natkit_runtime::config::Schema::new("example", "1", "An example", "EXAMPLE")
///     .with::<Example>();
/// let cli = schema.try_parse_from(["example", "--nonce-ttl", "60"]).unwrap();
/// let e = Example::resolve_from(&cli).unwrap();
/// assert_eq!((e.nonce_ttl, e.workers), (Duration::from_secs(60), 4));
/// ```
///
/// The default is `"text"` (read as a flag's value), `_` (none: the key is off or empty),
/// `(expression, "description")` (computed) or `(_, "description")` (worked out by the server
/// from other keys; the key itself is empty).
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty [$value_name:literal $(, flag = $flag:literal)?] = $default:tt;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl $crate::config::Settings for $name {
            fn keys() -> ::std::vec::Vec<$crate::config::Key> {
                ::std::vec![$(
                    $crate::config::Key::new::<$ty>(
                        ::core::stringify!($field),
                        $value_name,
                        &[$($doc),*],
                        $crate::__settings_default!($default),
                    )$(.with_flag($flag))?
                ),*]
            }

            fn resolve(
                sources: &$crate::config::Sources<'_>,
            ) -> ::core::result::Result<Self, $crate::config::ConfigError> {
                ::core::result::Result::Ok(Self {$(
                    $field: sources.get::<$ty>(
                        ::core::stringify!($field),
                        $crate::__settings_computed!($default),
                    )?,
                )*})
            }
        }

        impl $name {
            /// Reads the config file the command line names and resolves these keys alone.
            #[allow(dead_code)]
            pub fn resolve_from(
                cli: &$crate::config::CommandLine,
            ) -> ::core::result::Result<Self, $crate::config::ConfigError> {
                <Self as $crate::config::Settings>::resolve(&cli.sources()?)
            }
        }
    };
}

/// The [`KeyDefault`] of a [`settings!`] default.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_default {
    (_) => {
        $crate::config::KeyDefault::None
    };
    ($text:literal) => {
        $crate::config::KeyDefault::Text($text)
    };
    ((_, $doc:literal)) => {
        $crate::config::KeyDefault::Described($doc)
    };
    (($e:expr, $doc:literal)) => {
        $crate::config::KeyDefault::Described($doc)
    };
}

/// The computed default of a [`settings!`] default, if it has one.
#[doc(hidden)]
#[macro_export]
macro_rules! __settings_computed {
    ((_, $doc:literal)) => {
        || ::core::option::Option::None
    };
    (($e:expr, $doc:literal)) => {
        || ::core::option::Option::Some($e)
    };
    ($other:tt) => {
        || ::core::option::Option::None
    };
}
