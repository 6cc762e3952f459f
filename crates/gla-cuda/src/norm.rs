//! The norms' launches (`kernels/nn/norm.cu`): RMSNorm's backward and the gated per-head norm
//! (fla's `FusedRMSNormGated`), on the lane-vectorized kernels (`*_v{NG}`) where the row width
//! and buffers allow them, on the per-column kernels otherwise; and [`rms_norm`], [`gated_norm`],
//! one forward and backward each on host data, through which gla-check holds both paths against
//! an f64 reference (`nn/norm-*` rows).

use cudarc::driver::{CudaSlice, LaunchConfig};
use gla_core::dims::GateAct;

use crate::backend::{col_finalize, col_gy, cols, ptr, rows_warp, THREADS};
use crate::conv::NnPath as Path;
use crate::error::Result;
use crate::ops::check_lens;
use crate::runtime::Cuda;

/// Rows one block of the vectorized backward covers before the grid strides (8 warps x 8).
const BLOCK_ROWS: usize = 64;
/// Most blocks (partial rows) of the vectorized backward.
const MAX_PART_ROWS: usize = 256;
/// Widest row of the vectorized kernels (NG = 8 groups of 128 columns).
const MAX_WIDTH: usize = 1024;

/// Rows of partial sums a norm's dw needs over `rows` rows (the larger of the two paths').
pub(crate) fn part_rows(rows: usize) -> usize {
    col_gy(rows).max(vec_part_rows(rows))
}

fn vec_part_rows(rows: usize) -> usize {
    rows.div_ceil(BLOCK_ROWS).clamp(1, MAX_PART_ROWS)
}

/// The vectorized entry's groups of 128 columns for a row of `width`, where it applies.
fn groups(path: Path, width: usize, ptrs: &[u64]) -> Option<usize> {
    let ok =
        path == Path::Auto && width > 0 && width.is_multiple_of(128) && width <= MAX_WIDTH && ptrs.iter().all(|p| p.is_multiple_of(16));
    ok.then(|| (width / 128).next_power_of_two())
}

fn part_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (vec_part_rows(rows) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// The output gate's activation as the kernels take it (`gate_actf_` in kernels/nn/common.cuh:
/// 0 swish, 1 sigmoid).
pub(crate) fn gate_code(act: GateAct) -> i32 {
    match act {
        GateAct::Swish => 0,
        GateAct::Sigmoid => 1,
    }
}

/// RMSNorm's backward over `n` rows of `d`: `dx (+)= ...` (f32; added to with `acc`) and
/// `gw += dw` (f32 `[d]`) through `part` (at least [`part_rows`]`(n) * d` f32). Device addresses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_bwd(
    cuda: &Cuda,
    dx: u64,
    part: u64,
    gw: u64,
    dy: u64,
    x: u64,
    rstd: u64,
    w: u64,
    n: usize,
    d: usize,
    acc: bool,
    path: Path,
) -> Result<()> {
    let (ni, di, ai) = (n as i64, d as i32, i32::from(acc));
    if let Some(ng) = groups(path, d, &[dx, dy, x, w]) {
        // SAFETY: the arguments match rmsnorm_bwd_v{NG}'s; dx, dy, x hold n x d f32 and w d,
        // 16-byte aligned with d a multiple of 128 up to NG x 128 (checked); part one row of d per
        // block
        unsafe { cuda.launch(&format!("rmsnorm_bwd_v{ng}"), part_cfg(n), &[&dx, &part, &dy, &x, &rstd, &w, &ni, &di, &ai])? };
        return col_finalize(cuda, gw, part, vec_part_rows(n), d);
    }
    // SAFETY: the arguments match rmsnorm_bwd_dx's and rmsnorm_bwd_dw's; part holds col_gy(n) rows
    unsafe {
        cuda.launch("rmsnorm_bwd_dx", rows_warp(n).config(cuda), &[&dx, &dy, &x, &rstd, &w, &ni, &di, &ai])?;
        cuda.launch("rmsnorm_bwd_dw", cols(n, d), &[&part, &dy, &x, &rstd, &ni, &di])?;
    }
    col_finalize(cuda, gw, part, col_gy(n), d)
}

/// The gated norm's forward over `rows` rows of `v`: `y = o rstd w act(g)` (bf16; `g` 0: no
/// gate) and `rstd` (f32). Device addresses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_fwd(
    cuda: &Cuda,
    y: u64,
    rstd: u64,
    o: u64,
    g: u64,
    w: u64,
    rows: usize,
    v: usize,
    eps: f32,
    act: GateAct,
    path: Path,
) -> Result<()> {
    let (ri, vi, ac) = (rows as i64, v as i32, gate_code(act));
    let name = groups(path, v, &[y, o, g, w]).map_or_else(|| "gated_norm_fwd".to_string(), |ng| format!("gated_norm_fwd_v{ng}"));
    // SAFETY: the arguments match gated_norm_fwd's (and its vectorized entries', picked only
    // for aligned buffers and a width they hold); y, o, g hold rows x v bf16, rstd rows f32, w v
    // f32; grid-stride over the rows
    unsafe { cuda.launch(&name, rows_warp(rows).config(cuda), &[&y, &rstd, &o, &g, &w, &ri, &vi, &eps, &ac]) }
}

/// The gated norm's backward: `d_o` and `dg` (bf16, written; `g` 0: no gate and `dg` unused)
/// and `gw += dw` through `part` (at least [`part_rows`]`(rows) * v` f32). Device addresses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_bwd(
    cuda: &Cuda,
    d_o: u64,
    dg: u64,
    part: u64,
    gw: u64,
    dy: u64,
    o: u64,
    g: u64,
    rstd: u64,
    w: u64,
    rows: usize,
    v: usize,
    act: GateAct,
    path: Path,
) -> Result<()> {
    let (ri, vi, ac) = (rows as i64, v as i32, gate_code(act));
    if let Some(ng) = groups(path, v, &[d_o, dg, dy, o, g, w]) {
        // SAFETY: the arguments match gated_norm_bwd_v{NG}'s; d_o, dg, o, g hold rows x v bf16,
        // dy rows x v f32, 16-byte aligned with v a multiple of 128 up to NG x 128 (checked);
        // part one row of v per block
        unsafe {
            cuda.launch(&format!("gated_norm_bwd_v{ng}"), part_cfg(rows), &[&d_o, &dg, &part, &dy, &o, &g, &rstd, &w, &ri, &vi, &ac])?
        };
        return col_finalize(cuda, gw, part, vec_part_rows(rows), v);
    }
    // SAFETY: the arguments match gated_norm_bwd_dx's and gated_norm_bwd_dw's; part holds
    // col_gy(rows) rows
    unsafe {
        cuda.launch("gated_norm_bwd_dx", rows_warp(rows).config(cuda), &[&d_o, &dg, &dy, &o, &g, &rstd, &w, &ri, &vi, &ac])?;
        cuda.launch("gated_norm_bwd_dw", cols(rows, v), &[&part, &dy, &o, &g, &rstd, &ri, &vi, &ac])?;
    }
    col_finalize(cuda, gw, part, col_gy(rows), v)
}

/// What [`rms_norm`] returns.
#[derive(Clone, Debug)]
pub struct RmsRun {
    /// The forward's output (bf16 bits).
    pub y: Vec<u16>,
    /// The input's gradient: `dx0 +` the backward's.
    pub dx: Vec<f32>,
    /// The weight's gradient.
    pub dw: Vec<f32>,
}

/// What [`gated_norm`] returns.
#[derive(Clone, Debug)]
pub struct GatedRun {
    /// The forward's output (bf16 bits).
    pub y: Vec<u16>,
    /// The output's gradient (bf16 bits).
    pub d_o: Vec<u16>,
    /// The gate's gradient (bf16 bits; zeros without a gate).
    pub dg: Vec<u16>,
    /// The weight's gradient.
    pub dw: Vec<f32>,
}

/// RMSNorm forward and backward on host data, the backward on `path`: `x`, `dy`, `dx0` f32
/// `[n, d]` (the backward adds to `dx0`), `w` f32 `[d]`.
///
/// # Errors
/// [`crate::Error::Op`] for a buffer of the wrong length; device errors.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(cuda: &Cuda, x: &[f32], w: &[f32], dy: &[f32], dx0: &[f32], n: usize, d: usize, eps: f32, path: Path) -> Result<RmsRun> {
    let shape = format!("[N, D] = [{n}, {d}]");
    check_lens("rms norm", &[("x", x.len(), n * d), ("dy", dy.len(), n * d), ("dx", dx0.len(), n * d), ("w", w.len(), d)], &shape)?;
    let (xd, wd, ddy, dx) =
        (cuda.upload(x, "norm x")?, cuda.upload(w, "norm w")?, cuda.upload(dy, "norm dy")?, cuda.upload(dx0, "norm dx")?);
    let y = cuda.alloc_zeros::<u16>(n * d, "norm y")?;
    let rstd = cuda.alloc_zeros::<f32>(n, "norm rstd")?;
    let gw = cuda.alloc_zeros::<f32>(d, "norm dw")?;
    let part = cuda.alloc_zeros::<f32>(part_rows(n) * d, "norm partial sums")?;
    let p = |b: &CudaSlice<f32>| ptr(cuda, b);
    let (ni, di) = (n as i64, d as i32);
    let (yp, rp, xp, wp) = (ptr(cuda, &y), p(&rstd), p(&xd), p(&wd));
    // SAFETY: rmsnorm_fwd's arguments; y, x hold n x d, rstd n, w d
    unsafe { cuda.launch("rmsnorm_fwd", rows_warp(n).config(cuda), &[&yp, &rp, &xp, &wp, &ni, &di, &eps])? };
    rms_bwd(cuda, p(&dx), p(&part), p(&gw), p(&ddy), xp, rp, wp, n, d, true, path)?;
    cuda.sync()?;
    Ok(RmsRun { y: cuda.download(&y, "norm y")?, dx: cuda.download(&dx, "norm dx")?, dw: cuda.download(&gw, "norm dw")? })
}

/// The gated norm's forward and backward on host data, both on `path`: `o`, `g` (optional) bf16
/// bits and `dy` f32 `[rows, v]`, `w` f32 `[v]`.
///
/// # Errors
/// [`crate::Error::Op`] for a buffer of the wrong length; device errors.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm(
    cuda: &Cuda,
    o: &[u16],
    g: Option<&[u16]>,
    w: &[f32],
    dy: &[f32],
    (rows, v): (usize, usize),
    eps: f32,
    act: GateAct,
    path: Path,
) -> Result<GatedRun> {
    let shape = format!("[rows, V] = [{rows}, {v}]");
    let gl = g.map_or(rows * v, <[u16]>::len);
    check_lens("gated norm", &[("o", o.len(), rows * v), ("g", gl, rows * v), ("dy", dy.len(), rows * v), ("w", w.len(), v)], &shape)?;
    let (d_o_in, dwv, ddy) = (cuda.upload(o, "norm o")?, cuda.upload(w, "norm w")?, cuda.upload(dy, "norm dy")?);
    let dgate = g.map(|g| cuda.upload(g, "norm g")).transpose()?;
    let (y, d_o, dg) = (
        cuda.alloc_zeros::<u16>(rows * v, "norm y")?,
        cuda.alloc_zeros::<u16>(rows * v, "norm do")?,
        cuda.alloc_zeros::<u16>(rows * v, "norm dg")?,
    );
    let rstd = cuda.alloc_zeros::<f32>(rows, "norm rstd")?;
    let gw = cuda.alloc_zeros::<f32>(v, "norm dw")?;
    let part = cuda.alloc_zeros::<f32>(part_rows(rows) * v, "norm partial sums")?;
    let gp = dgate.as_ref().map_or(0, |b| ptr(cuda, b));
    let (op, wp, rp) = (ptr(cuda, &d_o_in), ptr(cuda, &dwv), ptr(cuda, &rstd));
    gated_fwd(cuda, ptr(cuda, &y), rp, op, gp, wp, rows, v, eps, act, path)?;
    let dgp = if g.is_some() { ptr(cuda, &dg) } else { 0 };
    gated_bwd(cuda, ptr(cuda, &d_o), dgp, ptr(cuda, &part), ptr(cuda, &gw), ptr(cuda, &ddy), op, gp, rp, wp, rows, v, act, path)?;
    cuda.sync()?;
    Ok(GatedRun {
        y: cuda.download(&y, "norm y")?,
        d_o: cuda.download(&d_o, "norm do")?,
        dg: cuda.download(&dg, "norm dg")?,
        dw: cuda.download(&gw, "norm dw")?,
    })
}
