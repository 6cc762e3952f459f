// nn/norm.cu: RMSNorm of the residual stream and the gated per-head norm of the GLA output,
// forward and backward; one warp per row; weight gradients as column-reduction partials
// (contract: nn/common.cuh).

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
