//! Launchers of the bidirectional scan over device buffers: the forward ([`bidir_fwd_ws`]: fused
//! or composed, per [`crate::dispatch::bidir`]) and the backward ([`bidir_bwd_ws`]), each with a
//! caller-held [`BidirWorkspace`] (allocating nothing), and the allocating entry points
//! [`bidir_fwd`], [`bidir_bwd`]. Each checks the buffer lengths against the problem.

use cudarc::driver::CudaSlice;
use gla_core::bidir::BidirProblem;

use crate::dispatch::bidir::{self as plan, BidirAlgo};
use crate::error::Result;
use crate::ops::{self, check_len, chunk_grid, DevGrads, DevGradsMut, DevInputs, DevProblem, Elem, FwdKernel, GlaWorkspace};
use crate::runtime::{Cuda, NULL};

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

/// The fused paths' buffers shared by the forward and the backward: kd of each direction (like
/// k), exp of each direction's chunk gate sum (`[chunks, H, K]` f32), each direction's state
/// entering every chunk (`[chunks, H, K, V]`).
#[derive(Debug)]
struct FusedBufs<T> {
    kd: [CudaSlice<T>; 2],
    dl: [CudaSlice<f32>; 2],
    hs: [CudaSlice<T>; 2],
}

/// The fused backward's own buffers.
#[derive(Debug)]
struct FusedBwdBufs<T> {
    /// q scale exp(G) of each direction (like q).
    qe: [CudaSlice<T>; 2],
    /// The gradient of each direction's state leaving every chunk.
    dhs: [CudaSlice<T>; 2],
    /// A of each direction, `[chunks, H, 64, 64]`.
    a: [CudaSlice<T>; 2],
    /// dA and sd of the direction being differentiated (f32).
    da: CudaSlice<f32>,
    sd: CudaSlice<f32>,
    /// The forward scan's dv, dq, dk (f32), added into the backward scan's.
    dvf: CudaSlice<f32>,
    dqf: CudaSlice<f32>,
    dkf: CudaSlice<f32>,
}

/// The composed paths' buffers.
#[derive(Debug)]
struct ComposedBufs<T> {
    /// q, k, v, gb, do with every sequence reversed.
    flip: [CudaSlice<T>; 5],
    /// The backward direction's output (reversed rows).
    ob: CudaSlice<T>,
    /// The GLA op's workspace (one direction; the backward's too when `backward`).
    gla: GlaWorkspace<T>,
    /// The backward direction's gradients (reversed rows), when `backward`.
    grads: Option<DevGrads>,
}

/// The buffers of the passes one problem runs ([`BidirWorkspace::new`]: every path, both
/// passes; [`BidirWorkspace::for_passes`]: what one algorithm's forward, and optionally its
/// backward, launch on this problem), allocated once; contents uninitialised: every launch
/// writes what a later one reads. A pass whose buffers are missing is refused (typed error).
#[derive(Debug)]
pub struct BidirWorkspace<T> {
    fused: Option<FusedBufs<T>>,
    fused_bwd: Option<FusedBwdBufs<T>>,
    composed: Option<ComposedBufs<T>>,
    /// The problem the buffers are sized for (rows, chunks, H, K, V).
    sized: (usize, usize, usize, usize, usize),
}

impl<T: Elem> BidirWorkspace<T> {
    /// Allocates the buffers of every path of `dp`'s problem, forward and backward.
    ///
    /// # Errors
    /// [`crate::Error::Driver`] (out of memory names the buffer); [`crate::Error::Op`] for a
    /// problem the GLA op refuses.
    pub fn new(cuda: &Cuda, dp: &BidirDevProblem) -> Result<Self> {
        let mut ws = Self { fused: None, fused_bwd: None, composed: None, sized: Self::key(dp) };
        ws.fused = Some(Self::alloc_fused(cuda, dp)?);
        ws.fused_bwd = Some(Self::alloc_fused_bwd(cuda, dp)?);
        ws.composed = Some(Self::alloc_composed(cuda, dp, true)?);
        Ok(ws)
    }

    /// Allocates what `algo`'s forward (and with `backward` its backward) runs on `dp`'s problem
    /// ([`crate::dispatch::bidir`]): the fused paths' buffers, or the composed ones.
    ///
    /// # Errors
    /// As [`BidirWorkspace::new`].
    pub fn for_passes(cuda: &Cuda, dp: &BidirDevProblem, algo: BidirAlgo, backward: bool) -> Result<Self> {
        let mut ws = Self { fused: None, fused_bwd: None, composed: None, sized: Self::key(dp) };
        ws.ensure(cuda, dp, algo, backward)?;
        Ok(ws)
    }

    /// Adds the buffers `algo`'s forward (and with `backward` its backward) needs that this
    /// workspace lacks (a plan made by a forward, then run backwards).
    ///
    /// # Errors
    /// As [`BidirWorkspace::new`]; a workspace of another problem.
    pub fn ensure(&mut self, cuda: &Cuda, dp: &BidirDevProblem, algo: BidirAlgo, backward: bool) -> Result<()> {
        self.check(dp)?;
        let p = &dp.problem;
        let bf16 = T::SUFFIX == "bf16";
        let fwd_fused = algo == BidirAlgo::Fused && plan::fused_fwd(p, bf16);
        let bwd_fused = backward && algo == BidirAlgo::Fused && plan::fused_bwd(p, bf16);
        if (fwd_fused || bwd_fused) && self.fused.is_none() {
            self.fused = Some(Self::alloc_fused(cuda, dp)?);
        }
        if bwd_fused && self.fused_bwd.is_none() {
            self.fused_bwd = Some(Self::alloc_fused_bwd(cuda, dp)?);
        }
        let bwd_composed = backward && !bwd_fused;
        if (!fwd_fused || bwd_composed) && self.composed.as_ref().is_none_or(|c| bwd_composed && c.grads.is_none()) {
            self.composed = Some(Self::alloc_composed(cuda, dp, bwd_composed)?);
        }
        Ok(())
    }

    fn alloc_fused(cuda: &Cuda, dp: &BidirDevProblem) -> Result<FusedBufs<T>> {
        let p = &dp.problem;
        let nc = dp.half.n_chunks.max(1);
        let (qk, st, dl) = (p.qk_len().max(1), nc * p.h() * p.k() * p.v(), nc * p.h() * p.k());
        // SAFETY: the BidirWorkspace contract: written by an earlier launch before any read
        let buf = |n: usize, what: &str| unsafe { cuda.alloc_uninit::<T>(n, what) };
        // SAFETY: as buf
        let fbuf = |n: usize, what: &str| unsafe { cuda.alloc_uninit::<f32>(n, what) };
        Ok(FusedBufs {
            kd: [buf(qk, "bidir kdf")?, buf(qk, "bidir kdb")?],
            dl: [fbuf(dl, "bidir dlf")?, fbuf(dl, "bidir dlb")?],
            hs: [buf(st, "bidir hsf")?, buf(st, "bidir hsb")?],
        })
    }

    fn alloc_fused_bwd(cuda: &Cuda, dp: &BidirDevProblem) -> Result<FusedBwdBufs<T>> {
        let p = &dp.problem;
        let nc = dp.half.n_chunks.max(1);
        let (qk, vl, st, dl) = (p.qk_len().max(1), p.v_len().max(1), nc * p.h() * p.k() * p.v(), nc * p.h() * p.k());
        // SAFETY: the BidirWorkspace contract: written by an earlier launch before any read
        let buf = |n: usize, what: &str| unsafe { cuda.alloc_uninit::<T>(n, what) };
        // SAFETY: as buf
        let fbuf = |n: usize, what: &str| unsafe { cuda.alloc_uninit::<f32>(n, what) };
        Ok(FusedBwdBufs {
            qe: [buf(qk, "bidir qef")?, buf(qk, "bidir qeb")?],
            dhs: [buf(st, "bidir dhsf")?, buf(st, "bidir dhsb")?],
            a: [buf(nc * p.h() * 4096, "bidir Af")?, buf(nc * p.h() * 4096, "bidir Ab")?],
            da: fbuf(nc * p.h() * 4096, "bidir dA")?,
            sd: fbuf(dl, "bidir sd")?,
            dvf: fbuf(vl, "bidir dv forward")?,
            dqf: fbuf(qk, "bidir dq forward")?,
            dkf: fbuf(qk, "bidir dk forward")?,
        })
    }

    fn alloc_composed(cuda: &Cuda, dp: &BidirDevProblem, backward: bool) -> Result<ComposedBufs<T>> {
        let p = &dp.problem;
        let (qk, vl) = (p.qk_len().max(1), p.v_len().max(1));
        // SAFETY: the BidirWorkspace contract: written by an earlier launch before any read
        let buf = |n: usize, what: &str| unsafe { cuda.alloc_uninit::<T>(n, what) };
        Ok(ComposedBufs {
            flip: [buf(qk, "q flipped")?, buf(qk, "k flipped")?, buf(vl, "v flipped")?, buf(qk, "gb flipped")?, buf(vl, "do flipped")?],
            ob: buf(vl, "o backward")?,
            gla: GlaWorkspace::for_problem(cuda, &dp.half, Some(FwdKernel::Chunk), backward)?,
            grads: if backward { Some(DevGrads::alloc(cuda, p.half(), false)?) } else { None },
        })
    }

    fn key(dp: &BidirDevProblem) -> (usize, usize, usize, usize, usize) {
        let p = &dp.problem;
        (p.rows(), dp.half.n_chunks, p.h(), p.k(), p.v())
    }
    fn check(&self, dp: &BidirDevProblem) -> Result<()> {
        if self.sized == Self::key(dp) {
            Ok(())
        } else {
            Err(ops::unsupported(format!("{OP}: a workspace sized for {:?} given a problem of {:?}", self.sized, Self::key(dp))))
        }
    }
}

/// A pass's buffers, or the typed refusal of a workspace made without them.
fn have<'a, B>(b: Option<&'a B>, what: &str) -> Result<&'a B> {
    b.ok_or_else(|| ops::unsupported(format!("{OP}: a workspace made without the {what} buffers")))
}

/// Forward with its own workspace ([`bidir_fwd_ws`]).
///
/// # Errors
/// As [`bidir_fwd_ws`].
pub fn bidir_fwd<T: Elem>(
    cuda: &Cuda,
    algo: BidirAlgo,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let mut ws = BidirWorkspace::for_passes(cuda, dp, algo, false)?;
    bidir_fwd_ws(cuda, algo, dp, x, &mut ws, o)
}

/// Forward: `o [B,T,H,V]` (dtype T) by `algo` ([`crate::dispatch::bidir`]: the fused kernels
/// for bf16 with K <= 128, else composed), with the caller's workspace (made for this problem).
///
/// # Errors
/// Shape mismatch, a workspace of another problem, unsupported shapes (those of the GLA op),
/// launch or compile errors.
pub fn bidir_fwd_ws<T: Elem>(
    cuda: &Cuda,
    algo: BidirAlgo,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    ws: &mut BidirWorkspace<T>,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    check_inputs(dp, x)?;
    ws.check(dp)?;
    let p = &dp.problem;
    check_len(OP, "o", p.v_len(), o.len())?;
    if p.rows() == 0 {
        return Ok(());
    }
    if algo == BidirAlgo::Fused && plan::fused_fwd(p, T::SUFFIX == "bf16") {
        fused_fwd(cuda, dp, x, ws, o)
    } else {
        composed_fwd(cuda, dp, x, ws, o)
    }
}

/// The fused forward: prep of both gates, both state walks in one launch, the combined output.
fn fused_fwd<T: Elem>(
    cuda: &Cuda,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    ws: &BidirWorkspace<T>,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let p = &dp.problem;
    let d = &dp.half;
    let nc = d.n_chunks;
    if nc == 0 {
        return Ok(());
    }
    let (h, k, v) = dims(p);
    let gx = chunk_grid(OP, nc)?;
    let fb = have(ws.fused.as_ref(), "fused")?;
    let ([kdf, kdb], [dlf, dlb], [hsf, hsb]) = (&fb.kd, &fb.dl, &fb.hs);
    let (b, off, seq) = (&d.bounds, &d.chunk_off, &d.chunk_seq);
    // SAFETY: arguments match bidir_chunk_prep_bf16 (q, k, gf, gb shaped [rows, H, K]; kdf, kdb
    // like k; dlf, dlb chunks x H x K; qef, qeb null: not written); one block per (chunk, head,
    // 128 channels)
    let scale = p.half().scale() as f32;
    unsafe {
        cuda.launch(
            "bidir_chunk_prep_bf16",
            plan::prep_cfg(p, gx),
            &[x.q, x.k, x.gf, x.gb, kdf, kdb, dlf, dlb, &NULL, &NULL, b, off, seq, &h, &k, &scale],
        )?
    };
    let (name, cfg) = plan::h_cfg(p, cuda.sm_count());
    let nh = (p.n() * p.h()) as i32;
    // SAFETY: arguments match bidir_chunk_h{64,32}_bf16; hsf, hsb hold chunks x H x K x V; the
    // grid covers V and K in the plan's tiles and both walks of every (sequence, head) in z
    unsafe { cuda.launch(name, cfg, &[kdf, kdb, x.v, dlf, dlb, hsf, hsb, b, &d.chunk_off, &h, &k, &v, &nh])? };
    let kp = plan::kp(p);
    let (_, os_off) = plan::o_smem(kp, p.v());
    let (kp32, os32) = (kp as i32, os_off as i32);
    // SAFETY: arguments match bidir_chunk_o_bf16; one block per (chunk, head, 128-wide V tile),
    // smem as the kernel's layout (o_smem); hsf, hsb written by the walks above
    unsafe {
        cuda.launch(
            "bidir_chunk_o_bf16",
            plan::o_cfg(p, gx),
            &[x.q, x.k, x.v, x.gf, x.gb, hsf, hsb, o, b, off, seq, &h, &k, &v, &scale, &kp32, &os32],
        )
    }
}

/// The composed forward: the GLA forward (its own dispatch) at half scale on x, and on the
/// flipped copies, flip-added into o.
fn composed_fwd<T: Elem>(
    cuda: &Cuda,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    ws: &mut BidirWorkspace<T>,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let vw = dp.problem.h() * dp.problem.v();
    let d = &dp.half;
    let cb = ws.composed.as_mut().ok_or_else(|| ops::unsupported(format!("{OP}: a workspace made without the composed buffers")))?;
    let xf = DevInputs { q: x.q, k: x.k, v: x.v, g: Some(x.gf), h0: None };
    ops::gla_fwd_ws(cuda, FwdKernel::Chunk, d, &xf, &mut cb.gla, o, None)?;
    flip_inputs(cuda, dp, x, None, &mut cb.flip)?;
    let [q, k, v, g, _] = &cb.flip;
    let xb = DevInputs { q, k, v, g: Some(g), h0: None };
    ops::gla_fwd_ws(cuda, FwdKernel::Chunk, d, &xb, &mut cb.gla, &mut cb.ob, None)?;
    flip(cuda, dp, &cb.ob, o, vw, true)
}

/// q, k, v, gb (and do) reversed into the workspace.
fn flip_inputs<T: Elem>(
    cuda: &Cuda,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    d_o: Option<&CudaSlice<T>>,
    fl: &mut [CudaSlice<T>; 5],
) -> Result<()> {
    let p = &dp.problem;
    let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
    let [q, k, v, g, dob] = fl;
    flip(cuda, dp, x.q, q, kw, false)?;
    flip(cuda, dp, x.k, k, kw, false)?;
    flip(cuda, dp, x.v, v, vw, false)?;
    flip(cuda, dp, x.gb, g, kw, false)?;
    if let Some(d_o) = d_o {
        flip(cuda, dp, d_o, dob, vw, false)?;
    }
    Ok(())
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
fn gla_bwd_one<T: Elem>(
    cuda: &Cuda,
    d: &DevProblem,
    x: &DevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    ws: &mut GlaWorkspace<T>,
    g: DevGradsMut<'_>,
) -> Result<()> {
    if ops::chunk_bwd_supported::<T>(&d.problem) {
        ops::gla_bwd_chunk_ws(cuda, d, x, d_o, None, ws, g, false)
    } else {
        ops::gla_bwd_ws(cuda, d, x, d_o, None, ws, g)
    }
}

/// The backward's outputs in the caller's buffers (f32, lengths as [`BidirDevGrads`]).
#[derive(Debug)]
pub struct BidirDevGradsMut<'a> {
    /// `[B,T,H,K]`
    pub dq: &'a mut CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: &'a mut CudaSlice<f32>,
    /// `[B,T,H,V]`
    pub dv: &'a mut CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dgf: &'a mut CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dgb: &'a mut CudaSlice<f32>,
}

impl BidirDevGrads {
    /// The buffers as the backward's outputs.
    pub fn as_out(&mut self) -> BidirDevGradsMut<'_> {
        BidirDevGradsMut { dq: &mut self.dq, dk: &mut self.dk, dv: &mut self.dv, dgf: &mut self.dgf, dgb: &mut self.dgb }
    }

    /// Gradient buffers for `p`, not initialised (the backward writes every element).
    ///
    /// # Errors
    /// [`crate::Error::Driver`].
    pub fn alloc(cuda: &Cuda, p: &BidirProblem) -> Result<Self> {
        // SAFETY: bidir_bwd_ws writes every element before any read
        let grad = |len: usize, what: &str| unsafe { cuda.alloc_uninit::<f32>(len.max(1), what) };
        Ok(Self {
            dq: grad(p.qk_len(), "dq")?,
            dk: grad(p.qk_len(), "dk")?,
            dv: grad(p.v_len(), "dv")?,
            dgf: grad(p.qk_len(), "dgf")?,
            dgb: grad(p.qk_len(), "dgb")?,
        })
    }
}

/// Backward with its own workspace and gradients ([`bidir_bwd_ws`]).
///
/// # Errors
/// As [`bidir_bwd_ws`].
pub fn bidir_bwd<T: Elem>(
    cuda: &Cuda,
    algo: BidirAlgo,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
) -> Result<BidirDevGrads> {
    let mut ws = BidirWorkspace::for_passes(cuda, dp, algo, true)?;
    let mut g = BidirDevGrads::alloc(cuda, &dp.problem)?;
    bidir_bwd_ws(cuda, algo, dp, x, d_o, &mut ws, g.as_out())?;
    Ok(g)
}

/// Backward of `L = <do, o>` into `g` by `algo`: fused where [`plan::fused_bwd`] allows (the GLA
/// backward's launches once per direction, the backward scan on reversed rows, no copies),
/// else composed: the GLA backward of each direction at half scale (the backward one on flipped
/// copies of q, k, v, gb, do), its gradients flip-added (docs/math/bidir.md). Allocates nothing.
///
/// # Errors
/// Shape mismatch, a workspace of another problem, unsupported shapes (those of the GLA op),
/// launch or compile errors.
pub fn bidir_bwd_ws<T: Elem>(
    cuda: &Cuda,
    algo: BidirAlgo,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    ws: &mut BidirWorkspace<T>,
    g: BidirDevGradsMut<'_>,
) -> Result<()> {
    check_inputs(dp, x)?;
    ws.check(dp)?;
    let p = &dp.problem;
    check_len(OP, "do", p.v_len(), d_o.len())?;
    for (t, b, n) in [
        ("dq", &*g.dq, p.qk_len()),
        ("dk", &*g.dk, p.qk_len()),
        ("dv", &*g.dv, p.v_len()),
        ("dgf", &*g.dgf, p.qk_len()),
        ("dgb", &*g.dgb, p.qk_len()),
    ] {
        check_len(OP, t, n.max(1), b.len())?;
    }
    if p.rows() == 0 {
        return Ok(());
    }
    if algo == BidirAlgo::Fused && plan::fused_bwd(p, T::SUFFIX == "bf16") {
        return fused_bwd(cuda, dp, x, d_o, ws, g);
    }
    let d = &dp.half;
    let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
    let missing = || ops::unsupported(format!("{OP}: a workspace made without the composed backward's buffers"));
    let ComposedBufs { flip: fl, gla, grads, .. } = ws.composed.as_mut().ok_or_else(missing)?;
    let wgrads = grads.as_mut().ok_or_else(missing)?;
    let xf = DevInputs { q: x.q, k: x.k, v: x.v, g: Some(x.gf), h0: None };
    let gf = ops::DevGradsMut { dq: &mut *g.dq, dk: &mut *g.dk, dv: &mut *g.dv, dg: &mut *g.dgf, dh0: None };
    gla_bwd_one(cuda, d, &xf, d_o, gla, gf)?;
    flip_inputs(cuda, dp, x, Some(d_o), fl)?;
    let [q, k, v, gb, dob] = &*fl;
    let xb = DevInputs { q, k, v, g: Some(gb), h0: None };
    gla_bwd_one(cuda, d, &xb, dob, gla, wgrads.as_out(false))?;
    flip(cuda, dp, &wgrads.dq, g.dq, kw, true)?;
    flip(cuda, dp, &wgrads.dk, g.dk, kw, true)?;
    flip(cuda, dp, &wgrads.dv, g.dv, vw, true)?;
    flip(cuda, dp, &wgrads.dg, g.dgb, kw, false)
}

/// The fused backward (`bidir/chunk_bwd.cu`): prep with qe, the four state walks in one launch,
/// A of both directions, then per direction the GLA gradient launches; the backward direction's
/// stores add the forward's dv, dq, dk.
fn fused_bwd<T: Elem>(
    cuda: &Cuda,
    dp: &BidirDevProblem,
    x: &BidirDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    ws: &mut BidirWorkspace<T>,
    g: BidirDevGradsMut<'_>,
) -> Result<()> {
    let p = &dp.problem;
    let d = &dp.half;
    let nc = d.n_chunks;
    if nc == 0 {
        return Ok(());
    }
    let (h, k, v) = dims(p);
    let gx = chunk_grid(OP, nc)?;
    let scale = p.half().scale() as f32;
    let kp32 = plan::kp(p) as i32;
    let (b, off, seq) = (&d.bounds, &d.chunk_off, &d.chunk_seq);
    let fb = have(ws.fused.as_ref(), "fused")?;
    let ws = have(ws.fused_bwd.as_ref(), "fused backward's")?;
    let ([kdf, kdb], [dlf, dlb], [hsf, hsb]) = (&fb.kd, &fb.dl, &fb.hs);
    let ([qef, qeb], [dhsf, dhsb], [af, ab]) = (&ws.qe, &ws.dhs, &ws.a);
    // SAFETY: arguments match bidir_chunk_prep_bf16; qef, qeb shaped like q
    unsafe {
        cuda.launch(
            "bidir_chunk_prep_bf16",
            plan::prep_cfg(p, gx),
            &[x.q, x.k, x.gf, x.gb, kdf, kdb, dlf, dlb, qef, qeb, b, off, seq, &h, &k, &scale],
        )?
    };
    let (name, cfg) = plan::walks_cfg(p, cuda.sm_count());
    let nh = (p.n() * p.h()) as i32;
    // SAFETY: arguments match bidir_chunk_walks{64,32}_bf16; hs*, dhs* hold chunks x H x K x V
    unsafe { cuda.launch(name, cfg, &[kdf, kdb, qef, qeb, x.v, d_o, dlf, dlb, hsf, hsb, dhsf, dhsb, b, off, &h, &k, &v, &nh])? };
    // SAFETY: arguments match bidir_chunk_a_bf16; af, ab hold chunks x H x 4096
    unsafe { cuda.launch("bidir_chunk_a_bf16", plan::a_cfg(p, gx), &[x.q, x.k, x.gf, x.gb, af, ab, b, off, seq, &h, &k, &scale, &kp32])? };
    let (cfg2, w) = plan::bwd2_cfg(p, gx);
    let w32 = w as i32;
    for rev in [0i32, 1] {
        let (kd, a, hs, dhs, gate) = if rev == 0 { (kdf, af, hsf, dhsf, x.gf) } else { (kdb, ab, hsb, dhsb, x.gb) };
        // the forward scan writes its dv, dq, dk to the workspace; the backward scan's stores add
        // them and write the outputs
        let (dv, dq, dk, dg) = if rev == 0 { (&ws.dvf, &ws.dqf, &ws.dkf, &*g.dgf) } else { (&*g.dv, &*g.dq, &*g.dk, &*g.dgb) };
        let (addv, addq, addk) = if rev == 0 { (None, None, None) } else { (Some(&ws.dvf), Some(&ws.dqf), Some(&ws.dkf)) };
        // SAFETY: arguments match bidir_chunk_bwd1{,n}_bf16 (gla_chunk_bwd1_bf16's, plus rev and
        // addv: null or shaped like dv); dA chunks x H x 4096, sd chunks x H x K
        unsafe {
            cuda.launch(
                plan::bwd1_name(p),
                plan::bwd1_cfg(p, gx),
                &[x.v, d_o, kd, a, hs, dhs, dv, &ws.da, dq, dk, &ws.sd, b, off, seq, &h, &k, &v, &kp32, &rev, &addv],
            )?
        };
        // SAFETY: arguments match bidir_chunk_bwd2_bf16; dq, dk hold bwd1's raw products, read
        // by each thread before it overwrites them; addq, addk null or shaped like q
        unsafe {
            cuda.launch(
                "bidir_chunk_bwd2_bf16",
                cfg2,
                &[x.q, x.k, gate, &ws.da, &ws.sd, dq, dk, dg, b, off, seq, &h, &k, &scale, &w32, &rev, &addq, &addk],
            )?
        };
    }
    Ok(())
}
