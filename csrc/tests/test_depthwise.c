/* test_depthwise.c — depthwise_conv2d against a double loop, its first and second order
 * gradients against central differences (the backward ops are the op's own transposes, so
 * the second order runs through them), the same bits at 1 and 3 threads, and the error
 * paths (no output, nothing changed).
 * Standalone: prints "N passed, M failed" and exits nonzero on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metalearn.h"

static int passed, failed;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (cond) passed++;                                                  \
        else {                                                               \
            failed++;                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                      \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static ml_tensor *randt(int ndim, const int64_t *shape) {
    ml_tensor *t = NULL;
    if (ml_tensor_zeros(&t, ndim, shape)) return NULL;
    for (int64_t i = 0; i < ml_numel(t); i++) ml_data(t)[i] = frand();
    return t;
}

static void pads(int64_t n, int64_t k, int64_t s, int same, int64_t *out, int64_t *before) {
    if (same) {
        *out = (n + s - 1) / s;
        int64_t total = (*out - 1) * s + k - n;
        *before = total > 0 ? total / 2 : 0;
    } else {
        *out = (n - k) / s + 1;
        *before = 0;
    }
}

/* y[n,o,p,c*M+m] = sum_ij x[n, o*sh+i-pt, p*sw+j-pl, c] k[i,j,c,m] + b[c*M+m], in double */
static double max_err(ml_tensor *x, ml_tensor *k, ml_tensor *b, int sh, int sw, int same,
                      ml_tensor *y) {
    const int64_t *xs = ml_shape(x), *ks = ml_shape(k);
    int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3], KH = ks[0], KW = ks[1], M = ks[3];
    int64_t OH, OW, pt, pl;
    pads(H, KH, sh, same, &OH, &pt);
    pads(W, KW, sw, same, &OW, &pl);
    if (ml_ndim(y) != 4 || ml_shape(y)[1] != OH || ml_shape(y)[2] != OW || ml_shape(y)[3] != C * M)
        return 1e9;
    const float *xd = ml_data(x), *kd = ml_data(k), *yd = ml_data(y);
    double worst = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < OH; o++)
            for (int64_t p = 0; p < OW; p++)
                for (int64_t c = 0; c < C; c++)
                    for (int64_t m = 0; m < M; m++) {
                        double acc = b ? ml_data(b)[c * M + m] : 0.0;
                        for (int64_t i = 0; i < KH; i++)
                            for (int64_t j = 0; j < KW; j++) {
                                int64_t ih = o * sh + i - pt, iw = p * sw + j - pl;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                acc += (double)xd[((n * H + ih) * W + iw) * C + c] *
                                       kd[((i * KW + j) * C + c) * M + m];
                            }
                        double e = fabs(acc - yd[((n * OH + o) * OW + p) * C * M + c * M + m]);
                        if (e > worst) worst = e;
                    }
    return worst;
}

static void test_forward(void) {
    struct {
        int64_t xs[4], ks[4];
        int sh, sw, same, bias;
    } cases[] = {
        {{2, 5, 6, 3}, {3, 3, 3, 1}, 1, 1, 0, 1}, {{2, 5, 6, 3}, {3, 2, 3, 2}, 1, 1, 1, 1},
        {{1, 7, 8, 2}, {3, 3, 2, 3}, 2, 2, 1, 0}, {{3, 9, 4, 5}, {2, 1, 5, 1}, 3, 1, 0, 1},
        {{1, 1, 1, 4}, {1, 1, 4, 2}, 1, 1, 0, 0}, {{2, 3, 3, 2}, {5, 5, 2, 1}, 1, 1, 1, 0},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ml_tensor *x = randt(4, cases[t].xs), *k = randt(4, cases[t].ks), *b = NULL, *y = NULL;
        int64_t nb = cases[t].ks[2] * cases[t].ks[3];
        if (cases[t].bias) b = randt(1, &nb);
        ml_status st = ml_depthwise_conv2d(&y, x, k, b, cases[t].sh, cases[t].sw,
                                           cases[t].same ? ML_PAD_SAME : ML_PAD_VALID);
        CHECK(st == ML_OK, "case %zu: %s", t, ml_last_error());
        if (st == ML_OK) {
            double e = max_err(x, k, b, cases[t].sh, cases[t].sw, cases[t].same, y);
            CHECK(e < 1e-5, "case %zu: forward error %g", t, e);
        }
        ml_release(y);
        ml_release(x);
        ml_release(k);
        ml_release(b);
    }
}

/* L = sum(tanh(dw(x, k)) * w): nonlinear, so the second order is not trivial */
static ml_tensor *loss_graph(ml_tensor *x, ml_tensor *k, ml_tensor *w, int s, ml_padding p) {
    ml_tensor *y = NULL, *t = NULL, *m = NULL, *L = NULL;
    ml_depthwise_conv2d(&y, x, k, NULL, s, s, p);
    ml_tanh(&t, y);
    ml_mul(&m, t, w);
    ml_sum(&L, m, 0, NULL, 0);
    ml_release(y);
    ml_release(t);
    ml_release(m);
    return L;
}

static double loss_value(ml_tensor *x, ml_tensor *k, ml_tensor *w, int s, ml_padding p) {
    ml_tensor *L = loss_graph(x, k, w, s, p);
    double v = L ? ml_data(L)[0] : NAN;
    ml_release(L);
    return v;
}

static void test_gradients(int s, ml_padding p) {
    int64_t xs[4] = {2, 5, 4, 2}, ks[4] = {3, 2, 2, 2};
    ml_tensor *x = randt(4, xs), *k = randt(4, ks);
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(k, 1);
    ml_tensor *y0 = NULL;
    ml_depthwise_conv2d(&y0, x, k, NULL, s, s, p);
    ml_tensor *w = randt(4, ml_shape(y0));
    ml_release(y0);
    ml_tensor *L = loss_graph(x, k, w, s, p), *ins[2] = {x, k}, *g[2] = {NULL, NULL};
    ml_status st = ml_grad(g, 1, &L, 2, ins, NULL, ML_GRAD_CREATE_GRAPH);
    CHECK(st == ML_OK, "grad: %s", ml_last_error());
    if (st) return;
    const float eps = 1e-2f;
    double worst = 0, scale = 0;
    for (int a = 0; a < 2; a++) {
        float *d = ml_data(ins[a]);
        for (int64_t i = 0; i < ml_numel(ins[a]); i++) {
            float old = d[i];
            d[i] = old + eps;
            double lp = loss_value(x, k, w, s, p);
            d[i] = old - eps;
            double lm = loss_value(x, k, w, s, p);
            d[i] = old;
            double num = (lp - lm) / (2 * eps), an = ml_data(g[a])[i];
            if (fabs(num) > scale) scale = fabs(num);
            double e = fabs(num - an) / (1e-2 + fabs(num));
            if (e > worst) worst = e;
        }
    }
    CHECK(scale > 1e-2 && worst < 2e-2, "first order (stride %d): rel err %g, scale %g", s, worst,
          scale);
    /* second order: S = <gx, vx> + <gk, vk> differentiated through the backward ops */
    ml_tensor *vx = randt(4, xs), *vk = randt(4, ks), *t0 = NULL, *t1 = NULL, *s0 = NULL,
              *s1 = NULL, *S = NULL, *h[2] = {NULL, NULL};
    ml_mul(&t0, g[0], vx);
    ml_mul(&t1, g[1], vk);
    ml_sum(&s0, t0, 0, NULL, 0);
    ml_sum(&s1, t1, 0, NULL, 0);
    ml_add(&S, s0, s1);
    st = ml_grad(h, 1, &S, 2, ins, NULL, 0);
    CHECK(st == ML_OK, "second-order grad: %s", ml_last_error());
    if (st == ML_OK) {
        worst = scale = 0;
        for (int a = 0; a < 2; a++) {
            float *d = ml_data(ins[a]);
            for (int64_t i = 0; i < ml_numel(ins[a]); i++) {
                double sv[2];
                float old = d[i];
                for (int sign = 0; sign < 2; sign++) {
                    d[i] = old + (sign ? -eps : eps);
                    ml_tensor *Lp = loss_graph(x, k, w, s, p), *gp[2] = {NULL, NULL};
                    ml_grad(gp, 1, &Lp, 2, ins, NULL, 0);
                    double acc = 0;
                    for (int64_t j = 0; j < ml_numel(gp[0]); j++)
                        acc += (double)ml_data(gp[0])[j] * ml_data(vx)[j];
                    for (int64_t j = 0; j < ml_numel(gp[1]); j++)
                        acc += (double)ml_data(gp[1])[j] * ml_data(vk)[j];
                    sv[sign] = acc;
                    ml_release(Lp);
                    ml_release(gp[0]);
                    ml_release(gp[1]);
                }
                d[i] = old;
                double num = (sv[0] - sv[1]) / (2 * eps), an = ml_data(h[a])[i];
                if (fabs(num) > scale) scale = fabs(num);
                double e = fabs(num - an) / (1e-2 + fabs(num));
                if (e > worst) worst = e;
            }
        }
        CHECK(scale > 1e-2 && worst < 2e-2, "second order (stride %d): rel err %g, scale %g", s,
              worst, scale);
    }
    ml_tensor *all[] = {h[0], h[1], t0, t1, s0, s1, S, vx, vk, g[0], g[1], L, x, k, w};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ml_release(all[i]);
}

static void test_threads(void) {
    int64_t xs[4] = {9, 8, 7, 5}, ks[4] = {3, 3, 5, 2};
    ml_tensor *x = randt(4, xs), *k = randt(4, ks), *res[2][3] = {{NULL}};
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(k, 1);
    int before = ml_get_num_threads();
    for (int th = 0; th < 2; th++) {
        ml_set_num_threads(th ? 3 : 1);
        ml_tensor *y = NULL, *sq = NULL, *L = NULL, *ins[2] = {x, k};
        ml_depthwise_conv2d(&y, x, k, NULL, 1, 1, ML_PAD_SAME);
        ml_square(&sq, y);
        ml_sum(&L, sq, 0, NULL, 0);
        res[th][0] = y;
        ml_grad(&res[th][1], 1, &L, 2, ins, NULL, 0);
        ml_release(sq);
        ml_release(L);
    }
    ml_set_num_threads(before);
    for (int r = 0; r < 3; r++) {
        ml_tensor *a = res[0][r], *c = res[1][r];
        CHECK(a && c && ml_numel(a) == ml_numel(c) &&
                  !memcmp(ml_data(a), ml_data(c), (size_t)ml_numel(a) * sizeof(float)),
              "result %d differs at 3 threads", r);
    }
    for (int th = 0; th < 2; th++)
        for (int r = 0; r < 3; r++) ml_release(res[th][r]);
    ml_release(x);
    ml_release(k);
}

static void test_errors(void) {
    int64_t xs[4] = {2, 6, 6, 3}, ks[4] = {3, 3, 2, 1}, ks2[4] = {3, 3, 3, 2},
            big[4] = {7, 3, 3, 1};
    int64_t x3[3] = {6, 6, 3}, nb = 5;
    ml_tensor *x = NULL, *k = NULL, *k2 = NULL, *kb = NULL, *xb = NULL, *b = NULL, *y = NULL;
    ml_tensor_zeros(&x, 4, xs);
    ml_tensor_zeros(&k, 4, ks);
    ml_tensor_zeros(&k2, 4, ks2);
    ml_tensor_zeros(&kb, 4, big);
    ml_tensor_zeros(&xb, 3, x3);
    ml_tensor_zeros(&b, 1, &nb);
    CHECK(ml_depthwise_conv2d(&y, x, k, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "channels");
    CHECK(strstr(ml_last_error(), "input has 3 channels but kernel expects 2") != NULL, "msg: %s",
          ml_last_error());
    CHECK(ml_depthwise_conv2d(&y, x, k2, NULL, 0, 1, ML_PAD_VALID) == ML_ERR_VALUE, "stride 0");
    CHECK(ml_depthwise_conv2d(&y, x, k2, NULL, 1, 1, (ml_padding)5) == ML_ERR_VALUE, "padding");
    CHECK(ml_depthwise_conv2d(&y, x, kb, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "too big");
    CHECK(ml_depthwise_conv2d(&y, xb, k2, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "3-D input");
    CHECK(ml_depthwise_conv2d(&y, x, k2, b, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "bias shape");
    CHECK(ml_depthwise_conv2d(&y, x, NULL, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_VALUE, "NULL");
    CHECK(y == NULL, "no output on failure");
    ml_tensor *all[] = {x, k, k2, kb, xb, b};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ml_release(all[i]);
}

int main(void) {
    test_forward();
    test_gradients(1, ML_PAD_SAME);
    test_gradients(2, ML_PAD_VALID);
    test_threads();
    test_errors();
    printf("test_depthwise: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
