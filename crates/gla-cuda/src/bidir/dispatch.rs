//! The dispatch policy of the bidirectional scan (ViG) on the GPU (`crate::dispatch::bidir`):
//! which launches a problem runs and every tuning choice of them. `bidir/ops.rs` only checks
//! lengths and launches what this module picks; `kernels/bidir/` has the kernels.
//!
//! | storage | pass | K, V            | launches                                                   |
//! |---------|------|-----------------|------------------------------------------------------------|
//! | bf16    | fwd  | K <= 128, any V | fused (`bidir/chunk_fwd.cu`): prep, both state walks, output |
//! | any     | fwd  | otherwise       | composed: the GLA forward on x and on flip(x), flip-added  |
//! | bf16    | bwd  | K <= 128, V <= 128 | fused (`bidir/chunk_bwd.cu`): prep with qe, the four state walks in one launch, A of both directions, the GLA gradient launches per direction (the backward one on reversed rows, adding the forward's) |
//! | any     | bwd  | otherwise       | composed: the GLA backward on x and on flip(x), flip-added |
//!
//! "Composed" is the identity of docs/math/bidir.md run on the GLA op's own dispatch
//! ([`crate::dispatch::bwd_path`]: chunked or recurrent) with the scale halved; it is also what
//! the benchmark times as the baseline (ViG's way with fla).

use cudarc::driver::LaunchConfig;
use gla_core::bidir::BidirProblem;

use crate::dispatch::{bwd2_plan, chunk_bwd1_smem_bytes, chunk_o_smem_bytes, k_padded, HPlan, CHUNK_NARROW_MAX};

/// Which forward a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BidirAlgo {
    /// The fused kernels where [`fused_fwd`] allows, else composed.
    Fused,
    /// The GLA op twice, on the input and on its time-reversed copy.
    Composed,
}

/// Largest grid z: the state walks put `walks x N x H` blocks there.
const GRID_Z_MAX: usize = 65_535;

/// Whether the fused forward takes the problem: bf16 storage and K <= 128 (the output pass
/// holds all K columns of a chunk in one block, as `gla_chunk_o_bf16`), and its two state walks
/// per (sequence, head) fit in one grid's z.
pub fn fused_fwd(p: &BidirProblem, bf16: bool) -> bool {
    bf16 && p.k() <= CHUNK_NARROW_MAX && 2 * p.n() * p.h() <= GRID_Z_MAX
}

/// Whether the fused backward takes the problem: bf16 storage with K <= 128 and V <= 128 (the
/// shapes of the GLA backward's single-block gradient launch `gla_chunk_bwd1_bf16`, whose
/// building blocks it runs; its state tiles hold at least 64 rows, so ViG's K = 32 heads run
/// here), and its four state walks per (sequence, head) fit in one grid's z.
pub fn fused_bwd(p: &BidirProblem, bf16: bool) -> bool {
    bf16 && p.k() <= CHUNK_NARROW_MAX && p.v() <= 128 && 4 * p.n() * p.h() <= GRID_Z_MAX
}

/// The four state walks of the backward in one grid (z = 4 N H), tiled like [`h_cfg`].
pub(crate) fn walks_cfg(p: &BidirProblem, sm_count: usize) -> (&'static str, LaunchConfig) {
    let walks = 4 * p.n() * p.h();
    let plan = HPlan::new(p.gla(), walks, sm_count);
    let name = if plan.bvh == 32 { "bidir_chunk_walks32_bf16" } else { "bidir_chunk_walks64_bf16" };
    (name, plan.cfg(p.gla(), walks as u32))
}

/// `bidir_chunk_a_bf16`: one block per (chunk, head, direction), the GLA output pass's smem.
pub(crate) fn a_cfg(p: &BidirProblem, gx: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (gx, p.h() as u32, 2), block_dim: (256, 1, 1), shared_mem_bytes: chunk_o_smem_bytes(kp(p)) as u32 }
}

/// The entry of the backward's bwd1: `bidir_chunk_bwd1n_bf16` for V <= 64 (its products over 64
/// value columns instead of the tiles' 128, the rest zero padding), else `bidir_chunk_bwd1_bf16`.
pub(crate) fn bwd1_name(p: &BidirProblem) -> &'static str {
    if p.v() <= 64 {
        "bidir_chunk_bwd1n_bf16"
    } else {
        "bidir_chunk_bwd1_bf16"
    }
}

/// `bidir_chunk_bwd1_bf16`: one block per (chunk, head), `gla_chunk_bwd1_bf16`'s smem.
pub(crate) fn bwd1_cfg(p: &BidirProblem, gx: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (gx, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_bwd1_smem_bytes(kp(p)) as u32 }
}

/// `bidir_chunk_bwd2_bf16`: the GLA backward's last launch for a per-key gate (K tiles of <= 64
/// on grid z, [`bwd2_plan`]). `(config, tile width)`.
pub(crate) fn bwd2_cfg(p: &BidirProblem, gx: u32) -> (LaunchConfig, usize) {
    let (_, w, tiles, smem) = bwd2_plan(p.k(), p.k());
    (LaunchConfig { grid_dim: (gx, p.h() as u32, tiles as u32), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 }, w)
}

/// f32 row stride of the forward direction's output tile in `bidir_chunk_o_bf16` (`BIDIR_OS`;
/// `BIDIR_OSN` for V <= 64).
const OS_STRIDE: usize = 132;
const OS_STRIDE_NARROW: usize = 68;

/// `bidir_chunk_o_bf16`'s dynamic shared memory for K padded to `kp` and V = `v`: the GLA output
/// pass's layout, then at the returned offset the forward's f32 output tile; for V <= 64 a
/// narrower one and the v and state tiles the kernel loads before A (`[64][72]`, `[kp][72]`
/// bf16). `(bytes, offset)`.
pub fn o_smem(kp: usize, v: usize) -> (usize, usize) {
    let off = chunk_o_smem_bytes(kp);
    if v <= 64 {
        (off + 64 * OS_STRIDE_NARROW * 4 + (64 + kp) * 72 * 2, off)
    } else {
        (off + 64 * OS_STRIDE * 4, off)
    }
}

/// K padded to 16 (the output pass's tile width).
pub fn kp(p: &BidirProblem) -> usize {
    k_padded(p.k())
}

/// `bidir_chunk_prep_bf16`: one block per (chunk, 128 of the H K (head, key channel) columns),
/// 128 threads: ViG's K = 32 heads share blocks instead of leaving 3/4 of each idle.
pub(crate) fn prep_cfg(p: &BidirProblem, gx: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (gx, (p.h() * p.k()).div_ceil(128) as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

/// The two state walks in one grid: the GLA state pass's tiling ([`HPlan`]) chosen for 2 N H
/// walks, grid z = 2 N H. `(kernel, config)`.
pub(crate) fn h_cfg(p: &BidirProblem, sm_count: usize) -> (&'static str, LaunchConfig) {
    let walks = 2 * p.n() * p.h();
    let plan = HPlan::new(p.gla(), walks, sm_count);
    let name = if plan.bvh == 32 { "bidir_chunk_h32_bf16" } else { "bidir_chunk_h64_bf16" };
    (name, plan.cfg(p.gla(), walks as u32))
}

/// `bidir_chunk_o_bf16`: one block per (chunk, head, 128-wide V tile), 256 threads.
pub(crate) fn o_cfg(p: &BidirProblem, gx: u32) -> LaunchConfig {
    let (bytes, _) = o_smem(kp(p), p.v());
    LaunchConfig { grid_dim: (gx, p.h() as u32, p.v().div_ceil(128) as u32), block_dim: (256, 1, 1), shared_mem_bytes: bytes as u32 }
}

/// The flip launches over rows of `w` elements: one block per (chunk, 256 columns).
pub(crate) fn flip_cfg(gx: u32, w: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (gx, w.div_ceil(256) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::bidir::BidirSpec;

    fn p(k: usize, v: usize) -> BidirProblem {
        BidirProblem::new(BidirSpec::new(2, 100, 2, k, v)).unwrap()
    }

    #[test]
    fn fused_paths_take_the_shapes_their_kernels_hold() {
        assert!(fused_fwd(&p(128, 300), true) && !fused_fwd(&p(129, 64), true) && !fused_fwd(&p(64, 64), false));
        assert!(fused_bwd(&p(64, 64), true) && fused_bwd(&p(128, 128), true));
        assert!(fused_bwd(&p(32, 64), true) && fused_bwd(&p(16, 40), true));
        assert!(!fused_bwd(&p(64, 129), true) && !fused_bwd(&p(64, 64), false) && !fused_bwd(&p(129, 64), true));
        // 4 N H walks above the grid's z limit: composed (whose GLA launches take N H)
        let big = BidirProblem::new(BidirSpec::new(2048, 4, 12, 64, 64)).unwrap();
        assert!(fused_fwd(&big, true) && !fused_bwd(&big, true));
    }

    #[test]
    fn output_pass_fits_in_shared_memory() {
        // Hopper's opt-in limit is 227 KB per block; the f32 tile sits after the GLA layout
        let (bytes, off) = o_smem(128, 128);
        assert!(bytes <= 227 * 1024, "{bytes}");
        assert_eq!(off % 16, 0);
        assert_eq!(o_smem(64, 128).1 % 16, 0);
        // ViG's heads (K <= 64, V <= 64), with their own v and state tiles: still two blocks
        // per SM (228 KB, 1 KB reserved per block), as the kernel's launch bounds ask
        for kp in [16, 32, 48, 64] {
            let narrow = o_smem(kp, 64).0;
            assert!(2 * (narrow + 1024) <= 228 * 1024, "Kp {kp}: {narrow} B");
        }
    }
}
