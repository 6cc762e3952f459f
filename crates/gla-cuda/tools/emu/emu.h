// A CPU emulator for the CUDA subset the delta-rule kernels use, to check them without a GPU
// (crates/gla-cuda/tools/emu/README.md). Every thread of a block is a fiber (its own stack; a
// hand-written x86-64 context switch); __syncthreads and the warp collectives (shuffles,
// ldmatrix, mma.sync m16n8k16) are barriers over the block's or the warp's live fibers, run
// round-robin: a thread runs until its next barrier, so a write that races ahead of a read shows
// as a wrong result, and a barrier not every thread reaches is reported as a deadlock. cp.async
// copies read their source at issue and land at the wait that covers them (a read before the
// wait sees the old contents). Dynamic shared memory starts as 0xff bytes (NaN).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define DELTA_EMU 1
#define DELTA_SMEM(name) unsigned char* name = emu::g_dyn
#define DELTA_SMEM_END(base, end) emu::smem_check((const void*)(base), (const void*)(end))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct alignas(8) uint2 {
    unsigned x, y;
};
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
// the read-only cache load: a plain load here
template <typename T>
inline T __ldg(const T* p) { return *p; }
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

namespace emu {

extern "C" void emu_switch(void** from_sp, void* to_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
)");

struct Pend {
    void* dst;
    unsigned char data[16];
    int n = 16;  // bytes
};

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;
    dim3 tidx;
    int tid = 0;
    bool done = false;
    int wait = 0;  // 0 running, 1 block barrier, 2 warp barrier
    unsigned gen = 0;
    std::vector<Pend> open;
    std::vector<std::vector<Pend>> groups;
};

constexpr size_t STACK = 256 * 1024;
inline std::vector<Fiber> g_f;
inline Fiber* cur = nullptr;
inline void* g_sched_sp = nullptr;
inline dim3 g_block, g_bdim, g_gdim;
inline unsigned char* g_dyn = nullptr;
inline unsigned g_bar_gen = 0;
inline int g_bar_arr = 0;
inline unsigned g_wgen[32];
inline int g_warr[32];
inline int g_live, g_wlive[32];
// warpgroup barriers (the warpgroup products' emulation): per group of 4 warps
inline unsigned g_ggen[8];
inline int g_garr[8], g_glive[8];
inline void (*g_body)() = nullptr;
inline long long g_switches = 0;

// per-warp exchange buffer of the collectives
struct Lane {
    uint64_t v;
    const void* p;
    unsigned a[4], b[2];
};
inline Lane g_wbuf[32][32];

inline void yield() {
    ++g_switches;
    emu_switch(&cur->sp, g_sched_sp);
}
inline void tramp() {
    g_body();
    cur->done = true;
    emu_switch(&cur->sp, g_sched_sp);
    std::abort();
}

inline int lane_id() { return cur->tid & 31; }
inline int warp_id() { return cur->tid >> 5; }

inline void syncthreads() {
    cur->wait = 1;
    cur->gen = g_bar_gen;
    ++g_bar_arr;
    yield();
}
inline void syncwarp() {
    const int w = warp_id();
    cur->wait = 2;
    cur->gen = g_wgen[w];
    ++g_warr[w];
    yield();
}
// a barrier of the thread's warpgroup (threads 128 x .. 128 x + 127)
inline void syncgroup() {
    const int x = cur->tid >> 7;
    cur->wait = 3;
    cur->gen = g_ggen[x];
    ++g_garr[x];
    yield();
}

// runs one block: nthr fibers of g_body
inline void run_block(int nthr) {
    if ((int)g_f.size() < nthr) g_f.resize(nthr);
    g_live = nthr;
    g_bar_arr = 0;
    for (int w = 0; w < 32; ++w) {
        g_warr[w] = 0;
        g_wlive[w] = 0;
    }
    for (int x = 0; x < 8; ++x) {
        g_garr[x] = 0;
        g_glive[x] = 0;
    }
    for (int t = 0; t < nthr; ++t) {
        Fiber& f = g_f[t];
        if (!f.stack) f.stack = (char*)std::aligned_alloc(64, STACK);
        f.tid = t;
        f.tidx.x = t % g_bdim.x;
        f.tidx.y = (t / g_bdim.x) % g_bdim.y;
        f.tidx.z = t / (g_bdim.x * g_bdim.y);
        f.done = false;
        f.wait = 0;
        f.open.clear();
        f.groups.clear();
        uintptr_t top = ((uintptr_t)(f.stack + STACK)) & ~(uintptr_t)15;
        void** sp = (void**)top;
        *--sp = nullptr;          // fake return address of tramp
        *--sp = (void*)&tramp;    // ret target
        for (int r = 0; r < 6; ++r) *--sp = nullptr;
        f.sp = sp;
        ++g_wlive[t >> 5];
        ++g_glive[t >> 7];
    }
    while (g_live > 0) {
        bool progress = false;
        for (int t = 0; t < nthr; ++t) {
            Fiber& f = g_f[t];
            if (f.done) continue;
            if (f.wait == 1 && f.gen == g_bar_gen) continue;
            if (f.wait == 2 && f.gen == g_wgen[t >> 5]) continue;
            if (f.wait == 3 && f.gen == g_ggen[t >> 7]) continue;
            f.wait = 0;
            cur = &f;
            emu_switch(&g_sched_sp, f.sp);
            progress = true;
            if (f.done) {
                --g_live;
                --g_wlive[t >> 5];
                --g_glive[t >> 7];
                if (!f.open.empty() || !f.groups.empty()) {
                    // copies never waited for still land (the kernel exits; nothing reads them)
                    f.open.clear();
                    f.groups.clear();
                }
            }
            if (g_bar_arr > 0 && g_bar_arr == g_live) {
                g_bar_arr = 0;
                ++g_bar_gen;
            }
            for (int w = 0; w < 32; ++w) {
                if (g_warr[w] > 0 && g_warr[w] == g_wlive[w]) {
                    g_warr[w] = 0;
                    ++g_wgen[w];
                }
            }
            for (int x = 0; x < 8; ++x) {
                if (g_garr[x] > 0 && g_garr[x] == g_glive[x]) {
                    g_garr[x] = 0;
                    ++g_ggen[x];
                }
            }
        }
        if (!progress) {
            std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u): %d live threads, %d at the block barrier\n", g_block.x, g_block.y,
                         g_block.z, g_live, g_bar_arr);
            std::abort();
        }
    }
}

inline std::vector<unsigned char> g_dynbuf;
inline size_t g_smem = 0;
// a kernel's carve-up of its dynamic shared memory must end inside what the launch gave it
inline void smem_check(const void* base, const void* end) {
    const size_t used = (const char*)end - (const char*)base;
    if (used > g_smem) {
        std::fprintf(stderr, "emu: the kernel uses %zu bytes of dynamic shared memory, the launch gave %zu\n", used, g_smem);
        std::abort();
    }
}

// launches body (one thread's work) over grid x block with smem bytes of dynamic shared memory
template <class F>
void launch(dim3 grid, dim3 block, size_t smem, F body) {
    static F* fp;
    fp = &body;
    g_body = [] { (*fp)(); };
    g_gdim = grid;
    g_bdim = block;
    const int nthr = block.x * block.y * block.z;
    if (nthr > 1024 || nthr % 32 != 0) {
        std::fprintf(stderr, "emu: bad block size %d\n", nthr);
        std::abort();
    }
    if (smem > 227 * 1024) {
        std::fprintf(stderr, "emu: %zu bytes of shared memory > 227 KB\n", smem);
        std::abort();
    }
    g_smem = smem;
    // at most 15 bytes past the aligned region (its alignment), so that under AddressSanitizer
    // (build.py, EMU_ASAN=1) a kernel's access past the launch's dynamic shared memory reports
    g_dynbuf.assign(smem + 15, 0xff);
    g_dyn = g_dynbuf.data() + (16 - ((uintptr_t)g_dynbuf.data() & 15)) % 16;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block = {bx, by, bz};
                std::memset(g_dyn, 0xff, smem);
                run_block(nthr);
            }
}

template <class T>
inline uint64_t bits(T v) {
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T>
inline T unbits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

template <class T>
T shfl_gen(T v, int src_of_lane) {
    const int w = warp_id(), l = lane_id();
    g_wbuf[w][l].v = bits(v);
    syncwarp();
    const int s = src_of_lane;
    T r = (s < 0 || s > 31) ? v : unbits<T>(g_wbuf[w][s].v);
    syncwarp();
    return r;
}

inline float bf2f(unsigned short x) {
    unsigned u = (unsigned)x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace emu

#define threadIdx (emu::cur->tidx)
#define blockIdx (emu::g_block)
#define blockDim (emu::g_bdim)
#define gridDim (emu::g_gdim)

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::syncwarp(); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int m) {
    return emu::shfl_gen(v, emu::lane_id() ^ m);
}
inline int __any_sync(unsigned, int p) {
    const int w = emu::warp_id(), l = emu::lane_id();
    emu::g_wbuf[w][l].v = p != 0;
    emu::syncwarp();
    int r = 0;
    for (int i = 0; i < 32; ++i) r |= emu::g_wbuf[w][i].v != 0;
    emu::syncwarp();
    return r;
}
template <class T>
T __shfl_sync(unsigned, T v, int s) {
    return emu::shfl_gen(v, s);
}
template <class T>
T __shfl_up_sync(unsigned, T v, int o) {
    const int l = emu::lane_id();
    return emu::shfl_gen(v, l - o >= 0 ? l - o : -1);
}

inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// fibers run one at a time: a plain read-modify-write is atomic
inline float atomicAdd(float* p, float v) {
    const float o = *p;
    *p = o + v;
    return o;
}
inline float __expf(float x) { return std::exp(x); }
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    return a < b ? a : b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    return a < b ? b : a;
}

// ---- the PTX helpers of common/{base,mma,chunk}.cuh, emulated
inline unsigned short f2bf(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
inline unsigned pack2(float lo, float hi) { return (unsigned)f2bf(lo) | ((unsigned)f2bf(hi) << 16); }
inline float ex2f(float x) {
    float y = exp2f(x);
    return (y != 0.f && std::fabs(y) < 1.17549435e-38f) ? 0.f : y;
}
inline void ldsm_gen(unsigned r[4], const unsigned short* p, bool trans) {
    const int w = emu::warp_id(), l = emu::lane_id();
    emu::g_wbuf[w][l].p = p;
    emu::syncwarp();
    for (int m = 0; m < 4; ++m) {
        unsigned short e[2];
        for (int x = 0; x < 2; ++x) {
            if (!trans) {
                const unsigned short* row = (const unsigned short*)emu::g_wbuf[w][8 * m + (l >> 2)].p;
                e[x] = row[2 * (l & 3) + x];
            } else {
                const unsigned short* row = (const unsigned short*)emu::g_wbuf[w][8 * m + 2 * (l & 3) + x].p;
                e[x] = row[l >> 2];
            }
        }
        r[m] = (unsigned)e[0] | ((unsigned)e[1] << 16);
    }
    emu::syncwarp();
}
// The warp exchange of an emulated mma.sync: this lane's A and B registers into its warp's
// buffer, then a barrier over the warp; returns the warp (every lane's registers at g_wbuf[w]).
inline int mma_publish(const unsigned a[4], unsigned b0, unsigned b1) {
    const int w = emu::warp_id(), l = emu::lane_id();
    for (int x = 0; x < 4; ++x) emu::g_wbuf[w][l].a[x] = a[x];
    emu::g_wbuf[w][l].b[0] = b0;
    emu::g_wbuf[w][l].b[1] = b1;
    emu::syncwarp();
    return w;
}
// Once every lane has read the buffer (a barrier over the warp): this lane's accumulator
// fragment (rows g, g + 8, columns 2 t, 2 t + 1) plus A B, each output's KD terms added in k
// order in f32.
template <int KD>
inline void mma_accum(float c[4], const float (&A)[16][KD], const float (&B)[KD][8]) {
    emu::syncwarp();
    const int l = emu::lane_id(), g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; ++e) {
        const int r = g + (e >= 2 ? 8 : 0), cc = 2 * t + (e & 1);
        float s = c[e];
        for (int kk = 0; kk < KD; ++kk) s += A[r][kk] * B[kk][cc];
        c[e] = s;
    }
}
inline void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    const int w = mma_publish(a, b0, b1);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; ++L) {
        const int g = L >> 2, t = L & 3;
        const emu::Lane& z = emu::g_wbuf[w][L];
        auto lo = [](unsigned u) { return emu::bf2f((unsigned short)(u & 0xffff)); };
        auto hi = [](unsigned u) { return emu::bf2f((unsigned short)(u >> 16)); };
        A[g][2 * t] = lo(z.a[0]);
        A[g][2 * t + 1] = hi(z.a[0]);
        A[g + 8][2 * t] = lo(z.a[1]);
        A[g + 8][2 * t + 1] = hi(z.a[1]);
        A[g][2 * t + 8] = lo(z.a[2]);
        A[g][2 * t + 9] = hi(z.a[2]);
        A[g + 8][2 * t + 8] = lo(z.a[3]);
        A[g + 8][2 * t + 9] = hi(z.a[3]);
        B[2 * t][g] = lo(z.b[0]);
        B[2 * t + 1][g] = hi(z.b[0]);
        B[2 * t + 8][g] = lo(z.b[1]);
        B[2 * t + 9][g] = hi(z.b[1]);
    }
    mma_accum(c, A, B);
}
// common/mma.cuh's tf32 rounding (cvt.rna: to nearest, ties away from zero) and m16n8k8 tf32
// product: A's and B's elements with their low 13 bits cleared (what the hardware reads), each
// output's 8 terms added in k order in f32
inline unsigned tf32_rna(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return u;
}
inline void mma1688tf32(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
    const int w = mma_publish(a, b0, b1);
    float A[16][8], B[8][8];
    auto f = [](unsigned u) { return __uint_as_float(u & 0xffffe000u); };
    for (int L = 0; L < 32; ++L) {
        const int g = L >> 2, t = L & 3;
        const emu::Lane& z = emu::g_wbuf[w][L];
        A[g][t] = f(z.a[0]);
        A[g + 8][t] = f(z.a[1]);
        A[g][t + 4] = f(z.a[2]);
        A[g + 8][t + 4] = f(z.a[3]);
        B[t][g] = f(z.b[0]);
        B[t + 4][g] = f(z.b[1]);
    }
    mma_accum(c, A, B);
}
// cp.async of 16 bytes into shared memory at s (common/mma.cuh's cp16a / cp16, attn's att_cp16)
inline void cp_async16(void* s, const void* g, bool ok) {
    if (((uintptr_t)s & 15) || (ok && ((uintptr_t)g & 15))) {
        std::fprintf(stderr, "emu: misaligned cp.async %p <- %p\n", s, g);
        std::abort();
    }
    emu::Pend p;
    p.dst = s;
    if (ok) {
        std::memcpy(p.data, g, 16);
    } else {
        std::memset(p.data, 0, 16);
    }
    emu::cur->open.push_back(p);
}
// cp.async of 4 bytes (common/mma.cuh's cp4a)
inline void cp_async4(void* s, const void* g) {
    if (((uintptr_t)s & 3) || ((uintptr_t)g & 3)) {
        std::fprintf(stderr, "emu: misaligned cp.async %p <- %p\n", s, g);
        std::abort();
    }
    emu::Pend p;
    p.dst = s;
    p.n = 4;
    std::memcpy(p.data, g, 4);
    emu::cur->open.push_back(p);
}
// attn/common.cuh's reduction add (fibers run one at a time: a plain add is atomic)
inline void att_red2(float* p, float a, float b) {
    if ((uintptr_t)p & 7) {
        std::fprintf(stderr, "emu: misaligned red.v2.f32 %p\n", (void*)p);
        std::abort();
    }
    p[0] += a;
    p[1] += b;
}
// common/wgmma.cuh's warpgroup products: a thread's accumulators computed at issue from the
// operands in shared memory (fibers run one at a time, so the tiles every thread stored before
// the barrier are in place); the fences, commit and wait order nothing more. Only the
// 128-byte-swizzled layouts the descriptor can name are read (anything else aborts).
inline unsigned short wg_ld(unsigned long long desc, int row, int k, bool mn) {
    const unsigned start = (unsigned)(desc & 0x3fff) << 4, lbo = (unsigned)((desc >> 16) & 0x3fff) << 4,
                   sbo = (unsigned)((desc >> 32) & 0x3fff) << 4;
    if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0) {
        std::fprintf(stderr, "emu: wgmma descriptor %llx: only the 128-byte swizzle is emulated\n", desc);
        std::abort();
    }
    // K-major: row = the M or N index, 8-row groups sbo apart; MN-major: row = the N index, 64-N
    // blocks lbo apart, 8-K groups sbo apart, a K row 128 bytes
    unsigned off = mn ? start + (unsigned)(row / 64) * lbo + (unsigned)(k / 8) * sbo + (unsigned)(k % 8) * 128 + 2u * (unsigned)(row % 64)
                      : start + (unsigned)(row / 8) * sbo + (unsigned)(row % 8) * 128 + 2u * (unsigned)k;
    off ^= ((off >> 7) & 7u) << 4;
    if (off + 2 > emu::g_smem) {
        std::fprintf(stderr, "emu: wgmma reads shared byte %u of %zu\n", off, emu::g_smem);
        std::abort();
    }
    unsigned short v;
    std::memcpy(&v, emu::g_dyn + off, 2);
    return v;
}
// d (64 x N, N / 2 per thread) += A B^T from shared memory (the m64nNk16 products)
template <int N, int TA, int TB>
inline void wg_m64nk16(float* d, unsigned long long da, unsigned long long db) {
    const int t = threadIdx.x % 128, w = t / 32, l = t % 32;
    for (int i = 0; i < N / 2; ++i) {
        const int row = 16 * w + l / 4 + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * (l % 4) + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; ++k) s += emu::bf2f(wg_ld(da, row, k, TA != 0)) * emu::bf2f(wg_ld(db, col, k, TB != 0));
        d[i] = s;
    }
}
template <int TB>
inline void wg_m64n128k16(float (&d)[64], unsigned long long da, unsigned long long db) {
    wg_m64nk16<128, 0, TB>(d, da, db);
}
template <int TA, int TB>
inline void wg_m64n64k16(float (&d)[32], unsigned long long da, unsigned long long db) {
    wg_m64nk16<64, TA, TB>(d, da, db);
}
template <int TA, int TB>
inline void wg_m64n32k16(float (&d)[16], unsigned long long da, unsigned long long db) {
    wg_m64nk16<32, TA, TB>(d, da, db);
}
// the A-from-registers product: each thread's fragment goes to a per-block table, then (a
// warpgroup barrier: its 128 threads issue the product together) each computes its accumulators
// from its warp's fragments
inline unsigned g_wga[1024][4];
template <int N, int TB>
inline void wg_m64nk16_rs(float* d, const unsigned (&a)[4], unsigned long long db) {
    const int t = threadIdx.x, l = t % 32, w0 = t - l;
    for (int j = 0; j < 4; ++j) g_wga[t][j] = a[j];
    emu::syncgroup();
    // A(r, k) of the warp's 16 rows: lane 4 (r % 8) + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2
    auto av = [&](int r, int k) {
        const unsigned u = g_wga[w0 + 4 * (r % 8) + (k % 8) / 2][r / 8 + 2 * (k / 8)];
        return emu::bf2f((unsigned short)(k % 2 ? u >> 16 : u & 0xffff));
    };
    for (int i = 0; i < N / 2; ++i) {
        const int r = l / 4 + 8 * ((i % 4) / 2), col = 8 * (i / 4) + 2 * (l % 4) + i % 2;
        float s = d[i];
        for (int k = 0; k < 16; ++k) s += av(r, k) * emu::bf2f(wg_ld(db, col, k, TB != 0));
        d[i] = s;
    }
    emu::syncgroup();
}
template <int TB>
inline void wg_m64n128k16_rs(float (&d)[64], const unsigned (&a)[4], unsigned long long db) {
    wg_m64nk16_rs<128, TB>(d, a, db);
}
template <int TB>
inline void wg_m64n64k16_rs(float (&d)[32], const unsigned (&a)[4], unsigned long long db) {
    wg_m64nk16_rs<64, TB>(d, a, db);
}
inline void wg_fence_proxy() {}
inline void wg_fence() {}
inline void wg_commit() {}
inline void wg_wait0() {}
// fibers run one at a time in one address space: a fence orders nothing more
inline void __threadfence() {}
// common/mma.cuh's 32-bit shared addresses: byte offsets into the dynamic shared memory
inline unsigned smem_addr(const void* p) { return (unsigned)((const unsigned char*)p - emu::g_dyn); }
inline void ldsm4a(unsigned r[4], unsigned a) { ldsm_gen(r, (const unsigned short*)(emu::g_dyn + a), false); }
inline void ldsm4ta(unsigned r[4], unsigned a) { ldsm_gen(r, (const unsigned short*)(emu::g_dyn + a), true); }
inline void att_cp16(unsigned a, const void* g) { cp_async16(emu::g_dyn + a, g, true); }
inline void cp16a(unsigned a, const void* g, bool ok) { cp_async16(emu::g_dyn + a, g, ok); }
inline void cp4a(unsigned a, const void* g) { cp_async4(emu::g_dyn + a, g); }
inline void cp_commit() {
    emu::cur->groups.push_back(std::move(emu::cur->open));
    emu::cur->open.clear();
}
inline void cp_wait_n(int n) {
    auto& gs = emu::cur->groups;
    while ((int)gs.size() > n) {
        for (auto& p : gs.front()) std::memcpy(p.dst, p.data, p.n);
        gs.erase(gs.begin());
    }
}
inline void cp_wait0() { cp_wait_n(0); }
template <int N>
inline void cp_wait() {
    cp_wait_n(N);
}
