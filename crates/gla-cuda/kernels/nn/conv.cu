// nn/conv.cu: the causal depthwise short convolution + SiLU per sequence of t rows (fla's
// ShortConvolution, no bias), forward, decode and backward (contract: nn/common.cuh):
//     pre[s, ch] = sum_j w[ch, j] x[s - (W-1) + j, ch],   y = silu(pre);   w [C, W] f32, W <= 8
// `silu = 0` drops the activation (fla's ShortConvolution(activation=None): DeltaNet's q and k
// with a qk_activation other than silu): y = pre, and the backward passes dy through. pre is
// not stored: the backward recomputes it (in f32) from x, which it reads anyway for dw.
//
// conv_fwd_w{W} / conv_bwd_w{W} (W = 1 .. 8, the launcher picks by width): the same contracts,
// run where c % 4 == 0 and every buffer is 16-byte aligned (src/conv.rs checks; else the
// per-element kernels below, which are also the fast ones' reference in gla-check's `nn-conv`
// rows). A lane holds 4 channels (8-byte bf16 and 16-byte f32 accesses), a warp 128 channels of
// CONV_RS consecutive rows with the last W inputs (and in the backward the next W dpre) in
// registers, so each element is loaded about once instead of W times and no index is divided per
// element. Grid: x over 128-channel tiles, y over tiles of CONV_WARPS x CONV_RS rows (strided when
// the grid is smaller); block 256 threads. The backward computes dpre once for dx and dw, and writes
// one partial row of dw per block y (part[y, ch * W + j], its warps summed in order), for
// col_finalize; pre comes from the same registers of x as dw's terms.
//
// Entry points: conv_fwd conv_cache_update conv_decode conv_bwd_dx conv_bwd_dw
//   conv_fwd_w1 conv_fwd_w2 conv_fwd_w3 conv_fwd_w4 conv_fwd_w5 conv_fwd_w6 conv_fwd_w7 conv_fwd_w8
//   conv_bwd_w1 conv_bwd_w2 conv_bwd_w3 conv_bwd_w4 conv_bwd_w5 conv_bwd_w6 conv_bwd_w7 conv_bwd_w8

// cache: null (zeros before each sequence) or the last W inputs before it, `[B, C, W]` f32 with
// the newest last (fla's conv_state; inference): position p < 0 of sequence b reads
// cache[(b*C + ch)*W + W + p]
extern "C" __global__ void conv_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, const float* __restrict__ w, const float* __restrict__ cache, idx_t n, int t, int c, int width, int silu) {
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
extern "C" __global__ void conv_decode(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, const float* __restrict__ w, const unsigned long long* __restrict__ caches, idx_t nseq, int c, int width, int silu) {
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
        y[i] = from_f32<bf16_t>(silu ? swishf_(acc) : acc);
    }
}

// dpre = dy * silu'(pre), or dy without the activation
__device__ __forceinline__ float dsilu(float d, float p, int silu) { return silu ? d * dswishf_(p) : d; }

// pre at row r (position s of its sequence), channel ch: conv_fwd's sum without a cache
__device__ __forceinline__ float conv_pre_at(const bf16_t* __restrict__ x, const float* __restrict__ w, idx_t r, int s, int c, int ch, int width) {
    float acc = 0.f;
    for (int j = 0; j < width; ++j) {
        const int src = s + j - (width - 1);
        if (src >= 0) acc += w[ch * width + j] * to_f32(x[(r - s + src) * c + ch]);
    }
    return acc;
}

// dx[src, ch] = sum_j w[ch, j] dpre[src + W-1-j, ch], dpre = dy * silu'(pre); dx bf16 (GEMM operand)
extern "C" __global__ void conv_bwd_dx(bf16_t* __restrict__ dx, const float* __restrict__ dy, const bf16_t* __restrict__ x, const float* __restrict__ w, idx_t n, int t, int c, int width, int silu) {
    idx_t total = n * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ch = (int)(i % c);
        idx_t r = i / c;
        int src = (int)(r % t);
        float acc = 0.f;
        for (int j = 0; j < width; ++j) {
            int s = src + width - 1 - j;
            if (s < t) {
                const idx_t rs = r - src + s;
                acc += w[ch * width + j] * dsilu(dy[rs * c + ch], silu ? conv_pre_at(x, w, rs, s, c, ch, width) : 0.f, silu);
            }
        }
        dx[i] = from_f32<bf16_t>(acc);
    }
}

// dw[ch, j] += sum_r dpre[r, ch] x[r - (W-1) + j, ch] within each sequence; W <= 8. Partials:
// block y writes part[y, ch * W + j]; col_finalize over C * W columns adds them to dw
extern "C" __global__ void conv_bwd_dw(float* __restrict__ part, const float* __restrict__ dy, const bf16_t* __restrict__ x, const float* __restrict__ w, idx_t n, int t, int c, int width, int silu) {
    __shared__ float lanes[8][8][33];
    int ch = blockIdx.x * 32 + threadIdx.x;
    float s[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = 0.f;
    if (ch < c) {
        for (idx_t r = blockIdx.y * 8 + threadIdx.y; r < n; r += (idx_t)gridDim.y * 8) {
            int pos = (int)(r % t);
            float dp = dsilu(dy[r * c + ch], silu ? conv_pre_at(x, w, r, pos, c, ch, width) : 0.f, silu);
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

constexpr int CONV_RS = 16;    // rows a warp walks per tile
constexpr int CONV_WARPS = 8;  // warps a block (one row tile each)
constexpr int CONV_CPL = 4;    // channels a lane (8 would double the registers: one block per SM)

static_assert(CONV_CPL == 4, "the lanes' accesses are nn/common.cuh's 4-wide ones");
template <int W>
__device__ __forceinline__ void conv_wts(float (&wr)[W][CONV_CPL], const float* __restrict__ w, int ch) {
    #pragma unroll
    for (int i = 0; i < CONV_CPL; ++i) {
        #pragma unroll
        for (int j = 0; j < W; ++j) wr[j][i] = w[(ch + i) * W + j];
    }
}
// xw[j] = x[r0 - (W-1) + j] for j < W - 1 (zero before row 0; the position masks drop rows of an
// earlier sequence)
template <int W>
__device__ __forceinline__ void conv_halo(float (&xw)[W][CONV_CPL], const bf16_t* __restrict__ x, idx_t r0, int c, int ch) {
    #pragma unroll
    for (int j = 0; j + 1 < W; ++j) {
        const idx_t rr = r0 - (W - 1) + j;
        if (rr >= 0) ld_bf4(xw[j], x + rr * c + ch);
        else {
            #pragma unroll
            for (int i = 0; i < CONV_CPL; ++i) xw[j][i] = 0.f;
        }
    }
}
template <int N>
__device__ __forceinline__ void conv_shift(float (&a)[N][CONV_CPL]) {
    #pragma unroll
    for (int j = 0; j + 1 < N; ++j) {
        #pragma unroll
        for (int i = 0; i < CONV_CPL; ++i) a[j][i] = a[j + 1][i];
    }
}

template <int W>
__device__ __forceinline__ void conv_fwd_t(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, const float* __restrict__ w,
                                           const float* __restrict__ cache, idx_t n, int t, int c, int silu) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ch = (blockIdx.x * 32 + lane) * CONV_CPL;
    if (ch >= c) return;
    float wr[W][CONV_CPL];
    conv_wts<W>(wr, w, ch);
    for (idx_t r0 = ((idx_t)blockIdx.y * CONV_WARPS + warp) * CONV_RS; r0 < n; r0 += (idx_t)gridDim.y * CONV_WARPS * CONV_RS) {
        float xw[W][CONV_CPL];  // xw[j] = x[r - (W-1) + j]
        conv_halo<W>(xw, x, r0, c, ch);
        const idx_t r1 = r0 + CONV_RS < n ? r0 + CONV_RS : n;
        int p = (int)(r0 % t);  // r's position in its sequence
        #pragma unroll 2
        for (idx_t r = r0; r < r1; ++r) {
            ld_bf4(xw[W - 1], x + r * c + ch);
            float a[CONV_CPL] = {};
            #pragma unroll
            for (int j = 0; j < W; ++j) {
                if (j >= W - 1 - p) {
                    #pragma unroll
                    for (int i = 0; i < CONV_CPL; ++i) a[i] += wr[j][i] * xw[j][i];
                } else if (cache) {
                    const float* cr = cache + ((r / t) * c + ch) * W + p + 1 + j;
                    #pragma unroll
                    for (int i = 0; i < CONV_CPL; ++i) a[i] += wr[j][i] * cr[i * W];
                }
            }
            #pragma unroll
            for (int i = 0; i < CONV_CPL; ++i) a[i] = silu ? swishf_(a[i]) : a[i];
            st_bf4(y + r * c + ch, a);
            conv_shift(xw);
            if (++p == t) p = 0;
        }
    }
}

template <int W>
__device__ __forceinline__ void conv_bwd_t(bf16_t* __restrict__ dx, float* __restrict__ part, const float* __restrict__ dy, const bf16_t* __restrict__ x,
                                           const float* __restrict__ w, idx_t n, int t, int c, int silu) {
    __shared__ float red[CONV_WARPS][32 * CONV_CPL];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ch = (blockIdx.x * 32 + lane) * CONV_CPL;
    float sw[W][CONV_CPL];  // this lane's dw partial sums
    #pragma unroll
    for (int j = 0; j < W; ++j) {
        #pragma unroll
        for (int i = 0; i < CONV_CPL; ++i) sw[j][i] = 0.f;
    }
    if (ch < c) {
        float wr[W][CONV_CPL];
        conv_wts<W>(wr, w, ch);
        for (idx_t r0 = ((idx_t)blockIdx.y * CONV_WARPS + warp) * CONV_RS; r0 < n; r0 += (idx_t)gridDim.y * CONV_WARPS * CONV_RS) {
            float xw[W][CONV_CPL];  // xw[j] = x[s - (W-1) + j]
            conv_halo<W>(xw, x, r0, c, ch);
            float dw[W][CONV_CPL] = {};  // dw[j] = dpre[s - (W-1) + j] (rows before r0 are never read)
            const idx_t r1 = r0 + CONV_RS < n ? r0 + CONV_RS : n;
            int ps = (int)(r0 % t), pe = ps;  // positions of s and of the next dx row, s - (W-1)
            // s walks the tile and the W - 1 rows after it (dx reads dpre up to W - 1 rows ahead,
            // so x's window runs on through them too)
            #pragma unroll 2
            for (idx_t s = r0; s < r1 + (W - 1); ++s) {
                float d[CONV_CPL] = {};
                if (s < n) {
                    // x[s] into the window; pre[s] from it (conv_fwd's sum), then dpre
                    float g[CONV_CPL], pv[CONV_CPL] = {};
                    ld_bf4(xw[W - 1], x + s * c + ch);
                    ld_f4(g, dy + s * c + ch);
                    #pragma unroll
                    for (int j = 0; j < W; ++j) {
                        if (j >= W - 1 - ps) {
                            #pragma unroll
                            for (int i = 0; i < CONV_CPL; ++i) pv[i] += wr[j][i] * xw[j][i];
                        }
                    }
                    #pragma unroll
                    for (int i = 0; i < CONV_CPL; ++i) d[i] = dsilu(g[i], pv[i], silu);
                    if (s < r1) {
                        #pragma unroll
                        for (int j = 0; j < W; ++j) {
                            if (j >= W - 1 - ps) {
                                #pragma unroll
                                for (int i = 0; i < CONV_CPL; ++i) sw[j][i] += d[i] * xw[j][i];
                            }
                        }
                    }
                    conv_shift(xw);
                }
                conv_shift(dw);
                #pragma unroll
                for (int i = 0; i < CONV_CPL; ++i) dw[W - 1][i] = d[i];
                if (s >= r0 + (W - 1)) {
                    // dx[s - (W-1)] = sum_j w[j] dpre[s - j], rows of the same sequence only
                    float a[CONV_CPL] = {};
                    #pragma unroll
                    for (int j = 0; j < W; ++j) {
                        if (W - 1 - j < t - pe) {
                            #pragma unroll
                            for (int i = 0; i < CONV_CPL; ++i) a[i] += wr[j][i] * dw[W - 1 - j][i];
                        }
                    }
                    st_bf4(dx + (s - (W - 1)) * c + ch, a);
                    if (++pe == t) pe = 0;
                }
                if (++ps == t) ps = 0;
            }
        }
    }
    // the block's partial row: per tap, the warps' sums in warp order
    const int cc = blockIdx.x * 32 * CONV_CPL + threadIdx.x;
    #pragma unroll
    for (int j = 0; j < W; ++j) {
        #pragma unroll
        for (int i = 0; i < CONV_CPL; ++i) red[warp][lane * CONV_CPL + i] = sw[j][i];
        __syncthreads();
        if (threadIdx.x < 32 * CONV_CPL && cc < c) {
            float a = 0.f;
            #pragma unroll
            for (int v = 0; v < CONV_WARPS; ++v) a += red[v][threadIdx.x];
            part[((idx_t)blockIdx.y * c + cc) * W + j] = a;
        }
        __syncthreads();
    }
}

#define CONV_ENTRIES(W)                                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) conv_fwd_w##W(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, \
                                                                    const float* __restrict__ w, const float* __restrict__ cache, idx_t n, int t, int c, int silu) { \
        conv_fwd_t<W>(y, x, w, cache, n, t, c, silu);                                                                       \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) conv_bwd_w##W(bf16_t* __restrict__ dx, float* __restrict__ part, const float* __restrict__ dy, \
                                                                    const bf16_t* __restrict__ x, const float* __restrict__ w, idx_t n, int t, int c, \
                                                                    int silu) {                                                  \
        conv_bwd_t<W>(dx, part, dy, x, w, n, t, c, silu);                                                                        \
    }
CONV_ENTRIES(1)
CONV_ENTRIES(2)
CONV_ENTRIES(3)
CONV_ENTRIES(4)
CONV_ENTRIES(5)
CONV_ENTRIES(6)
CONV_ENTRIES(7)
CONV_ENTRIES(8)
