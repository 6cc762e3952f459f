//! Timing of the GLA ops on the GPU: CUDA events around each run, the median of `reps` runs after
//! one warm-up, with the two reference numbers of each measurement (METHOD.md): the bytes the
//! op must move at least (each input read once, each output written once) and its FLOPs.
//!
//! Inputs follow fla's benchmark (benchmarks/ops/registry.py): q, k, v, do ~ N(0, 1) (here a
//! sum of uniforms: same scale, no tails), g = logsigmoid(N(0, 1)).clamp_min(-5), bf16.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;
use gla_core::{GateKind, Problem, ProblemSpec};

use crate::error::{Error, Result};
use crate::ops::{self, f32_to_bf16, DevInputs, DevProblem, FwdKernel};
use crate::runtime::Cuda;

/// The card's HBM rate, the ceiling the floors below use: bytes read + written per second by a
/// device-to-device copy of 1 GiB (256 MiB where that does not fit), the median of 5 event-timed
/// copies after a warm-up (the H200 gives about 4.24e12, an H100 80GB HBM3 less: each card's
/// floors are its own).
///
/// # Errors
/// Allocation or driver errors.
pub fn hbm_rate(cuda: &Cuda) -> Result<f64> {
    let mut last = None;
    for n in [1usize << 28, 1 << 26] {
        let bufs = cuda.alloc_zeros::<f32>(n, "HBM probe").and_then(|a| Ok((a, cuda.alloc_zeros::<f32>(n, "HBM probe")?)));
        match bufs {
            Ok((src, mut dst)) => {
                let ms = time_ms(cuda, 5, &mut || cuda.stream().memcpy_dtod(&src, &mut dst).map_err(Error::driver("HBM probe copy")))?;
                return Ok(2.0 * 4.0 * n as f64 / (ms * 1e-3));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one probe size"))
}

/// fla's README benchmark shape with wide heads, `[B, T, H, K, V]` = 8 x 2048 x 32 x 256 x 256
/// (the same element count as the shapes of record; the chunked path's split launches).
pub const README_SHAPE: [usize; 5] = [8, 2048, 32, 256, 256];

/// The shapes of record (DESIGN.md section 5): bf16, H = 16, K = V = 128, B*T = 65536,
/// T in {2048, 8192, 32768}, as `[B, T, H, K, V]`, then [`README_SHAPE`].
pub fn default_shapes() -> Vec<[usize; 5]> {
    let mut v: Vec<[usize; 5]> = [2048usize, 8192, 32768].iter().map(|&t| [65536 / t, t, 16, 128, 128]).collect();
    v.push(README_SHAPE);
    v
}

/// One timed measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// `[B, T, H, K, V]`.
    pub shape: [usize; 5],
    /// `fwd` or `fwd+bwd`.
    pub pass: &'static str,
    /// Which kernels ran (`chunk`, `chunk-wide`, `chunk+recurrent-bwd`, ...).
    pub kernel: &'static str,
    /// Median time in ms.
    pub ms: f64,
    /// Least bytes moved through HBM by this pass.
    pub bytes: f64,
    /// FLOPs of the chunked algorithm for this pass (`Problem::chunk_flops`).
    pub flops: f64,
}

impl BenchRow {
    /// Achieved bandwidth over the least bytes, GB/s.
    pub fn gbs(&self) -> f64 {
        self.bytes / self.ms / 1e6
    }
    /// Achieved TFLOP/s.
    pub fn tflops(&self) -> f64 {
        self.flops / self.ms / 1e9
    }
    /// The HBM floor: least bytes at `hbm` bytes per second ([`hbm_rate`]), ms.
    pub fn floor_ms(&self, hbm: f64) -> f64 {
        self.bytes / hbm * 1e3
    }
    /// Measured time over the floor at `hbm` bytes per second.
    pub fn x_floor(&self, hbm: f64) -> f64 {
        self.ms / self.floor_ms(hbm)
    }
}

/// Median of `reps` event-timed runs of `f` after one warm-up run, ms.
///
/// # Errors
/// What `f` returns; driver errors of the events.
pub fn time_ms(cuda: &Cuda, reps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let s = cuda.stream();
    let ev = || cuda.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::driver("create event"));
    f()?;
    cuda.sync()?;
    let mut ts = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let (a, z) = (ev()?, ev()?);
        a.record(s).map_err(Error::driver("record event"))?;
        f()?;
        z.record(s).map_err(Error::driver("record event"))?;
        z.synchronize().map_err(Error::driver("event synchronize"))?;
        ts.push(f64::from(a.elapsed_ms(&z).map_err(Error::driver("event elapsed"))?));
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// `n` bf16 values of `f(x)`, x ~ approximately N(0, 1), drawn in parallel (deterministic).
pub(crate) fn draw_bf16(n: usize, seed: u64, f: fn(f32) -> f32) -> Vec<u16> {
    let mut out = vec![0u16; n];
    let threads = std::thread::available_parallelism().map_or(4, |x| x.get()).min(32);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (ci, chunk) in out.chunks_mut(per).enumerate() {
            sc.spawn(move || {
                let mut st = seed ^ (ci as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = || {
                    st = st.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = st;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^ (z >> 31)
                };
                for x in chunk.iter_mut() {
                    // sum of 4 uniforms on [0, 1): mean 2, variance 1/3 -> scale to unit variance
                    let r = next();
                    let u = |i: u32| ((r >> (16 * i)) & 0xffff) as f32 / 65536.0;
                    let z = (u(0) + u(1) + u(2) + u(3) - 2.0) * 1.732_050_8;
                    *x = f32_to_bf16(f(z));
                }
            });
        }
    });
    out
}

fn logsigmoid_clamped(x: f32) -> f32 {
    // logsigmoid(x) = min(x, 0) - ln(1 + exp(-|x|)), clamped at -5 like fla's benchmark
    (x.min(0.0) - (-x.abs()).exp().ln_1p()).max(-5.0)
}

/// Times the forward (`chunk`; with `stages`, also the chunked path's prep + state pass alone, and the
/// backward's launches cumulatively) and,
/// with `bwd`, the forward+backward on each shape, bf16, per-key gate, no initial or final state
/// (fla's benchmark calls).
///
/// # Errors
/// Invalid shapes; driver, compile or launch errors.
pub fn bench_ops(cuda: &Arc<Cuda>, shapes: &[[usize; 5]], reps: usize, stages: bool, bwd: bool) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    // inputs drawn once for the largest size; every shape uses a prefix
    let max_qk = shapes.iter().map(|&[b, t, h, k, _]| b * t * h * k).max().unwrap_or(0);
    let max_v = shapes.iter().map(|&[b, t, h, _, v]| b * t * h * v).max().unwrap_or(0);
    let up = |x: Vec<u16>, what: &'static str| -> Result<CudaSlice<u16>> { cuda.upload(&x, what) };
    let q = up(draw_bf16(max_qk, 1, |z| z), "q")?;
    let k = up(draw_bf16(max_qk, 2, |z| z), "k")?;
    let v = up(draw_bf16(max_v, 3, |z| z), "v")?;
    let g = up(draw_bf16(max_qk, 4, logsigmoid_clamped), "g")?;
    let d_o = up(draw_bf16(max_v, 5, |z| z), "do")?;
    for &[b, t, h, kd, vd] in shapes {
        let p = Problem::new(ProblemSpec { b, t, h, k: kd, v: vd, gate: GateKind::PerKey, scale: None, cu_seqlens: None })?;
        let (nqk, nv) = (p.qk_len(), p.v_len());
        let (qs, ks, gs) = (q.slice(0..nqk), k.slice(0..nqk), g.slice(0..nqk));
        let (vs, dos) = (v.slice(0..nv), d_o.slice(0..nv));
        // the launchers take whole slices: copy the prefixes when the shape is smaller
        let own = |x: &cudarc::driver::CudaView<'_, u16>| -> Result<CudaSlice<u16>> { cuda.duplicate(x, "input") };
        let (q1, k1, v1s, g1, do1) = (own(&qs)?, own(&ks)?, own(&vs)?, own(&gs)?, own(&dos)?);
        let dp = DevProblem::new(cuda, &p)?;
        let x = DevInputs { q: &q1, k: &k1, v: &v1s, g: Some(&g1), h0: None };
        let mut o = cuda.alloc_zeros::<u16>(nv, "o")?;
        let (ffl, bfl) = p.chunk_flops();
        // least bytes: fwd reads q, k, v, g and writes o (bf16); bwd reads q, k, v, g, do (bf16)
        // and writes dq, dk, dv, dg (f32, the op's contract)
        let fwd_bytes = 2.0 * (3 * nqk + 2 * nv) as f64;
        let bwd_bytes = 2.0 * (3 * nqk + 2 * nv) as f64 + 4.0 * (3 * nqk + nv) as f64;
        // the tensor-core kernels take K <= 256 (above 128: the split launches, labelled
        // `chunk-wide`); wider keys run on the recurrent kernels, labelled as such
        let no_chunk = ops::chunk_fwd_path(&p).is_none();
        let (fwd_kernel, fwd_name) = match ops::chunk_fwd_path(&p) {
            Some(path) => (FwdKernel::Chunk, path.label()),
            None => (FwdKernel::Recurrent, "recurrent (K>256)"),
        };
        let mut kernels = vec![(fwd_kernel, fwd_name)];
        if stages && !no_chunk {
            kernels.push((FwdKernel::ChunkStatePass, "chunk-state-pass"));
        }
        for (which, name) in kernels {
            let ms = time_ms(cuda, reps, &mut || ops::gla_fwd(cuda, which, &dp, &x, &mut o, None))?;
            rows.push(BenchRow { shape: [b, t, h, kd, vd], pass: "fwd", kernel: name, ms, bytes: fwd_bytes, flops: ffl });
        }
        if !bwd {
            continue;
        }
        let chunk_bwd = ops::chunk_bwd_supported::<u16>(&p);
        let (bname, breps) = match (no_chunk, ops::chunk_bwd_path(&p).filter(|_| chunk_bwd)) {
            (true, _) => ("recurrent (K>256)", reps.min(3)),
            (false, Some(path)) => (path.label(), reps),
            (false, None) => ("chunk+recurrent-bwd", reps.min(3)),
        };
        let ms = time_ms(cuda, breps, &mut || {
            ops::gla_fwd(cuda, fwd_kernel, &dp, &x, &mut o, None)?;
            if chunk_bwd {
                ops::gla_bwd_chunk(cuda, &dp, &x, &do1, None, false).map(drop)
            } else {
                ops::gla_bwd(cuda, &dp, &x, &do1, None).map(drop)
            }
        })?;
        rows.push(BenchRow {
            shape: [b, t, h, kd, vd],
            pass: "fwd+bwd",
            kernel: bname,
            ms,
            bytes: fwd_bytes + bwd_bytes,
            flops: ffl + bfl,
        });
        if stages && ops::chunk_bwd_supported::<u16>(&p) {
            // the backward's launches, cumulative: prep, +state pass, +state-gradient pass, +A,
            // +bwd1, +bwd2 (= the whole backward)
            const NAMES: [&str; 6] = ["bwd<=prep", "bwd<=h", "bwd<=dh", "bwd<=A", "bwd<=bwd1", "bwd (all)"];
            for (i, name) in NAMES.iter().enumerate() {
                let ms = time_ms(cuda, reps, &mut || ops::gla_bwd_chunk_stages(cuda, &dp, &x, &do1, None, false, i + 1).map(drop))?;
                rows.push(BenchRow { shape: [b, t, h, kd, vd], pass: "bwd", kernel: name, ms, bytes: bwd_bytes, flops: bfl });
            }
        }
    }
    Ok(rows)
}

/// A plain-text table of the rows, floors at `hbm` bytes per second ([`hbm_rate`]).
pub fn format_rows(rows: &[BenchRow], hbm: f64) -> String {
    let mut s = format!(
        "{:<22} {:<8} {:<20} {:>9} {:>9} {:>9} {:>10} {:>8}\n",
        "shape BxTxHxKxV", "pass", "kernel", "ms", "GB/s", "TFLOP/s", "floor ms", "x floor"
    );
    for r in rows {
        let [b, t, h, k, v] = r.shape;
        s += &format!(
            "{:<22} {:<8} {:<20} {:>9.3} {:>9.0} {:>9.1} {:>10.3} {:>8.1}\n",
            format!("{b}x{t}x{h}x{k}x{v}"),
            r.pass,
            r.kernel,
            r.ms,
            r.gbs(),
            r.tflops(),
            r.floor_ms(hbm),
            r.x_floor(hbm)
        );
    }
    s
}

/// The delta rule's shapes of record (DESIGN.md section 5): bf16, H = 16, K = V = 128, B*T =
/// 65536, T in {2048, 8192, 32768}, as `[B, T, H, K, V]`.
pub fn default_delta_shapes() -> Vec<[usize; 5]> {
    [2048usize, 8192, 32768].iter().map(|&t| [65536 / t, t, 16, 128, 128]).collect()
}

/// One timed measurement of a delta-rule op: `op` is `delta` (DeltaNet) or `gdn` (Gated
/// DeltaNet, the log decay given).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaBenchRow {
    /// `delta` or `gdn`.
    pub op: &'static str,
    /// The measurement (kernel: `chunk` or `recurrent`).
    pub row: BenchRow,
}

/// The inputs of the delta benchmarks on one shape, drawn like fla's delta-rule benchmark
/// (bench/delta_vs_fla.py): q, v, do ~ N(0, 1), k L2-normalised N(0, 1), beta = sigmoid(U(0, 1)),
/// g = logsigmoid(N(0, 1)).
struct DeltaBenchInputs {
    q: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    beta: CudaSlice<u16>,
    g: CudaSlice<u16>,
    d_o: CudaSlice<u16>,
}

impl DeltaBenchInputs {
    fn new(cuda: &Cuda, [b, t, h, kd, vd]: [usize; 5]) -> Result<Self> {
        let (nqk, nv, nb) = (b * t * h * kd, b * t * h * vd, b * t * h);
        let up = |x: Vec<u16>, what: &'static str| -> Result<CudaSlice<u16>> { cuda.upload(&x, what) };
        let mut kh = draw_bf16(nqk, 12, |z| z);
        for row in kh.chunks_mut(kd) {
            let n = row.iter().map(|&u| f64::from(crate::ops::bf16_to_f32(u)).powi(2)).sum::<f64>().sqrt().max(1e-12);
            row.iter_mut().for_each(|u| *u = f32_to_bf16((f64::from(crate::ops::bf16_to_f32(*u)) / n) as f32));
        }
        Ok(Self {
            q: up(draw_bf16(nqk, 11, |z| z), "q")?,
            k: up(kh, "k")?,
            v: up(draw_bf16(nv, 13, |z| z), "v")?,
            // sigmoid of a value in [0, 1] (z is ~N(0, 1))
            beta: up(draw_bf16(nb, 14, |z| 1.0 / (1.0 + (-(0.5 + 0.29 * z).clamp(0.0, 1.0)).exp())), "beta")?,
            g: up(draw_bf16(nb, 15, |z| z.min(0.0) - (-z.abs()).exp().ln_1p()), "g")?,
            d_o: up(draw_bf16(nv, 16, |z| z), "do")?,
        })
    }
}

/// One delta op on one shape, ready to time: problem, inputs, workspaces and gradients allocated
/// once (nothing is allocated in a timed call).
struct DeltaBenchOp<'a> {
    dp: crate::delta::ops::DevDeltaProblem,
    x: crate::delta::ops::DeltaDevInputs<'a, u16>,
    d_o: &'a CudaSlice<u16>,
    /// A training workspace (the forward's and the backward's buffers): [`Self::fwd_bwd`]'s.
    ws: crate::delta::ops::DeltaWorkspace<u16>,
    /// A forward-only workspace (no backward buffers, as inference and prefill hold it):
    /// [`Self::fwd`]'s; made where `new` is asked to.
    ws_fwd: Option<crate::delta::ops::DeltaWorkspace<u16>>,
    grads: crate::delta::ops::DeltaDevGrads,
    o: CudaSlice<u16>,
}

impl<'a> DeltaBenchOp<'a> {
    /// The op on one shape; `fwd_only_ws`: also a forward-only workspace, for [`Self::fwd`].
    fn new(cuda: &Cuda, inp: &'a DeltaBenchInputs, [b, t, h, kd, vd]: [usize; 5], op: &str, fwd_only_ws: bool) -> Result<Self> {
        use crate::delta::ops::{DeltaDevGrads, DeltaDevInputs, DeltaWorkspace, DevDeltaProblem};
        use gla_core::{DeltaGate, DeltaProblem, DeltaSpec};
        let gate = if op == "gdn" { DeltaGate::LogDecay } else { DeltaGate::None };
        let p = DeltaProblem::new(DeltaSpec::new(b, t, h, kd, vd, gate))?;
        let dp = DevDeltaProblem::new(cuda, &p)?;
        let g = (gate != DeltaGate::None).then_some(&inp.g);
        let x = DeltaDevInputs { q: &inp.q, k: &inp.k, v: &inp.v, beta: &inp.beta, g, a_log: None, dt_bias: None, h0: None };
        let algo = crate::dispatch::delta::DeltaAlgo::Chunked;
        let ws = DeltaWorkspace::<u16>::for_problem(cuda, &dp, algo, true, true)?;
        let ws_fwd = if fwd_only_ws { Some(DeltaWorkspace::<u16>::for_problem(cuda, &dp, algo, true, false)?) } else { None };
        let grads = DeltaDevGrads::alloc(cuda, &p, false)?;
        let o = cuda.alloc_zeros::<u16>(p.v_len(), "o")?;
        Ok(Self { dp, x, d_o: &inp.d_o, ws, ws_fwd, grads, o })
    }
    /// The forward on the forward-only workspace.
    fn fwd(&mut self, cuda: &Cuda) -> Result<()> {
        let ws = self.ws_fwd.as_mut().ok_or_else(|| {
            Error::Op(gla_core::Error::Unsupported { backend: "cuda", what: "delta bench: no forward-only workspace".into() })
        })?;
        crate::delta::ops::delta_fwd_ws(cuda, crate::dispatch::delta::DeltaAlgo::Chunked, &self.dp, &self.x, ws, &mut self.o, None)
    }
    /// The forward and the backward on the training workspace (the backward reuses the
    /// forward's intermediates: T, G, the chunk states and v_new, and w, u after the WY form).
    fn fwd_bwd(&mut self, cuda: &Cuda) -> Result<()> {
        let algo = crate::dispatch::delta::DeltaAlgo::Chunked;
        crate::delta::ops::delta_fwd_ws(cuda, algo, &self.dp, &self.x, &mut self.ws, &mut self.o, None)?;
        crate::delta::ops::delta_bwd_ws(cuda, algo, &self.dp, &self.x, self.d_o, None, &mut self.ws, true, self.grads.as_out(false))
    }
}

/// Times the delta rule's forward and forward+backward (bf16, the dispatch policy's chunked
/// kernels) on each shape, for each op of `ops` (`delta`: DeltaNet; `gdn`: Gated DeltaNet with
/// the log decay given), with the op's plain options (no L2 norm, sigmoid or gate inside the op),
/// no initial or final state, inputs as `DeltaBenchInputs`. The `fwd` row times the forward
/// on a forward-only workspace (what inference and prefill hold), the `fwd+bwd` row the forward
/// and backward on a training workspace (the forward's and the backward's buffers, whose
/// intermediates the backward reuses; fla keeps T and recomputes the rest); both workspaces are
/// allocated before either is timed. The dispatch picks the residual or the WY forward for each
/// (`dispatch::delta::h_res`, `res_ok`: the training workspace takes the residual form only
/// where its backward has one).
///
/// # Errors
/// Invalid shapes; driver, compile or launch errors.
pub fn bench_delta(cuda: &Arc<Cuda>, shapes: &[[usize; 5]], reps: usize, ops: &[&'static str]) -> Result<Vec<DeltaBenchRow>> {
    use crate::dispatch::delta::{route, DeltaAlgo};
    let mut rows = Vec::new();
    for &shape in shapes {
        let inp = DeltaBenchInputs::new(cuda, shape)?;
        for &op in ops {
            let mut b = DeltaBenchOp::new(cuda, &inp, shape, op, true)?;
            let p = b.dp.problem.clone();
            let kernel = route(&p, true, DeltaAlgo::Chunked)
                .map_err(|e| Error::Op(gla_core::Error::Unsupported { backend: "cuda", what: e }))?
                .label();
            let (nqk, nv, nb) = (p.qk_len(), p.v_len(), p.beta_len());
            let (ffl, bfl) = p.chunk_flops();
            let fwd_bytes = p.min_bytes_fwd(2, false);
            // the backward reads q, k, v, beta, g, do (bf16) and writes dq, dk, dv, dbeta, dg (f32)
            let bwd_bytes = (2 * (2 * nqk + 2 * nv + nb + p.g_len()) + 4 * (2 * nqk + nv + nb + p.g_len())) as f64;
            let ms = time_ms(cuda, reps, &mut || b.fwd(cuda))?;
            rows.push(DeltaBenchRow { op, row: BenchRow { shape, pass: "fwd", kernel, ms, bytes: fwd_bytes, flops: ffl } });
            let ms = time_ms(cuda, reps, &mut || b.fwd_bwd(cuda))?;
            let row = BenchRow { shape, pass: "fwd+bwd", kernel, ms, bytes: fwd_bytes + bwd_bytes, flops: ffl + bfl };
            rows.push(DeltaBenchRow { op, row });
        }
    }
    Ok(rows)
}

/// The time of each launch of one forward+backward of `op` on `shape` (CUDA events around each
/// launch, after a warm-up run) on a training workspace, as [`bench_delta`]'s `fwd+bwd` row,
/// then of one forward on a forward-only workspace, as its `fwd` row: plain-text tables, one
/// line per launch.
///
/// # Errors
/// As [`bench_delta`].
pub fn delta_stages(cuda: &Arc<Cuda>, shape: [usize; 5], op: &str) -> Result<String> {
    let inp = DeltaBenchInputs::new(cuda, shape)?;
    let mut b = DeltaBenchOp::new(cuda, &inp, shape, op, true)?;
    b.fwd_bwd(cuda)?;
    b.fwd(cuda)?;
    cuda.sync()?;
    let ((), times) = crate::runtime::profile(cuda, || b.fwd_bwd(cuda))?;
    let ((), fwd_times) = crate::runtime::profile(cuda, || b.fwd(cuda))?;
    let [bb, t, h, k, v] = shape;
    let mut s = stages_table(&format!("{op} {bb}x{t}x{h}x{k}x{v}: one forward+backward"), &times);
    s += &stages_table(&format!("{op} {bb}x{t}x{h}x{k}x{v}: one forward (forward-only workspace)"), &fwd_times);
    Ok(s)
}

/// A [`crate::runtime::profile`] record as a plain-text table, one line per launch in launch
/// order with its share of the total, under `title`.
pub fn stages_table(title: &str, times: &[(String, f64)]) -> String {
    let total: f64 = times.iter().map(|x| x.1).sum();
    let mut s = format!("{title}, launch by launch (total {total:.3} ms)\n");
    // the name column as wide as the longest name, at least 28
    let w = times.iter().map(|x| x.0.len()).max().unwrap_or(0).max(28);
    for (name, ms) in times {
        s += &format!("  {name:<w$} {ms:>9.3} ms {:>5.1}%\n", 100.0 * ms / total);
    }
    s
}

/// A plain-text table of delta rows, floors at `hbm` bytes per second.
pub fn format_delta_rows(rows: &[DeltaBenchRow], hbm: f64) -> String {
    let label = |r: &DeltaBenchRow| match (r.op == "gdn", r.row.kernel) {
        (true, "chunk") => "gdn-chunk",
        (true, "chunk-vsplit") => "gdn-chunk-vsplit",
        (true, _) => "gdn-recurrent",
        (false, "chunk") => "delta-chunk",
        (false, "chunk-vsplit") => "delta-chunk-vsplit",
        (false, _) => "delta-recurrent",
    };
    let plain: Vec<BenchRow> = rows.iter().map(|r| BenchRow { kernel: label(r), ..r.row.clone() }).collect();
    format_rows(&plain, hbm)
}

/// Softmax attention's shapes of record: bf16, causal, H = 16, D = DV = 128, B*T = 65536, T in
/// {2048, 8192, 32768}, as `[B, T, H, D, DV]`.
pub fn default_attn_shapes() -> Vec<[usize; 5]> {
    [2048usize, 8192, 32768].iter().map(|&t| [65536 / t, t, 16, 128, 128]).collect()
}

/// The decode shapes of record, `[batch, context]`: batch 1 and 16, 2K and 32K tokens cached.
pub fn default_attn_decode_shapes() -> Vec<[usize; 2]> {
    vec![[1, 2048], [1, 32768], [16, 2048], [16, 32768]]
}

/// FLOPs of one attention forward: `4 B H T^2 D`-style, the two products over the allowed
/// (query, key) pairs (`2 * pairs * (D + DV)`; causal: about half the pairs, counted as
/// `T^2 / 2` like flash-attention's benchmark). The backward is counted as 2.5 forwards.
pub fn attn_fwd_flops(p: &gla_core::AttnProblem) -> f64 {
    let pairs: f64 = (0..p.n())
        .map(|n| {
            let t = p.seq(n).len() as f64;
            match (p.causal(), p.window()) {
                (false, _) => t * t,
                (true, None) => t * t / 2.0,
                (true, Some(w)) => t * (w as f64).min(t) - (w as f64).min(t).powi(2) / 2.0,
            }
        })
        .sum();
    2.0 * pairs * (p.d() + p.dv()) as f64 * p.h() as f64
}

/// Times softmax attention (bf16, the flash kernels): the forward and the forward+backward on
/// each `[B, T, H, D, DV]` shape (`h_kv` kv heads, default H; causal or not), inputs ~ N(0, 1);
/// then one decode step (append + split attention + combine) over a full KV cache of each
/// `[batch, context]` in `decode` with the first shape's H, H_KV and D (the cache zeroed: the
/// kernels' time does not depend on the values). Rows: `pass` is `fwd` (one row per warp split of
/// the forward's tile, the dispatch policy's first, `kernel` naming it), `fwd+bwd`, `bwd` (each
/// backward launch alone: `bwd-pre`, then the gradient launches of each [`BwdTile`](crate::dispatch::attn::BwdTile)
/// (its label: `bwd-kvq-8w` with its dQ sum, `bwd-kv+dq-wg`), the dispatch policy's first; bytes are
/// the whole backward's)
/// or `decode` (shape `[batch, context, H, D, DV]`, bytes = the cache read).
///
/// # Errors
/// Invalid shapes; driver, compile or launch errors.
pub fn bench_attn(
    cuda: &Arc<Cuda>,
    shapes: &[[usize; 5]],
    h_kv: Option<usize>,
    causal: bool,
    decode: &[[usize; 2]],
    reps: usize,
) -> Result<Vec<BenchRow>> {
    use crate::attn::ops::{
        attn_bwd_parts, attn_bwd_tile, attn_bwd_ws, attn_fwd, attn_fwd_tile, has_bwd_tile, has_fwd_tile, AttnDevGrads, AttnDevInputs,
        AttnKvCache, BwdParts, DevAttnProblem,
    };
    use crate::dispatch::attn::{bwd_tile, fwd_tile, BwdTile, FwdTile};
    use gla_core::{AttnCacheLayout, AttnProblem, AttnSpec};
    let mut rows = Vec::new();
    for &[b, t, h, d, dv] in shapes {
        let p = AttnProblem::new(AttnSpec { h_kv: h_kv.unwrap_or(h), dv, causal, ..AttnSpec::new(b, t, h, d) })?;
        let dp = DevAttnProblem::new(cuda, &p)?;
        let up = |n: usize, seed: u64, what: &'static str| -> Result<CudaSlice<u16>> { cuda.upload(&draw_bf16(n, seed, |z| z), what) };
        let (q, k, v, d_o) = (up(p.q_len(), 21, "q")?, up(p.k_len(), 22, "k")?, up(p.v_len(), 23, "v")?, up(p.o_len(), 24, "do")?);
        let x = AttnDevInputs { q: &q, k: &k, v: &v };
        let mut o = cuda.alloc_zeros::<u16>(p.o_len(), "o")?;
        let mut lse = cuda.alloc_zeros::<f32>(p.lse_len(), "lse")?;
        let mut delta = cuda.alloc_zeros::<f32>(p.lse_len(), "delta")?;
        let mut g = AttnDevGrads::alloc_for(cuda, &dp, BwdTile::W8)?; // the largest workspace: every kernel runs on it
        let ffl = attn_fwd_flops(&p);
        // least bytes: fwd reads q, k, v and writes o (bf16) and lse (f32); bwd reads q, k, v, o,
        // do (bf16), lse and writes dq, dk, dv (bf16)
        let (nq, nk, nv, no, nl) = (p.q_len(), p.k_len(), p.v_len(), p.o_len(), p.lse_len());
        let fwd_bytes = (2 * (nq + nk + nv + no) + 4 * nl) as f64;
        let bwd_bytes = (2 * (2 * (nq + nk + nv) + 2 * no) + 4 * nl) as f64;
        let shape = [b, t, h, d, dv];
        // the dispatch policy's tile first, then every other warp split with a kernel here
        let default = fwd_tile(&p, cuda.arch());
        for tile in std::iter::once(default).chain(FwdTile::ALL.into_iter().filter(|&t| t != default)) {
            if has_fwd_tile(cuda, &dp, tile) {
                let ms = time_ms(cuda, reps, &mut || attn_fwd_tile(cuda, &dp, &x, &mut o, &mut lse, tile))?;
                rows.push(BenchRow { shape, pass: "fwd", kernel: tile.label(), ms, bytes: fwd_bytes, flops: ffl });
            }
        }
        let ms = time_ms(cuda, reps, &mut || {
            attn_fwd(cuda, &dp, &x, &mut o, &mut lse)?;
            attn_bwd_ws(cuda, &dp, &x, &o, &lse, &d_o, &mut delta, &mut g)
        })?;
        rows.push(BenchRow { shape, pass: "fwd+bwd", kernel: "flash", ms, bytes: fwd_bytes + bwd_bytes, flops: 3.5 * ffl });
        // the backward's launches one by one (delta left by the run above), credited with the
        // 5 products of the backward (2.5 forwards of FLOPs: the useful work; the warpgroup
        // kernels run 7, recomputing S and dP for dq)
        let pre = BwdParts { pre: true, kvq: false };
        let ms = time_ms(cuda, reps, &mut || attn_bwd_parts(cuda, &dp, &x, &o, &lse, &d_o, &mut delta, &mut g, pre))?;
        rows.push(BenchRow { shape, pass: "bwd", kernel: "bwd-pre", ms, bytes: bwd_bytes, flops: 0.0 });
        // the dispatch policy's kernel first, then every other one with a kernel here
        let kvq = BwdParts { pre: false, kvq: true };
        let default = bwd_tile(&p, cuda.arch());
        for tile in std::iter::once(default).chain(BwdTile::ALL.into_iter().filter(|&t| t != default)) {
            if has_bwd_tile(cuda, &dp, tile) {
                let ms = time_ms(cuda, reps, &mut || attn_bwd_tile(cuda, &dp, &x, &o, &lse, &d_o, &mut delta, &mut g, kvq, tile))?;
                rows.push(BenchRow { shape, pass: "bwd", kernel: tile.label(), ms, bytes: bwd_bytes, flops: 2.5 * ffl });
            }
        }
    }
    let Some(&[_, _, h, d, dv]) = shapes.first() else { return Ok(rows) };
    for &[n, ctx] in decode {
        let p = AttnProblem::new(AttnSpec { h_kv: h_kv.unwrap_or(h), dv, ..AttnSpec::new(1, 1, h, d) })?;
        let mut cache = AttnKvCache::new(cuda, AttnCacheLayout::new(&p, n, ctx)?)?;
        let hk = p.h_kv();
        let lens = cuda.upload(&vec![ctx as i32; n], "decode lens")?;
        let q = cuda.upload(&draw_bf16(n * h * d, 31, |z| z), "decode q")?;
        let kn = cuda.upload(&draw_bf16(n * hk * d, 32, |z| z), "decode k")?;
        let vn = cuda.upload(&draw_bf16(n * hk * dv, 33, |z| z), "decode v")?;
        let mut o = cuda.alloc_zeros::<u16>(n * h * dv, "decode o")?;
        let mut lse = cuda.alloc_zeros::<f32>(n * h, "decode lse")?;
        let ms = time_ms(cuda, reps, &mut || cache.step(cuda, &lens, &q, &kn, &vn, &mut o, &mut lse))?;
        let bytes = (2 * n * ctx * hk * (d + dv)) as f64;
        let flops = 2.0 * (n * ctx * h * (d + dv)) as f64;
        rows.push(BenchRow { shape: [n, ctx, h, d, dv], pass: "decode", kernel: "split-k", ms, bytes, flops });
    }
    Ok(rows)
}
