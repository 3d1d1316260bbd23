/* mmap.h — the knowledge memory's file formats (memory/mmap.c): checking a file in place,
 * mapping it read-only, writing version 2. Internal to memory/. */
#ifndef ML_MEMORY_MMAP_H
#define ML_MEMORY_MMAP_H

#include <stddef.h>
#include <stdint.h>

#include "metalearn.h"

/* A checked memory file: its sizes and stream, and where its slabs lie in `bytes`. */
typedef struct ml__memfile {
    const uint8_t *bytes; /* the whole file (a read-only map when `map` is set) */
    size_t size;
    void *map; /* what ml__memfile_map mapped (NULL: `bytes` belongs to the caller) */
    uint32_t version;
    int64_t capacity, d, p, count, n_removed;
    uint64_t seed, rng[4];
    size_t keys_at, labels_at, ages_at, payloads_at; /* byte offsets of the slabs */
} ml__memfile;

/* The bytes of a version-2 file of `count` slots. */
size_t ml__memfile_bytes(int64_t count, int64_t d, int64_t p);

/* Writes a version-2 file into buf (ml__memfile_bytes(count, d, p) bytes). */
void ml__memfile_write(uint8_t *buf, int64_t capacity, int64_t d, int64_t p, int64_t count,
                       uint64_t seed, const uint64_t rng[4], const float *keys,
                       const int64_t *labels, const int64_t *ages, const float *payloads);

/* Checks all of `size` bytes as a memory file of version 1 or 2 (magic, version, sizes
 * against the length, CRC-32s, finite keys, non-negative ages) and fills f; reads nothing
 * outside [buf, buf + size). ML_ERR_FORMAT naming `path` on any fault. */
ml_status ml__memfile_check(ml__memfile *f, const uint8_t *buf, size_t size, const char *path);

/* Opens `path` (a regular file), maps it read-only and checks it (ml__memfile_check); on
 * success the map is f->map, released by ml__memfile_unmap. */
ml_status ml__memfile_map(ml__memfile *f, const char *path);
void ml__memfile_unmap(ml__memfile *f);

/* Whether the slabs of a checked file can be used in place (version 2, 64-byte aligned
 * keys, on a little-endian host whose floats and int64 are the file's). */
int ml__memfile_in_place(const ml__memfile *f);

/* n bytes (free() releases them), 2 MiB aligned and advised to transparent huge pages where
 * the system has them (Linux's MADV_HUGEPAGE) when n is at least 2 MiB: the IVF lists' keys,
 * which a probe reads list by list from all over the index (with 4 KiB pages most of the
 * pages it touches miss the TLB). NULL when out of memory. */
void *ml__alloc_huge(size_t n);

#endif /* ML_MEMORY_MMAP_H */
