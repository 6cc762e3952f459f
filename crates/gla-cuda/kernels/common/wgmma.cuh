// common/wgmma.cuh: Hopper warpgroup matrix products (wgmma, sm_90a): the shared-memory matrix
// descriptor of a 128-byte-swizzled bf16 tile, the async-proxy fence for tiles written by
// ordinary stores or cp.async, m64n128k16 (bf16 x bf16 -> f32, both operands from shared memory,
// or A from registers: _rs), m64n64k16 and m64n32k16 (either operand MN-major) with their fence /
// commit / wait; a swizzled tile's element index (wg_el) and loaders (wg_tile_cp by cp.async,
// wg_tile_ld by plain stores where 16-byte pieces cannot read), the 128-deep product
// (wg_mma_k128), a product into mma.sync-layout fragments (wg_mma_frag) and the
// accumulator-to-A-fragment packing (wg_pack_a). Only sm_90a builds the instructions; other
// targets compile the entry points that use them to a trap (their hosts run them on sm_90a only).
//
// Tile layout (128-byte swizzle, what the descriptor below describes): rows of 64 bf16 (128
// bytes), 8 rows a 1024-byte atom (1024-byte aligned), the 16-byte chunk c of row r stored at
// chunk c ^ (r % 8) (wg_swz). K-major operand (A [M][K] or B [N][K], K contiguous): row = the M or
// N index, the 8-row groups 1024 bytes apart (SBO), each k16 step 32 bytes further on the start
// address. MN-major B (B^T [K][N], N contiguous, imm-trans-b): row = the K index, 64 N a row;
// the 8-K groups SBO apart, the 64-N blocks LBO apart (checked on an H100: lab/wgmma_gemm.cu).
//
// Accumulators (m64nNk16, f32): thread t of the warpgroup (warp w = t / 32, lane l) holds d[i],
// i < N / 2, at row 16 w + l / 4 + 8 ((i % 4) / 2), column 8 (i / 4) + 2 (l % 4) + i % 2: the
// mma.sync m16n8 fragment of warp w, n8 tile i / 4.

// The byte offset of 16-byte chunk c of row r in a 128-byte-swizzled tile.
__device__ __forceinline__ unsigned wg_swz(int r, int c) { return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4)); }

// The element index (bf16 units) of (r, c) in a swizzled tile of R rows whose 64-column blocks
// lie R x 128 bytes apart (wg_tile_cp's layout; a 64-column tile is one block).
template <int R>
__device__ __forceinline__ int wg_el(int r, int c) {
    return (c >> 6) * R * 64 + (int)(wg_swz(r, (c >> 3) & 7) >> 1) + (c & 7);
}

// The first 1024-byte-aligned byte at or after the dynamic shared memory p (a swizzled tile's
// 8-row atoms are 1024-byte aligned; the kernels' shared-memory sizes reserve the 1024 bytes).
__device__ __forceinline__ unsigned char* wg_align1024(unsigned char* p) { return p + ((1024u - (smem_addr(p) & 1023u)) & 1023u); }

// A kernel's warpgroup variant (wg true) traps where the target lacks sm_90a's features: the host
// launches those entries on sm_90a only, and every other target compiles them to this.
__device__ __forceinline__ void wg_sm90a_only(bool wg) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if (wg) __trap();
#endif
}

// The descriptor of a 128-byte-swizzled tile at shared byte address a (its atom 1024-byte
// aligned; a k16 step adds 32 to a K-major operand's a, 16 rows (2048) to an MN-major one's):
// lbo, sbo in bytes.
__device__ __forceinline__ unsigned long long wg_desc(unsigned a, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((a & 0x3ffffu) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3fffu) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3fffu) << 32) | (1ull << 62);
}

// Orders this thread's ordinary shared-memory stores before the async proxy's reads (wgmma's
// operands); a barrier follows before any warp issues the products.
__device__ __forceinline__ void wg_fence_proxy() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_wait0() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}

// The 64 accumulators of an m64n128 product as asm operands %0 .. %63 (read and written).
#define WG_D64_REGS                                                                                                                   \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"         \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
#define WG_D64                                                                                                                        \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),          \
        "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),         \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),         \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),         \
        "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),         \
        "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),         \
        "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// The 32 accumulators of an m64n64 product as asm operands %0 .. %31 (read and written).
#define WG_D32_REGS "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31},"
#define WG_D32                                                                                                                        \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),          \
        "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),         \
        "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),         \
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// d += A B^T for a 64 x 16 A and a 64 x 16 B (m64n64k16, both from shared memory); TA: A
// MN-major (A^T [K][M] stored, imm-trans-a), TB: B MN-major. Lab-checked (lab/wgmma_gemm.cu).
template <int TA, int TB>
__device__ __forceinline__ void wg_m64n64k16(float (&d)[32], unsigned long long da, unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %36, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        WG_D32_REGS
        " %32, %33, p, 1, 1, %34, %35;\n}\n"
        : WG_D32
        : "l"(da), "l"(db), "n"(TA), "n"(TB), "r"(1)
        : "memory");
#endif
}

// The 16 accumulators of an m64n32 product as asm operands %0 .. %15 (read and written).
#define WG_D16_REGS "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15},"
#define WG_D16                                                                                                                        \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),          \
        "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])

// d += A B^T for a 64 x 16 A and a 32 x 16 B (m64n32k16, both from shared memory); TA, TB as
// wg_m64n64k16. Lab-checked for B at a 32-row (K-major) or 64-byte (MN-major: columns 32 .. 63
// of a 64-wide swizzled row) offset into a tile (lab/wgmma_gemm.cu, n32).
template <int TA, int TB>
__device__ __forceinline__ void wg_m64n32k16(float (&d)[16], unsigned long long da, unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %20, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        WG_D16_REGS
        " %16, %17, p, 1, 1, %18, %19;\n}\n"
        : WG_D16
        : "l"(da), "l"(db), "n"(TA), "n"(TB), "r"(1)
        : "memory");
#endif
}

// d += A B^T for a 64 x 16 A in registers (the mma.sync m16n8k16 A fragment of warp w's rows
// 16 w .. 16 w + 15: a[0] row l / 4, k 2 (l % 4) and + 1; a[1] row + 8; a[2], a[3] k + 8) and a
// 128 x 16 B (descriptor db); TB: B MN-major.
template <int TB>
__device__ __forceinline__ void wg_m64n128k16_rs(float (&d)[64], const unsigned (&a)[4], unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        WG_D64_REGS
        " {%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
        : WG_D64
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB), "r"(1)
        : "memory");
#endif
}

// wg_m64n128k16_rs's product on a 64 x 16 B (m64n64k16, A from registers); TB: B MN-major.
template <int TB>
__device__ __forceinline__ void wg_m64n64k16_rs(float (&d)[32], const unsigned (&a)[4], unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        WG_D32_REGS
        " {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : WG_D32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TB), "r"(1)
        : "memory");
#endif
}

// d += A B^T for a 64 x 16 A and a 128 x 16 B (descriptors da, db); TB: B MN-major (imm-trans-b).
template <int TB>
__device__ __forceinline__ void wg_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %67, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        WG_D64_REGS
        " %64, %65, p, 1, 1, 0, %66;\n}\n"
        : WG_D64
        : "l"(da), "l"(db), "n"(TB), "r"(1)
        : "memory");
#endif
}

// R rows x C bf16 columns (C = 64 or 128, the default) of src (row stride ldg) by cp.async
// into the swizzled tile at shared address dst (wg_el<R>'s layout: C / 64 blocks of R rows, R x
// 128 bytes apart), element (r, c) read where r < L and c < cv, else zero (cv a multiple of 8 or
// >= C, src rows 16-byte aligned; the caller commits and waits).
template <int R, int NT, int C = 128>
__device__ __forceinline__ void wg_tile_cp(unsigned dst, const bf16_t* src, idx_t ldg, int L, int tid, int cv = C) {
    constexpr int P = C / 8, LP = P == 8 ? 3 : 4;  // 16-byte pieces a row: piece c of row r at wg_el<R>(r, 8 c)
    static_assert(C == 64 || C == 128, "one or two 64-column blocks");
    for (int x = tid; x < R * P; x += NT) {
        const int r = x >> LP, c = x & (P - 1);
        const bool ok = r < L && 8 * c < cv;
        cp16a(dst + (unsigned)((c >> 3) * R * 128) + wg_swz(r, c & 7), ok ? src + (idx_t)r * ldg + 8 * c : src, ok);
    }
}

// wg_tile_cp's tile at the shared pointer dst, by cp.async where vec (its conditions hold),
// else by plain loads and stores (rows or columns that 16-byte pieces cannot read).
template <int R, int C, int NT>
__device__ __forceinline__ void wg_tile_ld(bf16_t* dst, const bf16_t* src, idx_t ldg, int rv, int cv, bool vec, int tid) {
    if (vec) {
        wg_tile_cp<R, NT, C>(smem_addr(dst), src, ldg, rv, tid, cv);
    } else {
        for (int x = tid; x < R * C; x += NT) {
            const int r = x / C, c = x % C;
            dst[wg_el<R>(r, c)] = (r < rv && c < cv) ? src[(idx_t)r * ldg + c] : (bf16_t)0;
        }
    }
}

// d = A B^T over a depth of 128 (fenced, committed and waited for; d's prior contents are added
// to): A the 64 rows at shared address a, B the N (64 or 128) rows at b, both K-major in
// swizzled tiles whose two 64-column blocks are RA x 128 and RB x 128 bytes apart (tiles of RA and
// RB rows, as wg_tile_cp stores them). The attention kernels' S = Q K^T and dP = dO V^T.
template <int N, int RA, int RB>
__device__ __forceinline__ void wg_mma_k128(float (&d)[N / 2], unsigned a, unsigned b) {
    wg_fence();
    #pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        const unsigned oa = (unsigned)((kk >> 2) * RA * 128 + 32 * (kk & 3)), ob = (unsigned)((kk >> 2) * RB * 128 + 32 * (kk & 3));
        if constexpr (N == 128) {
            wg_m64n128k16<0>(d, wg_desc(a + oa, 16, 1024), wg_desc(b + ob, 16, 1024));
        } else {
            wg_m64n64k16<0, 0>(d, wg_desc(a + oa, 16, 1024), wg_desc(b + ob, 16, 1024));
        }
    }
    wg_commit();
    wg_wait0();
}

// A 64 x 16 KS accumulator (the m64nN layout, N = 16 KS: x[nt][e], n8 tile nt) packed to bf16 as
// the A fragments of KS k16 steps of an rs product over its columns (a[kk]: columns 16 kk ..
// 16 kk + 15, the mma.sync m16n8k16 A layout): an attention P for P V, P^T for P^T dO.
template <int KS>
__device__ __forceinline__ void wg_pack_a(unsigned (&a)[KS][4], const float (&x)[2 * KS][4]) {
    #pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        a[kk][0] = pack2(x[2 * kk][0], x[2 * kk][1]);
        a[kk][1] = pack2(x[2 * kk][2], x[2 * kk][3]);
        a[kk][2] = pack2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
        a[kk][3] = pack2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
    }
}

// acc += A B^T, one k16 step on the warpgroup's m64nN product (N = 8 NT: 32 or 64), with the
// accumulator held as the mma.sync fragments acc[NT][4] of its warps (the same registers in the
// same order: d[4 nt + e] = acc[nt][e]); TA, TB as wg_m64n64k16.
template <int NT, int TA, int TB>
__device__ __forceinline__ void wg_mma_frag(float (&acc)[NT][4], unsigned long long da, unsigned long long db) {
    static_assert(NT == 4 || NT == 8, "m64n32 or m64n64");
    float(&d)[4 * NT] = *reinterpret_cast<float(*)[4 * NT]>(&acc);
    if constexpr (NT == 8) {
        wg_m64n64k16<TA, TB>(d, da, db);
    } else {
        wg_m64n32k16<TA, TB>(d, da, db);
    }
}
