// nn/reduce.cu: the column reductions' last step, and the bias gradient (contract and col_reduce:
// nn/common.cuh).

// dw[j] += sum_{y < gy} part[y, j], in y order
extern "C" __global__ void col_finalize(float* __restrict__ dw, const float* __restrict__ part, int gy, int cols) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += gridDim.x * blockDim.x) {
        float s = 0.f;
        for (int y = 0; y < gy; ++y) s += part[(idx_t)y * cols + j];
        dw[j] += s;
    }
}

struct ColSum {
    const float* x;
    int c;
    __device__ float operator()(idx_t r, int j) const { return x[r * c + j]; }
};
// db[j] += sum_r x[r, j]   (bias gradient, f32 input; partials)
extern "C" __global__ void colsum_f32(float* part, const float* x, idx_t n, int c) { col_reduce(part, n, c, ColSum{x, c}); }
