/*
 * cpu.c — the instruction-set decision every kernel dispatch reads (see cpu.h), and the
 * list of the sites that read it.
 */
#include "cpu.h"

#include <stdlib.h>
#include <string.h>

#include "metalearn.h"

atomic_int ml__cpu_isa = ML_CPU_UNDECIDED;

int ml__cpu_decide(void) {
    int v = 0;
#if ML_HAVE_AVX2
    const char *env = getenv("ML_KERNEL");
    const int forced = env && strcmp(env, "portable") == 0;
    __builtin_cpu_init();
    v = !forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    /* Racing first callers compute the same answer; any of their stores will do. */
    atomic_store_explicit(&ml__cpu_isa, v ? ML_CPU_AVX2 : ML_CPU_PORTABLE, memory_order_relaxed);
    return v;
}

const char *ml_kernel_name(void) { return ml__cpu_avx2() ? "avx2" : "portable"; }

/* Filled by constructors while the library loads (one thread), read afterwards. */
#define MAX_SITES 32
static struct {
    const char *name;
    int has_avx2;
} sites[MAX_SITES];
static int n_sites;

void ml__kernel_site(const char *name, int has_avx2) {
    if (n_sites == MAX_SITES) return; /* (the tests list every site: they would see it) */
    sites[n_sites].name = name;
    sites[n_sites++].has_avx2 = has_avx2;
}

int ml_kernel_variants(const char **names, const char **variants, int cap) {
    const int avx2 = ml__cpu_avx2();
    for (int i = 0; i < n_sites && i < cap; ++i) {
        names[i] = sites[i].name;
        variants[i] = avx2 && sites[i].has_avx2 ? "avx2" : "portable";
    }
    return n_sites;
}
