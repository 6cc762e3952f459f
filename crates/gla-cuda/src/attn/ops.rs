//! Typed launchers of softmax attention over device buffers (bf16 storage held as `u16`, lse and
//! the backward's row dots f32): the forward ([`attn_fwd`]), the backward ([`attn_bwd_ws`] over
//! caller-held buffers, [`attn_bwd`] allocating them), and the decode step over a KV cache
//! ([`AttnKvCache`]: append, split attention, combine). Each checks the buffer lengths against
//! the problem (a wrong length is an error, never an out-of-bounds launch) and takes its kernels,
//! tiles and launch shapes from [`crate::dispatch::attn`].

use cudarc::driver::CudaSlice;
use gla_core::{AttnCacheLayout, AttnProblem};

use crate::dispatch::attn as da;
use crate::error::{Error, Result};
use crate::ops::{check_len, unsupported};
use crate::runtime::Cuda;

const L2E: f64 = std::f64::consts::LOG2_E;

/// A workspace holds at least `least` elements (one sized for another kernel may be larger).
fn check_at_least(op: &'static str, tensor: &'static str, least: usize, got: usize) -> Result<()> {
    if got >= least {
        Ok(())
    } else {
        Err(Error::Op(gla_core::Error::ShapeMismatch { op, tensor, expected: format!("at least {least} elements"), numel: least, got }))
    }
}

/// The device-side description of an [`AttnProblem`]: the sequence bounds and the tile tables
/// ([`da::query_tiles`], [`da::kvq_units`]) on the device, the backward's split count ([`da::kvq_splits`] for the device's SMs), the kernels' head dims, the
/// problem.
#[derive(Debug)]
pub struct DevAttnProblem {
    /// Sequence row offsets `[N+1]` (i64).
    pub bounds: CudaSlice<i64>,
    tile_seq: CudaSlice<i32>,
    tile_q0: CudaSlice<i32>,
    tile2_seq: CudaSlice<i32>,
    tile2_q0: CudaSlice<i32>,
    unit_seq: CudaSlice<i32>,
    unit_split: CudaSlice<i32>,
    n_tiles: usize,
    n_tiles2: usize,
    n_units: usize,
    splits: usize,
    dims: (usize, usize),
    /// The host problem.
    pub problem: AttnProblem,
}

impl DevAttnProblem {
    /// Uploads the bounds and tile tables of `p`.
    ///
    /// # Errors
    /// [`Error::Op`] (`Unsupported`) for head dims no kernel runs or more tiles than a grid
    /// holds; driver errors.
    pub fn new(cuda: &Cuda, p: &AttnProblem) -> Result<Self> {
        let dims = da::attn_dims(p.d(), p.dv()).map_err(unsupported)?;
        let first = if p.n() > 0 { p.seq(0).start } else { 0 };
        let b: Vec<i64> = std::iter::once(first).chain((0..p.n()).map(|n| p.seq(n).end)).map(|r| r as i64).collect();
        let (ts, tq) = da::query_tiles(p, da::ATTN_BM);
        let (ts2, tq2) = da::query_tiles(p, da::FwdTile::W8x32.rows());
        let splits = da::kvq_splits(p, cuda.sm_count());
        let (us, usp) = da::kvq_units(p, splits);
        let most = ts.len().max(us.len());
        if most > da::MAX_GRID_YZ {
            return Err(unsupported(format!("attention: {most} tiles exceed the grid's y limit")));
        }
        let up = |x: Vec<i32>, what: &str| -> Result<CudaSlice<i32>> { cuda.upload(if x.is_empty() { &[0] } else { &x[..] }, what) };
        Ok(Self {
            bounds: cuda.upload(&b, "attn sequence bounds")?,
            n_tiles: ts.len(),
            n_tiles2: ts2.len(),
            n_units: us.len(),
            splits,
            tile_seq: up(ts, "attn query tiles")?,
            tile_q0: up(tq, "attn query tile starts")?,
            tile2_seq: up(ts2, "attn 256-row query tiles")?,
            tile2_q0: up(tq2, "attn 256-row query tile starts")?,
            unit_seq: up(us, "attn backward units")?,
            unit_split: up(usp, "attn backward unit splits")?,
            dims,
            problem: p.clone(),
        })
    }
}

/// Inputs of an attention launch, on the device, bf16 (layouts of [`gla_core::AttnInputs`]).
#[derive(Debug, Clone, Copy)]
pub struct AttnDevInputs<'a> {
    /// `[B,T,H,D]`
    pub q: &'a CudaSlice<u16>,
    /// `[B,T,H_KV,D]`
    pub k: &'a CudaSlice<u16>,
    /// `[B,T,H_KV,DV]`
    pub v: &'a CudaSlice<u16>,
}

fn check_inputs(op: &'static str, p: &AttnProblem, x: &AttnDevInputs<'_>) -> Result<()> {
    check_len(op, "q", p.q_len(), x.q.len())?;
    check_len(op, "k", p.k_len(), x.k.len())?;
    check_len(op, "v", p.v_len(), x.v.len())
}

/// The scalar arguments every launch shares: (H, H_KV, D, DV, causal, window (0: none), scale *
/// log2(e), scale). A window is passed as at most the longest sequence's length (the same mask:
/// a row sees every key before it either way), so the kernels' key + window sums stay in i32.
fn scalars(p: &AttnProblem) -> (i32, i32, i32, i32, i32, i32, f32, f32) {
    let longest = (0..p.n()).map(|n| p.seq(n).len()).max().unwrap_or(0).max(1);
    let w = p.window().map_or(0, |w| w.min(longest).min(i32::MAX as usize) as i32);
    (p.h() as i32, p.h_kv() as i32, p.d() as i32, p.dv() as i32, i32::from(p.causal()), w, (p.scale() * L2E) as f32, p.scale() as f32)
}

/// The forward (`attn_fwd_*`): `o [B,T,H,DV]` bf16 and `lse [B,T,H]` f32 (natural log) of every
/// row of a sequence (rows past the last sequence are not written), on the dispatch policy's
/// tile ([`da::fwd_tile`]).
///
/// # Errors
/// [`Error::Op`] for wrong lengths; launch or compile errors.
pub fn attn_fwd(cuda: &Cuda, dp: &DevAttnProblem, x: &AttnDevInputs<'_>, o: &mut CudaSlice<u16>, lse: &mut CudaSlice<f32>) -> Result<()> {
    attn_fwd_tile(cuda, dp, x, o, lse, da::fwd_tile(&dp.problem, cuda.arch()))
}

/// [`attn_fwd`] on a given warp split of the tile (the benchmark times both).
///
/// # Errors
/// As [`attn_fwd`]; [`Error::Op`] (`Unsupported`) where `tile` has no kernel for the head dims.
pub fn attn_fwd_tile(
    cuda: &Cuda,
    dp: &DevAttnProblem,
    x: &AttnDevInputs<'_>,
    o: &mut CudaSlice<u16>,
    lse: &mut CudaSlice<f32>,
    tile: da::FwdTile,
) -> Result<()> {
    let op = "attn_fwd";
    let p = &dp.problem;
    check_inputs(op, p, x)?;
    check_len(op, "o", p.o_len(), o.len())?;
    check_len(op, "lse", p.lse_len(), lse.len())?;
    let name = da::fwd_kernel(dp.dims, tile, cuda.arch())
        .ok_or_else(|| unsupported(format!("{op}: no {tile:?} kernel for (D, DV) = {:?} on {}", dp.dims, cuda.arch())))?;
    if dp.n_tiles == 0 {
        return Ok(());
    }
    let (h, hk, d, dv, causal, w, sl2, _) = scalars(p);
    // the tile table of the tile's row count
    let (n, seq, q0) =
        if tile.rows() == da::ATTN_BM { (dp.n_tiles, &dp.tile_seq, &dp.tile_q0) } else { (dp.n_tiles2, &dp.tile2_seq, &dp.tile2_q0) };
    let cfg = da::fwd_cfg(p.h(), n, da::fwd_smem(dp.dims, tile), tile);
    // SAFETY: the arguments match attn_fwd_*'s signature; every length was checked against the
    // problem, the tile table holds n entries of the problem's sequences in tiles of the
    // kernel's rows
    unsafe { cuda.launch(&name, cfg, &[x.q, x.k, x.v, o, lse, &dp.bounds, seq, q0, &h, &hk, &d, &dv, &causal, &w, &sl2]) }
}

/// Whether [`DevAttnProblem`]'s head dims have a kernel for `tile` on `cuda`'s architecture
/// ([`da::fwd_kernel`]).
pub fn has_fwd_tile(cuda: &Cuda, dp: &DevAttnProblem, tile: da::FwdTile) -> bool {
    da::fwd_kernel(dp.dims, tile, cuda.arch()).is_some()
}

/// Whether [`DevAttnProblem`]'s head dims have a backward kernel for `tile` on `cuda`'s
/// architecture ([`da::bwd_kernel`]).
pub fn has_bwd_tile(cuda: &Cuda, dp: &DevAttnProblem, tile: da::BwdTile) -> bool {
    da::bwd_kernel(dp.dims, tile, cuda.arch()).is_some()
}

/// Gradients of an attention backward, bf16 on the device, with the backward's dQ workspace.
#[derive(Debug)]
pub struct AttnDevGrads {
    /// `[B,T,H,D]`
    pub dq: CudaSlice<u16>,
    /// `[B,T,H_KV,D]`, summed over each group's query heads.
    pub dk: CudaSlice<u16>,
    /// `[B,T,H_KV,DV]`, summed over each group's query heads.
    pub dv: CudaSlice<u16>,
    /// `[splits][B,T,H,D]` f32 ([`AttnDevGrads::acc_len`]): the 8-warp backward's dQ sums
    /// (any contents; each backward zeroes what it adds to); one element where the backward
    /// runs the warpgroup kernels, which keep none.
    pub dq_acc: CudaSlice<f32>,
}

impl AttnDevGrads {
    /// Zeroed gradient buffers for `p` (rows past the last sequence stay 0) and the workspace of
    /// the backward the dispatch policy picks on `cuda` ([`da::bwd_tile`]).
    ///
    /// # Errors
    /// Driver errors.
    pub fn alloc(cuda: &Cuda, dp: &DevAttnProblem) -> Result<Self> {
        Self::alloc_for(cuda, dp, da::bwd_tile(&dp.problem, cuda.arch()))
    }
    /// [`AttnDevGrads::alloc`] with the workspace of the backward on `tile`.
    ///
    /// # Errors
    /// Driver errors.
    pub fn alloc_for(cuda: &Cuda, dp: &DevAttnProblem, tile: da::BwdTile) -> Result<Self> {
        let p = &dp.problem;
        Ok(Self {
            dq: cuda.alloc_zeros(p.q_len().max(1), "attn dq")?,
            dk: cuda.alloc_zeros(p.k_len().max(1), "attn dk")?,
            dv: cuda.alloc_zeros(p.v_len().max(1), "attn dv")?,
            dq_acc: cuda.alloc_zeros(Self::acc_len(dp, tile), "attn dq sums")?,
        })
    }
    /// Elements of [`AttnDevGrads::dq_acc`] for `dp` on `tile`: one `[B,T,H,D]` sum per split of
    /// the 8-warp backward (the count [`DevAttnProblem::new`] chose, [`da::kvq_splits`]); 1 for
    /// the warpgroup kernels.
    pub fn acc_len(dp: &DevAttnProblem, tile: da::BwdTile) -> usize {
        match tile {
            da::BwdTile::W8 => dp.splits * dp.problem.q_len().max(1),
            da::BwdTile::Wg2 => 1,
        }
    }
}

/// The backward over caller-held buffers: `attn_bwd_pre` (`delta [B,T,H]` f32 = rowsum(dO * O),
/// the workspace), then on the dispatch policy's kernels ([`da::bwd_tile`]) either
/// `attn_bwd_kvq_*` (dk, dv per key tile over the group's heads in order, dQ parts added into the
/// key tile's split's sum in `g.dq_acc`) and `attn_bwd_dq_sum` (dq = scale * the sum of the
/// splits' sums), or `attn_bwd_kv_wg_*` (dk, dv) and `attn_bwd_dq_wg_*` (dq per query tile).
/// `o` and `lse` are the forward's. Deterministic (every dQ sum element has one adding thread;
/// the warpgroup kernels add nothing across blocks: the same bits on every run).
///
/// # Errors
/// [`Error::Op`] for wrong lengths (the gradients must hold at least the problem's elements);
/// launch or compile errors.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_ws(
    cuda: &Cuda,
    dp: &DevAttnProblem,
    x: &AttnDevInputs<'_>,
    o: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    g: &mut AttnDevGrads,
) -> Result<()> {
    attn_bwd_parts(cuda, dp, x, o, lse, d_o, delta, g, BwdParts::ALL)
}

/// Which launches of the backward [`attn_bwd_parts`] runs (the benchmark times them one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BwdParts {
    /// `attn_bwd_pre` (delta).
    pub pre: bool,
    /// The gradients (dq, dk, dv; reads delta): `attn_bwd_kvq_*` and `attn_bwd_dq_sum`, or
    /// `attn_bwd_kv_wg_*` and `attn_bwd_dq_wg_*` ([`da::BwdTile`]).
    pub kvq: bool,
}

impl BwdParts {
    /// The whole backward.
    pub const ALL: BwdParts = BwdParts { pre: true, kvq: true };
}

/// The launches of [`attn_bwd_ws`] that `parts` selects, in its order. A part that reads delta
/// without `pre` reads what an earlier call left in `delta`.
///
/// # Errors
/// As [`attn_bwd_ws`].
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_parts(
    cuda: &Cuda,
    dp: &DevAttnProblem,
    x: &AttnDevInputs<'_>,
    o: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    g: &mut AttnDevGrads,
    parts: BwdParts,
) -> Result<()> {
    attn_bwd_tile(cuda, dp, x, o, lse, d_o, delta, g, parts, da::bwd_tile(&dp.problem, cuda.arch()))
}

/// [`attn_bwd_parts`] on a given dK / dV / dQ kernel (the benchmark times each).
///
/// # Errors
/// As [`attn_bwd_ws`]; [`Error::Op`] (`Unsupported`) where `tile` has no kernel for the head dims
/// on this device.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_tile(
    cuda: &Cuda,
    dp: &DevAttnProblem,
    x: &AttnDevInputs<'_>,
    o: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    g: &mut AttnDevGrads,
    parts: BwdParts,
    tile: da::BwdTile,
) -> Result<()> {
    let op = "attn_bwd";
    let p = &dp.problem;
    check_inputs(op, p, x)?;
    check_len(op, "o", p.o_len(), o.len())?;
    check_len(op, "do", p.o_len(), d_o.len())?;
    check_len(op, "lse", p.lse_len(), lse.len())?;
    check_len(op, "delta", p.lse_len(), delta.len())?;
    check_len(op, "dq", p.q_len().max(1), g.dq.len())?;
    check_len(op, "dk", p.k_len().max(1), g.dk.len())?;
    check_len(op, "dv", p.v_len().max(1), g.dv.len())?;
    check_at_least(op, "dq_acc", AttnDevGrads::acc_len(dp, tile), g.dq_acc.len())?;
    // the kernel is looked up before anything runs (an unsupported tile leaves delta untouched)
    let name = da::bwd_kernel(dp.dims, tile, cuda.arch())
        .ok_or_else(|| unsupported(format!("{op}: no {tile:?} kernel for (D, DV) = {:?} on {}", dp.dims, cuda.arch())))?;
    if p.d() != dp.dims.0 {
        return Err(unsupported(format!("{op}: the backward kernel takes D = DP; D = {}, DP = {}", p.d(), dp.dims.0)));
    }
    if dp.n_tiles == 0 {
        return Ok(());
    }
    let (h, hk, d, dv, causal, w, sl2, scale) = scalars(p);
    let nrh = p.lse_len() as i64;
    // SAFETY: each launch's arguments match its kernel's signature; every length was checked
    // against the problem (dq_acc against the splits the units were cut for, where the kernels
    // use it); delta is written by attn_bwd_pre before its readers, the dQ sums by attn_bwd_kvq
    // before attn_bwd_dq_sum (one stream)
    unsafe {
        if parts.pre {
            cuda.launch("attn_bwd_pre", da::pre_cfg(p.lse_len()), &[o, d_o, &*delta, &nrh, &dv])?;
        }
        if parts.kvq {
            let (stride, splits) = (p.q_len() as i64, dp.splits as i32);
            let cfg = da::kvq_cfg(p.h_kv(), dp.n_units, da::kvq_smem(dp.dims, tile));
            let units = (&dp.bounds, &dp.unit_seq, &dp.unit_split, &splits);
            if tile == da::BwdTile::Wg2 {
                // dk, dv per key tile, then dq per query tile of the forward's 128-row table: no
                // dQ sums
                cuda.launch(
                    &name,
                    cfg,
                    &[
                        x.q, x.k, x.v, d_o, lse, &*delta, &g.dk, &g.dv, units.0, units.1, units.2, units.3, &h, &hk, &d, &dv, &causal, &w,
                        &sl2, &scale,
                    ],
                )?;
                let (seq, q0) = (&dp.tile_seq, &dp.tile_q0);
                return cuda.launch(
                    "attn_bwd_dq_wg_d128_dv128",
                    da::dq_wg_cfg(p.h(), dp.n_tiles),
                    &[x.q, x.k, x.v, d_o, lse, &*delta, &g.dq, &dp.bounds, seq, q0, &h, &hk, &d, &dv, &causal, &w, &sl2, &scale],
                );
            }
            cuda.launch(
                &name,
                cfg,
                &[
                    x.q, x.k, x.v, d_o, lse, &*delta, &g.dk, &g.dv, &g.dq_acc, &stride, units.0, units.1, units.2, units.3, &h, &hk, &d,
                    &dv, &causal, &w, &sl2, &scale,
                ],
            )?;
            // the sequences' rows: bounds[0] .. bounds[N]
            let hd = p.h() * p.d();
            let (r0, r1) = (p.seq(0).start, p.seq(p.n() - 1).end);
            let (e0, e1) = ((r0 * hd) as i64, (r1 * hd) as i64);
            cuda.launch("attn_bwd_dq_sum", da::dq_sum_cfg((r1 - r0) * hd), &[&g.dq_acc, &g.dq, &e0, &e1, &stride, &splits, &scale])?;
        }
    }
    Ok(())
}

/// [`attn_bwd_ws`] with its workspace and gradients allocated.
///
/// # Errors
/// As [`attn_bwd_ws`].
pub fn attn_bwd(
    cuda: &Cuda,
    dp: &DevAttnProblem,
    x: &AttnDevInputs<'_>,
    o: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    d_o: &CudaSlice<u16>,
) -> Result<AttnDevGrads> {
    let p = &dp.problem;
    let mut g = AttnDevGrads::alloc(cuda, dp)?;
    let mut delta = cuda.alloc_zeros::<f32>(p.lse_len(), "attn delta")?;
    attn_bwd_ws(cuda, dp, x, o, lse, d_o, &mut delta, &mut g)?;
    Ok(g)
}

/// A KV cache on the device for the decode step (the contract is [`AttnCacheLayout`]) with the
/// step's split workspace: `k [N,S,H_KV,D]`, `v [N,S,H_KV,DV]` bf16, zeroed at creation, and the
/// per-split partial outputs. A step allocates nothing. One cache serves one stream's steps in
/// order.
#[derive(Debug)]
pub struct AttnKvCache {
    layout: AttnCacheLayout,
    dims: (usize, usize),
    /// `[N,S,H_KV,D]` bf16.
    pub k: CudaSlice<u16>,
    /// `[N,S,H_KV,DV]` bf16.
    pub v: CudaSlice<u16>,
    po: CudaSlice<f32>,
    pl: CudaSlice<f32>,
    splits: usize,
    chunk: usize,
}

impl AttnKvCache {
    /// An empty cache of `layout` on `cuda`, split for its SM count ([`da::decode_split`]).
    ///
    /// # Errors
    /// [`Error::Op`] (`Unsupported`) for head dims no kernel runs, a group of query heads above
    /// [`da::DECODE_MAX_GROUP`], or more sequences than a grid holds; driver errors.
    pub fn new(cuda: &Cuda, layout: AttnCacheLayout) -> Result<Self> {
        let dims = da::attn_dims(layout.d, layout.dv).map_err(unsupported)?;
        let group = layout.h / layout.h_kv;
        if group > da::DECODE_MAX_GROUP || !layout.h.is_multiple_of(layout.h_kv) {
            return Err(unsupported(format!(
                "attention decode: H / H_KV = {} / {} (the kernel holds at most {} query heads per kv head)",
                layout.h,
                layout.h_kv,
                da::DECODE_MAX_GROUP
            )));
        }
        if layout.n > da::MAX_GRID_YZ || layout.h_kv > da::MAX_GRID_YZ || layout.slots > i32::MAX as usize {
            return Err(unsupported(format!(
                "attention decode: N = {}, H_KV = {}, S = {} exceed the grid",
                layout.n, layout.h_kv, layout.slots
            )));
        }
        let (splits, chunk) = da::decode_split(layout.n, layout.h_kv, layout.slots, cuda.sm_count());
        let nh = layout.n * layout.h;
        Ok(Self {
            layout,
            dims,
            k: cuda.alloc_zeros(layout.k_len(), "attn k cache")?,
            v: cuda.alloc_zeros(layout.v_len(), "attn v cache")?,
            po: cuda.alloc_zeros(nh * splits * layout.dv, "attn decode partial o")?,
            pl: cuda.alloc_zeros(nh * splits, "attn decode partial lse")?,
            splits,
            chunk,
        })
    }
    /// The layout.
    pub fn layout(&self) -> &AttnCacheLayout {
        &self.layout
    }
    /// The decode split: (splits per sequence, slots per split).
    pub fn split(&self) -> (usize, usize) {
        (self.splits, self.chunk)
    }

    /// Writes the current token's `k_new [N,H_KV,D]`, `v_new [N,H_KV,DV]` at slot `(len - 1) % S`
    /// of every sequence with `lens[n] > 0` (`attn_append`).
    ///
    /// # Errors
    /// [`Error::Op`] for wrong lengths; launch or compile errors.
    pub fn append(&mut self, cuda: &Cuda, lens: &CudaSlice<i32>, k_new: &CudaSlice<u16>, v_new: &CudaSlice<u16>) -> Result<()> {
        let op = "attn_append";
        let l = &self.layout;
        check_len(op, "lens", l.n, lens.len())?;
        check_len(op, "k", l.n * l.h_kv * l.d, k_new.len())?;
        check_len(op, "v", l.n * l.h_kv * l.dv, v_new.len())?;
        let (n, s, hk, d, dv) = (l.n as i32, l.slots as i32, l.h_kv as i32, l.d as i32, l.dv as i32);
        // SAFETY: the arguments match attn_append's signature; the cache holds N*S*H_KV*(D, DV)
        // elements (allocated from the layout), the new rows' lengths were checked
        unsafe {
            cuda.launch(
                "attn_append",
                da::flat_cfg(l.n * l.h_kv * (l.d + l.dv)),
                &[k_new, v_new, &self.k, &self.v, lens, &n, &s, &hk, &d, &dv],
            )
        }
    }

    /// Attention of `q [N,H,D]` over the tokens the cache holds (`min(lens[n], S)` per sequence):
    /// `o [N,H,DV]` bf16, `lse [N,H]` f32; idle sequences (`lens[n] == 0`) get `o = 0`,
    /// `lse = -inf` (`attn_decode_*`, then `attn_decode_combine`).
    ///
    /// # Errors
    /// [`Error::Op`] for wrong lengths; launch or compile errors.
    pub fn attend(
        &mut self,
        cuda: &Cuda,
        lens: &CudaSlice<i32>,
        q: &CudaSlice<u16>,
        o: &mut CudaSlice<u16>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let op = "attn_decode";
        let l = self.layout;
        check_len(op, "lens", l.n, lens.len())?;
        check_len(op, "q", l.n * l.h * l.d, q.len())?;
        check_len(op, "o", l.n * l.h * l.dv, o.len())?;
        check_len(op, "lse", l.n * l.h, lse.len())?;
        let (h, hk, s, chunk, splits, dv) = (l.h as i32, l.h_kv as i32, l.slots as i32, self.chunk as i32, self.splits as i32, l.dv as i32);
        let sl2 = (l.scale * L2E) as f32;
        // SAFETY: the arguments match attn_decode_* and attn_decode_combine's signatures; the
        // cache and the partials were allocated for this layout and split, the rest checked above
        unsafe {
            cuda.launch(
                &da::decode_kernel(self.dims, l.h / l.h_kv),
                da::decode_cfg(self.splits, l.h_kv, l.n),
                &[q, &self.k, &self.v, lens, &self.po, &self.pl, &h, &hk, &s, &chunk, &sl2],
            )?;
            cuda.launch("attn_decode_combine", da::combine_cfg(l.n * l.h, l.dv), &[&self.po, &self.pl, o, lse, &splits, &dv])
        }
    }

    /// One decode step: [`AttnKvCache::append`] then [`AttnKvCache::attend`].
    ///
    /// # Errors
    /// As those.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        cuda: &Cuda,
        lens: &CudaSlice<i32>,
        q: &CudaSlice<u16>,
        k_new: &CudaSlice<u16>,
        v_new: &CudaSlice<u16>,
        o: &mut CudaSlice<u16>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.append(cuda, lens, k_new, v_new)?;
        self.attend(cuda, lens, q, o, lse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gla_core::AttnSpec;

    #[test]
    fn a_window_beyond_every_sequence_is_passed_as_the_longest_one() {
        // k0 + BN - 1 + window must stay in i32 (att_kv_qtiles): a window near usize::MAX once
        // made the backward skip every query tile
        let spec = AttnSpec { window: Some(usize::MAX), cu_seqlens: Some(vec![0, 300, 300, 1000]), ..AttnSpec::new(1, 1000, 2, 64) };
        assert_eq!(scalars(&AttnProblem::new(spec).unwrap()).5, 700);
        let spec = AttnSpec { window: Some(40), ..AttnSpec::new(2, 100, 2, 64) };
        assert_eq!(scalars(&AttnProblem::new(spec).unwrap()).5, 40);
        assert_eq!(scalars(&AttnProblem::new(AttnSpec::new(2, 100, 2, 64)).unwrap()).5, 0);
    }
}
