//! Softmax attention on the GPU (the contract is [`gla_core::attn`]; the math
//! `docs/math/attention.md`): the kernels under `kernels/attn/` (docs/kernels.md, section
//! "Softmax attention"), their launchers over device buffers ([`ops`]: forward, backward, and the
//! decode step over a KV cache, [`ops::AttnKvCache`], whose contract is
//! [`gla_core::AttnCacheLayout`]), and [`CudaAttn`], a [`gla_core::AttnOp<f32>`] over host slices
//! for the checks. The dispatch policy and every tuning choice live in [`crate::dispatch::attn`].

mod op;
pub mod ops;

pub use op::{AttnOpAlgo, CudaAttn};
