// delta/chunk_h.cu: the sequential launches of the chunked delta rule: the state pass (forward)
// and the state-gradient pass (backward).
//
// delta_h_k{KP}_{dtype}: grid (VP / 64, N * HV), 256 threads; one block walks one sequence's
// chunks in order with a KP x 64 tile of the state S (f32, mma fragments in registers). Per chunk
// (w (split), u (f32), g2 from delta_wy_*, k the input, rk its L2 row factors):
//     hs[c] = S                                      (=, storage dtype, [chunks, HV, KP, VP])
//     U     = u - w S                                (=, vn [SP][chunks, HV, 64, VP]: v_new, split)
//     S     = exp(G_last) S + Kn^T (U * exp(G_last - G))   (that operand split)
// S enters from h0 (f32 [N, HV, K, V], or zero) and leaves to ht (=, f32, or null).
//
// delta_h_bwd_k{KP}_{dtype}: the same grid and tile, the chunks in reverse, dS from dht. Per chunk
// (dvl = P^T do from delta_dvl_*, w and g2 from delta_wy_*, q, k, do the inputs):
//     dhs[c] = dS                                    (=, the gradient of the state leaving chunk c)
//     dU     = dvl + exp(G_last - G) (Kn dS)         (=, du [SP][chunks, HV, 64, VP], split)
//     dS     = exp(G_last) dS + Qn^T (scale exp(G) do) - w^T dU   (w, dU split)
// dS leaves to dh0 (=, f32, or null).
//
// S's operand copy (the B operand of w S and K dS) is rounded to the storage dtype, as fla does.
// Warps tile S as WM x WN (8 x 1 for KP = 128, 256; 4 x 2 for KP = 64, 192). NS pipeline stages
// of cp.async loads (2 where they fit in shared memory, else 1): the next chunk's loads are in
// flight while one is computed. Row factors rq, rk: see delta/chunk.cuh.
//
// Entry points (KP = K padded to 64 .. 256; f32 storage up to 128):
//   delta_h_k64_f32 delta_h_k128_f32 delta_h_k64_bf16 delta_h_k128_bf16 delta_h_k192_bf16 delta_h_k256_bf16
//   delta_h_bwd_k64_f32 delta_h_bwd_k128_f32 delta_h_bwd_k64_bf16 delta_h_bwd_k128_bf16 delta_h_bwd_k192_bf16 delta_h_bwd_k256_bf16

// A frag-layout state tile's rows, columns and loads (S or dS): warp (wm, wn) holds m-tiles
// wm + WM ms and the NSN n8-tiles from sn0.
template <int KP>
struct HTile {
    static constexpr int WM = (KP / 16) % 8 == 0 ? 8 : 4, WN = 8 / WM, MS = KP / 16 / WM, NSN = 8 / WN;
};

template <typename E, int KP, int NS>
__device__ __forceinline__ void h_fwd(const E* __restrict__ w, const float* __restrict__ u, const E* __restrict__ k,
                                      const float* __restrict__ rk, const float* __restrict__ g2, const float* __restrict__ h0,
                                      E* __restrict__ hs, E* __restrict__ vn, float* __restrict__ ht, const idx_t* __restrict__ bounds,
                                      const idx_t* __restrict__ chunk_off, int H, int HV, int K, int V, int VP, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    constexpr int WM = HTile<KP>::WM, MS = HTile<KP>::MS, NSN = HTile<KP>::NSN;
    constexpr int STAGE = (SP + 1) * 64 * LK;  // w (hi, lo), k
    constexpr int FSTAGE = 64 * 64 + 128;      // u (f32), G, rk
    DELTA_SMEM(smem);
    E* sStage = (E*)smem;                      // [NS][STAGE]
    E* sS = sStage + NS * STAGE;               // [KP][LDT]
    E* sUd = sS + KP * LDT;                    // [64][LDT]
    E* sUdl = sUd + (SP - 1) * 64 * LDT;
    float* sF = (float*)(sUdl + 64 * LDT);     // [NS][FSTAGE]
    DELTA_SMEM_END(smem, sF + NS * FSTAGE);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * 64, nh = blockIdx.y, n = nh / HV, hv = nh % HV, h = hv / (HV / H);
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int wm = wp % WM, wn = wp / WM, sn0 = wn * NSN * 8;
    const idx_t o_state = (idx_t)nh * K * V, wplane = nch * HV * 64 * KP, vplane = nch * HV * 64 * VP;
    float S[MS][NSN][4];
    #pragma unroll
    for (int ms = 0; ms < MS; ++ms) {
        #pragma unroll
        for (int qq = 0; qq < NSN; ++qq) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                S[ms][qq][e] = (h0 != nullptr && i < K && j < V) ? h0[o_state + (idx_t)i * V + j] : 0.f;
            }
        }
    }
    auto load = [&](int ci, int st) {
        E* b = sStage + st * STAGE;
        float* f = sF + st * FSTAGE;
        const idx_t oc = (cbase + ci) * HV + hv, r0 = bos + (idx_t)ci * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        tile_ld<E>(b, LK, w + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
        if (SP == 2) tile_ld<E>(b + 64 * LK, LK, w + wplane + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
        ld_qk<E, KP>(b + SP * 64 * LK, k, r0, L, h, H, K, tid);
        tile_ld<float>(f, 64, u + oc * 64 * (idx_t)VP + j0, VP, 64, 64, 64, 64, true, tid, DNT);
        ld_g64(f + 64 * 64, g2 + oc * 64, tid);
        ld_rf(f + 64 * 64 + 64, rk, r0, L, h, H, tid);
    };
    #pragma unroll
    for (int p = 0; p < NS - 1; ++p) {
        if (p < nc) load(p, p);
        cp_commit();
    }
    for (int it = 0; it < nc; ++it) {
        const int st = it % NS;
        if (NS > 1) {
            if (it + NS - 1 < nc) load(it + NS - 1, (it + NS - 1) % NS);
        } else {
            load(it, 0);
        }
        cp_commit();
        const idx_t oc = (cbase + it) * HV + hv;
        E* hp = hs + oc * (idx_t)KP * VP + j0;
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), jj = sn0 + FRAG_COL(qq, e);
                    const E x = cvt<E>(S[ms][qq][e]);
                    sS[i * LDT + jj] = x;
                    hp[(idx_t)i * VP + jj] = x;
                }
            }
        }
        cp_wait<NS - 1>();
        __syncthreads();
        const E* sW = sStage + st * STAGE;
        const E* sWl = sW + (SP - 1) * 64 * LK;
        const E* sKc = sW + SP * 64 * LK;
        const float* sUc = sF + st * FSTAGE;
        const float* sGc = sUc + 64 * 64;
        const float* sRk = sGc + 64;
        const float glast = sGc[63];
        {
            // U = u - w S: each warp 16 rows x 32 columns
            const int mt = wp & 3, n1 = (wp >> 2) * 32;
            float acc[4][4];
            frag_zero(acc);
            wgemm2<false, false, 4>(acc, sW, sWl, LK, 16 * mt, sS, sS, LDT, n1, KP, lane, true, false);
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    const float uu = sUc[t * 64 + jj] - acc[nt][e];
                    stg2(vn, vplane, oc * 64 * (idx_t)VP + (idx_t)t * VP + j0 + jj, uu);
                    st2(sUd, sUdl, t * LDT + jj, uu * sRk[t] * ex2f(glast - sGc[t]));
                }
            }
        }
        __syncthreads();
        const float dec = ex2f(glast);
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) S[ms][qq][e] *= dec;
            }
            wgemm2<true, false, NSN>(S[ms], sKc, sKc, LK, 16 * (wm + WM * ms), sUd, sUdl, LDT, sn0, 64, lane, false, true);
        }
        __syncthreads();
    }
    if (ht != nullptr) {
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                    if (i < K && j < V) ht[o_state + (idx_t)i * V + j] = S[ms][qq][e];
                }
            }
        }
    }
}

template <typename E, int KP>
__device__ __forceinline__ void h_bwd(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const E* __restrict__ w, const E* __restrict__ d_o,
                                      const float* __restrict__ dvl, const float* __restrict__ g2, const float* __restrict__ dht,
                                      E* __restrict__ dhs, E* __restrict__ du, float* __restrict__ dh0, const idx_t* __restrict__ bounds,
                                      const idx_t* __restrict__ chunk_off, int H, int HV, int K, int V, int VP, float scale, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    constexpr int WM = HTile<KP>::WM, MS = HTile<KP>::MS, NSN = HTile<KP>::NSN;
    DELTA_SMEM(smem);
    E* sQ = (E*)smem;                          // [64][LK]
    E* sK = sQ + 64 * LK;                      // [64][LK]
    E* sW = sK + 64 * LK;                      // [64][LK]
    E* sWl = sW + (SP - 1) * 64 * LK;
    E* sDo = sWl + 64 * LK;                    // [64][LDT]
    E* sS = sDo + 64 * LDT;                    // [KP][LDT]
    E* sDu = sS + KP * LDT;                    // [64][LDT]: -dU
    E* sDul = sDu + (SP - 1) * 64 * LDT;
    float* sDv = (float*)(sDul + 64 * LDT);    // [64][64]
    float* sG = sDv + 64 * 64;                 // [64]
    float* sRq = sG + 64;                      // [64]
    float* sRk = sRq + 64;                     // [64]
    DELTA_SMEM_END(smem, sRk + 64);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * 64, nh = blockIdx.y, n = nh / HV, hv = nh % HV, h = hv / (HV / H);
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int wm = wp % WM, wn = wp / WM, sn0 = wn * NSN * 8;
    const idx_t o_state = (idx_t)nh * K * V, wplane = nch * HV * 64 * KP, vplane = nch * HV * 64 * VP;
    float dS[MS][NSN][4];
    #pragma unroll
    for (int ms = 0; ms < MS; ++ms) {
        #pragma unroll
        for (int qq = 0; qq < NSN; ++qq) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                dS[ms][qq][e] = (dht != nullptr && i < K && j < V) ? dht[o_state + (idx_t)i * V + j] : 0.f;
            }
        }
    }
    for (int c = nc - 1; c >= 0; --c) {
        const idx_t oc = (cbase + c) * HV + hv, r0 = bos + (idx_t)c * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        ld_qk<E, KP>(sQ, q, r0, L, h, H, K, tid);
        ld_qk<E, KP>(sK, k, r0, L, h, H, K, tid);
        tile_ld<E>(sW, LK, w + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
        if (SP == 2) tile_ld<E>(sWl, LK, w + wplane + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
        ld_v<E>(sDo, LDT, d_o, r0, L, hv, HV, V, j0, 64, tid);
        tile_ld<float>(sDv, 64, dvl + oc * 64 * (idx_t)VP + j0, VP, 64, 64, 64, 64, true, tid, DNT);
        ld_g64(sG, g2 + oc * 64, tid);
        cp_commit();
        ld_rf(sRq, rq, r0, L, h, H, tid);
        ld_rf(sRk, rk, r0, L, h, H, tid);
        E* hp = dhs + oc * (idx_t)KP * VP + j0;
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), jj = sn0 + FRAG_COL(qq, e);
                    const E x = cvt<E>(dS[ms][qq][e]);
                    sS[i * LDT + jj] = x;
                    hp[(idx_t)i * VP + jj] = x;
                }
            }
        }
        cp_wait0();
        __syncthreads();
        const float glast = sG[63];
        {
            // dU = dvl + exp(G_last - G) rk (K dS): each warp 16 rows x 32 columns
            const int mt = wp & 3, n1 = (wp >> 2) * 32;
            float acc[4][4];
            frag_zero(acc);
            wgemm<false, false, 4>(acc, sK, LK, 16 * mt, sS, LDT, n1, KP, lane);
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    const float d = sDv[t * 64 + jj] + sRk[t] * ex2f(glast - sG[t]) * acc[nt][e];
                    stg2(du, vplane, oc * 64 * (idx_t)VP + (idx_t)t * VP + j0 + jj, d);
                    st2(sDu, sDul, t * LDT + jj, -d);
                }
            }
        }
        for (int x = tid; x < 64 * 64; x += DNT) {
            const int t = x >> 6, jj = x & 63;
            sDo[t * LDT + jj] = cvt<E>(to_f32(sDo[t * LDT + jj]) * scale * sRq[t] * ex2f(sG[t]));
        }
        __syncthreads();
        const float dec = ex2f(glast);
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) dS[ms][qq][e] *= dec;
            }
            wgemm<true, false, NSN>(dS[ms], sQ, LK, 16 * (wm + WM * ms), sDo, LDT, sn0, 64, lane);
            wgemm2<true, false, NSN>(dS[ms], sW, sWl, LK, 16 * (wm + WM * ms), sDu, sDul, LDT, sn0, 64, lane, true, true);
        }
        __syncthreads();
    }
    if (dh0 != nullptr) {
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                    if (i < K && j < V) dh0[o_state + (idx_t)i * V + j] = dS[ms][qq][e];
                }
            }
        }
    }
}

#define H_ENTRY(KP, NS, NAME, E)                                                                         \
extern "C" __global__ void __launch_bounds__(DNT) delta_h_k##KP##_##NAME(                                \
    const E* w, const float* u, const E* k, const float* rk, const float* g2, const float* h0, E* hs,    \
    E* vn, float* ht, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, int V, int VP,  \
    idx_t nch) {                                                                                         \
    h_fwd<E, KP, NS>(w, u, k, rk, g2, h0, hs, vn, ht, bounds, chunk_off, H, HV, K, V, VP, nch);          \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(DNT) delta_h_bwd_k##KP##_##NAME(                            \
    const E* q, const E* k, const float* rq, const float* rk, const E* w, const E* d_o, const float* dvl,\
    const float* g2, const float* dht, E* dhs, E* du, float* dh0, const idx_t* bounds,                   \
    const idx_t* chunk_off, int H, int HV, int K, int V, int VP, float scale, idx_t nch) {               \
    h_bwd<E, KP>(q, k, rq, rk, w, d_o, dvl, g2, dht, dhs, du, dh0, bounds, chunk_off, H, HV, K, V, VP,   \
                 scale, nch);                                                                            \
}

// NS: the forward state pass's cp.async stages, 2 where they fit in shared memory (bf16, KP <= 128),
// else 1 (src/delta/dispatch.rs sizes the launches to match); the backward's loads are not staged
H_ENTRY(64, 1, f32, float)
H_ENTRY(128, 1, f32, float)
H_ENTRY(64, 2, bf16, bf16_t)
H_ENTRY(128, 2, bf16, bf16_t)
H_ENTRY(192, 1, bf16, bf16_t)
H_ENTRY(256, 1, bf16, bf16_t)
