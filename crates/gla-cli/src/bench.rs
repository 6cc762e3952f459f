//! `gla bench ops`: time the GLA op on the CPU against the f32 GEMM peak measured in the same run,
//! or on CUDA (`--device cuda`, through `gla_cuda::bench`: CUDA events, median of `--reps`, with
//! GB/s, TFLOP/s and the distance to the HBM floor; `--json FILE` for bench/gla_vs_fla.sh).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use gla_check::cases::{logsigmoid, Rng};
use gla_core::op::GlaOp;
use gla_core::{Backward, GateKind, Inputs, Problem, ProblemSpec};
use gla_cpu::{Chunked, FusedRecurrent};
use serde::Serialize;

use crate::Device;

/// Seconds since the Unix epoch, stamped into every benchmark report.
pub(crate) fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The top of a kernel profile (`--profile` of `gla bench vig` and `gla bench train`:
/// `gla_cuda::runtime::profile_totals`) as indented lines, with the timed iteration's `ms` for
/// scale; empty without one.
#[cfg(feature = "cuda")]
pub(crate) fn format_profile(p: &[(String, usize, f64)], ms: f64) -> String {
    if p.is_empty() {
        return String::new();
    }
    let total: f64 = p.iter().map(|x| x.2).sum();
    let mut s = format!("    profile: {total:.2} ms in {} launches (timed iteration {ms:.2} ms)\n", p.iter().map(|x| x.1).sum::<usize>());
    for (name, n, t) in p.iter().take(20) {
        s += &format!("    {name:<44} {n:>5}x {t:>9.3} ms {:>5.1}%\n", 100.0 * t / total);
    }
    s
}

/// Writes a benchmark's JSON report atomically and says where.
pub(crate) fn write_report(path: &std::path::Path, report: &impl serde::Serialize) -> Result<()> {
    gla_core::io::write_atomic(path, serde_json::to_string_pretty(report)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
#[derive(clap::Args)]
pub struct OpsArgs {
    /// Device to time on.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Problem shape `B,T,H,K,V` (repeatable). Default: 1,8192,4,128,128 on the CPU; on CUDA the
    /// shapes of record (bf16, H=16, K=V=128, B*T=65536, T in 2048, 8192, 32768) and fla's README
    /// shape 8,2048,32,256,256 (K=V=256: the chunked kernels' split launches, `chunk-wide`).
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<[usize; 5]>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn parse_shape(s: &str) -> Result<[usize; 5], String> {
    let v: Vec<usize> =
        s.split(',').map(|x| x.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|e| format!("`{s}`: {e}; expected B,T,H,K,V"))?;
    <[usize; 5]>::try_from(v).map_err(|v| format!("`{s}` has {} numbers; expected 5: B,T,H,K,V", v.len()))
}

#[derive(Serialize)]
struct Entry {
    shape: String,
    pass: &'static str,
    ms: f64,
    gflops: f64,
    /// median rate of the GEMM products run right before each timed call
    gemm_gflops: f64,
    /// median over calls of (op GFLOP/s / the GEMM GFLOP/s just before it), %
    pct_gemm_peak: f64,
}

#[derive(Serialize)]
struct Report {
    unix_time: u64,
    /// how `pct_gemm_peak` was measured (records before d06f11d: one best-of-6 GEMM peak at the
    /// start of the run)
    method: &'static str,
    device: String,
    threads: usize,
    gemm_f32_peak_gflops: f64,
    results: Vec<Entry>,
}

/// One f32 product `1536^3` on all threads through the same gemm crate the CPU paths use;
/// returns its GFLOP/s.
fn gemm_once(a: &[f32], c: &mut [f32], n: usize) -> f64 {
    let s = Instant::now();
    // SAFETY: a is n x n and c is n x n, both row-major and live for the call; c does not alias a.
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            a.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    2.0 * (n * n * n) as f64 / s.elapsed().as_secs_f64() / 1e9
}

/// Times `f` against the GEMM in alternation: each of `reps` rounds runs one GEMM product, then
/// `f` once (after one untimed warm-up of each). This machine's speed drifts by 20-40% within
/// seconds (a shared VM), so a peak measured once at the start and an op timed later give ratios
/// anywhere from 25% to 50% for the same code; a GEMM run right before each op call sees the same
/// conditions. Returns the median op time (ms), the median GEMM rate (GFLOP/s) and the median
/// over rounds of `op GFLOP/s / GEMM GFLOP/s` for `flops` (%).
fn time_vs_gemm(reps: usize, flops: f64, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    let n = 1536;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    gemm_once(&a, &mut c, n);
    f()?;
    let (mut ms, mut peak, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps.max(1) {
        let g = gemm_once(&a, &mut c, n);
        let s = Instant::now();
        f()?;
        let t = s.elapsed().as_secs_f64() * 1e3;
        ms.push(t);
        peak.push(g);
        ratio.push(100.0 * flops / t / 1e6 / g);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((med(&mut ms), med(&mut peak), med(&mut ratio)))
}

pub fn ops(a: &OpsArgs) -> Result<bool> {
    a.device.ensure_built()?;
    if a.device == Device::Cuda {
        return ops_cuda(a);
    }
    let shapes = if a.shape.is_empty() { vec![[1, 8192, 4, 128, 128]] } else { a.shape.clone() };
    let threads = rayon::current_num_threads();
    let cpu = cpu_name();
    println!("device: cpu ({cpu}), {threads} threads; each timed call follows an f32 GEMM (1536^3) whose rate is its reference");
    let mut results = Vec::new();
    for [b, t, h, k, v] in shapes {
        let p = Problem::new(ProblemSpec { b, t, h, k, v, gate: GateKind::PerKey, scale: None, cu_seqlens: None })
            .with_context(|| format!("shape {b},{t},{h},{k},{v}"))?;
        let mut rng = Rng::new(1);
        let mut draw = |n: usize, f: &dyn Fn(&mut Rng) -> f64| -> Vec<f32> { (0..n).map(|_| f(&mut rng) as f32).collect() };
        let (q, kk, vv) = (draw(p.qk_len(), &|r| r.normal()), draw(p.qk_len(), &|r| r.normal()), draw(p.v_len(), &|r| r.normal()));
        let g = draw(p.g_len(), &|r| logsigmoid(r.normal()).max(-5.0));
        let d_o = draw(p.v_len(), &|r| r.normal());
        let x = Inputs { q: &q, k: &kk, v: &vv, g: Some(&g), h0: None };
        let (ffl, bfl) = p.chunk_flops();
        let shape = format!("{b}x{t}x{h}x{k}x{v}");
        let fwd = time_vs_gemm(a.reps, ffl, || Chunked::default().forward(&p, &x, false).map(drop).map_err(Into::into))?;
        let fb = time_vs_gemm(a.reps, ffl + bfl, || {
            Chunked::default().forward(&p, &x, false)?;
            Chunked::default().backward(&p, &x, &Backward { d_o: &d_o, dht: None })?;
            Ok(())
        })?;
        // the recurrent path does 4KV flops per token and head (update + read), not the chunk count
        let rec_fl = 4.0 * (p.rows() * h * k * v) as f64;
        let rec = time_vs_gemm(a.reps.min(3), rec_fl, || FusedRecurrent.forward(&p, &x, false).map(drop).map_err(Into::into))?;
        for (pass, (ms, gemm_gflops, pct), fl) in
            [("chunk fwd", fwd, ffl), ("chunk fwd+bwd", fb, ffl + bfl), ("recurrent fwd", rec, rec_fl)]
        {
            results.push(Entry { shape: shape.clone(), pass, ms, gflops: fl / ms / 1e6, gemm_gflops, pct_gemm_peak: pct });
        }
    }
    println!("{:<22} {:<15} {:>10} {:>10} {:>12} {:>11}", "shape BxTxHxKxV", "pass", "ms", "GFLOP/s", "GEMM GFLOP/s", "% of GEMM");
    for e in &results {
        println!("{:<22} {:<15} {:>10.2} {:>10.1} {:>12.1} {:>10.1}%", e.shape, e.pass, e.ms, e.gflops, e.gemm_gflops, e.pct_gemm_peak);
    }
    let peak = results.iter().map(|e| e.gemm_gflops).fold(0.0, f64::max);
    if let Some(path) = &a.json {
        let unix_time = unix_time();
        let method = "interleaved: each timed call follows one 1536^3 f32 GEMM; pct_gemm_peak is the median over calls of op GFLOP/s / that GEMM's GFLOP/s; ms and gemm_gflops are medians of their own";
        let report = Report { unix_time, method, device: format!("cpu: {cpu}"), threads, gemm_f32_peak_gflops: peak, results };
        write_report(path, &report)?;
    }
    Ok(true)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(feature = "cuda")]
#[derive(Serialize)]
struct CudaEntry {
    shape: [usize; 5],
    pass: &'static str,
    kernel: &'static str,
    ms: f64,
    gbs: f64,
    tflops: f64,
    floor_ms: f64,
    x_floor: f64,
}

#[cfg(feature = "cuda")]
#[derive(Serialize)]
struct CudaReport {
    unix_time: u64,
    device: String,
    arch: String,
    hbm_bytes_per_s: f64,
    reps: usize,
    results: Vec<CudaEntry>,
}

/// Measures the card's HBM rate (`gla_cuda::bench::hbm_rate`, the ceiling of the floor columns)
/// and prints the table's device line; returns the rate, bytes per second.
#[cfg(feature = "cuda")]
fn device_line(cuda: &gla_cuda::Cuda, reps: usize) -> Result<f64> {
    let hbm = gla_cuda::bench::hbm_rate(cuda).context("measuring the card's HBM rate (a 1 GiB device copy)")?;
    println!("device: {} ({}); HBM floor at {:.2} TB/s (device copy); median of {reps} reps", cuda.name(), cuda.arch(), hbm / 1e12);
    Ok(hbm)
}

/// `gla bench ops --device cuda`: bf16, CUDA events, median of `reps` after a warm-up; the
/// shapes of record (B*T = 65536, H = 16, K = V = 128, T in {2048, 8192, 32768}) and fla's
/// README shape (8 x 2048 x 32, K = V = 256) by default (`gla_cuda::bench::default_shapes`).
#[cfg(feature = "cuda")]
fn ops_cuda(a: &OpsArgs) -> Result<bool> {
    use gla_cuda::bench::{bench_ops, default_shapes, format_rows};
    let cuda = gla_cuda::Cuda::new().context("opening the CUDA device")?;
    let shapes = if a.shape.is_empty() { default_shapes() } else { a.shape.clone() };
    let hbm = device_line(&cuda, a.reps)?;
    let rows = bench_ops(&cuda, &shapes, a.reps, false, true).context("timing the CUDA ops")?;
    print!("{}", format_rows(&rows, hbm));
    if let Some(path) = &a.json {
        let unix_time = unix_time();
        let results = rows
            .iter()
            .map(|r| CudaEntry {
                shape: r.shape,
                pass: r.pass,
                kernel: r.kernel,
                ms: r.ms,
                gbs: r.gbs(),
                tflops: r.tflops(),
                floor_ms: r.floor_ms(hbm),
                x_floor: r.x_floor(hbm),
            })
            .collect();
        let report =
            CudaReport { unix_time, device: cuda.name(), arch: cuda.arch().to_string(), hbm_bytes_per_s: hbm, reps: a.reps, results };
        write_report(path, &report)?;
    }
    Ok(true)
}

#[cfg(not(feature = "cuda"))]
fn ops_cuda(_: &OpsArgs) -> Result<bool> {
    // ensure_built has already refused this; kept for the types
    anyhow::bail!("this gla was built without the `cuda` feature")
}

#[derive(clap::Args)]
pub struct DeltaArgs {
    /// Device to time on (the delta-rule ops run on CUDA only).
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Problem shape `B,T,H,K,V` (repeatable). Default: the shapes of record (bf16, H=16,
    /// K=V=128, B*T=65536, T in 2048, 8192, 32768).
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<[usize; 5]>,
    /// Which ops: `delta` (DeltaNet), `gdn` (Gated DeltaNet), comma-separated.
    #[arg(long, default_value = "delta,gdn")]
    ops: String,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also write the results as JSON to this file (read by bench/delta_vs_fla.py).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also print each launch's time in one forward+backward and in one forward (CUDA events per launch).
    #[arg(long)]
    stages: bool,
}

#[cfg(feature = "cuda")]
#[derive(Serialize)]
struct DeltaEntry {
    op: &'static str,
    shape: [usize; 5],
    pass: &'static str,
    kernel: &'static str,
    ms: f64,
    gbs: f64,
    tflops: f64,
    floor_ms: f64,
    x_floor: f64,
}

/// `gla bench delta`: the delta-rule ops on CUDA (`gla_cuda::bench::bench_delta`).
#[cfg(feature = "cuda")]
pub fn delta(a: &DeltaArgs) -> Result<bool> {
    use gla_cuda::bench::{bench_delta, default_delta_shapes, delta_stages, format_delta_rows};
    if a.device != Device::Cuda {
        anyhow::bail!("gla bench delta runs on CUDA only (--device cuda)");
    }
    a.device.ensure_built()?;
    let mut ops = Vec::new();
    for op in a.ops.split(',').map(str::trim) {
        ops.push(match op {
            "delta" => "delta",
            "gdn" => "gdn",
            _ => anyhow::bail!("--ops: unknown op {op:?} (delta, gdn)"),
        });
    }
    let cuda = gla_cuda::Cuda::new().context("opening the CUDA device")?;
    let shapes = if a.shape.is_empty() { default_delta_shapes() } else { a.shape.clone() };
    let hbm = device_line(&cuda, a.reps)?;
    if gla_cuda::runtime::delta_precision()? == gla_cuda::runtime::DeltaPrecision::Bf16 {
        println!("delta chunk kernels on one bf16 plane (GLA_DELTA_PRECISION=bf16: fla's storage precision)");
    }
    let rows = bench_delta(&cuda, &shapes, a.reps, &ops).context("timing the delta ops")?;
    print!("{}", format_delta_rows(&rows, hbm));
    if a.stages {
        for &shape in &shapes {
            for op in &ops {
                print!("{}", delta_stages(&cuda, shape, op).context("timing the delta launches")?);
            }
        }
    }
    if let Some(path) = &a.json {
        let unix_time = unix_time();
        let results: Vec<DeltaEntry> = rows
            .iter()
            .map(|r| DeltaEntry {
                op: r.op,
                shape: r.row.shape,
                pass: r.row.pass,
                kernel: r.row.kernel,
                ms: r.row.ms,
                gbs: r.row.gbs(),
                tflops: r.row.tflops(),
                floor_ms: r.row.floor_ms(hbm),
                x_floor: r.row.x_floor(hbm),
            })
            .collect();
        let report = serde_json::json!({
            "unix_time": unix_time,
            "device": cuda.name(),
            "arch": cuda.arch(),
            "hbm_bytes_per_s": hbm,
            "reps": a.reps,
            "results": results,
        });
        write_report(path, &report)?;
    }
    Ok(true)
}

#[cfg(not(feature = "cuda"))]
pub fn delta(a: &DeltaArgs) -> Result<bool> {
    a.device.ensure_built()?;
    anyhow::bail!("this gla was built without the `cuda` feature")
}

#[derive(clap::Args)]
pub struct AttnArgs {
    /// Device to time on (the attention kernels run on CUDA only).
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Problem shape `B,T,H,D,DV` (repeatable). Default: the shapes of record (bf16, causal,
    /// H=16, D=DV=128, B*T=65536, T in 2048, 8192, 32768).
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<[usize; 5]>,
    /// Key/value heads (GQA). Default: H.
    #[arg(long)]
    h_kv: Option<usize>,
    /// Time non-causal attention.
    #[arg(long)]
    non_causal: bool,
    /// Decode steps over a full KV cache: batch sizes, comma-separated (with --decode-ctx;
    /// default 1,16; `none` skips the decode rows).
    #[arg(long, default_value = "1,16")]
    decode_batch: String,
    /// Decode cache lengths, comma-separated.
    #[arg(long, default_value = "2048,32768")]
    decode_ctx: String,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also write the results as JSON to this file (read by bench/attn_vs_sdpa.py).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `gla bench attn`: softmax attention on CUDA (`gla_cuda::bench::bench_attn`).
#[cfg(feature = "cuda")]
pub fn attn(a: &AttnArgs) -> Result<bool> {
    use gla_cuda::bench::{bench_attn, default_attn_shapes, format_rows};
    if a.device != Device::Cuda {
        anyhow::bail!("gla bench attn runs on CUDA only (--device cuda)");
    }
    a.device.ensure_built()?;
    let list = |s: &str, what: &str| -> Result<Vec<usize>> {
        if s == "none" {
            return Ok(Vec::new());
        }
        s.split(',').map(|x| x.trim().parse::<usize>().with_context(|| format!("{what}: {x:?} is not a count"))).collect()
    };
    let (batches, ctxs) = (list(&a.decode_batch, "--decode-batch")?, list(&a.decode_ctx, "--decode-ctx")?);
    let decode: Vec<[usize; 2]> = batches.iter().flat_map(|&n| ctxs.iter().map(move |&c| [n, c])).collect();
    let cuda = gla_cuda::Cuda::new().context("opening the CUDA device")?;
    let shapes = if a.shape.is_empty() { default_attn_shapes() } else { a.shape.clone() };
    let hbm = device_line(&cuda, a.reps)?;
    let rows = bench_attn(&cuda, &shapes, a.h_kv, !a.non_causal, &decode, a.reps).context("timing attention")?;
    print!("{}", format_rows(&rows, hbm));
    if let Some(path) = &a.json {
        let unix_time = unix_time();
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "shape": r.shape, "pass": r.pass, "kernel": r.kernel, "ms": r.ms,
                    "gbs": r.gbs(), "tflops": r.tflops(), "floor_ms": r.floor_ms(hbm), "x_floor": r.x_floor(hbm),
                })
            })
            .collect();
        let report = serde_json::json!({
            "unix_time": unix_time,
            "device": cuda.name(),
            "arch": cuda.arch(),
            "hbm_bytes_per_s": hbm,
            "causal": !a.non_causal,
            "h_kv": a.h_kv,
            "reps": a.reps,
            "results": results,
        });
        write_report(path, &report)?;
    }
    Ok(true)
}

#[cfg(not(feature = "cuda"))]
pub fn attn(a: &AttnArgs) -> Result<bool> {
    a.device.ensure_built()?;
    anyhow::bail!("this gla was built without the `cuda` feature")
}

#[derive(clap::Args)]
pub struct BidirArgs {
    /// Device to time on (CUDA only).
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Problem shape `B,T,H,K,V` (repeatable). Default: ViG's (64 images of 196, 1024, 4096
    /// patches, 3 / 6 / 12 heads of 32 keys and 64 values; ViG-T's batches 128,196,3,32,64 and
    /// 8,4096,3,32,64) and the record shape 32,2048,16,128,128.
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<[usize; 5]>,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also write the results as JSON to this file (read by bench/bidir_vs_fla.py).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also time each launch of one fused forward+backward per shape (CUDA events around each
    /// launch): where the time goes.
    #[arg(long)]
    stages: bool,
}

/// `gla bench bidir`: the bidirectional scan on CUDA (`gla_cuda::bidir::bench`).
#[cfg(feature = "cuda")]
pub fn bidir(a: &BidirArgs) -> Result<bool> {
    use gla_cuda::bidir::bench::{bench_bidir, bidir_stages, default_bidir_shapes, format_bidir_rows};
    if a.device != Device::Cuda {
        anyhow::bail!("gla bench bidir runs on CUDA only (--device cuda)");
    }
    a.device.ensure_built()?;
    let cuda = gla_cuda::Cuda::new().context("opening the CUDA device")?;
    let shapes = if a.shape.is_empty() { default_bidir_shapes() } else { a.shape.clone() };
    let hbm = device_line(&cuda, a.reps)?;
    let rows = bench_bidir(&cuda, &shapes, a.reps).context("timing the bidirectional scan")?;
    print!("{}", format_bidir_rows(&rows, hbm));
    if a.stages {
        for &shape in &shapes {
            print!("{}", bidir_stages(&cuda, shape).context("timing the bidirectional scan's launches")?);
        }
    }
    if let Some(path) = &a.json {
        let unix_time = unix_time();
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "shape": r.row.shape, "pass": r.row.pass, "kernel": r.row.kernel, "ms": r.row.ms,
                    "gbs": r.row.gbs(), "tflops": r.row.tflops(), "floor_ms": r.row.floor_ms(hbm),
                    "x_floor": r.row.x_floor(hbm), "speedup": r.speedup,
                })
            })
            .collect();
        let report = serde_json::json!({
            "unix_time": unix_time, "device": cuda.name(), "arch": cuda.arch(), "hbm_bytes_per_s": hbm, "reps": a.reps,
            "results": results,
        });
        write_report(path, &report)?;
    }
    Ok(true)
}

#[cfg(not(feature = "cuda"))]
pub fn bidir(a: &BidirArgs) -> Result<bool> {
    a.device.ensure_built()?;
    anyhow::bail!("this gla was built without the `cuda` feature")
}
