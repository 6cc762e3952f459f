//! Softmax attention on the CPU: the naive oracle ([`AttnNaive`], f64 is the reference), the tiled
//! flash-style path ([`AttnTiled`]) and the decode step over a KV cache ([`AttnCache`]).
//! The contract is [`gla_core::attn`]; the math is `docs/math/attention.md`.

mod decode;
mod naive;
mod tiled;

pub use decode::AttnCache;
pub use naive::AttnNaive;
pub use tiled::AttnTiled;

use gla_core::Real;

/// `sum_c a[c] b[c]` accumulated in `T`.
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::ZERO, |acc, (&x, &y)| acc + x * y)
}

/// `y += a x`.
fn axpy<T: Real>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}
