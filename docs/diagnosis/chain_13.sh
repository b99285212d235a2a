#!/usr/bin/env bash
# docs/diagnosis.md §13, resumable: each step is skipped when its output exists; a fit resumes from its last.ckpt.
# Needs data/toy6 and runs/diag/ode_ar (docs/diagnosis/ode_init_lr1e-3/command.txt). One core:
#   OMP_NUM_THREADS=1 bash docs/diagnosis/chain_13.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
. docs/diagnosis/chain_lib.sh

# the baseline: the framewise 1500-iteration init sampled in the students' layouts (it never trained in them)
base=docs/diagnosis/ode_init_lr1e-3/at1500
for layout in "ffe --first-block-size 2" "chunk3 --block-size 3"; do
  set -- $layout
  [ -f $base/motion_$1_layout.md ] || { python benchmarks/sampled_motion.py --checkpoint assets/toy_ode_init.safetensors \
      --count 64 "$2" "$3" > $base/motion_$1_layout.md.tmp && mv $base/motion_$1_layout.md.tmp $base/motion_$1_layout.md; }
done

for pair in "ode_init_ffe_layout of_ffe_from_ffe_layout" "ode_init_chunk3_layout sf_dmd_4step_from_chunk3_layout"; do
  set -- $pair
  fit "$1"; measure "$1"
  fit "$2"; measure "$2"
done
echo "CHAIN 13 DONE"
