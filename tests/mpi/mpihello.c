/* mpihello: the MPI program of berth's multi-node tests (tests/slurm.rs)
 * and benchmark (bench/mpi.sh).
 *
 * Every rank checks an MPI_Allreduce (the sum of all ranks) and a ring of
 * point-to-point messages (each rank sends its rank to the next and must
 * receive the previous one's), then prints one line:
 *
 *   mpihello rank R of N node NODE uid U sum S ring L ok
 *
 * and exits 0; any wrong value prints "... FAIL ..." and exits 1, so a
 * test can count the ok lines.  `--loop K` then times K more allreduces
 * and rank 0 prints "mpihello loop K seconds T".  NODE is Slurm's node
 * name (SLURMD_NODENAME), else the processor name.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank, size, sum = 0, left = -1, loops = 0, len = 0;
  char proc[MPI_MAX_PROCESSOR_NAME] = "";
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], "--loop") == 0) loops = atoi(argv[i + 1]);

  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(proc, &len);
  const char *node = getenv("SLURMD_NODENAME");
  if (node == NULL || *node == '\0') node = proc;

  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Sendrecv(&rank, 1, MPI_INT, (rank + 1) % size, 7, &left, 1, MPI_INT,
               (rank + size - 1) % size, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  int ok = sum == size * (size - 1) / 2 && left == (rank + size - 1) % size;
  printf("mpihello rank %d of %d node %s uid %u sum %d ring %d %s\n", rank, size,
         node, (unsigned)getuid(), sum, left, ok ? "ok" : "FAIL");
  fflush(stdout);

  if (loops > 0) {
    double x = 1.0, y = 0.0;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < loops; i++)
      MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double t = MPI_Wtime() - t0;
    if (y != (double)size) ok = 0;
    if (rank == 0) {
      printf("mpihello loop %d seconds %.6f\n", loops, t);
      fflush(stdout);
    }
  }
  MPI_Finalize();
  return ok ? 0 : 1;
}
