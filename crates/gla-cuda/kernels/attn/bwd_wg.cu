// attn/bwd_wg.cu: the softmax attention backward's dK / dV / dQ pass on Hopper's warpgroup
// products (common/wgmma.cuh), for D = DV = 128 on sm_90a (src/attn/dispatch.rs, bwd_kernel):
// attn/bwd.cu's attn_bwd_kvq contract (arguments, units, splits, the deterministic dQ sums, the
// masking, a negative or zero scale); attn_bwd_pre and attn_bwd_dq_sum run around it as there.
// Other targets compile it to a trap.
//
// attn_bwd_kvq_wg_d128_dv128: one block per (kv head g, unit = (sequence n, split s)), 256 threads
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
//     dS^T -> shared memory (bf16, swizzled, [128 keys][64 queries]), one barrier, then
//     dQ_part = dS K                 8 x m64n64k16 (dS = 0 on masked pairs), A = dS^T
//                                    read transposed (MN-major), B = the K tile MN-major;
//                                    warpgroup wg takes dQ's columns 64 wg .. 64 wg + 63
// dQ_part (f32) is staged in shared memory and added into split s's dQ sum by one bulk
// reduce-add per row and warpgroup (256 bytes, cp.reduce.async.bulk: one L2 request per row
// instead of 32 red.v2 per row). Each element has one adding thread, and the block waits for its
// adds to complete before the next key tile's (the only other adds to the same elements), so the
// sums add in key-tile order (deterministic). After the key tile, dk = scale * dK, dv = dV (=,
// bf16) through row-major staging tiles. Pairs no row sees are masked (P = dS = 0), so the
// products run unconditionally (no warpgroup-divergent branch around them: ptxas would
// serialize the products).
// Dynamic smem: 1024 (alignment) + K, V 2 x 32 KB + Q, dO 2 x 2 x 16 KB + dS^T 16 KB + lse, delta
// 2 x 2 x 64 f32 + the dQ staging 2 x 64 x 72 f32 = 186368 bytes (src/attn/dispatch.rs,
// kvq_smem).
//
// Entry points: attn_bwd_kvq_wg_d128_dv128

// An m64n64 accumulator (rows x 64 columns) packed to bf16 as four k16 A fragments of an rs product
// over its columns (a[kk]: columns 16 kk .. 16 kk + 15; the mma.sync m16n8k16 A layout).
__device__ __forceinline__ void att_wg_pack(unsigned (&a)[4][4], const float (&x)[8][4]) {
    #pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        a[kk][0] = pack2(x[2 * kk][0], x[2 * kk][1]);
        a[kk][1] = pack2(x[2 * kk][2], x[2 * kk][3]);
        a[kk][2] = pack2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
        a[kk][3] = pack2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
    attn_bwd_kvq_wg_d128_dv128(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                   const bf16_t* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                                   bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, float* __restrict__ dq_acc, idx_t acc_stride,
                                   const idx_t* __restrict__ bounds, const int* __restrict__ u_seq, const int* __restrict__ u_split,
                                   int splits, int H, int HKV, int D, int DV, int causal, int window, float sl2, float scale) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    constexpr int BN = 128, BQ = 64, NT = 256, DP = 128, LS = DP + 8;
    constexpr int TK = BN * DP * 2, TQ = BQ * DP * 2;  // a key tile's and a query tile's bytes
    constexpr int LQF = 72;  // the dQ staging's row stride (f32): 256 bytes + 32 of padding
    DELTA_SMEM(smem);
    const unsigned pad = (1024u - (smem_addr(smem) & 1023u)) & 1023u;
    unsigned char* base = smem + pad;
    float* sL = (float*)(base + 4 * TK + TQ);  // [2][BQ] lse * log2(e) (+inf past the end)
    float* sD = sL + 2 * BQ;                   // [2][BQ] delta
    DELTA_SMEM_END(smem, sD + 2 * BQ + 2 * BQ * LQF);  // then the dQ staging, 2 x [BQ][LQF] f32
    // K, V; Q, dO (buffer b at + b TQ); dS^T
    const unsigned uK = smem_addr(base), uV = uK + TK, uQ = uK + 2 * TK, uO = uK + 3 * TK, uS = uK + 4 * TK;
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, fg = lane >> 2, ft = lane & 3;
    const int g = blockIdx.x, u = blockIdx.y;
    const int n = u_seq[u], sp = u_split[u];
    const idx_t bs = bounds[n];
    const int len = (int)(bounds[n + 1] - bs);
    const int grp = H / HKV;
    const idx_t ldq = (idx_t)H * D, ldk = (idx_t)HKV * D, ldv = (idx_t)HKV * DV, ldo = (idx_t)H * DV;
    float* acc = dq_acc + sp * acc_stride;
    att_dq_zero<NT>(acc + bs * ldq + (idx_t)g * grp * D, len, ldq, grp * D, tid);
    att_fence_proxy_global();  // the zeros (generic stores) before the bulk adds (async proxy)
    bool fresh = true;

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
            if (tid < BQ) {
                const bool ok = tid < LQr;
                const idx_t r = (bs + i0 + tid) * H + j;
                nl = ok ? lse[r] : ATT_POS_INF;
                nd = ok ? delta[r] : 0.f;
            }
        };
        auto put = [&](int b) {
            if (tid < BQ) {
                sL[b * BQ + tid] = nl * ATT_L2E;
                sD[b * BQ + tid] = nd;
            }
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

        // the previous key tile's adds are complete before this one's start (the same elements of
        // the sums: one order)
        att_bulk_wait0();
        for (int it = 0; it < nit; ++it) {
            const int b = it & 1;
            att_bulk_wait_read0();  // the staged dQ rows were read before the barrier (they are rewritten after it)
            cp_wait0();
            wg_fence_proxy();  // the cp.async tiles (generic proxy) before the products read them
            __syncthreads();   // iteration it's loads landed; every warpgroup is done with it - 1's tiles
            if (it + 1 < nit) {
                issue(it + 1, b ^ 1);
                cp_commit();
            }
            const int j = g * grp + it / nq, i0 = (q0 + it % nq) * BQ;
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
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk) {  // D in two 64-wide blocks: 128 key rows (K) or 64 query rows (Q) each
                const unsigned ck = (unsigned)((kk >> 2) * (TK / 2) + 32 * (kk & 3)) + wg * 8192, cq = (unsigned)((kk >> 2) * (TQ / 2) + 32 * (kk & 3));
                wg_m64n64k16<0, 0>(reinterpret_cast<float(&)[32]>(s), wg_desc(uK + ck, 16, 1024), wg_desc(uQb + cq, 16, 1024));
            }
            wg_commit();
            wg_wait0();
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
            att_wg_pack(pa, s);
            float dp[8][4];
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                const unsigned ck = (unsigned)((kk >> 2) * (TK / 2) + 32 * (kk & 3)) + wg * 8192, cq = (unsigned)((kk >> 2) * (TQ / 2) + 32 * (kk & 3));
                wg_m64n64k16<0, 0>(reinterpret_cast<float(&)[32]>(dp), wg_desc(uV + ck, 16, 1024), wg_desc(uOb + cq, 16, 1024));
            }
            wg_commit();
            wg_wait0();
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt)
                #pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float dc = Db[8 * nt + 2 * ft + c];
                    dp[nt][c] = s[nt][c] * (dp[nt][c] - dc);
                    dp[nt][2 + c] = s[nt][2 + c] * (dp[nt][2 + c] - dc);
                }
            att_wg_pack(da, dp);
            // buffer b ^ 1's lse and delta were last read in iteration it - 1, before this one's barrier
            if (it + 1 < nit) put(b ^ 1);
            // dS^T to shared memory: key row 64 wg + 16 w + fg (+ 8), query columns 16 kk + 2 ft (+ 8)
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = 64 * wg + 16 * w + fg + 8 * (e & 1), ch = 2 * kk + (e >> 1);
                    *(unsigned*)(base + 4 * TK + wg_swz(row, ch) + 4 * ft) = da[kk][e];
                }
            wg_fence_proxy();  // dS^T (generic stores) before the dQ products read it
            wg_fence();  // P^T, dS^T are in registers before the products read them
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_m64n128k16_rs<1>(dV, pa[kk], wg_desc(uOb + 2048 * kk, TQ / 2, 1024));
            #pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_m64n128k16_rs<1>(dK, da[kk], wg_desc(uQb + 2048 * kk, TQ / 2, 1024));
            wg_commit();
            if (fresh) {  // block-uniform: the block's first query tile
                __threadfence();
                fresh = false;
            }
            __syncthreads();  // both warpgroups' dS^T in shared memory (and the zeroed sum)

            // dQ part = dS K on the tile's 64 rows x the warpgroup's 64 columns (all 128 keys: dS = 0
            // on the pairs no row sees)
            float a2[8][4];
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) a2[nt][0] = a2[nt][1] = a2[nt][2] = a2[nt][3] = 0.f;
            wg_fence();
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk)
                wg_m64n64k16<1, 1>(reinterpret_cast<float(&)[32]>(a2), wg_desc(uS + 2048 * kk, 8192, 1024),
                                   wg_desc(uK + wg * (TK / 2) + 2048 * kk, TK / 2, 1024));
            wg_commit();
            wg_wait0();  // dV, dK and dQ's products are done (the next iteration overwrites dS^T, Q, dO)
            // the dQ part (f32) staged in shared memory, then added into the split's dQ sum by one
            // bulk reduce-add per row (256 bytes) from the warpgroup's first 64 threads
            {
                float* sq = (float*)(base + 4 * TK + TQ + 1024) + wg * BQ * LQF;
                #pragma unroll
                for (int r = 0; r < 2; ++r)
                    #pragma unroll
                    for (int nt = 0; nt < 8; ++nt) {
                        float2 f;
                        f.x = a2[nt][2 * r];
                        f.y = a2[nt][2 * r + 1];
                        *(float2*)(sq + (16 * w + fg + 8 * r) * LQF + 8 * nt + 2 * ft) = f;
                    }
                wg_fence_proxy();  // the staged rows (generic stores) before the bulk copy reads them
                att_bar_wg(wg);
                const int row = tid & 127;
                if (row < BQ && i0 + row < len) {
                    att_bulk_red_f32(acc + (bs + i0 + row) * ldq + (idx_t)j * D + 64 * wg, smem_addr(sq + row * LQF), 256);
                    att_bulk_commit();
                }
            }
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
    att_bulk_wait0();  // the adds are complete before the block exits
#endif
}
