/* mpi_allreduce_probe.c — Open MPI's blocking MPI_Allreduce against the non-blocking MPI_Iallreduce that
 * knnd.dist uses (for its deadlines and the overlap with the backward), on the same buffer: 64 MiB of
 * f32 summed in place, the median of 5 after one warm-up, printed by rank 0. Built and run by run.sh
 * with mpicc; not part of knnd.
 *   mpicc -O2 mpi_allreduce_probe.c -o probe && mpirun -np 2 ./probe */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const int n = 16 << 20;
  float *buf = malloc((size_t)n * sizeof *buf);
  for (int i = 0; i < n; i++) buf[i] = 1.0f;
  double blocking[6], nonblocking[6];
  for (int k = 0; k < 6; k++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    blocking[k] = (MPI_Wtime() - t0) * 1e3;
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Request r;
    t0 = MPI_Wtime();
    MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
    MPI_Wait(&r, MPI_STATUS_IGNORE);
    nonblocking[k] = (MPI_Wtime() - t0) * 1e3;
  }
  qsort(blocking + 1, 5, sizeof(double), cmp);
  qsort(nonblocking + 1, 5, sizeof(double), cmp);
  if (rank == 0)
    printf("RESULT impl=mpi mode=allreduce_probe ranks=%d mib=64 blocking_ms=%.1f nonblocking_ms=%.1f\n", size,
           blocking[3], nonblocking[3]);
  free(buf);
  MPI_Finalize();
  return 0;
}
