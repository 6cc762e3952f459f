//! [`Problem`]: the validated shape and options of one call into the GLA family.

use std::ops::Range;

use crate::{Error, GateKind, Result};

/// What the caller asks for, before validation. See [`Problem::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProblemSpec {
    /// Batch size B (must be 1 with `cu_seqlens`).
    pub b: usize,
    /// Time steps T per batch row (the packed length with `cu_seqlens`).
    pub t: usize,
    /// Heads H.
    pub h: usize,
    /// Key dim K (also the dim of q and of a per-key gate).
    pub k: usize,
    /// Value dim V.
    pub v: usize,
    /// Which gate the op uses; decides the shape of `g`.
    pub gate: GateKind,
    /// Output scale. Default: `K^-1/2`.
    pub scale: Option<f64>,
    /// Packed variable-length input: `[N+1]` offsets into the T axis, `cu_seqlens[0] == 0`,
    /// non-decreasing, last == T. Empty sequences are legal. Requires B == 1.
    pub cu_seqlens: Option<Vec<usize>>,
}

/// A validated problem: dims, gate kind, resolved scale and the token range of every sequence.
///
/// Tokens are addressed by a flat row index `r` over `[B*T]` (row `b*T + t`); element `(r, h, d)`
/// of a `[B, T, H, D]` tensor sits at `(r*H + h)*D + d`. Sequence `n` owns rows [`Problem::seq`]`(n)`;
/// its state is `[H, K, V]` at offset `n*H*K*V` of an `[N, H, K, V]` state tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    b: usize,
    t: usize,
    h: usize,
    k: usize,
    v: usize,
    gate: GateKind,
    scale: f64,
    // N+1 row offsets; for fixed-length input this is 0, T, 2T, ..., BT
    bounds: Vec<usize>,
    varlen: bool,
}

impl Problem {
    /// Validates a spec.
    ///
    /// # Errors
    /// [`Error::ZeroDim`] when B, H, K or V is 0 (T = 0 is legal: nothing to do);
    /// [`Error::CuSeqlens`] when `cu_seqlens` is empty, does not start at 0, decreases, does not
    /// end at T, or comes with B != 1; [`Error::BadScale`] for a non-finite scale;
    /// [`Error::Overflow`] when a tensor size overflows `usize`.
    pub fn new(spec: ProblemSpec) -> Result<Self> {
        const OP: &str = "gla";
        nonzero_dims(OP, &[("B", spec.b), ("H", spec.h), ("K", spec.k), ("V", spec.v)])?;
        let rows = spec.b.checked_mul(spec.t).ok_or(Error::Overflow { op: OP })?;
        let widest = spec.k.max(spec.v);
        rows.checked_mul(spec.h).and_then(|x| x.checked_mul(widest)).ok_or(Error::Overflow { op: OP })?;
        spec.h
            .checked_mul(spec.k)
            .and_then(|x| x.checked_mul(spec.v))
            .and_then(|x| x.checked_mul(rows.max(spec.b)))
            .ok_or(Error::Overflow { op: OP })?;
        let scale = resolve_scale(spec.scale, spec.k)?;
        let (bounds, varlen) = seq_bounds(spec.b, spec.t, spec.cu_seqlens)?;
        Ok(Self { b: spec.b, t: spec.t, h: spec.h, k: spec.k, v: spec.v, gate: spec.gate, scale, bounds, varlen })
    }

    /// Batch size B.
    pub fn b(&self) -> usize {
        self.b
    }
    /// Time steps T per batch row.
    pub fn t(&self) -> usize {
        self.t
    }
    /// Heads H.
    pub fn h(&self) -> usize {
        self.h
    }
    /// Key dim K.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Value dim V.
    pub fn v(&self) -> usize {
        self.v
    }
    /// The gate kind.
    pub fn gate(&self) -> GateKind {
        self.gate
    }
    /// The resolved output scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
    /// Whether the input is packed varlen (`cu_seqlens` given).
    pub fn is_varlen(&self) -> bool {
        self.varlen
    }
    /// Number of sequences N (B, or the number of `cu_seqlens` segments).
    pub fn n(&self) -> usize {
        self.bounds.len() - 1
    }
    /// Token rows of sequence `n` (a range of flat rows over `[B*T]`).
    pub fn seq(&self, n: usize) -> Range<usize> {
        self.bounds[n]..self.bounds[n + 1]
    }
    /// The N+1 row offsets of the sequences (`cu_seqlens`, or `0, T, .., B*T`).
    pub fn bounds(&self) -> &[usize] {
        &self.bounds
    }
    /// Token rows B*T.
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
    /// Elements of q and k: `B*T*H*K`.
    pub fn qk_len(&self) -> usize {
        self.rows() * self.h * self.k
    }
    /// Elements of v and o: `B*T*H*V`.
    pub fn v_len(&self) -> usize {
        self.rows() * self.h * self.v
    }
    /// Elements of g for this gate kind (0 when there is no gate).
    pub fn g_len(&self) -> usize {
        self.rows() * self.h * self.gate.width(self.k)
    }
    /// Elements of a state tensor `[N, H, K, V]`.
    pub fn state_len(&self) -> usize {
        self.n() * self.h * self.k * self.v
    }
    /// A readable shape for error messages, e.g. `[B=2, T=64, H=4, K=60]`.
    pub fn shape_str(&self, last: &'static str) -> String {
        let d = match last {
            "V" => self.v,
            "G" => {
                return match self.gate {
                    GateKind::PerKey => format!("[B={}, T={}, H={}, K={}]", self.b, self.t, self.h, self.k),
                    GateKind::PerHead => format!("[B={}, T={}, H={}]", self.b, self.t, self.h),
                    GateKind::None => "[] (no gate)".into(),
                }
            }
            "S" => return format!("[N={}, H={}, K={}, V={}]", self.n(), self.h, self.k, self.v),
            _ => self.k,
        };
        format!("[B={}, T={}, H={}, {}={}]", self.b, self.t, self.h, last, d)
    }

    /// Floating-point operations of the chunked algorithm `(forward, backward)`, counting a
    /// multiply-add as 2 and the causal intra-chunk products at half (the lower triangle).
    /// Per chunk of `m` rows: forward `4mKV + m^2 (K + V)` (state update, inter output, scores,
    /// scores @ v); backward `10mKV + m^2 (3K + 2V)` (state and state-gradient passes, dv, dq, dk
    /// inter parts, recomputed scores, dA, intra dq and dk). Used by every benchmark table.
    pub fn chunk_flops(&self) -> (f64, f64) {
        let (k, v) = (self.k as f64, self.v as f64);
        let (mut fwd, mut bwd) = (0.0, 0.0);
        for n in 0..self.n() {
            let len = self.seq(n).len();
            for c in 0..len.div_ceil(crate::BT) {
                let m = (len - c * crate::BT).min(crate::BT) as f64;
                fwd += 4.0 * m * k * v + m * m * (k + v);
                bwd += 10.0 * m * k * v + m * m * (3.0 * k + 2.0 * v);
            }
        }
        let h = self.h as f64;
        (fwd * h, bwd * h)
    }

    /// The fewest bytes a forward must move through memory: read q, k, v, g (and h0), write o
    /// (and the final state), each once, with inputs of `elem` bytes and states in f32.
    pub fn min_bytes_fwd(&self, elem: usize, states: bool) -> f64 {
        let io = 2 * self.qk_len() + self.g_len() + 2 * self.v_len();
        let st = if states { 2 * self.state_len() * 4 } else { 0 };
        (io * elem + st) as f64
    }
}

/// The N+1 row offsets of the sequences of a `[B, T]` batch (`0, T, .., B*T`), or of a packed
/// varlen batch (`cu_seqlens`, validated), and whether the input is varlen. Shared by every op
/// family's problem.
///
/// # Errors
/// [`Error::CuSeqlens`] as described at [`Problem::new`].
/// Every op's dims check: [`Error::ZeroDim`] for the first of `dims` (name, value) that is 0.
pub(crate) fn nonzero_dims(op: &'static str, dims: &[(&'static str, usize)]) -> Result<()> {
    match dims.iter().find(|d| d.1 == 0) {
        Some(&(dim, _)) => Err(Error::ZeroDim { op, dim }),
        None => Ok(()),
    }
}

/// Every op's scale: the one given, or `k^-1/2` for query/key width `k`; [`Error::BadScale`]
/// when it is not finite.
pub(crate) fn resolve_scale(scale: Option<f64>, k: usize) -> Result<f64> {
    let scale = scale.unwrap_or(1.0 / (k as f64).sqrt());
    if scale.is_finite() {
        Ok(scale)
    } else {
        Err(Error::BadScale(scale))
    }
}

pub(crate) fn seq_bounds(b: usize, t: usize, cu_seqlens: Option<Vec<usize>>) -> Result<(Vec<usize>, bool)> {
    match cu_seqlens {
        None => Ok(((0..=b).map(|i| i * t).collect(), false)),
        Some(cu) => {
            let bad = |reason: String| Err(Error::CuSeqlens { reason });
            if b != 1 {
                return bad(format!("needs B == 1 (packed input [1, total, ...]), got B = {}", b));
            }
            if cu.is_empty() {
                return bad("it is empty; it needs N+1 >= 1 offsets".into());
            }
            if cu[0] != 0 {
                return bad(format!("must start at 0, starts at {}", cu[0]));
            }
            if let Some(i) = (1..cu.len()).find(|&i| cu[i] < cu[i - 1]) {
                return bad(format!("must be non-decreasing, but cu_seqlens[{}] = {} < cu_seqlens[{}] = {}", i, cu[i], i - 1, cu[i - 1]));
            }
            let last = *cu.last().unwrap_or(&0);
            if last != t {
                return bad(format!("must end at the packed length T = {}, ends at {}", t, last));
            }
            Ok((cu, true))
        }
    }
}
