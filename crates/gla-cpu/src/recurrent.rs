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

/// Advances `s [K, V]` by tokens `rows` of `x`, writing their output rows when `out` is given.
fn run<T: ExpRow>(x: &SeqIn<'_, T>, s: &mut [T], out: Option<&SeqOut<'_, T>>, rows: std::ops::Range<usize>) {
    let (kd, vd) = (x.kd, x.vd);
    let (mut g, mut decay, mut acc) = (vec![T::ZERO; kd], vec![T::ZERO; kd], vec![T::ZERO; vd]);
    for t in rows {
        let (q, k, v) = (x.q.row(t), x.k.row(t), x.v.row(t));
        x.g_row(t, &mut g);
        T::exp_row(&g, &mut decay);
        acc.fill(T::ZERO);
        for i in 0..kd {
            let (decay, ki, qi) = (decay[i], k[i], q[i] * x.scale);
            let row = &mut s[i * vd..(i + 1) * vd];
            for j in 0..vd {
                row[j] = decay * row[j] + ki * v[j];
            }
            if out.is_some() {
                for (a, &sj) in acc.iter_mut().zip(row.iter()) {
                    *a += qi * sj;
                }
            }
        }
        if let Some(out) = out {
            // SAFETY: one call per row of this (sequence, head), from this thread only.
            unsafe { out.write_o(t, &acc) };
        }
    }
}

fn forward_seq<T: ExpRow>(x: &SeqIn<'_, T>, out: &SeqOut<'_, T>) -> Vec<T> {
    let mut s = x.state0();
    run(x, &mut s, Some(out), 0..x.l);
    s
}

fn backward_seq<T: ExpRow>(x: &SeqIn<'_, T>, d: &SeqGradIn<'_, T>, out: &SeqSinks<'_, T>) -> Vec<T> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    // pass 1: checkpoint the state entering every block of BT tokens
    let nb = l.div_ceil(BT);
    let mut ckpt = vec![T::ZERO; nb * kv];
    let mut s = x.state0();
    for blk in 0..nb {
        ckpt[blk * kv..(blk + 1) * kv].copy_from_slice(&s);
        run(x, &mut s, None, blk * BT..((blk + 1) * BT).min(l));
    }
    // pass 2: blocks in reverse; rebuild the block's states, then walk back through it
    let mut ds = d.dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    let (mut dq, mut dk, mut dv, mut dg) = (vec![T::ZERO; kd], vec![T::ZERO; kd], vec![T::ZERO; vd], vec![T::ZERO; kd]);
    let (mut g, mut decays) = (vec![T::ZERO; kd], vec![T::ZERO; kd]);
    let mut states = vec![T::ZERO; (BT + 1) * kv];
    for blk in (0..nb).rev() {
        let rows = blk * BT..((blk + 1) * BT).min(l);
        states[..kv].copy_from_slice(&ckpt[blk * kv..(blk + 1) * kv]);
        for (i, t) in rows.clone().enumerate() {
            let (prev, next) = states[i * kv..(i + 2) * kv].split_at_mut(kv);
            next.copy_from_slice(prev);
            run(x, next, None, t..t + 1);
        }
        for (i, t) in rows.enumerate().rev() {
            let (s_prev, s_t) = (&states[i * kv..(i + 1) * kv], &states[(i + 1) * kv..(i + 2) * kv]);
            let (q, k, v, d_o) = (x.q.row(t), x.k.row(t), x.v.row(t), d.d_o.row(t));
            x.g_row(t, &mut g);
            T::exp_row(&g, &mut decays);
            dv.fill(T::ZERO);
            for i in 0..kd {
                let qi = q[i] * x.scale;
                let (row, sp, st) = (&mut ds[i * vd..(i + 1) * vd], &s_prev[i * vd..(i + 1) * vd], &s_t[i * vd..(i + 1) * vd]);
                let (mut dqi, mut dki, mut dgi) = (T::ZERO, T::ZERO, T::ZERO);
                for j in 0..vd {
                    row[j] += qi * d_o[j];
                    dqi += st[j] * d_o[j];
                    dki += row[j] * v[j];
                    dgi += sp[j] * row[j];
                    dv[j] += row[j] * k[i];
                }
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
