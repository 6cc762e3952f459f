//! Training a ViG on the CPU: AdamW (hustvl's: weight decay on tensors of 2+ dims), linear
//! warm-up then cosine decay, gradient clipping, label smoothing (hustvl's recipe: 0.1, clip 5),
//! augmentation ([`Augment`]) and stochastic depth (the config's `drop_path_rate`, hustvl's rule:
//! block `l` of `L` drops each branch with probability `rate * l / (L - 1)`).
//!
//! The data stream is deterministic: epoch `e` visits the images in [`epoch_order`]`(seed, e)`,
//! image `p` of the stream is augmented by its own draw and step `s`'s drop masks come from their
//! own generator, so the training state is the weights, the AdamW moments and the step
//! ([`VigTrainer::save`], [`VigTrainer::resume`]): a resumed run takes bit for bit the steps the
//! uninterrupted one would have.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::VigConfig;
use super::data::{epoch_order, Augment, Draw, ImageSet};
use super::pth::{load_safetensors, save_safetensors};
use super::{CpuVigActs, VigModel};
use crate::checkpoint::{self, CONFIG_FILE, STATE_FILE, WEIGHTS_FILE};
use crate::optim::{clip_grad_norm, cosine_lr, AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::train::EvalStats;
use crate::{Error, Result};

/// The AdamW first moments in a vision checkpoint (hustvl's names).
pub const EXP_AVG_FILE: &str = "exp_avg.safetensors";
/// The AdamW second moments.
pub const EXP_AVG_SQ_FILE: &str = "exp_avg_sq.safetensors";

/// The training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    /// Training augmentation.
    #[serde(default)]
    pub augment: Augment,
    /// Seed of the data order, the augmentation and the drop masks.
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
            augment: Augment::default(),
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

/// What a vision checkpoint's `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VigTrainerState {
    /// Format version (1).
    pub version: u32,
    /// Steps taken.
    pub step: u64,
    /// The hyper-parameters.
    pub train: VigTrainConfig,
    /// Training loss of every step.
    pub losses: Vec<f64>,
    /// Evaluations so far.
    pub evals: Vec<EvalStats>,
}

/// A model, its optimizer and the batch buffers.
#[derive(Debug)]
pub struct VigTrainer {
    /// The model being trained.
    pub model: VigModel,
    /// Hyper-parameters.
    pub cfg: VigTrainConfig,
    /// Training loss of every step taken.
    pub losses: Vec<f64>,
    /// Evaluations recorded with [`VigTrainer::record_eval`].
    pub evals: Vec<EvalStats>,
    opt: AdamW,
    grads: Vec<f32>,
    acts: Option<CpuVigActs>,
    /// The data order of one epoch: (epoch, order).
    order: Option<(u64, Vec<usize>)>,
}

/// Stream tag of the drop-path masks.
const DROP_STREAM: u64 = 0xD209_0A7B;

/// hustvl's per-block drop rates: `torch.linspace(0, rate, depth)`.
pub fn drop_rates(rate: f64, depth: usize) -> Vec<f64> {
    (0..depth).map(|l| if depth > 1 { rate * l as f64 / (depth - 1) as f64 } else { 0.0 }).collect()
}

/// The drop-path scales of one step: per block with a positive rate `p`, two masks `[b]`
/// (attention, MLP) of `0` or `1 / (1 - p)`, drawn from the step's own generator.
pub fn drop_masks(rate: f64, depth: usize, b: usize, seed: u64, step: u64) -> Vec<Option<[Vec<f32>; 2]>> {
    let mut r = Rng::for_item(seed ^ DROP_STREAM, step);
    drop_rates(rate, depth)
        .into_iter()
        .map(|p| {
            (p > 0.0).then(|| {
                let keep = 1.0 - p;
                let mut mask = || (0..b).map(|_| if r.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect::<Vec<f32>>();
                [mask(), mask()]
            })
        })
        .collect()
}

fn check_config(cfg: &VigTrainConfig, config: &VigConfig) -> Result<()> {
    if cfg.batch_size == 0 {
        return Err(Error::BadArg { key: "batch_size", reason: "must be positive".into() });
    }
    let r = config.drop_path_rate;
    if !(0.0..1.0).contains(&r) {
        return Err(Error::BadArg { key: "drop_path_rate", reason: format!("{r}: must be in [0, 1)") });
    }
    Ok(())
}

impl VigTrainer {
    /// A trainer of `model`.
    ///
    /// # Errors
    /// [`Error::BadArg`] for a zero batch or a drop-path rate outside `[0, 1)`.
    pub fn new(model: VigModel, cfg: VigTrainConfig) -> Result<Self> {
        check_config(&cfg, &model.config)?;
        let opt = AdamW::for_table(cfg.adamw, &model.layout.specs, model.layout.numel);
        let grads = vec![0.0; model.layout.numel];
        Ok(Self { model, cfg, opt, grads, acts: None, order: None, losses: Vec::new(), evals: Vec::new() })
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// The images of the next step: their indices in `data` and their positions in the stream.
    fn next_batch(&mut self, n: usize) -> (Vec<usize>, Vec<u64>) {
        let b = self.cfg.batch_size;
        let first = self.opt.step * b as u64;
        let mut idx = Vec::with_capacity(b);
        let pos: Vec<u64> = (first..first + b as u64).collect();
        for &p in &pos {
            let epoch = p / n as u64;
            if self.order.as_ref().is_none_or(|o| o.0 != epoch) {
                self.order = Some((epoch, epoch_order(n, self.cfg.seed, epoch)));
            }
            if let Some((_, order)) = &self.order {
                idx.push(order[(p % n as u64) as usize]);
            }
        }
        (idx, pos)
    }

    /// One step on the next batch of `data` (the stream's order, augmented).
    ///
    /// # Errors
    /// Shape errors (images of another size than the first batch's), an empty set, a non-finite
    /// loss.
    pub fn step(&mut self, data: &ImageSet) -> Result<VigStep> {
        if data.n == 0 {
            return Err(Error::BadArg { key: "data", reason: "no training images".into() });
        }
        let b = self.cfg.batch_size;
        let (idx, pos) = self.next_batch(data.n);
        let aug = self.cfg.augment;
        let (x, y) = if aug.is_on() {
            let draws: Vec<Draw> = pos.iter().map(|&p| aug.draw(self.cfg.seed, p)).collect();
            data.batch_augmented(&idx, &aug, &draws)
        } else {
            data.batch(&idx)
        };
        if self.acts.is_none() {
            self.acts = Some(self.model.acts(b, data.h, data.w, true)?);
        }
        let acts = self.acts.as_mut().ok_or_else(|| Error::BadArg { key: "batch", reason: "no activations".into() })?;
        let (rate, depth) = (self.model.config.drop_path_rate, self.model.dims.depth);
        let masks = if rate > 0.0 { drop_masks(rate, depth, b, self.cfg.seed, self.opt.step) } else { Vec::new() };
        acts.set_drop_path(masks)?;
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
        self.losses.push(out.loss);
        Ok(VigStep { step: self.opt.step, loss: out.loss, acc: out.correct as f64 / b as f64, lr, grad_norm })
    }

    /// Records an evaluation `(accuracy, loss)` at the current step (for the checkpoint and the
    /// curve).
    pub fn record_eval(&mut self, acc: f64, loss: f64) -> EvalStats {
        let e = EvalStats { step: self.opt.step, loss, ppl: loss.exp(), acc };
        self.evals.push(e);
        e
    }

    /// Writes a complete checkpoint `run/checkpoint-<step>` (config.json, model.safetensors in
    /// hustvl's names, the AdamW moments, trainer_state.json), publishes it through `run/latest`
    /// and keeps the `keep` newest. Returns its path.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Safetensors`].
    pub fn save(&self, run: &Path, keep: usize) -> Result<PathBuf> {
        std::fs::create_dir_all(run).map_err(|e| Error::io("create dir", run, e))?;
        let name = format!("checkpoint-{}", self.opt.step);
        let tmp = run.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io("create dir", &tmp, e))?;
        checkpoint::write_atomic(&tmp.join(CONFIG_FILE), self.model.config.to_json().as_bytes())?;
        save_safetensors(&self.model, &tmp.join(WEIGHTS_FILE))?;
        let with = |params: &[f32]| VigModel { params: params.to_vec(), ..self.model.clone() };
        save_safetensors(&with(&self.opt.m), &tmp.join(EXP_AVG_FILE))?;
        save_safetensors(&with(&self.opt.v), &tmp.join(EXP_AVG_SQ_FILE))?;
        let state =
            VigTrainerState { version: 1, step: self.opt.step, train: self.cfg, losses: self.losses.clone(), evals: self.evals.clone() };
        let json = serde_json::to_string_pretty(&state).map_err(|source| Error::Json { what: STATE_FILE.into(), source })?;
        checkpoint::write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
        checkpoint::publish(run, &tmp, &name, keep)
    }

    /// The newest complete checkpoint of `run`: its directory and training state.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Resume`] when there is none; [`Error::Json`] for a damaged
    /// state file.
    pub fn saved(run: &Path) -> Result<(PathBuf, VigTrainerState)> {
        let dir = checkpoint::latest_checkpoint(run)?;
        let path = dir.join(STATE_FILE);
        let st: VigTrainerState = serde_json::from_str(&crate::limits::read_text(&path)?)
            .map_err(|source| Error::Json { what: path.display().to_string(), source })?;
        if st.version != 1 {
            return Err(Error::Resume { reason: format!("{} has version {}, this build reads version 1", path.display(), st.version) });
        }
        Ok((dir, st))
    }

    /// Resumes from the newest complete checkpoint of `run` with its saved settings, edited by
    /// `edit` (a longer run raises `steps`).
    ///
    /// # Errors
    /// As [`VigTrainer::saved`]; load errors naming the tensor; [`VigTrainer::new`]'s.
    pub fn resume(run: &Path, edit: impl FnOnce(&mut VigTrainConfig)) -> Result<Self> {
        let (dir, st) = Self::saved(run)?;
        let config = VigConfig::from_json(&crate::limits::read_text(&dir.join(CONFIG_FILE))?)?;
        let model = load_safetensors(&dir.join(WEIGHTS_FILE), config.clone())?;
        let m = load_safetensors(&dir.join(EXP_AVG_FILE), config.clone())?.params;
        let v = load_safetensors(&dir.join(EXP_AVG_SQ_FILE), config)?.params;
        let mut cfg = st.train;
        edit(&mut cfg);
        let mut tr = Self::new(model, cfg)?;
        tr.opt.m = m;
        tr.opt.v = v;
        tr.opt.step = st.step;
        tr.losses = st.losses;
        tr.evals = st.evals;
        tr.losses.truncate(st.step as usize);
        Ok(tr)
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
