//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`), gradient clipping by
//! global norm (`clip_grad_norm_`) and the cosine learning-rate schedule with linear warmup.

pub use gla_core::optim::AdamWConfig;

use crate::layout::Layout;

/// AdamW moments (`exp_avg`, `exp_avg_sq`, f32, laid out like the parameters) and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters.
    pub cfg: AdamWConfig,
    /// First moments.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Updates taken so far (bias correction uses `t = step + 1`).
    pub step: u64,
    // per element: whether weight decay applies (from the parameter table)
    decay: Vec<(std::ops::Range<usize>, bool)>,
}

impl AdamW {
    /// Zero moments for a parameter table.
    pub fn new(cfg: AdamWConfig, layout: &Layout) -> Self {
        Self::for_table(cfg, &layout.specs, layout.numel)
    }

    /// Zero moments for any model's parameter table (`numel` elements): weight decay on the
    /// tensors of 2 or more dims.
    pub fn for_table(cfg: AdamWConfig, specs: &[crate::params::ParamSpec], numel: usize) -> Self {
        let decay = specs.iter().map(|s| (s.range(), s.shape.len() >= 2)).collect();
        Self { cfg, m: vec![0.0; numel], v: vec![0.0; numel], step: 0, decay }
    }

    /// One update of `params` with `grads` at learning rate `lr`:
    /// `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.step += 1;
        let c = self.cfg;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (range, decay) in &self.decay {
            let wd = if *decay { lr * c.weight_decay } else { 0.0 };
            let r = range.clone();
            for (((p, &g), m), v) in params[r.clone()].iter_mut().zip(&grads[r.clone()]).zip(&mut self.m[r.clone()]).zip(&mut self.v[r]) {
                *p -= wd * *p;
                *m = c.beta1 * *m + (1.0 - c.beta1) * g;
                *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
                *p -= lr * (*m / bc1) / ((*v / bc2).sqrt() + c.eps);
            }
        }
    }
}

/// The global L2 norm of `grads` (f64 accumulation, fixed order) and, when it exceeds
/// `max_norm > 0`, scales them by `max_norm / (norm + 1e-6)` as PyTorch's `clip_grad_norm_`.
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f64 {
    let norm = grads.iter().map(|&g| g as f64 * g as f64).sum::<f64>().sqrt();
    if max_norm > 0.0 && norm > max_norm as f64 {
        let s = (max_norm as f64 / (norm + 1e-6)) as f32;
        grads.iter_mut().for_each(|g| *g *= s);
    }
    norm
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from `lr / warmup` to `lr`
/// over `warmup` steps, then cosine decay to `min_lr` at `total` steps (constant after).
pub fn cosine_lr(step: u64, lr: f32, min_lr: f32, warmup: u64, total: u64) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    if step >= total || total <= warmup {
        return min_lr;
    }
    let progress = (step - warmup) as f64 / (total - warmup) as f64;
    min_lr + (lr - min_lr) * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}
