// attn/bwd_wg.cu: the softmax attention backward on Hopper's warpgroup products
// (common/wgmma.cuh), for D = DV = 128 on sm_90a (src/attn/dispatch.rs, BwdTile::Wg2): dK, dV
// per key tile and dq per query tile, each in one kernel, with no dQ sums (attn/bwd.cu's
// attn_bwd_kvq adds dQ parts into sums, which on the warpgroup products cost more than the two
// products dq recomputes: docs/kernels.md). attn_bwd_pre (delta) runs before both. The masking,
// a negative or zero scale and the layouts are attn/bwd.cu's. Other targets compile both kernels
// to a trap.
//
// attn_bwd_kv_wg_d128_dv128: dk = scale * dK, dv = dV (=, bf16), one block per (kv head g, unit =
// (sequence n, split s)) as attn_bwd_kvq (the split's key tiles s, s + splits, ...), 256 threads
// = two warpgroups, grid (H_KV, units). Per key tile of BN = 128 keys (K, V by cp.async into
// 128-byte-swizzled tiles, D in two 64-wide blocks) warpgroup wg owns keys 64 wg .. 64 wg + 63
// (warp w: 16 of them), and for every query head j of the group, in order, and every query tile
// of BQ = 64 rows that can see a key of the tile (Q, dO double-buffered, lse, delta beside them):
//     S^T = K Q^T, dP^T = V dO^T     8 + 8 x m64n64k16, all operands K-major from shared memory
//                                    (the keys on the product's M side: dK, dV stay in registers)
//     P^T = ex2(S^T sl2 - lse log2 e) on allowed pairs (0 elsewhere), dS^T = P^T (dP^T - delta)
//                                    on the accumulators (lse, delta by the column: the query)
//     dV += P^T dO, dK += dS^T Q     4 + 4 x m64n128k16, P^T / dS^T (bf16) from registers (the
//                                    forward's P repacking), dO / Q MN-major (64 rows; the two
//                                    64-column blocks 8 KB apart, LBO)
// then dK, dV through row-major staging tiles. Pairs no row sees are masked (P = dS = 0), so the
// products run unconditionally (no warpgroup-divergent branch around them: ptxas would
// serialize the products).
// Dynamic smem: 1024 (alignment) + K, V 2 x 32 KB + Q, dO 2 x 2 x 16 KB + lse, delta 2 x 2 x 64
// f32 = 133120 bytes (src/attn/dispatch.rs, kvq_smem).
//
// Entry points: attn_bwd_kv_wg_d128_dv128 attn_bwd_dq_wg_d128_dv128

extern "C" __global__ void __launch_bounds__(256, 1)
    attn_bwd_kv_wg_d128_dv128(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                              const bf16_t* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                              bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, const idx_t* __restrict__ bounds,
                              const int* __restrict__ u_seq, const int* __restrict__ u_split, int splits, int H, int HKV, int D, int DV,
                              int causal, int window, float sl2, float scale) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    constexpr int BN = 128, BQ = 64, NT = 256, DP = 128, LS = DP + 8;
    constexpr int TK = BN * DP * 2, TQ = BQ * DP * 2;  // a key tile's and a query tile's bytes
    DELTA_SMEM(smem);
    unsigned char* base = wg_align1024(smem);
    float* sL = (float*)(base + 4 * TK);  // [2][BQ] lse * log2(e) (+inf past the end)
    float* sD = sL + 2 * BQ;              // [2][BQ] delta
    DELTA_SMEM_END(smem, sD + 2 * BQ);
    // K, V; Q, dO (buffer b at + b TQ)
    const unsigned uK = smem_addr(base), uV = uK + TK, uQ = uK + 2 * TK, uO = uK + 3 * TK;
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, fg = lane >> 2, ft = lane & 3;
    const int g = blockIdx.x, u = blockIdx.y;
    const int n = u_seq[u], sp = u_split[u];
    const idx_t bs = bounds[n];
    const int len = (int)(bounds[n + 1] - bs);
    const int grp = H / HKV;
    const idx_t ldq = (idx_t)H * D, ldk = (idx_t)HKV * D, ldv = (idx_t)HKV * DV, ldo = (idx_t)H * DV;

    const int nkt = (len + BN - 1) / BN;
    for (int kt = sp; kt < nkt; kt += splits) {
        const int k0 = kt * BN, LK = min(BN, len - k0);
        int q0, q1;
        att_kv_qtiles<BN, BQ>(k0, len, causal, window, q0, q1);
        const int nq = max(0, q1 - q0), nit = grp * nq;
        wg_tile_cp<BN, NT>(uK, k + (bs + k0) * ldk + (idx_t)g * D, ldk, LK, tid);
        wg_tile_cp<BN, NT>(uV, v + (bs + k0) * ldv + (idx_t)g * DV, ldv, LK, tid);
        // the loads of iteration `it` (head g * grp + it / nq, query tile q0 + it % nq) into buffer
        // b: Q and dO by cp.async, lse and delta of row tid (tid < BQ) into registers, stored by
        // put() after the iteration's first products
        float nl = ATT_POS_INF, nd = 0.f;
        auto issue = [&](int it, int b) {
            const int j = g * grp + it / nq, i0 = (q0 + it % nq) * BQ;
            const int LQr = min(BQ, len - i0);
            wg_tile_cp<BQ, NT>(uQ + b * TQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, LQr, tid);
            wg_tile_cp<BQ, NT>(uO + b * TQ, d_o + (bs + i0) * ldo + (idx_t)j * DV, ldo, LQr, tid);
            if (tid < BQ) att_bwd_stats(lse, delta, (bs + i0) * H + j, H, tid, LQr, nl, nd);
        };
        auto put = [&](int b) {
            if (tid < BQ) att_bwd_stats_put(sL + b * BQ, sD + b * BQ, tid, nl, nd);
        };
        if (nit > 0) {
            issue(0, 0);
            put(0);
        }
        cp_commit();

        float dK[64], dV[64];  // the m64n128 accumulators: rows = the warpgroup's keys, columns = D / DV
        #pragma unroll
        for (int i = 0; i < 64; ++i) dK[i] = dV[i] = 0.f;
        const int klo = k0 + 64 * wg + 16 * w;  // the warp's first key

        for (int it = 0; it < nit; ++it) {
            const int b = it & 1;
            cp_wait0();
            wg_fence_proxy();  // the cp.async tiles (generic proxy) before the products read them
            __syncthreads();   // iteration it's loads landed; every warpgroup is done with it - 1's tiles
            if (it + 1 < nit) {
                issue(it + 1, b ^ 1);
                cp_commit();
            }
            const int i0 = (q0 + it % nq) * BQ;
            const unsigned uQb = uQ + b * TQ, uOb = uO + b * TQ;
            // S^T = K Q^T, then P^T from it (f32, and packed to bf16 as the rs products' A fragments,
            // k16 step kk = queries 16 kk ..), then dP^T = V dO^T and dS^T = P^T (dP^T - delta).
            // The S products finish before the dP products start: both accumulators in flight
            // beside dK and dV do not fit in 255 registers (ptxas spills and serializes them)
            const float* Lb = sL + b * BQ;
            const float* Db = sD + b * BQ;
            unsigned pa[4][4], da[4][4];
            float s[8][4];  // m64n64 accumulator: rows = keys, columns = queries
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            wg_mma_k128<BQ, BN, BQ>(reinterpret_cast<float(&)[32]>(s), uK + wg * 8192, uQb);
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float lc = Lb[8 * nt + 2 * ft + c];
                    s[nt][c] = ex2f(s[nt][c] * sl2 - lc);
                    s[nt][2 + c] = ex2f(s[nt][2 + c] * sl2 - lc);
                }
            const bool edge = klo + 16 > len || (causal && klo + 15 > i0) || (window > 0 && i0 + BQ - 1 - klo >= window);
            if (edge) {  // warp-uniform; a separate pass, so the common case carries no mask code
                #pragma unroll
                for (int nt = 0; nt < 8; ++nt)
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = att_key_ok(i0 + 8 * nt + 2 * ft + (e & 1), klo + fg + 8 * (e >> 1), len, causal, window);
                        s[nt][e] = ok ? s[nt][e] : 0.f;
                    }
            }
            wg_pack_a<4>(pa, s);
            float dp[8][4];
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
            wg_mma_k128<BQ, BN, BQ>(reinterpret_cast<float(&)[32]>(dp), uV + wg * 8192, uOb);
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float dc = Db[8 * nt + 2 * ft + c];
                    dp[nt][c] = s[nt][c] * (dp[nt][c] - dc);
                    dp[nt][2 + c] = s[nt][2 + c] * (dp[nt][2 + c] - dc);
                }
            wg_pack_a<4>(da, dp);
            // buffer b ^ 1's lse and delta were last read in iteration it - 1, before this one's barrier
            if (it + 1 < nit) put(b ^ 1);
            wg_fence();  // P^T, dS^T are in registers before the products read them
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_m64n128k16_rs<1>(dV, pa[kk], wg_desc(uOb + 2048 * kk, TQ / 2, 1024));
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_m64n128k16_rs<1>(dK, da[kk], wg_desc(uQb + 2048 * kk, TQ / 2, 1024));
            wg_commit();
            wg_wait0();  // dV, dK's products are done (the next iteration overwrites Q, dO)
        }
        cp_wait0();
        __syncthreads();  // every warpgroup is done with the key tile's K, V and the query tiles

        // dk = scale * dK, dv = dV through row-major staging tiles ([BN][LS] bf16 over K / V and
        // over the query tiles)
        bf16_t* sk = (bf16_t*)base;
        bf16_t* sv = (bf16_t*)(base + 2 * TK);
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = 64 * wg + 16 * w + fg + 8 * r;
            #pragma unroll
            for (int nt = 0; nt < 16; ++nt) {
                *(unsigned*)(sk + row * LS + 8 * nt + 2 * ft) = pack2(dK[4 * nt + 2 * r] * scale, dK[4 * nt + 2 * r + 1] * scale);
                *(unsigned*)(sv + row * LS + 8 * nt + 2 * ft) = pack2(dV[4 * nt + 2 * r], dV[4 * nt + 2 * r + 1]);
            }
        }
        __syncthreads();
        att_store<BN, DP, NT>(dk + (bs + k0) * ldk + (idx_t)g * D, ldk, sk, LS, LK, D, tid);
        att_store<BN, DP, NT>(dv + (bs + k0) * ldv + (idx_t)g * DV, ldv, sv, LS, LK, DV, tid);
        __syncthreads();  // the staging is read before the next key tile's loads land there
    }
#endif
}

// attn_bwd_dq_wg_d128_dv128: dq [rows, H, D] (=, bf16) = scale * sum over the allowed keys of
// dS K, with no dQ sums: one block per (query head j, entry of the forward's 128-row tile table),
// 256 threads = two warpgroups of 64 rows, grid (H, tiles). Q, dO (swizzled), lse, delta of the
// tile once; per key tile of BN = 128 keys the rows can see (K, V double-buffered by cp.async):
//     S = Q K^T, dP = dO V^T     8 + 8 x m64n128k16, K-major operands (the forward's S)
//     P = ex2(S sl2 - lse log2 e) on allowed pairs (0 elsewhere: att_fwd_mask), dS = P (dP - delta)
//     dQ += dS K                 8 x m64n128k16, dS (bf16) from registers, K MN-major (the
//                                forward's P V with K for V)
// then dq = scale * dQ through a row-major staging tile. A warpgroup skips a key tile none of its
// rows sees. The S products finish before the dP products start (both accumulators in flight
// beside dQ's do not fit in 255 registers).
// Dynamic smem: 1024 (alignment) + Q, dO 2 x 32 KB + K, V 2 x 2 x 32 KB + lse, delta 2 x 128 f32
// = 198656 bytes (src/attn/dispatch.rs, DQ_WG_SMEM).
extern "C" __global__ void __launch_bounds__(256, 1)
    attn_bwd_dq_wg_d128_dv128(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                              const bf16_t* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                              bf16_t* __restrict__ dq, const idx_t* __restrict__ bounds, const int* __restrict__ tile_seq,
                              const int* __restrict__ tile_q0, int H, int HKV, int D, int DV, int causal, int window, float sl2,
                              float scale) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    constexpr int BM = 128, BN = 128, NT = 256, DP = 128, LS = DP + 8, TB = 32768;  // TB: one 128 x 128 tile's bytes
    DELTA_SMEM(dsmem);  // named apart from attn_bwd_kv_wg's (one extern array per name)
    unsigned char* base = wg_align1024(dsmem);
    float* sL = (float*)(base + 6 * TB);  // [BM] lse * log2(e) (+inf past the end)
    float* sD = sL + BM;                  // [BM] delta
    DELTA_SMEM_END(dsmem, sD + BM);
    const unsigned uQ = smem_addr(base), uO = uQ + TB, uK = uQ + 2 * TB, uV = uQ + 4 * TB;  // K, V: buffer b at + b TB
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, fg = lane >> 2, ft = lane & 3;
    const int j = blockIdx.x, tile = blockIdx.y;
    const AttFwdTile qt = att_fwd_tile<BM, BN>(bounds, tile_seq, tile_q0, tile, causal, window, k, v, j, H, HKV, D, DV);
    const idx_t bs = qt.bs, ldq = qt.ldq, ldk = qt.ldk, ldv = qt.ldv, ldo = qt.ldo;
    const int len = qt.len, i0 = qt.i0, L = qt.L, t0 = qt.t0, t1 = qt.t1;
    const bf16_t* kb = qt.kb;
    const bf16_t* vb = qt.vb;
    auto load_kv = [&](int t, int b) {
        wg_tile_cp<BN, NT>(uK + b * TB, kb + (idx_t)t * BN * ldk, ldk, len - t * BN, tid);
        wg_tile_cp<BN, NT>(uV + b * TB, vb + (idx_t)t * BN * ldv, ldv, len - t * BN, tid);
    };
    wg_tile_cp<BM, NT>(uQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, L, tid);
    wg_tile_cp<BM, NT>(uO, d_o + (bs + i0) * ldo + (idx_t)j * DV, ldo, L, tid);
    load_kv(t0, 0);
    cp_commit();
    if (tid < BM) {
        float nl, nd;
        att_bwd_stats(lse, delta, (bs + i0) * H + j, H, tid, L, nl, nd);
        att_bwd_stats_put(sL, sD, tid, nl, nd);
    }

    const int qr = 64 * wg + 16 * w;  // the warp's first row in the tile
    const int qlo = i0 + qr, glo = i0 + 64 * wg;  // its first query position, its warpgroup's
    float acc[64];  // dQ, the m64n128 accumulator: rows = the warpgroup's queries, columns = D
    #pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    // the warpgroup's rows see no key of tile t
    auto idle = [&](int t) {
        const int kt = t * BN;
        return glo >= len || (causal && kt > glo + 63) || (window > 0 && kt + BN - 1 <= glo - window);
    };
    float lr[2], dr[2];  // the thread's two rows' lse * log2(e) and delta (read after the first barrier)

    for (int t = t0; t < t1; ++t) {
        const int buf = (t - t0) & 1;
        cp_wait0();
        wg_fence_proxy();  // the cp.async tiles (generic proxy) before the products read them
        __syncthreads();
        if (t == t0) {
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                lr[r] = sL[qr + fg + 8 * r];
                dr[r] = sD[qr + fg + 8 * r];
            }
        }
        if (t + 1 < t1) {
            load_kv(t + 1, buf ^ 1);
            cp_commit();
        }
        if (!idle(t)) {  // warpgroup-uniform
            float s[1][BN / 8][4];
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) s[0][nt][0] = s[0][nt][1] = s[0][nt][2] = s[0][nt][3] = 0.f;
            wg_mma_k128<BN, BM, BN>(reinterpret_cast<float(&)[64]>(s), uQ + wg * 8192, uK + buf * TB);
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[0][nt][e] = ex2f(s[0][nt][e] * sl2 - lr[e >> 1]);
            att_fwd_mask<1, BN>(s, qlo, t * BN, len, causal, window, fg, ft, 0.f);
            float dp[BN / 8][4];
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
            wg_mma_k128<BN, BM, BN>(reinterpret_cast<float(&)[64]>(dp), uO + wg * 8192, uV + buf * TB);
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) dp[nt][e] = s[0][nt][e] * (dp[nt][e] - dr[e >> 1]);
            unsigned da[8][4];  // dS (bf16) as the rs product's A fragments: k16 step kk = keys 16 kk ..
            wg_pack_a<8>(da, dp);
            wg_fence();  // dS is in registers before the products read it
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk) wg_m64n128k16_rs<1>(acc, da[kk], wg_desc(uK + buf * TB + 2048 * kk, 16384, 1024));
            wg_commit();
            wg_wait0();
        }
    }
    cp_wait0();
    __syncthreads();  // every warpgroup is done with the tiles
    // dq = scale * dQ through the K buffers (row-major [BM][LS])
    bf16_t* sq = (bf16_t*)(base + 2 * TB);
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = qr + fg + 8 * r;
        #pragma unroll
        for (int nt = 0; nt < 16; ++nt)
            *(unsigned*)(sq + row * LS + 8 * nt + 2 * ft) = pack2(acc[4 * nt + 2 * r] * scale, acc[4 * nt + 2 * r + 1] * scale);
    }
    __syncthreads();
    att_store<BM, DP, NT>(dq + (bs + i0) * ldq + (idx_t)j * D, ldq, sq, LS, L, D, tid);
#endif
}
