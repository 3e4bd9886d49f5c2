/* replay.c: runs kept inputs through the fuzzing entry points, in any build (no libFuzzer):
 * the regression inputs of tests/fuzz/regressions/<harness>/ and the generated seeds.
 *
 *   fuzz_replay DIR...           every file of DIR (not starting with '.') through the entry
 *                                named by DIR's last component (idx, cifar10, png, checkpoint,
 *                                cli); a DIR that does not exist is skipped
 *   fuzz_replay HARNESS:FILE...  one file through one entry
 *
 * A broken promise or a crash aborts the program (the file being replayed is printed first). A
 * file named "*.accept" must be accepted by its parser and one named "*.refuse" refused (kept
 * inputs whose finding was a wrong answer rather than a crash); a wrong answer exits 1.
 * Otherwise it prints how many files went through and exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

static const struct {
    const char *name;
    cf_fuzz_entry entry;
} entries[] = {
    {"idx", cf_fuzz_idx}, {"cifar10", cf_fuzz_cifar10},
    {"png", cf_fuzz_png}, {"checkpoint", cf_fuzz_checkpoint},
    {"cli", cf_fuzz_cli},
};

static cf_fuzz_entry find_entry(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++)
        if (strlen(entries[i].name) == len && strncmp(entries[i].name, name, len) == 0)
            return entries[i].entry;
    return NULL;
}

static int replay_file(cf_fuzz_entry entry, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, size = 0;
    uint8_t *data = malloc(cap);
    size_t got;
    while (data && (got = fread(data + size, 1, cap - size, f)) > 0) {
        size += got;
        if (size == cap) {
            uint8_t *grown = realloc(data, cap *= 2);
            if (!grown) free(data);
            data = grown;
        }
    }
    fclose(f);
    if (!data) {
        fprintf(stderr, "fuzz_replay: out of memory reading %s\n", path);
        return -1;
    }
    fprintf(stderr, "fuzz_replay: %s (%zu bytes)\n", path, size);
    entry(data, size);
    free(data);
    size_t len = strlen(path);
    bool accept = len > 7 && strcmp(path + len - 7, ".accept") == 0;
    bool refuse = len > 7 && strcmp(path + len - 7, ".refuse") == 0;
    if ((accept && !cf_fuzz_accepted) || (refuse && cf_fuzz_accepted)) {
        fprintf(stderr, "fuzz_replay: %s: %s, expected %s\n", path,
                cf_fuzz_accepted ? "accepted" : "refused", accept ? "accepted" : "refused");
        exit(1);
    }
    return 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every file of dir, in name order; returns the count or -1. */
static int replay_dir(cf_fuzz_entry entry, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    int n = 0, cap = 0, done = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, (size_t)cap * sizeof *names);
            if (!grown) break;
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 0) qsort(names, (size_t)n, sizeof *names, compare_names);
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && replay_file(entry, path) == 0) done++;
        free(names[i]);
    }
    free(names);
    return done;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: fuzz_replay DIR... | HARNESS:FILE...\n");
        return 2;
    }
    cf_fuzz_verbose = 1;
    int total = 0;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        const char *colon = strchr(arg, ':');
        cf_fuzz_entry entry = colon ? find_entry(arg, (size_t)(colon - arg)) : NULL;
        if (entry) {
            if (replay_file(entry, colon + 1) != 0) return 1;
            total++;
            continue;
        }
        size_t len = strlen(arg);
        while (len > 1 && arg[len - 1] == '/') len--;
        const char *base = arg + len;
        while (base > arg && base[-1] != '/') base--;
        entry = find_entry(base, (size_t)(arg + len - base));
        if (!entry) {
            fprintf(stderr,
                    "fuzz_replay: %s names no harness (idx, cifar10, png, checkpoint, cli)\n", arg);
            return 2;
        }
        struct stat st;
        if (stat(arg, &st) != 0) {
            printf("fuzz_replay: %s: none kept\n", arg);
            continue;
        }
        int n = replay_dir(entry, arg);
        if (n < 0) {
            fprintf(stderr, "fuzz_replay: cannot list %s\n", arg);
            return 1;
        }
        printf("fuzz_replay: %s: %d files\n", arg, n);
        total += n;
    }
    printf("fuzz_replay: %d inputs replayed, none crashed\n", total);
    return 0;
}
