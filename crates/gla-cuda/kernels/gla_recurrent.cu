// gla_recurrent.cu: fused recurrent GLA, forward and backward (decode, and T <= 64 as fla does).
//
// Per sequence n, head h (state S in R^{K x V}, f32):
//     S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T;   o_t = scale * S_t^T q_t
// One block owns one (n, h) and a BV = 32 column tile of V: thread (lane, warp w) holds column
// j = v0 + lane and rows i = w, w + NW, w + 2 NW, ... of S in registers (K <= NW * MAXKPT = 256).
// Inputs q, k, v, g: T (f32 or bf16); h0, ht, and every gradient: f32; o: T.
//
// Backward (gradient of L = <do, o> + <dht, S_T>), same tiling:
//   pass 1, forward in time: dq_t = scale * S_t do_t      (partial over this V tile)
//                            gterm = rowsum(S_T * dht)   (partial, the dg term of the final state)
//   pass 2, reverse: dS += scale q_t do_t^T; dk_t = dS v_t (partial); dv_t = dS^T k_t (complete);
//                    dS = diag(exp(g_t)) dS;  dh0 = dS after t = 0
// Partials are written to [NV, ...] f32 buffers (no atomics: repeated runs are bitwise equal) and
// summed by gla_recurrent_bwd_finalize, which also forms dg by the GLA paper's reverse cumsum:
//     dg_t = sum_{s >= t} (q_s * dq_s - k_s * dk_s) + rowsum(S_T * dht)
// (summed over K for a per-head gate).
// Launch: grid (NV, N*H), block (32, NW); finalize: grid (N*H), block 32.

#define NW 8
#define MAXKPT 32
#define BV 32

template <typename T>
__device__ void recurrent_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ g, const float* __restrict__ h0, T* __restrict__ o,
                              float* __restrict__ ht, const idx_t* __restrict__ bounds,
                              int H, int K, int V, int gw, float scale) {
    __shared__ float s_q[NW * MAXKPT], s_k[NW * MAXKPT], s_d[NW * MAXKPT], s_v[BV], s_o[NW][BV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H;
    const int j = blockIdx.x * BV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    float s[MAXKPT];
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[o_state + (idx_t)i * V + j] : 0.f;
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
            if (i < K) ht[o_state + (idx_t)i * V + j] = s[m];
        }
    }
}

template <typename T>
__device__ void recurrent_bwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ g, const float* __restrict__ h0, const T* __restrict__ d_o,
                              const float* __restrict__ dht, float* __restrict__ dq_part, float* __restrict__ dk_part,
                              float* __restrict__ dv, float* __restrict__ gterm_part, float* __restrict__ dh0,
                              const idx_t* __restrict__ bounds, int N, int H, int K, int V, int gw, float scale,
                              idx_t rows) {
    __shared__ float s_q[NW * MAXKPT], s_k[NW * MAXKPT], s_d[NW * MAXKPT], s_v[BV], s_do[BV], s_o[NW][BV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int i_nh = blockIdx.y, n = i_nh / H, h = i_nh % H, i_v = blockIdx.x;
    const int j = i_v * BV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    const idx_t part = (idx_t)i_v * rows * H * K;  // offset of this tile's [rows, H, K] partial
    float s[MAXKPT];
    // pass 1: states forward in time, dq partials
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[o_state + (idx_t)i * V + j] : 0.f;
    }
    for (idx_t r = bos; r < eos; ++r) {
        const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
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
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        if (i < K) {
            float b_dht = (dht != nullptr && m_j) ? dht[o_state + (idx_t)i * V + j] : 0.f;
            float x = warp_sum(s[m] * b_dht);
            if (lane == 0) gterm_part[((idx_t)i_v * N * H + i_nh) * K + i] = x;
        }
    }
    // pass 2: state gradient backward in time
    #pragma unroll
    for (int m = 0; m < MAXKPT; ++m) {
        int i = w + m * NW;
        s[m] = (dht != nullptr && i < K && m_j) ? dht[o_state + (idx_t)i * V + j] : 0.f;
    }
    for (idx_t r = eos - 1; r >= bos; --r) {
        const idx_t o_k = (r * H + h) * (idx_t)K, o_v = (r * H + h) * (idx_t)V;
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
                s[m] += s_q[i] * b_do;
                float x = warp_sum(s[m] * b_v);
                if (lane == 0) dk_part[part + o_k + i] = x;
                acc += s[m] * s_k[i];
                s[m] *= s_d[i];
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
    if (dh0 != nullptr && m_j) {
        #pragma unroll
        for (int m = 0; m < MAXKPT; ++m) {
            int i = w + m * NW;
            if (i < K) dh0[o_state + (idx_t)i * V + j] = s[m];
        }
    }
}

// sums the NV partials of dq, dk and the final-state term, and forms dg by reverse cumsum.
// One warp per (n, h); lane owns key channels i = lane + 32 m.
template <typename T>
__device__ void recurrent_bwd_finalize(const T* __restrict__ q, const T* __restrict__ k,
                                       const float* __restrict__ dq_part, const float* __restrict__ dk_part,
                                       const float* __restrict__ gterm_part, float* __restrict__ dq,
                                       float* __restrict__ dk, float* __restrict__ dg,
                                       const idx_t* __restrict__ bounds, int N, int H, int K, int gw, int NV,
                                       idx_t rows) {
    const int lane = threadIdx.x, i_nh = blockIdx.x, n = i_nh / H, h = i_nh % H;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t stride = rows * H * K;
    float acc[8];
    #pragma unroll
    for (int m = 0; m < 8; ++m) {
        int i = lane + 32 * m;
        float x = 0.f;
        if (i < K)
            for (int p = 0; p < NV; ++p) x += gterm_part[((idx_t)p * N * H + i_nh) * K + i];
        acc[m] = x;
    }
    for (idx_t r = eos - 1; r >= bos; --r) {
        const idx_t o_k = (r * H + h) * (idx_t)K;
        float hsum = 0.f;
        #pragma unroll
        for (int m = 0; m < 8; ++m) {
            int i = lane + 32 * m;
            if (i < K) {
                float b_dq = 0.f, b_dk = 0.f;
                for (int p = 0; p < NV; ++p) {
                    b_dq += dq_part[p * stride + o_k + i];
                    b_dk += dk_part[p * stride + o_k + i];
                }
                dq[o_k + i] = b_dq;
                dk[o_k + i] = b_dk;
                acc[m] += to_f32(q[o_k + i]) * b_dq - to_f32(k[o_k + i]) * b_dk;
                if (gw > 1) dg[o_k + i] = acc[m];
                hsum += acc[m];
            }
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
    recurrent_fwd<T>(q, k, v, g, h0, o, ht, bounds, H, K, V, gw, scale);                                 \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(NW * 32) gla_recurrent_bwd_##NAME(                          \
    const T* q, const T* k, const T* v, const T* g, const float* h0, const T* d_o, const float* dht,      \
    float* dq_part, float* dk_part, float* dv, float* gterm_part, float* dh0, const idx_t* bounds,       \
    int N, int H, int K, int V, int gw, float scale, idx_t rows) {                                       \
    recurrent_bwd<T>(q, k, v, g, h0, d_o, dht, dq_part, dk_part, dv, gterm_part, dh0, bounds, N, H, K,  \
                     V, gw, scale, rows);                                                                \
}                                                                                                        \
extern "C" __global__ void gla_recurrent_bwd_finalize_##NAME(                                            \
    const T* q, const T* k, const float* dq_part, const float* dk_part, const float* gterm_part,          \
    float* dq, float* dk, float* dg, const idx_t* bounds, int N, int H, int K, int gw, int NV,           \
    idx_t rows) {                                                                                        \
    recurrent_bwd_finalize<T>(q, k, dq_part, dk_part, gterm_part, dq, dk, dg, bounds, N, H, K, gw, NV,   \
                              rows);                                                                     \
}

ENTRY(f32, float)
ENTRY(bf16, bf16_t)
