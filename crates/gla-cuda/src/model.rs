//! The GLA language model on the GPU: [`GpuModel`] (device weights, gradients, AdamW moments,
//! the data-parallel gradient all-reduce; the training device of `gla_model::DeviceEngine`) and
//! [`GpuDecoder`] (generation). The forward and the backward are `gla_model::model`'s, run
//! on the GPU backend ([`crate::backend::Gpu`]: bf16 GEMM operands on cuBLAS, f32 masters; its
//! module doc has the dtypes); what stays here is GPU-only: the inference-only compact weights,
//! the decode step through a device table of states captured as a CUDA graph, the NCCL buckets
//! (reached from the backward through `Primitives::grads_ready`), the optimizer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, LaunchConfig};
use gla_model::config::Dims;
use gla_model::infer::{pick, prefill_plan, PREFILL_TOKENS};
use gla_model::layout::Layout;
use gla_model::optim::AdamWConfig;
use gla_model::{model as lm, Acts, GlaConfig, GlaModel, LossOut, Primitives, IGNORE_INDEX};

use crate::backend::{
    blas_err, flat, head_plan, launch, ptr, unsupported, Gemm, Gpu, GpuBuf, GradSync, HeadPlan, InferCtx, InferIo, BUCKET_ELEMS, MAX_CONV,
};
pub use crate::backend::{cublas_available, peak_pool_bytes, pool_used_bytes, reset_peak_pool};
use crate::dist::{bucket_plan, Comm};
use crate::error::{Error, Result};
use crate::ops;
use crate::runtime::Cuda;

/// Device buffers for batches of shape `[B, T]` (`gla_model::model::Acts` on the GPU backend),
/// allocated once and reused every step.
pub type GpuActivations = Acts<GpuBuf>;

/// AdamW state on the device (moments laid out like the parameters).
struct Moments {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    step: u64,
}

/// The device weights a [`GpuModel`] is assembled from (fields as in [`GpuModel`]).
struct Weights {
    master: CudaSlice<f32>,
    moff: Vec<usize>,
    w16: CudaSlice<u16>,
    grads: CudaSlice<f32>,
    inference: bool,
}

/// AdamW's first and second moments (parameter table order) and its step count, on the host.
pub type HostMoments = (Vec<f32>, Vec<f32>, u64);

/// A GLA language model on one GPU: f32 master weights, their bf16 copy, f32 gradients and
/// AdamW moments, all in the parameter table's order (`gla_model::layout::Layout`). With a
/// communicator attached ([`GpuModel::attach_comm`]) it is one rank of a data-parallel job.
pub struct GpuModel {
    /// The backend: device, cuBLAS, device weights, the gradient all-reduce.
    gpu: Gpu,
    /// The fla config.
    pub config: GlaConfig,
    /// Derived dims.
    pub dims: Dims,
    /// The parameter table.
    pub layout: Layout,
    /// empty (one element) for an inference-only model
    grads: CudaSlice<f32>,
    /// built by [`GpuModel::new_inference`]: no gradients, no f32 copy of the GEMM matrices
    inference: bool,
    moments: Option<Moments>,
    norm_buf: CudaSlice<f64>,
    /// [`GpuModel::all_reduce_host`]'s device copy, grown to the longest vector it was given
    stats: Option<CudaSlice<f64>>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuModel {{ params: {}, device: {} }}", self.layout.numel, self.gpu.cuda.name())
    }
}

impl GpuModel {
    /// Uploads a (CPU) model's weights.
    ///
    /// # Errors
    /// [`Error::Blas`] when cuBLAS is missing or fails to start; [`Error::Driver`];
    /// [`Error::Op`] for head dims the kernels do not take.
    pub fn new(cuda: Arc<Cuda>, model: &GlaModel) -> Result<Self> {
        let (plan, gemm) = Self::preflight(&cuda, model)?;
        let master = cuda.upload(&model.params, "weights")?;
        let w16 = cuda.alloc_zeros::<u16>(model.params.len(), "bf16 weights")?;
        let grads = cuda.alloc_zeros::<f32>(model.params.len(), "gradients")?;
        let moff = model.layout.specs.iter().map(|sp| sp.offset).collect();
        let me = Self::assemble(cuda, gemm, plan, model, Weights { master, moff, w16, grads, inference: false })?;
        me.refresh_bf16()?;
        Ok(me)
    }

    /// Uploads a model for inference only: the bf16 weights (rounded on the host), and in f32
    /// only the parameters the kernels read in f32; no gradients. A 340M model then holds
    /// 0.8 GB on the device instead of 3.4 GB. [`GpuModel::backward`], the optimizer and
    /// [`GpuModel::to_host`] refuse it.
    ///
    /// # Errors
    /// As [`GpuModel::new`].
    pub fn new_inference(cuda: Arc<Cuda>, model: &GlaModel) -> Result<Self> {
        let (plan, gemm) = Self::preflight(&cuda, model)?;
        let w16_host: Vec<u16> = model.params.iter().map(|&x| ops::f32_to_bf16(x)).collect();
        let w16 = cuda.upload(&w16_host, "bf16 weights")?;
        drop(w16_host);
        // the GEMM matrices are read only as bf16 (wp); everything else keeps an f32 copy (mp)
        let (mut moff, mut compact) = (vec![0usize; model.layout.specs.len()], Vec::new());
        for (id, sp) in model.layout.specs.iter().enumerate() {
            if !sp.gemm {
                moff[id] = compact.len();
                compact.extend_from_slice(&model.params[sp.range()]);
            }
        }
        compact.push(0.0); // never empty
        let master = cuda.upload(&compact, "f32 weights")?;
        let grads = cuda.alloc_zeros::<f32>(1, "gradients")?;
        Self::assemble(cuda, gemm, plan, model, Weights { master, moff, w16, grads, inference: true })
    }

    /// The model around its device weights (both constructors).
    fn assemble(cuda: Arc<Cuda>, gemm: Gemm, plan: HeadPlan, model: &GlaModel, w: Weights) -> Result<Self> {
        // the gradient norm's result, then its per-block partial sums (grad_norm)
        let norm_buf = cuda.alloc_zeros::<f64>(1 + crate::backend::max_flat_blocks(&cuda), "gradient norm")?;
        let gpu = Gpu {
            cuda,
            gemm,
            dims: model.dims.clone(),
            layout: model.layout.clone(),
            heads: plan,
            master: w.master,
            moff: w.moff,
            w16: w.w16,
            sync: None,
            reducing: AtomicBool::new(false),
        };
        Ok(Self {
            gpu,
            config: model.config.clone(),
            dims: model.dims.clone(),
            layout: model.layout.clone(),
            grads: w.grads,
            inference: w.inference,
            moments: None,
            norm_buf,
            stats: None,
        })
    }

    /// What both constructors check first (cuBLAS present, head dims the kernels take, conv
    /// width), and the cuBLAS handle on the device's stream.
    fn preflight(cuda: &Arc<Cuda>, model: &GlaModel) -> Result<(HeadPlan, Gemm)> {
        if !cublas_available() {
            return Err(Error::Blas {
                what: "load libcublas",
                status: "libcublas.so cannot be loaded; put the CUDA libraries on LD_LIBRARY_PATH".into(),
            });
        }
        let plan = head_plan(&model.dims)?;
        if model.dims.conv > MAX_CONV {
            // conv_bwd_dw and conv_cache_update keep at most MAX_CONV taps per thread
            return Err(unsupported(format!("short conv of width {} on the GPU (at most {MAX_CONV})", model.dims.conv)));
        }
        let gemm = Gemm {
            blas: CudaBlas::new(cuda.stream().clone()).map_err(blas_err("cublasCreate"))?,
            stream: cuda.stream().clone(),
            sync: cuda.options().sync_debug,
        };
        Ok((plan, gemm))
    }

    /// Refuses training-only work on an inference-only model.
    fn trainable(&self, what: &str) -> Result<()> {
        if self.inference {
            return Err(unsupported(format!("{what} on a model loaded for inference only (GpuModel::new_inference)")));
        }
        Ok(())
    }

    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        &self.gpu.cuda
    }

    /// Makes this model one rank of a data-parallel job: [`GpuModel::backward_and_reduce`]
    /// then sums the gradients over the ranks of `comm`, in buckets overlapped with the backward.
    ///
    /// # Errors
    /// [`Error::Driver`] (events).
    pub fn attach_comm(&mut self, comm: Comm) -> Result<()> {
        let spec = |id: usize| self.layout.specs[id].offset;
        // the backward's points, in its order: the head and final norm (the arena's tail), each
        // layer from the last, the embedding (a tied lm_head's gradient lands there too)
        let mut ready = vec![spec(self.layout.norm)];
        ready.extend(self.layout.layers.iter().rev().map(|il| spec(il.attn_norm)));
        ready.push(0);
        let plan = bucket_plan(&ready, self.layout.numel, BUCKET_ELEMS);
        let ctx = self.gpu.cuda.context();
        let ready = ctx.new_event(None).map_err(Error::driver("create event"))?;
        let done = ctx.new_event(None).map_err(Error::driver("create event"))?;
        self.gpu.sync = Some(GradSync { comm, plan, ready, done, pending: AtomicBool::new(false) });
        Ok(())
    }

    /// The attached communicator, if any.
    pub fn comm(&self) -> Option<&Comm> {
        self.gpu.sync.as_ref().map(|s| &s.comm)
    }

    /// Sums `v` over the ranks of the attached communicator (no-op without one); used for the
    /// loss statistics of each micro-batch. Synchronises; allocates only for a vector longer
    /// than any before.
    ///
    /// # Errors
    /// [`Error::Nccl`] (a peer failed or timed out), [`Error::Driver`].
    pub fn all_reduce_host(&mut self, v: &mut [f64]) -> Result<()> {
        let Some(s) = &self.gpu.sync else { return Ok(()) };
        let st = self.gpu.cuda.stream();
        if self.stats.as_ref().is_none_or(|b| b.len() < v.len()) {
            self.stats = Some(self.gpu.cuda.alloc_zeros::<f64>(v.len(), "statistics")?);
        }
        let Some(stats) = self.stats.as_mut() else { unreachable!("set above") };
        st.memcpy_htod(v, &mut stats.slice_mut(0..v.len())).map_err(Error::driver("upload statistics"))?;
        s.ready.record(st).map_err(Error::driver("record event"))?;
        s.comm.stream().wait(&s.ready).map_err(Error::driver("order the communication stream"))?;
        s.comm.all_reduce_sum_f64(ptr(&self.gpu.cuda, &*stats), v.len(), "all-reduce of the loss")?;
        s.done.record(s.comm.stream()).map_err(Error::driver("record event"))?;
        st.wait(&s.done).map_err(Error::driver("order the model stream"))?;
        s.ready.record(st).map_err(Error::driver("record event"))?;
        s.comm.wait_event(&s.ready, "all-reduce of the loss")?;
        let out = st.clone_dtoh(&stats.slice(0..v.len())).map_err(Error::driver("download statistics"))?;
        v.copy_from_slice(&out);
        Ok(())
    }

    /// Waits on the host, with the communicator's timeout and error checks, for the all-reduces
    /// of the last reducing backward (the model's stream is already ordered after them): a host
    /// read of the model's stream would otherwise block forever when a peer died.
    fn wait_reduced(&self, what: &str) -> Result<()> {
        let Some(s) = &self.gpu.sync else { return Ok(()) };
        if !s.pending.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        s.ready.record(self.gpu.cuda.stream()).map_err(Error::driver("record event"))?;
        s.comm.wait_event(&s.ready, what)
    }

    fn refresh_bf16(&self) -> Result<()> {
        self.trainable("refreshing the bf16 weights from the f32 ones")?;
        let g = &self.gpu;
        let n = g.master.len() as i64;
        let (y, x) = (ptr(&g.cuda, &g.w16), ptr(&g.cuda, &g.master));
        launch!(g, "cast_f32_bf16", flat(n as usize), y, x, n);
        Ok(())
    }

    /// Downloads the master weights into a CPU model (for checkpoints and checks).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn to_host(&self) -> Result<GlaModel> {
        self.trainable("downloading the f32 weights")?;
        let params = self.gpu.cuda.stream().clone_dtoh(&self.gpu.master).map_err(Error::driver("download weights"))?;
        Ok(GlaModel::from_params(self.config.clone(), params)?)
    }

    /// Downloads the logits of the labelled rows of the last forward, `[M, vocab]` f32, in row
    /// order (the rows whose target is not -100).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn logits_to_host(&self, acts: &GpuActivations) -> Result<Vec<f32>> {
        let n = acts.labelled() * self.dims.vocab;
        self.gpu.cuda.stream().clone_dtoh(&acts.logits().slice(0..n)).map_err(Error::driver("download logits"))
    }

    /// Downloads the accumulated gradients (parameter table order).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        self.trainable("downloading gradients")?;
        self.wait_reduced("waiting for the gradient all-reduce")?;
        self.gpu.cuda.stream().clone_dtoh(&self.grads).map_err(Error::driver("download gradients"))
    }

    /// Zeroes the gradient arena (between optimizer steps).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn zero_grads(&mut self) -> Result<()> {
        self.trainable("zeroing gradients")?;
        self.gpu.cuda.stream().memset_zeros(&mut self.grads).map_err(Error::driver("zero gradients"))
    }

    /// Device buffers for `[B, T]` batches: every layer's saved tensors and the backward's
    /// scratch.
    ///
    /// # Errors
    /// [`Error::Driver`] (out of memory names the buffer being allocated).
    pub fn activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        Acts::alloc(&self.gpu, b, t, false, b * t)
    }

    /// Device buffers for forwards without a backward (prefill, decode): one layer's tensors,
    /// reused by every layer, two residual streams, logits for one row per sequence, no
    /// backward scratch; about 1/L of [`GpuModel::activations`].
    ///
    /// # Errors
    /// As [`GpuModel::activations`].
    pub fn inference_activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        Acts::alloc(&self.gpu, b, t, true, b)
    }

    /// Refuses token ids outside the vocabulary (they would index past the embedding).
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        Ok(lm::check_ids(&self.dims, ids)?)
    }

    /// Forward of a `[B, T]` batch (`gla_model::model::forward` on the GPU: same inputs, same
    /// result up to bf16 rounding); leaves the backward's inputs in `acts`. Synchronises once to
    /// read the loss.
    ///
    /// # Errors
    /// Bad ids or targets ([`Error::Op`]); [`Error::Driver`], [`Error::Launch`], [`Error::Blas`].
    pub fn forward(&self, acts: &mut GpuActivations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.wait_reduced("waiting for the gradient all-reduce")?;
        lm::forward(&self.gpu, acts, ids, targets)
    }

    /// A prefill step: B sequences of T tokens from the inference states in `ctx` (each
    /// sequence starts from its recurrent states `ctx.h0` and conv caches and leaves its final
    /// ones in `ctx.ht` and the caches; T = 1 takes the recurrent kernel, as fla's decode does);
    /// the logits of each sequence's last position into `acts`.
    fn prefill_step(&self, acts: &mut GpuActivations, ids: &[u32], ctx: &mut InferCtx) -> Result<()> {
        let (b, t) = acts.shape();
        if ids.len() != b * t {
            return Err(unsupported(format!("{} ids for a [{b}, {t}] step", ids.len())));
        }
        self.check_ids(ids)?;
        if ctx.h0.len() != self.dims.layers || ctx.ht.len() != self.dims.layers || ctx.conv.len() != self.dims.layers {
            return Err(unsupported(format!("inference state for {} layers, model has {}", ctx.h0.len(), self.dims.layers)));
        }
        self.gpu.upload_ids(acts.ids_mut(), ids, false)?;
        lm::body(&self.gpu, acts, Some(&mut InferIo::Batch(ctx)))?;
        // the last position of each sequence only reaches the lm_head
        let mut last = vec![IGNORE_INDEX; b * t];
        for i in 0..b {
            last[i * t + t - 1] = 0;
        }
        lm::head_logits(&self.gpu, acts, Some(&last))
    }

    /// The decode step's device work, from the ids already in `acts` to the logits of every
    /// row (`M = B`): nothing but kernel launches and GEMMs on the stream (the shared
    /// `gla_model::model::body` and the lm_head on every row), so it can be captured in a CUDA
    /// graph. Each sequence's state is read and updated in place through the table at `table`
    /// ([`InferIo::Table`]).
    ///
    /// # Safety
    /// As [`ops::gla_decode`]: `table` holds `[L][4][B]` addresses of live, distinct state
    /// buffers of the sizes [`GpuDecoder::state_bytes`] counts (0 for absent conv caches).
    unsafe fn decode_body(&self, acts: &mut GpuActivations, table: u64) -> Result<()> {
        let (b, t) = acts.shape();
        if t != 1 {
            return Err(unsupported(format!("the decode step takes one token per sequence, got T = {t}")));
        }
        lm::body(&self.gpu, acts, Some(&mut InferIo::Table { addr: table, b }))?;
        lm::head_logits(&self.gpu, acts, None)
    }

    /// Backward of the last [`GpuModel::forward`] on `acts`: accumulates `scale * d(mean loss)`
    /// into the device gradient arena (`gla_model::model::backward` on the GPU).
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
        self.trainable("backward")?;
        if acts.is_inference() {
            return Err(unsupported("backward through activations made for inference (GpuModel::inference_activations)".into()));
        }
        // a previous step's sums must be complete before this backward accumulates into them
        self.wait_reduced("waiting for the gradient all-reduce")?;
        let reduce = reduce && self.gpu.sync.is_some();
        self.gpu.reducing.store(reduce, Ordering::SeqCst);
        let body = lm::backward(&self.gpu, acts, &mut self.grads, scale);
        self.gpu.reducing.store(false, Ordering::SeqCst);
        if let (true, Some(s)) = (reduce, &self.gpu.sync) {
            // the model's stream (grad_norm, AdamW, the next step's zeroing, freeing the arena)
            // runs after the sums, also when the body failed half-way with some all-reduces
            // already queued on the communication stream
            let join = s
                .done
                .record(s.comm.stream())
                .and_then(|()| self.gpu.cuda.stream().wait(&s.done))
                .map_err(Error::driver("order the model stream after the all-reduces"));
            s.pending.store(true, Ordering::SeqCst);
            body?;
            return join;
        }
        body
    }

    /// Global gradient norm (f64 accumulation); synchronises (after a
    /// [`GpuModel::backward_and_reduce`], on the gradients summed over the ranks).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn grad_norm(&mut self) -> Result<f64> {
        self.trainable("gradient norm")?;
        let g = &self.gpu;
        let st = g.cuda.stream().clone();
        // per-block partial sums after the result slot, added in block order (bitwise repeatable)
        let cfg = flat(self.grads.len()).config(&g.cuda);
        let blocks = cfg.grid_dim.0 as i32;
        let (o, gp, nn) = (ptr(&g.cuda, &self.norm_buf), ptr(&g.cuda, &self.grads), self.grads.len() as i64);
        let part = o + 8;
        launch!(g, "sumsq", cfg, part, gp, nn);
        launch!(g, "sum_f64", LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }, o, part, blocks);
        // after a reducing backward this read waits for the sums: with the timeout, not forever
        self.wait_reduced("waiting for the gradient all-reduce")?;
        let v = st.clone_dtoh(&self.norm_buf.slice(0..1)).map_err(Error::driver("download norm"))?;
        Ok(v[0].sqrt())
    }

    /// One AdamW step (PyTorch's, decay on matrices only, as `gla_model::optim::AdamW`) after
    /// clipping the gradients to `max_norm` (0 = no clipping); refreshes the bf16 weights.
    /// Returns the gradient norm before clipping.
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn adamw_step(&mut self, cfg: &AdamWConfig, lr: f32, max_norm: f32) -> Result<f64> {
        let norm = self.grad_norm()?;
        if !norm.is_finite() {
            // a diverged step: report it, keep the weights and moments as they are
            return Ok(norm);
        }
        let gscale = if max_norm > 0.0 && norm > f64::from(max_norm) { (f64::from(max_norm) / (norm + 1e-6)) as f32 } else { 1.0 };
        if self.moments.is_none() {
            let c = &self.gpu.cuda;
            let (m, v) = (c.alloc_zeros::<f32>(self.layout.numel, "AdamW m")?, c.alloc_zeros::<f32>(self.layout.numel, "AdamW v")?);
            self.moments = Some(Moments { m, v, step: 0 });
        }
        let Some(mo) = self.moments.as_mut() else { unreachable!("set above") };
        mo.step += 1;
        let step = mo.step as i32;
        let gpu = &self.gpu;
        let (mp, vp) = (ptr(&gpu.cuda, &mo.m), ptr(&gpu.cuda, &mo.v));
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(step), 1.0 - cfg.beta2.powi(step));
        for spec in &self.layout.specs {
            let off = spec.offset as u64;
            let (p, p16, g) =
                (ptr(&gpu.cuda, &gpu.master) + 4 * off, ptr(&gpu.cuda, &gpu.w16) + 2 * off, ptr(&gpu.cuda, &self.grads) + 4 * off);
            let (m, v, n) = (mp + 4 * off, vp + 4 * off, spec.numel() as i64);
            let wd = if spec.shape.len() >= 2 { cfg.weight_decay } else { 0.0 };
            let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.eps);
            launch!(gpu, "adamw", flat(spec.numel()), p, p16, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
        }
        Ok(norm)
    }

    /// The AdamW moments and step on the host (for the training state), `None` before the
    /// first step.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn moments_to_host(&self) -> Result<Option<HostMoments>> {
        let Some(mo) = &self.moments else { return Ok(None) };
        let st = self.gpu.cuda.stream();
        let m = st.clone_dtoh(&mo.m).map_err(Error::driver("download AdamW m"))?;
        let v = st.clone_dtoh(&mo.v).map_err(Error::driver("download AdamW v"))?;
        Ok(Some((m, v, mo.step)))
    }

    /// Sets the AdamW moments and step (resume).
    ///
    /// # Errors
    /// [`Error::Driver`]; [`Error::Op`] on a length mismatch.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        let n = self.layout.numel;
        if m.len() != n || v.len() != n {
            return Err(unsupported(format!("AdamW moments of {} / {} elements for {n} parameters", m.len(), v.len())));
        }
        let c = &self.gpu.cuda;
        let (m, v) = (c.upload(m, "AdamW m")?, c.upload(v, "AdamW v")?);
        self.moments = Some(Moments { m, v, step });
        Ok(())
    }
}

impl GpuModel {
    /// A model for training `model` from the state of `opt` (its AdamW moments when it has
    /// taken steps): what [`gla_model::DeviceEngine`] drives (`gla train --device cuda`).
    ///
    /// # Errors
    /// As [`GpuModel::new`] and [`GpuModel::set_moments`].
    pub fn for_training(cuda: Arc<Cuda>, model: &GlaModel, opt: &gla_model::optim::AdamW) -> Result<Self> {
        let mut gpu = GpuModel::new(cuda, model)?;
        if opt.step > 0 {
            gpu.set_moments(&opt.m, &opt.v, opt.step)?;
        }
        Ok(gpu)
    }
}

/// The GPU as a training device of the one engine ([`gla_model::DeviceEngine`]): its own copy of
/// the weights, gradients and moments; with a communicator ([`GpuModel::attach_comm`]) one rank
/// of a data-parallel run (statistics and gradient sums over NCCL).
impl gla_model::TrainDevice for GpuModel {
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
    fn update(&mut self, _host: &mut GlaModel, opt: &mut gla_model::optim::AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        let norm = self.adamw_step(cfg, lr, clip)?;
        if norm.is_finite() {
            // the host optimizer counts the steps; its moments are refreshed by `download`
            opt.step += 1;
        }
        Ok(norm)
    }
    fn download(&self, host: &mut GlaModel, opt: &mut gla_model::optim::AdamW) -> Result<()> {
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

/// One sequence's generation state on the GPU (what `gla_model::infer::State` is on the CPU):
/// per layer the recurrent state `[Hop, K, Vop]` f32 and the conv caches `[C, W]` f32. Its size
/// depends only on the config.
pub struct GpuState {
    rec: Vec<CudaSlice<f32>>,
    conv: Vec<Option<[CudaSlice<f32>; 3]>>,
    seen: usize,
}

impl GpuState {
    /// Tokens fed so far.
    pub fn seen_tokens(&self) -> usize {
        self.seen
    }
}

/// Device-to-device copy of `len` f32 from `src[src_off..]` to `dst[dst_off..]`.
fn copy_f32(cuda: &Cuda, dst: &CudaSlice<f32>, dst_off: usize, src: &CudaSlice<f32>, src_off: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (d, s) = (ptr(cuda, dst) + 4 * dst_off as u64, ptr(cuda, src) + 4 * src_off as u64);
    // SAFETY: both ranges lie inside live buffers of this device (callers size them from the
    // model dims) and do not overlap (different buffers); the copy is ordered on the stream
    unsafe { cudarc::driver::result::memcpy_dtod_async(d, s, 4 * len, cuda.stream().cu_stream()) }.map_err(Error::driver("copy state"))
}

/// Generation on the GPU: prefill (chunked) and decode (recurrent) with one [`GpuState`] per
/// sequence; logits come back to the host for sampling (`gla_model::generate`).
pub struct GpuDecoder {
    model: GpuModel,
    /// Decode steps run as a replay of a captured CUDA graph (the check counts them).
    graph_steps: std::sync::atomic::AtomicU64,
    /// Decode steps by batch size (a few: a batch whose sequences finish at different times
    /// shrinks step by step).
    decode: std::sync::Mutex<HashMap<usize, DecodeSlot>>,
}

/// Bytes of the batch copies of the states one grouped prefill forward may hold (for fla's
/// 340M config, 12 MiB of state per sequence: groups of up to 21 prompts).
const PREFILL_STATE_BYTES: usize = 512 << 20;

/// Batch sizes whose decode step (buffers and graph) is kept; more are dropped all at once.
const DECODE_SLOTS: usize = 4;

/// Everything one decode step of B sequences touches, at fixed device addresses: its
/// activations, the state table ([`InferIo::Table`]) and, from the second step on, the step
/// captured as a CUDA graph (one launch instead of ~20 per layer: at batch 1 the step is
/// bound by launch overhead, not by the GPU).
struct DecodeSlot {
    acts: GpuActivations,
    table: CudaSlice<u64>,
    /// The table's contents on the device (re-uploaded only when the states change).
    uploaded: Vec<u64>,
    graph: Option<CudaGraph>,
    /// Steps run; the first runs eagerly (it loads the kernels and sizes cuBLAS's workspace).
    steps: u64,
    /// A capture failed: this slot runs eagerly from now on.
    no_graph: bool,
}

impl GpuDecoder {
    /// Uploads `model`'s weights for inference ([`GpuModel::new_inference`]: bf16 GEMM
    /// matrices, no gradients).
    ///
    /// # Errors
    /// As [`GpuModel::new`].
    pub fn new(cuda: Arc<Cuda>, model: &GlaModel) -> Result<Self> {
        Ok(Self {
            model: GpuModel::new_inference(cuda, model)?,
            graph_steps: std::sync::atomic::AtomicU64::new(0),
            decode: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn state_sizes(&self) -> (usize, [usize; 3]) {
        let dm = &self.model.dims;
        let rec = dm.heads * dm.head_k * dm.head_v; // split heads hold the same values
        (rec, [dm.key_dim * dm.conv, dm.key_dim_kv * dm.conv, dm.value_dim_kv * dm.conv])
    }

    /// Decode steps so far that replayed a captured CUDA graph (the others ran eagerly: the
    /// first step of each batch size, and every step when capture is off or was refused).
    pub fn graph_steps(&self) -> u64 {
        self.graph_steps.load(Ordering::Relaxed)
    }

    /// Bytes of one [`GpuState`] (recurrent states and conv caches, f32): fixed by the config.
    pub fn state_bytes(&self) -> usize {
        let (rec, conv) = self.state_sizes();
        4 * self.model.dims.layers * (rec + conv.iter().sum::<usize>())
    }

    /// A zero state (an empty context).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new_state(&self) -> Result<GpuState> {
        let (rec, conv) = self.state_sizes();
        let c = &self.model.gpu.cuda;
        let z = |len: usize| c.alloc_zeros::<f32>(len.max(1), "generation state");
        let layers = self.model.dims.layers;
        let has_conv = self.model.dims.conv > 0;
        Ok(GpuState {
            rec: (0..layers).map(|_| z(rec)).collect::<Result<_>>()?,
            conv: (0..layers)
                .map(|_| if has_conv { Ok(Some([z(conv[0])?, z(conv[1])?, z(conv[2])?])) } else { Ok(None) })
                .collect::<Result<_>>()?,
            seen: 0,
        })
    }

    /// Refuses a state made for another model (it would be read and written out of bounds).
    fn check_states(&self, states: &[&mut GpuState]) -> Result<()> {
        let (rec, conv) = self.state_sizes();
        let layers = self.model.dims.layers;
        for (i, s) in states.iter().enumerate() {
            let fits = s.rec.len() == layers
                && s.conv.len() == layers
                && s.rec.iter().all(|r| r.len() == rec.max(1))
                && s.conv.iter().all(|cv| match cv {
                    None => self.model.dims.conv == 0,
                    Some(cs) => cs.iter().zip(conv).all(|(x, n)| x.len() == n.max(1)),
                });
            if !fits {
                return Err(unsupported(format!("state {i} was not made by this model's decoder (layers, heads or dims differ)")));
            }
        }
        Ok(())
    }

    /// Runs B sequences of T tokens from their states: gathers the states into batch buffers,
    /// runs the forward, scatters them back; returns the logits of each sequence's last position.
    fn step(&self, acts: &mut GpuActivations, ids: &[u32], states: &mut [&mut GpuState]) -> Result<Vec<Vec<f32>>> {
        let (b, t) = acts.shape();
        let c = &*self.model.gpu.cuda;
        let (rec, conv) = self.state_sizes();
        let layers = self.model.dims.layers;
        self.check_states(states)?;
        if ids.len() != b * t || states.len() != b {
            return Err(unsupported(format!("{} ids and {} states for a [{b}, {t}] step", ids.len(), states.len())));
        }
        let z = |len: usize| c.alloc_zeros::<f32>(len.max(1), "batch state");
        let mut ctx = InferCtx { h0: Vec::with_capacity(layers), ht: Vec::with_capacity(layers), conv: Vec::with_capacity(layers) };
        for l in 0..layers {
            let (h0, ht) = (z(b * rec)?, z(b * rec)?);
            for (i, s) in states.iter().enumerate() {
                copy_f32(c, &h0, i * rec, &s.rec[l], 0, rec)?;
            }
            ctx.h0.push(h0);
            ctx.ht.push(ht);
            ctx.conv.push(match states.first().and_then(|s| s.conv[l].as_ref()) {
                None => None,
                Some(_) => {
                    let bufs = [z(b * conv[0])?, z(b * conv[1])?, z(b * conv[2])?];
                    for (i, s) in states.iter().enumerate() {
                        if let Some(cs) = &s.conv[l] {
                            for j in 0..3 {
                                copy_f32(c, &bufs[j], i * conv[j], &cs[j], 0, conv[j])?;
                            }
                        }
                    }
                    Some(bufs)
                }
            });
        }
        self.model.prefill_step(acts, ids, &mut ctx)?;
        let logits = self.model.logits_to_host(acts)?;
        for (i, s) in states.iter_mut().enumerate() {
            for l in 0..layers {
                copy_f32(c, &s.rec[l], 0, &ctx.ht[l], i * rec, rec)?;
                if let (Some(cs), Some(bufs)) = (&s.conv[l], &ctx.conv[l]) {
                    for j in 0..3 {
                        copy_f32(c, &cs[j], 0, &bufs[j], i * conv[j], conv[j])?;
                    }
                }
            }
            s.seen += t;
        }
        let vocab = self.model.dims.vocab;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Feeds each prompt and returns the logits of its last position, in the forwards of the
    /// one prefill policy (`gla_model::infer::prefill_plan`: prompts of the same length together
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
        for step in prefill_plan(&lens, max_b) {
            let (b, w) = (step.seqs.len(), step.end - step.start);
            if acts.as_ref().is_none_or(|a| a.shape() != (b, w)) {
                drop(acts.take()); // free the previous set before allocating the next
                acts = Some(self.model.inference_activations(b, w)?);
            }
            let Some(a) = acts.as_mut() else { unreachable!("set above") };
            let ids: Vec<u32> = step.seqs.iter().flat_map(|&i| prompts[i][step.start..step.end].iter().copied()).collect();
            let mut sref = pick(states, &step.seqs);
            let last = self.step(a, &ids, &mut sref)?;
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
        self.check_states(states)?;
        self.model.check_ids(ids)?;
        let vocab = self.model.dims.vocab;
        let b = ids.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let c = &*self.model.gpu.cuda;
        let st = c.stream();
        let mut slots = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&b) {
            if slots.len() >= DECODE_SLOTS {
                slots.clear();
            }
            let slot = DecodeSlot {
                acts: self.model.inference_activations(b, 1)?,
                table: c.alloc_zeros::<u64>(self.model.dims.layers * 4 * b, "state table")?,
                uploaded: Vec::new(),
                graph: None,
                steps: 0,
                no_graph: false,
            };
            slots.insert(b, slot);
        }
        let Some(slot) = slots.get_mut(&b) else { unreachable!("inserted above") };
        // the table: [L][4][B] addresses (recurrent state, q/k/v conv caches)
        let mut table = vec![0u64; self.model.dims.layers * 4 * b];
        for l in 0..self.model.dims.layers {
            for (i, s) in states.iter().enumerate() {
                table[l * 4 * b + i] = ptr(c, &s.rec[l]);
                if let Some(cs) = &s.conv[l] {
                    for j in 0..3 {
                        table[(l * 4 + 1 + j) * b + i] = ptr(c, &cs[j]);
                    }
                }
            }
        }
        if table != slot.uploaded {
            st.memcpy_htod(&table, &mut slot.table).map_err(Error::driver("upload state table"))?;
            slot.uploaded = table;
        }
        self.model.gpu.upload_ids(slot.acts.ids_mut(), ids, false)?;
        let tab = ptr(c, &slot.table);
        if slot.graph.is_none() && slot.steps > 0 && !slot.no_graph && c.options().graphs {
            slot.graph = self.capture(&mut slot.acts, tab)?;
            slot.no_graph = slot.graph.is_none();
        }
        match &slot.graph {
            Some(g) => {
                g.launch().map_err(Error::driver("launch the decode graph"))?;
                self.graph_steps.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the table was just built from these states' own buffers, checked above to
            // have this model's sizes; they are distinct (each &mut GpuState owns its buffers)
            // and stay borrowed until the logits are read back below (a synchronising copy)
            None => unsafe { self.model.decode_body(&mut slot.acts, tab)? },
        }
        slot.steps += 1;
        let logits = self.model.logits_to_host(&slot.acts)?;
        for s in states.iter_mut() {
            s.seen += 1;
        }
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Captures the decode step of `acts` into a CUDA graph; `None` (the step then runs
    /// eagerly, as correct, only slower) when the driver refuses the capture.
    fn capture(&self, acts: &mut GpuActivations, table: u64) -> Result<Option<CudaGraph>> {
        let st = self.model.gpu.cuda.stream();
        // relaxed: cuBLAS may make allocation calls on first use of a shape, which a stricter
        // mode would turn into capture failures
        if st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).is_err() {
            return Ok(None);
        }
        // SAFETY: as in decode_batch (the table holds the live states of this step); during the
        // capture nothing runs, the graph replays these launches at the next launch
        let body = unsafe { self.model.decode_body(acts, table) };
        let graph = st.end_capture(CUgraphInstantiate_flags(0));
        match (body, graph) {
            (Ok(()), Ok(Some(g))) => Ok(Some(g)),
            // a launch error inside the capture is the body's own error: report it
            (Err(e), _) if !matches!(e, Error::Launch { .. } | Error::Blas { .. } | Error::Driver { .. }) => Err(e),
            _ => Ok(None),
        }
    }
}

impl gla_model::generate::Decoder for GpuDecoder {
    type State = GpuState;
    fn new_state(&self) -> gla_model::Result<GpuState> {
        GpuDecoder::new_state(self).map_err(Into::into)
    }
    fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut GpuState]) -> gla_model::Result<Vec<Vec<f32>>> {
        GpuDecoder::prefill_batch(self, prompts, states).map_err(Into::into)
    }
    fn decode_batch(&self, ids: &[u32], states: &mut [&mut GpuState]) -> gla_model::Result<Vec<Vec<f32>>> {
        GpuDecoder::decode_batch(self, ids, states).map_err(Into::into)
    }
}
