#!/usr/bin/env bash
# docs/diagnosis.md §13 (second part: framewise students, every block in the layout the init learned), resumable: each step is skipped when its output exists; a fit resumes from its last.ckpt.
# Needs data/toy6 and runs/diag/ode_ar (docs/diagnosis/ode_init_lr1e-3/command.txt). One core:
#   OMP_NUM_THREADS=1 bash docs/diagnosis/chain_13.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
RUNS=runs/diag/runs

fit() {  # fit RUN: train docs/diagnosis/RUN/config.yaml to its end, resuming from the last checkpoint
  local run=$1 last=$RUNS/$1/version_0/checkpoints/last.ckpt
  [ -f "$RUNS/$run/version_0/done" ] && return
  if [ -f "$last" ]; then oneforcing fit --config "docs/diagnosis/$run/config.yaml" --ckpt_path "$last"
  else oneforcing fit --config "docs/diagnosis/$run/config.yaml"; fi
  touch "$RUNS/$run/version_0/done"
}

measure() {  # measure RUN: metrics (64 videos), sampled motion and the word probe into docs/diagnosis/RUN/
  local run=$1 weights=$RUNS/$1/version_0/weights.safetensors out=docs/diagnosis/$1
  [ -f "$out/metrics.json" ] || { oneforcing evaluate --checkpoint "$weights" --out "runs/diag/eval/$run" --label "$run" \
      && cp "runs/diag/eval/$run/metrics.json" "runs/diag/eval/$run/metrics.md" "$out/"; }
  [ -f "$out/motion.md" ] || { python benchmarks/sampled_motion.py --checkpoint "$weights" --count 64 \
      > "$out/motion.md.tmp" && mv "$out/motion.md.tmp" "$out/motion.md"; }
  [ -f "$out/word_use.md" ] || { python benchmarks/word_use.py --checkpoint "$weights" > "$out/word_use.md.tmp" \
      && mv "$out/word_use.md.tmp" "$out/word_use.md"; }
  mkdir -p "$out/events" && cp "$RUNS/$run"/version_0/events.out.tfevents.* "$out/events/" 2>/dev/null || true
}

for run in of_ffe1_from_ode1500 sf_dmd_4step_framewise_from_ode1500; do
  fit "$run"; measure "$run"
done
echo "CHAIN 13b DONE"
