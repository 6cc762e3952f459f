//! The delta-rule family's case table (DESIGN.md section 4 extended by what the family adds:
//! betas near 0, 1 and 2, the gate computed inside the op, the in-op L2 norm and sigmoid, grouped
//! value heads), its seeded data and the comparison of every output.
//!
//! Inputs are drawn like fla's delta-rule tests: q uniform in [0, 1); k uniform and, when the op
//! does not normalise it, L2-normalised here (with |k| > 1 the transition `I - beta k k^T` has
//! eigenvalues below -1 and the state grows without bound: legal, but no test of rounding);
//! v uniform; a log-decay `logsigmoid(u) / gate_scale`; do and dht standard normal.

use gla_core::delta::DeltaGate;
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, DeltaSpec, Forward, Result};

use crate::cases::{logsigmoid, rel_rmse, to_f32, Rng};

/// How a case draws beta.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Beta {
    /// Uniform in [0, 1), given directly.
    Uniform,
    /// In [0, 0.05): a near-zero write.
    NearZero,
    /// In (0.95, 1]: a near-full overwrite.
    NearOne,
    /// Standard-normal logits (the spec must set `beta_sigmoid`); with `allow_neg_eigval` and
    /// logits shifted by +4, beta sits near 2.
    Logits {
        /// Added to every logit.
        shift: f64,
    },
}

/// One row of the delta case table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaCase {
    /// Readable name, unique in the table.
    pub name: String,
    /// Problem dims and options.
    pub spec: DeltaSpec,
    /// Log-decay normaliser (`LogDecay`): `g = logsigmoid(u) / gate_scale` (0.1 = strong decay).
    /// With `Computed`, the raw `a` is normal and `A_log = ln(gate_scale)`-centred.
    pub gate_scale: f64,
    /// How beta is drawn.
    pub beta: Beta,
    /// Whether an initial state is passed.
    pub h0: bool,
}

/// The delta case table: odd T (1, 15, 63, 64, 65, 1000), K = 60 != V = 100, DeltaNet and Gated
/// DeltaNet with strong and weak gates, with and without an initial state; betas near 0, near 1
/// and near 2 (negative eigenvalues); the in-op L2 norm, sigmoid and computed gate (the options
/// fla's layers use); grouped value heads HV = 2H; packed varlen input with an empty sequence;
/// value heads wider than 256 (V = 320, 512, 640); K = V = 128 over 35 sequences (the GPU's plans
/// for many sequences).
pub fn cases() -> Vec<DeltaCase> {
    let mut out = Vec::new();
    let spec = |b, t, gate, hv, cu: Option<Vec<usize>>| {
        let mut s = DeltaSpec::new(b, t, 2, 60, 100, gate);
        s.hv = hv;
        s.cu_seqlens = cu;
        s
    };
    for t in [1usize, 15, 63, 64, 65, 1000] {
        let b = if t >= 1000 { 1 } else { 2 };
        for h0 in [false, true] {
            let tag = if h0 { "-h0" } else { "" };
            let name = format!("delta-T{t}{tag}");
            out.push(DeltaCase { name, spec: spec(b, t, DeltaGate::None, 2, None), gate_scale: 1.0, beta: Beta::Uniform, h0 });
            for gate_scale in [0.1, 1.0, 10.0] {
                let name = format!("gdn-T{t}-gs{gate_scale}{tag}");
                let s = spec(b, t, DeltaGate::LogDecay, 2, None);
                out.push(DeltaCase { name, spec: s, gate_scale, beta: Beta::Uniform, h0 });
            }
        }
    }
    for (beta, tag) in [(Beta::NearZero, "beta0"), (Beta::NearOne, "beta1")] {
        for gate in [DeltaGate::None, DeltaGate::LogDecay] {
            let fam = if gate == DeltaGate::None { "delta" } else { "gdn" };
            let name = format!("{fam}-{tag}-T130-h0");
            out.push(DeltaCase { name, spec: spec(2, 130, gate, 2, None), gate_scale: 1.0, beta, h0: true });
        }
    }
    // fla's layer options: L2 norm and sigmoid inside the op, the computed gate, GVA
    let layer = |gate, hv, neg: bool, cu: Option<Vec<usize>>| {
        let mut s = spec(if cu.is_some() { 1 } else { 2 }, 130, gate, hv, cu);
        (s.l2_qk, s.beta_sigmoid, s.allow_neg_eigval) = (true, true, neg);
        s
    };
    let varlen = vec![0usize, 15, 15, 100, 300, 365];
    for (gate, fam) in [(DeltaGate::None, "delta"), (DeltaGate::Computed, "gdn-computed")] {
        for (hv, neg) in [(2, false), (4, false), (4, true)] {
            let name = format!("{fam}-layer-hv{hv}{}", if neg { "-negeig" } else { "" });
            let beta = Beta::Logits { shift: if neg { 4.0 } else { 0.0 } };
            out.push(DeltaCase { name, spec: layer(gate, hv, neg, None), gate_scale: 1.0, beta, h0: true });
        }
        let mut s = layer(gate, 4, false, Some(varlen.clone()));
        s.t = 365;
        out.push(DeltaCase { name: format!("{fam}-layer-varlen"), spec: s, gate_scale: 1.0, beta: Beta::Logits { shift: 0.0 }, h0: true });
    }
    for (gate, fam) in [(DeltaGate::None, "delta"), (DeltaGate::LogDecay, "gdn")] {
        let name = format!("{fam}-varlen-h0");
        out.push(DeltaCase { name, spec: spec(1, 365, gate, 2, Some(varlen.clone())), gate_scale: 1.0, beta: Beta::Uniform, h0: true });
        let name = format!("{fam}-varlen-empty-first");
        let s = spec(1, 16, gate, 2, Some(vec![0, 0, 16]));
        out.push(DeltaCase { name, spec: s, gate_scale: 10.0, beta: Beta::Uniform, h0: false });
    }
    // value heads wider than 256, with every option and states, as fla's Gated DeltaNet default
    // (head_dim 256, expand_v 2): unsplit on the GPU's bf16 chunk kernels (V <= 512), on value
    // sub-heads for f32 (V > 128); V = 640 (last, so the cases before keep their seeds) on
    // sub-heads for bf16 too
    for (gate, fam, v, cu) in [(DeltaGate::None, "delta", 320, None), (DeltaGate::Computed, "gdn-computed", 512, Some(varlen))] {
        let mut s = layer(gate, 4, false, cu.clone());
        s.v = v;
        if cu.is_some() {
            s.t = 365;
        }
        let name = format!("{fam}-layer-V{v}{}", if cu.is_some() { "-varlen" } else { "" });
        out.push(DeltaCase { name, spec: s, gate_scale: 1.0, beta: Beta::Logits { shift: 0.0 }, h0: true });
    }
    // K = V = 128 and enough (sequence, value head) pairs that the GPU's default plans (bf16) are
    // the fused state-gradient pass and the residual forward (64 columns) with its residual
    // backward: 35 x 2 pairs x 2 value tiles of 64 = 140 tiles, and those plans run where
    // 2 x tiles > SMs and tiles >= SMs (gla-cuda's dispatch::delta::h_res, res_ok); smaller
    // cases run the residual forward on 32 columns where the workspace is a forward's only
    let mut s = DeltaSpec::new(35, 65, 2, 128, 128, DeltaGate::LogDecay);
    s.hv = 2;
    out.push(DeltaCase { name: "gdn-K128-35seqs-T65-h0".into(), spec: s, gate_scale: 1.0, beta: Beta::Uniform, h0: true });
    let mut s = layer(DeltaGate::None, 4, false, None);
    s.v = 640;
    out.push(DeltaCase { name: "delta-layer-V640".into(), spec: s, gate_scale: 1.0, beta: Beta::Logits { shift: 0.0 }, h0: true });
    out
}

/// Inputs and upstream gradients of one delta case, in f64. Empty vectors stand for absent
/// tensors.
#[derive(Debug, Clone)]
pub struct DeltaCaseData {
    /// The validated problem.
    pub problem: DeltaProblem,
    /// `[B,T,H,K]`
    pub q: Vec<f64>,
    /// `[B,T,H,K]`
    pub k: Vec<f64>,
    /// `[B,T,HV,V]`
    pub v: Vec<f64>,
    /// `[B,T,HV]`
    pub beta: Vec<f64>,
    /// `[B,T,HV]` or empty.
    pub g: Vec<f64>,
    /// `[HV]` or empty.
    pub a_log: Vec<f64>,
    /// `[HV]` or empty.
    pub dt_bias: Vec<f64>,
    /// `[N,HV,K,V]` or empty.
    pub h0: Vec<f64>,
    /// `[B,T,HV,V]`
    pub d_o: Vec<f64>,
    /// `[N,HV,K,V]`
    pub dht: Vec<f64>,
}

fn l2_rows(x: &mut [f64], d: usize) {
    for row in x.chunks_exact_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

impl DeltaCaseData {
    /// Draws the data of `case` from `seed`.
    ///
    /// # Errors
    /// If the case's spec is invalid.
    pub fn generate(case: &DeltaCase, seed: u64) -> Result<Self> {
        let p = DeltaProblem::new(case.spec.clone())?;
        let mut rng = Rng::new(seed);
        let q = rng.fill(p.qk_len(), Rng::uniform);
        let mut k = rng.fill(p.qk_len(), Rng::uniform);
        if !p.l2_qk() {
            l2_rows(&mut k, p.k());
        }
        let v = rng.fill(p.v_len(), Rng::uniform);
        let beta = match case.beta {
            Beta::Uniform => rng.fill(p.beta_len(), Rng::uniform),
            Beta::NearZero => rng.fill(p.beta_len(), |r| 0.05 * r.uniform()),
            Beta::NearOne => rng.fill(p.beta_len(), |r| 1.0 - 0.05 * r.uniform()),
            Beta::Logits { shift } => rng.fill(p.beta_len(), |r| r.normal() + shift),
        };
        let gs = case.gate_scale;
        let (g, a_log, dt_bias) = match p.gate() {
            DeltaGate::None => (Vec::new(), Vec::new(), Vec::new()),
            DeltaGate::LogDecay => (rng.fill(p.g_len(), |r| logsigmoid(r.uniform()) / gs), Vec::new(), Vec::new()),
            // fla's init: A in [1, 16] -> A_log = ln A; dt_bias the inverse softplus of a dt in
            // [0.001, 0.1]; a = x W_a is near zero
            DeltaGate::Computed => (
                rng.fill(p.g_len(), |r| 0.5 * r.normal()),
                rng.fill(p.hv(), |r| (1.0 + 15.0 * r.uniform()).ln() - gs.ln()),
                rng.fill(p.hv(), |r| {
                    let dt = (r.uniform() * (0.1f64.ln() - 0.001f64.ln()) + 0.001f64.ln()).exp();
                    dt + (-(-dt).exp_m1()).ln()
                }),
            ),
        };
        let h0 = if case.h0 { rng.fill(p.state_len(), Rng::uniform) } else { Vec::new() };
        let d_o = rng.fill(p.v_len(), Rng::normal);
        let dht = rng.fill(p.state_len(), Rng::normal);
        Ok(Self { problem: p, q, k, v, beta, g, a_log, dt_bias, h0, d_o, dht })
    }

    /// The f64 inputs.
    pub fn inputs(&self) -> DeltaInputs<'_, f64> {
        inputs(&self.q, &self.k, &self.v, &self.beta, &self.g, &self.a_log, &self.dt_bias, &self.h0)
    }
    /// The f64 upstream gradients.
    pub fn grads_in(&self) -> Backward<'_, f64> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
    /// Everything narrowed to f32.
    pub fn to_f32(&self) -> DeltaCaseDataF32 {
        DeltaCaseDataF32 {
            q: to_f32(&self.q),
            k: to_f32(&self.k),
            v: to_f32(&self.v),
            beta: to_f32(&self.beta),
            g: to_f32(&self.g),
            a_log: to_f32(&self.a_log),
            dt_bias: to_f32(&self.dt_bias),
            h0: to_f32(&self.h0),
            d_o: to_f32(&self.d_o),
            dht: to_f32(&self.dht),
        }
    }
}

/// A delta case's data narrowed to f32 (field meanings as [`DeltaCaseData`]).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct DeltaCaseDataF32 {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub beta: Vec<f32>,
    pub g: Vec<f32>,
    pub a_log: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub h0: Vec<f32>,
    pub d_o: Vec<f32>,
    pub dht: Vec<f32>,
}

impl DeltaCaseDataF32 {
    /// The f32 inputs.
    pub fn inputs(&self) -> DeltaInputs<'_, f32> {
        inputs(&self.q, &self.k, &self.v, &self.beta, &self.g, &self.a_log, &self.dt_bias, &self.h0)
    }
    /// The f32 upstream gradients.
    pub fn grads_in(&self) -> Backward<'_, f32> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
}

#[allow(clippy::too_many_arguments)]
fn inputs<'a, T>(
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    beta: &'a [T],
    g: &'a [T],
    a_log: &'a [T],
    dt_bias: &'a [T],
    h0: &'a [T],
) -> DeltaInputs<'a, T> {
    fn opt<T>(x: &[T]) -> Option<&[T]> {
        (!x.is_empty()).then_some(x)
    }
    DeltaInputs { q, k, v, beta, g: opt(g), a_log: opt(a_log), dt_bias: opt(dt_bias), h0: opt(h0) }
}

/// Relative RMSE of every output (`o, ht, dq, dk, dv, dbeta`, and `dg`, `dA_log`, `ddt_bias`,
/// `dh0` where the reference has them) against the reference. A tensor the reference has and the
/// result lacks gives +inf.
pub fn compare<A: Copy + Into<f64>>(
    fwd: &Forward<A>,
    bwd: &DeltaGrads<A>,
    rf: &Forward<f64>,
    rb: &DeltaGrads<f64>,
) -> Vec<(&'static str, f64)> {
    let or_empty = |x: &Option<Vec<A>>| x.clone().unwrap_or_default();
    let mut out = vec![
        ("o", rel_rmse(&fwd.o, &rf.o)),
        ("ht", rel_rmse(&or_empty(&fwd.ht), rf.ht.as_deref().unwrap_or(&[]))),
        ("dq", rel_rmse(&bwd.dq, &rb.dq)),
        ("dk", rel_rmse(&bwd.dk, &rb.dk)),
        ("dv", rel_rmse(&bwd.dv, &rb.dv)),
        ("dbeta", rel_rmse(&bwd.dbeta, &rb.dbeta)),
    ];
    for (name, got, want) in [
        ("dg", &bwd.dg, &rb.dg),
        ("dA_log", &bwd.da_log, &rb.da_log),
        ("ddt_bias", &bwd.ddt_bias, &rb.ddt_bias),
        ("dh0", &bwd.dh0, &rb.dh0),
    ] {
        if let Some(r) = want {
            out.push((name, rel_rmse(&or_empty(got), r)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_generates_and_names_are_unique() {
        let cases = cases();
        let mut names: Vec<_> = cases.iter().map(|c| c.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        for c in &cases {
            let d = DeltaCaseData::generate(c, 1).unwrap();
            d.inputs().validate("case", &d.problem).unwrap();
        }
    }
}
