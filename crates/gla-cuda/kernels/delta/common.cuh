// delta/common.cuh: what the delta-rule kernels share, after common/{base,mma,chunk}.cuh: the
// storage-generic shared-memory tile loader, the warp-level matrix product in the mma.sync
// fragment layout for both storages (bf16: ldmatrix + mma.sync m16n8k16; f32: FMA, the same
// fragments), and the fragment iteration.
//
// Storage E is `float` or `bf16_t`; every accumulator is f32. A warp product computes a 16 x 8 NT
// tile of C += op(A) op(B) in fragments acc[NT][4]: lane l = 4 fg + ft holds rows fg and fg + 8,
// columns 8 nt + 2 ft and 8 nt + 2 ft + 1 (FRAG_ROW / FRAG_COL). Shared-memory rows are padded by
// DPAD elements (row strides of 16-byte multiples, ldmatrix rows in distinct banks).
//
// Workspaces of the chunked path are chunk-major and padded: w [chunks, HV, 64, KP], u and v_new
// [chunks, HV, 64, VP], states [chunks, HV, KP, VP] with KP a multiple of 64 (<= 256) and VP of
// 64, padding zero; so their tiles load as whole 16-byte pieces with no masks.

#define DPAD 8
#define DEPS 1e-6f  // the L2-norm epsilon (gla_core::delta::L2_EPS)
// DELTA_PLANES: the planes of a bf16 split operand (below). 2, the default. 1 builds every split
// product on its hi plane alone, the storage precision of fla's kernels (a fifth less time, up
// to 7e-2 off the oracle where the chunk form cancels; docs/kernels.md, "Precision of the bf16
// path"): the runtime defines it for the process's GLA_DELTA_PRECISION=bf16
// (gla_cuda::runtime::program_text). Entry names are the same in both builds.
#ifndef DELTA_PLANES
#define DELTA_PLANES 2
#endif
#if DELTA_PLANES != 1 && DELTA_PLANES != 2
#error "DELTA_PLANES is 1 or 2"
#endif

#ifndef DELTA_EMU
#define DELTA_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define DELTA_SMEM_END(base, end)
#endif

// Split operands: a bf16 product whose operands carry cancellation (T = (I + A)^-1, w, v_new,
// dU, P, ...) runs on hi + lo planes (x = hi + lo, both bf16: ~16 bits of mantissa), as
// hi * hi + lo * hi + hi * lo (wgemm2). SP: planes of a split tensor (DELTA_PLANES for bf16, 1
// for f32, whose products are exact FMA); a split global tensor holds its lo plane `plane`
// elements after its hi plane (with one plane the lo pointers alias hi and nothing reads them).
template <typename E>
struct Sp {
    static constexpr int SP = sizeof(E) == 2 ? DELTA_PLANES : 1;
};

// The 16-row tile (of four) that warp wp (of eight) takes in the 16 x 32 warp tilings of a
// 64-row chunk tile. Warps w and w + 4 issue on one scheduler (sub-partition w mod 4), so the
// second four take the row tiles in reverse: the depths a triangular operand leaves (16 mt + 16,
// or 64 - 16 mt) then add to 80 on every scheduler instead of 128 on one and 32 on another.
// Which warp forms a tile changes no result. Warpgroup (wgmma) tiles keep rows 16 (wp mod 4).
__device__ __forceinline__ int tri_mt(int wp) { return wp < 4 ? wp : 7 - wp; }

#define FRAG_ROW(e) (fg + ((e) >= 2 ? 8 : 0))
#define FRAG_COL(nt, e) (8 * (nt) + 2 * ft + ((e) & 1))

template <typename E> __device__ __forceinline__ E cvt(float x);
template <> __device__ __forceinline__ float cvt<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t cvt<bf16_t>(float x) { return f2bf(x); }

// x into hi (and, bf16 on two planes, lo = x - hi) at index i of two smem tiles (else hi only)
template <typename E>
__device__ __forceinline__ void st2(E* hi, E* lo, int i, float x) {
    if constexpr (Sp<E>::SP == 1) {
        hi[i] = cvt<E>(x);
    } else if constexpr (sizeof(E) == 2) {
        const bf16_t h = f2bf(x);
        hi[i] = h;
        lo[i] = f2bf(x - to_f32(h));
    } else {
        hi[i] = x;
    }
}
// x into a split global tensor: base[i] (hi) and base[plane + i] (lo, bf16 only)
template <typename E>
__device__ __forceinline__ void stg2(E* base, idx_t plane, idx_t i, float x) {
    if constexpr (Sp<E>::SP == 1) {
        base[i] = cvt<E>(x);
    } else if constexpr (sizeof(E) == 2) {
        const bf16_t h = f2bf(x);
        base[i] = h;
        base[plane + i] = f2bf(x - to_f32(h));
    } else {
        base[i] = x;
    }
}

// two adjacent elements (a fragment row's pair of columns, 2 ft and 2 ft + 1) in one store; p is
// 4-byte (bf16) or 8-byte (f32) aligned
template <typename E>
__device__ __forceinline__ void st_pair(E* p, float a, float b) {
    if constexpr (sizeof(E) == 2) {
        *(unsigned*)p = pack2(a, b);
    } else {
        *(float2*)p = make_float2(a, b);
    }
}
// a pair into the split smem tiles hi, lo at index i (even; f32: hi only)
template <typename E>
__device__ __forceinline__ void st2_pair(E* hi, E* lo, int i, float a, float b) {
    if constexpr (Sp<E>::SP == 1) {
        st_pair(hi + i, a, b);
    } else if constexpr (sizeof(E) == 2) {
        const unsigned h = pack2(a, b);
        *(unsigned*)(hi + i) = h;
        *(unsigned*)(lo + i) = pack2(a - bf_lo(h), b - bf_hi(h));
    } else {
        *(float2*)(hi + i) = make_float2(a, b);
    }
}
// a pair into a split global tensor (hi at base + i, lo at base + plane + i)
template <typename E>
__device__ __forceinline__ void stg2_pair(E* base, idx_t plane, idx_t i, float a, float b) {
    if constexpr (Sp<E>::SP == 1) {
        st_pair(base + i, a, b);
    } else if constexpr (sizeof(E) == 2) {
        const unsigned h = pack2(a, b);
        *(unsigned*)(base + i) = h;
        *(unsigned*)(base + plane + i) = pack2(a - bf_lo(h), b - bf_hi(h));
    } else {
        *(float2*)(base + i) = make_float2(a, b);
    }
}

// columns j, j + 1 (j even) of an output row of n columns (row `ok`): one pair store where both
// lie inside and n is even (the pair is aligned), else element by element
template <typename E>
__device__ __forceinline__ void st_row_pair(E* row, int j, int n, bool ok, float a, float b) {
    if (!ok || j >= n) return;
    if (j + 1 < n && (n & 1) == 0) {
        if constexpr (sizeof(E) == 2) {
            *(unsigned*)(row + j) = pack2(a, b);
        } else {
            *(float2*)(row + j) = make_float2(a, b);
        }
    } else {
        row[j] = cvt<E>(a);
        if (j + 1 < n) row[j + 1] = cvt<E>(b);
    }
}

template <int NT>
__device__ __forceinline__ void frag_zero(float (&acc)[NT][4]) {
    #pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    }
}

// f(t) of the two rows t = m0 + fg and m0 + fg + 8 that a lane's fragments of a 16-row tile
// hold (x[e >> 1] for fragment element e): a row's factor formed once, not once per n-tile
template <typename F>
__device__ __forceinline__ void frag_rows(float (&x)[2], int m0, int fg, F f) {
    x[0] = f(m0 + fg);
    x[1] = f(m0 + fg + 8);
}

// Rows [0, R) x columns [0, C) of the smem tile dst (row stride lds): element (r, c) is
// src[r * ldg + c] when r < rv and c < cv, else 0. vec: 16-byte cp.async pieces (C and cv
// multiples of 16 / sizeof(E) or cv >= C, src rows 16-byte aligned; the caller commits and
// waits); else plain loads and stores.
template <typename E>
__device__ __forceinline__ void tile_ld(E* dst, int lds, const E* src, idx_t ldg, int R, int C, int rv, int cv, bool vec, int tid,
                                        int nthr) {
    if (vec) {
        constexpr int P = 16 / (int)sizeof(E);
        const int cpr = C / P;
        if (nthr % cpr == 0) {
            cp16_rows(dst, lds, src, ldg, R, cpr, rv, cv, tid, nthr);
            return;
        }
        for (int x = tid; x < R * cpr; x += nthr) {
            const int r = x / cpr, c = (x - r * cpr) * P;
            const bool ok = r < rv && c < cv;
            cp16(dst + r * lds + c, ok ? src + (idx_t)r * ldg + c : src, ok);
        }
    } else {
        for (int x = tid; x < R * C; x += nthr) {
            const int r = x / C, c = x - r * C;
            dst[r * lds + c] = (r < rv && c < cv) ? src[(idx_t)r * ldg + c] : (E)0;
        }
    }
}

// Rows [0, R) x columns [0, C) of the smem tile src (row stride lds) to dst (row stride ldg) in
// 16-byte pieces, consecutive threads on consecutive pieces of a row (coalesced): C, lds and ldg
// multiples of 16 / sizeof(E), src and dst 16-byte aligned.
// The body of tile_st and tile_st_neg: piece x = v (a uint4) read at src, written at dst as f(v).
// Where the threads divide a row's pieces evenly, each thread keeps its column and steps rows by
// nthr / cpr on two pointers (the same pieces in the same order as the loop over x, without a
// division and a 64-bit address per piece); where rs divides R, on a count the compiler sees
// when the shape is constant (unrolled, as cp16_rows).
template <typename E, typename F>
__device__ __forceinline__ void tile_st_with(E* dst, idx_t ldg, const E* src, int lds, int R, int C, int tid, int nthr, F f) {
    constexpr int P = 16 / (int)sizeof(E);
    const int cpr = C / P;
    if (nthr % cpr == 0) {
        const int rs = nthr / cpr, c = (tid % cpr) * P;
        int r = tid / cpr;
        const E* s = src + r * lds + c;
        E* d = dst + (idx_t)r * ldg + c;
        if (R % rs == 0) {
            #pragma unroll
            for (int i = 0; i < R / rs; ++i, d += (idx_t)rs * ldg) *(uint4*)d = f(*(const uint4*)(s + i * rs * lds));
            return;
        }
        #pragma unroll 1
        for (; r < R; r += rs, s += rs * lds, d += (idx_t)rs * ldg) *(uint4*)d = f(*(const uint4*)s);
        return;
    }
    #pragma unroll 1
    for (int x = tid; x < R * cpr; x += nthr) {
        const int r = x / cpr, c = (x - r * cpr) * P;
        *(uint4*)(dst + (idx_t)r * ldg + c) = f(*(const uint4*)(src + r * lds + c));
    }
}

template <typename E>
__device__ __forceinline__ void tile_st(E* dst, idx_t ldg, const E* src, int lds, int R, int C, int tid, int nthr) {
    tile_st_with(dst, ldg, src, lds, R, C, tid, nthr, [](uint4 v) { return v; });
}

// tile_st of the tile's negation (the sign bit of every element flipped: exact)
template <typename E>
__device__ __forceinline__ void tile_st_neg(E* dst, idx_t ldg, const E* src, int lds, int R, int C, int tid, int nthr) {
    constexpr unsigned SGN = sizeof(E) == 2 ? 0x80008000u : 0x80000000u;
    tile_st_with(dst, ldg, src, lds, R, C, tid, nthr, [](uint4 v) { return make_uint4(v.x ^ SGN, v.y ^ SGN, v.z ^ SGN, v.w ^ SGN); });
}

// Whether rows of `cols` elements at a row stride of `ldg` elements load as 16-byte pieces.
template <typename E>
__device__ __forceinline__ bool vec_ok(idx_t ldg, int cols) {
    constexpr int P = 16 / (int)sizeof(E);
    return ldg % P == 0 && cols % P == 0;
}

// acc[16 x 8 NT] += op(A)[m0 .. m0 + 16, k0 .. ke) * op(B)[k0 .. ke, n0 .. n0 + 8 NT) from shared
// memory, k0 .. ke clipped to the depth 0 .. kc: A stored [m][k] (AT false) or [k][m] (AT true), B
// stored [k][n] (BT false) or [n][k] (BT true); kc, k0 and ke multiples of 16. A caller passes
// k0 > 0 or ke < kc only where the terms it leaves out are exact zeros (a triangular operand) or
// feed no output it reads: the sums it keeps are the same, in the same order. The loop runs over
// the whole depth and skips the steps outside k0 .. ke (warp-uniform), so a constant kc unrolls
// as it would without them. bf16: ldmatrix + mma.sync (NT even).
template <bool AT, bool BT, int NT>
__device__ __forceinline__ void wgemm(float (&acc)[NT][4], const bf16_t* A, int lda, int m0, const bf16_t* B, int ldb, int n0, int kc,
                                      int lane, int k0 = 0, int ke = 1 << 30) {
    static_assert(NT % 2 == 0, "bf16 warp products take n-tiles in pairs");
    const WAddrA<AT> wa(A, lda, m0, lane);
    const WAddrB<BT> wb(B, ldb, n0, lane);
    for (int k = 0; k < kc / 16; ++k) {
        if (16 * k < k0 || 16 * k >= ke) continue;
        unsigned a[4];
        wa.load(a, k);
        #pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            unsigned b[4];
            wb.load(b, k, np);
            mma16816(acc[2 * np], a, b[0], b[1]);
            mma16816(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// f32 storage: the same product and fragments by FMA.
template <bool AT, bool BT, int NT>
__device__ __forceinline__ void wgemm(float (&acc)[NT][4], const float* A, int lda, int m0, const float* B, int ldb, int n0, int kc,
                                      int lane, int k0 = 0, int ke = 1 << 30) {
    const int fg = lane >> 2, ft = lane & 3;
    for (int kk = k0; kk < min(kc, ke); ++kk) {
        const float a0 = AT ? A[kk * lda + m0 + fg] : A[(m0 + fg) * lda + kk];
        const float a1 = AT ? A[kk * lda + m0 + fg + 8] : A[(m0 + fg + 8) * lda + kk];
        #pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int c = n0 + 8 * nt + 2 * ft;
            const float b0 = BT ? B[c * ldb + kk] : B[kk * ldb + c];
            const float b1 = BT ? B[(c + 1) * ldb + kk] : B[kk * ldb + c + 1];
            acc[nt][0] += a0 * b0;
            acc[nt][1] += a0 * b1;
            acc[nt][2] += a1 * b0;
            acc[nt][3] += a1 * b1;
        }
    }
}

// acc += op(A + Al) op(B + Bl) without the lo * lo term: per 16-deep step A * B, then Al * B (al)
// and A * Bl (bl) for bf16, each fragment of A, Al, B, Bl loaded from shared memory once and fed
// to every term that reads it; f32 storage runs A * B alone (exact enough: FMA on f32 operands),
// and so does bf16 on one plane (DELTA_PLANES 1: al, bl off). The steps k0 .. ke of the depth kc
// (wgemm's contract).
template <bool AT, bool BT, int NT, typename E>
__device__ __forceinline__ void wgemm2(float (&acc)[NT][4], const E* A, const E* Al, int lda, int m0, const E* B, const E* Bl, int ldb,
                                        int n0, int kc, int lane, bool al, bool bl, int k0 = 0, int ke = 1 << 30) {
    al = al && Sp<E>::SP == 2;
    bl = bl && Sp<E>::SP == 2;
    if constexpr (sizeof(E) == 2) {
        static_assert(NT % 2 == 0, "bf16 warp products take n-tiles in pairs");
        const WAddrA<AT> wa(A, lda, m0, lane), wal(Al, lda, m0, lane);
        const WAddrB<BT> wb(B, ldb, n0, lane), wbl(Bl, ldb, n0, lane);
        for (int k = 0; k < kc / 16; ++k) {
            if (16 * k < k0 || 16 * k >= ke) continue;
            unsigned a[4], a2[4];
            wa.load(a, k);
            if (al) wal.load(a2, k);
            #pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned b[4], b2[4];
                wb.load(b, k, np);
                if (bl) wbl.load(b2, k, np);
                mma16816(acc[2 * np], a, b[0], b[1]);
                mma16816(acc[2 * np + 1], a, b[2], b[3]);
                if (al) {
                    mma16816(acc[2 * np], a2, b[0], b[1]);
                    mma16816(acc[2 * np + 1], a2, b[2], b[3]);
                }
                if (bl) {
                    mma16816(acc[2 * np], a, b2[0], b2[1]);
                    mma16816(acc[2 * np + 1], a, b2[2], b2[3]);
                }
            }
        }
    } else {
        wgemm<AT, BT, NT>(acc, A, lda, m0, B, ldb, n0, kc, lane, k0, ke);
    }
}

// wgemm2 with its terms one after another over the whole depth (a loop the compiler keeps
// rolled): fewer live fragments, for kernels held to a register budget.
template <bool AT, bool BT, int NT, typename E>
__device__ __forceinline__ void wgemm2_seq(float (&acc)[NT][4], const E* A, const E* Al, int lda, int m0, const E* B, const E* Bl,
                                           int ldb, int n0, int kc, int lane, bool al, bool bl, int k0 = 0, int ke = 1 << 30) {
    const int nterm = Sp<E>::SP == 2 ? 3 : 1;
    #pragma unroll 1
    for (int term = 0; term < nterm; ++term) {
        if ((term == 1 && !al) || (term == 2 && !bl)) continue;
        wgemm<AT, BT, NT>(acc, term == 1 ? Al : A, lda, m0, term == 2 ? Bl : B, ldb, n0, kc, lane, k0, ke);
    }
}

// The sum of x over the 4 lanes of a fragment row (lanes 4 fg .. 4 fg + 3).
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// The chunk-local G (inclusive cumsum of the log decay, times log2(e)) of 64 rows into sg[64]:
// gl [rows, HV] f32 (null: no decay), rows >= L read as 0 (so G[63] = G[L - 1]). Warp-level:
// every lane of one warp calls it.
__device__ __forceinline__ void chunk_gscan(float* sg, const float* __restrict__ gl, idx_t r0, int L, int HV, int hv, int lane) {
    float a = (gl != nullptr && lane < L) ? gl[(r0 + lane) * HV + hv] : 0.f;
    float b = (gl != nullptr && lane + 32 < L) ? gl[(r0 + lane + 32) * HV + hv] : 0.f;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float x = __shfl_up_sync(0xffffffffu, a, o), y = __shfl_up_sync(0xffffffffu, b, o);
        if (lane >= o) {
            a += x;
            b += y;
        }
    }
    b += __shfl_sync(0xffffffffu, a, 31);
    sg[lane] = a * L2E;
    sg[lane + 32] = b * L2E;
}
