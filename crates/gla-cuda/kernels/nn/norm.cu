// nn/norm.cu: RMSNorm of the residual stream and the gated per-head norm of the GLA output,
// forward and backward; one warp per row; weight gradients as column-reduction partials
// (contract: nn/common.cuh).
//
// The vectorized forms (`gated_norm_fwd_v{NG}`, `gated_norm_bwd_v{NG}`, `rmsnorm_bwd_v{NG}`,
// NG = 1, 2, 4, 8): the same contracts where the row width is a multiple of 128 up to NG x 128
// and the buffers are 16-byte aligned (src/norm.rs picks them, else the per-column kernels, which
// are also their reference in gla-check's `nn/norm-*` rows). A lane holds NG groups of 4
// consecutive columns (4 (32 i + lane) + e), the row in registers, so each row is read once
// with 8- and 16-byte accesses. The backward forms also form dw: each warp adds its rows' terms
// to its own row of shared memory, and each block writes the sum over its warps (in warp order)
// as one partial row, part[block, :], for col_finalize: no second pass over the rows. Grid:
// blocks of NORM_WARPS warps strided over the rows, a warp a row at a time.
//
// Entry points: rmsnorm_fwd rmsnorm_bwd_dx rmsnorm_bwd_dw gated_norm_fwd gated_norm_bwd_dx
//   gated_norm_bwd_dw gated_norm_fwd_v1 gated_norm_fwd_v2 gated_norm_fwd_v4 gated_norm_fwd_v8
//   gated_norm_bwd_v1 gated_norm_bwd_v2 gated_norm_bwd_v4 gated_norm_bwd_v8 rmsnorm_bwd_v1
//   rmsnorm_bwd_v2 rmsnorm_bwd_v4 rmsnorm_bwd_v8

// y = x * rstd * w (bf16 out), rstd = 1/sqrt(mean(x^2) + eps); x is the f32 residual stream
extern "C" __global__ void rmsnorm_fwd(bf16_t* __restrict__ y, float* __restrict__ rstd, const float* __restrict__ x, const float* __restrict__ w, idx_t n, int d, float eps) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < n; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        const float* xr = x + r * d;
        float s = 0.f;
        for (int j = lane; j < d; j += 32) s += xr[j] * xr[j];
        s = warp_sum(s);
        float rs = rsqrtf(s / d + eps);
        if (lane == 0) rstd[r] = rs;
        for (int j = lane; j < d; j += 32) y[r * d + j] = from_f32<bf16_t>(xr[j] * rs * w[j]);
    }
}

// dx (+)= rstd * (dy*w - x * rstd^2 * mean(dy*w*x)); dy, x, dx f32
extern "C" __global__ void rmsnorm_bwd_dx(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ rstd, const float* __restrict__ w, idx_t n, int d, int acc) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < n; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        const float *dyr = dy + r * d, *xr = x + r * d;
        float dot = 0.f;
        for (int j = lane; j < d; j += 32) dot += dyr[j] * w[j] * xr[j];
        dot = warp_sum(dot) / d;
        float rs = rstd[r], c = rs * rs * rs * dot;
        for (int j = lane; j < d; j += 32) {
            float v = rs * dyr[j] * w[j] - c * xr[j];
            dx[r * d + j] = acc ? dx[r * d + j] + v : v;
        }
    }
}

// per (token, head) row of v values: y = o * rstd * w * act(g) (g null: no gate; act: 0 swish,
// 1 sigmoid, gate_actf_)
extern "C" __global__ void gated_norm_fwd(bf16_t* __restrict__ y, float* __restrict__ rstd, const bf16_t* __restrict__ o, const bf16_t* __restrict__ g, const float* __restrict__ w, idx_t rows, int v, float eps, int act) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float s = 0.f;
        for (int j = lane; j < v; j += 32) {
            float x = to_f32(o[r * v + j]);
            s += x * x;
        }
        s = warp_sum(s);
        float rs = rsqrtf(s / v + eps);
        if (lane == 0) rstd[r] = rs;
        for (int j = lane; j < v; j += 32) {
            float gate = g ? gate_actf_(act, to_f32(g[r * v + j])) : 1.f;
            y[r * v + j] = from_f32<bf16_t>(to_f32(o[r * v + j]) * rs * w[j] * gate);
        }
    }
}

// backward of gated_norm_fwd: d_o (bf16, into the GLA backward) and dg (bf16, a GEMM operand)
extern "C" __global__ void gated_norm_bwd_dx(bf16_t* __restrict__ d_o, bf16_t* __restrict__ dg, const float* __restrict__ dy, const bf16_t* __restrict__ o, const bf16_t* __restrict__ g, const float* __restrict__ rstd, const float* __restrict__ w, idx_t rows, int v, int act) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float rs = rstd[r];
        float dot = 0.f;
        for (int j = lane; j < v; j += 32) {
            float gate = 1.f;
            if (g) {
                float x = to_f32(g[r * v + j]);
                gate = gate_actf_(act, x);
                dg[r * v + j] = from_f32<bf16_t>(dy[r * v + j] * to_f32(o[r * v + j]) * rs * w[j] * dgate_actf_(act, x));
            }
            dot += dy[r * v + j] * w[j] * gate * to_f32(o[r * v + j]);
        }
        dot = warp_sum(dot);
        float c = rs * rs * rs * dot / v;
        for (int j = lane; j < v; j += 32) {
            float gate = g ? gate_actf_(act, to_f32(g[r * v + j])) : 1.f;
            d_o[r * v + j] = from_f32<bf16_t>(rs * dy[r * v + j] * w[j] * gate - c * to_f32(o[r * v + j]));
        }
    }
}

struct RmsDw {
    const float *dy, *x, *rstd;
    int d;
    __device__ float operator()(idx_t r, int j) const { return dy[r * d + j] * x[r * d + j] * rstd[r]; }
};
// dw[j] += sum_r dy[r,j] * x[r,j] * rstd[r]   (RMSNorm weight; partials, then col_finalize)
extern "C" __global__ void rmsnorm_bwd_dw(float* part, const float* dy, const float* x, const float* rstd, idx_t n, int d) {
    col_reduce(part, n, d, RmsDw{dy, x, rstd, d});
}

struct GnDw {
    const float* dy;
    const bf16_t *o, *g;
    const float* rstd;
    int v, act;
    __device__ float operator()(idx_t r, int j) const {
        float gate = g ? gate_actf_(act, to_f32(g[r * v + j])) : 1.f;
        return dy[r * v + j] * to_f32(o[r * v + j]) * rstd[r] * gate;
    }
};
// dw[j] += sum_rows dy * o * rstd * act(g)   (per-head norm weight, rows = N*H; partials)
extern "C" __global__ void gated_norm_bwd_dw(float* part, const float* dy, const bf16_t* o, const bf16_t* g, const float* rstd, idx_t rows, int v, int act) {
    col_reduce(part, rows, v, GnDw{dy, o, g, rstd, v, act});
}

constexpr int NORM_WARPS = 8;

// the backward's prologue: the warps' rows of shared memory zeroed (after the row loop they are
// summed in warp order into the block's partial row), the lane's columns of w in registers
template <int NG>
__device__ __forceinline__ void norm_bwd_init(float (&sdw)[NORM_WARPS][NG * 128], float (&wv)[NG][4], const float* __restrict__ w, int width) {
    for (int j = threadIdx.x; j < NORM_WARPS * NG * 128; j += blockDim.x) (&sdw[0][0])[j] = 0.f;
    #pragma unroll
    for (int i = 0; i < NG; ++i) {
        const int j = 4 * (32 * i + (threadIdx.x & 31));
        if (j < width) ld_f4(wv[i], w + j);
    }
    __syncthreads();
}
template <int NG>
__device__ __forceinline__ void norm_dw_part(float* __restrict__ part, const float (&sdw)[NORM_WARPS][NG * 128], int cols) {
    __syncthreads();
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float a = 0.f;
        #pragma unroll
        for (int v = 0; v < NORM_WARPS; ++v) a += sdw[v][j];
        part[(idx_t)blockIdx.x * cols + j] = a;
    }
}

template <int NG>
__device__ __forceinline__ void gated_norm_fwd_t(bf16_t* __restrict__ y, float* __restrict__ rstd, const bf16_t* __restrict__ o, const bf16_t* __restrict__ g,
                                                 const float* __restrict__ w, idx_t rows, int v, float eps, int act) {
    const int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float ov[NG][4], s = 0.f;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < v) {
                ld_bf4(ov[i], o + r * v + j);
                #pragma unroll
                for (int e = 0; e < 4; ++e) s += ov[i][e] * ov[i][e];
            }
        }
        s = warp_sum(s);
        const float rs = rsqrtf(s / v + eps);
        if (lane == 0) rstd[r] = rs;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < v) {
                float wv[4], gv[4] = {1.f, 1.f, 1.f, 1.f}, a[4];
                ld_f4(wv, w + j);
                if (g) {
                    ld_bf4(gv, g + r * v + j);
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) gv[e] = gate_actf_(act, gv[e]);
                }
                #pragma unroll
                for (int e = 0; e < 4; ++e) a[e] = ov[i][e] * rs * wv[e] * gv[e];
                st_bf4(y + r * v + j, a);
            }
        }
    }
}

template <int NG>
__device__ __forceinline__ void gated_norm_bwd_t(bf16_t* __restrict__ d_o, bf16_t* __restrict__ dg, float* __restrict__ part, const float* __restrict__ dy,
                                                 const bf16_t* __restrict__ o, const bf16_t* __restrict__ g, const float* __restrict__ rstd,
                                                 const float* __restrict__ w, idx_t rows, int v, int act) {
    __shared__ float sdw[NORM_WARPS][NG * 128];
    float wv[NG][4];
    norm_bwd_init<NG>(sdw, wv, w, v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (idx_t r = (idx_t)blockIdx.x * NORM_WARPS + warp; r < rows; r += (idx_t)gridDim.x * NORM_WARPS) {
        const float rs = rstd[r];
        float dyv[NG][4], ov[NG][4], ga[NG][4], gd[NG][4], dot = 0.f;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < v) {
                ld_f4(dyv[i], dy + r * v + j);
                ld_bf4(ov[i], o + r * v + j);
                if (g) {
                    float gv[4];
                    ld_bf4(gv, g + r * v + j);
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) gate_act2(act, gv[e], ga[i][e], gd[i][e]);
                } else {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) ga[i][e] = 1.f, gd[i][e] = 0.f;
                }
                #pragma unroll
                for (int e = 0; e < 4; ++e) dot += dyv[i][e] * wv[i][e] * ga[i][e] * ov[i][e];
            }
        }
        dot = warp_sum(dot);
        const float c = rs * rs * rs * dot / v;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < v) {
                float a[4];
                if (g) {
                    #pragma unroll
                    for (int e = 0; e < 4; ++e) a[e] = dyv[i][e] * ov[i][e] * rs * wv[i][e] * gd[i][e];
                    st_bf4(dg + r * v + j, a);
                }
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    a[e] = rs * dyv[i][e] * wv[i][e] * ga[i][e] - c * ov[i][e];
                    sdw[warp][j + e] += dyv[i][e] * ov[i][e] * rs * ga[i][e];
                }
                st_bf4(d_o + r * v + j, a);
            }
        }
    }
    norm_dw_part<NG>(part, sdw, v);
}

template <int NG>
__device__ __forceinline__ void rmsnorm_bwd_t(float* __restrict__ dx, float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x,
                                              const float* __restrict__ rstd, const float* __restrict__ w, idx_t n, int d, int acc) {
    __shared__ float sdw[NORM_WARPS][NG * 128];
    float wv[NG][4];
    norm_bwd_init<NG>(sdw, wv, w, d);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (idx_t r = (idx_t)blockIdx.x * NORM_WARPS + warp; r < n; r += (idx_t)gridDim.x * NORM_WARPS) {
        const float rs = rstd[r];
        float dyv[NG][4], xv[NG][4], dot = 0.f;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < d) {
                ld_f4(dyv[i], dy + r * d + j);
                ld_f4(xv[i], x + r * d + j);
                #pragma unroll
                for (int e = 0; e < 4; ++e) dot += dyv[i][e] * wv[i][e] * xv[i][e];
            }
        }
        dot = warp_sum(dot) / d;
        const float c = rs * rs * rs * dot;
        #pragma unroll
        for (int i = 0; i < NG; ++i) {
            const int j = 4 * (32 * i + lane);
            if (j < d) {
                float a[4], prev[4] = {0.f, 0.f, 0.f, 0.f};
                if (acc) {
                    // a plain load: dx is written below (not the read-only path of ld_f4)
                    const float4 p4 = *reinterpret_cast<const float4*>(dx + r * d + j);
                    prev[0] = p4.x, prev[1] = p4.y, prev[2] = p4.z, prev[3] = p4.w;
                }
                #pragma unroll
                for (int e = 0; e < 4; ++e) {
                    a[e] = prev[e] + (rs * dyv[i][e] * wv[i][e] - c * xv[i][e]);
                    sdw[warp][j + e] += dyv[i][e] * xv[i][e] * rs;
                }
                st_f4(dx + r * d + j, a);
            }
        }
    }
    norm_dw_part<NG>(part, sdw, d);
}

#define NORM_ENTRIES(NG)                                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) gated_norm_fwd_v##NG(bf16_t* __restrict__ y, float* __restrict__ rstd, const bf16_t* __restrict__ o, \
                                                                           const bf16_t* __restrict__ g, const float* __restrict__ w, idx_t rows, int v, \
                                                                           float eps, int act) {                                 \
        gated_norm_fwd_t<NG>(y, rstd, o, g, w, rows, v, eps, act);                                                               \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) gated_norm_bwd_v##NG(bf16_t* __restrict__ d_o, bf16_t* __restrict__ dg, float* __restrict__ part, \
                                                                           const float* __restrict__ dy, const bf16_t* __restrict__ o, \
                                                                           const bf16_t* __restrict__ g, const float* __restrict__ rstd, \
                                                                           const float* __restrict__ w, idx_t rows, int v, int act) { \
        gated_norm_bwd_t<NG>(d_o, dg, part, dy, o, g, rstd, w, rows, v, act);                                                    \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) rmsnorm_bwd_v##NG(float* __restrict__ dx, float* __restrict__ part, const float* __restrict__ dy, \
                                                                        const float* __restrict__ x, const float* __restrict__ rstd, \
                                                                        const float* __restrict__ w, idx_t n, int d, int acc) {  \
        rmsnorm_bwd_t<NG>(dx, part, dy, x, rstd, w, n, d, acc);                                                                  \
    }
NORM_ENTRIES(1)
NORM_ENTRIES(2)
NORM_ENTRIES(4)
NORM_ENTRIES(8)
