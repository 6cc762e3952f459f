// The softmax attention kernels (kernels/attn/) on the CPU emulator (README.md; built by
// `build.py --attn`): the launch sequences of src/attn/ops.rs (forward; backward = pre, dK/dV/dQ
// per key tile, dQ sum; decode = append, split attention, combine, stepped token by token with
// idle sequences)
// on the shapes of gla-check's attention table, against an f64 oracle (a port of gla-cpu's
// attn/naive.rs) on the bf16-rounded inputs. Prints each output's relative RMSE; exits non-zero
// when one is above 5e-3 (tol::GPU_BF16). Usage: attn-emu [case-filter]
#include <algorithm>
#include <string>

typedef std::vector<double> VD;

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed ^ 0x9E3779B97F4A7C15ull) {}
    uint64_t next() {
        s += 0x9E3779B97F4A7C15ull;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uni() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
    double normal() {
        double u = uni(), v = uni();
        return std::sqrt(-2 * std::log(u + 1e-300)) * std::cos(6.283185307179586 * v);
    }
};

struct Case {
    std::string name;
    int B, T, H, HKV, D, DV;
    bool causal;
    int window;  // 0: none
    std::vector<long long> cu;
    double scale = 0;  // 0: D^-1/2; otherwise this scale (kscale_zero: exactly 0)
};
static const double kscale_zero = -1e300;

static int g_fail = 0;
static double g_worst = 0;
static void report(const std::string& what, double err) {
    const bool ok = err <= 5e-3;
    std::printf("  %-30s %.3e %s\n", what.c_str(), err, ok ? "ok" : "FAIL");
    if (!ok) ++g_fail;
    if (!(err <= g_worst)) g_worst = err;
}
static double rel(const std::vector<float>& a, const VD& b, const std::vector<char>* keep = nullptr) {
    double e = 0, n = 0;
    for (size_t i = 0; i < b.size(); ++i) {
        if (keep && !(*keep)[i]) continue;
        const double d = a[i] - b[i];
        e += d * d;
        n += b[i] * b[i];
    }
    return n > 0 ? std::sqrt(e / n) : std::sqrt(e);
}
static std::vector<bf16_t> tobf(const VD& x) {
    std::vector<bf16_t> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = f2bf((float)x[i]);
    return y;
}
static std::vector<float> fromb(const std::vector<bf16_t>& x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = emu::bf2f(x[i]);
    return y;
}

struct Prob {
    Case c;
    int N;
    long long rows;
    std::vector<long long> b;
    double scale;
    int grp;
    int lo(int i) const { return c.causal ? (c.window > 0 ? std::max(0, i - c.window + 1) : 0) : 0; }
    int hi(int i, int len) const { return c.causal ? i + 1 : len; }
};

struct Fwd {
    VD o, lse;
};
struct Grads {
    VD dq, dk, dv;
};

// the f64 oracle (gla-cpu attn/naive.rs)
static void oracle(const Prob& p, const VD& q, const VD& k, const VD& v, const VD& d_o, Fwd& f, Grads& g) {
    const int H = p.c.H, HK = p.c.HKV, D = p.c.D, DV = p.c.DV;
    f.o.assign(p.rows * H * DV, 0);
    f.lse.assign(p.rows * H, 0);
    g.dq.assign(p.rows * H * D, 0);
    g.dk.assign(p.rows * HK * D, 0);
    g.dv.assign(p.rows * HK * DV, 0);
    for (int n = 0; n < p.N; ++n) {
        const long long bs = p.b[n];
        const int len = (int)(p.b[n + 1] - bs);
        for (int i = 0; i < len; ++i)
            for (int j = 0; j < H; ++j) {
                const int gg = j / p.grp, a = p.lo(i), z = p.hi(i, len);
                const long long qr = (bs + i) * H + j;
                std::vector<double> s(z - a), pr(z - a), dp(z - a);
                double m = -1e300;
                for (int x = a; x < z; ++x) {
                    double d = 0;
                    for (int c = 0; c < D; ++c) d += q[qr * D + c] * k[((bs + x) * HK + gg) * D + c];
                    s[x - a] = d * p.scale;
                    m = std::max(m, s[x - a]);
                }
                double zs = 0;
                for (int x = a; x < z; ++x) zs += (pr[x - a] = std::exp(s[x - a] - m));
                for (int x = a; x < z; ++x) pr[x - a] /= zs;
                f.lse[qr] = m + std::log(zs);
                double di = 0;
                for (int x = a; x < z; ++x) {
                    const long long vr = ((bs + x) * HK + gg) * DV;
                    double t = 0;
                    for (int c = 0; c < DV; ++c) {
                        f.o[qr * DV + c] += pr[x - a] * v[vr + c];
                        t += d_o[qr * DV + c] * v[vr + c];
                    }
                    dp[x - a] = t;
                    di += pr[x - a] * t;
                }
                for (int x = a; x < z; ++x) {
                    const double ds = pr[x - a] * (dp[x - a] - di) * p.scale;
                    const long long kr = ((bs + x) * HK + gg);
                    for (int c = 0; c < D; ++c) {
                        g.dq[qr * D + c] += ds * k[kr * D + c];
                        g.dk[kr * D + c] += ds * q[qr * D + c];
                    }
                    for (int c = 0; c < DV; ++c) g.dv[kr * DV + c] += pr[x - a] * d_o[qr * DV + c];
                }
            }
    }
}

// the host plan of src/attn/dispatch.rs (query_tiles): query tiles of bm rows, sequence by
// sequence (the longest first), each one's tiles most work first
static void tiles(const Prob& p, int bm, std::vector<int>& seq, std::vector<int>& pos) {
    std::vector<std::pair<long long, std::pair<int, int>>> t;
    for (int n = 0; n < p.N; ++n) {
        const int len = (int)(p.b[n + 1] - p.b[n]);
        for (int i0 = 0; i0 < len; i0 += bm) {
            long long work = len;
            if (p.c.causal) work = std::min(len, i0 + bm);
            if (p.c.window > 0) work = std::min<long long>(work, p.c.window + bm);
            t.push_back({work, {n, i0}});
        }
    }
    auto len = [&](int n) { return p.b[n + 1] - p.b[n]; };
    std::stable_sort(t.begin(), t.end(), [&](auto& a, auto& b) {
        const int na = a.second.first, nb = b.second.first;
        if (na != nb) return len(na) != len(nb) ? len(na) > len(nb) : na < nb;
        return a.first > b.first;
    });
    seq.clear();
    pos.clear();
    for (auto& x : t) {
        seq.push_back(x.second.first);
        pos.push_back(x.second.second);
    }
}

template <int DP, int DVP>
static void run(const Case& c, uint64_t seed) {
    Prob p;
    p.c = c;
    p.rows = (long long)c.B * c.T;
    if (c.cu.empty())
        for (int b = 0; b <= c.B; ++b) p.b.push_back((long long)b * c.T);
    else
        p.b = c.cu;
    p.N = (int)p.b.size() - 1;
    p.scale = c.scale == 0 ? 1.0 / std::sqrt((double)c.D) : c.scale == kscale_zero ? 0.0 : c.scale;
    p.grp = c.H / c.HKV;
    const int H = c.H, HK = c.HKV, D = c.D, DV = c.DV;
    Rng r(seed);
    auto fill = [&](size_t n) {
        VD x(n);
        for (auto& e : x) e = (double)emu::bf2f(f2bf((float)r.normal()));
        return x;
    };
    const VD q = fill(p.rows * H * D), k = fill(p.rows * HK * D), v = fill(p.rows * HK * DV), d_o = fill(p.rows * H * DV);
    Fwd rf;
    Grads rg;
    oracle(p, q, k, v, d_o, rf, rg);
    const auto qb = tobf(q), kb = tobf(k), vb = tobf(v), dob = tobf(d_o);
    const float sl2 = (float)(p.scale * 1.4426950408889634), sc = (float)p.scale;
    const int causal = c.causal, win = c.window;
    std::printf("%s\n", c.name.c_str());
    // rows inside a sequence (varlen: cu_seqlens end at T, so all of them)
    std::vector<int> ts, tq;
    tiles(p, 128, ts, tq);
    const size_t fsm = (128 * (DP + 8) + 2 * 64 * (DP + 8) + 2 * 64 * (DVP + 8)) * 2;
    std::vector<bf16_t> o(p.rows * H * DV, 0x7fc0);
    std::vector<float> lse(p.rows * H, NAN);
    // the dispatch policy's tile at these lengths: 8 warps x 16 rows (attn_fwd_d64_*), 4 warps x
    // 32 rows for D = 128 (attn_fwd_m2_*)
    if (!ts.empty()) {
        if constexpr (DP == 128) {
            emu::launch(dim3{(unsigned)H, (unsigned)ts.size(), 1}, dim3{128, 1, 1}, fsm, [&] {
                attn_fwd<DP, DVP, 4, 2>(qb.data(), kb.data(), vb.data(), o.data(), lse.data(), p.b.data(), ts.data(), tq.data(), H, HK, D,
                                        DV, causal, win, sl2);
            });
        } else {
            emu::launch(dim3{(unsigned)H, (unsigned)ts.size(), 1}, dim3{256, 1, 1}, fsm, [&] {
                attn_fwd<DP, DVP, 8, 1>(qb.data(), kb.data(), vb.data(), o.data(), lse.data(), p.b.data(), ts.data(), tq.data(), H, HK, D,
                                        DV, causal, win, sl2);
            });
        }
    }
    report("o", rel(fromb(o), rf.o));
    report("lse", rel(lse, rf.lse));
    if (DP == 128 && !ts.empty()) {
        std::vector<bf16_t> o2(o.size(), 0x7fc0);
        std::vector<float> l2(lse.size(), NAN);
        // 8 warps x 32 rows (attn_fwd_m2w8_*) on the 256-row tile table
        std::vector<int> ts2, tq2;
        tiles(p, 256, ts2, tq2);
        const size_t fsm2 = (256 * (DP + 8) + 2 * 64 * (DP + 8) + 2 * 64 * (DVP + 8)) * 2;
        std::fill(o2.begin(), o2.end(), (bf16_t)0x7fc0);
        std::fill(l2.begin(), l2.end(), NAN);
        emu::launch(dim3{(unsigned)H, (unsigned)ts2.size(), 1}, dim3{256, 1, 1}, fsm2, [&] {
            attn_fwd<DP, DVP, 8, 2>(qb.data(), kb.data(), vb.data(), o2.data(), l2.data(), p.b.data(), ts2.data(), tq2.data(), H, HK, D,
                                    DV, causal, win, sl2);
        });
        report("o (8x32 tile)", rel(fromb(o2), rf.o));
        report("lse (8x32 tile)", rel(l2, rf.lse));
    }
    if (DP == 128 && !ts.empty()) {
        // the wgmma forward (attn/fwd_wg.cu, the sm_90a default for D = 128): two warpgroups x 64
        // rows, the 128-row tiles
        std::vector<bf16_t> o3(o.size(), 0x7fc0);
        std::vector<float> l3(lse.size(), NAN);
        emu::launch(dim3{(unsigned)H, (unsigned)ts.size(), 1}, dim3{256, 1, 1}, 1024 + 5 * 32768, [&] {
            attn_fwd_wg_d128_dv128(qb.data(), kb.data(), vb.data(), o3.data(), l3.data(), p.b.data(), ts.data(), tq.data(), H, HK, D,
                                       DV, causal, win, sl2);
        });
        report("o (wgmma)", rel(fromb(o3), rf.o));
        report("lse (wgmma)", rel(l3, rf.lse));
    }
    // backward on the kernel's own o and lse
    std::vector<float> delta(p.rows * H, NAN);
    const long long nrh = p.rows * H;
    emu::launch(dim3{(unsigned)((nrh + 7) / 8), 1, 1}, dim3{256, 1, 1}, 0,
                [&] { attn_bwd_pre(o.data(), dob.data(), delta.data(), nrh, DV); });
    // the backward (attn_bwd_kvq_*, then attn_bwd_dq_sum) on 1, 2 and 3 splits of the key
    // tiles: dK, dV per 128-key tile, dQ added into each split's f32 sum (left NaN before the
    // launch: the kernel zeroes its part), summed and scaled by attn_bwd_dq_sum
    for (int S = 1; S <= 3; ++S) {
        std::vector<int> us, usp;
        for (int n = 0; n < p.N; ++n)
            if (p.b[n + 1] > p.b[n])
                for (int s = 0; s < S; ++s) us.push_back(n), usp.push_back(s);
        const long long stride = p.rows * H * D;
        std::vector<float> acc((size_t)S * stride, NAN);
        std::vector<bf16_t> fq(p.rows * H * D, 0x7fc0), fk(p.rows * HK * D, 0x7fc0), fv(p.rows * HK * DV, 0x7fc0);
        const size_t usm = (128 * (DP + 8) + 128 * (DVP + 8) + 2 * 64 * (DP + 8) + 2 * 64 * (DVP + 8) + 2 * 64 * (128 + 8)) * 2 + 4 * 64 * 4;
        if (!us.empty()) {
            emu::launch(dim3{(unsigned)HK, (unsigned)us.size(), 1}, dim3{256, 1, 1}, usm, [&] {
                attn_bwd_kvq<DP, DVP>(qb.data(), kb.data(), vb.data(), dob.data(), lse.data(), delta.data(), fk.data(), fv.data(), acc.data(),
                                      stride, p.b.data(), us.data(), usp.data(), S, H, HK, D, DV, causal, win, sl2, sc);
            });
            const long long e0 = p.b[0] * H * D, e1 = p.b[p.N] * H * D;
            emu::launch(dim3{(unsigned)((e1 - e0 + 1023) / 1024), 1, 1}, dim3{256, 1, 1}, 0,
                        [&] { attn_bwd_dq_sum(acc.data(), fq.data(), e0, e1, stride, S, sc); });
        }
        const std::string tag = " (" + std::to_string(S) + " split" + (S > 1 ? "s)" : ")");
        report("dq" + tag, rel(fromb(fq), rg.dq));
        report("dk" + tag, rel(fromb(fk), rg.dk));
        report("dv" + tag, rel(fromb(fv), rg.dv));
        if (DP == 128 && !us.empty()) {
            // the wgmma backward (attn/bwd_wg.cu, the sm_90a default for D = 128): dK, dV on the
            // same units (attn_bwd_kv_wg), dq on the forward's 128-row tiles (attn_bwd_dq_wg)
            std::fill(fq.begin(), fq.end(), (bf16_t)0x7fc0);
            std::fill(fk.begin(), fk.end(), (bf16_t)0x7fc0);
            std::fill(fv.begin(), fv.end(), (bf16_t)0x7fc0);
            emu::launch(dim3{(unsigned)HK, (unsigned)us.size(), 1}, dim3{256, 1, 1}, 1024 + 4 * 32768 + 1024, [&] {
                attn_bwd_kv_wg_d128_dv128(qb.data(), kb.data(), vb.data(), dob.data(), lse.data(), delta.data(), fk.data(), fv.data(),
                                          p.b.data(), us.data(), usp.data(), S, H, HK, D, DV, causal, win, sl2, sc);
            });
            emu::launch(dim3{(unsigned)H, (unsigned)ts.size(), 1}, dim3{256, 1, 1}, 1024 + 6 * 32768 + 1024, [&] {
                attn_bwd_dq_wg_d128_dv128(qb.data(), kb.data(), vb.data(), dob.data(), lse.data(), delta.data(), fq.data(), p.b.data(),
                                          ts.data(), tq.data(), H, HK, D, DV, causal, win, sl2, sc);
            });
            report("dq (wgmma)" + tag, rel(fromb(fq), rg.dq));
            report("dk (wgmma)" + tag, rel(fromb(fk), rg.dk));
            report("dv (wgmma)" + tag, rel(fromb(fv), rg.dv));
        }
    }
    if (!causal) return;
    // decode: every sequence stepped token by token (idle once it ended), S = window or the
    // longest length, 3 splits; the outputs must be the forward's rows
    int longest = 0;
    for (int n = 0; n < p.N; ++n) longest = std::max<int>(longest, (int)(p.b[n + 1] - p.b[n]));
    const int S = win > 0 ? win : std::max(1, longest);
    const int splits = std::min(3, (S + 15) / 16), chunk = ((S + splits - 1) / splits + 15) / 16 * 16;
    const int N = p.N;
    std::vector<bf16_t> kc((size_t)N * S * HK * D, 0x7fc0), vc((size_t)N * S * HK * DV, 0x7fc0);
    std::vector<float> dout(p.rows * H * DV, NAN), dl(p.rows * H, NAN);
    std::vector<char> keep_o(p.rows * H * DV, 1), keep_l(p.rows * H, 1);
    for (int t = 0; t < longest; ++t) {
        std::vector<int> lens(N);
        std::vector<bf16_t> qs((size_t)N * H * D, 0), ks_((size_t)N * HK * D, 0), vs((size_t)N * HK * DV, 0);
        for (int n = 0; n < N; ++n) {
            const int len = (int)(p.b[n + 1] - p.b[n]);
            lens[n] = t < len ? t + 1 : 0;
            if (t >= len) continue;
            const long long row = p.b[n] + t;
            std::copy(qb.begin() + row * H * D, qb.begin() + (row + 1) * H * D, qs.begin() + (size_t)n * H * D);
            std::copy(kb.begin() + row * HK * D, kb.begin() + (row + 1) * HK * D, ks_.begin() + (size_t)n * HK * D);
            std::copy(vb.begin() + row * HK * DV, vb.begin() + (row + 1) * HK * DV, vs.begin() + (size_t)n * HK * DV);
        }
        const long long tot = (long long)N * HK * (D + DV);
        emu::launch(dim3{(unsigned)((tot + 255) / 256), 1, 1}, dim3{256, 1, 1}, 0,
                    [&] { attn_append(ks_.data(), vs.data(), kc.data(), vc.data(), lens.data(), N, S, HK, D, DV); });
        std::vector<float> po((size_t)N * H * splits * DVP, NAN), pl((size_t)N * H * splits, NAN);
        // G = 1 runs the one-head kernel (attn_decode_g1_*), as the dispatch policy picks
        if (p.grp == 1)
            emu::launch(dim3{(unsigned)splits, (unsigned)HK, (unsigned)N}, dim3{128, 1, 1}, 0, [&] {
                attn_decode<DP, DVP, 1>(qs.data(), kc.data(), vc.data(), lens.data(), po.data(), pl.data(), H, HK, S, chunk, sl2);
            });
        else
            emu::launch(dim3{(unsigned)splits, (unsigned)HK, (unsigned)N}, dim3{128, 1, 1}, 0, [&] {
                attn_decode<DP, DVP, 8>(qs.data(), kc.data(), vc.data(), lens.data(), po.data(), pl.data(), H, HK, S, chunk, sl2);
            });
        std::vector<bf16_t> os((size_t)N * H * DV, 0x7fc0);
        std::vector<float> ls((size_t)N * H, NAN);
        emu::launch(dim3{(unsigned)(N * H), 1, 1}, dim3{(unsigned)DVP, 1, 1}, 0,
                    [&] { attn_decode_combine(po.data(), pl.data(), os.data(), ls.data(), splits, DVP); });
        for (int n = 0; n < N; ++n) {
            const int len = (int)(p.b[n + 1] - p.b[n]);
            if (t >= len) {
                // an idle sequence: o = 0, lse = -inf
                for (int x = 0; x < H * DV; ++x)
                    if (emu::bf2f(os[(size_t)n * H * DV + x]) != 0.f) ++g_fail, std::printf("  idle o not 0\n");
                continue;
            }
            const long long row = p.b[n] + t;
            for (int x = 0; x < H * DV; ++x) dout[row * H * DV + x] = emu::bf2f(os[(size_t)n * H * DV + x]);
            for (int x = 0; x < H; ++x) dl[row * H + x] = ls[(size_t)n * H + x];
        }
    }
    report("decode o", rel(dout, rf.o));
    report("decode lse", rel(dl, rf.lse));
}

int main(int argc, char** argv) {
    const char* filt = argc > 1 ? argv[1] : nullptr;
    std::vector<Case> cases = {
        {"t1", 1, 1, 2, 2, 64, 64, true, 0, {}},
        {"t15-gqa4", 1, 15, 4, 1, 64, 64, true, 0, {}},
        {"t63", 1, 63, 2, 2, 64, 64, true, 0, {}},
        {"t64-d128", 1, 64, 2, 2, 128, 128, true, 0, {}},
        {"t65-gqa4", 1, 65, 4, 1, 64, 64, true, 0, {}},
        {"t300-d128-gqa8", 1, 300, 8, 1, 128, 128, true, 0, {}},
        {"t65-d64-dv32", 1, 65, 2, 1, 64, 32, true, 0, {}},
        {"t130-b3-gqa2", 3, 130, 4, 2, 64, 64, true, 0, {}},
        {"t100-window1", 1, 100, 2, 2, 64, 64, true, 1, {}},
        {"t200-window50-gqa4", 1, 200, 4, 1, 64, 64, true, 50, {}},
        {"t100-window500", 1, 100, 2, 2, 64, 64, true, 500, {}},
        {"varlen-empty", 1, 163, 4, 2, 64, 64, true, 0, {0, 30, 30, 97, 163}},
        {"varlen-window40", 1, 150, 2, 2, 64, 32, true, 40, {0, 0, 70, 71, 150}},
        {"t65-noncausal-gqa4", 2, 65, 4, 1, 64, 64, false, 0, {}},
        {"t333-d128-window130", 1, 333, 2, 2, 128, 128, true, 130, {}},
        {"t257-d128-noncausal", 1, 257, 2, 1, 128, 128, false, 0, {}},
        {"t200-d128-negscale", 1, 200, 2, 1, 128, 128, true, 0, {}, -0.125},
        {"t150-zeroscale-b2", 2, 150, 2, 2, 64, 64, true, 0, {}, kscale_zero},
        {"t130-bigscale", 1, 130, 2, 2, 64, 64, true, 0, {}, 0.5},
        // D = 128 (the sm_90a warpgroup forward): windows inside one key tile of 128, a zero
        // scale, varlen with empty and one-row sequences
        {"t400-d128-window50-gqa2", 1, 400, 4, 2, 128, 128, true, 50, {}},
        {"t300-d128-window1", 1, 300, 2, 2, 128, 128, true, 1, {}},
        {"t150-d128-zeroscale", 1, 150, 2, 2, 128, 128, true, 0, {}, kscale_zero},
        {"varlen-d128-window64", 1, 331, 2, 1, 128, 128, true, 64, {0, 0, 1, 200, 200, 331}},
    };
    int i = 0;
    for (auto& c : cases) {
        ++i;
        if (filt && !std::strstr(c.name.c_str(), filt)) continue;
        if (c.D == 128)
            run<128, 128>(c, 5000 + i);
        else if (c.DV == 32)
            run<64, 32>(c, 5000 + i);
        else
            run<64, 64>(c, 5000 + i);
    }
    std::printf("%d failed; worst relative RMSE %.3e\n", g_fail, g_worst);
    return g_fail ? 1 : 0;
}
