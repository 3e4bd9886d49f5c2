/* cli.h: what the commands of the `cincflow` tool share: a table-driven flag parser that
 * refuses unknown flags and malformed or out-of-range values with one clear message (exit
 * status 2), the model flags, and the model's configuration as checkpoint metadata.
 *
 * Exit statuses of every command: 0 success, 1 a failure of the work (a check failed, a file
 * could not be read or written, training diverged), 2 bad usage, 130 interrupted.
 */
#ifndef CF_CLI_H
#define CF_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cincflow.h"

typedef enum cli_kind {
    CLI_INT,    /* int64_t in [min, max] */
    CLI_DOUBLE, /* double in [min, max], finite */
    CLI_STRING, /* const char * */
    CLI_BOOL,   /* bool, set by the flag alone */
    CLI_SHAPE,  /* int64_t[3] from "HxWxC" */
    CLI_CHOICE, /* int: index of the value in choices ("a|b|c") */
} cli_kind;

typedef struct cli_flag {
    const char *name; /* "--lr" */
    cli_kind kind;
    void *dst;
    double min, max;     /* numbers */
    const char *choices; /* CLI_CHOICE */
    const char *help;    /* one line for the usage text */
} cli_flag;

/* Parses argv against the table; prints "cincflow CMD: ..." and returns 2 on an unknown flag, a
 * missing or malformed value or one out of range (before anything large is allocated); returns
 * 0 otherwise. Each flag may appear once. "-h"/"--help" prints the usage and returns -1. */
int cli_parse(const char *cmd, int argc, char **argv, const cli_flag *flags, int n_flags);
void cli_usage(FILE *out, const char *cmd, const char *synopsis, const cli_flag *flags,
               int n_flags);
/* cli_parse, then the usage on --help: returns -1 when the command should go on, else the
 * exit status to return (0 after --help, 2 after a bad flag). */
int cli_begin(const char *cmd, const char *synopsis, int argc, char **argv, const cli_flag *flags,
              int n_flags);

/* Model flags (--shape --levels --depth --width --coupling --conv) into a config; the table
 * entries are appended to flags (which must have room for CLI_MODEL_FLAGS more). */
#define CLI_MODEL_FLAGS 6
typedef struct cli_model {
    int64_t shape[3];
    int64_t levels, depth, width;
    int coupling, conv; /* indices among the registered kinds of roles "coupling", "invconv" */
} cli_model;
int cli_model_flags(cli_flag *flags, cli_model *m);
cli_model cli_model_defaults(void);
cf_flow_config cli_model_config(const cli_model *m);

/* Prints a message and returns false when the model and batch would not fit in the machine's
 * memory (parameters, gradients and moments, plus activations). */
bool cli_check_memory(const char *cmd, const cf_flow_config *cfg, int64_t batch, bool training,
                      bool recompute);

/* The same from a built flow's layers (any architecture). */
bool cli_check_flow_memory(const char *cmd, const cf_flow *flow, int64_t batch, bool training,
                           bool recompute);

/* cf_flow_load, printing the error: the flow a checkpoint describes with its parameters, or
 * NULL. meta is filled (clear it with cf_ckpt_meta_clear). */
cf_flow *cli_load_flow(const char *cmd, const char *path, cf_ckpt_meta *meta);

/* Monotonic seconds. */
double cli_now(void);

/* The commands. */
int cli_train(int argc, char **argv);
int cli_eval(int argc, char **argv);
int cli_sample(int argc, char **argv);
int cli_interpolate(int argc, char **argv);
int cli_manipulate(int argc, char **argv);
int cli_arch(int argc, char **argv);
int cli_info(int argc, char **argv);
int cli_check(int argc, char **argv); /* cli_check.c */

#endif
