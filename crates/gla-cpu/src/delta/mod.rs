//! The delta-rule family (DeltaNet, Gated DeltaNet) on the CPU; the contract is
//! [`gla_core::delta`].
//!
//! Three algorithms, one result:
//! - [`DeltaNaive`]: token by token, generic over f32/f64, every state kept for the backward:
//!   the oracle every other path is tested against (its backward checked by finite differences);
//! - [`DeltaRecurrent`]: O(K*V) memory per (sequence, value head), for decoding ([`delta_step`])
//!   and short inputs;
//! - [`DeltaChunked`]: chunks of `BT = 64` in the WY representation, matrix work on the gemm
//!   crate: the fast path for training and prefill (`docs/math/delta.md`).
//!
//! The fast paths run in parallel over N x HV (rayon; the chunked backward also over chunks), in
//! f32 as the product and in f64 as a check of their formulas. Every path runs the elementwise
//! maps of the op (L2 norm of q and k, the beta sigmoid, the computed gate) through [`prep`],
//! forward and backward, so the paths differ only in the recurrence.
//!
//! ```
//! use gla_core::{DeltaGate, DeltaInputs, DeltaOp, DeltaProblem, DeltaSpec};
//! use gla_cpu::delta::{DeltaChunked, DeltaNaive};
//! let p = DeltaProblem::new(DeltaSpec::new(1, 70, 2, 8, 4, DeltaGate::LogDecay)).unwrap();
//! let q = vec![0.3f32; p.qk_len()];
//! let v = vec![1.0f32; p.v_len()];
//! let (beta, g) = (vec![0.5f32; p.beta_len()], vec![-0.1f32; p.g_len()]);
//! let x = DeltaInputs { q: &q, k: &q, v: &v, beta: &beta, g: Some(&g), a_log: None, dt_bias: None, h0: None };
//! let fast = DeltaChunked.forward(&p, &x, true).unwrap();
//! let slow = DeltaNaive.forward(&p, &x, true).unwrap();
//! assert!((fast.o[100] - slow.o[100]).abs() < 1e-5);
//! ```

mod chunk;
mod driver;
mod mm;
mod naive;
pub mod prep;
mod recurrent;

pub use chunk::DeltaChunked;
pub use naive::DeltaNaive;
pub use recurrent::{delta_step, DeltaRecurrent};
