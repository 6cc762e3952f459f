//! The dispatch policy of the GLA op on the GPU, written once: which kernels run for a storage
//! dtype, K, V, gate and length ([`fwd_path`], [`bwd_path`]), and every tuning choice of their
//! launches (block sizes, tile widths, pipeline depths, shared-memory sizes, the workspaces'
//! sizes: [`WorkspaceLens`]). `ops.rs` only checks lengths and launches what this module picks;
//! docs/kernels.md describes the kernels.
//!
//! | storage | pass     | K, V                                   | kernels                                   |
//! |---------|----------|----------------------------------------|-------------------------------------------|
//! | any     | fwd      | [`FwdKernel::Recurrent`] asked, K <= 256 | `gla/recurrent.cu`                      |
//! | bf16    | fwd      | K <= 128, any V                        | chunked, narrow (`gla/chunk_{fwd,h}.cu`)  |
//! | bf16    | fwd      | 128 < K <= 256, any V                  | chunked, wide (A over K tiles, o per V tile) |
//! | f32     | fwd      | K <= 128                               | `gla/chunk_fwd_f32.cu`                    |
//! | bf16    | bwd      | K <= 128, V <= 128                     | chunked, narrow (`gla/chunk_bwd.cu`)      |
//! | bf16    | bwd      | K, V <= 256, K or V > 128              | chunked, wide (bwd1k + bwd1v)             |
//! | any     | bwd      | otherwise, K <= 256                    | `gla/recurrent.cu`                        |
//!
//! The chunked forward is refused above K = 256 (bf16) or 128 (f32); the recurrent kernels above
//! K = 256. K below 64 runs the narrow backward too: `gla_chunk_bwd1_bf16` reads 64 key rows of
//! its shared state tiles, which hold max(Kp, 64) rows with the rows past K zero (the wide path's
//! `bwd1k` zero-fills its 64-row tiles the same way). The language model runs its decode step
//! (one token per sequence) on the recurrent kernels and everything else chunked
//! (`backend.rs`), as fla does.
//!
//! Gate-dependent choices: the 16-byte gate prep for a per-key gate with K % 8 == 0
//! (`prep8`); the backward's last launch in K tiles of <= 64 unless a per-head gate would sum
//! more than two tiles (`bwd2_plan`).

use cudarc::driver::LaunchConfig;
use gla_core::{GateKind, Problem};

/// Softmax attention's dispatch policy and tuning (head dims, tile tables, launch shapes, the
/// decode split).
#[path = "attn/dispatch.rs"]
pub mod attn;
/// The delta-rule family's dispatch policy and tuning (`delta_path`, launch shapes, workspaces).
#[path = "delta/dispatch.rs"]
pub mod delta;

/// The bidirectional scan's (ViG) dispatch policy and tuning.
#[path = "bidir/dispatch.rs"]
pub mod bidir;

/// Rows per chunk of the chunked kernels (`BT`).
pub const CHUNK_BT: usize = 64;
/// Largest K the recurrent kernels take (8 warps x 32 rows each in registers).
pub const RECURRENT_MAX_K: usize = 256;
/// Largest K of the f32 chunk kernel and of the bf16 path's single-tile launches (the output
/// pass and `bwd1`/`bwd2` hold all K columns in one block's shared memory).
pub const CHUNK_NARROW_MAX: usize = 128;
/// Largest K of the bf16 chunked path, and largest V of its backward: above
/// [`CHUNK_NARROW_MAX`] (or V above 128 in the backward) it runs the split launches
/// ([`ChunkPath::Wide`]).
pub const CHUNK_WIDE_MAX: usize = 256;
/// Widest K tile of the split launches (`gla_chunk_a_bf16`, `gla_chunk_bwd2k_bf16`): their
/// shared-memory layouts are those of the single-tile kernels at this width.
pub(crate) const CHUNK_K_TILE: usize = 128;
/// Value columns per block of the recurrent kernels (`BV` in `gla/recurrent.cu`).
pub(crate) const REC_BV: usize = 32;
/// Steps between the recurrent backward's state checkpoints (`CK` in `gla/recurrent.cu`).
pub(crate) const REC_CK: usize = 32;
/// Value columns per block of the f32 chunk kernel (`BV` in `gla/chunk_fwd_f32.cu`).
pub(crate) const CHUNK_F32_BV: usize = 32;
/// Pipeline stages of the state passes (`HNS` in `gla/chunk_h.cu`).
const CHUNK_H_STAGES: usize = 4;
/// Shared memory a kernel may use without opting in.
pub(crate) const DEFAULT_SMEM: usize = 48 * 1024;

/// Which forward kernel a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdKernel {
    /// `gla_recurrent_fwd_*`: token by token, state in registers.
    Recurrent,
    /// Chunked, per [`fwd_path`].
    Chunk,
    /// The chunked path's prep and state pass alone (bf16, K <= 256; o is not written): for
    /// timing the stages.
    ChunkStatePass,
}

/// Which launches of the bf16 chunked path a problem runs (see [`fwd_path`], [`bwd_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkPath {
    /// All K columns in one block: forward prep, state pass, `gla_chunk_o_bf16`; backward prep,
    /// state and state-gradient passes, A by `gla_chunk_o_bf16`, `bwd1`, `bwd2`.
    Narrow,
    /// K above 128 (up to 256) or, in the backward, V above 128: A summed over K tiles
    /// (`gla_chunk_a_bf16`), o per 64-wide V tile (`gla_chunk_ow_bf16`); backward `bwd1k` (per
    /// 64 key rows) + `bwd1v` (per 64 value columns), `bwd2k` per K tile.
    Wide,
}

impl ChunkPath {
    /// The kernel label of benchmark and check rows: `chunk` or `chunk-wide`.
    pub fn label(self) -> &'static str {
        match self {
            ChunkPath::Narrow => "chunk",
            ChunkPath::Wide => "chunk-wide",
        }
    }
}

/// What the forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdPath {
    /// `gla_recurrent_fwd_*` (K <= [`RECURRENT_MAX_K`]).
    Recurrent,
    /// `gla_chunk_fwd_f32` (f32 storage, K <= [`CHUNK_NARROW_MAX`]).
    ChunkF32,
    /// The bf16 chunked path; `state_only` stops after the state pass.
    Chunk {
        /// Narrow or wide launches.
        path: ChunkPath,
        /// Only the prep and the state pass run.
        state_only: bool,
    },
}

/// The bf16 chunked forward's launches: [`ChunkPath::Narrow`] for K <= 128, [`ChunkPath::Wide`]
/// for 128 < K <= 256 (any V for both), `None` above.
pub fn chunk_fwd_path(p: &Problem) -> Option<ChunkPath> {
    match p.k() {
        k if k <= CHUNK_NARROW_MAX => Some(ChunkPath::Narrow),
        k if k <= CHUNK_WIDE_MAX => Some(ChunkPath::Wide),
        _ => None,
    }
}

/// The bf16 chunked backward's launches: [`ChunkPath::Narrow`] for K <= 128 and V <= 128,
/// [`ChunkPath::Wide`] when K or V is above 128 (both at most 256), else `None` (the recurrent
/// backward).
pub fn chunk_bwd_path(p: &Problem) -> Option<ChunkPath> {
    let (k, v) = (p.k(), p.v());
    if k <= CHUNK_NARROW_MAX && v <= 128 {
        Some(ChunkPath::Narrow)
    } else if k <= CHUNK_WIDE_MAX && v <= CHUNK_WIDE_MAX && (k > CHUNK_NARROW_MAX || v > 128) {
        Some(ChunkPath::Wide)
    } else {
        None
    }
}

/// The forward's kernels for `which` on a problem stored as bf16 (`bf16`) or f32, or why none.
///
/// # Errors
/// The reason (a message) when K is above what the asked kernel takes.
pub fn fwd_path(p: &Problem, bf16: bool, which: FwdKernel) -> std::result::Result<FwdPath, String> {
    let k = p.k();
    match which {
        FwdKernel::Recurrent if k > RECURRENT_MAX_K => Err(format!("recurrent kernel: K = {k} > {RECURRENT_MAX_K}")),
        FwdKernel::Recurrent => Ok(FwdPath::Recurrent),
        FwdKernel::Chunk | FwdKernel::ChunkStatePass => {
            let state_only = which == FwdKernel::ChunkStatePass;
            match (bf16, chunk_fwd_path(p)) {
                (true, Some(path)) => Ok(FwdPath::Chunk { path, state_only }),
                (false, _) if k <= CHUNK_NARROW_MAX => Ok(FwdPath::ChunkF32),
                (true, _) => Err(format!("chunk kernel: K = {k} > {CHUNK_WIDE_MAX} (bf16)")),
                (false, _) => Err(format!("chunk kernel: K = {k} > {CHUNK_NARROW_MAX} (f32)")),
            }
        }
    }
}

/// The backward's path: the chunked one for bf16 storage where [`chunk_bwd_path`] has one,
/// else `None` (the recurrent kernels).
pub fn bwd_path(p: &Problem, bf16: bool) -> Option<ChunkPath> {
    chunk_bwd_path(p).filter(|_| bf16)
}

/// Elements of each workspace of the GLA op's launches for one problem (`ops::GlaWorkspace`):
/// 0 where no launch of the asked passes reads or writes that buffer, at least 1 where one
/// does (a launch may take a buffer's address even when it has no chunk to write). `T` is the
/// storage dtype; the rest is f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkspaceLens {
    /// `T`, shaped like k: k scaled by the decay to the chunk end (chunked prep).
    pub kd: usize,
    /// `T`, shaped like q: q scaled by its decay from the chunk start (chunked prep).
    pub qe: usize,
    /// `T`, chunks x H x K x V: the state entering each chunk.
    pub hs: usize,
    /// `T`, chunks x H x K x V: the state gradient leaving each chunk (backward).
    pub dhs: usize,
    /// `T`, chunks x H x 64 x 64: the intra-chunk attention A.
    pub a: usize,
    /// f32, chunks x H x K: each chunk's total decay.
    pub dl: usize,
    /// f32, chunks x H x 64 x 64: dA (backward).
    pub da: usize,
    /// f32, chunks x H x K: rowsum(S * D) (backward).
    pub sd: usize,
    /// f32, NV x `[rows, H, K]`, each of the recurrent backward's dq, dk and dg partials.
    pub part: usize,
    /// f32: the recurrent backward's state checkpoints.
    pub ckpt: usize,
    /// f32: the recurrent backward's recomputed states, one segment per block.
    pub seg: usize,
}

impl WorkspaceLens {
    /// The larger of each length (a workspace for both passes).
    pub fn max(self, o: Self) -> Self {
        Self {
            kd: self.kd.max(o.kd),
            qe: self.qe.max(o.qe),
            hs: self.hs.max(o.hs),
            dhs: self.dhs.max(o.dhs),
            a: self.a.max(o.a),
            dl: self.dl.max(o.dl),
            da: self.da.max(o.da),
            sd: self.sd.max(o.sd),
            part: self.part.max(o.part),
            ckpt: self.ckpt.max(o.ckpt),
            seg: self.seg.max(o.seg),
        }
    }

    /// Whether every length is at least `need`'s.
    pub fn covers(&self, need: &Self) -> bool {
        self.max(*need) == *self
    }

    /// The forward's workspaces for `which` ([`fwd_path`]; none for the recurrent and the f32
    /// chunk kernels), over `n_chunks` 64-row chunks.
    ///
    /// # Errors
    /// As [`fwd_path`].
    pub fn forward(p: &Problem, n_chunks: usize, bf16: bool, which: FwdKernel) -> std::result::Result<Self, String> {
        let FwdPath::Chunk { path, state_only } = fwd_path(p, bf16, which)? else { return Ok(Self::default()) };
        let wide = path == ChunkPath::Wide;
        let (kv, k) = (n_chunks * p.h() * p.k() * p.v(), n_chunks * p.h() * p.k());
        Ok(Self {
            kd: p.qk_len().max(1),
            // the wide output launch reads q scaled by exp(G) from the prep; the narrow one forms it
            qe: if wide { p.qk_len().max(1) } else { 0 },
            hs: kv.max(1),
            a: if wide && !state_only { (n_chunks * p.h() * 4096).max(1) } else { 0 },
            dl: k.max(1),
            ..Self::default()
        })
    }

    /// The backward's workspaces: [`WorkspaceLens::chunk_backward`] where [`bwd_path`] has a
    /// chunked path, else [`WorkspaceLens::recurrent_backward`].
    pub fn backward(p: &Problem, n_chunks: usize, bf16: bool) -> Self {
        if bwd_path(p, bf16).is_some() {
            Self::chunk_backward(p, n_chunks)
        } else {
            Self::recurrent_backward(p)
        }
    }

    /// The chunked backward's workspaces over `n_chunks` 64-row chunks.
    pub fn chunk_backward(p: &Problem, n_chunks: usize) -> Self {
        let (kv, k, a) = (n_chunks * p.h() * p.k() * p.v(), n_chunks * p.h() * p.k(), n_chunks * p.h() * 4096);
        Self {
            kd: p.qk_len().max(1),
            qe: p.qk_len().max(1),
            hs: kv.max(1),
            dhs: kv.max(1),
            a: a.max(1),
            dl: k.max(1),
            da: a.max(1),
            sd: k.max(1),
            ..Self::default()
        }
    }

    /// The recurrent backward's workspaces (`gla/recurrent.cu`: `BV` value columns per block,
    /// state checkpoints every `CK` steps and one segment of recomputed states per block, in
    /// per-thread slots of ceil(K/8) floats x 256 threads).
    pub fn recurrent_backward(p: &Problem) -> Self {
        let nv = p.v().div_ceil(REC_BV);
        let slot = p.k().div_ceil(8) * 256;
        Self {
            part: (nv * p.qk_len()).max(1),
            ckpt: ((p.rows() / REC_CK + p.n() + 1) * p.h() * nv * slot).max(1),
            seg: (p.n() * p.h() * nv * REC_CK * slot).max(1),
            ..Self::default()
        }
    }
}

/// K rounded up to the tensor-core tile (16).
pub(crate) fn k_padded(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// The recurrent forward, decode and backward grid: (ceil(V / BV), N*H), block (32, 8).
pub(crate) fn recurrent_cfg(p: &Problem, gy: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (p.v().div_ceil(REC_BV) as u32, gy, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 }
}

/// The f32 chunk kernel: grid (ceil(V / BV), N*H), 256 threads, q, k, G [64, K], v [64, BV],
/// A [64, 64], S [K, BV] f32 in shared memory.
pub(crate) fn chunk_f32_cfg(p: &Problem, gy: u32) -> LaunchConfig {
    let smem = (3 * 64 * p.k() + 64 * CHUNK_F32_BV + 64 * 64 + p.k() * CHUNK_F32_BV) * 4;
    LaunchConfig { grid_dim: (p.v().div_ceil(CHUNK_F32_BV) as u32, gy, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 }
}

/// Whether the 16-byte gate prep (`gla_chunk_prep8_bf16`) applies: per-key gate, K % 8 == 0.
pub(crate) fn prep8(p: &Problem) -> bool {
    p.gate() == GateKind::PerKey && p.k().is_multiple_of(8) && p.k() <= CHUNK_WIDE_MAX
}

/// The gate prep launch: `gla_chunk_prep8_bf16` (64 threads) or `gla_chunk_prep_bf16` (128),
/// grid (chunks, H, ceil(K / 128)): each block covers 128 key channels.
pub(crate) fn prep_cfg(p: &Problem, gx: u32) -> (&'static str, LaunchConfig) {
    let vec8 = prep8(p);
    let name = if vec8 { "gla_chunk_prep8_bf16" } else { "gla_chunk_prep_bf16" };
    let cfg = LaunchConfig {
        grid_dim: (gx, p.h() as u32, p.k().div_ceil(128) as u32),
        block_dim: (if vec8 { 64 } else { 128 }, 1, 1),
        shared_mem_bytes: 0,
    };
    (name, cfg)
}

/// The state passes' tiling, one choice for the forward's and the backward's: `bvh` value
/// columns per block of 64 key rows (128 threads). 64 x 64 tiles, or 32 value columns when that
/// gives fewer than two blocks per SM (long sequences: each block walks its sequence's chunks in
/// order, so blocks are the only parallelism). The pass is bound by latency and L2 traffic, not
/// by its bytes, so larger tiles (fewer reloads of v) do not pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HPlan {
    pub(crate) bvh: usize,
}

impl HPlan {
    /// The plan for `nh` = N*H sequences-heads on a device of `sm_count` SMs.
    pub(crate) fn new(p: &Problem, nh: usize, sm_count: usize) -> Self {
        let tiles = nh * p.k().div_ceil(64) * p.v().div_ceil(64);
        Self { bvh: if tiles < 2 * sm_count { 32 } else { 64 } }
    }

    /// The kernel of the forward state pass, or (`rev`) of the backward's state-gradient pass.
    pub(crate) fn name(self, rev: bool) -> &'static str {
        match (rev, self.bvh) {
            (false, 32) => "gla_chunk_h32_bf16",
            (false, _) => "gla_chunk_h64_bf16",
            (true, 32) => "gla_chunk_dh32_bf16",
            (true, _) => "gla_chunk_dh64_bf16",
        }
    }

    /// Grid (V tiles, K tiles of 64, `gz` = N*H), 128 threads, the HNS-stage smem of the kernel.
    pub(crate) fn cfg(self, p: &Problem, gz: u32) -> LaunchConfig {
        let smem = CHUNK_H_STAGES * ((64 * 72 + 64 * (self.bvh + 8)) * 2 + 64 * 4);
        LaunchConfig {
            grid_dim: (p.v().div_ceil(self.bvh) as u32, p.k().div_ceil(64) as u32, gz),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        }
    }
}

/// One block of 256 threads per (`gx`, head, `gz`) with `smem` bytes: the chunk-parallel launches.
pub(crate) fn chunk_cfg(gx: u32, p: &Problem, gz: usize, smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (gx, p.h() as u32, gz as u32), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 }
}

/// K tiles of the split launches: (width, count). The padded K is split evenly into at most
/// [`CHUNK_K_TILE`]-wide tiles, each a multiple of 16 (K = 256: 2 x 128; K = 192: 2 x 96;
/// K = 130: 2 x 80), so no tile is mostly padding.
pub(crate) fn k_tiles(k: usize) -> (usize, usize) {
    k_tiles_of(k, CHUNK_K_TILE)
}

/// [`k_tiles`] with tiles of at most `max_w` columns (a multiple of 16).
fn k_tiles_of(k: usize, max_w: usize) -> (usize, usize) {
    let kp = k_padded(k);
    let n = kp.div_ceil(max_w).max(1);
    let w = k_padded(kp.div_ceil(n));
    (w, k.div_ceil(w))
}

/// Dynamic shared memory of `gla_chunk_o_bf16` (and `gla_chunk_a_bf16` per K tile) for K padded
/// to `kp` (the kernel's layout in `gla/chunk_fwd.cu`).
pub fn chunk_o_smem_bytes(kp: usize) -> usize {
    let ldk = kp + 8;
    64 * ldk * 2 + 64 * 136 * 2 + 64 * kp * 4 + 64 * ldk * 2 + 48 * ldk * 2 + 64 * 72 * 2 + 256 * 4 + 7 * kp * 4
}

/// Dynamic shared memory of `gla_chunk_ow_bf16` for K padded to `kp` (<= 256).
pub fn chunk_ow_smem_bytes(kp: usize) -> usize {
    (64 * (kp + 8) + kp * 72 + 2 * 64 * 72) * 2
}

/// Dynamic shared memory of `gla_chunk_bwd1k_bf16`: do, v, and 64 rows of S_c and D_c, each
/// 64 x 128 (+8) bf16.
pub fn chunk_bwd1k_smem_bytes() -> usize {
    4 * 64 * 136 * 2
}

/// Dynamic shared memory of `gla_chunk_bwd1v_bf16` for K padded to `kp` (<= 256).
pub fn chunk_bwd1v_smem_bytes(kp: usize) -> usize {
    (2 * 64 * 72 + 64 * (kp + 8) + kp * 72) * 2
}

/// Dynamic shared memory of `gla_chunk_bwd1_bf16` for K padded to `kp`: its state tiles hold
/// max(`kp`, 64) rows (the raw dq / dk products read 64 key rows).
pub fn chunk_bwd1_smem_bytes(kp: usize) -> usize {
    (2 * 64 + 2 * kp.max(64)) * 136 * 2 + 64 * 72 * 2 + 64 * (kp + 8) * 2
}

/// Dynamic shared memory of `gla_chunk_bwd2k_bf16` for a K tile of `kp` columns.
pub fn chunk_bwd2_smem_bytes(kp: usize) -> usize {
    let ldk = kp + 8;
    (2 * 64 * ldk + 64 * 72 + 2 * 96 * ldk) * 2 + (64 * kp + 4096 + 2 * 64 * kp + 256 + 128) * 4
}

/// Dynamic shared memory of `gla_chunk_bwd2k64_bf16` (dA kept in f32 only for its diagonal
/// blocks) for a K tile of `kp` columns: 107.5 KB at `kp` = 64, two blocks per SM.
pub fn chunk_bwd2_d2_smem_bytes(kp: usize) -> usize {
    chunk_bwd2_smem_bytes(kp) - 3072 * 4
}

/// How the backward's last launch tiles K (`gw`: gate width, K / 1 / 0): (kernel, tile width,
/// tiles, dynamic smem). Tiles of <= 64 at two blocks per SM (`gla_chunk_bwd2k64_bf16`, the
/// faster layout) wherever the result stays deterministic: a per-head gate's dg is a sum over
/// the tiles added atomically, exact in any order only for at most two tiles, so a per-head gate
/// with K > 128 takes `gla_chunk_bwd2k_bf16` in two tiles of <= 128. Tiles split K evenly
/// (80 -> 48 + 32).
pub(crate) fn bwd2_plan(k: usize, gw: usize) -> (&'static str, usize, usize, usize) {
    let (w, n) = k_tiles_of(k, 64);
    if gw == 1 && n > 2 {
        let (w, n) = k_tiles(k);
        ("gla_chunk_bwd2k_bf16", w, n, chunk_bwd2_smem_bytes(w))
    } else {
        ("gla_chunk_bwd2k64_bf16", w, n, chunk_bwd2_d2_smem_bytes(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::ProblemSpec;

    fn prob(k: usize, v: usize) -> Problem {
        Problem::new(ProblemSpec { b: 1, t: 64, h: 1, k, v, gate: GateKind::PerKey, scale: None, cu_seqlens: None }).expect("valid")
    }

    #[test]
    fn k_tiles_cover_k_in_at_most_two_tiles_of_128() {
        for k in 1..=CHUNK_WIDE_MAX {
            let (w, n) = k_tiles(k);
            assert!(w % 16 == 0 && w <= CHUNK_K_TILE && w > 0, "K = {k}: width {w}");
            assert!(w * n >= k && w * (n - 1) < k, "K = {k}: {n} x {w}");
            // bwd2k's deterministic per-head dg sums at most two tiles
            assert!(n <= 2, "K = {k}: {n} tiles");
        }
        assert_eq!(k_tiles(256), (128, 2));
        assert_eq!(k_tiles(192), (96, 2));
        assert_eq!(k_tiles(130), (80, 2));
    }

    #[test]
    fn state_pass_tiles_fit_two_blocks_per_sm() {
        for bvh in [32, 64] {
            let plan = HPlan { bvh };
            let cfg = plan.cfg(&prob(256, 256), 1);
            assert!(2 * (cfg.shared_mem_bytes as usize + 1024) <= 228 * 1024, "{plan:?}: {} B", cfg.shared_mem_bytes);
            assert_eq!(cfg.grid_dim.1, 4);
            assert!(plan.name(false).starts_with("gla_chunk_h") && plan.name(true).starts_with("gla_chunk_dh"));
        }
        // fewer than two 64 x 64 tiles per SM: 32-column tiles
        assert_eq!(HPlan::new(&prob(128, 128), 4, 132).bvh, 32);
        assert_eq!(HPlan::new(&prob(128, 128), 512, 132).bvh, 64);
    }

    #[test]
    fn bwd2_tiles_of_64_unless_a_per_head_dg_would_sum_more_than_two() {
        for k in 1..=CHUNK_WIDE_MAX {
            for gw in [k, 1, 0] {
                let (name, w, n, smem) = bwd2_plan(k, gw);
                assert!(w % 16 == 0 && w * n >= k && w * (n - 1) < k, "K = {k}: {n} x {w}");
                if gw == 1 {
                    assert!(n <= 2, "K = {k}, per-head gate: {n} tiles");
                }
                if name == "gla_chunk_bwd2k64_bf16" {
                    assert!(w <= 64 && smem + 1024 <= 228 * 1024 / 2, "K = {k}: two blocks per SM");
                } else {
                    assert!(gw == 1 && k > 128 && w <= CHUNK_K_TILE && smem <= 227 * 1024, "K = {k}");
                }
            }
        }
        assert_eq!((bwd2_plan(128, 128).1, bwd2_plan(128, 128).2), (64, 2));
        assert_eq!((bwd2_plan(80, 80).1, bwd2_plan(80, 80).2), (48, 2));
        assert_eq!((bwd2_plan(256, 256).1, bwd2_plan(256, 256).2), (64, 4));
        assert_eq!(bwd2_plan(256, 1).0, "gla_chunk_bwd2k_bf16");
    }

    #[test]
    fn paths() {
        assert_eq!(chunk_fwd_path(&prob(128, 512)), Some(ChunkPath::Narrow));
        assert_eq!(chunk_fwd_path(&prob(129, 7)), Some(ChunkPath::Wide));
        assert_eq!(chunk_fwd_path(&prob(256, 256)), Some(ChunkPath::Wide));
        assert_eq!(chunk_fwd_path(&prob(257, 64)), None);
        assert_eq!(chunk_bwd_path(&prob(60, 100)), Some(ChunkPath::Narrow));
        assert_eq!(chunk_bwd_path(&prob(48, 100)), Some(ChunkPath::Narrow));
        assert_eq!(chunk_bwd_path(&prob(16, 64)), Some(ChunkPath::Narrow));
        assert_eq!(chunk_bwd_path(&prob(32, 160)), Some(ChunkPath::Wide));
        assert_eq!(chunk_bwd_path(&prob(256, 256)), Some(ChunkPath::Wide));
        assert_eq!(chunk_bwd_path(&prob(128, 257)), None);
        assert_eq!(chunk_bwd_path(&prob(257, 64)), None);
        assert_eq!(bwd_path(&prob(256, 256), true), Some(ChunkPath::Wide));
        assert_eq!(bwd_path(&prob(256, 256), false), None);
        let chunk = |k, bf16| fwd_path(&prob(k, 64), bf16, FwdKernel::Chunk);
        assert_eq!(chunk(64, false), Ok(FwdPath::ChunkF32));
        assert!(chunk(129, false).is_err());
        assert_eq!(chunk(256, true), Ok(FwdPath::Chunk { path: ChunkPath::Wide, state_only: false }));
        assert!(chunk(257, true).is_err());
        assert_eq!(fwd_path(&prob(256, 64), false, FwdKernel::Recurrent), Ok(FwdPath::Recurrent));
        assert!(fwd_path(&prob(257, 64), true, FwdKernel::Recurrent).is_err());
    }

    #[test]
    fn split_launches_fit_shared_memory() {
        // 227 KB per block on sm_90; the 2-blocks-per-SM kernels need <= 113 KB each
        let two_per_sm = 227 * 1024 / 2;
        assert!(chunk_o_smem_bytes(CHUNK_K_TILE) <= two_per_sm);
        assert!(chunk_ow_smem_bytes(256) <= two_per_sm);
        assert!(chunk_bwd1k_smem_bytes() <= two_per_sm);
        assert!(chunk_bwd1v_smem_bytes(256) <= two_per_sm);
        assert!(chunk_bwd2_smem_bytes(CHUNK_K_TILE) <= 227 * 1024);
        // bwd2 at K tiles of 64 (two blocks per SM, 1 KB reserved per block)
        assert!(chunk_bwd2_d2_smem_bytes(64) + 1024 <= 228 * 1024 / 2);
    }

    #[test]
    fn workspace_lens_follow_the_paths() {
        let chunks = |p: &Problem| p.bounds().windows(2).map(|w| (w[1] - w[0]).div_ceil(CHUNK_BT)).sum::<usize>();
        for (k, v) in [(16, 32), (64, 64), (64, 128), (128, 128), (192, 64), (256, 128), (32, 160), (256, 256)] {
            let p = prob(k, v);
            let nc = chunks(&p);
            let f = WorkspaceLens::forward(&p, nc, true, FwdKernel::Chunk).expect("K <= 256");
            let b = WorkspaceLens::backward(&p, nc, true);
            // a training plan's workspace (forward and backward) serves both passes
            let both = f.max(b);
            assert!(both.covers(&f) && both.covers(&b), "K = {k}, V = {v}");
            let wide = k > CHUNK_NARROW_MAX;
            assert_eq!((f.qe > 0, f.a > 0), (wide, wide), "K = {k}: qe and A only on the wide forward");
            assert_eq!(f.hs, nc * p.h() * k * v);
            match bwd_path(&p, true) {
                Some(_) => assert!(b.dhs == f.hs && b.da == nc * p.h() * 4096 && b.part == 0, "K = {k}, V = {v}"),
                None => assert!(b.part == v.div_ceil(REC_BV) * p.qk_len() && b.ckpt > 0 && b.seg > 0 && b.hs == 0, "K = {k}, V = {v}"),
            }
        }
        // (one chunk:) the recurrent and f32 chunk forwards need no workspace; f32 storage
        // takes the recurrent backward
        assert_eq!(WorkspaceLens::forward(&prob(64, 64), 1, true, FwdKernel::Recurrent), Ok(WorkspaceLens::default()));
        assert_eq!(WorkspaceLens::forward(&prob(64, 64), 1, false, FwdKernel::Chunk), Ok(WorkspaceLens::default()));
        assert_eq!(WorkspaceLens::backward(&prob(64, 64), 1, false), WorkspaceLens::recurrent_backward(&prob(64, 64)));
        assert!(WorkspaceLens::forward(&prob(257, 64), 1, true, FwdKernel::Chunk).is_err());
        assert!(!WorkspaceLens::default().covers(&WorkspaceLens { kd: 1, ..WorkspaceLens::default() }));
    }
}
