//! The softmax attention op's case table and its data: odd lengths around the 64-row block, D =
//! 64 / 128 and D != DV, GQA ratios 1 / 4 / 8, windows of 1, below and above T, varlen with an
//! empty sequence, B > 1, and one non-causal case. Rows are named `attn/<case>`.

use gla_core::{AttnProblem, AttnSpec, Result};

use crate::cases::{to_f32, Rng};

/// One case: a name and a spec.
#[derive(Debug, Clone)]
pub struct AttnCase {
    /// `attn/<case>`.
    pub name: String,
    /// The spec.
    pub spec: AttnSpec,
}

/// The attention case table.
pub fn cases() -> Vec<AttnCase> {
    let s = |b, t, h, h_kv, d, dv| AttnSpec { h_kv, dv, ..AttnSpec::new(b, t, h, d) };
    let mut out = vec![
        ("t1", s(1, 1, 2, 2, 64, 64)),
        ("t15-gqa4", s(1, 15, 4, 1, 64, 64)),
        ("t63", s(1, 63, 2, 2, 64, 64)),
        ("t64-d128", s(1, 64, 2, 2, 128, 128)),
        ("t65-gqa4", s(1, 65, 4, 1, 64, 64)),
        ("t300-d128-gqa8", s(1, 300, 8, 1, 128, 128)),
        ("t65-d64-dv32", s(1, 65, 2, 1, 64, 32)),
        ("t130-b3-gqa2", s(3, 130, 4, 2, 64, 64)),
        ("t100-window1", AttnSpec { window: Some(1), ..s(1, 100, 2, 2, 64, 64) }),
        ("t200-window50-gqa4", AttnSpec { window: Some(50), ..s(1, 200, 4, 1, 64, 64) }),
        ("t100-window500", AttnSpec { window: Some(500), ..s(1, 100, 2, 2, 64, 64) }),
        ("varlen-empty", AttnSpec { cu_seqlens: Some(vec![0, 30, 30, 97, 163]), ..s(1, 163, 4, 2, 64, 64) }),
        ("varlen-window40", AttnSpec { window: Some(40), cu_seqlens: Some(vec![0, 0, 70, 71, 150]), ..s(1, 150, 2, 2, 64, 32) }),
        ("t65-noncausal-gqa4", AttnSpec { causal: false, ..s(2, 65, 4, 1, 64, 64) }),
    ];
    out.iter_mut()
        .map(|(n, spec)| AttnCase { name: format!("attn/{n}"), spec: std::mem::replace(spec, AttnSpec::new(1, 1, 1, 1)) })
        .collect()
}

/// A case's inputs and upstream gradient, drawn in f64 and rounded to f32, kept in both widths
/// (the f64 copies hold exactly the f32 values, so the oracle sees what the f32 paths see).
pub struct AttnCaseData {
    /// The validated problem.
    pub problem: AttnProblem,
    /// `q, k, v, do` in f64 (exactly f32-representable).
    pub wide: [Vec<f64>; 4],
    /// The same in f32.
    pub narrow: [Vec<f32>; 4],
}

impl AttnCaseData {
    /// Standard-normal `q, k, v, do` from `seed`.
    ///
    /// # Errors
    /// An invalid spec.
    pub fn generate(case: &AttnCase, seed: u64) -> Result<Self> {
        let problem = AttnProblem::new(case.spec.clone())?;
        let mut rng = Rng::new(seed);
        let lens = [problem.q_len(), problem.k_len(), problem.v_len(), problem.o_len()];
        let narrow = lens.map(|n| to_f32(&rng.fill(n, Rng::normal)));
        let wide = narrow.clone().map(|x| x.into_iter().map(f64::from).collect());
        Ok(Self { problem, wide, narrow })
    }
}
