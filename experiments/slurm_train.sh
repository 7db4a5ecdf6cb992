#!/bin/bash
# slurm_train.sh — data-parallel training on a Slurm cluster: one knnd process per GPU (or per group
# of cores), all of them ranks of one MPI job started by srun; knnd.dist finds the ranks from the
# launcher's environment, splits every batch over them and averages the gradients; rank 0 writes the
# checkpoint, log and samples. A job that stops (time limit, a failed node) resumes from the last
# checkpoint when submitted again.
#   sbatch experiments/slurm_train.sh                 # then: tail -f logs/knnd-train-<jobid>.out
#SBATCH --job-name=knnd-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# a rank that stops answering fails the others after this many seconds (knnd/dist.h)
export KNND_DIST_TIMEOUT=${KNND_DIST_TIMEOUT:-900}
# srun starts the ranks (PMIx or PMI2, as the cluster's Open MPI was built); mpirun works the same
srun --mpi="${KNND_SRUN_MPI:-pmix}" knnd run experiments/train_dist.lua --set testbed=runs/quickstart \
  --set out=runs/dist-"$SLURM_NTASKS" --set batch=$((16 * SLURM_NTASKS)) --set steps=2000
