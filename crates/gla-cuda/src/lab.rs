//! Kernels under study (`kernels/lab/`) and their host launchers: nothing in an op runs them.
//! A lab kernel earns a place in an op's dispatch once it is checked and timed faster
//! (`docs/kernels.md`).
//!
//! - [`wgmma_gemm`]: C = A B^T on `common/wgmma.cuh`'s Hopper warpgroup products (sm_90a), the
//!   check of their descriptors, swizzled layouts and accumulator layout against the host's
//!   product (`gla check --device cuda --filter lab`); [`wgmma_gemm64`] the same on m64n64k16
//!   with A and B each K-major or MN-major (the transposed A a fused attention backward's dQ
//!   needed), or on m64n32k16 halves (the 32-column tiles the delta kernels' plan needs).

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

/// The checks both lab GEMMs share: sm_90a, positive dims that are multiples of (64, `nq`, 64),
/// the grid, i32 dims, and A, B holding M K and N K elements. Returns M N.
fn gemm_checks(op: &'static str, cuda: &Cuda, a: &[u16], b: &[u16], (m, n, k): (usize, usize, usize), nq: usize) -> Result<usize> {
    let core = Error::Op;
    let bad = |what: String| core(gla_core::Error::Unsupported { backend: "cuda", what });
    if cuda.arch() != ARCH_HOPPER {
        return Err(bad(format!("{op} runs on {ARCH_HOPPER} only; this device is {}", cuda.arch())));
    }
    for (dim, x) in [("M", m), ("N", n), ("K", k)] {
        if x == 0 {
            return Err(core(gla_core::Error::ZeroDim { op, dim }));
        }
    }
    if m % 64 != 0 || n % nq != 0 || k % 64 != 0 {
        return Err(bad(format!("{op} takes M % 64 == N % {nq} == K % 64 == 0; asked for {m} x {n} x {k}")));
    }
    if m / 64 > crate::dispatch::attn::MAX_GRID_YZ {
        return Err(bad(format!("{op}: M / 64 = {} exceeds the grid's y limit", m / 64)));
    }
    let (mk, nk, mn) = match (m.checked_mul(k), n.checked_mul(k), m.checked_mul(n)) {
        (Some(x), Some(y), Some(z)) if i32::try_from(m.max(n).max(k)).is_ok() => (x, y, z),
        _ => return Err(core(gla_core::Error::Overflow { op })),
    };
    for (tensor, want, got) in [("a", mk, a.len()), ("b", nk, b.len())] {
        if got != want {
            let expected = if tensor == "a" { format!("M x K = {m} x {k}") } else { format!("N x K = {n} x {k}") };
            return Err(core(gla_core::Error::ShapeMismatch { op, tensor, expected, numel: want, got }));
        }
    }
    Ok(mn)
}

/// C `[M, N]` f32 = A B^T for bf16 A `[M, K]` (row-major) and B as `layout` says, on
/// `lab_wgmma_gemm_bf16` (one warpgroup per 64 x 128 tile of C); `a_in_regs`: A moved into
/// registers (the mma.sync A fragment, by ldmatrix) and multiplied by the A-from-registers form.
///
/// # Errors
/// [`Error::Op`]: `Unsupported` off sm_90a (the instructions are Hopper's own), for M, N, K that
/// are not multiples of 64, 128, 64, too many row tiles for the grid, or MN-major offsets the
/// descriptor cannot hold; `ZeroDim`, `Overflow`, `ShapeMismatch` (A must hold M K elements, B
/// N K); driver and compile errors.
pub fn wgmma_gemm(cuda: &Cuda, a: &[u16], b: &[u16], (m, n, k): (usize, usize, usize), layout: LabB, a_in_regs: bool) -> Result<Vec<f32>> {
    const OP: &str = "lab_wgmma_gemm_bf16";
    let mn = gemm_checks(OP, cuda, a, b, (m, n, k), 128)?;
    if let LabB::MnMajor { lbo, sbo } = layout {
        // the descriptor holds byte offsets / 16 in 14 bits
        if lbo % 16 != 0 || sbo % 16 != 0 || lbo >= 1 << 18 || sbo >= 1 << 18 {
            return Err(Error::Op(gla_core::Error::Unsupported {
                backend: "cuda",
                what: format!("{OP}: LBO {lbo} and SBO {sbo} must be multiples of 16 below 2^18"),
            }));
        }
    }
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    let (tb, lbo, sbo) = match layout {
        LabB::KMajor => (0i32, 16i32, 1024i32),
        LabB::MnMajor { lbo, sbo } => (1, lbo as i32, sbo as i32),
    };
    let ra = i32::from(a_in_regs);
    let da = cuda.upload(a, "lab A")?;
    let db = cuda.upload(b, "lab B")?;
    let dc = cuda.alloc_zeros::<f32>(mn, "lab C")?;
    let cfg =
        LaunchConfig { grid_dim: ((n / 128) as u32, (m / 64) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 1024 + 8192 + 16384 };
    // SAFETY: the arguments match lab_wgmma_gemm_bf16's parameters; A, B and C hold the M K, N K
    // and M N elements the grid reads and writes (checked above)
    unsafe { cuda.launch("lab_wgmma_gemm_bf16", cfg, &[&da, &db, &dc, &mi, &ni, &ki, &tb, &ra, &lbo, &sbo])? };
    cuda.sync()?;
    cuda.download(&dc, "lab C")
}

/// C `[M, N]` f32 = A B^T on `lab_wgmma_gemm64_bf16` (m64n64k16, one warpgroup per 64 x 64 tile
/// of C): A bf16 given as `[M, K]` row-major, or as A^T `[K, M]` with `a_t` (an MN-major A,
/// imm-trans-a); B as `[N, K]`, or as B^T `[K, N]` with `b_t`. With `n32` each 64 x 64 tile is
/// two m64n32k16 products, B's second half 32 rows (K-major) or 64 bytes of each swizzled row
/// (MN-major) into its tile.
///
/// # Errors
/// As [`wgmma_gemm`], with N a multiple of 64.
pub fn wgmma_gemm64(
    cuda: &Cuda,
    a: &[u16],
    b: &[u16],
    (m, n, k): (usize, usize, usize),
    a_t: bool,
    b_t: bool,
    n32: bool,
) -> Result<Vec<f32>> {
    let mn = gemm_checks("lab_wgmma_gemm64_bf16", cuda, a, b, (m, n, k), 64)?;
    let (mi, ni, ki, ta, tb, h) = (m as i32, n as i32, k as i32, i32::from(a_t), i32::from(b_t), i32::from(n32));
    let da = cuda.upload(a, "lab A")?;
    let db = cuda.upload(b, "lab B")?;
    let dc = cuda.alloc_zeros::<f32>(mn, "lab C")?;
    let cfg =
        LaunchConfig { grid_dim: ((n / 64) as u32, (m / 64) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 1024 + 8192 + 8192 };
    // SAFETY: the arguments match lab_wgmma_gemm64_bf16's parameters; A, B and C hold the M K,
    // N K and M N elements the grid reads and writes (checked above)
    unsafe { cuda.launch("lab_wgmma_gemm64_bf16", cfg, &[&da, &db, &dc, &mi, &ni, &ki, &ta, &tb, &h])? };
    cuda.sync()?;
    cuda.download(&dc, "lab C")
}
