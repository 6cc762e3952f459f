//! The delta-rule family on the GPU (DeltaNet, Gated DeltaNet; the contract is
//! [`gla_core::delta`]): the kernels under `kernels/delta/` (docs/kernels.md, section "The delta
//! rule"), their launchers over device buffers ([`ops`]: forward, decode step, backward, each with
//! a caller-held [`ops::DeltaWorkspace`]), and [`CudaDelta`], a [`gla_core::DeltaOp<f32>`] over
//! host slices for the checks. The dispatch policy and every tuning choice live in
//! [`crate::dispatch::delta`].

mod op;
pub mod ops;

pub use crate::dispatch::delta::{DeltaAlgo, DeltaPath, DeltaWorkspaceLens};
pub use op::{CudaDelta, DeltaOpAlgo};
