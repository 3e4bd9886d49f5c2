/* consumer.c: a program outside the project that uses the installed library through
 * <cincflow/cincflow.h>: it builds a tiny graph, runs backward and checks the gradient. */
#include <cincflow/cincflow.h>
#include <math.h>
#include <stdio.h>

int main(void)
{
    cf_ctx *ctx = cf_ctx_new(0);
    cf_tensor *x = cf_tensor_new_v(ctx, CF_F64, 3);
    for (int i = 0; i < 3; i++) cf_tensor_set(x, i, i + 1.0);
    cf_tensor_requires_grad(ctx, x);
    cf_tensor *loss = cf_sum_all(ctx, cf_log(ctx, x)); /* d/dx = 1/x */
    int ok = cf_backward(ctx, loss) == CF_OK && fabs(cf_buf_get(CF_F64, x->grad, 2) - 1.0 / 3) < 1e-15;
    printf("cincflow %s: %s, %d ops registered\n", CF_VERSION_STRING, ok ? "ok" : "FAILED",
           cf_op_count());
    cf_ctx_free(ctx);
    return ok ? 0 : 1;
}
