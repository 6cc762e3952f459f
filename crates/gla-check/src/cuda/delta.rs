//! The delta-rule family's GPU rows (`gla check --device cuda`, `--filter delta`): every GPU path
//! of [`CudaDelta`] (recurrent, chunked, the forward as decode steps; f32 and bf16 storage) on
//! the delta case table ([`crate::delta::cases`]) against the f64 oracle
//! ([`gla_cpu::delta::DeltaNaive`]) run on the inputs rounded as the path stores them; a
//! T = 65536 case, a case whose q/k/v tensors hold more than 2^31 elements (forward), and a
//! repeat-run check (the largest bitwise difference of three runs must be 0).
//!
//! Row case names carry the family, `delta/<case>`, so `--filter delta` selects every row here
//! (the table's Gated DeltaNet cases are named `gdn-...`). Path labels are the kernels the
//! dispatch policy runs ([`gla_cuda::dispatch::delta::DeltaRoute::label`]) or `decode`.

use std::sync::Arc;

use gla_core::delta::DeltaOp;
use gla_core::{Backward, DeltaGate, DeltaGrads, DeltaInputs, DeltaProblem, DeltaSpec, Forward};
use gla_cpu::delta::DeltaNaive;
use gla_cuda::delta::ops::{self as dops, DeltaDevInputs, DevDeltaProblem};
use gla_cuda::delta::DeltaAlgo;
use gla_cuda::dispatch::delta::route;
use gla_cuda::dispatch::delta::DeltaPath;
use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::runtime::{delta_precision, DeltaPrecision};
use gla_cuda::{Cuda, CudaDelta, DeltaOpAlgo, Error, Result};

use crate::cases::{logsigmoid, rel_rmse, Rng};
use crate::delta::{cases, compare, Beta, DeltaCase, DeltaCaseData};
use crate::row::Row;
use crate::runner::Storage;
use crate::tol;

/// Seed of the delta table's first case on the GPU (case `i` draws from `DELTA_SEED + i`).
pub const DELTA_SEED: u64 = 3000;

/// The GPU paths: (algorithm, backward checked).
const ALGOS: [(DeltaOpAlgo, bool); 3] = [(DeltaOpAlgo::Recurrent, true), (DeltaOpAlgo::Chunked, true), (DeltaOpAlgo::Decode, false)];
/// The storages with their tolerances.
const STORAGES: [(Storage, f64); 2] = [(Storage::F32, tol::GPU_F32), (Storage::Bf16, tol::GPU_BF16)];

/// A case's inputs as one storage holds them (q, k, v, beta, g and do rounded; A_log, dt_bias,
/// the states and dht f32), in f32 for the op and f64 for the oracle.
struct Rounded {
    x: [Vec<f32>; 8],
    d_o: Vec<f32>,
    dht: Vec<f32>,
}

impl Rounded {
    fn new(d: &DeltaCaseData, s: Storage) -> Self {
        let f = |x: &[f64]| Storage::F32.round(x);
        Self {
            x: [s.round(&d.q), s.round(&d.k), s.round(&d.v), s.round(&d.beta), s.round(&d.g), f(&d.a_log), f(&d.dt_bias), f(&d.h0)],
            d_o: s.round(&d.d_o),
            dht: f(&d.dht),
        }
    }
    fn inputs(&self) -> DeltaInputs<'_, f32> {
        let [q, k, v, beta, g, a, dt, h0] = &self.x;
        DeltaInputs { q, k, v, beta, g: opt(g), a_log: opt(a), dt_bias: opt(dt), h0: opt(h0) }
    }
    fn grads_in(&self) -> Backward<'_, f32> {
        Backward { d_o: &self.d_o, dht: Some(&self.dht) }
    }
    /// The f64 oracle on these inputs.
    fn reference(&self, p: &DeltaProblem) -> gla_core::Result<(Forward<f64>, DeltaGrads<f64>)> {
        let w = |x: &[f32]| x.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
        let x64: Vec<Vec<f64>> = self.x.iter().map(|x| w(x)).collect();
        let x = DeltaInputs {
            q: &x64[0],
            k: &x64[1],
            v: &x64[2],
            beta: &x64[3],
            g: opt(&x64[4]),
            a_log: opt(&x64[5]),
            dt_bias: opt(&x64[6]),
            h0: opt(&x64[7]),
        };
        let (d_o, dht) = (w(&self.d_o), w(&self.dht));
        let f = DeltaNaive.forward(p, &x, true)?;
        let b = DeltaNaive.backward(p, &x, &Backward { d_o: &d_o, dht: Some(&dht) })?;
        Ok((f, b))
    }
}

fn label(p: &DeltaProblem, algo: DeltaOpAlgo, bf16: bool) -> &'static str {
    match algo {
        DeltaOpAlgo::Decode => "decode",
        DeltaOpAlgo::Recurrent => "recurrent",
        DeltaOpAlgo::Chunked => route(p, bf16, DeltaAlgo::Chunked).map_or("none", |r| r.label()),
    }
}

/// The tolerances of the computed gate's `dA_log` and `ddt_bias` (sums over every row of per-row
/// terms: [`tol::sum_tol`] on the oracle's terms `da softplus(z) / sigmoid(z)` and `da`, `z = a +
/// dt_bias`); `tol` for both without the computed gate.
fn gate_param_tols(p: &DeltaProblem, r: &Rounded, rb: &DeltaGrads<f64>, tol: f64) -> (f64, f64) {
    let Some(da) = rb.dg.as_deref().filter(|_| p.gate() == DeltaGate::Computed) else { return (tol, tol) };
    let (a, dt, hv) = (&r.x[4], &r.x[6], p.hv());
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let softplus = |z: f64| if z > 20.0 { z } else { (-z.abs()).exp().ln_1p() + z.max(0.0) };
    let ta: Vec<f64> = da
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let z = f64::from(a[i]) + f64::from(dt[i % hv]);
            d * softplus(z) / sig(z)
        })
        .collect();
    (tol::sum_tol(tol, &ta, hv), tol::sum_tol(tol, da, hv))
}

/// The tolerance of a row of `algo` on `storage`'s base `tol`: [`tol::GPU_BF16_ONE_PLANE`] where
/// the route `algo` takes for `p` in bf16 runs the chunk kernels and the process runs their
/// one-plane precision (`GLA_DELTA_PRECISION=bf16`), else `tol` (a chunked request that falls
/// back to the recurrent kernel keeps it).
fn path_tol(p: &DeltaProblem, algo: DeltaAlgo, bf16: bool, tol: f64) -> Result<f64> {
    let chunk = bf16 && route(p, true, algo).is_ok_and(|r| matches!(r.path, DeltaPath::Chunk { .. }));
    Ok(if chunk && delta_precision()? == DeltaPrecision::Bf16 { tol::GPU_BF16_ONE_PLANE } else { tol })
}

fn opt<T>(x: &[T]) -> Option<&[T]> {
    (!x.is_empty()).then_some(x)
}

fn push(out: &mut Vec<Row>, case: &str, path: &'static str, dtype: &'static str, tol: f64, errs: Vec<(&'static str, f64)>) {
    for (t, e) in errs {
        out.push(Row::new(case, path, dtype, t, e, tol));
    }
}

/// One case on every GPU path and storage (forward rows `o`, `ht`; backward rows per
/// [`compare`]); `decode`: also as decode steps (one launch and a few small copies per step).
fn run_case(cuda: &Arc<Cuda>, name: &str, case: &DeltaCase, seed: u64, decode: bool, out: &mut Vec<Row>) -> Result<()> {
    let d = DeltaCaseData::generate(case, seed)?;
    let p = &d.problem;
    for (storage, base_tol) in STORAGES {
        let r = Rounded::new(&d, storage);
        let (rf, rb) = r.reference(p)?;
        let (x, dtype, bf16) = (r.inputs(), storage.name(), storage == Storage::Bf16);
        // bf16 chunked twice: the backward after a forward on its workspace, then the backward
        // that recomputes the forward (the language model's flow)
        let flows = ALGOS.into_iter().filter(|a| decode || a.0 != DeltaOpAlgo::Decode).flat_map(|(algo, bwd)| {
            let again = bf16 && algo == DeltaOpAlgo::Chunked;
            [(algo, bwd, false), (algo, bwd, true)].into_iter().take(if again { 2 } else { 1 })
        });
        for (algo, bwd, recompute) in flows {
            let op = CudaDelta::new(cuda.clone(), algo, bf16);
            let op = if recompute { op.recomputing() } else { op };
            let path = if recompute { "chunk-recompute" } else { label(p, algo, bf16) };
            let tol = path_tol(p, if algo == DeltaOpAlgo::Chunked { DeltaAlgo::Chunked } else { DeltaAlgo::Recurrent }, bf16, base_tol)?;
            let f = match op.forward(p, &x, true) {
                Ok(f) => f,
                Err(e) => {
                    out.push(Row::failed(name, path, dtype, tol, e));
                    continue;
                }
            };
            if !bwd {
                let ht = f.ht.as_deref().map_or(f64::INFINITY, |h| rel_rmse(h, rf.ht.as_deref().unwrap_or(&[])));
                push(out, name, path, dtype, tol, vec![("o", rel_rmse(&f.o, &rf.o)), ("ht", ht)]);
                continue;
            }
            match op.backward(p, &x, &r.grads_in()) {
                Ok(b) => {
                    let (ta, td) = gate_param_tols(p, &r, &rb, tol);
                    for (t, e) in compare(&f, &b, &rf, &rb) {
                        let tl = match t {
                            "dA_log" => ta,
                            "ddt_bias" => td,
                            _ => tol,
                        };
                        out.push(Row::new(name, path, dtype, t, e, tl));
                    }
                }
                Err(e) => out.push(Row::failed(name, path, dtype, tol, e)),
            }
        }
    }
    Ok(())
}

/// The delta case table on every GPU path; with `filter`, only the cases whose row name
/// (`delta/<case>`) contains it.
///
/// # Errors
/// [`Error`] when a case cannot be set up (never a path's failure: those are failing rows).
pub fn table_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) -> Result<()> {
    for (i, case) in cases().iter().enumerate() {
        let name = format!("delta/{}", case.name);
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        run_case(cuda, &name, case, DELTA_SEED + i as u64, true, out)?;
    }
    Ok(())
}

/// A T = 65536 sequence (Gated DeltaNet with an initial state, K = V = 64): the recurrent and
/// chunked paths against the oracle (no NaN passes; the decode steps are the recurrent kernel,
/// checked on the table).
///
/// # Errors
/// As [`table_check`].
pub fn long_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let mut spec = DeltaSpec::new(1, 65536, 1, 64, 64, DeltaGate::LogDecay);
    spec.hv = 1;
    let case = DeltaCase { name: "T65536-K64-V64-gs1-h0".into(), spec, gate_scale: 1.0, beta: Beta::Uniform, h0: true };
    run_case(cuda, "delta/T65536-K64-V64-gs1-h0", &case, 65536, false, out)
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        if x.to_bits() == y.to_bits() {
            m
        } else if (x - y).is_nan() {
            f64::INFINITY
        } else {
            m.max(f64::from((x - y).abs()))
        }
    })
}

/// Three forward+backward runs of each path on one case with every option on (the L2 norm, the
/// sigmoid, the computed gate, grouped value heads, an initial state, K = V = 128): the largest
/// bitwise difference must be 0 (no atomics in any reduction).
///
/// # Errors
/// As [`table_check`].
pub fn repeat_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let mut spec = DeltaSpec::new(2, 1000, 2, 128, 128, DeltaGate::Computed);
    spec.hv = 4;
    (spec.l2_qk, spec.beta_sigmoid) = (true, true);
    let case = DeltaCase { name: "repeat".into(), spec, gate_scale: 1.0, beta: Beta::Logits { shift: 0.0 }, h0: true };
    let name = "delta/repeat-T1000-K128-hv4";
    let d = DeltaCaseData::generate(&case, 99)?;
    for (storage, _) in STORAGES {
        let (r, dtype) = (Rounded::new(&d, storage), storage.name());
        let x = r.inputs();
        for (algo, _) in ALGOS.iter().filter(|a| a.1) {
            let op = CudaDelta::new(cuda.clone(), *algo, storage == Storage::Bf16);
            let path = label(&d.problem, *algo, storage == Storage::Bf16);
            let once = || -> gla_core::Result<Vec<f32>> {
                let f = op.forward(&d.problem, &x, true)?;
                let b = op.backward(&d.problem, &x, &r.grads_in())?;
                let mut all = f.o;
                all.extend(f.ht.unwrap_or_default());
                for t in [b.dq, b.dk, b.dv, b.dbeta, b.dg.unwrap_or_default(), b.da_log.unwrap_or_default()] {
                    all.extend(t);
                }
                all.extend(b.ddt_bias.unwrap_or_default());
                all.extend(b.dh0.unwrap_or_default());
                Ok(all)
            };
            match (once(), once(), once()) {
                (Ok(a), Ok(b), Ok(c)) => {
                    out.push(Row::new(name, path, dtype, "repeat", max_abs_diff(&a, &b).max(max_abs_diff(&a, &c)), tol::BITWISE))
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => out.push(Row::failed(name, path, dtype, tol::BITWISE, e)),
            }
        }
    }
    Ok(())
}

/// The > 2^31-element forward check: q, k, v hold B*T*H*K = 4160*512*8*128 = 2.18e9 bf16
/// elements each (Gated DeltaNet, K = V = 128, H = HV = 8). Sequences are copies of 4 random base
/// sequences, so the oracle runs on those 4 only; the first and the last sequence (whose rows sit
/// past element 2^31) are compared, and every output is counted for NaN.
///
/// # Errors
/// As [`table_check`]; out of device memory (about 60 GB) is a failing row.
pub fn huge_check(cuda: &Arc<Cuda>, out: &mut Vec<Row>) -> Result<()> {
    let (b, t, h, kd, vd) = (4160usize, 512usize, 8usize, 128usize, 128usize);
    let name = format!("delta/big-B{b}-T{t}-H{h}-K{kd}-V{vd}");
    let nbase = 4usize;
    let (per_q, per_v, per_b) = (t * h * kd, t * h * vd, t * h);
    let mut rng = Rng::new(41);
    let draw = |rng: &mut Rng, n: usize, f: &dyn Fn(&mut Rng) -> f64| -> Vec<u16> { (0..n).map(|_| f32_to_bf16(f(rng) as f32)).collect() };
    let bq = draw(&mut rng, nbase * per_q, &|r| r.uniform());
    let mut bk = draw(&mut rng, nbase * per_q, &|r| r.uniform());
    // unit keys (the table's draw), rounded to bf16 after the norm
    for row in bk.chunks_mut(kd) {
        let n = row.iter().map(|&u| f64::from(bf16_to_f32(u)).powi(2)).sum::<f64>().sqrt();
        row.iter_mut().for_each(|u| *u = f32_to_bf16((f64::from(bf16_to_f32(*u)) / n) as f32));
    }
    let bv = draw(&mut rng, nbase * per_v, &|r| r.uniform());
    let bb = draw(&mut rng, nbase * per_b, &|r| r.uniform());
    let bg = draw(&mut rng, nbase * per_b, &|r| logsigmoid(r.uniform()));
    let tile = |base: &[u16], per: usize| -> Vec<u16> {
        let mut v = Vec::with_capacity(b * per);
        for i in 0..b {
            let s = i % nbase;
            v.extend_from_slice(&base[s * per..(s + 1) * per]);
        }
        v
    };
    let spec = |b| {
        let mut s = DeltaSpec::new(b, t, h, kd, vd, DeltaGate::LogDecay);
        s.hv = h;
        s
    };
    let p = DeltaProblem::new(spec(b))?;
    debug_assert!(p.qk_len() > 1usize << 31);
    let up = |x: Vec<u16>, w: &'static str| cuda.upload(&x, w);
    let (q, k) = (up(tile(&bq, per_q), "q")?, up(tile(&bk, per_q), "k")?);
    let (v, beta, g) = (up(tile(&bv, per_v), "v")?, up(tile(&bb, per_b), "beta")?, up(tile(&bg, per_b), "g")?);
    let dp = DevDeltaProblem::new(cuda, &p)?;
    let x = DeltaDevInputs { q: &q, k: &k, v: &v, beta: &beta, g: Some(&g), a_log: None, dt_bias: None, h0: None };
    let sub = DeltaProblem::new(spec(nbase))?;
    let w = |x: &[u16]| x.iter().map(|&u| f64::from(bf16_to_f32(u))).collect::<Vec<f64>>();
    let (fq, fk, fv, fb, fg) = (w(&bq), w(&bk), w(&bv), w(&bb), w(&bg));
    let xs = DeltaInputs { q: &fq, k: &fk, v: &fv, beta: &fb, g: Some(&fg), a_log: None, dt_bias: None, h0: None };
    let rf = DeltaNaive.forward(&sub, &xs, true)?;
    let s = cuda.stream();
    for algo in [DeltaAlgo::Chunked, DeltaAlgo::Recurrent] {
        let path = route(&p, true, algo).map_or("none", |r| r.label());
        let tol = path_tol(&p, algo, true, tol::GPU_BF16)?;
        // SAFETY: poisoned before the launch writes it
        let mut o = unsafe { cuda.alloc_uninit::<u16>(p.v_len(), "o") }?;
        gla_cuda::ops::poison(cuda, &mut o)?;
        // SAFETY: as o
        let mut ht = unsafe { cuda.alloc_uninit::<f32>(p.state_len(), "ht") }?;
        gla_cuda::ops::poison(cuda, &mut ht)?;
        if let Err(e) = dops::delta_fwd(cuda, algo, &dp, &x, &mut o, Some(&mut ht)).and_then(|()| cuda.sync()) {
            out.push(Row::failed(&name, path, "bf16", tol, e));
            continue;
        }
        let ho = s.clone_dtoh(&o).map_err(Error::driver("download o"))?;
        let hht = s.clone_dtoh(&ht).map_err(Error::driver("download ht"))?;
        drop((o, ht));
        let nan = ho.iter().filter(|&&u| (u & 0x7fff) > 0x7f80).count() + hht.iter().filter(|x| x.is_nan()).count();
        out.push(Row::new(&name, path, "bf16", "nan-count", nan as f64, tol::BITWISE));
        let so = h * kd * vd;
        for seq in [0, b - 1] {
            let base = seq % nbase;
            let go: Vec<f32> = ho[seq * per_v..(seq + 1) * per_v].iter().map(|&u| bf16_to_f32(u)).collect();
            let case = format!("{name}-seq{seq}");
            out.push(Row::new(&case, path, "bf16", "o", rel_rmse(&go, &rf.o[base * per_v..(base + 1) * per_v]), tol));
            let rht = rf.ht.as_deref().unwrap_or(&[]);
            let e = rel_rmse(&hht[seq * so..(seq + 1) * so], rht.get(base * so..(base + 1) * so).unwrap_or(&[]));
            out.push(Row::new(&case, path, "bf16", "ht", e, tol));
        }
    }
    Ok(())
}
