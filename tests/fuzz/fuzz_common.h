/* fuzz_common.h: what the fuzzing entry points of tests/fuzz share: a per-process scratch
 * folder for the files a loader needs a path to, the tiny flow whose checkpoints the checkpoint
 * entry loads, and the entry table the replay program walks.
 *
 * Each entry point `cf_fuzz_<name>(data, size)` turns the bytes into files (or argv), runs the
 * parser, checks what it promises (a failure leaves a message; a success holds what it says),
 * frees everything and returns 0. A broken promise aborts, so libFuzzer and the replay program
 * report it like a crash. The same functions serve libFuzzer (built with CF_FUZZ_LIBFUZZER,
 * where CF_FUZZ_TARGET defines LLVMFuzzerTestOneInput) and tests/fuzz/replay.c.
 *
 * Not here: mutation, corpus handling (libFuzzer's), seeds (make_corpus.c).
 */
#ifndef CF_FUZZ_COMMON_H
#define CF_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "cincflow.h"

typedef int (*cf_fuzz_entry)(const uint8_t *data, size_t size);

int cf_fuzz_idx(const uint8_t *data, size_t size);
int cf_fuzz_cifar10(const uint8_t *data, size_t size);
int cf_fuzz_png(const uint8_t *data, size_t size);
int cf_fuzz_checkpoint(const uint8_t *data, size_t size);
int cf_fuzz_cli(const uint8_t *data, size_t size);

#ifdef CF_FUZZ_LIBFUZZER
#define CF_FUZZ_TARGET(entry)                                                                      \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);                                  \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)                                   \
    {                                                                                              \
        return entry(data, size);                                                                  \
    }
#else
#define CF_FUZZ_TARGET(entry)
#endif

/* Set by the replay program: entries then say what became of each input (cf_fuzz_report). */
extern int cf_fuzz_verbose;
/* Set by every entry: 1 when the parser accepted the input (the set opened, the checkpoint
 * loaded without an optimizer, the flags parsed), else 0. The replay program holds inputs named
 * "*.accept" and "*.refuse" to it. */
extern int cf_fuzz_accepted;
void cf_fuzz_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A broken promise of the code under test: prints the message and aborts. */
void cf_fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#define CF_FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) cf_fuzz_fail(__VA_ARGS__);                                                    \
    } while (0)

/* The scratch folder: "$TMPDIR/cf_fuzz.<pid>.XXXXXX" (TMPDIR default /tmp), made on first use
 * and removed with everything in it when the process exits. Borrowed. */
const char *cf_fuzz_dir(void);
/* "<scratch>/<name>" in a buffer owned by the caller (at least 512 bytes). */
const char *cf_fuzz_path(char *buf, size_t bufsize, const char *name);
/* Writes a file (name relative to the scratch folder), gzip-compressed when gz; a subfolder
 * named in `name` must exist (cf_fuzz_mkdir). Aborts if the disk refuses. */
void cf_fuzz_write(const char *name, const void *data, size_t size, int gz);
void cf_fuzz_mkdir(const char *name);
/* Empties the scratch folder (keeps the folder). */
void cf_fuzz_clean(void);

/* A little-endian uint32 from the bytes at *p (fewer than 4 left: zero-padded); advances. */
uint32_t cf_fuzz_take_u32(const uint8_t **p, const uint8_t *end);

/* After a failure: this thread's message must be there and name `what` (a file or folder). */
void cf_fuzz_check_error(const char *what);
/* Reads every pixel and label of an opened set and checks what cf_data.h promises. */
void cf_fuzz_check_dataset(const cf_dataset *ds);

/* The flow the checkpoint seeds are saved from and the checkpoint entry loads into: 4x4x1
 * images, one level of one step, width 4, quad coupling, CInC convolution; and its optimizer's
 * options (AdamW). */
cf_flow_config cf_fuzz_tiny_config(void);
cf_adam_opts cf_fuzz_tiny_adam(void);

#endif
