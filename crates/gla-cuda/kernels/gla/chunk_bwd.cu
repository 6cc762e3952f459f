// gla/chunk_bwd.cu: the chunk-parallel launches of the bf16 chunked backward (bf16 storage, f32
// gradients). Derivation: docs/kernels.md.
//
// Contract: q, k, g, v, do as the forward (gla/chunk_fwd.cu); dq, dk [rows, H, K], dv [rows, H,
// V], dg shaped like g, all f32. K, V <= 256. Launch order on one stream (src/ops.rs):
//   prep (kd, dl, qe = q scale exp(G)); h pass (hs = state entering each chunk); dh pass (dhs =
//   gradient of the state leaving each chunk, dh0); output pass with a_out (A, no o); then
//   bwd1: dv = A^T do + kd D_c -> dv (=);  dA = tril(do v^T) (f32 [chunk, H, 64, 64]);
//         dq <- do S_c^T and dk <- v D_c^T (raw: the decay factors come in bwd2);
//         sd = rowsum(S_c * D_c) (f32 [chunk, H, K])
//   bwd2: dq = scale exp(G) (do S^T) + scale sum_{s<=t} dA_ts k_s exp(G_t - G_s)
//         dk = exp(G_last - G) (v D^T) + scale sum_{t>=s} dA_ts q_t exp(G_t - G_s)
//         dg[r] = exp(G_last) sd + sum_{j<r} k_j dk_inter_j + sum_{u>=r} (q dq - k dk_intra)_u
//   (dg in gla-cpu's cancellation-free order: the diagonal pairs t == s cancel exactly and are
//   left out of the sum; the inter part of k dk is summed forward, never subtracted.)
// K <= 128 with V <= 128 runs bwd1 in one block per (chunk, head); K or V above 128 runs it split
// (bwd1k per 64 key rows, bwd1v per 64 value columns). bwd2 always runs in K tiles (bwd2k64:
// tiles of <= 64, two blocks per SM; bwd2k: tiles of <= 128 for a per-head gate with K > 128).
// Every output is written (=) except the per-head gate's dg, which the (at most two) K tiles of
// bwd2 add atomically onto zeros (deterministic: 0 + a + b == 0 + b + a exactly).
// Off-diagonal 16x16 blocks of the intra terms run on the tensor cores with sub-chunk normalisers
// (dq: G[16a] of the row block, dk: G[16b+15] of the column block; every exponent <= 0); the
// diagonal blocks pairwise in f32.

// f32 fragment pair store (row-major, leading dimension ld, columns j, j+1 guarded by n)
__device__ __forceinline__ void st2(float* p, idx_t off, int j, int n, float a, float b) {
    if (j + 1 < n && (off & 1) == 0) {
        float2 f;
        f.x = a;
        f.y = b;
        *(float2*)(p + off) = f;
    } else {
        if (j < n) p[off] = a;
        if (j + 1 < n) p[off + 1] = b;
    }
}

// bwd1: grid (chunks, H), 256 threads, smem (2*64 + 2*KS) * OV * 2 + 64 * LDH * 2 + 64 * LDK * 2
// with KS = max(Kp, 64): the raw dq / dk products read 64 key rows of the state tiles S_c, D_c,
// so tiles of fewer rows are zero-filled to 64 (their extra output columns are never stored).
// rev (bidir/, the backward scan of ViG): the chunk's rows in reverse order (local row t is
// global row r0 + L - 1 - t: v, do, kd read and dv, dq, dk stored there); addv (or null): dv
// written as the sum with addv's element (the other direction's dv, same layout). VW: the value
// columns dA, the raw dq / dk and sd run over (V <= VW; the tiles are zero past V, so the sums
// are the same): 128, or 64 for a narrow head (bidir_chunk_bwd1n_bf16, ViG's V = 64), which
// also stops the raw dq / dk n-tiles at Kp (past it they read the state tiles' zero rows).
template <int VW = 128>
__device__ __forceinline__ void chunk_bwd1(
    const bf16_t* __restrict__ v, const bf16_t* __restrict__ d_o, const bf16_t* __restrict__ kd,
    const bf16_t* __restrict__ A, const bf16_t* __restrict__ hs, const bf16_t* __restrict__ dhs,
    float* __restrict__ dv, float* __restrict__ dA, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ sd,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int V, int Kp, bool rev, const float* __restrict__ addv) {
    static_assert(VW == 64 || VW == 128, "the value columns of bwd1's products: 64 or 128");
    extern __shared__ __align__(16) unsigned char smem_b1[];
    const int LDK = Kp + 8;
    bf16_t* SV = (bf16_t*)smem_b1;
    bf16_t* SDO = SV + 64 * OV;
    const int KS = Kp > 64 ? Kp : 64;  // state tile rows (see above)
    bf16_t* SS = SDO + 64 * OV;
    bf16_t* SD = SS + KS * OV;
    bf16_t* SA = SD + KS * OV;
    bf16_t* SKD = SA + 64 * LDH;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;
    const idx_t st_off = (cg * H + h) * (idx_t)K * V;

    const idx_t rb = rev ? r0 + L - 1 : r0, sg = rev ? -1 : 1;  // global row of local row t: rb + sg t
    tile_load(SV, OV, v + (rb * H + h) * (idx_t)V, sg * H * V, L, V, 128, vv, true, tid, 256);
    tile_load(SDO, OV, d_o + (rb * H + h) * (idx_t)V, sg * H * V, L, V, 128, vv, true, tid, 256);
    tile_load(SKD, LDK, kd + (rb * H + h) * (idx_t)K, sg * H * K, L, K, Kp, vk, true, tid, 256);
    state_tile_load<128>(SS, hs + st_off, K, V, V, KS, vv, tid);
    state_tile_load<128>(SD, dhs + st_off, K, V, V, KS, vv, tid);
    {
        const bf16_t* ap = A + (cg * H + h) * (idx_t)4096;
        for (int x = tid; x < 512; x += 256) {
            const int t = x >> 3, c = (x & 7) * 8;
            cp16(SA + t * LDH + c, ap + t * 64 + c, true);
        }
    }
    cp_commit();
    cp_wait0();
    __syncthreads();
    const int mt = w & 3, nh = w >> 2;
    // dv = A^T do + kd D
    if (64 * nh < V) {
        float acc[8][4];
        #pragma unroll
        for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
        for (int kt = mt; kt < 4; ++kt) {
            unsigned a4[4];
            ldsm4ta(a4, sfat(SA, LDH, 16 * kt, 16 * mt, lane));
            #pragma unroll
            for (int np = 0; np < 4; ++np) {
                unsigned b4[4];
                ldsm4ta(b4, sfbt(SDO, OV, 16 * kt, 64 * nh + 16 * np, lane));
                mma16816(acc[2 * np], a4, b4[0], b4[1]);
                mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
            }
        }
        for (int kt = 0; kt < Kp; kt += 16) {
            unsigned a4[4];
            ldsm4a(a4, sfa(SKD, LDK, 16 * mt, kt, lane));
            #pragma unroll
            for (int np = 0; np < 4; ++np) {
                unsigned b4[4];
                ldsm4ta(b4, sfbt(SD, OV, kt, 64 * nh + 16 * np, lane));
                mma16816(acc[2 * np], a4, b4[0], b4[1]);
                mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
            }
        }
        #pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            #pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int s = 16 * mt + fg + 8 * hr, j = 64 * nh + 8 * nt + 2 * ft;
                if (s < L) {
                    const idx_t off = ((rb + sg * s) * H + h) * (idx_t)V + j;
                    float a = acc[nt][2 * hr], b = acc[nt][2 * hr + 1];
                    if (addv != nullptr) {
                        // only columns inside V: past it the read would leave the row (the last
                        // row's, the buffer)
                        if (j < V) a += addv[off];
                        if (j + 1 < V) b += addv[off + 1];
                    }
                    st2(dv, off, j, V, a, b);
                }
            }
        }
    }
    // dA = tril(do v^T), f32, rows t in 16 mt, columns 32 nh .. 32 nh + 31
    {
        float acc[4][4];
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
        if (32 * nh <= 16 * mt + 15) {
            for (int kt = 0; kt < VW; kt += 16) {
                unsigned a4[4];
                ldsm4a(a4, sfa(SDO, OV, 16 * mt, kt, lane));
                #pragma unroll
                for (int np = 0; np < 2; ++np) {
                    unsigned b4[4];
                    ldsm4a(b4, sfbn(SV, OV, kt, 32 * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
        }
        float* dap = dA + (cg * H + h) * (idx_t)4096;
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int t = 16 * mt + fg + 8 * hr, s = 32 * nh + 8 * nt + 2 * ft;
                st2(dap, t * 64 + s, s, 64, s <= t ? acc[nt][2 * hr] : 0.f, s + 1 <= t ? acc[nt][2 * hr + 1] : 0.f);
            }
        }
    }
    // raw dq = do S^T and raw dk = v D^T (columns: key channels 64 nh ..)
    if (64 * nh < Kp) {
        #pragma unroll 1
        for (int which = 0; which < 2; ++which) {
            const bf16_t* Am = which == 0 ? SDO : SV;
            const bf16_t* Bm = which == 0 ? SS : SD;
            float* out = which == 0 ? dq : dk;
            float acc[8][4];
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
            for (int kt = 0; kt < VW; kt += 16) {
                unsigned a4[4];
                ldsm4a(a4, sfa(Am, OV, 16 * mt, kt, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    if (VW < 128 && 64 * nh + 16 * np >= Kp) break;
                    unsigned b4[4];
                    ldsm4a(b4, sfbn(Bm, OV, kt, 64 * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                #pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int t = 16 * mt + fg + 8 * hr, i = 64 * nh + 8 * nt + 2 * ft;
                    if (t < L) st2(out, ((rb + sg * t) * H + h) * (idx_t)K + i, i, K, acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                }
            }
        }
    }
    // sd = rowsum(S * D)
    for (int i = tid; i < K; i += 256) {
        float a = 0.f;
        for (int j = 0; j < VW; j += 2) {
            const unsigned s2 = *(const unsigned*)(SS + i * OV + j), d2 = *(const unsigned*)(SD + i * OV + j);
            a += bf_lo(s2) * bf_lo(d2) + bf_hi(s2) * bf_hi(d2);
        }
        sd[(cg * H + h) * (idx_t)K + i] = a;
    }
}
extern "C" __global__ void __launch_bounds__(256, 1) gla_chunk_bwd1_bf16(
    const bf16_t* __restrict__ v, const bf16_t* __restrict__ d_o, const bf16_t* __restrict__ kd,
    const bf16_t* __restrict__ A, const bf16_t* __restrict__ hs, const bf16_t* __restrict__ dhs,
    float* __restrict__ dv, float* __restrict__ dA, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ sd,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int V, int Kp) {
    chunk_bwd1(v, d_o, kd, A, hs, dhs, dv, dA, dq, dk, sd, bounds, chunk_off, chunk_seq, H, K, V, Kp, false, nullptr);
}

// bwd1 for K > 128 or V > 128, split in a key side and a value side (each sum over the other
// dimension runs in a loop or needs only its own slice):
// bwd1k: grid (chunks, H, ceil(K/64)), 256 threads, dynamic smem chunk_bwd1k_smem_bytes() =
// 4 * 64 * OV * 2: do, v and the rows i0 .. i0 + 63 of S_c, D_c (zero past K), one 128-wide V
// tile at a time, the V tiles summed in registers. Raw dq = do S^T and raw dk = v D^T for key
// channels i0 .., sd = rowsum(S * D) for them, and (block z == 0 only) dA = tril(do v^T).
// Warp (mt, nh): rows 16 mt .. 16 mt + 15, columns 32 nh .. 32 nh + 31 (channels or dA's s).
extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_bwd1k_bf16(
    const bf16_t* __restrict__ v, const bf16_t* __restrict__ d_o, const bf16_t* __restrict__ hs, const bf16_t* __restrict__ dhs,
    float* __restrict__ dA, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ sd,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq, int H, int K, int V) {
    extern __shared__ __align__(16) unsigned char smem_b1k[];
    bf16_t* SV = (bf16_t*)smem_b1k;
    bf16_t* SDO = SV + 64 * OV;
    bf16_t* SS = SDO + 64 * OV;
    bf16_t* SD = SS + 64 * OV;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y, i0 = 64 * blockIdx.z, Kc = min(64, K - i0);
    const bool with_da = blockIdx.z == 0;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vv = (V & 7) == 0;
    const idx_t st_off = (cg * H + h) * (idx_t)K * V + (idx_t)i0 * V;
    const int mt = w & 3, nh = w >> 2;
    const bool da_blk = with_da && 32 * nh <= 16 * mt + 15;  // dA's blocks above the diagonal stay zero
    float aq[4][4], ak[4][4], aa[4][4];
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) aq[nt][e] = ak[nt][e] = aa[nt][e] = 0.f;
    }
    float sdp = 0.f;  // thread: key row tid >> 2, columns 32 (tid & 3) .. of each V tile
    for (int v0 = 0; v0 < V; v0 += 128) {
        const int Vc = min(128, V - v0);
        __syncthreads();  // the previous tile's reads are done
        tile_load(SV, OV, v + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 128, vv, true, tid, 256);
        tile_load(SDO, OV, d_o + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 128, vv, true, tid, 256);
        tile_load(SS, OV, hs + st_off + v0, (idx_t)V, Kc, Vc, 128, vv, true, tid, 256);
        tile_load(SD, OV, dhs + st_off + v0, (idx_t)V, Kc, Vc, 128, vv, true, tid, 256);
        cp_commit();
        cp_wait0();
        __syncthreads();
        // columns >= Vc are zero-filled up to the next multiple of 16
        for (int kt = 0; kt < Vc; kt += 16) {
            unsigned a_do[4], a_v[4];
            ldsm4a(a_do, sfa(SDO, OV, 16 * mt, kt, lane));
            ldsm4a(a_v, sfa(SV, OV, 16 * mt, kt, lane));
            #pragma unroll
            for (int np = 0; np < 2; ++np) {
                unsigned b4[4];
                ldsm4a(b4, sfbn(SS, OV, kt, 32 * nh + 16 * np, lane));
                mma16816(aq[2 * np], a_do, b4[0], b4[1]);
                mma16816(aq[2 * np + 1], a_do, b4[2], b4[3]);
                ldsm4a(b4, sfbn(SD, OV, kt, 32 * nh + 16 * np, lane));
                mma16816(ak[2 * np], a_v, b4[0], b4[1]);
                mma16816(ak[2 * np + 1], a_v, b4[2], b4[3]);
                if (da_blk) {
                    ldsm4a(b4, sfbn(SV, OV, kt, 32 * nh + 16 * np, lane));
                    mma16816(aa[2 * np], a_do, b4[0], b4[1]);
                    mma16816(aa[2 * np + 1], a_do, b4[2], b4[3]);
                }
            }
        }
        {
            const int i = tid >> 2, c = 32 * (tid & 3);
            #pragma unroll 4
            for (int j = 0; j < 32; j += 2) {
                const unsigned s2 = *(const unsigned*)(SS + i * OV + c + j), d2 = *(const unsigned*)(SD + i * OV + c + j);
                sdp += bf_lo(s2) * bf_lo(d2) + bf_hi(s2) * bf_hi(d2);
            }
        }
    }
    sdp += __shfl_xor_sync(0xffffffffu, sdp, 1);
    sdp += __shfl_xor_sync(0xffffffffu, sdp, 2);
    if ((tid & 3) == 0 && (tid >> 2) < Kc) sd[(cg * H + h) * (idx_t)K + i0 + (tid >> 2)] = sdp;
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        #pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int t = 16 * mt + fg + 8 * hr, i = i0 + 32 * nh + 8 * nt + 2 * ft;
            if (t < L) {
                const idx_t off = ((r0 + t) * H + h) * (idx_t)K + i;
                st2(dq, off, i, K, aq[nt][2 * hr], aq[nt][2 * hr + 1]);
                st2(dk, off, i, K, ak[nt][2 * hr], ak[nt][2 * hr + 1]);
            }
        }
    }
    if (with_da) {
        float* dap = dA + (cg * H + h) * (idx_t)4096;
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int t = 16 * mt + fg + 8 * hr, s = 32 * nh + 8 * nt + 2 * ft;
                st2(dap, t * 64 + s, s, 64, s <= t ? aa[nt][2 * hr] : 0.f, s + 1 <= t ? aa[nt][2 * hr + 1] : 0.f);
            }
        }
    }
}

// bwd1v: dv = A^T do + kd D_c for one 64-wide V tile: grid (chunks * ceil(V/64), H) (x = chunk *
// V tiles + tile), 256 threads, dynamic smem chunk_bwd1v_smem_bytes(Kp) = (2 * 64 * 72 + 64 *
// (Kp + 8) + Kp * 72) * 2: A, do tile, kd [64][Kp+8], D_c tile [Kp][72] (rows >= K zero).
extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_bwd1v_bf16(
    const bf16_t* __restrict__ d_o, const bf16_t* __restrict__ kd, const bf16_t* __restrict__ A, const bf16_t* __restrict__ dhs,
    float* __restrict__ dv, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int V, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_b1v[];
    const int LDK = Kp + 8;
    bf16_t* SA = (bf16_t*)smem_b1v;
    bf16_t* SDO = SA + 64 * LDH;
    bf16_t* SKD = SDO + 64 * LDH;
    bf16_t* SD = SKD + 64 * LDK;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int nvt = (V + 63) >> 6;
    const idx_t cg = blockIdx.x / nvt;
    const int v0 = 64 * (int)(blockIdx.x % nvt), Vc = min(64, V - v0);
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;

    tile_load(SDO, LDH, d_o + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 64, vv, true, tid, 256);
    tile_load(SKD, LDK, kd + (r0 * H + h) * (idx_t)K, (idx_t)H * K, L, K, Kp, vk, true, tid, 256);
    state_tile_load<64>(SD, dhs + (cg * H + h) * (idx_t)K * V + v0, K, V, Vc, Kp, vv, tid);
    a_tile_load(SA, A + (cg * H + h) * (idx_t)4096, tid);
    cp_commit();
    cp_wait0();
    __syncthreads();
    const int mt = w & 3, nq = w >> 2;
    if (32 * nq >= Vc) return;  // no barrier below
    float acc[4][4];
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    for (int kt = mt; kt < 4; ++kt) {
        unsigned a4[4];
        ldsm4ta(a4, sfat(SA, LDH, 16 * kt, 16 * mt, lane));
        #pragma unroll
        for (int np = 0; np < 2; ++np) {
            unsigned b4[4];
            ldsm4ta(b4, sfbt(SDO, LDH, 16 * kt, 32 * nq + 16 * np, lane));
            mma16816(acc[2 * np], a4, b4[0], b4[1]);
            mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
        }
    }
    for (int kt = 0; kt < Kp; kt += 16) {
        unsigned a4[4];
        ldsm4a(a4, sfa(SKD, LDK, 16 * mt, kt, lane));
        #pragma unroll
        for (int np = 0; np < 2; ++np) {
            unsigned b4[4];
            ldsm4ta(b4, sfbt(SD, LDH, kt, 32 * nq + 16 * np, lane));
            mma16816(acc[2 * np], a4, b4[0], b4[1]);
            mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
        }
    }
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        #pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int s = 16 * mt + fg + 8 * hr, j = v0 + 32 * nq + 8 * nt + 2 * ft;
            if (s < L) st2(dv, ((r0 + s) * H + h) * (idx_t)V + j, j, V, acc[nt][2 * hr], acc[nt][2 * hr + 1]);
        }
    }
}

// bwd2: grid (chunks, H, K tiles), 256 threads, smem chunk_bwd2{,_d2}_smem_bytes(Kp) (host): see
// the layout below.
// Block z owns channels c0 = z Kp .. c0 + Kc - 1: everything here is per channel given the full
// dA, except the per-head gate's dg, a sum over channels, added atomically onto a zeroed dg
// (the host keeps a per-head gate to at most two tiles: 0 + a + b is the same in either order,
// so the result stays deterministic).
// Two layouts (the host picks, dispatch.rs `bwd2_plan`): gla_chunk_bwd2k_bf16, tiles of Kp <= 128,
// one block per SM; and D2, gla_chunk_bwd2k64_bf16, tiles of Kp <= 64 at two blocks per SM (107.5
// KB of smem, <= 128 registers): dA kept in f32 only for its four diagonal 16x16 blocks (DAF
// [4][16][16], read from global into DAB / DAF directly), the diagonal pairs with q, k read from
// smem instead of registers, and the dg scans split over 256 / Kp segments of rows (a serial
// 64-step scan per channel would leave most threads idle). D2 is the faster layout; the host
// uses it wherever the per-head dg stays deterministic.
template <bool D2>
__device__ __forceinline__ void chunk_bwd2(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ g,
    const float* __restrict__ dA, const float* __restrict__ sd, float* __restrict__ dq, float* __restrict__ dk,
    float* __restrict__ dg, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
    const int* __restrict__ chunk_seq, int H, int K, int gw, float scale, int Kp, bool rev = false,
    const float* __restrict__ addq = nullptr, const float* __restrict__ addk = nullptr) {
    extern __shared__ __align__(16) unsigned char smem_b2[];
    const int c0 = (int)blockIdx.z * Kp, Kc = min(Kp, K - c0);
    const int LDK = Kp + 8;
    bf16_t* Q = (bf16_t*)smem_b2;            // [64][LDK] q
    bf16_t* KR = Q + 64 * LDK;               // [64][LDK] k
    float* G = (float*)(KR + 64 * LDK);      // [64][Kp] cumsum * log2(e)
    float* DAF = G + 64 * Kp;                // [64][64] dA f32 (D2: [4][16][16], its diagonal blocks)
    bf16_t* DAB = (bf16_t*)(DAF + (D2 ? 1024 : 4096));  // [64][LDH] dA bf16
    bf16_t* KG = DAB + 64 * LDH;             // [96][LDK] k exp(G[16a] - G), a = 1, 2, 3 at rows 8(a-1)a + s
    bf16_t* QN = KG + 96 * LDK;              // [96][LDK] q exp(G - G[16b+15]), b = 0, 1, 2 at rows {0,48,80} + t - 16(b+1); g staging first
    float* DQ = (float*)(QN + 96 * LDK);     // [64][Kp] intra dq (no t == s pairs), scaled
    float* DK = DQ + 64 * Kp;                // [64][Kp] intra dk (no t == s pairs), scaled
    float* RP = DK + 64 * Kp;                // [256]
    float* SDV = RP + 256;                   // [128]
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vk = (K & 7) == 0;

    // rev (bidir/, per-key gate): local row t is global row rb + sg t = r0 + L - 1 - t
    const idx_t rb = rev ? r0 + L - 1 : r0, sg = rev ? -1 : 1;
    tile_load(Q, LDK, q + (rb * H + h) * (idx_t)K + c0, sg * H * K, L, Kc, Kp, vk, true, tid, 256);
    tile_load(KR, LDK, k + (rb * H + h) * (idx_t)K + c0, sg * H * K, L, Kc, Kp, vk, true, tid, 256);
    if (gw == K) tile_load(QN, LDK, g + (rb * H + h) * (idx_t)K + c0, sg * H * K, L, Kc, Kp, vk, true, tid, 256);
    if (D2) {
        // dA straight from global (16-byte pieces) into DAB, and its diagonal blocks into DAF
        const float4* dap = (const float4*)(dA + (cg * H + h) * (idx_t)4096);
        for (int x = tid; x < 1024; x += 256) {
            const float4 f = dap[x];
            const int t = x >> 4, s = (x & 15) * 4;
            *(unsigned*)(DAB + t * LDH + s) = pack2(f.x, f.y);
            *(unsigned*)(DAB + t * LDH + s + 2) = pack2(f.z, f.w);
            if ((s >> 4) == (t >> 4)) *(float4*)(DAF + (t >> 4) * 256 + (t & 15) * 16 + (s & 15)) = f;
        }
    } else {
        const float* dap = dA + (cg * H + h) * (idx_t)4096;
        for (int x = tid; x < 1024; x += 256) cp16(DAF + 4 * x, dap + 4 * x, true);
    }
    cp_commit();
    for (int x = tid; x < 64 * Kp; x += 256) DQ[x] = DK[x] = 0.f;
    for (int i = tid; i < 128; i += 256) SDV[i] = i < Kc ? sd[(cg * H + h) * (idx_t)K + c0 + i] : 0.f;
    cp_wait0();
    __syncthreads();
    chunk_g_cumsum(G, RP, g, QN, LDK, L, r0, H, h, K, gw, Kp, tid);
    if (!D2) {
        for (int x = tid; x < 4096; x += 256) DAB[(x >> 6) * LDH + (x & 63)] = f2bf(DAF[x]);
    }
    __syncthreads();
    // normalised copies of k (for dq) and q (for dk)
    for (int x = tid; x < 64 * Kp; x += 256) {
        const int t = x / Kp, c = x % Kp, a = t >> 4;
        const float Gt = G[x], kv = to_f32(KR[t * LDK + c]), qv = to_f32(Q[t * LDK + c]);
        for (int a2 = a + 1; a2 < 4; ++a2)
            KG[(8 * (a2 - 1) * a2 + t) * LDK + c] = f2bf(kv * ex2f(G[16 * a2 * Kp + c] - Gt));
        for (int b = 0; b < a; ++b) {
            const int base = b == 0 ? 0 : (b == 1 ? 48 : 80);
            QN[(base + t - 16 * (b + 1)) * LDK + c] = f2bf(qv * ex2f(Gt - G[(16 * b + 15) * Kp + c]));
        }
    }
    __syncthreads();
    // off-diagonal intra blocks on the tensor cores: 12 dq tasks (row block a, 32 columns), 12 dk
    for (int x = w; x < 24; x += 8) {
        const bool isq = x < 12;
        const int y = isq ? x : x - 12;
        const int blk = isq ? 1 + y / 4 : y / 4, cq = y % 4;
        if (32 * cq >= Kp) continue;
        float acc[4][4];
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
        if (isq) {
            const int a = blk;
            for (int b = 0; b < a; ++b) {
                unsigned a4[4];
                ldsm4a(a4, sfa(DAB, LDH, 16 * a, 16 * b, lane));
                #pragma unroll
                for (int np = 0; np < 2; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(KG, LDK, 8 * (a - 1) * a + 16 * b, 32 * cq + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
        } else {
            const int b = blk, base = b == 0 ? 0 : (b == 1 ? 48 : 80);
            for (int a = b + 1; a < 4; ++a) {
                unsigned a4[4];
                ldsm4ta(a4, sfat(DAB, LDH, 16 * a, 16 * b, lane));
                #pragma unroll
                for (int np = 0; np < 2; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(QN, LDK, base + 16 * (a - b - 1), 32 * cq + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
        }
        #pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * blk + fg + (e >= 2 ? 8 : 0), c = 32 * cq + 8 * nt + 2 * ft + (e & 1);
                // Kp is a multiple of 16, not always of 32: the last task's columns may pass it
                if (c >= Kp) continue;
                if (isq) DQ[r * Kp + c] = acc[nt][e] * scale * ex2f(G[r * Kp + c] - G[16 * blk * Kp + c]);
                else DK[r * Kp + c] = acc[nt][e] * scale * ex2f(G[(16 * blk + 15) * Kp + c] - G[r * Kp + c]);
            }
        }
    }
    __syncthreads();
    // diagonal blocks, pairs s < t, f32; one thread per (block a, channel c)
    if (D2) {
        // q, k from smem (no 16-element arrays of them): 32 accumulators and the decays live
        for (int x = tid; x < 4 * Kp; x += 256) {
            const int a = x / Kp, c = x % Kp;
            float ev[16], dqa[16];
            #pragma unroll
            for (int u = 1; u < 16; ++u) ev[u] = ex2f(G[(16 * a + u) * Kp + c] - G[(16 * a + u - 1) * Kp + c]);
            #pragma unroll
            for (int u = 0; u < 16; ++u) dqa[u] = 0.f;
            #pragma unroll
            for (int s = 0; s < 15; ++s) {
                const float ks = to_f32(KR[(16 * a + s) * LDK + c]);
                float P = 1.f, dks = 0.f;
                #pragma unroll
                for (int t = s + 1; t < 16; ++t) {
                    P *= ev[t];
                    const float E = P * DAF[a * 256 + t * 16 + s];
                    dqa[t] += ks * E;
                    dks += to_f32(Q[(16 * a + t) * LDK + c]) * E;
                }
                DK[(16 * a + s) * Kp + c] += scale * dks;
            }
            #pragma unroll
            for (int u = 1; u < 16; ++u) DQ[(16 * a + u) * Kp + c] += scale * dqa[u];
        }
    } else {
        for (int x = tid; x < 4 * Kp; x += 256) {
            const int a = x / Kp, c = x % Kp;
            float qv[16], kv[16], gv[16], dqa[16], dka[16];
            #pragma unroll
            for (int u = 0; u < 16; ++u) {
                const int r = 16 * a + u;
                qv[u] = to_f32(Q[r * LDK + c]);
                kv[u] = to_f32(KR[r * LDK + c]);
                gv[u] = G[r * Kp + c];
                dqa[u] = dka[u] = 0.f;
            }
            // exp(G_t - G_s) as the running product of the per-row decays exp(G_u - G_u-1), s < u <= t
            float ev[16];
            #pragma unroll
            for (int u = 1; u < 16; ++u) ev[u] = ex2f(gv[u] - gv[u - 1]);
            #pragma unroll
            for (int s = 0; s < 15; ++s) {
                float P = 1.f;
                #pragma unroll
                for (int t = s + 1; t < 16; ++t) {
                    P *= ev[t];
                    const float E = P * DAF[(16 * a + t) * 64 + 16 * a + s];
                    dqa[t] += kv[s] * E;
                    dka[s] += qv[t] * E;
                }
            }
            #pragma unroll
            for (int u = 0; u < 16; ++u) {
                const int r = 16 * a + u;
                DQ[r * Kp + c] += scale * dqa[u];
                DK[r * Kp + c] += scale * dka[u];
            }
        }
    }
    __syncthreads();
    // final dq, dk (elementwise, 2 channels per step), with X = q dq' - k dk_intra and
    // Y = k dk_inter kept in DQ / DK for the dg sums (dq' and dk_intra without the t == s pairs)
    {
        const int cp2 = Kp >> 1;
        for (int x = tid; x < 64 * cp2; x += 256) {
            const int r = x / cp2, c = 2 * (x % cp2);
            if (r < L && c < Kc) {
                const idx_t off = ((rb + sg * r) * H + h) * (idx_t)K + c0 + c;
                const bool two = c + 1 < Kc && (off & 1) == 0;
                float2 rq, rk;
                if (two) {
                    rq = *(const float2*)(dq + off);
                    rk = *(const float2*)(dk + off);
                } else {
                    rq.x = dq[off];
                    rk.x = dk[off];
                    rq.y = c + 1 < Kc ? dq[off + 1] : 0.f;
                    rk.y = c + 1 < Kc ? dk[off + 1] : 0.f;
                }
                const unsigned q2 = *(const unsigned*)(Q + r * LDK + c), k2 = *(const unsigned*)(KR + r * LDK + c);
                const float qa = bf_lo(q2), qb = bf_hi(q2), ka = bf_lo(k2), kb = bf_hi(k2);
                const float2 gr = *(const float2*)(G + r * Kp + c), gl = *(const float2*)(G + 63 * Kp + c);
                const float2 iq = *(const float2*)(DQ + r * Kp + c), ik = *(const float2*)(DK + r * Kp + c);
                const float wd = scale * (D2 ? DAF[(r >> 4) * 256 + (r & 15) * 17] : DAF[r * 64 + r]);
                const float dqa = scale * ex2f(gr.x) * rq.x + iq.x, dqb = scale * ex2f(gr.y) * rq.y + iq.y;
                const float kia = ex2f(gl.x - gr.x) * rk.x, kib = ex2f(gl.y - gr.y) * rk.y;
                float2 oq, ok, xx, yy;
                oq.x = dqa + wd * ka;
                oq.y = dqb + wd * kb;
                ok.x = ik.x + wd * qa + kia;
                ok.y = ik.y + wd * qb + kib;
                if (addq != nullptr) {  // bidir/: the other direction's final dq, dk, same layout
                    oq.x += addq[off];
                    ok.x += addk[off];
                    if (c + 1 < Kc) {
                        oq.y += addq[off + 1];
                        ok.y += addk[off + 1];
                    }
                }
                xx.x = qa * dqa - ka * ik.x;
                xx.y = qb * dqb - kb * ik.y;
                yy.x = ka * kia;
                yy.y = kb * kib;
                if (two) {
                    *(float2*)(dq + off) = oq;
                    *(float2*)(dk + off) = ok;
                } else {
                    dq[off] = oq.x;
                    dk[off] = ok.x;
                    if (c + 1 < Kc) {
                        dq[off + 1] = oq.y;
                        dk[off + 1] = ok.y;
                    }
                }
                *(float2*)(DQ + r * Kp + c) = xx;
                *(float2*)(DK + r * Kp + c) = yy;
            } else {
                float2 z;
                z.x = z.y = 0.f;
                *(float2*)(DQ + r * Kp + c) = z;
                *(float2*)(DK + r * Kp + c) = z;
            }
        }
    }
    __syncthreads();
    // dg[r] = exp(G_last) sd + sum_{j<r} Y_j + sum_{u>=r} X_u, one thread per channel, from smem
    if (D2) {
        // P segments of R rows per channel: segment totals first (in Q's space, free now), then
        // each segment's scans from the totals of the segments before (Y) and after (X) it
        const int P = Kp > 64 ? 2 : 4, R = 64 / P, c = tid % Kp, part = tid / Kp;
        float* YS = (float*)Q;
        float* XS = YS + P * Kp;
        const bool act = gw > 0 && tid < P * Kp;
        if (act) {
            float ys = 0.f, xs = 0.f;
            for (int r = part * R; r < part * R + R; ++r) {
                ys += DK[r * Kp + c];
                xs += DQ[r * Kp + c];
            }
            YS[part * Kp + c] = ys;
            XS[part * Kp + c] = xs;
        }
        __syncthreads();
        if (act) {
            float run = ex2f(G[63 * Kp + c]) * SDV[c];
            for (int p = 0; p < part; ++p) run += YS[p * Kp + c];
            for (int r = part * R; r < part * R + R; ++r) {
                const float y = DK[r * Kp + c];
                DK[r * Kp + c] = run;
                run += y;
            }
            float runx = 0.f;
            for (int p = P - 1; p > part; --p) runx += XS[p * Kp + c];
            for (int r = part * R + R - 1; r >= part * R; --r) {
                runx += DQ[r * Kp + c];
                const float d = DK[r * Kp + c] + runx;
                if (gw == K) {
                    if (r < L && c < Kc) dg[((rb + sg * r) * H + h) * (idx_t)K + c0 + c] = d;
                } else {
                    DQ[r * Kp + c] = c < Kc ? d : 0.f;  // own element only: no other thread reads it
                }
            }
        }
    } else if (gw > 0 && tid < Kp) {
        const int c = tid;
        float run = ex2f(G[63 * Kp + c]) * SDV[c];
        for (int r = 0; r < 64; ++r) {
            const float y = DK[r * Kp + c];
            DK[r * Kp + c] = run;
            run += y;
        }
        run = 0.f;
        for (int r = 63; r >= 0; --r) {
            run += DQ[r * Kp + c];
            const float d = DK[r * Kp + c] + run;
            if (gw == K) {
                if (r < L && c < Kc) dg[((rb + sg * r) * H + h) * (idx_t)K + c0 + c] = d;
            } else {
                DQ[r * Kp + c] = c < Kc ? d : 0.f;  // own column only: no other thread reads it
            }
        }
    }
    if (gw == 1) {
        __syncthreads();
        if (tid < L) {
            float sum = 0.f;
            for (int cc = 0; cc < Kp; ++cc) sum += DQ[tid * Kp + cc];
            atomicAdd(dg + (rb + sg * tid) * H + h, sum);
        }
    }
}

#define B2ENTRY(NAME, D2, MINB)                                                                          \
extern "C" __global__ void __launch_bounds__(256, MINB) NAME(                                                \
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ g,              \
    const float* __restrict__ dA, const float* __restrict__ sd, float* __restrict__ dq, float* __restrict__ dk, \
    float* __restrict__ dg, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,          \
    const int* __restrict__ chunk_seq, int H, int K, int gw, float scale, int Kp) {                          \
    chunk_bwd2<D2>(q, k, g, dA, sd, dq, dk, dg, bounds, chunk_off, chunk_seq, H, K, gw, scale, Kp);     \
}
B2ENTRY(gla_chunk_bwd2k_bf16, false, 1)
B2ENTRY(gla_chunk_bwd2k64_bf16, true, 2)
