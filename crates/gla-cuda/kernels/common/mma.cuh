// common/mma.cuh: the tensor-core and async-copy building blocks of the chunk kernels (sm_80+
// PTX): ldmatrix fragment loads, mma.sync m16n8k16 (bf16 x bf16 -> f32) and m16n8k8 (tf32, for
// f32 products in 3xTF32), the fragment addresses
// of 16x16 tiles in shared memory, cp.async 16-byte copies, and the 64-row tile loader.
//
// Fragment layout (mma.sync m16n8k16): lane l = 4 fg + ft holds rows fg and fg + 8, columns
// 2 ft and 2 ft + 1 of each 16x8 accumulator tile (c[0..1] row fg, c[2..3] row fg + 8).

// ldmatrix on 32-bit shared-memory byte addresses (smem_addr): a warp product computes each
// operand's per-lane address once and adds compile-time offsets per tile (immediates), instead of
// a 64-bit generic address and its conversion per load.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}
__device__ __forceinline__ void ldsm4a(unsigned r[4], unsigned a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
__device__ __forceinline__ void ldsm4ta(unsigned r[4], unsigned a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// tf32 of x (round to nearest, ties away from zero: cvt.rna), the 32-bit operand of a tf32 mma
__device__ __forceinline__ unsigned tf32_rna(float x) {
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
    return u;
}
// mma.sync m16n8k8, tf32 x tf32 -> f32: lane 4 g + t holds A (16 x 8) at rows g, g + 8 and
// columns t, t + 4 (a[0] (g, t), a[1] (g + 8, t), a[2] (g, t + 4), a[3] (g + 8, t + 4)), B (8 x 8)
// at rows t (b0) and t + 4 (b1) of column g, and the m16n8k16 accumulator layout
__device__ __forceinline__ void mma1688tf32(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// An f32 product A B (mma1688tf32's fragments, f32 values) in 3xTF32: each operand split into a
// tf32 hi term and the tf32 of its remainder (lo), hi += Ah Bh and lo += Al Bh + Ah Bl (the
// dropped Al Bl and the tf32 roundings leave about f32's accuracy; the caller adds hi + lo)
__device__ __forceinline__ void mma_tf32x3(float hi[4], float lo[4], const float a[4], const float b[2]) {
    unsigned ah[4], al[4], bh[2], bl[2];
    #pragma unroll
    for (int x = 0; x < 4; ++x) {
        ah[x] = tf32_rna(a[x]);
        al[x] = tf32_rna(a[x] - __uint_as_float(ah[x]));
    }
    #pragma unroll
    for (int x = 0; x < 2; ++x) {
        bh[x] = tf32_rna(b[x]);
        bl[x] = tf32_rna(b[x] - __uint_as_float(bh[x]));
    }
    mma1688tf32(lo, al, bh[0], bh[1]);
    mma1688tf32(lo, ah, bl[0], bl[1]);
    mma1688tf32(hi, ah, bh[0], bh[1]);
}
// fragment addresses (lane l) for a 16x16 tile at (row0, col0) of a row-major bf16 smem matrix,
// as element offsets: A operand stored [m][k]
__device__ __forceinline__ int oa(int ld, int r0, int c0, int l) { return (r0 + (l & 7) + 8 * ((l >> 3) & 1)) * ld + c0 + 8 * (l >> 4); }
// A operand stored transposed [k][m] (use with ldsm4ta); r0 indexes k, c0 indexes m
__device__ __forceinline__ int oat(int ld, int r0, int c0, int l) { return (r0 + (l & 7) + 8 * (l >> 4)) * ld + c0 + 8 * ((l >> 3) & 1); }
// B operand (two n-tiles of 8) stored [k][n] (use with ldsm4ta): r[0], r[1] tile n0, r[2], r[3] tile n0+8
__device__ __forceinline__ int obt(int ld, int k0, int n0, int l) { return (k0 + (l & 7) + 8 * ((l >> 3) & 1)) * ld + n0 + 8 * (l >> 4); }
// B operand (two n-tiles) stored [n][k] (use with ldsm4a): r[0], r[1] tile n0, r[2], r[3] tile n0+8
__device__ __forceinline__ int obn(int ld, int k0, int n0, int l) { return (n0 + (l & 7) + 8 * (l >> 4)) * ld + k0 + 8 * ((l >> 3) & 1); }
// The fragment's 32-bit shared byte address (for ldsm4a / ldsm4ta): the base's conversion is a
// pure function the compiler hoists out of a loop and the offset is 32-bit arithmetic, so a load
// costs no 64-bit address and no conversion of its own.
__device__ __forceinline__ unsigned sfa(const bf16_t* base, int ld, int r0, int c0, int l) { return smem_addr(base) + 2u * oa(ld, r0, c0, l); }
__device__ __forceinline__ unsigned sfat(const bf16_t* base, int ld, int r0, int c0, int l) { return smem_addr(base) + 2u * oat(ld, r0, c0, l); }
__device__ __forceinline__ unsigned sfbt(const bf16_t* base, int ld, int k0, int n0, int l) { return smem_addr(base) + 2u * obt(ld, k0, n0, l); }
__device__ __forceinline__ unsigned sfbn(const bf16_t* base, int ld, int k0, int n0, int l) { return smem_addr(base) + 2u * obn(ld, k0, n0, l); }
// A warp product's operands by 32-bit byte addresses (ldsm4a): WAddrA holds an A operand's
// per-lane address at the first 16-deep step (sfa, or sfat when stored transposed), converted
// once per product, and the bytes each step adds; WAddrB a B operand's (sfbt, or sfbn when
// stored [n][k]) with the bytes between n-tile pairs. With compile-time strides a load is a base
// register plus an immediate; with run-time ones, one add per step.
template <bool TRANS>
struct WAddrA {
    unsigned a, step;
    __device__ __forceinline__ WAddrA(const bf16_t* A, int lda, int m0, int lane)
        : a(TRANS ? sfat(A, lda, 0, m0, lane) : sfa(A, lda, m0, 0, lane)), step(TRANS ? 32u * lda : 32u) {}
    __device__ __forceinline__ void load(unsigned r[4], int k) const {
        if (TRANS) {
            ldsm4ta(r, a + k * step);
        } else {
            ldsm4a(r, a + k * step);
        }
    }
};
template <bool TRANS>
struct WAddrB {
    unsigned b, step, pair;
    __device__ __forceinline__ WAddrB(const bf16_t* B, int ldb, int n0, int lane)
        : b(TRANS ? sfbn(B, ldb, 0, n0, lane) : sfbt(B, ldb, 0, n0, lane)), step(TRANS ? 32u : 32u * ldb),
          pair(TRANS ? 32u * ldb : 32u) {}
    // the n-tile pair np at step k: B stored [n][k] (TRANS) loads without .trans
    __device__ __forceinline__ void load(unsigned r[4], int k, int np) const {
        if (TRANS) {
            ldsm4a(r, b + k * step + np * pair);
        } else {
            ldsm4ta(r, b + k * step + np * pair);
        }
    }
};

// 16 bytes from global g to the 32-bit shared-memory byte address s (smem_addr) by cp.async,
// zero-filled when !ok (g is then not read): a tile loop keeps one destination register and adds
// a constant per copy
__device__ __forceinline__ void cp16a(unsigned s, const void* g, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(g), "r"(ok ? 16 : 0) : "memory");
}
// cp16a to a shared-memory pointer
__device__ __forceinline__ void cp16(void* s, const void* g, bool ok) { cp16a(smem_addr(s), g, ok); }
// 4 bytes from global g to the 32-bit shared-memory byte address s by cp.async (both 4-byte
// aligned): a scalar that lands with its group instead of stalling the thread on a plain load
__device__ __forceinline__ void cp4a(unsigned s, const void* g) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(g) : "memory");
}
// Rows [0, R) of cpr 16-byte pieces (P = 16 / sizeof(T) elements each) into dst (row stride lds
// elements) by cp.async: piece (r, c) from src + r ldg + c P where r < rv and c P < cv, else
// zero-filled. Needs nthr % cpr == 0: each thread keeps one column and steps rows by
// nthr / cpr, on one 32-bit destination and one source pointer that add a constant per copy
// (no division, 64-bit address or conversion per copy); the copies of the plain loop over
// x = tid, tid + nthr, ... (r = x / cpr) in its order. Where rs divides R every thread copies
// R / rs pieces: a count the compiler sees when the shape is constant, so the loop unrolls with
// immediate offsets (a loop whose count depends on the thread compiled to a remainder prologue,
// branches and 64-bit address arithmetic: a third of a sequential pass's instructions). The
// caller commits and waits.
template <typename T>
__device__ __forceinline__ void cp16_rows(T* dst, int lds, const T* src, idx_t ldg, int R, int cpr, int rv, int cv, int tid,
                                          int nthr) {
    constexpr int P = 16 / (int)sizeof(T);
    const int rs = nthr / cpr, c = (tid % cpr) * P;
    const bool cok = c < cv;
    int r = tid / cpr;
    unsigned d = smem_addr(dst + r * lds + c);
    const T* s = src + (idx_t)r * ldg + c;
    if (R % rs == 0) {
        #pragma unroll
        for (int i = 0; i < R / rs; ++i, s += (idx_t)rs * ldg) {
            const bool ok = cok && r + i * rs < rv;
            cp16a(d + (unsigned)(i * rs * lds * (int)sizeof(T)), ok ? s : src, ok);
        }
        return;
    }
    for (; r < R; r += rs, d += (unsigned)(rs * lds * (int)sizeof(T)), s += (idx_t)rs * ldg) {
        const bool ok = cok && r < rv;
        cp16a(d, ok ? s : src, ok);
    }
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_wait0() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }


// 64 rows x Cp columns (Cp % 8 == 0) of bf16 into smem dst (row stride lds): row t from
// src + t * ldg, columns < C and rows < L read, the rest zero. vec: 16-byte pieces (C % 8 == 0,
// src and ldg 16-byte aligned); async: through cp.async (the caller commits and waits).
__device__ __forceinline__ void tile_load(bf16_t* dst, int lds, const bf16_t* src, idx_t ldg, int L, int C, int Cp,
                                          bool vec, bool async, int tid, int nthr) {
    if (vec) {
        const int cpr = Cp >> 3;
        if (async && nthr % cpr == 0) {
            cp16_rows(dst, lds, src, ldg, 64, cpr, L, C, tid, nthr);
            return;
        }
        for (int x = tid; x < 64 * cpr; x += nthr) {
            const int t = x / cpr, c = (x % cpr) * 8;
            const bool ok = t < L && c < C;
            const bf16_t* gp = ok ? src + (idx_t)t * ldg + c : src;
            if (async) {
                cp16(dst + t * lds + c, gp, ok);
            } else {
                uint4 val;
                val.x = val.y = val.z = val.w = 0u;
                if (ok) val = *(const uint4*)gp;
                *(uint4*)(dst + t * lds + c) = val;
            }
        }
    } else {
        for (int x = tid; x < 64 * Cp; x += nthr) {
            const int t = x / Cp, c = x % Cp;
            dst[t * lds + c] = (t < L && c < C) ? src[(idx_t)t * ldg + c] : (bf16_t)0;
        }
    }
}
