/* simd_generic.c: the plain C path of the hand-written kernels (cf_simd_impl.h), compiled for
 * the build's baseline; it has no direct few-output-channel kernel (the drivers then take a
 * GEMM form). Also the table lookup.
 */
#include "simd_loops_impl.h"

const cf__simd cf__simd_generic = {
    .isa = CF_ISA_GENERIC,
    .transpose = loops_transpose,
    .finish_rows = loops_finish_rows,
    .im2col_row = loops_im2col_row,
    .actnorm_rows_fwd = loops_actnorm_rows_fwd,
    .actnorm_rows_bwd = loops_actnorm_rows_bwd,
    .few_lanes = 0,
};

const cf__simd *cf__simd_for(cf_isa isa)
{
    const cf__simd *t = isa == CF_ISA_AVX512 ? &cf__simd_avx512
                        : isa == CF_ISA_AVX2 ? &cf__simd_avx2
                                             : &cf__simd_generic;
    cf_cpu_note_path(t->isa); /* the dispatch record: the table's own path */
    return t;
}
