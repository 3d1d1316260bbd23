/* test_memory.c — C unit tests of the knowledge memory (csrc/memory/memory.c): sizes
 * refused, the update rule (merge, write, oldest slot, ages, tie-break reproducibility),
 * exact top-k against brute force, the soft read and memory loss with their gradients
 * (first and second order, central differences), save/load with corrupt files refused.
 * Runs under ASan + UBSan in CI (`make -C csrc sanitize`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"
#include "kernels/cpu.h"
#include "kernels/topk.h"
#include "memory/mmap.h"
#include "metalearn.h"

static int n_pass, n_fail;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (cond) n_pass++;                                       \
        else {                                                    \
            n_fail++;                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);           \
            printf(__VA_ARGS__);                                  \
            printf("\n");                                         \
        }                                                         \
    } while (0)

#define OK(expr) CHECK((expr) == ML_OK, "%s -> %s", #expr, ml_last_error())

static uint64_t lcg = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((lcg >> 40) * 0x1.0p-24) * 2.0f - 1.0f;
}

static void test_sizes(void) {
    ml_memory *m = NULL;
    CHECK(ml_memory_new(&m, 0, 4, 0, 0) == ML_ERR_VALUE, "capacity 0 refused");
    CHECK(ml_memory_new(&m, -3, 4, 0, 0) == ML_ERR_VALUE, "capacity < 0 refused");
    CHECK(ml_memory_new(&m, 4, 0, 0, 0) == ML_ERR_VALUE, "key size 0 refused");
    CHECK(ml_memory_new(&m, 4, 4, -1, 0) == ML_ERR_VALUE, "payload < 0 refused");
    CHECK(ml_memory_new(&m, (int64_t)1 << 40, (int64_t)1 << 20, 0, 0) == ML_ERR_OOM,
          "huge refused");
    CHECK(m == NULL, "nothing made");
    OK(ml_memory_new(&m, 4, 3, 0, 0));
    float q[3] = {1, 0, 0}, nanq[3] = {1, NAN, 0};
    int64_t idx[5], lab = 1;
    float sim[5];
    CHECK(ml_memory_query(m, 1, q, 5, idx, sim, NULL, NULL) == ML_ERR_VALUE, "k > capacity");
    CHECK(ml_memory_query(m, 1, q, 0, idx, sim, NULL, NULL) == ML_ERR_VALUE, "k = 0");
    CHECK(ml_memory_query(m, 1, nanq, 1, idx, sim, NULL, NULL) == ML_ERR_VALUE, "NaN query");
    CHECK(ml_memory_update(m, 1, nanq, &lab, NULL) == ML_ERR_VALUE, "NaN update");
    CHECK(ml_memory_size(m) == 0, "nothing written");
    CHECK(ml_memory_query(NULL, 1, q, 1, idx, sim, NULL, NULL) == ML_ERR_VALUE, "NULL memory");
    OK(ml_memory_query(m, 1, q, 2, idx, sim, NULL, NULL));
    CHECK(idx[0] == -1 && isinf(sim[0]) && sim[0] < 0, "empty memory pads");
    ml_memory_free(m);
    ml_memory_free(NULL);
}

static void test_update_rule(void) {
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, 3, 3, 1, 0));
    float e[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    int64_t labels[3] = {0, 1, 2};
    float pay[3] = {10, 20, 30};
    for (int i = 0; i < 3; i++) OK(ml_memory_update(m, 1, e + 3 * i, labels + i, pay + i));
    int64_t ages[3], lab[3];
    float keys[9], p[3];
    OK(ml_memory_state(m, keys, lab, ages, p));
    CHECK(ages[0] == 2 && ages[1] == 1 && ages[2] == 0, "ages %lld %lld %lld", (long long)ages[0],
          (long long)ages[1], (long long)ages[2]);
    /* merge: near e0 with label 0 */
    float q[3] = {1, 1, 0}, pq = 0;
    int64_t y = 0;
    OK(ml_memory_update(m, 1, q, &y, &pq));
    OK(ml_memory_state(m, keys, lab, ages, p));
    double a = 1 + 1 / sqrt(2.0), b = 1 / sqrt(2.0), n = sqrt(a * a + b * b);
    CHECK(fabs(keys[0] - a / n) < 1e-6 && fabs(keys[1] - b / n) < 1e-6, "merged key");
    CHECK(p[0] == 5.0f && ages[0] == 0 && ages[1] == 2 && ages[2] == 1, "payload mean, ages");
    CHECK(ml_memory_size(m) == 3, "size 3");
    /* a wrong label: the oldest slot (slot 1, age 3 after the step) */
    y = 7;
    OK(ml_memory_update(m, 1, q, &y, NULL));
    OK(ml_memory_state(m, keys, lab, ages, p));
    CHECK(lab[1] == 7 && ages[1] == 0 && p[1] == 0, "written into the oldest");
    OK(ml_memory_clear(m));
    CHECK(ml_memory_size(m) == 0 && ml_memory_occupancy(m) == 0.0, "cleared");
    ml_memory_free(m);
}

/* Same seed, same tie-breaks; the first-index tie-break is not always taken. */
static void test_tie_break(void) {
    int seen[4] = {0};
    for (uint64_t seed = 0; seed < 16; seed++) {
        int64_t slot[2];
        for (int rep = 0; rep < 2; rep++) {
            ml_memory *m = NULL;
            OK(ml_memory_new(&m, 4, 2, 0, seed));
            float q[8] = {1, 0, 0, 1, -1, 0, 0, -1}, nq[2] = {1, 1};
            int64_t y[4] = {0, 1, 2, 3}, ny = 9, lab[4];
            OK(ml_memory_update(m, 4, q, y, NULL)); /* all age 0: a tie next time */
            OK(ml_memory_update(m, 1, nq, &ny, NULL));
            OK(ml_memory_state(m, NULL, lab, NULL, NULL));
            slot[rep] = -1;
            for (int i = 0; i < 4; i++)
                if (lab[i] == 9) slot[rep] = i;
            ml_memory_free(m);
        }
        CHECK(slot[0] == slot[1] && slot[0] >= 0, "reproducible tie-break");
        if (slot[0] >= 0) seen[slot[0]]++;
    }
    CHECK((seen[0] > 0) + (seen[1] > 0) + (seen[2] > 0) + (seen[3] > 0) >= 2, "random tie-break");
}

static void test_query_brute_force(void) {
    enum { M = 700, D = 9, N = 5, K = 4 };
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, M, D, 0, 1));
    static float keys[M * D], q[N * D], stored[M * D];
    static int64_t y[M];
    for (int i = 0; i < M * D; i++) keys[i] = frand();
    for (int i = 0; i < M; i++) y[i] = i;
    OK(ml_memory_update(m, M, keys, y, NULL));
    CHECK(ml_memory_size(m) == M, "all written (distinct labels)");
    OK(ml_memory_state(m, stored, NULL, NULL, NULL));
    for (int i = 0; i < N * D; i++) q[i] = frand();
    int64_t idx[N * K], lab[N * K];
    float sim[N * K];
    OK(ml_memory_query(m, N, q, K, idx, sim, lab, NULL));
    for (int i = 0; i < N; i++) {
        double nq = 0;
        for (int j = 0; j < D; j++) nq += (double)q[i * D + j] * q[i * D + j];
        nq = sqrt(nq);
        double prev = INFINITY;
        for (int t = 0; t < K; t++) {
            double best = -INFINITY;
            int64_t bi = -1;
            for (int64_t s = 0; s < M; s++) {
                double v = 0;
                for (int j = 0; j < D; j++) v += (double)q[i * D + j] * stored[s * D + j];
                v /= nq;
                if (v < prev - 1e-12 && v > best) best = v, bi = s;
            }
            prev = best;
            CHECK(idx[i * K + t] == bi && fabs(sim[i * K + t] - best) < 1e-5 &&
                      lab[i * K + t] == bi,
                  "query %d rank %d: %lld vs %lld", i, t, (long long)idx[i * K + t], (long long)bi);
        }
    }
    ml_memory_free(m);
}

/* d/dq of sum(R * f(q)) by central differences vs ml_grad; second order through
 * create_graph on <grad, v>. kind 0: soft read; kind 1: memory loss. */
static double objective(ml_memory *m, int kind, const float *qv, const float *R, int64_t n,
                        int64_t d, const int64_t *y) {
    ml_tensor *q = NULL, *o = NULL;
    int64_t shape[2] = {n, d};
    ml_tensor_from_data(&q, 2, shape, qv);
    if (kind == 0)
        ml_memory_read(&o, NULL, m, q, 4, 0.5f);
    else
        ml_memory_loss(&o, m, q, n, y, 6, 0.8f);
    double s = 0;
    for (int64_t i = 0; i < o->numel; i++) s += (double)R[i] * o->data[i];
    ml_release(q);
    ml_release(o);
    return s;
}

static void test_gradients(int kind) {
    enum { N = 2, D = 4, P = 3, MCAP = 6 };
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, MCAP, D, P, 0));
    float keys[MCAP * D], pay[MCAP * P], qv[N * D], R[N * P], v[N * D];
    int64_t lab[MCAP] = {0, 1, 2, 0, 1, 2}, y[N] = {0, 1};
    for (int i = 0; i < MCAP * D; i++) keys[i] = frand();
    for (int i = 0; i < MCAP * P; i++) pay[i] = frand();
    for (int i = 0; i < N * D; i++) qv[i] = frand(), v[i] = frand();
    for (int i = 0; i < N * P; i++) R[i] = frand();
    OK(ml_memory_update(m, MCAP, keys, lab, pay));
    int64_t shape[2] = {N, D}, rshape[1] = {kind == 0 ? N * P : N};
    ml_tensor *q = NULL, *o = NULL, *flat = NULL, *Rt = NULL, *prod = NULL, *L = NULL, *g = NULL;
    OK(ml_tensor_from_data(&q, 2, shape, qv));
    OK(ml_set_requires_grad(q, 1));
    if (kind == 0)
        OK(ml_memory_read(&o, NULL, m, q, 4, 0.5f));
    else
        OK(ml_memory_loss(&o, m, q, N, y, 6, 0.8f));
    OK(ml_reshape(&flat, o, 1, rshape));
    OK(ml_tensor_from_data(&Rt, 1, rshape, R));
    OK(ml_mul(&prod, flat, Rt));
    OK(ml_sum(&L, prod, 0, NULL, 0));
    OK(ml_grad(&g, 1, &L, 1, &q, NULL, ML_GRAD_CREATE_GRAPH));
    const double h = 1e-2;
    double max_err = 0, max_g = 0;
    float qp[N * D];
    for (int i = 0; i < N * D; i++) {
        memcpy(qp, qv, sizeof qp);
        qp[i] = qv[i] + (float)h;
        double fp = objective(m, kind, qp, R, N, D, y);
        qp[i] = qv[i] - (float)h;
        double fm = objective(m, kind, qp, R, N, D, y);
        double fd = (fp - fm) / (2 * h);
        max_err = fmax(max_err, fabs(fd - g->data[i]));
        max_g = fmax(max_g, fabs(g->data[i]));
    }
    CHECK(max_err < 2e-3 && max_g > 1e-2, "kind %d first order: err %g, |g| %g", kind, max_err,
          max_g);
    /* second order: d/dq <g, v> vs central differences of <g(q), v> */
    ml_tensor *vt = NULL, *gv = NULL, *S = NULL, *h2 = NULL;
    OK(ml_tensor_from_data(&vt, 2, shape, v));
    OK(ml_mul(&gv, g, vt));
    OK(ml_sum(&S, gv, 0, NULL, 0));
    OK(ml_grad(&h2, 1, &S, 1, &q, NULL, 0));
    max_err = 0;
    max_g = 0;
    for (int i = 0; i < N * D && h2; i++) {
        double side[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float qq[N * D];
            memcpy(qq, qv, sizeof qq);
            qq[i] += sgn ? -(float)h : (float)h;
            ml_tensor *q2 = NULL, *o2 = NULL, *f2 = NULL, *p2 = NULL, *L2 = NULL, *g2 = NULL;
            ml_tensor_from_data(&q2, 2, shape, qq);
            ml_set_requires_grad(q2, 1);
            if (kind == 0)
                ml_memory_read(&o2, NULL, m, q2, 4, 0.5f);
            else
                ml_memory_loss(&o2, m, q2, N, y, 6, 0.8f);
            ml_reshape(&f2, o2, 1, rshape);
            ml_mul(&p2, f2, Rt);
            ml_sum(&L2, p2, 0, NULL, 0);
            ml_grad(&g2, 1, &L2, 1, &q2, NULL, 0);
            double s = 0;
            for (int j = 0; j < N * D; j++) s += (double)g2->data[j] * v[j];
            side[sgn] = s;
            ml_release(q2), ml_release(o2), ml_release(f2), ml_release(p2), ml_release(L2),
                ml_release(g2);
        }
        double fd = (side[0] - side[1]) / (2 * h);
        max_err = fmax(max_err, fabs(fd - h2->data[i]));
        max_g = fmax(max_g, fabs(h2->data[i]));
    }
    CHECK(h2 && max_err < 1e-2 * (1 + max_g) && max_g > 1e-2,
          "kind %d second order: err %g, |h| %g", kind, max_err, max_g);
    ml_release(q), ml_release(o), ml_release(flat), ml_release(Rt), ml_release(prod);
    ml_release(L), ml_release(g), ml_release(vt), ml_release(gv), ml_release(S), ml_release(h2);
    ml_memory_free(m);
}

static void test_files(void) {
    char path[64], bad[72];
    snprintf(path, sizeof path, "/tmp/ml_test_memory_%ld.mlm", (long)getpid());
    snprintf(bad, sizeof bad, "%s.bad", path);
    ml_memory *a = NULL, *b = NULL, *c = NULL;
    OK(ml_memory_new(&a, 8, 3, 2, 5));
    OK(ml_memory_new(&b, 8, 3, 2, 6));
    float q[15], pay[10];
    int64_t y[5] = {1, 2, 3, 4, 5};
    for (int i = 0; i < 15; i++) q[i] = frand();
    for (int i = 0; i < 10; i++) pay[i] = frand();
    OK(ml_memory_update(a, 5, q, y, pay));
    OK(ml_memory_save(a, path));
    OK(ml_memory_load(b, path));
    OK(ml_memory_open(&c, path));
    float ka[24], kb[24], kc[24];
    int64_t la[8], lb[8], ga[8], gb[8];
    OK(ml_memory_state(a, ka, la, ga, NULL));
    OK(ml_memory_state(b, kb, lb, gb, NULL));
    OK(ml_memory_state(c, kc, NULL, NULL, NULL));
    CHECK(!memcmp(ka, kb, sizeof ka) && !memcmp(ka, kc, sizeof ka) && !memcmp(la, lb, sizeof la) &&
              !memcmp(ga, gb, sizeof ga) && ml_memory_size(b) == 5,
          "round trip");
    /* corrupt copies */
    FILE *f = fopen(path, "rb");
    static uint8_t buf[4096];
    size_t size = fread(buf, 1, sizeof buf, f);
    fclose(f);
    ml_memory *d = NULL;
    OK(ml_memory_new(&d, 8, 3, 2, 0));
    for (int kind = 0; kind < 4; kind++) {
        uint8_t copy[4096];
        memcpy(copy, buf, size);
        size_t len = size;
        if (kind == 0) copy[size / 2] ^= 1;  /* flipped bit */
        if (kind == 1) len = size - 5;       /* truncated */
        if (kind == 2) copy[0] = 'X';        /* bad magic */
        if (kind == 3) len = 3;
        f = fopen(bad, "wb");
        fwrite(copy, 1, len, f);
        fclose(f);
        CHECK(ml_memory_load(d, bad) == ML_ERR_FORMAT, "corrupt file %d refused", kind);
        CHECK(ml_memory_size(d) == 0, "memory unchanged");
    }
    ml_memory *e = NULL;
    OK(ml_memory_new(&e, 9, 3, 2, 0));
    CHECK(ml_memory_load(e, path) == ML_ERR_VALUE, "other capacity refused");
    CHECK(ml_memory_load(e, "/nonexistent/x.mlm") == ML_ERR_IO, "missing file");
    unlink(path);
    unlink(bad);
    ml_memory_free(a), ml_memory_free(b), ml_memory_free(c), ml_memory_free(d), ml_memory_free(e);
}

/* Label -1 is what a query returns for an empty slot: an update holding it is refused
 * before anything changes, even when the -1 comes after good labels. */
static void test_empty_label_refused(void) {
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, 4, 2, 0, 7));
    const float q[6] = {1, 0, 0, 1, 1, 1};
    const int64_t good[1] = {5}, bad[3] = {1, 2, -1};
    OK(ml_memory_update(m, 1, q, good, NULL));
    float keys0[8], keys1[8];
    int64_t lab0[4], lab1[4], age0[4], age1[4];
    OK(ml_memory_state(m, keys0, lab0, age0, NULL));
    CHECK(ml_memory_update(m, 3, q, bad, NULL) == ML_ERR_VALUE, "label -1 was stored");
    CHECK(strstr(ml_last_error(), "label -1") && strstr(ml_last_error(), "position 2"),
          "message: %s", ml_last_error());
    OK(ml_memory_state(m, keys1, lab1, age1, NULL));
    CHECK(ml_memory_size(m) == 1 && !memcmp(keys0, keys1, sizeof keys0) &&
              !memcmp(lab0, lab1, sizeof lab0) && !memcmp(age0, age1, sizeof age0),
          "a refused update changed the memory");
    const int64_t other[1] = {-2}; /* other negative labels are ordinary classes */
    OK(ml_memory_update(m, 1, q + 2, other, NULL));
    ml_memory_free(m);
}


/* The key scan (kernels/topk.c): its scores are the 16-lane sums whatever the variant
 * (AVX2 or portable: the same bits), the block and the batch; the memory's scan search
 * gives the same top-k bits at 1, 2 and 3 threads over many tasks, ties lower slot first. */
static float lane_dot(const float *q, const float *k, int64_t d) {
    float a[16] = {0}, b[8], c[4];
    for (int64_t i = 0; i < d; i++) a[i % 16] += q[i] * k[i];
    for (int l = 0; l < 8; l++) b[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) c[l] = b[l] + b[l + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* The scans at widths with and without a tail past the last 16 lanes (the AVX2 variants
 * sum a whole-lane width in registers, a tail through memory): AVX2 and portable give the
 * same bits, which are the documented lane sums, for float32, float16 and int8 keys, one
 * query and several. */
static void test_key_scan_widths(void) {
    enum { NB = 13, N = 3, DMAX = 160 };
    static const int64_t dims[] = {16, 45, 64, 128, 160};
    static float keys[NB * DMAX], q[N * DMAX], scales[NB], s[3][2][N * NB];
    static uint16_t k16[NB * DMAX];
    static int8_t k8[NB * DMAX];
    for (int i = 0; i < NB * DMAX; i++) {
        keys[i] = frand();
        k16[i] = ml__f32_to_f16(frand());
        k8[i] = (int8_t)(frand() * 127);
    }
    for (int i = 0; i < N * DMAX; i++) q[i] = frand();
    for (int j = 0; j < NB; j++) scales[j] = 0.003f * (float)(j + 1);
    for (size_t c = 0; c < sizeof dims / sizeof dims[0]; c++) {
        const int64_t d = dims[c];
        for (int64_t n = 1; n <= N; n += N - 1) {
            for (int v = 0; v < 2; v++) {
                atomic_store(&ml__cpu_isa, v && ML_HAVE_AVX2 ? ML_CPU_AVX2 : ML_CPU_PORTABLE);
                ml__key_scores(n, q, NB, keys, d, s[0][v]);
                ml__key_scores_f16(n, q, NB, k16, d, s[1][v]);
                ml__key_scores_i8(n, q, NB, k8, scales, d, s[2][v]);
            }
            atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
            int same = 1, lanes = 1;
            for (int t = 0; t < 3; t++) same &= !memcmp(s[t][0], s[t][1], (size_t)(n * NB) * 4);
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < NB; j++) {
                    float r16[DMAX], r8[DMAX], w[3];
                    for (int64_t e = 0; e < d; e++) {
                        r16[e] = ml__f16_to_f32(k16[j * d + e]);
                        r8[e] = (float)k8[j * d + e];
                    }
                    w[0] = lane_dot(q + i * d, keys + j * d, d);
                    w[1] = lane_dot(q + i * d, r16, d);
                    w[2] = scales[j] * lane_dot(q + i * d, r8, d);
                    for (int t = 0; t < 3; t++) lanes &= !memcmp(&w[t], &s[t][1][i * NB + j], 4);
                }
            CHECK(same, "key scans at d=%lld, n=%lld: AVX2 and portable give the same bits",
                  (long long)d, (long long)n);
            CHECK(lanes, "key scans at d=%lld, n=%lld: the documented lane sums", (long long)d,
                  (long long)n);
        }
    }
}

/* The IVF prefilter's integer dot products: AVX2 and portable give the exact sums (a 64-bit
 * reference), at widths with and without a tail past the 16-wide chunks, row counts not a
 * multiple of 4, and the largest products (q 127, keys +-127: no int16 saturation). */
static void test_int8_dots(void) {
    enum { NB = 11, DMAX = 200 };
    static const int64_t dims[] = {1, 16, 40, 128, 200};
    static int8_t c[NB * DMAX];
    static uint8_t q[DMAX];
    int32_t out[2][NB];
    for (int extreme = 0; extreme < 2; extreme++) {
        for (int i = 0; i < NB * DMAX; i++)
            c[i] = extreme ? (int8_t)(i % 3 ? 127 : -127) : (int8_t)(frand() * 127);
        for (int i = 0; i < DMAX; i++)
            q[i] = extreme ? 127 : (uint8_t)((frand() + 1) * 63.5f); /* in [0, 127] */
        for (size_t w = 0; w < sizeof dims / sizeof dims[0]; w++) {
            const int64_t d = dims[w];
            for (int v = 0; v < 2; v++) {
                atomic_store(&ml__cpu_isa, v && ML_HAVE_AVX2 ? ML_CPU_AVX2 : ML_CPU_PORTABLE);
                ml__int8_dots(q, NB, c, d, out[v]);
            }
            atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
            int exact = 1;
            for (int64_t j = 0; j < NB; j++) {
                int64_t want = 0;
                for (int64_t t = 0; t < d; t++) want += (int64_t)q[t] * c[j * d + t];
                exact &= out[0][j] == want && out[1][j] == want;
            }
            CHECK(exact, "int8 dots at d=%lld (extreme %d): AVX2 and portable, the exact sums",
                  (long long)d, extreme);
        }
    }
}

/* The cached-keys scan (four keys a pass, IVF centroids) gives ml__key_scores' bits, AVX2 and
 * portable, at lengths that are multiples of 16 and not, and nb not a multiple of 4. */
static void test_key_scores_cached(void) {
    enum { NB = 11, DMAX = 144 };
    static const int64_t dims[] = {1, 16, 40, 64, 144};
    static float keys[NB * DMAX], q[DMAX], s[3][NB];
    for (int i = 0; i < NB * DMAX; i++) keys[i] = frand();
    for (int i = 0; i < DMAX; i++) q[i] = frand();
    for (size_t w = 0; w < sizeof dims / sizeof dims[0]; w++) {
        const int64_t d = dims[w];
        for (int64_t nb = 1; nb <= NB; nb += 3) {
            for (int v = 0; v < 2; v++) {
                atomic_store(&ml__cpu_isa, v && ML_HAVE_AVX2 ? ML_CPU_AVX2 : ML_CPU_PORTABLE);
                ml__key_scores_cached(q, nb, keys, d, s[v]);
                if (v) ml__key_scores(1, q, nb, keys, d, s[2]);
            }
            atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
            int same = 1;
            for (int64_t j = 0; j < nb; j++) {
                const float want = lane_dot(q, keys + j * d, d);
                same &= !memcmp(&s[0][j], &want, 4) && !memcmp(&s[1][j], &want, 4) &&
                        !memcmp(&s[2][j], &want, 4);
            }
            CHECK(same, "cached key scores at d=%lld nb=%lld: the lane sums' bits", (long long)d,
                  (long long)nb);
        }
    }
}

static void test_key_scan(void) {
    enum { NB = 37, D = 45, N = 3 };
    static float keys[NB * D], q[N * D], s[2][N * NB];
    for (int i = 0; i < NB * D; i++) keys[i] = frand();
    for (int i = 0; i < N * D; i++) q[i] = frand();
    for (int v = 0; v < 2; v++) {
        atomic_store(&ml__cpu_isa, v ? ML_CPU_AVX2 : ML_CPU_PORTABLE);
        if (v && !ML_HAVE_AVX2) atomic_store(&ml__cpu_isa, ML_CPU_PORTABLE);
        ml__key_scores(N, q, NB, keys, D, s[v]);
    }
    atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
    int same = 1, lanes = 1;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < NB; j++) {
            same &= !memcmp(&s[0][i * NB + j], &s[1][i * NB + j], 4);
            float want = lane_dot(q + i * D, keys + j * D, D), got = s[0][i * NB + j];
            lanes &= !memcmp(&want, &got, 4);
        }
    CHECK(same, "key scan: AVX2 and portable give the same bits");
    CHECK(lanes, "key scan: the documented 16-lane sum");

    /* a memory over five scan tasks, every key repeated 5000 slots later (exact ties) */
    enum { M = 18000, D2 = 20, K = 6 };
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, M, D2, 0, 3));
    float *k2 = malloc(sizeof(float) * M * D2);
    int64_t *lab = malloc(sizeof(int64_t) * M);
    for (int64_t j = 0; j < M; j++) {
        lab[j] = j;
        for (int i = 0; i < D2; i++) k2[j * D2 + i] = j >= 5000 ? k2[(j - 5000) * D2 + i] : frand();
    }
    OK(ml_memory_update(m, M, k2, lab, NULL));
    CHECK(ml_memory_size(m) == M, "filled");
    int64_t idx[3][2 * K];
    float sim[3][2 * K];
    for (int t = 1; t <= 3; t++) {
        ml_set_num_threads(t);
        OK(ml_memory_query(m, 2, q, K, idx[t - 1], sim[t - 1], NULL, NULL));
    }
    ml_set_num_threads(0);
    CHECK(!memcmp(idx[0], idx[1], sizeof idx[0]) && !memcmp(idx[0], idx[2], sizeof idx[0]) &&
              !memcmp(sim[0], sim[1], sizeof sim[0]) && !memcmp(sim[0], sim[2], sizeof sim[0]),
          "scan: the same top-k bits at 1, 2 and 3 threads");
    int order = 1;
    for (int i = 0; i < 2; i++)
        for (int t = 1; t < K; t++) {
            float a = sim[0][i * K + t - 1], b = sim[0][i * K + t];
            order &= a > b || (a == b && idx[0][i * K + t - 1] < idx[0][i * K + t]);
        }
    CHECK(order, "scan: best first, equal scores lower slot first");
    CHECK(idx[0][1] == idx[0][0] + 5000 || idx[0][1] == idx[0][0] - 5000 || sim[0][0] != sim[0][1],
          "scan: the repeated key is the tie");
    free(k2);
    free(lab);
    ml_memory_free(m);
}

/* ids: update/add return slots; remove refuses bad ids with nothing changed; removed slots
 * are never returned and are reused first; the label filter. */
static void test_ids_and_remove(void) {
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, 6, 2, 0, 0));
    float k[10] = {1, 0, 0, 1, -1, 0, 0, -1, 1, 1};
    int64_t y[5] = {0, 1, 2, 3, 4}, slots[5], labels[6], idx[5];
    float sim[5];
    OK(ml_memory_add(m, 5, k, y, NULL, slots));
    CHECK(slots[0] == 0 && slots[4] == 4 && ml_memory_size(m) == 5, "add: slots 0..4");
    int64_t bad[3][2] = {{5, 1}, {-1, 1}, {1, 1}};
    for (int i = 0; i < 3; i++)
        CHECK(ml_memory_remove(m, 2, bad[i]) == ML_ERR_VALUE, "bad ids refused (%d)", i);
    OK(ml_memory_state(m, NULL, labels, NULL, NULL));
    CHECK(labels[1] == 1 && ml_memory_size(m) == 5, "nothing removed by a refused call");
    int64_t rm[2] = {4, 0};
    OK(ml_memory_remove(m, 2, rm));
    CHECK(ml_memory_remove(m, 1, rm) == ML_ERR_VALUE, "removed twice refused");
    CHECK(ml_memory_size(m) == 3, "size 3 after remove");
    float q[2] = {1, 0.9f};
    OK(ml_memory_query(m, 1, q, 5, idx, sim, NULL, NULL));
    CHECK(idx[0] == 1 && idx[1] == 3 && idx[2] == 2 && idx[3] == -1, "removed never returned");
    int64_t only = 2;
    OK(ml_memory_query_where(m, 1, q, 2, 1, &only, 0, idx, sim, NULL, NULL));
    CHECK(idx[0] == 2 && idx[1] == -1, "filter by label");
    int64_t ny = 9, slot = -1;
    OK(ml_memory_update_slots(m, 1, q, &ny, NULL, &slot));
    CHECK(slot == 0, "the lowest removed slot reused first, got %lld", (long long)slot);
    ml_memory_free(m);
}

/* Compact keys: binary16 conversion exact both ways over every finite half, midpoints
 * rounded to even; the f16 and int8 scans agree between AVX2 and portable bit for bit. */
static double half_value(uint16_t h) {
    int e = (h >> 10) & 31, f = h & 1023;
    double v = e ? ldexp(1024 + f, e - 25) : ldexp(f, -24);
    return (h & 0x8000) ? -v : v;
}

static void test_compact_keys(void) {
    int exact = 1, back = 1, ties = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31) continue; /* inf / NaN */
        float f = ml__f16_to_f32((uint16_t)h);
        exact &= (double)f == half_value((uint16_t)h);
        back &= ml__f32_to_f16(f) == (uint16_t)h || (h == 0x8000 && ml__f32_to_f16(f) == 0x8000);
        uint32_t next = h + 1;
        if ((h & 0x7fff) < 0x7bff) { /* the midpoint to the next half goes to the even one */
            float mid = (float)((half_value((uint16_t)h) + half_value((uint16_t)next)) / 2);
            uint16_t want = (h & 1) ? (uint16_t)next : (uint16_t)h;
            ties &= ml__f32_to_f16(mid) == want;
        }
    }
    CHECK(exact, "f16 -> f32 exact for every finite half");
    CHECK(back, "f32 -> f16 -> the same half");
    CHECK(ties, "f32 -> f16 midpoints round to even");
    CHECK(ml__f32_to_f16(65520.0f) == 0x7c00 && ml__f32_to_f16(-1e9f) == 0xfc00,
          "f16 overflow to infinity");

    enum { NB = 29, D = 37, N = 2 };
    static float q[N * D], s16[2][N * NB], s8[2][N * NB], scales[NB];
    static uint16_t k16[NB * D];
    static int8_t k8[NB * D];
    for (int i = 0; i < N * D; i++) q[i] = frand();
    for (int i = 0; i < NB * D; i++)
        k16[i] = ml__f32_to_f16(frand()), k8[i] = (int8_t)(frand() * 127);
    for (int j = 0; j < NB; j++) scales[j] = 0.01f * (float)(j + 1);
    for (int v = 0; v < 2; v++) {
        atomic_store(&ml__cpu_isa, v && ML_HAVE_AVX2 ? ML_CPU_AVX2 : ML_CPU_PORTABLE);
        ml__key_scores_f16(N, q, NB, k16, D, s16[v]);
        ml__key_scores_i8(N, q, NB, k8, scales, D, s8[v]);
    }
    atomic_store(&ml__cpu_isa, ML_CPU_UNDECIDED);
    CHECK(!memcmp(s16[0], s16[1], sizeof s16[0]), "f16 scan: AVX2 and portable agree");
    CHECK(!memcmp(s8[0], s8[1], sizeof s8[0]), "int8 scan: AVX2 and portable agree");
    float row[D], want;
    for (int i = 0; i < D; i++) row[i] = ml__f16_to_f32(k16[5 * D + i]);
    want = lane_dot(q + D, row, D);
    CHECK(!memcmp(&want, &s16[0][NB + 5], 4), "f16 scan: the lane sum of the widened key");

    /* a memory with float16 keys: refused type, then exact scores of what it picks */
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, 50, 8, 0, 0));
    CHECK(ml_memory_set_key_dtype(m, 7) == ML_ERR_VALUE && ml_memory_key_dtype(m) == 0,
          "unknown key type refused");
    float keys[40 * 8];
    int64_t lab[40], idx[3];
    float sim[3];
    for (int i = 0; i < 40 * 8; i++) keys[i] = frand();
    for (int i = 0; i < 40; i++) lab[i] = i;
    OK(ml_memory_add(m, 40, keys, lab, NULL, NULL));
    for (int t = 1; t <= 2; t++) {
        OK(ml_memory_set_key_dtype(m, t));
        OK(ml_memory_query(m, 1, keys + 8 * 17, 3, idx, sim, NULL, NULL));
        CHECK(idx[0] == 17 && fabsf(sim[0] - 1.0f) < 1e-6f, "compact %d: a stored key finds itself",
              t);
    }
    ml_memory_free(m);
}

/* IVF: bad arguments refused with nothing changed; every list probed = exact search (also
 * after updates, overwrites and removes, which move slots between lists: lists grow by
 * realloc and shrink by swapping in their last entry); the same bits at 1/2/3 threads;
 * the lists partition the occupied slots. */
static void test_ivf(void) {
    enum { CAP = 600, D = 12, N = 500 };
    ml_memory *m = NULL;
    OK(ml_memory_new(&m, CAP, D, 0, 3));
    float *x = malloc(sizeof(float) * N * 2 * D);
    int64_t *y = malloc(sizeof(int64_t) * N * 2), *lists = malloc(sizeof(int64_t) * CAP);
    for (int i = 0; i < N * 2 * D; i++) x[i] = frand();
    for (int i = 0; i < N * 2; i++) y[i] = i % 7;
    OK(ml_memory_add(m, N, x, y, NULL, NULL));
    int64_t pr[6];
    CHECK(ml_memory_build_index(m, N + 1, 1, 0, 10, 0) == ML_ERR_VALUE, "nlist > size refused");
    CHECK(ml_memory_build_index(m, 0, 1, 0, 10, 0) == ML_ERR_VALUE, "nlist 0 refused");
    CHECK(ml_memory_build_index(m, 8, 0, 0, 10, 0) == ML_ERR_VALUE, "nprobe 0 refused");
    CHECK(ml_memory_build_index(m, 8, 9, 0, 10, 0) == ML_ERR_VALUE, "nprobe > nlist refused");
    CHECK(ml_memory_build_index(m, 8, 2, 0, 0, 0) == ML_ERR_VALUE, "n_iter 0 refused");
    CHECK(ml_memory_build_index(m, 8, 2, 0, 10, 4) == ML_ERR_VALUE, "sample < nlist refused");
    OK(ml_memory_index_state(m, pr, NULL, NULL));
    CHECK(pr[0] == 0, "no index after refused builds");
    float q[8 * D], sa[8 * 5], sb[8 * 5];
    int64_t ia[8 * 5], ib[8 * 5];
    for (int i = 0; i < 8 * D; i++) q[i] = frand();
    CHECK(ml_memory_query_where(m, 1, q, 5, -1, NULL, 2, ia, sa, NULL, NULL) == ML_ERR_VALUE,
          "nprobe without an index refused");
    OK(ml_memory_build_index(m, 8, 2, 7, 10, 0));
    CHECK(ml_memory_query_where(m, 1, q, 5, -1, NULL, 9, ia, sa, NULL, NULL) == ML_ERR_VALUE,
          "nprobe > nlist refused");
    CHECK(ml_memory_set_nprobe(m, 0) == ML_ERR_VALUE, "set nprobe 0 refused");
    int64_t rm[40];
    for (int round = 0; round < 3; round++) {
        /* every list probed: the exact result, bit for bit */
        OK(ml_memory_query_where(m, 8, q, 5, -1, NULL, 8, ia, sa, NULL, NULL));
        OK(ml_memory_query_where(m, 8, q, 5, -1, NULL, -1, ib, sb, NULL, NULL));
        CHECK(!memcmp(ia, ib, sizeof ia) && !memcmp(sa, sb, sizeof sa),
              "all lists = exact (round %d)", round);
        OK(ml_memory_index_state(m, pr, NULL, lists));
        int64_t labels[CAP], occupied = 0, in_lists = 0;
        OK(ml_memory_state(m, NULL, labels, NULL, NULL));
        for (int j = 0; j < CAP; j++) {
            occupied += labels[j] != -1 && (j < N || round > 0);
            in_lists += lists[j] >= 0 && lists[j] < 8;
        }
        CHECK(pr[0] == 8 && pr[1] == 2 && pr[5] == 0, "params");
        CHECK(in_lists == ml_memory_size(m), "every occupied slot in one list (%lld vs %lld)",
              (long long)in_lists, (long long)ml_memory_size(m));
        (void)occupied;
        /* writes that move slots: updates (merges and overwrites past the capacity), removes */
        OK(ml_memory_update(m, N / 2, x + (N + round * N / 4) * D, y, NULL));
        for (int i = 0; i < 40; i++) rm[i] = 3 * i + round;
        OK(ml_memory_remove(m, 40, rm));
    }
    /* the same bits at 1, 2 and 3 threads: build and query */
    int64_t ref[8 * 5];
    float refs[8 * 5];
    const int threads_before = ml_get_num_threads();
    for (int t = 1; t <= 3; t++) {
        ml_set_num_threads(t);
        OK(ml_memory_build_index(m, 16, 3, 1, 5, 0));
        OK(ml_memory_query_where(m, 8, q, 5, -1, NULL, 0, ia, sa, NULL, NULL));
        if (t == 1) memcpy(ref, ia, sizeof ia), memcpy(refs, sa, sizeof sa);
        CHECK(!memcmp(ref, ia, sizeof ia) && !memcmp(refs, sa, sizeof sa), "threads %d", t);
    }
    ml_set_num_threads(threads_before);
    OK(ml_memory_clear(m));
    OK(ml_memory_index_state(m, pr, NULL, lists));
    int none = 1;
    for (int j = 0; j < CAP; j++) none &= lists[j] == -1;
    CHECK(pr[0] == 16 && none, "clear empties the lists");
    OK(ml_memory_drop_index(m));
    OK(ml_memory_index_state(m, pr, NULL, NULL));
    CHECK(pr[0] == 0, "dropped");
    free(x), free(y), free(lists);
    ml_memory_free(m);
}


/* A memory opened mapped: the same state and search bits as the loaded one at 1/2/3 threads,
 * writes refused with nothing changed, the key slab 64-byte aligned in the map; the file
 * checker refuses every truncation and every flipped byte of a file held in a heap buffer of
 * exactly its size, so ASan sees any read past it. */
static void test_mmap(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ml_test_memory_map_%ld.mlm", (long)getpid());
    enum { CAP = 300, D = 20, P = 2, N = 260 };
    ml_memory *a = NULL, *loaded = NULL, *mapped = NULL;
    OK(ml_memory_new(&a, CAP, D, P, 3));
    static float q[N * D], pay[N * P];
    int64_t y[N];
    for (int i = 0; i < N * D; i++) q[i] = frand();
    for (int i = 0; i < N * P; i++) pay[i] = frand();
    for (int i = 0; i < N; i++) y[i] = i % 17;
    OK(ml_memory_add(a, N, q, y, pay, NULL));
    const int64_t gone[2] = {4, 200};
    OK(ml_memory_remove(a, 2, gone));
    OK(ml_memory_save(a, path));
    OK(ml_memory_open(&loaded, path));
    OK(ml_memory_open_mapped(&mapped, path));
    CHECK(mapped && ml_memory_read_only(mapped) && !ml_memory_read_only(loaded), "read-only");
    CHECK(ml_memory_size(mapped) == N - 2 && ml_memory_capacity(mapped) == CAP, "sizes");
    static float k1[CAP * D], k2[CAP * D], p1[CAP * P], p2[CAP * P];
    static int64_t l1[CAP], l2[CAP], g1[CAP], g2[CAP];
    OK(ml_memory_state(loaded, k1, l1, g1, p1));
    OK(ml_memory_state(mapped, k2, l2, g2, p2));
    CHECK(!memcmp(k1, k2, sizeof k1) && !memcmp(l1, l2, sizeof l1) && !memcmp(g1, g2, sizeof g1) &&
              !memcmp(p1, p2, sizeof p1),
          "mapped state = loaded state");
    const int threads_before = ml_get_num_threads();
    for (int n = 1; n <= 12; n += 11) {
        int64_t i1[12 * 5], i2[12 * 5];
        float s1[12 * 5], s2[12 * 5];
        OK(ml_memory_query(loaded, n, q + 7 * D, 5, i1, s1, NULL, NULL));
        for (int t = 1; t <= 3; t++) {
            ml_set_num_threads(t);
            OK(ml_memory_query(mapped, n, q + 7 * D, 5, i2, s2, NULL, NULL));
            CHECK(!memcmp(i1, i2, sizeof(int64_t) * 5 * n) &&
                      !memcmp(s1, s2, sizeof(float) * 5 * n),
                  "mapped query n=%d at %d threads", n, t);
        }
    }
    ml_set_num_threads(threads_before);
    OK(ml_memory_build_index(mapped, 4, 2, 1, 3, 40));
    OK(ml_memory_set_key_dtype(mapped, ML_KEY_FLOAT16));
    int64_t slot;
    CHECK(ml_memory_update(mapped, 1, q, y, NULL) == ML_ERR_VALUE, "update refused");
    CHECK(ml_memory_add(mapped, 1, q, y, NULL, &slot) == ML_ERR_VALUE, "add refused");
    CHECK(ml_memory_remove(mapped, 1, gone) == ML_ERR_VALUE, "remove refused");
    CHECK(ml_memory_clear(mapped) == ML_ERR_VALUE, "clear refused");
    CHECK(ml_memory_load(mapped, path) == ML_ERR_VALUE && strstr(ml_last_error(), "read-only"),
          "load refused");
    OK(ml_memory_state(mapped, k2, l2, g2, p2));
    CHECK(!memcmp(k1, k2, sizeof k1) && !memcmp(l1, l2, sizeof l1), "nothing written");

    /* the checker, on exact-size heap copies */
    FILE *f = fopen(path, "rb");
    static uint8_t file[65536];
    size_t size = f ? fread(file, 1, sizeof file, f) : 0;
    if (f) fclose(f);
    ml__memfile mf;
    uint8_t *copy = malloc(size);
    memcpy(copy, file, size);
    OK(ml__memfile_check(&mf, copy, size, "x"));
    CHECK(mf.version == 2 && mf.keys_at % 64 == 0 && mf.labels_at % 64 == 0 &&
              mf.ages_at % 64 == 0 && mf.payloads_at % 64 == 0 && mf.n_removed == 2,
          "v2 layout");
    free(copy);
    int refused = 0;
    for (size_t n = 0; n < size; n++) {
        uint8_t *c = malloc(n ? n : 1);
        memcpy(c, file, n);
        refused += ml__memfile_check(&mf, c, n, "x") == ML_ERR_FORMAT;
        free(c);
    }
    CHECK(refused == (int)size, "every truncation refused (%d of %zu)", refused, size);
    refused = 0;
    copy = malloc(size);
    for (size_t i = 0; i < size; i++) {
        memcpy(copy, file, size);
        copy[i] ^= 0x10;
        refused += ml__memfile_check(&mf, copy, size, "x") == ML_ERR_FORMAT;
    }
    free(copy);
    CHECK(refused == (int)size, "every flipped byte refused (%d of %zu)", refused, size);
    /* ml_crc32 (eight bytes a step) = the CRC a byte at a time, at every length and offset */
    int crc_ok = 1;
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n < 80; n++) {
            uint32_t ref = 0xFFFFFFFFu;
            for (size_t i = 0; i < n; i++) {
                ref ^= file[off + i];
                for (int k = 0; k < 8; k++) ref = ref & 1 ? 0xEDB88320u ^ (ref >> 1) : ref >> 1;
            }
            crc_ok &= ml_crc32(0, file + off, n) == ~ref;
            /* and chained: crc(a + b) = crc(b, crc(a)) */
            crc_ok &= ml_crc32(ml_crc32(0, file + off, n / 3), file + off + n / 3, n - n / 3) ==
                      ~ref;
        }
    CHECK(crc_ok && ml_crc32(0, "123456789", 9) == 0xCBF43926u, "crc32");
    ml_memory_free(mapped); /* unmaps */
    ml_memory_free(loaded);
    ml_memory_free(a);
    unlink(path);
}

int main(void) {
    test_sizes();
    test_update_rule();
    test_tie_break();
    test_query_brute_force();
    test_key_scan();
    test_key_scan_widths();
    test_int8_dots();
    test_key_scores_cached();
    test_ids_and_remove();
    test_compact_keys();
    test_ivf();
    test_gradients(0);
    test_gradients(1);
    test_files();
    test_mmap();
    test_empty_label_refused();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
