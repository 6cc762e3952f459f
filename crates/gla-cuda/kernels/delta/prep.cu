// delta/prep.cu: the elementwise maps of the delta-rule op (gla_core::delta) and their backward,
// shared by the chunked and the recurrent paths.
//
// Forward:
//   delta_l2_rstd_*:  r (=, f32 [rows, H]) = 1 / sqrt(sum x^2 + eps) of q or k, one warp per
//                     (row, head); launched only with the in-op L2 norm. The chunk kernels apply
//                     it as a row factor (delta/chunk.cuh); the recurrent ones normalise inline.
//   delta_gate_fwd_*: bt (=, f32 [rows, HV * VS]) = beta, or bscale * sigmoid(b) (bscale > 0);
//                     gl (=, f32 [rows, HV * VS], gmode > 0) = g (gmode 1, the log decay) or
//                     -exp(A_log) softplus(a + dt_bias) (gmode 2, the computed gate). One thread
//                     per (row, kernel value head); VS value sub-heads (dispatch::delta::
//                     value_split: a value head too wide for the chunk kernels runs as VS heads)
//                     read the same input head, so entry x reads input x / VS.
// Backward (the recurrence's gradients arrive as NP partials each, summed here in order):
//   delta_qk_bwd_*:    dq, dk (=, f32 [rows, H, K]) from dq_part, dk_part ([NP][rows, HV, K] f32,
//                      the gradients at qn, kn per value head): summed over the partials and the
//                      HV / H value heads of each head, then through the L2 norm when l2
//                      (dx = r (dy - y (y . dy)), y = x r). One warp per (row, head).
//   delta_gate_bwd_*:  dbeta (=, f32 [rows, HV]) through the sigmoid; dg (=, f32 [rows, HV]) the
//                      log decay's gradient (gmode 1) or the raw a's (gmode 2); the partials are
//                      [NP][rows, HV * VS], summed over NP and the VS sub-heads of each head.
//   delta_gate_param_bwd_*: dA_log, ddt_bias (=, f32 [HV]) of the computed gate, summed over every
//                      row and sub-head in a fixed order (one block per value head: deterministic).
// Every sum is f32 and in a fixed order (no atomics): repeated runs are bitwise equal.
// States of value sub-heads:
//   delta_state_split: f32 states between the caller's layout [N*HV, K, VS, VW] (= [N, HV, K, V])
//                      and the VS value sub-heads' [N*HV, VS, K, VW] (= [N, HV * VS, K, VW]);
//                      dir 0: caller's to sub-heads', 1: back. One thread per element.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }
// softplus with PyTorch's threshold 20, and its derivative
__device__ __forceinline__ float softplusf_(float x) { return x > 20.f ? x : log1pf(expf(-fabsf(x))) + fmaxf(x, 0.f); }
__device__ __forceinline__ float dsoftplusf_(float x) { return x > 20.f ? 1.f : sigmoidf_(x); }

template <typename E>
__device__ void l2_rstd(const E* __restrict__ x, float* __restrict__ r, idx_t nrows, int K) {
    const int lane = threadIdx.x & 31;
    const idx_t row = (idx_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= nrows) return;
    const E* p = x + row * K;
    float ss = 0.f;
    for (int i = lane; i < K; i += 32) {
        const float v = to_f32(p[i]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    if (lane == 0) r[row] = rsqrtf(ss + DEPS);
}

template <typename E>
__device__ void gate_fwd(const E* __restrict__ beta, const E* __restrict__ g, const float* __restrict__ a_log,
                         const float* __restrict__ dt_bias, float* __restrict__ bt, float* __restrict__ gl, idx_t n, int HV,
                         int VS, float bscale, int gmode) {
    const idx_t x = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    const idx_t xi = x / VS;  // the input's (row, value head)
    const int hv = (int)(xi % HV);
    const float b = to_f32(beta[xi]);
    bt[x] = bscale > 0.f ? bscale * sigmoidf_(b) : b;
    if (gmode == 1) gl[x] = to_f32(g[xi]);
    if (gmode == 2) gl[x] = -expf(a_log[hv]) * softplusf_(to_f32(g[xi]) + dt_bias[hv]);
}

// one warp per (row, head); K <= 256: each lane holds at most 8 channels, as two runs of 4
// (16-byte loads) when K % 4 == 0, else 8 strided ones
template <typename E>
__device__ void qk_bwd(const E* __restrict__ q, const E* __restrict__ k, const float* __restrict__ dq_part,
                       const float* __restrict__ dk_part, float* __restrict__ dq, float* __restrict__ dk, idx_t rows, int H, int HV,
                       int K, int NP, int l2) {
    const int lane = threadIdx.x & 31;
    const idx_t x = (idx_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (x >= rows * H) return;
    const idx_t row = x / H;
    const int h = (int)(x % H), grp = HV / H;
    const idx_t part = rows * HV * K;
    const bool v4 = (K & 3) == 0;
    // channel of slot m: 4 lane + 128 (m / 4) + m % 4 (v4), else lane + 32 m
    auto chan = [&](int m) { return v4 ? 4 * lane + 128 * (m >> 2) + (m & 3) : lane + 32 * m; };
    #pragma unroll
    for (int which = 0; which < 2; ++which) {
        const float* src = which ? dk_part : dq_part;
        const E* in = which ? k : q;
        float* out = which ? dk : dq;
        float d[8], y[8];
        float ss = 0.f;
        #pragma unroll
        for (int m = 0; m < 8; ++m) {
            d[m] = 0.f;
            y[m] = 0.f;
        }
        for (int p = 0; p < NP; ++p) {
            for (int j = 0; j < grp; ++j) {
                const float* s = src + p * part + (row * HV + h * grp + j) * K;
                if (v4) {
                    #pragma unroll
                    for (int m = 0; m < 8; m += 4) {
                        if (chan(m) < K) {
                            const float4 f = *(const float4*)(s + chan(m));
                            d[m] += f.x;
                            d[m + 1] += f.y;
                            d[m + 2] += f.z;
                            d[m + 3] += f.w;
                        }
                    }
                } else {
                    #pragma unroll
                    for (int m = 0; m < 8; ++m)
                        if (chan(m) < K) d[m] += s[chan(m)];
                }
            }
        }
        #pragma unroll
        for (int m = 0; m < 8; ++m) {
            if (chan(m) < K) {
                y[m] = to_f32(in[x * K + chan(m)]);
                ss += y[m] * y[m];
            }
        }
        if (l2) {
            const float r = rsqrtf(warp_sum(ss) + DEPS);
            float dot = 0.f;
            #pragma unroll
            for (int m = 0; m < 8; ++m) {
                y[m] *= r;
                dot += y[m] * d[m];
            }
            dot = warp_sum(dot);
            #pragma unroll
            for (int m = 0; m < 8; ++m) d[m] = r * (d[m] - y[m] * dot);
        }
        if (v4) {
            #pragma unroll
            for (int m = 0; m < 8; m += 4)
                if (chan(m) < K) *(float4*)(out + x * K + chan(m)) = make_float4(d[m], d[m + 1], d[m + 2], d[m + 3]);
        } else {
            #pragma unroll
            for (int m = 0; m < 8; ++m)
                if (chan(m) < K) out[x * K + chan(m)] = d[m];
        }
    }
}

template <typename E>
__device__ void gate_bwd(const E* __restrict__ beta, const E* __restrict__ g, const float* __restrict__ a_log,
                         const float* __restrict__ dt_bias, const float* __restrict__ db_part, const float* __restrict__ dg_part,
                         float* __restrict__ dbeta, float* __restrict__ dg, idx_t n, int HV, int VS, int NP, float bscale,
                         int gmode) {
    const idx_t x = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    const int hv = (int)(x % HV);
    const idx_t pn = n * VS;  // elements of one partial
    float db = 0.f, dgs = 0.f;
    for (int p = 0; p < NP; ++p) {
        for (int j = 0; j < VS; ++j) {
            db += db_part[p * pn + x * VS + j];
            if (gmode > 0) dgs += dg_part[p * pn + x * VS + j];
        }
    }
    if (bscale > 0.f) {
        const float s = sigmoidf_(to_f32(beta[x]));
        db *= bscale * s * (1.f - s);
    }
    dbeta[x] = db;
    if (gmode == 1) dg[x] = dgs;
    if (gmode == 2) dg[x] = dgs * -expf(a_log[hv]) * dsoftplusf_(to_f32(g[x]) + dt_bias[hv]);
}

// one block of 256 threads per value head: dA_log = sum dg * g, ddt_bias = sum da
template <typename E>
__device__ void gate_param_bwd(const E* __restrict__ g, const float* __restrict__ a_log, const float* __restrict__ dt_bias,
                               const float* __restrict__ dg_part, float* __restrict__ da_log, float* __restrict__ ddt_bias, idx_t rows,
                               int HV, int VS, int NP) {
    __shared__ float s_red[2][8];
    const int hv = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const idx_t pn = rows * HV * VS;  // elements of one partial
    const float e = expf(a_log[hv]), dtb = dt_bias[hv];
    float sa = 0.f, sd = 0.f;
    for (idx_t r = tid; r < rows; r += 256) {
        const idx_t x = r * HV + hv;
        float dgs = 0.f;
        for (int p = 0; p < NP; ++p)
            for (int j = 0; j < VS; ++j) dgs += dg_part[p * pn + x * VS + j];
        const float z = to_f32(g[x]) + dtb;
        sa += dgs * -e * softplusf_(z);
        sd += dgs * -e * dsoftplusf_(z);
    }
    sa = warp_sum(sa);
    sd = warp_sum(sd);
    if (lane == 0) {
        s_red[0][w] = sa;
        s_red[1][w] = sd;
    }
    __syncthreads();
    if (tid == 0) {
        float ta = 0.f, td = 0.f;
        for (int x = 0; x < 8; ++x) {
            ta += s_red[0][x];
            td += s_red[1][x];
        }
        da_log[hv] = ta;
        ddt_bias[hv] = td;
    }
}

#define PREP_ENTRY(NAME, E)                                                                              \
extern "C" __global__ void __launch_bounds__(256) delta_l2_rstd_##NAME(const E* x, float* r, idx_t nrows,    \
                                                                         int K) {                        \
    l2_rstd<E>(x, r, nrows, K);                                                                          \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(256) delta_gate_fwd_##NAME(                                 \
    const E* beta, const E* g, const float* a_log, const float* dt_bias, float* bt, float* gl, idx_t n,  \
    int HV, int VS, float bscale, int gmode) {                                                           \
    gate_fwd<E>(beta, g, a_log, dt_bias, bt, gl, n, HV, VS, bscale, gmode);                              \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(256) delta_qk_bwd_##NAME(                                   \
    const E* q, const E* k, const float* dq_part, const float* dk_part, float* dq, float* dk, idx_t rows,\
    int H, int HV, int K, int NP, int l2) {                                                              \
    qk_bwd<E>(q, k, dq_part, dk_part, dq, dk, rows, H, HV, K, NP, l2);                                   \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(256) delta_gate_bwd_##NAME(                                 \
    const E* beta, const E* g, const float* a_log, const float* dt_bias, const float* db_part,           \
    const float* dg_part, float* dbeta, float* dg, idx_t n, int HV, int VS, int NP, float bscale,        \
    int gmode) {                                                                                         \
    gate_bwd<E>(beta, g, a_log, dt_bias, db_part, dg_part, dbeta, dg, n, HV, VS, NP, bscale, gmode);     \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(256) delta_gate_param_bwd_##NAME(                           \
    const E* g, const float* a_log, const float* dt_bias, const float* dg_part, float* da_log,           \
    float* ddt_bias, idx_t rows, int HV, int VS, int NP) {                                               \
    gate_param_bwd<E>(g, a_log, dt_bias, dg_part, da_log, ddt_bias, rows, HV, VS, NP);                   \
}

PREP_ENTRY(f32, float)
PREP_ENTRY(bf16, bf16_t)

extern "C" __global__ void __launch_bounds__(256) delta_state_split(const float* __restrict__ src, float* __restrict__ dst, idx_t n,
                                                                    int K, int VS, int VW, int dir) {
    const idx_t x = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    // x indexes the caller's layout, y the sub-heads'
    const int c = (int)(x % VW);
    idx_t r = x / VW;
    const int s = (int)(r % VS);
    r /= VS;
    const int k = (int)(r % K);
    const idx_t nh = r / K;
    const idx_t y = ((nh * VS + s) * K + k) * VW + c;
    if (dir == 0)
        dst[y] = src[x];
    else
        dst[x] = src[y];
}
