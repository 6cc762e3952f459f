// nn/rows.cu: casts, row gather / scatter and the GQA head repeat (contract: nn/common.cuh). The
// f32 -> bf16 cast moves groups of 8 where vec8_ok.

extern "C" __global__ void cast_f32_bf16(bf16_t* __restrict__ y, const float* __restrict__ x, idx_t n) {
    if (vec8_ok(n, y, x)) {
        for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n / 8; i += (idx_t)gridDim.x * blockDim.x) {
            float v[8];
            ld8(x + 8 * i, v);
            st8(y + 8 * i, v);
        }
        return;
    }
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x)
        y[i] = from_f32<bf16_t>(x[i]);
}

// out[i, :] = x[rows[i], :]  (bf16)
extern "C" __global__ void gather_rows_bf16(bf16_t* __restrict__ out, const bf16_t* __restrict__ x, const int* __restrict__ rows, idx_t m, int d) {
    for (idx_t i = blockIdx.x; i < m; i += gridDim.x)
        for (int j = threadIdx.x; j < d; j += blockDim.x) out[i * d + j] = x[(idx_t)rows[i] * d + j];
}

// out[rows[i], :] = src[i, :] * s (f32; the other rows of out are left as they are)
extern "C" __global__ void scatter_rows_f32(float* __restrict__ out, const float* __restrict__ src, const int* __restrict__ rows, idx_t m, int d, float s) {
    for (idx_t i = blockIdx.x; i < m; i += gridDim.x)
        for (int j = threadIdx.x; j < d; j += blockDim.x) out[(idx_t)rows[i] * d + j] = src[i * d + j] * s;
}

// [N, Hkv, e] -> [N, Hkv*groups, e]: output head h reads kv head h / groups (bf16)
extern "C" __global__ void repeat_heads_bf16(bf16_t* __restrict__ out, const bf16_t* __restrict__ x, idx_t n, int hkv, int groups, int e) {
    idx_t total = n * hkv * groups * e;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int j = (int)(i % e);
        idx_t rest = i / e;
        int h = (int)(rest % (hkv * groups));
        idx_t r = rest / (hkv * groups);
        out[i] = x[(r * hkv + h / groups) * e + j];
    }
}

// backward of repeat_heads: dx[N, Hkv, e] = sum over the groups of dout[N, Hkv*groups, e] (f32)
extern "C" __global__ void repeat_heads_bwd_f32(float* __restrict__ dx, const float* __restrict__ dout, idx_t n, int hkv, int groups, int e) {
    idx_t total = n * hkv * e;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int j = (int)(i % e);
        idx_t rest = i / e;
        int h = (int)(rest % hkv);
        idx_t r = rest / hkv;
        float s = 0.f;
        for (int g = 0; g < groups; ++g) s += dout[(r * hkv * groups + h * groups + g) * e + j];
        dx[i] = s;
    }
}
