// model_ops.cu: the row-wise and element-wise kernels of the GLA language model, around the
// cuBLAS GEMMs and the GLA kernels (gla-cuda/src/model.rs drives them).
//
// Contract (every kernel):
// - row-major buffers; `n` rows (tokens, or token x head pairs), `d`/`c`/`v` columns; all index
//   products in 64 bits (idx_t);
// - dtypes are fixed per argument and named in the signature: `float*` f32, `bf16_t*` bf16 bits.
//   The residual stream, norms' rstd, parameter masters and every parameter gradient are f32;
//   GEMM operands are bf16; gradients flowing into an accumulation are f32;
// - parameter-gradient kernels ACCUMULATE (+=) in a fixed order, so that a run repeats bitwise:
//   column reductions write per-block partial sums and col_finalize adds them in block order;
//   the embedding backward sums each token's rows in row order (rows sorted on the host); no
//   atomics anywhere. Everything else WRITES its outputs;
// - math in f32; the formulas are the CPU ops' (gla-model/src/ops.rs), which are the reference.

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }
// swish(x) = x sigmoid(x) (the output gate, SiLU) and d swish / dx
__device__ __forceinline__ float swishf_(float x) { return x * sigmoidf_(x); }
__device__ __forceinline__ float dswishf_(float x) {
    float s = sigmoidf_(x);
    return s * (1.f + x * (1.f - s));
}

// ---------------------------------------------------------------------------------------------
// casts, embedding, row gather/scatter, GQA head repeat

extern "C" __global__ void cast_f32_bf16(bf16_t* __restrict__ y, const float* __restrict__ x, idx_t n) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x)
        y[i] = from_f32<bf16_t>(x[i]);
}

// x[r, :] = wte[ids[r], :]   (ids checked on the host)
extern "C" __global__ void embedding_fwd(float* __restrict__ x, const unsigned* __restrict__ ids, const float* __restrict__ wte, idx_t n, int d) {
    for (idx_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float* src = wte + (idx_t)ids[r] * d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) x[r * d + j] = src[j];
    }
}

// dwte[tok, :] += sum of dx[r, :] over the rows r holding token tok, in row order: the host
// sorts the rows by token (stable) into `order`; segment s covers order[start[s] .. start[s+1])
// and holds token tok[s] (the padding token's segment is left out by the host); one block per
// segment, so every embedding row has one writer
extern "C" __global__ void embedding_bwd(float* __restrict__ dwte, const float* __restrict__ dx, const int* __restrict__ order, const int* __restrict__ start, const unsigned* __restrict__ tok, int nseg, int d) {
    for (int sg = blockIdx.x; sg < nseg; sg += gridDim.x) {
        float* dst = dwte + (idx_t)tok[sg] * d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float s = 0.f;
            for (int i = start[sg]; i < start[sg + 1]; ++i) s += dx[(idx_t)order[i] * d + j];
            dst[j] += s;
        }
    }
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

// ---------------------------------------------------------------------------------------------
// column reductions for parameter gradients: dw[j] += sum_r f(r, j), one thread per column of a
// 32-wide tile, 8 row lanes per block, blocks strided over rows; block y writes its partial sums
// to part[y, :] and col_finalize adds part[0..gy, j] to dw[j] in order (deterministic).

// dw[j] += sum_{y < gy} part[y, j], in y order
extern "C" __global__ void col_finalize(float* __restrict__ dw, const float* __restrict__ part, int gy, int cols) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int y = 0; y < gy; ++y) s += part[(idx_t)y * cols + j];
        dw[j] += s;
    }
}

template <typename F>
__device__ __forceinline__ void col_reduce(float* __restrict__ part, idx_t n, int cols, const F& f) {
    __shared__ float lanes[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    float s = 0.f;
    if (j < cols)
        for (idx_t r = blockIdx.y * 8 + threadIdx.y; r < n; r += (idx_t)gridDim.y * 8) s += f(r, j);
    lanes[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
        float t = 0.f;
        #pragma unroll
        for (int y = 0; y < 8; ++y) t += lanes[y][threadIdx.x];
        part[(idx_t)blockIdx.y * cols + j] = t;
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
    int v;
    __device__ float operator()(idx_t r, int j) const {
        float gate = g ? swishf_(to_f32(g[r * v + j])) : 1.f;
        return dy[r * v + j] * to_f32(o[r * v + j]) * rstd[r] * gate;
    }
};
// dw[j] += sum_rows dy * o * rstd * swish(g)   (per-head norm weight, rows = N*H; partials)
extern "C" __global__ void gated_norm_bwd_dw(float* part, const float* dy, const bf16_t* o, const bf16_t* g, const float* rstd, idx_t rows, int v) {
    col_reduce(part, rows, v, GnDw{dy, o, g, rstd, v});
}

struct ColSum {
    const float* x;
    int c;
    __device__ float operator()(idx_t r, int j) const { return x[r * c + j]; }
};
// db[j] += sum_r x[r, j]   (bias gradient, f32 input; partials)
extern "C" __global__ void colsum_f32(float* part, const float* x, idx_t n, int c) { col_reduce(part, n, c, ColSum{x, c}); }

// ---------------------------------------------------------------------------------------------
// norms: one warp per row

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

// per (token, head) row of v values: y = o * rstd * w * swish(g) (g null: no gate)
extern "C" __global__ void gated_norm_fwd(bf16_t* __restrict__ y, float* __restrict__ rstd, const bf16_t* __restrict__ o, const bf16_t* __restrict__ g, const float* __restrict__ w, idx_t rows, int v, float eps) {
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
            float gate = g ? swishf_(to_f32(g[r * v + j])) : 1.f;
            y[r * v + j] = from_f32<bf16_t>(to_f32(o[r * v + j]) * rs * w[j] * gate);
        }
    }
}

// backward of gated_norm_fwd: d_o (bf16, into the GLA backward) and dg (bf16, a GEMM operand)
extern "C" __global__ void gated_norm_bwd_dx(bf16_t* __restrict__ d_o, bf16_t* __restrict__ dg, const float* __restrict__ dy, const bf16_t* __restrict__ o, const bf16_t* __restrict__ g, const float* __restrict__ rstd, const float* __restrict__ w, idx_t rows, int v) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float rs = rstd[r];
        float dot = 0.f;
        for (int j = lane; j < v; j += 32) {
            float gate = 1.f;
            if (g) {
                float x = to_f32(g[r * v + j]);
                gate = swishf_(x);
                dg[r * v + j] = from_f32<bf16_t>(dy[r * v + j] * to_f32(o[r * v + j]) * rs * w[j] * dswishf_(x));
            }
            dot += dy[r * v + j] * w[j] * gate * to_f32(o[r * v + j]);
        }
        dot = warp_sum(dot);
        float c = rs * rs * rs * dot / v;
        for (int j = lane; j < v; j += 32) {
            float gate = g ? swishf_(to_f32(g[r * v + j])) : 1.f;
            d_o[r * v + j] = from_f32<bf16_t>(rs * dy[r * v + j] * w[j] * gate - c * to_f32(o[r * v + j]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// element-wise

// h = silu(a) * b
extern "C" __global__ void swiglu_fwd(bf16_t* __restrict__ h, const bf16_t* __restrict__ a, const bf16_t* __restrict__ b, idx_t n) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        h[i] = from_f32<bf16_t>(swishf_(to_f32(a[i])) * to_f32(b[i]));
    }
}

// fla's feature map on q or k (GlaConfig.feature_map; gla_model::FeatureMap, whose enum order
// gives the codes): f(x) and f'(x) in f32, as gla-model's FeatureMap::apply / grad.
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
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        float x = to_f32(a[i]), d = dh[i];
        db[i] = from_f32<bf16_t>(d * swishf_(x));
        da[i] = from_f32<bf16_t>(d * to_f32(b[i]) * dswishf_(x));
    }
}

__device__ __forceinline__ float logsigmoidf_(float x) { return fminf(x, 0.f) - log1pf(__expf(-fabsf(x))); }

// raw[r, j] += bias[j] (f32, kept for the backward); gk = max(logsigmoid(raw) / norm, clamp) (bf16)
extern "C" __global__ void gate_fwd(bf16_t* __restrict__ gk, float* __restrict__ raw, const float* __restrict__ bias, idx_t n, int c, float norm, int has_clamp, float clamp_min) {
    idx_t total = n * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        float x = raw[i] + bias[i % c];
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

// ---------------------------------------------------------------------------------------------
// causal depthwise short convolution + SiLU per sequence of t rows (fla's ShortConvolution, no
// bias): pre[s, ch] = sum_j w[ch, j] x[s - (W-1) + j, ch], y = silu(pre); w [C, W] f32

// cache: null (zeros before each sequence) or the last W inputs before it, `[B, C, W]` f32 with
// the newest last (fla's conv_state; inference): position p < 0 of sequence b reads
// cache[(b*C + ch)*W + W + p]
extern "C" __global__ void conv_fwd(bf16_t* __restrict__ y, bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ cache, idx_t n, int t, int c, int width) {
    idx_t total = n * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        idx_t r = i / c;
        int s = (int)(r % t);
        idx_t seq = r / t;
        float acc = 0.f;
        for (int j = 0; j < width; ++j) {
            int src = s + j - (width - 1);
            if (src >= 0) acc += w[ch * width + j] * to_f32(x[(r - s + src) * c + ch]);
            else if (cache) acc += w[ch * width + j] * cache[(seq * c + ch) * width + width + src];
        }
        pre[i] = from_f32<bf16_t>(acc);
        y[i] = from_f32<bf16_t>(swishf_(acc));
    }
}

// after conv_fwd on B sequences of t rows: cache[b, ch, :] = the last W inputs of sequence b
// (from x, or from the old cache when t < W); one thread per (sequence, channel), so the old
// values are read before any is overwritten
extern "C" __global__ void conv_cache_update(float* __restrict__ cache, const bf16_t* __restrict__ x, idx_t nseq, int t, int c, int width) {
    idx_t total = nseq * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        idx_t seq = i / c;
        float v[8];
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            int p = t - width + j;  // position of the j-th newest-last entry
            v[j] = 0.f;
            if (j < width) v[j] = p >= 0 ? to_f32(x[(seq * t + p) * c + ch]) : cache[(seq * c + ch) * width + width + p];
        }
        for (int j = 0; j < width; ++j) cache[(seq * c + ch) * width + j] = v[j];
    }
}

// decode (one token per sequence): conv_fwd with t = 1 and conv_cache_update in one pass, each
// sequence's cache [C, W] f32 in its own buffer at caches[seq]; one thread per (sequence,
// channel) reads its W-1 newest inputs, then shifts them and appends x in place
extern "C" __global__ void conv_decode(bf16_t* __restrict__ y, bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, const float* __restrict__ w, const unsigned long long* __restrict__ caches, idx_t nseq, int c, int width) {
    idx_t total = nseq * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        idx_t seq = i / c;
        float* cache = reinterpret_cast<float*>(caches[seq]) + (idx_t)ch * width;
        float xv = to_f32(x[i]);
        float acc = w[ch * width + width - 1] * xv;
        for (int j = 0; j + 1 < width; ++j) {
            float old = cache[j + 1];
            acc += w[ch * width + j] * old;
            cache[j] = old;
        }
        cache[width - 1] = xv;
        pre[i] = from_f32<bf16_t>(acc);
        y[i] = from_f32<bf16_t>(swishf_(acc));
    }
}

__device__ __forceinline__ float dsilu(float d, float p) { return d * dswishf_(p); }

// dx[src, ch] = sum_j w[ch, j] dpre[src + W-1-j, ch], dpre = dy * silu'(pre); dx bf16 (GEMM operand)
extern "C" __global__ void conv_bwd_dx(bf16_t* __restrict__ dx, const float* __restrict__ dy, const bf16_t* __restrict__ pre, const float* __restrict__ w, idx_t n, int t, int c, int width) {
    idx_t total = n * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        idx_t r = i / c;
        int src = (int)(r % t);
        float acc = 0.f;
        for (int j = 0; j < width; ++j) {
            int s = src + width - 1 - j;
            if (s < t) {
                idx_t k = (r - src + s) * c + ch;
                acc += w[ch * width + j] * dsilu(dy[k], to_f32(pre[k]));
            }
        }
        dx[i] = from_f32<bf16_t>(acc);
    }
}

// dw[ch, j] += sum_r dpre[r, ch] x[r - (W-1) + j, ch] within each sequence; W <= 8. Partials:
// block y writes part[y, ch * W + j]; col_finalize over C * W columns adds them to dw
extern "C" __global__ void conv_bwd_dw(float* __restrict__ part, const float* __restrict__ dy, const bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, idx_t n, int t, int c, int width) {
    __shared__ float lanes[8][8][33];
    int ch = blockIdx.x * 32 + threadIdx.x;
    float s[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = 0.f;
    if (ch < c) {
        for (idx_t r = blockIdx.y * 8 + threadIdx.y; r < n; r += (idx_t)gridDim.y * 8) {
            int pos = (int)(r % t);
            float dp = dsilu(dy[r * c + ch], to_f32(pre[r * c + ch]));
            #pragma unroll
            for (int j = 0; j < 8; ++j) {
                int src = pos + j - (width - 1);
                if (j < width && src >= 0) s[j] += dp * to_f32(x[(r - pos + src) * c + ch]);
            }
        }
    }
    #pragma unroll
    for (int j = 0; j < 8; ++j) lanes[j][threadIdx.y][threadIdx.x] = s[j];
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        for (int j = 0; j < width; ++j) {
            float tsum = 0.f;
            #pragma unroll
            for (int y = 0; y < 8; ++y) tsum += lanes[j][y][threadIdx.x];
            part[((idx_t)blockIdx.y * c + ch) * width + j] = tsum;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cross-entropy over labelled rows, one block per row: loss[i] = lse - logit[target]; correct[i]
// = (argmax == target); dlogits = (softmax - onehot) * dscale (bf16, the lm_head GEMMs' operand)

extern "C" __global__ void cross_entropy(bf16_t* __restrict__ dlogits, float* __restrict__ loss, int* __restrict__ correct, const float* __restrict__ logits, const unsigned* __restrict__ targets, idx_t m, int vocab, float dscale) {
    __shared__ float smax[32];
    __shared__ int sarg[32];
    __shared__ float ssum[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (idx_t i = blockIdx.x; i < m; i += gridDim.x) {
        const float* row = logits + i * vocab;
        float mx = -__int_as_float(0x7f800000);
        int arg = 0;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x)
            if (row[j] > mx) { mx = row[j]; arg = j; }
        // first index of the maximum, like the CPU's strict '>' scan
        for (int o = 16; o > 0; o >>= 1) {
            float om = __shfl_xor_sync(0xffffffffu, mx, o);
            int oa = __shfl_xor_sync(0xffffffffu, arg, o);
            if (om > mx || (om == mx && oa < arg)) { mx = om; arg = oa; }
        }
        if (lane == 0) { smax[wid] = mx; sarg[wid] = arg; }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < nw; ++w)
                if (smax[w] > smax[0] || (smax[w] == smax[0] && sarg[w] < sarg[0])) { smax[0] = smax[w]; sarg[0] = sarg[w]; }
        }
        __syncthreads();
        mx = smax[0];
        float s = 0.f;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += __expf(row[j] - mx);
        s = warp_sum(s);
        if (lane == 0) ssum[wid] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            float tot = 0.f;
            for (int w = 0; w < nw; ++w) tot += ssum[w];
            ssum[0] = tot;
        }
        __syncthreads();
        float lse = mx + logf(ssum[0]);
        unsigned tg = targets[i];
        if (threadIdx.x == 0) {
            loss[i] = lse - row[tg];
            correct[i] = sarg[0] == (int)tg;
        }
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = __expf(row[j] - lse) * dscale;
            dlogits[i * vocab + j] = from_f32<bf16_t>((unsigned)j == tg ? p - dscale : p);
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// optimizer

// part[block] = this block's share of sum x^2 (f64 throughout); sum_f64 adds the blocks in order
extern "C" __global__ void sumsq(double* __restrict__ part_out, const float* __restrict__ x, idx_t n) {
    __shared__ double part[32];
    // f64 from the first square: |g| above 1.8e19 must give a finite norm to clip, as on the CPU
    double s = 0.0;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) s += (double)x[i] * x[i];
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += part[w];
        part_out[blockIdx.x] = t;
    }
}

// out[0] = sum of part[0..n] in order (one thread: n is the few thousand blocks of sumsq)
extern "C" __global__ void sum_f64(double* __restrict__ out, const double* __restrict__ part, int n) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < n; ++i) t += part[i];
        out[0] = t;
    }
}

// AdamW (PyTorch's), gradient pre-scaled by gscale (clipping); writes the f32 master and its
// bf16 copy used by the GEMMs
extern "C" __global__ void adamw(float* __restrict__ p, bf16_t* __restrict__ p16, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, idx_t n, float lr, float b1, float b2, float eps, float wd, float bc1, float bc2, float gscale) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        float gi = g[i] * gscale, pi = p[i];
        pi -= lr * wd * pi;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        pi -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        p16[i] = from_f32<bf16_t>(pi);
    }
}
