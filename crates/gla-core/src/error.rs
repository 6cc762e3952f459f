//! Typed errors of the GLA family. Every variant carries the numbers needed to fix the call.

/// Result alias used by every gla crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a call into the GLA family.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor has the wrong number of elements for the declared shape.
    #[error("{op}: `{tensor}` should have shape {expected} ({numel} elements) but has {got} elements")]
    ShapeMismatch {
        /// The op that checked.
        op: &'static str,
        /// The tensor's name (`q`, `k`, `v`, `g`, `h0`, `do`, `dht`, ...).
        tensor: &'static str,
        /// The expected shape, written with the project's letters and values.
        expected: String,
        /// Expected element count.
        numel: usize,
        /// Actual element count.
        got: usize,
    },
    /// A dimension that must be positive is zero.
    #[error("{op}: dimension {dim} must be > 0")]
    ZeroDim {
        /// The op that checked.
        op: &'static str,
        /// Which dimension (`B`, `H`, `K`, `V`).
        dim: &'static str,
    },
    /// A shape product overflows `usize`.
    #[error("{op}: shape product overflows usize")]
    Overflow {
        /// The op that checked.
        op: &'static str,
    },
    /// `cu_seqlens` is malformed.
    #[error("cu_seqlens is invalid: {reason}")]
    CuSeqlens {
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A log-gate value is positive (the decay would grow the state) or not finite.
    #[error("{op}: log-gate `g` must be finite and <= 0, found {value} at flat index {index} (use logsigmoid(x), or clamp the gate)")]
    BadGate {
        /// The op that checked.
        op: &'static str,
        /// Flat element index of the first bad value.
        index: usize,
        /// The bad value.
        value: f64,
    },
    /// An input tensor holds a NaN or an infinity.
    #[error("{op}: `{tensor}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// The op that checked.
        op: &'static str,
        /// The tensor's name.
        tensor: &'static str,
        /// Flat element index of the first bad value.
        index: usize,
        /// The bad value.
        value: f64,
    },
    /// The scale is not a finite number.
    #[error("scale must be finite, got {0}")]
    BadScale(f64),
    /// A token id is outside the vocabulary, or a label is neither a token nor the ignore index.
    #[error("{what} {value} at position {index} is outside the vocabulary [0, {vocab})")]
    Token {
        /// `input id` or `label`.
        what: &'static str,
        /// The offending value.
        value: i64,
        /// Its flat position.
        index: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// An argument of a model-level call is out of range.
    #[error("`{key}` is invalid: {reason}")]
    BadArg {
        /// The argument.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The request is legal but this backend does not implement it.
    #[error("{backend}: {what} is not supported")]
    Unsupported {
        /// The backend or algorithm that refused.
        backend: &'static str,
        /// What was asked for.
        what: String,
    },
}
