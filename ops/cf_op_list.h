/* cf_op_list.h: the built-in ops, one X-macro entry each: X(ENUM, name). Each entry names a
 * definition `cf__op_<name>` in ops/<name>.c (or a file of related ops), registered at first
 * use of the registry in this order. Adding a built-in op is one line here plus its file. */
#ifndef CF_OP_LIST_H
#define CF_OP_LIST_H

#define CF_OP_LIST(X)                                                                        \
    X(ADD, add) \
    X(SUB, sub) \
    X(MUL, mul) \
    X(DIV, div) \
    X(SCALE, scale) \
    X(EXP, exp) \
    X(LOG, log) \
    X(SIGMOID, sigmoid) \
    X(LOG_SIGMOID, log_sigmoid) \
    X(RELU, relu) \
    X(SOFTPLUS, softplus) \
    X(TANH, tanh) \
    X(SUM, sum) \
    X(MEAN, mean) \
    X(CONCAT, concat) \
    X(SPLIT, split) \
    X(RESHAPE, reshape) \
    X(MATMUL, matmul) \
    X(GAUSSIAN_LOGP, gaussian_logp) \
    X(ACTNORM, actnorm) \
    X(AFFINE_COUPLING, affine_coupling) \
    X(QUAD_COUPLING, quad_coupling) \
    X(CONV2D, conv2d) \
    X(CONV2D_ACTNORM, conv2d_actnorm) \
    X(CONV_LOGDET, conv_logdet) \
    X(SQUEEZE, squeeze) \
    X(UNSQUEEZE, unsqueeze)

/* Enum of built-in ops: CF_OP_ADD, CF_OP_SUB, ... with CF_OP_BUILTIN_COUNT last. */
#define CF__OP_ENUM(upper, name) CF_OP_##upper,
enum cf_builtin_op { CF_OP_LIST(CF__OP_ENUM) CF_OP_BUILTIN_COUNT };
#undef CF__OP_ENUM

#endif
