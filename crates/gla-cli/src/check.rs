//! `gla check`: the shared case table on a device against the f64 oracle.

use std::time::Instant;

use anyhow::Result;
use gla_core::op::GlaOp;
use gla_core::testing::{cases, compare, CaseData};
use gla_cpu::{Chunked, FusedRecurrent, Naive, Schedule};
use serde::Serialize;

use crate::Device;

/// Tolerance of f32 CPU paths vs the f64 oracle (DESIGN.md section 4).
const TOL_CPU_F32: f64 = 1e-5;

#[derive(clap::Args)]
pub struct Args {
    /// Device to check.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Only cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// GPU: only the language-model checks (GPU model against the CPU model and fla's
    /// fixtures), not the op table.
    #[arg(long)]
    model_only: bool,
    /// GPU: fla's own fixtures (`tools/fla_fixtures.py`), one directory per model; the GPU
    /// model's loss, logits and gradients are checked against fla's. Default: the repository's
    /// `crates/gla-model/tests/fixtures/fla` when run from its root (skipped with a note
    /// elsewhere); a directory given here must hold fixtures.
    #[arg(long)]
    fla_fixtures: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Row {
    case: String,
    path: &'static str,
    tensor: &'static str,
    rel_rmse: f64,
    tol: f64,
    pass: bool,
}

pub fn run(a: &Args) -> Result<bool> {
    a.device.ensure_built()?;
    if a.device == Device::Cuda {
        return run_cuda(a);
    }
    let (seq, par) = (Chunked { schedule: Schedule::PerSequence }, Chunked { schedule: Schedule::PerChunk });
    let ops: [&dyn GlaOp<f32>; 4] = [&Naive, &FusedRecurrent, &seq, &par];
    let start = Instant::now();
    let mut rows = Vec::new();
    if let Some(f) = &a.filter {
        if !cases().iter().any(|c| c.name.contains(f.as_str())) {
            let names: Vec<String> = cases().iter().map(|c| c.name.clone()).collect();
            anyhow::bail!("--filter {f:?} matches no case (the cases: {})", names.join(", "));
        }
    }
    for (i, case) in cases().iter().enumerate() {
        if a.filter.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        let d = CaseData::generate(case, 1000 + i as u64)?;
        let p = &d.problem;
        let rf = Naive.forward(p, &d.inputs(), true)?;
        let rb = Naive.backward(p, &d.inputs(), &d.grads_in())?;
        let f = d.to_f32();
        for op in ops {
            let fwd = op.forward(p, &f.inputs(), true)?;
            let bwd = op.backward(p, &f.inputs(), &f.grads_in())?;
            for (tensor, err) in compare(&fwd, &bwd, &rf, &rb) {
                let pass = err <= TOL_CPU_F32;
                rows.push(Row { case: case.name.clone(), path: op.name(), tensor, rel_rmse: err, tol: TOL_CPU_F32, pass });
            }
        }
    }
    print_table(&rows);
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!(
        "{} cases x {} paths, {} tensors checked in {:.1} s: {} passed, {} failed",
        rows.iter().map(|r| &r.case).collect::<std::collections::BTreeSet<_>>().len(),
        ops.len(),
        rows.len(),
        start.elapsed().as_secs_f64(),
        rows.len() - failed,
        failed
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(failed == 0)
}

/// One line per (case, path): the worst tensor and whether all passed; failures in full.
fn print_table(rows: &[Row]) {
    println!("{:<26} {:<14} {:>10} {:<6} result", "case", "path", "worst", "tensor");
    let mut i = 0;
    while i < rows.len() {
        let j = rows[i..].iter().position(|r| r.case != rows[i].case || r.path != rows[i].path).map_or(rows.len(), |p| i + p);
        let group = &rows[i..j];
        let worst = group.iter().max_by(|a, b| a.rel_rmse.total_cmp(&b.rel_rmse)).expect("non-empty group");
        let ok = group.iter().all(|r| r.pass);
        println!("{:<26} {:<14} {:>10.2e} {:<6} {}", worst.case, worst.path, worst.rel_rmse, worst.tensor, if ok { "ok" } else { "FAIL" });
        for r in group.iter().filter(|r| !r.pass) {
            println!("    {} rel-rmse {:.3e} > {:.0e}", r.tensor, r.rel_rmse, r.tol);
        }
        i = j;
    }
}

#[cfg(feature = "cuda")]
fn run_cuda(a: &Args) -> Result<bool> {
    let start = Instant::now();
    let mut opts = gla_cuda::check::CheckOptions::default();
    if a.model_only {
        opts = gla_cuda::check::CheckOptions { long: false, huge: false, repeat: false, ops: false, model: true };
    }
    let cuda = gla_cuda::Cuda::new()?;
    let device = format!("{} ({})", cuda.name(), cuda.arch());
    let mut rows = gla_cuda::check::check(&cuda, opts)?;
    let default_dir = std::path::PathBuf::from("crates/gla-model/tests/fixtures/fla");
    let dir = a.fla_fixtures.clone().unwrap_or(default_dir);
    let n_fixtures = if opts.model { gla_cuda::model_check::fla_fixture_check(&cuda, &dir, &mut rows)? } else { 0 };
    if opts.model && n_fixtures == 0 {
        if a.fla_fixtures.is_some() {
            anyhow::bail!(
                "--fla-fixtures {}: no fixture directories (config.json, model.safetensors, fixture.safetensors) found",
                dir.display()
            );
        }
        eprintln!(
            "note: no fla fixtures under {} (run from the repository root or pass --fla-fixtures DIR); GPU-vs-fla rows skipped",
            dir.display()
        );
    }
    if let Some(f) = &a.filter {
        rows.retain(|r| r.case.contains(f.as_str()));
        if rows.is_empty() {
            anyhow::bail!("--filter {f:?} matches no row");
        }
    }
    println!("device: {device}");
    print!("{}", gla_cuda::check::format_table(&rows));
    let failed = rows.iter().filter(|r| !r.pass).count();
    println!("{} rows checked in {:.1} s: {} passed, {} failed", rows.len(), start.elapsed().as_secs_f64(), rows.len() - failed, failed);
    if let Some(path) = &a.json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"case": r.case, "path": format!("{}-{}", r.algo, r.dtype), "tensor": r.tensor, "rel_rmse": r.rel_rmse, "tol": r.tol, "pass": r.pass, "note": r.note}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(failed == 0)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args) -> Result<bool> {
    anyhow::bail!("this gla was built without the `cuda` feature")
}
