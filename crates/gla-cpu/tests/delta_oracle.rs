//! The delta-rule oracle's backward against central finite differences in f64: every gradient
//! (q, k, v, beta, g or a, A_log, dt_bias, h0) on small shapes covering both gates, the computed
//! gate, the in-op L2 norm and beta sigmoid, negative eigenvalues, grouped value heads and packed
//! varlen input with an empty sequence.

use gla_check::cases::{logsigmoid, rel_rmse, Rng};
use gla_core::delta::{DeltaGate, DeltaOp};
use gla_core::{Backward, DeltaInputs, DeltaProblem, DeltaSpec};
use gla_cpu::delta::DeltaNaive;

#[derive(Clone)]
struct Data {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    beta: Vec<f64>,
    g: Vec<f64>,
    a_log: Vec<f64>,
    dt_bias: Vec<f64>,
    h0: Vec<f64>,
    d_o: Vec<f64>,
    dht: Vec<f64>,
}

impl Data {
    fn new(p: &DeltaProblem, seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let gate_in = |r: &mut Rng| match p.gate() {
            DeltaGate::LogDecay => logsigmoid(r.uniform() * 4.0 - 1.0),
            _ => r.normal(),
        };
        let beta = |r: &mut Rng| if p.beta_sigmoid() { r.normal() } else { 0.05 + 0.9 * r.uniform() };
        Self {
            q: r.fill(p.qk_len(), |r| r.uniform() - 0.3),
            k: r.fill(p.qk_len(), |r| r.uniform() - 0.3),
            v: r.fill(p.v_len(), Rng::normal),
            beta: r.fill(p.beta_len(), beta),
            g: r.fill(p.g_len(), gate_in),
            a_log: r.fill(if p.gate() == DeltaGate::Computed { p.hv() } else { 0 }, |r| (1.0 + 3.0 * r.uniform()).ln()),
            dt_bias: r.fill(if p.gate() == DeltaGate::Computed { p.hv() } else { 0 }, |r| r.normal() * 0.5),
            h0: r.fill(p.state_len(), |r| r.normal() * 0.3),
            d_o: r.fill(p.v_len(), Rng::normal),
            dht: r.fill(p.state_len(), Rng::normal),
        }
    }
    fn inputs(&self) -> DeltaInputs<'_, f64> {
        fn opt(x: &[f64]) -> Option<&[f64]> {
            (!x.is_empty()).then_some(x)
        }
        DeltaInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            beta: &self.beta,
            g: opt(&self.g),
            a_log: opt(&self.a_log),
            dt_bias: opt(&self.dt_bias),
            h0: Some(&self.h0),
        }
    }
    fn tensor(&mut self, which: usize) -> &mut Vec<f64> {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.beta, &mut self.g, &mut self.a_log, &mut self.dt_bias, &mut self.h0]
            .into_iter()
            .nth(which)
            .unwrap()
    }
}

fn loss(p: &DeltaProblem, d: &Data) -> f64 {
    let f = DeltaNaive.forward(p, &d.inputs(), true).unwrap();
    let a: f64 = f.o.iter().zip(&d.d_o).map(|(a, b)| a * b).sum();
    let b: f64 = f.ht.unwrap().iter().zip(&d.dht).map(|(a, b)| a * b).sum();
    a + b
}

fn check(name: &str, spec: DeltaSpec) {
    let p = DeltaProblem::new(spec).unwrap();
    let d = Data::new(&p, 7);
    let grads = DeltaNaive.backward(&p, &d.inputs(), &Backward { d_o: &d.d_o, dht: Some(&d.dht) }).unwrap();
    let analytic = [
        Some(&grads.dq),
        Some(&grads.dk),
        Some(&grads.dv),
        Some(&grads.dbeta),
        grads.dg.as_ref(),
        grads.da_log.as_ref(),
        grads.ddt_bias.as_ref(),
        grads.dh0.as_ref(),
    ];
    for (which, tensor) in ["q", "k", "v", "beta", "g", "A_log", "dt_bias", "h0"].iter().enumerate() {
        let mut e = d.clone();
        let len = e.tensor(which).len();
        let num: Vec<f64> = (0..len)
            .map(|i| {
                let eps = 1e-6;
                let mut at = |delta: f64| {
                    let x0 = e.tensor(which)[i];
                    e.tensor(which)[i] = x0 + delta;
                    let l = loss(&p, &e);
                    e.tensor(which)[i] = x0;
                    l
                };
                (at(eps) - at(-eps)) / (2.0 * eps)
            })
            .collect();
        match analytic[which] {
            Some(a) => {
                let err = rel_rmse(a, &num);
                assert!(err < 1e-7, "{name}: d{tensor} vs finite differences: rel-rmse {err:e}");
            }
            None => assert!(num.is_empty(), "{name}: d{tensor} missing"),
        }
    }
}

fn spec(t: usize, gate: DeltaGate, hv: usize) -> DeltaSpec {
    let mut s = DeltaSpec::new(2, t, 2, 3, 4, gate);
    s.hv = hv;
    s
}

#[test]
fn deltanet_plain() {
    check("deltanet", spec(7, DeltaGate::None, 2));
}

#[test]
fn deltanet_l2_sigmoid_grouped() {
    let mut s = spec(6, DeltaGate::None, 4);
    (s.l2_qk, s.beta_sigmoid) = (true, true);
    check("deltanet-l2-sigmoid-hv4", s);
}

#[test]
fn gated_log_decay() {
    let mut s = spec(9, DeltaGate::LogDecay, 2);
    s.l2_qk = true;
    s.scale = Some(0.7);
    check("gdn-log-decay", s);
}

#[test]
fn gated_computed_neg_eigval() {
    let mut s = spec(8, DeltaGate::Computed, 4);
    (s.l2_qk, s.beta_sigmoid, s.allow_neg_eigval) = (true, true, true);
    check("gdn-computed-neg-eigval", s);
}

#[test]
fn gated_varlen_with_empty_sequence() {
    let mut s = DeltaSpec::new(1, 9, 1, 3, 2, DeltaGate::LogDecay);
    s.cu_seqlens = Some(vec![0, 4, 4, 9]);
    s.beta_sigmoid = true;
    check("gdn-varlen", s);
}
