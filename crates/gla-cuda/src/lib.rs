//! gla-cuda: the GLA family on NVIDIA GPUs, the only crate that touches cudarc.
//!
//! - [`runtime`]: library probes (no GPU / no driver / no libnvrtc gives an [`Error`], never a
//!   panic), NVRTC compile to CUBIN with an in-process and an on-disk cache, the [`Cuda`] device
//!   handle (context + stream; every device allocation of the crate, counted).
//! - kernels under `crates/gla-cuda/kernels/` by algorithm (`common/`, `gla/`, `nn/`;
//!   docs/kernels.md), self-contained CUDA C++ (no toolkit headers), embedded with
//!   `include_str!` ([`kernels::ALL`]) and launched by name through [`Cuda::launch`].
//! - [`dispatch`]: which kernels run for a dtype, K, V and gate, and every launch tuning choice.
//! - [`backend`]: the backend contract of gla-core ([`gla_core::backend::Backend`]: the
//!   primitives and the GLA op family) as kernel launches and cuBLAS GEMMs; [`weights`]: device
//!   weights of a parameter table ([`GpuWeights`]: bf16 copy, gradients, the fused AdamW, the
//!   NCCL gradient all-reduce around a backward); [`decode`]: the decoder's device parts
//!   ([`GpuState`], batch state copies, the decode step's state table and CUDA graph).
//!
//! The crate depends on the contracts only (gla-core): it knows no model. The language model's
//! forward and backward run on [`backend::Gpu`] from gla-model (`gla_model::gpu`, its `cuda`
//! feature), which also holds the GPU training device and decoder.
//! - [`ops`]: typed launchers over device buffers; [`CudaGla`]: a [`gla_core::op::GlaOp<f32>`]
//!   that uploads host slices, runs, downloads (f32 or bf16 storage).
//! - [`delta`]: the delta-rule family (DeltaNet, Gated DeltaNet): launchers over device buffers
//!   ([`delta::ops`]), [`CudaDelta`] (a [`gla_core::DeltaOp<f32>`]); its dispatch policy is
//!   [`dispatch::delta`].
//! - [`attn`]: softmax attention (flash forward / backward, decode over a KV cache): launchers
//!   over device buffers ([`attn::ops`]), [`CudaAttn`] (a [`gla_core::AttnOp<f32>`]); its
//!   dispatch policy is [`dispatch::attn`].
//! - [`bidir`]: the bidirectional scan of ViG (fused chunked forward, composed backward),
//!   [`CudaBidir`] (a [`gla_core::BidirOp<f32>`]).
//! - [`lab`]: kernels under study and their checks (no op runs them).
//! - [`mod@bench`]: event-timed medians of the ops with their HBM floors and FLOPs.
//! - [`dist`]: data-parallel training over NCCL (torchrun-style environment, rendezvous,
//!   communicator with timeouts, gradient buckets overlapped with the backward).
//!
//! Everything builds and its tests run without a GPU or a CUDA toolkit.
//!
//! # Environment
//!
//! Read once, when a [`Cuda`] is opened ([`runtime::Options`]) or the kernel cache is first used:
//! - `GLA_SYNC_DEBUG=1`: synchronise after every kernel launch and GEMM, so that an asynchronous
//!   fault is reported by the launch that caused it (slow; for debugging). Also turns off the
//!   decode step's CUDA graph.
//! - `GLA_NO_GRAPH=1`: run decode steps eagerly instead of replaying a captured CUDA graph.
//! - `GLA_CACHE_DIR`: the on-disk cache of compiled kernels ([`runtime::cache_dir`]).
//!
//! The data-parallel launcher's variables (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...) are
//! documented in [`dist`].
#![deny(missing_docs)]

pub mod attn;
pub mod backend;
pub mod bench;
pub mod bidir;
pub mod conv;
pub mod decode;
pub mod delta;
pub mod dispatch;
pub mod dist;
mod error;
pub mod kernels;
pub mod lab;
pub mod norm;
mod op;
pub mod ops;
pub mod runtime;
pub mod weights;

pub use attn::{AttnOpAlgo, CudaAttn};
pub use backend::Gpu;
pub use bidir::{BidirAlgo, CudaBidir};
pub use decode::{DecodeStep, GpuDecoding, GpuState};
pub use delta::{CudaDelta, DeltaOpAlgo};
pub use error::{Error, Result};
pub use op::{Algo, CudaGla};
pub use runtime::Cuda;
pub use weights::{GpuWeights, HostMoments};
