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

/// fla's feature map on q or k: `y = f(x)` elementwise.
pub fn feature_map_fwd(y: &mut [f32], x: &[f32], f: crate::FeatureMap) {
    y.par_chunks_mut(4096).zip(x.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f.apply(x);
        }
    });
}

/// Backward of [`feature_map_fwd`], in place: `d = d * f'(x)`.
pub fn feature_map_bwd(d: &mut [f32], x: &[f32], f: crate::FeatureMap) {
    d.par_chunks_mut(4096).zip(x.par_chunks(4096)).with_min_len(min_items(4096)).for_each(|(d, x)| {
        for (d, &x) in d.iter_mut().zip(x) {
            *d *= f.grad(x);
        }
    });
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

/// `log(sigmoid(x))`, stable for every x.
#[inline]
pub fn logsigmoid(x: f32) -> f32 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
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
/// `x`, `pre`, `y`: `[B*T, C]`; `w`: `[C, 1, W]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_fwd(y: &mut [f32], pre: &mut [f32], x: &[f32], w: &[f32], t: usize, c: usize, width: usize, silu: bool) {
    y.par_chunks_mut(t * c).zip(pre.par_chunks_mut(t * c)).zip(x.par_chunks(t * c)).with_min_len(min_items(t * c)).for_each(
        |((y, pre), x)| {
            for s in 0..t {
                for ch in 0..c {
                    let mut acc = 0.0f32;
                    for j in 0..width {
                        if let Some(src) = (s + j).checked_sub(width - 1) {
                            acc += w[ch * width + j] * x[src * c + ch];
                        }
                    }
                    pre[s * c + ch] = acc;
                    y[s * c + ch] = if silu { acc * sigmoid(acc) } else { acc };
                }
            }
        },
    );
}

/// Backward of [`conv_fwd`]: writes `dx`, accumulates `dw`.
#[allow(clippy::too_many_arguments)]
pub fn conv_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    pre: &[f32],
    x: &[f32],
    w: &[f32],
    t: usize,
    c: usize,
    width: usize,
    silu: bool,
) {
    let rows = x.len() / c;
    // dpre = dy * silu'(pre) (dy itself without the activation)
    let dpre: Vec<f32> = dy
        .par_iter()
        .zip(pre.par_iter())
        .with_min_len(MIN_TASK_ELEMS)
        .map(|(&d, &p)| {
            if !silu {
                return d;
            }
            let s = sigmoid(p);
            d * s * (1.0 + p * (1.0 - s))
        })
        .collect();
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
