// nn/elementwise.cu: SwiGLU, fla's feature maps on q / k, the log-sigmoid gate, and DeltaNet's
// sum norm, forward and backward (contract: nn/common.cuh). One thread per element, grid-stride
// (SwiGLU: per group of 8 with 16-byte accesses where vec8_ok, the same values bit for bit);
// the sum norm takes one warp per row of `k` values (a per-head row of q or k):
//     sum_norm:  y = x / max(sum |x|, 1e-6)   (fla's `sum_norm`, gla-model's ops::sum_norm_fwd)

// h = silu(a) * b
extern "C" __global__ void swiglu_fwd(bf16_t* __restrict__ h, const bf16_t* __restrict__ a, const bf16_t* __restrict__ b, idx_t n) {
    if (vec8_ok(n, h, a, b)) {
        for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n / 8; i += (idx_t)gridDim.x * blockDim.x) {
            float va[8], vb[8], vh[8];
            ld8(a + 8 * i, va);
            ld8(b + 8 * i, vb);
            #pragma unroll
            for (int k = 0; k < 8; ++k) vh[k] = swishf_(va[k]) * vb[k];
            st8(h + 8 * i, vh);
        }
        return;
    }
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        h[i] = from_f32<bf16_t>(swishf_(to_f32(a[i])) * to_f32(b[i]));
    }
}

// fla's feature map on q or k (GlaConfig.feature_map; gla_model::FeatureMap, whose enum order
// gives the codes; 9 is the identity): f(x) and f'(x) in f32, as gla-model's FeatureMap::apply / grad.
#define GELU_C 0.7978845608028654f
__device__ __forceinline__ float fmap_(int f, float x) {
    switch (f) {
        case 0: return fmaxf(x, 0.f);                                                   // relu
        case 1: { float r = fmaxf(x, 0.f); return r * r; }                              // relu2
        case 2: return fminf(fmaxf(x, 0.f), 6.f);                                      // relu6
        case 3: return x > 0.f ? x : 0.01f * x;                                         // leaky_relu
        case 4: return sigmoidf_(x);                                                    // sigmoid
        case 5: return swishf_(x);                                                      // silu
        case 6: return tanhf(x);                                                        // tanh
        case 7: return 0.5f * x * (1.f + tanhf(GELU_C * (x + 0.044715f * x * x * x))); // tanh-GELU
        case 8: return x * sigmoidf_(1.702f * x);                                       // quick_gelu
        case 10: return x > 0.f ? x + 1.f : expf(x);                                    // elu + 1 (fla's elu_p1)
        default: return x;                                                              // linear
    }
}
__device__ __forceinline__ float dfmap_(int f, float x) {
    switch (f) {
        case 0: return x > 0.f ? 1.f : 0.f;
        case 1: return 2.f * fmaxf(x, 0.f);
        case 2: return (x > 0.f && x < 6.f) ? 1.f : 0.f;
        case 3: return x > 0.f ? 1.f : 0.01f;
        case 4: { float s = sigmoidf_(x); return s * (1.f - s); }
        case 5: return dswishf_(x);
        case 6: { float t = tanhf(x); return 1.f - t * t; }
        case 7: {
            float t = tanhf(GELU_C * (x + 0.044715f * x * x * x));
            return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * GELU_C * (1.f + 3.f * 0.044715f * x * x);
        }
        case 8: { float s = sigmoidf_(1.702f * x); return s + 1.702f * x * s * (1.f - s); }
        case 10: return x > 0.f ? 1.f : expf(x);
        default: return 1.f;
    }
}

// y = f(x) (bf16 in and out, f32 math)
extern "C" __global__ void feature_map_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, idx_t n, int f) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        y[i] = from_f32<bf16_t>(fmap_(f, to_f32(x[i])));
    }
}

// d = d * f'(x) in place (d f32: the GLA op's gradient of f(x))
extern "C" __global__ void feature_map_bwd(float* __restrict__ d, const bf16_t* __restrict__ x, idx_t n, int f) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        d[i] *= dfmap_(f, to_f32(x[i]));
    }
}

// da = dh * b * silu'(a), db = dh * silu(a)
extern "C" __global__ void swiglu_bwd(bf16_t* __restrict__ da, bf16_t* __restrict__ db, const float* __restrict__ dh, const bf16_t* __restrict__ a, const bf16_t* __restrict__ b, idx_t n) {
    if (vec8_ok(n, da, db, dh) && vec8_ok(n, a, b)) {
        for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n / 8; i += (idx_t)gridDim.x * blockDim.x) {
            float va[8], vb[8], vd[8], oa[8], ob[8];
            ld8(a + 8 * i, va);
            ld8(b + 8 * i, vb);
            ld8(dh + 8 * i, vd);
            #pragma unroll
            for (int k = 0; k < 8; ++k) {
                ob[k] = vd[k] * swishf_(va[k]);
                oa[k] = vd[k] * vb[k] * dswishf_(va[k]);
            }
            st8(db + 8 * i, ob);
            st8(da + 8 * i, oa);
        }
        return;
    }
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        float x = to_f32(a[i]), d = dh[i];
        db[i] = from_f32<bf16_t>(d * swishf_(x));
        da[i] = from_f32<bf16_t>(d * to_f32(b[i]) * dswishf_(x));
    }
}

__device__ __forceinline__ float logsigmoidf_(float x) { return fminf(x, 0.f) - log1pf(__expf(-fabsf(x))); }

// raw[r, j] += bias[j] (f32, kept for the backward); gk = max(logsigmoid(raw) / norm, clamp) (bf16)
extern "C" __global__ void gate_fwd(bf16_t* __restrict__ gk, float* __restrict__ raw, const float* __restrict__ bias, idx_t n, int c, float norm, int has_clamp, float clamp_min) {
    const idx_t total = n * c, i0 = blockIdx.x * (idx_t)blockDim.x + threadIdx.x, stride = (idx_t)gridDim.x * blockDim.x;
    ColStep col(i0, stride, c);
    for (idx_t i = i0; i < total; i += stride, col.next()) {
        float x = raw[i] + bias[col.col];
        raw[i] = x;
        float v = logsigmoidf_(x) / norm;
        gk[i] = from_f32<bf16_t>(has_clamp ? fmaxf(v, clamp_min) : v);
    }
}

// dx = dg * sigmoid(-raw) / norm, zero where the clamp is active; dx f32 (bias grad) and bf16 (GEMM)
extern "C" __global__ void gate_bwd(float* __restrict__ dx, bf16_t* __restrict__ dx16, const float* __restrict__ dg, const float* __restrict__ raw, idx_t total, float norm, int has_clamp, float clamp_min) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        float x = raw[i];
        bool pass = !has_clamp || logsigmoidf_(x) / norm >= clamp_min;
        float v = pass ? dg[i] * sigmoidf_(-x) / norm : 0.f;
        dx[i] = v;
        dx16[i] = from_f32<bf16_t>(v);
    }
}

// fla's sum_norm's clamp (F.normalize(x, p=1, eps=1e-6); gla-model's ops::SUM_NORM_EPS)
#define SUM_NORM_EPS 1e-6f

// y = x / max(sum |x|, eps) per row of k values (bf16 in and out, f32 math); one warp per row
extern "C" __global__ void sum_norm_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, idx_t rows, int k) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float s = 0.f;
        for (int j = lane; j < k; j += 32) s += fabsf(to_f32(x[r * k + j]));
        float inv = 1.f / fmaxf(warp_sum(s), SUM_NORM_EPS);
        for (int j = lane; j < k; j += 32) y[r * k + j] = from_f32<bf16_t>(to_f32(x[r * k + j]) * inv);
    }
}

// backward of sum_norm_fwd in place (d f32: dL/dy in, dL/dx out), as ops::sum_norm_bwd: with
// l1 = sum |x| > eps, dx = (dy - sign(x) <dy, x> / l1) / l1; below the clamp dx = dy / eps (the
// clamp passes no gradient to the norm). Every lane reads its elements before the warp's sum and
// writes only its own, so in place is safe.
extern "C" __global__ void sum_norm_bwd(float* __restrict__ d, const bf16_t* __restrict__ x, idx_t rows, int k) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float l1 = 0.f, dot = 0.f;
        for (int j = lane; j < k; j += 32) {
            float xv = to_f32(x[r * k + j]);
            l1 += fabsf(xv);
            dot += d[r * k + j] * xv;
        }
        l1 = warp_sum(l1);
        dot = warp_sum(dot);
        if (l1 > SUM_NORM_EPS) {
            float c = dot / l1;
            for (int j = lane; j < k; j += 32) {
                float xv = to_f32(x[r * k + j]);
                float sg = xv > 0.f ? 1.f : (xv < 0.f ? -1.f : 0.f);
                d[r * k + j] = (d[r * k + j] - sg * c) / l1;
            }
        } else {
            for (int j = lane; j < k; j += 32) d[r * k + j] /= SUM_NORM_EPS;
        }
    }
}
