//! The bidirectional scan's GPU rows (`gla check --device cuda`, `--filter bidir`): the bidir
//! case table ([`crate::bidir::cases`]) on [`CudaBidir`] (`bidir-fused`: bf16, the fused
//! kernels where the dispatch takes the shape (forward K <= 128; backward K <= 128, V <= 128,
//! ViG's K = 32 case included), the composed path elsewhere;
//! `bidir-composed`: the GLA op on each direction, bf16 and f32) against the f64 oracle on the inputs rounded as each path stores them, the typed-error
//! rows of the contract on the GPU op, and a repeat-run check (the largest bitwise difference of
//! three runs must be 0). Row case names are `bidir/...`.

use std::sync::Arc;

use gla_core::bidir::{BidirInputs, BidirOp};
use gla_cuda::{BidirAlgo, Cuda, CudaBidir, Result};

use crate::bidir::{cases, run_table, BidirCase, BidirCaseData, BidirPath, BIDIR_SEED};
use crate::bidir_cpu::error_rows;
use crate::row::Row;
use crate::runner::Storage;
use crate::tol;

/// The table on the GPU paths, then the error rows and the repeat check.
///
/// # Errors
/// [`gla_cuda::Error`] when a case cannot be set up.
pub fn check(cuda: &Arc<Cuda>, filter: Option<&str>, repeat: bool, out: &mut Vec<Row>) -> Result<()> {
    let fused = CudaBidir::new(cuda.clone(), BidirAlgo::Fused, true);
    let composed = CudaBidir::new(cuda.clone(), BidirAlgo::Composed, true);
    let composed32 = CudaBidir::new(cuda.clone(), BidirAlgo::Composed, false);
    let paths = [
        BidirPath { label: "bidir-fused", storage: Storage::Bf16, op: &fused, tol: tol::GPU_BF16 },
        BidirPath { label: "bidir-composed", storage: Storage::Bf16, op: &composed, tol: tol::GPU_BF16 },
        BidirPath { label: "bidir-composed", storage: Storage::F32, op: &composed32, tol: tol::GPU_F32 },
    ];
    let mut rows = Vec::new();
    run_table(&cases(), BIDIR_SEED, filter, &paths, &mut rows)?;
    error_rows(&[("bidir-fused", &fused)], &mut rows);
    if repeat {
        repeat_check(&fused, &mut rows)?;
    }
    out.extend(rows.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok(())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        if x.to_bits() == y.to_bits() {
            m
        } else {
            m.max(f64::from((x - y).abs())).max(if (x - y).is_nan() { f64::INFINITY } else { 0.0 })
        }
    })
}

fn repeat_check(op: &CudaBidir, out: &mut Vec<Row>) -> Result<()> {
    let case =
        BidirCase { name: "bidir/repeat-T1000-K64".into(), spec: gla_core::BidirSpec::new(2, 1000, 4, 64, 64), gate_scales: (16.0, 1.0) };
    let d = BidirCaseData::generate(&case, 99)?;
    let x: [Vec<f32>; 6] = d.x.clone().map(|t| Storage::Bf16.round(&t));
    let xi = BidirInputs { q: &x[0], k: &x[1], v: &x[2], gf: &x[3], gb: &x[4] };
    let once = || -> gla_core::Result<Vec<f32>> {
        let mut all = op.forward(&d.problem, &xi)?;
        let g = op.backward(&d.problem, &xi, &x[5])?;
        for t in [g.dq, g.dk, g.dv, g.dgf, g.dgb] {
            all.extend(t);
        }
        Ok(all)
    };
    match (once(), once(), once()) {
        (Ok(a), Ok(b), Ok(c)) => {
            out.push(Row::new(&case.name, "bidir-fused", "bf16", "repeat", max_abs_diff(&a, &b).max(max_abs_diff(&a, &c)), tol::BITWISE))
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => out.push(Row::failed(&case.name, "bidir-fused", "bf16", tol::BITWISE, e)),
    }
    Ok(())
}
