/*
 * cpu.h — the one run-time choice of instruction set, for every kernel of the core.
 *
 * The library is built for baseline x86-64 (no -march), so a wheel runs on any x86-64;
 * the kernels that gain from AVX2 are compiled a second time for it and one of the two is
 * picked at run time. Every such pick reads ml__cpu_avx2(): true when the CPU has AVX2 and
 * FMA and the environment variable ML_KERNEL is not "portable". It is decided at the first
 * call and never again, so ML_KERNEL=portable forces the portable C code at every site
 * alike: the GEMM's kernels, the vector math, and the loops compiled twice with
 * ML_CPU_CLONES below. Each site is listed, with the variant it runs, by
 * ml_kernel_variants (tests check that ML_KERNEL=portable reaches all of them).
 *
 * No GCC target_clones here: its ifunc resolver picks a clone from the CPU alone, before
 * any code of ours runs, so it cannot honour ML_KERNEL (nor run under the sanitizers).
 */
#ifndef ML_KERNELS_CPU_H
#define ML_KERNELS_CPU_H

#include <stdatomic.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ML_HAVE_AVX2 1 /* the compiler can build AVX2 variants (they run only if the CPU can) */
#else
#define ML_HAVE_AVX2 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ML_INLINE static inline __attribute__((always_inline))
/* internal to the library: called directly, not through the PLT of the shared object */
#define ML_HIDDEN __attribute__((visibility("hidden")))
#else
#define ML_INLINE static inline
#define ML_HIDDEN
#endif

#if ML_HAVE_AVX2
/* the GEMM and vector-math kernels: AVX2 with fused multiply-adds */
#define ML_TARGET_AVX2 __attribute__((target("avx2,fma")))
/* loops compiled twice (ML_CPU_CLONES): AVX2 without FMA, so that the compiler contracts
 * nothing and both variants round every operation alike */
#define ML_TARGET_AVX2_NOFMA __attribute__((target("avx2")))
#else
#define ML_TARGET_AVX2
#define ML_TARGET_AVX2_NOFMA
#endif

/* ML_CPU_UNDECIDED until the first read, then ML_CPU_AVX2 or ML_CPU_PORTABLE */
enum { ML_CPU_UNDECIDED = 0, ML_CPU_PORTABLE = 1, ML_CPU_AVX2 = 2 };
extern ML_HIDDEN atomic_int ml__cpu_isa;
ML_HIDDEN int ml__cpu_decide(void);

/* 1 where the AVX2 variants run, 0 where the portable ones do: the same answer for the
 * life of the process. Once decided, a relaxed load and one predicted compare on the AVX2
 * path (the cost of the PLT jump of an ifunc). */
static inline int ml__cpu_avx2(void) {
    const int v = atomic_load_explicit(&ml__cpu_isa, memory_order_relaxed);
    if (v == ML_CPU_AVX2) return 1;
    if (v == ML_CPU_PORTABLE) return 0;
    return ml__cpu_decide();
}

/* Adds a dispatch site (a name that lives as long as the process) to ml_kernel_variants'
 * list; has_avx2: the site has an AVX2 variant in this build. Called from constructors. */
ML_HIDDEN void ml__kernel_site(const char *name, int has_avx2);

/* The dispatch sites linked into this program and the variant each runs ("avx2" or
 * "portable"): fills up to cap entries of names and variants, returns how many sites
 * there are. */
int ml_kernel_variants(const char **names, const char **variants, int cap);

/* Registers a site when the library is loaded (before any call can reach it). */
#define ML_KERNEL_SITE(ID, NAME, HAS_AVX2)                                                    \
    __attribute__((constructor)) static void ml_kernel_site_##ID(void)                        \
    {                                                                                         \
        ml__kernel_site(NAME, HAS_AVX2);                                                      \
    }

/* NAME PARAMS, a static void function that runs NAME##_avx2 or NAME##_portable: two
 * compilations of the always-inline function NAME##_body (define it first), one for AVX2
 * without FMA, one for the baseline, so the loops vectorise at the width of the machine
 * and round the same on both. The choice is ml__cpu_avx2's; the site is listed under
 * NAME by ml_kernel_variants. ARGS: PARAMS' names in parentheses. */
#if ML_HAVE_AVX2
#define ML_CPU_CLONES(NAME, PARAMS, ARGS)                                                     \
    ML_TARGET_AVX2_NOFMA static void NAME##_avx2 PARAMS { NAME##_body ARGS; }                 \
    static void NAME##_portable PARAMS { NAME##_body ARGS; }                                  \
    static inline void NAME PARAMS                                                            \
    {                                                                                         \
        if (ml__cpu_avx2())                                                                   \
            NAME##_avx2 ARGS;                                                                 \
        else                                                                                  \
            NAME##_portable ARGS;                                                             \
    }                                                                                         \
    ML_KERNEL_SITE(NAME, #NAME, 1)
#else
#define ML_CPU_CLONES(NAME, PARAMS, ARGS)                                                     \
    static void NAME PARAMS { NAME##_body ARGS; }                                             \
    ML_KERNEL_SITE(NAME, #NAME, 0)
#endif

#endif /* ML_KERNELS_CPU_H */
