//! Times the chunked forward and forward+backward at bf16 with CUDA events.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use gla_core::{GateKind, Problem, ProblemSpec};
use gla_cuda::ops::{self, f32_to_bf16, DevInputs, DevProblem, FwdKernel};
use gla_cuda::{Cuda, Error, Result};

fn median(mut x: Vec<f32>) -> f32 {
    x.sort_by(f32::total_cmp);
    x[x.len() / 2]
}

pub fn run(cuda: &Arc<Cuda>) -> Result<()> {
    let (h, kd, vd) = (16usize, 128usize, 128usize);
    for t in [2048usize, 8192, 32768] {
        let b = 65536 / t;
        let p = Problem::new(ProblemSpec { b, t, h, k: kd, v: vd, gate: GateKind::PerKey, scale: None, cu_seqlens: None })?;
        let s = cuda.stream();
        let mut rng = gla_core::testing::Rng::new(5);
        let mut gen = |n: usize, f: &dyn Fn(f64) -> f64| -> Result<cudarc::driver::CudaSlice<u16>> {
            let hst: Vec<u16> = (0..n).map(|_| f32_to_bf16(f(rng.uniform()) as f32)).collect();
            s.clone_htod(&hst).map_err(Error::driver("upload"))
        };
        let q = gen(p.qk_len(), &|u| u)?;
        let k = gen(p.qk_len(), &|u| u)?;
        let v = gen(p.v_len(), &|u| u)?;
        let g = gen(p.qk_len(), &|u| gla_core::testing::logsigmoid(u) / 16.0)?;
        let d_o = gen(p.v_len(), &|u| u - 0.5)?;
        let dp = DevProblem::new(cuda, &p)?;
        let x = DevInputs { q: &q, k: &k, v: &v, g: Some(&g), h0: None };
        let mut o = s.alloc_zeros::<u16>(p.v_len()).map_err(Error::driver("alloc o"))?;
        let mut ht = s.alloc_zeros::<f32>(p.state_len()).map_err(Error::driver("alloc ht"))?;
        let ev = || cuda.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(Error::driver("event"));
        let time = |f: &mut dyn FnMut() -> Result<()>, reps: usize| -> Result<f32> {
            f()?;
            cuda.sync()?;
            let mut ts = Vec::new();
            for _ in 0..reps {
                let (a, z) = (ev()?, ev()?);
                a.record(s).map_err(Error::driver("record"))?;
                f()?;
                z.record(s).map_err(Error::driver("record"))?;
                z.synchronize().map_err(Error::driver("event sync"))?;
                ts.push(a.elapsed_ms(&z).map_err(Error::driver("elapsed"))?);
            }
            Ok(median(ts))
        };
        for (which, name) in [(FwdKernel::Chunk, "chunk"), (FwdKernel::Recurrent, "recurrent")] {
            let fwd = time(&mut || ops::gla_fwd(cuda, which, &dp, &x, &mut o, Some(&mut ht)), 5)?;
            let bwd = if t == 2048 { time(&mut || ops::gla_bwd(cuda, &dp, &x, &d_o, None).map(|_| ()), 3)? } else { f32::NAN };
            let flop = 2.0 * p.rows() as f64 * h as f64 * (kd * vd) as f64 * 2.0 + 2.0 * p.rows() as f64 * h as f64 * 64.0 * (kd + vd) as f64;
            let bytes = 2.0 * (3 * p.qk_len() + 2 * p.v_len()) as f64;
            println!(
                "bench T={t:>5} B={b:>3} H={h} K={kd} V={vd} bf16 {name:<9}: fwd {fwd:8.3} ms ({:6.1} TFLOP/s, {:6.0} GB/s, floor {:.3} ms)  bwd(recurrent) {bwd:8.3} ms  fwd+bwd {:8.3} ms",
                flop / fwd as f64 / 1e9,
                bytes / fwd as f64 / 1e6,
                bytes / 4.24e12 * 1e3,
                fwd + bwd
            );
        }
    }
    Ok(())
}
