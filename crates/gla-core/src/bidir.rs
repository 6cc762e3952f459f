//! The op contract of the bidirectional GLA scan of ViG (hustvl/ViG `GatedLinearAttention`,
//! the BiGLA layer; `docs/math/bidir.md`).
//!
//! Per sequence n and head h, two scans over the same q, k, v with their own per-key log-decays
//! `gf`, `gb` (both `[B,T,H,K]`, <= 0), each counting the token's own `k_t v_t^T`:
//!
//! ```text
//! forward  (t = 1 .. L):  Sf_t = diag(exp(gf_t)) Sf_{t-1} + k_t v_t^T,   of_t = scale Sf_t^T q_t
//! backward (t = L .. 1):  Sb_t = diag(exp(gb_t)) Sb_{t+1} + k_t v_t^T,   ob_t = scale Sb_t^T q_t
//! o_t = (of_t + ob_t) / 2
//! ```
//!
//! with `Sf_0 = Sb_{L+1} = 0`: ViG scans every image from zero both ways and keeps no state, so
//! the op takes no initial state and returns no final one. The backward scan is the causal GLA
//! scan ([`crate::op`]) of the time-reversed sequence with the gate `gb` reversed with it, which
//! is how ViG computes it (`vig.py`, training branch: `q, k, v <- cat([x, x.flip(seq)])`, gates
//! `cat([fw_gk, bw_gk.flip(seq)])`, one GLA call on the 2B batch, then `(o_f + o_b.flip) / 2`).
//! So `o = (gla(q, k, v, gf) + flip(gla(flip q, flip k, flip v, flip gb))) / 2` with the GLA
//! op's scale, per sequence (packed varlen input: every sequence is reversed within itself;
//! empty sequences are legal).
//!
//! Backward of `L = <do, o>`: `dq, dk, dv` (the sums of both scans' gradients), `dgf`, `dgb`.

use std::ops::Range;

use crate::op::{first_bad, Check, Scan};
use crate::problem::{nonzero_dims, Problem, ProblemSpec};
use crate::{Error, GateKind, Real, Result};

const OP: &str = "bidir";

/// The weight of each direction in the output: `o = COMBINE * (of + ob)` (ViG's `/ 2`).
pub const COMBINE: f64 = 0.5;

/// What the caller asks for, before validation. See [`BidirProblem::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct BidirSpec {
    /// Batch size B (must be 1 with `cu_seqlens`).
    pub b: usize,
    /// Time steps T per batch row (the packed length with `cu_seqlens`).
    pub t: usize,
    /// Heads H.
    pub h: usize,
    /// Key dim K (of q, k and both gates).
    pub k: usize,
    /// Value dim V.
    pub v: usize,
    /// Output scale of each scan. Default: `K^-1/2`.
    pub scale: Option<f64>,
    /// Packed variable-length input, as for GLA ([`ProblemSpec::cu_seqlens`]).
    pub cu_seqlens: Option<Vec<usize>>,
}

impl BidirSpec {
    /// A spec without varlen, with the default scale.
    pub fn new(b: usize, t: usize, h: usize, k: usize, v: usize) -> Self {
        Self { b, t, h, k, v, scale: None, cu_seqlens: None }
    }
}

/// A validated bidirectional problem. Tensors and rows are laid out as the GLA op's
/// ([`Problem`]): q, k, gf, gb `[rows, H, K]`, v, o `[rows, H, V]`; sequence n owns rows
/// [`BidirProblem::seq`]`(n)`.
#[derive(Debug, Clone, PartialEq)]
pub struct BidirProblem {
    gla: Problem,
    half: Problem,
}

impl BidirProblem {
    /// Validates a spec.
    ///
    /// # Errors
    /// As [`Problem::new`]: [`Error::ZeroDim`], [`Error::CuSeqlens`], [`Error::BadScale`],
    /// [`Error::Overflow`].
    pub fn new(spec: BidirSpec) -> Result<Self> {
        nonzero_dims(OP, &[("B", spec.b), ("H", spec.h), ("K", spec.k), ("V", spec.v)])?;
        let gla_spec = ProblemSpec {
            b: spec.b,
            t: spec.t,
            h: spec.h,
            k: spec.k,
            v: spec.v,
            gate: GateKind::PerKey,
            scale: spec.scale,
            cu_seqlens: spec.cu_seqlens,
        };
        let gla = Problem::new(gla_spec.clone())?;
        let half = Problem::new(ProblemSpec { scale: Some(COMBINE * gla.scale()), ..gla_spec })?;
        Ok(Self { gla, half })
    }

    /// The problem of one direction's GLA scan (per-key gate, the same scale and sequences).
    pub fn gla(&self) -> &Problem {
        &self.gla
    }
    /// [`BidirProblem::gla`] with the scale times [`COMBINE`]: the GLA scan whose output is one
    /// direction's share of `o` (the output is linear in the scale, and `COMBINE` is a power of
    /// two, so `gla_{s/2} = gla_s / 2` exactly in floating point).
    pub fn half(&self) -> &Problem {
        &self.half
    }
    /// Batch size B.
    pub fn b(&self) -> usize {
        self.gla.b()
    }
    /// Time steps T per batch row.
    pub fn t(&self) -> usize {
        self.gla.t()
    }
    /// Heads H.
    pub fn h(&self) -> usize {
        self.gla.h()
    }
    /// Key dim K.
    pub fn k(&self) -> usize {
        self.gla.k()
    }
    /// Value dim V.
    pub fn v(&self) -> usize {
        self.gla.v()
    }
    /// The resolved scale of each scan.
    pub fn scale(&self) -> f64 {
        self.gla.scale()
    }
    /// Number of sequences N.
    pub fn n(&self) -> usize {
        self.gla.n()
    }
    /// Token rows of sequence `n`.
    pub fn seq(&self, n: usize) -> Range<usize> {
        self.gla.seq(n)
    }
    /// Token rows B*T.
    pub fn rows(&self) -> usize {
        self.gla.rows()
    }
    /// Elements of q, k, gf and gb: `B*T*H*K`.
    pub fn qk_len(&self) -> usize {
        self.gla.qk_len()
    }
    /// Elements of v and o: `B*T*H*V`.
    pub fn v_len(&self) -> usize {
        self.gla.v_len()
    }
    /// The row that row `r` lands on when every sequence is reversed within itself (an
    /// involution; rows past the last sequence map to themselves).
    pub fn flip_row(&self, r: usize) -> usize {
        let b = self.gla.bounds();
        // the sequence holding r: the last bound <= r whose segment is non-empty
        let n = b.partition_point(|&x| x <= r);
        if n == 0 || n >= b.len() {
            return r;
        }
        let s = self.seq(n - 1);
        if s.contains(&r) {
            s.start + s.end - 1 - r
        } else {
            r
        }
    }
    /// Floating-point operations of the chunked algorithm `(forward, backward)`: twice the GLA
    /// op's ([`Problem::chunk_flops`]).
    pub fn chunk_flops(&self) -> (f64, f64) {
        let (f, b) = self.gla.chunk_flops();
        (2.0 * f, 2.0 * b)
    }
}

/// Reverses every sequence of `x` (rows of `width` elements) within itself: row r of the
/// result is row [`BidirProblem::flip_row`]`(r)` of `x`. Every path's reference for the
/// backward direction.
pub fn flip_rows<T: Copy>(p: &BidirProblem, x: &[T], width: usize) -> Vec<T> {
    let mut out = x.to_vec();
    for n in 0..p.n() {
        let s = p.seq(n);
        for r in s.clone() {
            let f = s.start + s.end - 1 - r;
            out[r * width..(r + 1) * width].copy_from_slice(&x[f * width..(f + 1) * width]);
        }
    }
    out
}

/// Borrowed inputs of one call, all time-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct BidirInputs<'a, T> {
    /// Queries `[B,T,H,K]`.
    pub q: &'a [T],
    /// Keys `[B,T,H,K]`.
    pub k: &'a [T],
    /// Values `[B,T,H,V]`.
    pub v: &'a [T],
    /// Log-decays of the forward scan (<= 0) `[B,T,H,K]`.
    pub gf: &'a [T],
    /// Log-decays of the backward scan (<= 0) `[B,T,H,K]`, indexed by the original time.
    pub gb: &'a [T],
}

/// Gradients returned by a backward call.
#[derive(Debug, Clone, PartialEq)]
pub struct BidirGrads<T> {
    /// `[B,T,H,K]`.
    pub dq: Vec<T>,
    /// `[B,T,H,K]`.
    pub dk: Vec<T>,
    /// `[B,T,H,V]`.
    pub dv: Vec<T>,
    /// `[B,T,H,K]`.
    pub dgf: Vec<T>,
    /// `[B,T,H,K]`.
    pub dgb: Vec<T>,
}

/// One algorithm of the bidirectional scan on one backend. Every implementation computes the
/// function of the module docs; the shared case table runs each against the f64 naive oracle.
pub trait BidirOp<T: Real>: Sync {
    /// A short name for tables and errors, e.g. `cpu-bidir-chunk`.
    fn name(&self) -> &'static str;
    /// Forward: `o [B,T,H,V]`.
    ///
    /// # Errors
    /// Shape and value errors ([`BidirInputs::validate`]), support errors.
    fn forward(&self, p: &BidirProblem, x: &BidirInputs<'_, T>) -> Result<Vec<T>>;
    /// Backward of `L = <do, o>`.
    ///
    /// # Errors
    /// As [`BidirOp::forward`], plus a wrong shape or value of `do`.
    fn backward(&self, p: &BidirProblem, x: &BidirInputs<'_, T>, d_o: &[T]) -> Result<BidirGrads<T>>;
}

fn check_len(tensor: &'static str, expected: String, numel: usize, got: usize) -> Result<()> {
    if numel == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op: OP, tensor, expected, numel, got })
    }
}

fn finite<T: Real>(tensor: &'static str, x: &[T], scan: &Scan<'_, T>) -> Result<()> {
    match scan(x, Check::Finite) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { op: OP, tensor, index, value: x[index].to_f64() }),
    }
}

impl<T: Real> BidirInputs<'_, T> {
    /// Checks every length against the problem (what a GPU path can check on the host).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the tensor and its expected shape.
    pub fn validate_shapes(&self, p: &BidirProblem) -> Result<()> {
        let (qk, vs) = (p.gla.shape_str("K"), p.gla.shape_str("V"));
        check_len("q", qk.clone(), p.qk_len(), self.q.len())?;
        check_len("k", qk.clone(), p.qk_len(), self.k.len())?;
        check_len("v", vs, p.v_len(), self.v.len())?;
        check_len("gf", qk.clone(), p.qk_len(), self.gf.len())?;
        check_len("gb", qk, p.qk_len(), self.gb.len())
    }

    /// Checks shapes and values: no NaN or infinity anywhere, every log-decay finite and <= 0.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`], [`Error::BadGate`] (op `bidir-gf` or
    /// `bidir-gb`: which gate).
    pub fn validate(&self, p: &BidirProblem) -> Result<()> {
        self.validate_with(p, &first_bad)
    }

    /// [`BidirInputs::validate`] with the value scans done by `scan`.
    ///
    /// # Errors
    /// As [`BidirInputs::validate`].
    pub fn validate_with(&self, p: &BidirProblem, scan: &Scan<'_, T>) -> Result<()> {
        self.validate_shapes(p)?;
        for (tensor, x) in [("q", self.q), ("k", self.k), ("v", self.v)] {
            finite(tensor, x, scan)?;
        }
        for (op, g) in [("bidir-gf", self.gf), ("bidir-gb", self.gb)] {
            if let Some(index) = scan(g, Check::Gate) {
                return Err(Error::BadGate { op, index, value: g[index].to_f64() });
            }
        }
        Ok(())
    }

    /// Checks the upstream gradient `do` of a backward call.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`].
    pub fn validate_do(&self, p: &BidirProblem, d_o: &[T], scan: &Scan<'_, T>) -> Result<()> {
        check_len("do", p.gla.shape_str("V"), p.v_len(), d_o.len())?;
        finite("do", d_o, scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_reverses_each_sequence_within_itself() {
        let mut s = BidirSpec::new(1, 7, 1, 1, 1);
        s.cu_seqlens = Some(vec![0, 3, 3, 7]);
        let p = BidirProblem::new(s).unwrap();
        let map: Vec<usize> = (0..7).map(|r| p.flip_row(r)).collect();
        assert_eq!(map, vec![2, 1, 0, 6, 5, 4, 3]);
        let x: Vec<u32> = (0..14).collect();
        assert_eq!(flip_rows(&p, &x, 2), vec![4, 5, 2, 3, 0, 1, 12, 13, 10, 11, 8, 9, 6, 7]);
        let p = BidirProblem::new(BidirSpec::new(2, 3, 1, 1, 1)).unwrap();
        assert_eq!((0..6).map(|r| p.flip_row(r)).collect::<Vec<_>>(), vec![2, 1, 0, 5, 4, 3]);
    }

    #[test]
    fn inputs_check_both_gates() {
        let p = BidirProblem::new(BidirSpec::new(1, 2, 1, 2, 3)).unwrap();
        let (q, v, g) = (vec![0.1f32; 4], vec![0.1f32; 6], vec![-0.1f32; 4]);
        let x = BidirInputs { q: &q, k: &q, v: &v, gf: &g, gb: &g };
        x.validate(&p).unwrap();
        let mut pos = g.clone();
        pos[3] = 0.5;
        assert!(matches!(BidirInputs { gb: &pos, ..x }.validate(&p), Err(Error::BadGate { op: "bidir-gb", index: 3, .. })));
        let mut nan = g.clone();
        nan[1] = f32::NAN;
        assert!(matches!(BidirInputs { gf: &nan, ..x }.validate(&p), Err(Error::BadGate { op: "bidir-gf", index: 1, .. })));
        assert!(matches!(BidirInputs { gf: &g[..3], ..x }.validate(&p), Err(Error::ShapeMismatch { tensor: "gf", .. })));
        assert!(matches!(x.validate_do(&p, &v[..5], &first_bad), Err(Error::ShapeMismatch { tensor: "do", .. })));
        assert!(matches!(BidirProblem::new(BidirSpec::new(1, 2, 0, 2, 3)), Err(Error::ZeroDim { dim: "H", .. })));
    }
}
