/* vmath.h — vectorised float32 transcendentals over arrays (internal; see vmath.c).
 * o[i] = f(x[i]) for i < n; o may equal x. AVX2+FMA when the CPU has it (and ML_KERNEL is
 * not "portable"), else libm loops; the _portable forms always use libm (for tests). */
#ifndef ML_KERNELS_VMATH_H
#define ML_KERNELS_VMATH_H

#include <stdint.h>

void ml__vexp(int64_t n, const float *x, float *o);
void ml__vlog(int64_t n, const float *x, float *o);
void ml__vtanh(int64_t n, const float *x, float *o);
void ml__vsigmoid(int64_t n, const float *x, float *o);  /* 1 / (1 + exp(-x)) */
void ml__verf(int64_t n, const float *x, float *o);
void ml__vgelu(int64_t n, const float *x, float *o);     /* x/2 (1 + erf(x / sqrt 2)) */

/* One Adam update over n elements (Kingma & Ba 2015, Alg. 1, bias correction folded into
 * lr_t, epsilon outside the square root as Keras does):
 *   m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);  vhat = max(vhat, v) if vhat;
 *   p -= lr_t m / (sqrt(v or vhat) + eps).
 * Exact IEEE sqrt and division in both forms (no reciprocal approximations). */
void ml__vadam(int64_t n, float *p, const float *g, float *m, float *v, float *vhat, float lr_t,
               float b1, float b2, float eps);
void ml__vadam_portable(int64_t n, float *p, const float *g, float *m, float *v, float *vhat,
                        float lr_t, float b1, float b2, float eps);

void ml__vexp_portable(int64_t n, const float *x, float *o);
void ml__vlog_portable(int64_t n, const float *x, float *o);
void ml__vtanh_portable(int64_t n, const float *x, float *o);
void ml__vsigmoid_portable(int64_t n, const float *x, float *o);
void ml__verf_portable(int64_t n, const float *x, float *o);
void ml__vgelu_portable(int64_t n, const float *x, float *o);

#endif /* ML_KERNELS_VMATH_H */
