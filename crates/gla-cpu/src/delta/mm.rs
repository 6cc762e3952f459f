//! Strided matrix views and one matmul over the gemm crate, generic over f32 and f64 (the
//! delta-rule paths run in f32 as a product and in f64 as a second exact reference; the GLA
//! path's [`crate::mat`] is f32 only).

use gemm::Parallelism;
use gla_core::Real;

/// A read-only strided matrix view `[rows, cols]` over a slice.
#[derive(Clone, Copy)]
pub(super) struct View<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major `[rows, cols]` with row stride `ld`.
    /// # Panics
    /// If the view does not fit in `data` (a caller bug, not a user input).
    pub fn new(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        let m = Self { data, rows, cols, rs: ld, cs: 1 };
        m.check(data.len());
        m
    }
    /// Row-major `[rows, cols]`, packed.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }
    /// The transpose (a view, no copy).
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
    fn check(&self, len: usize) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < len, "matrix view out of bounds: {last} >= {len}");
        }
    }
}

/// How [`mm`] combines the product with the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acc {
    /// `c = a @ b`
    Set,
    /// `c += a @ b`
    Add,
    /// `c -= a @ b`
    Sub,
}

/// `c [m, n]` (row-major, row stride `ldc`) combined with `a [m, k] @ b [k, n]` per `acc`, on
/// the calling thread.
///
/// # Panics
/// On a shape bug of the caller, never on user input.
pub(super) fn mm<T: Real>(c: &mut [T], ldc: usize, a: View<'_, T>, b: View<'_, T>, acc: Acc) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dims differ");
    if m == 0 || n == 0 {
        return;
    }
    View::new(&*c, m, n, ldc);
    if k == 0 {
        if acc == Acc::Set {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::ZERO);
            }
        }
        return;
    }
    let sign = if acc == Acc::Sub { -T::ONE } else { T::ONE };
    // SAFETY: all three views were bounds-checked (View::new / check above), c is borrowed
    // mutably and cannot alias a or b, and strides are non-negative.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            acc != Acc::Set,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::ONE,
            sign,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_matches_loops_in_every_mode() {
        let (m, k, n) = (5usize, 7usize, 3usize);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.11).cos()).collect();
        // b is stored [n, k]; used transposed as [k, n]
        let want: Vec<f64> = (0..m * n).map(|e| (0..k).map(|x| a[(e / n) * k + x] * b[(e % n) * k + x]).sum::<f64>()).collect();
        for (acc, f) in [(Acc::Set, 0.0), (Acc::Add, 1.0), (Acc::Sub, -1.0)] {
            let mut c = vec![2.0f64; m * n];
            mm(&mut c, n, View::rm(&a, m, k), View::rm(&b, n, k).t(), acc);
            for (e, (&got, &w)) in c.iter().zip(&want).enumerate() {
                let expect = if acc == Acc::Set { w } else { 2.0 + f * w };
                assert!((got - expect).abs() < 1e-12, "{acc:?} {e}: {got} vs {expect}");
            }
        }
    }
}
