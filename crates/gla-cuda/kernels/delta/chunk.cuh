// delta/chunk.cuh: what the delta rule's chunk kernels share: the block shape, the chunk and head
// of a chunk-parallel block (one prologue), the loads of a chunk's q / k / v rows, and the
// intra-chunk attention P of the output pass and the backward.
//
// A chunk-parallel block owns (global chunk cg = blockIdx.x, value head hv = blockIdx.y), 256
// threads; its query/key head is h = hv / (HV / H). q and k are read raw; the in-op L2 norm is
// applied as the row factors rq, rk ([rows, H] f32, 1 / |x| from delta_l2_rstd_*) on the
// products' f32 results, so a normalised q or k is never rounded to bf16. G is the chunk-local cumsum of the log decay
// in log2 units (delta_wy_* writes it, g2 [chunks, HV, 64]); exp(G_t - G_s) is taken only for
// s <= t (an exponent <= 0).

#define DNT 256  // threads of a chunk block
#define LDT 72   // row stride (elements) of the 64-wide tiles

struct ChunkHead {
    idx_t cg;  // global chunk
    idx_t r0;  // its first row
    idx_t oc;  // chunk-head index cg * HV + hv of the chunk-major workspaces
    int L;     // its rows (64 but for a sequence's last chunk)
    int hv, h;
};

__device__ __forceinline__ ChunkHead chunk_head(const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
                                                const int* __restrict__ chunk_seq, int H, int HV) {
    ChunkHead c;
    c.cg = blockIdx.x;
    const ChunkRows cr = chunk_rows(c.cg, bounds, chunk_off, chunk_seq);
    c.r0 = cr.r0;
    c.L = cr.L;
    c.hv = blockIdx.y;
    c.h = c.hv / (HV / H);
    c.oc = c.cg * HV + c.hv;
    return c;
}

// the chunk's rows of q or k (head h, [rows, H, K]) into dst [64][KP + DPAD], zero-padded
template <typename E, int KP>
__device__ __forceinline__ void ld_qk(E* dst, const E* __restrict__ x, idx_t r0, int L, int h, int H, int K, int tid) {
    tile_ld<E>(dst, KP + DPAD, x + (r0 * H + h) * (idx_t)K, (idx_t)H * K, 64, KP, L, K, vec_ok<E>((idx_t)H * K, K), tid, DNT);
}

// columns c0 .. c0 + C of the chunk's rows of a [rows, HV, V] tensor (value head hv) into dst
// (row stride lds), zero-padded
template <typename E>
__device__ __forceinline__ void ld_v(E* dst, int lds, const E* __restrict__ x, idx_t r0, int L, int hv, int HV, int V, int c0, int C,
                                     int tid) {
    tile_ld<E>(dst, lds, x + (r0 * HV + hv) * (idx_t)V + c0, (idx_t)HV * V, 64, C, L, V - c0, vec_ok<E>((idx_t)HV * V, V), tid, DNT);
}

// dst[t][j] = scale rq_t exp2(G_t) src[t][j] (the state-gradient pass's scaled do) over the
// chunk's 64 rows and C columns (C a multiple of 16 / sizeof(E)), both at row stride lds (dst may
// be src): 16 bytes per step, the row's factors loaded once per step; each element computed as
// the one-element form ((x scale) rq) exp2(G), so the bits are that form's. SWZ (bf16, C = 64):
// dst a 128-byte-swizzled tile (wg_el<64>'s layout, a wgmma operand) instead.
template <typename E, bool SWZ = false>
__device__ __forceinline__ void rows_scale_qe(E* dst, const E* src, int lds, int C, float scale, const float* sRq, const float* sG,
                                              int tid) {
    constexpr int P = 16 / (int)sizeof(E);
    const int cpr = C / P;
    auto piece = [&](int t, int j) {
        const float rq = sRq[t], e = ex2f(sG[t]);
        union {
            uint4 u;
            E v[P];
        } a, b;
        a.u = *(const uint4*)(src + t * lds + j);
        #pragma unroll
        for (int i = 0; i < P; ++i) b.v[i] = cvt<E>(to_f32(a.v[i]) * scale * rq * e);
        if constexpr (SWZ) {
            *(uint4*)(dst + wg_el<64>(t, j)) = b.u;
        } else {
            *(uint4*)(dst + t * lds + j) = b.u;
        }
    };
    // where the threads cover whole rows of pieces, each keeps its column on a count the
    // compiler sees (unrolled; the same pieces as the loop over x below)
    if (DNT % cpr == 0 && 64 % (DNT / cpr) == 0) {
        const int rs = DNT / cpr, j = (tid % cpr) * P;
        #pragma unroll
        for (int i = 0; i < 64 / rs; ++i) piece(tid / cpr + i * rs, j);
        return;
    }
    for (int x = tid; x < 64 * cpr; x += DNT) {
        const int t = x / cpr;
        piece(t, (x - t * cpr) * P);
    }
}

// 64 floats of a chunk-major [.., 64] f32 workspace into smem (cp.async; the caller commits)
__device__ __forceinline__ void ld_g64(float* dst, const float* __restrict__ src, int tid) {
    if (tid < 16) cp16(dst + 4 * tid, src + 4 * tid, true);
}

// The chunk's L2-norm row factors 1 / |x_t| of q or k (r [rows, H] f32, null: no norm, 1) into
// dst[64] (rows past the chunk: 1; their q, k rows are zero). Threads 0 .. 63, plain loads.
__device__ __forceinline__ void ld_rf(float* dst, const float* __restrict__ r, idx_t r0, int L, int h, int H, int tid) {
    if (tid < 64) dst[tid] = (r != nullptr && tid < L) ? r[(r0 + tid) * H + h] : 1.f;
}

// ld_rf by cp.async (the caller commits and waits): the sequential passes load the next
// chunk's factors while this chunk computes, where a plain load would stall its warp at once
__device__ __forceinline__ void ld_rf_cp(float* dst, const float* __restrict__ r, idx_t r0, int L, int h, int H, int tid) {
    if (tid < 64) {
        if (r != nullptr && tid < L) {
            cp4a(smem_addr(dst + tid), r + (r0 + tid) * H + h);
        } else {
            dst[tid] = 1.f;
        }
    }
}

// The chunk's beta (bt [rows, HV] f32, value head hv) into dst[64] by cp.async, rows past the
// chunk 0 (the caller commits and waits)
__device__ __forceinline__ void ld_bt_cp(float* dst, const float* __restrict__ bt, idx_t r0, int L, int hv, int HV, int tid) {
    if (tid < 64) {
        if (tid < L) {
            cp4a(smem_addr(dst + tid), bt + (r0 + tid) * HV + hv);
        } else {
            dst[tid] = 0.f;
        }
    }
}

// Chunk-head oc's split 64 x 64 tile of a [SP][chunks, HV, 64, 64] tensor (T from delta_wyt, P
// from delta_pm; the planes nch HV 4096 apart) into hi, lo [64][LDT] by cp.async (the caller
// commits and waits)
template <typename E>
__device__ __forceinline__ void ld_t64(E* hi, E* lo, const E* __restrict__ src, idx_t oc, idx_t nch, int HV, int tid) {
    tile_ld<E>(hi, LDT, src + oc * 4096, 64, 64, 64, 64, 64, true, tid, DNT);
    if (Sp<E>::SP == 2) tile_ld<E>(lo, LDT, src + nch * HV * 4096 + oc * 4096, 64, 64, 64, 64, 64, true, tid, DNT);
}

// chunk_p's inputs for chunk-parallel launch chunk c: q, k (raw, into sQ, sK [64][KP + DPAD]) and
// G (sG [64]) by cp.async in one group with what `more` issues, the row factors rq, rk (sRq, sRk)
// by plain loads; then every load waited for and the block synchronised.
template <typename E, int KP, typename F>
__device__ __forceinline__ void ld_chunk_p_in(E* sQ, E* sK, float* sG, float* sRq, float* sRk, const E* __restrict__ q,
                                              const E* __restrict__ k, const float* __restrict__ g2, const float* __restrict__ rq,
                                              const float* __restrict__ rk, const ChunkHead& c, int H, int K, int tid, F more) {
    ld_qk<E, KP>(sQ, q, c.r0, c.L, c.h, H, K, tid);
    ld_qk<E, KP>(sK, k, c.r0, c.L, c.h, H, K, tid);
    ld_g64(sG, g2 + c.oc * 64, tid);
    more();
    cp_commit();
    ld_rf(sRq, rq, c.r0, c.L, c.h, H, tid);
    ld_rf(sRk, rk, c.r0, c.L, c.h, H, tid);
    cp_wait0();
    __syncthreads();
}

// P = scale (Q K^T) * rq_t rk_s * exp(G_t - G_s) masked to s <= t, split into sP, sPl [64][LDT],
// from raw sQ, sK [64][KP + DPAD], sG and the row factors sRq, sRk [64]: 8 warps, each a 16 x 32
// tile (a warp whose columns all lie above its rows' diagonal stores zeros without a product).
template <typename E, int KP>
__device__ __forceinline__ void chunk_p(E* sP, E* sPl, const E* sQ, const E* sK, const float* sG, const float* sRq, const float* sRk,
                                        float scale, int wp, int lane) {
    constexpr int LK = KP + DPAD;
    const int fg = lane >> 2, ft = lane & 3, mt = tri_mt(wp), n0 = (wp >> 2) * 32;
    float acc[4][4];
    frag_zero(acc);
    if (n0 < 16 * mt + 16) wgemm<false, true, 4>(acc, sQ, LK, 16 * mt, sK, LK, n0, KP, lane);
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int t = 16 * mt + FRAG_ROW(e), s = n0 + FRAG_COL(nt, e);
            const float p0 = s <= t ? scale * sRq[t] * sRk[s] * acc[nt][e] * ex2f(sG[t] - sG[s]) : 0.f;
            const float p1 = s + 1 <= t ? scale * sRq[t] * sRk[s + 1] * acc[nt][e + 1] * ex2f(sG[t] - sG[s + 1]) : 0.f;
            st2_pair(sP, sPl, t * LDT + s, p0, p1);
        }
    }
}
