//! The chunked delta-rule path (fla's `chunk_gated_delta_rule`, the WY/UT representation), f32
//! as the product and f64 as a second reference. Derivation: `docs/math/delta.md`.
//!
//! Per (sequence, value head), time is cut into chunks of `BT = 64` rows. In a chunk of `m` rows
//! with prepared `q` (scaled), `k`, `v`, beta, and `G` the chunk-local inclusive cumsum of the
//! log-decay (`Gl` its last row, `Γ[i,j] = exp(G_i - G_j)` for `j <= i`), and `h` the state
//! entering the chunk:
//!
//! ```text
//! A     = strictly-lower(diag(beta) (K K^T * Γ))        T = (I + A)^-1   (forward substitution)
//! w     = T (beta * exp(G) * K)                          u = T (beta * V)
//! U     = u - w h                                        (v_new: the chunk's deltas)
//! O     = (Q h) * exp(G) + tril(Q K^T * Γ) U
//! h'    = exp(Gl) h + (K * exp(Gl - G))^T U
//! ```
//!
//! Every exponent is `<= 0` (G does not increase inside a chunk), so no factor exceeds 1.
//!
//! The forward walks each head's chunks once, the state in cache. The backward follows fla's
//! order: (1) per chunk in parallel, `T`, `w`, `u` and the local `dv = P^T dO` (`P` the masked
//! `Q K^T * Γ`); (2) the state pass, keeping `h` per chunk and turning `u` into `U`; (3) the
//! reverse state-gradient pass, keeping `dh` (of the state leaving each chunk) and turning the
//! local `dv` into `dU`; (4) per chunk in parallel, dq, dk, dw, the WY backward (dk, dv, dbeta)
//! and dg, which is summed in a cancellation-free order (see [`grads_chunk`]).

use gla_core::delta::DeltaOp;
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, Forward, Result, BT};
use rayon::prelude::*;

use super::driver::{self, Head, HeadGrads, HeadOut, Rows};
use super::mm::{mm, Acc, View};
use crate::fexp::ExpRow;

/// The chunked WY algorithm (`cpu-delta-chunk`), f32 (the product) and f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaChunked;

/// Rows of chunk `c` in a sequence of `l` rows.
fn chunk_rows(c: usize, l: usize) -> std::ops::Range<usize> {
    c * BT..((c + 1) * BT).min(l)
}

/// One chunk's rows, copied out of the strided inputs into contiguous buffers.
struct Chunk<T> {
    /// Rows m (<= BT).
    m: usize,
    /// `[m, K]`: scale * l2norm(q)
    q: Vec<T>,
    /// `[m, K]`
    k: Vec<T>,
    /// `[m]`
    beta: Vec<T>,
    /// `[m]`: chunk-local inclusive cumsum of g, accumulated in f64 (see [`exps`])
    gc: Vec<f64>,
    /// `[m]`: exp(G)
    eg: Vec<T>,
    /// `[m]`: exp(Gl - G)
    egl: Vec<T>,
}

impl<T: ExpRow> Chunk<T> {
    fn load(x: &Head<'_, T>, c: usize) -> Self {
        let rows = chunk_rows(c, x.l);
        let m = rows.len();
        let (mut q, mut k) = (vec![T::ZERO; m * x.kd], vec![T::ZERO; m * x.kd]);
        x.q.copy_to(rows.start, &mut q);
        x.k.copy_to(rows.start, &mut k);
        let beta: Vec<T> = rows.clone().map(|t| x.beta.at(t)).collect();
        let mut gc = Vec::with_capacity(m);
        let mut acc = 0.0f64;
        for t in rows {
            acc += x.g.at(t).to_f64();
            gc.push(acc);
        }
        let gl = gc.last().copied().unwrap_or(0.0);
        let eg = exps(gc.iter().copied());
        let egl = exps(gc.iter().map(|&g| gl - g));
        Self { m, q, k, beta, gc, eg, egl }
    }

    /// `Γ [m, m]`: `exp(G_i - G_j)` for `j <= i`, 0 above the diagonal.
    fn gamma(&self) -> Vec<T> {
        let m = self.m;
        let mut gam = vec![T::ZERO; m * m];
        for i in 0..m {
            let row = exps((0..=i).map(|j| self.gc[i] - self.gc[j]));
            gam[i * m..i * m + i + 1].copy_from_slice(&row);
        }
        gam
    }

    /// `exp(Gl)`, the decay over the whole chunk.
    fn decay(&self) -> T {
        self.eg[self.m - 1]
    }

    /// `x [m, D]` with row `r` scaled by `f[r]`.
    fn rows_scaled(x: &[T], f: &[T], d: usize) -> Vec<T> {
        let mut out = x.to_vec();
        for (row, &s) in out.chunks_exact_mut(d).zip(f) {
            row.iter_mut().for_each(|e| *e *= s);
        }
        out
    }
}

/// `exp` of each value (log-decays or their differences, all <= 0) in `T`. The chunk's cumsum `G`
/// is accumulated in f64 and every difference `G_i - G_j` taken there: in f32, `G` carries an
/// absolute rounding error of `|G| * 6e-8` (up to 440 inside a chunk at gate scale 0.1), which a
/// difference of two such values keeps while the difference itself may be small; in f64 the
/// difference is exact before it is rounded to `T` (the recurrent paths take each `exp(g_t)` from
/// `g_t` itself for the same reason).
fn exps<T: ExpRow>(x: impl Iterator<Item = f64>) -> Vec<T> {
    let x: Vec<T> = x.map(T::from_f64).collect();
    let mut out = vec![T::ZERO; x.len()];
    T::exp_row(&x, &mut out);
    out
}

/// What the WY representation of a chunk needs beyond its rows.
struct Wy<T> {
    /// `[m, m]`: Γ
    gam: Vec<T>,
    /// `[m, m]`: K K^T
    kk: Vec<T>,
    /// `[m, m]`: T = (I + A)^-1, lower triangular with a unit diagonal
    tinv: Vec<T>,
    /// `[m, K]`: -w
    nw: Vec<T>,
    /// `[m, V]`: u
    u: Vec<T>,
}

/// The chunk's `Γ`, `K K^T`, `T = (I + A)^-1`, `-w` and `u` (`v [m, V]` its values).
fn wy<T: ExpRow>(ch: &Chunk<T>, v: &[T], kd: usize, vd: usize) -> Wy<T> {
    let m = ch.m;
    let gam = ch.gamma();
    let mut kk = vec![T::ZERO; m * m];
    mm(&mut kk, View::rm(&ch.k, m, kd), View::rm(&ch.k, m, kd).t(), Acc::Set);
    // T row by row: T_i = e_i - sum_{j<i} A_ij T_j, where T_j is zero right of column j
    let mut tinv = vec![T::ZERO; m * m];
    for i in 0..m {
        let (done, row) = tinv.split_at_mut(i * m);
        let row = &mut row[..m];
        row[i] = T::ONE;
        for j in 0..i {
            let a = ch.beta[i] * kk[i * m + j] * gam[i * m + j];
            let tj = &done[j * m..j * m + j + 1];
            for (r, &t) in row[..=j].iter_mut().zip(tj) {
                *r -= a * t;
            }
        }
    }
    let bx: Vec<T> = ch.beta.iter().zip(&ch.eg).map(|(&b, &e)| -(b * e)).collect();
    let x = Chunk::rows_scaled(&ch.k, &bx, kd);
    let y = Chunk::rows_scaled(v, &ch.beta, vd);
    let (mut nw, mut u) = (vec![T::ZERO; m * kd], vec![T::ZERO; m * vd]);
    mm(&mut nw, View::rm(&tinv, m, m), View::rm(&x, m, kd), Acc::Set);
    mm(&mut u, View::rm(&tinv, m, m), View::rm(&y, m, vd), Acc::Set);
    Wy { gam, kk, tinv, nw, u }
}

/// `P [m, m] = tril(Q K^T * Γ)` (diagonal included) and the raw `Q K^T`.
fn scores<T: ExpRow>(ch: &Chunk<T>, gam: &[T], kd: usize) -> (Vec<T>, Vec<T>) {
    let m = ch.m;
    let mut qk = vec![T::ZERO; m * m];
    mm(&mut qk, View::rm(&ch.q, m, kd), View::rm(&ch.k, m, kd).t(), Acc::Set);
    let p = qk.iter().zip(gam).map(|(&a, &b)| a * b).collect();
    (p, qk)
}

/// `h [K, V] <- exp(Gl) h + (K * exp(Gl - G))^T U`: the state leaving the chunk.
fn state_update<T: ExpRow>(ch: &Chunk<T>, h: &mut [T], big_u: &[T], kd: usize, vd: usize) {
    let a = ch.decay();
    h.iter_mut().for_each(|e| *e *= a);
    let kg = Chunk::rows_scaled(&ch.k, &ch.egl, kd);
    mm(h, View::rm(&kg, ch.m, kd).t(), View::rm(big_u, ch.m, vd), Acc::Add);
}

fn forward_head<T: ExpRow>(x: &Head<'_, T>, out: &HeadOut<'_, T>) -> Vec<T> {
    let (kd, vd) = (x.kd, x.vd);
    let mut h = x.state0();
    let mut v = vec![T::ZERO; BT * vd];
    for c in 0..x.l.div_ceil(BT) {
        let ch = Chunk::load(x, c);
        let m = ch.m;
        let v = &mut v[..m * vd];
        x.v.copy_to(c * BT, v);
        let Wy { gam, mut u, nw, .. } = wy(&ch, v, kd, vd);
        // U = u - w h
        mm(&mut u, View::rm(&nw, m, kd), View::rm(&h, kd, vd), Acc::Add);
        let (p, _) = scores(&ch, &gam, kd);
        let qg = Chunk::rows_scaled(&ch.q, &ch.eg, kd);
        let mut o = vec![T::ZERO; m * vd];
        mm(&mut o, View::rm(&qg, m, kd), View::rm(&h, kd, vd), Acc::Set);
        mm(&mut o, View::rm(&p, m, m), View::rm(&u, m, vd), Acc::Add);
        // SAFETY: each chunk's rows of this head are written once, by this thread.
        unsafe { out.write_o(c * BT, &o) };
        state_update(&ch, &mut h, &u, kd, vd);
    }
    h
}

/// What stage 1 of the backward keeps per chunk (see the module docs).
struct Saved<T> {
    wy: Wy<T>,
    /// `[m, m]`: Q K^T
    qk: Vec<T>,
    /// `[m, V]`: u, then U after the state pass
    big_u: Vec<T>,
    /// `[m, V]`: P^T dO, then dU after the state-gradient pass
    du: Vec<T>,
}

fn backward_head<T: ExpRow>(x: &Head<'_, T>, d_o: Rows<'_, T>, dht: Option<&[T]>, out: &HeadGrads<'_, T>) -> Vec<T> {
    let (kd, vd, kv) = (x.kd, x.vd, x.kd * x.vd);
    let nt = x.l.div_ceil(BT);
    // 1. per chunk: T, w, u, P^T dO
    let mut saved: Vec<Saved<T>> = (0..nt)
        .into_par_iter()
        .map(|c| {
            let ch = Chunk::load(x, c);
            let m = ch.m;
            let (mut v, mut dob) = (vec![T::ZERO; m * vd], vec![T::ZERO; m * vd]);
            x.v.copy_to(c * BT, &mut v);
            d_o.copy_to(c * BT, &mut dob);
            let mut wy = wy(&ch, &v, kd, vd);
            let (p, qk) = scores(&ch, &wy.gam, kd);
            let mut du = vec![T::ZERO; m * vd];
            mm(&mut du, View::rm(&p, m, m).t(), View::rm(&dob, m, vd), Acc::Set);
            let big_u = std::mem::take(&mut wy.u);
            Saved { wy, qk, big_u, du }
        })
        .collect();
    // 2. the state pass: h[c] enters chunk c; u -> U = u - w h
    let mut h = vec![T::ZERO; nt * kv];
    let mut s = x.state0();
    for (c, sv) in saved.iter_mut().enumerate() {
        let ch = Chunk::load(x, c);
        h[c * kv..(c + 1) * kv].copy_from_slice(&s);
        mm(&mut sv.big_u, View::rm(&sv.wy.nw, ch.m, kd), View::rm(&s, kd, vd), Acc::Add);
        state_update(&ch, &mut s, &sv.big_u, kd, vd);
    }
    // 3. the state-gradient pass: dh[c] is the gradient of the state leaving chunk c
    let mut dh = vec![T::ZERO; nt * kv];
    let mut ds = dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    for (c, sv) in saved.iter_mut().enumerate().rev() {
        let ch = Chunk::load(x, c);
        let m = ch.m;
        dh[c * kv..(c + 1) * kv].copy_from_slice(&ds);
        let kg = Chunk::rows_scaled(&ch.k, &ch.egl, kd);
        mm(&mut sv.du, View::rm(&kg, m, kd), View::rm(&ds, kd, vd), Acc::Add);
        let a = ch.decay();
        ds.iter_mut().for_each(|e| *e *= a);
        let mut dob = vec![T::ZERO; m * vd];
        d_o.copy_to(c * BT, &mut dob);
        let qg = Chunk::rows_scaled(&ch.q, &ch.eg, kd);
        mm(&mut ds, View::rm(&qg, m, kd).t(), View::rm(&dob, m, vd), Acc::Add);
        mm(&mut ds, View::rm(&sv.wy.nw, m, kd).t(), View::rm(&sv.du, m, vd), Acc::Add);
    }
    // 4. per chunk: the gradients
    saved.par_iter().enumerate().for_each(|(c, sv)| {
        let ch = Chunk::load(x, c);
        grads_chunk(x, d_o, &ch, sv, &h[c * kv..(c + 1) * kv], &dh[c * kv..(c + 1) * kv], c, out);
    });
    ds
}

/// The gradients of chunk `c` at the prepared inputs, written through `out`; `h_c` is the state
/// entering the chunk, `dh_c` the gradient of the state leaving it.
///
/// dg is assembled per row `r` from the pieces that depend on `G_t = sum_{s<=t} g_s`, each summed
/// over exactly the rows it depends on, never as a reverse cumsum of `dG` in which pairs of large
/// terms cancel: `dg_r = sum_{t>=r} (c_t + cX_t) + exp(Gl) <h, dh'> + sum_{s<r} E_s +
/// sum_{i>=r, j<r} D_ij` (`c`: the inter output, `cX`: the WY keys, `E`: the state update, `D`:
/// the pairs of `P` and `A`; docs/math/delta.md).
#[allow(clippy::too_many_arguments)]
fn grads_chunk<T: ExpRow>(
    x: &Head<'_, T>,
    d_o: Rows<'_, T>,
    ch: &Chunk<T>,
    sv: &Saved<T>,
    h_c: &[T],
    dh_c: &[T],
    c: usize,
    out: &HeadGrads<'_, T>,
) {
    let (m, kd, vd) = (ch.m, x.kd, x.vd);
    let Wy { gam, kk, tinv, .. } = &sv.wy;
    let (q, k, big_u, du) = (&ch.q, &ch.k, &sv.big_u, &sv.du);
    let mut v = vec![T::ZERO; m * vd];
    x.v.copy_to(c * BT, &mut v);
    let mut dob = vec![T::ZERO; m * vd];
    d_o.copy_to(c * BT, &mut dob);

    // the output: dq_inter = (dO h^T) * exp(G); dP = tril(dO U^T); Pg = dP * Γ
    let mut dq = vec![T::ZERO; m * kd];
    mm(&mut dq, View::rm(&dob, m, vd), View::rm(h_c, kd, vd).t(), Acc::Set);
    let mut dg_pt = vec![T::ZERO; m]; // c_t + cX_t, summed over t >= r below
    for (r, row) in dq.chunks_exact_mut(kd).enumerate() {
        row.iter_mut().for_each(|e| *e *= ch.eg[r]);
        dg_pt[r] = dot(row, &q[r * kd..(r + 1) * kd]);
    }
    let mut pg = vec![T::ZERO; m * m];
    mm(&mut pg, View::rm(&dob, m, vd), View::rm(big_u, m, vd).t(), Acc::Set);
    // D: the pair terms dP_ij P_ij (j < i), then dA_ij A_ij added below
    let mut pairs = vec![T::ZERO; m * m];
    for i in 0..m {
        for j in 0..m {
            let e = i * m + j;
            pg[e] = if j <= i { pg[e] * gam[e] } else { T::ZERO };
            if j < i {
                pairs[e] = pg[e] * sv.qk[e];
            }
        }
    }
    mm(&mut dq, View::rm(&pg, m, m), View::rm(k, m, kd), Acc::Add);
    let mut dk = vec![T::ZERO; m * kd];
    mm(&mut dk, View::rm(&pg, m, m).t(), View::rm(q, m, kd), Acc::Set);

    // the state update: dk_state = (U dh'^T) * exp(Gl - G); E_s = <k_s, dk_state_s>
    let mut dks = vec![T::ZERO; m * kd];
    mm(&mut dks, View::rm(big_u, m, vd), View::rm(dh_c, kd, vd).t(), Acc::Set);
    let mut e_s = vec![T::ZERO; m];
    for (r, row) in dks.chunks_exact_mut(kd).enumerate() {
        row.iter_mut().for_each(|e| *e *= ch.egl[r]);
        e_s[r] = dot(row, &k[r * kd..(r + 1) * kd]);
    }
    dk.iter_mut().zip(&dks).for_each(|(a, &b)| *a += b);
    let hdh = ch.decay() * dot(h_c, dh_c);

    // the WY backward: dw = -dU h^T; dX = T^T dw, dY = T^T dU; dA = -(dX X^T + dY Y^T) T^T
    let mut dw = vec![T::ZERO; m * kd];
    mm(&mut dw, View::rm(du, m, vd), View::rm(h_c, kd, vd).t(), Acc::Set);
    dw.iter_mut().for_each(|e| *e = -*e);
    let (mut dx, mut dy) = (vec![T::ZERO; m * kd], vec![T::ZERO; m * vd]);
    mm(&mut dx, View::rm(tinv, m, m).t(), View::rm(&dw, m, kd), Acc::Set);
    mm(&mut dy, View::rm(tinv, m, m).t(), View::rm(du, m, vd), Acc::Set);
    let bx: Vec<T> = ch.beta.iter().zip(&ch.eg).map(|(&b, &e)| b * e).collect();
    let xm = Chunk::rows_scaled(k, &bx, kd);
    let ym = Chunk::rows_scaled(&v, &ch.beta, vd);
    let mut mmat = vec![T::ZERO; m * m];
    mm(&mut mmat, View::rm(&dx, m, kd), View::rm(&xm, m, kd).t(), Acc::Set);
    mm(&mut mmat, View::rm(&dy, m, vd), View::rm(&ym, m, vd).t(), Acc::Add);
    let mut da = vec![T::ZERO; m * m];
    mm(&mut da, View::rm(&mmat, m, m), View::rm(tinv, m, m).t(), Acc::Sub);
    // A_ij = beta_i kk_ij Γ_ij (j < i): dbeta, dkk (as Mk), and the pairs dA_ij A_ij
    let mut dbeta = vec![T::ZERO; m];
    let mut mk = vec![T::ZERO; m * m];
    for i in 0..m {
        let mut db = T::ZERO;
        for j in 0..i {
            let e = i * m + j;
            let akk = kk[e] * gam[e];
            db += da[e] * akk;
            mk[e] = da[e] * ch.beta[i] * gam[e];
            pairs[e] += da[e] * ch.beta[i] * akk;
        }
        dbeta[i] = db;
    }
    mm(&mut dk, View::rm(&mk, m, m), View::rm(k, m, kd), Acc::Add);
    mm(&mut dk, View::rm(&mk, m, m).t(), View::rm(k, m, kd), Acc::Add);
    // X = beta exp(G) K, Y = beta V
    let mut dv = vec![T::ZERO; m * vd];
    for r in 0..m {
        let (dxr, kr) = (&dx[r * kd..(r + 1) * kd], &k[r * kd..(r + 1) * kd]);
        let dxk = dot(dxr, kr);
        dbeta[r] += ch.eg[r] * dxk + dot(&dy[r * vd..(r + 1) * vd], &v[r * vd..(r + 1) * vd]);
        dg_pt[r] += bx[r] * dxk;
        for (a, &b) in dk[r * kd..(r + 1) * kd].iter_mut().zip(dxr) {
            *a += bx[r] * b;
        }
        for (a, &b) in dv[r * vd..(r + 1) * vd].iter_mut().zip(&dy[r * vd..(r + 1) * vd]) {
            *a = ch.beta[r] * b;
        }
    }

    // dg_r = sum_{t>=r} dg_pt[t] + hdh + sum_{s<r} E_s + sum_{i>=r, j<r} D_ij
    let mut dg = vec![T::ZERO; m];
    // pref[i] holds sum_{j<r} D_ij while r sweeps up; rect[r] = sum_{i>=r} pref_i(r)
    let mut rect = vec![T::ZERO; m];
    let mut pref = vec![T::ZERO; m];
    for r in 1..m {
        for i in r..m {
            pref[i] += pairs[i * m + r - 1];
        }
        rect[r] = pref[r..].iter().fold(T::ZERO, |s, &e| s + e);
    }
    let mut tail = T::ZERO;
    for r in (0..m).rev() {
        tail += dg_pt[r];
        dg[r] = tail + hdh + rect[r];
    }
    let mut head = T::ZERO;
    for r in 0..m {
        dg[r] += head;
        head += e_s[r];
    }
    // SAFETY: chunks cover disjoint rows of this head; each is written by exactly one task.
    unsafe { out.write(c * BT, &dq, &dk, &dv, &dbeta, &dg) };
}

fn dot<T: ExpRow>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::ZERO, |s, (&x, &y)| s + x * y)
}

impl<T: ExpRow> DeltaOp<T> for DeltaChunked {
    fn name(&self) -> &'static str {
        "cpu-delta-chunk"
    }
    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, output_final_state: bool) -> Result<Forward<T>> {
        driver::forward(DeltaOp::<T>::name(self), p, x, output_final_state, forward_head)
    }
    fn backward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, d: &Backward<'_, T>) -> Result<DeltaGrads<T>> {
        driver::backward(DeltaOp::<T>::name(self), p, x, d, backward_head)
    }
}
