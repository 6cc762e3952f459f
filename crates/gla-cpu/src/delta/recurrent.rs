//! The fused recurrent delta-rule path: one pass over time with the state `[K, V]` held in cache,
//! O(K*V) memory per (sequence, value head) whatever the length. It serves decoding ([`delta_step`])
//! and short inputs, as fla's `fused_recurrent_gated_delta_rule`.
//!
//! Per token, on the prepared inputs ([`super::prep`]), two passes over the state:
//!
//! ```text
//! S' = exp(g_t) S_{t-1};   p = S'^T k_t;   y = S'^T q_t          (pass 1)
//! u  = beta_t (v_t - p);   S_t = S' + k_t u^T;   o_t = y + (q_t . k_t) u    (pass 2)
//! ```
//!
//! Backward in two passes with block checkpoints (memory `(L/BT + BT) * K * V`, not `L * K * V`):
//! 1. forward in time, keeping only the state entering every block of `BT = 64` tokens;
//! 2. blocks in reverse: rebuild the block's states (and each token's `u` and `v - p`) from its
//!    checkpoint, then walk back with the state gradient `dS` (seeded by `dht`) as the oracle does
//!    ([`super::DeltaNaive`]):
//!
//! ```text
//! dS += q_t do_t^T;  dq_t = S_t do_t;  dk_t = dS u;  du = dS^T k_t       (pass 1)
//! dv_t = beta du;  dbeta_t = du . (v_t - p);  dp = -beta du
//! dS' = dS + k_t dp^T;  dk_t += S' dp;  dg_t = exp(g_t) <S_{t-1}, dS'>;  dS = exp(g_t) dS'   (pass 2)
//! ```

use gla_core::delta::DeltaOp;
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, Error, Forward, Result, BT};
use rayon::prelude::*;

use super::driver::{self, Head, HeadGrads, HeadOut, Rows};
use crate::fexp::ExpRow;

/// The fused recurrent delta-rule algorithm (`cpu-delta-recurrent`), f32 (the product) and f64.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaRecurrent;

/// Scratch of one token step: `p [V]`, `u [V]`.
struct Scratch<T> {
    p: Vec<T>,
    u: Vec<T>,
}

impl<T: ExpRow> Scratch<T> {
    fn new(vd: usize) -> Self {
        Self { p: vec![T::ZERO; vd], u: vec![T::ZERO; vd] }
    }
}

/// One token: `s [K, V]` from `S_{t-1}` to `S_t`; writes `o_t` into `o [V]` when given and leaves
/// `p = S'^T k` and `u` in the scratch.
#[allow(clippy::too_many_arguments)]
#[inline]
fn step<T: ExpRow>(s: &mut [T], decay: T, q: &[T], k: &[T], v: &[T], beta: T, w: &mut Scratch<T>, o: Option<&mut [T]>) {
    let vd = v.len();
    let (p, u) = (&mut w.p[..vd], &mut w.u[..vd]);
    p.fill(T::ZERO);
    match o {
        Some(o) => {
            let o = &mut o[..vd];
            o.fill(T::ZERO);
            let mut qk = T::ZERO;
            for ((row, &ka), &qa) in s.chunks_exact_mut(vd).zip(k).zip(q) {
                for ((e, pc), oc) in row.iter_mut().zip(p.iter_mut()).zip(o.iter_mut()) {
                    *e *= decay;
                    *pc += *e * ka;
                    *oc += *e * qa;
                }
                qk += qa * ka;
            }
            for (((uc, &vc), &pc), oc) in u.iter_mut().zip(v).zip(p.iter()).zip(o.iter_mut()) {
                *uc = beta * (vc - pc);
                *oc += qk * *uc;
            }
        }
        None => {
            for (row, &ka) in s.chunks_exact_mut(vd).zip(k) {
                for (e, pc) in row.iter_mut().zip(p.iter_mut()) {
                    *e *= decay;
                    *pc += *e * ka;
                }
            }
            for ((uc, &vc), &pc) in u.iter_mut().zip(v).zip(p.iter()) {
                *uc = beta * (vc - pc);
            }
        }
    }
    for (row, &ka) in s.chunks_exact_mut(vd).zip(k) {
        for (e, &uc) in row.iter_mut().zip(u.iter()) {
            *e += ka * uc;
        }
    }
}

/// `exp(g_t)`: through [`ExpRow`] (the vectorised exp for f32), as every path computes decays.
#[inline]
fn decay<T: ExpRow>(g: T) -> T {
    let mut out = [T::ZERO];
    T::exp_row(&[g], &mut out);
    out[0]
}

/// Advances `s` by tokens `rows` of `x`, writing their outputs when `out` is given.
fn run<T: ExpRow>(x: &Head<'_, T>, s: &mut [T], out: Option<&HeadOut<'_, T>>, rows: std::ops::Range<usize>) {
    let mut w = Scratch::new(x.vd);
    let mut o = vec![T::ZERO; x.vd];
    for t in rows {
        let o_t = out.is_some().then_some(&mut o[..]);
        step(s, decay(x.g.at(t)), x.q.row(t), x.k.row(t), x.v.row(t), x.beta.at(t), &mut w, o_t);
        if let Some(out) = out {
            // SAFETY: one call per row of this head, from this thread only.
            unsafe { out.write_o(t, &o) };
        }
    }
}

fn forward_head<T: ExpRow>(x: &Head<'_, T>, out: &HeadOut<'_, T>) -> Vec<T> {
    let mut s = x.state0();
    run(x, &mut s, Some(out), 0..x.l);
    s
}

fn backward_head<T: ExpRow>(x: &Head<'_, T>, d_o: Rows<'_, T>, dht: Option<&[T]>, out: &HeadGrads<'_, T>) -> Vec<T> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    // pass 1: checkpoint the state entering every block of BT tokens
    let nb = l.div_ceil(BT);
    let mut ckpt = vec![T::ZERO; nb * kv];
    let mut s = x.state0();
    for blk in 0..nb {
        ckpt[blk * kv..(blk + 1) * kv].copy_from_slice(&s);
        run(x, &mut s, None, blk * BT..((blk + 1) * BT).min(l));
    }
    // pass 2: blocks in reverse; rebuild the block's states, u and v - p, then walk back
    let mut ds = dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    let mut states = vec![T::ZERO; (BT + 1) * kv];
    let (mut us, mut rs) = (vec![T::ZERO; BT * vd], vec![T::ZERO; BT * vd]);
    let (mut dq, mut dk, mut dv) = (vec![T::ZERO; BT * kd], vec![T::ZERO; BT * kd], vec![T::ZERO; BT * vd]);
    let (mut dbeta, mut dg) = (vec![T::ZERO; BT], vec![T::ZERO; BT]);
    let (mut du, mut dp) = (vec![T::ZERO; vd], vec![T::ZERO; vd]);
    let mut w = Scratch::new(vd);
    for blk in (0..nb).rev() {
        let rows = blk * BT..((blk + 1) * BT).min(l);
        states[..kv].copy_from_slice(&ckpt[blk * kv..(blk + 1) * kv]);
        for (i, t) in rows.clone().enumerate() {
            let (prev, next) = states[i * kv..(i + 2) * kv].split_at_mut(kv);
            next.copy_from_slice(prev);
            let v = x.v.row(t);
            step(next, decay(x.g.at(t)), x.q.row(t), x.k.row(t), v, x.beta.at(t), &mut w, None);
            us[i * vd..(i + 1) * vd].copy_from_slice(&w.u);
            for c in 0..vd {
                rs[i * vd + c] = v[c] - w.p[c];
            }
        }
        for (i, t) in rows.clone().enumerate().rev() {
            let (s_prev, s_t) = (&states[i * kv..(i + 1) * kv], &states[(i + 1) * kv..(i + 2) * kv]);
            let (q, k, d_o) = (x.q.row(t), x.k.row(t), d_o.row(t));
            let (a, beta) = (decay(x.g.at(t)), x.beta.at(t));
            let (u, r) = (&us[i * vd..(i + 1) * vd], &rs[i * vd..(i + 1) * vd]);
            let (dq_t, dk_t) = (&mut dq[i * kd..(i + 1) * kd], &mut dk[i * kd..(i + 1) * kd]);
            du.fill(T::ZERO);
            for a_ in 0..kd {
                let row = &mut ds[a_ * vd..(a_ + 1) * vd];
                let st = &s_t[a_ * vd..(a_ + 1) * vd];
                let (qa, ka) = (q[a_], k[a_]);
                // dS += q do^T; dq = S_t do; dk = dS u; du += k dS (two dot products in lanes)
                axpy(row, qa, d_o);
                dq_t[a_] = dot(st, d_o);
                dk_t[a_] = dot(row, u);
                axpy(&mut du, ka, row);
            }
            let mut dbt = T::ZERO;
            let dv_t = &mut dv[i * vd..(i + 1) * vd];
            for c in 0..vd {
                dv_t[c] = beta * du[c];
                dbt += du[c] * r[c];
                dp[c] = -(beta * du[c]);
            }
            dbeta[i] = dbt;
            let mut dgt = T::ZERO;
            for a_ in 0..kd {
                let row = &mut ds[a_ * vd..(a_ + 1) * vd];
                let sp = &s_prev[a_ * vd..(a_ + 1) * vd];
                let ka = k[a_];
                // dS' = dS + k dp^T; dk += S' dp; dg += <S_{t-1}, dS'>; dS = a dS'
                axpy(row, ka, &dp);
                dk_t[a_] += a * dot(sp, &dp);
                dgt += dot(sp, row);
                row.iter_mut().for_each(|e| *e *= a);
            }
            dg[i] = a * dgt;
        }
        let m = rows.len();
        // SAFETY: each block's rows of this head are written once, by this thread.
        unsafe { out.write(rows.start, &dq[..m * kd], &dk[..m * kd], &dv[..m * vd], &dbeta[..m], &dg[..m]) };
    }
    ds
}

/// `y += a x`.
#[inline(always)]
fn axpy<T: ExpRow>(y: &mut [T], a: T, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

/// `x . y`, summed in 8 lanes (lane `c % 8`) added up at the end, so that it vectorises (a single
/// running sum is a serial dependency the compiler must keep in order).
#[inline(always)]
fn dot<T: ExpRow>(x: &[T], y: &[T]) -> T {
    const L: usize = 8;
    let n = x.len().min(y.len());
    let whole = n / L * L;
    let mut acc = [T::ZERO; L];
    for (a, b) in x[..whole].chunks_exact(L).zip(y[..whole].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, c) in (whole..n).enumerate() {
        acc[l] += x[c] * y[c];
    }
    acc.iter().fold(T::ZERO, |s, &e| s + e)
}

impl<T: ExpRow> DeltaOp<T> for DeltaRecurrent {
    fn name(&self) -> &'static str {
        "cpu-delta-recurrent"
    }
    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, output_final_state: bool) -> Result<Forward<T>> {
        driver::forward(DeltaOp::<T>::name(self), p, x, output_final_state, forward_head)
    }
    fn backward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, d: &Backward<'_, T>) -> Result<DeltaGrads<T>> {
        driver::backward(DeltaOp::<T>::name(self), p, x, d, backward_head)
    }
}

/// One decode step of the delta rule: advances `state [N, HV, K, V]` in place by the tokens of
/// `p` (one per sequence when decoding: `T = 1`, `B = N`) and returns `o [B, T, HV, V]`
/// (`[N, HV, V]` for one token).
///
/// `x` holds the raw inputs of those tokens as for [`DeltaOp::forward`] (q, k `[N, H, K]`, v
/// `[N, HV, V]`, beta and g or `a` `[N, HV]`, `A_log` and `dt_bias` `[HV]`), and `p` the layer's
/// options: with `l2_qk`, `beta_sigmoid` and [`gla_core::DeltaGate::Computed`] the maps run
/// here; with them off, `x` holds already-prepared values. `x.h0` must be `None`: the state is
/// `state`. The numbers are those of [`DeltaRecurrent`]'s forward bit for bit (the same per-token
/// code), so prefill by the forward and decode by steps agree.
///
/// ```
/// use gla_core::{DeltaGate, DeltaInputs, DeltaProblem, DeltaSpec};
/// use gla_cpu::delta::delta_step;
/// // two sequences, one token each; H = 1, HV = 2, K = 4, V = 3
/// let mut spec = DeltaSpec::new(2, 1, 1, 4, 3, DeltaGate::LogDecay);
/// (spec.hv, spec.l2_qk, spec.beta_sigmoid) = (2, true, true);
/// let p = DeltaProblem::new(spec).unwrap();
/// let mut state = vec![0.0f32; p.state_len()];
/// let (q, v) = (vec![0.5f32; p.qk_len()], vec![1.0f32; p.v_len()]);
/// let (beta, g) = (vec![0.0f32; p.beta_len()], vec![-0.1f32; p.g_len()]);
/// let x = DeltaInputs { q: &q, k: &q, v: &v, beta: &beta, g: Some(&g), a_log: None, dt_bias: None, h0: None };
/// let o = delta_step(&p, &mut state, &x).unwrap();
/// assert_eq!(o.len(), 2 * 2 * 3);
/// assert!(state.iter().any(|&s| s != 0.0));
/// ```
///
/// # Errors
/// [`Error::ShapeMismatch`] for a `state` of the wrong length, [`Error::BadArg`] when `x.h0` is
/// given, and every error of [`DeltaInputs::validate`] (a non-finite state is `h0`'s); the state
/// is left unchanged on error.
pub fn delta_step(p: &DeltaProblem, state: &mut [f32], x: &DeltaInputs<'_, f32>) -> Result<Vec<f32>> {
    const OP: &str = "delta_step";
    if x.h0.is_some() {
        return Err(Error::BadArg { key: "h0", reason: "delta_step: the state is the `state` argument; pass h0: None".into() });
    }
    if state.len() != p.state_len() {
        return Err(Error::ShapeMismatch { op: OP, tensor: "state", expected: p.shape_str("S"), numel: p.state_len(), got: state.len() });
    }
    let xs = DeltaInputs { h0: Some(&*state), ..*x };
    let pre = driver::prepare(OP, p, &xs)?;
    let (hv, kv, vd) = (p.hv(), p.k() * p.v(), p.v());
    let mut o = vec![0.0f32; p.v_len()];
    // the rows of one value head interleave with the others' in o, so each task returns its rows
    let outs: Vec<Vec<f32>> = state
        .par_chunks_mut(kv)
        .enumerate()
        .map(|(i, s)| {
            let (n, j) = (i / hv, i % hv);
            let x = driver::head(p, &pre, x.v, None, n, j);
            let (mut w, mut out) = (Scratch::new(vd), vec![0.0f32; x.l * vd]);
            for (t, o_t) in out.chunks_exact_mut(vd).enumerate() {
                step(s, decay(x.g.at(t)), x.q.row(t), x.k.row(t), x.v.row(t), x.beta.at(t), &mut w, Some(o_t));
            }
            out
        })
        .collect();
    for (i, rows_o) in outs.iter().enumerate() {
        let (n, j) = (i / hv, i % hv);
        for (t, o_t) in rows_o.chunks_exact(vd).enumerate() {
            let r = p.seq(n).start + t;
            o[(r * hv + j) * vd..(r * hv + j + 1) * vd].copy_from_slice(o_t);
        }
    }
    Ok(o)
}
