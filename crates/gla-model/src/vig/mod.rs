//! The ViG vision model (hustvl/ViG, "ViG: Linear-complexity Visual Sequence Learning with
//! Gated Linear Attention"): the plain ViG-T/S/B, a second model kind over the same backend
//! traits as the language models, with hustvl's config keys ([`config`]), parameter names
//! ([`layout`]) and checkpoints ([`pth`]: the published `.pth` files; safetensors both ways).
//!
//! - [`config`]: `VigConfig` (the `ViG` constructor's keyword arguments), presets, `VigDims`.
//! - [`layout`]: the parameter table in hustvl's `state_dict` order, hustvl's init.
//! - [`model`]: the forward and backward over [`crate::backend::Backend`] +
//!   [`crate::backend::VisionOps`]; `scan`: the bidirectional scan (the fused `bidir` op).
//! - [`data`]: idx image sets (Fashion-MNIST) and synthetic images; [`train`]: AdamW training.
//! - [`VigModel`]: config, table and f32 weights, run on the CPU; with the `cuda` feature, `gpu`
//!   runs the same forward and backward on one GPU (`GpuVigModel`, `GpuVigTrainer`).

pub mod config;
pub mod data;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod layout;
pub mod model;
pub mod pth;
pub(crate) mod scan;
pub mod train;

pub use config::{VigConfig, VigDims};
pub use layout::{BlockIds, VigLayout};
pub use model::{backward, forward, Shape, VigActs, VigLoss};

use crate::config::Dims;
use crate::cpu::{Cpu, CpuBuf};
use crate::{Error, Result};

/// A ViG: its config, derived dims, parameter table and f32 weights (one arena in table order).
#[derive(Debug, Clone)]
pub struct VigModel {
    /// hustvl's config.
    pub config: VigConfig,
    /// Derived dims.
    pub dims: VigDims,
    /// What the shared primitives read (D, the RMSNorm eps, the MLP width, the classes).
    pub prim_dims: Dims,
    /// The parameter table.
    pub layout: VigLayout,
    /// The weights.
    pub params: Vec<f32>,
}

/// The CPU's ViG activations.
pub type CpuVigActs = VigActs<CpuBuf>;

/// The model-level dims the shared primitives read for a ViG.
pub fn prim_dims(d: &VigDims) -> Dims {
    Dims {
        d: d.d,
        layers: d.depth,
        intermediate: d.inter,
        vocab: d.classes,
        eps: d.rms_eps,
        tied: false,
        pad: None,
        init_std: 0.02,
        mixers: Vec::new(),
    }
}

impl VigModel {
    /// A freshly initialised model (hustvl's init, seeded).
    ///
    /// # Errors
    /// Those of [`VigConfig::dims`].
    pub fn new(config: VigConfig, seed: u64) -> Result<Self> {
        let dims = config.dims()?;
        let layout = VigLayout::new(&dims);
        let params = layout.init(seed);
        Ok(Self { config, prim_dims: prim_dims(&dims), dims, layout, params })
    }

    /// A model from weights in table order.
    ///
    /// # Errors
    /// Those of [`VigConfig::dims`]; [`Error::Shape`] when `params` has the wrong length.
    pub fn from_params(config: VigConfig, params: Vec<f32>) -> Result<Self> {
        let mut m = Self::new(config, 0)?;
        if params.len() != m.layout.numel {
            return Err(Error::Shape {
                op: "vig from_params",
                tensor: "params",
                shape: "the parameter table".into(),
                expected: m.layout.numel,
                got: params.len(),
            });
        }
        m.params = params;
        Ok(m)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout.numel
    }

    /// The CPU backend over these weights.
    pub fn cpu(&self) -> Cpu<'_> {
        Cpu::over_table(&self.prim_dims, &self.layout.specs, &self.params)
    }

    /// Activations for `b` images of `h x w` (`backward`: with the backward's buffers).
    ///
    /// # Errors
    /// [`Error::Op`] when the images are too small for the stem.
    pub fn acts(&self, b: usize, h: usize, w: usize, backward: bool) -> Result<CpuVigActs> {
        let shape = Shape::new(&self.dims, b, h, w).map_err(Error::Op)?;
        VigActs::alloc(&self.cpu(), &self.dims, shape, backward)
    }

    /// [`forward`] on the CPU: images `[B, C, H, W]` (PyTorch's layout), optional labels.
    ///
    /// # Errors
    /// Shape errors; the op's errors.
    pub fn forward(&self, acts: &mut CpuVigActs, images: &[f32], labels: Option<&[u32]>, smoothing: f32) -> Result<Option<VigLoss>> {
        forward(&self.cpu(), &self.layout, acts, images, labels, smoothing)
    }

    /// [`backward`] on the CPU into `grads` (laid out like the parameters).
    ///
    /// # Errors
    /// Shape errors; the op's errors.
    pub fn backward(&self, acts: &mut CpuVigActs, grads: &mut [f32]) -> Result<()> {
        backward(&self.cpu(), &self.layout, acts, grads)
    }

    /// The logits `[B, classes]` of `b` images `[B, C, h, w]`.
    ///
    /// # Errors
    /// As [`VigModel::forward`].
    pub fn logits(&self, images: &[f32], b: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let mut acts = self.acts(b, h, w, false)?;
        self.forward(&mut acts, images, None, 0.0)?;
        Ok(acts.logits().clone())
    }
}
