//! Scratch directories for tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Numbers the directories of one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system's temporary directory, removed with
/// everything in it on drop (also when the test panics).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<tmp>/<name>-<pid>-<n>`: unique per process (PID) and per call
    /// (counter). A leftover of a killed earlier run with the same PID is
    /// removed first.
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("create temporary directory {}: {e}", p.display()));
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to the file `name` inside the directory and returns its path as text
    /// (for a command line): config files of tests.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p.to_str().expect("a UTF-8 temporary path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dirs_differ_and_are_removed_on_drop() {
        let a = TempDir::new("natkit-testkit");
        let b = TempDir::new("natkit-testkit");
        assert_ne!(a.path(), b.path());
        let f = a.write("f", "x");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
        assert!(b.path().is_dir());
    }
}
