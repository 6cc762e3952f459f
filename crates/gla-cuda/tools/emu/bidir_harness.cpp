// The emulator's test program for the bidirectional scan (kernels/bidir/): the fused chunked
// forward's three launches (bidir_chunk_prep_bf16, bidir_chunk_h{64,32}_bf16, bidir_chunk_o_bf16,
// as src/bidir/ops.rs runs them, with src/dispatch.rs's shared-memory sizes) on emulated blocks
// against an f64 oracle of the two scans (docs/math/bidir.md) on the bf16-rounded inputs, and
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
        emu::launch(dim3{(unsigned)nc, (unsigned)H, (unsigned)((K + 127) / 128)}, dim3{128, 1, 1}, 0, [&] {
            bidir_chunk_prep_bf16(bk.data(), bgf.data(), bgb.data(), kdf.data(), kdb.data(), dlf.data(), dlb.data(), bounds.data(),
                                  off.data(), seq.data(), H, K);
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
            const size_t os_off = chunk_o_smem_bytes(kp), smo = os_off + 64 * 132 * 4;
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
        {"T130-K128-V128", 2, 130, 2, 128, 128, 1, 16, {}},
        {"T70-K64-V200", 1, 70, 2, 64, 200, 1, 1, {}},
    };
    for (size_t i = 0; i < cases.size(); ++i)
        if (!filter || cases[i].name.find(filter) != std::string::npos) run(cases[i], 4000 + i);
    std::printf("%s\n", g_fail ? "FAILED" : "all ok");
    return g_fail ? 1 : 0;
}
