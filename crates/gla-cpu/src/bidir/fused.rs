//! The fused CPU path of the bidirectional scan for short sequences: when every sequence has at
//! most `BT = 64` rows (ViG's token grids on small images: 7x7 on Fashion-MNIST), each
//! (sequence, head) is one chunk in both directions, no state crosses a chunk, and both scans
//! come from ONE load of q, k, v and ONE score matrix. Longer inputs go to [`BidirChunked`].
//!
//! Per (sequence, head), rows `0 .. m`, `qs = scale/2 * q` (the `/ 2` of ViG's average folded
//! into the scale, exact), `F` the inclusive cumsum of `gf` forward in time and `R` the inclusive
//! cumsum of `gb` backward in time (`R[r] = sum_{i >= r} gb[i]`):
//!
//! ```text
//! Af[r,c] = sum_a qs[r,a] k[c,a] exp(F[r,a] - F[c,a])     c <= r   (forward scan)
//! Ab[r,c] = sum_a qs[r,a] k[c,a] exp(R[r,a] - R[c,a])     c >= r   (backward scan)
//! A = strict-lower(Af) + strict-upper(Ab) + diag(2 qs.k)          o = A @ v
//! ```
//!
//! (the token's own `k v^T` counts in both directions, with decay 1). Every exponent is `<= 0`.
//! As in the GLA chunked path ([`crate::Chunked`]), a direction's scores are ONE product through
//! a table of `exp(C)` and `1 / exp(C)` (`C` = F or R) when its cumsum stays above -80 in every
//! channel (both table entries normal floats) and the products stay finite; otherwise each factor
//! is one `exp` of a difference of f64 cumsums (direct, exact to f32).
//!
//! Backward of `L = <do, o>` (`docs/math/bidir.md`), with `D` the direction's strict triangle
//! of `dA = do @ v^T`:
//!
//! ```text
//! dv = A^T @ do
//! dqs_d = (D @ (k / exp(C))) * exp(C),   dk_d = (D^T @ (qs * exp(C))) / exp(C)     (d = f, b)
//! dgf[i] = sum_{t >= i} (qs dqs_f - k dk_f)[t]     dgb[i] = sum_{t <= i} (qs dqs_b - k dk_b)[t]
//! dqs = dqs_f + dqs_b + 2 diag(dA) k,   dk = dk_f + dk_b + 2 diag(dA) qs,   dq = scale/2 dqs
//! ```
//!
//! The diagonal pairs cancel exactly in the gate gradients and are left out of them (no
//! cancellation), as in the GLA path. Parallel over sequences (rayon), every head of a sequence
//! in one task, matrix work on the calling thread's gemm.

use gla_core::bidir::{BidirGrads, BidirInputs, BidirOp, BidirProblem};
use gla_core::op::{first_bad, Check};
use gla_core::{Result, BT};
use rayon::prelude::*;

use super::BidirChunked;
use crate::fexp::fexp;
use crate::mat::{matmul, MatRef};

/// The fused one-chunk path (`cpu-bidir-fused`) for inputs whose sequences all have at most
/// `BT = 64` rows; longer inputs run on [`BidirFused::long`]. f32.
#[derive(Debug, Clone, Copy, Default)]
pub struct BidirFused {
    /// The path for inputs with a sequence longer than one chunk.
    pub long: BidirChunked,
}

/// Below this cumsum a direction takes the direct factors (see the GLA path's `TABLE_MIN_G`:
/// exp(-80) = 1.8e-35 and its inverse 5.5e34 are normal floats).
const TABLE_MIN: f32 = -80.0;

/// Which way a direction's scan runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Forward in time: `C = F`, keys at or before the query.
    Fwd,
    /// Backward in time: `C = R`, keys at or after the query.
    Bwd,
}

/// One direction of one (sequence, head): its tables, or its cumsum for the direct factors.
struct Dir {
    way: Way,
    /// The gate rows `[m, K]`
    g: Vec<f32>,
    kind: Factors,
}

/// How a direction's decay factors are formed.
enum Factors {
    /// `exp(C)`, `1 / exp(C)` and `k / exp(C)`, `[m, K]` each, every entry a finite normal float.
    Table(Vec<f32>, Vec<f32>, Vec<f32>),
    /// The cumsum `C` in f64 (differences of it are exact to f32), `[m, K]`.
    Direct(Vec<f64>),
}

impl Dir {
    fn new(way: Way, g: Vec<f32>, k: &[f32], m: usize, kd: usize) -> Self {
        // the f32 cumsum (as the GLA path's) decides and feeds the table
        let mut c = g[..m * kd].to_vec();
        let mut min = 0.0f32;
        match way {
            Way::Fwd => {
                for r in 1..m {
                    let (prev, cur) = c[(r - 1) * kd..(r + 1) * kd].split_at_mut(kd);
                    cur.iter_mut().zip(prev.iter()).for_each(|(x, p)| *x += p);
                }
                if m > 0 {
                    min = c[(m - 1) * kd..].iter().fold(0.0, |a, &b| a.min(b));
                }
            }
            Way::Bwd => {
                for r in (0..m.saturating_sub(1)).rev() {
                    let (cur, next) = c[r * kd..(r + 2) * kd].split_at_mut(kd);
                    cur.iter_mut().zip(next.iter()).for_each(|(x, n)| *x += n);
                }
                if m > 0 {
                    min = c[..kd].iter().fold(0.0, |a, &b| a.min(b));
                }
            }
        }
        if min > TABLE_MIN {
            let mut e = c;
            e.iter_mut().for_each(|x| *x = fexp(*x));
            let inv: Vec<f32> = e.iter().map(|&x| 1.0 / x).collect();
            let kinv: Vec<f32> = k.iter().zip(&inv).map(|(&k, &i)| k * i).collect();
            // 1 / exp(C) reaches 5.5e34 at the table's limit: a large key could overflow
            if first_bad(&kinv, Check::Finite).is_none() {
                return Self { way, g, kind: Factors::Table(e, inv, kinv) };
            }
        }
        let c = Self::cumsum64(way, &g, m, kd);
        Self { way, g, kind: Factors::Direct(c) }
    }

    /// The cumsum `C` of `g [m, K]` in f64, in the direction's time order.
    fn cumsum64(way: Way, g: &[f32], m: usize, kd: usize) -> Vec<f64> {
        let mut c = vec![0.0f64; m * kd];
        let mut run = vec![0.0f64; kd];
        let mut step = |r: usize| {
            for i in 0..kd {
                run[i] += f64::from(g[r * kd + i]);
                c[r * kd + i] = run[i];
            }
        };
        match way {
            Way::Fwd => (0..m).for_each(&mut step),
            Way::Bwd => (0..m).rev().for_each(&mut step),
        }
        c
    }

    /// The columns of row `r` strictly on this direction's side, within `0 .. m`.
    #[inline]
    fn side(&self, r: usize, m: usize) -> std::ops::Range<usize> {
        match self.way {
            Way::Fwd => 0..r,
            Way::Bwd => r + 1..m,
        }
    }

    /// The decay factor `exp(C[r] - C[c])` of channel `i` (`<= 1` on the direction's side), from
    /// the f64 cumsum `c64`.
    #[inline]
    fn factor(c64: &[f64], r: usize, c: usize, i: usize, kd: usize) -> f32 {
        fexp((c64[r * kd + i] - c64[c * kd + i]) as f32)
    }

    /// Adds this direction's strict-triangle scores into `a [m, m]` (the diagonal is the
    /// caller's).
    fn scores(&self, qs: &[f32], k: &[f32], m: usize, kd: usize, a: &mut [f32]) {
        match &self.kind {
            Factors::Table(e, _, kinv) => {
                let qe: Vec<f32> = qs.iter().zip(e).map(|(&q, &e)| q * e).collect();
                let mut s = vec![0.0; m * m];
                matmul(&mut s, m, MatRef::new(&qe, m, kd, kd), MatRef::new(kinv, m, kd, kd).t(), false);
                // the other triangle may hold growth factors > 1 (even inf): never read
                for r in 0..m {
                    let cols = self.side(r, m);
                    let (dst, src) = (&mut a[r * m..][cols.clone()], &s[r * m..][cols]);
                    dst.iter_mut().zip(src).for_each(|(d, x)| *d += x);
                }
            }
            Factors::Direct(c64) => {
                for r in 0..m {
                    for c in self.side(r, m) {
                        let (qr, kc) = (&qs[r * kd..(r + 1) * kd], &k[c * kd..(c + 1) * kd]);
                        a[r * m + c] += (0..kd).map(|i| qr[i] * kc[i] * Self::factor(c64, r, c, i, kd)).sum::<f32>();
                    }
                }
            }
        }
    }

    /// This direction's strict-triangle gradients of `da [m, m]`: `(dqs_d, dk_d)`, `[m, K]` each.
    fn grads(&self, da: &[f32], qs: &[f32], k: &[f32], m: usize, kd: usize) -> (Vec<f32>, Vec<f32>) {
        let mut d = vec![0.0; m * m];
        for r in 0..m {
            let cols = self.side(r, m);
            d[r * m..][cols.clone()].copy_from_slice(&da[r * m..][cols]);
        }
        let (mut dq, mut dk) = (vec![0.0; m * kd], vec![0.0; m * kd]);
        let c64 = match &self.kind {
            Factors::Table(e, inv, kinv) => {
                let qe: Vec<f32> = qs.iter().zip(e).map(|(&q, &e)| q * e).collect();
                matmul(&mut dq, kd, MatRef::new(&d, m, m, m), MatRef::new(kinv, m, kd, kd), false);
                matmul(&mut dk, kd, MatRef::new(&d, m, m, m).t(), MatRef::new(&qe, m, kd, kd), false);
                if first_bad(&dq, Check::Finite).is_none() && first_bad(&dk, Check::Finite).is_none() {
                    dq.iter_mut().zip(e).for_each(|(x, &e)| *x *= e);
                    dk.iter_mut().zip(inv).for_each(|(x, &i)| *x *= i);
                    return (dq, dk);
                }
                // an intermediate overflowed (a large dA near the table's limit): direct factors
                dq.fill(0.0);
                dk.fill(0.0);
                std::borrow::Cow::Owned(Self::cumsum64(self.way, &self.g, m, kd))
            }
            Factors::Direct(c64) => std::borrow::Cow::Borrowed(c64),
        };
        for r in 0..m {
            for c in self.side(r, m) {
                let w = d[r * m + c];
                if w == 0.0 {
                    continue;
                }
                for i in 0..kd {
                    let f = w * Self::factor(&c64, r, c, i, kd);
                    dq[r * kd + i] += f * k[c * kd + i];
                    dk[c * kd + i] += f * qs[r * kd + i];
                }
            }
        }
        (dq, dk)
    }
}

/// One (sequence, head) tile: its rows copied out of the `[rows, H, *]` inputs.
struct Tile {
    m: usize,
    qs: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    f: Dir,
    b: Dir,
}

impl Tile {
    fn load(p: &BidirProblem, x: &BidirInputs<'_, f32>, rows: std::ops::Range<usize>, h: usize, half: f32) -> Self {
        let (hh, kd, vd, m) = (p.h(), p.k(), p.v(), rows.len());
        let gather = |src: &[f32], w: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(m * w);
            for r in rows.clone() {
                out.extend_from_slice(&src[(r * hh + h) * w..][..w]);
            }
            out
        };
        let mut qs = gather(x.q, kd);
        qs.iter_mut().for_each(|e| *e *= half);
        let k = gather(x.k, kd);
        let f = Dir::new(Way::Fwd, gather(x.gf, kd), &k, m, kd);
        let b = Dir::new(Way::Bwd, gather(x.gb, kd), &k, m, kd);
        Self { m, qs, v: gather(x.v, vd), k, f, b }
    }

    /// `A [m, m]` of the module docs.
    fn scores(&self, kd: usize) -> Vec<f32> {
        let m = self.m;
        let mut a = vec![0.0; m * m];
        self.f.scores(&self.qs, &self.k, m, kd, &mut a);
        self.b.scores(&self.qs, &self.k, m, kd, &mut a);
        for r in 0..m {
            let (q, k) = (&self.qs[r * kd..(r + 1) * kd], &self.k[r * kd..(r + 1) * kd]);
            a[r * m + r] = 2.0 * q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
        }
        a
    }
}

/// `run += qs * dqs - k * dk` over one row (a gate gradient's running sum).
fn add_gate_terms(run: &mut [f32], qs: &[f32], dqs: &[f32], k: &[f32], dk: &[f32]) {
    for ((((r, &q), &a), &k), &b) in run.iter_mut().zip(qs).zip(dqs).zip(k).zip(dk) {
        *r += q * a - k * b;
    }
}

/// Splits `x` into the per-sequence row blocks of `p` (`width` values per row).
fn split_rows<'a>(p: &BidirProblem, mut x: &'a mut [f32], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(p.n());
    let mut at = 0;
    for n in 0..p.n() {
        let s = p.seq(n);
        let (_, rest) = std::mem::take(&mut x).split_at_mut((s.start - at) * width);
        let (mine, rest) = rest.split_at_mut(s.len() * width);
        out.push(mine);
        x = rest;
        at = s.end;
    }
    out
}

/// Whether every sequence of `p` fits one chunk.
fn short(p: &BidirProblem) -> bool {
    (0..p.n()).all(|n| p.seq(n).len() <= BT)
}

impl BidirOp<f32> for BidirFused {
    fn name(&self) -> &'static str {
        "cpu-bidir-fused"
    }

    fn forward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>) -> Result<Vec<f32>> {
        if !short(p) {
            return self.long.forward(p, x);
        }
        x.validate(p)?;
        let (hh, kd, vd) = (p.h(), p.k(), p.v());
        let half = p.half().scale() as f32;
        let mut o = vec![0.0; p.v_len()];
        let blocks = split_rows(p, &mut o, hh * vd);
        blocks.into_par_iter().enumerate().for_each(|(n, ob)| {
            let rows = p.seq(n);
            for h in 0..hh {
                let t = Tile::load(p, x, rows.clone(), h, half);
                let (m, a) = (t.m, t.scores(kd));
                let mut oh = vec![0.0; m * vd];
                matmul(&mut oh, vd, MatRef::new(&a, m, m, m), MatRef::new(&t.v, m, vd, vd), false);
                for r in 0..m {
                    ob[(r * hh + h) * vd..][..vd].copy_from_slice(&oh[r * vd..(r + 1) * vd]);
                }
            }
        });
        Ok(o)
    }

    fn backward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>, d_o: &[f32]) -> Result<BidirGrads<f32>> {
        if !short(p) {
            return self.long.backward(p, x, d_o);
        }
        x.validate(p)?;
        x.validate_do(p, d_o, &first_bad)?;
        let (hh, kd, vd) = (p.h(), p.k(), p.v());
        let half = p.half().scale() as f32;
        let (mut dq, mut dk, mut dv) = (vec![0.0; p.qk_len()], vec![0.0; p.qk_len()], vec![0.0; p.v_len()]);
        let (mut dgf, mut dgb) = (vec![0.0; p.qk_len()], vec![0.0; p.qk_len()]);
        let (wk, wv) = (hh * kd, hh * vd);
        let blocks: Vec<_> = split_rows(p, &mut dq, wk)
            .into_iter()
            .zip(split_rows(p, &mut dk, wk))
            .zip(split_rows(p, &mut dv, wv))
            .zip(split_rows(p, &mut dgf, wk).into_iter().zip(split_rows(p, &mut dgb, wk)))
            .collect();
        blocks.into_par_iter().enumerate().for_each(|(n, (((dqb, dkb), dvb), (dgfb, dgbb)))| {
            let rows = p.seq(n);
            for h in 0..hh {
                let t = Tile::load(p, x, rows.clone(), h, half);
                let m = t.m;
                let mut dob = Vec::with_capacity(m * vd);
                for r in rows.clone() {
                    dob.extend_from_slice(&d_o[(r * hh + h) * vd..][..vd]);
                }
                let a = t.scores(kd);
                let mut dvh = vec![0.0; m * vd];
                matmul(&mut dvh, vd, MatRef::new(&a, m, m, m).t(), MatRef::new(&dob, m, vd, vd), false);
                let mut da = vec![0.0; m * m];
                matmul(&mut da, m, MatRef::new(&dob, m, vd, vd), MatRef::new(&t.v, m, vd, vd).t(), false);
                let (dqf, dkf) = t.f.grads(&da, &t.qs, &t.k, m, kd);
                let (dqbw, dkbw) = t.b.grads(&da, &t.qs, &t.k, m, kd);
                let at = |r: usize| (r * hh + h) * kd;
                // gate gradients: reverse cumsum (forward scan), forward cumsum (backward scan)
                let mut run = vec![0.0f32; kd];
                fn row(x: &[f32], r: usize, kd: usize) -> &[f32] {
                    &x[r * kd..(r + 1) * kd]
                }
                for r in (0..m).rev() {
                    add_gate_terms(&mut run, row(&t.qs, r, kd), row(&dqf, r, kd), row(&t.k, r, kd), row(&dkf, r, kd));
                    dgfb[at(r)..][..kd].copy_from_slice(&run);
                }
                run.fill(0.0);
                for r in 0..m {
                    add_gate_terms(&mut run, row(&t.qs, r, kd), row(&dqbw, r, kd), row(&t.k, r, kd), row(&dkbw, r, kd));
                    dgbb[at(r)..][..kd].copy_from_slice(&run);
                }
                for r in 0..m {
                    let w = 2.0 * da[r * m + r];
                    let (gq, gk) = (&mut dqb[at(r)..][..kd], &mut dkb[at(r)..][..kd]);
                    for i in 0..kd {
                        let j = r * kd + i;
                        gq[i] = half * (dqf[j] + dqbw[j] + w * t.k[j]);
                        gk[i] = dkf[j] + dkbw[j] + w * t.qs[j];
                    }
                    dvb[(r * hh + h) * vd..][..vd].copy_from_slice(&dvh[r * vd..(r + 1) * vd]);
                }
            }
        });
        Ok(BidirGrads { dq, dk, dv, dgf, dgb })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BidirNaive;
    use gla_core::bidir::BidirSpec;

    fn rel(a: &[f32], b: &[f64]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| y * y).sum();
        (num / den.max(1e-300)).sqrt()
    }

    /// A forward-scan table at its limit (cumsum -79.5) with large keys: `k / exp(C)` is finite
    /// but the backward's `dA @ (k / exp(C))` overflows, so the gradients take the direct
    /// factors; every result still matches the f64 oracle.
    #[test]
    fn table_overflow_in_the_backward_falls_back_to_direct_factors() {
        let p = BidirProblem::new(BidirSpec::new(1, 2, 1, 1, 1)).unwrap();
        let (q, k, v, gf, gb, d_o) = ([1.0f32, 1.0], [1e3f32, 1e3], [10.0f32, 10.0], [-79.0f32, -0.5], [-0.1f32, -0.1], [10.0f32, 10.0]);
        let x = BidirInputs { q: &q, k: &k, v: &v, gf: &gf, gb: &gb };
        let d = |a: &[f32]| a.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();
        let (q6, k6, v6, gf6, gb6, do6) = (d(&q), d(&k), d(&v), d(&gf), d(&gb), d(&d_o));
        let x6 = BidirInputs { q: &q6, k: &k6, v: &v6, gf: &gf6, gb: &gb6 };
        let op = BidirFused::default();
        assert!(rel(&op.forward(&p, &x).unwrap(), &BidirNaive.forward(&p, &x6).unwrap()) < 1e-6);
        let (g, g6) = (op.backward(&p, &x, &d_o).unwrap(), BidirNaive.backward(&p, &x6, &do6).unwrap());
        for (name, a, b) in
            [("dq", &g.dq, &g6.dq), ("dk", &g.dk, &g6.dk), ("dv", &g.dv, &g6.dv), ("dgf", &g.dgf, &g6.dgf), ("dgb", &g.dgb, &g6.dgb)]
        {
            let e = rel(a, b);
            assert!(e < 1e-5, "{name}: rel {e:e} ({a:?} vs {b:?})");
        }
    }
}
