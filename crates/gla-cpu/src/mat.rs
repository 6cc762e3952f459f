//! Safe strided matrix views over slices and the one f32 matmul entry point of the CPU code (the
//! gemm crate): the chunked GLA path and the model's layers both go through [`matmul`].

use gemm::Parallelism;

/// A read-only strided matrix view `[rows, cols]` over a slice.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `[rows, cols]` with row stride `ld`.
    /// # Panics
    /// If the view does not fit in `data` (a caller bug, not a user input).
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        let m = Self { data, rows, cols, rs: ld, cs: 1 };
        m.check(data.len());
        m
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

/// Threads a matmul may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (for products issued from inside parallel tasks).
    One,
    /// Every rayon thread (for large standalone products).
    All,
}

/// `c [m, n] (row-major, ld = ldc) = c (if accumulate) + a [m, k] @ b [k, n]`, on the calling
/// thread (see [`matmul_with`]).
///
/// # Panics
/// On a shape bug of the caller (views are checked on creation, the dims here against them),
/// never on user input.
pub fn matmul(c: &mut [f32], ldc: usize, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) {
    matmul_with(c, ldc, a, b, accumulate, Threads::One);
}

/// [`matmul`] with a choice of [`Threads`].
///
/// # Panics
/// As [`matmul`].
pub fn matmul_with(c: &mut [f32], ldc: usize, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, threads: Threads) {
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
            match threads {
                Threads::One => Parallelism::None,
                Threads::All => Parallelism::Rayon(0),
            },
        );
    }
}
