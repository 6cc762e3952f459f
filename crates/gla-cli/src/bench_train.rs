//! `gla bench train`: training throughput of a random model of any family built (its config's
//! `model_type`; default fla's gla_340M) on random tokens: ms per optimizer step, tokens/s, model FLOPs utilisation and, on CUDA, peak
//! device memory. bench/train_vs_fla.py times fla's `GLAForCausalLM` on the same setup.
//! `--gpus 1,2,4,8` measures data-parallel scaling over NCCL: for each N, N ranks (crate::launch)
//! each run `--batch` sequences per step; the table gives tokens/s per GPU and in total and the
//! efficiency against the first N.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use gla_core::dims::MixerDims;
use gla_model::{GlaConfig, GlaModel, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Device to time on.
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Config of the random model: JSON text or the path of a config.json (fla's config keys;
    /// `model_type` picks the family: gla, delta_net, gated_deltanet; `bench/configs/` holds
    /// fla's 340M DeltaNet and Gated DeltaNet configs); default: fla's gla_340M (hidden 1024, 24
    /// layers, 4 heads, tied embeddings, vocab 32000).
    #[arg(long)]
    config: Option<String>,
    /// Sequences per step (per GPU with --gpus).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Data-parallel scaling over NCCL: for each N of this list, N local ranks (one per GPU) time
    /// the same steps with their gradients summed across GPUs; prints tokens/s per GPU and in
    /// total, and the efficiency (tokens/s per GPU against the list's first N), e.g. --gpus 1,2.
    /// Implies --device cuda. Under torchrun (RANK set) the process times as one rank.
    #[arg(long, value_delimiter = ',')]
    gpus: Vec<usize>,
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
    /// After timing (one GPU), run one more step with every kernel launch and GEMM bracketed by
    /// CUDA events and print where its time goes, summed per kernel (the top 20; all of them in
    /// the JSON).
    #[arg(long)]
    profile: bool,
}

/// What one run measured.
#[derive(Serialize, Deserialize)]
pub struct Report {
    device: String,
    params: usize,
    /// GPUs of a data-parallel run (1 otherwise); `batch` is per GPU
    #[serde(default = "one")]
    gpus: usize,
    batch: usize,
    seq_len: usize,
    steps: usize,
    ms_per_step: f64,
    /// over all GPUs
    tokens_per_s: f64,
    #[serde(default)]
    tokens_per_s_per_gpu: f64,
    /// model FLOPs per token: 6 x parameters in matmuls (lm_head included, embedding lookup not)
    /// + the GLA op's forward and backward (chunk FLOPs)
    flops_per_token: f64,
    mfu: f64,
    peak_mem_gib: f64,
    first_loss: f64,
    last_loss: f64,
    /// With --profile: (kernel or `gemm MxNxK`, launches, total ms) of one step, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    profile: Vec<(String, usize, f64)>,
}

fn one() -> usize {
    1
}

/// Where a rank 0 started by `--gpus` writes its [`Report`] for the launcher.
const REPORT_ENV: &str = "GLA_BENCH_REPORT";

fn default_config() -> GlaConfig {
    GlaConfig { hidden_size: 1024, num_hidden_layers: 24, num_heads: 4, tie_word_embeddings: true, ..GlaConfig::default() }
}

/// Training FLOPs per token (see [`Report::flops_per_token`]): 6 per matmul weight, plus each
/// layer's mixer op (its chunked forward and backward, per token of a `t`-token sequence).
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
    let mut mixer = 0.0;
    for m in &dm.mixers {
        let (f, b) = match m {
            MixerDims::Gla(g) => gla_core::Problem::new(gla_core::ProblemSpec {
                b: 1,
                t,
                h: g.heads,
                k: g.head_k,
                v: g.head_v,
                gate: gla_core::GateKind::PerKey,
                scale: None,
                cu_seqlens: None,
            })?
            .chunk_flops(),
            MixerDims::Delta(d) => {
                let gate = if d.decay { gla_core::DeltaGate::LogDecay } else { gla_core::DeltaGate::None };
                gla_core::DeltaProblem::new(gla_core::DeltaSpec {
                    hv: d.v_heads,
                    ..gla_core::DeltaSpec::new(1, t, d.heads, d.head_k, d.head_v, gate)
                })?
            }
            .chunk_flops(),
            MixerDims::Attn(a) => {
                // per sequence of t: the score and value products over the allowed keys (causal,
                // at most the window), 2 flops a multiply-add; the backward about 2.5 times that
                let keys: f64 = (0..t).map(|i| a.window.map_or(i + 1, |w| (i + 1).min(w)) as f64).sum();
                let fwd = 4.0 * keys * (a.heads * a.head_dim) as f64;
                (fwd, 2.5 * fwd)
            }
        };
        mixer += f + b;
    }
    Ok(6.0 * matmul_params as f64 + mixer / t as f64)
}

/// A `--config` argument: JSON text (it starts with `{`) or the path of a JSON file.
pub(crate) fn config_arg(arg: &str) -> Result<ModelConfig> {
    if arg.trim_start().starts_with('{') {
        return Ok(ModelConfig::from_json(arg)?);
    }
    let text = std::fs::read_to_string(arg).with_context(|| format!("--config {arg}: neither JSON text nor a readable file"))?;
    ModelConfig::from_json(&text).with_context(|| format!("--config {arg}"))
}

pub fn run(a: &Args) -> Result<bool> {
    let job = if a.device == Device::Cuda || !a.gpus.is_empty() { crate::launch::job()? } else { None };
    if job.is_none() && !a.gpus.is_empty() {
        return scaling(a);
    }
    let config = match &a.config {
        Some(arg) => config_arg(arg)?,
        None => default_config().into(),
    };
    let model = GlaModel::new(config, 0)?;
    if a.batch == 0 || a.seq_len < 2 || a.steps == 0 {
        bail!("--batch, --steps must be > 0 and --seq-len >= 2");
    }
    if a.profile && (a.device != Device::Cuda || job.is_some()) {
        bail!("--profile times the kernels of one GPU: use --device cuda without --gpus or torchrun");
    }
    let fpt = flops_per_token(&model, a.seq_len)?;
    let r = match (&job, a.device) {
        (Some(j), _) => cuda_rank(a, &model, fpt, j)?,
        (None, Device::Cuda) => cuda(a, &model, fpt)?,
        (None, Device::Cpu) => cpu(a, model, fpt)?,
    };
    if !crate::launch::Job::lead(job.as_ref()) {
        return Ok(true);
    }
    if let Some(p) = std::env::var_os(REPORT_ENV) {
        // the launcher of --gpus prints the table of all its runs
        std::fs::write(&p, serde_json::to_string(&r)?)?;
        return Ok(true);
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
    }
    print_table(&[r], false);
    Ok(true)
}

/// The report table; `scaling`: with the efficiency column (tokens/s per GPU against the first
/// row's).
fn print_table(rows: &[Report], scaling: bool) {
    if !scaling && rows.iter().all(|r| r.gpus == 1) {
        // the single-device row keeps the columns bench/train_vs_fla.py prints beside it
        println!(
            "{:<28} {:>10} {:>6} {:>6} {:>10} {:>12} {:>7} {:>9} {:>10}",
            "device", "params", "batch", "T", "ms/step", "tokens/s", "MFU", "peak GiB", "loss"
        );
        for r in rows {
            println!(
                "{:<28} {:>9.1}M {:>6} {:>6} {:>10.1} {:>12.0} {:>7} {:>9} {:>4.2}->{:.2}",
                r.device,
                r.params as f64 / 1e6,
                r.batch,
                r.seq_len,
                r.ms_per_step,
                r.tokens_per_s,
                pct(r.mfu),
                gib(r.peak_mem_gib),
                r.first_loss,
                r.last_loss
            );
        }
        return;
    }
    println!(
        "{:<28} {:>10} {:>4} {:>6} {:>6} {:>10} {:>12} {:>12} {:>7} {:>9} {:>12}{}",
        "device",
        "params",
        "GPUs",
        "batch",
        "T",
        "ms/step",
        "tokens/s",
        "tok/s/GPU",
        "MFU",
        "peak GiB",
        "loss",
        if scaling { "  efficiency" } else { "" }
    );
    let base = rows.first().map_or(f64::NAN, |r| r.tokens_per_s_per_gpu);
    for r in rows {
        println!(
            "{:<28} {:>9.1}M {:>4} {:>6} {:>6} {:>10.1} {:>12.0} {:>12.0} {:>7} {:>9} {:>5.2}->{:<5.2}{}",
            r.device,
            r.params as f64 / 1e6,
            r.gpus,
            r.batch,
            r.seq_len,
            r.ms_per_step,
            r.tokens_per_s,
            r.tokens_per_s_per_gpu,
            pct(r.mfu),
            gib(r.peak_mem_gib),
            r.first_loss,
            r.last_loss,
            if scaling { format!("  {:>9.1}%", 100.0 * r.tokens_per_s_per_gpu / base) } else { String::new() }
        );
    }
}

/// The MFU column: a percentage, or `-` where the device's peak is unknown (the CPU).
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "-".into()
    }
}

/// The peak-memory column: GiB, or `-` where it is not measured (the CPU).
fn gib(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// `--gpus N1,N2,..`: one data-parallel launch per N; the table of their rank 0's reports.
fn scaling(a: &Args) -> Result<bool> {
    let dir = std::env::temp_dir().join(format!("gla-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    for &n in &a.gpus {
        let path = dir.join(format!("gpus-{n}.json"));
        let _ = std::fs::remove_file(&path);
        crate::launch::local(n, &[(REPORT_ENV, path.display().to_string())])?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("rank 0 of the {n}-GPU run left no report at {}: {e}", path.display()))?;
        rows.push(serde_json::from_str::<Report>(&text)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_table(&rows, true);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
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
    seed: u64,
    mut sync: impl FnMut() -> Result<()>,
    mut step: impl FnMut(&[u32], &[i64]) -> Result<f64>,
) -> Result<(f64, f64, f64)> {
    let mut rng = gla_model::Rng::new(seed);
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
    /// `gpus`: ranks of a data-parallel run, each timing `--batch` sequences per step.
    fn new(
        a: &Args,
        device: String,
        params: usize,
        fpt: f64,
        gpus: usize,
        (secs, first, last): (f64, f64, f64),
        peak: Option<(f64, f64)>,
    ) -> Self {
        let tps = (a.batch * a.seq_len * a.steps) as f64 / secs;
        Self {
            device,
            params,
            gpus,
            batch: a.batch,
            seq_len: a.seq_len,
            steps: a.steps,
            ms_per_step: secs * 1e3 / a.steps as f64,
            tokens_per_s: tps * gpus as f64,
            tokens_per_s_per_gpu: tps,
            flops_per_token: fpt,
            mfu: peak.map_or(f64::NAN, |(tf, _)| tps * fpt / (tf * 1e12)),
            peak_mem_gib: peak.map_or(f64::NAN, |(_, gib)| gib),
            first_loss: first,
            last_loss: last,
            profile: Vec::new(),
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
        1,
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
    Ok(Report::new(a, format!("cpu ({} threads)", rayon::current_num_threads()), model.num_params(), fpt, 1, run, None))
}

#[cfg(feature = "cuda")]
fn cuda(a: &Args, model: &GlaModel, fpt: f64) -> Result<Report> {
    use gla_model::optim::AdamWConfig;
    let cuda = gla_cuda::Cuda::new()?;
    let mut gpu = gla_model::gpu::GpuModel::new(cuda.clone(), model)?;
    let mut acts = gpu.activations(a.batch, a.seq_len)?;
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let mut step = |ids: &[u32], targets: &[i64]| -> Result<f64> {
        gpu.zero_grads()?;
        let out = gpu.forward(&mut acts, ids, targets)?;
        gpu.backward(&mut acts, 1.0)?;
        gpu.adamw_step(&cfg, 3e-4, 1.0)?;
        Ok(out.loss)
    };
    let run = timed_steps(a, model.dims.vocab, 1, || Ok(cuda.sync()?), &mut step)?;
    let peak_gib = gla_cuda::weights::peak_pool_bytes(&cuda) as f64 / (1u64 << 30) as f64;
    let mut r = Report::new(a, cuda.name(), model.num_params(), fpt, 1, run, Some((a.peak_tflops, peak_gib)));
    if a.profile {
        let (ids, targets) = batch(&mut gla_model::Rng::new(2), a.batch, a.seq_len, model.dims.vocab);
        let (_, recs) = gla_cuda::runtime::profile(&cuda, || step(&ids, &targets))?;
        r.profile = gla_cuda::runtime::profile_totals(&recs);
        print!("{}", crate::bench::format_profile(&r.profile, r.ms_per_step));
    }
    Ok(r)
}

/// One rank of a data-parallel run: the training engine's step (forward with the loss summed
/// over the ranks, backward with the gradient all-reduce overlapped, AdamW) on GPU LOCAL_RANK,
/// each rank on its own random tokens. Rank 0's timing is the report.
#[cfg(feature = "cuda")]
fn cuda_rank(a: &Args, model: &GlaModel, fpt: f64, job: &crate::launch::Job) -> Result<Report> {
    use gla_model::optim::{AdamW, AdamWConfig};
    use gla_model::Engine;
    let env = &job.env;
    let cuda = gla_cuda::Cuda::with_ordinal(env.gpu_ordinal()?)?;
    let comm = gla_cuda::dist::Comm::init(&cuda, env, gla_cuda::dist::timeout_from_env()?)?;
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let mut opt = AdamW::new(cfg, &model.layout);
    let mut gpu = gla_model::gpu::GpuModel::for_training(cuda.clone(), model, &opt)?;
    gpu.attach_comm(comm)?;
    let mut eng = gla_model::DeviceEngine::new(gpu, model, a.batch, a.seq_len)?;
    // the engine never reads the host weights of a GPU device; the update only counts steps
    let mut host = model.clone();
    let run = timed_steps(
        a,
        model.dims.vocab,
        1 + env.rank as u64,
        || Ok(cuda.sync()?),
        |ids, targets| {
            eng.zero_grads()?;
            let out = eng.forward(&host, ids, targets)?;
            eng.backward(&host, 1.0, true)?;
            eng.update(&mut host, &mut opt, &cfg, 3e-4, 1.0)?;
            Ok(out.loss)
        },
    )?;
    let peak_gib = gla_cuda::weights::peak_pool_bytes(&cuda) as f64 / (1u64 << 30) as f64;
    let device = format!("{} x{}", cuda.name(), env.world);
    Ok(Report::new(a, device, model.num_params(), fpt, env.world, run, Some((a.peak_tflops, peak_gib))))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &Args, _: &GlaModel, _: f64) -> Result<Report> {
    bail!("this gla was built without the `cuda` feature (cargo build --release -p gla-cli --features cuda)")
}

#[cfg(not(feature = "cuda"))]
fn cuda_rank(_: &Args, _: &GlaModel, _: f64, _: &crate::launch::Job) -> Result<Report> {
    bail!("this gla was built without the `cuda` feature (cargo build --release -p gla-cli --features cuda)")
}
