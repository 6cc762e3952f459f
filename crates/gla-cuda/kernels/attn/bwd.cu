// attn/bwd.cu: the softmax attention backward (flash-attention-2 style, deterministic: every sum
// has a fixed order), bf16 storage, f32 math. With dO the upstream gradient, P recomputed from the
// forward's lse (P = ex2(S * scale * log2(e) - lse * log2(e)) on allowed pairs, 0 elsewhere):
//
// attn_bwd_pre: one warp per (row, head): delta [rows, H] f32 (=) = rowsum(dO * O), over DV.
//
// attn_bwd_kvq_d{DP}_dv{DVP}: one block per (kv head g, unit = (sequence n, split s)), 256 threads
// (8 warps), grid (H_KV, units) (u_seq / u_split). The block takes the key tiles s, s + splits, ...
// (128 keys each) of sequence n; per key tile K_t, for every query head j of the group, in order,
// and every query tile (64 rows) that can see a key of it (five products, the
// flash-attention-2 count):
//     S = Q K_t^T, dP = dO V_t^T                   (warps 2 x 4 over rows x keys: 32 x 32 each)
//     P = ex2(S sl2 - lse log2 e), dS = P * (dP - delta)       -> shared memory (bf16)
//     dV += P^T dO,  dK += dS^T Q                  (warps 4 x 2 over keys x columns, f32 registers)
//     dQ_part = dS K_t                              (warps 2 x 4 over rows x columns)
// dQ_part is added (red.add, f32) into split s's dQ sum dq_acc[s] [rows, H, D] (stride acc_stride),
// whose rows of sequence n and heads of group g the block zeroes first: each element has one
// adding thread, in key-tile order, so the sum is deterministic. After the tile, dk = scale * dK,
// dv = dV (=, bf16). Q / dO tiles (and their lse, delta) double-buffered with cp.async.
// attn_bwd_dq_sum: dq (=, bf16) = scale * the sum of the splits' sums, over the sequences' rows.
// The one-pass kernel needs D == DP (the host runs it only so).
//
// Masking as the forward: only blocks crossing the diagonal, the window's edge or a sequence end
// are masked. Rows past a sequence end are neither read (zero) nor written.
// Layouts: the forward's; do [rows, H, DV]; dq [rows, H, D], dk [rows, H_KV, D], dv [rows, H_KV,
// DV] bf16. Dynamic smem: src/attn/dispatch.rs (kvq_smem) matches the carve-up below.
//
// Entry points: attn_bwd_pre attn_bwd_kvq_d64_dv32 attn_bwd_kvq_d64_dv64 attn_bwd_kvq_d128_dv128
//   attn_bwd_dq_sum

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

// Zeroes len rows (row stride ld) of C floats (C % 4 == 0) at a0, by the block's NT threads:
// the block's part of its split's dQ sum (the rows of its sequence, the heads of its
// group), before its first adds. The caller runs a GPU-scope fence (__threadfence) before the
// barrier that precedes those adds, which orders these stores (through L1) before the adds (in
// L2) of the other threads.
template <int NT>
__device__ __forceinline__ void att_dq_zero(float* a0, int len, idx_t ld, int C, int tid) {
    const int per = C / 4;  // float4 per row
    float4 z;
    z.x = z.y = z.z = z.w = 0.f;
    if (per <= NT) {  // NT / per rows at a time
        const int rs = NT / per, r = tid / per, c = tid % per;
        if (r < rs)
            for (int i = r; i < len; i += rs) *(float4*)(a0 + i * ld + 4 * c) = z;
    } else {
        for (int i = 0; i < len; ++i)
            for (int c = tid; c < per; c += NT) *(float4*)(a0 + i * ld + 4 * c) = z;
    }
}

template <int DP, int DVP>
__device__ __forceinline__ void attn_bwd_kvq(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                             const bf16_t* __restrict__ d_o, const float* __restrict__ lse,
                                             const float* __restrict__ delta, bf16_t* __restrict__ dk, bf16_t* __restrict__ dv,
                                             float* __restrict__ dq_acc, idx_t acc_stride, const idx_t* __restrict__ bounds,
                                             const int* __restrict__ u_seq, const int* __restrict__ u_split, int splits, int H,
                                             int HKV, int D, int DV, int causal, int window, float sl2, float scale) {
    constexpr int BN = 128, BQ = 64, LQ = DP + 8, LV = DVP + 8, LP = BN + 8, NT = 256;
    DELTA_SMEM(smem);
    bf16_t* sK = (bf16_t*)smem;      // [BN][LQ]; the key tile's dk staging at its end
    bf16_t* sV = sK + BN * LQ;       // [BN][LV]; dv staging
    bf16_t* sQ = sV + BN * LV;       // [2][BQ][LQ]
    bf16_t* sO = sQ + 2 * BQ * LQ;   // [2][BQ][LV] (dO)
    bf16_t* sP = sO + 2 * BQ * LV;   // [BQ][LP] P of the query tile (rows: queries, columns: keys)
    bf16_t* sS = sP + BQ * LP;       // [BQ][LP] dS
    float* sL = (float*)(sS + BQ * LP);  // [2][BQ] lse * log2(e) (+inf past the end)
    float* sD = sL + 2 * BQ;             // [2][BQ] delta
    DELTA_SMEM_END(smem, sD + 2 * BQ);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int g = blockIdx.x, u = blockIdx.y;
    const int n = u_seq[u], sp = u_split[u];
    const idx_t bs = bounds[n];
    const int len = (int)(bounds[n + 1] - bs);
    const int grp = H / HKV;
    const idx_t ldq = (idx_t)H * D, ldk = (idx_t)HKV * D, ldv = (idx_t)HKV * DV, ldo = (idx_t)H * DV;
    float* acc = dq_acc + sp * acc_stride;

    // zero the block's part of its split's dQ sum (only this block adds there); a GPU-scope
    // fence before the first adds' barrier orders these stores before the adds
    att_dq_zero<NT>(acc + bs * ldq + (idx_t)g * grp * D, len, ldq, grp * D, tid);
    bool fresh = true;

    // warp w: S, dP and dQ on query rows qr .. qr + 31 (x keys kc .. kc + 31 for S and dP, x
    // columns cd .. cd + DP / 4 - 1 for dQ); dV, dK on keys kr .. kr + 31 x half the columns
    const int qr = 32 * (w & 1), kc = 32 * (w >> 1), cd = (DP / 4) * (w >> 1);
    const int kr = 32 * (w >> 1), cv = (DVP / 2) * (w & 1), cq = (DP / 2) * (w & 1);
    // the warp's ldmatrix addresses (shared-memory bytes) at tile offset (0, 0); Q and dO add
    // the buffer's offset
    const unsigned uQ = smem_addr(sQ), uO = smem_addr(sO);
    const unsigned aS_Q = att_lane_a(LQ, lane) + 2 * qr * LQ, aS_K = smem_addr(sK) + att_lane_b(LQ, lane) + 2 * kc * LQ;
    const unsigned aP_O = att_lane_a(LV, lane) + 2 * qr * LV, aP_V = smem_addr(sV) + att_lane_b(LV, lane) + 2 * kc * LV;
    const unsigned aV_P = smem_addr(sP) + att_lane_b(LP, lane) + 2 * kr, aV_O = att_lane_a(LV, lane) + 2 * cv;
    const unsigned aK_S = smem_addr(sS) + att_lane_b(LP, lane) + 2 * kr, aK_Q = att_lane_a(LQ, lane) + 2 * cq;
    const unsigned aQ_S = smem_addr(sS) + att_lane_a(LP, lane) + 2 * qr * LP, aQ_K = smem_addr(sK) + att_lane_a(LQ, lane) + 2 * cd;
    const int nkt = (len + BN - 1) / BN;
    for (int kt = sp; kt < nkt; kt += splits) {
        const int k0 = kt * BN, LK = min(BN, len - k0);
        int q0, q1;
        att_kv_qtiles<BN, BQ>(k0, len, causal, window, q0, q1);
        const int nq = max(0, q1 - q0), nit = grp * nq;
        att_tile<BN, DP, NT>(sK, LQ, k + (bs + k0) * ldk + (idx_t)g * D, ldk, LK, D, tid);
        att_tile<BN, DVP, NT>(sV, LV, v + (bs + k0) * ldv + (idx_t)g * DV, ldv, LK, DV, tid);
        // the loads of iteration `it` (head g * grp + it / nq, query tile q0 + it % nq) into buffer
        // b: Q and dO by cp.async, lse and delta of row tid (tid < BQ) into registers, stored by
        // put() after the iteration's first products
        float nl = ATT_POS_INF, nd = 0.f;
        auto issue = [&](int it, int b) {
            const int j = g * grp + it / nq, i0 = (q0 + it % nq) * BQ;
            const int LQr = min(BQ, len - i0);
            att_tile<BQ, DP, NT>(sQ + b * BQ * LQ, LQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, LQr, D, tid);
            att_tile<BQ, DVP, NT>(sO + b * BQ * LV, LV, d_o + (bs + i0) * ldo + (idx_t)j * DV, ldo, LQr, DV, tid);
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

        float dK[2][DP / 16][4], dV[2][DVP / 16][4];
        #pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            #pragma unroll
            for (int nt = 0; nt < DP / 16; ++nt) dK[mt][nt][0] = dK[mt][nt][1] = dK[mt][nt][2] = dK[mt][nt][3] = 0.f;
            #pragma unroll
            for (int nt = 0; nt < DVP / 16; ++nt) dV[mt][nt][0] = dV[mt][nt][1] = dV[mt][nt][2] = dV[mt][nt][3] = 0.f;
        }

        for (int it = 0; it < nit; ++it) {
            const int b = it & 1;
            cp_wait0();
            __syncthreads();  // iteration it's loads landed; every warp is done with it - 1's tiles
            if (it + 1 < nit) {
                issue(it + 1, b ^ 1);
                cp_commit();
            }
            const int j = g * grp + it / nq, i0 = (q0 + it % nq) * BQ;
            const unsigned uQb = uQ + 2 * b * BQ * LQ, uOb = uO + 2 * b * BQ * LV;
            const int qlo = i0 + qr, klo = k0 + kc;

            // S = Q K^T, dP = dO V^T on the warp's 32 x 32 block; P = ex2(S * sl2 - lse * log2(e))
            // on allowed pairs (0 elsewhere), dS = P * (dP - delta); both to shared memory
            float s[2][4][4], dp[2][4][4];
            #pragma unroll
            for (int mt = 0; mt < 2; ++mt)
                #pragma unroll
                for (int nt = 0; nt < 4; ++nt)
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) s[mt][nt][e] = dp[mt][nt][e] = 0.f;
            const bool idle = qlo >= len || klo >= len || (causal && klo > qlo + 31) || (window > 0 && klo + 31 <= qlo - window);
            if (!idle) {  // warp-uniform
                #pragma unroll
                for (int kk = 0; kk < DP / 16; ++kk) {
                    unsigned a[2][4], r[2][4];
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt) ldsm4a(a[mt], uQb + aS_Q + 2 * (16 * mt * LQ + 16 * kk));
                    #pragma unroll
                    for (int np = 0; np < 2; ++np) ldsm4a(r[np], aS_K + 2 * (16 * np * LQ + 16 * kk));
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
                        #pragma unroll
                        for (int np = 0; np < 2; ++np) {
                            mma16816(s[mt][2 * np], a[mt], r[np][0], r[np][1]);
                            mma16816(s[mt][2 * np + 1], a[mt], r[np][2], r[np][3]);
                        }
                }
                #pragma unroll
                for (int kk = 0; kk < DVP / 16; ++kk) {
                    unsigned a[2][4], r[2][4];
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt) ldsm4a(a[mt], uOb + aP_O + 2 * (16 * mt * LV + 16 * kk));
                    #pragma unroll
                    for (int np = 0; np < 2; ++np) ldsm4a(r[np], aP_V + 2 * (16 * np * LV + 16 * kk));
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
                        #pragma unroll
                        for (int np = 0; np < 2; ++np) {
                            mma16816(dp[mt][2 * np], a[mt], r[np][0], r[np][1]);
                            mma16816(dp[mt][2 * np + 1], a[mt], r[np][2], r[np][3]);
                        }
                }
                const float* Lb = sL + b * BQ;
                const float* Db = sD + b * BQ;
                const bool edge = klo + 32 > len || (causal && klo + 31 > qlo) || (window > 0 && qlo + 31 - klo >= window);
                #pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    #pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const float lr = Lb[qr + 16 * mt + fg + 8 * r];
                        #pragma unroll
                        for (int nt = 0; nt < 4; ++nt)
                            #pragma unroll
                            for (int c = 0; c < 2; ++c) s[mt][nt][2 * r + c] = ex2f(s[mt][nt][2 * r + c] * sl2 - lr);
                    }
                }
                if (edge) {  // warp-uniform; a separate pass, so the common case carries no mask code
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
                        #pragma unroll
                        for (int r = 0; r < 2; ++r)
                            #pragma unroll
                            for (int nt = 0; nt < 4; ++nt)
                                #pragma unroll
                                for (int c = 0; c < 2; ++c) {
                                    const bool ok = att_key_ok(qlo + 16 * mt + fg + 8 * r, klo + 8 * nt + 2 * ft + c, len, causal, window);
                                    s[mt][nt][2 * r + c] = ok ? s[mt][nt][2 * r + c] : 0.f;
                                }
                }
                #pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    #pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const float dr = Db[qr + 16 * mt + fg + 8 * r];
                        #pragma unroll
                        for (int nt = 0; nt < 4; ++nt)
                            #pragma unroll
                            for (int c = 0; c < 2; ++c) dp[mt][nt][2 * r + c] = s[mt][nt][2 * r + c] * (dp[mt][nt][2 * r + c] - dr);
                    }
                }
            }
            #pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int row = qr + 16 * mt + fg + 8 * r;
                    #pragma unroll
                    for (int nt = 0; nt < 4; ++nt) {
                        const int col = kc + 8 * nt + 2 * ft;
                        *(unsigned*)(sP + row * LP + col) = pack2(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]);
                        *(unsigned*)(sS + row * LP + col) = pack2(dp[mt][nt][2 * r], dp[mt][nt][2 * r + 1]);
                    }
                }
            }
            // buffer b ^ 1's lse and delta were last read in iteration it - 1, before this one's barrier
            if (it + 1 < nit) put(b ^ 1);
            if (fresh) {  // block-uniform: the block's first query tile
                __threadfence();
                fresh = false;
            }
            __syncthreads();  // P and dS of every warp in sP, sS (and the zeroed sum)

            // dV += P^T dO, dK += dS^T Q on the warp's 32 keys x half the columns (A from the
            // transposed P and dS tiles), unless none of its keys sees a row of the tile
            const int kw = k0 + kr;
            if (!(kw >= len || (causal && kw > i0 + BQ - 1) || (window > 0 && kw + 31 <= i0 - window))) {
                #pragma unroll
                for (int kk = 0; kk < BQ / 16; ++kk) {
                    unsigned pa[2][4], da[2][4];
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        ldsm4ta(pa[mt], aV_P + 2 * (16 * kk * LP + 16 * mt));
                        ldsm4ta(da[mt], aK_S + 2 * (16 * kk * LP + 16 * mt));
                    }
                    #pragma unroll
                    for (int np = 0; np < DVP / 32; ++np) {
                        unsigned r[4];
                        ldsm4ta(r, uOb + aV_O + 2 * (16 * kk * LV + 16 * np));
                        #pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            mma16816(dV[mt][2 * np], pa[mt], r[0], r[1]);
                            mma16816(dV[mt][2 * np + 1], pa[mt], r[2], r[3]);
                        }
                    }
                    #pragma unroll
                    for (int np = 0; np < DP / 32; ++np) {
                        unsigned r[4];
                        ldsm4ta(r, uQb + aK_Q + 2 * (16 * kk * LQ + 16 * np));
                        #pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            mma16816(dK[mt][2 * np], da[mt], r[0], r[1]);
                            mma16816(dK[mt][2 * np + 1], da[mt], r[2], r[3]);
                        }
                    }
                }
            }

            // dQ part = dS K on the warp's 32 rows x DP / 4 columns, added to the split's sum: each
            // element has one adding thread, in key-tile order (deterministic)
            if (qlo < len && !(causal && k0 > qlo + 31)) {
                float a2[2][DP / 32][4];
                #pragma unroll
                for (int mt = 0; mt < 2; ++mt)
                    #pragma unroll
                    for (int nt = 0; nt < DP / 32; ++nt) a2[mt][nt][0] = a2[mt][nt][1] = a2[mt][nt][2] = a2[mt][nt][3] = 0.f;
                #pragma unroll
                for (int kk = 0; kk < BN / 16; ++kk) {
                    if (causal && k0 + 16 * kk > qlo + 31) break;  // dS = 0 from here on (warp-uniform)
                    unsigned a[2][4];
                    #pragma unroll
                    for (int mt = 0; mt < 2; ++mt) ldsm4a(a[mt], aQ_S + 2 * (16 * mt * LP + 16 * kk));
                    #pragma unroll
                    for (int np = 0; np < DP / 64; ++np) {
                        unsigned r[4];
                        ldsm4ta(r, aQ_K + 2 * (16 * kk * LQ + 16 * np));
                        #pragma unroll
                        for (int mt = 0; mt < 2; ++mt) {
                            mma16816(a2[mt][2 * np], a[mt], r[0], r[1]);
                            mma16816(a2[mt][2 * np + 1], a[mt], r[2], r[3]);
                        }
                    }
                }
                #pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    #pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const int i = qlo + 16 * mt + fg + 8 * r;
                        if (i >= len) continue;
                        float* pa = acc + (bs + i) * ldq + (idx_t)j * D + cd + 2 * ft;
                        #pragma unroll
                        for (int nt = 0; nt < DP / 32; ++nt) att_red2(pa + 8 * nt, a2[mt][nt][2 * r], a2[mt][nt][2 * r + 1]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with the key tile's K, V and the query tiles

        // dk = scale * dK, dv = dV through the K and V tiles
        #pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            #pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = kr + 16 * mt + fg + 8 * r;
                #pragma unroll
                for (int nt = 0; nt < DP / 16; ++nt)
                    *(unsigned*)(sK + row * LQ + cq + 8 * nt + 2 * ft) = pack2(dK[mt][nt][2 * r] * scale, dK[mt][nt][2 * r + 1] * scale);
                #pragma unroll
                for (int nt = 0; nt < DVP / 16; ++nt)
                    *(unsigned*)(sV + row * LV + cv + 8 * nt + 2 * ft) = pack2(dV[mt][nt][2 * r], dV[mt][nt][2 * r + 1]);
            }
        }
        __syncthreads();
        att_store<BN, DP, NT>(dk + (bs + k0) * ldk + (idx_t)g * D, ldk, sK, LQ, LK, D, tid);
        att_store<BN, DVP, NT>(dv + (bs + k0) * ldv + (idx_t)g * DV, ldv, sV, LV, LK, DV, tid);
        __syncthreads();  // the staging is read before the next key tile's loads land there
    }
}

// dq [rows, H, D] (=, bf16) = scale * the sum of the splits' dQ sums (dq_acc [splits][rows, H, D]
// f32, split s at s * stride) over the elements e0 .. e1 - 1 (the sequences' rows; 4 per thread).
extern "C" __global__ void __launch_bounds__(256) attn_bwd_dq_sum(const float* __restrict__ acc, bf16_t* __restrict__ dq, idx_t e0,
                                                                  idx_t e1, idx_t stride, int splits, float scale) {
    const idx_t e = e0 + 4 * ((idx_t)blockIdx.x * 256 + threadIdx.x);
    if (e >= e1) return;
    float4 x = *(const float4*)(acc + e);
    for (int s = 1; s < splits; ++s) {
        const float4 y = *(const float4*)(acc + s * stride + e);
        x.x += y.x;
        x.y += y.y;
        x.z += y.z;
        x.w += y.w;
    }
    uint2 o;
    o.x = pack2(x.x * scale, x.y * scale);
    o.y = pack2(x.z * scale, x.w * scale);
    *(uint2*)(dq + e) = o;
}

#define ATTN_BWD_ENTRY(DP, DVP)                                                                                              \
extern "C" __global__ void __launch_bounds__(256, 1) attn_bwd_kvq_d##DP##_dv##DVP(                                             \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* d_o, const float* lse, const float* delta, bf16_t* dk,   \
    bf16_t* dv, float* dq_acc, idx_t acc_stride, const idx_t* bounds, const int* u_seq, const int* u_split, int splits,      \
    int H, int HKV, int D, int DV, int causal, int window, float sl2, float scale) {                                        \
    attn_bwd_kvq<DP, DVP>(q, k, v, d_o, lse, delta, dk, dv, dq_acc, acc_stride, bounds, u_seq, u_split, splits, H, HKV, D, DV, \
                          causal, window, sl2, scale);                                                                       \
}

ATTN_BWD_ENTRY(64, 32)
ATTN_BWD_ENTRY(64, 64)
ATTN_BWD_ENTRY(128, 128)
