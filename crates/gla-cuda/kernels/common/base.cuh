// common/base.cuh: the storage types and scalar helpers of every kernel. The runtime compiles
// each kernel file as its common headers followed by the file, in one NVRTC program
// (src/kernels.rs), so no file includes anything (no toolkit headers: the binary needs only the
// driver and libnvrtc).
//
// bf16 is stored as `unsigned short` (the upper 16 bits of an f32); `bf16_t` below. Every index
// product is computed in 64 bits (`idx_t`), since B*T*H*K exceeds 2^31 at real sizes.

typedef unsigned short bf16_t;
typedef long long idx_t;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __uint_as_float(((unsigned int)x) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
// round to nearest even; NaN stays a (quiet) NaN
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// f32 -> bf16 in hardware (round to nearest even; NaN stays NaN), one or two at a time
__device__ __forceinline__ bf16_t f2bf(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ float bf_lo(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

__device__ __forceinline__ float warp_sum(float x) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// log-gate of (row r, head h, key channel i) for a gate of width gw in {K, 1, 0}
template <typename T>
__device__ __forceinline__ float load_gate(const T* g, idx_t r, int H, int K, int gw, int i, int h) {
    if (gw == 0) return 0.f;
    idx_t base = (r * (idx_t)H + h) * (idx_t)gw;
    return to_f32(g[base + (gw == 1 ? 0 : i)]);
}
