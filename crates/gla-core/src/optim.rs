//! The optimizer's contract: AdamW's hyper-parameters, shared by the host optimizer (gla-model's
//! `optim::AdamW`) and the device ones (gla-cuda's fused AdamW kernel).

use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters. Defaults: PyTorch's, with fla's usual weight decay 0.01.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay. Default 0.9.
    pub beta1: f32,
    /// Second-moment decay. Default 0.95.
    pub beta2: f32,
    /// Denominator epsilon. Default 1e-8.
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices (2-D and higher) only, not to norms and biases.
    /// Default 0.01.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.01 }
    }
}
