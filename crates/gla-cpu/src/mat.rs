//! Safe strided matrix views over slices and the one matmul entry point (the gemm crate).

use gemm::Parallelism;

/// A read-only strided matrix view `[rows, cols]` over a slice.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `[rows, cols]` with row stride `ld`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        let m = Self { data, rows, cols, rs: ld, cs: 1 };
        m.check(data.len());
        m
    }
    /// The transpose (a view, no copy).
    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
    fn check(&self, len: usize) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < len, "matrix view out of bounds: {last} >= {len}");
        }
    }
}

/// `c [m, n] (row-major, ld = ldc) = alpha * c (if accumulate) + a [m, k] @ b [k, n]`.
///
/// Panics only on an internal shape bug (views are checked on creation; the dims here are
/// checked against them), never on user input.
pub(crate) fn matmul(c: &mut [f32], ldc: usize, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dims differ");
    if m == 0 || n == 0 {
        return;
    }
    MatRef::new(c, m, n, ldc);
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: all three views were bounds-checked above (MatRef::new / check), c is borrowed
    // mutably and cannot alias a or b, and strides are non-negative.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
