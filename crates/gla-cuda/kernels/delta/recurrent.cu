// delta/recurrent.cu: the fused recurrent delta rule (DeltaNet, Gated DeltaNet): forward, the
// one-token decode step over a state table, and the backward. For decode and short sequences.
//
// Per sequence n, value head j (query/key head h = j / (HV / H)), state S [K, V] f32:
//     S' = a_t S;  p = S'^T k_t;  u = beta_t (v_t - p);  S_t = S' + k_t u^T;  o_t = scale S_t^T q_t
// with a_t = exp(g_t) (1 without a gate). The forward applies the op's elementwise maps inline
// (the L2 norm of q_t and k_t when l2; beta = bscale * sigmoid(b) when bscale > 0, else b itself;
// g the log decay (gmode 1) or -exp(A_log) softplus(a + dt_bias) (gmode 2)), so one launch serves
// a decode step. One block owns one (n, j) and a BV = 32 column tile of V: thread (lane, warp w)
// holds column v0 + lane and rows w, w + 8, ... of S in registers (K <= 8 * 32 = 256); the
// reductions over K (p, o) go through shared memory. Inputs E (f32 or bf16); states f32; o E.
//
// Backward (gradient of L = <do, o> + <dht, S_T>), same tiling; bt, gl the prepared beta and log
// decay (delta/prep.cu, f32), q and k raw (normalised inline):
//   pass 1, forward in time: dq_t = scale S_t do_t (partial over this V tile), S_{t-1}
//           checkpointed every CK steps (per-thread slots, coalesced)
//   pass 2, reverse, one CK-segment at a time: the segment's states recomputed from its
//           checkpoint into a per-block scratch, then walked backwards (naive.rs's order):
//           dS += scale q do^T; du = dS^T k; dv = beta du; dbeta = du . (v - p); dp = -beta du;
//           dk = dS u + S' dp; dS += k dp^T; dg = a <S_{t-1}, dS>; dS = a dS; dh0 = final dS
// dq, dk (at the normalised q, k), dbeta, dg are written per V tile as partials ([NV][...] f32, no
// atomics: repeated runs are bitwise equal) and summed by delta/prep.cu's backward.
// Launch: grid (ceil(V / 32), N * HV), block (32, 8).

#define RNW 8
#define RKPT 32
#define RBV 32
#define RCK 32

__device__ __forceinline__ float rsig(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float rsoftplus(float x) { return x > 20.f ? x : log1pf(expf(-fabsf(x))) + fmaxf(x, 0.f); }

// Step r's q and k (head h) into s_q, s_k (f32 [K], L2-normalised when l2), beta and a = exp(g)
// into s_sc[0], s_sc[1]. beta, g point at the raw inputs (raw = true) or the prepared f32 bt, gl
// (raw = false). Holds barriers: every thread of the block calls it.
template <typename E>
__device__ __forceinline__ void rec_step_in(const E* __restrict__ q, const E* __restrict__ k, const void* beta, const void* g,
                                            const float* __restrict__ a_log, const float* __restrict__ dt_bias, bool raw, idx_t r, int h,
                                            int hv, int H, int HV, int K, int l2, float bscale, int gmode, float* s_q, float* s_k,
                                            float* s_red, float* s_sc, int tid) {
    const int lane = tid & 31, w = tid >> 5;
    const idx_t o_k = (r * H + h) * (idx_t)K;
    __syncthreads();  // the previous step's readers of s_q, s_k, s_red, s_sc are done
    float pq = 0.f, pk = 0.f;
    for (int i = tid; i < K; i += RNW * 32) {
        const float a = to_f32(q[o_k + i]), b = to_f32(k[o_k + i]);
        s_q[i] = a;
        s_k[i] = b;
        pq += a * a;
        pk += b * b;
    }
    if (tid == 0) {
        const idx_t x = r * HV + hv;
        float bt, gv = 0.f;
        if (raw) {
            const float b = to_f32(((const E*)beta)[x]);
            bt = bscale > 0.f ? bscale * rsig(b) : b;
            if (gmode == 1) gv = to_f32(((const E*)g)[x]);
            if (gmode == 2) gv = -expf(a_log[hv]) * rsoftplus(to_f32(((const E*)g)[x]) + dt_bias[hv]);
        } else {
            bt = ((const float*)beta)[x];
            if (gmode > 0) gv = ((const float*)g)[x];
        }
        s_sc[0] = bt;
        s_sc[1] = expf(gv);
    }
    if (l2) {
        pq = warp_sum(pq);
        pk = warp_sum(pk);
        if (lane == 0) {
            s_red[w] = pq;
            s_red[RNW + w] = pk;
        }
    }
    __syncthreads();
    if (l2) {
        float sq = 0.f, sk = 0.f;
        #pragma unroll
        for (int x = 0; x < RNW; ++x) {
            sq += s_red[x];
            sk += s_red[RNW + x];
        }
        const float rq = rsqrtf(sq + DEPS), rk = rsqrtf(sk + DEPS);
        for (int i = tid; i < K; i += RNW * 32) {
            s_q[i] *= rq;
            s_k[i] *= rk;
        }
        __syncthreads();
    }
}

// the sum over the 8 warps of each lane's x (a reduction over K for column lane); every thread
// gets its lane's sum. Holds barriers.
__device__ __forceinline__ float rec_colsum(float x, float (*s_part)[RBV], int lane, int w) {
    __syncthreads();
    s_part[w][lane] = x;
    __syncthreads();
    float s = 0.f;
    #pragma unroll
    for (int y = 0; y < RNW; ++y) s += s_part[y][lane];
    return s;
}

template <typename E>
__device__ void rec_fwd(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ v, const E* __restrict__ beta,
                        const E* __restrict__ g, const float* __restrict__ a_log, const float* __restrict__ dt_bias, const float* h0,
                        E* __restrict__ o, float* ht, const idx_t* __restrict__ bounds, int n, int hv, int H, int HV, int K, int V,
                        float scale, int l2, float bscale, int gmode) {
    // h0 and ht point at this block's state [K, V] (or are null) and may be the same buffer (decode
    // updates in place): each thread reads its own elements before the time loop and writes the
    // same ones after it, so no __restrict__
    __shared__ float s_q[RNW * RKPT], s_k[RNW * RKPT], s_red[2 * RNW], s_sc[2], s_part[RNW][RBV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int h = hv / (HV / H);
    const int j = blockIdx.x * RBV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    float s[RKPT];
    #pragma unroll
    for (int m = 0; m < RKPT; ++m) {
        const int i = w + m * RNW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[(idx_t)i * V + j] : 0.f;
    }
    for (idx_t r = bos; r < eos; ++r) {
        rec_step_in<E>(q, k, beta, g, a_log, dt_bias, true, r, h, hv, H, HV, K, l2, bscale, gmode, s_q, s_k, s_red, s_sc, tid);
        const float bt = s_sc[0], a = s_sc[1];
        const idx_t o_v = (r * HV + hv) * (idx_t)V;
        const float vj = m_j ? to_f32(v[o_v + j]) : 0.f;
        float pp = 0.f;
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) {
                s[m] *= a;
                pp += s[m] * s_k[i];
            }
        }
        const float u = bt * (vj - rec_colsum(pp, s_part, lane, w));
        float oo = 0.f;
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) {
                s[m] += s_k[i] * u;
                oo += s[m] * s_q[i];
            }
        }
        oo = rec_colsum(oo, s_part, lane, w);
        if (w == 0 && m_j) o[o_v + j] = cvt<E>(scale * oo);
    }
    if (ht != nullptr && m_j) {
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) ht[(idx_t)i * V + j] = s[m];
        }
    }
}

template <typename E>
__device__ void rec_bwd(const E* __restrict__ q, const E* __restrict__ k, const E* __restrict__ v, const float* __restrict__ bt,
                        const float* __restrict__ gl, const float* __restrict__ h0, const E* __restrict__ d_o,
                        const float* __restrict__ dht, float* __restrict__ dq_part, float* __restrict__ dk_part, float* __restrict__ dv,
                        float* __restrict__ db_part, float* __restrict__ dg_part, float* __restrict__ dh0, float* __restrict__ ckpt,
                        float* __restrict__ scratch, const idx_t* __restrict__ bounds, int H, int HV, int K, int V, float scale, int l2,
                        int gmode, idx_t rows) {
    __shared__ float s_q[RNW * RKPT], s_k[RNW * RKPT], s_red[2 * RNW], s_sc[2], s_part[RNW][RBV];
    const int lane = threadIdx.x, w = threadIdx.y, tid = w * 32 + lane;
    const int i_nh = blockIdx.y, n = i_nh / HV, hv = i_nh % HV, h = hv / (HV / H), i_v = blockIdx.x, NV = gridDim.x;
    const int kpt = (K + RNW - 1) / RNW;
    const int j = i_v * RBV + lane;
    const bool m_j = j < V;
    const idx_t bos = bounds[n], eos = bounds[n + 1];
    const idx_t o_state = (idx_t)i_nh * K * V;
    const idx_t part = (idx_t)i_v * rows * HV * K, spart = (idx_t)i_v * rows * HV;
    const idx_t seg0 = bos / RCK + n;
    const idx_t blk = (idx_t)blockIdx.y * NV + i_v;
    float* p_scr = scratch + blk * RCK * kpt * (RNW * 32) + tid;
    const int gm = gl != nullptr ? 1 : 0;
    float s[RKPT];
    #pragma unroll
    for (int m = 0; m < RKPT; ++m) {
        const int i = w + m * RNW;
        s[m] = (h0 != nullptr && i < K && m_j) ? h0[o_state + (idx_t)i * V + j] : 0.f;
    }
    // pass 1: states forward in time, dq partials, a checkpoint of S_{t-1} every CK steps
    for (idx_t r = bos; r < eos; ++r) {
        if ((r - bos) % RCK == 0) {
            float* p_ck = ckpt + (((seg0 + (r - bos) / RCK) * HV + hv) * NV + i_v) * kpt * (RNW * 32) + tid;
            #pragma unroll
            for (int m = 0; m < RKPT; ++m)
                if (m < kpt) p_ck[m * (RNW * 32)] = s[m];
        }
        rec_step_in<E>(q, k, bt, gl, nullptr, nullptr, false, r, h, hv, H, HV, K, l2, 0.f, gm, s_q, s_k, s_red, s_sc, tid);
        const float b = s_sc[0], a = s_sc[1];
        const idx_t o_v = (r * HV + hv) * (idx_t)V, o_k = (r * HV + hv) * (idx_t)K;
        const float vj = m_j ? to_f32(v[o_v + j]) : 0.f, doj = m_j ? to_f32(d_o[o_v + j]) : 0.f;
        float pp = 0.f;
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) {
                s[m] *= a;
                pp += s[m] * s_k[i];
            }
        }
        const float u = b * (vj - rec_colsum(pp, s_part, lane, w));
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) {
                s[m] += s_k[i] * u;
                const float x = warp_sum(s[m] * doj);
                if (lane == 0) dq_part[part + o_k + i] = x * scale;
            }
        }
    }
    // pass 2: the state gradient backward in time, segment by segment
    float ds[RKPT];
    #pragma unroll
    for (int m = 0; m < RKPT; ++m) {
        const int i = w + m * RNW;
        ds[m] = (dht != nullptr && i < K && m_j) ? dht[o_state + (idx_t)i * V + j] : 0.f;
    }
    const idx_t nseg = (eos - bos + RCK - 1) / RCK;
    for (idx_t c = nseg - 1; c >= 0; --c) {
        const idx_t c0 = bos + c * RCK, c1 = min(eos, c0 + RCK);
        const float* p_ck = ckpt + (((seg0 + c) * HV + hv) * NV + i_v) * kpt * (RNW * 32) + tid;
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) s[m] = m < kpt ? p_ck[m * (RNW * 32)] : 0.f;
        for (idx_t r = c0; r < c1; ++r) {
            float* p_s = p_scr + (r - c0) * kpt * (RNW * 32);
            #pragma unroll
            for (int m = 0; m < RKPT; ++m)
                if (m < kpt) p_s[m * (RNW * 32)] = s[m];  // S_{r-1}
            rec_step_in<E>(q, k, bt, gl, nullptr, nullptr, false, r, h, hv, H, HV, K, l2, 0.f, gm, s_q, s_k, s_red, s_sc, tid);
            const float b = s_sc[0], a = s_sc[1];
            const float vj = m_j ? to_f32(v[(r * HV + hv) * (idx_t)V + j]) : 0.f;
            float pp = 0.f;
            #pragma unroll
            for (int m = 0; m < RKPT; ++m) {
                const int i = w + m * RNW;
                if (i < K) {
                    s[m] *= a;
                    pp += s[m] * s_k[i];
                }
            }
            const float u = b * (vj - rec_colsum(pp, s_part, lane, w));
            #pragma unroll
            for (int m = 0; m < RKPT; ++m) {
                const int i = w + m * RNW;
                if (i < K) s[m] += s_k[i] * u;
            }
        }
        for (idx_t r = c1 - 1; r >= c0; --r) {
            const float* p_s = p_scr + (r - c0) * kpt * (RNW * 32);
            rec_step_in<E>(q, k, bt, gl, nullptr, nullptr, false, r, h, hv, H, HV, K, l2, 0.f, gm, s_q, s_k, s_red, s_sc, tid);
            const float b = s_sc[0], a = s_sc[1];
            const idx_t o_v = (r * HV + hv) * (idx_t)V, o_k = (r * HV + hv) * (idx_t)K;
            const float vj = m_j ? to_f32(v[o_v + j]) : 0.f, doj = m_j ? to_f32(d_o[o_v + j]) : 0.f;
            // S' = a S_{r-1}, p = S'^T k
            float pp = 0.f;
            #pragma unroll
            for (int m = 0; m < RKPT; ++m) {
                const int i = w + m * RNW;
                if (i < K) pp += a * p_s[m * (RNW * 32)] * s_k[i];
            }
            const float pj = rec_colsum(pp, s_part, lane, w);
            const float u = b * (vj - pj);
            float dup = 0.f;
            #pragma unroll
            for (int m = 0; m < RKPT; ++m) {
                const int i = w + m * RNW;
                if (i < K) {
                    ds[m] += scale * s_q[i] * doj;
                    dup += ds[m] * s_k[i];
                }
            }
            const float du = rec_colsum(dup, s_part, lane, w);
            const float dp = -b * du;
            if (w == 0) {
                if (m_j) dv[o_v + j] = b * du;
                const float x = warp_sum(m_j ? du * (vj - pj) : 0.f);
                if (lane == 0) db_part[spart + r * HV + hv] = x;
            }
            float dgp = 0.f;
            #pragma unroll
            for (int m = 0; m < RKPT; ++m) {
                const int i = w + m * RNW;
                if (i < K) {
                    const float sp = p_s[m * (RNW * 32)];
                    const float x = warp_sum(ds[m] * u + a * sp * dp);
                    if (lane == 0) dk_part[part + o_k + i] = x;
                    ds[m] += s_k[i] * dp;
                    dgp += sp * ds[m];
                    ds[m] *= a;
                }
            }
            dgp = warp_sum(dgp);
            __syncthreads();
            if (lane == 0) s_red[w] = dgp;
            __syncthreads();
            if (tid == 0) {
                float t = 0.f;
                #pragma unroll
                for (int x = 0; x < RNW; ++x) t += s_red[x];
                dg_part[spart + r * HV + hv] = a * t;
            }
        }
    }
    if (dh0 != nullptr && m_j) {
        #pragma unroll
        for (int m = 0; m < RKPT; ++m) {
            const int i = w + m * RNW;
            if (i < K) dh0[o_state + (idx_t)i * V + j] = ds[m];
        }
    }
}

#define REC_ENTRY(NAME, E)                                                                               \
extern "C" __global__ void __launch_bounds__(RNW * 32) delta_rec_fwd_##NAME(                             \
    const E* q, const E* k, const E* v, const E* beta, const E* g, const float* a_log,                   \
    const float* dt_bias, const float* h0, E* o, float* ht, const idx_t* bounds, int H, int HV, int K,   \
    int V, float scale, int l2, float bscale, int gmode) {                                               \
    const int n = blockIdx.y / HV, hv = blockIdx.y % HV;                                                 \
    const idx_t o_state = (idx_t)blockIdx.y * K * V;                                                     \
    rec_fwd<E>(q, k, v, beta, g, a_log, dt_bias, h0 ? h0 + o_state : nullptr, o,                         \
               ht ? ht + o_state : nullptr, bounds, n, hv, H, HV, K, V, scale, l2, bscale, gmode);       \
}                                                                                                        \
/* decode: sequence n's state [HV, K, V] f32 lives at states[n] (its own buffer), read and  */           \
/* updated in place; one row per sequence                                                   */           \
extern "C" __global__ void __launch_bounds__(RNW * 32) delta_rec_decode_##NAME(                          \
    const E* q, const E* k, const E* v, const E* beta, const E* g, const float* a_log,                   \
    const float* dt_bias, const unsigned long long* states, E* o, const idx_t* bounds, int H, int HV,    \
    int K, int V, float scale, int l2, float bscale, int gmode) {                                        \
    const int n = blockIdx.y / HV, hv = blockIdx.y % HV;                                                 \
    float* st = reinterpret_cast<float*>(states[n]) + (idx_t)hv * K * V;                                 \
    rec_fwd<E>(q, k, v, beta, g, a_log, dt_bias, st, o, st, bounds, n, hv, H, HV, K, V, scale, l2,       \
               bscale, gmode);                                                                           \
}                                                                                                        \
extern "C" __global__ void __launch_bounds__(RNW * 32) delta_rec_bwd_##NAME(                             \
    const E* q, const E* k, const E* v, const float* bt, const float* gl, const float* h0, const E* d_o, \
    const float* dht, float* dq_part, float* dk_part, float* dv, float* db_part, float* dg_part,         \
    float* dh0, float* ckpt, float* scratch, const idx_t* bounds, int H, int HV, int K, int V,           \
    float scale, int l2, int gmode, idx_t rows) {                                                        \
    rec_bwd<E>(q, k, v, bt, gl, h0, d_o, dht, dq_part, dk_part, dv, db_part, dg_part, dh0, ckpt,         \
               scratch, bounds, H, HV, K, V, scale, l2, gmode, rows);                                    \
}

REC_ENTRY(f32, float)
REC_ENTRY(bf16, bf16_t)
