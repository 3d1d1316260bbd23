/* weights.c — checked weight files: magic, version, names, shapes, float32 data, CRC-32.
 * Saving writes a new temporary file next to the target, fsyncs it and renames it over the
 * target (ml__write_atomic, also used for memory files), so a crash mid-save leaves the
 * previous file intact. Loading checks everything before it returns. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/internal.h"
#include "io.h"

static const char MAGIC[8] = {'M', 'L', 'W', 'E', 'I', 'G', 'H', 'T'};
#define FORMAT_VERSION 1u
#define MAX_NAME 4096u

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), tables built on first use. Eight
 * bytes a step by slicing (Kavanagh & Kounavis): table k holds the CRC of a byte followed by
 * k zero bytes, so the eight lookups of a step are independent; the same value as a byte at
 * a time, several times faster (a memory file's open checks every byte of it). Two threads
 * building the tables at once write the same values. */
uint32_t ml_crc32(uint32_t crc, const void *data, size_t len) {
    static uint32_t t[8][256];
    static int ready;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (int k = 1; k < 8; k++)
            for (uint32_t i = 0; i < 256; i++)
                t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    const uint8_t *p = data;
    crc = ~crc;
    for (; len >= 8; len -= 8, p += 8) {
        uint32_t a = crc ^ ml__get_u32(p), b = ml__get_u32(p + 4);
        crc = t[7][a & 0xFF] ^ t[6][(a >> 8) & 0xFF] ^ t[5][(a >> 16) & 0xFF] ^ t[4][a >> 24] ^
              t[3][b & 0xFF] ^ t[2][(b >> 8) & 0xFF] ^ t[1][(b >> 16) & 0xFF] ^ t[0][b >> 24];
    }
    for (; len; len--) crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* ---------------------------------------------------------------- safe file writing
 *
 * ml__write_atomic writes `size` bytes so that readers of `path` see the old file or the
 * new one, never half of one, even if the process dies in between:
 *   1. `path` is resolved through symbolic links (a dangling link: the file it names is
 *      created, as `echo > link` does), so the link is kept and its target replaced;
 *   2. an existing target that is not a regular file (a directory, /dev/null, a FIFO, a
 *      socket) is refused: it is never replaced;
 *   3. the bytes go to a new temporary file in the target's directory, `.mlw.XXXXXXXXXX`:
 *      a short name (a 255-byte file name still fits) that no other writer shares
 *      (O_EXCL, pid + counter + clock, so two threads or processes saving to one path do
 *      not collide), created with the target's permission bits when it exists;
 *   4. fsync, rename over the target, fsync the directory (the rename itself survives a
 *      power cut).
 * On any failure the temporary file is removed and the target is as it was. A process
 * killed between 3 and 4 leaves its `.mlw.*` file behind; the target is intact. */

#define TMP_PREFIX ".mlw."
#define MAX_LINKS 40 /* Linux's limit on the links one lookup follows */

/* The last component of `p` starts at the returned offset (after its last '/'). */
static size_t base_offset(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? (size_t)(s - p) + 1 : 0;
}

/* Follows symbolic links from `path`; *out (malloc'ed) names the file to replace (it may
 * not exist yet) and *st_out its lstat (*exists 0 when there is none). errno on failure. */
static int resolve_target(const char *path, char **out, struct stat *st_out, int *exists) {
    char *cur = strdup(path);
    if (!cur) return ENOMEM;
    for (int hops = 0;; hops++) {
        if (lstat(cur, st_out) != 0) {
            int e = errno;
            if (e != ENOENT) {
                free(cur);
                return e;
            }
            *exists = 0;
            break;
        }
        if (!S_ISLNK(st_out->st_mode)) {
            *exists = 1;
            break;
        }
        if (hops == MAX_LINKS) {
            free(cur);
            return ELOOP;
        }
        size_t cap = (size_t)st_out->st_size + 1 < 256 ? 256 : (size_t)st_out->st_size + 1;
        char *link = malloc(cap);
        ssize_t n = link ? readlink(cur, link, cap - 1) : -1;
        if (n < 0) {
            int e = link ? errno : ENOMEM;
            free(link);
            free(cur);
            return e;
        }
        link[n] = 0;
        char *next;
        if (link[0] == '/') {
            next = link;
        } else { /* relative to the link's own directory */
            size_t dl = base_offset(cur);
            next = malloc(dl + (size_t)n + 1);
            if (next) {
                memcpy(next, cur, dl);
                memcpy(next + dl, link, (size_t)n + 1);
            }
            free(link);
        }
        free(cur);
        if (!(cur = next)) return ENOMEM;
    }
    *out = cur;
    return 0;
}

static const char *file_kind(mode_t m) {
    return S_ISDIR(m)    ? "a directory"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

/* A name for the temporary file: unique per call in this process (counter), across
 * processes (pid) and across pid reuse (clock); O_EXCL catches the rest. */
static void tmp_suffix(char out[11]) {
    static atomic_ullong counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)getpid() << 40) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
                 (atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull,
        x ^= x >> 33;
    static const char abc[] = "abcdefghijklmnopqrstuvwxyz012345";
    for (int i = 0; i < 10; i++, x >>= 5) out[i] = abc[x & 31];
    out[10] = 0;
}

static int write_all(int fd, const void *buf, size_t size) {
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, (const char *)buf + done, size - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno;
        if (w == 0) return EIO;
        done += (size_t)w;
    }
    return 0;
}

ml_status ml__write_atomic(const char *path, const void *buf, size_t size) {
    char *target = NULL, *tmp = NULL, *dir = NULL;
    struct stat sb;
    int exists = 0, err = resolve_target(path, &target, &sb, &exists);
    if (err) return ml_set_error(ML_ERR_IO, "cannot write '%s': %s", path, strerror(err));
    ml_status st = ML_OK;
    size_t boff = base_offset(target), tlen = strlen(target);
    if (exists && !S_ISREG(sb.st_mode)) {
        st = ml_set_error(ML_ERR_IO,
                          "cannot write '%s': it is %s, not a regular file; it was "
                          "left as it is",
                          path, file_kind(sb.st_mode));
        goto done;
    }
    if (boff == tlen) { /* "dir/": no file name to write */
        st = ml_set_error(ML_ERR_IO, "cannot write '%s': %s", path, strerror(EISDIR));
        goto done;
    }
    tmp = malloc(boff + sizeof TMP_PREFIX + 10);
    dir = malloc(boff + 2);
    if (!tmp || !dir) {
        st = ml_set_error(ML_ERR_OOM, "cannot write '%s': out of memory", path);
        goto done;
    }
    if (boff) { /* "/name" -> "/", "a/b/name" -> "a/b" */
        memcpy(dir, target, boff > 1 ? boff - 1 : 1);
        dir[boff > 1 ? boff - 1 : 1] = 0;
    } else {
        strcpy(dir, ".");
    }
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        char sfx[11];
        tmp_suffix(sfx);
        memcpy(tmp, target, boff);
        memcpy(tmp + boff, TMP_PREFIX, sizeof TMP_PREFIX - 1);
        memcpy(tmp + boff + sizeof TMP_PREFIX - 1, sfx, 11);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        st = ml_set_error(ML_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        goto done;
    }
    /* Replacing a file keeps its permission bits (a private 0600 file stays private). */
    if (exists && fchmod(fd, sb.st_mode & 07777) != 0) err = errno;
    if (!err) err = write_all(fd, buf, size);
    if (!err && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    if (!err && rename(tmp, target) != 0) err = errno;
    if (err) {
        unlink(tmp);
        st = ml_set_error(ML_ERR_IO, "cannot write '%s': %s (the file on disk is unchanged)", path,
                          strerror(err));
        goto done;
    }
    /* The rename is in the directory: fsync it so a power cut cannot undo the save. A
     * failure here is not reported: the new file is already in place and complete, and
     * some file systems refuse fsync on a directory (EINVAL). */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
done:
    free(tmp);
    free(dir);
    free(target);
    return st;
}

ml_status ml_write_file(const char *path, const void *data, size_t size) {
    return ml__write_atomic(path, data, size);
}

ml_status ml_save_tensors(const char *path, int n, const char *const *names,
                          ml_tensor *const *tensors) {
    if (!path || n < 0 || (n > 0 && (!names || !tensors)))
        return ml_set_error(ML_ERR_VALUE, "save: bad arguments");
    size_t size = 8 + 4 + 4 + 4;
    for (int i = 0; i < n; i++) {
        if (!names[i] || !tensors[i])
            return ml_set_error(ML_ERR_VALUE, "save: name or tensor %d is NULL", i);
        size_t len = strlen(names[i]);
        if (len > MAX_NAME)
            return ml_set_error(ML_ERR_VALUE, "save: name %d is longer than %u bytes", i, MAX_NAME);
        size += 4 + len + 4 + 8 * (size_t)tensors[i]->ndim + 4 * (size_t)tensors[i]->numel;
    }
    uint8_t *buf = malloc(size), *p = buf;
    if (!buf) return ml_set_error(ML_ERR_OOM, "save: out of memory (%zu bytes)", size);
    memcpy(p, MAGIC, 8), p += 8;
    ml__put_u32(p, FORMAT_VERSION), p += 4;
    ml__put_u32(p, (uint32_t)n), p += 4;
    for (int i = 0; i < n; i++) {
        const ml_tensor *t = tensors[i];
        uint32_t len = (uint32_t)strlen(names[i]);
        ml__put_u32(p, len), p += 4;
        memcpy(p, names[i], len), p += len;
        ml__put_u32(p, (uint32_t)t->ndim), p += 4;
        for (int d = 0; d < t->ndim; d++) ml__put_u64(p, (uint64_t)t->shape[d]), p += 8;
        for (int64_t j = 0; j < t->numel; j++) {
            uint32_t bits;
            memcpy(&bits, &t->data[j], 4);
            ml__put_u32(p, bits), p += 4;
        }
    }
    ml__put_u32(p, ml_crc32(0, buf, (size_t)(p - buf))), p += 4;
    ML_ASSERT((size_t)(p - buf) == size);

    ml_status st = ml__write_atomic(path, buf, size);
    free(buf);
    return st;
}

void ml_free_loaded(int n, char **names, ml_tensor **tensors) {
    for (int i = 0; i < n; i++) {
        if (names) free(names[i]);
        if (tensors) ml_release(tensors[i]);
    }
    free(names);
    free(tensors);
}

#define CORRUPT(...) return ml_set_error(ML_ERR_FORMAT, __VA_ARGS__)

/* The whole of a regular file at path in a new buffer (*size_out bytes); anything else (a
 * directory, a FIFO, a device) is refused. */
static ml_status read_regular_file(const char *path, uint8_t **buf_out, size_t *size_out) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return ml_set_error(ML_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ml_set_error(ML_ERR_IO, "cannot read '%s': not a regular file", path);
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return ml_set_error(ML_ERR_OOM, "load: out of memory reading '%s'", path);
    }
    size_t size = (size_t)sb.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        fclose(f);
        return ml_set_error(ML_ERR_OOM, "load: out of memory reading '%s'", path);
    }
    size_t got = fread(buf, 1, size, f);
    fclose(f);
    if (got != size) {
        free(buf);
        CORRUPT("cannot read '%s': short read", path);
    }
    *buf_out = buf;
    *size_out = size;
    return ML_OK;
}

/* Entry i at *pp (name, rank, shape, data; end: where the entries stop) into *name and
 * *tensor, each set as soon as it exists (the caller frees them on failure); *pp moves
 * past the entry. */
static ml_status read_entry(const char *path, uint32_t i, const uint8_t **pp, const uint8_t *end,
                            char **name, ml_tensor **tensor) {
    const uint8_t *p = *pp;
    if (end - p < 4) CORRUPT("'%s' is truncated in entry %u", path, i);
    uint32_t len = ml__get_u32(p);
    p += 4;
    /* a name with a NUL byte would come back cut short: no saver writes one */
    if (len > MAX_NAME || (size_t)(end - p) < len || memchr(p, 0, len))
        CORRUPT("'%s' is corrupt: bad name in entry %u", path, i);
    *name = malloc(len + 1);
    if (!*name) return ml_set_error(ML_ERR_OOM, "load: out of memory");
    memcpy(*name, p, len);
    (*name)[len] = 0;
    p += len;
    if (end - p < 4) CORRUPT("'%s' is truncated in entry %u", path, i);
    uint32_t ndim = ml__get_u32(p);
    p += 4;
    if (ndim > ML_MAX_DIMS || (size_t)(end - p) < 8u * ndim)
        CORRUPT("'%s' is corrupt: bad rank %u in entry '%s'", path, ndim, *name);
    int64_t shape[ML_MAX_DIMS];
    for (uint32_t d = 0; d < ndim; d++, p += 8) shape[d] = (int64_t)ml__get_u64(p);
    int64_t numel;
    if (ml__check_shape((int)ndim, shape, &numel) != ML_OK ||
        (uint64_t)(end - p) / 4 < (uint64_t)numel)
        CORRUPT("'%s' is corrupt: bad shape in entry '%s'", path, *name);
    ml_status st = ml__new(tensor, (int)ndim, shape);
    if (st) return st;
    for (int64_t j = 0; j < numel; j++, p += 4) {
        uint32_t bits = ml__get_u32(p);
        memcpy(&(*tensor)->data[j], &bits, 4);
    }
    *pp = p;
    return ML_OK;
}

/* The header (magic, checksum, version, count) of a file of size bytes in buf: the count
 * into *n, the first entry's place into *p. */
static ml_status read_header(const char *path, const uint8_t *buf, size_t size, uint32_t *n,
                             const uint8_t **p) {
    if (size < 20 || memcmp(buf, MAGIC, 8) != 0)
        CORRUPT("'%s' is not a metalearn weights file (bad magic)", path);
    if (ml_crc32(0, buf, size - 4) != ml__get_u32(buf + size - 4))
        CORRUPT("'%s' is corrupt or truncated (checksum mismatch)", path);
    uint32_t version = ml__get_u32(buf + 8);
    if (version != FORMAT_VERSION)
        CORRUPT("'%s' has format version %u; this metalearn reads version %u", path, version,
                FORMAT_VERSION);
    const uint8_t *end = buf + size - 4;
    *p = buf + 16;
    if (ml__get_u32(buf + 12) > (uint32_t)(end - *p) / 8)
        CORRUPT("'%s' is corrupt: %u entries cannot fit", path, ml__get_u32(buf + 12));
    *n = ml__get_u32(buf + 12);
    return ML_OK;
}

ml_status ml_load_tensors(const char *path, int *n_out, char ***names_out,
                          ml_tensor ***tensors_out) {
    if (!path) return ml_set_error(ML_ERR_VALUE, "load: path is NULL");
    uint8_t *buf = NULL;
    size_t size = 0;
    ml_status st = read_regular_file(path, &buf, &size);
    if (st) return st;
    char **names = NULL;
    ml_tensor **tensors = NULL;
    uint32_t n = 0;
    const uint8_t *p = NULL;
    if ((st = read_header(path, buf, size, &n, &p))) goto fail;
    const uint8_t *end = buf + size - 4; /* size >= 20 now */
    names = calloc(n ? n : 1, sizeof *names);
    tensors = calloc(n ? n : 1, sizeof *tensors);
    if (!names || !tensors) {
        st = ml_set_error(ML_ERR_OOM, "load: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++)
        if ((st = read_entry(path, i, &p, end, &names[i], &tensors[i]))) goto fail;
    if (p != end) {
        st = ml_set_error(ML_ERR_FORMAT, "'%s' is corrupt: %zu unexpected bytes at the end", path,
                          (size_t)(end - p));
        goto fail;
    }
    free(buf);
    *n_out = (int)n;
    *names_out = names;
    *tensors_out = tensors;
    return ML_OK;
fail:
    free(buf);
    ml_free_loaded((int)n, names, tensors);
    return st;
}
