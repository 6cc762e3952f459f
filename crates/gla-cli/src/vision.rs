//! `gla vision`: the ViG image classifier (hustvl's ViG, gla-model's `vig`) on the CPU or one GPU
//! (`--device cuda`, dispatched in vision_device.rs).
//! `train` on Fashion-MNIST (idx files, gzipped or not) or synthetic images, with the LM
//! trainer's progress line, JSON-lines metrics, atomic checkpoints (`checkpoint-<step>/`:
//! config.json + model.safetensors in hustvl's names, the AdamW moments, trainer_state.json;
//! `latest` names the newest), exact `--resume` and the loss/accuracy curve (loss_curve.png);
//! `classify` PNG or JPEG images (top-k classes with probabilities), a safetensors file of images
//! (logits out), or the test set (accuracy). `gla eval --model DIR` of a vision run reports the
//! test accuracy and loss ([`eval`]).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use gla_model::vig::data::{Augment, ImageSet};
use gla_model::vig::pth::{load_pth, load_safetensors};
use gla_model::vig::train::{evaluate, VigTrainConfig, VigTrainer};
use gla_model::vig::{VigConfig, VigModel};

use crate::train::{fmt_secs, plot, truncate_metrics, RunLock};
use crate::vision_device::{evaluate_on, gpu_recipe as gpu, logits_on, Trainer};
use crate::Device;

/// Where Debian's `dataset-fashion-mnist` installs the data.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// `--steps` of a new run.
const DEFAULT_STEPS: u64 = 13000;

/// `--ema` of a new CPU run.
const DEFAULT_EMA: f64 = 0.0;

/// `--shards` of a new CPU run: one per core of the 2-core machine the recipe is tuned on.
const DEFAULT_SHARDS: usize = 2;

/// Fashion-MNIST's classes, in label order.
const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The synthetic set's classes ([`ImageSet::synthetic`]).
const SYNTHETIC_CLASSES: [&str; 4] = ["horizontal stripes", "vertical stripes", "square", "diagonal"];

/// ImageNet-1k's class names in the ILSVRC-2012 label order (pytorch/hub's
/// imagenet_classes.txt), the names of a 1000-class head such as hustvl's checkpoints.
const IMAGENET_CLASSES: &str = include_str!("../assets/imagenet_classes.txt");

/// ImageNet's per-channel mean and std (timm's defaults, hustvl's evaluation transform).
const IMAGENET_NORM: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// The keys a trained run adds to its config.json (kept by `VigConfig::extra`): the class names
/// and the per-channel normalisation of its training images.
const CLASS_NAMES_KEY: &str = "class_names";
/// See [`CLASS_NAMES_KEY`].
const IMAGE_MEAN_KEY: &str = "image_mean";
/// See [`CLASS_NAMES_KEY`].
const IMAGE_STD_KEY: &str = "image_std";

/// The vision commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Train a ViG classifier on the CPU or a GPU (--device cuda): Fashion-MNIST (default) or synthetic images.
    #[command(after_help = "Examples:\n  \
        gla vision train --out runs/vig-fmnist                  (the default recipe: 91.3% test accuracy, ~9 min on 2 idle cores)\n  \
        gla vision train --out runs/vig-fmnist --resume         (continue an interrupted run exactly)\n  \
        gla vision train --synthetic --out runs/vig-syn --steps 100\n  \
        gla vision train --config vig.json --out runs/vig       (hustvl's ViG keys)")]
    Train(TrainArgs),
    /// Classify images (PNG, JPEG) with a trained model directory or hustvl's `.pth`.
    #[command(after_help = "Examples:\n  \
        gla vision classify --model runs/vig-fmnist shirt.png boot.jpg   (top-5 classes with probabilities)\n  \
        gla vision classify --model runs/vig-fmnist                      (accuracy on the Fashion-MNIST test set)\n  \
        gla vision classify --pth vig_t_77p2acc.pth --preset vig-t cat.jpg\n  \
        gla vision classify --pth vig_t_77p2acc.pth --preset vig-t --input images.safetensors --output logits.safetensors\n  \
        \x20   (images f32 [B, 3, H, W] in, logits f32 [B, 1000] out)")]
    Classify(ClassifyArgs),
}

/// `gla vision train`.
#[derive(ClapArgs)]
pub struct TrainArgs {
    /// Run directory: `checkpoint-<step>/` (config.json, model.safetensors, optimizer moments,
    /// trainer_state.json), latest, metrics.jsonl, loss_curve.png.
    #[arg(long, default_value = "runs/vig")]
    out: PathBuf,
    /// Continue the run in --out from its newest checkpoint with its saved settings: the steps
    /// taken are those of the uninterrupted run, bit for bit (--steps may raise the total, which
    /// stretches the cosine from the checkpoint on). CPU runs only.
    #[arg(long)]
    resume: bool,
    /// Folder of the idx files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]).
    #[arg(long, default_value = FASHION_MNIST)]
    data: PathBuf,
    /// Where to train; cuda picks the GPU recipe's defaults (vision_device.rs: 192 wide, 6 blocks,
    /// 14000 steps of 128 images, flip + shift augmentation) and writes the model directory at
    /// each evaluation (no optimizer state: --resume is CPU-only).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Train on synthetic 16x16 pattern images (4 classes) instead.
    #[arg(long)]
    synthetic: bool,
    /// A ViG config.json (hustvl's keys); its img_size, channels and num_classes must fit the data.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model dim of the default config.
    #[arg(long, default_value_t = 64, default_value_if("device", "cuda", gpu::EMBED_DIM))]
    embed_dim: usize,
    /// Blocks of the default config.
    #[arg(long, default_value_t = 4, default_value_if("device", "cuda", gpu::DEPTH))]
    depth: usize,
    /// Heads of the default config.
    #[arg(long, default_value_t = 2, default_value_if("device", "cuda", gpu::HEADS))]
    heads: usize,
    /// MLP width of the default config, in multiples of its model dim (GLAMLP's
    /// intermediate_size; its gate and up projections are each this wide).
    #[arg(long, default_value_t = 4)]
    mlp_ratio: usize,
    /// Patch size of the default config (28x28 with patch 4: 7x7 tokens).
    #[arg(long, default_value_t = 4)]
    patch_size: usize,
    /// Stochastic depth of the default config (hustvl's drop_path_rate: the last block drops
    /// each residual branch with this probability, earlier ones linearly less).
    #[arg(long, default_value_t = 0.0)]
    drop_path: f64,
    /// Optimizer steps [default: 13000; 14000 with --device cuda]; with --resume, a new (higher) total, else the run's own.
    #[arg(long)]
    steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 32, default_value_if("device", "cuda", gpu::BATCH))]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3, default_value_if("device", "cuda", gpu::LR))]
    lr: f32,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 1e-5)]
    min_lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 200, default_value_if("device", "cuda", gpu::WARMUP))]
    warmup: u64,
    /// AdamW weight decay (hustvl: 0.05).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f32,
    /// Label smoothing (hustvl: 0.1).
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f32,
    /// Gradient clip (hustvl: 5).
    #[arg(long, default_value_t = 5.0)]
    clip: f32,
    /// Augmentation: random crop with this much zero padding (0: none; with --device cuda,
    /// random shifts of up to this many pixels, 2 by default).
    #[arg(long, default_value_t = 0, default_value_if("device", "cuda", gpu::SHIFT))]
    crop_pad: usize,
    /// Augmentation: no random horizontal flip (on by default).
    #[arg(long)]
    no_flip: bool,
    /// Evaluate (test accuracy) and checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 2000, default_value_if("device", "cuda", gpu::EVAL_EVERY))]
    eval_every: u64,
    /// Test images per intermediate evaluation (the final one uses the whole test set).
    #[arg(long, default_value_t = 2000, default_value_if("device", "cuda", gpu::EVAL_EXAMPLES))]
    eval_examples: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 1)]
    keep: usize,
    /// Seed (init, data order, augmentation, drop masks).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decay of the exponential moving average of the weights (timm's ModelEma; 0: none): the
    /// average is what is evaluated and saved as model.safetensors [default: 0.0]. CPU runs only.
    #[arg(long)]
    ema: Option<f64>,
    /// Equal parts each batch is split into and run side by side on the cores (the gradient is
    /// their weighted sum: part of the numerics, kept by --resume; the thread count is not)
    /// [default: 2, at most --batch-size]. CPU runs only.
    #[arg(long)]
    shards: Option<usize>,
}

/// `gla vision classify`.
#[derive(ClapArgs)]
pub struct ClassifyArgs {
    /// A model directory (config.json + model.safetensors) or a `gla vision train` run
    /// directory (its newest checkpoint).
    #[arg(long, conflicts_with = "pth")]
    model: Option<PathBuf>,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// hustvl's `.pth` checkpoint (with --config or --preset).
    #[arg(long)]
    pth: Option<PathBuf>,
    /// The config of --pth (hustvl's keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The preset of --pth: vig-t, vig-s, vig-b.
    #[arg(long)]
    preset: Option<String>,
    /// PNG or JPEG images: each is converted to the model's channels, resized to its img_size and
    /// normalised as its training images were; the top-k classes are printed.
    #[arg(value_name = "IMAGE", conflicts_with = "input")]
    images: Vec<PathBuf>,
    /// Classes printed per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Images f32 [B, C, H, W] (tensor `images`, or the only tensor) in a safetensors file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write `logits` f32 [B, classes] (with --input).
    #[arg(long, requires = "input")]
    output: Option<PathBuf>,
    /// Folder of the idx test files (without images or --input).
    #[arg(long, default_value = FASHION_MNIST)]
    data: PathBuf,
    /// Test images to classify (without images or --input; 0: all).
    #[arg(long, default_value_t = 10000)]
    limit: usize,
}

/// Runs a vision command.
pub fn run(cmd: &Cmd) -> Result<()> {
    match cmd {
        Cmd::Train(a) => train(a),
        Cmd::Classify(a) => classify(a),
    }
}

/// An idx file, `name` or `name.gz` in `dir`, decompressed.
fn read_idx(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let plain = dir.join(name);
    if plain.exists() {
        return std::fs::read(&plain).with_context(|| format!("reading {}", plain.display()));
    }
    let gz = dir.join(format!("{name}.gz"));
    let f = std::fs::File::open(&gz).with_context(|| {
        format!("reading {} (Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or --data DIR, or --synthetic)", gz.display())
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).with_context(|| format!("decompressing {}", gz.display()))?;
    Ok(out)
}

/// The train or test split (`train`, `t10k`) of an idx folder, 10 classes.
fn idx_set(dir: &Path, split: &str) -> Result<ImageSet> {
    let images = read_idx(dir, &format!("{split}-images-idx3-ubyte"))?;
    let labels = read_idx(dir, &format!("{split}-labels-idx1-ubyte"))?;
    Ok(ImageSet::from_idx(&images, &labels, 10)?)
}

/// The default config for `data`: a small ViG-T-shaped model (hustvl's flags) at its size.
fn default_config(a: &TrainArgs, data: &ImageSet) -> VigConfig {
    VigConfig {
        img_size: data.h,
        patch_size: a.patch_size,
        stride: a.patch_size,
        depth: a.depth,
        num_heads: a.heads,
        embed_dim: a.embed_dim,
        channels: data.channels,
        num_classes: data.classes,
        intermediate_size: Some(a.mlp_ratio * a.embed_dim),
        drop_path_rate: a.drop_path,
        ..VigConfig::vig_t()
    }
}

/// Records in `config` what classifying images needs: the class names and the normalisation.
fn annotate(config: &mut VigConfig, names: &[&str], norm: (f32, f32)) {
    let channels = config.channels;
    config.extra.insert(CLASS_NAMES_KEY.into(), serde_json::json!(names));
    config.extra.insert(IMAGE_MEAN_KEY.into(), serde_json::json!(vec![norm.0; channels]));
    config.extra.insert(IMAGE_STD_KEY.into(), serde_json::json!(vec![norm.1; channels]));
}

/// The train and test sets of `a` and their class names.
fn datasets(a: &TrainArgs) -> Result<(ImageSet, ImageSet, &'static [&'static str])> {
    if a.synthetic {
        return Ok((ImageSet::synthetic(4096, 16, a.seed), ImageSet::synthetic(512, 16, a.seed + 1), &SYNTHETIC_CLASSES));
    }
    Ok((idx_set(&a.data, "train")?, idx_set(&a.data, "t10k")?, &FASHION_CLASSES))
}

/// A fresh trainer from the flags.
fn new_trainer(a: &TrainArgs, data: &ImageSet, names: &[&str]) -> Result<VigTrainer> {
    let mut config = match &a.config {
        Some(p) => VigConfig::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => default_config(a, data),
    };
    if (config.channels, config.num_classes) != (data.channels, data.classes) {
        bail!(
            "the config takes {} channels and {} classes; the data has {} and {}",
            config.channels,
            config.num_classes,
            data.channels,
            data.classes
        );
    }
    annotate(&mut config, names, data.norm);
    let model = VigModel::new(config, a.seed)?;
    let mut cfg = VigTrainConfig {
        steps: a.steps.unwrap_or(DEFAULT_STEPS),
        batch_size: a.batch_size,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        clip: a.clip,
        label_smoothing: a.label_smoothing,
        augment: Augment { pad: a.crop_pad, flip: !a.no_flip },
        seed: a.seed,
        shards: a.shards.unwrap_or(DEFAULT_SHARDS.min(a.batch_size.max(1))),
        ema: a.ema.unwrap_or(DEFAULT_EMA),
        ..VigTrainConfig::default()
    };
    cfg.adamw.weight_decay = a.weight_decay;
    Ok(VigTrainer::new(model, cfg)?)
}

/// Appends one JSON line to the metrics file.
fn log_json(f: &mut std::fs::File, v: serde_json::Value) -> Result<()> {
    writeln!(f, "{v}").context("writing metrics.jsonl")
}

fn train(a: &TrainArgs) -> Result<()> {
    if a.device == Device::Cuda {
        return train_on_gpu(a);
    }
    let (train_set, test_set, names) = datasets(a)?;
    let _lock = RunLock::take(&a.out)?;
    let has_ckpt = a.out.join(gla_model::checkpoint::LATEST_FILE).is_file();
    let mut tr = match (a.resume, has_ckpt) {
        (true, true) => {
            if a.shards.is_some() {
                eprintln!("note: --shards is ignored by --resume (the run keeps its own: it is part of the numerics)");
            }
            let tr = VigTrainer::resume(&a.out, |c| c.steps = a.steps.map_or(c.steps, |s| c.steps.max(s)))
                .with_context(|| format!("resuming {}", a.out.display()))?;
            eprintln!("resuming {} at step {} of {}", a.out.display(), tr.step_count(), tr.cfg.steps);
            tr
        }
        (true, false) => bail!("--resume: {} holds no checkpoint to continue", a.out.display()),
        // a --device cuda run leaves its model at the top of the directory
        (false, false) if a.out.join("model.safetensors").is_file() => {
            bail!("{} already holds a model (a --device cuda run): choose another --out", a.out.display())
        }
        (false, true) => bail!("{} already holds a run: continue it with --resume, or choose another --out", a.out.display()),
        (false, false) => new_trainer(a, &train_set, names)?,
    };
    if tr.model.dims.channels != train_set.channels || tr.model.dims.classes != train_set.classes {
        bail!(
            "the run's model takes {} channels and {} classes; the data has {} and {}",
            tr.model.dims.channels,
            tr.model.dims.classes,
            train_set.channels,
            train_set.classes
        );
    }
    let grid = gla_model::vig::Shape::new(&tr.model.dims, 1, train_set.h, train_set.w)?.grid;
    let (m, c) = (&tr.model, &tr.cfg);
    eprintln!(
        "ViG: {} parameters, D {}, {} blocks, {} heads, {}x{} images -> {}x{} tokens, drop path {}; {} training images; \
         {} steps of {} in {} shards (lr {:.1e}, warm-up {}, cosine), crop pad {}, flip {}, EMA {}",
        m.num_params(),
        m.dims.d,
        m.dims.depth,
        m.dims.heads,
        train_set.h,
        train_set.w,
        grid.0,
        grid.1,
        m.config.drop_path_rate,
        train_set.n,
        c.steps,
        c.batch_size,
        c.shards,
        c.lr,
        c.warmup,
        c.augment.pad,
        c.augment.flip,
        c.ema
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let metrics_path = a.out.join("metrics.jsonl");
    truncate_metrics(&metrics_path, tr.step_count())?;
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let stop = crate::signals::Stop::install().context("installing the signal handlers")?;
    let tty = std::io::stderr().is_terminal();
    let (start, start_step, total) = (Instant::now(), tr.step_count(), tr.cfg.steps);
    let batch = tr.cfg.batch_size;
    let mut last_eval = tr.evals.last().copied();
    let mut saved_at = None;
    while tr.step_count() < total {
        let s = tr.step(&train_set)?;
        let el = start.elapsed().as_secs_f64();
        let done = (s.step - start_step) as f64;
        let img_s = done * batch as f64 / el;
        let eta = el / done * (total - s.step) as f64;
        log_json(
            &mut metrics,
            serde_json::json!({"kind": "train", "step": s.step, "loss": s.loss, "acc": s.acc, "lr": s.lr, "grad_norm": s.grad_norm, "images_per_s": img_s, "elapsed_s": el}),
        )?;
        let last = s.step == total;
        if !last && a.eval_every > 0 && s.step % a.eval_every == 0 {
            let n = a.eval_examples.min(test_set.n);
            let (acc, loss) = evaluate(tr.eval_model(), &test_set, n, 256)?;
            let e = tr.record_eval(acc, loss);
            log_json(
                &mut metrics,
                serde_json::json!({"kind": "eval", "step": e.step, "loss": loss, "acc": acc, "images": n, "elapsed_s": start.elapsed().as_secs_f64()}),
            )?;
            last_eval = Some(e);
            if tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("step {:>5}/{total}  test loss {loss:.4}  test acc {:.2}% ({n} images)  ({})", s.step, 100.0 * acc, fmt_secs(el));
            saved_at = Some(tr.save(&a.out, a.keep)?);
        }
        if tty {
            let acc = last_eval.map_or_else(String::new, |e| format!("  test acc {:.1}%", 100.0 * e.acc));
            eprint!("\r\x1b[2Kstep {:>5}/{total}  loss {:.4}{acc}  {img_s:.0} img/s  ETA {}", s.step, s.loss, fmt_secs(eta));
            let _ = std::io::stderr().flush();
        }
        if let Some(sig) = stop.requested() {
            if tty {
                eprint!("\r\x1b[2K");
            }
            let p = tr.save(&a.out, a.keep)?;
            eprintln!(
                "{sig}: stopped after step {} of {total}; checkpoint {} written. Continue with: gla vision train --out {} --resume",
                tr.step_count(),
                p.display(),
                a.out.display()
            );
            std::process::exit(stop.exit_status());
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let trained = tr.step_count() - start_step;
    let wall = start.elapsed().as_secs_f64();
    // the final evaluation: the whole test set
    let (acc, loss) = evaluate(tr.eval_model(), &test_set, test_set.n, 256)?;
    // a run resumed at its end has nothing new to record
    if trained > 0 || last_eval.is_none_or(|e| e.step != tr.step_count()) {
        tr.record_eval(acc, loss);
        log_json(
            &mut metrics,
            serde_json::json!({"kind": "eval", "step": tr.step_count(), "loss": loss, "acc": acc, "images": test_set.n, "elapsed_s": start.elapsed().as_secs_f64()}),
        )?;
        saved_at = Some(tr.save(&a.out, a.keep)?);
    }
    let png = a.out.join("loss_curve.png");
    plot::loss_curve(&png, &tr.losses, &tr.evals, "test acc").with_context(|| format!("writing {}", png.display()))?;
    println!(
        "trained {trained} steps in {} ({wall:.1} s, {:.0} images/s); test accuracy {:.2}% on {} images (loss {loss:.4})",
        fmt_secs(wall),
        (trained as usize * batch) as f64 / wall.max(1e-9),
        100.0 * acc,
        test_set.n
    );
    if let Some(p) = saved_at {
        println!("checkpoint (hustvl's names + training state): {}", p.display());
    }
    println!("metrics: {}", metrics_path.display());
    println!("loss curve: {}", png.display());
    Ok(())
}

/// Whether `dir` (a model or run directory, [`crate::model_dir::resolve`]) holds a vision
/// model: its config.json's `model_type` is `vig`.
pub fn is_vision_dir(dir: &Path) -> bool {
    let Ok(dir) = crate::model_dir::resolve(dir) else { return false };
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v.get("model_type").and_then(|t| t.as_str()).map(|t| t == "vig"))
        == Some(true)
}

/// Loads a vision model directory or run directory.
fn load_dir(path: &Path) -> Result<VigModel> {
    let dir = crate::model_dir::resolve(path)?;
    let p = dir.join("config.json");
    let config = VigConfig::from_json(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)?;
    load_safetensors(&dir.join("model.safetensors"), config).with_context(|| format!("loading {}", dir.display()))
}

/// `gla eval --model DIR` of a vision model: accuracy and mean loss on the idx test set in
/// `data` (the first `limit` images, 0: all), printed, or as one JSON object with `json`.
///
/// # Errors
/// A model or data set that does not load; a model whose input does not fit the data.
pub fn eval(model: &Path, data: &Path, limit: usize, json: bool) -> Result<()> {
    let m = load_dir(model)?;
    let test = idx_set(data, "t10k")?;
    if (m.dims.channels, m.dims.classes) != (test.channels, test.classes) {
        bail!(
            "the model takes {} channels and {} classes; {} has {} and {}",
            m.dims.channels,
            m.dims.classes,
            data.display(),
            test.channels,
            test.classes
        );
    }
    let n = if limit == 0 { test.n } else { limit.min(test.n) };
    let t0 = Instant::now();
    let (acc, loss) = evaluate(&m, &test, n, 256)?;
    let secs = t0.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::json!({"model_type": "vig", "images": n, "accuracy": acc, "loss": loss, "seconds": secs}));
    } else {
        println!("test accuracy {:.2}% on {n} images, loss {loss:.4} ({:.0} images/s)", 100.0 * acc, n as f64 / secs.max(1e-9));
    }
    Ok(())
}

fn load_model(a: &ClassifyArgs) -> Result<VigModel> {
    match (&a.model, &a.pth) {
        (Some(dir), _) => load_dir(dir),
        (None, Some(p)) => {
            let config = match (&a.config, &a.preset) {
                (Some(c), _) => VigConfig::from_json(&std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?)?,
                (None, Some(name)) => VigConfig::preset(name).with_context(|| format!("unknown preset {name} (vig-t, vig-s, vig-b)"))?,
                (None, None) => bail!("--pth needs --config or --preset"),
            };
            Ok(load_pth(p, config)?)
        }
        (None, None) => bail!("give --model DIR or --pth FILE"),
    }
}

/// The class names of a model: its config's `class_names`, ImageNet's for a 1000-class head,
/// else `class <i>`.
fn class_names(m: &VigModel) -> Vec<String> {
    let k = m.dims.classes;
    if let Some(v) = m.config.extra.get(CLASS_NAMES_KEY).and_then(|v| v.as_array()) {
        let names: Vec<String> = v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect();
        if names.len() == k {
            return names;
        }
    }
    let imagenet: Vec<&str> = IMAGENET_CLASSES.lines().collect();
    if k == imagenet.len() {
        return imagenet.into_iter().map(str::to_string).collect();
    }
    (0..k).map(|i| format!("class {i}")).collect()
}

/// The per-channel normalisation of a model's input: its config's `image_mean` / `image_std`,
/// ImageNet's for 3 channels, else mean 0.5, std 0.5.
fn normalisation(m: &VigModel) -> (Vec<f32>, Vec<f32>) {
    let c = m.dims.channels;
    let get = |key: &str| -> Option<Vec<f32>> {
        let v: Vec<f32> = m.config.extra.get(key)?.as_array()?.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect();
        (v.len() == c).then_some(v)
    };
    match (get(IMAGE_MEAN_KEY), get(IMAGE_STD_KEY)) {
        (Some(mean), Some(std)) => (mean, std),
        _ if c == 3 => (IMAGENET_NORM.0.to_vec(), IMAGENET_NORM.1.to_vec()),
        _ => (vec![0.5; c], vec![0.5; c]),
    }
}

/// A PNG or JPEG file as the model's input `[C, S, S]` (S = img_size): converted to gray (1
/// channel) or RGB (3), resized with a triangle filter, scaled to [0, 1] and normalised.
fn load_image(path: &Path, m: &VigModel) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {} (PNG and JPEG are read)", path.display()))?;
    let s = m.config.img_size as u32;
    let (mean, std) = normalisation(m);
    let resize = |i: image::DynamicImage| i.resize_exact(s, s, image::imageops::FilterType::Triangle);
    let c = m.dims.channels;
    let hw = (s * s) as usize;
    let mut x = vec![0.0f32; c * hw];
    match c {
        1 => {
            let g = resize(img).to_luma8();
            for (o, p) in x.iter_mut().zip(g.pixels()) {
                *o = (p.0[0] as f32 / 255.0 - mean[0]) / std[0];
            }
        }
        3 => {
            let rgb = resize(img).to_rgb8();
            for (i, p) in rgb.pixels().enumerate() {
                for ch in 0..3 {
                    x[ch * hw + i] = (p.0[ch] as f32 / 255.0 - mean[ch]) / std[ch];
                }
            }
        }
        other => bail!("the model takes {other} channels; images are read as 1 (gray) or 3 (RGB)"),
    }
    Ok(x)
}

/// `(class, probability)` of the `k` most probable classes of one row of logits.
fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&v| (v as f64 - mx).exp()).sum();
    let mut p: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &v)| (i, (v as f64 - mx).exp() / z)).collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    p.truncate(k);
    p
}

fn classify(a: &ClassifyArgs) -> Result<()> {
    let m = load_model(a)?;
    if !a.images.is_empty() {
        let names = class_names(&m);
        let (s, classes) = (m.config.img_size, m.dims.classes);
        // images in batches of up to 64: one model set-up (on the GPU: one upload) per batch
        for paths in a.images.chunks(64) {
            let mut x = Vec::new();
            for path in paths {
                x.extend(load_image(path, &m)?);
            }
            let logits = logits_on(a.device, &m, &x, paths.len(), s, s)?;
            for (path, row) in paths.iter().zip(logits.chunks_exact(classes)) {
                println!("{}:", path.display());
                for (i, p) in top_k(row, a.top_k.max(1)) {
                    println!("  {:>6.2}%  {} ({i})", 100.0 * p, names[i]);
                }
            }
        }
        return Ok(());
    }
    let Some(input) = &a.input else {
        let test = idx_set(&a.data, "t10k")?;
        let t0 = Instant::now();
        let n = if a.limit == 0 { test.n } else { a.limit.min(test.n) };
        let (acc, loss) = evaluate_on(a.device, &m, &test, n, 256)?;
        println!("accuracy {acc:.4} on {n} test images (loss {loss:.4}, {:.0} images/s)", n as f64 / t0.elapsed().as_secs_f64());
        return Ok(());
    };
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {}", input.display()))?;
    let names = st.names();
    let name = if names.contains(&"images") {
        "images".to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        bail!("{}: no tensor `images`", input.display())
    };
    let v = st.tensor(&name)?;
    if v.dtype() != safetensors::Dtype::F32 || v.shape().len() != 4 {
        bail!("{name}: f32 [B, C, H, W] expected, got {:?} {:?}", v.dtype(), v.shape());
    }
    let s = v.shape().to_vec();
    let x: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if s[1] != m.dims.channels {
        bail!("{name}: {} channels, the model takes {}", s[1], m.dims.channels);
    }
    let logits = logits_on(a.device, &m, &x, s[0], s[2], s[3])?;
    for (i, row) in logits.chunks_exact(m.dims.classes).enumerate() {
        let best = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b });
        println!("image {i}: class {} (logit {:.4})", best.0, best.1);
    }
    if let Some(out) = &a.output {
        let data: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![s[0], m.dims.classes], &data)?;
        let bytes = safetensors::serialize(vec![("logits".to_string(), view)], None)?;
        gla_core::io::write_atomic(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// `gla vision train --device cuda`: the GPU trainer (vision_device.rs) on a new model, with the
/// CPU run's config, data and schedule; the run directory gets the model (config.json +
/// model.safetensors, hustvl's names) and metrics.jsonl at each evaluation and at the end. The
/// optimizer state stays on the GPU, so `--resume` is refused here.
fn train_on_gpu(a: &TrainArgs) -> Result<()> {
    if a.resume {
        bail!("--resume is CPU-only: a --device cuda run saves the model, not the optimizer state; start a new --out");
    }
    if a.ema.is_some() {
        bail!("--ema is CPU-only: the GPU trainer keeps no moving average");
    }
    if a.shards.is_some() {
        bail!("--shards is CPU-only: the GPU trainer runs each batch whole");
    }
    let (train_set, test_set, names) = datasets(a)?;
    if a.out.join("model.safetensors").is_file() || a.out.join(gla_model::checkpoint::LATEST_FILE).is_file() {
        bail!("{} already holds a run: choose another --out", a.out.display());
    }
    let _lock = RunLock::take(&a.out)?;
    let host = new_trainer(a, &train_set, names)?;
    let (model, mut cfg) = (host.model, host.cfg);
    cfg.steps = match a.steps {
        Some(s) => s,
        None => gpu::STEPS.parse().context("the GPU recipe's step count")?,
    };
    let total = cfg.steps;
    if total == 0 {
        bail!("--steps 0: nothing to train");
    }
    let grid = gla_model::vig::Shape::new(&model.dims, 1, train_set.h, train_set.w)?.grid;
    eprintln!(
        "ViG: {} parameters, D {}, {} blocks, {} heads, {}x{} images -> {}x{} tokens; {} training images; {} steps of {}",
        model.num_params(),
        model.dims.d,
        model.dims.depth,
        model.dims.heads,
        train_set.h,
        train_set.w,
        grid.0,
        grid.1,
        train_set.n,
        total,
        cfg.batch_size
    );
    let batch = cfg.batch_size;
    let mut tr = Trainer::new(Device::Cuda, model, cfg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let metrics_path = a.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).with_context(|| format!("creating {}", metrics_path.display()))?;
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    while tr.step_count() < total {
        let s = tr.step(&train_set)?;
        let el = start.elapsed().as_secs_f64();
        let img_s = (s.step as usize * batch) as f64 / el;
        log_json(
            &mut metrics,
            serde_json::json!({"kind": "train", "step": s.step, "loss": s.loss, "acc": s.acc, "lr": s.lr, "grad_norm": s.grad_norm, "images_per_s": img_s, "elapsed_s": el}),
        )?;
        let last = s.step == total;
        if last || (a.eval_every > 0 && s.step % a.eval_every == 0) {
            let n = if last { test_set.n } else { a.eval_examples.min(test_set.n) };
            let (acc, loss) = tr.evaluate(&test_set, n, 256)?;
            log_json(
                &mut metrics,
                serde_json::json!({"kind": "eval", "step": s.step, "loss": loss, "acc": acc, "images": n, "elapsed_s": start.elapsed().as_secs_f64()}),
            )?;
            if tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!(
                "step {:>5}/{total}  test loss {loss:.4}  test accuracy {:.2}% ({n} images)  ({})",
                s.step,
                100.0 * acc,
                fmt_secs(el)
            );
            let m = tr.model()?;
            gla_core::io::write_atomic(&a.out.join("config.json"), m.config.to_json().as_bytes()).context("writing config.json")?;
            gla_model::vig::pth::save_safetensors(&m, &a.out.join("model.safetensors"))?;
        } else if tty {
            let eta = el / s.step as f64 * (total - s.step) as f64;
            eprint!("\r\x1b[2Kstep {:>5}/{total}  loss {:.4}  {img_s:.0} img/s  ETA {}", s.step, s.loss, fmt_secs(eta));
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!("saved {} (config.json, model.safetensors); metrics: {}", a.out.display(), metrics_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_sums_below_one() {
        let t = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((t[0].1 - t[1].1).abs() < 1e-12 && t[1].1 > t[2].1);
        let all: f64 = top_k(&[0.0, 2.0, 1.0, 2.0], 10).iter().map(|p| p.1).sum();
        assert!((all - 1.0).abs() < 1e-12);
    }

    #[test]
    fn imagenet_list_has_1000_names() {
        let names: Vec<&str> = IMAGENET_CLASSES.lines().collect();
        assert_eq!(names.len(), 1000);
        assert_eq!((names[0], names[999]), ("tench", "toilet tissue"));
        assert!(names.iter().all(|n| !n.trim().is_empty()));
    }
}
