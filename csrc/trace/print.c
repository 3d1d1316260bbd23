/* print.c — a finished trace as text: one line per entry in replay order, by op names
 * (ops.def) with shapes, fused entries marked with the recorded ops they compute.
 *
 *   trace: 2 inputs, 1 output, 16 entries
 *   inputs: x0 (8, 4), x1 (8, 3)
 *      0  t6 (8, 16) = matmul_into(x0 (8, 4), c2 (4, 16), c4 (16,))  [fused: matmul + add + relu]
 *      1  t10 (8, 3) = matmul_into(t6 (8, 16), c7 (16, 3), c9 (3,))  [fused: matmul + add]
 *      2  t11 (8, 3) = sub(t10 (8, 3), x1 (8, 3))
 *      ...
 *     15  optimizer_step(c2 (4, 16), c4 (16,), c7 (16, 3), c9 (3,), t25 (4, 16), ...)
 *   outputs: t13 ()
 *
 * Slots are named by what holds them: x the trace's inputs, c the tensors it captured
 * (weights, constants: a replay reads their current values), t the ones entries compute;
 * the number is the slot's. An entry without `=` works in place. */
#include <stdarg.h>
#include <stdio.h>

#include "../core/record.h"
#include "../ops/ops.h"

/* snprintf into a buffer that may be too small (or absent): len counts the whole text */
typedef struct {
    char *buf;
    size_t size, len;
} sink;

static void put(sink *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(s->len < s->size ? s->buf + s->len : NULL,
                            s->len < s->size ? s->size - s->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0) s->len += (size_t)n;
}

static void put_slot(sink *s, const ml_trace *tr, int32_t slot, int with_shape) {
    if (slot < 0) {
        put(s, "none"); /* an optional input given as NULL (a linear without bias) */
        return;
    }
    const char kind = slot < tr->n_inputs ? 'x' : tr->captured[slot] ? 'c' : 't';
    put(s, "%c%d", kind, (int)slot);
    if (with_shape) {
        const int64_t *sh = tr->slot_shapes[slot];
        put(s, " %s", ml__shape_str((char[160]){0}, 160, (int)sh[0], sh + 1));
    }
}

static void put_entry(sink *s, const ml_trace *tr, int32_t k) {
    const trace_entry *e = &tr->entries[k];
    put(s, "%4d  ", (int)k);
    if (e->out >= 0) {
        put_slot(s, tr, e->out, 1);
        for (int x = 0; x < e->n_extra; x++) {
            put(s, ", ");
            put_slot(s, tr, e->extra[x], 1);
        }
        put(s, " = ");
    }
    put(s, "%s(", ml_op_table[e->op].name);
    for (int i = 0; i < e->n_in; i++) {
        if (i) put(s, ", ");
        put_slot(s, tr, e->in[i], 1);
    }
    put(s, ")");
    if (e->n_parts > 1) {
        put(s, "  [fused: ");
        for (int p = 0; p < e->n_parts; p++)
            put(s, p ? " + %s" : "%s", ml_op_table[e->parts[p]].name);
        put(s, "]");
    }
    put(s, "\n");
}

static int finished(const ml_trace *tr) {
    return tr && __atomic_load_n(&tr->state, __ATOMIC_ACQUIRE) == TR_FINISHED;
}

size_t ml_trace_format(const ml_trace *tr, char *buf, size_t size) {
    sink s = {buf, size, 0};
    if (size) buf[0] = '\0';
    if (!finished(tr)) return 0;
    put(&s, "trace: %d input%s, %d output%s, %d entr%s\n", tr->n_inputs,
        tr->n_inputs == 1 ? "" : "s", tr->n_outputs, tr->n_outputs == 1 ? "" : "s",
        (int)tr->n_entries, tr->n_entries == 1 ? "y" : "ies");
    put(&s, "inputs:");
    for (int i = 0; i < tr->n_inputs; i++) {
        put(&s, i ? ", " : " ");
        put_slot(&s, tr, i, 1);
    }
    put(&s, "\n");
    for (int32_t k = 0; k < tr->n_entries; k++) put_entry(&s, tr, k);
    put(&s, "outputs:");
    for (int o = 0; o < tr->n_outputs; o++) {
        put(&s, o ? ", " : " ");
        put_slot(&s, tr, tr->output_slots[o], 1);
    }
    put(&s, "\n");
    return s.len;
}

ml_status ml_trace_print(const ml_trace *tr, FILE *f) {
    if (!finished(tr)) return ml_set_error(ML_ERR_VALUE, "trace_print: the trace is not finished");
    if (!f) return ml_set_error(ML_ERR_VALUE, "trace_print: the file is NULL");
    const size_t n = ml_trace_format(tr, NULL, 0);
    char *text = malloc(n + 1);
    if (!text) return ml_set_error(ML_ERR_OOM, "out of memory");
    ml_trace_format(tr, text, n + 1);
    const int ok = fwrite(text, 1, n, f) == n;
    free(text);
    return ok ? ML_OK : ml_set_error(ML_ERR_IO, "trace_print: could not write the text");
}
