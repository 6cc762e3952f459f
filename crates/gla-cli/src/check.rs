//! `gla check`: the front end of the test kit (gla-check): the shared case table on a device's
//! paths against the f64 oracle (on the CPU also the delta-rule and attention tables and their error rows), and on
//! the GPU the extra op rows and the language-model rows.
//! One table format and one JSON format for every device; exit status 1 when a row fails.

use std::time::Instant;

use anyhow::Result;
use gla_check::row::{failed, format_table, to_json, Row};

use crate::Device;

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
    /// GPU: leave out the two slowest rows kinds, T = 65536 and the tensor of more than 2^31
    /// elements (most of a full GPU check's time), e.g. to check a kernel change quickly.
    #[arg(long)]
    quick: bool,
    /// GPU: fla's own fixtures (`tools/fla_fixtures.py`), one directory per model; the GPU
    /// model's loss, logits and gradients are checked against fla's. Default: the repository's
    /// `crates/gla-model/tests/fixtures/fla` when run from its root (skipped with a note
    /// elsewhere); a directory given here must hold fixtures.
    #[arg(long)]
    fla_fixtures: Option<std::path::PathBuf>,
}

/// Runs the rows of `a.device`, prints them, writes the JSON; `Ok(false)` when a row failed.
pub fn run(a: &Args) -> Result<bool> {
    a.device.ensure_built()?;
    let start = Instant::now();
    let (device, rows) = match a.device {
        Device::Cpu => {
            // the GLA table, then the delta-rule and attention tables and their typed-error rows
            let mut rows = gla_check::cpu::rows(a.filter.as_deref())?;
            rows.extend(gla_check::delta_cpu::rows(a.filter.as_deref())?);
            rows.extend(gla_check::attn_cpu::rows(a.filter.as_deref())?);
            rows.extend(gla_check::bidir_cpu::rows(a.filter.as_deref())?);
            (format!("cpu ({} threads)", rayon::current_num_threads()), rows)
        }
        Device::Cuda => run_cuda(a)?,
    };
    if let (Some(f), true) = (&a.filter, rows.is_empty()) {
        let mut names: Vec<String> = gla_check::cases::cases().iter().map(|c| c.name.clone()).collect();
        names.extend(gla_check::delta::cases().iter().map(|c| c.name.clone()));
        names.extend(gla_check::attn::cases().iter().map(|c| c.name.clone()));
        names.extend(gla_check::bidir::cases().iter().map(|c| c.name.clone()));
        anyhow::bail!("--filter {f:?} matches no case: no row was checked (the op cases: {})", names.join(", "));
    }
    println!("device: {device}");
    print!("{}", format_table(&rows));
    let n_failed = failed(&rows);
    println!(
        "{} rows checked in {:.1} s: {} passed, {} failed",
        rows.len(),
        start.elapsed().as_secs_f64(),
        rows.len() - n_failed,
        n_failed
    );
    if let Some(path) = &a.json {
        std::fs::write(path, to_json(&rows)?)?;
    }
    Ok(n_failed == 0)
}

/// The GPU's rows: the op table and its extra cases (unless `--model-only`), the model rows, and
/// fla's fixtures.
#[cfg(feature = "cuda")]
fn run_cuda(a: &Args) -> Result<(String, Vec<Row>)> {
    use gla_check::cuda::{check, model::fla_fixture_check, CheckOptions};
    let opts = if a.model_only {
        CheckOptions { long: false, huge: false, repeat: false, ops: false, model: true }
    } else if a.filter.as_deref().is_some_and(|f| ["delta", "attn", "bidir", "vig", "nn"].iter().any(|p| f.starts_with(p))) {
        // one op family's rows only: no model or fla-fixture row is named after a family
        CheckOptions { model: false, ..CheckOptions::default() }
    } else {
        CheckOptions::default()
    };
    let opts = if a.quick { CheckOptions { long: false, huge: false, ..opts } } else { opts };
    let cuda = gla_cuda::Cuda::new()?;
    let mut device = format!("{} ({})", cuda.name(), cuda.arch());
    if gla_cuda::runtime::delta_precision()? == gla_cuda::runtime::DeltaPrecision::Bf16 {
        device += "; delta chunk kernels on one bf16 plane (GLA_DELTA_PRECISION=bf16)";
    }
    let filter = a.filter.as_deref();
    let mut rows = check(&cuda, opts, filter)?;
    let default_dir = std::path::PathBuf::from("crates/gla-model/tests/fixtures/fla");
    let dir = a.fla_fixtures.clone().unwrap_or(default_dir);
    let mut fla = Vec::new();
    let (n_fixtures, skipped) = if opts.model { fla_fixture_check(&cuda, &dir, &mut fla)? } else { (0, Vec::new()) };
    for s in &skipped {
        eprintln!("note: fla fixture not run on the GPU: {s}");
    }
    if opts.model && n_fixtures + skipped.len() == 0 {
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
    rows.extend(fla.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok((device, rows))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args) -> Result<(String, Vec<Row>)> {
    anyhow::bail!("this gla was built without the `cuda` feature")
}
