//! gla-core: the contract every backend of the gated-linear-attention family implements.
//!
//! It owns no arithmetic. It says what the op computes (see [`op`]), which shapes and
//! options are legal ([`Problem`]), how bad input is reported ([`Error`]), and the
//! numeric scalar trait the CPU oracle is generic over ([`Real`]).
//!
//! Shape letters are fixed across the project: `B` batch, `T` time, `H` heads, `K` key dim,
//! `V` value dim, `N` sequences (B, or `cu_seqlens.len() - 1` for packed varlen input),
//! `BT` chunk length, `NT` number of chunks.
//!
//! ```
//! use gla_core::{GateKind, Problem, ProblemSpec};
//! // two sequences of 3 and 5 tokens packed into [1, 8, H, K]
//! let p = Problem::new(ProblemSpec {
//!     b: 1, t: 8, h: 2, k: 4, v: 6,
//!     gate: GateKind::PerKey,
//!     scale: None,
//!     cu_seqlens: Some(vec![0, 3, 8]),
//! }).unwrap();
//! assert_eq!(p.n(), 2);
//! assert_eq!(p.seq(1), 3..8);
//! assert_eq!(p.scale(), 0.5);
//! ```
#![deny(missing_docs)]

pub mod attn;
pub mod backend;
pub mod bf16;
pub mod bidir;
pub mod delta;
pub mod dims;
mod error;
pub mod io;
pub mod op;
pub mod optim;
pub mod params;
mod problem;
mod real;

pub use attn::{AttnCacheLayout, AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem, AttnSpec};
pub use bidir::{BidirGrads, BidirInputs, BidirOp, BidirProblem, BidirSpec};
pub use delta::{DeltaGate, DeltaGrads, DeltaInputs, DeltaOp, DeltaProblem, DeltaSpec};
pub use error::{Error, Result};
pub use op::{Backward, Forward, GateKind, Grads, Inputs};
pub use problem::{Problem, ProblemSpec};
pub use real::Real;

/// Chunk length of the chunked algorithm (fla's BT for T >= 64).
pub const BT: usize = 64;
/// Sub-chunk length inside a chunk (fla's BC): the normaliser granularity.
pub const BC: usize = 16;
