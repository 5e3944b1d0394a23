//! Processes the lab starts inside namespaces, tracked by PID and killed
//! (SIGKILL, then reaped) when their guard drops, whatever the test did.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{LabError, Result};

/// A running process, killed on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Process {
    /// Start `cmd` with stdout and stderr going to `log` (stdin closed).
    pub fn spawn_logged(name: &str, mut cmd: Command, log: &Path) -> Result<Process> {
        let file = std::fs::File::create(log)
            .map_err(|e| LabError::io(format!("creating {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| LabError::io("duplicating a log handle", e))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let mut p = Self::spawn(name, cmd)?;
        p.log = Some(log.to_path_buf());
        Ok(p)
    }

    /// Start `cmd` as set up by the caller (pipes and all).
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Process> {
        let line = cmd::describe(&cmd);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: line,
            source,
        })?;
        Ok(Process {
            name: name.to_string(),
            child,
            log: None,
        })
    }

    /// Set the log file [`Process::log_tail`] reads.
    pub fn set_log(&mut self, log: &Path) {
        self.log = Some(log.to_path_buf());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child, for its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The log file, if any, and the last `lines` lines of it.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait for it to exit, at most `limit`; `None` if it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) if it is still running.
    pub fn signal(&mut self, signal: i32) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped, so the PID
            // cannot have been reused.
            unsafe {
                libc::kill(self.child.id() as i32, signal);
            }
        }
    }

    /// Kill it now and reap it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
