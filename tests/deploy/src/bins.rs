//! The workspace's binaries, as the build that made this test built them
//! (natkit-testkit's [`WorkspaceBin`]).
//!
//! The test executable is `target/<profile>/deps/<name>-<hash>`; the
//! binaries are in `target/<profile>/`. `cargo nextest run --workspace`
//! (the README test command) builds them before any test runs. A lone
//! `cargo test -p natkit-deploy-tests` does not, so a missing one is built
//! with `cargo build -p <package> --bin <name>` by the first test to ask.

use std::path::PathBuf;

use natkit_testkit::bins::{target_dir, WorkspaceBin};

/// The binaries deploy/ packages and the tests drive.
pub const NAMES: [&str; 3] = ["natkit-stun", "natkit-turn", "natkit"];

/// The package that builds binary `name` (see [`NAMES`]).
fn package(name: &str) -> &str {
    match name {
        "natkit" => "natkit-cli",
        server => server,
    }
}

/// `target/<profile>/`, with natkit-stun, natkit-turn and natkit in it
/// (built when missing).
pub fn dir() -> PathBuf {
    for n in NAMES {
        path(n);
    }
    target_dir()
}

/// The path of one binary (see [`NAMES`]), built when missing.
pub fn path(name: &str) -> PathBuf {
    WorkspaceBin::new(package(name), name)
        .build_if_missing()
        .path()
}
