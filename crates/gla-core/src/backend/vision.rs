//! The vision ops: what a vision model (gla-model's `vig`, hustvl's ViG) needs beyond
//! [`Primitives`]: the patch embedding's convolutions (im2col + the GEMMs of
//! [`Primitives::linear_fwd`]), LayerNorm, biases, the 3x3 depthwise convolution, the position
//! embedding's bicubic resize, the average pool, column copies (split, concatenate, time flip)
//! ViG's 2D locality gate, and the bidirectional GLA scan of a BiGLA layer ([`crate::bidir`]).
//!
//! Images are channels-last everywhere: `[B, H, W, C]` row-major, so that a row of `C` is one
//! pixel (a LayerNorm over channels is a row LayerNorm) and the token sequence of a `[B, h, w, D]`
//! map is its rows in raster order (hustvl's `flatten(2).transpose(1, 2)`).

use super::{Act, ParamId, Plan, Primitives, F32};
use crate::dims::{GateAct, GlaDims};

/// One 2-D convolution over channels-last images `[B, H, W, C_in]` -> `[B, Ho, Wo, C_out]` with a
/// square kernel `k`, `stride` and zero `pad` (PyTorch's `Conv2d`, weight `[C_out, C_in, k, k]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Images B.
    pub b: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl Conv2d {
    /// Output height and width, `(x + 2 pad - k) / stride + 1` (PyTorch's floor), or `None` when
    /// the padded input is smaller than the kernel or the stride is 0.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let o = |x: usize| (x + 2 * self.pad).checked_sub(self.k).and_then(|r| r.checked_div(self.stride)).map(|r| r + 1);
        Some((o(self.h)?, o(self.w)?))
    }
    /// Columns of the im2col matrix: `C_in * k * k`, in the order `(c, ky, kx)` of the
    /// flattened weight.
    pub fn cols(&self) -> usize {
        self.c_in * self.k * self.k
    }
}

/// A copy of a block of columns between two row-major matrices of `b * t` rows:
/// `dst[r, dst_off + j] (+)= scale * src[r', src_off + j]` for `j < width`, where `r' = r`, or,
/// with `flip`, the same position counted from the end of its sequence of `t` rows
/// (`r = s t + i` -> `r' = s t + t - 1 - i`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cols {
    /// Sequences.
    pub b: usize,
    /// Rows per sequence.
    pub t: usize,
    /// Columns copied.
    pub width: usize,
    /// Row width of `src` and the first column read.
    pub src: (usize, usize),
    /// Row width of `dst` and the first column written.
    pub dst: (usize, usize),
    /// Reverse each sequence's rows.
    pub flip: bool,
    /// Add into `dst` instead of overwriting it.
    pub acc: bool,
    /// Factor on `src`.
    pub scale: f32,
}

impl Cols {
    /// The plain copy of `width` columns from `src` to `dst` (no flip, no accumulation, scale 1).
    pub fn copy(b: usize, t: usize, width: usize, src: (usize, usize), dst: (usize, usize)) -> Self {
        Self { b, t, width, src, dst, flip: false, acc: false, scale: 1.0 }
    }
}

/// The vision ops on one device. See [`crate::backend`] for buffers; images are channels-last.
#[allow(clippy::too_many_arguments)]
pub trait VisionOps: Primitives {
    /// Copies a batch of images in, given as PyTorch's `[B, C, H, W]`, into the channels-last
    /// `dst [B, H, W, C]`.
    fn upload_image(&self, dst: &mut Act<Self>, nchw: &[f32], b: usize, c: usize, h: usize, w: usize) -> Result<(), Self::Error>;

    /// `cols [B*Ho*Wo, C_in*k*k] = im2col(x [B, H, W, C_in])` (zeros outside the image).
    fn im2col(&self, cols: &mut Act<Self>, x: &Act<Self>, g: &Conv2d) -> Result<(), Self::Error>;
    /// The transpose of [`VisionOps::im2col`]: `dx [B, H, W, C_in] = col2im(dcols)` (overwrites).
    fn col2im(&self, dx: &mut F32<Self>, dcols: &F32<Self>, g: &Conv2d) -> Result<(), Self::Error>;

    /// `y [N, C] += bias [C]` on every row.
    fn bias_fwd_f32(&self, y: &mut F32<Self>, bias: ParamId, n: usize, c: usize) -> Result<(), Self::Error>;
    /// `dbias += colsum(dy [N, C])` (`dy`: the GEMM operand the weight's gradient reads too).
    fn bias_bwd_act(&self, g: &mut Self::Grads, bias: ParamId, dy: &Act<Self>, n: usize, c: usize) -> Result<(), Self::Error>;

    /// LayerNorm over rows of `C` (the width of `w [C]`): `y = (x - mean) * rstd * w + b`, saving
    /// `stats [2N]` (mean, rstd per row).
    fn layernorm_fwd(
        &self,
        y: &mut Act<Self>,
        stats: &mut F32<Self>,
        x: &F32<Self>,
        w: ParamId,
        b: ParamId,
        n: usize,
        eps: f32,
    ) -> Result<(), Self::Error>;
    /// Backward of [`VisionOps::layernorm_fwd`]: writes `dx`, accumulates `dw`, `db`.
    fn layernorm_bwd(
        &self,
        dx: &mut F32<Self>,
        g: &mut Self::Grads,
        dy: &F32<Self>,
        x: &F32<Self>,
        stats: &F32<Self>,
        w: ParamId,
        b: ParamId,
        n: usize,
    ) -> Result<(), Self::Error>;

    /// The 3x3 depthwise convolution, zero padding 1, no bias, of a `[B, h, w, C]` map with
    /// `weight [C, 1, 3, 3]`: `y [B, h, w, C]`.
    fn dwconv_fwd(
        &self,
        y: &mut Act<Self>,
        x: &Act<Self>,
        weight: ParamId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`VisionOps::dwconv_fwd`]: writes `dx`, accumulates `dweight`.
    fn dwconv_bwd(
        &self,
        dx: &mut F32<Self>,
        g: &mut Self::Grads,
        dy: &F32<Self>,
        x: &Act<Self>,
        weight: ParamId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<(), Self::Error>;

    /// `x [B, h*w, D] += resize(pe)`: the position embedding `pe [1, hs*ws, D]` of a `(hs, ws)`
    /// grid resized to `(h, w)` by PyTorch's bicubic `F.interpolate(align_corners=False)` (A =
    /// -0.75, borders clamped), hustvl's `resize_pos_embed`; the identity when the grids match.
    fn pos_embed_fwd(&self, x: &mut F32<Self>, pe: ParamId, src: (usize, usize), dst: (usize, usize), b: usize) -> Result<(), Self::Error>;
    /// Backward of [`VisionOps::pos_embed_fwd`]: `dpe += resize^T(dx)` summed over the batch.
    fn pos_embed_bwd(
        &self,
        g: &mut Self::Grads,
        dx: &F32<Self>,
        pe: ParamId,
        src: (usize, usize),
        dst: (usize, usize),
        b: usize,
    ) -> Result<(), Self::Error>;

    /// `y [B, D] = mean over the L rows of each image of x [B*L, D]`.
    fn avgpool_fwd(&self, y: &mut Act<Self>, x: &Act<Self>, b: usize, l: usize, d: usize) -> Result<(), Self::Error>;
    /// Backward of [`VisionOps::avgpool_fwd`]: `dx [B*L, D] = dy / L` on every row of its image.
    fn avgpool_bwd(&self, dx: &mut F32<Self>, dy: &F32<Self>, b: usize, l: usize, d: usize) -> Result<(), Self::Error>;

    /// [`Cols`] between activation buffers.
    fn cols(&self, dst: &mut Act<Self>, src: &Act<Self>, c: &Cols) -> Result<(), Self::Error>;
    /// [`Cols`] between f32 buffers.
    fn cols_f32(&self, dst: &mut F32<Self>, src: &F32<Self>, c: &Cols) -> Result<(), Self::Error>;
    /// [`Cols`] from an activation buffer into an f32 one.
    fn cols_to_f32(&self, dst: &mut F32<Self>, src: &Act<Self>, c: &Cols) -> Result<(), Self::Error>;

    /// ViG's 2D locality gate over `len` elements: `G = sigmoid(gpre)`,
    /// `z = G * gn + (1 - G) * ln`, `y = swish(z)` (`out_act`) or `y = z`.
    fn locality_gate_fwd(
        &self,
        y: &mut Act<Self>,
        gn: &Act<Self>,
        ln: &Act<Self>,
        gpre: &F32<Self>,
        out_act: bool,
        len: usize,
    ) -> Result<(), Self::Error>;
    /// ViG's locality branch after its projections, in one call where the backend fuses it:
    /// `gn = g_norm(o)`, `ln = l_norm(xs)` ([`Primitives::gated_norm_fwd`] without a gate over
    /// `rows = N*H` rows of the norms' width, their `rstd_g`, `rstd_l` saved), then
    /// `y = locality_gate(gn, ln, gpre)` ([`VisionOps::locality_gate_fwd`] over all `rows * V`
    /// elements). `norms`: buffers for `gn` and `ln`; with `keep` they hold them afterwards
    /// (the backward reads them), else their contents are unspecified (scratch for a backend
    /// that needs it; a fusing one keeps the norms in registers, and the default makes two
    /// temporaries where there are none). `y` and the rstd are the same values either way. The
    /// default makes the three calls.
    ///
    /// # Errors
    /// [`crate::Error::BadArg`] for `keep` without `norms`; the backend's errors.
    fn locality_fwd(
        &self,
        y: &mut Act<Self>,
        norms: Option<(&mut Act<Self>, &mut Act<Self>)>,
        (rstd_g, rstd_l): (&mut F32<Self>, &mut F32<Self>),
        (o, xs, gpre): (&Act<Self>, &Act<Self>, &F32<Self>),
        (g_norm, l_norm): (ParamId, ParamId),
        (rows, v): (usize, usize),
        out_act: bool,
        keep: bool,
    ) -> Result<(), Self::Error> {
        let mut tmp = None;
        let (gn, ln) = outputs_or_temps(self, "locality_fwd norms", norms, keep, &mut tmp, rows * v)?;
        self.gated_norm_fwd(gn, rstd_g, o, None, GateAct::Swish, g_norm, rows)?;
        self.gated_norm_fwd(ln, rstd_l, xs, None, GateAct::Swish, l_norm, rows)?;
        self.locality_gate_fwd(y, gn, ln, gpre, out_act, rows * v)
    }
    /// SwiGLU on the MLP's fused gate / up GEMM output `ab [N, 2I]` (gate columns first):
    /// `h [N, I] = silu(a) * u` ([`Primitives::swiglu_fwd`]'s values). `au`: buffers for `a`
    /// and `u` (`[N, I]` each); with `keep` they hold them afterwards (the backward reads them),
    /// else their contents are unspecified (scratch for a backend that needs it; a fusing one
    /// reads `ab` in place, and the default makes two temporaries where there are none). The
    /// default makes the two column copies and the SwiGLU.
    ///
    /// # Errors
    /// [`crate::Error::BadArg`] for `keep` without `au`; the backend's errors.
    fn swiglu_split_fwd(
        &self,
        h: &mut Act<Self>,
        au: Option<(&mut Act<Self>, &mut Act<Self>)>,
        ab: &Act<Self>,
        (n, i): (usize, usize),
        keep: bool,
    ) -> Result<(), Self::Error> {
        let mut tmp = None;
        let (a, u) = outputs_or_temps(self, "swiglu_split_fwd a, u", au, keep, &mut tmp, n * i)?;
        self.cols(a, ab, &Cols::copy(1, n, i, (2 * i, 0), (i, 0)))?;
        self.cols(u, ab, &Cols::copy(1, n, i, (2 * i, i), (i, 0)))?;
        self.swiglu_fwd(h, a, u, n * i)
    }
    /// Backward of [`VisionOps::locality_gate_fwd`]: writes `d_gn`, `d_ln`, `d_gpre`.
    fn locality_gate_bwd(
        &self,
        d_gn: &mut F32<Self>,
        d_ln: &mut F32<Self>,
        d_gpre: &mut F32<Self>,
        dy: &F32<Self>,
        gn: &Act<Self>,
        ln: &Act<Self>,
        gpre: &F32<Self>,
        out_act: bool,
        len: usize,
    ) -> Result<(), Self::Error>;

    /// ViG's bidirectional scan ([`crate::bidir`]: `o = (of + ob) / 2`, both scans from zero
    /// over each of the `b` sequences of `t` tokens, the per-head scale `K^-1/2`) at the heads of
    /// `md` (`heads` of `head_k`, `head_v`): q, k, gf, gb `[b*t, key_dim]`, v and `o`
    /// `[b*t, value_dim]`. `plan` is the batch plan of `(b, t)`; nothing is saved for the
    /// backward (it recomputes from the inputs).
    fn bidir_fwd(
        &self,
        md: &GlaDims,
        plan: &Plan<Self>,
        o: &mut Act<Self>,
        qkv: [&Act<Self>; 3],
        gates: [&Act<Self>; 2],
        b: usize,
        t: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`VisionOps::bidir_fwd`] from `d_o`: writes `dq, dk, dv, dgf, dgb` (f32,
    /// shaped like their inputs).
    fn bidir_bwd(
        &self,
        md: &GlaDims,
        plan: &Plan<Self>,
        qkv: [&Act<Self>; 3],
        gates: [&Act<Self>; 2],
        d_o: &Act<Self>,
        out: [&mut F32<Self>; 5],
        b: usize,
        t: usize,
    ) -> Result<(), Self::Error>;

    /// Stochastic depth on a residual branch: over the `l` rows `[l, C]` of each image `b`,
    /// `dst = res + scales[b] * src`, or without `res` `dst = scales[b] * src` (the branch's
    /// gradient). `scales [B]` is timm's `DropPath` mask: 0 (dropped) or `1 / keep`.
    ///
    /// The default refuses ([`crate::Error::Unsupported`]): a backend without this op trains
    /// without stochastic depth only.
    fn scale_rows(
        &self,
        dst: &mut F32<Self>,
        res: Option<&F32<Self>>,
        src: &F32<Self>,
        scales: &[f32],
        l: usize,
        c: usize,
    ) -> Result<(), Self::Error> {
        let _ = (dst, res, src, scales, l, c);
        Err(crate::Error::Unsupported { backend: "this backend", what: "stochastic depth (VisionOps::scale_rows)".into() }.into())
    }

    /// Mean cross-entropy with PyTorch's `label_smoothing` (`eps`; 0 is the plain loss) of
    /// `logits [M, classes]` against `labels`: returns the summed loss and the correct argmax
    /// count, and writes `dscale * d(sum loss)/d logits` into `dlogits [M, classes]`.
    fn smoothed_cross_entropy(
        &self,
        dlogits: &mut F32<Self>,
        logits: &F32<Self>,
        labels: &[u32],
        classes: usize,
        eps: f32,
        dscale: f32,
    ) -> Result<(f64, usize), Self::Error>;
}

/// A default method's pair of outputs: the caller's buffers where it has them, else (unless
/// they must be kept) two temporaries of `len` made in `tmp`.
#[allow(clippy::type_complexity)]
fn outputs_or_temps<'a, B: Primitives + ?Sized>(
    be: &B,
    what: &'static str,
    bufs: Option<(&'a mut Act<B>, &'a mut Act<B>)>,
    keep: bool,
    tmp: &'a mut Option<(Act<B>, Act<B>)>,
    len: usize,
) -> Result<(&'a mut Act<B>, &'a mut Act<B>), B::Error> {
    Ok(match bufs {
        Some(k) => k,
        None if keep => return Err(crate::Error::BadArg { key: what, reason: "kept outputs need their buffers".into() }.into()),
        None => {
            let t = tmp.insert((be.alloc_act(len)?, be.alloc_act(len)?));
            (&mut t.0, &mut t.1)
        }
    })
}
