//! The backend interface: what a device implements so that every model of the family runs on
//! it (gla-model writes the models once over these traits; gla-cpu-side and gla-cuda implement them).
//!
//! - [`Primitives`] ([`nn`]): the layer ops every model shares (allocation, embedding, norms,
//!   linear layers on GEMMs, short convolution, SwiGLU, elementwise feature maps, the loss).
//! - one trait per op family: [`GlaOps`] ([`gla`]: the GLA gate and the GLA op, called by
//!   gla-model's `mixers::gla`), [`DeltaOps`] ([`delta`]: the delta rule of DeltaNet and Gated
//!   DeltaNet, called by gla-model's `mixers::delta`), [`AttnOps`] ([`attn`]: softmax attention
//!   with RoPE, called by gla-model's `mixers::attn`). A new family adds its file here and a
//!   bound to [`Backend`]. Their methods take the calling layer's mixer dims
//!   ([`crate::dims::MixerDims`]).
//! - [`VisionOps`] ([`vision`]): the vision model's ops (gla-model's `vig`: convolutions by
//!   im2col, LayerNorm, the position embedding's resize, the locality gate, ...), a bound of
//!   that model only, outside [`Backend`].
//! - [`Backend`]: everything the models need, implemented for any type that implements all of
//!   the above (gla-model's `Cpu`; gla-cuda's `Gpu`).
//!
//! Buffers are the backend's own types ([`Storage`], and each family's storage trait for what
//! its op keeps for its backward, e.g. [`GlaStorage`]): `F32` for what stays f32 everywhere (the
//! residual stream, the norms' `rstd`, the gate pre-activation, every gradient that is summed
//! from several products), `Act` for GEMM operands and saved activations (f32 on the CPU, bf16
//! on the GPU). Weights and their gradients are named by their [`ParamId`] (the index in
//! a model's table of [`crate::params::ParamSpec`]): each backend resolves an id to its own storage (the CPU's
//! f32 arena; the GPU's bf16 copy for GEMMs and f32 master elsewhere).
//!
//! Shapes: `N` rows (B*T tokens), `D` model dim, `H` heads, `K`/`V` per-head dims, `I` MLP width,
//! `C` channels of a conv, `W` its width, `M` labelled rows. The dims the ops need besides the
//! row counts come from [`Primitives::dims`]. Backward ops accumulate (`+=`) into parameter
//! gradients and write (`=`) activation gradients unless they take `acc`.

pub mod attn;
pub mod delta;
pub mod gla;
pub mod nn;
pub mod vision;

pub use crate::params::ParamId;
pub use attn::{AttnOps, AttnSaved, AttnStorage};
pub use delta::{DeltaDecay, DeltaOps, DeltaSaved, DeltaStorage};
pub use gla::{GlaOps, GlaSaved, GlaStorage};
pub use nn::Primitives;
pub use vision::{Cols, Conv2d, VisionOps};

/// The buffer types a backend allocates and a model's activations hold (apart from the
/// backend so that activations do not borrow it: the CPU backend borrows its model's weights,
/// its activations outlive that borrow).
pub trait Storage {
    /// f32 buffer.
    type F32;
    /// GEMM operand / saved activation (f32 on the CPU, bf16 on the GPU).
    type Act;
    /// Token ids of a batch (and whatever the embedding backward derives from them).
    type Ids;
    /// The labelled rows of a batch and their targets.
    type Rows;
    /// Per batch shape: the op families' problems and the backend's reduction scratch.
    type Plan;
}

/// The buffer types of every op family (a new family adds its storage trait here).
pub trait ModelStorage: Storage + GlaStorage + DeltaStorage + AttnStorage {}
impl<S: Storage + GlaStorage + DeltaStorage + AttnStorage> ModelStorage for S {}

/// Everything the models of this crate need from a device: the primitives and every op family
/// (a new family adds its trait to the bounds and the blanket impl).
pub trait Backend: Primitives<Buf: ModelStorage> + GlaOps + DeltaOps + AttnOps {}
impl<B: Primitives<Buf: ModelStorage> + GlaOps + DeltaOps + AttnOps> Backend for B {}

/// f32 buffer of backend `B`.
pub type F32<B> = <<B as Primitives>::Buf as Storage>::F32;
/// Activation buffer of backend `B`.
pub type Act<B> = <<B as Primitives>::Buf as Storage>::Act;
/// Token ids of backend `B`.
pub type Ids<B> = <<B as Primitives>::Buf as Storage>::Ids;
/// Labelled rows of backend `B`.
pub type Rows<B> = <<B as Primitives>::Buf as Storage>::Rows;
/// Batch plan of backend `B`.
pub type Plan<B> = <<B as Primitives>::Buf as Storage>::Plan;

/// Which short convolution of a layer: the index of its inference cache.
pub type ConvIdx = usize;

/// The target of a row that takes no loss (PyTorch's `ignore_index`): the loss head skips it
/// ([`Primitives::select_rows`]).
pub const IGNORE_INDEX: i64 = -100;
