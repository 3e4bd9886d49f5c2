/* cli_mpi.c: MPI for `cincflow train`, or its one-process stand-ins (see cli_mpi.h).
 *
 * Everything MPI in the project is in this file, under CF_HAVE_MPI. Buffers of f32 or f64 map
 * to MPI_FLOAT or MPI_DOUBLE; sums are MPI_SUM over MPI_COMM_WORLD.
 */
#include "cli_mpi.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef CF_HAVE_MPI
#include <mpi.h>

static bool initialised; /* by us: we finalise */

/* Started by a launcher: Open MPI's mpirun, PMIx (srun, prterun) or PMI (MPICH's hydra, srun). */
static bool launched(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

static bool running(void)
{
    int on = 0, off = 0;
    MPI_Initialized(&on);
    if (on) MPI_Finalized(&off);
    return on && !off;
}

cf_status cli_mpi_init(int *rank, int *size)
{
    *rank = 0, *size = 1;
    if (!running()) {
        if (!launched()) return CF_OK;
        int provided;
        /* Only the main thread calls MPI; OpenMP's threads never do. */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
            fprintf(stderr, "cincflow: MPI_Init failed\n");
            return CF_ERR_IO;
        }
        initialised = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return CF_OK;
}

void cli_mpi_finalize(void)
{
    if (initialised && running()) MPI_Finalize();
    initialised = false;
}

_Noreturn void cli_mpi_abort(int status)
{
    fflush(stdout);
    fflush(stderr);
    if (running()) MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

int cli_mpi_local_size(void)
{
    if (!running()) return 1;
    MPI_Comm local;
    int n = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) ==
        MPI_SUCCESS) {
        MPI_Comm_size(local, &n);
        MPI_Comm_free(&local);
    }
    return n;
}

static MPI_Datatype mpi_type(cf_dtype dtype)
{
    return dtype == CF_F64 ? MPI_DOUBLE : MPI_FLOAT;
}

cf_status cli_mpi_sum(void *buf, size_t n, cf_dtype dtype)
{
    if (!running()) return CF_OK;
    /* MPI counts are ints: a buffer of more than INT_MAX elements goes in pieces. */
    for (size_t done = 0; done < n;) {
        int count = n - done > INT_MAX ? INT_MAX : (int)(n - done);
        char *p = (char *)buf + done * cf_dtype_size(dtype);
        if (MPI_Allreduce(MPI_IN_PLACE, p, count, mpi_type(dtype), MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            return cf_set_error(CF_ERR_IO, "MPI_Allreduce of %zu values failed", n);
        done += (size_t)count;
    }
    return CF_OK;
}

cf_status cli_mpi_bcast(void *buf, size_t n, cf_dtype dtype)
{
    if (!running()) return CF_OK;
    for (size_t done = 0; done < n;) {
        int count = n - done > INT_MAX ? INT_MAX : (int)(n - done);
        char *p = (char *)buf + done * cf_dtype_size(dtype);
        if (MPI_Bcast(p, count, mpi_type(dtype), 0, MPI_COMM_WORLD) != MPI_SUCCESS)
            return cf_set_error(CF_ERR_IO, "MPI_Bcast of %zu values failed", n);
        done += (size_t)count;
    }
    return CF_OK;
}

#else /* one process */

cf_status cli_mpi_init(int *rank, int *size)
{
    *rank = 0, *size = 1;
    return CF_OK;
}

void cli_mpi_finalize(void) {}

_Noreturn void cli_mpi_abort(int status)
{
    fflush(stdout);
    fflush(stderr);
    exit(status);
}

int cli_mpi_local_size(void)
{
    return 1;
}

cf_status cli_mpi_sum(void *buf, size_t n, cf_dtype dtype)
{
    (void)buf, (void)n, (void)dtype;
    return CF_OK;
}

cf_status cli_mpi_bcast(void *buf, size_t n, cf_dtype dtype)
{
    (void)buf, (void)n, (void)dtype;
    return CF_OK;
}

#endif

cf_status cli_mpi_reduce(double *buf, size_t n, void *user)
{
    (void)user;
    return cli_mpi_sum(buf, n, CF_F64);
}
