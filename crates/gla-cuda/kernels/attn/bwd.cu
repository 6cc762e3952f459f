// attn/bwd.cu: the softmax attention backward (flash-attention-2 style, deterministic: no
// atomics), bf16 storage, f32 math. With dO the upstream gradient, P recomputed from the forward's
// lse (P = ex2(S * scale * log2(e) - lse * log2(e)) on allowed pairs, 0 elsewhere):
//
// attn_bwd_pre: one warp per (row, head): delta [rows, H] f32 (=) = rowsum(dO * O), over DV.
//
// attn_bwd_dkv_d{DP}_dv{DVP}: one block per (kv head g, key tile of 64 keys), 128 threads (4
// warps x 16 keys), grid (H_KV, key tiles) (tile kt_seq / kt_k0 like the forward's). For every
// query head j of the group, in order, and every query tile (64 rows) that can see the key tile:
//     dP^T = V dO^T,  dS^T = P^T * (dP^T - delta)
//     dV  += P^T dO,  dK += dS^T Q                 (f32 in registers)
// then dk = scale * dK, dv = dV (=, bf16): the group's sum in a fixed order (deterministic).
// Q / dO tiles (and their lse, delta) double-buffered with cp.async, one barrier per query tile.
//
// attn_bwd_fused_d{DP}_dv{DVP}: attn_bwd_dkv and dQ in one pass (five products, as
// flash-attention-2): per query tile, dS^T goes to shared memory and the 4 warps (2 x 2 over
// query rows x columns) multiply dQ_part = dS K_t; the key tiles that see a query tile add their parts in key order
// (a turn flag per (query tile, head) in turn [rows, H], zeroed before the launch: the block waits
// for its turn, adds its part to the f32 sum in dq_acc [rows, H, D] or stores it when first, passes
// the turn after the next barrier), and the last one writes dq = scale * sum (=, bf16). The sum's
// order is fixed, so dq is deterministic without atomics. The fused kernels need D == DP (the
// host runs them only so). Key tiles of a sequence appear in the
// tile table in increasing order, so a block waits only on blocks launched before it.
// attn_bwd_fused8_d{DP}_dv{DVP}: the same with 8 warps x 16 keys (128 keys per block, 256
// threads, the 128-key tile table): half the dQ parts to add, each Q / dO tile serving twice the
// keys; dQ's product on 2 x 4 warps (under study beside the 4-warp kernel).
//
// attn_bwd_dq_d{DP}_dv{DVP}: one block per (query head j, query tile of 128 rows), 256 threads,
// the forward's grid and tile table; over the key tiles the forward visits:
//     dP = dO V^T,  dS = P * (dP - delta),  dQ += dS K
// then dq = scale * dQ (=, bf16). K / V double-buffered with cp.async, one barrier per key tile.
//
// Masking as the forward: only tiles crossing the diagonal, the window's edge or a sequence end
// are masked. Rows past a sequence end are neither read (zero) nor written.
// Layouts: the forward's; do [rows, H, DV]; dq [rows, H, D], dk [rows, H_KV, D], dv [rows, H_KV,
// DV] bf16. Dynamic smem: src/attn/dispatch.rs (dkv_smem, fused_smem, fused8_smem, dq_smem) matches
// the carve-ups below.
//
// Entry points: attn_bwd_pre attn_bwd_dkv_d64_dv32 attn_bwd_dkv_d64_dv64 attn_bwd_dkv_d128_dv128
//   attn_bwd_fused_d64_dv32 attn_bwd_fused_d64_dv64 attn_bwd_fused_d128_dv128
//   attn_bwd_fused8_d64_dv32 attn_bwd_fused8_d64_dv64 attn_bwd_fused8_d128_dv128
//   attn_bwd_dq_d64_dv32 attn_bwd_dq_d64_dv64 attn_bwd_dq_d128_dv128

extern "C" __global__ void __launch_bounds__(256) attn_bwd_pre(const bf16_t* __restrict__ o, const bf16_t* __restrict__ d_o,
                                                               float* __restrict__ delta, idx_t nrh, int DV) {
    const idx_t x = (idx_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (x >= nrh) return;
    const bf16_t* op = o + x * DV;
    const bf16_t* dp = d_o + x * DV;
    float s = 0.f;
    for (int c = lane; c < DV; c += 32) s += to_f32(op[c]) * to_f32(dp[c]);
    s = warp_sum(s);
    if (lane == 0) delta[x] = s;
}

// The fused backward's ordered dQ sum. The key tiles that see the query tile at i0 (64 rows)
// add their dQ parts in key order: tile k0 / 64 - att_dq_first(i0) is the tile's turn, a flag per
// (query tile, head) (turn [rows, H] int, row = the tile's first row, zeroed before the launch)
// counts the parts added so far. The first part is stored, the others added to the f32 sum in
// dq_acc, the last one writes dq = scale * sum in bf16 instead. The key tiles of a sequence come
// in increasing order in the tile table (key_tiles: stable, most queries first), so a block only
// waits on blocks launched before it.
template <int BN>
__device__ __forceinline__ int att_dq_first(int i0, int window) {
    // the first key tile (BN keys) whose query range (attn_bwd_dkv's q1 > i0 / BQ) holds the tile
    const int x = i0 - (BN - 1) - window;
    return window > 0 && x >= 0 ? x / BN + 1 : 0;
}
template <int BN>
__device__ __forceinline__ void att_bwd_dq_pass(int* turn, idx_t bs, int j, int i0, int k0, int H, int window) {
    att_pass_turn(turn + (bs + i0) * H + j, k0 / BN - att_dq_first<BN>(i0, window) + 1);
}

// dQ part of key tile k0 for the query tile at i0, head j: dS (sS holds dS^T [BN keys][LS]) times K
// (sK [BN][LQ]), warp w taking half the query rows and half the columns (each K fragment feeds two
// products, each dS fragment DP / 16: 24 ldmatrix per 64 products at DP = 128 instead of 36 with 16
// rows per warp); then the ordered add above.
template <int DP, int LQ, int LS, int BN, int BQ, int NW>
__device__ __forceinline__ void att_bwd_dq_part(const bf16_t* sS, const bf16_t* sK, bf16_t* __restrict__ dq, float* __restrict__ dq_acc,
                                                int* turn, idx_t bs, int len, int j, int i0, int k0, int H, int D, int causal,
                                                int window, float scale, int tid, int lane, int w, int fg, int ft) {
    static_assert(BN % BQ == 0, "a query tile's first row lies in one key tile");
    constexpr int CW = DP / (NW / 2), MW = BQ / 32;  // columns, m-tiles per warp (2 x NW / 2 warps)
    static_assert(CW % 16 == 0, "whole ldmatrix column pairs per warp");
    const int c0 = CW * (w >> 1), m0 = MW * (w & 1);
    float acc[MW][CW / 8][4];
    #pragma unroll
    for (int mt = 0; mt < MW; ++mt)
        #pragma unroll
        for (int nt = 0; nt < CW / 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
        unsigned bk[CW / 16][4];
        #pragma unroll
        for (int np = 0; np < CW / 16; ++np) ldsm4t(bk[np], fbt(sK, LQ, 16 * kk, c0 + 16 * np, lane));
        #pragma unroll
        for (int mt = 0; mt < MW; ++mt) {
            unsigned a[4];
            ldsm4t(a, fat(sS, LS, 16 * kk, 16 * (m0 + mt), lane));
            #pragma unroll
            for (int np = 0; np < CW / 16; ++np) {
                mma16816(acc[mt][2 * np], a, bk[np][0], bk[np][1]);
                mma16816(acc[mt][2 * np + 1], a, bk[np][2], bk[np][3]);
            }
        }
    }
    const int first = att_dq_first<BN>(i0, window);
    const int last = causal ? i0 / BN : (len + BN - 1) / BN - 1;
    const int ord = k0 / BN - first;
    const bool fin = ord == last - first;
    if (tid == 0) att_wait_turn(turn + (bs + i0) * H + j, ord);
    __syncthreads();  // the earlier parts are in dq_acc (acquired by thread 0)
    // the first part stores, the middle ones add, the last adds and writes dq (block-uniform cases;
    // D == DP: every column is the head's)
    #pragma unroll
    for (int mt = 0; mt < MW; ++mt) {
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = i0 + 16 * (m0 + mt) + fg + 8 * r;
            if (row >= len) continue;
            const idx_t base = ((bs + row) * H + j) * (idx_t)D + c0 + 2 * ft;
            float* pa = dq_acc + base;
            if (ord > 0) {
                #pragma unroll
                for (int nt = 0; nt < CW / 8; ++nt) {
                    float y0, y1;
                    att_ld2_cg(pa + 8 * nt, y0, y1);
                    acc[mt][nt][2 * r] += y0;
                    acc[mt][nt][2 * r + 1] += y1;
                }
            }
            if (fin) {
                bf16_t* pq = dq + base;
                #pragma unroll
                for (int nt = 0; nt < CW / 8; ++nt) *(unsigned*)(pq + 8 * nt) = pack2(acc[mt][nt][2 * r] * scale, acc[mt][nt][2 * r + 1] * scale);
            } else {
                #pragma unroll
                for (int nt = 0; nt < CW / 8; ++nt) att_st2_cg(pa + 8 * nt, acc[mt][nt][2 * r], acc[mt][nt][2 * r + 1]);
            }
        }
    }
}

template <int DP, int DVP, bool FUSED, int NW = 4>
__device__ __forceinline__ void attn_bwd_dkv(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                             const bf16_t* __restrict__ d_o, const float* __restrict__ lse,
                                             const float* __restrict__ delta, bf16_t* __restrict__ dk, bf16_t* __restrict__ dv,
                                             bf16_t* __restrict__ dq, float* __restrict__ dq_acc, int* __restrict__ turn,
                                             const idx_t* __restrict__ bounds, const int* __restrict__ kt_seq,
                                             const int* __restrict__ kt_k0, int H, int HKV, int D, int DV, int causal, int window,
                                             float sl2, float scale) {
    constexpr int BN = 16 * NW, BQ = 64, LQ = DP + 8, LV = DVP + 8, LS = BQ + 8, NT = 32 * NW;
    DELTA_SMEM(smem);
    bf16_t* sK = (bf16_t*)smem;      // [BN][LQ]; dk staging at the end
    bf16_t* sV = sK + BN * LQ;       // [BN][LV]; dv staging at the end
    bf16_t* sQ = sV + BN * LV;       // [2][BQ][LQ]
    bf16_t* sO = sQ + 2 * BQ * LQ;   // [2][BQ][LV] (dO)
    float* sL = (float*)(sO + 2 * BQ * LV);  // [2][BQ] lse * log2(e) (+inf past the end)
    float* sD = sL + 2 * BQ;                  // [2][BQ] delta
    bf16_t* sS = (bf16_t*)(sD + 2 * BQ);      // fused: [BN][LS] dS^T of the current query tile
    DELTA_SMEM_END(smem, FUSED ? (void*)(sS + BN * LS) : (void*)(sD + 2 * BQ));
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int g = blockIdx.x, tile = blockIdx.y;
    const int n = kt_seq[tile], k0 = kt_k0[tile];
    const idx_t bs = bounds[n];
    const int len = (int)(bounds[n + 1] - bs);
    const int grp = H / HKV;
    const idx_t ldq = (idx_t)H * D, ldk = (idx_t)HKV * D, ldv = (idx_t)HKV * DV, ldo = (idx_t)H * DV;
    const int LK = min(BN, len - k0);
    // the query tiles that can see a key of this tile
    const int qbeg = causal ? k0 : 0;
    const int qend = window > 0 ? min(len, k0 + BN - 1 + window) : len;
    const int q0 = qbeg / BQ, q1 = (qend + BQ - 1) / BQ;
    const int nq = max(0, q1 - q0), nit = grp * nq;

    att_tile<BN, DP, NT>(sK, LQ, k + (bs + k0) * ldk + (idx_t)g * D, ldk, LK, D, tid);
    att_tile<BN, DVP, NT>(sV, LV, v + (bs + k0) * ldv + (idx_t)g * DV, ldv, LK, DV, tid);
    // issues the loads of iteration `it` (head g * grp + it / nq, query tile q0 + it % nq) into buffer
    // b: Q and dO by cp.async, lse and delta of row tid (tid < BQ) into registers (nl, nd), which
    // put() stores after the iteration's products, so their latency hides behind them
    float nl = ATT_POS_INF, nd = 0.f;
    auto issue = [&](int it, int b) {
        const int j = g * grp + it / nq, i0 = (q0 + it % nq) * BQ;
        const int LQr = min(BQ, len - i0);
        att_tile<BQ, DP, NT>(sQ + b * BQ * LQ, LQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, LQr, D, tid);
        att_tile<BQ, DVP, NT>(sO + b * BQ * LV, LV, d_o + (bs + i0) * ldo + (idx_t)j * DV, ldo, LQr, DV, tid);
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

    const int kr = 16 * w;       // the warp's first key row in the tile
    const int klo = k0 + kr;     // its first key position
    float dK[DP / 8][4], dV[DVP / 8][4];
    #pragma unroll
    for (int nt = 0; nt < DP / 8; ++nt) dK[nt][0] = dK[nt][1] = dK[nt][2] = dK[nt][3] = 0.f;
    #pragma unroll
    for (int nt = 0; nt < DVP / 8; ++nt) dV[nt][0] = dV[nt][1] = dV[nt][2] = dV[nt][3] = 0.f;

    // one barrier per iteration (as the forward's key tiles): the loads of it + 1 start after it
    for (int it = 0; it < nit; ++it) {
        const int b = it & 1;
        cp_wait0();
        __syncthreads();  // fused: every thread's dQ adds of iteration it - 1 are done
        if (FUSED && tid == 0 && it > 0) att_bwd_dq_pass<BN>(turn, bs, g * grp + (it - 1) / nq, (q0 + (it - 1) % nq) * BQ, k0, H, window);
        if (it + 1 < nit) {
            issue(it + 1, b ^ 1);
            cp_commit();
        }
        const int i0 = (q0 + it % nq) * BQ;
        const bool idle = klo >= len || (causal && i0 + BQ - 1 < klo) || (window > 0 && klo + 15 <= i0 - window);
        if (!idle) {
            const bf16_t* Qb = sQ + b * BQ * LQ;
            const bf16_t* Ob = sO + b * BQ * LV;
            const float* Lb = sL + b * BQ;
            const float* Db = sD + b * BQ;
            float s[BQ / 8][4], dp[BQ / 8][4];
            #pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
            #pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) {
                unsigned a[4];
                ldsm4(a, fa(sK, LQ, kr, 16 * kk, lane));
                #pragma unroll
                for (int np = 0; np < BQ / 16; ++np) {
                    unsigned r[4];
                    ldsm4(r, fbn(Qb, LQ, 16 * kk, 16 * np, lane));
                    mma16816(s[2 * np], a, r[0], r[1]);
                    mma16816(s[2 * np + 1], a, r[2], r[3]);
                }
            }
            #pragma unroll
            for (int kk = 0; kk < DVP / 16; ++kk) {
                unsigned a[4];
                ldsm4(a, fa(sV, LV, kr, 16 * kk, lane));
                #pragma unroll
                for (int np = 0; np < BQ / 16; ++np) {
                    unsigned r[4];
                    ldsm4(r, fbn(Ob, LV, 16 * kk, 16 * np, lane));
                    mma16816(dp[2 * np], a, r[0], r[1]);
                    mma16816(dp[2 * np + 1], a, r[2], r[3]);
                }
            }
            const bool edge = klo + 16 > len || i0 + BQ > len || (causal && i0 < klo + 15) || (window > 0 && i0 + BQ - 1 - klo >= window);
            #pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = ex2f(s[nt][e] * sl2 - Lb[8 * nt + 2 * ft + (e & 1)]);
            if (edge) {  // warp-uniform
                #pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int c = 8 * nt + 2 * ft + (e & 1);  // query column in the tile
                        const bool ok = att_key_ok(i0 + c, klo + fg + (e >= 2 ? 8 : 0), len, causal, window);
                        s[nt][e] = ok ? s[nt][e] : 0.f;
                    }
                }
            }
            #pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) dp[nt][e] = s[nt][e] * (dp[nt][e] - Db[8 * nt + 2 * ft + (e & 1)]);
            if (FUSED) {  // dS^T rows of the warp's keys, for dQ below
                #pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
                    *(unsigned*)(sS + (kr + fg) * LS + 8 * nt + 2 * ft) = pack2(dp[nt][0], dp[nt][1]);
                    *(unsigned*)(sS + (kr + fg + 8) * LS + 8 * nt + 2 * ft) = pack2(dp[nt][2], dp[nt][3]);
                }
            }
            #pragma unroll
            for (int kk = 0; kk < BQ / 16; ++kk) {
                const unsigned pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                                        pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
                const unsigned da[4] = {pack2(dp[2 * kk][0], dp[2 * kk][1]), pack2(dp[2 * kk][2], dp[2 * kk][3]),
                                        pack2(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack2(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                #pragma unroll
                for (int np = 0; np < DVP / 16; ++np) {
                    unsigned r[4];
                    ldsm4t(r, fbt(Ob, LV, 16 * kk, 16 * np, lane));
                    mma16816(dV[2 * np], pa, r[0], r[1]);
                    mma16816(dV[2 * np + 1], pa, r[2], r[3]);
                }
                #pragma unroll
                for (int np = 0; np < DP / 16; ++np) {
                    unsigned r[4];
                    ldsm4t(r, fbt(Qb, LQ, 16 * kk, 16 * np, lane));
                    mma16816(dK[2 * np], da, r[0], r[1]);
                    mma16816(dK[2 * np + 1], da, r[2], r[3]);
                }
            }
        }
        // buffer b ^ 1 was last read in iteration it - 1, before this iteration's barrier
        if (it + 1 < nit) put(b ^ 1);
        if (FUSED) {
            if (idle) {  // its keys see none of these queries: dS^T = 0
                #pragma unroll
                for (int x = lane; x < 16 * BQ / 2; x += 32) *(unsigned*)(sS + (kr + x / (BQ / 2)) * LS + 2 * (x % (BQ / 2))) = 0u;
            }
            __syncthreads();  // dS^T of every warp in sS
            att_bwd_dq_part<DP, LQ, LS, BN, BQ, NW>(sS, sK, dq, dq_acc, turn, bs, len, g * grp + it / nq, i0, k0, H, D, causal, window,
                                                scale, tid, lane, w, fg, ft);  // its turn passes after the next barrier
        }
    }
    cp_wait0();
    __syncthreads();  // every warp is done with the tiles
    if (FUSED && tid == 0 && nit > 0) att_bwd_dq_pass<BN>(turn, bs, g * grp + (nit - 1) / nq, (q0 + (nit - 1) % nq) * BQ, k0, H, window);

    // epilogue: each warp stages its own 16 rows of dk in sK and of dv in sV (it alone read them)
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = kr + fg + 8 * r;
        #pragma unroll
        for (int nt = 0; nt < DP / 8; ++nt)
            *(unsigned*)(sK + row * LQ + 8 * nt + 2 * ft) = pack2(dK[nt][2 * r] * scale, dK[nt][2 * r + 1] * scale);
        #pragma unroll
        for (int nt = 0; nt < DVP / 8; ++nt) *(unsigned*)(sV + row * LV + 8 * nt + 2 * ft) = pack2(dV[nt][2 * r], dV[nt][2 * r + 1]);
    }
    __syncthreads();
    att_store<BN, DP, NT>(dk + (bs + k0) * ldk + (idx_t)g * D, ldk, sK, LQ, LK, D, tid);
    att_store<BN, DVP, NT>(dv + (bs + k0) * ldv + (idx_t)g * DV, ldv, sV, LV, LK, DV, tid);
}

template <int DP, int DVP>
__device__ __forceinline__ void attn_bwd_dq(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                            const bf16_t* __restrict__ d_o, const float* __restrict__ lse,
                                            const float* __restrict__ delta, bf16_t* __restrict__ dq, const idx_t* __restrict__ bounds,
                                            const int* __restrict__ tile_seq, const int* __restrict__ tile_q0, int H, int HKV, int D,
                                            int DV, int causal, int window, float sl2, float scale) {
    constexpr int BM = 128, BN = 64, LQ = DP + 8, LV = DVP + 8, NT = 256;
    DELTA_SMEM(smem);
    bf16_t* sQ = (bf16_t*)smem;     // [BM][LQ]; dq staging at the end
    bf16_t* sO = sQ + BM * LQ;      // [BM][LV] (dO)
    bf16_t* sK = sO + BM * LV;      // [2][BN][LQ]
    bf16_t* sV = sK + 2 * BN * LQ;  // [2][BN][LV]
    DELTA_SMEM_END(smem, sV + 2 * BN * LV);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j = blockIdx.x, tile = blockIdx.y;
    const int n = tile_seq[tile], i0 = tile_q0[tile];
    const idx_t bs = bounds[n];
    const int len = (int)(bounds[n + 1] - bs);
    const int g = j / (H / HKV);
    const idx_t ldq = (idx_t)H * D, ldk = (idx_t)HKV * D, ldv = (idx_t)HKV * DV, ldo = (idx_t)H * DV;
    const int L = min(BM, len - i0);
    const int kend = causal ? min(len, i0 + BM) : len;
    const int kbeg = window > 0 ? max(0, i0 - window + 1) : 0;
    const int t0 = kbeg / BN, t1 = (kend + BN - 1) / BN;
    const bf16_t* kb = k + bs * ldk + (idx_t)g * D;
    const bf16_t* vb = v + bs * ldv + (idx_t)g * DV;

    att_tile<BM, DP, NT>(sQ, LQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, L, D, tid);
    att_tile<BM, DVP, NT>(sO, LV, d_o + (bs + i0) * ldo + (idx_t)j * DV, ldo, L, DV, tid);
    att_tile<BN, DP, NT>(sK, LQ, kb + (idx_t)t0 * BN * ldk, ldk, len - t0 * BN, D, tid);
    att_tile<BN, DVP, NT>(sV, LV, vb + (idx_t)t0 * BN * ldv, ldv, len - t0 * BN, DV, tid);
    cp_commit();

    const int qr = 16 * w, qlo = i0 + qr;
    float lr[2], dr[2];  // lse * log2(e) and delta of the lane's two rows (+inf, 0 past the end)
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = qlo + fg + 8 * r;
        lr[r] = i < len ? lse[(bs + i) * H + j] * ATT_L2E : ATT_POS_INF;
        dr[r] = i < len ? delta[(bs + i) * H + j] : 0.f;
    }
    float acc[DP / 8][4];
    #pragma unroll
    for (int nt = 0; nt < DP / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;

    // one barrier per key tile (as the forward's): the copy of tile t + 1 starts after it
    for (int t = t0; t < t1; ++t) {
        const int buf = (t - t0) & 1;
        cp_wait0();
        __syncthreads();
        if (t + 1 < t1) {
            const int nb = buf ^ 1, kt = (t + 1) * BN;
            att_tile<BN, DP, NT>(sK + nb * BN * LQ, LQ, kb + (idx_t)kt * ldk, ldk, len - kt, D, tid);
            att_tile<BN, DVP, NT>(sV + nb * BN * LV, LV, vb + (idx_t)kt * ldv, ldv, len - kt, DV, tid);
            cp_commit();
        }
        const int kt = t * BN;
        const bool idle = qlo >= len || (causal && kt > qlo + 15) || (window > 0 && kt + BN - 1 <= qlo - window);
        if (!idle) {
            const bf16_t* Kb = sK + buf * BN * LQ;
            const bf16_t* Vb = sV + buf * BN * LV;
            float s[BN / 8][4], dp[BN / 8][4];
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
            #pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) {
                unsigned a[4];
                ldsm4(a, fa(sQ, LQ, qr, 16 * kk, lane));
                #pragma unroll
                for (int np = 0; np < BN / 16; ++np) {
                    unsigned r[4];
                    ldsm4(r, fbn(Kb, LQ, 16 * kk, 16 * np, lane));
                    mma16816(s[2 * np], a, r[0], r[1]);
                    mma16816(s[2 * np + 1], a, r[2], r[3]);
                }
            }
            #pragma unroll
            for (int kk = 0; kk < DVP / 16; ++kk) {
                unsigned a[4];
                ldsm4(a, fa(sO, LV, qr, 16 * kk, lane));
                #pragma unroll
                for (int np = 0; np < BN / 16; ++np) {
                    unsigned r[4];
                    ldsm4(r, fbn(Vb, LV, 16 * kk, 16 * np, lane));
                    mma16816(dp[2 * np], a, r[0], r[1]);
                    mma16816(dp[2 * np + 1], a, r[2], r[3]);
                }
            }
            const bool edge = kt + BN > len || (causal && kt + BN - 1 > qlo) || (window > 0 && kt <= qlo + 15 - window);
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] = ex2f(s[nt][e] * sl2 - lr[e >> 1]);
            if (edge) {  // warp-uniform
                #pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt) {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const bool ok = att_key_ok(qlo + fg + 8 * (e >> 1), kt + 8 * nt + 2 * ft + (e & 1), len, causal, window);
                        s[nt][e] = ok ? s[nt][e] : 0.f;
                    }
                }
            }
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
                #pragma unroll
                for (int e = 0; e < 4; ++e) dp[nt][e] = s[nt][e] * (dp[nt][e] - dr[e >> 1]);
            #pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                const unsigned da[4] = {pack2(dp[2 * kk][0], dp[2 * kk][1]), pack2(dp[2 * kk][2], dp[2 * kk][3]),
                                        pack2(dp[2 * kk + 1][0], dp[2 * kk + 1][1]), pack2(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
                #pragma unroll
                for (int np = 0; np < DP / 16; ++np) {
                    unsigned r[4];
                    ldsm4t(r, fbt(Kb, LQ, 16 * kk, 16 * np, lane));
                    mma16816(acc[2 * np], da, r[0], r[1]);
                    mma16816(acc[2 * np + 1], da, r[2], r[3]);
                }
            }
        }
    }
    cp_wait0();
    __syncthreads();  // every warp is done with the tiles

    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = qr + fg + 8 * r;
        #pragma unroll
        for (int nt = 0; nt < DP / 8; ++nt)
            *(unsigned*)(sQ + row * LQ + 8 * nt + 2 * ft) = pack2(acc[nt][2 * r] * scale, acc[nt][2 * r + 1] * scale);
    }
    __syncthreads();
    att_store<BM, DP, NT>(dq + (bs + i0) * ldq + (idx_t)j * D, ldq, sQ, LQ, L, D, tid);
}

#define ATTN_BWD_ENTRY(DP, DVP)                                                                                              \
extern "C" __global__ void __launch_bounds__(128) attn_bwd_dkv_d##DP##_dv##DVP(                                                \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse, const float* delta, bf16_t* dk,   \
    bf16_t* dv, const idx_t* bounds, const int* kt_seq, const int* kt_k0, int H, int HKV, int D, int DV, int causal,         \
    int window, float sl2, float scale) {                                                                                    \
    attn_bwd_dkv<DP, DVP, false>(q, k, v, d_o, lse, delta, dk, dv, nullptr, nullptr, nullptr, bounds, kt_seq, kt_k0, H, HKV, D, \
                                 DV, causal, window, sl2, scale);                                                            \
}                                                                                                                            \
extern "C" __global__ void __launch_bounds__(128) attn_bwd_fused_d##DP##_dv##DVP(                                              \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse, const float* delta, bf16_t* dk,   \
    bf16_t* dv, bf16_t* dq, float* dq_acc, int* turn, const idx_t* bounds, const int* kt_seq, const int* kt_k0, int H,       \
    int HKV, int D, int DV, int causal, int window, float sl2, float scale) {                                                \
    attn_bwd_dkv<DP, DVP, true>(q, k, v, d_o, lse, delta, dk, dv, dq, dq_acc, turn, bounds, kt_seq, kt_k0, H, HKV, D, DV,     \
                                causal, window, sl2, scale);                                                                 \
}                                                                                                                            \
extern "C" __global__ void __launch_bounds__(256) attn_bwd_fused8_d##DP##_dv##DVP(                                             \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse, const float* delta, bf16_t* dk,   \
    bf16_t* dv, bf16_t* dq, float* dq_acc, int* turn, const idx_t* bounds, const int* kt_seq, const int* kt_k0, int H,       \
    int HKV, int D, int DV, int causal, int window, float sl2, float scale) {                                                \
    attn_bwd_dkv<DP, DVP, true, 8>(q, k, v, d_o, lse, delta, dk, dv, dq, dq_acc, turn, bounds, kt_seq, kt_k0, H, HKV, D, DV,  \
                                   causal, window, sl2, scale);                                                              \
}                                                                                                                            \
extern "C" __global__ void __launch_bounds__(256) attn_bwd_dq_d##DP##_dv##DVP(                                                 \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse, const float* delta, bf16_t* dq,   \
    const idx_t* bounds, const int* tile_seq, const int* tile_q0, int H, int HKV, int D, int DV, int causal, int window,     \
    float sl2, float scale) {                                                                                                \
    attn_bwd_dq<DP, DVP>(q, k, v, d_o, lse, delta, dq, bounds, tile_seq, tile_q0, H, HKV, D, DV, causal, window, sl2, scale); \
}

ATTN_BWD_ENTRY(64, 32)
ATTN_BWD_ENTRY(64, 64)
ATTN_BWD_ENTRY(128, 128)
