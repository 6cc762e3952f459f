//! The softmax-attention family's backend interface (fla's `Attention` layer in a hybrid stack;
//! contract: gla-core's [`crate::attn`]), as the attention mixer (gla-model's `mixers::attn`)
//! calls it: the projections' biases, RoPE and the attention op.
//!
//! Shapes, `N = B*T` rows, `H` query heads, `H_KV` key/value heads, `Dh` the head dim: q and o
//! `[N, H, Dh]`, k and v `[N, H_KV, Dh]`. The decode state of a sequence is its KV cache: k and
//! v each `[S, H_KV, Dh]` (slots S: every token seen for full attention; the window w for a
//! sliding window, token p in slot `p % w`, a ring buffer).
//!
//! RoPE (fla's `RotaryEmbedding(dim=Dh, base=rope_theta, interleaved=False)`, the GPT-NeoX
//! convention): for a row at position p (its index in its sequence, plus the tokens the
//! sequence had seen before, at decode) and `i < Dh/2`, with `f_i = 1 / theta^(2i/Dh)` (f32,
//! [`AttnDims::rope_inv_freq`]) and the angle `a = f32(p) * f_i` in f32:
//!
//! ```text
//! y[i]        = x[i] cos a - x[i + Dh/2] sin a
//! y[i + Dh/2] = x[i] sin a + x[i + Dh/2] cos a
//! ```
//!
//! Its backward is the rotation by `-a` (the transpose).

use super::{Act, ParamId, Plan, Primitives, Storage, F32};
use crate::dims::AttnDims;

/// What a backend's attention op keeps per layer for its backward.
pub trait AttnStorage: Storage {
    /// Per layer: what the backend's attention op keeps beyond q, k, v and o (the log-sum-exp
    /// of every query row, `[N, H]` f32).
    type AttnSaved;
}

/// Per-layer attention buffers of backend `B`.
pub type AttnSaved<B> = <<B as Primitives>::Buf as AttnStorage>::AttnSaved;

/// The attention family's ops on one device. Each method takes the calling layer's
/// [`AttnDims`].
#[allow(clippy::too_many_arguments)]
pub trait AttnOps: Primitives<Buf: AttnStorage> {
    /// The buffers [`AttnOps::attn_bwd`] writes `dq [N, H*Dh]`, `dk, dv [N, H_KV*Dh]` into, for
    /// `n` rows (a backend that hands over its op's own outputs may return empty ones).
    fn alloc_attn_grads(&self, md: &AttnDims, n: usize) -> Result<[F32<Self>; 3], Self::Error>;
    /// One layer's attention buffers for `n` rows.
    fn alloc_attn_saved(&self, md: &AttnDims, n: usize) -> Result<AttnSaved<Self>, Self::Error>;

    /// A projection's bias, in place: `y [N, C] += bias [C]`, `C` the width of the bias.
    fn bias_fwd(&self, y: &mut Act<Self>, bias: ParamId, n: usize) -> Result<(), Self::Error>;
    /// Its backward: `dbias += colsum(dy [N, C])`.
    fn bias_bwd(&self, plan: &Plan<Self>, g: &mut Self::Grads, bias: ParamId, dy: &F32<Self>, n: usize) -> Result<(), Self::Error>;

    /// RoPE (module doc) of `heads` heads of `Dh`: `y [N, heads, Dh] = rope(x)`. Without `io`
    /// the rows are `B` sequences of `T` (the plan's) at positions `0..T`; with `io`, the
    /// backend's packed sequences, each continuing at the count of tokens it has seen.
    fn rope_fwd(
        &self,
        md: &AttnDims,
        plan: &Plan<Self>,
        y: &mut Act<Self>,
        x: &Act<Self>,
        heads: usize,
        io: Option<&Self::Io<'_>>,
    ) -> Result<(), Self::Error>;
    /// Backward of [`AttnOps::rope_fwd`] (no state), in place: `d` holds the gradient of `y`
    /// and becomes that of `x`.
    fn rope_bwd(&self, md: &AttnDims, plan: &Plan<Self>, d: &mut F32<Self>, heads: usize) -> Result<(), Self::Error>;

    /// Causal softmax attention (scale `Dh^-1/2`, GQA, the window of `md`): `o [N, H, Dh]`
    /// from `q [N, H, Dh]`, `k, v [N, H_KV, Dh]` (after RoPE). With `io`, each sequence attends
    /// its KV cache of `layer` and its own rows, and its k, v rows join the cache.
    fn attn_fwd(
        &self,
        md: &AttnDims,
        plan: &Plan<Self>,
        saved: &mut AttnSaved<Self>,
        o: &mut Act<Self>,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        io: Option<(&mut Self::Io<'_>, usize)>,
    ) -> Result<(), Self::Error>;
    /// Backward of [`AttnOps::attn_fwd`] (no state) from `d_o [N, H, Dh]`: writes `dq`, `dk`,
    /// `dv` (the kv gradients summed over each group's query heads).
    fn attn_bwd(
        &self,
        md: &AttnDims,
        plan: &Plan<Self>,
        saved: &AttnSaved<Self>,
        q: &Act<Self>,
        k: &Act<Self>,
        v: &Act<Self>,
        o: &Act<Self>,
        d_o: &Act<Self>,
        grads: [&mut F32<Self>; 3],
    ) -> Result<(), Self::Error>;
}
