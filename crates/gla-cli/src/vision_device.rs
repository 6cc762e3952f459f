//! `gla vision --device cpu|cuda`: the ViG trainer and classifier on either device behind one
//! interface, so that `vision.rs` dispatches in one place. The CPU side is gla-model's
//! `VigTrainer` / `evaluate` / `VigModel::logits`; the GPU side its `vig::gpu` (`GpuVigTrainer`,
//! `GpuVigModel`, built with `--features cuda`).

use std::borrow::Cow;

use anyhow::Result;
use gla_model::vig::data::ImageSet;
use gla_model::vig::train::{evaluate, VigStep, VigTrainConfig, VigTrainer};
use gla_model::vig::VigModel;

use crate::Device;

/// The default GPU recipe of `gla vision train --device cuda` on Fashion-MNIST (the clap
/// defaults of vision.rs pick these when the device is cuda): a ViG-T-width model of 6 blocks
/// at patch 4 (7 x 7 tokens), about 30 epochs of batches of 128, with flips and shifts of up to
/// [`gpu_recipe::SHIFT`] pixels. Measured on an H200: 93.52% test accuracy at step 14000 (93.13%
/// at step 10000 of the same run; `bench/results/2026-12-04_h200_c3bf93b_vig_gpu.txt`).
pub mod gpu_recipe {
    /// Model dim.
    pub const EMBED_DIM: &str = "192";
    /// Blocks.
    pub const DEPTH: &str = "6";
    /// Heads (head dims K 32, V 64).
    pub const HEADS: &str = "3";
    /// Optimizer steps.
    pub const STEPS: &str = "14000";
    /// Images per step.
    pub const BATCH: &str = "128";
    /// Peak learning rate.
    pub const LR: &str = "1e-3";
    /// Warm-up steps.
    pub const WARMUP: &str = "300";
    /// Steps between evaluations.
    pub const EVAL_EVERY: &str = "2000";
    /// Test images per evaluation (the whole Fashion-MNIST test set).
    pub const EVAL_EXAMPLES: &str = "10000";
    /// Random shifts of up to this many pixels (`--crop-pad`).
    pub const SHIFT: &str = "2";
}

/// A ViG trainer on one device.
pub enum Trainer {
    /// gla-model's CPU trainer.
    Cpu(Box<VigTrainer>),
    /// gla-model's GPU trainer.
    #[cfg(feature = "cuda")]
    Gpu(Box<gla_model::vig::gpu::GpuVigTrainer>),
}

impl Trainer {
    /// A trainer of `model` on `device`. On the GPU, `cfg.augment` becomes the GPU trainer's
    /// host-side augmentation: its flips, and its crop padding as random shifts of up to that many
    /// pixels.
    pub fn new(device: Device, model: VigModel, cfg: VigTrainConfig) -> Result<Self> {
        device.ensure_built()?;
        match device {
            Device::Cpu => Ok(Self::Cpu(Box::new(VigTrainer::new(model, cfg)?))),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let cuda = gla_cuda::Cuda::new()?;
                eprintln!("device: cuda:{} ({})", cuda.name(), cuda.arch());
                let augment = gla_model::vig::gpu::Augment { flip: cfg.augment.flip, shift: cfg.augment.pad };
                let mut t = gla_model::vig::gpu::GpuVigTrainer::new(cuda, &model, cfg)?;
                t.augment = augment;
                Ok(Self::Gpu(Box::new(t)))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda => unreachable!("ensure_built refuses cuda without the feature"),
        }
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        match self {
            Self::Cpu(t) => t.step_count(),
            #[cfg(feature = "cuda")]
            Self::Gpu(t) => t.step_count(),
        }
    }

    /// One training step on a random batch of `data`.
    pub fn step(&mut self, data: &ImageSet) -> Result<VigStep> {
        Ok(match self {
            Self::Cpu(t) => t.step(data)?,
            #[cfg(feature = "cuda")]
            Self::Gpu(t) => t.step(data)?,
        })
    }

    /// Test accuracy and loss on the first `limit` images of `data`.
    pub fn evaluate(&mut self, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
        Ok(match self {
            Self::Cpu(t) => evaluate(&t.model, data, limit, batch)?,
            #[cfg(feature = "cuda")]
            Self::Gpu(t) => t.evaluate(data, limit, batch)?,
        })
    }

    /// The model as trained so far, on the host (for checkpoints).
    pub fn model(&self) -> Result<Cow<'_, VigModel>> {
        Ok(match self {
            Self::Cpu(t) => Cow::Borrowed(&t.model),
            #[cfg(feature = "cuda")]
            Self::Gpu(t) => Cow::Owned(t.to_host()?),
        })
    }
}

/// Accuracy and loss of `m` on the first `limit` images of `data` on `device`.
pub fn evaluate_on(device: Device, m: &VigModel, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
    device.ensure_built()?;
    match device {
        Device::Cpu => Ok(evaluate(m, data, limit, batch)?),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let model = gla_model::vig::gpu::GpuVigModel::new_inference(gla_cuda::Cuda::new()?, m)?;
            Ok(gla_model::vig::gpu::evaluate(&model, &mut None, data, limit, batch)?)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => unreachable!("ensure_built refuses cuda without the feature"),
    }
}

/// The logits `[B, classes]` of `b` images `[B, C, h, w]` on `device`.
pub fn logits_on(device: Device, m: &VigModel, x: &[f32], b: usize, h: usize, w: usize) -> Result<Vec<f32>> {
    device.ensure_built()?;
    match device {
        Device::Cpu => Ok(m.logits(x, b, h, w)?),
        #[cfg(feature = "cuda")]
        Device::Cuda => Ok(gla_model::vig::gpu::GpuVigModel::new_inference(gla_cuda::Cuda::new()?, m)?.logits(x, b, h, w)?),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => unreachable!("ensure_built refuses cuda without the feature"),
    }
}
