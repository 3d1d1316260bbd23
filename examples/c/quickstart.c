/*
 * quickstart.c — the metalearn C core without Python.
 *
 * Uses only the public header csrc/include/metalearn.h:
 *   1. f(x) = a*x^2 + b, its first derivative (as a graph) and its second derivative;
 *   2. a tiny linear regression y = x @ w + c trained with Adam, printing the loss.
 *
 * Build and run from the repository root:
 *   make -C csrc
 *   cc -Icsrc/include examples/c/quickstart.c csrc/build/libmetalearn.a -lm -lpthread -o quickstart
 *   ./quickstart
 */
#include <stdio.h>
#include <stdlib.h>

#include "metalearn.h"

/* Every call returns an ml_status; on failure print ml_last_error() and stop. */
#define CHECK(call)                                                                  \
    do {                                                                             \
        ml_status s_ = (call);                                                       \
        if (s_ != ML_OK) {                                                           \
            fprintf(stderr, "%s:%d: %s failed (%d): %s\n", __FILE__, __LINE__, #call, \
                    (int)s_, ml_last_error());                                       \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static int derivatives(void) {
    const float a_val = 2.0f, b_val = 1.0f, x_val = 3.0f;
    ml_tensor *x, *a, *b, *x2, *ax2, *f, *df, *d2f;
    CHECK(ml_tensor_scalar(&x, x_val));
    CHECK(ml_set_requires_grad(x, 1));        /* a leaf we differentiate with respect to */
    CHECK(ml_tensor_scalar(&a, a_val));
    CHECK(ml_tensor_scalar(&b, b_val));
    CHECK(ml_square(&x2, x));                 /* each op records a node of the graph */
    CHECK(ml_mul(&ax2, a, x2));
    CHECK(ml_add(&f, ax2, b));
    /* ML_GRAD_CREATE_GRAPH: the gradient is itself a recorded graph, so it can be
     * differentiated again (what second-order MAML needs) */
    CHECK(ml_grad(&df, 1, &f, 1, &x, NULL, ML_GRAD_CREATE_GRAPH));
    CHECK(ml_grad(&d2f, 1, &df, 1, &x, NULL, 0));
    printf("a = %g, b = %g, x = %g\n", a_val, b_val, x_val);
    printf("f(x) = %g\n", ml_data(f)[0]);     /* a x^2 + b = 19 */
    printf("f'(x) = %g\n", ml_data(df)[0]);   /* 2 a x = 12 */
    printf("f''(x) = %g\n", ml_data(d2f)[0]); /* 2 a = 4 */
    ml_release(x);
    ml_release(a);
    ml_release(b);
    ml_release(x2);
    ml_release(ax2);
    ml_release(f);
    ml_release(df);
    ml_release(d2f);
    return 0;
}

static int regression(void) {
    enum { N = 64, D = 3, EPOCHS = 200 };
    const float true_w[D] = {1.5f, -2.0f, 0.5f}, true_c = 0.3f;
    ml_rng_seed(0);                           /* the C core's seeded generator */

    /* data: x ~ U[-1, 1], y = x @ true_w + true_c */
    ml_tensor *x, *y;
    const int64_t xshape[2] = {N, D}, yshape[2] = {N, 1};
    CHECK(ml_random_uniform(&x, 2, xshape, -1.0f, 1.0f));
    CHECK(ml_tensor_zeros(&y, 2, yshape));
    for (int i = 0; i < N; i++) {
        float s = true_c;
        for (int j = 0; j < D; j++) s += ml_data(x)[i * D + j] * true_w[j];
        ml_data(y)[i] = s;
    }

    /* parameters: w (D, 1) and c (1), zero-initialised, requiring grad */
    ml_tensor *w, *c;
    const int64_t wshape[2] = {D, 1}, cshape[1] = {1};
    CHECK(ml_tensor_zeros(&w, 2, wshape));
    CHECK(ml_tensor_zeros(&c, 1, cshape));
    CHECK(ml_set_requires_grad(w, 1));
    CHECK(ml_set_requires_grad(c, 1));
    ml_tensor *params[2] = {w, c};

    /* one Adam for the whole run, so its moment estimates accumulate */
    ml_optimizer *opt;
    CHECK(ml_adam_new(&opt, 0.05f, 0.9f, 0.999f, 1e-7f, 0));

    for (int epoch = 1; epoch <= EPOCHS; epoch++) {
        ml_tensor *pred, *per_sample, *loss, *grads[2];
        CHECK(ml_linear(&pred, x, w, c, ML_ACT_NONE));          /* x @ w + c */
        CHECK(ml_mean_squared_error(&per_sample, y, pred));     /* (N,) */
        CHECK(ml_mean(&loss, per_sample, 0, NULL, 0));          /* scalar */
        CHECK(ml_grad(grads, 1, &loss, 2, params, NULL, 0));
        if (epoch == 1 || epoch % 20 == 0) printf("epoch %3d loss %.4e\n", epoch, ml_data(loss)[0]);
        CHECK(ml_optimizer_step(opt, 2, params, grads));
        ml_release(pred);
        ml_release(per_sample);
        ml_release(loss);
        ml_release(grads[0]);
        ml_release(grads[1]);
    }
    printf("learned w = [%.3f, %.3f, %.3f], c = %.3f (true [%.1f, %.1f, %.1f], %.1f)\n",
           ml_data(w)[0], ml_data(w)[1], ml_data(w)[2], ml_data(c)[0], true_w[0], true_w[1],
           true_w[2], true_c);
    printf("adam iterations = %lld\n", (long long)ml_optimizer_iterations(opt));
    ml_optimizer_free(opt);
    ml_release(x);
    ml_release(y);
    ml_release(w);
    ml_release(c);
    return 0;
}

int main(void) {
    printf("metalearn C core, kernel: %s\n", ml_kernel_name());
    derivatives();
    regression();
    return 0;
}
