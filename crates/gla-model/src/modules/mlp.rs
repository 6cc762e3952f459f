//! fla's `GatedMLP` (SwiGLU): `out = res + down(silu(gate(xn)) * up(xn))`, with the residual
//! add fused into the down projection.

use crate::backend::{Act, Backend, ParamId, Storage, F32};
use crate::config::Dims;
use crate::params::Table;

/// The MLP's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpIds {
    /// `[I, D]`
    pub gate_proj: ParamId,
    /// `[I, D]`
    pub up_proj: ParamId,
    /// `[D, I]`
    pub down_proj: ParamId,
}

impl MlpIds {
    /// Adds the MLP's rows under `prefix` (`model.layers.{l}.mlp.`).
    pub fn table(t: &mut Table, prefix: &str, d: &Dims) -> Self {
        Self {
            gate_proj: t.add_gemm(format!("{prefix}gate_proj.weight"), vec![d.intermediate, d.d]),
            up_proj: t.add_gemm(format!("{prefix}up_proj.weight"), vec![d.intermediate, d.d]),
            down_proj: t.add_gemm(format!("{prefix}down_proj.weight"), vec![d.d, d.intermediate]),
        }
    }
}

/// What the forward keeps for the backward, `[N, I]` each.
pub(crate) struct MlpActs<S: Storage> {
    a: S::Act, // gate_proj output
    b: S::Act, // up_proj output
    h: S::Act, // silu(a) * b
}

/// The backward's buffers (shared by every layer).
pub(crate) struct MlpScratch<S: Storage> {
    dh: S::F32, // [N, I]
    da: S::Act, // [N, I]
    db: S::Act, // [N, I]
}

impl<S: Storage> MlpActs<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, n: usize) -> Result<Self, B::Error> {
        let ni = n * be.dims().intermediate;
        Ok(Self { a: be.alloc_act(ni)?, b: be.alloc_act(ni)?, h: be.alloc_act(ni)? })
    }
}

impl<S: Storage> MlpScratch<S> {
    pub(crate) fn alloc<B: Backend<Buf = S>>(be: &B, n: usize) -> Result<Self, B::Error> {
        let ni = n * be.dims().intermediate;
        Ok(Self { dh: be.alloc_f32(ni)?, da: be.alloc_act(ni)?, db: be.alloc_act(ni)? })
    }
}

/// `out [N, D] = res + down(silu(xn gate^T) * (xn up^T))`.
pub(crate) fn forward<B: Backend>(
    be: &B,
    ids: &MlpIds,
    a: &mut MlpActs<B::Buf>,
    xn: &Act<B>,
    res: &F32<B>,
    out: &mut F32<B>,
    n: usize,
) -> Result<(), B::Error> {
    let (d, i) = (be.dims().d, be.dims().intermediate);
    be.linear_fwd(&mut a.a, xn, ids.gate_proj, n, d, i)?;
    be.linear_fwd(&mut a.b, xn, ids.up_proj, n, d, i)?;
    be.swiglu_fwd(&mut a.h, &a.a, &a.b, n * i)?;
    be.linear_residual_fwd(out, res, &a.h, ids.down_proj, n, i, d)
}

/// Backward of [`forward`] from `dout` (the GEMM operand of the residual stream's gradient):
/// writes `dxn [N, D]` (the gradient of `xn`) and accumulates the weights' gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    be: &B,
    ids: &MlpIds,
    a: &MlpActs<B::Buf>,
    s: &mut MlpScratch<B::Buf>,
    grads: &mut B::Grads,
    xn: &Act<B>,
    dout: &Act<B>,
    dxn: &mut F32<B>,
    n: usize,
) -> Result<(), B::Error> {
    let (d, i) = (be.dims().d, be.dims().intermediate);
    be.linear_bwd_x(&mut s.dh, dout, ids.down_proj, n, i, d, false)?;
    be.linear_bwd_w(grads, ids.down_proj, dout, &a.h, n, i, d)?;
    be.swiglu_bwd(&mut s.da, &mut s.db, &s.dh, &a.a, &a.b, n * i)?;
    be.linear_bwd_x(dxn, &s.da, ids.gate_proj, n, d, i, false)?;
    be.linear_bwd_x(dxn, &s.db, ids.up_proj, n, d, i, true)?;
    be.linear_bwd_w(grads, ids.gate_proj, &s.da, xn, n, d, i)?;
    be.linear_bwd_w(grads, ids.up_proj, &s.db, xn, n, d, i)
}
