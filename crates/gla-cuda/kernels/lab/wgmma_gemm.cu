// lab/wgmma_gemm.cu: the check of common/wgmma.cuh's building blocks, each combination alone:
// C = A B^T on wgmma, against the host's product (gla check --device cuda --filter lab).
//
// lab_wgmma_gemm_bf16: C [M, N] f32 (=) = A B^T with A bf16 [M, K] row-major and B bf16 [N, K]
// row-major (tb = 0: a K-major operand) or B^T bf16 [K, N] row-major (tb = 1: MN-major,
// imm-trans-b), ra = 1: A moved from its swizzled tile into registers by ldmatrix (the mma.sync
// A fragment) and multiplied by the _rs product; M % 64 == 0, N % 128 == 0, K % 64 == 0 (the host checks). One warpgroup (128
// threads) per 64 x 128 tile of C, grid (N / 128, M / 64). Per 64-deep step the A tile (64 rows
// of 64) and the B tile (K-major: 128 rows of 64; MN-major: two 64-column blocks of 64 K rows,
// 8 KB apart) are stored swizzled (wg_swz) by 16-byte loads and stores, fenced to the async
// proxy, then four m64n128k16 products (start addresses 32 bytes, or 16 K rows of 128 bytes,
// apart). lbo, sbo: the MN-major B's descriptor offsets in bytes (the K-major operands take 16
// and 1024). Dynamic smem: 1024 (alignment) + 8192 (A) + 16384 (B) bytes.
//
//
// lab_wgmma_gemm64_bf16: the same C = A B^T on m64n64k16 (one warpgroup per 64 x 64 tile of C,
// grid (N / 64, M / 64), N % 64 == 0), A given as [M, K] (ta = 0) or as A^T [K, M] (ta = 1:
// MN-major, imm-trans-a), B as [N, K] (tb = 0) or B^T [K, N] (tb = 1); an MN-major operand's
// tile is 64 K rows of 64 (M or N), its k16 steps 2048 bytes apart, SBO 1024 (LBO unused: one
// 64-wide block). n32 = 1: the 64 columns of C as two m64n32k16 products, B's second half 32
// rows further (K-major) or 64 bytes into each swizzled row (MN-major: the layout a 32-column
// half of a 64-wide tile needs). Dynamic smem: 1024 + 8192 (A) + 8192 (B) bytes.
//
// Entry points: lab_wgmma_gemm_bf16 lab_wgmma_gemm64_bf16

// R rows of 64 bf16 of a row-major matrix at src (row stride ld) into the swizzled tile at s, by
// the block's 128 threads in 16-byte pieces.
template <int R>
__device__ __forceinline__ void lab_tile(unsigned char* s, const bf16_t* src, idx_t ld, int tid) {
    for (int x = tid; x < R * 8; x += 128) {
        const int r = x >> 3, ch = x & 7;
        *(uint4*)(s + wg_swz(r, ch)) = *(const uint4*)(src + (idx_t)r * ld + 8 * ch);
    }
}

// Warp w's part of a 64 x 2 NA accumulator (NA per thread) into C [.., N] f32 at (m0, n0).
template <int NA>
__device__ __forceinline__ void lab_store(float* c, int N, int m0, int n0, const float (&d)[NA], int w, int l) {
    #pragma unroll
    for (int i = 0; i < NA; i += 2) {
        const int row = m0 + 16 * w + (l >> 2) + 8 * ((i & 3) >> 1), col = n0 + 8 * (i >> 2) + 2 * (l & 3);
        float2 f;
        f.x = d[i];
        f.y = d[i + 1];
        *(float2*)(c + (idx_t)row * N + col) = f;
    }
}

extern "C" __global__ void __launch_bounds__(128) lab_wgmma_gemm_bf16(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
                                                                     float* __restrict__ c, int M, int N, int K, int tb, int ra, int lbo, int sbo) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    DELTA_SMEM(smem);
    const int tid = threadIdx.x, w = tid >> 5, l = tid & 31;
    const int n0 = blockIdx.x * 128, m0 = blockIdx.y * 64;
    unsigned char* sA = wg_align1024(smem);  // [64 rows][128 B]
    unsigned char* sB = sA + 8192;   // K-major: [128 rows][128 B]; MN-major: [2][64 K rows][128 B]
    DELTA_SMEM_END(smem, sB + 16384);
    const unsigned uA = smem_addr(sA), uB = smem_addr(sB);
    float d[64];
    #pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    for (int k0 = 0; k0 < K; k0 += 64) {
        lab_tile<64>(sA, a + (idx_t)m0 * K + k0, K, tid);
        if (tb) {  // two 64-column blocks of N, 64 K rows each
            lab_tile<64>(sB, b + (idx_t)k0 * N + n0, N, tid);
            lab_tile<64>(sB + 8192, b + (idx_t)k0 * N + n0 + 64, N, tid);
        } else {
            lab_tile<128>(sB, b + (idx_t)n0 * K + k0, K, tid);
        }
        wg_fence_proxy();
        __syncthreads();
        wg_fence();
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const unsigned long long da = wg_desc(uA + 32u * kk, 16, 1024);
            const unsigned long long db = tb ? wg_desc(uB + 2048u * kk, (unsigned)lbo, (unsigned)sbo) : wg_desc(uB + 32u * kk, 16, 1024);
            if (ra) {
                // lane l's row of the x4 load (matrices: rows 0-7 / 8-15 x k 0-7 / 8-15) and its chunk
                unsigned ar[4];
                ldsm4a(ar, uA + wg_swz(16 * w + (l & 7) + 8 * ((l >> 3) & 1), 2 * kk + (l >> 4)));
                wg_fence();  // the fragment's registers are written before the product reads them
                if (tb) {
                    wg_m64n128k16_rs<1>(d, ar, db);
                } else {
                    wg_m64n128k16_rs<0>(d, ar, db);
                }
            } else if (tb) {
                wg_m64n128k16<1>(d, da, db);
            } else {
                wg_m64n128k16<0>(d, da, db);
            }
        }
        wg_commit();
        wg_wait0();
        __syncthreads();  // every warpgroup's products have read the tiles before the next stores
    }
    lab_store(c, N, m0, n0, d, w, l);
#endif
}

extern "C" __global__ void __launch_bounds__(128) lab_wgmma_gemm64_bf16(const bf16_t* __restrict__ a, const bf16_t* __restrict__ b,
                                                                       float* __restrict__ c, int M, int N, int K, int ta, int tb,
                                                                       int n32) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap();
#else
    DELTA_SMEM(smem);
    const int tid = threadIdx.x, w = tid >> 5, l = tid & 31;
    const int n0 = blockIdx.x * 64, m0 = blockIdx.y * 64;
    unsigned char* sA = wg_align1024(smem);  // K-major: [64 M rows][128 B]; MN-major: [64 K rows][128 B]
    unsigned char* sB = sA + 8192;   // the same for B
    DELTA_SMEM_END(smem, sB + 8192);
    const unsigned uA = smem_addr(sA), uB = smem_addr(sB);
    float d[32], h0[16], h1[16];  // the m64n64 accumulator; with n32, columns 0 .. 31 and 32 .. 63
    #pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    #pragma unroll
    for (int i = 0; i < 16; ++i) h0[i] = h1[i] = 0.f;
    for (int k0 = 0; k0 < K; k0 += 64) {
        lab_tile<64>(sA, ta ? a + (idx_t)k0 * M + m0 : a + (idx_t)m0 * K + k0, ta ? M : K, tid);
        lab_tile<64>(sB, tb ? b + (idx_t)k0 * N + n0 : b + (idx_t)n0 * K + k0, tb ? N : K, tid);
        wg_fence_proxy();
        __syncthreads();
        wg_fence();
        #pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const unsigned long long da = ta ? wg_desc(uA + 2048u * kk, 8192, 1024) : wg_desc(uA + 32u * kk, 16, 1024);
            const unsigned long long db = tb ? wg_desc(uB + 2048u * kk, 8192, 1024) : wg_desc(uB + 32u * kk, 16, 1024);
            if (n32) {
                // the second half of B: 32 rows further (K-major) or 64 bytes into each row (MN-major)
                const unsigned long long db1 = tb ? wg_desc(uB + 2048u * kk + 64u, 8192, 1024) : wg_desc(uB + 4096u + 32u * kk, 16, 1024);
                if (ta && tb) {
                    wg_m64n32k16<1, 1>(h0, da, db);
                    wg_m64n32k16<1, 1>(h1, da, db1);
                } else if (ta) {
                    wg_m64n32k16<1, 0>(h0, da, db);
                    wg_m64n32k16<1, 0>(h1, da, db1);
                } else if (tb) {
                    wg_m64n32k16<0, 1>(h0, da, db);
                    wg_m64n32k16<0, 1>(h1, da, db1);
                } else {
                    wg_m64n32k16<0, 0>(h0, da, db);
                    wg_m64n32k16<0, 0>(h1, da, db1);
                }
            } else if (ta && tb) {
                wg_m64n64k16<1, 1>(d, da, db);
            } else if (ta) {
                wg_m64n64k16<1, 0>(d, da, db);
            } else if (tb) {
                wg_m64n64k16<0, 1>(d, da, db);
            } else {
                wg_m64n64k16<0, 0>(d, da, db);
            }
        }
        wg_commit();
        wg_wait0();
        __syncthreads();
    }
    if (n32) {
        lab_store(c, N, m0, n0, h0, w, l);
        lab_store(c, N, m0, n0 + 32, h1, w, l);
    } else {
        lab_store(c, N, m0, n0, d, w, l);
    }
#endif
}
