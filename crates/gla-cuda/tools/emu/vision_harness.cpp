// The vision kernels (kernels/nn/vision.cu, ViG's `VisionOps`) on the CPU emulator (README.md;
// built by `build.py --vision`) against host references ported from gla-model's ops.rs ("Vision
// ops"), launched with the shapes src/backend/vision.rs gives them (flat grids, one warp per row,
// col_reduce partials + col_finalize). Prints each output's relative RMSE; exits non-zero when one
// is above its bound (bf16 outputs 5e-3, f32 ones 1e-5, pure copies bitwise).
#include <array>
#include <random>
#include <string>
static std::mt19937 rng(11);
static float urand() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }
static std::vector<bf16_t> bf(const std::vector<float>& x) { std::vector<bf16_t> y(x.size()); for (size_t i = 0; i < x.size(); ++i) y[i] = from_f32<bf16_t>(x[i]); return y; }
static std::vector<float> fl(const std::vector<bf16_t>& x) { std::vector<float> y(x.size()); for (size_t i = 0; i < x.size(); ++i) y[i] = to_f32(x[i]); return y; }
static std::vector<float> rnd(size_t n, float s = 1.f) { std::vector<float> x(n); for (auto& v : x) v = s * urand(); return x; }
static double rel(const std::vector<float>& a, const std::vector<float>& b) {
    double e = 0, n = 0; for (size_t i = 0; i < a.size(); ++i) { e += (double)(a[i] - b[i]) * (a[i] - b[i]); n += (double)b[i] * b[i]; }
    return std::sqrt(e / std::max(n, 1e-30));
}
static int fails = 0;
static void report(const std::string& what, double err, double tol) { std::printf("%-40s %.3e %s\n", what.c_str(), err, err <= tol ? "ok" : "FAIL"); if (!(err <= tol)) ++fails; }
static dim3 flat(long n) { return dim3{(unsigned)std::min<long>((n + 255) / 256, 64), 1, 1}; }
static const dim3 B256{256, 1, 1};
static int col_gy(long rows) { return (int)std::min<long>(std::max<long>((rows + 511) / 512, 1), 1024); }
static dim3 colcfg(long rows, int cols) { return dim3{(unsigned)((cols + 31) / 32), (unsigned)col_gy(rows), 1}; }
static const dim3 B32x8{32, 8, 1};

// gla-model's bicubic_taps
static std::vector<std::array<std::pair<int, float>, 4>> taps(int src, int dst) {
    const double A = -0.75;
    auto cc1 = [&](double x) { return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; };
    auto cc2 = [&](double x) { return ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; };
    double scale = (double)src / dst;
    std::vector<std::array<std::pair<int, float>, 4>> out(dst);
    for (int i = 0; i < dst; ++i) {
        double real = scale * (i + 0.5) - 0.5, base = std::floor(real), t = real - base;
        double w[4] = {cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)};
        for (int j = 0; j < 4; ++j) { long idx = std::min<long>(std::max<long>((long)base - 1 + j, 0), src - 1); out[i][j] = {(int)idx, (float)w[j]}; }
    }
    return out;
}

int main() {
    // ---- im2col / col2im, the stem's two shapes (k = p/2 + 1, s = p/2, pad 1; k 3, s 2, pad 1)
    // (k, s, c): the stem's shapes on 3 channels, and 52 channels of k = 9, whose 4212 columns are
    // past the tabulated path's 4096 (the per-element path)
    for (auto [k, s, c] : std::vector<std::array<int, 3>>{{3, 2, 3}, {5, 4, 3}, {9, 8, 3}, {3, 2, 20}, {9, 8, 52}}) {
        int b = 2, h = 13, w = 11, pad = 1;
        int ho = (h + 2 * pad - k) / s + 1, wo = (w + 2 * pad - k) / s + 1, nc = c * k * k;
        auto x = bf(rnd((size_t)b * h * w * c)); auto xf = fl(x);
        std::vector<bf16_t> cols((size_t)b * ho * wo * nc, 0x7fc0);
        emu::launch(flat(cols.size()), B256, 0, [&] { im2col_bf16(cols.data(), x.data(), b, h, w, c, k, s, pad, ho, wo); });
        std::vector<float> want(cols.size(), 0.f);
        for (int bi = 0; bi < b; ++bi) for (int oy = 0; oy < ho; ++oy) for (int ox = 0; ox < wo; ++ox) for (int ci = 0; ci < c; ++ci)
            for (int ky = 0; ky < k; ++ky) for (int kx = 0; kx < k; ++kx) {
                int y = oy * s + ky - pad, xx = ox * s + kx - pad;
                long r = ((long)bi * ho + oy) * wo + ox;
                want[r * nc + (ci * k + ky) * k + kx] = (y >= 0 && y < h && xx >= 0 && xx < w) ? xf[(((long)bi * h + y) * w + xx) * c + ci] : 0.f;
            }
        report("im2col k" + std::to_string(k) + " s" + std::to_string(s) + " c" + std::to_string(c), rel(fl(cols), want), 0);
        auto dcols = rnd(cols.size());
        std::vector<float> dx((size_t)b * h * w * c, NAN), wdx(dx.size(), 0.f);
        for (int bi = 0; bi < b; ++bi) for (int oy = 0; oy < ho; ++oy) for (int ox = 0; ox < wo; ++ox) for (int ci = 0; ci < c; ++ci)
            for (int ky = 0; ky < k; ++ky) for (int kx = 0; kx < k; ++kx) {
                int y = oy * s + ky - pad, xx = ox * s + kx - pad;
                long r = ((long)bi * ho + oy) * wo + ox;
                if (y >= 0 && y < h && xx >= 0 && xx < w) wdx[(((long)bi * h + y) * w + xx) * c + ci] += dcols[r * nc + (ci * k + ky) * k + kx];
            }
        emu::launch(flat(dx.size()), B256, 0, [&] { col2im_f32(dx.data(), dcols.data(), b, h, w, c, k, s, pad, ho, wo); });
        report("col2im k" + std::to_string(k) + " s" + std::to_string(s), rel(dx, wdx), 1e-6);
    }
    // ---- bias forward, bias gradient from a bf16 dy (partials over several row blocks)
    { long n = 1300; int c = 45;
      auto y = rnd(n * c), bias = rnd(c); auto want = y;
      for (long r = 0; r < n; ++r) for (int j = 0; j < c; ++j) want[r * c + j] += bias[j];
      emu::launch(flat(n * c), B256, 0, [&] { bias_fwd_f32(y.data(), bias.data(), n, c); });
      report("bias_fwd_f32", rel(y, want), 0);
      auto dy = bf(rnd(n * c)); auto dyf = fl(dy);
      std::vector<float> db(c, 0.5f), wdb(c, 0.5f);
      for (long r = 0; r < n; ++r) for (int j = 0; j < c; ++j) wdb[j] += dyf[r * c + j];
      int gy = col_gy(n); std::vector<float> part((size_t)gy * c);
      emu::launch(colcfg(n, c), B32x8, 0, [&] { colsum_bf16(part.data(), dy.data(), n, c); });
      emu::launch(flat(c), B256, 0, [&] { col_finalize(db.data(), part.data(), gy, c); });
      report("colsum_bf16 + col_finalize", rel(db, wdb), 1e-5);
    }
    // ---- LayerNorm
    { long n = 1100; int c = 48; float eps = 1e-6f;
      auto x = rnd(n * c, 2.f); for (long r = 0; r < n; ++r) for (int j = 0; j < c; ++j) x[r * c + j] += 0.5f * (r % 7);
      auto w = rnd(c), b = rnd(c), dy = rnd(n * c);
      std::vector<bf16_t> y(n * c); std::vector<float> st(2 * n);
      emu::launch(flat(n * 32), B256, 0, [&] { layernorm_fwd(y.data(), st.data(), x.data(), w.data(), b.data(), n, c, eps); });
      std::vector<float> wy(n * c), wst(2 * n), wdx(n * c), wdw(c, 0.f), wdb(c, 0.f);
      for (long r = 0; r < n; ++r) {
          double m = 0, v = 0; for (int j = 0; j < c; ++j) m += x[r * c + j]; m /= c;
          for (int j = 0; j < c; ++j) v += (x[r * c + j] - m) * (x[r * c + j] - m); v /= c;
          double rs = 1 / std::sqrt(v + eps); wst[2 * r] = (float)m; wst[2 * r + 1] = (float)rs;
          for (int j = 0; j < c; ++j) wy[r * c + j] = (float)((x[r * c + j] - m) * rs) * w[j] + b[j];
          double s1 = 0, s2 = 0;
          for (int j = 0; j < c; ++j) { double xh = (x[r * c + j] - m) * rs, g = dy[r * c + j] * w[j]; wdw[j] += dy[r * c + j] * xh; wdb[j] += dy[r * c + j]; s1 += g; s2 += g * xh; }
          for (int j = 0; j < c; ++j) { double xh = (x[r * c + j] - m) * rs; wdx[r * c + j] = (float)(rs * (dy[r * c + j] * w[j] - s1 / c - xh * s2 / c)); }
      }
      report("layernorm_fwd y", rel(fl(y), wy), 5e-3);
      report("layernorm_fwd stats", rel(st, wst), 1e-5);
      std::vector<float> dx(n * c, NAN);
      emu::launch(flat(n * 32), B256, 0, [&] { layernorm_bwd_dx(dx.data(), dy.data(), x.data(), st.data(), w.data(), n, c); });
      report("layernorm_bwd_dx", rel(dx, wdx), 1e-5);
      int gy = col_gy(n); std::vector<float> part(2 * (size_t)gy * c), dw(c, 0.f), db(c, 0.f);
      emu::launch(colcfg(n, c), B32x8, 0, [&] { layernorm_bwd_dw(part.data(), dy.data(), x.data(), st.data(), n, c); });
      emu::launch(flat(c), B256, 0, [&] { col_finalize(dw.data(), part.data(), gy, c); });
      emu::launch(flat(c), B256, 0, [&] { col_finalize(db.data(), part.data() + (size_t)gy * c, gy, c); });
      report("layernorm_bwd_dw", rel(dw, wdw), 1e-5);
      report("layernorm_bwd_db", rel(db, wdb), 1e-5);
    }
    // ---- 3x3 depthwise conv: C % 8 == 0 (8-channel groups; taps staged in shared memory up to
    // 768 channels, read from the weight beyond) and not (one channel per thread)
    for (int c : {40, 12, 776}) { int b = c > 100 ? 1 : 3, h = c > 100 ? 4 : 9, w = c > 100 ? 5 : 14; long n = (long)b * h * w;
      const std::string cs = " c" + std::to_string(c);
      auto x = bf(rnd(n * c)); auto xf = fl(x); auto wt = rnd(c * 9), dy = rnd(n * c);
      std::vector<bf16_t> y(n * c); std::vector<float> wy(n * c, 0.f), wdx(n * c, 0.f), wdw(c * 9, 0.f);
      for (int bi = 0; bi < b; ++bi) for (int py = 0; py < h; ++py) for (int px = 0; px < w; ++px) for (int ky = 0; ky < 3; ++ky) for (int kx = 0; kx < 3; ++kx) {
          int sy = py + ky - 1, sx = px + kx - 1; if (sy < 0 || sy >= h || sx < 0 || sx >= w) continue;
          long o = (((long)bi * h + py) * w + px) * c, s = (((long)bi * h + sy) * w + sx) * c;
          for (int ci = 0; ci < c; ++ci) { wy[o + ci] += wt[ci * 9 + ky * 3 + kx] * xf[s + ci]; wdx[s + ci] += dy[o + ci] * wt[ci * 9 + ky * 3 + kx]; wdw[ci * 9 + ky * 3 + kx] += dy[o + ci] * xf[s + ci]; }
      }
      emu::launch(flat(n * c), B256, 0, [&] { dwconv3_fwd(y.data(), x.data(), wt.data(), b, h, w, c); });
      report("dwconv3_fwd" + cs, rel(fl(y), wy), 5e-3);
      std::vector<float> dx(n * c, NAN);
      emu::launch(flat(n * c), B256, 0, [&] { dwconv3_bwd_dx(dx.data(), dy.data(), wt.data(), b, h, w, c); });
      report("dwconv3_bwd_dx" + cs, rel(dx, wdx), 1e-5);
      // src/backend/vision.rs dwconv_dw_gy: one row block per 128 pixels
      int gy = (int)std::min<long>(std::max<long>((n + 127) / 128, 1), 1024); std::vector<float> part((size_t)gy * c * 9), dw(c * 9, 0.f);
      emu::launch(dim3{(unsigned)((c + 31) / 32), (unsigned)gy, 1}, B32x8, 0, [&] { dwconv3_bwd_dw(part.data(), dy.data(), x.data(), b, h, w, c); });
      emu::launch(flat(c * 9), B256, 0, [&] { col_finalize(dw.data(), part.data(), gy, c * 9); });
      report("dwconv3_bwd_dw" + cs, rel(dw, wdw), 1e-5);
    }
    // ---- position embedding: identity, upsampling, downsampling, mixed
    for (auto [hs, ws, h, w] : std::vector<std::array<int, 4>>{{4, 5, 4, 5}, {3, 4, 7, 9}, {7, 6, 3, 2}, {2, 6, 5, 4}, {1, 3, 2, 3}}) {
      int d = 8, b = 3; long l = (long)h * w;
      auto pe = rnd((size_t)hs * ws * d), x = rnd(b * l * d), dx = rnd(b * l * d);
      std::vector<float> rs(l * d, 0.f);
      auto th = taps(hs, h), tw = taps(ws, w);
      bool same = hs == h && ws == w;
      for (int i = 0; i < h; ++i) for (int j = 0; j < w; ++j) for (int dd = 0; dd < d; ++dd) {
          if (same) { rs[((long)i * w + j) * d + dd] = pe[((long)i * w + j) * d + dd]; continue; }
          for (auto [p, a] : th[i]) for (auto [q, bw] : tw[j]) rs[((long)i * w + j) * d + dd] += a * bw * pe[((long)p * ws + q) * d + dd];
      }
      auto want = x; for (int bi = 0; bi < b; ++bi) for (long e = 0; e < l * d; ++e) want[bi * l * d + e] += rs[e];
      emu::launch(flat(l * d), B256, 0, [&] { pos_embed_fwd(x.data(), pe.data(), hs, ws, h, w, d, b); });
      std::string tag = std::to_string(hs) + "x" + std::to_string(ws) + "->" + std::to_string(h) + "x" + std::to_string(w);
      report("pos_embed_fwd " + tag, rel(x, want), 1e-6);
      std::vector<float> sum(l * d, 0.f), dpe((size_t)hs * ws * d, 0.25f), wdpe = dpe;
      for (int bi = 0; bi < b; ++bi) for (long e = 0; e < l * d; ++e) sum[e] += dx[bi * l * d + e];
      for (int i = 0; i < h; ++i) for (int j = 0; j < w; ++j) for (int dd = 0; dd < d; ++dd) {
          float s = sum[((long)i * w + j) * d + dd];
          if (same) { wdpe[((long)i * w + j) * d + dd] += s; continue; }
          for (auto [p, a] : th[i]) for (auto [q, bw] : tw[j]) wdpe[((long)p * ws + q) * d + dd] += a * bw * s;
      }
      emu::launch(flat((long)hs * ws * d), B256, 0, [&] { pos_embed_bwd(dpe.data(), dx.data(), hs, ws, h, w, d, b); });
      report("pos_embed_bwd " + tag, rel(dpe, wdpe), 1e-5);
    }
    // ---- average pool
    { int b = 3, d = 40; long l = 37;  // d not a multiple of 32: a partial column tile
      auto x = bf(rnd(b * l * d)); auto xf = fl(x); auto dy = rnd(b * d);
      std::vector<bf16_t> y(b * d); std::vector<float> wy(b * d, 0.f), dx(b * l * d, NAN), wdx(b * l * d);
      for (int bi = 0; bi < b; ++bi) for (long r = 0; r < l; ++r) for (int j = 0; j < d; ++j) { wy[bi * d + j] += xf[(bi * l + r) * d + j] / l; wdx[(bi * l + r) * d + j] = dy[bi * d + j] / l; }
      emu::launch(dim3{(unsigned)((d + 31) / 32), (unsigned)b, 1}, B32x8, 0, [&] { avgpool_fwd(y.data(), x.data(), b, l, d); });
      std::vector<bf16_t> y2(b * d);  // fewer blocks than images: the grid-stride loop
      emu::launch(dim3{(unsigned)((d + 31) / 32), 2, 1}, B32x8, 0, [&] { avgpool_fwd(y2.data(), x.data(), b, l, d); });
      report("avgpool_fwd grid-stride", rel(fl(y2), fl(y)), 0);
      emu::launch(flat(b * l * d), B256, 0, [&] { avgpool_bwd(dx.data(), dy.data(), b, l, d); });
      report("avgpool_fwd", rel(fl(y), wy), 5e-3);
      report("avgpool_bwd", rel(dx, wdx), 1e-6);
    }
    // ---- column copies: plain, flipped, scaled, accumulated, between widths
    // (modes 4..7: widths and offsets multiples of 8, the 8-element path)
    for (int mode = 0; mode < 8; ++mode) {
      const bool v8 = mode >= 4;
      long nb = 3, t = 11; int width = v8 ? 16 : 7, sw = v8 ? 40 : 20, so = v8 ? 8 : 5, dw = v8 ? 24 : 9, doff = v8 ? 8 : 2;
      int flip = mode & 1, acc = (mode >> 1) & 1; float scale = (mode & 3) ? 0.5f : 1.f;
      auto src = rnd(nb * t * sw), dst0 = rnd(nb * t * dw);
      auto want = dst0;
      for (long s = 0; s < nb; ++s) for (long i = 0; i < t; ++i) {
          long r = s * t + i, rs = flip ? s * t + t - 1 - i : r;
          for (int j = 0; j < width; ++j) { float v = scale * src[rs * sw + so + j]; want[r * dw + doff + j] = acc ? want[r * dw + doff + j] + v : v; }
      }
      std::string tag = std::string(v8 ? " v8" : "") + (flip ? " flip" : "") + (acc ? " acc" : "") + ((mode & 3) ? " scale" : "");
      auto d32 = dst0;
      emu::launch(flat(nb * t * width), B256, 0, [&] { cols_f32(d32.data(), src.data(), nb, t, width, sw, so, dw, doff, flip, acc, scale); });
      report("cols_f32" + tag, rel(d32, want), 1e-7);
      auto sb = bf(src); auto sbf = fl(sb); auto d16 = dst0;
      auto want16 = dst0;
      for (long s = 0; s < nb; ++s) for (long i = 0; i < t; ++i) {
          long r = s * t + i, rs = flip ? s * t + t - 1 - i : r;
          for (int j = 0; j < width; ++j) { float v = scale * sbf[rs * sw + so + j]; want16[r * dw + doff + j] = acc ? want16[r * dw + doff + j] + v : v; }
      }
      emu::launch(flat(nb * t * width), B256, 0, [&] { cols_bf16_f32(d16.data(), sb.data(), nb, t, width, sw, so, dw, doff, flip, acc, scale); });
      report("cols_bf16_f32" + tag, rel(d16, want16), 1e-7);
      auto db = bf(dst0); auto dbf = fl(db); auto wantb = dbf;
      for (long s = 0; s < nb; ++s) for (long i = 0; i < t; ++i) {
          long r = s * t + i, rs = flip ? s * t + t - 1 - i : r;
          for (int j = 0; j < width; ++j) { float v = scale * sbf[rs * sw + so + j]; wantb[r * dw + doff + j] = to_f32(from_f32<bf16_t>(acc ? wantb[r * dw + doff + j] + v : v)); }
      }
      emu::launch(flat(nb * t * width), B256, 0, [&] { cols_bf16(db.data(), sb.data(), nb, t, width, sw, so, dw, doff, flip, acc, scale); });
      report("cols_bf16" + tag, rel(fl(db), wantb), 0);
    }
    // ---- locality gate, with and without the output swish
    for (int act = 0; act < 2; ++act) {
      long n = 999;
      auto gn = bf(rnd(n)), ln = bf(rnd(n)); auto gnf = fl(gn), lnf = fl(ln); auto gp = rnd(n, 3.f), dy = rnd(n);
      std::vector<bf16_t> y(n); std::vector<float> wy(n), a(n), b(n), c(n), wa(n), wb(n), wc(n);
      auto sg = [](float x) { return 1.f / (1.f + std::exp(-x)); };
      for (long i = 0; i < n; ++i) {
          float g = sg(gp[i]), z = g * gnf[i] + (1 - g) * lnf[i];
          wy[i] = act ? z * sg(z) : z;
          float dz = act ? dy[i] * sg(z) * (1 + z * (1 - sg(z))) : dy[i];
          wa[i] = dz * g; wb[i] = dz * (1 - g); wc[i] = dz * (gnf[i] - lnf[i]) * g * (1 - g);
      }
      emu::launch(flat(n), B256, 0, [&] { locality_gate_fwd(y.data(), gn.data(), ln.data(), gp.data(), n, act); });
      emu::launch(flat(n), B256, 0, [&] { locality_gate_bwd(a.data(), b.data(), c.data(), dy.data(), gn.data(), ln.data(), gp.data(), n, act); });
      std::string tag = act ? " swish" : "";
      report("locality_gate_fwd" + tag, rel(fl(y), wy), 5e-3);
      report("locality_gate_bwd d_gn" + tag, rel(a, wa), 1e-5);
      report("locality_gate_bwd d_ln" + tag, rel(b, wb), 1e-5);
      report("locality_gate_bwd d_gpre" + tag, rel(c, wc), 1e-5);
    }
    // ---- SwiGLU on the fused gate / up output, I % 8 == 0 (8-element groups) and not, with and
    // without the copies out: h bitwise nn/elementwise.cu's formula, a / u bitwise the halves
    for (int inter : {24, 10}) for (int keep = 0; keep < 2; ++keep) {
      const long n = 13;
      auto ab = bf(rnd(n * 2 * inter, 3.f));
      std::vector<bf16_t> h(n * inter), a(n * inter, 0), u(n * inter, 0);
      std::vector<float> wh(n * inter), wa(n * inter), wu(n * inter);
      for (long r = 0; r < n; ++r) for (int j = 0; j < inter; ++j) {
          bf16_t av = ab[r * 2 * inter + j], uv = ab[r * 2 * inter + inter + j];
          wh[r * inter + j] = to_f32(from_f32<bf16_t>(swishf_(to_f32(av)) * to_f32(uv)));
          wa[r * inter + j] = keep ? to_f32(av) : 0.f; wu[r * inter + j] = keep ? to_f32(uv) : 0.f;
      }
      emu::launch(flat(n * inter), B256, 0, [&] { swiglu_split_fwd(h.data(), keep ? a.data() : nullptr, keep ? u.data() : nullptr, ab.data(), n, inter); });
      std::string tag = " I" + std::to_string(inter) + (keep ? " keep" : "");
      report("swiglu_split_fwd h" + tag, rel(fl(h), wh), 0);
      report("swiglu_split_fwd a, u" + tag, rel(fl(a), wa) + rel(fl(u), wu), 0);
    }
    // ---- the fused locality branch (two per-head RMSNorms + the gate, one warp per row), with
    // and without keeping gn / ln: against a host reference, and y bitwise equal to
    // locality_gate_fwd on the fused kernel's own gn / ln and across keep
    for (int act = 0; act < 2; ++act) {
      for (int v : {40, 64, 96}) {
      const long rows = 37; const long n = rows * v; const float eps = 1e-5f;
      auto o = bf(rnd(n)), xs = bf(rnd(n, 2.f)); auto of = fl(o), xf = fl(xs); auto gp = rnd(n, 3.f), wg = rnd(v), wl = rnd(v);
      auto sg = [](float x) { return 1.f / (1.f + std::exp(-x)); };
      std::vector<float> wgn(n), wln(n), wy(n), wrg(rows), wrl(rows);
      for (long r = 0; r < rows; ++r) {
          double so = 0, sx = 0; for (int j = 0; j < v; ++j) { so += (double)of[r * v + j] * of[r * v + j]; sx += (double)xf[r * v + j] * xf[r * v + j]; }
          wrg[r] = (float)(1.0 / std::sqrt(so / v + eps)); wrl[r] = (float)(1.0 / std::sqrt(sx / v + eps));
          for (int j = 0; j < v; ++j) {
              long e = r * v + j; wgn[e] = to_f32(from_f32<bf16_t>(of[e] * wrg[r] * wg[j])); wln[e] = to_f32(from_f32<bf16_t>(xf[e] * wrl[r] * wl[j]));
              float g = sg(gp[e]), z = g * wgn[e] + (1 - g) * wln[e]; wy[e] = act ? z * sg(z) : z;
          }
      }
      std::vector<bf16_t> y(n), y2(n), y3(n), gn(n), ln(n); std::vector<float> rg(rows, NAN), rl(rows, NAN), rg2(rows), rl2(rows);
      emu::launch(flat(rows * 32), B256, 0, [&] { locality_fused_fwd(y.data(), gn.data(), ln.data(), rg.data(), rl.data(), o.data(), xs.data(), gp.data(), wg.data(), wl.data(), rows, v, eps, act); });
      emu::launch(flat(rows * 32), B256, 0, [&] { locality_fused_fwd(y2.data(), nullptr, nullptr, rg2.data(), rl2.data(), o.data(), xs.data(), gp.data(), wg.data(), wl.data(), rows, v, eps, act); });
      emu::launch(flat(n), B256, 0, [&] { locality_gate_fwd(y3.data(), gn.data(), ln.data(), gp.data(), n, act); });
      std::string tag = (act ? " swish" : "") + std::string(" v") + std::to_string(v);
      report("locality_fused_fwd y" + tag, rel(fl(y), wy), 5e-3);
      report("locality_fused_fwd gn" + tag, rel(fl(gn), wgn), 5e-3);
      report("locality_fused_fwd ln" + tag, rel(fl(ln), wln), 5e-3);
      report("locality_fused_fwd rstd" + tag, std::max(rel(rg, wrg), rel(rl, wrl)), 1e-6);
      report("locality_fused_fwd keep=no y" + tag, rel(fl(y2), fl(y)) + rel(rg2, rg) + rel(rl2, rl), 0);
      report("locality_fused_fwd y == gate(gn, ln)" + tag, rel(fl(y3), fl(y)), 0);
      }
    }
    // ---- label-smoothed cross-entropy (eps 0 and 0.1), a tie for the argmax
    for (float eps : {0.f, 0.1f}) {
      long m = 9; int classes = 70; float dscale = 1.f / m;
      auto lg = rnd(m * classes, 4.f); std::vector<unsigned> lab(m);
      for (long r = 0; r < m; ++r) lab[r] = (unsigned)((r * 13) % classes);
      lg[0 * classes + 5] = lg[0 * classes + 9] = 10.f; lab[0] = 9;  // tie: the first maximum (5) is the argmax
      lg[1 * classes + lab[1]] = 10.f;                                 // a correct row
      std::vector<float> dl(m * classes), loss(m), wdl(m * classes), wloss(m); std::vector<int> cor(m); int wcor = 0;
      for (long r = 0; r < m; ++r) {
          const float* row = &lg[r * classes]; int best = 0; float mx = -INFINITY;
          for (int j = 0; j < classes; ++j) if (row[j] > mx) { mx = row[j]; best = j; }
          double se = 0; for (int j = 0; j < classes; ++j) se += std::exp((double)row[j] - mx);
          double lse = mx + std::log(se), mean = 0; for (int j = 0; j < classes; ++j) mean += lse - row[j]; mean /= classes;
          wloss[r] = (float)((1 - eps) * (lse - row[lab[r]]) + eps * mean); wcor += best == (int)lab[r];
          for (int j = 0; j < classes; ++j) { double tg = eps / classes + (j == (int)lab[r] ? 1 - eps : 0); wdl[r * classes + j] = (float)((std::exp(row[j] - lse) - tg) * dscale); }
      }
      emu::launch(flat(m * 32), B256, 0, [&] { smoothed_xent(dl.data(), loss.data(), cor.data(), lg.data(), lab.data(), m, classes, eps, dscale); });
      int c = 0; for (int v : cor) c += v;
      std::string tag = eps > 0 ? " eps 0.1" : " eps 0";
      report("smoothed_xent loss" + tag, rel(loss, wloss), 1e-5);
      report("smoothed_xent dlogits" + tag, rel(dl, wdl), 1e-5);
      report("smoothed_xent correct" + tag, c == wcor ? 0 : 1, 0);
    }
    std::printf("%d failed\n", fails);
    return fails != 0;
}
