//! `gla vision`: the ViG image classifier (hustvl's ViG, gla-model's `vig`) on the CPU or one GPU (`--device`, vision_device.rs).
//! `train` on Fashion-MNIST (idx files, gzipped or not) or synthetic images, with a progress
//! line, JSON-lines metrics and atomic checkpoints (config.json + model.safetensors, hustvl's
//! names); `classify` a model directory or hustvl's `.pth` on an image set or a safetensors
//! file of images.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use gla_model::vig::data::ImageSet;
use gla_model::vig::pth::{load_pth, load_safetensors, save_safetensors};
use gla_model::vig::train::VigTrainConfig;
use gla_model::vig::{VigConfig, VigModel};

use crate::vision_device::{evaluate_on, gpu_recipe as gpu, logits_on, Trainer};
use crate::Device;

/// Where Debian's `dataset-fashion-mnist` installs the data.
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The vision commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Train a ViG classifier on the CPU or a GPU (--device cuda): Fashion-MNIST (default) or synthetic images.
    #[command(after_help = "Examples:\n  \
        gla vision train --out runs/vig-fmnist --steps 600     (Fashion-MNIST from /usr/share/datasets/fashion-mnist)\n  \
        gla vision train --synthetic --out runs/vig-syn --steps 100\n  \
        gla vision train --config vig.json --out runs/vig      (hustvl's ViG keys; default: a small 28x28 ViG-T-shaped model)")]
    Train(TrainArgs),
    /// Classify images with a trained model directory or hustvl's `.pth` (with --config).
    #[command(after_help = "Examples:\n  \
        gla vision classify --model runs/vig-fmnist               (accuracy on the Fashion-MNIST test set)\n  \
        gla vision classify --pth vig_t_77p2acc.pth --preset vig-t --input images.safetensors --output logits.safetensors\n  \
        \x20   (images f32 [B, 3, H, W] in, logits f32 [B, 1000] out)")]
    Classify(ClassifyArgs),
}

/// `gla vision train`.
#[derive(ClapArgs)]
pub struct TrainArgs {
    /// Run directory: config.json, model.safetensors, metrics.jsonl.
    #[arg(long, default_value = "runs/vig")]
    out: PathBuf,
    /// Folder of the idx files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]).
    #[arg(long, default_value = FASHION_MNIST)]
    data: PathBuf,
    /// Train on synthetic 16x16 pattern images (4 classes) instead.
    #[arg(long)]
    synthetic: bool,
    /// A ViG config.json (hustvl's keys); its img_size, channels and num_classes must fit the data.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to train; cuda picks the GPU recipe's defaults (vision_device.rs: 192 wide, 6 blocks,
    /// 14000 steps of 128 images, flip + shift augmentation) for Fashion-MNIST.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Model dim of the default config.
    #[arg(long, default_value_t = 64, default_value_if("device", "cuda", gpu::EMBED_DIM))]
    embed_dim: usize,
    /// Blocks of the default config.
    #[arg(long, default_value_t = 4, default_value_if("device", "cuda", gpu::DEPTH))]
    depth: usize,
    /// Heads of the default config.
    #[arg(long, default_value_t = 2, default_value_if("device", "cuda", gpu::HEADS))]
    heads: usize,
    /// Patch size of the default config (28x28 with patch 4: 7x7 tokens).
    #[arg(long, default_value_t = 4)]
    patch_size: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 600, default_value_if("device", "cuda", gpu::STEPS))]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 64, default_value_if("device", "cuda", gpu::BATCH))]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3, default_value_if("device", "cuda", gpu::LR))]
    lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 30, default_value_if("device", "cuda", gpu::WARMUP))]
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
    /// Evaluate (test accuracy) every this many steps.
    #[arg(long, default_value_t = 200, default_value_if("device", "cuda", gpu::EVAL_EVERY))]
    eval_every: u64,
    /// Test images per evaluation.
    #[arg(long, default_value_t = 2000, default_value_if("device", "cuda", gpu::EVAL_EXAMPLES))]
    eval_examples: usize,
    /// Seed (init and batches).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `gla vision classify`.
#[derive(ClapArgs)]
pub struct ClassifyArgs {
    /// A run directory (config.json + model.safetensors).
    #[arg(long, conflicts_with = "pth")]
    model: Option<PathBuf>,
    /// hustvl's `.pth` checkpoint (with --config or --preset).
    #[arg(long)]
    pth: Option<PathBuf>,
    /// The config of --pth (hustvl's keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The preset of --pth: vig-t, vig-s, vig-b.
    #[arg(long)]
    preset: Option<String>,
    /// Images f32 [B, C, H, W] (tensor `images`, or the only tensor) in a safetensors file.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write `logits` f32 [B, classes] (with --input).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Folder of the idx test files (without --input).
    #[arg(long, default_value = FASHION_MNIST)]
    data: PathBuf,
    /// Test images to classify (without --input).
    #[arg(long, default_value_t = 10000)]
    limit: usize,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
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
        intermediate_size: Some(2 * a.embed_dim),
        ..VigConfig::vig_t()
    }
}

/// Writes the run directory's checkpoint: config.json and model.safetensors, each atomically.
fn save(out: &Path, m: &VigModel) -> Result<()> {
    gla_core::io::write_atomic(&out.join("config.json"), m.config.to_json().as_bytes()).context("writing config.json")?;
    save_safetensors(m, &out.join("model.safetensors"))?;
    Ok(())
}

fn train(a: &TrainArgs) -> Result<()> {
    let (train_set, test_set) = if a.synthetic {
        (ImageSet::synthetic(4096, 16, a.seed), ImageSet::synthetic(512, 16, a.seed + 1))
    } else {
        (idx_set(&a.data, "train")?, idx_set(&a.data, "t10k")?)
    };
    let config = match &a.config {
        Some(p) => VigConfig::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => default_config(a, &train_set),
    };
    if (config.channels, config.num_classes) != (train_set.channels, train_set.classes) {
        bail!(
            "the config takes {} channels and {} classes; the data has {} and {}",
            config.channels,
            config.num_classes,
            train_set.channels,
            train_set.classes
        );
    }
    let model = VigModel::new(config, a.seed)?;
    let grid = gla_model::vig::Shape::new(&model.dims, 1, train_set.h, train_set.w)?.grid;
    eprintln!(
        "ViG: {} parameters, D {}, {} blocks, {} heads, {}x{} images -> {}x{} tokens; {} training images",
        model.num_params(),
        model.dims.d,
        model.dims.depth,
        model.dims.heads,
        train_set.h,
        train_set.w,
        grid.0,
        grid.1,
        train_set.n
    );
    let mut cfg = VigTrainConfig {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup: a.warmup,
        clip: a.clip,
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        ..VigTrainConfig::default()
    };
    cfg.adamw.weight_decay = a.weight_decay;
    let mut tr = Trainer::new(a.device, model, cfg)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let metrics_path = a.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path).with_context(|| format!("creating {}", metrics_path.display()))?;
    let t0 = Instant::now();
    let (mut loss_avg, mut acc_avg) = (0.0f64, 0.0f64);
    while tr.step_count() < a.steps {
        let s = tr.step(&train_set)?;
        let k = if s.step == 1 { 1.0 } else { 0.05 };
        loss_avg += k * (s.loss - loss_avg);
        acc_avg += k * (s.acc - acc_avg);
        let el = t0.elapsed().as_secs_f64();
        let line = serde_json::json!({"step": s.step, "loss": s.loss, "acc": s.acc, "lr": s.lr, "grad_norm": s.grad_norm, "elapsed_s": el});
        writeln!(metrics, "{line}").context("writing metrics")?;
        let eta = el / s.step as f64 * (a.steps - s.step) as f64;
        let done = (30 * s.step / a.steps.max(1)) as usize;
        eprint!(
            "\r[{}{}] step {}/{} loss {loss_avg:.4} acc {acc_avg:.3} lr {:.2e} {:.1} img/s eta {eta:.0}s ",
            "#".repeat(done),
            ".".repeat(30 - done),
            s.step,
            a.steps,
            s.lr,
            (s.step as usize * a.batch_size) as f64 / el
        );
        if s.step % a.eval_every == 0 || s.step == a.steps {
            let (acc, loss) = tr.evaluate(&test_set, a.eval_examples, 256)?;
            eprintln!();
            eprintln!("step {}: test accuracy {acc:.4}, test loss {loss:.4} ({} images)", s.step, a.eval_examples.min(test_set.n));
            writeln!(
                metrics,
                "{}",
                serde_json::json!({"step": s.step, "test_acc": acc, "test_loss": loss, "test_images": a.eval_examples.min(test_set.n)})
            )
            .context("writing metrics")?;
            save(&a.out, &*tr.model()?)?;
        }
    }
    println!("saved {} (config.json, model.safetensors); metrics: {}", a.out.display(), metrics_path.display());
    Ok(())
}

fn load_model(a: &ClassifyArgs) -> Result<VigModel> {
    let config = |dir: Option<&Path>| -> Result<VigConfig> {
        if let Some(p) = a.config.as_deref().or(dir.map(|d| d.join("config.json")).as_deref()) {
            return Ok(VigConfig::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?);
        }
        match &a.preset {
            Some(name) => VigConfig::preset(name).with_context(|| format!("unknown preset {name} (vig-t, vig-s, vig-b)")),
            None => bail!("--pth needs --config or --preset"),
        }
    };
    match (&a.model, &a.pth) {
        (Some(dir), _) => Ok(load_safetensors(&dir.join("model.safetensors"), config(Some(dir))?)?),
        (None, Some(p)) => Ok(load_pth(p, config(None)?)?),
        (None, None) => bail!("give --model DIR or --pth FILE"),
    }
}

fn classify(a: &ClassifyArgs) -> Result<()> {
    let m = load_model(a)?;
    let Some(input) = &a.input else {
        let test = idx_set(&a.data, "t10k")?;
        let t0 = Instant::now();
        let (acc, loss) = evaluate_on(a.device, &m, &test, a.limit, 256)?;
        let n = a.limit.min(test.n);
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
