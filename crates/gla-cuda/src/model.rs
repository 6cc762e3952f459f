//! The GLA language model on the GPU: the same explicit forward and backward as
//! `gla_model::GlaModel` (read that file first: this one follows it call for call), with bf16
//! GEMM operands on cuBLAS, f32 master weights, f32 parameter gradients and AdamW moments.
//!
//! dtypes (the mixed-precision recipe fla gets from autocast):
//! - f32: the residual stream `x`, the norms' `rstd`, the gate pre-activation `gk_raw`, the
//!   master weights, every parameter gradient, the optimizer moments, and every gradient that is
//!   summed from several GEMMs (`dxn`, `dres`) or leaves the GLA backward (`dq, dk, dv, dg`);
//! - bf16: every GEMM operand (activations, a bf16 copy of the weights refreshed by each AdamW
//!   step, and the gradients fed to GEMMs), and q, k, v, g, o, do of the GLA kernels.
//!
//! Head dims above the tensor-core kernels' 128: a head with V = s * V' (V' <= 128) runs as s
//! heads of V' that share q, k and g (GLA is separable over the value channels; q, k, g are
//! repeated s times and their gradients summed back), the same repeat that GQA uses.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use gla_core::{GateKind, Problem, ProblemSpec};
use gla_model::config::Dims;
use gla_model::optim::AdamWConfig;
use gla_model::params::Layout;
use gla_model::{GlaConfig, GlaModel, LossOut, IGNORE_INDEX};

use crate::dist::{bucket_plan, Comm};
use crate::error::{Error, Result};
use crate::kernels::MODEL_OPS;
use crate::ops::{self, DevInputs, DevProblem, FwdKernel};
use crate::runtime::Cuda;

/// Largest head dim the tensor-core GLA kernels take; larger value heads are split (module doc).
const MAX_HEAD: usize = 128;
/// Widest short convolution the GPU kernels take (`conv_bwd_dw`'s taps per thread).
const MAX_CONV: usize = 8;
/// Threads per block of the element-wise and row-wise kernels.
const THREADS: u32 = 256;
/// Gradient elements per all-reduce of a data-parallel backward (25 MiB of f32, PyTorch DDP's
/// default bucket): large enough for NCCL's bandwidth, small enough to start during the backward.
const BUCKET_ELEMS: usize = (25 << 20) / 4;

fn blas_err(what: &'static str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
    move |e| Error::Blas { what, status: format!("{e:?}") }
}

/// Whether libcublas can be loaded (cudarc panics on a missing library; probe first).
pub fn cublas_available() -> bool {
    // SAFETY: only tries to dlopen the library
    std::panic::catch_unwind(|| unsafe { blas_sys::is_culib_present() }).unwrap_or(false)
}

/// The device's default memory pool (every stream-ordered allocation of this process), or
/// `None` when the driver has none.
fn default_pool(cuda: &Cuda) -> Option<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the context is bound first; pool is written by the driver only on success
    unsafe {
        let _ = cuda.context().bind_to_thread();
        (sys::cuDeviceGetDefaultMemPool(&mut pool, cuda.context().cu_device()) == sys::CUresult::CUDA_SUCCESS).then_some(pool)
    }
}

/// Resets the high-water mark of the device's default memory pool to the memory in use now, so
/// that [`peak_pool_bytes`] then reports the peak of what follows. Best effort.
pub fn reset_peak_pool(cuda: &Cuda) {
    use cudarc::driver::sys;
    if let Some(pool) = default_pool(cuda) {
        let mut zero: u64 = 0;
        // SAFETY: a live pool; setting USED_MEM_HIGH takes a u64 that must be 0
        let _ =
            unsafe { sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&raw mut zero).cast()) };
    }
}

/// The high-water mark of the device's default memory pool (every stream-ordered allocation of
/// this process), in bytes; 0 when the driver does not report it.
pub fn peak_pool_bytes(cuda: &Cuda) -> u64 {
    use cudarc::driver::sys;
    let mut high: u64 = 0;
    if let Some(pool) = default_pool(cuda) {
        // SAFETY: a live pool; the attribute writes a u64
        let _ =
            unsafe { sys::cuMemPoolGetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, (&raw mut high).cast()) };
    }
    high
}

/// Raw device address of a buffer (one stream: no cross-stream ordering to record).
fn ptr<T>(cuda: &Cuda, s: &CudaSlice<T>) -> u64 {
    s.device_ptr(cuda.stream()).0
}

/// bf16 or f32, for GEMM operand types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bf16,
    F32,
}

impl Ty {
    fn cuda(self) -> blas_sys::cudaDataType {
        match self {
            Ty::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
            Ty::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        }
    }
}

/// `GLA_SYNC_DEBUG=1`: synchronise after every launch and GEMM of the model, so an asynchronous
/// fault is reported by the kernel that caused it (slow; for debugging).
fn sync_debug() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("GLA_SYNC_DEBUG").is_some_and(|v| v != "0"))
}

/// cuBLAS with row-major helpers for the three products of a linear layer.
struct Gemm {
    blas: CudaBlas,
    stream: Arc<cudarc::driver::CudaStream>,
}

impl Gemm {
    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        cty: Ty,
        ldc: usize,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let dim = |x: usize| i32::try_from(x).map_err(|_| Error::Blas { what: "gemm", status: format!("dimension {x} exceeds i32") });
        let op = |t: bool| if t { blas_sys::cublasOperation_t::CUBLAS_OP_T } else { blas_sys::cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: a, b, c are live device buffers of at least the extents implied by (m, n, k,
        // ld*) (the callers size them from the same dims); alpha/beta are host f32 (the default
        // pointer mode); operand types bf16 x bf16 -> bf16/f32 with f32 compute are a supported
        // cublasGemmEx combination
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(ta),
                op(tb),
                dim(m)?,
                dim(n)?,
                dim(k)?,
                (&raw const alpha).cast(),
                a as *const _,
                Ty::Bf16.cuda(),
                dim(lda)?,
                b as *const _,
                Ty::Bf16.cuda(),
                dim(ldb)?,
                (&raw const beta).cast(),
                c as *mut _,
                cty.cuda(),
                dim(ldc)?,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(blas_err("cublasGemmEx"))?;
        if sync_debug() {
            self.blas_sync()?;
        }
        Ok(())
    }
    fn blas_sync(&self) -> Result<()> {
        // the handle's stream is the model's stream
        let st = self.stream.clone();
        st.synchronize().map_err(|e| Error::Blas { what: "cublasGemmEx (synchronised)", status: format!("m/n/k as launched; {e}") })
    }
    /// `y [n, dout] (beta·y +)= x [n, din] @ w^T`, `w [dout, din]`.
    #[allow(clippy::too_many_arguments)]
    fn fwd(&self, y: u64, yty: Ty, x: u64, w: u64, n: usize, din: usize, dout: usize, beta: f32) -> Result<()> {
        self.raw(true, false, dout, n, din, 1.0, w, din, x, din, beta, y, yty, dout)
    }
    /// `dx [n, din] (beta·dx +)= dy [n, dout] @ w`.
    #[allow(clippy::too_many_arguments)]
    fn bwd_x(&self, dx: u64, dxty: Ty, dy: u64, w: u64, n: usize, din: usize, dout: usize, beta: f32) -> Result<()> {
        self.raw(false, false, din, n, dout, 1.0, w, din, dy, dout, beta, dx, dxty, din)
    }
    /// `dw [dout, din] += dy^T @ x` (f32).
    fn bwd_w(&self, dw: u64, dy: u64, x: u64, n: usize, din: usize, dout: usize) -> Result<()> {
        self.bwd_w_scaled(dw, dy, x, n, din, dout, 1.0)
    }
    /// `dw [dout, din] += alpha * dy^T @ x` (f32).
    #[allow(clippy::too_many_arguments)]
    fn bwd_w_scaled(&self, dw: u64, dy: u64, x: u64, n: usize, din: usize, dout: usize, alpha: f32) -> Result<()> {
        self.raw(false, true, din, dout, n, alpha, x, din, dy, dout, 1.0, dw, Ty::F32, din)
    }
}

/// Most blocks of a [`flat`] launch (16 per multiprocessor of an H200).
const MAX_FLAT_BLOCKS: usize = 132 * 16;
/// Launch shape of a grid-stride kernel over `n` elements.
fn flat(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_FLAT_BLOCKS) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}
/// One warp per row.
fn rows_warp(rows: usize) -> LaunchConfig {
    flat(rows * 32)
}
/// One block per row.
fn rows_block(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.clamp(1, 65_535) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}
/// Row blocks of a column reduction over `rows` rows: each writes one row of partial sums.
fn col_gy(rows: usize) -> usize {
    rows.div_ceil(8 * 64).clamp(1, 1024)
}
/// Column reductions: 32 columns x 8 row lanes per block, [`col_gy`] blocks over the rows.
fn cols(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (cols.div_ceil(32).max(1) as u32, col_gy(rows) as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}
/// Elements of the partial sums buffer: the largest `[gy, cols]` of the backward's column
/// reductions (norm weights over D, the per-head norm over N*H rows, the gate bias, the conv
/// weights over C * W columns).
fn part_len(dm: &Dims, n: usize) -> usize {
    let conv_cols = dm.conv * dm.key_dim.max(dm.key_dim_kv).max(dm.value_dim_kv);
    (col_gy(n) * dm.d.max(dm.key_dim_kv).max(conv_cols)).max(col_gy(n * dm.heads) * dm.head_v)
}

/// One launch: `args!` pushes each argument by reference.
macro_rules! launch {
    ($self:expr, $name:literal, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let cfg = $cfg;
        let f = $self.cuda.function(&MODEL_OPS, $name)?;
        let mut b = $self.cuda.stream().launch_builder(&f);
        $( b.arg(&$arg); )*
        // SAFETY: the argument list matches the kernel's signature in model_ops.cu (device
        // addresses of buffers sized by the callers from the model dims, idx_t/int/float scalars
        // in order); grid-stride kernels cover any grid
        let err = |source| Error::Launch { kernel: $name.into(), grid: cfg.grid_dim, block: cfg.block_dim, smem: cfg.shared_mem_bytes, source };
        unsafe { b.launch(cfg) }.map_err(err)?;
        if sync_debug() {
            $self.cuda.stream().synchronize().map_err(err)?;
        }
    }};
}

/// Saved tensors of one block on the device (see gla_model's `LayerActs`; `None` = not used by
/// this config).
struct LayerActs {
    rstd1: CudaSlice<f32>,
    xn1: CudaSlice<u16>,
    q_lin: CudaSlice<u16>,
    k_lin: CudaSlice<u16>,
    v_lin: CudaSlice<u16>,
    conv: Option<[CudaSlice<u16>; 6]>, // q_pre, k_pre, v_pre, q_c, k_c, v_c
    g_pre: Option<CudaSlice<u16>>,
    gk_lr: CudaSlice<u16>,
    gk_raw: CudaSlice<f32>,
    gk: CudaSlice<u16>,
    // q, k, v, gk repeated to the op's heads (GQA groups and value splits); None = no repeat
    q_rep: Option<CudaSlice<u16>>,
    k_rep: Option<CudaSlice<u16>>,
    v_rep: Option<CudaSlice<u16>>,
    gk_rep: Option<CudaSlice<u16>>,
    rstd_o: CudaSlice<f32>,
    on: CudaSlice<u16>,
    x_mid: CudaSlice<f32>,
    rstd2: CudaSlice<f32>,
    xn2: CudaSlice<u16>,
    a: CudaSlice<u16>,
    b: CudaSlice<u16>,
    h: CudaSlice<u16>,
}

impl LayerActs {
    fn q(&self) -> &CudaSlice<u16> {
        self.q_rep.as_ref().or(self.conv.as_ref().map(|c| &c[3])).unwrap_or(&self.q_lin)
    }
    fn k_src(&self) -> &CudaSlice<u16> {
        self.conv.as_ref().map_or(&self.k_lin, |c| &c[4])
    }
    fn v_src(&self) -> &CudaSlice<u16> {
        self.conv.as_ref().map_or(&self.v_lin, |c| &c[5])
    }
    fn k(&self) -> &CudaSlice<u16> {
        self.k_rep.as_ref().unwrap_or(self.k_src())
    }
    fn v(&self) -> &CudaSlice<u16> {
        self.v_rep.as_ref().unwrap_or(self.v_src())
    }
    fn gk(&self) -> &CudaSlice<u16> {
        self.gk_rep.as_ref().unwrap_or(&self.gk)
    }
}

/// Backward scratch (one set, reused by every layer).
struct Scratch {
    dres: CudaSlice<f32>,
    dres16: CudaSlice<u16>,
    dxn: CudaSlice<f32>,
    dh: CudaSlice<f32>,
    da: CudaSlice<u16>,
    db: CudaSlice<u16>,
    d_on: CudaSlice<f32>,
    d_o: CudaSlice<u16>,
    dg_pre: Option<CudaSlice<u16>>,
    dq: Option<CudaSlice<f32>>, // summed over value splits
    dk: Option<CudaSlice<f32>>, // summed over groups and splits
    dv: Option<CudaSlice<f32>>, // summed over groups
    dgk: Option<CudaSlice<f32>>,
    dgk_raw: CudaSlice<f32>,
    dgk_raw16: CudaSlice<u16>,
    dgk_lr: CudaSlice<u16>,
    dq16: CudaSlice<u16>,
    dk16: CudaSlice<u16>,
    dv16: CudaSlice<u16>,
    /// per-block partial sums of the column reductions (`[gy, cols]`, see `cols`)
    part: CudaSlice<f32>,
    /// the embedding backward's rows sorted by token (`order`), each token's segment of them
    /// (`start`, `tok`) and the number of segments: built on the host by the forward
    emb_order: CudaSlice<i32>,
    emb_start: CudaSlice<i32>,
    emb_tok: CudaSlice<u32>,
    emb_nseg: usize,
}

/// Device buffers for batches of shape `[B, T]`, allocated once and reused every step.
pub struct GpuActivations {
    b: usize,
    t: usize,
    prob: DevProblem,
    ids: CudaSlice<u32>,
    xs: Vec<CudaSlice<f32>>,
    layers: Vec<LayerActs>,
    /// GLA outputs per layer (apart from `layers`: the op borrows the inputs while writing it)
    o: Vec<CudaSlice<u16>>,
    rstdf: CudaSlice<f32>,
    xf: CudaSlice<u16>,
    m: usize,
    rows: CudaSlice<i32>,
    targets: CudaSlice<u32>,
    xf_sel: CudaSlice<u16>,
    logits: CudaSlice<f32>,
    dlogits: CudaSlice<u16>,
    loss: CudaSlice<f32>,
    correct: CudaSlice<i32>,
    dsel: CudaSlice<f32>,
    s: Scratch,
    /// made by [`GpuModel::inference_activations`]: `layers` and `o` hold one entry reused by
    /// every layer, `xs` two residual streams used in turn
    inference: bool,
    /// rows the lm_head buffers hold
    rows_cap: usize,
}

impl std::fmt::Debug for GpuActivations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuActivations {{ b: {}, t: {} }}", self.b, self.t)
    }
}

impl GpuActivations {
    /// The batch shape `(B, T)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }
    /// Index of layer `l`'s entry in `layers` and `o`.
    fn li(&self, l: usize) -> usize {
        if self.inference {
            0
        } else {
            l
        }
    }
    /// Index in `xs` of the residual stream entering layer `l` (`l = L`: leaving the last).
    fn xi(&self, l: usize) -> usize {
        if self.inference {
            l % 2
        } else {
            l
        }
    }
}

/// How the GLA op's heads relate to the model's: `split` value splits per head (module doc).
#[derive(Clone, Copy, Debug)]
struct HeadPlan {
    split: usize,
    /// q repeat factor (= split), k/g repeat factor (groups * split), v repeat factor (groups).
    rq: usize,
    rk: usize,
    rv: usize,
}

fn head_plan(dm: &Dims) -> Result<HeadPlan> {
    if dm.head_k > MAX_HEAD {
        return Err(unsupported(format!("head key dim {} > {MAX_HEAD} on the GPU", dm.head_k)));
    }
    let split = dm.head_v.div_ceil(MAX_HEAD);
    if !dm.head_v.is_multiple_of(split) {
        return Err(unsupported(format!("head value dim {} is not a multiple of {split} (split into heads of <= {MAX_HEAD})", dm.head_v)));
    }
    Ok(HeadPlan { split, rq: split, rk: dm.groups() * split, rv: dm.groups() })
}

fn unsupported(what: String) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cuda", what })
}

/// AdamW state on the device (moments laid out like the parameters).
struct Moments {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    step: u64,
}

/// The gradient all-reduce of a data-parallel [`GpuModel`]: the backward finishes the gradient
/// arena from its end (lm_head, final norm, last layer) to its start (embedding); each range of
/// [`bucket_plan`] is summed over the ranks on the communicator's stream as soon as it is final,
/// while the backward goes on with the layers below.
struct GradSync {
    comm: Comm,
    /// Per point of the backward (after the head, after each layer from the last, after the
    /// embedding): the range to all-reduce there.
    plan: Vec<Option<Range<usize>>>,
    /// Recorded on the model's stream: what the communicator's stream (or the host) waits for.
    ready: CudaEvent,
    /// Recorded on the communicator's stream after a backward's last all-reduce.
    done: CudaEvent,
    /// All-reduces were issued that the host has not yet seen complete.
    pending: AtomicBool,
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
/// AdamW moments, all in the parameter table's order (`gla_model::params::Layout`). With a
/// communicator attached ([`GpuModel::attach_comm`]) it is one rank of a data-parallel job.
pub struct GpuModel {
    cuda: Arc<Cuda>,
    gemm: Gemm,
    /// The fla config.
    pub config: GlaConfig,
    /// Derived dims.
    pub dims: Dims,
    /// The parameter table.
    pub layout: Layout,
    plan: HeadPlan,
    /// f32 parameters at `moff`: all of them (training), or only those the kernels read in
    /// f32 (embedding, norms, convs, gate bias; [`GpuModel::new_inference`])
    master: CudaSlice<f32>,
    /// offset of each parameter in `master`
    moff: Vec<usize>,
    w16: CudaSlice<u16>,
    /// empty (one element) for an inference-only model
    grads: CudaSlice<f32>,
    /// built by [`GpuModel::new_inference`]: no gradients, no f32 copy of the GEMM matrices
    inference: bool,
    moments: Option<Moments>,
    norm_buf: CudaSlice<f64>,
    sync: Option<GradSync>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuModel {{ params: {}, device: {} }}", self.layout.numel, self.cuda.name())
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
        let st = cuda.stream();
        let master = st.clone_htod(&model.params).map_err(Error::driver("upload weights"))?;
        let w16 = st.alloc_zeros::<u16>(model.params.len()).map_err(Error::driver("alloc bf16 weights"))?;
        let grads = st.alloc_zeros::<f32>(model.params.len()).map_err(Error::driver("alloc gradients"))?;
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
        let st = cuda.stream();
        let w16_host: Vec<u16> = model.params.iter().map(|&x| ops::f32_to_bf16(x)).collect();
        let w16 = st.clone_htod(&w16_host).map_err(Error::driver("upload bf16 weights"))?;
        drop(w16_host);
        // the GEMM matrices are read only as bf16 (wp); everything else keeps an f32 copy (mp)
        let mut gemm_only = vec![false; model.layout.specs.len()];
        for il in &model.layout.layers {
            for id in [il.q_proj, il.k_proj, il.v_proj, il.gk0, il.gk1, il.o_proj, il.gate_proj, il.up_proj, il.down_proj] {
                gemm_only[id] = true;
            }
            if let Some(id) = il.g_proj {
                gemm_only[id] = true;
            }
        }
        if let Some(id) = model.layout.lm_head {
            gemm_only[id] = true;
        }
        let (mut moff, mut compact) = (vec![0usize; model.layout.specs.len()], Vec::new());
        for (id, sp) in model.layout.specs.iter().enumerate() {
            if !gemm_only[id] {
                moff[id] = compact.len();
                compact.extend_from_slice(&model.params[sp.range()]);
            }
        }
        compact.push(0.0); // never empty
        let master = st.clone_htod(&compact).map_err(Error::driver("upload f32 weights"))?;
        let grads = st.alloc_zeros::<f32>(1).map_err(Error::driver("alloc gradients"))?;
        Self::assemble(cuda, gemm, plan, model, Weights { master, moff, w16, grads, inference: true })
    }

    /// The model around its device weights (both constructors).
    fn assemble(cuda: Arc<Cuda>, gemm: Gemm, plan: HeadPlan, model: &GlaModel, w: Weights) -> Result<Self> {
        // the gradient norm's result, then its per-block partial sums (grad_norm)
        let norm_buf = cuda.stream().alloc_zeros::<f64>(1 + MAX_FLAT_BLOCKS).map_err(Error::driver("alloc norm"))?;
        Ok(Self {
            cuda,
            gemm,
            config: model.config.clone(),
            dims: model.dims.clone(),
            layout: model.layout.clone(),
            plan,
            master: w.master,
            moff: w.moff,
            w16: w.w16,
            grads: w.grads,
            inference: w.inference,
            moments: None,
            norm_buf,
            sync: None,
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
        let gemm = Gemm { blas: CudaBlas::new(cuda.stream().clone()).map_err(blas_err("cublasCreate"))?, stream: cuda.stream().clone() };
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
        &self.cuda
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
        let ctx = self.cuda.context();
        let ready = ctx.new_event(None).map_err(Error::driver("create event"))?;
        let done = ctx.new_event(None).map_err(Error::driver("create event"))?;
        self.sync = Some(GradSync { comm, plan, ready, done, pending: AtomicBool::new(false) });
        Ok(())
    }

    /// The attached communicator, if any.
    pub fn comm(&self) -> Option<&Comm> {
        self.sync.as_ref().map(|s| &s.comm)
    }

    /// Sums `v` over the ranks of the attached communicator (no-op without one); used for the
    /// loss statistics of each micro-batch. Synchronises.
    ///
    /// # Errors
    /// [`Error::Nccl`] (a peer failed or timed out), [`Error::Driver`].
    pub fn all_reduce_host(&self, v: &mut [f64]) -> Result<()> {
        let Some(s) = &self.sync else { return Ok(()) };
        let st = self.cuda.stream();
        let buf = st.clone_htod(v).map_err(Error::driver("upload statistics"))?;
        s.ready.record(st).map_err(Error::driver("record event"))?;
        s.comm.stream().wait(&s.ready).map_err(Error::driver("order the communication stream"))?;
        s.comm.all_reduce_sum_f64(ptr(&self.cuda, &buf), v.len(), "all-reduce of the loss")?;
        s.done.record(s.comm.stream()).map_err(Error::driver("record event"))?;
        st.wait(&s.done).map_err(Error::driver("order the model stream"))?;
        s.ready.record(st).map_err(Error::driver("record event"))?;
        s.comm.wait_event(&s.ready, "all-reduce of the loss")?;
        let out = st.clone_dtoh(&buf).map_err(Error::driver("download statistics"))?;
        v.copy_from_slice(&out);
        Ok(())
    }

    /// Adds the partial sums of a column reduction over `rows` rows (`part`, `[col_gy(rows),
    /// cols]`) to the gradient at `dw`, in block order.
    fn finalize_cols(&self, dw: u64, part: u64, rows: usize, cols: usize) -> Result<()> {
        let (gy, ci) = (col_gy(rows) as i32, cols as i32);
        launch!(self, "col_finalize", flat(cols), dw, part, gy, ci);
        Ok(())
    }

    /// Queues the all-reduce planned at point `at` of a reducing backward (module doc of
    /// [`GradSync`]), after the gradients written so far on the model's stream.
    fn reduce_point(&self, at: usize) -> Result<()> {
        let Some(s) = &self.sync else { return Ok(()) };
        let Some(r) = &s.plan[at] else { return Ok(()) };
        s.ready.record(self.cuda.stream()).map_err(Error::driver("record event"))?;
        s.comm.stream().wait(&s.ready).map_err(Error::driver("order the communication stream"))?;
        let base = ptr(&self.cuda, &self.grads);
        s.comm.all_reduce_sum_f32(base + 4 * r.start as u64, r.len(), &format!("all-reduce of gradients {}..{}", r.start, r.end))
    }

    /// Waits on the host, with the communicator's timeout and error checks, for the all-reduces
    /// of the last reducing backward (the model's stream is already ordered after them): a host
    /// read of the model's stream would otherwise block forever when a peer died.
    fn wait_reduced(&self, what: &str) -> Result<()> {
        let Some(s) = &self.sync else { return Ok(()) };
        if !s.pending.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        s.ready.record(self.cuda.stream()).map_err(Error::driver("record event"))?;
        s.comm.wait_event(&s.ready, what)
    }

    fn refresh_bf16(&self) -> Result<()> {
        self.trainable("refreshing the bf16 weights from the f32 ones")?;
        let n = self.master.len() as i64;
        let (y, x) = (ptr(&self.cuda, &self.w16), ptr(&self.cuda, &self.master));
        launch!(self, "cast_f32_bf16", flat(n as usize), y, x, n);
        Ok(())
    }

    /// Downloads the master weights into a CPU model (for checkpoints and checks).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn to_host(&self) -> Result<GlaModel> {
        self.trainable("downloading the f32 weights")?;
        let params = self.cuda.stream().clone_dtoh(&self.master).map_err(Error::driver("download weights"))?;
        GlaModel::from_params(self.config.clone(), params).map_err(|e| unsupported(e.to_string()))
    }

    /// Downloads the logits of the labelled rows of the last forward, `[M, vocab]` f32, in row
    /// order (the rows whose target is not -100).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn logits_to_host(&self, acts: &GpuActivations) -> Result<Vec<f32>> {
        let n = acts.m * self.dims.vocab;
        self.cuda.stream().clone_dtoh(&acts.logits.slice(0..n)).map_err(Error::driver("download logits"))
    }

    /// Downloads the accumulated gradients (parameter table order).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        self.trainable("downloading gradients")?;
        self.wait_reduced("waiting for the gradient all-reduce")?;
        self.cuda.stream().clone_dtoh(&self.grads).map_err(Error::driver("download gradients"))
    }

    /// Zeroes the gradient arena (between optimizer steps).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn zero_grads(&mut self) -> Result<()> {
        self.trainable("zeroing gradients")?;
        self.cuda.stream().memset_zeros(&mut self.grads).map_err(Error::driver("zero gradients"))
    }

    fn wp(&self, id: usize) -> u64 {
        ptr(&self.cuda, &self.w16) + 2 * self.layout.specs[id].offset as u64
    }
    fn mp(&self, id: usize) -> u64 {
        ptr(&self.cuda, &self.master) + 4 * self.moff[id] as u64
    }
    fn gp(&self, id: usize) -> u64 {
        ptr(&self.cuda, &self.grads) + 4 * self.layout.specs[id].offset as u64
    }
    fn lm_head_id(&self) -> usize {
        self.layout.lm_head.unwrap_or(self.layout.embeddings)
    }

    fn op_problem(&self, b: usize, t: usize) -> Result<Problem> {
        let dm = &self.dims;
        Ok(Problem::new(ProblemSpec {
            b,
            t,
            h: dm.heads * self.plan.split,
            k: dm.head_k,
            v: dm.head_v / self.plan.split,
            gate: GateKind::PerKey,
            // the model's scale is the per-head K^-1/2 (K is not split)
            scale: Some((dm.head_k as f64).powf(-0.5)),
            cu_seqlens: None,
        })?)
    }

    /// Device buffers for `[B, T]` batches: every layer's saved tensors and the backward's
    /// scratch.
    ///
    /// # Errors
    /// [`Error::Driver`] (out of memory names the buffer being allocated).
    pub fn activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        self.activations_impl(b, t, false)
    }

    /// Device buffers for forwards without a backward (prefill, decode): one layer's tensors,
    /// reused by every layer, two residual streams, logits for one row per sequence, no
    /// backward scratch; about 1/L of [`GpuModel::activations`].
    ///
    /// # Errors
    /// As [`GpuModel::activations`].
    pub fn inference_activations(&self, b: usize, t: usize) -> Result<GpuActivations> {
        self.activations_impl(b, t, true)
    }

    fn activations_impl(&self, b: usize, t: usize, inference: bool) -> Result<GpuActivations> {
        let dm = &self.dims;
        let pl = self.plan;
        let n = b * t;
        fn z<T: DeviceRepr + ValidAsZeroBits>(cuda: &Cuda, len: usize) -> Result<CudaSlice<T>> {
            cuda.stream().alloc_zeros::<T>(len.max(1)).map_err(Error::driver(format!("alloc {len} activation elements")))
        }
        let c = &*self.cuda;
        let conv = dm.conv > 0;
        let (kd, kdkv, vd, vdkv) = (dm.key_dim, dm.key_dim_kv, dm.value_dim, dm.value_dim_kv);
        // q/k/g at the op's heads
        let op_k = n * dm.heads * pl.split * dm.head_k;
        // inference: one set of layer tensors and the backward's buffers as placeholders
        let n_layers = if inference { 1 } else { dm.layers };
        let bw = |len: usize| if inference { 1 } else { len };
        let mut layers = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            layers.push(LayerActs {
                rstd1: z(c, n)?,
                xn1: z(c, n * dm.d)?,
                q_lin: z(c, n * kd)?,
                k_lin: z(c, n * kdkv)?,
                v_lin: z(c, n * vdkv)?,
                conv: if conv {
                    Some([z(c, n * kd)?, z(c, n * kdkv)?, z(c, n * vdkv)?, z(c, n * kd)?, z(c, n * kdkv)?, z(c, n * vdkv)?])
                } else {
                    None
                },
                g_pre: if dm.output_gate { Some(z(c, n * vd)?) } else { None },
                gk_lr: z(c, n * dm.gate_rank)?,
                gk_raw: z(c, n * kdkv)?,
                gk: z(c, n * kdkv)?,
                q_rep: if pl.rq > 1 { Some(z(c, op_k)?) } else { None },
                k_rep: if pl.rk > 1 { Some(z(c, op_k)?) } else { None },
                v_rep: if pl.rv > 1 { Some(z(c, n * vd)?) } else { None },
                gk_rep: if pl.rk > 1 { Some(z(c, op_k)?) } else { None },
                rstd_o: z(c, n * dm.heads)?,
                on: z(c, n * vd)?,
                x_mid: z(c, n * dm.d)?,
                rstd2: z(c, n)?,
                xn2: z(c, n * dm.d)?,
                a: z(c, n * dm.intermediate)?,
                b: z(c, n * dm.intermediate)?,
                h: z(c, n * dm.intermediate)?,
            });
        }
        let s = Scratch {
            dres: z(c, bw(n * dm.d))?,
            dres16: z(c, bw(n * dm.d))?,
            dxn: z(c, bw(n * dm.d))?,
            dh: z(c, bw(n * dm.intermediate))?,
            da: z(c, bw(n * dm.intermediate))?,
            db: z(c, bw(n * dm.intermediate))?,
            d_on: z(c, bw(n * vd))?,
            d_o: z(c, bw(n * vd))?,
            dg_pre: if dm.output_gate { Some(z(c, bw(n * vd))?) } else { None },
            dq: if pl.rq > 1 { Some(z(c, bw(n * kd))?) } else { None },
            dk: if pl.rk > 1 { Some(z(c, bw(n * kdkv))?) } else { None },
            dv: if pl.rv > 1 { Some(z(c, bw(n * vdkv))?) } else { None },
            dgk: if pl.rk > 1 { Some(z(c, bw(n * kdkv))?) } else { None },
            dgk_raw: z(c, bw(n * kdkv))?,
            dgk_raw16: z(c, bw(n * kdkv))?,
            dgk_lr: z(c, bw(n * dm.gate_rank))?,
            dq16: z(c, bw(n * kd))?,
            dk16: z(c, bw(n * kdkv))?,
            dv16: z(c, bw(n * vdkv))?,
            part: z(c, bw(part_len(dm, n)))?,
            emb_order: z(c, bw(n))?,
            emb_start: z(c, bw(n + 1))?,
            emb_tok: z(c, bw(n))?,
            emb_nseg: 0,
        };
        let prob = DevProblem::new(c, &self.op_problem(b, t)?)?;
        // rows that may reach the lm_head: every row, or one per sequence (the last) in inference
        let rows_cap = if inference { b } else { n };
        Ok(GpuActivations {
            b,
            t,
            prob,
            ids: z(c, n)?,
            xs: (0..if inference { 2 } else { dm.layers + 1 }).map(|_| z(c, n * dm.d)).collect::<Result<_>>()?,
            layers,
            o: (0..n_layers).map(|_| z(c, n * vd)).collect::<Result<_>>()?,
            rstdf: z(c, n)?,
            xf: z(c, n * dm.d)?,
            m: 0,
            rows: z(c, n)?,
            targets: z(c, n)?,
            xf_sel: z(c, rows_cap * dm.d)?,
            logits: z(c, rows_cap * dm.vocab)?,
            // cross_entropy writes d(loss)/d(logits) for every row reaching the lm_head, also
            // for the dummy labels of inference steps
            dlogits: z(c, rows_cap * dm.vocab)?,
            loss: z(c, n)?,
            correct: z(c, n)?,
            dsel: z(c, bw(n * dm.d))?,
            s,
            inference,
            rows_cap,
        })
    }

    /// Refuses token ids outside the vocabulary (they would index past the embedding).
    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.dims.vocab;
        match ids.iter().position(|&x| x as usize >= vocab) {
            Some(i) => Err(unsupported(format!("input id {} at {i} is outside the vocabulary of {vocab}", ids[i]))),
            None => Ok(()),
        }
    }

    fn check_batch(&self, acts: &GpuActivations, ids: &[u32], targets: &[i64]) -> Result<()> {
        let n = acts.b * acts.t;
        let bad = |what: String| {
            Err(Error::Op(gla_core::Error::ShapeMismatch {
                op: "gpu forward",
                tensor: "batch",
                expected: what,
                numel: n,
                got: ids.len().min(targets.len()),
            }))
        };
        if ids.len() != n || targets.len() != n {
            return bad(format!("input_ids and targets of [B={}, T={}]", acts.b, acts.t));
        }
        self.check_ids(ids)?;
        let vocab = self.dims.vocab;
        if let Some(i) = targets.iter().position(|&x| x != IGNORE_INDEX && !(0..vocab as i64).contains(&x)) {
            return Err(unsupported(format!("label {} at {i} is outside the vocabulary of {vocab}", targets[i])));
        }
        Ok(())
    }

    /// Forward of a `[B, T]` batch (see `GlaModel::forward`: same inputs, same result up to
    /// bf16 rounding); leaves the backward's inputs in `acts`. Synchronises once to read the loss.
    ///
    /// # Errors
    /// Bad ids or targets ([`Error::Op`]); [`Error::Driver`], [`Error::Launch`], [`Error::Blas`].
    pub fn forward(&self, acts: &mut GpuActivations, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        self.forward_with(acts, ids, targets, None)
    }

    /// [`GpuModel::forward`] carrying inference state: each of the B sequences starts from its
    /// recurrent states `ctx.h0` and conv caches and leaves its final ones in `ctx.ht` and the
    /// caches (T = 1 takes the recurrent kernel, as fla's decode does).
    fn forward_with(&self, acts: &mut GpuActivations, ids: &[u32], targets: &[i64], ctx: Option<&mut InferCtx>) -> Result<LossOut> {
        self.check_batch(acts, ids, targets)?;
        self.wait_reduced("waiting for the gradient all-reduce")?;
        if let Some(x) = &ctx {
            if x.h0.len() != self.dims.layers || x.ht.len() != self.dims.layers || x.conv.len() != self.dims.layers {
                return Err(unsupported(format!("inference state for {} layers, model has {}", x.h0.len(), self.dims.layers)));
            }
        }
        self.cuda.stream().memcpy_htod(ids, &mut acts.ids).map_err(Error::driver("upload ids"))?;
        if !acts.inference {
            self.upload_embedding_segments(acts, ids)?;
        }
        self.body(acts, ctx.map(InferIo::Batch))?;
        self.loss_head(acts, targets)
    }

    /// The embedding backward's schedule for `ids` (the kernel's contract): the rows sorted by
    /// token, stably, and each token's segment of them, the padding token's left out. Built on
    /// the host, where the ids are, so that every embedding row's gradient is summed in row
    /// order by one block (bitwise repeatable; no atomics).
    fn upload_embedding_segments(&self, acts: &mut GpuActivations, ids: &[u32]) -> Result<()> {
        let mut order: Vec<i32> = (0..ids.len() as i32).collect();
        order.sort_by_key(|&r| ids[r as usize]);
        let (mut start, mut tok) = (Vec::new(), Vec::new());
        let mut kept = Vec::with_capacity(order.len());
        for &r in &order {
            let id = ids[r as usize];
            if self.dims.pad == Some(id as usize) {
                continue;
            }
            if tok.last() != Some(&id) {
                start.push(kept.len() as i32);
                tok.push(id);
            }
            kept.push(r);
        }
        start.push(kept.len() as i32);
        let st = self.cuda.stream();
        let s = &mut acts.s;
        s.emb_nseg = tok.len();
        if !kept.is_empty() {
            st.memcpy_htod(&kept, &mut s.emb_order.slice_mut(0..kept.len())).map_err(Error::driver("upload embedding rows"))?;
            st.memcpy_htod(&tok, &mut s.emb_tok.slice_mut(0..tok.len())).map_err(Error::driver("upload embedding tokens"))?;
        }
        st.memcpy_htod(&start, &mut s.emb_start.slice_mut(0..start.len())).map_err(Error::driver("upload embedding segments"))
    }

    /// The decode step's device work, from the ids already in `acts.ids` to the logits of every
    /// row in `acts.logits` (`acts.m = B`): nothing but kernel launches and GEMMs on the stream,
    /// so it can be captured in a CUDA graph. Each sequence's state is read and updated in place
    /// through the table at `table` ([`InferIo::Table`]).
    ///
    /// # Safety
    /// As [`ops::gla_decode`]: `table` holds `[L][4][B]` addresses of live, distinct state
    /// buffers of the sizes [`GpuDecoder::state_bytes`] counts (0 for absent conv caches).
    unsafe fn decode_body(&self, acts: &mut GpuActivations, table: u64) -> Result<()> {
        let b = acts.b;
        self.body(acts, Some(InferIo::Table { addr: table, b }))?;
        let c = &*self.cuda;
        acts.m = b;
        let (lg, xf) = (ptr(c, &acts.logits), ptr(c, &acts.xf));
        self.gemm.fwd(lg, Ty::F32, xf, self.wp(self.lm_head_id()), b, self.dims.d, self.dims.vocab, 0.0)
    }

    /// Embedding, every block and the final norm (into `acts.xf`) from the ids in `acts.ids`,
    /// starting each sequence from the inference state in `io` when given.
    fn body(&self, acts: &mut GpuActivations, mut io: Option<InferIo<'_>>) -> Result<()> {
        let c = &*self.cuda;
        let st = c.stream();
        let dm = &self.dims;
        let pl = self.plan;
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let (d, nn) = (dm.d, n as i64);
        let (di, ni) = (d as i32, n as i64);
        if matches!(io, Some(InferIo::Table { .. })) && t != 1 {
            return Err(unsupported(format!("the decode step takes one token per sequence, got T = {t}")));
        }
        let (x0, idp, emb) = (ptr(c, &acts.xs[0]), ptr(c, &acts.ids), self.mp(self.layout.embeddings));
        launch!(self, "embedding_fwd", rows_block(n), x0, idp, emb, nn, di);
        let eps = dm.eps;
        for (l, il) in self.layout.layers.iter().enumerate() {
            let (li, xi, xo) = (acts.li(l), acts.xi(l), acts.xi(l + 1));
            let x = ptr(c, &acts.xs[xi]);
            let x_out = ptr(c, &acts.xs[xo]);
            let a = &mut acts.layers[li];
            let (xn1, rstd1) = (ptr(c, &a.xn1), ptr(c, &a.rstd1));
            let wn = self.mp(il.attn_norm);
            launch!(self, "rmsnorm_fwd", rows_warp(n), xn1, rstd1, x, wn, ni, di, eps);
            let g = &self.gemm;
            g.fwd(ptr(c, &a.q_lin), Ty::Bf16, xn1, self.wp(il.q_proj), n, d, dm.key_dim, 0.0)?;
            g.fwd(ptr(c, &a.k_lin), Ty::Bf16, xn1, self.wp(il.k_proj), n, d, dm.key_dim_kv, 0.0)?;
            g.fwd(ptr(c, &a.v_lin), Ty::Bf16, xn1, self.wp(il.v_proj), n, d, dm.value_dim_kv, 0.0)?;
            if let (Some(cv), Some(qc), Some(kc), Some(vc)) = (&a.conv, il.q_conv, il.k_conv, il.v_conv) {
                for (i, (src, w, ch)) in
                    [(&a.q_lin, qc, dm.key_dim), (&a.k_lin, kc, dm.key_dim_kv), (&a.v_lin, vc, dm.value_dim_kv)].into_iter().enumerate()
                {
                    let (y, pre, xs, wp) = (ptr(c, &cv[3 + i]), ptr(c, &cv[i]), ptr(c, src), self.mp(w));
                    let (ti, ci, wi, nb) = (t as i32, ch as i32, dm.conv as i32, b as i64);
                    if let Some(InferIo::Table { addr, b }) = io {
                        let tab = addr + 8 * ((l * 4 + 1 + i) * b) as u64;
                        launch!(self, "conv_decode", flat(b * ch), y, pre, xs, wp, tab, nb, ci, wi);
                        continue;
                    }
                    let cache = match &io {
                        Some(InferIo::Batch(x)) => x.conv[l].as_ref().map_or(0u64, |cc| ptr(c, &cc[i])),
                        _ => 0,
                    };
                    launch!(self, "conv_fwd", flat(n * ch), y, pre, xs, wp, cache, ni, ti, ci, wi);
                    if cache != 0 {
                        launch!(self, "conv_cache_update", flat(b * ch), cache, xs, nb, ti, ci, wi);
                    }
                }
            }
            if let (Some(gp), Some(gw)) = (&a.g_pre, il.g_proj) {
                g.fwd(ptr(c, gp), Ty::Bf16, xn1, self.wp(gw), n, d, dm.value_dim, 0.0)?;
            }
            g.fwd(ptr(c, &a.gk_lr), Ty::Bf16, xn1, self.wp(il.gk0), n, d, dm.gate_rank, 0.0)?;
            g.fwd(ptr(c, &a.gk_raw), Ty::F32, ptr(c, &a.gk_lr), self.wp(il.gk1), n, dm.gate_rank, dm.key_dim_kv, 0.0)?;
            {
                let (gk, raw, bias) = (ptr(c, &a.gk), ptr(c, &a.gk_raw), self.mp(il.gk1_bias));
                let (ci, norm, hc, cm) =
                    (dm.key_dim_kv as i32, dm.gate_norm, i32::from(dm.clamp_min.is_some()), dm.clamp_min.unwrap_or(0.0));
                launch!(self, "gate_fwd", flat(n * dm.key_dim_kv), gk, raw, bias, ni, ci, norm, hc, cm);
            }
            // repeats to the op's heads
            let kv = dm.kv_heads as i32;
            if let Some(qr) = &a.q_rep {
                let (o, src, hh, r, e) =
                    (ptr(c, qr), ptr(c, a.conv.as_ref().map_or(&a.q_lin, |cv| &cv[3])), dm.heads as i32, pl.rq as i32, dm.head_k as i32);
                launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim * pl.rq), o, src, ni, hh, r, e);
            }
            if let (Some(kr), Some(gr)) = (&a.k_rep, &a.gk_rep) {
                let (r, e) = (pl.rk as i32, dm.head_k as i32);
                let (o, src) = (ptr(c, kr), ptr(c, a.k_src()));
                launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim_kv * pl.rk), o, src, ni, kv, r, e);
                let (o, src) = (ptr(c, gr), ptr(c, &a.gk));
                launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim_kv * pl.rk), o, src, ni, kv, r, e);
            }
            if let Some(vr) = &a.v_rep {
                let (o, src, r, e) = (ptr(c, vr), ptr(c, a.v_src()), pl.rv as i32, dm.head_v as i32);
                launch!(self, "repeat_heads_bf16", flat(n * dm.value_dim), o, src, ni, kv, r, e);
            }
            let x_in = DevInputs { q: a.q(), k: a.k(), v: a.v(), g: Some(a.gk()), h0: None };
            match &mut io {
                None => ops::gla_fwd(c, FwdKernel::Chunk, &acts.prob, &x_in, &mut acts.o[li], None)?,
                Some(InferIo::Batch(x)) => {
                    let which = if t == 1 { FwdKernel::Recurrent } else { FwdKernel::Chunk };
                    let x_in = DevInputs { h0: Some(&x.h0[l]), ..x_in };
                    ops::gla_fwd(c, which, &acts.prob, &x_in, &mut acts.o[li], Some(&mut x.ht[l]))?;
                }
                Some(InferIo::Table { addr, b }) => {
                    let tab = *addr + 8 * (l * 4 * *b) as u64;
                    // SAFETY: the table's entries for layer l are the recurrent states of the B
                    // sequences (decode_body's contract)
                    unsafe { ops::gla_decode(c, &acts.prob, &x_in, tab, *b, &mut acts.o[li])? };
                }
            }
            if sync_debug() {
                c.stream().synchronize().map_err(Error::driver("GLA forward (GLA_SYNC_DEBUG)"))?;
            }
            {
                let (on, ro, o) = (ptr(c, &a.on), ptr(c, &a.rstd_o), ptr(c, &acts.o[li]));
                let gpre = a.g_pre.as_ref().map_or(0u64, |g| ptr(c, g));
                let (w, rows, v) = (self.mp(il.g_norm), (n * dm.heads) as i64, dm.head_v as i32);
                launch!(self, "gated_norm_fwd", rows_warp(n * dm.heads), on, ro, o, gpre, w, rows, v, eps);
            }
            // x_mid = x + o_proj(on)
            st.memcpy_dtod(&acts.xs[xi], &mut a.x_mid).map_err(Error::driver("copy residual"))?;
            let x_mid = ptr(c, &a.x_mid);
            g.fwd(x_mid, Ty::F32, ptr(c, &a.on), self.wp(il.o_proj), n, dm.value_dim, d, 1.0)?;
            let (xn2, rstd2, wn2) = (ptr(c, &a.xn2), ptr(c, &a.rstd2), self.mp(il.mlp_norm));
            launch!(self, "rmsnorm_fwd", rows_warp(n), xn2, rstd2, x_mid, wn2, ni, di, eps);
            let (ap, bp, hp) = (ptr(c, &a.a), ptr(c, &a.b), ptr(c, &a.h));
            g.fwd(ap, Ty::Bf16, xn2, self.wp(il.gate_proj), n, d, dm.intermediate, 0.0)?;
            g.fwd(bp, Ty::Bf16, xn2, self.wp(il.up_proj), n, d, dm.intermediate, 0.0)?;
            let ne = (n * dm.intermediate) as i64;
            launch!(self, "swiglu_fwd", flat(n * dm.intermediate), hp, ap, bp, ne);
            // x_out = x_mid + down(h)
            st.memcpy_dtod(&a.x_mid, &mut acts.xs[xo]).map_err(Error::driver("copy residual"))?;
            g.fwd(x_out, Ty::F32, hp, self.wp(il.down_proj), n, dm.intermediate, d, 1.0)?;
        }
        let (xf, rf, xl, wn) = (ptr(c, &acts.xf), ptr(c, &acts.rstdf), ptr(c, &acts.xs[acts.xi(dm.layers)]), self.mp(self.layout.norm));
        launch!(self, "rmsnorm_fwd", rows_warp(n), xf, rf, xl, wn, ni, di, eps);
        Ok(())
    }

    /// The lm_head and the loss on the labelled rows of the last [`GpuModel::body`];
    /// synchronises once to read the loss.
    fn loss_head(&self, acts: &mut GpuActivations, targets: &[i64]) -> Result<LossOut> {
        let c = &*self.cuda;
        let st = c.stream();
        let dm = &self.dims;
        let (d, di) = (dm.d, dm.d as i32);
        let xf = ptr(c, &acts.xf);
        // labelled rows only reach the lm_head
        let mut rows = Vec::new();
        let mut tg = Vec::new();
        for (r, &x) in targets.iter().enumerate() {
            if x != IGNORE_INDEX {
                rows.push(r as i32);
                tg.push(x as u32);
            }
        }
        let m = rows.len();
        if m > acts.rows_cap {
            // inference activations hold the lm_head rows of one position per sequence
            return Err(unsupported(format!("{m} labelled rows; these activations take at most {}", acts.rows_cap)));
        }
        acts.m = m;
        if m == 0 {
            return Ok(LossOut { loss: 0.0, n_valid: 0, correct: 0 });
        }
        st.memcpy_htod(&rows, &mut acts.rows.slice_mut(0..m)).map_err(Error::driver("upload rows"))?;
        st.memcpy_htod(&tg, &mut acts.targets.slice_mut(0..m)).map_err(Error::driver("upload targets"))?;
        let (sel, rp, mi) = (ptr(c, &acts.xf_sel), ptr(c, &acts.rows), m as i64);
        launch!(self, "gather_rows_bf16", rows_block(m), sel, xf, rp, mi, di);
        let lg = ptr(c, &acts.logits);
        self.gemm.fwd(lg, Ty::F32, sel, self.wp(self.lm_head_id()), m, d, dm.vocab, 0.0)?;
        let (dl, lp, cp, tp, vi, ds) =
            (ptr(c, &acts.dlogits), ptr(c, &acts.loss), ptr(c, &acts.correct), ptr(c, &acts.targets), dm.vocab as i32, 1.0f32 / m as f32);
        launch!(self, "cross_entropy", rows_block(m), dl, lp, cp, lg, tp, mi, vi, ds);
        let loss = st.clone_dtoh(&acts.loss.slice(0..m)).map_err(Error::driver("download loss"))?;
        let correct = st.clone_dtoh(&acts.correct.slice(0..m)).map_err(Error::driver("download accuracy"))?;
        let sum: f64 = loss.iter().map(|&x| f64::from(x)).sum();
        Ok(LossOut { loss: sum / m as f64, n_valid: m, correct: correct.iter().filter(|&&x| x != 0).count() })
    }

    /// Backward of the last [`GpuModel::forward`] on `acts`: accumulates `scale * d(mean loss)`
    /// into the device gradient arena (see `GlaModel::backward`).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`], [`Error::Blas`], [`Error::Op`].
    pub fn backward(&mut self, acts: &mut GpuActivations, scale: f32) -> Result<()> {
        self.backward_impl(acts, scale, false)
    }

    /// [`GpuModel::backward`] that also sums the gradient arena over the ranks of the attached
    /// communicator (plain backward without one): each bucket is queued on the communicator's
    /// stream as soon as the backward has finished it. Call it for the last micro-batch of a
    /// step; [`GpuModel::adamw_step`] waits for the sums (with the communicator's timeout).
    ///
    /// # Errors
    /// As [`GpuModel::backward`]; [`Error::Nccl`].
    pub fn backward_and_reduce(&mut self, acts: &mut GpuActivations, scale: f32) -> Result<()> {
        self.backward_impl(acts, scale, true)
    }

    fn backward_impl(&mut self, acts: &mut GpuActivations, scale: f32, reduce: bool) -> Result<()> {
        self.trainable("backward")?;
        if acts.inference {
            return Err(unsupported("backward through activations made for inference (GpuModel::inference_activations)".into()));
        }
        // a previous step's sums must be complete before this backward accumulates into them
        self.wait_reduced("waiting for the gradient all-reduce")?;
        let reduce = reduce && self.sync.is_some();
        let body = self.backward_body(acts, scale, reduce);
        if let (true, Some(s)) = (reduce, &self.sync) {
            // the model's stream (grad_norm, AdamW, the next step's zeroing, freeing the arena)
            // runs after the sums, also when the body failed half-way with some all-reduces
            // already queued on the communication stream
            let join = s
                .done
                .record(s.comm.stream())
                .and_then(|()| self.cuda.stream().wait(&s.done))
                .map_err(Error::driver("order the model stream after the all-reduces"));
            s.pending.store(true, Ordering::SeqCst);
            body?;
            return join;
        }
        body
    }

    /// The backward's launches ([`GpuModel::backward_impl`]), queuing each gradient bucket's
    /// all-reduce as soon as it is final when `reduce`.
    fn backward_body(&self, acts: &mut GpuActivations, scale: f32, reduce: bool) -> Result<()> {
        let at = |me: &Self, point: usize| if reduce { me.reduce_point(point) } else { Ok(()) };
        let c = &*self.cuda.clone();
        let st = c.stream();
        let dm = self.dims.clone();
        let pl = self.plan;
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let d = dm.d;
        let (ni, di) = (n as i64, d as i32);
        let m = acts.m;
        let GpuActivations { xs, layers, o: outs, rstdf, xf_sel, dlogits, dsel, rows, prob, s, .. } = acts;
        let g = &self.gemm;
        // lm_head: dsel = dlogits @ W (scaled when scattered into dxn), dW += scale * dlogits^T
        // xf_sel (scale as the GEMM's alpha); dlogits itself holds d(mean loss)/d logits
        st.memset_zeros(&mut s.dxn).map_err(Error::driver("zero dxn"))?;
        if m > 0 {
            let lm = self.lm_head_id();
            g.bwd_x(ptr(c, dsel), Ty::F32, ptr(c, dlogits), self.wp(lm), m, d, dm.vocab, 0.0)?;
            g.bwd_w_scaled(self.gp(lm), ptr(c, dlogits), ptr(c, xf_sel), m, d, dm.vocab, scale)?;
            let (dx, sp, rp, mi) = (ptr(c, &s.dxn), ptr(c, dsel), ptr(c, rows), m as i64);
            launch!(self, "scatter_rows_f32", rows_block(m), dx, sp, rp, mi, di, scale);
        }
        let (dres, dxn) = (ptr(c, &s.dres), ptr(c, &s.dxn));
        {
            let (xl, rf, w, zero) = (ptr(c, &xs[dm.layers]), ptr(c, rstdf), self.mp(self.layout.norm), 0i32);
            launch!(self, "rmsnorm_bwd_dx", rows_warp(n), dres, dxn, xl, rf, w, ni, di, zero);
            let (dw, part) = (self.gp(self.layout.norm), ptr(c, &s.part));
            launch!(self, "rmsnorm_bwd_dw", cols(n, d), part, dxn, xl, rf, ni, di);
            self.finalize_cols(dw, part, n, d)?;
        }
        at(self, 0)?;
        let dres16 = ptr(c, &s.dres16);
        let nd = (n * d) as i64;
        for (l, il) in self.layout.layers.iter().enumerate().rev() {
            let a = &layers[l];
            let x = ptr(c, &xs[l]);
            // mlp: out = x_mid + down(h)
            launch!(self, "cast_f32_bf16", flat(n * d), dres16, dres, nd);
            let (dh, da, db) = (ptr(c, &s.dh), ptr(c, &s.da), ptr(c, &s.db));
            g.bwd_x(dh, Ty::F32, dres16, self.wp(il.down_proj), n, dm.intermediate, d, 0.0)?;
            g.bwd_w(self.gp(il.down_proj), dres16, ptr(c, &a.h), n, dm.intermediate, d)?;
            let (ap, bp, ne) = (ptr(c, &a.a), ptr(c, &a.b), (n * dm.intermediate) as i64);
            launch!(self, "swiglu_bwd", flat(n * dm.intermediate), da, db, dh, ap, bp, ne);
            let xn2 = ptr(c, &a.xn2);
            g.bwd_x(dxn, Ty::F32, da, self.wp(il.gate_proj), n, d, dm.intermediate, 0.0)?;
            g.bwd_x(dxn, Ty::F32, db, self.wp(il.up_proj), n, d, dm.intermediate, 1.0)?;
            g.bwd_w(self.gp(il.gate_proj), da, xn2, n, d, dm.intermediate)?;
            g.bwd_w(self.gp(il.up_proj), db, xn2, n, d, dm.intermediate)?;
            {
                let (xm, r2, w, one) = (ptr(c, &a.x_mid), ptr(c, &a.rstd2), self.mp(il.mlp_norm), 1i32);
                launch!(self, "rmsnorm_bwd_dx", rows_warp(n), dres, dxn, xm, r2, w, ni, di, one);
                let (dw, part) = (self.gp(il.mlp_norm), ptr(c, &s.part));
                launch!(self, "rmsnorm_bwd_dw", cols(n, d), part, dxn, xm, r2, ni, di);
                self.finalize_cols(dw, part, n, d)?;
            }
            // attention: x_mid = x + o_proj(on)
            launch!(self, "cast_f32_bf16", flat(n * d), dres16, dres, nd);
            let d_on = ptr(c, &s.d_on);
            g.bwd_x(d_on, Ty::F32, dres16, self.wp(il.o_proj), n, dm.value_dim, d, 0.0)?;
            g.bwd_w(self.gp(il.o_proj), dres16, ptr(c, &a.on), n, dm.value_dim, d)?;
            {
                let (dop, o, ro, w) = (ptr(c, &s.d_o), ptr(c, &outs[l]), ptr(c, &a.rstd_o), self.mp(il.g_norm));
                let dgp = s.dg_pre.as_ref().map_or(0u64, |x| ptr(c, x));
                let gpre = a.g_pre.as_ref().map_or(0u64, |x| ptr(c, x));
                let (rws, v) = ((n * dm.heads) as i64, dm.head_v as i32);
                launch!(self, "gated_norm_bwd_dx", rows_warp(n * dm.heads), dop, dgp, d_on, o, gpre, ro, w, rws, v);
                let (dw, part) = (self.gp(il.g_norm), ptr(c, &s.part));
                launch!(self, "gated_norm_bwd_dw", cols(n * dm.heads, dm.head_v), part, d_on, o, gpre, ro, rws, v);
                self.finalize_cols(dw, part, n * dm.heads, dm.head_v)?;
            }
            let x_in = DevInputs { q: a.q(), k: a.k(), v: a.v(), g: Some(a.gk()), h0: None };
            let gr = if ops::chunk_bwd_supported::<u16>(&prob.problem) && std::env::var_os("GLA_MODEL_RECURRENT_BWD").is_none() {
                ops::gla_bwd_chunk(c, prob, &x_in, &s.d_o, None, false)?
            } else {
                ops::gla_bwd(c, prob, &x_in, &s.d_o, None)?
            };
            if sync_debug() {
                c.stream().synchronize().map_err(Error::driver("GLA backward (GLA_SYNC_DEBUG)"))?;
            }
            // sum the repeats back: dq over value splits, dk/dg over groups and splits, dv over groups
            let kv = dm.kv_heads as i32;
            let sum_back =
                |me: &Self, out: &CudaSlice<f32>, src: &CudaSlice<f32>, heads: i32, r: usize, e: usize, len: usize| -> Result<()> {
                    let (o, sp, ri, ei) = (ptr(c, out), ptr(c, src), r as i32, e as i32);
                    launch!(me, "repeat_heads_bwd_f32", flat(len), o, sp, ni, heads, ri, ei);
                    Ok(())
                };
            let dq: &CudaSlice<f32> = match &s.dq {
                Some(buf) => {
                    sum_back(self, buf, &gr.dq, dm.heads as i32, pl.rq, dm.head_k, n * dm.key_dim)?;
                    buf
                }
                None => &gr.dq,
            };
            let (dk, dgk): (&CudaSlice<f32>, &CudaSlice<f32>) = match (&s.dk, &s.dgk) {
                (Some(kb), Some(gb)) => {
                    sum_back(self, kb, &gr.dk, kv, pl.rk, dm.head_k, n * dm.key_dim_kv)?;
                    sum_back(self, gb, &gr.dg, kv, pl.rk, dm.head_k, n * dm.key_dim_kv)?;
                    (kb, gb)
                }
                _ => (&gr.dk, &gr.dg),
            };
            let dv: &CudaSlice<f32> = match &s.dv {
                Some(buf) => {
                    sum_back(self, buf, &gr.dv, kv, pl.rv, dm.head_v, n * dm.value_dim_kv)?;
                    buf
                }
                None => &gr.dv,
            };
            // gate: gk_raw = gk_lr W1^T + b1; gk = gate(gk_raw)
            {
                let (dx, dx16, dg, raw) = (ptr(c, &s.dgk_raw), ptr(c, &s.dgk_raw16), ptr(c, dgk), ptr(c, &a.gk_raw));
                let (tot, norm, hc, cm) =
                    ((n * dm.key_dim_kv) as i64, dm.gate_norm, i32::from(dm.clamp_min.is_some()), dm.clamp_min.unwrap_or(0.0));
                launch!(self, "gate_bwd", flat(n * dm.key_dim_kv), dx, dx16, dg, raw, tot, norm, hc, cm);
                let (db1, ci, part) = (self.gp(il.gk1_bias), dm.key_dim_kv as i32, ptr(c, &s.part));
                launch!(self, "colsum_f32", cols(n, dm.key_dim_kv), part, dx, ni, ci);
                self.finalize_cols(db1, part, n, dm.key_dim_kv)?;
            }
            let (dgr16, dglr) = (ptr(c, &s.dgk_raw16), ptr(c, &s.dgk_lr));
            g.bwd_w(self.gp(il.gk1), dgr16, ptr(c, &a.gk_lr), n, dm.gate_rank, dm.key_dim_kv)?;
            g.bwd_x(dglr, Ty::Bf16, dgr16, self.wp(il.gk1), n, dm.gate_rank, dm.key_dim_kv, 0.0)?;
            // short conv (or a bf16 copy for the GEMMs)
            let (dq16, dk16, dv16) = (ptr(c, &s.dq16), ptr(c, &s.dk16), ptr(c, &s.dv16));
            let ins = [
                (dq16, dq, il.q_conv, dm.key_dim, &a.q_lin, 0usize),
                (dk16, dk, il.k_conv, dm.key_dim_kv, &a.k_lin, 1),
                (dv16, dv, il.v_conv, dm.value_dim_kv, &a.v_lin, 2),
            ];
            for (out, dy, conv_id, ch, x_lin, i) in ins {
                let (dyp, len) = (ptr(c, dy), (n * ch) as i64);
                match (conv_id, &a.conv) {
                    (Some(wid), Some(cv)) => {
                        let (pre, xl, w, ti, ci, wi) = (ptr(c, &cv[i]), ptr(c, x_lin), self.mp(wid), t as i32, ch as i32, dm.conv as i32);
                        launch!(self, "conv_bwd_dx", flat(n * ch), out, dyp, pre, w, ni, ti, ci, wi);
                        let (dw, part) = (self.gp(wid), ptr(c, &s.part));
                        launch!(self, "conv_bwd_dw", cols(n, ch), part, dyp, pre, xl, ni, ti, ci, wi);
                        self.finalize_cols(dw, part, n, ch * dm.conv)?;
                    }
                    _ => launch!(self, "cast_f32_bf16", flat(n * ch), out, dyp, len),
                }
            }
            // projections from xn1
            let xn1 = ptr(c, &a.xn1);
            g.bwd_x(dxn, Ty::F32, dq16, self.wp(il.q_proj), n, d, dm.key_dim, 0.0)?;
            g.bwd_x(dxn, Ty::F32, dk16, self.wp(il.k_proj), n, d, dm.key_dim_kv, 1.0)?;
            g.bwd_x(dxn, Ty::F32, dv16, self.wp(il.v_proj), n, d, dm.value_dim_kv, 1.0)?;
            g.bwd_x(dxn, Ty::F32, dglr, self.wp(il.gk0), n, d, dm.gate_rank, 1.0)?;
            g.bwd_w(self.gp(il.q_proj), dq16, xn1, n, d, dm.key_dim)?;
            g.bwd_w(self.gp(il.k_proj), dk16, xn1, n, d, dm.key_dim_kv)?;
            g.bwd_w(self.gp(il.v_proj), dv16, xn1, n, d, dm.value_dim_kv)?;
            g.bwd_w(self.gp(il.gk0), dglr, xn1, n, d, dm.gate_rank)?;
            if let (Some(gw), Some(dgp)) = (il.g_proj, &s.dg_pre) {
                g.bwd_x(dxn, Ty::F32, ptr(c, dgp), self.wp(gw), n, d, dm.value_dim, 1.0)?;
                g.bwd_w(self.gp(gw), ptr(c, dgp), xn1, n, d, dm.value_dim)?;
            }
            {
                let (r1, w, one) = (ptr(c, &a.rstd1), self.mp(il.attn_norm), 1i32);
                launch!(self, "rmsnorm_bwd_dx", rows_warp(n), dres, dxn, x, r1, w, ni, di, one);
                let (dw, part) = (self.gp(il.attn_norm), ptr(c, &s.part));
                launch!(self, "rmsnorm_bwd_dw", cols(n, d), part, dxn, x, r1, ni, di);
                self.finalize_cols(dw, part, n, d)?;
            }
            at(self, dm.layers - l)?;
        }
        {
            let dwte = self.gp(self.layout.embeddings);
            let (order, start, tok, nseg) = (ptr(c, &s.emb_order), ptr(c, &s.emb_start), ptr(c, &s.emb_tok), s.emb_nseg as i32);
            launch!(self, "embedding_bwd", rows_block(s.emb_nseg), dwte, dres, order, start, tok, nseg, di);
        }
        at(self, dm.layers + 1)?;
        Ok(())
    }

    /// Global gradient norm (f64 accumulation); synchronises (after a
    /// [`GpuModel::backward_and_reduce`], on the gradients summed over the ranks).
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn grad_norm(&mut self) -> Result<f64> {
        self.trainable("gradient norm")?;
        let st = self.cuda.stream().clone();
        // per-block partial sums after the result slot, added in block order (bitwise repeatable)
        let cfg = flat(self.grads.len());
        let blocks = cfg.grid_dim.0 as i32;
        let (o, gp, nn) = (ptr(&self.cuda, &self.norm_buf), ptr(&self.cuda, &self.grads), self.grads.len() as i64);
        let part = o + 8;
        launch!(self, "sumsq", cfg, part, gp, nn);
        launch!(self, "sum_f64", LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 }, o, part, blocks);
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
            let st = self.cuda.stream();
            let m = st.alloc_zeros::<f32>(self.layout.numel).map_err(Error::driver("alloc AdamW m"))?;
            let v = st.alloc_zeros::<f32>(self.layout.numel).map_err(Error::driver("alloc AdamW v"))?;
            self.moments = Some(Moments { m, v, step: 0 });
        }
        let Some(mo) = self.moments.as_mut() else { unreachable!("set above") };
        mo.step += 1;
        let step = mo.step as i32;
        let (mp, vp) = (ptr(&self.cuda, &mo.m), ptr(&self.cuda, &mo.v));
        let (bc1, bc2) = (1.0 - cfg.beta1.powi(step), 1.0 - cfg.beta2.powi(step));
        for spec in &self.layout.specs {
            let off = spec.offset as u64;
            let (p, p16, g) =
                (ptr(&self.cuda, &self.master) + 4 * off, ptr(&self.cuda, &self.w16) + 2 * off, ptr(&self.cuda, &self.grads) + 4 * off);
            let (m, v, n) = (mp + 4 * off, vp + 4 * off, spec.numel() as i64);
            let wd = if spec.shape.len() >= 2 { cfg.weight_decay } else { 0.0 };
            let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.eps);
            launch!(self, "adamw", flat(spec.numel()), p, p16, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2, gscale);
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
        let st = self.cuda.stream();
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
        let st = self.cuda.stream();
        let m = st.clone_htod(m).map_err(Error::driver("upload AdamW m"))?;
        let v = st.clone_htod(v).map_err(Error::driver("upload AdamW v"))?;
        self.moments = Some(Moments { m, v, step });
        Ok(())
    }
}

/// The GPU as a training [`gla_model::Engine`]: a [`GpuModel`] and its activations for one batch
/// shape, driven by `gla_model::Trainer` (`gla train --device cuda`). With a communicator
/// ([`GpuEngine::with_comm`]) it is one rank of a data-parallel run and follows the engine
/// contract for that: statistics of the global batch, gradients summed over the ranks.
pub struct GpuEngine {
    model: GpuModel,
    acts: GpuActivations,
    /// Labelled positions of the last forward: this rank's and the global batch's.
    valid: (usize, usize),
}

impl GpuEngine {
    /// Uploads `model` (weights) and, when `opt` has taken steps, its AdamW moments; buffers for
    /// `[b, t]` batches.
    ///
    /// # Errors
    /// As [`GpuModel::new`] and [`GpuModel::activations`].
    pub fn new(cuda: Arc<Cuda>, model: &GlaModel, opt: &gla_model::optim::AdamW, b: usize, t: usize) -> Result<Self> {
        let mut gpu = GpuModel::new(cuda, model)?;
        if opt.step > 0 {
            gpu.set_moments(&opt.m, &opt.v, opt.step)?;
        }
        let acts = gpu.activations(b, t)?;
        Ok(Self { model: gpu, acts, valid: (0, 0) })
    }

    /// Makes the engine one rank of a data-parallel run over `comm` (see
    /// [`GpuModel::attach_comm`]); `b` of [`GpuEngine::new`] is then this rank's share of the
    /// global batch.
    ///
    /// # Errors
    /// As [`GpuModel::attach_comm`].
    pub fn with_comm(mut self, comm: Comm) -> Result<Self> {
        self.model.attach_comm(comm)?;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }
}

fn dev(e: Error) -> gla_model::Error {
    gla_model::Error::Device(e.to_string())
}

impl gla_model::Engine for GpuEngine {
    fn name(&self) -> String {
        let c = &self.model.cuda;
        match self.model.comm() {
            Some(comm) => format!("cuda:{} ({}), rank {} of {} (NCCL)", c.name(), c.arch(), comm.rank(), comm.world()),
            None => format!("cuda:{} ({})", c.name(), c.arch()),
        }
    }
    fn forward(&mut self, ids: &[u32], targets: &[i64]) -> gla_model::Result<LossOut> {
        let out = self.model.forward(&mut self.acts, ids, targets).map_err(dev)?;
        if self.model.comm().is_none() {
            self.valid = (out.n_valid, out.n_valid);
            return Ok(out);
        }
        let mut s = [out.loss * out.n_valid as f64, out.n_valid as f64, out.correct as f64];
        self.model.all_reduce_host(&mut s).map_err(dev)?;
        let total = s[1] as usize;
        self.valid = (out.n_valid, total);
        Ok(LossOut { loss: s[0] / s[1].max(1.0), n_valid: total, correct: s[2] as usize })
    }
    fn backward(&mut self, scale: f32, last: bool) -> gla_model::Result<()> {
        // d(global mean)/d(this rank's mean) = this rank's share of the labelled positions;
        // summed over the ranks, the scaled gradients are those of the global batch
        let (mine, total) = self.valid;
        let scale = if mine == total { scale } else { scale * mine as f32 / total.max(1) as f32 };
        if last {
            self.model.backward_and_reduce(&mut self.acts, scale).map_err(dev)
        } else {
            self.model.backward(&mut self.acts, scale).map_err(dev)
        }
    }
    fn zero_grads(&mut self) -> gla_model::Result<()> {
        self.model.zero_grads().map_err(dev)
    }
    fn update(&mut self, cfg: &AdamWConfig, lr: f32, clip: f32) -> gla_model::Result<f64> {
        self.model.adamw_step(cfg, lr, clip).map_err(dev)
    }
    fn download(&self, model: &mut GlaModel, opt: &mut gla_model::optim::AdamW) -> gla_model::Result<()> {
        let host = self.model.to_host().map_err(dev)?;
        model.params = host.params;
        if let Some((m, v, step)) = self.model.moments_to_host().map_err(dev)? {
            opt.m = m;
            opt.v = v;
            opt.step = step;
        }
        Ok(())
    }
}

/// Inference state of B sequences on the device, per layer: the recurrent states entering the
/// step (`h0`) and leaving it (`ht`), `[B, Hop, K, Vop]` f32 at the op's heads (value splits),
/// and the three conv caches `[B, C, W]` f32 (with short conv), updated in place.
struct InferCtx {
    h0: Vec<CudaSlice<f32>>,
    ht: Vec<CudaSlice<f32>>,
    conv: Vec<Option<[CudaSlice<f32>; 3]>>,
}

/// Where the sequences of a forward keep their inference state.
enum InferIo<'a> {
    /// Batch buffers (prefill): per layer `h0`/`ht` and conv caches `[B, C, W]`.
    Batch(&'a mut InferCtx),
    /// Decode (T = 1): each sequence's own [`GpuState`] buffers, updated in place, found through
    /// the device table at `addr`: `[L][4][B]` addresses (the recurrent state, then the q, k, v
    /// conv caches, 0 without short conv).
    Table { addr: u64, b: usize },
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

/// Tokens per prefill forward when prompts of the same length run together (bounds the
/// inference activations at about 45 KB a token for a 340M model).
const PREFILL_TOKENS: usize = 8192;

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

/// Whether decode steps may run as CUDA graphs (`GLA_NO_GRAPH=1` turns them off, to compare or
/// to rule them out).
pub(crate) fn graphs_enabled() -> bool {
    std::env::var_os("GLA_NO_GRAPH").is_none_or(|v| v.is_empty() || v == "0") && !sync_debug()
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
        let st = self.model.cuda.stream();
        let z = |len: usize| st.alloc_zeros::<f32>(len.max(1)).map_err(Error::driver("alloc generation state"));
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
        let c = &*self.model.cuda;
        let (rec, conv) = self.state_sizes();
        let layers = self.model.dims.layers;
        self.check_states(states)?;
        if ids.len() != b * t || states.len() != b {
            return Err(unsupported(format!("{} ids and {} states for a [{b}, {t}] step", ids.len(), states.len())));
        }
        let st = c.stream();
        let z = |len: usize| st.alloc_zeros::<f32>(len.max(1)).map_err(Error::driver("alloc batch state"));
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
        // logits of each sequence's last position only: it alone carries a (dummy) target
        let mut targets = vec![IGNORE_INDEX; b * t];
        for i in 0..b {
            targets[i * t + t - 1] = 0;
        }
        self.model.forward_with(acts, ids, &targets, Some(&mut ctx))?;
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

    /// Feeds each prompt and returns the logits of its last position. Prompts of the same
    /// length run together, as `[B, w]` forwards over windows of `w` tokens
    /// ([`PREFILL_TOKENS`] per forward at most, and at most `PREFILL_WINDOW` per sequence);
    /// the others one by one.
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
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, p) in prompts.iter().enumerate() {
            groups.entry(p.len()).or_default().push(i);
        }
        // a group's forward holds 2 x L batch copies of its states (h0, ht): bound them too
        let max_b = (PREFILL_TOKENS / 64).min((PREFILL_STATE_BYTES / (2 * self.state_bytes().max(1))).max(1));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
        let mut acts: Option<GpuActivations> = None;
        for (len, members) in groups {
            for group in members.chunks(max_b) {
                let b = group.len();
                // the activations (and the logits buffer) stay bounded whatever the lengths
                let w = (PREFILL_TOKENS / b).clamp(64, gla_model::infer::PREFILL_WINDOW);
                let mut sref: Vec<&mut GpuState> =
                    states.iter_mut().enumerate().filter(|(i, _)| group.contains(i)).map(|(_, s)| &mut **s).collect();
                let mut last = Vec::new();
                for start in (0..len).step_by(w) {
                    let end = (start + w).min(len);
                    if acts.as_ref().is_none_or(|a| a.shape() != (b, end - start)) {
                        drop(acts.take()); // free the previous set before allocating the next
                        acts = Some(self.model.inference_activations(b, end - start)?);
                    }
                    let Some(a) = acts.as_mut() else { unreachable!("set above") };
                    let ids: Vec<u32> = group.iter().flat_map(|&i| prompts[i][start..end].iter().copied()).collect();
                    last = self.step(a, &ids, &mut sref)?;
                }
                // `group` is in index order, as `sref` and so `last`
                for (&i, l) in group.iter().zip(last) {
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
        let c = &*self.model.cuda;
        let st = c.stream();
        let mut slots = self.decode.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.contains_key(&b) {
            if slots.len() >= DECODE_SLOTS {
                slots.clear();
            }
            let slot = DecodeSlot {
                acts: self.model.inference_activations(b, 1)?,
                table: st.alloc_zeros::<u64>(self.model.dims.layers * 4 * b).map_err(Error::driver("alloc state table"))?,
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
        st.memcpy_htod(ids, &mut slot.acts.ids).map_err(Error::driver("upload ids"))?;
        let tab = ptr(c, &slot.table);
        if slot.graph.is_none() && slot.steps > 0 && !slot.no_graph && graphs_enabled() {
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
        let st = self.model.cuda.stream();
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
        GpuDecoder::new_state(self).map_err(dev)
    }
    fn prefill_batch(&self, prompts: &[&[u32]], states: &mut [&mut GpuState]) -> gla_model::Result<Vec<Vec<f32>>> {
        GpuDecoder::prefill_batch(self, prompts, states).map_err(dev)
    }
    fn decode_batch(&self, ids: &[u32], states: &mut [&mut GpuState]) -> gla_model::Result<Vec<Vec<f32>>> {
        GpuDecoder::decode_batch(self, ids, states).map_err(dev)
    }
}
