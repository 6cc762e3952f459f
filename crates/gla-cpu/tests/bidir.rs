//! The bidirectional scan on the CPU: the oracle's backward against central finite differences
//! in f64 (fixed length, varlen with an empty and a one-token sequence), the oracle against the
//! identity `o = gla_{s/2}(..f..) + flip(gla_{s/2}(..b..))` on the GLA oracle, and every CPU
//! path on the bidir case table against the f64 oracle within gla_check::tol::CPU_F32.

use gla_check::bidir::{cases, run_table, BidirCase, BidirCaseData, BidirPath, BIDIR_SEED};
use gla_check::runner::Storage;
use gla_check::tol;
use gla_core::bidir::{flip_rows, BidirInputs, BidirOp, BidirSpec};
use gla_core::op::GlaOp;
use gla_core::Inputs;
use gla_cpu::{BidirChunked, BidirFused, BidirNaive, Chunked, Naive, Schedule};

fn inputs(x: &[Vec<f64>; 6]) -> BidirInputs<'_, f64> {
    BidirInputs { q: &x[0], k: &x[1], v: &x[2], gf: &x[3], gb: &x[4] }
}

fn loss(d: &BidirCaseData, x: &[Vec<f64>; 6]) -> f64 {
    let o = BidirNaive.forward(&d.problem, &inputs(x)).unwrap();
    o.iter().zip(&x[5]).map(|(a, b)| a * b).sum()
}

fn fd_check(spec: BidirSpec, gate_scales: (f64, f64)) {
    let case = BidirCase { name: "fd".into(), spec, gate_scales };
    let d = BidirCaseData::generate(&case, 7).unwrap();
    let g = BidirNaive.backward(&d.problem, &inputs(&d.x), &d.x[5]).unwrap();
    let analytic = [&g.dq, &g.dk, &g.dv, &g.dgf, &g.dgb];
    for (which, name) in ["dq", "dk", "dv", "dgf", "dgb"].iter().enumerate() {
        let eps = 1e-6;
        let num: Vec<f64> = (0..d.x[which].len())
            .map(|i| {
                let at = |delta: f64| {
                    let mut x = d.x.clone();
                    x[which][i] += delta;
                    loss(&d, &x)
                };
                (at(eps) - at(-eps)) / (2.0 * eps)
            })
            .collect();
        let err = gla_check::cases::rel_rmse(analytic[which], &num);
        assert!(err < 1e-7, "{name} vs finite differences: rel-rmse {err:e}");
    }
}

#[test]
fn oracle_backward_matches_finite_differences() {
    fd_check(BidirSpec::new(2, 5, 2, 3, 4), (1.0, 0.3));
}

#[test]
fn oracle_backward_matches_finite_differences_varlen() {
    fd_check(BidirSpec { cu_seqlens: Some(vec![0, 3, 3, 4, 8]), ..BidirSpec::new(1, 8, 2, 3, 2) }, (0.5, 2.0));
}

/// The oracle equals ViG's composition (GLA on x and on flip(x), flipped back, averaged),
/// computed with the GLA oracle: the contract's identity, on a varlen case.
#[test]
fn oracle_is_vigs_composition_of_two_gla_scans() {
    let case = &cases().into_iter().find(|c| c.name == "bidir/varlen-gf1-gb0.1").unwrap();
    let d = BidirCaseData::generate(case, 3).unwrap();
    let p = &d.problem;
    let o = BidirNaive.forward(p, &inputs(&d.x)).unwrap();
    let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
    let of = Naive.forward(p.gla(), &Inputs { q: &d.x[0], k: &d.x[1], v: &d.x[2], g: Some(&d.x[3]), h0: None }, false).unwrap().o;
    let fl = |i: usize, w| flip_rows(p, &d.x[i], w);
    let (q, k, v, gb) = (fl(0, kw), fl(1, kw), fl(2, vw), fl(4, kw));
    let ob = Naive.forward(p.gla(), &Inputs { q: &q, k: &k, v: &v, g: Some(&gb), h0: None }, false).unwrap().o;
    let ob = flip_rows(p, &ob, vw);
    let vig: Vec<f64> = of.iter().zip(&ob).map(|(a, b)| (a + b) / 2.0).collect();
    let err = gla_check::cases::rel_rmse(&o, &vig);
    assert!(err < 1e-13, "oracle vs ViG's composition: {err:e}");
}

fn table(label: &'static str, op: &'static dyn BidirOp<f32>, filter: Option<&str>) {
    let path = BidirPath { label, storage: Storage::F32, op, tol: tol::CPU_F32 };
    let mut rows = Vec::new();
    run_table(&cases(), BIDIR_SEED, filter, &[path], &mut rows).unwrap();
    assert!(!rows.is_empty());
    let worst = rows.iter().map(|r| r.rel_rmse).fold(0.0, f64::max);
    eprintln!("{label}: {} rows, worst rel-rmse {worst:.3e}", rows.len());
    let failed: Vec<String> =
        rows.iter().filter(|r| !r.pass).map(|r| format!("{} {}: {:.3e} {}", r.case, r.tensor, r.rel_rmse, r.note)).collect();
    assert!(failed.is_empty(), "{} failures:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn chunked_matches_oracle_per_sequence() {
    const OP: BidirChunked = BidirChunked { gla: Chunked { schedule: Schedule::PerSequence } };
    table("cpu-bidir-chunk-seq", &OP, None);
}

#[test]
fn chunked_matches_oracle_per_chunk() {
    const OP: BidirChunked = BidirChunked { gla: Chunked { schedule: Schedule::PerChunk } };
    table("cpu-bidir-chunk-par", &OP, None);
}

#[test]
fn fused_matches_oracle() {
    const OP: BidirFused = BidirFused { long: BidirChunked { gla: Chunked { schedule: Schedule::PerSequence } } };
    table("cpu-bidir-fused", &OP, None);
}

#[test]
fn naive_f32_matches_f64_oracle() {
    table("cpu-bidir-naive", &BidirNaive, Some("T6"));
}
