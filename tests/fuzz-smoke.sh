#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (CI): FUZZ_SECONDS each
# (default 20), starting from the committed seeds (fuzz/seeds/<target>).
#
#   bash tests/fuzz-smoke.sh            # all targets
#   FUZZ_SECONDS=300 bash tests/fuzz-smoke.sh volume_spec
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 gives them to the
# stable toolchain. cargo-fuzz is installed from crates.io if missing
# (about 40 s). When it cannot be installed, or the instrumented build
# does not finish, within its budget, the smoke run is SKIPPED (exit 0):
# the same targets still run on stable in `cargo test --test fuzz_corpus`.
# A crash fails (exit 1) and leaves the input in fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# Reused across runs on one machine (a fresh clone rebuilds otherwise).
export CARGO_TARGET_DIR=${BERTH_FUZZ_TARGET_DIR:-/var/cache/berth-fuzz/target}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  if ! timeout 600 cargo install --locked cargo-fuzz >/tmp/berth-cargo-fuzz-install.log 2>&1; then
    echo "fuzz-smoke: SKIPPED: cargo-fuzz could not be installed in 10 min (see /tmp/berth-cargo-fuzz-install.log)"
    exit 0
  fi
fi

# Logs of this run only (concurrent runs on one machine must not mix).
logs=$(mktemp -d /tmp/berth-fuzz.XXXXXX)
echo "fuzz-smoke: logs in $logs"
start=$(date +%s)
timeout 1200 cargo fuzz build -O >"$logs/build.log" 2>&1
rc=$?
if [ $rc -eq 124 ]; then
  echo "fuzz-smoke: SKIPPED: the instrumented build took over 20 min"
  exit 0
elif [ $rc -ne 0 ]; then
  tail -30 "$logs/build.log"
  echo "fuzz-smoke: the fuzz targets do not build"
  exit 1
fi
echo "fuzz-smoke: built in $(( $(date +%s) - start )) s"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
passed=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$logs/$t.log
  # -rss_limit_mb: the planner targets are small; a leak shows up early.
  if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    cov=$(grep -a -E '^#[0-9]+.*DONE' "$log" | sed -E 's/.*cov: ([0-9]+).*/\1/' | tail -1)
    echo "fuzz-smoke: $t ok: ${execs:-?} executions in ${secs} s, coverage ${cov:-?}"
    passed=$((passed + 1))
  else
    echo "fuzz-smoke: $t FAILED:"
    grep -a -E 'panicked at|^Test unit written|SUMMARY' -A2 "$log" | head -20
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
