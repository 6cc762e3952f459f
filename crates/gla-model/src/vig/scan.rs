//! ViG's bidirectional scan, as hustvl's training branch computes it: the GLA op once on the
//! tokens and once on the time-flipped tokens, `o = (o_f + flip(o_b')) / 2`:
//!
//! ```text
//! S^f_t = diag(exp(gf_t)) S^f_{t-1} + k_t^T v_t     o^f_t = q_t S^f_t K^-1/2   (t = 0 .. T-1)
//! S^b_t = diag(exp(gb_t)) S^b_{t+1} + k_t^T v_t     o^b_t = q_t S^b_t K^-1/2   (t = T-1 .. 0)
//! o = (o^f + o^b) / 2
//! ```
//!
//! q, k, v are shared by the two directions, only the log-gates differ. This module is the one
//! place that runs the two scans ([`forward`], [`backward`]); a fused bidirectional op replaces
//! these two functions' bodies.

use crate::backend::{Act, Backend, Cols, GlaStorage, Plan, VisionOps, F32};
use crate::config::GlaDims;

/// What the scan keeps for its backward (`[N, *]`, N = B*T rows).
pub(crate) struct ScanActs<S: GlaStorage> {
    /// q, k, v and the backward gate, time-flipped per sequence.
    flipped: [S::Act; 4],
    o_f: S::Act,
    o_b: S::Act, // on the flipped tokens
    saved: [S::GlaSaved; 2],
}

/// The scan's backward buffers.
pub(crate) struct ScanScratch<S: GlaStorage> {
    d_of: S::Act,
    d_ob: S::Act,
    grads: [[S::F32; 4]; 2],
}

impl<S: GlaStorage> ScanActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, md: &GlaDims, n: usize) -> Result<Self, B::Error> {
        let (kd, vd) = (md.key_dim, md.value_dim);
        Ok(Self {
            flipped: [be.alloc_act(n * kd)?, be.alloc_act(n * kd)?, be.alloc_act(n * vd)?, be.alloc_act(n * kd)?],
            o_f: be.alloc_act(n * vd)?,
            o_b: be.alloc_act(n * vd)?,
            saved: [be.alloc_gla_saved(md, n)?, be.alloc_gla_saved(md, n)?],
        })
    }
}

impl<S: GlaStorage> ScanScratch<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, md: &GlaDims, n: usize) -> Result<Self, B::Error> {
        Ok(Self {
            d_of: be.alloc_act(n * md.value_dim)?,
            d_ob: be.alloc_act(n * md.value_dim)?,
            grads: [be.alloc_gla_grads(md, n)?, be.alloc_gla_grads(md, n)?],
        })
    }
}

/// The copy of all `width` columns of `b` sequences of `t` rows, time-flipped.
fn flip(b: usize, t: usize, width: usize) -> Cols {
    Cols { flip: true, ..Cols::copy(b, t, width, (width, 0), (width, 0)) }
}

/// `o [N, value_dim] = (o_f + flip(o_b')) / 2` of `b` sequences of `t` tokens.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward<B: Backend + VisionOps>(
    be: &B,
    md: &GlaDims,
    plan: &Plan<B>,
    a: &mut ScanActs<B::Buf>,
    o: &mut Act<B>,
    [q, k, v]: [&Act<B>; 3],
    [gf, gb]: [&Act<B>; 2],
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    let (kd, vd) = (md.key_dim, md.value_dim);
    for (dst, (src, w)) in a.flipped.iter_mut().zip([(q, kd), (k, kd), (v, vd), (gb, kd)]) {
        be.cols(dst, src, &flip(b, t, w))?;
    }
    let [sf, sb] = &mut a.saved;
    be.gla_fwd(md, plan, sf, &mut a.o_f, q, k, v, gf, None)?;
    let [qr, kr, vr, gbr] = &a.flipped;
    be.gla_fwd(md, plan, sb, &mut a.o_b, qr, kr, vr, gbr, None)?;
    be.cols(o, &a.o_f, &Cols { scale: 0.5, ..Cols::copy(b, t, vd, (vd, 0), (vd, 0)) })?;
    be.cols(o, &a.o_b, &Cols { scale: 0.5, acc: true, ..flip(b, t, vd) })
}

/// Backward of [`forward`] from `d_o`: writes `dq, dk, dv, dgf, dgb` (f32, `[N, *]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend + VisionOps>(
    be: &B,
    md: &GlaDims,
    plan: &Plan<B>,
    a: &ScanActs<B::Buf>,
    s: &mut ScanScratch<B::Buf>,
    [q, k, v]: [&Act<B>; 3],
    gf: &Act<B>,
    d_o: &Act<B>,
    out: [&mut F32<B>; 5],
    (b, t): (usize, usize),
) -> Result<(), B::Error> {
    let (kd, vd) = (md.key_dim, md.value_dim);
    be.cols(&mut s.d_of, d_o, &Cols { scale: 0.5, ..Cols::copy(b, t, vd, (vd, 0), (vd, 0)) })?;
    be.cols(&mut s.d_ob, d_o, &Cols { scale: 0.5, ..flip(b, t, vd) })?;
    let [gr_f, gr_b] = &mut s.grads;
    {
        let [dq, dk, dv, dg] = gr_f;
        be.gla_bwd(md, plan, &a.saved[0], q, k, v, gf, &s.d_of, [dq, dk, dv, dg])?;
    }
    {
        let [qr, kr, vr, gbr] = &a.flipped;
        let [dq, dk, dv, dg] = gr_b;
        be.gla_bwd(md, plan, &a.saved[1], qr, kr, vr, gbr, &s.d_ob, [dq, dk, dv, dg])?;
    }
    let [dq, dk, dv, dgf, dgb] = out;
    // q, k, v: both directions' gradients, the backward one flipped back
    for (i, (dst, w)) in [(dq, kd), (dk, kd), (dv, vd)].into_iter().enumerate() {
        be.cols_f32(dst, &gr_f[i], &Cols::copy(b, t, w, (w, 0), (w, 0)))?;
        be.cols_f32(dst, &gr_b[i], &Cols { acc: true, ..flip(b, t, w) })?;
    }
    be.cols_f32(dgf, &gr_f[3], &Cols::copy(b, t, kd, (kd, 0), (kd, 0)))?;
    be.cols_f32(dgb, &gr_b[3], &flip(b, t, kd))
}
