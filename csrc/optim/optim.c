/* optim.c — SGD (momentum, Nesterov), Adam (AMSGrad), RMSprop (momentum, centred), Adagrad
 * and Nadam, with Keras 3's update rules, and what Keras 3's base optimizer adds to each of
 * them: gradient clipping (clipvalue, clipnorm, global_clipnorm), decoupled weight decay
 * (with excluded parameters), an exponential moving average of the parameters (EMA) and the
 * built-in learning-rate schedules, evaluated here from the step count so that a replayed
 * trace, which calls ml_optimizer_step, applies each step's own rate.
 * State lives in one slab per optimizer, so an update over every parameter is one pass. */
#include <math.h>
#include <pthread.h>

#include "../kernels/vmath.h"
#include "../ops/ops.h" /* OP_OPTIMIZER_STEP: a trace records the step as an entry */

typedef enum { OPT_SGD, OPT_ADAM, OPT_RMSPROP, OPT_ADAGRAD, OPT_NADAM } opt_kind;

struct ml_optimizer {
    opt_kind kind;
    float learning_rate;
    float momentum; /* SGD */
    int nesterov;
    float beta_1, beta_2, epsilon; /* Adam, Nadam; epsilon also RMSprop's and Adagrad's */
    int amsgrad;
    float initial_accumulator_value; /* Adagrad */
    float u_product; /* Nadam: prod over steps k of beta_1 (1 - 0.5 * 0.96^k), Keras' float */
    double rho; /* RMSprop (double: 1 - rho is formed from the caller's value, as Keras) */
    int centered;
    float weight_decay; /* 0: none; else p -= p * weight_decay * lr before the update */
    int *exclude;       /* NULL, or per parameter: 1 = no weight decay */
    int n_exclude;      /* entries of exclude (the parameter count it was set for) */
    ml_clip_kind clip;       /* which clipping (Keras allows one) */
    float clip_value;   /* its threshold (> 0) */
    float *gbuf;        /* clipped gradients, `total` floats, made on the first clipped step */
    int use_ema;        /* the last slot is the parameters' moving average */
    float ema_momentum;
    int64_t ema_overwrite_frequency; /* 0: never copy the average into the parameters */
    ml_schedule schedule; /* ML_SCHEDULE_NONE: learning_rate is the rate */
    double *sched_args;   /* the schedule's numbers (ml_optimizer_set_learning_rate_schedule) */
    int sched_n;
    int64_t iterations;
    int n_params;        /* 0 until the first step fixes the parameter list */
    int base_slots;      /* the update's own state floats per parameter element */
    int n_slots;         /* base_slots, + 1 with EMA */
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
    (*out)->n_slots = (*out)->base_slots = momentum > 0 ? 1 : 0;
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
    (*out)->n_slots = (*out)->base_slots = amsgrad ? 3 : 2;
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
    (*out)->n_slots = (*out)->base_slots = 1 + (momentum > 0) + (*out)->centered;
    return ML_OK;
}

ml_status ml_adagrad_new(ml_optimizer **out, float learning_rate, float initial_accumulator_value,
                         float epsilon) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    if (!(initial_accumulator_value >= 0) || !isfinite(initial_accumulator_value))
        return ml_set_error(ML_ERR_VALUE,
                            "Adagrad: initial_accumulator_value must be a finite number >= 0, "
                            "got %g",
                            (double)initial_accumulator_value);
    if (!(epsilon >= 0) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE, "Adagrad: epsilon must be >= 0, got %g", (double)epsilon);
    if ((st = opt_alloc(out))) return st;
    (*out)->kind = OPT_ADAGRAD;
    (*out)->learning_rate = learning_rate;
    (*out)->initial_accumulator_value = initial_accumulator_value;
    (*out)->epsilon = epsilon;
    (*out)->n_slots = (*out)->base_slots = 1; /* the accumulator */
    return ML_OK;
}

ml_status ml_nadam_new(ml_optimizer **out, float learning_rate, float beta_1, float beta_2,
                       float epsilon) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    if (!(beta_1 >= 0 && beta_1 < 1) || !(beta_2 >= 0 && beta_2 < 1))
        return ml_set_error(ML_ERR_VALUE,
                            "Nadam: beta_1 and beta_2 must be in [0, 1), got %g and %g",
                            (double)beta_1, (double)beta_2);
    if (!(epsilon >= 0) || !isfinite(epsilon))
        return ml_set_error(ML_ERR_VALUE, "Nadam: epsilon must be >= 0, got %g", (double)epsilon);
    if ((st = opt_alloc(out))) return st;
    (*out)->kind = OPT_NADAM;
    (*out)->learning_rate = learning_rate;
    (*out)->beta_1 = beta_1;
    (*out)->beta_2 = beta_2;
    (*out)->epsilon = epsilon;
    (*out)->u_product = 1.0f;
    (*out)->n_slots = (*out)->base_slots = 2; /* momentum, velocity: Keras' order */
    return ML_OK;
}

/* Nadam's momentum schedule, Keras 3 (nadam.py): u_t = beta_1 (1 - 0.5 * 0.96^t), in float */
static float nadam_u(float beta_1, int64_t t) {
    return beta_1 * (1.0f - 0.5f * powf(0.96f, (float)t));
}

/* u_product after `iterations` steps, multiplied in the steps' order (a restore then
 * continues with the bits of an uninterrupted run) */
static float nadam_u_product(float beta_1, int64_t iterations) {
    float u = 1.0f;
    for (int64_t k = 1; k <= iterations; k++) u = u * nadam_u(beta_1, k);
    return u;
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

ml_status ml_optimizer_set_exclude_from_weight_decay(ml_optimizer *opt, int n, const int *exclude) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    if (n < 0 || (n > 0 && !exclude))
        return ml_set_error(ML_ERR_VALUE, "exclude_from_weight_decay: %d flags but no array", n);
    if (opt->n_params && n && n != opt->n_params)
        return ml_set_error(ML_ERR_VALUE,
                            "exclude_from_weight_decay: %d flags, but this optimizer was built "
                            "for %d parameters",
                            n, opt->n_params);
    int *copy = NULL;
    if (n) {
        copy = malloc((size_t)n * sizeof *copy);
        if (!copy) return ml_set_error(ML_ERR_OOM, "out of memory");
        for (int i = 0; i < n; i++) copy[i] = exclude[i] ? 1 : 0;
    }
    pthread_mutex_lock(&opt->lock);
    free(opt->exclude);
    opt->exclude = copy;
    opt->n_exclude = n;
    pthread_mutex_unlock(&opt->lock);
    return ML_OK;
}

int ml_optimizer_exclude_from_weight_decay(const ml_optimizer *opt, int param) {
    return opt->exclude && param >= 0 && param < opt->n_exclude ? opt->exclude[param] : 0;
}

static const char *const CLIP_NAMES[] = {"", "clipvalue", "clipnorm", "global_clipnorm"};

ml_status ml_optimizer_set_clip(ml_optimizer *opt, ml_clip_kind clip, float value) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    if (clip < ML_CLIP_NONE || clip > ML_CLIP_GLOBAL_NORM)
        return ml_set_error(ML_ERR_VALUE, "unknown clipping %d", (int)clip);
    if (clip != ML_CLIP_NONE && (!(value >= 0) || !isfinite(value)))
        return ml_set_error(ML_ERR_VALUE, "`%s` must be a finite number >= 0, got %g",
                            CLIP_NAMES[clip], (double)value);
    pthread_mutex_lock(&opt->lock);
    /* Keras clips only with a threshold > 0 (base_optimizer._clip_gradients) */
    opt->clip = value > 0 ? clip : ML_CLIP_NONE;
    opt->clip_value = value > 0 ? value : 0.0f;
    pthread_mutex_unlock(&opt->lock);
    return ML_OK;
}

float ml_optimizer_clip(const ml_optimizer *opt, ml_clip_kind clip) {
    return opt->clip == clip && clip != ML_CLIP_NONE ? opt->clip_value : 0.0f;
}

ml_status ml_optimizer_set_use_ema(ml_optimizer *opt, int use_ema, float ema_momentum,
                                   int64_t ema_overwrite_frequency) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    if (!(ema_momentum >= 0 && ema_momentum <= 1))
        return ml_set_error(ML_ERR_VALUE, "`ema_momentum` must be in the range [0, 1], got %g",
                            (double)ema_momentum);
    if (ema_overwrite_frequency < 0)
        return ml_set_error(ML_ERR_VALUE,
                            "`ema_overwrite_frequency` must be an integer >= 1 or 0 (none), "
                            "got %lld",
                            (long long)ema_overwrite_frequency);
    pthread_mutex_lock(&opt->lock);
    ml_status st = ML_OK;
    if (opt->n_params && (use_ema ? 1 : 0) != opt->use_ema)
        st = ml_set_error(ML_ERR_VALUE, "use_ema can only be changed before the first step");
    else {
        opt->use_ema = use_ema ? 1 : 0;
        opt->ema_momentum = ema_momentum;
        opt->ema_overwrite_frequency = ema_overwrite_frequency;
        opt->n_slots = opt->base_slots + opt->use_ema;
    }
    pthread_mutex_unlock(&opt->lock);
    return st;
}

int ml_optimizer_use_ema(const ml_optimizer *opt) { return opt->use_ema; }

/* The schedules' numbers: count (or minimum count) per kind */
static ml_status check_schedule(ml_schedule kind, const double *a, int n) {
    static const int want[] = {0, 4, 4, 5, 1, 5};
    if (kind < ML_SCHEDULE_NONE || kind > ML_SCHEDULE_POLYNOMIAL_DECAY)
        return ml_set_error(ML_ERR_VALUE, "unknown learning-rate schedule %d", (int)kind);
    if (kind == ML_SCHEDULE_NONE) return ML_OK;
    if (n < want[kind] || !a ||
        (kind == ML_SCHEDULE_PIECEWISE_CONSTANT_DECAY ? n % 2 == 0 : n != want[kind]))
        return ml_set_error(ML_ERR_VALUE, "learning-rate schedule %d: %d numbers", (int)kind, n);
    for (int i = 0; i < n; i++)
        if (!isfinite(a[i]) && !(kind == ML_SCHEDULE_COSINE_DECAY && i == 3 && isnan(a[i])))
            return ml_set_error(ML_ERR_VALUE, "learning-rate schedule: number %d is %g", i, a[i]);
    if (kind == ML_SCHEDULE_PIECEWISE_CONSTANT_DECAY) {
        const int k = n / 2; /* k boundaries, k + 1 values */
        for (int i = 1; i < k; i++)
            if (!(a[i] > a[i - 1]))
                return ml_set_error(ML_ERR_VALUE,
                                    "PiecewiseConstantDecay: boundaries must increase, got %g "
                                    "then %g",
                                    a[i - 1], a[i]);
        for (int i = k; i < n; i++)
            if (a[i] < 0)
                return ml_set_error(ML_ERR_VALUE,
                                    "PiecewiseConstantDecay: values must be >= 0, got %g", a[i]);
        return ML_OK;
    }
    if (a[0] < 0)
        return ml_set_error(ML_ERR_VALUE, "initial_learning_rate must be >= 0, got %g", a[0]);
    if (!(a[1] > 0))
        return ml_set_error(ML_ERR_VALUE, "Argument `decay_steps` must be > 0. Received: %g", a[1]);
    /* a negative end rate would step uphill; a negative power makes the rate infinite at
     * decay_steps (Keras 3 takes both: its step then writes NaNs) */
    if (kind == ML_SCHEDULE_POLYNOMIAL_DECAY && (a[2] < 0 || a[3] < 0))
        return ml_set_error(ML_ERR_VALUE,
                            "PolynomialDecay: end_learning_rate and power must be >= 0, got %g "
                            "and %g",
                            a[2], a[3]);
    if (kind == ML_SCHEDULE_COSINE_DECAY && !isnan(a[3]) && (a[3] < 0 || a[4] < 0))
        return ml_set_error(ML_ERR_VALUE,
                            "CosineDecay: warmup_target and warmup_steps must be >= 0, got %g "
                            "and %g",
                            a[3], a[4]);
    return ML_OK;
}

ml_status ml_optimizer_set_learning_rate_schedule(ml_optimizer *opt, ml_schedule kind,
                                                  const double *args, int n_args) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    ml_status st = check_schedule(kind, args, n_args);
    if (st) return st;
    double *copy = NULL;
    if (kind != ML_SCHEDULE_NONE) {
        copy = malloc((size_t)n_args * sizeof *copy);
        if (!copy) return ml_set_error(ML_ERR_OOM, "out of memory");
        memcpy(copy, args, (size_t)n_args * sizeof *copy);
    }
    pthread_mutex_lock(&opt->lock);
    free(opt->sched_args);
    opt->sched_args = copy;
    opt->sched_n = kind == ML_SCHEDULE_NONE ? 0 : n_args;
    opt->schedule = kind;
    pthread_mutex_unlock(&opt->lock);
    return ML_OK;
}

ml_schedule ml_optimizer_learning_rate_schedule(const ml_optimizer *opt) { return opt->schedule; }

/* The rate of the step after `step` steps, as Keras 3's schedules compute it in float32
 * (learning_rate_schedule.py): the step and the numbers are cast to float first. */
static float scheduled_rate(const ml_optimizer *opt, int64_t step) {
    const double *a = opt->sched_args;
    const float s = (float)step;
    switch (opt->schedule) {
    case ML_SCHEDULE_EXPONENTIAL_DECAY:
    case ML_SCHEDULE_INVERSE_TIME_DECAY: {
        float p = s / (float)a[1];
        if (a[3] != 0) p = floorf(p); /* staircase */
        if (opt->schedule == ML_SCHEDULE_EXPONENTIAL_DECAY)
            return (float)a[0] * powf((float)a[2], p);
        return (float)a[0] / (1.0f + (float)a[2] * p);
    }
    case ML_SCHEDULE_COSINE_DECAY: {
        const float init = (float)a[0], decay_steps = (float)a[1];
        const float one_minus_alpha = (float)(1.0 - a[2]), alpha = (float)a[2];
        float from = init, x = s;
        if (!isnan(a[3])) { /* warmup to warmup_target over warmup_steps, then decay */
            const float target = (float)a[3], warmup = (float)a[4];
            x = fminf(x, decay_steps + warmup);
            if (x < warmup) return (target - init) * (x / warmup) + init;
            x = x - warmup;
            from = target;
        } else {
            x = fminf(x, decay_steps);
        }
        const float cosine = 0.5f * (1.0f + cosf(3.14159265358979323846f * (x / decay_steps)));
        return from * (one_minus_alpha * cosine + alpha);
    }
    case ML_SCHEDULE_POLYNOMIAL_DECAY: {
        /* (init - end) (1 - step / decay_steps)^power + end, the step held at decay_steps;
         * with cycle, decay_steps times the first multiple above the step (1 at step 0) */
        const float init = (float)a[0], end = (float)a[2], power = (float)a[3];
        float decay_steps = (float)a[1], x = s;
        if (a[4] != 0)
            decay_steps *= x == 0.0f ? 1.0f : ceilf(x / decay_steps);
        else
            x = fminf(x, decay_steps);
        return (init - end) * powf(1.0f - x / decay_steps, power) + end;
    }
    case ML_SCHEDULE_PIECEWISE_CONSTANT_DECAY: {
        const int k = opt->sched_n / 2;
        const double *b = a, *v = a + k;
        /* values[0] while step <= boundaries[0], values[i] while step <= boundaries[i] */
        for (int i = 0; i < k; i++)
            if ((double)step <= b[i]) return (float)v[i];
        return (float)v[k];
    }
    default: return opt->learning_rate;
    }
}

void ml_optimizer_free(ml_optimizer *opt) {
    if (!opt) return;
    free(opt->exclude);
    free(opt->gbuf);
    free(opt->sched_args);
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

/* The state a fresh optimizer starts from: zeros, but Adagrad's accumulator starts at
 * initial_accumulator_value (Keras' Constant initializer). */
static void init_slots(ml_optimizer *opt) {
    memset(opt->slab, 0, (size_t)(opt->total * opt->n_slots) * sizeof(float));
    if (opt->kind == OPT_ADAGRAD)
        for (int64_t j = 0; j < opt->total; j++) opt->slab[j] = opt->initial_accumulator_value;
    opt->u_product = 1.0f;
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
    init_slots(opt);
    return ML_OK;
}

/* Adam over [i*chunk, (i+1)*chunk) of the parameters laid end to end (the slab's order). */
typedef struct adam_job {
    ml_optimizer *opt;
    ml_tensor *const *params, *const *grads;
    const float *gbuf; /* clipped gradients in the slab's order, or NULL: the grads' own */
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
        const float *g = j->gbuf ? j->gbuf + at : j->grads[i]->data + off;
        ml__vadam(b - a, j->params[i]->data + off, g, m, v, vhat, j->lrt, j->b1, j->b2, j->eps);
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

/* Keras 3's _clip_gradients into opt->gbuf (the slab's order): clipvalue clips each
 * element to [-c, c]; clipnorm scales each gradient to g c / max(||g||, c); global_clipnorm
 * scales all by c min(1/N, 1/c) with N the norm of all of them (NaN if N is not finite, as
 * Keras' clip_by_global_norm). Norms are summed in double, in parameter order. */
static const float *clip_gradients(ml_optimizer *opt, int n, ml_tensor *const *grads) {
    const float c = opt->clip_value;
    float scale = 1.0f;
    if (opt->clip == ML_CLIP_GLOBAL_NORM) {
        double sq = 0;
        for (int i = 0; i < n; i++) {
            const float *g = grads[i]->data;
            for (int64_t j = 0; j < opt->numel[i]; j++) sq += (double)g[j] * g[j];
        }
        const float norm = (float)sqrt(sq);
        scale = c * fminf(1.0f / norm, 1.0f / c) + (norm - norm);
    }
    for (int i = 0; i < n; i++) {
        const float *g = grads[i]->data;
        float *o = opt->gbuf + opt->offset[i];
        const int64_t len = opt->numel[i];
        if (opt->clip == ML_CLIP_VALUE) {
            for (int64_t j = 0; j < len; j++) o[j] = g[j] < -c ? -c : (g[j] > c ? c : g[j]);
        } else if (opt->clip == ML_CLIP_NORM) {
            double sq = 0;
            for (int64_t j = 0; j < len; j++) sq += (double)g[j] * g[j];
            const float d = fmaxf((float)sqrt(sq), c);
            for (int64_t j = 0; j < len; j++) o[j] = (g[j] * c) / d;
        } else {
            for (int64_t j = 0; j < len; j++) o[j] = g[j] * scale;
        }
    }
    return opt->gbuf;
}

/* Keras 3's _update_model_variables_moving_average after the update: the average takes
 * momentum 0 on the first step (it starts as the parameters), then ema_momentum; every
 * ema_overwrite_frequency steps the parameters are set to it. */
static void update_ema(ml_optimizer *opt, int n, ml_tensor *const *params) {
    const float mom = opt->iterations ? opt->ema_momentum : 0.0f, omm = 1.0f - mom;
    const int overwrite = opt->ema_overwrite_frequency &&
                          (opt->iterations + 1) % opt->ema_overwrite_frequency == 0;
    float *ema = opt->slab + (int64_t)opt->base_slots * opt->total;
    for (int i = 0; i < n; i++) {
        float *p = params[i]->data, *a = ema + opt->offset[i];
        for (int64_t j = 0, len = opt->numel[i]; j < len; j++) {
            a[j] = mom * a[j] + omm * p[j];
            if (overwrite) p[j] = a[j];
        }
        if (overwrite) params[i]->storage->version++;
    }
}

ml_status ml_optimizer_finalize_variable_values(ml_optimizer *opt, int n,
                                                ml_tensor *const *params) {
    if (!opt) return ml_set_error(ML_ERR_VALUE, "optimizer is NULL");
    pthread_mutex_lock(&opt->lock);
    ml_status st = ML_OK;
    if (opt->use_ema && opt->n_params) {
        st = check_step(opt, n, params, params);
        float *ema = opt->slab + (int64_t)opt->base_slots * opt->total;
        for (int i = 0; !st && i < n; i++) {
            memcpy(params[i]->data, ema + opt->offset[i], (size_t)opt->numel[i] * sizeof(float));
            params[i]->storage->version++;
        }
    }
    pthread_mutex_unlock(&opt->lock);
    return st;
}

static ml_status step_locked(ml_optimizer *opt, int n, ml_tensor *const *params,
                             ml_tensor *const *grads) {
    ml_status st = check_step(opt, n, params, grads);
    if (st) return st;
    if (!opt->n_params && (st = build_state(opt, n, params))) return st;
    if (opt->n_exclude && opt->n_exclude != n)
        return ml_set_error(ML_ERR_VALUE,
                            "optimizer step: exclude_from_weight_decay was set for %d "
                            "parameters, got %d",
                            opt->n_exclude, n);
    if (opt->clip && !opt->gbuf) {
        opt->gbuf = malloc((size_t)(opt->total + 1) * sizeof(float));
        if (!opt->gbuf) return ml_set_error(ML_ERR_OOM, "out of memory for clipped gradients");
    }
    /* nothing fails from here on */
    int64_t t = opt->iterations + 1;
    float lr = opt->schedule ? scheduled_rate(opt, opt->iterations) : opt->learning_rate;
    const float *gbuf = opt->clip ? clip_gradients(opt, n, grads) : NULL;
#define GRAD(i) (gbuf ? gbuf + opt->offset[i] : (const float *)grads[i]->data)
    if (opt->weight_decay > 0) {
        /* Keras 3's base optimizer: every variable decays before the update,
         * variable - variable * weight_decay * lr (Loshchilov & Hutter 2019) */
        const float wd = opt->weight_decay;
        for (int i = 0; i < n; i++) {
            if (opt->n_exclude && opt->exclude[i]) continue;
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
            const float *g = GRAD(i);
            const int64_t len = opt->numel[i], at = opt->offset[i];
            float *vel = opt->slab + at;
            float *m = mom > 0 ? opt->slab + opt->total + at : NULL;
            float *avg = opt->centered
                             ? opt->slab + (int64_t)(opt->base_slots - 1) * opt->total + at
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
            const float *g = GRAD(i);
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
    } else if (opt->kind == OPT_ADAGRAD) {
        /* Keras 3 (adagrad.py): accumulator += g^2; p -= lr g / sqrt(accumulator + eps) */
        const float eps = opt->epsilon;
        for (int i = 0; i < n; i++) {
            float *p = params[i]->data, *acc = opt->slab + opt->offset[i];
            const float *g = GRAD(i);
            for (int64_t j = 0, len = opt->numel[i]; j < len; j++) {
                const float gj = g[j];
                acc[j] = acc[j] + gj * gj;
                p[j] = p[j] - (lr * gj) / sqrtf(acc[j] + eps);
            }
            params[i]->storage->version++;
        }
    } else if (opt->kind == OPT_NADAM) {
        /* Keras 3 (nadam.py, Dozat 2016): u_t = beta_1 (1 - 0.5 * 0.96^t), the product of
         * the u's so far, m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
         * m_hat = u_{t+1} m / (1 - prod u_{t+1}) + (1 - u_t) g / (1 - prod u_t),
         * v_hat = v / (1 - beta_2^t), p -= lr m_hat / (sqrt(v_hat) + eps) */
        const float b1 = opt->beta_1, b2 = opt->beta_2, eps = opt->epsilon;
        const float u_t = nadam_u(b1, t), u_t1 = nadam_u(b1, t + 1);
        const float u_prod = opt->u_product * u_t, u_prod1 = u_prod * u_t1;
        const float c_m = u_t1 / (1.0f - u_prod1), c_g = (1.0f - u_t) / (1.0f - u_prod);
        const float v_den = 1.0f - powf(b2, (float)t);
        const float omb1 = 1.0f - b1, omb2 = 1.0f - b2;
        for (int i = 0; i < n; i++) {
            float *p = params[i]->data;
            float *m = opt->slab + opt->offset[i], *v = opt->slab + opt->total + opt->offset[i];
            const float *g = GRAD(i);
            for (int64_t j = 0, len = opt->numel[i]; j < len; j++) {
                const float gj = g[j];
                m[j] = m[j] * b1 + gj * omb1;
                v[j] = v[j] * b2 + (gj * gj) * omb2;
                const float m_hat = m[j] * c_m + gj * c_g;
                const float v_hat = v[j] / v_den;
                p[j] = p[j] - (m_hat * lr) / (sqrtf(v_hat) + eps);
            }
            params[i]->storage->version++;
        }
        opt->u_product = u_prod;
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
        adam_job job = {opt,  params, grads,
                        gbuf, lrt,    b1,
                        b2,   eps,    (opt->total + parts - 1) / parts};
        ml__parallel_for(parts, 0, adam_part, &job);
        for (int i = 0; i < n; i++) params[i]->storage->version++;
    }
#undef GRAD
    if (opt->use_ema) update_ema(opt, n, params);
    opt->iterations = t;
    return ML_OK;
}

ml_status ml_optimizer_set_learning_rate(ml_optimizer *opt, float learning_rate) {
    ml_status st = check_lr(learning_rate);
    if (st) return st;
    opt->learning_rate = learning_rate;
    return ML_OK;
}

/* the rate the next step uses: the schedule's at the current step count, if one is set */
float ml_optimizer_learning_rate(const ml_optimizer *opt) {
    return opt->schedule ? scheduled_rate(opt, opt->iterations) : opt->learning_rate;
}
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
        if (opt->kind == OPT_NADAM) opt->u_product = nadam_u_product(opt->beta_1, iterations);
    }
    pthread_mutex_unlock(&opt->lock);
    return st;
}

ml_status ml_optimizer_reset(ml_optimizer *opt) {
    pthread_mutex_lock(&opt->lock);
    opt->iterations = 0;
    opt->u_product = 1.0f;
    if (opt->slab) init_slots(opt);
    pthread_mutex_unlock(&opt->lock);
    return ML_OK;
}
