// nn/common.cuh: the contract and helpers of the language model's row-wise and element-wise
// kernels around the cuBLAS GEMMs and the GLA kernels (src/backend.rs and src/model.rs drive them).
//
// Contract (every nn kernel):
// - row-major buffers; `n` rows (tokens, or token x head pairs), `d`/`c`/`v` columns; all index
//   products in 64 bits (idx_t);
// - dtypes are fixed per argument and named in the signature: `float*` f32, `bf16_t*` bf16 bits.
//   The residual stream, norms' rstd, parameter masters and every parameter gradient are f32;
//   GEMM operands are bf16; gradients flowing into an accumulation are f32;
// - parameter-gradient kernels ACCUMULATE (+=) in a fixed order, so that a run repeats bitwise:
//   column reductions write per-block partial sums and col_finalize adds them in block order;
//   the embedding backward sums each token's rows in row order (rows sorted on the host); no
//   atomics anywhere. Everything else WRITES its outputs;
// - math in f32; the formulas are the CPU ops' (gla-model/src/ops.rs), which are the reference;
// - grid-stride loops: any grid covers the rows (the host caps flat grids at 16 blocks per SM).

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + __expf(-x)); }
// swish(x) = x sigmoid(x) (the output gate, SiLU) and d swish / dx
__device__ __forceinline__ float swishf_(float x) { return x * sigmoidf_(x); }
__device__ __forceinline__ float dswishf_(float x) {
    float s = sigmoidf_(x);
    return s * (1.f + x * (1.f - s));
}
// the output gate's activation (gla_core::dims::GateAct as the host passes it: 0 swish, 1
// sigmoid) and its derivative, as gla-model's ops::gate_act
__device__ __forceinline__ float gate_actf_(int act, float x) { return act == 1 ? sigmoidf_(x) : swishf_(x); }
__device__ __forceinline__ float dgate_actf_(int act, float x) {
    if (act == 1) {
        float s = sigmoidf_(x);
        return s * (1.f - s);
    }
    return dswishf_(x);
}
// both of them from one exponential (the vectorized gated norm's backward)
__device__ __forceinline__ void gate_act2(int act, float x, float& a, float& da) {
    const float s = sigmoidf_(x);
    if (act == 1) {
        a = s;
        da = s * (1.f - s);
    } else {
        a = x * s;
        da = s * (1.f + x * (1.f - s));
    }
}

// The column i % c of a grid-stride loop's element i over a row-major [*, c] array: one 64-bit
// remainder per thread, then the stride's remainder added each step (a 64-bit remainder per
// element made the bias launches issue-bound). c = 0 (no elements: the loop never runs) divides
// by nothing.
struct ColStep {
    int col, step, c;
    __device__ ColStep(idx_t i0, idx_t stride, int c_) : col(c_ > 0 ? (int)(i0 % c_) : 0), step(c_ > 0 ? (int)(stride % c_) : 0), c(c_) {}
    __device__ __forceinline__ void next() {
        col += step;
        if (col >= c) col -= c;
    }
};

// column reductions for parameter gradients: dw[j] += sum_r f(r, j), one thread per column of a
// 32-wide tile, 8 row lanes per block, blocks strided over rows; block y writes its partial sums
// to part[y, :] and col_finalize (nn/reduce.cu) adds part[0..gy, j] to dw[j] in order
// (deterministic).
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

// 4 consecutive elements a lane (the vectorized kernels: 8-byte bf16 and 16-byte f32 accesses,
// the addresses 8- and 16-byte aligned): bf16 to f32 and back, f32 in and out
__device__ __forceinline__ void ld_bf4(float (&o)[4], const bf16_t* __restrict__ p) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    o[0] = bf_lo(u.x), o[1] = bf_hi(u.x), o[2] = bf_lo(u.y), o[3] = bf_hi(u.y);
}
__device__ __forceinline__ void st_bf4(bf16_t* __restrict__ p, const float (&a)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack2(a[0], a[1]), pack2(a[2], a[3]));
}
__device__ __forceinline__ void ld_f4(float (&o)[4], const float* __restrict__ p) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
}
__device__ __forceinline__ void st_f4(float* __restrict__ p, const float (&a)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(a[0], a[1], a[2], a[3]);
}

// 8 consecutive elements (16- or 32-byte accesses, 16-byte aligned) as f32, for the
// vectorised element-wise kernels

__device__ __forceinline__ void ld8(const bf16_t* p, float* v) {
    const uint4 u = *(const uint4*)p;
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
    #pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[2 * k] = bf_lo(w[k]);
        v[2 * k + 1] = bf_hi(w[k]);
    }
}
__device__ __forceinline__ void ld8(const float* p, float* v) {
    const float4 a = ((const float4*)p)[0], b = ((const float4*)p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void st8(bf16_t* p, const float* v) {
    uint4 u;
    u.x = pack2(v[0], v[1]);
    u.y = pack2(v[2], v[3]);
    u.z = pack2(v[4], v[5]);
    u.w = pack2(v[6], v[7]);
    *(uint4*)p = u;
}
__device__ __forceinline__ void st8(float* p, const float* v) {
    ((float4*)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4*)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Whether a grid-stride element-wise kernel over n elements may move groups of 8: n a multiple
// of 8 and every buffer 16-byte aligned (a uniform test: all threads take the same path)
__device__ __forceinline__ bool vec8_ok(idx_t n, const void* a, const void* b, const void* c = nullptr, const void* d = nullptr) {
    return (n & 7) == 0 && (((unsigned long long)a | (unsigned long long)b | (unsigned long long)c | (unsigned long long)d) & 15) == 0;
}
