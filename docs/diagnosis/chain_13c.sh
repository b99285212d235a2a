#!/usr/bin/env bash
# docs/diagnosis.md §13, third part: seed 1 of the two framewise students (their seed spread), resumable. Needs
# data/toy6 (docs/diagnosis/ode_init_lr1e-3/command.txt). Two cores, one run on each:
#   bash docs/diagnosis/chain_13c.sh of_ffe1_from_ode1500_seed1 & bash docs/diagnosis/chain_13c.sh sf_dmd_4step_framewise_from_ode1500_seed1
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
. docs/diagnosis/chain_lib.sh

for run in "$@"; do
  fit "$run"; measure "$run"
done
