#!/usr/bin/env bash
# The main job on the built-in default, in a few minutes on 2 CPU cores (run through `make demo`):
#   1. write a small toy world (400 train + 16 val videos, 32x32, 12 frames) as webdataset shards;
#   2. fine-tune the toy teacher for 40 steps through `oneforcing fit` (from the shipped weights
#      assets/toy_teacher.safetensors when they exist, else from scratch), logging to TensorBoard;
#   3. sample 4 prompts from the exported weights as GIFs and one as MP4.
# Everything goes under runs/demo/. Overrides: DEMO_DIR, DEMO_MAX_STEPS, DEMO_INIT_WEIGHTS. Expects `oneforcing`
# on PATH (the Makefile puts .venv/bin first).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-runs/demo}"
MAX_STEPS="${DEMO_MAX_STEPS:-40}"
INIT_WEIGHTS="${DEMO_INIT_WEIGHTS:-assets/toy_teacher.safetensors}"

echo "== 1/3 toy data -> $DEMO_DIR/data"
oneforcing data toy --out "$DEMO_DIR/data" --num-videos 400 --num-val-videos 16 --seed 0

init_args=()
if [[ -f "$INIT_WEIGHTS" ]]; then
  echo "== 2/3 fine-tuning the toy teacher from $INIT_WEIGHTS for $MAX_STEPS steps"
  init_args=(--model.init_args.init_weights "$INIT_WEIGHTS")
else
  echo "== 2/3 training the toy teacher for $MAX_STEPS steps from scratch"
  echo "   note: $INIT_WEIGHTS is not there yet, so the samples will be noise-like;"
  echo "   the full recipe is in configs/toy/teacher.yaml (about 1.5 h on 2 cores)."
fi
# The teacher config starts its EMA at step 200, and until an EMA starts, Lightning's EMAWeightAveraging
# validates with and exports the *initial* weights; a 40-step demo would show none of its training. So the
# demo layers its own callbacks over the config (a later --config replaces the list): EMA from step 0.
overrides="$DEMO_DIR/demo_overrides.yaml"
cat > "$overrides" <<'YAML'
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.RichProgressBar
    - class_path: oneforcing.callbacks.video_logging.SampleVideoLogger
    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging
      init_args:
        decay: 0.9
        update_starting_at_step: 0
    - class_path: oneforcing.callbacks.export.ExportWeights
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
YAML
oneforcing fit --config configs/toy/teacher.yaml --config "$overrides" \
  --data.init_args.root "$DEMO_DIR/data" \
  --data.init_args.val_samples 16 \
  --trainer.max_steps "$MAX_STEPS" \
  --trainer.val_check_interval 20 \
  --trainer.log_every_n_steps 5 \
  --trainer.logger.init_args.save_dir "$DEMO_DIR" \
  --trainer.logger.init_args.name teacher \
  --model.init_args.warmup_steps 10 \
  "${init_args[@]}"

# the newest version_N of this run (each `make demo` adds one)
version=$(ls -d "$DEMO_DIR"/teacher/version_* | sed 's/.*version_//' | sort -n | tail -n 1)
run_dir="$DEMO_DIR/teacher/version_$version"
weights="$run_dir/weights.safetensors"
[[ -f "$weights" ]] || { echo "error: $weights was not written" >&2; exit 1; }

echo "== 3/3 sampling from $weights"
rm -rf "$DEMO_DIR/samples"
oneforcing sample --checkpoint "$weights" --out "$DEMO_DIR/samples" --format gif \
  --prompt "a large red circle moving right slowly" \
  --prompt "a small blue square moving left quickly" \
  --prompt "a large yellow triangle moving down slowly" \
  --prompt "a small green circle moving up quickly and a large purple square moving left slowly"
oneforcing sample --checkpoint "$weights" --out "$DEMO_DIR/samples" --format mp4 \
  --prompt "a large red circle moving right slowly"

echo
echo "Done."
echo "  GIFs:        $(ls "$DEMO_DIR"/samples/*.gif | tr '\n' ' ')"
echo "  MP4:         $(ls "$DEMO_DIR"/samples/*.mp4 | tr '\n' ' ')"
echo "  weights:     $weights"
echo "  samples during training: $run_dir/samples/"
echo "  TensorBoard logs: $run_dir   (view with: tensorboard --logdir $DEMO_DIR)"
