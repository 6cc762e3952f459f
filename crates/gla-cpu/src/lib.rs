//! gla-cpu: the GLA family on the CPU.
//!
//! Three algorithms, one result (see [`gla_core::op`] for the math):
//! - [`Naive`]: token by token, generic over f32/f64: the oracle every other path is tested against;
//! - [`FusedRecurrent`]: O(K*V) memory per sequence, for decoding ([`decode_step`]) and short inputs;
//! - [`Chunked`]: chunks of 64 with 16-row sub-chunks, matrix work on the gemm crate, parallel over
//!   sequences x heads and chunks (rayon): the fast path for training and prefill.
//!
//! All three handle every gate kind and packed varlen input. f32 is the product precision; the
//! oracle also runs in f64.
//!
//! The delta-rule family (DeltaNet, Gated DeltaNet) has the same three paths and a decode step in
//! [`delta`] ([`DeltaNaive`], [`DeltaRecurrent`], [`DeltaChunked`], [`delta_step`]).
//!
//! The bidirectional scan of ViG has its oracle and fast paths in [`bidir`] ([`BidirNaive`],
//! [`BidirChunked`], [`BidirFused`]).
//!
//! ```
//! use gla_core::{op::GlaOp, GateKind, Inputs, Problem, ProblemSpec};
//! use gla_cpu::{Chunked, Naive};
//! let p = Problem::new(ProblemSpec { b: 1, t: 70, h: 2, k: 8, v: 4, gate: GateKind::PerKey, scale: None, cu_seqlens: None }).unwrap();
//! let q = vec![0.5f32; p.qk_len()];
//! let v = vec![1.0f32; p.v_len()];
//! let g = vec![-0.1f32; p.g_len()];
//! let x = Inputs { q: &q, k: &q, v: &v, g: Some(&g), h0: None };
//! let fast = Chunked::default().forward(&p, &x, true).unwrap();
//! let slow = Naive.forward(&p, &x, true).unwrap();
//! assert!((fast.o[100] - slow.o[100]).abs() < 1e-4);
//! ```
#![deny(missing_docs)]

pub mod attn;
pub mod bidir;
mod chunk;
pub mod delta;
mod driver;
pub mod fexp;
pub mod mat;
mod naive;
mod recurrent;

pub use attn::{AttnCache, AttnNaive, AttnTiled};
pub use bidir::{BidirChunked, BidirFused, BidirNaive};
pub use chunk::{Chunked, Schedule};
pub use delta::{delta_step, DeltaChunked, DeltaNaive, DeltaRecurrent};
pub use naive::Naive;
pub use recurrent::{decode_step, FusedRecurrent};
