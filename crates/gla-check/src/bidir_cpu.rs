//! The bidirectional scan's CPU rows: its case table ([`crate::bidir::cases`]) on the f32 oracle
//! and the chunked (both schedules) and fused paths against the f64 oracle, and the typed-error
//! rows.

use gla_core::bidir::{BidirInputs, BidirOp, BidirProblem, BidirSpec};
use gla_core::{Error, Result};
use gla_cpu::{BidirChunked, BidirFused, BidirNaive, Chunked, Schedule};

use crate::bidir::{cases, run_table, BidirPath, BIDIR_SEED};
use crate::delta_cpu::{error_row, Expect};
use crate::row::Row;
use crate::runner::Storage;
use crate::tol;

const SEQ: BidirChunked = BidirChunked { gla: Chunked { schedule: Schedule::PerSequence } };
const PAR: BidirChunked = BidirChunked { gla: Chunked { schedule: Schedule::PerChunk } };
const FUSED: BidirFused = BidirFused { long: SEQ };

/// The table (cases whose name contains `filter`) on the CPU's f32 paths, then the error rows.
///
/// # Errors
/// An invalid case spec, or the f64 oracle failing.
pub fn rows(filter: Option<&str>) -> Result<Vec<Row>> {
    let path = |label, op: &'static dyn BidirOp<f32>| BidirPath { label, storage: Storage::F32, op, tol: tol::CPU_F32 };
    let paths = [
        path("cpu-bidir-naive", &BidirNaive),
        path("cpu-bidir-chunk-seq", &SEQ),
        path("cpu-bidir-chunk-par", &PAR),
        path("cpu-bidir-fused", &FUSED),
    ];
    let mut out = Vec::new();
    run_table(&cases(), BIDIR_SEED, filter, &paths, &mut out)?;
    let mut errs = Vec::new();
    error_rows(&[("cpu-bidir-naive", &BidirNaive), ("cpu-bidir-chunk", &SEQ), ("cpu-bidir-fused", &FUSED)], &mut errs);
    out.extend(errs.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok(out)
}

/// The typed-error rows: the contract's refusals (a zero dim, bad cu_seqlens), then on every
/// path of `ops` a positive and a NaN gate in each direction, a short tensor, and a NaN or short
/// `do`. Also the GPU's (gla-check's cuda rows).
pub fn error_rows(ops: &[(&'static str, &dyn BidirOp<f32>)], out: &mut Vec<Row>) {
    let base = BidirSpec::new(1, 8, 2, 4, 4);
    out.push(error_row(
        "bidir/error-zero-dim",
        "contract",
        BidirProblem::new(BidirSpec { v: 0, ..base.clone() }),
        (|e| matches!(e, Error::ZeroDim { .. }), "ZeroDim"),
    ));
    out.push(error_row(
        "bidir/error-cu-seqlens",
        "contract",
        BidirProblem::new(BidirSpec { cu_seqlens: Some(vec![0, 5, 3, 8]), ..base.clone() }),
        (|e| matches!(e, Error::CuSeqlens { .. }), "CuSeqlens"),
    ));
    let p = BidirProblem::new(base).expect("a valid spec");
    let good = vec![0.1f32; p.qk_len()];
    let gate = vec![-0.1f32; p.qk_len()];
    let short = vec![0.1f32; p.qk_len() - 1];
    let mut pos = gate.clone();
    pos[7] = 0.25;
    let mut nan = gate.clone();
    nan[3] = f32::NAN;
    let bad_gate: Expect = (|e| matches!(e, Error::BadGate { .. }), "BadGate");
    let shape: Expect = (|e| matches!(e, Error::ShapeMismatch { .. }), "ShapeMismatch");
    let non_finite: Expect = (|e| matches!(e, Error::NonFinite { .. }), "NonFinite");
    let x = BidirInputs { q: &good, k: &good, v: &good, gf: &gate, gb: &gate };
    for &(label, op) in ops {
        out.push(error_row("bidir/error-positive-gf", label, op.forward(&p, &BidirInputs { gf: &pos, ..x }), bad_gate));
        out.push(error_row("bidir/error-positive-gb", label, op.forward(&p, &BidirInputs { gb: &pos, ..x }), bad_gate));
        out.push(error_row("bidir/error-nan-gb", label, op.backward(&p, &BidirInputs { gb: &nan, ..x }, &good), bad_gate));
        out.push(error_row("bidir/error-nan-q", label, op.forward(&p, &BidirInputs { q: &nan, ..x }), non_finite));
        out.push(error_row("bidir/error-short-k", label, op.forward(&p, &BidirInputs { k: &short, ..x }), shape));
        out.push(error_row("bidir/error-nan-do", label, op.backward(&p, &x, &nan), non_finite));
        out.push(error_row("bidir/error-short-do", label, op.backward(&p, &x, &short), shape));
    }
}
