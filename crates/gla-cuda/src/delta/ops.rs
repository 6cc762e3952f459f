//! Typed launchers of the delta-rule op over device buffers: the forward, the decode step and the
//! backward. Each checks the buffer lengths against the [`DevDeltaProblem`] (a wrong length is an
//! error, never an out-of-bounds launch), takes its kernels, launch shapes and workspace sizes from
//! [`crate::dispatch::delta`], and launches through [`Cuda::launch`].
//!
//! Each pass has one launcher over the caller's buffers that allocates nothing ([`delta_fwd_ws`],
//! [`delta_bwd_ws`], with a [`DeltaWorkspace`]; [`delta_decode`] needs none) and an allocating
//! entry point that makes the workspace and the gradients and calls it ([`delta_fwd`],
//! [`delta_bwd`]).
//!
//! Storage dtypes: `f32`, or bf16 held as `u16`. `A_log`, `dt_bias`, states, gradients and every
//! accumulator are f32.

use cudarc::driver::{CudaSlice, DeviceRepr};
use gla_core::{DeltaGate, DeltaProblem};

use crate::dispatch::delta::{self as dd, DeltaAlgo, DeltaPath, DeltaSmem, DeltaWorkspaceLens, DELTA_BT, REC_BV};
use crate::error::{Error, Result};
use crate::ops::{check_len, poison, unsupported, Elem};
use crate::runtime::{Cuda, KernelArg, NULL};

fn is_bf16<T: Elem>() -> bool {
    T::SUFFIX == "bf16"
}

/// The device-side description of a [`DeltaProblem`]: the sequence bounds and chunk tables on
/// the device plus the host problem.
#[derive(Debug)]
pub struct DevDeltaProblem {
    /// Sequence row offsets `[N+1]` (i64).
    pub bounds: CudaSlice<i64>,
    /// Global index of each sequence's first 64-row chunk `[N+1]` (i64); the last is the total.
    pub chunk_off: CudaSlice<i64>,
    /// The sequence of each global chunk `[max(1, chunks)]` (i32).
    pub chunk_seq: CudaSlice<i32>,
    /// Total number of 64-row chunks over all sequences.
    pub n_chunks: usize,
    /// The host problem.
    pub problem: DeltaProblem,
}

impl DevDeltaProblem {
    /// Uploads the bounds of `p`.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn new(cuda: &Cuda, p: &DeltaProblem) -> Result<Self> {
        let b: Vec<i64> = p.bounds().iter().map(|&x| x as i64).collect();
        let mut off = vec![0i64];
        let mut seq = Vec::new();
        for n in 0..p.n() {
            let c = ((b[n + 1] - b[n]) as usize).div_ceil(DELTA_BT);
            off.push(off[n] + c as i64);
            seq.extend(std::iter::repeat_n(n as i32, c));
        }
        let n_chunks = seq.len();
        if seq.is_empty() {
            seq.push(0);
        }
        Ok(Self {
            bounds: cuda.upload(&b, "delta sequence bounds")?,
            chunk_off: cuda.upload(&off, "delta chunk offsets")?,
            chunk_seq: cuda.upload(&seq, "delta chunk sequences")?,
            n_chunks,
            problem: p.clone(),
        })
    }
}

/// Inputs of a delta launch, on the device (layouts of [`gla_core::DeltaInputs`]).
#[derive(Debug, Clone, Copy)]
pub struct DeltaDevInputs<'a, T> {
    /// `[B,T,H,K]`
    pub q: &'a CudaSlice<T>,
    /// `[B,T,H,K]`
    pub k: &'a CudaSlice<T>,
    /// `[B,T,HV,V]`
    pub v: &'a CudaSlice<T>,
    /// `[B,T,HV]`: beta, or its logits with the in-op sigmoid.
    pub beta: &'a CudaSlice<T>,
    /// `[B,T,HV]`: the log decay or the raw `a` (per the gate); `None` without a gate.
    pub g: Option<&'a CudaSlice<T>>,
    /// `A_log [HV]` f32 (computed gate).
    pub a_log: Option<&'a CudaSlice<f32>>,
    /// `dt_bias [HV]` f32 (computed gate).
    pub dt_bias: Option<&'a CudaSlice<f32>>,
    /// `[N,HV,K,V]` f32 or none.
    pub h0: Option<&'a CudaSlice<f32>>,
}

fn check_inputs<T>(op: &'static str, p: &DeltaProblem, x: &DeltaDevInputs<'_, T>) -> Result<()> {
    check_len(op, "q", p.qk_len(), x.q.len())?;
    check_len(op, "k", p.qk_len(), x.k.len())?;
    check_len(op, "v", p.v_len(), x.v.len())?;
    check_len(op, "beta", p.beta_len(), x.beta.len())?;
    check_len(op, "g", p.g_len(), x.g.map_or(0, |g| g.len()))?;
    let computed = p.gate() == DeltaGate::Computed;
    let np = if computed { p.hv() } else { 0 };
    check_len(op, "A_log", np, if computed { x.a_log.map_or(0, |a| a.len()) } else { 0 })?;
    check_len(op, "dt_bias", np, if computed { x.dt_bias.map_or(0, |a| a.len()) } else { 0 })?;
    if let Some(h0) = x.h0 {
        check_len(op, "h0", p.state_len(), h0.len())?;
    }
    Ok(())
}

/// The kernels' scalar options of a problem: (l2, bscale, gmode) — the L2 norm flag, the
/// sigmoid's factor (0: beta given directly) and the gate (0 none, 1 log decay, 2 computed).
fn options(p: &DeltaProblem) -> (i32, f32, i32) {
    let bscale = if p.beta_sigmoid() { p.beta_scale() as f32 } else { 0.0 };
    let gmode = match p.gate() {
        DeltaGate::None => 0,
        DeltaGate::LogDecay => 1,
        DeltaGate::Computed => 2,
    };
    (i32::from(p.l2_qk()), bscale, gmode)
}

fn grid_nhv(op: &str, p: &DeltaProblem) -> Result<u32> {
    let nhv = p.n() * p.hv();
    u32::try_from(nhv)
        .ok()
        .filter(|&x| x as usize <= dd::MAX_GRID_Y)
        .ok_or_else(|| unsupported(format!("{op}: N*HV = {nhv} exceeds the grid's y limit")))
}

fn grid_chunks(op: &str, nc: usize) -> Result<u32> {
    u32::try_from(nc).ok().filter(|&x| x < i32::MAX as u32).ok_or_else(|| unsupported(format!("{op}: {nc} chunks")))
}

/// The workspaces of the delta launches, sized by [`DeltaWorkspaceLens`], allocated once and
/// reused by every call whose problem they cover (the model keeps one per batch shape, so a
/// training step allocates nothing). Contents are not initialised: every launch writes what a
/// later one reads. One workspace serves one stream's launches in order.
#[derive(Debug)]
pub struct DeltaWorkspace<T> {
    lens: DeltaWorkspaceLens,
    rq: Option<CudaSlice<f32>>,
    rk: Option<CudaSlice<f32>>,
    bt: Option<CudaSlice<f32>>,
    gl: Option<CudaSlice<f32>>,
    w: Option<CudaSlice<T>>,
    u: Option<CudaSlice<f32>>,
    tm: Option<CudaSlice<T>>,
    g2: Option<CudaSlice<f32>>,
    hs: Option<CudaSlice<T>>,
    vn: Option<CudaSlice<T>>,
    dvl: Option<CudaSlice<f32>>,
    dhs: Option<CudaSlice<T>>,
    du: Option<CudaSlice<T>>,
    dgk: Option<CudaSlice<f32>>,
    dq: Option<CudaSlice<f32>>,
    dk: Option<CudaSlice<f32>>,
    db: Option<CudaSlice<f32>>,
    dg: Option<CudaSlice<f32>>,
    ckpt: Option<CudaSlice<f32>>,
    seg: Option<CudaSlice<f32>>,
    sa: Option<CudaSlice<f32>>,
    sb: Option<CudaSlice<f32>>,
    /// The last forward on this workspace ran the residual form (no w): a backward that
    /// reuses it runs the residual state-gradient pass or forms w first. What the forward did,
    /// not the environment at backward time.
    res_fwd: std::sync::atomic::AtomicBool,
    /// Backwards on this workspace recompute the forward ([`Self::backward_recomputes`]), so a
    /// forward keeps no intermediates for them.
    recomputes: bool,
    /// The last forward on this workspace left its intermediates (the states, v_new) in it, so
    /// a backward may reuse them.
    kept: std::sync::atomic::AtomicBool,
    /// That forward also left P (`delta_pm`'s, in w's buffer: [`dd::hro_pm`]) there, so a
    /// backward that reuses it and reads P ([`dd::hb_pm`]) skips its own `delta_pm` launch.
    pm_kept: std::sync::atomic::AtomicBool,
}

fn ws_buf<U: DeviceRepr>(cuda: &Cuda, len: usize, what: &str) -> Result<Option<CudaSlice<U>>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the DeltaWorkspace contract: written by an earlier launch on the stream before any read
    unsafe { cuda.alloc_uninit::<U>(len, what) }.map(Some)
}

fn req<'a, U>(b: &'a Option<CudaSlice<U>>, what: &str) -> Result<&'a CudaSlice<U>> {
    b.as_ref().ok_or_else(|| unsupported(format!("delta workspace without its {what} buffer")))
}

impl<T: Elem> DeltaWorkspace<T> {
    /// Allocates the buffers of `lens` (none for a length of 0).
    ///
    /// # Errors
    /// [`Error::Driver`] (out of memory names the buffer).
    pub fn new(cuda: &Cuda, lens: DeltaWorkspaceLens) -> Result<Self> {
        let l = &lens;
        Ok(Self {
            rq: ws_buf(cuda, l.rq, "delta rq")?,
            rk: ws_buf(cuda, l.rk, "delta rk")?,
            bt: ws_buf(cuda, l.bt, "delta beta")?,
            gl: ws_buf(cuda, l.gl, "delta log decay")?,
            w: ws_buf(cuda, l.w, "delta w")?,
            u: ws_buf(cuda, l.u, "delta u")?,
            tm: ws_buf(cuda, l.tm, "delta T")?,
            g2: ws_buf(cuda, l.g2, "delta G")?,
            hs: ws_buf(cuda, l.hs, "delta chunk states")?,
            vn: ws_buf(cuda, l.vn, "delta v_new")?,
            dvl: ws_buf(cuda, l.dvl, "delta dvl")?,
            dhs: ws_buf(cuda, l.dhs, "delta chunk state gradients")?,
            du: ws_buf(cuda, l.du, "delta dU")?,
            dgk: ws_buf(cuda, l.dgk, "delta dG partials")?,
            dq: ws_buf(cuda, l.dqk, "delta dq partials")?,
            dk: ws_buf(cuda, l.dqk, "delta dk partials")?,
            db: ws_buf(cuda, l.dbg, "delta dbeta partials")?,
            dg: ws_buf(cuda, l.dbg, "delta dg partials")?,
            ckpt: ws_buf(cuda, l.ckpt, "delta state checkpoints")?,
            seg: ws_buf(cuda, l.seg, "delta segment states")?,
            sa: ws_buf(cuda, l.sa, "delta sub-head h0")?,
            sb: ws_buf(cuda, l.sb, "delta sub-head ht")?,
            lens,
            res_fwd: std::sync::atomic::AtomicBool::new(false),
            recomputes: false,
            kept: std::sync::atomic::AtomicBool::new(false),
            pm_kept: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The same workspace, declared to serve only backwards that recompute the forward (`fwd_in_ws`
    /// false, as the language model's do: one workspace shared by its layers): a forward on it
    /// then stores no states or v_new where the output pass can be fused into the state pass
    /// (`dispatch::delta::res_out`). A backward asked to reuse such a forward recomputes it instead.
    #[must_use]
    pub fn backward_recomputes(self) -> Self {
        Self { recomputes: true, ..self }
    }

    /// The workspace of `dp`'s problem for `algo`'s forward (`fwd`) and backward (`bwd`).
    ///
    /// # Errors
    /// [`Error::Op`] for a problem the dispatch policy refuses; [`Error::Driver`].
    pub fn for_problem(cuda: &Cuda, dp: &DevDeltaProblem, algo: DeltaAlgo, fwd: bool, bwd: bool) -> Result<Self> {
        let (p, nc, bf16) = (&dp.problem, dp.n_chunks, is_bf16::<T>());
        let r = dd::route(p, bf16, algo).map_err(unsupported)?;
        let f = if fwd { r.forward_lens(nc, bf16) } else { DeltaWorkspaceLens::default() };
        let b = if bwd { r.backward_lens(nc, bf16, cuda.sm_count()) } else { DeltaWorkspaceLens::default() };
        Self::new(cuda, f.max(b))
    }

    /// The buffers' lengths.
    pub fn lens(&self) -> &DeltaWorkspaceLens {
        &self.lens
    }

    fn check(&self, op: &str, need: &DeltaWorkspaceLens) -> Result<()> {
        if self.lens.covers(need) {
            Ok(())
        } else {
            Err(unsupported(format!("{op}: the workspace {:?} does not cover the problem's {need:?}", self.lens)))
        }
    }
}

/// Forward: `o = ` the output `[B,T,HV,V]` (dtype T), `ht = ` the final state `[N,HV,K,V]` f32,
/// by the kernels [`dd::route`] picks for `algo`; allocates its workspace
/// ([`delta_fwd_ws`] takes the caller's).
///
/// # Errors
/// Shape mismatch, unsupported K, launch or compile errors.
pub fn delta_fwd<T: Elem>(
    cuda: &Cuda,
    algo: DeltaAlgo,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    o: &mut CudaSlice<T>,
    ht: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    let r = dd::route(&dp.problem, is_bf16::<T>(), algo).map_err(unsupported)?;
    let mut ws = DeltaWorkspace::new(cuda, r.forward_lens(dp.n_chunks, is_bf16::<T>()))?;
    delta_fwd_ws(cuda, algo, dp, x, &mut ws, o, ht)
}

/// [`delta_fwd`] with the caller's workspace (at least [`DeltaWorkspaceLens::forward`] of the
/// problem, e.g. [`DeltaWorkspace::for_problem`]); allocates nothing.
///
/// # Errors
/// As [`delta_fwd`]; [`Error::Op`] for a workspace that is too small.
pub fn delta_fwd_ws<T: Elem>(
    cuda: &Cuda,
    algo: DeltaAlgo,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    ws: &mut DeltaWorkspace<T>,
    o: &mut CudaSlice<T>,
    ht: Option<&mut CudaSlice<f32>>,
) -> Result<()> {
    let op = "delta_fwd";
    let p = &dp.problem;
    check_inputs(op, p, x)?;
    check_len(op, "o", p.v_len(), o.len())?;
    if let Some(ht) = &ht {
        check_len(op, "ht", p.state_len(), ht.len())?;
    }
    let bf16 = is_bf16::<T>();
    let r = dd::route(p, bf16, algo).map_err(unsupported)?;
    ws.check(op, &r.forward_lens(dp.n_chunks, bf16))?;
    // from here on the kernels' problem (value sub-heads: dd::route)
    let p = &r.kernel;
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let scale = p.scale() as f32;
    let (l2, bscale, gmode) = options(p);
    let nhv = grid_nhv(op, p)?;
    match r.path {
        DeltaPath::Recurrent => {
            let name = format!("delta_rec_fwd_{}", T::SUFFIX);
            // SAFETY: the arguments match delta_rec_fwd's signature; every buffer's length was
            // checked against the problem (null where the kernel tests for null); the grid
            // covers V in tiles of 32 and N*HV in y.
            unsafe {
                cuda.launch(
                    &name,
                    dd::rec_cfg(p.v(), nhv),
                    &[
                        x.q, x.k, x.v, x.beta, &x.g, &x.a_log, &x.dt_bias, &x.h0, o, &ht, &dp.bounds, &h, &hv, &k, &v, &scale, &l2,
                        &bscale, &gmode,
                    ],
                )
            }
        }
        // value sub-heads: the states in their layout, h0 in the workspace's sa, ht in sb
        DeltaPath::Chunk { kp } if r.vs > 1 => with_split_states(ws, |ws, sa, sb| {
            if let Some(h0) = x.h0 {
                state_split(cuda, h0, sa, p, r.vs, true)?;
            }
            let xs = DeltaDevInputs { h0: x.h0.map(|_| &*sa), ..*x };
            let want = ht.is_some();
            chunk_fwd(cuda, p, r.vs, dp, &xs, ws, kp, want.then_some(&mut *sb), o)?;
            if let Some(ht) = ht {
                state_split(cuda, sb, ht, p, r.vs, false)?;
            }
            Ok(())
        }),
        DeltaPath::Chunk { kp } => chunk_fwd(cuda, p, 1, dp, x, ws, kp, ht, o),
    }
}

/// Runs `f` with the workspace's two sub-head state buffers (`sa`, `sb`) lent out of it and the
/// rest of the workspace, and puts them back whatever `f` returns.
fn with_split_states<T: Elem, R>(
    ws: &mut DeltaWorkspace<T>,
    f: impl FnOnce(&DeltaWorkspace<T>, &mut CudaSlice<f32>, &mut CudaSlice<f32>) -> Result<R>,
) -> Result<R> {
    let (mut sa, mut sb) = (ws.sa.take(), ws.sb.take());
    let res = match (sa.as_mut(), sb.as_mut()) {
        (Some(a), Some(b)) => f(ws, a, b),
        _ => Err(unsupported("delta workspace without its sub-head state buffers".into())),
    };
    (ws.sa, ws.sb) = (sa, sb);
    res
}

/// Moves f32 states between the caller's layout `[N, HV, K, V]` and that of the value sub-heads
/// of the kernels' problem `p` (`[N, HV * vs, K, V / vs]`; `to_sub`: into it, else back).
fn state_split(cuda: &Cuda, src: &CudaSlice<f32>, dst: &CudaSlice<f32>, p: &DeltaProblem, vs: usize, to_sub: bool) -> Result<()> {
    let n = p.state_len();
    if n == 0 {
        return Ok(());
    }
    check_len("delta_state_split", "src", n, src.len().min(n))?;
    let (n64, k, vs32, vw, dir) = (n as i64, p.k() as i32, vs as i32, p.v() as i32, i32::from(!to_sub));
    // SAFETY: one thread per element of N*HV*K*V f32 states; src and dst hold at least that many
    // (src checked, dst a workspace buffer of the state's length or the caller's checked state)
    unsafe { cuda.launch("delta_state_split", dd::flat_cfg(n, 256), &[src, dst, &n64, &k, &vs32, &vw, &dir]) }
}

/// The chunked forward on the kernels' problem `p` (`vs` value sub-heads per value head of the
/// inputs; `x.h0` and `ht` in the kernels' layout): prep, WY, state pass, output.
#[allow(clippy::too_many_arguments)]
fn chunk_fwd<T: Elem>(
    cuda: &Cuda,
    p: &DeltaProblem,
    vs: usize,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    ws: &DeltaWorkspace<T>,
    kp: usize,
    ht: Option<&mut CudaSlice<f32>>,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let op = "delta_fwd";
    let bf16 = is_bf16::<T>();
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let scale = p.scale() as f32;
    chunk_prep(cuda, p, vs, x, ws)?;
    if chunk_wy_h(cuda, p, dp, x, ws, kp, ht, Some(&mut *o))? || dp.n_chunks == 0 {
        return Ok(());
    }
    let (vp, nch) = (dd::vpad(p.v()) as i32, dp.n_chunks as i64);
    let smem = DeltaSmem::new(bf16, kp, dd::vpad(p.v()));
    let cfg = dd::chunk_cfg(grid_chunks(op, dp.n_chunks)?, p.hv(), 1, smem.o());
    let (hs, vn, g2) = (req(&ws.hs, "hs")?, req(&ws.vn, "v_new")?, req(&ws.g2, "G")?);
    let name = format!("delta_o_k{kp}_{}", T::SUFFIX);
    // SAFETY: arguments match delta_o_*'s signature; hs, vn, g2 were written by the launches
    // above (workspace lengths checked against the problem); one block per (chunk, value head).
    unsafe {
        cuda.launch(
            &name,
            cfg,
            &[x.q, x.k, &ws.rq, &ws.rk, hs, vn, g2, o, &dp.bounds, &dp.chunk_off, &dp.chunk_seq, &h, &hv, &k, &v, &vp, &scale, &nch],
        )
    }
}

/// The elementwise prep of the chunked passes on the kernels' problem `p` (`vs` value
/// sub-heads per value head of the inputs): the L2 row factors (with the in-op norm), beta and
/// the log decay as f32.
fn chunk_prep<T: Elem>(cuda: &Cuda, p: &DeltaProblem, vs: usize, x: &DeltaDevInputs<'_, T>, ws: &DeltaWorkspace<T>) -> Result<()> {
    let nr = p.rows() * p.h();
    if p.l2_qk() && nr > 0 {
        let name = format!("delta_l2_rstd_{}", T::SUFFIX);
        let (nr64, k) = (nr as i64, p.k() as i32);
        for (src, dst) in [(x.q, req(&ws.rq, "rq")?), (x.k, req(&ws.rk, "rk")?)] {
            // SAFETY: one warp per row of [rows*H, K]; dst holds rows*H f32
            unsafe { cuda.launch(&name, dd::flat_cfg(nr, 8), &[src, dst, &nr64, &k])? };
        }
    }
    gate_prep(cuda, p, vs, x, req(&ws.bt, "beta")?, ws.gl.as_ref())
}

/// beta and the log decay as f32 `[rows, HV']` for the kernels' problem `p`, whose `HV' = HV *
/// vs` value heads each read value head `/ vs` of the inputs.
fn gate_prep<T: Elem>(
    cuda: &Cuda,
    p: &DeltaProblem,
    vs: usize,
    x: &DeltaDevInputs<'_, T>,
    bt: &CudaSlice<f32>,
    gl: Option<&CudaSlice<f32>>,
) -> Result<()> {
    let n = p.beta_len();
    if n == 0 {
        return Ok(());
    }
    let (_, bscale, gmode) = options(p);
    let (n64, hv, vs32) = (n as i64, (p.hv() / vs) as i32, vs as i32);
    let gl = gl.filter(|_| gmode > 0);
    if gmode > 0 && gl.is_none() {
        return Err(unsupported("delta workspace without its log-decay buffer".into()));
    }
    let name = format!("delta_gate_fwd_{}", T::SUFFIX);
    // SAFETY: one thread per (row, value head) of [rows, HV']; bt (and gl with a gate) hold
    // rows*HV' f32; the inputs ([rows, HV'/vs]) were checked against the caller's problem
    unsafe { cuda.launch(&name, dd::flat_cfg(n, 256), &[x.beta, &x.g, &x.a_log, &x.dt_bias, bt, &gl, &n64, &hv, &vs32, &bscale, &gmode]) }
}

/// The UT/WY pass on the kernels' problem `p`: `delta_wy` (w, u, G, and T into `tm` where given)
/// or, `tonly`, `delta_wyt` (G and T into `tm`, which it needs; no w or u). Nothing without
/// chunks.
#[allow(clippy::too_many_arguments)]
fn wy_launch<T: Elem>(
    cuda: &Cuda,
    op: &str,
    p: &DeltaProblem,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    ws: &DeltaWorkspace<T>,
    kp: usize,
    tm: Option<&CudaSlice<T>>,
    tonly: bool,
) -> Result<()> {
    if dp.n_chunks == 0 {
        return Ok(());
    }
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let vp = dd::vpad(p.v());
    let (vp32, nch) = (vp as i32, dp.n_chunks as i64);
    let smem = DeltaSmem::new(is_bf16::<T>(), kp, vp);
    let (w, u) = if tonly { (None, None) } else { (Some(req(&ws.w, "w")?), Some(req(&ws.u, "u")?)) };
    let (g2, bt) = (req(&ws.g2, "G")?, req(&ws.bt, "beta")?);
    let name = format!("delta_wy{}_k{kp}_{}", if tonly { "t" } else { "" }, T::SUFFIX);
    // SAFETY: arguments match delta_wy_*'s signature (delta_wyt's: the same, w and u unread and
    // null, T required); w, u, T, G hold the problem's chunked workspaces (checked by the
    // caller); one block per (chunk, value head)
    unsafe {
        cuda.launch(
            &name,
            dd::chunk_cfg(grid_chunks(op, dp.n_chunks)?, p.hv(), 1, if tonly { smem.wyt() } else { smem.wy() }),
            &[x.k, &ws.rk, x.v, bt, &ws.gl, &w, &u, &tm, g2, &dp.bounds, &dp.chunk_off, &dp.chunk_seq, &h, &hv, &k, &v, &vp32, &nch],
        )
    }
}

/// The UT/WY prep and the state pass of the chunked path on the kernels' problem `p` (forward,
/// and the backward's recomputation): w, u, G, hs, v_new; T where the workspace holds it (a
/// backward's); ht when given. The residual forward ([`dd::h_res`]: G, T, hs, v_new, no w or
/// u) runs where [`dd::res_ok`] allows it for this workspace: a forward-only one, or a training
/// one (a forward whose backward follows, or the backward's recomputation) whose backward has
/// the residual form. Given `o`, the residual forward computes the output itself where
/// [`dd::res_out`] allows it, storing the states and v_new only where a backward reuses them
/// (not on a forward-only workspace, nor on one whose backwards recompute); returns whether it
/// did (else the caller runs `delta_o`).
#[allow(clippy::too_many_arguments)]
fn chunk_wy_h<T: Elem>(
    cuda: &Cuda,
    p: &DeltaProblem,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    ws: &DeltaWorkspace<T>,
    kp: usize,
    ht: Option<&mut CudaSlice<f32>>,
    o: Option<&mut CudaSlice<T>>,
) -> Result<bool> {
    let op = "delta chunked forward";
    let bf16 = is_bf16::<T>();
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let (vp, nch) = (dd::vpad(p.v()), dp.n_chunks as i64);
    let vp32 = vp as i32;
    let smem = DeltaSmem::new(bf16, kp, vp);
    // T only where the workspace holds it for this problem (a backward's): a forward-only
    // workspace does not store it
    let tm_len = dd::planes(bf16) * dp.n_chunks * p.hv() * 4096;
    let tm = ws.tm.as_ref().filter(|t| t.len() >= tm_len);
    let (w, u, g2) = (req(&ws.w, "w")?, req(&ws.u, "u")?, req(&ws.g2, "G")?);
    let (hs, vn, bt) = (req(&ws.hs, "hs")?, req(&ws.vn, "v_new")?, req(&ws.bt, "beta")?);
    // a workspace without the backward's buffers serves a forward only; `keep`: a backward may
    // reuse what this forward stores (given `o`: a forward; without, a backward's recomputation)
    let fwd_only = ws.dhs.is_none();
    let keep = !(fwd_only || (o.is_some() && ws.recomputes));
    let tiles = (vp / 64) * p.n() * p.hv();
    let res_ok = dd::res_ok(bf16, kp, vp, p.n() * p.hv(), cuda.sm_count(), fwd_only);
    // whether HR_B2 would fuse the output in: its threshold in a training forward depends on it
    let out_b2 = o.is_some() && dd::res_out(dd::HR_B2, !keep);
    let res = if res_ok { dd::h_res(bf16, kp, tiles, cuda.sm_count(), keep, out_b2).zip(tm) } else { None };
    ws.res_fwd.store(res.is_some(), std::sync::atomic::Ordering::Relaxed);
    // set below only where this forward leaves P in w's buffer for its backward
    ws.pm_kept.store(false, std::sync::atomic::Ordering::Relaxed);
    if let Some((plan, tm)) = res {
        // the residual forward: T alone, then v_new from T, k and v (and the output where
        // dd::res_out allows it; hs and v_new stay unwritten where nothing reads them after it)
        wy_launch(cuda, op, p, dp, x, ws, kp, Some(tm), true)?;
        let o = o.filter(|_| dd::res_out(plan, !keep) && dp.n_chunks > 0);
        ws.kept.store(o.is_none() || keep, std::sync::atomic::Ordering::Relaxed);
        let nhv = grid_nhv(op, p)?;
        // the fused pass stores hs and v_new only where a backward reads them (else null)
        let (hs, vn): (&dyn KernelArg, &dyn KernelArg) = if keep || o.is_none() { (hs, vn) } else { (&NULL, &NULL) };
        let base: Vec<&dyn KernelArg> =
            vec![&NULL, &NULL, x.k, &ws.rk, g2, &x.h0, hs, vn, &ht, &dp.bounds, &dp.chunk_off, &h, &hv, &k, &v, &vp32, &nch, tm, x.v, bt];
        let Some(o) = o else {
            // the heads before nhv - tail on HR_S2, the rest on `plan` (dd::hr_tail)
            let tail = dd::hr_tail(plan, kp, vp, nhv as usize, cuda.sm_count()) as u32;
            let parts = [(if tail > 0 { dd::HR_S2 } else { plan }, 0, nhv - tail), (plan, nhv - tail, tail)];
            for (pl, nh0, nhs) in parts.into_iter().filter(|part| part.2 > 0) {
                let nh0 = nh0 as i32;
                let mut args = base.clone();
                args.push(&nh0);
                // SAFETY: arguments match delta_hr_*'s (delta_h's, w and u unread, then T, v,
                // beta and the first sequence x value head); one block per (V tile, sequence x
                // value head from nh0); every workspace is sized for the problem
                unsafe { cuda.launch(&dd::hr_name(pl, kp, false), dd::state_cfg(vp, pl.bv, nhs, smem.hr(pl)), &args)? };
            }
            return Ok(false);
        };
        let scale = p.scale() as f32;
        let mut args = base;
        args.extend([x.q as &dyn KernelArg, &ws.rq, &*o, &scale]);
        let name = if dd::hro_pm(plan) {
            // P into w's buffer, which the residual forward leaves unwritten (and a backward
            // that reuses this forward reads it there: nothing writes w in between)
            pm_launch(cuda, op, p, dp, x, ws, kp, w)?;
            ws.pm_kept.store(keep, std::sync::atomic::Ordering::Relaxed);
            args.push(w);
            dd::hrop_name(plan, kp)
        } else {
            dd::hr_name(plan, kp, true)
        };
        // SAFETY: arguments match delta_hro_*'s (delta_hr's without nh0, hs and vn null where
        // nothing reads them, then q, rq, o, scale; o holds the problem's [rows, HV, V], checked
        // by the caller) or delta_hrop_*'s (and then P, delta_pm's); one block per (V tile,
        // sequence x value head)
        unsafe { cuda.launch(&name, dd::state_cfg(vp, plan.bv, nhv, smem.hro(plan)), &args)? };
        return Ok(true);
    }
    ws.kept.store(true, std::sync::atomic::Ordering::Relaxed);
    // T only for a backward to come (a forward-only workspace holds it for the residual form)
    wy_launch(cuda, op, p, dp, x, ws, kp, tm.filter(|_| !fwd_only), false)?;
    let plan = dd::h_plan(false, bf16, kp, vp, p.n() * p.hv(), cuda.sm_count());
    let name = dd::h_name(false, plan, kp, T::SUFFIX);
    let cfg = dd::state_cfg(vp, plan.bv, grid_nhv(op, p)?, smem.h(plan));
    // SAFETY: arguments match delta_h_*'s signature; one block per (V tile, sequence x value
    // head) walking its chunks; every workspace is sized for the problem
    unsafe {
        cuda.launch(&name, cfg, &[w, u, x.k, &ws.rk, g2, &x.h0, hs, vn, &ht, &dp.bounds, &dp.chunk_off, &h, &hv, &k, &v, &vp32, &nch])?
    };
    Ok(false)
}

/// A workspace buffer reused for another tensor (w's, for P) must hold at least `need`
/// elements: [`check_len`]'s error where it holds fewer.
fn check_room(op: &'static str, what: &'static str, need: usize, got: usize) -> Result<()> {
    if got < need {
        check_len(op, what, need, got)?;
    }
    Ok(())
}

/// `delta_pm_*`: P (split) once per (chunk, value head) into `pm` ([SP][chunks, HV, 64, 64] at its
/// start; w's buffer, [SP][chunks, HV, 64, KP], where the residual form leaves w unformed), for
/// the passes that read it ([`dd::hro_pm`], [`dd::hb_pm`]).
#[allow(clippy::too_many_arguments)]
fn pm_launch<T: Elem>(
    cuda: &Cuda,
    op: &'static str,
    p: &DeltaProblem,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    ws: &DeltaWorkspace<T>,
    kp: usize,
    pm: &CudaSlice<T>,
) -> Result<()> {
    // w's buffer holds [SP][chunks, HV, 64, KP]: at least P's planes
    check_room(op, "P", dd::planes(true) * dp.n_chunks * p.hv() * 4096, pm.len())?;
    let (h, hv, k, nch) = (p.h() as i32, p.hv() as i32, p.k() as i32, dp.n_chunks as i64);
    let scale = p.scale() as f32;
    let smem = DeltaSmem::new(true, kp, dd::vpad(p.v()));
    // SAFETY: arguments match delta_pm_*'s; q, k, rq, rk and G hold the problem's rows and chunks,
    // pm at least the planes above (checked); one block per (chunk, value head)
    unsafe {
        cuda.launch(
            &format!("delta_pm_k{kp}_bf16"),
            dd::chunk_cfg(grid_chunks(op, dp.n_chunks)?, p.hv(), 1, smem.pm()),
            &[x.q, x.k, &ws.rq, &ws.rk, req(&ws.g2, "G")?, pm, &dp.bounds, &dp.chunk_off, &dp.chunk_seq, &h, &hv, &k, &scale, &nch],
        )
    }
}

/// One decode step (`delta_rec_decode_*`): the recurrent forward of one token per sequence (the
/// problem has exactly one row per sequence), sequence n's state `[HV, K, V]` f32 living in its
/// own buffer at the device address `states[n]`, read and updated in place. The elementwise maps
/// run inline: no workspace, nothing allocated.
///
/// # Errors
/// [`Error::Op`] for wrong lengths or a problem that is not one row per sequence; launch errors.
///
/// # Safety
/// Every address in `states[..N]` must be that of a live device buffer of this context holding
/// at least `HV*K*V` f32, no two the same, none written by other work while the step runs.
pub unsafe fn delta_decode<T: Elem>(
    cuda: &Cuda,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    states: u64,
    n_states: usize,
    o: &mut CudaSlice<T>,
) -> Result<()> {
    let op = "delta_decode";
    let p = &dp.problem;
    check_inputs(op, p, x)?;
    check_len(op, "o", p.v_len(), o.len())?;
    check_len(op, "states", p.n(), n_states)?;
    if p.rows() != p.n() {
        return Err(unsupported(format!("{op}: {} rows for {} sequences; decode takes one token per sequence", p.rows(), p.n())));
    }
    dd::delta_path(p, is_bf16::<T>(), DeltaAlgo::Recurrent).map_err(unsupported)?;
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let scale = p.scale() as f32;
    let (l2, bscale, gmode) = options(p);
    let name = format!("delta_rec_decode_{}", T::SUFFIX);
    // SAFETY: the arguments match delta_rec_decode's signature; input and output lengths were
    // checked against the problem; the state table's contract is the caller's (above)
    unsafe {
        cuda.launch(
            &name,
            dd::rec_cfg(p.v(), grid_nhv(op, p)?),
            &[x.q, x.k, x.v, x.beta, &x.g, &x.a_log, &x.dt_bias, &states, o, &dp.bounds, &h, &hv, &k, &v, &scale, &l2, &bscale, &gmode],
        )
    }
}

/// Gradients written by a delta backward (all f32), owned: what [`delta_bwd`] returns.
#[derive(Debug)]
pub struct DeltaDevGrads {
    /// `[B,T,H,K]`
    pub dq: CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: CudaSlice<f32>,
    /// `[B,T,HV,V]`
    pub dv: CudaSlice<f32>,
    /// `[B,T,HV]`, at the beta input.
    pub dbeta: CudaSlice<f32>,
    /// `[B,T,HV]`, at the g input (one element without a gate).
    pub dg: CudaSlice<f32>,
    /// `[HV]` (one element without the computed gate).
    pub da_log: CudaSlice<f32>,
    /// `[HV]` (one element without the computed gate).
    pub ddt_bias: CudaSlice<f32>,
    /// `[N,HV,K,V]` (one element without h0).
    pub dh0: CudaSlice<f32>,
}

impl DeltaDevGrads {
    /// Gradient buffers for problem `p` (with `has_h0`: an initial state), NaN-poisoned.
    ///
    /// # Errors
    /// [`Error::Driver`].
    pub fn alloc(cuda: &Cuda, p: &DeltaProblem, has_h0: bool) -> Result<Self> {
        let grad = |len: usize, what: &str| -> Result<CudaSlice<f32>> {
            // SAFETY: poisoned right away; the backward writes every element it is given
            let mut b = unsafe { cuda.alloc_uninit::<f32>(len.max(1), what) }?;
            poison(cuda, &mut b)?;
            Ok(b)
        };
        let computed = p.gate() == DeltaGate::Computed;
        Ok(Self {
            dq: grad(p.qk_len(), "delta dq")?,
            dk: grad(p.qk_len(), "delta dk")?,
            dv: grad(p.v_len(), "delta dv")?,
            dbeta: grad(p.beta_len(), "delta dbeta")?,
            dg: grad(p.g_len(), "delta dg")?,
            da_log: grad(if computed { p.hv() } else { 0 }, "delta dA_log")?,
            ddt_bias: grad(if computed { p.hv() } else { 0 }, "delta ddt_bias")?,
            dh0: grad(if has_h0 { p.state_len() } else { 0 }, "delta dh0")?,
        })
    }

    /// The buffers as a backward's outputs (`dh0` given when `has_h0`).
    pub fn as_out(&mut self, has_h0: bool) -> DeltaDevGradsMut<'_> {
        DeltaDevGradsMut {
            dq: &mut self.dq,
            dk: &mut self.dk,
            dv: &mut self.dv,
            dbeta: &mut self.dbeta,
            dg: &mut self.dg,
            da_log: &mut self.da_log,
            ddt_bias: &mut self.ddt_bias,
            dh0: has_h0.then_some(&mut self.dh0),
        }
    }
}

/// The caller's gradient buffers a delta backward writes (`=`, all f32): dq, dk `[B,T,H,K]`, dv
/// `[B,T,HV,V]`, dbeta `[B,T,HV]`, dg shaped like g (any length without a gate: not touched),
/// dA_log and ddt_bias `[HV]` (computed gate; else not touched), dh0 `[N,HV,K,V]` (given
/// exactly when the inputs have an h0).
#[derive(Debug)]
pub struct DeltaDevGradsMut<'a> {
    /// `[B,T,H,K]`
    pub dq: &'a mut CudaSlice<f32>,
    /// `[B,T,H,K]`
    pub dk: &'a mut CudaSlice<f32>,
    /// `[B,T,HV,V]`
    pub dv: &'a mut CudaSlice<f32>,
    /// `[B,T,HV]`
    pub dbeta: &'a mut CudaSlice<f32>,
    /// Shaped like g.
    pub dg: &'a mut CudaSlice<f32>,
    /// `[HV]`
    pub da_log: &'a mut CudaSlice<f32>,
    /// `[HV]`
    pub ddt_bias: &'a mut CudaSlice<f32>,
    /// `[N,HV,K,V]` when the inputs have an h0.
    pub dh0: Option<&'a mut CudaSlice<f32>>,
}

impl DeltaDevGradsMut<'_> {
    fn check<T>(&self, op: &'static str, p: &DeltaProblem, x: &DeltaDevInputs<'_, T>) -> Result<()> {
        check_len(op, "dq", p.qk_len(), self.dq.len())?;
        check_len(op, "dk", p.qk_len(), self.dk.len())?;
        check_len(op, "dv", p.v_len(), self.dv.len())?;
        check_len(op, "dbeta", p.beta_len(), self.dbeta.len())?;
        if p.g_len() > 0 {
            check_len(op, "dg", p.g_len(), self.dg.len())?;
        }
        if p.gate() == DeltaGate::Computed {
            check_len(op, "dA_log", p.hv(), self.da_log.len())?;
            check_len(op, "ddt_bias", p.hv(), self.ddt_bias.len())?;
        }
        if x.h0.is_some() {
            check_len(op, "dh0", p.state_len(), self.dh0.as_ref().map_or(0, |d| d.len()))?;
        }
        Ok(())
    }
}

/// Backward of `L = <do, o> + <dht, S_T>` (`do [B,T,HV,V]` dtype T, `dht [N,HV,K,V]` f32 or
/// none) by the kernels [`dd::route`] picks for `algo`; allocates its workspace and the
/// (NaN-poisoned) gradients ([`delta_bwd_ws`] takes the caller's).
///
/// # Errors
/// Shape mismatch, unsupported K, launch or compile errors.
pub fn delta_bwd<T: Elem>(
    cuda: &Cuda,
    algo: DeltaAlgo,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
) -> Result<DeltaDevGrads> {
    let mut ws = DeltaWorkspace::for_problem(cuda, dp, algo, false, true)?;
    let mut g = DeltaDevGrads::alloc(cuda, &dp.problem, x.h0.is_some())?;
    delta_bwd_ws(cuda, algo, dp, x, d_o, dht, &mut ws, false, g.as_out(x.h0.is_some()))?;
    Ok(g)
}

/// [`delta_bwd`] into the caller's gradients with the caller's workspace (at least
/// [`DeltaWorkspaceLens::backward`] of the problem, e.g. [`DeltaWorkspace::for_problem`]);
/// allocates nothing. Every element of the gradients is written.
///
/// `fwd_in_ws`: [`delta_fwd_ws`] ran on these inputs with this workspace, and nothing else has
/// used it since (a forward then its backward on one workspace, as gla-check's op rows run it;
/// the language model shares one workspace across layers and passes `false`): the chunked
/// backward then reuses the forward's T, G, chunk states and v_new (and w, u after the WY form)
/// instead of recomputing them (the recurrent backward ignores it). A wrong `true` gives wrong gradients, never an out-of-bounds access.
///
/// # Errors
/// As [`delta_bwd`]; [`Error::Op`] for gradients of the wrong lengths or a workspace that is too
/// small.
#[allow(clippy::too_many_arguments)]
pub fn delta_bwd_ws<T: Elem>(
    cuda: &Cuda,
    algo: DeltaAlgo,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    ws: &mut DeltaWorkspace<T>,
    fwd_in_ws: bool,
    g: DeltaDevGradsMut<'_>,
) -> Result<()> {
    let op = "delta_bwd";
    let p = &dp.problem;
    check_inputs(op, p, x)?;
    check_len(op, "do", p.v_len(), d_o.len())?;
    if let Some(dht) = dht {
        check_len(op, "dht", p.state_len(), dht.len())?;
    }
    g.check(op, p, x)?;
    let bf16 = is_bf16::<T>();
    let r = dd::route(p, bf16, algo).map_err(unsupported)?;
    ws.check(op, &r.backward_lens(dp.n_chunks, bf16, cuda.sm_count()))?;
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let scale = p.scale() as f32;
    let (l2, _bscale, gmode) = options(p);
    // both problems' grids checked before any launch: no partial gradients on a refusal
    grid_nhv(op, &r.kernel)?;
    let nhv = grid_nhv(op, p)?;
    let rows = p.rows() as i64;
    let np = match r.path {
        DeltaPath::Recurrent => {
            let ws = &*ws;
            let (bt, dq, dk) = (req(&ws.bt, "beta")?, req(&ws.dq, "dq partials")?, req(&ws.dk, "dk partials")?);
            let (db, dg, ckpt, seg) =
                (req(&ws.db, "dbeta partials")?, req(&ws.dg, "dg partials")?, req(&ws.ckpt, "ckpt")?, req(&ws.seg, "seg")?);
            gate_prep(cuda, p, 1, x, bt, ws.gl.as_ref())?;
            let dh0 = g.dh0.as_deref().filter(|_| x.h0.is_some());
            let gl = ws.gl.as_ref().filter(|_| gmode > 0);
            let name = format!("delta_rec_bwd_{}", T::SUFFIX);
            // SAFETY: arguments match delta_rec_bwd's signature; the partials hold NV x [rows,
            // HV, K] (dq, dk) and NV x [rows, HV] (dbeta, dg), the checkpoints and scratch as
            // DeltaWorkspaceLens::backward sizes them for the grid (checked above)
            unsafe {
                cuda.launch(
                    &name,
                    dd::rec_cfg(p.v(), nhv),
                    &[
                        x.q, x.k, x.v, bt, &gl, &x.h0, d_o, &dht, dq, dk, &*g.dv, db, dg, &dh0, ckpt, seg, &dp.bounds, &h, &hv, &k, &v,
                        &scale, &l2, &gmode, &rows,
                    ],
                )?;
            }
            p.v().div_ceil(REC_BV)
        }
        DeltaPath::Chunk { kp } if r.vs > 1 => {
            // value sub-heads: h0 (then dh0) in the workspace's sa, dht in sb, in their layout
            with_split_states(ws, |ws, sa, sb| {
                let (sa, sb) = (&*sa, &*sb);
                if let (Some(h0), false) = (x.h0, fwd_in_ws) {
                    state_split(cuda, h0, sa, &r.kernel, r.vs, true)?;
                }
                if let Some(dht) = dht {
                    state_split(cuda, dht, sb, &r.kernel, r.vs, true)?;
                }
                let xs = DeltaDevInputs { h0: x.h0.map(|_| sa), ..*x };
                let dh0 = x.h0.map(|_| sa);
                chunk_bwd(cuda, &r, dp, &xs, d_o, dht.map(|_| sb), ws, kp, fwd_in_ws, &g, dh0)?;
                if let (Some(_), Some(out)) = (x.h0, g.dh0.as_deref()) {
                    state_split(cuda, sa, out, &r.kernel, r.vs, false)?;
                }
                Ok(())
            })?;
            1
        }
        DeltaPath::Chunk { kp } => {
            let dh0 = g.dh0.as_deref().filter(|_| x.h0.is_some());
            chunk_bwd(cuda, &r, dp, x, d_o, dht, ws, kp, fwd_in_ws, &g, dh0)?;
            1
        }
    };
    let direct = matches!(r.path, DeltaPath::Chunk { .. }) && dd::direct_qk(&r.kernel);
    finalize(cuda, p, &r, x, ws, np, direct, g)
}

/// The chunked backward's launches up to the WY backward on the route's problem: prep, WY and
/// state pass (recomputed unless `fwd_in_ws`), dvl, state-gradient pass, dq/dk, WY backward.
/// dq and dk go straight to the gradients where [`dd::direct_qk`], else to the workspace's
/// partials; `x.h0`, `dht` and `dh0` are in the kernels' layout.
#[allow(clippy::too_many_arguments)]
fn chunk_bwd<T: Elem>(
    cuda: &Cuda,
    r: &dd::DeltaRoute,
    dp: &DevDeltaProblem,
    x: &DeltaDevInputs<'_, T>,
    d_o: &CudaSlice<T>,
    dht: Option<&CudaSlice<f32>>,
    ws: &DeltaWorkspace<T>,
    kp: usize,
    fwd_in_ws: bool,
    g: &DeltaDevGradsMut<'_>,
    dh0: Option<&CudaSlice<f32>>,
) -> Result<()> {
    let op = "delta chunked backward";
    let p = &r.kernel;
    let bf16 = is_bf16::<T>();
    let (vp, nch) = (dd::vpad(p.v()), dp.n_chunks as i64);
    // `plan.out`: the state-gradient pass computes dvl itself (no delta_dvl launch, no dvl
    // buffer: DeltaRoute::backward_lens leaves it out, and the `_dv2` entries take null)
    let plan = dd::h_plan(true, bf16, kp, vp, p.n() * p.hv(), cuda.sm_count());
    let bwd_res = dd::h_bwd_res(bf16, kp, plan, vp, p.n() * p.hv(), cuda.sm_count());
    let reused = fwd_in_ws && ws.kept.load(std::sync::atomic::Ordering::Relaxed);
    if !reused {
        // the recomputation takes the residual form where the state-gradient pass has one (the
        // language model's flow: gla-check's `chunk-recompute` rows), or where the lab forces it
        chunk_prep(cuda, p, r.vs, x, ws)?;
        chunk_wy_h(cuda, p, dp, x, ws, kp, None, None)?;
    }
    // after the residual forward (no w): the state-gradient pass's residual form, or else the
    // WY pass for w
    let res = ws.res_fwd.load(std::sync::atomic::Ordering::Relaxed);
    if res && !bwd_res {
        // w over any P the forward left in its buffer
        ws.pm_kept.store(false, std::sync::atomic::Ordering::Relaxed);
        wy_launch(cuda, op, p, dp, x, ws, kp, Some(req(&ws.tm, "T")?), false)?;
    }
    let (h, hv, k, v) = (p.h() as i32, p.hv() as i32, p.k() as i32, p.v() as i32);
    let scale = p.scale() as f32;
    let vp32 = vp as i32;
    let smem = DeltaSmem::new(bf16, kp, vp);
    let (bounds, off, seq) = (&dp.bounds, &dp.chunk_off, &dp.chunk_seq);
    let (w, tm, g2, hs, vn) = (req(&ws.w, "w")?, req(&ws.tm, "T")?, req(&ws.g2, "G")?, req(&ws.hs, "hs")?, req(&ws.vn, "v_new")?);
    let (dhs, du, dgk) = (req(&ws.dhs, "dhs")?, req(&ws.du, "dU")?, req(&ws.dgk, "dG")?);
    let (db, dg, bt) = (req(&ws.db, "dbeta")?, req(&ws.dg, "dg")?, req(&ws.bt, "beta")?);
    let (dq, dk) = if dd::direct_qk(p) { (&*g.dq, &*g.dk) } else { (req(&ws.dq, "dq")?, req(&ws.dk, "dk")?) };
    let gx = grid_chunks(op, dp.n_chunks)?;
    let sfx = T::SUFFIX;
    let dvl = if plan.out { None } else { Some(req(&ws.dvl, "dvl")?) };
    if let (true, Some(dvl)) = (dp.n_chunks > 0, dvl) {
        // SAFETY: arguments match delta_dvl_*'s signature; dvl holds chunks x HV x 64 x VP f32
        unsafe {
            cuda.launch(
                &format!("delta_dvl_k{kp}_{sfx}"),
                dd::chunk_cfg(gx, p.hv(), 1, smem.dvl()),
                &[x.q, x.k, &ws.rq, &ws.rk, d_o, g2, dvl, bounds, off, seq, &h, &hv, &k, &v, &vp32, &scale],
            )?;
        }
    }
    if res && bwd_res {
        // heads nhv - tail .. nhv on 32 columns, in a launch of their own (dd::hb_tail)
        let nhv = grid_nhv(op, p)?;
        let tail = dd::hb_tail(plan, vp, nhv as usize, cuda.sm_count()) as u32;
        let parts = [(plan, 0, nhv - tail), (dd::HPlan { bv: 32, ..plan }, nhv - tail, tail)];
        // P read ([`dd::hb_pm`]): into w's buffer, which the residual form leaves unformed,
        // unless the reused forward left it there (its delta_pm on the same q, k and G: the
        // same bits)
        let pm = dd::hb_pm(plan) && dp.n_chunks > 0;
        if pm && !(reused && ws.pm_kept.load(std::sync::atomic::Ordering::Relaxed)) {
            pm_launch(cuda, op, p, dp, x, ws, kp, w)?;
        }
        for (pl, nh0, nhs) in parts.into_iter().filter(|part| part.2 > 0) {
            let nh0 = nh0 as i32;
            let mut args: Vec<&dyn KernelArg> = vec![
                x.q, x.k, &ws.rq, &ws.rk, &NULL, d_o, &dvl, g2, &dht, dhs, du, &dh0, bounds, off, &h, &hv, &k, &v, &vp32, &scale, &nch, tm,
                bt, &nh0,
            ];
            let name = if pm && pl == plan {
                args.push(w);
                dd::hbrp_name(pl, kp)
            } else {
                dd::hbr_name(pl, kp)
            };
            let (name, bytes) = dd::hb_launch(name, cuda.arch(), smem.h_bwd_res(pl));
            // SAFETY: arguments match delta_h_bwd_rdv2's (and its warpgroup form's, the same),
            // delta_h_bwd_rdv2_v32's and delta_h_bwd_rv32's (delta_h_bwd_dv2's, w unread, then
            // T, beta and the first sequence x value head; dvl unread by `_rdv2*`, so null only
            // for them), and delta_h_bwd_rdvp1's (then P, delta_pm's); one block per (V tile,
            // sequence x value head from nh0) walking its chunks in reverse; dhs, du sized for
            // the problem
            unsafe { cuda.launch(&name, dd::state_cfg(vp, pl.bv, nhs, bytes), &args)? };
        }
    } else {
        // SAFETY: arguments match delta_h_bwd_*'s signature (the `_dv2` entries do not read
        // dvl, so it is null only for them); one block per (V tile, sequence x value head)
        // walking its chunks in reverse; dhs, du sized for the problem
        unsafe {
            cuda.launch(
                &dd::h_name(true, plan, kp, sfx),
                dd::state_cfg(vp, plan.bv, grid_nhv(op, p)?, smem.h_bwd(plan)),
                &[x.q, x.k, &ws.rq, &ws.rk, w, d_o, &dvl, g2, &dht, dhs, du, &dh0, bounds, off, &h, &hv, &k, &v, &vp32, &scale, &nch],
            )?;
        }
    }
    if dp.n_chunks == 0 {
        return Ok(());
    }
    let kz = dd::dqk_kz(bf16, kp);
    let (dqk, dqk_smem) = dd::dqk_kernel(bf16, kp, sfx, cuda.arch(), &smem);
    // SAFETY: arguments match delta_dqk_*'s signature (the `_s2` and `_wg` entries': the same);
    // grid z covers KP in tiles of KW; dq, dk hold [rows, HV, K] f32, dG KZ x chunks x HV x 64
    unsafe {
        cuda.launch(
            &dqk,
            dd::chunk_cfg(gx, p.hv(), kz, dqk_smem),
            &[x.q, x.k, &ws.rq, &ws.rk, d_o, vn, hs, dhs, g2, dq, dk, dgk, bounds, off, seq, &h, &hv, &k, &v, &vp32, &scale, &nch],
        )?;
    }
    let kz32 = kz as i32;
    let (wyb, wyb_smem) = dd::wy_bwd_kernel(kp, sfx, cuda.arch(), &smem);
    // SAFETY: arguments match delta_wy_bwd_*'s signature (dw formed in the launch from dU and
    // the chunk states hs; the `_wg` entries': the same); dk holds delta_dqk's values (added
    // to); dv, dbeta and dg partials are written for every row of every chunk
    unsafe {
        cuda.launch(
            &wyb,
            dd::chunk_cfg(gx, p.hv(), 1, wyb_smem),
            &[x.k, &ws.rk, x.v, bt, tm, hs, du, g2, dgk, dk, &*g.dv, db, dg, bounds, off, seq, &h, &hv, &k, &v, &vp32, &kz32, &nch],
        )
    }
}

/// The backward's last launches: the `np` partials summed, the group of value heads (and the
/// route's value sub-heads) summed, through the elementwise maps (L2 norm, sigmoid, computed
/// gate). `p` is the caller's problem, `r` the route the partials were written on.
#[allow(clippy::too_many_arguments)]
fn finalize<T: Elem>(
    cuda: &Cuda,
    p: &DeltaProblem,
    r: &dd::DeltaRoute,
    x: &DeltaDevInputs<'_, T>,
    ws: &DeltaWorkspace<T>,
    np: usize,
    direct: bool,
    g: DeltaDevGradsMut<'_>,
) -> Result<()> {
    let (h, hv, k) = (p.h() as i32, p.hv() as i32, p.k() as i32);
    // the dq / dk partials are [rows, HV', K] over the route's value heads
    let hv_k = r.kernel.hv() as i32;
    let vs = r.vs as i32;
    let (l2, bscale, gmode) = options(p);
    let (rows, np32) = (p.rows() as i64, np as i32);
    let (db, dg) = (req(&ws.db, "dbeta")?, req(&ws.dg, "dg")?);
    let sfx = T::SUFFIX;
    if p.rows() > 0 && !direct {
        let (dq, dk) = (req(&ws.dq, "dq")?, req(&ws.dk, "dk")?);
        // SAFETY: one warp per (row, head) of [rows, H, K]; the partials hold np x [rows, HV', K]
        unsafe {
            cuda.launch(
                &format!("delta_qk_bwd_{sfx}"),
                dd::flat_cfg(p.rows() * p.h(), 8),
                &[x.q, x.k, dq, dk, &*g.dq, &*g.dk, &rows, &h, &hv_k, &k, &np32, &l2],
            )?;
        }
    }
    if p.rows() > 0 {
        let n = p.beta_len() as i64;
        let dgo = (gmode > 0).then_some(&*g.dg);
        // SAFETY: one thread per (row, value head); the partials hold np x [rows, HV * vs]
        unsafe {
            cuda.launch(
                &format!("delta_gate_bwd_{sfx}"),
                dd::flat_cfg(p.beta_len(), 256),
                &[x.beta, &x.g, &x.a_log, &x.dt_bias, db, dg, &*g.dbeta, &dgo, &n, &hv, &vs, &np32, &bscale, &gmode],
            )?;
        }
    }
    if gmode == 2 {
        let cfg = cudarc::driver::LaunchConfig { grid_dim: (p.hv() as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        if p.rows() == 0 {
            for b in [&mut *g.da_log, &mut *g.ddt_bias] {
                cuda.stream().memset_zeros(b).map_err(Error::driver("zero dA_log / ddt_bias"))?;
            }
        } else {
            // SAFETY: one block per value head summing every row (and sub-head) of dg's np
            // partials
            unsafe {
                cuda.launch(
                    &format!("delta_gate_param_bwd_{sfx}"),
                    cfg,
                    &[&x.g, &x.a_log, &x.dt_bias, dg, &*g.da_log, &*g.ddt_bias, &rows, &hv, &vs, &np32],
                )?;
            }
        }
    }
    Ok(())
}
