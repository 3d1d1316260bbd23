/* optim.c — SGD (momentum, Nesterov), Adam (AMSGrad) and RMSprop (momentum, centred), with
 * Keras' update rules, and Keras 3's decoupled weight decay for each of them.
 * State lives in one slab per optimizer, so an update over every parameter is one pass. */
#include <math.h>
#include <pthread.h>

#include "../kernels/vmath.h"
#include "../ops/ops.h" /* OP_OPTIMIZER_STEP: a trace records the step as an entry */

typedef enum { OPT_SGD, OPT_ADAM, OPT_RMSPROP } opt_kind;

struct ml_optimizer {
    opt_kind kind;
    float learning_rate;
    float momentum; /* SGD */
    int nesterov;
    float beta_1, beta_2, epsilon; /* Adam; epsilon also RMSprop's */
    int amsgrad;
    double rho; /* RMSprop (double: 1 - rho is formed from the caller's value, as Keras) */
    int centered;
    float weight_decay; /* 0: none; else p -= p * weight_decay * lr before the update */
    int64_t iterations;
    int n_params;        /* 0 until the first step fixes the parameter list */
    int n_slots;         /* state floats per parameter element */
    int64_t *numel;      /* per parameter */
    int64_t *offset;     /* per parameter, into each slot's region of the slab */
    int64_t total;
    float *slab;         /* n_slots regions of `total` floats */
    int64_t (*dims)[ML_MAX_DIMS + 1]; /* per parameter: ndim then shape */
    /* steps are serialised: two threads stepping one optimizer (the binding releases the
     * GIL) must not both build the state on the first step, nor interleave an update */
    pthread_mutex_t lock;
};

static ml_status check_lr(float lr) {
    if (!isfinite(lr) || lr < 0)
        return ml_set_error(ML_ERR_VALUE, "learning_rate must be a finite number >= 0, got %g",
                            (double)lr);
    return ML_OK;
}

static ml_status opt_alloc(ml_optimizer **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return ml_set_error(ML_ERR_OOM, "out of memory");
    if (pthread_mutex_init(&(*out)->lock, NULL)) {
        free(*out);
        *out = NULL;
        return ml_set_error(ML_ERR_OOM, "optimizer: no lock could be made");
    }
    return ML_OK;
}

ml_status ml_sgd_new(ml_optimizer **out, float learning_rate, float momentum, int nesterov) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    if (!(momentum >= 0 && momentum <= 1))
        return ml_set_error(ML_ERR_VALUE, "SGD: momentum must be in [0, 1], got %g",
                            (double)momentum);
    if ((st = opt_alloc(out))) return st;
    (*out)->kind = OPT_SGD;
    (*out)->learning_rate = learning_rate;
    (*out)->momentum = momentum;
    (*out)->nesterov = nesterov ? 1 : 0;
    (*out)->n_slots = momentum > 0 ? 1 : 0;
    return ML_OK;
}

ml_status ml_adam_new(ml_optimizer **out, float learning_rate, float beta_1, float beta_2,
                      float epsilon, int amsgrad) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    if (!(beta_1 >= 0 && beta_1 < 1) || !(beta_2 >= 0 && beta_2 < 1))
        return ml_set_error(ML_ERR_VALUE,
                            "Adam: beta_1 and beta_2 must be in [0, 1), got %g and %g",
                            (double)beta_1, (double)beta_2);
    if (!(epsilon >= 0) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE, "Adam: epsilon must be >= 0, got %g", (double)epsilon);
    if ((st = opt_alloc(out))) return st;
    (*out)->kind = OPT_ADAM;
    (*out)->learning_rate = learning_rate;
    (*out)->beta_1 = beta_1;
    (*out)->beta_2 = beta_2;
    (*out)->epsilon = epsilon;
    (*out)->amsgrad = amsgrad ? 1 : 0;
    (*out)->n_slots = amsgrad ? 3 : 2;
    return ML_OK;
}

ml_status ml_rmsprop_new(ml_optimizer **out, float learning_rate, double rho, float momentum,
                         float epsilon, int centered) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    if (!(rho >= 0 && rho <= 1))
        return ml_set_error(ML_ERR_VALUE, "RMSprop: rho must be in [0, 1], got %g", rho);
    if (!(momentum >= 0) || !isfinite(momentum))
        return ml_set_error(ML_ERR_VALUE, "RMSprop: momentum must be >= 0, got %g",
                            (double)momentum);
    if (!(epsilon >= 0) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE, "RMSprop: epsilon must be >= 0, got %g", (double)epsilon);
    if ((st = opt_alloc(out))) return st;
    (*out)->kind = OPT_RMSPROP;
    (*out)->learning_rate = learning_rate;
    (*out)->rho = rho;
    (*out)->momentum = momentum;
    (*out)->epsilon = epsilon;
    (*out)->centered = centered ? 1 : 0;
    /* velocity, then momentum (momentum > 0), then the average gradient (centred): Keras'
     * order */
    (*out)->n_slots = 1 + (momentum > 0) + (*out)->centered;
    return ML_OK;
}

ml_status ml_optimizer_set_weight_decay(ml_optimizer *opt, float weight_decay) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    if (!(weight_decay >= 0) || !isfinite(weight_decay))
        return ml_set_error(ML_ERR_VALUE, "weight_decay must be a finite number >= 0, got %g",
                            (double)weight_decay);
    opt->weight_decay = weight_decay;
    return ML_OK;
}

float ml_optimizer_weight_decay(const ml_optimizer *opt) { return opt->weight_decay; }

void ml_optimizer_free(ml_optimizer *opt) {
    if (!opt) return;
    free(opt->numel);
    free(opt->offset);
    free(opt->dims);
    free(opt->slab);
    pthread_mutex_destroy(&opt->lock);
    free(opt);
}

static ml_status check_step(const ml_optimizer *opt, int n, ml_tensor *const *params,
                            ml_tensor *const *grads) {
    if (n < 1 || !params || !grads)
        return ml_set_error(ML_ERR_VALUE, "optimizer step: no parameters given");
    if (opt->n_params && n != opt->n_params)
        return ml_set_error(ML_ERR_VALUE,
                            "optimizer step: got %d parameters, but this optimizer "
                            "was built for %d",
                            n, opt->n_params);
    for (int i = 0; i < n; i++) {
        if (!params[i] || !grads[i])
            return ml_set_error(ML_ERR_VALUE, "optimizer step: parameter or gradient %d is NULL",
                                i);
        if (!ml__same_shape(params[i], grads[i]))
            return ml_set_error(ML_ERR_SHAPE,
                                "optimizer step: gradient %d has shape %s but its "
                                "parameter has shape %s",
                                i, ML_SHAPE_STR(grads[i]), ML_SHAPE_STR(params[i]));
        if (opt->n_params) {
            const int64_t *d = opt->dims[i];
            int same = d[0] == params[i]->ndim;
            for (int k = 0; same && k < params[i]->ndim; k++)
                same = d[1 + k] == params[i]->shape[k];
            if (!same)
                return ml_set_error(ML_ERR_SHAPE,
                                    "optimizer step: parameter %d has shape %s, but "
                                    "this optimizer was built for shape %s",
                                    i, ML_SHAPE_STR(params[i]),
                                    ml__shape_str((char[160]){0}, 160, (int)d[0], d + 1));
        }
        for (int j = 0; j < i; j++)
            if (params[j]->data == params[i]->data && params[i]->numel)
                return ml_set_error(ML_ERR_VALUE,
                                    "optimizer step: parameters %d and %d share memory", j, i);
    }
    return ML_OK;
}

/* The first step fixes the parameter list; all allocation happens before any write. */
static ml_status build_state(ml_optimizer *opt, int n, ml_tensor *const *params) {
    int64_t *numel = malloc((size_t)n * sizeof *numel);
    int64_t *offset = malloc((size_t)n * sizeof *offset);
    int64_t (*dims)[ML_MAX_DIMS + 1] = malloc((size_t)n * sizeof *dims);
    int64_t total = 0;
    for (int i = 0; numel && offset && dims && i < n; i++) {
        numel[i] = params[i]->numel;
        offset[i] = total;
        total += numel[i];
        dims[i][0] = params[i]->ndim;
        for (int k = 0; k < params[i]->ndim; k++) dims[i][1 + k] = params[i]->shape[k];
    }
    float *slab = (numel && offset && dims)
                      ? calloc((size_t)(total * opt->n_slots + 1), sizeof(float))
                      : NULL;
    if (!slab) {
        free(numel);
        free(offset);
        free(dims);
        return ml_set_error(ML_ERR_OOM, "out of memory for optimizer state (%lld floats)",
                            (long long)(total * opt->n_slots));
    }
    opt->numel = numel;
    opt->offset = offset;
    opt->dims = dims;
    opt->total = total;
    opt->slab = slab;
    opt->n_params = n;
    return ML_OK;
}

/* Adam over [i*chunk, (i+1)*chunk) of the parameters laid end to end (the slab's order). */
typedef struct adam_job {
    ml_optimizer *opt;
    ml_tensor *const *params, *const *grads;
    float lrt, b1, b2, eps;
    int64_t chunk;
} adam_job;
/* about 25 us of one core: below, a second thread's handoff costs more than it saves (the
 * dense rows of benchmarks/run_all.py at 2 threads) */
#define ADAM_PAR_MIN (1 << 16)

/* x rounded up to a multiple of 64, at most len */
static inline int64_t snap64(int64_t x, int64_t len) {
    const int64_t r = (x + 63) & ~(int64_t)63;
    return r < len ? r : len;
}

static void adam_part(void *ctx, int64_t part) {
    const adam_job *j = ctx;
    const ml_optimizer *opt = j->opt;
    const int64_t lo = part * j->chunk, hi = lo + j->chunk;
    for (int i = 0; i < opt->n_params; i++) {
        const int64_t start = opt->offset[i], len = opt->numel[i];
        /* A part's ends snap to 64 elements from the parameter's start, the same rounding
         * for both parts that share an end: each element is then updated by the code an
         * unsplit run gives it (a vector lane, or the tail after the last full vector),
         * so any number of parts gives the one-thread bits under any compiler's
         * contraction of the scalar tail. */
        const int64_t a = lo > start ? snap64(lo - start, len) : 0;
        const int64_t b = hi < start + len ? snap64(hi - start, len) : len;
        if (a >= b) continue;
        const int64_t off = a, at = start + a;
        float *m = opt->slab + at, *v = opt->slab + opt->total + at;
        float *vhat = opt->amsgrad ? opt->slab + 2 * opt->total + at : NULL;
        /* element-wise: each j reads g[j], m[j], v[j] before it writes p[j], so even a
         * gradient that shares its parameter's memory gets the scalar loop's result */
        ml__vadam(b - a, j->params[i]->data + off, j->grads[i]->data + off, m, v, vhat, j->lrt,
                  j->b1, j->b2, j->eps);
    }
}

typedef struct {
    ml_optimizer *opt;
    int n;
} step_params;
static ml_status replay_step(ml_tensor **out, ml_tensor **in, const void *p) {
    const step_params *s = p;
    *out = NULL;
    return ml_optimizer_step(s->opt, s->n, in, in + s->n);
}

static ml_status step_locked(ml_optimizer *opt, int n, ml_tensor *const *params,
                             ml_tensor *const *grads);

ml_status ml_optimizer_step(ml_optimizer *opt, int n, ml_tensor *const *params,
                            ml_tensor *const *grads) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    if (ml__trace_active && n > 0 && params && grads) {
        /* recorded as one in-place entry over params then grads (the trace keeps the
         * optimizer's address: the caller keeps the optimizer alive while it replays) */
        ml_tensor **both = malloc((size_t)2 * (size_t)n * sizeof *both);
        if (!both) return ml_set_error(ML_ERR_OOM, "out of memory");
        memcpy(both, params, (size_t)n * sizeof *both);
        memcpy(both + n, grads, (size_t)n * sizeof *both);
        ml_trace *saved = ml__trace_active;
        ml__trace_active = NULL; /* the step itself runs untraced */
        ml_status st = ml_optimizer_step(opt, n, params, grads);
        ml__trace_active = saved;
        step_params sp = {opt, n};
        if (st == ML_OK) ML_TRACE(OP_OPTIMIZER_STEP, replay_step, 2 * n, both, NULL, &sp);
        free(both);
        return st;
    }
    pthread_mutex_lock(&opt->lock);
    ml_status st = step_locked(opt, n, params, grads);
    pthread_mutex_unlock(&opt->lock);
    return st;
}

static ml_status step_locked(ml_optimizer *opt, int n, ml_tensor *const *params,
                             ml_tensor *const *grads) {
    ml_status st = check_step(opt, n, params, grads);
    if (st) return st;
    if (!opt->n_params && (st = build_state(opt, n, params))) return st;
    int64_t t = opt->iterations + 1;
    float lr = opt->learning_rate;
    if (opt->weight_decay > 0) {
        /* Keras 3's base optimizer: every variable decays before the update,
         * variable - variable * weight_decay * lr (Loshchilov & Hutter 2019) */
        const float wd = opt->weight_decay;
        for (int i = 0; i < n; i++) {
            float *p = params[i]->data;
            for (int64_t j = 0; j < opt->numel[i]; j++) p[j] = p[j] - p[j] * wd * lr;
        }
    }
    if (opt->kind == OPT_RMSPROP) {
        /* Keras 3 (rmsprop.py): velocity = rho v + (1 - rho) g^2; centred: average
         * a = rho a + (1 - rho) g, denominator v - a^2 + eps, else v + eps; increment
         * lr g / sqrt(denominator); momentum m = momentum m + increment, p -= m; else
         * p -= increment. Element-wise: g[j] is read before p[j] is written. */
        const float rho = (float)opt->rho, omr = (float)(1.0 - opt->rho);
        const float mom = opt->momentum, eps = opt->epsilon;
        for (int i = 0; i < n; i++) {
            float *p = params[i]->data;
            const float *g = grads[i]->data;
            const int64_t len = opt->numel[i], at = opt->offset[i];
            float *vel = opt->slab + at;
            float *m = mom > 0 ? opt->slab + opt->total + at : NULL;
            float *avg = opt->centered ? opt->slab + (int64_t)(opt->n_slots - 1) * opt->total + at
                                       : NULL;
            for (int64_t j = 0; j < len; j++) {
                const float gj = g[j];
                vel[j] = rho * vel[j] + omr * (gj * gj);
                float denom;
                if (avg) {
                    avg[j] = rho * avg[j] + omr * gj;
                    denom = vel[j] - avg[j] * avg[j] + eps;
                } else {
                    denom = vel[j] + eps;
                }
                const float inc = (lr * gj) / sqrtf(denom);
                if (m) {
                    m[j] = mom * m[j] + inc;
                    p[j] -= m[j];
                } else {
                    p[j] -= inc;
                }
            }
            params[i]->storage->version++;
        }
    } else if (opt->kind == OPT_SGD) {
        float mom = opt->momentum;
        for (int i = 0; i < n; i++) {
            float *p = params[i]->data;
            const float *g = grads[i]->data;
            int64_t len = opt->numel[i];
            if (mom > 0) {
                float *v = opt->slab + opt->offset[i];
                for (int64_t j = 0; j < len; j++) {
                    v[j] = mom * v[j] - lr * g[j];
                    p[j] += opt->nesterov ? mom * v[j] - lr * g[j] : v[j];
                }
            } else {
                for (int64_t j = 0; j < len; j++) p[j] -= lr * g[j];
            }
            params[i]->storage->version++;
        }
    } else {
        /* Kingma & Ba 2015, Alg. 1 with the bias correction folded into the step size
         * and epsilon outside it ("epsilon hat"), as Keras does. */
        float b1 = opt->beta_1, b2 = opt->beta_2;
        double lr_t = lr * sqrt(1.0 - pow(b2, (double)t)) / (1.0 - pow(b1, (double)t));
        float lrt = (float)lr_t, eps = opt->epsilon;
        /* one chunk, or one per thread for many parameters; element-wise, so the threads'
         * chunks give the one-thread result bit for bit */
        const int threads = ml__in_parallel() ? 1 : ml_get_num_threads();
        const int parts = opt->total >= ADAM_PAR_MIN && threads > 1 ? threads : 1;
        adam_job job = {opt, params, grads, lrt, b1, b2, eps, (opt->total + parts - 1) / parts};
        ml__parallel_for(parts, 0, adam_part, &job);
        for (int i = 0; i < n; i++) params[i]->storage->version++;
    }
    opt->iterations = t;
    return ML_OK;
}

ml_status ml_optimizer_set_learning_rate(ml_optimizer *opt, float learning_rate) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    opt->learning_rate = learning_rate;
    return ML_OK;
}

float ml_optimizer_learning_rate(const ml_optimizer *opt) { return opt->learning_rate; }
int64_t ml_optimizer_iterations(const ml_optimizer *opt) { return opt->iterations; }
int ml_optimizer_n_slots(const ml_optimizer *opt) { return opt->n_slots; }
int ml_optimizer_n_params(const ml_optimizer *opt) { return opt->n_params; }

ml_status ml_optimizer_slot(ml_tensor **out, ml_optimizer *opt, int param, int slot) {
    if (param < 0 || param >= opt->n_params || slot < 0 || slot >= opt->n_slots)
        return ml_set_error(ML_ERR_VALUE,
                            "optimizer slot (%d, %d) does not exist (%d parameters, "
                            "%d slots)",
                            param, slot, opt->n_params, opt->n_slots);
    const int64_t *d = opt->dims[param];
    return ml_tensor_from_data(out, (int)d[0], d + 1,
                               opt->slab + (int64_t)slot * opt->total + opt->offset[param]);
}

static ml_status check_restore(const ml_optimizer *opt, int n, ml_tensor *const *params,
                               int64_t iterations, ml_tensor *const *slots) {
    ml_status st = check_step(opt, n, params, params); /* the parameter list's checks */
    if (st) return st;
    if (iterations < 0)
        return ml_set_error(ML_ERR_VALUE, "optimizer restore: iterations must be >= 0, got %lld",
                            (long long)iterations);
    if (opt->n_slots && !slots)
        return ml_set_error(ML_ERR_VALUE, "optimizer restore: no slots given (%d per parameter)",
                            opt->n_slots);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < opt->n_slots; k++) {
            const ml_tensor *t = slots[i * opt->n_slots + k];
            if (!t)
                return ml_set_error(ML_ERR_VALUE,
                                    "optimizer restore: slot %d of parameter %d "
                                    "is NULL",
                                    k, i);
            if (!ml__same_shape(t, params[i]))
                return ml_set_error(ML_ERR_SHAPE,
                                    "optimizer restore: slot %d of parameter %d has shape %s "
                                    "but its parameter has shape %s",
                                    k, i, ML_SHAPE_STR(t), ML_SHAPE_STR(params[i]));
        }
    return ML_OK;
}

ml_status ml_optimizer_restore(ml_optimizer *opt, int n, ml_tensor *const *params,
                               int64_t iterations, ml_tensor *const *slots) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    pthread_mutex_lock(&opt->lock);
    ml_status st = check_restore(opt, n, params, iterations, slots);
    if (!st && !opt->n_params) st = build_state(opt, n, params);
    if (!st) {
        for (int i = 0; i < n; i++)
            for (int k = 0; k < opt->n_slots; k++)
                memcpy(opt->slab + (int64_t)k * opt->total + opt->offset[i],
                       slots[i * opt->n_slots + k]->data, (size_t)opt->numel[i] * sizeof(float));
        opt->iterations = iterations;
    }
    pthread_mutex_unlock(&opt->lock);
    return st;
}

ml_status ml_optimizer_reset(ml_optimizer *opt) {
    opt->iterations = 0;
    if (opt->slab) memset(opt->slab, 0, (size_t)(opt->total * opt->n_slots) * sizeof(float));
    return ML_OK;
}
