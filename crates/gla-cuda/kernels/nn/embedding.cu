// nn/embedding.cu: token embedding forward (a row copy) and backward (per-token row sums in row
// order, one writer per embedding row) (contract: nn/common.cuh).

// x[r, :] = wte[ids[r], :]   (ids checked on the host)
extern "C" __global__ void embedding_fwd(float* __restrict__ x, const unsigned* __restrict__ ids, const float* __restrict__ wte, idx_t n, int d) {
    for (idx_t r = blockIdx.x; r < n; r += gridDim.x) {
        const float* src = wte + (idx_t)ids[r] * d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) x[r * d + j] = src[j];
    }
}

// dwte[tok, :] += sum of dx[r, :] over the rows r holding token tok, in row order: the host
// sorts the rows by token (stable) into `order`; segment s covers order[start[s] .. start[s+1])
// and holds token tok[s] (the padding token's segment is left out by the host); one block per
// segment, so every embedding row has one writer
extern "C" __global__ void embedding_bwd(float* __restrict__ dwte, const float* __restrict__ dx, const int* __restrict__ order, const int* __restrict__ start, const unsigned* __restrict__ tok, int nseg, int d) {
    for (int sg = blockIdx.x; sg < nseg; sg += gridDim.x) {
        float* dst = dwte + (idx_t)tok[sg] * d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float s = 0.f;
            for (int i = start[sg]; i < start[sg + 1]; ++i) s += dx[(idx_t)order[i] * d + j];
            dst[j] += s;
        }
    }
}
