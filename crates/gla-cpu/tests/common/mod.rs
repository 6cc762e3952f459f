//! Helpers shared by the gla-cpu integration tests.
#![allow(dead_code)]

use gla_check::cases::{compare, CaseData};
use gla_core::op::GlaOp;
use gla_core::{Forward, Grads, Inputs};
use gla_cpu::Naive;

/// The f64 oracle's forward and backward of a case.
pub fn reference(d: &CaseData) -> (Forward<f64>, Grads<f64>) {
    let x = d.inputs();
    let fwd = Naive.forward(&d.problem, &x, true).unwrap();
    let bwd = Naive.backward(&d.problem, &x, &d.grads_in()).unwrap();
    (fwd, bwd)
}

pub fn inputs(d: &CaseData) -> Inputs<'_, f64> {
    d.inputs()
}

/// Runs `op` in f32 on the case and returns `(tensor name, relative RMSE vs reference)` rows.
pub fn errors_f32(op: &dyn GlaOp<f32>, d: &CaseData, reference: &(Forward<f64>, Grads<f64>)) -> Vec<(&'static str, f64)> {
    let f = d.to_f32();
    let fwd = op.forward(&d.problem, &f.inputs(), true).unwrap();
    let bwd = op.backward(&d.problem, &f.inputs(), &f.grads_in()).unwrap();
    let got = compare(&fwd, &bwd, &reference.0, &reference.1);
    assert_eq!(bwd.dg.is_some(), reference.1.dg.is_some(), "dg presence differs");
    assert_eq!(bwd.dh0.is_some(), reference.1.dh0.is_some(), "dh0 presence differs");
    got
}
