//! The op contract of softmax attention (flash_attn's `flash_attn_func` /
//! `flash_attn_varlen_func` as fla's `fla/layers/attn.py` calls them).
//!
//! Per sequence n, query head j and its kv head `g = j / (H / H_KV)` (grouped-query attention),
//! for query row i and key rows `s` of the same sequence (positions relative to its start):
//!
//! ```text
//! allowed(i, s) = s <= i            (causal)      and  i - w < s  (window w, flash_attn's (w-1, 0))
//! S_is   = scale * q_i . k_s        (scale default D^-1/2)
//! lse_i  = log sum_{s allowed} exp(S_is)
//! P_is   = exp(S_is - lse_i)
//! o_i    = sum_s P_is v_s
//! ```
//!
//! A window requires `causal` (fla only builds `window_size=(w-1, 0)` for causal attention; a
//! two-sided window is refused with [`Error::BadArg`]). A query row with no allowed key cannot
//! occur under causal masking (it always sees itself); non-causal rows see their whole sequence.
//! Empty sequences (varlen) contribute nothing.
//!
//! Backward takes `do [B,T,H,DV]` and the forward's `o` and `lse` and returns `dq [B,T,H,D]`,
//! `dk [B,T,H_KV,D]`, `dv [B,T,H_KV,DV]` (the kv gradients summed over the query heads of the
//! group). See `docs/math/attention.md`.

use crate::op::{first_bad, Check, Scan};
use crate::problem::{nonzero_dims, resolve_scale, seq_bounds};
use crate::{Error, Real, Result};
use std::ops::Range;

const OP: &str = "attn";

/// What the caller asks for, before validation. See [`AttnProblem::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttnSpec {
    /// Batch size B (must be 1 with `cu_seqlens`).
    pub b: usize,
    /// Time steps T per batch row (the packed length with `cu_seqlens`).
    pub t: usize,
    /// Query heads H, a multiple of `h_kv`.
    pub h: usize,
    /// Key/value heads H_KV (GQA; H_KV = H without grouping).
    pub h_kv: usize,
    /// Head dim D of q and k.
    pub d: usize,
    /// Head dim DV of v and o (usually D).
    pub dv: usize,
    /// Causal masking (key s allowed for query i only when s <= i).
    pub causal: bool,
    /// Sliding window w >= 1: query i sees keys `i - w < s <= i` (flash_attn's
    /// `window_size=(w-1, 0)`). Requires `causal`.
    pub window: Option<usize>,
    /// Score scale. Default: `D^-1/2`.
    pub scale: Option<f64>,
    /// Packed variable-length input, as for GLA ([`crate::ProblemSpec::cu_seqlens`]).
    pub cu_seqlens: Option<Vec<usize>>,
}

impl AttnSpec {
    /// A causal spec without grouping, window or varlen, `DV = D`, the default scale.
    pub fn new(b: usize, t: usize, h: usize, d: usize) -> Self {
        Self { b, t, h, h_kv: h, d, dv: d, causal: true, window: None, scale: None, cu_seqlens: None }
    }
}

/// A validated attention problem: dims, options, resolved scale and the token range of every
/// sequence. Tokens are addressed by a flat row index `r` over `[B*T]`; q is `[rows, H, D]`,
/// k `[rows, H_KV, D]`, v `[rows, H_KV, DV]`, o `[rows, H, DV]`, lse `[rows, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnProblem {
    spec: AttnSpec,
    scale: f64,
    bounds: Vec<usize>,
    varlen: bool,
}

impl AttnProblem {
    /// Validates a spec.
    ///
    /// # Errors
    /// [`Error::ZeroDim`] when B, H, H_KV, D or DV is 0 (T = 0 is legal); [`Error::BadArg`] when H
    /// is not a multiple of H_KV, the window is 0, or a window comes without `causal`;
    /// [`Error::CuSeqlens`]; [`Error::BadScale`]; [`Error::Overflow`].
    pub fn new(mut spec: AttnSpec) -> Result<Self> {
        nonzero_dims(OP, &[("B", spec.b), ("H", spec.h), ("H_KV", spec.h_kv), ("D", spec.d), ("DV", spec.dv)])?;
        if !spec.h.is_multiple_of(spec.h_kv) {
            return Err(Error::BadArg {
                key: "H_KV",
                reason: format!("the query heads H = {} must be a multiple of the kv heads H_KV = {}", spec.h, spec.h_kv),
            });
        }
        match spec.window {
            Some(0) => return Err(Error::BadArg { key: "window", reason: "a window must hold at least the query itself (w >= 1)".into() }),
            Some(_) if !spec.causal => {
                return Err(Error::BadArg {
                    key: "window",
                    reason: "a sliding window requires causal attention (flash_attn's (w-1, 0))".into(),
                })
            }
            _ => {}
        }
        let rows = spec.b.checked_mul(spec.t).ok_or(Error::Overflow { op: OP })?;
        rows.checked_mul(spec.h).and_then(|x| x.checked_mul(spec.d.max(spec.dv))).ok_or(Error::Overflow { op: OP })?;
        let scale = resolve_scale(spec.scale, spec.d)?;
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
    /// Query heads H.
    pub fn h(&self) -> usize {
        self.spec.h
    }
    /// Key/value heads H_KV.
    pub fn h_kv(&self) -> usize {
        self.spec.h_kv
    }
    /// Query heads per kv head, H / H_KV.
    pub fn group(&self) -> usize {
        self.spec.h / self.spec.h_kv
    }
    /// The kv head read by query head `j`.
    pub fn kv_head(&self, j: usize) -> usize {
        j / self.group()
    }
    /// Head dim D of q and k.
    pub fn d(&self) -> usize {
        self.spec.d
    }
    /// Head dim DV of v and o.
    pub fn dv(&self) -> usize {
        self.spec.dv
    }
    /// Causal masking.
    pub fn causal(&self) -> bool {
        self.spec.causal
    }
    /// The sliding window, if any.
    pub fn window(&self) -> Option<usize> {
        self.spec.window
    }
    /// The resolved score scale.
    pub fn scale(&self) -> f64 {
        self.scale
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
    /// Token rows B*T.
    pub fn rows(&self) -> usize {
        self.spec.b * self.spec.t
    }
    /// The keys (positions relative to the sequence start) query position `i` of a sequence of
    /// `len` tokens attends: the one place the mask is defined, shared by every path.
    pub fn keys(&self, i: usize, len: usize) -> Range<usize> {
        if !self.spec.causal {
            return 0..len;
        }
        let lo = self.spec.window.map_or(0, |w| (i + 1).saturating_sub(w));
        lo..i + 1
    }
    /// Elements of q: `B*T*H*D`.
    pub fn q_len(&self) -> usize {
        self.rows() * self.spec.h * self.spec.d
    }
    /// Elements of k: `B*T*H_KV*D`.
    pub fn k_len(&self) -> usize {
        self.rows() * self.spec.h_kv * self.spec.d
    }
    /// Elements of v: `B*T*H_KV*DV`.
    pub fn v_len(&self) -> usize {
        self.rows() * self.spec.h_kv * self.spec.dv
    }
    /// Elements of o and do: `B*T*H*DV`.
    pub fn o_len(&self) -> usize {
        self.rows() * self.spec.h * self.spec.dv
    }
    /// Elements of lse: `B*T*H`.
    pub fn lse_len(&self) -> usize {
        self.rows() * self.spec.h
    }
    fn shape(&self, heads: usize, dim: usize) -> String {
        format!("[B={}, T={}, {heads}, {dim}]", self.spec.b, self.spec.t)
    }
}

/// Borrowed inputs of one attention call, all time-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct AttnInputs<'a, T> {
    /// Queries `[B,T,H,D]`.
    pub q: &'a [T],
    /// Keys `[B,T,H_KV,D]`.
    pub k: &'a [T],
    /// Values `[B,T,H_KV,DV]`.
    pub v: &'a [T],
}

/// The forward's results: the output and the log-sum-exp the backward recomputes P from.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnForward<T> {
    /// `[B,T,H,DV]`.
    pub o: Vec<T>,
    /// Natural-log sum of the exponentiated scaled scores per query row, `[B,T,H]`, f32 as
    /// flash attention keeps it (the f64 oracle's is rounded too, which is exact enough for tests).
    pub lse: Vec<f32>,
}

/// Gradients returned by an attention backward call.
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads<T> {
    /// `[B,T,H,D]`.
    pub dq: Vec<T>,
    /// `[B,T,H_KV,D]`, summed over the query heads of each group.
    pub dk: Vec<T>,
    /// `[B,T,H_KV,DV]`, summed over the query heads of each group.
    pub dv: Vec<T>,
}

/// One attention algorithm on one backend. Every implementation computes the function of the
/// module docs; the shared case table runs each against the f64 naive oracle.
pub trait AttnOp<T: Real>: Sync {
    /// A short name for tables and errors, e.g. `cpu-attn-tiled`.
    fn name(&self) -> &'static str;
    /// Forward: `o` and `lse`.
    ///
    /// # Errors
    /// Shape and value errors ([`AttnInputs::validate`]).
    fn forward(&self, p: &AttnProblem, x: &AttnInputs<'_, T>) -> Result<AttnForward<T>>;
    /// Backward of `L = <do, o>` given the forward's `o` and `lse`.
    ///
    /// # Errors
    /// As [`AttnOp::forward`], plus wrong shapes or values of `o`, `lse`, `do`.
    fn backward(&self, p: &AttnProblem, x: &AttnInputs<'_, T>, fwd: &AttnForward<T>, d_o: &[T]) -> Result<AttnGrads<T>>;
}

/// The layout of a device KV cache for the decode step of causal attention (the GPU kernels'
/// contract, `crates/gla-cuda/kernels/attn/decode.cu`), one new query token per sequence and step:
///
/// - `k_cache [N, S, H_KV, D]`, `v_cache [N, S, H_KV, DV]`: [`AttnCacheLayout::slots`] = S slots
///   per sequence;
/// - `lens [N]` (i32): the tokens sequence n has seen including the current one; 0 marks a
///   sequence idle this step (nothing appended, `o = 0`, `lse = -inf`);
/// - token p lives at slot `p % S`: without a window S is the capacity and every `len <= S`
///   (the slot is p); with a window w, `S = w` and the cache is a ring buffer holding exactly the
///   keys `p - w < s <= p` the window allows;
/// - a step appends the new k, v at slot `(len - 1) % S`, then attends to the `min(len, S)`
///   tokens held, which are the slots `0 .. min(len, S)` (softmax ignores key order);
/// - `q [N, H, D]` in, `o [N, H, DV]` and `lse [N, H]` (f32, natural log) out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnCacheLayout {
    /// Sequences N.
    pub n: usize,
    /// Slots S per sequence: the capacity, or the window.
    pub slots: usize,
    /// Query heads H.
    pub h: usize,
    /// Key/value heads H_KV.
    pub h_kv: usize,
    /// Head dim D of q and k.
    pub d: usize,
    /// Head dim DV of v and o.
    pub dv: usize,
    /// The sliding window (then `slots == window`).
    pub window: Option<usize>,
    /// The resolved score scale.
    pub scale: f64,
}

impl AttnCacheLayout {
    /// The layout of `n` sequences decoding with the heads, dims, window and scale of `p` (its B,
    /// T and cu_seqlens are ignored), `capacity` slots per sequence without a window, `w` with one.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a non-causal problem; [`Error::ZeroDim`] for `n` or the slots 0;
    /// [`Error::Overflow`] when the cache's element count does not fit.
    pub fn new(p: &AttnProblem, n: usize, capacity: usize) -> Result<Self> {
        if !p.causal() {
            return Err(Error::Unsupported {
                backend: "attn-decode",
                what: "non-causal attention (a decode step only sees the past)".into(),
            });
        }
        let slots = p.window().unwrap_or(capacity);
        nonzero_dims(OP, &[("N", n), ("S", slots)])?;
        n.checked_mul(slots)
            .and_then(|x| x.checked_mul(p.h_kv()))
            .and_then(|x| x.checked_mul(p.d().max(p.dv())))
            .ok_or(Error::Overflow { op: OP })?;
        Ok(Self { n, slots, h: p.h(), h_kv: p.h_kv(), d: p.d(), dv: p.dv(), window: p.window(), scale: p.scale() })
    }
    /// Elements of `k_cache`: `N*S*H_KV*D`.
    pub fn k_len(&self) -> usize {
        self.n * self.slots * self.h_kv * self.d
    }
    /// Elements of `v_cache`: `N*S*H_KV*DV`.
    pub fn v_len(&self) -> usize {
        self.n * self.slots * self.h_kv * self.dv
    }
    /// The slot of token position `p` (0-based): `p % S`.
    pub fn slot(&self, p: usize) -> usize {
        p % self.slots
    }
}

fn check_len(tensor: &'static str, expected: String, numel: usize, got: usize) -> Result<()> {
    if numel == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op: OP, tensor, expected, numel, got })
    }
}

impl<T: Real> AttnInputs<'_, T> {
    /// Checks every length against the problem.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the tensor and its expected shape.
    pub fn validate_shapes(&self, p: &AttnProblem) -> Result<()> {
        check_len("q", p.shape(p.h(), p.d()), p.q_len(), self.q.len())?;
        check_len("k", p.shape(p.h_kv(), p.d()), p.k_len(), self.k.len())?;
        check_len("v", p.shape(p.h_kv(), p.dv()), p.v_len(), self.v.len())
    }

    /// Checks shapes and that no value is NaN or infinite.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`].
    pub fn validate(&self, p: &AttnProblem) -> Result<()> {
        self.validate_with(p, &first_bad)
    }

    /// [`AttnInputs::validate`] with the value scans done by `scan`.
    ///
    /// # Errors
    /// As [`AttnInputs::validate`].
    pub fn validate_with(&self, p: &AttnProblem, scan: &Scan<'_, T>) -> Result<()> {
        self.validate_shapes(p)?;
        for (tensor, x) in [("q", self.q), ("k", self.k), ("v", self.v)] {
            finite(tensor, x, scan)?;
        }
        Ok(())
    }
}

fn finite<T: Real>(tensor: &'static str, x: &[T], scan: &Scan<'_, T>) -> Result<()> {
    match scan(x, Check::Finite) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { op: OP, tensor, index, value: x[index].to_f64() }),
    }
}

impl<T: Real> AttnForward<T> {
    /// Checks the forward's results handed back to a backward, and its upstream gradient `do`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`].
    pub fn validate_backward(&self, p: &AttnProblem, d_o: &[T]) -> Result<()> {
        check_len("o", p.shape(p.h(), p.dv()), p.o_len(), self.o.len())?;
        check_len("lse", format!("[B={}, T={}, H={}]", p.b(), p.t(), p.h()), p.lse_len(), self.lse.len())?;
        check_len("do", p.shape(p.h(), p.dv()), p.o_len(), d_o.len())?;
        finite("o", &self.o, &first_bad)?;
        finite("do", d_o, &first_bad)?;
        // lse is +-inf nowhere the mask leaves a key; padding rows beyond the last sequence
        // (varlen) keep 0.
        finite("lse", &self.lse, &first_bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_checks_heads_window_and_keys() {
        let mut s = AttnSpec::new(1, 8, 6, 4);
        s.h_kv = 4;
        assert!(matches!(AttnProblem::new(s.clone()), Err(Error::BadArg { key: "H_KV", .. })));
        s.h_kv = 2;
        s.window = Some(0);
        assert!(matches!(AttnProblem::new(s.clone()), Err(Error::BadArg { key: "window", .. })));
        s.window = Some(3);
        let p = AttnProblem::new(s.clone()).unwrap();
        assert_eq!((p.group(), p.kv_head(5), p.keys(5, 8), p.keys(1, 8)), (3, 1, 3..6, 0..2));
        s.causal = false;
        assert!(matches!(AttnProblem::new(s.clone()), Err(Error::BadArg { key: "window", .. })));
        s.window = None;
        assert_eq!(AttnProblem::new(s).unwrap().keys(2, 8), 0..8);
    }

    #[test]
    fn cache_layout_takes_the_window_as_its_slots() {
        let mut s = AttnSpec::new(1, 8, 4, 16);
        s.h_kv = 2;
        s.window = Some(5);
        let c = AttnCacheLayout::new(&AttnProblem::new(s.clone()).unwrap(), 3, 100).unwrap();
        assert_eq!((c.slots, c.k_len(), c.slot(12)), (5, 3 * 5 * 2 * 16, 2));
        s.window = None;
        assert_eq!(AttnCacheLayout::new(&AttnProblem::new(s.clone()).unwrap(), 3, 100).unwrap().slots, 100);
        assert!(matches!(AttnCacheLayout::new(&AttnProblem::new(s.clone()).unwrap(), 0, 100), Err(Error::ZeroDim { .. })));
        s.causal = false;
        assert!(matches!(AttnCacheLayout::new(&AttnProblem::new(s).unwrap(), 3, 100), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn inputs_check_shapes_and_values() {
        let p = AttnProblem::new(AttnSpec::new(1, 3, 1, 2)).unwrap();
        let q = vec![0.1f32; 6];
        let x = AttnInputs { q: &q, k: &q, v: &q };
        x.validate(&p).unwrap();
        let short = vec![0.1f32; 5];
        assert!(matches!(AttnInputs { v: &short, ..x }.validate(&p), Err(Error::ShapeMismatch { tensor: "v", .. })));
        let mut bad = q.clone();
        bad[4] = f32::NAN;
        assert!(matches!(AttnInputs { k: &bad, ..x }.validate(&p), Err(Error::NonFinite { tensor: "k", index: 4, .. })));
    }
}
