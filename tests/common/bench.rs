//! The probes' benchmark lines and the rate checks made on them (tests/rate_limit.rs,
//! tests/net_rate_limit.rs). A probe's benchmark prints a summary `PROBE-INFO <name>=... bytes=N
//! us=N ...` and, when it times slices of its run with the TSC, one `<name>_slice_<i>=start_us=N
//! us=N bytes=N` line per slice.

use super::ProbeReport;

/// The number in field `name=N` of a benchmark line.
pub fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// A stretch of a benchmark as the guest measured it: a whole phase, or slices added up.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub ops: u64,
    pub bytes: u64,
    pub us: u64,
}

impl Phase {
    pub fn seconds(&self) -> f64 {
        self.us as f64 / 1e6
    }
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds()
    }
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds()
    }
}

/// One `<name>_slice_<i>` line: the bytes completed in one TSC slice of the run.
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    pub start_us: u64,
    pub us: u64,
    pub bytes: u64,
}

impl Slice {
    /// Bytes per second in this slice.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 * 1e6 / self.us.max(1) as f64
    }
}

/// The slices of benchmark `name`, in order, checked to add up to its summary (which must not say
/// `stalled`); prints their rates.
pub fn slices(report: &ProbeReport, name: &str) -> Vec<Slice> {
    let summary = report
        .info(name)
        .unwrap_or_else(|| panic!("no PROBE-INFO {name}"));
    assert!(!summary.contains("stalled"), "{summary}");
    let mut slices = Vec::new();
    while let Some(line) = report.info(&format!("{name}_slice_{}", slices.len())) {
        slices.push(Slice {
            start_us: field(line, "start_us"),
            us: field(line, "us"),
            bytes: field(line, "bytes"),
        });
    }
    let total: u64 = slices.iter().map(|s| s.bytes).sum();
    assert_eq!(
        total,
        field(summary, "bytes"),
        "the slices do not add up: {slices:?}"
    );
    eprintln!("MB/s per slice (start:rate): {}", rates(&slices));
    slices
}

/// The slices' rates as `start:MB/s`, for messages.
pub fn rates(slices: &[Slice]) -> String {
    let rates: Vec<String> = slices
        .iter()
        .map(|s| format!("{:.2}s:{:.1}", s.start_us as f64 / 1e6, s.rate() / 1e6))
        .collect();
    rates.join(" ")
}

/// The slices lying wholly inside [from, to] seconds of the run, added up into one phase.
pub fn window(slices: &[Slice], from: f64, to: f64) -> Phase {
    let (from, to) = ((from * 1e6) as u64, (to * 1e6) as u64);
    let inside = slices
        .iter()
        .filter(|s| s.start_us >= from && s.start_us + s.us <= to);
    Phase {
        ops: 0,
        bytes: inside.clone().map(|s| s.bytes).sum(),
        us: inside.map(|s| s.us).sum::<u64>().max(1),
    }
}

/// When a burst ended, in seconds: the start of the first two slices in a row (after the first
/// slice) below `midpoint` bytes/s. One slow slice alone is a host stall during the burst.
pub fn switch_seconds(slices: &[Slice], midpoint: f64) -> f64 {
    let first_slow = (1..slices.len().saturating_sub(1))
        .find(|&i| slices[i].rate() < midpoint && slices[i + 1].rate() < midpoint)
        .unwrap_or_else(|| {
            panic!(
                "never two slices below {midpoint:.0} B/s in a row: {}",
                rates(slices)
            )
        });
    slices[first_slow].start_us as f64 / 1e6
}

/// Where the measured part of the run ends, in seconds: the last slice is the drain after the
/// guest stopped submitting, and is left out.
pub fn end_seconds(slices: &[Slice]) -> f64 {
    slices[..slices.len().saturating_sub(1)]
        .last()
        .map_or(0.0, |s| (s.start_us + s.us) as f64 / 1e6)
}

/// Checks that the slices inside [from, to] seconds moved `expected` bytes/s ±10%, over at least 2 s.
pub fn assert_window_rate(what: &str, slices: &[Slice], from: f64, to: f64, expected: f64) {
    let p = window(slices, from, to);
    let what = format!("{what} [{from:.2} s, {to:.2} s]");
    assert_rate(&what, p, p.bytes_per_second(), expected);
}

/// Checks that `actual` (a rate over `phase`) is `expected` ±10%, measured over at least 2 s.
pub fn assert_rate(what: &str, phase: Phase, actual: f64, expected: f64) {
    let seconds = phase.seconds();
    assert!(
        seconds >= 2.0,
        "{what}: measured over {seconds:.2} s, want at least 2 s ({phase:?})"
    );
    let error = (actual - expected) / expected;
    eprintln!(
        "{what}: {actual:.0}/s over {seconds:.2} s, want {expected:.0}/s ({:+.1}%)",
        error * 100.0
    );
    assert!(
        error.abs() <= 0.10,
        "{what}: {actual:.0}/s over {seconds:.2} s, want {expected:.0}/s ±10% ({:+.1}%)",
        error * 100.0
    );
}
