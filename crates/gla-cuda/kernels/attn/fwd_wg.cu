// attn/fwd_wg.cu: the softmax attention forward on Hopper's warpgroup products
// (common/wgmma.cuh), the forward for D = DV = 128 on sm_90a (src/attn/dispatch.rs, fwd_tile):
// attn/fwd.cu's contract (inputs, tile table of BM = 128 query rows, o and lse, masking, a
// negative or zero scale); other targets compile it to a trap.
//
// attn_fwd_wg_d128_dv128: one block per (query head j, 128-row tile), 256 threads = two
// warpgroups of 64 rows (warp w of warpgroup wg: rows 64 wg + 16 w ..), grid (H, tiles). Per key
// tile of BN = 128 keys that the block's rows can see (K / V double-buffered by cp.async into
// 128-byte-swizzled tiles, common/wgmma.cuh; Q once):
//     S = Q K^T       8 x m64n128k16, Q and K from shared memory (K-major, D in two 64-wide blocks)
//     mask, online softmax on the accumulators (att_fwd_mask / att_fwd_softmax: a warp's part of
//                     the m64n128 accumulator is the mma.sync fragment of one m-tile of 128 keys)
//     O += P V        8 x m64n128k16, P (bf16) from registers, V from shared memory (MN-major:
//                     DV in two 64-wide blocks 16 KB apart, LBO; 8 key rows 1024 B apart, SBO)
// then o = O / l (staged through the K buffers) and lse, as attn_fwd. A warpgroup skips a key
// tile none of its rows sees (its products are warpgroup-wide); the warps mask per 16 rows.
// Dynamic smem: 1024 (alignment) + Q 32 KB + K 2 x 32 KB + V 2 x 32 KB = 164864 bytes
// (src/attn/dispatch.rs, fwd_smem).
//
// Entry points: attn_fwd_wg_d128_dv128

extern "C" __global__ void __launch_bounds__(256, 1)
    attn_fwd_wg_d128_dv128(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                               float* __restrict__ lse, const idx_t* __restrict__ bounds, const int* __restrict__ tile_seq,
                               const int* __restrict__ tile_q0, int H, int HKV, int D, int DV, int causal, int window, float sl2) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    constexpr int BM = 128, BN = 128, NT = 256, DVP = 128, LV = DVP + 8, TB = 32768;  // TB: one 128 x 128 tile's bytes
    DELTA_SMEM(smem);
    unsigned char* base = wg_align1024(smem);
    DELTA_SMEM_END(smem, base + 5 * TB);
    const unsigned uQ = smem_addr(base), uK = uQ + TB, uV = uK + 2 * TB;  // K, V: buffer b at + b TB
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
    load_kv(t0, 0);
    cp_commit();

    const int qr = 64 * wg + 16 * w;  // the warp's first row in the tile
    const int qlo = i0 + qr, glo = i0 + 64 * wg;  // its first query position, its warpgroup's
    float acc[1][DVP / 8][4], m[1][2], l[1][2];
    m[0][0] = m[0][1] = ATT_NEG_INF;
    l[0][0] = l[0][1] = 0.f;
    #pragma unroll
    for (int nt = 0; nt < DVP / 8; ++nt) acc[0][nt][0] = acc[0][nt][1] = acc[0][nt][2] = acc[0][nt][3] = 0.f;

    // the scale folds into the exponent (sa > 0), as attn_fwd: a negative scale negates the warp's
    // Q rows, a zero one zeroes them (a permutation-free map, so the swizzle does not matter)
    const float sa = sl2 == 0.f ? 1.f : fabsf(sl2);
    if (sl2 <= 0.f) {  // block-uniform
        const unsigned qflip = sl2 < 0.f ? 0x80008000u : 0u, qkeep = sl2 == 0.f ? 0u : 0xffffffffu;
        cp_wait0();
        __syncthreads();
        for (int x = lane; x < 16 * 2 * 32; x += 32) {  // 16 rows x 2 blocks x 32 words
            const int r = qr + x / 64, blk = (x / 32) & 1, wd = x & 31;
            unsigned* e = (unsigned*)(base + blk * BM * 128 + r * 128) + wd;
            *e = (*e ^ qflip) & qkeep;
        }
        wg_fence_proxy();
    }
    // the warpgroup's rows see no key of tile t
    auto idle = [&](int t) {
        const int kt = t * BN;
        return glo >= len || (causal && kt > glo + 63) || (window > 0 && kt + BN - 1 <= glo - window);
    };

    for (int t = t0; t < t1; ++t) {
        const int buf = (t - t0) & 1;
        cp_wait0();
        wg_fence_proxy();  // the cp.async tiles (generic proxy) before the products read them
        __syncthreads();
        if (t + 1 < t1) {
            load_kv(t + 1, buf ^ 1);
            cp_commit();
        }
        if (!idle(t)) {  // warpgroup-uniform
            float s[1][BN / 8][4];
            #pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) s[0][nt][0] = s[0][nt][1] = s[0][nt][2] = s[0][nt][3] = 0.f;
            wg_mma_k128<BN, BM, BN>(reinterpret_cast<float(&)[64]>(s), uQ + wg * 8192, uK + buf * TB);
            att_fwd_mask<1, BN>(s, qlo, t * BN, len, causal, window, fg, ft);
            att_fwd_softmax<1, BN, DVP>(s, m, l, acc, sa);
            unsigned pa[8][4];
            wg_pack_a<8>(pa, s[0]);
            wg_fence();  // P and the rescaled O are in registers before the products read them
            #pragma unroll
            for (int kk = 0; kk < 8; ++kk)
                wg_m64n128k16_rs<1>(reinterpret_cast<float(&)[64]>(acc), pa[kk], wg_desc(uV + buf * TB + 2048 * kk, 16384, 1024));
            wg_commit();
            wg_wait0();
        }
    }
    cp_wait0();
    __syncthreads();  // every warpgroup is done with the tiles
    // epilogue: o = O / l through the K buffers (row-major [BM][LV])
    bf16_t* sO = (bf16_t*)(base + TB);
    att_fwd_out<1, DVP>(acc, m, l, sO, LV, qr, L, lse + (bs + i0) * H + j, H, fg, ft);
    __syncthreads();
    att_store<BM, DVP, NT>(o + (bs + i0) * ldo + (idx_t)j * DV, ldo, sO, LV, L, DV, tid);
#endif
}
