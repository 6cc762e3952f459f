//! `gla bench vig`: ViG-T/S/B (hustvl's configs, 1000 classes, random weights) on one GPU, bf16:
//! images/s and peak device memory for inference (forward) and training (forward, backward,
//! AdamW) at 224, 512 and 1024 pixels, one batch per size. The images are uploaded once before
//! the timed loop (the forward starts from the device copy); each measurement is the wall time of
//! `--reps` iterations after `--warmup` ones, between device synchronisations. The peak is the
//! device memory pool's high-water mark over weights, activations and workspaces of that run.
//! The JSON feeds the integrator's comparison against DeiT (timm) and hustvl's PyTorch ViG.

use anyhow::Result;
#[cfg(feature = "cuda")]
use serde::Serialize;

use crate::Device;

/// `gla bench vig`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to time on (CUDA only).
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Models: vig-t, vig-s, vig-b (comma-separated).
    #[arg(long, default_value = "vig-t,vig-s,vig-b", value_delimiter = ',')]
    models: Vec<String>,
    /// Image sides (comma-separated).
    #[arg(long, default_value = "224,512,1024", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Inference batch per size, in the order of --sizes.
    #[arg(long, default_value = "128,32,8", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Training batch per size, in the order of --sizes.
    #[arg(long, default_value = "128,32,8", value_delimiter = ',')]
    train_batch: Vec<usize>,
    /// Modes: infer, train (comma-separated).
    #[arg(long, default_value = "infer,train", value_delimiter = ',')]
    modes: Vec<String>,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// After timing, run one more iteration with every kernel launch and GEMM bracketed by CUDA
    /// events and print where its time goes, summed per kernel (the top 20; all of them in the
    /// JSON). The events add a little time between launches.
    #[arg(long)]
    profile: bool,
}

/// One measurement.
#[cfg(feature = "cuda")]
#[derive(Serialize, Debug, Clone)]
struct Entry {
    model: String,
    params: usize,
    mode: String,
    image: usize,
    tokens: usize,
    batch: usize,
    ms_per_iter: f64,
    images_per_s: f64,
    peak_gib: f64,
    /// Why the measurement did not run (out of memory, ...), or empty.
    error: String,
    /// With --profile: (kernel or `gemm MxNxK`, launches, total ms) of one iteration, largest
    /// first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile: Vec<(String, usize, f64)>,
}

/// `gla bench vig`.
#[cfg(feature = "cuda")]
pub fn run(a: &Args) -> Result<bool> {
    use anyhow::Context;
    use gla_model::vig::VigConfig;
    if a.device != Device::Cuda {
        anyhow::bail!("gla bench vig runs on CUDA only (--device cuda)");
    }
    a.device.ensure_built()?;
    if a.batch.len() != a.sizes.len() || a.train_batch.len() != a.sizes.len() {
        anyhow::bail!("--batch and --train-batch need one value per --sizes entry");
    }
    let cuda = gla_cuda::Cuda::new().context("opening the CUDA device")?;
    println!("device: {} ({}); bf16; {} warm-up + {} timed iterations", cuda.name(), cuda.arch(), a.warmup, a.reps);
    let mut rows = Vec::new();
    for name in &a.models {
        let config = VigConfig::preset(name).with_context(|| format!("unknown model {name} (vig-t, vig-s, vig-b)"))?;
        for (i, &size) in a.sizes.iter().enumerate() {
            for mode in &a.modes {
                let train = match mode.as_str() {
                    "infer" => false,
                    "train" => true,
                    m => anyhow::bail!("unknown mode {m} (infer, train)"),
                };
                let batch = if train { a.train_batch[i] } else { a.batch[i] };
                let e = measure(&cuda, name, &config, size, batch, train, (a.warmup, a.reps, a.profile));
                println!(
                    "{:<6} {:<5} {:>5}px {:>5} tok  batch {:>4}  {:>9.2} ms  {:>9.1} img/s  peak {:>6.2} GiB {}",
                    e.model, e.mode, e.image, e.tokens, e.batch, e.ms_per_iter, e.images_per_s, e.peak_gib, e.error
                );
                print!("{}", crate::bench::format_profile(&e.profile, e.ms_per_iter));
                rows.push(e);
            }
        }
    }
    if let Some(path) = &a.json {
        let report = serde_json::json!({
            "unix_time": crate::bench::unix_time(), "device": cuda.name(), "arch": cuda.arch(), "dtype": "bf16",
            "warmup": a.warmup, "reps": a.reps, "results": rows,
        });
        crate::bench::write_report(path, &report)?;
    }
    Ok(rows.iter().all(|r| r.error.is_empty()))
}

/// One model, size, batch and mode: a fresh model and buffers, the pool's peak reset first (the
/// previous run's buffers are freed by then).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn measure(
    cuda: &std::sync::Arc<gla_cuda::Cuda>,
    name: &str,
    config: &gla_model::vig::VigConfig,
    size: usize,
    batch: usize,
    train: bool,
    (warmup, reps, profile): (usize, usize, bool),
) -> Entry {
    use gla_model::vig::gpu::GpuVigModel;
    use gla_model::vig::{Shape, VigConfig, VigModel};
    let config = VigConfig { drop_path_rate: 0.0, ..config.clone() };
    let mut e = Entry {
        model: name.into(),
        params: 0,
        mode: if train { "train" } else { "infer" }.into(),
        image: size,
        tokens: 0,
        batch,
        ms_per_iter: f64::NAN,
        images_per_s: f64::NAN,
        peak_gib: f64::NAN,
        error: String::new(),
        profile: Vec::new(),
    };
    let body = |e: &mut Entry| -> Result<()> {
        let host = VigModel::new(config, 0)?;
        e.params = host.num_params();
        let grid = Shape::new(&host.dims, batch, size, size)?.grid;
        e.tokens = grid.0 * grid.1;
        let _ = cuda.sync();
        gla_cuda::weights::reset_peak_pool(cuda);
        let mut model = if train { GpuVigModel::new(cuda.clone(), &host)? } else { GpuVigModel::new_inference(cuda.clone(), &host)? };
        drop(host);
        let mut acts = model.acts(batch, size, size, train)?;
        let mut rng = gla_model::Rng::new(1);
        let images: Vec<f32> = (0..batch * 3 * size * size).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
        let labels: Vec<u32> = (0..batch).map(|_| rng.below(1000) as u32).collect();
        model.upload(&mut acts, &images)?;
        let adamw = gla_model::optim::AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
        let mut iter = |model: &mut GpuVigModel| -> Result<()> {
            if train {
                model.forward_resident(&mut acts, Some(&labels), 0.1)?;
                model.zero_grads()?;
                model.backward(&mut acts)?;
                model.adamw_step(&adamw, 1e-4, 5.0)?;
            } else {
                model.forward_resident(&mut acts, None, 0.0)?;
            }
            Ok(())
        };
        for _ in 0..warmup {
            iter(&mut model)?;
        }
        cuda.sync()?;
        let t0 = std::time::Instant::now();
        for _ in 0..reps.max(1) {
            iter(&mut model)?;
        }
        cuda.sync()?;
        let s = t0.elapsed().as_secs_f64();
        e.ms_per_iter = 1e3 * s / reps.max(1) as f64;
        e.images_per_s = (batch * reps.max(1)) as f64 / s;
        e.peak_gib = gla_cuda::weights::peak_pool_bytes(cuda) as f64 / (1u64 << 30) as f64;
        if profile {
            let ((), recs) = gla_cuda::runtime::profile(cuda, || iter(&mut model))?;
            e.profile = gla_cuda::runtime::profile_totals(&recs);
        }
        Ok(())
    };
    if let Err(err) = body(&mut e) {
        e.error = format!("{err:#}");
    }
    e
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: &Args) -> Result<bool> {
    a.device.ensure_built()?;
    anyhow::bail!("this gla was built without the `cuda` feature")
}
