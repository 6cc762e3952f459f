//! `gla train`: trains a language model of the family (`--arch`: GLA, DeltaNet, Gated DeltaNet)
//! on the CPU (f32) on the MQAR recall task, or as a causal LM on a text file or folder (`--data`), with a progress line, evaluations, JSON-lines
//! metrics, checkpoints in fla's Hugging Face format, `--resume`, and a loss-curve PNG at the end.
//! `--gpus N` trains data parallel over NCCL (crate::launch): rank 0 alone writes checkpoints,
//! metrics, the progress line and the plot.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gla_model::optim::AdamWConfig;
use gla_model::text::{self, CorpusTokenizer, TextTask};
use gla_model::{DeltaNetConfig, GatedDeltaNetConfig, GlaConfig, ModelConfig, Mqar, TrainConfig, Trainer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directory: checkpoints, metrics.jsonl, loss_curve.png [default: runs/mqar; with
    /// --data: runs/text].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in --out with the model and training settings saved
    /// there, the step target included. A flag that differs from the saved settings is an error
    /// listing the differences; --steps, --device and the run controls (--eval-every,
    /// --save-every, --keep, --stop-at-acc) may change, the optimizer's and the batch's
    /// settings with --override-settings, the model's never.
    #[arg(long)]
    resume: bool,
    /// With --resume: apply the given optimizer and batch flags (--lr, --min-lr, --warmup,
    /// --decay-steps, --weight-decay, --clip, --batch-size, --grad-accum, --data-seed,
    /// --eval-examples) instead of refusing them.
    #[arg(long, requires = "resume")]
    override_settings: bool,
    /// The flags given on the command line or in --settings (clap ids), filled in by main.
    #[arg(skip)]
    pub given: Vec<String>,
    /// Training settings from a JSON file: an object whose keys are this command's flags
    /// (`"lr": 0.001`, `"data": "texts/"`, `"d-model": 128`, snake_case works too; `true` sets a
    /// switch such as `"tie-embeddings"`). A flag given on the command line wins over the file.
    #[arg(long, value_name = "FILE.json")]
    settings: Option<PathBuf>,
    /// Where the math runs: cpu (f32), or cuda (bf16 GEMM operands on cuBLAS with f32 master
    /// weights, gradients and AdamW moments; needs a gla built with `--features cuda`). A run
    /// may move between devices on --resume. Bit-exact resume holds on the CPU; on the GPU two
    /// runs with the same settings give bitwise equal losses (every reduction has a fixed order).
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    device: crate::Device,
    /// Data-parallel training on N GPUs of this machine: starts N copies of this command, one
    /// per GPU, with the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    /// MASTER_PORT), summing gradients over NCCL (libnccl.so on LD_LIBRARY_PATH). Implies
    /// --device cuda; --batch-size stays the global batch (batch-size / N per GPU), so the run
    /// follows the 1-GPU run with the same batch, and --resume works with any N that divides it.
    /// A process started by torchrun (RANK set) joins its job instead. A rank that dies stops
    /// the others; peers that hang are given up after GLA_NCCL_TIMEOUT_S seconds (300).
    #[arg(long)]
    gpus: Option<usize>,
    /// Model config (fla's config.json of any family built: its model_type picks it); replaces
    /// --arch and the model flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model family, fla's model_type: gla (GLAForCausalLM), delta_net (DeltaNet) or
    /// gated_deltanet (Gated DeltaNet). The model flags below set that family's config keys of
    /// the same meaning (fla's defaults for the others; --config sets any key).
    #[arg(long, value_enum, default_value_t = Arch::Gla)]
    arch: Arch,
    /// Train a causal language model on this text file or folder (read recursively in path
    /// order; hidden and binary files skipped) instead of MQAR. It is tokenised once into a
    /// token file under --data-cache, reused while the files and the tokenizer are unchanged;
    /// training samples random windows of --seq-len + 1 tokens, evaluation reports loss and
    /// perplexity on the held-out tail (--val-fraction).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Hugging Face tokenizer.json for --data (needs a gla built with `--features hf-tokenizer`);
    /// default: byte-level, vocabulary 256.
    #[arg(long, requires = "data")]
    tokenizer: Option<PathBuf>,
    /// Folder of the --data token file (default: `<out>/data`).
    #[arg(long, requires = "data")]
    data_cache: Option<PathBuf>,
    /// Share of the --data tokens held out at the end for evaluation (at least one window).
    #[arg(long, default_value_t = 0.01)]
    val_fraction: f64,
    /// Model dim D.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// GLA blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Heads (the demo default 1 with --expand-k 1 gives one 64x64 state: it learned MQAR
    /// fastest in our runs; fla's config default is 4 heads, expand_k 0.5).
    #[arg(long, default_value_t = 1)]
    heads: usize,
    /// Key dim of all heads = D * expand_k (fla's expand_k; gla and delta_net).
    #[arg(long, default_value_t = 1.0)]
    expand_k: f64,
    /// Value dim of all heads = D * expand_v (fla's expand_v); gated_deltanet: the value dim of
    /// a head = head_dim * expand_v.
    #[arg(long, default_value_t = 1.0)]
    expand_v: f64,
    /// gated_deltanet: the key dim of a head (fla's head_dim) [default: D / heads].
    #[arg(long)]
    head_dim: Option<usize>,
    /// gated_deltanet: value heads, a multiple of --heads (fla's num_v_heads) [default: heads].
    #[arg(long)]
    v_heads: Option<usize>,
    /// MLP width (default: fla's rule from hidden_ratio 4).
    #[arg(long)]
    intermediate_size: Option<usize>,
    /// Without the output gate g_proj (gla: use_output_gate = false; gated_deltanet: use_gate =
    /// false; delta_net has none by default).
    #[arg(long)]
    no_output_gate: bool,
    /// gla: lower clamp of the log-gate (fla's clamp_min): the per-step decay stays >= exp(clamp_min).
    #[arg(long, allow_hyphen_values = true)]
    clamp_min: Option<f64>,
    /// Std of the normal init (fla's initializer_range).
    #[arg(long, default_value_t = 0.02)]
    init_std: f64,
    /// Tie lm_head to the embedding (fla's tie_word_embeddings; off by default, as in fla).
    #[arg(long)]
    tie_embeddings: bool,
    /// Without the short causal convolution on q, k, v (fla's use_short_conv).
    #[arg(long)]
    no_short_conv: bool,
    /// A hybrid stack: these layers (0-based, comma-separated) get fla's softmax attention
    /// (the config's attn key: RoPE, causal, fla's defaults but for the --attn-* flags); the
    /// others keep --arch's mixer.
    #[arg(long, value_delimiter = ',')]
    attn_layers: Vec<usize>,
    /// Query heads of the attention layers (attn num_heads) [default: --heads].
    #[arg(long, requires = "attn_layers")]
    attn_heads: Option<usize>,
    /// Key/value heads of the attention layers (attn num_kv_heads, GQA) [default: their heads].
    #[arg(long, requires = "attn_layers")]
    attn_kv_heads: Option<usize>,
    /// Sliding window of the attention layers (attn window_size) [default: full attention].
    #[arg(long, requires = "attn_layers")]
    attn_window: Option<usize>,
    /// Sequence length T: of an MQAR example, or of a --data window (the model reads T tokens
    /// and predicts the T next ones).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// MQAR key-value pairs per sequence.
    #[arg(long, default_value_t = 8)]
    kv_pairs: usize,
    /// Vocabulary of the model (and of MQAR) [default: 256; with --data: the tokenizer's, which
    /// this may only raise].
    #[arg(long)]
    vocab: Option<usize>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Sequences per micro-batch (over all GPUs with --gpus).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value_t = 3e-4)]
    min_lr: f32,
    /// Warmup steps.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Steps of the cosine decay to --min-lr, constant after (0 = --steps). The defaults (a
    /// 200-step warmup to 3e-3, cosine over 2000 steps) are chosen for robustness across (init,
    /// data) seed pairs (tools/mqar_sweep.sh; the record is in bench/results/).
    #[arg(long, default_value_t = 2000)]
    decay_steps: u64,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Max global gradient norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Init seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Data seed.
    #[arg(long, default_value_t = 1)]
    data_seed: u64,
    /// Evaluate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Held-out examples per evaluation (--data: at most this many windows of the validation
    /// split, consecutive from its start).
    #[arg(long, default_value_t = 512)]
    eval_examples: usize,
    /// Checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    save_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Stop when an evaluation reaches this query accuracy (1.0 or more = never; MQAR only).
    #[arg(long, default_value_t = 0.95)]
    stop_at_acc: f64,
}

const DEFAULT_VOCAB: usize = 256;

/// The model family of `gla train --arch`: fla's `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// fla's GLAForCausalLM (model_type gla).
    Gla,
    /// fla's DeltaNetForCausalLM (model_type delta_net).
    #[value(name = "delta_net", alias = "delta-net")]
    DeltaNet,
    /// fla's GatedDeltaNetForCausalLM (model_type gated_deltanet).
    #[value(name = "gated_deltanet", alias = "gated-deltanet")]
    GatedDeltaNet,
}

impl Arch {
    /// fla's `model_type`.
    fn model_type(self) -> &'static str {
        match self {
            Arch::Gla => "gla",
            Arch::DeltaNet => "delta_net",
            Arch::GatedDeltaNet => "gated_deltanet",
        }
    }

    /// The family of a config's `model_type`.
    fn of(model_type: &str) -> Option<Self> {
        [Arch::Gla, Arch::DeltaNet, Arch::GatedDeltaNet].into_iter().find(|a| a.model_type() == model_type)
    }
}

/// The model flags a family takes (clap ids), beyond those of every family (`d_model`,
/// `layers`, `heads`, `expand_v`, `intermediate_size`, `init_std`, `tie_embeddings`,
/// `no_short_conv`, `no_output_gate`, `vocab`).
fn family_flags(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Gla => &["expand_k", "clamp_min"],
        Arch::DeltaNet => &["expand_k"],
        Arch::GatedDeltaNet => &["head_dim", "v_heads"],
    }
}

/// The model config from --config or the flags for the family `arch`; `data_vocab`: the
/// tokenizer's vocabulary with --data (the model's default, and its floor).
fn model_config(a: &Args, arch: Arch, data_vocab: Option<usize>) -> Result<ModelConfig> {
    let given = |id: &str| a.given.iter().any(|g| g == id);
    if let Some(p) = &a.config {
        let text = gla_model::limits::read_text(p).with_context(|| format!("--config {}", p.display()))?;
        let c = ModelConfig::from_json(&text).with_context(|| format!("--config {}", p.display()))?;
        if given("arch") && c.model_type() != arch.model_type() {
            bail!("--arch {} differs from the model_type {:?} of --config {}", arch.model_type(), c.model_type(), p.display());
        }
        return Ok(c);
    }
    for (other, flags) in [Arch::Gla, Arch::DeltaNet, Arch::GatedDeltaNet].map(|x| (x, family_flags(x))) {
        for &id in flags {
            if given(id) && !family_flags(arch).contains(&id) {
                bail!(
                    "--{} is a flag of --arch {} and not of --arch {} (its fla config has no such key; --config sets any key)",
                    id.replace('_', "-"),
                    other.model_type(),
                    arch.model_type()
                );
            }
        }
    }
    let vocab = match (a.vocab, data_vocab) {
        (Some(v), Some(d)) if v < d => bail!("--vocab {v} is smaller than the tokenizer's vocabulary of {d}"),
        (v, d) => v.or(d).unwrap_or(DEFAULT_VOCAB),
    };
    let attn = (!a.attn_layers.is_empty()).then(|| {
        serde_json::json!({
            "layers": a.attn_layers,
            "num_heads": a.attn_heads.unwrap_or(a.heads),
            "num_kv_heads": a.attn_kv_heads,
            "window_size": a.attn_window,
        })
    });
    Ok(match arch {
        Arch::Gla => GlaConfig {
            hidden_size: a.d_model,
            num_hidden_layers: a.layers,
            num_heads: a.heads,
            expand_k: a.expand_k,
            expand_v: a.expand_v,
            intermediate_size: a.intermediate_size,
            use_short_conv: !a.no_short_conv,
            tie_word_embeddings: a.tie_embeddings,
            use_output_gate: !a.no_output_gate,
            initializer_range: a.init_std,
            clamp_min: a.clamp_min,
            vocab_size: vocab,
            max_position_embeddings: a.seq_len,
            attn,
            ..GlaConfig::default()
        }
        .into(),
        Arch::DeltaNet => DeltaNetConfig {
            hidden_size: a.d_model,
            num_hidden_layers: a.layers,
            num_heads: a.heads,
            expand_k: a.expand_k,
            expand_v: a.expand_v,
            intermediate_size: a.intermediate_size,
            use_short_conv: !a.no_short_conv,
            tie_word_embeddings: a.tie_embeddings,
            initializer_range: a.init_std,
            vocab_size: vocab,
            max_position_embeddings: a.seq_len,
            attn,
            ..DeltaNetConfig::default()
        }
        .into(),
        Arch::GatedDeltaNet => GatedDeltaNetConfig {
            hidden_size: a.d_model,
            num_hidden_layers: a.layers,
            num_heads: a.heads,
            head_dim: a.head_dim.unwrap_or(a.d_model.checked_div(a.heads).unwrap_or(0)),
            num_v_heads: a.v_heads,
            expand_v: a.expand_v,
            intermediate_size: a.intermediate_size,
            use_short_conv: !a.no_short_conv,
            use_gate: !a.no_output_gate,
            tie_word_embeddings: a.tie_embeddings,
            initializer_range: a.init_std,
            vocab_size: vocab,
            max_position_embeddings: a.seq_len,
            attn,
            ..GatedDeltaNetConfig::default()
        }
        .into(),
    })
}

fn train_config(a: &Args, text: Option<TextTask>) -> TrainConfig {
    TrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        decay_steps: (a.decay_steps > 0).then_some(a.decay_steps),
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        clip: a.clip,
        seed: a.seed,
        data_seed: a.data_seed,
        eval_examples: a.eval_examples,
        task: Mqar { vocab: a.vocab.unwrap_or(DEFAULT_VOCAB), seq_len: a.seq_len, num_kv_pairs: a.kv_pairs, ..Mqar::default() },
        text,
    }
}

/// Tokenises --data (or reuses its token file) and fixes the windows and the split.
fn prepare_text(a: &Args, out: &Path, src: &Path) -> Result<TextTask> {
    let tok = CorpusTokenizer::load(a.tokenizer.as_deref())?;
    let cache = a.data_cache.clone().unwrap_or_else(|| out.join("data"));
    let t0 = Instant::now();
    let p = text::prepare(src, &tok, &cache).with_context(|| format!("preparing --data {}", src.display()))?;
    let h = p.file.header();
    if p.reused {
        eprintln!("data: {} tokens of {} ({}), reusing {}", h.count, p.sources.root.display(), tok.describe(), p.file.path().display());
    } else {
        eprintln!(
            "data: {} -> {} tokens ({}) from {} text files, {:.1} MB ({} skipped as binary) in {:.1} s: {}",
            p.sources.root.display(),
            h.count,
            tok.describe(),
            p.tokenised,
            p.sources.bytes as f64 / 1e6,
            p.skipped,
            t0.elapsed().as_secs_f64(),
            p.file.path().display()
        );
    }
    Ok(TextTask::new(&p, &tok, a.seq_len, a.val_fraction)?)
}

/// With --resume, --data and --tokenizer may be repeated but must name the run's corpus.
fn check_resumed_text(a: &Args, out: &Path, tr: &Trainer) -> Result<()> {
    let Some(t) = &tr.cfg.text else {
        if a.data.is_some() {
            bail!("{} is an MQAR run; --data cannot be added on --resume (start a new run with another --out)", out.display());
        }
        return Ok(());
    };
    eprintln!("data: {} tokens of {} from {}", t.count, t.source.display(), t.tokens.display());
    if let Some(d) = &a.data {
        let d = std::fs::canonicalize(d).with_context(|| format!("--data {}", d.display()))?;
        if d != t.source {
            bail!("--data {} differs from the run's corpus {}; leave --data out to resume", d.display(), t.source.display());
        }
    }
    if let Some(p) = &a.tokenizer {
        let id = format!("{:016x}", text::tokenizer_file_id(p)?);
        if id != t.tokenizer_id {
            bail!("--tokenizer {} (id {id}) is not the tokenizer the run's tokens were made with (id {})", p.display(), t.tokenizer_id);
        }
    }
    Ok(())
}

/// Appends one JSON object as a line (rank 0 alone has the file).
fn log_json(f: Option<&mut std::fs::File>, v: serde_json::Value) -> Result<()> {
    match f {
        Some(f) => writeln!(f, "{v}").context("writing metrics"),
        None => Ok(()),
    }
}

fn world_of(job: Option<&crate::launch::Job>) -> usize {
    job.map_or(1, |j| j.world)
}

pub(crate) fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Moves the trainer's math to GPU 0, or with a data-parallel `job` to GPU LOCAL_RANK as one
/// rank of it (NCCL communicator, this rank's slice of every batch).
#[cfg(feature = "cuda")]
fn on_cuda(tr: Trainer, job: Option<&crate::launch::Job>) -> Result<Trainer> {
    let Some(job) = job else {
        let cuda = gla_cuda::Cuda::new().context("opening the GPU")?;
        return Ok(tr.with_engine(|model, opt, b, t| {
            let gpu = gla_model::gpu::GpuModel::for_training(cuda, model, opt)?;
            Ok(Box::new(gla_model::DeviceEngine::new(gpu, model, b, t)?) as Box<dyn gla_model::Engine>)
        })?);
    };
    let env = &job.env;
    let shard = gla_model::Shard::new(env.rank, env.world)?;
    // every rank refuses an indivisible batch the same way, before any waits for the others
    shard.local_batch(tr.cfg.batch_size)?;
    let timeout = gla_cuda::dist::timeout_from_env()?;
    let gpu = env.gpu_ordinal()?;
    let cuda = gla_cuda::Cuda::with_ordinal(gpu).with_context(|| format!("opening GPU {gpu} (LOCAL_RANK {})", env.local_rank))?;
    Ok(tr.with_sharded_engine(shard, |model, opt, b, t| {
        let comm = gla_cuda::dist::Comm::init(&cuda, env, timeout)?;
        let mut gpu = gla_model::gpu::GpuModel::for_training(cuda, model, opt)?;
        gpu.attach_comm(comm)?;
        Ok(Box::new(gla_model::DeviceEngine::new(gpu, model, b, t)?) as Box<dyn gla_model::Engine>)
    })?)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_: Trainer, _: Option<&crate::launch::Job>) -> Result<Trainer> {
    bail!("this gla was built without the `cuda` feature: cargo build --release -p gla-cli --features cuda")
}

/// A flag given with --resume that differs from the run's saved settings: its text, and whether
/// --override-settings may apply it.
struct Conflict {
    text: String,
    overridable: bool,
}

/// The config key a model flag sets in `arch`'s config, and whether the flag is its negation.
fn flag_key(id: &str, arch: Arch) -> Option<(&'static str, bool)> {
    Some(match id {
        "d_model" => ("hidden_size", false),
        "layers" => ("num_hidden_layers", false),
        "heads" => ("num_heads", false),
        "expand_k" => ("expand_k", false),
        "expand_v" => ("expand_v", false),
        "head_dim" => ("head_dim", false),
        "v_heads" => ("num_v_heads", false),
        "clamp_min" => ("clamp_min", false),
        "init_std" => ("initializer_range", false),
        "tie_embeddings" => ("tie_word_embeddings", false),
        "no_short_conv" => ("use_short_conv", true),
        "attn_layers" | "attn_heads" | "attn_kv_heads" | "attn_window" => ("attn", false),
        "no_output_gate" if arch == Arch::Gla => ("use_output_gate", true),
        "no_output_gate" => ("use_gate", true),
        _ => return None,
    })
}

/// The given flags that differ from the saved run (`config`, `cfg`); flags that only steer this
/// invocation are never conflicts.
fn resume_conflicts(a: &Args, config: &ModelConfig, cfg: &TrainConfig) -> Result<Vec<Conflict>> {
    let dims = config.dims()?;
    let arch = Arch::of(config.model_type()).context("the run's model_type")?;
    let mut out = Vec::new();
    let mut push = |flag: &str, given: String, saved: String, overridable: bool| {
        if given != saved {
            out.push(Conflict { text: format!("--{flag} {given} (the run has {saved})"), overridable });
        }
    };
    // the model flags, as the keys they set in the run's family's config
    let json = |c: &ModelConfig| -> Result<serde_json::Value> { Ok(serde_json::from_str(&c.to_json())?) };
    let saved = json(config)?;
    let mine = match a.config {
        None if a.given.iter().any(|id| flag_key(id, arch).is_some()) => Some(json(&model_config(a, arch, None)?)?),
        _ => None,
    };
    for id in &a.given {
        let s = |v: &dyn std::fmt::Display| v.to_string();
        if let (Some((key, negated)), Some(mine)) = (flag_key(id, arch), &mine) {
            let show = |v: Option<&serde_json::Value>| match (v, negated) {
                (Some(serde_json::Value::Bool(b)), true) => (!b).to_string(),
                (Some(v), _) => v.to_string(),
                (None, _) => "null".into(),
            };
            push(&id.replace('_', "-"), show(mine.get(key)), show(saved.get(key)), false);
            continue;
        }
        match id.as_str() {
            "arch" => push("arch", a.arch.model_type().into(), config.model_type().into(), false),
            "intermediate_size" => push("intermediate-size", s(&a.intermediate_size.unwrap_or(0)), s(&dims.intermediate), false),
            "vocab" => push("vocab", s(&a.vocab.unwrap_or(0)), s(&dims.vocab), false),
            "config" => {
                let p = a.config.as_deref().unwrap_or(Path::new(""));
                let mut given = ModelConfig::from_json(&gla_model::limits::read_text(p)?)?;
                let mut saved = config.clone();
                // the keys this crate adds when it writes a config are no setting
                for c in [&mut given, &mut saved] {
                    for k in ["architectures", "dtype", "torch_dtype"] {
                        c.extra_mut().remove(k);
                    }
                }
                if given != saved {
                    push("config", p.display().to_string(), "another model config".into(), false);
                }
            }
            "seed" => push("seed", s(&a.seed), s(&cfg.seed), false),
            "seq_len" => push("seq-len", s(&a.seq_len), s(&cfg.seq_len()), false),
            "kv_pairs" => push("kv-pairs", s(&a.kv_pairs), s(&cfg.task.num_kv_pairs), false),
            "val_fraction" if cfg.text.is_some() => push("val-fraction", s(&a.val_fraction), "a fixed split".into(), false),
            "batch_size" => push("batch-size", s(&a.batch_size), s(&cfg.batch_size), true),
            "grad_accum" => push("grad-accum", s(&a.grad_accum), s(&cfg.grad_accum), true),
            "lr" => push("lr", s(&a.lr), s(&cfg.lr), true),
            "min_lr" => push("min-lr", s(&a.min_lr), s(&cfg.min_lr), true),
            "warmup" => push("warmup", s(&a.warmup), s(&cfg.warmup), true),
            "decay_steps" => push("decay-steps", s(&a.decay_steps), s(&cfg.decay_steps.unwrap_or(0)), true),
            "weight_decay" => push("weight-decay", s(&a.weight_decay), s(&cfg.adamw.weight_decay), true),
            "clip" => push("clip", s(&a.clip), s(&cfg.clip), true),
            "data_seed" => push("data-seed", s(&a.data_seed), s(&cfg.data_seed), true),
            "eval_examples" => push("eval-examples", s(&a.eval_examples), s(&cfg.eval_examples), true),
            _ => {}
        }
    }
    Ok(out)
}

/// Resumes the run in `out`: its saved settings, the step target included, unless --steps is
/// given; conflicting flags refused or, with --override-settings, applied where they may be.
fn resume(a: &Args, out: &Path) -> Result<Trainer> {
    let (config, st) = Trainer::saved(out).with_context(|| format!("resuming from {}", out.display()))?;
    let conflicts = resume_conflicts(a, &config, &st.train)?;
    let fixed: Vec<&str> = conflicts.iter().filter(|c| !c.overridable).map(|c| c.text.as_str()).collect();
    if !fixed.is_empty() {
        bail!("--resume: these flags differ from the run's model or data, which cannot change: {}", fixed.join(", "));
    }
    if !conflicts.is_empty() && !a.override_settings {
        let list: Vec<&str> = conflicts.iter().map(|c| c.text.as_str()).collect();
        bail!("--resume: these flags differ from the run's saved settings: {}; pass --override-settings to apply them", list.join(", "));
    }
    let given = |id: &str| a.given.iter().any(|g| g == id);
    let apply = a.override_settings;
    Trainer::resume_with(out, |c| {
        if given("steps") {
            c.steps = a.steps;
        }
        if apply {
            let t = train_config(a, None);
            for id in &a.given {
                match id.as_str() {
                    "batch_size" => c.batch_size = t.batch_size,
                    "grad_accum" => c.grad_accum = t.grad_accum,
                    "lr" => c.lr = t.lr,
                    "min_lr" => c.min_lr = t.min_lr,
                    "warmup" => c.warmup = t.warmup,
                    "decay_steps" => c.decay_steps = t.decay_steps,
                    "weight_decay" => c.adamw.weight_decay = t.adamw.weight_decay,
                    "clip" => c.clip = t.clip,
                    "data_seed" => c.data_seed = t.data_seed,
                    "eval_examples" => c.eval_examples = t.eval_examples,
                    _ => {}
                }
            }
        }
    })
    .with_context(|| format!("resuming from {}", out.display()))
}

/// Keeps the lines of `metrics.jsonl` up to `step` (those a resumed run will not write again)
/// and drops the rest: lines of steps after the checkpoint, torn lines of a kill. Without a
/// checkpoint (`step` 0) the file starts empty.
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match gla_model::limits::read_text(path) {
        Ok(t) => t,
        Err(gla_model::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut keep = String::new();
    for line in text.lines() {
        let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
        if v.as_ref().and_then(|v| v.get("step")).and_then(serde_json::Value::as_u64).is_some_and(|s| s <= step) {
            keep.push_str(line);
            keep.push('\n');
        }
    }
    gla_model::checkpoint::write_atomic(path, keep.as_bytes())?;
    Ok(())
}

/// An exclusive lock on a run directory, held while the run lives (released by the kernel when
/// the process ends, however it ends).
pub(crate) struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    pub(crate) fn take(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; no memory is passed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    bail!(
                        "{} is in use by another gla train (it holds {}); wait for it or choose another --out",
                        out.display(),
                        path.display()
                    );
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(Self { _file: file })
    }
}

pub fn run(a: &Args) -> Result<bool> {
    // the CPU path ignores a torchrun environment, as it always did
    let on_gpu = a.device == crate::Device::Cuda || a.gpus.is_some();
    let job = if on_gpu { crate::launch::job()? } else { None };
    crate::launch::check_world(a.gpus, job.as_ref())?;
    if let (Some(n), None) = (a.gpus, &job) {
        crate::launch::local(n, &[])?;
        return Ok(true);
    }
    let lead = crate::launch::Job::lead(job.as_ref());
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(if a.data.is_some() { "runs/text" } else { "runs/mqar" }));
    // rank 0 owns the run directory; the other ranks of a job write nothing there
    let _lock = if lead { Some(RunLock::take(&out)?) } else { None };
    if lead {
        gla_model::checkpoint::remove_stale_temps(&out)?;
    }
    let mut tr = if a.resume {
        let tr = resume(a, &out)?;
        if lead {
            eprintln!(
                "resuming {} at step {} of {} (model and training settings from the checkpoint)",
                out.display(),
                tr.step_count(),
                tr.cfg.steps
            );
        }
        check_resumed_text(a, &out, &tr)?;
        tr
    } else {
        if out.join(gla_model::checkpoint::LATEST_FILE).exists() {
            bail!("{} already holds a run; pass --resume to continue it or choose another --out", out.display());
        }
        let text = a.data.as_deref().map(|d| prepare_text(a, &out, d)).transpose()?;
        let vocab = text.as_ref().map(|t| t.vocab);
        Trainer::new(model_config(a, a.arch, vocab)?, train_config(a, text))?
    };
    if on_gpu {
        tr = on_cuda(tr, job.as_ref())?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = match lead {
        true => {
            truncate_metrics(&metrics_path, tr.step_count()).with_context(|| format!("rewriting {}", metrics_path.display()))?;
            Some(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&metrics_path)
                    .with_context(|| format!("opening {}", metrics_path.display()))?,
            )
        }
        false => None,
    };
    // a signal stops the run after the current step, with a checkpoint; the ranks of a
    // data-parallel job agree after every step (one tiny all-reduce) so that all of them stop at
    // the same step, whichever got the signal
    let stop = crate::signals::Stop::install().context("installing the signal handlers")?;
    let multi = world_of(job.as_ref()) > 1;
    let mut stopped = None;
    let d = &tr.model.dims;
    let task = tr.cfg.task;
    let data = match &tr.cfg.text {
        Some(t) => {
            format!("text {} tokens (train {}, val {}) T={} vocab={}", t.count, t.count - t.val_tokens, t.val_tokens, t.seq_len, t.vocab)
        }
        None => format!("MQAR T={} kv={} vocab={}", task.seq_len, task.num_kv_pairs, task.vocab),
    };
    let world = job.as_ref().map_or(1, |j| j.world);
    let gpus = if world > 1 { format!(" over {world} GPUs") } else { String::new() };
    if lead {
        eprintln!(
            "gla train: {} D={} L={} I={} {:.2}M params | {data} | batch {}x{}{gpus} | {}",
            gla_model::config::describe_mixers(d),
            d.d,
            d.layers,
            d.intermediate,
            tr.model.num_params() as f64 / 1e6,
            tr.cfg.batch_size,
            tr.cfg.grad_accum,
            match on_gpu {
                false => format!("cpu, {} rayon threads", rayon::current_num_threads()),
                true => tr.device_name(),
            }
        );
    }
    let is_text = tr.cfg.text.is_some();
    // next-token accuracy of a text LM is no recall score: only MQAR stops early
    let stop_at_acc = if is_text { f64::INFINITY } else { a.stop_at_acc };
    let tty = lead && std::io::stderr().is_terminal();
    let start = Instant::now();
    let start_step = tr.step_count();
    let total = tr.cfg.steps;
    let mut last_ckpt: Option<PathBuf> = None;
    let mut reached = None;
    let mut last_eval = tr.evals.last().copied();
    while tr.step_count() < total {
        let s = tr.step()?;
        let el = start.elapsed().as_secs_f64();
        let done = (s.step - start_step) as f64;
        let tok_s = done * tr.tokens_per_step() as f64 / el;
        let eta = el / done * (total - s.step) as f64;
        log_json(
            metrics.as_mut(),
            serde_json::json!({"kind": "train", "step": s.step, "loss": s.loss, "acc": s.acc, "grad_norm": s.grad_norm, "lr": s.lr, "tokens_per_s": tok_s, "elapsed_s": el}),
        )?;
        let eval_now = (a.eval_every > 0 && s.step % a.eval_every == 0) || s.step == total;
        if eval_now {
            let e = tr.evaluate()?;
            log_json(
                metrics.as_mut(),
                serde_json::json!({"kind": "eval", "step": e.step, "loss": e.loss, "ppl": e.ppl, "acc": e.acc, "elapsed_s": start.elapsed().as_secs_f64()}),
            )?;
            last_eval = Some(e);
            if tty {
                eprint!("\r\x1b[2K");
            }
            if lead {
                eprintln!(
                    "step {:>5}/{total}  eval loss {:.4}  ppl {:.3}  {} acc {:.2}%  ({})",
                    e.step,
                    e.loss,
                    e.ppl,
                    if is_text { "next-token" } else { "query" },
                    100.0 * e.acc,
                    fmt_secs(start.elapsed().as_secs_f64())
                );
            }
            if e.acc >= stop_at_acc {
                reached = Some(e);
            }
        }
        if tty {
            let acc = match last_eval {
                Some(e) if is_text => format!("  eval ppl {:.3}", e.ppl),
                Some(e) => format!("  eval acc {:.1}%", 100.0 * e.acc),
                None => String::new(),
            };
            eprint!("\r\x1b[2Kstep {:>5}/{total}  loss {:.4}{acc}  {:.0} tok/s  ETA {}", s.step, s.loss, tok_s, fmt_secs(eta));
            let _ = std::io::stderr().flush();
        }
        let save_now = (a.save_every > 0 && s.step % a.save_every == 0) || s.step == total || reached.is_some();
        if save_now && lead {
            last_ckpt = Some(tr.save(&out, a.keep)?);
        }
        if let Some(e) = reached {
            if tty {
                eprint!("\r\x1b[2K");
            }
            if lead {
                eprintln!("reached {:.2}% query accuracy (--stop-at-acc {}) at step {}", 100.0 * e.acc, a.stop_at_acc, e.step);
            }
            break;
        }
        let local = stop.requested();
        let any = if multi { tr.any_rank(local.is_some())? } else { local.is_some() };
        if any {
            stopped = Some(local.unwrap_or("a signal to another rank"));
            break;
        }
    }
    if let Some(sig) = stopped {
        if tty {
            eprint!("\r\x1b[2K");
        }
        if lead {
            let saved_now = last_ckpt.as_ref().is_some_and(|p| p.ends_with(format!("checkpoint-{}", tr.step_count())));
            if !saved_now {
                last_ckpt = Some(tr.save(&out, a.keep)?);
            }
            eprintln!(
                "{sig}: stopped after step {} of {total}; checkpoint {} written. Continue with: gla train --out {} --resume",
                tr.step_count(),
                last_ckpt.as_ref().map_or_else(String::new, |p| p.display().to_string()),
                out.display()
            );
        }
        std::process::exit(stop.exit_status());
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    if !lead {
        // rank 0 writes the checkpoint, the plot and the summary
        return Ok(true);
    }
    if last_ckpt.is_none() && tr.step_count() > start_step {
        last_ckpt = Some(tr.save(&out, a.keep)?);
    }
    let wall = start.elapsed().as_secs_f64();
    let png = out.join("loss_curve.png");
    let acc_label = if is_text { "eval token acc" } else { "eval query acc" };
    plot::loss_curve(&png, &tr.losses, &tr.evals, acc_label).with_context(|| format!("writing {}", png.display()))?;
    let final_acc = last_eval.map_or(f64::NAN, |e| e.acc);
    let trained = tr.step_count() - start_step;
    let tok_s = trained as f64 * tr.tokens_per_step() as f64 / wall;
    if is_text {
        let (loss, ppl) = last_eval.map_or((f64::NAN, f64::NAN), |e| (e.loss, e.ppl));
        println!(
            "trained {trained} steps in {} ({wall:.1} s, {tok_s:.0} tokens/s); final eval loss {loss:.4}, perplexity {ppl:.3}, next-token accuracy {:.2}%",
            fmt_secs(wall),
            100.0 * final_acc
        );
    } else {
        println!("trained {trained} steps in {} ({:.1} s); final eval query accuracy {:.2}%", fmt_secs(wall), wall, 100.0 * final_acc);
    }
    match &last_ckpt {
        Some(p) => println!("checkpoint (fla / Hugging Face format + training state): {}", p.display()),
        None => println!("no new checkpoint (nothing to train: already at step {})", tr.step_count()),
    }
    println!("metrics: {}", metrics_path.display());
    println!("loss curve: {}", png.display());
    Ok(true)
}

/// The loss-curve PNG: plotters draws the chart into an RGB buffer, with its text in the DejaVu
/// Sans subset embedded below (no system fonts needed), and the png crate encodes it.
pub(crate) mod plot {
    use std::path::Path;

    use anyhow::{anyhow, Context, Result};
    use gla_model::EvalStats;
    use plotters::coord::Shift;
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    const W: u32 = 800;
    const H: u32 = 480;
    /// The family name the embedded font is registered under.
    const FAMILY: &str = "sans-serif";
    /// Printable ASCII of DejaVu Sans (assets/LICENSE-DejaVu.txt).
    const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
    const TRAIN: RGBColor = RGBColor(30, 80, 200);
    const EVAL: RGBColor = RGBColor(200, 40, 40);
    const ACC: RGBColor = RGBColor(20, 140, 60);

    /// The y range of the log-scaled loss axis: every finite positive loss, with a margin.
    fn loss_range(losses: &[f64], evals: &[EvalStats]) -> (f64, f64) {
        let finite = losses.iter().chain(evals.iter().map(|e| &e.loss)).copied().filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = finite.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        match (lo.is_finite(), hi > lo) {
            (true, true) => (lo / 1.1, hi * 1.1),
            (true, false) => (lo / 2.0, lo * 2.0),
            _ => (0.1, 10.0),
        }
    }

    fn draw(root: &DrawingArea<BitMapBackend<'_>, Shift>, losses: &[f64], evals: &[EvalStats], acc_label: &str) -> Result<()> {
        root.fill(&WHITE)?;
        let last_step = evals.iter().map(|e| e.step as f64).fold(losses.len() as f64, f64::max).max(2.0);
        // the loss axis is ln(loss), labelled with the loss: plotters' log scale labels nothing
        // below 1 when the range spans less than a decade
        let (lo, hi) = loss_range(losses, evals);
        let mut chart = ChartBuilder::on(root)
            .caption("gla train", (FAMILY, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .right_y_label_area_size(64)
            .build_cartesian_2d(1.0..last_step, lo.ln()..hi.ln())?
            .set_secondary_coord(1.0..last_step, 0.0..100.0f64);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (log scale)")
            .y_labels(10)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .y_label_formatter(&|v| match v.exp() {
                v if v >= 100.0 => format!("{v:.0}"),
                v if v >= 1.0 => format!("{v:.2}"),
                v => format!("{v:.3}"),
            })
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc(format!("{acc_label} (%)"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .y_label_formatter(&|v| format!("{v:.0}%"))
            .draw()?;
        // one line per run of finite losses: a NaN step leaves a gap
        let mut first = true;
        for run in losses.iter().enumerate().collect::<Vec<_>>().split(|(_, v)| !v.is_finite() || **v <= 0.0) {
            if run.is_empty() {
                continue;
            }
            let s = chart.draw_series(LineSeries::new(run.iter().map(|&(i, &v)| (i as f64 + 1.0, v.ln())), TRAIN.stroke_width(1)))?;
            if std::mem::take(&mut first) {
                s.label("train loss").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], TRAIN.stroke_width(2)));
            }
        }
        if !evals.is_empty() {
            let ok = evals.iter().filter(|e| e.loss.is_finite() && e.loss > 0.0);
            chart
                .draw_series(ok.map(|e| Circle::new((e.step as f64, e.loss.ln()), 3, EVAL.filled())))?
                .label("eval loss")
                .legend(|(x, y)| Circle::new((x + 9, y), 3, EVAL.filled()));
            chart
                .draw_secondary_series(
                    LineSeries::new(evals.iter().map(|e| (e.step as f64, 100.0 * e.acc)), ACC.stroke_width(2)).point_size(2),
                )?
                .label(acc_label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], ACC.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleLeft)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// PNG bytes of an RGB image of `W` x `H`.
    fn encode(rgb: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, W, H);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().context("PNG header")?;
        w.write_image_data(rgb).context("PNG data")?;
        w.finish().context("PNG end")?;
        Ok(out)
    }

    /// Train loss per step (blue, log scale, left axis), eval loss (red dots) and eval accuracy
    /// (green, 0-100% on the right axis, labelled `acc_label`) against the step.
    pub fn loss_curve(path: &Path, losses: &[f64], evals: &[EvalStats], acc_label: &str) -> Result<()> {
        register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| anyhow!("the embedded font does not parse"))?;
        let mut rgb = vec![255u8; (W * H * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (W, H)).into_drawing_area();
            draw(&root, losses, evals, acc_label).context("drawing the loss curve")?;
        }
        gla_model::checkpoint::write_atomic(path, &encode(&rgb)?)?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_picture_is_a_png_with_labels() {
            let dir = std::env::temp_dir().join(format!("gla-plot-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("curve.png");
            let losses: Vec<f64> = (0..300).map(|i| if i == 40 { f64::NAN } else { 5.0 * (-(i as f64) / 80.0).exp() + 0.3 }).collect();
            let evals: Vec<EvalStats> = (1..=3)
                .map(|k| EvalStats { step: 100 * k, loss: losses[100 * k as usize - 1] * 1.1, ppl: 0.0, acc: 0.3 * k as f64 })
                .collect();
            loss_curve(&path, &losses, &evals, "eval query acc").unwrap();
            let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
            let mut r = dec.read_info().unwrap();
            let mut px = vec![0; r.output_buffer_size().unwrap()];
            let info = r.next_frame(&mut px).unwrap();
            assert_eq!((info.width, info.height, info.color_type), (W, H, png::ColorType::Rgb));
            // the left label column holds the tick labels' dark glyph pixels
            let dark = (0..H as usize).flat_map(|y| (0..50).map(move |x| (y * W as usize + x) * 3)).filter(|&i| px[i] < 128).count();
            assert!(dark > 100, "{dark} dark pixels in the label column");
            if let Ok(keep) = std::env::var("GLA_KEEP_PLOT") {
                std::fs::copy(&path, keep).unwrap();
            }
            // with no loss at all it still draws
            loss_curve(&path, &[], &[], "acc").unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// `gla train`'s flags as a command of their own (the flag table `--settings` checks keys against).
#[derive(clap::Parser)]
struct TrainCli {
    #[command(flatten)]
    a: Args,
}

/// `gla train --settings FILE.json`: the file's keys become flags (inserted after the command
/// line's own, for the keys the command line does not set), so clap parses and checks them as
/// if typed. `argv` is the whole command line (program name first); anything other than a
/// `gla train` with `--settings` comes back unchanged.
///
/// # Errors
/// An unreadable file, JSON that is not an object of scalars, a key that is no flag of
/// `gla train`, `--settings` without a file.
pub fn expand_settings(argv: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    use clap::CommandFactory;
    if argv.get(1).and_then(|a| a.to_str()) != Some("train") {
        return Ok(argv);
    }
    let args: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let path = match args.iter().position(|a| a == "--settings" || a.starts_with("--settings=")) {
        None => return Ok(argv),
        Some(i) => match args[i].strip_prefix("--settings=") {
            Some(p) => p.to_string(),
            None => args.get(i + 1).cloned().context("--settings needs a file (a JSON object of gla train flags)")?,
        },
    };
    let text = gla_model::limits::read_text(Path::new(&path)).with_context(|| format!("--settings {path}"))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--settings {path}: not JSON"))?;
    let obj = json.as_object().with_context(|| format!("--settings {path}: expected a JSON object of gla train flags"))?;
    // the flags clap knows, with whether they take a value
    let cmd = TrainCli::command();
    let flags: Vec<(String, bool)> =
        cmd.get_arguments().filter_map(|a| a.get_long().map(|l| (l.to_string(), a.get_action().takes_values()))).collect();
    let given = |flag: &str| args.iter().skip(2).any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
    let mut out = argv;
    for (key, value) in obj {
        let flag = key.replace('_', "-");
        let Some(&(_, takes_value)) = flags.iter().find(|(l, _)| *l == flag) else {
            bail!("--settings {path}: `{key}` is not a flag of gla train (see gla train --help)");
        };
        if flag == "settings" {
            bail!("--settings {path}: a settings file cannot name another one");
        }
        if given(&flag) {
            continue;
        }
        match (value, takes_value) {
            (serde_json::Value::Bool(true), false) => out.push(format!("--{flag}").into()),
            (serde_json::Value::Bool(false), false) => {}
            (serde_json::Value::String(v), true) => out.push(format!("--{flag}={v}").into()),
            (serde_json::Value::Number(v), true) => out.push(format!("--{flag}={v}").into()),
            (v, true) => bail!("--settings {path}: `{key}` needs a string or a number, found {v}"),
            (v, false) => bail!("--settings {path}: `{key}` is a switch: true or false, found {v}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn argv(a: &[&str]) -> Vec<std::ffi::OsString> {
        a.iter().map(Into::into).collect()
    }

    fn parse(v: Vec<std::ffi::OsString>) -> Args {
        // drop "train": the wrapper parses the subcommand's own flags
        let mut v = v;
        v.remove(1);
        TrainCli::try_parse_from(v).unwrap().a
    }

    #[test]
    fn settings_file_fills_the_flags_not_given() {
        let dir = std::env::temp_dir().join(format!("gla-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.json");
        std::fs::write(&f, r#"{"lr": 0.001, "steps": 50, "d_model": 32, "tie-embeddings": true, "no-short-conv": false, "out": "runs/x"}"#)
            .unwrap();
        let fs = f.to_str().unwrap();
        let a = parse(expand_settings(argv(&["gla", "train", "--settings", fs, "--steps", "7"])).unwrap());
        assert_eq!(a.steps, 7, "the command line wins");
        assert_eq!(a.lr, 0.001);
        assert_eq!(a.d_model, 32);
        assert!(a.tie_embeddings && !a.no_short_conv);
        assert_eq!(a.out.as_deref(), Some(Path::new("runs/x")));
        // other commands and train without --settings pass through unchanged
        assert_eq!(expand_settings(argv(&["gla", "check"])).unwrap(), argv(&["gla", "check"]));
        assert_eq!(expand_settings(argv(&["gla", "train", "--lr", "1"])).unwrap(), argv(&["gla", "train", "--lr", "1"]));
        for (text, what) in [
            (r#"{"learning_rate": 1}"#, "not a flag"),
            (r#"{"tie-embeddings": 1}"#, "is a switch"),
            (r#"{"lr": [1]}"#, "needs a string or a number"),
            (r#"[1]"#, "expected a JSON object"),
            (r#"{"settings": "x.json"}"#, "cannot name another"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = expand_settings(argv(&["gla", "train", "--settings", fs])).unwrap_err().to_string();
            assert!(e.contains(what), "{text}: {e}");
        }
        assert!(expand_settings(argv(&["gla", "train", "--settings"])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
