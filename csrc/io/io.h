/* io.h — what the files of the core share (io/weights.c, memory/memory.c): the
 * little-endian encoding of their formats and the atomic write. */
#ifndef ML_IO_H
#define ML_IO_H

#include <stddef.h>
#include <stdint.h>

#include "metalearn.h"

/* Little-endian encoding of the file formats (weights, memory), whatever the host. */
static inline void ml__put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void ml__put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t ml__get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static inline uint64_t ml__get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* io/weights.c: unique temporary file next to the (link-resolved) target + fsync +
 * rename + fsync of the directory (weights and memory files); special files refused. */
ml_status ml__write_atomic(const char *path, const void *buf, size_t size);

#endif /* ML_IO_H */
