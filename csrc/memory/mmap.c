/* mmap.c — the knowledge memory's files, and opening one memory-mapped.
 *
 * Version 2 (written since issue 26) lays the slabs out so that a search can read them in
 * place from a read-only map, without loading the file:
 *
 *   offset  bytes
 *   0       8      "MLMEMORY"
 *   8       4      version (2)
 *   12      4      header bytes (128)
 *   16      8 x 4  capacity, key size d, payload size p, count c
 *   48      8      seed
 *   56      8 x 4  the memory's stream (xoshiro256** state)
 *   88      4 x 4  CRC-32 of the keys, the labels, the ages, the payloads (unpadded bytes)
 *   104     20     zero
 *   124     4      CRC-32 of bytes [0, 124)
 *   128            keys (c x d float32), labels (c int64), ages (c int64), payloads
 *                  (c x p float32), each slab starting on a multiple of 64 bytes (zero
 *                  padding), little-endian; the file ends with the last slab's padding.
 *
 * The 64-byte key slab is what the scan kernels stream (a cache line, an AVX-512 vector);
 * labels and payloads are read in place too. Version 1 ("MLMEMORY" | version | sizes | rng
 * | slots | CRC-32 of all before it, keys at byte 84) is still read, into RAM.
 *
 * Every check is made once, when a file is opened: a memory file is never written in place
 * (saves go to a temporary file renamed over the target, io/weights.c), so a map checked at
 * open stays as checked for its whole life, and the search kernels keep no per-block
 * "verified" state or branch. The check reads the file once, sequentially, at the disk's
 * or the page cache's speed, and holds none of it in RAM: a file larger than RAM opens. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE (Linux) */
#include "mmap.h"

#include <stdlib.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../io/io.h"

static const char MAGIC[8] = {'M', 'L', 'M', 'E', 'M', 'O', 'R', 'Y'};
#define V1_HEADER (8 + 4 + 8 * 4 + 8 + 8 * 4)
#define V2_HEADER 128
#define V2_ALIGN 64
#define MAX_SIZE ((uint64_t)1 << 40) /* as memory.c */

void *ml__alloc_huge(size_t n) {
    const size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, n >= huge ? huge : 64, n ? n : 1)) return NULL;
#ifdef MADV_HUGEPAGE
    if (n >= huge) (void)madvise(p, n / huge * huge, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

static uint64_t up64(uint64_t x) { return (x + V2_ALIGN - 1) / V2_ALIGN * V2_ALIGN; }

size_t ml__memfile_bytes(int64_t count, int64_t d, int64_t p) {
    uint64_t c = (uint64_t)count;
    return (size_t)(V2_HEADER + up64(c * (uint64_t)d * 4) + 2 * up64(c * 8) +
                    up64(c * (uint64_t)p * 4));
}

static void put_floats(uint8_t *w, const float *x, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        ml__put_u32(w + 4 * i, bits);
    }
}

void ml__memfile_write(uint8_t *buf, int64_t capacity, int64_t d, int64_t p, int64_t count,
                       uint64_t seed, const uint64_t rng[4], const float *keys,
                       const int64_t *labels, const int64_t *ages, const float *payloads) {
    const uint64_t c = (uint64_t)count;
    const size_t size = ml__memfile_bytes(count, d, p);
    memset(buf, 0, size); /* header reserve and slab padding */
    size_t at = V2_HEADER;
    const size_t keys_at = at, labels_at = (at += up64(c * (uint64_t)d * 4)),
                 ages_at = (at += up64(c * 8)), pay_at = (at += up64(c * 8));
    put_floats(buf + keys_at, keys, c * (uint64_t)d);
    for (uint64_t i = 0; i < c; i++) ml__put_u64(buf + labels_at + 8 * i, (uint64_t)labels[i]);
    for (uint64_t i = 0; i < c; i++) ml__put_u64(buf + ages_at + 8 * i, (uint64_t)ages[i]);
    if (p) put_floats(buf + pay_at, payloads, c * (uint64_t)p);
    memcpy(buf, MAGIC, 8);
    ml__put_u32(buf + 8, 2);
    ml__put_u32(buf + 12, V2_HEADER);
    ml__put_u64(buf + 16, (uint64_t)capacity);
    ml__put_u64(buf + 24, (uint64_t)d);
    ml__put_u64(buf + 32, (uint64_t)p);
    ml__put_u64(buf + 40, c);
    ml__put_u64(buf + 48, seed);
    for (int i = 0; i < 4; i++) ml__put_u64(buf + 56 + 8 * i, rng[i]);
    ml__put_u32(buf + 88, ml_crc32(0, buf + keys_at, c * (uint64_t)d * 4));
    ml__put_u32(buf + 92, ml_crc32(0, buf + labels_at, c * 8));
    ml__put_u32(buf + 96, ml_crc32(0, buf + ages_at, c * 8));
    ml__put_u32(buf + 100, ml_crc32(0, buf + pay_at, c * (uint64_t)p * 4));
    ml__put_u32(buf + 124, ml_crc32(0, buf, 124));
}

#define CORRUPT(...) return ml_set_error(ML_ERR_FORMAT, __VA_ARGS__)

/* sizes a file may state (both versions) */
static ml_status check_sizes(const char *path, uint64_t cap, uint64_t d, uint64_t p, uint64_t c) {
    if (cap == 0 || d == 0 || cap > MAX_SIZE || d > MAX_SIZE || p > MAX_SIZE || c > cap ||
        cap > MAX_SIZE / d || (p && cap > MAX_SIZE / p))
        CORRUPT("'%s' is corrupt: bad sizes (capacity %llu, key size %llu, payload size %llu, "
                "count %llu)",
                path, (unsigned long long)cap, (unsigned long long)d, (unsigned long long)p,
                (unsigned long long)c);
    return ML_OK;
}

/* the keys must be finite, the ages non-negative; counts the removed slots (label -1) */
static ml_status check_values(ml__memfile *f, const char *path) {
    const uint8_t *k = f->bytes + f->keys_at, *a = f->bytes + f->ages_at,
                  *l = f->bytes + f->labels_at;
    const uint64_t c = (uint64_t)f->count, n = c * (uint64_t)f->d;
    for (uint64_t i = 0; i < c; i++)
        if ((int64_t)ml__get_u64(a + 8 * i) < 0) CORRUPT("'%s' is corrupt: negative age", path);
    /* exponent bits all ones: inf or NaN; one OR over the keys, branch-free */
    uint32_t bad = 0;
    for (uint64_t i = 0; i < n; i++)
        bad |= (uint32_t)((ml__get_u32(k + 4 * i) & 0x7f800000u) == 0x7f800000u);
    if (bad) CORRUPT("'%s' is corrupt: non-finite key", path);
    f->n_removed = 0;
    for (uint64_t i = 0; i < c; i++) f->n_removed += (int64_t)ml__get_u64(l + 8 * i) == -1;
    return ML_OK;
}

static ml_status check_v1(ml__memfile *f, const uint8_t *buf, size_t size, const char *path) {
    if (size < V1_HEADER + 4) CORRUPT("'%s' is truncated (%zu bytes)", path, size);
    if (ml_crc32(0, buf, size - 4) != ml__get_u32(buf + size - 4))
        CORRUPT("'%s' is corrupt or truncated (checksum mismatch)", path);
    const uint8_t *r = buf + 12;
    uint64_t cap = ml__get_u64(r), d = ml__get_u64(r + 8), p = ml__get_u64(r + 16),
             c = ml__get_u64(r + 24);
    ml_status st = check_sizes(path, cap, d, p, c);
    if (st) return st;
    const uint64_t body = c * (d * 4 + 8 + 8 + p * 4);
    if ((uint64_t)(size - V1_HEADER - 4) != body)
        CORRUPT("'%s' is corrupt: %zu bytes of slots, expected %llu", path, size - V1_HEADER - 4,
                (unsigned long long)body);
    f->capacity = (int64_t)cap, f->d = (int64_t)d, f->p = (int64_t)p, f->count = (int64_t)c;
    f->seed = ml__get_u64(r + 32);
    for (int i = 0; i < 4; i++) f->rng[i] = ml__get_u64(r + 40 + 8 * i);
    f->keys_at = V1_HEADER;
    f->labels_at = f->keys_at + c * d * 4;
    f->ages_at = f->labels_at + c * 8;
    f->payloads_at = f->ages_at + c * 8;
    return check_values(f, path);
}

static ml_status check_v2(ml__memfile *f, const uint8_t *buf, size_t size, const char *path) {
    if (size < V2_HEADER) CORRUPT("'%s' is truncated (%zu bytes)", path, size);
    if (ml_crc32(0, buf, 124) != ml__get_u32(buf + 124))
        CORRUPT("'%s' is corrupt: header checksum mismatch", path);
    if (ml__get_u32(buf + 12) != V2_HEADER)
        CORRUPT("'%s' is corrupt: header of %u bytes, expected %u", path, ml__get_u32(buf + 12),
                V2_HEADER);
    uint64_t cap = ml__get_u64(buf + 16), d = ml__get_u64(buf + 24), p = ml__get_u64(buf + 32),
             c = ml__get_u64(buf + 40);
    ml_status st = check_sizes(path, cap, d, p, c);
    if (st) return st;
    const uint64_t want = ml__memfile_bytes((int64_t)c, (int64_t)d, (int64_t)p);
    if ((uint64_t)size < want)
        CORRUPT("'%s' is truncated: %zu bytes, its header asks for %llu", path, size,
                (unsigned long long)want);
    if ((uint64_t)size > want)
        CORRUPT("'%s' is corrupt: %zu bytes, its header asks for %llu", path, size,
                (unsigned long long)want);
    f->capacity = (int64_t)cap, f->d = (int64_t)d, f->p = (int64_t)p, f->count = (int64_t)c;
    f->seed = ml__get_u64(buf + 48);
    for (int i = 0; i < 4; i++) f->rng[i] = ml__get_u64(buf + 56 + 8 * i);
    const uint64_t bytes[4] = {c * d * 4, c * 8, c * 8, c * p * 4};
    static const char *const names[4] = {"keys", "labels", "ages", "payloads"};
    size_t at[4], pos = V2_HEADER;
    for (int s = 0; s < 4; s++) {
        at[s] = pos;
        if (ml_crc32(0, buf + pos, bytes[s]) != ml__get_u32(buf + 88 + 4 * s))
            CORRUPT("'%s' is corrupt: checksum mismatch in its %s", path, names[s]);
        uint8_t pad = 0; /* the padding is zeros, so that a file has one byte string */
        for (uint64_t i = bytes[s]; i < up64(bytes[s]); i++) pad |= buf[pos + i];
        if (pad) CORRUPT("'%s' is corrupt: non-zero padding after its %s", path, names[s]);
        pos += up64(bytes[s]);
    }
    uint8_t reserved = 0;
    for (int i = 104; i < 124; i++) reserved |= buf[i];
    if (reserved) CORRUPT("'%s' is corrupt: non-zero reserved header bytes", path);
    f->keys_at = at[0], f->labels_at = at[1], f->ages_at = at[2], f->payloads_at = at[3];
    return check_values(f, path);
}

ml_status ml__memfile_check(ml__memfile *f, const uint8_t *buf, size_t size, const char *path) {
    if (!path) path = "(memory)";
    if (size < 8 || memcmp(buf, MAGIC, 8) != 0)
        CORRUPT("'%s' is not a metalearn memory file (bad magic)", path);
    if (size < 12) CORRUPT("'%s' is truncated (%zu bytes)", path, size);
    f->bytes = buf;
    f->size = size;
    f->version = ml__get_u32(buf + 8);
    if (f->version == 1) return check_v1(f, buf, size, path);
    if (f->version == 2) return check_v2(f, buf, size, path);
    CORRUPT("'%s' has memory format version %u; this metalearn reads versions 1 and 2", path,
            f->version);
}

ml_status ml__memfile_map(ml__memfile *f, const char *path) {
    memset(f, 0, sizeof *f);
    if (!path) return ml_set_error(ML_ERR_VALUE, "KnowledgeMemory: path is NULL");
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return ml_set_error(ML_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ml_set_error(ML_ERR_IO, "cannot read '%s': not a regular file", path);
    }
    const size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size) { /* an empty file cannot be mapped; it is refused by its (missing) magic */
        map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return ml_set_error(e == ENOMEM ? ML_ERR_OOM : ML_ERR_IO, "cannot map '%s': %s", path,
                                strerror(e));
        }
    }
    close(fd); /* the map keeps the file */
    static const uint8_t none[1] = {0};
    if (map) posix_madvise(map, size, POSIX_MADV_SEQUENTIAL); /* the check reads it once */
    ml_status st = ml__memfile_check(f, map ? map : none, size, path);
    if (map) posix_madvise(map, size, POSIX_MADV_NORMAL);
    if (st) {
        if (map) munmap(map, size);
        memset(f, 0, sizeof *f);
        return st;
    }
    f->map = map;
    return ML_OK;
}

void ml__memfile_unmap(ml__memfile *f) {
    if (f->map) munmap(f->map, f->size);
    f->map = NULL;
}

int ml__memfile_in_place(const ml__memfile *f) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return f->version == 2 && f->map && ((uintptr_t)(f->bytes + f->keys_at) % V2_ALIGN) == 0;
#else
    return 0; /* the file is little-endian: read into RAM, converted */
#endif
}
