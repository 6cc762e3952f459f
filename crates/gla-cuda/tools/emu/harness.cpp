// The emulator's test program: the delta-rule kernels' launch sequences (as src/delta/ops.rs runs
// them) on emulated blocks, against an f64 oracle (a port of gla-cpu's delta/naive.rs and
// prep.rs), on a few cases of the shape of gla-check's delta table. Prints the relative RMSE of
// every output per path and storage. Usage: delta-emu [case-name-filter] [path-filter]
#include <functional>
#include <map>
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
    int B, T, H, HV, K, V;
    int gate;  // 0 none, 1 log decay, 2 computed
    bool l2, bsig, neg, h0;
    std::vector<long long> cu;
    double gs;
};

struct Data {
    Case c;
    int N;
    long long rows;
    std::vector<long long> bounds;
    VD q, k, v, beta, g, alog, dtb, h0, d_o, dht;
    double scale;
};

static double logsig(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
static double sig(double x) { return x >= 0 ? 1 / (1 + std::exp(-x)) : std::exp(x) / (1 + std::exp(x)); }
static double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(-std::fabs(x))) + std::max(x, 0.0); }
static double dsoftplus(double x) { return x > 20 ? 1 : sig(x); }

static Data make(const Case& c, uint64_t seed) {
    Data d;
    d.c = c;
    d.rows = (long long)c.B * c.T;
    if (c.cu.empty()) {
        for (int b = 0; b <= c.B; ++b) d.bounds.push_back((long long)b * c.T);
    } else {
        d.bounds = c.cu;
    }
    d.N = (int)d.bounds.size() - 1;
    d.scale = 1.0 / std::sqrt((double)c.K);
    Rng r(seed);
    auto fill = [&](size_t n, std::function<double()> f) {
        VD x(n);
        for (auto& e : x) e = f();
        return x;
    };
    const size_t qk = d.rows * c.H * c.K, vv = d.rows * c.HV * c.V, bb = d.rows * c.HV, st = (size_t)d.N * c.HV * c.K * c.V;
    d.q = fill(qk, [&] { return r.uni(); });
    // DELTA_KEYS=normal: keys of both signs (fla's tests: randn, L2-normalised), which keep T's
    // entries small; the table's positive keys (as SiLU'd keys are) correlate
    static const bool knormal = getenv("DELTA_KEYS") && !std::strcmp(getenv("DELTA_KEYS"), "normal");
    d.k = fill(qk, [&] { return knormal ? r.normal() : r.uni(); });
    if (!c.l2) {
        for (size_t x = 0; x < qk; x += c.K) {
            double n = 0;
            for (int i = 0; i < c.K; ++i) n += d.k[x + i] * d.k[x + i];
            n = std::sqrt(n);
            for (int i = 0; i < c.K; ++i) d.k[x + i] /= n;
        }
    }
    d.v = fill(vv, [&] { return r.uni(); });
    if (c.bsig) {
        d.beta = fill(bb, [&] { return r.normal() + (c.neg ? 4.0 : 0.0); });
    } else {
        d.beta = fill(bb, [&] { return r.uni(); });
    }
    if (c.gate == 1) d.g = fill(bb, [&] { return logsig(r.uni()) / c.gs; });
    if (c.gate == 2) {
        d.g = fill(bb, [&] { return 0.5 * r.normal(); });
        d.alog = fill(c.HV, [&] { return std::log(1 + 15 * r.uni()) - std::log(c.gs); });
        d.dtb = fill(c.HV, [&] {
            double dt = std::exp(r.uni() * (std::log(0.1) - std::log(0.001)) + std::log(0.001));
            return dt + std::log(-std::expm1(-dt));
        });
    }
    if (c.h0) d.h0 = fill(st, [&] { return r.uni(); });
    d.d_o = fill(vv, [&] { return r.normal(); });
    d.dht = fill(st, [&] { return r.normal(); });
    return d;
}

struct Out {
    VD o, ht, dq, dk, dv, db, dg, dal, ddt, dh0;
    // the oracle's condition numbers of the per-head sums dA_log, ddt (gla_check::tol::sum_tol)
    double cal = 1, cdt = 1;
};

// the f64 oracle (gla-cpu delta/naive.rs + prep.rs)
static Out oracle(const Data& d) {
    const Case& c = d.c;
    const int K = c.K, V = c.V, H = c.H, HV = c.HV, grp = HV / H;
    const long long rows = d.rows;
    VD qp(d.q.size()), kp(d.k.size()), bp(d.beta.size()), gp(d.beta.size(), 0.0), rq(rows * H, 1.0), rk(rows * H, 1.0);
    for (long long x = 0; x < rows * H; ++x) {
        double sq = 0, sk = 0;
        for (int i = 0; i < K; ++i) {
            sq += d.q[x * K + i] * d.q[x * K + i];
            sk += d.k[x * K + i] * d.k[x * K + i];
        }
        if (c.l2) {
            rq[x] = 1 / std::sqrt(sq + 1e-6);
            rk[x] = 1 / std::sqrt(sk + 1e-6);
        }
        for (int i = 0; i < K; ++i) {
            qp[x * K + i] = d.q[x * K + i] * rq[x] * d.scale;
            kp[x * K + i] = d.k[x * K + i] * rk[x];
        }
    }
    const double bs = c.neg ? 2.0 : 1.0;
    for (size_t x = 0; x < bp.size(); ++x) {
        bp[x] = c.bsig ? bs * sig(d.beta[x]) : d.beta[x];
        if (c.gate == 1) gp[x] = d.g[x];
        if (c.gate == 2) gp[x] = -std::exp(d.alog[x % HV]) * softplus(d.g[x] + d.dtb[x % HV]);
    }
    Out o;
    o.o.assign(rows * HV * V, 0);
    o.ht.assign((size_t)d.N * HV * K * V, 0);
    VD dq(rows * H * K, 0), dk(rows * H * K, 0);
    o.dv.assign(rows * HV * V, 0);
    VD db(rows * HV, 0), dg(rows * HV, 0);
    o.dh0.assign((size_t)d.N * HV * K * V, 0);
    const size_t KV = (size_t)K * V;
    for (int n = 0; n < d.N; ++n) {
        for (int j = 0; j < HV; ++j) {
            const int h = j / grp;
            const size_t so = ((size_t)n * HV + j) * KV;
            VD s(KV, 0);
            if (c.h0) std::copy(d.h0.begin() + so, d.h0.begin() + so + KV, s.begin());
            std::vector<VD> states;
            for (long long r = d.bounds[n]; r < d.bounds[n + 1]; ++r) {
                states.push_back(s);
                const double a = std::exp(gp[r * HV + j]), b = bp[r * HV + j];
                const double* kk = &kp[(r * H + h) * K];
                const double* vv = &d.v[(r * HV + j) * V];
                for (auto& x : s) x *= a;
                VD p(V, 0);
                for (int i = 0; i < K; ++i)
                    for (int cc = 0; cc < V; ++cc) p[cc] += s[i * V + cc] * kk[i];
                for (int i = 0; i < K; ++i)
                    for (int cc = 0; cc < V; ++cc) s[i * V + cc] += kk[i] * b * (vv[cc] - p[cc]);
                const double* qq = &qp[(r * H + h) * K];
                for (int i = 0; i < K; ++i)
                    for (int cc = 0; cc < V; ++cc) o.o[(r * HV + j) * V + cc] += s[i * V + cc] * qq[i];
            }
            states.push_back(s);
            std::copy(s.begin(), s.end(), o.ht.begin() + so);
            VD ds(d.dht.begin() + so, d.dht.begin() + so + KV);
            const long long bos = d.bounds[n];
            for (long long r = d.bounds[n + 1] - 1; r >= bos; --r) {
                const double a = std::exp(gp[r * HV + j]), b = bp[r * HV + j];
                const double* qq = &qp[(r * H + h) * K];
                const double* kk = &kp[(r * H + h) * K];
                const double* vv = &d.v[(r * HV + j) * V];
                const double* dd = &d.d_o[(r * HV + j) * V];
                const VD& sprev = states[r - bos];
                const VD& st = states[r - bos + 1];
                VD p(V, 0), u(V);
                for (int i = 0; i < K; ++i)
                    for (int cc = 0; cc < V; ++cc) p[cc] += a * sprev[i * V + cc] * kk[i];
                for (int cc = 0; cc < V; ++cc) u[cc] = b * (vv[cc] - p[cc]);
                VD du(V, 0);
                for (int i = 0; i < K; ++i) {
                    double dqa = 0, dka = 0;
                    for (int cc = 0; cc < V; ++cc) {
                        ds[i * V + cc] += qq[i] * dd[cc];
                        dqa += st[i * V + cc] * dd[cc];
                        dka += ds[i * V + cc] * u[cc];
                        du[cc] += ds[i * V + cc] * kk[i];
                    }
                    dq[(r * H + h) * K + i] += dqa;
                    dk[(r * H + h) * K + i] += dka;
                }
                double dbt = 0;
                VD dp(V);
                for (int cc = 0; cc < V; ++cc) {
                    o.dv[(r * HV + j) * V + cc] = b * du[cc];
                    dbt += du[cc] * (vv[cc] - p[cc]);
                    dp[cc] = -b * du[cc];
                }
                db[r * HV + j] = dbt;
                double dgt = 0;
                for (int i = 0; i < K; ++i) {
                    double dka = 0;
                    for (int cc = 0; cc < V; ++cc) {
                        ds[i * V + cc] += kk[i] * dp[cc];
                        dka += a * sprev[i * V + cc] * dp[cc];
                        dgt += sprev[i * V + cc] * ds[i * V + cc];
                        ds[i * V + cc] *= a;
                    }
                    dk[(r * H + h) * K + i] += dka;
                }
                dg[r * HV + j] = a * dgt;
            }
            std::copy(ds.begin(), ds.end(), o.dh0.begin() + so);
        }
    }
    // prep backward
    o.dq.assign(dq.size(), 0);
    o.dk.assign(dk.size(), 0);
    for (long long x = 0; x < rows * H; ++x) {
        for (int w = 0; w < 2; ++w) {
            const VD& in = w ? d.k : d.q;
            const VD& dy = w ? dk : dq;
            VD& out = w ? o.dk : o.dq;
            const double sc = w ? 1.0 : d.scale, r = w ? rk[x] : rq[x];
            double dot = 0;
            if (c.l2)
                for (int i = 0; i < K; ++i) dot += in[x * K + i] * r * dy[x * K + i];
            for (int i = 0; i < K; ++i)
                out[x * K + i] = c.l2 ? sc * r * (dy[x * K + i] - in[x * K + i] * r * dot) : sc * dy[x * K + i];
        }
    }
    o.db.resize(db.size());
    for (size_t x = 0; x < db.size(); ++x) {
        const double s = sig(d.beta[x]);
        o.db[x] = c.bsig ? db[x] * bs * s * (1 - s) : db[x];
    }
    if (c.gate == 1) o.dg = dg;
    if (c.gate == 2) {
        o.dg.resize(dg.size());
        o.dal.assign(HV, 0);
        o.ddt.assign(HV, 0);
        VD aal(HV, 0), adt(HV, 0);
        for (size_t x = 0; x < dg.size(); ++x) {
            const int j = x % HV;
            const double e = std::exp(d.alog[j]), z = d.g[x] + d.dtb[j];
            const double t = dg[x] * -e * softplus(z);
            o.dal[j] += t;
            aal[j] += std::fabs(t);
            o.dg[x] = dg[x] * -e * dsoftplus(z);
            o.ddt[j] += o.dg[x];
            adt[j] += std::fabs(o.dg[x]);
        }
        auto norm = [](const VD& a) {
            double n = 0;
            for (double x : a) n += x * x;
            return std::sqrt(n);
        };
        o.cal = norm(aal) / norm(o.dal);
        o.cdt = norm(adt) / norm(o.ddt);
    }
    if (!c.h0) o.dh0.clear();
    return o;
}

// ---- device-side helpers
template <class E>
static E toE(double x);
template <>
float toE<float>(double x) {
    return (float)x;
}
template <>
unsigned short toE<unsigned short>(double x) {
    return f2bf((float)x);
}
static double fromE(float x) { return x; }
static double fromE(unsigned short x) { return emu::bf2f(x); }

template <class E>
static std::vector<E> dev(const VD& x) {
    std::vector<E> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = toE<E>(x[i]);
    return y;
}
static std::vector<float> devf(const VD& x) { return std::vector<float>(x.begin(), x.end()); }
template <class E>
static VD back(const std::vector<E>& x) {
    VD y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = fromE(x[i]);
    return y;
}
template <class T>
static std::vector<T> poison(size_t n) {
    std::vector<T> v(n);
    std::memset(v.data(), 0xff, n * sizeof(T));
    return v;
}
template <class T>
static T* ptr(std::vector<T>& v) {
    return v.empty() ? nullptr : v.data();
}

struct Rounded {
    Data d;  // the inputs rounded to the storage, in f64
};

template <class E>
static Data rounded(const Data& d) {
    Data r = d;
    auto rd = [](VD& x) {
        for (auto& e : x) e = fromE(toE<E>(e));
    };
    rd(r.q);
    rd(r.k);
    rd(r.v);
    rd(r.beta);
    rd(r.g);
    rd(r.d_o);
    for (auto& e : r.h0) e = (float)e;
    for (auto& e : r.dht) e = (float)e;
    for (auto& e : r.alog) e = (float)e;
    for (auto& e : r.dtb) e = (float)e;
    return r;
}

static double rel(const VD& a, const VD& b) {
    if (a.size() != b.size()) return INFINITY;
    double n = 0, dd = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::isnan(a[i])) return INFINITY;
        n += (a[i] - b[i]) * (a[i] - b[i]);
        dd += b[i] * b[i];
    }
    return dd == 0 ? std::sqrt(n) : std::sqrt(n / dd);
}

static const char* g_path_filter = nullptr;
static int g_fail = 0;

static void report(const std::string& cs, const char* path, const char* dt, const Out& got, const Out& ref, double tol, bool bwd) {
    std::vector<std::pair<const char*, double>> r = {{"o", rel(got.o, ref.o)}, {"ht", rel(got.ht, ref.ht)}};
    if (bwd) {
        r.push_back({"dq", rel(got.dq, ref.dq)});
        r.push_back({"dk", rel(got.dk, ref.dk)});
        r.push_back({"dv", rel(got.dv, ref.dv)});
        r.push_back({"dbeta", rel(got.db, ref.db)});
        if (!ref.dg.empty()) r.push_back({"dg", rel(got.dg, ref.dg)});
        if (!ref.dal.empty()) r.push_back({"dA_log", rel(got.dal, ref.dal)});
        if (!ref.ddt.empty()) r.push_back({"ddt", rel(got.ddt, ref.ddt)});
        if (!ref.dh0.empty()) r.push_back({"dh0", rel(got.dh0, ref.dh0)});
    }
    std::printf("%-28s %-10s %-5s", cs.c_str(), path, dt);
    bool ok = true;
    for (auto& x : r) {
        std::printf(" %s=%.2e", x.first, x.second);
        // a per-head sum over every row (dA_log, ddt) loses relative accuracy by its condition
        // number: its tolerance is tol times that, capped at 0.1 (gla_check::tol::sum_tol)
        const bool sum = !std::strcmp(x.first, "dA_log") || !std::strcmp(x.first, "ddt");
        const double c = !std::strcmp(x.first, "dA_log") ? ref.cal : ref.cdt;
        const double t = sum ? (std::isfinite(c) ? std::min(tol * std::max(c, 1.0), std::max(0.1, tol)) : std::max(0.1, tol)) : tol;
        ok = ok && x.second <= t;
    }
    std::printf("  %s", ok ? "ok" : "FAIL");
    // DELTA_HASH=1: an FNV-1a hash of every output's bits, so that a refactor that must not change
    // a result (the same products in the same order) shows the same hashes before and after
    if (getenv("DELTA_HASH")) {
        unsigned long long h = 1469598103934665603ull;
        for (const VD* v : {&got.o, &got.ht, &got.dq, &got.dk, &got.dv, &got.db, &got.dg, &got.dal, &got.ddt, &got.dh0})
            for (double x : *v) {
                unsigned long long b;
                std::memcpy(&b, &x, 8);
                for (int i = 0; i < 8; ++i) h = (h ^ ((b >> (8 * i)) & 0xff)) * 1099511628211ull;
            }
        std::printf("  bits %016llx", h);
    }
    std::printf("\n");
    std::fflush(stdout);
    if (!ok) ++g_fail;
}

struct Dev {
    std::vector<long long> bounds, off;
    std::vector<int> seq;
    long long nc = 0;
};
static Dev devp(const Data& d) {
    Dev p;
    p.bounds = d.bounds;
    p.off.push_back(0);
    for (int n = 0; n < d.N; ++n) {
        const long long c = (d.bounds[n + 1] - d.bounds[n] + 63) / 64;
        p.off.push_back(p.off[n] + c);
        for (long long x = 0; x < c; ++x) p.seq.push_back(n);
    }
    p.nc = (long long)p.seq.size();
    if (p.seq.empty()) p.seq.push_back(0);
    return p;
}

static int kpad(int K) { return K <= 64 ? 64 : K <= 128 ? 128 : K <= 192 ? 192 : 256; }

// the kernels by (KP, storage)
template <class E>
struct K_;
#define KSET(E, SFX)                                                                              \
    template <>                                                                                   \
    struct K_<E> {                                                                                \
        static constexpr auto rec_fwd = delta_rec_fwd_##SFX;                                      \
        static constexpr auto rec_decode = delta_rec_decode_##SFX;                                \
        static constexpr auto rec_bwd = delta_rec_bwd_##SFX;                                      \
        static constexpr auto l2_rstd = delta_l2_rstd_##SFX;                                        \
        static constexpr auto gate_fwd = delta_gate_fwd_##SFX;                                    \
        static constexpr auto qk_bwd = delta_qk_bwd_##SFX;                                        \
        static constexpr auto gate_bwd = delta_gate_bwd_##SFX;                                    \
        static constexpr auto gate_param_bwd = delta_gate_param_bwd_##SFX;                        \
    };
KSET(float, f32)
KSET(unsigned short, bf16)

// DQK: the dq/dk entry src/delta/dispatch.rs runs on mma.sync (delta_dqk_s2_* for bf16, the V
// tiles in two buffers: dq_bufs)
#define CHUNK_FNS(KP, SFX, DQK, H32, HB32, HB2, H32B2, HBD2)                                                   \
    {KP, {(void*)delta_wy_k##KP##_##SFX, (void*)delta_h_k##KP##_##SFX, (void*)delta_o_k##KP##_##SFX,            \
          (void*)delta_dvl_k##KP##_##SFX, (void*)delta_h_bwd_k##KP##_##SFX, (void*)DQK,                        \
          (void*)delta_wy_bwd_k##KP##_##SFX, (void*)H32, (void*)HB32, (void*)HB2, (void*)H32B2, (void*)HBD2}}
struct ChunkFns {
    void *wy, *h, *o, *dvl, *hb, *dqk, *wyb, *h32, *hb32, *h2, *h32b2;  // h2, h32b2: the _b2 / _v32b2 entries
    void* hbd2;  // delta_h_bwd_dv2: the state-gradient pass with dvl fused in (64 columns, two stages)
};
static std::map<int, ChunkFns> g_cf32 = {CHUNK_FNS(64, f32, delta_dqk_k64_f32, nullptr, nullptr, nullptr, nullptr, nullptr),
                                         CHUNK_FNS(128, f32, delta_dqk_k128_f32, nullptr, nullptr, nullptr, nullptr, nullptr)};
static std::map<int, ChunkFns> g_cbf = {
    CHUNK_FNS(64, bf16, delta_dqk_s2_k64_bf16, delta_h_v32_k64_bf16, delta_h_bwd_v32_k64_bf16, delta_h_b2_k64_bf16,
              delta_h_v32b2_k64_bf16, delta_h_bwd_dv2_k64_bf16),
    CHUNK_FNS(128, bf16, delta_dqk_s2_k128_bf16, delta_h_v32_k128_bf16, delta_h_bwd_v32_k128_bf16, delta_h_b2_k128_bf16,
              delta_h_v32b2_k128_bf16, delta_h_bwd_dv2_k128_bf16),
    CHUNK_FNS(192, bf16, delta_dqk_s2_k192_bf16, delta_h_v32_k192_bf16, delta_h_bwd_v32_k192_bf16, nullptr, nullptr, nullptr),
    CHUNK_FNS(256, bf16, delta_dqk_s2_k256_bf16, delta_h_v32_k256_bf16, delta_h_bwd_v32_k256_bf16, nullptr, nullptr, nullptr)};
// the one-buffer dq/dk entries for K wider than 128 (DELTA_DQVAR=s1, the lab's dq=s1)
static std::map<int, void*> g_dqs1 = {{192, (void*)delta_dqk_k192_bf16}, {256, (void*)delta_dqk_k256_bf16}};

// smem sizes (as src/delta/dispatch.rs)
template <class E>
static constexpr int SPn = Sp<E>::SP;  // the kernels' planes (DELTA_PLANES for bf16)
template <class E>
static size_t sm_wy(int KP, int VP) {
    const int SP = SPn<E>;
    return (64 * (KP + 8) + 64 * (VP + 8) + SP * 64 * 72) * sizeof(E) + (64 * 65 + 64 * 3) * 4;
}
// delta_wyt (src/delta/dispatch.rs DeltaSmem::wyt): K and A's f32 tile, G, beta, rk
template <class E>
static size_t sm_wyt(int KP) {
    return (64 * (KP + 8)) * sizeof(E) + (64 * 65 + 64 * 3) * 4;
}
template <class E>
static int h_stages(int KP) {
    return (sizeof(E) == 2 && KP <= 128) ? 2 : 1;
}
template <class E>
static size_t sm_h(int KP, int BV, int ns) {
    const int SP = SPn<E>, L = BV + 8;
    return (ns * (SP + 1) * 64 * (KP + 8) + KP * L + SP * 64 * L) * sizeof(E) + ns * (64 * BV + 128) * 4;
}
template <class E>
static size_t sm_o(int KP) {
    const int SP = SPn<E>;
    return (64 * (KP + 8) + KP * 72 + 2 * SP * 64 * 72) * sizeof(E) + 3 * 64 * 4;
}
template <class E>
static size_t sm_dvl(int KP) {
    const int SP = SPn<E>;
    return (2 * 64 * (KP + 8) + SP * 64 * 72 + 64 * 72) * sizeof(E) + 3 * 64 * 4;
}
// DeltaSmem::pm: delta_dvl's without the do tile
template <class E>
static size_t sm_pm(int KP) {
    return sm_dvl<E>(KP) - 64 * 72 * sizeof(E);
}
template <class E>
static size_t sm_hb(int KP, int BV, bool fd = false, int ns = 1) {
    const int SP = SPn<E>, L = BV + 8;
    return (ns * ((2 + SP) * 64 * (KP + 8) + 64 * L) + KP * L + SP * 64 * L + fd * (SP * 64 * 72 + 64 * L)) * sizeof(E) +
           ns * (64 * BV * !fd + 3 * 64) * 4;
}
// BV of the sequential passes: DELTA_BV, else src/delta/dispatch.rs's rule at 132 SMs
template <class E>
static int h_bv(int VP, int nhv) {
    if (getenv("DELTA_BV")) return atoi(getenv("DELTA_BV")) == 32 && sizeof(E) == 2 ? 32 : 64;
    return (sizeof(E) == 2 && (VP / 64) * nhv < 264) ? 32 : 64;
}
template <class E>
static int kw(int KP) {
    return (sizeof(E) == 2 && KP <= 128) ? KP : (KP == 64 ? 64 : KP / 2);
}
// delta_dqk_*'s f32 words (DeltaSmem's DQK_M, DQK_F32): M [64][65], then G, rq, rk, row, warp,
// and dM * M's row and column sums
static constexpr int DQK_M = 64 * 65, DQK_F32 = 3 * 64 + 128 + 16 + 128 + 256;
template <class E>
static size_t sm_dqk(int KP, int NB) {
    const int KW = kw<E>(KP), SP = SPn<E>, VBUF = (1 + SP) * 64 * 72 + 2 * KW * 72;
    return (2 * 64 * (KP + 8) + NB * VBUF + (2 - NB) * SP * 64 * 72) * sizeof(E) + (DQK_M + DQK_F32) * 4;
}
// the dq/dk entry on warpgroups (bf16, KP 64, 128, 256): the default, as on sm_90a
// (src/delta/dispatch.rs dqk_wg; DELTA_DQVAR=s2 or s1 runs a mma.sync entry); its swizzled,
// unpadded tiles and the 1024 bytes of their alignment (DeltaSmem::dqk_wg)
static std::map<int, void*> g_dqwg = {
    {64, (void*)delta_dqk_wg_k64_bf16}, {128, (void*)delta_dqk_wg_k128_bf16}, {256, (void*)delta_dqk_wg_k256_bf16}};
// DELTA_DM=1 (dispatch's default on sm_90a; the lab's dm=0 turns it off): dMG on one plane,
// KP 128 and 256
static std::map<int, void*> g_dqwg1 = {{128, (void*)delta_dqk_wg_d1_k128_bf16}, {256, (void*)delta_dqk_wg_d1_k256_bf16}};
// DELTA_DQVAR=b2 (the lab's dq=b2, KP 128): the d1 entry on one V-tile buffer, M formed after
// the V loop in registers, built for two blocks per SM (DeltaSmem::dqk_wg_b2)
static bool dq_b2(int KP) {
    const char* v = getenv("DELTA_DQVAR");
    return KP == 128 && v && !std::strcmp(v, "b2");
}
static void* dq_wg_entry(int KP) {
    if (dq_b2(KP)) return (void*)delta_dqk_wg_b2_k128_bf16;
    const char* v = getenv("DELTA_DM");
    return v && !std::strcmp(v, "1") && g_dqwg1.count(KP) ? g_dqwg1[KP] : g_dqwg[KP];
}
static size_t sm_dqk_wg(int KP) {
    const int VBUF = (1 + SPn<bf16_t>) * 64 * 64 + 2 * kw<bf16_t>(KP) * 64;
    if (dq_b2(KP)) return (2 * 64 * KP + VBUF + 64 * 64) * 2 + DQK_F32 * 4 + 1024;
    return (2 * 64 * KP + 2 * VBUF) * 2 + (DQK_M + DQK_F32) * 4 + 1024;
}
template <class E>
static bool dq_wg(int KP) {
    const char* v = getenv("DELTA_DQVAR");
    return sizeof(E) == 2 && KP != 192 && !(v && (!std::strcmp(v, "s2") || !std::strcmp(v, "s1")));
}
// V-tile buffers of the dq/dk entry (src/delta/dispatch.rs dqk_bufs): two for bf16, one for f32
// and under DELTA_DQVAR=s1 where K is wider than 128
template <class E>
static int dq_bufs(int KP) {
    const char* v = getenv("DELTA_DQVAR");
    return (sizeof(E) == 2 && !(KP > 128 && v && !std::strcmp(v, "s1"))) ? 2 : 1;
}
// the residual forward (delta_wyt + delta_hr_b2; bf16, KP <= 128): DELTA_HVAR=resb2; the
// backward then runs delta_wy for w (as src/delta/ops.rs does)
static std::map<int, void*> g_wyt = {{64, (void*)delta_wyt_k64_bf16},
                                     {128, (void*)delta_wyt_k128_bf16},
                                     {192, (void*)delta_wyt_k192_bf16},
                                     {256, (void*)delta_wyt_k256_bf16}};
static std::map<int, void*> g_hrb2 = {{64, (void*)delta_hr_b2_k64_bf16}, {128, (void*)delta_hr_b2_k128_bf16}};
static std::map<int, void*> g_hrv32 = {{64, (void*)delta_hr_v32_k64_bf16}, {128, (void*)delta_hr_v32_k128_bf16}};
// K wider than 128 (dispatch::delta::HR_S2, the lab's h=ress2): DELTA_HVAR=ress2, two stages
static std::map<int, void*> g_hrs2 = {{192, (void*)delta_hr_s2_k192_bf16}, {256, (void*)delta_hr_s2_k256_bf16}};
// delta_hr_s2 at KP <= 128 (dispatch::delta::hr_tail): DELTA_FTAIL=1 runs the first half of the
// sequence x value heads of a `resv32` forward on it, the rest (at least one) on delta_hr_v32
static std::map<int, void*> g_hrs2n = {{64, (void*)delta_hr_s2_k64_bf16}, {128, (void*)delta_hr_s2_k128_bf16}};
// the residual forward with the output fused in (src/delta/dispatch.rs res_out): DELTA_FO=1 runs
// it with hs and v_new written (a backward follows: the dispatch's default on delta_hro_b2, the
// lab's fo=1 on every plan), DELTA_FO=2 as a forward-only
// workspace does (hs, v_new unwritten; the backward then recomputes the forward unfused)
static std::map<int, void*> g_hrob2 = {{64, (void*)delta_hro_b2_k64_bf16}, {128, (void*)delta_hro_b2_k128_bf16}};
static std::map<int, void*> g_hrov32 = {{64, (void*)delta_hro_v32_k64_bf16}, {128, (void*)delta_hro_v32_k128_bf16}};
static std::map<int, void*> g_hros2 = {{192, (void*)delta_hro_s2_k192_bf16}, {256, (void*)delta_hro_s2_k256_bf16}};
// DELTA_FP=1 (dispatch::delta::hro_pm): P from delta_pm, read by delta_hrop_*
// (the b2 and s2 plans)
static std::map<int, void*> g_pm = {{64, (void*)delta_pm_k64_bf16},
                                    {128, (void*)delta_pm_k128_bf16},
                                    {192, (void*)delta_pm_k192_bf16},
                                    {256, (void*)delta_pm_k256_bf16}};
static std::map<int, void*> g_hropb2 = {{64, (void*)delta_hrop_b2_k64_bf16}, {128, (void*)delta_hrop_b2_k128_bf16}};
static std::map<int, void*> g_hrops2 = {{192, (void*)delta_hrop_s2_k192_bf16}, {256, (void*)delta_hrop_s2_k256_bf16}};
static bool fp_mode() {
    const char* v = getenv("DELTA_FP");
    return v && !std::strcmp(v, "1");
}
static int fo_mode() {
    const char* v = getenv("DELTA_FO");
    return v ? std::atoi(v) : 0;
}
// DeltaSmem::hro: hr's stages (rq beside beta), q's one buffer, Y's hi plane in the V tile
static size_t sm_hro(int KP, int BV, int NS) {
    const size_t L = BV + 8, stage = 2 * 64 * 72 + 64 * (KP + 8) + 64 * L;
    return (NS * stage + 64 * (KP + 8) + (size_t)KP * L + 3 * 64 * L) * 2 + NS * 256 * 4;
}
// src/delta/dispatch.rs DeltaSmem::hr: NS stages of T (hi, lo), k, the BV-column V tile and G, rk,
// beta; the state operand; U's and Y's split tiles
static size_t sm_hr(int KP, int BV, int NS) {
    const size_t L = BV + 8, stage = 2 * 64 * 72 + 64 * (KP + 8) + 64 * L;
    return (NS * stage + (size_t)KP * L + 4 * 64 * L) * 2 + NS * 192 * 4;
}
// the residual state-gradient pass (bf16, KP <= 128, two stages): delta_h_bwd_rdv2 (dvl fused
// in, 64 columns) or delta_h_bwd_rv32 (dvl read, 32 columns); per stage q, k, T (hi, lo), do
// (and dvl's tile), G, rq, rk, beta; Y in P's tile, or its own (src/delta/dispatch.rs
// DeltaSmem::h_bwd_res)
static std::map<int, void*> g_hbr = {{64, (void*)delta_h_bwd_rdv2_k64_bf16}, {128, (void*)delta_h_bwd_rdv2_k128_bf16}};
// delta_h_bwd_rdv2 on 32 columns (dispatch::delta::hb_tail's heads): DELTA_HBVAR=tail runs the
// last half of the sequence x value heads (at least one) on it, the rest on delta_h_bwd_rdv2
static std::map<int, void*> g_hbrt = {{64, (void*)delta_h_bwd_rdv2_v32_k64_bf16}, {128, (void*)delta_h_bwd_rdv2_v32_k128_bf16}};
static std::map<int, void*> g_hbr32 = {{64, (void*)delta_h_bwd_rv32_k64_bf16}, {128, (void*)delta_h_bwd_rv32_k128_bf16}};
// K wider than 128 (dispatch::delta::HBR_S1, the lab's hb=rs1): DELTA_HBVAR=rs1 after
// DELTA_HVAR=ress2's forward; 64 columns, dvl read, one stage
static std::map<int, void*> g_hbrs1 = {{192, (void*)delta_h_bwd_rs1_k192_bf16}, {256, (void*)delta_h_bwd_rs1_k256_bf16}};
// DELTA_HBVAR=rdv1 (the lab's hb=rdv1): the same with dvl fused in
static std::map<int, void*> g_hbrd1 = {{192, (void*)delta_h_bwd_rdv1_k192_bf16}, {256, (void*)delta_h_bwd_rdv1_k256_bf16}};
static std::map<int, void*> g_hbrp1 = {{192, (void*)delta_h_bwd_rdvp1_k192_bf16}, {256, (void*)delta_h_bwd_rdvp1_k256_bf16}};
// DELTA_HG=1 (dispatch::delta::hb_launch's default on sm_90a; the lab's hg=0 turns it off):
// delta_h_bwd_rdv2 at KP 128 with its dS update on warpgroup products (1024 bytes more shared
// memory; the same bits)
static bool hb_wg() {
    const char* v = getenv("DELTA_HG");
    return v && !std::strcmp(v, "1");
}
static size_t sm_hbr(int KP, bool fd, int BV, int NS) {
    const size_t SP = SPn<bf16_t>, L = BV + 8, stage = 2 * 64 * (KP + 8) + SP * 64 * 72 + 64 * L;
    const size_t pt = fd ? SP * 64 * 72 + 64 * L : SP * 64 * L;
    return (NS * stage + (size_t)KP * L + SP * 64 * L + pt) * 2 + NS * ((fd ? 0 : 64 * BV) + 256) * 4;
}
// the residual forward: DELTA_HVAR=resb2 / resv32 forces it, any other DELTA_HVAR turns it off,
// else src/delta/dispatch.rs's rule for a training workspace at 132 SMs (res_ok: where the
// state-gradient pass has a residual form, `bres`; h_res: `_b2` where tiles >= SMs)
static const char* h_res_var(int tiles, bool bres) {
    const char* hv = getenv("DELTA_HVAR");
    if (hv) return !std::strcmp(hv, "resb2") || !std::strcmp(hv, "resv32") ? hv : nullptr;
    return bres ? (tiles >= 132 ? "resb2" : "resv32") : nullptr;
}
template <class E>
static size_t sm_wyb(int KP, int VP) {
    const int SP = SPn<E>, RA = std::max(2 * SP * 64, KP + SP * 64);
    return ((1 + SP) * 64 * (KP + 8) + (SP * 64 + RA) * 72) * sizeof(E) + (3 * 64 + 256 + 64 + 128 + 256) * 4;
}

template <class E>
struct Run {
    const Data& d;
    Dev p;
    // HV, V: the kernels' value heads and width; with VS > 1 value sub-heads (ops.rs's
    // dispatch::delta::route) HV = HVin * VS and V = Vin / VS, the inputs' beta, g, A_log and
    // dt_bias stay per input head HVin, the states move between layouts (delta_state_split)
    int H, HV, K, V, KP, VP, HVin, VS;
    long long rows;
    float scale, bscale;
    int gmode, l2;
    std::vector<E> q, k, v, beta, g, d_o;
    std::vector<float> alog, dtb, h0, dht;
    explicit Run(const Data& dd, int vs = 1) : d(dd), p(devp(dd)) {
        const Case& c = d.c;
        H = c.H;
        VS = vs;
        HVin = c.HV;
        HV = c.HV * vs;
        K = c.K;
        V = c.V / vs;
        KP = kpad(K);
        VP = (V + 63) / 64 * 64;
        rows = d.rows;
        scale = (float)d.scale;
        bscale = c.bsig ? (c.neg ? 2.f : 1.f) : 0.f;
        gmode = c.gate;
        l2 = c.l2;
        q = dev<E>(d.q);
        k = dev<E>(d.k);
        v = dev<E>(d.v);
        beta = dev<E>(d.beta);
        g = dev<E>(d.g);
        d_o = dev<E>(d.d_o);
        alog = devf(d.alog);
        dtb = devf(d.dtb);
        h0 = split(devf(d.h0), 0);
        dht = split(devf(d.dht), 0);
    }
    // states between the inputs' layout and the sub-heads' (dir 0: into it, 1: back)
    std::vector<float> split(const std::vector<float>& src, int dir) const {
        if (VS == 1 || src.empty()) return src;
        auto dst = poison<float>(src.size());
        const long long n = (long long)src.size();
        emu::launch(dim3{(unsigned)((n + 255) / 256), 1, 1}, dim3{256, 1, 1}, 0,
                    [&] { delta_state_split(src.data(), dst.data(), n, K, VS, V, dir); });
        return dst;
    }
    Out rec_fwd() {
        Out out;
        auto o = poison<E>(rows * HV * V);
        auto ht = poison<float>((size_t)d.N * HV * K * V);
        dim3 grid{(unsigned)((V + 31) / 32), (unsigned)(d.N * HV), 1}, block{32, 8, 1};
        emu::launch(grid, block, 0, [&] {
            K_<E>::rec_fwd(q.data(), k.data(), v.data(), beta.data(), ptr(g), ptr(alog), ptr(dtb), ptr(h0), o.data(), ht.data(),
                           p.bounds.data(), H, HV, K, V, scale, l2, bscale, gmode);
        });
        out.o = back(o);
        out.ht = back(ht);
        return out;
    }
    // decode: each token through delta_rec_decode_*, the states in a table of N buffers
    Out decode() {
        Out out;
        out.o.assign(rows * HV * V, NAN);
        std::vector<std::vector<float>> st(d.N, std::vector<float>((size_t)HV * K * V, 0.f));
        for (int n = 0; n < d.N; ++n)
            if (!h0.empty()) std::copy(h0.begin() + (size_t)n * HV * K * V, h0.begin() + (size_t)(n + 1) * HV * K * V, st[n].begin());
        std::vector<unsigned long long> table(d.N);
        for (int n = 0; n < d.N; ++n) table[n] = (unsigned long long)st[n].data();
        long long maxlen = 0;
        for (int n = 0; n < d.N; ++n) maxlen = std::max(maxlen, d.bounds[n + 1] - d.bounds[n]);
        // step s: the sequences still running; one row each, packed
        for (long long s = 0; s < maxlen; ++s) {
            std::vector<int> live;
            for (int n = 0; n < d.N; ++n)
                if (d.bounds[n] + s < d.bounds[n + 1]) live.push_back(n);
            const int m = (int)live.size();
            std::vector<E> sq(m * H * K), sk(m * H * K), sv(m * HV * V), sb(m * HV), sg(gmode ? m * HV : 0);
            std::vector<unsigned long long> tab(m);
            std::vector<long long> bnd(m + 1);
            for (int x = 0; x < m; ++x) {
                const long long r = d.bounds[live[x]] + s;
                std::copy(q.begin() + r * H * K, q.begin() + (r + 1) * H * K, sq.begin() + x * H * K);
                std::copy(k.begin() + r * H * K, k.begin() + (r + 1) * H * K, sk.begin() + x * H * K);
                std::copy(v.begin() + r * HV * V, v.begin() + (r + 1) * HV * V, sv.begin() + x * HV * V);
                std::copy(beta.begin() + r * HV, beta.begin() + (r + 1) * HV, sb.begin() + x * HV);
                if (gmode) std::copy(g.begin() + r * HV, g.begin() + (r + 1) * HV, sg.begin() + x * HV);
                tab[x] = table[live[x]];
                bnd[x] = x;
            }
            bnd[m] = m;
            auto o = poison<E>(m * HV * V);
            dim3 grid{(unsigned)((V + 31) / 32), (unsigned)(m * HV), 1}, block{32, 8, 1};
            emu::launch(grid, block, 0, [&] {
                K_<E>::rec_decode(sq.data(), sk.data(), sv.data(), sb.data(), ptr(sg), ptr(alog), ptr(dtb), tab.data(), o.data(),
                                  bnd.data(), H, HV, K, V, scale, l2, bscale, gmode);
            });
            for (int x = 0; x < m; ++x) {
                const long long r = d.bounds[live[x]] + s;
                for (int y = 0; y < HV * V; ++y) out.o[r * HV * V + y] = fromE(o[x * HV * V + y]);
            }
        }
        for (int n = 0; n < d.N; ++n) out.ht.insert(out.ht.end(), st[n].begin(), st[n].end());
        return out;
    }
    // the prepared beta and log decay
    void gate_prep(std::vector<float>& bt, std::vector<float>& gl) {
        const long long n = rows * HV;
        bt = poison<float>(n);
        gl = gmode ? poison<float>(n) : std::vector<float>();
        emu::launch(dim3{(unsigned)((n + 255) / 256), 1, 1}, dim3{256, 1, 1}, 0, [&] {
            K_<E>::gate_fwd(beta.data(), ptr(g), ptr(alog), ptr(dtb), bt.data(), ptr(gl), n, HVin, VS, bscale, gmode);
        });
    }
    // the backward's last launches: sums of the NP partials, the elementwise maps' backward
    void finalize(Out& out, std::vector<float>& dqp, std::vector<float>& dkp, std::vector<float>& dbp, std::vector<float>& dgp, int NP,
                  std::vector<float>& dh0, bool direct = false) {
        auto dq = poison<float>(rows * H * K), dk = poison<float>(rows * H * K);
        const long long nqk = rows * H;
        if (direct) {
            dq = dqp;
            dk = dkp;
        } else {
            emu::launch(dim3{(unsigned)((nqk + 7) / 8), 1, 1}, dim3{256, 1, 1}, 0, [&] {
                K_<E>::qk_bwd(q.data(), k.data(), dqp.data(), dkp.data(), dq.data(), dk.data(), rows, H, HV, K, NP, l2);
            });
        }
        const long long n = rows * HVin;
        auto db = poison<float>(n);
        auto dg = poison<float>(gmode ? n : 0);
        emu::launch(dim3{(unsigned)((n + 255) / 256), 1, 1}, dim3{256, 1, 1}, 0, [&] {
            K_<E>::gate_bwd(beta.data(), ptr(g), ptr(alog), ptr(dtb), dbp.data(), ptr(dgp), db.data(), ptr(dg), n, HVin, VS, NP, bscale, gmode);
        });
        out.dq = back(dq);
        out.dk = back(dk);
        out.db = back(db);
        if (gmode) out.dg = back(dg);
        if (gmode == 2) {
            auto dal = poison<float>(HVin), ddt = poison<float>(HVin);
            emu::launch(dim3{(unsigned)HVin, 1, 1}, dim3{256, 1, 1}, 0, [&] {
                K_<E>::gate_param_bwd(ptr(g), alog.data(), dtb.data(), dgp.data(), dal.data(), ddt.data(), rows, HVin, VS, NP);
            });
            out.dal = back(dal);
            out.ddt = back(ddt);
        }
        if (!h0.empty()) out.dh0 = back(split(dh0, 1));
    }
    Out rec_bwd() {
        Out out = rec_fwd();
        std::vector<float> bt, gl;
        gate_prep(bt, gl);
        const int NV = (V + 31) / 32, kpt = (K + 7) / 8, slot = kpt * 256;
        auto dqp = poison<float>(NV * rows * HV * K), dkp = poison<float>(NV * rows * HV * K);
        auto dbp = poison<float>(NV * rows * HV), dgp = poison<float>(NV * rows * HV);
        auto dv = poison<float>(rows * HV * V);
        auto dh0 = poison<float>(h0.empty() ? 0 : h0.size());
        auto ck = poison<float>((rows / 32 + d.N + 1) * HV * NV * slot);
        auto scr = poison<float>((size_t)d.N * HV * NV * 32 * slot);
        dim3 grid{(unsigned)NV, (unsigned)(d.N * HV), 1}, block{32, 8, 1};
        emu::launch(grid, block, 0, [&] {
            K_<E>::rec_bwd(q.data(), k.data(), v.data(), bt.data(), ptr(gl), ptr(h0), d_o.data(), dht.data(), dqp.data(), dkp.data(),
                           dv.data(), dbp.data(), ptr(dgp), ptr(dh0), ck.data(), scr.data(), p.bounds.data(), H, HV, K, V, scale, l2,
                           gmode, rows);
        });
        out.dv = back(dv);
        finalize(out, dqp, dkp, dbp, dgp, NV, dh0);
        return out;
    }
    const ChunkFns& fns() { return (sizeof(E) == 4 ? g_cf32 : g_cbf).at(KP); }
    // forward workspaces
    std::vector<E> w, tm, hs, vn;
    std::vector<float> rq, rk, u, bt, gl, g2;
    long long nch = 0;
    bool res_fwd = false;  // the last chunk_fwd_core ran the residual forward (no w, u)
    // whether the state-gradient pass computes dvl itself: dispatch::delta::h_policy's rule at
    // 132 SMs (delta_h_bwd_dv2 where the entry exists and 32-column tiles would not fit in one
    // wave); DELTA_HBVAR=dv2 fused at 64 columns whatever the tiles (DELTA_HBVAR=tail: and half
    // the heads on 32 columns after a residual forward), DELTA_HBVAR=one never
    // whether the 32-column state-gradient pass has its residual form (dispatch::delta::h_bwd_res):
    // its tiles fill half of 132 SMs, or DELTA_HBVAR=rv32 (the lab's hb=rv32) asks for it
    bool rv32_fill() {
        const char* hbv = getenv("DELTA_HBVAR");
        return 2 * (VP / 32) * d.N * HV >= 132 || (hbv && !std::strcmp(hbv, "rv32"));
    }
    bool hb_fused() {
        const char* hbv = getenv("DELTA_HBVAR");
        return fns().hbd2 && !(hbv && !std::strcmp(hbv, "one")) && ((hbv && (!std::strcmp(hbv, "dv2") || !std::strcmp(hbv, "tail"))) || 2 * (VP / 64) * d.N * HV > 132);
    }
    int SP = SPn<E>;
    void chunk_prep() {
        rq.clear();
        rk.clear();
        if (l2) {
            const long long nr = rows * H;
            rq = poison<float>(nr);
            rk = poison<float>(nr);
            emu::launch(dim3{(unsigned)((nr + 7) / 8), 1, 1}, dim3{256, 1, 1}, 0, [&] {
                K_<E>::l2_rstd(q.data(), rq.data(), nr, K);
                K_<E>::l2_rstd(k.data(), rk.data(), nr, K);
            });
        }
        gate_prep(bt, gl);
    }
    // delta_pm_* (bf16): P once per (chunk, value head) into pm [SP][chunks, HV, 64, 64], from G
    // (g2) of the forward that ran
    void run_pm(E* pm) {
        typedef void (*PmFn)(const E*, const E*, const float*, const float*, const float*, E*, const long long*, const long long*,
                             const int*, int, int, int, float, long long);
        emu::launch(dim3{(unsigned)p.nc, (unsigned)HV, 1}, dim3{256, 1, 1}, sm_pm<E>(KP), [&] {
            ((PmFn)g_pm.at(KP))(q.data(), k.data(), ptr(rq), ptr(rk), g2.data(), pm, p.bounds.data(), p.off.data(), p.seq.data(), H,
                                HV, K, scale, nch);
        });
    }
    // fo: DELTA_FO's mode for this forward (0: delta_hr_* + delta_o where residual)
    void chunk_fwd_core(Out& out, bool want_o, int fo = 0) {
        const long long nc = p.nc;
        nch = nc;
        w = poison<E>(SP * nc * HV * 64 * KP);
        u = poison<float>(nc * HV * 64 * VP);
        tm = poison<E>(SP * nc * HV * 4096);
        g2 = poison<float>(nc * HV * 64);
        hs = poison<E>(nc * HV * KP * VP);
        vn = poison<E>(SP * nc * HV * 64 * VP);
        auto ht = poison<float>((size_t)d.N * HV * K * V);
        const ChunkFns& f = fns();
        dim3 cgrid{(unsigned)nc, (unsigned)HV, 1}, b256{256, 1, 1};
        typedef void (*WyFn)(const E*, const float*, const E*, const float*, const float*, E*, float*, E*, float*, const long long*,
                             const long long*, const int*, int, int, int, int, int, long long);
        typedef void (*HFn)(const E*, const float*, const E*, const float*, const float*, const float*, E*, E*, float*,
                            const long long*, const long long*, int, int, int, int, int, long long);
        const bool bres = hb_fused() || (h_bv<E>(VP, d.N * HV) == 32 && rv32_fill());
        const char* hvar = getenv("DELTA_HVAR");
        const bool wide = sizeof(E) == 2 && g_hrs2.count(KP) && hvar && !std::strcmp(hvar, "ress2");
        const char* res = wide ? "ress2" : sizeof(E) == 2 && g_hrb2.count(KP) ? h_res_var((VP / 64) * d.N * HV, bres) : nullptr;
        res_fwd = res != nullptr;
        if (res) {
            // T only (w, u stay poisoned), then v_new from T, k, v
            if (nc > 0)
                emu::launch(cgrid, b256, sm_wyt<E>(KP), [&] {
                    ((WyFn)g_wyt.at(KP))(k.data(), ptr(rk), v.data(), bt.data(), ptr(gl), nullptr, nullptr, tm.data(), g2.data(),
                                         p.bounds.data(), p.off.data(), p.seq.data(), H, HV, K, V, VP, nch);
                });
            typedef void (*HrFn)(const E*, const float*, const E*, const float*, const float*, const float*, E*, E*, float*,
                                 const long long*, const long long*, int, int, int, int, int, long long, const E*, const E*, const float*,
                                 int);
            const bool v32 = !std::strcmp(res, "resv32");
            const int rbv = v32 ? 32 : 64;
            if (want_o && fo > 0 && nc > 0) {
                typedef void (*HroFn)(const E*, const float*, const E*, const float*, const float*, const float*, E*, E*, float*,
                                      const long long*, const long long*, int, int, int, int, int, long long, const E*, const E*,
                                      const float*, const E*, const float*, E*, float);
                auto o = poison<E>(rows * HV * V);
                if (fp_mode() && !v32) {
                    typedef void (*HropFn)(const E*, const float*, const E*, const float*, const float*, const float*, E*, E*,
                                           float*, const long long*, const long long*, int, int, int, int, int, long long, const E*,
                                           const E*, const float*, const E*, const float*, E*, float, const E*);
                    auto pm = poison<E>(SP * nc * HV * 4096);
                    run_pm(pm.data());
                    emu::launch(dim3{(unsigned)(VP / rbv), (unsigned)(d.N * HV), 1}, b256, sm_hro(KP, rbv, wide ? 2 : 1), [&] {
                        ((HropFn)(wide ? g_hrops2 : g_hropb2).at(KP))(nullptr, nullptr, k.data(), ptr(rk), g2.data(), ptr(h0),
                                                                      fo == 1 ? hs.data() : nullptr, fo == 1 ? vn.data() : nullptr,
                                                                      ht.data(), p.bounds.data(), p.off.data(), H, HV, K, V, VP, nch,
                                                                      tm.data(), v.data(), bt.data(), q.data(), ptr(rq), o.data(), scale,
                                                                      pm.data());
                    });
                } else {
                    emu::launch(dim3{(unsigned)(VP / rbv), (unsigned)(d.N * HV), 1}, b256, sm_hro(KP, rbv, v32 || wide ? 2 : 1), [&] {
                        ((HroFn)(wide ? g_hros2 : v32 ? g_hrov32 : g_hrob2).at(KP))(nullptr, nullptr, k.data(), ptr(rk), g2.data(), ptr(h0),
                                                                  fo == 1 ? hs.data() : nullptr, fo == 1 ? vn.data() : nullptr,
                                                                  ht.data(), p.bounds.data(), p.off.data(), H, HV, K, V, VP, nch,
                                                                  tm.data(), v.data(), bt.data(), q.data(), ptr(rq), o.data(), scale);
                    });
                }
                out.ht = back(split(ht, 1));
                out.o = back(o);
                return;
            }
            const int nhv = d.N * HV;
            const bool ftail = v32 && getenv("DELTA_FTAIL") && !std::strcmp(getenv("DELTA_FTAIL"), "1");
            const int nt = ftail ? std::max(1, nhv / 2) : nhv;  // the heads on delta_hr_v32 (the last ones)
            auto hr = [&](void* fn, int bw, int ns, int nh0, int nhs) {
                emu::launch(dim3{(unsigned)(VP / bw), (unsigned)nhs, 1}, b256, sm_hr(KP, bw, ns), [&] {
                    ((HrFn)fn)(nullptr, nullptr, k.data(), ptr(rk), g2.data(), ptr(h0), hs.data(), vn.data(), ht.data(), p.bounds.data(),
                               p.off.data(), H, HV, K, V, VP, nch, tm.data(), v.data(), bt.data(), nh0);
                });
            };
            if (nhv - nt > 0) hr(g_hrs2n.at(KP), 64, 2, 0, nhv - nt);
            hr((wide ? g_hrs2 : v32 ? g_hrv32 : g_hrb2).at(KP), rbv, v32 || wide ? 2 : 1, nhv - nt, nt);
        }
        if (nc > 0 && !res)
            emu::launch(cgrid, b256, sm_wy<E>(KP, VP), [&] {
                ((WyFn)f.wy)(k.data(), ptr(rk), v.data(), bt.data(), ptr(gl), w.data(), u.data(), tm.data(), g2.data(), p.bounds.data(),
                             p.off.data(), p.seq.data(), H, HV, K, V, VP, nch);
            });
        // the forward state pass's two-blocks-per-SM entries (one stage): DELTA_HVAR=b2 / v32b2,
        // else dispatch::delta::h_policy's rule at 132 SMs (b2 where 64-column blocks fill them)
        const char* hv = getenv("DELTA_HVAR");
        const bool lab = hv && f.h2 && (!std::strcmp(hv, "b2") || !std::strcmp(hv, "v32b2"));
        const bool two = lab || (!getenv("DELTA_BV") && f.h2 && (VP / 64) * d.N * HV >= 132);
        const int bv = two ? (lab && std::strcmp(hv, "b2") ? 32 : 64) : h_bv<E>(VP, d.N * HV);
        void* hf = two ? (bv == 32 ? f.h32b2 : f.h2) : (bv == 32 ? f.h32 : f.h);
        if (!res)
            emu::launch(dim3{(unsigned)(VP / bv), (unsigned)(d.N * HV), 1}, b256, sm_h<E>(KP, bv, two ? 1 : h_stages<E>(KP)), [&] {
            ((HFn)hf)(w.data(), u.data(), k.data(), ptr(rk), g2.data(), ptr(h0), hs.data(), vn.data(), ht.data(), p.bounds.data(),
                       p.off.data(), H, HV, K, V, VP, nch);
        });
        out.ht = back(split(ht, 1));
        if (!want_o) return;
        auto o = poison<E>(rows * HV * V);
        typedef void (*OFn)(const E*, const E*, const float*, const float*, const E*, const E*, const float*, E*, const long long*,
                            const long long*, const int*, int, int, int, int, int, float, long long);
        if (nc > 0)
            emu::launch(cgrid, b256, sm_o<E>(KP), [&] {
                ((OFn)f.o)(q.data(), k.data(), ptr(rq), ptr(rk), hs.data(), vn.data(), g2.data(), o.data(), p.bounds.data(), p.off.data(),
                           p.seq.data(), H, HV, K, V, VP, scale, nch);
            });
        out.o = back(o);
    }
    Out chunk_fwd() {
        Out out;
        chunk_prep();
        chunk_fwd_core(out, true);
        return out;
    }
    Out chunk_bwd() {
        Out out;
        chunk_prep();
        chunk_fwd_core(out, true, fo_mode());
        if (fo_mode() == 2) {
            // forward-only: hs and v_new unwritten; the backward recomputes them
            Out re;
            chunk_fwd_core(re, false);
        }
        const long long nc = p.nc;
        const ChunkFns& f = fns();
        dim3 cgrid{(unsigned)nc, (unsigned)HV, 1}, b256{256, 1, 1};
        // the state-gradient pass (hb_fused; a fused pass has no delta_dvl launch, whose output
        // stays poisoned and is passed as null). After the residual forward the fused pass and
        // the 32-column one run their residual forms (delta_h_bwd_rdv2 / delta_h_bwd_rv32: T, k
        // and beta for w, which stays poisoned), as src/delta/ops.rs does; DELTA_HBRES=0 runs
        // the WY pass for w and delta_h_bwd_dv2 / delta_h_bwd_v32 instead.
        const char* hbvar = getenv("DELTA_HBVAR");
        const bool rd1 = sizeof(E) == 2 && g_hbrd1.count(KP) && hbvar && !std::strcmp(hbvar, "rdv1");
        const bool rs1 = rd1 || (sizeof(E) == 2 && g_hbrs1.count(KP) && hbvar && !std::strcmp(hbvar, "rs1"));
        const int bv0 = rs1 ? 64 : h_bv<E>(VP, d.N * HV);
        const bool fd = hb_fused() || rd1;
        const bool hres = res_fwd && (rs1 || ((fd || (bv0 == 32 && rv32_fill())) && g_hbr.count(KP))) &&
                          !(getenv("DELTA_HBRES") && !std::strcmp(getenv("DELTA_HBRES"), "0"));
        if (res_fwd && !hres && nc > 0) {
            // the residual forward left w unformed: the WY pass for it (T, u again)
            typedef void (*WyFn)(const E*, const float*, const E*, const float*, const float*, E*, float*, E*, float*, const long long*,
                                 const long long*, const int*, int, int, int, int, int, long long);
            emu::launch(cgrid, b256, sm_wy<E>(KP, VP), [&] {
                ((WyFn)f.wy)(k.data(), ptr(rk), v.data(), bt.data(), ptr(gl), w.data(), u.data(), tm.data(), g2.data(), p.bounds.data(),
                             p.off.data(), p.seq.data(), H, HV, K, V, VP, nch);
            });
        }
        auto dvl = poison<float>(nc * HV * 64 * VP);
        typedef void (*DvlFn)(const E*, const E*, const float*, const float*, const E*, const float*, float*, const long long*,
                              const long long*, const int*, int, int, int, int, int, float);
        if (nc > 0 && !fd)
            emu::launch(cgrid, b256, sm_dvl<E>(KP), [&] {
                ((DvlFn)f.dvl)(q.data(), k.data(), ptr(rq), ptr(rk), d_o.data(), g2.data(), dvl.data(), p.bounds.data(), p.off.data(),
                               p.seq.data(), H, HV, K, V, VP, scale);
            });
        auto dhs = poison<E>(nc * HV * KP * VP), du = poison<E>(SP * nc * HV * 64 * VP);
        auto dh0 = poison<float>(h0.empty() ? 0 : h0.size());
        typedef void (*HbFn)(const E*, const E*, const float*, const float*, const E*, const E*, const float*, const float*, const float*,
                             E*, E*, float*, const long long*, const long long*, int, int, int, int, int, float, long long);
        const int bv = fd ? 64 : bv0;
        void* hbf = fd ? f.hbd2 : (bv == 32 ? f.hb32 : f.hb);
        typedef void (*HbrFn)(const E*, const E*, const float*, const float*, const E*, const E*, const float*, const float*,
                              const float*, E*, E*, float*, const long long*, const long long*, int, int, int, int, int, float, long long,
                              const E*, const float*, int);
        if (hres) {
            const int nhv = d.N * HV;
            const bool tail = fd && !rd1 && !rs1 && hbvar && !std::strcmp(hbvar, "tail");
            const int nt = tail ? std::max(1, nhv / 2) : 0;  // the heads on 32 columns
            auto hbr = [&](void* fn, int bw, int nh0, int nhs, size_t extra) {
                emu::launch(dim3{(unsigned)(VP / bw), (unsigned)nhs, 1}, b256, sm_hbr(KP, fd, bw, rs1 ? 1 : 2) + extra, [&] {
                    ((HbrFn)fn)(q.data(), k.data(), ptr(rq), ptr(rk), nullptr, d_o.data(), fd ? nullptr : dvl.data(), g2.data(), dht.data(),
                                dhs.data(), du.data(), ptr(dh0), p.bounds.data(), p.off.data(), H, HV, K, V, VP, scale, nch, tm.data(),
                                bt.data(), nh0);
                });
            };
            if (rd1 && getenv("DELTA_BP") && !std::strcmp(getenv("DELTA_BP"), "1") && nc > 0) {
                // DELTA_BP=1 (dispatch::delta::hb_pm): P from delta_pm, read
                // by delta_h_bwd_rdvp1 (w's buffer, as src/delta/ops.rs)
                typedef void (*HbrpFn)(const E*, const E*, const float*, const float*, const E*, const E*, const float*, const float*,
                                       const float*, E*, E*, float*, const long long*, const long long*, int, int, int, int, int, float,
                                       long long, const E*, const float*, int, const E*);
                run_pm(w.data());
                emu::launch(dim3{(unsigned)(VP / 64), (unsigned)nhv, 1}, b256, sm_hbr(KP, true, 64, 1), [&] {
                    ((HbrpFn)g_hbrp1.at(KP))(q.data(), k.data(), ptr(rq), ptr(rk), nullptr, d_o.data(), nullptr, g2.data(), dht.data(),
                                             dhs.data(), du.data(), ptr(dh0), p.bounds.data(), p.off.data(), H, HV, K, V, VP, scale, nch,
                                             tm.data(), bt.data(), 0, w.data());
                });
            } else {
                const bool wg = hb_wg() && fd && !rd1 && !rs1 && KP == 128;
                hbr(wg ? (void*)delta_h_bwd_wg_rdv2_k128_bf16 : (rd1 ? g_hbrd1 : rs1 ? g_hbrs1 : fd ? g_hbr : g_hbr32).at(KP), bv, 0,
                    nhv - nt, wg ? 1024 : 0);
            }
            if (nt > 0) hbr(g_hbrt.at(KP), 32, nhv - nt, nt, 0);
        } else {
            emu::launch(dim3{(unsigned)(VP / bv), (unsigned)(d.N * HV), 1}, b256, sm_hb<E>(KP, bv, fd, h_stages<E>(KP)), [&] {
                ((HbFn)hbf)(q.data(), k.data(), ptr(rq), ptr(rk), w.data(), d_o.data(), fd ? nullptr : dvl.data(), g2.data(), dht.data(),
                            dhs.data(), du.data(), ptr(dh0), p.bounds.data(), p.off.data(), H, HV, K, V, VP, scale, nch);
            });
        }
        const int KZ = KP / kw<E>(KP);
        auto dqp = poison<float>(rows * HV * K), dkp = poison<float>(rows * HV * K);
        auto dgp = poison<float>(KZ * nc * HV * 64);
        typedef void (*DqkFn)(const E*, const E*, const float*, const float*, const E*, const E*, const E*, const E*, const float*,
                               float*, float*, float*, const long long*, const long long*, const int*, int, int, int, int, int, float,
                               long long);
        if (nc > 0)
            emu::launch(dim3{(unsigned)nc, (unsigned)HV, (unsigned)KZ}, b256, dq_wg<E>(KP) ? sm_dqk_wg(KP) : sm_dqk<E>(KP, dq_bufs<E>(KP)), [&] {
                ((DqkFn)(dq_wg<E>(KP) ? dq_wg_entry(KP) : dq_bufs<E>(KP) == 1 && KP > 128 ? g_dqs1[KP] : f.dqk))(q.data(), k.data(), ptr(rq), ptr(rk), d_o.data(), vn.data(), hs.data(), dhs.data(), g2.data(),
                                 dqp.data(), dkp.data(), dgp.data(), p.bounds.data(), p.off.data(), p.seq.data(), H, HV, K, V,
                                 VP, scale, nch);
            });
        auto dv = poison<float>(rows * HV * V), dbp = poison<float>(rows * HV), dgl = poison<float>(rows * HV);
        typedef void (*WybFn)(const E*, const float*, const E*, const float*, const E*, const E*, const E*, const float*, const float*,
                              float*, float*, float*, float*, const long long*, const long long*, const int*, int, int, int, int, int, int,
                              long long);
        // DELTA_WBVAR=vb2 (dispatch::delta::wy_bwd_name): bf16 KP = 256 on the
        // two-buffer V-tile loop
        const bool vb2 = sizeof(E) == 2 && KP == 256 && getenv("DELTA_WBVAR") && !std::strcmp(getenv("DELTA_WBVAR"), "vb2");
        // DELTA_WM=1 (dispatch's bf16 default; the lab's wm=0 turns it off): dk's dAb tile P on one plane, at KP 128 and on the KP = 256
        // two-buffer entry
        const bool wm1 = sizeof(E) == 2 && getenv("DELTA_WM") && !std::strcmp(getenv("DELTA_WM"), "1");
        void* wyb = vb2 ? (wm1 ? (void*)delta_wy_bwd_vb2_m1_k256_bf16 : (void*)delta_wy_bwd_vb2_k256_bf16)
                        : (wm1 && KP == 128 ? (void*)delta_wy_bwd_m1_k128_bf16 : f.wyb);
        // DELTA_WW=1 (with DELTA_WM=1; dispatch's default on sm_90a, the lab's ww=0 turns it
        // off): dw on warpgroup products at KP 128, its tiles swizzled (1024 bytes more for
        // their alignment)
        const bool ww = wm1 && KP == 128 && getenv("DELTA_WW") && !std::strcmp(getenv("DELTA_WW"), "1");
        if (ww) wyb = (void*)delta_wy_bwd_wg_m1_k128_bf16;
        if (nc > 0)
            emu::launch(cgrid, b256, sm_wyb<E>(KP, VP) + (ww ? 1024 : 0), [&] {
                ((WybFn)wyb)(k.data(), ptr(rk), v.data(), bt.data(), tm.data(), hs.data(), du.data(), g2.data(), dgp.data(), dkp.data(),
                               dv.data(), dbp.data(), dgl.data(), p.bounds.data(), p.off.data(), p.seq.data(), H, HV, K, V, VP, KZ, nch);
            });
        out.dv = back(dv);
        finalize(out, dqp, dkp, dbp, dgl, 1, dh0, HV == H && !l2);
        return out;
    }
};

template <class E>
static void run_case(const Data& d0, const char* dt, double tol) {
    const Data d = rounded<E>(d0);
    const Out ref = oracle(d);
    auto want = [&](const char* p) { return !g_path_filter || std::strstr(p, g_path_filter); };
    Run<E> r(d);
    if (want("recurrent")) report(d.c.name, "recurrent", dt, r.rec_bwd(), ref, tol, true);
    if (want("decode")) report(d.c.name, "decode", dt, r.decode(), ref, tol, false);
    const int max = sizeof(E) == 2 ? 256 : 128;
    // bf16 value heads up to 512 unsplit (dispatch::delta::chunk_v_max); DELTA_VMAX=256 (the
    // lab's vs=split) splits those above 256
    const int vmax = sizeof(E) == 2 ? (getenv("DELTA_VMAX") ? std::atoi(getenv("DELTA_VMAX")) : 512) : max;
    const bool chunk_ok = r.KP <= max && r.VP <= vmax;
    if (want("chunk") && chunk_ok) report(d.c.name, "chunk", dt, r.chunk_bwd(), ref, tol, true);
    // value sub-heads (dispatch::delta::value_split): the fewest that divide V and fit
    int vs = 1;
    if (d.c.V > vmax && d.c.K <= max)
        for (int s = 2; s <= d.c.V / 32 && vs == 1; ++s)
            if (d.c.V % s == 0 && d.c.V / s <= vmax) vs = s;
    if (want("vsplit") && vs > 1) {
        Run<E> rs(d, vs);
        report(d.c.name, "chunk-vsplit", dt, rs.chunk_bwd(), ref, tol, true);
    }
}

int main(int argc, char** argv) {
    const char* filt = argc > 1 ? argv[1] : nullptr;
    g_path_filter = argc > 2 ? argv[2] : nullptr;
    std::vector<Case> cases = {
        {"delta-T65-h0", 2, 65, 2, 2, 60, 100, 0, false, false, false, true, {}, 1},
        {"gdn-T130-gs1-h0", 2, 130, 2, 2, 60, 100, 1, false, false, false, true, {}, 1},
        {"gdn-T15-gs0.1", 2, 15, 2, 2, 60, 100, 1, false, false, false, false, {}, 0.1},
        {"delta-layer-hv4-negeig", 2, 130, 2, 4, 60, 100, 0, true, true, true, true, {}, 1},
        {"gdn-computed-varlen", 1, 365, 2, 4, 60, 100, 2, true, true, false, true, {0, 15, 15, 100, 300, 365}, 1},
        {"gdn-K128-V128-T200", 1, 200, 1, 2, 128, 128, 1, true, true, false, true, {}, 1},
        {"gdn-K256-V256-T130", 1, 130, 1, 1, 256, 256, 1, false, false, false, true, {}, 1},
        {"gdn-K192-V64-T70", 1, 70, 1, 1, 192, 64, 1, false, false, false, true, {}, 1},
        {"delta-empty-first", 1, 16, 2, 2, 60, 100, 1, false, false, false, false, {0, 0, 16}, 10},
        {"gdn-T1-gs1-h0", 2, 1, 2, 2, 60, 100, 1, false, false, false, true, {}, 1},
        {"gdn-T1000-gs0.1", 1, 1000, 2, 2, 60, 100, 1, false, false, false, true, {}, 0.1},
        {"delta-layer-V320", 2, 130, 2, 4, 60, 320, 0, true, true, false, true, {}, 1},
        {"gdn-computed-V512-varlen", 1, 365, 2, 4, 60, 512, 2, true, true, false, true, {0, 15, 15, 100, 300, 365}, 1},
        // one V tile (VP = 64) at KP <= 128 (last: the cases above keep their seeds)
        {"gdn-K100-V48-T130", 1, 130, 2, 2, 100, 48, 1, true, false, false, true, {}, 1},
        // fla's Gated DeltaNet head (head_dim 256, expand_v 2)
        {"gdn-K256-V512-T130", 1, 130, 1, 1, 256, 512, 1, false, false, false, true, {}, 1},
        // wider than the unsplit chunk path: value sub-heads (bf16 too)
        {"delta-layer-V640", 2, 130, 2, 4, 60, 640, 0, true, true, false, true, {}, 1},
        // KP = 256 with an odd count of V tiles (5) and with one: the WY backward's tile buffers
        {"gdn-K256-V320-T70", 1, 70, 1, 1, 256, 320, 1, false, false, false, true, {}, 1},
        {"gdn-K256-V40-T70", 1, 70, 1, 1, 256, 40, 1, false, false, false, true, {}, 1},
    };
    int i = 0;
    for (auto& c : cases) {
        ++i;
        if (filt && !std::strstr(c.name.c_str(), filt)) continue;
        const Data d = make(c, 1000 + i);
        if (getenv("DROUND")) {
            run_case<float>(rounded<unsigned short>(d), "f32r", 5e-3);
            continue;
        }
        // DELTA_DTYPE=bf16 / f32: one storage dtype only (the lab variants are bf16 entries)
        const char* dt = getenv("DELTA_DTYPE");
        if (!dt || !std::strcmp(dt, "f32")) run_case<float>(d, "f32", 1e-4);
        if (!dt || !std::strcmp(dt, "bf16")) run_case<unsigned short>(d, "bf16", 5e-3);
    }
    std::printf("%d failed; %lld context switches\n", g_fail, emu::g_switches);
    return g_fail ? 1 : 0;
}
