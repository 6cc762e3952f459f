// common/chunk.cuh: what every chunk kernel shares: the chunk of a block (ONE prologue,
// chunk_rows), the base-2 exponential, the shared-memory row strides, the gate of a row, and the
// state / A tile loaders of the 256-thread launches.
//
// Chunks: BT = 64 rows per sequence, numbered globally: chunk c of sequence n is chunk_off[n] + c,
// chunk_seq[global chunk] = n; sequence n holds rows bounds[n] .. bounds[n+1] (the host builds
// the three tables, ops.rs DevProblem). Exponentials are base 2 on G * log2(e) (ex2.approx) and
// never of a positive exponent (g <= 0 makes the cumsum G non-increasing).

#define L2E 1.4426950408889634f
#define LDH 72  // bf16 row stride of 64-wide tiles (144 B: ldmatrix rows land in distinct banks)

__device__ __forceinline__ float ex2f(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#define OV 136  // bf16 row stride of 128-wide tiles (272 B: ldmatrix rows land in distinct banks)

// A compile-time int as a value: the tag a generic lambda instantiates on (a tile width picked
// at run time from two compiled forms)
template <int N>
struct IntC {
    static constexpr int value = N;
};

// The rows of global chunk cg: r0 (its first row) and L (its row count, 64 except for a
// sequence's last chunk).
struct ChunkRows {
    idx_t r0;
    int L;
};
__device__ __forceinline__ ChunkRows chunk_rows(idx_t cg, const idx_t* bounds, const idx_t* chunk_off, const int* chunk_seq) {
    const int n = chunk_seq[cg];
    const idx_t r0 = bounds[n] + (cg - chunk_off[n]) * 64;
    return {r0, (int)min((idx_t)64, bounds[n + 1] - r0)};
}

// g of (row t, channel ch) for the output pass and bwd2: staged raw in smem (gw == K), else from global
__device__ __forceinline__ float gval_o(const bf16_t* __restrict__ g, const bf16_t* R3, int t, int ch, int LDK, int L, idx_t r0,
                                        int H, int h, int K, int gw) {
    if (gw == K) return to_f32(R3[t * LDK + ch]);
    if (gw == 1 && t < L) return to_f32(g[(r0 + t) * H + h]);
    return 0.f;
}

// The chunk-local cumsum of g per key channel (two halves of 32 rows over 256 threads), times
// log2(e), into G [64][Kp] f32: g from `stage` (staged raw in smem, row stride LDK) for a per-key
// gate, else from global (gval_o); RP [256] f32 scratch. Holds a barrier: every thread calls it.
__device__ __forceinline__ void chunk_g_cumsum(float* G, float* RP, const bf16_t* __restrict__ g, const bf16_t* stage, int LDK, int L,
                                               idx_t r0, int H, int h, int K, int gw, int Kp, int tid) {
    const int ch = tid & 127, hf = tid >> 7;
    float part = 0.f;
    if (ch < Kp) {
        #pragma unroll 8
        for (int t = 32 * hf; t < 32 * hf + 32; ++t) part += gval_o(g, stage, t, ch, LDK, L, r0, H, h, K, gw);
        RP[hf * 128 + ch] = part;
    }
    __syncthreads();
    if (ch < Kp) {
        float run = hf ? RP[ch] : 0.f;
        #pragma unroll 8
        for (int t = 32 * hf; t < 32 * hf + 32; ++t) {
            run += gval_o(g, stage, t, ch, LDK, L, r0, H, h, K, gw);
            G[t * Kp + ch] = run * L2E;
        }
    }
}

// A state (or state-gradient) tile of the 256-thread launches: rows i < K of src (row stride V),
// W = 64 or 128 columns (src already offset to the tile's first column) into dst [Kp][W + 8]
// (row stride LDH or OV); rows K .. Kp - 1 and columns >= Vc zero. cp.async when vec (V % 8 == 0;
// the caller commits and waits).
template <int W>
__device__ __forceinline__ void state_tile_load(bf16_t* dst, const bf16_t* src, int K, int V, int Vc, int Kp, bool vec, int tid) {
    static_assert(W == 64 || W == 128, "state tiles are 64 or 128 columns wide");
    constexpr int LD = W + 8, SH = W == 64 ? 3 : 4;  // 16-byte pieces per row: W / 8 = 1 << SH
    if (vec) {
        cp16_rows(dst, LD, src, V, Kp, W / 8, K, Vc, tid, 256);
    } else {
        for (int x = tid; x < Kp * W; x += 256) {
            const int i = x >> (SH + 3), c = x & (W - 1);
            dst[i * LD + c] = (i < K && c < Vc) ? src[(idx_t)i * V + c] : (bf16_t)0;
        }
    }
}
// A [64][64] bf16 of one chunk and head into dst [64][LDH] (cp.async; the caller commits)
__device__ __forceinline__ void a_tile_load(bf16_t* dst, const bf16_t* ap, int tid) {
    cp16_rows(dst, LDH, ap, 64, 64, 8, 64, 64, tid, 256);
}
