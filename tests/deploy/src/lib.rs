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
//! temporary directories ([`TempDir`]).
//!
//! Every fixed loopback port these tests use is in 21000-21999 (the
//! turn-relay tests use 12000-20449); each test file owns a block of 100
//! (see [`net::PortBlock`]).

pub mod bins;
pub mod net;
pub mod process;
pub mod relay;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

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

/// A temporary directory, removed (with everything in it) on drop.
pub struct TempDir(PathBuf);

static NEXT_TEMP: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// A new empty directory under the system's temp dir, named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "natkit-deploy-{tag}-{}-{}",
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
