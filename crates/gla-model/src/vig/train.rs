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
//!
//! A step can split its batch into [`VigTrainConfig::shards`] equal parts run side by side, each
//! on its own single-thread pool (`Lanes`): at this model's sizes the per-op fork-join of two
//! threads costs about what it saves, while whole shards scale with the cores. The shard count is
//! part of the numerics (the gradient is the shards' weighted sum), the thread count is not.
//! With [`VigTrainConfig::ema`] the trainer keeps an exponential moving average of the weights
//! (timm's `ModelEma`), which is what [`VigTrainer::eval_model`] evaluates and what a checkpoint
//! saves as the model.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::VigConfig;
use super::data::{epoch_order, Augment, Draw, ImageSet};
use super::pth::{load_safetensors, save_safetensors};
use super::{CpuVigActs, VigLoss, VigModel};
use crate::checkpoint::{self, CONFIG_FILE, STATE_FILE, WEIGHTS_FILE};
use crate::optim::{clip_grad_norm, cosine_lr, AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::train::EvalStats;
use crate::{Error, Result};

/// The AdamW first moments in a vision checkpoint (hustvl's names).
pub const EXP_AVG_FILE: &str = "exp_avg.safetensors";
/// The AdamW second moments.
pub const EXP_AVG_SQ_FILE: &str = "exp_avg_sq.safetensors";
/// With an EMA, the weights the optimizer steps (model.safetensors then holds the average).
pub const TRAIN_WEIGHTS_FILE: &str = "train_weights.safetensors";

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
    /// Equal parts a batch is split into, run side by side (1: the whole batch at once; at most
    /// `batch_size`). Checkpoints without the key ran unsplit.
    #[serde(default = "one_shard")]
    pub shards: usize,
    /// Decay of the exponential moving average of the weights (0: none), timm's `ModelEma`:
    /// after each step `ema = d ema + (1 - d) w` with `d = min(ema, (1 + t) / (10 + t))` at step
    /// `t` ([`ema_decay`]).
    #[serde(default)]
    pub ema: f64,
}

fn one_shard() -> usize {
    1
}

/// The EMA decay after step `t` (0-based) for the configured `decay`: `min(decay, (1 + t) /
/// (10 + t))`, TensorFlow's `ExponentialMovingAverage` warm-up with `num_updates`, so that the
/// average forgets the random init within the first hundreds of steps.
pub fn ema_decay(decay: f64, t: u64) -> f64 {
    decay.min((1 + t) as f64 / (10 + t) as f64)
}

/// One EMA update in place: `ema = d ema + (1 - d) w`, computed as `ema += (1 - d) (w - ema)`.
pub fn ema_update(ema: &mut [f32], w: &[f32], d: f64) {
    let a = (1.0 - d) as f32;
    for (e, &w) in ema.iter_mut().zip(w) {
        *e += a * (w - *e);
    }
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
            shards: 1,
            ema: 0.0,
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
    /// The weights' moving average ([`VigTrainConfig::ema`]).
    ema: Option<VigModel>,
    opt: AdamW,
    /// Per shard: its gradient (shard 0's is the step's, the others are added into it).
    grads: Vec<Vec<f32>>,
    /// Per shard: its activations.
    acts: Vec<CpuVigActs>,
    lanes: Lanes,
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
    if cfg.shards == 0 || cfg.shards > cfg.batch_size {
        return Err(Error::BadArg { key: "shards", reason: format!("{}: must be in [1, batch_size {}]", cfg.shards, cfg.batch_size) });
    }
    if !(0.0..1.0).contains(&cfg.ema) {
        return Err(Error::BadArg { key: "ema", reason: format!("{}: the decay must be in [0, 1)", cfg.ema) });
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
        let grads = vec![vec![0.0; model.layout.numel]; cfg.shards];
        let ema = (cfg.ema > 0.0).then(|| model.clone());
        let lanes = Lanes::new(cfg.shards)?;
        Ok(Self { model, cfg, ema, opt, grads, acts: Vec::new(), lanes, order: None, losses: Vec::new(), evals: Vec::new() })
    }

    /// The model to evaluate and publish: the weights' moving average with
    /// [`VigTrainConfig::ema`], else the trained weights.
    pub fn eval_model(&self) -> &VigModel {
        self.ema.as_ref().unwrap_or(&self.model)
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
        let parts = shard_sizes(b, self.cfg.shards);
        if self.acts.len() != parts.len() {
            self.acts = parts.iter().map(|&bs| self.model.acts(bs, data.h, data.w, true)).collect::<Result<_>>()?;
        }
        let (rate, depth) = (self.model.config.drop_path_rate, self.model.dims.depth);
        let masks = if rate > 0.0 { drop_masks(rate, depth, b, self.cfg.seed, self.opt.step) } else { Vec::new() };
        let img = x.len() / b;
        let (model, smoothing) = (&self.model, self.cfg.label_smoothing);
        let mut jobs = Vec::with_capacity(parts.len());
        let mut first = 0;
        for ((&bs, acts), grads) in parts.iter().zip(self.acts.iter_mut()).zip(self.grads.iter_mut()) {
            let range = first..first + bs;
            first += bs;
            let shard_masks: Vec<Option<[Vec<f32>; 2]>> =
                masks.iter().map(|m| m.as_ref().map(|[a, f]| [a[range.clone()].to_vec(), f[range.clone()].to_vec()])).collect();
            let (xs, ys) = (&x[range.start * img..range.end * img], &y[range.clone()]);
            jobs.push(move || -> Result<VigLoss> {
                acts.set_drop_path(shard_masks)?;
                let out = model
                    .forward(acts, xs, Some(ys), smoothing)?
                    .ok_or_else(|| Error::BadArg { key: "labels", reason: "missing".into() })?;
                grads.fill(0.0);
                model.backward(acts, grads)?;
                Ok(out)
            });
        }
        let outs = self.lanes.run(jobs).into_iter().collect::<Result<Vec<_>>>()?;
        // the batch's mean loss and gradient: the shards' means weighted by their share
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (out, &bs) in outs.iter().zip(&parts) {
            loss += out.loss * bs as f64 / b as f64;
            correct += out.correct;
        }
        if !loss.is_finite() {
            return Err(Error::Diverged { step: self.opt.step, what: "loss", value: loss });
        }
        if let [g0, rest @ ..] = &mut self.grads[..] {
            if !rest.is_empty() {
                let w0 = (parts[0] as f64 / b as f64) as f32;
                g0.iter_mut().for_each(|g| *g *= w0);
                for (g, &bs) in rest.iter().zip(&parts[1..]) {
                    let w = (bs as f64 / b as f64) as f32;
                    g0.iter_mut().zip(g).for_each(|(a, &v)| *a += w * v);
                }
            }
        }
        let grads = &mut self.grads[0];
        let grad_norm = clip_grad_norm(grads, self.cfg.clip);
        let c = &self.cfg;
        let lr = cosine_lr(self.opt.step, c.lr, c.min_lr, c.warmup, c.steps);
        let t = self.opt.step;
        self.opt.update(&mut self.model.params, grads, lr);
        if let Some(ema) = &mut self.ema {
            ema_update(&mut ema.params, &self.model.params, ema_decay(self.cfg.ema, t));
        }
        self.losses.push(loss);
        Ok(VigStep { step: self.opt.step, loss, acc: correct as f64 / b as f64, lr, grad_norm })
    }

    /// Records an evaluation `(accuracy, loss)` at the current step (for the checkpoint and the
    /// curve).
    pub fn record_eval(&mut self, acc: f64, loss: f64) -> EvalStats {
        let e = EvalStats { step: self.opt.step, loss, ppl: loss.exp(), acc };
        self.evals.push(e);
        e
    }

    /// Writes a complete checkpoint `run/checkpoint-<step>` (config.json, model.safetensors in
    /// hustvl's names: the [`VigTrainer::eval_model`]; with an EMA the stepped weights in
    /// train_weights.safetensors; the AdamW moments, trainer_state.json), publishes it through
    /// `run/latest` and keeps the `keep` newest. Returns its path.
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
        save_safetensors(self.eval_model(), &tmp.join(WEIGHTS_FILE))?;
        if self.ema.is_some() {
            save_safetensors(&self.model, &tmp.join(TRAIN_WEIGHTS_FILE))?;
        }
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
        let published = load_safetensors(&dir.join(WEIGHTS_FILE), config.clone())?;
        let (model, ema) = if st.train.ema > 0.0 {
            (load_safetensors(&dir.join(TRAIN_WEIGHTS_FILE), config.clone())?, Some(published))
        } else {
            (published, None)
        };
        let m = load_safetensors(&dir.join(EXP_AVG_FILE), config.clone())?.params;
        let v = load_safetensors(&dir.join(EXP_AVG_SQ_FILE), config)?.params;
        let mut cfg = st.train;
        edit(&mut cfg);
        if (cfg.ema > 0.0) != ema.is_some() {
            return Err(Error::Resume {
                reason: format!("the run was trained with ema {}; it cannot continue with ema {}", st.train.ema, cfg.ema),
            });
        }
        let mut tr = Self::new(model, cfg)?;
        tr.ema = ema;
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
/// batches of `batch`, the batches spread over the cores (each batch's numbers do not depend on
/// where it ran; they are summed in batch order).
///
/// # Errors
/// As [`VigModel::forward`].
pub fn evaluate(model: &VigModel, data: &ImageSet, limit: usize, batch: usize) -> Result<(f64, f64)> {
    let n = limit.min(data.n);
    let batch = batch.max(1);
    let starts: Vec<usize> = (0..n).step_by(batch).collect();
    let lanes = Lanes::new(starts.len())?;
    let k = lanes.len();
    // lane j takes batches j, j + k, ...
    let jobs: Vec<_> = (0..k)
        .map(|j| {
            let mine: Vec<usize> = starts.iter().copied().skip(j).step_by(k).collect();
            move || -> Result<Vec<(usize, usize, f64)>> {
                let mut acts: Option<CpuVigActs> = None;
                let mut out = Vec::with_capacity(mine.len());
                for start in mine {
                    let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
                    if acts.as_ref().is_none_or(|a| a.shape().b != idx.len()) {
                        acts = Some(model.acts(idx.len(), data.h, data.w, false)?);
                    }
                    let Some(a) = acts.as_mut() else { continue };
                    let (x, y) = data.batch(&idx);
                    if let Some(l) = model.forward(a, &x, Some(&y), 0.0)? {
                        out.push((start, l.correct, l.loss * idx.len() as f64));
                    }
                }
                Ok(out)
            }
        })
        .collect();
    let mut per_batch: Vec<(usize, usize, f64)> = Vec::with_capacity(starts.len());
    for r in lanes.run(jobs) {
        per_batch.extend(r?);
    }
    per_batch.sort_by_key(|b| b.0);
    let (correct, loss) = per_batch.iter().fold((0usize, 0.0f64), |(c, l), b| (c + b.1, l + b.2));
    Ok((correct as f64 / n.max(1) as f64, loss / n.max(1) as f64))
}

/// The sizes of `shards` near-equal consecutive parts of a batch of `b` (the first `b % shards`
/// one larger).
pub fn shard_sizes(b: usize, shards: usize) -> Vec<usize> {
    let s = shards.clamp(1, b.max(1));
    (0..s).map(|i| b / s + usize::from(i < b % s)).collect()
}

/// Single-thread rayon pools, one per job run side by side (at most the global pool's threads,
/// `RAYON_NUM_THREADS`): inside a lane every op runs on its thread, so independent jobs (a
/// step's shards, evaluation batches) use the cores without fork-join inside each op. With one
/// core there are no pools and the jobs run in turn on the caller.
struct Lanes(Vec<rayon::ThreadPool>);

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lanes({})", self.0.len())
    }
}

impl Lanes {
    /// Lanes for up to `jobs` jobs at once.
    fn new(jobs: usize) -> Result<Self> {
        let k = jobs.min(rayon::current_num_threads());
        if k <= 1 {
            return Ok(Self(Vec::new()));
        }
        let pools = (0..k)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("vig-lane-{i}"))
                    .build()
                    .map_err(|e| Error::BadArg { key: "threads", reason: format!("starting a worker thread: {e}") })
            })
            .collect::<Result<_>>()?;
        Ok(Self(pools))
    }

    /// Jobs run at once (1 without pools).
    fn len(&self) -> usize {
        self.0.len().max(1)
    }

    /// Runs `jobs`, job `i` in lane `i % len`; their results in job order.
    fn run<T: Send, F: FnOnce() -> T + Send>(&self, jobs: Vec<F>) -> Vec<T> {
        if self.0.is_empty() {
            return jobs.into_iter().map(|f| f()).collect();
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let pool = &self.0[i % self.0.len()];
                    s.spawn(move || pool.install(f))
                })
                .collect();
            // a job's panic is a bug: carried to the caller as it is
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    }
}
