/* cf_status.c: status strings, the thread's last error message and the assertion hook. */
#include "cf_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *cf_strerror(cf_status status)
{
    switch (status) {
#define CF__STATUS_CASE(name, num, text)                                                       \
    case CF_##name:                                                                            \
        return text;
        CF_STATUS_MAP(CF__STATUS_CASE)
#undef CF__STATUS_CASE
    }
    return "unknown status";
}

const char *cf_last_error(void)
{
    return last_error[0] ? last_error : "no error";
}

cf_status cf_set_error(cf_status status, const char *fmt, ...)
{
    /* Format aside first: the arguments may include cf_last_error() itself. */
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof msg);
    return status;
}

static cf_assert_hook assert_hook;

cf_assert_hook cf_set_assert_hook(cf_assert_hook hook)
{
    cf_assert_hook old = assert_hook;
    assert_hook = hook;
    return old;
}

void cf__assert_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (assert_hook) assert_hook(file, line, cond, msg);
    fprintf(stderr, "cincflow: %s:%d: assertion failed: %s: %s\n", file, line, cond, msg);
    fflush(stderr);
    abort();
}
