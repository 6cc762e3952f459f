//! The naive attention oracle's backward against central finite differences of `L = <do, o>`
//! in f64, over causal / windowed / GQA / varlen / non-causal problems; and a mutation check that
//! the comparison would catch a wrong gradient.

use gla_core::{AttnInputs, AttnOp, AttnProblem, AttnSpec};
use gla_cpu::AttnNaive;

fn rand(n: usize, seed: &mut u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn loss(p: &AttnProblem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> f64 {
    let f = AttnOp::<f64>::forward(&AttnNaive, p, &AttnInputs { q, k, v }).unwrap();
    f.o.iter().zip(d_o).map(|(a, b)| a * b).sum()
}

/// Max relative error of the analytic gradients `[dq, dk, dv]` against finite differences.
fn fd_error(p: &AttnProblem, x: [&[f64]; 3], d_o: &[f64], grads: [&[f64]; 3]) -> f64 {
    let eps = 1e-6;
    let mut worst = 0f64;
    for (which, g) in grads.iter().enumerate() {
        let scale = g.iter().fold(0f64, |a, b| a.max(b.abs())).max(1e-3);
        for idx in 0..g.len() {
            let mut t = [x[0].to_vec(), x[1].to_vec(), x[2].to_vec()];
            t[which][idx] += eps;
            let up = loss(p, &t[0], &t[1], &t[2], d_o);
            t[which][idx] -= 2.0 * eps;
            let down = loss(p, &t[0], &t[1], &t[2], d_o);
            worst = worst.max(((up - down) / (2.0 * eps) - g[idx]).abs() / scale);
        }
    }
    worst
}

#[test]
fn naive_backward_matches_finite_differences() {
    let cases: Vec<AttnSpec> = {
        let base = AttnSpec::new(2, 7, 4, 3);
        vec![
            base.clone(),
            AttnSpec { h_kv: 2, dv: 5, ..base.clone() },
            AttnSpec { h_kv: 1, window: Some(3), scale: Some(0.7), ..base.clone() },
            AttnSpec { causal: false, h_kv: 2, ..base.clone() },
            AttnSpec { b: 1, t: 9, cu_seqlens: Some(vec![0, 4, 4, 9]), window: Some(2), ..base },
        ]
    };
    let mut seed = 7u64;
    for spec in cases {
        let p = AttnProblem::new(spec.clone()).unwrap();
        let (q, k, v, d_o) =
            (rand(p.q_len(), &mut seed), rand(p.k_len(), &mut seed), rand(p.v_len(), &mut seed), rand(p.o_len(), &mut seed));
        let x = AttnInputs { q: &q, k: &k, v: &v };
        let f = AttnOp::<f64>::forward(&AttnNaive, &p, &x).unwrap();
        let g = AttnOp::<f64>::backward(&AttnNaive, &p, &x, &f, &d_o).unwrap();
        let err = fd_error(&p, [&q, &k, &v], &d_o, [&g.dq, &g.dk, &g.dv]);
        assert!(err < 1e-7, "{spec:?}: FD error {err:e}");
        // Mutation: a gradient off by 1% in one element of each tensor must be caught.
        for which in 0..3 {
            let mut m = [g.dq.clone(), g.dk.clone(), g.dv.clone()];
            let i = m[which].iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
            m[which][i] *= 1.01;
            let err = fd_error(&p, [&q, &k, &v], &d_o, [&m[0], &m[1], &m[2]]);
            assert!(err > 1e-3, "{spec:?}: a wrong gradient of tensor {which} went unnoticed ({err:e})");
        }
    }
}
