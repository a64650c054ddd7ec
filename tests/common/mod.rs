//! Shared harness for flint's integration tests: builds the probe guests, boots them under the flint
//! binary with a timeout, and parses what the guest printed.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod bench;
pub mod netns;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The flint binary cargo built for these tests.
pub fn flint_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flint")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether the tests run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether KVM is usable. Outside CI a missing /dev/kvm skips the test (returns false, with a note on
/// stderr); in CI it fails the test, so a runner without KVM can never look green.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        assert!(
            !in_ci(),
            "CI=true but /dev/kvm cannot be opened: KVM is required"
        );
        eprintln!("SKIPPED: /dev/kvm cannot be opened (set CI=true to make this a failure)");
    }
    ok
}

/// Builds the probe guests once per test binary and returns the path of `name`.elf.
pub fn probe(name: &str) -> PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("probe-guests");
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(repo_root().join("tests/guests"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("cannot run make to build the probe guests (is make installed?)");
        assert!(status.success(), "building the probe guests failed");
        out
    });
    let path = out.join(format!("{name}.elf"));
    assert!(
        path.exists(),
        "probe guest {} was not built",
        path.display()
    );
    path
}

/// What one flint run produced.
#[derive(Debug)]
pub struct Run {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything on stdout (the guest console).
    pub stdout: String,
    /// Everything on stderr (flint's log and errors).
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// The parsed PROBE lines.
    pub fn probe(&self) -> ProbeReport {
        ProbeReport::parse(&self.stdout)
    }

    /// Fails the test unless the probe ran to PROBE-DONE with every check passed and flint exited
    /// 0; returns the report.
    pub fn assert_probe_passed(&self) -> ProbeReport {
        let report = self.probe();
        report.assert_all_passed(self);
        assert!(
            self.status.success(),
            "flint: {:?}\n{}",
            self.status,
            self.stderr
        );
        report
    }

    /// The lines of stderr that are not warnings (a warning may precede an error line).
    pub fn stderr_without_warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.contains("WARN "))
            .collect()
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Spawns flint with `args` (stdin closed); the caller waits with [`wait_with_timeout`].
pub fn spawn_flint(args: &[&str]) -> Child {
    Command::new(flint_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start flint")
}

/// Waits for `child`, killing it and failing the test if it outlives `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration, started: Instant) -> Run {
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "flint did not exit within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// Runs flint with `args` to completion (at most `timeout`).
pub fn run_flint(args: &[&str], timeout: Duration) -> Run {
    let started = Instant::now();
    wait_with_timeout(spawn_flint(args), timeout, started)
}

/// Runs probe `name` under `flint run --kernel <probe> <args>` to completion (at most `timeout`).
pub fn run_probe(name: &str, args: &[&str], timeout: Duration) -> Run {
    let kernel = probe(name);
    let mut all = vec!["run", "--kernel", kernel.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run_flint(&all, timeout)
}

/// A flint run whose console is read line by line while it runs, for tests that act on what the guest
/// prints (kill flint at a given line, start a second VMM once the first is up).
pub struct LiveFlint {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    started: Instant,
}

impl LiveFlint {
    /// Spawns `program` with `args` (flint itself, or a wrapper such as strace that runs it).
    pub fn spawn_program(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = drain(child.stderr.take().expect("stderr is piped"));
        Self {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            started: Instant::now(),
        }
    }

    /// Spawns flint with `args`.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_program(flint_bin(), args)
    }

    /// Waits up to `timeout` for a console line for which `wanted` is true and returns it; None if
    /// the console closed (flint exited) or the time ran out first.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let until = Instant::now() + timeout;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if wanted(&line) {
                return Some(line);
            }
        }
    }

    /// Whether flint is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL to flint (no chance to flush or clean up) and collects the whole run.
    pub fn kill(mut self) -> Run {
        let _ = self.child.kill();
        self.finish(Duration::from_secs(30))
    }

    /// Waits for flint to exit by itself (killing it and failing if it takes longer than `timeout`)
    /// and collects the whole run: every console line, including those printed before the kill.
    pub fn finish(mut self, timeout: Duration) -> Run {
        let until = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "flint did not exit within {timeout:?}\n--- stdout so far ---\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The reader thread ends at EOF, which follows the exit.
        self.seen.extend(self.lines.iter());
        let mut stdout = self.seen.join("\n");
        stdout.push('\n');
        Run {
            status,
            stdout,
            stderr: self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for LiveFlint {
    /// A failing test must not leave a VMM behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Boots probe `name` with the given extra flint arguments and guest command line, and checks that it
/// ran to PROBE-DONE with no failure and flint exited 0. Returns the report.
pub fn boot_probe(name: &str, flint_args: &[&str], cmdline: &str) -> ProbeReport {
    let mut args = vec!["--cmdline", cmdline];
    args.extend_from_slice(flint_args);
    run_probe(name, &args, Duration::from_secs(120)).assert_probe_passed()
}

/// The PROBE lines of one guest run.
#[derive(Debug, Default)]
pub struct ProbeReport {
    /// `PROBE-START <name>` seen.
    pub started: Option<String>,
    /// Each check: name, passed, reason.
    pub checks: Vec<(String, bool, String)>,
    /// `PROBE-INFO key=value` lines.
    pub info: HashMap<String, String>,
    /// `PROBE-DONE pass=N fail=M`.
    pub done: Option<(u32, u32)>,
}

impl ProbeReport {
    /// Parses a console transcript.
    pub fn parse(output: &str) -> Self {
        let mut report = ProbeReport::default();
        for line in output.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(name) = line.strip_prefix("PROBE-START ") {
                report.started = Some(name.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("PROBE-INFO ") {
                if let Some((k, v)) = rest.split_once('=') {
                    report.info.insert(k.to_string(), v.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("PROBE-DONE ") {
                let mut pass = None;
                let mut fail = None;
                for field in rest.split_whitespace() {
                    if let Some(v) = field.strip_prefix("pass=") {
                        pass = v.parse().ok();
                    } else if let Some(v) = field.strip_prefix("fail=") {
                        fail = v.parse().ok();
                    }
                }
                if let (Some(p), Some(f)) = (pass, fail) {
                    report.done = Some((p, f));
                }
            } else if let Some(rest) = line.strip_prefix("PROBE ") {
                let mut parts = rest.splitn(3, ' ');
                let name = parts.next().unwrap_or("").to_string();
                let verdict = parts.next().unwrap_or("");
                let why = parts.next().unwrap_or("").to_string();
                report.checks.push((name, verdict == "ok", why));
            }
        }
        report
    }

    /// Whether check `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.checks.iter().any(|(n, ok, _)| n == name && *ok)
    }

    /// A PROBE-INFO value.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.info.get(key).map(String::as_str)
    }

    /// Fails the test unless the probe started, finished, and every check passed.
    pub fn assert_all_passed(&self, run: &Run) {
        let failed: Vec<_> = self.checks.iter().filter(|(_, ok, _)| !ok).collect();
        let context = || {
            format!(
                "--- stdout ---\n{}\n--- stderr ---\n{}",
                run.stdout, run.stderr
            )
        };
        assert!(
            self.started.is_some(),
            "the probe never started\n{}",
            context()
        );
        assert!(
            failed.is_empty(),
            "failed checks: {failed:?}\n{}",
            context()
        );
        let Some((pass, fail)) = self.done else {
            panic!("no PROBE-DONE line\n{}", context());
        };
        assert_eq!(fail, 0, "{}", context());
        assert!(pass > 0, "no check passed\n{}", context());
        assert_eq!(
            pass as usize,
            self.checks.len(),
            "PROBE-DONE disagrees with the PROBE lines\n{}",
            context()
        );
    }
}

/// A scratch file path under cargo's per-test temporary directory.
pub fn scratch_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir.join(name)
}

/// A sparse, all-zero disk file of `size` bytes under the scratch directory (replacing any file of
/// that name).
pub fn scratch_disk(name: &str, size: u64) -> PathBuf {
    let path = scratch_path(name);
    let _ = std::fs::remove_file(&path);
    let file = std::fs::File::create(&path).expect("create the disk file");
    file.set_len(size).expect("size the disk file");
    path
}

/// Runs flint with `args` and checks that it failed without panicking, with exactly one
/// `flint: error:` line on stderr (warnings aside) containing every one of `needles`.
pub fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    let run = run_flint(args, Duration::from_secs(30));
    assert!(!run.status.success(), "{args:?} succeeded");
    assert!(
        !run.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        run.stderr
    );
    // Warnings (e.g. "--memory overrides the instance type's") may precede the error; the error
    // itself is one line.
    let lines = run.stderr_without_warnings();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got:\n{}",
        run.stderr
    );
    assert!(
        lines[0].starts_with("flint: error: "),
        "{args:?}: {}",
        lines[0]
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
    }
}
