// nn/adamw.cu: the optimizer step: the global gradient norm (f64, per-block partials added in
// block order) and AdamW on the f32 masters with their bf16 copies (contract: nn/common.cuh).

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

// AdamW (PyTorch's) over the whole parameter arena in one launch, gradient pre-scaled by gscale
// (clipping); writes the f32 master and its bf16 copy used by the GEMMs. The arena is nseg
// parameters: parameter s holds elements [starts[s], starts[s+1]) and takes the weight decay wd
// when decay[s] != 0, else none (every element's arithmetic is the same expression either way,
// so the step is bitwise that of one launch per parameter). A thread's elements rise with the
// grid stride, so its parameter index only moves forward.
extern "C" __global__ void adamw(float* __restrict__ p, bf16_t* __restrict__ p16, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v, const long long* __restrict__ starts, const int* __restrict__ decay, int nseg, float lr, float b1, float b2, float eps, float wd, float bc1, float bc2, float gscale) {
    const idx_t n = starts[nseg];
    int s = 0;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) {
        while (s + 1 < nseg && i >= starts[s + 1]) ++s;
        const float wdi = decay[s] ? wd : 0.f;
        float gi = g[i] * gscale, pi = p[i];
        pi -= lr * wdi * pi;
        float mi = b1 * m[i] + (1.f - b1) * gi;
        float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        pi -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        p16[i] = from_f32<bf16_t>(pi);
    }
}
