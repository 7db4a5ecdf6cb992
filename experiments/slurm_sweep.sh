#!/bin/bash
# slurm_sweep.sh — a sweep spread over a Slurm job array: array task i runs shard i of n of the sweep's
# runs (knnd sweep reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT, so no --shard is needed), each
# on one node's cores; the runs share one results folder, and --resume skips the runs finished by an
# earlier submission. The summary over all shards: `knnd results runs/ablation_knn` once they are done.
#   sbatch experiments/slurm_sweep.sh
#SBATCH --job-name=knnd-sweep
#SBATCH --array=1-8
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=08:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# the testbed (CLIP, index, neighbour cache, judge) is built once, before the array runs:
#   knnd run experiments/quickstart.lua
knnd sweep experiments/ablation_knn.lua --resume --set seed=1,2,3,4 --set steps=1200
