//! The primitives: the layer ops every model shares, on one device (see [`crate::backend`] for
//! the buffers and the shape letters).

use super::{Act, ConvIdx, Ids, ParamId, Plan, Rows, Storage, F32};
use crate::dims::{Dims, FeatureMap, GateAct};

/// The shared layer ops on one device. See [`crate::backend`] for buffers and shapes.
#[allow(clippy::too_many_arguments)]
pub trait Primitives {
    /// Error of the backend's ops (contract errors such as a bad token id or a wrong shape convert into it).
    type Error: From<crate::Error>;
    /// Buffer types.
    type Buf: Storage;
    /// Inference state of the sequences of one forward (prefill, decode): read by the short
    /// convolutions and the op families, advanced by them.
    type Io<'a>;
    /// Gradient arena, laid out like the parameters.
    type Grads: ?Sized;

    /// The model's dims (each layer's mixer dims in [`Dims::mixers`]; a mixer passes its own to
    /// its op family's methods).
    fn dims(&self) -> &Dims;
    /// Elements of a gradient arena (checked against the parameter table before a backward).
    fn grads_len(&self, grads: &Self::Grads) -> usize;

    /// A zeroed f32 buffer of `len` elements.
    fn alloc_f32(&self, len: usize) -> Result<F32<Self>, Self::Error>;
    /// A zeroed activation buffer of `len` elements.
    fn alloc_act(&self, len: usize) -> Result<Act<Self>, Self::Error>;
    /// A buffer for [`Primitives::cast`]: the GEMM-operand copy of an f32 buffer of `len`
    /// elements. A backend whose `Act` is f32 returns an empty one and lends the source instead
    /// ([`Primitives::operand`]).
    fn alloc_cast(&self, len: usize) -> Result<Act<Self>, Self::Error>;
    /// Buffers for the ids of `n` tokens.
    fn alloc_ids(&self, n: usize) -> Result<Ids<Self>, Self::Error>;
    /// Buffers for up to `n` labelled rows.
    fn alloc_rows(&self, n: usize) -> Result<Rows<Self>, Self::Error>;
    /// The plan of `[B, T]` batches (`backward`: it will run backwards).
    fn plan(&self, b: usize, t: usize, backward: bool) -> Result<Plan<Self>, Self::Error>;

    /// Copies a batch's token ids in (checked by the caller); `backward`: the embedding
    /// backward will run on them.
    fn upload_ids(&self, dst: &mut Ids<Self>, ids: &[u32], backward: bool) -> Result<(), Self::Error>;
    /// Keeps the rows whose target is not -100 and their targets (checked by the caller);
    /// returns their count `M`.
    fn select_rows(&self, rows: &mut Rows<Self>, targets: &[i64]) -> Result<usize, Self::Error>;

    /// Writes the GEMM-operand copy of `src` into `copy` (nothing when `copy` is empty).
    fn cast(&self, copy: &mut Act<Self>, src: &F32<Self>) -> Result<(), Self::Error>;
    /// The GEMM operand of a gradient held in f32 as `src` and as an operand copy `copy`
    /// (written by [`Primitives::cast`] or by a fused op): `copy`, or `src` when `copy` is empty.
    fn operand<'a>(&self, copy: &'a Act<Self>, src: &'a F32<Self>) -> &'a Act<Self>;

    /// `x [N, D] = wte[ids]`.
    fn embedding_fwd(&self, x: &mut F32<Self>, ids: &Ids<Self>, w: ParamId, n: usize) -> Result<(), Self::Error>;
    /// `dwte[ids] += dx`, skipping the padding token.
    fn embedding_bwd(
        &self,
        plan: &Plan<Self>,
        g: &mut Self::Grads,
        dx: &F32<Self>,
        ids: &Ids<Self>,
        w: ParamId,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// RMSNorm over rows of D: `y = x * rstd * w`, saving `rstd [N]`.
    fn rmsnorm_fwd(&self, y: &mut Act<Self>, rstd: &mut F32<Self>, x: &F32<Self>, w: ParamId, n: usize) -> Result<(), Self::Error>;
    /// RMSNorm backward: `dx (+)= ...` (`acc`), `dw += ...`.
    fn rmsnorm_bwd(
        &self,
        plan: &Plan<Self>,
        dx: &mut F32<Self>,
        g: &mut Self::Grads,
        dy: &F32<Self>,
        x: &F32<Self>,
        rstd: &F32<Self>,
        w: ParamId,
        n: usize,
        acc: bool,
    ) -> Result<(), Self::Error>;

    /// `y [N, out] = x [N, in] @ w^T`.
    fn linear_fwd(&self, y: &mut Act<Self>, x: &Act<Self>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<(), Self::Error>;
    /// [`Primitives::linear_fwd`] into an f32 buffer.
    fn linear_fwd_f32(&self, y: &mut F32<Self>, x: &Act<Self>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<(), Self::Error>;
    /// The residual step `y [N, out] = res + x [N, in] @ w^T`.
    fn linear_residual_fwd(
        &self,
        y: &mut F32<Self>,
        res: &F32<Self>,
        x: &Act<Self>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(), Self::Error>;
    /// `dx [N, in] (+)= dy [N, out] @ w` (`acc`).
    fn linear_bwd_x(
        &self,
        dx: &mut F32<Self>,
        dy: &Act<Self>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
        acc: bool,
    ) -> Result<(), Self::Error>;
    /// `dx [N, in] = dy [N, out] @ w` into an activation buffer (a GEMM operand next).
    fn linear_bwd_x_act(
        &self,
        dx: &mut Act<Self>,
        dy: &Act<Self>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(), Self::Error>;
    /// `dw [out, in] += dy^T @ x`.
    fn linear_bwd_w(
        &self,
        g: &mut Self::Grads,
        w: ParamId,
        dy: &Act<Self>,
        x: &Act<Self>,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(), Self::Error>;

    /// Causal depthwise conv over sequences of `t` rows, its width `W` that of the weight
    /// `w [C, 1, W]`: `y = silu(pre)` (`silu`, fla's `activation='silu'`) or `y = pre` (no
    /// activation), `[B*T, C]`, `pre` the convolution. With `io`, each sequence continues from
    /// its cache `(layer, which)` and advances it.
    fn conv_fwd(
        &self,
        y: &mut Act<Self>,
        x: &Act<Self>,
        w: ParamId,
        b: usize,
        t: usize,
        c: usize,
        silu: bool,
        io: Option<(&mut Self::Io<'_>, usize, ConvIdx)>,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Primitives::conv_fwd`] (no cache): writes `dx`, accumulates `dw`; `pre` is
    /// recomputed from `x` (nothing but `x` is kept for it, as causal_conv1d's backward does).
    fn conv_bwd(
        &self,
        plan: &Plan<Self>,
        dx: &mut Act<Self>,
        g: &mut Self::Grads,
        w: ParamId,
        dy: &F32<Self>,
        x: &Act<Self>,
        b: usize,
        t: usize,
        c: usize,
        silu: bool,
    ) -> Result<(), Self::Error>;

    /// fla's `FusedRMSNormGated` over `rows = N*H` rows of V (the width of the weight `w [V]`):
    /// `y = rmsnorm(o) * w * act(g)` (no gate: fla's `RMSNorm`, `* 1`), saving `rstd [rows]`.
    fn gated_norm_fwd(
        &self,
        y: &mut Act<Self>,
        rstd: &mut F32<Self>,
        o: &Act<Self>,
        g: Option<&Act<Self>>,
        act: GateAct,
        w: ParamId,
        rows: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Primitives::gated_norm_fwd`]: writes `d_o` and `dg`, accumulates `dw`.
    fn gated_norm_bwd(
        &self,
        plan: &Plan<Self>,
        d_o: &mut Act<Self>,
        dg: Option<&mut Act<Self>>,
        grads: &mut Self::Grads,
        w: ParamId,
        dy: &F32<Self>,
        o: &Act<Self>,
        g: Option<&Act<Self>>,
        act: GateAct,
        rstd: &F32<Self>,
        rows: usize,
    ) -> Result<(), Self::Error>;

    /// `h = silu(a) * b`.
    fn swiglu_fwd(&self, h: &mut Act<Self>, a: &Act<Self>, b: &Act<Self>, len: usize) -> Result<(), Self::Error>;
    /// `da = dh * b * silu'(a)`, `db = dh * silu(a)`.
    fn swiglu_bwd(
        &self,
        da: &mut Act<Self>,
        db: &mut Act<Self>,
        dh: &F32<Self>,
        a: &Act<Self>,
        b: &Act<Self>,
        len: usize,
    ) -> Result<(), Self::Error>;

    /// fla's feature map on q or k: `y = f(x)` elementwise.
    fn feature_map_fwd(&self, y: &mut Act<Self>, x: &Act<Self>, len: usize, f: FeatureMap) -> Result<(), Self::Error>;
    /// Its backward, in place: `d = d * f'(x)` (d: the GLA op's gradient of f(x)).
    fn feature_map_bwd(&self, d: &mut F32<Self>, x: &Act<Self>, len: usize, f: FeatureMap) -> Result<(), Self::Error>;

    /// `out [M, D] = x[rows]`.
    fn gather_rows(&self, out: &mut Act<Self>, x: &Act<Self>, rows: &Rows<Self>, m: usize) -> Result<(), Self::Error>;
    /// Cross-entropy of `logits [M, vocab]` against the rows' targets: returns the summed loss
    /// and the correct argmax count, and writes `dscale * d(sum loss)/d logits` into `dlogits`
    /// (over `logits`, read through [`Primitives::operand`], when `dlogits` is empty).
    fn cross_entropy(
        &self,
        logits: &mut F32<Self>,
        dlogits: &mut Act<Self>,
        rows: &Rows<Self>,
        m: usize,
        dscale: f32,
    ) -> Result<(f64, usize), Self::Error>;
    /// The lm_head's backward from the loss gradient of [`Primitives::cross_entropy`]:
    /// `dsel [M, D] = dl @ W` and `dW += scale * dl^T x_sel` (`dl`: `operand(dlogits, logits)`;
    /// a backend may fold `scale` into it in place).
    fn lm_head_bwd(
        &self,
        g: &mut Self::Grads,
        w: ParamId,
        dsel: &mut F32<Self>,
        logits: &mut F32<Self>,
        dlogits: &mut Act<Self>,
        x_sel: &Act<Self>,
        m: usize,
        scale: f32,
    ) -> Result<(), Self::Error>;
    /// `dx [N, D] = 0` but for the labelled rows: `dx[rows[i]] = scale * src[i]`.
    fn scatter_rows(
        &self,
        dx: &mut F32<Self>,
        src: &F32<Self>,
        rows: &Rows<Self>,
        m: usize,
        n: usize,
        scale: f32,
    ) -> Result<(), Self::Error>;

    /// Called by the backward at each point where a range of parameter gradients is final:
    /// `point` 0 after the lm_head and the final norm, `L - l` after layer `l`, `L + 1` after
    /// the embedding (a data-parallel backend starts summing them over its ranks there).
    fn grads_ready(&self, _g: &Self::Grads, _point: usize) -> Result<(), Self::Error> {
        Ok(())
    }
}
