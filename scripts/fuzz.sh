#!/usr/bin/env bash
# Builds flint's fuzz targets (fuzz/, docs/fuzzing.md) with cargo-fuzz and runs each for a fixed
# number of executions, then prints executions, exec/s and crashes per target.
#
#   scripts/fuzz.sh [TARGET|all] [RUNS]      RUNS defaults to 10,000,000 per target
#   FUZZ_JOBS=N scripts/fuzz.sh ...          N processes per target sharing the RUNS
#
# Needs: a nightly Rust toolchain (cargo-fuzz's instrumentation flags are nightly-only), a C++
# compiler (libfuzzer-sys builds libFuzzer), and cargo-fuzz, which this script installs from
# crates.io when it is missing. Runs at nice 19: the machine is shared.
#
# Seeds come from fuzz/corpus/TARGET (committed, never written to); what a run discovers goes to
# fuzz/runs/TARGET/corpus, crashes to fuzz/artifacts/TARGET/, logs and the summary to fuzz/runs/
# (all git-ignored). Exit status: 0 when no target crashed, 1 otherwise, 2 on a setup problem.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
TARGETS=(nvme_command virtio_blk_chain virtio_net_chain pci_config cli_config)
which_target=${1:-all}
runs=${2:-10000000}
jobs=${FUZZ_JOBS:-1}   # processes per target (libFuzzer -jobs); executions are split among them

die() { echo "fuzz.sh: $*" >&2; exit 2; }

case "$which_target" in
  all) selected=("${TARGETS[@]}") ;;
  *) [[ " ${TARGETS[*]} " == *" $which_target "* ]] || die "unknown target '$which_target' (one of: ${TARGETS[*]}, all)"
     selected=("$which_target") ;;
esac
[[ "$runs" =~ ^[0-9]+$ && "$runs" -gt 0 ]] || die "RUNS must be a positive number, not '$runs'"
[[ "$jobs" =~ ^[0-9]+$ && "$jobs" -gt 0 ]] || die "FUZZ_JOBS must be a positive number, not '$jobs'"

# --- what the harness needs ----------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain; trying 'rustup toolchain install nightly --profile minimal'" >&2
  rustup toolchain install nightly --profile minimal >&2 ||
    die "cargo-fuzz needs a nightly Rust toolchain (-Zsanitizer / sancov flags); install one with 'rustup toolchain install nightly'"
fi
command -v c++ >/dev/null || die "a C++ compiler (c++) is needed to build libFuzzer: apt-get install g++"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
  cargo install cargo-fuzz --locked >&2 || die "cannot install cargo-fuzz"
fi

# --- build ---------------------------------------------------------------------------------------
# Release code with debug assertions (integer overflow, debug_assert! and slice checks panic, so
# the fuzzer sees them) and no sanitizer: the device models are safe Rust, where AddressSanitizer
# finds nothing the bounds checks do not, and it halves the speed. No compare tracing either:
# vm-memory copies guest memory a word at a time, and a hook on every compare in those loops took
# two thirds of the time (docs/fuzzing.md).
BUILD_FLAGS=(-O --debug-assertions -s none --no-trace-compares)
echo "fuzz.sh: building (cargo +nightly fuzz build ${BUILD_FLAGS[*]})" >&2
nice -n 19 cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >&2

# Largest input per target: a few operations for the register/config targets, a small picture
# of guest RAM for the virtqueue targets.
max_len() {
  case "$1" in
    virtio_blk_chain|virtio_net_chain) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

fuzz_dir=$PWD
bin_dir=$fuzz_dir/target/x86_64-unknown-linux-gnu/release
mkdir -p runs
summary=runs/summary.txt
commit=$(git -C .. rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C .. status --porcelain -- fuzz devices src 2>/dev/null | grep -q . && echo "+dirty" || true)
printf '%-18s %12s %9s %8s %8s  %s\n' target executions exec/s seconds crashes "date / commit" | tee -a "$summary"
failed=0
for t in "${selected[@]}"; do
  mkdir -p "runs/$t/corpus" "artifacts/$t"
  log="runs/$t/fuzz.log"
  fuzz_args=(-max_len="$(max_len "$t")" -timeout=30 -print_final_stats=1
    -artifact_prefix="$fuzz_dir/artifacts/$t/")
  count_artifacts() { find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l; }
  before=$(count_artifacts)
  start=$(date +%s)
  set +e
  if [[ $jobs -gt 1 ]]; then
    # libFuzzer's -jobs: $jobs processes sharing the output corpus, each running its share of the
    # executions and logging to fuzz-N.log in its working directory.
    rm -f "runs/$t"/fuzz-*.log
    (cd "runs/$t" && nice -n 19 "$bin_dir/$t" -jobs="$jobs" -workers="$jobs" \
      -runs=$(( (runs + jobs - 1) / jobs )) "${fuzz_args[@]}" "$PWD/corpus" "$fuzz_dir/corpus/$t") >"$log" 2>&1
  else
    nice -n 19 "$bin_dir/$t" -runs="$runs" "${fuzz_args[@]}" "runs/$t/corpus" "corpus/$t" >"$log" 2>&1
  fi
  status=$?
  set -e
  seconds=$(( $(date +%s) - start ))
  logs=("$log")
  [[ $jobs -gt 1 ]] && logs=("runs/$t"/fuzz-*.log)
  execs=$(cat "${logs[@]}" | sed -n 's/^stat::number_of_executed_units: *//p' | awk '{s += $1} END {if (NR) print s}')
  rate=$(( ${execs:-0} / (seconds > 0 ? seconds : 1) ))
  crashes=$(( $(count_artifacts) - before ))
  if [[ $status -ne 0 && $crashes -eq 0 ]]; then
    crashes="?"   # libFuzzer failed without an artifact: see the log
  fi
  printf '%-18s %12s %9s %8s %8s  %s %s%s\n' "$t" "${execs:-?}" "${rate:-?}" "$seconds" "$crashes" \
    "$(date -u +%Y-%m-%d)" "$commit" "$dirty" | tee -a "$summary"
  if [[ $status -ne 0 ]]; then
    failed=1
    echo "fuzz.sh: $t failed (exit $status); logs: ${logs[*]/#/fuzz/}; artifacts: fuzz/artifacts/$t/" >&2
    cat "${logs[@]}" | grep -m5 -E "panicked|ERROR|SUMMARY" >&2 || true
  fi
done
exit $failed
