#!/usr/bin/env bash
# Longer trainings of the synthetic presets on the GPU machine (acceptance targets): do the
# CA-GAN's missed targets and the diffusion preset's weak seed come right with more steps?
# Binaries prepared by `cargo xtask gpu-check` (target/gpu-check/). From the repository root:
#
#     bash benches/gpu/trials.sh target/gpu-check
#
# Trains the runs named in RUNS (default below), all at once on the one GPU, 2 CPU threads
# each, for TRAIN_MINUTES (default 4.5):
#   gan-sN    configs/ca-gan-synthetic.toml, seed N
#   dig-sN    configs/double-infogan-synthetic.toml (the baseline), seed N
#   diff-sN   configs/ca-diffusion-synthetic.toml, bf16, seed N
# The GPU time-slices between processes: on an H200 (2026-12-04) seven runs at once made
# 5-6 CA-GAN steps/s each, one CA-GAN alone 10. For the most steps of one run, name only it.
# then evaluates: the separation probes at every checkpoint of every run (2,000 held-out
# images), the full `ca eval` of each GAN run's last checkpoint (2,000 images) and of each
# diffusion run's (400 images, as the CPU numbers in README). Checkpoints every 1,000 steps.
# Results: $OUT/trials.tgz (runs without weights), $OUT/trials.txt (log and summary),
# $OUT/<first run>-final.tgz (its last weights and config). DEVICE=cpu runs the same on the CPU.
set -u
BIN=${1:-target/gpu-check}
DEV=${DEVICE:-cuda}
MIN=${TRAIN_MINUTES:-4.5}
RUNS=${RUNS:-"gan-s0 gan-s1 dig-s0 diff-s0 diff-s1 diff-s2 diff-s3"}
EVAL_S=${EVAL_SECONDS:-170}   # wall-clock budget of the evaluation phase
RES=${OUT:-benches/gpu/results}
WORK=${WORK:-/tmp/ca-trials}
mkdir -p "$RES"
rm -rf "$WORK"; mkdir -p "$WORK"
LOG=$RES/trials.txt
if [ "$DEV" != cpu ]; then
  TORCH_DIR=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
  export LD_LIBRARY_PATH=$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}
fi
start=$(date +%s)
el() { echo $(( $(date +%s) - start )); }
{
  echo "== trials $(date -u '+%Y-%m-%d %H:%M UTC') device $DEV, $MIN min of training"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$BIN/ca" doctor 2>&1 | tail -n 12
} > "$LOG"
# Fail fast when CUDA does not load: nothing below would mean anything.
if [ "$DEV" != cpu ]; then
  if ! timeout 60 "$BIN/ca" train --config configs/ca-gan-synthetic.toml --device "$DEV" \
      --max-steps 3 --out "$WORK/smoke" --set data.n_background=256 --set data.n_target=256 \
      > "$WORK/smoke.log" 2>&1; then
    { echo "== CUDA smoke run failed:"; tail -n 20 "$WORK/smoke.log"; } >> "$LOG"
    cat "$LOG"; exit 1
  fi
  echo "== CUDA smoke run ok at $(el) s" >> "$LOG"
fi

common=(--device "$DEV" --max-minutes "$MIN" --set train.max_steps=1000000
        --set train.checkpoint_every=1000 --set train.keep_last=40 --set train.threads=2)
train() { # name config extra...
  local name=$1 cfg=$2; shift 2
  "$BIN/ca" train --config "configs/$cfg.toml" --out "$WORK/$name" "${common[@]}" "$@" \
    > "$WORK/$name.log" 2>&1
  echo "== $name: train exit $? at $(el) s, last checkpoint $(cat "$WORK/$name/checkpoints/latest" 2>/dev/null)" >> "$LOG"
}
pids=()
for name in $RUNS; do
  seed=${name##*-s}
  case $name in
    gan-s*) train "$name" ca-gan-synthetic --seed "$seed" & pids+=($!) ;;
    dig-s*) train "$name" double-infogan-synthetic --seed "$seed" & pids+=($!) ;;
    diff-s*) train "$name" ca-diffusion-synthetic --seed "$seed" --set 'train.precision="bf16"' & pids+=($!) ;;
    *) echo "== unknown run $name (gan-sN, dig-sN, diff-sN)" >> "$LOG" ;;
  esac
done
# GPU use while they run.
( while sleep 45; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1 \
  | sed 's/^/== nvidia-smi: /' >> "$LOG"; done ) & mon=$!
wait "${pids[@]}"
kill "$mon" 2>/dev/null

pack() {
  tar czf "$RES/trials.tgz" -C "$WORK" --exclude='checkpoints' . 2>/dev/null
}
pack
deadline=$(( $(date +%s) + EVAL_S ))
left() { echo $(( deadline - $(date +%s) )); }
evals() { # run: separation probes at every checkpoint, newest first, then the full eval
  local name=$1 full_images=$2 c
  local t; t=$(left); [ "$t" -gt 5 ] || return
  timeout "$t" "$BIN/ca" eval --run "$WORK/$name" --device "$DEV" --threads 2 --max-images "$full_images" \
    > "$WORK/$name-eval.log" 2>&1
  echo "== $name: full eval exit $? at $(el) s" >> "$LOG"
  for c in $(ls "$WORK/$name/checkpoints" | grep '^ckpt-' | sort -r); do
    t=$(left); [ "$t" -gt 5 ] || return
    timeout "$t" "$BIN/ca" eval --run "$WORK/$name" --device "$DEV" --threads 2 --max-images 2000 \
      --separation-only --checkpoint "$c" >> "$WORK/$name-probes.log" 2>&1
  done
}
for name in $RUNS; do
  case $name in
    diff-s*) evals "$name" 400 & ;;
    *) evals "$name" 2000 & ;;
  esac
done
wait
pack
# The last weights of the first run (for `ca counterfactual` etc. at home).
first=${RUNS%% *}
last=$(ls "$WORK/$first/checkpoints" 2>/dev/null | grep '^ckpt-' | sort | tail -n 1)
[ -n "$last" ] && tar czf "$RES/$first-final.tgz" -C "$WORK/$first" config.toml \
  "checkpoints/$last/model.safetensors" "checkpoints/$last/meta.json" 2>/dev/null
{
  echo "== done in $(el) s"
  for f in "$WORK"/*/eval*/separation.json "$WORK"/*/eval/metrics.json; do
    [ -f "$f" ] || continue
    python3 - "$f" <<'EOF'
import json, sys
f = sys.argv[1]; d = json.load(open(f)); s = d['separation']
g = lambda k: s.get(k, {}).get('accuracy', float('nan'))
line = f"{f.split('/')[-3]:8s} {f.split('/')[-2]:18s} step {d['steps']:6d} type|s {g('salient_from_s'):.3f} type|z {g('salient_from_z'):.3f} data|z {g('dataset_from_z'):.3f}"
if 'reconstruction' in d:
    r, gt = d['reconstruction'], d['ground_truth']
    line += (f" | recon bg {r['background_psnr_db']:.2f} tgt {r['target_psnr_db']:.2f} dB | cf {gt['counterfactual_psnr_db']:.2f} dB"
             f" gain {gt['counterfactual_gain_db']:+.2f} in/out {gt['mask_error_inside']:.3f}/{gt['mask_error_outside']:.3f}"
             f" (identity in {gt['identity_error_inside']:.3f}, flat out {gt['flat_error_outside']:.3f}) iou {gt['saliency_iou']:.3f}"
             f" swap {gt['swap_success']:.3f}")
print(line)
EOF
  done
} >> "$LOG" 2>&1
cat "$LOG"
