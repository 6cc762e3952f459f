//! The shared case table (DESIGN.md section 4), run by every backend's tests and by `gla check`,
//! and the error measure of every row ([`rel_rmse`]). Inputs are drawn like fla's tests: q, k, v,
//! h0 uniform in [0, 1), `g = logsigmoid(u) / gate_scale` with u uniform in [0, 1), do and dht
//! standard normal.

use gla_core::{Backward, Forward, GateKind, Grads, Inputs, Problem, ProblemSpec, Result};

/// A small, fast, seedable generator (splitmix64): tests and checks must not pull in `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// `n` values of `f(self)`.
    pub fn fill(&mut self, n: usize, mut f: impl FnMut(&mut Self) -> f64) -> Vec<f64> {
        (0..n).map(|_| f(self)).collect()
    }
}

/// `log(sigmoid(x))`, computed without overflow.
pub fn logsigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// One row of the case table.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Readable name, unique in the table.
    pub name: String,
    /// Problem dims and options (scale = default).
    pub spec: ProblemSpec,
    /// Gate normaliser: `g = logsigmoid(u) / gate_scale` (0.1 = very strong decay).
    pub gate_scale: f64,
    /// Whether an initial state is passed.
    pub h0: bool,
}

/// The shared case table: odd T (1, 15, 63, 64, 65, 1000), K=60 != V=100, gate scales
/// {0.1, 1, 10}, with and without an initial state, the three gate kinds, and packed varlen
/// input including an empty sequence.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let spec = |b, t, h, gate, cu: Option<Vec<usize>>| ProblemSpec { b, t, h, k: 60, v: 100, gate, scale: None, cu_seqlens: cu };
    for t in [1usize, 15, 63, 64, 65, 1000] {
        let (b, h) = if t >= 1000 { (1, 2) } else { (2, 2) };
        for gate_scale in [0.1, 1.0, 10.0] {
            for h0 in [false, true] {
                let name = format!("T{t}-gs{gate_scale}{}", if h0 { "-h0" } else { "" });
                out.push(Case { name, spec: spec(b, t, h, GateKind::PerKey, None), gate_scale, h0 });
            }
        }
    }
    let varlen = vec![0usize, 15, 15, 100, 300, 365];
    for (gate_scale, h0) in [(0.1, true), (1.0, false), (10.0, true)] {
        let name = format!("varlen-gs{gate_scale}{}", if h0 { "-h0" } else { "" });
        out.push(Case { name, spec: spec(1, 365, 2, GateKind::PerKey, Some(varlen.clone())), gate_scale, h0 });
    }
    out.push(Case {
        name: "varlen-empty-first-h0".into(),
        spec: spec(1, 16, 3, GateKind::PerKey, Some(vec![0, 0, 16])),
        gate_scale: 1.0,
        h0: true,
    });
    for (gate, tag) in [(GateKind::PerHead, "head"), (GateKind::None, "nogate")] {
        out.push(Case { name: format!("{tag}-T130-h0"), spec: spec(2, 130, 2, gate, None), gate_scale: 1.0, h0: true });
        out.push(Case { name: format!("{tag}-varlen"), spec: spec(1, 365, 2, gate, Some(varlen.clone())), gate_scale: 10.0, h0: false });
    }
    out
}

/// Inputs and upstream gradients of one case, in f64.
#[derive(Debug, Clone)]
pub struct CaseData {
    /// The validated problem.
    pub problem: Problem,
    /// `[B,T,H,K]`
    pub q: Vec<f64>,
    /// `[B,T,H,K]`
    pub k: Vec<f64>,
    /// `[B,T,H,V]`
    pub v: Vec<f64>,
    /// Shaped per the gate kind; empty when there is no gate.
    pub g: Vec<f64>,
    /// `[N,H,K,V]` or empty.
    pub h0: Vec<f64>,
    /// `[B,T,H,V]`
    pub d_o: Vec<f64>,
    /// `[N,H,K,V]`
    pub dht: Vec<f64>,
}

impl CaseData {
    /// Draws the data of `case` from `seed`.
    ///
    /// # Errors
    /// If the case's spec is invalid.
    pub fn generate(case: &Case, seed: u64) -> Result<Self> {
        let p = Problem::new(case.spec.clone())?;
        let mut rng = Rng::new(seed);
        let q = rng.fill(p.qk_len(), Rng::uniform);
        let k = rng.fill(p.qk_len(), Rng::uniform);
        let v = rng.fill(p.v_len(), Rng::uniform);
        let gs = case.gate_scale;
        let g = rng.fill(p.g_len(), |r| logsigmoid(r.uniform()) / gs);
        let h0 = if case.h0 { rng.fill(p.state_len(), Rng::uniform) } else { Vec::new() };
        let d_o = rng.fill(p.v_len(), Rng::normal);
        let dht = rng.fill(p.state_len(), Rng::normal);
        Ok(Self { problem: p, q, k, v, g, h0, d_o, dht })
    }
}

/// Relative RMSE `||a - b|| / ||b||` (b is the reference). NaN anywhere, or a length mismatch,
/// gives +inf, so NaN never passes.
///
/// When the reference is exactly zero everywhere (a gradient that vanishes identically, such as
/// `dg` of a one-token sequence without initial state, computed by the fast paths as a difference
/// of equal terms) a relative error means nothing; the absolute RMS `||a|| / sqrt(n)` is returned
/// instead, so the same tolerance then bounds the rounding residue absolutely.
pub fn rel_rmse<A: Copy + Into<f64>>(a: &[A], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let x: f64 = x.into();
        if x.is_nan() || y.is_nan() {
            return f64::INFINITY;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    if num == 0.0 {
        0.0
    } else if den == 0.0 {
        (num / a.len() as f64).sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Narrows to f32.
pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// A case's data narrowed to f32, for the f32 paths.
#[derive(Debug, Clone)]
pub struct CaseDataF32 {
    /// `[B,T,H,K]`
    pub q: Vec<f32>,
    /// `[B,T,H,K]`
    pub k: Vec<f32>,
    /// `[B,T,H,V]`
    pub v: Vec<f32>,
    /// Per the gate kind; empty when there is no gate.
    pub g: Vec<f32>,
    /// `[N,H,K,V]` or empty.
    pub h0: Vec<f32>,
    /// `[B,T,H,V]`
    pub d_o: Vec<f32>,
    /// `[N,H,K,V]`
    pub dht: Vec<f32>,
}

fn opt<T>(x: &[T]) -> Option<&[T]> {
    (!x.is_empty()).then_some(x)
}

impl CaseData {
    /// The f64 inputs as an [`Inputs`].
    pub fn inputs(&self) -> Inputs<'_, f64> {
        Inputs { q: &self.q, k: &self.k, v: &self.v, g: opt(&self.g), h0: opt(&self.h0) }
    }
    /// The f64 upstream gradients.
    pub fn grads_in(&self) -> Backward<'_, f64> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
    /// Everything narrowed to f32.
    pub fn to_f32(&self) -> CaseDataF32 {
        CaseDataF32 {
            q: to_f32(&self.q),
            k: to_f32(&self.k),
            v: to_f32(&self.v),
            g: to_f32(&self.g),
            h0: to_f32(&self.h0),
            d_o: to_f32(&self.d_o),
            dht: to_f32(&self.dht),
        }
    }
}

impl CaseDataF32 {
    /// The f32 inputs as an [`Inputs`].
    pub fn inputs(&self) -> Inputs<'_, f32> {
        Inputs { q: &self.q, k: &self.k, v: &self.v, g: opt(&self.g), h0: opt(&self.h0) }
    }
    /// The f32 upstream gradients.
    pub fn grads_in(&self) -> Backward<'_, f32> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
}

/// Relative RMSE of every output (`o, ht, dq, dk, dv`, and `dg`, `dh0` where the reference has
/// them) against the reference. A tensor the reference has and the result lacks gives +inf.
pub fn compare<A: Copy + Into<f64>>(fwd: &Forward<A>, bwd: &Grads<A>, rf: &Forward<f64>, rb: &Grads<f64>) -> Vec<(&'static str, f64)> {
    let or_empty = |x: &Option<Vec<A>>| x.clone().unwrap_or_default();
    let mut out = vec![
        ("o", rel_rmse(&fwd.o, &rf.o)),
        ("ht", rel_rmse(&or_empty(&fwd.ht), rf.ht.as_deref().unwrap_or(&[]))),
        ("dq", rel_rmse(&bwd.dq, &rb.dq)),
        ("dk", rel_rmse(&bwd.dk, &rb.dk)),
        ("dv", rel_rmse(&bwd.dv, &rb.dv)),
    ];
    if let Some(r) = &rb.dg {
        out.push(("dg", rel_rmse(&or_empty(&bwd.dg), r)));
    }
    if let Some(r) = &rb.dh0 {
        out.push(("dh0", rel_rmse(&or_empty(&bwd.dh0), r)));
    }
    out
}
