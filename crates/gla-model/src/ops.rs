//! The layer ops, each as an explicit `*_fwd` / `*_bwd` pair over row-major f32 buffers
//! (llm.c style). Letters: `N` token rows (B*T), `D` model dim, `H` heads, `K`/`V` per-head dims,
//! `I` MLP width, `W` conv width, `C` channels of a conv. Backward functions **accumulate**
//! (`+=`) into parameter gradients, so gradient accumulation needs no extra buffer; gradients of
//! activations are written (`=`) unless the name says `_acc`.
//!
//! Every op has a naive reference in the tests (tests/ops.rs) and a finite-difference check.

use gla_core::dims::GateAct;
use gla_cpu::mat::{matmul_with, MatRef, Threads};
use rayon::prelude::*;

/// Rows per rayon task in row-wise ops (keeps tasks coarse on small models).
const ROWS_PER_TASK: usize = 64;

/// The least work (elements) worth a rayon task: below it an op runs on fewer threads, or on
/// the calling thread alone. Waking the pool costs microseconds; at the demo model's size (rows
/// of 64 values) splitting every op finely spent ~15% of a training step in rayon and the
/// scheduler.
const MIN_TASK_ELEMS: usize = 1 << 17;

/// `with_min_len` for items of `per_item` elements.
fn min_items(per_item: usize) -> usize {
    (MIN_TASK_ELEMS / per_item.max(1)).max(1)
}

/// Linear forward: `y [N, out] = x [N, in] @ w^T` with `w [out, in]` (PyTorch layout).
pub fn linear_fwd(y: &mut [f32], x: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize) {
    matmul_with(y, d_out, MatRef::new(x, n, d_in, d_in), MatRef::new(w, d_out, d_in, d_in).t(), false, Threads::All);
}

/// Linear backward to the input: `dx [N, in] (+)= dy [N, out] @ w [out, in]`.
pub fn linear_bwd_x(dx: &mut [f32], dy: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize, acc: bool) {
    matmul_with(dx, d_in, MatRef::new(dy, n, d_out, d_out), MatRef::new(w, d_out, d_in, d_in), acc, Threads::All);
}

/// Linear backward to the weight: `dw [out, in] += dy^T @ x`.
pub fn linear_bwd_w(dw: &mut [f32], dy: &[f32], x: &[f32], n: usize, d_in: usize, d_out: usize) {
    matmul_with(dw, d_in, MatRef::new(dy, n, d_out, d_out).t(), MatRef::new(x, n, d_in, d_in), true, Threads::All);
}

/// RMSNorm forward over rows of `d`: `y = x * rstd * w`, `rstd = 1/sqrt(mean(x^2) + eps)`.
/// `rstd [rows]` is saved for the backward.
pub fn rmsnorm_fwd(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], d: usize, eps: f32) {
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .with_min_len(min_items(d * ROWS_PER_TASK))
        .for_each(|((y, r), x)| {
            for ((y, r), x) in y.chunks_exact_mut(d).zip(r.iter_mut()).zip(x.chunks_exact(d)) {
                let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                *r = 1.0 / (ms + eps).sqrt();
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * *r * w;
                }
            }
        });
}

#[allow(clippy::too_many_arguments)]
/// RMSNorm backward: `dx (+)= rstd * (dy*w - x * rstd^2 * mean(dy*w*x))`, `dw += sum dy*x*rstd`.
pub fn rmsnorm_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32], w: &[f32], d: usize, acc: bool) {
    dx.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(dy.par_chunks(d * ROWS_PER_TASK))
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .with_min_len(min_items(d * ROWS_PER_TASK))
        .for_each(|(((dx, dy), x), r)| {
            for (((dx, dy), x), &r) in dx.chunks_exact_mut(d).zip(dy.chunks_exact(d)).zip(x.chunks_exact(d)).zip(r) {
                let dot = dy.iter().zip(x).zip(w).map(|((a, b), c)| a * b * c).sum::<f32>() / d as f32;
                let c = r * r * r * dot;
                for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                    let v = r * dy * w - c * x;
                    if acc {
                        *dx += v;
                    } else {
                        *dx = v;
                    }
                }
            }
        });
    // deterministic, sequential reduction over rows
    for ((dy, x), &r) in dy.chunks_exact(d).zip(x.chunks_exact(d)).zip(rstd) {
        for ((dw, &dy), &x) in dw.iter_mut().zip(dy).zip(x) {
            *dw += dy * x * r;
        }
    }
}

#[inline]
pub(crate) fn sigmoid(x: f32) -> f32 {
    // the vectorisable exp (std's is a libm call per element: 8% of a training step)
    1.0 / (1.0 + gla_cpu::fexp::fexp(-x))
}

/// The output gate's activation and its derivative at `x` (fla's `FusedRMSNormGated`).
#[inline]
fn gate_act(act: GateAct, x: f32) -> (f32, f32) {
    let s = sigmoid(x);
    match act {
        GateAct::Swish => (x * s, s * (1.0 + x * (1.0 - s))),
        GateAct::Sigmoid => (s, s * (1.0 - s)),
    }
}

/// Per-head RMSNorm of the attention output times the output gate (fla's
/// `FusedRMSNormGated`): `y = rmsnorm(o) * w * act(g)` over each head's `V` values, one weight
/// `w [V]` shared by all heads, `act` swish (`g sigmoid(g)`) or sigmoid. With `g = None` (no
/// output gate) `y = rmsnorm(o) * w` (fla's `RMSNorm`). `o`, `g`, `y`: `[N, H, V]`; `rstd`:
/// `[N, H]`.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_fwd(y: &mut [f32], rstd: &mut [f32], o: &[f32], g: Option<&[f32]>, act: GateAct, w: &[f32], v: usize, eps: f32) {
    y.par_chunks_mut(v).zip(rstd.par_iter_mut()).enumerate().with_min_len(min_items(v)).for_each(|(i, (y, r))| {
        let o = &o[i * v..(i + 1) * v];
        let ms = o.iter().map(|x| x * x).sum::<f32>() / v as f32;
        *r = 1.0 / (ms + eps).sqrt();
        for j in 0..v {
            let gate = g.map_or(1.0, |g| gate_act(act, g[i * v + j]).0);
            y[j] = o[j] * *r * w[j] * gate;
        }
    });
}

/// Backward of [`gated_norm_fwd`]: writes `d_o` and `dg` (when gated), accumulates `dw`.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_bwd(
    d_o: &mut [f32],
    dg: Option<&mut [f32]>,
    dw: &mut [f32],
    dy: &[f32],
    o: &[f32],
    g: Option<&[f32]>,
    act: GateAct,
    rstd: &[f32],
    w: &[f32],
    v: usize,
) {
    // per row i: dn = dy * w * act(g); dg = dy * n * w * act'(g); d_o = rmsnorm_bwd(dn)
    let row = |i: usize, d_o: &mut [f32], mut dg: Option<&mut [f32]>| {
        let r = rstd[i];
        let o = &o[i * v..(i + 1) * v];
        let dy = &dy[i * v..(i + 1) * v];
        let mut dot = 0.0f32;
        for j in 0..v {
            let (gate, dgate) = g.map_or((1.0, 0.0), |g| gate_act(act, g[i * v + j]));
            if let Some(dg) = dg.as_deref_mut() {
                dg[j] = dy[j] * o[j] * r * w[j] * dgate;
            }
            // d_o holds dn until the second pass
            d_o[j] = dy[j] * w[j] * gate;
            dot += d_o[j] * o[j];
        }
        let c = r * r * r * dot / v as f32;
        for j in 0..v {
            d_o[j] = r * d_o[j] - c * o[j];
        }
    };
    match dg {
        Some(dg) => d_o
            .par_chunks_mut(v)
            .zip(dg.par_chunks_mut(v))
            .enumerate()
            .with_min_len(min_items(v))
            .for_each(|(i, (a, b))| row(i, a, Some(b))),
        None => d_o.par_chunks_mut(v).enumerate().with_min_len(min_items(v)).for_each(|(i, a)| row(i, a, None)),
    }
    for i in 0..rstd.len() {
        for j in 0..v {
            let gate = g.map_or(1.0, |g| gate_act(act, g[i * v + j]).0);
            dw[j] += dy[i * v + j] * o[i * v + j] * rstd[i] * gate;
        }
    }
}

/// `y = g(x)` elementwise in parallel chunks; `g` a closure per map, so that the map's `match`
/// is taken once, not per element (which kept the loop from vectorising).
fn map_elems(y: &mut [f32], x: &[f32], g: impl Fn(f32, f32) -> f32 + Sync) {
    y.par_chunks_mut(4096).zip(x.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = g(*y, x);
        }
    });
}

/// fla's feature map on q or k: `y = f(x)` elementwise.
pub fn feature_map_fwd(y: &mut [f32], x: &[f32], f: crate::FeatureMap) {
    match f {
        crate::FeatureMap::Silu => map_elems(y, x, |_, x| crate::FeatureMap::Silu.apply(x)),
        _ => map_elems(y, x, |_, x| f.apply(x)),
    }
}

/// Backward of [`feature_map_fwd`], in place: `d = d * f'(x)`.
pub fn feature_map_bwd(d: &mut [f32], x: &[f32], f: crate::FeatureMap) {
    match f {
        crate::FeatureMap::Silu => map_elems(d, x, |d, x| d * crate::FeatureMap::Silu.grad(x)),
        _ => map_elems(d, x, |d, x| d * f.grad(x)),
    }
}

/// The epsilon of fla's `sum_norm` (`F.normalize(x, p=1, eps=1e-6)`).
pub const SUM_NORM_EPS: f32 = 1e-6;

/// fla's `sum_norm` (DeltaNet's `qk_norm = "sum"`) over rows of `k` values:
/// `y = x / max(sum |x|, 1e-6)`. `x`, `y`: `[rows, k]`.
pub fn sum_norm_fwd(y: &mut [f32], x: &[f32], k: usize) {
    y.par_chunks_mut(k).zip(x.par_chunks(k)).with_min_len(min_items(k)).for_each(|(y, x)| {
        let n = x.iter().map(|v| v.abs()).sum::<f32>().max(SUM_NORM_EPS);
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = x / n);
    });
}

/// Backward of [`sum_norm_fwd`], in place: `d` holds `dL/dy` and becomes `dL/dx`. With
/// `n = sum |x| > eps`: `dx = (dy - sign(x) <dy, y>) / n`; below the clamp `dx = dy / eps`
/// (PyTorch's `clamp_min` passes no gradient to the norm there).
pub fn sum_norm_bwd(d: &mut [f32], x: &[f32], k: usize) {
    d.par_chunks_mut(k).zip(x.par_chunks(k)).with_min_len(min_items(k)).for_each(|(d, x)| {
        let l1 = x.iter().map(|v| v.abs()).sum::<f32>();
        if l1 > SUM_NORM_EPS {
            let dot = d.iter().zip(x).map(|(&d, &x)| d * x).sum::<f32>() / l1;
            d.iter_mut().zip(x).for_each(|(d, &x)| *d = (*d - x.signum() * f32::from(u8::from(x != 0.0)) * dot) / l1);
        } else {
            d.iter_mut().for_each(|d| *d /= SUM_NORM_EPS);
        }
    });
}

/// SwiGLU forward: `h = silu(a) * b`, all `[N, I]`.
pub fn swiglu_fwd(h: &mut [f32], a: &[f32], b: &[f32]) {
    h.par_chunks_mut(4096).zip(a.par_chunks(4096)).zip(b.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|((h, a), b)| {
        for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
            *h = a * sigmoid(a) * b;
        }
    });
}

/// SwiGLU backward: `da = dh * b * silu'(a)`, `db = dh * silu(a)`.
pub fn swiglu_bwd(da: &mut [f32], db: &mut [f32], dh: &[f32], a: &[f32], b: &[f32]) {
    da.par_chunks_mut(4096)
        .zip(db.par_chunks_mut(4096))
        .zip(dh.par_chunks(4096))
        .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
        .with_min_len(min_items(4096))
        .for_each(|(((da, db), dh), (a, b))| {
            for i in 0..da.len() {
                let s = sigmoid(a[i]);
                db[i] = dh[i] * a[i] * s;
                da[i] = dh[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
            }
        });
}

/// `log(sigmoid(x)) = min(x, 0) - ln(1 + exp(-|x|))`, stable for every x, in vectorisable
/// arithmetic (std's `exp` and `ln_1p` are libm calls per element: 5% of a ViG training step).
#[inline]
pub fn logsigmoid(x: f32) -> f32 {
    x.min(0.0) - ln1p_unit(gla_cpu::fexp::fexp(-x.abs()))
}

/// `ln(1 + u)` for `u` in `[0, 1]`: `2 atanh(s)` with `s = u / (2 + u) <= 1/3`, by its odd series
/// to `s^15` (the first term left out is below 3e-10 of the sum, under f32's rounding).
#[inline]
fn ln1p_unit(u: f32) -> f32 {
    let s = u / (2.0 + u);
    let s2 = s * s;
    let mut p = 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    2.0 * s * p
}

/// The log-gate: `g = max(logsigmoid(x) / norm, clamp_min)` (fla: `logsigmoid(gk) / 16`, then
/// `clamp_min` when set). Always <= 0.
pub fn gate_fwd(g: &mut [f32], x: &[f32], norm: f32, clamp_min: Option<f32>) {
    g.par_chunks_mut(4096).zip(x.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|(g, x)| {
        for (g, &x) in g.iter_mut().zip(x) {
            let v = logsigmoid(x) / norm;
            *g = clamp_min.map_or(v, |c| v.max(c));
        }
    });
}

/// Backward of [`gate_fwd`]: `dx = dg * sigmoid(-x) / norm`, zero where the clamp is active
/// (PyTorch's clamp passes the gradient where `v >= min`).
pub fn gate_bwd(dx: &mut [f32], dg: &[f32], x: &[f32], norm: f32, clamp_min: Option<f32>) {
    dx.par_chunks_mut(4096).zip(dg.par_chunks(4096)).zip(x.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|((dx, dg), x)| {
        for ((dx, &dg), &x) in dx.iter_mut().zip(dg).zip(x) {
            let pass = clamp_min.is_none_or(|c| logsigmoid(x) / norm >= c);
            *dx = if pass { dg * sigmoid(-x) / norm } else { 0.0 };
        }
    });
}

/// Causal depthwise short convolution (fla's `ShortConvolution`, no bias) per sequence of `t`
/// rows: `pre[t, c] = sum_j w[c, j] * x[t - (W-1) + j, c]` (zero before the sequence start),
/// `y = silu(pre)` (`silu`: the conv's activation `'silu'`) or `y = pre` (activation `None`).
/// `x`, `y`: `[B*T, C]`; `w`: `[C, 1, W]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_fwd(y: &mut [f32], x: &[f32], w: &[f32], t: usize, c: usize, width: usize, silu: bool) {
    y.par_chunks_mut(t * c).zip(x.par_chunks(t * c)).with_min_len(min_items(t * c)).for_each(|(y, x)| {
        for s in 0..t {
            for ch in 0..c {
                let acc = conv_pre(x, w, s, c, ch, width);
                y[s * c + ch] = if silu { acc * sigmoid(acc) } else { acc };
            }
        }
    });
}

/// `pre` of [`conv_fwd`] at row `s` of one sequence's `x`, channel `ch`.
fn conv_pre(x: &[f32], w: &[f32], s: usize, c: usize, ch: usize, width: usize) -> f32 {
    let mut acc = 0.0f32;
    for j in 0..width {
        if let Some(src) = (s + j).checked_sub(width - 1) {
            acc += w[ch * width + j] * x[src * c + ch];
        }
    }
    acc
}

/// Backward of [`conv_fwd`]: writes `dx`, accumulates `dw`; `pre` is recomputed from `x`.
#[allow(clippy::too_many_arguments)]
pub fn conv_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], t: usize, c: usize, width: usize, silu: bool) {
    let rows = x.len() / c;
    // dpre = dy * silu'(pre) (dy itself without the activation)
    let mut dpre = vec![0.0f32; rows * c];
    dpre.par_chunks_mut(t * c).zip(dy.par_chunks(t * c)).zip(x.par_chunks(t * c)).with_min_len(min_items(t * c)).for_each(
        |((dp, dy), x)| {
            for s in 0..t {
                for ch in 0..c {
                    let d = dy[s * c + ch];
                    dp[s * c + ch] = if silu {
                        let p = conv_pre(x, w, s, c, ch, width);
                        let sg = sigmoid(p);
                        d * sg * (1.0 + p * (1.0 - sg))
                    } else {
                        d
                    };
                }
            }
        },
    );
    dx.par_chunks_mut(t * c).enumerate().with_min_len(min_items(t * c)).for_each(|(b, dx)| {
        let dp = &dpre[b * t * c..(b + 1) * t * c];
        for src in 0..t {
            for ch in 0..c {
                let mut acc = 0.0f32;
                for j in 0..width {
                    let s = src + width - 1 - j;
                    if s < t {
                        acc += w[ch * width + j] * dp[s * c + ch];
                    }
                }
                dx[src * c + ch] = acc;
            }
        }
    });
    for r in 0..rows {
        let s = r % t;
        for j in 0..width {
            if let Some(src) = (s + j).checked_sub(width - 1) {
                let xr = r - s + src;
                for ch in 0..c {
                    dw[ch * width + j] += dpre[r * c + ch] * x[xr * c + ch];
                }
            }
        }
    }
}

/// Repeats `[N, Hkv, d]` to `[N, Hkv * groups, d]` (head `h` of the output reads kv head
/// `h / groups`, einops `'... h d -> ... (h g) d'` as in fla).
pub fn repeat_heads(out: &mut [f32], x: &[f32], hkv: usize, groups: usize, d: usize) {
    for (o, x) in out.chunks_exact_mut(hkv * groups * d).zip(x.chunks_exact(hkv * d)) {
        for h in 0..hkv {
            for g in 0..groups {
                o[(h * groups + g) * d..(h * groups + g + 1) * d].copy_from_slice(&x[h * d..(h + 1) * d]);
            }
        }
    }
}

/// Backward of [`repeat_heads`]: sums the groups back.
pub fn repeat_heads_bwd(dx: &mut [f32], dout: &[f32], hkv: usize, groups: usize, d: usize) {
    for (dx, o) in dx.chunks_exact_mut(hkv * d).zip(dout.chunks_exact(hkv * groups * d)) {
        dx.fill(0.0);
        for h in 0..hkv {
            for g in 0..groups {
                for j in 0..d {
                    dx[h * d + j] += o[(h * groups + g) * d + j];
                }
            }
        }
    }
}

/// RoPE, in place (gla-core's `backend::attn` states the math): `x [N, heads, Dh]`, row `r`
/// at position `pos[r]`, rotated by the angle `f32(pos) * inv_freq[i]` on the pairs
/// `(i, i + Dh/2)` (fla's non-interleaved `RotaryEmbedding`); `conj` rotates by the negative
/// angle (the backward). The angle is formed in f32 and its cosine and sine rounded to f32, as
/// fla's table `cos(outer(t, inv_freq))` is.
pub fn rope(x: &mut [f32], pos: &[usize], heads: usize, inv_freq: &[f32], conj: bool) {
    let half = inv_freq.len();
    let row = heads * 2 * half;
    x.par_chunks_mut(row).zip(pos.par_iter()).with_min_len(min_items(row)).for_each(|(xr, &p)| {
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|&f| {
                let a = (p as f32 * f) as f64;
                let s = a.sin() as f32;
                (a.cos() as f32, if conj { -s } else { s })
            })
            .collect();
        for h in xr.chunks_exact_mut(2 * half) {
            let (x0, x1) = h.split_at_mut(half);
            for ((a, b), &(c, s)) in x0.iter_mut().zip(x1.iter_mut()).zip(&cs) {
                let (u, v) = (*a, *b);
                *a = u * c - v * s;
                *b = u * s + v * c;
            }
        }
    });
}

/// `y [N, C] += bias [C]`.
pub fn bias_fwd(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
    }
}

/// `dbias [C] += colsum(dy [N, C])`.
pub fn bias_bwd(dbias: &mut [f32], dy: &[f32]) {
    for row in dy.chunks_exact(dbias.len()) {
        dbias.iter_mut().zip(row).for_each(|(b, r)| *b += r);
    }
}

/// Embedding forward: `x [N, D] = wte[ids]`. Ids must be checked by the caller.
pub fn embedding_fwd(x: &mut [f32], ids: &[u32], wte: &[f32], d: usize) {
    for (x, &id) in x.chunks_exact_mut(d).zip(ids) {
        x.copy_from_slice(&wte[id as usize * d..(id as usize + 1) * d]);
    }
}

/// Embedding backward: `dwte[ids] += dx`, skipping the padding row.
pub fn embedding_bwd(dwte: &mut [f32], dx: &[f32], ids: &[u32], d: usize, pad: Option<usize>) {
    for (dx, &id) in dx.chunks_exact(d).zip(ids) {
        if pad == Some(id as usize) {
            continue;
        }
        for (a, &b) in dwte[id as usize * d..(id as usize + 1) * d].iter_mut().zip(dx) {
            *a += b;
        }
    }
}

/// Cross-entropy of `logits [M, vocab]` against `targets [M]` (all valid): returns the summed
/// loss (f64) and the number of correct argmax predictions; overwrites `logits` with
/// `(softmax - onehot) * dscale`, the gradient of `dscale * sum loss`.
pub fn cross_entropy_fwd_bwd(logits: &mut [f32], targets: &[u32], vocab: usize, dscale: f32) -> (f64, usize) {
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .with_min_len(min_items(vocab))
        .map(|(row, &t)| {
            let (mut best, mut mx) = (0usize, f32::NEG_INFINITY);
            for (j, &v) in row.iter().enumerate() {
                if v > mx {
                    mx = v;
                    best = j;
                }
            }
            let sum: f64 = row.iter().map(|&v| ((v - mx) as f64).exp()).sum();
            let lse = mx as f64 + sum.ln();
            let loss = lse - row[t as usize] as f64;
            for v in row.iter_mut() {
                *v = ((*v as f64 - lse).exp() as f32) * dscale;
            }
            row[t as usize] -= dscale;
            (loss, usize::from(best == t as usize))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0), |(a, b), (l, c)| (a + l, b + c))
}

/// fla's feature maps as the CPU computes them (the GPU kernels' reference).
pub trait FeatureMapMath {
    /// f(x).
    fn apply(self, x: f32) -> f32;
    /// f'(x) (PyTorch's one-sided choice at the kinks: 0 for relu at 0, 0 for relu6 at 0 and 6).
    fn grad(self, x: f32) -> f32;
}

impl FeatureMapMath for crate::FeatureMap {
    #[inline]
    fn apply(self, x: f32) -> f32 {
        match self {
            crate::FeatureMap::Relu => x.max(0.0),
            crate::FeatureMap::Relu2 => x.max(0.0) * x.max(0.0),
            crate::FeatureMap::Relu6 => x.clamp(0.0, 6.0),
            crate::FeatureMap::LeakyRelu => {
                if x > 0.0 {
                    x
                } else {
                    0.01 * x
                }
            }
            crate::FeatureMap::Sigmoid => sigmoid(x),
            crate::FeatureMap::Silu => x * sigmoid(x),
            crate::FeatureMap::Tanh => x.tanh(),
            crate::FeatureMap::GeluTanh => 0.5 * x * (1.0 + (GELU_C * (x + 0.044715 * x * x * x)).tanh()),
            crate::FeatureMap::QuickGelu => x * sigmoid(1.702 * x),
            crate::FeatureMap::Identity => x,
            crate::FeatureMap::EluP1 => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    x.exp()
                }
            }
        }
    }

    #[inline]
    fn grad(self, x: f32) -> f32 {
        match self {
            crate::FeatureMap::Relu => f32::from(u8::from(x > 0.0)),
            crate::FeatureMap::Relu2 => 2.0 * x.max(0.0),
            crate::FeatureMap::Relu6 => f32::from(u8::from(x > 0.0 && x < 6.0)),
            crate::FeatureMap::LeakyRelu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.01
                }
            }
            crate::FeatureMap::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            crate::FeatureMap::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            crate::FeatureMap::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            crate::FeatureMap::GeluTanh => {
                let t = (GELU_C * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * x * x)
            }
            crate::FeatureMap::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            crate::FeatureMap::Identity => 1.0,
            crate::FeatureMap::EluP1 => {
                if x > 0.0 {
                    1.0
                } else {
                    x.exp()
                }
            }
        }
    }
}

/// sqrt(2 / pi), the tanh-GELU's constant.
const GELU_C: f32 = 0.797_884_6;

// ---------------------------------------------------------------------------------------------
// Vision ops (gla-core's `VisionOps`): channels-last images `[B, H, W, C]`.

/// `dst [B, H, W, C] = src [B, C, H, W]` (PyTorch's NCHW to channels-last).
pub fn nchw_to_nhwc(dst: &mut [f32], src: &[f32], b: usize, c: usize, h: usize, w: usize) {
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    dst[((bi * h + y) * w + x) * c + ci] = src[((bi * c + ci) * h + y) * w + x];
                }
            }
        }
    }
}

/// The input pixel `(y, x)` read by output `(oy, ox)` at kernel tap `(ky, kx)`, or `None` in the
/// zero padding.
#[inline]
fn conv_src(g: &gla_core::backend::Conv2d, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
    let y = (oy * g.stride + ky).checked_sub(g.pad)?;
    let x = (ox * g.stride + kx).checked_sub(g.pad)?;
    (y < g.h && x < g.w).then_some((y, x))
}

/// `cols [B*Ho*Wo, C*k*k] = im2col(x [B, H, W, C])`, columns in the order `(c, ky, kx)` of
/// PyTorch's flattened weight `[C_out, C, k, k]`; zeros in the padding.
pub fn im2col(cols: &mut [f32], x: &[f32], g: &gla_core::backend::Conv2d, (ho, wo): (usize, usize)) {
    let (k, c, nc) = (g.k, g.c_in, g.cols());
    cols[..g.b * ho * wo * nc].par_chunks_mut(nc).with_min_len(min_items(nc)).enumerate().for_each(|(r, row)| {
        let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
        for ky in 0..k {
            for kx in 0..k {
                match conv_src(g, oy, ox, ky, kx) {
                    Some((y, xx)) => {
                        let px = &x[((bi * g.h + y) * g.w + xx) * c..][..c];
                        for (ci, &v) in px.iter().enumerate() {
                            row[(ci * k + ky) * k + kx] = v;
                        }
                    }
                    None => (0..c).for_each(|ci| row[(ci * k + ky) * k + kx] = 0.0),
                }
            }
        }
    });
}

/// The transpose of [`im2col`]: `dx [B, H, W, C] = sum over the taps that read each pixel`
/// (overwrites `dx`).
pub fn col2im(dx: &mut [f32], dcols: &[f32], g: &gla_core::backend::Conv2d, (ho, wo): (usize, usize)) {
    let (k, c, nc) = (g.k, g.c_in, g.cols());
    let img = g.h * g.w * c;
    dx[..g.b * img].par_chunks_mut(img).enumerate().for_each(|(bi, dimg)| {
        dimg.fill(0.0);
        for oy in 0..ho {
            for ox in 0..wo {
                let row = &dcols[((bi * ho + oy) * wo + ox) * nc..][..nc];
                for ky in 0..k {
                    for kx in 0..k {
                        if let Some((y, x)) = conv_src(g, oy, ox, ky, kx) {
                            let px = &mut dimg[(y * g.w + x) * c..][..c];
                            for (ci, d) in px.iter_mut().enumerate() {
                                *d += row[(ci * k + ky) * k + kx];
                            }
                        }
                    }
                }
            }
        }
    });
}

/// LayerNorm over rows of `c`: `y = (x - mean) * rstd * w + b`; `stats [2 rows]` = (mean, rstd).
pub fn layernorm_fwd(y: &mut [f32], stats: &mut [f32], x: &[f32], w: &[f32], b: &[f32], c: usize, eps: f32) {
    let n = x.len() / c;
    y[..n * c].par_chunks_mut(c).zip(stats[..2 * n].par_chunks_mut(2)).enumerate().with_min_len(min_items(c)).for_each(|(r, (yr, st))| {
        let xr = &x[r * c..(r + 1) * c];
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for j in 0..c {
            yr[j] = ((xr[j] as f64 - mean) * rstd) as f32 * w[j] + b[j];
        }
        st[0] = mean as f32;
        st[1] = rstd as f32;
    });
}

/// Backward of [`layernorm_fwd`]: writes `dx`, accumulates `dw`, `db`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(dx: &mut [f32], dw: &mut [f32], db: &mut [f32], dy: &[f32], x: &[f32], stats: &[f32], w: &[f32], c: usize) {
    let n = x.len() / c;
    for r in 0..n {
        let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
        let (xr, dyr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for j in 0..c {
            let xh = (xr[j] - mean) * rstd;
            let g = dyr[j] * w[j];
            dw[j] += dyr[j] * xh;
            db[j] += dyr[j];
            s1 += g as f64;
            s2 += (g * xh) as f64;
        }
        let (m1, m2) = ((s1 / c as f64) as f32, (s2 / c as f64) as f32);
        let dxr = &mut dx[r * c..(r + 1) * c];
        for j in 0..c {
            let xh = (xr[j] - mean) * rstd;
            dxr[j] = rstd * (dyr[j] * w[j] - m1 - xh * m2);
        }
    }
}

/// The 3x3 depthwise convolution (zero padding 1) of `x [B, h, w, C]` with `wt [C, 1, 3, 3]`.
pub fn dwconv3_fwd(y: &mut [f32], x: &[f32], wt: &[f32], (b, h, w, c): (usize, usize, usize, usize)) {
    y[..b * h * w * c].par_chunks_mut(c).with_min_len(min_items(9 * c)).enumerate().for_each(|(r, yr)| {
        let (bi, py, px) = (r / (h * w), (r / w) % h, r % w);
        yr.fill(0.0);
        for ky in 0..3 {
            for kx in 0..3 {
                let (Some(sy), Some(sx)) = ((py + ky).checked_sub(1), (px + kx).checked_sub(1)) else { continue };
                if sy >= h || sx >= w {
                    continue;
                }
                let xr = &x[((bi * h + sy) * w + sx) * c..][..c];
                for ci in 0..c {
                    yr[ci] += wt[ci * 9 + ky * 3 + kx] * xr[ci];
                }
            }
        }
    });
}

/// Backward of [`dwconv3_fwd`]: writes `dx`, accumulates `dw`.
pub fn dwconv3_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], wt: &[f32], (b, h, w, c): (usize, usize, usize, usize)) {
    dx[..b * h * w * c].fill(0.0);
    for bi in 0..b {
        for py in 0..h {
            for px in 0..w {
                let dyr = &dy[((bi * h + py) * w + px) * c..][..c];
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (Some(sy), Some(sx)) = ((py + ky).checked_sub(1), (px + kx).checked_sub(1)) else { continue };
                        if sy >= h || sx >= w {
                            continue;
                        }
                        let o = ((bi * h + sy) * w + sx) * c;
                        for ci in 0..c {
                            dw[ci * 9 + ky * 3 + kx] += dyr[ci] * x[o + ci];
                            dx[o + ci] += dyr[ci] * wt[ci * 9 + ky * 3 + kx];
                        }
                    }
                }
            }
        }
    }
}

/// PyTorch's bicubic taps along one axis resized from `src` to `dst` samples
/// (`align_corners=False`, A = -0.75, source index `(i + 0.5) src/dst - 0.5`, reads clamped
/// to the border): per output sample, four `(source index, weight)`.
pub fn bicubic_taps(src: usize, dst: usize) -> Vec<[(usize, f32); 4]> {
    const A: f64 = -0.75;
    let cc1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            let real = scale * (i as f64 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let wts = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
            let mut taps = [(0usize, 0.0f32); 4];
            for (j, tap) in taps.iter_mut().enumerate() {
                let idx = (base as i64 - 1 + j as i64).clamp(0, src as i64 - 1) as usize;
                *tap = (idx, wts[j] as f32);
            }
            taps
        })
        .collect()
}

/// `x [B, h*w, D] += resize(pe [hs*ws, D])` ([`bicubic_taps`] on both axes; a plain add when the
/// grids match).
pub fn pos_embed_fwd(x: &mut [f32], pe: &[f32], (hs, ws): (usize, usize), (h, w): (usize, usize), d: usize) {
    let l = h * w;
    let mut rs = vec![0.0f32; l * d];
    if (hs, ws) == (h, w) {
        rs.copy_from_slice(&pe[..l * d]);
    } else {
        let (th, tw) = (bicubic_taps(hs, h), bicubic_taps(ws, w));
        for i in 0..h {
            for j in 0..w {
                let dst = &mut rs[(i * w + j) * d..][..d];
                for &(p, a) in &th[i] {
                    for &(q, bw) in &tw[j] {
                        let src = &pe[(p * ws + q) * d..][..d];
                        dst.iter_mut().zip(src).for_each(|(o, &s)| *o += a * bw * s);
                    }
                }
            }
        }
    }
    x.par_chunks_mut(l * d).for_each(|img| img.iter_mut().zip(&rs).for_each(|(o, &r)| *o += r));
}

/// Backward of [`pos_embed_fwd`]: `dpe += resize^T(sum over images of dx)`.
pub fn pos_embed_bwd(dpe: &mut [f32], dx: &[f32], (hs, ws): (usize, usize), (h, w): (usize, usize), d: usize) {
    let l = h * w;
    let mut sum = vec![0.0f32; l * d];
    for img in dx.chunks_exact(l * d) {
        sum.iter_mut().zip(img).for_each(|(s, &v)| *s += v);
    }
    if (hs, ws) == (h, w) {
        dpe.iter_mut().zip(&sum).for_each(|(g, &s)| *g += s);
        return;
    }
    let (th, tw) = (bicubic_taps(hs, h), bicubic_taps(ws, w));
    for i in 0..h {
        for j in 0..w {
            let src = &sum[(i * w + j) * d..][..d];
            for &(p, a) in &th[i] {
                for &(q, bw) in &tw[j] {
                    let dst = &mut dpe[(p * ws + q) * d..][..d];
                    dst.iter_mut().zip(src).for_each(|(o, &s)| *o += a * bw * s);
                }
            }
        }
    }
}

/// `y [B, D] = mean of the L rows of each image of x [B*L, D]`.
pub fn avgpool_fwd(y: &mut [f32], x: &[f32], b: usize, l: usize, d: usize) {
    for bi in 0..b {
        let yr = &mut y[bi * d..(bi + 1) * d];
        yr.fill(0.0);
        for row in x[bi * l * d..(bi + 1) * l * d].chunks_exact(d) {
            yr.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
        yr.iter_mut().for_each(|o| *o /= l as f32);
    }
}

/// Backward of [`avgpool_fwd`]: `dx [B*L, D] = dy / L`.
pub fn avgpool_bwd(dx: &mut [f32], dy: &[f32], b: usize, l: usize, d: usize) {
    for bi in 0..b {
        let dr = &dy[bi * d..(bi + 1) * d];
        for row in dx[bi * l * d..(bi + 1) * l * d].chunks_exact_mut(d) {
            row.iter_mut().zip(dr).for_each(|(o, &v)| *o = v / l as f32);
        }
    }
}

/// gla-core's `Cols`: a column block copied between row-major matrices, optionally time-flipped
/// per sequence, scaled and accumulated.
pub fn copy_cols(dst: &mut [f32], src: &[f32], c: &gla_core::backend::Cols) {
    let ((sw, so), (dw, doff)) = (c.src, c.dst);
    for s in 0..c.b {
        for i in 0..c.t {
            let r = s * c.t + i;
            let rs = if c.flip { s * c.t + c.t - 1 - i } else { r };
            let (d, sr) = (&mut dst[r * dw + doff..][..c.width], &src[rs * sw + so..][..c.width]);
            match (c.acc, c.scale == 1.0) {
                (false, true) => d.copy_from_slice(sr),
                (false, false) => d.iter_mut().zip(sr).for_each(|(o, &v)| *o = c.scale * v),
                (true, _) => d.iter_mut().zip(sr).for_each(|(o, &v)| *o += c.scale * v),
            }
        }
    }
}

/// Stochastic depth's per-image scale of a residual branch: `dst = (res +) scales[b] * src` over
/// the `l` rows `[l, c]` of each image `b`.
pub fn scale_rows(dst: &mut [f32], res: Option<&[f32]>, src: &[f32], scales: &[f32], l: usize, c: usize) {
    let img = l * c;
    dst[..scales.len() * img].par_chunks_mut(img).with_min_len(min_items(img)).enumerate().for_each(|(b, d)| {
        let (sc, sr) = (scales[b], &src[b * img..(b + 1) * img]);
        match res {
            Some(res) => d.iter_mut().zip(sr).zip(&res[b * img..(b + 1) * img]).for_each(|((o, &x), &r)| *o = r + sc * x),
            None => d.iter_mut().zip(sr).for_each(|(o, &x)| *o = sc * x),
        }
    });
}

/// ViG's 2D locality gate: `G = sigmoid(gpre)`, `z = G gn + (1 - G) ln`, `y = swish(z)` or `z`.
pub fn locality_gate_fwd(y: &mut [f32], gn: &[f32], ln: &[f32], gpre: &[f32], out_act: bool) {
    for (i, o) in y.iter_mut().enumerate() {
        let g = sigmoid(gpre[i]);
        let z = g * gn[i] + (1.0 - g) * ln[i];
        *o = if out_act { z * sigmoid(z) } else { z };
    }
}

/// Backward of [`locality_gate_fwd`].
#[allow(clippy::too_many_arguments)]
pub fn locality_gate_bwd(
    d_gn: &mut [f32],
    d_ln: &mut [f32],
    d_gpre: &mut [f32],
    dy: &[f32],
    gn: &[f32],
    ln: &[f32],
    gpre: &[f32],
    out_act: bool,
) {
    for i in 0..dy.len() {
        let g = sigmoid(gpre[i]);
        let z = g * gn[i] + (1.0 - g) * ln[i];
        let dz = if out_act {
            let s = sigmoid(z);
            dy[i] * s * (1.0 + z * (1.0 - s))
        } else {
            dy[i]
        };
        d_gn[i] = dz * g;
        d_ln[i] = dz * (1.0 - g);
        d_gpre[i] = dz * (gn[i] - ln[i]) * g * (1.0 - g);
    }
}

/// PyTorch's cross-entropy with `label_smoothing = eps` of `logits [M, C]` against `labels`:
/// `loss = (1 - eps) (-log p_y) + eps mean_c(-log p_c)` per row; returns the summed loss and the
/// correct argmax count and writes `dscale * dloss/dlogits` into `dlogits`.
pub fn smoothed_cross_entropy(dlogits: &mut [f32], logits: &[f32], labels: &[u32], classes: usize, eps: f32, dscale: f32) -> (f64, usize) {
    let (mut total, mut correct) = (0.0f64, 0usize);
    for (r, &y) in labels.iter().enumerate() {
        let row = &logits[r * classes..(r + 1) * classes];
        let (mut best, mut mx) = (0usize, f32::NEG_INFINITY);
        for (j, &v) in row.iter().enumerate() {
            if v > mx {
                mx = v;
                best = j;
            }
        }
        let lse = mx as f64 + row.iter().map(|&v| ((v - mx) as f64).exp()).sum::<f64>().ln();
        let mean_nll = row.iter().map(|&v| lse - v as f64).sum::<f64>() / classes as f64;
        let e = eps as f64;
        total += (1.0 - e) * (lse - row[y as usize] as f64) + e * mean_nll;
        correct += usize::from(best == y as usize);
        let d = &mut dlogits[r * classes..(r + 1) * classes];
        for (j, o) in d.iter_mut().enumerate() {
            let target = e / classes as f64 + if j == y as usize { 1.0 - e } else { 0.0 };
            *o = (((row[j] as f64 - lse).exp() - target) * dscale as f64) as f32;
        }
    }
    (total, correct)
}
