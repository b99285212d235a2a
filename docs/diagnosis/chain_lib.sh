# The helpers of the diagnosis chains (sourced by chain_13.sh, chain_13b.sh): train a run to its end, resuming
# from its last checkpoint, and measure its final weights into docs/diagnosis/<run>/.
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
