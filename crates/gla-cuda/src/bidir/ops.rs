//! Launchers of the bidirectional scan over device buffers: the forward ([`bidir_fwd`]: fused
//! or composed, per [`crate::dispatch::bidir`]) and the backward ([`bidir_bwd`]). Each checks
//! the buffer lengths against the problem and allocates its workspaces per call.

use cudarc::driver::CudaSlice;
use gla_core::bidir::BidirProblem;

use crate::dispatch::bidir::{self as plan, BidirAlgo};
use crate::error::Result;
use crate::ops::{self, check_len, chunk_grid, DevGrads, DevInputs, DevProblem, Elem, FwdKernel, GlaWorkspace};
use crate::runtime::Cuda;

const OP: &str = "bidir";

/// The device-side problem: the chunk tables of the sequences (shared by both directions) with
/// the half-scale GLA problem of one direction ([`BidirProblem::half`]).
#[derive(Debug)]
pub struct BidirDevProblem {
    /// The GLA problem of one direction at half scale, with its device tables.
    pub half: DevProblem,
    /// The host problem.
    pub problem: BidirProblem,
}

impl BidirDevProblem {
    /// Uploads the sequence and chunk tables of `p`.
    ///
    /// # Errors
    /// [`crate::Error::Driver`].
    pub fn new(cuda: &Cuda, p: &BidirProblem) -> Result<Self> {
        Ok(Self { half: DevProblem::new(cuda, p.half())?, problem: p.clone() })
    }
}

/// Inputs on the device: q, k, gf, gb `[B,T,H,K]`, v `[B,T,H,V]`.
#[derive(Debug, Clone, Copy)]
pub struct BidirDevInputs<'a, T> {
    /// Queries.
    pub q: &'a CudaSlice<T>,
    /// Keys.
    pub k: &'a CudaSlice<T>,
    /// Values.
    pub v: &'a CudaSlice<T>,
    /// Forward log-decays.
    pub gf: &'a CudaSlice<T>,
    /// Backward log-decays.
    pub gb: &'a CudaSlice<T>,
}

fn check_inputs<T>(dp: &BidirDevProblem, x: &BidirDevInputs<'_, T>) -> Result<()> {
    let p = &dp.problem;
    for (t, b) in [("q", x.q), ("k", x.k), ("gf", x.gf), ("gb", x.gb)] {
        check_len(OP, t, p.qk_len(), b.len())?;
    }
    check_len(OP, "v", p.v_len(), x.v.len())
}

fn dims(p: &BidirProblem) -> (i32, i32, i32) {
    (p.h() as i32, p.k() as i32, p.v() as i32)
}

/// `y = flip(x)` (`accumulate`: `y += flip(x)`, the sum in f32) over rows of `w` elements.
fn flip<T: Elem>(cuda: &Cuda, dp: &BidirDevProblem, x: &CudaSlice<T>, y: &mut CudaSlice<T>, w: usize, accumulate: bool) -> Result<()> {
    let d = &dp.half;
    if d.n_chunks == 0 {
        return Ok(());
    }
    let cfg = plan::flip_cfg(chunk_grid(OP, d.n_chunks)?, w);
    let w32 = w as i32;
    let name = format!("bidir_flip{}_{}", if accumulate { "_add" } else { "" }, T::SUFFIX);
    // SAFETY: arguments match bidir_flip{,_add}_{f32,bf16} (x, y hold rows x w elements of the
    // problem; the chunk tables cover every row); x and y are distinct buffers.
    unsafe { cuda.launch(&name, cfg, &[x, y, &d.bounds, &d.chunk_off, &d.chunk_seq, &w32]) }
}

/// A copy of `x` with every sequence reversed (rows of `w` elements).
fn flipped<T: Elem>(cuda: &Cuda, dp: &BidirDevProblem, x: &CudaSlice<T>, w: usize, what: &str) -> Result<CudaSlice<T>> {
    // SAFETY: flip writes every row of the problem; rows past the last sequence do not exist
    // (cu_seqlens ends at the packed length)
    let mut y = unsafe { cuda.alloc_uninit::<T>(x.len().max(1), what) }?;
    flip(cuda, dp, x, &mut y, w, false)?;
    Ok(y)
}

/// Forward: `o [B,T,H,V]` (dtype T) by `algo` ([`crate::dispatch::bidir`]: the fused kernels
/// for bf16 with K <= 128, else composed).
///
/// # Errors
/// Shape mismatch, unsupported shapes (those of the GLA op), launch or compile errors.
pub fn bidir_fwd<T: Elem>(cuda: &Cuda, algo: BidirAlgo, dp: &BidirDevProblem, x: &BidirDevInputs<'_, T>, o: &mut CudaSlice<T>) -> Result<()> {
    check_inputs(dp, x)?;
    let p = &dp.problem;
    check_len(OP, "o", p.v_len(), o.len())?;
    if p.rows() == 0 {
        return Ok(());
    }
    if algo == BidirAlgo::Fused && plan::fused_fwd(p, T::SUFFIX == "bf16") {
        fused_fwd(cuda, dp, x, o)
    } else {
        composed_fwd(cuda, dp, x, o)
    }
}

/// The fused forward: prep of both gates, both state walks in one launch, the combined output.
fn fused_fwd<T: Elem>(cuda: &Cuda, dp: &BidirDevProblem, x: &BidirDevInputs<'_, T>, o: &mut CudaSlice<T>) -> Result<()> {
    let p = &dp.problem;
    let d = &dp.half;
    let nc = d.n_chunks;
    if nc == 0 {
        return Ok(());
    }
    let (h, k, v) = dims(p);
    let gx = chunk_grid(OP, nc)?;
    let st = nc * p.h() * p.k() * p.v();
    let dl = nc * p.h() * p.k();
    // SAFETY: every workspace element is written by the launch before the one reading it: prep
    // writes kd* for every row and dl* for every (chunk, head, channel < K); the state walks
    // write hs* for every (chunk, head, i < K, j < V)
    let (kdf, kdb, dlf, dlb, hsf, hsb) = unsafe {
        (
            cuda.alloc_uninit::<T>(p.qk_len(), "bidir kdf")?,
            cuda.alloc_uninit::<T>(p.qk_len(), "bidir kdb")?,
            cuda.alloc_uninit::<f32>(dl, "bidir dlf")?,
            cuda.alloc_uninit::<f32>(dl, "bidir dlb")?,
            cuda.alloc_uninit::<T>(st, "bidir hsf")?,
            cuda.alloc_uninit::<T>(st, "bidir hsb")?,
        )
    };
    let (b, off, seq) = (&d.bounds, &d.chunk_off, &d.chunk_seq);
    // SAFETY: arguments match bidir_chunk_prep_bf16 (k, gf, gb shaped [rows, H, K]; kdf, kdb
    // like k; dlf, dlb chunks x H x K); one block per (chunk, head, 128 channels)
    unsafe { cuda.launch("bidir_chunk_prep_bf16", plan::prep_cfg(p, gx), &[x.k, x.gf, x.gb, &kdf, &kdb, &dlf, &dlb, b, off, seq, &h, &k])? };
    let (name, cfg) = plan::h_cfg(p, cuda.sm_count());
    let nh = (p.n() * p.h()) as i32;
    if cfg.grid_dim.2 > 65_535 {
        return Err(ops::unsupported(format!("{OP}: 2 N H = {} state walks exceed the grid's z limit 65535", cfg.grid_dim.2)));
    }
    // SAFETY: arguments match bidir_chunk_h{64,32}_bf16; hsf, hsb hold chunks x H x K x V; the
    // grid covers V and K in the plan's tiles and both walks of every (sequence, head) in z
    unsafe { cuda.launch(name, cfg, &[&kdf, &kdb, x.v, &dlf, &dlb, &hsf, &hsb, b, &d.chunk_off, &h, &k, &v, &nh])? };
    let kp = plan::kp(p);
    let (_, os_off) = plan::o_smem(kp);
    let (kp32, os32, scale) = (kp as i32, os_off as i32, p.half().scale() as f32);
    // SAFETY: arguments match bidir_chunk_o_bf16; one block per (chunk, head, 128-wide V tile),
    // smem as the kernel's layout (o_smem); hsf, hsb written by the walks above
    unsafe {
        cuda.launch(
            "bidir_chunk_o_bf16",
            plan::o_cfg(p, gx),
            &[x.q, x.k, x.v, x.gf, x.gb, &hsf, &hsb, o, b, off, seq, &h, &k, &v, &scale, &kp32, &os32],
        )
    }
}

/// The composed forward: the GLA forward (its own dispatch) at half scale on x, and on the
/// flipped copies, flip-added into o.
fn composed_fwd<T: Elem>(cuda: &Cuda, dp: &BidirDevProblem, x: &BidirDevInputs<'_, T>, o: &mut CudaSlice<T>) -> Result<()> {
    let p = &dp.problem;
    let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
    let d = &dp.half;
    let xf = DevInputs { q: x.q, k: x.k, v: x.v, g: Some(x.gf), h0: None };
    ops::gla_fwd(cuda, FwdKernel::Chunk, d, &xf, o, None)?;
    let (q, k, v, g) = (flipped(cuda, dp, x.q, kw, "q flipped")?, flipped(cuda, dp, x.k, kw, "k flipped")?, flipped(cuda, dp, x.v, vw, "v flipped")?, flipped(cuda, dp, x.gb, kw, "gb flipped")?);
    let xb = DevInputs { q: &q, k: &k, v: &v, g: Some(&g), h0: None };
    // SAFETY: written by the GLA forward below before it is read
    let mut ob = unsafe { cuda.alloc_uninit::<T>(o.len(), "o backward")? };
    ops::gla_fwd(cuda, FwdKernel::Chunk, d, &xb, &mut ob, None)?;
    flip(cuda, dp, &ob, o, vw, true)
}

/// Gradients of the backward, all f32: dq, dk, gf, gb like q; dv like v.
#[derive(Debug)]
pub struct BidirDevGrads {
    /// `[B,T,H,K]`
    pub dq: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: CudaSlice<f32>,
    /// `[B,T,H,V]`
    pub dv: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dgf: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dgb: CudaSlice<f32>,
}

/// One direction's GLA backward at half scale (chunked where the GLA dispatch has it, else
/// recurrent), into `g`.
fn gla_bwd_one<T: Elem>(cuda: &Cuda, d: &DevProblem, x: &DevInputs<'_, T>, d_o: &CudaSlice<T>, g: &mut DevGrads) -> Result<()> {
    let mut ws = GlaWorkspace::<T>::for_problem(cuda, d, None, true)?;
    if ops::chunk_bwd_supported::<T>(&d.problem) {
        ops::gla_bwd_chunk_ws(cuda, d, x, d_o, None, &mut ws, g.as_out(false), false)
    } else {
        ops::gla_bwd_ws(cuda, d, x, d_o, None, &mut ws, g.as_out(false))
    }
}

/// Backward of `L = <do, o>`: the GLA backward of each direction at half scale (the backward
/// one on flipped copies of q, k, v, gb, do), its gradients flip-added (docs/math/bidir.md).
/// Allocates the gradients and workspaces.
///
/// # Errors
/// Shape mismatch, unsupported shapes (those of the GLA op), launch or compile errors.
pub fn bidir_bwd<T: Elem>(cuda: &Cuda, dp: &BidirDevProblem, x: &BidirDevInputs<'_, T>, d_o: &CudaSlice<T>) -> Result<BidirDevGrads> {
    check_inputs(dp, x)?;
    let p = &dp.problem;
    check_len(OP, "do", p.v_len(), d_o.len())?;
    let d = &dp.half;
    let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
    let mut gf = DevGrads::alloc(cuda, p.half(), false)?;
    let mut gb = DevGrads::alloc(cuda, p.half(), false)?;
    if p.rows() > 0 {
        let xf = DevInputs { q: x.q, k: x.k, v: x.v, g: Some(x.gf), h0: None };
        gla_bwd_one(cuda, d, &xf, d_o, &mut gf)?;
        let (q, k, v, g) = (flipped(cuda, dp, x.q, kw, "q flipped")?, flipped(cuda, dp, x.k, kw, "k flipped")?, flipped(cuda, dp, x.v, vw, "v flipped")?, flipped(cuda, dp, x.gb, kw, "gb flipped")?);
        let dob = flipped(cuda, dp, d_o, vw, "do flipped")?;
        let xb = DevInputs { q: &q, k: &k, v: &v, g: Some(&g), h0: None };
        gla_bwd_one(cuda, d, &xb, &dob, &mut gb)?;
        flip(cuda, dp, &gb.dq, &mut gf.dq, kw, true)?;
        flip(cuda, dp, &gb.dk, &mut gf.dk, kw, true)?;
        flip(cuda, dp, &gb.dv, &mut gf.dv, vw, true)?;
    }
    let dgb = if p.rows() > 0 { flipped(cuda, dp, &gb.dg, kw, "dgb")? } else { gb.dg };
    Ok(BidirDevGrads { dq: gf.dq, dk: gf.dk, dv: gf.dv, dgf: gf.dg, dgb })
}
