//! # natkit-deploy-tests
//!
//! Checks of `deploy/` with the real tools (issue 8): `systemd-analyze` on the
//! units, `--check-config` on the example configs, podman on the
//! Containerfile, `kubectl kustomize` and `kubernetes-validate` on the
//! manifests, `promtool` and a real Prometheus on the rules and the
//! dashboard, and two relays sharing one REST secret.
//!
//! The checks are the integration tests in `tests/`; this library holds what
//! they share: where the built binaries are ([`bins`]), child processes that
//! die with the test ([`process`]), loopback ports and HTTP ([`net`]), and
//! temporary directories ([`TempDir`], natkit-testkit's).
//!
//! Every fixed loopback port these tests use is in 21000-21999 (the
//! turn-relay tests use 12000-20449); each test file owns a block of 100
//! (see [`net::PortBlock`]).

pub mod bins;
pub mod net;
pub mod process;
pub mod relay;

use std::path::{Path, PathBuf};

/// The workspace root (this crate is `tests/deploy`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/deploy sits two levels below the workspace root")
        .to_path_buf()
}

/// `deploy/` in the workspace.
pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// A temporary directory, removed (with everything in it) on drop. Name
/// them `natkit-deploy-<tag>` so a leftover says where it came from.
pub use natkit_testkit::TempDir;
