//! The op contract of the delta-rule family: DeltaNet and Gated DeltaNet (fla's
//! `chunk_delta_rule` / `chunk_gated_delta_rule`, 0.6.0).
//!
//! Per sequence n and value head j, with state `S` in `R^{K x V}` (f32 or wider) and the query/key
//! head `i = j / (HV / H)` (grouped value heads, fla's `num_v_heads`):
//!
//! ```text
//! q_t, k_t = l2norm(q_t), l2norm(k_t)              when l2_qk (x / sqrt(sum x^2 + 1e-6))
//! beta_t   = s * sigmoid(b_t)                      when beta_sigmoid (s = 2 with allow_neg_eigval, else 1)
//! g_t      = -exp(A_log[j]) * softplus(a_t + dt_bias[j])   with DeltaGate::Computed (softplus(x) = x for x > 20)
//!
//! S       = exp(g_t) S_{t-1}                        decay first (no decay without a gate)
//! u_t     = beta_t (v_t - S^T k_t)                  the delta: what the state misses of v_t
//! S_t     = S + k_t u_t^T                           i.e. S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
//! o_t     = scale * S_t^T q_t                       the current token sees itself
//! ```
//!
//! `S_0` is the initial state `h0[n, j]` (zero when absent); the final state is `S_T`. The scale
//! multiplies after the L2 norm (default `K^-1/2`).
//!
//! Backward takes `do [B,T,HV,V]` and an optional `dht [N,HV,K,V]` and returns `dq, dk` (at the
//! inputs, i.e. through the L2 norm when it is inside the op), `dv`, `dbeta` (through the sigmoid
//! when it is inside), `dg` shaped like the `g` input (the log-decay's gradient, or with
//! [`DeltaGate::Computed`] the raw `a`'s), `dA_log [HV]` and `ddt_bias [HV]` (summed over every
//! token), and `dh0` when `h0` was given.

use crate::op::{first_bad, Check, Scan};
use crate::problem::{nonzero_dims, resolve_scale, seq_bounds};
use crate::{Backward, Error, Real, Result};
use std::ops::Range;

/// The L2-norm epsilon inside the op (fla's `l2norm_fwd` default).
pub const L2_EPS: f64 = 1e-6;
/// Above this, fla's softplus returns its argument (PyTorch's threshold).
pub const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// The decay of the delta rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaGate {
    /// DeltaNet: no decay; `g` is absent.
    None,
    /// Gated DeltaNet with a given log-decay `g [B,T,HV]` (every value finite and <= 0).
    LogDecay,
    /// Gated DeltaNet with the gate computed inside the op from the raw `a = g [B,T,HV]`,
    /// `A_log [HV]` and `dt_bias [HV]` (fla's `use_gate_in_kernel`): `g = -exp(A_log) softplus(a + dt_bias)`.
    Computed,
}

/// What the caller asks for, before validation. See [`DeltaProblem::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaSpec {
    /// Batch size B (must be 1 with `cu_seqlens`).
    pub b: usize,
    /// Time steps T per batch row (the packed length with `cu_seqlens`).
    pub t: usize,
    /// Query/key heads H.
    pub h: usize,
    /// Value heads HV, a multiple of H (fla's `num_v_heads`; HV = H without grouping).
    pub hv: usize,
    /// Key dim K.
    pub k: usize,
    /// Value dim V.
    pub v: usize,
    /// The decay.
    pub gate: DeltaGate,
    /// Output scale. Default: `K^-1/2`.
    pub scale: Option<f64>,
    /// Packed variable-length input, as for GLA ([`crate::ProblemSpec::cu_seqlens`]).
    pub cu_seqlens: Option<Vec<usize>>,
    /// L2-normalise q and k inside the op (fla's `use_qk_l2norm_in_kernel`).
    pub l2_qk: bool,
    /// `beta` holds logits; the op applies the sigmoid (fla's `use_beta_sigmoid_in_kernel`).
    pub beta_sigmoid: bool,
    /// `beta = 2 sigmoid(b)` in (0, 2): negative eigenvalues of the transition. Requires
    /// `beta_sigmoid`, as in fla.
    pub allow_neg_eigval: bool,
}

impl DeltaSpec {
    /// A spec with the plain options: no L2 norm, beta given directly, no grouping, no varlen,
    /// the default scale.
    pub fn new(b: usize, t: usize, h: usize, k: usize, v: usize, gate: DeltaGate) -> Self {
        Self { b, t, h, hv: h, k, v, gate, scale: None, cu_seqlens: None, l2_qk: false, beta_sigmoid: false, allow_neg_eigval: false }
    }
}

/// A validated delta-rule problem: dims, options, resolved scale and the token range of every
/// sequence.
///
/// Tokens are addressed by a flat row index `r` over `[B*T]` as for GLA ([`crate::Problem`]);
/// q and k are `[rows, H, K]`, v and o `[rows, HV, V]`, beta and g `[rows, HV]`, states
/// `[N, HV, K, V]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaProblem {
    spec: DeltaSpec,
    scale: f64,
    bounds: Vec<usize>,
    varlen: bool,
}

impl DeltaProblem {
    /// Validates a spec.
    ///
    /// # Errors
    /// [`Error::ZeroDim`] when B, H, HV, K or V is 0 (T = 0 is legal); [`Error::BadArg`] when HV
    /// is not a multiple of H, or `allow_neg_eigval` comes without `beta_sigmoid`;
    /// [`Error::CuSeqlens`]; [`Error::BadScale`]; [`Error::Overflow`].
    pub fn new(mut spec: DeltaSpec) -> Result<Self> {
        const OP: &str = "delta";
        nonzero_dims(OP, &[("B", spec.b), ("H", spec.h), ("HV", spec.hv), ("K", spec.k), ("V", spec.v)])?;
        if !spec.hv.is_multiple_of(spec.h) {
            return Err(Error::BadArg {
                key: "HV",
                reason: format!("the value heads HV = {} must be a multiple of the heads H = {}", spec.hv, spec.h),
            });
        }
        if spec.allow_neg_eigval && !spec.beta_sigmoid {
            return Err(Error::BadArg {
                key: "allow_neg_eigval",
                reason: "it requires beta_sigmoid (beta = 2 sigmoid(b) inside the op), as in fla".into(),
            });
        }
        let rows = spec.b.checked_mul(spec.t).ok_or(Error::Overflow { op: OP })?;
        let heads = spec.h.max(spec.hv);
        rows.checked_mul(heads).and_then(|x| x.checked_mul(spec.k.max(spec.v))).ok_or(Error::Overflow { op: OP })?;
        spec.hv
            .checked_mul(spec.k)
            .and_then(|x| x.checked_mul(spec.v))
            .and_then(|x| x.checked_mul(rows.max(spec.b)))
            .ok_or(Error::Overflow { op: OP })?;
        let scale = resolve_scale(spec.scale, spec.k)?;
        let (bounds, varlen) = seq_bounds(spec.b, spec.t, spec.cu_seqlens.take())?;
        Ok(Self { spec, scale, bounds, varlen })
    }

    /// Batch size B.
    pub fn b(&self) -> usize {
        self.spec.b
    }
    /// Time steps T per batch row.
    pub fn t(&self) -> usize {
        self.spec.t
    }
    /// Query/key heads H.
    pub fn h(&self) -> usize {
        self.spec.h
    }
    /// Value heads HV.
    pub fn hv(&self) -> usize {
        self.spec.hv
    }
    /// Value heads per query/key head, HV / H.
    pub fn group(&self) -> usize {
        self.spec.hv / self.spec.h
    }
    /// The query/key head of value head `j`.
    pub fn qk_head(&self, j: usize) -> usize {
        j / self.group()
    }
    /// Key dim K.
    pub fn k(&self) -> usize {
        self.spec.k
    }
    /// Value dim V.
    pub fn v(&self) -> usize {
        self.spec.v
    }
    /// The decay.
    pub fn gate(&self) -> DeltaGate {
        self.spec.gate
    }
    /// The resolved output scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// L2 norm of q and k inside the op.
    pub fn l2_qk(&self) -> bool {
        self.spec.l2_qk
    }
    /// Sigmoid of beta inside the op.
    pub fn beta_sigmoid(&self) -> bool {
        self.spec.beta_sigmoid
    }
    /// The factor of the sigmoid: 2 with `allow_neg_eigval`, else 1.
    pub fn beta_scale(&self) -> f64 {
        if self.spec.allow_neg_eigval {
            2.0
        } else {
            1.0
        }
    }
    /// Whether beta may reach (1, 2).
    pub fn allow_neg_eigval(&self) -> bool {
        self.spec.allow_neg_eigval
    }
    /// Whether the input is packed varlen.
    pub fn is_varlen(&self) -> bool {
        self.varlen
    }
    /// Number of sequences N.
    pub fn n(&self) -> usize {
        self.bounds.len() - 1
    }
    /// Token rows of sequence `n`.
    pub fn seq(&self, n: usize) -> Range<usize> {
        self.bounds[n]..self.bounds[n + 1]
    }
    /// The N+1 row offsets of the sequences.
    pub fn bounds(&self) -> &[usize] {
        &self.bounds
    }
    /// Token rows B*T.
    pub fn rows(&self) -> usize {
        self.spec.b * self.spec.t
    }
    /// Elements of q and k: `B*T*H*K`.
    pub fn qk_len(&self) -> usize {
        self.rows() * self.spec.h * self.spec.k
    }
    /// Elements of v and o: `B*T*HV*V`.
    pub fn v_len(&self) -> usize {
        self.rows() * self.spec.hv * self.spec.v
    }
    /// Elements of beta: `B*T*HV`.
    pub fn beta_len(&self) -> usize {
        self.rows() * self.spec.hv
    }
    /// Elements of g: `B*T*HV`, or 0 without a gate.
    pub fn g_len(&self) -> usize {
        match self.spec.gate {
            DeltaGate::None => 0,
            _ => self.beta_len(),
        }
    }
    /// Elements of a state tensor `[N, HV, K, V]`.
    pub fn state_len(&self) -> usize {
        self.n() * self.spec.hv * self.spec.k * self.spec.v
    }
    /// A readable shape for error messages: `last` is one of `K` (q, k), `V` (v, o), `HV` (beta,
    /// g), `P` (A_log, dt_bias), `S` (states).
    pub fn shape_str(&self, last: &'static str) -> String {
        let (b, t, h, hv) = (self.spec.b, self.spec.t, self.spec.h, self.spec.hv);
        match last {
            "V" => format!("[B={b}, T={t}, HV={hv}, V={}]", self.spec.v),
            "HV" => format!("[B={b}, T={t}, HV={hv}]"),
            "P" => format!("[HV={hv}]"),
            "S" => format!("[N={}, HV={hv}, K={}, V={}]", self.n(), self.spec.k, self.spec.v),
            _ => format!("[B={b}, T={t}, H={h}, K={}]", self.spec.k),
        }
    }

    /// Floating-point operations of the chunked (WY) algorithm `(forward, backward)`, a
    /// multiply-add counted as 2 and triangular products at half. Per chunk of `m` rows and value
    /// head, the forward is `m^2 K` (K K^T), `m^3 / 3` (the triangular solve), `m^2 (K + V)`
    /// (w, u), `4 m K V` (w h and the state update), `2 m K V` (the inter output) and
    /// `m^2 (K + V)` (the intra output); the backward is counted as twice the forward plus the
    /// recomputed state pass.
    pub fn chunk_flops(&self) -> (f64, f64) {
        let (k, v) = (self.spec.k as f64, self.spec.v as f64);
        let mut fwd = 0.0;
        for n in 0..self.n() {
            let len = self.seq(n).len();
            for c in 0..len.div_ceil(crate::BT) {
                let m = (len - c * crate::BT).min(crate::BT) as f64;
                fwd += m * m * k + m * m * m / 3.0 + 2.0 * m * m * (k + v) + 6.0 * m * k * v;
            }
        }
        let hv = self.spec.hv as f64;
        let state = self.rows() as f64 * 4.0 * k * v * hv;
        (fwd * hv, 2.0 * fwd * hv + state)
    }

    /// The fewest bytes a forward must move: read q, k, v, beta, g (and h0), write o (and the
    /// final state), each once, inputs of `elem` bytes, states in f32.
    pub fn min_bytes_fwd(&self, elem: usize, states: bool) -> f64 {
        let io = 2 * self.qk_len() + 2 * self.v_len() + self.beta_len() + self.g_len();
        let st = if states { 2 * self.state_len() * 4 } else { 0 };
        (io * elem + st) as f64
    }
}

/// Borrowed inputs of one delta-rule call, all time-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct DeltaInputs<'a, T> {
    /// Queries `[B,T,H,K]`.
    pub q: &'a [T],
    /// Keys `[B,T,H,K]`.
    pub k: &'a [T],
    /// Values `[B,T,HV,V]`.
    pub v: &'a [T],
    /// Write strengths `[B,T,HV]`: beta itself, or its logits with `beta_sigmoid`.
    pub beta: &'a [T],
    /// `[B,T,HV]`: the log-decay ([`DeltaGate::LogDecay`]), the raw `a` ([`DeltaGate::Computed`]),
    /// or absent ([`DeltaGate::None`]).
    pub g: Option<&'a [T]>,
    /// `A_log [HV]`, with [`DeltaGate::Computed`] only.
    pub a_log: Option<&'a [T]>,
    /// `dt_bias [HV]`, with [`DeltaGate::Computed`] only.
    pub dt_bias: Option<&'a [T]>,
    /// Initial state `[N,HV,K,V]`, or absent (zero).
    pub h0: Option<&'a [T]>,
}

/// Gradients returned by a delta-rule backward call.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaGrads<T> {
    /// `[B,T,H,K]`.
    pub dq: Vec<T>,
    /// `[B,T,H,K]`.
    pub dk: Vec<T>,
    /// `[B,T,HV,V]`.
    pub dv: Vec<T>,
    /// `[B,T,HV]`, at the `beta` input (logits with `beta_sigmoid`).
    pub dbeta: Vec<T>,
    /// Shaped like `g`; `None` without a gate.
    pub dg: Option<Vec<T>>,
    /// `[HV]` with [`DeltaGate::Computed`].
    pub da_log: Option<Vec<T>>,
    /// `[HV]` with [`DeltaGate::Computed`].
    pub ddt_bias: Option<Vec<T>>,
    /// `[N,HV,K,V]` when an initial state was given.
    pub dh0: Option<Vec<T>>,
}

/// One algorithm of the delta-rule family on one backend. Every implementation computes the
/// function of the module docs; the shared case table runs each against the f64 naive oracle.
pub trait DeltaOp<T: Real>: Sync {
    /// A short name for tables and errors, e.g. `cpu-delta-chunk`.
    fn name(&self) -> &'static str;
    /// Forward: `o [B,T,HV,V]` and, when `output_final_state`, the final state.
    ///
    /// # Errors
    /// Shape, value ([`DeltaInputs::validate`]) and support errors.
    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, output_final_state: bool) -> Result<crate::Forward<T>>;
    /// Backward of `L = <do, o> + <dht, S_T>` (`do [B,T,HV,V]`, `dht [N,HV,K,V]`).
    ///
    /// # Errors
    /// As [`DeltaOp::forward`], plus wrong shapes or values of `do` / `dht`.
    fn backward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, T>, d: &Backward<'_, T>) -> Result<DeltaGrads<T>>;
}

fn check_len(op: &'static str, tensor: &'static str, expected: String, numel: usize, got: usize) -> Result<()> {
    if numel == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op, tensor, expected, numel, got })
    }
}

fn check_opt<T>(op: &'static str, tensor: &'static str, want: bool, expected: String, numel: usize, x: Option<&[T]>) -> Result<()> {
    match (want, x) {
        (true, Some(x)) => check_len(op, tensor, expected, numel, x.len()),
        (true, None) => check_len(op, tensor, expected, numel, 0),
        (false, Some(x)) => check_len(op, tensor, "[] (not used by this gate)".into(), 0, x.len()),
        (false, None) => Ok(()),
    }
}

impl<T: Real> DeltaInputs<'_, T> {
    /// Checks every length against the problem (what a GPU path can check on the host).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the tensor and its expected shape.
    pub fn validate_shapes(&self, op: &'static str, p: &DeltaProblem) -> Result<()> {
        check_len(op, "q", p.shape_str("K"), p.qk_len(), self.q.len())?;
        check_len(op, "k", p.shape_str("K"), p.qk_len(), self.k.len())?;
        check_len(op, "v", p.shape_str("V"), p.v_len(), self.v.len())?;
        check_len(op, "beta", p.shape_str("HV"), p.beta_len(), self.beta.len())?;
        let gated = p.gate() != DeltaGate::None;
        let computed = p.gate() == DeltaGate::Computed;
        check_opt(op, "g", gated, p.shape_str("HV"), p.beta_len(), self.g)?;
        check_opt(op, "A_log", computed, p.shape_str("P"), p.hv(), self.a_log)?;
        check_opt(op, "dt_bias", computed, p.shape_str("P"), p.hv(), self.dt_bias)?;
        if let Some(h0) = self.h0 {
            check_len(op, "h0", p.shape_str("S"), p.state_len(), h0.len())?;
        }
        Ok(())
    }

    /// Checks shapes and values: no NaN or infinity anywhere; a given log-decay <= 0; a beta
    /// given directly (no sigmoid) in [0, 2] (beyond 2 the transition `I - beta k k^T` of a unit
    /// key has an eigenvalue below -1 and the state grows without bound; fla's DeltaNet layer
    /// passes `2 sigmoid(b)`, or 2 itself without `use_beta`, with `allow_neg_eigval`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`], [`Error::BadGate`], [`Error::BadArg`] for
    /// a beta out of range.
    pub fn validate(&self, op: &'static str, p: &DeltaProblem) -> Result<()> {
        self.validate_with(op, p, &first_bad)
    }

    /// [`DeltaInputs::validate`] with the value scans done by `scan`.
    ///
    /// # Errors
    /// As [`DeltaInputs::validate`].
    pub fn validate_with(&self, op: &'static str, p: &DeltaProblem, scan: &Scan<'_, T>) -> Result<()> {
        self.validate_shapes(op, p)?;
        let finite = |tensor: &'static str, x: &[T]| match scan(x, Check::Finite) {
            None => Ok(()),
            Some(index) => Err(Error::NonFinite { op, tensor, index, value: x[index].to_f64() }),
        };
        finite("q", self.q)?;
        finite("k", self.k)?;
        finite("v", self.v)?;
        finite("beta", self.beta)?;
        for (name, x) in [("h0", self.h0), ("A_log", self.a_log), ("dt_bias", self.dt_bias)] {
            if let Some(x) = x {
                finite(name, x)?;
            }
        }
        if let Some(g) = self.g {
            if p.gate() == DeltaGate::LogDecay {
                if let Some(index) = scan(g, Check::Gate) {
                    return Err(Error::BadGate { op, index, value: g[index].to_f64() });
                }
            } else {
                finite("g", g)?;
            }
        }
        if !p.beta_sigmoid() {
            if let Some(index) = self.beta.iter().position(|&b| b < T::ZERO || b > T::ONE + T::ONE) {
                return Err(Error::BadArg {
                    key: "beta",
                    reason: format!(
                        "{op}: beta must lie in [0, 2] when given directly, found {} at flat index {index} \
                         (pass logits with beta_sigmoid instead)",
                        self.beta[index].to_f64()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl<T: Real> Backward<'_, T> {
    /// Checks the upstream gradients of a delta-rule call (`do [B,T,HV,V]`, `dht [N,HV,K,V]`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`].
    pub fn validate_delta(&self, op: &'static str, p: &DeltaProblem) -> Result<()> {
        check_len(op, "do", p.shape_str("V"), p.v_len(), self.d_o.len())?;
        if let Some(index) = first_bad(self.d_o, Check::Finite) {
            return Err(Error::NonFinite { op, tensor: "do", index, value: self.d_o[index].to_f64() });
        }
        if let Some(dht) = self.dht {
            check_len(op, "dht", p.shape_str("S"), p.state_len(), dht.len())?;
            if let Some(index) = first_bad(dht, Check::Finite) {
                return Err(Error::NonFinite { op, tensor: "dht", index, value: dht[index].to_f64() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_checks_heads_and_options() {
        let mut s = DeltaSpec::new(2, 5, 2, 8, 4, DeltaGate::LogDecay);
        s.hv = 3;
        assert!(matches!(DeltaProblem::new(s.clone()), Err(Error::BadArg { key: "HV", .. })));
        s.hv = 4;
        let p = DeltaProblem::new(s.clone()).unwrap();
        assert_eq!((p.group(), p.qk_head(3), p.g_len(), p.state_len()), (2, 1, 40, 2 * 4 * 8 * 4));
        s.allow_neg_eigval = true;
        assert!(matches!(DeltaProblem::new(s.clone()), Err(Error::BadArg { key: "allow_neg_eigval", .. })));
        s.beta_sigmoid = true;
        assert_eq!(DeltaProblem::new(s).unwrap().beta_scale(), 2.0);
    }

    #[test]
    fn inputs_check_shapes_and_values() {
        let p = DeltaProblem::new(DeltaSpec::new(1, 3, 1, 2, 2, DeltaGate::LogDecay)).unwrap();
        let (q, v, b) = (vec![0.1f32; 6], vec![0.1f32; 6], vec![0.5f32; 3]);
        let g = vec![-0.1f32; 3];
        let x = DeltaInputs { q: &q, k: &q, v: &v, beta: &b, g: Some(&g), a_log: None, dt_bias: None, h0: None };
        x.validate("t", &p).unwrap();
        let no_g = DeltaInputs { g: None, ..x };
        assert!(matches!(no_g.validate("t", &p), Err(Error::ShapeMismatch { tensor: "g", .. })));
        let g = vec![-0.1f32, 0.5, -0.1];
        let x = DeltaInputs { g: Some(&g), ..x };
        assert!(matches!(x.validate("t", &p), Err(Error::BadGate { index: 1, .. })));
        let big = vec![2.5f32; 3];
        let x = DeltaInputs { beta: &big, g: None, ..x };
        let p = DeltaProblem::new(DeltaSpec::new(1, 3, 1, 2, 2, DeltaGate::None)).unwrap();
        assert!(matches!(x.validate("t", &p), Err(Error::BadArg { key: "beta", .. })));
    }
}
