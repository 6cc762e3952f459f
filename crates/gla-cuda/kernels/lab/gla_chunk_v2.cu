// gla_chunk_v2.cu: chunked GLA forward for bf16 storage in two launches (fla's stage split), every
// matmul on the tensor cores (mma.sync m16n8k16 bf16 -> f32, fragments through ldmatrix).
//
// Contract (same as gla_chunk_fwd_*): q, k, g [rows, H, K], v, o [rows, H, V] bf16 (rows = B*T
// or the packed varlen total; sequence n holds rows bounds[n] .. bounds[n+1]); gate of width
// gw in {K, 1, 0}, g <= 0 (log decay); h0, ht [N, H, K, V] f32 (null = none); scale.
//     o_t = scale * S_t^T q_t,   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
// Chunks: BT = 64 rows per sequence, numbered globally: chunk c of sequence n is chunk_off[n] + c;
// chunk_seq[global chunk] = n. K <= 128 (Kp = K rounded up to 16), any V.
//
// Launch 1, gla_chunk_h_bf16: grid (ceil(V/64), ceil(K/64), N*H), 128 threads, dynamic smem
//   H_SMEM = 3 * 2 * 64 * 72 * 2 + 3 * 64 * 4 bytes (two stages of k, v, g tiles).
//   One block walks one sequence's chunks in order with a 64x64 f32 tile of S in the mma
//   accumulators; it stores S entering chunk c as bf16 to hs[c, h, K, V], then
//   S = diag(exp(G_last)) S + (k * exp(G_last - G))^T v      (G = chunk-local cumsum of g, f32)
//   and writes ht. The next chunk's tiles are in flight (cp.async) while one is computed.
// Launch 2, gla_chunk_o_bf16: grid (total chunks, H), 256 threads, dynamic smem o_smem(Kp) (host).
//   Fully parallel over chunks: A (64x64 causal, scaled) and o = scale (q exp(G)) S_c + A v.
//   A's off-diagonal 16x16 blocks (a > b) are (q exp(G - G[16a])) (k exp(G[16a] - G))^T on the
//   tensor cores (both exponents <= 0); the diagonal blocks are pairwise in f32 with exp2 of
//   differences (<= 0). Exponentials are base 2 on G * log2(e) (ex2.approx).
// All index products are 64-bit (idx_t). No exponent is ever positive.

#define L2E 1.4426950408889634f
#define LDH 72  // bf16 row stride of 64-wide tiles (144 B: ldmatrix rows land in distinct banks)

__device__ __forceinline__ float ex2f(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}
__device__ __forceinline__ void ldsm4(unsigned r[4], const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}
__device__ __forceinline__ void ldsm4t(unsigned r[4], const bf16_t* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}
__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// fragment addresses (lane l) for a 16x16 tile at (row0, col0) of a row-major bf16 smem matrix:
// A operand stored [m][k]
__device__ __forceinline__ const bf16_t* fa(const bf16_t* base, int ld, int r0, int c0, int l) {
    return base + (r0 + (l & 7) + 8 * ((l >> 3) & 1)) * ld + c0 + 8 * (l >> 4);
}
// A operand stored transposed [k][m] (use with ldsm4t); r0 indexes k, c0 indexes m
__device__ __forceinline__ const bf16_t* fat(const bf16_t* base, int ld, int r0, int c0, int l) {
    return base + (r0 + (l & 7) + 8 * (l >> 4)) * ld + c0 + 8 * ((l >> 3) & 1);
}
// B operand (two n-tiles of 8) stored [k][n] (use with ldsm4t): r[0], r[1] tile n0, r[2], r[3] tile n0+8
__device__ __forceinline__ const bf16_t* fbt(const bf16_t* base, int ld, int k0, int n0, int l) {
    return base + (k0 + (l & 7) + 8 * ((l >> 3) & 1)) * ld + n0 + 8 * (l >> 4);
}
// B operand (two n-tiles) stored [n][k] (use with ldsm4): r[0], r[1] tile n0, r[2], r[3] tile n0+8
__device__ __forceinline__ const bf16_t* fbn(const bf16_t* base, int ld, int k0, int n0, int l) {
    return base + (n0 + (l & 7) + 8 * (l >> 4)) * ld + k0 + 8 * ((l >> 3) & 1);
}
__device__ __forceinline__ void cp16(void* s, const void* g, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(s)), "l"(g), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return (unsigned)from_f32<bf16_t>(lo) | ((unsigned)from_f32<bf16_t>(hi) << 16);
}
__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

// 64 rows x Cp columns (Cp % 8 == 0) of bf16 into smem dst (row stride lds): row t from
// src + t * ldg, columns < C and rows < L read, the rest zero. vec: 16-byte pieces (C % 8 == 0,
// src and ldg 16-byte aligned); async: through cp.async (the caller commits and waits).
__device__ __forceinline__ void tile_load(bf16_t* dst, int lds, const bf16_t* src, idx_t ldg, int L, int C, int Cp,
                                          bool vec, bool async, int tid, int nthr) {
    if (vec) {
        const int cpr = Cp >> 3;
        for (int x = tid; x < 64 * cpr; x += nthr) {
            const int t = x / cpr, c = (x % cpr) * 8;
            const bool ok = t < L && c < C;
            const bf16_t* gp = ok ? src + (idx_t)t * ldg + c : src;
            if (async) {
                cp16(dst + t * lds + c, gp, ok);
            } else {
                uint4 val;
                val.x = val.y = val.z = val.w = 0u;
                if (ok) val = *(const uint4*)gp;
                *(uint4*)(dst + t * lds + c) = val;
            }
        }
    } else {
        for (int x = tid; x < 64 * Cp; x += nthr) {
            const int t = x / Cp, c = x % Cp;
            dst[t * lds + c] = (t < L && c < C) ? src[(idx_t)t * ldg + c] : (bf16_t)0;
        }
    }
}

// ------------------------------------------------------------------------------------------------
// launch 1: the state pass

extern "C" __global__ void __launch_bounds__(128) gla_chunk_h_bf16(
    const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, const bf16_t* __restrict__ g,
    const float* __restrict__ h0, bf16_t* __restrict__ hs, float* __restrict__ ht,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, int H, int K, int V, int gw) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16_t* s_k = (bf16_t*)smem_raw;         // [2][64][LDH]
    bf16_t* s_v = s_k + 2 * 64 * LDH;        // [2][64][LDH]
    bf16_t* s_g = s_v + 2 * 64 * LDH;        // [2][64][LDH]
    float* s_part = (float*)(s_g + 2 * 64 * LDH);  // [2][64]
    float* s_d = s_part + 128;               // [64]
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int j0 = blockIdx.x * 64, i0 = blockIdx.y * 64, nh = blockIdx.z, n = nh / H, h = nh % H;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const int nc = (int)((eos - bos + 63) / 64);
    const idx_t cbase = chunk_off[n];
    const int Kc = min(64, K - i0), Vc = min(64, V - j0);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;
    const idx_t o_state = (idx_t)nh * K * V;

    float acc[8][4];
    #pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = i0 + 16 * w + fg + (e >= 2 ? 8 : 0), j = j0 + 8 * nt + 2 * ft + (e & 1);
            acc[nt][e] = (h0 != nullptr && i < K && j < V) ? h0[o_state + (idx_t)i * V + j] : 0.f;
        }
    }
    auto load = [&](int c, int st) {
        const idx_t r0 = bos + (idx_t)c * 64;
        const int L = (int)min((idx_t)64, eos - r0);
        tile_load(s_k + st * 64 * LDH, LDH, k + (r0 * H + h) * (idx_t)K + i0, (idx_t)H * K, L, Kc, 64, vk, true, tid, 128);
        tile_load(s_v + st * 64 * LDH, LDH, v + (r0 * H + h) * (idx_t)V + j0, (idx_t)H * V, L, Vc, 64, vv, true, tid, 128);
        bf16_t* dg = s_g + st * 64 * LDH;
        if (gw == K) {
            tile_load(dg, LDH, g + (r0 * H + h) * (idx_t)K + i0, (idx_t)H * K, L, Kc, 64, vk, true, tid, 128);
        } else {
            for (int x = tid; x < 64 * 64; x += 128) {
                const int t = x >> 6, c = x & 63;
                dg[t * LDH + c] = (gw == 1 && t < L) ? g[(r0 + t) * H + h] : (bf16_t)0;
            }
        }
    };
    if (nc > 0) load(0, 0);
    cp_commit();
    for (int c = 0; c < nc; ++c) {
        const int st = c & 1;
        if (c + 1 < nc) load(c + 1, st ^ 1);
        cp_commit();
        // the state entering chunk c, as bf16, for the output pass
        {
            bf16_t* hp = hs + ((cbase + c) * H + h) * (idx_t)K * V;
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                #pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int i = i0 + 16 * w + fg + 8 * hr, j = j0 + 8 * nt + 2 * ft;
                    if (i < K) {
                        const idx_t off = (idx_t)i * V + j;
                        if (j + 1 < V && (V & 1) == 0) {
                            *(unsigned*)(hp + off) = pack2(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                        } else {
                            if (j < V) hp[off] = from_f32<bf16_t>(acc[nt][2 * hr]);
                            if (j + 1 < V) hp[off + 1] = from_f32<bf16_t>(acc[nt][2 * hr + 1]);
                        }
                    }
                }
            }
        }
        cp_wait1();
        __syncthreads();
        bf16_t* tk = s_k + st * 64 * LDH;
        const bf16_t* tg = s_g + st * 64 * LDH;
        const bf16_t* tv = s_v + st * 64 * LDH;
        {
            // chunk-local cumsum per key channel, two halves of 32 rows; k -> k exp(G_last - G)
            const int ch = tid & 63, hf = tid >> 6;
            float part = 0.f;
            #pragma unroll 8
            for (int t = 32 * hf; t < 32 * hf + 32; ++t) part += to_f32(tg[t * LDH + ch]);
            s_part[hf * 64 + ch] = part;
            __syncthreads();
            const float tot = s_part[ch] + s_part[64 + ch];
            float run = hf ? s_part[ch] : 0.f;
            #pragma unroll 8
            for (int t = 32 * hf; t < 32 * hf + 32; ++t) {
                run += to_f32(tg[t * LDH + ch]);
                tk[t * LDH + ch] = from_f32<bf16_t>(to_f32(tk[t * LDH + ch]) * ex2f((tot - run) * L2E));
            }
            if (hf == 0) s_d[ch] = ex2f(tot * L2E);
        }
        __syncthreads();
        {
            const float d_lo = s_d[16 * w + fg], d_hi = s_d[16 * w + fg + 8];
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                acc[nt][0] *= d_lo;
                acc[nt][1] *= d_lo;
                acc[nt][2] *= d_hi;
                acc[nt][3] *= d_hi;
            }
            #pragma unroll
            for (int kt = 0; kt < 4; ++kt) {
                unsigned a[4];
                ldsm4t(a, fat(tk, LDH, 16 * kt, 16 * w, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned b[4];
                    ldsm4t(b, fbt(tv, LDH, 16 * kt, 16 * np, lane));
                    mma16816(acc[2 * np], a, b[0], b[1]);
                    mma16816(acc[2 * np + 1], a, b[2], b[3]);
                }
            }
        }
        __syncthreads();
    }
    if (ht != nullptr) {
        #pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = i0 + 16 * w + fg + (e >= 2 ? 8 : 0), j = j0 + 8 * nt + 2 * ft + (e & 1);
                if (i < K && j < V) ht[o_state + (idx_t)i * V + j] = acc[nt][e];
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// launch 2: the output pass, one block per (chunk, head)
//
// smem (Kp <= 128, LDK = Kp + 8), byte offsets:
//   R0 [64][LDK] bf16   q, then q scale exp(G)                      (qe)
//   R1 [64][136] bf16   k, then k exp(G[16(a+1)] - G) in place for rows of sub-chunk a < 3; later v
//   R2 [64][Kp]  f32    G * log2(e)      } later S_c [Kp][136] bf16 (fits: 384 Kp + 1024 >= 272 Kp)
//   R3 [64][LDK] bf16   q scale exp(G - G[16a])  (qg)   }
//   R4 [48][LDK] bf16   k exp(G[16a'] - G) for a' = a + 2, a + 3
//   RA [64][72]  bf16   A (scaled, causal)
//   RP [2][128]  f32    cumsum halves

#define OV 136  // row stride of the 128-wide V tiles

extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_o_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    const bf16_t* __restrict__ g, const bf16_t* __restrict__ hs, bf16_t* __restrict__ o,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int V, int gw, float scale, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int LDK = Kp + 8;
    bf16_t* R0 = (bf16_t*)smem_raw;
    bf16_t* R1 = R0 + 64 * LDK;
    float* R2 = (float*)(R1 + 64 * OV);
    bf16_t* R3 = (bf16_t*)(R2 + 64 * Kp);
    bf16_t* R4 = R3 + 64 * LDK;
    bf16_t* RA = R4 + 48 * LDK;
    float* RP = (float*)(RA + 64 * LDH);
    bf16_t* RS = (bf16_t*)R2;  // S_c, after A is done
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const int n = chunk_seq[cg];
    const idx_t r0 = bounds[n] + (cg - chunk_off[n]) * 64;
    const int L = (int)min((idx_t)64, bounds[n + 1] - r0);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;

    // P1: q, k, g
    tile_load(R0, LDK, q + (r0 * H + h) * (idx_t)K, (idx_t)H * K, L, K, Kp, vk, false, tid, 256);
    tile_load(R1, OV, k + (r0 * H + h) * (idx_t)K, (idx_t)H * K, L, K, Kp, vk, false, tid, 256);
    if (gw == K && vk) {
        const int cpr = Kp >> 3;
        const bf16_t* src = g + (r0 * H + h) * (idx_t)K;
        for (int x = tid; x < 64 * cpr; x += 256) {
            const int t = x / cpr, c = (x % cpr) * 8;
            uint4 u;
            u.x = u.y = u.z = u.w = 0u;
            if (t < L && c < K) u = *(const uint4*)(src + (idx_t)t * H * K + c);
            float4 lo, hi;
            lo.x = bf_lo(u.x); lo.y = bf_hi(u.x); lo.z = bf_lo(u.y); lo.w = bf_hi(u.y);
            hi.x = bf_lo(u.z); hi.y = bf_hi(u.z); hi.z = bf_lo(u.w); hi.w = bf_hi(u.w);
            *(float4*)(R2 + t * Kp + c) = lo;
            *(float4*)(R2 + t * Kp + c + 4) = hi;
        }
    } else {
        for (int x = tid; x < 64 * Kp; x += 256) {
            const int t = x / Kp, c = x % Kp;
            float gv = 0.f;
            if (t < L && c < K) {
                if (gw == K) gv = to_f32(g[((r0 + t) * H + h) * (idx_t)K + c]);
                else if (gw == 1) gv = to_f32(g[(r0 + t) * H + h]);
            }
            R2[x] = gv;
        }
    }
    // A above the diagonal blocks is zero
    for (int x = tid; x < 64 * 64; x += 256) {
        const int t = x >> 6, s = x & 63;
        if ((s >> 4) > (t >> 4)) RA[t * LDH + s] = 0;
    }
    __syncthreads();
    // cumsum of g per channel (two halves of 32 rows), times log2(e)
    {
        const int ch = tid & 127, hf = tid >> 7;
        float part = 0.f;
        if (ch < Kp) {
            #pragma unroll 8
            for (int t = 32 * hf; t < 32 * hf + 32; ++t) part += R2[t * Kp + ch];
            RP[hf * 128 + ch] = part;
        }
        __syncthreads();
        if (ch < Kp) {
            float run = hf ? RP[ch] : 0.f;
            #pragma unroll 8
            for (int t = 32 * hf; t < 32 * hf + 32; ++t) {
                run += R2[t * Kp + ch];
                R2[t * Kp + ch] = run * L2E;
            }
        }
    }
    __syncthreads();
    // P2: diagonal 16x16 blocks of A, pairwise in f32. Warp task (a, tp): rows tp and 15 - tp of
    // sub-chunk a, all 16 columns; lane owns 4 channels; 32 partial sums reduce-scattered.
    for (int x = w; x < 32; x += 8) {
        const int a = x >> 3, tp = x & 7;
        const int ta = 16 * a + tp, tb = 16 * a + 15 - tp;
        float part[32];
        #pragma unroll
        for (int e = 0; e < 32; ++e) part[e] = 0.f;
        for (int c = 4 * lane; c < Kp; c += 128) {
            const uint2 qa = *(const uint2*)(R0 + ta * LDK + c), qb = *(const uint2*)(R0 + tb * LDK + c);
            const float4 ga = *(const float4*)(R2 + ta * Kp + c), gb = *(const float4*)(R2 + tb * Kp + c);
            const float qa0 = bf_lo(qa.x), qa1 = bf_hi(qa.x), qa2 = bf_lo(qa.y), qa3 = bf_hi(qa.y);
            const float qb0 = bf_lo(qb.x), qb1 = bf_hi(qb.x), qb2 = bf_lo(qb.y), qb3 = bf_hi(qb.y);
            #pragma unroll
            for (int s = 0; s < 16; ++s) {
                const int rs = 16 * a + s;
                const uint2 kk = *(const uint2*)(R1 + rs * OV + c);
                const float4 gs = *(const float4*)(R2 + rs * Kp + c);
                const float k0 = bf_lo(kk.x), k1 = bf_hi(kk.x), k2 = bf_lo(kk.y), k3 = bf_hi(kk.y);
                if (s <= tp) {
                    part[s] += qa0 * k0 * ex2f(ga.x - gs.x) + qa1 * k1 * ex2f(ga.y - gs.y) +
                               qa2 * k2 * ex2f(ga.z - gs.z) + qa3 * k3 * ex2f(ga.w - gs.w);
                }
                if (s <= 15 - tp) {
                    part[16 + s] += qb0 * k0 * ex2f(gb.x - gs.x) + qb1 * k1 * ex2f(gb.y - gs.y) +
                                    qb2 * k2 * ex2f(gb.z - gs.z) + qb3 * k3 * ex2f(gb.w - gs.w);
                }
            }
        }
        // reduce-scatter: lane l ends with the warp total of slot l
        #pragma unroll
        for (int off = 16; off >= 1; off >>= 1) {
            const bool up = (lane & off) != 0;
            #pragma unroll
            for (int e = 0; e < off; ++e) {
                const float send = up ? part[e] : part[e + off];
                const float keep = up ? part[e + off] : part[e];
                part[e] = keep + __shfl_xor_sync(0xffffffffu, send, off);
            }
        }
        const int t = (lane < 16) ? ta : tb, s = 16 * a + (lane & 15);
        RA[t * LDH + s] = from_f32<bf16_t>(part[0] * scale);
    }
    __syncthreads();
    // P3: per element, in place: qe, qg, kg
    for (int x = tid; x < 64 * Kp; x += 256) {
        const int t = x / Kp, c = x % Kp, a = t >> 4;
        const float G = R2[x];
        const float qv = to_f32(R0[t * LDK + c]) * scale, kv = to_f32(R1[t * OV + c]);
        R3[t * LDK + c] = from_f32<bf16_t>(qv * ex2f(G - R2[16 * a * Kp + c]));
        R0[t * LDK + c] = from_f32<bf16_t>(qv * ex2f(G));
        if (a < 3) R1[t * OV + c] = from_f32<bf16_t>(kv * ex2f(R2[16 * (a + 1) * Kp + c] - G));
        if (a < 2) R4[(a == 0 ? t : 16 + t) * LDK + c] = from_f32<bf16_t>(kv * ex2f(R2[16 * (a + 2) * Kp + c] - G));
        if (a < 1) R4[(16 + t) * LDK + c] = from_f32<bf16_t>(kv * ex2f(R2[48 * Kp + c] - G));
    }
    __syncthreads();
    // P4: off-diagonal blocks of A (a > b), one warp each
    if (w < 6) {
        const int a = w < 1 ? 1 : (w < 3 ? 2 : 3), b = w - (a * (a - 1)) / 2;
        const bf16_t* kb;
        int ldb;
        if (a == b + 1) {
            kb = R1 + 16 * b * OV;
            ldb = OV;
        } else {
            kb = R4 + (a == 2 ? 0 : (b == 0 ? 16 : 32)) * LDK;
            ldb = LDK;
        }
        float c2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        for (int kt = 0; kt < Kp; kt += 16) {
            unsigned fa4[4], fb4[4];
            ldsm4(fa4, fa(R3, LDK, 16 * a, kt, lane));
            ldsm4(fb4, fbn(kb, ldb, kt, 0, lane));
            mma16816(c2[0], fa4, fb4[0], fb4[1]);
            mma16816(c2[1], fa4, fb4[2], fb4[3]);
        }
        #pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int row = 16 * a + fg, col = 16 * b + 8 * nt + 2 * ft;
            *(unsigned*)(RA + row * LDH + col) = pack2(c2[nt][0], c2[nt][1]);
            *(unsigned*)(RA + (row + 8) * LDH + col) = pack2(c2[nt][2], c2[nt][3]);
        }
    }
    // P5/P6 per 128-wide tile of V: o = qe S + A v
    const int mt = w & 3, nh = w >> 2;
    const bf16_t* hsrc = hs + (cg * H + h) * (idx_t)K * V;
    for (int v0 = 0; v0 < V; v0 += 128) {
        const int Vc = min(128, V - v0);
        __syncthreads();
        tile_load(R1, OV, v + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 128, vv, false, tid, 256);
        // S_c rows i < K (Kp rows), 128 columns; rows >= K and columns >= Vc zero
        {
            const bool vs = (V & 7) == 0;
            if (vs) {
                for (int x = tid; x < Kp * 16; x += 256) {
                    const int i = x >> 4, c = (x & 15) * 8;
                    uint4 u;
                    u.x = u.y = u.z = u.w = 0u;
                    if (i < K && c < Vc) u = *(const uint4*)(hsrc + (idx_t)i * V + v0 + c);
                    *(uint4*)(RS + i * OV + c) = u;
                }
            } else {
                for (int x = tid; x < Kp * 128; x += 256) {
                    const int i = x >> 7, c = x & 127;
                    RS[i * OV + c] = (i < K && c < Vc) ? hsrc[(idx_t)i * V + v0 + c] : (bf16_t)0;
                }
            }
        }
        __syncthreads();
        float acc[8][4];
        #pragma unroll
        for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
        if (64 * nh < Vc) {
            for (int kt = 0; kt < Kp; kt += 16) {
                unsigned a4[4];
                ldsm4(a4, fa(R0, LDK, 16 * mt, kt, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned b4[4];
                    ldsm4t(b4, fbt(RS, OV, kt, 64 * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            for (int kt = 0; kt <= mt; ++kt) {
                unsigned a4[4];
                ldsm4(a4, fa(RA, LDH, 16 * mt, 16 * kt, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned b4[4];
                    ldsm4t(b4, fbt(R1, OV, 16 * kt, 64 * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            #pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                #pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int t = 16 * mt + fg + 8 * hr, j = v0 + 64 * nh + 8 * nt + 2 * ft;
                    if (t < L) {
                        const idx_t off = ((r0 + t) * H + h) * (idx_t)V + j;
                        if (j + 1 < V && (V & 1) == 0) {
                            *(unsigned*)(o + off) = pack2(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                        } else {
                            if (j < V) o[off] = from_f32<bf16_t>(acc[nt][2 * hr]);
                            if (j + 1 < V) o[off + 1] = from_f32<bf16_t>(acc[nt][2 * hr + 1]);
                        }
                    }
                }
            }
        }
    }
}
