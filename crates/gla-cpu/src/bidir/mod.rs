//! The bidirectional GLA scan of ViG on the CPU (contract: [`gla_core::bidir`]; math:
//! `docs/math/bidir.md`): the naive oracle [`BidirNaive`] (both recurrences walked token by
//! token, generic over f32 / f64; f64 is the reference) and the fast path [`BidirChunked`]
//! (the GLA chunked path on each direction, the backward one on reversed copies), and
//! [`BidirFused`], both directions of sequences of at most one chunk from one load and one score
//! matrix (ViG on small images), the chunked path beyond.

mod chunk;
mod fused;
mod naive;

pub use chunk::BidirChunked;
pub use fused::BidirFused;
pub use naive::BidirNaive;
