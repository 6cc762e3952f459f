// The emulator's test program for the bidirectional scan (kernels/bidir/): the fused chunked
// forward's three launches (bidir_chunk_prep_bf16, bidir_chunk_h{64,32}_bf16, bidir_chunk_o_bf16)
// and the fused backward's seven (prep with qe, the four walks, A, bwd1 and bwd2 per direction),
// as src/bidir/ops.rs runs them with src/dispatch.rs's shared-memory sizes, on emulated blocks
// against an f64 oracle of the two scans and their backward (docs/math/bidir.md) on the
// bf16-rounded inputs, and
// the GLA op's own chunked backward (src/ops.rs's narrow launches, K <= 128 and V <= 128, K below
// 64 included) on the forward scan alone against that scan's f64 backward, and
// the flip kernels (copy and add, f32 and bf16) against a host flip, on cases shaped like
// gla-check's bidir table (odd lengths, K != V, V > 128, varlen with empty and one-token
// sequences, ViG's K = 32 heads). Prints the relative RMSE of o per case; exit status 1 when
// one is above the bf16 tolerance 5e-3 or a flip differs.
// Usage: bidir-emu [case-name-filter]
#include <functional>
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
};

static double logsig(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
static double bfr(double x) { return emu::bf2f(f2bf((float)x)); }

struct Case {
    std::string name;
    int B, T, H, K, V;
    double gsf, gsb;
    std::vector<long long> cu;
};

static int kpad(int K) { return (K + 15) / 16 * 16; }
static size_t chunk_o_smem_bytes(int kp) {
    const size_t ldk = kp + 8;
    return 64 * ldk * 2 + 64 * 136 * 2 + 64 * kp * 4 + 64 * ldk * 2 + 48 * ldk * 2 + 64 * 72 * 2 + 256 * 4 + 7 * kp * 4;
}

// o of both scans, weight 1/2 each, scale K^-1/2, f64
static VD oracle(const Case& c, const std::vector<long long>& bounds, const VD& q, const VD& k, const VD& v, const VD& gf, const VD& gb) {
    const int H = c.H, K = c.K, V = c.V;
    const double w = 0.5 / std::sqrt((double)K);
    VD o(v.size(), 0.0), S((size_t)K * V);
    for (size_t n = 0; n + 1 < bounds.size(); ++n) {
        for (int h = 0; h < H; ++h) {
            for (int dir = 0; dir < 2; ++dir) {
                std::fill(S.begin(), S.end(), 0.0);
                const long long a = bounds[n], b = bounds[n + 1];
                for (long long i = 0; i < b - a; ++i) {
                    const long long r = dir ? b - 1 - i : a + i;
                    const size_t kr = ((size_t)r * H + h) * K, vr = ((size_t)r * H + h) * V;
                    const VD& g = dir ? gb : gf;
                    for (int x = 0; x < K; ++x) {
                        const double dec = std::exp(g[kr + x]);
                        for (int j = 0; j < V; ++j) S[(size_t)x * V + j] = dec * S[(size_t)x * V + j] + k[kr + x] * v[vr + j];
                    }
                    for (int j = 0; j < V; ++j) {
                        double acc = 0;
                        for (int x = 0; x < K; ++x) acc += S[(size_t)x * V + j] * q[kr + x];
                        o[vr + j] += w * acc;
                    }
                }
            }
        }
    }
    return o;
}

// dq, dk, dv, dgf, dgb of L = <do, o>: each scan's direct backward (gla-cpu's bidir naive.rs),
// o the scans' sum weighted w (the bidirectional scan: both, 1/2 K^-1/2; the GLA op: the forward
// one alone, ndir = 1, K^-1/2)
struct Grads {
    VD dq, dk, dv, dgf, dgb;
};
static Grads oracle_bwd(const Case& c, const std::vector<long long>& bounds, const VD& q, const VD& k, const VD& v, const VD& gf,
                        const VD& gb, const VD& d_o, double w, int ndir) {
    const int H = c.H, K = c.K, V = c.V;
    Grads g{VD(q.size(), 0.0), VD(q.size(), 0.0), VD(v.size(), 0.0), VD(q.size(), 0.0), VD(q.size(), 0.0)};
    const size_t kv = (size_t)K * V;
    for (size_t n = 0; n + 1 < bounds.size(); ++n) {
        const long long a = bounds[n], b = bounds[n + 1], len = b - a;
        for (int h = 0; h < H; ++h) {
            for (int dir = 0; dir < ndir; ++dir) {
                const VD& gg = dir ? gb : gf;
                VD& dg = dir ? g.dgb : g.dgf;
                auto row = [&](long long i) { return dir ? b - 1 - i : a + i; };
                VD S((len + 1) * kv, 0.0), dS(kv, 0.0);
                for (long long i = 0; i < len; ++i) {
                    const long long r = row(i);
                    const size_t kr = ((size_t)r * H + h) * K, vr = ((size_t)r * H + h) * V;
                    for (int x = 0; x < K; ++x)
                        for (int j = 0; j < V; ++j)
                            S[(i + 1) * kv + x * V + j] = std::exp(gg[kr + x]) * S[i * kv + x * V + j] + k[kr + x] * v[vr + j];
                }
                for (long long i = len - 1; i >= 0; --i) {
                    const long long r = row(i);
                    const size_t kr = ((size_t)r * H + h) * K, vr = ((size_t)r * H + h) * V;
                    const double* sp = &S[i * kv];
                    const double* st = &S[(i + 1) * kv];
                    for (int x = 0; x < K; ++x) {
                        double dqa = 0, dka = 0, dga = 0;
                        for (int j = 0; j < V; ++j) {
                            dS[x * V + j] += w * q[kr + x] * d_o[vr + j];
                            dqa += st[x * V + j] * d_o[vr + j];
                            dka += dS[x * V + j] * v[vr + j];
                            dga += sp[x * V + j] * dS[x * V + j];
                        }
                        g.dq[kr + x] += w * dqa;
                        g.dk[kr + x] += dka;
                        dg[kr + x] = std::exp(gg[kr + x]) * dga;
                    }
                    for (int j = 0; j < V; ++j) {
                        double acc = 0;
                        for (int x = 0; x < K; ++x) acc += dS[x * V + j] * k[kr + x];
                        g.dv[vr + j] += acc;
                    }
                    for (int x = 0; x < K; ++x)
                        for (int j = 0; j < V; ++j) dS[x * V + j] *= std::exp(gg[kr + x]);
                }
            }
        }
    }
    return g;
}

static size_t bwd1_smem(int kp) { return (size_t)(2 * 64 + 2 * std::max(kp, 64)) * 136 * 2 + 64 * 72 * 2 + 64 * (kp + 8) * 2; }
static size_t bwd2_d2_smem(int kp) {
    const size_t ldk = kp + 8;
    return (2 * 64 * ldk + 64 * 72 + 2 * 96 * ldk) * 2 + (64 * (size_t)kp + 4096 + 2 * 64 * (size_t)kp + 256 + 128) * 4 - 3072 * 4;
}

static double rel(const VD& a, const VD& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i])) return INFINITY;
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

static int g_fail = 0;

static void run(const Case& c, uint64_t seed) {
    std::vector<long long> bounds = c.cu;
    if (bounds.empty())
        for (int b = 0; b <= c.B; ++b) bounds.push_back((long long)b * c.T);
    const long long rows = (long long)c.B * c.T;
    const int N = (int)bounds.size() - 1, H = c.H, K = c.K, V = c.V;
    // chunk tables as ops.rs DevProblem
    std::vector<long long> off{0};
    std::vector<int> seq;
    for (int n = 0; n < N; ++n) {
        const long long ch = (bounds[n + 1] - bounds[n] + 63) / 64;
        off.push_back(off[n] + ch);
        for (long long x = 0; x < ch; ++x) seq.push_back(n);
    }
    const int nc = (int)seq.size();
    if (seq.empty()) seq.push_back(0);
    Rng r(seed);
    const size_t qk = (size_t)rows * H * K, vl = (size_t)rows * H * V;
    auto fill = [&](size_t n, std::function<double()> f) {
        VD x(n);
        for (auto& e : x) e = bfr(f());
        return x;
    };
    VD q = fill(qk, [&] { return r.uni(); }), k = fill(qk, [&] { return r.uni(); }), v = fill(vl, [&] { return r.uni(); });
    VD gf = fill(qk, [&] { return logsig(r.uni()) / c.gsf; }), gb = fill(qk, [&] { return logsig(r.uni()) / c.gsb; });
    const VD ref = oracle(c, bounds, q, k, v, gf, gb);
    auto tobf = [](const VD& x) {
        std::vector<unsigned short> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = f2bf((float)x[i]);
        return y;
    };
    auto bq = tobf(q), bk = tobf(k), bv = tobf(v), bgf = tobf(gf), bgb = tobf(gb);
    const size_t st = (size_t)std::max(nc, 1) * H * K * V, dl = (size_t)std::max(nc, 1) * H * K;
    std::vector<unsigned short> kdf(qk, 0xffff), kdb(qk, 0xffff), hsf(st, 0xffff), hsb(st, 0xffff), o(vl, 0xffff);
    std::vector<float> dlf(dl, NAN), dlb(dl, NAN);
    const float scale = (float)(0.5 / std::sqrt((double)K));
    if (nc > 0) {
        emu::launch(dim3{(unsigned)nc, (unsigned)((H * K + 127) / 128), 1}, dim3{128, 1, 1}, 0, [&] {
            bidir_chunk_prep_bf16(bq.data(), bk.data(), bgf.data(), bgb.data(), kdf.data(), kdb.data(), dlf.data(), dlb.data(), nullptr,
                                  nullptr, bounds.data(), off.data(), seq.data(), H, K, scale);
        });
        // both tilings of the state walks (the host picks by occupancy): 64 then 32 columns
        for (int bvh : {64, 32}) {
            std::fill(hsf.begin(), hsf.end(), 0xffff);
            std::fill(hsb.begin(), hsb.end(), 0xffff);
            const size_t smem = 4 * ((64 * 72 + 64 * (bvh + 8)) * 2 + 64 * 4);
            emu::launch(dim3{(unsigned)((V + bvh - 1) / bvh), (unsigned)((K + 63) / 64), (unsigned)(2 * N * H)}, dim3{128, 1, 1}, smem, [&] {
                if (bvh == 64)
                    bidir_chunk_h64_bf16(kdf.data(), kdb.data(), bv.data(), dlf.data(), dlb.data(), hsf.data(), hsb.data(), bounds.data(),
                                         off.data(), H, K, V, N * H);
                else
                    bidir_chunk_h32_bf16(kdf.data(), kdb.data(), bv.data(), dlf.data(), dlb.data(), hsf.data(), hsb.data(), bounds.data(),
                                         off.data(), H, K, V, N * H);
            });
            const int kp = kpad(K);
            // src/bidir/dispatch.rs o_smem: V <= 64 has a narrower OS and its own v, state tiles
            const size_t os_off = chunk_o_smem_bytes(kp), smo = os_off + (V <= 64 ? 64 * 68 * 4 + (64 + kp) * 72 * 2 : 64 * 132 * 4);
            std::fill(o.begin(), o.end(), 0xffff);
            emu::launch(dim3{(unsigned)nc, (unsigned)H, (unsigned)((V + 127) / 128)}, dim3{256, 1, 1}, smo, [&] {
                bidir_chunk_o_bf16(bq.data(), bk.data(), bv.data(), bgf.data(), bgb.data(), hsf.data(), hsb.data(), o.data(), bounds.data(),
                                   off.data(), seq.data(), H, K, V, scale, kp, (int)os_off);
            });
            VD got(vl);
            for (size_t i = 0; i < vl; ++i) got[i] = emu::bf2f(o[i]);
            const double e = rel(got, ref);
            const bool ok = e <= 5e-3;
            g_fail += !ok;
            std::printf("%-28s fused-fwd h%-2d o   rel_rmse %.3e  %s\n", c.name.c_str(), bvh, e, ok ? "ok" : "FAIL");
        }
    }
    // the backward (K <= 128, V <= 128: src/bidir/dispatch.rs fused_bwd), both walk tilings
    if (nc > 0 && K <= 128 && V <= 128) {
        VD dov(vl);
        for (auto& e : dov) e = bfr(2 * r.uni() - 1);
        const Grads ref = oracle_bwd(c, bounds, q, k, v, gf, gb, dov, 0.5 / std::sqrt((double)K), 2);
        auto bdo = tobf(dov);
        std::vector<unsigned short> qef(qk, 0xffff), qeb(qk, 0xffff), dhsf(st, 0xffff), dhsb(st, 0xffff);
        std::vector<unsigned short> af((size_t)nc * H * 4096, 0xffff), ab((size_t)nc * H * 4096, 0xffff);
        std::vector<float> da((size_t)nc * H * 4096, NAN), sd(dl, NAN), dvf(vl, NAN), dqf(qk, NAN), dkf(qk, NAN);
        std::vector<float> dq(qk, NAN), dk(qk, NAN), dv(vl, NAN), dgf(qk, NAN), dgb(qk, NAN);
        const int kp = kpad(K);
        emu::launch(dim3{(unsigned)nc, (unsigned)((H * K + 127) / 128), 1}, dim3{128, 1, 1}, 0, [&] {
            bidir_chunk_prep_bf16(bq.data(), bk.data(), bgf.data(), bgb.data(), kdf.data(), kdb.data(), dlf.data(), dlb.data(), qef.data(),
                                  qeb.data(), bounds.data(), off.data(), seq.data(), H, K, scale);
        });
        for (int bvh : {64, 32}) {
            const size_t smem = 4 * ((64 * 72 + 64 * (bvh + 8)) * 2 + 64 * 4);
            emu::launch(dim3{(unsigned)((V + bvh - 1) / bvh), (unsigned)((K + 63) / 64), (unsigned)(4 * N * H)}, dim3{128, 1, 1}, smem, [&] {
                auto f = bvh == 64 ? bidir_chunk_walks64_bf16 : bidir_chunk_walks32_bf16;
                f(kdf.data(), kdb.data(), qef.data(), qeb.data(), bv.data(), bdo.data(), dlf.data(), dlb.data(), hsf.data(), hsb.data(),
                  dhsf.data(), dhsb.data(), bounds.data(), off.data(), H, K, V, N * H);
            });
            emu::launch(dim3{(unsigned)nc, (unsigned)H, 2}, dim3{256, 1, 1}, chunk_o_smem_bytes(kp), [&] {
                bidir_chunk_a_bf16(bq.data(), bk.data(), bgf.data(), bgb.data(), af.data(), ab.data(), bounds.data(), off.data(), seq.data(),
                                   H, K, scale, kp);
            });
            // bwd2 in K tiles of <= 64 (dispatch.rs k_tiles_of(K, 64))
            const int nt = (kp + 63) / 64, w2 = ((kp + nt - 1) / nt + 15) / 16 * 16, tiles = (K + w2 - 1) / w2;
            for (int dir = 0; dir < 2; ++dir) {
                const bool rv = dir == 1;
                emu::launch(dim3{(unsigned)nc, (unsigned)H, 1}, dim3{256, 1, 1}, bwd1_smem(kp), [&] {
                    // src/bidir/dispatch.rs bwd1_name: the narrow entry for V <= 64
                    (V <= 64 ? bidir_chunk_bwd1n_bf16 : bidir_chunk_bwd1_bf16)(bv.data(), bdo.data(), rv ? kdb.data() : kdf.data(), rv ? ab.data() : af.data(),
                                          rv ? hsb.data() : hsf.data(), rv ? dhsb.data() : dhsf.data(), rv ? dv.data() : dvf.data(), da.data(),
                                          rv ? dq.data() : dqf.data(), rv ? dk.data() : dkf.data(), sd.data(), bounds.data(), off.data(),
                                          seq.data(), H, K, V, kp, dir, rv ? dvf.data() : nullptr);
                });
                emu::launch(dim3{(unsigned)nc, (unsigned)H, (unsigned)tiles}, dim3{256, 1, 1}, bwd2_d2_smem(w2), [&] {
                    bidir_chunk_bwd2_bf16(bq.data(), bk.data(), rv ? bgb.data() : bgf.data(), da.data(), sd.data(), rv ? dq.data() : dqf.data(),
                                          rv ? dk.data() : dkf.data(), rv ? dgb.data() : dgf.data(), bounds.data(), off.data(), seq.data(), H,
                                          K, scale, w2, dir, rv ? dqf.data() : nullptr, rv ? dkf.data() : nullptr);
                });
            }
            auto wide = [](const std::vector<float>& x) { return VD(x.begin(), x.end()); };
            const std::pair<const char*, double> errs[] = {{"dq", rel(wide(dq), ref.dq)},   {"dk", rel(wide(dk), ref.dk)},
                                                           {"dv", rel(wide(dv), ref.dv)},   {"dgf", rel(wide(dgf), ref.dgf)},
                                                           {"dgb", rel(wide(dgb), ref.dgb)}};
            for (auto& [t, e] : errs) {
                const bool ok = e <= 5e-3;
                g_fail += !ok;
                std::printf("%-28s fused-bwd h%-2d %-3s rel_rmse %.3e  %s\n", c.name.c_str(), bvh, t, e, ok ? "ok" : "FAIL");
            }
        }
    }
    // the GLA op's chunked backward on the forward scan alone (K <= 128, V <= 128: src/dispatch.rs
    // chunk_bwd_path's narrow launches, in src/ops.rs's order: prep with qe, the state pass, the
    // state-gradient pass, A, bwd1, bwd2), per-key gate gf, scale K^-1/2, against the forward
    // scan's f64 backward; both state-pass tilings (HPlan)
    if (nc > 0 && K <= 128 && V <= 128) {
        VD dov(vl);
        for (auto& e : dov) e = bfr(2 * r.uni() - 1);
        const double sc = 1.0 / std::sqrt((double)K);
        const Grads ref = oracle_bwd(c, bounds, q, k, v, gf, gb, dov, sc, 1);
        auto bdo = tobf(dov);
        const int kp = kpad(K);
        std::vector<unsigned short> kd(qk, 0xffff), qe(qk, 0xffff), hs(st, 0xffff), dhs(st, 0xffff), a((size_t)nc * H * 4096, 0xffff);
        std::vector<float> dlg(dl, NAN), da((size_t)nc * H * 4096, NAN), sd(dl, NAN), dv(vl, NAN), dq(qk, NAN), dk(qk, NAN),
            dg(qk, NAN);
        // src/dispatch.rs prep_cfg: the 16-byte prep for a per-key gate with K % 8 == 0
        emu::launch(dim3{(unsigned)nc, (unsigned)H, (unsigned)((K + 127) / 128)}, dim3{K % 8 == 0 ? 64u : 128u, 1, 1}, 0, [&] {
            if (K % 8 == 0)
                gla_chunk_prep8_bf16(bk.data(), bgf.data(), bq.data(), kd.data(), dlg.data(), qe.data(), bounds.data(), off.data(), seq.data(), H,
                                     K, (float)sc);
            else
                gla_chunk_prep_bf16(bk.data(), bgf.data(), bq.data(), kd.data(), dlg.data(), qe.data(), bounds.data(), off.data(), seq.data(), H,
                                    K, K, (float)sc);
        });
        for (int bvh : {64, 32}) {
            const size_t hsm = 4 * ((64 * 72 + 64 * (bvh + 8)) * 2 + 64 * 4);
            const dim3 hg{(unsigned)((V + bvh - 1) / bvh), (unsigned)((K + 63) / 64), (unsigned)(N * H)};
            emu::launch(hg, dim3{128, 1, 1}, hsm, [&] {
                (bvh == 64 ? gla_chunk_h64_bf16 : gla_chunk_h32_bf16)(kd.data(), bv.data(), dlg.data(), nullptr, hs.data(), nullptr, bounds.data(),
                                                                      off.data(), H, K, V);
            });
            emu::launch(hg, dim3{128, 1, 1}, hsm, [&] {
                (bvh == 64 ? gla_chunk_dh64_bf16 : gla_chunk_dh32_bf16)(qe.data(), bdo.data(), dlg.data(), nullptr, dhs.data(), nullptr,
                                                                        bounds.data(), off.data(), H, K, V);
            });
            emu::launch(dim3{(unsigned)nc, (unsigned)H, 1}, dim3{256, 1, 1}, chunk_o_smem_bytes(kp), [&] {
                gla_chunk_o_bf16(bq.data(), bk.data(), bv.data(), bgf.data(), nullptr, nullptr, a.data(), bounds.data(), off.data(), seq.data(), H, K,
                                 V, K, (float)sc, kp);
            });
            emu::launch(dim3{(unsigned)nc, (unsigned)H, 1}, dim3{256, 1, 1}, bwd1_smem(kp), [&] {
                gla_chunk_bwd1_bf16(bv.data(), bdo.data(), kd.data(), a.data(), hs.data(), dhs.data(), dv.data(), da.data(), dq.data(), dk.data(),
                                    sd.data(), bounds.data(), off.data(), seq.data(), H, K, V, kp);
            });
            // src/dispatch.rs bwd2_plan for a per-key gate: K tiles of <= 64
            const int nt = (kp + 63) / 64, w2 = ((kp + nt - 1) / nt + 15) / 16 * 16, tiles = (K + w2 - 1) / w2;
            emu::launch(dim3{(unsigned)nc, (unsigned)H, (unsigned)tiles}, dim3{256, 1, 1}, bwd2_d2_smem(w2), [&] {
                gla_chunk_bwd2k64_bf16(bq.data(), bk.data(), bgf.data(), da.data(), sd.data(), dq.data(), dk.data(), dg.data(), bounds.data(),
                                       off.data(), seq.data(), H, K, K, (float)sc, w2);
            });
            auto wide = [](const std::vector<float>& x) { return VD(x.begin(), x.end()); };
            const std::pair<const char*, double> errs[] = {{"dq", rel(wide(dq), ref.dq)},
                                                           {"dk", rel(wide(dk), ref.dk)},
                                                           {"dv", rel(wide(dv), ref.dv)},
                                                           {"dg", rel(wide(dg), ref.dgf)}};
            for (auto& [t, e] : errs) {
                const bool ok = e <= 5e-3;
                g_fail += !ok;
                std::printf("%-28s gla-bwd   h%-2d %-3s rel_rmse %.3e  %s\n", c.name.c_str(), bvh, t, e, ok ? "ok" : "FAIL");
            }
        }
    }
    // the flip kernels: copy (bf16, f32) and add (f32, bf16) over rows of W = H K
    const int W = H * K;
    std::vector<float> xf(qk), yf(qk), want(qk);
    for (size_t i = 0; i < qk; ++i) xf[i] = (float)q[i], yf[i] = (float)k[i];
    for (int n = 0; n < N; ++n)
        for (long long row = bounds[n]; row < bounds[n + 1]; ++row) {
            const long long fr = bounds[n] + bounds[n + 1] - 1 - row;
            for (int c2 = 0; c2 < W; ++c2) want[row * W + c2] = yf[row * W + c2] + xf[fr * W + c2];
        }
    long long bad = 0;
    if (nc > 0) {
        std::vector<float> yc(qk, NAN);
        std::vector<unsigned short> xb = bq, yb(qk, 0xffff), yab = bk;
        dim3 grid{(unsigned)nc, (unsigned)((W + 255) / 256), 1}, blk{256, 1, 1};
        emu::launch(grid, blk, 0, [&] { bidir_flip_f32(xf.data(), yc.data(), bounds.data(), off.data(), seq.data(), W); });
        emu::launch(grid, blk, 0, [&] { bidir_flip_bf16(xb.data(), yb.data(), bounds.data(), off.data(), seq.data(), W); });
        std::vector<float> ya = yf;
        emu::launch(grid, blk, 0, [&] { bidir_flip_add_f32(xf.data(), ya.data(), bounds.data(), off.data(), seq.data(), W); });
        emu::launch(grid, blk, 0, [&] { bidir_flip_add_bf16(xb.data(), yab.data(), bounds.data(), off.data(), seq.data(), W); });
        for (int n = 0; n < N; ++n)
            for (long long row = bounds[n]; row < bounds[n + 1]; ++row) {
                const long long fr = bounds[n] + bounds[n + 1] - 1 - row;
                for (int c2 = 0; c2 < W; ++c2) {
                    const size_t i = row * W + c2, j = fr * W + c2;
                    bad += yc[i] != xf[j];
                    bad += yb[i] != xb[j];
                    bad += ya[i] != want[i];
                    bad += yab[i] != f2bf(emu::bf2f(bk[i]) + emu::bf2f(xb[j]));
                }
            }
    }
    g_fail += bad != 0;
    std::printf("%-28s flip          mismatches %lld  %s\n", c.name.c_str(), bad, bad ? "FAIL" : "ok");
}

int main(int argc, char** argv) {
    const char* filter = argc > 1 ? argv[1] : nullptr;
    const std::vector<Case> cases = {
        {"T1-K60-V100", 2, 1, 2, 60, 100, 1, 1, {}},
        {"T65-K60-V100-gf0.1-gb10", 2, 65, 2, 60, 100, 0.1, 10, {}},
        {"T64-K60-V100-gf10-gb0.1", 2, 64, 2, 60, 100, 10, 0.1, {}},
        {"T300-K60-V100", 1, 300, 2, 60, 100, 1, 1, {}},
        {"varlen-empty-one", 1, 365, 2, 60, 100, 1, 0.1, {0, 15, 15, 100, 101, 300, 365}},
        {"vig-T196-K32-V64", 2, 196, 3, 32, 64, 16, 16, {}},
        {"T100-K16-V40", 2, 100, 2, 16, 40, 1, 1, {}},
        {"T77-K40-V128", 1, 77, 2, 40, 128, 1, 1, {}},
        {"T130-K128-V128", 2, 130, 2, 128, 128, 1, 16, {}},
        {"T70-K64-V200", 1, 70, 2, 64, 200, 1, 1, {}},
        // a wide head whose last 128-wide V tile holds 32 columns (the output pass's narrow
        // layout is for V <= 64 heads only; last: the cases above keep their seeds)
        {"T70-K64-V160", 1, 70, 2, 64, 160, 1, 1, {}},
        // narrow heads off the 8-column grid (element-wise loads, odd pair stores) and tiny ones
        {"T67-K24-V20-narrow", 2, 67, 3, 24, 20, 1, 4, {}},
        {"T4-K8-V36", 3, 4, 1, 8, 36, 4, 1, {}},
        {"varlen-K32-V64-empty", 1, 200, 3, 32, 64, 16, 16, {0, 0, 129, 129, 200}},
    };
    for (size_t i = 0; i < cases.size(); ++i)
        if (!filter || cases[i].name.find(filter) != std::string::npos) run(cases[i], 4000 + i);
    std::printf("%s\n", g_fail ? "FAILED" : "all ok");
    return g_fail ? 1 : 0;
}
