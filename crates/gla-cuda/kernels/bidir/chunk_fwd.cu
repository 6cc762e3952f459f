// bidir/chunk_fwd.cu: the fused chunked forward of ViG's bidirectional GLA scan (bf16 storage,
// f32 accumulators, every matmul on the tensor cores). Math: docs/math/bidir.md.
//
// Contract: q, k, gf, gb [rows, H, K], v, o [rows, H, V] bf16; gf, gb <= 0 (per-key log
// decays of the forward and the backward scan); `scale` is the op's scale times 1/2 (COMBINE),
// so o = of + ob. No initial or final state. K <= 128, any V. Compiled after gla/chunk_fwd.cu
// and gla/chunk_h.cu (src/kernels.rs), whose building blocks it runs: chunk_h (the state walk)
// and o_pass_a (A of one chunk, with `rev` reading the chunk's rows in reverse).
//
// Three launches, each covering both directions:
//   bidir_chunk_prep_bf16: grid (chunks, ceil(H K / 128)), 128 threads, one per (head, key
//     channel) column j = h K + ch of the rows (so narrow heads share a block):
//     kdf = k exp(Gf_last - Gf), dlf = exp(Gf_last)        (forward: inclusive cumsum Gf)
//     kdb = k exp(sum_{u<t} gb_u), dlb = exp(sum gb)       (backward: exclusive prefix of gb)
//     kdf, kdb shaped like k; dlf, dlb [chunks, H, K] f32; with qef (backward pass, else null):
//     qef = q scale exp(Gf), qeb = q scale exp(sum_{u>=t} gb_u) (each scan's own cumsum).
//   bidir_chunk_h{64,32}_bf16: grid (ceil(V/BVH), ceil(K/64), 2 N H): blocks z < N H walk their
//     sequence's chunks left to right (hsf = the forward state entering each chunk), the others
//     right to left over kdb, dlb (hsb = the backward state entering each chunk from the right).
//     The state update is a sum over the chunk's rows, so the reversed walk reads rows in
//     their stored order. hsf, hsb [chunks, H, K, V] bf16.
//   bidir_chunk_o_bf16: grid (chunks, H, ceil(V/128)), 256 threads: per direction o_pass_a (A
//     and q scale exp(G) of the chunk; the backward one on the chunk's rows reversed, whose
//     causal form is the anti-causal scan), then o_dir = qe S_dir + A v for the block's
//     128-wide V tile; the forward's tile waits in shared memory (f32) and the backward's adds
//     to it at the mirrored row: o is written once, in bf16.

extern "C" __global__ void __launch_bounds__(128) bidir_chunk_prep_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ gf, const bf16_t* __restrict__ gb,
    bf16_t* __restrict__ kdf, bf16_t* __restrict__ kdb, float* __restrict__ dlf, float* __restrict__ dlb, bf16_t* __restrict__ qef,
    bf16_t* __restrict__ qeb, const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq,
    int H, int K, float scale) {
    const idx_t cg = blockIdx.x;
    const int j = 128 * blockIdx.y + threadIdx.x, hk = H * K;  // column j = h K + ch of a row
    const auto [r0, L] = chunk_rows(cg, bounds, chunk_off, chunk_seq);
    if (j >= hk) return;
    float tf = 0.f, tb = 0.f;
    #pragma unroll 8
    for (int t = 0; t < L; ++t) {
        const idx_t off = (r0 + t) * (idx_t)hk + j;
        tf += to_f32(gf[off]);
        tb += to_f32(gb[off]);
    }
    float rf = 0.f, rb = 0.f;  // inclusive cumsum of gf; exclusive prefix of gb
    #pragma unroll 4
    for (int t = 0; t < L; ++t) {
        const idx_t off = (r0 + t) * (idx_t)hk + j;
        rf += to_f32(gf[off]);
        const float kk = to_f32(k[off]);
        kdf[off] = f2bf(kk * ex2f((tf - rf) * L2E));
        kdb[off] = f2bf(kk * ex2f(rb * L2E));
        if (qef != nullptr) {
            // the backward scan's cumsum at row t, in its own (reversed) order: the suffix sum
            const float qs = to_f32(q[off]) * scale;
            qef[off] = f2bf(qs * ex2f(rf * L2E));
            qeb[off] = f2bf(qs * ex2f((tb - rb) * L2E));
        }
        rb += to_f32(gb[off]);
    }
    const idx_t d = cg * (idx_t)hk + j;
    dlf[d] = ex2f(tf * L2E);
    dlb[d] = ex2f(tb * L2E);
}

// both state walks in one grid: z < NH forward, z >= NH backward (sequence-head z - NH)
#define BIDIR_HENTRY(NAME, BVH)                                                                           \
extern "C" __global__ void __launch_bounds__(128) NAME(                                                  \
    const bf16_t* kdf, const bf16_t* kdb, const bf16_t* v, const float* dlf, const float* dlb,           \
    bf16_t* hsf, bf16_t* hsb, const idx_t* bounds, const idx_t* chunk_off, int H, int K, int V, int NH) { \
    const int z = blockIdx.z;                                                                            \
    if (z < NH) chunk_h<BVH, false>(kdf, v, dlf, nullptr, hsf, nullptr, bounds, chunk_off, H, K, V, z);  \
    else chunk_h<BVH, true>(kdb, v, dlb, nullptr, hsb, nullptr, bounds, chunk_off, H, K, V, z - NH);     \
}
BIDIR_HENTRY(bidir_chunk_h64_bf16, 64)
BIDIR_HENTRY(bidir_chunk_h32_bf16, 32)

#define BIDIR_OS 132  // f32 row stride of the forward direction's output tile
#define BIDIR_OSN 68   // the same for V <= 64

// dynamic smem: chunk_o_smem_bytes(Kp) (o_pass_a's layout, gla/chunk_fwd.cu), then at byte
// offset os_off the forward's output tile OS [64][BIDIR_OS] f32; for V <= 64 OS [64][BIDIR_OSN]
// and the v and state tiles VB [64][LDH], SB [Kp][LDH] bf16 (src/bidir/dispatch.rs o_smem)
extern "C" __global__ void __launch_bounds__(256, 2) bidir_chunk_o_bf16(
    const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, const bf16_t* __restrict__ gf,
    const bf16_t* __restrict__ gb, const bf16_t* __restrict__ hsf, const bf16_t* __restrict__ hsb, bf16_t* __restrict__ o,
    const idx_t* __restrict__ bounds, const idx_t* __restrict__ chunk_off, const int* __restrict__ chunk_seq, int H, int K, int V,
    float scale, int Kp, int os_off) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int LDK = Kp + 8;
    bf16_t* R0 = (bf16_t*)smem_raw;
    bf16_t* R1 = R0 + 64 * LDK;
    float* R2 = (float*)(R1 + 64 * OV);
    bf16_t* R3 = (bf16_t*)(R2 + 64 * Kp);
    bf16_t* R4 = R3 + 64 * LDK;
    bf16_t* RA = R4 + 48 * LDK;
    bf16_t* RS = (bf16_t*)R2;  // S_c, after A is done
    float* OS = (float*)(smem_raw + os_off);
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, fg = lane >> 2, ft = lane & 3;
    const idx_t cg = blockIdx.x;
    const int h = blockIdx.y, v0 = 128 * blockIdx.z, Vc = min(128, V - v0);
    // V <= 64 (narrow, ViG's heads): OS is [64][BIDIR_OSN], then the direction's v tile VB
    // [64][LDH] and state tile SB [Kp][LDH] in buffers of their own, so their loads are issued
    // before o_pass_a and land with its q, k, g instead of after it
    // the head's V, not the tile's Vc: the host sizes the narrow layout by V (a wide head's last
    // tile may hold <= 64 columns in the wide layout)
    const bool narrow = V <= 64;
    auto vbuf = [&]() { return (bf16_t*)(smem_raw + os_off + 64 * BIDIR_OSN * 4); };
    auto sbuf = [&]() { return vbuf() + 64 * LDH; };
    const ChunkRows cr = chunk_rows(cg, bounds, chunk_off, chunk_seq);  // named: the lambda below captures them
    const idx_t r0 = cr.r0;
    const int L = cr.L;
    const bool vv = (V & 7) == 0;
    const int mt = w & 3, nh = w >> 2;
    for (int dir = 0; dir < 2; ++dir) {
        const bool rev = dir == 1;
        // the forward's P5/P6 read R0, R1, RS (narrow: VB, SB) until here
        if (rev) __syncthreads();
        // the direction's v rows (reversed for the backward scan) and state tile (formed where
        // used, not held across o_pass_a)
        auto vsrc = [&]() { return v + ((rev ? r0 + L - 1 : r0) * H + h) * (idx_t)V + v0; };
        auto vld = [&]() { return rev ? -(idx_t)H * V : (idx_t)H * V; };
        auto ssrc = [&]() { return (rev ? hsb : hsf) + (cg * H + h) * (idx_t)K * V + v0; };
        if (narrow) {
            // o_pass_a's first wait covers this group too
            tile_load(vbuf(), LDH, vsrc(), vld(), L, Vc, 64, vv, true, tid, 256);
            state_tile_load<64>(sbuf(), ssrc(), K, V, Vc, Kp, vv, tid);
            cp_commit();
        }
        {
            float dacc[3], c2[2][4];
            o_pass_a<false>(q, k, rev ? gb : gf, smem_raw, r0, L, H, h, K, K, scale, Kp, 0, K, dacc, c2, rev);
        }
        // P4 reads R1, R3, R4 until here
        __syncthreads();
        if (!narrow) {
            tile_load(R1, OV, vsrc(), vld(), L, Vc, 128, vv, true, tid, 256);
            state_tile_load<128>(RS, ssrc(), K, V, Vc, Kp, vv, tid);
            cp_commit();
            cp_wait0();
            __syncthreads();
        }
        // warp (mt, nh): rows 16 mt, CW columns from CW nh, CW = 64, or 32 where the tile holds
        // at most 64 (ViG's V = 64: all 8 warps share the products instead of 4)
        auto prod = [&](auto npc) {
            constexpr int NP = decltype(npc)::value, CW = 16 * NP;
            // the narrow form (NP = 2) reads its own tiles and the narrow OS
            constexpr int LB = NP == 2 ? LDH : OV, LO = NP == 2 ? BIDIR_OSN : BIDIR_OS;
            const bf16_t* Sm = NP == 2 ? sbuf() : RS;
            const bf16_t* Vm = NP == 2 ? vbuf() : R1;
            if (CW * nh >= Vc) return;  // the same warps skip in both directions
            float acc[2 * NP][4];
            #pragma unroll
            for (int nt = 0; nt < 2 * NP; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
            for (int kt = 0; kt < Kp; kt += 16) {
                unsigned a4[4];
                ldsm4a(a4, sfa(R0, LDK, 16 * mt, kt, lane));
                #pragma unroll
                for (int np = 0; np < NP; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(Sm, LB, kt, CW * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            for (int kt = 0; kt <= mt; ++kt) {
                unsigned a4[4];
                ldsm4a(a4, sfa(RA, LDH, 16 * mt, 16 * kt, lane));
                #pragma unroll
                for (int np = 0; np < NP; ++np) {
                    unsigned b4[4];
                    ldsm4ta(b4, sfbt(Vm, LB, 16 * kt, CW * nh + 16 * np, lane));
                    mma16816(acc[2 * np], a4, b4[0], b4[1]);
                    mma16816(acc[2 * np + 1], a4, b4[2], b4[3]);
                }
            }
            #pragma unroll
            for (int nt = 0; nt < 2 * NP; ++nt) {
                #pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int t = 16 * mt + fg + 8 * hr, jl = CW * nh + 8 * nt + 2 * ft;
                    if (!rev) {
                        *(float2*)(OS + t * LO + jl) = make_float2(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
                    } else if (t < L) {
                        // local row t of the reversed chunk is row L - 1 - t of the forward's tile
                        const int tn = L - 1 - t, j = v0 + jl;
                        const float2 f = *(const float2*)(OS + tn * LO + jl);
                        const float a = f.x + acc[nt][2 * hr], b = f.y + acc[nt][2 * hr + 1];
                        const idx_t off = ((r0 + tn) * H + h) * (idx_t)V + j;
                        if (j + 1 < V && (V & 1) == 0) {
                            *(unsigned*)(o + off) = pack2(a, b);
                        } else {
                            if (j < V) o[off] = f2bf(a);
                            if (j + 1 < V) o[off + 1] = f2bf(b);
                        }
                    }
                }
            }
        };
        if (narrow) prod(IntC<2>{});
        else prod(IntC<4>{});
    }
}
