//! The causal short convolution's launches (`kernels/nn/conv.cu`, fla's `ShortConvolution`):
//! the lane-vectorized kernels (`conv_fwd_w{W}`, `conv_bwd_w{W}`) where the channels and buffers
//! allow them, the per-element kernels otherwise; and [`short_conv`], one forward and backward on
//! host data, through which gla-check holds both against an f64 reference (`nn/conv-*` rows).

use cudarc::driver::LaunchConfig;

use crate::backend::{col_finalize, col_gy, flat, ptr, MAX_CONV, THREADS};
use crate::error::{Error, Result};
use crate::ops::check_lens;
use crate::runtime::Cuda;

/// Rows one block of the vectorized kernels covers: `CONV_WARPS x CONV_RS` in conv.cu.
const BLOCK_ROWS: usize = 128;
/// Channels one block of the vectorized kernels covers (32 lanes x CONV_CPL = 4).
const BLOCK_CHANNELS: usize = 128;
/// Most partial rows of the vectorized backward's dw: beyond it the blocks stride over the rows.
const MAX_PART_ROWS: usize = 256;

/// Which kernels run a short convolution or a norm ([`crate::norm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NnPath {
    /// The lane-vectorized kernels where the width and the buffers' alignment allow them, else
    /// the per-element ones (the model's launches).
    Auto,
    /// The per-element kernels: the reference the vectorized ones are checked against.
    Reference,
}

/// One convolution's shape: `b` sequences of `t` rows, `c` channels, `width` taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Sequences.
    pub b: usize,
    /// Rows per sequence.
    pub t: usize,
    /// Channels.
    pub c: usize,
    /// Taps (1 ..= 8).
    pub width: usize,
}

/// Rows of partial sums the backward's dw needs for `n` rows (the larger of the two paths').
pub(crate) fn part_rows(n: usize) -> usize {
    col_gy(n).max(vec_part_rows(n))
}

fn vec_part_rows(n: usize) -> usize {
    n.div_ceil(BLOCK_ROWS).clamp(1, MAX_PART_ROWS)
}

fn vectorized(path: NnPath, c: usize, ptrs: &[u64]) -> bool {
    path == NnPath::Auto && c.is_multiple_of(4) && ptrs.iter().all(|p| p.is_multiple_of(16))
}

fn vec_cfg(c: usize, gy: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.div_ceil(BLOCK_CHANNELS).max(1) as u32, gy.clamp(1, 65_535) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `y = silu(conv(x))` (or `conv(x)` without SiLU) over `[b * t, c]` bf16; `w` the f32 `[c,
/// width]` taps; `cache` 0 or fla's conv state `[b, c, width]` f32 (positions before each
/// sequence). Device addresses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fwd(cuda: &Cuda, y: u64, x: u64, w: u64, cache: u64, s: ConvShape, silu: bool, path: NnPath) -> Result<()> {
    let n = s.b * s.t;
    let (ni, ti, ci, wi, si) = (n as i64, s.t as i32, s.c as i32, s.width as i32, i32::from(silu));
    if vectorized(path, s.c, &[y, x]) {
        let name = format!("conv_fwd_w{}", s.width);
        // SAFETY: the arguments match conv_fwd_w{W}'s; y, x hold n x c bf16, 16-byte aligned with
        // c % 4 == 0 (checked), w c x width f32, cache (when set) b x c x width f32
        unsafe { cuda.launch(&name, vec_cfg(s.c, n.div_ceil(BLOCK_ROWS)), &[&y, &x, &w, &cache, &ni, &ti, &ci, &si]) }
    } else {
        // SAFETY: the arguments match conv_fwd's; sizes as above; a grid-stride kernel
        unsafe { cuda.launch("conv_fwd", flat(n * s.c).config(cuda), &[&y, &x, &w, &cache, &ni, &ti, &ci, &wi, &si]) }
    }
}

/// The backward of [`fwd`] (no cache) from `dy` (f32): `dx` (bf16, written) and `gw += dw` (f32
/// `[c, width]`), through `part` (at least [`part_rows`]`(n) * c * width` f32); the
/// pre-activation recomputed from `x`. Device addresses.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bwd(cuda: &Cuda, dx: u64, part: u64, gw: u64, dy: u64, x: u64, w: u64, s: ConvShape, silu: bool, path: NnPath) -> Result<()> {
    let n = s.b * s.t;
    let (ni, ti, ci, wi, si) = (n as i64, s.t as i32, s.c as i32, s.width as i32, i32::from(silu));
    let gy = if vectorized(path, s.c, &[dx, dy, x]) {
        let gy = vec_part_rows(n);
        let name = format!("conv_bwd_w{}", s.width);
        // SAFETY: the arguments match conv_bwd_w{W}'s; dx, x hold n x c bf16 and dy n x c f32,
        // 16-byte aligned with c % 4 == 0 (checked); part holds gy x c x width f32 (the caller's
        // buffer, sized by part_rows), one row per block y
        unsafe { cuda.launch(&name, vec_cfg(s.c, gy), &[&dx, &part, &dy, &x, &w, &ni, &ti, &ci, &si])? };
        gy
    } else {
        // SAFETY: the arguments match conv_bwd_dx's and conv_bwd_dw's; part holds col_gy(n) rows
        unsafe {
            cuda.launch("conv_bwd_dx", flat(n * s.c).config(cuda), &[&dx, &dy, &x, &w, &ni, &ti, &ci, &wi, &si])?;
            cuda.launch("conv_bwd_dw", crate::backend::cols(n, s.c), &[&part, &dy, &x, &w, &ni, &ti, &ci, &wi, &si])?;
        }
        col_gy(n)
    };
    col_finalize(cuda, gw, part, gy, s.c * s.width)
}

/// What [`short_conv`] returns: the forward's `y` (bf16 bits, `[b * t, c]`), the backward's
/// `dx` (bf16 bits) and `dw` (f32 `[c, width]`).
#[derive(Clone, Debug)]
pub struct ConvRun {
    /// silu(pre), or pre (the convolution).
    pub y: Vec<u16>,
    /// The input's gradient.
    pub dx: Vec<u16>,
    /// The taps' gradient.
    pub dw: Vec<f32>,
}

/// One forward and backward of the short convolution on host data, on `path`: `x` bf16 bits and
/// `dy` f32 `[b * t, c]`, `w` f32 `[c, width]`, `cache` fla's conv state `[b, c, width]` f32,
/// which only the forward reads (the backward is that of the forward without a state, as the
/// model trains).
///
/// # Errors
/// [`Error::Op`] for a width outside 1 ..= 8 or a buffer of the wrong length; device errors.
#[allow(clippy::too_many_arguments)]
pub fn short_conv(
    cuda: &Cuda,
    x: &[u16],
    w: &[f32],
    cache: Option<&[f32]>,
    dy: &[f32],
    s: ConvShape,
    silu: bool,
    path: NnPath,
) -> Result<ConvRun> {
    const OP: &str = "short conv";
    if s.width == 0 || s.width > MAX_CONV {
        return Err(Error::Op(gla_core::Error::Unsupported {
            backend: "cuda",
            what: format!("{OP}: width {} (1 ..= {MAX_CONV})", s.width),
        }));
    }
    let n = s.b * s.t;
    let shape = format!("[B*T, C] = [{n}, {}], W = {}, B = {}", s.c, s.width, s.b);
    let cl = cache.map_or(s.b * s.c * s.width, <[f32]>::len);
    check_lens(
        OP,
        &[("x", x.len(), n * s.c), ("dy", dy.len(), n * s.c), ("w", w.len(), s.c * s.width), ("cache", cl, s.b * s.c * s.width)],
        &shape,
    )?;
    let (xd, wd, ddy) = (cuda.upload(x, "conv x")?, cuda.upload(w, "conv w")?, cuda.upload(dy, "conv dy")?);
    let cache_d = cache.map(|c| cuda.upload(c, "conv cache")).transpose()?;
    let (y, dx) = (cuda.alloc_zeros::<u16>(n * s.c, "conv y")?, cuda.alloc_zeros::<u16>(n * s.c, "conv dx")?);
    let gw = cuda.alloc_zeros::<f32>(s.c * s.width, "conv dw")?;
    let part = cuda.alloc_zeros::<f32>(part_rows(n) * s.c * s.width, "conv partial sums")?;
    let (xp, wp) = (ptr(cuda, &xd), ptr(cuda, &wd));
    fwd(cuda, ptr(cuda, &y), xp, wp, cache_d.as_ref().map_or(0, |c| ptr(cuda, c)), s, silu, path)?;
    bwd(cuda, ptr(cuda, &dx), ptr(cuda, &part), ptr(cuda, &gw), ptr(cuda, &ddy), xp, wp, s, silu, path)?;
    cuda.sync()?;
    Ok(ConvRun { y: cuda.download(&y, "conv y")?, dx: cuda.download(&dx, "conv dx")?, dw: cuda.download(&gw, "conv dw")? })
}
