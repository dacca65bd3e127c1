#!/usr/bin/env bash
# Build every fuzz target (no sanitizer: libtorch is not instrumented; Rust debug assertions
# on) and run each for FUZZ_SECONDS (default 600), one job, at nice FUZZ_NICE (default 19; give
# 0 when the fuzzers must share the CPU fairly with other work), starting from the seed inputs in
# seeds/<target>/ (valid files: without sanitizer hooks libFuzzer cannot guess magic numbers
# such as .npy's \x93NUMPY).
# Results: $OUT/<target>.log (libFuzzer's final stats), $OUT/summary.txt, crashes under
# fuzz/artifacts/<target>/. Usage: fuzz/run-all.sh [target...]
set -u
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${OUT:-/tmp/ca-fuzz-results}
SECS=${FUZZ_SECONDS:-600}
NICE=${FUZZ_NICE:-19}
mkdir -p "$OUT"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(image_decode npy_parse labels_csv config_toml checkpoint_load)
for t in "${targets[@]}"; do
  nice -n "$NICE" cargo +nightly fuzz build -s none -a "$t" >"$OUT/$t.build.log" 2>&1 || {
    echo "$t: BUILD FAILED (see $OUT/$t.build.log)" >>"$OUT/summary.txt"; continue; }
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && cp -n "seeds/$t"/* "corpus/$t"/
  start=$(date +%s)
  nice -n "$NICE" cargo +nightly fuzz run -s none -a "$t" "corpus/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    >"$OUT/$t.log" 2>&1
  rc=$?
  end=$(date +%s)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$OUT/$t.log" | grep -oE '[0-9]+$')
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: rc=$rc wall=$((end - start))s execs=${execs:-?} corpus=$(ls "corpus/$t" | wc -l) artifacts=$crashes" >>"$OUT/summary.txt"
done
