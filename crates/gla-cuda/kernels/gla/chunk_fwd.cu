// gla/chunk_fwd.cu: the chunk-parallel launches of the bf16 chunked forward (the backward reruns
// the prep, and the output pass for A): gate prep, output pass, and for K > 128 the A pass and
// the per-V-tile output pass. The state pass between prep and output is gla/chunk_h.cu.
// Derivation: docs/kernels.md.
//
// Contract: q, k, g [rows, H, K], v, o [rows, H, V] bf16 (rows = B*T or the packed varlen total);
// gate of width gw in {K, 1, 0}, g <= 0 (log decay); scale.
//     o_t = scale * S_t^T q_t,   S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
// Per chunk (G = chunk-local cumsum of g in f32, S_c = the state entering the chunk, from hs):
//     o = (q scale exp(G)) S_c + A v,   A_ts = scale sum_i q_ti k_si exp(G_ti - G_si) (s <= t)
// K <= 256 (Kp = K rounded up to 16), any V. Every block owns one (chunk, head) (prep: and 128
// key channels; ow: and 64 value columns); all outputs are written (=), never accumulated;
// accumulators f32, every matmul on the tensor cores. Launch shapes and shared-memory sizes:
// src/dispatch.rs. Workspaces (host-allocated): kd like k; dl [chunks, H, K] f32; hs [chunks, H,
// K, V] bf16; for K > 128 also qe like q and A [chunks, H, 64, 64] bf16.
//
// gla_chunk_prep8_bf16 (per-key gate, K % 8 == 0; 64 threads, 16-byte pieces) or
//   gla_chunk_prep_bf16 (any gate; 128 threads, one per channel): grid (chunks, H, ceil(K/128));
//   kd = k exp(G_last - G), dl = exp(G_last); qe (K > 128 and the backward) = q scale exp(G).
// gla_chunk_o_bf16: grid (chunks, H), 256 threads. A (64x64 causal, scaled) and o = scale (q
//   exp(G)) S_c + A v. A's off-diagonal 16x16 blocks (a > b) are (q exp(G - G[16a])) (k
//   exp(G[16a] - G))^T on the tensor cores (both exponents <= 0); the diagonal blocks pairwise
//   in f32. With a_out, it writes A instead of o (backward).
// K > 128: gla_chunk_a_bf16 (grid (chunks, H)) sums A over the K tiles in registers and writes
//   it; gla_chunk_ow_bf16 (grid (chunks * ceil(V/64), H)) forms o = qe S_c + A v.

// launch 0: per chunk and head, fully parallel: kd = k exp(G_last - G) (bf16, rows < L, shaped like
// k), dl = exp(G_last) (f32 [chunks, H, K]) and, when qe is not null (backward), qe = q scale
// exp(G) (bf16, shaped like q). One thread per key channel of a 128-channel block (grid z over
// the blocks when K > 128).

extern "C" __global__ void __launch_bounds__(128) gla_chunk_prep_bf16(
    const bf16_t* __restrict__ k, const bf16_t* __restrict__ g, const bf16_t* __restrict__ q, bf16_t* __restrict__ kd,
    float* __restrict__ dl, bf16_t* __restrict__ qe, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
    const int* __restrict__ chunk_seq, int H, int K, int gw, float scale) {
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y, ch = 128 * blockIdx.z + threadIdx.x;  // grid z: 128-channel blocks (K > 128)
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    if (ch >= K) return;
    float gv[64];
    float tot = 0.f;
    #pragma unroll
    for (int t = 0; t < 64; ++t) {
        float x = 0.f;
        if (t < L) {
            if (gw == K) x = to_f32(g[((r0 + t) * H + h) * (idx_t)K + ch]);
            else if (gw == 1) x = to_f32(g[(r0 + t) * H + h]);
        }
        gv[t] = x;
        tot += x;
    }
    float run = 0.f;
    #pragma unroll
    for (int t = 0; t < 64; ++t) {
        run += gv[t];
        if (t < L) {
            const idx_t off = ((r0 + t) * H + h) * (idx_t)K + ch;
            kd[off] = f2bf(to_f32(k[off]) * ex2f((tot - run) * L2E));
            if (qe != nullptr) qe[off] = f2bf(to_f32(q[off]) * scale * ex2f(run * L2E));
        }
    }
    dl[(cg * H + h) * (idx_t)K + ch] = ex2f(tot * L2E);
}

// the same for a per-key gate with K % 8 == 0 (per 128-channel block, K <= 256), in 16-byte
// pieces: 64 threads, thread
// (row quarter q4, channel group grp) owns rows 16 q4 .. 16 q4 + 15 and channels 8 grp .. 8 grp + 7
__device__ __forceinline__ float bf8(const uint4& u, int e) {
    const unsigned w = e < 2 ? u.x : (e < 4 ? u.y : (e < 6 ? u.z : u.w));
    return (e & 1) ? bf_hi(w) : bf_lo(w);
}
extern "C" __global__ void __launch_bounds__(64) gla_chunk_prep8_bf16(
    const bf16_t* __restrict__ k, const bf16_t* __restrict__ g, const bf16_t* __restrict__ q, bf16_t* __restrict__ kd,
    float* __restrict__ dl, bf16_t* __restrict__ qe, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
    const int* __restrict__ chunk_seq, int H, int K, float scale) {
    __shared__ float part[4][16][8];
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y, tid = threadIdx.x, q4 = tid >> 4, grp = tid & 15, c0 = 128 * blockIdx.z + 8 * grp;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool act = c0 < K;
    uint4 graw[16];
    float ps[8];
    #pragma unroll
    for (int e = 0; e < 8; ++e) ps[e] = 0.f;
    #pragma unroll
    for (int u = 0; u < 16; ++u) {
        const int t = 16 * q4 + u;
        graw[u].x = graw[u].y = graw[u].z = graw[u].w = 0u;
        if (act && t < L) graw[u] = *(const uint4*)(g + ((r0 + t) * H + h) * (idx_t)K + c0);
        #pragma unroll
        for (int e = 0; e < 8; ++e) ps[e] += bf8(graw[u], e);
    }
    #pragma unroll
    for (int e = 0; e < 8; ++e) part[q4][grp][e] = ps[e];
    __syncthreads();
    float run[8], tot[8];
    #pragma unroll
    for (int e = 0; e < 8; ++e) {
        float o = 0.f, a = 0.f;
        #pragma unroll
        for (int qq = 0; qq < 4; ++qq) {
            const float v = part[qq][grp][e];
            a += v;
            if (qq < q4) o += v;
        }
        run[e] = o;
        tot[e] = a;
    }
    if (!act) return;
    #pragma unroll
    for (int u = 0; u < 16; ++u) {
        const int t = 16 * q4 + u;
        if (t < L) {
            const idx_t off = ((r0 + t) * H + h) * (idx_t)K + c0;
            const uint4 kk = *(const uint4*)(k + off);
            float kv[8], qv[8];
            #pragma unroll
            for (int e = 0; e < 8; ++e) {
                run[e] += bf8(graw[u], e);
                kv[e] = bf8(kk, e) * ex2f((tot[e] - run[e]) * L2E);
            }
            uint4 o;
            o.x = pack2(kv[0], kv[1]);
            o.y = pack2(kv[2], kv[3]);
            o.z = pack2(kv[4], kv[5]);
            o.w = pack2(kv[6], kv[7]);
            *(uint4*)(kd + off) = o;
            if (qe != nullptr) {
                const uint4 qq = *(const uint4*)(q + off);
                #pragma unroll
                for (int e = 0; e < 8; ++e) qv[e] = bf8(qq, e) * scale * ex2f(run[e] * L2E);
                o.x = pack2(qv[0], qv[1]);
                o.y = pack2(qv[2], qv[3]);
                o.z = pack2(qv[4], qv[5]);
                o.w = pack2(qv[6], qv[7]);
                *(uint4*)(qe + off) = o;
            }
        }
    }
    if (q4 == 0) {
        float4 a, b;
        a.x = ex2f(tot[0] * L2E); a.y = ex2f(tot[1] * L2E); a.z = ex2f(tot[2] * L2E); a.w = ex2f(tot[3] * L2E);
        b.x = ex2f(tot[4] * L2E); b.y = ex2f(tot[5] * L2E); b.z = ex2f(tot[6] * L2E); b.w = ex2f(tot[7] * L2E);
        float* dp = dl + (cg * H + h) * (idx_t)K + c0;
        *(float4*)dp = a;
        *(float4*)(dp + 4) = b;
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
//   RF [7][Kp]   f32    exp(G[16a]) (a = 0..3), exp(G[32]-G[16]), exp(G[48]-G[16]), exp(G[48]-G[32])


// one step of a reduce-scatter of slots part[0 .. 2 S) over lane pairs (l, l ^ X): lanes with
// bit X set keep the upper half, so part[0 .. S) holds the pair's sums of their half
template <int X, int S>
__device__ __forceinline__ void rs_step(float (&part)[32], int lane) {
    const bool up = (lane & X) != 0;
    #pragma unroll
    for (int e = 0; e < S; ++e) {
        const float lo = part[e], hi = part[e + S];
        const float send = up ? lo : hi, keep = up ? hi : lo;
        part[e] = keep + __shfl_xor_sync(0xffffffffu, send, X);
    }
}
// The reduce-scatter of 32 slots over each group of G lanes (G = 8, 16, 32; aligned groups):
// afterwards lane l holds in part[0 .. 32 / G) the group's totals of slots (32 / G) (l % G) + e.
// With G = 32 the order of the adds is the whole warp's tree; a smaller group adds in the same
// order over its lanes, so lanes outside it that held zeros change nothing.
template <int G>
__device__ __forceinline__ void rs_group(float (&part)[32], int lane) {
    if constexpr (G == 32) rs_step<16, 16>(part, lane);
    if constexpr (G >= 16) rs_step<8, G == 32 ? 8 : 16>(part, lane);
    rs_step<4, G == 8 ? 16 : G == 16 ? 8 : 4>(part, lane);
    rs_step<2, G == 8 ? 8 : G == 16 ? 4 : 2>(part, lane);
    rs_step<1, G == 8 ? 4 : G == 16 ? 2 : 1>(part, lane);
}


// The diagonal 16x16 blocks of A in f32, each split at its row 8: the two 8x8 diagonal blocks
// pairwise (task (a, tp < 4): rows tp and 7 - tp of both halves, 8 columns each, one exp shared
// by the two rows of a pair where it can be), and the lower-left 8x8 block factored through its
// corner m = 16a + 7 as (q exp(G - G_m)) . (k exp(G_m - G)) (tasks (a, 4 + hq): rows 8 + 4hq ..
// 11 + 4hq; every exponent <= 0 since s <= m < t): 84 exps per channel and block instead of 108
// for the rows paired over the whole block (the pass is bound by its exps). Task x = 4j + a of
// O_DIAG_TASKS (tasks of one j run the same code, so the groups of one warp do not diverge). A
// task runs on a group of G lanes (o_diag_lanes: 32 for Kp > 64, fewer for narrow heads, so a
// warp runs 32 / G tasks side by side instead of idling lanes), each lane owning 4 channels of a
// K tile (Kp <= 128); the 32 partial sums of slots are reduce-scattered over the group
// (rs_group), leaving lane l the totals (unscaled) of slots (32 / G) (l % G) + e: A[t][s] of
// o_diag_slot.
#define O_DIAG_TASKS 24
__device__ __forceinline__ int o_diag_lanes(int Kp) { return Kp <= 32 ? 8 : Kp <= 64 ? 16 : 32; }
__device__ __forceinline__ void o_diag_slot(int x, int slot, int& t, int& s) {
    const int a = x & 3, j = x >> 2;
    if (j < 4) {
        const int base = 16 * a + 8 * (slot >> 4), r = slot & 15;
        t = base + (r < 8 ? j : 7 - j);
        s = base + (r & 7);
    } else {
        t = 16 * a + 8 + 4 * (j - 4) + (slot >> 3);
        s = 16 * a + (slot & 7);
    }
}
template <int G>
__device__ __forceinline__ void o_diag_task(const bf16_t* R0, const bf16_t* R1, const float* R2, int LDK, int Kp, int x, int lane,
                                            float (&part)[32]) {
    const int a = x & 3, task = x >> 2;
    #pragma unroll
    for (int e = 0; e < 32; ++e) part[e] = 0.f;
    const int c = 4 * (lane & (G - 1));
    if (c < Kp && task < 4) {
        const int tp = task;
        #pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int base = 16 * a + 8 * hf, ta = base + tp, tb = base + 7 - tp;
            const uint2 qa = *(const uint2*)(R0 + ta * LDK + c), qb = *(const uint2*)(R0 + tb * LDK + c);
            const float4 ga = *(const float4*)(R2 + ta * Kp + c), gb = *(const float4*)(R2 + tb * Kp + c);
            const float qa0 = bf_lo(qa.x), qa1 = bf_hi(qa.x), qa2 = bf_lo(qa.y), qa3 = bf_hi(qa.y);
            const float qb0 = bf_lo(qb.x), qb1 = bf_hi(qb.x), qb2 = bf_lo(qb.y), qb3 = bf_hi(qb.y);
            // exp(G_tb - G_s) = exp(G_ta - G_s) exp(G_tb - G_ta) for s <= ta (both factors <= 1)
            const float qf0 = qb0 * ex2f(gb.x - ga.x), qf1 = qb1 * ex2f(gb.y - ga.y);
            const float qf2 = qb2 * ex2f(gb.z - ga.z), qf3 = qb3 * ex2f(gb.w - ga.w);
            #pragma unroll
            for (int s = 0; s < 8; ++s) {
                const int rs = base + s;
                const uint2 kk = *(const uint2*)(R1 + rs * OV + c);
                const float4 gs = *(const float4*)(R2 + rs * Kp + c);
                const float k0 = bf_lo(kk.x), k1 = bf_hi(kk.x), k2 = bf_lo(kk.y), k3 = bf_hi(kk.y);
                if (s <= tp) {
                    const float e0 = k0 * ex2f(ga.x - gs.x), e1 = k1 * ex2f(ga.y - gs.y);
                    const float e2 = k2 * ex2f(ga.z - gs.z), e3 = k3 * ex2f(ga.w - gs.w);
                    part[16 * hf + s] += qa0 * e0 + qa1 * e1 + qa2 * e2 + qa3 * e3;
                    part[16 * hf + 8 + s] += qf0 * e0 + qf1 * e1 + qf2 * e2 + qf3 * e3;
                } else if (s <= 7 - tp) {
                    part[16 * hf + 8 + s] += qb0 * k0 * ex2f(gb.x - gs.x) + qb1 * k1 * ex2f(gb.y - gs.y) +
                                             qb2 * k2 * ex2f(gb.z - gs.z) + qb3 * k3 * ex2f(gb.w - gs.w);
                }
            }
        }
    } else if (c < Kp) {
        const int t0 = 16 * a + 8 + 4 * (task - 4), m = 16 * a + 7;
        const float4 gm = *(const float4*)(R2 + m * Kp + c);
        float qf[4][4];
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint2 qq = *(const uint2*)(R0 + (t0 + i) * LDK + c);
            const float4 gt = *(const float4*)(R2 + (t0 + i) * Kp + c);
            qf[i][0] = bf_lo(qq.x) * ex2f(gt.x - gm.x);
            qf[i][1] = bf_hi(qq.x) * ex2f(gt.y - gm.y);
            qf[i][2] = bf_lo(qq.y) * ex2f(gt.z - gm.z);
            qf[i][3] = bf_hi(qq.y) * ex2f(gt.w - gm.w);
        }
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int rs = 16 * a + j;
            const uint2 kk = *(const uint2*)(R1 + rs * OV + c);
            const float4 gs = *(const float4*)(R2 + rs * Kp + c);
            const float k0 = bf_lo(kk.x) * ex2f(gm.x - gs.x), k1 = bf_hi(kk.x) * ex2f(gm.y - gs.y);
            const float k2 = bf_lo(kk.y) * ex2f(gm.z - gs.z), k3 = bf_hi(kk.y) * ex2f(gm.w - gs.w);
            #pragma unroll
            for (int i = 0; i < 4; ++i) part[8 * i + j] += qf[i][0] * k0 + qf[i][1] * k1 + qf[i][2] * k2 + qf[i][3] * k3;
        }
    }
    rs_group<G>(part, lane);
}
// P2 of o_pass_a without accumulation: every task of O_DIAG_TASKS on groups of G lanes, 32 / G
// tasks per warp and pass (24 is a multiple of 32 / G, so every group has a task), the slots
// scaled into RA as bf16.
template <int G>
__device__ __forceinline__ void o_diag_store(const bf16_t* R0, const bf16_t* R1, const float* R2, bf16_t* RA, int LDK, int Kp, float scale,
                                             int w, int lane) {
    constexpr int P = 32 / G;
    for (int x0 = P * w; x0 < O_DIAG_TASKS; x0 += 8 * P) {
        const int x = x0 + lane / G;
        float part[32];
        o_diag_task<G>(R0, R1, R2, LDK, Kp, x, lane, part);
        #pragma unroll
        for (int e = 0; e < P; ++e) {
            int t, s;
            o_diag_slot(x, P * (lane & (G - 1)) + e, t, s);
            RA[t * LDH + s] = f2bf(part[e] * scale);
        }
    }
}
// A's zeros: above the diagonal blocks, and the upper-right 8x8 block of each diagonal block
// (the diagonal tasks write the other three)
__device__ __forceinline__ void o_zero_upper(bf16_t* RA, int tid) {
    for (int x = tid; x < 64 * 64; x += 256) {
        const int t = x >> 6, s = x & 63;
        if ((s >> 4) > (t >> 4) || ((s >> 4) == (t >> 4) && (s & 8) && !(t & 8))) RA[t * LDH + s] = 0;
    }
}

// P1-P4 of the output pass (A) over one K tile: channels c0 .. c0 + Kc - 1 of q, k, g (row
// stride H K), padded to Kp <= 128 columns (the smem layout's width). !ACC (K <= Kp, one tile,
// gla_chunk_o_bf16): A goes to RA as bf16, its blocks above the diagonal zeroed here. ACC
// (gla_chunk_a_bf16, K > 128): the lane's diagonal slots of tasks w + 8i add into dacc[i]
// (unscaled), the off-diagonal block of warp w < 6 into c2 (scaled); the caller stores A.
template <bool ACC>
__device__ __forceinline__ void o_pass_a(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ g,
                                         unsigned char* smem_raw, idx_t r0, int L, int H, int h, int K, int gw, float scale, int Kp,
                                         int c0, int Kc, float (&dacc)[3], float (&c2)[2][4], bool rev = false) {
    const int LDK = Kp + 8;
    bf16_t* R0 = (bf16_t*)smem_raw;
    bf16_t* R1 = R0 + 64 * LDK;
    float* R2 = (float*)(R1 + 64 * OV);
    bf16_t* R3 = (bf16_t*)(R2 + 64 * Kp);
    bf16_t* R4 = R3 + 64 * LDK;
    bf16_t* RA = R4 + 48 * LDK;
    float* RP = (float*)(RA + 64 * LDH);
    float* RF = RP + 256;  // [7][Kp]: exp(G[16a]) a = 0..3; exp(G[32]-G[16]), exp(G[48]-G[16]), exp(G[48]-G[32])
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const bool vk = (K & 7) == 0;

    // P1: q, k (and g raw into R3) through cp.async, all in flight at once. rev (bidir/, per-key
    // gate only): the chunk's rows in reverse order, local row t = global row r0 + L - 1 - t.
    const idx_t rb = rev ? r0 + L - 1 : r0, ld = rev ? -(idx_t)H * K : (idx_t)H * K;
    tile_load(R0, LDK, q + (rb * H + h) * (idx_t)K + c0, ld, L, Kc, Kp, vk, true, tid, 256);
    tile_load(R1, OV, k + (rb * H + h) * (idx_t)K + c0, ld, L, Kc, Kp, vk, true, tid, 256);
    if (gw == K) tile_load(R3, LDK, g + (rb * H + h) * (idx_t)K + c0, ld, L, Kc, Kp, vk, true, tid, 256);
    cp_commit();
    if (!ACC) o_zero_upper(RA, tid);
    cp_wait0();
    __syncthreads();
    // cumsum of g per channel, times log2(e), into R2
    chunk_g_cumsum(R2, RP, g, R3, LDK, L, r0, H, h, K, gw, Kp, tid);
    __syncthreads();
    for (int x = tid; x < 7 * Kp; x += 256) {
        const int f = x / Kp, c = x % Kp;
        float e;
        if (f < 4) e = R2[16 * f * Kp + c];
        else if (f == 4) e = R2[32 * Kp + c] - R2[16 * Kp + c];
        else if (f == 5) e = R2[48 * Kp + c] - R2[16 * Kp + c];
        else e = R2[48 * Kp + c] - R2[32 * Kp + c];
        RF[x] = ex2f(e);
    }
    // P2: the diagonal 16x16 blocks of A in f32 (o_diag_task), 24 tasks over the 8 warps
    if (ACC) {
        // Kp = 128 tiles, 3 tasks per warp, unrolled: dacc stays in registers
        #pragma unroll
        for (int i = 0; i < 3; ++i) {
            float part[32];
            o_diag_task<32>(R0, R1, R2, LDK, Kp, w + 8 * i, lane, part);
            dacc[i] += part[0];
        }
    } else {
        const int G = o_diag_lanes(Kp);
        if (G == 8) o_diag_store<8>(R0, R1, R2, RA, LDK, Kp, scale, w, lane);
        else if (G == 16) o_diag_store<16>(R0, R1, R2, RA, LDK, Kp, scale, w, lane);
        else o_diag_store<32>(R0, R1, R2, RA, LDK, Kp, scale, w, lane);
    }
    __syncthreads();
    // P3: per pair of channels, in place: qg, qe = qg exp(G[16a]), kg (one exp for the next
    // sub-chunk's normaliser, the later ones by the factors in RF: products of exps <= 1)
    {
        const int cp2 = Kp >> 1;
        for (int x = tid; x < 64 * cp2; x += 256) {
            const int t = x / cp2, c = 2 * (x % cp2), a = t >> 4;
            const float2 G = *(const float2*)(R2 + t * Kp + c), Gn = *(const float2*)(R2 + 16 * a * Kp + c);
            const unsigned q2 = *(const unsigned*)(R0 + t * LDK + c), k2 = *(const unsigned*)(R1 + t * OV + c);
            const float qx = bf_lo(q2) * scale * ex2f(G.x - Gn.x), qy = bf_hi(q2) * scale * ex2f(G.y - Gn.y);
            *(unsigned*)(R3 + t * LDK + c) = pack2(qx, qy);
            *(unsigned*)(R0 + t * LDK + c) = pack2(qx * RF[a * Kp + c], qy * RF[a * Kp + c + 1]);
            if (a < 3) {
                const float2 Gb = *(const float2*)(R2 + 16 * (a + 1) * Kp + c);
                const float kx = bf_lo(k2) * ex2f(Gb.x - G.x), ky = bf_hi(k2) * ex2f(Gb.y - G.y);
                *(unsigned*)(R1 + t * OV + c) = pack2(kx, ky);
                if (a == 0) {
                    *(unsigned*)(R4 + t * LDK + c) = pack2(kx * RF[4 * Kp + c], ky * RF[4 * Kp + c + 1]);
                    *(unsigned*)(R4 + (16 + t) * LDK + c) = pack2(kx * RF[5 * Kp + c], ky * RF[5 * Kp + c + 1]);
                } else if (a == 1) {
                    *(unsigned*)(R4 + (16 + t) * LDK + c) = pack2(kx * RF[6 * Kp + c], ky * RF[6 * Kp + c + 1]);
                }
            }
        }
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
        if (!ACC) {
            #pragma unroll
            for (int nt = 0; nt < 2; ++nt) c2[nt][0] = c2[nt][1] = c2[nt][2] = c2[nt][3] = 0.f;
        }
        for (int kt = 0; kt < Kp; kt += 16) {
            unsigned fa4[4], fb4[4];
            ldsm4a(fa4, sfa(R3, LDK, 16 * a, kt, lane));
            ldsm4a(fb4, sfbn(kb, ldb, kt, 0, lane));
            mma16816(c2[0], fa4, fb4[0], fb4[1]);
            mma16816(c2[1], fa4, fb4[2], fb4[3]);
        }
        if (!ACC) {
            #pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                const int row = 16 * a + fg, col = 16 * b + 8 * nt + 2 * ft;
                *(unsigned*)(RA + row * LDH + col) = pack2(c2[nt][0], c2[nt][1]);
                *(unsigned*)(RA + (row + 8) * LDH + col) = pack2(c2[nt][2], c2[nt][3]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_o_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
    const bf16_t* __restrict__ g, const bf16_t* __restrict__ hs, bf16_t* __restrict__ o, bf16_t* __restrict__ a_out,
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
    bf16_t* RS = (bf16_t*)R2;  // S_c, after A is done
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vv = (V & 7) == 0;
    {
        float dacc[3], c2[2][4];
        o_pass_a<false>(q, k, g, smem_raw, r0, L, H, h, K, gw, scale, Kp, 0, K, dacc, c2);
    }
    // backward: A (scaled, causal, bf16) to a_out [chunk, H, 64, 64]; no o when o is null
    if (a_out != nullptr) {
        __syncthreads();
        bf16_t* ap = a_out + (cg * H + h) * (idx_t)4096;
        for (int x = tid; x < 64 * 8; x += 256) {
            const int t = x >> 3, c = (x & 7) * 8;
            *(uint4*)(ap + t * 64 + c) = *(const uint4*)(RA + t * LDH + c);
        }
    }
    if (o == nullptr) return;
    // P5/P6 per 128-wide tile of V: o = qe S + A v
    const int mt = w & 3, nh = w >> 2;
    const bf16_t* hsrc = hs + (cg * H + h) * (idx_t)K * V;
    for (int v0 = 0; v0 < V; v0 += 128) {
        const int Vc = min(128, V - v0);
        __syncthreads();
        tile_load(R1, OV, v + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 128, vv, true, tid, 256);
        // S_c rows i < K (Kp rows), 128 columns; rows >= K and columns >= Vc zero
        if (vv) {
            for (int x = tid; x < Kp * 16; x += 256) {
                const int i = x >> 4, c = (x & 15) * 8;
                const bool ok = i < K && c < Vc;
                cp16(RS + i * OV + c, ok ? hsrc + (idx_t)i * V + v0 + c : hsrc, ok);
            }
        } else {
            for (int x = tid; x < Kp * 128; x += 256) {
                const int i = x >> 7, c = x & 127;
                RS[i * OV + c] = (i < K && c < Vc) ? hsrc[(idx_t)i * V + v0 + c] : (bf16_t)0;
            }
        }
        cp_commit();
        cp_wait0();
        __syncthreads();
        float acc[8][4];
        #pragma unroll
        for (int nt = 0; nt < 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
        if (64 * nh < Vc) {
            for (int kt = 0; kt < Kp; kt += 16) {
                unsigned a4[4];
                ldsm4a(a4, sfa(R0, LDK, 16 * mt, kt, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(RS, OV, kt, 64 * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            for (int kt = 0; kt <= mt; ++kt) {
                unsigned a4[4];
                ldsm4a(a4, sfa(RA, LDH, 16 * mt, 16 * kt, lane));
                #pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(R1, OV, 16 * kt, 64 * nh + 16 * np, lane));
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
                            if (j < V) o[off] = f2bf(acc[nt][2 * hr]);
                            if (j + 1 < V) o[off + 1] = f2bf(acc[nt][2 * hr + 1]);
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// K > 128 (up to 256): A is linear in the K-sum, so gla_chunk_a_bf16 runs P1-P4 of the output
// pass over K tiles of Kp <= 128 columns (host: the tiles split Kp evenly), accumulating A in
// registers, and writes A alone; gla_chunk_ow_bf16 then forms o = qe S_c + A v from qe (the
// prep's q scale exp(G)), the states and A, per 64-wide V tile.

// grid (chunks, H), 256 threads, dynamic smem chunk_o_smem_bytes(Kp) (the tile width's layout)
extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_a_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ g, bf16_t* __restrict__ a_out,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int gw, float scale, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int LDK = Kp + 8;
    bf16_t* RA = (bf16_t*)smem_raw + 64 * LDK + 64 * OV + 2 * 64 * Kp + 64 * LDK + 48 * LDK;  // as in o_pass_a
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    float dacc[3] = {0.f, 0.f, 0.f};
    float c2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    for (int c0 = 0; c0 < K; c0 += Kp) {
        // the previous tile's P4 reads R1, R3, R4 until here
        __syncthreads();
        o_pass_a<true>(q, k, g, smem_raw, r0, L, H, h, K, gw, scale, Kp, c0, min(Kp, K - c0), dacc, c2);
    }
    // A into RA (bf16, scaled): zero above the diagonal blocks, the diagonal blocks from the P2
    // slots, the off-diagonal blocks from the P4 accumulators
    o_zero_upper(RA, tid);
    #pragma unroll
    for (int i = 0; i < 3; ++i) {
        int t, s;
        o_diag_slot(w + 8 * i, lane, t, s);
        RA[t * LDH + s] = f2bf(dacc[i] * scale);
    }
    if (w < 6) {
        const int a = w < 1 ? 1 : (w < 3 ? 2 : 3), b = w - (a * (a - 1)) / 2;
        #pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int row = 16 * a + fg, col = 16 * b + 8 * nt + 2 * ft;
            *(unsigned*)(RA + row * LDH + col) = pack2(c2[nt][0], c2[nt][1]);
            *(unsigned*)(RA + (row + 8) * LDH + col) = pack2(c2[nt][2], c2[nt][3]);
        }
    }
    __syncthreads();
    bf16_t* ap = a_out + (cg * H + h) * (idx_t)4096;
    for (int x = tid; x < 64 * 8; x += 256) {
        const int t = x >> 3, c = (x & 7) * 8;
        *(uint4*)(ap + t * 64 + c) = *(const uint4*)(RA + t * LDH + c);
    }
}

// o = qe S_c + A v for K up to 256: grid (chunks * ceil(V/64), H) (x = chunk * V tiles + tile),
// 256 threads, dynamic smem chunk_ow_smem_bytes(Kp) = (64 (Kp + 8) + Kp 72 + 2 * 64 * 72) * 2:
// qe [64][Kp+8], S_c [Kp][72] (rows >= K zero), A [64][72], v [64][72]. Warp (mt, nq) owns rows
// 16 mt .. 16 mt + 15 and columns 32 nq .. 32 nq + 31 of the tile.
extern "C" __global__ void __launch_bounds__(256, 2) gla_chunk_ow_bf16(
    const bf16_t* __restrict__ qe, const bf16_t* __restrict__ v, const bf16_t* __restrict__ A, const bf16_t* __restrict__ hs,
    bf16_t* __restrict__ o, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, int V, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_ow[];
    const int LDQ = Kp + 8;
    bf16_t* SQ = (bf16_t*)smem_ow;
    bf16_t* SS = SQ + 64 * LDQ;
    bf16_t* SA = SS + Kp * LDH;
    bf16_t* SV = SA + 64 * LDH;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const int nvt = (V + 63) >> 6;
    const idx_t cg = blockIdx.x / nvt;
    const int v0 = 64 * (int)(blockIdx.x % nvt), Vc = min(64, V - v0);
    const int h = blockIdx.y;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const bool vk = (K & 7) == 0, vv = (V & 7) == 0;

    tile_load(SQ, LDQ, qe + (r0 * H + h) * (idx_t)K, (idx_t)H * K, L, K, Kp, vk, true, tid, 256);
    tile_load(SV, LDH, v + (r0 * H + h) * (idx_t)V + v0, (idx_t)H * V, L, Vc, 64, vv, true, tid, 256);
    // S_c rows i < K, columns v0 .. v0 + 63, and A
    state_tile_load<64>(SS, hs + (cg * H + h) * (idx_t)K * V + v0, K, V, Vc, Kp, vv, tid);
    a_tile_load(SA, A + (cg * H + h) * (idx_t)4096, tid);
    cp_commit();
    cp_wait0();
    __syncthreads();
    const int mt = w & 3, nq = w >> 2;
    if (32 * nq >= Vc) return;  // no barrier below
    float acc[4][4];
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
    for (int kt = 0; kt < Kp; kt += 16) {
        unsigned a4[4];
        ldsm4a(a4, sfa(SQ, LDQ, 16 * mt, kt, lane));
        #pragma unroll
        for (int np = 0; np < 2; ++np) {
            unsigned b4[4];
            ldsm4ta(b4, sfbt(SS, LDH, kt, 32 * nq + 16 * np, lane));
            mma16816(acc[2 * np], a4, b4[0], b4[1]);
            mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
        }
    }
    for (int kt = 0; kt <= mt; ++kt) {
        unsigned a4[4];
        ldsm4a(a4, sfa(SA, LDH, 16 * mt, 16 * kt, lane));
        #pragma unroll
        for (int np = 0; np < 2; ++np) {
            unsigned b4[4];
            ldsm4ta(b4, sfbt(SV, LDH, 16 * kt, 32 * nq + 16 * np, lane));
            mma16816(acc[2 * np], a4, b4[0], b4[1]);
            mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
        }
    }
    #pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        #pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int t = 16 * mt + fg + 8 * hr, j = v0 + 32 * nq + 8 * nt + 2 * ft;
            if (t < L) {
                const idx_t off = ((r0 + t) * H + h) * (idx_t)V + j;
                if (j + 1 < V && (V & 1) == 0) {
                    *(unsigned*)(o + off) = pack2(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                } else {
                    if (j < V) o[off] = f2bf(acc[nt][2 * hr]);
                    if (j + 1 < V) o[off + 1] = f2bf(acc[nt][2 * hr + 1]);
                }
            }
        }
    }
}
