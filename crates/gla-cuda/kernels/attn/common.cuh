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

// The query tile of a block that walks key tiles (the forwards, attn/fwd.cu and attn/fwd_wg.cu,
// and the warpgroup backward's dq, attn/bwd_wg.cu): entry `tile` of the host's table covers query
// rows i0 .. i0 + L - 1 (L <= BM) of the sequence at rows bs .. bs + len - 1; the keys those rows
// can see lie in the BN-key tiles t0 .. t1 - 1 (causal: up to the tile's last row; a window: from
// the first row's first key). Query head j reads kv head g = j / (H / HKV): kb, vb are its K, V
// at the sequence's first row; ldq, ldk, ldv, ldo the row strides of q, k, v and o (or do).
struct AttFwdTile {
    idx_t bs, ldq, ldk, ldv, ldo;
    int len, i0, L, t0, t1;
    const bf16_t* kb;
    const bf16_t* vb;
};
template <int BM, int BN>
__device__ __forceinline__ AttFwdTile att_fwd_tile(const idx_t* __restrict__ bounds, const int* __restrict__ tile_seq,
                                                   const int* __restrict__ tile_q0, int tile, int causal, int window, const bf16_t* k,
                                                   const bf16_t* v, int j, int H, int HKV, int D, int DV) {
    AttFwdTile r;
    const int n = tile_seq[tile];
    r.i0 = tile_q0[tile];
    r.bs = bounds[n];
    r.len = (int)(bounds[n + 1] - r.bs);
    r.L = min(BM, r.len - r.i0);
    const int kend = causal ? min(r.len, r.i0 + BM) : r.len;
    const int kbeg = window > 0 ? max(0, r.i0 - window + 1) : 0;
    r.t0 = kbeg / BN;
    r.t1 = (kend + BN - 1) / BN;
    const int g = j / (H / HKV);
    r.ldq = (idx_t)H * D;
    r.ldk = (idx_t)HKV * D;
    r.ldv = (idx_t)HKV * DV;
    r.ldo = (idx_t)H * DV;
    r.kb = k + r.bs * r.ldk + (idx_t)g * D;
    r.vb = v + r.bs * r.ldv + (idx_t)g * DV;
    return r;
}

// The forward's masking and online softmax on a warp's score fragments (MT m-tiles of 16 rows x
// BN keys, the mma.sync m16n8 layout, which is also a warpgroup product's accumulator layout per
// warp): attn/fwd.cu, attn/fwd_wg.cu (and att_fwd_mask in attn/bwd_wg.cu's dq kernel).
// Scores of masked (query, key) pairs to fill (-inf; the warpgroup dq kernel's probabilities: 0)
// as att_key_ok masks them, for the m-tiles (first query
// position qlo + 16 mt) that cross the tile's edges (at kt): the sequence end, the diagonal
// (causal), the window's lower edge. Per row, the allowed keys are a range of the tile's
// columns, so each score costs two compares against row constants.
template <int MT, int BN>
__device__ __forceinline__ void att_fwd_mask(float (&s)[MT][BN / 8][4], int qlo, int kt, int len, int causal, int window, int fg,
                                             int ft, float fill = ATT_NEG_INF) {
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int ql = qlo + 16 * mt;
        const bool edge = kt + BN > len || (causal && kt + BN - 1 > ql) || (window > 0 && kt <= ql + 15 - window);
        if (edge) {  // warp-uniform
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                // column c = 8 nt + e of this lane (key kt + 2 ft + c) is kept for lo <= c <= hi
                const int i = ql + fg + 8 * r, c0 = kt + 2 * ft;
                const int hi = (causal ? min(i, len - 1) : len - 1) - c0;
                const int lo = window > 0 ? i - window + 1 - c0 : 0;
                #pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt)
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int c = 8 * nt + e;
                        s[mt][nt][2 * r + e] = c <= hi && c >= lo ? s[mt][nt][2 * r + e] : fill;
                    }
            }
        }
    }
}

// The online softmax step of a tile's scores s (raw Q K^T; the scale sa > 0 folds into the
// exponent's FFMA: ex2(s * sa - m)): the row maxima m and sums l move on, s becomes the
// probabilities, O rescales. All the warp's rows at once: their reductions are independent chains
// that interleave (no branch between them), and one vote per tile decides whether O needs
// rescaling (only where a row's max grew, else alpha = ex2(0) = 1: past the first key tiles the
// warp mostly skips it).
template <int MT, int BN, int DVP>
__device__ __forceinline__ void att_fwd_softmax(float (&s)[MT][BN / 8][4], float (&m)[MT][2], float (&l)[MT][2],
                                                float (&acc)[MT][DVP / 8][4], float sa) {
    float mx[MT][2], alpha[MT][2];
    bool grew = false;
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            float x = fmaxf(s[mt][0][2 * r], s[mt][0][2 * r + 1]);
            #pragma unroll
            for (int nt = 1; nt < BN / 8; ++nt) x = fmaxf(x, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
            mx[mt][r] = x;
        }
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) mx[mt][r] = fmaxf(mx[mt][r], __shfl_xor_sync(0xffffffffu, mx[mt][r], 1));
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float mn = fmaxf(m[mt][r], fmaxf(mx[mt][r], __shfl_xor_sync(0xffffffffu, mx[mt][r], 2)) * sa);
            const float base = att_base(mn);
            alpha[mt][r] = ex2f(m[mt][r] - base);
            grew |= mn != m[mt][r];
            m[mt][r] = mn;
            float sum = 0.f;
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                s[mt][nt][2 * r] = ex2f(fmaf(s[mt][nt][2 * r], sa, -base));
                s[mt][nt][2 * r + 1] = ex2f(fmaf(s[mt][nt][2 * r + 1], sa, -base));
                sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
            }
            l[mt][r] = l[mt][r] * alpha[mt][r] + sum;
        }
    if (__any_sync(0xffffffffu, grew)) {
        #pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            #pragma unroll
            for (int nt = 0; nt < DVP / 8; ++nt) {
                acc[mt][nt][0] *= alpha[mt][0];
                acc[mt][nt][1] *= alpha[mt][0];
                acc[mt][nt][2] *= alpha[mt][1];
                acc[mt][nt][3] *= alpha[mt][1];
            }
    }
}

// The forward's epilogue for a warp's MT m-tiles (first row qr of the block's tile): o = O / l
// into the row-major staging tile sO (row stride LV) and lse = ln 2 (m + log2 l) for the rows
// < L (lse_t: the tile's first row of lse, row stride H); a row with no allowed key (l = 0) gets
// o = 0 and lse = -inf. The block stores sO after a barrier (att_store).
template <int MT, int DVP>
__device__ __forceinline__ void att_fwd_out(const float (&acc)[MT][DVP / 8][4], const float (&m)[MT][2], const float (&l)[MT][2],
                                            bf16_t* sO, int LV, int qr, int L, float* lse_t, int H, int fg, int ft) {
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float lt = att_row_sum(l[mt][r]);
            const float inv = lt > 0.f ? 1.f / lt : 0.f;
            const int row = qr + 16 * mt + fg + 8 * r;
            #pragma unroll
            for (int nt = 0; nt < DVP / 8; ++nt)
                *(unsigned*)(sO + row * LV + 8 * nt + 2 * ft) = pack2(acc[mt][nt][2 * r] * inv, acc[mt][nt][2 * r + 1] * inv);
            if (ft == 0 && row < L) lse_t[(idx_t)row * H] = lt > 0.f ? ATT_LN2 * (m[mt][r] + log2f(lt)) : ATT_NEG_INF;
        }
    }
}

// The backward's query tiles (attn/bwd.cu, attn/bwd_wg.cu): the query tiles (BQ rows) that can
// see a key of the BN-key tile at k0, [q0, q1).
template <int BN, int BQ>
__device__ __forceinline__ void att_kv_qtiles(int k0, int len, int causal, int window, int& q0, int& q1) {
    const int qbeg = causal ? k0 : 0;
    const int qend = window > 0 ? min(len, k0 + BN - 1 + window) : len;
    q0 = qbeg / BQ;
    q1 = (qend + BQ - 1) / BQ;
}

// The backward's lse and delta of query row `r` of a tile (its rows at lse / delta + r H; rows
// r >= L past the sequence's end get lse = +inf and delta = 0, so their P and dS are 0): read
// into registers while the tile's operands load (att_bwd_stats), stored beside them after the
// barrier that frees the buffer (att_bwd_stats_put: lse in log2 units).
__device__ __forceinline__ void att_bwd_stats(const float* __restrict__ lse, const float* __restrict__ delta, idx_t r0, int H, int r,
                                              int L, float& nl, float& nd) {
    const bool ok = r < L;
    const idx_t x = r0 + (idx_t)r * H;
    nl = ok ? lse[x] : ATT_POS_INF;
    nd = ok ? delta[x] : 0.f;
}
__device__ __forceinline__ void att_bwd_stats_put(float* sL, float* sD, int r, float nl, float nd) {
    sL[r] = nl * ATT_L2E;
    sD[r] = nd;
}
