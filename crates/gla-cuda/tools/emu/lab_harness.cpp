// The lab kernels (kernels/lab/) on the CPU emulator (README.md; built by `build.py --lab`):
// lab_wgmma_gemm_bf16 (C = A B^T on common/wgmma.cuh's m64n128k16) with B K-major and MN-major,
// A from shared memory and from registers, and lab_wgmma_gemm64_bf16 (m64n64k16) with A and B
// each K-major or MN-major, against the f64 product of the same bf16 values. Prints each
// relative RMSE; exits non-zero when one is above 1e-5 (f32 sums of exact bf16 products).
#include <cmath>

static int lab_fail = 0;

// A [M, K] and B [N, K] uniform on [-1, 1) in bf16, their transposes A^T [K, M] and B^T [K, N],
// and the f64 product A B^T
struct LabGemm {
    int M, N, K;
    std::vector<bf16_t> a, at, b, bt;
    std::vector<double> ref;
    LabGemm(int M_, int N_, int K_, uint64_t seed) : M(M_), N(N_), K(K_) {
        uint64_t s = seed;
        auto rnd = [&]() {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            return (float)((s >> 40) & 0xffff) / 32768.f - 1.f;
        };
        a.resize((size_t)M * K);
        b.resize((size_t)N * K);
        for (auto& x : a) x = f2bf(rnd());
        for (auto& x : b) x = f2bf(rnd());
        at = transpose(a, M, K);
        bt = transpose(b, N, K);
        ref.resize((size_t)M * N);
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                double acc = 0;
                for (int k = 0; k < K; ++k) acc += (double)emu::bf2f(a[(size_t)m * K + k]) * emu::bf2f(b[(size_t)n * K + k]);
                ref[(size_t)m * N + n] = acc;
            }
    }
    static std::vector<bf16_t> transpose(const std::vector<bf16_t>& x, int R, int C) {
        std::vector<bf16_t> y(x.size());
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) y[(size_t)c * R + r] = x[(size_t)r * C + c];
        return y;
    }
    // C's relative RMSE against the product, reported under `what`
    void check(const std::vector<float>& c, const char* what) const {
        double num = 0, den = 0;
        for (size_t i = 0; i < c.size(); ++i) {
            const double d = (double)c[i] - ref[i];
            num += d * d;
            den += ref[i] * ref[i];
        }
        const double e = std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-300));
        const bool ok = e <= 1e-5;
        std::printf("  %-34s %.3e %s\n", what, e, ok ? "ok" : "FAIL");
        lab_fail += !ok;
    }
};

static void lab_gemm(int M, int N, int K, uint64_t seed) {
    const LabGemm g(M, N, K, seed);
    for (int v = 0; v < 4; ++v) {
        const int tb = v & 1, ra = v >> 1;
        std::vector<float> c((size_t)M * N, NAN);
        emu::launch(dim3{(unsigned)(N / 128), (unsigned)(M / 64), 1}, dim3{128, 1, 1}, 1024 + 8192 + 16384, [&] {
            lab_wgmma_gemm_bf16(g.a.data(), tb ? g.bt.data() : g.b.data(), c.data(), M, N, K, tb, ra, 8192, 1024);
        });
        char what[96];
        std::snprintf(what, sizeof what, "gemm %dx%dx%d B %s, A %s", M, N, K, tb ? "MN-major" : "K-major", ra ? "regs" : "smem");
        g.check(c, what);
    }
}

// lab_wgmma_gemm64_bf16: m64n64k16 with A and B each K-major or MN-major
// (n32: the same as two m64n32k16 halves, B's second half 32 rows or 64 bytes into its tile)
static void lab_gemm64(int M, int N, int K, uint64_t seed) {
    const LabGemm g(M, N, K, seed);
    for (int v = 0; v < 8; ++v) {
        const int ta = v & 1, tb = (v >> 1) & 1, n32 = v >> 2;
        std::vector<float> c((size_t)M * N, NAN);
        emu::launch(dim3{(unsigned)(N / 64), (unsigned)(M / 64), 1}, dim3{128, 1, 1}, 1024 + 8192 + 8192, [&] {
            lab_wgmma_gemm64_bf16(ta ? g.at.data() : g.a.data(), tb ? g.bt.data() : g.b.data(), c.data(), M, N, K, ta, tb, n32);
        });
        char what[96];
        std::snprintf(what, sizeof what, "gemm%s %dx%dx%d A %s, B %s", n32 ? "32" : "64", M, N, K, ta ? "MN" : "K", tb ? "MN" : "K");
        g.check(c, what);
    }
}

int main() {
    lab_gemm64(64, 64, 64, 3);
    lab_gemm64(128, 192, 128, 4);
    lab_gemm(64, 128, 64, 1);
    lab_gemm(128, 256, 192, 2);
    std::printf("%d failed\n", lab_fail);
    return lab_fail ? 1 : 0;
}
