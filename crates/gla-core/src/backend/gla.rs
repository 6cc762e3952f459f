//! The GLA op family's backend interface: the data-dependent log-gate and the GLA op
//! (contract: gla-core's `GlaOp`; `docs/math/gla_chunk.md`), as the GLA mixer
//! (gla-model's `mixers::gla`) calls them.

use super::{Act, ParamId, Plan, Primitives, Storage, F32};
use crate::dims::GlaDims;

/// What a backend's GLA op keeps per layer for its backward.
pub trait GlaStorage: Storage {
    /// Per layer: what the backend's GLA op keeps for its backward beyond q, k, v, g (the
    /// repeats of GQA groups and value splits).
    type GlaSaved;
}

/// Per-layer GLA buffers of backend `B`.
pub type GlaSaved<B> = <<B as Primitives>::Buf as GlaStorage>::GlaSaved;

/// The GLA family's ops on one device. Each method takes the calling layer's [`GlaDims`].
#[allow(clippy::too_many_arguments)]
pub trait GlaOps: Primitives<Buf: GlaStorage> {
    /// The buffers [`GlaOps::gla_bwd`] writes dq, dk, dv, dg into, for `n` rows (a backend
    /// that hands over its op's own outputs may return empty ones).
    fn alloc_gla_grads(&self, md: &GlaDims, n: usize) -> Result<[F32<Self>; 4], Self::Error>;
    /// One layer's GLA buffers for `n` rows.
    fn alloc_gla_saved(&self, md: &GlaDims, n: usize) -> Result<GlaSaved<Self>, Self::Error>;

    /// The log-gate: `raw += bias` (in place, kept for the backward), `gk = gate(raw)` (fla's
    /// `logsigmoid / gate_norm`, clamped), `[N, C]`.
    fn gate_fwd(&self, md: &GlaDims, gk: &mut Act<Self>, raw: &mut F32<Self>, bias: ParamId, n: usize) -> Result<(), Self::Error>;
    /// Backward of [`GlaOps::gate_fwd`]: `dx` in f32 and its operand copy `dx_act` (see
    /// [`Primitives::alloc_cast`]), `dbias += colsum(dx)`.
    fn gate_bwd(
        &self,
        md: &GlaDims,
        plan: &Plan<Self>,
        dx: &mut F32<Self>,
        dx_act: &mut Act<Self>,
        g: &mut Self::Grads,
        bias: ParamId,
        dg: &F32<Self>,
        raw: &F32<Self>,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// The GLA op: `o [N, H, V]` from `q [N, H, K]` and `k, g [N, Hkv, K]`, `v [N, Hkv, V]`
    /// (GQA repeats and value splits are the backend's, kept in `saved`). With `io`, each
    /// sequence starts from its state of `layer` and leaves its final one there.
    fn gla_fwd(
        &self,
        md: &GlaDims,
        plan: &Plan<Self>,
        saved: &mut GlaSaved<Self>,
        o: &mut Act<Self>,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        g: &Act<Self>,
        io: Option<(&mut Self::Io<'_>, usize)>,
    ) -> Result<(), Self::Error>;
    /// Backward of [`GlaOps::gla_fwd`] (no state): `dq, dk, dv, dg` at the model's heads (the
    /// repeats summed back).
    fn gla_bwd(
        &self,
        md: &GlaDims,
        plan: &Plan<Self>,
        saved: &GlaSaved<Self>,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        g: &Act<Self>,
        d_o: &Act<Self>,
        grads: [&mut F32<Self>; 4],
    ) -> Result<(), Self::Error>;
}
