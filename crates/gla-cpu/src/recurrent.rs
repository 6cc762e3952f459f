//! The fused recurrent path: one pass over time with the state `[K, V]` held in cache, O(K*V)
//! memory per (sequence, head) whatever the length. It serves decoding (one token per step with a
//! carried state, [`decode_step`]) and short inputs (T <= 64), as fla's `fused_recurrent_gla`.
//!
//! Backward in two passes with block checkpoints (memory `(T/BT + BT) * K * V`, not `T * K * V`):
//! 1. forward in time, keeping only the state entering every block of `BT = 64` tokens;
//! 2. blocks in reverse: rebuild the block's `BT` states from its checkpoint, then walk back with
//!    the state gradient `dS` (seeded by `dht`):
//!    `dS += scale q_t do_t^T; dq_t = scale S_t do_t; dk_t = dS v_t; dv_t = dS^T k_t;
//!    dg_t = exp(g_t) rowsum(S_{t-1} * dS); dS = diag(exp(g_t)) dS`, and `dh0 = dS`.
//!
//! `dg` is taken in this direct form, not fla's closed form `sum_{s>=t} (q*dq - k*dk)_s + ...`:
//! under strong decay that reverse cumsum over the whole sequence cancels pairs of O(1) terms and
//! loses about 1e-4 relative accuracy in f32 (measured on the case table), the direct form none.

use gla_core::op::GlaOp;
use gla_core::{Backward, Error, Forward, GateKind, Grads, Inputs, Problem, ProblemSpec, Result, BT};

use crate::driver::{self, SeqGradIn, SeqIn, SeqOut, SeqSinks, Validation};
use crate::fexp::ExpRow;

/// The fused recurrent algorithm (`cpu-recurrent`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FusedRecurrent;

/// Per-token buffers of [`run`] (allocated once per (sequence, head), not per call).
struct Tmp<T> {
    g: Vec<T>,
    decay: Vec<T>,
    acc: Vec<T>,
}

impl<T: ExpRow> Tmp<T> {
    fn new(kd: usize, vd: usize) -> Self {
        Self { g: vec![T::ZERO; kd], decay: vec![T::ZERO; kd], acc: vec![T::ZERO; vd] }
    }
}

/// `next [K, V] = diag(exp(g_t)) prev + k_t v_t^T`, the state after token `t` (`decay` holds
/// `exp(g_t)`).
#[inline]
fn advance<T: ExpRow>(next: &mut [T], prev: &[T], decay: &[T], k: &[T], v: &[T], vd: usize) {
    for ((nrow, prow), (&dec, &ki)) in next.chunks_exact_mut(vd).zip(prev.chunks_exact(vd)).zip(decay.iter().zip(k)) {
        for ((n, &p), &vj) in nrow.iter_mut().zip(prow).zip(v) {
            *n = dec * p + ki * vj;
        }
    }
}

/// Advances `s [K, V]` by tokens `rows` of `x`, writing their output rows when `out` is given.
fn run<T: ExpRow>(x: &SeqIn<'_, T>, s: &mut [T], out: Option<&SeqOut<'_, T>>, rows: std::ops::Range<usize>, tmp: &mut Tmp<T>) {
    let vd = x.vd;
    let Tmp { g, decay, acc } = tmp;
    for t in rows {
        let (q, k, v) = (x.q.row(t), x.k.row(t), x.v.row(t));
        x.g_row(t, g);
        T::exp_row(g, decay);
        acc.fill(T::ZERO);
        for ((row, &dec), (&ki, &qi)) in s.chunks_exact_mut(vd).zip(decay.iter()).zip(k.iter().zip(q)) {
            let qi = qi * x.scale;
            for (r, &vj) in row.iter_mut().zip(v) {
                *r = dec * *r + ki * vj;
            }
            if out.is_some() {
                for (a, &sj) in acc.iter_mut().zip(row.iter()) {
                    *a += qi * sj;
                }
            }
        }
        if let Some(out) = out {
            // SAFETY: one call per row of this (sequence, head), from this thread only.
            unsafe { out.write_o(t, acc) };
        }
    }
}

fn forward_seq<T: ExpRow>(x: &SeqIn<'_, T>, out: &SeqOut<'_, T>) -> Vec<T> {
    let mut s = x.state0();
    run(x, &mut s, Some(out), 0..x.l, &mut Tmp::new(x.kd, x.vd));
    s
}

/// Lanes of the backward's dot products: each keeps this many partial sums, so that the
/// reductions over V vectorise (a single running sum is one serial chain of adds).
const LANES: usize = 8;

/// The three dot products of one state row in the backward, over V in [`LANES`] partial sums:
/// `(st . d_o, ds . v, sp . ds)`.
#[inline]
fn dots3<T: ExpRow>(st: &[T], d_o: &[T], ds: &[T], v: &[T], sp: &[T]) -> (T, T, T) {
    let (mut a, mut b, mut c) = ([T::ZERO; LANES], [T::ZERO; LANES], [T::ZERO; LANES]);
    let n = st.len() / LANES * LANES;
    for j0 in (0..n).step_by(LANES) {
        let (st, d_o, ds, v, sp) =
            (&st[j0..j0 + LANES], &d_o[j0..j0 + LANES], &ds[j0..j0 + LANES], &v[j0..j0 + LANES], &sp[j0..j0 + LANES]);
        for l in 0..LANES {
            a[l] += st[l] * d_o[l];
            b[l] += ds[l] * v[l];
            c[l] += sp[l] * ds[l];
        }
    }
    let (mut sa, mut sb, mut sc) = (T::ZERO, T::ZERO, T::ZERO);
    for j in n..st.len() {
        sa += st[j] * d_o[j];
        sb += ds[j] * v[j];
        sc += sp[j] * ds[j];
    }
    for l in 0..LANES {
        sa += a[l];
        sb += b[l];
        sc += c[l];
    }
    (sa, sb, sc)
}

fn backward_seq<T: ExpRow>(x: &SeqIn<'_, T>, d: &SeqGradIn<'_, T>, out: &SeqSinks<'_, T>) -> Vec<T> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    let mut tmp = Tmp::new(kd, vd);
    // pass 1: checkpoint the state entering every block of BT tokens (the last block's own
    // tokens are not needed: pass 2 rebuilds them)
    let nb = l.div_ceil(BT);
    let mut ckpt = vec![T::ZERO; nb * kv];
    let mut s = x.state0();
    for blk in 0..nb {
        ckpt[blk * kv..(blk + 1) * kv].copy_from_slice(&s);
        if blk + 1 < nb {
            run(x, &mut s, None, blk * BT..(blk + 1) * BT, &mut tmp);
        }
    }
    // pass 2: blocks in reverse; rebuild the block's states, then walk back through it
    let mut ds = d.dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    let (mut dq, mut dk, mut dv, mut dg) = (vec![T::ZERO; kd], vec![T::ZERO; kd], vec![T::ZERO; vd], vec![T::ZERO; kd]);
    let Tmp { g, decay: decays, .. } = &mut tmp;
    let mut states = vec![T::ZERO; (BT + 1) * kv];
    for blk in (0..nb).rev() {
        let rows = blk * BT..((blk + 1) * BT).min(l);
        states[..kv].copy_from_slice(&ckpt[blk * kv..(blk + 1) * kv]);
        for (i, t) in rows.clone().enumerate() {
            let (prev, next) = states[i * kv..(i + 2) * kv].split_at_mut(kv);
            x.g_row(t, g);
            T::exp_row(g, decays);
            advance(next, prev, decays, x.k.row(t), x.v.row(t), vd);
        }
        for (i, t) in rows.enumerate().rev() {
            let (s_prev, s_t) = (&states[i * kv..(i + 1) * kv], &states[(i + 1) * kv..(i + 2) * kv]);
            let (q, k, v, d_o) = (x.q.row(t), x.k.row(t), x.v.row(t), d.d_o.row(t));
            x.g_row(t, g);
            T::exp_row(g, decays);
            dv.fill(T::ZERO);
            for i in 0..kd {
                let (qi, ki) = (q[i] * x.scale, k[i]);
                let (row, sp, st) = (&mut ds[i * vd..(i + 1) * vd], &s_prev[i * vd..(i + 1) * vd], &s_t[i * vd..(i + 1) * vd]);
                for ((r, &doj), dvj) in row.iter_mut().zip(d_o).zip(dv.iter_mut()) {
                    *r += qi * doj;
                    *dvj += *r * ki;
                }
                let (dqi, dki, dgi) = dots3(st, d_o, row, v, sp);
                let decay = decays[i];
                dq[i] = x.scale * dqi;
                dk[i] = dki;
                dg[i] = decay * dgi;
                for r in row.iter_mut() {
                    *r *= decay;
                }
            }
            // SAFETY: one call per row of this (sequence, head), from this thread only.
            unsafe {
                out.write_qkv(t, &dq, &dk, &dv);
                out.write_dg(t, &dg);
            }
        }
    }
    ds
}

impl<T: ExpRow> GlaOp<T> for FusedRecurrent {
    fn name(&self) -> &'static str {
        "cpu-recurrent"
    }
    fn forward(&self, p: &Problem, x: &Inputs<'_, T>, output_final_state: bool) -> Result<Forward<T>> {
        driver::forward(GlaOp::<T>::name(self), p, x, output_final_state, Validation::Upfront, forward_seq)
    }
    fn backward(&self, p: &Problem, x: &Inputs<'_, T>, d: &Backward<'_, T>) -> Result<Grads<T>> {
        driver::backward(GlaOp::<T>::name(self), p, x, d, Validation::Upfront, backward_seq)
    }
}

/// One decode step for N sequences: advances `state [N, H, K, V]` in place by one token per
/// sequence and returns `o [N, H, V]`.
///
/// `q`, `k`: `[N, H, K]`; `v`: `[N, H, V]`; `g`: `[N, H, K]` (per-key), `[N, H]` (per-head) or
/// `None` (no gate), per `gate`. `scale` defaults to `K^-1/2`.
///
/// # Errors
/// Shape and value errors as [`Inputs::validate`]; the state is left unchanged on error.
#[allow(clippy::too_many_arguments)]
pub fn decode_step(
    state: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: Option<&[f32]>,
    gate: GateKind,
    (n, h, kd, vd): (usize, usize, usize, usize),
    scale: Option<f64>,
) -> Result<Vec<f32>> {
    let p = Problem::new(ProblemSpec { b: n, t: 1, h, k: kd, v: vd, gate, scale, cu_seqlens: None })?;
    if state.len() != p.state_len() {
        return Err(Error::ShapeMismatch {
            op: "decode_step",
            tensor: "state",
            expected: p.shape_str("S"),
            numel: p.state_len(),
            got: state.len(),
        });
    }
    let x = Inputs { q, k, v, g, h0: Some(state) };
    let out = FusedRecurrent.forward(&p, &x, true)?;
    if let Some(ht) = out.ht {
        state.copy_from_slice(&ht);
    }
    Ok(out.o)
}
