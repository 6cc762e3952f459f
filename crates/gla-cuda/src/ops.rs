//! Typed launchers of the GLA op over device buffers: the forward, the decode step and the two
//! backwards. Each checks the buffer lengths against the [`DevProblem`] (a wrong length is an
//! error, never an out-of-bounds launch), takes its kernels, launch shapes and workspace sizes
//! from [`crate::dispatch`] (the dispatch policy and every tuning choice), and launches through
//! [`Cuda::launch`].
//!
//! Each pass has one launcher that takes the caller's buffers and allocates nothing
//! ([`gla_fwd_ws`], [`gla_bwd_ws`], [`gla_bwd_chunk_ws`], with a [`GlaWorkspace`]) and an
//! allocating entry point that makes the workspace (and the gradients) and calls it
//! ([`gla_fwd`], [`gla_bwd`], [`gla_bwd_chunk`]).
//!
//! Storage dtypes: `f32`, or bf16 held as `u16` (the upper half of an f32). States, gradients
//! and every accumulator are f32.

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

use gla_core::{GateKind, Problem};

use crate::dispatch::{self, FwdPath, CHUNK_BT, CHUNK_NARROW_MAX, CHUNK_WIDE_MAX, REC_BV};
pub use crate::dispatch::{chunk_bwd_path, chunk_fwd_path, ChunkPath, FwdKernel, WorkspaceLens};
use crate::error::{Error, Result};
use crate::runtime::{Cuda, NULL};

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
        let bounds = cuda.upload(&b, "sequence bounds")?;
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
        let chunk_off = cuda.upload(&off, "chunk offsets")?;
        let chunk_seq = cuda.upload(&seq, "chunk sequences")?;
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

pub(crate) fn check_len(op: &'static str, tensor: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Op(gla_core::Error::ShapeMismatch { op, tensor, expected: format!("{expected} elements"), numel: expected, got }))
    }
}

/// Host buffers' lengths for the check-facing entry points: `(tensor, got, expected numel)`
/// each, `shape` the shape they belong to as the error names it.
pub(crate) fn check_lens(op: &'static str, checks: &[(&'static str, usize, usize)], shape: &str) -> Result<()> {
    for &(tensor, got, numel) in checks {
        if got != numel {
            return Err(Error::Op(gla_core::Error::ShapeMismatch { op, tensor, expected: shape.to_string(), numel, got }));
        }
    }
    Ok(())
}

pub(crate) fn unsupported(what: String) -> Error {
    Error::Op(gla_core::Error::Unsupported { backend: "cuda", what })
}

fn grid_y(op: &str, nh: usize) -> Result<u32> {
    u32::try_from(nh).ok().filter(|&x| x <= 65_535).ok_or_else(|| unsupported(format!("{op}: N*H = {nh} exceeds the grid's y limit 65535")))
}

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

/// Grid x of the chunk-parallel launches (one block per chunk), or an error naming `op`.
pub(crate) fn chunk_grid(op: &str, n_chunks: usize) -> Result<u32> {
    u32::try_from(n_chunks).ok().filter(|&x| x < i32::MAX as u32).ok_or_else(|| unsupported(format!("{op}: {n_chunks} chunks")))
}

/// Grid z of the state passes (one block per sequence and head), or an error naming `op`.
fn nh_grid_z(op: &str, nh: usize) -> Result<u32> {
    u32::try_from(nh).ok().filter(|&z| z <= 65_535).ok_or_else(|| unsupported(format!("{op}: N*H = {nh} exceeds the grid's z limit 65535")))
}

/// Grid x of the launches with one block per (chunk, 64-wide V tile): chunks x ceil(V / 64).
fn vtile_grid(dp: &DevProblem, v: usize, what: &str) -> Result<u32> {
    let nvt = v.div_ceil(64);
    u32::try_from(dp.n_chunks * nvt)
        .ok()
        .filter(|&x| x < i32::MAX as u32)
        .ok_or_else(|| unsupported(format!("{what}: {} chunks x {nvt} V tiles", dp.n_chunks)))
}

/// The workspaces of the GLA op's launches, sized by [`WorkspaceLens`] (the dispatch policy's
/// buffers for a problem and its passes), allocated once and reused by every call whose
/// problem they cover. The language model keeps one per batch shape (`backend::GpuPlan`), so
/// that a training step allocates nothing; the allocating entry points ([`gla_fwd`],
/// [`gla_bwd`], [`gla_bwd_chunk`]) make one per call.
///
/// Contents are not initialised: every launch writes what a later one reads (the recurrent
/// backward poisons its buffers before each use). One workspace serves one stream's launches
/// in order, never two at once.
#[derive(Debug)]
pub struct GlaWorkspace<T> {
    lens: WorkspaceLens,
    kd: Option<CudaSlice<T>>,
    qe: Option<CudaSlice<T>>,
    hs: Option<CudaSlice<T>>,
    dhs: Option<CudaSlice<T>>,
    a: Option<CudaSlice<T>>,
    dl: Option<CudaSlice<f32>>,
    da: Option<CudaSlice<f32>>,
    sd: Option<CudaSlice<f32>>,
    dq_part: Option<CudaSlice<f32>>,
    dk_part: Option<CudaSlice<f32>>,
    dg_part: Option<CudaSlice<f32>>,
    ckpt: Option<CudaSlice<f32>>,
    seg: Option<CudaSlice<f32>>,
}

/// A workspace buffer of `len` elements, none for 0.
fn ws_buf<U: DeviceRepr>(cuda: &Cuda, len: usize, what: &str) -> Result<Option<CudaSlice<U>>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the GlaWorkspace contract: written by an earlier launch on the stream (or poisoned)
    // before any read
    unsafe { cuda.alloc_uninit::<U>(len, what) }.map(Some)
}

/// A workspace buffer that a launch needs (present whenever [`GlaWorkspace::check`] passed).
fn ws_req<'a, U>(b: &'a Option<CudaSlice<U>>, what: &str) -> Result<&'a CudaSlice<U>> {
    b.as_ref().ok_or_else(|| unsupported(format!("GLA workspace without its {what} buffer")))
}

impl<T: Elem> GlaWorkspace<T> {
    /// Allocates the buffers of `lens` (none for a length of 0).
    ///
    /// # Errors
    /// [`Error::Driver`] (out of memory names the buffer).
    pub fn new(cuda: &Cuda, lens: WorkspaceLens) -> Result<Self> {
        let l = &lens;
        Ok(Self {
            kd: ws_buf(cuda, l.kd, "GLA kd")?,
            qe: ws_buf(cuda, l.qe, "GLA qe")?,
            hs: ws_buf(cuda, l.hs, "GLA chunk states")?,
            dhs: ws_buf(cuda, l.dhs, "GLA chunk state gradients")?,
            a: ws_buf(cuda, l.a, "GLA A")?,
            dl: ws_buf(cuda, l.dl, "GLA dl")?,
            da: ws_buf(cuda, l.da, "GLA dA")?,
            sd: ws_buf(cuda, l.sd, "GLA sd")?,
            dq_part: ws_buf(cuda, l.part, "GLA dq partials")?,
            dk_part: ws_buf(cuda, l.part, "GLA dk partials")?,
            dg_part: ws_buf(cuda, l.part, "GLA dg partials")?,
            ckpt: ws_buf(cuda, l.ckpt, "GLA state checkpoints")?,
            seg: ws_buf(cuda, l.seg, "GLA segment states")?,
            lens,
        })
    }

    /// The workspace of `dp`'s problem for the forward `fwd` (none: no forward) and, with
    /// `backward`, the backward ([`WorkspaceLens::backward`]): what [`gla_fwd_ws`],
    /// [`gla_bwd_ws`] and [`gla_bwd_chunk_ws`] need for it.
    ///
    /// # Errors
    /// [`Error::Op`] for a forward the dispatch policy refuses; [`Error::Driver`].
    pub fn for_problem(cuda: &Cuda, dp: &DevProblem, fwd: Option<FwdKernel>, backward: bool) -> Result<Self> {
        let (p, nc, bf16) = (&dp.problem, dp.n_chunks, T::SUFFIX == "bf16");
        let f = match fwd {
            Some(which) => WorkspaceLens::forward(p, nc, bf16, which).map_err(unsupported)?,
            None => WorkspaceLens::default(),
        };
        let b = if backward { WorkspaceLens::backward(p, nc, bf16) } else { WorkspaceLens::default() };
        Self::new(cuda, f.max(b))
    }

    /// The buffers' lengths.
    pub fn lens(&self) -> &WorkspaceLens {
        &self.lens
    }

    /// Refuses a workspace smaller than `need` (a launch would index past it).
    fn check(&self, op: &str, need: &WorkspaceLens) -> Result<()> {
        if self.lens.covers(need) {
            Ok(())
        } else {
            Err(unsupported(format!("{op}: the workspace {:?} does not cover the problem's {need:?}", self.lens)))
        }
    }
}

/// Forward: `o = ` the GLA output `[B,T,H,V]` (dtype T), `ht = ` final state `[N,H,K,V]` f32,
/// by the kernels [`dispatch::fwd_path`] picks for `which`; allocates its workspace
/// ([`gla_fwd_ws`] takes the caller's).
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
    // a path the policy refuses needs no workspace: gla_fwd_ws reports it after the shapes
    let lens = WorkspaceLens::forward(&dp.problem, dp.n_chunks, T::SUFFIX == "bf16", which).unwrap_or_default();
    let mut ws = GlaWorkspace::new(cuda, lens)?;
    gla_fwd_ws(cuda, which, dp, x, &mut ws, o, ht)
}

/// [`gla_fwd`] with the caller's workspace (at least [`WorkspaceLens::forward`] of the
/// problem, e.g. [`GlaWorkspace::for_problem`]); allocates nothing.
///
/// # Errors
/// As [`gla_fwd`]; [`Error::Op`] for a workspace that is too small.
pub fn gla_fwd_ws<T: Elem>(
    cuda: &Cuda,
    which: FwdKernel,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    ws: &mut GlaWorkspace<T>,
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
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let gy = grid_y(op, p.n() * p.h())?;
    let bf16 = T::SUFFIX == "bf16";
    let (name, cfg) = match dispatch::fwd_path(p, bf16, which).map_err(unsupported)? {
        FwdPath::Chunk { path, state_only } => {
            ws.check(op, &WorkspaceLens::forward(p, dp.n_chunks, bf16, which).map_err(unsupported)?)?;
            return chunk_fwd(cuda, dp, x, ws, o, ht, state_only, path);
        }
        FwdPath::Recurrent => (format!("gla_recurrent_fwd_{}", T::SUFFIX), dispatch::recurrent_cfg(p, gy)),
        FwdPath::ChunkF32 => (format!("gla_chunk_fwd_{}", T::SUFFIX), dispatch::chunk_f32_cfg(p, gy)),
    };
    // SAFETY: the argument list matches gla_recurrent_fwd_* / gla_chunk_fwd_f32 (pointers to
    // buffers whose lengths were checked above against the problem, or null where the kernel
    // tests for null; i32 dims, f32 scale); the grid covers V in tiles of BV and N*H in y.
    unsafe { cuda.launch(&name, cfg, &[x.q, x.k, x.v, &x.g.filter(|_| gw > 0), &x.h0, o, &ht, &dp.bounds, &h, &k, &v, &gw, &scale]) }
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
    dispatch::fwd_path(p, T::SUFFIX == "bf16", FwdKernel::Recurrent).map_err(unsupported)?;
    let cfg = dispatch::recurrent_cfg(p, grid_y(op, p.n() * p.h())?);
    let name = format!("gla_recurrent_decode_{}", T::SUFFIX);
    // SAFETY: the arguments match gla_recurrent_decode's signature; q/k/v/g/o lengths were
    // checked against the problem; the state table's contract is the caller's (above)
    unsafe { cuda.launch(&name, cfg, &[x.q, x.k, x.v, &x.g.filter(|_| gw > 0), &states, o, &dp.bounds, &h, &k, &v, &gw, &scale]) }
}

/// The gate prep launch (`gla_chunk_prep8_bf16` or `gla_chunk_prep_bf16`): kd and dl, and qe
/// when given.
fn launch_prep<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    kd: &CudaSlice<T>,
    dl: &CudaSlice<f32>,
    qe: Option<&CudaSlice<T>>,
    gx: u32,
) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, _v, gw, scale, _rows) = dp.dims();
    let (name, cfg) = dispatch::prep_cfg(p, gx);
    let q = qe.is_some().then_some(x.q);
    let g = x.g.filter(|_| gw > 0);
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    // SAFETY: arguments match gla_chunk_prep{8,}_bf16's signature (the 16-byte prep takes no gw;
    // kd, qe shaped like k, q; dl n_chunks x H x K); one block per (chunk, head, 128 channels).
    unsafe {
        if dispatch::prep8(p) {
            cuda.launch(name, cfg, &[x.k, &g, &q, kd, dl, &qe, bounds, off, seq, &h, &k, &scale])
        } else {
            cuda.launch(name, cfg, &[x.k, &g, &q, kd, dl, &qe, bounds, off, seq, &h, &k, &gw, &scale])
        }
    }
}

/// The chunked forward (bf16, K <= 256): gate prep, state pass writing the bf16 state entering
/// every chunk to the workspace, then the output pass, parallel over chunks ([`ChunkPath::Narrow`]:
/// one launch; [`ChunkPath::Wide`]: A over K tiles, then o per 64-wide V tile from the prep's qe).
/// The workspace was checked against [`WorkspaceLens::forward`].
#[allow(clippy::too_many_arguments)]
fn chunk_fwd<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    ws: &GlaWorkspace<T>,
    o: &mut CudaSlice<T>,
    ht: Option<&mut CudaSlice<f32>>,
    state_only: bool,
    path: ChunkPath,
) -> Result<()> {
    let op = "chunked forward";
    let p = &dp.problem;
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let wide = path == ChunkPath::Wide;
    let nh = p.n() * p.h();
    let (gz, gx) = (nh_grid_z(op, nh)?, chunk_grid(op, dp.n_chunks)?);
    let (hs, kd, dl) = (ws_req(&ws.hs, "hs")?, ws_req(&ws.kd, "kd")?, ws_req(&ws.dl, "dl")?);
    // the wide output launch takes q scale exp(G) from the prep (the narrow one forms it itself)
    let qe = if wide { Some(ws_req(&ws.qe, "qe")?) } else { None };
    if dp.n_chunks > 0 {
        launch_prep(cuda, dp, x, kd, dl, qe, gx)?;
    }
    let plan = dispatch::HPlan::new(p, nh, cuda.sm_count());
    // SAFETY: arguments match gla_chunk_h*_bf16's signature; hs holds n_chunks x H x K x V
    // elements; the grid covers V and K in the plan's tiles and N*H in z.
    unsafe {
        cuda.launch(plan.name(false), plan.cfg(p, gz), &[kd, x.v, dl, &x.h0, hs, &ht, &dp.bounds, &dp.chunk_off, &h, &k, &v])?;
    }
    if dp.n_chunks == 0 || state_only {
        return Ok(());
    }
    let kp = dispatch::k_padded(p.k());
    let kp32 = kp as i32;
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    if let Some(qe) = qe {
        let a = ws_req(&ws.a, "A")?;
        launch_a_wide(cuda, dp, x, a, gx)?;
        let cfg = dispatch::chunk_cfg(vtile_grid(dp, p.v(), op)?, p, 1, dispatch::chunk_ow_smem_bytes(kp));
        // SAFETY: arguments match gla_chunk_ow_bf16's signature; x = chunk * ceil(V/64) + V tile;
        // qe is shaped like q, A holds n_chunks x H x 64 x 64, hs n_chunks x H x K x V.
        return unsafe { cuda.launch("gla_chunk_ow_bf16", cfg, &[qe, x.v, a, hs, o, bounds, off, seq, &h, &k, &v, &kp32]) };
    }
    let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_o_smem_bytes(kp));
    let g = x.g.filter(|_| gw > 0);
    // SAFETY: arguments match gla_chunk_o_bf16's signature; one block per (global chunk, head),
    // chunk_seq / chunk_off map it to its rows; hs was written by the launch above; a_out null.
    unsafe { cuda.launch("gla_chunk_o_bf16", cfg, &[x.q, x.k, x.v, &g, hs, o, &NULL, bounds, off, seq, &h, &k, &v, &gw, &scale, &kp32]) }
}

/// `gla_chunk_a_bf16`: A (scaled, causal, bf16 `[chunks, H, 64, 64]`) summed over the K tiles
/// of [`dispatch::k_tiles`], one block per (chunk, head).
fn launch_a_wide<T: Elem>(cuda: &Cuda, dp: &DevProblem, x: &DevInputs<'_, T>, a: &CudaSlice<T>, gx: u32) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, _v, gw, scale, _rows) = dp.dims();
    let (kt, _) = dispatch::k_tiles(p.k());
    let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_o_smem_bytes(kt));
    let kt32 = kt as i32;
    let g = x.g.filter(|_| gw > 0);
    // SAFETY: arguments match gla_chunk_a_bf16's signature; the smem is the output pass's layout
    // at the tile width kt <= 128, which the kernel loops over; A holds n_chunks x H x 4096.
    unsafe {
        cuda.launch("gla_chunk_a_bf16", cfg, &[x.q, x.k, &g, a, &dp.bounds, &dp.chunk_off, &dp.chunk_seq, &h, &k, &gw, &scale, &kt32])
    }
}

/// Whether [`gla_bwd_chunk`] takes this problem: bf16 storage and a [`chunk_bwd_path`]
/// ([`dispatch::bwd_path`]).
pub fn chunk_bwd_supported<T: Elem>(p: &Problem) -> bool {
    dispatch::bwd_path(p, T::SUFFIX == "bf16").is_some()
}

/// Gradients written by the backwards (all f32), owned: what the allocating entry points
/// ([`gla_bwd`], [`gla_bwd_chunk`]) return.
#[derive(Debug)]
pub struct DevGrads {
    /// `[B,T,H,K]`
    pub dq: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: CudaSlice<f32>,
    /// `[B,T,H,V]`
    pub dv: CudaSlice<f32>,
    /// Shaped like g (one element for no gate).
    pub dg: CudaSlice<f32>,
    /// `[N,H,K,V]` (one element when there is no h0).
    pub dh0: CudaSlice<f32>,
}

impl DevGrads {
    /// Gradient buffers for problem `p` (with `has_h0`: an initial state), not initialised:
    /// the backwards write every element (and poison them first where they say so).
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn alloc(cuda: &Cuda, p: &Problem, has_h0: bool) -> Result<Self> {
        // SAFETY: a backward writes every element of the gradients it is given before they are
        // read (the backwards' contract)
        let grad = |len: usize, what: &str| unsafe { cuda.alloc_uninit::<f32>(len.max(1), what) };
        Ok(Self {
            dq: grad(p.qk_len(), "dq")?,
            dk: grad(p.qk_len(), "dk")?,
            dv: grad(p.v_len(), "dv")?,
            dg: grad(p.g_len(), "dg")?,
            dh0: grad(if has_h0 { p.state_len() } else { 0 }, "dh0")?,
        })
    }

    /// The buffers as a backward's outputs (`dh0` given when `has_h0`).
    pub fn as_out(&mut self, has_h0: bool) -> DevGradsMut<'_> {
        DevGradsMut { dq: &mut self.dq, dk: &mut self.dk, dv: &mut self.dv, dg: &mut self.dg, dh0: has_h0.then_some(&mut self.dh0) }
    }
}

/// The caller's gradient buffers a backward writes (`=`, all f32): dq, dk `[B,T,H,K]`, dv
/// `[B,T,H,V]`, dg shaped like g (any length for no gate: not touched), dh0 `[N,H,K,V]` (given
/// exactly when the inputs have an h0).
#[derive(Debug)]
pub struct DevGradsMut<'a> {
    /// `[B,T,H,K]`
    pub dq: &'a mut CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: &'a mut CudaSlice<f32>,
    /// `[B,T,H,V]`
    pub dv: &'a mut CudaSlice<f32>,
    /// Shaped like g.
    pub dg: &'a mut CudaSlice<f32>,
    /// `[N,H,K,V]` when the inputs have an h0.
    pub dh0: Option<&'a mut CudaSlice<f32>>,
}

impl DevGradsMut<'_> {
    fn check<T>(&self, op: &'static str, dp: &DevProblem, x: &DevInputs<'_, T>) -> Result<()> {
        let p = &dp.problem;
        check_len(op, "dq", p.qk_len(), self.dq.len())?;
        check_len(op, "dk", p.qk_len(), self.dk.len())?;
        check_len(op, "dv", p.v_len(), self.dv.len())?;
        if p.g_len() > 0 {
            check_len(op, "dg", p.g_len(), self.dg.len())?;
        }
        if x.h0.is_some() {
            check_len(op, "dh0", p.state_len(), self.dh0.as_ref().map_or(0, |d| d.len()))?;
        }
        Ok(())
    }

    /// dh0 as a launch argument: null without an h0.
    fn dh0_arg<T>(&self, x: &DevInputs<'_, T>) -> Option<&CudaSlice<f32>> {
        self.dh0.as_deref().filter(|_| x.h0.is_some())
    }

    /// Fills every buffer with NaN ([`poison`]).
    fn poison(&mut self, cuda: &Cuda) -> Result<()> {
        for b in [&mut *self.dq, &mut *self.dk, &mut *self.dv, &mut *self.dg] {
            poison(cuda, b)?;
        }
        if let Some(d) = self.dh0.as_deref_mut() {
            poison(cuda, d)?;
        }
        Ok(())
    }
}

/// The chunked backward (bf16 storage, f32 gradients; see [`chunk_bwd_supported`]): gate prep,
/// state pass, state-gradient pass, A, then two chunk-parallel gradient launches; allocates its
/// gradients and workspace ([`gla_bwd_chunk_ws`] takes the caller's). Gradients are
/// NaN-poisoned first when `poison_out` (checks), left unfilled otherwise (every element is
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
/// six run; [`gla_bwd_chunk`] runs them all). Allocates like [`gla_bwd_chunk`].
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
    let p = &dp.problem;
    // a problem the chunked path refuses needs no workspace: the launcher reports it
    let lens = if chunk_bwd_supported::<T>(p) { WorkspaceLens::chunk_backward(p, dp.n_chunks) } else { WorkspaceLens::default() };
    let mut ws = GlaWorkspace::new(cuda, lens)?;
    let mut g = DevGrads::alloc(cuda, p, x.h0.is_some())?;
    chunk_bwd(cuda, dp, x, d_o, dht, &mut ws, g.as_out(x.h0.is_some()), poison_out, upto)?;
    Ok(g)
}

/// [`gla_bwd_chunk`] into the caller's gradients `g` with the caller's workspace (at least
/// [`WorkspaceLens::chunk_backward`] of the problem, e.g. [`GlaWorkspace::for_problem`]);
/// allocates nothing.
///
/// # Errors
/// As [`gla_bwd_chunk`]; [`Error::Op`] for gradients of the wrong lengths or a workspace that
/// is too small.
#[allow(clippy::too_many_arguments)]
pub fn gla_bwd_chunk_ws<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    ws: &mut GlaWorkspace<T>,
    g: DevGradsMut<'_>,
    poison_out: bool,
) -> Result<()> {
    chunk_bwd(cuda, dp, x, d_o, dht, ws, g, poison_out, usize::MAX)
}

/// The chunked backward's launches, the first `upto` of them ([`gla_bwd_chunk_stages`]).
#[allow(clippy::too_many_arguments)]
fn chunk_bwd<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    ws: &mut GlaWorkspace<T>,
    mut g: DevGradsMut<'_>,
    poison_out: bool,
    upto: usize,
) -> Result<()> {
    let op = "gla_bwd_chunk";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "do", p.v_len(), d_o.len())?;
    if let Some(dht) = dht {
        check_len(op, "dht", p.state_len(), dht.len())?;
    }
    let Some(path) = dispatch::bwd_path(p, T::SUFFIX == "bf16") else {
        return Err(unsupported(format!(
            "chunked backward: bf16 with K <= {CHUNK_NARROW_MAX} and V <= 128, or K, V <= {CHUNK_WIDE_MAX} (got {}, K = {}, V = {})",
            T::SUFFIX,
            p.k(),
            p.v()
        )));
    };
    g.check(op, dp, x)?;
    ws.check(op, &WorkspaceLens::chunk_backward(p, dp.n_chunks))?;
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let s = cuda.stream();
    let nc = dp.n_chunks;
    let kp = dispatch::k_padded(p.k());
    let kp32 = kp as i32;
    if poison_out {
        g.poison(cuda)?;
    }
    let ws = &*ws;
    let (kd, qe, hs, dhs) = (ws_req(&ws.kd, "kd")?, ws_req(&ws.qe, "qe")?, ws_req(&ws.hs, "hs")?, ws_req(&ws.dhs, "dhs")?);
    let (a, dl, da, sd) = (ws_req(&ws.a, "A")?, ws_req(&ws.dl, "dl")?, ws_req(&ws.da, "dA")?, ws_req(&ws.sd, "sd")?);
    let nh = p.n() * p.h();
    let (gz, gx) = (nh_grid_z(op, nh)?, chunk_grid(op, nc)?);
    let gate = x.g.filter(|_| gw > 0);
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    if nc > 0 && upto >= 1 {
        launch_prep(cuda, dp, x, kd, dl, Some(qe), gx)?;
    }
    let plan = dispatch::HPlan::new(p, nh, cuda.sm_count());
    for rev in [false, true] {
        if upto < if rev { 3 } else { 2 } {
            return Ok(());
        }
        let (name, cfg) = (plan.name(rev), plan.cfg(p, gz));
        // SAFETY: arguments match gla_chunk_{h,dh}*_bf16's signature; hs / dhs hold
        // n_chunks x H x K x V; the grid covers V, K in tiles and N*H in z.
        unsafe {
            if rev {
                let dh0 = g.dh0_arg(x);
                cuda.launch(name, cfg, &[qe, d_o, dl, &dht, dhs, &dh0, bounds, off, &h, &k, &v])?;
            } else {
                cuda.launch(name, cfg, &[kd, x.v, dl, &x.h0, hs, &NULL, bounds, off, &h, &k, &v])?;
            }
        }
    }
    if nc == 0 || upto < 4 {
        return Ok(());
    }
    if p.k() > CHUNK_NARROW_MAX {
        launch_a_wide(cuda, dp, x, a, gx)?;
    } else {
        let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_o_smem_bytes(kp));
        // SAFETY: gla_chunk_o_bf16 with o = null writes only A (n_chunks x H x 64 x 64) and
        // returns before reading hs (null).
        unsafe {
            cuda.launch(
                "gla_chunk_o_bf16",
                cfg,
                &[x.q, x.k, x.v, &gate, &NULL, &NULL, a, bounds, off, seq, &h, &k, &v, &gw, &scale, &kp32],
            )?;
        }
    }
    if upto < 5 {
        return Ok(());
    }
    if path == ChunkPath::Wide {
        launch_bwd1_wide(cuda, dp, x, d_o, [kd, a, hs, dhs], &g, [da, sd], gx)?;
    } else {
        let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_bwd1_smem_bytes(kp));
        // SAFETY: arguments match gla_chunk_bwd1_bf16's signature; every buffer is sized for the
        // problem and n_chunks as the kernel indexes.
        unsafe {
            cuda.launch(
                "gla_chunk_bwd1_bf16",
                cfg,
                &[x.v, d_o, kd, a, hs, dhs, &g.dv, da, &g.dq, &g.dk, sd, bounds, off, seq, &h, &k, &v, &kp32],
            )?;
        }
    }
    if upto < 6 {
        return Ok(());
    }
    // one block per K tile (per channel given the full dA); the per-head gate's dg, a sum over
    // channels, is added atomically by the (at most two) tiles onto zeros
    let (name, w, tiles, smem) = dispatch::bwd2_plan(p.k(), gw as usize);
    if gw == 1 {
        s.memset_zeros(&mut *g.dg).map_err(Error::driver("zero dg"))?;
    }
    let w32 = w as i32;
    let dg = (gw > 0).then_some(&g.dg);
    // SAFETY: arguments match the bwd2 entries' signature; dq, dk hold bwd1's raw products,
    // which each thread reads before it overwrites them.
    unsafe {
        cuda.launch(
            name,
            dispatch::chunk_cfg(gx, p, tiles, smem),
            &[x.q, x.k, &gate, da, sd, &g.dq, &g.dk, &dg, bounds, off, seq, &h, &k, &gw, &scale, &w32],
        )
    }
}

/// bwd1 of [`ChunkPath::Wide`]: `gla_chunk_bwd1k_bf16` (grid z over 64 key rows: raw dq, dk, sd;
/// dA from z = 0) and `gla_chunk_bwd1v_bf16` (x over chunk and 64-wide V tile: dv). `ins`: kd,
/// A, hs, dhs written by the earlier launches; `outs`: dA, sd.
#[allow(clippy::too_many_arguments)]
fn launch_bwd1_wide<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    [kd, a, hs, dhs]: [&CudaSlice<T>; 4],
    g: &DevGradsMut<'_>,
    [da, sd]: [&CudaSlice<f32>; 2],
    gx: u32,
) -> Result<()> {
    let p = &dp.problem;
    let (_n, h, k, v, _gw, _scale, _rows) = dp.dims();
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    let cfg = dispatch::chunk_cfg(gx, p, p.k().div_ceil(64), dispatch::chunk_bwd1k_smem_bytes());
    // SAFETY: arguments match gla_chunk_bwd1k_bf16's signature; hs, dhs hold n_chunks x H x K
    // x V, dA n_chunks x H x 4096, sd n_chunks x H x K; the grid covers K in 64-row blocks.
    unsafe { cuda.launch("gla_chunk_bwd1k_bf16", cfg, &[x.v, d_o, hs, dhs, da, &g.dq, &g.dk, sd, bounds, off, seq, &h, &k, &v])? };
    let kp = dispatch::k_padded(p.k());
    let kp32 = kp as i32;
    let cfg = dispatch::chunk_cfg(vtile_grid(dp, p.v(), "chunked backward")?, p, 1, dispatch::chunk_bwd1v_smem_bytes(kp));
    // SAFETY: arguments match gla_chunk_bwd1v_bf16's signature; x = chunk * ceil(V/64) + V tile;
    // kd is shaped like k, A n_chunks x H x 4096, dhs n_chunks x H x K x V, dv like v.
    unsafe { cuda.launch("gla_chunk_bwd1v_bf16", cfg, &[d_o, kd, a, dhs, &g.dv, bounds, off, seq, &h, &k, &v, &kp32]) }
}

/// Backward by the recurrent kernels: allocates (NaN-poisoned) gradients and its workspace and
/// fills them ([`gla_bwd_ws`] takes the caller's).
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
    let p = &dp.problem;
    // a K the kernels refuse needs no workspace: the launcher reports it
    let lens = if p.k() <= dispatch::RECURRENT_MAX_K { WorkspaceLens::recurrent_backward(p) } else { WorkspaceLens::default() };
    let mut ws = GlaWorkspace::new(cuda, lens)?;
    let mut g = DevGrads::alloc(cuda, p, x.h0.is_some())?;
    gla_bwd_ws(cuda, dp, x, d_o, dht, &mut ws, g.as_out(x.h0.is_some()))?;
    Ok(g)
}

/// [`gla_bwd`] into the caller's gradients `g` (NaN-poisoned first) with the caller's workspace
/// (at least [`WorkspaceLens::recurrent_backward`] of the problem, e.g.
/// [`GlaWorkspace::for_problem`]); allocates nothing.
///
/// # Errors
/// As [`gla_bwd`]; [`Error::Op`] for gradients of the wrong lengths or a workspace that is too
/// small.
pub fn gla_bwd_ws<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    ws: &mut GlaWorkspace<T>,
    mut g: DevGradsMut<'_>,
) -> Result<()> {
    let op = "gla_bwd";
    check_inputs(op, dp, x)?;
    let p = &dp.problem;
    check_len(op, "do", p.v_len(), d_o.len())?;
    if let Some(dht) = dht {
        check_len(op, "dht", p.state_len(), dht.len())?;
    }
    if p.k() > dispatch::RECURRENT_MAX_K {
        return Err(unsupported(format!("recurrent backward: K = {} > {}", p.k(), dispatch::RECURRENT_MAX_K)));
    }
    g.check(op, dp, x)?;
    ws.check(op, &WorkspaceLens::recurrent_backward(p))?;
    let (n, h, k, v, gw, scale, rows) = dp.dims();
    let nv = p.v().div_ceil(REC_BV);
    // every buffer the kernels write is poisoned first, so that an unwritten element shows
    for b in [&mut ws.dq_part, &mut ws.dk_part, &mut ws.dg_part, &mut ws.ckpt, &mut ws.seg].into_iter().flatten() {
        poison(cuda, b)?;
    }
    g.poison(cuda)?;
    let ws = &*ws;
    let (dq_part, dk_part, dg_part) =
        (ws_req(&ws.dq_part, "dq partials")?, ws_req(&ws.dk_part, "dk partials")?, ws_req(&ws.dg_part, "dg partials")?);
    let (ckpt, scratch) = (ws_req(&ws.ckpt, "state checkpoints")?, ws_req(&ws.seg, "segment states")?);
    let nh = p.n() * p.h();
    let gy = grid_y(op, nh)?;
    let gate = x.g.filter(|_| gw > 0);
    let dh0 = g.dh0_arg(x);
    let name = format!("gla_recurrent_bwd_{}", T::SUFFIX);
    // SAFETY: arguments match gla_recurrent_bwd's signature; partial buffers hold NV x
    // [rows,H,K] f32, checkpoints (rows/CK + N + 1) x H x NV slots and the scratch
    // N*H*NV x CK slots, as the kernel indexes (WorkspaceLens::recurrent_backward, checked
    // above); input and gradient lengths checked above.
    unsafe {
        cuda.launch(
            &name,
            dispatch::recurrent_cfg(p, gy),
            &[
                x.q, x.k, x.v, &gate, &x.h0, d_o, &dht, dq_part, dk_part, &g.dv, dg_part, &dh0, ckpt, scratch, &dp.bounds, &n, &h, &k, &v,
                &gw, &scale, &rows,
            ],
        )?;
    }
    let name = format!("gla_recurrent_bwd_finalize_{}", T::SUFFIX);
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (nh as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    let nv32 = nv as i32;
    let dg = (gw > 0).then_some(&g.dg);
    // SAFETY: arguments match gla_recurrent_bwd_finalize's signature; one warp per (n, h)
    // reading the NV partials written above.
    unsafe { cuda.launch(&name, cfg, &[dq_part, dk_part, dg_part, &g.dq, &g.dk, &dg, &dp.bounds, &h, &k, &gw, &nv32, &rows]) }
}
