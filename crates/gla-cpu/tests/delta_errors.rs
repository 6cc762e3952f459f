//! Every kind of bad input to the delta-rule paths gets its typed error, from every CPU path, and
//! nothing panics; the decode step leaves its state unchanged on error.

use gla_check::delta_cpu::{error_rows, paths};
use gla_core::delta::DeltaGate;
use gla_core::{Backward, DeltaInputs, DeltaProblem, DeltaSpec, Error};
use gla_cpu::delta::delta_step;

/// The rows `gla check` prints: each bad input on each path returns the expected error.
#[test]
fn error_rows_all_pass() {
    let mut rows = Vec::new();
    error_rows(&mut rows);
    assert!(rows.len() > 20, "{} rows", rows.len());
    let failed: Vec<String> = rows.iter().filter(|r| !r.pass).map(|r| format!("{} {}: {}", r.case, r.path, r.note)).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The computed gate's own tensors: a missing `A_log`, a NaN `a`, a NaN `dt_bias`; a NaN `do`.
#[test]
fn computed_gate_and_upstream_errors() {
    let mut spec = DeltaSpec::new(1, 6, 1, 3, 2, DeltaGate::Computed);
    (spec.hv, spec.beta_sigmoid) = (2, true);
    let p = DeltaProblem::new(spec).unwrap();
    let q = vec![0.5f32; p.qk_len()];
    let v = vec![0.5f32; p.v_len()];
    let beta = vec![3.0f32; p.beta_len()]; // logits: any finite value is legal
    let a = vec![0.1f32; p.g_len()];
    let (a_log, dt) = (vec![0.0f32; 2], vec![0.5f32; 2]);
    let ok = DeltaInputs { q: &q, k: &q, v: &v, beta: &beta, g: Some(&a), a_log: Some(&a_log), dt_bias: Some(&dt), h0: None };
    let mut nan_a = a.clone();
    nan_a[5] = f32::NAN;
    let nan_dt = vec![0.5f32, f32::NAN];
    let mut nan_do = vec![1.0f32; p.v_len()];
    nan_do[3] = f32::NAN;
    for path in paths() {
        let op = path.op;
        assert!(op.forward(&p, &ok, true).is_ok(), "{}", op.name());
        let e = op.forward(&p, &DeltaInputs { a_log: None, ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { tensor: "A_log", .. }), "{}: {e:?}", op.name());
        let e = op.forward(&p, &DeltaInputs { g: Some(&nan_a), ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::NonFinite { tensor: "g", index: 5, .. }), "{}: {e:?}", op.name());
        let e = op.forward(&p, &DeltaInputs { dt_bias: Some(&nan_dt), ..ok }, false).unwrap_err();
        assert!(matches!(e, Error::NonFinite { tensor: "dt_bias", index: 1, .. }), "{}: {e:?}", op.name());
        if path.backward {
            let e = op.backward(&p, &ok, &Backward { d_o: &nan_do, dht: None }).unwrap_err();
            assert!(matches!(e, Error::NonFinite { tensor: "do", index: 3, .. }), "{}: {e:?}", op.name());
        }
    }
}

/// `delta_step` takes its state as an argument: an `h0` as well is an error, and so is a NaN in
/// the state; neither changes the state.
#[test]
fn delta_step_rejects_h0_and_a_bad_state() {
    let p = DeltaProblem::new(DeltaSpec::new(2, 1, 1, 3, 4, DeltaGate::None)).unwrap();
    let (q, v, beta) = (vec![0.5f32; p.qk_len()], vec![0.5f32; p.v_len()], vec![0.5f32; p.beta_len()]);
    let mut state = vec![0.25f32; p.state_len()];
    let h0 = state.clone();
    let x = DeltaInputs { q: &q, k: &q, v: &v, beta: &beta, g: None, a_log: None, dt_bias: None, h0: Some(&h0) };
    let e = delta_step(&p, &mut state, &x).unwrap_err();
    assert!(matches!(e, Error::BadArg { key: "h0", .. }), "{e:?}");
    assert_eq!(state, h0);
    state[9] = f32::INFINITY;
    let before = state.clone();
    let e = delta_step(&p, &mut state, &DeltaInputs { h0: None, ..x }).unwrap_err();
    assert!(matches!(e, Error::NonFinite { tensor: "h0", index: 9, .. }), "{e:?}");
    assert_eq!(state, before);
}
