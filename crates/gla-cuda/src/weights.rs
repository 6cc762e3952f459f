//! Device weights ([`GpuWeights`]): the f32 master weights of a parameter table and their bf16
//! copy (the GEMM operands), f32 gradients and AdamW moments, the data-parallel gradient
//! all-reduce (NCCL buckets reached from a backward through `Primitives::grads_ready`) and the
//! fused optimizer, around the backend [`Gpu`] (bf16 GEMM operands on cuBLAS, f32 masters; its
//! module doc has the dtypes). Nothing here knows a model: the parameter table
//! ([`gla_core::params::ParamSpec`]) and the weights come from the caller, as the forward and
//! backward that run on [`GpuWeights::backend`] (gla-model's, `gla_model::gpu`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, LaunchConfig};
use gla_core::dims::Dims;
use gla_core::optim::AdamWConfig;
use gla_core::params::ParamSpec;

use crate::backend::{blas_err, flat, gpu_mixers, launch, ptr, unsupported, Gemm, Gpu, GpuMixer, GradSync, BUCKET_ELEMS};
pub use crate::backend::{cublas_available, peak_pool_bytes, pool_used_bytes, reset_peak_pool};
use crate::dist::{bucket_plan, Comm};
use crate::error::{Error, Result};
use crate::ops;
use crate::runtime::Cuda;

/// AdamW state on the device (moments laid out like the parameters).
struct Moments {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    step: u64,
    /// The parameters as `adamw`'s segments: element starts (one more than the parameters, the
    /// last the arena length) and whether each takes the weight decay.
    starts: CudaSlice<i64>,
    decay: CudaSlice<i32>,
}

/// `adamw`'s segment table of `specs` (kernels/nn/adamw.cu): each parameter's first element in
/// offset order and the arena's end, and whether it takes the weight decay (matrices only, as
/// gla-model's host `optim::AdamW`); a typed error if the parameters do not tile `[0, numel)`.
fn adamw_segments(specs: &[ParamSpec], numel: usize) -> Result<(Vec<i64>, Vec<i32>)> {
    let mut order: Vec<&ParamSpec> = specs.iter().collect();
    order.sort_by_key(|sp| sp.offset);
    let (mut starts, mut decay, mut end) = (Vec::with_capacity(order.len() + 1), Vec::with_capacity(order.len()), 0usize);
    for sp in order {
        if sp.offset != end {
            return Err(unsupported(format!("parameter {} starts at element {}, the one before ends at {end}", sp.name, sp.offset)));
        }
        starts.push(sp.offset as i64);
        decay.push(i32::from(sp.shape.len() >= 2));
        end += sp.numel();
    }
    if end != numel || starts.is_empty() {
        return Err(unsupported(format!("the parameters hold {end} elements of an arena of {numel}")));
    }
    starts.push(end as i64);
    Ok((starts, decay))
}

/// The device weights a [`GpuWeights`] is assembled from (fields as in [`GpuWeights`]).
struct Weights {
    master: CudaSlice<f32>,
    moff: Vec<usize>,
    w16: CudaSlice<u16>,
    grads: CudaSlice<f32>,
    inference: bool,
}

/// AdamW's first and second moments (parameter table order) and its step count, on the host.
pub type HostMoments = (Vec<f32>, Vec<f32>, u64);

/// The weights of a parameter table on one GPU: f32 master weights, their bf16 copy, f32
/// gradients and AdamW moments, all in the table's order. With a communicator attached
/// ([`GpuWeights::attach_comm`]) it is one rank of a data-parallel job.
pub struct GpuWeights {
    /// The backend: device, cuBLAS, device weights, the gradient all-reduce.
    gpu: Gpu,
    /// empty (one element) for inference-only weights
    grads: CudaSlice<f32>,
    /// built by [`GpuWeights::new_inference`]: no gradients, no f32 copy of the GEMM matrices
    inference: bool,
    moments: Option<Moments>,
    norm_buf: CudaSlice<f64>,
    /// [`GpuWeights::all_reduce_host`]'s device copy, grown to the longest vector it was given
    stats: Option<CudaSlice<f64>>,
    /// Arena length (elements of the parameter table).
    numel: usize,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuWeights {{ params: {}, device: {} }}", self.numel, self.gpu.cuda.name())
    }
}

impl GpuWeights {
    /// Uploads the weights `params` of the parameter table `specs` (arena order) of a model of
    /// dims `dims`, for training.
    ///
    /// # Errors
    /// [`Error::Blas`] when cuBLAS is missing or fails to start; [`Error::Driver`];
    /// [`Error::Op`] for a mixer or dims the kernels do not take.
    pub fn new(cuda: Arc<Cuda>, dims: &Dims, specs: &[ParamSpec], params: &[f32]) -> Result<Self> {
        let (plan, gemm) = Self::preflight(&cuda, dims, specs, params)?;
        let master = cuda.upload(params, "weights")?;
        let w16 = cuda.alloc_zeros::<u16>(params.len(), "bf16 weights")?;
        let grads = cuda.alloc_zeros::<f32>(params.len(), "gradients")?;
        let moff = specs.iter().map(|sp| sp.offset).collect();
        let me = Self::assemble(cuda, gemm, plan, dims, specs, Weights { master, moff, w16, grads, inference: false })?;
        me.refresh_bf16()?;
        Ok(me)
    }

    /// Uploads weights for inference only: the bf16 weights (rounded on the host), and in f32
    /// only the parameters the kernels read in f32; no gradients. A 340M model then holds
    /// 0.8 GB on the device instead of 3.4 GB. [`GpuWeights::backward_with`], the optimizer and
    /// [`GpuWeights::params_to_host`] refuse them.
    ///
    /// # Errors
    /// As [`GpuWeights::new`].
    pub fn new_inference(cuda: Arc<Cuda>, dims: &Dims, specs: &[ParamSpec], params: &[f32]) -> Result<Self> {
        let (plan, gemm) = Self::preflight(&cuda, dims, specs, params)?;
        let w16_host: Vec<u16> = params.iter().map(|&x| ops::f32_to_bf16(x)).collect();
        let w16 = cuda.upload(&w16_host, "bf16 weights")?;
        drop(w16_host);
        // the GEMM matrices are read only as bf16 (wp); everything else keeps an f32 copy (mp)
        let (mut moff, mut compact) = (vec![0usize; specs.len()], Vec::new());
        for (id, sp) in specs.iter().enumerate() {
            if !sp.gemm {
                moff[id] = compact.len();
                compact.extend_from_slice(&params[sp.range()]);
            }
        }
        compact.push(0.0); // never empty
        let master = cuda.upload(&compact, "f32 weights")?;
        let grads = cuda.alloc_zeros::<f32>(1, "gradients")?;
        Self::assemble(cuda, gemm, plan, dims, specs, Weights { master, moff, w16, grads, inference: true })
    }

    /// The backend around the device weights (both constructors).
    fn assemble(
        cuda: Arc<Cuda>,
        gemm: Gemm,
        mixers: (Vec<GpuMixer>, Vec<usize>),
        dims: &Dims,
        specs: &[ParamSpec],
        w: Weights,
    ) -> Result<Self> {
        // the gradient norm's result, then its per-block partial sums (grad_norm)
        let norm_buf = cuda.alloc_zeros::<f64>(1 + crate::backend::max_flat_blocks(&cuda), "gradient norm")?;
        let gpu = Gpu {
            cuda,
            gemm,
            dims: dims.clone(),
            mixers: mixers.0,
            of_layer: mixers.1,
            specs: specs.to_vec(),
            master: w.master,
            moff: w.moff,
            w16: w.w16,
            sync: None,
            reducing: AtomicBool::new(false),
            vision: Default::default(),
        };
        let numel = specs.iter().map(|sp| sp.offset + sp.numel()).max().unwrap_or(0);
        Ok(Self { gpu, grads: w.grads, inference: w.inference, moments: None, norm_buf, stats: None, numel })
    }

    /// What both constructors check first (cuBLAS present, the weights cover the table, mixers
    /// with dims the kernels take: [`gpu_mixers`]), and the cuBLAS handle on the device's
    /// stream.
    #[allow(clippy::type_complexity)]
    fn preflight(cuda: &Arc<Cuda>, dims: &Dims, specs: &[ParamSpec], params: &[f32]) -> Result<((Vec<GpuMixer>, Vec<usize>), Gemm)> {
        if !cublas_available() {
            return Err(Error::Blas {
                what: "load libcublas",
                status: "libcublas.so cannot be loaded; put the CUDA libraries on LD_LIBRARY_PATH".into(),
            });
        }
        let numel = specs.iter().map(|sp| sp.offset + sp.numel()).max().unwrap_or(0);
        if params.len() != numel {
            return Err(unsupported(format!("{} weights for a parameter table of {numel}", params.len())));
        }
        let mixers = gpu_mixers(dims)?;
        let gemm = Gemm {
            blas: CudaBlas::new(cuda.stream().clone()).map_err(blas_err("cublasCreate"))?,
            stream: cuda.stream().clone(),
            sync: cuda.options().sync_debug,
        };
        Ok((mixers, gemm))
    }

    /// Refuses training-only work on an inference-only model.
    fn trainable(&self, what: &str) -> Result<()> {
        if self.inference {
            return Err(unsupported(format!("{what} on a model loaded for inference only (GpuWeights::new_inference)")));
        }
        Ok(())
    }

    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        &self.gpu.cuda
    }

    /// The backend over these weights (what a model's forward and backward run on).
    pub fn backend(&self) -> &Gpu {
        &self.gpu
    }

    /// Elements of the parameter table (the arena length).
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Makes these weights one rank of a data-parallel job: a [`GpuWeights::backward_with`]
    /// with `reduce` then sums the gradients over the ranks of `comm`, in buckets overlapped
    /// with the backward. `ready`: the arena offset below which the gradients are final at each
    /// point of the backward (`Primitives::grads_ready`'s points, in the backward's order).
    ///
    /// # Errors
    /// [`Error::Driver`] (events).
    pub fn attach_comm(&mut self, comm: Comm, ready: &[usize]) -> Result<()> {
        let plan = bucket_plan(ready, self.numel, BUCKET_ELEMS);
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
        let out = self.gpu.cuda.download(&stats.slice(0..v.len()), "statistics")?;
        v.copy_from_slice(&out);
        Ok(())
    }

    /// Waits on the host, with the communicator's timeout and error checks, for the all-reduces
    /// of the last reducing backward (the model's stream is already ordered after them): a host
    /// read of the model's stream would otherwise block forever when a peer died. Call it
    /// before a forward on [`GpuWeights::backend`].
    ///
    /// # Errors
    /// [`Error::Nccl`] (a peer failed or timed out), [`Error::Driver`].
    pub fn wait_reduced(&self, what: &str) -> Result<()> {
        let Some(s) = &self.gpu.sync else { return Ok(()) };
        if !s.pending.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        s.ready.record(self.gpu.cuda.stream()).map_err(Error::driver("record event"))?;
        s.comm.wait_event(&s.ready, what)
    }

    /// Writes the bf16 copy of the weights from the f32 masters (the constructor and each
    /// AdamW step do).
    ///
    /// # Errors
    /// [`Error::Launch`]; [`Error::Op`] on inference-only weights.
    pub fn refresh_bf16(&self) -> Result<()> {
        self.trainable("refreshing the bf16 weights from the f32 ones")?;
        let g = &self.gpu;
        let n = g.master.len() as i64;
        let (y, x) = (ptr(&g.cuda, &g.w16), ptr(&g.cuda, &g.master));
        launch!(g, "cast_f32_bf16", flat(n as usize), y, x, n);
        Ok(())
    }

    /// Downloads the master weights (parameter table order; for checkpoints and checks).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn params_to_host(&self) -> Result<Vec<f32>> {
        self.trainable("downloading the f32 weights")?;
        self.gpu.cuda.download(&self.gpu.master, "weights")
    }

    /// Downloads the first `n` elements of a device buffer (logits of a forward).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn download_f32(&self, buf: &CudaSlice<f32>, n: usize, what: &str) -> Result<Vec<f32>> {
        self.gpu.cuda.download(&buf.slice(0..n), what)
    }

    /// Downloads the accumulated gradients (parameter table order).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        self.trainable("downloading gradients")?;
        self.wait_reduced("waiting for the gradient all-reduce")?;
        self.gpu.cuda.download(&self.grads, "gradients")
    }

    /// Zeroes the gradient arena (between optimizer steps).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn zero_grads(&mut self) -> Result<()> {
        self.trainable("zeroing gradients")?;
        self.gpu.cuda.stream().memset_zeros(&mut self.grads).map_err(Error::driver("zero gradients"))
    }

    /// The bracket of a backward into the gradient arena: `f` runs the backward on the
    /// backend and the arena. With `reduce` and a communicator attached, each bucket is queued
    /// on the communicator's stream as soon as the backward has finished it
    /// (`Primitives::grads_ready`) and the model's stream is ordered after the sums; call it so
    /// for the last micro-batch of a step ([`GpuWeights::adamw_step`] waits for the sums, with
    /// the communicator's timeout).
    ///
    /// # Errors
    /// `f`'s; [`Error::Op`] on inference-only weights; [`Error::Nccl`], [`Error::Driver`].
    pub fn backward_with(&mut self, reduce: bool, f: impl FnOnce(&Gpu, &mut CudaSlice<f32>) -> Result<()>) -> Result<()> {
        self.trainable("backward")?;
        // a previous step's sums must be complete before this backward accumulates into them
        self.wait_reduced("waiting for the gradient all-reduce")?;
        let reduce = reduce && self.gpu.sync.is_some();
        self.gpu.reducing.store(reduce, Ordering::SeqCst);
        let body = f(&self.gpu, &mut self.grads);
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
    /// [`GpuWeights::backward_with`] that reduced, on the gradients summed over the ranks).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn grad_norm(&mut self) -> Result<f64> {
        self.trainable("gradient norm")?;
        let g = &self.gpu;
        // per-block partial sums after the result slot, added in block order (bitwise repeatable)
        let cfg = flat(self.grads.len()).config(&g.cuda);
        let blocks = cfg.grid_dim.0 as i32;
        let (o, gp, nn) = (ptr(&g.cuda, &self.norm_buf), ptr(&g.cuda, &self.grads), self.grads.len() as i64);
        let part = o + 8;
        launch!(g, "sumsq", cfg, part, gp, nn);
        launch!(g, "sum_f64", LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }, o, part, blocks);
        // after a reducing backward this read waits for the sums: with the timeout, not forever
        self.wait_reduced("waiting for the gradient all-reduce")?;
        let v = self.gpu.cuda.download(&self.norm_buf.slice(0..1), "norm")?;
        Ok(v[0].sqrt())
    }

    /// One AdamW step (PyTorch's, decay on matrices only, as gla-model's host `optim::AdamW`) after
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
            let (m, v) = (c.alloc_zeros::<f32>(self.numel, "AdamW m")?, c.alloc_zeros::<f32>(self.numel, "AdamW v")?);
            let (starts, decay) = self.adamw_tables()?;
            self.moments = Some(Moments { m, v, step: 0, starts, decay });
        }
        let Some(mo) = self.moments.as_mut() else { unreachable!("set above") };
        mo.step += 1;
        let step = mo.step as i32;
        let gpu = &self.gpu;
        let c = &gpu.cuda;
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(step), 1.0 - cfg.beta2.powi(step));
        // one launch over the arena: one per parameter cost ViG-T 180 launches a step, mostly
        // of a few hundred elements
        let (p, p16, g) = (ptr(c, &gpu.master), ptr(c, &gpu.w16), ptr(c, &self.grads));
        let (m, v, starts, decay) = (ptr(c, &mo.m), ptr(c, &mo.v), ptr(c, &mo.starts), ptr(c, &mo.decay));
        let nseg = (mo.decay.len()) as i32;
        let (b1, b2, eps, wd) = (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay);
        launch!(gpu, "adamw", flat(self.numel), p, p16, g, m, v, starts, decay, nseg, lr, b1, b2, eps, wd, bc1, bc2, gscale);
        Ok(norm)
    }

    /// The AdamW moments and step on the host (for the training state), `None` before the
    /// first step.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn moments_to_host(&self) -> Result<Option<HostMoments>> {
        let Some(mo) = &self.moments else { return Ok(None) };
        let m = self.gpu.cuda.download(&mo.m, "AdamW m")?;
        let v = self.gpu.cuda.download(&mo.v, "AdamW v")?;
        Ok(Some((m, v, mo.step)))
    }

    /// Sets the AdamW moments and step (resume).
    ///
    /// # Errors
    /// [`Error::Driver`]; [`Error::Op`] on a length mismatch.
    pub fn set_moments(&mut self, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        let n = self.numel;
        if m.len() != n || v.len() != n {
            return Err(unsupported(format!("AdamW moments of {} / {} elements for {n} parameters", m.len(), v.len())));
        }
        let c = &self.gpu.cuda;
        let (m, v) = (c.upload(m, "AdamW m")?, c.upload(v, "AdamW v")?);
        let (starts, decay) = self.adamw_tables()?;
        self.moments = Some(Moments { m, v, step, starts, decay });
        Ok(())
    }

    /// `adamw`'s segment table of this parameter table, on the device.
    fn adamw_tables(&self) -> Result<(CudaSlice<i64>, CudaSlice<i32>)> {
        let (starts, decay) = adamw_segments(&self.gpu.specs, self.numel)?;
        let c = &self.gpu.cuda;
        Ok((c.upload(&starts, "AdamW segment starts")?, c.upload(&decay, "AdamW decay flags")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::params::Init;

    fn spec(name: &str, shape: &[usize], offset: usize) -> ParamSpec {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init: Init::Zeros, offset, gemm: false }
    }

    #[test]
    fn adamw_segments_tile_the_arena_in_offset_order() {
        // listed out of offset order; matrices decay, vectors do not
        let specs = [spec("w", &[3, 4], 5), spec("n", &[5], 0), spec("b", &[2], 17)];
        let (starts, decay) = adamw_segments(&specs, 19).expect("tiles");
        assert_eq!(starts, vec![0, 5, 17, 19]);
        assert_eq!(decay, vec![0, 1, 0]);
        // a gap, an overlap, a short arena, no parameters: typed errors
        assert!(adamw_segments(&[spec("n", &[5], 0), spec("w", &[3, 4], 6)], 18).is_err());
        assert!(adamw_segments(&[spec("n", &[5], 0), spec("w", &[3, 4], 4)], 16).is_err());
        assert!(adamw_segments(&[spec("n", &[5], 0)], 6).is_err());
        assert!(adamw_segments(&[], 0).is_err());
    }
}
