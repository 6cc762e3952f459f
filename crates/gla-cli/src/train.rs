//! `gla train`: trains a GLA language model on the CPU (f32) on the MQAR recall task, or as a
//! causal LM on a text file or folder (`--data`), with a progress line, evaluations, JSON-lines
//! metrics, checkpoints in fla's Hugging Face format, `--resume`, and a loss-curve PNG at the end.
//! `--gpus N` trains data parallel over NCCL (crate::launch): rank 0 alone writes checkpoints,
//! metrics, the progress line and the plot.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use gla_model::optim::AdamWConfig;
use gla_model::text::{self, CorpusTokenizer, TextTask};
use gla_model::{GlaConfig, Mqar, TrainConfig, Trainer};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directory: checkpoints, metrics.jsonl, loss_curve.png [default: runs/mqar; with
    /// --data: runs/text].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in --out, with the settings saved there
    /// (only --steps and --device may be changed).
    #[arg(long)]
    resume: bool,
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
    /// Model config (fla's config.json); replaces the model flags below.
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Folder of the --data token file (default: <out>/data).
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
    /// Key dim of all heads = D * expand_k (fla's expand_k).
    #[arg(long, default_value_t = 1.0)]
    expand_k: f64,
    /// Value dim of all heads = D * expand_v (fla's expand_v).
    #[arg(long, default_value_t = 1.0)]
    expand_v: f64,
    /// MLP width (default: fla's rule from hidden_ratio 4).
    #[arg(long)]
    intermediate_size: Option<usize>,
    /// Without the swish output gate g_proj (fla's use_output_gate = false).
    #[arg(long)]
    no_output_gate: bool,
    /// Lower clamp of the log-gate (fla's clamp_min): the per-step decay stays >= exp(clamp_min).
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
    /// 200-step warmup to 3e-3, cosine over 2000 steps) took MQAR off its plateau by step 400-600
    /// for every (init, data) seed pair we tried (tools/mqar_sweep.sh).
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

/// The model config from --config or the flags; `data_vocab`: the tokenizer's vocabulary with
/// --data (the model's default, and its floor).
fn model_config(a: &Args, data_vocab: Option<usize>) -> Result<GlaConfig> {
    if let Some(p) = &a.config {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(GlaConfig::from_json(&text)?);
    }
    let vocab = match (a.vocab, data_vocab) {
        (Some(v), Some(d)) if v < d => bail!("--vocab {v} is smaller than the tokenizer's vocabulary of {d}"),
        (v, d) => v.or(d).unwrap_or(DEFAULT_VOCAB),
    };
    Ok(GlaConfig {
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
        ..GlaConfig::default()
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

fn fmt_secs(s: f64) -> String {
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
    let dev = |e: gla_cuda::Error| gla_model::Error::Device(e.to_string());
    let Some(job) = job else {
        let cuda = gla_cuda::Cuda::new().context("opening the GPU")?;
        return Ok(tr.with_engine(|model, opt, b, t| {
            let e = gla_cuda::GpuEngine::new(cuda, model, opt, b, t).map_err(dev)?;
            Ok(Box::new(e) as Box<dyn gla_model::Engine>)
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
        let comm = gla_cuda::dist::Comm::init(&cuda, env, timeout).map_err(dev)?;
        let e = gla_cuda::GpuEngine::new(cuda, model, opt, b, t).and_then(|e| e.with_comm(comm)).map_err(dev)?;
        Ok(Box::new(e) as Box<dyn gla_model::Engine>)
    })?)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_: Trainer, _: Option<&crate::launch::Job>) -> Result<Trainer> {
    bail!("this gla was built without the `cuda` feature: cargo build --release -p gla-cli --features cuda")
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
    let mut tr = if a.resume {
        let tr = Trainer::resume(&out, Some(a.steps)).with_context(|| format!("resuming from {}", out.display()))?;
        if lead {
            eprintln!(
                "resuming {} at step {} (model and training settings from the checkpoint; --steps {})",
                out.display(),
                tr.step_count(),
                a.steps
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
        Trainer::new(model_config(a, vocab)?, train_config(a, text))?
    };
    if on_gpu {
        tr = on_cuda(tr, job.as_ref())?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = match lead {
        true => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("opening {}", metrics_path.display()))?,
        ),
        false => None,
    };
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
            "gla train: GLA D={} L={} H={} (K={}, V={}, I={}, short conv {}) {:.2}M params | {data} | batch {}x{}{gpus} | {}",
            d.d,
            d.layers,
            d.heads,
            d.head_k,
            d.head_v,
            d.intermediate,
            if d.conv > 0 { "on" } else { "off" },
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

/// A loss-curve PNG without dependencies: a tiny PNG writer (stored deflate blocks) and a
/// 5x7 bitmap font for the axis labels.
mod plot {
    use super::*;
    use gla_model::EvalStats;

    const W: usize = 720;
    const H: usize = 420;
    const L: usize = 60; // plot area margins
    const R: usize = 60;
    const T: usize = 30;
    const B: usize = 40;

    struct Canvas {
        px: Vec<u8>, // RGB
    }

    impl Canvas {
        fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
            if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
                let i = (y as usize * W + x as usize) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
        fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
            let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
            let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
            let (mut x, mut y, mut err) = (x0, y0, dx + dy);
            loop {
                self.set(x, y, c);
                if x == x1 && y == y1 {
                    break;
                }
                let e2 = 2 * err;
                if e2 >= dy {
                    err += dy;
                    x += sx;
                }
                if e2 <= dx {
                    err += dx;
                    y += sy;
                }
            }
        }
        fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
            for (i, ch) in s.chars().enumerate() {
                let g = glyph(ch);
                for (row, bits) in g.iter().enumerate() {
                    for col in 0..5 {
                        if bits >> (4 - col) & 1 == 1 {
                            self.set(x + i as i64 * 6 + col, y + row as i64, c);
                        }
                    }
                }
            }
        }
    }

    /// 5x7 glyphs for the characters the labels use.
    fn glyph(c: char) -> [u8; 7] {
        match c {
            '0' => [14, 17, 19, 21, 25, 17, 14],
            '1' => [4, 12, 4, 4, 4, 4, 14],
            '2' => [14, 17, 1, 2, 4, 8, 31],
            '3' => [31, 2, 4, 2, 1, 17, 14],
            '4' => [2, 6, 10, 18, 31, 2, 2],
            '5' => [31, 16, 30, 1, 1, 17, 14],
            '6' => [6, 8, 16, 30, 17, 17, 14],
            '7' => [31, 1, 2, 4, 8, 8, 8],
            '8' => [14, 17, 17, 14, 17, 17, 14],
            '9' => [14, 17, 17, 15, 1, 2, 12],
            '.' => [0, 0, 0, 0, 0, 12, 12],
            '%' => [24, 25, 2, 4, 8, 19, 3],
            '-' => [0, 0, 0, 31, 0, 0, 0],
            'a' => [0, 0, 14, 1, 15, 17, 15],
            'c' => [0, 0, 14, 16, 16, 17, 14],
            'e' => [0, 0, 14, 17, 31, 16, 14],
            'i' => [4, 0, 12, 4, 4, 4, 14],
            'k' => [16, 16, 18, 20, 24, 20, 18],
            'l' => [12, 4, 4, 4, 4, 4, 14],
            'n' => [0, 0, 22, 25, 17, 17, 17],
            'o' => [0, 0, 14, 17, 17, 17, 14],
            'p' => [0, 0, 30, 17, 30, 16, 16],
            'r' => [0, 0, 22, 25, 16, 16, 16],
            's' => [0, 0, 14, 16, 14, 1, 30],
            't' => [8, 8, 28, 8, 8, 9, 6],
            'u' => [0, 0, 17, 17, 17, 19, 13],
            'v' => [0, 0, 17, 17, 17, 10, 4],
            'y' => [0, 0, 17, 17, 15, 1, 14],
            'q' => [0, 0, 13, 19, 15, 1, 1],
            '(' => [2, 4, 8, 8, 8, 4, 2],
            ')' => [8, 4, 2, 2, 2, 4, 8],
            ',' => [0, 0, 0, 0, 12, 4, 8],
            _ => [0; 7],
        }
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }

    /// PNG bytes of an RGB image: zlib stream of stored (uncompressed) deflate blocks.
    fn encode(px: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(H * (W * 3 + 1));
        for row in px.chunks_exact(W * 3) {
            raw.push(0); // filter: none
            raw.extend(row);
        }
        let mut z = vec![0x78, 0x01];
        let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
        for (i, b) in blocks.iter().enumerate() {
            z.push(u8::from(i + 1 == blocks.len()));
            z.extend((b.len() as u16).to_le_bytes());
            z.extend((!(b.len() as u16)).to_le_bytes());
            z.extend(*b);
        }
        let (mut s1, mut s2) = (1u32, 0u32);
        for &b in &raw {
            s1 = (s1 + b as u32) % 65_521;
            s2 = (s2 + s1) % 65_521;
        }
        z.extend(((s2 << 16) | s1).to_be_bytes());
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend((W as u32).to_be_bytes());
        ihdr.extend((H as u32).to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn label(v: f64) -> String {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 1.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    }

    /// Train loss per step (blue, log scale, left axis), eval loss (red dots) and eval accuracy
    /// (green, 0-100% on the right axis, labelled `acc_label`) against the step.
    pub fn loss_curve(path: &Path, losses: &[f64], evals: &[EvalStats], acc_label: &str) -> Result<()> {
        let mut c = Canvas { px: vec![255; W * H * 3] };
        let (pw, ph) = ((W - L - R) as f64, (H - T - B) as f64);
        let n = losses.len().max(2) as f64;
        let finite = losses.iter().chain(evals.iter().map(|e| &e.loss)).copied().filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = finite.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo.ln(), hi.ln()) } else { (-1.0, 1.0) };
        let xs = |step: f64| L as i64 + ((step - 1.0) / (n - 1.0) * pw) as i64;
        let ys = |v: f64| T as i64 + ((hi - v.max(1e-12).ln()) / (hi - lo) * ph) as i64;
        let ya = |acc: f64| T as i64 + ((1.0 - acc) * ph) as i64;
        let grid = [225, 225, 225];
        let ink = [40, 40, 40];
        for i in 0..=4 {
            let y = T as i64 + (i as f64 / 4.0 * ph) as i64;
            c.line((L as i64, y), ((W - R) as i64, y), grid);
            let v = (hi - (hi - lo) * i as f64 / 4.0).exp();
            c.text(4, y - 3, &label(v), [30, 80, 200]);
            c.text((W - R + 6) as i64, y - 3, &format!("{}%", 100 - 25 * i), [20, 140, 60]);
        }
        for i in 0..=5 {
            let x = L as i64 + (i as f64 / 5.0 * pw) as i64;
            c.line((x, T as i64), (x, (H - B) as i64), grid);
            let step = 1.0 + (n - 1.0) * i as f64 / 5.0;
            c.text(x - 9, (H - B + 8) as i64, &format!("{step:.0}"), ink);
        }
        c.line((L as i64, (H - B) as i64), ((W - R) as i64, (H - B) as i64), ink);
        c.line((L as i64, T as i64), (L as i64, (H - B) as i64), ink);
        c.text((W / 2 - 15) as i64, (H - 14) as i64, "step", ink);
        c.text(L as i64, 10, "train loss", [30, 80, 200]);
        c.text(L as i64 + 80, 10, "eval loss", [200, 40, 40]);
        c.text(L as i64 + 150, 10, acc_label, [20, 140, 60]);
        let mut prev = None;
        for (i, &v) in losses.iter().enumerate() {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (xs(i as f64 + 1.0), ys(v));
            if let Some(q) = prev {
                c.line(q, p, [30, 80, 200]);
            }
            prev = Some(p);
        }
        let mut prev = None;
        for e in evals {
            let p = (xs(e.step as f64), ya(e.acc));
            if let Some(q) = prev {
                c.line(q, p, [20, 140, 60]);
            }
            prev = Some(p);
            let q = (xs(e.step as f64), ys(e.loss));
            for (dx, dy) in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)] {
                c.set(q.0 + dx, q.1 + dy, [200, 40, 40]);
            }
        }
        gla_model::checkpoint::write_atomic(path, &encode(&c.px))?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn crc_and_png_header() {
            assert_eq!(super::crc32(b"IEND"), 0xAE42_6082);
            let png = super::encode(&vec![0u8; super::W * super::H * 3]);
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
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
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading --settings {path}"))?;
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
