// gla/chunk_h.cu: the state passes of the bf16 chunked path, the only sequential launches:
// forward, the state entering every chunk; backward, the state gradient leaving every chunk.
//
// Contract: gla_chunk_h{64,32}_bf16: (kd, v, dl, h0) -> hs [chunks, H, K, V] bf16 (=, the state
// entering each chunk) and ht [N, H, K, V] f32 (=, null: none); kd, dl from the prep
// (gla/chunk_fwd.cu). gla_chunk_dh{64,32}_bf16: the same walk in reverse over (qe, do, dht) ->
// dhs (the gradient of the state leaving each chunk) and dh0. Per chunk:
//     hs[c] = S;   S = diag(dl_c) S + kd_c^T v_c      (f32 accumulators in the mma registers)
// Grid (ceil(V/BVH), ceil(K/64), N*H), 128 threads: one block walks one sequence's chunks in
// order with a 64 x BVH tile of S (chunk_h takes the block's sequence-head nh: bidir/ runs two
// walks in one grid); HNS stages of cp.async loads are in flight while one chunk is
// computed. BVH = 64 or 32 value columns (the host's choice, src/dispatch.rs HPlan: 32 doubles
// the blocks for long sequences). Dynamic smem HNS * ((64 * 72 + 64 * (BVH + 8)) * 2 + 256)
// bytes: HNS stages of kd [64][LDH], v [64][BVH+8], dl [64] f32.

#define HNS 4  // pipeline stages of the state passes

// A 4x4 transpose of 32-bit words within each quad of lanes (4 fg .. 4 fg + 3), three xor
// shuffles: lane ft holds w[c] = its word of 8-column group c (an mma fragment row: the lane's
// pair of columns 8c + 2ft, +1); it gets group ft's four words in column order (word l from lane
// l), i.e. 16 contiguous bytes of the row. Every lane of the warp must call it.
__device__ __forceinline__ uint4 quad_transpose(unsigned w0, unsigned w1, unsigned w2, unsigned w3, int ft) {
    auto pick = [&](int c) { return c == 0 ? w0 : c == 1 ? w1 : c == 2 ? w2 : w3; };
    const unsigned r0 = pick(ft);
    const unsigned r1 = __shfl_xor_sync(0xffffffffu, pick(ft ^ 1), 1);  // lane ft^1's word of group ft
    const unsigned r2 = __shfl_xor_sync(0xffffffffu, pick(ft ^ 2), 2);
    const unsigned r3 = __shfl_xor_sync(0xffffffffu, pick(ft ^ 3), 3);
    auto got = [&](int r) { return r == 0 ? r0 : r == 1 ? r1 : r == 2 ? r2 : r3; };  // from lane ft ^ r
    return make_uint4(got(ft), got(ft ^ 1), got(ft ^ 2), got(ft ^ 3));
}

// The state tile is stored as 16-byte row pieces (quad_transpose) when V % 8 == 0 and the tile
// lies inside V (else as 4-byte fragment words): every 32-byte sector of hs is then written whole
// once, not in two halves (the pass is bound by L2 traffic).
template <int BVH, bool REV>
__device__ __forceinline__ void chunk_h(const bf16_t* __restrict__ kd, const bf16_t* __restrict__ v, const float* __restrict__ dl,
                                        const float* __restrict__ h0, bf16_t* __restrict__ hs, float* __restrict__ ht,
                                        const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, int H, int K, int V,
                                        int nh) {
    constexpr int NT = BVH / 8, LDV = BVH + 8, STAGE = 64 * LDH + 64 * LDV;  // bf16 elements
    extern __shared__ __align__(16) unsigned char smem_h[];
    bf16_t* s_kv = (bf16_t*)smem_h;               // [HNS][STAGE]
    float* s_d = (float*)(s_kv + HNS * STAGE);    // [HNS][64]
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * BVH, i0 = blockIdx.y * 64, n = nh / H, h = nh % H;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int Kc = min(64, K - i0), Vc = min(BVH, V - j0);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;
    const idx_t o_state = (idx_t)nh * K * V;

    float acc[NT][4];
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = i0 + 16 * w + fg + (e >= 2 ? 8 : 0), j = j0 + 8 * nt + 2 * ft + (e & 1);
            acc[nt][e] = (h0 != nullptr && i < K && j < V) ? h0[o_state + (idx_t)i * V + j] : 0.f;
        }
    }
    auto load = [&](int c, int st) {
        const idx_t r0 = bos + (idx_t)c * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        bf16_t* base = s_kv + st * STAGE;
        tile_load(base, LDH, kd + (r0 * H + h) * (idx_t)K + i0, (idx_t)H * K, L, Kc, 64, vk, true, tid, 128);
        tile_load(base + 64 * LDH, LDV, v + (r0 * H + h) * (idx_t)V + j0, (idx_t)H * V, L, Vc, BVH, vv, true, tid, 128);
        const float* dsrc = dl + ((cbase + c) * H + h) * (idx_t)K + i0;
        if (vk) {
            if (tid < 16) cp16(s_d + st * 64 + 4 * tid, 4 * tid < Kc ? dsrc + 4 * tid : dsrc, 4 * tid < Kc);
        } else if (tid < 64) {
            s_d[st * 64 + tid] = tid < Kc ? dsrc[tid] : 0.f;
        }
    };
    // forward: chunks 0 .. nc-1; REV (the state-gradient pass): nc-1 .. 0. HNS stages: the
    // loads of the next HNS-1 chunks are in flight while one is computed.
    #pragma unroll
    for (int p = 0; p < HNS - 1; ++p) {
        if (p < nc) load(REV ? nc - 1 - p : p, p);
        cp_commit();
    }
    for (int it = 0; it < nc; ++it) {
        const int st = it % HNS, c = REV ? nc - 1 - it : it;
        const int ahead = it + HNS - 1;
        if (ahead < nc) load(REV ? nc - 1 - ahead : ahead, ahead % HNS);
        cp_commit();
        // the state entering chunk c, as bf16, for the output pass
        bf16_t* hp = hs + ((cbase + c) * H + h) * (idx_t)K * V;
        if ((V & 7) == 0 && j0 + BVH <= V) {  // uniform over the block: shuffles inside
            #pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int i = i0 + 16 * w + fg + 8 * hr;
                #pragma unroll
                for (int g4 = 0; g4 < NT / 4; ++g4) {
                    const uint4 q = quad_transpose(pack2(acc[4 * g4][2 * hr], acc[4 * g4][2 * hr + 1]),
                                                   pack2(acc[4 * g4 + 1][2 * hr], acc[4 * g4 + 1][2 * hr + 1]),
                                                   pack2(acc[4 * g4 + 2][2 * hr], acc[4 * g4 + 2][2 * hr + 1]),
                                                   pack2(acc[4 * g4 + 3][2 * hr], acc[4 * g4 + 3][2 * hr + 1]), ft);
                    if (i < K) *(uint4*)(hp + (idx_t)i * V + j0 + 8 * (4 * g4 + ft)) = q;
                }
            }
        } else {
            #pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                #pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int i = i0 + 16 * w + fg + 8 * hr, j = j0 + 8 * nt + 2 * ft;
                    if (i < K) {
                        const idx_t off = (idx_t)i * V + j;
                        if (j + 1 < V && (V & 1) == 0) {
                            *(unsigned*)(hp + off) = pack2(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                        } else {
                            if (j < V) hp[off] = f2bf(acc[nt][2 * hr]);
                            if (j + 1 < V) hp[off + 1] = f2bf(acc[nt][2 * hr + 1]);
                        }
                    }
                }
            }
        }
        cp_wait<HNS - 1>();
        __syncthreads();
        const bf16_t* tk = s_kv + st * STAGE;
        const bf16_t* tv = tk + 64 * LDH;
        const float d_lo = s_d[st * 64 + 16 * w + fg], d_hi = s_d[st * 64 + 16 * w + fg + 8];
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            acc[nt][0] *= d_lo;
            acc[nt][1] *= d_lo;
            acc[nt][2] *= d_hi;
            acc[nt][3] *= d_hi;
        }
        #pragma unroll
        for (int kt = 0; kt < 4; ++kt) {
            unsigned a[4];
            ldsm4ta(a, sfat(tk, LDH, 16 * kt, 16 * w, lane));
            #pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned b[4];
                ldsm4ta(b, sfbt(tv, LDV, 16 * kt, 16 * np, lane));
                mma16816(acc[2 * np], a, b[0], b[1]);
                mma16816(acc[2 * np + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();
    }
    if (ht != nullptr) {
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = i0 + 16 * w + fg + (e >= 2 ? 8 : 0), j = j0 + 8 * nt + 2 * ft + (e & 1);
                if (i < K && j < V) ht[o_state + (idx_t)i * V + j] = acc[nt][e];
            }
        }
    }
}

// forward: (kd, v, h0) -> hs (state entering each chunk), ht. Backward (dh entries): (qe, do,
// dht) -> dhs (gradient of the state leaving each chunk), dh0, walking the chunks in reverse.
// Three blocks per SM (<= 170 registers), as many as their shared memory allows (HPlan::cfg in
// src/dispatch.rs: CHUNK_H_STAGES stages, 57 or 73 KB): the pass is latency-bound and its
// blocks are its only parallelism; without the bound ptxas may take more registers and drop one.
#define HENTRY(NAME, BVH, REV)                                                                           \
extern "C" __global__ void __launch_bounds__(128, 3) NAME(                                               \
    const bf16_t* kd, const bf16_t* v, const float* dl, const float* h0, bf16_t* hs, float* ht,          \
    const idx_t* bounds, const idx_t* chunk_off, int H, int K, int V) {                                  \
    chunk_h<BVH, REV>(kd, v, dl, h0, hs, ht, bounds, chunk_off, H, K, V, blockIdx.z);                    \
}
HENTRY(gla_chunk_h64_bf16, 64, false)
HENTRY(gla_chunk_h32_bf16, 32, false)
HENTRY(gla_chunk_dh64_bf16, 64, true)
HENTRY(gla_chunk_dh32_bf16, 32, true)
