// bidir/chunk_bwd.cu: the chunked backward of ViG's bidirectional GLA scan without reversed
// copies (bf16 storage, f32 gradients). Math: docs/math/bidir.md. Compiled after
// gla/chunk_fwd.cu, gla/chunk_h.cu, gla/chunk_bwd.cu and bidir/chunk_fwd.cu (src/kernels.rs):
// it runs the GLA backward's building blocks once per direction, the backward direction with
// `rev` (each chunk's rows read and written in reverse, the chunks walked right to left).
//
// Contract: as bidir/chunk_fwd.cu, plus do [rows, H, V] bf16; dq, dk, dgf, dgb [rows, H, K] and
// dv [rows, H, V] f32, all written (=). K <= 128, V <= 128 (gla_chunk_bwd1_bf16's). Launch
// order on one stream (src/bidir/ops.rs), scale = the op's scale / 2:
//   bidir_chunk_prep_bf16 with qef, qeb (bidir/chunk_fwd.cu)
//   bidir_chunk_walks{64,32}_bf16: the four state walks in one grid (z over 4 N H): hsf (left to
//     right over kdf, v), hsb (right to left over kdb, v), dhsf (the gradient of the forward
//     state leaving each chunk: right to left over qef, do), dhsb (the backward state's: left to
//     right over qeb, do)
//   bidir_chunk_a_bf16: grid (chunks, H, 2): A of each direction (z = 1: the chunk reversed)
//   bidir_chunk_bwd1_bf16 (rev 0, addv null), bidir_chunk_bwd2_bf16 (rev 0, add null): the
//     forward scan's dv, dq, dk into workspaces, dgf
//   bidir_chunk_bwd1_bf16 (rev 1, addv = the forward's dv) -> dv; bidir_chunk_bwd2_bf16 (rev 1,
//     add = the forward's dq, dk) -> dq, dk, dgb. The sums of the two scans are formed in the
//     second direction's stores: no atomics, deterministic.
//   bwd1 is bidir_chunk_bwd1n_bf16 where V <= 64: its products run over 64 value columns, not
//   128 (src/bidir/dispatch.rs bwd1_name).

// z = 0: h forward, 1: h backward (right to left), 2: dh of the forward scan (right to left),
// 3: dh of the backward scan (left to right); sequence-head z' = blockIdx.z % NH
#define BIDIR_WENTRY(NAME, BVH)                                                                                   \
extern "C" __global__ void __launch_bounds__(128) NAME(                                                          \
    const bf16_t* kdf, const bf16_t* kdb, const bf16_t* qef, const bf16_t* qeb, const bf16_t* v, const bf16_t* d_o, \
    const float* dlf, const float* dlb, bf16_t* hsf, bf16_t* hsb, bf16_t* dhsf, bf16_t* dhsb, const idx_t* bounds,  \
    const idx_t* chunk_off, int H, int K, int V, int NH) {                                                       \
    const int w = blockIdx.z / NH, z = blockIdx.z % NH;                                                          \
    if (w == 0) chunk_h<BVH, false>(kdf, v, dlf, nullptr, hsf, nullptr, bounds, chunk_off, H, K, V, z);          \
    else if (w == 1) chunk_h<BVH, true>(kdb, v, dlb, nullptr, hsb, nullptr, bounds, chunk_off, H, K, V, z);      \
    else if (w == 2) chunk_h<BVH, true>(qef, d_o, dlf, nullptr, dhsf, nullptr, bounds, chunk_off, H, K, V, z);   \
    else chunk_h<BVH, false>(qeb, d_o, dlb, nullptr, dhsb, nullptr, bounds, chunk_off, H, K, V, z);              \
}
BIDIR_WENTRY(bidir_chunk_walks64_bf16, 64)
BIDIR_WENTRY(bidir_chunk_walks32_bf16, 32)

// A (scaled, causal in the direction's own order, bf16 [chunks, H, 64, 64]) of direction z:
// grid (chunks, H, 2), 256 threads, smem chunk_o_smem_bytes(Kp)
extern "C" __global__ void __launch_bounds__(256, 3) bidir_chunk_a_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ gf, const bf16_t* __restrict__ gb,
    bf16_t* __restrict__ af, bf16_t* __restrict__ ab, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
    const int* __restrict__ chunk_seq, int H, int K, float scale, int Kp) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int LDK = Kp + 8;
    const bf16_t* RA = (const bf16_t*)smem_raw + 64 * LDK + 64 * OV + 2 * 64 * Kp + 64 * LDK + 48 * LDK;  // as in o_pass_a
    const int tid = threadIdx.x;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y;
    const bool rev = blockIdx.z == 1;
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    {
        float dacc[3], c2[2][4];
        o_pass_a<false>(q, k, rev ? gb : gf, smem_raw, r0, L, H, h, K, K, scale, Kp, 0, K, dacc, c2, rev);
    }
    __syncthreads();
    bf16_t* ap = (rev ? ab : af) + (cg * H + h) * (idx_t)4096;
    for (int x = tid; x < 64 * 8; x += 256) {
        const int t = x >> 3, c = (x & 7) * 8;
        *(uint4*)(ap + t * 64 + c) = *(const uint4*)(RA + t * LDH + c);
    }
}

// gla_chunk_bwd1_bf16 with the direction's row order and the other direction's dv added; the
// `n` entry for V <= 64 (chunk_bwd1's narrow products; <= 128 registers, and at Kp <= 64 its
// 82 KB of shared memory: two blocks per SM)
#define BIDIR_BWD1_ENTRY(NAME, VW, MINB)                                                                       \
extern "C" __global__ void __launch_bounds__(256, MINB) NAME(                                                 \
    const bf16_t* __restrict__ v, const bf16_t* __restrict__ d_o, const bf16_t* __restrict__ kd,              \
    const bf16_t* __restrict__ A, const bf16_t* __restrict__ hs, const bf16_t* __restrict__ dhs,              \
    float* __restrict__ dv, float* __restrict__ dA, float* __restrict__ dq, float* __restrict__ dk,           \
    float* __restrict__ sd, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,            \
    const int* __restrict__ chunk_seq, int H, int K, int V, int Kp, int rev, const float* __restrict__ addv) { \
    chunk_bwd1<VW>(v, d_o, kd, A, hs, dhs, dv, dA, dq, dk, sd, bounds, chunk_off, chunk_seq, H, K, V, Kp,     \
                   rev != 0, addv);                                                                           \
}
BIDIR_BWD1_ENTRY(bidir_chunk_bwd1_bf16, 128, 1)
BIDIR_BWD1_ENTRY(bidir_chunk_bwd1n_bf16, 64, 2)

// gla_chunk_bwd2k64_bf16 (per-key gate, K tiles of <= 64 on grid z) with the direction's row
// order and the other direction's final dq, dk added
extern "C" __global__ void __launch_bounds__(256, 2) bidir_chunk_bwd2_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ g,
    const float* __restrict__ dA, const float* __restrict__ sd, float* __restrict__ dq, float* __restrict__ dk,
    float* __restrict__ dg, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off,
    const int* __restrict__ chunk_seq, int H, int K, float scale, int Kp, int rev, const float* __restrict__ addq,
    const float* __restrict__ addk) {
    chunk_bwd2<true>(q, k, g, dA, sd, dq, dk, dg, bounds, chunk_off, chunk_seq, H, K, K, scale, Kp, rev != 0, addq, addk);
}
