#!/usr/bin/env bash
# The main job on the built-in default (run through `make demo`), about 15 minutes on 2 CPU cores:
#   1. write a small toy world as webdataset shards (400 train + 16 val videos, 32x32, 12 frames);
#   2. the shipped toy teacher (assets/toy_teacher.safetensors) samples ODE trajectories (48 Euler steps,
#      shift 5, CFG w = 4) at the student's warped 4-step times;
#   3. ODE init: the causal framewise student regresses onto them (trajectory distillation);
#   4. the three 1-step framewise students, each from the ODE init: Self-Forcing DMD, One-Forcing (DMD + GAN)
#      and causal consistency distillation;
#   5. a side-by-side GIF (rows: teacher at 48 steps, ODE init at 4 steps, then the three 1-step students) plus
#      per-method GIFs/MP4;
#   6. when the toy study's students are kept (docs/study/<method>_seed0/weights.safetensors), their side-by-side
#      GIF and the study's table over every kept seed.
# Everything goes under runs/demo/ with TensorBoard logs per stage. Overrides: DEMO_DIR, DEMO_TEACHER,
# DEMO_TRAJECTORIES, DEMO_ODE_STEPS, DEMO_DMD_STEPS (iterations of each 1-step student), DEMO_STUDY. Expects `oneforcing` on PATH (the Makefile does that).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-runs/demo}"
TEACHER="${DEMO_TEACHER:-assets/toy_teacher.safetensors}"
TRAJECTORIES="${DEMO_TRAJECTORIES:-128}"
ODE_STEPS="${DEMO_ODE_STEPS:-150}"
DMD_STEPS="${DEMO_DMD_STEPS:-80}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PROMPTS=("a large red circle moving right slowly" "a small blue square moving left quickly"
         "a large yellow triangle moving down slowly" "a large green square moving up quickly")

newest() { ls -d "$1"/version_* | sed 's/.*version_//' | sort -n | tail -n 1 | sed "s#^#$1/version_#"; }

echo "== 1/5 toy data -> $DEMO_DIR/data"
oneforcing data toy --out "$DEMO_DIR/data" --num-videos 400 --num-val-videos 16 --seed 0

if [[ ! -f "$TEACHER" ]]; then
  echo "== teacher weights $TEACHER are missing: training a 300-step stand-in (its samples will be poor);"
  echo "   the real recipe is configs/toy/teacher.yaml"
  oneforcing fit --config configs/toy/teacher.yaml --data.init_args.root "$DEMO_DIR/data" \
    --data.init_args.val_samples 16 --trainer.max_steps 300 --trainer.val_check_interval 300 \
    --trainer.logger.init_args.save_dir "$DEMO_DIR" --trainer.logger.init_args.name teacher
  TEACHER="$(newest "$DEMO_DIR/teacher")/weights.safetensors"
fi

echo "== 2/5 teacher ODE trajectories ($TRAJECTORIES videos) -> $DEMO_DIR/ode"
oneforcing data trajectories --teacher "$TEACHER" --source "$DEMO_DIR/data/train" --out "$DEMO_DIR/ode/train" \
  --num-videos "$TRAJECTORIES" --steps 48 --shift 5 --guidance-scale 4
oneforcing data trajectories --teacher "$TEACHER" --source "$DEMO_DIR/data/val" --out "$DEMO_DIR/ode/val" \
  --num-videos 8 --steps 48 --shift 5 --guidance-scale 4

echo "== 3/5 ODE init (framewise causal student), $ODE_STEPS iterations"
oneforcing fit --config configs/toy/ode_init_framewise.yaml --model.init_args.generator_weights "$TEACHER" \
  --data.init_args.root "$DEMO_DIR/ode" --trainer.max_steps "$ODE_STEPS" --trainer.val_check_interval "$ODE_STEPS" \
  --trainer.logger.init_args.save_dir "$DEMO_DIR" --trainer.logger.init_args.name ode_init
ODE="$(newest "$DEMO_DIR/ode_init")/weights.safetensors"

student() {  # config, run name: a 1-step student from the ODE init, against the teacher
  oneforcing fit --config "$1" --model.init_args.teacher_weights "$TEACHER" \
    --model.init_args.generator_weights "$ODE" --data.init_args.root "$DEMO_DIR/data" \
    --trainer.max_steps "$DMD_STEPS" --trainer.val_check_interval "$DMD_STEPS" \
    --trainer.logger.init_args.save_dir "$DEMO_DIR" --trainer.logger.init_args.name "$2"
}
echo "== 4/5 the 1-step students, $DMD_STEPS iterations each"
echo "-- Self-Forcing DMD (critic every iteration, generator every 5th)"
student configs/toy/self_forcing_dmd_1step.yaml sf_dmd_1step
echo "-- One-Forcing: DMD + GAN on the shared critic"
student configs/toy/one_forcing_framewise_1step.yaml one_forcing_1step
echo "-- causal consistency distillation (EMA target, teacher forcing)"
student configs/toy/consistency_1step.yaml consistency_1step
DMD="$(newest "$DEMO_DIR/sf_dmd_1step")/weights.safetensors"
OF="$(newest "$DEMO_DIR/one_forcing_1step")/weights.safetensors"
CD="$(newest "$DEMO_DIR/consistency_1step")/weights.safetensors"

echo "== 5/5 samples"
prompt_args=(); for p in "${PROMPTS[@]}"; do prompt_args+=(--prompt "$p"); done
python scripts/side_by_side.py --out "$DEMO_DIR/side_by_side.gif" \
  --checkpoint "teacher=$TEACHER" --checkpoint "ode_init=$ODE" --checkpoint "sf_dmd_1step=$DMD" \
  --checkpoint "one_forcing_1step=$OF" --checkpoint "consistency_1step=$CD" "${prompt_args[@]}"
rm -rf "$DEMO_DIR/samples"
oneforcing sample --checkpoint "$DMD" --out "$DEMO_DIR/samples/sf_dmd_1step" --format gif "${prompt_args[@]}"
oneforcing sample --checkpoint "$DMD" --out "$DEMO_DIR/samples/sf_dmd_1step" --format mp4 --prompt "${PROMPTS[0]}"
oneforcing sample --checkpoint "$OF" --out "$DEMO_DIR/samples/one_forcing_1step" --format gif "${prompt_args[@]}"
oneforcing sample --checkpoint "$CD" --out "$DEMO_DIR/samples/consistency_1step" --format gif "${prompt_args[@]}"
oneforcing sample --checkpoint "$TEACHER" --out "$DEMO_DIR/samples/teacher" --format gif "${prompt_args[@]}"

# 6. the study's students (scripts/toy_study.py: 1000 iterations each, kept under docs/study), when they are there
STUDY="${DEMO_STUDY:-docs/study}"
study_rows=()
for w in "$STUDY"/*_seed0/weights.safetensors; do
  [[ -f "$w" ]] && { run="$(basename "$(dirname "$w")")"; study_rows+=(--checkpoint "${run%_seed0}=$w"); }
done
if (( ${#study_rows[@]} )); then
  echo "== 6 the study's seed-0 students, side by side; its table over every kept seed"
  python scripts/side_by_side.py --out "$DEMO_DIR/study_side_by_side.gif" --checkpoint "teacher=$TEACHER" \
    "${study_rows[@]}" "${prompt_args[@]}"
  oneforcing compare "$STUDY" --out "$DEMO_DIR/study_report"
fi

echo
echo "Done."
echo "  side by side (rows: teacher 48 steps, ODE init 4 steps, then 1 step: Self-Forcing DMD, One-Forcing, consistency):"
echo "    $DEMO_DIR/side_by_side.gif"
echo "  per-method GIFs/MP4: $DEMO_DIR/samples/"
echo "  weights: ODE init $ODE, Self-Forcing DMD $DMD, One-Forcing $OF, consistency $CD"
echo "  TensorBoard logs: $DEMO_DIR/<stage>/version_N   (view with: tensorboard --logdir $DEMO_DIR)"
if (( ${#study_rows[@]} )); then
  echo "  the study's students (each reproduced by the command in $STUDY/<run>/command.txt):"
  echo "    $DEMO_DIR/study_side_by_side.gif, table $DEMO_DIR/study_report/report.md"
fi
