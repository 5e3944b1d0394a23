//! Network namespaces: create and delete them, run programs and code inside.
//!
//! Programs run inside a namespace through `setns(2)` between fork and exec
//! (no `ip netns exec`, which would also remount /sys); code runs inside one
//! on a thread of its own that joins the namespace, so sockets it opens
//! belong to the namespace and the rest of the process is left alone.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cmd;
use crate::error::{LabError, Result};

/// Where `ip netns add` puts the namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`ip netns`). Deleting it is the owner's job
/// ([`crate::Lab`] does it on drop).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create the namespace `name` with its loopback up and IPv6 off (the lab
    /// is IPv4-only; no link-local addresses or DAD to wait for).
    pub fn create(name: &str) -> Result<Netns> {
        cmd::ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        let setup = || -> Result<()> {
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")
        };
        if let Err(e) = setup() {
            // Nobody holds a handle on it yet: delete it here or it leaks.
            if let Err(d) = ns.destroy() {
                eprintln!("natkit-lab: {d}");
            }
            return Err(e);
        }
        Ok(ns)
    }

    /// A handle on an existing namespace.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn open(&self) -> Result<File> {
        let path = format!("{NETNS_DIR}/{}", self.name);
        File::open(&path).map_err(|e| LabError::io(format!("opening {path}"), e))
    }

    /// `program` set up to run inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let handle = self.open()?;
        let mut c = Command::new(program);
        // SAFETY: setns(2) is a plain system call, safe between fork and
        // exec; the closure allocates nothing. The handle is close-on-exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(c)
    }

    /// Run `program args...` inside the namespace; its stdout.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut c = self.command(program)?;
        c.args(args);
        cmd::run(&mut c, stdin)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        cmd::ip(&all)
    }

    /// Load an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) -> Result<()> {
        self.run("nft", &["-f", "-"], Some(ruleset)).map(drop)
    }

    /// Run `f` on a thread that has joined the namespace: sockets it opens
    /// live there.
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let handle = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns(2) on this thread only (a thread's network
                // namespace is its own); the handle is a valid open fd.
                if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(LabError::io(
                        format!("joining namespace {}", self.name),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| LabError::Other(format!("code inside {} panicked", self.name)))?
        })
    }

    /// A UDP socket bound to `addr` inside the namespace (a socket belongs
    /// to the namespace it was created in, whichever thread uses it later).
    pub fn bind_udp(&self, addr: impl Into<SocketAddr>) -> Result<UdpSocket> {
        let addr = addr.into();
        self.enter(|| UdpSocket::bind(addr))?
            .map_err(|e| LabError::io(format!("binding UDP {addr} in {}", self.name), e))
    }

    /// Set a sysctl under /proc/sys (`key` like `net/ipv4/ip_forward`) in
    /// the namespace: /proc/sys/net follows the writing thread's namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|e| LabError::io(format!("setting {path} in {}", self.name), e))
    }

    /// PIDs of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        cmd::ip(&["netns", "pids", &self.name])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kill what runs inside and delete the namespace. Processes left in a
    /// deleted namespace would keep it (and their ports) alive unseen.
    pub fn destroy(&self) -> Result<()> {
        for pid in self.pids() {
            // SAFETY: kill(2) on a PID that `ip netns pids` found inside
            // one of the lab's own namespaces.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        cmd::ip(&["netns", "del", &self.name]).map(drop)
    }
}

/// Names of every namespace on the machine (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = cmd::ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}
