//! The training loop's library half: one optimizer step at a time, evaluation, checkpoints and
//! exact resume. The CLI (`gla train`) adds the progress line, metrics files and the plot.
//!
//! One step: `grad_accum` micro-batches of `batch_size` MQAR examples, or text windows when
//! [`TrainConfig::text`] is set (forward, backward with scale `1/grad_accum`), clip the global
//! gradient norm, AdamW at the cosine-scheduled rate.
//! Everything is deterministic given the settings, so a run resumed from a checkpoint repeats the
//! uninterrupted run's losses bit for bit on the same machine.
//!
//! Data parallel ([`Shard`], [`Trainer::with_sharded_engine`]): `batch_size` stays the global
//! micro-batch; each of `world` processes runs `batch_size / world` of its examples (rank r the
//! r-th slice of the same example stream) on an engine that reduces the statistics and the
//! gradients across the processes, so the steps are those of one process with the whole batch.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, OPTIMIZER_FILE, STATE_FILE};
use crate::config::ModelConfig;
use crate::data::Mqar;
use crate::engine::{CpuDevice, DeviceEngine, Engine};
use crate::model::{GlaModel, LossOut};
use crate::optim::{cosine_lr, AdamW, AdamWConfig};
use crate::text::{TextData, TextTask};
use crate::{Error, Result};

/// Training settings (saved in the training state; a resumed run uses the saved ones).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per micro-batch: the global batch, over all data-parallel processes
    /// (each runs `batch_size / world` of them, [`Shard`]).
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f32,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Steps over which the cosine decays to `min_lr` (then constant). Default (null): `steps`.
    #[serde(default)]
    pub decay_steps: Option<u64>,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Max global gradient norm (0 = no clipping).
    pub clip: f32,
    /// Seed of the initialisation.
    pub seed: u64,
    /// Seed of the training examples (evaluation uses a separate stream derived from it).
    pub data_seed: u64,
    /// Examples per evaluation (rounded up to whole batches).
    pub eval_examples: usize,
    /// The task (ignored when `text` is set).
    pub task: Mqar,
    /// Train a causal LM on a tokenised text corpus instead of MQAR. Absent from the states of
    /// MQAR runs, which therefore read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextTask>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 32,
            grad_accum: 1,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 50,
            decay_steps: None,
            adamw: AdamWConfig::default(),
            clip: 1.0,
            seed: 0,
            data_seed: 1,
            eval_examples: 512,
            task: Mqar::default(),
            text: None,
        }
    }
}

impl TrainConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::BadArg`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, reason: &str| Err(Error::BadArg { key, reason: reason.into() });
        if self.batch_size == 0 {
            return bad("batch_size", "must be > 0");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be > 0");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", "must be a positive number");
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("min_lr", "must be in [0, lr]");
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return bad("clip", "must be >= 0");
        }
        let a = self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0 && a.weight_decay >= 0.0) {
            return bad("adamw", "needs 0 <= beta < 1, eps > 0, weight_decay >= 0");
        }
        match &self.text {
            Some(t) => t.validate(),
            None => self.task.validate(),
        }
    }

    /// Sequence length T of the data (the text window or the MQAR example).
    pub fn seq_len(&self) -> usize {
        self.text.as_ref().map_or(self.task.seq_len, |t| t.seq_len)
    }

    /// Vocabulary the data uses (the tokenizer's or MQAR's).
    pub fn data_vocab(&self) -> usize {
        self.text.as_ref().map_or(self.task.vocab, |t| t.vocab)
    }
}

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The step just taken (1-based).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Query accuracy of the step's batches (before the update); for text, next-token accuracy.
    pub acc: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Tokens processed.
    pub tokens: usize,
}

/// An evaluation on held-out examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    /// Step at which it ran.
    pub step: u64,
    /// Mean loss over labelled positions.
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    /// Query accuracy; for text, next-token accuracy.
    pub acc: f64,
}

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version (1).
    pub version: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Index of the next training example: the complete state of the counter-based MQAR
    /// stream or text-window sampler together with `train.data_seed`.
    pub data_cursor: u64,
    /// The settings of the run.
    pub train: TrainConfig,
    /// Loss of every step so far (for the curve).
    pub losses: Vec<f64>,
    /// Every evaluation so far.
    pub evals: Vec<EvalStats>,
}

/// This process's part of a data-parallel run: rank `rank` of `world` processes.
///
/// Micro-batch of the global batch `B` at stream position `cursor`: rank r takes the examples
/// `cursor + r * B / world ..cursor + (r + 1) * B / world`, so the ranks' slices are disjoint and
/// together they are exactly the examples one process with batch `B` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process, `0..world`.
    pub rank: usize,
    /// Processes in the run.
    pub world: usize,
}

impl Shard {
    /// One process (no data parallelism).
    pub const SINGLE: Shard = Shard { rank: 0, world: 1 };

    /// Rank `rank` of `world`.
    ///
    /// # Errors
    /// [`Error::BadArg`] unless `rank < world`.
    pub fn new(rank: usize, world: usize) -> Result<Self> {
        if rank >= world {
            return Err(Error::BadArg { key: "rank", reason: format!("rank {rank} is not below the world size {world}") });
        }
        Ok(Self { rank, world })
    }

    /// The examples of a global batch `global` each process runs.
    ///
    /// # Errors
    /// [`Error::BadArg`] when `global` is not a multiple of the world size (a run keeps its
    /// global batch on `--resume`, so the world size must divide it).
    pub fn local_batch(&self, global: usize) -> Result<usize> {
        if global == 0 || !global.is_multiple_of(self.world) {
            return Err(Error::BadArg {
                key: "batch_size",
                reason: format!(
                    "the global batch of {global} sequences cannot be split evenly over {} processes; choose a world size that divides it",
                    self.world
                ),
            });
        }
        Ok(global / self.world)
    }

    /// Index of this process's first example of the global batch `global` that starts at
    /// `first` (`global` divisible by the world size).
    pub fn first_example(&self, first: u64, global: usize) -> u64 {
        first + (self.rank * (global / self.world)) as u64
    }
}

/// A model, its optimizer, buffers and position in the data stream.
pub struct Trainer {
    /// The model being trained.
    pub model: GlaModel,
    /// AdamW state.
    pub opt: AdamW,
    /// Settings.
    pub cfg: TrainConfig,
    /// Index of the next training example (MQAR example or text window).
    pub cursor: u64,
    /// Loss of every step so far.
    pub losses: Vec<f64>,
    /// Every evaluation so far.
    pub evals: Vec<EvalStats>,
    /// The opened corpus when `cfg.text` is set.
    text: Option<TextData>,
    ids: Vec<u32>,
    targets: Vec<i64>,
    /// Where the math runs (the CPU's [`CpuDevice`] on the host weights unless
    /// [`Trainer::with_engine`] moved it); `model` and `opt` are refreshed from a device with
    /// its own copy by [`Trainer::sync`].
    engine: Box<dyn Engine>,
    /// This process's slice of each global batch ([`Shard::SINGLE`] unless data parallel).
    shard: Shard,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("params", &self.model.num_params())
            .field("step", &self.opt.step)
            .field("cursor", &self.cursor)
            .field("engine", &self.engine.name())
            .finish_non_exhaustive()
    }
}

const EVAL_STREAM: u64 = 0x0005_EED0_E7A1;

impl Trainer {
    /// A fresh run: fla's init from `cfg.seed`.
    ///
    /// # Errors
    /// Config and settings errors; [`Error::BadArg`] when the data's vocabulary exceeds the
    /// model's; [`Error::Text`] when the text corpus does not open.
    pub fn new(config: impl Into<ModelConfig>, cfg: TrainConfig) -> Result<Self> {
        let config = config.into();
        cfg.validate()?;
        crate::limits::check_training(&config.dims()?, cfg.batch_size, cfg.seq_len())?;
        let model = GlaModel::new(config, cfg.seed)?;
        Self::assemble(model, cfg, None, 0, Vec::new(), Vec::new())
    }

    fn assemble(
        model: GlaModel,
        cfg: TrainConfig,
        opt: Option<AdamW>,
        cursor: u64,
        losses: Vec<f64>,
        evals: Vec<EvalStats>,
    ) -> Result<Self> {
        if cfg.data_vocab() > model.dims.vocab {
            return Err(Error::BadArg {
                key: "vocab",
                reason: format!("the data uses {} tokens but the model's vocab_size is {}", cfg.data_vocab(), model.dims.vocab),
            });
        }
        let text = cfg.text.as_ref().map(TextTask::open).transpose()?;
        let (b, t) = (cfg.batch_size, cfg.seq_len());
        let opt = opt.unwrap_or_else(|| AdamW::new(cfg.adamw, &model.layout));
        let engine = Box::new(DeviceEngine::new(CpuDevice::new(&model), &model, b, t)?);
        Ok(Self {
            opt,
            text,
            ids: vec![0; b * t],
            targets: vec![0; b * t],
            model,
            cfg,
            cursor,
            losses,
            evals,
            engine,
            shard: Shard::SINGLE,
        })
    }

    /// Moves the math to a device: `make` receives the host model, the optimizer state and the
    /// batch shape `(B, T)` and returns the engine (a [`DeviceEngine`] over the device, which
    /// uploads what it needs). The CPU engine's activations and gradients are released.
    ///
    /// # Errors
    /// Whatever `make` returns.
    pub fn with_engine(self, make: impl FnOnce(&GlaModel, &AdamW, usize, usize) -> Result<Box<dyn Engine>>) -> Result<Self> {
        self.with_sharded_engine(Shard::SINGLE, make)
    }

    /// [`Trainer::with_engine`] for one process of a data-parallel run: `make` receives the
    /// per-process batch `(batch_size / world, T)` and must return an engine that reduces across
    /// the processes (see [`Engine`]); every step and evaluation then reads this process's slice
    /// of each global batch ([`Shard`]).
    ///
    /// # Errors
    /// [`Error::BadArg`] when the world size does not divide `batch_size`; whatever `make`
    /// returns.
    pub fn with_sharded_engine(
        mut self,
        shard: Shard,
        make: impl FnOnce(&GlaModel, &AdamW, usize, usize) -> Result<Box<dyn Engine>>,
    ) -> Result<Self> {
        let (b, t) = (shard.local_batch(self.cfg.batch_size)?, self.cfg.seq_len());
        // the CPU engine's buffers go first
        self.engine = Box::new(DeviceEngine::new(CpuDevice::default(), &self.model, 0, 0)?);
        self.engine = make(&self.model, &self.opt, b, t)?;
        self.shard = shard;
        self.ids = vec![0; b * t];
        self.targets = vec![0; b * t];
        Ok(self)
    }

    /// This process's part of the run ([`Shard::SINGLE`] unless data parallel).
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Fills `ids`/`targets` with this process's slice of the global training micro-batch that
    /// starts at example `cursor` (the whole batch on one process).
    fn fill_train_batch(&mut self, cursor: u64) {
        let c = &self.cfg;
        let b = c.batch_size / self.shard.world;
        let first = self.shard.first_example(cursor, c.batch_size);
        match &self.text {
            Some(d) => d.batch(c.data_seed, first, b, &mut self.ids, &mut self.targets),
            None => c.task.batch(c.data_seed, first, b, &mut self.ids, &mut self.targets),
        }
    }

    /// This process's slice of the global training micro-batch at example `cursor`, as
    /// `(ids, targets)` of `[batch_size / world, T]` (what [`Trainer::step`] feeds its model).
    pub fn train_batch(&mut self, cursor: u64) -> (&[u32], &[i64]) {
        self.fill_train_batch(cursor);
        (&self.ids, &self.targets)
    }

    /// The engine's device name (`cpu` unless [`Trainer::with_engine`] moved the math).
    pub fn device_name(&self) -> String {
        self.engine.name()
    }

    /// Brings `model` and `opt` up to date with the engine (no-op on the CPU).
    ///
    /// # Errors
    /// Device errors.
    pub fn sync(&mut self) -> Result<()> {
        self.engine.download(&mut self.model, &mut self.opt)
    }

    fn fwd(&mut self) -> Result<LossOut> {
        self.engine.forward(&self.model, &self.ids, &self.targets)
    }

    /// Whether `flag` is set on any process of the run (this one's when not data parallel); a
    /// collective on a data-parallel run, so every process must call it at the same step.
    ///
    /// # Errors
    /// Communication failures.
    pub fn any_rank(&mut self, flag: bool) -> Result<bool> {
        self.engine.any_rank(flag)
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        self.opt.step
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.cfg.batch_size * self.cfg.grad_accum * self.cfg.seq_len()
    }

    /// One optimizer step.
    ///
    /// # Errors
    /// [`Error::Diverged`] when the loss or the gradient norm is not finite; op errors.
    pub fn step(&mut self) -> Result<StepStats> {
        let step = self.opt.step;
        self.engine.zero_grads()?;
        let (mut loss, mut correct, mut valid) = (0.0, 0usize, 0usize);
        let accum = self.cfg.grad_accum;
        let scale = 1.0 / accum as f32;
        for i in 0..accum {
            self.fill_train_batch(self.cursor);
            self.cursor += self.cfg.batch_size as u64;
            let out = self.fwd()?;
            self.engine.backward(&self.model, scale, i + 1 == accum)?;
            loss += out.loss / accum as f64;
            correct += out.correct;
            valid += out.n_valid;
        }
        if !loss.is_finite() {
            return Err(Error::Diverged { step: step + 1, what: "loss", value: loss });
        }
        let c = &self.cfg;
        let lr = cosine_lr(step, c.lr, c.min_lr, c.warmup, c.decay_steps.unwrap_or(c.steps));
        // the engine leaves the weights alone when the norm is not finite
        let grad_norm = self.engine.update(&mut self.model, &mut self.opt, &c.adamw, lr, c.clip)?;
        if !grad_norm.is_finite() {
            return Err(Error::Diverged { step: step + 1, what: "gradient norm", value: grad_norm });
        }
        self.losses.push(loss);
        Ok(StepStats { step: step + 1, loss, acc: correct as f64 / valid.max(1) as f64, grad_norm, lr, tokens: self.tokens_per_step() })
    }

    /// Loss, perplexity and query accuracy on `eval_examples` held-out examples (a fixed stream
    /// separate from training; for text, up to `eval_examples` consecutive windows of the
    /// validation split, with next-token accuracy); recorded in the history.
    ///
    /// # Errors
    /// Op errors.
    pub fn evaluate(&mut self) -> Result<EvalStats> {
        let c = self.cfg.clone();
        let seed = c.data_seed ^ EVAL_STREAM;
        let n = self.text.as_ref().map_or(c.eval_examples, |d| d.eval_windows(c.eval_examples));
        let batches = n.div_ceil(c.batch_size).max(1);
        // each process evaluates its slice of every global batch; a data-parallel engine
        // returns the global batch's statistics
        let b = c.batch_size / self.shard.world;
        let (mut loss_sum, mut correct, mut valid) = (0.0, 0usize, 0usize);
        for i in 0..batches {
            let first = self.shard.first_example((i * c.batch_size) as u64, c.batch_size);
            match &self.text {
                Some(d) => {
                    d.eval_batch(first as usize, n, b, &mut self.ids, &mut self.targets);
                }
                None => c.task.batch(seed, first, b, &mut self.ids, &mut self.targets),
            }
            let out = self.fwd()?;
            loss_sum += out.loss * out.n_valid as f64;
            correct += out.correct;
            valid += out.n_valid;
        }
        let loss = loss_sum / valid.max(1) as f64;
        let e = EvalStats { step: self.opt.step, loss, ppl: loss.exp(), acc: correct as f64 / valid.max(1) as f64 };
        self.evals.push(e);
        Ok(e)
    }

    /// Writes a complete checkpoint `run/checkpoint-<step>` (model in fla's format, optimizer,
    /// state), publishes it through `run/latest` and keeps the `keep` newest. Returns its path.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Safetensors`].
    pub fn save(&mut self, run: &Path, keep: usize) -> Result<PathBuf> {
        self.sync()?;
        fs::create_dir_all(run).map_err(|e| Error::io("create dir", run, e))?;
        let name = format!("checkpoint-{}", self.opt.step);
        let tmp = run.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        }
        checkpoint::save_model(&tmp, &self.model)?;
        checkpoint::save_moments(&tmp.join(OPTIMIZER_FILE), &self.model.layout, &self.opt.m, &self.opt.v)?;
        let state = TrainerState {
            version: 1,
            step: self.opt.step,
            data_cursor: self.cursor,
            train: TrainConfig { text: self.cfg.text.as_ref().map(|t| t.relative_to(run)), ..self.cfg.clone() },
            losses: self.losses.clone(),
            evals: self.evals.clone(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|source| Error::Json { what: STATE_FILE.into(), source })?;
        checkpoint::write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
        checkpoint::publish(run, &tmp, &name, keep)
    }

    /// Resumes from the newest complete checkpoint of `run` with its saved settings
    /// (`steps` may be raised with `steps_override`). A text run reopens its token file (and
    /// re-tokenises the text if the file went missing) and refuses different tokens.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Resume`] when there is no checkpoint; load errors naming the
    /// tensor; [`Error::Json`] for a damaged state file; [`Error::Text`].
    pub fn resume(run: &Path, steps_override: Option<u64>) -> Result<Self> {
        Self::resume_with(run, |c| {
            if let Some(s) = steps_override {
                c.steps = s;
            }
        })
    }

    /// The model config and training state of the newest checkpoint of `run`, read without
    /// loading any weights (to compare them with the settings of a resumed invocation).
    ///
    /// # Errors
    /// As [`Trainer::resume`].
    pub fn saved(run: &Path) -> Result<(ModelConfig, TrainerState)> {
        let dir = checkpoint::latest_checkpoint(run)?;
        let text = crate::limits::read_text(&dir.join(STATE_FILE))?;
        let st: TrainerState =
            serde_json::from_str(&text).map_err(|source| Error::Json { what: dir.join(STATE_FILE).display().to_string(), source })?;
        if st.version != 1 {
            return Err(Error::Resume { reason: format!("{} has version {}, this build reads version 1", STATE_FILE, st.version) });
        }
        let (config, _) = checkpoint::load_config(&dir)?;
        Ok((config, st))
    }

    /// [`Trainer::resume`] with the saved settings edited by `edit` before anything is built
    /// (a changed batch shape sizes the buffers); the edited settings are validated.
    ///
    /// # Errors
    /// As [`Trainer::resume`].
    pub fn resume_with(run: &Path, edit: impl FnOnce(&mut TrainConfig)) -> Result<Self> {
        let dir = checkpoint::latest_checkpoint(run)?;
        let (_, st) = Self::saved(run)?;
        let model = checkpoint::load_model(&dir)?;
        let (m, v) = checkpoint::load_moments(&dir.join(OPTIMIZER_FILE), &model.layout)?;
        let mut cfg = st.train;
        edit(&mut cfg);
        if let Some(t) = &mut cfg.text {
            t.resolve_under(run);
        }
        cfg.validate()?;
        crate::limits::check_training(&model.dims, cfg.batch_size, cfg.seq_len())?;
        let mut opt = AdamW::new(cfg.adamw, &model.layout);
        opt.m = m;
        opt.v = v;
        opt.step = st.step;
        Self::assemble(model, cfg, Some(opt), st.data_cursor, st.losses, st.evals)
    }
}
