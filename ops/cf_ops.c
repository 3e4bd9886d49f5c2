/* cf_ops.c: registers the built-in ops, in the order of cf_op_list.h, through the same checks
 * as a user's op. Called once by the registry on its first use. */
#include <assert.h>

#include "cf_autodiff_impl.h"
#include "cf_ops.h"

#define CF__OP_ADDR(upper, name) &cf__op_##name,
static const cf_op_def *const builtins[] = {CF_OP_LIST(CF__OP_ADDR)};
#undef CF__OP_ADDR

static_assert(sizeof builtins / sizeof builtins[0] == CF_OP_BUILTIN_COUNT,
              "cf_op_list.h and the built-in table disagree");

void cf__register_builtins(void)
{
    for (int i = 0; i < CF_OP_BUILTIN_COUNT; i++) {
        cf_status st = cf__op_register_builtin(builtins[i]);
        CF_ASSERT(st == CF_OK, "built-in op '%s' refused: %s", builtins[i]->name, cf_last_error());
    }
}
