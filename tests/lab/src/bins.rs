//! Finding the binaries the lab runs (natkit-stun, natkit-turn, natkit) in
//! the target directory next to the running executable, building them once
//! when missing so a lone `cargo test -p natkit-lab` works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::cmd;
use crate::error::{LabError, Result};

/// The binaries the lab needs, with the package that builds each.
const NEEDED: [(&str, &str); 4] = [
    ("natkit-stun", "natkit-stun"),
    ("natkit-turn", "natkit-turn"),
    ("natkit", "natkit-cli"),
    // The lab's own binary runs the wires of shaped links (`natkit-lab wire`).
    ("natkit-lab", "natkit-lab"),
];

/// Paths of the lab's binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// natkit-stun.
    pub stun: PathBuf,
    /// natkit-turn.
    pub turn: PathBuf,
    /// natkit (the CLI).
    pub natkit: PathBuf,
    /// natkit-lab (for its `wire` subcommand).
    pub lab: PathBuf,
}

/// The profile directory (`target/debug`, `target/release`) of the running
/// executable: test executables live one level down, in `deps/`.
fn profile_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NATKIT_LAB_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| LabError::io("finding the executable", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| LabError::Other(format!("{} has no parent", exe.display())))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

static BUILD: Mutex<()> = Mutex::new(());

/// Find the binaries, building the missing ones with cargo first.
pub fn find() -> Result<Binaries> {
    let dir = profile_dir()?;
    let missing = |d: &Path| NEEDED.iter().any(|(bin, _)| !d.join(bin).is_file());
    if missing(&dir) {
        // One build per process, whatever the number of threads asking.
        let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        if missing(&dir) {
            build(&dir)?;
        }
    }
    let path = |name: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::MissingBinary {
                name: name.into(),
                dir: dir.clone(),
                why: "still missing after the build".into(),
            })
        }
    };
    // Another natkit build (an installed one, a branch) can stand in for
    // the CLI the peers and probes run.
    let natkit = match std::env::var_os("NATKIT_LAB_NATKIT") {
        Some(p) => PathBuf::from(p),
        None => path("natkit")?,
    };
    Ok(Binaries {
        stun: path("natkit-stun")?,
        turn: path("natkit-turn")?,
        natkit,
        lab: path("natkit-lab")?,
    })
}

fn build(dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(env!("CARGO_MANIFEST_DIR")).arg("build");
    for (_, pkg) in NEEDED {
        c.args(["-p", pkg]);
    }
    c.arg("--bins");
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    // Build into the same target directory the binaries are looked for in.
    if let Some(target) = dir.parent() {
        c.arg("--target-dir").arg(target);
    }
    eprintln!(
        "natkit-lab: building the lab's binaries: {}",
        cmd::describe(&c)
    );
    cmd::run(&mut c, None)
        .map(drop)
        .map_err(|e| LabError::MissingBinary {
            name: NEEDED.map(|(b, _)| b).join(", "),
            dir: dir.to_path_buf(),
            why: e.to_string(),
        })
}

/// The system program `name` (from Debian package `package`), looked up in
/// `PATH` and the sbin directories root's `PATH` may lack.
pub fn system(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::MissingTool {
            name: name.into(),
            package: package.into(),
        })
}
