// delta/chunk_bwd.cu: the chunk-parallel launches of the chunked delta rule's backward (gradient
// of L = <do, o> + <dht, S_T>). Per chunk, with U = v_new, S = hs[c] (the state entering the
// chunk), dS' = dhs[c] (the gradient of the state leaving it), dU = du (delta/chunk_h.cu), M the
// scaled, decayed, causal Qn Kn^T (= P of the forward), Gm = G_last, Qn / Kn the L2-normalised q
// and k (row factors rq, rk, delta/chunk.cuh); dq and dk are the gradients at Qn and Kn:
//
// delta_dvl_k{KP}: dvl = P^T do                            (=, f32 [chunks, HV, 64, VP])
// delta_dqk_k{KP}: grid z over K tiles of KW columns:
//     dq   = scale exp(G) (do S^T) + (dM * M / m) Kn         dM = do U^T masked, M/m the decay
//     dk   = (dM * M / m)^T Qn + exp(Gm - G) (U dS'^T)
//     dG  += qn . dq_inter + rowsum(dM * M) - colsum(dM * M) - kn . dk_Kd, and at the last row
//            exp(Gm) <S, dS'> + sum kn . dk_Kd             (=, dgp [KZ][chunks, HV, 64] f32)
//   dq, dk (=, f32 [rows, HV, K]: per value head; delta_qk_bwd_* sums the group).
//   bf16 runs it as delta_dqk_s2_k{KP}_bf16, the V tiles in two buffers (tile v + 1 loads during
//   tile v), or on sm_90a as delta_dqk_wg_k{KP}_bf16 (KP 64, 128, 256: K tiles of whole 64-column
//   blocks), the same on Hopper's warpgroup products; f32 keeps one buffer, and so do the
//   delta_dqk_k{192,256}_bf16 entries (the lab's dq=s1).
// delta_wy_bwd_k{KP}: back through w = T (beta exp(G) Kn), u = T (beta V), T = (I + A)^-1:
//     dw = -dU S^T (split, in shared memory: w's gradient, since U = u - w S)
//     dT = dU (beta V)^T + dw (beta exp(G) Kn)^T;  dA = -T^T dT T^T (strictly lower)
//     dv = beta T^T dU (=);  dk += beta exp(G) T^T dw + dAb Kn + dAb^T Kn (dAb = dA beta exp(G_t - G_s))
//     dbeta = rowsum(V * T^T dU) + exp(G) kn . T^T dw + rowsum(dA exp(G_t - G_s) Kn Kn^T)   (=)
//     dG += beta exp(G) kn . T^T dw + rowsum(dA * A) - colsum(dA * A); dg = the reverse cumsum
//     of dG over the chunk (=, the log decay's gradient [rows, HV] f32)
// The operands with cancellation (P, U, dU, dw, T, dT, T^T dT, dAb) are split (delta/common.cuh).
// Every sum is in a fixed order (no atomics). Blocks per SM at KP = VP = 128 (bf16): delta_dvl
// three (registers <= 80), delta_wy_bwd two (registers <= 128; dw's tiles (dU, S) and then the
// V and dU tiles share one region with X and P, dw's second tile buffer lies over K and dw before
// they are loaded, and the row and column sums of dA * A come from the fragments). delta_wy_bwd_vb2_k256_bf16: the same with the V-tile loop's
// tiles in two buffers of that region (tile v + 1 lands while tile v is computed). The
// derivation: the chain rule through the chunk form of docs/kernels.md's delta-rule section.
//
// Entry points (KP = K padded to 64 .. 256; f32 storage up to 128):
//   delta_dvl_k64_f32 delta_dvl_k128_f32 delta_dvl_k64_bf16 delta_dvl_k128_bf16 delta_dvl_k192_bf16 delta_dvl_k256_bf16
//   delta_dqk_k64_f32 delta_dqk_k128_f32 delta_dqk_s2_k64_bf16 delta_dqk_s2_k128_bf16 delta_dqk_k192_bf16 delta_dqk_k256_bf16
//   delta_dqk_s2_k192_bf16 delta_dqk_s2_k256_bf16
//   delta_dqk_wg_k64_bf16 delta_dqk_wg_k128_bf16 delta_dqk_wg_k256_bf16 (sm_90a; other targets compile them to a trap)
//   delta_dqk_wg_d1_k128_bf16 delta_dqk_wg_d1_k256_bf16 delta_dqk_wg_b2_k128_bf16 (sm_90a)
//   delta_wy_bwd_k64_f32 delta_wy_bwd_k128_f32 delta_wy_bwd_k64_bf16 delta_wy_bwd_k128_bf16 delta_wy_bwd_k192_bf16 delta_wy_bwd_k256_bf16
//   delta_wy_bwd_vb2_k256_bf16 delta_wy_bwd_m1_k128_bf16 delta_wy_bwd_vb2_m1_k256_bf16
//   delta_wy_bwd_wg_m1_k128_bf16 (sm_90a; other targets compile it to a trap)

template <typename E, int KP>
__device__ __forceinline__ void dvl_k(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const E* __restrict__ d_o, const float* __restrict__ g2,
                                      float* __restrict__ dvl, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
                                      const int* __restrict__ chunk_seq, int H, int HV, int K, int V, int VP, float scale) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    DELTA_SMEM(smem);
    E* sQ = (E*)smem;                      // [64][LK]
    E* sK = sQ + 64 * LK;                  // [64][LK]
    E* sP = sK + 64 * LK;                  // [64][LDT]
    E* sPl = sP + (SP - 1) * 64 * LDT;
    E* sDo = sPl + 64 * LDT;               // [64][LDT]
    float* sG = (float*)(sDo + 64 * LDT);  // [64]
    float* sRq = sG + 64;
    float* sRk = sRq + 64;
    DELTA_SMEM_END(smem, sRk + 64);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    ld_chunk_p_in<E, KP>(sQ, sK, sG, sRq, sRk, q, k, g2, rq, rk, c, H, K, tid, [] {});
    chunk_p<E, KP>(sP, sPl, sQ, sK, sG, sRq, sRk, scale, wp, lane);
    const int mt = tri_mt(wp), n1 = (wp >> 2) * 32;
    for (int v0 = 0; v0 < VP; v0 += 64) {
        ld_v<E>(sDo, LDT, d_o, c.r0, c.L, c.hv, HV, V, v0, 64, tid);
        cp_commit();
        cp_wait0();
        __syncthreads();
        float acc[4][4];
        frag_zero(acc);
        // P^T's rows 16 mt .. 16 mt + 16 start at depth 16 mt (P is causal)
        wgemm2<true, false, 4>(acc, sP, sPl, LDT, 16 * mt, sDo, sDo, LDT, n1, 64, lane, true, false, 16 * mt);
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int s = 16 * mt + FRAG_ROW(e), j = v0 + n1 + FRAG_COL(nt, e);
                st_pair(dvl + (c.oc * 64 + s) * VP + j, acc[nt][e], acc[nt][e + 1]);
            }
        }
        __syncthreads();
    }
}

// K tile of delta_dqk_*: the whole K for bf16 up to 128, else halves (f32: 64)
template <typename E, int KP>
struct DqkTile {
    static constexpr int KW = (sizeof(E) == 2 && KP <= 128) ? KP : (KP == 64 ? 64 : KP / 2);
};

// acc += (A + Al) B over a depth of 64: dqk_k's dq and dk products on warpgroups. A, Al: the
// split 64 x 64 dMG tiles at shared addresses a, al (swizzled; TA: MN-major, the tile's rows
// are the product's K), B MN-major at b (16 of its rows a k16 step); per step A B, then Al B
// (wgemm2's order); LO false: A B alone (dMG on one plane). Fenced, committed and waited for.
template <int NT, int TA, bool LO = true>
__device__ __forceinline__ void wg_dmg_mma(float (&acc)[NT][4], unsigned a, unsigned al, unsigned b) {
    wg_fence();
    #pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const unsigned oa = TA ? 2048u * kk : 32u * kk, lbo = TA ? 8192u : 16u;
        const unsigned long long db = wg_desc(b + 2048u * kk, 8192, 1024);
        wg_mma_frag<NT, TA, 1>(acc, wg_desc(a + oa, lbo, 1024), db);
        if (LO && Sp<bf16_t>::SP == 2) wg_mma_frag<NT, TA, 1>(acc, wg_desc(al + oa, lbo, 1024), db);
    }
    wg_commit();
    wg_wait0();
}

// NB: buffers of the V tiles (do, U, dU, S, dS); with two (the `_s2` entries) tile v + 1 loads
// while tile v is computed, and dMG takes the second buffer once the tiles are done.
// WG (bf16, two buffers, KW a multiple of 64: the `_wg` entries, sm_90a): the products on Hopper's
// warpgroup products instead of mma.sync. The warp grid wp = 4 cs + mt is already the wgmma
// layout (warpgroup cs, its warp mt on rows 16 mt ..), so each warpgroup's accumulators are the
// same fragments; the tiles are 128-byte swizzled and unpadded (wg_el), every split product's
// terms run per k16 step in wgemm2's order (A B, then Al B or A Bl), so the sums are the same
// adds in the same order. The V tile's products are issued at once and <S, dS'> is summed while
// they run. D1 (the default at KP 128 and 256; the lab's `dm=0` keeps dMG split): dMG on one
// bf16 plane, so its two products drop their lo terms. B2 (WG, one buffer, D1: the `_wg_b2`
// entry, built for two blocks per SM): M formed after the V loop, in the registers of the
// fragments that read it, instead of into sM before it, and dMG on one plane of its own, so the
// block needs 100 KB at KP 128; the same products and bits.
template <typename E, int KP, int NB, bool WG, bool D1 = false, bool B2 = false>
__device__ __forceinline__ void dqk_k(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const E* __restrict__ d_o, const E* __restrict__ vn,
                                      const E* __restrict__ hs, const E* __restrict__ dhs, const float* __restrict__ g2,
                                      float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dgp,
                                      const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
                                      const int* __restrict__ chunk_seq, int H, int HV, int K, int V, int VP, float scale, idx_t nch) {
    // NW warps in CS column splits (4 row tiles each): a warp's 16 x 64 / CS tile of M and dM
    // (NM n8-tiles), 16 x KW / CS of dq, dk (NT n8-tiles)
    constexpr int NW = DNT / 32, CS = NW / 4, NM = 8 / CS;
    constexpr int SP = Sp<E>::SP, KW = DqkTile<E, KP>::KW, NT = KW / (8 * CS);
    static_assert(NB == 1 || NB == 2, "one or two V-tile buffers");
    static_assert(!WG || (sizeof(E) == 2 && (NB == 2 || B2)), "the warpgroup entries: bf16, two buffers (B2: one)");
    static_assert(!B2 || (WG && NB == 1 && D1), "B2: warpgroups, one buffer, dMG on one plane");
    // row strides: padded (mma.sync), or the swizzled tiles' (wg_el: 64-column blocks)
    constexpr int LK = WG ? KP : KP + DPAD, LV = WG ? 64 : LDT;
    constexpr int VBUF = (1 + SP) * 64 * LV + 2 * KW * LV;  // do, U (split), S, dS
    DELTA_SMEM(smem0);
    unsigned char* smem = WG ? wg_align1024(smem0) : smem0;
    E* sQ = (E*)smem;                      // [64][LK]
    E* sK = sQ + 64 * LK;                  // [64][LK]
    E* sVb = sK + 64 * LK;                 // [NB][VBUF]: do, U [64][LV]; S, dS [KW][LV]
    E* sDMG = sVb + VBUF;                  // [SP][64][LV]: after one buffer, or the second (B2: [64][LV])
    E* sDMGl = sDMG + (SP - 1) * 64 * LV;
    float* sM = (float*)(sVb + NB * VBUF + (B2 ? 64 * LV : (2 - NB) * SP * 64 * LV));  // [64][65] (B2: none)
    float* sG = sM + (B2 ? 0 : 64 * 65);   // [64]
    float* sRq = sG + 64;                  // [64]
    float* sRk = sRq + 64;                 // [64]
    float* sRow = sRk + 64;                // [CS][64]
    float* sRed = sRow + CS * 64;          // [2][NW]
    float* sFr = sRed + 2 * NW;            // [CS][64]: row sums of dM * M (per column split)
    float* sFc = sFr + CS * 64;            // [4][64]: column sums of dM * M (per row quarter)
    DELTA_SMEM_END(smem0, sFc + 256);
    wg_sm90a_only(WG);
    // element (r, c) of a tile of row stride ld (the swizzled layout's: its 64-column blocks)
    auto ix = [](int r, int c, int ld) {
        if constexpr (WG) {
            return wg_el<64>(r, c);
        } else {
            return r * ld + c;
        }
    };
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    const int z = blockIdx.z, k0 = z * KW;
    const idx_t vplane = nch * HV * 64 * VP;
    // the V tile at v0 of do, U (split) and the K tile's rows of S, dS into buffer b
    auto ld_tiles = [&](int v0, int b) {
        E* sDo = sVb + b * VBUF;
        E* sU = sDo + 64 * LV;
        E* sUl = sU + (SP - 1) * 64 * LV;
        E* sS = sUl + 64 * LV;
        E* sDS = sS + KW * LV;
        const idx_t vo = c.oc * 64 * (idx_t)VP + v0;
        const idx_t so = c.oc * (idx_t)KP * VP + (idx_t)k0 * VP + v0;
        if constexpr (WG) {
            wg_tile_ld<64, 64, DNT>(sDo, d_o + (c.r0 * HV + c.hv) * (idx_t)V + v0, (idx_t)HV * V, c.L, V - v0, vec_ok<E>((idx_t)HV * V, V),
                               tid);
            wg_tile_ld<64, 64, DNT>(sU, vn + vo, VP, 64, 64, true, tid);
            if (SP == 2) wg_tile_ld<64, 64, DNT>(sUl, vn + vplane + vo, VP, 64, 64, true, tid);
            wg_tile_ld<KW, 64, DNT>(sS, hs + so, VP, KW, 64, true, tid);
            wg_tile_ld<KW, 64, DNT>(sDS, dhs + so, VP, KW, 64, true, tid);
        } else {
            ld_v<E>(sDo, LDT, d_o, c.r0, c.L, c.hv, HV, V, v0, 64, tid);
            tile_ld<E>(sU, LDT, vn + vo, VP, 64, 64, 64, 64, true, tid, DNT);
            if (SP == 2) tile_ld<E>(sUl, LDT, vn + vplane + vo, VP, 64, 64, 64, 64, true, tid, DNT);
            tile_ld<E>(sS, LDT, hs + so, VP, KW, 64, KW, 64, true, tid, DNT);
            tile_ld<E>(sDS, LDT, dhs + so, VP, KW, 64, KW, 64, true, tid, DNT);
        }
        cp_commit();
    };
    if constexpr (WG) {
        // q and k in loads of at most 128 columns (two 64-column blocks each)
        const idx_t qo = (c.r0 * H + c.h) * (idx_t)K;
        const bool vq = vec_ok<E>((idx_t)H * K, K);
        constexpr int C0 = KP < 128 ? KP : 128;
        wg_tile_ld<64, C0, DNT>(sQ, q + qo, (idx_t)H * K, c.L, K, vq, tid);
        wg_tile_ld<64, C0, DNT>(sK, k + qo, (idx_t)H * K, c.L, K, vq, tid);
        if constexpr (KP > 128) {
            wg_tile_ld<64, KP - 128, DNT>(sQ + 64 * 128, q + qo + 128, (idx_t)H * K, c.L, K - 128, vq, tid);
            wg_tile_ld<64, KP - 128, DNT>(sK + 64 * 128, k + qo + 128, (idx_t)H * K, c.L, K - 128, vq, tid);
        }
    } else {
        ld_qk<E, KP>(sQ, q, c.r0, c.L, c.h, H, K, tid);
        ld_qk<E, KP>(sK, k, c.r0, c.L, c.h, H, K, tid);
    }
    ld_g64(sG, g2 + c.oc * 64, tid);
    cp_commit();
    // the first V tile's loads land while M is formed
    ld_tiles(0, 0);
    ld_rf(sRq, rq, c.r0, c.L, c.h, H, tid);
    ld_rf(sRk, rk, c.r0, c.L, c.h, H, tid);
    cp_wait<1>();
    if constexpr (WG) wg_fence_proxy();
    __syncthreads();
    const int mt = wp & 3, cs = wp >> 2, n1 = cs * (64 / CS), nk = cs * (KW / CS);
    // M = scale rq_t rk_s exp(G_t - G_s) (Q K^T)_ts (causal) at this thread's fragment
    // positions (the warp's 16 rows x 64 / CS columns), the only ones it reads back, each handed
    // to put(nt, e, t, s, m)
    auto form_m = [&](auto put) {
        float acc[NM][4];
        frag_zero(acc);
        if constexpr (WG) {
            // Q K^T over KP: k16 step kk in 64-column block kk / 4; the warpgroup's keys n1 ..
            const unsigned uq = smem_addr(sQ), uk = smem_addr(sK) + 128u * n1;
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < KP / 16; ++kk) {
                const unsigned o = (unsigned)((kk >> 2) * 64 * 128 + 32 * (kk & 3));
                wg_mma_frag<NM, 0, 0>(acc, wg_desc(uq + o, 16, 1024), wg_desc(uk + o, 16, 1024));
            }
            wg_commit();
            wg_wait0();
        } else {
            wgemm<false, true, NM>(acc, sQ, LK, 16 * mt, sK, LK, n1, KP, lane);
        }
        #pragma unroll
        for (int nt = 0; nt < NM; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e), s = n1 + FRAG_COL(nt, e);
                put(nt, e, t, s, s <= t ? scale * sRq[t] * sRk[s] * acc[nt][e] * ex2f(sG[t] - sG[s]) : 0.f);
            }
        }
    };
    // M into sM while the first V tile lands (B2: formed after the V loop instead, in registers)
    if constexpr (!B2) form_m([&](int, int, int t, int s, float m) { sM[t * 65 + s] = m; });
    float dqi[NT][4], dkd[NT][4], dM[NM][4];
    frag_zero(dqi);
    frag_zero(dkd);
    frag_zero(dM);
    float sd = 0.f;
    for (int v0 = 0; v0 < VP; v0 += 64) {
        // two buffers: tile v0 + 64 into the buffer tile v0 - 64 left (every warp is past it:
        // the barrier that ended its iteration)
        if (NB == 1) {
            if (v0 > 0) ld_tiles(v0, 0);
            cp_wait0();
        } else {
            if (v0 + 64 < VP) {
                ld_tiles(v0 + 64, ((v0 >> 6) + 1) & 1);
            } else {
                cp_commit();
            }
            cp_wait<1>();
        }
        if constexpr (WG) wg_fence_proxy();
        __syncthreads();
        const E* sDo = sVb + (NB == 1 ? 0 : (v0 >> 6) & 1) * VBUF;
        const E* sU = sDo + 64 * LV;
        const E* sUl = sU + (SP - 1) * 64 * LV;
        const E* sS = sUl + 64 * LV;
        const E* sDS = sS + KW * LV;
        if constexpr (WG) {
            // every product of the tile issued at once, per k16 step the split terms in
            // wgemm2's order; waited for after <S, dS'> below
            const unsigned uDo = smem_addr(sDo), uU = smem_addr(sU), uUl = smem_addr(sUl), uS = smem_addr(sS) + 128u * nk,
                           uDS = smem_addr(sDS) + 128u * nk;
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                auto dsc = [&](unsigned a) { return wg_desc(a + 32u * kk, 16, 1024); };
                wg_mma_frag<NT, 0, 0>(dqi, dsc(uDo), dsc(uS));
                wg_mma_frag<NT, 0, 0>(dkd, dsc(uU), dsc(uDS));
                if (SP == 2) wg_mma_frag<NT, 0, 0>(dkd, dsc(uUl), dsc(uDS));
                wg_mma_frag<NM, 0, 0>(dM, dsc(uDo), dsc(uU + 128u * n1));
                if (SP == 2) wg_mma_frag<NM, 0, 0>(dM, dsc(uDo), dsc(uUl + 128u * n1));
            }
            wg_commit();
        } else {
            wgemm<false, true, NT>(dqi, sDo, LDT, 16 * mt, sS, LDT, nk, 64, lane);
            wgemm2<false, true, NT>(dkd, sU, sUl, LDT, 16 * mt, sDS, sDS, LDT, nk, 64, lane, true, false);
            wgemm2<false, true, NM>(dM, sDo, sDo, LDT, 16 * mt, sU, sUl, LDT, n1, 64, lane, false, true);
        }
        // <S, dS'> of the tile, 16 bytes of each per step (the block's sum is fixed in order)
        constexpr int P = 16 / (int)sizeof(E);
        for (int x = tid; x < KW * (64 / P); x += DNT) {
            const int r = x / (64 / P), cc = (x % (64 / P)) * P;
            union {
                uint4 u;
                E v[P];
            } a, b;
            a.u = *(const uint4*)(sS + ix(r, cc, LDT));
            b.u = *(const uint4*)(sDS + ix(r, cc, LDT));
            #pragma unroll
            for (int i = 0; i < P; ++i) sd += to_f32(a.v[i]) * to_f32(b.v[i]);
        }
        if constexpr (WG) wg_wait0();
        __syncthreads();
    }
    // F = dM * M: the warp's row sums (over its 64 / CS columns) and column sums (over its 16
    // rows); the dq operand dMG rk_s (dMG = dM * scale * exp(G_t - G_s), causal)
    {
        float mr[B2 ? NM : 1][4];
        if constexpr (B2) form_m([&](int nt, int e, int, int, float m) { mr[nt][e] = m; });
        float fr[2] = {0.f, 0.f}, fc[NM][2] = {};
        #pragma unroll
        for (int nt = 0; nt < NM; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e), s = n1 + FRAG_COL(nt, e);
                const float f = (B2 ? mr[B2 ? nt : 0][e] : sM[t * 65 + s]) * dM[nt][e];
                fr[e >> 1] += f;
                fc[nt][e & 1] += f;
                dM[nt][e] = s <= t ? dM[nt][e] * scale * ex2f(sG[t] - sG[s]) : 0.f;
                if constexpr (D1) sDMG[ix(t, s, LDT)] = cvt<E>(dM[nt][e] * sRk[s]);  // one plane: lo unread
                else st2(sDMG, sDMGl, ix(t, s, LDT), dM[nt][e] * sRk[s]);
            }
        }
        #pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            fr[hh] = quad_sum(fr[hh]);
            if (ft == 0) sFr[cs * 64 + 16 * mt + fg + 8 * hh] = fr[hh];
        }
        #pragma unroll
        for (int nt = 0; nt < NM; ++nt) {
            #pragma unroll
            for (int j = 0; j < 2; ++j) {
                float x = fc[nt][j];
                x += __shfl_xor_sync(0xffffffffu, x, 4);
                x += __shfl_xor_sync(0xffffffffu, x, 8);
                x += __shfl_xor_sync(0xffffffffu, x, 16);
                if (fg == 0) sFc[mt * 64 + n1 + 8 * nt + 2 * ft + j] = x;
            }
        }
    }
    if constexpr (WG) wg_fence_proxy();
    __syncthreads();
    const float glast = sG[63];
    float rp[2] = {0.f, 0.f}, lastp = 0.f;
    const idx_t o_k = (c.r0 * HV + c.hv) * (idx_t)K;  // row t of dq, dk at o_k + t * HV * K
    // dq
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int t = 16 * mt + FRAG_ROW(e), i = k0 + nk + FRAG_COL(nt, e);
            dqi[nt][e] *= scale * ex2f(sG[t]);
            rp[e >> 1] += sRq[t] * to_f32(sQ[ix(t, i, LK)]) * dqi[nt][e];
        }
    }
    if constexpr (WG) {
        // dMG (K-major) times K (MN-major: the warpgroup's columns k0 + nk .., a 64-column block
        // or the half of one at a 64-byte offset), 16 rows of K a k16 step
        wg_dmg_mma<NT, 0, !D1>(dqi, smem_addr(sDMG), smem_addr(sDMGl), smem_addr(sK) + 128u * 64 * ((k0 + nk) >> 6) + 2u * ((k0 + nk) & 63));
    } else {
        wgemm2<false, false, NT>(dqi, sDMG, sDMGl, LDT, 16 * mt, sK, sK, LK, k0 + nk, 64, lane, !D1, false);
    }
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int t = 16 * mt + FRAG_ROW(e), i = k0 + nk + FRAG_COL(nt, e);
            st_row_pair(dq + o_k + (idx_t)t * HV * K, i, K, t < c.L, dqi[nt][e], dqi[nt][e + 1]);
        }
    }
    __syncthreads();
    // the dk operand rq_t dMG
    #pragma unroll
    for (int nt = 0; nt < NM; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int t = 16 * mt + FRAG_ROW(e), s = n1 + FRAG_COL(nt, e);
            if constexpr (D1) sDMG[ix(t, s, LDT)] = cvt<E>(dM[nt][e] * sRq[t]);  // one plane: lo unread
            else st2(sDMG, sDMGl, ix(t, s, LDT), dM[nt][e] * sRq[t]);
        }
    }
    if constexpr (WG) wg_fence_proxy();
    __syncthreads();
    // dk
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int t = 16 * mt + FRAG_ROW(e), i = k0 + nk + FRAG_COL(nt, e);
            dkd[nt][e] *= ex2f(glast - sG[t]);
            const float x = sRk[t] * to_f32(sK[ix(t, i, LK)]) * dkd[nt][e];
            rp[e >> 1] -= x;
            lastp += x;
        }
    }
    if constexpr (WG) {
        // (rq dMG)^T (MN-major: dMG's rows are the product's K) times Q, as dq's
        wg_dmg_mma<NT, 1, !D1>(dkd, smem_addr(sDMG), smem_addr(sDMGl), smem_addr(sQ) + 128u * 64 * ((k0 + nk) >> 6) + 2u * ((k0 + nk) & 63));
    } else {
        wgemm2<true, false, NT>(dkd, sDMG, sDMGl, LDT, 16 * mt, sQ, sQ, LK, k0 + nk, 64, lane, !D1, false);
    }
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int t = 16 * mt + FRAG_ROW(e), i = k0 + nk + FRAG_COL(nt, e);
            st_row_pair(dk + o_k + (idx_t)t * HV * K, i, K, t < c.L, dkd[nt][e], dkd[nt][e + 1]);
        }
    }
    // the row sums of the dG terms
    rp[0] = quad_sum(rp[0]);
    rp[1] = quad_sum(rp[1]);
    if (ft == 0) {
        sRow[cs * 64 + 16 * mt + fg] = rp[0];
        sRow[cs * 64 + 16 * mt + fg + 8] = rp[1];
    }
    lastp = warp_sum(lastp);
    sd = warp_sum(sd);
    if (lane == 0) {
        sRed[wp] = lastp;
        sRed[NW + wp] = sd;
    }
    __syncthreads();
    if (tid < 64) {
        const int t = tid;
        float g = 0.f, fr = 0.f;
        #pragma unroll
        for (int x = 0; x < CS; ++x) {
            g += sRow[x * 64 + t];
            fr += sFr[x * 64 + t];
        }
        if (z == 0) g += fr - ((sFc[t] + sFc[64 + t]) + (sFc[128 + t] + sFc[192 + t]));
        if (t == c.L - 1) {
            float a = 0.f, b = 0.f;
            for (int x = 0; x < NW; ++x) {
                a += sRed[x];
                b += sRed[NW + x];
            }
            g += a + ex2f(glast) * b;
        }
        dgp[((idx_t)z * nch * HV + c.oc) * 64 + t] = g;
    }
}

template <typename E, int KP, bool VB2 = false, bool M1P = false, bool WG = false>
__device__ __forceinline__ void wy_bwd(const E* __restrict__ k, const float* __restrict__ rk, const E* __restrict__ v,
                                       const float* __restrict__ bt, const E* __restrict__ tm, const E* __restrict__ hs,
                                       const E* __restrict__ du, const float* __restrict__ g2, const float* __restrict__ dgp,
                                       float* __restrict__ dk, float* __restrict__ dv, float* __restrict__ dbeta, float* __restrict__ dg,
                                       const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
                                       const int* __restrict__ chunk_seq, int H, int HV, int K, int V, int VP, int KZ, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    // rows of the region below: X and P (split), or dw's tile (dU split, S's KP rows)
    constexpr int RA = 2 * SP * 64 > KP + SP * 64 ? 2 * SP * 64 : KP + SP * 64;
    static_assert((1 + SP) * 64 * LK >= (KP + SP * 64) * LDT, "dw's second tile buffer fits over sK and sDw");
    // VB2: the V-tile loop's tiles (V, dU split: VT rows of the region) in two buffers
    constexpr int VT = (1 + SP) * 64;
    static_assert(!VB2 || 2 * VT <= RA, "two V-tile buffers fit in the region");
    static_assert(!WG || sizeof(E) == 2, "the warpgroup dw: bf16");
    // WG: dw's tiles swizzled and unpadded (wg_el; every buffer below starts on a 1024-byte
    // boundary: 64 rows of LK or LDT elements are whole KB), the base aligned to 1024 bytes
    DELTA_SMEM(smem0);
    unsigned char* smem = WG ? wg_align1024(smem0) : smem0;
    E* sK = (E*)smem;                      // [64][LK]
    E* sDw = sK + 64 * LK;                 // [64][LK]
    E* sDwl = sDw + (SP - 1) * 64 * LK;
    E* sT = sDwl + 64 * LK;                // [64][LDT]
    E* sTl = sT + (SP - 1) * 64 * LDT;
    // one region, [RA][LDT]: dw's tiles (buffer A), the V-tile loop's sV, sDu, then (once it is
    // done) sDt (dT, then X) and sP
    E* sV = sTl + 64 * LDT;                // [64][LDT]: a 64-column tile of V
    // then the same tile of dU (split), [SP][64][LDT]; VB2: a second V tile and dU after them
    E* sDt = sV;                           // [64][LDT]: dT, then X = T^T dT
    E* sDtl = sDt + (SP - 1) * 64 * LDT;
    // [64][LDT]: P = dAb rk_s + (rk_t dAb)^T (strictly lower and strictly upper: one tile)
    E* sP = sDtl + 64 * LDT;
    E* sPl = sP + (SP - 1) * 64 * LDT;
    float* sG = (float*)(sV + RA * LDT);  // [64]
    float* sB = sG + 64;                   // [64]
    float* sR = sB + 64;                   // [64]
    float* sRb = sR + 64;                  // [2][64]
    float* sRg = sRb + 128;                // [2][64]
    float* sX = sRg + 128;                 // [64]: dG
    float* sFr = sX + 64;                  // [2][64]: row sums of dA * A (per column half)
    float* sFc = sFr + 128;                // [4][64]: column sums of dA * A (per row quarter)
    DELTA_SMEM_END(smem0, sFc + 256);
    wg_sm90a_only(WG);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    const idx_t vplane = nch * HV * 64 * VP;
    // dU's columns v0 .. v0 + 64 (split) into dst [SP][64][LDT]
    auto ld_du = [&](E* dst, int v0) {
        const idx_t vo = c.oc * 64 * (idx_t)VP + v0;
        tile_ld<E>(dst, LDT, du + vo, VP, 64, 64, 64, 64, true, tid, DNT);
        if (SP == 2) tile_ld<E>(dst + 64 * LDT, LDT, du + vplane + vo, VP, 64, 64, 64, 64, true, tid, DNT);
    };
    // the V-tile loop's tile at v0 (V, then dU split) into buffer b (VB2: v0 / 64 mod 2; else 0)
    auto ld_vt = [&](int v0) {
        E* b = sV + (VB2 ? ((v0 >> 6) & 1) * VT * LDT : 0);
        ld_v<E>(b, LDT, v, c.r0, c.L, c.hv, HV, V, v0, 64, tid);
        ld_du(b + 64 * LDT, v0);
        cp_commit();
    };
    // VB2: the second V tile's loads go out with the first's, one group each
    const bool v2 = VB2 && VP > 64;
    // dw's tile at v0 into buffer b: dU's columns v0 .. v0 + 64 (split), then S's (hs[c], the
    // state entering the chunk) [KP][LDT]
    // (WG: dU's planes [SP][64][64] and S [KP][64], swizzled)
    auto ld_dws = [&](int v0, E* b) {
        if constexpr (WG) {
            const idx_t vo = c.oc * 64 * (idx_t)VP + v0;
            wg_tile_ld<64, 64, DNT>(b, du + vo, VP, 64, 64, true, tid);
            if (SP == 2) wg_tile_ld<64, 64, DNT>(b + 64 * 64, du + vplane + vo, VP, 64, 64, true, tid);
            wg_tile_ld<KP, 64, DNT>(b + SP * 64 * 64, hs + c.oc * (idx_t)KP * VP + v0, VP, KP, 64, true, tid);
        } else {
            ld_du(b, v0);
            tile_ld<E>(b + SP * 64 * LDT, LDT, hs + c.oc * (idx_t)KP * VP + v0, VP, KP, 64, KP, 64, true, tid, DNT);
        }
        cp_commit();
    };
    // The loads, in groups so that products start before the last bytes land: T, beta, rk, G
    // and dw's first tile; each later dw tile, into the buffer the tile two before it left
    // (A: the region, B: over sK and sDw, loaded only once dw is done); the first V tile, into
    // A once dw's last tile there is consumed; then K, read after that V tile's products.
    E* const bufA = sV;
    E* const bufB = sK;
    ld_t64<E>(sT, sTl, tm, c.oc, nch, HV, tid);
    ld_bt_cp(sB, bt, c.r0, c.L, c.hv, HV, tid);
    ld_rf_cp(sR, rk, c.r0, c.L, c.h, H, tid);
    ld_g64(sG, g2 + c.oc * 64, tid);
    ld_dws(0, bufA);
    if (VP > 64) ld_dws(64, bufB);
    // the first dG partial (delta_dqk's), read now and first used after the products
    const float dg0 = tid < 64 ? dgp[c.oc * 64 + tid] : 0.f;
    // (row tiles 16 (wp mod 4): two balanced pairings, tri_mt's and one by the per-warp step
    // counts, measured no faster here, where the ldmatrix traffic sets the pace)
    const int mt = wp & 3, n1 = (wp >> 2) * 32;
    // Triangles: T is lower (exact zeros above its diagonal), so T^T's rows 16 mt .. 16 mt + 16
    // start at depth 16 mt; dA is read strictly lower, and through dA = -T^T dT T^T only the
    // strictly lower parts of dT and X = T^T dT reach it (dA_ts, s < t, sums T_rt dT_rq T_sq over
    // q <= s < t <= r), so a warp whose columns all lie at or above its rows' diagonal (lw false)
    // leaves its dT, X, dA and Kn Kn^T products out (its dT and X tiles store zeros)
    const bool lw = n1 < 16 * mt + 16;
    {
        // dw = -dU S^T: each warp 16 rows x KP / 2 columns, summed over the V tiles in order
        constexpr int NTW = KP / 16;
        const int nk = (wp >> 2) * (KP / 2), ntl = VP / 64;
        float acc[NTW][4];
        frag_zero(acc);
        for (int i = 0; i < ntl; ++i) {
            // in flight behind tile i: tile i + 1, or (the last tile, after an even count) the
            // V-tile loop's first tile (VB2: first two)
            if (i + 1 == ntl && ntl % 2 == 0 && v2) {
                cp_wait<2>();
            } else if (i + 1 < ntl || ntl % 2 == 0) {
                cp_wait<1>();
            } else {
                cp_wait0();
            }
            if constexpr (WG) wg_fence_proxy();
            __syncthreads();
            const E* b = (i & 1) ? bufB : bufA;
            if constexpr (WG) {
                // the warpgroup's 64 rows x KP / 2 columns in 64-column halves (m64n64), per k16
                // step dU's hi then lo plane: wgemm2's terms in wgemm2's order
                const unsigned ua = smem_addr(b), us = smem_addr(b + SP * 64 * 64) + 128u * nk;
                wg_fence();
                #pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    #pragma unroll
                    for (int hh = 0; hh < NTW / 8; ++hh) {
                        float(&ah)[8][4] = *reinterpret_cast<float(*)[8][4]>(&acc[8 * hh]);
                        const unsigned long long db = wg_desc(us + 64u * 128u * hh + 32u * kk, 16, 1024);
                        wg_mma_frag<8, 0, 0>(ah, wg_desc(ua + 32u * kk, 16, 1024), db);
                        if (SP == 2) wg_mma_frag<8, 0, 0>(ah, wg_desc(ua + 64u * 128u + 32u * kk, 16, 1024), db);
                    }
                }
                wg_commit();
                wg_wait0();
            } else {
                wgemm2<false, true, NTW>(acc, b, b + (SP - 1) * 64 * LDT, LDT, 16 * mt, b + SP * 64 * LDT, b + SP * 64 * LDT, LDT, nk,
                                         64, lane, true, false);
            }
            if (i + 2 < ntl || !(i & 1)) {
                __syncthreads();  // the buffer is consumed
                if (i + 2 < ntl) {
                    ld_dws(64 * (i + 2), (i & 1) ? bufB : bufA);
                } else {
                    ld_vt(0);
                    if (v2) ld_vt(64);
                }
            }
        }
        __syncthreads();  // buffer B (sK, sDw) is consumed
        #pragma unroll
        for (int nt = 0; nt < NTW; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), i = nk + FRAG_COL(nt, e);
                st2_pair(sDw, sDwl, t * LK + i, -acc[nt][e], -acc[nt][e + 1]);
            }
        }
    }
    ld_qk<E, KP>(sK, k, c.r0, c.L, c.h, H, K, tid);
    cp_commit();
    float rb[2] = {0.f, 0.f}, rg[2] = {0.f, 0.f};
    {
        // per V tile: dT += (dU V^T) beta_s; dv = beta T^T dU, dbeta += rowsum(V * T^T dU); after
        // the first tile, while the second loads: dT += (dw Kn^T) beta_s exp(G_s)
        float a1[4][4], a2[4][4];
        frag_zero(a1);
        frag_zero(a2);
        for (int v0 = 0; v0 < VP; v0 += 64) {
            // in flight behind this tile: K (the first), and (VB2) the next tile
            if (v0 == 0 && v2) {
                cp_wait<2>();
            } else if (v0 == 0 || (VB2 && v0 + 64 < VP)) {
                cp_wait<1>();
            } else {
                cp_wait0();
            }
            __syncthreads();
            // this tile's buffer: V, then dU (split)
            const E* tV = sV + (VB2 ? ((v0 >> 6) & 1) * VT * LDT : 0);
            const E* tDu = tV + 64 * LDT;
            const E* tDul = tDu + (SP - 1) * 64 * LDT;
            if (lw) wgemm2<false, true, 4>(a1, tDu, tDul, LDT, 16 * mt, tV, tV, LDT, n1, 64, lane, true, false);
            float acc[4][4];
            frag_zero(acc);
            wgemm2<true, false, 4>(acc, sT, sTl, LDT, 16 * mt, tDu, tDul, LDT, n1, 64, lane, true, true, 16 * mt);
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; e += 2) {
                    const int t = 16 * mt + FRAG_ROW(e), jj = n1 + FRAG_COL(nt, e);
                    rb[e >> 1] += to_f32(tV[t * LDT + jj]) * acc[nt][e] + to_f32(tV[t * LDT + jj + 1]) * acc[nt][e + 1];
                    st_row_pair(dv + (c.r0 + t) * HV * (idx_t)V + (idx_t)c.hv * V, v0 + jj, V, t < c.L, sB[t] * acc[nt][e],
                                sB[t] * acc[nt][e + 1]);
                }
            }
            if (v0 == 0) cp_wait0();  // K (and, VB2, the second tile; no later tile is in flight yet)
            __syncthreads();          // the tile is consumed: the one NB tiles on may land on it
            if (v0 + (VB2 ? 128 : 64) < VP) ld_vt(v0 + (VB2 ? 128 : 64));
            if (v0 == 0 && lw) {
                // 32 deep at a time (register pressure at two blocks per SM)
                #pragma unroll 1
                for (int k0 = 0; k0 < KP; k0 += 32)
                    wgemm2<false, true, 4>(a2, sDw + k0, sDwl + k0, LK, 16 * mt, sK + k0, sK + k0, LK, n1, 32, lane, true, false);
            }
        }
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e), s = n1 + FRAG_COL(nt, e);
                st2(sDt, sDtl, t * LDT + s, sB[s] * (a1[nt][e] + a2[nt][e] * sR[s] * ex2f(sG[s])));
            }
        }
    }
    __syncthreads();
    {
        // X = T^T dT, into sDt (over dT) once every warp has read dT
        float x[4][4];
        frag_zero(x);
        if (lw) wgemm2<true, false, 4>(x, sT, sTl, LDT, 16 * mt, sDt, sDtl, LDT, n1, 64, lane, true, true, 16 * mt);
        __syncthreads();
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) st2(sDt, sDtl, (16 * mt + FRAG_ROW(e)) * LDT + n1 + FRAG_COL(nt, e), x[nt][e]);
        }
    }
    __syncthreads();
    {
        // dA = -X T^T (strictly lower); with Kn Kn^T: dbeta, dA * A, dAb = dA beta_t exp(G_t - G_s)
        float da[4][4], kk[4][4], fr[2] = {0.f, 0.f}, fc[4][2] = {};
        frag_zero(da);
        frag_zero(kk);
        // dA_ts for s < t sums X_tr T_sr over r <= s: depth min(n1 + 32, 16 mt + 16)
        if (lw) {
            wgemm2<false, true, 4>(da, sDt, sDtl, LDT, 16 * mt, sT, sTl, LDT, n1, 64, lane, true, true, 0, min(n1 + 32, 16 * mt + 16));
            wgemm<false, true, 4>(kk, sK, LK, 16 * mt, sK, LK, n1, KP, lane);
        }
        __syncthreads();
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e), s = n1 + FRAG_COL(nt, e);
                float f = 0.f, ab = 0.f;
                if (s < t) {
                    const float gm = ex2f(sG[t] - sG[s]), a = -da[nt][e], kn = sR[t] * sR[s] * kk[nt][e];
                    rb[e >> 1] += a * gm * kn;
                    f = a * sB[t] * kn * gm;
                    ab = a * sB[t] * gm;
                }
                fr[e >> 1] += f;
                fc[nt][e & 1] += f;
                // P = dAb rk_s + (rk_t dAb)^T: the thread holding (t, s), s < t, writes both of
                // the pair's entries, the one holding (t, t) the zero diagonal
                if (s <= t) {
                    if constexpr (M1P) {
                        // one plane (M1P): the lo plane stays unread below
                        sP[t * LDT + s] = cvt<E>(ab * sR[s]);
                        sP[s * LDT + t] = cvt<E>(ab * sR[t]);
                    } else {
                        st2(sP, sPl, t * LDT + s, ab * sR[s]);
                        st2(sP, sPl, s * LDT + t, ab * sR[t]);
                    }
                }
            }
        }
        // F = dA * A: the warp's row sums (over its 32 columns) and column sums (over its 16 rows)
        #pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            fr[hh] = quad_sum(fr[hh]);
            if (ft == 0) sFr[(wp >> 2) * 64 + 16 * mt + fg + 8 * hh] = fr[hh];
        }
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int j = 0; j < 2; ++j) {
                float x = fc[nt][j];
                x += __shfl_xor_sync(0xffffffffu, x, 4);
                x += __shfl_xor_sync(0xffffffffu, x, 8);
                x += __shfl_xor_sync(0xffffffffu, x, 16);
                if (fg == 0) sFc[mt * 64 + n1 + 8 * nt + 2 * ft + j] = x;
            }
        }
    }
    __syncthreads();
    if (tid < 64) {
        float x = sFr[tid] + sFr[64 + tid] - ((sFc[tid] + sFc[64 + tid]) + (sFc[128 + tid] + sFc[192 + tid]));
        x += dg0;
        for (int zz = 1; zz < KZ; ++zz) x += dgp[((idx_t)zz * nch * HV + c.oc) * 64 + tid];
        sX[tid] = x;
    }
    // dk += beta exp(G) T^T dw + dAb Kn + dAb^T Kn; dbeta, dG += (exp(G), beta exp(G)) kn . T^T dw
    const idx_t o_k = (c.r0 * HV + c.hv) * (idx_t)K;
    // dk's pairs (f32, from delta_dqk) are read before the products, so that the reads' latency
    // runs under them; the odd-K and tail cases read in place below
    const bool pairs = (K & 1) == 0;
    for (int i0 = 0; i0 < KP; i0 += 64) {
        float2 old[4][2];
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), i = i0 + n1 + FRAG_COL(nt, e);
                old[nt][e >> 1] = pairs && t < c.L && i + 1 < K ? *(const float2*)(dk + o_k + (idx_t)t * HV * K + i) : float2{0.f, 0.f};
            }
        }
        float acc[4][4], dkk[4][4];
        frag_zero(acc);
        frag_zero(dkk);
        // T^T is zero left of depth 16 mt in these rows; P is full
        wgemm2<true, false, 4>(acc, sT, sTl, LDT, 16 * mt, sDw, sDwl, LK, i0 + n1, 64, lane, true, true, 16 * mt);
        wgemm2<false, false, 4>(dkk, sP, sPl, LDT, 16 * mt, sK, sK, LK, i0 + n1, 64, lane, !M1P, false);
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), i = i0 + n1 + FRAG_COL(nt, e);
                const float ge = ex2f(sG[t]);
                const float x = sR[t] * (to_f32(sK[t * LK + i]) * acc[nt][e] + to_f32(sK[t * LK + i + 1]) * acc[nt][e + 1]);
                rb[e >> 1] += ge * x;
                rg[e >> 1] += sB[t] * ge * x;
                const float d0 = sB[t] * ge * acc[nt][e] + dkk[nt][e], d1 = sB[t] * ge * acc[nt][e + 1] + dkk[nt][e + 1];
                if (t < c.L && i < K) {
                    float* p = dk + o_k + (idx_t)t * HV * K + i;
                    if (i + 1 < K && pairs) {
                        float2 y = old[nt][e >> 1];
                        y.x += d0;
                        y.y += d1;
                        *(float2*)p = y;
                    } else {
                        p[0] += d0;
                        if (i + 1 < K) p[1] += d1;
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
        rb[hh] = quad_sum(rb[hh]);
        rg[hh] = quad_sum(rg[hh]);
        if (ft == 0) {
            sRb[(wp >> 2) * 64 + 16 * mt + fg + 8 * hh] = rb[hh];
            sRg[(wp >> 2) * 64 + 16 * mt + fg + 8 * hh] = rg[hh];
        }
    }
    __syncthreads();
    if (tid < 64) {
        const int t = tid;
        sX[t] += sRg[t] + sRg[64 + t];
        if (t < c.L) dbeta[(c.r0 + t) * HV + c.hv] = sRb[t] + sRb[64 + t];
    }
    __syncthreads();
    if (tid == 0) {
        // dg = the reverse cumsum of dG over the chunk's rows
        float acc = 0.f;
        for (int t = c.L - 1; t >= 0; --t) {
            acc += sX[t];
            dg[(c.r0 + t) * HV + c.hv] = acc;
        }
    }
}

// delta_wy_bwd as the entry point ENTRY (MINB blocks per SM): VB2, the V-tile loop's tiles in two
// buffers; M1P, dk's dAb tile P on one plane; WG, dw on warpgroup products (sm_90a)
#define WY_BWD_ENTRY(ENTRY, KP, E, VB2, M1P, WG, MINB)                                                   \
extern "C" __global__ void __launch_bounds__(DNT, MINB) ENTRY(                                           \
    const E* k, const float* rk, const E* v, const float* bt, const E* tm, const E* hs, const E* du,     \
    const float* g2, const float* dgp, float* dk, float* dv, float* dbeta, float* dg,                    \
    const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K, int V,      \
    int VP, int KZ, idx_t nch) {                                                                         \
    wy_bwd<E, KP, VB2, M1P, WG>(k, rk, v, bt, tm, hs, du, g2, dgp, dk, dv, dbeta, dg, bounds, chunk_off, \
                                chunk_seq, H, HV, K, V, VP, KZ, nch);                                    \
}

#define BWD_ENTRY(KP, NAME, E)                                                                           \
extern "C" __global__ void __launch_bounds__(DNT, 3) delta_dvl_k##KP##_##NAME(                              \
    const E* q, const E* k, const float* rq, const float* rk, const E* d_o, const float* g2, float* dvl,  \
    const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K, int V,      \
    int VP, float scale) {                                                                               \
    dvl_k<E, KP>(q, k, rq, rk, d_o, g2, dvl, bounds, chunk_off, chunk_seq, H, HV, K, V, VP, scale);      \
}                                                                                                        \
WY_BWD_ENTRY(delta_wy_bwd_k##KP##_##NAME, KP, E, false, false, false, KP <= 128 ? 2 : 1)

BWD_ENTRY(64, f32, float)
BWD_ENTRY(128, f32, float)
BWD_ENTRY(64, bf16, bf16_t)
BWD_ENTRY(128, bf16, bf16_t)
BWD_ENTRY(192, bf16, bf16_t)
BWD_ENTRY(256, bf16, bf16_t)
// KP = 256 in bf16 (src/delta/dispatch.rs wy_bwd_name; the lab's `wb=1` runs the entry above):
// the V-tile loop's tiles in two buffers, which fit in the region of dw's tiles
WY_BWD_ENTRY(delta_wy_bwd_vb2_k256_bf16, 256, bf16_t, true, false, false, 1)
// the bf16 default at KP 128 and on the two-buffer KP 256 (src/delta/dispatch.rs wy_bwd_name;
// the lab's `wm=0` runs the entries above): P = dAb rk_s + (rk_t dAb)^T on one bf16 plane
// (tools/emu: within tolerance on the case table, dk up to 1.22x the split's error;
// bench/results/2026-12-07_cpu2_04f4d35_delta_backward_precision_sites.txt), so dk's dAb
// product drops its lo * hi terms
WY_BWD_ENTRY(delta_wy_bwd_m1_k128_bf16, 128, bf16_t, false, true, false, 2)
WY_BWD_ENTRY(delta_wy_bwd_vb2_m1_k256_bf16, 256, bf16_t, true, true, false, 1)
// the default on sm_90a at KP 128 (src/delta/dispatch.rs wy_bwd_kernel; the lab's `ww=0` runs
// the entry above): dw = -dU S^T on warpgroup products, its tiles swizzled; the launch waits on
// shared memory, which wgmma reads once per warpgroup where mma.sync's fragments (ldmatrix) read
// it once per warp. The same bits as the mma.sync entry (tools/emu, DELTA_WW=1)
WY_BWD_ENTRY(delta_wy_bwd_wg_m1_k128_bf16, 128, bf16_t, false, true, true, 2)

// dq/dk as the entry point ENTRY with NB V-tile buffers: two (the `_s2` entries) for bf16, one
// for f32 and the lab's wide one-buffer entries (src/delta/dispatch.rs dqk_bufs); WG: the
// products on warpgroups (the `_wg` entries, sm_90a)
#define DQK_ENTRY(ENTRY, KP, E, NB, WG, D1) DQK_ENTRY_LB(ENTRY, KP, E, NB, WG, D1, false, (DNT))
// LB: the launch bounds, (DNT) or (DNT, blocks per SM); B2: dqk_k's
#define DQK_ENTRY_LB(ENTRY, KP, E, NB, WG, D1, B2, LB)                                                    \
extern "C" __global__ void __launch_bounds__ LB ENTRY(                                                   \
    const E* q, const E* k, const float* rq, const float* rk, const E* d_o, const E* vn, const E* hs,    \
    const E* dhs, const float* g2, float* dq, float* dk, float* dgp, const idx_t* bounds,                \
    const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K, int V, int VP, float scale,      \
    idx_t nch) {                                                                                         \
    dqk_k<E, KP, NB, WG, D1, B2>(q, k, rq, rk, d_o, vn, hs, dhs, g2, dq, dk, dgp, bounds, chunk_off,      \
                             chunk_seq, H, HV, K, V, VP, scale, nch);                                    \
}
DQK_ENTRY(delta_dqk_k64_f32, 64, float, 1, false, false)
DQK_ENTRY(delta_dqk_k128_f32, 128, float, 1, false, false)
DQK_ENTRY(delta_dqk_s2_k64_bf16, 64, bf16_t, 2, false, false)
DQK_ENTRY(delta_dqk_s2_k128_bf16, 128, bf16_t, 2, false, false)
DQK_ENTRY(delta_dqk_k192_bf16, 192, bf16_t, 1, false, false)
DQK_ENTRY(delta_dqk_k256_bf16, 256, bf16_t, 1, false, false)
DQK_ENTRY(delta_dqk_s2_k192_bf16, 192, bf16_t, 2, false, false)
DQK_ENTRY(delta_dqk_s2_k256_bf16, 256, bf16_t, 2, false, false)
DQK_ENTRY(delta_dqk_wg_k64_bf16, 64, bf16_t, 2, true, false)
DQK_ENTRY(delta_dqk_wg_k128_bf16, 128, bf16_t, 2, true, false)
DQK_ENTRY(delta_dqk_wg_k256_bf16, 256, bf16_t, 2, true, false)
// the default on sm_90a at KP 128 and 256 (src/delta/dispatch.rs dqk_kernel; the lab's `dm=0`
// runs the entries above): dMG on one plane (tools/emu: within tolerance,
// bench/results/2026-12-07_cpu2_04f4d35_delta_backward_precision_sites.txt)
DQK_ENTRY(delta_dqk_wg_d1_k128_bf16, 128, bf16_t, 2, true, true)
DQK_ENTRY(delta_dqk_wg_d1_k256_bf16, 256, bf16_t, 2, true, true)
// the lab's `dq=b2` at KP 128 (src/delta/dispatch.rs dqk_kernel): the d1 entry on one V-tile
// buffer with M in registers, two blocks per SM (100 KB, <= 128 registers), so one block's loads
// and stores run under the other's products
DQK_ENTRY_LB(delta_dqk_wg_b2_k128_bf16, 128, bf16_t, 1, true, true, true, (DNT, 2))
