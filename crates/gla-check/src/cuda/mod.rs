//! `gla check --device cuda`: the shared case table on the GPU against the CPU f64 oracle.
//!
//! Entry point: [`check`] (or [`check_device`] to open device 0 first), then [`format_table`].
//! Rows are `(case, algorithm, dtype, tensor, rel_rmse, tol, pass)`; tolerances: bf16 <= 5e-3,
//! f32 <= 1e-4 (relative RMSE vs the f64 oracle, NaN never passes). The oracle runs on the inputs
//! as the GPU sees them (rounded to f32 or bf16), so the error measured is the kernel's own.
//!
//! Beyond the table (with the table, under `ops`): the wide chunked cases ([`wide_check`]: K up to
//! 256, V above 128, bf16 on the chunked path's split launches); a T = 65536 case, a case whose q/k/g/v tensors hold more than 2^31 elements
//! (forward; the last sequence, at offsets past 2^31, is checked against the oracle), and a
//! repeat-run check (tensor `repeat`: the largest bitwise difference between two runs must be 0).

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use gla_core::op::GlaOp;
use gla_core::testing::{cases, logsigmoid, rel_rmse, Case, CaseData, Rng};
use gla_core::{Backward, Forward, GateKind, Grads, Inputs, Problem, ProblemSpec};
use gla_cpu::Naive;

use crate::error::{Error, Result};
use crate::op::{Algo, CudaGla};
use crate::ops::{self, bf16_to_f32, f32_to_bf16, DevInputs, DevProblem, FwdKernel};
use crate::runtime::Cuda;

/// Relative-RMSE tolerance for f32 storage.
pub const TOL_F32: f64 = 1e-4;
/// Relative-RMSE tolerance for bf16 storage.
pub const TOL_BF16: f64 = 5e-3;

/// One line of the check table.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    /// Case name (from the shared table, or `T65536-...`, `big-2^31-...`).
    pub case: String,
    /// `recurrent` or `chunk`.
    pub algo: &'static str,
    /// `f32` or `bf16`.
    pub dtype: &'static str,
    /// `o`, `ht`, `dq`, `dk`, `dv`, `dg`, `dh0`, `repeat`, or `error` (the op failed).
    pub tensor: &'static str,
    /// Relative RMSE vs the oracle (for `repeat`: the largest absolute difference of two runs).
    pub rel_rmse: f64,
    /// The tolerance applied.
    pub tol: f64,
    /// Whether `rel_rmse <= tol` (false for NaN).
    pub pass: bool,
    /// The error message when the op failed.
    pub note: String,
}

/// What [`check`] runs besides the shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Run the T = 65536 case.
    pub long: bool,
    /// Run the > 2^31-element case (needs ~25 GB of device and ~20 GB of host memory).
    pub huge: bool,
    /// Run the repeat-run determinism check.
    pub repeat: bool,
    /// Run the op case table (off: only the extra checks and the model).
    pub ops: bool,
    /// Run the language-model checks (GPU model vs CPU model).
    pub model: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { long: true, huge: true, repeat: true, ops: true, model: true }
    }
}

fn row(case: &str, algo: &'static str, dtype: &'static str, tensor: &'static str, err: f64, tol: f64) -> CheckRow {
    // `err <= tol` is false for NaN
    CheckRow { case: case.into(), algo, dtype, tensor, rel_rmse: err, tol, pass: err <= tol, note: String::new() }
}

fn failed(case: &str, algo: &'static str, dtype: &'static str, tol: f64, e: impl std::fmt::Display) -> CheckRow {
    CheckRow { case: case.into(), algo, dtype, tensor: "error", rel_rmse: f64::INFINITY, tol, pass: false, note: e.to_string() }
}

/// Rounds f64 data to what the device stores: f32, or bf16 when `bf16`.
fn round(x: &[f64], bf16: bool) -> Vec<f32> {
    x.iter().map(|&v| if bf16 { bf16_to_f32(f32_to_bf16(v as f32)) } else { v as f32 }).collect()
}

struct Rounded {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    h0: Vec<f32>,
    d_o: Vec<f32>,
    dht: Vec<f32>,
}

impl Rounded {
    fn new(d: &CaseData, bf16: bool) -> Self {
        // states and their gradients are f32 on every path
        Self {
            q: round(&d.q, bf16),
            k: round(&d.k, bf16),
            v: round(&d.v, bf16),
            g: round(&d.g, bf16),
            h0: round(&d.h0, false),
            d_o: round(&d.d_o, bf16),
            dht: round(&d.dht, false),
        }
    }
    fn inputs(&self) -> Inputs<'_, f32> {
        Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: (!self.g.is_empty()).then_some(&self.g[..]),
            h0: (!self.h0.is_empty()).then_some(&self.h0[..]),
        }
    }
    fn reference(&self, p: &Problem) -> gla_core::Result<(Forward<f64>, Grads<f64>)> {
        let w = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let (q, k, v, g, h0, d_o, dht) = (w(&self.q), w(&self.k), w(&self.v), w(&self.g), w(&self.h0), w(&self.d_o), w(&self.dht));
        let x = Inputs { q: &q, k: &k, v: &v, g: (!g.is_empty()).then_some(&g[..]), h0: (!h0.is_empty()).then_some(&h0[..]) };
        let f = Naive.forward(p, &x, true)?;
        let b = Naive.backward(p, &x, &Backward { d_o: &d_o, dht: Some(&dht) })?;
        Ok((f, b))
    }
}

fn compare_fwd(out: &mut Vec<CheckRow>, case: &str, algo: &'static str, dtype: &'static str, tol: f64, f: &Forward<f32>, r: &Forward<f64>) {
    out.push(row(case, algo, dtype, "o", rel_rmse(&f.o, &r.o), tol));
    let ht = f.ht.as_deref().map_or(f64::INFINITY, |h| rel_rmse(h, r.ht.as_deref().unwrap_or(&[])));
    out.push(row(case, algo, dtype, "ht", ht, tol));
}

fn compare_bwd(out: &mut Vec<CheckRow>, case: &str, algo: &'static str, dtype: &'static str, tol: f64, b: &Grads<f32>, r: &Grads<f64>) {
    out.push(row(case, algo, dtype, "dq", rel_rmse(&b.dq, &r.dq), tol));
    out.push(row(case, algo, dtype, "dk", rel_rmse(&b.dk, &r.dk), tol));
    out.push(row(case, algo, dtype, "dv", rel_rmse(&b.dv, &r.dv), tol));
    if let Some(rg) = &r.dg {
        out.push(row(case, algo, dtype, "dg", b.dg.as_deref().map_or(f64::INFINITY, |a| rel_rmse(a, rg)), tol));
    }
    if let Some(rh) = &r.dh0 {
        out.push(row(case, algo, dtype, "dh0", b.dh0.as_deref().map_or(f64::INFINITY, |a| rel_rmse(a, rh)), tol));
    }
}

const ALGOS: [(Algo, &str); 2] = [(Algo::Recurrent, "recurrent"), (Algo::Chunked, "chunk")];
const DTYPES: [(bool, &str, f64); 2] = [(false, "f32", TOL_F32), (true, "bf16", TOL_BF16)];

fn run_case(cuda: &Arc<Cuda>, case: &Case, seed: u64, out: &mut Vec<CheckRow>) -> Result<()> {
    let d = CaseData::generate(case, seed)?;
    for (bf16, dtype, tol) in DTYPES {
        let r = Rounded::new(&d, bf16);
        let (rf, rb) = r.reference(&d.problem)?;
        let x = r.inputs();
        for (algo, aname) in ALGOS {
            let op = CudaGla::new(cuda.clone(), algo, bf16);
            match op.forward(&d.problem, &x, true) {
                Ok(f) => compare_fwd(out, &case.name, aname, dtype, tol, &f, &rf),
                Err(e) => out.push(failed(&case.name, aname, dtype, tol, e)),
            }
            // the chunked path's backward is its own for bf16 (K, V <= 128); f32 runs the
            // recurrent kernels, checked once
            if algo == Algo::Recurrent || bf16 {
                match op.backward(&d.problem, &x, &Backward { d_o: &r.d_o, dht: Some(&r.dht) }) {
                    Ok(b) => compare_bwd(out, &case.name, aname, dtype, tol, &b, &rb),
                    Err(e) => out.push(failed(&case.name, aname, dtype, tol, e)),
                }
            }
        }
    }
    Ok(())
}

/// The cases of [`wide_check`]: K above 128 (up to 256), or V above 128 in the backward; strong
/// (0.1) and weak (10) gates, initial states, varlen with an empty sequence, the per-head gate
/// (its dg is summed over two K tiles), no gate, K not a multiple of 8 (scalar loads).
pub fn wide_cases() -> Vec<Case> {
    let spec = |b, t, h, k, v, gate, cu: Option<Vec<usize>>| ProblemSpec { b, t, h, k, v, gate, scale: None, cu_seqlens: cu };
    let varlen = vec![0usize, 15, 15, 100, 300, 365];
    let case = |name: &str, spec: ProblemSpec, gate_scale: f64, h0: bool| Case { name: name.into(), spec, gate_scale, h0 };
    vec![
        case("wide-K256-V256-T1000-gs0.1-h0", spec(1, 1000, 2, 256, 256, GateKind::PerKey, None), 0.1, true),
        case("wide-K256-V256-T1000-gs10-h0", spec(1, 1000, 2, 256, 256, GateKind::PerKey, None), 10.0, true),
        case("wide-K192-V160-varlen-gs1-h0", spec(1, 365, 2, 192, 160, GateKind::PerKey, Some(varlen.clone())), 1.0, true),
        case("wide-K256-V64-T300-gs1", spec(2, 300, 2, 256, 64, GateKind::PerKey, None), 1.0, false),
        case("wide-K130-V100-T130-gs1-h0", spec(2, 130, 2, 130, 100, GateKind::PerKey, None), 1.0, true),
        case("wide-K200-V136-head-T130-h0", spec(2, 130, 2, 200, 136, GateKind::PerHead, None), 1.0, true),
        case("wide-K160-V96-nogate-varlen", spec(1, 365, 2, 160, 96, GateKind::None, Some(varlen)), 1.0, false),
        case("wide-K64-V256-T200-gs1-h0", spec(1, 200, 2, 64, 256, GateKind::PerKey, None), 1.0, true),
        case("wide-K32-V160-T65-gs1", spec(2, 65, 2, 32, 160, GateKind::PerKey, None), 1.0, false),
        // K tiles padded to 80 and 112 columns (not multiples of 32) on the K <= 128 launches:
        // bwd2's 32-column dq/dk tasks must not store past the tile (the K130/K160/K200 rows
        // above cover the same on the split launches)
        case("odd-K72-V100-T200-gs1-h0", spec(1, 200, 2, 72, 100, GateKind::PerKey, None), 1.0, true),
        case("odd-K100-V64-T130-head", spec(2, 130, 2, 100, 64, GateKind::PerHead, None), 1.0, false),
    ]
}

/// The wide chunked path (bf16, [`ops::ChunkPath::Wide`]) on [`wide_cases`], forward and backward,
/// against the oracle. Rows are labelled `chunk-wide` (the label of the path the dispatcher
/// takes, from the same [`ops::chunk_fwd_path`] / [`ops::chunk_bwd_path`] it uses), and a case that
/// would not take the wide path becomes a failing `error` row: these rows cannot silently check
/// another kernel.
///
/// # Errors
/// [`Error`] when a case cannot be set up.
pub fn wide_check(cuda: &Arc<Cuda>, out: &mut Vec<CheckRow>) -> Result<()> {
    let op = CudaGla::new(cuda.clone(), Algo::Chunked, true);
    for (i, case) in wide_cases().iter().enumerate() {
        let d = CaseData::generate(case, 5000 + i as u64)?;
        let p = &d.problem;
        let r = Rounded::new(&d, true);
        let (rf, rb) = r.reference(p)?;
        let x = r.inputs();
        let (fwd_path, bwd_path) = (ops::chunk_fwd_path(p), ops::chunk_bwd_path(p));
        let label = |path: Option<ops::ChunkPath>| path.map_or("none", ops::ChunkPath::label);
        // the forward is wide for K > 128, the backward when K or V > 128; the odd-K cases
        // must take the K <= 128 launches
        let wide_fwd = p.k() > crate::dispatch::CHUNK_NARROW_MAX;
        let want_bwd = if p.k() > crate::dispatch::CHUNK_NARROW_MAX || p.v() > 128 { ops::ChunkPath::Wide } else { ops::ChunkPath::Narrow };
        if fwd_path != Some(if wide_fwd { ops::ChunkPath::Wide } else { ops::ChunkPath::Narrow }) {
            out.push(failed(&case.name, label(fwd_path), "bf16", TOL_BF16, "expected another forward path"));
        } else {
            let algo = label(fwd_path);
            match op.forward(p, &x, true) {
                Ok(f) => compare_fwd(out, &case.name, algo, "bf16", TOL_BF16, &f, &rf),
                Err(e) => out.push(failed(&case.name, algo, "bf16", TOL_BF16, e)),
            }
        }
        if bwd_path != Some(want_bwd) {
            out.push(failed(&case.name, label(bwd_path), "bf16", TOL_BF16, "expected another backward path"));
            continue;
        }
        let algo = want_bwd.label();
        match op.backward(p, &x, &Backward { d_o: &r.d_o, dht: Some(&r.dht) }) {
            Ok(b) => compare_bwd(out, &case.name, algo, "bf16", TOL_BF16, &b, &rb),
            Err(e) => out.push(failed(&case.name, algo, "bf16", TOL_BF16, e)),
        }
    }
    Ok(())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        if x.to_bits() == y.to_bits() {
            m
        } else {
            m.max(f64::from((x - y).abs())).max(if (x - y).is_nan() { f64::INFINITY } else { 0.0 })
        }
    })
}

fn repeat_check(cuda: &Arc<Cuda>, out: &mut Vec<CheckRow>) -> Result<()> {
    let case = Case {
        name: "repeat-T1000".into(),
        spec: ProblemSpec { b: 2, t: 1000, h: 4, k: 128, v: 128, gate: GateKind::PerKey, scale: None, cu_seqlens: None },
        gate_scale: 1.0,
        h0: true,
    };
    let d = CaseData::generate(&case, 99)?;
    for (bf16, dtype, _) in DTYPES {
        let r = Rounded::new(&d, bf16);
        let x = r.inputs();
        for (algo, aname) in ALGOS {
            let op = CudaGla::new(cuda.clone(), algo, bf16);
            let once = || -> gla_core::Result<Vec<f32>> {
                let f = op.forward(&d.problem, &x, true)?;
                let b = op.backward(&d.problem, &x, &Backward { d_o: &r.d_o, dht: Some(&r.dht) })?;
                let mut all = f.o;
                all.extend(f.ht.unwrap_or_default());
                for t in [b.dq, b.dk, b.dv, b.dg.unwrap_or_default(), b.dh0.unwrap_or_default()] {
                    all.extend(t);
                }
                Ok(all)
            };
            match (once(), once(), once()) {
                (Ok(a), Ok(b), Ok(c)) => {
                    out.push(row(&case.name, aname, dtype, "repeat", max_abs_diff(&a, &b).max(max_abs_diff(&a, &c)), 0.0))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => out.push(failed(&case.name, aname, dtype, 0.0, e)),
            }
        }
    }
    Ok(())
}

fn long_check(cuda: &Arc<Cuda>, out: &mut Vec<CheckRow>) -> Result<()> {
    let case = Case {
        name: "T65536-K64-V64-gs1-h0".into(),
        spec: ProblemSpec { b: 1, t: 65536, h: 2, k: 64, v: 64, gate: GateKind::PerKey, scale: None, cu_seqlens: None },
        gate_scale: 1.0,
        h0: true,
    };
    run_case(cuda, &case, 65536, out)
}

/// The > 2^31-element forward check: q, k, g hold B*T*H*K = 520*4096*8*128 = 2.18e9 elements
/// (bf16). Sequences are copies of 4 random base sequences, so the oracle runs on those 4 only;
/// the first and the last sequence (whose rows sit past element 2^31) are compared.
fn huge_check(cuda: &Arc<Cuda>, out: &mut Vec<CheckRow>) -> Result<()> {
    let (b, t, h, kd, vd) = (520usize, 4096usize, 8usize, 128usize, 128usize);
    let name = format!("big-B{b}-T{t}-H{h}-K{kd}-V{vd}");
    let nbase = 4usize;
    let per_q = t * h * kd;
    let per_v = t * h * vd;
    let mut rng = Rng::new(31);
    let draw = |rng: &mut Rng, n: usize, f: &dyn Fn(&mut Rng) -> f64| -> Vec<u16> { (0..n).map(|_| f32_to_bf16(f(rng) as f32)).collect() };
    let bq = draw(&mut rng, nbase * per_q, &|r| r.uniform());
    let bk = draw(&mut rng, nbase * per_q, &|r| r.uniform());
    let bv = draw(&mut rng, nbase * per_v, &|r| r.uniform());
    let bg = draw(&mut rng, nbase * per_q, &|r| logsigmoid(r.uniform()));
    let tile = |base: &[u16], per: usize| -> Vec<u16> {
        let mut v = Vec::with_capacity(b * per);
        for i in 0..b {
            let s = i % nbase;
            v.extend_from_slice(&base[s * per..(s + 1) * per]);
        }
        v
    };
    let p = Problem::new(ProblemSpec { b, t, h, k: kd, v: vd, gate: GateKind::PerKey, scale: None, cu_seqlens: None })?;
    debug_assert!(p.qk_len() > 1usize << 31);
    let s = cuda.stream();
    let up = |x: Vec<u16>, w: &'static str| -> Result<CudaSlice<u16>> { s.clone_htod(&x).map_err(Error::driver(format!("upload {w}"))) };
    let (q, k) = (up(tile(&bq, per_q), "q")?, up(tile(&bk, per_q), "k")?);
    let (v, g) = (up(tile(&bv, per_v), "v")?, up(tile(&bg, per_q), "g")?);
    let dp = DevProblem::new(cuda, &p)?;
    let x = DevInputs { q: &q, k: &k, v: &v, g: Some(&g), h0: None };
    // oracle on the base sequences
    let sub = Problem::new(ProblemSpec { b: nbase, t, h, k: kd, v: vd, gate: GateKind::PerKey, scale: None, cu_seqlens: None })?;
    let w = |x: &[u16]| x.iter().map(|&u| f64::from(bf16_to_f32(u))).collect::<Vec<f64>>();
    let (fq, fk, fv, fg) = (w(&bq), w(&bk), w(&bv), w(&bg));
    let rf = Naive.forward(&sub, &Inputs { q: &fq, k: &fk, v: &fv, g: Some(&fg), h0: None }, true)?;
    for (which, aname) in [(FwdKernel::Recurrent, "recurrent"), (FwdKernel::Chunk, "chunk")] {
        // SAFETY: poisoned before the launch writes it
        let mut o = unsafe { s.alloc::<u16>(p.v_len()) }.map_err(Error::driver("alloc o"))?;
        ops::poison(cuda, &mut o)?;
        // SAFETY: as o
        let mut ht = unsafe { s.alloc::<f32>(p.state_len()) }.map_err(Error::driver("alloc ht"))?;
        ops::poison(cuda, &mut ht)?;
        if let Err(e) = ops::gla_fwd(cuda, which, &dp, &x, &mut o, Some(&mut ht)).and_then(|()| cuda.sync()) {
            out.push(failed(&name, aname, "bf16", TOL_BF16, e));
            continue;
        }
        let ho = s.clone_dtoh(&o).map_err(Error::driver("download o"))?;
        let hht = s.clone_dtoh(&ht).map_err(Error::driver("download ht"))?;
        let nan = ho.iter().filter(|&&u| (u & 0x7fff) > 0x7f80).count() + hht.iter().filter(|x| x.is_nan()).count();
        out.push(row(&name, aname, "bf16", "nan-count", nan as f64, 0.0));
        for seq in [0, b - 1] {
            let base = seq % nbase;
            let go: Vec<f32> = ho[seq * per_v..(seq + 1) * per_v].iter().map(|&u| bf16_to_f32(u)).collect();
            let so = h * kd * vd;
            out.push(row(
                &format!("{name}-seq{seq}"),
                aname,
                "bf16",
                "o",
                rel_rmse(&go, &rf.o[base * per_v..(base + 1) * per_v]),
                TOL_BF16,
            ));
            let rht = rf.ht.as_deref().unwrap_or(&[]);
            out.push(row(
                &format!("{name}-seq{seq}"),
                aname,
                "bf16",
                "ht",
                rel_rmse(&hht[seq * so..(seq + 1) * so], rht.get(base * so..(base + 1) * so).unwrap_or(&[])),
                TOL_BF16,
            ));
        }
    }
    Ok(())
}

/// Runs the shared case table (both algorithms, f32 and bf16, forward and backward) and the
/// extra checks of `opts` on `cuda`. Failures of single cases become failing rows; only a
/// failure to run at all (bad case spec, host-side errors) is an `Err`.
///
/// # Errors
/// [`Error`] when a case cannot be set up.
pub fn check(cuda: &Arc<Cuda>, opts: CheckOptions) -> Result<Vec<CheckRow>> {
    let mut out = Vec::new();
    if opts.ops {
        for (i, case) in cases().iter().enumerate() {
            run_case(cuda, case, 1000 + i as u64, &mut out)?;
        }
        wide_check(cuda, &mut out)?;
    }
    if opts.repeat {
        repeat_check(cuda, &mut out)?;
    }
    if opts.long {
        long_check(cuda, &mut out)?;
    }
    if opts.huge {
        huge_check(cuda, &mut out)?;
    }
    if opts.model {
        crate::model_check::model_check(cuda, &mut out)?;
        crate::model_check::generation_check(cuda, &mut out)?;
    }
    Ok(out)
}

/// Opens device 0 and runs [`check`].
///
/// # Errors
/// [`Error::NoDevice`] / [`Error::NoNvrtc`] on a machine without a GPU or libnvrtc; as [`check`].
pub fn check_device(opts: CheckOptions) -> Result<(String, Vec<CheckRow>)> {
    let cuda = Cuda::new()?;
    let name = format!("{} ({})", cuda.name(), cuda.arch());
    Ok((name, check(&cuda, opts)?))
}

/// A plain-text table of the rows, failures marked `FAIL`, with a summary line last.
pub fn format_table(rows: &[CheckRow]) -> String {
    let mut s = format!("{:<34} {:<10} {:<5} {:<9} {:>11} {:>9}  {}\n", "case", "algo", "dtype", "tensor", "rel_rmse", "tol", "result");
    for r in rows {
        s += &format!(
            "{:<34} {:<10} {:<5} {:<9} {:>11.3e} {:>9.1e}  {}{}\n",
            r.case,
            r.algo,
            r.dtype,
            r.tensor,
            r.rel_rmse,
            r.tol,
            if r.pass { "ok" } else { "FAIL" },
            if r.note.is_empty() { String::new() } else { format!("  {}", r.note) }
        );
    }
    let fails = rows.iter().filter(|r| !r.pass).count();
    s += &format!("{} rows, {} failed\n", rows.len(), fails);
    s
}
