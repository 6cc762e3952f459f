//! The dispatch policy of softmax attention on the GPU (`crate::dispatch::attn`): which kernels
//! run for a head dim pair ([`attn_dims`]), the forward's tile ([`fwd_tile`]), the tile tables
//! ([`query_tiles`], [`kvq_units`]), the launch shapes, the shared-memory sizes, and the decode
//! step's split of the cache ([`decode_split`]). `attn/ops.rs` only checks lengths and launches
//! what this module picks; docs/kernels.md describes the kernels.
//!
//! | D, DV      | kernels (bf16 storage)                                                  |
//! |------------|-------------------------------------------------------------------------|
//! | 64, 32     | `attn_{fwd,bwd_kvq,decode,decode_g1}_d64_dv32`                          |
//! | 64, 64     | `attn_{fwd,bwd_kvq,decode,decode_g1}_d64_dv64`                          |
//! | 128, 128   | `attn_{bwd_kvq,decode,decode_g1}_d128_dv128`, the forward's [`FwdTile`] |
//! |            | kernels `attn_fwd_wg_d128_dv128` (sm_90a), `attn_fwd_m2*_d128_dv128`,   |
//! |            | the backward's [`BwdTile`] `attn_bwd_{kv,dq}_wg_d128_dv128` (sm_90a)    |
//! | otherwise  | nothing runs: [`attn_dims`] names the supported pairs                   |
//!
//! The backward runs `attn_bwd_pre`, then ([`bwd_tile`]) `attn_bwd_kvq_*` and `attn_bwd_dq_sum`
//! for every pair, or on sm_90a for (128, 128) `attn_bwd_kv_wg_*` and `attn_bwd_dq_wg_*`. The
//! decode step runs `attn_decode_g1_*` without grouping, `attn_decode_*` for 2 .. 8 query heads
//! per kv head ([`decode_kernel`]).
//!
//! Tiles: the forward takes 128 query rows per block (`BM`; 256 for the 8 x 32 tile; the warps
//! split it as [`FwdTile`] says), keys in tiles of 64 (`BN`; 128 on the warpgroup tile); the
//! backward's dK / dV kernels 128 keys per tile ([`KVQ_BN`]) and query tiles of 64 ([`KVQ_BQ`]);
//! the warpgroup dq kernel the forward's 128-row query tiles and 128-key tiles.
//!
//! [`attn_dims`]: crate::dispatch::attn::attn_dims
//! [`fwd_tile`]: crate::dispatch::attn::fwd_tile
//! [`query_tiles`]: crate::dispatch::attn::query_tiles
//! [`kvq_units`]: crate::dispatch::attn::kvq_units
//! [`decode_split`]: crate::dispatch::attn::decode_split
//! [`FwdTile`]: crate::dispatch::attn::FwdTile
//! [`BwdTile`]: crate::dispatch::attn::BwdTile
//! [`bwd_tile`]: crate::dispatch::attn::bwd_tile
//! [`decode_kernel`]: crate::dispatch::attn::decode_kernel
//! [`KVQ_BN`]: crate::dispatch::attn::KVQ_BN
//! [`KVQ_BQ`]: crate::dispatch::attn::KVQ_BQ

use cudarc::driver::LaunchConfig;
use gla_core::AttnProblem;

/// Query rows per block of the forward (`BM`).
pub const ATTN_BM: usize = 128;
/// Keys per tile of the forward (`BN`).
pub const ATTN_BN: usize = 64;
/// Threads of the forward's 8-warp blocks.
const FWD_THREADS: u32 = 256;
/// Threads of the decode blocks.
const DECODE_THREADS: u32 = 128;
/// Largest group of query heads per kv head the decode kernel holds (`DEC_MAXG`).
pub const DECODE_MAX_GROUP: usize = 8;
/// Keys per step of one decode block: 4 warps x 32 / (D / 8) lanes (the split is a multiple).
const DECODE_KEYS_QUANTUM: usize = 16;
/// Decode blocks to aim for: about this many per SM (each holds 4 warps).
const DECODE_BLOCKS_PER_SM: usize = 8;
/// Fewest keys per decode split (below it the combine costs more than the split saves).
const DECODE_MIN_CHUNK: usize = 256;
/// Largest grid y / z dimension.
pub const MAX_GRID_YZ: usize = 65_535;

/// The padded head dims `(DP, DVP)` of the kernels that run for `(D, DV)`.
///
/// # Errors
/// A message naming the supported pairs when no kernel takes `(d, dv)`.
pub fn attn_dims(d: usize, dv: usize) -> Result<(usize, usize), String> {
    match (d, dv) {
        (64, 32) | (64, 64) | (128, 128) => Ok((d, dv)),
        _ => Err(format!("attention kernels run (D, DV) = (64, 32), (64, 64) or (128, 128); asked for ({d}, {dv})")),
    }
}

/// The entry point `attn_{pass}_d{DP}_dv{DVP}`.
pub fn kernel(pass: &str, (dp, dvp): (usize, usize)) -> String {
    format!("attn_{pass}_d{dp}_dv{dvp}")
}

/// Dynamic shared memory of the forward on `tile`: Q `[BM][DP+8]`, K 2 x `[BN][DP+8]`, V 2 x
/// `[BN][DVP+8]` bf16 (BM = [`FwdTile::rows`]).
/// The warpgroup tile ([`FwdTile::Wg2`]) takes 1024 bytes of alignment and 128-byte-swizzled
/// tiles without padding: Q `[128][128]`, K and V 2 x `[128][128]` bf16 (attn/fwd_wg.cu).
pub fn fwd_smem((dp, dvp): (usize, usize), tile: FwdTile) -> usize {
    match tile {
        FwdTile::Wg2 => 1024 + 5 * 128 * 128 * 2,
        _ => 2 * (tile.rows() * (dp + 8) + 2 * ATTN_BN * (dp + 8) + 2 * ATTN_BN * (dvp + 8)),
    }
}

/// Keys per tile of the backward (`attn_bwd_kvq_*`: 8 warps, 4 x 2 over keys x columns for dK /
/// dV).
pub const KVQ_BN: usize = 128;
/// Query rows per tile of the backward (`BQ`).
pub const KVQ_BQ: usize = 64;
/// Threads of the backward's blocks.
const KVQ_THREADS: u32 = 256;
/// Most splits of the backward's key tiles (each holds a dQ sum of the problem's size).
const KVQ_MAX_SPLITS: usize = 8;
/// Most bytes of dQ sums beyond the first: a split past one adds a `[B,T,H,D]` f32 sum, so long
/// inputs (one sequence of 2^18 tokens at 32 x 128 is 4 GiB per sum) stay at fewer splits.
const KVQ_SPLIT_BYTES: usize = 4 << 30;

/// Dynamic shared memory of the backward's dK / dV kernel on `tile`: K `[128][DP+8]`, V
/// `[128][DVP+8]`, Q 2 x `[BQ][DP+8]`, dO 2 x `[BQ][DVP+8]`, P and dS `[BQ][128+8]` bf16, lse and delta 2
/// x `[BQ]` f32. The warpgroup kernel ([`BwdTile::Wg2`], `attn_bwd_kv_wg_d128_dv128`) takes 1024
/// bytes of alignment and 128-byte-swizzled tiles without padding: K, V `[128][128]`, Q, dO 2 x
/// `[BQ][128]` bf16, lse and delta 2 x `[BQ]` f32 (attn/bwd_wg.cu).
pub fn kvq_smem((dp, dvp): (usize, usize), tile: BwdTile) -> usize {
    match tile {
        BwdTile::Wg2 => 1024 + 2 * (2 * KVQ_BN * 128 + 4 * KVQ_BQ * 128) + 4 * 4 * KVQ_BQ,
        BwdTile::W8 => {
            2 * (KVQ_BN * (dp + 8) + KVQ_BN * (dvp + 8) + 2 * KVQ_BQ * (dp + 8) + 2 * KVQ_BQ * (dvp + 8) + 2 * KVQ_BQ * (KVQ_BN + 8))
                + 4 * 4 * KVQ_BQ
        }
    }
}

/// The backward's kernels after `attn_bwd_pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BwdTile {
    /// 8 warps of mma.sync products (`attn_bwd_kvq_d{DP}_dv{DVP}`: dK, dV and dQ parts added into
    /// the splits' f32 sums, then `attn_bwd_dq_sum`): every head dim pair.
    W8,
    /// Hopper's warpgroup products, dK / dV and dq apart: `attn_bwd_kv_wg_d128_dv128` (two
    /// warpgroups of 64 keys per 128-key tile) and `attn_bwd_dq_wg_d128_dv128` (per 128-row query
    /// tile of the forward's table, S and dP recomputed), no dQ sums: D = DV = 128 on sm_90a
    /// only.
    Wg2,
}

impl BwdTile {
    /// The label of benchmark rows.
    pub fn label(self) -> &'static str {
        match self {
            BwdTile::W8 => "bwd-kvq-8w",
            BwdTile::Wg2 => "bwd-kv+dq-wg",
        }
    }
    /// Every kernel (the benchmark times them all).
    pub const ALL: [BwdTile; 2] = [BwdTile::W8, BwdTile::Wg2];
}

/// The backward's kernels for `p` on a device of architecture `arch`: `GLA_ATTN_BWD=8w|wg` picks
/// one where it has a kernel (for checking and timing through the whole stack); else the
/// warpgroup kernels where they run (D = DV = 128 on sm_90a: faster than the 8-warp kernel at
/// T = 2048, 8192 and 32768 on an H100, `bench/results/2026-12-05_h100_*_attn_bwd_wg.txt`), the
/// 8-warp one elsewhere.
pub fn bwd_tile(p: &AttnProblem, arch: &str) -> BwdTile {
    let dims = (p.d(), p.dv());
    let forced = match std::env::var("GLA_ATTN_BWD").as_deref() {
        Ok("8w") => Some(BwdTile::W8),
        Ok("wg") => Some(BwdTile::Wg2),
        _ => None,
    };
    match forced {
        Some(t) if bwd_kernel(dims, t, arch).is_some() => t,
        _ if bwd_kernel(dims, BwdTile::Wg2, arch).is_some() => BwdTile::Wg2,
        _ => BwdTile::W8,
    }
}

/// The backward's first entry point after `attn_bwd_pre` for `dims` and `tile` on a device of
/// architecture `arch` (the dK / dV kernel; [`BwdTile::Wg2`] then runs
/// `attn_bwd_dq_wg_d128_dv128`); `None` where that kernel has no instantiation (the warpgroup
/// kernels: D = DV = 128 on sm_90a only).
pub fn bwd_kernel(dims: (usize, usize), tile: BwdTile, arch: &str) -> Option<String> {
    match (tile, dims) {
        (BwdTile::W8, _) => Some(kernel("bwd_kvq", dims)),
        (BwdTile::Wg2, (128, 128)) if arch == crate::runtime::ARCH_HOPPER => Some("attn_bwd_kv_wg_d128_dv128".to_string()),
        _ => None,
    }
}

/// How many splits the backward cuts each sequence's key tiles into (split s takes the
/// tiles s, s + splits, ...; each split adds its dQ into a sum of its own, so every element has
/// one adding thread: deterministic): enough that N * H_KV * splits blocks fill `sms` SMs once
/// (one block per SM), at least 1, at most `KVQ_MAX_SPLITS`, the longest sequence's tiles, and
/// as many as keep the sums past the first within 4 GiB. `GLA_ATTN_SPLITS=n` asks for n instead
/// (same bounds; for timing: more splits put fewer (sequence, head) pairs in flight, so their Q,
/// dO rows stay in L2, at the cost of a dQ sum each). [`crate::attn::ops::DevAttnProblem`] calls
/// it once and every buffer size follows that count. The warpgroup dK / dV kernel
/// ([`BwdTile::Wg2`]) runs the same units but keeps no sums, so the caps that bound the sums'
/// memory bound its parallelism too (few blocks for a small N * H_KV with long sequences).
pub fn kvq_splits(p: &AttnProblem, sms: usize) -> usize {
    let seqs = (0..p.n()).filter(|&n| !p.seq(n).is_empty()).count();
    let tiles = (0..p.n()).map(|n| p.seq(n).len().div_ceil(KVQ_BN)).max().unwrap_or(0);
    let fill = sms / (seqs * p.h_kv()).max(1);
    let want = std::env::var("GLA_ATTN_SPLITS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(fill);
    let by_memory = 1 + KVQ_SPLIT_BYTES / (4 * p.q_len()).max(1);
    want.clamp(1, KVQ_MAX_SPLITS).min(tiles.max(1)).min(by_memory)
}

/// The backward's work units: (sequence, split) of every non-empty sequence and split,
/// the longest sequences first.
pub fn kvq_units(p: &AttnProblem, splits: usize) -> (Vec<i32>, Vec<i32>) {
    let mut seqs: Vec<usize> = (0..p.n()).filter(|&n| !p.seq(n).is_empty()).collect();
    seqs.sort_by_key(|&n| std::cmp::Reverse(p.seq(n).len()));
    seqs.iter().flat_map(|&n| (0..splits).map(move |s| (n as i32, s as i32))).unzip()
}

/// Dynamic shared memory of `attn_bwd_dq_wg_d128_dv128`: 1024 bytes of alignment, Q and dO
/// `[128][128]`, K and V 2 x `[128][128]` bf16 (swizzled), lse and delta `[128]` f32.
pub const DQ_WG_SMEM: usize = 1024 + 6 * 128 * 128 * 2 + 2 * 4 * ATTN_BM;

/// The launch of `attn_bwd_dq_wg_d128_dv128`: grid (H, the forward's [`ATTN_BM`]-row tiles), two
/// warpgroups.
pub fn dq_wg_cfg(h: usize, tiles: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (h as u32, tiles as u32, 1), block_dim: (KVQ_THREADS, 1, 1), shared_mem_bytes: DQ_WG_SMEM as u32 }
}

/// The backward's launch: grid (H_KV, units), 256 threads.
pub fn kvq_cfg(h_kv: usize, units: usize, smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (h_kv as u32, units as u32, 1), block_dim: (KVQ_THREADS, 1, 1), shared_mem_bytes: smem as u32 }
}

/// The dQ sum's launch (`attn_bwd_dq_sum`): 4 elements per thread, 256 threads per block.
pub fn dq_sum_cfg(elems: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (elems.div_ceil(1024).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Keys a causal (or windowed) query tile of `rows` at position `i0` of a sequence of `len` can
/// see: the sort key of the tile table.
fn tile_work(p: &AttnProblem, i0: usize, rows: usize, len: usize) -> usize {
    let mut work = if p.causal() { len.min(i0 + rows) } else { len };
    if let Some(w) = p.window() {
        work = work.min(w + rows);
    }
    work
}

/// The forward's query tiles: (sequence, first position) of every `rows`-row tile ([`ATTN_BM`],
/// or [`FwdTile::rows`]) of every non-empty sequence, sequence by sequence (the longest first),
/// each one's tiles most keys first (causal: the last tiles). The blocks in flight are then the
/// neighbouring tiles of one sequence over all heads (grid x), which read the same K / V rows, so
/// those stay in L2; within a sequence the long tiles start while the short ones fill the tail.
pub fn query_tiles(p: &AttnProblem, rows: usize) -> (Vec<i32>, Vec<i32>) {
    let mut t: Vec<(usize, i32, i32)> = Vec::new();
    for n in 0..p.n() {
        let len = p.seq(n).len();
        for i0 in (0..len).step_by(rows) {
            t.push((tile_work(p, i0, rows, len), n as i32, i0 as i32));
        }
    }
    t.sort_by_key(|x| (std::cmp::Reverse(p.seq(x.1 as usize).len()), x.1, std::cmp::Reverse(x.0)));
    t.into_iter().map(|x| (x.1, x.2)).unzip()
}

/// The forward's query tile and how its warps split it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdTile {
    /// [`ATTN_BM`] rows, 8 warps x 16 rows, Q fragments in registers (`attn_fwd_d64_*`): D = 64.
    W8x16,
    /// [`ATTN_BM`] rows, 4 warps x 32 rows, each K / V fragment feeding two m-tiles
    /// (`attn_fwd_m2_d*`): D = DV = 128 only.
    W4x32,
    /// 256 rows, 8 warps x 32 rows (`attn_fwd_m2w8_d*`): each K / V tile read from L2 serves
    /// twice the rows of the other two; one block per SM. D = DV = 128 only.
    W8x32,
    /// [`ATTN_BM`] rows on two warpgroups of 64, Hopper's warpgroup products, keys in tiles of
    /// 128 (`attn_fwd_wg_d128_dv128`): D = DV = 128 on sm_90a only.
    Wg2,
}

impl FwdTile {
    /// The label of benchmark rows.
    pub fn label(self) -> &'static str {
        match self {
            FwdTile::W8x16 => "flash",
            FwdTile::W4x32 => "flash-4x32",
            FwdTile::W8x32 => "flash-8x32",
            FwdTile::Wg2 => "flash-wg",
        }
    }
    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            FwdTile::W8x16 | FwdTile::W8x32 | FwdTile::Wg2 => FWD_THREADS,
            FwdTile::W4x32 => FWD_THREADS / 2,
        }
    }
    /// Query rows per block (`BM`).
    pub fn rows(self) -> usize {
        match self {
            FwdTile::W8x16 | FwdTile::W4x32 | FwdTile::Wg2 => ATTN_BM,
            FwdTile::W8x32 => 2 * ATTN_BM,
        }
    }
    /// Every split (the benchmark times them all).
    pub const ALL: [FwdTile; 4] = [FwdTile::W8x16, FwdTile::W4x32, FwdTile::W8x32, FwdTile::Wg2];
}

/// Sequence length from which the forward of D = DV = 128 takes 256-row tiles ([`FwdTile::W8x32`]):
/// on the H200 (causal, H = 16) 8 x 32 is the faster tile at T = 32768 and 4 x 32 at T = 2048 and
/// 8192 (docs/kernels.md).
const FWD_W8X32_FROM: usize = 32768;

/// The forward's tile for `p` on a device of architecture `arch` (`sm_90a`, ...):
/// `GLA_ATTN_FWD=8x16|4x32|8x32|wg` picks one where it has a kernel (for checking and timing a
/// tile through the whole stack; wg on sm_90a only); else, for D = DV = 128, the warpgroup tile
/// on sm_90a (faster than 4 x 32 and 8 x 32 at T = 2048, 8192 and 32768 on an H100:
/// `bench/results/2026-12-05_h100_8577c76_attn_fwd_wgmma.txt`), elsewhere 8 x 32 when the longest
/// sequence has at least `FWD_W8X32_FROM` tokens and 4 x 32 below; else 8 x 16 (the bench
/// times the others beside it).
pub fn fwd_tile(p: &AttnProblem, arch: &str) -> FwdTile {
    let dims = (p.d(), p.dv());
    let forced = match std::env::var("GLA_ATTN_FWD").as_deref() {
        Ok("8x16") => Some(FwdTile::W8x16),
        Ok("4x32") => Some(FwdTile::W4x32),
        Ok("8x32") => Some(FwdTile::W8x32),
        Ok("wg") => Some(FwdTile::Wg2),
        _ => None,
    };
    let longest = (0..p.n()).map(|n| p.seq(n).len()).max().unwrap_or(0);
    match forced {
        Some(t) if fwd_kernel(dims, t, arch).is_some() => t,
        _ if fwd_kernel(dims, FwdTile::Wg2, arch).is_some() => FwdTile::Wg2,
        _ if dims == (128, 128) && longest >= FWD_W8X32_FROM => FwdTile::W8x32,
        _ if dims == (128, 128) => FwdTile::W4x32,
        _ => FwdTile::W8x16,
    }
}

/// The forward's entry point for `dims` and `tile` on a device of architecture `arch`; `None`
/// where that tile has no instantiation (the warpgroup tile: sm_90a only).
pub fn fwd_kernel(dims: (usize, usize), tile: FwdTile, arch: &str) -> Option<String> {
    match (tile, dims) {
        (FwdTile::W8x16, (64, _)) => Some(kernel("fwd", dims)),
        (FwdTile::W4x32, (128, 128)) => Some("attn_fwd_m2_d128_dv128".to_string()),
        (FwdTile::W8x32, (128, 128)) => Some("attn_fwd_m2w8_d128_dv128".to_string()),
        (FwdTile::Wg2, (128, 128)) if arch == crate::runtime::ARCH_HOPPER => Some("attn_fwd_wg_d128_dv128".to_string()),
        _ => None,
    }
}

/// The forward's launch: grid (H, tiles), [`FwdTile::threads`] threads.
pub fn fwd_cfg(h: usize, tiles: usize, smem: usize, tile: FwdTile) -> LaunchConfig {
    LaunchConfig { grid_dim: (h as u32, tiles as u32, 1), block_dim: (tile.threads(), 1, 1), shared_mem_bytes: smem as u32 }
}

/// The backward's preprocess: one warp per (row, head), 8 per block.
pub fn pre_cfg(rows_heads: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows_heads.div_ceil(8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// An elementwise launch over `n` items, 256 per block (the cache append).
pub fn flat_cfg(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// How the decode step splits each sequence's `slots`: `(splits, chunk)`, chunk keys per split
/// (a multiple of 16, at least 256 unless the cache is shorter), enough splits that N * H_KV *
/// splits blocks give each of `sms` SMs about 8 blocks (flash-decoding: batch 1 with a long cache
/// still fills the GPU).
pub fn decode_split(n: usize, h_kv: usize, slots: usize, sms: usize) -> (usize, usize) {
    let want = (DECODE_BLOCKS_PER_SM * sms.max(1)).div_ceil((n * h_kv).max(1)).max(1);
    let most = slots.div_ceil(DECODE_MIN_CHUNK).max(1);
    let splits = want.min(most).min(MAX_GRID_YZ);
    let chunk = slots.div_ceil(splits).div_ceil(DECODE_KEYS_QUANTUM) * DECODE_KEYS_QUANTUM;
    (slots.div_ceil(chunk), chunk)
}

/// The decode step's entry point for `dims` and `group` query heads per kv head: the one-head
/// kernel (`attn_decode_g1_*`, a quarter of the registers) without grouping, else the one that
/// holds up to [`DECODE_MAX_GROUP`] heads.
pub fn decode_kernel(dims: (usize, usize), group: usize) -> String {
    if group == 1 {
        kernel("decode_g1", dims)
    } else {
        kernel("decode", dims)
    }
}

/// The decode launch: grid (splits, H_KV, N), 128 threads.
pub fn decode_cfg(splits: usize, h_kv: usize, n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (splits as u32, h_kv as u32, n as u32), block_dim: (DECODE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The decode combine: one block per (sequence, head), DV threads.
pub fn combine_cfg(nh: usize, dv: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (nh as u32, 1, 1), block_dim: (dv as u32, 1, 1), shared_mem_bytes: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::AttnSpec;

    #[test]
    fn dims_name_the_supported_pairs() {
        assert_eq!(attn_dims(128, 128), Ok((128, 128)));
        assert!(attn_dims(96, 96).unwrap_err().contains("(128, 128)"));
        assert_eq!(kernel("fwd", (64, 32)), "attn_fwd_d64_dv32");
        assert_eq!(fwd_kernel((64, 64), FwdTile::W4x32, "sm_90a"), None);
        assert_eq!(fwd_kernel((64, 64), FwdTile::W8x32, "sm_90a"), None);
        assert!(fwd_smem((128, 128), FwdTile::W8x32) + 1024 <= 228 * 1024);
        assert_eq!(fwd_kernel((128, 128), FwdTile::W8x16, "sm_90a"), None);
        assert_eq!(decode_kernel((64, 32), 1), "attn_decode_g1_d64_dv32");
        assert_eq!(decode_kernel((128, 128), 4), "attn_decode_d128_dv128");
        // the policy: the warpgroup tile for D = 128 on sm_90a; elsewhere 4 x 32, 8 x 32 from 32768
        // tokens; 8 x 16 for D = 64
        let tile = |b, t, d, dv, arch| fwd_tile(&AttnProblem::new(AttnSpec { dv, ..AttnSpec::new(b, t, 16, d) }).unwrap(), arch);
        if std::env::var("GLA_ATTN_FWD").is_err() {
            for t in [2048, 8192, 32768] {
                assert_eq!(tile(65536 / t, t, 128, 128, "sm_90a"), FwdTile::Wg2);
            }
            assert_eq!(tile(32, 2048, 128, 128, "sm_80"), FwdTile::W4x32);
            assert_eq!(tile(8, 8192, 128, 128, "sm_80"), FwdTile::W4x32);
            assert_eq!(tile(2, 32768, 128, 128, "sm_80"), FwdTile::W8x32);
            assert_eq!(tile(1, 40000, 64, 64, "sm_90a"), FwdTile::W8x16);
        }
        assert_eq!(fwd_kernel((64, 64), FwdTile::Wg2, "sm_90a"), None);
        assert_eq!(fwd_kernel((128, 128), FwdTile::Wg2, "sm_80"), None);
        assert_eq!(fwd_kernel((128, 128), FwdTile::Wg2, "sm_90a").as_deref(), Some("attn_fwd_wg_d128_dv128"));
        assert_eq!(fwd_kernel((128, 128), FwdTile::W4x32, "sm_80").as_deref(), Some("attn_fwd_m2_d128_dv128"));
        assert_eq!(fwd_kernel((64, 64), FwdTile::W8x16, "sm_80").as_deref(), Some("attn_fwd_d64_dv64"));
    }

    #[test]
    fn causal_tiles_come_longest_first_and_skip_empty_sequences() {
        let spec = AttnSpec { cu_seqlens: Some(vec![0, 300, 300, 400]), ..AttnSpec::new(1, 400, 2, 64) };
        let p = AttnProblem::new(spec).unwrap();
        let (seq, q0) = query_tiles(&p, ATTN_BM);
        assert_eq!(seq, vec![0, 0, 0, 2]);
        assert_eq!(q0, vec![256, 128, 0, 0]);
        // sequence by sequence: the tiles in flight share their sequence's K / V
        let p2 = AttnProblem::new(AttnSpec::new(2, 256, 2, 64)).unwrap();
        assert_eq!(query_tiles(&p2, ATTN_BM), (vec![0, 0, 1, 1], vec![128, 0, 128, 0]));
    }

    #[test]
    fn kvq_units_cover_every_split_of_every_sequence() {
        let spec = AttnSpec { cu_seqlens: Some(vec![0, 300, 300, 1000]), ..AttnSpec::new(1, 1000, 2, 64) };
        let p = AttnProblem::new(spec).unwrap();
        let (seq, split) = kvq_units(&p, 3);
        assert_eq!(seq, vec![2, 2, 2, 0, 0, 0]);
        assert_eq!(split, vec![0, 1, 2, 0, 1, 2]);
        // the shapes of record: one wave of blocks, or whole waves
        let rec = |b, t| AttnProblem::new(AttnSpec::new(b, t, 16, 128)).unwrap();
        if std::env::var("GLA_ATTN_SPLITS").is_err() {
            assert_eq!(kvq_splits(&rec(32, 2048), 132), 1);
            assert_eq!(kvq_splits(&rec(8, 8192), 132), 1);
            assert_eq!(kvq_splits(&rec(2, 32768), 132), 4);
            assert_eq!(kvq_splits(&rec(1, 100), 132), 1);
            // one long sequence: the extra sums stay within 4 GiB (2 GiB each here: 3 splits)
            let long = AttnProblem::new(AttnSpec::new(1, 1 << 17, 32, 128)).unwrap();
            assert_eq!(kvq_splits(&long, 132), 3);
            let longer = AttnProblem::new(AttnSpec::new(1, 1 << 19, 32, 128)).unwrap();
            assert_eq!(kvq_splits(&longer, 132), 1);
        }
        // 228 KiB of shared memory per H100 / H200 SM, 1 KiB reserved per block
        assert!(kvq_smem((128, 128), BwdTile::W8) + 1024 <= 228 * 1024);
        assert_eq!(kvq_smem((128, 128), BwdTile::Wg2), 133_120);
        assert_eq!(DQ_WG_SMEM, 198_656);
        assert_eq!(bwd_kernel((64, 64), BwdTile::Wg2, "sm_90a"), None);
        assert_eq!(bwd_kernel((128, 128), BwdTile::Wg2, "sm_80"), None);
        assert_eq!(bwd_kernel((128, 128), BwdTile::Wg2, "sm_90a").as_deref(), Some("attn_bwd_kv_wg_d128_dv128"));
        assert_eq!(bwd_kernel((64, 32), BwdTile::W8, "sm_90a").as_deref(), Some("attn_bwd_kvq_d64_dv32"));
        // every entry the policy can name has a kernel source
        for dims in [(64, 32), (64, 64), (128, 128)] {
            for t in BwdTile::ALL {
                if let Some(name) = bwd_kernel(dims, t, "sm_90a") {
                    assert!(crate::kernels::source_of(&name).is_some(), "{name}");
                }
            }
            for t in FwdTile::ALL {
                if let Some(name) = fwd_kernel(dims, t, "sm_90a") {
                    assert!(crate::kernels::source_of(&name).is_some(), "{name}");
                }
            }
        }
        assert!(crate::kernels::source_of("attn_bwd_dq_wg_d128_dv128").is_some());
    }

    #[test]
    fn decode_splits_fill_the_gpu_and_cover_the_cache() {
        for (n, hk, s) in [(1, 16, 32768), (16, 16, 2048), (1, 1, 7), (64, 8, 100)] {
            let (splits, chunk) = decode_split(n, hk, s, 132);
            assert!(splits * chunk >= s && (splits - 1) * chunk < s, "{n} {hk} {s}");
            assert_eq!(chunk % 16, 0);
        }
        assert!(decode_split(1, 16, 32768, 132).0 >= 64);
    }
}
