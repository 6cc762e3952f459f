//! The delta-rule family (DeltaNet, Gated DeltaNet) on the CPU; the contract is
//! [`gla_core::delta`].
//!
//! - [`DeltaNaive`]: token by token, generic over f32/f64, every state kept for the backward:
//!   the oracle every other path is tested against (its backward checked by finite differences).
//!
//! Every path runs the elementwise maps of the op (L2 norm of q and k, the beta sigmoid, the
//! computed gate) through [`prep`], forward and backward, so the paths differ only in the
//! recurrence.

mod naive;
pub mod prep;

pub use naive::DeltaNaive;
