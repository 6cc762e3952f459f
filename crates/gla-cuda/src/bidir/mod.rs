//! The bidirectional GLA scan of ViG on the GPU (contract: [`gla_core::bidir`]; math:
//! `docs/math/bidir.md`): the fused chunked forward (`kernels/bidir/chunk_fwd.cu`: both
//! directions' gate prep, both state walks in one launch, one output pass reading each chunk's
//! q, k, v for both directions and writing o once); the fused backward
//! (`kernels/bidir/chunk_bwd.cu`: the four state walks in one launch, A of both directions, the
//! GLA gradient launches once per direction, the backward one on reversed rows, the two scans'
//! gradients summed in the second one's stores); the composed path (the GLA op on x and on
//! flip(x), `kernels/bidir/flip.cu`) where the fused kernels do not apply. Their launchers
//! ([`ops`]), their benchmark ([`mod@bench`]) and [`CudaBidir`], a [`gla_core::BidirOp<f32>`] over
//! host slices for the checks. The dispatch policy is [`crate::dispatch::bidir`].

pub mod bench;
mod op;
pub mod ops;

pub use crate::dispatch::bidir::BidirAlgo;
pub use op::CudaBidir;
