//! Network namespaces for the tests that run flint on a TAP: every frame stays inside a namespace
//! the test creates (and deletes, also when it fails).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::in_ci;

fn tool_works(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether network namespaces and TAPs can be used here (root, /dev/net/tun, ip, python3). Outside
/// CI a missing piece skips the test; in CI it fails it.
pub fn net_available() -> bool {
    let mut missing = Vec::new();
    // Root: the effective uid in /proc/self/status.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        missing.push("root (CAP_NET_ADMIN)");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    if !tool_works("ip", &["-V"]) {
        missing.push("the ip command");
    }
    if !tool_works("python3", &["-c", "import socket; socket.AF_PACKET"]) {
        missing.push("python3 with AF_PACKET");
    }
    if missing.is_empty() {
        return true;
    }
    assert!(!in_ci(), "CI=true but missing: {}", missing.join(", "));
    eprintln!(
        "SKIPPED: missing {} (set CI=true to make this a failure)",
        missing.join(", ")
    );
    false
}

/// A network namespace of this test, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "flint-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs { name };
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        ns.ip(&["netns", "add", &ns.name]);
        ns
    }

    /// `ip ARGS` on the host (used for `netns add`).
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command line that runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }

    /// `ip ARGS` inside the namespace; must succeed.
    pub fn ip_in(&self, args: &[&str]) {
        let out = self.exec("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether interface `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        self.exec("ip")
            .args(["link", "show", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl NetNs {
    /// Runs flint with `args` inside the namespace (stdin closed, output captured) until it exits
    /// or `timeout` passes.
    pub fn run_flint(&self, args: &[&str], timeout: std::time::Duration) -> super::Run {
        let started = std::time::Instant::now();
        let child = self
            .exec(super::flint_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start flint");
        super::wait_with_timeout(child, timeout, started)
    }
}
