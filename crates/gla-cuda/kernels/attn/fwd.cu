// attn/fwd.cu: the softmax attention forward (flash-attention-2 style), bf16 storage, f32 math.
//
// attn_fwd_d{DP}_dv{DVP}: one block per (query head j, query tile), 256 threads (8 warps x 16
// query rows, BM = 128 rows per tile, Q fragments held in registers), grid (H, tiles);
// attn_fwd_m2_d128_dv128: the same tile with 4 warps x 32 rows (two m-tiles per warp share each
// K / V fragment: half the shared-memory reads per product; Q reloaded from shared memory);
// attn_fwd_m2w8_d128_dv128: 8 warps x 32 rows, BM = 256 (each K / V tile serves twice the rows:
// half the L2 traffic per product; one block per SM). Tile `tile` covers the query positions
// tile_q0[tile] .. + BM - 1 of sequence tile_seq[tile] (the host's tables, src/attn/dispatch.rs).
// For kv head g = j / (H / H_KV):
//     S  = Q K_t^T * scale * log2(e)           (mma.sync m16n8k16, f32 accumulate; the scale
//                                               is applied inside the exponent's FFMA)
//     m  = running row max, l = running row sum of ex2(S - m), O = sum ex2(S - m) V   (online)
//     o  = O / l                                -> o [rows, H, DV] bf16 (=)
//     lse = ln 2 * (m + log2 l)                -> lse [rows, H] f32 (=)
// over the key tiles K_t (BN = 64 keys) the mask can leave a key in: key tiles from the window's first
// key (window > 0) to the last query of the tile (causal) or the sequence end. Only tiles that
// cross the diagonal, the window's lower edge or the sequence end are masked (per warp), and a
// warp skips a tile that none of its rows sees. K / V tiles are double-buffered with cp.async
// (one barrier per key tile: the copy of tile t + 1 starts after the barrier that lands tile t).
// Rows past the sequence end are neither read (zero) nor written.
//
// Layouts: q [rows, H, D], k [rows, H_KV, D], v [rows, H_KV, DV], o [rows, H, DV], lse [rows, H];
// bounds [N + 1] i64 sequence row offsets. D <= DP, DV <= DVP, D and DV multiples of 8 (16-byte
// copies). Dynamic smem: (BM * (DP + 8) + 2 * 64 * (DP + 8) + 2 * 64 * (DVP + 8)) * 2 bytes
// (src/attn/dispatch.rs, fwd_smem).
//
// Entry points: attn_fwd_d64_dv32 attn_fwd_d64_dv64 attn_fwd_d128_dv128 attn_fwd_m2_d128_dv128
//   attn_fwd_m2w8_d128_dv128

template <int DP, int DVP, int NW, int MT, int BN = 64, bool QREG = MT == 1>
__device__ __forceinline__ void attn_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                         bf16_t* __restrict__ o, float* __restrict__ lse, const idx_t* __restrict__ bounds,
                                         const int* __restrict__ tile_seq, const int* __restrict__ tile_q0, int H, int HKV, int D,
                                         int DV, int causal, int window, float sl2) {
    constexpr int BM = 16 * NW * MT, LQ = DP + 8, LV = DVP + 8, NT = 32 * NW;
    static_assert(!QREG || MT == 1, "Q fragments live in registers only with one m-tile per warp");
    static_assert(DVP <= DP, "the output staging reuses the Q tile");
    DELTA_SMEM(smem);
    bf16_t* sQ = (bf16_t*)smem;     // [BM][LQ]; the output staging [BM][LV] at the end
    bf16_t* sK = sQ + BM * LQ;      // [2][BN][LQ]
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
    att_tile<BN, DP, NT>(sK, LQ, kb + (idx_t)t0 * BN * ldk, ldk, len - t0 * BN, D, tid);
    att_tile<BN, DVP, NT>(sV, LV, vb + (idx_t)t0 * BN * ldv, ldv, len - t0 * BN, DV, tid);
    cp_commit();

    const int qr = 16 * MT * w;  // the warp's first row in the tile (m-tile mt: qr + 16 mt)
    const int qlo = i0 + qr;     // its first query position
    // the warp's ldmatrix addresses (shared-memory bytes) at tile offset (0, 0); K and V add the
    // buffer's offset
    const unsigned aQ = att_smem(sQ) + att_lane_a(LQ, lane) + 2 * qr * LQ;
    const unsigned aK = att_smem(sK) + att_lane_b(LQ, lane), aV = att_smem(sV) + att_lane_a(LV, lane);
    unsigned qf[QREG ? DP / 16 : 1][4];
    float acc[MT][DVP / 8][4];
    float m[MT][2], l[MT][2];
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = ATT_NEG_INF;
        l[mt][0] = l[mt][1] = 0.f;
        #pragma unroll
        for (int nt = 0; nt < DVP / 8; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    }

    // Scores stay raw (Q K^T) until the exponent, which folds the scale in: ex2(s * sa - m), one
    // FFMA. That needs sa > 0 (the row max commutes with the scaling): a negative scale negates
    // the warp's Q rows in shared memory (exact in bf16; S negates exactly), a zero scale zeroes
    // them (S = 0, as 0 * q . k) and takes sa = 1.
    const float sa = sl2 == 0.f ? 1.f : fabsf(sl2);
    if (sl2 <= 0.f) {  // block-uniform; the warp's own rows: only it reads them (ldmatrix below)
        const unsigned qflip = sl2 < 0.f ? 0x80008000u : 0u, qkeep = sl2 == 0.f ? 0u : 0xffffffffu;
        cp_wait0();
        __syncthreads();  // the Q tile landed (every thread copied some of its rows)
        for (int x = lane; x < 16 * MT * (DP / 2); x += 32) {
            unsigned* e = (unsigned*)(sQ + (qr + x / (DP / 2)) * LQ) + x % (DP / 2);
            *e = (*e ^ qflip) & qkeep;
        }
        __syncwarp();
    }

    // One barrier per key tile: after it, tile t has landed for every thread and every warp has
    // finished tile t - 1, so the copy of tile t + 1 into that buffer can start; it lands at the
    // next iteration's wait.
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
        if (QREG && t == t0) {
            #pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) att_ldsm4(qf[QREG ? kk : 0], aQ + 2 * 16 * kk);
        }
        const int kt = t * BN;
        // the warp's rows see no key of this tile: past the sequence end, before the tile
        // (causal), or the whole tile below their window
        const int qhi = qlo + 16 * MT - 1;
        const bool idle = qlo >= len || (causal && kt > qhi) || (window > 0 && kt + BN - 1 <= qlo - window);
        if (!idle) {
            const unsigned uK = aK + 2 * buf * BN * LQ, uV = aV + 2 * buf * BN * LV;
            float s[MT][BN / 8][4];
            #pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                #pragma unroll
                for (int nt = 0; nt < BN / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
            #pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) {
                unsigned a[MT][4];
                #pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    if (QREG) {
                        a[mt][0] = qf[QREG ? kk : 0][0], a[mt][1] = qf[QREG ? kk : 0][1];
                        a[mt][2] = qf[QREG ? kk : 0][2], a[mt][3] = qf[QREG ? kk : 0][3];
                    } else {
                        att_ldsm4(a[mt], aQ + 2 * (16 * mt * LQ + 16 * kk));
                    }
                }
                #pragma unroll
                for (int np = 0; np < BN / 16; ++np) {
                    unsigned r[4];
                    att_ldsm4(r, uK + 2 * (16 * np * LQ + 16 * kk));
                    #pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma16816(s[mt][2 * np], a[mt], r[0], r[1]);
                        mma16816(s[mt][2 * np + 1], a[mt], r[2], r[3]);
                    }
                }
            }
            #pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int ql = qlo + 16 * mt;
                const bool edge = kt + BN > len || (causal && kt + BN - 1 > ql) || (window > 0 && kt <= ql + 15 - window);
                if (edge) {  // warp-uniform
                    #pragma unroll
                    for (int nt = 0; nt < BN / 8; ++nt) {
                        #pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const bool ok = att_key_ok(ql + fg + (e >= 2 ? 8 : 0), kt + 8 * nt + 2 * ft + (e & 1), len, causal, window);
                            s[mt][nt][e] = ok ? s[mt][nt][e] : ATT_NEG_INF;
                        }
                    }
                }
                #pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float mx = ATT_NEG_INF;
                    #pragma unroll
                    for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
                    mx = fmaxf(m[mt][r], att_row_max(mx) * sa);
                    const float base = att_base(mx);
                    const float alpha = ex2f(m[mt][r] - base);
                    // O needs rescaling only where a row's max grew (else alpha = ex2(0) = 1):
                    // warp-uniform, so past the first key tiles the warp mostly skips it
                    const bool grew = __any_sync(0xffffffffu, mx != m[mt][r]);
                    m[mt][r] = mx;
                    float sum = 0.f;
                    #pragma unroll
                    for (int nt = 0; nt < BN / 8; ++nt) {
                        s[mt][nt][2 * r] = ex2f(fmaf(s[mt][nt][2 * r], sa, -base));
                        s[mt][nt][2 * r + 1] = ex2f(fmaf(s[mt][nt][2 * r + 1], sa, -base));
                        sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
                    }
                    l[mt][r] = l[mt][r] * alpha + sum;
                    if (grew) {
                        #pragma unroll
                        for (int nt = 0; nt < DVP / 8; ++nt) {
                            acc[mt][nt][2 * r] *= alpha;
                            acc[mt][nt][2 * r + 1] *= alpha;
                        }
                    }
                }
            }
            #pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                unsigned pa[MT][4];
                #pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    pa[mt][0] = pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    pa[mt][1] = pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    pa[mt][2] = pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    pa[mt][3] = pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
                #pragma unroll
                for (int np = 0; np < DVP / 16; ++np) {
                    unsigned r[4];
                    att_ldsm4t(r, uV + 2 * (16 * kk * LV + 16 * np));
                    #pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma16816(acc[mt][2 * np], pa[mt], r[0], r[1]);
                        mma16816(acc[mt][2 * np + 1], pa[mt], r[2], r[3]);
                    }
                }
            }
        }
    }
    cp_wait0();
    __syncthreads();  // every warp is done with the Q and K / V tiles

    // epilogue: o = O / l through the Q tile
    bf16_t* sO = sQ;
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float lt = att_row_sum(l[mt][r]);
            const float inv = lt > 0.f ? 1.f / lt : 0.f;
            const int row = qr + 16 * mt + fg + 8 * r;
            #pragma unroll
            for (int nt = 0; nt < DVP / 8; ++nt)
                *(unsigned*)(sO + row * LV + 8 * nt + 2 * ft) = pack2(acc[mt][nt][2 * r] * inv, acc[mt][nt][2 * r + 1] * inv);
            if (ft == 0 && row < L) lse[(bs + i0 + row) * H + j] = lt > 0.f ? ATT_LN2 * (m[mt][r] + log2f(lt)) : ATT_NEG_INF;
        }
    }
    __syncthreads();
    att_store<BM, DVP, NT>(o + (bs + i0) * ldo + (idx_t)j * DV, ldo, sO, LV, L, DV, tid);
}

#define ATTN_FWD_ENTRY(NAME, DP, DVP, NW, MT, BN, QREG, MINB)                                                            \
extern "C" __global__ void __launch_bounds__(32 * NW, MINB) NAME(                                                          \
    const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, const idx_t* bounds, const int* tile_seq,   \
    const int* tile_q0, int H, int HKV, int D, int DV, int causal, int window, float sl2) {                              \
    attn_fwd<DP, DVP, NW, MT, BN, QREG>(q, k, v, o, lse, bounds, tile_seq, tile_q0, H, HKV, D, DV, causal, window, sl2);  \
}

ATTN_FWD_ENTRY(attn_fwd_d64_dv32, 64, 32, 8, 1, 64, true, 1)
ATTN_FWD_ENTRY(attn_fwd_d64_dv64, 64, 64, 8, 1, 64, true, 1)
ATTN_FWD_ENTRY(attn_fwd_d128_dv128, 128, 128, 8, 1, 64, true, 1)
ATTN_FWD_ENTRY(attn_fwd_m2_d128_dv128, 128, 128, 4, 2, 64, false, 1)
ATTN_FWD_ENTRY(attn_fwd_m2w8_d128_dv128, 128, 128, 8, 2, 64, false, 1)
