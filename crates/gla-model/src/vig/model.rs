//! The ViG forward and backward, written once over the backend traits ([`Backend`] and
//! [`VisionOps`]). Channels-last throughout; N = B*L token rows, L = h*w.
//!
//! ```text
//! stem:   c1 = conv(img; k = p/2+1, s = p/2, pad 1)   [B*h1*w1, D/2]   (im2col + GEMM + bias)
//!         a1 = silu(layernorm(c1))
//!         c2 = conv(a1; k 3, s 2, pad 1)               [N, D]
//!         x  = layernorm(c2) (+ silu with use_act_in_patch) + resize(pos_embed)
//! block:  xn = rmsnorm(x)
//!         xs = dwconv3x3(xn) (+ silu with use_act_in_conv)           the locality branch
//!         q, k, v = split(xs W_qkv^T)
//!         gf, gb = split(logsigmoid((xs W_0^T) W_1^T + b_1) / 16)   per-direction log-gates
//!         o  = bidirectional scan (crate::vig::scan)
//!         G  = sigmoid(xs W_g^T + b_g)
//!         y  = G * rmsnorm_head(o) g_norm + (1 - G) * rmsnorm_head(xs) l_norm  (+ swish)
//!         x  = x + y W_o^T
//!         x  = x + W_down (silu(a) * u),  [a | u] = rmsnorm(x) W_gate^T
//! head:   logits = avgpool(rmsnorm(x)) W_head^T + b_head;  loss = mean CE (label smoothing)
//! ```
//!
//! Training with stochastic depth ([`VigActs::set_drop_path`]) scales each block's two residual
//! branches per image (`x + m_b * branch`, timm's `DropPath`: `m_b` 0 or `1 / keep`).

use gla_core::Error as CoreError;

use super::config::{VigDims, LAYERNORM_EPS};
use super::layout::{BlockIds, VigLayout};
use super::scan;
use crate::backend::{Act, Backend, Cols, Conv2d, ModelStorage, VisionOps, F32};
use crate::config::{FeatureMap, GlaDims};

/// The scan's dims as the GLA op family reads them (one direction: key_dim-wide gates).
pub fn scan_dims(d: &VigDims) -> GlaDims {
    GlaDims {
        heads: d.heads,
        kv_heads: d.heads,
        key_dim: d.key_dim,
        value_dim: d.value_dim,
        head_k: d.head_k,
        head_v: d.head_v,
        key_dim_kv: d.key_dim,
        value_dim_kv: d.value_dim,
        gate_rank: d.gate_rank,
        gate_norm: d.gate_norm,
        conv: 0,
        output_gate: false,
        gnorm_name: "g_norm",
        clamp_min: None,
        feature_map: None,
    }
}

/// The gate's dims for [`crate::backend::GlaOps::gate_fwd`]: both directions' log-gates,
/// `2 key_dim` wide.
fn gate_dims(d: &VigDims) -> GlaDims {
    GlaDims { key_dim_kv: 2 * d.key_dim, ..scan_dims(d) }
}

/// The geometry of one batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Images B.
    pub b: usize,
    /// Image height and width.
    pub img: (usize, usize),
    /// The stem's first conv.
    pub g1: Conv2d,
    /// The stem's second conv.
    pub g2: Conv2d,
    /// The first conv's output grid.
    pub hw1: (usize, usize),
    /// The token grid (h, w): L = h*w tokens per image.
    pub grid: (usize, usize),
}

impl Shape {
    /// The geometry of `b` images of `h x w` pixels for dims `d`.
    ///
    /// # Errors
    /// [`CoreError::BadArg`] when the image is too small for the stem or the batch is empty.
    pub fn new(d: &VigDims, b: usize, h: usize, w: usize) -> gla_core::Result<Self> {
        let g1 = Conv2d { b, h, w, c_in: d.channels, k: d.stem.0, stride: d.stem.1, pad: 1 };
        let small = || CoreError::BadArg {
            key: "image",
            reason: format!("{h}x{w} is too small for the stem (kernel {}, stride {})", d.stem.0, d.stem.1),
        };
        let hw1 = g1.out_hw().ok_or_else(small)?;
        let g2 = Conv2d { b, h: hw1.0, w: hw1.1, c_in: d.d / 2, k: 3, stride: 2, pad: 1 };
        let grid = g2.out_hw().ok_or_else(small)?;
        if b == 0 {
            return Err(CoreError::BadArg { key: "batch", reason: "no images".into() });
        }
        Ok(Self { b, img: (h, w), g1, g2, hw1, grid })
    }
    /// Token rows N = B*L.
    pub fn n(&self) -> usize {
        self.b * self.grid.0 * self.grid.1
    }
    /// Tokens per image L.
    pub fn l(&self) -> usize {
        self.grid.0 * self.grid.1
    }
    fn n1(&self) -> usize {
        self.b * self.hw1.0 * self.hw1.1
    }
}

/// One block's tensors that the backward reads: the conv branch, the scan's output and the
/// norms' statistics. What is computed from them, the block's input stream and the weights by a
/// few launches (element-wise ops, the scan's inputs, the locality gate and its projection, the
/// residual stream between the two branches, the MLP's input projections) lives in [`FwdTmp`]
/// and the backward recomputes it there.
struct BlockActs<S: ModelStorage> {
    rstd1: S::F32,  // [N]
    loc: S::Act,    // [N, D] dwconv output
    o: S::Act,      // [N, Dv] scan output
    rstd_g: S::F32, // [N*H]
    rstd_l: S::F32, // [N*H]
    rstd2: S::F32,  // [N]
}

/// A block's forward intermediates, one set shared by the blocks: GEMM outputs before their
/// columns are split (no backward reads them) and what the backward recomputes from the block's
/// [`BlockActs`] (norms, activations, the scan's inputs, the locality gate and its projection,
/// the residual stream after the attention branch, the MLP's gate and up projections).
///
/// Tensors whose lives do not overlap share a buffer, in the forward and in the backward's
/// recomputation alike (each buffer is sized for the largest): `ab` holds the fused q/k/v GEMM
/// output until its columns are split, then both directions' log-gates until theirs are, then
/// the MLP's gate and up projections; `gk_gpre` the gates' low-rank projection until the gate
/// reads it, then the locality gate's projection; `xn` each norm that feeds a GEMM or a conv
/// (the block's first, its second, the final one). The forward-only buffers run the stem in
/// them too ([`VigActs`]).
struct FwdTmp<S: ModelStorage> {
    x_mid: S::F32,          // [N, D] x + the attention branch
    qkv_split: [S::Act; 3], // q, k [N, Dk], v [N, Dv]
    gk_lr: S::Act,          // [N, 16]
    gk_gpre: S::F32,        // [N, 2Dk] gk_lr W1^T + b1; then gpre [N, Dv] = g_proj(xs) + bias
    g_dir: [S::Act; 2],     // forward, backward log-gates [N, Dk]
    ab: S::Act,             // [N, 2Dk + Dv] qkv; then [N, 2Dk] gk; then [N, 2I] MLP gate | up
    xn: S::Act,             // [N, D] rmsnorm(x); then rmsnorm(x_mid); the final norm
    xs_act: Option<S::Act>, // [N, D] silu(loc) with use_act_in_conv
    y: S::Act,              // [N, Dv] gated output
    hm: S::Act,             // [N, I] silu(gate) * up
    /// `[N, I]` gate, up and `[N, Dv]` g_norm(o), l_norm(xs): the backward's recomputation
    /// keeps them for its gradients (training buffers only; the forward reads neither).
    a_u: Option<[S::Act; 2]>,
    gn_ln: Option<[S::Act; 2]>,
}

impl<S: ModelStorage> FwdTmp<S> {
    /// The conv branch's output `xs` of the block whose `loc` is given (after the SiLU when the
    /// layer has it, which lives here).
    fn xs<'a>(&'a self, loc: &'a S::Act) -> &'a S::Act {
        self.xs_act.as_ref().unwrap_or(loc)
    }
}

/// Backward buffers, shared by the blocks. The head's and the stem's gradients use the blocks'
/// buffers that are free then (`dxn` for the head's and for dc2, `dres16` for dc2's bf16 copy,
/// `dh` for dcols2, `dgk` for da1, `dqkv` for dc1 and `dqkv16` for its bf16 copy; those are
/// sized for both).
struct Scratch<S: ModelStorage> {
    dres: S::F32,
    dres16: S::Act,
    dxn: S::F32,
    dh: S::F32,
    d_au: [S::Act; 2],
    dab: S::Act,
    dy: S::F32,
    d_gn: S::F32,
    d_ln: S::F32,
    d_gpre: S::F32,
    d_gpre16: S::Act,
    d_o: S::Act,
    d_lnin: S::Act,
    dqkv_dir: [S::F32; 5], // dq, dk, dv, dgf, dgb
    dqkv: S::F32,
    dqkv16: S::Act,
    dgk: S::F32,
    dgk_raw: S::F32,
    dgk_raw16: S::Act,
    dgk_lr: S::Act,
    dxs: S::F32,
    // head
    dlogits16: S::Act,
    dpooled: S::F32,
    // stochastic depth: a residual branch's gradient scaled per image
    dbranch: S::F32,
    dbranch16: S::Act,
}

/// The buffers of one batch [`Shape`]. Made for training ([`VigActs::alloc`] with `backward`),
/// they hold every tensor the forward leaves for the backward: each block's `BlockActs` and
/// every residual stream. Made for the forward only, one block's buffers and one residual
/// stream (each block's output written over its input) serve every block in turn (memory ~ the
/// stem's and one block's activations), with the same launches in the same order: the logits
/// equal the training forward's bitwise.
pub struct VigActs<S: ModelStorage> {
    dims: VigDims,
    shape: Shape,
    plan: S::Plan,
    img: S::Act,
    /// The stem's intermediates the backward reads: training only. Forward-only buffers run the
    /// stem in the blocks' buffers, free until the first block (cols1, ln1, cols2 in `tmp.ab`;
    /// c1 in the residual stream; a1 in `tmp.hm`; c2 in `tmp.gk_gpre`; ln2 in `tmp.xn`), sized
    /// for both. The patch embedding's SiLU (`act_in_patch`) writes `tmp.y` in either.
    cols1: Option<S::Act>,
    c1: Option<S::F32>,
    st1: S::F32,
    ln1: Option<S::Act>,
    a1: Option<S::Act>,
    cols2: Option<S::Act>,
    c2: Option<S::F32>,
    st2: S::F32,
    ln2: Option<S::Act>,
    /// residual streams [N, D]: training, the input of block l and the final output (depth + 1
    /// of them); forward only, one ([`VigActs::stream`])
    xs: Vec<S::F32>,
    /// training: one per block; forward only: one, reused ([`VigActs::block`])
    blocks: Vec<BlockActs<S>>,
    tmp: FwdTmp<S>,
    rstdf: S::F32,
    pooled: S::Act,
    logits: S::F32,
    dlogits: S::F32,
    s: Option<Scratch<S>>,
    /// Stochastic depth's scales per block: `[attention branch, MLP branch]`, `[B]` each; `None`
    /// for a block run as is (eval, or rate 0).
    drop: Vec<Option<[Vec<f32>; 2]>>,
    /// A residual branch's output before its scale `[N, D]` (with the backward's buffers).
    branch: Option<S::F32>,
}

impl<S: ModelStorage> std::fmt::Debug for VigActs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VigActs {{ shape: {:?} }}", self.shape)
    }
}

impl<S: ModelStorage> VigActs<S> {
    /// Buffers for batches of `shape` (`backward`: with the backward's buffers).
    ///
    /// # Errors
    /// The backend's allocation errors.
    pub fn alloc<B: Backend<Buf = S> + VisionOps>(be: &B, d: &VigDims, shape: Shape, backward: bool) -> Result<Self, B::Error> {
        let (n, n1, dm, half) = (shape.n(), shape.n1(), d.d, d.d / 2);
        let (kd, vd, i, h) = (d.key_dim, d.value_dim, d.inter, d.heads);
        let f = |len: usize| be.alloc_f32(len);
        let a = |len: usize| be.alloc_act(len);
        let kept = if backward { d.depth } else { 1 };
        let stem_in_tmp = !backward;
        // forward-only buffers that also hold a stem tensor: the larger of the two sizes
        let stem = |blk: usize, st: usize| if stem_in_tmp { blk.max(st) } else { blk };
        let w3 = 2 * kd + vd;
        let mut blocks = Vec::with_capacity(kept);
        for _ in 0..kept {
            blocks.push(BlockActs { rstd1: f(n)?, loc: a(n * dm)?, o: a(n * vd)?, rstd_g: f(n * h)?, rstd_l: f(n * h)?, rstd2: f(n)? });
        }
        let s = if backward {
            Some(Scratch {
                dres: f(n * dm)?,
                dres16: be.alloc_cast(n * dm)?,
                dxn: f(n * dm)?,
                dh: f((n * i).max(n * shape.g2.cols()))?,
                d_au: [a(n * i)?, a(n * i)?],
                dab: a(n * 2 * i)?,
                dy: f(n * vd)?,
                d_gn: f(n * vd)?,
                d_ln: f(n * dm)?,
                d_gpre: f(n * vd)?,
                d_gpre16: be.alloc_cast(n * vd)?,
                d_o: a(n * vd)?,
                d_lnin: a(n * dm)?,
                dqkv_dir: [f(n * kd)?, f(n * kd)?, f(n * vd)?, f(n * kd)?, f(n * kd)?],
                dqkv: f((n * (2 * kd + vd)).max(n1 * half))?,
                dqkv16: be.alloc_cast((n * (2 * kd + vd)).max(n1 * half))?,
                dgk: f((n * 2 * kd).max(n1 * half))?,
                dgk_raw: f(n * 2 * kd)?,
                dgk_raw16: be.alloc_cast(n * 2 * kd)?,
                dgk_lr: a(n * d.gate_rank)?,
                dxs: f(n * dm)?,
                dlogits16: be.alloc_cast(shape.b * d.classes)?,
                dpooled: f(shape.b * dm)?,
                dbranch: f(n * dm)?,
                dbranch16: be.alloc_cast(n * dm)?,
            })
        } else {
            None
        };
        Ok(Self {
            dims: *d,
            shape,
            plan: be.plan(shape.b, shape.l(), backward)?,
            img: a(shape.b * shape.img.0 * shape.img.1 * d.channels)?,
            cols1: if backward { Some(a(n1 * shape.g1.cols())?) } else { None },
            c1: if backward { Some(f(n1 * half)?) } else { None },
            st1: f(2 * n1)?,
            ln1: if backward { Some(a(n1 * half)?) } else { None },
            a1: if backward { Some(a(n1 * half)?) } else { None },
            cols2: if backward { Some(a(n * shape.g2.cols())?) } else { None },
            c2: if backward { Some(f(n * dm)?) } else { None },
            st2: f(2 * n)?,
            ln2: if backward { Some(a(n * dm)?) } else { None },
            xs: (0..if backward { d.depth + 1 } else { 1 }).map(|_| f(stem(n * dm, n1 * half))).collect::<Result<_, _>>()?,
            blocks,
            tmp: FwdTmp {
                x_mid: f(n * dm)?,
                qkv_split: [a(n * kd)?, a(n * kd)?, a(n * vd)?],
                gk_lr: a(n * d.gate_rank)?,
                gk_gpre: f(stem((n * 2 * kd).max(n * vd), n * dm))?,
                g_dir: [a(n * kd)?, a(n * kd)?],
                ab: a(stem((n * 2 * i).max(n * w3), (n1 * shape.g1.cols()).max(n1 * half).max(n * shape.g2.cols())))?,
                xn: a(n * dm)?,
                xs_act: if d.act_in_conv { Some(a(n * dm)?) } else { None },
                y: a(n * vd.max(dm))?,
                hm: a(stem(n * i, n1 * half))?,
                a_u: if backward { Some([a(n * i)?, a(n * i)?]) } else { None },
                gn_ln: if backward { Some([a(n * vd)?, a(n * vd.max(dm))?]) } else { None },
            },
            rstdf: f(n)?,
            pooled: a(shape.b * dm)?,
            logits: f(shape.b * d.classes)?,
            dlogits: f(shape.b * d.classes)?,
            branch: if backward { Some(f(n * dm)?) } else { None },
            s,
            drop: vec![None; d.depth],
        })
    }

    /// The batch geometry these buffers are sized for.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Whether these buffers keep what the backward reads ([`VigActs::alloc`] with `backward`).
    pub fn trains(&self) -> bool {
        self.s.is_some()
    }

    /// The index in `xs` of residual stream `i` (the input of block `i`; `i = depth`: the
    /// blocks' output).
    fn stream(&self, i: usize) -> usize {
        i % self.xs.len()
    }

    /// The index in `blocks` of block `li`'s buffers.
    fn block(&self, li: usize) -> usize {
        li % self.blocks.len()
    }

    /// Sets stochastic depth for the next forward and backward: per block, the scales `[B]` of
    /// its attention and MLP branches (timm's `DropPath` mask: 0 or `1 / keep`), `None` for a
    /// block run as is; an empty `drop` turns it off (evaluation).
    ///
    /// # Errors
    /// [`CoreError::BadArg`] for more blocks than the model has, a mask that is not `[B]`, or
    /// activations without the backward's buffers.
    pub fn set_drop_path(&mut self, drop: Vec<Option<[Vec<f32>; 2]>>) -> gla_core::Result<()> {
        let bad = |reason: String| CoreError::BadArg { key: "drop_path", reason };
        if drop.len() > self.dims.depth {
            return Err(bad(format!("{} blocks of masks for {} blocks", drop.len(), self.dims.depth)));
        }
        if drop.iter().flatten().flatten().any(|m| m.len() != self.shape.b) {
            return Err(bad(format!("every mask must have one scale per image ({})", self.shape.b)));
        }
        if drop.iter().any(Option::is_some) && self.branch.is_none() {
            return Err(bad("stochastic depth trains: these activations have no backward buffers".into()));
        }
        self.drop = drop;
        self.drop.resize(self.dims.depth, None);
        Ok(())
    }

    /// The logits of the last forward, `[B, classes]`.
    pub fn logits(&self) -> &S::F32 {
        &self.logits
    }
}

/// The loss of one forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VigLoss {
    /// Mean (label-smoothed) cross-entropy.
    pub loss: f64,
    /// Images whose argmax equals the label.
    pub correct: usize,
}

fn shape_err(tensor: &'static str, shape: String, expected: usize, got: usize) -> CoreError {
    CoreError::ShapeMismatch { op: "vig forward", tensor, expected: shape, numel: expected, got }
}

/// The forward of `B` images `nchw [B, C, H, W]` (the geometry of `acts`): the logits into the
/// activations and, with `labels`, the mean cross-entropy with label smoothing `smoothing`
/// (its gradient kept for [`backward`]).
///
/// # Errors
/// Shape errors for inputs that do not match `acts`; the backend's errors.
pub fn forward<B: Backend + VisionOps>(
    be: &B,
    lay: &VigLayout,
    acts: &mut VigActs<B::Buf>,
    nchw: &[f32],
    labels: Option<&[u32]>,
    smoothing: f32,
) -> Result<Option<VigLoss>, B::Error> {
    upload(be, acts, nchw)?;
    forward_resident(be, lay, acts, labels, smoothing)
}

/// Copies the images `nchw [B, C, H, W]` (the geometry of `acts`) into the activations, where
/// [`forward_resident`] reads them.
///
/// # Errors
/// A shape error for images that do not match `acts`; the backend's errors.
pub fn upload<B: Backend + VisionOps>(be: &B, acts: &mut VigActs<B::Buf>, nchw: &[f32]) -> Result<(), B::Error> {
    let (d, sh) = (acts.dims, acts.shape);
    be.upload_image(&mut acts.img, nchw, sh.b, d.channels, sh.img.0, sh.img.1)
}

/// [`forward`] on the images already in `acts` ([`upload`]): what a benchmark times without the
/// host-to-device copy.
///
/// # Errors
/// As [`forward`].
pub fn forward_resident<B: Backend + VisionOps>(
    be: &B,
    lay: &VigLayout,
    acts: &mut VigActs<B::Buf>,
    labels: Option<&[u32]>,
    smoothing: f32,
) -> Result<Option<VigLoss>, B::Error> {
    let d = acts.dims;
    let sh = acts.shape;
    let (n, n1, dm, half) = (sh.n(), sh.n1(), d.d, d.d / 2);
    let inter = d.inter;
    let (b, l) = (sh.b, sh.l());
    if lay.blocks.len() != d.depth {
        return Err(shape_err("layout", "the dims' depth".into(), d.depth, lay.blocks.len()).into());
    }
    // stem (forward-only buffers: in the blocks' buffers, see VigActs)
    {
        let VigActs { img, cols1, c1, st1, ln1, a1, cols2, c2, st2, ln2, xs, tmp, .. } = &mut *acts;
        let FwdTmp { ab, hm, gk_gpre, xn, y, .. } = tmp;
        let c1 = c1.as_mut().unwrap_or(&mut xs[0]);
        {
            let cols1 = cols1.as_mut().unwrap_or(&mut *ab);
            be.im2col(cols1, img, &sh.g1)?;
            be.linear_fwd_f32(c1, cols1, lay.conv1.0, n1, sh.g1.cols(), half)?;
        }
        if let Some(bias) = lay.conv1.1 {
            be.bias_fwd_f32(c1, bias, n1, half)?;
        }
        let (ln1, a1) = (ln1.as_mut().unwrap_or(&mut *ab), a1.as_mut().unwrap_or(hm));
        be.layernorm_fwd(ln1, st1, c1, lay.ln1.0, lay.ln1.1, n1, LAYERNORM_EPS)?;
        be.feature_map_fwd(a1, ln1, n1 * half, FeatureMap::Silu)?;
        let cols2 = cols2.as_mut().unwrap_or(ab);
        be.im2col(cols2, a1, &sh.g2)?;
        let c2 = c2.as_mut().unwrap_or(gk_gpre);
        be.linear_fwd_f32(c2, cols2, lay.conv2.0, n, sh.g2.cols(), dm)?;
        if let Some(bias) = lay.conv2.1 {
            be.bias_fwd_f32(c2, bias, n, dm)?;
        }
        let ln2 = ln2.as_mut().unwrap_or(xn);
        be.layernorm_fwd(ln2, st2, c2, lay.ln2.0, lay.ln2.1, n, LAYERNORM_EPS)?;
        if d.act_in_patch {
            be.feature_map_fwd(y, ln2, n * dm, FeatureMap::Silu)?;
        }
        let post = if d.act_in_patch { &*y } else { &*ln2 };
        be.cols_to_f32(&mut xs[0], post, &Cols::copy(1, n, dm, (dm, 0), (dm, 0)))?;
    }
    if let Some(pe) = lay.pos_embed {
        be.pos_embed_fwd(&mut acts.xs[0], pe, d.grid, sh.grid, b)?;
    }
    // blocks: block li reads stream li and writes stream li + 1 (forward-only buffers: the same
    // stream, which the attention branch has read by the time the MLP writes it)
    let md = scan_dims(&d);
    let (gh, gw) = sh.grid;
    for (li, ids) in lay.blocks.iter().enumerate() {
        let (bi, si, so) = (acts.block(li), acts.stream(li), acts.stream(li + 1));
        let VigActs { blocks, tmp: t, xs, plan, drop, branch, .. } = &mut *acts;
        let a = &mut blocks[bi];
        let x = &xs[si];
        be.rmsnorm_fwd(&mut t.xn, &mut a.rstd1, x, ids.attn_norm, n)?;
        be.dwconv_fwd(&mut a.loc, &t.xn, ids.dwconv, b, gh, gw, dm)?;
        if let Some(xa) = &mut t.xs_act {
            be.feature_map_fwd(xa, &a.loc, n * dm, FeatureMap::Silu)?;
        }
        scan_inputs_fwd(be, &d, ids, &a.loc, t, n)?;
        let [q, k, v] = &t.qkv_split;
        let [gf, gb] = &t.g_dir;
        scan::forward(be, &md, plan, &mut a.o, [q, k, v], [gf, gb], (b, l))?;
        gpre_fwd(be, &d, ids, &a.loc, t, n)?;
        locality_fwd(be, &d, ids, a, t, n, false)?;
        let dr = drop[li].as_ref().zip(branch.as_mut()).map(|([m, _], br)| (&m[..], br));
        attn_residual_fwd(be, &d, ids, x, t, dr, (n, l))?;
        // SwiGLU MLP, its gate and up projections one weight [2I, D]
        be.rmsnorm_fwd(&mut t.xn, &mut a.rstd2, &t.x_mid, ids.mlp_norm, n)?;
        be.linear_fwd(&mut t.ab, &t.xn, ids.gate_proj, n, dm, 2 * inter)?;
        // a, u: scratch where the training buffers have them (the backward recomputes them)
        let au = t.a_u.as_mut().map(|[a, u]| (a, u));
        be.swiglu_split_fwd(&mut t.hm, au, &t.ab, (n, inter), false)?;
        let out = &mut xs[so];
        match drop[li].as_ref().zip(branch.as_mut()) {
            Some(([_, m], br)) => {
                be.linear_fwd_f32(br, &t.hm, ids.down_proj, n, inter, dm)?;
                be.scale_rows(out, Some(&t.x_mid), br, m, l, dm)?;
            }
            None => be.linear_residual_fwd(out, &t.x_mid, &t.hm, ids.down_proj, n, inter, dm)?,
        }
    }
    // head
    let last = acts.stream(d.depth);
    be.rmsnorm_fwd(&mut acts.tmp.xn, &mut acts.rstdf, &acts.xs[last], lay.norm, n)?;
    be.avgpool_fwd(&mut acts.pooled, &acts.tmp.xn, b, l, dm)?;
    be.linear_fwd_f32(&mut acts.logits, &acts.pooled, lay.head.0, b, dm, d.classes)?;
    be.bias_fwd_f32(&mut acts.logits, lay.head.1, b, d.classes)?;
    let Some(labels) = labels else { return Ok(None) };
    if labels.len() != b {
        return Err(shape_err("labels", format!("[B={b}]"), b, labels.len()).into());
    }
    let (sum, correct) = be.smoothed_cross_entropy(&mut acts.dlogits, &acts.logits, labels, d.classes, smoothing, 1.0 / b as f32)?;
    Ok(Some(VigLoss { loss: sum / b as f64, correct }))
}

/// The scan's inputs from the conv branch (`loc`, or its SiLU in `t`): q, k, v (one GEMM into
/// `ab`, its columns split) and both directions' log-gates (the low-rank projection with its
/// bias into `gk_gpre`, logsigmoid / 16 into `ab`, split) into `t`. The forward runs it, and the
/// backward again before the scan's backward (the same launches: the same values) instead of
/// keeping them per block.
fn scan_inputs_fwd<B: Backend + VisionOps>(
    be: &B,
    d: &VigDims,
    ids: &BlockIds,
    loc: &Act<B>,
    t: &mut FwdTmp<B::Buf>,
    n: usize,
) -> Result<(), B::Error> {
    let (kd, vd, dm) = (d.key_dim, d.value_dim, d.d);
    let FwdTmp { xs_act, ab, qkv_split, gk_lr, gk_gpre, g_dir, .. } = t;
    let xs = xs_act.as_ref().unwrap_or(loc);
    let w3 = 2 * kd + vd;
    let qkv = ab;
    be.linear_fwd(qkv, xs, ids.qkv, n, dm, w3)?;
    for (dst, (off, w)) in qkv_split.iter_mut().zip([(0, kd), (kd, kd), (2 * kd, vd)]) {
        be.cols(dst, qkv, &Cols::copy(1, n, w, (w3, off), (w, 0)))?;
    }
    be.linear_fwd(gk_lr, xs, ids.gk0, n, dm, d.gate_rank)?;
    let (gk_raw, gk) = (gk_gpre, qkv);
    be.linear_fwd_f32(gk_raw, gk_lr, ids.gk1, n, d.gate_rank, 2 * kd)?;
    be.gate_fwd(&gate_dims(d), gk, gk_raw, ids.gk1_bias, n)?;
    for (j, dst) in g_dir.iter_mut().enumerate() {
        be.cols(dst, gk, &Cols::copy(1, n, kd, (2 * kd, j * kd), (kd, 0)))?;
    }
    Ok(())
}

/// The locality gate's projection `gpre = g_proj(xs) + bias [N, Dv]` into `t.gk_gpre` (the
/// gates' projection is spent by then). The forward runs it, and the backward again.
fn gpre_fwd<B: Backend + VisionOps>(
    be: &B,
    d: &VigDims,
    ids: &BlockIds,
    loc: &Act<B>,
    t: &mut FwdTmp<B::Buf>,
    n: usize,
) -> Result<(), B::Error> {
    let xs = t.xs_act.as_ref().unwrap_or(loc);
    be.linear_fwd_f32(&mut t.gk_gpre, xs, ids.g_proj, n, d.d, d.value_dim)?;
    be.bias_fwd_f32(&mut t.gk_gpre, ids.g_proj_bias, n, d.value_dim)
}

/// The residual stream after block input `x`'s attention branch, `x_mid = x + y W_o^T` (the
/// branch scaled per image by `drop`'s scales, through its buffer, under stochastic depth), into
/// `t`. The forward runs it, and the backward again (the same launches: the same values).
fn attn_residual_fwd<B: Backend + VisionOps>(
    be: &B,
    d: &VigDims,
    ids: &BlockIds,
    x: &F32<B>,
    t: &mut FwdTmp<B::Buf>,
    drop: Option<(&[f32], &mut F32<B>)>,
    (n, l): (usize, usize),
) -> Result<(), B::Error> {
    let (vd, dm) = (d.value_dim, d.d);
    match drop {
        Some((m, br)) => {
            be.linear_fwd_f32(br, &t.y, ids.o_proj, n, vd, dm)?;
            be.scale_rows(&mut t.x_mid, Some(x), br, m, l, dm)
        }
        None => be.linear_residual_fwd(&mut t.x_mid, x, &t.y, ids.o_proj, n, vd, dm),
    }
}

/// The locality branch's element-wise part ([`VisionOps::locality_fwd`]): `gn = g_norm(o)`,
/// `ln = l_norm(xs)` (their rstd into the block's) and `y`, the locality gate of them by
/// `sigmoid(gpre)`. The forward runs it (`keep` false: only `y` is read; `t.gn_ln`, where the
/// training buffers have it, as scratch), and the backward again to recompute them into
/// `t.gn_ln` (`keep` true): the same values.
fn locality_fwd<B: Backend + VisionOps>(
    be: &B,
    d: &VigDims,
    ids: &BlockIds,
    a: &mut BlockActs<B::Buf>,
    t: &mut FwdTmp<B::Buf>,
    n: usize,
    keep: bool,
) -> Result<(), B::Error> {
    let xs = t.xs_act.as_ref().unwrap_or(&a.loc);
    be.locality_fwd(
        &mut t.y,
        t.gn_ln.as_mut().map(|[gn, ln]| (gn, ln)),
        (&mut a.rstd_g, &mut a.rstd_l),
        (&a.o, xs, &t.gk_gpre),
        (ids.g_norm, ids.l_norm),
        (n * d.heads, d.head_v),
        d.out_act,
        keep,
    )
}

/// The gradient of a residual branch's output as a GEMM operand: the residual stream's `dres`, or
/// under stochastic depth `scales[b] * dres` over each image's `l` rows (into `dbranch`).
#[allow(clippy::type_complexity)]
fn branch_grad<'s, B: Backend + VisionOps>(
    be: &B,
    (dbranch, dbranch16, dres16): (&'s mut F32<B>, &'s mut Act<B>, &'s mut Act<B>),
    dres: &'s F32<B>,
    scales: Option<&[f32]>,
    (l, dm): (usize, usize),
) -> Result<&'s Act<B>, B::Error> {
    match scales {
        Some(m) => {
            be.scale_rows(dbranch, None, dres, m, l, dm)?;
            be.cast(dbranch16, dbranch)?;
            Ok(be.operand(dbranch16, dbranch))
        }
        None => {
            be.cast(dres16, dres)?;
            Ok(be.operand(dres16, dres))
        }
    }
}

/// Backward of [`forward`] (which must have had labels): accumulates the gradient of the mean
/// loss into `grads` (an arena laid out like the parameters).
///
/// # Errors
/// Shape errors when `grads` does not match the table or `acts` has no backward buffers.
pub fn backward<B: Backend + VisionOps>(be: &B, lay: &VigLayout, acts: &mut VigActs<B::Buf>, grads: &mut B::Grads) -> Result<(), B::Error> {
    if be.grads_len(grads) != lay.numel {
        return Err(shape_err("grads", "the parameter table".into(), lay.numel, be.grads_len(grads)).into());
    }
    let d = acts.dims;
    let sh = acts.shape;
    let (n, n1, dm, half) = (sh.n(), sh.n1(), d.d, d.d / 2);
    let (kd, vd, inter) = (d.key_dim, d.value_dim, d.inter);
    let (b, l) = (sh.b, sh.l());
    let (md, gd) = (scan_dims(&d), gate_dims(&d));
    let (gh, gw) = sh.grid;
    let VigActs { plan, s, blocks, xs, drop, tmp, branch, .. } = acts;
    let Some(s) = s.as_mut() else {
        return Err(shape_err("activations", "made for training".into(), 1, 0).into());
    };
    let (Some(cols1), Some(c1), Some(ln1), Some(cols2), Some(c2), Some(ln2)) =
        (&acts.cols1, &acts.c1, &acts.ln1, &acts.cols2, &acts.c2, &acts.ln2)
    else {
        return Err(shape_err("stem activations", "made for training".into(), 1, 0).into());
    };
    // head: dlogits holds d(mean loss)/d logits
    be.cast(&mut s.dlogits16, &acts.dlogits)?;
    let dl = be.operand(&s.dlogits16, &acts.dlogits);
    be.linear_bwd_x(&mut s.dpooled, dl, lay.head.0, b, dm, d.classes, false)?;
    be.linear_bwd_w(grads, lay.head.0, dl, &acts.pooled, b, dm, d.classes)?;
    be.bias_bwd_act(grads, lay.head.1, dl, b, d.classes)?;
    be.avgpool_bwd(&mut s.dxn, &s.dpooled, b, l, dm)?;
    be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &xs[d.depth], &acts.rstdf, lay.norm, n, false)?;
    be.grads_ready(grads, 0)?;
    for (li, ids) in lay.blocks.iter().enumerate().rev() {
        let a = &mut blocks[li];
        let t = &mut *tmp;
        // recomputed (the forward's launches: the same values): xs, gpre, gn, ln, y and x_mid
        if let Some(xa) = &mut t.xs_act {
            be.feature_map_fwd(xa, &a.loc, n * dm, FeatureMap::Silu)?;
        }
        gpre_fwd(be, &d, ids, &a.loc, t, n)?;
        locality_fwd(be, &d, ids, a, t, n, true)?;
        let dr = drop[li].as_ref().zip(branch.as_mut()).map(|([m, _], br)| (&m[..], br));
        attn_residual_fwd(be, &d, ids, &xs[li], t, dr, (n, l))?;
        // MLP (its branch's gradient scaled per image under stochastic depth); its norm, the gate
        // and up projections and hm recomputed
        be.rmsnorm_fwd(&mut t.xn, &mut a.rstd2, &t.x_mid, ids.mlp_norm, n)?;
        be.linear_fwd(&mut t.ab, &t.xn, ids.gate_proj, n, dm, 2 * inter)?;
        let (Some(a_u), Some([gn, ln])) = (t.a_u.as_mut(), t.gn_ln.as_ref()) else {
            return Err(shape_err("block activations", "made for training".into(), 1, 0).into());
        };
        let [ga, up] = a_u;
        be.swiglu_split_fwd(&mut t.hm, Some((ga, up)), &t.ab, (n, inter), true)?;
        let bufs = (&mut s.dbranch, &mut s.dbranch16, &mut s.dres16);
        let dout = branch_grad(be, bufs, &s.dres, drop[li].as_ref().map(|m| &m[1][..]), (l, dm))?;
        be.linear_bwd_x(&mut s.dh, dout, ids.down_proj, n, inter, dm, false)?;
        be.linear_bwd_w(grads, ids.down_proj, dout, &t.hm, n, inter, dm)?;
        let [da, du] = &mut s.d_au;
        be.swiglu_bwd(da, du, &s.dh, ga, up, n * inter)?;
        for (j, src) in s.d_au.iter().enumerate() {
            be.cols(&mut s.dab, src, &Cols::copy(1, n, inter, (inter, 0), (2 * inter, j * inter)))?;
        }
        be.linear_bwd_x(&mut s.dxn, &s.dab, ids.gate_proj, n, dm, 2 * inter, false)?;
        be.linear_bwd_w(grads, ids.gate_proj, &s.dab, &t.xn, n, dm, 2 * inter)?;
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &t.x_mid, &a.rstd2, ids.mlp_norm, n, true)?;
        // BiGLA layer
        let bufs = (&mut s.dbranch, &mut s.dbranch16, &mut s.dres16);
        let dout = branch_grad(be, bufs, &s.dres, drop[li].as_ref().map(|m| &m[0][..]), (l, dm))?;
        be.linear_bwd_x(&mut s.dy, dout, ids.o_proj, n, vd, dm, false)?;
        be.linear_bwd_w(grads, ids.o_proj, dout, &t.y, n, vd, dm)?;
        be.locality_gate_bwd(&mut s.d_gn, &mut s.d_ln, &mut s.d_gpre, &s.dy, gn, ln, &t.gk_gpre, d.out_act, n * vd)?;
        let act = crate::config::GateAct::Swish;
        be.gated_norm_bwd(plan, &mut s.d_o, None, grads, ids.g_norm, &s.d_gn, &a.o, None, act, &a.rstd_g, n * d.heads)?;
        let xs_l = t.xs(&a.loc);
        be.gated_norm_bwd(plan, &mut s.d_lnin, None, grads, ids.l_norm, &s.d_ln, xs_l, None, act, &a.rstd_l, n * d.heads)?;
        // locality gate projection
        be.cast(&mut s.d_gpre16, &s.d_gpre)?;
        let dg = be.operand(&s.d_gpre16, &s.d_gpre);
        be.bias_bwd_act(grads, ids.g_proj_bias, dg, n, vd)?;
        be.linear_bwd_w(grads, ids.g_proj, dg, xs_l, n, dm, vd)?;
        be.linear_bwd_x(&mut s.dxs, dg, ids.g_proj, n, dm, vd, false)?;
        // the two scans, their inputs recomputed
        scan_inputs_fwd(be, &d, ids, &a.loc, t, n)?;
        let xs_l = t.xs(&a.loc);
        let [q, k, v] = &t.qkv_split;
        let [dq, dk, dv, dgf, dgb] = &mut s.dqkv_dir;
        let [gf, gb] = &t.g_dir;
        scan::backward(be, &md, plan, [q, k, v], [gf, gb], &s.d_o, [dq, dk, dv, dgf, dgb], (b, l))?;
        let w3 = 2 * kd + vd;
        for (src, (off, w)) in s.dqkv_dir[..3].iter().zip([(0, kd), (kd, kd), (2 * kd, vd)]) {
            be.cols_f32(&mut s.dqkv, src, &Cols::copy(1, n, w, (w, 0), (w3, off)))?;
        }
        for (j, src) in s.dqkv_dir[3..].iter().enumerate() {
            be.cols_f32(&mut s.dgk, src, &Cols::copy(1, n, kd, (kd, 0), (2 * kd, j * kd)))?;
        }
        // gate: gk_raw = gk_lr W1^T + b1, gk = logsigmoid(gk_raw) / 16
        be.gate_bwd(&gd, plan, &mut s.dgk_raw, &mut s.dgk_raw16, grads, ids.gk1_bias, &s.dgk, &t.gk_gpre, n)?;
        let dgr = be.operand(&s.dgk_raw16, &s.dgk_raw);
        be.linear_bwd_w(grads, ids.gk1, dgr, &t.gk_lr, n, d.gate_rank, 2 * kd)?;
        be.linear_bwd_x_act(&mut s.dgk_lr, dgr, ids.gk1, n, d.gate_rank, 2 * kd)?;
        be.linear_bwd_w(grads, ids.gk0, &s.dgk_lr, xs_l, n, dm, d.gate_rank)?;
        be.linear_bwd_x(&mut s.dxs, &s.dgk_lr, ids.gk0, n, dm, d.gate_rank, true)?;
        be.cast(&mut s.dqkv16, &s.dqkv)?;
        let dqkv = be.operand(&s.dqkv16, &s.dqkv);
        be.linear_bwd_w(grads, ids.qkv, dqkv, xs_l, n, dm, w3)?;
        be.linear_bwd_x(&mut s.dxs, dqkv, ids.qkv, n, dm, w3, true)?;
        be.cols_to_f32(&mut s.dxs, &s.d_lnin, &Cols { acc: true, ..Cols::copy(1, n, dm, (dm, 0), (dm, 0)) })?;
        if t.xs_act.is_some() {
            be.feature_map_bwd(&mut s.dxs, &a.loc, n * dm, FeatureMap::Silu)?;
        }
        be.rmsnorm_fwd(&mut t.xn, &mut a.rstd1, &xs[li], ids.attn_norm, n)?;
        be.dwconv_bwd(&mut s.dxn, grads, &s.dxs, &t.xn, ids.dwconv, b, gh, gw, dm)?;
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &xs[li], &a.rstd1, ids.attn_norm, n, true)?;
        be.grads_ready(grads, d.depth - li)?;
    }
    // position embedding and stem
    if let Some(pe) = lay.pos_embed {
        be.pos_embed_bwd(grads, &s.dres, pe, d.grid, sh.grid, b)?;
    }
    if d.act_in_patch {
        be.feature_map_bwd(&mut s.dres, ln2, n * dm, FeatureMap::Silu)?;
    }
    let Scratch { dxn: dc2, dres16: dc2_16, dh: dcols2, dgk: da1, dqkv: dc1, dqkv16: dc1_16, .. } = s;
    be.layernorm_bwd(dc2, grads, &s.dres, c2, &acts.st2, lay.ln2.0, lay.ln2.1, n)?;
    be.cast(dc2_16, dc2)?;
    let dc2 = be.operand(dc2_16, dc2);
    if let Some(bias) = lay.conv2.1 {
        be.bias_bwd_act(grads, bias, dc2, n, dm)?;
    }
    be.linear_bwd_w(grads, lay.conv2.0, dc2, cols2, n, sh.g2.cols(), dm)?;
    be.linear_bwd_x(dcols2, dc2, lay.conv2.0, n, sh.g2.cols(), dm, false)?;
    be.col2im(da1, dcols2, &sh.g2)?;
    be.feature_map_bwd(da1, ln1, n1 * half, FeatureMap::Silu)?;
    be.layernorm_bwd(dc1, grads, da1, c1, &acts.st1, lay.ln1.0, lay.ln1.1, n1)?;
    be.cast(dc1_16, dc1)?;
    let dc1 = be.operand(dc1_16, dc1);
    if let Some(bias) = lay.conv1.1 {
        be.bias_bwd_act(grads, bias, dc1, n1, half)?;
    }
    be.linear_bwd_w(grads, lay.conv1.0, dc1, cols1, n1, sh.g1.cols(), half)?;
    be.grads_ready(grads, d.depth + 1)
}

#[cfg(test)]
mod tests {
    use crate::vig::{VigConfig, VigModel};

    /// Forward-only buffers (one block's, one residual stream written in place, the stem in the
    /// blocks' buffers) give the training buffers' logits and loss bitwise: the same ops in the
    /// same order on the same values.
    #[test]
    fn forward_only_buffers_give_the_training_forwards_logits() {
        let cfg = VigConfig {
            img_size: 32,
            patch_size: 8,
            stride: 8,
            depth: 3,
            num_heads: 2,
            embed_dim: 32,
            num_classes: 5,
            ..VigConfig::vig_t()
        };
        let m = VigModel::new(cfg, 3).unwrap();
        let (b, h, w) = (2, 32, 32);
        let images: Vec<f32> = (0..b * 3 * h * w).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let labels = [1u32, 4];
        let mut train = m.acts(b, h, w, true).unwrap();
        let mut infer = m.acts(b, h, w, false).unwrap();
        assert!(train.trains() && !infer.trains());
        assert_eq!((train.blocks.len(), train.xs.len()), (3, 4));
        assert_eq!((infer.blocks.len(), infer.xs.len()), (1, 1));
        let lt = m.forward(&mut train, &images, Some(&labels), 0.1).unwrap().unwrap();
        let li = m.forward(&mut infer, &images, Some(&labels), 0.1).unwrap().unwrap();
        assert_eq!(lt.loss.to_bits(), li.loss.to_bits());
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(train.logits()), bits(infer.logits()));
        assert!(train.logits().iter().any(|&v| v != 0.0));
        // a forward-only set refuses the backward
        let mut grads = vec![0.0f32; m.num_params()];
        assert!(m.backward(&mut infer, &mut grads).is_err());
    }
}
