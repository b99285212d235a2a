#!/usr/bin/env bash
# Multi-node training under SLURM: one task per GPU; Lightning reads SLURM's environment (docs/engines.md).
#   sbatch scripts/slurm_fit.sh configs/wan2.1/one_forcing_framewise.yaml [more CLI overrides]
#SBATCH --job-name=oneforcing
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --output=slurm-%j.out
set -euo pipefail
config=${1:?usage: sbatch scripts/slurm_fit.sh CONFIG [overrides...]}
shift
srun python -m oneforcing.cli fit --config "$config" --trainer.num_nodes "$SLURM_NNODES" \
  --trainer.devices "$SLURM_NTASKS_PER_NODE" "$@"
