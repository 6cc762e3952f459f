// nn/xent.cu: cross-entropy over labelled rows, one block per row (contract: nn/common.cuh):
// loss[i] = lse - logit[target]; correct[i] = (argmax == target); dlogits = (softmax - onehot) *
// dscale (bf16, the lm_head GEMMs' operand).

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
