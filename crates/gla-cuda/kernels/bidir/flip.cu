// bidir/flip.cu: rows reversed within each sequence, for the bidirectional scan's paths that
// run the GLA kernels on the time-reversed input (docs/math/bidir.md: the backward, and the
// forward where the fused kernels do not apply).
//
// Contract: x, y [rows, W]; the flipped row of r in sequence n (rows bounds[n] .. bounds[n+1])
// is bounds[n] + bounds[n+1] - 1 - r. Grid (chunks, ceil(W/256)) over the 64-row chunks of the
// forward's chunk tables (ops.rs DevProblem), 256 threads, one column each.
//   bidir_flip_{f32,bf16}:     y[r] = x[flip r]     (x and y distinct buffers)
//   bidir_flip_add_{f32,bf16}: y[r] += x[flip r]    (the sum in f32, rounded once to the storage)

template <typename T, bool ADD>
__device__ __forceinline__ void flip_rows(const T* __restrict__ x, T* __restrict__ y, const idx_t* __restrict__ bounds,
                                          const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq, int W) {
    const idx_t cg = blockIdx.x;
    const int c = 256 * blockIdx.y + threadIdx.x;
    if (c >= W) return;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    const int n = chunk_seq[cg];
    const idx_t mirror = bounds[n] + bounds[n + 1] - 1;
    for (int t = 0; t < L; ++t) {
        const idx_t r = r0 + t;
        const T val = x[(mirror - r) * W + c];
        if (ADD) y[r * W + c] = from_f32<T>(to_f32(y[r * W + c]) + to_f32(val));
        else y[r * W + c] = val;
    }
}

extern "C" __global__ void __launch_bounds__(256) bidir_flip_f32(const float* x, float* y, const idx_t* bounds, const idx_t* chunk_off,
                                                                 const int* chunk_seq, int W) {
    flip_rows<float, false>(x, y, bounds, chunk_off, chunk_seq, W);
}
extern "C" __global__ void __launch_bounds__(256) bidir_flip_bf16(const bf16_t* x, bf16_t* y, const idx_t* bounds, const idx_t* chunk_off,
                                                                  const int* chunk_seq, int W) {
    flip_rows<bf16_t, false>(x, y, bounds, chunk_off, chunk_seq, W);
}
extern "C" __global__ void __launch_bounds__(256) bidir_flip_add_f32(const float* x, float* y, const idx_t* bounds, const idx_t* chunk_off,
                                                                     const int* chunk_seq, int W) {
    flip_rows<float, true>(x, y, bounds, chunk_off, chunk_seq, W);
}
extern "C" __global__ void __launch_bounds__(256) bidir_flip_add_bf16(const bf16_t* x, bf16_t* y, const idx_t* bounds, const idx_t* chunk_off,
                                                                      const int* chunk_seq, int W) {
    flip_rows<bf16_t, true>(x, y, bounds, chunk_off, chunk_seq, W);
}
