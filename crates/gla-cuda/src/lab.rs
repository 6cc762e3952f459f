//! Kernels under study (`kernels/lab/`) and their host launchers: nothing in an op runs them.
//! A lab kernel earns a place in an op's dispatch once it is checked and timed faster
//! (`docs/kernels.md`).
//!
//! - [`wgmma_gemm`]: C = A B^T on `common/wgmma.cuh`'s Hopper warpgroup products (sm_90a), the
//!   check of their descriptors, swizzled layouts and accumulator layout against the host's
//!   product (`gla check --device cuda --filter lab`).

use cudarc::driver::LaunchConfig;

use crate::error::{Error, Result};
use crate::runtime::{Cuda, ARCH_HOPPER};

/// How `wgmma_gemm`'s B is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabB {
    /// `[N, K]` row-major (K contiguous: a K-major operand).
    KMajor,
    /// `[K, N]` row-major (N contiguous: MN-major, the transposed operand), with the
    /// descriptor's leading and stride byte offsets (LBO between 64-column blocks of N, SBO
    /// between 8-row groups of K in the layout `common/wgmma.cuh` documents).
    MnMajor {
        /// Leading dimension byte offset.
        lbo: u32,
        /// Stride dimension byte offset.
        sbo: u32,
    },
}

/// C `[M, N]` f32 = A B^T for bf16 A `[M, K]` (row-major) and B as `layout` says, on
/// `lab_wgmma_gemm_bf16` (one warpgroup per 64 x 128 tile of C); `a_in_regs`: A moved into
/// registers (the mma.sync A fragment, by ldmatrix) and multiplied by the A-from-registers form.
///
/// # Errors
/// [`Error::Op`] unless the device is sm_90a (the lab's instructions are Hopper's own), M % 64,
/// N % 128 and K % 64 are zero (and none is zero), and the slices hold M K and N K elements;
/// driver and compile errors.
pub fn wgmma_gemm(cuda: &Cuda, a: &[u16], b: &[u16], (m, n, k): (usize, usize, usize), layout: LabB, a_in_regs: bool) -> Result<Vec<f32>> {
    let bad = |what: String| Error::Op(gla_core::Error::Unsupported { backend: "cuda", what });
    if cuda.arch() != ARCH_HOPPER {
        return Err(bad(format!("lab_wgmma_gemm_bf16 runs on {ARCH_HOPPER} only; this device is {}", cuda.arch())));
    }
    if m == 0 || n == 0 || k == 0 || m % 64 != 0 || n % 128 != 0 || k % 64 != 0 {
        return Err(bad(format!("lab_wgmma_gemm_bf16 takes M % 64 == N % 128 == K % 64 == 0 (none zero); asked for {m} x {n} x {k}")));
    }
    if a.len() != m * k || b.len() != n * k {
        return Err(bad(format!("lab_wgmma_gemm_bf16: A holds {} elements, B {}; M K = {}, N K = {}", a.len(), b.len(), m * k, n * k)));
    }
    let too_big = |x: usize| i32::try_from(x).map_err(|_| bad(format!("lab_wgmma_gemm_bf16: {x} exceeds i32")));
    let (mi, ni, ki) = (too_big(m)?, too_big(n)?, too_big(k)?);
    let (tb, lbo, sbo) = match layout {
        LabB::KMajor => (0i32, 16i32, 1024i32),
        LabB::MnMajor { lbo, sbo } => (1, lbo as i32, sbo as i32),
    };
    let ra = i32::from(a_in_regs);
    let da = cuda.upload(a, "lab A")?;
    let db = cuda.upload(b, "lab B")?;
    let dc = cuda.alloc_zeros::<f32>(m * n, "lab C")?;
    let cfg =
        LaunchConfig { grid_dim: ((n / 128) as u32, (m / 64) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 1024 + 8192 + 16384 };
    // SAFETY: the arguments match lab_wgmma_gemm_bf16's parameters; A, B and C hold the M K, N K
    // and M N elements the grid reads and writes (checked above)
    unsafe { cuda.launch("lab_wgmma_gemm_bf16", cfg, &[&da, &db, &dc, &mi, &ni, &ki, &tb, &ra, &lbo, &sbo])? };
    cuda.sync()?;
    cuda.stream().clone_dtoh(&dc).map_err(Error::driver("download lab C"))
}
