//! The attention CPU rows: the attention case table ([`crate::attn::cases`]) on the naive f32
//! oracle, the tiled path and the KV-cache decode step (stepped token by token, forward only)
//! against the f64 oracle on the same f32-rounded inputs; and the typed-error rows.

use gla_core::{AttnForward, AttnInputs, AttnOp, AttnProblem, AttnSpec, Error, Result};
use gla_cpu::{AttnCache, AttnNaive, AttnTiled};

use crate::attn::{cases, AttnCaseData};
use crate::cases::rel_rmse;
use crate::delta_cpu::{error_row, Expect};
use crate::row::Row;
use crate::tol;

/// Seed of the attention table's first case (case `i` draws from `ATTN_SEED + i`).
pub const ATTN_SEED: u64 = 3000;

/// The forward as the decode step computes it: every sequence fed one token at a time through an
/// [`AttnCache`], the outputs scattered back to `[B,T,H,DV]` / `[B,T,H]`.
///
/// # Errors
/// The cache's errors.
pub fn stepped(p: &AttnProblem, x: &AttnInputs<'_, f32>) -> Result<AttnForward<f32>> {
    let (h, hk, d, dv) = (p.h(), p.h_kv(), p.d(), p.dv());
    let mut cache = AttnCache::<f32>::new(p)?;
    let (mut o, mut lse) = (vec![0f32; p.o_len()], vec![0f32; p.lse_len()]);
    let longest = (0..p.n()).map(|n| p.seq(n).len()).max().unwrap_or(0);
    for t in 0..longest {
        let active: Vec<usize> = (0..p.n()).filter(|&n| p.seq(n).len() > t).collect();
        let gather =
            |src: &[f32], w: usize| active.iter().flat_map(|&n| src[(p.seq(n).start + t) * w..][..w].to_vec()).collect::<Vec<f32>>();
        let f = cache.step(&active, &gather(x.q, h * d), &gather(x.k, hk * d), &gather(x.v, hk * dv))?;
        for (a, &n) in active.iter().enumerate() {
            let row = p.seq(n).start + t;
            o[row * h * dv..][..h * dv].copy_from_slice(&f.o[a * h * dv..][..h * dv]);
            lse[row * h..][..h].copy_from_slice(&f.lse[a * h..][..h]);
        }
    }
    Ok(AttnForward { o, lse })
}

fn lse_err(a: &[f32], b: &[f32]) -> f64 {
    rel_rmse(a, &b.iter().map(|&v| f64::from(v)).collect::<Vec<_>>())
}

/// The table (cases whose name contains `filter`) on every CPU path, then the typed-error rows.
///
/// # Errors
/// An invalid case spec, or the f64 oracle failing (the paths' own failures are `error` rows).
pub fn rows(filter: Option<&str>) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    let tol = tol::CPU_F32;
    for (i, case) in cases().iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let data = AttnCaseData::generate(case, ATTN_SEED + i as u64)?;
        let p = &data.problem;
        let [q, k, v, d_o] = &data.wide;
        let xw = AttnInputs { q, k, v };
        let rf = AttnOp::<f64>::forward(&AttnNaive, p, &xw)?;
        let rb = AttnOp::<f64>::backward(&AttnNaive, p, &xw, &rf, d_o)?;
        let [q, k, v, d_o] = &data.narrow;
        let x = AttnInputs { q, k, v };
        let ops: [(&'static str, &dyn AttnOp<f32>); 2] = [("naive", &AttnNaive), ("tiled", &AttnTiled)];
        let name = &case.name;
        for (label, op) in ops {
            let run = op.forward(p, &x).and_then(|f| op.backward(p, &x, &f, d_o).map(|g| (f, g)));
            match run {
                Ok((f, g)) => {
                    out.push(Row::new(name, label, "f32", "o", rel_rmse(&f.o, &rf.o), tol));
                    out.push(Row::new(name, label, "f32", "lse", lse_err(&f.lse, &rf.lse), tol));
                    out.push(Row::new(name, label, "f32", "dq", rel_rmse(&g.dq, &rb.dq), tol));
                    out.push(Row::new(name, label, "f32", "dk", rel_rmse(&g.dk, &rb.dk), tol));
                    out.push(Row::new(name, label, "f32", "dv", rel_rmse(&g.dv, &rb.dv), tol));
                }
                Err(e) => out.push(Row::failed(name, label, "f32", tol, e)),
            }
        }
        if p.causal() {
            match stepped(p, &x) {
                Ok(f) => {
                    out.push(Row::new(name, "decode", "f32", "o", rel_rmse(&f.o, &rf.o), tol));
                    out.push(Row::new(name, "decode", "f32", "lse", lse_err(&f.lse, &rf.lse), tol));
                }
                Err(e) => out.push(Row::failed(name, "decode", "f32", tol, e)),
            }
        }
    }
    let mut errs = Vec::new();
    error_rows(&mut errs);
    out.extend(errs.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok(out)
}

/// The typed-error rows: the contract's refusals (window 0, H not a multiple of H_KV, a
/// two-sided window, bad cu_seqlens), then bad shapes and NaN on every path, and the decode
/// step's refusals.
pub fn error_rows(out: &mut Vec<Row>) {
    let bad_arg: Expect = (|e| matches!(e, Error::BadArg { .. }), "BadArg");
    let base = AttnSpec::new(1, 8, 4, 4);
    for (case, spec, want) in [
        ("attn/error-window0", AttnSpec { window: Some(0), ..base.clone() }, bad_arg),
        ("attn/error-h-not-multiple", AttnSpec { h_kv: 3, ..base.clone() }, bad_arg),
        ("attn/error-window-noncausal", AttnSpec { window: Some(2), causal: false, ..base.clone() }, bad_arg),
        (
            "attn/error-cu-seqlens",
            AttnSpec { cu_seqlens: Some(vec![0, 5, 3, 8]), ..base.clone() },
            (|e| matches!(e, Error::CuSeqlens { .. }), "CuSeqlens"),
        ),
        ("attn/error-zero-dim", AttnSpec { d: 0, ..base.clone() }, (|e| matches!(e, Error::ZeroDim { .. }), "ZeroDim")),
    ] {
        out.push(error_row(case, "contract", AttnProblem::new(spec), want));
    }
    let p = AttnProblem::new(base.clone()).expect("a valid spec");
    let good = vec![0.1f32; p.q_len()];
    let short = vec![0.1f32; p.q_len() - 1];
    let mut nan = good.clone();
    nan[5] = f32::NAN;
    let shape: Expect = (|e| matches!(e, Error::ShapeMismatch { .. }), "ShapeMismatch");
    let non_finite: Expect = (|e| matches!(e, Error::NonFinite { .. }), "NonFinite");
    let x = AttnInputs { q: &good, k: &good, v: &good };
    let ops: [(&'static str, &dyn AttnOp<f32>); 2] = [("naive", &AttnNaive), ("tiled", &AttnTiled)];
    for (label, op) in ops {
        out.push(error_row("attn/error-short-k", label, op.forward(&p, &AttnInputs { k: &short, ..x }), shape));
        out.push(error_row("attn/error-nan-v", label, op.forward(&p, &AttnInputs { v: &nan, ..x }), non_finite));
        let f = op.forward(&p, &x).expect("valid inputs");
        out.push(error_row("attn/error-nan-do", label, op.backward(&p, &x, &f, &nan), non_finite));
        out.push(error_row("attn/error-short-do", label, op.backward(&p, &x, &f, &short), shape));
    }
    let nc = AttnProblem::new(AttnSpec { causal: false, ..base }).expect("a valid spec");
    out.push(error_row(
        "attn/error-decode-noncausal",
        "decode",
        AttnCache::<f32>::new(&nc),
        (|e| matches!(e, Error::Unsupported { .. }), "Unsupported"),
    ));
    let mut cache = AttnCache::<f32>::new(&p).expect("causal");
    let one = vec![0.1f32; 4 * 4];
    out.push(error_row("attn/error-decode-bad-seq", "decode", cache.step(&[1], &one, &one, &one), bad_arg));
    out.push(error_row("attn/error-decode-short-v", "decode", cache.step(&[0], &one, &one, &one[..3]), shape));
}
