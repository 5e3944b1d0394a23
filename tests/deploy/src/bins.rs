//! The workspace's binaries, as the build that made this test built them.
//!
//! The test executable is `target/<profile>/deps/<name>-<hash>`; the
//! binaries are in `target/<profile>/`. `cargo nextest run --workspace`
//! (the README test command) builds them before any test runs. A lone
//! `cargo test -p natkit-deploy-tests` does not, so when one is missing the
//! first test to ask builds them with `cargo build --bins` (bounded in
//! time).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run_with_timeout;

/// Longest the fallback build may take (a cold debug build of the three
/// binaries takes a few minutes on 2 cores).
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// The binaries deploy/ packages and the tests drive.
pub const NAMES: [&str; 3] = ["natkit-stun", "natkit-turn", "natkit"];

/// `target/<profile>/`, with natkit-stun, natkit-turn and natkit in it.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("test executable has a directory");
        // target/<profile>/deps/x -> target/<profile>
        let dir = if deps.file_name().is_some_and(|n| n == "deps") {
            deps.parent().expect("deps has a parent").to_path_buf()
        } else {
            deps.to_path_buf()
        };
        if NAMES.iter().any(|n| !dir.join(n).is_file()) {
            build(&dir);
        }
        for n in NAMES {
            assert!(dir.join(n).is_file(), "{n} missing in {}", dir.display());
        }
        dir
    })
}

/// The path of one binary (see [`NAMES`]).
pub fn path(name: &str) -> PathBuf {
    dir().join(name)
}

fn build(dir: &Path) {
    let target = dir.parent().expect("profile dir has a parent");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(crate::workspace_root())
        .args([
            "build",
            "--bins",
            "-p",
            "natkit-stun",
            "-p",
            "natkit-turn",
            "-p",
            "natkit-cli",
        ])
        .arg("--target-dir")
        .arg(target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    eprintln!("building the binaries the deploy checks need: {cmd:?}");
    let out = run_with_timeout(&mut cmd, BUILD_LIMIT);
    assert!(out.status.success(), "cargo build failed:\n{}", out.stderr);
}
