/* weights.c — checked weight files: magic, version, names, shapes, float32 data, CRC-32.
 * Saving writes a temporary file, fsyncs it and renames it over the target, so a crash
 * mid-save leaves the previous file intact. Loading checks everything before it returns. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"

static const char MAGIC[8] = {'M', 'L', 'W', 'E', 'I', 'G', 'H', 'T'};
#define FORMAT_VERSION 1u
#define MAX_NAME 4096u

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), table built on first use. */
uint32_t ml_crc32(uint32_t crc, const void *data, size_t len) {
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}


/* Writes `size` bytes to `path.tmp<pid>`, fsyncs, renames over `path`: readers see the old
 * file or the new one, never half of one, even if the process dies in between. */
ml_status ml__write_atomic(const char *path, const void *buf, size_t size) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) return ml_set_error(ML_ERR_OOM, "cannot write '%s': out of memory", path);
    snprintf(tmp, plen + 32, "%s.tmp%ld", path, (long)getpid());
    ml_status st = ML_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        st = ml_set_error(ML_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    } else {
        size_t done = 0;
        errno = 0;
        while (done < size) {
            ssize_t w = write(fd, (const char *)buf + done, size - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += (size_t)w;
        }
        int err = done < size ? (errno ? errno : EIO) : 0;
        if (!err && fsync(fd) != 0) err = errno;
        if (close(fd) != 0 && !err) err = errno;
        if (!err && rename(tmp, path) != 0) err = errno;
        if (err) {
            st = ml_set_error(ML_ERR_IO, "cannot write '%s': %s", path, strerror(err));
            unlink(tmp);
        }
    }
    free(tmp);
    return st;
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

#define CORRUPT(...) \
    do { st = ml_set_error(ML_ERR_FORMAT, __VA_ARGS__); goto fail; } while (0)

ml_status ml_load_tensors(const char *path, int *n_out, char ***names_out,
                          ml_tensor ***tensors_out) {
    if (!path) return ml_set_error(ML_ERR_VALUE, "load: path is NULL");
    ml_status st = ML_OK;
    uint8_t *buf = NULL;
    char **names = NULL;
    ml_tensor **tensors = NULL;
    uint32_t n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ml_set_error(ML_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return ml_set_error(ML_ERR_IO, "cannot read '%s': not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    buf = malloc(size ? size : 1);
    if (!buf) {
        fclose(f);
        return ml_set_error(ML_ERR_OOM, "load: out of memory reading '%s'", path);
    }
    size_t got = fread(buf, 1, size, f);
    fclose(f);
    if (got != size) CORRUPT("cannot read '%s': short read", path);
    if (size < 20 || memcmp(buf, MAGIC, 8) != 0)
        CORRUPT("'%s' is not a metalearn weights file (bad magic)", path);
    if (ml_crc32(0, buf, size - 4) != ml__get_u32(buf + size - 4))
        CORRUPT("'%s' is corrupt or truncated (checksum mismatch)", path);
    uint32_t version = ml__get_u32(buf + 8);
    if (version != FORMAT_VERSION)
        CORRUPT("'%s' has format version %u; this metalearn reads version %u", path, version,
                FORMAT_VERSION);
    const uint8_t *p = buf + 16, *end = buf + size - 4;
    if (ml__get_u32(buf + 12) > (uint32_t)(end - p) / 8)
        CORRUPT("'%s' is corrupt: %u entries cannot fit", path, ml__get_u32(buf + 12));
    n = ml__get_u32(buf + 12);
    names = calloc(n ? n : 1, sizeof *names);
    tensors = calloc(n ? n : 1, sizeof *tensors);
    if (!names || !tensors) {
        st = ml_set_error(ML_ERR_OOM, "load: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (end - p < 4) CORRUPT("'%s' is truncated in entry %u", path, i);
        uint32_t len = ml__get_u32(p);
        p += 4;
        if (len > MAX_NAME || (size_t)(end - p) < len) CORRUPT("'%s' is corrupt: bad name in entry %u", path, i);
        names[i] = malloc(len + 1);
        if (!names[i]) {
            st = ml_set_error(ML_ERR_OOM, "load: out of memory");
            goto fail;
        }
        memcpy(names[i], p, len);
        names[i][len] = 0;
        p += len;
        if (end - p < 4) CORRUPT("'%s' is truncated in entry %u", path, i);
        uint32_t ndim = ml__get_u32(p);
        p += 4;
        if (ndim > ML_MAX_DIMS || (size_t)(end - p) < 8u * ndim)
            CORRUPT("'%s' is corrupt: bad rank %u in entry '%s'", path, ndim, names[i]);
        int64_t shape[ML_MAX_DIMS];
        for (uint32_t d = 0; d < ndim; d++, p += 8) shape[d] = (int64_t)ml__get_u64(p);
        int64_t numel;
        if (ml__check_shape((int)ndim, shape, &numel) != ML_OK || (uint64_t)(end - p) / 4 < (uint64_t)numel)
            CORRUPT("'%s' is corrupt: bad shape in entry '%s'", path, names[i]);
        if ((st = ml__new(&tensors[i], (int)ndim, shape))) goto fail;
        for (int64_t j = 0; j < numel; j++, p += 4) {
            uint32_t bits = ml__get_u32(p);
            memcpy(&tensors[i]->data[j], &bits, 4);
        }
    }
    if (p != end) CORRUPT("'%s' is corrupt: %zu unexpected bytes at the end", path, (size_t)(end - p));
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
