//! `gla bench train`: training throughput of a random GLA model (default fla's gla_340M) on
//! random tokens: ms per optimizer step, tokens/s, model FLOPs utilisation and, on CUDA, peak
//! device memory. bench/train_vs_fla.py times fla's `GLAForCausalLM` on the same setup.

use std::time::Instant;

use anyhow::{bail, Result};
use gla_model::{GlaConfig, GlaModel};
use serde::Serialize;

use crate::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Device to time on.
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Config of the random model as JSON (fla's GLAConfig keys); default: fla's gla_340M
    /// (hidden 1024, 24 layers, 4 heads, tied embeddings, vocab 32000).
    #[arg(long)]
    config: Option<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Timed optimizer steps (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first (kernel compilation, allocation).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Peak dense bf16 throughput of the device for the MFU, TFLOP/s (H200 spec: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// What one run measured.
#[derive(Serialize)]
pub struct Report {
    device: String,
    params: usize,
    batch: usize,
    seq_len: usize,
    steps: usize,
    ms_per_step: f64,
    tokens_per_s: f64,
    /// model FLOPs per token: 6 x parameters in matmuls (lm_head included, embedding lookup not)
    /// + the GLA op's forward and backward (chunk FLOPs)
    flops_per_token: f64,
    mfu: f64,
    peak_mem_gib: f64,
    first_loss: f64,
    last_loss: f64,
}

fn default_config() -> GlaConfig {
    GlaConfig { hidden_size: 1024, num_hidden_layers: 24, num_heads: 4, tie_word_embeddings: true, ..GlaConfig::default() }
}

/// Training FLOPs per token (see [`Report::flops_per_token`]).
fn flops_per_token(model: &GlaModel, t: usize) -> Result<f64> {
    let dm = &model.dims;
    let lay = &model.layout;
    // every 2-D weight is a matmul operand except the embedding table (a lookup), but the tied
    // lm_head is the embedding table used as a matmul
    let mut matmul_params = 0usize;
    for (i, s) in lay.specs.iter().enumerate() {
        if s.shape.len() == 2 && (i != lay.embeddings || lay.lm_head.is_none()) {
            matmul_params += s.numel();
        }
    }
    let p = gla_core::Problem::new(gla_core::ProblemSpec {
        b: 1,
        t,
        h: dm.heads,
        k: dm.head_k,
        v: dm.head_v,
        gate: gla_core::GateKind::PerKey,
        scale: None,
        cu_seqlens: None,
    })?;
    let (f, b) = p.chunk_flops();
    Ok(6.0 * matmul_params as f64 + dm.layers as f64 * (f + b) / t as f64)
}

pub fn run(a: &Args) -> Result<bool> {
    let config = match &a.config {
        Some(json) => GlaConfig::from_json(json)?,
        None => default_config(),
    };
    let model = GlaModel::new(config, 0)?;
    if a.batch == 0 || a.seq_len < 2 || a.steps == 0 {
        bail!("--batch, --steps must be > 0 and --seq-len >= 2");
    }
    let fpt = flops_per_token(&model, a.seq_len)?;
    let r = match a.device {
        Device::Cuda => cuda(a, &model, fpt)?,
        Device::Cpu => cpu(a, model, fpt)?,
    };
    println!(
        "{:<28} {:>10} {:>6} {:>6} {:>10} {:>12} {:>7} {:>9} {:>10}",
        "device", "params", "batch", "T", "ms/step", "tokens/s", "MFU", "peak GiB", "loss"
    );
    println!(
        "{:<28} {:>9.1}M {:>6} {:>6} {:>10.1} {:>12.0} {:>6.1}% {:>9.2} {:>4.2}->{:.2}",
        r.device,
        r.params as f64 / 1e6,
        r.batch,
        r.seq_len,
        r.ms_per_step,
        r.tokens_per_s,
        100.0 * r.mfu,
        r.peak_mem_gib,
        r.first_loss,
        r.last_loss
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(true)
}

fn batch(rng: &mut gla_model::Rng, b: usize, t: usize, vocab: usize) -> (Vec<u32>, Vec<i64>) {
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
    let labels: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    (ids, gla_model::shift_labels(&labels, t))
}

/// Runs `--warmup` untimed then `--steps` timed optimizer steps of `step` (random batches;
/// returns the step's loss), calling `sync` before the clock starts and stops (a device's queue).
/// Returns the timed seconds and the first and last losses.
fn timed_steps(
    a: &Args,
    vocab: usize,
    mut sync: impl FnMut() -> Result<()>,
    mut step: impl FnMut(&[u32], &[i64]) -> Result<f64>,
) -> Result<(f64, f64, f64)> {
    let mut rng = gla_model::Rng::new(1);
    let (mut first, mut last, mut t0) = (f64::NAN, f64::NAN, Instant::now());
    for i in 0..a.warmup + a.steps {
        if i == a.warmup {
            sync()?;
            t0 = Instant::now();
        }
        let (ids, targets) = batch(&mut rng, a.batch, a.seq_len, vocab);
        let loss = step(&ids, &targets)?;
        if i == 0 {
            first = loss;
        }
        last = loss;
    }
    sync()?;
    Ok((t0.elapsed().as_secs_f64(), first, last))
}

impl Report {
    /// The row of a run of `secs` seconds; `peak` is `(device TFLOP/s, peak memory GiB)` where
    /// known (the MFU and memory are NaN without it).
    fn new(a: &Args, device: String, params: usize, fpt: f64, (secs, first, last): (f64, f64, f64), peak: Option<(f64, f64)>) -> Self {
        let tps = (a.batch * a.seq_len * a.steps) as f64 / secs;
        Self {
            device,
            params,
            batch: a.batch,
            seq_len: a.seq_len,
            steps: a.steps,
            ms_per_step: secs * 1e3 / a.steps as f64,
            tokens_per_s: tps,
            flops_per_token: fpt,
            mfu: peak.map_or(f64::NAN, |(tf, _)| tps * fpt / (tf * 1e12)),
            peak_mem_gib: peak.map_or(f64::NAN, |(_, gib)| gib),
            first_loss: first,
            last_loss: last,
        }
    }
}

fn cpu(a: &Args, model: GlaModel, fpt: f64) -> Result<Report> {
    use gla_model::optim::{clip_grad_norm, AdamW, AdamWConfig};
    let mut model = model;
    let mut acts = gla_model::Activations::new(&model.dims, a.batch, a.seq_len);
    let mut grads = vec![0.0f32; model.num_params()];
    let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() }, &model.layout);
    let vocab = model.dims.vocab;
    let run = timed_steps(
        a,
        vocab,
        || Ok(()),
        |ids, targets| {
            grads.fill(0.0);
            let out = model.forward(&mut acts, ids, targets)?;
            model.backward(&mut acts, &mut grads, 1.0)?;
            clip_grad_norm(&mut grads, 1.0);
            opt.update(&mut model.params, &grads, 3e-4);
            Ok(out.loss)
        },
    )?;
    Ok(Report::new(a, format!("cpu ({} threads)", rayon::current_num_threads()), model.num_params(), fpt, run, None))
}

#[cfg(feature = "cuda")]
fn cuda(a: &Args, model: &GlaModel, fpt: f64) -> Result<Report> {
    use gla_model::optim::AdamWConfig;
    let cuda = gla_cuda::Cuda::new()?;
    let mut gpu = gla_cuda::GpuModel::new(cuda.clone(), model)?;
    let mut acts = gpu.activations(a.batch, a.seq_len)?;
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let run = timed_steps(
        a,
        model.dims.vocab,
        || Ok(cuda.sync()?),
        |ids, targets| {
            gpu.zero_grads()?;
            let out = gpu.forward(&mut acts, ids, targets)?;
            gpu.backward(&mut acts, 1.0)?;
            gpu.adamw_step(&cfg, 3e-4, 1.0)?;
            Ok(out.loss)
        },
    )?;
    let peak_gib = gla_cuda::model::peak_pool_bytes(&cuda) as f64 / (1u64 << 30) as f64;
    Ok(Report::new(a, cuda.name(), model.num_params(), fpt, run, Some((a.peak_tflops, peak_gib))))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Args, _: &GlaModel, _: f64) -> Result<Report> {
    bail!("this gla was built without the `cuda` feature (cargo build --release -p gla-cli --features cuda)")
}
