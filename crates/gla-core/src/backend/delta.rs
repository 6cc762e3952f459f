//! The delta-rule op family's backend interface (DeltaNet and Gated DeltaNet; contract:
//! gla-core's [`crate::delta`]), as the delta mixer (gla-model's `mixers::delta`) calls it: the
//! op itself with its elementwise maps inside (L2 norm of q and k, the beta sigmoid, the gate
//! `g = -exp(A_log) softplus(a + dt_bias)`), and DeltaNet's `sum` norm of q and k.
//!
//! Shapes, `N = B*T` rows, `H` query/key heads, `HV` value heads: q, k `[N, H, K]`, v and o
//! `[N, HV, V]`, beta and a `[N, HV]`, `A_log` and `dt_bias` `[HV]`, the decode state of a
//! sequence `[HV, K, V]` f32.

use super::{Act, ParamId, Plan, Primitives, Storage, F32};
use crate::dims::DeltaDims;

/// What a backend's delta-rule op keeps per layer for its backward.
pub trait DeltaStorage: Storage {
    /// Per layer: what the backend's delta op keeps beyond its inputs (e.g. the constant beta
    /// of a layer without `b_proj`, or a device's workspaces).
    type DeltaSaved;
}

/// Per-layer delta-rule buffers of backend `B`.
pub type DeltaSaved<B> = <<B as Primitives>::Buf as DeltaStorage>::DeltaSaved;

/// Gated DeltaNet's decay as the op computes it: the raw `a = x W_a^T` `[N, HV]` (f32) and the
/// parameters `A_log [HV]`, `dt_bias [HV]`: `g = -exp(A_log) softplus(a + dt_bias)`.
#[derive(Debug)]
pub struct DeltaDecay<'a, F> {
    /// `[N, HV]`.
    pub a: &'a F,
    /// `A_log [HV]`.
    pub a_log: ParamId,
    /// `dt_bias [HV]`.
    pub dt_bias: ParamId,
}

impl<F> Clone for DeltaDecay<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F> Copy for DeltaDecay<'_, F> {}

/// The delta-rule family's ops on one device. Each method takes the calling layer's
/// [`DeltaDims`] (heads, dims, and the op's options: `qk_norm` L2 inside the op, `use_beta` with
/// the sigmoid inside, `allow_neg_eigval`, the decay).
#[allow(clippy::too_many_arguments)]
pub trait DeltaOps: Primitives<Buf: DeltaStorage> {
    /// The buffers [`DeltaOps::delta_bwd`] writes `dq, dk [N, H*K]`, `dv [N, HV*V]`,
    /// `dbeta, da [N, HV]` into, for `n` rows (a backend that hands over its op's own outputs
    /// may return empty ones).
    fn alloc_delta_grads(&self, md: &DeltaDims, n: usize) -> Result<[F32<Self>; 5], Self::Error>;
    /// One layer's delta-rule buffers for `n` rows.
    fn alloc_delta_saved(&self, md: &DeltaDims, n: usize) -> Result<DeltaSaved<Self>, Self::Error>;

    /// The delta rule: `o [N, HV, V]` from `q, k [N, H, K]`, `v [N, HV, V]`, the beta logits
    /// `beta [N, HV]` (`None`: DeltaNet's `use_beta = false`, beta = 1, or 2 with
    /// `md.allow_neg_eigval`) and, with
    /// `md.decay`, the decay's inputs; scale `K^-1/2`. With `io`, each sequence starts from its
    /// state of `layer` (`[HV, K, V]`) and leaves its final one there.
    fn delta_fwd(
        &self,
        md: &DeltaDims,
        plan: &Plan<Self>,
        saved: &mut DeltaSaved<Self>,
        o: &mut Act<Self>,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        beta: Option<&F32<Self>>,
        decay: Option<DeltaDecay<'_, F32<Self>>>,
        io: Option<(&mut Self::Io<'_>, usize)>,
    ) -> Result<(), Self::Error>;
    /// Backward of [`DeltaOps::delta_fwd`] (no state) from `d_o [N, HV, V]`: writes `dq, dk,
    /// dv` (at the op's inputs, through its L2 norm), `dbeta` (at the logits) and `da` (at the
    /// raw `a`; untouched without decay) into `out`, and accumulates `dA_log`, `ddt_bias` into
    /// `grads`.
    fn delta_bwd(
        &self,
        md: &DeltaDims,
        plan: &Plan<Self>,
        saved: &DeltaSaved<Self>,
        grads: &mut Self::Grads,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        beta: Option<&F32<Self>>,
        decay: Option<DeltaDecay<'_, F32<Self>>>,
        d_o: &Act<Self>,
        out: [&mut F32<Self>; 5],
    ) -> Result<(), Self::Error>;

    /// fla's `sum_norm` (DeltaNet's `qk_norm = "sum"`) over `rows` rows of `width`:
    /// `y = x / max(sum |x|, 1e-6)`.
    fn sum_norm_fwd(&self, y: &mut Act<Self>, x: &Act<Self>, rows: usize, width: usize) -> Result<(), Self::Error>;
    /// Its backward, in place: `d` holds the gradient of `y` and becomes that of `x`.
    fn sum_norm_bwd(&self, d: &mut F32<Self>, x: &Act<Self>, rows: usize, width: usize) -> Result<(), Self::Error>;
}
