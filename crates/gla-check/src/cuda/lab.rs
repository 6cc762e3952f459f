//! The lab kernels' rows (case names `lab-*`, run only under `--filter lab`): `kernels/lab/` under
//! study against the host. `lab-wgmma-gemm-*`: C = A B^T on the Hopper warpgroup products
//! ([`gla_cuda::lab::wgmma_gemm`]) with B K-major and MN-major, A from shared memory and from
//! registers, and on m64n64k16 ([`gla_cuda::lab::wgmma_gemm64`], rows `c64-*`) with A and B
//! each K-major or MN-major, and on m64n32k16 halves (`c32-*`), against the f64 product of the same
//! bf16 values (f32 sums of exact products: [`tol::GPU_F32`]). The MN-major descriptor's byte
//! offsets are the layout `common/wgmma.cuh` documents (LBO between 64-column blocks of N, SBO
//! between 8-row groups of K); when that row fails, its note gives the error with the two
//! offsets swapped.

use std::sync::Arc;

use gla_cuda::lab::{wgmma_gemm, wgmma_gemm64, LabB};
use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::{Cuda, Result};
use gla_model::Rng;

use crate::row::Row;
use crate::tol;

/// The `lab-*` rows.
///
/// # Errors
/// `Unsupported` off sm_90a (the lab's instructions are Hopper's own: nothing to check there);
/// a failed launch on sm_90a becomes a failing row.
pub fn lab_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    if cuda.arch() != gla_cuda::runtime::ARCH_HOPPER {
        return Err(gla_cuda::Error::Op(gla_core::Error::Unsupported {
            backend: "cuda",
            what: format!("the lab's wgmma rows run on {} only; this device is {}", gla_cuda::runtime::ARCH_HOPPER, cuda.arch()),
        }));
    }
    for (m, n, k) in [(64, 128, 64), (192, 256, 320)] {
        let case = format!("lab-wgmma-gemm-{m}x{n}x{k}");
        let mut rng = Rng::new(0x1ab + (m * n * k) as u64);
        let a: Vec<u16> = (0..m * k).map(|_| f32_to_bf16(rng.normal() as f32)).collect();
        let b: Vec<u16> = (0..n * k).map(|_| f32_to_bf16(rng.normal() as f32)).collect();
        let mut bt = vec![0u16; n * k];
        for (j, row) in b.chunks(k).enumerate() {
            for (kk, &x) in row.iter().enumerate() {
                bt[kk * n + j] = x;
            }
        }
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|kk| f64::from(bf16_to_f32(a[i * k + kk])) * f64::from(bf16_to_f32(b[j * k + kk]))).sum();
            }
        }
        let err = |c: &[f32]| crate::cases::rel_rmse(c, &want);
        let tol = tol::GPU_F32;
        let (lbo, sbo) = (8192, 1024);
        for (tensor, mn, regs) in
            [("c-kmajor", false, false), ("c-mnmajor", true, false), ("c-kmajor-a-regs", false, true), ("c-mnmajor-a-regs", true, true)]
        {
            let run = |layout| wgmma_gemm(cuda, &a, if mn { &bt } else { &b }, (m, n, k), layout, regs);
            let layout = if mn { LabB::MnMajor { lbo, sbo } } else { LabB::KMajor };
            match run(layout) {
                Ok(c) => {
                    let mut r = Row::new(&case, "lab-wgmma", "bf16", tensor, err(&c), tol);
                    if !r.pass && mn {
                        r = r.with_note(match run(LabB::MnMajor { lbo: sbo, sbo: lbo }) {
                            Ok(c2) => format!("with LBO {sbo} and SBO {lbo} instead: {:.3e}", err(&c2)),
                            Err(e) => format!("with LBO {sbo} and SBO {lbo} instead: {e}"),
                        });
                    }
                    out.push(r);
                }
                Err(e) => out.push(Row::failed(&case, "lab-wgmma", "bf16", tol, e)),
            }
        }
        // m64n64k16 with A and B each K-major or MN-major (A^T given as [K, M])
        let mut at = vec![0u16; m * k];
        for (i, row) in a.chunks(k).enumerate() {
            for (kk, &x) in row.iter().enumerate() {
                at[kk * m + i] = x;
            }
        }
        // and the same as m64n32k16 halves (B's second half 32 rows or 64 bytes into its tile)
        for (tensor, a_t, b_t, n32) in [
            ("c64-ak-bk", false, false, false),
            ("c64-amn-bk", true, false, false),
            ("c64-ak-bmn", false, true, false),
            ("c64-amn-bmn", true, true, false),
            ("c32-ak-bk", false, false, true),
            ("c32-amn-bk", true, false, true),
            ("c32-ak-bmn", false, true, true),
            ("c32-amn-bmn", true, true, true),
        ] {
            let r = wgmma_gemm64(cuda, if a_t { &at } else { &a }, if b_t { &bt } else { &b }, (m, n, k), a_t, b_t, n32);
            out.push(match r {
                Ok(c) => Row::new(&case, "lab-wgmma", "bf16", tensor, err(&c), tol),
                Err(e) => Row::failed(&case, "lab-wgmma", "bf16", tol, e),
            });
        }
    }
    Ok(())
}
