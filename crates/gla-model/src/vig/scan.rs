//! ViG's bidirectional scan, the one place the model calls it: the fused bidirectional op
//! ([`crate::backend::VisionOps::bidir_fwd`], gla-core's `bidir` contract) over each image's
//! tokens,
//!
//! ```text
//! S^f_t = diag(exp(gf_t)) S^f_{t-1} + k_t^T v_t     o^f_t = q_t S^f_t K^-1/2   (t = 0 .. T-1)
//! S^b_t = diag(exp(gb_t)) S^b_{t+1} + k_t^T v_t     o^b_t = q_t S^b_t K^-1/2   (t = T-1 .. 0)
//! o = (o^f + o^b) / 2
//! ```
//!
//! which is what hustvl's training branch computes with one GLA call on `[x, flip(x)]` (q, k, v
//! shared by the two directions, only the log-gates differ). The op keeps nothing for the
//! backward: it recomputes from q, k, v and the gates.

use crate::backend::{Act, Backend, Plan, VisionOps, F32};
use crate::config::GlaDims;

/// `o [N, value_dim] = (o_f + o_b) / 2` of `b` sequences of `t` tokens.
pub(crate) fn forward<B: Backend + VisionOps>(
    be: &B,
    md: &GlaDims,
    plan: &Plan<B>,
    o: &mut Act<B>,
    qkv: [&Act<B>; 3],
    gates: [&Act<B>; 2],
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    be.bidir_fwd(md, plan, o, qkv, gates, b, t)
}

/// Backward of [`forward`] from `d_o`: writes `dq, dk, dv, dgf, dgb` (f32, `[N, *]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend + VisionOps>(
    be: &B,
    md: &GlaDims,
    plan: &Plan<B>,
    qkv: [&Act<B>; 3],
    gates: [&Act<B>; 2],
    d_o: &Act<B>,
    out: [&mut F32<B>; 5],
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    be.bidir_bwd(md, plan, qkv, gates, d_o, out, b, t)
}
