// attn/common.cuh: what the softmax attention kernels share: the dynamic shared memory macros, the
// mask of one (query, key) pair, the row-tile loader, the exponent base of an online softmax.
//
// Positions are relative to the sequence start (int: one sequence holds < 2^31 tokens); rows of
// the packed [B*T] layout are 64-bit (idx_t). Scores are kept in log2 units: s2 = (q . k) *
// scale * log2(e), so every exponential is ex2 and lse = ln 2 * (m2 + log2 l).

#ifndef DELTA_SMEM
#define DELTA_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define DELTA_SMEM_END(base, end)
#endif

#define ATT_NEG_INF __uint_as_float(0xff800000u)
#define ATT_POS_INF __uint_as_float(0x7f800000u)
#define ATT_LN2 0.6931471805599453f
#define ATT_L2E 1.4426950408889634f

// Key position s allowed for query position i (gla_core::AttnProblem::keys): s inside the
// sequence, s <= i when causal, i - window < s when window > 0. Bitwise, so a masked tile's
// elements become selects rather than branches.
__device__ __forceinline__ bool att_key_ok(int i, int s, int len, int causal, int window) {
    return (s < len) & (!causal | (s <= i)) & ((window <= 0) | (s > i - window));
}

// A 16-byte cp.async to the shared-memory byte address s (32-bit: the tile loop's destinations
// are a base plus immediates, no 64-bit generic address per copy).
__device__ __forceinline__ void att_cp16(unsigned s, const void* g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g) : "memory");
}

// R rows x CP columns (CP % 8 == 0) of bf16 into dst (row stride ld) by cp.async: row t from
// src + t * ldg, rows < L and columns < C read (C % 8 == 0, 16-byte aligned rows), the rest zero.
// The caller commits and waits. A full tile (L >= R, C == CP) takes a path without per-copy
// bounds or index arithmetic: each thread copies the same 16-byte column of every (NT / (CP / 8))-th
// row, one address increment per copy (the loop runs once per key tile, so its cost is counted in
// issue slots against the tile's products).
template <int R, int CP, int NT>
__device__ __forceinline__ void att_tile(bf16_t* dst, int ld, const bf16_t* src, idx_t ldg, int L, int C, int tid) {
    constexpr int CPR = CP / 8;
    if constexpr (NT % CPR == 0 && (R * CPR) % NT == 0) {
        if (L >= R && C == CP) {
            constexpr int RS = NT / CPR;  // rows per step
            const int t = tid / CPR, c = (tid % CPR) * 8;
            const bf16_t* s = src + (idx_t)t * ldg + c;
            const unsigned d = smem_addr(dst) + 2u * (unsigned)(t * ld + c);
            const idx_t step = (idx_t)RS * ldg;
            #pragma unroll
            for (int i = 0; i < R * CPR / NT; ++i, s += step) att_cp16(d + 2u * (unsigned)(i * RS * ld), s);
            return;
        }
    }
    #pragma unroll
    for (int x = tid; x < R * CPR; x += NT) {
        const int t = x / CPR, c = (x % CPR) * 8;
        const bool ok = t < L && c < C;
        cp16(dst + t * ld + c, ok ? src + (idx_t)t * ldg + c : src, ok);
    }
}

// R rows x CP columns of bf16 from smem src (row stride ld) to global dst (row t at dst + t * ldg),
// rows < L and columns < C, 16 bytes at a time (C % 8 == 0, 16-byte aligned rows).
template <int R, int CP, int NT>
__device__ __forceinline__ void att_store(bf16_t* dst, idx_t ldg, const bf16_t* src, int ld, int L, int C, int tid) {
    constexpr int CPR = CP / 8;
    for (int x = tid; x < R * CPR; x += NT) {
        const int t = x / CPR, c = (x % CPR) * 8;
        if (t < L && c < C) *(uint4*)(dst + (idx_t)t * ldg + c) = *(const uint4*)(src + t * ld + c);
    }
}

// The base an online softmax subtracts: the running max, or 0 while every score so far is masked
// (-inf - -inf would be NaN; ex2(-inf - 0) = 0 keeps masked terms at 0).
__device__ __forceinline__ float att_base(float m) { return m == ATT_NEG_INF ? 0.f : m; }

// Row max / sum over the 4 lanes (ft = 0..3) that hold one accumulator row of an mma tile.
__device__ __forceinline__ float att_row_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float att_row_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Adds two f32 to p[0], p[1] in L2 (red: no value comes back, so nothing waits on it). The
// backward's dQ sums have one adding thread per element, so the order of the adds is its program
// order: deterministic. The vector form needs sm_90; earlier GPUs take two scalar adds (the same
// single adding thread, the same order).
__device__ __forceinline__ void att_red2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
#else
    asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p), "f"(a) : "memory");
    asm volatile("red.global.add.f32 [%0], %1;" ::"l"(p + 1), "f"(b) : "memory");
#endif
}

// Lane l's byte offset in a 16 x 16 tile at (0, 0) of a row-major bf16 matrix with row stride ld
// (the tile at (r0, c0) adds 2 (r0 ld + c0)): att_lane_a for an A operand stored [m][k] (ldmatrix)
// and a B operand stored [k][n] (ldmatrix.trans) (common/mma.cuh's fa, fbt); att_lane_b for a B
// operand stored [n][k] (ldmatrix) and an A operand stored [k][m] (ldmatrix.trans) (fbn, fat).
__device__ __forceinline__ unsigned att_lane_a(int ld, int l) { return 2u * (unsigned)(((l & 7) + 8 * ((l >> 3) & 1)) * ld + 8 * (l >> 4)); }
__device__ __forceinline__ unsigned att_lane_b(int ld, int l) { return 2u * (unsigned)(((l & 7) + 8 * (l >> 4)) * ld + 8 * ((l >> 3) & 1)); }
