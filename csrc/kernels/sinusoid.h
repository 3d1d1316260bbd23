/* sinusoid.h — y = amplitude * sin(x - phase) over a row of float32 inputs (internal; the
 * kernel of metalearn.tasks.Sinusoid's batch sampler, see sinusoid.c). */
#ifndef ML_KERNELS_SINUSOID_H
#define ML_KERNELS_SINUSOID_H

#include <stdint.h>

/* y[i] = amplitude * sin(x[i] - phase) for i < m, as float32 arithmetic with the sine
 * rounded once from double; the same bits on every x86-64 build and kernel variant. */
void ml_sinusoid(const float *x, float phase, float amplitude, float *y, int64_t m);

#endif /* ML_KERNELS_SINUSOID_H */
