use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use natkit_testkit::TempDir;

use super::*;

/// Tests that parse read `NATKIT_RTTEST_*` variables; those that set some hold this lock, and
/// so does every parse.
static ENV: Mutex<()> = Mutex::new(());

/// A password: never echoed.
#[derive(Debug, Clone, PartialEq)]
struct Password(String);

impl Value for Password {
    const EXPECTED: &'static str = "a password";
    const SECRET: bool = true;
    const COMMAS: bool = false;

    fn parse(text: &str) -> Result<Self, String> {
        if text.len() < 4 {
            return Err("shorter than 4 characters".into());
        }
        Ok(Password(text.to_owned()))
    }
}

crate::settings! {
    /// A test server's own keys.
    struct Own {
        /// Most widgets.
        max_widgets: usize ["N"] = "7";
        /// Peers (repeatable).
        peer: Vec<SocketAddr> ["IP:PORT"] = _;
        /// Passwords (repeatable).
        password: Vec<Password> ["PASS"] = _;
        /// Half the threads.
        half: usize ["N"] = (21 * 2, "forty-two");
    }
}

fn schema() -> Schema {
    Schema::new("rttest", "0.0.0", "A test server", "NATKIT_RTTEST")
        .with::<Common>()
        .with::<Own>()
        .default_of("tcp-idle-timeout", "30")
}

fn cli(args: &[&str]) -> CommandLine {
    let mut v = vec!["rttest"];
    v.extend_from_slice(args);
    schema().try_parse_from(v).unwrap()
}

/// Parses with `env` set for the duration of the parse (clap reads the environment then).
fn cli_env(args: &[&str], env: &[(&str, &str)]) -> CommandLine {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let c = cli(args);
    for (k, _) in env {
        std::env::remove_var(k);
    }
    c
}

fn resolve(c: &CommandLine) -> Result<(Common, Own), ConfigError> {
    let s = c.sources()?;
    Ok((Common::resolve(&s)?, Own::resolve(&s)?))
}

/// The error and its causes, as anyhow's `{:#}` prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let (common, own) = resolve(&cli(&[])).unwrap();
    assert_eq!(common.listen, vec!["0.0.0.0:3478".parse().unwrap()]);
    assert!(common.tcp);
    assert_eq!(common.tcp_idle_timeout, Duration::from_secs(30));
    assert_eq!(common.max_tcp_connections, 10_000);
    assert!(common.threads >= 1);
    assert_eq!((own.max_widgets, own.half), (7, 42));
    assert!(own.peer.is_empty() && own.password.is_empty());
}

/// Flag > environment > file > default, for a value and for a list (a list from a higher
/// source replaces the lower one whole).
#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = TempDir::new("natkit-runtime-config-precedence");
    let file = dir.write(
        "p.toml",
        "max-widgets = 3\npeer = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nthreads = 5\n",
    );
    let env = [
        ("NATKIT_RTTEST_MAX_WIDGETS", "4"),
        ("NATKIT_RTTEST_PEER", "127.0.0.1:3"),
    ];
    let peers = |own: &Own| own.peer.iter().map(|p| p.port()).collect::<Vec<_>>();

    let (_, own) = resolve(&cli(&[])).unwrap();
    assert_eq!((own.max_widgets, peers(&own)), (7, vec![]));
    let (common, own) = resolve(&cli(&["--config", &file])).unwrap();
    assert_eq!((own.max_widgets, peers(&own)), (3, vec![1, 2]));
    assert_eq!(common.threads, 5);
    let (common, own) = resolve(&cli_env(&["--config", &file], &env)).unwrap();
    assert_eq!((own.max_widgets, peers(&own)), (4, vec![3]));
    // A key the environment does not set still comes from the file.
    assert_eq!(common.threads, 5);
    let c = cli_env(
        &[
            "--config",
            &file,
            "--max-widgets",
            "5",
            "--peer",
            "127.0.0.1:4,127.0.0.1:5",
        ],
        &env,
    );
    let (_, own) = resolve(&c).unwrap();
    assert_eq!((own.max_widgets, peers(&own)), (5, vec![4, 5]));
    // Where each value came from.
    let s = c.sources().unwrap();
    assert_eq!(
        s.origin("max_widgets"),
        Some(Source::Flag("--max-widgets".into()))
    );
    assert_eq!(
        s.origin("threads"),
        Some(Source::File {
            path: PathBuf::from(&file),
            line: 3
        })
    );
    assert_eq!(s.origin("half"), None);
    let c = cli_env(&[], &env);
    let s = c.sources().unwrap();
    assert_eq!(
        s.origin("peer"),
        Some(Source::Env("NATKIT_RTTEST_PEER".into()))
    );
    // The config file itself can come from the environment.
    let c = cli_env(&[], &[("NATKIT_RTTEST_CONFIG", &file)]);
    assert_eq!(c.config(), Some(Path::new(&file)));
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_the_closest_key() {
    let dir = TempDir::new("natkit-runtime-config-unknown");
    let file = dir.write("u.toml", "threads = 2\nmax-widget = 3\n");
    let e = resolve(&cli(&["--config", &file])).unwrap_err();
    let msg = chain(&e);
    assert!(
        msg.starts_with("unknown key `max-widget` (set in ") && msg.contains("u.toml, line 2"),
        "{msg}"
    );
    assert!(msg.ends_with("; did you mean `max-widgets`?"), "{msg}");
    // Nothing close: no guess.
    let file = dir.write("v.toml", "zzz = 1\n");
    let msg = chain(&resolve(&cli(&["--config", &file])).unwrap_err());
    assert!(
        msg.starts_with("unknown key `zzz`") && !msg.contains("did you mean"),
        "{msg}"
    );
}

/// A bad value names the key, the value, where it was set and what was expected; whatever
/// the source.
#[test]
fn bad_values_name_key_value_source_and_expectation() {
    let dir = TempDir::new("natkit-runtime-config-badvalue");
    let file = dir.write(
        "b.toml",
        "# comment\nlisten = [\"127.0.0.1:3478\", \"nope\"]\n",
    );
    let msg = chain(&resolve(&cli(&["--config", &file])).unwrap_err());
    assert!(
        msg.starts_with("listen: invalid value \"nope\" (set in ")
            && msg.contains("b.toml, line 2): item 2 of the list: expected IP:PORT"),
        "{msg}"
    );
    let file = dir.write("c.toml", "listen = \"127.0.0.1:3478\"\n");
    let msg = chain(&resolve(&cli(&["--config", &file])).unwrap_err());
    assert!(msg.contains("expected a sequence of IP:PORT"), "{msg}");
    let file = dir.write("d.toml", "\n\nthreads = \"3\"\n");
    let msg = chain(&resolve(&cli(&["--config", &file])).unwrap_err());
    assert!(
        msg.contains("threads: invalid value \"3\"")
            && msg.contains("line 3): expected a whole number, found a string"),
        "{msg}"
    );
    let msg = chain(&resolve(&cli(&["--max-widgets", "many"])).unwrap_err());
    assert_eq!(
        msg,
        format!(
            "max-widgets: invalid value \"many\" (set by --max-widgets): expected a whole number from 0 to {}",
            usize::MAX
        )
    );
    let msg = chain(&resolve(&cli_env(&[], &[("NATKIT_RTTEST_TCP", "maybe")])).unwrap_err());
    assert_eq!(
        msg,
        "tcp: invalid value \"maybe\" (set by NATKIT_RTTEST_TCP): expected true or false"
    );
}

#[test]
fn secrets_are_never_echoed() {
    let dir = TempDir::new("natkit-runtime-config-secret");
    let file = dir.write("s.toml", "password = [\"hunter2-long\", \"abc\"]\n");
    let msg = chain(&resolve(&cli(&["--config", &file])).unwrap_err());
    assert!(
        msg.starts_with("password: invalid value (set in ")
            && msg.ends_with("item 2 of the list: shorter than 4 characters"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2") && !msg.contains("abc"), "{msg}");
    // A secret list is not split at commas: a password may hold one.
    let c = cli(&["--password", "a,b,c,d", "--password", "xyz"]);
    let msg = chain(&resolve(&c).unwrap_err());
    assert!(
        msg.starts_with("password: invalid value (set by --password)"),
        "{msg}"
    );
    assert!(!msg.contains("xyz"), "{msg}");
    let (_, own) = resolve(&cli(&["--password", "a,b,c,d"])).unwrap();
    assert_eq!(own.password, vec![Password("a,b,c,d".into())]);
    // Debug shows which keys are given and where, never their values.
    let dbg = format!("{c:?}");
    assert!(dbg.contains("password: set by --password"), "{dbg}");
    assert!(!dbg.contains("xyz") && !dbg.contains("a,b"), "{dbg}");
}

#[test]
fn rules_name_where_the_value_was_set() {
    let dir = TempDir::new("natkit-runtime-config-rule");
    let file = dir.write("r.toml", "threads = 0\n");
    let c = cli(&["--config", &file]);
    let s = c.sources().unwrap();
    let e = Common::resolve(&s).unwrap().validate(&s).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("threads: 0 is out of range (1-256) (set in ")
            && msg.ends_with("r.toml, line 1)"),
        "{msg}"
    );
    let c = cli(&["--tls-listen", "127.0.0.1:5349"]);
    let s = c.sources().unwrap();
    let e = Common::resolve(&s).unwrap().validate(&s).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tls-listen: set without cert and key (or acme-domain): TLS needs a certificate (set by --tls-listen)"
    );
    let c = cli(&["--cert", "/c.pem", "--key", "/k.pem"]);
    let s = c.sources().unwrap();
    let tls = Common::resolve(&s).unwrap().validate(&s).unwrap();
    assert_eq!(tls, Some(("/c.pem".into(), "/k.pem".into())));
}

#[test]
fn a_missing_file_is_named() {
    let e = resolve(&cli(&["--config", "/nonexistent/natkit-runtime.toml"])).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    let msg = chain(&e);
    assert_eq!(msg.matches("natkit-runtime.toml").count(), 1, "{msg}");
    assert_eq!(msg.matches("No such file").count(), 1, "{msg}");
}

/// Each piece of the chain appears once: the file name in the error, the TOML message (with
/// its position) in the source.
#[test]
fn a_syntax_error_names_the_file_and_the_toml_error_once() {
    let dir = TempDir::new("natkit-runtime-config-syntax");
    let file = dir.write("once.toml", "listen = [\n");
    let e = resolve(&cli(&["--config", &file])).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }));
    let msg = chain(&e);
    assert_eq!(msg.matches("once.toml").count(), 1, "{msg}");
    assert_eq!(msg.matches("TOML parse error").count(), 1, "{msg}");
    assert!(msg.contains("line 1") || msg.contains("line 2"), "{msg}");
}

#[test]
fn the_reference_has_a_row_per_key_from_its_definition() {
    let r = schema().reference();
    let rows: Vec<&str> = r.lines().collect();
    assert_eq!(rows.len(), 2 + schema().keys().len());
    assert!(rows.contains(
        &"| `listen` (list) | `--listen IP:PORT` (repeatable) | `NATKIT_RTTEST_LISTEN` (comma-separated) | `0.0.0.0:3478` | Address for clients, over UDP and TCP (repeatable). |"
    ), "{r}");
    assert!(rows.contains(
        &"| `log-format` | `--log-format text\\|json` | `NATKIT_RTTEST_LOG_FORMAT` | `text` | Log format: text or json. |"
    ), "{r}");
    // The server's own default, and a described one.
    assert!(
        r.contains("| `NATKIT_RTTEST_TCP_IDLE_TIMEOUT` | `30` |"),
        "{r}"
    );
    assert!(
        r.contains("| `NATKIT_RTTEST_HALF` | forty-two | Half the threads. |"),
        "{r}"
    );
    assert!(
        r.contains("`NATKIT_RTTEST_PASSWORD` (one value) | none |"),
        "{r}"
    );
    // --help says the same.
    let help = schema().command().render_long_help().to_string();
    assert!(help.contains("Most widgets. [default: 7]"), "{help}");
    assert!(help.contains("NATKIT_RTTEST_MAX_WIDGETS"), "{help}");
}

#[test]
fn help_ends_with_the_examples_given() {
    let text = "Examples:\n  rttest --listen 127.0.0.1:3478   # loopback only";
    let cmd = schema().examples(text).command();
    for help in [
        cmd.clone().render_help().to_string(),
        cmd.clone().render_long_help().to_string(),
    ] {
        assert!(help.trim_end().ends_with(text), "{help}");
    }
    // Without examples, no empty block.
    let help = schema().command().render_long_help().to_string();
    assert!(!help.contains("Examples:"), "{help}");
}

/// A bad value in the file is refused even when a flag overrides it: dropping the flag later
/// must not turn up a broken file.
#[test]
fn a_bad_file_value_is_refused_under_a_flag_too() {
    let dir = TempDir::new("natkit-runtime-config-shadowed");
    let file = dir.write("s.toml", "max-widgets = \"many\"\n");
    let msg = chain(&resolve(&cli(&["--config", &file, "--max-widgets", "3"])).unwrap_err());
    assert!(
        msg.starts_with("max-widgets: invalid value \"many\" (set in "),
        "{msg}"
    );
}

#[test]
fn the_reference_is_found_between_its_markers() {
    let s = schema();
    let doc = format!(
        "# Config\n<!-- rttest --print-config-reference -->\n{}<!-- end rttest --print-config-reference -->\n",
        s.reference()
    );
    assert_eq!(s.reference_in(&doc), Some(s.reference().as_str()));
    assert_eq!(s.reference_in("no table here"), None);
    assert_eq!(s.stale_reference(&doc), None);
    let stale = doc.replace("Most widgets.", "Most gadgets.");
    assert!(s.stale_reference(&stale).unwrap().contains("is stale"));
    assert!(s.stale_reference("").unwrap().starts_with("no rttest's"));
}
