//! The delta-rule CPU rows: the delta case table ([`crate::delta::cases`]) on every CPU path of
//! the family in f32 against the f64 oracle, and the typed-error rows.
//!
//! As for GLA ([`crate::runner`]), the oracle runs on the inputs as the f32 paths see them (each
//! rounded to f32, then widened), so a row measures the path's own arithmetic. The one-token
//! decode step ([`gla_cpu::delta_step`]) is checked through [`Stepped`], which steps through every
//! sequence of a case token by token (forward rows only).

use gla_core::delta::{DeltaGate, DeltaOp};
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, DeltaSpec, Error, Forward, Result};
use gla_cpu::delta::{delta_step, DeltaChunked, DeltaNaive, DeltaRecurrent};

use crate::delta::{cases, compare, DeltaCase, DeltaCaseData, DeltaCaseDataF32};
use crate::row::Row;
use crate::tol;

/// Seed of the delta table's first case (case `i` draws from `DELTA_SEED + i`).
pub const DELTA_SEED: u64 = 2000;

/// One path of [`run_table`]: an f32 delta op, its rows' label and tolerance.
pub struct DeltaPath<'a> {
    /// The rows' path label.
    pub label: &'static str,
    /// The op.
    pub op: &'a dyn DeltaOp<f32>,
    /// The tolerance of every tensor ([`crate::tol`]).
    pub tol: f64,
    /// Whether its backward is checked.
    pub backward: bool,
}

/// A case's data rounded to f32, with the f64 oracle's forward (with the final state) and
/// backward on exactly those values.
pub struct Rounded {
    /// The f32 inputs and upstream gradients.
    pub data: DeltaCaseDataF32,
    /// The oracle's forward.
    pub fwd: Forward<f64>,
    /// The oracle's backward.
    pub bwd: DeltaGrads<f64>,
}

impl Rounded {
    /// Rounds `d` to f32 and runs the f64 oracle on the rounded values.
    ///
    /// # Errors
    /// The oracle's errors (an invalid case).
    pub fn new(d: &DeltaCaseData) -> Result<Self> {
        let data = d.to_f32();
        let w = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let wide = DeltaCaseData {
            problem: d.problem.clone(),
            q: w(&data.q),
            k: w(&data.k),
            v: w(&data.v),
            beta: w(&data.beta),
            g: w(&data.g),
            a_log: w(&data.a_log),
            dt_bias: w(&data.dt_bias),
            h0: w(&data.h0),
            d_o: w(&data.d_o),
            dht: w(&data.dht),
        };
        let fwd = DeltaNaive.forward(&d.problem, &wide.inputs(), true)?;
        let bwd = DeltaNaive.backward(&d.problem, &wide.inputs(), &wide.grads_in())?;
        Ok(Self { data, fwd, bwd })
    }
}

/// Runs `path` on one case: its forward and (when checked) backward rows, or a failing `error`
/// row when it fails.
pub fn path_rows(case: &str, p: &DeltaProblem, r: &Rounded, path: &DeltaPath<'_>, out: &mut Vec<Row>) {
    let x = r.data.inputs();
    let fwd = match path.op.forward(p, &x, true) {
        Ok(f) => f,
        Err(e) => return out.push(Row::failed(case, path.label, "f32", path.tol, e)),
    };
    if !path.backward {
        out.push(Row::new(case, path.label, "f32", "o", crate::cases::rel_rmse(&fwd.o, &r.fwd.o), path.tol));
        let ht = fwd.ht.as_deref().map_or(f64::INFINITY, |h| crate::cases::rel_rmse(h, r.fwd.ht.as_deref().unwrap_or(&[])));
        out.push(Row::new(case, path.label, "f32", "ht", ht, path.tol));
        return;
    }
    let bwd = match path.op.backward(p, &x, &r.data.grads_in()) {
        Ok(b) => b,
        Err(e) => return out.push(Row::failed(case, path.label, "f32", path.tol, e)),
    };
    for (tensor, err) in compare(&fwd, &bwd, &r.fwd, &r.bwd) {
        out.push(Row::new(case, path.label, "f32", tensor, err, path.tol));
    }
}

/// Runs the cases of `cases` whose name contains `filter` (all without one) on `paths`, case
/// `i` drawn from seed `seed0 + i`; the oracle runs once per case.
///
/// # Errors
/// An invalid case spec or the oracle failing (never the paths: they give `error` rows).
pub fn run_table(cases: &[DeltaCase], seed0: u64, filter: Option<&str>, paths: &[DeltaPath<'_>], out: &mut Vec<Row>) -> Result<()> {
    for (i, case) in cases.iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let d = DeltaCaseData::generate(case, seed0 + i as u64)?;
        let r = Rounded::new(&d)?;
        for path in paths {
            path_rows(&case.name, &d.problem, &r, path, out);
        }
    }
    Ok(())
}

/// The decode step as a forward: every sequence of the problem advanced token by token through
/// [`delta_step`], the sequences that still have tokens batched together at each step (so a
/// padded batch and packed varlen input both run). Its backward is [`Error::Unsupported`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stepped;

impl DeltaOp<f32> for Stepped {
    fn name(&self) -> &'static str {
        "cpu-delta-step"
    }

    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, output_final_state: bool) -> Result<Forward<f32>> {
        // the whole input first, so that errors name the caller's indices (each step validates
        // its own gathered token again)
        x.validate(DeltaOp::<f32>::name(self), p)?;
        let (h, hv, kd, vd, kv) = (p.h(), p.hv(), p.k(), p.v(), p.k() * p.v());
        let mut states = x.h0.map_or_else(|| vec![0.0f32; p.state_len()], <[f32]>::to_vec);
        let mut o = vec![f32::NAN; p.v_len()];
        let longest = (0..p.n()).map(|n| p.seq(n).len()).max().unwrap_or(0);
        for s in 0..longest {
            let active: Vec<usize> = (0..p.n()).filter(|&n| p.seq(n).len() > s).collect();
            let rows: Vec<usize> = active.iter().map(|&n| p.seq(n).start + s).collect();
            let gather = |t: &[f32], d: usize| -> Vec<f32> { rows.iter().flat_map(|&r| t[r * d..(r + 1) * d].to_vec()).collect() };
            let (q, k, v) = (gather(x.q, h * kd), gather(x.k, h * kd), gather(x.v, hv * vd));
            let beta = gather(x.beta, hv);
            let g = x.g.map(|g| gather(g, hv));
            let mut spec = DeltaSpec::new(active.len(), 1, h, kd, vd, p.gate());
            (spec.hv, spec.scale, spec.l2_qk, spec.beta_sigmoid, spec.allow_neg_eigval) =
                (hv, Some(p.scale()), p.l2_qk(), p.beta_sigmoid(), p.allow_neg_eigval());
            let sp = DeltaProblem::new(spec)?;
            let mut st: Vec<f32> = active.iter().flat_map(|&n| states[n * hv * kv..(n + 1) * hv * kv].to_vec()).collect();
            let xs = DeltaInputs { q: &q, k: &k, v: &v, beta: &beta, g: g.as_deref(), a_log: x.a_log, dt_bias: x.dt_bias, h0: None };
            let out = delta_step(&sp, &mut st, &xs)?;
            for (b, (&n, &r)) in active.iter().zip(&rows).enumerate() {
                states[n * hv * kv..(n + 1) * hv * kv].copy_from_slice(&st[b * hv * kv..(b + 1) * hv * kv]);
                o[r * hv * vd..(r + 1) * hv * vd].copy_from_slice(&out[b * hv * vd..(b + 1) * hv * vd]);
            }
        }
        Ok(Forward { o, ht: output_final_state.then_some(states) })
    }

    fn backward(&self, _: &DeltaProblem, _: &DeltaInputs<'_, f32>, _: &Backward<'_, f32>) -> Result<DeltaGrads<f32>> {
        Err(Error::Unsupported { backend: "cpu-delta-step", what: "a backward (the decode step is forward only)".into() })
    }
}

/// The CPU's delta paths: the oracle in f32, the fused recurrent path, the chunked path (forward
/// and backward) and the decode step (forward), each with [`tol::CPU_F32`].
pub fn paths() -> Vec<DeltaPath<'static>> {
    let path = |op: &'static dyn DeltaOp<f32>, backward| DeltaPath { label: op.name(), op, tol: tol::CPU_F32, backward };
    vec![path(&DeltaNaive, true), path(&DeltaRecurrent, true), path(&DeltaChunked, true), path(&Stepped, false)]
}

/// The delta case table (cases whose name contains `filter`) on [`paths`], then the typed-error
/// rows ([`error_rows`]) whose case name contains `filter`.
///
/// # Errors
/// An invalid case spec (the paths' own failures are `error` rows).
pub fn rows(filter: Option<&str>) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    run_table(&cases(), DELTA_SEED, filter, &paths(), &mut out)?;
    let mut errs = Vec::new();
    error_rows(&mut errs);
    out.extend(errs.into_iter().filter(|r| filter.is_none_or(|f| r.case.contains(f))));
    Ok(out)
}

/// Whether an error is the expected kind: a predicate and its description.
pub(crate) type Expect = (fn(&Error) -> bool, &'static str);

/// One typed-error row: passes (error 0) when `got` is an error matching `want`, with the
/// message in the note; fails otherwise.
pub(crate) fn error_row<T>(case: &str, path: &'static str, got: Result<T>, want: Expect) -> Row {
    let (ok, note) = match got {
        Ok(_) => (false, format!("no error; expected {}", want.1)),
        Err(e) => ((want.0)(&e), if (want.0)(&e) { e.to_string() } else { format!("expected {}, got: {e}", want.1) }),
    };
    Row::new(case, path, "f32", "typed-error", if ok { 0.0 } else { f64::INFINITY }, tol::BITWISE).with_note(note)
}

/// The typed-error rows: bad shapes, a positive log-decay, NaN, beta out of range, the options
/// the contract refuses (`allow_neg_eigval` without the sigmoid, HV not a multiple of H), on
/// every path; and the decode step leaving its state unchanged on error.
pub fn error_rows(out: &mut Vec<Row>) {
    // the contract's own refusals (path-independent)
    let mut s = DeltaSpec::new(1, 4, 2, 3, 2, DeltaGate::None);
    s.allow_neg_eigval = true;
    out.push(error_row(
        "delta-error-negeig-without-sigmoid",
        "contract",
        DeltaProblem::new(s),
        (|e| matches!(e, Error::BadArg { key: "allow_neg_eigval", .. }), "BadArg allow_neg_eigval"),
    ));
    let mut s = DeltaSpec::new(1, 4, 2, 3, 2, DeltaGate::None);
    s.hv = 3;
    out.push(error_row(
        "delta-error-hv-not-multiple",
        "contract",
        DeltaProblem::new(s),
        (|e| matches!(e, Error::BadArg { key: "HV", .. }), "BadArg HV"),
    ));

    let mut spec = DeltaSpec::new(2, 5, 1, 3, 4, DeltaGate::LogDecay);
    spec.hv = 2;
    let Ok(p) = DeltaProblem::new(spec) else { return };
    let q = vec![0.5f32; p.qk_len()];
    let v = vec![0.5f32; p.v_len()];
    let beta = vec![0.5f32; p.beta_len()];
    let g = vec![-0.5f32; p.g_len()];
    let h0 = vec![0.0f32; p.state_len()];
    let d_o = vec![1.0f32; p.v_len()];
    let ok = DeltaInputs { q: &q, k: &q, v: &v, beta: &beta, g: Some(&g), a_log: None, dt_bias: None, h0: Some(&h0) };
    let short = vec![0.5f32; p.qk_len() - 1];
    let mut nan_v = v.clone();
    nan_v[7] = f32::NAN;
    let mut pos_g = g.clone();
    pos_g[3] = 0.25;
    let mut big_beta = beta.clone();
    big_beta[2] = 2.5;
    let bad_h0 = vec![0.0f32; p.state_len() + 2];
    let bad: [(&str, DeltaInputs<'_, f32>, Expect); 6] = [
        (
            "delta-error-short-k",
            DeltaInputs { k: &short, ..ok },
            (|e| matches!(e, Error::ShapeMismatch { tensor: "k", .. }), "ShapeMismatch k"),
        ),
        (
            "delta-error-missing-g",
            DeltaInputs { g: None, ..ok },
            (|e| matches!(e, Error::ShapeMismatch { tensor: "g", .. }), "ShapeMismatch g"),
        ),
        (
            "delta-error-bad-h0",
            DeltaInputs { h0: Some(&bad_h0), ..ok },
            (|e| matches!(e, Error::ShapeMismatch { tensor: "h0", .. }), "ShapeMismatch h0"),
        ),
        (
            "delta-error-nan-v",
            DeltaInputs { v: &nan_v, ..ok },
            (|e| matches!(e, Error::NonFinite { tensor: "v", index: 7, .. }), "NonFinite v at 7"),
        ),
        (
            "delta-error-positive-g",
            DeltaInputs { g: Some(&pos_g), ..ok },
            (|e| matches!(e, Error::BadGate { index: 3, .. }), "BadGate at 3"),
        ),
        (
            "delta-error-beta-above-2",
            DeltaInputs { beta: &big_beta, ..ok },
            (|e| matches!(e, Error::BadArg { key: "beta", .. }), "BadArg beta"),
        ),
    ];
    for path in paths() {
        for (case, x, want) in &bad {
            out.push(error_row(case, path.label, path.op.forward(&p, x, true), *want));
        }
        if path.backward {
            let short_do = Backward { d_o: &d_o[1..], dht: None };
            let want: Expect = (|e| matches!(e, Error::ShapeMismatch { tensor: "do", .. }), "ShapeMismatch do");
            out.push(error_row("delta-error-short-do", path.label, path.op.backward(&p, &ok, &short_do), want));
            let want: Expect = (|e| matches!(e, Error::BadGate { index: 3, .. }), "BadGate at 3");
            let x = DeltaInputs { g: Some(&pos_g), ..ok };
            out.push(error_row(
                "delta-error-positive-g-bwd",
                path.label,
                path.op.backward(&p, &x, &Backward { d_o: &d_o, dht: None }),
                want,
            ));
        }
    }

    // the decode step: a wrong state, a bad value; the state is unchanged after each
    let mut spec = DeltaSpec::new(2, 1, 1, 3, 4, DeltaGate::LogDecay);
    spec.hv = 2;
    let Ok(p1) = DeltaProblem::new(spec) else { return };
    let (q1, v1, b1) = (vec![0.5f32; p1.qk_len()], vec![0.5f32; p1.v_len()], vec![0.5f32; p1.beta_len()]);
    let g1 = vec![-0.1f32; p1.g_len()];
    let mut pos_g1 = g1.clone();
    pos_g1[1] = 0.5;
    let x1 = DeltaInputs { q: &q1, k: &q1, v: &v1, beta: &b1, g: Some(&g1), a_log: None, dt_bias: None, h0: None };
    let mut state = vec![0.25f32; p1.state_len() + 1];
    let before = state.clone();
    let r = delta_step(&p1, &mut state, &x1);
    let row = error_row(
        "delta-error-step-state-shape",
        "cpu-delta-step",
        r,
        (|e| matches!(e, Error::ShapeMismatch { tensor: "state", .. }), "ShapeMismatch state"),
    );
    out.push(unchanged(row, state == before));
    let x1 = DeltaInputs { g: Some(&pos_g1), ..x1 };
    let mut state = vec![0.25f32; p1.state_len()];
    let before = state.clone();
    let r = delta_step(&p1, &mut state, &x1);
    let row =
        error_row("delta-error-step-positive-g", "cpu-delta-step", r, (|e| matches!(e, Error::BadGate { index: 1, .. }), "BadGate at 1"));
    out.push(unchanged(row, state == before));
}

/// Fails `row` when the state changed.
fn unchanged(row: Row, same: bool) -> Row {
    if same {
        row
    } else {
        let note = format!("{}; the state changed", row.note);
        Row { rel_rmse: f64::INFINITY, pass: false, ..row }.with_note(note)
    }
}
