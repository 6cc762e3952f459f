//! Typed launchers: one Rust function per kernel, taking device buffers. Each checks the buffer
//! lengths against the [`DevProblem`] (a wrong length is an error, never an out-of-bounds
//! launch), picks the launch shape, and keeps the `unsafe` of the launch in one place.
//!
//! Storage dtypes: `f32`, or bf16 held as `u16` (the upper half of an f32). States, gradients
//! and every accumulator are f32.

use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

use gla_core::{GateKind, Problem};

use crate::error::{Error, Result};
use crate::runtime::Cuda;

/// A storage dtype the kernels take: `f32`, or `u16` holding bf16 bits.
pub trait Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + Send + Sync + 'static {
    /// Entry point suffix (`f32` / `bf16`).
    const SUFFIX: &'static str;
    /// Rounds an f32 to this dtype.
    fn from_f32(x: f32) -> Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

pub use gla_core::bf16::{bf16_to_f32, f32_to_bf16};

impl Elem for u16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        f32_to_bf16(x)
    }
    fn to_f32(self) -> f32 {
        bf16_to_f32(self)
    }
}

/// The device-side description of a [`Problem`]: the sequence bounds on the device plus dims.
#[derive(Debug)]
pub struct DevProblem {
    /// Sequence row offsets `[N+1]` (i64), `cu_seqlens` or `0, T, .., B*T`.
    pub bounds: CudaSlice<i64>,
    /// Global index of each sequence's first 64-row chunk `[N+1]` (i64); the last is the total.
    pub chunk_off: CudaSlice<i64>,
    /// The sequence of each global chunk `[max(1, n_chunks)]` (i32).
    pub chunk_seq: CudaSlice<i32>,
    /// Total number of 64-row chunks over all sequences.
    pub n_chunks: usize,
    /// The host problem.
    pub problem: Problem,
}

impl DevProblem {
    /// Uploads the bounds of `p`.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new(cuda: &Cuda, p: &Problem) -> Result<Self> {
        let b: Vec<i64> = p.bounds().iter().map(|&x| x as i64).collect();
        let bounds = cuda.stream().clone_htod(&b).map_err(Error::driver("upload bounds"))?;
        let mut off = vec![0i64];
        let mut seq = Vec::new();
        for n in 0..p.n() {
            let c = ((b[n + 1] - b[n]) as usize).div_ceil(CHUNK_BT) as i64;
            off.push(off[n] + c);
            seq.extend(std::iter::repeat_n(n as i32, c as usize));
        }
        let n_chunks = seq.len();
        if seq.is_empty() {
            seq.push(0);
        }
        let chunk_off = cuda.stream().clone_htod(&off).map_err(Error::driver("upload chunk offsets"))?;
        let chunk_seq = cuda.stream().clone_htod(&seq).map_err(Error::driver("upload chunk sequences"))?;
        Ok(Self { bounds, chunk_off, chunk_seq, n_chunks, problem: p.clone() })
    }
    fn dims(&self) -> (i32, i32, i32, i32, i32, f32, i64) {
        let p = &self.problem;
        let gw = p.gate().width(p.k()) as i32;
        (p.n() as i32, p.h() as i32, p.k() as i32, p.v() as i32, gw, p.scale() as f32, p.rows() as i64)
    }
}

/// Fills a buffer with all-ones bytes (NaN for f32 and bf16), so an unwritten output shows.
///
/// # Errors
/// [`Error::Driver`].
pub fn poison<T: DeviceRepr>(cuda: &Cuda, buf: &mut CudaSlice<T>) -> Result<()> {
    let bytes = buf.len() * std::mem::size_of::<T>();
    if bytes == 0 {
        return Ok(());
    }
    let stream = cuda.stream().clone();
    let (ptr, _rec) = buf.device_ptr_mut(&stream);
    // SAFETY: ptr is valid for `bytes` bytes on this stream; _rec keeps the ordering record alive
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xff, bytes, stream.cu_stream()) }.map_err(Error::driver("poison (memset 0xff)"))
}

fn check_len(op: &'static str, tensor: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Op(gla_core::Error::ShapeMismatch { op, tensor, expected: format!("{expected} elements"), numel: expected, got }))
    }
}

fn unsupported(what: String) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cuda", what })
}

fn grid_y(op: &str, nh: usize) -> Result<u32> {
    u32::try_from(nh).ok().filter(|&x| x <= 65_535).ok_or_else(|| unsupported(format!("{op}: N*H = {nh} exceeds the grid's y limit 65535")))
}

fn launch_err(kernel: &str, cfg: &LaunchConfig) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let (kernel, grid, block, smem) = (kernel.to_string(), cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes);
    move |source| Error::Launch { kernel, grid, block, smem, source }
}

/// Pipeline stages of the state passes (`HNS` in `gla/chunk_h.cu`).
const CHUNK_H_STAGES: usize = 4;

/// The state passes' tiling, one choice for the forward's and the backward's: `bvh` value
/// columns per block of 64 key rows (128 threads). 64 x 64 tiles, or 32 value columns when that
/// gives fewer than two blocks per SM (long sequences: each block walks its sequence's chunks in
/// order, so blocks are the only parallelism). 128 key rows per block (8 warps, half of v's
/// reloads) were tried on the H200 in session 5 and gained nothing (crates/gla-cuda/NOTES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HPlan {
    bvh: usize,
}

impl HPlan {
    fn new(p: &Problem, nh: usize) -> Self {
        let tiles = nh * p.k().div_ceil(64) * p.v().div_ceil(64);
        Self { bvh: if tiles < 2 * 132 { 32 } else { 64 } }
    }

    /// The kernel of the forward state pass, or (`rev`) of the backward's state-gradient pass.
    fn name(self, rev: bool) -> &'static str {
        match (rev, self.bvh) {
            (false, 32) => "gla_chunk_h32_bf16",
            (false, _) => "gla_chunk_h64_bf16",
            (true, 32) => "gla_chunk_dh32_bf16",
            (true, _) => "gla_chunk_dh64_bf16",
        }
    }

    /// Grid (V tiles, K tiles of 64, `gz` = N*H), 128 threads, the HNS-stage smem of the kernel.
    fn cfg(self, p: &Problem, gz: u32) -> LaunchConfig {
        let smem = CHUNK_H_STAGES * ((64 * 72 + 64 * (self.bvh + 8)) * 2 + 64 * 4);
        LaunchConfig {
            grid_dim: (p.v().div_ceil(self.bvh) as u32, p.k().div_ceil(64) as u32, gz),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        }
    }
}

/// Rows per chunk of the chunked kernels.
pub const CHUNK_BT: usize = 64;
/// Dynamic shared memory of `gla_chunk_o_bf16` for K padded to `kp` (see the kernel's layout).
pub fn chunk_o_smem_bytes(kp: usize) -> usize {
    let ldk = kp + 8;
    64 * ldk * 2 + 64 * 136 * 2 + 64 * kp * 4 + 64 * ldk * 2 + 48 * ldk * 2 + 64 * 72 * 2 + 256 * 4 + 7 * kp * 4
}

/// Largest K the recurrent kernels take (8 warps x 32 rows each in registers).
pub const RECURRENT_MAX_K: usize = 256;
/// Largest K of the v0/v1 chunk kernels and of v2's single-tile launches (the output pass and
/// bwd1/bwd2 hold all K columns in one block's shared memory).
pub const CHUNK_MAX_K: usize = 128;
/// Largest K of the v2 chunked path (bf16), and largest V of its backward: above
/// [`CHUNK_MAX_K`] (or V above 128 in the backward) it runs the split launches ([`V2Path::Wide`]).
pub const CHUNK_V2_MAX: usize = 256;
/// Widest K tile of the split launches (`gla_chunk_a_bf16`, `gla_chunk_bwd2k_bf16`): their
/// shared-memory layouts are those of the single-tile kernels at this width.
const CHUNK_K_TILE: usize = 128;

/// Which launches of the bf16 chunked path (`gla/chunk_{fwd,h,bwd}.cu`) a problem runs (see [`v2_fwd_path`], [`v2_bwd_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Path {
    /// All K columns in one block: forward prep, state pass, `gla_chunk_o_bf16`; backward prep,
    /// state and state-gradient passes, A by `gla_chunk_o_bf16`, `bwd1`, `bwd2`.
    Narrow,
    /// K above 128 (up to 256) or, in the backward, V above 128: A summed over K tiles
    /// (`gla_chunk_a_bf16`), o per 64-wide V tile (`gla_chunk_ow_bf16`); backward `bwd1k` (per
    /// 64 key rows) + `bwd1v` (per 64 value columns), `bwd2k` per K tile (`bwd2` when K <= 128).
    Wide,
}

impl V2Path {
    /// The kernel label of benchmark and check rows: `chunk` or `chunk-wide`.
    pub fn label(self) -> &'static str {
        match self {
            V2Path::Narrow => "chunk",
            V2Path::Wide => "chunk-wide",
        }
    }
}

/// The v2 forward launches for a bf16 problem: [`V2Path::Narrow`] for K <= 128, [`V2Path::Wide`]
/// for 128 < K <= 256 (any V for both), `None` above (the v0 kernels or the recurrent ones).
pub fn v2_fwd_path(p: &Problem) -> Option<V2Path> {
    match p.k() {
        k if k <= CHUNK_MAX_K => Some(V2Path::Narrow),
        k if k <= CHUNK_V2_MAX => Some(V2Path::Wide),
        _ => None,
    }
}

/// The chunked backward's launches for a bf16 problem: [`V2Path::Narrow`] for 48 < K <= 128 and
/// V <= 128, [`V2Path::Wide`] when K or V is above 128 (both at most 256), else `None` (the
/// recurrent backward). K <= 48 with V <= 128 stays recurrent: bwd1 reads 64 key rows of its
/// state tiles, which hold only Kp rows (see [`chunk_bwd_supported`]).
pub fn v2_bwd_path(p: &Problem) -> Option<V2Path> {
    let (k, v) = (p.k(), p.v());
    if k > 48 && k <= CHUNK_MAX_K && v <= 128 {
        Some(V2Path::Narrow)
    } else if k <= CHUNK_V2_MAX && v <= CHUNK_V2_MAX && (k > CHUNK_MAX_K || v > 128) {
        Some(V2Path::Wide)
    } else {
        None
    }
}

/// K tiles of the split launches: (width, count). The padded K is split evenly into at most
/// [`CHUNK_K_TILE`]-wide tiles, each a multiple of 16 (K = 256: 2 x 128; K = 192: 2 x 96;
/// K = 130: 2 x 80), so no tile is mostly padding.
fn k_tiles(k: usize) -> (usize, usize) {
    k_tiles_of(k, CHUNK_K_TILE)
}

/// [`k_tiles`] with tiles of at most `max_w` columns (a multiple of 16).
fn k_tiles_of(k: usize, max_w: usize) -> (usize, usize) {
    let kp = k.div_ceil(16) * 16;
    let n = kp.div_ceil(max_w).max(1);
    let w = kp.div_ceil(n).div_ceil(16) * 16;
    (w, k.div_ceil(w))
}
const REC_BV: usize = 32;
const REC_CK: usize = 32;
const CHUNK_BV: usize = 32;

/// Inputs of a forward or backward launch, on the device.
#[derive(Debug, Clone, Copy)]
pub struct DevInputs<'a, T> {
    /// `[B,T,H,K]`
    pub q: &'a CudaSlice<T>,
    /// `[B,T,H,K]`
    pub k: &'a CudaSlice<T>,
    /// `[B,T,H,V]`
    pub v: &'a CudaSlice<T>,
    /// Per the gate kind; `None` for [`GateKind::None`].
    pub g: Option<&'a CudaSlice<T>>,
    /// `[N,H,K,V]` f32 or none.
    pub h0: Option<&'a CudaSlice<f32>>,
}

fn check_inputs<T>(op: &'static str, dp: &DevProblem, x: &DevInputs<'_, T>) -> Result<()> {
    let p = &dp.problem;
    check_len(op, "q", p.qk_len(), x.q.len())?;
    check_len(op, "k", p.qk_len(), x.k.len())?;
    check_len(op, "v", p.v_len(), x.v.len())?;
    match (p.gate(), x.g) {
        (GateKind::None, _) => {}
        (_, Some(g)) => check_len(op, "g", p.g_len(), g.len())?,
        (_, None) => check_len(op, "g", p.g_len(), 0)?,
    }
    if let Some(h0) = x.h0 {
        check_len(op, "h0", p.state_len(), h0.len())?;
    }
    Ok(())
}

/// Which forward kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdKernel {
    /// `gla_recurrent_fwd_*`: token by token, state in registers.
    Recurrent,
    /// Chunked: bf16 with K <= 256 runs v2 ([`v2_fwd_path`]: prep, `gla_chunk_h*_bf16`, then
    /// `gla_chunk_o_bf16`, or for K > 128 `gla_chunk_a_bf16` + `gla_chunk_ow_bf16`), the rest
    /// `gla_chunk_fwd_*` (one block per sequence, state in shared memory; K <= 128).
    Chunk,
    /// v2's prep and state pass alone (bf16, K <= 256; o is not written): for timing the stages.
    ChunkStatePass,
}

/// Forward: `o = ` the GLA output `[B,T,H,V]` (dtype T), `ht = ` final state `[N,H,K,V]` f32.
///
/// # Errors
/// Shape mismatch, unsupported K, launch or compile errors.
pub fn gla_fwd<T: Elem>(
    cuda: &Cuda,
    which: FwdKernel,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    o: &mut CudaSlice<T>,
    ht: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    let op = "gla_fwd";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "o", p.v_len(), o.len())?;
    if let Some(ht) = &ht {
        check_len(op, "ht", p.state_len(), ht.len())?;
    }
    let (n, h, k, v, gw, scale, _rows) = dp.dims();
    let gy = grid_y(op, p.n() * p.h())?;
    if matches!(which, FwdKernel::Chunk | FwdKernel::ChunkStatePass) && T::SUFFIX == "bf16" {
        if let Some(path) = v2_fwd_path(p) {
            return chunk_v2(cuda, dp, x, o, ht, which == FwdKernel::ChunkStatePass, path);
        }
    }
    let (name, cfg) = match which {
        FwdKernel::Recurrent => (format!("gla_recurrent_fwd_{}", T::SUFFIX), recurrent_fwd_cfg(op, p)?),
        FwdKernel::Chunk | FwdKernel::ChunkStatePass => {
            if T::SUFFIX == "bf16" || p.k() > CHUNK_MAX_K {
                let max = if T::SUFFIX == "bf16" { CHUNK_V2_MAX } else { CHUNK_MAX_K };
                return Err(unsupported(format!("chunk kernel: K = {} > {max} ({})", p.k(), T::SUFFIX)));
            }
            let smem = (3 * 64 * p.k() + 64 * CHUNK_BV + 64 * 64 + p.k() * CHUNK_BV) * 4;
            let cfg =
                LaunchConfig { grid_dim: (p.v().div_ceil(CHUNK_BV) as u32, gy, 1), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 };
            (format!("gla_chunk_fwd_{}", T::SUFFIX), cfg)
        }
    };
    let _ = n;
    let f = cuda.function(&name)?;
    if cfg.shared_mem_bytes > 48 * 1024 {
        f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_mem_bytes as i32)
            .map_err(launch_err(&name, &cfg))?;
    }
    let null = 0u64;
    let stream = cuda.stream();
    let mut b = stream.launch_builder(&f);
    b.arg(x.q).arg(x.k).arg(x.v);
    match x.g {
        Some(g) if gw > 0 => b.arg(g),
        _ => b.arg(&null),
    };
    match x.h0 {
        Some(h0) => b.arg(h0),
        None => b.arg(&null),
    };
    b.arg(o);
    match ht {
        Some(ht) => b.arg(ht),
        None => b.arg(&null),
    };
    b.arg(&dp.bounds).arg(&h).arg(&k).arg(&v).arg(&gw).arg(&scale);
    // SAFETY: the argument list matches the kernel's signature (pointers to buffers whose lengths
    // were checked above against the problem, or null where the kernel tests for null; i32 dims,
    // f32 scale); the grid covers V in tiles of BV and N*H in y, which is what the kernel indexes.
    unsafe { b.launch(cfg) }.map_err(launch_err(&name, &cfg))?;
    Ok(())
}

/// Launch shape of the recurrent forward and decode entries (file contract of gla/recurrent.cu):
/// grid (ceil(V / BV), N*H), block (32, NW); K at most [`RECURRENT_MAX_K`].
fn recurrent_fwd_cfg(op: &str, p: &Problem) -> Result<LaunchConfig> {
    if p.k() > RECURRENT_MAX_K {
        return Err(unsupported(format!("recurrent kernel: K = {} > {RECURRENT_MAX_K}", p.k())));
    }
    Ok(LaunchConfig {
        grid_dim: (p.v().div_ceil(REC_BV) as u32, grid_y(op, p.n() * p.h())?, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    })
}

/// One decode step (`gla_recurrent_decode_*`): the recurrent forward of one token per sequence
/// (the problem has exactly one row per sequence), sequence n's state `[H, K, V]` f32 living in
/// its own buffer at the device address `states[n]`, read and updated in place. The table lets
/// a batch of independently owned states decode in one launch, with no gather or scatter, and
/// keeps every address the launch sees fixed (the decode step is captured in a CUDA graph).
///
/// # Errors
/// [`Error::Op`] for wrong lengths or a problem that is not one row per sequence; launch errors.
///
/// # Safety
/// Every address in `states[..N]` must be that of a live device buffer of this context holding
/// at least `H*K*V` f32, no two the same, none written by other work while the step runs.
pub unsafe fn gla_decode<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    states: u64,
    n_states: usize,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let op = "gla_decode";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "o", p.v_len(), o.len())?;
    check_len(op, "states", p.n(), n_states)?;
    if p.rows() != p.n() {
        return Err(unsupported(format!("{op}: {} rows for {} sequences; decode takes one token per sequence", p.rows(), p.n())));
    }
    let (_, h, k, v, gw, scale, _) = dp.dims();
    let cfg = recurrent_fwd_cfg(op, p)?;
    let name = format!("gla_recurrent_decode_{}", T::SUFFIX);
    let f = cuda.function(&name)?;
    let null = 0u64;
    let mut b = cuda.stream().launch_builder(&f);
    b.arg(x.q).arg(x.k).arg(x.v);
    match x.g {
        Some(g) if gw > 0 => b.arg(g),
        _ => b.arg(&null),
    };
    b.arg(&states).arg(o).arg(&dp.bounds).arg(&h).arg(&k).arg(&v).arg(&gw).arg(&scale);
    // SAFETY: the arguments match gla_recurrent_decode's signature; q/k/v/g/o lengths were
    // checked against the problem; the state table's contract is the caller's (above)
    unsafe { b.launch(cfg) }.map_err(launch_err(&name, &cfg))?;
    Ok(())
}

/// Whether the 16-byte gate prep (`gla_chunk_prep8_bf16`) applies: per-key gate, K % 8 == 0.
fn prep8(p: &Problem) -> bool {
    p.gate() == GateKind::PerKey && p.k().is_multiple_of(8) && p.k() <= CHUNK_V2_MAX
}

/// The gate prep launch (`gla_chunk_prep8_bf16` or `gla_chunk_prep_bf16`): kd and dl, and qe
/// when given. Grid (chunks, H, ceil(K / 128)): each block covers 128 key channels.
fn launch_prep<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    kd: &mut CudaSlice<T>,
    dl: &mut CudaSlice<f32>,
    qe: Option<&mut CudaSlice<T>>,
    gx: u32,
) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, _v, gw, scale, _rows) = dp.dims();
    let vec8 = prep8(p);
    let name = if vec8 { "gla_chunk_prep8_bf16" } else { "gla_chunk_prep_bf16" };
    let gz = p.k().div_ceil(128) as u32;
    let cfg = LaunchConfig { grid_dim: (gx, p.h() as u32, gz), block_dim: (if vec8 { 64 } else { 128 }, 1, 1), shared_mem_bytes: 0 };
    let f = cuda.function(name)?;
    let null = 0u64;
    let s = cuda.stream();
    let mut b = s.launch_builder(&f);
    b.arg(x.k);
    match x.g {
        Some(g) if gw > 0 => b.arg(g),
        _ => b.arg(&null),
    };
    match qe {
        Some(qe) => b.arg(x.q).arg(kd).arg(dl).arg(qe),
        None => b.arg(&null).arg(kd).arg(dl).arg(&null),
    };
    b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq).arg(&h).arg(&k);
    if !vec8 {
        b.arg(&gw);
    }
    b.arg(&scale);
    // SAFETY: arguments match gla_chunk_prep{8,}_bf16's signature (kd, qe shaped like k, q; dl
    // n_chunks x H x K); one block per (chunk, head, 128 key channels).
    unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    Ok(())
}

/// Grid x of the launches with one block per (chunk, 64-wide V tile): chunks x ceil(V / 64).
fn vtile_grid(dp: &DevProblem, v: usize, what: &str) -> Result<u32> {
    let nvt = v.div_ceil(64);
    u32::try_from(dp.n_chunks * nvt)
        .ok()
        .filter(|&x| x < i32::MAX as u32)
        .ok_or_else(|| unsupported(format!("{what}: {} chunks x {nvt} V tiles", dp.n_chunks)))
}

fn set_smem(f: &cudarc::driver::CudaFunction, name: &str, cfg: &LaunchConfig) -> Result<()> {
    if cfg.shared_mem_bytes > 48 * 1024 {
        f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cfg.shared_mem_bytes as i32)
            .map_err(launch_err(name, cfg))?;
    }
    Ok(())
}

/// The v2 chunked forward (bf16, K <= 256): gate prep, state pass writing the bf16 state entering
/// every chunk to a workspace, then the output pass, parallel over chunks ([`V2Path::Narrow`]:
/// one launch; [`V2Path::Wide`]: A over K tiles, then o per 64-wide V tile from the prep's qe).
fn chunk_v2<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    o: &mut CudaSlice<T>,
    ht: Option<&mut CudaSlice<f32>>,
    state_only: bool,
    path: V2Path,
) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let s = cuda.stream();
    let wide = path == V2Path::Wide;
    let hs_len = (dp.n_chunks * p.h() * p.k() * p.v()).max(1);
    // SAFETY: every element the output pass reads is written by the state pass first (same stream)
    let mut hs = unsafe { s.alloc::<T>(hs_len) }.map_err(Error::driver(format!("alloc chunk states ({hs_len} x 2 B)")))?;
    let nh = p.n() * p.h();
    let gz = u32::try_from(nh)
        .ok()
        .filter(|&z| z <= 65_535)
        .ok_or_else(|| unsupported(format!("chunk v2: N*H = {nh} exceeds the grid's z limit 65535")))?;
    let gx = u32::try_from(dp.n_chunks)
        .ok()
        .filter(|&x| x < i32::MAX as u32)
        .ok_or_else(|| unsupported(format!("chunk v2: {} chunks", dp.n_chunks)))?;
    let null = 0u64;
    // SAFETY: written by the prep launch (rows of every chunk, dl of every chunk) before the state
    // pass reads them, same stream
    let mut kd = unsafe { s.alloc::<T>(p.qk_len().max(1)) }.map_err(Error::driver("alloc kd"))?;
    // SAFETY: as kd
    let mut dl = unsafe { s.alloc::<f32>((dp.n_chunks * p.h() * p.k()).max(1)) }.map_err(Error::driver("alloc dl"))?;
    // the wide output launch takes q scale exp(G) from the prep (the narrow one forms it itself)
    // SAFETY: as kd (rows of every chunk written by the prep before gla_chunk_ow_bf16 reads them)
    let mut qe = if wide { Some(unsafe { s.alloc::<T>(p.qk_len().max(1)) }.map_err(Error::driver("alloc qe"))?) } else { None };
    if dp.n_chunks > 0 {
        launch_prep(cuda, dp, x, &mut kd, &mut dl, qe.as_mut(), gx)?;
    }
    {
        let plan = HPlan::new(p, nh);
        let (name, cfg) = (plan.name(false), plan.cfg(p, gz));
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        b.arg(&kd).arg(x.v).arg(&dl);
        match x.h0 {
            Some(h0) => b.arg(h0),
            None => b.arg(&null),
        };
        b.arg(&mut hs);
        match ht {
            Some(ht) => b.arg(ht),
            None => b.arg(&null),
        };
        b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&h).arg(&k).arg(&v);
        // SAFETY: arguments match gla_chunk_h*_bf16's signature; hs holds n_chunks x H x K x V
        // elements; the grid covers V and K in the plan's tiles and N*H in z.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    if dp.n_chunks == 0 || state_only {
        return Ok(());
    }
    let kp = p.k().div_ceil(16) * 16;
    if let (true, Some(qe)) = (wide, &qe) {
        // SAFETY: written by gla_chunk_a_bf16 (every chunk and head) before gla_chunk_ow_bf16 reads it
        let mut a = unsafe { s.alloc::<T>((dp.n_chunks * p.h() * 4096).max(1)) }.map_err(Error::driver("alloc A"))?;
        launch_a_wide(cuda, dp, x, &mut a, gx)?;
        let gxv = vtile_grid(dp, p.v(), "chunk v2")?;
        let name = "gla_chunk_ow_bf16";
        let cfg =
            LaunchConfig { grid_dim: (gxv, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_ow_smem_bytes(kp) as u32 };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let kp32 = kp as i32;
        let mut b = s.launch_builder(&f);
        b.arg(qe).arg(x.v).arg(&a).arg(&hs).arg(o).arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq);
        b.arg(&h).arg(&k).arg(&v).arg(&kp32);
        // SAFETY: arguments match gla_chunk_ow_bf16's signature; x = chunk * ceil(V/64) + V tile;
        // qe is shaped like q, A holds n_chunks x H x 64 x 64, hs n_chunks x H x K x V.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
        return Ok(());
    }
    {
        let name = "gla_chunk_o_bf16";
        let cfg = LaunchConfig { grid_dim: (gx, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_o_smem_bytes(kp) as u32 };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let kp = kp as i32;
        let mut b = s.launch_builder(&f);
        b.arg(x.q).arg(x.k).arg(x.v);
        match x.g {
            Some(g) if gw > 0 => b.arg(g),
            _ => b.arg(&null),
        };
        b.arg(&hs).arg(o).arg(&null).arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq);
        b.arg(&h).arg(&k).arg(&v).arg(&gw).arg(&scale).arg(&kp);
        // SAFETY: arguments match gla_chunk_o_bf16's signature; one block per (global chunk,
        // head), chunk_seq / chunk_off map it to its rows; hs was written by the launch above.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    Ok(())
}

/// `gla_chunk_a_bf16`: A (scaled, causal, bf16 `[chunks, H, 64, 64]`) summed over the K tiles
/// of [`k_tiles`], one block per (chunk, head).
fn launch_a_wide<T: Elem>(cuda: &Cuda, dp: &DevProblem, x: &DevInputs<'_, T>, a: &mut CudaSlice<T>, gx: u32) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, _v, gw, scale, _rows) = dp.dims();
    let (kt, _) = k_tiles(p.k());
    let name = "gla_chunk_a_bf16";
    let cfg = LaunchConfig { grid_dim: (gx, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_o_smem_bytes(kt) as u32 };
    let f = cuda.function(name)?;
    set_smem(&f, name, &cfg)?;
    let null = 0u64;
    let kt32 = kt as i32;
    let mut b = cuda.stream().launch_builder(&f);
    b.arg(x.q).arg(x.k);
    match x.g {
        Some(g) if gw > 0 => b.arg(g),
        _ => b.arg(&null),
    };
    b.arg(a).arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq).arg(&h).arg(&k).arg(&gw).arg(&scale).arg(&kt32);
    // SAFETY: arguments match gla_chunk_a_bf16's signature; the smem is the output pass's layout
    // at the tile width kt <= 128, which the kernel loops over; A holds n_chunks x H x 4096.
    unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    Ok(())
}

/// Dynamic shared memory of `gla_chunk_ow_bf16` for K padded to `kp` (<= 256).
pub fn chunk_ow_smem_bytes(kp: usize) -> usize {
    (64 * (kp + 8) + kp * 72 + 2 * 64 * 72) * 2
}

/// Whether [`gla_bwd_chunk`] takes this problem: bf16 storage and a [`v2_bwd_path`]: 48 < K <=
/// 128 with V <= 128, or K, V <= 256 with one of them above 128.
///
/// K <= 48 (padded K below 64) with V <= 128 is refused: bwd1's raw dq/dk products read 64 key
/// rows of the shared state tiles, which hold only Kp rows, so a smaller Kp reads past the
/// shared-memory allocation (an illegal address, found by the model check with K = 16). Those
/// problems take the recurrent backward until the tiles are sized `max(Kp, 64)` (the wide
/// path's bwd1k zero-fills its 64-row tiles, so V > 128 takes any K).
pub fn chunk_bwd_supported<T: Elem>(p: &Problem) -> bool {
    T::SUFFIX == "bf16" && v2_bwd_path(p).is_some()
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

/// Dynamic shared memory of `gla_chunk_bwd1_bf16` for K padded to `kp`.
pub fn chunk_bwd1_smem_bytes(kp: usize) -> usize {
    (2 * 64 + 2 * kp) * 136 * 2 + 64 * 72 * 2 + 64 * (kp + 8) * 2
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
/// tiles, dynamic smem). Tiles of <= 64 at two blocks per SM (`gla_chunk_bwd2k64_bf16`; the
/// K = 128 forward + backward 11.16 -> 10.10 ms on the H200 against one 128-wide block per SM)
/// wherever the result stays deterministic: a per-head gate's dg is a sum over the tiles added
/// atomically, exact in any order only for at most two tiles, so a per-head gate with K > 128
/// takes `gla_chunk_bwd2k_bf16` in two tiles of <= 128. Tiles split K evenly (80 -> 48 + 32).
fn bwd2_plan(k: usize, gw: usize) -> (&'static str, usize, usize, usize) {
    let (w, n) = k_tiles_of(k, 64);
    if gw == 1 && n > 2 {
        let (w, n) = k_tiles(k);
        ("gla_chunk_bwd2k_bf16", w, n, chunk_bwd2_smem_bytes(w))
    } else {
        ("gla_chunk_bwd2k64_bf16", w, n, chunk_bwd2_d2_smem_bytes(w))
    }
}

/// The chunked backward (bf16 storage, f32 gradients; see `chunk_bwd_supported`): gate prep,
/// state pass, state-gradient pass, A, then two chunk-parallel gradient launches. Gradients
/// are NaN-poisoned first when `poison` (checks), left unfilled otherwise (every element is
/// written; timing).
///
/// # Errors
/// Shape mismatch, unsupported shapes, launch or compile errors.
pub fn gla_bwd_chunk<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    poison_out: bool,
) -> Result<DevGrads> {
    gla_bwd_chunk_stages(cuda, dp, x, d_o, dht, poison_out, usize::MAX)
}

/// The launches of the chunked backward, for timing its stages: only the first `upto` of prep,
/// state pass, state-gradient pass, A, bwd1, bwd2 run (the gradients are complete only when all
/// six run; [`gla_bwd_chunk`] runs them all).
///
/// # Errors
/// As [`gla_bwd_chunk`].
pub fn gla_bwd_chunk_stages<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    poison_out: bool,
    upto: usize,
) -> Result<DevGrads> {
    let op = "gla_bwd_chunk";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "do", p.v_len(), d_o.len())?;
    if let Some(dht) = dht {
        check_len(op, "dht", p.state_len(), dht.len())?;
    }
    let path = match v2_bwd_path(p) {
        Some(path) if T::SUFFIX == "bf16" => path,
        _ => {
            return Err(unsupported(format!(
                "chunked backward: bf16 with 48 < K <= {CHUNK_MAX_K} and V <= 128, or K, V <= {CHUNK_V2_MAX} (got {}, K = {}, V = {})",
                T::SUFFIX,
                p.k(),
                p.v()
            )))
        }
    };
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let s = cuda.stream();
    let nc = dp.n_chunks;
    let kp = p.k().div_ceil(16) * 16;
    let kp32 = kp as i32;
    let null = 0u64;
    let alloc = |len: usize, what: &'static str, poison_it: bool| -> Result<CudaSlice<f32>> {
        // SAFETY: every element is written by the launches below before it is read (or the
        // buffer is poisoned first)
        let mut b = unsafe { s.alloc::<f32>(len.max(1)) }.map_err(Error::driver(format!("alloc {what} ({len} f32)")))?;
        if poison_it {
            poison(cuda, &mut b)?;
        }
        Ok(b)
    };
    let mut g = DevGrads {
        dq: alloc(p.qk_len(), "dq", poison_out)?,
        dk: alloc(p.qk_len(), "dk", poison_out)?,
        dv: alloc(p.v_len(), "dv", poison_out)?,
        dg: alloc(p.g_len(), "dg", poison_out)?,
        dh0: alloc(if x.h0.is_some() { p.state_len() } else { 0 }, "dh0", poison_out)?,
    };
    // SAFETY (all workspaces): written by an earlier launch on this stream before being read
    let mut kd = unsafe { s.alloc::<T>(p.qk_len().max(1)) }.map_err(Error::driver("alloc kd"))?;
    let mut qe = unsafe { s.alloc::<T>(p.qk_len().max(1)) }.map_err(Error::driver("alloc qe"))?;
    let mut hs = unsafe { s.alloc::<T>((nc * p.h() * p.k() * p.v()).max(1)) }.map_err(Error::driver("alloc hs"))?;
    let mut dhs = unsafe { s.alloc::<T>((nc * p.h() * p.k() * p.v()).max(1)) }.map_err(Error::driver("alloc dhs"))?;
    let mut a = unsafe { s.alloc::<T>((nc * p.h() * 4096).max(1)) }.map_err(Error::driver("alloc A"))?;
    let mut dl = alloc(nc * p.h() * p.k(), "dl", false)?;
    let mut da = alloc(nc * p.h() * 4096, "dA", false)?;
    let mut sd = alloc(nc * p.h() * p.k(), "sd", false)?;
    let nh = p.n() * p.h();
    let gz = u32::try_from(nh)
        .ok()
        .filter(|&z| z <= 65_535)
        .ok_or_else(|| unsupported(format!("{op}: N*H = {nh} exceeds the grid's z limit 65535")))?;
    let gx = u32::try_from(nc).ok().filter(|&x| x < i32::MAX as u32).ok_or_else(|| unsupported(format!("{op}: {nc} chunks")))?;
    macro_rules! gate {
        ($b:expr) => {
            match x.g {
                Some(gg) if gw > 0 => $b.arg(gg),
                _ => $b.arg(&null),
            }
        };
    }
    if nc > 0 && upto >= 1 {
        launch_prep(cuda, dp, x, &mut kd, &mut dl, Some(&mut qe), gx)?;
    }
    let plan = HPlan::new(p, nh);
    for rev in [false, true] {
        if upto < if rev { 3 } else { 2 } {
            return Ok(g);
        }
        let (name, cfg) = (plan.name(rev), plan.cfg(p, gz));
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        if rev {
            b.arg(&qe).arg(d_o).arg(&dl);
            match dht {
                Some(d) => b.arg(d),
                None => b.arg(&null),
            };
            b.arg(&mut dhs);
            if x.h0.is_some() {
                b.arg(&mut g.dh0);
            } else {
                b.arg(&null);
            }
        } else {
            b.arg(&kd).arg(x.v).arg(&dl);
            match x.h0 {
                Some(h0) => b.arg(h0),
                None => b.arg(&null),
            };
            b.arg(&mut hs).arg(&null);
        }
        b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&h).arg(&k).arg(&v);
        // SAFETY: arguments match gla_chunk_{h,dh}*_bf16's signature; hs / dhs hold
        // n_chunks x H x K x V; the grid covers V, K in tiles and N*H in z.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    if nc == 0 || upto < 4 {
        return Ok(g);
    }
    if p.k() > CHUNK_MAX_K {
        launch_a_wide(cuda, dp, x, &mut a, gx)?;
    } else {
        let name = "gla_chunk_o_bf16";
        let cfg = LaunchConfig { grid_dim: (gx, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_o_smem_bytes(kp) as u32 };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        b.arg(x.q).arg(x.k).arg(x.v);
        gate!(b);
        b.arg(&null).arg(&null).arg(&mut a).arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq);
        b.arg(&h).arg(&k).arg(&v).arg(&gw).arg(&scale).arg(&kp32);
        // SAFETY: gla_chunk_o_bf16 with o = null writes only A (n_chunks x H x 64 x 64) and
        // returns before reading hs (null).
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    if upto < 5 {
        return Ok(g);
    }
    if path == V2Path::Wide {
        launch_bwd1_wide(cuda, dp, x, d_o, &kd, &a, &hs, &dhs, &mut g, &mut da, &mut sd, gx)?;
    } else {
        let name = "gla_chunk_bwd1_bf16";
        let cfg =
            LaunchConfig { grid_dim: (gx, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_bwd1_smem_bytes(kp) as u32 };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        b.arg(x.v).arg(d_o).arg(&kd).arg(&a).arg(&hs).arg(&dhs);
        b.arg(&mut g.dv).arg(&mut da).arg(&mut g.dq).arg(&mut g.dk).arg(&mut sd);
        b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq).arg(&h).arg(&k).arg(&v).arg(&kp32);
        // SAFETY: arguments match gla_chunk_bwd1_bf16's signature; every buffer is sized for the
        // problem and n_chunks as the kernel indexes.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    if upto < 6 {
        return Ok(g);
    }
    {
        // one block per K tile (per channel given the full dA); the per-head gate's dg, a sum
        // over channels, is added atomically by the (at most two) tiles onto zeros
        let (name, w, tiles, smem) = bwd2_plan(p.k(), gw as usize);
        if gw == 1 {
            s.memset_zeros(&mut g.dg).map_err(Error::driver("zero dg"))?;
        }
        let kp32 = w as i32;
        let cfg = LaunchConfig { grid_dim: (gx, p.h() as u32, tiles as u32), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        b.arg(x.q).arg(x.k);
        gate!(b);
        b.arg(&da).arg(&sd).arg(&mut g.dq).arg(&mut g.dk);
        if gw > 0 {
            b.arg(&mut g.dg);
        } else {
            b.arg(&null);
        }
        b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq).arg(&h).arg(&k).arg(&gw).arg(&scale).arg(&kp32);
        // SAFETY: arguments match the bwd2 entries' signature; dq, dk hold bwd1's raw
        // products, which each thread reads before it overwrites them.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    Ok(g)
}

/// bwd1 of [`V2Path::Wide`]: `gla_chunk_bwd1k_bf16` (grid z over 64 key rows: raw dq, dk, sd;
/// dA from z = 0) and `gla_chunk_bwd1v_bf16` (x over chunk and 64-wide V tile: dv).
#[allow(clippy::too_many_arguments)] // the backward's workspaces, each written by an earlier launch
fn launch_bwd1_wide<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    kd: &CudaSlice<T>,
    a: &CudaSlice<T>,
    hs: &CudaSlice<T>,
    dhs: &CudaSlice<T>,
    g: &mut DevGrads,
    da: &mut CudaSlice<f32>,
    sd: &mut CudaSlice<f32>,
    gx: u32,
) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, v, _gw, _scale, _rows) = dp.dims();
    let s = cuda.stream();
    {
        let name = "gla_chunk_bwd1k_bf16";
        let cfg = LaunchConfig {
            grid_dim: (gx, p.h() as u32, p.k().div_ceil(64) as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: chunk_bwd1k_smem_bytes() as u32,
        };
        let f = cuda.function(name)?;
        set_smem(&f, name, &cfg)?;
        let mut b = s.launch_builder(&f);
        b.arg(x.v).arg(d_o).arg(hs).arg(dhs).arg(&mut *da).arg(&mut g.dq).arg(&mut g.dk).arg(&mut *sd);
        b.arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq).arg(&h).arg(&k).arg(&v);
        // SAFETY: arguments match gla_chunk_bwd1k_bf16's signature; hs, dhs hold n_chunks x H x K
        // x V, dA n_chunks x H x 4096, sd n_chunks x H x K; the grid covers K in 64-row blocks.
        unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    }
    let kp = p.k().div_ceil(16) * 16;
    let gxv = vtile_grid(dp, p.v(), "chunked backward")?;
    let name = "gla_chunk_bwd1v_bf16";
    let cfg =
        LaunchConfig { grid_dim: (gxv, p.h() as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: chunk_bwd1v_smem_bytes(kp) as u32 };
    let f = cuda.function(name)?;
    set_smem(&f, name, &cfg)?;
    let kp32 = kp as i32;
    let mut b = s.launch_builder(&f);
    b.arg(d_o).arg(kd).arg(a).arg(dhs).arg(&mut g.dv).arg(&dp.bounds).arg(&dp.chunk_off).arg(&dp.chunk_seq);
    b.arg(&h).arg(&k).arg(&v).arg(&kp32);
    // SAFETY: arguments match gla_chunk_bwd1v_bf16's signature; x = chunk * ceil(V/64) + V tile;
    // kd is shaped like k, A n_chunks x H x 4096, dhs n_chunks x H x K x V, dv like v.
    unsafe { b.launch(cfg) }.map_err(launch_err(name, &cfg))?;
    Ok(())
}

/// Gradients written by [`gla_bwd`] (all f32).
#[derive(Debug)]
pub struct DevGrads {
    /// `[B,T,H,K]`
    pub dq: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: CudaSlice<f32>,
    /// `[B,T,H,V]`
    pub dv: CudaSlice<f32>,
    /// Shaped like g (empty for no gate).
    pub dg: CudaSlice<f32>,
    /// `[N,H,K,V]` (empty when there is no h0).
    pub dh0: CudaSlice<f32>,
}

/// Backward by the recurrent kernels: allocates (NaN-poisoned) gradients and fills them.
///
/// # Errors
/// Shape mismatch, unsupported K, launch or compile errors.
pub fn gla_bwd<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
) -> Result<DevGrads> {
    let op = "gla_bwd";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "do", p.v_len(), d_o.len())?;
    if let Some(dht) = dht {
        check_len(op, "dht", p.state_len(), dht.len())?;
    }
    if p.k() > RECURRENT_MAX_K {
        return Err(unsupported(format!("recurrent backward: K = {} > {RECURRENT_MAX_K}", p.k())));
    }
    let (n, h, k, v, gw, scale, rows) = dp.dims();
    let nv = p.v().div_ceil(REC_BV);
    let s = cuda.stream();
    let alloc = |len: usize, what: &'static str| -> Result<CudaSlice<f32>> {
        // SAFETY: the buffer is poisoned right below, before any read
        let mut b = unsafe { s.alloc::<f32>(len) }.map_err(Error::driver(format!("alloc {what} ({len} f32)")))?;
        poison(cuda, &mut b)?;
        Ok(b)
    };
    let part_len = nv * p.qk_len();
    let mut dq_part = alloc(part_len, "dq partials")?;
    let mut dk_part = alloc(part_len, "dk partials")?;
    let mut dg_part = alloc(part_len, "dg partials")?;
    // state checkpoints every REC_CK steps and one segment of recomputed states per block,
    // in per-thread slots of kpt = ceil(K/8) floats x 256 threads
    let slot = p.k().div_ceil(8) * 256;
    let nh = p.n() * p.h();
    let mut ckpt = alloc((p.rows() / REC_CK + p.n() + 1) * p.h() * nv * slot, "state checkpoints")?;
    let mut scratch = alloc(nh * nv * REC_CK * slot, "segment states")?;
    let mut g = DevGrads {
        dq: alloc(p.qk_len(), "dq")?,
        dk: alloc(p.qk_len(), "dk")?,
        dv: alloc(p.v_len(), "dv")?,
        dg: alloc(p.g_len(), "dg")?,
        dh0: alloc(if x.h0.is_some() { p.state_len() } else { 0 }, "dh0")?,
    };
    let gy = grid_y(op, p.n() * p.h())?;
    let null = 0u64;
    {
        let name = format!("gla_recurrent_bwd_{}", T::SUFFIX);
        let f = cuda.function(&name)?;
        let cfg = LaunchConfig { grid_dim: (nv as u32, gy, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        let mut b = s.launch_builder(&f);
        b.arg(x.q).arg(x.k).arg(x.v);
        match x.g {
            Some(gg) if gw > 0 => b.arg(gg),
            _ => b.arg(&null),
        };
        match x.h0 {
            Some(h0) => b.arg(h0),
            None => b.arg(&null),
        };
        b.arg(d_o);
        match dht {
            Some(d) => b.arg(d),
            None => b.arg(&null),
        };
        b.arg(&mut dq_part).arg(&mut dk_part).arg(&mut g.dv).arg(&mut dg_part);
        if x.h0.is_some() {
            b.arg(&mut g.dh0);
        } else {
            b.arg(&null);
        }
        b.arg(&mut ckpt).arg(&mut scratch);
        b.arg(&dp.bounds).arg(&n).arg(&h).arg(&k).arg(&v).arg(&gw).arg(&scale).arg(&rows);
        // SAFETY: arguments match gla_recurrent_bwd's signature; partial buffers hold NV x
        // [rows,H,K] f32, checkpoints (rows/CK + N + 1) x H x NV slots and the scratch
        // N*H*NV x CK slots, as the kernel indexes; input lengths checked above.
        unsafe { b.launch(cfg) }.map_err(launch_err(&name, &cfg))?;
    }
    {
        let name = format!("gla_recurrent_bwd_finalize_{}", T::SUFFIX);
        let f = cuda.function(&name)?;
        let cfg = LaunchConfig { grid_dim: ((p.n() * p.h()) as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        let nv32 = nv as i32;
        let mut b = s.launch_builder(&f);
        b.arg(&dq_part).arg(&dk_part).arg(&dg_part).arg(&mut g.dq).arg(&mut g.dk);
        if gw > 0 {
            b.arg(&mut g.dg);
        } else {
            b.arg(&null);
        }
        b.arg(&dp.bounds).arg(&h).arg(&k).arg(&gw).arg(&nv32).arg(&rows);
        // SAFETY: arguments match gla_recurrent_bwd_finalize's signature; one warp per (n, h)
        // reading the NV partials written above.
        unsafe { b.launch(cfg) }.map_err(launch_err(&name, &cfg))?;
    }
    Ok(g)
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
        for k in 1..=CHUNK_V2_MAX {
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
            let p = Problem::new(ProblemSpec {
                b: 1,
                t: 64,
                h: 1,
                k: 256,
                v: 256,
                gate: gla_core::GateKind::PerKey,
                scale: None,
                cu_seqlens: None,
            })
            .unwrap();
            let cfg = plan.cfg(&p, 1);
            assert!(2 * (cfg.shared_mem_bytes as usize + 1024) <= 228 * 1024, "{plan:?}: {} B", cfg.shared_mem_bytes);
            assert_eq!(cfg.grid_dim.1, 4);
            assert!(plan.name(false).starts_with("gla_chunk_h") && plan.name(true).starts_with("gla_chunk_dh"));
        }
    }

    #[test]
    fn bwd2_tiles_of_64_unless_a_per_head_dg_would_sum_more_than_two() {
        for k in 1..=CHUNK_V2_MAX {
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
    fn v2_paths() {
        assert_eq!(v2_fwd_path(&prob(128, 512)), Some(V2Path::Narrow));
        assert_eq!(v2_fwd_path(&prob(129, 7)), Some(V2Path::Wide));
        assert_eq!(v2_fwd_path(&prob(256, 256)), Some(V2Path::Wide));
        assert_eq!(v2_fwd_path(&prob(257, 64)), None);
        assert_eq!(v2_bwd_path(&prob(60, 100)), Some(V2Path::Narrow));
        assert_eq!(v2_bwd_path(&prob(48, 100)), None);
        assert_eq!(v2_bwd_path(&prob(32, 160)), Some(V2Path::Wide));
        assert_eq!(v2_bwd_path(&prob(256, 256)), Some(V2Path::Wide));
        assert_eq!(v2_bwd_path(&prob(128, 257)), None);
        assert_eq!(v2_bwd_path(&prob(257, 64)), None);
        assert!(chunk_bwd_supported::<u16>(&prob(256, 256)) && !chunk_bwd_supported::<f32>(&prob(256, 256)));
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
        // the lab bwd2 at K tiles of 64 (two blocks per SM, 1 KB reserved per block)
        assert!(chunk_bwd2_d2_smem_bytes(64) + 1024 <= 228 * 1024 / 2);
    }
}
