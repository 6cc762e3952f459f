//! The op contract of the GLA family.
//!
//! Per sequence n and head h, with state `S` in `R^{K x V}` (f32 or wider):
//!
//! ```text
//! S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T      decay first, then write
//! o_t = scale * S_t^T q_t                        the current token sees itself
//! ```
//!
//! `S_0` is the initial state `h0[n, h]` (zero when absent) and the final state is `S_T`.
//! The family differs only in the gate ([`GateKind`]): a per-key-channel log-decay `g [B,T,H,K]`
//! (GLA), one log-decay per head `g [B,T,H]` (simple GLA / RetNet / Lightning Attention-2, broadcast
//! over K), or none (linear attention). A delta-rule write (DeltaNet) changes the write term, not
//! the interface: it will arrive as a further field of [`Inputs`] (`beta`), not as a new op.
//!
//! Backward takes `do [B,T,H,V]` and an optional `dht [N,H,K,V]` (the gradient of the final
//! state) and returns `dq, dk, dv`, `dg` (shaped like `g`) and `dh0` (when `h0` was given).

use crate::{Error, Problem, Real, Result};

/// Which decay gate the op applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateKind {
    /// GLA: `g [B,T,H,K]`, one log-decay per key channel.
    PerKey,
    /// Simple GLA / RetNet / Lightning-2: `g [B,T,H]`, one log-decay per head, broadcast over K.
    PerHead,
    /// Linear attention: no decay (`g` absent).
    None,
}

impl GateKind {
    /// Elements of g per (token, head): K, 1 or 0.
    pub fn width(self, k: usize) -> usize {
        match self {
            GateKind::PerKey => k,
            GateKind::PerHead => 1,
            GateKind::None => 0,
        }
    }
}

/// Borrowed inputs of one call, all time-major and contiguous.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a, T> {
    /// Queries `[B,T,H,K]`.
    pub q: &'a [T],
    /// Keys `[B,T,H,K]`.
    pub k: &'a [T],
    /// Values `[B,T,H,V]`.
    pub v: &'a [T],
    /// Log-gates (<= 0): `[B,T,H,K]`, `[B,T,H]` or absent, per [`GateKind`].
    pub g: Option<&'a [T]>,
    /// Initial state `[N,H,K,V]`, or absent (zero).
    pub h0: Option<&'a [T]>,
}

/// Result of a forward call.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward<T> {
    /// Output `[B,T,H,V]`.
    pub o: Vec<T>,
    /// Final state `[N,H,K,V]`, when asked for.
    pub ht: Option<Vec<T>>,
}

/// Upstream gradients of one backward call.
#[derive(Debug, Clone, Copy)]
pub struct Backward<'a, T> {
    /// Gradient of the output `[B,T,H,V]`.
    pub d_o: &'a [T],
    /// Gradient of the final state `[N,H,K,V]`, or absent (zero).
    pub dht: Option<&'a [T]>,
}

/// Gradients returned by a backward call.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<T> {
    /// `[B,T,H,K]`.
    pub dq: Vec<T>,
    /// `[B,T,H,K]`.
    pub dk: Vec<T>,
    /// `[B,T,H,V]`.
    pub dv: Vec<T>,
    /// Shaped like `g`; `None` when the gate kind has no `g`.
    pub dg: Option<Vec<T>>,
    /// `[N,H,K,V]`; `None` when no initial state was given.
    pub dh0: Option<Vec<T>>,
}

/// One algorithm of the GLA family on one backend (naive, fused recurrent, chunked, ...).
///
/// Every implementation computes the same function (module docs); they differ in speed and in
/// rounding. The shared case table runs every implementation against the f64 naive oracle.
pub trait GlaOp<T: Real>: Sync {
    /// A short name for tables and errors, e.g. `cpu-chunk`.
    fn name(&self) -> &'static str;
    /// Forward. Returns the final state when `output_final_state`.
    ///
    /// # Errors
    /// Shape, value ([`Inputs::validate`]) and support errors.
    fn forward(&self, p: &Problem, x: &Inputs<'_, T>, output_final_state: bool) -> Result<Forward<T>>;
    /// Backward of `L = <do, o> + <dht, S_T>`.
    ///
    /// # Errors
    /// As [`GlaOp::forward`], plus wrong shapes of `do` / `dht`.
    fn backward(&self, p: &Problem, x: &Inputs<'_, T>, d: &Backward<'_, T>) -> Result<Grads<T>>;
}

fn check_len(op: &'static str, tensor: &'static str, expected: String, numel: usize, got: usize) -> Result<()> {
    if numel == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch { op, tensor, expected, numel, got })
    }
}

/// What a value scan checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every element is finite.
    Finite,
    /// Every element is a finite log-gate: `-inf < x <= 0`.
    Gate,
}

/// A scanner: the index of the first element of a slice failing a [`Check`]. Backends pass their
/// own (the CPU paths scan in parallel) to [`Inputs::validate_with`].
pub type Scan<'a, T> = dyn Fn(&[T], Check) -> Option<usize> + Sync + 'a;

/// Index of the first element failing `check`, on the calling thread. Scans blocks without early
/// exit (so the loop vectorises: a plain `position` does not, and this check runs on every CPU
/// call), then finds the exact index only inside a failing block.
pub fn first_bad<T: Real>(x: &[T], check: Check) -> Option<usize> {
    fn scan<T: Copy>(x: &[T], ok: impl Fn(T) -> bool) -> Option<usize> {
        const BLOCK: usize = 4096;
        x.chunks(BLOCK).enumerate().find_map(|(b, c)| {
            let bad = c.iter().fold(false, |acc, &v| acc | !ok(v));
            bad.then(|| b * BLOCK + c.iter().position(|&v| !ok(v)).unwrap_or(0))
        })
    }
    match check {
        Check::Finite => scan(x, |v: T| v.is_finite()),
        // `x <= 0` is false for NaN; is_finite rules out -inf
        Check::Gate => scan(x, |v: T| v <= T::ZERO && v.is_finite()),
    }
}

fn check_finite<T: Real>(op: &'static str, tensor: &'static str, x: &[T], scan: &Scan<'_, T>) -> Result<()> {
    match scan(x, Check::Finite) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { op, tensor, index, value: x[index].to_f64() }),
    }
}

impl<T: Real> Inputs<'_, T> {
    /// Checks every length against the problem (cheap; what a GPU path can check on the host).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the tensor and its expected shape.
    pub fn validate_shapes(&self, op: &'static str, p: &Problem) -> Result<()> {
        check_len(op, "q", p.shape_str("K"), p.qk_len(), self.q.len())?;
        check_len(op, "k", p.shape_str("K"), p.qk_len(), self.k.len())?;
        check_len(op, "v", p.shape_str("V"), p.v_len(), self.v.len())?;
        match (p.gate(), self.g) {
            (GateKind::None, None) => {}
            (GateKind::None, Some(g)) => check_len(op, "g", p.shape_str("G"), 0, g.len())?,
            (_, g) => check_len(op, "g", p.shape_str("G"), p.g_len(), g.map_or(0, <[T]>::len))?,
        }
        if let Some(h0) = self.h0 {
            check_len(op, "h0", p.shape_str("S"), p.state_len(), h0.len())?;
        }
        Ok(())
    }

    /// Checks shapes and values: no NaN or infinity anywhere, every log-gate <= 0.
    /// One pass over the inputs; the CPU paths call it on every call.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`], [`Error::BadGate`].
    pub fn validate(&self, op: &'static str, p: &Problem) -> Result<()> {
        self.validate_with(op, p, &first_bad)
    }

    /// [`Inputs::validate`] with the value scans done by `scan`.
    ///
    /// # Errors
    /// As [`Inputs::validate`].
    pub fn validate_with(&self, op: &'static str, p: &Problem, scan: &Scan<'_, T>) -> Result<()> {
        self.validate_shapes(op, p)?;
        check_finite(op, "q", self.q, scan)?;
        check_finite(op, "k", self.k, scan)?;
        check_finite(op, "v", self.v, scan)?;
        if let Some(h0) = self.h0 {
            check_finite(op, "h0", h0, scan)?;
        }
        if let Some(g) = self.g {
            if let Some(index) = scan(g, Check::Gate) {
                return Err(Error::BadGate { op, index, value: g[index].to_f64() });
            }
        }
        Ok(())
    }
}

impl<T: Real> Backward<'_, T> {
    /// Checks the upstream gradients' shapes and values.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`].
    pub fn validate(&self, op: &'static str, p: &Problem) -> Result<()> {
        self.validate_with(op, p, &first_bad)
    }

    /// [`Backward::validate`] with the value scans done by `scan`.
    ///
    /// # Errors
    /// As [`Backward::validate`].
    pub fn validate_with(&self, op: &'static str, p: &Problem, scan: &Scan<'_, T>) -> Result<()> {
        check_len(op, "do", p.shape_str("V"), p.v_len(), self.d_o.len())?;
        check_finite(op, "do", self.d_o, scan)?;
        if let Some(dht) = self.dht {
            check_len(op, "dht", p.shape_str("S"), p.state_len(), dht.len())?;
            check_finite(op, "dht", dht, scan)?;
        }
        Ok(())
    }
}

/// Converts a state between the `[N,H,K,V]` layout used here and fla's V-first `[N,H,V,K]`
/// (`state_v_first=True`, fla >= #905). The transform is its own inverse when K and V are swapped.
pub fn transpose_state<T: Copy>(src: &[T], n_h: usize, rows: usize, cols: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len());
    for m in 0..n_h {
        let s = &src[m * rows * cols..(m + 1) * rows * cols];
        for c in 0..cols {
            out.extend((0..rows).map(|r| s[r * cols + c]));
        }
    }
    out
}
