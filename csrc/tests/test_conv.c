/* test_conv.c — conv2d / pools / batch norm of the C core against naive loops, a central-
 * difference gradient check (first and second order) and the error paths.
 * Standalone: prints "N passed, M failed" and exits nonzero on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metalearn.h"
#include "kernels/winograd.h"

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

static uint64_t rng_state = 88172645463325252ull;
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
        if (total < 0) total = 0;
        *before = total / 2;
    } else {
        *out = (n - k) / s + 1;
        *before = 0;
    }
}

/* naive conv in double */
static double max_conv_err(ml_tensor *x, ml_tensor *k, ml_tensor *b, int sh, int sw, int same,
                           ml_tensor *y) {
    const int64_t *xs = ml_shape(x), *ks = ml_shape(k);
    int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3], KH = ks[0], KW = ks[1], F = ks[3];
    int64_t OH, OW, pt, pl;
    pads(H, KH, sh, same, &OH, &pt);
    pads(W, KW, sw, same, &OW, &pl);
    if (ml_shape(y)[1] != OH || ml_shape(y)[2] != OW || ml_shape(y)[3] != F) return 1e9;
    const float *xd = ml_data(x), *kd = ml_data(k), *yd = ml_data(y);
    double err = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++)
                for (int64_t f = 0; f < F; f++) {
                    double acc = b ? ml_data(b)[f] : 0.0;
                    for (int64_t i = 0; i < KH; i++)
                        for (int64_t j = 0; j < KW; j++) {
                            int64_t ih = oh * sh + i - pt, iw = ow * sw + j - pl;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            for (int64_t c = 0; c < C; c++)
                                acc += (double)xd[((n * H + ih) * W + iw) * C + c] *
                                       kd[((i * KW + j) * C + c) * F + f];
                        }
                    double e = fabs(acc - yd[((n * OH + oh) * OW + ow) * F + f]);
                    if (e > err) err = e;
                }
    return err;
}

static double max_pool_err(ml_tensor *x, int ph, int pw, int sh, int sw, int same, int is_max,
                           ml_tensor *y) {
    const int64_t *xs = ml_shape(x);
    int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3];
    int64_t OH, OW, pt, pl;
    pads(H, ph, sh, same, &OH, &pt);
    pads(W, pw, sw, same, &OW, &pl);
    if (ml_shape(y)[1] != OH || ml_shape(y)[2] != OW) return 1e9;
    double err = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++)
                for (int64_t c = 0; c < C; c++) {
                    double acc = is_max ? -INFINITY : 0.0;
                    int cnt = 0;
                    for (int64_t i = 0; i < ph; i++)
                        for (int64_t j = 0; j < pw; j++) {
                            int64_t ih = oh * sh + i - pt, iw = ow * sw + j - pl;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            double v = ml_data(x)[((n * H + ih) * W + iw) * C + c];
                            if (is_max)
                                acc = v > acc ? v : acc;
                            else
                                acc += v;
                            cnt++;
                        }
                    if (!is_max) acc /= cnt;
                    double e = fabs(acc - ml_data(y)[((n * OH + oh) * OW + ow) * C + c]);
                    if (e > err) err = e;
                }
    return err;
}

static float sum_all(ml_tensor *t) {
    double s = 0;
    for (int64_t i = 0; i < ml_numel(t); i++) s += ml_data(t)[i];
    return (float)s;
}

/* L(x, k) = sum(w * conv(x, k)^2) / 2 (non-linear so the Hessian is not trivial) */
static double loss_value(ml_tensor *x, ml_tensor *k, ml_tensor *w, int s, ml_padding p) {
    ml_tensor *y = NULL;
    if (ml_conv2d(&y, x, k, NULL, s, s, p)) return NAN;
    double acc = 0;
    for (int64_t i = 0; i < ml_numel(y); i++)
        acc += 0.5 * ml_data(w)[i] * (double)ml_data(y)[i] * ml_data(y)[i];
    ml_release(y);
    return acc;
}

static ml_tensor *loss_graph(ml_tensor *x, ml_tensor *k, ml_tensor *w, int s, ml_padding p) {
    ml_tensor *y = NULL, *y2 = NULL, *wy = NULL, *l = NULL, *h = NULL;
    ml_conv2d(&y, x, k, NULL, s, s, p);
    ml_square(&y2, y);
    ml_mul(&wy, y2, w);
    ml_sum(&l, wy, 0, NULL, 0);
    ml_mul_scalar(&h, l, 0.5f);
    ml_release(y);
    ml_release(y2);
    ml_release(wy);
    ml_release(l);
    return h;
}

static void test_forward(void) {
    struct {
        int64_t xs[4], ks[4];
        int s, same;
    } cases[] = {
        {{2, 6, 5, 3}, {3, 3, 3, 4}, 1, 0}, {{2, 6, 5, 3}, {3, 3, 3, 4}, 1, 1},
        {{2, 7, 6, 2}, {3, 3, 2, 3}, 2, 1}, {{1, 5, 5, 2}, {4, 4, 2, 2}, 1, 1},
        {{3, 4, 4, 5}, {1, 1, 5, 2}, 1, 0}, {{40, 14, 14, 16}, {3, 3, 16, 8}, 1, 1},
        {{2, 9, 9, 1}, {3, 3, 1, 7}, 3, 0},
    };
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ml_tensor *x = randt(4, cases[t].xs), *k = randt(4, cases[t].ks);
        int64_t bs[1] = {cases[t].ks[3]};
        ml_tensor *b = randt(1, bs), *y = NULL;
        ml_status st = ml_conv2d(&y, x, k, b, cases[t].s, cases[t].s,
                                 cases[t].same ? ML_PAD_SAME : ML_PAD_VALID);
        CHECK(st == ML_OK, "conv case %zu: %s", t, ml_last_error());
        if (st == ML_OK) {
            double e = max_conv_err(x, k, b, cases[t].s, cases[t].s, cases[t].same, y);
            CHECK(e < 1e-4 * (double)cases[t].ks[0] * cases[t].ks[1] * cases[t].ks[2],
                  "conv case %zu: max error %g", t, e);
        }
        ml_release(x);
        ml_release(k);
        ml_release(b);
        ml_release(y);
    }
    struct {
        int64_t xs[4];
        int ph, pw, sh, sw, same;
    } pc[] = {
        {{2, 6, 6, 3}, 2, 2, 2, 2, 0},
        {{2, 5, 7, 2}, 3, 3, 2, 2, 1},
        {{1, 6, 5, 2}, 3, 2, 1, 1, 0},
        {{1, 4, 5, 2}, 2, 2, 1, 1, 1},
    };
    for (size_t t = 0; t < sizeof pc / sizeof pc[0]; t++) {
        ml_tensor *x = randt(4, pc[t].xs);
        for (int is_max = 0; is_max < 2; is_max++) {
            ml_tensor *y = NULL;
            ml_status st = (is_max ? ml_max_pool2d
                                   : ml_avg_pool2d)(&y, x, pc[t].ph, pc[t].pw, pc[t].sh, pc[t].sw,
                                                    pc[t].same ? ML_PAD_SAME : ML_PAD_VALID);
            CHECK(st == ML_OK, "pool case %zu: %s", t, ml_last_error());
            if (st == ML_OK) {
                double e = max_pool_err(x, pc[t].ph, pc[t].pw, pc[t].sh, pc[t].sw, pc[t].same,
                                        is_max, y);
                CHECK(e < 1e-5, "pool case %zu (%s): max error %g", t, is_max ? "max" : "avg", e);
            }
            ml_release(y);
        }
        ml_release(x);
    }
}

/* first order: grad of L vs central differences; second order: grad of <grad L, v> */
static void test_gradients(int s, ml_padding p) {
    int64_t xs[4] = {1, 5, 6, 2}, ks[4] = {3, 3, 2, 2};
    ml_tensor *x = randt(4, xs), *k = randt(4, ks);
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(k, 1);
    ml_tensor *y0 = NULL;
    ml_conv2d(&y0, x, k, NULL, s, s, p);
    ml_tensor *w = randt(ml_ndim(y0), ml_shape(y0));
    ml_release(y0);

    ml_tensor *L = loss_graph(x, k, w, s, p);
    ml_tensor *ins[2] = {x, k}, *g[2] = {NULL, NULL};
    ml_status st = ml_grad(g, 1, &L, 2, ins, NULL, ML_GRAD_CREATE_GRAPH);
    CHECK(st == ML_OK, "grad: %s", ml_last_error());
    if (st) return;
    /* first order against central differences, every element */
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
    CHECK(scale > 1e-2, "first-order gradient is trivial (%g)", scale);
    CHECK(worst < 2e-2, "first-order gradient mismatch (stride %d, %s): rel err %g", s,
          p == ML_PAD_SAME ? "same" : "valid", worst);

    /* second order: S = <gx, vx> + <gk, vk>; dS/dx, dS/dk vs differences of S */
    ml_tensor *vx = randt(4, xs), *vk = randt(4, ks);
    ml_tensor *t0 = NULL, *t1 = NULL, *s0 = NULL, *s1 = NULL, *S = NULL;
    ml_mul(&t0, g[0], vx);
    ml_mul(&t1, g[1], vk);
    ml_sum(&s0, t0, 0, NULL, 0);
    ml_sum(&s1, t1, 0, NULL, 0);
    ml_add(&S, s0, s1);
    ml_tensor *h[2] = {NULL, NULL};
    st = ml_grad(h, 1, &S, 2, ins, NULL, 0);
    CHECK(st == ML_OK, "second-order grad: %s", ml_last_error());
    if (st == ML_OK) {
        worst = 0;
        scale = 0;
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
        CHECK(scale > 1e-2, "second-order gradient is trivial (%g)", scale);
        CHECK(worst < 2e-2, "second-order gradient mismatch: rel err %g", worst);
    }
    ml_release(h[0]);
    ml_release(h[1]);
    ml_release(t0);
    ml_release(t1);
    ml_release(s0);
    ml_release(s1);
    ml_release(S);
    ml_release(vx);
    ml_release(vk);
    ml_release(g[0]);
    ml_release(g[1]);
    ml_release(L);
    ml_release(x);
    ml_release(k);
    ml_release(w);
}

static void test_pool_grads(void) {
    /* max pool: gradient to the first max; avg pool: adjoint identity */
    int64_t xs[4] = {1, 2, 2, 1};
    ml_tensor *x = NULL;
    ml_tensor_full(&x, 4, xs, 3.0f);
    ml_set_requires_grad(x, 1);
    ml_tensor *y = NULL, *l = NULL, *g = NULL;
    ml_max_pool2d(&y, x, 2, 2, 2, 2, ML_PAD_VALID);
    ml_sum(&l, y, 0, NULL, 0);
    CHECK(ml_grad(&g, 1, &l, 1, &x, NULL, 0) == ML_OK, "maxpool grad: %s", ml_last_error());
    CHECK(g && ml_data(g)[0] == 1.0f && ml_data(g)[1] == 0.0f && ml_data(g)[3] == 0.0f,
          "maxpool tie goes to the first max");
    ml_release(y);
    ml_release(l);
    ml_release(g);
    ml_release(x);

    int64_t xs2[4] = {2, 5, 7, 3};
    x = randt(4, xs2);
    ml_set_requires_grad(x, 1);
    y = NULL;
    ml_avg_pool2d(&y, x, 3, 3, 2, 2, ML_PAD_SAME);
    ml_tensor *w = randt(4, ml_shape(y)), *wy = NULL;
    ml_mul(&wy, y, w);
    l = NULL;
    ml_sum(&l, wy, 0, NULL, 0);
    g = NULL;
    ml_grad(&g, 1, &l, 1, &x, NULL, 0);
    ml_tensor *gx = NULL;
    ml_mul(&gx, g, x);
    double lhs = sum_all(l), rhs = sum_all(gx);
    CHECK(fabs(lhs - rhs) < 1e-4 * (1 + fabs(lhs)), "avgpool adjoint: %g vs %g", lhs, rhs);
    ml_release(y);
    ml_release(w);
    ml_release(wy);
    ml_release(l);
    ml_release(g);
    ml_release(gx);
    ml_release(x);
}

static void test_batch_norm(void) {
    int64_t xs[2] = {6, 3}, cs[1] = {3};
    ml_tensor *x = randt(2, xs), *mm = NULL, *mv = NULL, *y = NULL;
    ml_tensor_zeros(&mm, 1, cs);
    ml_tensor_full(&mv, 1, cs, 1.0f);
    ml_status st = ml_batch_norm(&y, x, NULL, NULL, mm, mv, 1, 0.9f, 1e-3f, -1);
    CHECK(st == ML_OK, "batch_norm: %s", ml_last_error());
    for (int c = 0; c < 3 && st == ML_OK; c++) {
        double m = 0, v = 0, ym = 0, yv = 0;
        for (int n = 0; n < 6; n++) m += ml_data(x)[n * 3 + c] / 6.0;
        for (int n = 0; n < 6; n++) {
            double d = ml_data(x)[n * 3 + c] - m;
            v += d * d / 6.0;
            ym += ml_data(y)[n * 3 + c] / 6.0;
        }
        for (int n = 0; n < 6; n++) yv += pow(ml_data(y)[n * 3 + c] - ym, 2) / 6.0;
        CHECK(fabs(ym) < 1e-5 && fabs(yv - v / (v + 1e-3)) < 1e-4, "bn channel %d: %g %g", c, ym,
              yv);
        CHECK(fabs(ml_data(mm)[c] - 0.1 * m) < 1e-6, "moving mean %d", c);
        CHECK(fabs(ml_data(mv)[c] - (0.9 + 0.1 * v)) < 1e-6, "moving var %d", c);
    }
    ml_release(y);
    /* a bad gamma changes nothing */
    int64_t bad[1] = {4};
    ml_tensor *gbad = NULL;
    ml_tensor_zeros(&gbad, 1, bad);
    float before = ml_data(mm)[0];
    y = NULL;
    st = ml_batch_norm(&y, x, gbad, NULL, mm, mv, 1, 0.9f, 1e-3f, -1);
    CHECK(st == ML_ERR_SHAPE && y == NULL && ml_data(mm)[0] == before, "bn bad gamma");
    ml_release(gbad);
    ml_release(x);
    ml_release(mm);
    ml_release(mv);
}

/* grouped: each group equals ml_batch_norm of its slice with that group's gamma/beta rows;
 * its first-order gradients (fused C pass and differentiable form) agree */
static void test_batch_norm_grouped(void) {
    int64_t xs[3] = {3, 5, 2}, gs[2] = {3, 2}, ss[2] = {5, 2}, cs[1] = {2};
    ml_tensor *x = randt(3, xs), *g = randt(2, gs), *b = randt(2, gs), *y = NULL;
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(g, 1);
    ml_status st = ml_batch_norm_grouped(&y, x, g, b, 1e-3f, -1);
    CHECK(st == ML_OK, "batch_norm_grouped: %s", ml_last_error());
    for (int k = 0; k < 3 && st == ML_OK; k++) {
        ml_tensor *xk = NULL, *gk = NULL, *bk = NULL, *yk = NULL;
        ml_tensor_from_data(&xk, 2, ss, ml_data(x) + k * 10);
        ml_tensor_from_data(&gk, 1, cs, ml_data(g) + k * 2);
        ml_tensor_from_data(&bk, 1, cs, ml_data(b) + k * 2);
        CHECK(ml_batch_norm(&yk, xk, gk, bk, NULL, NULL, 1, 0.99f, 1e-3f, -1) == ML_OK, "bn slice");
        double e = 0;
        for (int i = 0; yk && i < 10; i++)
            e = fmax(e, fabs(ml_data(yk)[i] - ml_data(y)[k * 10 + i]));
        CHECK(e == 0.0, "grouped slice %d differs by %g", k, e);
        ml_release(xk);
        ml_release(gk);
        ml_release(bk);
        ml_release(yk);
    }
    ml_tensor *l = NULL, *slow[2] = {NULL, NULL}, *fast[2] = {NULL, NULL}, *in[2] = {x, g};
    ml_tensor *w = randt(3, xs), *yw = NULL;
    ml_mul(&yw, y, w);
    ml_sum(&l, yw, 0, NULL, 0);
    CHECK(ml_grad(slow, 1, &l, 2, in, NULL, ML_GRAD_CREATE_GRAPH) == ML_OK, "grouped grad: %s",
          ml_last_error());
    CHECK(ml_grad(fast, 1, &l, 2, in, NULL, 0) == ML_OK, "grouped grad: %s", ml_last_error());
    for (int j = 0; j < 2 && slow[j] && fast[j]; j++) {
        double e = 0;
        for (int64_t i = 0; i < ml_numel(slow[j]); i++)
            e = fmax(e, fabs(ml_data(slow[j])[i] - ml_data(fast[j])[i]));
        CHECK(e < 1e-5, "grouped gradient %d: fused and differentiable differ by %g", j, e);
    }
    for (int j = 0; j < 2; j++) ml_release(slow[j]), ml_release(fast[j]);
    ml_release(l);
    ml_release(yw);
    ml_release(w);
    ml_tensor *y2 = NULL;
    CHECK(ml_batch_norm_grouped(&y2, x, b, g, 1e-3f, 0) == ML_ERR_VALUE && !y2, "group axis");
    ml_tensor *g1 = randt(1, cs);
    CHECK(ml_batch_norm_grouped(&y2, x, g1, NULL, 1e-3f, -1) == ML_ERR_SHAPE && !y2, "gamma (C)");
    ml_release(g1);
    ml_release(y);
    ml_release(x);
    ml_release(g);
    ml_release(b);
}

static void test_errors(void) {
    int64_t xs[4] = {2, 28, 28, 3}, ks[4] = {3, 3, 1, 64};
    ml_tensor *x = NULL, *k = NULL, *y = NULL;
    ml_tensor_zeros(&x, 4, xs);
    ml_tensor_zeros(&k, 4, ks);
    CHECK(ml_conv2d(&y, x, k, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE && !y, "channel mismatch");
    CHECK(strstr(ml_last_error(), "input has 3 channels but kernel expects 1, got shapes "
                                  "(2, 28, 28, 3) and (3, 3, 1, 64)") != NULL,
          "message: %s", ml_last_error());
    ml_release(k);
    int64_t ks2[4] = {3, 3, 3, 4};
    ml_tensor_zeros(&k, 4, ks2);
    CHECK(ml_conv2d(&y, x, k, NULL, 0, 1, ML_PAD_VALID) == ML_ERR_VALUE, "stride 0");
    CHECK(ml_conv2d(&y, x, k, NULL, 1, -1, ML_PAD_SAME) == ML_ERR_VALUE, "stride -1");
    CHECK(ml_conv2d(&y, x, k, NULL, 1, 1, (ml_padding)7) == ML_ERR_VALUE, "bad padding");
    CHECK(ml_conv2d(&y, x, NULL, NULL, 1, 1, ML_PAD_SAME) == ML_ERR_VALUE, "NULL kernel");
    CHECK(ml_max_pool2d(&y, x, 29, 2, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "pool too big");
    CHECK(ml_avg_pool2d(&y, x, 0, 2, 1, 1, ML_PAD_VALID) == ML_ERR_VALUE, "pool 0");
    CHECK(ml_max_pool2d(&y, NULL, 2, 2, 1, 1, ML_PAD_VALID) == ML_ERR_VALUE, "pool NULL");
    CHECK(y == NULL, "no output on failure");
    int64_t big[4] = {29, 3, 3, 4};
    ml_release(k);
    ml_tensor_zeros(&k, 4, big);
    CHECK(ml_conv2d(&y, x, k, NULL, 1, 1, ML_PAD_VALID) == ML_ERR_SHAPE, "kernel too big");
    CHECK(ml_conv2d(&y, x, k, NULL, 1, 1, ML_PAD_SAME) == ML_OK, "same ok: %s", ml_last_error());
    ml_release(y);
    ml_release(x);
    ml_release(k);
}

/* Winograd F(2x2, 3x3) (3x3, stride 1, 'same', >= 16 channels each way, images >= 4x4):
 * the forward against the double loop, and y, dx and dk the same bits at 1, 2 and 3 threads
 * (chunks of tiles and the kernel gradient's parts are fixed by the shape). */
static void test_winograd(void) {
    struct {
        int64_t xs[4], f;
    } cases[] = {{{3, 7, 9, 16}, 20}, {{2, 8, 8, 24}, 16}, {{20, 14, 14, 32}, 32}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int64_t ks[4] = {3, 3, cases[t].xs[3], cases[t].f}, bs[1] = {cases[t].f};
        ml_tensor *x = randt(4, cases[t].xs), *k = randt(4, ks), *b = randt(1, bs);
        ml_set_requires_grad(x, 1);
        ml_set_requires_grad(k, 1);
        ml_tensor *res[3][3] = {{NULL}};
        for (int th = 0; th < 3; th++) {
            ml_set_num_threads(th + 1);
            ml_tensor *y = NULL, *ins[2] = {x, k}, *g[2] = {NULL, NULL};
            ml_status st = ml_conv2d(&y, x, k, b, 1, 1, ML_PAD_SAME);
            CHECK(st == ML_OK, "winograd case %zu: %s", t, ml_last_error());
            if (st) break;
            ml_tensor *w = NULL;
            ml_tensor_zeros(&w, 4, ml_shape(y));
            for (int64_t i = 0; i < ml_numel(w); i++) ml_data(w)[i] = (float)((i * 7) % 13) - 6.0f;
            st = ml_grad(g, 1, &y, 2, ins, &w, 0);
            CHECK(st == ML_OK, "winograd case %zu grad: %s", t, ml_last_error());
            res[th][0] = y;
            res[th][1] = g[0];
            res[th][2] = g[1];
            ml_release(w);
        }
        ml_set_num_threads(1);
        if (res[0][0]) {
            double e = max_conv_err(x, k, b, 1, 1, 1, res[0][0]);
            CHECK(e < 1e-5 * 9 * (double)cases[t].xs[3], "winograd case %zu: max error %g", t, e);
        }
        for (int th = 1; th < 3; th++)
            for (int r = 0; r < 3; r++) {
                ml_tensor *a = res[0][r], *c = res[th][r];
                CHECK(a && c && ml_numel(a) == ml_numel(c) &&
                          !memcmp(ml_data(a), ml_data(c), (size_t)ml_numel(a) * sizeof(float)),
                      "winograd case %zu: result %d differs at %d threads", t, r, th + 1);
            }
        for (int th = 0; th < 3; th++)
            for (int r = 0; r < 3; r++) ml_release(res[th][r]);
        ml_release(x);
        ml_release(k);
        ml_release(b);
    }
}

/* The Winograd kernels called directly, F(2x2) and F(4x4) (m = 2, 4), on any shape (odd
 * sizes, images smaller than a tile, channel counts that are not a multiple of 8): the
 * forward (with bias), the input gradient (the flipped forward) and the kernel gradient
 * against double loops, each element within tol of the same sum over absolute values; and
 * the same bits at 1, 2 and 3 threads. tol: 2e-6 (about 16 float32 ulps) for F(2x2), 1e-5
 * for F(4x4), whose transforms multiply by up to 8 (output) and 5 (input); a wrong
 * coefficient gives errors of the order of the sum itself. */
static void wino_refs(int64_t n, int64_t h, int64_t w, int64_t c, int64_t f, const float *x,
                      const float *k, const float *gy, int absval, double *y, double *dx,
                      double *dk) {
#define A_(v) (absval ? fabs((double)(v)) : (double)(v))
    memset(y, 0, (size_t)(n * h * w * f) * sizeof(double));
    memset(dx, 0, (size_t)(n * h * w * c) * sizeof(double));
    memset(dk, 0, (size_t)(9 * c * f) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < h; r++)
            for (int64_t q = 0; q < w; q++)
                for (int64_t a = 0; a < 3; a++)
                    for (int64_t b = 0; b < 3; b++) {
                        const int64_t yy = r + a - 1, xx = q + b - 1;
                        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                        const float *xp = x + ((i * h + yy) * w + xx) * c;
                        const float *gp = gy + ((i * h + r) * w + q) * f;
                        double *yp = y + ((i * h + r) * w + q) * f;
                        double *dxp = dx + ((i * h + yy) * w + xx) * c;
                        for (int64_t ci = 0; ci < c; ci++)
                            for (int64_t fi = 0; fi < f; fi++) {
                                const double kv = A_(k[((a * 3 + b) * c + ci) * f + fi]);
                                yp[fi] += A_(xp[ci]) * kv;
                                dxp[ci] += A_(gp[fi]) * kv;
                                dk[((a * 3 + b) * c + ci) * f + fi] += A_(xp[ci]) * A_(gp[fi]);
                            }
                    }
#undef A_
}

static double worst(const float *got, const double *ref, const double *scale, int64_t len,
                    double tol) {
    double e = 0;
    for (int64_t i = 0; i < len; i++) {
        const double r = fabs((double)got[i] - ref[i]) / (tol * scale[i] + 1e-30);
        if (r > e) e = r;
    }
    return e;
}

static void test_winograd_kernels(void) {
    struct {
        int64_t n, h, w, c, f;
    } cases[] = {{2, 8, 8, 16, 16},
                 {1, 3, 3, 16, 16},
                 {3, 7, 5, 5, 9},
                 {2, 10, 10, 32, 32},
                 {1, 21, 21, 24, 17},
                 {2, 5, 13, 8, 8},
                 {1, 1, 6, 3, 4},
                 {9, 12, 11, 96, 112},
                 /* wide chunks of 128 tiles (from 192 channels in and out), F(4x4)'s 150
                  * tiles in two, the last one short */
                 {6, 17, 17, 96, 112}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int64_t n = cases[t].n, h = cases[t].h, w = cases[t].w, c = cases[t].c,
                      f = cases[t].f, nx = n * h * w * c, ny = n * h * w * f, nk = 9 * c * f;
        float *x = malloc((size_t)nx * 4), *k = malloc((size_t)nk * 4), *b = malloc((size_t)f * 4),
              *gy = malloc((size_t)ny * 4), *out = malloc((size_t)(3 * (nx + ny + nk)) * 4);
        double *ref = malloc((size_t)(nx + ny + nk) * 8), *sc = malloc((size_t)(nx + ny + nk) * 8);
        for (int64_t i = 0; i < nx; i++) x[i] = frand();
        for (int64_t i = 0; i < nk; i++) k[i] = frand();
        for (int64_t i = 0; i < f; i++) b[i] = frand();
        for (int64_t i = 0; i < ny; i++) gy[i] = frand();
        wino_refs(n, h, w, c, f, x, k, gy, 0, ref, ref + ny, ref + ny + nx);
        wino_refs(n, h, w, c, f, x, k, gy, 1, sc, sc + ny, sc + ny + nx);
        for (int64_t i = 0; i < ny; i++) {
            ref[i] += b[i % f];
            sc[i] += fabs((double)b[i % f]);
        }
        for (int m = 2; m <= 4; m += 2) {
            const double tol = m == 2 ? 2e-6 : 1e-5;
            for (int th = 0; th < 3; th++) {
                ml_set_num_threads(th + 1);
                float *y = out + th * (nx + ny + nk), *dx = y + ny, *dk = dx + nx;
                CHECK(!ml__wino_conv(m, n, h, w, c, f, x, k, 0, b, y), "wino%d fwd oom", m);
                CHECK(!ml__wino_conv(m, n, h, w, f, c, gy, k, 1, NULL, dx), "wino%d dx oom", m);
                CHECK(!ml__wino_kernel_grad(m, n, h, w, c, f, x, gy, dk), "wino%d dk oom", m);
                if (th) {
                    CHECK(!memcmp(out, y, (size_t)(nx + ny + nk) * 4),
                          "wino F(%d) case %zu differs at %d threads", m, t, th + 1);
                    continue;
                }
                const char *names[3] = {"forward", "input grad", "kernel grad"};
                const int64_t off[3] = {0, ny, ny + nx}, len[3] = {ny, nx, nk};
                for (int r = 0; r < 3; r++) {
                    const double e = worst(y + off[r], ref + off[r], sc + off[r], len[r], tol);
                    CHECK(e <= 1.0, "wino F(%d) case %zu %s: error %g of the bound", m, t, names[r],
                          e);
                }
            }
            ml_set_num_threads(1);
        }
        free(x);
        free(k);
        free(b);
        free(gy);
        free(out);
        free(ref);
        free(sc);
    }
}

int main(void) {
    test_forward();
    test_winograd();
    test_winograd_kernels();
    test_gradients(1, ML_PAD_VALID);
    test_gradients(1, ML_PAD_SAME);
    test_gradients(2, ML_PAD_SAME);
    test_gradients(2, ML_PAD_VALID);
    test_pool_grads();
    test_batch_norm();
    test_batch_norm_grouped();
    test_errors();
    printf("test_conv: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
