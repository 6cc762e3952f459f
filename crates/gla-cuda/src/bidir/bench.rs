//! Timing of the bidirectional scan (`gla bench bidir`): the fused forward and backward against
//! the composed path (the GLA chunked op on the input and on its time-reversed copy, flips included: what
//! ViG does with fla's kernel on the stacked `[x; flip x]` batch), forward and forward+backward,
//! with [`crate::bench::time_ms`] (median of event-timed runs) and the HBM floor and FLOPs of
//! [`BenchRow`]. Inputs bf16: q, k, v, do ~ N(0, 1), gates `logsigmoid(N(0, 1)) / 16` (ViG's
//! gate_logit_normalizer), every buffer and workspace allocated before the timed runs.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use gla_core::bidir::{BidirProblem, BidirSpec};

use super::ops::{bidir_bwd_ws, bidir_fwd_ws, BidirDevGrads, BidirDevInputs, BidirDevProblem, BidirWorkspace};
use crate::bench::{draw_bf16, format_rows, stages_table, time_ms, BenchRow};
use crate::dispatch::bidir::BidirAlgo;
use crate::error::Result;
use crate::runtime::Cuda;

/// ViG's shapes (`[B, T, H, K, V]`: every ViG has heads of K = 32 keys (expand_k 0.5) and V = 64
/// values): a batch of 64 images of 224^2, 512^2 and 1024^2 pixels (T = 14 x 14, 32 x 32, 64 x 64
/// patches) with the 3, 6, 12 heads of ViG-T/S/B; ViG-T's own batches of `gla bench vig` (128
/// images at 224^2, 8 at 1024^2); then the project's record shape (bf16, B*T = 65536, H = 16,
/// K = V = 128, T = 2048).
pub fn default_bidir_shapes() -> Vec<[usize; 5]> {
    let mut out = Vec::new();
    for t in [196usize, 1024, 4096] {
        for h in [3usize, 6, 12] {
            out.push([64, t, h, 32, 64]);
        }
    }
    out.extend([[128, 196, 3, 32, 64], [8, 4096, 3, 32, 64], [32, 2048, 16, 128, 128]]);
    out
}

/// One measurement and the composed path's time over the fused one's for the same shape and
/// pass (1 on the composed rows themselves).
#[derive(Debug, Clone, PartialEq)]
pub struct BidirBenchRow {
    /// The measurement (kernel `bidir-fused` or `gla-x2`).
    pub row: BenchRow,
    /// Composed ms / this row's ms.
    pub speedup: f64,
}

fn logsigmoid16(x: f32) -> f32 {
    (x.min(0.0) - (-x.abs()).exp().ln_1p()) / 16.0
}

/// One shape's inputs, workspace and outputs on the device, allocated before any timed run.
struct Case {
    dp: BidirDevProblem,
    q: CudaSlice<u16>,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    gf: CudaSlice<u16>,
    gb: CudaSlice<u16>,
    d_o: CudaSlice<u16>,
    ws: BidirWorkspace<u16>,
    g: BidirDevGrads,
    o: CudaSlice<u16>,
}

impl Case {
    fn new(cuda: &Arc<Cuda>, p: &BidirProblem) -> Result<Self> {
        let up = |x: Vec<u16>, what: &'static str| -> Result<CudaSlice<u16>> { cuda.upload(&x, what) };
        let (nqk, nv) = (p.qk_len(), p.v_len());
        let dp = BidirDevProblem::new(cuda, p)?;
        let ws = BidirWorkspace::new(cuda, &dp)?;
        Ok(Self {
            q: up(draw_bf16(nqk, 21, |z| z), "q")?,
            k: up(draw_bf16(nqk, 22, |z| z), "k")?,
            v: up(draw_bf16(nv, 23, |z| z), "v")?,
            gf: up(draw_bf16(nqk, 24, logsigmoid16), "gf")?,
            gb: up(draw_bf16(nqk, 25, logsigmoid16), "gb")?,
            d_o: up(draw_bf16(nv, 26, |z| z), "do")?,
            g: BidirDevGrads::alloc(cuda, p)?,
            // SAFETY: written by every forward before it is read
            o: unsafe { cuda.alloc_uninit::<u16>(nv, "o") }?,
            dp,
            ws,
        })
    }

    /// One forward of `algo`, and its backward with `bwd`.
    fn run(&mut self, cuda: &Cuda, algo: BidirAlgo, bwd: bool) -> Result<()> {
        let x = BidirDevInputs { q: &self.q, k: &self.k, v: &self.v, gf: &self.gf, gb: &self.gb };
        bidir_fwd_ws(cuda, algo, &self.dp, &x, &mut self.ws, &mut self.o)?;
        if bwd {
            bidir_bwd_ws(cuda, algo, &self.dp, &x, &self.d_o, &mut self.ws, self.g.as_out())?;
        }
        Ok(())
    }
}

/// Times both paths on every shape, forward and forward+backward.
///
/// # Errors
/// Invalid shapes; driver, compile or launch errors.
pub fn bench_bidir(cuda: &Arc<Cuda>, shapes: &[[usize; 5]], reps: usize) -> Result<Vec<BidirBenchRow>> {
    let mut out = Vec::new();
    for &shape in shapes {
        let [b, t, h, k, v] = shape;
        let p = BidirProblem::new(BidirSpec::new(b, t, h, k, v))?;
        let (nqk, nv) = (p.qk_len(), p.v_len());
        let mut c = Case::new(cuda, &p)?;
        let (ffl, bfl) = p.chunk_flops();
        // the forward reads q, k, v, gf, gb and writes o (bf16); the backward reads them and do
        // and writes dq, dk, dv, dgf, dgb (f32)
        let fwd_bytes = (2 * (4 * nqk + 2 * nv)) as f64;
        let bwd_bytes = (2 * (4 * nqk + 2 * nv) + 4 * (4 * nqk + nv)) as f64;
        let mut times = Vec::new();
        for (algo, kernel) in [(BidirAlgo::Fused, "bidir-fused"), (BidirAlgo::Composed, "gla-x2")] {
            let fwd = time_ms(cuda, reps, &mut || c.run(cuda, algo, false))?;
            let both = time_ms(cuda, reps, &mut || c.run(cuda, algo, true))?;
            times.push((kernel, fwd, both));
        }
        let (_, cf, cb) = times[1];
        for pass in ["fwd", "fwd+bwd"] {
            for &(kernel, f, fb) in &times {
                let (ms, bytes, flops, base) =
                    if pass == "fwd" { (f, fwd_bytes, ffl, cf) } else { (fb, fwd_bytes + bwd_bytes, ffl + bfl, cb) };
                out.push(BidirBenchRow { row: BenchRow { shape, pass, kernel, ms, bytes, flops }, speedup: base / ms });
            }
        }
    }
    Ok(out)
}

/// The time of each launch of one fused forward+backward on `shape` (CUDA events around each
/// launch, after a warm-up run): a plain-text table ([`stages_table`]).
///
/// # Errors
/// As [`bench_bidir`].
pub fn bidir_stages(cuda: &Arc<Cuda>, shape: [usize; 5]) -> Result<String> {
    let [b, t, h, k, v] = shape;
    let mut c = Case::new(cuda, &BidirProblem::new(BidirSpec::new(b, t, h, k, v))?)?;
    c.run(cuda, BidirAlgo::Fused, true)?;
    cuda.sync()?;
    let ((), times) = crate::runtime::profile(cuda, || c.run(cuda, BidirAlgo::Fused, true))?;
    Ok(stages_table(&format!("bidir-fused {b}x{t}x{h}x{k}x{v}: one forward+backward"), &times))
}

/// The rows as a plain-text table ([`format_rows`], floors at `hbm` bytes per second) with the
/// speed-up column appended.
pub fn format_bidir_rows(rows: &[BidirBenchRow], hbm: f64) -> String {
    let plain: Vec<BenchRow> = rows.iter().map(|r| r.row.clone()).collect();
    let table = format_rows(&plain, hbm);
    let mut lines = table.lines();
    let mut s = format!("{}  {:>8}\n", lines.next().unwrap_or(""), "speedup");
    for (line, r) in lines.zip(rows) {
        s += &format!("{line}  {:>7.2}x\n", r.speedup);
    }
    s
}
