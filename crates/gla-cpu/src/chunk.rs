//! The chunked algorithm on the CPU (the GLA paper's hardware-efficient form), f32.
//!
//! Per (sequence, head), time is cut into chunks of `BT = 64` rows and each chunk into sub-chunks
//! of `BC = 16`. With `G` the **chunk-local** cumsum of `g` (f32, reset every chunk) and `Gl` its
//! last row:
//!
//! ```text
//! o_c    = (qs * exp(G)) @ h_c  +  A @ v_c                      qs = scale * q
//! A[r,c] = sum_k qs[r,k] k[c,k] exp(G[r,k] - G[c,k])    for c <= r (0 above the diagonal)
//! h_c+1  = diag(exp(Gl)) h_c  +  (k * exp(Gl - G))^T @ v_c
//! ```
//!
//! Every exponent is <= 0 (G is non-increasing inside a chunk). Off-diagonal 16x16 blocks of `A`
//! are one matmul per row block with a normaliser `gn` = G at the block's first row:
//! `(qs * exp(G - gn)) @ (k * exp(gn - G))^T`, both factors <= 1; the diagonal blocks are summed
//! elementwise. All matrix work goes through the gemm crate; exponentials through a vectorised
//! `exp` ([`crate::fexp`]).
//!
//! **Chunk states are materialised**: a sequential pass computes `h [NT, K, V]` (the state entering
//! each chunk, f32), then the output stage runs **in parallel over chunks** (on top of the
//! parallelism over sequences x heads), so a single long sequence with few heads still uses every
//! core. The cost is `NT*K*V*4` bytes per (sequence, head), the same `h` that fla keeps; the
//! backward needs `h` anyway and recomputes it the same way.
//!
//! Backward (derivation in docs/math/gla_chunk.md):
//!
//! ```text
//! dh_c  = gradient of the state leaving chunk c (reverse pass, seeded by dht):
//!         dh_c-1 = diag(exp(Gl)) dh_c + (qs * exp(G))^T @ do_c,      dh0 = the last value
//! dA    = tril(do_c @ v_c^T)
//! dv_c  = A^T @ do_c + (k * exp(Gl - G)) @ dh_c
//! dqs   = (do_c @ h_c^T) * exp(G)          + intra(dA, k)           dq = scale * dqs
//! dk    = (v_c @ dh_c^T) * exp(Gl - G)     + intra(dA^T, qs)
//! dg[r] = sum_{s >= r in chunk} (qs*dqs - k*dk)[s]  +  exp(Gl) * rowsum(h_c * dh_c)
//!                                                   +  sum_j k[j] * dk_inter[j]
//! ```
//!
//! `dg` is evaluated in an equivalent order that avoids cancellation (see `bwd_chunk`): the
//! diagonal pairs cancel exactly and are left out, and the inter part of `k*dk` is summed forward.

use gla_core::op::GlaOp;
use gla_core::{Backward, Forward, Grads, Inputs, Problem, Result, BC, BT};
use rayon::prelude::*;

use crate::driver::{self, SeqGradIn, SeqGrads, SeqIn, SeqOut};
use crate::fexp::{fexp, mul_exp_diff};
use crate::mat::{matmul, MatRef};

/// The chunked algorithm (`cpu-chunk`), f32 only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chunked;

/// Rows of chunk `c` in a sequence of `l` rows.
fn chunk_rows(c: usize, l: usize) -> std::ops::Range<usize> {
    c * BT..((c + 1) * BT).min(l)
}

/// Chunk-local inclusive cumsum of `g [L, K]`, reset at every chunk start.
fn local_cumsum(g: &[f32], l: usize, kd: usize) -> Vec<f32> {
    let mut gc = g.to_vec();
    for r in 0..l {
        if r % BT != 0 {
            let (prev, cur) = gc[(r - 1) * kd..(r + 1) * kd].split_at_mut(kd);
            for (c, p) in cur.iter_mut().zip(prev.iter()) {
                *c += *p;
            }
        }
    }
    gc
}

/// `out[r, :] = a[r, :] * exp(G[r, :] - base)` or `exp(base - G[r, :])` over `rows` rows.
fn scale_rows(out: &mut [f32], a: &[f32], gc: &[f32], base: &[f32], kd: usize, base_first: bool) {
    for ((o, a), g) in out.chunks_exact_mut(kd).zip(a.chunks_exact(kd)).zip(gc.chunks_exact(kd)) {
        if base_first {
            mul_exp_diff(o, a, base, g);
        } else {
            mul_exp_diff(o, a, g, base);
        }
    }
}

/// `prod *= decay` elementwise, flushing results below the smallest normal f32 to 0: a running
/// product of decays only shrinks, and denormal arithmetic would cost ~100x on x86 for terms too
/// small to change any sum they enter.
#[inline]
fn decay_step(prod: &mut [f32], decay: &[f32]) {
    let decay = &decay[..prod.len()];
    for (p, &d) in prod.iter_mut().zip(decay) {
        let x = *p * d;
        *p = if x < f32::MIN_POSITIVE { 0.0 } else { x };
    }
}

/// `sum_i a[i] b[i] c[i]`, with lane-wise partial sums over fixed-size blocks so it vectorises.
#[inline]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    const W: usize = 16;
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let mut acc = [0.0f32; W];
    let (ab, bb, cb) = (a.chunks_exact(W), b.chunks_exact(W), c.chunks_exact(W));
    let tail: f32 = ab.remainder().iter().zip(bb.remainder()).zip(cb.remainder()).map(|((x, y), z)| x * y * z).sum();
    for ((x, y), z) in ab.zip(bb).zip(cb) {
        let (x, y, z): (&[f32; W], &[f32; W], &[f32; W]) = (x.try_into().unwrap_or(&[0.0; W]), y.try_into().unwrap_or(&[0.0; W]), z.try_into().unwrap_or(&[0.0; W]));
        for j in 0..W {
            acc[j] += x[j] * y[j] * z[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sequential state pass: `h [NT, K, V]` (state entering each chunk) and the final state.
fn state_pass(x: &SeqIn<f32>, gc: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    let nt = l.div_ceil(BT);
    let mut s = x.h0.clone().unwrap_or_else(|| vec![0.0; kv]);
    let mut h = vec![0.0; nt * kv];
    let mut kg = vec![0.0; BT * kd];
    for c in 0..nt {
        let rows = chunk_rows(c, l);
        let m = rows.len();
        h[c * kv..(c + 1) * kv].copy_from_slice(&s);
        let gl = &gc[(rows.end - 1) * kd..rows.end * kd];
        scale_rows(&mut kg[..m * kd], &x.k[rows.start * kd..rows.end * kd], &gc[rows.start * kd..rows.end * kd], gl, kd, true);
        for i in 0..kd {
            let decay = fexp(gl[i]);
            s[i * vd..(i + 1) * vd].iter_mut().for_each(|e| *e *= decay);
        }
        matmul(&mut s, vd, MatRef::new(&kg[..m * kd], m, kd, kd).t(), MatRef::new(&x.v[rows.start * vd..rows.end * vd], m, vd, vd), true);
    }
    (h, s)
}

/// Intra-chunk scores `A [m, m]` (lower triangle incl. diagonal; zero above).
/// `qs`, `k`, `gc`, `eg = exp(g)`: the chunk's `[m, K]` rows.
///
/// Diagonal blocks use `exp(G[r] - G[c]) = prod_{s=c+1..r} exp(g[s])`, a running product of
/// per-step decays (each <= 1): one multiply per element instead of one `exp`, and more accurate
/// than a difference of two rounded cumsums.
fn intra_a(qs: &[f32], k: &[f32], gc: &[f32], eg: &[f32], m: usize, kd: usize) -> Vec<f32> {
    let mut a = vec![0.0; m * m];
    let mut qn = vec![0.0; BC * kd];
    let mut kn = vec![0.0; m * kd];
    let mut prod = vec![0.0; kd];
    for r0 in (0..m).step_by(BC) {
        let r1 = (r0 + BC).min(m);
        let gn = &gc[r0 * kd..(r0 + 1) * kd];
        if r0 > 0 {
            let qn = &mut qn[..(r1 - r0) * kd];
            scale_rows(qn, &qs[r0 * kd..r1 * kd], &gc[r0 * kd..r1 * kd], gn, kd, false);
            let kn = &mut kn[..r0 * kd];
            scale_rows(kn, &k[..r0 * kd], &gc[..r0 * kd], gn, kd, true);
            matmul(&mut a[r0 * m..], m, MatRef::new(qn, r1 - r0, kd, kd), MatRef::new(kn, r0, kd, kd).t(), false);
        }
        for c in r0..r1 {
            prod.fill(1.0);
            for r in c..r1 {
                if r > c {
                    decay_step(&mut prod, &eg[r * kd..(r + 1) * kd]);
                }
                a[r * m + c] = dot3(&qs[r * kd..(r + 1) * kd], &k[c * kd..(c + 1) * kd], &prod);
            }
        }
    }
    a
}

/// Per-step decays `exp(g)` of a chunk's `[m, K]` gate rows.
fn exp_rows(g: &[f32]) -> Vec<f32> {
    g.iter().map(|&x| fexp(x)).collect()
}

/// The chunk's queries times scale, `[m, K]`.
fn scaled_q(x: &SeqIn<f32>, rows: &std::ops::Range<usize>) -> Vec<f32> {
    x.q[rows.start * x.kd..rows.end * x.kd].iter().map(|&v| v * x.scale).collect()
}

/// Output of chunk `c` given the state `h_c [K, V]` entering it, into `o [m, V]`.
fn out_chunk(x: &SeqIn<f32>, gc: &[f32], h_c: &[f32], c: usize, o: &mut [f32]) {
    let (kd, vd) = (x.kd, x.vd);
    let rows = chunk_rows(c, x.l);
    let m = rows.len();
    let g_c = &gc[rows.start * kd..rows.end * kd];
    let qs = scaled_q(x, &rows);
    let mut qg = vec![0.0; m * kd];
    let zero = vec![0.0; kd];
    scale_rows(&mut qg, &qs, g_c, &zero, kd, false);
    matmul(o, vd, MatRef::new(&qg, m, kd, kd), MatRef::new(h_c, kd, vd, vd), false);
    let eg = exp_rows(&x.g[rows.start * kd..rows.end * kd]);
    let a = intra_a(&qs, &x.k[rows.start * kd..rows.end * kd], g_c, &eg, m, kd);
    matmul(o, vd, MatRef::new(&a, m, m, m), MatRef::new(&x.v[rows.start * vd..rows.end * vd], m, vd, vd), true);
}

fn forward_seq(x: &SeqIn<f32>) -> SeqOut<f32> {
    let kv = x.kd * x.vd;
    let gc = local_cumsum(&x.g, x.l, x.kd);
    let (h, ht) = state_pass(x, &gc);
    let mut o = vec![0.0; x.l * x.vd];
    o.par_chunks_mut(BT * x.vd).enumerate().for_each(|(c, oc)| out_chunk(x, &gc, &h[c * kv..(c + 1) * kv], c, oc));
    SeqOut { o, ht }
}

/// Per-chunk gradients `(dq, dk, dv, dg)`, rows of chunk `c`.
struct ChunkGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dg: Vec<f32>,
}

/// Intra-chunk part of the backward: adds `dA`'s contribution to `dqs` and `dk` (`[m, K]`),
/// except the diagonal pairs r == c, which the caller adds after computing `dg` (they cancel
/// exactly in `qs*dqs - k*dk`, and leaving them out keeps that difference free of cancellation).
#[allow(clippy::too_many_arguments)]
fn intra_bwd(qs: &[f32], k: &[f32], gc: &[f32], eg: &[f32], da: &[f32], m: usize, kd: usize, dqs: &mut [f32], dk: &mut [f32]) {
    let mut nbuf = vec![0.0; m * kd];
    let mut prod = vec![0.0; kd];
    let mut tmp = vec![0.0; BC * kd];
    for r0 in (0..m).step_by(BC) {
        let r1 = (r0 + BC).min(m);
        let mb = r1 - r0;
        // dqs rows of this block from earlier blocks; normaliser: first row of the block
        if r0 > 0 {
            let gn = &gc[r0 * kd..(r0 + 1) * kd];
            let kn = &mut nbuf[..r0 * kd];
            scale_rows(kn, &k[..r0 * kd], &gc[..r0 * kd], gn, kd, true);
            matmul(&mut tmp[..mb * kd], kd, MatRef::new(&da[r0 * m..], mb, r0, m), MatRef::new(kn, r0, kd, kd), false);
            for r in 0..mb {
                let row = &mut dqs[(r0 + r) * kd..(r0 + r + 1) * kd];
                let (t, g) = (&tmp[r * kd..(r + 1) * kd], &gc[(r0 + r) * kd..(r0 + r + 1) * kd]);
                for i in 0..kd {
                    row[i] += t[i] * fexp(g[i] - gn[i]);
                }
            }
        }
        // dk rows of this block from later blocks; normaliser: last row of the block
        if r1 < m {
            let gn = &gc[(r1 - 1) * kd..r1 * kd];
            let qn = &mut nbuf[..(m - r1) * kd];
            scale_rows(qn, &qs[r1 * kd..m * kd], &gc[r1 * kd..m * kd], gn, kd, false);
            matmul(&mut tmp[..mb * kd], kd, MatRef::new(&da[r1 * m + r0..], m - r1, mb, m).t(), MatRef::new(qn, m - r1, kd, kd), false);
            for c in 0..mb {
                let row = &mut dk[(r0 + c) * kd..(r0 + c + 1) * kd];
                let (t, g) = (&tmp[c * kd..(c + 1) * kd], &gc[(r0 + c) * kd..(r0 + c + 1) * kd]);
                for i in 0..kd {
                    row[i] += t[i] * fexp(gn[i] - g[i]);
                }
            }
        }
        // diagonal block, strictly below the diagonal (the caller adds r == c), with the running
        // product of decays as in `intra_a`
        for c in r0..r1 {
            prod.fill(1.0);
            let kc = &k[c * kd..(c + 1) * kd];
            for r in c + 1..r1 {
                decay_step(&mut prod, &eg[r * kd..(r + 1) * kd]);
                let w = da[r * m + c];
                let (qr, dq_r) = (&qs[r * kd..(r + 1) * kd], &mut dqs[r * kd..(r + 1) * kd]);
                for i in 0..kd {
                    dq_r[i] += w * kc[i] * prod[i];
                }
                let dk_c = &mut dk[c * kd..(c + 1) * kd];
                for i in 0..kd {
                    dk_c[i] += w * qr[i] * prod[i];
                }
            }
        }
    }
}

fn bwd_chunk(x: &SeqIn<f32>, d: &SeqGradIn<f32>, gc: &[f32], h_c: &[f32], dh_c: &[f32], c: usize) -> ChunkGrads {
    let (kd, vd) = (x.kd, x.vd);
    let rows = chunk_rows(c, x.l);
    let m = rows.len();
    let (k, v, d_o) = (&x.k[rows.start * kd..rows.end * kd], &x.v[rows.start * vd..rows.end * vd], &d.d_o[rows.start * vd..rows.end * vd]);
    let g_c = &gc[rows.start * kd..rows.end * kd];
    let gl = &g_c[(m - 1) * kd..];
    let qs = scaled_q(x, &rows);
    let eg = exp_rows(&x.g[rows.start * kd..rows.end * kd]);
    let a = intra_a(&qs, k, g_c, &eg, m, kd);

    // dA = tril(do @ v^T)
    let mut da = vec![0.0; m * m];
    matmul(&mut da, m, MatRef::new(d_o, m, vd, vd), MatRef::new(v, m, vd, vd).t(), false);
    for r in 0..m {
        da[r * m + r + 1..(r + 1) * m].fill(0.0);
    }

    // dv = A^T @ do + (k * exp(Gl - G)) @ dh_c
    let mut kg = vec![0.0; m * kd];
    scale_rows(&mut kg, k, g_c, gl, kd, true);
    let mut dv = vec![0.0; m * vd];
    matmul(&mut dv, vd, MatRef::new(&a, m, m, m).t(), MatRef::new(d_o, m, vd, vd), false);
    matmul(&mut dv, vd, MatRef::new(&kg, m, kd, kd), MatRef::new(dh_c, kd, vd, vd), true);

    // inter parts of dqs and dk
    let mut dqs = vec![0.0; m * kd];
    matmul(&mut dqs, kd, MatRef::new(d_o, m, vd, vd), MatRef::new(h_c, kd, vd, vd).t(), false);
    let zero = vec![0.0; kd];
    for (row, g) in dqs.chunks_exact_mut(kd).zip(g_c.chunks_exact(kd)) {
        let orig = row.to_vec();
        mul_exp_diff(row, &orig, g, &zero);
    }
    let mut dk = vec![0.0; m * kd];
    matmul(&mut dk, kd, MatRef::new(v, m, vd, vd), MatRef::new(dh_c, kd, vd, vd).t(), false);
    for (row, g) in dk.chunks_exact_mut(kd).zip(g_c.chunks_exact(kd)) {
        let orig = row.to_vec();
        mul_exp_diff(row, &orig, gl, g);
    }

    // dg[r] = sum_{s>=r} (qs*dqs - k*dk)[s] + exp(Gl)*rowsum(h_c*dh_c) + sum_j (k*dk_inter)[j].
    // The inter part of -k*dk cancels the last sum for j >= r, so it is summed directly over j < r
    // (an exclusive cumsum) and kept out of the reverse cumsum: no large terms that cancel.
    let mut dg = vec![0.0; m * kd];
    let mut fwd_sum = vec![0.0; kd];
    for i in 0..kd {
        let hd: f32 = h_c[i * vd..(i + 1) * vd].iter().zip(&dh_c[i * vd..(i + 1) * vd]).map(|(a, b)| a * b).sum();
        fwd_sum[i] = fexp(gl[i]) * hd;
    }
    for r in 0..m {
        for i in 0..kd {
            dg[r * kd + i] = fwd_sum[i];
            fwd_sum[i] += k[r * kd + i] * dk[r * kd + i];
        }
    }
    let dk_inter = dk;
    let mut dk = vec![0.0; m * kd];
    intra_bwd(&qs, k, g_c, &eg, &da, m, kd, &mut dqs, &mut dk);
    let mut run = vec![0.0; kd];
    for r in (0..m).rev() {
        for i in 0..kd {
            run[i] += qs[r * kd + i] * dqs[r * kd + i] - k[r * kd + i] * dk[r * kd + i];
            dg[r * kd + i] += run[i];
        }
    }
    // now the diagonal pairs and the inter part of dk
    for r in 0..m {
        let w = da[r * m + r];
        for i in 0..kd {
            dqs[r * kd + i] += w * k[r * kd + i];
            dk[r * kd + i] += w * qs[r * kd + i] + dk_inter[r * kd + i];
        }
    }
    let dq = dqs.iter().map(|&v| v * x.scale).collect();
    ChunkGrads { dq, dk, dv, dg }
}

fn backward_seq(x: &SeqIn<f32>, d: &SeqGradIn<f32>) -> SeqGrads<f32> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    let nt = l.div_ceil(BT);
    let gc = local_cumsum(&x.g, l, kd);
    let (h, _) = state_pass(x, &gc);

    // reverse pass over chunks: dh[c] = gradient of the state leaving chunk c
    let mut ds = d.dht.clone().unwrap_or_else(|| vec![0.0; kv]);
    let mut dh = vec![0.0; nt * kv];
    let mut qg = vec![0.0; BT * kd];
    for c in (0..nt).rev() {
        let rows = chunk_rows(c, l);
        let m = rows.len();
        dh[c * kv..(c + 1) * kv].copy_from_slice(&ds);
        let g_c = &gc[rows.start * kd..rows.end * kd];
        let gl = &g_c[(m - 1) * kd..];
        for i in 0..kd {
            let decay = fexp(gl[i]);
            ds[i * vd..(i + 1) * vd].iter_mut().for_each(|e| *e *= decay);
        }
        let qs = scaled_q(x, &rows);
        let zero = vec![0.0; kd];
        scale_rows(&mut qg[..m * kd], &qs, g_c, &zero, kd, false);
        matmul(&mut ds, vd, MatRef::new(&qg[..m * kd], m, kd, kd).t(), MatRef::new(&d.d_o[rows.start * vd..rows.end * vd], m, vd, vd), true);
    }

    let parts: Vec<ChunkGrads> = (0..nt)
        .into_par_iter()
        .map(|c| bwd_chunk(x, d, &gc, &h[c * kv..(c + 1) * kv], &dh[c * kv..(c + 1) * kv], c))
        .collect();
    let cat = |f: fn(&ChunkGrads) -> &Vec<f32>| parts.iter().flat_map(|p| f(p).iter().copied()).collect::<Vec<f32>>();
    SeqGrads { dq: cat(|p| &p.dq), dk: cat(|p| &p.dk), dv: cat(|p| &p.dv), dg: cat(|p| &p.dg), dh0: ds }
}

impl GlaOp<f32> for Chunked {
    fn name(&self) -> &'static str {
        "cpu-chunk"
    }
    fn forward(&self, p: &Problem, x: &Inputs<'_, f32>, output_final_state: bool) -> Result<Forward<f32>> {
        driver::forward(self.name(), p, x, output_final_state, forward_seq)
    }
    fn backward(&self, p: &Problem, x: &Inputs<'_, f32>, d: &Backward<'_, f32>) -> Result<Grads<f32>> {
        driver::backward(self.name(), p, x, d, backward_seq)
    }
}
