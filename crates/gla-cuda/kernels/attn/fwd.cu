// attn/fwd.cu: the softmax attention forward (flash-attention-2 style), bf16 storage, f32 math.
//
// attn_fwd_d64_dv{DVP}: one block per (query head j, query tile), 256 threads (8 warps x 16
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
// over the key tiles K_t (BN = 64 keys) the mask can leave a key in: key tiles from the window's
// first key (window > 0) to the last query of the tile (causal) or the sequence end. Only tiles
// that cross the diagonal, the window's lower edge or the sequence end are masked (per warp), and
// a warp skips a tile that none of its rows sees. K / V tiles are double-buffered with cp.async
// (one barrier per key tile: the copy of tile t + 1 starts after the barrier that lands tile t).
// Rows past the sequence end are neither read (zero) nor written.
//
// Layouts: q [rows, H, D], k [rows, H_KV, D], v [rows, H_KV, DV], o [rows, H, DV], lse [rows, H];
// bounds [N + 1] i64 sequence row offsets. D <= DP, DV <= DVP, D and DV multiples of 8 (16-byte
// copies). Dynamic smem: (BM * (DP + 8) + 2 * BN * (DP + 8) + 2 * BN * (DVP + 8)) * 2 bytes
// (src/attn/dispatch.rs, fwd_smem).
//
// Entry points: attn_fwd_d64_dv32 attn_fwd_d64_dv64 attn_fwd_m2_d128_dv128 attn_fwd_m2w8_d128_dv128

// S = Q K_t^T of the warp's MT m-tiles against the BN keys of the K tile at shared address uK
// (its ldmatrix lane address): Q from the registers qf (QREG) or the Q tile at aQ.
template <int DP, int MT, int BN, bool QREG>
__device__ __forceinline__ void att_fwd_qk(float (&s)[MT][BN / 8][4], const unsigned (&qf)[QREG ? DP / 16 : 1][4], unsigned aQ,
                                           unsigned uK) {
    constexpr int LQ = DP + 8;
    #pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        #pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
    #pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
        unsigned a[MT][4];
        #pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if constexpr (QREG) {
                a[mt][0] = qf[kk][0], a[mt][1] = qf[kk][1], a[mt][2] = qf[kk][2], a[mt][3] = qf[kk][3];
            } else {
                ldsm4a(a[mt], aQ + 2 * (16 * mt * LQ + 16 * kk));
            }
        }
        #pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
            unsigned r[4];
            ldsm4a(r, uK + 2 * (16 * np * LQ + 16 * kk));
            #pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma16816(s[mt][2 * np], a[mt], r[0], r[1]);
                mma16816(s[mt][2 * np + 1], a[mt], r[2], r[3]);
            }
        }
    }
}

// O += P V_t: the probabilities p (bf16) against the V tile at shared address uV (its ldmatrix
// lane address).
template <int MT, int BN, int DVP>
__device__ __forceinline__ void att_fwd_pv(float (&acc)[MT][DVP / 8][4], const float (&p)[MT][BN / 8][4], unsigned uV) {
    constexpr int LV = DVP + 8;
    #pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
        unsigned pa[MT][4];
        #pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            pa[mt][0] = pack2(p[mt][2 * kk][0], p[mt][2 * kk][1]);
            pa[mt][1] = pack2(p[mt][2 * kk][2], p[mt][2 * kk][3]);
            pa[mt][2] = pack2(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
            pa[mt][3] = pack2(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
        }
        #pragma unroll
        for (int np = 0; np < DVP / 16; ++np) {
            unsigned r[4];
            ldsm4ta(r, uV + 2 * (16 * kk * LV + 16 * np));
            #pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma16816(acc[mt][2 * np], pa[mt], r[0], r[1]);
                mma16816(acc[mt][2 * np + 1], pa[mt], r[2], r[3]);
            }
        }
    }
}

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
    const AttFwdTile qt = att_fwd_tile<BM, BN>(bounds, tile_seq, tile_q0, tile, causal, window, k, v, j, H, HKV, D, DV);
    const idx_t bs = qt.bs, ldq = qt.ldq, ldk = qt.ldk, ldv = qt.ldv, ldo = qt.ldo;
    const int len = qt.len, i0 = qt.i0, L = qt.L, t0 = qt.t0, t1 = qt.t1;
    const bf16_t* kb = qt.kb;
    const bf16_t* vb = qt.vb;
    // the K / V tile t into buffer b (not committed)
    auto load_k = [&](int t, int b) {
        att_tile<BN, DP, NT>(sK + b * BN * LQ, LQ, kb + (idx_t)t * BN * ldk, ldk, len - t * BN, D, tid);
    };
    auto load_v = [&](int t, int b) {
        att_tile<BN, DVP, NT>(sV + b * BN * LV, LV, vb + (idx_t)t * BN * ldv, ldv, len - t * BN, DV, tid);
    };

    att_tile<BM, DP, NT>(sQ, LQ, q + (bs + i0) * ldq + (idx_t)j * D, ldq, L, D, tid);
    load_k(t0, 0);
    load_v(t0, 0);
    cp_commit();

    const int qr = 16 * MT * w;  // the warp's first row in the tile (m-tile mt: qr + 16 mt)
    const int qlo = i0 + qr;     // its first query position
    // the warp's ldmatrix addresses (shared-memory bytes) at tile offset (0, 0); K and V add the
    // buffer's offset
    const unsigned aQ = smem_addr(sQ) + att_lane_a(LQ, lane) + 2 * qr * LQ;
    const unsigned aK = smem_addr(sK) + att_lane_b(LQ, lane), aV = smem_addr(sV) + att_lane_a(LV, lane);
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
    // the warp's rows see no key of tile t: past the sequence end, before the tile (causal), or
    // the whole tile below their window
    auto idle = [&](int t) {
        const int kt = t * BN;
        return qlo >= len || (causal && kt > qlo + 16 * MT - 1) || (window > 0 && kt + BN - 1 <= qlo - window);
    };

    // One barrier per key tile: after it, tile t has landed for every thread and every warp has
    // finished tile t - 1, so the copy of tile t + 1 into that buffer can start; it lands at the
    // next iteration's wait.
    for (int t = t0; t < t1; ++t) {
        const int buf = (t - t0) & 1;
        cp_wait0();
        __syncthreads();
        if (t + 1 < t1) {
            load_k(t + 1, buf ^ 1);
            load_v(t + 1, buf ^ 1);
            cp_commit();
        }
        if (QREG && t == t0) {
            #pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) ldsm4a(qf[QREG ? kk : 0], aQ + 2 * 16 * kk);
        }
        if (!idle(t)) {
            float s[MT][BN / 8][4];
            att_fwd_qk<DP, MT, BN, QREG>(s, qf, aQ, aK + 2 * buf * BN * LQ);
            att_fwd_mask<MT, BN>(s, qlo, t * BN, len, causal, window, fg, ft);
            att_fwd_softmax<MT, BN, DVP>(s, m, l, acc, sa);
            att_fwd_pv<MT, BN, DVP>(acc, s, aV + 2 * buf * BN * LV);
        }
    }
    cp_wait0();
    __syncthreads();  // every warp is done with the Q and K / V tiles
    // epilogue: o = O / l through the Q tile
    bf16_t* sO = sQ;
    att_fwd_out<MT, DVP>(acc, m, l, sO, LV, qr, L, lse + (bs + i0) * H + j, H, fg, ft);
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
ATTN_FWD_ENTRY(attn_fwd_m2_d128_dv128, 128, 128, 4, 2, 64, false, 1)
ATTN_FWD_ENTRY(attn_fwd_m2w8_d128_dv128, 128, 128, 8, 2, 64, false, 1)
