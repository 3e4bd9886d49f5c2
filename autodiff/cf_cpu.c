/* cf_cpu.c: CPU detection and the process-wide choice of kernel path (see cf_cpu.h).
 *
 * Detection runs once (pthread_once): CPUID through GCC's __builtin_cpu_supports, plus the
 * OS's XGETBV word, so a path is only taken when the OS saves its registers (YMM state for
 * AVX2, opmask and ZMM state for AVX-512). The kernels read the choice through cf_cpu_isa()
 * (one load after the first call), never CPUID.
 *
 * Not here: the kernels and their tables (ops/cf_simd_impl.h).
 */
#include "cf_cpu.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define CF_CPU_X86 1
#endif

static const char *const names[CF_ISA_COUNT] = {"generic", "avx2", "avx512"};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static cf_isa supported_isa = CF_ISA_GENERIC;
static volatile int current_isa = CF_ISA_GENERIC;

#ifdef CF_CPU_X86
/* The OS-enabled register state (XCR0), or 0 when the OS does not enable XSAVE. */
static unsigned long long os_xcr0(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (unsigned long long)hi << 32 | lo;
}
#endif

static cf_isa detect(void)
{
#ifdef CF_CPU_X86
    __builtin_cpu_init();
    const unsigned long long xcr0 = os_xcr0();
    const bool ymm = (xcr0 & 0x6) == 0x6;      /* SSE and AVX state */
    const bool zmm = (xcr0 & 0xe6) == 0xe6;    /* and opmask, ZMM0-15 upper, ZMM16-31 */
    const bool avx2 = ymm && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && zmm && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return CF_ISA_AVX512;
    if (avx2) return CF_ISA_AVX2;
#endif
    return CF_ISA_GENERIC;
}

static void init(void)
{
    supported_isa = detect();
    char why[256];
    current_isa = cf_cpu_isa_choose(getenv("CF_ISA"), supported_isa, why, sizeof why);
    if (why[0]) fprintf(stderr, "cincflow: %s\n", why);
}

cf_isa cf_cpu_isa_supported(void)
{
    pthread_once(&once, init);
    return supported_isa;
}

cf_isa cf_cpu_isa(void)
{
    pthread_once(&once, init);
    return (cf_isa)current_isa;
}

const char *cf_isa_name(cf_isa isa)
{
    return (unsigned)isa < CF_ISA_COUNT ? names[isa] : "unknown";
}

bool cf_isa_parse(const char *text, cf_isa *out)
{
    for (int i = 0; text && i < CF_ISA_COUNT; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = (cf_isa)i;
            return true;
        }
    return false;
}

cf_isa cf_cpu_isa_choose(const char *request, cf_isa supported, char *why, size_t why_size)
{
    if (why_size) why[0] = '\0';
    if (!request || !*request) return supported;
    cf_isa want;
    if (!cf_isa_parse(request, &want)) {
        if (why_size)
            snprintf(why, why_size, "CF_ISA='%s' is not one of avx512, avx2, generic; using %s "
                     "(the best this CPU supports)", request, cf_isa_name(supported));
        return supported;
    }
    if (want > supported) {
        if (why_size)
            snprintf(why, why_size, "CF_ISA=%s is above what this CPU supports (%s); using %s",
                     request, cf_isa_name(supported), cf_isa_name(supported));
        return supported;
    }
    return want;
}

cf_status cf_cpu_set_isa(cf_isa isa)
{
    pthread_once(&once, init);
    if ((unsigned)isa >= CF_ISA_COUNT || isa > supported_isa)
        return cf_set_error(CF_ERR_ARG, "cf_cpu_set_isa: path %s (%d) is not available; this "
                            "CPU supports up to %s", cf_isa_name(isa), (int)isa,
                            cf_isa_name(supported_isa));
    current_isa = isa;
    return CF_OK;
}

/* One flag per path, written only when it changes, so kernels on many threads do not share a
 * written cache line. */
static volatile int path_used[CF_ISA_COUNT];

void cf_cpu_note_path(cf_isa isa)
{
    if ((unsigned)isa < CF_ISA_COUNT && !path_used[isa]) path_used[isa] = 1;
}

unsigned cf_cpu_paths_used(void)
{
    unsigned bits = 0;
    for (int i = 0; i < CF_ISA_COUNT; i++) bits |= path_used[i] ? 1u << i : 0;
    return bits;
}

void cf_cpu_paths_used_reset(void)
{
    for (int i = 0; i < CF_ISA_COUNT; i++) path_used[i] = 0;
}
