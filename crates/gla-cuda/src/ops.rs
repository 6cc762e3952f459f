//! Typed launchers of the GLA op over device buffers: the forward, the decode step and the two
//! backwards. Each checks the buffer lengths against the [`DevProblem`] (a wrong length is an
//! error, never an out-of-bounds launch), takes its kernels and launch shapes from
//! [`crate::dispatch`] (the dispatch policy and every tuning choice), allocates the workspaces,
//! and launches through [`Cuda::launch`].
//!
//! Storage dtypes: `f32`, or bf16 held as `u16` (the upper half of an f32). States, gradients
//! and every accumulator are f32.

use cudarc::driver::{CudaSlice, DevicePtrMut, DeviceRepr, ValidAsZeroBits};

use gla_core::{GateKind, Problem};

use crate::dispatch::{self, FwdPath, CHUNK_BT, CHUNK_NARROW_MAX, CHUNK_WIDE_MAX, REC_BV, REC_CK};
pub use crate::dispatch::{chunk_bwd_path, chunk_fwd_path, ChunkPath, FwdKernel};
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
fn chunk_grid(op: &str, n_chunks: usize) -> Result<u32> {
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

/// A stream-ordered workspace of `len` elements (at least one), not initialised: every element
/// is written by an earlier launch on the stream before a later one reads it.
fn workspace<T: DeviceRepr>(cuda: &Cuda, len: usize, what: &str) -> Result<CudaSlice<T>> {
    // SAFETY: the callers' contract above: written before read, same stream
    unsafe { cuda.stream().alloc::<T>(len.max(1)) }.map_err(Error::driver(format!("alloc {what} ({len} elements)")))
}

/// Forward: `o = ` the GLA output `[B,T,H,V]` (dtype T), `ht = ` final state `[N,H,K,V]` f32,
/// by the kernels [`dispatch::fwd_path`] picks for `which`.
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
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let gy = grid_y(op, p.n() * p.h())?;
    let (name, cfg) = match dispatch::fwd_path(p, T::SUFFIX == "bf16", which).map_err(unsupported)? {
        FwdPath::Chunk { path, state_only } => return chunk_fwd(cuda, dp, x, o, ht, state_only, path),
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
    kd: &mut CudaSlice<T>,
    dl: &mut CudaSlice<f32>,
    qe: Option<&mut CudaSlice<T>>,
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
/// every chunk to a workspace, then the output pass, parallel over chunks ([`ChunkPath::Narrow`]:
/// one launch; [`ChunkPath::Wide`]: A over K tiles, then o per 64-wide V tile from the prep's qe).
fn chunk_fwd<T: Elem>(
    cuda: &Cuda,
    dp: &DevProblem,
    x: &DevInputs<'_, T>,
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
    let hs = workspace::<T>(cuda, dp.n_chunks * p.h() * p.k() * p.v(), "chunk states")?;
    let mut kd = workspace::<T>(cuda, p.qk_len(), "kd")?;
    let mut dl = workspace::<f32>(cuda, dp.n_chunks * p.h() * p.k(), "dl")?;
    // the wide output launch takes q scale exp(G) from the prep (the narrow one forms it itself)
    let mut qe = if wide { Some(workspace::<T>(cuda, p.qk_len(), "qe")?) } else { None };
    if dp.n_chunks > 0 {
        launch_prep(cuda, dp, x, &mut kd, &mut dl, qe.as_mut(), gx)?;
    }
    let plan = dispatch::HPlan::new(p, nh, cuda.sm_count());
    // SAFETY: arguments match gla_chunk_h*_bf16's signature; hs holds n_chunks x H x K x V
    // elements; the grid covers V and K in the plan's tiles and N*H in z.
    unsafe {
        cuda.launch(plan.name(false), plan.cfg(p, gz), &[&kd, x.v, &dl, &x.h0, &hs, &ht, &dp.bounds, &dp.chunk_off, &h, &k, &v])?;
    }
    if dp.n_chunks == 0 || state_only {
        return Ok(());
    }
    let kp = dispatch::k_padded(p.k());
    let kp32 = kp as i32;
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    if let (true, Some(qe)) = (wide, &qe) {
        let mut a = workspace::<T>(cuda, dp.n_chunks * p.h() * 4096, "A")?;
        launch_a_wide(cuda, dp, x, &mut a, gx)?;
        let cfg = dispatch::chunk_cfg(vtile_grid(dp, p.v(), op)?, p, 1, dispatch::chunk_ow_smem_bytes(kp));
        // SAFETY: arguments match gla_chunk_ow_bf16's signature; x = chunk * ceil(V/64) + V tile;
        // qe is shaped like q, A holds n_chunks x H x 64 x 64, hs n_chunks x H x K x V.
        return unsafe { cuda.launch("gla_chunk_ow_bf16", cfg, &[qe, x.v, &a, &hs, o, bounds, off, seq, &h, &k, &v, &kp32]) };
    }
    let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_o_smem_bytes(kp));
    let g = x.g.filter(|_| gw > 0);
    // SAFETY: arguments match gla_chunk_o_bf16's signature; one block per (global chunk, head),
    // chunk_seq / chunk_off map it to its rows; hs was written by the launch above; a_out null.
    unsafe { cuda.launch("gla_chunk_o_bf16", cfg, &[x.q, x.k, x.v, &g, &hs, o, &NULL, bounds, off, seq, &h, &k, &v, &gw, &scale, &kp32]) }
}

/// `gla_chunk_a_bf16`: A (scaled, causal, bf16 `[chunks, H, 64, 64]`) summed over the K tiles
/// of [`dispatch::k_tiles`], one block per (chunk, head).
fn launch_a_wide<T: Elem>(cuda: &Cuda, dp: &DevProblem, x: &DevInputs<'_, T>, a: &mut CudaSlice<T>, gx: u32) -> Result<()> {
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

/// The chunked backward (bf16 storage, f32 gradients; see [`chunk_bwd_supported`]): gate prep,
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
    let Some(path) = dispatch::bwd_path(p, T::SUFFIX == "bf16") else {
        return Err(unsupported(format!(
            "chunked backward: bf16 with 48 < K <= {CHUNK_NARROW_MAX} and V <= 128, or K, V <= {CHUNK_WIDE_MAX} (got {}, K = {}, V = {})",
            T::SUFFIX,
            p.k(),
            p.v()
        )));
    };
    let (_n, h, k, v, gw, scale, _rows) = dp.dims();
    let s = cuda.stream();
    let nc = dp.n_chunks;
    let kp = dispatch::k_padded(p.k());
    let kp32 = kp as i32;
    let grad = |len: usize, what: &'static str| -> Result<CudaSlice<f32>> {
        let mut b = workspace::<f32>(cuda, len, what)?;
        if poison_out {
            poison(cuda, &mut b)?;
        }
        Ok(b)
    };
    let mut g = DevGrads {
        dq: grad(p.qk_len(), "dq")?,
        dk: grad(p.qk_len(), "dk")?,
        dv: grad(p.v_len(), "dv")?,
        dg: grad(p.g_len(), "dg")?,
        dh0: grad(if x.h0.is_some() { p.state_len() } else { 0 }, "dh0")?,
    };
    let mut kd = workspace::<T>(cuda, p.qk_len(), "kd")?;
    let mut qe = workspace::<T>(cuda, p.qk_len(), "qe")?;
    let hs = workspace::<T>(cuda, nc * p.h() * p.k() * p.v(), "hs")?;
    let dhs = workspace::<T>(cuda, nc * p.h() * p.k() * p.v(), "dhs")?;
    let mut a = workspace::<T>(cuda, nc * p.h() * 4096, "A")?;
    let mut dl = workspace::<f32>(cuda, nc * p.h() * p.k(), "dl")?;
    let mut da = workspace::<f32>(cuda, nc * p.h() * 4096, "dA")?;
    let mut sd = workspace::<f32>(cuda, nc * p.h() * p.k(), "sd")?;
    let nh = p.n() * p.h();
    let (gz, gx) = (nh_grid_z(op, nh)?, chunk_grid(op, nc)?);
    let gate = x.g.filter(|_| gw > 0);
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    if nc > 0 && upto >= 1 {
        launch_prep(cuda, dp, x, &mut kd, &mut dl, Some(&mut qe), gx)?;
    }
    let plan = dispatch::HPlan::new(p, nh, cuda.sm_count());
    for rev in [false, true] {
        if upto < if rev { 3 } else { 2 } {
            return Ok(g);
        }
        let (name, cfg) = (plan.name(rev), plan.cfg(p, gz));
        // SAFETY: arguments match gla_chunk_{h,dh}*_bf16's signature; hs / dhs hold
        // n_chunks x H x K x V; the grid covers V, K in tiles and N*H in z.
        unsafe {
            if rev {
                let dh0 = x.h0.map(|_| &g.dh0);
                cuda.launch(name, cfg, &[&qe, d_o, &dl, &dht, &dhs, &dh0, bounds, off, &h, &k, &v])?;
            } else {
                cuda.launch(name, cfg, &[&kd, x.v, &dl, &x.h0, &hs, &NULL, bounds, off, &h, &k, &v])?;
            }
        }
    }
    if nc == 0 || upto < 4 {
        return Ok(g);
    }
    if p.k() > CHUNK_NARROW_MAX {
        launch_a_wide(cuda, dp, x, &mut a, gx)?;
    } else {
        let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_o_smem_bytes(kp));
        // SAFETY: gla_chunk_o_bf16 with o = null writes only A (n_chunks x H x 64 x 64) and
        // returns before reading hs (null).
        unsafe {
            cuda.launch(
                "gla_chunk_o_bf16",
                cfg,
                &[x.q, x.k, x.v, &gate, &NULL, &NULL, &a, bounds, off, seq, &h, &k, &v, &gw, &scale, &kp32],
            )?;
        }
    }
    if upto < 5 {
        return Ok(g);
    }
    if path == ChunkPath::Wide {
        launch_bwd1_wide(cuda, dp, x, d_o, &kd, &a, &hs, &dhs, &mut g, &mut da, &mut sd, gx)?;
    } else {
        let cfg = dispatch::chunk_cfg(gx, p, 1, dispatch::chunk_bwd1_smem_bytes(kp));
        // SAFETY: arguments match gla_chunk_bwd1_bf16's signature; every buffer is sized for the
        // problem and n_chunks as the kernel indexes.
        unsafe {
            cuda.launch(
                "gla_chunk_bwd1_bf16",
                cfg,
                &[x.v, d_o, &kd, &a, &hs, &dhs, &g.dv, &da, &g.dq, &g.dk, &sd, bounds, off, seq, &h, &k, &v, &kp32],
            )?;
        }
    }
    if upto < 6 {
        return Ok(g);
    }
    // one block per K tile (per channel given the full dA); the per-head gate's dg, a sum over
    // channels, is added atomically by the (at most two) tiles onto zeros
    let (name, w, tiles, smem) = dispatch::bwd2_plan(p.k(), gw as usize);
    if gw == 1 {
        s.memset_zeros(&mut g.dg).map_err(Error::driver("zero dg"))?;
    }
    let w32 = w as i32;
    let dg = (gw > 0).then_some(&g.dg);
    // SAFETY: arguments match the bwd2 entries' signature; dq, dk hold bwd1's raw products,
    // which each thread reads before it overwrites them.
    unsafe {
        cuda.launch(
            name,
            dispatch::chunk_cfg(gx, p, tiles, smem),
            &[x.q, x.k, &gate, &da, &sd, &g.dq, &g.dk, &dg, bounds, off, seq, &h, &k, &gw, &scale, &w32],
        )?;
    }
    Ok(g)
}

/// bwd1 of [`ChunkPath::Wide`]: `gla_chunk_bwd1k_bf16` (grid z over 64 key rows: raw dq, dk, sd;
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
    if p.k() > dispatch::RECURRENT_MAX_K {
        return Err(unsupported(format!("recurrent backward: K = {} > {}", p.k(), dispatch::RECURRENT_MAX_K)));
    }
    let (n, h, k, v, gw, scale, rows) = dp.dims();
    let nv = p.v().div_ceil(REC_BV);
    let alloc = |len: usize, what: &'static str| -> Result<CudaSlice<f32>> {
        // SAFETY: the buffer is poisoned right below, before any read
        let mut b = unsafe { cuda.stream().alloc::<f32>(len) }.map_err(Error::driver(format!("alloc {what} ({len} f32)")))?;
        poison(cuda, &mut b)?;
        Ok(b)
    };
    let part_len = nv * p.qk_len();
    let dq_part = alloc(part_len, "dq partials")?;
    let dk_part = alloc(part_len, "dk partials")?;
    let dg_part = alloc(part_len, "dg partials")?;
    // state checkpoints every REC_CK steps and one segment of recomputed states per block,
    // in per-thread slots of kpt = ceil(K/8) floats x 256 threads
    let slot = p.k().div_ceil(8) * 256;
    let nh = p.n() * p.h();
    let ckpt = alloc((p.rows() / REC_CK + p.n() + 1) * p.h() * nv * slot, "state checkpoints")?;
    let scratch = alloc(nh * nv * REC_CK * slot, "segment states")?;
    let g = DevGrads {
        dq: alloc(p.qk_len(), "dq")?,
        dk: alloc(p.qk_len(), "dk")?,
        dv: alloc(p.v_len(), "dv")?,
        dg: alloc(p.g_len(), "dg")?,
        dh0: alloc(if x.h0.is_some() { p.state_len() } else { 0 }, "dh0")?,
    };
    let gy = grid_y(op, nh)?;
    let gate = x.g.filter(|_| gw > 0);
    let dh0 = x.h0.map(|_| &g.dh0);
    let name = format!("gla_recurrent_bwd_{}", T::SUFFIX);
    // SAFETY: arguments match gla_recurrent_bwd's signature; partial buffers hold NV x
    // [rows,H,K] f32, checkpoints (rows/CK + N + 1) x H x NV slots and the scratch
    // N*H*NV x CK slots, as the kernel indexes; input lengths checked above.
    unsafe {
        cuda.launch(
            &name,
            dispatch::recurrent_cfg(p, gy),
            &[
                x.q, x.k, x.v, &gate, &x.h0, d_o, &dht, &dq_part, &dk_part, &g.dv, &dg_part, &dh0, &ckpt, &scratch, &dp.bounds, &n, &h, &k,
                &v, &gw, &scale, &rows,
            ],
        )?;
    }
    let name = format!("gla_recurrent_bwd_finalize_{}", T::SUFFIX);
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (nh as u32, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    let nv32 = nv as i32;
    let dg = (gw > 0).then_some(&g.dg);
    // SAFETY: arguments match gla_recurrent_bwd_finalize's signature; one warp per (n, h)
    // reading the NV partials written above.
    unsafe { cuda.launch(&name, cfg, &[&dq_part, &dk_part, &dg_part, &g.dq, &g.dk, &dg, &dp.bounds, &h, &k, &gw, &nv32, &rows])? };
    Ok(g)
}
