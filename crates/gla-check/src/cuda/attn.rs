//! Softmax attention's GPU rows (`gla check --device cuda`, `--filter attn`): the attention case
//! table ([`crate::attn::cases`]) plus a few longer GPU-only cases on [`CudaAttn`] (the flash
//! forward and backward, path `flash`; the forward as decode steps over a device KV cache, path
//! `decode`: every row of the forward rebuilt token by token, so the decode step's output equals
//! the forward's last row at every length) against the f64 oracle ([`AttnNaive`]) on the inputs
//! rounded to bf16 as the GPU stores them; and a repeat-run row (the largest bitwise difference
//! of three forward+backward runs of a GQA case must be 0: the group's dk / dv sums take a fixed
//! order, no atomics); then the GPU paths' typed-error rows ([`error_rows`]).
//!
//! Tolerance: [`tol::GPU_BF16`] for every tensor, the GLA bf16 rule: the kernels store o, dq, dk
//! and dv in bf16 (relative rounding 2^-9 per element) and round P and dS to bf16 for their
//! tensor-core products, all sums in f32; lse is f32 and lands far inside it (~1e-7), but a bug
//! still gives errors of order 1. The emulator measured at most 2.8e-3 on these shapes
//! (crates/gla-cuda/tools/emu, `build.py --attn`).

use std::sync::Arc;

use gla_core::{AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem, AttnSpec, Error};
use gla_cpu::AttnNaive;
use gla_cuda::{AttnOpAlgo, Cuda, CudaAttn, Result};

use crate::attn::{cases, AttnCase, AttnCaseData};
use crate::attn_cpu::ATTN_SEED;
use crate::cases::rel_rmse;
use crate::delta_cpu::{error_row, Expect};
use crate::row::Row;
use crate::runner::Storage;
use crate::tol;

use super::delta::max_abs_diff;

/// GPU-only cases: longer sequences than the CPU table runs (several key tiles per block, the
/// window skipping whole tiles), D = 128 causal and non-causal, with windows inside one key tile
/// of 128 (a warpgroup of the sm_90a forward skipping tiles its rows do not see), a zero and a
/// negative scale.
pub fn gpu_cases() -> Vec<AttnCase> {
    let s = |b, t, h, h_kv, d| AttnSpec { h_kv, dv: d, ..AttnSpec::new(b, t, h, d) };
    vec![
        AttnCase { name: "attn/gpu-t4096-window200-gqa4".into(), spec: AttnSpec { window: Some(200), ..s(1, 4096, 4, 1, 64) } },
        AttnCase { name: "attn/gpu-t1500-d128-b2".into(), spec: s(2, 1500, 2, 2, 128) },
        AttnCase { name: "attn/gpu-t1000-d128-noncausal-gqa2".into(), spec: AttnSpec { causal: false, ..s(1, 1000, 4, 2, 128) } },
        AttnCase {
            name: "attn/gpu-varlen-d128".into(),
            spec: AttnSpec { cu_seqlens: Some(vec![0, 0, 700, 701, 1300, 1300]), ..s(1, 1300, 2, 1, 128) },
        },
        AttnCase { name: "attn/gpu-t900-d128-window50-gqa2".into(), spec: AttnSpec { window: Some(50), ..s(1, 900, 4, 2, 128) } },
        AttnCase {
            name: "attn/gpu-varlen-d128-window100".into(),
            spec: AttnSpec { window: Some(100), cu_seqlens: Some(vec![0, 300, 301, 301, 800]), ..s(1, 800, 2, 2, 128) },
        },
        AttnCase { name: "attn/gpu-t300-d128-scale0".into(), spec: AttnSpec { scale: Some(0.0), ..s(1, 300, 2, 2, 128) } },
        AttnCase { name: "attn/gpu-t300-d128-negscale".into(), spec: AttnSpec { scale: Some(-0.1), ..s(2, 300, 2, 1, 128) } },
    ]
}

fn lse_err(a: &[f32], b: &[f32]) -> f64 {
    rel_rmse(a, &b.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
}

/// A case's inputs rounded to bf16 (as f32 for the op) and the oracle's results on them.
struct Case64 {
    x: [Vec<f32>; 4],
    rf: AttnForward<f64>,
    rb: AttnGrads<f64>,
}

fn prepare(p: &AttnProblem, d: &AttnCaseData) -> gla_core::Result<Case64> {
    let x = d.wide.clone().map(|w| Storage::Bf16.round(&w));
    let w: Vec<Vec<f64>> = x.iter().map(|v| v.iter().map(|&e| f64::from(e)).collect()).collect();
    let xw = AttnInputs { q: &w[0], k: &w[1], v: &w[2] };
    let rf = AttnOp::<f64>::forward(&AttnNaive, p, &xw)?;
    let rb = AttnOp::<f64>::backward(&AttnNaive, p, &xw, &rf, &w[3])?;
    Ok(Case64 { x, rf, rb })
}

fn run_case(cuda: &Arc<Cuda>, case: &AttnCase, seed: u64, out: &mut Vec<Row>) -> Result<()> {
    let data = AttnCaseData::generate(case, seed)?;
    let p = &data.problem;
    let c = prepare(p, &data)?;
    let [q, k, v, d_o] = &c.x;
    let x = AttnInputs { q, k, v };
    let (name, dtype, t) = (&case.name, "bf16", tol::GPU_BF16);
    let flash = CudaAttn::new(cuda.clone(), AttnOpAlgo::Flash);
    match flash.forward(p, &x).and_then(|f| flash.backward(p, &x, &f, d_o).map(|g| (f, g))) {
        Ok((f, g)) => {
            out.push(Row::new(name, "flash", dtype, "o", rel_rmse(&f.o, &c.rf.o), t));
            out.push(Row::new(name, "flash", dtype, "lse", lse_err(&f.lse, &c.rf.lse), t));
            out.push(Row::new(name, "flash", dtype, "dq", rel_rmse(&g.dq, &c.rb.dq), t));
            out.push(Row::new(name, "flash", dtype, "dk", rel_rmse(&g.dk, &c.rb.dk), t));
            out.push(Row::new(name, "flash", dtype, "dv", rel_rmse(&g.dv, &c.rb.dv), t));
        }
        Err(e) => out.push(Row::failed(name, "flash", dtype, t, e)),
    }
    if p.causal() {
        let dec = CudaAttn::new(cuda.clone(), AttnOpAlgo::Decode);
        match dec.forward(p, &x) {
            Ok(f) => {
                out.push(Row::new(name, "decode", dtype, "o", rel_rmse(&f.o, &c.rf.o), t));
                out.push(Row::new(name, "decode", dtype, "lse", lse_err(&f.lse, &c.rf.lse), t));
            }
            Err(e) => out.push(Row::failed(name, "decode", dtype, t, e)),
        }
    }
    Ok(())
}

/// The attention table and [`gpu_cases`] on the GPU paths; with `filter`, only the cases whose
/// name (`attn/<case>`) contains it.
///
/// # Errors
/// [`gla_cuda::Error`] when a case cannot be set up (never a path's failure: those are failing rows).
pub fn table_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) -> Result<()> {
    let table = cases().into_iter().enumerate().map(|(i, c)| (c, ATTN_SEED + i as u64));
    let extra = gpu_cases().into_iter().enumerate().map(|(i, c)| (c, ATTN_SEED + 100 + i as u64));
    for (case, seed) in table.chain(extra) {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        run_case(cuda, &case, seed, out)?;
    }
    let mut errs = Vec::new();
    error_rows(cuda, &mut errs);
    out.extend(errs.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok(())
}

/// The GPU paths' typed errors: head dims no kernel runs (D = 96), a decode group above the
/// kernel's 8 query heads per kv head, NaN input, a short do.
pub fn error_rows(cuda: &Arc<Cuda>, out: &mut Vec<Row>) {
    let unsupported: Expect = (|e| matches!(e, Error::Unsupported { .. }), "Unsupported");
    let flash = CudaAttn::new(cuda.clone(), AttnOpAlgo::Flash);
    let decode = CudaAttn::new(cuda.clone(), AttnOpAlgo::Decode);
    let run = |op: &CudaAttn, spec: AttnSpec| -> gla_core::Result<AttnForward<f32>> {
        let p = AttnProblem::new(spec)?;
        let (q, k, v) = (vec![0.1f32; p.q_len()], vec![0.1f32; p.k_len()], vec![0.1f32; p.v_len()]);
        op.forward(&p, &AttnInputs { q: &q, k: &k, v: &v })
    };
    out.push(error_row("attn/error-gpu-d96", "flash", run(&flash, AttnSpec::new(1, 8, 2, 96)), unsupported));
    out.push(error_row(
        "attn/error-gpu-decode-group16",
        "decode",
        run(&decode, AttnSpec { h_kv: 1, ..AttnSpec::new(1, 8, 16, 64) }),
        unsupported,
    ));
    let p = AttnProblem::new(AttnSpec::new(1, 8, 2, 64)).expect("a valid spec");
    let good = vec![0.1f32; p.q_len()];
    let mut nan = good.clone();
    nan[3] = f32::NAN;
    let x = AttnInputs { q: &good, k: &good, v: &good };
    out.push(error_row(
        "attn/error-gpu-nan-k",
        "flash",
        flash.forward(&p, &AttnInputs { k: &nan, ..x }),
        (|e| matches!(e, Error::NonFinite { .. }), "NonFinite"),
    ));
    let shape: Expect = (|e| matches!(e, Error::ShapeMismatch { .. }), "ShapeMismatch");
    out.push(error_row(
        "attn/error-gpu-short-do",
        "flash",
        flash.forward(&p, &x).and_then(|f| flash.backward(&p, &x, &f, &good[1..])),
        shape,
    ));
}

/// Three forward+backward runs of a GQA case (8 query heads per kv head, 3 key tiles, D = 128):
/// the largest bitwise difference must be 0.
///
/// # Errors
/// As [`table_check`].
pub fn repeat_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let case = AttnCase { name: "attn/repeat-t300-d128-gqa8".into(), spec: AttnSpec { h_kv: 1, ..AttnSpec::new(2, 300, 8, 128) } };
    let data = AttnCaseData::generate(&case, 77)?;
    let p = &data.problem;
    let x = data.wide.clone().map(|w| Storage::Bf16.round(&w));
    let xi = AttnInputs { q: &x[0], k: &x[1], v: &x[2] };
    let op = CudaAttn::new(cuda.clone(), AttnOpAlgo::Flash);
    let once = || -> gla_core::Result<Vec<f32>> {
        let f = op.forward(p, &xi)?;
        let g = op.backward(p, &xi, &f, &x[3])?;
        let mut all = f.o;
        all.extend(f.lse);
        for t in [g.dq, g.dk, g.dv] {
            all.extend(t);
        }
        Ok(all)
    };
    match (once(), once(), once()) {
        (Ok(a), Ok(b), Ok(c)) => {
            out.push(Row::new(&case.name, "flash", "bf16", "repeat", max_abs_diff(&a, &b).max(max_abs_diff(&a, &c)), tol::BITWISE))
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => out.push(Row::failed(&case.name, "flash", "bf16", tol::BITWISE, e)),
    }
    Ok(())
}
