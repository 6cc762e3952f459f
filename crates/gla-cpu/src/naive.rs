//! The naive recurrent oracle: token by token, exactly the spec, generic over f32 and f64.
//!
//! ```text
//! S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
//! ```
//!
//! Its backward keeps every state `S_0..S_L` (memory `L*K*V` per sequence and head: it is an
//! oracle, not a product path) and walks back with the state gradient `dS`:
//!
//! ```text
//! dS   = dht;  for t = L..1:
//!   dS  += scale q_t do_t^T
//!   dq_t = scale S_t do_t,   dk_t = dS v_t,   dv_t = dS^T k_t
//!   dg_t = exp(g_t) * rowsum(S_{t-1} * dS)          (elementwise product, summed over V)
//!   dS   = diag(exp(g_t)) dS
//! dh0 = dS
//! ```
//!
//! The `dg` formula here is the direct one (derivative of the decay at step t); the fast paths use
//! the GLA paper's reverse-cumsum form instead, so the two derivations check each other. This
//! backward is itself checked by central finite differences in f64 (tests/oracle.rs).

use gla_core::op::GlaOp;
use gla_core::{Backward, Forward, Grads, Inputs, Problem, Real, Result};

use crate::driver::{self, SeqGradIn, SeqIn, SeqOut, SeqSinks, Validation};

/// The token-by-token oracle (`cpu-naive`). Use `Naive` with f64 as the reference of every test.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naive;

fn states<T: Real>(x: &SeqIn<'_, T>) -> Vec<T> {
    let (kd, vd, kv) = (x.kd, x.vd, x.kd * x.vd);
    let mut s = vec![T::ZERO; (x.l + 1) * kv];
    s[..kv].copy_from_slice(&x.state0());
    let mut g = vec![T::ZERO; kd];
    for t in 0..x.l {
        let (prev, next) = s[t * kv..(t + 2) * kv].split_at_mut(kv);
        let (k, v) = (x.k.row(t), x.v.row(t));
        x.g_row(t, &mut g);
        for i in 0..kd {
            let decay = g[i].exp();
            for j in 0..vd {
                next[i * vd + j] = decay * prev[i * vd + j] + k[i] * v[j];
            }
        }
    }
    s
}

/// Streams through time with one state: O(K*V) memory, so the oracle's forward also serves
/// long checks (T = 65536 and beyond).
fn forward_seq<T: Real>(x: &SeqIn<'_, T>, out: &SeqOut<'_, T>) -> Vec<T> {
    let (kd, vd) = (x.kd, x.vd);
    let mut s = x.state0();
    let (mut o, mut g) = (vec![T::ZERO; vd], vec![T::ZERO; kd]);
    for t in 0..x.l {
        let (q, k, v) = (x.q.row(t), x.k.row(t), x.v.row(t));
        x.g_row(t, &mut g);
        for i in 0..kd {
            let decay = g[i].exp();
            for j in 0..vd {
                s[i * vd + j] = decay * s[i * vd + j] + k[i] * v[j];
            }
        }
        for j in 0..vd {
            let mut acc = T::ZERO;
            for i in 0..kd {
                acc += s[i * vd + j] * q[i];
            }
            o[j] = x.scale * acc;
        }
        // SAFETY: one call per row of this (sequence, head), from this thread only.
        unsafe { out.write_o(t, &o) };
    }
    s
}

fn backward_seq<T: Real>(x: &SeqIn<'_, T>, d: &SeqGradIn<'_, T>, out: &SeqSinks<'_, T>) -> Vec<T> {
    let (l, kd, vd, kv) = (x.l, x.kd, x.vd, x.kd * x.vd);
    let s = states(x);
    let mut ds = d.dht.map_or_else(|| vec![T::ZERO; kv], <[T]>::to_vec);
    let (mut dq, mut dk, mut dv, mut dg) = (vec![T::ZERO; kd], vec![T::ZERO; kd], vec![T::ZERO; vd], vec![T::ZERO; kd]);
    let mut g = vec![T::ZERO; kd];
    for t in (0..l).rev() {
        let (s_prev, s_t) = (&s[t * kv..(t + 1) * kv], &s[(t + 1) * kv..(t + 2) * kv]);
        let (q, k, v, d_o) = (x.q.row(t), x.k.row(t), x.v.row(t), d.d_o.row(t));
        x.g_row(t, &mut g);
        for i in 0..kd {
            let qi = x.scale * q[i];
            let (mut dqi, mut dki, mut dgi) = (T::ZERO, T::ZERO, T::ZERO);
            for j in 0..vd {
                ds[i * vd + j] += qi * d_o[j];
                dqi += s_t[i * vd + j] * d_o[j];
                dki += ds[i * vd + j] * v[j];
                dgi += s_prev[i * vd + j] * ds[i * vd + j];
            }
            dq[i] = x.scale * dqi;
            dk[i] = dki;
            dg[i] = g[i].exp() * dgi;
        }
        for j in 0..vd {
            let mut acc = T::ZERO;
            for i in 0..kd {
                acc += ds[i * vd + j] * k[i];
            }
            dv[j] = acc;
        }
        for i in 0..kd {
            let decay = g[i].exp();
            for j in 0..vd {
                ds[i * vd + j] *= decay;
            }
        }
        // SAFETY: one call per row of this (sequence, head), from this thread only.
        unsafe {
            out.write_qkv(t, &dq, &dk, &dv);
            out.write_dg(t, &dg);
        }
    }
    ds
}

impl<T: Real> GlaOp<T> for Naive {
    fn name(&self) -> &'static str {
        "cpu-naive"
    }
    fn forward(&self, p: &Problem, x: &Inputs<'_, T>, output_final_state: bool) -> Result<Forward<T>> {
        driver::forward(GlaOp::<T>::name(self), p, x, output_final_state, Validation::Upfront, forward_seq)
    }
    fn backward(&self, p: &Problem, x: &Inputs<'_, T>, d: &Backward<'_, T>) -> Result<Grads<T>> {
        driver::backward(GlaOp::<T>::name(self), p, x, d, Validation::Upfront, backward_seq)
    }
}
