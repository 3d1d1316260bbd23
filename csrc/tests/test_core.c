/* test_core.c — C unit tests of the core: the header's tutorial, autograd of several
 * orders checked against closed forms and central differences, the op table, errors that
 * never crash, optimizers against their formulas, random reproducibility, weight files.
 * Runs under ASan + UBSan in CI (`make -C csrc sanitize`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/ops.h"
#include "kernels/gemm.h"
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

static int close_to(double a, double b, double tol) { return fabs(a - b) <= tol * (1.0 + fabs(b)); }

static ml_tensor *vec(int n, const float *v) {
    ml_tensor *t = NULL;
    int64_t shape[1] = {n};
    if (ml_tensor_from_data(&t, 1, shape, v) != ML_OK) abort(); /* test setup only */
    return t;
}

/* The tutorial of metalearn.h: f = a x^2 + b at x = 3, a = 2, b = 1. */
static void test_tutorial(void) {
    ml_tensor *x, *a, *b, *x2, *ax2, *f, *df = NULL, *d2f = NULL;
    OK(ml_tensor_scalar(&x, 3.0f));
    OK(ml_set_requires_grad(x, 1));
    OK(ml_tensor_scalar(&a, 2.0f));
    OK(ml_tensor_scalar(&b, 1.0f));
    OK(ml_square(&x2, x));
    OK(ml_mul(&ax2, a, x2));
    OK(ml_add(&f, ax2, b));
    CHECK(ml_data(f)[0] == 19.0f, "f = %g", ml_data(f)[0]);
    OK(ml_grad(&df, 1, &f, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    CHECK(df && ml_data(df)[0] == 12.0f, "df = %g", df ? ml_data(df)[0] : -1);
    CHECK(df && !ml_is_leaf(df), "df under create_graph records a graph");
    OK(ml_grad(&d2f, 1, &df, 1, &x, NULL, 0));
    CHECK(d2f && ml_data(d2f)[0] == 4.0f, "d2f = %g", d2f ? ml_data(d2f)[0] : -1);

    /* one Adam step with Keras' defaults: the first step moves by lr * sign(g) */
    ml_optimizer *opt;
    OK(ml_adam_new(&opt, 0.001f, 0.9f, 0.999f, 1e-7f, 0));
    ml_tensor *g = NULL;
    OK(ml_detach(&g, df));
    OK(ml_optimizer_step(opt, 1, &x, &g));
    CHECK(close_to(ml_data(x)[0], 3.0 - 0.001, 1e-6), "x after Adam = %.7f", ml_data(x)[0]);
    CHECK(ml_optimizer_iterations(opt) == 1, "iterations");
    /* x changed in place: a graph that saved it must refuse to backprop */
    ml_tensor *again = NULL;
    CHECK(ml_grad(&again, 1, &f, 1, &x, NULL, 0) == ML_ERR_GRAPH, "stale graph refused");
    CHECK(strstr(ml_last_error(), "modified in place") != NULL, "message: %s", ml_last_error());
    ml_optimizer_free(opt);
    ml_release(g);
    ml_release(x), ml_release(a), ml_release(b), ml_release(x2), ml_release(ax2);
    ml_release(f), ml_release(df), ml_release(d2f);
}

/* Third derivative of tanh against its closed form: tanh''' = -2 (1 - t^2)(1 - 3 t^2). */
static void test_third_order(void) {
    float v = 0.7f;
    ml_tensor *x = vec(1, &v), *y, *d1 = NULL, *d2 = NULL, *d3 = NULL;
    ml_set_requires_grad(x, 1);
    OK(ml_tanh(&y, x));
    OK(ml_grad(&d1, 1, &y, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    OK(ml_grad(&d2, 1, &d1, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    OK(ml_grad(&d3, 1, &d2, 1, &x, NULL, 0));
    double t = tanh(0.7);
    CHECK(close_to(ml_data(d1)[0], 1 - t * t, 1e-5), "tanh' %g", ml_data(d1)[0]);
    CHECK(close_to(ml_data(d2)[0], -2 * t * (1 - t * t), 1e-5), "tanh'' %g", ml_data(d2)[0]);
    CHECK(close_to(ml_data(d3)[0], -2 * (1 - t * t) * (1 - 3 * t * t), 1e-4), "tanh''' %g",
          ml_data(d3)[0]);
    ml_release(x), ml_release(y), ml_release(d1), ml_release(d2), ml_release(d3);
}

/* loss(W) = sum(tanh(X W)) for a 3x4 X: gradient by central differences. */
static float mlp_loss(const float *xd, const float *wd) {
    int64_t xs[2] = {3, 4}, ws[2] = {4, 2};
    ml_tensor *X, *W, *h, *a, *l;
    ml_tensor_from_data(&X, 2, xs, xd);
    ml_tensor_from_data(&W, 2, ws, wd);
    ml_matmul(&h, X, W, 0, 0);
    ml_tanh(&a, h);
    ml_sum(&l, a, 0, NULL, 0);
    float r = ml_data(l)[0];
    ml_release(X), ml_release(W), ml_release(h), ml_release(a), ml_release(l);
    return r;
}

static void test_central_difference(void) {
    float xd[12], wd[8];
    for (int i = 0; i < 12; i++) xd[i] = (float)sin(i + 1.0);
    for (int i = 0; i < 8; i++) wd[i] = (float)cos(2.0 * i) * 0.5f;
    int64_t xs[2] = {3, 4}, ws[2] = {4, 2};
    ml_tensor *X, *W, *h, *a, *l, *g = NULL;
    ml_tensor_from_data(&X, 2, xs, xd);
    ml_tensor_from_data(&W, 2, ws, wd);
    ml_set_requires_grad(W, 1);
    OK(ml_matmul(&h, X, W, 0, 0));
    OK(ml_tanh(&a, h));
    OK(ml_sum(&l, a, 0, NULL, 0));
    OK(ml_grad(&g, 1, &l, 1, &W, NULL, 0));
    double max_abs = 0;
    for (int i = 0; i < 8; i++) {
        float wp[8], wm[8], eps = 1e-2f;
        memcpy(wp, wd, sizeof wp);
        memcpy(wm, wd, sizeof wm);
        wp[i] += eps;
        wm[i] -= eps;
        double fd = (mlp_loss(xd, wp) - mlp_loss(xd, wm)) / (2.0 * eps);
        CHECK(fabs(fd - ml_data(g)[i]) < 2e-3, "dW[%d]: autograd %g vs fd %g", i, ml_data(g)[i],
              fd);
        max_abs = fmax(max_abs, fabs(fd));
    }
    CHECK(max_abs > 0.1, "the gradient checked is not trivial (%g)", max_abs);
    ml_release(X), ml_release(W), ml_release(h), ml_release(a), ml_release(l), ml_release(g);
}

static void test_broadcast_grad(void) {
    float av[6] = {1, 2, 3, 4, 5, 6}, bv[3] = {1, 10, 100};
    int64_t as[2] = {2, 3};
    ml_tensor *a, *b = vec(3, bv), *y, *l, *gb = NULL;
    ml_tensor_from_data(&a, 2, as, av);
    ml_set_requires_grad(b, 1);
    OK(ml_mul(&y, a, b));
    OK(ml_sum(&l, y, 0, NULL, 0));
    OK(ml_grad(&gb, 1, &l, 1, &b, NULL, 0));
    CHECK(ml_ndim(gb) == 1 && ml_shape(gb)[0] == 3, "grad reduced to the input's shape");
    CHECK(ml_data(gb)[0] == 5 && ml_data(gb)[1] == 7 && ml_data(gb)[2] == 9, "column sums");
    ml_release(a), ml_release(b), ml_release(y), ml_release(l), ml_release(gb);
}

/* Every op of ops.def has a row; an op a tape can hold (grad BACKWARD or FLAT) has a
 * backward, an op only traces record has none; names are unique (traces print them). */
static void test_op_table(void) {
#define TAPE_BACKWARD 1
#define TAPE_FLAT 1
#define TAPE_REPLAY 0
    static const int on_tape[OP_COUNT] = {
#define ML_OP(ID, name, inputs, grad, form, py, label) [OP_##ID] = TAPE_##grad,
#include "../ops/ops.def"
#undef ML_OP
    };
    for (int i = 0; i < OP_COUNT; i++) {
        CHECK(ml_op_table[i].name && (ml_op_table[i].backward != NULL) == on_tape[i],
              "op %d has a row", i);
        int same = 0;
        for (int j = 0; j < i && ml_op_table[i].name; j++)
            same += ml_op_table[j].name && !strcmp(ml_op_table[i].name, ml_op_table[j].name);
        CHECK(!same, "op %d's name is an earlier op's", i);
    }
    CHECK(!strcmp(ml_op_table[OP_ADD].name, "add") && ml_op_table[OP_ADD].n_inputs == 2 &&
              ml_op_table[OP_MATMUL_INTO].backward == NULL,
          "rows follow ops.def");
}

/* Bad input: a status and a message, nothing crashes, outputs untouched. */
static void test_errors(void) {
    float v[6] = {0};
    int64_t s23[2] = {2, 3}, s43[2] = {4, 3}, huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    ml_tensor *a, *b, *out = NULL;
    ml_tensor_from_data(&a, 2, s23, v);
    ml_tensor_zeros(&b, 2, s43);
    CHECK(ml_add(&out, a, b) == ML_ERR_SHAPE && out == NULL, "add shape mismatch");
    CHECK(strstr(ml_last_error(), "(2, 3)") && strstr(ml_last_error(), "(4, 3)"),
          "message names the shapes: %s", ml_last_error());
    CHECK(ml_matmul(&out, a, b, 0, 0) == ML_ERR_SHAPE, "matmul mismatch");
    CHECK(ml_tensor_zeros(&out, 2, huge) == ML_ERR_OOM, "overflowing shape refused");
    CHECK(ml_add(&out, NULL, b) == ML_ERR_VALUE, "NULL input refused");
    int axis = 5;
    CHECK(ml_sum(&out, a, 1, &axis, 0) == ML_ERR_VALUE, "axis out of range");
    int64_t bad_idx[1] = {7};
    CHECK(ml_gather(&out, a, 1, bad_idx, 0) == ML_ERR_VALUE, "index out of range");
    CHECK(ml_grad(&out, 1, &a, 1, &a, NULL, 0) == ML_ERR_GRAPH, "input without grad");
    ml_set_requires_grad(a, 1);
    CHECK(ml_grad(&out, 1, &a, 1, &a, NULL, 0) == ML_ERR_SHAPE, "non-scalar output");
    CHECK(out == NULL, "outputs untouched on failure");
    ml_release(a), ml_release(b);
}

static void test_sgd_momentum(void) {
    /* Keras: v = m v - lr g; p += v. Two steps with g = 1: p = -0.1, then -0.1 - 0.19 */
    float p0 = 0, g1 = 1;
    ml_tensor *p = vec(1, &p0), *g = vec(1, &g1);
    ml_optimizer *opt;
    OK(ml_sgd_new(&opt, 0.1f, 0.9f, 0));
    OK(ml_optimizer_step(opt, 1, &p, &g));
    OK(ml_optimizer_step(opt, 1, &p, &g));
    CHECK(close_to(ml_data(p)[0], -0.29, 1e-6), "p = %g", ml_data(p)[0]);
    float wrong[2] = {1, 1};
    ml_tensor *g2 = vec(2, wrong);
    CHECK(ml_optimizer_step(opt, 1, &p, &g2) == ML_ERR_SHAPE, "shape mismatch refused");
    CHECK(close_to(ml_data(p)[0], -0.29, 1e-6) && ml_optimizer_iterations(opt) == 2,
          "a refused step changes nothing");
    ml_optimizer_free(opt);
    ml_release(p), ml_release(g), ml_release(g2);
}

static void test_polynomial_decay(void) {
    /* PolynomialDecay(0.5, 4, end 0.1, power 2): plain SGD on p = 0 with g = 1 falls by
     * (0.5 - 0.1) (1 - t / 4)^2 + 0.1 at step t (t = 0, 1, ...), 0.1 from t = 4 on; with
     * cycle, decay_steps grows to 4 ceil(t / 4): t = 5 gives (0.4) (1 - 5/8)^2 + 0.1 */
    for (int cycle = 0; cycle <= 1; cycle++) {
        float p0 = 0, g1 = 1;
        ml_tensor *p = vec(1, &p0), *g = vec(1, &g1);
        ml_optimizer *opt;
        OK(ml_sgd_new(&opt, 0.01f, 0.0f, 0));
        const double args[5] = {0.5, 4.0, 0.1, 2.0, cycle};
        OK(ml_optimizer_set_learning_rate_schedule(opt, ML_SCHEDULE_POLYNOMIAL_DECAY, args, 5));
        double want = 0;
        for (int t = 0; t < 6; t++) {
            double d = cycle ? 4.0 * (t == 0 ? 1 : ceil(t / 4.0)) : 4.0, x = cycle ? t : fmin(t, 4);
            want -= 0.4 * pow(1 - x / d, 2) + 0.1;
            OK(ml_optimizer_step(opt, 1, &p, &g));
            CHECK(close_to(ml_data(p)[0], want, 1e-5), "cycle %d step %d: p = %g, want %g", cycle,
                  t, ml_data(p)[0], want);
        }
        const double neg_power[5] = {0.5, 4.0, 0.1, -1.0, 0}, four[4] = {0.5, 4.0, 0.1, 2.0};
        CHECK(ml_optimizer_set_learning_rate_schedule(opt, ML_SCHEDULE_POLYNOMIAL_DECAY, neg_power,
                                                      5) == ML_ERR_VALUE,
              "a negative power refused");
        CHECK(ml_optimizer_set_learning_rate_schedule(opt, ML_SCHEDULE_POLYNOMIAL_DECAY, four, 4) ==
                  ML_ERR_VALUE,
              "four numbers refused");
        CHECK(ml_optimizer_learning_rate_schedule(opt) == ML_SCHEDULE_POLYNOMIAL_DECAY,
              "a refused schedule leaves the one set");
        ml_optimizer_free(opt);
        ml_release(p), ml_release(g);
    }
}

static void test_rng(void) {
    int64_t shape[1] = {1000};
    ml_tensor *u1, *u2, *n;
    ml_rng_seed(42);
    OK(ml_random_uniform(&u1, 1, shape, -1, 1));
    ml_rng_seed(42);
    OK(ml_random_uniform(&u2, 1, shape, -1, 1));
    CHECK(memcmp(ml_data(u1), ml_data(u2), 1000 * sizeof(float)) == 0, "same seed, same bits");
    OK(ml_random_normal(&n, 1, shape, 0, 1));
    double mean = 0, var = 0;
    for (int i = 0; i < 1000; i++) mean += ml_data(n)[i] / 1000.0;
    for (int i = 0; i < 1000; i++) var += pow(ml_data(n)[i] - mean, 2) / 1000.0;
    CHECK(fabs(mean) < 0.15 && fabs(var - 1) < 0.2, "normal moments %g %g", mean, var);
    int64_t perm[50];
    int seen[50] = {0};
    OK(ml_rng_permutation(perm, 50));
    int ok = 1;
    for (int i = 0; i < 50; i++) ok &= perm[i] >= 0 && perm[i] < 50 && !seen[perm[i]]++;
    CHECK(ok, "permutation is a permutation");
    ml_release(u1), ml_release(u2), ml_release(n);
}

/* a checkpoint's pieces: the generator's state read and set back repeats the draws; an
 * optimizer given another's slots and step count continues as the other does */
static void test_checkpoint_state(void) {
    int64_t shape[1] = {64};
    uint64_t st[4], zero[4] = {0, 0, 0, 0};
    ml_tensor *a, *b;
    ml_rng_seed(7);
    ml_rng_state(st);
    OK(ml_random_normal(&a, 1, shape, 0, 1));
    ml_rng_seed(8);
    OK(ml_rng_set_state(st));
    OK(ml_random_normal(&b, 1, shape, 0, 1));
    CHECK(memcmp(ml_data(a), ml_data(b), 64 * sizeof(float)) == 0, "state set back: same draws");
    uint64_t now[4];
    ml_rng_state(now);
    CHECK(ml_rng_set_state(zero) == ML_ERR_VALUE, "all-zero state refused");
    uint64_t after[4];
    ml_rng_state(after);
    CHECK(memcmp(now, after, sizeof now) == 0, "refused state changes nothing");
    ml_release(a), ml_release(b);

    float p0[3] = {0.5f, -1.0f, 2.0f}, g[3] = {0.3f, -0.2f, 0.1f};
    ml_tensor *pa = vec(3, p0), *pb = vec(3, p0), *gt = vec(3, g);
    ml_optimizer *oa, *ob;
    OK(ml_adam_new(&oa, 0.1f, 0.9f, 0.999f, 1e-7f, 0));
    OK(ml_adam_new(&ob, 0.1f, 0.9f, 0.999f, 1e-7f, 0));
    OK(ml_optimizer_step(oa, 1, &pa, &gt));
    OK(ml_optimizer_step(oa, 1, &pa, &gt));
    ml_tensor *slots[2];
    OK(ml_optimizer_slot(&slots[0], oa, 0, 0));
    OK(ml_optimizer_slot(&slots[1], oa, 0, 1));
    ml_tensor *wrong = vec(2, g), *bad[2] = {slots[0], wrong};
    CHECK(ml_optimizer_restore(ob, 1, &pb, 2, bad) == ML_ERR_SHAPE, "misshapen slot refused");
    CHECK(ml_optimizer_n_params(ob) == 0 && ml_optimizer_iterations(ob) == 0,
          "refused restore changes nothing");
    memcpy(ml_data(pb), ml_data(pa), 3 * sizeof(float));
    OK(ml_optimizer_restore(ob, 1, &pb, 2, slots));
    OK(ml_optimizer_step(oa, 1, &pa, &gt));
    OK(ml_optimizer_step(ob, 1, &pb, &gt));
    CHECK(ml_optimizer_iterations(ob) == 3, "step count restored");
    CHECK(memcmp(ml_data(pa), ml_data(pb), 3 * sizeof(float)) == 0, "restored Adam: same bits");
    ml_optimizer_free(oa), ml_optimizer_free(ob);
    ml_release(pa), ml_release(pb), ml_release(gt), ml_release(wrong);
    ml_release(slots[0]), ml_release(slots[1]);
}

static void test_weight_file(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ml_test_core_%ld.mlw", (long)getpid());
    float v[3] = {1.5f, -2.0f, 3.25f};
    ml_tensor *t = vec(3, v);
    const char *name = "dense/kernel";
    OK(ml_save_tensors(path, 1, &name, &t));
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    OK(ml_load_tensors(path, &n, &names, &ts));
    CHECK(n == 1 && !strcmp(names[0], name) && memcmp(ml_data(ts[0]), v, sizeof v) == 0,
          "round trip");
    ml_free_loaded(n, names, ts);
    /* flip one data byte: the checksum refuses it */
    FILE *f = fopen(path, "r+b");
    fseek(f, -6, SEEK_END);
    int c = fgetc(f);
    fseek(f, -6, SEEK_END);
    fputc(c ^ 0x10, f);
    fclose(f);
    CHECK(ml_load_tensors(path, &n, &names, &ts) == ML_ERR_FORMAT, "bit flip refused");
    CHECK(ml_load_tensors("/nonexistent/x.mlw", &n, &names, &ts) == ML_ERR_IO, "missing file");
    unlink(path);
    ml_release(t);
}

/* Releasing a 10^5-op chain must not recurse (stack) and must free everything (ASan). */
static void test_long_chain(void) {
    float v = 0;
    ml_tensor *x = vec(1, &v), *y = x, *g = NULL;
    ml_set_requires_grad(x, 1);
    ml_retain(x);
    for (int i = 0; i < 100000; i++) {
        ml_tensor *next;
        if (ml_add_scalar(&next, y, 1.0f) != ML_OK) break;
        ml_release(y);
        y = next;
    }
    CHECK(ml_data(y)[0] == 100000.0f, "chain value %g", ml_data(y)[0]);
    OK(ml_grad(&g, 1, &y, 1, &x, NULL, 0));
    CHECK(g && ml_data(g)[0] == 1.0f, "chain gradient");
    ml_release(g);
    ml_release(y);
    ml_release(x);
}

/* A traced add whose only reader is relu_grad replays as one entry; when the add
 * broadcasts, the fused entry falls back to the pair: the same bits as the eager ops
 * either way (the same-shape pass is checked from Python, tests/test_function.py). */
static void test_fused_trace_pairs(void) {
    for (int bcast = 0; bcast < 2; bcast++) {
        const int64_t sa[2] = {2, 3}, sb[2] = {bcast ? 1 : 2, 3};
        ml_tensor *a = NULL, *b = NULL, *m = NULL;
        OK(ml_tensor_full(&a, 2, sa, 0.0f));
        OK(ml_tensor_full(&b, 2, sb, 0.0f));
        OK(ml_tensor_full(&m, 2, sa, 0.0f));
        ml_trace *tr = NULL;
        ml_tensor *ins[3] = {a, b, m}, *t = NULL, *u = NULL;
        OK(ml_trace_begin(&tr, 3, ins));
        OK(ml_add(&t, a, b));
        OK(ml__relu_grad(&u, t, m));
        OK(ml_trace_end(tr, 1, &u));
        CHECK(ml_trace_n_ops(tr) == 1, "add + relu_grad: %d trace entries", ml_trace_n_ops(tr));
        ml_release(t);
        ml_release(u);
        /* new values: signs, zeros, NaN, inf */
        const float av[6] = {1.5f, -2.0f, INFINITY, 0.25f, NAN, -0.0f};
        const float bv[6] = {0.5f, 3.0f, -1.0f, -0.25f, 1.0f, 0.0f};
        const float mv[6] = {1.0f, -1.0f, 2.0f, 0.0f, 3.0f, NAN};
        ml_tensor *a2 = NULL, *b2 = NULL, *m2 = NULL, *want_t = NULL, *want = NULL, *got = NULL;
        OK(ml_tensor_from_data(&a2, 2, sa, av));
        OK(ml_tensor_from_data(&b2, 2, sb, bv));
        OK(ml_tensor_from_data(&m2, 2, sa, mv));
        ml_tensor *rin[3] = {a2, b2, m2};
        OK(ml_trace_replay(tr, rin, &got));
        OK(ml_add(&want_t, a2, b2));
        OK(ml__relu_grad(&want, want_t, m2));
        CHECK(got && want && memcmp(ml_data(got), ml_data(want), 6 * sizeof(float)) == 0,
              "fused replay (broadcast %d) differs from the eager pair", bcast);
        ml_tensor *all[] = {a, b, m, a2, b2, m2, want_t, want, got};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
        ml_trace_free(tr);
    }
}

/* A broadcast_to read only by an element-wise op that broadcasts by itself is fused into
 * it, entries apart, with the eager bits; not when it is read twice, nor across an
 * in-place entry (which could change its input in between). Long: one block per case,
 * each with its own shapes, trace and eager reference. */
static void test_fused_broadcasts(void) {
    {
        /* (3,) -> (1, 3), then + (3,): the broadcast only adds a leading dim, which the add
         * alone would not: the replay keeps the (1, 3) shape */
        const int64_t s1[1] = {3}, s13[2] = {1, 3};
        const float xv[3] = {1, 2, 3}, zv[3] = {10, 20, 30};
        ml_tensor *x = NULL, *z = NULL, *bx = NULL, *y = NULL, *got = NULL;
        OK(ml_tensor_from_data(&x, 1, s1, xv));
        OK(ml_tensor_from_data(&z, 1, s1, zv));
        ml_trace *tr = NULL;
        ml_tensor *ins[2] = {x, z};
        OK(ml_trace_begin(&tr, 2, ins));
        OK(ml_broadcast_to(&bx, x, 2, s13));
        OK(ml_add(&y, bx, z));
        OK(ml_trace_end(tr, 1, &y));
        OK(ml_trace_replay(tr, ins, &got));
        CHECK(got && ml_ndim(got) == 2 && ml_shape(got)[0] == 1 && ml_shape(got)[1] == 3 &&
                  !memcmp(ml_data(got), ml_data(y), sizeof xv),
              "fused rank-only broadcast: replay shape or values differ from eager");
        ml_tensor *all[] = {x, z, bx, y, got};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
        ml_trace_free(tr);
    }
    for (int kind = 0; kind < 5; kind++) {
        /* 0: into an add, an unrelated op in between; 1: the broadcast also an output;
         * 2: ml_assign of its input in between; 3: the broadcast grows the add's shape (the
         * fused entry broadcasts at replay); 4: into a fused add + relu_grad */
        const int64_t sx[3] = {2, 1, 3}, sz[3] = {2, 4, 3}, sg[2] = {1, 3};
        const int64_t sb[2] = {4, 3};
        const int grow = kind == 3;
        ml_tensor *x = NULL, *z = NULL, *m = NULL, *c = NULL;
        OK(ml_tensor_full(&x, grow ? 2 : 3, grow ? sg : sx, 0.0f));
        OK(ml_tensor_full(&z, grow ? 2 : 3, grow ? sg : sz, 0.0f));
        OK(ml_tensor_full(&m, 3, sz, 0.0f));
        OK(ml_tensor_full(&c, grow ? 2 : 3, grow ? sg : sx, 0.0f));
        ml_tensor *ins[4] = {x, z, m, c}, *bx = NULL, *other = NULL, *sum = NULL, *res = NULL;
        ml_trace *tr = NULL;
        OK(ml_trace_begin(&tr, 4, ins));
        OK(ml_broadcast_to(&bx, x, grow ? 2 : 3, grow ? sb : sz));
        OK(ml_mul_scalar(&other, z, 2.0f));
        if (kind == 2) OK(ml_assign(x, c));
        if (kind == 4) {
            OK(ml_add(&sum, z, bx));
            OK(ml__relu_grad(&res, sum, m));
        } else {
            OK(ml_add(&res, z, bx));
        }
        ml_tensor *outs[3] = {res, other, bx};
        OK(ml_trace_end(tr, kind == 1 ? 3 : 2, outs));
        const int want_ops[5] = {2, 3, 4, 2, 2};
        CHECK(ml_trace_n_ops(tr) == want_ops[kind], "fused broadcast, case %d: %d entries", kind,
              ml_trace_n_ops(tr));
        ml_release(bx), ml_release(other), ml_release(sum), ml_release(res);
        /* new values: NaNs of both signs and payloads, zeros, inf */
        const float xv[6] = {1.5f, -2.0f, INFINITY, 0.25f, NAN, -0.0f};
        const float zv[24] = {0.5f,  3.0f, -1.0f, -0.25f, -NAN, 0.0f, 1,         2,
                              3,     -4,   -5,    6,      7,    -8,   9,         10,
                              -0.0f, 12,   13,    14,     -15,  16,   -INFINITY, 18};
        float mv[24];
        for (int i = 0; i < 24; i++) mv[i] = (float)((i * 7) % 5) - 2.0f;
        mv[5] = NAN;
        const float cv[6] = {9, 8, 7, 6, 5, 4};
        ml_tensor *x2 = NULL, *z2 = NULL, *m2 = NULL, *c2 = NULL, *got[3] = {NULL, NULL, NULL};
        OK(ml_tensor_from_data(&x2, grow ? 2 : 3, grow ? sg : sx, xv));
        OK(ml_tensor_from_data(&z2, grow ? 2 : 3, grow ? sg : sz, zv));
        OK(ml_tensor_from_data(&m2, 3, sz, mv));
        OK(ml_tensor_from_data(&c2, grow ? 2 : 3, grow ? sg : sx, cv));
        ml_tensor *rin[4] = {x2, z2, m2, c2};
        OK(ml_trace_replay(tr, rin, got));
        /* eager, on fresh copies (kind 2 assigns into x) */
        ml_tensor *x3 = NULL, *w_b = NULL, *w_sum = NULL, *want = NULL;
        OK(ml_tensor_from_data(&x3, grow ? 2 : 3, grow ? sg : sx, xv));
        OK(ml_broadcast_to(&w_b, x3, grow ? 2 : 3, grow ? sb : sz));
        if (kind == 4) {
            OK(ml_add(&w_sum, z2, w_b));
            OK(ml__relu_grad(&want, w_sum, m2));
        } else {
            OK(ml_add(&want, z2, w_b));
        }
        const int64_t n = grow ? 12 : 24;
        CHECK(got[0] && ml_numel(got[0]) == n &&
                  !memcmp(ml_data(got[0]), ml_data(want), (size_t)n * sizeof(float)),
              "fused broadcast, case %d: replay differs from eager", kind);
        if (kind == 2) /* the input was assigned after the broadcast read it */
            CHECK(!memcmp(ml_data(x2), cv, sizeof cv), "assign replayed");
        ml_tensor *all[] = {x,  z,   m,     c,    x2,     z2,     m2,    c2,
                            x3, w_b, w_sum, want, got[0], got[1], got[2]};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
        ml_trace_free(tr);
    }
}

/* An outer product (matmul with k == 1) read only by an element-wise op is computed inside
 * it at replay (replay_outer_into): same bits as eager, every transpose, both addends of
 * add + relu_grad, a row length off the 8-lane width, a split over threads, and the cases
 * that must not fuse (T read twice) or must fall back at replay (batch dims broadcast). */
static void outer_program(int kind, ml_tensor *const *in, ml_tensor **res, ml_tensor **t) {
    /* in: x, y (the product's operands), z (other addend / bias), m (mask) */
    const int ta = kind == 2, tb = kind == 1;
    ml_tensor *sum = NULL;
    OK(ml_matmul(t, in[0], in[1], ta, tb));
    /* clang-format off: a table, one case a line */
    switch (kind) {
    case 0: /* bias add + relu, as a layer's forward */
    case 5:
    case 6:
    case 7: /* ... with z broadcast over one of two batch dims: the general walk */
    case 11:
    case 8: /* ... z one value per row (B, M, 1) */
        OK(ml_add(&sum, *t, in[2]));
        OK(ml_relu(res, sum));
        break;
    case 1: OK(ml__relu_grad(res, *t, in[3])); break;
    case 2: /* T the second addend */
        OK(ml_add(&sum, in[2], *t));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    case 3: /* T the first addend */
        OK(ml_add(&sum, *t, in[2]));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    case 4: OK(ml_mul(res, *t, in[3])); break; /* T is also an output: not fused */
    case 9: OK(ml_sub(res, in[2], *t)); break;  /* z (N,) minus T: no batch dims in z */
    case 10: OK(ml_div(res, *t, in[2])); break; /* T / z, z a row per batch entry */
    case 12: /* T + z, z a row per batch entry, then relu_grad: the row path with a mask */
        OK(ml_add(&sum, *t, in[2]));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    }
    /* clang-format on */
    ml_release(sum);
}

static void fill_values(ml_tensor *t, unsigned seed) {
    float *d = ml_data(t);
    const int64_t n = ml_numel(t);
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        d[i] = (float)((seed >> 8) % 2001) / 1000.0f - 1.0f;
    }
    /* NaNs of both signs and two payloads, a signed zero and infinities */
    const float special[6] = {NAN, -NAN, -0.0f, INFINITY, -INFINITY, 0.0f};
    for (int i = 0; i < 6 && i * 7 < n; i++) d[i * 7] = special[i];
    if (n > 11) {
        uint32_t bits = 0x7fc01234u; /* a NaN payload */
        memcpy(&d[11], &bits, sizeof bits);
    }
}

/* u's NaNs replaced by 0.5, for a sum with a product: where a NaN of u meets a NaN of T,
 * either NaN is the sum's (x86 keeps the first operand's) */
static void no_nans(ml_tensor *u) {
    float *d = ml_data(u);
    for (int64_t i = 0; i < ml_numel(u); i++)
        if (d[i] != d[i]) d[i] = 0.5f;
}

/* A trace of program(kind, ins) over the four inputs ins, with its result and, when n_out
 * is 2, the product it made as outputs */
static ml_trace *record_program(void (*program)(int, ml_tensor *const *, ml_tensor **,
                                                ml_tensor **),
                                int kind, ml_tensor **ins, int n_out) {
    ml_tensor *res = NULL, *t = NULL;
    ml_trace *tr = NULL;
    OK(ml_trace_begin(&tr, 4, ins));
    program(kind, ins, &res, &t);
    ml_tensor *outs[2] = {res, t};
    OK(ml_trace_end(tr, n_out, outs));
    ml_release(res), ml_release(t);
    return tr;
}

/* The same bits, but that where both are NaN either NaN will do (any_nan): a sum of two
 * NaNs is the NaN of the operand x86 takes first, an order the compiler picks for the
 * unfused add, and relu passes a NaN on */
static int same_values(const ml_tensor *a, const ml_tensor *b, int any_nan) {
    if (!a || !b || ml_numel(a) != ml_numel(b)) return 0;
    const float *x = ml_data((ml_tensor *)a), *y = ml_data((ml_tensor *)b);
    for (int64_t i = 0; i < ml_numel(a); i++)
        if (memcmp(&x[i], &y[i], sizeof *x) && !(any_nan && x[i] != x[i] && y[i] != y[i])) return 0;
    return 1;
}

/* A replay's outputs got (and got[1] with_t) against eager's want (want_t): the same bits */
static void check_replay_nan(const char *what, int kind, int with_t, ml_tensor *const got[2],
                             ml_tensor *want, ml_tensor *want_t, int any_nan) {
    CHECK(same_values(got[0], want, any_nan), "%s, case %d: replay differs from eager", what, kind);
    if (with_t)
        CHECK(got[1] && ml_numel(got[1]) == ml_numel(want_t) &&
                  !memcmp(ml_data(got[1]), ml_data(want_t),
                          (size_t)ml_numel(want_t) * sizeof(float)),
              "%s, case %d: the product itself differs", what, kind);
}
static void check_replay(const char *what, int kind, int with_t, ml_tensor *const got[2],
                         ml_tensor *want, ml_tensor *want_t) {
    check_replay_nan(what, kind, with_t, got, want, want_t, 0);
}

static void test_fused_outer(void) {
    for (int kind = 0; kind < 13; kind++) {
        /* kind 11: a batch entry's rows of T (100 x 40) past the 2048-float row buffer */
        const int64_t B = kind == 6 ? 40 : 3, M = kind == 6 ? 16 : kind == 11 ? 100 : 5;
        const int64_t N = kind == 6                ? 33
                          : kind == 2 || kind == 3 ? 12
                          : kind == 4              ? 8
                          : kind == 11             ? 40
                                                   : 16;
        const int ta = kind == 2, tb = kind == 1;
        /* 4-D for kind 7: batch dims (2, B) */
        const int nd = kind == 7 ? 4 : 3, lead = nd - 3;
        int64_t sx[4] = {2}, sy[4] = {2}, so[4] = {2}, sz[4] = {2};
        const int64_t sx3[3] = {B, ta ? 1 : M, ta ? M : 1}, sy3[3] = {B, tb ? N : 1, tb ? 1 : N};
        const int64_t so3[3] = {B, M, N};
        const int bias = kind == 0 || kind == 5 || kind == 6 || kind == 7 || kind == 10 ||
                         kind == 11 || kind == 12;
        const int64_t sz3[3] = {kind == 7 ? 1 : B, bias ? 1 : M, kind == 8 ? 1 : N};
        memcpy(sx + lead, sx3, sizeof sx3), memcpy(sy + lead, sy3, sizeof sy3);
        memcpy(so + lead, so3, sizeof so3), memcpy(sz + lead, sz3, sizeof sz3);
        const int64_t sx2[2] = {M, 1}, sz1[1] = {N};
        ml_tensor *x = NULL, *y = NULL, *z = NULL, *m = NULL;
        if (kind == 5) /* 2-D x against a batch of y: the batch dims broadcast */
            OK(ml_tensor_zeros(&x, 2, sx2));
        else
            OK(ml_tensor_zeros(&x, nd, sx));
        OK(ml_tensor_zeros(&y, nd, sy));
        if (kind == 9)
            OK(ml_tensor_zeros(&z, 1, sz1));
        else
            OK(ml_tensor_zeros(&z, nd, sz));
        OK(ml_tensor_zeros(&m, nd, so));
        ml_tensor *ins[4] = {x, y, z, m};
        ml_trace *tr = record_program(outer_program, kind, ins, kind == 4 ? 2 : 1);
        CHECK(ml_trace_n_ops(tr) == (kind == 4 ? 2 : 1), "fused outer, case %d: %d entries", kind,
              ml_trace_n_ops(tr));
        for (int i = 0; i < 4; i++) fill_values(ins[i], 17u * (unsigned)kind + (unsigned)i);
        ml_tensor *got[2] = {NULL, NULL}, *want = NULL, *want_t = NULL;
        if (kind == 6) ml_set_num_threads(2); /* 21 120 elements: the op splits */
        OK(ml_trace_replay(tr, ins, got));
        ml_set_num_threads(1);
        outer_program(kind, ins, &want, &want_t);
        CHECK(got[0] && ml_ndim(got[0]) == nd &&
                  !memcmp(ml_shape(got[0]), so, (size_t)nd * sizeof *so),
              "fused outer, case %d: replay's shape", kind);
        check_replay("fused outer", kind, kind == 4, got, want, want_t);
        ml_tensor *all[] = {x, y, z, m, got[0], got[1], want, want_t};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
        ml_trace_free(tr);
    }
}

/* A product A op(B) (B 2-D) reshaped or not and read by an element-wise op the GEMM applies
 * as it stores (replay_matmul_into): replay bits against eager bits. Cases: 0 bias add +
 * relu after a reshape to (3, 10, 40) (a bias row per batch entry); 1 relu_grad(T, u),
 * B transposed; 2 add + relu_grad with T the second addend; 3 ... the first, 2-D; 4 T + u,
 * 31 rows (a last 1-row tile); 5 relu_grad(u, T): T the condition, no epilogue (the three
 * run as recorded); 6 n = 24 and 7 k = 100: not the 2 x 40 tiles' kernel (as recorded);
 * 8 T also an output (not fused); 9 3-D A, bias add + relu without a reshape. */
static void matmul_program(int kind, ml_tensor *const *in, ml_tensor **res, ml_tensor **t) {
    /* in: a, b, u (other operand), m (mask) */
    const int64_t sh3[3] = {3, 10, kind == 6 ? 24 : 40};
    ml_tensor *p = NULL, *v = NULL, *sum = NULL;
    OK(ml_matmul(&p, in[0], in[1], 0, kind == 1));
    const int view = kind <= 2 || kind == 5 || kind == 6 || kind == 7 || kind == 8;
    if (view)
        OK(ml_reshape(&v, p, 3, sh3));
    else
        v = p, ml_retain(v);
    /* clang-format off: a table, one case a line */
    switch (kind) {
    case 0:
    case 6:
    case 7:
    case 8:
    case 9:
        OK(ml_add(&sum, v, in[2]));
        OK(ml_relu(res, sum));
        break;
    case 1: OK(ml__relu_grad(res, v, in[2])); break;
    case 2:
        OK(ml_add(&sum, in[2], v));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    case 3:
        OK(ml_add(&sum, v, in[2]));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    case 4: OK(ml_add(res, v, in[2])); break;
    case 5: OK(ml__relu_grad(res, in[2], v)); break;
    }
    /* clang-format on */
    if (kind == 8) *t = v, ml_retain(v);
    ml_release(p), ml_release(v), ml_release(sum);
}

static void test_fused_matmul(void) {
    for (int kind = 0; kind < 10; kind++) {
        const int64_t M = kind == 4 ? 31 : 30, N = kind == 6 ? 24 : 40, K = kind == 7 ? 100 : 40;
        const int bias = kind == 0 || kind >= 6;
        const int two_d = kind == 3 || kind == 4;
        const int64_t sa2[2] = {M, K}, sa3[3] = {3, 10, K};
        const int64_t sb[2] = {kind == 1 ? N : K, kind == 1 ? K : N};
        const int64_t so2[2] = {M, N}, so3[3] = {3, 10, N}, sbias[3] = {3, 1, N};
        ml_tensor *a = NULL, *b = NULL, *u = NULL, *m = NULL;
        if (kind == 9)
            OK(ml_tensor_zeros(&a, 3, sa3));
        else
            OK(ml_tensor_zeros(&a, 2, sa2));
        OK(ml_tensor_zeros(&b, 2, sb));
        OK(ml_tensor_zeros(&u, two_d ? 2 : 3, two_d ? so2 : bias ? sbias : so3));
        OK(ml_tensor_zeros(&m, two_d ? 2 : 3, two_d ? so2 : so3));
        ml_tensor *ins[4] = {a, b, u, m};
        ml_trace *tr = record_program(matmul_program, kind, ins, kind == 8 ? 2 : 1);
        const int want_ops = kind == 8 ? 2 : 1; /* 8: product with its reshape, bias add + relu */
        CHECK(ml_trace_n_ops(tr) == want_ops, "fused matmul, case %d: %d entries", kind,
              ml_trace_n_ops(tr));
        for (int i = 0; i < 4; i++) fill_values(ins[i], 31u * (unsigned)kind + (unsigned)i);
        if (kind >= 2 && kind <= 4) no_nans(u);
        ml_tensor *got[2] = {NULL, NULL}, *want = NULL, *want_t = NULL;
        OK(ml_trace_replay(tr, ins, got));
        matmul_program(kind, ins, &want, &want_t);
        CHECK(got[0] && ml_ndim(got[0]) == ml_ndim(want) &&
                  !memcmp(ml_shape(got[0]), ml_shape(want),
                          (size_t)ml_ndim(want) * sizeof(int64_t)),
              "fused matmul, case %d: replay's shape", kind);
        /* bias add + relu (kinds 0, 6-9): a NaN of u meets NaNs of T */
        check_replay_nan("fused matmul", kind, kind == 8, got, want, want_t, bias);
        ml_tensor *all[] = {a, b, u, m, got[0], got[1], want, want_t};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
        ml_trace_free(tr);
    }
}

/* Products the packed driver or the unpacked tiles compute, their op applied to each tile
 * once it is final (ml__sgemm_into's epilogue on those paths): the replay gives eager's
 * bits for every op, on one thread and split over two (by rows or by columns: the op's
 * operands are found by the part's place in the whole product), and the same at both. */
static struct {
    int64_t rows, k, n;
    int tb;
} fm_shape;

static void matmul_path_program(int kind, ml_tensor *const *in, ml_tensor **res, ml_tensor **t) {
    ml_tensor *p = NULL, *v = NULL, *sum = NULL;
    const int64_t sh3[3] = {3, fm_shape.rows / 3, fm_shape.n};
    (void)t;
    OK(ml_matmul(&p, in[0], in[1], 0, fm_shape.tb));
    OK(ml_reshape(&v, p, 3, sh3));
    /* clang-format off: a table, one case a line */
    switch (kind) {
    case 0:
        OK(ml_add(&sum, v, in[2]));
        OK(ml_relu(res, sum));
        break; /* bias row per entry */
    case 1: OK(ml__relu_grad(res, v, in[2])); break;
    case 2:
        OK(ml_add(&sum, in[2], v));
        OK(ml__relu_grad(res, sum, in[3]));
        break;
    default: OK(ml_add(res, v, in[2])); break;
    }
    /* clang-format on */
    ml_release(p), ml_release(v), ml_release(sum);
}

static void test_fused_matmul_paths(void) {
    /* packed (k > 512) split by rows at two threads; packed split by columns; the 6 x 16
     * tiles split by rows; 4-row tiles with B transposed; n = 40 past one k slice */
    const struct {
        int64_t rows, k, n;
        int tb;
    } shapes[5] = {{120, 520, 48, 0},
                   {18, 520, 256, 0},
                   {300, 72, 128, 0},
                   {120, 72, 56, 1},
                   {120, 100, 40, 0}};
    const int threads_before = ml_get_num_threads();
    for (int sh = 0; sh < 5; sh++)
        for (int kind = 0; kind < 4; kind++) {
            const int c = sh * 4 + kind;
            fm_shape.rows = shapes[sh].rows, fm_shape.k = shapes[sh].k;
            fm_shape.n = shapes[sh].n, fm_shape.tb = shapes[sh].tb;
            const int64_t sa[2] = {fm_shape.rows, fm_shape.k};
            const int64_t sb[2] = {fm_shape.tb ? fm_shape.n : fm_shape.k,
                                   fm_shape.tb ? fm_shape.k : fm_shape.n};
            const int64_t so[3] = {3, fm_shape.rows / 3, fm_shape.n}, sbias[3] = {3, 1, fm_shape.n};
            ml_tensor *a = NULL, *b = NULL, *u = NULL, *m = NULL;
            OK(ml_tensor_zeros(&a, 2, sa));
            OK(ml_tensor_zeros(&b, 2, sb));
            OK(ml_tensor_zeros(&u, 3, kind == 0 ? sbias : so));
            OK(ml_tensor_zeros(&m, 3, so));
            ml_tensor *ins[4] = {a, b, u, m};
            ml_set_num_threads(1);
            ml_trace *tr = record_program(matmul_path_program, kind, ins, 1);
            CHECK(ml_trace_n_ops(tr) == 1, "fused matmul paths, case %d: %d entries", c,
                  ml_trace_n_ops(tr));
            for (int i = 0; i < 4; i++) fill_values(ins[i], 17u * (unsigned)c + (unsigned)i);
            if (kind >= 2) no_nans(u);
            ml_tensor *want = NULL;
            matmul_path_program(kind, ins, &want, NULL);
            for (int th = 1; th <= 2; th++) {
                ml_set_num_threads(th);
                ml_tensor *got[2] = {NULL, NULL}, *eager = NULL;
                OK(ml_trace_replay(tr, ins, got));
                matmul_path_program(kind, ins, &eager, NULL);
                check_replay_nan("fused matmul paths", c, 0, got, eager, NULL, kind == 0);
                CHECK(!memcmp(ml_data(eager), ml_data(want),
                              (size_t)ml_numel(want) * sizeof(float)),
                      "fused matmul paths, case %d: %d threads differ from one", c, th);
                ml_release(got[0]), ml_release(eager);
            }
            ml_tensor *all[] = {a, b, u, m, want};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++) ml_release(all[i]);
            ml_trace_free(tr);
        }
    ml_set_num_threads(threads_before);
}

/* NaN through relu (issue 18): relu(NaN) is NaN (NumPy's maximum(x, 0), PyTorch's relu),
 * -inf gives 0, -0.0 stays -0.0; the backward passes g at NaN (PyTorch's threshold_backward:
 * 0 where the output is <= 0); the fused linear(..., relu) and every GEMM epilogue
 * (ml__sgemm_into: the 2 x 40 tiles, the unpacked tiles, the packed driver, scalar tails)
 * do the same. */
static int is_nan(float v) { return v != v; }

static void test_relu_nan(void) {
    const float v[6] = {NAN, INFINITY, -INFINITY, -0.0f, 2.0f, -3.0f};
    ml_tensor *x = vec(6, v), *y = NULL, *g = NULL;
    ml_set_requires_grad(x, 1);
    OK(ml_relu(&y, x));
    const float *o = ml_data(y);
    CHECK(is_nan(o[0]) && o[1] == INFINITY && o[2] == 0.0f && o[4] == 2.0f && o[5] == 0.0f,
          "relu: %g %g %g %g %g", o[0], o[1], o[2], o[4], o[5]);
    CHECK(o[3] == 0.0f && signbit(o[3]), "relu(-0.0) = -0.0 (NumPy, PyTorch)");
    ml_tensor *sum = NULL;
    OK(ml_sum(&sum, y, 0, NULL, 0));
    OK(ml_grad(&g, 1, &sum, 1, &x, NULL, 0));
    const float want_g[6] = {1, 1, 0, 0, 1, 0}; /* PyTorch 2.13 */
    CHECK(g && !memcmp(ml_data(g), want_g, sizeof want_g),
          "relu grad at NaN, inf, -inf, -0, 2, -3: "
          "%g %g %g %g %g %g",
          ml_data(g)[0], ml_data(g)[1], ml_data(g)[2], ml_data(g)[3], ml_data(g)[4], ml_data(g)[5]);
    ml_release(g), ml_release(sum), ml_release(y);

    /* linear(x, w, b, relu): a NaN input row is NaN, a NaN bias column is NaN */
    const int64_t sx[2] = {2, 3}, sw[2] = {3, 4}, sb[1] = {4};
    const float xv[6] = {NAN, 1, 1, 1, 1, 1}, wv[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const float bv[4] = {0, NAN, -10, 1};
    ml_tensor *lx = NULL, *lw = NULL, *lb = NULL, *ly = NULL;
    OK(ml_tensor_from_data(&lx, 2, sx, xv));
    OK(ml_tensor_from_data(&lw, 2, sw, wv));
    OK(ml_tensor_from_data(&lb, 1, sb, bv));
    OK(ml_linear(&ly, lx, lw, lb, ML_ACT_RELU));
    const float *l = ml_data(ly);
    CHECK(is_nan(l[0]) && is_nan(l[1]) && is_nan(l[2]) && is_nan(l[3]), "linear relu: NaN row");
    CHECK(l[4] == 3.0f && is_nan(l[5]) && l[6] == 0.0f && l[7] == 4.0f,
          "linear relu row 1: %g %g %g %g", l[4], l[5], l[6], l[7]);
    ml_release(lx), ml_release(lw), ml_release(lb), ml_release(ly), ml_release(x);

    /* the epilogues: each element against its formula, NaN for NaN */
    const struct {
        int64_t m, k, n;
    } shapes[4] = {{30, 40, 40}, {120, 520, 48}, {300, 72, 128}, {7, 100, 13}};
    int fused = 0;
    for (int sh = 0; sh < 4; sh++) {
        const int64_t m = shapes[sh].m, k = shapes[sh].k, n = shapes[sh].n;
        float *a = malloc((size_t)(m * k) * sizeof *a), *b = malloc((size_t)(k * n) * sizeof *b);
        float *u = malloc((size_t)(m * n) * sizeof *u), *mk = malloc((size_t)(m * n) * sizeof *mk);
        float *t = malloc((size_t)(m * n) * sizeof *t),
              *out = malloc((size_t)(m * n) * sizeof *out);
        if (!a || !b || !u || !mk || !t || !out) abort(); /* test setup only */
        for (int64_t i = 0; i < m * k; i++) a[i] = (float)((i * 7) % 11) / 11.0f - 0.5f;
        for (int64_t i = 0; i < k * n; i++) b[i] = (float)((i * 5) % 13) / 13.0f - 0.5f;
        for (int64_t i = 0; i < m * n; i++) {
            u[i] = i % 5 == 1 ? NAN : (float)((i * 3) % 7) - 3.0f;
            mk[i] = i % 6 == 2 ? NAN : (float)((i * 5) % 9) - 4.0f;
        }
        a[0] = NAN; /* row 0 of the product: NaN */
        a[k + 1] = -INFINITY; /* row 1: infinities, NaN where they meet 0 */
        ml_sgemm(0, 0, m, n, k, 1.0f, a, k, b, n, 0.0f, t, n);
        for (int epi = ML_EPI_ADD; epi <= ML_EPI_ADD_MASK; epi++) {
            if (!ml__sgemm_into(0, m, n, k, a, b, epi, u, 1, mk, out)) continue;
            fused++;
            int bad = 0;
            for (int64_t i = 0; i < m * n && !bad; i++) {
                const float x = t[i], s = x + u[i];
                float want;
                /* clang-format off: a table, one case a line */
                switch (epi) {
                case ML_EPI_ADD: want = s; break;
                case ML_EPI_ADD_RELU: want = s < 0.0f ? 0.0f : s; break;
                case ML_EPI_RELU_GRAD: want = u[i] != 0.0f ? x : 0.0f; break;
                default: want = mk[i] != 0.0f ? s : 0.0f; break;
                }
                /* clang-format on */
                bad = is_nan(want) ? !is_nan(out[i]) : out[i] != want;
                if (bad)
                    CHECK(0, "epilogue %d, %lld x %lld x %lld, element %lld: %g, want %g", epi,
                          (long long)m, (long long)k, (long long)n, (long long)i, out[i], want);
            }
            CHECK(!bad, "epilogue %d, shape %d", epi, sh);
        }
        free(a), free(b), free(u), free(mk), free(t), free(out);
    }
    if (strcmp(ml_kernel_name(), "avx2") == 0)
        CHECK(fused >= 12, "the AVX2 kernel fused %d of the epilogues", fused);
}

/* Piecewise-constant ops (sign, step, clip's mask, relu's mask) give a zero gradient, as
 * TensorFlow and PyTorch: an input reached only through them gets zeros, not "not used",
 * and under create_graph those zeros differentiate to zeros again. */
static void test_zero_gradients(void) {
    const float v[4] = {-1.5f, 0.0f, 2.0f, NAN};
    ml_tensor *x = vec(4, v), *s = NULL, *sum = NULL, *g = NULL, *gsum = NULL, *h = NULL;
    ml_set_requires_grad(x, 1);
    OK(ml_sign(&s, x));
    CHECK(ml_requires_grad(s), "sign records");
    OK(ml_sum(&sum, s, 0, NULL, 0));
    OK(ml_grad(&g, 1, &sum, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    const float zeros[4] = {0, 0, 0, 0};
    CHECK(g && !memcmp(ml_data(g), zeros, sizeof zeros), "d sum(sign(x)) / dx = 0");
    OK(ml_sum(&gsum, g, 0, NULL, 0));
    OK(ml_grad(&h, 1, &gsum, 1, &x, NULL, 0));
    CHECK(h && !memcmp(ml_data(h), zeros, sizeof zeros), "second order: 0");
    ml_release(s), ml_release(sum), ml_release(g), ml_release(gsum), ml_release(h);
    /* abs: g sign(x), then 0 */
    ml_tensor *a = NULL;
    s = sum = g = gsum = h = NULL;
    OK(ml_abs(&a, x));
    OK(ml_sum(&sum, a, 0, NULL, 0));
    OK(ml_grad(&g, 1, &sum, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    const float sg[3] = {-1, 0, 1};
    CHECK(g && !memcmp(ml_data(g), sg, sizeof sg), "abs' = sign");
    OK(ml_sum(&gsum, g, 0, NULL, 0));
    OK(ml_grad(&h, 1, &gsum, 1, &x, NULL, 0));
    CHECK(h && !memcmp(ml_data(h), zeros, sizeof zeros), "abs'' = 0");
    /* an input the output does not depend on is still refused */
    ml_tensor *z = vec(1, v), *both[2] = {x, z}, *gz[2] = {NULL, NULL};
    ml_set_requires_grad(z, 1);
    CHECK(ml_grad(gz, 1, &sum, 2, both, NULL, 0) == ML_ERR_GRAPH, "unused input refused");
    ml_release(a), ml_release(sum), ml_release(g), ml_release(gsum), ml_release(h);
    ml_release(z), ml_release(x);
}

/* ml_grad's flags are a bit set: ML_GRAD_ALLOW_UNUSED gives NULL for an input no output
 * reaches, both flags combine, and an unknown bit is refused with nothing written. */
static void test_grad_flags(void) {
    const float v[2] = {1.0f, 2.0f};
    ml_tensor *x = vec(2, v), *z = vec(1, v), *y = NULL, *sum = NULL;
    ml_set_requires_grad(x, 1);
    ml_set_requires_grad(z, 1);
    OK(ml_mul(&y, x, x));
    OK(ml_sum(&sum, y, 0, NULL, 0));
    ml_tensor *both[2] = {x, z}, *g[2] = {NULL, NULL};
    CHECK(ml_grad(g, 1, &sum, 2, both, NULL, 0) == ML_ERR_GRAPH, "unused input refused");
    OK(ml_grad(g, 1, &sum, 2, both, NULL, ML_GRAD_ALLOW_UNUSED));
    CHECK(g[0] && ml_data(g[0])[0] == 2.0f && ml_data(g[0])[1] == 4.0f && !g[1],
          "allow_unused: d/dx = 2x, NULL for the unused input");
    CHECK(g[0] && ml_is_leaf(g[0]), "no graph without ML_GRAD_CREATE_GRAPH");
    ml_release(g[0]);
    g[0] = NULL;
    OK(ml_grad(g, 1, &sum, 2, both, NULL, ML_GRAD_CREATE_GRAPH | ML_GRAD_ALLOW_UNUSED));
    CHECK(g[0] && !ml_is_leaf(g[0]) && !g[1], "both flags: a recorded gradient, NULL unused");
    ml_release(g[0]);
    g[0] = NULL;
    CHECK(ml_grad(g, 1, &sum, 1, &x, NULL, 1u << 5) == ML_ERR_VALUE && !g[0],
          "an unknown flag is refused, nothing written");
    CHECK(strstr(ml_last_error(), "unknown flags 0x20") != NULL, "message: %s", ml_last_error());
    ml_release(y), ml_release(sum), ml_release(x), ml_release(z);
}

/* ml_trace_format / ml_trace_print: the entries by op name in replay order, with shapes;
 * a fused entry names the recorded ops it computes; snprintf's contract for the buffer. */
static void test_trace_print(void) {
    float xv[12] = {0}, wv[15] = {0}, bv[5] = {0};
    int64_t xs[2] = {4, 3}, ws[2] = {3, 5};
    ml_tensor *x, *w, *b = vec(5, bv);
    ml_tensor_from_data(&x, 2, xs, xv);
    ml_tensor_from_data(&w, 2, ws, wv);
    ml_trace *tr = NULL;
    char small[8], text[2048];
    CHECK(ml_trace_format(NULL, text, sizeof text) == 0 && !text[0], "no trace: empty text");
    OK(ml_trace_begin(&tr, 1, &x));
    CHECK(ml_trace_format(tr, text, sizeof text) == 0 && !text[0], "a recording trace: empty text");
    ml_tensor *t = NULL, *z = NULL, *y = NULL, *e = NULL, *l = NULL;
    OK(ml_matmul(&t, x, w, 0, 0));
    OK(ml_add(&z, t, b));
    OK(ml_relu(&y, z));
    OK(ml_exp(&e, y));
    OK(ml_sum(&l, e, 0, NULL, 0));
    OK(ml_trace_end(tr, 1, &l));
    const size_t n = ml_trace_format(tr, text, sizeof text);
    CHECK(n == strlen(text) && n < sizeof text, "length %zu of %zu", n, strlen(text));
    CHECK(ml_trace_format(tr, small, sizeof small) == n && strlen(small) == sizeof small - 1 &&
              !strncmp(small, text, sizeof small - 1),
          "a small buffer: truncated, full length");
    CHECK(ml_trace_format(tr, NULL, 0) == n, "size 0: the length");
    const char *want[] = {
        "trace: 1 input, 1 output, 3 entries\n",
        "inputs: x0 (4, 3)\n",
        "= matmul_into(x0 (4, 3), c",
        " (3, 5), c",
        " (5,))  [fused: matmul + add + relu]\n",
        "(4, 5) = exp(t",
        " (4, 5))\n",
        "() = sum(t",
        "outputs: t",
    };
    const char *at = text;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *hit = strstr(at, want[i]);
        CHECK(hit != NULL, "the text has '%s' after offset %d:\n%s", want[i], (int)(at - text),
              text);
        if (hit) at = hit + strlen(want[i]);
    }
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (f) {
        OK(ml_trace_print(tr, f));
        CHECK(ftell(f) == (long)n, "print writes the text (%ld of %zu bytes)", ftell(f), n);
        fclose(f);
    }
    ml_trace_free(tr);
    ml_release(x), ml_release(w), ml_release(b), ml_release(t), ml_release(z), ml_release(y);
    ml_release(e), ml_release(l);
}

/* RMSprop and weight decay against Keras 3's tests (rmsprop_test.py::test_single_step,
 * sgd_test.py::test_weight_decay) and the refusals that change nothing */
static void test_rmsprop_weight_decay(void) {
    float p0[4] = {1, 2, 3, 4}, g0[4] = {1, 6, 7, 2};
    const float want[4] = {-0.5811f, 0.4189f, 1.4189f, 2.4189f};
    ml_tensor *p = vec(4, p0), *g = vec(4, g0);
    ml_optimizer *opt;
    OK(ml_rmsprop_new(&opt, 0.5f, 0.9, 0.0f, 1e-7f, 0));
    CHECK(ml_optimizer_n_slots(opt) == 1, "plain RMSprop keeps the velocity");
    OK(ml_optimizer_step(opt, 1, &p, &g));
    for (int i = 0; i < 4; i++)
        CHECK(close_to(ml_data(p)[i], want[i], 1e-4), "p[%d] = %g", i, ml_data(p)[i]);
    float wrong[2] = {1, 1};
    ml_tensor *g2 = vec(2, wrong);
    CHECK(ml_optimizer_step(opt, 1, &p, &g2) == ML_ERR_SHAPE, "shape mismatch refused");
    CHECK(close_to(ml_data(p)[0], want[0], 1e-4) && ml_optimizer_iterations(opt) == 1,
          "a refused step changes nothing");
    ml_optimizer_free(opt);
    CHECK(ml_rmsprop_new(&opt, 0.1f, 1.5, 0.0f, 1e-7f, 0) == ML_ERR_VALUE, "rho > 1 refused");
    OK(ml_rmsprop_new(&opt, 0.1f, 0.9, 0.5f, 1e-7f, 1));
    CHECK(ml_optimizer_n_slots(opt) == 3, "momentum and centred: three slots");
    CHECK(ml_optimizer_set_weight_decay(opt, -1.0f) == ML_ERR_VALUE, "negative decay refused");
    ml_optimizer_free(opt);

    /* a zero gradient and weight decay 0.004 at lr 1, three times: 2 (1 - 0.004)^3 */
    float w0 = 2, z = 0;
    ml_tensor *w = vec(1, &w0), *zg = vec(1, &z);
    for (int k = 0; k < 3; k++) {
        OK(ml_sgd_new(&opt, 1.0f, 0.0f, 0));
        OK(ml_optimizer_set_weight_decay(opt, 0.004f));
        CHECK(ml_optimizer_weight_decay(opt) == 0.004f, "weight_decay read back");
        OK(ml_optimizer_step(opt, 1, &w, &zg));
        ml_optimizer_free(opt);
    }
    CHECK(close_to(ml_data(w)[0], 1.9760959, 1e-6), "w = %.7f", ml_data(w)[0]);
    ml_release(p), ml_release(g), ml_release(g2), ml_release(w), ml_release(zg);
}

int main(void) {
    test_tutorial();
    test_rmsprop_weight_decay();
    test_third_order();
    test_central_difference();
    test_broadcast_grad();
    test_op_table();
    test_errors();
    test_sgd_momentum();
    test_polynomial_decay();
    test_rng();
    test_checkpoint_state();
    test_weight_file();
    test_long_chain();
    test_fused_trace_pairs();
    test_fused_broadcasts();
    test_fused_outer();
    test_fused_matmul();
    test_fused_matmul_paths();
    test_trace_print();
    test_relu_nan();
    test_zero_gradients();
    test_grad_flags();
    printf("test_core: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
