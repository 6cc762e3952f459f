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
//! elementwise with running products of per-step decays. When the chunk has the `exp(G)` table
//! below, `A` is instead ONE product `(qs * exp(G)) @ (k / exp(G))^T` with the upper triangle
//! dropped ([`intra_a_table`]): the table's range guarantees every factor is a normal float.
//! All matrix work goes through the gemm crate; exponentials through a vectorised `exp`
//! ([`crate::fexp`]).
//!
//! **Decay factors**: every factor is `exp(G[a] - G[b])` with `a` at or after `b`, so at most 1.
//! When a chunk's cumsum stays above -80 in every channel (true for real layers, whose gates are
//! `logsigmoid(x) / 16`), they come from a table of `exp(G)` and its inverse, `exp(G[a]) *
//! (1 / exp(G[b]))`: one exponential per element of the chunk instead of up to five, and both
//! table entries are normal floats (no overflow, no underflow), so the product keeps f32
//! accuracy. Below -80, `exp(G)` could underflow and the inverse overflow, so such a chunk takes
//! one `exp(G[a] - G[b])` per factor, whose argument is never positive.
//!
//! **Chunk states** ([`Schedule`]): with at least as many (sequence, head) pairs as threads, the
//! forward walks each sequence's chunks once, output then state update, with the state in cache
//! and nothing materialised. With fewer pairs (one long sequence, few heads) it materialises
//! `h [NT, K, V]` (the state entering each chunk, f32) in a sequential pass and then runs the
//! output stage **in parallel over chunks**, so every core works; the cost is `NT*K*V*4` bytes per
//! (sequence, head), the same `h` that fla keeps. The backward always materialises `h` and the
//! state gradients `dh` (two sequential passes), then runs the per-chunk gradients in parallel.
//!
//! Inputs are read in place; each chunk's rows are copied into small contiguous `[64, K]` buffers
//! (cache-resident), never a whole tensor.
//!
//! Backward (derivation in `docs/math/gla_chunk.md`):
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

use crate::driver::{self, SeqGradIn, SeqIn, SeqOut, SeqSinks, Validation};
use crate::fexp::fexp;
use crate::mat::{matmul, MatRef};
use gla_core::op::{first_bad, Check};

/// How the chunked forward spreads work over threads (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// `PerSequence` when there are at least as many (sequence, head) pairs as rayon threads,
    /// else `PerChunk`.
    #[default]
    Auto,
    /// Parallel over (sequence, head) only; one pass over each sequence, states kept in cache.
    PerSequence,
    /// Materialise the chunk states, then the output stage in parallel over chunks too.
    PerChunk,
}

/// The chunked algorithm (`cpu-chunk`), f32 only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chunked {
    /// Thread schedule of the forward; every schedule gives the same result bit for bit.
    pub schedule: Schedule,
}

/// Rows of chunk `c` in a sequence of `l` rows.
fn chunk_rows(c: usize, l: usize) -> std::ops::Range<usize> {
    c * BT..((c + 1) * BT).min(l)
}

/// One chunk's rows, copied out of the strided inputs into contiguous `[m, *]` buffers.
struct Chunk {
    /// Rows m (<= BT).
    m: usize,
    /// `[m, K]`: scale * q
    qs: Vec<f32>,
    /// `[m, K]`
    k: Vec<f32>,
    /// `[m, V]`
    v: Vec<f32>,
    /// `[m, K]`: chunk-local inclusive cumsum of g
    gc: Vec<f32>,
    /// `[m, K]`: per-step decays exp(g)
    eg: Vec<f32>,
    /// `exp(G)` and `1 / exp(G)`, `[m, K]` each, when the chunk's total decay stays above
    /// [`TABLE_MIN_G`] in every channel (see [`Chunk::decay_from`]).
    table: Option<(Vec<f32>, Vec<f32>)>,
}

/// Below this chunk-local cumsum, `exp(G)` could leave the normal f32 range, so the chunk falls
/// back to one exponential per decay factor (exp(-80) = 1.8e-35; its inverse 5.5e34 < f32::MAX).
const TABLE_MIN_G: f32 = -80.0;

impl Chunk {
    /// Copies chunk `c` out of the inputs, checking values on the way (see
    /// [`Validation::InLoad`]): one pass per row and tensor, while the row is in cache.
    fn load(x: &SeqIn<'_, f32>, c: usize) -> Self {
        let (kd, vd) = (x.kd, x.vd);
        let rows = chunk_rows(c, x.l);
        let m = rows.len();
        let (mut qs, mut k, mut v) = (Vec::with_capacity(m * kd), Vec::with_capacity(m * kd), Vec::with_capacity(m * vd));
        let (mut gc, mut eg) = (vec![0.0; m * kd], vec![0.0; m * kd]);
        let ok = |row: &[f32], check| first_bad(row, check).is_none();
        let mut good = true;
        for (r, t) in rows.clone().enumerate() {
            let (q_t, k_t, v_t) = (x.q.row(t), x.k.row(t), x.v.row(t));
            good &= ok(q_t, Check::Finite) & ok(k_t, Check::Finite) & ok(v_t, Check::Finite);
            qs.extend(q_t.iter().map(|&e| e * x.scale));
            k.extend_from_slice(k_t);
            v.extend_from_slice(v_t);
            let (prev, cur) = gc[r.saturating_sub(1) * kd..(r + 1) * kd].split_at_mut(if r == 0 { 0 } else { kd });
            x.g_row(t, cur);
            good &= ok(cur, Check::Gate);
            cur.iter_mut().zip(prev.iter()).for_each(|(c, p)| *c += *p);
        }
        if !good {
            x.flag_bad();
        }
        // G does not increase inside a chunk, so its last row holds every channel's minimum
        let table_ok = m > 0 && gc[(m - 1) * kd..m * kd].iter().fold(true, |ok, &g| ok & (g > TABLE_MIN_G));
        let table = if table_ok {
            // one pass: exp(G), its inverse, and the per-step decays exp(g[r]) = exp(G[r]) / exp(G[r-1])
            let (mut e, mut inv) = (vec![0.0f32; m * kd], vec![0.0f32; m * kd]);
            for r in 0..m {
                let (g, er) = (&gc[r * kd..(r + 1) * kd], &mut e[r * kd..(r + 1) * kd]);
                for i in 0..kd {
                    er[i] = fexp(g[i]);
                }
                let (done, cur) = inv.split_at_mut(r * kd);
                let ir = &mut cur[..kd];
                for i in 0..kd {
                    ir[i] = 1.0 / er[i];
                }
                let egr = &mut eg[r * kd..(r + 1) * kd];
                if r == 0 {
                    egr.copy_from_slice(er);
                } else {
                    let ip = &done[(r - 1) * kd..r * kd];
                    for i in 0..kd {
                        egr[i] = er[i] * ip[i];
                    }
                }
            }
            Some((e, inv))
        } else {
            // exp(g) of each step from the gate rows themselves (exact; no table)
            for (r, t) in rows.enumerate() {
                let egr = &mut eg[r * kd..(r + 1) * kd];
                x.g_row(t, egr);
                egr.iter_mut().for_each(|g| *g = fexp(*g));
            }
            None
        };
        Self { m, qs, k, v, gc, eg, table }
    }

    /// The decay factors of row `r` relative to `base`: `exp(G[r] - G[base])` when `to` is
    /// false (`base` at or before `r`; `None`: `G = 0` there), `exp(G[base] - G[r])` when `to`
    /// is true (`base` at or after `r`). Every exponent is <= 0.
    #[inline]
    fn factors(&self, r: usize, base: Option<usize>, to: bool, kd: usize) -> Factors<'_> {
        fn row(v: &[f32], i: usize, kd: usize) -> &[f32] {
            &v[i * kd..(i + 1) * kd]
        }
        match (&self.table, base, to) {
            (Some((e, _)), None, _) => Factors::One(row(e, r, kd)),
            (Some((e, inv)), Some(b), false) => Factors::Two(row(e, r, kd), row(inv, b, kd)),
            (Some((e, inv)), Some(b), true) => Factors::Two(row(e, b, kd), row(inv, r, kd)),
            (None, None, _) => Factors::Exp(row(&self.gc, r, kd)),
            (None, Some(b), false) => Factors::ExpDiff(row(&self.gc, r, kd), row(&self.gc, b, kd)),
            (None, Some(b), true) => Factors::ExpDiff(row(&self.gc, b, kd), row(&self.gc, r, kd)),
        }
    }

    /// `x[i, :] *= exp(G[rows.start + i, :] - G[base, :])` (`base` `None`: `G = 0` there), the
    /// decay from `base` to each row; `base` is at or before the rows, so every exponent is <= 0.
    /// From the table when there is one (two multiplies), else one exponential per element.
    fn decay_from(&self, x: &mut [f32], rows: std::ops::Range<usize>, base: Option<usize>, kd: usize) {
        for (xr, r) in x.chunks_exact_mut(kd).zip(rows) {
            self.factors(r, base, false, kd).scale(xr);
        }
    }

    /// `x[i, :] *= exp(G[base, :] - G[rows.start + i, :])`, the decay from each row to `base`,
    /// which is at or after the rows (exponents <= 0).
    fn decay_to(&self, x: &mut [f32], rows: std::ops::Range<usize>, base: usize, kd: usize) {
        for (xr, r) in x.chunks_exact_mut(kd).zip(rows) {
            self.factors(r, Some(base), true, kd).scale(xr);
        }
    }

    /// `src` rows `rows` times their decay (as [`Chunk::decay_from`] / [`Chunk::decay_to`]
    /// with `to`), written into a new buffer in one pass (no copy first).
    fn decayed(&self, src: &[f32], rows: std::ops::Range<usize>, base: Option<usize>, to: bool, kd: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows.len() * kd];
        for ((o, x), r) in out.chunks_exact_mut(kd).zip(src[rows.start * kd..rows.end * kd].chunks_exact(kd)).zip(rows) {
            self.factors(r, base, to, kd).scaled_into(o, x);
        }
        out
    }

    /// `exp(G[r, :])`, `[K]`.
    fn exp_g(&self, r: usize, kd: usize) -> Vec<f32> {
        match &self.table {
            Some((e, _)) => e[r * kd..(r + 1) * kd].to_vec(),
            None => self.gc[r * kd..(r + 1) * kd].iter().map(|&g| fexp(g)).collect(),
        }
    }
    /// `qs * exp(G)`, `[m, K]`.
    fn qg(&self, kd: usize) -> Vec<f32> {
        self.decayed(&self.qs, 0..self.m, None, false, kd)
    }
    /// `k * exp(Gl - G)`, `[m, K]`.
    fn kg(&self, kd: usize) -> Vec<f32> {
        self.decayed(&self.k, 0..self.m, Some(self.m - 1), true, kd)
    }
}

/// One row's decay factors (see [`Chunk::factors`]).
enum Factors<'a> {
    /// `e`
    One(&'a [f32]),
    /// `e * inv`
    Two(&'a [f32], &'a [f32]),
    /// `exp(g)`
    Exp(&'a [f32]),
    /// `exp(a - b)`
    ExpDiff(&'a [f32], &'a [f32]),
}

impl Factors<'_> {
    /// `x *= factors`.
    #[inline]
    fn scale(&self, x: &mut [f32]) {
        let n = x.len();
        match *self {
            Factors::One(e) => x.iter_mut().zip(&e[..n]).for_each(|(x, &f)| *x *= f),
            Factors::Two(e, inv) => {
                let (e, inv) = (&e[..n], &inv[..n]);
                for i in 0..n {
                    x[i] *= e[i] * inv[i];
                }
            }
            Factors::Exp(g) => x.iter_mut().zip(&g[..n]).for_each(|(x, &g)| *x *= fexp(g)),
            Factors::ExpDiff(a, b) => {
                let (a, b) = (&a[..n], &b[..n]);
                for i in 0..n {
                    x[i] *= fexp(a[i] - b[i]);
                }
            }
        }
    }
    /// `out = x * factors`.
    #[inline]
    fn scaled_into(&self, out: &mut [f32], x: &[f32]) {
        let n = out.len();
        let x = &x[..n];
        match *self {
            Factors::One(e) => {
                let e = &e[..n];
                for i in 0..n {
                    out[i] = x[i] * e[i];
                }
            }
            Factors::Two(e, inv) => {
                let (e, inv) = (&e[..n], &inv[..n]);
                for i in 0..n {
                    out[i] = x[i] * (e[i] * inv[i]);
                }
            }
            Factors::Exp(g) => {
                let g = &g[..n];
                for i in 0..n {
                    out[i] = x[i] * fexp(g[i]);
                }
            }
            Factors::ExpDiff(a, b) => {
                let (a, b) = (&a[..n], &b[..n]);
                for i in 0..n {
                    out[i] = x[i] * fexp(a[i] - b[i]);
                }
            }
        }
    }
}

/// `s [K, V] = diag(exp(Gl)) s + (k * exp(Gl - G))^T @ v`: the state leaving the chunk.
fn state_update(ch: &Chunk, s: &mut [f32], kd: usize, vd: usize) {
    for (i, decay) in ch.exp_g(ch.m - 1, kd).into_iter().enumerate() {
        s[i * vd..(i + 1) * vd].iter_mut().for_each(|e| *e *= decay);
    }
    let kg = ch.kg(kd);
    matmul(s, vd, MatRef::new(&kg, ch.m, kd, kd).t(), MatRef::new(&ch.v, ch.m, vd, vd), true);
}

/// The chunk's output `o [m, V] = (qs * exp(G)) @ h_c + A @ v` given the state `h_c [K, V]`
/// entering it.
fn out_chunk(ch: &Chunk, h_c: &[f32], kd: usize, vd: usize, o: &mut [f32]) {
    let m = ch.m;
    let qg = ch.qg(kd);
    matmul(o, vd, MatRef::new(&qg, m, kd, kd), MatRef::new(h_c, kd, vd, vd), false);
    let a = scores(ch, &qg, kd);
    matmul(o, vd, MatRef::new(&a, m, m, m), MatRef::new(&ch.v, m, vd, vd), true);
}

/// The intra-chunk scores `A [m, m]`: one product through the `exp(G)` table when the chunk has
/// one ([`intra_a_table`]), else by sub-chunk blocks ([`intra_a`]). `qg` is `qs * exp(G)`.
fn scores(ch: &Chunk, qg: &[f32], kd: usize) -> Vec<f32> {
    match &ch.table {
        Some((_, inv)) => intra_a_table(ch, qg, inv, kd),
        None => intra_a(ch, kd),
    }
}

/// Intra-chunk scores from the `exp(G)` table in ONE product: `A = (qs * exp(G)) @ (k / exp(G))^T`,
/// lower triangle kept. Each term is `qs[r] k[c] exp(G[r]) (1 / exp(G[c]))`, the decay
/// `exp(G[r] - G[c])` as a product of two table entries, as the off-diagonal blocks of
/// [`intra_a`] use it; the table exists only when every `exp(G)` and its inverse are normal
/// floats (chunk cumsum above -80), so no factor overflows and the kept terms (`r >= c`, decay
/// <= 1) carry f32 accuracy, except that `qs * exp(G)` leaves the normal range when a query is
/// tiny and the decay near the table's limit (|q| < 1e-3 with G near -80): such rows lose
/// relative precision (1e-3 at |q| = 1e-7), on outputs whose size is of the order of q itself.
/// The discarded upper triangle may hold large values (growth
/// `exp(G[r] - G[c]) > 1`, even inf): they are overwritten with zeros, never used. One 64x64xK
/// product replaces three block products, four elementwise diagonal blocks and their copies.
fn intra_a_table(ch: &Chunk, qg: &[f32], inv: &[f32], kd: usize) -> Vec<f32> {
    let m = ch.m;
    let kinv: Vec<f32> = ch.k.iter().zip(&inv[..m * kd]).map(|(&k, &i)| k * i).collect();
    // 1 / exp(G) reaches 5.5e34 at the table's limit: a key above ~6e3 in such a channel would
    // overflow; the blocks (every factor <= 1) take those chunks
    if first_bad(&kinv, Check::Finite).is_some() {
        return intra_a(ch, kd);
    }
    let mut a = vec![0.0; m * m];
    matmul(&mut a, m, MatRef::new(qg, m, kd, kd), MatRef::new(&kinv, m, kd, kd).t(), false);
    for r in 0..m {
        a[r * m + r + 1..(r + 1) * m].fill(0.0);
    }
    a
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

/// One step of a diagonal-block column: `prod *= decay`, then `sum_i q[i] k[i] prod[i]`, in one
/// pass with lane-wise partial sums so it vectorises. With `FLUSH`, products below the smallest
/// normal f32 become 0 (as in [`decay_step`]); callers skip that when the block's decay cannot
/// reach the denormal range.
#[inline]
fn step_dot<const FLUSH: bool>(prod: &mut [f32], decay: &[f32], q: &[f32], k: &[f32]) -> f32 {
    const W: usize = 16;
    let n = prod.len();
    let (decay, q, k) = (&decay[..n], &q[..n], &k[..n]);
    let step = |p: f32, d: f32| {
        let x = p * d;
        if FLUSH && x < f32::MIN_POSITIVE {
            0.0
        } else {
            x
        }
    };
    let mut acc = [0.0f32; W];
    let mut tail = 0.0;
    for (((p, d), q), k) in prod.chunks_mut(W).zip(decay.chunks(W)).zip(q.chunks(W)).zip(k.chunks(W)) {
        if let (Ok(p), Ok(d), Ok(q), Ok(k)) =
            (<&mut [f32; W]>::try_from(&mut *p), <&[f32; W]>::try_from(d), <&[f32; W]>::try_from(q), <&[f32; W]>::try_from(k))
        {
            for j in 0..W {
                p[j] = step(p[j], d[j]);
                acc[j] += q[j] * k[j] * p[j];
            }
        } else {
            for j in 0..p.len() {
                p[j] = step(p[j], d[j]);
                tail += q[j] * k[j] * p[j];
            }
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i a[i] b[i]` with lane-wise partial sums (a plain iterator sum is one serial chain of
/// adds: at K = V = 128 that alone cost ~20 us per chunk of the backward).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 16;
    let b = &b[..a.len()];
    let mut acc = [0.0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for j in 0..W {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Whether running decay products over rows `r0..r1` stay normal floats: the block's total decay
/// `G[r1-1] - G[r0]` is above -80 in every channel (exp(-80) = 1.8e-35 > 1.2e-38).
fn no_denormals(gc: &[f32], r0: usize, r1: usize, kd: usize) -> bool {
    let (first, last) = (&gc[r0 * kd..(r0 + 1) * kd], &gc[(r1 - 1) * kd..r1 * kd]);
    first.iter().zip(last).fold(true, |ok, (&a, &b)| ok & (b - a > -80.0))
}

/// Intra-chunk scores `A [m, m]` of a chunk (lower triangle incl. diagonal; zero above).
///
/// Diagonal blocks use `exp(G[r] - G[c]) = prod_{s=c+1..r} exp(g[s])`, a running product of
/// per-step decays (each <= 1): one multiply per element instead of one `exp`, and more accurate
/// than a difference of two rounded cumsums.
fn intra_a(ch: &Chunk, kd: usize) -> Vec<f32> {
    let (m, qs, k, eg) = (ch.m, &ch.qs, &ch.k, &ch.eg);
    let mut a = vec![0.0; m * m];
    let mut prod = vec![0.0; kd];
    let ones = vec![1.0; kd];
    for r0 in (0..m).step_by(BC) {
        let r1 = (r0 + BC).min(m);
        if r0 > 0 {
            // normaliser: the block's first row
            let qn = ch.decayed(qs, r0..r1, Some(r0), false, kd);
            let kn = ch.decayed(k, 0..r0, Some(r0), true, kd);
            matmul(&mut a[r0 * m..], m, MatRef::new(&qn, r1 - r0, kd, kd), MatRef::new(&kn, r0, kd, kd).t(), false);
        }
        let step = if no_denormals(&ch.gc, r0, r1, kd) { step_dot::<false> } else { step_dot::<true> };
        for c in r0..r1 {
            prod.fill(1.0);
            // exp(G[c] - G[c]) = 1, so the first step multiplies by ones
            let kc = &k[c * kd..(c + 1) * kd];
            a[c * m + c] = step(&mut prod, &ones, &qs[c * kd..(c + 1) * kd], kc);
            for r in c + 1..r1 {
                a[r * m + c] = step(&mut prod, &eg[r * kd..(r + 1) * kd], &qs[r * kd..(r + 1) * kd], kc);
            }
        }
    }
    a
}

/// [`intra_bwd`] through the `exp(G)` table in two products, as [`intra_a_table`] does for the
/// forward: with `D` = `dA` strictly below the diagonal,
/// `dqs += ((D @ (k / exp(G))) * exp(G)` and `dk += (D^T @ (qs * exp(G))) / exp(G)`, row by row.
/// Every kept term is `dA qs k exp(G[r] - G[c])`, `r > c`, a decay <= 1 split into two table
/// factors. Returns false, having changed nothing, when an intermediate is not finite (a large
/// key times `1 / exp(G)` near the table's limit); the caller then takes the blocks.
#[allow(clippy::too_many_arguments)]
fn intra_bwd_table(ch: &Chunk, da: &[f32], qg: &[f32], e: &[f32], inv: &[f32], kd: usize, dqs: &mut [f32], dk: &mut [f32]) -> bool {
    let m = ch.m;
    let mut d = da[..m * m].to_vec();
    for r in 0..m {
        d[r * m + r] = 0.0;
    }
    let kinv: Vec<f32> = ch.k.iter().zip(&inv[..m * kd]).map(|(&k, &i)| k * i).collect();
    if first_bad(&kinv, Check::Finite).is_some() {
        return false;
    }
    let (mut t1, mut t2) = (vec![0.0; m * kd], vec![0.0; m * kd]);
    matmul(&mut t1, kd, MatRef::new(&d, m, m, m), MatRef::new(&kinv, m, kd, kd), false);
    matmul(&mut t2, kd, MatRef::new(&d, m, m, m).t(), MatRef::new(qg, m, kd, kd), false);
    if first_bad(&t1, Check::Finite).is_some() || first_bad(&t2, Check::Finite).is_some() {
        return false;
    }
    for r in 0..m {
        let (er, ir) = (&e[r * kd..(r + 1) * kd], &inv[r * kd..(r + 1) * kd]);
        let (q_r, k_r) = (&mut dqs[r * kd..(r + 1) * kd], &mut dk[r * kd..(r + 1) * kd]);
        let (t1r, t2r) = (&t1[r * kd..(r + 1) * kd], &t2[r * kd..(r + 1) * kd]);
        for i in 0..kd {
            q_r[i] += t1r[i] * er[i];
            k_r[i] += t2r[i] * ir[i];
        }
    }
    true
}

/// Intra-chunk part of the backward: adds `dA`'s contribution to `dqs` and `dk` (`[m, K]`),
/// except the diagonal pairs r == c, which the caller adds after computing `dg` (they cancel
/// exactly in `qs*dqs - k*dk`, and leaving them out keeps that difference free of cancellation).
fn intra_bwd(ch: &Chunk, da: &[f32], kd: usize, dqs: &mut [f32], dk: &mut [f32]) {
    let (m, qs, k, eg) = (ch.m, &ch.qs, &ch.k, &ch.eg);
    let mut prod = vec![0.0; kd];
    for r0 in (0..m).step_by(BC) {
        let r1 = (r0 + BC).min(m);
        let mb = r1 - r0;
        // dqs rows of this block from earlier blocks; normaliser: first row of the block
        if r0 > 0 {
            let kn = ch.decayed(k, 0..r0, Some(r0), true, kd);
            let mut tmp = vec![0.0; mb * kd];
            matmul(&mut tmp, kd, MatRef::new(&da[r0 * m..], mb, r0, m), MatRef::new(&kn, r0, kd, kd), false);
            ch.decay_from(&mut tmp, r0..r1, Some(r0), kd);
            dqs[r0 * kd..r1 * kd].iter_mut().zip(&tmp).for_each(|(d, t)| *d += t);
        }
        // dk rows of this block from later blocks; normaliser: last row of the block
        if r1 < m {
            let qn = ch.decayed(qs, r1..m, Some(r1 - 1), false, kd);
            let mut tmp = vec![0.0; mb * kd];
            matmul(&mut tmp, kd, MatRef::new(&da[r1 * m + r0..], m - r1, mb, m).t(), MatRef::new(&qn, m - r1, kd, kd), false);
            ch.decay_to(&mut tmp, r0..r1, r1 - 1, kd);
            dk[r0 * kd..r1 * kd].iter_mut().zip(&tmp).for_each(|(d, t)| *d += t);
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

/// Heads per task of the per-sequence forward: the largest power of two dividing H that still
/// leaves a task per thread and keeps the group's states (`group x K x V` f32) within
/// [`LOCKSTEP_STATE_BYTES`] of cache.
fn lockstep_heads(p: &Problem, threads: usize) -> usize {
    let kv_bytes = p.k() * p.v() * 4;
    let mut g = 1;
    while p.h().is_multiple_of(2 * g) && 2 * g * kv_bytes <= LOCKSTEP_STATE_BYTES && p.n() * p.h() / (2 * g) >= threads {
        g *= 2;
    }
    g
}

/// Outputs of at least this size are written with streaming stores (no read of each
/// destination line first; 5% of the forward at the benchmark shape, 16 MB of output).
const STREAM_OUTPUT_BYTES: usize = 8 << 20;

/// Cache budget for the states of heads walked in lockstep (a fraction of a 1-2 MB L2).
const LOCKSTEP_STATE_BYTES: usize = 256 << 10;

/// The per-sequence forward over several heads of one sequence in lockstep: chunk by chunk, each
/// head in turn. The heads' rows are adjacent in memory (`[T, H, D]` layout), so each chunk's
/// reads cover `heads x D` contiguous values per row instead of `D` at a stride of `H x D`
/// (measured: strided reads cost ~25% at H = 4). A group of one head is the plain one-pass
/// forward; every group size gives the same numbers bit for bit.
fn forward_lockstep(xs: &[SeqIn<'_, f32>], outs: &[SeqOut<'_, f32>]) -> Vec<Vec<f32>> {
    let (kd, vd) = (xs[0].kd, xs[0].vd);
    let nt = xs[0].l.div_ceil(BT);
    let mut states: Vec<Vec<f32>> = xs.iter().map(SeqIn::state0).collect();
    let mut o = vec![0.0; BT * vd];
    for c in 0..nt {
        for ((x, out), s) in xs.iter().zip(outs).zip(&mut states) {
            // the same head's next chunk arrives while this one computes, a quarter at a time
            // between the stages (a burst of prefetches stalls once the fill buffers are full)
            let pf = |part: usize| x.prefetch((c + 1) * BT + part * BT / 4, BT / 4);
            pf(0);
            let ch = Chunk::load(x, c);
            pf(1);
            let o = &mut o[..ch.m * vd];
            out_chunk(&ch, s, kd, vd, o);
            pf(2);
            // SAFETY: each chunk's rows of each head are written once, by this thread.
            unsafe { out.write_o(c * BT, o) };
            pf(3);
            state_update(&ch, s, kd, vd);
        }
    }
    states
}

/// The forward of one (sequence, head) with its chunk states materialised and the output stage
/// parallel over chunks (the per-chunk schedule; the one-pass schedule is [`forward_lockstep`]).
fn forward_per_chunk(x: &SeqIn<'_, f32>, out: &SeqOut<'_, f32>) -> Vec<f32> {
    let (kd, vd, kv) = (x.kd, x.vd, x.kd * x.vd);
    let nt = x.l.div_ceil(BT);
    let mut s = x.state0();
    let mut h = vec![0.0; nt * kv];
    for c in 0..nt {
        h[c * kv..(c + 1) * kv].copy_from_slice(&s);
        state_update(&Chunk::load(x, c), &mut s, kd, vd);
    }
    (0..nt).into_par_iter().for_each(|c| {
        let ch = Chunk::load(x, c);
        let mut o = vec![0.0; ch.m * vd];
        out_chunk(&ch, &h[c * kv..(c + 1) * kv], kd, vd, &mut o);
        // SAFETY: chunks cover disjoint rows; each is written by exactly one task.
        unsafe { out.write_o(c * BT, &o) };
    });
    s
}

/// Gradients of one chunk, written through `out`; `h_c` is the state entering the chunk and
/// `dh_c` the gradient of the state leaving it.
fn bwd_chunk(x: &SeqIn<'_, f32>, d: &SeqGradIn<'_, f32>, h_c: &[f32], dh_c: &[f32], c: usize, out: &SeqSinks<'_, f32>) {
    let (kd, vd) = (x.kd, x.vd);
    let ch = Chunk::load(x, c);
    let m = ch.m;
    let (qs, k, v) = (&ch.qs, &ch.k, &ch.v);
    let mut d_o = vec![0.0; m * vd];
    d.d_o.copy_to(c * BT, &mut d_o);
    let qg = ch.qg(kd);
    let a = scores(&ch, &qg, kd);

    // dA = tril(do @ v^T)
    let mut da = vec![0.0; m * m];
    matmul(&mut da, m, MatRef::new(&d_o, m, vd, vd), MatRef::new(v, m, vd, vd).t(), false);
    for r in 0..m {
        da[r * m + r + 1..(r + 1) * m].fill(0.0);
    }

    // dv = A^T @ do + (k * exp(Gl - G)) @ dh_c
    let mut dv = vec![0.0; m * vd];
    matmul(&mut dv, vd, MatRef::new(&a, m, m, m).t(), MatRef::new(&d_o, m, vd, vd), false);
    matmul(&mut dv, vd, MatRef::new(&ch.kg(kd), m, kd, kd), MatRef::new(dh_c, kd, vd, vd), true);

    // inter parts of dqs and dk
    let mut dqs = vec![0.0; m * kd];
    matmul(&mut dqs, kd, MatRef::new(&d_o, m, vd, vd), MatRef::new(h_c, kd, vd, vd).t(), false);
    ch.decay_from(&mut dqs, 0..m, None, kd);
    let mut dk_inter = vec![0.0; m * kd];
    matmul(&mut dk_inter, kd, MatRef::new(v, m, vd, vd), MatRef::new(dh_c, kd, vd, vd).t(), false);
    ch.decay_to(&mut dk_inter, 0..m, m - 1, kd);

    // dg[r] = sum_{s>=r} (qs*dqs - k*dk)[s] + exp(Gl)*rowsum(h_c*dh_c) + sum_j (k*dk_inter)[j].
    // The inter part of -k*dk cancels the last sum for j >= r, so it is summed directly over j < r
    // (an exclusive cumsum) and kept out of the reverse cumsum: no large terms that cancel.
    let mut dg = vec![0.0; m * kd];
    let mut fwd_sum = ch.exp_g(m - 1, kd);
    for i in 0..kd {
        fwd_sum[i] *= dot(&h_c[i * vd..(i + 1) * vd], &dh_c[i * vd..(i + 1) * vd]);
    }
    for r in 0..m {
        for i in 0..kd {
            dg[r * kd + i] = fwd_sum[i];
            fwd_sum[i] += k[r * kd + i] * dk_inter[r * kd + i];
        }
    }
    let mut dk = vec![0.0; m * kd];
    let by_table = match &ch.table {
        Some((e, inv)) => intra_bwd_table(&ch, &da, &qg, e, inv, kd, &mut dqs, &mut dk),
        None => false,
    };
    if !by_table {
        intra_bwd(&ch, &da, kd, &mut dqs, &mut dk);
    }
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
    dqs.iter_mut().for_each(|e| *e *= x.scale);
    // SAFETY: chunks cover disjoint rows; each is written by exactly one task.
    unsafe {
        out.write_qkv(c * BT, &dqs, &dk, &dv);
        out.write_dg(c * BT, &dg);
    }
}

fn backward_seq(x: &SeqIn<'_, f32>, d: &SeqGradIn<'_, f32>, out: &SeqSinks<'_, f32>) -> Vec<f32> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    let nt = l.div_ceil(BT);
    // h[c]: state entering chunk c
    let mut s = x.state0();
    let mut h = vec![0.0; nt * kv];
    for c in 0..nt {
        h[c * kv..(c + 1) * kv].copy_from_slice(&s);
        state_update(&Chunk::load(x, c), &mut s, kd, vd);
    }
    // dh[c]: gradient of the state leaving chunk c (reverse pass)
    let mut ds = d.dht.map_or_else(|| vec![0.0; kv], <[f32]>::to_vec);
    let mut dh = vec![0.0; nt * kv];
    let mut d_o = vec![0.0; BT * vd];
    for c in (0..nt).rev() {
        dh[c * kv..(c + 1) * kv].copy_from_slice(&ds);
        let ch = Chunk::load(x, c);
        for (i, decay) in ch.exp_g(ch.m - 1, kd).into_iter().enumerate() {
            ds[i * vd..(i + 1) * vd].iter_mut().for_each(|e| *e *= decay);
        }
        let d_o = &mut d_o[..ch.m * vd];
        d.d_o.copy_to(c * BT, d_o);
        x.check(d_o, Check::Finite);
        matmul(&mut ds, vd, MatRef::new(&ch.qg(kd), ch.m, kd, kd).t(), MatRef::new(d_o, ch.m, vd, vd), true);
    }
    (0..nt).into_par_iter().for_each(|c| bwd_chunk(x, d, &h[c * kv..(c + 1) * kv], &dh[c * kv..(c + 1) * kv], c, out));
    ds
}

impl GlaOp<f32> for Chunked {
    fn name(&self) -> &'static str {
        match self.schedule {
            Schedule::Auto => "cpu-chunk",
            Schedule::PerSequence => "cpu-chunk-seq",
            Schedule::PerChunk => "cpu-chunk-par",
        }
    }
    fn forward(&self, p: &Problem, x: &Inputs<'_, f32>, output_final_state: bool) -> Result<Forward<f32>> {
        let per_chunk = match self.schedule {
            Schedule::Auto => p.n() * p.h() < rayon::current_num_threads(),
            Schedule::PerSequence => false,
            Schedule::PerChunk => true,
        };
        let group = if per_chunk { 1 } else { lockstep_heads(p, rayon::current_num_threads()) };
        // outputs larger than this stream past the caches (see driver::Sink); smaller ones are
        // likely read again soon (the model's next op) and stay cached
        let stream = p.v_len() * 4 >= STREAM_OUTPUT_BYTES;
        driver::forward_grouped(self.name(), p, x, output_final_state, Validation::InLoad, group, stream, |xs, os| {
            if per_chunk {
                xs.iter().zip(os).map(|(s, o)| forward_per_chunk(s, o)).collect()
            } else {
                forward_lockstep(xs, os)
            }
        })
    }
    fn backward(&self, p: &Problem, x: &Inputs<'_, f32>, d: &Backward<'_, f32>) -> Result<Grads<f32>> {
        driver::backward(self.name(), p, x, d, Validation::InLoad, backward_seq)
    }
}
