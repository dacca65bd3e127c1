#!/usr/bin/env bash
# CUDA check of the benchmarks, for the GPU machine (python3 with torch 2.11.0+cu130, no Rust).
# Prepared by `cargo xtask gpu-check`, which builds and strips the binaries into
# target/gpu-check/ and prints how to run this. From the repository root:
#
#     bash benches/gpu/gpu_check.sh target/gpu-check
#
# Results go to $OUT (the device tool's output folder), else benches/gpu/results:
#   gpu_check.txt  log: GPU, versions, each smoke run's tail, pass/fail lines
#   bench.jsonl    one JSON line per bench run (Rust and PyTorch, device=cuda)
# Budget: about 5 minutes in all (every command has its own timeout).
set -u
BIN=${1:-target/gpu-check}
RES=${OUT:-benches/gpu/results}
mkdir -p "$RES/runs"
LOG=$RES/gpu_check.txt
JSONL=$RES/bench.jsonl
: > "$JSONL"
TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
# libtorch of the local PyTorch (same version and ABI as the one the binaries were built on).
export LD_LIBRARY_PATH=$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
start=$(date +%s)
{
  echo "== gpu-check $(date -u '+%Y-%m-%d %H:%M UTC')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$BIN/ca" | grep -E 'torch|not found' || true
} > "$LOG" 2>&1

# 1. CUDA smoke training of each model kind: 50 steps, small synthetic sets.
# The `:bf16` entries train with train.precision = "bf16" (autocast on CUDA).
for entry in double-infogan-synthetic ca-gan-synthetic ca-diffusion-synthetic \
    ca-gan-synthetic:bf16 ca-diffusion-synthetic:bf16; do
  preset=${entry%%:*}
  extra=()
  if [ "$entry" != "$preset" ]; then
    extra=(--set 'train.precision="bf16"')
    preset_out=$preset-bf16
  else
    preset_out=$preset
  fi
  t0=$(date +%s)
  timeout 75 "$BIN/ca" train --config "configs/$preset.toml" --device cuda --max-steps 50 \
    --out "$RES/runs/$preset_out" --set data.n_background=512 --set data.n_target=512 \
    --set train.log_every=10 "${extra[@]}" > "$RES/runs/$preset_out.log" 2>&1
  rc=$?
  {
    echo "== smoke $preset_out: exit $rc in $(( $(date +%s) - t0 )) s"
    tail -n 5 "$RES/runs/$preset_out.log"
    tail -n 3 "$RES/runs/$preset_out/losses.csv" 2>/dev/null
  } >> "$LOG"
done

# 2. The bench rows on CUDA, Rust then PyTorch (short: 5 timed steps after 2 warm-up ones).
for row in $("$BIN/steps" --list); do
  for side in rust pytorch; do
    if [ $(( $(date +%s) - start )) -gt 270 ]; then
      echo "== skipped $row $side: out of the 5-minute budget" >> "$LOG"; continue
    fi
    if [ "$side" = rust ]; then
      cmd=("$BIN/steps")
    else
      cmd=(python3 benches/reference/steps.py)
    fi
    timeout 60 "${cmd[@]}" --row "$row" --device cuda --steps 5 --warmup 2 --json \
      >> "$JSONL" 2>> "$LOG" || echo "== bench $row $side failed (exit $?)" >> "$LOG"
  done
done
echo "== done in $(( $(date +%s) - start )) s" >> "$LOG"
cat "$LOG"
cat "$JSONL"
