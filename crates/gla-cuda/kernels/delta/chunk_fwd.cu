// delta/chunk_fwd.cu: the chunk-parallel launches of the chunked delta rule's forward (the
// backward recomputes with the first): the UT/WY prep and the output pass. docs/kernels.md has
// the pass structure; delta/chunk_h.cu the sequential state pass between them.
//
// delta_wy_k{KP}_{dtype}: one block per (chunk, value head), 256 threads. From k (head h, raw;
// rk its L2 row factors), v, bt (beta, f32) and gl (log decay, f32, or null):
//     G  = chunk-local cumsum of g (log2 units)                      -> g2 [chunks, HV, 64] f32 (=)
//     A  = strictly-lower(diag(beta) (Kn Kn^T) * exp(G_t - G_s))         (f32, smem)
//     T  = (I + A)^-1, by 16 x 16 blocks (solve_t, T^T over A's upper half) -> tm [SP][chunks, HV, 64, 64] (=;
//          null: not stored, a forward no backward reads)
//     w  = T (beta exp(G) Kn)                                        -> w [SP][chunks, HV, 64, KP] (=)
//     u  = T (beta V)                                                -> u [chunks, HV, 64, VP] f32 (=)
// The row factors of the scaled K and V ride on T's columns: w = (T diag(beta rk exp(G))) K and
// u = (T diag(beta)) V, with K and V raw (exact in bf16) and T diag(.) split (delta/common.cuh),
// so w and u carry the near-f32 accuracy the state pass's cancellation u - w S needs in two
// mma terms. Rows past the sequence end are zero (beta = 0 there, so T is the identity on them
// and w, u vanish). Three blocks per SM (registers <= 80, KP = VP = 128: 72 KB of smem).
//
// delta_o_k{KP}_{dtype}: one block per (chunk, value head), 256 threads. With hs (the state
// entering each chunk) and vn (v_new = u - w S, split) from the state pass:
//     o = scale [(Qn * exp(G)) S + P U],   P = (Qn Kn^T) * exp(G_t - G_s) masked to s <= t
// P is formed once per block (split); o per 64-wide V tile. o (=, storage dtype). Q S runs on the
// raw (exact) q, its row factor scale rq exp(G) applied to the f32 result. S's tile takes K's
// space once P is formed: three blocks per SM (KP = 128: 72 KB of smem).
// Dynamic smem: the host's layouts (src/delta/dispatch.rs) match the carve-ups below.
//
// delta_wyt_k{KP}_bf16: delta_wy writing G and T only, for the residual state
// pass (delta/chunk_h.cu delta_hr_b2), which forms v_new from T, k and v itself; its solve's
// off-diagonal levels run on tensor cores in 3xTF32 (solve_t_tc).
//
// delta_pm_k{KP}_bf16: one block per (chunk, value head), 256 threads: P as delta_o forms it (q,
// k raw, rq, rk, G from g2; split) -> pm [SP][chunks, HV, 64, 64] (=), for the fused-output
// forward `delta_hrop_*` and the state-gradient pass `delta_h_bwd_rdvp1_*` (delta/chunk_h.cu),
// whose VP / 64 column blocks per head would each form it again.
//
// Entry points (KP = K padded to 64 .. 256; f32 storage up to 128):
//   delta_wyt_k64_bf16 delta_wyt_k128_bf16 delta_wyt_k192_bf16 delta_wyt_k256_bf16
//   delta_wy_k64_f32 delta_wy_k128_f32 delta_wy_k64_bf16 delta_wy_k128_bf16 delta_wy_k192_bf16 delta_wy_k256_bf16
//   delta_o_k64_f32 delta_o_k128_f32 delta_o_k64_bf16 delta_o_k128_bf16 delta_o_k192_bf16 delta_o_k256_bf16
//   delta_pm_k64_bf16 delta_pm_k128_bf16 delta_pm_k192_bf16 delta_pm_k256_bf16

// T = (I + A)^-1 (A strictly lower in sA [64][65] f32, left intact), stored transposed in sA's
// upper triangle and diagonal (T_tc at sA[c][t], t >= c), so T needs no memory of its own: the
// four diagonal 16 x 16 blocks by forward substitution (one thread per column), then the
// off-diagonal blocks level by level (d = i - j = 1, 2, 3), T_ij = -T_ii sum_{j <= k < i}
// A_ik T_kj in f32 FMA (T_kj of earlier levels), a thread per 2 x 2 micro-tile. Every thread
// calls it; it holds barriers.
// solve_t's diagonal 16 x 16 blocks T_ii = (I + A_ii)^-1 by forward substitution, one thread per
// column (threads 0 .. 63), T_ii^T to sA's upper half and diagonal; then a barrier.
__device__ __forceinline__ void solve_t_diag(float* sA, int tid) {
    if (tid < 64) {
        const int b = tid >> 4, c = tid & 15, r0 = 16 * b;
        float x[16];
        #pragma unroll
        for (int t = 0; t < 16; ++t) {
            float s = 0.f;
            #pragma unroll
            for (int q = 0; q < t; ++q) s += sA[(r0 + t) * 65 + r0 + q] * x[q];
            x[t] = t == c ? 1.f : -s;
        }
        // T^T goes to the upper half and the diagonal, which no thread reads A from
        #pragma unroll
        for (int t = 0; t < 16; ++t)
            if (t >= c) sA[(r0 + c) * 65 + r0 + t] = x[t];
    }
    __syncthreads();
}

__device__ __forceinline__ void solve_t(float* sA, int tid) {
    __shared__ float sM[3 * 256];  // the level's sums M_ij (at most three 16 x 16 blocks)
    solve_t_diag(sA, tid);
    // each level's products by 2 x 2 micro-tiles (rows t0, t0 + 1; columns c0, c0 + 1): every
    // shared-memory operand feeds two FMAs, half the loads of one output a thread (the solve's
    // cost is shared-memory traffic); each output's terms keep their order (q, then k, ascending)
    for (int d = 1; d < 4; ++d) {
        const int nb = 4 - d;  // blocks (i, j = i - d), i = d .. 3
        const int x = tid, bi = x >> 6, i = bi + d, j = i - d, t0 = 2 * ((x >> 3) & 7), c0 = 2 * (x & 7);
        if (x < nb * 64) {
            float s00 = 0.f, s01 = 0.f, s10 = 0.f, s11 = 0.f;
            {
                // k = j: T_jj[q][c] = 0 for q < c (those entries hold A)
                const float* a0 = sA + (16 * i + t0) * 65 + 16 * j;
                const float* b0 = sA + (16 * j + c0) * 65 + 16 * j;  // T_jj[q][c0] at b0[q]
                #pragma unroll
                for (int q = 0; q < 16; ++q) {
                    if (q >= c0) {
                        s00 += a0[q] * b0[q];
                        s10 += a0[65 + q] * b0[q];
                    }
                    if (q >= c0 + 1) {
                        s01 += a0[q] * b0[65 + q];
                        s11 += a0[65 + q] * b0[65 + q];
                    }
                }
            }
            for (int k = j + 1; k < i; ++k) {
                const float* a0 = sA + (16 * i + t0) * 65 + 16 * k;
                const float* b0 = sA + (16 * j + c0) * 65 + 16 * k;  // T_kj[q][c0] at b0[q]
                #pragma unroll
                for (int q = 0; q < 16; ++q) {
                    s00 += a0[q] * b0[q];
                    s10 += a0[65 + q] * b0[q];
                    s01 += a0[q] * b0[65 + q];
                    s11 += a0[65 + q] * b0[65 + q];
                }
            }
            float* m = sM + bi * 256 + t0 * 16 + c0;
            m[0] = s00, m[1] = s01, m[16] = s10, m[17] = s11;
        }
        __syncthreads();
        if (x < nb * 64) {
            // T_ij[t][c] = -sum_{q <= t} T_ii[t][q] M_ij[q][c]
            float s00 = 0.f, s01 = 0.f, s10 = 0.f, s11 = 0.f;
            #pragma unroll
            for (int q = 0; q < 16; ++q) {
                const float* ti = sA + (16 * i + q) * 65 + 16 * i + t0;  // T_ii[t0][q], T_ii[t0 + 1][q]
                const float* mq = sM + bi * 256 + q * 16 + c0;
                if (q <= t0) {
                    s00 += ti[0] * mq[0];
                    s01 += ti[0] * mq[1];
                }
                if (q <= t0 + 1) {
                    s10 += ti[1] * mq[0];
                    s11 += ti[1] * mq[1];
                }
            }
            float* o = sA + (16 * j + c0) * 65 + 16 * i + t0;
            o[0] = -s00, o[1] = -s10, o[65] = -s01, o[66] = -s11;
        }
        __syncthreads();
    }
}

// solve_t's contract with the off-diagonal levels on tensor cores (the `delta_wyt` entries): per
// level d, warp bi < 4 - d forms block (i, j) = (bi + d, bi): M_ij = sum_{j <= k < i} A_ik T_kj
// into registers, M_ij^T through the warp's scratch tile, then T_ij = -T_ii M_ij, every product
// on mma.sync m16n8k8 in 3xTF32 (mma_tf32x3: each operand split into two tf32 terms, the
// products of the lo terms summed apart from the hi one, about f32's accuracy; T leaves as two
// bf16 planes, 2^-17 relative, well above it). The FMA levels' shared-memory loads (scalar, each
// feeding two FMAs) bound delta_wyt at five blocks per SM; a warp's fragment loads feed 8 x 8
// products each. One barrier per level (the warp's own scratch orders M's two uses).
__device__ __forceinline__ void solve_t_tc(float* sA, int tid) {
    __shared__ float sM[3 * 16 * 20];  // per warp: M_ij^T, [c][q] at row stride 20 (conflict-free)
    solve_t_diag(sA, tid);
    const int wp = tid >> 5, lane = tid & 31, fg = lane >> 2, ft = lane & 3;
    for (int d = 1; d < 4; ++d) {
        if (wp < 4 - d) {
            const int i = wp + d, j = wp;
            float hi[2][4], lo[2][4];
            frag_zero(hi);
            frag_zero(lo);
            // M_ij: A_ik rows 16 i + fg (+ 8), columns 16 k + q; T_kj [q][c] is stored transposed
            // at sA[16 j + c][16 k + q] (the B operand's [n][k]), zero above T_jj's diagonal (q < c)
            for (int k = j; k < i; ++k) {
                #pragma unroll
                for (int q0 = 0; q0 < 16; q0 += 8) {
                    const float* ar = sA + (16 * i + fg) * 65 + 16 * k + q0 + ft;
                    const float a[4] = {ar[0], ar[8 * 65], ar[4], ar[8 * 65 + 4]};
                    #pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        const int c = 8 * nt + fg, q = q0 + ft;
                        const float* br = sA + (16 * j + c) * 65 + 16 * k + q;
                        const float b[2] = {k > j || q >= c ? br[0] : 0.f, k > j || q + 4 >= c ? br[4] : 0.f};
                        mma_tf32x3(hi[nt], lo[nt], a, b);
                    }
                }
            }
            float* sMw = sM + wp * 320;
            #pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) sMw[(8 * nt + FRAG_COL(0, e)) * 20 + FRAG_ROW(e)] = hi[nt][e] + lo[nt][e];
            }
            __syncwarp();
            // T_ij = -T_ii M_ij: T_ii [t][q] (q <= t) stored transposed at sA[16 i + q][16 i + t]
            frag_zero(hi);
            frag_zero(lo);
            #pragma unroll
            for (int q0 = 0; q0 < 16; q0 += 8) {
                const int q = q0 + ft;
                const float* tr = sA + (16 * i + q) * 65 + 16 * i + fg;
                const float a[4] = {q <= fg ? tr[0] : 0.f, q <= fg + 8 ? tr[8] : 0.f, q + 4 <= fg ? tr[4 * 65] : 0.f,
                                    q + 4 <= fg + 8 ? tr[4 * 65 + 8] : 0.f};
                #pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const float* mr = sMw + (8 * nt + fg) * 20 + q;
                    const float b[2] = {mr[0], mr[4]};
                    mma_tf32x3(hi[nt], lo[nt], a, b);
                }
            }
            #pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    sA[(16 * j + 8 * nt + FRAG_COL(0, e)) * 65 + 16 * i + FRAG_ROW(e)] = -(hi[nt][e] + lo[nt][e]);
            }
        }
        __syncthreads();
    }
}

// TONLY (the `delta_wyt` entries, the residual forward, delta/chunk_h.cu `delta_hr_b2`): G
// and T only (tm must not be null), no w, u.
template <typename E, int KP, bool TONLY = false>
__device__ __forceinline__ void wy_fwd(const E* __restrict__ k, const float* __restrict__ rk, const E* __restrict__ v,
                                       const float* __restrict__ bt, const float* __restrict__ gl, E* __restrict__ w,
                                       float* __restrict__ u, E* __restrict__ tm, float* __restrict__ g2, const idx_t* __restrict__ bounds,
                                       const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq, int H, int HV, int K,
                                       int V, int VP, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    const int LV = VP + DPAD;
    DELTA_SMEM(smem);
    // TONLY: no V, no T diag(d) (T leaves from sA): a third of the shared memory, more blocks
    E* sK = (E*)smem;                      // [64][LK]: K (raw)
    E* sV = sK + 64 * LK;                  // [64][LV]: V (raw)
    E* sT = sV + (TONLY ? 0 : 64 * LV);    // [64][LDT]: T diag(d), split (hi)
    E* sTl = sT + (SP - 1) * 64 * LDT;     // its lo plane
    float* sA = (float*)(TONLY ? sT : sTl + 64 * LDT);  // [64][65]
    float* sG = sA + 64 * 65;              // [64]
    float* sB = sG + 64;                   // [64]
    float* sR = sB + 64;                   // [64]
    DELTA_SMEM_END(smem, sR + 64);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    ld_qk<E, KP>(sK, k, c.r0, c.L, c.h, H, K, tid);
    if (!TONLY) ld_v<E>(sV, LV, v, c.r0, c.L, c.hv, HV, V, 0, VP, tid);
    cp_commit();
    if (wp == 0) {
        chunk_gscan(sG, gl, c.r0, c.L, HV, c.hv, lane);
        sB[lane] = lane < c.L ? bt[(c.r0 + lane) * HV + c.hv] : 0.f;
        sB[lane + 32] = lane + 32 < c.L ? bt[(c.r0 + lane + 32) * HV + c.hv] : 0.f;
    }
    ld_rf(sR, rk, c.r0, c.L, c.h, H, tid);
    cp_wait0();
    __syncthreads();
    if (tid < 64) g2[c.oc * 64 + tid] = sG[tid];
    {
        // A = strictly-lower(beta_t (Kn Kn^T)_ts exp(G_t - G_s)): each warp a 16 x 32 tile, no
        // product where the tile lies wholly above the diagonal
        const int mt = tri_mt(wp), n0 = (wp >> 2) * 32;
        float acc[4][4];
        frag_zero(acc);
        if (n0 < 16 * mt + 16) wgemm<false, true, 4>(acc, sK, LK, 16 * mt, sK, LK, n0, KP, lane);
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int t = 16 * mt + FRAG_ROW(e), s = n0 + FRAG_COL(nt, e);
                sA[t * 65 + s] = s < t ? sB[t] * sR[t] * sR[s] * acc[nt][e] * ex2f(sG[t] - sG[s]) : 0.f;
            }
        }
    }
    __syncthreads();
    if constexpr (TONLY) {
        solve_t_tc(sA, tid);
    } else {
        solve_t(sA, tid);
    }
    if constexpr (TONLY) {
        const idx_t tplane = nch * HV * 4096;
        for (int x = tid; x < 2048; x += DNT) {
            const int t = x >> 5, s = 2 * (x & 31);
            stg2_pair(tm, tplane, (c.oc * 64 + t) * 64 + s, t >= s ? sA[s * 65 + t] : 0.f, t >= s + 1 ? sA[(s + 1) * 65 + t] : 0.f);
        }
        return;
    }
    // w = T diag(beta rk exp(G)) K and u = T diag(beta) V: the row factors of the scaled K and V
    // ride on T's columns, so K and V enter the products raw (exact in bf16) and only T diag(d)
    // is split. Without decay and L2 norm both factors are beta (one pass over T).
    const bool same = gl == nullptr && rk == nullptr;
    {
        // column pairs (s, s + 1): one 4-byte store per plane
        const idx_t tplane = nch * HV * 4096;
        for (int x = tid; x < 2048; x += DNT) {
            const int t = x >> 5, s = 2 * (x & 31);
            const float t0 = t >= s ? sA[s * 65 + t] : 0.f, t1 = t >= s + 1 ? sA[(s + 1) * 65 + t] : 0.f;
            const float d0 = sB[s] * (same ? 1.f : sR[s] * ex2f(sG[s])), d1 = sB[s + 1] * (same ? 1.f : sR[s + 1] * ex2f(sG[s + 1]));
            st2_pair(sT, sTl, t * LDT + s, t0 * d0, t1 * d1);
            if (tm != nullptr) stg2_pair(tm, tplane, (c.oc * 64 + t) * 64 + s, t0, t1);
        }
    }
    __syncthreads();
    const int mt = tri_mt(wp), n1 = (wp >> 2) * 32;
    const idx_t wplane = nch * HV * 64 * KP;
    const int nend = same ? KP + VP : KP;
    for (int n0 = 0; n0 < KP + VP; n0 += 64) {
        const bool isw = n0 < KP;
        const int nc = isw ? n0 : n0 - KP;
        if (n0 == nend) {
            // T diag(beta) for u
            __syncthreads();
            for (int x = tid; x < 2048; x += DNT) {
                const int t = x >> 5, s = 2 * (x & 31);
                st2_pair(sT, sTl, t * LDT + s, t >= s ? sA[s * 65 + t] * sB[s] : 0.f, t >= s + 1 ? sA[(s + 1) * 65 + t] * sB[s + 1] : 0.f);
            }
            __syncthreads();
        }
        float acc[4][4];
        frag_zero(acc);
        // T is lower: rows 16 mt .. 16 mt + 16 end at depth 16 mt + 16
        wgemm2<false, false, 4>(acc, sT, sTl, LDT, 16 * mt, isw ? sK : sV, isw ? sK : sV, isw ? LK : LV, nc + n1, 64, lane, true,
                                false, 0, 16 * mt + 16);
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), col = nc + n1 + FRAG_COL(nt, e);
                if (isw) {
                    stg2_pair(w, wplane, (c.oc * 64 + t) * KP + col, acc[nt][e], acc[nt][e + 1]);
                } else {
                    st_pair(u + (c.oc * 64 + t) * VP + col, acc[nt][e], acc[nt][e + 1]);
                }
            }
        }
    }
}

template <typename E, int KP>
__device__ __forceinline__ void o_fwd(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const E* __restrict__ hs, const E* __restrict__ vn,
                                      const float* __restrict__ g2, E* __restrict__ o, const idx_t* __restrict__ bounds,
                                      const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq, int H, int HV, int K, int V,
                                      int VP, float scale, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    DELTA_SMEM(smem);
    E* sQ = (E*)smem;                      // [64][LK]
    E* sK = sQ + 64 * LK;                  // [64][LK], until P is formed; then sS
    E* sS = sK;                            // [KP][LDT] (KP LDT >= 64 LK for KP >= 64)
    E* sP = sS + KP * LDT;                 // [64][LDT]
    E* sPl = sP + (SP - 1) * 64 * LDT;
    E* sU = sPl + 64 * LDT;                // [64][LDT]
    E* sUl = sU + (SP - 1) * 64 * LDT;
    float* sG = (float*)(sUl + 64 * LDT);  // [64]
    float* sRq = sG + 64;                  // [64]
    float* sRk = sRq + 64;                 // [64]
    DELTA_SMEM_END(smem, sRk + 64);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    const idx_t vplane = nch * HV * 64 * VP;
    auto ld_u = [&](int v0) {
        tile_ld<E>(sU, LDT, vn + c.oc * 64 * (idx_t)VP + v0, VP, 64, 64, 64, 64, true, tid, DNT);
        if (SP == 2) tile_ld<E>(sUl, LDT, vn + vplane + c.oc * 64 * (idx_t)VP + v0, VP, 64, 64, 64, 64, true, tid, DNT);
    };
    ld_chunk_p_in<E, KP>(sQ, sK, sG, sRq, sRk, q, k, g2, rq, rk, c, H, K, tid, [&] { ld_u(0); });
    chunk_p<E, KP>(sP, sPl, sQ, sK, sG, sRq, sRk, scale, wp, lane);
    __syncthreads();
    const int mt = tri_mt(wp), n1 = (wp >> 2) * 32;
    for (int v0 = 0; v0 < VP; v0 += 64) {
        tile_ld<E>(sS, LDT, hs + c.oc * (idx_t)KP * VP + v0, VP, KP, 64, KP, 64, true, tid, DNT);
        if (v0 > 0) ld_u(v0);
        cp_commit();
        cp_wait0();
        __syncthreads();
        // the inter part on raw Q (exact), its row factor scale rq exp(G) on the f32 result
        float acc[4][4];
        frag_zero(acc);
        // 32 deep at a time: fewer live fragments at three blocks per SM (fully unrolled it also
        // fits in 80 registers without spilling; which runs faster is not measured)
        #pragma unroll 1
        for (int k0 = 0; k0 < KP; k0 += 32) wgemm<false, false, 4>(acc, sQ + k0, LK, 16 * mt, sS + k0 * LDT, LDT, n1, 32, lane);
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int t = 16 * mt + FRAG_ROW(e);
            const float f = scale * sRq[t] * ex2f(sG[t]);
            #pragma unroll
            for (int nt = 0; nt < 4; ++nt) acc[nt][e] *= f;
        }
        // P is causal: rows 16 mt .. 16 mt + 16 end at depth 16 mt + 16
        wgemm2_seq<false, false, 4>(acc, sP, sPl, LDT, 16 * mt, sU, sUl, LDT, n1, 64, lane, true, true, 0, 16 * mt + 16);
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int t = 16 * mt + FRAG_ROW(e), j = v0 + n1 + FRAG_COL(nt, e);
                st_row_pair(o + (c.r0 + t) * HV * (idx_t)V + (idx_t)c.hv * V, j, V, t < c.L, acc[nt][e], acc[nt][e + 1]);
            }
        }
        __syncthreads();
    }
}

// P alone (the `delta_pm` entries): chunk_p's P (split) per (chunk, value head) to pm [SP][chunks,
// HV, 64, 64], the tm layout, for the sequential passes that read P (`delta_hrop_*`,
// `delta_h_bwd_rdvp1_*`, delta/chunk_h.cu) instead of forming it in each column block.
template <typename E, int KP>
__device__ __forceinline__ void p_fwd(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ rq,
                                      const float* __restrict__ rk, const float* __restrict__ g2, E* __restrict__ pm,
                                      const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
                                      const int* __restrict__ chunk_seq, int H, int HV, int K, float scale, idx_t nch) {
    constexpr int LK = KP + DPAD, SP = Sp<E>::SP;
    DELTA_SMEM(smem);
    E* sQ = (E*)smem;                      // [64][LK]
    E* sK = sQ + 64 * LK;                  // [64][LK]
    E* sP = sK + 64 * LK;                  // [SP][64][LDT]
    E* sPl = sP + (SP - 1) * 64 * LDT;
    float* sG = (float*)(sPl + 64 * LDT);  // [64]
    float* sRq = sG + 64;                  // [64]
    float* sRk = sRq + 64;                 // [64]
    DELTA_SMEM_END(smem, sRk + 64);
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5;
    const ChunkHead c = chunk_head(bounds, chunk_off, chunk_seq, H, HV);
    ld_chunk_p_in<E, KP>(sQ, sK, sG, sRq, sRk, q, k, g2, rq, rk, c, H, K, tid, [] {});
    chunk_p<E, KP>(sP, sPl, sQ, sK, sG, sRq, sRk, scale, wp, lane);
    __syncthreads();
    tile_st<E>(pm + c.oc * 4096, 64, sP, LDT, 64, 64, tid, DNT);
    if (SP == 2) tile_st<E>(pm + nch * HV * 4096 + c.oc * 4096, 64, sPl, LDT, 64, 64, tid, DNT);
}

#define FWD_ENTRY(KP, NAME, E)                                                                           \
extern "C" __global__ void __launch_bounds__(DNT, 3) delta_wy_k##KP##_##NAME(                               \
    const E* k, const float* rk, const E* v, const float* bt, const float* gl, E* w, float* u, E* tm,    \
    float* g2, const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K,  \
    int V, int VP, idx_t nch) {                                                                          \
    wy_fwd<E, KP>(k, rk, v, bt, gl, w, u, tm, g2, bounds, chunk_off, chunk_seq, H, HV, K, V, VP, nch);   \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(DNT, 3) delta_o_k##KP##_##NAME(                                \
    const E* q, const E* k, const float* rq, const float* rk, const E* hs, const E* vn, const float* g2, \
    E* o, const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K, int V, \
    int VP, float scale, idx_t nch) {                                                                    \
    o_fwd<E, KP>(q, k, rq, rk, hs, vn, g2, o, bounds, chunk_off, chunk_seq, H, HV, K, V, VP, scale, nch); \
}

FWD_ENTRY(64, f32, float)
FWD_ENTRY(128, f32, float)
FWD_ENTRY(64, bf16, bf16_t)
FWD_ENTRY(128, bf16, bf16_t)
FWD_ENTRY(192, bf16, bf16_t)
FWD_ENTRY(256, bf16, bf16_t)

// P alone (bf16): the P that src/delta/dispatch.rs hro_pm and hb_pm read; smem: q, k and P's
// two planes
#define PM_ENTRY(KP)                                                                                     \
extern "C" __global__ void __launch_bounds__(DNT) delta_pm_k##KP##_bf16(                                  \
    const bf16_t* q, const bf16_t* k, const float* rq, const float* rk, const float* g2, bf16_t* pm,     \
    const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq, int H, int HV, int K, float scale, \
    idx_t nch) {                                                                                         \
    p_fwd<bf16_t, KP>(q, k, rq, rk, g2, pm, bounds, chunk_off, chunk_seq, H, HV, K, scale, nch);         \
}
PM_ENTRY(64)
PM_ENTRY(128)
PM_ENTRY(192)
PM_ENTRY(256)

// G and T only (bf16): the residual forward (src/delta/dispatch.rs h_res); delta_wy's
// arguments, w and u unread (may be null), tm required. Five blocks per SM (registers <= 48, no
// spills; KP = 128: 35 KB of dynamic shared memory, 3 KB static): the launch waits mostly on the
// solve's barriers, which more blocks cover
#define WYT_ENTRY(KP)                                                                                    \
extern "C" __global__ void __launch_bounds__(DNT, 5) delta_wyt_k##KP##_bf16(                               \
    const bf16_t* k, const float* rk, const bf16_t* v, const float* bt, const float* gl, bf16_t* w,      \
    float* u, bf16_t* tm, float* g2, const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq,  \
    int H, int HV, int K, int V, int VP, idx_t nch) {                                                    \
    wy_fwd<bf16_t, KP, true>(k, rk, v, bt, gl, w, u, tm, g2, bounds, chunk_off, chunk_seq, H, HV, K, V,  \
                             VP, nch);                                                                   \
}
WYT_ENTRY(64)
WYT_ENTRY(128)
WYT_ENTRY(192)
WYT_ENTRY(256)
