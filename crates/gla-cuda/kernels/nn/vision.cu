// nn/vision.cu: the vision ops of ViG (gla-core's `VisionOps`; src/vision.rs launches them) around
// the cuBLAS GEMMs (contract: nn/common.cuh). Images are channels-last `[B, H, W, C]` row-major;
// a token map `[B, h, w, D]` is its rows in raster order. The CPU ops (gla-model/src/ops.rs,
// "Vision ops") are the reference; math in f32.
//
// - im2col / col2im: the patch convolutions' matrix `cols [B*Ho*Wo, C*k*k]`, columns in the
//   order (c, ky, kx) of PyTorch's flattened weight `[C_out, C, k, k]`, zeros in the padding;
//   col2im is its transpose, one thread per input element summing the taps that read it (no
//   atomics).
// - bias, LayerNorm over rows (stats = mean, rstd per row), the 3x3 depthwise conv (zero pad 1,
//   weight `[C, 1, 3, 3]` f32), the position embedding's bicubic resize (PyTorch's
//   `F.interpolate(mode="bicubic", align_corners=False)`, A = -0.75, border reads clamped; the
//   taps computed in-kernel as gla-model's `bicubic_taps`), the average pool, column copies,
//   ViG's locality gate and the label-smoothed cross-entropy.
// - parameter gradients accumulate through col_reduce partials + col_finalize (deterministic);
//   the position embedding's gradient is one thread per element of `dpe` summing everything
//   that reads it in a fixed order.

// ---- patch convolutions

// The patch convolutions' index arithmetic in I (int when every index fits, the common case:
// 64-bit divisions per element made these launches compute-bound; else idx_t).
template <typename I>
__device__ __forceinline__ void im2col_body(bf16_t* __restrict__ cols, const bf16_t* __restrict__ x, int b, int h, int w, int c, int k, int stride, int pad, int ho, int wo) {
    const int nc = c * k * k;
    const I total = (I)b * ho * wo * nc;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const int col = (int)(i % nc);
        const I r = i / nc;
        const int ox = (int)(r % wo), oy = (int)((r / wo) % ho);
        const I bi = r / ((I)wo * ho);
        const int kx = col % k, ky = (col / k) % k, ci = col / (k * k);
        const int y = oy * stride + ky - pad, xx = ox * stride + kx - pad;
        bf16_t v = 0;
        if (y >= 0 && y < h && xx >= 0 && xx < w) v = x[((bi * h + y) * w + xx) * c + ci];
        cols[i] = v;
    }
}

// Columns of one im2col row that the tabulated path holds (its shared table is 16 KB).
#define IM2COL_TAB 4096

// im2col by rows: one warp per output pixel (row r of cols), its lanes over the row's nc
// columns, each column's (ci, ky, kx) read from a table the block builds once (packed
// ci << 16 | ky << 8 | kx; needs nc <= IM2COL_TAB, k < 256, c < 65536). Per element a table
// read, four compares and the copy, where im2col_body divides the flat index eight times (the
// divisions made it compute-bound); the same values.
template <typename I>
__device__ __forceinline__ void im2col_rows(bf16_t* __restrict__ cols, const bf16_t* __restrict__ x, const unsigned* tab, int b, int h, int w, int c, int k, int stride, int pad, int ho, int wo) {
    const int nc = c * k * k, lane = threadIdx.x & 31;
    const I rows = (I)b * ho * wo;
    for (I r = (blockIdx.x * (I)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((I)gridDim.x * blockDim.x) >> 5) {
        const int ox = (int)(r % wo), oy = (int)((r / wo) % ho);
        const I bi = r / ((I)wo * ho);
        const int y0 = oy * stride - pad, x0 = ox * stride - pad;
        const bf16_t* __restrict__ xb = x + bi * h * w * c;
        bf16_t* __restrict__ row = cols + r * nc;
        for (int col = lane; col < nc; col += 32) {
            const unsigned e = tab[col];
            const int ci = (int)(e >> 16), y = y0 + (int)((e >> 8) & 255u), xx = x0 + (int)(e & 255u);
            bf16_t v = 0;
            if (y >= 0 && y < h && xx >= 0 && xx < w) v = xb[((I)y * w + xx) * c + ci];
            row[col] = v;
        }
    }
}

// cols[r, (ci*k + ky)*k + kx] = x[b, oy*s + ky - pad, ox*s + kx - pad, ci] (0 outside); bf16
extern "C" __global__ void im2col_bf16(bf16_t* __restrict__ cols, const bf16_t* __restrict__ x, int b, int h, int w, int c, int k, int stride, int pad, int ho, int wo) {
    __shared__ unsigned tab[IM2COL_TAB];
    const int nc = c * k * k;
    const idx_t n_out = (idx_t)b * ho * wo * nc, n_in = (idx_t)b * h * w * c;
    const bool fits = n_out < 0x7fffffffLL - (idx_t)gridDim.x * blockDim.x && n_in < 0x7fffffffLL;
    if (nc <= IM2COL_TAB && k < 256 && c < 65536) {
        for (int col = threadIdx.x; col < nc; col += blockDim.x)
            tab[col] = ((unsigned)(col / (k * k)) << 16) | ((unsigned)((col / k) % k) << 8) | (unsigned)(col % k);
        __syncthreads();
        if (fits) im2col_rows<int>(cols, x, tab, b, h, w, c, k, stride, pad, ho, wo);
        else im2col_rows<idx_t>(cols, x, tab, b, h, w, c, k, stride, pad, ho, wo);
        return;
    }
    if (fits) im2col_body<int>(cols, x, b, h, w, c, k, stride, pad, ho, wo);
    else im2col_body<idx_t>(cols, x, b, h, w, c, k, stride, pad, ho, wo);
}

template <typename I>
__device__ __forceinline__ void col2im_body(float* __restrict__ dx, const float* __restrict__ dcols, int b, int h, int w, int c, int k, int stride, int pad, int ho, int wo) {
    const int nc = c * k * k;
    const I total = (I)b * h * w * c;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const int ci = (int)(i % c);
        const I p = i / c;
        const int xx = (int)(p % w), y = (int)((p / w) % h);
        const I bi = p / ((I)w * h);
        float s = 0.f;
        for (int ky = 0; ky < k; ++ky) {
            const int ty = y + pad - ky;
            if (ty < 0 || ty % stride != 0 || ty / stride >= ho) continue;
            const int oy = ty / stride;
            for (int kx = 0; kx < k; ++kx) {
                const int tx = xx + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= wo) continue;
                const int ox = tx / stride;
                s += dcols[((bi * ho + oy) * wo + ox) * nc + (ci * k + ky) * k + kx];
            }
        }
        dx[i] = s;
    }
}

// dx[b, y, x, ci] = sum over the (oy, ky), (ox, kx) with o*s + k - pad = the pixel of
// dcols[(b, oy, ox), (ci, ky, kx)]; f32, overwrites
extern "C" __global__ void col2im_f32(float* __restrict__ dx, const float* __restrict__ dcols, int b, int h, int w, int c, int k, int stride, int pad, int ho, int wo) {
    const idx_t n_cols = (idx_t)b * ho * wo * c * k * k, n_out = (idx_t)b * h * w * c;
    if (n_cols < 0x7fffffffLL && n_out < 0x7fffffffLL - (idx_t)gridDim.x * blockDim.x) col2im_body<int>(dx, dcols, b, h, w, c, k, stride, pad, ho, wo);
    else col2im_body<idx_t>(dx, dcols, b, h, w, c, k, stride, pad, ho, wo);
}

// ---- bias

// y[r, j] += bias[j] (f32)
extern "C" __global__ void bias_fwd_f32(float* __restrict__ y, const float* __restrict__ bias, idx_t n, int c) {
    const idx_t total = n * c, i0 = blockIdx.x * (idx_t)blockDim.x + threadIdx.x, stride = (idx_t)gridDim.x * blockDim.x;
    ColStep col(i0, stride, c);
    for (idx_t i = i0; i < total; i += stride, col.next()) y[i] += bias[col.col];
}

struct ColSumBf16 {
    const bf16_t* x;
    int c;
    __device__ float operator()(idx_t r, int j) const { return to_f32(x[r * c + j]); }
};
// partials of db[j] += sum_r dy[r, j] (dy bf16, the GEMM operand)
extern "C" __global__ void colsum_bf16(float* part, const bf16_t* x, idx_t n, int c) { col_reduce(part, n, c, ColSumBf16{x, c}); }

// ---- LayerNorm over rows of c (one warp per row)

// y = (x - mean) * rstd * w + b (bf16), stats[2r] = mean, stats[2r+1] = rstd (two-pass variance)
extern "C" __global__ void layernorm_fwd(bf16_t* __restrict__ y, float* __restrict__ stats, const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b, idx_t n, int c, float eps) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < n; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        const float* xr = x + r * c;
        float s = 0.f;
        for (int j = lane; j < c; j += 32) s += xr[j];
        float mean = warp_sum(s) / c;
        float v = 0.f;
        for (int j = lane; j < c; j += 32) v += (xr[j] - mean) * (xr[j] - mean);
        float rs = rsqrtf(warp_sum(v) / c + eps);
        if (lane == 0) {
            stats[2 * r] = mean;
            stats[2 * r + 1] = rs;
        }
        for (int j = lane; j < c; j += 32) y[r * c + j] = from_f32<bf16_t>((xr[j] - mean) * rs * w[j] + b[j]);
    }
}

// dx = rstd * (dy*w - mean(dy*w) - xh * mean(dy*w*xh)), xh = (x - mean) * rstd; f32, overwrites
extern "C" __global__ void layernorm_bwd_dx(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ stats, const float* __restrict__ w, idx_t n, int c) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < n; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        const float *dyr = dy + r * c, *xr = x + r * c;
        float mean = stats[2 * r], rs = stats[2 * r + 1];
        float s1 = 0.f, s2 = 0.f;
        for (int j = lane; j < c; j += 32) {
            float g = dyr[j] * w[j];
            s1 += g;
            s2 += g * (xr[j] - mean) * rs;
        }
        float m1 = warp_sum(s1) / c, m2 = warp_sum(s2) / c;
        for (int j = lane; j < c; j += 32) dx[r * c + j] = rs * (dyr[j] * w[j] - m1 - (xr[j] - mean) * rs * m2);
    }
}

// partials of dw[j] += sum_r dy * xh (part[y, j]) and db[j] += sum_r dy (part[gy + y, j]), with
// gy = gridDim.y: col_finalize adds each half to its parameter
extern "C" __global__ void layernorm_bwd_dw(float* __restrict__ part, const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ stats, idx_t n, int c) {
    __shared__ float lanes[2][8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    float sw = 0.f, sb = 0.f;
    if (j < c)
        for (idx_t r = blockIdx.y * 8 + threadIdx.y; r < n; r += (idx_t)gridDim.y * 8) {
            float d = dy[r * c + j];
            sw += d * (x[r * c + j] - stats[2 * r]) * stats[2 * r + 1];
            sb += d;
        }
    lanes[0][threadIdx.y][threadIdx.x] = sw;
    lanes[1][threadIdx.y][threadIdx.x] = sb;
    __syncthreads();
    if (threadIdx.y == 0 && j < c) {
        float tw = 0.f, tb = 0.f;
        #pragma unroll
        for (int y = 0; y < 8; ++y) {
            tw += lanes[0][y][threadIdx.x];
            tb += lanes[1][y][threadIdx.x];
        }
        part[(idx_t)blockIdx.y * c + j] = tw;
        part[((idx_t)gridDim.y + blockIdx.y) * c + j] = tb;
    }
}

// ---- 3x3 depthwise conv, zero padding 1, weight [C, 1, 3, 3] f32 (tap t = ky*3 + kx)

// Channels whose taps the vectorised kernels stage in shared memory (27 KB, static).
#define DW_SMEM_C 768

// The 8-channel groups of the two element-wise depthwise kernels: with C % 8 == 0 and 16-byte
// aligned buffers (a uniform test) one thread per (pixel, 8 channels), 16-byte loads and stores,
// the taps summed in the same order as the one-channel path (bitwise the same results). The taps
// come from `wsh` ([9][C], the block's copy) where C <= DW_SMEM_C: there the lanes of a warp read
// consecutive channels of one tap, where from `wt` ([C][9]) each lane's 72 reads hit a sector of
// their own (16 times the L1 traffic of the pixels; it bounded the kernel). Index arithmetic in I
// as im2col's.
template <typename I, typename X, typename Y>
__device__ __forceinline__ void dwconv3_v8(Y* __restrict__ y, const X* __restrict__ x, const float* __restrict__ wt, const float* wsh, int b, int h, int w, int c, bool transpose) {
    const int cg = c >> 3;
    const I total = (I)b * h * w * cg;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const int c0 = 8 * (int)(i % cg);
        const I p = i / cg;
        const int px = (int)(p % w), py = (int)((p / w) % h);
        const I bi = p / ((I)w * h);
        float s[8];
        #pragma unroll
        for (int k = 0; k < 8; ++k) s[k] = 0.f;
        for (int ky = 0; ky < 3; ++ky) {
            const int sy = transpose ? py - ky + 1 : py + ky - 1;
            if (sy < 0 || sy >= h) continue;
            for (int kx = 0; kx < 3; ++kx) {
                const int sx = transpose ? px - kx + 1 : px + kx - 1;
                if (sx < 0 || sx >= w) continue;
                float v[8], wk[8];
                ld8(x + ((bi * h + sy) * w + sx) * c + c0, v);
                if (wsh != nullptr) {
                    ld8(wsh + (ky * 3 + kx) * c + c0, wk);
                } else {
                    #pragma unroll
                    for (int k = 0; k < 8; ++k) wk[k] = wt[(c0 + k) * 9 + ky * 3 + kx];
                }
                #pragma unroll
                for (int k = 0; k < 8; ++k) s[k] += wk[k] * v[k];
            }
        }
        st8(y + p * c + c0, s);
    }
}
__device__ __forceinline__ bool dw_vec(int c, const void* a, const void* b) {
    return (c & 7) == 0 && (((unsigned long long)a | (unsigned long long)b) & 15) == 0;
}
// The vectorised path of dwconv3_fwd / dwconv3_bwd_dx: the block's copy of the taps when C fits,
// int indices when every index does.
template <typename X, typename Y>
__device__ __forceinline__ void dwconv3_vec(Y* __restrict__ y, const X* __restrict__ x, const float* __restrict__ wt, float* wsh, int b, int h, int w, int c, bool transpose) {
    const float* taps = nullptr;
    if (c <= DW_SMEM_C) {
        for (int e = threadIdx.x; e < 9 * c; e += blockDim.x) wsh[e] = wt[(e % c) * 9 + e / c];
        __syncthreads();
        taps = wsh;
    }
    if ((idx_t)b * h * w * c < 0x7fffffffLL - 8 * (idx_t)gridDim.x * blockDim.x) dwconv3_v8<int>(y, x, wt, taps, b, h, w, c, transpose);
    else dwconv3_v8<idx_t>(y, x, wt, taps, b, h, w, c, transpose);
}

// y[b, py, px, ci] = sum_t w[ci, t] x[b, py + ky - 1, px + kx - 1, ci] (bf16 in and out)
extern "C" __global__ void dwconv3_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, const float* __restrict__ wt, int b, int h, int w, int c) {
    __align__(16) __shared__ float wsh[9 * DW_SMEM_C];
    if (dw_vec(c, x, y)) {
        dwconv3_vec(y, x, wt, wsh, b, h, w, c, false);
        return;
    }
    idx_t total = (idx_t)b * h * w * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        idx_t p = i / c;
        int px = (int)(p % w), py = (int)((p / w) % h);
        idx_t bi = p / ((idx_t)w * h);
        float s = 0.f;
        for (int ky = 0; ky < 3; ++ky) {
            int sy = py + ky - 1;
            if (sy < 0 || sy >= h) continue;
            for (int kx = 0; kx < 3; ++kx) {
                int sx = px + kx - 1;
                if (sx < 0 || sx >= w) continue;
                s += wt[ci * 9 + ky * 3 + kx] * to_f32(x[((bi * h + sy) * w + sx) * c + ci]);
            }
        }
        y[i] = from_f32<bf16_t>(s);
    }
}

// dx[b, sy, sx, ci] = sum_t w[ci, t] dy[b, sy - ky + 1, sx - kx + 1, ci] (f32, overwrites)
extern "C" __global__ void dwconv3_bwd_dx(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ wt, int b, int h, int w, int c) {
    __align__(16) __shared__ float wsh[9 * DW_SMEM_C];
    if (dw_vec(c, dx, dy)) {
        dwconv3_vec(dx, dy, wt, wsh, b, h, w, c, true);
        return;
    }
    idx_t total = (idx_t)b * h * w * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int ci = (int)(i % c);
        idx_t p = i / c;
        int sx = (int)(p % w), sy = (int)((p / w) % h);
        idx_t bi = p / ((idx_t)w * h);
        float s = 0.f;
        for (int ky = 0; ky < 3; ++ky) {
            int py = sy - ky + 1;
            if (py < 0 || py >= h) continue;
            for (int kx = 0; kx < 3; ++kx) {
                int px = sx - kx + 1;
                if (px < 0 || px >= w) continue;
                s += wt[ci * 9 + ky * 3 + kx] * dy[((bi * h + py) * w + px) * c + ci];
            }
        }
        dx[i] = s;
    }
}

// The pixel loop of dwconv3_bwd_dw, index arithmetic in I (as im2col's): thread (x, y) of
// block (bx, by) sums channel ci's 9 taps over pixels by*8 + y, stepping gridDim.y * 8.
template <typename I>
__device__ __forceinline__ void dwconv3_dw_sums(float* s, const float* __restrict__ dy, const bf16_t* __restrict__ x, int ci, int b, int h, int w, int c) {
    const I n = (I)b * h * w;
    for (I p = blockIdx.y * 8 + threadIdx.y; p < n; p += (I)gridDim.y * 8) {
        const int px = (int)(p % w), py = (int)((p / w) % h);
        const I bi = p / ((I)w * h);
        const float d = dy[p * c + ci];
        #pragma unroll
        for (int t = 0; t < 9; ++t) {
            const int sy = py + t / 3 - 1, sx = px + t % 3 - 1;
            if (sy >= 0 && sy < h && sx >= 0 && sx < w) s[t] += d * to_f32(x[((bi * h + sy) * w + sx) * c + ci]);
        }
    }
}

// partials of dw[ci, t] += sum over pixels of dy[p, ci] x[p + tap offset, ci]: block y writes
// part[(y*C + ci)*9 + t]; col_finalize over C*9 columns adds them
extern "C" __global__ void dwconv3_bwd_dw(float* __restrict__ part, const float* __restrict__ dy, const bf16_t* __restrict__ x, int b, int h, int w, int c) {
    __shared__ float lanes[9][8][33];
    int ci = blockIdx.x * 32 + threadIdx.x;
    float s[9];
    #pragma unroll
    for (int t = 0; t < 9; ++t) s[t] = 0.f;
    if (ci < c) {
        if ((idx_t)b * h * w * c < 0x7fffffffLL - 8 * (idx_t)gridDim.y * c) dwconv3_dw_sums<int>(s, dy, x, ci, b, h, w, c);
        else dwconv3_dw_sums<idx_t>(s, dy, x, ci, b, h, w, c);
    }
    #pragma unroll
    for (int t = 0; t < 9; ++t) lanes[t][threadIdx.y][threadIdx.x] = s[t];
    __syncthreads();
    if (threadIdx.y == 0 && ci < c) {
        for (int t = 0; t < 9; ++t) {
            float tsum = 0.f;
            #pragma unroll
            for (int y = 0; y < 8; ++y) tsum += lanes[t][y][threadIdx.x];
            part[((idx_t)blockIdx.y * c + ci) * 9 + t] = tsum;
        }
    }
}

// ---- position embedding: bicubic resize of pe [hs*ws, D] to (h, w)

// the weight of source sample `s` in output sample `i` of one axis resized src -> dst (the sum
// of the taps that clamp onto s), as gla-model's bicubic_taps (in double, rounded to f32)
__device__ __forceinline__ float bicubic_weight(int src, int dst, int i, int s) {
    const double A = -0.75;
    double real = (double)src / dst * (i + 0.5) - 0.5;
    double base = floor(real), t = real - base;
    double wts[4];
    double x = t + 1.0;
    wts[0] = ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    wts[1] = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    x = 1.0 - t;
    wts[2] = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    x = 2.0 - t;
    wts[3] = ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    float wsum = 0.f;
    for (int j = 0; j < 4; ++j) {
        long long idx = (long long)base - 1 + j;
        idx = idx < 0 ? 0 : (idx > src - 1 ? src - 1 : idx);
        if (idx == s) wsum += (float)wts[j];
    }
    return wsum;
}

// x[bi, (i, j), d] += resize(pe)[(i, j), d] for every image; identity when the grids match
extern "C" __global__ void pos_embed_fwd(float* __restrict__ x, const float* __restrict__ pe, int hs, int ws, int h, int w, int d, int b) {
    idx_t total = (idx_t)h * w * d;
    idx_t img = total;
    for (idx_t e = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; e < total; e += (idx_t)gridDim.x * blockDim.x) {
        int dd = (int)(e % d);
        idx_t l = e / d;
        int j = (int)(l % w), i = (int)(l / w);
        float v = 0.f;
        if (hs == h && ws == w) {
            v = pe[e];
        } else {
            // the four rows and columns the taps can reach (clamped reads folded by the weights)
            double rh = (double)hs / h * (i + 0.5) - 0.5, rw = (double)ws / w * (j + 0.5) - 0.5;
            int bh = (int)floor(rh), bw = (int)floor(rw);
            for (int p = bh - 1; p <= bh + 2; ++p) {
                if (p < 0 || p >= hs) continue;
                float a = bicubic_weight(hs, h, i, p);
                if (a == 0.f) continue;
                for (int q = bw - 1; q <= bw + 2; ++q) {
                    if (q < 0 || q >= ws) continue;
                    float bwt = bicubic_weight(ws, w, j, q);
                    v += a * bwt * pe[((idx_t)p * ws + q) * d + dd];
                }
            }
        }
        for (int bi = 0; bi < b; ++bi) x[bi * img + e] += v;
    }
}

// dpe[(p, q), d] += sum over (i, j) of A[i, p] B[j, q] sum_b dx[b, (i, j), d]; one thread per
// element of dpe, (i, j, b) in order (deterministic)
extern "C" __global__ void pos_embed_bwd(float* __restrict__ dpe, const float* __restrict__ dx, int hs, int ws, int h, int w, int d, int b) {
    idx_t total = (idx_t)hs * ws * d;
    idx_t img = (idx_t)h * w * d;
    bool same = hs == h && ws == w;
    for (idx_t e = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; e < total; e += (idx_t)gridDim.x * blockDim.x) {
        int dd = (int)(e % d);
        idx_t l = e / d;
        int q = (int)(l % ws), p = (int)(l / ws);
        float acc = 0.f;
        if (same) {
            for (int bi = 0; bi < b; ++bi) acc += dx[bi * img + e];
        } else {
            for (int i = 0; i < h; ++i) {
                float a = bicubic_weight(hs, h, i, p);
                if (a == 0.f) continue;
                for (int j = 0; j < w; ++j) {
                    float bwt = bicubic_weight(ws, w, j, q);
                    if (bwt == 0.f) continue;
                    float s = 0.f;
                    for (int bi = 0; bi < b; ++bi) s += dx[bi * img + ((idx_t)i * w + j) * d + dd];
                    acc += a * bwt * s;
                }
            }
        }
        dpe[e] += acc;
    }
}

// ---- average pool over the L tokens of each image

// y[b, d] = mean_l x[b*L + l, d] (bf16 in and out); block (32, 8) per (32-column tile, image):
// 8 row lanes stride over the L rows, then the lanes' sums are added in order
extern "C" __global__ void avgpool_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, int b, idx_t l, int d) {
    __shared__ float lanes[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    for (idx_t bi = blockIdx.y; bi < b; bi += gridDim.y) {
        float s = 0.f;
        if (j < d)
            for (idx_t r = threadIdx.y; r < l; r += 8) s += to_f32(x[(bi * l + r) * d + j]);
        lanes[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && j < d) {
            float t = 0.f;
            #pragma unroll
            for (int yy = 0; yy < 8; ++yy) t += lanes[yy][threadIdx.x];
            y[bi * d + j] = from_f32<bf16_t>(t / (float)l);
        }
        __syncthreads();
    }
}

// dx[b*L + l, d] = dy[b, d] / L (f32)
extern "C" __global__ void avgpool_bwd(float* __restrict__ dx, const float* __restrict__ dy, int b, idx_t l, int d) {
    idx_t total = (idx_t)b * l * d;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int dd = (int)(i % d);
        idx_t bi = i / ((idx_t)l * d);
        dx[i] = dy[bi * d + dd] / (float)l;
    }
}

// ---- column copies (gla-core's Cols): dst[r, doff + j] (+)= scale * src[r', soff + j], r' = r or
// the row at the same position counted from the end of its sequence of t rows (flip). When every
// width and offset is a multiple of 8 elements and both buffers are 16-byte aligned (a uniform
// test), each thread moves groups of 8 elements with 16-byte loads and stores (one index
// division per group, in 32 bits when the group count allows); else one element per thread.

template <typename I, typename D, typename S>
__device__ __forceinline__ void cols_v8(D* __restrict__ dst, const S* __restrict__ src, I total, I t, int wg, int sw, int soff, int dw, int doff, int flip, int acc, float scale) {
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total; i += (I)gridDim.x * blockDim.x) {
        const I r = i / wg;
        const int j = 8 * (int)(i - r * wg);
        I rs = r;
        if (flip) {
            const I pos = r % t;
            rs = r - pos + (t - 1 - pos);
        }
        float v[8];
        ld8(src + (idx_t)rs * sw + soff + j, v);
        D* o = dst + (idx_t)r * dw + doff + j;
        float old[8];
        if (acc) ld8(o, old);
        #pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = acc ? old[k] + scale * v[k] : scale * v[k];
        st8(o, v);
    }
}

template <typename D, typename S>
__device__ __forceinline__ void cols_copy(D* __restrict__ dst, const S* __restrict__ src, idx_t nb, idx_t t, int width, int sw, int soff, int dw, int doff, int flip, int acc, float scale) {
    const bool vec = ((width | sw | soff | dw | doff) & 7) == 0 && (((unsigned long long)src | (unsigned long long)dst) & 15) == 0;
    if (vec) {
        const int wg = width >> 3;
        const idx_t total = nb * t * wg;
        if (total < 0x7fffffffLL - (idx_t)gridDim.x * blockDim.x) cols_v8<int>(dst, src, (int)total, (int)t, wg, sw, soff, dw, doff, flip, acc, scale);
        else cols_v8<idx_t>(dst, src, total, t, wg, sw, soff, dw, doff, flip, acc, scale);
        return;
    }
    idx_t total = nb * t * width;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        int j = (int)(i % width);
        idx_t r = i / width;
        idx_t pos = r % t;
        idx_t rs = flip ? r - pos + (t - 1 - pos) : r;
        float v = scale * to_f32(src[rs * sw + soff + j]);
        D* o = dst + r * dw + doff + j;
        *o = from_f32<D>(acc ? to_f32(*o) + v : v);
    }
}
extern "C" __global__ void cols_bf16(bf16_t* dst, const bf16_t* src, idx_t nb, idx_t t, int width, int sw, int soff, int dw, int doff, int flip, int acc, float scale) {
    cols_copy(dst, src, nb, t, width, sw, soff, dw, doff, flip, acc, scale);
}
extern "C" __global__ void cols_f32(float* dst, const float* src, idx_t nb, idx_t t, int width, int sw, int soff, int dw, int doff, int flip, int acc, float scale) {
    cols_copy(dst, src, nb, t, width, sw, soff, dw, doff, flip, acc, scale);
}
extern "C" __global__ void cols_bf16_f32(float* dst, const bf16_t* src, idx_t nb, idx_t t, int width, int sw, int soff, int dw, int doff, int flip, int acc, float scale) {
    cols_copy(dst, src, nb, t, width, sw, soff, dw, doff, flip, acc, scale);
}

// ---- SwiGLU on the MLP's fused gate / up output ab [n, 2I] (gate columns first):
// h = silu(a) * u (nn/elementwise.cu's swiglu_fwd values); a, u [n, I] copied out when non-null.
// 8-element groups when I % 8 == 0 and the buffers are 16-byte aligned, else one element each.
extern "C" __global__ void swiglu_split_fwd(bf16_t* __restrict__ h, bf16_t* __restrict__ a, bf16_t* __restrict__ u, const bf16_t* __restrict__ ab, idx_t n, int inter) {
    const bool vec = (inter & 7) == 0 && (((unsigned long long)h | (unsigned long long)ab | (unsigned long long)a | (unsigned long long)u) & 15) == 0;
    if (vec) {
        const int ig = inter >> 3;
        const idx_t total = n * ig;
        for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
            const int j = 8 * (int)(i % ig);
            const idx_t r = i / ig;
            const bf16_t* src = ab + r * 2 * inter + j;
            const uint4 ra = *(const uint4*)src, ru = *(const uint4*)(src + inter);
            if (a != nullptr) {
                *(uint4*)(a + r * inter + j) = ra;
                *(uint4*)(u + r * inter + j) = ru;
            }
            float va[8], vu[8], vh[8];
            ld8((const bf16_t*)&ra, va);
            ld8((const bf16_t*)&ru, vu);
            #pragma unroll
            for (int k = 0; k < 8; ++k) vh[k] = swishf_(va[k]) * vu[k];
            st8(h + r * inter + j, vh);
        }
        return;
    }
    const idx_t total = n * inter;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x) {
        const int j = (int)(i % inter);
        const idx_t r = i / inter;
        const bf16_t av = ab[r * 2 * inter + j], uv = ab[r * 2 * inter + inter + j];
        if (a != nullptr) {
            a[i] = av;
            u[i] = uv;
        }
        h[i] = from_f32<bf16_t>(swishf_(to_f32(av)) * to_f32(uv));
    }
}

// ---- ViG's locality gate: G = sigmoid(gpre), z = G gn + (1 - G) ln, y = swish(z) or z

extern "C" __global__ void locality_gate_fwd(bf16_t* __restrict__ y, const bf16_t* __restrict__ gn, const bf16_t* __restrict__ ln, const float* __restrict__ gpre, idx_t n, int out_act) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        float g = sigmoidf_(gpre[i]);
        float z = g * to_f32(gn[i]) + (1.f - g) * to_f32(ln[i]);
        y[i] = from_f32<bf16_t>(out_act ? swishf_(z) : z);
    }
}

// One element e of locality_fused_fwd's output from its row's inputs a (o), b (xs), the rows'
// rstd ro, rx, the norms' weights and the gate's pre-activation: gn, ln rounded to bf16 as stored
// (written when gn is non-null), y the gate of them.
__device__ __forceinline__ void locality_elem(bf16_t* __restrict__ y, bf16_t* __restrict__ gn, bf16_t* __restrict__ ln, idx_t e, float a, float b, float ro, float rx, float wg, float wl, float gp, int out_act) {
    const bf16_t a16 = from_f32<bf16_t>(a * ro * wg * 1.f), l16 = from_f32<bf16_t>(b * rx * wl * 1.f);
    if (gn != nullptr) {
        gn[e] = a16;
        ln[e] = l16;
    }
    const float g = sigmoidf_(gp);
    const float z = g * to_f32(a16) + (1.f - g) * to_f32(l16);
    y[e] = from_f32<bf16_t>(out_act ? swishf_(z) : z);
}

// A row's two rstd from its lanes' sums of squares (every lane gets them; lane 0 stores them).
__device__ __forceinline__ float2 locality_rstd(float so, float sx, int v, float eps, int lane, float* __restrict__ rstd_g, float* __restrict__ rstd_l, idx_t r) {
    so = warp_sum(so);
    sx = warp_sum(sx);
    const float ro = rsqrtf(so / v + eps), rx = rsqrtf(sx / v + eps);
    if (lane == 0) {
        rstd_g[r] = ro;
        rstd_l[r] = rx;
    }
    return make_float2(ro, rx);
}

// The branch in one launch, one warp per (token, head) row of v values (rows = N*H; o, xs, y,
// gpre [rows, v]): gn = o rstd_g wg, ln = xs rstd_l wl (nn/norm.cu's gated_norm_fwd without a
// gate: the same sums in the same order, rounded to bf16 as stored), y = locality_gate_fwd of
// them. gn, ln written only when non-null (the backward's recompute); bitwise the three launches'.
// Rows of v <= 64 (every ViG head) keep their values in registers: every load of a row is issued
// before its two reductions, one round trip to memory per row instead of two.
extern "C" __global__ void locality_fused_fwd(bf16_t* __restrict__ y, bf16_t* __restrict__ gn, bf16_t* __restrict__ ln, float* __restrict__ rstd_g, float* __restrict__ rstd_l, const bf16_t* __restrict__ o, const bf16_t* __restrict__ xs, const float* __restrict__ gpre, const float* __restrict__ wg, const float* __restrict__ wl, idx_t rows, int v, float eps, int out_act) {
    int lane = threadIdx.x & 31;
    if (v <= 64) {
        for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
            float a[2], b[2], g[2], wa[2], wb[2];
            float so = 0.f, sx = 0.f;
            #pragma unroll
            for (int q = 0; q < 2; ++q) {
                const int j = lane + 32 * q;
                a[q] = b[q] = g[q] = wa[q] = wb[q] = 0.f;
                if (j < v) {
                    const idx_t e = r * v + j;
                    a[q] = to_f32(o[e]);
                    b[q] = to_f32(xs[e]);
                    g[q] = gpre[e];
                    wa[q] = wg[j];
                    wb[q] = wl[j];
                }
            }
            #pragma unroll
            for (int q = 0; q < 2; ++q) {
                if (lane + 32 * q < v) {
                    so += a[q] * a[q];
                    sx += b[q] * b[q];
                }
            }
            const auto [ro, rx] = locality_rstd(so, sx, v, eps, lane, rstd_g, rstd_l, r);
            #pragma unroll
            for (int q = 0; q < 2; ++q) {
                const int j = lane + 32 * q;
                if (j < v) locality_elem(y, gn, ln, r * v + j, a[q], b[q], ro, rx, wa[q], wb[q], g[q], out_act);
            }
        }
        return;
    }
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < rows; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        float so = 0.f, sx = 0.f;
        for (int j = lane; j < v; j += 32) {
            const float a = to_f32(o[r * v + j]), b = to_f32(xs[r * v + j]);
            so += a * a;
            sx += b * b;
        }
        const auto [ro, rx] = locality_rstd(so, sx, v, eps, lane, rstd_g, rstd_l, r);
        for (int j = lane; j < v; j += 32) {
            const idx_t e = r * v + j;
            locality_elem(y, gn, ln, e, to_f32(o[e]), to_f32(xs[e]), ro, rx, wg[j], wl[j], gpre[e], out_act);
        }
    }
}

extern "C" __global__ void locality_gate_bwd(float* __restrict__ d_gn, float* __restrict__ d_ln, float* __restrict__ d_gpre, const float* __restrict__ dy, const bf16_t* __restrict__ gn, const bf16_t* __restrict__ ln, const float* __restrict__ gpre, idx_t n, int out_act) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        float g = sigmoidf_(gpre[i]);
        float a = to_f32(gn[i]), l = to_f32(ln[i]);
        float z = g * a + (1.f - g) * l;
        float dz = out_act ? dy[i] * dswishf_(z) : dy[i];
        d_gn[i] = dz * g;
        d_ln[i] = dz * (1.f - g);
        d_gpre[i] = dz * (a - l) * g * (1.f - g);
    }
}

// ---- cross-entropy with label smoothing eps (PyTorch's), one warp per row:
// loss[r] = (1 - eps)(lse - logit[y]) + eps mean_c(lse - logit[c]); correct[r] = argmax == y (the
// first maximum); dlogits = dscale (softmax - (eps/C + (1 - eps) onehot)) (f32)
extern "C" __global__ void smoothed_xent(float* __restrict__ dlogits, float* __restrict__ loss, int* __restrict__ correct, const float* __restrict__ logits, const unsigned* __restrict__ labels, idx_t m, int classes, float eps, float dscale) {
    int lane = threadIdx.x & 31;
    for (idx_t r = (blockIdx.x * (idx_t)blockDim.x + threadIdx.x) >> 5; r < m; r += ((idx_t)gridDim.x * blockDim.x) >> 5) {
        const float* row = logits + r * classes;
        float mx = -__uint_as_float(0x7f800000u);
        int arg = 0;
        for (int j = lane; j < classes; j += 32)
            if (row[j] > mx) { mx = row[j]; arg = j; }
        for (int o = 16; o > 0; o >>= 1) {
            float om = __shfl_xor_sync(0xffffffffu, mx, o);
            int oa = __shfl_xor_sync(0xffffffffu, arg, o);
            if (om > mx || (om == mx && oa < arg)) { mx = om; arg = oa; }
        }
        float s = 0.f, sl = 0.f;
        for (int j = lane; j < classes; j += 32) {
            s += expf(row[j] - mx);
            sl += row[j];
        }
        s = warp_sum(s);
        sl = warp_sum(sl);
        float lse = mx + logf(s);
        unsigned y = labels[r];
        if (lane == 0) {
            loss[r] = (1.f - eps) * (lse - row[y]) + eps * (lse - sl / classes);
            correct[r] = arg == (int)y;
        }
        for (int j = lane; j < classes; j += 32) {
            float target = eps / classes + ((unsigned)j == y ? 1.f - eps : 0.f);
            dlogits[r * classes + j] = (expf(row[j] - lse) - target) * dscale;
        }
    }
}
