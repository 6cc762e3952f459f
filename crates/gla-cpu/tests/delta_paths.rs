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

/// beta given directly in [0, 2] (fla's DeltaNet passes `2 sigmoid(b)` itself with
/// `allow_neg_eigval`): the table's DeltaNet and Gated DeltaNet cases at T = 130 with beta doubled,
/// on every path.
#[test]
fn direct_beta_up_to_2_matches_oracle() {
    let mut rows: Vec<Row> = Vec::new();
    for (i, case) in cases().iter().enumerate().filter(|(_, c)| c.name.contains("beta1-T130") || c.name.contains("T65-h0")) {
        let mut d = DeltaCaseData::generate(case, DELTA_SEED + i as u64).unwrap();
        d.beta.iter_mut().for_each(|b| *b *= 2.0);
        let r = Rounded::new(&d).unwrap();
        for path in delta_cpu::paths() {
            delta_cpu::path_rows(&format!("{}-beta2", case.name), &d.problem, &r, &path, &mut rows);
        }
    }
    assert!(rows.len() > 30);
    let failed: Vec<String> =
        rows.iter().filter(|r| !r.pass).map(|r| format!("{} {} {}: {:.3e} {}", r.path, r.case, r.tensor, r.rel_rmse, r.note)).collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let worst = rows.iter().map(|r| r.rel_rmse).fold(0.0, f64::max);
    eprintln!("{} rows, worst {worst:.3e}", rows.len());
}

/// A long sequence stays finite and on the oracle: T = 65536 with a gate (the given log-decay at
/// gate scale 10, and fla's layer options with the computed gate), forward of the recurrent and
/// the chunked path against the f64 oracle's forward (which streams: one state per head).
#[test]
fn long_sequence_forward_matches_oracle() {
    use gla_check::delta::{Beta, DeltaCase};
    use gla_core::delta::DeltaGate;
    use gla_core::DeltaSpec;
    let plain = DeltaSpec::new(1, 65536, 1, 64, 64, DeltaGate::LogDecay);
    let mut layer = DeltaSpec::new(1, 65536, 1, 64, 64, DeltaGate::Computed);
    (layer.hv, layer.l2_qk, layer.beta_sigmoid) = (2, true, true);
    for (name, spec, beta, gate_scale) in
        [("gdn-T65536-gs10", plain, Beta::Uniform, 10.0), ("gdn-computed-T65536", layer, Beta::Logits { shift: 0.0 }, 1.0)]
    {
        let case = DeltaCase { name: name.into(), spec, gate_scale, beta, h0: true };
        let d = DeltaCaseData::generate(&case, 65536).unwrap();
        let r = Rounded::new(&d).unwrap();
        let x = r.data.inputs();
        for op in [&DeltaRecurrent as &dyn DeltaOp<f32>, &DeltaChunked] {
            let f = op.forward(&d.problem, &x, true).unwrap();
            let ht = f.ht.as_deref().unwrap();
            assert!(f.o.iter().chain(ht).all(|v| v.is_finite()), "{name} {}: non-finite", op.name());
            let (eo, eh) = (gla_check::cases::rel_rmse(&f.o, &r.fwd.o), gla_check::cases::rel_rmse(ht, r.fwd.ht.as_deref().unwrap()));
            eprintln!("{name} {}: o {eo:.3e}, ht {eh:.3e}", op.name());
            assert!(eo <= tol::CPU_F32 && eh <= tol::CPU_F32, "{name} {}: o {eo:e}, ht {eh:e}", op.name());
        }
    }
}

/// A tensor of more than 2^31 elements: `v` and `o` hold B*T*HV*V = 524300*16*1*256 = 2.15e9
/// (8.6 GB each in f32). Every index on the CPU is a `usize`, so nothing can wrap; this checks it
/// end to end on the recurrent and the chunked forward. Sequences are short (T = 16) so that the
/// chunked path's work, which grows with T inside a chunk, stays small. `v` is zero except in
/// the first and the last sequence (the last sits wholly past element 2^31), so its untouched
/// pages cost no memory; those two are compared with the oracle run on them alone, and a zero
/// sequence in between must give exact zeros. About 11 GB of memory:
/// `cargo test --release -p gla-cpu --test delta_paths -- --ignored huge`.
#[test]
#[ignore = "needs ~11 GB of memory"]
fn huge_tensor_forward_indexes_past_2_31() {
    use gla_check::cases::{logsigmoid, rel_rmse, Rng};
    use gla_core::delta::DeltaGate;
    use gla_core::{DeltaInputs, DeltaProblem, DeltaSpec};
    let (b, t, kd, vd) = (524_300usize, 16usize, 4usize, 256usize);
    let p = DeltaProblem::new(DeltaSpec::new(b, t, 1, kd, vd, DeltaGate::LogDecay)).unwrap();
    assert!(p.v_len() > 1 << 31);
    let mut rng = Rng::new(31);
    let q: Vec<f32> = (0..p.qk_len()).map(|_| rng.uniform() as f32).collect();
    let mut k: Vec<f32> = (0..p.qk_len()).map(|_| rng.uniform() as f32).collect();
    for row in k.chunks_exact_mut(kd) {
        let n = row.iter().map(|e| e * e).sum::<f32>().sqrt();
        row.iter_mut().for_each(|e| *e /= n);
    }
    let beta: Vec<f32> = (0..p.beta_len()).map(|_| rng.uniform() as f32).collect();
    let g: Vec<f32> = (0..p.g_len()).map(|_| (logsigmoid(rng.uniform()) / 10.0) as f32).collect();
    let mut v = vec![0.0f32; p.v_len()];
    let per = t * vd;
    let seqs = [0, b - 1];
    assert!((b - 1) * per > 1 << 31);
    for seq in seqs {
        v[seq * per..(seq + 1) * per].iter_mut().for_each(|e| *e = rng.uniform() as f32);
    }
    let x = DeltaInputs { q: &q, k: &k, v: &v, beta: &beta, g: Some(&g), a_log: None, dt_bias: None, h0: None };
    // the oracle on the two sequences alone
    let sub = DeltaProblem::new(DeltaSpec::new(2, t, 1, kd, vd, DeltaGate::LogDecay)).unwrap();
    let pick = |x: &[f32], per: usize| -> Vec<f64> {
        seqs.iter().flat_map(|&s| x[s * per..(s + 1) * per].iter().map(|&e| f64::from(e))).collect()
    };
    let (sq, sk, sv, sb, sg) = (pick(&q, t * kd), pick(&k, t * kd), pick(&v, per), pick(&beta, t), pick(&g, t));
    let sx = DeltaInputs { q: &sq, k: &sk, v: &sv, beta: &sb, g: Some(&sg), a_log: None, dt_bias: None, h0: None };
    let rf = DeltaNaive.forward(&sub, &sx, false).unwrap();
    for op in [&DeltaChunked as &dyn DeltaOp<f32>, &DeltaRecurrent] {
        let f = op.forward(&p, &x, false).unwrap();
        for (i, seq) in seqs.into_iter().enumerate() {
            let eo = rel_rmse(&f.o[seq * per..(seq + 1) * per], &rf.o[i * per..(i + 1) * per]);
            eprintln!("{} sequence {seq}: o {eo:.3e}", op.name());
            assert!(eo <= tol::CPU_F32, "{} sequence {seq}: o {eo:e}", op.name());
        }
        assert!(f.o[per..2 * per].iter().all(|&e| e == 0.0), "{}: a zero sequence", op.name());
    }
}
