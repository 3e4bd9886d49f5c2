/* cli.c: the flag parser and model helpers shared by the commands (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double cli_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Index of value among "a|b|c", or -1. */
static int choice_index(const char *choices, const char *value)
{
    size_t len = strlen(value);
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

/* One number of "HxWxC": decimal digits (no sign or space), then `end` ('x', or 0 for the end
 * of the string); advances *s past both. False for anything else, an overflow included (sscanf
 * would make that undefined). */
static bool shape_part(const char **s, char end, long long *value)
{
    const char *p = *s;
    if (*p < '0' || *p > '9') return false;
    char *stop;
    errno = 0;
    *value = strtoll(p, &stop, 10);
    if (errno || *stop != end) return false;
    *s = end ? stop + 1 : stop;
    return true;
}

static int bad(const char *cmd, const char *flag, const char *what, const char *value)
{
    fprintf(stderr, "cincflow %s: %s expects %s, got '%s'\n", cmd, flag, what, value ? value : "");
    return 2;
}

int cli_parse(const char *cmd, int argc, char **argv, const cli_flag *flags, int n_flags)
{
    bool seen[64] = {false};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) return -1;
        int k = 0;
        while (k < n_flags && strcmp(flags[k].name, arg) != 0) k++;
        if (k == n_flags) {
            fprintf(stderr, "cincflow %s: unknown flag '%s' (see 'cincflow %s --help')\n", cmd,
                    arg, cmd);
            return 2;
        }
        const cli_flag *f = &flags[k];
        if (k < 64 && seen[k]) {
            fprintf(stderr, "cincflow %s: %s given twice\n", cmd, f->name);
            return 2;
        }
        if (k < 64) seen[k] = true;
        if (f->kind == CLI_BOOL) {
            *(bool *)f->dst = true;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) return bad(cmd, f->name, "a value", NULL);
        char *end = NULL;
        errno = 0;
        switch (f->kind) {
        case CLI_INT: {
            long long x = strtoll(v, &end, 10);
            if (!*v || *end || errno || (double)x < f->min || (double)x > f->max) {
                char what[96];
                snprintf(what, sizeof what, "an integer from %.0f to %.0f", f->min, f->max);
                return bad(cmd, f->name, what, v);
            }
            *(int64_t *)f->dst = x;
            break;
        }
        case CLI_DOUBLE: {
            double x = strtod(v, &end);
            if (!*v || *end || errno || !isfinite(x) || x < f->min || x > f->max) {
                char what[96];
                snprintf(what, sizeof what, "a number from %g to %g", f->min, f->max);
                return bad(cmd, f->name, what, v);
            }
            *(double *)f->dst = x;
            break;
        }
        case CLI_STRING:
            if (!*v) return bad(cmd, f->name, "a non-empty value", v);
            *(const char **)f->dst = v;
            break;
        case CLI_SHAPE: {
            long long h, w, c;
            if (!shape_part(&v, 'x', &h) || !shape_part(&v, 'x', &w) || !shape_part(&v, 0, &c) ||
                h < 1 || w < 1 || c < 1 || h > 16384 || w > 16384 || c > 4)
                return bad(cmd, f->name, "HxWxC (sides 1 to 16384, 1 to 4 channels)", argv[i]);
            int64_t *s = f->dst;
            s[0] = h, s[1] = w, s[2] = c;
            break;
        }
        case CLI_CHOICE: {
            int idx = choice_index(f->choices, v);
            if (idx < 0) {
                char what[128];
                snprintf(what, sizeof what, "one of %s", f->choices);
                return bad(cmd, f->name, what, v);
            }
            *(int *)f->dst = idx;
            break;
        }
        case CLI_BOOL:
            break;
        }
    }
    return 0;
}

void cli_usage(FILE *out, const char *cmd, const char *synopsis, const cli_flag *flags,
               int n_flags)
{
    fprintf(out, "usage: cincflow %s %s\n", cmd, synopsis);
    for (int k = 0; k < n_flags; k++) {
        const cli_flag *f = &flags[k];
        char left[64];
        const char *arg = f->kind == CLI_BOOL     ? ""
                          : f->kind == CLI_CHOICE ? f->choices
                          : f->kind == CLI_SHAPE  ? "HxWxC"
                          : f->kind == CLI_STRING ? "VALUE"
                                                  : "N";
        snprintf(left, sizeof left, "%s %s", f->name, arg);
        fprintf(out, "  %-30s %s\n", left, f->help);
    }
}

int cli_begin(const char *cmd, const char *synopsis, int argc, char **argv, const cli_flag *flags,
              int n_flags)
{
    int rc = cli_parse(cmd, argc, argv, flags, n_flags);
    if (rc < 0) {
        cli_usage(stdout, cmd, synopsis, flags, n_flags);
        return 0;
    }
    return rc ? rc : -1;
}

cli_model cli_model_defaults(void)
{
    cli_model m = {.shape = {28, 28, 1}, .levels = 2, .depth = 8, .width = 128};
    return m;
}

/* The choices of a role ("a|b|c", the registry's order), kept for the flag table. */
static const char *role_choices(const char *role)
{
    static char conv[512], coupling[512];
    char *buf = strcmp(role, "invconv") == 0 ? conv : coupling;
    return cf_layer_kind_choices(role, buf, sizeof conv);
}

/* The choice name of the idx-th kind of a role. */
static const char *role_choice(const char *role, int idx)
{
    int n = cf_layer_kind_count(), seen = 0;
    for (int i = 0; i < n; i++) {
        const cf_layer_kind *k = cf_layer_kind_at(i);
        if (k->role && k->choice && strcmp(k->role, role) == 0 && seen++ == idx) return k->choice;
    }
    return NULL;
}

int cli_model_flags(cli_flag *f, cli_model *m)
{
    f[0] = (cli_flag){"--shape", CLI_SHAPE, m->shape, 0, 0, NULL, "image shape (default 28x28x1)"};
    f[1] = (cli_flag){"--levels", CLI_INT, &m->levels, 1, 8, NULL, "levels L (default 2)"};
    f[2] = (cli_flag){"--depth", CLI_INT, &m->depth, 1, 256, NULL, "steps per level K (default 8)"};
    f[3] = (cli_flag){"--width", CLI_INT, &m->width, 1, 4096, NULL,
                      "coupling network width (default 128)"};
    f[4] = (cli_flag){"--coupling", CLI_CHOICE, &m->coupling, 0, 0, role_choices("coupling"),
                      "coupling layer kind (default quad)"};
    f[5] = (cli_flag){"--conv", CLI_CHOICE, &m->conv, 0, 0, role_choices("invconv"),
                      "invertible convolution kind (default cinc)"};
    return CLI_MODEL_FLAGS;
}

cf_flow_config cli_model_config(const cli_model *m)
{
    cf_flow_config c = {.height = m->shape[0], .width = m->shape[1], .channels = m->shape[2],
                        .levels = (int)m->levels, .depth = (int)m->depth, .hidden = m->width,
                        .coupling_name = role_choice("coupling", m->coupling),
                        .conv_name = role_choice("invconv", m->conv)};
    return c;
}

/* Prints a message and returns false when `need` bytes would not fit in the machine. */
static bool fits(const char *cmd, double need, bool training, bool recompute)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    double have = pages > 0 && page > 0 ? (double)pages * (double)page : 0;
    if (have > 0 && need > 0.9 * have) {
        fprintf(stderr, "cincflow %s: this model and batch need about %.1f GB of memory; the "
                        "machine has %.1f GB (use a smaller --batch or model%s)\n",
                cmd, need / 1e9, have / 1e9, training && !recompute ? ", or --recompute on" : "");
        return false;
    }
    return true;
}

bool cli_check_memory(const char *cmd, const cf_flow_config *c, int64_t batch, bool training,
                      bool recompute)
{
    return fits(cmd, cf_flow_config_memory_bytes(c, batch, training, recompute), training,
                recompute);
}

bool cli_check_flow_memory(const char *cmd, const cf_flow *flow, int64_t batch, bool training,
                           bool recompute)
{
    return fits(cmd, cf_flow_memory_bytes(flow, batch, training, recompute), training, recompute);
}

cf_flow *cli_load_flow(const char *cmd, const char *path, cf_ckpt_meta *meta)
{
    cf_flow *flow = cf_flow_load(path, CF_F32, meta);
    if (!flow) fprintf(stderr, "cincflow %s: %s\n", cmd, cf_last_error());
    return flow;
}
