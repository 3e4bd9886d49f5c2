/* fuzz_cli.c: the command-line tool's table-driven flag parser (examples/cli.c, cli_parse)
 * on an argv made of the input: the bytes are cut at every NUL into at most 48 arguments.
 *
 * The table holds a flag of every kind with the ranges the commands use (the model flags of
 * cli_model_flags, train's integers and numbers, a string, a bool, two choices). When the
 * parser accepts, every value it stored must lie in its flag's range, strings must be
 * arguments of argv, and the model derived from the flags must give a finite activation
 * estimate; "--help" must lead to a usage text. The parser's own messages go to stderr.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fuzz_common.h"

#define MAX_ARGS 48

typedef struct values {
    cli_model model;
    int64_t steps, batch, seed, warmup, count;
    double lr, beta2, temperature, minutes;
    const char *data;
    bool json;
    int optimizer, dequant;
} values;

static int make_table(cli_flag *f, values *v)
{
    int n = cli_model_flags(f, &v->model);
    f[n++] = (cli_flag){"--steps", CLI_INT, &v->steps, 1, 1e12, NULL, "steps"};
    f[n++] = (cli_flag){"--batch", CLI_INT, &v->batch, 1, 65536, NULL, "batch"};
    f[n++] = (cli_flag){"--seed", CLI_INT, &v->seed, 0, 9.2e18, NULL, "seed"};
    f[n++] = (cli_flag){"--warmup", CLI_INT, &v->warmup, 0, 1e9, NULL, "warmup"};
    f[n++] = (cli_flag){"-n", CLI_INT, &v->count, 1, 100000, NULL, "images"};
    f[n++] = (cli_flag){"--lr", CLI_DOUBLE, &v->lr, 1e-12, 10, NULL, "learning rate"};
    f[n++] = (cli_flag){"--beta2", CLI_DOUBLE, &v->beta2, 0, 0.999999999, NULL, "beta2"};
    f[n++] = (cli_flag){"--temperature", CLI_DOUBLE, &v->temperature, 0, 100, NULL, "T"};
    f[n++] = (cli_flag){"--minutes", CLI_DOUBLE, &v->minutes, 0.001, 1e7, NULL, "minutes"};
    f[n++] = (cli_flag){"--data", CLI_STRING, &v->data, 0, 0, NULL, "data set"};
    f[n++] = (cli_flag){"--json", CLI_BOOL, &v->json, 0, 0, NULL, "JSON"};
    f[n++] = (cli_flag){"--optimizer", CLI_CHOICE, &v->optimizer, 0, 0, "adam|adamw|adamax", "o"};
    f[n++] = (cli_flag){"--dequant", CLI_CHOICE, &v->dequant, 0, 0, "uniform|midpoint", "d"};
    return n;
}

static bool in_argv(const char *s, char **argv, int argc)
{
    for (int i = 0; i < argc; i++)
        if (s == argv[i]) return true;
    return false;
}

int cf_fuzz_cli(const uint8_t *data, size_t size)
{
    /* A NUL-terminated copy; every NUL ends an argument. */
    char *text = malloc(size + 1);
    CF_FUZZ_CHECK(text, "out of memory");
    memcpy(text, data, size);
    text[size] = '\0';
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    for (size_t at = 0; at < size && argc < MAX_ARGS; at += strlen(text + at) + 1)
        argv[argc++] = text + at;
    argv[argc] = NULL;

    values v = {.model = cli_model_defaults(),
                .steps = 1,
                .batch = 1,
                .count = 1,
                .lr = 1e-3,
                .minutes = 1};
    cli_flag flags[32];
    int n_flags = make_table(flags, &v);
    int rc = cli_parse("fuzz", argc, argv, flags, n_flags);
    cf_fuzz_accepted = rc == 0;
    CF_FUZZ_CHECK(rc == 0 || rc == 2 || rc == -1, "cli_parse returned %d", rc);
    cf_fuzz_report("%d arguments: cli_parse returned %d", argc, rc);
    if (rc == -1) {
        FILE *null = fopen("/dev/null", "w");
        if (null) {
            cli_usage(null, "fuzz", "[flags]", flags, n_flags);
            fclose(null);
        }
    }
    if (rc == 0) {
        for (int k = 0; k < n_flags; k++) {
            const cli_flag *f = &flags[k];
            if (f->kind == CLI_INT) {
                int64_t x = *(const int64_t *)f->dst;
                CF_FUZZ_CHECK((double)x >= f->min && (double)x <= f->max, "%s = %lld", f->name,
                              (long long)x);
            } else if (f->kind == CLI_DOUBLE) {
                double x = *(const double *)f->dst;
                CF_FUZZ_CHECK(isfinite(x) && x >= f->min && x <= f->max, "%s = %g", f->name, x);
            } else if (f->kind == CLI_SHAPE) {
                const int64_t *s = f->dst;
                CF_FUZZ_CHECK(s[0] >= 1 && s[0] <= 16384 && s[1] >= 1 && s[1] <= 16384 &&
                                  s[2] >= 1 && s[2] <= 4,
                              "%s = %lldx%lldx%lld", f->name, (long long)s[0], (long long)s[1],
                              (long long)s[2]);
            }
        }
        CF_FUZZ_CHECK(v.model.coupling >= 0 && v.model.coupling < 2 && v.model.conv >= 0 &&
                          v.model.conv < 3 && v.optimizer >= 0 && v.optimizer < 3 &&
                          v.dequant >= 0 && v.dequant < 2,
                      "a choice out of range");
        CF_FUZZ_CHECK(!v.data || (v.data[0] && in_argv(v.data, argv, argc)),
                      "--data is not an argument");
        cf_flow_config cfg = cli_model_config(&v.model);
        double bytes = cf_flow_config_activation_bytes(&cfg, v.batch, false);
        CF_FUZZ_CHECK(isfinite(bytes) && bytes >= 0, "activation estimate %g", bytes);
    }
    free(text);
    return 0;
}

CF_FUZZ_TARGET(cf_fuzz_cli)
