//! The GLA language model (fla's `GLAForCausalLM`), with an explicit forward and backward.
//!
//! ```text
//! x = embeddings[ids]                                   [N, D]   N = B*T
//! for each layer l:
//!     x = x + mixer_l(attn_norm(x))                     the layer's token mixer (crate::mixers)
//!     x = x + mlp(mlp_norm(x))                          SwiGLU (crate::modules::mlp)
//! logits = norm(x) W_lm^T     (W_lm = embeddings when tied)
//! loss   = mean cross-entropy over the rows whose target is not -100
//! ```
//!
//! [`forward`] keeps what the backward needs in [`Acts`]; [`backward`] walks the same calls in
//! reverse and accumulates into a gradient arena laid out like the parameters. Both are written
//! once over the [`Backend`] trait: [`GlaModel::forward`] / [`GlaModel::backward`] run them on the
//! CPU ([`crate::cpu::Cpu`], f32), gla-cuda on a GPU. [`body`] (embedding, blocks, final norm) is
//! also the inference forward of both (prefill and decode, with the sequences' states in the
//! backend's `Io`). Only rows with a target reach the lm_head (the loss does not need the
//! others), which makes recall tasks with few labelled rows cheap.

use gla_core::Error as CoreError;

use crate::backend::{Backend, ModelStorage};
use crate::config::{Dims, ModelConfig};
use crate::cpu::{Cpu, CpuBuf};
use crate::layout::Layout;
use crate::mixers::{self, MixerActs, MixerScratch};
use crate::modules::mlp::{self, MlpActs, MlpScratch};
use crate::{Error, Result};

/// The label value that is skipped by the loss (PyTorch's `ignore_index`; the backends' contract,
/// [`gla_core::backend::IGNORE_INDEX`]).
pub use gla_core::backend::IGNORE_INDEX;

/// A language model of the family (fla's `GLAForCausalLM`, `DeltaNetForCausalLM`,
/// `GatedDeltaNetForCausalLM`, by its config's `model_type`): config, derived dims, the
/// parameter table and the f32 weights.
#[derive(Debug, Clone)]
pub struct GlaModel {
    /// The fla config it was built from (written back to `config.json`).
    pub config: ModelConfig,
    /// Derived dims.
    pub dims: Dims,
    /// The parameter table.
    pub layout: Layout,
    /// The weights, one arena in table order.
    pub params: Vec<f32>,
}

/// What one forward returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossOut {
    /// Mean cross-entropy over the labelled rows (0 when there are none).
    pub loss: f64,
    /// Labelled rows.
    pub n_valid: usize,
    /// Labelled rows whose argmax prediction equals the target.
    pub correct: usize,
}

/// Saved tensors of one block (shapes with N = B*T rows).
struct LayerActs<S: ModelStorage> {
    rstd1: S::F32,       // [N]
    xn1: S::Act,         // [N, D] the mixer's input
    mixer: MixerActs<S>, // the mixer's own
    x_mid: S::F32,       // [N, D] residual after the mixer
    rstd2: S::F32,       // [N]
    xn2: S::Act,         // [N, D] the MLP's input
    mlp: MlpActs<S>,     // the MLP's own
}

/// Backward buffers (allocated once, reused by every layer).
struct Scratch<S: ModelStorage> {
    dres: S::F32,   // [N, D]
    dres16: S::Act, // its GEMM operand (Primitives::alloc_cast)
    dxn: S::F32,    // [N, D]
    mlp: MlpScratch<S>,
    mixer: MixerScratch<S>,
}

/// Every tensor a forward leaves for the backward (or, made for inference, one block's set
/// reused by every block), sized once for a batch shape `[B, T]` and reused.
pub struct Acts<S: ModelStorage> {
    /// the model dims the buffers were sized for (checked against the backend's at every use)
    dims: Dims,
    b: usize,
    t: usize,
    /// one block's tensors per mixer kind reused by the blocks of that kind, two residual
    /// streams used in turn, no backward buffers
    inference: bool,
    /// block l's entry in `layers`
    slot: Vec<usize>,
    plan: S::Plan,
    ids: S::Ids,
    /// residual streams [N, D]: L+1 (the input of block l, and the final output), or 2
    xs: Vec<S::F32>,
    layers: Vec<LayerActs<S>>,
    rstdf: S::F32, // [N]
    xf: S::Act,    // [N, D] final norm output
    rows: S::Rows, // labelled rows and their targets
    m: usize,      // labelled rows of the last forward
    head: usize,   // rows the lm_head buffers below hold
    xf_sel: S::Act,
    logits: S::F32,  // [M, vocab]
    dlogits: S::Act, // [M, vocab] d(mean loss)/d logits (empty: it is written over logits)
    dsel: S::F32,    // [M, D]
    s: Option<Scratch<S>>,
}

/// The CPU's activations ([`GlaModel::forward`] / [`GlaModel::backward`]).
pub type Activations = Acts<CpuBuf>;

impl<S: ModelStorage> std::fmt::Debug for Acts<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acts {{ b: {}, t: {}, inference: {} }}", self.b, self.t, self.inference)
    }
}

impl<S: ModelStorage> Acts<S> {
    /// Buffers for `[b, t]` batches on backend `be`: every block's saved tensors and the
    /// backward's buffers, or (`inference`) one block's tensors reused by every block and no
    /// backward (about 1/L of the memory). `head`: rows the lm_head buffers hold at first
    /// (they grow to the labelled rows of a forward).
    ///
    /// # Errors
    /// The backend's allocation errors.
    pub fn alloc<B: Backend<Buf = S>>(be: &B, lay: &Layout, b: usize, t: usize, inference: bool, head: usize) -> Result<Self, B::Error> {
        let dm = be.dims();
        let n = b
            .checked_mul(t)
            .ok_or_else(|| CoreError::BadArg { key: "batch", reason: format!("[{b}, {t}] overflows the address space") })?;
        // inference: one block's buffers per mixer kind, shared by the blocks of that kind
        let mut slot = Vec::with_capacity(lay.layers.len());
        let mut owners: Vec<usize> = Vec::new();
        for (l, il) in lay.layers.iter().enumerate() {
            let shared = owners.iter().position(|&o| lay.layers[o].mixer.dims() == il.mixer.dims()).filter(|_| inference);
            slot.push(shared.unwrap_or_else(|| {
                owners.push(l);
                owners.len() - 1
            }));
        }
        let mut layers = Vec::with_capacity(owners.len());
        for &o in &owners {
            layers.push(LayerActs {
                rstd1: be.alloc_f32(n)?,
                xn1: be.alloc_act(n * dm.d)?,
                mixer: MixerActs::alloc(be, &lay.layers[o].mixer, n)?,
                x_mid: be.alloc_f32(n * dm.d)?,
                rstd2: be.alloc_f32(n)?,
                xn2: be.alloc_act(n * dm.d)?,
                mlp: MlpActs::alloc(be, n)?,
            });
        }
        let s = if inference {
            None
        } else {
            Some(Scratch {
                dres: be.alloc_f32(n * dm.d)?,
                dres16: be.alloc_cast(n * dm.d)?,
                dxn: be.alloc_f32(n * dm.d)?,
                mlp: MlpScratch::alloc(be, n)?,
                mixer: MixerScratch::alloc(be, lay.layers.iter().map(|il| &il.mixer), n)?,
            })
        };
        Ok(Self {
            dims: dm.clone(),
            b,
            t,
            inference,
            slot,
            plan: be.plan(b, t, !inference)?,
            ids: be.alloc_ids(n)?,
            xs: (0..if inference { 2 } else { dm.layers + 1 }).map(|_| be.alloc_f32(n * dm.d)).collect::<Result<_, _>>()?,
            layers,
            rstdf: be.alloc_f32(n)?,
            xf: be.alloc_act(n * dm.d)?,
            rows: be.alloc_rows(n)?,
            m: 0,
            head,
            xf_sel: be.alloc_act(head * dm.d)?,
            logits: be.alloc_f32(head * dm.vocab)?,
            dlogits: be.alloc_cast(head * dm.vocab)?,
            dsel: be.alloc_f32(if inference { 0 } else { head * dm.d })?,
            s,
        })
    }

    /// The batch shape `(B, T)` these buffers hold.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// Whether these are inference activations (no backward).
    pub fn is_inference(&self) -> bool {
        self.inference
    }

    /// Rows that reached the lm_head in the last forward (`M`).
    pub fn labelled(&self) -> usize {
        self.m
    }

    /// The batch's token ids as the backend holds them.
    pub fn ids_mut(&mut self) -> &mut S::Ids {
        &mut self.ids
    }

    /// The lm_head's output of the last forward: `[M, vocab]` logits of the labelled rows (a
    /// backend that writes the loss gradient over them holds that after a training forward).
    pub fn logits(&self) -> &S::F32 {
        &self.logits
    }

    /// Index of block `l`'s entry in `layers`.
    fn li(&self, l: usize) -> usize {
        self.slot[l]
    }

    /// Index in `xs` of the residual stream entering block `l` (`l = L`: leaving the last).
    fn xi(&self, l: usize) -> usize {
        if self.inference {
            l % 2
        } else {
            l
        }
    }

    /// Grows the lm_head buffers to `m` rows (a no-op once they are large enough).
    fn fit_head<B: Backend<Buf = S>>(&mut self, be: &B, m: usize) -> Result<(), B::Error> {
        if m <= self.head {
            return Ok(());
        }
        let dm = be.dims();
        // free the old ones first
        self.xf_sel = be.alloc_act(0)?;
        self.logits = be.alloc_f32(0)?;
        self.dlogits = be.alloc_cast(0)?;
        self.xf_sel = be.alloc_act(m * dm.d)?;
        self.logits = be.alloc_f32(m * dm.vocab)?;
        self.dlogits = be.alloc_cast(m * dm.vocab)?;
        self.dsel = be.alloc_f32(if self.inference { 0 } else { m * dm.d })?;
        self.head = m;
        Ok(())
    }
}

impl Activations {
    /// CPU buffers for batches of `b` sequences of `t` tokens.
    pub fn new(dims: &Dims, b: usize, t: usize) -> Self {
        let layout = Layout::new(dims);
        let cpu = Cpu::new(dims, &layout, &[]);
        match Acts::alloc(&cpu, &layout, b, t, false, 0) {
            Ok(a) => a,
            // the CPU allocates with vec!, which aborts rather than fail
            Err(e) => unreachable!("CPU allocation returned an error: {e}"),
        }
    }

    /// After a forward: `d(mean loss)/d logits` of the labelled rows, `[M, vocab]`.
    pub fn dlogits(&self) -> &[f32] {
        let len = self.m * self.logits.len().checked_div(self.head).unwrap_or(0);
        &self.logits[..len]
    }
}

/// fla's label shift: `targets[b, t] = labels[b, t + 1]`, and the last position of each row is
/// ignored (`labels = cat(labels[:, 1:], ignore_index)` inside `GLAForCausalLM.forward`).
pub fn shift_labels(labels: &[i64], t: usize) -> Vec<i64> {
    let mut out = vec![IGNORE_INDEX; labels.len()];
    if t == 0 {
        return out;
    }
    for (o, l) in out.chunks_exact_mut(t).zip(labels.chunks_exact(t)) {
        o[..t - 1].copy_from_slice(&l[1..]);
    }
    out
}

/// A shape error of the code written over the backend traits (a contract error, so that every
/// backend's error type takes it).
pub(crate) fn shape_err(op: &'static str, tensor: &'static str, shape: String, expected: usize, got: usize) -> CoreError {
    CoreError::ShapeMismatch { op, tensor, expected: shape, numel: expected, got }
}

/// Checks ids and aligned targets of a `[B, T]` batch.
/// Activations sized for another model's dims would index out of their buffers.
fn check_acts<S: ModelStorage>(dims: &Dims, acts: &Acts<S>) -> gla_core::Result<()> {
    if acts.dims != *dims {
        return Err(shape_err("forward/backward", "activations", "made for this model's dims".into(), dims.d, acts.dims.d));
    }
    Ok(())
}

fn check_batch(dims: &Dims, b: usize, t: usize, ids: &[u32], targets: &[i64]) -> gla_core::Result<()> {
    let n = b * t;
    let shape = format!("[B={b}, T={t}]");
    if ids.len() != n {
        return Err(shape_err("forward", "input_ids", shape.clone(), n, ids.len()));
    }
    if targets.len() != n {
        return Err(shape_err("forward", "targets", shape.clone(), n, targets.len()));
    }
    check_ids(dims, ids)?;
    let vocab = dims.vocab;
    if let Some(i) = targets.iter().position(|&x| x != IGNORE_INDEX && !(0..vocab as i64).contains(&x)) {
        return Err(CoreError::Token { what: "label", value: targets[i], index: i, vocab });
    }
    Ok(())
}

/// Refuses token ids outside the vocabulary (they would index past the embedding).
///
/// # Errors
/// [`gla_core::Error::Token`] naming the first bad id.
pub fn check_ids(dims: &Dims, ids: &[u32]) -> gla_core::Result<()> {
    let vocab = dims.vocab;
    match ids.iter().position(|&x| x as usize >= vocab) {
        Some(i) => Err(CoreError::Token { what: "input id", value: ids[i] as i64, index: i, vocab }),
        None => Ok(()),
    }
}

/// The lm_head's table index (the embedding when tied).
fn lm_head_id(layout: &Layout) -> usize {
    layout.lm_head.unwrap_or(layout.embeddings)
}

/// `xs[i]` to read and `xs[o]` to write (`i != o`).
fn pair<T>(xs: &mut [T], i: usize, o: usize) -> (&T, &mut T) {
    if i < o {
        let (lo, hi) = xs.split_at_mut(o);
        (&lo[i], &mut hi[0])
    } else {
        let (lo, hi) = xs.split_at_mut(i);
        (&hi[0], &mut lo[o])
    }
}

/// Forward of a `[B, T]` batch (shape fixed by `acts`) on backend `be`: `ids` are token ids,
/// `targets` the next token of each row, already aligned (`-100` = no loss; see
/// [`shift_labels`]). Returns the mean loss and the accuracy counts, and leaves in `acts` what
/// [`backward`] needs, including `d(mean loss)/d logits`.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Token`] for bad inputs; the backend's errors (e.g. a non-finite
/// activation in the GLA op).
pub fn forward<B: Backend>(be: &B, lay: &Layout, acts: &mut Acts<B::Buf>, ids: &[u32], targets: &[i64]) -> Result<LossOut, B::Error> {
    check_acts(be.dims(), acts)?;
    check_batch(be.dims(), acts.b, acts.t, ids, targets)?;
    be.upload_ids(&mut acts.ids, ids, !acts.inference)?;
    body(be, lay, acts, None)?;
    loss(be, lay, acts, targets)
}

/// Embedding, every block and the final norm (into the activations' `xf`) from the ids already
/// in `acts` ([`Acts::ids_mut`] / [`forward`]). With `io` the sequences start from their
/// inference states and advance them (prefill, decode); it issues nothing but the backend's ops,
/// so a GPU can capture it in a graph.
///
/// # Errors
/// The backend's.
pub fn body<B: Backend>(be: &B, lay: &Layout, acts: &mut Acts<B::Buf>, mut io: Option<&mut B::Io<'_>>) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let dm = be.dims();
    let (b, t) = (acts.b, acts.t);
    let n = b * t;
    be.embedding_fwd(&mut acts.xs[0], &acts.ids, lay.embeddings, n)?;
    for (l, il) in lay.layers.iter().enumerate() {
        let (li, xi, xo) = (acts.li(l), acts.xi(l), acts.xi(l + 1));
        let (x, x_out) = pair(&mut acts.xs, xi, xo);
        let a = &mut acts.layers[li];
        be.rmsnorm_fwd(&mut a.xn1, &mut a.rstd1, x, il.attn_norm, n)?;
        mixers::forward(be, &il.mixer, &mut a.mixer, &acts.plan, &a.xn1, x, &mut a.x_mid, (b, t), l, io.as_deref_mut())?;
        be.rmsnorm_fwd(&mut a.xn2, &mut a.rstd2, &a.x_mid, il.mlp_norm, n)?;
        mlp::forward(be, &il.mlp, &mut a.mlp, &a.xn2, &a.x_mid, x_out, n)?;
    }
    let xl = acts.xi(dm.layers);
    be.rmsnorm_fwd(&mut acts.xf, &mut acts.rstdf, &acts.xs[xl], lay.norm, n)
}

/// The lm_head and the loss on the labelled rows of the last [`body`].
fn loss<B: Backend>(be: &B, lay: &Layout, acts: &mut Acts<B::Buf>, targets: &[i64]) -> Result<LossOut, B::Error> {
    let dm = be.dims();
    let m = be.select_rows(&mut acts.rows, targets)?;
    acts.m = m;
    acts.fit_head(be, m)?;
    be.gather_rows(&mut acts.xf_sel, &acts.xf, &acts.rows, m)?;
    be.linear_fwd_f32(&mut acts.logits, &acts.xf_sel, lm_head_id(lay), m, dm.d, dm.vocab)?;
    if m == 0 {
        return Ok(LossOut { loss: 0.0, n_valid: 0, correct: 0 });
    }
    let (sum, correct) = be.cross_entropy(&mut acts.logits, &mut acts.dlogits, &acts.rows, m, 1.0 / m as f32)?;
    Ok(LossOut { loss: sum / m as f64, n_valid: m, correct })
}

/// The inference head after [`body`]: the logits of the rows whose `targets` entry is not -100,
/// in row order, or of every row (`None`), into [`Acts::logits`]. No loss.
///
/// # Errors
/// The backend's.
pub fn head_logits<B: Backend>(be: &B, lay: &Layout, acts: &mut Acts<B::Buf>, targets: Option<&[i64]>) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let dm = be.dims();
    let lm = lm_head_id(lay);
    match targets {
        None => {
            // every row in order (decode): the lm_head reads the final norm's output directly
            let n = acts.b * acts.t;
            acts.m = n;
            acts.fit_head(be, n)?;
            be.linear_fwd_f32(&mut acts.logits, &acts.xf, lm, n, dm.d, dm.vocab)
        }
        Some(targets) => {
            let m = be.select_rows(&mut acts.rows, targets)?;
            acts.m = m;
            acts.fit_head(be, m)?;
            be.gather_rows(&mut acts.xf_sel, &acts.xf, &acts.rows, m)?;
            be.linear_fwd_f32(&mut acts.logits, &acts.xf_sel, lm, m, dm.d, dm.vocab)
        }
    }
}

/// Backward of the last [`forward`] on `acts`: accumulates `scale * d(mean loss)` into `grads`
/// (laid out like the parameters; zero it between optimizer steps). `scale` is `1 / accumulation
/// steps` when gradients of several micro-batches are summed. Calls
/// [`Backend::grads_ready`](crate::backend::Primitives::grads_ready) as each range of gradients is final.
///
/// # Errors
/// [`Error::Shape`] on inference activations; the backend's errors.
pub fn backward<B: Backend>(be: &B, lay: &Layout, acts: &mut Acts<B::Buf>, grads: &mut B::Grads, scale: f32) -> Result<(), B::Error> {
    check_acts(be.dims(), acts)?;
    let numel = lay.numel;
    if be.grads_len(grads) != numel {
        return Err(shape_err("backward", "grads", "the parameter table".into(), numel, be.grads_len(grads)).into());
    }
    let dm = be.dims();
    let (b, t) = (acts.b, acts.t);
    let n = b * t;
    let Acts { plan, ids, xs, layers, slot, rstdf, rows, m, xf_sel, logits, dlogits, dsel, s, .. } = acts;
    let (m, plan) = (*m, &*plan);
    let Some(s) = s.as_mut() else {
        return Err(shape_err("backward", "activations", "made for training".into(), 1, 0).into());
    };
    // lm_head: dsel = dlogits @ W, dW += scale * dlogits^T xf_sel; dxn = scale * dsel on its rows
    if m > 0 {
        be.lm_head_bwd(grads, lm_head_id(lay), dsel, logits, dlogits, xf_sel, m, scale)?;
    }
    be.scatter_rows(&mut s.dxn, dsel, rows, m, n, scale)?;
    be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &xs[dm.layers], rstdf, lay.norm, n, false)?;
    be.grads_ready(grads, 0)?;
    for (l, il) in lay.layers.iter().enumerate().rev() {
        let a = &layers[slot[l]];
        // mlp: out = x_mid + mlp(mlp_norm(x_mid))
        be.cast(&mut s.dres16, &s.dres)?;
        mlp::backward(be, &il.mlp, &a.mlp, &mut s.mlp, grads, &a.xn2, be.operand(&s.dres16, &s.dres), &mut s.dxn, n)?;
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &a.x_mid, &a.rstd2, il.mlp_norm, n, true)?;
        // mixer: x_mid = x + mixer(attn_norm(x))
        be.cast(&mut s.dres16, &s.dres)?;
        let dres = be.operand(&s.dres16, &s.dres);
        mixers::backward(be, &il.mixer, &a.mixer, &mut s.mixer, plan, grads, &a.xn1, dres, &mut s.dxn, (b, t))?;
        be.rmsnorm_bwd(plan, &mut s.dres, grads, &s.dxn, &xs[l], &a.rstd1, il.attn_norm, n, true)?;
        be.grads_ready(grads, dm.layers - l)?;
    }
    be.embedding_bwd(plan, grads, &s.dres, ids, lay.embeddings, n)?;
    be.grads_ready(grads, dm.layers + 1)
}

impl GlaModel {
    /// A freshly initialised model (fla's init, seeded).
    ///
    /// # Errors
    /// Those of [`ModelConfig::dims`].
    pub fn new(config: impl Into<ModelConfig>, seed: u64) -> Result<Self> {
        let config = config.into();
        let dims = config.dims()?;
        let layout = Layout::new(&dims);
        let params = layout.init(&dims, seed);
        Ok(Self { config, dims, layout, params })
    }

    /// A model from existing weights in table order.
    ///
    /// # Errors
    /// Those of [`ModelConfig::dims`]; [`Error::Shape`] when `params` has the wrong length.
    pub fn from_params(config: impl Into<ModelConfig>, params: Vec<f32>) -> Result<Self> {
        let config = config.into();
        let dims = config.dims()?;
        let layout = Layout::new(&dims);
        if params.len() != layout.numel {
            return Err(Error::Shape {
                op: "from_params",
                tensor: "params",
                shape: "the parameter table".into(),
                expected: layout.numel,
                got: params.len(),
            });
        }
        Ok(Self { config, dims, layout, params })
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel
    }

    /// The CPU backend over these weights.
    pub fn cpu(&self) -> Cpu<'_> {
        Cpu::new(&self.dims, &self.layout, &self.params)
    }

    /// [`forward`] on the CPU.
    ///
    /// # Errors
    /// [`Error::Shape`] / [`Error::Token`] for bad inputs; [`Error::Op`] from the GLA op (a
    /// non-finite activation, e.g. after divergence).
    pub fn forward(&self, acts: &mut Activations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        forward(&self.cpu(), &self.layout, acts, ids, targets)
    }

    /// [`backward`] on the CPU into `grads` (an arena laid out like the parameters).
    ///
    /// # Errors
    /// [`Error::Shape`] when `grads` has the wrong length; [`Error::Op`] from the GLA op.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32], scale: f32) -> Result<()> {
        backward(&self.cpu(), &self.layout, acts, grads, scale)
    }

    /// Logits of every position of a `[B, T]` batch, `[B*T, vocab]` (inference and tests).
    ///
    /// # Errors
    /// As [`GlaModel::forward`].
    pub fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        cpu_logits(&self.cpu(), ids, b, t)
    }
}

/// Logits of every position of a `[B, T]` batch, `[B*T, vocab]`, through the CPU backend `be`
/// (for instance [`Cpu::emulating_bf16`]; [`GlaModel::logits`] is this with the model's own).
///
/// # Errors
/// As [`GlaModel::forward`].
pub fn cpu_logits(be: &Cpu<'_>, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
    let lay = be.layout();
    let mut acts = Acts::alloc(be, lay, b, t, false, 0)?;
    // every row "labelled" with token 0 so the lm_head runs on all rows
    let targets = vec![0i64; b * t];
    forward(be, lay, &mut acts, ids, &targets)?;
    head_logits(be, lay, &mut acts, None)?;
    Ok(std::mem::take(&mut acts.logits))
}
