// delta/chunk_h.cu: the sequential launches of the chunked delta rule: the state pass (forward)
// and the state-gradient pass (backward).
//
// delta_h[_v32]_k{KP}_{dtype}: grid (VP / BV, N * HV), 256 threads; one block walks one
// sequence's chunks in order with a KP x BV tile (BV = 64, or 32 for `_v32`) of the state S (f32,
// mma fragments in registers). Per chunk (w (split), u (f32), g2 from delta_wy_*, k the input,
// rk its L2 row factors):
//     hs[c] = S                                      (=, storage dtype, [chunks, HV, KP, VP])
//     U     = u - w S                                (=, vn [SP][chunks, HV, 64, VP]: v_new, split)
//     S     = exp(G_last) S + Kn^T (U * exp(G_last - G))   (that operand split)
// S enters from h0 (f32 [N, HV, K, V], or zero) and leaves to ht (=, f32, or null).
//
// delta_h_bwd[_v32]_k{KP}_{dtype}: the same grid and tile, the chunks in reverse, dS from dht. Per chunk
// (dvl = P^T do from delta_dvl_*, w and g2 from delta_wy_*, q, k, do the inputs):
//     dhs[c] = dS                                    (=, the gradient of the state leaving chunk c)
//     dU     = dvl + exp(G_last - G) (Kn dS)         (=, du [SP][chunks, HV, 64, VP], split)
//     dS     = exp(G_last) dS + Qn^T (scale exp(G) do) - w^T dU   (w, dU split)
// dS leaves to dh0 (=, f32, or null). delta_h_bwd_dv2_k{KP}_bf16: dvl = P^T do computed in the pass
// (delta_dvl's arithmetic, P from the q, k rows it loads) instead of read, the per-chunk loads on
// two cp.async stages (64 columns, one block per SM). delta_h_bwd_rdv2_k{KP}_bf16 (fused dvl, 64
// columns; `_rdv2_v32`: 32), delta_h_bwd_rv32_k{KP}_bf16 (dvl read, 32 columns) and
// delta_h_bwd_rs1_k{KP}_bf16 (KP 192, 256: dvl read, 64 columns, one stage): the same after the
// residual forward, w^T dU formed from T, k and beta (h_bwd's RES below).
//
// delta_hr_b2_k{KP}_bf16, delta_hr_v32_k{KP}_bf16 (KP <= 128, the residual forward): delta_h with
// U formed as T (beta (V - rk exp(G) (K S))) from delta_wyt's T, k and v, so no w or u is read
// (or written by the WY pass): the same U, a third fewer bytes per chunk, one more product and
// barrier in the chain. `_b2`: 64 columns, one stage, two blocks per SM; `_v32`: 32 columns, two
// stages, one block per SM (long sequences: twice the blocks walking in step); `_s2` (KP 192,
// 256; at KP <= 128 the heads before a 32-column tail): 64 columns, two stages, one block per
// SM. The `delta_hr_*` entries take nh0 last, the sequence x value head of blockIdx.y = 0.
// delta_hro_b2_k{KP}_bf16, delta_hro_v32_k{KP}_bf16, delta_hro_s2_k{KP}_bf16: the same with the
// output pass (delta_o) fused in, o = scale [(Qn * exp(G)) S + P U] per chunk from the state
// entering it and U (FO below); hs and vn written only where given. delta_hrop_b2_k{64,128},
// delta_hrop_s2_k{192,256}: the same with P read from delta_pm (PL below), not formed per block.
//
// S's operand copy (the B operand of w S and K dS) is rounded to the storage dtype, as fla does.
// Warps tile S as WM x WN (8 x 1 for KP = 128, 256; 4 x 2 for KP = 64, 192). Both passes have NS
// pipeline stages of cp.async loads (2 where they fit in shared memory, else 1; the `_b2`
// forward entries one, built for two blocks per SM): the next chunk's loads are in flight
// while one is computed. hs and dhs leave from their smem operand
// copies in 16-byte pieces, dU from its negated operand copy; v_new in column pairs. Row
// factors rq, rk: see delta/chunk.cuh.
//
// Entry points (KP = K padded to 64 .. 256; f32 storage up to 128):
//   delta_h_k64_f32 delta_h_k128_f32 delta_h_k64_bf16 delta_h_k128_bf16 delta_h_k192_bf16 delta_h_k256_bf16
//   delta_h_bwd_k64_f32 delta_h_bwd_k128_f32 delta_h_bwd_k64_bf16 delta_h_bwd_k128_bf16 delta_h_bwd_k192_bf16 delta_h_bwd_k256_bf16
//   delta_h_v32_k64_bf16 delta_h_v32_k128_bf16 delta_h_v32_k192_bf16 delta_h_v32_k256_bf16
//   delta_h_bwd_v32_k64_bf16 delta_h_bwd_v32_k128_bf16 delta_h_bwd_v32_k192_bf16 delta_h_bwd_v32_k256_bf16
//   delta_h_b2_k64_bf16 delta_h_b2_k128_bf16 delta_h_v32b2_k64_bf16 delta_h_v32b2_k128_bf16
//   delta_h_bwd_dv2_k64_bf16 delta_h_bwd_dv2_k128_bf16 delta_h_bwd_rdv2_k64_bf16 delta_h_bwd_rdv2_k128_bf16
//   delta_h_bwd_rdv2_v32_k64_bf16 delta_h_bwd_rdv2_v32_k128_bf16
//   delta_h_bwd_rv32_k64_bf16 delta_h_bwd_rv32_k128_bf16 delta_h_bwd_rs1_k192_bf16 delta_h_bwd_rs1_k256_bf16
//   delta_h_bwd_rdv1_k192_bf16 delta_h_bwd_rdv1_k256_bf16 delta_h_bwd_rdvp1_k192_bf16 delta_h_bwd_rdvp1_k256_bf16
//   delta_h_bwd_wg_rdv2_k128_bf16 (sm_90a; other targets compile it to a trap)
//   delta_hr_b2_k64_bf16 delta_hr_b2_k128_bf16 delta_hr_v32_k64_bf16 delta_hr_v32_k128_bf16
//   delta_hro_b2_k64_bf16 delta_hro_b2_k128_bf16 delta_hro_v32_k64_bf16 delta_hro_v32_k128_bf16
//   delta_hr_s2_k64_bf16 delta_hr_s2_k128_bf16
//   delta_hr_s2_k192_bf16 delta_hr_s2_k256_bf16 delta_hro_s2_k192_bf16 delta_hro_s2_k256_bf16
//   delta_hrop_b2_k64_bf16 delta_hrop_b2_k128_bf16 delta_hrop_s2_k192_bf16 delta_hrop_s2_k256_bf16

// The state tile's warp layout (S or dS, KP x BV in mma fragments): warp (wm, wn) of WM x WN
// holds m-tiles wm + WM ms (ms < MS) and the NSN n8-tiles from 8 NSN wn.
template <int KP, int BV>
struct HTile {
    static constexpr int WM = (KP / 16) % 8 == 0 ? 8 : 4, WN = 8 / WM, MS = KP / 16 / WM, NSN = BV / 8 / WN;
    static constexpr int LDS = BV + DPAD;  // row stride of the BV-wide tiles
};

// S (or dS) from a [K, V] f32 state (null: zero) at columns j0 ..
template <int KP, int BV>
__device__ __forceinline__ void h_init(float (&S)[HTile<KP, BV>::MS][HTile<KP, BV>::NSN][4], const float* __restrict__ src, idx_t o_state,
                                       int K, int V, int j0, int wm, int sn0, int fg, int ft) {
    constexpr int WM = HTile<KP, BV>::WM, MS = HTile<KP, BV>::MS, NSN = HTile<KP, BV>::NSN;
    #pragma unroll
    for (int ms = 0; ms < MS; ++ms) {
        #pragma unroll
        for (int qq = 0; qq < NSN; ++qq) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                S[ms][qq][e] = (src != nullptr && i < K && j < V) ? src[o_state + (idx_t)i * V + j] : 0.f;
            }
        }
    }
}

// S (or dS) to a [K, V] f32 state (null: none)
template <int KP, int BV>
__device__ __forceinline__ void h_fini(const float (&S)[HTile<KP, BV>::MS][HTile<KP, BV>::NSN][4], float* __restrict__ dst, idx_t o_state,
                                       int K, int V, int j0, int wm, int sn0, int fg, int ft) {
    constexpr int WM = HTile<KP, BV>::WM, MS = HTile<KP, BV>::MS, NSN = HTile<KP, BV>::NSN;
    if (dst == nullptr) return;
    #pragma unroll
    for (int ms = 0; ms < MS; ++ms) {
        #pragma unroll
        for (int qq = 0; qq < NSN; ++qq) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), j = j0 + sn0 + FRAG_COL(qq, e);
                if (i < K && j < V) dst[o_state + (idx_t)i * V + j] = S[ms][qq][e];
            }
        }
    }
}

// S (or dS) rounded into the smem operand sS [KP][LDS], in column pairs; h_copy then moves it to
// the chunk's slot of hs (or dhs) in whole 16-byte pieces
template <typename E, int KP, int BV>
__device__ __forceinline__ void h_store(const float (&S)[HTile<KP, BV>::MS][HTile<KP, BV>::NSN][4], E* sS, int wm, int sn0, int fg,
                                        int ft) {
    constexpr int WM = HTile<KP, BV>::WM, MS = HTile<KP, BV>::MS, NSN = HTile<KP, BV>::NSN, LDS = HTile<KP, BV>::LDS;
    #pragma unroll
    for (int ms = 0; ms < MS; ++ms) {
        #pragma unroll
        for (int qq = 0; qq < NSN; ++qq) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = 16 * (wm + WM * ms) + FRAG_ROW(e), jj = sn0 + FRAG_COL(qq, e);
                st_pair(sS + i * LDS + jj, S[ms][qq][e], S[ms][qq][e + 1]);
            }
        }
    }
}

// sS (complete: after a barrier that follows h_store) to the chunk's slot hp of hs (or dhs), row
// stride VP; it must finish before the next h_store (a barrier between them)
template <typename E, int KP, int BV>
__device__ __forceinline__ void h_copy(E* __restrict__ hp, const E* sS, int VP, int tid) {
    tile_st<E>(hp, VP, sS, HTile<KP, BV>::LDS, KP, BV, tid, DNT);
}

// RES (the `delta_hr_b2` entries, bf16, the residual forward): v_new from T (delta_wyt), k
// and v instead of w and u, U = T (beta (V - rk exp(G) (K S))) = u - w S (w = T diag(beta rk
// exp(G)) K, u = T diag(beta) V): K S on raw K, the residual in f32, then both T and
// beta (V - ..) split; w and u are never formed, and the stages carry T, k, v (tm, v, bt; w, u
// unread).
//
// FO (RES only: the `delta_hro` entries, a forward that no backward reads): the output pass
// (delta_o, delta/chunk_fwd.cu) fused in. Per chunk, once U is formed, U (split) goes to Y's
// planes and P (chunk_p, split) to T's, then o = scale rq exp(G) (Q S) + P U for the block's V
// tile, S the state entering the chunk (sS): delta_o's products in its order, so o's bits are
// the unfused pair's. q has one buffer of its own (QLOAD: on two stages a second q buffer would
// not fit beside KP = 256's), rq rides in the stages; Y's hi plane is the V tile itself (each
// thread overwrites the V elements it alone reads); hs and vn are written only where given (a
// backward reads them), so a forward-only pass moves no state or v_new bytes at all.
//
// PL (FO only: the `delta_hrop` entries): P (split) read from pm (delta_pm, delta/chunk_fwd.cu:
// chunk_p's bits) into T's planes, in a cp.async group issued once U is formed, landing under
// the state update; each of a head's VP / BV blocks would otherwise form the same P.
template <typename E, int KP, int NS, int BV, bool RES = false, bool FO = false, bool PL = false>
__device__ __forceinline__ void h_fwd(const E* __restrict__ w, const float* __restrict__ u, const E* __restrict__ k,
                                      const float* __restrict__ rk, const float* __restrict__ g2, const float* __restrict__ h0,
                                      E* __restrict__ hs, E* __restrict__ vn, float* __restrict__ ht, const idx_t* __restrict__ bounds,
                                      const idx_t* __restrict__ chunk_off, int H, int HV, int K, int V, int VP, idx_t nch,
                                      const E* __restrict__ tm = nullptr, const E* __restrict__ v = nullptr,
                                      const float* __restrict__ bt = nullptr, const E* __restrict__ q = nullptr,
                                      const float* __restrict__ rq = nullptr, E* __restrict__ o = nullptr, float scale = 0.f,
                                      int nh0 = 0, const E* __restrict__ pm = nullptr) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    constexpr int WM = HTile<KP, BV>::WM, MS = HTile<KP, BV>::MS, NSN = HTile<KP, BV>::NSN, LDS = HTile<KP, BV>::LDS;
    static_assert(!RES || sizeof(E) == 2, "the residual state pass: bf16");
    static_assert(!FO || RES, "the fused output: the residual state pass");
    static_assert(!PL || FO, "P read: the fused output");
    // w (hi, lo), k; RES: T (hi, lo) [64][LDT], k, the V tile [64][LDS]
    constexpr int STAGE = RES ? SP * 64 * LDT + 64 * LK + 64 * LDS : (SP + 1) * 64 * LK;
    // u (f32; RES: none), G, rk (RES: and beta; FO: and rq)
    constexpr int FSTAGE = RES ? (FO ? 256 : 192) : 64 * BV + 128;
    DELTA_SMEM(smem);
    E* sStage = (E*)smem;                      // [NS][STAGE]
    E* sS = sStage + NS * STAGE;               // [KP][LDS]
    E* sUd = sS + KP * LDS;                    // [64][LDS]
    E* sUdl = sUd + (SP - 1) * 64 * LDS;
    // RES: [SP][64][LDS], beta (V - rk exp(G) K S); FO: its lo plane only (hi: the V tile)
    E* sY = sUdl + 64 * LDS;
    E* sYl = FO ? sY : sY + (SP - 1) * 64 * LDS;
    E* sQ = sYl + (FO ? SP - 1 : 1) * 64 * LDS;  // FO: q [64][LK], one buffer (see QLOAD below)
    float* sF = (float*)(RES ? sQ + (FO ? 64 * LK : 0) : sY);  // [NS][FSTAGE]
    DELTA_SMEM_END(smem, sF + NS * FSTAGE);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * BV, nh = nh0 + blockIdx.y, n = nh / HV, hv = nh % HV, h = hv / (HV / H);
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int wm = wp % WM, wn = wp / WM, sn0 = wn * NSN * 8;
    const idx_t o_state = (idx_t)nh * K * V, wplane = nch * HV * 64 * KP, vplane = nch * HV * 64 * VP;
    float S[MS][NSN][4];
    h_init<KP, BV>(S, h0, o_state, K, V, j0, wm, sn0, fg, ft);
    auto load = [&](int ci, int st) {
        E* b = sStage + st * STAGE;
        float* f = sF + st * FSTAGE;
        const idx_t oc = (cbase + ci) * HV + hv, r0 = bos + (idx_t)ci * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        if constexpr (RES) {
            ld_t64<E>(b, b + 64 * LDT, tm, oc, nch, HV, tid);
            ld_qk<E, KP>(b + SP * 64 * LDT, k, r0, L, h, H, K, tid);
            ld_v<E>(b + SP * 64 * LDT + 64 * LK, LDS, v, r0, L, hv, HV, V, j0, BV, tid);
            ld_g64(f, g2 + oc * 64, tid);
            ld_rf_cp(f + 64, rk, r0, L, h, H, tid);
            ld_bt_cp(f + 128, bt, r0, L, hv, HV, tid);
            if constexpr (FO) ld_rf_cp(f + 192, rq, r0, L, h, H, tid);
        } else {
            tile_ld<E>(b, LK, w + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
            if (SP == 2) tile_ld<E>(b + 64 * LK, LK, w + wplane + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
            ld_qk<E, KP>(b + SP * 64 * LK, k, r0, L, h, H, K, tid);
            tile_ld<float>(f, BV, u + oc * 64 * (idx_t)VP + j0, VP, 64, BV, 64, BV, true, tid, DNT);
            ld_g64(f + 64 * BV, g2 + oc * 64, tid);
            ld_rf_cp(f + 64 * BV + 64, rk, r0, L, h, H, tid);
        }
    };
    // QLOAD (FO): chunk ci's q tile into sQ, read from chunk_p (after U is formed) to the output;
    // its loads are issued at the chunk's top (with the stage's on one stage, as a group of their
    // own ahead of the next chunk's stage on two) and land under the chunk's first products
    auto load_q = [&](int ci) {
        const idx_t r0 = bos + (idx_t)ci * 64;
        ld_qk<E, KP>(sQ, q, r0, (int)min((idx_t)64, eos - r0), h, H, K, tid);
    };
    static_assert(NS == 1 || NS == 2, "one or two cp.async stages");
    #pragma unroll
    for (int p = 0; p < NS - 1; ++p) {
        if (p < nc) load(p, p);
        cp_commit();
    }
    // Two stages: chunk it + 1's loads are issued once every warp has passed this chunk's first
    // barrier (so has finished chunk it - 1, the last reader of their stage) and land while
    // chunk it is computed; the barriers left order sS (written before the first, read before
    // the second) and sUd (written between them, read after). One stage: the loads of chunk it
    // at its top, behind the last barrier of chunk it - 1.
    for (int it = 0; it < nc; ++it) {
        const int st = it % NS;
        if (NS == 1) {
            load(it, 0);
            if constexpr (FO) load_q(it);
            cp_commit();
        }
        const idx_t oc = (cbase + it) * HV + hv;
        h_store<E, KP, BV>(S, sS, wm, sn0, fg, ft);
        cp_wait0();
        __syncthreads();
        if (NS > 1) {
            if constexpr (FO) {
                load_q(it);
                cp_commit();
            }
            // committed even when empty (the last chunk): FO waits for all groups but this one
            if (it + 1 < nc) load(it + 1, (it + 1) % NS);
            cp_commit();
        }
        if (!FO || hs != nullptr) h_copy<E, KP, BV>(hs + oc * (idx_t)KP * VP + j0, sS, VP, tid);
        const E* sW = sStage + st * STAGE;
        const E* sWl = sW + (SP - 1) * 64 * LK;
        const E* sKc = sW + SP * 64 * (RES ? LDT : LK);
        const float* sUc = sF + st * FSTAGE;
        const float* sGc = sUc + (RES ? 0 : 64 * BV);
        const float* sRk = sGc + 64;
        const float glast = sGc[63];
        // each warp 16 rows x BV / 2 columns of U: this thread's rows t = 16 mt + fg (+ 8)
        constexpr int NT = BV / 16;
        // (tri_mt's balanced row tiles where they measured faster, the 32-column and fused-output
        // passes; delta_hr_b2 was slower with them: bench/results/2026-12-07_h100_3dc2aa0_delta_row_tiles.txt)
        const int mt = (BV == 32 || FO) ? tri_mt(wp) : wp & 3, n1 = (wp >> 2) * (BV / 2);
        float acc[NT][4];
        // RES: T's planes (FO: P's once U is formed), Y's planes (FO: hi in place of the V tile;
        // then U's)
        E* sT = sStage + st * STAGE;
        E* sTl = sT + (SP - 1) * 64 * LDT;
        E* sYh = FO ? sT + SP * 64 * LDT + 64 * LK : sY;
        const float* sRq = sRk + 128;  // FO: rq beside beta
        if constexpr (RES) {
            // X = K S (raw K: exact), sY = beta (V - rk exp(G) X) split; then U = T sY, both split
            const E* sVc = sKc + 64 * LK;
            const float* sBt = sRk + 64;
            frag_zero(acc);
            wgemm<false, false, NT>(acc, sKc, LK, 16 * mt, sS, LDS, n1, KP, lane);
            float fy[2], by[2];
            frag_rows(fy, 16 * mt, fg, [&](int t) { return sRk[t] * ex2f(sGc[t]); });
            frag_rows(by, 16 * mt, fg, [&](int t) { return sBt[t]; });
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    const unsigned vv = *(const unsigned*)(sVc + t * LDS + jj);
                    const float y0 = by[e >> 1] * (bf_lo(vv) - fy[e >> 1] * acc[nt][e]);
                    const float y1 = by[e >> 1] * (bf_hi(vv) - fy[e >> 1] * acc[nt][e + 1]);
                    st2_pair(sYh, sYl, t * LDS + jj, y0, y1);
                }
            }
            __syncthreads();
            frag_zero(acc);
            // one stage (two blocks per SM, <= 128 registers): the terms one after another
            // (T is lower: rows 16 mt .. 16 mt + 16 end at depth 16 mt + 16)
            if constexpr (NS == 1) {
                wgemm2_seq<false, false, NT>(acc, sT, sTl, LDT, 16 * mt, sYh, sYl, LDS, n1, 64, lane, true, true, 0, 16 * mt + 16);
            } else {
                wgemm2<false, false, NT>(acc, sT, sTl, LDT, 16 * mt, sYh, sYl, LDS, n1, 64, lane, true, true, 0, 16 * mt + 16);
            }
        } else {
            // U = u - w S
            frag_zero(acc);
            wgemm2<false, false, NT>(acc, sW, sWl, LK, 16 * mt, sS, sS, LDS, n1, KP, lane, true, false);
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    acc[nt][e] = sUc[t * BV + jj] - acc[nt][e];
                    acc[nt][e + 1] = sUc[t * BV + jj + 1] - acc[nt][e + 1];
                }
            }
        }
        // U to v_new (its pairs from vrow (+ 8 VP) + 8 nt), and exp(G_last - G) rk U (split) to
        // the state update's operand
        E* vrow = vn + (oc * 64 + 16 * mt + fg) * (idx_t)VP + j0 + n1 + 2 * ft;
        const idx_t vr8 = 8 * (idx_t)VP;
        float fu[2];
        frag_rows(fu, 16 * mt, fg, [&](int t) { return sRk[t] * ex2f(glast - sGc[t]); });
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                const float u0 = acc[nt][e], u1 = acc[nt][e + 1];
                if (!FO || vn != nullptr) stg2_pair(vrow + (e ? vr8 : 0) + 8 * nt, vplane, 0, u0, u1);
                st2_pair(sUd, sUdl, t * LDS + jj, u0 * fu[e >> 1], u1 * fu[e >> 1]);
            }
        }
        if constexpr (FO && NS > 1) cp_wait<1>();  // this chunk's q (QLOAD)
        __syncthreads();
        if constexpr (FO) {
            // T and Y are read: U (split) to Y's planes, P to T's
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) st2_pair(sYh, sYl, (16 * mt + FRAG_ROW(e)) * LDS + n1 + FRAG_COL(nt, e), acc[nt][e], acc[nt][e + 1]);
            }
            if constexpr (PL) {
                // P from delta_pm into T's planes; it lands under the state update below
                ld_t64<E>(sT, sTl, pm, oc, nch, HV, tid);
                cp_commit();
            } else {
                chunk_p<E, KP>(sT, sTl, sQ, sKc, sGc, sRq, sRk, scale, wp, lane);
            }
        }
        const float dec = ex2f(glast);
        #pragma unroll
        for (int ms = 0; ms < MS; ++ms) {
            #pragma unroll
            for (int qq = 0; qq < NSN; ++qq) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) S[ms][qq][e] *= dec;
            }
            wgemm2<true, false, NSN>(S[ms], sKc, sKc, LK, 16 * (wm + WM * ms), sUd, sUdl, LDS, sn0, 64, lane, false, true);
        }
        if constexpr (FO) {
            // o = scale rq exp(G) (Q S) + P U over the block's columns, as delta_o forms it (Q S
            // on raw q, the row factor on the f32 result, then P U's split terms in turn); S is
            // sS, the state entering the chunk
            if constexpr (PL) cp_wait0();  // P (and, on two stages, the next chunk's stage)
            __syncthreads();
            const idx_t r0 = bos + (idx_t)it * 64;
            const int L = (int)min((idx_t)64, eos - r0);
            frag_zero(acc);
            // 32 deep at a time (as delta_o): fewer live fragments beside S's
            #pragma unroll 1
            for (int k0 = 0; k0 < KP; k0 += 32) wgemm<false, false, NT>(acc, sQ + k0, LK, 16 * mt, sS + k0 * LDS, LDS, n1, 32, lane);
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e);
                const float f = scale * sRq[t] * ex2f(sGc[t]);
                #pragma unroll
                for (int nt = 0; nt < NT; ++nt) acc[nt][e] *= f;
            }
            // P is causal: depth 16 mt + 16
            wgemm2_seq<false, false, NT>(acc, sT, sTl, LDT, 16 * mt, sYh, sYl, LDS, n1, 64, lane, true, true, 0, 16 * mt + 16);
            E* orow = o + r0 * HV * (idx_t)V + (idx_t)hv * V;
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), j = j0 + n1 + FRAG_COL(nt, e);
                    st_row_pair(orow + t * HV * (idx_t)V, j, V, t < L, acc[nt][e], acc[nt][e + 1]);
                }
            }
        }
        if (NS == 1 || FO) __syncthreads();
    }
    h_fini<KP, BV>(S, ht, o_state, K, V, j0, wm, sn0, fg, ft);
}

// FD: dvl = P^T do (delta_dvl, delta/chunk_bwd.cu) fused in (the `_dv2` entries; dvl unread, may
// be null): P (split) from the q and k rows the pass loads anyway, scale exp(G) do into a copy
// of its own so that P^T do reads do unscaled. NS: cp.async stages of the per-chunk loads (q, k,
// w, do, dvl, G, rq, rk), as delta_h's: with two, chunk c - 1's loads land while chunk c is
// computed. RES (bf16: the `_rdv2` and `_rv32` entries, after the residual forward, which forms
// no w): w^T (-dU) as Kn^T diag(beta exp(G)) T^T (-dU) from T (delta_wyt's), k and beta, w
// unread (may be null): Y = T^T (-dU) (both split), Y diag(beta rk exp(G)) split into P's tile
// (FD: free once dU is formed; else a tile of its own), then K^T Y with K raw (exact); one more
// product and barrier per chunk, T's 16 KB per chunk read instead of w's 32 (at KP = 128; 16 at
// KP = 64). PL (FD, one stage: the `delta_h_bwd_rdvp1` entries): P read from pm (delta_pm,
// delta/chunk_fwd.cu: chunk_p's bits) with the chunk's loads instead of formed per block. WGS
// (sm_90a, the `delta_h_bwd_wg_rdv2` entry: KP 128, 64 columns, RES and FD): the dS update on
// warpgroup products, m64n64 per warpgroup (the state tile's 8 x 1 warps are its two
// warpgroups' accumulators), A (Qn^T, K^T) from registers as the mma.sync A fragments, B (scale
// exp(G) do and Y's planes) read once per warpgroup from 128-byte-swizzled tiles in P's and the
// scaled do's places; the same terms in the same order.
template <typename E, int KP, int BV, bool FD, int NS, bool RES = false, bool PL = false, bool WGS = false>
__device__ __forceinline__ void h_bwd(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const E* __restrict__ w, const E* __restrict__ d_o,
                                      const float* __restrict__ dvl, const float* __restrict__ g2, const float* __restrict__ dht,
                                      E* __restrict__ dhs, E* __restrict__ du, float* __restrict__ dh0, const idx_t* __restrict__ bounds,
                                      const idx_t* __restrict__ chunk_off, int H, int HV, int K, int V, int VP, float scale, idx_t nch,
                                      const E* __restrict__ tm = nullptr, const float* __restrict__ bt = nullptr, int nh0 = 0,
                                      const E* __restrict__ pm = nullptr) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    static_assert(!PL || (FD && NS == 1), "P read: dvl fused in, one stage (P's tile is free at the chunk's top)");
    constexpr int WM = HTile<KP, BV>::WM, MS = HTile<KP, BV>::MS, NSN = HTile<KP, BV>::NSN, LDS = HTile<KP, BV>::LDS;
    static_assert(!RES || (sizeof(E) == 2 && LDS <= LDT), "the residual state-gradient pass: bf16, Y in P's tile");
    static_assert(!WGS || (KP == 128 && BV == 64 && FD && RES && !PL && sizeof(E) == 2), "the warpgroup dS update: KP 128, rdv2");
    // P's tile (FD: [SP][64][LDT]; RES without FD: Y's alone, [SP][64][LDS])
    constexpr int LDP = FD ? LDT : LDS, PT = (FD || RES) ? SP * 64 * LDP : 0;
    // q, k [64][LK]; w (hi, lo) [64][LK] or (RES) T (hi, lo) [64][LDT]; do [64][LDS]
    constexpr int STAGE = 2 * 64 * LK + SP * 64 * (RES ? LDT : LK) + 64 * LDS;
    constexpr int FSTAGE = (1 - FD) * 64 * BV + (RES ? 256 : 192);  // dvl [64][BV] (FD: none); G, rq, rk (RES: beta) [64]
    static_assert(NS == 1 || NS == 2, "one or two cp.async stages");
    // WGS: the base aligned to 1024 bytes, so that P's and the scaled do's places (whole KB
    // from it at KP 128) hold swizzled tiles
    DELTA_SMEM(smem0);
    unsigned char* smem = WGS ? wg_align1024(smem0) : smem0;
    E* sStage = (E*)smem;                      // [NS][STAGE]
    E* sS = sStage + NS * STAGE;               // [KP][LDS]
    E* sDu = sS + KP * LDS;                    // [64][LDS]: -dU
    E* sDul = sDu + (SP - 1) * 64 * LDS;
    E* sP = sDul + 64 * LDS;                   // [PT]: FD: P (RES: then Y); RES alone: Y
    E* sPl = sP + (SP - 1) * 64 * LDP;
    E* sDoS = sP + PT;                         // FD: [64][LDS], scale exp(G) do
    float* sF = (float*)(sDoS + FD * 64 * LDS);  // [NS][FSTAGE]
    DELTA_SMEM_END(smem0, sF + NS * FSTAGE);
    static_assert(!WGS || ((NS * STAGE + KP * LDS + SP * 64 * LDS) * 2) % 1024 == 0 && (PT * 2) % 1024 == 0,
                  "P's and the scaled do's places on 1024-byte boundaries");
    wg_sm90a_only(WGS);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * BV, nh = nh0 + blockIdx.y, n = nh / HV, hv = nh % HV, h = hv / (HV / H);
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int wm = wp % WM, wn = wp / WM, sn0 = wn * NSN * 8;
    const idx_t o_state = (idx_t)nh * K * V, wplane = nch * HV * 64 * KP, vplane = nch * HV * 64 * VP;
    float dS[MS][NSN][4];
    h_init<KP, BV>(dS, dht, o_state, K, V, j0, wm, sn0, fg, ft);
    // chunk c's loads into stage st (the cp.async ones committed by the caller)
    auto load = [&](int c, int st) {
        E* b = sStage + st * STAGE;
        float* f = sF + st * FSTAGE;
        const idx_t oc = (cbase + c) * HV + hv, r0 = bos + (idx_t)c * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        ld_qk<E, KP>(b, q, r0, L, h, H, K, tid);
        ld_qk<E, KP>(b + 64 * LK, k, r0, L, h, H, K, tid);
        if constexpr (RES) {
            ld_t64<E>(b + 2 * 64 * LK, b + 2 * 64 * LK + 64 * LDT, tm, oc, nch, HV, tid);
        } else {
            tile_ld<E>(b + 2 * 64 * LK, LK, w + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
            if (SP == 2) tile_ld<E>(b + 3 * 64 * LK, LK, w + wplane + oc * 64 * KP, KP, 64, KP, 64, KP, true, tid, DNT);
        }
        ld_v<E>(b + 2 * 64 * LK + SP * 64 * (RES ? LDT : LK), LDS, d_o, r0, L, hv, HV, V, j0, BV, tid);
        if (!FD) tile_ld<float>(f, BV, dvl + oc * 64 * (idx_t)VP + j0, VP, 64, BV, 64, BV, true, tid, DNT);
        float* fg2 = f + (1 - FD) * 64 * BV;
        ld_g64(fg2, g2 + oc * 64, tid);
        ld_rf_cp(fg2 + 64, rq, r0, L, h, H, tid);
        ld_rf_cp(fg2 + 128, rk, r0, L, h, H, tid);
        if (RES) ld_bt_cp(fg2 + 192, bt, r0, L, hv, HV, tid);
        if constexpr (PL) {
            ld_t64<E>(sP, sPl, pm, oc, nch, HV, tid);
        }
    };
    // two stages: chunk c - 1's loads are issued at the top of chunk c, once every warp has
    // passed chunk c + 1's last barrier (so has finished reading their stage, chunk c + 1's);
    // they land while chunk c is computed
    if (NS > 1 && nc > 0) {
        load(nc - 1, 0);
        cp_commit();
    }
    for (int c = nc - 1; c >= 0; --c) {
        const int st = (nc - 1 - c) % NS;
        const idx_t oc = (cbase + c) * HV + hv;
        if (NS == 1) {
            load(c, 0);
            cp_commit();
        }
        E* sQ = sStage + st * STAGE;
        E* sK = sQ + 64 * LK;
        E* sW = sK + 64 * LK;  // w (hi, lo), or T (RES)
        E* sWl = sW + (SP - 1) * 64 * (RES ? LDT : LK);
        E* sDo = sW + SP * 64 * (RES ? LDT : LK);
        const float* sDv = sF + st * FSTAGE;
        const float* sG = sDv + (1 - FD) * 64 * BV;  // G, rq, rk (RES: beta)
        const float* sRq = sG + 64;
        const float* sRk = sG + 128;
        h_store<E, KP, BV>(dS, sS, wm, sn0, fg, ft);
        if (NS > 1 && c > 0) {
            load(c - 1, (nc - c) % NS);
            cp_commit();
        }
        if (NS > 1 && c > 0) {
            cp_wait<1>();
        } else {
            cp_wait0();
        }
        __syncthreads();
        h_copy<E, KP, BV>(dhs + oc * (idx_t)KP * VP + j0, sS, VP, tid);
        const float glast = sG[63];
        E* sDoX = FD ? sDoS : sDo;  // the dS update's operand scale exp(G) do
        if constexpr (FD) {
            if constexpr (!PL) chunk_p<E, KP>(sP, sPl, sQ, sK, sG, sRq, sRk, scale, wp, lane);
            rows_scale_qe<E, WGS>(sDoS, sDo, LDS, BV, scale, sRq, sG, tid);
            if constexpr (WGS) wg_fence_proxy();
            __syncthreads();
        }
        {
            // dU = dvl + exp(G_last - G) rk (K dS): each warp 16 rows x BV / 2 columns
            constexpr int NT = BV / 16;
            const int mt = wp & 3, n1 = (wp >> 2) * (BV / 2);
            float acc[NT][4], dv[NT][4];
            frag_zero(acc);
            wgemm<false, false, NT>(acc, sK, LK, 16 * mt, sS, LDS, n1, KP, lane);
            if constexpr (FD) {
                frag_zero(dv);
                wgemm2<true, false, NT>(dv, sP, sPl, LDT, 16 * mt, sDo, sDo, LDS, n1, 64, lane, true, false);
            }
            float fd[2];
            frag_rows(fd, 16 * mt, fg, [&](int t) { return sRk[t] * ex2f(glast - sG[t]); });
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    const float f = fd[e >> 1];
                    const float v0 = FD ? dv[nt][e] : sDv[t * BV + jj], v1 = FD ? dv[nt][e + 1] : sDv[t * BV + jj + 1];
                    const float d0 = v0 + f * acc[nt][e], d1 = v1 + f * acc[nt][e + 1];
                    st2_pair(sDu, sDul, t * LDS + jj, -d0, -d1);
                }
            }
        }
        if (!FD) rows_scale_qe<E>(sDo, sDo, LDS, BV, scale, sRq, sG, tid);
        __syncthreads();
        // (the dU step above was the last reader of chunk c's P: RES puts Y there below)
        // dU (split) leaves as the negation of -dU's planes (rounding is odd: the planes of -x
        // are those of x negated), coalesced
        tile_st_neg<E>(du + oc * 64 * (idx_t)VP + j0, VP, sDu, LDS, 64, BV, tid, DNT);
        if (SP == 2) tile_st_neg<E>(du + vplane + oc * 64 * (idx_t)VP + j0, VP, sDul, LDS, 64, BV, tid, DNT);
        if constexpr (RES) {
            // Y = T^T (-dU), each warp 16 rows x BV / 2 columns, then Y diag(beta rk exp(G))
            // (split) into P's tile, which the dU step above was the last to read
            constexpr int NT = BV / 16;
            const int mt = wp & 3, n1 = (wp >> 2) * (BV / 2);
            const float* sBt = sG + 192;
            float acc[NT][4];
            frag_zero(acc);
            wgemm2<true, false, NT>(acc, sW, sWl, LDT, 16 * mt, sDu, sDul, LDS, n1, 64, lane, true, true);
            float fy[2];
            frag_rows(fy, 16 * mt, fg, [&](int t) { return sBt[t] * sRk[t] * ex2f(sG[t]); });
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    const float f = fy[e >> 1];
                    if constexpr (WGS) {
                        st2_pair(sP, sP + 64 * 64, wg_el<64>(t, jj), f * acc[nt][e], f * acc[nt][e + 1]);
                    } else {
                        st2_pair(sP, sPl, t * LDS + jj, f * acc[nt][e], f * acc[nt][e + 1]);
                    }
                }
            }
            if constexpr (WGS) wg_fence_proxy();
        }
        if (RES) __syncthreads();
        const float dec = ex2f(glast);
        if constexpr (WGS) {
            // dS = exp(G_last) dS + Qn^T (scale exp(G) do) + K^T Y on warpgroup products: warp wp's
            // accumulators are the m64n64 fragments of its warpgroup's rows 16 wp .. (MS = 1, WM =
            // 8), A from registers (loaded as the mma.sync products load it), B MN-major from the
            // swizzled tiles; the terms in the order of the products below
            float(&d)[32] = *reinterpret_cast<float(*)[32]>(&dS[0]);
            #pragma unroll
            for (int i = 0; i < 32; ++i) d[i] *= dec;
            const WAddrA<true> wq(sQ, LK, 16 * wm, lane), wk(sK, LK, 16 * wm, lane);
            unsigned aq[4][4], ak[4][4];
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                wq.load(aq[kk], kk);
                wk.load(ak[kk], kk);
            }
            const unsigned ud = smem_addr(sDoS), uy = smem_addr(sP);
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_m64n64k16_rs<1>(d, aq[kk], wg_desc(ud + 2048u * kk, 8192, 1024));
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                wg_m64n64k16_rs<1>(d, ak[kk], wg_desc(uy + 2048u * kk, 8192, 1024));
                if (SP == 2) wg_m64n64k16_rs<1>(d, ak[kk], wg_desc(uy + 8192u + 2048u * kk, 8192, 1024));
            }
            wg_commit();
            wg_wait0();
        } else {
            #pragma unroll
            for (int ms = 0; ms < MS; ++ms) {
                #pragma unroll
                for (int qq = 0; qq < NSN; ++qq) {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) dS[ms][qq][e] *= dec;
                }
                wgemm<true, false, NSN>(dS[ms], sQ, LK, 16 * (wm + WM * ms), sDoX, LDS, sn0, 64, lane);
                if constexpr (RES) {
                    wgemm2<true, false, NSN>(dS[ms], sK, sK, LK, 16 * (wm + WM * ms), sP, sPl, LDS, sn0, 64, lane, false, true);
                } else {
                    wgemm2<true, false, NSN>(dS[ms], sW, sWl, LK, 16 * (wm + WM * ms), sDu, sDul, LDS, sn0, 64, lane, true, true);
                }
            }
        }
        __syncthreads();
    }
    h_fini<KP, BV>(dS, dh0, o_state, K, V, j0, wm, sn0, fg, ft);
}

#define H_ENTRY(PFX, KP, NS, BV, NAME, E) H_ENTRY_LB(PFX, KP, NS, BV, (DNT), NAME, E)
// LB: the launch bounds, (DNT) or (DNT, blocks per SM)
#define H_ENTRY_LB(PFX, KP, NS, BV, LB, NAME, E)                                                         \
extern "C" __global__ void __launch_bounds__ LB PFX##_k##KP##_##NAME(                                    \
    const E* w, const float* u, const E* k, const float* rk, const float* g2, const float* h0, E* hs,    \
    E* vn, float* ht, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, int V, int VP,  \
    idx_t nch) {                                                                                         \
    h_fwd<E, KP, NS, BV>(w, u, k, rk, g2, h0, hs, vn, ht, bounds, chunk_off, H, HV, K, V, VP, nch);      \
}
// the residual forward (bf16; h_fwd's RES): delta_h's arguments, w and u unread (may be null),
// then T (delta_wyt's), v and beta
#define HR_ENTRY(PFX, KP, NS, BV, LB)                                                                     \
extern "C" __global__ void __launch_bounds__ LB PFX##_k##KP##_bf16(                                       \
    const bf16_t* w, const float* u, const bf16_t* k, const float* rk, const float* g2, const float* h0, \
    bf16_t* hs, bf16_t* vn, float* ht, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, \
    int V, int VP, idx_t nch, const bf16_t* tm, const bf16_t* v, const float* bt, int nh0) {             \
    h_fwd<bf16_t, KP, NS, BV, true>(w, u, k, rk, g2, h0, hs, vn, ht, bounds, chunk_off, H, HV, K, V, VP, \
                                    nch, tm, v, bt, nullptr, nullptr, nullptr, 0.f, nh0);                 \
}
// the residual forward with the output fused in (bf16; h_fwd's FO): delta_hr's arguments (hs and
// vn written where not null), then q, rq (null: no norm), o and the scale
#define HRO_ENTRY(PFX, KP, NS, BV, LB)                                                                    \
extern "C" __global__ void __launch_bounds__ LB PFX##_k##KP##_bf16(                                       \
    const bf16_t* w, const float* u, const bf16_t* k, const float* rk, const float* g2, const float* h0, \
    bf16_t* hs, bf16_t* vn, float* ht, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, \
    int V, int VP, idx_t nch, const bf16_t* tm, const bf16_t* v, const float* bt, const bf16_t* q,        \
    const float* rq, bf16_t* o, float scale) {                                                            \
    h_fwd<bf16_t, KP, NS, BV, true, true>(w, u, k, rk, g2, h0, hs, vn, ht, bounds, chunk_off, H, HV, K,  \
                                          V, VP, nch, tm, v, bt, q, rq, o, scale);                        \
}
// the same with P read (h_fwd's PL): delta_hro's arguments, then pm (delta_pm's)
#define HROP_ENTRY(PFX, KP, NS, BV, LB)                                                                   \
extern "C" __global__ void __launch_bounds__ LB PFX##_k##KP##_bf16(                                       \
    const bf16_t* w, const float* u, const bf16_t* k, const float* rk, const float* g2, const float* h0, \
    bf16_t* hs, bf16_t* vn, float* ht, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, \
    int V, int VP, idx_t nch, const bf16_t* tm, const bf16_t* v, const float* bt, const bf16_t* q,        \
    const float* rq, bf16_t* o, float scale, const bf16_t* pm) {                                          \
    h_fwd<bf16_t, KP, NS, BV, true, true, true>(w, u, k, rk, g2, h0, hs, vn, ht, bounds, chunk_off, H,   \
                                                HV, K, V, VP, nch, tm, v, bt, q, rq, o, scale, 0, pm);    \
}
#define HB_ENTRY(PFX, KP, BV, NAME, E) HB_ENTRY_FD(PFX, KP, BV, false, 1, NAME, E)
// FD: dvl fused in (the `_dv` entries; their dvl argument is unread); NS: cp.async stages
#define HB_ENTRY_FD(PFX, KP, BV, FD, NS, NAME, E)                                                        \
extern "C" __global__ void __launch_bounds__(DNT) PFX##_k##KP##_##NAME(                                  \
    const E* q, const E* k, const float* rq, const float* rk, const E* w, const E* d_o, const float* dvl,\
    const float* g2, const float* dht, E* dhs, E* du, float* dh0, const idx_t* bounds,                   \
    const idx_t* chunk_off, int H, int HV, int K, int V, int VP, float scale, idx_t nch) {               \
    h_bwd<E, KP, BV, FD, NS>(q, k, rq, rk, w, d_o, dvl, g2, dht, dhs, du, dh0, bounds, chunk_off, H, HV, \
                             K, V, VP, scale, nch);                                                      \
}

// NS: the forward state pass's cp.async stages, 2 where they fit in shared memory (bf16, KP <= 128),
// else 1; BV: 64 value columns per block, or 32 (bf16, the `_v32` entries) where 64 leaves
// fewer than two blocks per SM; `_b2` / `_v32b2` (bf16, KP <= 128): one stage, built for two
// blocks per SM (<= 128 registers). src/delta/dispatch.rs picks (h_plan), and sizes the launches
// to match.
H_ENTRY(delta_h, 64, 1, 64, f32, float)
H_ENTRY(delta_h, 128, 1, 64, f32, float)
H_ENTRY(delta_h, 64, 2, 64, bf16, bf16_t)
H_ENTRY(delta_h, 128, 2, 64, bf16, bf16_t)
H_ENTRY(delta_h, 192, 1, 64, bf16, bf16_t)
H_ENTRY(delta_h, 256, 1, 64, bf16, bf16_t)
H_ENTRY(delta_h_v32, 64, 2, 32, bf16, bf16_t)
H_ENTRY(delta_h_v32, 128, 2, 32, bf16, bf16_t)
H_ENTRY(delta_h_v32, 192, 1, 32, bf16, bf16_t)
H_ENTRY(delta_h_v32, 256, 1, 32, bf16, bf16_t)
H_ENTRY_LB(delta_h_b2, 64, 1, 64, (DNT, 2), bf16, bf16_t)
H_ENTRY_LB(delta_h_b2, 128, 1, 64, (DNT, 2), bf16, bf16_t)
H_ENTRY_LB(delta_h_v32b2, 64, 1, 32, (DNT, 2), bf16, bf16_t)
H_ENTRY_LB(delta_h_v32b2, 128, 1, 32, (DNT, 2), bf16, bf16_t)
// the residual forward (src/delta/dispatch.rs h_res): `_b2` 64 columns, one stage built for two
// blocks per SM; `_v32` 32 columns, two stages, one block per SM
HR_ENTRY(delta_hr_b2, 64, 1, 64, (DNT, 2))
HR_ENTRY(delta_hr_b2, 128, 1, 64, (DNT, 2))
HR_ENTRY(delta_hr_v32, 64, 2, 32, (DNT))
HR_ENTRY(delta_hr_v32, 128, 2, 32, (DNT))
// K wider than 128 (src/delta/dispatch.rs h_res, HR_S2): 64 columns, two stages, one block
// per SM; at KP <= 128 the full waves before a 32-column tail (src/delta/dispatch.rs hr_tail)
HR_ENTRY(delta_hr_s2, 64, 2, 64, (DNT))
HR_ENTRY(delta_hr_s2, 128, 2, 64, (DNT))
HR_ENTRY(delta_hr_s2, 192, 2, 64, (DNT))
HR_ENTRY(delta_hr_s2, 256, 2, 64, (DNT))
// the same with the output fused in (src/delta/dispatch.rs res_out)
HRO_ENTRY(delta_hro_b2, 64, 1, 64, (DNT, 2))
HRO_ENTRY(delta_hro_b2, 128, 1, 64, (DNT, 2))
HRO_ENTRY(delta_hro_v32, 64, 2, 32, (DNT))
HRO_ENTRY(delta_hro_v32, 128, 2, 32, (DNT))
HRO_ENTRY(delta_hro_s2, 192, 2, 64, (DNT))
HRO_ENTRY(delta_hro_s2, 256, 2, 64, (DNT))
// P read from delta_pm (src/delta/dispatch.rs hro_pm: KP 192 and 256; KP <= 128 under the lab's `fp=1`)
HROP_ENTRY(delta_hrop_b2, 64, 1, 64, (DNT, 2))
HROP_ENTRY(delta_hrop_b2, 128, 1, 64, (DNT, 2))
HROP_ENTRY(delta_hrop_s2, 192, 2, 64, (DNT))
HROP_ENTRY(delta_hrop_s2, 256, 2, 64, (DNT))
HB_ENTRY(delta_h_bwd, 64, 64, f32, float)
HB_ENTRY(delta_h_bwd, 128, 64, f32, float)
// the state-gradient pass's stages as the forward's (NS above; src/delta/dispatch.rs h_stages)
HB_ENTRY_FD(delta_h_bwd, 64, 64, false, 2, bf16, bf16_t)
HB_ENTRY_FD(delta_h_bwd, 128, 64, false, 2, bf16, bf16_t)
HB_ENTRY(delta_h_bwd, 192, 64, bf16, bf16_t)
HB_ENTRY(delta_h_bwd, 256, 64, bf16, bf16_t)
HB_ENTRY_FD(delta_h_bwd_v32, 64, 32, false, 2, bf16, bf16_t)
HB_ENTRY_FD(delta_h_bwd_v32, 128, 32, false, 2, bf16, bf16_t)
HB_ENTRY(delta_h_bwd_v32, 192, 32, bf16, bf16_t)
HB_ENTRY(delta_h_bwd_v32, 256, 32, bf16, bf16_t)
HB_ENTRY_FD(delta_h_bwd_dv2, 64, 64, true, 2, bf16, bf16_t)
HB_ENTRY_FD(delta_h_bwd_dv2, 128, 64, true, 2, bf16, bf16_t)
// the residual state-gradient pass (RES, after the residual forward): delta_h_bwd_dv2's
// arguments, w unread (may be null), then T (delta_wyt's), beta and nh0, the sequence x value
// head of blockIdx.y = 0 (a launch may cover the heads from nh0 on). `_rdv2`: dvl fused in (dvl
// unread), 64 columns; `_rdv2_v32`: the same on 32 columns (the heads of a partial last wave of
// 64-column tiles, src/delta/dispatch.rs hb_tail); `_rv32`: dvl read (delta_dvl's), 32 columns
// (long sequences); all two stages. `_rs1` (KP 192, 256): dvl read, 64 columns, one stage (two
// do not fit beside q and k).
#define HBR_ENTRY(PFX, KP, BV, FD, NS) HBR_ENTRY_G(PFX, KP, BV, FD, NS, false)
// WGS: the dS update on warpgroup products (h_bwd's WGS; sm_90a, other targets compile a trap)
#define HBR_ENTRY_G(PFX, KP, BV, FD, NS, WGS)                                                             \
extern "C" __global__ void __launch_bounds__(DNT) PFX##_k##KP##_bf16(                                     \
    const bf16_t* q, const bf16_t* k, const float* rq, const float* rk, const bf16_t* w,                  \
    const bf16_t* d_o, const float* dvl, const float* g2, const float* dht, bf16_t* dhs, bf16_t* du,      \
    float* dh0, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, int V, int VP,         \
    float scale, idx_t nch, const bf16_t* tm, const float* bt, int nh0) {                                 \
    h_bwd<bf16_t, KP, BV, FD, NS, true, false, WGS>(q, k, rq, rk, w, d_o, dvl, g2, dht, dhs, du, dh0,     \
                                                    bounds, chunk_off, H, HV, K, V, VP, scale, nch, tm,   \
                                                    bt, nh0);                                             \
}
// the same with P read (h_bwd's PL; dvl fused in, one stage): delta_h_bwd_rdv1's arguments, then
// pm (delta_pm's)
#define HBRP_ENTRY(PFX, KP)                                                                               \
extern "C" __global__ void __launch_bounds__(DNT) PFX##_k##KP##_bf16(                                     \
    const bf16_t* q, const bf16_t* k, const float* rq, const float* rk, const bf16_t* w,                  \
    const bf16_t* d_o, const float* dvl, const float* g2, const float* dht, bf16_t* dhs, bf16_t* du,      \
    float* dh0, const idx_t* bounds, const idx_t* chunk_off, int H, int HV, int K, int V, int VP,         \
    float scale, idx_t nch, const bf16_t* tm, const float* bt, int nh0, const bf16_t* pm) {               \
    h_bwd<bf16_t, KP, 64, true, 1, true, true>(q, k, rq, rk, w, d_o, dvl, g2, dht, dhs, du, dh0, bounds,  \
                                               chunk_off, H, HV, K, V, VP, scale, nch, tm, bt, nh0, pm);  \
}
HBR_ENTRY(delta_h_bwd_rdv2, 64, 64, true, 2)
HBR_ENTRY(delta_h_bwd_rdv2, 128, 64, true, 2)
HBR_ENTRY(delta_h_bwd_rdv2_v32, 64, 32, true, 2)
HBR_ENTRY(delta_h_bwd_rdv2_v32, 128, 32, true, 2)
HBR_ENTRY(delta_h_bwd_rv32, 64, 32, false, 2)
HBR_ENTRY(delta_h_bwd_rv32, 128, 32, false, 2)
HBR_ENTRY(delta_h_bwd_rs1, 192, 64, false, 1)
HBR_ENTRY(delta_h_bwd_rs1, 256, 64, false, 1)
// `_rs1` with dvl fused in (src/delta/dispatch.rs HBR_D1; `_rs1` under the lab's `hb=rs1`)
HBR_ENTRY(delta_h_bwd_rdv1, 192, 64, true, 1)
HBR_ENTRY(delta_h_bwd_rdv1, 256, 64, true, 1)
// `_rdv1` with P read from delta_pm (src/delta/dispatch.rs hb_pm; `_rdv1` under the lab's `bp=0`)
HBRP_ENTRY(delta_h_bwd_rdvp1, 192)
HBRP_ENTRY(delta_h_bwd_rdvp1, 256)
// the default on sm_90a (src/delta/dispatch.rs hb_launch; the lab's `hg=0` runs `_rdv2`):
// `_rdv2` at KP 128 with the dS update on warpgroup products, which read each B operand once
// per warpgroup where the mma.sync products load it into every warp (the pass waits on shared
// memory: Nsight Compute on an H100, bench/results/2026-12-07_h100_3c333ed_delta_w16_labs.txt)
HBR_ENTRY_G(delta_h_bwd_wg_rdv2, 128, 64, true, 2, true)
