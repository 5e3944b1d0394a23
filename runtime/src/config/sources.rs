//! Where a key's value comes from, highest first: a flag, its environment variable, the TOML
//! file (`--config`), the default. A list given as a flag or environment variable replaces
//! the file's list whole (lists are not merged).
//!
//! clap reads the command line and the environment ([`CommandLine`], once at start-up); the
//! file is read by [`CommandLine::sources`], each time it is called (a server calls it again
//! on SIGHUP). Every value, whatever its source, is read by the key's [`Setting`], so errors
//! look the same: the key, the value (never a secret), where it was set and what was
//! expected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::schema::{Key, KeyDefault, Schema, CHECK_CONFIG, CONFIG, PRINT_REFERENCE};
use super::value::{Setting, Shape};
use super::ConfigError;

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// On the command line, by this flag (`--max-channels`).
    Flag(String),
    /// By this environment variable.
    Env(String),
    /// In the config file, at this line (1-based).
    File {
        /// The file.
        path: PathBuf,
        /// The line of the value.
        line: usize,
    },
    /// The built-in default.
    Default,
}

impl Source {
    /// Set on the command line or in the environment: above the file.
    pub fn is_command_line(&self) -> bool {
        matches!(self, Source::Flag(_) | Source::Env(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "set by {flag}"),
            Source::Env(var) => write!(f, "set by {var}"),
            Source::File { path, line } => write!(f, "set in {}, line {line}", path.display()),
            Source::Default => f.write_str("the default"),
        }
    }
}

/// The command line and the environment, parsed against a [`Schema`].
pub struct CommandLine {
    schema: Schema,
    matches: ArgMatches,
}

impl Schema {
    /// Parses the process's arguments and environment. `--help`, `--version` and clap's errors
    /// print and exit, as clap does; so does `--print-config-reference` (the Markdown table of
    /// [`Schema::reference`]).
    pub fn parse(self) -> CommandLine {
        let matches = self.command().get_matches();
        if matches.get_flag(PRINT_REFERENCE) {
            print!("{}", self.reference());
            std::process::exit(0);
        }
        CommandLine {
            schema: self,
            matches,
        }
    }

    /// Parses `args` (the first one is the program's name) and the process's environment.
    pub fn try_parse_from<I, T>(self, args: I) -> Result<CommandLine, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = self.command().try_get_matches_from(args)?;
        Ok(CommandLine {
            schema: self,
            matches,
        })
    }
}

impl CommandLine {
    /// The schema it was parsed with.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// `--config`: the TOML file.
    pub fn config(&self) -> Option<&Path> {
        self.matches
            .get_one::<OsString>(CONFIG)
            .map(|p| Path::new(p.as_os_str()))
    }

    /// `--check-config`: validate and exit.
    pub fn check_config(&self) -> bool {
        self.matches.get_flag(CHECK_CONFIG)
    }

    /// Reads the config file (if one is named) and returns every source, ready to resolve
    /// keys from. Refuses a file it cannot read or parse, and keys the schema does not have
    /// (naming the closest one).
    pub fn sources(&self) -> Result<Sources<'_>, ConfigError> {
        let file = self.config().map(File::read).transpose()?;
        if let Some(f) = &file {
            for (name, v) in &f.values {
                if !self.schema.keys().iter().any(|k| &k.name == name) {
                    return Err(ConfigError::UnknownKey {
                        key: name.clone(),
                        at: f.source(v),
                        suggestion: closest(name, self.schema.keys()),
                    });
                }
            }
        }
        Ok(Sources { cli: self, file })
    }

    /// The flag or environment variable that set `key`, with its values.
    fn given(&self, key: &Key) -> Option<(Source, Vec<&str>)> {
        let source = match self.matches.value_source(key.field)? {
            ValueSource::CommandLine => Source::Flag(format!("--{}", key.flag)),
            ValueSource::EnvVariable => Source::Env(self.schema.env_var(key)),
            _ => return None,
        };
        let values = self.matches.get_many::<String>(key.field)?;
        Some((source, values.map(String::as_str).collect()))
    }
}

/// Names the config file and the keys given, with where they were given; never a value (some
/// are secrets).
impl fmt::Debug for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given: Vec<String> = self
            .schema
            .keys()
            .iter()
            .filter_map(|k| self.given(k).map(|(s, _)| format!("{}: {s}", k.name)))
            .collect();
        f.debug_struct("CommandLine")
            .field("bin", &self.schema.bin)
            .field("config", &self.config())
            .field("check_config", &self.check_config())
            .field("given", &given)
            .finish()
    }
}

/// The TOML file, with the line of every top-level value.
struct File {
    path: PathBuf,
    text: String,
    values: BTreeMap<String, toml::Spanned<toml::Value>>,
}

impl File {
    fn read(path: &Path) -> Result<File, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let values = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        Ok(File {
            path: path.to_owned(),
            text,
            values,
        })
    }

    fn source(&self, v: &toml::Spanned<toml::Value>) -> Source {
        let start = v.span().start.min(self.text.len());
        Source::File {
            path: self.path.clone(),
            line: self.text[..start].matches('\n').count() + 1,
        }
    }
}

/// The key closest to the unknown `name`, when one is close enough to be a likely typo.
fn closest(name: &str, keys: &[Key]) -> Option<String> {
    keys.iter()
        .map(|k| (strsim::jaro_winkler(name, &k.name), &k.name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.clone())
}

/// Every source of one resolution: the command line, the environment and the file as read
/// now.
pub struct Sources<'a> {
    cli: &'a CommandLine,
    file: Option<File>,
}

impl Sources<'_> {
    fn key(&self, field: &str) -> &Key {
        // The settings! macro resolves exactly the keys it declared; they are in the schema
        // when the server added them with Schema::with.
        self.cli.schema.key(field).unwrap_or_else(|| {
            panic!(
                "config key {field} is not in {}'s schema (Schema::with)",
                self.cli.schema.bin
            )
        })
    }

    /// The value of the key of field `field`, from the highest source that sets it, else
    /// `computed()`, else the key's unset value (none, empty); a plain value that nothing sets
    /// is [`ConfigError::Missing`].
    pub fn get<T: Setting>(
        &self,
        field: &str,
        computed: impl FnOnce() -> Option<T>,
    ) -> Result<T, ConfigError> {
        let key = self.key(field);
        let invalid = |name: &str, from: Source, e: super::value::Invalid| ConfigError::Invalid {
            key: name.to_owned(),
            from,
            value: e.value,
            reason: e.reason,
        };
        // The file's value is read even when a flag or env var overrides it: a broken file
        // is refused now, not when the override is dropped.
        let in_file = match &self.file {
            Some(f) => match f.values.get(&key.name) {
                Some(v) => Some(
                    T::from_toml(v.get_ref()).map_err(|e| invalid(&key.name, f.source(v), e))?,
                ),
                None => None,
            },
            None => None,
        };
        if let Some((from, texts)) = self.cli.given(key) {
            return T::from_texts(&texts).map_err(|e| invalid(&key.flag, from, e));
        }
        if let Some(v) = in_file {
            return Ok(v);
        }
        match key.default {
            KeyDefault::Text(text) => {
                let texts: Vec<&str> = if key.shape != Shape::One && key.commas {
                    text.split(',').collect()
                } else {
                    vec![text]
                };
                T::from_texts(&texts).map_err(|e| invalid(&key.name, Source::Default, e))
            }
            KeyDefault::None | KeyDefault::Described(_) => {
                computed()
                    .or_else(T::unset)
                    .ok_or_else(|| ConfigError::Missing {
                        key: key.name.clone(),
                        flag: format!("--{}", key.flag),
                    })
            }
        }
    }

    /// Where the key of field `field` is set, if anywhere (`None`: the default applies).
    pub fn origin(&self, field: &str) -> Option<Source> {
        let key = self.key(field);
        if let Some((from, _)) = self.cli.given(key) {
            return Some(from);
        }
        let f = self.file.as_ref()?;
        f.values.get(&key.name).map(|v| f.source(v))
    }

    /// A value of the key of field `field` that parsed but breaks a rule (a range, a
    /// relation to another key): the error names the key and where it was set.
    pub fn rule(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Rule {
            key: self.key(field).name.clone(),
            from: self.origin(field),
            reason: reason.into(),
        }
    }
}
