/* cf_status.h: the two error channels of cincflow.
 *
 * Failures of the world (files, HDF5, memory, bad data, an arena that is too small) are returned
 * as a negative cf_status; the function that failed also leaves a message that names the file,
 * tensor or flag and says what was expected (cf_last_error(), or cf_ctx_error() for a context).
 * Programmer misuse (a NULL where a tensor is required, mismatched dtypes passed to a kernel)
 * trips CF_ASSERT, which prints the failed condition and aborts; the abort can be replaced by a
 * hook (tests use it to turn asserts into recoverable signals).
 *
 * This header does not allocate and holds no state beyond a thread-local message buffer.
 */
#ifndef CF_STATUS_H
#define CF_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X-macro: value name, number, short description. */
#define CF_STATUS_MAP(X)                                                                       \
    X(OK, 0, "success")                                                                        \
    X(ERR_NOMEM, -1, "out of memory")                                                          \
    X(ERR_ARENA, -2, "arena exhausted")                                                        \
    X(ERR_SHAPE, -3, "shape mismatch")                                                         \
    X(ERR_DTYPE, -4, "dtype mismatch")                                                         \
    X(ERR_ARG, -5, "invalid argument")                                                         \
    X(ERR_STATE, -6, "invalid state")                                                          \
    X(ERR_IO, -7, "input/output error")                                                        \
    X(ERR_FORMAT, -8, "malformed data")                                                        \
    X(ERR_NOT_FOUND, -9, "not found")                                                          \
    X(ERR_EXISTS, -10, "already exists")                                                       \
    X(ERR_NUMERIC, -11, "numerical failure")                                                   \
    X(ERR_GRADCHECK, -12, "gradient check failed")                                             \
    X(ERR_SINGULAR, -13, "not invertible")

typedef enum cf_status {
#define CF__STATUS_ENUM(name, num, text) CF_##name = num,
    CF_STATUS_MAP(CF__STATUS_ENUM)
#undef CF__STATUS_ENUM
} cf_status;

/* Short description of a status code ("arena exhausted"); never NULL. */
const char *cf_strerror(cf_status status);

/* The message of the last failure reported on this thread by a function without a context
 * (loaders, parameter sets, registry). Borrowed; valid until the next failure on this thread. */
const char *cf_last_error(void);

/* Records `status` and a printf-style message as this thread's last error; returns `status`
 * so a failing function can `return cf_set_error(CF_ERR_IO, "%s: ...", path);`. */
cf_status cf_set_error(cf_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- misuse ---------------------------------------------------------------------------- */

/* Called when an assertion fails; the default prints and aborts. A hook that returns makes
 * CF_ASSERT abort anyway, so a hook that wants to recover must longjmp or raise. */
typedef void (*cf_assert_hook)(const char *file, int line, const char *cond, const char *msg);

/* Replaces the assertion hook; NULL restores the default. Returns the previous hook. */
cf_assert_hook cf_set_assert_hook(cf_assert_hook hook);

void cf__assert_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

/* CF_ASSERT(cond, fmt, ...): programmer misuse. Always on (it guards memory safety). */
#define CF_ASSERT(cond, ...)                                                                   \
    do {                                                                                       \
        if (!(cond)) cf__assert_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                  \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
