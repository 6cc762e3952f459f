//! The GPU backend ([`Gpu`]: gla-core's backend contract, `Primitives`, `GlaOps` and `DeltaOps`;
//! a model's layers may have different mixers (a hybrid stack), each with dims the kernels take,
//! which [`crate::GpuWeights::new`] checks: `gpu_mixers`): each op as the kernel launches
//! of `kernels/nn/*.cu` / `kernels/gla/*.cu` / `kernels/delta/*.cu` and cuBLAS GEMMs. The forward and
//! backward that call them are gla-model's (`gla_model::model` and its mixers; read those first).
//! Parameters are found by their index in the parameter table the weights came with
//! ([`gla_core::params::ParamSpec`]: offsets in the bf16 copy and in the gradient arena).
//!
//! dtypes (the mixed-precision recipe fla gets from autocast):
//! - f32 (`F32`): the residual stream `x`, the norms' `rstd`, the gate pre-activation `gk_raw`,
//!   the master weights, every parameter gradient, and every gradient that is summed from several
//!   GEMMs (`dxn`, `dres`) or leaves the GLA backward (`dq, dk, dv, dg`);
//! - bf16 (`Act`): every GEMM operand (activations, a bf16 copy of the weights refreshed by each
//!   AdamW step, and the gradients fed to GEMMs: `Primitives::cast` writes them), and q, k, v, g,
//!   o, do of the GLA kernels; the delta-rule kernels take q, k, v, o, do and bf16 copies of the
//!   beta logits and the decay input `a` (the f32 ones of the mixer are cast per call), with
//!   `A_log` and `dt_bias` in f32.
//!
//! Head dims above the tensor-core kernels' 128: a head with V = s * V' (V' <= 128) runs as s
//! heads of V' that share q, k and g (GLA is separable over the value channels; q, k, g are
//! repeated s times and their gradients summed back), the same repeat that GQA uses; the
//! repeats live in the backend's per-layer [`GpuGla`].
//!
//! The delta rule (DeltaNet, Gated DeltaNet) runs the chunked kernels of [`crate::delta::ops`]
//! for training and prefill and the decode kernel for one token per sequence; like the GLA op's,
//! its workspace is the batch plan's, shared by the layers (their launches run in order on one
//! stream), and its backward recomputes the chunk states from the inputs (as fla's does) instead
//! of keeping a workspace per layer.
//!
//! Parameter-gradient reductions are deterministic: column reductions write per-block partial
//! sums into the plan's `part` buffer that `col_finalize` adds in block order, and the embedding
//! backward sums each token's rows in row order (the schedule built on the host at upload).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaEvent, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use gla_core::backend::{
    AttnOps, AttnStorage, ConvIdx, DeltaDecay, DeltaOps, DeltaStorage, GlaOps, GlaStorage, ParamId, Primitives, Storage, IGNORE_INDEX,
};
use gla_core::dims::{AttnDims, DeltaDims, Dims, FeatureMap, GateAct, GlaDims, MixerDims};
use gla_core::params::ParamSpec;
use gla_core::{AttnProblem, DeltaProblem};
use gla_core::{GateKind, Problem, ProblemSpec};

use crate::attn::ops::{self as attn_ops, AttnDevGrads, AttnDevInputs, DevAttnProblem};
use crate::conv::NnPath;
use crate::delta::ops::{self as delta_ops, DeltaDevGradsMut, DeltaDevInputs, DeltaWorkspace, DevDeltaProblem};
use crate::delta::DeltaAlgo;
use crate::dispatch::attn as attn_disp;
use crate::dispatch::delta::DELTA_MAX_K;
use crate::dist::Comm;
use crate::error::{Error, Result};
/// The typed "not on the GPU" error, for this module's callers too.
pub(crate) use crate::ops::unsupported;
use crate::ops::{self, DevGradsMut, DevInputs, DevProblem, FwdKernel, GlaWorkspace};
use crate::runtime::Cuda;

mod vision;

/// Largest head dim the tensor-core GLA kernels take; larger value heads are split (module doc).
pub(crate) const MAX_HEAD: usize = 128;
/// Widest short convolution the GPU kernels take (`conv_bwd_dw`'s taps per thread).
pub(crate) const MAX_CONV: usize = 8;
/// Threads per block of the element-wise and row-wise kernels.
pub(crate) const THREADS: u32 = 256;
/// Gradient elements per all-reduce of a data-parallel backward (25 MiB of f32, PyTorch DDP's
/// default bucket): large enough for NCCL's bandwidth, small enough to start during the backward.
pub(crate) const BUCKET_ELEMS: usize = (25 << 20) / 4;

pub(crate) fn blas_err(what: &'static str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
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

/// A u64 attribute of the device's default memory pool; 0 when the driver does not report it.
fn pool_attr(cuda: &Cuda, attr: cudarc::driver::sys::CUmemPool_attribute) -> u64 {
    let mut x: u64 = 0;
    if let Some(pool) = default_pool(cuda) {
        // SAFETY: a live pool; the callers' attributes write a u64
        let _ = unsafe { cudarc::driver::sys::cuMemPoolGetAttribute(pool, attr, (&raw mut x).cast()) };
    }
    x
}

/// The high-water mark of the device's default memory pool (every stream-ordered allocation of
/// this process), in bytes; 0 when the driver does not report it.
pub fn peak_pool_bytes(cuda: &Cuda) -> u64 {
    pool_attr(cuda, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
}

/// The memory of the device's default memory pool in use now (every stream-ordered allocation
/// of this process not yet freed), in bytes; 0 when the driver does not report it.
pub fn pool_used_bytes(cuda: &Cuda) -> u64 {
    pool_attr(cuda, cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
}

/// Raw device address of a buffer (one stream: no cross-stream ordering to record).
pub(crate) fn ptr<T>(cuda: &Cuda, s: &CudaSlice<T>) -> u64 {
    s.device_ptr(cuda.stream()).0
}

/// bf16 or f32, for GEMM operand types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
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

/// cuBLAS with row-major helpers for the three products of a linear layer.
pub(crate) struct Gemm {
    pub(crate) blas: CudaBlas,
    pub(crate) stream: Arc<cudarc::driver::CudaStream>,
    /// [`crate::runtime::Options::sync_debug`]: synchronise after every GEMM.
    pub(crate) sync: bool,
}

impl Gemm {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn raw(
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
        crate::runtime::profiled(
            &self.stream,
            || format!("gemm {m}x{n}x{k}"),
            || unsafe {
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
                .map_err(blas_err("cublasGemmEx"))
            },
        )?;
        if self.sync {
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
    pub(crate) fn fwd(&self, y: u64, yty: Ty, x: u64, w: u64, n: usize, din: usize, dout: usize, beta: f32) -> Result<()> {
        self.raw(true, false, dout, n, din, 1.0, w, din, x, din, beta, y, yty, dout)
    }
    /// `dx [n, din] (beta·dx +)= dy [n, dout] @ w`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bwd_x(&self, dx: u64, dxty: Ty, dy: u64, w: u64, n: usize, din: usize, dout: usize, beta: f32) -> Result<()> {
        self.raw(false, false, din, n, dout, 1.0, w, din, dy, dout, beta, dx, dxty, din)
    }
    /// `dw [dout, din] += dy^T @ x` (f32).
    pub(crate) fn bwd_w(&self, dw: u64, dy: u64, x: u64, n: usize, din: usize, dout: usize) -> Result<()> {
        self.bwd_w_scaled(dw, dy, x, n, din, dout, 1.0)
    }
    /// `dw [dout, din] += alpha * dy^T @ x` (f32).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bwd_w_scaled(&self, dw: u64, dy: u64, x: u64, n: usize, din: usize, dout: usize, alpha: f32) -> Result<()> {
        self.raw(false, true, din, dout, n, alpha, x, din, dy, dout, 1.0, dw, Ty::F32, din)
    }
}

/// Blocks per multiprocessor of a [`flat`] launch at most.
const FLAT_BLOCKS_PER_SM: usize = 16;
/// Most blocks of a [`flat`] launch on `cuda`.
pub(crate) fn max_flat_blocks(cuda: &Cuda) -> usize {
    cuda.sm_count() * FLAT_BLOCKS_PER_SM
}
/// A launch shape, resolved against the device by [`Shape::config`] (the [`launch!`] macro does).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    /// A grid-stride kernel over `n` threads: [`THREADS`] per block, at most
    /// [`max_flat_blocks`] blocks.
    Flat(usize),
    /// A fixed configuration.
    Fixed(LaunchConfig),
}
impl From<LaunchConfig> for Shape {
    fn from(cfg: LaunchConfig) -> Self {
        Shape::Fixed(cfg)
    }
}
impl Shape {
    pub(crate) fn config(self, cuda: &Cuda) -> LaunchConfig {
        match self {
            Shape::Flat(n) => {
                let blocks = n.div_ceil(THREADS as usize).clamp(1, max_flat_blocks(cuda)) as u32;
                LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
            }
            Shape::Fixed(cfg) => cfg,
        }
    }
}
/// Launch shape of a grid-stride kernel over `n` elements.
pub(crate) fn flat(n: usize) -> Shape {
    Shape::Flat(n)
}
/// One warp per row.
pub(crate) fn rows_warp(rows: usize) -> Shape {
    flat(rows * 32)
}
/// One block per row.
pub(crate) fn rows_block(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.clamp(1, 65_535) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}
/// Row blocks of a column reduction over `rows` rows: each writes one row of partial sums.
pub(crate) fn col_gy(rows: usize) -> usize {
    rows.div_ceil(8 * 64).clamp(1, 1024)
}
/// Adds `gy` rows of partial sums (`part`, `[gy, cols]` f32) to `dw` (`[cols]` f32), in row
/// order (`col_finalize`). Device addresses.
pub(crate) fn col_finalize(cuda: &Cuda, dw: u64, part: u64, gy: usize, cols: usize) -> Result<()> {
    let (gyi, ci) = (gy as i32, cols as i32);
    // SAFETY: col_finalize's arguments; dw holds `cols` f32, part gy rows of them
    unsafe { cuda.launch("col_finalize", flat(cols).config(cuda), &[&dw, &part, &gyi, &ci]) }
}
/// Column reductions: 32 columns x 8 row lanes per block, [`col_gy`] blocks over the rows.
pub(crate) fn cols(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (cols.div_ceil(32).max(1) as u32, col_gy(rows) as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}
/// Elements of the partial sums buffer: the largest `[gy, cols]` of the backward's column
/// reductions over the model's mixers (norm weights over D, the per-head output norm over its
/// rows, the GLA gate bias, the conv weights over C * W columns).
pub(crate) fn part_len(d: &Dims, mixers: &[GpuMixer], n: usize) -> usize {
    let one = |mixer: &GpuMixer| {
        let (widest, conv, head_rows, head_v) = match mixer {
            GpuMixer::Gla(dm, _) => (dm.key_dim_kv, dm.key_dim.max(dm.key_dim_kv).max(dm.value_dim_kv), n * dm.heads, dm.head_v),
            GpuMixer::Delta(dm) => (0, dm.key_dim.max(dm.value_dim), n * dm.v_heads, dm.head_v),
            // the projections' bias gradients
            GpuMixer::Attn(dm) => (dm.q_dim().max(dm.kv_dim()), 0, 0, 0),
        };
        (col_gy(n) * widest)
            .max(crate::norm::part_rows(n) * d.d)
            .max(crate::conv::part_rows(n) * conv * mixer.conv())
            .max(crate::norm::part_rows(head_rows) * head_v)
    };
    mixers.iter().map(one).max().unwrap_or(crate::norm::part_rows(n) * d.d)
}

/// One distinct token mixer of a model the GPU runs (a mixer kind with one set of dims), with
/// what its plans need: the batch plan holds one op plan per distinct mixer, shared by the
/// layers that have it ([`gpu_mixers`] lists them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum GpuMixer {
    /// GLA, with its heads at the op ([`HeadPlan`]).
    Gla(GlaDims, HeadPlan),
    /// DeltaNet or Gated DeltaNet.
    Delta(DeltaDims),
    /// Softmax attention (fla's `Attention`, a hybrid stack's `attn` layers).
    Attn(AttnDims),
}

impl GpuMixer {
    /// Short conv width (0 without).
    pub(crate) fn conv(&self) -> usize {
        match self {
            GpuMixer::Gla(dm, _) => dm.conv,
            GpuMixer::Delta(dm) => dm.conv,
            GpuMixer::Attn(_) => 0,
        }
    }

    /// Elements of one sequence's decode state per layer: the recurrent state (GLA `[H, K, V]`,
    /// the split heads hold the same values; the delta rule `[HV, K, V]`) and the q, k, v conv
    /// caches `[C, W]` (0 without short conv).
    pub(crate) fn state_sizes(&self) -> (usize, [usize; 3]) {
        match self {
            GpuMixer::Gla(dm, _) => {
                (dm.heads * dm.head_k * dm.head_v, [dm.key_dim * dm.conv, dm.key_dim_kv * dm.conv, dm.value_dim_kv * dm.conv])
            }
            GpuMixer::Delta(dm) => {
                (dm.v_heads * dm.head_k * dm.head_v, [dm.key_dim * dm.conv, dm.key_dim * dm.conv, dm.value_dim * dm.conv])
            }
            // the KV cache is not a fixed-size state (GpuState's caches)
            GpuMixer::Attn(_) => (0, [0; 3]),
        }
    }
}

impl GpuMixer {
    /// The mixer's dims as the model's config gives them (the key its layers are found by).
    pub(crate) fn dims(&self) -> MixerDims {
        match self {
            GpuMixer::Gla(dm, _) => MixerDims::Gla(*dm),
            GpuMixer::Delta(dm) => MixerDims::Delta(*dm),
            GpuMixer::Attn(dm) => MixerDims::Attn(*dm),
        }
    }
}

/// The distinct mixers of a model the GPU runs ([`GpuMixer`]), in the order of their first
/// layer, and for every layer the index of its mixer in that list; refuses dims the kernels do
/// not take (GLA head dims: [`head_plan`]; delta K above the kernels' [`DELTA_MAX_K`]; a conv
/// wider than [`MAX_CONV`]).
pub(crate) fn gpu_mixers(d: &Dims) -> Result<(Vec<GpuMixer>, Vec<usize>)> {
    let (mut mixers, mut of_layer) = (Vec::<GpuMixer>::new(), Vec::with_capacity(d.mixers.len()));
    for md in &d.mixers {
        if let Some(i) = mixers.iter().position(|m| m.dims() == *md) {
            of_layer.push(i);
            continue;
        }
        let mixer = match md {
            MixerDims::Gla(dm) => GpuMixer::Gla(*dm, head_plan(dm)?),
            MixerDims::Delta(dm) => {
                if dm.head_k > DELTA_MAX_K {
                    return Err(unsupported(format!("delta-rule head key dim {} > {DELTA_MAX_K} on the GPU", dm.head_k)));
                }
                GpuMixer::Delta(*dm)
            }
            MixerDims::Attn(dm) => {
                crate::dispatch::attn::attn_dims(dm.head_dim, dm.head_dim).map_err(unsupported)?;
                GpuMixer::Attn(*dm)
            }
        };
        if mixer.conv() > MAX_CONV {
            // the conv kernels keep at most MAX_CONV taps per thread
            return Err(unsupported(format!("short conv of width {} on the GPU (at most {MAX_CONV})", mixer.conv())));
        }
        of_layer.push(mixers.len());
        mixers.push(mixer);
    }
    Ok((mixers, of_layer))
}

/// One launch of an nn kernel through [`Cuda::launch`], each argument pushed by reference.
macro_rules! launch {
    ($self:expr, $name:literal, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let cfg = $crate::backend::Shape::from($cfg).config(&$self.cuda);
        // SAFETY: the argument list matches the kernel's signature in kernels/nn/ (device
        // addresses of buffers sized by the callers from the model dims, idx_t/int/float scalars
        // in order); grid-stride kernels cover any grid
        unsafe { $self.cuda.launch($name, cfg, &[$(&$arg),*]) }?;
    }};
}

pub(crate) use launch;

/// How the GLA op's heads relate to the model's: `split` value splits per head (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadPlan {
    pub(crate) split: usize,
    /// q repeat factor (= split), k/g repeat factor (groups * split), v repeat factor (groups).
    pub(crate) rq: usize,
    pub(crate) rk: usize,
    pub(crate) rv: usize,
}

pub(crate) fn head_plan(dm: &GlaDims) -> Result<HeadPlan> {
    // key heads up to 256 run as they are (the chunk kernels tile K > 128, the recurrent ones
    // hold K <= 256; fla's gla_1B has K = 256); value heads above 128 are split
    if dm.head_k > crate::dispatch::CHUNK_WIDE_MAX {
        return Err(unsupported(format!("head key dim {} > {} on the GPU", dm.head_k, crate::dispatch::CHUNK_WIDE_MAX)));
    }
    let split = dm.head_v.div_ceil(MAX_HEAD);
    if !dm.head_v.is_multiple_of(split) {
        return Err(unsupported(format!("head value dim {} is not a multiple of {split} (split into heads of <= {MAX_HEAD})", dm.head_v)));
    }
    Ok(HeadPlan { split, rq: split, rk: dm.groups() * split, rv: dm.groups() })
}

/// The gradient all-reduce of data-parallel [`crate::GpuWeights`]: the backward finishes the gradient
/// arena from its end (lm_head, final norm, last layer) to its start (embedding); each range of
/// [`bucket_plan`] is summed over the ranks on the communicator's stream as soon as it is final,
/// while the backward goes on with the layers below.
pub(crate) struct GradSync {
    pub(crate) comm: Comm,
    /// Per point of the backward (after the head, after each layer from the last, after the
    /// embedding): the range to all-reduce there.
    pub(crate) plan: Vec<Option<Range<usize>>>,
    /// Recorded on the model's stream: what the communicator's stream (or the host) waits for.
    pub(crate) ready: CudaEvent,
    /// Recorded on the communicator's stream after a backward's last all-reduce.
    pub(crate) done: CudaEvent,
    /// All-reduces were issued that the host has not yet seen complete.
    pub(crate) pending: AtomicBool,
}

/// Inference state of B sequences on the device, per layer: the recurrent states entering the
/// step (`h0`) and leaving it (`ht`), f32, GLA's `[B, Hop, K, Vop]` at the op's heads (value
/// splits) or the delta rule's `[B, HV, K, V]`, and the three conv caches `[B, C, W]` f32 (with
/// short conv), updated in place.
///
/// Attention layers read and extend each sequence's own KV cache in place (`kv`: per layer, per
/// sequence, the k and v cache addresses and their slots; empty for other layers), RoPE takes
/// each sequence's position from `pos` (`[B]` i32, the tokens it had seen), `seen` its host copy.
pub struct InferCtx {
    pub(crate) h0: Vec<CudaSlice<f32>>,
    pub(crate) ht: Vec<CudaSlice<f32>>,
    pub(crate) conv: Vec<Option<[CudaSlice<f32>; 3]>>,
    pub(crate) kv: Vec<Vec<KvRef>>,
    pub(crate) seen: Vec<usize>,
    pub(crate) pos: CudaSlice<i32>,
}

/// One sequence's KV cache of one attention layer as a forward sees it: the device addresses of
/// its k and v `[S, H_KV, Dh]` bf16 and its slots S (token p at slot `p % S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KvRef {
    pub(crate) k: u64,
    pub(crate) v: u64,
    pub(crate) slots: usize,
}

/// Where the sequences of a forward keep their inference state.
pub enum InferIo<'a> {
    /// Batch buffers (prefill): per layer `h0`/`ht` and conv caches `[B, C, W]`.
    Batch(&'a mut InferCtx),
    /// Decode (T = 1): each sequence's own [`crate::GpuState`] buffers, updated in place, found through
    /// the device table at `addr`: `[L][4][B]` addresses (the recurrent state, then the q, k, v
    /// conv caches, 0 without short conv; for an attention layer the k cache, the v cache and
    /// the cache's slots).
    Table {
        /// Device address of the table.
        addr: u64,
        /// Sequences (B).
        b: usize,
        /// The table's contents (attention layers launch per sequence on its cache).
        host: &'a [u64],
        /// Device address of `[2, B]` i32: each sequence's tokens seen before this one (RoPE's
        /// position), then including it (the attention cache's length).
        pos: u64,
    },
}

/// The GPU's buffer types.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuBuf;

/// A batch's token ids on the device and the embedding backward's schedule built from them on
/// the host ([`Primitives::upload_ids`]): the rows sorted by token, each token's segment of them.
pub struct GpuIds {
    ids: CudaSlice<u32>,
    emb_order: CudaSlice<i32>,
    emb_start: CudaSlice<i32>,
    emb_tok: CudaSlice<u32>,
    emb_nseg: usize,
}

/// The labelled rows of a batch, their targets, and the cross-entropy's per-row outputs.
pub struct GpuRows {
    rows: CudaSlice<i32>,
    targets: CudaSlice<u32>,
    loss: CudaSlice<f32>,
    correct: CudaSlice<i32>,
}

/// The partial sums buffer of the backward's column reductions (`[gy, cols]`, see `cols`) and
/// per distinct mixer of the model its op's problem and buffers for a batch shape: made once
/// per batch shape, so that a training step allocates nothing.
pub struct GpuPlan {
    part: CudaSlice<f32>,
    ops: Vec<PlanOp>,
    /// The bidirectional scan's problem and buffers (ViG, `VisionOps::bidir_*`), made at its
    /// first call on this batch shape.
    bidir: Mutex<Option<Box<vision::BidirPlan>>>,
}

/// One mixer's op part of a [`GpuPlan`], with the dims of the layers it serves (boxed: made
/// once per batch shape).
enum PlanOp {
    Gla(GlaDims, Box<GlaPlan>),
    Delta(DeltaDims, Box<DeltaPlan>),
    Attn(AttnDims, Box<AttnPlan>),
}

/// The softmax-attention op of a batch shape (B sequences of T, causal, the layers' window) and
/// RoPE's frequencies; for a plan that runs backwards, the op's bf16 gradients and row dots,
/// shared by the layers (their launches run in order on one stream).
struct AttnPlan {
    prob: DevAttnProblem,
    /// `[Dh/2]` f32: [`AttnDims::rope_inv_freq`], the CPU's frequencies.
    inv_freq: CudaSlice<f32>,
    bufs: Mutex<Option<AttnBufs>>,
    /// The decode step's `lse [B, H]` (kept by no one) and, for a plan of one token per
    /// sequence, its split partials: `po [B, H, splits, Dh]`,
    /// `pl [B, H, splits]` f32 for at most [`AttnPlan::max_splits`] splits.
    lse: CudaSlice<f32>,
    po: CudaSlice<f32>,
    pl: CudaSlice<f32>,
    max_splits: usize,
}

/// The attention backward's buffers: dq, dk, dv bf16 and `delta [N, H]` f32.
struct AttnBufs {
    grads: AttnDevGrads,
    delta: CudaSlice<f32>,
}

/// The GLA problem of a batch shape at the op's heads and the op's buffers.
struct GlaPlan {
    prob: DevProblem,
    /// Locked by one GLA launch sequence at a time (all on the model's one stream).
    bufs: Mutex<GlaBufs>,
}

/// The delta-rule problem of a batch shape and the op's buffers.
struct DeltaPlan {
    prob: DevDeltaProblem,
    /// Locked by one delta launch sequence at a time (all on the model's one stream).
    bufs: Mutex<DeltaBufs>,
}

/// The delta op's buffers of a batch shape, shared by every layer (the layers' launches run in
/// order on one stream, and each call writes what it reads): the launches' workspace (the
/// chunked forward's and, for a plan that runs backwards, the backward's, which recomputes the
/// forward's chunk states), the op's bf16 inputs made from the mixer's f32 tensors, the f32
/// copies of `A_log` and `dt_bias` the launches take as whole buffers, and their gradients
/// before they are added to the arena.
struct DeltaBufs {
    ws: DeltaWorkspace<u16>,
    /// `[N, HV]`: the beta logits cast per call, or the constant beta (no `b_proj`), written once.
    beta: CudaSlice<u16>,
    /// `[N, HV]`: the decay input `a` cast per call (Gated DeltaNet; one element otherwise).
    a: CudaSlice<u16>,
    /// `[HV]` f32 each: `A_log`, `dt_bias` (copied from the masters per call), and their
    /// gradients (`delta_bwd` writes them, then adds them to the arena).
    a_log: CudaSlice<f32>,
    dt_bias: CudaSlice<f32>,
    da_log: CudaSlice<f32>,
    ddt_bias: CudaSlice<f32>,
}

/// The op plan of a [`GpuPlan`] whose variant is `$variant` and whose dims equal `$md`; a typed
/// refusal naming `$what` when the plan was made for another model.
macro_rules! plan_op {
    ($plan:expr, $variant:path, $md:expr, $what:literal) => {
        $plan
            .ops
            .iter()
            .find_map(|op| match op {
                $variant(dm, p) if dm == $md => Some(&**p),
                _ => None,
            })
            .ok_or_else(|| unsupported(concat!($what, " on a plan made for another model").into()))
    };
}

impl GpuPlan {
    /// The GLA op's plan of the layers with dims `md`.
    fn gla(&self, md: &GlaDims) -> Result<&GlaPlan> {
        plan_op!(self, PlanOp::Gla, md, "a GLA op")
    }
    /// The attention op's plan of the layers with dims `md`.
    fn attn(&self, md: &AttnDims) -> Result<&AttnPlan> {
        plan_op!(self, PlanOp::Attn, md, "an attention op")
    }
    /// The delta op's plan of the layers with dims `md`.
    fn delta(&self, md: &DeltaDims) -> Result<&DeltaPlan> {
        plan_op!(self, PlanOp::Delta, md, "a delta-rule op")
    }
}

/// The GLA op's buffers of a batch shape, shared by every layer (the layers' launches run in
/// order on one stream): the launches' workspace (sized by the dispatch policy for the chunked
/// forward and, for a plan that runs backwards, the backward) and, where the op's heads repeat
/// the model's (GQA groups, value splits), the op's dq, dk, dv, dg at the op's heads before
/// they are summed back (`None` without that repeat: the op writes the caller's buffer).
struct GlaBufs {
    ws: GlaWorkspace<u16>,
    rep: [Option<CudaSlice<f32>>; 4],
}

/// q, k, v, g repeated to the op's heads (GQA groups and value splits); `None` = no repeat.
pub struct GpuGla {
    q_rep: Option<CudaSlice<u16>>,
    k_rep: Option<CudaSlice<u16>>,
    v_rep: Option<CudaSlice<u16>>,
    gk_rep: Option<CudaSlice<u16>>,
}

impl Storage for GpuBuf {
    type F32 = CudaSlice<f32>;
    type Act = CudaSlice<u16>;
    type Ids = GpuIds;
    type Rows = GpuRows;
    type Plan = GpuPlan;
}

impl GlaStorage for GpuBuf {
    type GlaSaved = GpuGla;
}

impl DeltaStorage for GpuBuf {
    /// Nothing per layer: the delta op's workspace and bf16 inputs are the batch plan's
    /// ([`GpuPlan`]; the backward recomputes what it needs from the layer's saved inputs).
    type DeltaSaved = ();
}

impl AttnStorage for GpuBuf {
    /// The forward's `lse [N, H]` f32 (natural log), which the backward recomputes P from.
    type AttnSaved = CudaSlice<f32>;
}

/// The language model's ops on one GPU over its device weights: f32 masters at `moff` (all of
/// them, or only those the kernels read in f32 for an inference-only model) and their bf16
/// copy for the GEMMs.
pub struct Gpu {
    pub(crate) cuda: Arc<Cuda>,
    pub(crate) gemm: Gemm,
    pub(crate) dims: Dims,
    /// the model's distinct mixers ([`gpu_mixers`])
    pub(crate) mixers: Vec<GpuMixer>,
    /// per layer, the index of its mixer in `mixers`
    pub(crate) of_layer: Vec<usize>,
    /// the parameter table (offsets in the bf16 copy and in the gradient arena)
    pub(crate) specs: Vec<ParamSpec>,
    /// f32 parameters at `moff`
    pub(crate) master: CudaSlice<f32>,
    /// offset of each parameter in `master`
    pub(crate) moff: Vec<usize>,
    pub(crate) w16: CudaSlice<u16>,
    /// the data-parallel gradient all-reduce, and whether the running backward queues it
    pub(crate) sync: Option<GradSync>,
    pub(crate) reducing: AtomicBool,
    /// the vision ops' reusable device buffers (`vision.rs`)
    pub(crate) vision: Mutex<vision::VisionScratch>,
}

impl Gpu {
    pub(crate) fn z<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.cuda.alloc_zeros::<T>(len.max(1), format_args!("{len} activation elements"))
    }
    /// bf16 weight `id` (GEMM operand).
    pub(crate) fn wp(&self, id: ParamId) -> u64 {
        ptr(&self.cuda, &self.w16) + 2 * self.specs[id].offset as u64
    }
    /// f32 master weight `id`.
    pub(crate) fn mp(&self, id: ParamId) -> u64 {
        ptr(&self.cuda, &self.master) + 4 * self.moff[id] as u64
    }
    /// Gradient `id` in the arena `g`.
    fn gp(&self, g: &CudaSlice<f32>, id: ParamId) -> u64 {
        ptr(&self.cuda, g) + 4 * self.specs[id].offset as u64
    }
    fn p<T>(&self, s: &CudaSlice<T>) -> u64 {
        ptr(&self.cuda, s)
    }

    /// The GLA dims of a layer's call and the op's heads: one of the model's mixers
    /// ([`gpu_mixers`]), the only ones its plans fit.
    fn layer_gla(&self, md: &GlaDims) -> Result<(&GlaDims, HeadPlan)> {
        self.mixers
            .iter()
            .find_map(|m| match m {
                GpuMixer::Gla(dm, hp) if dm == md => Some((dm, *hp)),
                _ => None,
            })
            .ok_or_else(|| unsupported("a GLA layer with dims that none of the model's layers has".into()))
    }

    /// The delta-rule dims of a layer's call: one of the model's mixers ([`gpu_mixers`]), the
    /// only ones its plans fit.
    fn layer_delta(&self, md: &DeltaDims) -> Result<&DeltaDims> {
        self.mixers
            .iter()
            .find_map(|m| match m {
                GpuMixer::Delta(dm) if dm == md => Some(dm),
                _ => None,
            })
            .ok_or_else(|| unsupported("a delta-rule layer with dims that none of the model's layers has".into()))
    }

    /// Elements of one sequence's decode state of layer `l` ([`GpuMixer::state_sizes`]).
    pub(crate) fn layer_state_sizes(&self, l: usize) -> (usize, [usize; 3]) {
        self.mixers[self.of_layer[l]].state_sizes()
    }

    /// Layer `l`'s attention dims, when it is a softmax-attention layer (its decode state is a
    /// KV cache).
    pub(crate) fn layer_attn_dims(&self, l: usize) -> Option<AttnDims> {
        match self.mixers[self.of_layer[l]] {
            GpuMixer::Attn(dm) => Some(dm),
            _ => None,
        }
    }

    /// Short conv width of layer `l`'s mixer (0 without).
    pub(crate) fn layer_conv(&self, l: usize) -> usize {
        self.mixers[self.of_layer[l]].conv()
    }

    /// The width of weight `id`'s last dim: a conv's `W` (`[C, 1, W]`), a norm's `V` (`[V]`).
    fn width(&self, id: ParamId) -> usize {
        self.specs[id].shape.last().copied().unwrap_or(0)
    }

    /// The GLA op's problem for `[b, t]` at the op's heads (value splits).
    fn op_problem(dm: &GlaDims, hp: HeadPlan, b: usize, t: usize) -> Result<Problem> {
        Ok(Problem::new(ProblemSpec {
            b,
            t,
            h: dm.heads * hp.split,
            k: dm.head_k,
            v: dm.head_v / hp.split,
            gate: GateKind::PerKey,
            // the model's scale is the per-head K^-1/2 (K is not split)
            scale: Some((dm.head_k as f64).powf(-0.5)),
            cu_seqlens: None,
        })?)
    }

    /// Adds the partial sums of a column reduction over `rows` rows (`part`, `[col_gy(rows),
    /// cols]`) to the gradient at `dw`, in block order.
    fn finalize_cols(&self, dw: u64, part: u64, rows: usize, cols: usize) -> Result<()> {
        col_finalize(&self.cuda, dw, part, col_gy(rows), cols)
    }

    /// The GLA inputs at the op's heads: the repeats of `saved` where there are.
    fn gla_inputs<'a>(
        saved: &'a GpuGla,
        q: &'a CudaSlice<u16>,
        k: &'a CudaSlice<u16>,
        v: &'a CudaSlice<u16>,
        g: &'a CudaSlice<u16>,
    ) -> DevInputs<'a, u16> {
        DevInputs {
            q: saved.q_rep.as_ref().unwrap_or(q),
            k: saved.k_rep.as_ref().unwrap_or(k),
            v: saved.v_rep.as_ref().unwrap_or(v),
            g: Some(saved.gk_rep.as_ref().unwrap_or(g)),
            h0: None,
        }
    }

    /// `out [N, heads, e] = sum over r repeats of src [N, heads*r, e]` (f32).
    fn sum_back(&self, out: &CudaSlice<f32>, src: &CudaSlice<f32>, n: usize, heads: usize, r: usize, e: usize) -> Result<()> {
        let len = n * heads * e;
        let (o, sp, ni, hi, ri, ei) = (self.p(out), self.p(src), n as i64, heads as i32, r as i32, e as i32);
        launch!(self, "repeat_heads_bwd_f32", flat(len), o, sp, ni, hi, ri, ei);
        Ok(())
    }

    /// The GLA op's part of the plan of `[b, t]` batches.
    fn gla_plan(&self, dm: &GlaDims, hp: HeadPlan, b: usize, t: usize, backward: bool) -> Result<GlaPlan> {
        let prob = DevProblem::new(&self.cuda, &Self::op_problem(dm, hp, b, t)?)?;
        // every forward but the decode step (recurrent, no workspace) runs chunked
        let ws = GlaWorkspace::for_problem(&self.cuda, &prob, Some(FwdKernel::Chunk), backward)?;
        let p = &prob.problem;
        let rep = |r: usize, len: usize| if backward && r > 1 { self.z(len).map(Some) } else { Ok(None) };
        let rep = [rep(hp.rq, p.qk_len())?, rep(hp.rk, p.qk_len())?, rep(hp.rv, p.v_len())?, rep(hp.rk, p.g_len())?];
        Ok(GlaPlan { prob, bufs: Mutex::new(GlaBufs { ws, rep }) })
    }

    /// The delta op's part of the plan of `[b, t]` batches: the problem ([`DeltaDims::op_spec`],
    /// as the CPU's), the chunked path's workspace (every forward but the decode step, which
    /// needs none, runs chunked), the bf16 inputs (the constant beta written here) and the
    /// decay parameters' buffers.
    fn delta_plan(&self, dm: &DeltaDims, b: usize, t: usize, backward: bool) -> Result<DeltaPlan> {
        let c = &self.cuda;
        let prob = DevDeltaProblem::new(c, &DeltaProblem::new(dm.op_spec(b, t, None))?)?;
        // its backward recomputes the forward (the workspace is shared by the layers)
        let ws = DeltaWorkspace::for_problem(c, &prob, DeltaAlgo::Chunked, true, backward)?.backward_recomputes();
        let hv_rows = b * t * dm.v_heads;
        let beta = if dm.use_beta {
            self.z(hv_rows)?
        } else {
            let host = vec![ops::f32_to_bf16(dm.const_beta()); hv_rows.max(1)];
            c.upload(&host, "constant beta")?
        };
        let a = self.z(if dm.decay { hv_rows } else { 1 })?;
        let hv = dm.v_heads;
        let bufs = DeltaBufs { ws, beta, a, a_log: self.z(hv)?, dt_bias: self.z(hv)?, da_log: self.z(hv)?, ddt_bias: self.z(hv)? };
        Ok(DeltaPlan { prob, bufs: Mutex::new(bufs) })
    }

    /// The attention op's part of the plan of `[b, t]` batches ([`AttnPlan`]).
    fn attn_plan(&self, dm: &AttnDims, b: usize, t: usize, backward: bool) -> Result<AttnPlan> {
        let c = &self.cuda;
        let prob = DevAttnProblem::new(c, &AttnProblem::new(dm.op_spec(b, t, None))?)?;
        let inv_freq = c.upload(&dm.rope_inv_freq(), "rope frequencies")?;
        let bufs =
            if backward { Some(AttnBufs { grads: AttnDevGrads::alloc(c, &prob)?, delta: self.z(prob.problem.lse_len())? }) } else { None };
        // a sequence's split count is bounded by the grid the SMs want for one sequence
        let max_splits = if t == 1 { attn_disp::decode_split(1, dm.kv_heads, 1 << 40, c.sm_count()).0 } else { 0 };
        let (po, pl) = (self.z(b * dm.heads * max_splits * dm.head_dim)?, self.z(b * dm.heads * max_splits)?);
        let lse = self.z(if t == 1 { b * dm.heads } else { 0 })?;
        Ok(AttnPlan { prob, inv_freq, bufs: Mutex::new(bufs), lse, po, pl, max_splits })
    }

    /// One sequence's attention decode over its cache `kv` (launches only, capturable): appends
    /// the token's `k, v` rows at slot `(len - 1) % S` (`attn_append`), then attends with `q`
    /// (`attn_decode_*` over the splits, `attn_decode_combine`) into `o` and `lse`. Every
    /// argument is a device address: `lens` of this sequence's i32 length (tokens including
    /// this one), `po`/`pl` split partials of at least the splits [`attn_disp::decode_split`]
    /// gives the cache's slots.
    #[allow(clippy::too_many_arguments)]
    fn attn_decode_one(
        &self,
        dm: &AttnDims,
        kv: KvRef,
        [q, k, v, o, lse]: [u64; 5],
        lens: u64,
        [po, pl]: [u64; 2],
        max_splits: usize,
    ) -> Result<()> {
        let (splits, chunk) = attn_disp::decode_split(1, dm.kv_heads, kv.slots, self.cuda.sm_count());
        if splits > max_splits {
            return Err(unsupported(format!("an attention decode of {splits} splits on buffers for {max_splits}")));
        }
        let dims = attn_disp::attn_dims(dm.head_dim, dm.head_dim).map_err(unsupported)?;
        let (one, s, hk, d) = (1i32, kv.slots as i32, dm.kv_heads as i32, dm.head_dim as i32);
        let (h, ch, sp) = (dm.heads as i32, chunk as i32, splits as i32);
        let sl2 = ((dm.head_dim as f64).powf(-0.5) * std::f64::consts::LOG2_E) as f32;
        // SAFETY: the arguments match attn_append, attn_decode_* and attn_decode_combine
        // (kernels/attn/decode.cu) for one sequence: its cache holds `slots` rows of H_KV * Dh,
        // q/o are one row of H * Dh, k/v one of H_KV * Dh, po/pl hold `splits` partials per head
        unsafe {
            self.cuda.launch(
                "attn_append",
                attn_disp::flat_cfg(dm.kv_heads * 2 * dm.head_dim),
                &[&k, &v, &kv.k, &kv.v, &lens, &one, &s, &hk, &d, &d],
            )?;
            self.cuda.launch(
                &attn_disp::decode_kernel(dims, dm.heads / dm.kv_heads),
                attn_disp::decode_cfg(splits, dm.kv_heads, 1),
                &[&q, &kv.k, &kv.v, &lens, &po, &pl, &h, &hk, &s, &ch, &sl2],
            )?;
            self.cuda.launch("attn_decode_combine", attn_disp::combine_cfg(dm.heads, dm.head_dim), &[&po, &pl, &o, &lse, &sp, &d])
        }
    }

    /// The attention dims of a layer's call: one of the model's mixers ([`gpu_mixers`]).
    fn layer_attn(&self, md: &AttnDims) -> Result<&AttnDims> {
        self.mixers
            .iter()
            .find_map(|m| match m {
                GpuMixer::Attn(dm) if dm == md => Some(dm),
                _ => None,
            })
            .ok_or_else(|| unsupported("an attention layer with dims that none of the model's layers has".into()))
    }

    /// The delta op's bf16 inputs and decay parameters for one call, in the plan's buffers: the
    /// beta logits cast (the constant beta of a layer without `b_proj` stays), the decay input
    /// `a` cast and the masters of `A_log`, `dt_bias` copied (Gated DeltaNet). Launches and
    /// stream-ordered copies only (a decode step is captured as a CUDA graph).
    fn delta_prep(&self, bufs: &mut DeltaBufs, beta: Option<&CudaSlice<f32>>, decay: Option<DeltaDecay<'_, CudaSlice<f32>>>) -> Result<()> {
        if let Some(beta) = beta {
            self.cast(&mut bufs.beta, beta)?;
        }
        if let Some(d) = decay {
            self.cast(&mut bufs.a, d.a)?;
            let st = self.cuda.stream();
            for (dst, id) in [(&mut bufs.a_log, d.a_log), (&mut bufs.dt_bias, d.dt_bias)] {
                let off = self.moff[id];
                let src = self.master.slice(off..off + dst.len());
                st.memcpy_dtod(&src, dst).map_err(Error::driver("copy A_log / dt_bias"))?;
            }
        }
        Ok(())
    }

    /// Queues the all-reduce planned at point `at` of a reducing backward (module doc of
    /// [`GradSync`]), after the gradients written so far on the model's stream.
    pub(crate) fn reduce_point(&self, grads: &CudaSlice<f32>, at: usize) -> Result<()> {
        let Some(s) = &self.sync else { return Ok(()) };
        let Some(r) = &s.plan[at] else { return Ok(()) };
        s.ready.record(self.cuda.stream()).map_err(Error::driver("record event"))?;
        s.comm.stream().wait(&s.ready).map_err(Error::driver("order the communication stream"))?;
        let base = ptr(&self.cuda, grads);
        s.comm.all_reduce_sum_f32(base + 4 * r.start as u64, r.len(), &format!("all-reduce of gradients {}..{}", r.start, r.end))
    }
}

#[allow(clippy::too_many_arguments)]
impl Primitives for Gpu {
    type Error = Error;
    type Buf = GpuBuf;
    type Io<'a> = InferIo<'a>;
    type Grads = CudaSlice<f32>;

    fn dims(&self) -> &Dims {
        &self.dims
    }
    fn grads_len(&self, grads: &CudaSlice<f32>) -> usize {
        grads.len()
    }

    fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.z(len)
    }
    fn alloc_act(&self, len: usize) -> Result<CudaSlice<u16>> {
        self.z(len)
    }
    fn alloc_cast(&self, len: usize) -> Result<CudaSlice<u16>> {
        self.z(len)
    }
    fn alloc_ids(&self, n: usize) -> Result<GpuIds> {
        // with the embedding backward's schedule for n ids (upload_ids fills it)
        Ok(GpuIds { ids: self.z(n)?, emb_order: self.z(n)?, emb_start: self.z(n + 1)?, emb_tok: self.z(n)?, emb_nseg: 0 })
    }
    fn alloc_rows(&self, n: usize) -> Result<GpuRows> {
        Ok(GpuRows { rows: self.z(n)?, targets: self.z(n)?, loss: self.z(n)?, correct: self.z(n)? })
    }
    fn plan(&self, b: usize, t: usize, backward: bool) -> Result<GpuPlan> {
        let part = self.z(if backward { part_len(&self.dims, &self.mixers, b * t) } else { 1 })?;
        let ops = self
            .mixers
            .iter()
            .map(|m| {
                Ok(match *m {
                    GpuMixer::Gla(dm, hp) => PlanOp::Gla(dm, Box::new(self.gla_plan(&dm, hp, b, t, backward)?)),
                    GpuMixer::Delta(dm) => PlanOp::Delta(dm, Box::new(self.delta_plan(&dm, b, t, backward)?)),
                    GpuMixer::Attn(dm) => PlanOp::Attn(dm, Box::new(self.attn_plan(&dm, b, t, backward)?)),
                })
            })
            .collect::<Result<_>>()?;
        Ok(GpuPlan { part, ops, bidir: Mutex::new(None) })
    }

    fn upload_ids(&self, dst: &mut GpuIds, ids: &[u32], backward: bool) -> Result<()> {
        let st = self.cuda.stream();
        st.memcpy_htod(ids, &mut dst.ids).map_err(Error::driver("upload ids"))?;
        if !backward {
            return Ok(());
        }
        // The embedding backward's schedule (the kernel's contract): the rows sorted by token,
        // stably, and each token's segment of them, the padding token's left out. Built on the
        // host, where the ids are, so that every embedding row's gradient is summed in row order
        // by one block (bitwise repeatable; no atomics).
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
        if dst.emb_start.len() < ids.len() + 1 || dst.emb_order.len() < ids.len() {
            // more ids than the buffers were made for (alloc_ids): a caller's error, never a
            // reason to allocate inside a training step
            return Err(unsupported(format!("{} ids for buffers of {}", ids.len(), dst.emb_order.len())));
        }
        dst.emb_nseg = tok.len();
        if !kept.is_empty() {
            st.memcpy_htod(&kept, &mut dst.emb_order.slice_mut(0..kept.len())).map_err(Error::driver("upload embedding rows"))?;
            st.memcpy_htod(&tok, &mut dst.emb_tok.slice_mut(0..tok.len())).map_err(Error::driver("upload embedding tokens"))?;
        }
        st.memcpy_htod(&start, &mut dst.emb_start.slice_mut(0..start.len())).map_err(Error::driver("upload embedding segments"))
    }
    fn select_rows(&self, rows: &mut GpuRows, targets: &[i64]) -> Result<usize> {
        let st = self.cuda.stream();
        let (mut rs, mut tg) = (Vec::new(), Vec::new());
        for (r, &x) in targets.iter().enumerate() {
            if x != IGNORE_INDEX {
                rs.push(r as i32);
                tg.push(x as u32);
            }
        }
        let m = rs.len();
        if m > 0 {
            st.memcpy_htod(&rs, &mut rows.rows.slice_mut(0..m)).map_err(Error::driver("upload rows"))?;
            st.memcpy_htod(&tg, &mut rows.targets.slice_mut(0..m)).map_err(Error::driver("upload targets"))?;
        }
        Ok(m)
    }

    fn cast(&self, copy: &mut CudaSlice<u16>, src: &CudaSlice<f32>) -> Result<()> {
        let len = copy.len().min(src.len());
        let (y, x, nl) = (self.p(copy), self.p(src), len as i64);
        launch!(self, "cast_f32_bf16", flat(len), y, x, nl);
        Ok(())
    }
    fn operand<'a>(&self, copy: &'a CudaSlice<u16>, _src: &'a CudaSlice<f32>) -> &'a CudaSlice<u16> {
        copy
    }

    fn embedding_fwd(&self, x: &mut CudaSlice<f32>, ids: &GpuIds, w: ParamId, n: usize) -> Result<()> {
        let (x0, idp, emb, nn, di) = (self.p(x), self.p(&ids.ids), self.mp(w), n as i64, self.dims.d as i32);
        launch!(self, "embedding_fwd", rows_block(n), x0, idp, emb, nn, di);
        Ok(())
    }
    fn embedding_bwd(
        &self,
        _plan: &GpuPlan,
        g: &mut CudaSlice<f32>,
        dx: &CudaSlice<f32>,
        ids: &GpuIds,
        w: ParamId,
        _n: usize,
    ) -> Result<()> {
        let dwte = self.gp(g, w);
        let (dres, di) = (self.p(dx), self.dims.d as i32);
        let (order, start, tok, nseg) = (self.p(&ids.emb_order), self.p(&ids.emb_start), self.p(&ids.emb_tok), ids.emb_nseg as i32);
        launch!(self, "embedding_bwd", rows_block(ids.emb_nseg), dwte, dres, order, start, tok, nseg, di);
        Ok(())
    }

    fn rmsnorm_fwd(&self, y: &mut CudaSlice<u16>, rstd: &mut CudaSlice<f32>, x: &CudaSlice<f32>, w: ParamId, n: usize) -> Result<()> {
        let (yp, rp, xp, wp) = (self.p(y), self.p(rstd), self.p(x), self.mp(w));
        let (ni, di, eps) = (n as i64, self.dims.d as i32, self.dims.eps);
        launch!(self, "rmsnorm_fwd", rows_warp(n), yp, rp, xp, wp, ni, di, eps);
        Ok(())
    }
    fn rmsnorm_bwd(
        &self,
        plan: &GpuPlan,
        dx: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        w: ParamId,
        n: usize,
        acc: bool,
    ) -> Result<()> {
        let (dxp, dyp, xp, rp, wp) = (self.p(dx), self.p(dy), self.p(x), self.p(rstd), self.mp(w));
        crate::norm::rms_bwd(&self.cuda, dxp, self.p(&plan.part), self.gp(g, w), dyp, xp, rp, wp, n, self.dims.d, acc, NnPath::Auto)
    }

    fn linear_fwd(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        self.gemm.fwd(self.p(y), Ty::Bf16, self.p(x), self.wp(w), n, d_in, d_out, 0.0)
    }
    fn linear_fwd_f32(&self, y: &mut CudaSlice<f32>, x: &CudaSlice<u16>, w: ParamId, n: usize, d_in: usize, d_out: usize) -> Result<()> {
        self.gemm.fwd(self.p(y), Ty::F32, self.p(x), self.wp(w), n, d_in, d_out, 0.0)
    }
    fn linear_residual_fwd(
        &self,
        y: &mut CudaSlice<f32>,
        res: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        // y = res, then the GEMM accumulates into it (beta = 1); the buffers may be longer than
        // the n rows (ViG's forward-only streams are sized for the stem too)
        let m = n * d_out;
        vision::need("linear residual res", res, m)?;
        vision::need("linear residual y", y, m)?;
        self.cuda.stream().memcpy_dtod(&res.slice(0..m), &mut y.slice_mut(0..m)).map_err(Error::driver("copy residual"))?;
        self.gemm.fwd(self.p(y), Ty::F32, self.p(x), self.wp(w), n, d_in, d_out, 1.0)
    }
    fn linear_bwd_x(
        &self,
        dx: &mut CudaSlice<f32>,
        dy: &CudaSlice<u16>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
        acc: bool,
    ) -> Result<()> {
        self.gemm.bwd_x(self.p(dx), Ty::F32, self.p(dy), self.wp(w), n, d_in, d_out, if acc { 1.0 } else { 0.0 })
    }
    fn linear_bwd_x_act(
        &self,
        dx: &mut CudaSlice<u16>,
        dy: &CudaSlice<u16>,
        w: ParamId,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        self.gemm.bwd_x(self.p(dx), Ty::Bf16, self.p(dy), self.wp(w), n, d_in, d_out, 0.0)
    }
    fn linear_bwd_w(
        &self,
        g: &mut CudaSlice<f32>,
        w: ParamId,
        dy: &CudaSlice<u16>,
        x: &CudaSlice<u16>,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        self.gemm.bwd_w(self.gp(g, w), self.p(dy), self.p(x), n, d_in, d_out)
    }

    fn conv_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        x: &CudaSlice<u16>,
        w: ParamId,
        b: usize,
        t: usize,
        c: usize,
        silu: bool,
        io: Option<(&mut InferIo<'_>, usize, ConvIdx)>,
    ) -> Result<()> {
        let (yp, xp, wp) = (self.p(y), self.p(x), self.mp(w));
        let (ti, ci, wi, nb, si) = (t as i32, c as i32, self.width(w) as i32, b as i64, i32::from(silu));
        let cache = match io {
            Some((InferIo::Table { addr, b, .. }, l, i)) => {
                // each sequence's own cache, through the state table (decode)
                let (tab, nb) = (*addr + 8 * ((l * 4 + 1 + i) * *b) as u64, *b as i64);
                launch!(self, "conv_decode", flat(*b * c), yp, xp, wp, tab, nb, ci, wi, si);
                return Ok(());
            }
            Some((InferIo::Batch(ctx), l, i)) => ctx.conv[l].as_ref().map_or(0u64, |cc| self.p(&cc[i])),
            None => 0,
        };
        let shape = crate::conv::ConvShape { b, t, c, width: self.width(w) };
        crate::conv::fwd(&self.cuda, yp, xp, wp, cache, shape, silu, NnPath::Auto)?;
        if cache != 0 {
            launch!(self, "conv_cache_update", flat(b * c), cache, xp, nb, ti, ci, wi);
        }
        Ok(())
    }
    fn conv_bwd(
        &self,
        plan: &GpuPlan,
        dx: &mut CudaSlice<u16>,
        g: &mut CudaSlice<f32>,
        w: ParamId,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        b: usize,
        t: usize,
        c: usize,
        silu: bool,
    ) -> Result<()> {
        let (out, dyp, xp, wp) = (self.p(dx), self.p(dy), self.p(x), self.mp(w));
        let shape = crate::conv::ConvShape { b, t, c, width: self.width(w) };
        crate::conv::bwd(&self.cuda, out, self.p(&plan.part), self.gp(g, w), dyp, xp, wp, shape, silu, NnPath::Auto)
    }

    fn gated_norm_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        rstd: &mut CudaSlice<f32>,
        o: &CudaSlice<u16>,
        g: Option<&CudaSlice<u16>>,
        act: GateAct,
        w: ParamId,
        rows: usize,
    ) -> Result<()> {
        let (on, ro, op) = (self.p(y), self.p(rstd), self.p(o));
        let gpre = g.map_or(0u64, |g| self.p(g));
        crate::norm::gated_fwd(&self.cuda, on, ro, op, gpre, self.mp(w), rows, self.width(w), self.dims.eps, act, NnPath::Auto)
    }
    fn gated_norm_bwd(
        &self,
        plan: &GpuPlan,
        d_o: &mut CudaSlice<u16>,
        dg: Option<&mut CudaSlice<u16>>,
        grads: &mut CudaSlice<f32>,
        w: ParamId,
        dy: &CudaSlice<f32>,
        o: &CudaSlice<u16>,
        g: Option<&CudaSlice<u16>>,
        act: GateAct,
        rstd: &CudaSlice<f32>,
        rows: usize,
    ) -> Result<()> {
        let (dop, d_on, op, ro, wp) = (self.p(d_o), self.p(dy), self.p(o), self.p(rstd), self.mp(w));
        let dgp = dg.map_or(0u64, |x| self.p(x));
        let gpre = g.map_or(0u64, |x| self.p(x));
        let (part, gw) = (self.p(&plan.part), self.gp(grads, w));
        crate::norm::gated_bwd(&self.cuda, dop, dgp, part, gw, d_on, op, gpre, ro, wp, rows, self.width(w), act, NnPath::Auto)
    }

    fn swiglu_fwd(&self, h: &mut CudaSlice<u16>, a: &CudaSlice<u16>, b: &CudaSlice<u16>, len: usize) -> Result<()> {
        let (hp, ap, bp, ne) = (self.p(h), self.p(a), self.p(b), len as i64);
        launch!(self, "swiglu_fwd", flat(len), hp, ap, bp, ne);
        Ok(())
    }
    fn swiglu_bwd(
        &self,
        da: &mut CudaSlice<u16>,
        db: &mut CudaSlice<u16>,
        dh: &CudaSlice<f32>,
        a: &CudaSlice<u16>,
        b: &CudaSlice<u16>,
        len: usize,
    ) -> Result<()> {
        let (dap, dbp, dhp, ap, bp, ne) = (self.p(da), self.p(db), self.p(dh), self.p(a), self.p(b), len as i64);
        launch!(self, "swiglu_bwd", flat(len), dap, dbp, dhp, ap, bp, ne);
        Ok(())
    }
    fn feature_map_fwd(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>, len: usize, f: FeatureMap) -> Result<()> {
        let (yp, xp, ne, fc) = (self.p(y), self.p(x), len as i64, f.code());
        launch!(self, "feature_map_fwd", flat(len), yp, xp, ne, fc);
        Ok(())
    }
    fn feature_map_bwd(&self, d: &mut CudaSlice<f32>, x: &CudaSlice<u16>, len: usize, f: FeatureMap) -> Result<()> {
        let (dp, xp, ne, fc) = (self.p(d), self.p(x), len as i64, f.code());
        launch!(self, "feature_map_bwd", flat(len), dp, xp, ne, fc);
        Ok(())
    }

    fn gather_rows(&self, out: &mut CudaSlice<u16>, x: &CudaSlice<u16>, rows: &GpuRows, m: usize) -> Result<()> {
        if m == 0 {
            return Ok(());
        }
        let (sel, xf, rp, mi, di) = (self.p(out), self.p(x), self.p(&rows.rows), m as i64, self.dims.d as i32);
        launch!(self, "gather_rows_bf16", rows_block(m), sel, xf, rp, mi, di);
        Ok(())
    }
    fn cross_entropy(
        &self,
        logits: &mut CudaSlice<f32>,
        dlogits: &mut CudaSlice<u16>,
        rows: &GpuRows,
        m: usize,
        dscale: f32,
    ) -> Result<(f64, usize)> {
        let (dl, lp, cp, lg, tp) = (self.p(dlogits), self.p(&rows.loss), self.p(&rows.correct), self.p(logits), self.p(&rows.targets));
        let (mi, vi) = (m as i64, self.dims.vocab as i32);
        launch!(self, "cross_entropy", rows_block(m), dl, lp, cp, lg, tp, mi, vi, dscale);
        // the one synchronisation of a training forward: the loss is read on the host
        let loss = self.cuda.download(&rows.loss.slice(0..m), "loss")?;
        let correct = self.cuda.download(&rows.correct.slice(0..m), "accuracy")?;
        Ok((loss.iter().map(|&x| f64::from(x)).sum(), correct.iter().filter(|&&x| x != 0).count()))
    }
    fn lm_head_bwd(
        &self,
        g: &mut CudaSlice<f32>,
        w: ParamId,
        dsel: &mut CudaSlice<f32>,
        _logits: &mut CudaSlice<f32>,
        dlogits: &mut CudaSlice<u16>,
        x_sel: &CudaSlice<u16>,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let (d, vocab) = (self.dims.d, self.dims.vocab);
        // dlogits holds d(mean loss)/d logits; the scale goes into the weight GEMM's alpha and
        // into scatter_rows
        self.gemm.bwd_x(self.p(dsel), Ty::F32, self.p(dlogits), self.wp(w), m, d, vocab, 0.0)?;
        self.gemm.bwd_w_scaled(self.gp(g, w), self.p(dlogits), self.p(x_sel), m, d, vocab, scale)
    }
    fn scatter_rows(&self, dx: &mut CudaSlice<f32>, src: &CudaSlice<f32>, rows: &GpuRows, m: usize, _n: usize, scale: f32) -> Result<()> {
        self.cuda.stream().memset_zeros(dx).map_err(Error::driver("zero dxn"))?;
        if m > 0 {
            let (dxp, sp, rp, mi, di) = (self.p(dx), self.p(src), self.p(&rows.rows), m as i64, self.dims.d as i32);
            launch!(self, "scatter_rows_f32", rows_block(m), dxp, sp, rp, mi, di, scale);
        }
        Ok(())
    }

    fn grads_ready(&self, g: &CudaSlice<f32>, point: usize) -> Result<()> {
        if self.reducing.load(Ordering::SeqCst) {
            self.reduce_point(g, point)?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
impl GlaOps for Gpu {
    fn alloc_gla_grads(&self, md: &GlaDims, n: usize) -> Result<[CudaSlice<f32>; 4]> {
        // the sums over the repeats, or (without a repeat) the op's own outputs (gla_bwd)
        let (dm, _) = self.layer_gla(md)?;
        Ok([self.z(n * dm.key_dim)?, self.z(n * dm.key_dim_kv)?, self.z(n * dm.value_dim_kv)?, self.z(n * dm.key_dim_kv)?])
    }

    fn alloc_gla_saved(&self, md: &GlaDims, n: usize) -> Result<GpuGla> {
        let (dm, hp) = self.layer_gla(md)?;
        // q/k/g at the op's heads
        let op_k = n * dm.heads * hp.split * dm.head_k;
        let rep = |r: usize, len: usize| if r > 1 { self.z(len).map(Some) } else { Ok(None) };
        Ok(GpuGla { q_rep: rep(hp.rq, op_k)?, k_rep: rep(hp.rk, op_k)?, v_rep: rep(hp.rv, n * dm.value_dim)?, gk_rep: rep(hp.rk, op_k)? })
    }

    fn gate_fwd(&self, md: &GlaDims, gk: &mut CudaSlice<u16>, raw: &mut CudaSlice<f32>, bias: ParamId, n: usize) -> Result<()> {
        // the gate reads only md's gate fields and no plan: md need not be a layer's op dims (a
        // ViG block's gate covers both scans' key dims at once)
        let dm = md;
        let (gkp, rawp, bp) = (self.p(gk), self.p(raw), self.mp(bias));
        let (ni, ci, norm, hc, cm) =
            (n as i64, dm.key_dim_kv as i32, dm.gate_norm, i32::from(dm.clamp_min.is_some()), dm.clamp_min.unwrap_or(0.0));
        launch!(self, "gate_fwd", flat(n * dm.key_dim_kv), gkp, rawp, bp, ni, ci, norm, hc, cm);
        Ok(())
    }

    fn gate_bwd(
        &self,
        md: &GlaDims,
        plan: &GpuPlan,
        dx: &mut CudaSlice<f32>,
        dx_act: &mut CudaSlice<u16>,
        g: &mut CudaSlice<f32>,
        bias: ParamId,
        dg: &CudaSlice<f32>,
        raw: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let dm = md;
        if col_gy(n) * dm.key_dim_kv > plan.part.len() {
            return Err(unsupported(format!("a gate of {} columns over {n} rows on a plan made for another model", dm.key_dim_kv)));
        }
        let (dxp, dx16, dgp, rawp) = (self.p(dx), self.p(dx_act), self.p(dg), self.p(raw));
        let (tot, norm, hc, cm) =
            ((n * dm.key_dim_kv) as i64, dm.gate_norm, i32::from(dm.clamp_min.is_some()), dm.clamp_min.unwrap_or(0.0));
        launch!(self, "gate_bwd", flat(n * dm.key_dim_kv), dxp, dx16, dgp, rawp, tot, norm, hc, cm);
        let (ni, ci, part) = (n as i64, dm.key_dim_kv as i32, self.p(&plan.part));
        launch!(self, "colsum_f32", cols(n, dm.key_dim_kv), part, dxp, ni, ci);
        self.finalize_cols(self.gp(g, bias), part, n, dm.key_dim_kv)
    }

    fn gla_fwd(
        &self,
        md: &GlaDims,
        plan: &GpuPlan,
        saved: &mut GpuGla,
        o: &mut CudaSlice<u16>,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        g: &CudaSlice<u16>,
        io: Option<(&mut InferIo<'_>, usize)>,
    ) -> Result<()> {
        let c = &*self.cuda;
        let (dm, hp) = self.layer_gla(md)?;
        let gp = plan.gla(dm)?;
        let p = &gp.prob.problem;
        let n = p.b() * p.t();
        let ni = n as i64;
        // repeats to the op's heads
        let kv = dm.kv_heads as i32;
        if let Some(qr) = &saved.q_rep {
            let (out, src, hh, r, e) = (self.p(qr), self.p(q), dm.heads as i32, hp.rq as i32, dm.head_k as i32);
            launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim * hp.rq), out, src, ni, hh, r, e);
        }
        if let (Some(kr), Some(gr)) = (&saved.k_rep, &saved.gk_rep) {
            let (r, e) = (hp.rk as i32, dm.head_k as i32);
            let (out, src) = (self.p(kr), self.p(k));
            launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim_kv * hp.rk), out, src, ni, kv, r, e);
            let (out, src) = (self.p(gr), self.p(g));
            launch!(self, "repeat_heads_bf16", flat(n * dm.key_dim_kv * hp.rk), out, src, ni, kv, r, e);
        }
        if let Some(vr) = &saved.v_rep {
            let (out, src, r, e) = (self.p(vr), self.p(v), hp.rv as i32, dm.head_v as i32);
            launch!(self, "repeat_heads_bf16", flat(n * dm.value_dim), out, src, ni, kv, r, e);
        }
        let x_in = Self::gla_inputs(saved, q, k, v, g);
        match io {
            None => {
                let ws = &mut gp.bufs.lock().unwrap_or_else(|e| e.into_inner()).ws;
                ops::gla_fwd_ws(c, FwdKernel::Chunk, &gp.prob, &x_in, ws, o, None)?;
            }
            Some((InferIo::Batch(ctx), l)) => {
                // one token per sequence takes the recurrent kernel, as fla's decode does
                let which = if p.t() == 1 { FwdKernel::Recurrent } else { FwdKernel::Chunk };
                let x_in = DevInputs { h0: Some(&ctx.h0[l]), ..x_in };
                let ws = &mut gp.bufs.lock().unwrap_or_else(|e| e.into_inner()).ws;
                ops::gla_fwd_ws(c, which, &gp.prob, &x_in, ws, o, Some(&mut ctx.ht[l]))?;
            }
            Some((InferIo::Table { addr, b, .. }, l)) => {
                if p.t() != 1 {
                    return Err(unsupported(format!("the decode step takes one token per sequence, got T = {}", p.t())));
                }
                let tab = *addr + 8 * (l * 4 * *b) as u64;
                // SAFETY: the table's entries for layer l are the recurrent states of the B
                // sequences (the contract of `DecodeStep::body`, the only maker of a Table)
                unsafe { ops::gla_decode(c, &gp.prob, &x_in, tab, *b, o)? };
            }
        }
        Ok(())
    }

    fn gla_bwd(
        &self,
        md: &GlaDims,
        plan: &GpuPlan,
        saved: &GpuGla,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        g: &CudaSlice<u16>,
        d_o: &CudaSlice<u16>,
        grads: [&mut CudaSlice<f32>; 4],
    ) -> Result<()> {
        let c = &*self.cuda;
        let (dm, hp) = self.layer_gla(md)?;
        let gp = plan.gla(dm)?;
        let n = gp.prob.problem.b() * gp.prob.problem.t();
        let x_in = Self::gla_inputs(saved, q, k, v, g);
        let [dq, dk, dv, dg] = grads;
        let mut bufs = gp.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let GlaBufs { ws, rep: [rq, rk, rv, rg] } = &mut *bufs;
        // the op's gradients at its heads: the plan's buffers where the heads repeat (summed
        // back below), else the caller's
        let out = DevGradsMut {
            dq: rq.as_mut().unwrap_or(&mut *dq),
            dk: rk.as_mut().unwrap_or(&mut *dk),
            dv: rv.as_mut().unwrap_or(&mut *dv),
            dg: rg.as_mut().unwrap_or(&mut *dg),
            dh0: None,
        };
        if ops::chunk_bwd_supported::<u16>(&gp.prob.problem) {
            ops::gla_bwd_chunk_ws(c, &gp.prob, &x_in, d_o, None, ws, out, false)?;
        } else {
            ops::gla_bwd_ws(c, &gp.prob, &x_in, d_o, None, ws, out)?;
        }
        // sum the repeats back: dq over value splits, dk/dg over groups and splits, dv over
        // groups
        let kv = dm.kv_heads;
        if let Some(r) = rq {
            self.sum_back(dq, r, n, dm.heads, hp.rq, dm.head_k)?;
        }
        if let (Some(rk), Some(rg)) = (rk, rg) {
            self.sum_back(dk, rk, n, kv, hp.rk, dm.head_k)?;
            self.sum_back(dg, rg, n, kv, hp.rk, dm.head_k)?;
        }
        if let Some(r) = rv {
            self.sum_back(dv, r, n, kv, hp.rv, dm.head_v)?;
        }
        Ok(())
    }
}

/// The delta-rule family on the GPU (module doc): the op of [`crate::delta::ops`] on the plan's
/// workspace and bf16 inputs, chunked for training and prefill, the decode kernel for one token
/// per sequence; DeltaNet's sum norm on `kernels/nn/elementwise.cu`. The CPU backend
/// (gla-model's `cpu.rs`) is the reference.
#[allow(clippy::too_many_arguments)]
/// The GPU's softmax-attention layer is not wired yet: every method is a typed
/// [`gla_core::Error::Unsupported`] (and `gpu_mixers` refuses a model with attention layers
/// before any of them is reached).
impl AttnOps for Gpu {
    fn alloc_attn_grads(&self, md: &AttnDims, n: usize) -> Result<[CudaSlice<f32>; 3]> {
        let dm = self.layer_attn(md)?;
        Ok([self.z(n * dm.q_dim())?, self.z(n * dm.kv_dim())?, self.z(n * dm.kv_dim())?])
    }

    fn alloc_attn_saved(&self, md: &AttnDims, n: usize) -> Result<CudaSlice<f32>> {
        let dm = self.layer_attn(md)?;
        self.z(n * dm.heads)
    }

    fn bias_fwd(&self, y: &mut CudaSlice<u16>, bias: ParamId, n: usize) -> Result<()> {
        let (yp, bp, ni, ci) = (self.p(y), self.mp(bias), n as i64, self.width(bias) as i32);
        launch!(self, "bias_add_bf16", flat(n * self.width(bias)), yp, bp, ni, ci);
        Ok(())
    }

    fn bias_bwd(&self, plan: &GpuPlan, g: &mut CudaSlice<f32>, bias: ParamId, dy: &CudaSlice<f32>, n: usize) -> Result<()> {
        let c = self.width(bias);
        let (part, dyp, ni, ci) = (self.p(&plan.part), self.p(dy), n as i64, c as i32);
        launch!(self, "colsum_f32", cols(n, c), part, dyp, ni, ci);
        self.finalize_cols(self.gp(g, bias), part, n, c)
    }

    fn rope_fwd(
        &self,
        md: &AttnDims,
        plan: &GpuPlan,
        y: &mut CudaSlice<u16>,
        x: &CudaSlice<u16>,
        heads: usize,
        io: Option<&InferIo<'_>>,
    ) -> Result<()> {
        let ap = plan.attn(md)?;
        let p = &ap.prob.problem;
        let (n, t) = (p.b() * p.t(), p.t());
        // each sequence's tokens seen before this forward (none in training)
        let pos0 = match io {
            None => 0u64,
            Some(InferIo::Batch(ctx)) => self.p(&ctx.pos),
            Some(InferIo::Table { pos, .. }) => *pos,
        };
        let (yp, xp, fp) = (self.p(y), self.p(x), self.p(&ap.inv_freq));
        let (ni, ti, hi, di) = (n as i64, t as i32, heads as i32, md.head_dim as i32);
        launch!(self, "rope_bf16", flat(n * heads * md.head_dim / 2), yp, xp, fp, pos0, ni, ti, hi, di);
        Ok(())
    }

    fn rope_bwd(&self, md: &AttnDims, plan: &GpuPlan, d: &mut CudaSlice<f32>, heads: usize) -> Result<()> {
        let ap = plan.attn(md)?;
        let p = &ap.prob.problem;
        let (n, t) = (p.b() * p.t(), p.t());
        let (dp, fp) = (self.p(d), self.p(&ap.inv_freq));
        let (ni, ti, hi, di) = (n as i64, t as i32, heads as i32, md.head_dim as i32);
        launch!(self, "rope_bwd_f32", flat(n * heads * md.head_dim / 2), dp, fp, ni, ti, hi, di);
        Ok(())
    }

    fn attn_fwd(
        &self,
        md: &AttnDims,
        plan: &GpuPlan,
        saved: &mut CudaSlice<f32>,
        o: &mut CudaSlice<u16>,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        io: Option<(&mut InferIo<'_>, usize)>,
    ) -> Result<()> {
        let ap = plan.attn(md)?;
        let p = &ap.prob.problem;
        let (b, t) = (p.b(), p.t());
        let (wq, wk) = (md.q_dim() as u64, md.kv_dim() as u64);
        match io {
            None => attn_ops::attn_fwd(&self.cuda, &ap.prob, &AttnDevInputs { q, k, v }, o, saved),
            Some((InferIo::Batch(ctx), l)) => {
                let kvs = &ctx.kv[l];
                if kvs.len() != b || ctx.seen.len() != b {
                    return Err(unsupported(format!("a prefill of {b} sequences with {} KV caches", kvs.len())));
                }
                let (ql, row) = (self.p(q), md.kv_dim() as i32);
                if ctx.seen.iter().all(|&n| n == 0) {
                    // fresh caches: the whole batch in one call, then every row joins its cache
                    // (a ring buffer keeps the last `window`)
                    let mut lse = self.z(p.lse_len())?;
                    attn_ops::attn_fwd(&self.cuda, &ap.prob, &AttnDevInputs { q, k, v }, o, &mut lse)?;
                    for (i, kv) in kvs.iter().enumerate() {
                        let (p0, cnt, sl) = (0i64, t as i64, kv.slots as i64);
                        for (cache, src) in [(kv.k, self.p(k)), (kv.v, self.p(v))] {
                            let src = src + 2 * i as u64 * t as u64 * wk;
                            launch!(self, "kv_scatter_bf16", flat(t.min(kv.slots) * md.kv_dim()), cache, src, p0, cnt, sl, row);
                        }
                    }
                    return Ok(());
                }
                // caches that hold tokens already: token by token through the decode kernels
                // (as the CPU does; a generation prefills each prompt whole into empty caches)
                let lens: Vec<i32> = (0..b * t).map(|r| i32::try_from(ctx.seen[r / t] + r % t + 1).unwrap_or(i32::MAX)).collect();
                let lens = self.cuda.upload(&lens, "prefill lengths")?;
                let most =
                    kvs.iter().map(|kv| attn_disp::decode_split(1, md.kv_heads, kv.slots, self.cuda.sm_count()).0).max().unwrap_or(1);
                let (po, pl, lse) =
                    (self.z::<f32>(md.heads * most * md.head_dim)?, self.z::<f32>(md.heads * most)?, self.z::<f32>(md.heads)?);
                for r in 0..b * t {
                    let rr = r as u64;
                    let at = [ql + 2 * rr * wq, self.p(k) + 2 * rr * wk, self.p(v) + 2 * rr * wk, self.p(o) + 2 * rr * wq, self.p(&lse)];
                    self.attn_decode_one(md, kvs[r / t], at, self.p(&lens) + 4 * rr, [self.p(&po), self.p(&pl)], most)?;
                }
                Ok(())
            }
            Some((InferIo::Table { b: nb, host, pos, .. }, l)) => {
                if t != 1 || *nb != b {
                    return Err(unsupported(format!("a decode step of [{b}, {t}] on a table of {nb} sequences")));
                }
                for i in 0..b {
                    let e = |j: usize| host[(l * 4 + j) * b + i];
                    let kv = KvRef { k: e(0), v: e(1), slots: e(2) as usize };
                    let iu = i as u64;
                    let at = [
                        self.p(q) + 2 * iu * wq,
                        self.p(k) + 2 * iu * wk,
                        self.p(v) + 2 * iu * wk,
                        self.p(o) + 2 * iu * wq,
                        self.p(&ap.lse) + 4 * iu * md.heads as u64,
                    ];
                    let part = ap.max_splits as u64 * md.heads as u64;
                    let pp = [self.p(&ap.po) + 4 * iu * part * md.head_dim as u64, self.p(&ap.pl) + 4 * iu * part];
                    // the lengths are the positions' second row
                    self.attn_decode_one(md, kv, at, *pos + 4 * (b + i) as u64, pp, ap.max_splits)?;
                }
                Ok(())
            }
        }
    }

    fn attn_bwd(
        &self,
        md: &AttnDims,
        plan: &GpuPlan,
        saved: &CudaSlice<f32>,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        o: &CudaSlice<u16>,
        d_o: &CudaSlice<u16>,
        grads: [&mut CudaSlice<f32>; 3],
    ) -> Result<()> {
        let ap = plan.attn(md)?;
        let mut bufs = ap.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(b) = bufs.as_mut() else {
            return Err(unsupported("an attention backward on a plan made for inference".into()));
        };
        attn_ops::attn_bwd_ws(&self.cuda, &ap.prob, &AttnDevInputs { q, k, v }, o, saved, d_o, &mut b.delta, &mut b.grads)?;
        // the op's bf16 gradients widened for RoPE's backward, the bias sums and the casts
        for (dst, src) in grads.into_iter().zip([&b.grads.dq, &b.grads.dk, &b.grads.dv]) {
            let (dp, sp, len) = (self.p(dst), self.p(src), dst.len().min(src.len()) as i64);
            launch!(self, "widen_bf16_f32", flat(len as usize), dp, sp, len);
        }
        Ok(())
    }
}

impl DeltaOps for Gpu {
    fn alloc_delta_grads(&self, md: &DeltaDims, n: usize) -> Result<[CudaSlice<f32>; 5]> {
        let dm = self.layer_delta(md)?;
        // the op writes every one in full (dbeta even for a constant beta, where the mixer
        // ignores it); da only with the decay
        let hv = n * dm.v_heads;
        Ok([
            self.z(n * dm.key_dim)?,
            self.z(n * dm.key_dim)?,
            self.z(n * dm.value_dim)?,
            self.z(hv)?,
            self.z(if dm.decay { hv } else { 1 })?,
        ])
    }

    fn alloc_delta_saved(&self, md: &DeltaDims, _n: usize) -> Result<()> {
        // nothing per layer (GpuBuf's DeltaSaved); the dims are checked here, at allocation
        self.layer_delta(md).map(|_| ())
    }

    fn delta_fwd(
        &self,
        md: &DeltaDims,
        plan: &GpuPlan,
        _saved: &mut (),
        o: &mut CudaSlice<u16>,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        beta: Option<&CudaSlice<f32>>,
        decay: Option<DeltaDecay<'_, CudaSlice<f32>>>,
        io: Option<(&mut InferIo<'_>, usize)>,
    ) -> Result<()> {
        self.layer_delta(md)?;
        let c = &*self.cuda;
        let dp = plan.delta(md)?;
        let mut bufs = dp.bufs.lock().unwrap_or_else(|e| e.into_inner());
        self.delta_prep(&mut bufs, beta, decay)?;
        let DeltaBufs { ws, beta: b16, a, a_log, dt_bias, .. } = &mut *bufs;
        let gated = decay.is_some();
        let x = DeltaDevInputs {
            q,
            k,
            v,
            beta: b16,
            g: gated.then_some(&*a),
            a_log: gated.then_some(&*a_log),
            dt_bias: gated.then_some(&*dt_bias),
            h0: None,
        };
        match io {
            None => delta_ops::delta_fwd_ws(c, DeltaAlgo::Chunked, &dp.prob, &x, ws, o, None),
            Some((InferIo::Batch(ctx), l)) => {
                // prefill from the states of the batch (chunked, as training)
                let x = DeltaDevInputs { h0: Some(&ctx.h0[l]), ..x };
                delta_ops::delta_fwd_ws(c, DeltaAlgo::Chunked, &dp.prob, &x, ws, o, Some(&mut ctx.ht[l]))
            }
            Some((InferIo::Table { addr, b, .. }, l)) => {
                let t = dp.prob.problem.t();
                if t != 1 {
                    return Err(unsupported(format!("the decode step takes one token per sequence, got T = {t}")));
                }
                // layer l's recurrent states: the first B entries of its [4][B] block
                let tab = *addr + 8 * (l * 4 * *b) as u64;
                // SAFETY: the table's entries for layer l are the delta states [HV, K, V] of the
                // B sequences, distinct and live for the step (the contract of
                // `DecodeStep::body`, the only maker of a Table; their sizes are checked against
                // this model's by GpuDecoding)
                unsafe { delta_ops::delta_decode(c, &dp.prob, &x, tab, *b, o) }
            }
        }
    }

    fn delta_bwd(
        &self,
        md: &DeltaDims,
        plan: &GpuPlan,
        _saved: &(),
        grads: &mut CudaSlice<f32>,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        beta: Option<&CudaSlice<f32>>,
        decay: Option<DeltaDecay<'_, CudaSlice<f32>>>,
        d_o: &CudaSlice<u16>,
        out: [&mut CudaSlice<f32>; 5],
    ) -> Result<()> {
        let dm = self.layer_delta(md)?;
        let c = &*self.cuda;
        let dp = plan.delta(md)?;
        let mut bufs = dp.bufs.lock().unwrap_or_else(|e| e.into_inner());
        // the plan's inputs were overwritten by the later layers' forwards: made again
        self.delta_prep(&mut bufs, beta, decay)?;
        let DeltaBufs { ws, beta: b16, a, a_log, dt_bias, da_log, ddt_bias } = &mut *bufs;
        let gated = decay.is_some();
        let x = DeltaDevInputs {
            q,
            k,
            v,
            beta: b16,
            g: gated.then_some(&*a),
            a_log: gated.then_some(&*a_log),
            dt_bias: gated.then_some(&*dt_bias),
            h0: None,
        };
        let [dq, dk, dv, dbeta, da] = out;
        let g = DeltaDevGradsMut { dq, dk, dv, dbeta, dg: da, da_log: &mut *da_log, ddt_bias: &mut *ddt_bias, dh0: None };
        // the workspace holds another layer's forward: the chunk states are recomputed
        delta_ops::delta_bwd_ws(c, DeltaAlgo::Chunked, &dp.prob, &x, d_o, None, ws, false, g)?;
        if let Some(d) = decay {
            // accumulate dA_log, ddt_bias [HV] into the arena (col_finalize over one partial row)
            let hv = dm.v_heads as i32;
            for (id, src) in [(d.a_log, &*da_log), (d.dt_bias, &*ddt_bias)] {
                let (dw, part, gy) = (self.gp(grads, id), self.p(src), 1i32);
                launch!(self, "col_finalize", flat(dm.v_heads), dw, part, gy, hv);
            }
        }
        Ok(())
    }

    fn sum_norm_fwd(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>, rows: usize, width: usize) -> Result<()> {
        let (yp, xp, rs, k) = (self.p(y), self.p(x), rows as i64, width as i32);
        launch!(self, "sum_norm_fwd", rows_warp(rows), yp, xp, rs, k);
        Ok(())
    }

    fn sum_norm_bwd(&self, d: &mut CudaSlice<f32>, x: &CudaSlice<u16>, rows: usize, width: usize) -> Result<()> {
        let (dp, xp, rs, k) = (self.p(d), self.p(x), rows as i64, width as i32);
        launch!(self, "sum_norm_bwd", rows_warp(rows), dp, xp, rs, k);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::dims::{MixerDims, QkNorm};

    fn delta(k: usize, conv: usize) -> DeltaDims {
        DeltaDims {
            heads: 2,
            v_heads: 4,
            head_k: k,
            head_v: 32,
            key_dim: 2 * k,
            value_dim: 128,
            conv,
            qk_act: FeatureMap::Silu,
            qk_norm: QkNorm::L2,
            use_beta: true,
            allow_neg_eigval: false,
            decay: true,
            output_gate: Some(GateAct::Sigmoid),
        }
    }

    fn dims(mixers: Vec<MixerDims>) -> Dims {
        Dims { d: 64, layers: mixers.len(), intermediate: 128, vocab: 256, eps: 1e-6, tied: false, pad: None, init_std: 0.02, mixers }
    }

    #[test]
    fn delta_models_take_one_mixer_with_their_state_sizes() {
        let (m, of_layer) = gpu_mixers(&dims(vec![MixerDims::Delta(delta(16, 4)); 2])).expect("a delta model runs");
        assert_eq!((m.as_slice(), of_layer.as_slice()), ([GpuMixer::Delta(delta(16, 4))].as_slice(), [0, 0].as_slice()));
        // [HV, K, V] and the q, k, v conv caches [C, W]
        assert_eq!(m[0].state_sizes(), (4 * 16 * 32, [32 * 4, 32 * 4, 128 * 4]));
        // the conv weights' partial sums: the widest conv (value_dim 128) x W columns
        let d = dims(vec![MixerDims::Delta(delta(16, 4))]);
        assert!(part_len(&d, &m, 10) >= col_gy(10) * 128 * 4);
        assert!(part_len(&d, &m, 10) >= col_gy(10 * 4) * 32);
    }

    #[test]
    fn layers_with_different_mixers_share_one_plan_per_distinct_mixer() {
        let (a, b) = (MixerDims::Delta(delta(16, 4)), MixerDims::Delta(delta(32, 0)));
        let (m, of_layer) = gpu_mixers(&dims(vec![a, b, a, b, b])).expect("a mixed stack runs");
        assert_eq!(m.iter().map(GpuMixer::dims).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(of_layer, vec![0, 1, 0, 1, 1]);
        // the partial sums fit the widest mixer's reductions
        let d = dims(vec![a, b]);
        assert_eq!(part_len(&d, &m, 10), part_len(&d, &m[..1], 10).max(part_len(&d, &m[1..], 10)));
    }

    #[test]
    fn the_gpu_refuses_what_its_kernels_do_not_take() {
        let msg = |d: Dims| gpu_mixers(&d).expect_err("refused").to_string();
        assert!(msg(dims(vec![MixerDims::Delta(delta(16, 4)), MixerDims::Delta(delta(320, 4))])).contains("320"));
        assert!(msg(dims(vec![MixerDims::Delta(delta(16, MAX_CONV + 1))])).contains("short conv"));
        assert!(gpu_mixers(&dims(vec![MixerDims::Delta(delta(16, 0))])).is_ok());
    }
}
