//! The GPU's rows (`gla check --device cuda`): the shared case table on the GPU against the CPU
//! f64 oracle, and the language model ([`model`]).
//!
//! Entry point: [`check`] and [`model::fla_fixture_check`], then
//! [`crate::format_table`]. The op rows run the table on [`CudaGla`], recurrent and chunked, f32
//! and bf16 storage ([`gpu_paths`]), through [`crate::runner`]; tolerances [`tol::GPU_F32`] and
//! [`tol::GPU_BF16`].
//!
//! Beyond the table (with the table, under `ops`): the wide chunked cases ([`wide_check`]: K up to
//! 256, V above 128, bf16 on the chunked path's split launches); a T = 65536 case, a case whose
//! q/k/g/v tensors hold more than 2^31 elements (forward; the last sequence, at offsets past 2^31,
//! is checked against the oracle), and a repeat-run check (tensor `repeat`: the largest bitwise
//! difference between two runs must be 0).
//!
//! The delta-rule family's rows ([`delta`]: the same checks on its table, case names `delta/...`)
//! softmax attention's ([`attn`]: case names `attn/...`) and the bidirectional scan's ([`bidir`],
//! `bidir/...`) run beside them; a filter starting with `delta`, `attn` or `bidir` runs only that
//! family's. The language model's short convolution ([`nn`], `nn/conv-*`) runs with the op rows,
//! or alone with a filter starting with `nn`. The ViG model's rows ([`vig`], `vig-*`) run with the model rows, or alone with a
//! filter starting with `vig`. The lab kernels' rows ([`lab`], `lab-*`) run only under a filter
//! starting with `lab`.

pub mod alloc;
pub mod attn;
pub mod bidir;
pub mod delta;
pub mod lab;
pub mod model;
pub mod nn;
pub mod vig;

use std::sync::Arc;

use gla_core::op::GlaOp;
use gla_core::{GateKind, Inputs, Problem, ProblemSpec};
use gla_cpu::Naive;
use gla_cuda::ops::{self, bf16_to_f32, f32_to_bf16, DevInputs, DevProblem, FwdKernel};
use gla_cuda::{Algo, Cuda, CudaGla, Error, Result};

use crate::cases::{cases, logsigmoid, rel_rmse, Case, CaseData, Rng};
use crate::row::Row;
use crate::runner::{bwd_rows, fwd_rows, run_case, run_table, Path, Rounded, Storage, TABLE_SEED};
use crate::tol;

/// What [`check`] runs besides the shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Run the T = 65536 case.
    pub long: bool,
    /// Run the > 2^31-element case (needs ~25 GB of device and ~20 GB of host memory).
    pub huge: bool,
    /// Run the repeat-run determinism check.
    pub repeat: bool,
    /// Run the op case table and the wide cases (off: only the extra checks and the model).
    pub ops: bool,
    /// Run the language-model checks (GPU model vs CPU model, generation).
    pub model: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self { long: true, huge: true, repeat: true, ops: true, model: true }
    }
}

/// The GPU's op paths: (algorithm, its rows' label).
const ALGOS: [(Algo, &str); 2] = [(Algo::Recurrent, "recurrent"), (Algo::Chunked, "chunk")];
/// The GPU's storages with their tolerances.
const STORAGES: [(Storage, f64); 2] = [(Storage::F32, tol::GPU_F32), (Storage::Bf16, tol::GPU_BF16)];

/// The case table's GPU paths, in row order: per storage (f32, bf16), recurrent then chunked.
/// The chunked path's backward is its own for bf16 (K, V <= 128); f32 runs the recurrent
/// kernels, checked once (on the recurrent path).
pub fn gpu_paths(ops: &[CudaGla; 4]) -> Vec<Path<'_>> {
    let mut out = Vec::new();
    for (s, (storage, tol)) in STORAGES.into_iter().enumerate() {
        for (a, (algo, label)) in ALGOS.into_iter().enumerate() {
            out.push(Path { label, storage, op: &ops[2 * s + a], tol, backward: algo == Algo::Recurrent || storage == Storage::Bf16 });
        }
    }
    out
}

/// The [`CudaGla`] ops of [`gpu_paths`], in its order.
pub fn gpu_ops(cuda: &Arc<Cuda>) -> [CudaGla; 4] {
    [
        CudaGla::new(cuda.clone(), Algo::Recurrent, false),
        CudaGla::new(cuda.clone(), Algo::Chunked, false),
        CudaGla::new(cuda.clone(), Algo::Recurrent, true),
        CudaGla::new(cuda.clone(), Algo::Chunked, true),
    ]
}

/// The cases of [`wide_check`]: K above 128 (up to 256), or V above 128 in the backward; strong
/// (0.1) and weak (10) gates, initial states, varlen with an empty sequence, the per-head gate
/// (its dg is summed over two K tiles), no gate, K not a multiple of 8 (scalar loads); and K below
/// 64 and odd K on the K <= 128 launches.
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
        case("wide-K160-V96-nogate-varlen", spec(1, 365, 2, 160, 96, GateKind::None, Some(varlen.clone())), 1.0, false),
        case("wide-K64-V256-T200-gs1-h0", spec(1, 200, 2, 64, 256, GateKind::PerKey, None), 1.0, true),
        case("wide-K32-V160-T65-gs1", spec(2, 65, 2, 32, 160, GateKind::PerKey, None), 1.0, false),
        // K tiles padded to 80 and 112 columns (not multiples of 32) on the K <= 128 launches:
        // bwd2's 32-column dq/dk tasks must not store past the tile (the K130/K160/K200 rows
        // above cover the same on the split launches)
        case("odd-K72-V100-T200-gs1-h0", spec(1, 200, 2, 72, 100, GateKind::PerKey, None), 1.0, true),
        case("odd-K100-V64-T130-head", spec(2, 130, 2, 100, 64, GateKind::PerHead, None), 1.0, false),
        // K below 64 on the K <= 128 launches: bwd1's raw dq / dk products read 64 key rows of
        // the state tiles, zero past K (ViG-T's K = 32, V = 64 heads; K = 16 and 40)
        case("small-K32-V64-T300-gs1-h0", spec(2, 300, 2, 32, 64, GateKind::PerKey, None), 1.0, true),
        case("small-K16-V40-varlen-gs0.1", spec(1, 365, 2, 16, 40, GateKind::PerKey, Some(varlen)), 0.1, false),
        case("small-K40-V128-T130-head-h0", spec(2, 130, 2, 40, 128, GateKind::PerHead, None), 1.0, true),
    ]
}

/// The wide chunked path (bf16, [`ops::ChunkPath::Wide`]) on [`wide_cases`], forward and backward,
/// against the oracle. Rows are labelled `chunk-wide` (the label of the path the dispatcher
/// takes, from the same [`ops::chunk_fwd_path`] / [`ops::chunk_bwd_path`] it uses), and a case that
/// would not take the wide path becomes a failing `error` row: these rows cannot silently check
/// another kernel. With `filter`, only the cases whose name contains it.
///
/// # Errors
/// [`Error`] when a case cannot be set up.
pub fn wide_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) -> Result<()> {
    let op = CudaGla::new(cuda.clone(), Algo::Chunked, true);
    for (i, case) in wide_cases().iter().enumerate() {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let d = CaseData::generate(case, 5000 + i as u64)?;
        let p = &d.problem;
        let r = Rounded::new(&d, Storage::Bf16);
        let (rf, rb) = r.reference(p)?;
        let x = r.inputs();
        let (fwd_path, bwd_path) = (ops::chunk_fwd_path(p), ops::chunk_bwd_path(p));
        let label = |path: Option<ops::ChunkPath>| path.map_or("none", ops::ChunkPath::label);
        // the forward is wide for K > 128, the backward when K or V > 128; the odd-K and
        // small-K cases must take the K <= 128 launches
        let wide_fwd = p.k() > gla_cuda::dispatch::CHUNK_NARROW_MAX;
        let want_bwd =
            if p.k() > gla_cuda::dispatch::CHUNK_NARROW_MAX || p.v() > 128 { ops::ChunkPath::Wide } else { ops::ChunkPath::Narrow };
        if fwd_path != Some(if wide_fwd { ops::ChunkPath::Wide } else { ops::ChunkPath::Narrow }) {
            out.push(Row::failed(&case.name, label(fwd_path), "bf16", tol::GPU_BF16, "expected another forward path"));
        } else {
            let algo = label(fwd_path);
            match op.forward(p, &x, true) {
                Ok(f) => fwd_rows(out, &case.name, algo, "bf16", tol::GPU_BF16, &f, &rf),
                Err(e) => out.push(Row::failed(&case.name, algo, "bf16", tol::GPU_BF16, e)),
            }
        }
        if bwd_path != Some(want_bwd) {
            out.push(Row::failed(&case.name, label(bwd_path), "bf16", tol::GPU_BF16, "expected another backward path"));
            continue;
        }
        let algo = want_bwd.label();
        match op.backward(p, &x, &r.grads_in()) {
            Ok(b) => bwd_rows(out, &case.name, algo, "bf16", tol::GPU_BF16, &b, &rb),
            Err(e) => out.push(Row::failed(&case.name, algo, "bf16", tol::GPU_BF16, e)),
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

fn repeat_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let case = Case {
        name: "repeat-T1000".into(),
        spec: ProblemSpec { b: 2, t: 1000, h: 4, k: 128, v: 128, gate: GateKind::PerKey, scale: None, cu_seqlens: None },
        gate_scale: 1.0,
        h0: true,
    };
    let d = CaseData::generate(&case, 99)?;
    for (storage, _) in STORAGES {
        let (r, dtype) = (Rounded::new(&d, storage), storage.name());
        let x = r.inputs();
        for (algo, aname) in ALGOS {
            let op = CudaGla::new(cuda.clone(), algo, storage == Storage::Bf16);
            let once = || -> gla_core::Result<Vec<f32>> {
                let f = op.forward(&d.problem, &x, true)?;
                let b = op.backward(&d.problem, &x, &r.grads_in())?;
                let mut all = f.o;
                all.extend(f.ht.unwrap_or_default());
                for t in [b.dq, b.dk, b.dv, b.dg.unwrap_or_default(), b.dh0.unwrap_or_default()] {
                    all.extend(t);
                }
                Ok(all)
            };
            match (once(), once(), once()) {
                (Ok(a), Ok(b), Ok(c)) => {
                    out.push(Row::new(&case.name, aname, dtype, "repeat", max_abs_diff(&a, &b).max(max_abs_diff(&a, &c)), tol::BITWISE))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => out.push(Row::failed(&case.name, aname, dtype, tol::BITWISE, e)),
            }
        }
    }
    Ok(())
}

fn long_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let case = Case {
        name: "T65536-K64-V64-gs1-h0".into(),
        spec: ProblemSpec { b: 1, t: 65536, h: 2, k: 64, v: 64, gate: GateKind::PerKey, scale: None, cu_seqlens: None },
        gate_scale: 1.0,
        h0: true,
    };
    let ops = gpu_ops(cuda);
    Ok(run_case(&case, 65536, &gpu_paths(&ops), out)?)
}

/// The > 2^31-element forward check: q, k, g hold B*T*H*K = 520*4096*8*128 = 2.18e9 elements
/// (bf16). Sequences are copies of 4 random base sequences, so the oracle runs on those 4 only;
/// the first and the last sequence (whose rows sit past element 2^31) are compared.
fn huge_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
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
    let up = |x: Vec<u16>, w: &'static str| s.clone_htod(&x).map_err(Error::driver(format!("upload {w}")));
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
            out.push(Row::failed(&name, aname, "bf16", tol::GPU_BF16, e));
            continue;
        }
        let ho = s.clone_dtoh(&o).map_err(Error::driver("download o"))?;
        let hht = s.clone_dtoh(&ht).map_err(Error::driver("download ht"))?;
        let nan = ho.iter().filter(|&&u| (u & 0x7fff) > 0x7f80).count() + hht.iter().filter(|x| x.is_nan()).count();
        out.push(Row::new(&name, aname, "bf16", "nan-count", nan as f64, tol::BITWISE));
        for seq in [0, b - 1] {
            let base = seq % nbase;
            let go: Vec<f32> = ho[seq * per_v..(seq + 1) * per_v].iter().map(|&u| bf16_to_f32(u)).collect();
            let so = h * kd * vd;
            out.push(Row::new(
                &format!("{name}-seq{seq}"),
                aname,
                "bf16",
                "o",
                rel_rmse(&go, &rf.o[base * per_v..(base + 1) * per_v]),
                tol::GPU_BF16,
            ));
            let rht = rf.ht.as_deref().unwrap_or(&[]);
            out.push(Row::new(
                &format!("{name}-seq{seq}"),
                aname,
                "bf16",
                "ht",
                rel_rmse(&hht[seq * so..(seq + 1) * so], rht.get(base * so..(base + 1) * so).unwrap_or(&[])),
                tol::GPU_BF16,
            ));
        }
    }
    Ok(())
}

/// Runs the shared case table (both algorithms, f32 and bf16, forward and backward) and the
/// extra checks of `opts` on `cuda`; with `filter`, only the rows whose case name contains it
/// (the table's and the wide cases are skipped before they run). Failures of single cases become
/// failing rows; only a failure to run at all (bad case spec, host-side errors) is an `Err`.
///
/// # Errors
/// [`Error`] when a case cannot be set up.
pub fn check(cuda: &Arc<Cuda>, opts: CheckOptions, filter: Option<&str>) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    // a filter naming a family runs only its rows (no GLA or model row is named after one)
    const FAMILIES: [&str; 6] = ["delta", "attn", "bidir", "vig", "lab", "nn"];
    let named = |f: &str| FAMILIES.iter().copied().find(|p| f.starts_with(p));
    let runs = |fam: &str| filter.and_then(named).is_none_or(|p| p == fam);
    let gla = filter.and_then(named).is_none();
    let (delta, attn, bidir) = (runs("delta"), runs("attn"), runs("bidir"));
    if opts.ops && gla {
        let ops = gpu_ops(cuda);
        run_table(&cases(), TABLE_SEED, filter, &gpu_paths(&ops), &mut out)?;
        wide_check(cuda, filter, &mut out)?;
    }
    if opts.ops && delta {
        delta::table_check(cuda, filter, &mut out)?;
    }
    if opts.ops && bidir {
        bidir::check(cuda, filter, opts.repeat, &mut out)?;
    }
    if opts.ops && attn {
        attn::table_check(cuda, filter, &mut out)?;
    }
    if opts.ops && runs("nn") {
        nn::check(cuda, filter, &mut out)?;
    }
    if opts.repeat {
        if gla {
            repeat_check(cuda, &mut out)?;
        }
        if delta {
            delta::repeat_check(cuda, &mut out)?;
        }
        if attn {
            attn::repeat_check(cuda, &mut out)?;
        }
    }
    if opts.long {
        if gla {
            long_check(cuda, &mut out)?;
        }
        if delta {
            delta::long_check(cuda, &mut out)?;
        }
    }
    if opts.huge {
        if gla {
            huge_check(cuda, &mut out)?;
        }
        if delta {
            delta::huge_check(cuda, &mut out)?;
        }
    }
    if opts.model && gla {
        model::model_check(cuda, &mut out)?;
        model::generation_check(cuda, &mut out)?;
        alloc::alloc_check(cuda, &mut out)?;
    }
    if runs("vig") && (opts.model || filter.is_some_and(|f| f.starts_with("vig"))) {
        vig::vig_check(cuda, &mut out)?;
    }
    // the lab's rows only when asked for by name: kernels under study, in no op's dispatch
    if filter.is_some_and(|f| f.starts_with("lab")) {
        lab::lab_check(cuda, &mut out)?;
    }
    if let Some(f) = filter {
        out.retain(|r| r.case.contains(f));
    }
    Ok(out)
}
