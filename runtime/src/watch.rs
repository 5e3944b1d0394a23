//! Noticing that files a server loaded (certificate, key, secrets) changed, so they are
//! loaded again without a signal: a Kubernetes Secret or cert-manager rotation then needs no
//! rollout.
//!
//! Polling, not inotify: a Kubernetes Secret volume replaces files by re-pointing the
//! `..data` symlink at a new directory, which an inotify watch on the file never sees (it
//! watches the old inode), and a watch on the directory needs re-arming after each swap.
//! Asking `stat` (which follows symlinks) every few seconds sees every form of replacement
//! (in place, rename over, symlink swap) for the price of one system call per file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies one version of a file without reading it: the file the path resolves to,
/// its size and its modification and change times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A set of files and the version of each seen last. A file that is missing counts as a
/// version of its own (its reappearance is a change).
#[derive(Debug, Default)]
pub struct FileWatch {
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl FileWatch {
    /// Watches `paths`, taking their current versions as seen.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut w = FileWatch::default();
        w.set_paths(paths);
        w
    }

    /// Watches `paths` from now on (the configuration named other files); files watched
    /// before keep the version seen last, new ones are taken as seen now.
    pub fn set_paths(&mut self, paths: impl IntoIterator<Item = PathBuf>) {
        let old = std::mem::take(&mut self.files);
        for p in paths {
            if self.files.iter().any(|(q, _)| *q == p) {
                continue;
            }
            let seen = match old.iter().find(|(q, _)| *q == p) {
                Some((_, s)) => *s,
                None => stamp(&p),
            };
            self.files.push((p, seen));
        }
    }

    /// Whether any file changed since the last call (or since it was added); each change is
    /// reported once.
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        for (p, seen) in &mut self.files {
            let now = stamp(p);
            if now != *seen {
                *seen = now;
                any = true;
            }
        }
        any
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_replacement_is_seen_once() {
        let dir = natkit_testkit::TempDir::new("natkit-runtime-watch");
        let file = dir.join("secret");
        std::fs::write(&file, "one").unwrap();
        let mut w = FileWatch::new([file.clone()]);
        assert!(!w.changed());
        // In place.
        std::fs::write(&file, "two!").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // Renamed over (same size).
        let tmp = dir.join("tmp");
        std::fs::write(&tmp, "tres").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert!(w.changed());
        // Gone, then back.
        std::fs::remove_file(&file).unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::write(&file, "four").unwrap();
        assert!(w.changed());

        // A Kubernetes Secret volume: key -> ..data/key, ..data -> ..2026_1; the update
        // writes ..2026_2 and re-points ..data.
        let (v1, v2) = (dir.join("..2026_1"), dir.join("..2026_2"));
        std::fs::create_dir(&v1).unwrap();
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v1.join("key"), "old").unwrap();
        std::fs::write(v2.join("key"), "new").unwrap();
        std::os::unix::fs::symlink("..2026_1", dir.join("..data")).unwrap();
        let key = dir.join("key");
        std::os::unix::fs::symlink("..data/key", &key).unwrap();
        let mut k = FileWatch::new([key.clone()]);
        std::os::unix::fs::symlink("..2026_2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(k.changed());
        assert!(!k.changed());

        // New paths are taken as seen; known ones keep their version.
        std::fs::write(&file, "five!").unwrap();
        w.set_paths([file.clone(), key]);
        assert!(w.changed());
        assert!(!w.changed());
    }
}
