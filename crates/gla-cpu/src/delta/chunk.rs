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
    kd: usize,
    vd: usize,
    /// `[2m, K]`: the keys (rows `0..m`), then `scale * l2norm(q)` (rows `m..2m`), stacked so
    /// that one product gives `K K^T` and `Q K^T`
    kq: Vec<T>,
    /// `[m, V]`
    v: Vec<T>,
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
        let (m, kd, vd) = (rows.len(), x.kd, x.vd);
        let mut kq = vec![T::ZERO; 2 * m * kd];
        x.k.copy_to(rows.start, &mut kq[..m * kd]);
        x.q.copy_to(rows.start, &mut kq[m * kd..]);
        let mut v = vec![T::ZERO; m * vd];
        x.v.copy_to(rows.start, &mut v);
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
        Self { m, kd, vd, kq, v, beta, gc, eg, egl }
    }

    /// `[m, K]`
    fn k(&self) -> &[T] {
        &self.kq[..self.m * self.kd]
    }
    /// `[m, K]`
    fn q(&self) -> &[T] {
        &self.kq[self.m * self.kd..]
    }

    /// `Γ [m, m]`: `exp(G_i - G_j)` for `j <= i`, 0 above the diagonal.
    fn gamma(&self) -> Vec<T> {
        let m = self.m;
        let mut gam = vec![T::ZERO; m * m];
        if self.gc.iter().all(|&g| g == 0.0) {
            // no decay in this chunk (DeltaNet, or a gate of exact zeros): Γ = tril(1)
            for (i, row) in gam.chunks_exact_mut(m).enumerate() {
                row[..=i].fill(T::ONE);
            }
            return gam;
        }
        let mut diff = vec![T::ZERO; m * m];
        for (i, row) in diff.chunks_exact_mut(m).enumerate() {
            let gi = self.gc[i];
            for (d, &gj) in row[..=i].iter_mut().zip(&self.gc) {
                *d = T::from_f64(gi - gj);
            }
            // above the diagonal an exponent far below exp's range: the factor is 0
            row[i + 1..].fill(T::from_f64(-1e4));
        }
        T::exp_row(&diff, &mut gam);
        gam
    }

    /// `exp(Gl)`, the decay over the whole chunk.
    fn decay(&self) -> T {
        self.eg[self.m - 1]
    }

    /// `x [m, D]` with row `r` scaled by `f[r]`, written into `out` (row stride `ld`).
    fn scale_rows(out: &mut [T], ld: usize, x: &[T], f: &[T], d: usize) {
        for ((o, row), &s) in out.chunks_mut(ld).zip(x.chunks_exact(d)).zip(f) {
            o[..d].iter_mut().zip(row).for_each(|(o, &e)| *o = e * s);
        }
    }

    /// `x [m, D]` with row `r` scaled by `f[r]`.
    fn rows_scaled(x: &[T], f: &[T], d: usize) -> Vec<T> {
        let mut out = vec![T::ZERO; x.len()];
        Self::scale_rows(&mut out, d, x, f, d);
        out
    }

    /// `[X | Y] [m, K + V]`: `X = beta exp(G) K` (negated when `neg`), `Y = beta V`.
    fn xy(&self, neg: bool) -> Vec<T> {
        let (m, kd, vd) = (self.m, self.kd, self.vd);
        let w = kd + vd;
        let mut xy = vec![T::ZERO; m * w];
        let bx: Vec<T> = self.beta.iter().zip(&self.eg).map(|(&b, &e)| if neg { -(b * e) } else { b * e }).collect();
        Self::scale_rows(&mut xy, w, self.k(), &bx, kd);
        Self::scale_rows(&mut xy[kd..], w, &self.v, &self.beta, vd);
        xy
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
    /// `[2m, m]`: `K K^T` (rows `0..m`), then `Q K^T` (rows `m..2m`)
    s: Vec<T>,
    /// `[m, m]`: T = (I + A)^-1, lower triangular with a unit diagonal
    tinv: Vec<T>,
    /// `[m, K]`: -w
    nw: Vec<T>,
    /// `[m, V]`: u (then `U = u - w h`)
    u: Vec<T>,
}

/// The chunk's `Γ`, `K K^T`, `Q K^T`, `T = (I + A)^-1`, `-w` and `u`.
fn wy<T: ExpRow>(ch: &Chunk<T>) -> Wy<T> {
    let (m, kd, vd) = (ch.m, ch.kd, ch.vd);
    let gam = ch.gamma();
    let mut s = vec![T::ZERO; 2 * m * m];
    mm(&mut s, m, View::rm(&ch.kq, 2 * m, kd), View::rm(ch.k(), m, kd).t(), Acc::Set);
    let tinv = inverse(ch, &s[..m * m], &gam);
    // T [X | Y] in one product, X negated: [-w | u]
    let xy = ch.xy(true);
    let mut wu = vec![T::ZERO; m * (kd + vd)];
    mm(&mut wu, kd + vd, View::rm(&tinv, m, m), View::rm(&xy, m, kd + vd), Acc::Set);
    let (mut nw, mut u) = (vec![T::ZERO; m * kd], vec![T::ZERO; m * vd]);
    for ((row, w), u) in wu.chunks_exact(kd + vd).zip(nw.chunks_exact_mut(kd)).zip(u.chunks_exact_mut(vd)) {
        w.copy_from_slice(&row[..kd]);
        u.copy_from_slice(&row[kd..]);
    }
    Wy { gam, s, tinv, nw, u }
}

/// `T = (I + A)^-1` with `A = strictly-lower(diag(beta) (K K^T * Γ))`, by forward substitution
/// row by row: `T_i = e_i - sum_{j<i} A_ij T_j`. `T_j` is zero right of column `j`, so each block
/// of [`TB`] columns starting at `b` sums over `b <= j < i` only, in a register-sized accumulator
/// (written once per block, every element of `T` included).
fn inverse<T: ExpRow>(ch: &Chunk<T>, kk: &[T], gam: &[T]) -> Vec<T> {
    let m = ch.m;
    let mut a = vec![T::ZERO; m * m];
    for i in 0..m {
        for j in 0..i {
            let e = i * m + j;
            a[e] = ch.beta[i] * kk[e] * gam[e];
        }
    }
    let mut tinv = vec![T::ZERO; m * m];
    for i in 0..m {
        for b in (0..m).step_by(TB) {
            let w = TB.min(m - b);
            let mut acc = [T::ZERO; TB];
            let arow = &a[i * m..(i + 1) * m];
            if w == TB {
                for (j, &aij) in arow.iter().enumerate().take(i).skip(b) {
                    let tj: &[T; TB] = tinv[j * m + b..j * m + b + TB].try_into().expect("TB columns");
                    for l in 0..TB {
                        acc[l] -= aij * tj[l];
                    }
                }
            } else {
                for (j, &aij) in arow.iter().enumerate().take(i).skip(b) {
                    for (x, &t) in acc.iter_mut().zip(&tinv[j * m + b..j * m + b + w]) {
                        *x -= aij * t;
                    }
                }
            }
            if (b..b + w).contains(&i) {
                acc[i - b] = T::ONE;
            }
            tinv[i * m + b..i * m + b + w].copy_from_slice(&acc[..w]);
        }
    }
    tinv
}

/// Columns per accumulator block of [`inverse`] (two AVX2 registers of f32).
const TB: usize = 16;

/// `P [m, m] = tril(Q K^T * Γ)` (diagonal included) from `Q K^T [m, m]`.
fn scores<T: ExpRow>(qk: &[T], gam: &[T]) -> Vec<T> {
    qk.iter().zip(gam).map(|(&a, &b)| a * b).collect()
}

/// `h [K, V] <- exp(Gl) h + (K * exp(Gl - G))^T U`: the state leaving the chunk.
fn state_update<T: ExpRow>(ch: &Chunk<T>, h: &mut [T], big_u: &[T]) {
    let (m, kd, vd) = (ch.m, ch.kd, ch.vd);
    let a = ch.decay();
    h.iter_mut().for_each(|e| *e *= a);
    let kg = Chunk::rows_scaled(ch.k(), &ch.egl, kd);
    mm(h, vd, View::rm(&kg, m, kd).t(), View::rm(big_u, m, vd), Acc::Add);
}

fn forward_head<T: ExpRow>(x: &Head<'_, T>, out: &HeadOut<'_, T>) -> Vec<T> {
    let (kd, vd) = (x.kd, x.vd);
    let mut h = x.state0();
    for c in 0..x.l.div_ceil(BT) {
        let ch = Chunk::load(x, c);
        let m = ch.m;
        // the next chunk's rows arrive while this one computes
        x.prefetch((c + 1) * BT, BT);
        let Wy { gam, s, nw, mut u, .. } = wy(&ch);
        // [-w; Q exp(G)] h in one product: -w h (U = u - w h), then the inter output
        let mut lhs = vec![T::ZERO; 2 * m * kd];
        lhs[..m * kd].copy_from_slice(&nw);
        Chunk::scale_rows(&mut lhs[m * kd..], kd, ch.q(), &ch.eg, kd);
        let mut hx = vec![T::ZERO; 2 * m * vd];
        mm(&mut hx, vd, View::rm(&lhs, 2 * m, kd), View::rm(&h, kd, vd), Acc::Set);
        u.iter_mut().zip(&hx[..m * vd]).for_each(|(u, &e)| *u += e);
        let p = scores(&s[m * m..], &gam);
        let o = &mut hx[m * vd..];
        mm(o, vd, View::rm(&p, m, m), View::rm(&u, m, vd), Acc::Add);
        // SAFETY: each chunk's rows of this head are written once, by this thread.
        unsafe { out.write_o(c * BT, o) };
        state_update(&ch, &mut h, &u);
    }
    h
}

/// What stage 1 of the backward keeps per chunk (see the module docs).
struct Saved<T> {
    /// The chunk's rows (loaded once: the inputs are strided, the copy is not free)
    ch: Chunk<T>,
    /// T, -w, u (then U after the state pass), Γ, `K K^T` and `Q K^T`
    wy: Wy<T>,
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
            let mut dob = vec![T::ZERO; m * vd];
            d_o.copy_to(c * BT, &mut dob);
            let wy = wy(&ch);
            let p = scores(&wy.s[m * m..], &wy.gam);
            let mut du = vec![T::ZERO; m * vd];
            mm(&mut du, vd, View::rm(&p, m, m).t(), View::rm(&dob, m, vd), Acc::Set);
            Saved { ch, wy, du }
        })
        .collect();
    // 2. the state pass: h[c] enters chunk c; u -> U = u - w h
    let mut h = vec![T::ZERO; nt * kv];
    let mut s = x.state0();
    for (c, sv) in saved.iter_mut().enumerate() {
        h[c * kv..(c + 1) * kv].copy_from_slice(&s);
        mm(&mut sv.wy.u, vd, View::rm(&sv.wy.nw, sv.ch.m, kd), View::rm(&s, kd, vd), Acc::Add);
        state_update(&sv.ch, &mut s, &sv.wy.u);
    }
    // 3. the state-gradient pass: dh[c] is the gradient of the state leaving chunk c;
    //    dU = P^T dO + (K exp(Gl - G)) dh;  dh_prev = exp(Gl) dh + [Q exp(G); -w]^T [dO; dU]
    let mut dh = vec![T::ZERO; nt * kv];
    let mut ds = dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    for (c, sv) in saved.iter_mut().enumerate().rev() {
        let ch = &sv.ch;
        let m = ch.m;
        dh[c * kv..(c + 1) * kv].copy_from_slice(&ds);
        let kg = Chunk::rows_scaled(ch.k(), &ch.egl, kd);
        mm(&mut sv.du, vd, View::rm(&kg, m, kd), View::rm(&ds, kd, vd), Acc::Add);
        let a = ch.decay();
        ds.iter_mut().for_each(|e| *e *= a);
        let mut lhs = vec![T::ZERO; 2 * m * kd];
        Chunk::scale_rows(&mut lhs, kd, ch.q(), &ch.eg, kd);
        lhs[m * kd..].copy_from_slice(&sv.wy.nw);
        let mut rhs = vec![T::ZERO; 2 * m * vd];
        d_o.copy_to(c * BT, &mut rhs[..m * vd]);
        rhs[m * vd..].copy_from_slice(&sv.du);
        mm(&mut ds, vd, View::rm(&lhs, 2 * m, kd).t(), View::rm(&rhs, 2 * m, vd), Acc::Add);
    }
    // 4. per chunk: the gradients
    saved.par_iter().enumerate().for_each(|(c, sv)| {
        grads_chunk(d_o, sv, &h[c * kv..(c + 1) * kv], &dh[c * kv..(c + 1) * kv], c, out);
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
fn grads_chunk<T: ExpRow>(d_o: Rows<'_, T>, sv: &Saved<T>, h_c: &[T], dh_c: &[T], c: usize, out: &HeadGrads<'_, T>) {
    let ch = &sv.ch;
    let (m, kd, vd) = (ch.m, ch.kd, ch.vd);
    let Wy { gam, s, tinv, u: big_u, .. } = &sv.wy;
    let (kk, qk) = s.split_at(m * m);
    let (q, k, du) = (ch.q(), ch.k(), &sv.du);
    let mut dob = vec![T::ZERO; m * vd];
    d_o.copy_to(c * BT, &mut dob);

    // the output: dO [h; U]^T = [dO h^T | dO U^T]: dq_inter = (dO h^T) * exp(G); dP = tril(dO U^T)
    let mut hu = vec![T::ZERO; (kd + m) * vd];
    hu[..kd * vd].copy_from_slice(h_c);
    hu[kd * vd..].copy_from_slice(big_u);
    let mut r1 = vec![T::ZERO; m * (kd + m)];
    mm(&mut r1, kd + m, View::rm(&dob, m, vd), View::rm(&hu, kd + m, vd).t(), Acc::Set);
    let mut dq = vec![T::ZERO; m * kd];
    let mut dg_pt = vec![T::ZERO; m]; // c_t + cX_t, summed over t >= r below
                                      // D: the pair terms dP_ij P_ij (j < i), then dA_ij A_ij added below
    let mut pairs = vec![T::ZERO; m * m];
    // [Msym | Pg^T] [m, 2m], times [K; Q] for dk below; Pg = dP * Γ
    let mut lhs = vec![T::ZERO; 2 * m * m];
    let mut pg = vec![T::ZERO; m * m];
    for r in 0..m {
        let (row, dqr) = (&r1[r * (kd + m)..(r + 1) * (kd + m)], &mut dq[r * kd..(r + 1) * kd]);
        dqr.iter_mut().zip(&row[..kd]).for_each(|(d, &e)| *d = e * ch.eg[r]);
        dg_pt[r] = dot(dqr, &q[r * kd..(r + 1) * kd]);
        for j in 0..=r {
            let e = r * m + j;
            pg[e] = row[kd + j] * gam[e];
            lhs[j * 2 * m + m + r] = pg[e];
            if j < r {
                pairs[e] = pg[e] * qk[e];
            }
        }
    }
    mm(&mut dq, kd, View::rm(&pg, m, m), View::rm(k, m, kd), Acc::Add);

    // the state update: dk_state = (U dh'^T) * exp(Gl - G); E_s = <k_s, dk_state_s>
    let mut dk = vec![T::ZERO; m * kd];
    mm(&mut dk, kd, View::rm(big_u, m, vd), View::rm(dh_c, kd, vd).t(), Acc::Set);
    let mut e_s = vec![T::ZERO; m];
    for (r, row) in dk.chunks_exact_mut(kd).enumerate() {
        row.iter_mut().for_each(|e| *e *= ch.egl[r]);
        e_s[r] = dot(row, &k[r * kd..(r + 1) * kd]);
    }
    let hdh = ch.decay() * dot(h_c, dh_c);

    // the WY backward: dw = -dU h^T; [dX | dY] = T^T [dw | dU]; dA = -([dX | dY] [X | Y]^T) T^T
    let w = kd + vd;
    let mut dwu = vec![T::ZERO; m * w];
    mm(&mut dwu, w, View::rm(du, m, vd), View::rm(h_c, kd, vd).t(), Acc::Set);
    for (row, d) in dwu.chunks_exact_mut(w).zip(du.chunks_exact(vd)) {
        row[..kd].iter_mut().for_each(|e| *e = -*e);
        row[kd..].copy_from_slice(d);
    }
    let mut dxy = vec![T::ZERO; m * w];
    mm(&mut dxy, w, View::rm(tinv, m, m).t(), View::rm(&dwu, m, w), Acc::Set);
    let xy = ch.xy(false);
    let mut mmat = vec![T::ZERO; m * m];
    mm(&mut mmat, m, View::rm(&dxy, m, w), View::rm(&xy, m, w).t(), Acc::Set);
    let mut da = vec![T::ZERO; m * m];
    mm(&mut da, m, View::rm(&mmat, m, m), View::rm(tinv, m, m).t(), Acc::Sub);
    // A_ij = beta_i kk_ij Γ_ij (j < i): dbeta, dkk = Mk (dk += (Mk + Mk^T) K), the pairs dA_ij A_ij
    let mut dbeta = vec![T::ZERO; m];
    for i in 0..m {
        let mut db = T::ZERO;
        for j in 0..i {
            let e = i * m + j;
            let akk = kk[e] * gam[e];
            db += da[e] * akk;
            let mk = da[e] * ch.beta[i] * gam[e];
            lhs[i * 2 * m + j] += mk;
            lhs[j * 2 * m + i] += mk;
            pairs[e] += da[e] * ch.beta[i] * akk;
        }
        dbeta[i] = db;
    }
    // dk += [Msym | Pg^T] [K; Q]
    mm(&mut dk, kd, View::rm(&lhs, m, 2 * m), View::rm(&ch.kq, 2 * m, kd), Acc::Add);
    // X = beta exp(G) K, Y = beta V
    let mut dv = vec![T::ZERO; m * vd];
    for r in 0..m {
        let (dxr, dyr) = dxy[r * w..(r + 1) * w].split_at(kd);
        let kr = &k[r * kd..(r + 1) * kd];
        let bx = ch.beta[r] * ch.eg[r];
        let dxk = dot(dxr, kr);
        dbeta[r] += ch.eg[r] * dxk + dot(dyr, &ch.v[r * vd..(r + 1) * vd]);
        dg_pt[r] += bx * dxk;
        dk[r * kd..(r + 1) * kd].iter_mut().zip(dxr).for_each(|(a, &b)| *a += bx * b);
        dv[r * vd..(r + 1) * vd].iter_mut().zip(dyr).for_each(|(a, &b)| *a = ch.beta[r] * b);
    }

    // dg_r = sum_{t>=r} dg_pt[t] + hdh + sum_{s<r} E_s + sum_{i>=r, j<r} D_ij
    let mut dg = vec![T::ZERO; m];
    // pref[i] holds sum_{j<r} D_ij while r sweeps up; rect[r] = sum_{i>=r} pref_i(r)
    let (mut rect, mut pref) = (vec![T::ZERO; m], vec![T::ZERO; m]);
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
