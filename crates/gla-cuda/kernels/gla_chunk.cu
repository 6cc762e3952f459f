// gla_chunk.cu: chunked GLA forward, state on chip (one pass over q, k, v, g; o written once).
//
// Chunk form (BT = 64 rows, G = chunk-local inclusive cumsum of g in f32, G_last = G at row 63,
// rows past the sequence end read as zero with g = 0, so G_last is the true end-of-chunk value):
//     o_t    = scale * (q_t * exp(G_t))^T S  +  sum_{s <= t in chunk} A_ts v_s
//     A_ts   = scale * sum_i q_ti k_si exp(G_ti - G_si)                 (s <= t: exponent <= 0)
//     S_next = diag(exp(G_last)) S + sum_s (k_s * exp(G_last - G_s)) v_s^T
// Every exponent is <= 0 (g <= 0 makes G non-increasing), so no exp ever exceeds 1.
// One block owns one (n, h) and a BV-column tile of V and walks the sequence's chunks in order,
// keeping S [K, BV] f32 in shared memory; it reads each input once and writes o (=) and ht (=).
// All arithmetic f32 (FMA); inputs T (f32 or bf16), o: T, h0/ht: f32.
// Launch: grid (ceil(V / BV), N*H), block 256, dynamic shared memory chunk_smem_bytes(K) below:
//     (3 * 64 * K + 64 * BV + 64 * 64 + K * BV) * 4 bytes  (K <= 128: <= 160 KiB)

#define BT 64
#define BV 32
#define NTHREADS 256

template <typename T>
__device__ void chunk_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ g, const float* __restrict__ h0, T* __restrict__ o,
                          float* __restrict__ ht, const idx_t* __restrict__ bounds,
                          int H, int K, int V, int gw, float scale) {
    extern __shared__ float smem[];
    float* s_G = smem;                   // [BT, K]  cumsum of g
    float* s_q = s_G + BT * K;           // [BT, K]
    float* s_k = s_q + BT * K;           // [BT, K]
    float* s_v = s_k + BT * K;           // [BT, BV]
    float* s_A = s_v + BT * BV;          // [BT, BT]
    float* s_S = s_A + BT * BT;          // [K, BV]
    const int tid = threadIdx.x;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H;
    const int v0 = blockIdx.x * BV;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    for (int x = tid; x < K * BV; x += NTHREADS) {
        int i = x / BV, j = x % BV;
        s_S[x] = (h0 != nullptr && v0 + j < V) ? h0[o_state + (idx_t)i * V + v0 + j] : 0.f;
    }
    for (idx_t r0 = bos; r0 < eos; r0 += BT) {
        const int L = (int)min((idx_t)BT, eos - r0);
        __syncthreads();
        for (int x = tid; x < BT * K; x += NTHREADS) {
            int t = x / K, i = x % K;
            bool m_t = t < L;
            idx_t o_k = ((r0 + t) * H + h) * (idx_t)K + i;
            s_q[x] = m_t ? to_f32(q[o_k]) : 0.f;
            s_k[x] = m_t ? to_f32(k[o_k]) : 0.f;
            s_G[x] = m_t ? load_gate(g, r0 + t, H, K, gw, i, h) : 0.f;
        }
        for (int x = tid; x < BT * BV; x += NTHREADS) {
            int t = x / BV, j = x % BV;
            s_v[x] = (t < L && v0 + j < V) ? to_f32(v[((r0 + t) * H + h) * (idx_t)V + v0 + j]) : 0.f;
        }
        __syncthreads();
        for (int i = tid; i < K; i += NTHREADS) {
            float c = 0.f;
            for (int t = 0; t < BT; ++t) {
                c += s_G[t * K + i];
                s_G[t * K + i] = c;
            }
        }
        __syncthreads();
        // intra-chunk attention A (lower triangle incl. diagonal)
        for (int x = tid; x < BT * BT; x += NTHREADS) {
            int t = x / BT, s = x % BT;
            float acc = 0.f;
            if (s <= t) {
                for (int i = 0; i < K; ++i)
                    acc += s_q[t * K + i] * s_k[s * K + i] * expf(s_G[t * K + i] - s_G[s * K + i]);
            }
            s_A[x] = acc * scale;
        }
        __syncthreads();
        // q * exp(G), k * exp(G_last - G) in place: both exponents <= 0
        for (int x = tid; x < BT * K; x += NTHREADS) {
            int i = x % K;
            float G = s_G[x];
            s_q[x] *= expf(G);
            s_k[x] *= expf(s_G[(BT - 1) * K + i] - G);
        }
        __syncthreads();
        for (int x = tid; x < BT * BV; x += NTHREADS) {
            int t = x / BV, j = x % BV;
            if (t < L && v0 + j < V) {
                float inter = 0.f, intra = 0.f;
                for (int i = 0; i < K; ++i) inter += s_q[t * K + i] * s_S[i * BV + j];
                for (int s = 0; s <= t; ++s) intra += s_A[t * BT + s] * s_v[s * BV + j];
                o[((r0 + t) * H + h) * (idx_t)V + v0 + j] = from_f32<T>(inter * scale + intra);
            }
        }
        __syncthreads();
        for (int x = tid; x < K * BV; x += NTHREADS) {
            int i = x / BV, j = x % BV;
            float acc = expf(s_G[(BT - 1) * K + i]) * s_S[x];
            for (int t = 0; t < BT; ++t) acc += s_k[t * K + i] * s_v[t * BV + j];
            s_S[x] = acc;
        }
    }
    __syncthreads();
    if (ht != nullptr) {
        for (int x = tid; x < K * BV; x += NTHREADS) {
            int i = x / BV, j = x % BV;
            if (v0 + j < V) ht[o_state + (idx_t)i * V + v0 + j] = s_S[x];
        }
    }
}

#define ENTRY(NAME, T)                                                                                  \
extern "C" __global__ void __launch_bounds__(NTHREADS) gla_chunk_fwd_##NAME(                            \
    const T* q, const T* k, const T* v, const T* g, const float* h0, T* o, float* ht,                   \
    const idx_t* bounds, int H, int K, int V, int gw, float scale) {                                    \
    chunk_fwd<T>(q, k, v, g, h0, o, ht, bounds, H, K, V, gw, scale);                                    \
}

ENTRY(f32, float)
ENTRY(bf16, bf16_t)

// ---------------------------------------------------------------------------------------------
// gla_chunk_fwd_mma_bf16: the same function for bf16 inputs, with the chunk matmuls on the
// tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulate).
//
// Sub-chunk normaliser (GLA paper, secondary chunking): rows are 4 sub-chunks of 16. For a row t
// in sub-chunk a and a column s in an earlier sub-chunk b < a, with gn = G at row 16a:
//     exp(G_t - G_s) = exp(G_t - gn) * exp(gn - G_s),  both factors <= 1
// so A's off-diagonal 16x16 blocks are Qg_a Kg_a^T with Qg = q exp(G - gn_a), Kg_a = k exp(gn_a - G)
// (one Kg per a: 16 + 32 + 48 rows). Diagonal blocks are computed pairwise in f32.
// S [Kp, BV] f32 lives in the mma accumulator registers: warp w owns rows 16w..16w+15 (Kp <= 128);
// a bf16 copy S^T sits in shared memory for the o = Qe S matmul (Qe = q exp(G)).
// One block = one (n, h) and BV = 64 value columns; 256 threads. K is padded to Kp (multiple of 16)
// with zeros. Dynamic shared memory: chunk_mma_smem_bytes(Kp) on the host side.

#define MBV 64
#define LDT 72  // row stride (bf16) of the [*, 64] tiles: 64 + 8 keeps fragment loads conflict-free

__device__ __forceinline__ void mma_bf16_16816(float c[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c[16 x 8] += A[16 x kd] Bt[8 x kd]^T; A and Bt row-major bf16 in shared memory, kd % 16 == 0
__device__ __forceinline__ void warp_mm(float c[4], const bf16_t* A, int lda, const bf16_t* Bt, int ldb, int kd) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const bf16_t* a_lo = A + g * lda + 2 * t;
    const bf16_t* a_hi = a_lo + 8 * lda;
    const bf16_t* b = Bt + g * ldb + 2 * t;
    for (int k0 = 0; k0 < kd; k0 += 16) {
        unsigned a0 = *(const unsigned*)(a_lo + k0), a1 = *(const unsigned*)(a_hi + k0);
        unsigned a2 = *(const unsigned*)(a_lo + k0 + 8), a3 = *(const unsigned*)(a_hi + k0 + 8);
        unsigned b0 = *(const unsigned*)(b + k0), b1 = *(const unsigned*)(b + k0 + 8);
        mma_bf16_16816(c, a0, a1, a2, a3, b0, b1);
    }
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)from_f32<bf16_t>(lo) | ((unsigned)from_f32<bf16_t>(hi) << 16);
}

extern "C" __global__ void __launch_bounds__(NTHREADS, 1) gla_chunk_fwd_mma_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    const bf16_t* __restrict__ g, const float* __restrict__ h0, bf16_t* __restrict__ o, float* __restrict__ ht,
    const idx_t* __restrict__ bounds, int H, int K, int V, int gw, float scale, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int ldk = Kp + 8;
    float* s_G = (float*)smem_raw;                      // [BT, Kp] f32 cumsum
    bf16_t* s_qr = (bf16_t*)(s_G + BT * Kp);            // [BT, ldk] raw q
    bf16_t* s_kr = s_qr + BT * ldk;                     // [BT, ldk] raw k
    bf16_t* s_qg = s_kr + BT * ldk;                     // [BT, ldk] q exp(G - gn)
    bf16_t* s_qe = s_qg + BT * ldk;                     // [BT, ldk] q exp(G)
    bf16_t* s_kg = s_qe + BT * ldk;                     // [96, ldk] k exp(gn_a - G), a = 1, 2, 3
    bf16_t* s_kdt = s_kg + 96 * ldk;                    // [Kp, LDT] (k exp(G_last - G))^T
    bf16_t* s_vt = s_kdt + Kp * LDT;                    // [MBV, LDT] v^T
    bf16_t* s_A = s_vt + MBV * LDT;                     // [BT, LDT] causal A (scaled)
    bf16_t* s_st = s_A + BT * LDT;                      // [MBV, ldk] S^T in bf16
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H;
    const int v0 = blockIdx.x * MBV;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    const bool m_w = 16 * w < Kp;  // this warp owns 16 rows of S
    float b_S[MBV / 8][4];
    #pragma unroll
    for (int nt = 0; nt < MBV / 8; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            int i = 16 * w + fg + (e >= 2 ? 8 : 0), j = v0 + 8 * nt + 2 * ft + (e & 1);
            b_S[nt][e] = (h0 != nullptr && m_w && i < K && j < V) ? h0[o_state + (idx_t)i * V + j] : 0.f;
        }
    }
    // A above the diagonal blocks stays zero for the whole run
    for (int x = tid; x < BT * LDT; x += NTHREADS) s_A[x] = 0;
    for (idx_t r0 = bos; r0 < eos; r0 += BT) {
        const int L = (int)min((idx_t)BT, eos - r0);
        // S^T (bf16) for this chunk's inter-chunk term; the previous chunk's readers are done
        __syncthreads();
        if (m_w) {
            #pragma unroll
            for (int nt = 0; nt < MBV / 8; ++nt) {
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int i = 16 * w + fg + (e >= 2 ? 8 : 0), j = 8 * nt + 2 * ft + (e & 1);
                    s_st[j * ldk + i] = from_f32<bf16_t>(b_S[nt][e]);
                }
            }
        }
        for (int x = tid; x < BT * Kp; x += NTHREADS) {
            int t = x / Kp, i = x % Kp;
            bool m = t < L && i < K;
            idx_t o_k = ((r0 + t) * H + h) * (idx_t)K + i;
            s_qr[t * ldk + i] = m ? q[o_k] : (bf16_t)0;
            s_kr[t * ldk + i] = m ? k[o_k] : (bf16_t)0;
            s_G[x] = m ? load_gate(g, r0 + t, H, K, gw, i, h) : 0.f;
        }
        for (int x = tid; x < BT * MBV; x += NTHREADS) {
            int t = x / MBV, j = x % MBV;
            s_vt[j * LDT + t] = (t < L && v0 + j < V) ? v[((r0 + t) * H + h) * (idx_t)V + v0 + j] : (bf16_t)0;
        }
        __syncthreads();
        for (int i = tid; i < Kp; i += NTHREADS) {
            float c = 0.f;
            for (int t = 0; t < BT; ++t) {
                c += s_G[t * Kp + i];
                s_G[t * Kp + i] = c;
            }
        }
        __syncthreads();
        for (int x = tid; x < BT * Kp; x += NTHREADS) {
            int t = x / Kp, i = x % Kp, a = t / 16;
            float G = s_G[x], qf = to_f32(s_qr[t * ldk + i]), kf = to_f32(s_kr[t * ldk + i]);
            s_qg[t * ldk + i] = from_f32<bf16_t>(qf * expf(G - s_G[16 * a * Kp + i]));
            s_qe[t * ldk + i] = from_f32<bf16_t>(qf * expf(G));
            s_kdt[i * LDT + t] = from_f32<bf16_t>(kf * expf(s_G[(BT - 1) * Kp + i] - G));
            for (int a2 = a + 1; a2 < 4; ++a2)
                s_kg[(8 * (a2 - 1) * a2 + t) * ldk + i] = from_f32<bf16_t>(kf * expf(s_G[16 * a2 * Kp + i] - G));
        }
        __syncthreads();
        // off-diagonal blocks of A on the tensor cores: 6 blocks x 2 halves = 12 warp tiles
        for (int x = w; x < 12; x += NTHREADS / 32) {
            const int blk = x >> 1, half = x & 1;
            const int a = blk < 1 ? 1 : (blk < 3 ? 2 : 3), b = blk - (a * (a - 1)) / 2;
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            warp_mm(c, s_qg + 16 * a * ldk, ldk, s_kg + (8 * (a - 1) * a + 16 * b + 8 * half) * ldk, ldk, Kp);
            int row = 16 * a + fg, col = 16 * b + 8 * half + 2 * ft;
            *(unsigned*)(s_A + row * LDT + col) = pack_bf16(c[0] * scale, c[1] * scale);
            *(unsigned*)(s_A + (row + 8) * LDT + col) = pack_bf16(c[2] * scale, c[3] * scale);
        }
        // diagonal blocks pairwise in f32 (exponent G_t - G_s <= 0 for s <= t)
        for (int x = tid; x < 4 * 256; x += NTHREADS) {
            const int a = x >> 8, tt = (x >> 4) & 15, ss = x & 15, t = 16 * a + tt, s = 16 * a + ss;
            float acc = 0.f;
            if (ss <= tt) {
                for (int i = 0; i < K; ++i)
                    acc += to_f32(s_qr[t * ldk + i]) * to_f32(s_kr[s * ldk + i]) * expf(s_G[t * Kp + i] - s_G[s * Kp + i]);
            }
            s_A[t * LDT + s] = from_f32<bf16_t>(acc * scale);
        }
        __syncthreads();
        // o = scale * Qe S + A V: 4 row tiles x 8 column tiles
        for (int x = w; x < 4 * (MBV / 8); x += NTHREADS / 32) {
            const int mt = x / (MBV / 8), nt = x % (MBV / 8);
            float ci[4] = {0.f, 0.f, 0.f, 0.f}, ca[4] = {0.f, 0.f, 0.f, 0.f};
            warp_mm(ci, s_qe + 16 * mt * ldk, ldk, s_st + 8 * nt * ldk, ldk, Kp);
            warp_mm(ca, s_A + 16 * mt * LDT, LDT, s_vt + 8 * nt * LDT, LDT, BT);
            #pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                int t = 16 * mt + fg + 8 * hr, j = v0 + 8 * nt + 2 * ft;
                if (t < L) {
                    idx_t o_o = ((r0 + t) * H + h) * (idx_t)V + j;
                    float y0 = ci[2 * hr] * scale + ca[2 * hr], y1 = ci[2 * hr + 1] * scale + ca[2 * hr + 1];
                    if (j + 1 < V && (o_o & 1) == 0) {
                        *(unsigned*)(o + o_o) = pack_bf16(y0, y1);
                    } else {
                        if (j < V) o[o_o] = from_f32<bf16_t>(y0);
                        if (j + 1 < V) o[o_o + 1] = from_f32<bf16_t>(y1);
                    }
                }
            }
        }
        // S = diag(exp(G_last)) S + Kd^T V, in the accumulators (s_kdt, s_vt are not written
        // again before the loop-top barrier)
        if (m_w) {
            const float d_lo = expf(s_G[(BT - 1) * Kp + 16 * w + fg]);
            const float d_hi = expf(s_G[(BT - 1) * Kp + 16 * w + fg + 8]);
            #pragma unroll
            for (int nt = 0; nt < MBV / 8; ++nt) {
                b_S[nt][0] *= d_lo;
                b_S[nt][1] *= d_lo;
                b_S[nt][2] *= d_hi;
                b_S[nt][3] *= d_hi;
                warp_mm(b_S[nt], s_kdt + 16 * w * LDT, LDT, s_vt + 8 * nt * LDT, LDT, BT);
            }
        }
    }
    if (ht != nullptr && m_w) {
        #pragma unroll
        for (int nt = 0; nt < MBV / 8; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                int i = 16 * w + fg + (e >= 2 ? 8 : 0), j = v0 + 8 * nt + 2 * ft + (e & 1);
                if (i < K && j < V) ht[o_state + (idx_t)i * V + j] = b_S[nt][e];
            }
        }
    }
}
