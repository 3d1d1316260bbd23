/*
 * gemm_config.h — the GEMM's register tiles, cache blocks and path thresholds, in one place
 * (as BLIS keeps one configuration per architecture, config/haswell/). Each number says
 * what it bounds and the measurement that set it: a row of benchmarks/run_all.py
 * (`--rows sgemm`, `dense`, `maml-sin`) or of benchmarks/gemm_shapes.py, which times
 * ml.matmul on the shapes on both sides of each threshold named here. To move a
 * threshold, run the rows it names before and after. Products are written m x k x n, as
 * the benchmarks write them (B^T / A^T: that operand transposed).
 */
#ifndef ML_KERNELS_GEMM_CONFIG_H
#define ML_KERNELS_GEMM_CONFIG_H

/* ------------------------------------------------------------ register tiles */

/* The packed path's micro-kernel tile (gemm_ukernel.c): 6 x 16 holds 12 ymm accumulators,
 * 2 for a row of B and 1 broadcast of A, 15 of the 16 ymm registers (the BLIS
 * Haswell/Zen shape). */
#define MR 6
#define NR 16
/* The unpacked tiles (gemm_small.c): MR_S x 16 as the micro-kernel; MR_W x 24 for n % 16
 * == 8, the same 12 accumulators with 3 loads of B and 4 broadcasts a step. */
#define MR_S 6
#define MR_W 4

/* ------------------------------------------------------------ cache blocks */

/* Upper bounds; the driver balances them to the problem (k = 300 runs as 2 x 150, not
 * 256 + 44). KC * NR * 4 = 16 KiB: a B panel takes half of a 32 KiB L1d; MC * KC * 4 =
 * 144 KiB of A sits in L2 (>= 512 KiB on current x86); KC * NC * 4 = 4 MiB of B in L3.
 * Set by run_all.py's sgemm 2048x2048x2048 row against the FMA peak. */
#ifndef MC
#define MC 144
#endif
#ifndef KC
#define KC 256
#endif
#ifndef NC
#define NC 4080
#endif

/* ------------------------------------------------------------ path thresholds */
/* (used by the path table, gemm_path.c, in its order) */

/* A B^T with fewer columns than this: dot products of rows (PATH_DOTS_NT), B's few rows
 * staying in L1 while A's rows stream past; through the packed driver the 75x784x5 (B^T)
 * product of MAML Omniglot's low-rank layer ran at 15 % of the FMA peak (gemm_shapes.py:
 * 75x784x5 B^T, 10x40x10 B^T). */
#define DOTS_NT_MAX_N 16

/* The unpacked register-tiled kernel (PATH_SMALL) instead of packing: products of at most
 * SMALL_MACS multiply-adds (MAML's per-task 10x40x40, 40x40x10: packing costs as much as
 * the arithmetic), and beyond that the skinny shapes of few-shot learning with k up to
 * SMALL_MAX_K (k in SMALL_KC slices), where it beats the packed driver (run_all.py sgemm
 * rows 250x40x40, 5x784x256, 75x784x256; gemm_shapes.py 40x250x40 A^T). */
#define SMALL_MACS 65536
#define SMALL_MAX_K 512
#define SMALL_KC 64
/* past SMALL_MAX_K only for at most this many rows: run_all.py's sgemm 5x784x256 row
 * gains, while MAML Omniglot's 2400x784x256 (gemm_shapes.py) and the dense layer's
 * 32x784x128 (run_all.py dense b32, at 2 threads) lose */
#define SMALL_LONG_K_MAX_M 16
/* no more columns than this: every row tile re-reads B's slice, which must stay in L2
 * (and B^T's copy, k x n floats, at most SMALL_MAX_K x SMALL_MAX_N) */
#define SMALL_MAX_N 2048
/* A^T with more rows than this and k past SMALL_KC: packing A is faster (gemm_shapes.py
 * 784x128x256 A^T) */
#define SMALL_AT_MAX_M 64
/* 4 x 24 tiles (PATH_SMALL_W) for n % 16 == 8 from this many rows: below, one 6-row tile
 * beats a 4-row and a 1-row one (gemm_shapes.py 5x256x56) */
#define SMALL_W_MIN_M (2 * MR_W)

/* Below this many multiply-adds a packed-path product runs as plain loops (no packing):
 * the packing's fixed costs dominate (gemm_shapes.py 3x5x7 .. 16x16x16). */
#define TINY_FLOPS 4096

/* ------------------------------------------------------------ threading */

/* Products of at least this many multiply-adds are split over the thread pool, in parts
 * of at least half of it: about 20 us of one core, below which waking a worker costs more
 * than it saves (run_all.py dense b32 at 2 threads: twice this left the 784-128 layer's
 * products on one core). */
#define PAR_MIN_MACS (1 << 21)

#endif /* ML_KERNELS_GEMM_CONFIG_H */
