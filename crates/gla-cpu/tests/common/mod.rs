//! Helpers shared by the gla-cpu integration tests.
#![allow(dead_code)]

use gla_core::op::GlaOp;
use gla_core::testing::{rel_rmse, to_f32, CaseData};
use gla_core::{Backward, Forward, Grads, Inputs};
use gla_cpu::Naive;

/// The f64 oracle's forward and backward of a case.
pub fn reference(d: &CaseData) -> (Forward<f64>, Grads<f64>) {
    let x = inputs(d);
    let fwd = Naive.forward(&d.problem, &x, true).unwrap();
    let bwd = Naive.backward(&d.problem, &x, &Backward { d_o: &d.d_o, dht: Some(&d.dht) }).unwrap();
    (fwd, bwd)
}

pub fn inputs(d: &CaseData) -> Inputs<'_, f64> {
    Inputs {
        q: &d.q,
        k: &d.k,
        v: &d.v,
        g: (!d.g.is_empty()).then_some(&d.g[..]),
        h0: (!d.h0.is_empty()).then_some(&d.h0[..]),
    }
}

/// Runs `op` in f32 on the case and returns `(tensor name, relative RMSE vs reference)` rows.
pub fn errors_f32(op: &dyn GlaOp<f32>, d: &CaseData, reference: &(Forward<f64>, Grads<f64>)) -> Vec<(&'static str, f64)> {
    let (q, k, v, g, h0) = (to_f32(&d.q), to_f32(&d.k), to_f32(&d.v), to_f32(&d.g), to_f32(&d.h0));
    let (d_o, dht) = (to_f32(&d.d_o), to_f32(&d.dht));
    let x = Inputs { q: &q, k: &k, v: &v, g: (!g.is_empty()).then_some(&g[..]), h0: (!h0.is_empty()).then_some(&h0[..]) };
    let fwd = op.forward(&d.problem, &x, true).unwrap();
    let bwd = op.backward(&d.problem, &x, &Backward { d_o: &d_o, dht: Some(&dht) }).unwrap();
    compare(&fwd, &bwd, reference)
}

/// Relative RMSE of every output against the reference.
pub fn compare<A: Copy + Into<f64>>(fwd: &Forward<A>, bwd: &Grads<A>, reference: &(Forward<f64>, Grads<f64>)) -> Vec<(&'static str, f64)> {
    let (rf, rb) = reference;
    let mut out = vec![
        ("o", rel_rmse(&fwd.o, &rf.o)),
        ("ht", rel_rmse(fwd.ht.as_deref().unwrap(), rf.ht.as_deref().unwrap())),
        ("dq", rel_rmse(&bwd.dq, &rb.dq)),
        ("dk", rel_rmse(&bwd.dk, &rb.dk)),
        ("dv", rel_rmse(&bwd.dv, &rb.dv)),
    ];
    assert_eq!(bwd.dg.is_some(), rb.dg.is_some(), "dg presence differs");
    if let (Some(a), Some(b)) = (&bwd.dg, &rb.dg) {
        out.push(("dg", rel_rmse(a, b)));
    }
    assert_eq!(bwd.dh0.is_some(), rb.dh0.is_some(), "dh0 presence differs");
    if let (Some(a), Some(b)) = (&bwd.dh0, &rb.dh0) {
        out.push(("dh0", rel_rmse(a, b)));
    }
    out
}
