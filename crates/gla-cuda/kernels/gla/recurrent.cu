// gla/recurrent.cu: fused recurrent GLA, forward and backward (decode, and T <= 64 as fla does).
//
// Per sequence n, head h (state S in R^{K x V}, f32):
//     S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T;   o_t = scale * S_t^T q_t
// One block owns one (n, h) and a BV = 32 column tile of V: thread (lane, warp w) holds column
// j = v0 + lane and rows i = w, w + NW, w + 2 NW, ... of S in registers (K <= NW * MAXKPT = 256).
// Inputs q, k, v, g: T (f32 or bf16); h0, ht, and every gradient: f32; o: T.
//
// Backward (gradient of L = <do, o> + <dht, S_T>), same tiling:
//   pass 1, forward in time: dq_t = scale * S_t do_t (partial over this V tile); S_{t-1} is
//           checkpointed every CK steps (f32, per-thread slots, coalesced)
//   pass 2, reverse, one CK-segment at a time: recompute the segment's states from its
//           checkpoint into a per-block scratch, then walk it backwards:
//           dS += scale q_t do_t^T; dk_t = dS v_t (partial); dv_t = dS^T k_t (complete);
//           dg_t = exp(g_t) rowsum(S_{t-1} * dS) (partial); dS = diag(exp(g_t)) dS; dh0 = final dS
// dg is taken in this direct form: the closed form sum_{s>=t}(q dq - k dk) cancels badly in f32
// on strongly decaying gates. Partials go to [NV, ...] f32 buffers (no
// atomics: repeated runs are bitwise equal) and are summed by gla_recurrent_bwd_finalize.
// Decode (gla_recurrent_decode_*): the forward for one token per sequence, each sequence's state
// [H, K, V] in its own buffer, found through a table of N device addresses, updated in place.
// Launch: grid (NV, N*H), block (32, NW); finalize: grid (N*H), block 32.

#define NW 8
#define MAXKPT 32
#define BV 32
#define CK 32  // backward: states are checkpointed every CK steps and recomputed per segment

template <typename T>
__device__ void recurrent_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ g, const float* h0, T* __restrict__ o,
                              float* ht, const idx_t* __restrict__ bounds,
                              int H, int K, int V, int gw, float scale) {
    // h0 and ht point at this block's (n, h) state [K, V] (or are null) and may be the same
    // buffer (decode updates each sequence's state in place): each thread reads its own
    // elements before the time loop and writes the same ones after it, so no __restrict__
    __shared__ float s_q[NW * MAXKPT], s_k[NW * MAXKPT], s_d[NW * MAXKPT], s_v[BV], s_o[NW][BV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H;
    const int j = blockIdx.x * BV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    float s[MAXKPT];
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[(idx_t)i * V + j] : 0.f;
    }
    for (idx_t r = bos; r < eos; ++r) {
        const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
        for (int i = tid; i < K; i += NW * 32) {
            s_q[i] = to_f32(q[o_k + i]) * scale;
            s_k[i] = to_f32(k[o_k + i]);
            s_d[i] = expf(load_gate(g, r, H, K, gw, i, h));
        }
        if (w == 0) s_v[lane] = m_j ? to_f32(v[o_v + j]) : 0.f;
        __syncthreads();
        const float b_v = s_v[lane];
        float acc = 0.f;
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) {
            int i = w + m * NW;
            if (i < K) {
                s[m] = s_d[i] * s[m] + s_k[i] * b_v;
                acc += s[m] * s_q[i];
            }
        }
        s_o[w][lane] = acc;
        __syncthreads();
        if (w == 0 && m_j) {
            float sum = 0.f;
            #pragma unroll
            for (int x = 0; x < NW; ++x) sum += s_o[x][lane];
            o[o_v + j] = from_f32<T>(sum);
        }
    }
    if (ht != nullptr && m_j) {
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) {
            int i = w + m * NW;
            if (i < K) ht[(idx_t)i * V + j] = s[m];
        }
    }
}

template <typename T>
__device__ void recurrent_bwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ g, const float* __restrict__ h0, const T* __restrict__ d_o,
                              const float* __restrict__ dht, float* __restrict__ dq_part, float* __restrict__ dk_part,
                              float* __restrict__ dv, float* __restrict__ dg_part, float* __restrict__ dh0,
                              float* __restrict__ ckpt, float* __restrict__ scratch,
                              const idx_t* __restrict__ bounds, int N, int H, int K, int V, int gw, float scale,
                              idx_t rows) {
    __shared__ float s_q[NW * MAXKPT], s_k[NW * MAXKPT], s_d[NW * MAXKPT], s_v[BV], s_do[BV], s_o[NW][BV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H, i_v = blockIdx.x, NV = gridDim.x;
    const int kpt = (K + NW - 1) / NW;
    const int j = i_v * BV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    const idx_t part = (idx_t)i_v * rows * H * K;  // offset of this tile's [rows, H, K] partial
    // per-thread slots: checkpoint c of this block at ((c*H + h)*NV + i_v)*kpt*256, the segment
    // scratch at block*CK*kpt*256; element m of thread tid at + m*256 + tid (coalesced)
    const idx_t seg0 = bos / CK + n;
    const idx_t blk = (idx_t)blockIdx.y * NV + i_v;
    float* p_scr = scratch + blk * CK * kpt * (NW * 32) + tid;
    float s[MAXKPT];
    // pass 1: states forward in time, dq partials, a checkpoint of S_{t-1} every CK steps
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[o_state + (idx_t)i * V + j] : 0.f;
    }
    for (idx_t r = bos; r < eos; ++r) {
        const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
        if ((r - bos) % CK == 0) {
            float* p_ck = ckpt + (((seg0 + (r - bos) / CK) * H + h) * NV + i_v) * kpt * (NW * 32) + tid;
            #pragma unroll
            for (int m = 0; m < MAXKPT; ++m)
                if (m < kpt) p_ck[m * (NW * 32)] = s[m];
        }
        for (int i = tid; i < K; i += NW * 32) {
            s_k[i] = to_f32(k[o_k + i]);
            s_d[i] = expf(load_gate(g, r, H, K, gw, i, h));
        }
        if (w == 0) {
            s_v[lane] = m_j ? to_f32(v[o_v + j]) : 0.f;
            s_do[lane] = m_j ? to_f32(d_o[o_v + j]) : 0.f;
        }
        __syncthreads();
        const float b_v = s_v[lane], b_do = s_do[lane];
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) {
            int i = w + m * NW;
            if (i < K) {
                s[m] = s_d[i] * s[m] + s_k[i] * b_v;
                float x = warp_sum(s[m] * b_do);
                if (lane == 0) dq_part[part + o_k + i] = x * scale;
            }
        }
        __syncthreads();
    }
    // pass 2: state gradient backward in time, segment by segment; each segment's states are
    // recomputed from its checkpoint into the scratch, then walked in reverse
    float ds[MAXKPT];
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        ds[m] = (dht != nullptr && i < K && m_j) ? dht[o_state + (idx_t)i * V + j] : 0.f;
    }
    const idx_t nseg = (eos - bos + CK - 1) / CK;
    for (idx_t c = nseg - 1; c >= 0; --c) {
        const idx_t c0 = bos + c * CK, c1 = min(eos, c0 + CK);
        const float* p_ck = ckpt + (((seg0 + c) * H + h) * NV + i_v) * kpt * (NW * 32) + tid;
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) s[m] = m < kpt ? p_ck[m * (NW * 32)] : 0.f;
        for (idx_t r = c0; r < c1; ++r) {
            const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
            float* p_s = p_scr + (r - c0) * kpt * (NW * 32);
            #pragma unroll
            for (int m = 0; m < MAXKPT; ++m)
                if (m < kpt) p_s[m * (NW * 32)] = s[m];  // S_{r-1}
            __syncthreads();
            for (int i = tid; i < K; i += NW * 32) {
                s_k[i] = to_f32(k[o_k + i]);
                s_d[i] = expf(load_gate(g, r, H, K, gw, i, h));
            }
            if (w == 0) s_v[lane] = m_j ? to_f32(v[o_v + j]) : 0.f;
            __syncthreads();
            const float b_v = s_v[lane];
            #pragma unroll
            for (int m = 0; m < MAXKPT; ++m) {
                int i = w + m * NW;
                if (i < K) s[m] = s_d[i] * s[m] + s_k[i] * b_v;
            }
        }
        for (idx_t r = c1 - 1; r >= c0; --r) {
            const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
            const float* p_s = p_scr + (r - c0) * kpt * (NW * 32);
            __syncthreads();
            for (int i = tid; i < K; i += NW * 32) {
                s_q[i] = to_f32(q[o_k + i]) * scale;
                s_k[i] = to_f32(k[o_k + i]);
                s_d[i] = expf(load_gate(g, r, H, K, gw, i, h));
            }
            if (w == 0) {
                s_v[lane] = m_j ? to_f32(v[o_v + j]) : 0.f;
                s_do[lane] = m_j ? to_f32(d_o[o_v + j]) : 0.f;
            }
            __syncthreads();
            const float b_v = s_v[lane], b_do = s_do[lane];
            float acc = 0.f;
            #pragma unroll
            for (int m = 0; m < MAXKPT; ++m) {
                int i = w + m * NW;
                if (i < K) {
                    ds[m] += s_q[i] * b_do;
                    float x = warp_sum(ds[m] * b_v);
                    // direct dg: exp(g_t) rowsum(S_{t-1} * dS_t), partial over this V tile
                    float y = warp_sum(p_s[m * (NW * 32)] * ds[m]);
                    if (lane == 0) {
                        dk_part[part + o_k + i] = x;
                        dg_part[part + o_k + i] = s_d[i] * y;
                    }
                    acc += ds[m] * s_k[i];
                    ds[m] *= s_d[i];
                }
            }
            s_o[w][lane] = acc;
            __syncthreads();
            if (w == 0 && m_j) {
                float sum = 0.f;
                #pragma unroll
                for (int x = 0; x < NW; ++x) sum += s_o[x][lane];
                dv[o_v + j] = sum;
            }
        }
    }
    if (dh0 != nullptr && m_j) {
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) {
            int i = w + m * NW;
            if (i < K) dh0[o_state + (idx_t)i * V + j] = ds[m];
        }
    }
}

// sums the NV partials of dq, dk, dg (a per-head gate also sums dg over K).
// One warp per (n, h); lane owns key channels i = lane + 32 m.
template <typename T>
__device__ void recurrent_bwd_finalize(const float* __restrict__ dq_part, const float* __restrict__ dk_part,
                                       const float* __restrict__ dg_part, float* __restrict__ dq,
                                       float* __restrict__ dk, float* __restrict__ dg,
                                       const idx_t* __restrict__ bounds, int H, int K, int gw, int NV,
                                       idx_t rows) {
    const int lane = threadIdx.x, i_nh = blockIdx.x, n = i_nh / H, h = i_nh % H;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t stride = rows * H * K;
    for (idx_t r = bos; r < eos; ++r) {
        const idx_t o_k = (r * H + h) * (idx_t)K;
        float hsum = 0.f;
        for (int i = lane; i < K; i += 32) {
            float b_dq = 0.f, b_dk = 0.f, b_dg = 0.f;
            for (int p = 0; p < NV; ++p) {
                b_dq += dq_part[p * stride + o_k + i];
                b_dk += dk_part[p * stride + o_k + i];
                b_dg += dg_part[p * stride + o_k + i];
            }
            dq[o_k + i] = b_dq;
            dk[o_k + i] = b_dk;
            if (gw > 1) dg[o_k + i] = b_dg;
            hsum += b_dg;
        }
        if (gw == 1) {
            hsum = warp_sum(hsum);
            if (lane == 0) dg[r * H + h] = hsum;
        }
    }
}

#define ENTRY(NAME, T)                                                                                   \
extern "C" __global__ void __launch_bounds__(NW * 32) gla_recurrent_fwd_##NAME(                          \
    const T* q, const T* k, const T* v, const T* g, const float* h0, T* o, float* ht,                    \
    const idx_t* bounds, int H, int K, int V, int gw, float scale) {                                     \
    const idx_t o_state = (idx_t)blockIdx.y * K * V;                                                     \
    recurrent_fwd<T>(q, k, v, g, h0 ? h0 + o_state : nullptr, o, ht ? ht + o_state : nullptr, bounds,    \
                     H, K, V, gw, scale);                                                                \
}                                                                                                        \
/* decode: sequence n's state lives at states[n] ([H, K, V] f32, its own buffer), read and  */           \
/* updated in place; bounds as for the forward (one row per sequence)                       */           \
extern "C" __global__ void __launch_bounds__(NW * 32) gla_recurrent_decode_##NAME(                       \
    const T* q, const T* k, const T* v, const T* g, const unsigned long long* states, T* o,              \
    const idx_t* bounds, int H, int K, int V, int gw, float scale) {                                     \
    const int n = blockIdx.y / H, h = blockIdx.y % H;                                                    \
    float* st = reinterpret_cast<float*>(states[n]) + (idx_t)h * K * V;                                  \
    recurrent_fwd<T>(q, k, v, g, st, o, st, bounds, H, K, V, gw, scale);                                 \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(NW * 32) gla_recurrent_bwd_##NAME(                          \
    const T* q, const T* k, const T* v, const T* g, const float* h0, const T* d_o, const float* dht,      \
    float* dq_part, float* dk_part, float* dv, float* dg_part, float* dh0, float* ckpt, float* scratch,   \
    const idx_t* bounds, int N, int H, int K, int V, int gw, float scale, idx_t rows) {                  \
    recurrent_bwd<T>(q, k, v, g, h0, d_o, dht, dq_part, dk_part, dv, dg_part, dh0, ckpt, scratch,        \
                     bounds, N, H, K, V, gw, scale, rows);                                               \
}                                                                                                        \
extern "C" __global__ void gla_recurrent_bwd_finalize_##NAME(                                            \
    const float* dq_part, const float* dk_part, const float* dg_part, float* dq, float* dk, float* dg,   \
    const idx_t* bounds, int H, int K, int gw, int NV, idx_t rows) {                                     \
    recurrent_bwd_finalize<T>(dq_part, dk_part, dg_part, dq, dk, dg, bounds, H, K, gw, NV, rows);        \
}

ENTRY(f32, float)
ENTRY(bf16, bf16_t)
