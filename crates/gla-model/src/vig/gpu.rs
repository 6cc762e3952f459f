//! ViG on one NVIDIA GPU (feature `cuda`): [`GpuVigModel`] holds the weights on the device
//! ([`GpuWeights`]: f32 masters, the bf16 GEMM copy, gradients, AdamW moments) and runs
//! [`super::model`]'s forward and backward on its backend ([`gla_cuda::Gpu`], whose `VisionOps`
//! are the kernels of `kernels/nn/vision.cu`); [`GpuVigTrainer`] is [`super::train::VigTrainer`]
//! on it (the same recipe: AdamW with decay on tensors of 2+ dims, warm-up then cosine, clipping,
//! label smoothing), drawing its batches from its own seeded stream (with replacement, not the
//! CPU trainer's epoch order), plus optional host-side augmentation ([`Augment`]).

use std::sync::Arc;

use gla_cuda::backend::GpuBuf;
use gla_cuda::{Cuda, Error, GpuWeights, Result};

use super::config::{VigConfig, VigDims};
use super::data::ImageSet;
use super::layout::VigLayout;
use super::model::{self as vig, Shape, VigActs, VigLoss};
use super::train::{VigStep, VigTrainConfig};
use super::{prim_dims, VigModel};
use crate::config::Dims;
use crate::optim::cosine_lr;
use crate::rng::Rng;

/// The GPU's ViG activations.
pub type GpuVigActs = VigActs<GpuBuf>;

fn op_err(e: gla_core::Error) -> Error {
    Error::Op(e)
}

fn model_err(e: crate::Error) -> Error {
    match e {
        crate::Error::Op(inner) => Error::Op(inner),
        e => Error::Op(gla_core::Error::Unsupported { backend: "cuda", what: e.to_string() }),
    }
}

/// The dims the GPU backend is built with for a ViG: the shared primitives' ([`prim_dims`]), no
/// language-model mixer (the bidirectional scan's buffers are made by the batch plan at its
/// first call).
pub fn gpu_dims(d: &VigDims) -> Dims {
    prim_dims(d)
}

/// A ViG's weights on one GPU with the model's forward and backward on them.
pub struct GpuVigModel {
    weights: GpuWeights,
    /// hustvl's config.
    pub config: VigConfig,
    /// Derived dims.
    pub dims: VigDims,
    /// The parameter table.
    pub layout: VigLayout,
}

impl std::fmt::Debug for GpuVigModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuVigModel {{ params: {}, device: {} }}", self.layout.numel, self.weights.cuda().name())
    }
}

impl GpuVigModel {
    /// Uploads a (CPU) model's weights for training.
    ///
    /// # Errors
    /// As [`GpuWeights::new`].
    pub fn new(cuda: Arc<Cuda>, model: &VigModel) -> Result<Self> {
        let weights = GpuWeights::new(cuda, &gpu_dims(&model.dims), &model.layout.specs, &model.params)?;
        Ok(Self { weights, config: model.config.clone(), dims: model.dims, layout: model.layout.clone() })
    }

    /// Uploads a model's weights for inference only (no gradients, no moments).
    ///
    /// # Errors
    /// As [`GpuWeights::new_inference`].
    pub fn new_inference(cuda: Arc<Cuda>, model: &VigModel) -> Result<Self> {
        let weights = GpuWeights::new_inference(cuda, &gpu_dims(&model.dims), &model.layout.specs, &model.params)?;
        Ok(Self { weights, config: model.config.clone(), dims: model.dims, layout: model.layout.clone() })
    }

    /// The device weights.
    pub fn weights(&self) -> &GpuWeights {
        &self.weights
    }

    /// The device weights, mutably (zeroing, the optimizer, moments).
    pub fn weights_mut(&mut self) -> &mut GpuWeights {
        &mut self.weights
    }

    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        self.weights.cuda()
    }

    /// Device buffers for `b` images of `h x w` (`backward`: with the backward's buffers).
    ///
    /// # Errors
    /// [`Error::Op`] for images too small for the stem; [`Error::Driver`] (out of memory).
    pub fn acts(&self, b: usize, h: usize, w: usize, backward: bool) -> Result<GpuVigActs> {
        let shape = Shape::new(&self.dims, b, h, w).map_err(op_err)?;
        VigActs::alloc(self.weights.backend(), &self.dims, shape, backward)
    }

    /// [`super::forward`] on the GPU: images `[B, C, H, W]`, optional labels (then the loss,
    /// which synchronises once to read it).
    ///
    /// # Errors
    /// Shape errors; the device's errors.
    pub fn forward(&self, acts: &mut GpuVigActs, images: &[f32], labels: Option<&[u32]>, smoothing: f32) -> Result<Option<VigLoss>> {
        vig::forward(self.weights.backend(), &self.layout, acts, images, labels, smoothing)
    }

    /// Copies images `[B, C, H, W]` into `acts` for [`GpuVigModel::forward_resident`].
    ///
    /// # Errors
    /// Shape errors; the device's errors.
    pub fn upload(&self, acts: &mut GpuVigActs, images: &[f32]) -> Result<()> {
        vig::upload(self.weights.backend(), acts, images)
    }

    /// [`GpuVigModel::forward`] on the images already in `acts` (benchmarks: no host copy).
    ///
    /// # Errors
    /// As [`GpuVigModel::forward`].
    pub fn forward_resident(&self, acts: &mut GpuVigActs, labels: Option<&[u32]>, smoothing: f32) -> Result<Option<VigLoss>> {
        vig::forward_resident(self.weights.backend(), &self.layout, acts, labels, smoothing)
    }

    /// [`super::backward`] of the last forward (with labels) into the device gradient arena
    /// (accumulates: [`GpuVigModel::zero_grads`] between steps).
    ///
    /// # Errors
    /// Shape errors; the device's errors.
    pub fn backward(&mut self, acts: &mut GpuVigActs) -> Result<()> {
        let lay = &self.layout;
        self.weights.backward_with(false, |gpu, grads| vig::backward(gpu, lay, acts, grads))
    }

    /// Zeroes the gradient arena.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn zero_grads(&mut self) -> Result<()> {
        self.weights.zero_grads()
    }

    /// The logits `[B, classes]` of the last forward on `acts`.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn logits_to_host(&self, acts: &GpuVigActs) -> Result<Vec<f32>> {
        self.weights.download_f32(acts.logits(), acts.shape().b * self.dims.classes, "logits")
    }

    /// The accumulated gradients (parameter table order).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn grads_to_host(&self) -> Result<Vec<f32>> {
        self.weights.grads_to_host()
    }

    /// One AdamW step after clipping to `max_norm` (0: none); returns the norm before clipping.
    ///
    /// # Errors
    /// [`Error::Driver`], [`Error::Launch`].
    pub fn adamw_step(&mut self, cfg: &crate::optim::AdamWConfig, lr: f32, max_norm: f32) -> Result<f64> {
        self.weights.adamw_step(cfg, lr, max_norm)
    }

    /// The master weights back on the host as a CPU model (checkpoints, checks).
    ///
    /// # Errors
    /// [`Error::Driver`]; refused for inference-only weights.
    pub fn to_host(&self) -> Result<VigModel> {
        VigModel::from_params(self.config.clone(), self.weights.params_to_host()?).map_err(model_err)
    }

    /// The logits `[B, classes]` of `b` images `[B, C, h, w]`.
    ///
    /// # Errors
    /// As [`GpuVigModel::forward`].
    pub fn logits(&self, images: &[f32], b: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        let mut acts = self.acts(b, h, w, false)?;
        self.forward(&mut acts, images, None, 0.0)?;
        self.logits_to_host(&acts)
    }
}

/// Augmentation of training batches on the host, after the batch is drawn (its own random
/// stream, so the draws stay the CPU trainer's): each image flipped left-right with probability
/// 1/2, then shifted by up to `shift` pixels on each axis, the uncovered border filled with the
/// value of a black pixel (the usual Fashion-MNIST augmentation: flip + padded random crop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augment {
    /// Random left-right flips.
    pub flip: bool,
    /// Largest shift in pixels (0: none).
    pub shift: usize,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Self = Self { flip: false, shift: 0 };

    /// Applies to `x [B, C, h, w]` in place; `fill` is the value of a zero pixel.
    pub fn apply(&self, x: &mut [f32], (c, h, w): (usize, usize, usize), fill: f32, rng: &mut Rng) {
        if *self == Self::NONE || c * h * w == 0 {
            return;
        }
        let s = self.shift as i64;
        let mut tmp = vec![0.0f32; h * w];
        for img in x.chunks_exact_mut(c * h * w) {
            let flip = self.flip && rng.below(2) == 1;
            let (dy, dx) =
                if s > 0 { (rng.below(2 * self.shift + 1) as i64 - s, rng.below(2 * self.shift + 1) as i64 - s) } else { (0, 0) };
            for plane in img.chunks_exact_mut(h * w) {
                for y in 0..h as i64 {
                    for xx in 0..w as i64 {
                        let (sy, sx) = (y - dy, xx - dx);
                        let sx = if flip { w as i64 - 1 - sx } else { sx };
                        let inside = (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx);
                        tmp[(y * w as i64 + xx) as usize] = if inside { plane[(sy * w as i64 + sx) as usize] } else { fill };
                    }
                }
                plane.copy_from_slice(&tmp);
            }
        }
    }
}

/// Accuracy and mean (unsmoothed) loss of `model` on the first `limit` images of `data`, in
/// batches of `batch` (as [`super::train::evaluate`]); `acts` holds the buffers between calls
/// (remade for another batch or image size).
///
/// # Errors
/// As [`GpuVigModel::forward`].
pub fn evaluate(model: &GpuVigModel, acts: &mut Option<GpuVigActs>, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
    let n = limit.min(data.n);
    let batch = batch.max(1);
    let (mut correct, mut loss) = (0usize, 0.0f64);
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        if acts.as_ref().is_none_or(|a| a.shape().b != idx.len() || a.shape().img != (data.h, data.w)) {
            *acts = Some(model.acts(idx.len(), data.h, data.w, false)?);
        }
        let Some(a) = acts.as_mut() else { continue };
        let (x, y) = data.batch(&idx);
        if let Some(out) = model.forward(a, &x, Some(&y), 0.0)? {
            correct += out.correct;
            loss += out.loss * idx.len() as f64;
        }
    }
    Ok((correct as f64 / n.max(1) as f64, loss / n.max(1) as f64))
}

/// [`super::train::VigTrainer`] on the GPU: the same hyper-parameters and schedule, the
/// optimizer on the device, batches drawn with replacement from its own seeded stream; with
/// [`GpuVigTrainer::augment`] the batches are augmented first.
#[derive(Debug)]
pub struct GpuVigTrainer {
    /// The model being trained.
    pub model: GpuVigModel,
    /// Hyper-parameters.
    pub cfg: VigTrainConfig,
    /// Augmentation of the training batches (default none).
    pub augment: Augment,
    aug_rng: Rng,
    steps: u64,
    acts: Option<GpuVigActs>,
    eval: Option<GpuVigActs>,
    rng: Rng,
}

impl GpuVigTrainer {
    /// A trainer of `model` on `cuda`.
    ///
    /// # Errors
    /// [`Error::Op`] for a zero batch or stochastic depth (as the CPU trainer); upload errors.
    pub fn new(cuda: Arc<Cuda>, model: &VigModel, cfg: VigTrainConfig) -> Result<Self> {
        let bad = |key: &'static str, reason: String| Error::Op(gla_core::Error::BadArg { key, reason });
        if cfg.batch_size == 0 {
            return Err(bad("batch_size", "must be positive".into()));
        }
        if model.config.drop_path_rate != 0.0 {
            return Err(bad(
                "drop_path_rate",
                format!("{}: stochastic depth is not built (set it to 0 to train)", model.config.drop_path_rate),
            ));
        }
        let model = GpuVigModel::new(cuda, model)?;
        Ok(Self {
            model,
            cfg,
            augment: Augment::NONE,
            aug_rng: Rng::new(cfg.seed ^ 0x5eed),
            steps: 0,
            acts: None,
            eval: None,
            rng: Rng::new(cfg.seed),
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// One step on a random batch of `data` (the CPU trainer's draws).
    ///
    /// # Errors
    /// Shape errors (images of another size than the first batch's), a non-finite loss, the
    /// device's errors.
    pub fn step(&mut self, data: &ImageSet) -> Result<VigStep> {
        let b = self.cfg.batch_size;
        let idx: Vec<usize> = (0..b).map(|_| self.rng.below(data.n)).collect();
        let (mut x, y) = data.batch(&idx);
        let fill = -data.norm.0 / data.norm.1;
        self.augment.apply(&mut x, (data.channels, data.h, data.w), fill, &mut self.aug_rng);
        if self.acts.as_ref().is_none_or(|a| a.shape().img != (data.h, data.w)) {
            self.acts = Some(self.model.acts(b, data.h, data.w, true)?);
        }
        let Some(acts) = self.acts.as_mut() else {
            return Err(op_err(gla_core::Error::BadArg { key: "batch", reason: "no buffers".into() }));
        };
        let out = self
            .model
            .forward(acts, &x, Some(&y), self.cfg.label_smoothing)?
            .ok_or_else(|| op_err(gla_core::Error::BadArg { key: "labels", reason: "missing".into() }))?;
        if !out.loss.is_finite() {
            return Err(model_err(crate::Error::Diverged { step: self.steps, what: "loss", value: out.loss }));
        }
        self.model.zero_grads()?;
        self.model.backward(acts)?;
        let c = &self.cfg;
        let lr = cosine_lr(self.steps, c.lr, c.min_lr, c.warmup, c.steps);
        let grad_norm = self.model.adamw_step(&c.adamw, lr, c.clip)?;
        if !grad_norm.is_finite() {
            return Err(model_err(crate::Error::Diverged { step: self.steps, what: "gradient norm", value: grad_norm }));
        }
        self.steps += 1;
        Ok(VigStep { step: self.steps, loss: out.loss, acc: out.correct as f64 / b as f64, lr, grad_norm })
    }

    /// Accuracy and mean (unsmoothed) loss on the first `limit` images of `data`, in batches of
    /// `batch` (as [`super::train::evaluate`]).
    ///
    /// # Errors
    /// As [`GpuVigModel::forward`].
    pub fn evaluate(&mut self, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
        evaluate(&self.model, &mut self.eval, data, limit, batch)
    }

    /// The optimizer state on the host for a checkpoint: AdamW's moments and step (`None`
    /// before the first step).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn optimizer_state(&self) -> Result<Option<gla_cuda::HostMoments>> {
        self.model.weights().moments_to_host()
    }

    /// Resumes from a checkpoint's optimizer state: AdamW's moments and the steps taken (the
    /// schedule continues from there; the batch draws restart from the seed).
    ///
    /// # Errors
    /// [`Error::Op`] for moments of another length; [`Error::Driver`].
    pub fn resume(&mut self, m: &[f32], v: &[f32], step: u64) -> Result<()> {
        self.model.weights_mut().set_moments(m, v, step)?;
        self.steps = step;
        Ok(())
    }

    /// The trained model on the host (checkpoints: the CPU model's writers).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn to_host(&self) -> Result<VigModel> {
        self.model.to_host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augment_flips_and_shifts_with_the_fill() {
        let (c, h, w) = (2, 3, 4);
        let x: Vec<f32> = (0..2 * c * h * w).map(|i| i as f32).collect();
        let mut rng = Rng::new(0);
        let mut y = x.clone();
        Augment::NONE.apply(&mut y, (c, h, w), -1.0, &mut rng);
        assert_eq!(y, x);
        // flips only: every row is the original row or its reverse, the same choice for every
        // plane of an image
        let mut y = x.clone();
        Augment { flip: true, shift: 0 }.apply(&mut y, (c, h, w), -1.0, &mut rng);
        for (img, orig) in y.chunks_exact(c * h * w).zip(x.chunks_exact(c * h * w)) {
            let rev = |r: &[f32]| r.iter().rev().copied().collect::<Vec<_>>();
            let flipped = img[..w] != orig[..w];
            for (row, o) in img.chunks_exact(w).zip(orig.chunks_exact(w)) {
                assert_eq!(row.to_vec(), if flipped { rev(o) } else { o.to_vec() });
            }
        }
        // shifts: each output pixel is the fill or an input pixel of its own plane, the
        // non-fill pixels a translated block
        let mut y = x.clone();
        Augment { flip: false, shift: 1 }.apply(&mut y, (c, h, w), -1.0, &mut rng);
        for (img, orig) in y.chunks_exact(h * w).zip(x.chunks_exact(h * w)) {
            assert!(img.iter().all(|v| *v == -1.0 || orig.contains(v)));
            let kept: Vec<f32> = img.iter().copied().filter(|v| *v != -1.0).collect();
            assert!(kept.len() >= (h - 1) * (w - 1));
        }
    }
}
