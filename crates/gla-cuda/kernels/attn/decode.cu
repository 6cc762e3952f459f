// attn/decode.cu: one decode step of causal softmax attention over a KV cache (flash-decoding:
// split-K over the cache, then a combine), bf16 storage, f32 math.
//
// Cache contract (gla_core::AttnCacheLayout): k_cache [N, S, H_KV, D], v_cache [N, S, H_KV, DV]
// bf16, S slots per sequence; lens [N] i32 = tokens sequence n has seen including the current
// one (0: the sequence is idle this step: nothing is appended, o = 0 and lse = -inf). Token p
// lives at slot p % S: a plain cache has S >= every len (the slot is p); a sliding-window layer
// of window w has S = w (a ring buffer). The step attends to the min(len, S) tokens the cache
// holds, which are exactly slots 0 .. min(len, S) - 1 (softmax ignores key order).
//
// attn_append: k_new [N, H_KV, D], v_new [N, H_KV, DV] -> slot (len - 1) % S of each sequence
// with len > 0 (=). One thread per element.
//
// attn_decode_d{DP}_dv{DVP} (G <= 8) and attn_decode_g1_d{DP}_dv{DVP} (G = 1: registers for one
// head only, more blocks per SM): one block per (split s, kv head g, sequence n), 128 threads,
// grid (splits, H_KV, N). The block reads each of its cache rows once for the whole group of
// query heads j = g * G .. g * G + G - 1 (G = H / H_KV): DP / 8 lanes per key (16 bytes of k and
// DVP / (DP / 8) values of v each; two keys per lane group in flight), the score reduced over
// those lanes, an online softmax per lane group, then merged over the block:
//     po [N, H, splits, DVP] f32 (=) = the split's softmax-weighted v (0 for an empty split)
//     pl [N, H, splits] f32 (=)      = the split's log2-sum-exp of the scaled scores (-inf: empty)
// over the slots [s * chunk, min((s + 1) * chunk, min(len, S))).
//
// attn_decode_combine: one block per (sequence, query head), DVP threads: o [N, H, DV] bf16 (=)
// and lse [N, H] f32 (=, natural log) from the splits.
//
// q [N, H, D] bf16. D = DP, DV = DVP (the host checks). No dynamic smem.
//
// Entry points: attn_append attn_decode_d64_dv32 attn_decode_d64_dv64 attn_decode_d128_dv128
//   attn_decode_g1_d64_dv32 attn_decode_g1_d64_dv64 attn_decode_g1_d128_dv128 attn_decode_combine

extern "C" __global__ void __launch_bounds__(256) attn_append(const bf16_t* __restrict__ k_new, const bf16_t* __restrict__ v_new,
                                                              bf16_t* __restrict__ k_cache, bf16_t* __restrict__ v_cache,
                                                              const int* __restrict__ lens, int N, int S, int HKV, int D, int DV) {
    const idx_t x = (idx_t)blockIdx.x * 256 + threadIdx.x;
    const idx_t per = (idx_t)HKV * (D + DV);
    if (x >= (idx_t)N * per) return;
    const int n = (int)(x / per);
    const int len = lens[n];
    if (len <= 0) return;
    const idx_t slot = (idx_t)((len - 1) % S);
    const idx_t r = x % per;
    if (r < (idx_t)HKV * D) {
        k_cache[((idx_t)n * S + slot) * HKV * D + r] = k_new[(idx_t)n * HKV * D + r];
    } else {
        const idx_t c = r - (idx_t)HKV * D;
        v_cache[((idx_t)n * S + slot) * HKV * DV + c] = v_new[(idx_t)n * HKV * DV + c];
    }
}

// W 32-bit words from p (4 W-byte aligned) in one load.
template <int W>
__device__ __forceinline__ void att_ld_vec(unsigned (&x)[W], const bf16_t* p) {
    if constexpr (W == 4) {
        const uint4 u = *(const uint4*)p;
        x[0] = u.x, x[1] = u.y, x[2] = u.z, x[3] = u.w;
    } else if constexpr (W == 2) {
        const uint2 u = *(const uint2*)p;
        x[0] = u.x, x[1] = u.y;
    } else {
        x[0] = *(const unsigned*)p;
    }
}

template <int DP, int DVP, int MG>
__device__ __forceinline__ void attn_decode(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k_cache,
                                            const bf16_t* __restrict__ v_cache, const int* __restrict__ lens, float* __restrict__ po,
                                            float* __restrict__ pl, int H, int HKV, int S, int chunk, float sl2) {
    constexpr int LPK = DP / 8;          // lanes per key
    constexpr int KPW = 32 / LPK;        // keys per warp step
    constexpr int VPL = DVP / LPK;       // values per lane
    constexpr int NW = 4;
    constexpr int UK = 2;                // keys per lane group per step
    static_assert(VPL == 2 || VPL == 4 || VPL == 8, "v per lane");
    __shared__ float sM[NW * KPW][MG], sLs[NW * KPW][MG];
    __shared__ float sOv[NW * KPW][MG][DVP];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int kl = lane % LPK, kg = lane / LPK;  // lane in the key's group, the group in the warp
    const int grp = w * KPW + kg;                // the group in the block
    const int split = blockIdx.x, g = blockIdx.y, n = blockIdx.z, splits = gridDim.x;
    const int G = H / HKV;
    const int len = lens[n];
    const int cnt = min(len, S);
    const int lo = split * chunk, hi = min(cnt, lo + chunk);

    float qv[MG][8];
    #pragma unroll
    for (int h = 0; h < MG; ++h) {
        if (h < G) {
            const uint4 u = *(const uint4*)(q + ((idx_t)n * H + g * G + h) * DP + 8 * kl);
            const unsigned uu[4] = {u.x, u.y, u.z, u.w};
            #pragma unroll
            for (int c = 0; c < 4; ++c) {
                qv[h][2 * c] = bf_lo(uu[c]) * sl2;
                qv[h][2 * c + 1] = bf_hi(uu[c]) * sl2;
            }
        }
    }
    float m[MG], l[MG], acc[MG][VPL];
    #pragma unroll
    for (int h = 0; h < MG; ++h) {
        m[h] = ATT_NEG_INF;
        l[h] = 0.f;
        #pragma unroll
        for (int c = 0; c < VPL; ++c) acc[h][c] = 0.f;
    }
    const idx_t ldk = (idx_t)HKV * DP, ldv = (idx_t)HKV * DVP;
    const bf16_t* kb = k_cache + (idx_t)n * S * ldk + (idx_t)g * DP + 8 * kl;
    const bf16_t* vb = v_cache + (idx_t)n * S * ldv + (idx_t)g * DVP + VPL * kl;
    // UK keys per lane group per step, all loaded before any is used (more bytes in flight)
    for (int s0 = lo; s0 < hi; s0 += UK * NW * KPW) {
        uint4 ku[UK];
        float vv[UK][VPL];
        bool ok[UK];
        #pragma unroll
        for (int u = 0; u < UK; ++u) {
            const int s = s0 + grp + u * NW * KPW;
            ok[u] = s < hi;
            ku[u] = make_uint4(0u, 0u, 0u, 0u);
            #pragma unroll
            for (int c = 0; c < VPL; ++c) vv[u][c] = 0.f;
            if (ok[u]) {
                ku[u] = *(const uint4*)(kb + (idx_t)s * ldk);
                // the lane's VPL values in one 2 VPL-byte load (VPL * kl is a multiple of VPL)
                unsigned x[VPL / 2];
                att_ld_vec<VPL / 2>(x, vb + (idx_t)s * ldv);
                #pragma unroll
                for (int c = 0; c < VPL / 2; ++c) {
                    vv[u][2 * c] = bf_lo(x[c]);
                    vv[u][2 * c + 1] = bf_hi(x[c]);
                }
            }
        }
        #pragma unroll
        for (int u = 0; u < UK; ++u) {
            const unsigned kw[4] = {ku[u].x, ku[u].y, ku[u].z, ku[u].w};
            #pragma unroll
            for (int h = 0; h < MG; ++h) {
                if (h < G) {
                    float d = 0.f;
                    #pragma unroll
                    for (int c = 0; c < 4; ++c) d += qv[h][2 * c] * bf_lo(kw[c]) + qv[h][2 * c + 1] * bf_hi(kw[c]);
                    #pragma unroll
                    for (int o = LPK / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                    if (ok[u]) {
                        const float mn = fmaxf(m[h], d);
                        const float a = ex2f(m[h] - mn), p = ex2f(d - mn);
                        m[h] = mn;
                        l[h] = l[h] * a + p;
                        #pragma unroll
                        for (int c = 0; c < VPL; ++c) acc[h][c] = acc[h][c] * a + p * vv[u][c];
                    }
                }
            }
        }
    }
    // merge the lane groups: each writes its state, then threads merge per (head, column)
    #pragma unroll
    for (int h = 0; h < MG; ++h) {
        if (h < G) {
            if (kl == 0) {
                sM[grp][h] = m[h];
                sLs[grp][h] = l[h];
            }
            #pragma unroll
            for (int c = 0; c < VPL; ++c) sOv[grp][h][VPL * kl + c] = acc[h][c];
        }
    }
    __syncthreads();
    for (int x = tid; x < G * DVP; x += NW * 32) {
        const int h = x / DVP, c = x % DVP;
        float mx = ATT_NEG_INF;
        for (int r = 0; r < NW * KPW; ++r) mx = fmaxf(mx, sM[r][h]);
        const float base = att_base(mx);
        float ls = 0.f, os = 0.f;
        for (int r = 0; r < NW * KPW; ++r) {
            const float a = ex2f(sM[r][h] - base);
            ls += sLs[r][h] * a;
            os += sOv[r][h][c] * a;
        }
        const idx_t row = ((idx_t)n * H + g * G + h) * splits + split;
        po[row * DVP + c] = ls > 0.f ? os / ls : 0.f;
        if (c == 0) pl[row] = ls > 0.f ? mx + log2f(ls) : ATT_NEG_INF;
    }
}

extern "C" __global__ void attn_decode_combine(const float* __restrict__ po, const float* __restrict__ pl, bf16_t* __restrict__ o,
                                               float* __restrict__ lse, int splits, int DV) {
    const idx_t nh = blockIdx.x;
    const int c = threadIdx.x;
    float mx = ATT_NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, pl[nh * splits + s]);
    const float base = att_base(mx);
    float ls = 0.f, os = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float a = ex2f(pl[nh * splits + s] - base);
        ls += a;
        os += a * po[(nh * splits + s) * DV + c];
    }
    o[nh * DV + c] = f2bf(ls > 0.f ? os / ls : 0.f);
    if (c == 0) lse[nh] = ls > 0.f ? ATT_LN2 * (mx + log2f(ls)) : ATT_NEG_INF;
}

#define ATTN_DEC_ENTRY(NAME, DP, DVP, MG)                                                                        \
extern "C" __global__ void __launch_bounds__(128) NAME(                                                           \
    const bf16_t* q, const bf16_t* k_cache, const bf16_t* v_cache, const int* lens, float* po, float* pl, int H,   \
    int HKV, int S, int chunk, float sl2) {                                                                      \
    attn_decode<DP, DVP, MG>(q, k_cache, v_cache, lens, po, pl, H, HKV, S, chunk, sl2);                          \
}

ATTN_DEC_ENTRY(attn_decode_d64_dv32, 64, 32, 8)
ATTN_DEC_ENTRY(attn_decode_d64_dv64, 64, 64, 8)
ATTN_DEC_ENTRY(attn_decode_d128_dv128, 128, 128, 8)
ATTN_DEC_ENTRY(attn_decode_g1_d64_dv32, 64, 32, 1)
ATTN_DEC_ENTRY(attn_decode_g1_d64_dv64, 64, 64, 1)
ATTN_DEC_ENTRY(attn_decode_g1_d128_dv128, 128, 128, 1)
