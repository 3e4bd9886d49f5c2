/* files.c: small file helpers of the io/ module: formatted strings, checked file sizes, whole-
 * file reads with a size cap, and the write-to-temporary-then-rename step that keeps a good
 * file in place until its replacement is complete on disk.
 *
 * A temporary's name carries its writer's pid, so one left by a writer that was killed between
 * creating it and renaming it is recognised, and removed, by the next write to the same path:
 * "<path>.tmp.<pid>" whose pid names no process any more (kill(pid, 0) fails with ESRCH).
 * Temporaries of live processes, and of pids this process may not signal, are left alone.
 *
 * Not here: any file format, or locking between processes (one writer per path is assumed;
 * pids are taken in this process's pid namespace, so a folder shared with writers in other
 * namespaces, e.g. other containers, could lose a live writer's temporary).
 * Writers build the whole file in memory first, so every failure of the disk (full, quota,
 * file size limit, I/O error) surfaces here, in plain write() calls, after which nothing but
 * an unlink is left to do.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_io_impl.h"

char *cf__strprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

cf_status cf__file_size(const char *path, int64_t *size)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return cf_set_error(CF_ERR_NOT_FOUND, "%s: no such file", path);
        return cf_set_error(CF_ERR_IO, "%s: cannot read (%s)", path, strerror(errno));
    }
    if (S_ISDIR(st.st_mode))
        return cf_set_error(CF_ERR_IO, "%s: is a directory, expected a file", path);
    if (!S_ISREG(st.st_mode)) return cf_set_error(CF_ERR_IO, "%s: is not a regular file", path);
    *size = (int64_t)st.st_size;
    return CF_OK;
}

cf_status cf__read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    int64_t bytes;
    cf_status st = cf__file_size(path, &bytes);
    if (st != CF_OK) return st;
    if ((uint64_t)bytes > max_bytes)
        return cf_set_error(CF_ERR_FORMAT, "%s: %lld bytes, more than the %zu this reader accepts",
                            path, (long long)bytes, max_bytes);
    FILE *f = fopen(path, "rb");
    if (!f) return cf_set_error(CF_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    uint8_t *buf = malloc(bytes > 0 ? (size_t)bytes : 1);
    if (!buf) {
        fclose(f);
        return cf_set_error(CF_ERR_NOMEM, "%s: out of memory reading %lld bytes", path,
                            (long long)bytes);
    }
    size_t got = fread(buf, 1, (size_t)bytes, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || got != (size_t)bytes) {
        free(buf);
        return cf_set_error(CF_ERR_IO, "%s: read %zu of its %lld bytes%s", path, got,
                            (long long)bytes, failed ? " (read error)" : " (file shrank)");
    }
    *data = buf;
    *size = got;
    return CF_OK;
}

char *cf__tmp_path(const char *path)
{
    return cf__strprintf("%s.tmp.%ld", path, (long)getpid());
}

/* Best effort: once the rename has happened the new file is in place, and some file systems
 * cannot sync a directory at all. */
static void fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? cf__strprintf("%.*s", (int)(slash - path) + (slash == path), path)
                      : cf__strprintf(".");
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Writes data to tmp and flushes it to disk; the message names path. */
static cf_status write_tmp(const char *tmp, const char *path, const uint8_t *data, size_t size)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return cf_set_error(CF_ERR_IO, "%s: cannot create the temporary file %s (%s)", path, tmp,
                            strerror(errno));
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = n < 0 ? errno : EIO;
            close(fd);
            return cf_set_error(CF_ERR_IO, "%s: writing %s failed after %zu of %zu bytes (%s)",
                                path, tmp, done, size, strerror(err));
        }
        done += (size_t)n;
    }
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        return cf_set_error(CF_ERR_IO, "%s: flushing %s to disk failed (%s)", path, tmp,
                            strerror(err));
    }
    if (close(fd) != 0)
        return cf_set_error(CF_ERR_IO, "%s: closing %s failed (%s)", path, tmp, strerror(errno));
    return CF_OK;
}

/* Removes the stale temporaries of path (see the top of the file). Best effort: a folder that
 * cannot be listed, or a file that cannot be removed, is left as it is. */
static void remove_stale_temporaries(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t base_len = strlen(base);
    char *dir = slash ? cf__strprintf("%.*s", (int)(slash - path) + (slash == path), path)
                      : cf__strprintf(".");
    DIR *d = dir && base_len > 0 ? opendir(dir) : NULL;
    if (!d) {
        free(dir);
        return;
    }
    long self = (long)getpid();
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, ".tmp.", 5) != 0)
            continue;
        const char *digits = name + base_len + 5;
        if (!isdigit((unsigned char)digits[0]) || digits[0] == '0') continue; /* as "%ld" writes */
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (*end || errno || pid > INT_MAX || pid == self) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to tell */
        char *stale = cf__strprintf("%s/%s", dir, name);
        struct stat st;
        if (stale && lstat(stale, &st) == 0 && S_ISREG(st.st_mode)) unlink(stale);
        free(stale);
    }
    closedir(d);
    free(dir);
}

cf_status cf__write_file_atomic(const char *path, const void *data, size_t size)
{
    remove_stale_temporaries(path);
    char *tmp = cf__tmp_path(path);
    if (!tmp) return cf_set_error(CF_ERR_NOMEM, "%s: out of memory", path);
    cf_status st = write_tmp(tmp, path, data, size);
    if (st == CF_OK && rename(tmp, path) != 0)
        st = cf_set_error(CF_ERR_IO, "%s: cannot rename the finished %s into place (%s)", path, tmp,
                          strerror(errno));
    if (st == CF_OK)
        fsync_parent(path);
    else
        unlink(tmp); /* whatever part of it exists */
    free(tmp);
    return st;
}
