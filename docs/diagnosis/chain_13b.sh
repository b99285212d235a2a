#!/usr/bin/env bash
# docs/diagnosis.md §13, second part (framewise students: every block in the layout the init learned), resumable:
# each step is skipped when its output exists; a fit resumes from its last.ckpt. Needs data/toy6 (its command:
# docs/diagnosis/ode_init_lr1e-3/command.txt). One core:
#   OMP_NUM_THREADS=1 bash docs/diagnosis/chain_13b.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
. docs/diagnosis/chain_lib.sh

for run in of_ffe1_from_ode1500 sf_dmd_4step_framewise_from_ode1500; do
  fit "$run"; measure "$run"
done
echo "CHAIN 13b DONE"
