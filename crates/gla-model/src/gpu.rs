//! The language model on NVIDIA GPUs (feature `cuda`): the glue between this crate's model and
//! gla-cuda's device services, which know no model.
//!
//! - [`GpuModel`]: the model's weights on one GPU ([`GpuWeights`]: f32 masters, bf16 GEMM copy,
//!   gradients, AdamW moments, the NCCL all-reduce) with [`crate::model`]'s forward and backward
//!   run on its backend ([`gla_cuda::Gpu`]); the training device of the one engine
//!   ([`crate::DeviceEngine`]).
//! - [`GpuDecoder`]: generation ([`crate::generate::Decoder`]): prefill in the forwards of the one
//!   prefill policy ([`crate::infer::prefill_plan`]) through [`crate::model::body`] and
//!   [`crate::model::head_logits`] with the GPU's batch state copies
//!   ([`GpuDecoding::prefill_step`]); decode through the same `body` with T = 1 on a device table
//!   of the states, captured as a CUDA graph by [`GpuDecoding::decode_step`].

use std::sync::Arc;

use gla_cuda::backend::{GpuBuf, InferCtx, InferIo};
use gla_cuda::decode::DecodeTable;
use gla_cuda::dist::Comm;
use gla_cuda::{Cuda, DecodeStep, Error, Gpu, GpuDecoding, GpuWeights, HostMoments, Result};

use crate::backend::Primitives;
use crate::config::{Dims, MixerDims, ModelConfig};
use crate::infer::{pick, prefill_plan, PREFILL_TOKENS};
use crate::layout::Layout;
use crate::model::{self as lm, Acts, GlaModel, LossOut, IGNORE_INDEX};
use crate::optim::{AdamW, AdamWConfig};

pub use gla_cuda::decode::PREFILL_STATE_BYTES;
pub use gla_cuda::GpuState;

/// Device buffers for batches of shape `[B, T]` ([`Acts`] on the GPU backend), allocated once
/// and reused every step.
pub type GpuActivations = Acts<GpuBuf>;

/// An error of the model's contract on the GPU path.
fn unsupported(what: String) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cuda", what })
}

/// A device error at the language model's boundary (the training engine, the decoder): as
/// [`crate::Error::Device`], with the device's message.
impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::Device(e.to_string())
    }
}

/// Downloads the logits of the labelled rows of the last forward on `acts`, `[M, vocab]` f32, in
/// row order (the rows whose target is not -100).
fn logits_to_host(w: &GpuWeights, acts: &GpuActivations) -> Result<Vec<f32>> {
    let n = acts.labelled() * w.backend().dims().vocab;
    w.download_f32(acts.logits(), n, "logits")
}

/// The language model (GLA, DeltaNet or Gated DeltaNet) on one GPU: its weights
/// ([`GpuWeights`], in the parameter table's order) and the model's forward and backward
/// ([`crate::model`]) on their backend. With a
/// communicator attached ([`GpuModel::attach_comm`]) it is one rank of a data-parallel job.
pub struct GpuModel {
    weights: GpuWeights,
    /// The fla config.
    pub config: ModelConfig,
    /// Derived dims.
    pub dims: Dims,
    /// The parameter table.
    pub layout: Layout,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuModel {{ params: {}, device: {} }}", self.layout.numel, self.weights.cuda().name())
    }
}

impl GpuModel {
    /// Uploads a (CPU) model's weights.
    ///
    /// # Errors
    /// As [`GpuWeights::new`].
    pub fn new(cuda: Arc<Cuda>, model: &GlaModel) -> Result<Self> {
        let weights = GpuWeights::new(cuda, &model.dims, &model.layout.specs, &model.params)?;
        Ok(Self { weights, config: model.config.clone(), dims: model.dims.clone(), layout: model.layout.clone() })
    }

    /// A model for training `model` from the state of `opt` (its AdamW moments when it has
    /// taken steps): what [`crate::DeviceEngine`] drives (`gla train --device cuda`).
    ///
    /// # Errors
    /// As [`GpuModel::new`] and [`GpuWeights::set_moments`].
    pub fn for_training(cuda: Arc<Cuda>, model: &GlaModel, opt: &AdamW) -> Result<Self> {
        let mut gpu = GpuModel::new(cuda, model)?;
        if opt.step > 0 {
            gpu.weights.set_moments(&opt.m, &opt.v, opt.step)?;
        }
        Ok(gpu)
    }

    /// The device weights.
    pub fn weights(&self) -> &GpuWeights {
        &self.weights
    }

    /// The device weights, mutably (zeroing, the optimizer, moments).
    pub fn weights_mut(&mut self) -> &mut GpuWeights {
        &mut self.weights
    }

    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        self.weights.cuda()
    }

    /// Makes this model one rank of a data-parallel job: [`GpuModel::backward_and_reduce`]
    /// then sums the gradients over the ranks of `comm`, in buckets overlapped with the backward.
    ///
    /// # Errors
    /// As [`GpuWeights::attach_comm`].
    pub fn attach_comm(&mut self, comm: Comm) -> Result<()> {
        let spec = |id: usize| self.layout.specs[id].offset;
        // the backward's points, in its order: the head and final norm (the arena's tail), each
        // layer from the last, the embedding (a tied lm_head's gradient lands there too)
        let mut ready = vec![spec(self.layout.norm)];
        ready.extend(self.layout.layers.iter().rev().map(|il| spec(il.attn_norm)));
        ready.push(0);
        self.weights.attach_comm(comm, &ready)
    }

    /// The attached communicator, if any.
    pub fn comm(&self) -> Option<&Comm> {
        self.weights.comm()
    }

    /// As [`GpuWeights::all_reduce_host`].
    ///
    /// # Errors
    /// As [`GpuWeights::all_reduce_host`].
    pub fn all_reduce_host(&mut self, v: &mut [f64]) -> Result<()> {
        self.weights.all_reduce_host(v)
    }

    /// Downloads the master weights into a CPU model (for checkpoints and checks).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn to_host(&self) -> Result<GlaModel> {
        let params = self.weights.params_to_host()?;
        GlaModel::from_params(self.config.clone(), params).map_err(|e| match e {
            crate::Error::Op(inner) => Error::Op(inner),
            e => unsupported(e.to_string()),
        })
    }

    /// Downloads the logits of the labelled rows of the last forward, `[M, vocab]` f32, in row
    /// order (the rows whose target is not -100).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn logits_to_host(&self, acts: &GpuActivations) -> Result<Vec<f32>> {
        logits_to_host(&self.weights, acts)
    }

    /// Downloads the accumulated gradients (parameter table order).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        self.weights.grads_to_host()
    }

    /// Zeroes the gradient arena (between optimizer steps).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn zero_grads(&mut self) -> Result<()> {
        self.weights.zero_grads()
    }

    /// Device buffers for `[B, T]` batches: every layer's saved tensors and the backward's
    /// scratch.
    ///
    /// # Errors
    /// [`Error::Driver`] (out of memory names the buffer being allocated).
    pub fn activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        Acts::alloc(self.weights.backend(), &self.layout, b, t, false, b * t)
    }

    /// Device buffers for forwards without a backward (prefill, decode): one layer's tensors,
    /// reused by every layer, two residual streams, logits for one row per sequence, no
    /// backward scratch; about 1/L of [`GpuModel::activations`].
    ///
    /// # Errors
    /// As [`GpuModel::activations`].
    pub fn inference_activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        Acts::alloc(self.weights.backend(), &self.layout, b, t, true, b)
    }

    /// Forward of a `[B, T]` batch ([`crate::model::forward`] on the GPU: same inputs, same
    /// result up to bf16 rounding); leaves the backward's inputs in `acts`. Synchronises once to
    /// read the loss.
    ///
    /// # Errors
    /// Bad ids or targets ([`Error::Op`]); [`Error::Driver`], [`Error::Launch`], [`Error::Blas`].
    pub fn forward(&self, acts: &mut GpuActivations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.weights.wait_reduced("waiting for the gradient all-reduce")?;
        lm::forward(self.weights.backend(), &self.layout, acts, ids, targets)
    }

    /// Backward of the last [`GpuModel::forward`] on `acts`: accumulates `scale * d(mean loss)`
    /// into the device gradient arena ([`crate::model::backward`] on the GPU).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`], [`Error::Blas`], [`Error::Op`].
    pub fn backward(&mut self, acts: &mut GpuActivations, scale: f32) -> Result<()> {
        self.backward_impl(acts, scale, false)
    }

    /// [`GpuModel::backward`] that also sums the gradient arena over the ranks of the attached
    /// communicator (plain backward without one): each bucket is queued on the communicator's
    /// stream as soon as the backward has finished it (`Primitives::grads_ready`). Call it for the
    /// last micro-batch of a step; [`GpuModel::adamw_step`] waits for the sums (with the
    /// communicator's timeout).
    ///
    /// # Errors
    /// As [`GpuModel::backward`]; [`Error::Nccl`].
    pub fn backward_and_reduce(&mut self, acts: &mut GpuActivations, scale: f32) -> Result<()> {
        self.backward_impl(acts, scale, true)
    }

    fn backward_impl(&mut self, acts: &mut GpuActivations, scale: f32, reduce: bool) -> Result<()> {
        if acts.is_inference() {
            return Err(unsupported("backward through activations made for inference (GpuModel::inference_activations)".into()));
        }
        let lay = &self.layout;
        self.weights.backward_with(reduce, |gpu, grads| lm::backward(gpu, lay, acts, grads, scale))
    }

    /// Global gradient norm (f64 accumulation); synchronises (after a
    /// [`GpuModel::backward_and_reduce`], on the gradients summed over the ranks).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn grad_norm(&mut self) -> Result<f64> {
        self.weights.grad_norm()
    }

    /// One AdamW step (PyTorch's, decay on matrices only, as [`crate::optim::AdamW`]) after
    /// clipping the gradients to `max_norm` (0 = no clipping); refreshes the bf16 weights.
    /// Returns the gradient norm before clipping.
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn adamw_step(&mut self, cfg: &AdamWConfig, lr: f32, max_norm: f32) -> Result<f64> {
        self.weights.adamw_step(cfg, lr, max_norm)
    }

    /// The AdamW moments and step on the host (for the training state), `None` before the
    /// first step.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn moments_to_host(&self) -> Result<Option<HostMoments>> {
        self.weights.moments_to_host()
    }

    /// Sets the AdamW moments and step (resume).
    ///
    /// # Errors
    /// [`Error::Driver`]; [`Error::Op`] on a length mismatch.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        self.weights.set_moments(m, v, step)
    }
}

/// The GPU as a training device of the one engine ([`crate::DeviceEngine`]): its own copy of
/// the weights, gradients and moments; with a communicator ([`GpuModel::attach_comm`]) one rank
/// of a data-parallel run (statistics and gradient sums over NCCL).
impl crate::TrainDevice for GpuModel {
    type Buf = GpuBuf;
    type Error = Error;

    fn name(&self) -> String {
        let c = self.cuda();
        match self.comm() {
            Some(comm) => format!("cuda:{} ({}), rank {} of {} (NCCL)", c.name(), c.arch(), comm.rank(), comm.world()),
            None => format!("cuda:{} ({})", c.name(), c.arch()),
        }
    }
    fn world(&self) -> usize {
        self.comm().map_or(1, |c| c.world())
    }
    fn activations(&self, _host: &GlaModel, b: usize, t: usize) -> Result<GpuActivations> {
        GpuModel::activations(self, b, t)
    }
    fn forward(&mut self, _host: &GlaModel, acts: &mut GpuActivations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        GpuModel::forward(self, acts, ids, targets)
    }
    fn backward(&mut self, _host: &GlaModel, acts: &mut GpuActivations, scale: f32, reduce: bool) -> Result<()> {
        self.backward_impl(acts, scale, reduce)
    }
    fn zero_grads(&mut self) -> Result<()> {
        GpuModel::zero_grads(self)
    }
    fn update(&mut self, _host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        let norm = self.adamw_step(cfg, lr, clip)?;
        if norm.is_finite() {
            // the host optimizer counts the steps; its moments are refreshed by `download`
            opt.step += 1;
        }
        Ok(norm)
    }
    fn download(&self, host: &mut GlaModel, opt: &mut AdamW) -> Result<()> {
        host.params = self.to_host()?.params;
        if let Some((m, v, step)) = self.moments_to_host()? {
            opt.m = m;
            opt.v = v;
            opt.step = step;
        }
        Ok(())
    }
    fn all_reduce_host(&mut self, v: &mut [f64]) -> Result<()> {
        GpuModel::all_reduce_host(self, v)
    }
}

/// The model's decode step for [`GpuDecoding::decode_step`]: [`crate::model::body`] with T = 1
/// on the table of states, then the lm_head on every row.
struct LmStep {
    layout: Layout,
}

impl DecodeStep for LmStep {
    type Acts = GpuActivations;

    fn alloc(&self, gpu: &Gpu, b: usize) -> Result<GpuActivations> {
        Acts::alloc(gpu, &self.layout, b, 1, true, b)
    }
    fn upload_ids(&self, gpu: &Gpu, acts: &mut GpuActivations, ids: &[u32]) -> Result<()> {
        gpu.upload_ids(acts.ids_mut(), ids, false)
    }
    /// # Safety
    /// As [`DecodeStep::body`].
    unsafe fn body(&self, gpu: &Gpu, acts: &mut GpuActivations, table: DecodeTable<'_>) -> Result<()> {
        let (b, t) = acts.shape();
        if t != 1 {
            return Err(unsupported(format!("the decode step takes one token per sequence, got T = {t}")));
        }
        lm::body(gpu, &self.layout, acts, Some(&mut table.io(b)))?;
        lm::head_logits(gpu, &self.layout, acts, None)
    }
    fn logits(&self, weights: &GpuWeights, acts: &GpuActivations) -> Result<Vec<f32>> {
        logits_to_host(weights, acts)
    }
}

/// Tokens of one prefill forward of a model with attention layers, whose prompts go whole.
const WHOLE_PREFILL_TOKENS: usize = 1 << 18;

/// The prefill of a model with softmax-attention layers: each prompt in one forward (into empty
/// KV caches the flash kernel sees the whole prompt at once; a later window of a prompt split as
/// [`prefill_plan`] does would attend its cache token by token), prompts of the same length
/// together, at most `max_batch` and [`WHOLE_PREFILL_TOKENS`] tokens (or one prompt) a forward.
fn whole_prompt_plan(lens: &[usize], max_batch: usize) -> Vec<crate::infer::PrefillStep> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &n) in lens.iter().enumerate() {
        groups.entry(n).or_default().push(i);
    }
    let mut plan = Vec::new();
    for (len, members) in groups {
        let per = (WHOLE_PREFILL_TOKENS / len.max(1)).clamp(1, max_batch.max(1));
        for group in members.chunks(per) {
            plan.push(crate::infer::PrefillStep { seqs: group.to_vec(), start: 0, end: len, last: true });
        }
    }
    plan
}

/// Generation on the GPU: prefill (chunked) and decode (recurrent) with one [`GpuState`] per
/// sequence; logits come back to the host for sampling ([`crate::generate`]).
pub struct GpuDecoder {
    dev: GpuDecoding<GpuActivations>,
    step: LmStep,
}

impl GpuDecoder {
    /// Uploads `model`'s weights for inference ([`GpuWeights::new_inference`]: bf16 GEMM
    /// matrices, no gradients).
    ///
    /// # Errors
    /// As [`GpuWeights::new`].
    pub fn new(cuda: Arc<Cuda>, model: &GlaModel) -> Result<Self> {
        let weights = GpuWeights::new_inference(cuda, &model.dims, &model.layout.specs, &model.params)?;
        Ok(Self { dev: GpuDecoding::new(weights), step: LmStep { layout: model.layout.clone() } })
    }

    /// The device side (weights, states, the decode step's graphs).
    pub fn device(&self) -> &GpuDecoding<GpuActivations> {
        &self.dev
    }

    /// Decode steps so far that replayed a captured CUDA graph (the others ran eagerly: the
    /// first step of each batch size, and every step when capture is off or was refused).
    pub fn graph_steps(&self) -> u64 {
        self.dev.graph_steps()
    }

    /// Bytes of one [`GpuState`] (recurrent states and conv caches, f32): fixed by the config.
    pub fn state_bytes(&self) -> usize {
        self.dev.state_bytes()
    }

    /// A zero state (an empty context).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new_state(&self) -> Result<GpuState> {
        self.dev.new_state()
    }

    /// A prefill step (the ids of `[B, T]` = `acts.shape()` from the inference states in `ctx`:
    /// each sequence starts from its recurrent states and conv caches and leaves its final ones
    /// in the context; T = 1 takes the recurrent kernel, as fla's decode does); returns the
    /// logits of each sequence's last position.
    fn prefill_forward(&self, acts: &mut GpuActivations, ids: &[u32], ctx: &mut InferCtx) -> Result<Vec<f32>> {
        let (b, t) = acts.shape();
        if ids.len() != b * t {
            return Err(unsupported(format!("{} ids for a [{b}, {t}] step", ids.len())));
        }
        let (gpu, lay) = (self.dev.weights().backend(), &self.step.layout);
        lm::check_ids(gpu.dims(), ids)?;
        gpu.upload_ids(acts.ids_mut(), ids, false)?;
        lm::body(gpu, lay, acts, Some(&mut InferIo::Batch(ctx)))?;
        // the last position of each sequence only reaches the lm_head
        let mut last = vec![IGNORE_INDEX; b * t];
        for i in 0..b {
            last[i * t + t - 1] = 0;
        }
        lm::head_logits(gpu, lay, acts, Some(&last))?;
        logits_to_host(self.dev.weights(), acts)
    }

    /// Feeds each prompt and returns the logits of its last position, in the forwards of the
    /// one prefill policy ([`crate::infer::prefill_plan`]: prompts of the same length together
    /// as `[B, w]` batches), with batches also bounded by the device copies of their states.
    ///
    /// # Errors
    /// Empty prompts and ids outside the vocabulary ([`Error::Op`]); device errors.
    pub fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut GpuState]) -> Result<Vec<Vec<f32>>> {
        if prompts.len() != states.len() {
            return Err(unsupported(format!("{} prompts for {} states", prompts.len(), states.len())));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(unsupported(format!("prompt {i} is empty")));
        }
        // a forward holds 2 x L batch copies of its states (h0, ht): bound them too
        let max_b = (PREFILL_TOKENS / 64).min((PREFILL_STATE_BYTES / (2 * self.state_bytes().max(1))).max(1));
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
        let mut acts: Option<GpuActivations> = None;
        let gpu = self.dev.weights().backend();
        let has_attn = gpu.dims().mixers.iter().any(|m| matches!(m, MixerDims::Attn(_)));
        let plan = if has_attn { whole_prompt_plan(&lens, max_b) } else { prefill_plan(&lens, max_b) };
        for step in plan {
            let (b, w) = (step.seqs.len(), step.end - step.start);
            if acts.as_ref().is_none_or(|a| a.shape() != (b, w)) {
                drop(acts.take()); // free the previous set before allocating the next
                acts = Some(Acts::alloc(gpu, &self.step.layout, b, w, true, b)?);
            }
            let Some(a) = acts.as_mut() else { unreachable!("set above") };
            let ids: Vec<u32> = step.seqs.iter().flat_map(|&i| prompts[i][step.start..step.end].iter().copied()).collect();
            let mut sref = pick(states, &step.seqs);
            let shape = a.shape();
            let last = self.dev.prefill_step(shape, &ids, &mut sref, |ctx| self.prefill_forward(a, &ids, ctx))?;
            if step.last {
                // `step.seqs` is in index order, as `sref` and so `last`
                for (&i, l) in step.seqs.iter().zip(last) {
                    out[i] = l;
                }
            }
        }
        Ok(out)
    }

    /// One token for each sequence, all in one step; returns each one's logits.
    ///
    /// # Errors
    /// As [`GpuDecoder::prefill_batch`].
    pub fn decode_batch(&self, ids: &[u32], states: &mut [&mut GpuState]) -> Result<Vec<Vec<f32>>> {
        if ids.len() != states.len() {
            return Err(unsupported(format!("{} tokens for {} states", ids.len(), states.len())));
        }
        lm::check_ids(self.dev.weights().backend().dims(), ids)?;
        self.dev.decode_step(&self.step, ids, states)
    }
}

impl crate::generate::Decoder for GpuDecoder {
    type State = GpuState;
    fn new_state(&self) -> crate::Result<GpuState> {
        GpuDecoder::new_state(self).map_err(Into::into)
    }
    fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut GpuState]) -> crate::Result<Vec<Vec<f32>>> {
        GpuDecoder::prefill_batch(self, prompts, states).map_err(Into::into)
    }
    fn decode_batch(&self, ids: &[u32], states: &mut [&mut GpuState]) -> crate::Result<Vec<Vec<f32>>> {
        GpuDecoder::decode_batch(self, ids, states).map_err(Into::into)
    }
}
