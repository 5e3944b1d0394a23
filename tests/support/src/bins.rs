//! Binaries of the workspace, run by tests of other crates.
//!
//! Cargo builds only the tested package's binaries for its tests
//! (`CARGO_BIN_EXE_<name>`), so a test that runs another crate's binary
//! finds it in the same target directory, and builds it or says how when it
//! is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The target directory (`target/<profile>`) holding the running test or
/// bench executable (`target/<profile>/deps/<name>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf()
}

/// Where a workspace binary is looked for, and what happens when it is not
/// there.
#[derive(Debug, Clone)]
pub struct WorkspaceBin {
    package: String,
    bin: String,
    env: Option<String>,
    dir: Option<PathBuf>,
    build: bool,
}

impl WorkspaceBin {
    /// Binary `bin` of package `package`, looked for in [`target_dir`];
    /// a missing binary is an error (see [`WorkspaceBin::build_if_missing`]).
    pub fn new(package: &str, bin: &str) -> WorkspaceBin {
        WorkspaceBin {
            package: package.to_owned(),
            bin: bin.to_owned(),
            env: None,
            dir: None,
            build: false,
        }
    }

    /// An environment variable that, when set, names the binary to use
    /// instead (e.g. `NATKIT_TURN_BIN`).
    pub fn env_override(mut self, var: &str) -> WorkspaceBin {
        self.env = Some(var.to_owned());
        self
    }

    /// Look in the directory of `sibling` (e.g. `env!("CARGO_BIN_EXE_natkit")`)
    /// instead of [`target_dir`].
    pub fn next_to(mut self, sibling: impl AsRef<Path>) -> WorkspaceBin {
        self.dir = sibling.as_ref().parent().map(Path::to_path_buf);
        self
    }

    /// Build it with `cargo build -p <package> --bin <bin>` when missing,
    /// for the profile of the target directory (so that a lone
    /// `cargo test -p <crate>` or `cargo bench` works).
    pub fn build_if_missing(mut self) -> WorkspaceBin {
        self.build = true;
        self
    }

    /// The binary's path.
    ///
    /// # Panics
    /// When it is missing (and not built, or the build failed).
    pub fn path(&self) -> PathBuf {
        if let Some(p) = self.env.as_deref().and_then(std::env::var_os) {
            return PathBuf::from(p);
        }
        let dir = self.dir.clone().unwrap_or_else(target_dir);
        let bin = dir.join(&self.bin);
        if !bin.is_file() && self.build {
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "-p", &self.package, "--bin", &self.bin]);
            // The directory is named after the profile ("debug" is "dev").
            match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    cargo.arg("--release");
                }
                Some(profile) => {
                    cargo.args(["--profile", profile]);
                }
            }
            let st = cargo.status().expect("run cargo build");
            assert!(st.success(), "cargo build -p {} failed", self.package);
        }
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build -p {}` first (or `cargo test` at the workspace \
             root){}",
            bin.display(),
            self.package,
            self.env
                .as_deref()
                .map(|v| format!(", or set {v}"))
                .unwrap_or_default()
        );
        bin
    }
}

/// natkit-turn's binary: `NATKIT_TURN_BIN`, else in [`target_dir`], built
/// when missing.
pub fn natkit_turn() -> PathBuf {
    WorkspaceBin::new("natkit-turn", "natkit-turn")
        .env_override("NATKIT_TURN_BIN")
        .build_if_missing()
        .path()
}

/// Runs `bin --check-config <args>` (a server's configuration check) and
/// returns its output.
pub fn check_config(bin: impl AsRef<Path>, args: &[&str]) -> Output {
    let bin = bin.as_ref();
    Command::new(bin)
        .arg("--check-config")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {} --check-config: {e}", bin.display()))
}

/// Runs `bin --check-config <args>`, asserts that the configuration is
/// refused (exit status 2, stderr starting `<name>: configuration error: `,
/// where `<name>` is the binary's file name) and returns stderr.
pub fn config_refused(bin: impl AsRef<Path>, args: &[&str]) -> String {
    let bin = bin.as_ref();
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let out = check_config(bin, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?} accepted: {err}");
    assert!(
        err.starts_with(&format!("{name}: configuration error: ")),
        "{err}"
    );
    err
}

/// natkit-turn's binary for tests of a crate with binaries of its own:
/// `NATKIT_TURN_BIN`, else next to `sibling` (e.g.
/// `env!("CARGO_BIN_EXE_natkit")`: same target directory and profile, where
/// `cargo test` at the workspace root builds every member's binaries).
/// Never built from here: a missing binary says how to get it.
pub fn natkit_turn_next_to(sibling: impl AsRef<Path>) -> PathBuf {
    WorkspaceBin::new("natkit-turn", "natkit-turn")
        .env_override("NATKIT_TURN_BIN")
        .next_to(sibling)
        .path()
}

/// The example command lines at the end of `bin --help` (the block after
/// `Examples:`, see `natkit_runtime::config::Schema::examples`): each line
/// that runs `bin`, split into words (the examples use no quotes), without
/// its `# comment`. Leading `NAME=value` words are environment variables.
///
/// # Panics
/// When `--help` fails or has no examples.
pub fn help_examples(bin: impl AsRef<Path>) -> Vec<Vec<String>> {
    let bin = bin.as_ref();
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {} --help: {e}", bin.display()));
    assert!(out.status.success(), "{name} --help failed");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let block = help
        .split_once("\nExamples:\n")
        .unwrap_or_else(|| panic!("{name} --help has no examples:\n{help}"))
        .1;
    let lines: Vec<Vec<String>> = block
        .lines()
        .map(|l| l.split_once(" #").map_or(l, |(cmd, _)| cmd))
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| {
            w.iter()
                .find(|w| !w.contains('='))
                .is_some_and(|w| *w == name)
        })
        .collect();
    assert!(!lines.is_empty(), "{name} --help: no example runs {name}");
    lines
}

/// Runs every example of `bin --help` ([`help_examples`]) in `dir`, where
/// the files they name must be, with `--check-config` (see
/// [`check_example`]), and asserts that each passes; returns how many ran.
pub fn check_help_examples(bin: impl AsRef<Path>, dir: &Path) -> usize {
    let bin = bin.as_ref();
    let examples = help_examples(bin);
    for ex in &examples {
        let out = check_example(bin, ex, dir);
        assert!(
            out.status.success(),
            "{ex:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    examples.len()
}

/// Runs one example of [`help_examples`] with `--check-config` (added if
/// missing), in
/// `dir` (where the files it names must be), and returns its output.
pub fn check_example(bin: impl AsRef<Path>, example: &[String], dir: &Path) -> Output {
    let bin = bin.as_ref();
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir);
    let mut words = example.iter();
    for w in words.by_ref() {
        match w.split_once('=') {
            Some((var, value)) if !w.starts_with('-') => {
                cmd.env(var, value);
            }
            _ => break,
        }
    }
    let words: Vec<&String> = words.collect();
    cmd.args(&words);
    // An example of --check-config itself has it already.
    if !words.iter().any(|w| *w == "--check-config") {
        cmd.arg("--check-config");
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("run {} --check-config: {e}", bin.display()))
}
