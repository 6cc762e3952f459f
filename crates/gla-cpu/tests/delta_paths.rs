//! Every CPU delta-rule path on the delta case table against the f64 oracle (DESIGN.md section 4):
//! o, ht, dq, dk, dv, dbeta, dg, dA_log, ddt_bias, dh0 each within gla_check::tol::CPU_F32 in
//! f32; the same algorithms in f64 agree with the oracle to rounding (a check of their formulas
//! that f32 noise cannot hide); the decode step equals the recurrent forward bit for bit.

use gla_check::delta::{cases, DeltaCaseData};
use gla_check::delta_cpu::{self, DeltaPath, Rounded, Stepped, DELTA_SEED};
use gla_check::row::Row;
use gla_check::tol;
use gla_core::delta::DeltaOp;
use gla_cpu::delta::{DeltaChunked, DeltaNaive, DeltaRecurrent};

/// Runs the whole table on `op` and fails listing every failing row; prints the worst error per
/// tensor.
fn run_table(op: &'static dyn DeltaOp<f32>, backward: bool) {
    let path = DeltaPath { label: op.name(), op, tol: tol::CPU_F32, backward };
    let mut rows: Vec<Row> = Vec::new();
    delta_cpu::run_table(&cases(), DELTA_SEED, None, &[path], &mut rows).unwrap();
    let mut worst: Vec<(&str, f64, String)> = Vec::new();
    for r in &rows {
        match worst.iter_mut().find(|w| w.0 == r.tensor) {
            Some(w) if w.1 < r.rel_rmse => (w.1, w.2) = (r.rel_rmse, r.case.clone()),
            Some(_) => {}
            None => worst.push((r.tensor, r.rel_rmse, r.case.clone())),
        }
    }
    for (t, e, c) in &worst {
        eprintln!("{}: worst {t} {e:.3e} ({c})", op.name());
    }
    let failed: Vec<String> =
        rows.iter().filter(|r| !r.pass).map(|r| format!("{} {} {}: {:.3e} {}", r.path, r.case, r.tensor, r.rel_rmse, r.note)).collect();
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn naive_f32_matches_f64_oracle() {
    run_table(&DeltaNaive, true);
}

#[test]
fn recurrent_matches_oracle() {
    run_table(&DeltaRecurrent, true);
}

#[test]
fn chunked_matches_oracle() {
    run_table(&DeltaChunked, true);
}

#[test]
fn decode_steps_match_oracle() {
    run_table(&Stepped, false);
}

/// The fast algorithms in f64 against the f64 oracle: any difference in a formula shows far above
/// 1e-10, whatever f32 rounding would hide.
#[test]
fn f64_paths_agree_with_oracle_to_rounding() {
    for (i, case) in cases().iter().enumerate() {
        let d = DeltaCaseData::generate(case, DELTA_SEED + i as u64).unwrap();
        let (p, x, g) = (&d.problem, d.inputs(), d.grads_in());
        let rf = DeltaNaive.forward(p, &x, true).unwrap();
        let rb = DeltaNaive.backward(p, &x, &g).unwrap();
        for op in [&DeltaRecurrent as &dyn DeltaOp<f64>, &DeltaChunked] {
            let f = op.forward(p, &x, true).unwrap();
            let b = op.backward(p, &x, &g).unwrap();
            for (name, err) in gla_check::delta::compare(&f, &b, &rf, &rb) {
                assert!(err <= 1e-10, "{} {}: {name} rel-rmse {err:e}", op.name(), case.name);
            }
        }
    }
}

/// The decode step runs the recurrent forward's per-token code: stepping a case token by token
/// gives its output and final state bit for bit.
#[test]
fn decode_steps_equal_recurrent_forward_bitwise() {
    for (i, case) in cases().iter().enumerate().filter(|(_, c)| c.spec.t <= 200) {
        let d = DeltaCaseData::generate(case, DELTA_SEED + i as u64).unwrap();
        let r = Rounded::new(&d).unwrap();
        let x = r.data.inputs();
        let full = DeltaRecurrent.forward(&d.problem, &x, true).unwrap();
        let stepped = Stepped.forward(&d.problem, &x, true).unwrap();
        assert!(full.o.iter().zip(&stepped.o).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: o", case.name);
        assert_eq!(full.ht, stepped.ht, "{}: ht", case.name);
    }
}

