/* cf_cpu.h: which instruction-set path the hand-written f32 kernels take.
 *
 * One build carries three versions of the hand-written kernels (the few-output-channel direct
 * convolution, the blocked transpose, the convolution epilogue, actnorm's backward loops...):
 * AVX-512 (F, BW, DQ and VL, with FMA), AVX2 with FMA, and plain C. The first call of any
 * function below (or of a kernel that needs the choice) picks one, once per process:
 *   - the best path the CPU and the operating system support (CPUID, and XGETBV for the
 *     register state the OS saves), or
 *   - the environment variable CF_ISA=avx512|avx2|generic, which forces a path. A request
 *     above what the CPU supports, or an unknown value, is not obeyed: a message on stderr
 *     names CF_ISA, what was asked and what runs instead (the best supported path).
 * libxsmm's JIT GEMMs choose their own target the same way (its LIBXSMM_TARGET variable, e.g.
 * LIBXSMM_TARGET=hsw for AVX2); cincflow does not change it.
 *
 * Nothing here allocates; the choice is process-wide state.
 */
#ifndef CF_CPU_H
#define CF_CPU_H

#include <stdbool.h>
#include <stddef.h>

#include "cf_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The kernel paths, in increasing order (a path runs on every CPU that runs a higher one). */
typedef enum cf_isa {
    CF_ISA_GENERIC = 0, /* plain C, compiled for the build's baseline (x86-64: SSE2) */
    CF_ISA_AVX2 = 1,    /* AVX2 and FMA */
    CF_ISA_AVX512 = 2,  /* AVX-512 F, BW, DQ and VL (and FMA) */
} cf_isa;
#define CF_ISA_COUNT 3

/* The best path this CPU and OS can run (detected once). */
cf_isa cf_cpu_isa_supported(void);

/* The path the kernels take now (chosen once at first use, from CF_ISA or the CPU). */
cf_isa cf_cpu_isa(void);

/* "avx512", "avx2" or "generic" (the names CF_ISA takes); "unknown" for other values. Static
 * string, never NULL. */
const char *cf_isa_name(cf_isa isa);

/* Parses a CF_ISA value ("avx512", "avx2", "generic"; case-sensitive). False when the text is
 * NULL or names no path. */
bool cf_isa_parse(const char *text, cf_isa *out);

/* The choice cf_cpu_isa makes for a CF_ISA value `request` (NULL or "": none) on a CPU whose
 * best path is `supported`: the requested path when it is known and not above `supported`,
 * else `supported`, with a message for stderr in why (`why_size` bytes, may be 0; "" when the
 * request was obeyed or absent). Pure: reads no environment, changes nothing. */
cf_isa cf_cpu_isa_choose(const char *request, cf_isa supported, char *why, size_t why_size);

/* For tests and benchmarks that compare paths: makes the kernels take `isa` from now on.
 * CF_ERR_ARG (with cf_last_error naming the path and the CPU's best) when `isa` is above
 * cf_cpu_isa_supported(); the path is then unchanged. Not to be called while kernels run on
 * other threads. libxsmm's own target is not changed. */
cf_status cf_cpu_set_isa(cf_isa isa);

/* The dispatch record: bit i is set once the kernels have been handed path i's code (the
 * per-path table of hand-written kernels) since the last reset, so a test can show that the
 * path it forced is the one that ran. Cheap: each bit is written once. */
unsigned cf_cpu_paths_used(void);
void cf_cpu_paths_used_reset(void);
/* For the kernels: notes that path isa's code is being used. */
void cf_cpu_note_path(cf_isa isa);

#ifdef __cplusplus
}
#endif

#endif
