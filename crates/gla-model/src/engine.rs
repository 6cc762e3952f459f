//! The one training engine: [`DeviceEngine`] runs a training step's device work (forward,
//! backward, zeroing, the optimizer step) on any [`TrainDevice`] (the CPU's [`CpuDevice`];
//! with the `cuda` feature, `gpu::GpuModel` over gla-cuda's device weights) and holds what every device shares: the activations for one batch
//! shape and the data-parallel contract (statistics of the global batch, the backward scaled by
//! this rank's share, gradients summed over the ranks after the last micro-batch). The
//! [`crate::Trainer`] drives it through the object-safe [`Engine`] (data, schedule, evaluation,
//! checkpoints).
//!
//! A device may hold its own copy of the weights and moments (a GPU) or work on the host's in
//! place (the CPU): every call gets the host model and optimizer, and [`Engine::download`]
//! brings the host's copy up to date before a checkpoint.

use crate::backend::ModelStorage;
use crate::model::{Acts, LossOut};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::{Error, GlaModel, Result};

/// A device's training ops on one model (one rank of a data-parallel run when
/// [`TrainDevice::world`] > 1). `host` is the trainer's model (its weights are the device's on
/// the CPU; a device with its own copy reads only its config).
pub trait TrainDevice: Send {
    /// The device's buffer types.
    type Buf: ModelStorage;
    /// The device's error (converted into [`Error`] at the engine's boundary).
    type Error: Into<Error>;

    /// A short description (device name, rank), for logs.
    fn name(&self) -> String;
    /// Ranks of the data-parallel run this device is one of (1: none).
    fn world(&self) -> usize {
        1
    }
    /// Training activations for `[b, t]` batches.
    ///
    /// # Errors
    /// Allocation failures.
    fn activations(&self, host: &GlaModel, b: usize, t: usize) -> Result<Acts<Self::Buf>, Self::Error>;
    /// `crate::model::forward` on this device: the local batch's loss and counts.
    ///
    /// # Errors
    /// Bad inputs, device failures.
    fn forward(&mut self, host: &GlaModel, acts: &mut Acts<Self::Buf>, ids: &[u32], targets: &[i64]) -> Result<LossOut, Self::Error>;
    /// `crate::model::backward` into the device's gradients; `reduce`: the step's last
    /// micro-batch of a data-parallel run, after which the gradients are summed over the ranks.
    ///
    /// # Errors
    /// Device failures.
    fn backward(&mut self, host: &GlaModel, acts: &mut Acts<Self::Buf>, scale: f32, reduce: bool) -> Result<(), Self::Error>;
    /// Zeroes the gradients.
    ///
    /// # Errors
    /// Device failures.
    fn zero_grads(&mut self) -> Result<(), Self::Error>;
    /// Clips the gradients to global norm `clip` (0: none) and, when the norm is finite, takes
    /// one AdamW step at `lr` (counted in `opt.step`); returns the norm before clipping. A
    /// non-finite norm leaves the weights and moments untouched.
    ///
    /// # Errors
    /// Device failures.
    fn update(&mut self, host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64, Self::Error>;
    /// Copies the device's weights and moments into the host's (nothing when they are the
    /// host's).
    ///
    /// # Errors
    /// Device failures.
    fn download(&self, host: &mut GlaModel, opt: &mut AdamW) -> Result<(), Self::Error>;
    /// Sums `v` over the ranks (nothing on one).
    ///
    /// # Errors
    /// Communication failures.
    fn all_reduce_host(&mut self, _v: &mut [f64]) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// What the [`crate::Trainer`] calls: [`DeviceEngine`] for every device, object-safe so that
/// the device is chosen at run time.
pub trait Engine: Send {
    /// A short description (device name), for logs.
    fn name(&self) -> String;
    /// Forward of one `[B, T]` batch: the mean loss, labelled positions and correct predictions
    /// of the global batch (this process's batch when not data parallel).
    ///
    /// # Errors
    /// The device's, as [`Error`].
    fn forward(&mut self, host: &GlaModel, ids: &[u32], targets: &[i64]) -> Result<LossOut>;
    /// Backward of the last forward, accumulating `scale * d(global mean loss)`; `last`: the
    /// step's final micro-batch, after which the gradients are complete.
    ///
    /// # Errors
    /// As [`Engine::forward`].
    fn backward(&mut self, host: &GlaModel, scale: f32, last: bool) -> Result<()>;
    /// Zeroes the gradients.
    ///
    /// # Errors
    /// As [`Engine::forward`].
    fn zero_grads(&mut self) -> Result<()>;
    /// [`TrainDevice::update`].
    ///
    /// # Errors
    /// As [`Engine::forward`].
    fn update(&mut self, host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64>;
    /// [`TrainDevice::download`].
    ///
    /// # Errors
    /// As [`Engine::forward`].
    fn download(&self, host: &mut GlaModel, opt: &mut AdamW) -> Result<()>;
    /// Whether `flag` is set on any rank of the run (this process's `flag` when not data
    /// parallel): every rank gets the same answer, so that all of them stop at the same step.
    ///
    /// # Errors
    /// As [`Engine::forward`].
    fn any_rank(&mut self, flag: bool) -> Result<bool>;
}

/// The training engine over a device: its activations for one batch shape and the
/// data-parallel statistics (module doc).
pub struct DeviceEngine<D: TrainDevice> {
    dev: D,
    acts: Acts<D::Buf>,
    /// Labelled positions of the last forward: this rank's and the global batch's.
    valid: (usize, usize),
}

impl<D: TrainDevice> DeviceEngine<D> {
    /// The engine over `dev` for `[b, t]` batches of `host`'s model.
    ///
    /// # Errors
    /// The device's allocation errors.
    pub fn new(dev: D, host: &GlaModel, b: usize, t: usize) -> Result<Self> {
        let acts = dev.activations(host, b, t).map_err(Into::into)?;
        Ok(Self { dev, acts, valid: (0, 0) })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }
}

impl<D: TrainDevice> Engine for DeviceEngine<D>
where
    Acts<D::Buf>: Send,
{
    fn name(&self) -> String {
        self.dev.name()
    }

    fn forward(&mut self, host: &GlaModel, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        let out = self.dev.forward(host, &mut self.acts, ids, targets).map_err(Into::into)?;
        if self.dev.world() == 1 {
            self.valid = (out.n_valid, out.n_valid);
            return Ok(out);
        }
        let mut s = [out.loss * out.n_valid as f64, out.n_valid as f64, out.correct as f64];
        self.dev.all_reduce_host(&mut s).map_err(Into::into)?;
        let total = s[1] as usize;
        self.valid = (out.n_valid, total);
        Ok(LossOut { loss: s[0] / s[1].max(1.0), n_valid: total, correct: s[2] as usize })
    }

    fn backward(&mut self, host: &GlaModel, scale: f32, last: bool) -> Result<()> {
        // d(global mean)/d(this rank's mean) = this rank's share of the labelled positions;
        // summed over the ranks, the scaled gradients are those of the global batch
        let (mine, total) = self.valid;
        let scale = if mine == total { scale } else { scale * mine as f32 / total.max(1) as f32 };
        let reduce = last && self.dev.world() > 1;
        self.dev.backward(host, &mut self.acts, scale, reduce).map_err(Into::into)
    }

    fn zero_grads(&mut self) -> Result<()> {
        self.dev.zero_grads().map_err(Into::into)
    }

    fn update(&mut self, host: &mut GlaModel, opt: &mut AdamW, cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        self.dev.update(host, opt, cfg, lr, clip).map_err(Into::into)
    }

    fn download(&self, host: &mut GlaModel, opt: &mut AdamW) -> Result<()> {
        self.dev.download(host, opt).map_err(Into::into)
    }

    fn any_rank(&mut self, flag: bool) -> Result<bool> {
        if self.dev.world() == 1 {
            return Ok(flag);
        }
        let mut v = [f64::from(u8::from(flag))];
        self.dev.all_reduce_host(&mut v).map_err(Into::into)?;
        Ok(v[0] > 0.0)
    }
}

/// The CPU as a training device: f32 everywhere, on the host's weights and moments in place
/// (the reference the GPU is checked against); it owns only the gradient arena.
#[derive(Debug, Default)]
pub struct CpuDevice {
    grads: Vec<f32>,
}

impl CpuDevice {
    /// A device for `model` (its gradient arena).
    pub fn new(model: &GlaModel) -> Self {
        Self { grads: vec![0.0; model.num_params()] }
    }

    /// The gradient arena (parameter table order).
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }
}

impl TrainDevice for CpuDevice {
    type Buf = crate::cpu::CpuBuf;
    type Error = Error;

    fn name(&self) -> String {
        "cpu".into()
    }
    fn activations(&self, host: &GlaModel, b: usize, t: usize) -> Result<Acts<Self::Buf>> {
        Acts::alloc(&host.cpu(), &host.layout, b, t, false, 0)
    }
    fn forward(&mut self, host: &GlaModel, acts: &mut Acts<Self::Buf>, ids: &[u32], targets: &[i64]) -> Result<LossOut> {
        crate::model::forward(&host.cpu(), &host.layout, acts, ids, targets)
    }
    fn backward(&mut self, host: &GlaModel, acts: &mut Acts<Self::Buf>, scale: f32, _reduce: bool) -> Result<()> {
        crate::model::backward(&host.cpu(), &host.layout, acts, &mut self.grads, scale)
    }
    fn zero_grads(&mut self) -> Result<()> {
        self.grads.fill(0.0);
        Ok(())
    }
    fn update(&mut self, host: &mut GlaModel, opt: &mut AdamW, _cfg: &AdamWConfig, lr: f32, clip: f32) -> Result<f64> {
        let norm = clip_grad_norm(&mut self.grads, clip);
        if norm.is_finite() {
            opt.update(&mut host.params, &self.grads, lr);
        }
        Ok(norm)
    }
    fn download(&self, _host: &mut GlaModel, _opt: &mut AdamW) -> Result<()> {
        Ok(())
    }
}
