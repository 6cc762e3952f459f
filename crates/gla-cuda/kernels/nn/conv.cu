// nn/conv.cu: the causal depthwise short convolution + SiLU per sequence of t rows (fla's
// ShortConvolution, no bias), forward, decode and backward (contract: nn/common.cuh):
//     pre[s, ch] = sum_j w[ch, j] x[s - (W-1) + j, ch],   y = silu(pre);   w [C, W] f32, W <= 8
// `silu = 0` drops the activation (fla's ShortConvolution(activation=None): DeltaNet's q and k
// with a qk_activation other than silu): y = pre, and the backward passes dy through.

// cache: null (zeros before each sequence) or the last W inputs before it, `[B, C, W]` f32 with
// the newest last (fla's conv_state; inference): position p < 0 of sequence b reads
// cache[(b*C + ch)*W + W + p]
extern "C" __global__ void conv_fwd(bf16_t* __restrict__ y, bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ cache, idx_t n, int t, int c, int width, int silu) {
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
        y[i] = from_f32<bf16_t>(silu ? swishf_(acc) : acc);
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
extern "C" __global__ void conv_decode(bf16_t* __restrict__ y, bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, const float* __restrict__ w, const unsigned long long* __restrict__ caches, idx_t nseq, int c, int width, int silu) {
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
        y[i] = from_f32<bf16_t>(silu ? swishf_(acc) : acc);
    }
}

// dpre = dy * silu'(pre), or dy without the activation
__device__ __forceinline__ float dsilu(float d, float p, int silu) { return silu ? d * dswishf_(p) : d; }

// dx[src, ch] = sum_j w[ch, j] dpre[src + W-1-j, ch], dpre = dy * silu'(pre); dx bf16 (GEMM operand)
extern "C" __global__ void conv_bwd_dx(bf16_t* __restrict__ dx, const float* __restrict__ dy, const bf16_t* __restrict__ pre, const float* __restrict__ w, idx_t n, int t, int c, int width, int silu) {
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
                acc += w[ch * width + j] * dsilu(dy[k], to_f32(pre[k]), silu);
            }
        }
        dx[i] = from_f32<bf16_t>(acc);
    }
}

// dw[ch, j] += sum_r dpre[r, ch] x[r - (W-1) + j, ch] within each sequence; W <= 8. Partials:
// block y writes part[y, ch * W + j]; col_finalize over C * W columns adds them to dw
extern "C" __global__ void conv_bwd_dw(float* __restrict__ part, const float* __restrict__ dy, const bf16_t* __restrict__ pre, const bf16_t* __restrict__ x, idx_t n, int t, int c, int width, int silu) {
    __shared__ float lanes[8][8][33];
    int ch = blockIdx.x * 32 + threadIdx.x;
    float s[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = 0.f;
    if (ch < c) {
        for (idx_t r = blockIdx.y * 8 + threadIdx.y; r < n; r += (idx_t)gridDim.y * 8) {
            int pos = (int)(r % t);
            float dp = dsilu(dy[r * c + ch], to_f32(pre[r * c + ch]), silu);
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
