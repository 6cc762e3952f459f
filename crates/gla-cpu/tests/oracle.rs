//! The oracle's backward against central finite differences in f64, on small shapes covering
//! every gate kind, an initial state and packed varlen input.

mod common;

use gla_check::cases::{Case, CaseData};
use gla_core::op::GlaOp;
use gla_core::{GateKind, Inputs, ProblemSpec};
use gla_cpu::Naive;

/// `L = <do, o> + <dht, S_T>` at the given inputs.
fn loss(d: &CaseData, x: &Inputs<'_, f64>) -> f64 {
    let f = Naive.forward(&d.problem, x, true).unwrap();
    let a: f64 = f.o.iter().zip(&d.d_o).map(|(a, b)| a * b).sum();
    let b: f64 = f.ht.unwrap().iter().zip(&d.dht).map(|(a, b)| a * b).sum();
    a + b
}

/// Central difference of the loss along every element of one input tensor.
fn numeric_grad(d: &CaseData, which: usize) -> Vec<f64> {
    let eps = 1e-6;
    let len = [d.q.len(), d.k.len(), d.v.len(), d.g.len(), d.h0.len()][which];
    (0..len)
        .map(|i| {
            let at = |delta: f64| {
                let mut e = d.clone();
                let t = match which {
                    0 => &mut e.q,
                    1 => &mut e.k,
                    2 => &mut e.v,
                    3 => &mut e.g,
                    _ => &mut e.h0,
                };
                t[i] += delta;
                loss(&e, &common::inputs(&e))
            };
            (at(eps) - at(-eps)) / (2.0 * eps)
        })
        .collect()
}

fn check(case: Case) {
    let d = CaseData::generate(&case, 42).unwrap();
    let (_, grads) = common::reference(&d);
    let analytic: [Option<&Vec<f64>>; 5] = [Some(&grads.dq), Some(&grads.dk), Some(&grads.dv), grads.dg.as_ref(), grads.dh0.as_ref()];
    for (which, name) in ["dq", "dk", "dv", "dg", "dh0"].iter().enumerate() {
        let num = numeric_grad(&d, which);
        match analytic[which] {
            Some(a) => {
                let err = gla_check::cases::rel_rmse(a, &num);
                assert!(err < 1e-7, "{}: {name} vs finite differences: rel-rmse {err:e}", case.name);
            }
            None => assert!(num.is_empty(), "{}: {name} missing", case.name),
        }
    }
}

fn case(name: &str, t: usize, gate: GateKind, cu: Option<Vec<usize>>, h0: bool) -> Case {
    let b = if cu.is_some() { 1 } else { 2 };
    Case { name: name.into(), spec: ProblemSpec { b, t, h: 2, k: 3, v: 4, gate, scale: None, cu_seqlens: cu }, gate_scale: 1.0, h0 }
}

#[test]
fn oracle_backward_matches_finite_differences_per_key_gate() {
    check(case("perkey", 5, GateKind::PerKey, None, true));
}

#[test]
fn oracle_backward_matches_finite_differences_per_head_gate() {
    check(case("perhead", 4, GateKind::PerHead, None, true));
}

#[test]
fn oracle_backward_matches_finite_differences_no_gate() {
    check(case("nogate", 4, GateKind::None, None, false));
}

#[test]
fn oracle_backward_matches_finite_differences_varlen() {
    check(case("varlen", 7, GateKind::PerKey, Some(vec![0, 3, 3, 7]), true));
}
