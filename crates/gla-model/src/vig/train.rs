//! Training a ViG on the CPU: AdamW (hustvl's: weight decay on tensors of 2+ dims), linear
//! warm-up then cosine decay, gradient clipping, label smoothing (hustvl's recipe: 0.1, clip 5).

use super::data::ImageSet;
use super::{CpuVigActs, VigModel};
use crate::optim::{clip_grad_norm, cosine_lr, AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::{Error, Result};

/// The training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VigTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate of the cosine.
    pub min_lr: f32,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// AdamW (hustvl: betas 0.9, 0.999, eps 1e-8, weight decay 0.05).
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0: none). hustvl: 5.
    pub clip: f32,
    /// Label smoothing. hustvl: 0.1.
    pub label_smoothing: f32,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for VigTrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 64,
            lr: 2e-3,
            min_lr: 1e-5,
            warmup: 20,
            adamw: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 },
            clip: 5.0,
            label_smoothing: 0.1,
            seed: 0,
        }
    }
}

/// One step's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VigStep {
    /// Step index (1-based after the step).
    pub step: u64,
    /// Mean training loss of the batch.
    pub loss: f64,
    /// Batch accuracy.
    pub acc: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
}

/// A model, its optimizer and the batch buffers.
#[derive(Debug)]
pub struct VigTrainer {
    /// The model being trained.
    pub model: VigModel,
    /// Hyper-parameters.
    pub cfg: VigTrainConfig,
    opt: AdamW,
    grads: Vec<f32>,
    acts: Option<CpuVigActs>,
    rng: Rng,
}

impl VigTrainer {
    /// A trainer of `model`.
    ///
    /// # Errors
    /// [`Error::BadArg`] for a zero batch, or a model with stochastic depth (not built).
    pub fn new(model: VigModel, cfg: VigTrainConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::BadArg { key: "batch_size", reason: "must be positive".into() });
        }
        if model.config.drop_path_rate != 0.0 {
            return Err(Error::BadArg {
                key: "drop_path_rate",
                reason: format!("{}: stochastic depth is not built (set it to 0 to train)", model.config.drop_path_rate),
            });
        }
        let opt = AdamW::for_table(cfg.adamw, &model.layout.specs, model.layout.numel);
        let grads = vec![0.0; model.layout.numel];
        Ok(Self { model, cfg, opt, grads, acts: None, rng: Rng::new(cfg.seed) })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// One step on a random batch of `data`.
    ///
    /// # Errors
    /// Shape errors (images of another size than the first batch's), a non-finite loss.
    pub fn step(&mut self, data: &ImageSet) -> Result<VigStep> {
        let b = self.cfg.batch_size;
        let idx: Vec<usize> = (0..b).map(|_| self.rng.below(data.n)).collect();
        let (x, y) = data.batch(&idx);
        if self.acts.is_none() {
            self.acts = Some(self.model.acts(b, data.h, data.w, true)?);
        }
        let acts = self.acts.as_mut().ok_or_else(|| Error::BadArg { key: "batch", reason: "no activations".into() })?;
        let out = self
            .model
            .forward(acts, &x, Some(&y), self.cfg.label_smoothing)?
            .ok_or_else(|| Error::BadArg { key: "labels", reason: "missing".into() })?;
        if !out.loss.is_finite() {
            return Err(Error::Diverged { step: self.opt.step, what: "loss", value: out.loss });
        }
        self.grads.fill(0.0);
        self.model.backward(acts, &mut self.grads)?;
        let grad_norm = clip_grad_norm(&mut self.grads, self.cfg.clip);
        let c = &self.cfg;
        let lr = cosine_lr(self.opt.step, c.lr, c.min_lr, c.warmup, c.steps);
        self.opt.update(&mut self.model.params, &self.grads, lr);
        Ok(VigStep { step: self.opt.step, loss: out.loss, acc: out.correct as f64 / b as f64, lr, grad_norm })
    }
}

/// Accuracy and mean (unsmoothed) loss of `model` on the first `limit` images of `data`, in
/// batches of `batch`.
///
/// # Errors
/// As [`VigModel::forward`].
pub fn evaluate(model: &VigModel, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
    let n = limit.min(data.n);
    let batch = batch.max(1);
    let (mut correct, mut loss) = (0usize, 0.0f64);
    let mut acts: Option<CpuVigActs> = None;
    for start in (0..n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        if acts.as_ref().is_none_or(|a| a.shape().b != idx.len()) {
            acts = Some(model.acts(idx.len(), data.h, data.w, false)?);
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
