// The language model's nn kernels on the CPU emulator (README.md; built by `build.py --nn`)
// against host references ported from gla-model's ops.rs: DeltaNet's sum norm, the elu + 1
// feature map, the gated norm with the swish and the sigmoid gate (the per-column kernels and
// the lane-vectorized `_v{NG}` ones), RMSNorm's backward (both forms), the short conv with and
// without SiLU (forward, backward, and the decode step against the forward with a cache; the
// per-element kernels and the lane-vectorized `conv_*_w{W}` ones, with a cache, at every width),
// SwiGLU and the f32 -> bf16 cast (their 8-element paths and the per-element ones), and the
// optimizer's one-launch AdamW over a segmented arena against a host step per parameter.
// Prints each output's relative RMSE; exits non-zero when one is above its bound (bf16 outputs
// 5e-3, f32 ones 1e-5; the decode step bitwise).
#include <random>
static std::mt19937 rng(7);
static float urand() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }
static std::vector<bf16_t> bf(const std::vector<float>& x) { std::vector<bf16_t> y(x.size()); for (size_t i = 0; i < x.size(); ++i) y[i] = from_f32<bf16_t>(x[i]); return y; }
static std::vector<float> fl(const std::vector<bf16_t>& x) { std::vector<float> y(x.size()); for (size_t i = 0; i < x.size(); ++i) y[i] = to_f32(x[i]); return y; }
static double rel(const std::vector<float>& a, const std::vector<float>& b) {
    double e = 0, n = 0; for (size_t i = 0; i < a.size(); ++i) { e += (double)(a[i] - b[i]) * (a[i] - b[i]); n += (double)b[i] * b[i]; }
    return std::sqrt(e / std::max(n, 1e-30));
}
static int fails = 0;
static void report(const char* what, double err, double tol) { std::printf("%-34s %.3e %s\n", what, err, err <= tol ? "ok" : "FAIL"); if (!(err <= tol)) ++fails; }
static dim3 flat(long n) { return dim3{(unsigned)std::min<long>((n + 255) / 256, 64), 1, 1}; }
static const dim3 B256{256, 1, 1};
static int col_gy(long rows) { return (int)std::min<long>(std::max<long>((rows + 511) / 512, 1), 1024); }

int main() {
    // ---- sum norm
    { long rows = 37; int k = 48;
      std::vector<float> x(rows * k); for (auto& v : x) v = urand();
      for (int j = 0; j < k; ++j) x[5 * k + j] = 0.f; // a zero row: below the clamp
      x[6 * k + 3] = 1e-8f; for (int j = 0; j < k; ++j) if (j != 3) x[6 * k + j] = 0.f;
      auto xb = bf(x); auto xf = fl(xb);
      std::vector<bf16_t> y(rows * k);
      emu::launch(flat(rows * 32), B256, 0, [&] { sum_norm_fwd(y.data(), xb.data(), rows, k); });
      std::vector<float> want(rows * k), d(rows * k), dw(rows * k);
      for (long r = 0; r < rows; ++r) { float s = 0; for (int j = 0; j < k; ++j) s += std::fabs(xf[r * k + j]); s = std::max(s, 1e-6f);
          for (int j = 0; j < k; ++j) want[r * k + j] = xf[r * k + j] / s; }
      report("sum_norm_fwd", rel(fl(y), want), 5e-3);
      for (auto& v : d) v = urand();
      for (long r = 0; r < rows; ++r) { float l1 = 0, dot = 0; for (int j = 0; j < k; ++j) { l1 += std::fabs(xf[r*k+j]); dot += d[r*k+j] * xf[r*k+j]; }
          for (int j = 0; j < k; ++j) { float xv = xf[r*k+j]; float sg = xv > 0 ? 1.f : (xv < 0 ? -1.f : 0.f);
              dw[r*k+j] = l1 > 1e-6f ? (d[r*k+j] - sg * dot / l1) / l1 : d[r*k+j] / 1e-6f; } }
      emu::launch(flat(rows * 32), B256, 0, [&] { sum_norm_bwd(d.data(), xb.data(), rows, k); });
      report("sum_norm_bwd", rel(d, dw), 1e-5);
    }
    // ---- elu + 1
    { long n = 1000; std::vector<float> x(n); for (auto& v : x) v = 3 * urand(); auto xb = bf(x); auto xf = fl(xb);
      std::vector<bf16_t> y(n); std::vector<float> d(n, 1.f), want(n), dwant(n);
      emu::launch(flat(n), B256, 0, [&] { feature_map_fwd(y.data(), xb.data(), n, 10); });
      emu::launch(flat(n), B256, 0, [&] { feature_map_bwd(d.data(), xb.data(), n, 10); });
      for (long i = 0; i < n; ++i) { want[i] = xf[i] > 0 ? xf[i] + 1 : std::exp(xf[i]); dwant[i] = xf[i] > 0 ? 1 : std::exp(xf[i]); }
      report("feature_map elu+1 fwd", rel(fl(y), want), 5e-3); report("feature_map elu+1 bwd", rel(d, dwant), 1e-6);
    }
    // ---- gated norm, sigmoid and swish gate, vs ops.rs
    for (int act = 0; act < 2; ++act) {
      long rows = 40; int v = 48; float eps = 1e-6f;
      std::vector<float> o(rows * v), g(rows * v), w(v), dy(rows * v);
      for (auto& x : o) x = urand(); for (auto& x : g) x = 2 * urand(); for (auto& x : w) x = 1 + 0.3f * urand(); for (auto& x : dy) x = urand();
      auto ob = bf(o), gb = bf(g); auto of = fl(ob), gf = fl(gb);
      auto ga = [&](float x) { float s = 1 / (1 + std::exp(-x)); return act ? s : x * s; };
      auto dga = [&](float x) { float s = 1 / (1 + std::exp(-x)); return act ? s * (1 - s) : s * (1 + x * (1 - s)); };
      std::vector<bf16_t> y(rows * v), d_o(rows * v), dg(rows * v); std::vector<float> rstd(rows);
      emu::launch(flat(rows * 32), B256, 0, [&] { gated_norm_fwd(y.data(), rstd.data(), ob.data(), gb.data(), w.data(), rows, v, eps, act); });
      std::vector<float> wy(rows * v), wdo(rows * v), wdg(rows * v), wdw(v, 0.f), rs(rows);
      for (long r = 0; r < rows; ++r) { float s = 0; for (int j = 0; j < v; ++j) s += of[r*v+j] * of[r*v+j]; rs[r] = 1 / std::sqrt(s / v + eps);
          float dot = 0;
          for (int j = 0; j < v; ++j) { float gt = ga(gf[r*v+j]); wy[r*v+j] = of[r*v+j] * rs[r] * w[j] * gt;
              wdg[r*v+j] = dy[r*v+j] * of[r*v+j] * rs[r] * w[j] * dga(gf[r*v+j]); wdo[r*v+j] = dy[r*v+j] * w[j] * gt; dot += wdo[r*v+j] * of[r*v+j];
              wdw[j] += dy[r*v+j] * of[r*v+j] * rs[r] * gt; }
          float c = rs[r] * rs[r] * rs[r] * dot / v;
          for (int j = 0; j < v; ++j) wdo[r*v+j] = rs[r] * wdo[r*v+j] - c * of[r*v+j]; }
      report(act ? "gated_norm_fwd sigmoid" : "gated_norm_fwd swish", rel(fl(y), wy), 5e-3);
      emu::launch(flat(rows * 32), B256, 0, [&] { gated_norm_bwd_dx(d_o.data(), dg.data(), dy.data(), ob.data(), gb.data(), rstd.data(), w.data(), rows, v, act); });
      report(act ? "gated_norm_bwd d_o sigmoid" : "gated_norm_bwd d_o swish", rel(fl(d_o), wdo), 5e-3);
      report(act ? "gated_norm_bwd dg sigmoid" : "gated_norm_bwd dg swish", rel(fl(dg), wdg), 5e-3);
      int gy = col_gy(rows); std::vector<float> part(gy * v), dwv(v, 0.f);
      emu::launch(dim3{(unsigned)((v + 31) / 32), (unsigned)gy, 1}, dim3{32, 8, 1}, 0, [&] { gated_norm_bwd_dw(part.data(), dy.data(), ob.data(), gb.data(), rstd.data(), rows, v, act); });
      emu::launch(flat(v), B256, 0, [&] { col_finalize(dwv.data(), part.data(), gy, v); });
      report(act ? "gated_norm_bwd dw sigmoid" : "gated_norm_bwd dw swish", rel(dwv, wdw), 1e-5);
    }
    // ---- conv with and without silu, forward, backward, decode
    for (int silu = 0; silu < 2; ++silu) {
      int nb = 2, t = 9, c = 40, W = 4; long n = (long)nb * t;
      std::vector<float> x(n * c), w(c * W), dy(n * c), cache(nb * c * W);
      for (auto& v : x) v = urand(); for (auto& v : w) v = urand(); for (auto& v : dy) v = urand(); for (auto& v : cache) v = urand();
      auto xb = bf(x); auto xf = fl(xb);
      std::vector<bf16_t> y(n * c), dx(n * c);
      emu::launch(flat(n * c), B256, 0, [&] { conv_fwd(y.data(), xb.data(), w.data(), nullptr, n, t, c, W, silu); });
      std::vector<float> wy(n * c), wpre(n * c), wdx(n * c, 0.f), wdw(c * W, 0.f);
      auto sw = [](float a) { return a / (1 + std::exp(-a)); };
      for (int s = 0; s < nb; ++s) for (int p = 0; p < t; ++p) for (int ch = 0; ch < c; ++ch) {
          float acc = 0; for (int j = 0; j < W; ++j) { int src = p + j - (W - 1); if (src >= 0) acc += w[ch*W+j] * xf[((long)s*t+src)*c+ch]; }
          wpre[((long)s*t+p)*c+ch] = acc; wy[((long)s*t+p)*c+ch] = silu ? sw(acc) : acc; }
      report(silu ? "conv_fwd silu" : "conv_fwd no silu", rel(fl(y), wy), 5e-3);
      for (int s = 0; s < nb; ++s) for (int p = 0; p < t; ++p) for (int ch = 0; ch < c; ++ch) {
          long i = ((long)s*t+p)*c+ch; float a = wpre[i], sg = 1 / (1 + std::exp(-a));
          float dp = silu ? dy[i] * sg * (1 + a * (1 - sg)) : dy[i];
          for (int j = 0; j < W; ++j) { int src = p + j - (W - 1); if (src >= 0) { wdx[((long)s*t+src)*c+ch] += w[ch*W+j] * dp; wdw[ch*W+j] += dp * xf[((long)s*t+src)*c+ch]; } } }
      emu::launch(flat(n * c), B256, 0, [&] { conv_bwd_dx(dx.data(), dy.data(), xb.data(), w.data(), n, t, c, W, silu); });
      report(silu ? "conv_bwd_dx silu" : "conv_bwd_dx no silu", rel(fl(dx), wdx), 5e-3);
      int gy = col_gy(n); std::vector<float> part(gy * c * W), dwv(c * W, 0.f);
      emu::launch(dim3{(unsigned)((c + 31) / 32), (unsigned)gy, 1}, dim3{32, 8, 1}, 0, [&] { conv_bwd_dw(part.data(), dy.data(), xb.data(), w.data(), n, t, c, W, silu); });
      emu::launch(flat(c * W), B256, 0, [&] { col_finalize(dwv.data(), part.data(), gy, c * W); });
      report(silu ? "conv_bwd_dw silu" : "conv_bwd_dw no silu", rel(dwv, wdw), 1e-5);
      // decode one token from each sequence's cache == conv_fwd with the batch cache, t = 1
      std::vector<float> c1 = cache, c2 = cache; std::vector<bf16_t> y1(nb * c), y2(nb * c);
      std::vector<bf16_t> x1(xb.begin(), xb.begin() + nb * c);
      emu::launch(flat(nb * c), B256, 0, [&] { conv_fwd(y1.data(), x1.data(), w.data(), c1.data(), nb, 1, c, W, silu); });
      std::vector<unsigned long long> tab(nb); for (int s = 0; s < nb; ++s) tab[s] = (unsigned long long)(c2.data() + (long)s * c * W);
      emu::launch(flat(nb * c), B256, 0, [&] { conv_decode(y2.data(), x1.data(), w.data(), tab.data(), nb, c, W, silu); });
      report(silu ? "conv_decode == conv_fwd silu" : "conv_decode == conv_fwd no silu", rel(fl(y2), fl(y1)), 0);
    }
    // ---- the lane-vectorized conv (conv_fwd_w{W}, conv_bwd_w{W}) against the per-element kernels:
    // every width, a cache before each sequence, no SiLU, sequences shorter than the width and
    // than a warp's 16-row tile, channels off the 128-channel block, more row tiles than the grid
    struct VC { int nb, t, c, W, silu, cache, gy; };
    for (VC k : {VC{2, 37, 44, 4, 1, 0, 0}, VC{3, 3, 16, 8, 0, 1, 0}, VC{2, 40, 12, 2, 1, 1, 0}, VC{4, 9, 8, 7, 1, 0, 0},
                 VC{1, 300, 8, 1, 1, 0, 1}, VC{5, 16, 136, 6, 1, 0, 0}, VC{2, 21, 8, 3, 0, 0, 0}, VC{1, 70, 8, 5, 1, 1, 1}}) {
      const long n = (long)k.nb * k.t; const int c = k.c, W = k.W, t = k.t, silu = k.silu;
      std::vector<float> x(n * c), w(c * W), dy(n * c), cache(k.nb * c * W);
      for (auto& v : x) v = urand(); for (auto& v : w) v = urand(); for (auto& v : dy) v = urand(); for (auto& v : cache) v = urand();
      auto xb = bf(x);
      const float* cp = k.cache ? cache.data() : nullptr;
      std::vector<bf16_t> y0(n * c), y1(n * c), dx0(n * c), dx1(n * c);
      emu::launch(flat(n * c), B256, 0, [&] { conv_fwd(y0.data(), xb.data(), w.data(), cp, n, t, c, W, silu); });
      // gy 1: one block row walks every row tile (the grid-stride path)
      const int gyv = k.gy ? 1 : (int)std::min<long>((n + 127) / 128, 256);
      const dim3 grid{(unsigned)((c + 127) / 128), (unsigned)gyv, 1};
      auto fwd_w = [&] { switch (W) { case 1: conv_fwd_w1(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break; case 2: conv_fwd_w2(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break;
          case 3: conv_fwd_w3(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break; case 4: conv_fwd_w4(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break;
          case 5: conv_fwd_w5(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break; case 6: conv_fwd_w6(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break;
          case 7: conv_fwd_w7(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); break; default: conv_fwd_w8(y1.data(), xb.data(), w.data(), cp, n, t, c, silu); } };
      emu::launch(grid, B256, 0, fwd_w);
      char what[96];
      std::snprintf(what, sizeof what, "conv_fwd_w%d == conv_fwd (t %d, c %d%s)", W, t, c, k.cache ? ", cache" : "");
      report(what, rel(fl(y1), fl(y0)), 1e-2 / 256);
      int gy = col_gy(n); std::vector<float> part0(gy * c * W), dw0(c * W, 0.f), part1(gyv * c * W), dw1(c * W, 0.f);
      emu::launch(flat(n * c), B256, 0, [&] { conv_bwd_dx(dx0.data(), dy.data(), xb.data(), w.data(), n, t, c, W, silu); });
      emu::launch(dim3{(unsigned)((c + 31) / 32), (unsigned)gy, 1}, dim3{32, 8, 1}, 0, [&] { conv_bwd_dw(part0.data(), dy.data(), xb.data(), w.data(), n, t, c, W, silu); });
      emu::launch(flat(c * W), B256, 0, [&] { col_finalize(dw0.data(), part0.data(), gy, c * W); });
      auto bwd_w = [&] { switch (W) { case 1: conv_bwd_w1(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break; case 2: conv_bwd_w2(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break;
          case 3: conv_bwd_w3(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break; case 4: conv_bwd_w4(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break;
          case 5: conv_bwd_w5(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break; case 6: conv_bwd_w6(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break;
          case 7: conv_bwd_w7(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); break; default: conv_bwd_w8(dx1.data(), part1.data(), dy.data(), xb.data(), w.data(), n, t, c, silu); } };
      emu::launch(grid, B256, 0, bwd_w);
      emu::launch(flat(c * W), B256, 0, [&] { col_finalize(dw1.data(), part1.data(), gyv, c * W); });
      std::snprintf(what, sizeof what, "conv_bwd_w%d dx == conv_bwd_dx (t %d, c %d)", W, t, c);
      report(what, rel(fl(dx1), fl(dx0)), 1e-2 / 256);
      std::snprintf(what, sizeof what, "conv_bwd_w%d dw == conv_bwd_dw (t %d, c %d)", W, t, c);
      report(what, rel(dw1, dw0), 1e-6);
    }
    // ---- the lane-vectorized norms against the per-column kernels: widths that fill NG's groups
    // and widths that leave some out, a gate of each kind and none, a grid that strides
    for (int v : {128, 384, 512, 640}) for (int gate = 0; gate < 3; ++gate) {
      const long rows = v == 128 ? 700 : 45; const float eps = 1e-6f; const int act = gate == 2 ? 1 : 0;
      std::vector<float> o(rows * v), g(rows * v), w(v), dy(rows * v);
      for (auto& x : o) x = urand(); for (auto& x : g) x = 2 * urand(); for (auto& x : w) x = 1 + 0.3f * urand(); for (auto& x : dy) x = urand();
      auto ob = bf(o), gb = bf(g); const bf16_t* gp = gate ? gb.data() : nullptr;
      const int ng = v <= 128 ? 1 : v <= 256 ? 2 : v <= 512 ? 4 : 8;
      std::vector<bf16_t> y0(rows * v), y1(rows * v), do0(rows * v), do1(rows * v), dg0(rows * v), dg1(rows * v);
      std::vector<float> r0(rows), r1(rows);
      emu::launch(flat(rows * 32), B256, 0, [&] { gated_norm_fwd(y0.data(), r0.data(), ob.data(), gp, w.data(), rows, v, eps, act); });
      emu::launch(flat(rows * 32), B256, 0, [&] { switch (ng) { case 1: gated_norm_fwd_v1(y1.data(), r1.data(), ob.data(), gp, w.data(), rows, v, eps, act); break;
          case 2: gated_norm_fwd_v2(y1.data(), r1.data(), ob.data(), gp, w.data(), rows, v, eps, act); break; case 4: gated_norm_fwd_v4(y1.data(), r1.data(), ob.data(), gp, w.data(), rows, v, eps, act); break;
          default: gated_norm_fwd_v8(y1.data(), r1.data(), ob.data(), gp, w.data(), rows, v, eps, act); } });
      char what[96];
      std::snprintf(what, sizeof what, "gated_norm_fwd_v%d (v %d, gate %d)", ng, v, gate);
      report(what, rel(fl(y1), fl(y0)) + rel(r1, r0), 1e-2 / 256);
      const int gyv = v == 128 ? 3 : (int)std::min<long>((rows + 63) / 64, 256);
      int gy = col_gy(rows); std::vector<float> p0(gy * v), dw0(v, 0.f), p1(gyv * v), dw1(v, 0.f);
      emu::launch(flat(rows * 32), B256, 0, [&] { gated_norm_bwd_dx(do0.data(), gate ? dg0.data() : nullptr, dy.data(), ob.data(), gp, r0.data(), w.data(), rows, v, act); });
      emu::launch(dim3{(unsigned)((v + 31) / 32), (unsigned)gy, 1}, dim3{32, 8, 1}, 0, [&] { gated_norm_bwd_dw(p0.data(), dy.data(), ob.data(), gp, r0.data(), rows, v, act); });
      emu::launch(flat(v), B256, 0, [&] { col_finalize(dw0.data(), p0.data(), gy, v); });
      bf16_t* dgp = gate ? dg1.data() : nullptr;
      emu::launch(dim3{(unsigned)gyv, 1, 1}, B256, 0, [&] { switch (ng) { case 1: gated_norm_bwd_v1(do1.data(), dgp, p1.data(), dy.data(), ob.data(), gp, r0.data(), w.data(), rows, v, act); break;
          case 2: gated_norm_bwd_v2(do1.data(), dgp, p1.data(), dy.data(), ob.data(), gp, r0.data(), w.data(), rows, v, act); break;
          case 4: gated_norm_bwd_v4(do1.data(), dgp, p1.data(), dy.data(), ob.data(), gp, r0.data(), w.data(), rows, v, act); break;
          default: gated_norm_bwd_v8(do1.data(), dgp, p1.data(), dy.data(), ob.data(), gp, r0.data(), w.data(), rows, v, act); } });
      emu::launch(flat(v), B256, 0, [&] { col_finalize(dw1.data(), p1.data(), gyv, v); });
      std::snprintf(what, sizeof what, "gated_norm_bwd_v%d do, dg (v %d, gate %d)", ng, v, gate);
      report(what, rel(fl(do1), fl(do0)) + (gate ? rel(fl(dg1), fl(dg0)) : 0.0), 1e-2 / 256);
      std::snprintf(what, sizeof what, "gated_norm_bwd_v%d dw (v %d, gate %d)", ng, v, gate);
      report(what, rel(dw1, dw0), 1e-6);
      if (gate) continue;
      // RMSNorm's backward on the same rows (f32 x = o, dx accumulated onto a start value)
      std::vector<float> xf = fl(ob), dxa(rows * v), dxb, rs(rows), q0(gy * v), e0(v, 0.f), q1(gyv * v), e1(v, 0.f);
      for (auto& d : dxa) d = urand(); dxb = dxa;
      for (long r = 0; r < rows; ++r) { float s = 0; for (int j = 0; j < v; ++j) s += xf[r*v+j] * xf[r*v+j]; rs[r] = 1 / std::sqrt(s / v + eps); }
      emu::launch(flat(rows * 32), B256, 0, [&] { rmsnorm_bwd_dx(dxa.data(), dy.data(), xf.data(), rs.data(), w.data(), rows, v, 1); });
      emu::launch(dim3{(unsigned)((v + 31) / 32), (unsigned)gy, 1}, dim3{32, 8, 1}, 0, [&] { rmsnorm_bwd_dw(q0.data(), dy.data(), xf.data(), rs.data(), rows, v); });
      emu::launch(flat(v), B256, 0, [&] { col_finalize(e0.data(), q0.data(), gy, v); });
      emu::launch(dim3{(unsigned)gyv, 1, 1}, B256, 0, [&] { switch (ng) { case 1: rmsnorm_bwd_v1(dxb.data(), q1.data(), dy.data(), xf.data(), rs.data(), w.data(), rows, v, 1); break;
          case 2: rmsnorm_bwd_v2(dxb.data(), q1.data(), dy.data(), xf.data(), rs.data(), w.data(), rows, v, 1); break;
          case 4: rmsnorm_bwd_v4(dxb.data(), q1.data(), dy.data(), xf.data(), rs.data(), w.data(), rows, v, 1); break;
          default: rmsnorm_bwd_v8(dxb.data(), q1.data(), dy.data(), xf.data(), rs.data(), w.data(), rows, v, 1); } });
      emu::launch(flat(v), B256, 0, [&] { col_finalize(e1.data(), q1.data(), gyv, v); });
      std::snprintf(what, sizeof what, "rmsnorm_bwd_v%d dx, dw (d %d)", ng, v);
      report(what, rel(dxb, dxa) + rel(e1, e0), 1e-6);
    }
    // ---- SwiGLU and the f32 -> bf16 cast: the 8-element path (n % 8 == 0) and the per-element one
    for (long n : {4096L, 4093L}) {
      std::vector<float> a(n), b(n), dh(n), x(n);
      for (auto& v : a) v = 3 * urand(); for (auto& v : b) v = urand(); for (auto& v : dh) v = urand(); for (auto& v : x) v = 100 * urand();
      auto ab = bf(a), bb = bf(b); auto af = fl(ab), bfv = fl(bb);
      std::vector<bf16_t> h(n), da(n), db(n), y(n);
      std::vector<float> wh(n), wda(n), wdb(n), wy(n);
      for (long i = 0; i < n; ++i) {
          float s = 1 / (1 + std::exp(-af[i]));
          wh[i] = af[i] * s * bfv[i]; wdb[i] = dh[i] * af[i] * s; wda[i] = dh[i] * bfv[i] * s * (1 + af[i] * (1 - s));
          wy[i] = to_f32(from_f32<bf16_t>(x[i]));
      }
      emu::launch(flat(n), B256, 0, [&] { swiglu_fwd(h.data(), ab.data(), bb.data(), n); });
      emu::launch(flat(n), B256, 0, [&] { swiglu_bwd(da.data(), db.data(), dh.data(), ab.data(), bb.data(), n); });
      emu::launch(flat(n), B256, 0, [&] { cast_f32_bf16(y.data(), x.data(), n); });
      const char* path = n % 8 == 0 ? "8-wide" : "scalar";
      char what[96];
      std::snprintf(what, sizeof what, "swiglu_fwd (%s)", path); report(what, rel(fl(h), wh), 5e-3);
      std::snprintf(what, sizeof what, "swiglu_bwd da, db (%s)", path); report(what, rel(fl(da), wda) + rel(fl(db), wdb), 1e-2);
      std::snprintf(what, sizeof what, "cast_f32_bf16 (%s)", path); report(what, rel(fl(y), wy), 0);
    }
    // ---- the GLA gate: raw += bias (per column), gk = logsigmoid(raw) / norm (clamped or not),
    // over more elements than one grid stride (the column steps past the stride)
    for (int clamp = 0; clamp < 2; ++clamp) {
      const long n = 700; const int c = 45; const float norm = 16.f, cmin = -0.05f;
      std::vector<float> raw(n * c), bias(c); for (auto& x : raw) x = 4.f * urand(); for (auto& x : bias) x = urand();
      std::vector<float> wraw(raw), wg(n * c);
      for (long i = 0; i < n * c; ++i) { float x = raw[i] + bias[i % c]; wraw[i] = x; float ls = std::min(x, 0.f) - std::log1p(std::exp(-std::fabs(x)));
          float v = ls / norm; wg[i] = clamp ? std::max(v, cmin) : v; }
      std::vector<bf16_t> gk(n * c);
      emu::launch(flat(n * c), B256, 0, [&] { gate_fwd(gk.data(), raw.data(), bias.data(), n, c, norm, clamp, cmin); });
      report(clamp ? "gate_fwd raw clamp" : "gate_fwd raw", rel(raw, wraw), 0);
      report(clamp ? "gate_fwd gk clamp" : "gate_fwd gk", rel(fl(gk), wg), 5e-3);
    }
    // ---- AdamW over the arena in one launch (segments: parameters, each with or without the
    // weight decay), bitwise the host's step per parameter; two steps, moments carried
    { std::vector<long long> starts = {0, 7, 7 + 300, 7 + 300 + 1, 7 + 300 + 1 + 1000};
      std::vector<int> decay = {0, 1, 0, 1};
      const int nseg = 4; const long n = starts[nseg];
      std::vector<float> p(n), g(n), m(n, 0.f), v(n, 0.f);
      for (auto& x : p) x = urand();
      std::vector<float> hp = p, hm = m, hv = v;
      std::vector<bf16_t> p16(n);
      const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gscale = 0.7f;
      for (int step = 1; step <= 2; ++step) {
          for (auto& x : g) x = urand();
          const float bc1 = 1.f - std::pow(b1, (float)step), bc2 = 1.f - std::pow(b2, (float)step);
          // three blocks of 256 threads: each thread's elements cross parameter boundaries
          emu::launch(dim3{3, 1, 1}, B256, 0, [&] { adamw(p.data(), p16.data(), g.data(), m.data(), v.data(), starts.data(), decay.data(), nseg, lr, b1, b2, eps, wd, bc1, bc2, gscale); });
          for (int s = 0; s < nseg; ++s) {
              const float wds = decay[s] ? wd : 0.f;
              for (long i = starts[s]; i < starts[s + 1]; ++i) {
                  float gi = g[i] * gscale, pi = hp[i];
                  pi -= lr * wds * pi;
                  float mi = b1 * hm[i] + (1.f - b1) * gi;
                  float vi = b2 * hv[i] + (1.f - b2) * gi * gi;
                  pi -= lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
                  hm[i] = mi; hv[i] = vi; hp[i] = pi;
              }
          }
      }
      std::vector<float> p16f = fl(p16), hp16 = fl(bf(hp));
      report("adamw p, m, v (segmented)", rel(p, hp) + rel(m, hm) + rel(v, hv), 0);
      report("adamw bf16 copy", rel(p16f, hp16), 0);
    }
    std::printf("%d failed\n", fails);
    return fails != 0;
}
