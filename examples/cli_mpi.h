/* cli_mpi.h: the few MPI calls data-parallel `cincflow train` makes, with single-process
 * stand-ins, so cli_train.c reads the same with or without MPI.
 *
 * Built with MPI (CF_HAVE_MPI, CMake's CF_MPI), MPI is initialised only when the process was
 * started by a launcher (mpirun, mpiexec, srun: its environment says so); a plain
 * `cincflow train` stays one process and never touches MPI, exactly as a build without it.
 * Built without MPI, every call below is the one-process identity.
 *
 * Errors: MPI's default handler (errors are fatal) stays in force, so a failed exchange or a
 * peer that died ends the whole job instead of leaving the others waiting; cli_mpi_abort ends
 * it on purpose after a failure only one rank saw.
 *
 * Not here: the library itself, which never links MPI (it takes a reducer callback, see
 * cf_flow_set_reducer).
 */
#ifndef CF_CLI_MPI_H
#define CF_CLI_MPI_H

#include <stdbool.h>
#include <stddef.h>

#include "cincflow.h"

/* Initialises MPI when launched by mpirun (once per process; later calls only report) and
 * gives this process's rank and the number of ranks (0 and 1 otherwise). Returns CF_OK, or
 * CF_ERR_IO with a message on stderr when MPI_Init failed. */
cf_status cli_mpi_init(int *rank, int *size);
/* Finalises MPI if cli_mpi_init initialised it; a no-op otherwise. */
void cli_mpi_finalize(void);
/* Ends every rank of the job with this exit status (MPI_Abort), or exits this process when
 * there is no MPI job. */
_Noreturn void cli_mpi_abort(int status);
/* Ranks of the job on this machine (MPI_COMM_TYPE_SHARED), 1 without MPI. */
int cli_mpi_local_size(void);

/* Sums buf (n elements of dtype, f32 or f64) over the ranks, in place (MPI_IN_PLACE): one
 * MPI_Allreduce for up to INT_MAX elements. */
cf_status cli_mpi_sum(void *buf, size_t n, cf_dtype dtype);
/* The same on doubles, as a cf_reduce_fn for cf_flow_set_reducer (user unused). */
cf_status cli_mpi_reduce(double *buf, size_t n, void *user);
/* Copies rank 0's buf (n elements of dtype) to every rank. */
cf_status cli_mpi_bcast(void *buf, size_t n, cf_dtype dtype);

#endif
