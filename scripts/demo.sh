#!/usr/bin/env bash
# The main job on the built-in default (run through `make demo`), about 7 minutes on 2 CPU cores. The toy study's
# pipeline (scripts/toy_study.py) at a small scale, then the study's own students:
#   1. a small toy world as webdataset shards (400 train + 16 val videos of 6 frames, 32x32, one object on flat);
#   2. ODE trajectories of the exact teacher (the closed-form posterior mean over a bank of the world's videos):
#      48 Euler steps, shift 5, snapshots at the student's warped 4-step times;
#   3. ODE init: the framewise causal student regresses onto them, from the neural teacher's weights;
#   4. three 1-step framewise students from that init, the exact teacher as the real score, the critic from the
#      neural teacher: Self-Forcing DMD, One-Forcing (DMD + GAN) and causal consistency distillation; each
#      evaluated (FD, sharpness, dynamics, attributes, precision/coverage against the bank) and a report written;
#   5. a side-by-side GIF (rows: the world's own videos, the ODE init at 4 steps, the three 1-step students) and
#      the One-Forcing student's GIF/MP4 through `oneforcing sample`;
#   6. when the toy study's students are kept (assets/study/<method>_seed0.safetensors: 1000 iterations
#      each), their side-by-side GIF and the study's table over every kept seed.
# Everything goes under runs/demo/ with TensorBoard logs per run. Overrides: DEMO_DIR, DEMO_TEACHER,
# DEMO_TRAJECTORIES, DEMO_ODE_STEPS, DEMO_STUDENT_STEPS (iterations of each 1-step student), DEMO_STUDY, DEMO_STUDY_WEIGHTS.
# Expects `oneforcing` on PATH (the Makefile does that).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-runs/demo}"
TEACHER="${DEMO_TEACHER:-assets/toy_teacher.safetensors}"
TRAJECTORIES="${DEMO_TRAJECTORIES:-128}"
ODE_STEPS="${DEMO_ODE_STEPS:-100}"
STUDENT_STEPS="${DEMO_STUDENT_STEPS:-100}"
METHODS=(sf_dmd_1step of_framewise_1step consistency_1step)
PROMPTS=("a large red circle moving right slowly" "a small blue square moving left quickly"
         "a large yellow triangle moving down slowly" "a large green square moving up quickly")
start=$SECONDS
elapsed() { echo "   ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s so far)"; }

newest() { ls -d "$1"/version_* | sed 's/.*version_//' | sort -n | tail -n 1 | sed "s#^#$1/version_#"; }

echo "== 1/6 toy data -> $DEMO_DIR/data"
OMP_NUM_THREADS=2 oneforcing data toy --out "$DEMO_DIR/data" --num-videos 400 --num-val-videos 16 --num-frames 6 \
  --seed 0
elapsed

if [[ ! -f "$TEACHER" ]]; then
  echo "== teacher weights $TEACHER are missing: training a 300-step stand-in (the critic's and the ODE init's"
  echo "   start; the real recipe is configs/toy/teacher.yaml)"
  OMP_NUM_THREADS=2 oneforcing fit --config configs/toy/teacher.yaml --data.init_args.root "$DEMO_DIR/data" \
    --data.init_args.val_samples 16 --trainer.max_steps 300 \
    --trainer.val_check_interval 300 --trainer.logger.init_args.save_dir "$DEMO_DIR" \
    --trainer.logger.init_args.name teacher
  TEACHER="$(newest "$DEMO_DIR/teacher")/weights.safetensors"
fi

echo "== 2-4/6 exact-teacher trajectories ($TRAJECTORIES videos), ODE init ($ODE_STEPS iterations), the 1-step"
echo "   students ($STUDENT_STEPS iterations each, two at a time on one thread each), their evaluation and report"
python scripts/toy_study.py --data "$DEMO_DIR/data" --teacher "$TEACHER" --out "$DEMO_DIR/work" \
  --results "$DEMO_DIR/results" --artifacts "$DEMO_DIR/weights" --methods "${METHODS[@]}" --seeds 0 \
  --iterations "$STUDENT_STEPS" \
  --ode-iterations "$ODE_STEPS" --trajectories "$TRAJECTORIES" --eval-every 50 --eval-videos 8 --final-videos 16 \
  --jobs 2
elapsed

echo "== 5/6 samples"
export OMP_NUM_THREADS=2
prompt_args=(); for p in "${PROMPTS[@]}"; do prompt_args+=(--prompt "$p"); done
rows=(--checkpoint world=world --checkpoint "ode_init=$DEMO_DIR/weights/ode_init.safetensors")
for m in "${METHODS[@]}"; do rows+=(--checkpoint "$m=$DEMO_DIR/weights/${m}_seed0.safetensors"); done
python scripts/side_by_side.py --out "$DEMO_DIR/side_by_side.gif" "${rows[@]}" "${prompt_args[@]}"
OF="$DEMO_DIR/weights/of_framewise_1step_seed0.safetensors"
rm -rf "$DEMO_DIR/samples"
oneforcing sample --checkpoint "$OF" --out "$DEMO_DIR/samples/one_forcing_1step" --format gif "${prompt_args[@]}"
oneforcing sample --checkpoint "$OF" --out "$DEMO_DIR/samples/one_forcing_1step" --format mp4 --prompt "${PROMPTS[0]}"
elapsed

# 6. the study's students (scripts/toy_study.py: 1000 iterations each; weights kept under assets/study, their
#    evaluations under docs/study), when they are there
STUDY="${DEMO_STUDY:-docs/study}"
STUDY_WEIGHTS="${DEMO_STUDY_WEIGHTS:-assets/study}"
study_rows=()
for run in ode_init sf_dmd_4step_seed0 sf_dmd_1step_seed0 of_framewise_1step_seed0 of_framewise_1step_ffe_seed0 \
           of_chunkwise_1step_seed0 of_chunkwise_1step_ffe_seed0 consistency_1step_seed0; do
  w="$STUDY_WEIGHTS/$run.safetensors"
  [[ -f "$w" ]] && study_rows+=(--checkpoint "${run%_seed0}=$w")
done
if (( ${#study_rows[@]} )); then
  echo "== 6/6 the study's seed-0 students, side by side; its table over every kept seed"
  python scripts/side_by_side.py --out "$DEMO_DIR/study_side_by_side.gif" --checkpoint world=world \
    "${study_rows[@]}" "${prompt_args[@]}"
  oneforcing compare "$STUDY" --out "$DEMO_DIR/study_report"
  elapsed
fi

echo
echo "Done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s."
echo "  side by side (rows: the world's videos, ODE init at 4 steps, then 1 step: Self-Forcing DMD, One-Forcing,"
echo "  consistency): $DEMO_DIR/side_by_side.gif"
echo "  each run's evaluation (metrics.md, samples.gif) in $DEMO_DIR/results/<run>/ (weights: $DEMO_DIR/weights/), the report (table, learning"
echo "  curves, claims) in $DEMO_DIR/results/report/; One-Forcing's GIFs/MP4: $DEMO_DIR/samples/"
echo "  TensorBoard logs: $DEMO_DIR/work/runs/<run>/version_0   (view with: tensorboard --logdir $DEMO_DIR/work/runs)"
echo "  watch a student live in the browser (prompts switchable mid-stream; Ctrl+C stops):"
echo "    oneforcing serve --checkpoint $OF    then open http://127.0.0.1:8000/"
if (( ${#study_rows[@]} )); then
  echo "  the study's students (each reproduced by the command in $STUDY/<run>/command.txt):"
  echo "    $DEMO_DIR/study_side_by_side.gif, table $DEMO_DIR/study_report/report.md, curves $STUDY/report/curves.png"
fi
