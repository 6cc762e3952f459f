// nn/attn_layer.cu: the softmax-attention layer's element-wise kernels around the attention op
// (kernels/attn/) and the GEMMs (contract: nn/common.cuh; the CPU reference is gla-model's
// ops.rs: bias_fwd, rope). fla's `Attention` layer: q, k, v projections with optional biases,
// RoPE on q and k, the op, o_proj.
//
// bias_add_bf16:  y [N, C] (=) bf16(y + b[c]) in place, b f32 (the projection's bias).
// rope_bf16:      y [N, heads, Dh] (=) rope(x) (GPT-NeoX halves, fla's RotaryEmbedding with
//                 interleaved=False): for i < Dh/2 and the row's position p,
//                 a = f32(p) * inv_freq[i] (f32, as torch), y[i] = x[i] cos a - x[i+Dh/2] sin a,
//                 y[i+Dh/2] = x[i] sin a + x[i+Dh/2] cos a. Row r of B sequences of T rows
//                 (r = b * T + t) sits at p = t + (pos0 ? pos0[b] : 0): pos0 holds each
//                 sequence's tokens seen before this forward (a prefill window, a decode step).
// rope_bwd_f32:   d [N, heads, Dh] in place, the rotation by -a (positions as rope_bf16 without
//                 pos0: the backward runs on training batches only).
// widen_bf16_f32: y [n] f32 (=) x [n] bf16.
// kv_scatter_bf16: cache[(p0 + i) mod S] (=) src [count, E] for the last min(count, S) rows
//                 i (the earlier ones would be overwritten in a ring): a KV cache of S slots
//                 holds position p at slot p mod S (a ring buffer for a sliding window, slot p
//                 otherwise).
// sincosf is the accurate one (no fast math in this build): angles reach 1e5 rad at long
// contexts, where __sinf is wrong.

extern "C" __global__ void bias_add_bf16(bf16_t* __restrict__ y, const float* __restrict__ b, idx_t n, int c) {
    const idx_t total = n * c;
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < total; i += (idx_t)gridDim.x * blockDim.x)
        y[i] = from_f32<bf16_t>(to_f32(y[i]) + b[i % c]);
}

extern "C" __global__ void rope_bf16(bf16_t* __restrict__ y, const bf16_t* __restrict__ x, const float* __restrict__ inv_freq,
                                     const int* __restrict__ pos0, idx_t n, int t, int heads, int dh) {
    const int half = dh / 2;
    const idx_t total = n * heads * half;
    for (idx_t e = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; e < total; e += (idx_t)gridDim.x * blockDim.x) {
        const int i = (int)(e % half);
        const idx_t rh = e / half;
        const idx_t r = rh / heads;
        const int p = (int)(r % t) + (pos0 ? pos0[r / t] : 0);
        float s, c;
        sincosf((float)p * inv_freq[i], &s, &c);
        const idx_t at = rh * dh + i;
        const float x0 = to_f32(x[at]), x1 = to_f32(x[at + half]);
        y[at] = from_f32<bf16_t>(x0 * c - x1 * s);
        y[at + half] = from_f32<bf16_t>(x0 * s + x1 * c);
    }
}

extern "C" __global__ void rope_bwd_f32(float* __restrict__ d, const float* __restrict__ inv_freq, idx_t n, int t, int heads, int dh) {
    const int half = dh / 2;
    const idx_t total = n * heads * half;
    for (idx_t e = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; e < total; e += (idx_t)gridDim.x * blockDim.x) {
        const int i = (int)(e % half);
        const idx_t rh = e / half;
        const int p = (int)((rh / heads) % t);
        float s, c;
        sincosf((float)p * inv_freq[i], &s, &c);
        const idx_t at = rh * dh + i;
        const float d0 = d[at], d1 = d[at + half];
        d[at] = d0 * c + d1 * s;
        d[at + half] = d1 * c - d0 * s;
    }
}

extern "C" __global__ void widen_bf16_f32(float* __restrict__ y, const bf16_t* __restrict__ x, idx_t n) {
    for (idx_t i = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; i < n; i += (idx_t)gridDim.x * blockDim.x) y[i] = to_f32(x[i]);
}

extern "C" __global__ void kv_scatter_bf16(bf16_t* __restrict__ cache, const bf16_t* __restrict__ src, idx_t p0, idx_t count, idx_t s,
                                           int e) {
    const idx_t first = count > s ? count - s : 0;
    const idx_t total = (count - first) * e;
    for (idx_t x = blockIdx.x * (idx_t)blockDim.x + threadIdx.x; x < total; x += (idx_t)gridDim.x * blockDim.x) {
        const idx_t i = first + x / e;
        cache[((p0 + i) % s) * e + x % e] = src[i * e + x % e];
    }
}
