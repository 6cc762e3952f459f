//! Profiling harness for the CPU chunked forward (not a benchmark of record: `gla bench ops` is):
//! B=1, T=8192, H=4, K=V=128 f32, `N` timed calls (first argument, default 50), prints the min
//! and median. Gates are fla's layer gates `logsigmoid(x) / 16`, or fla's op-benchmark gates
//! `logsigmoid(x).max(-5)` with `FLA_GATES=1`. Use it under `perf record`:
//! `cargo build --release -p gla-cpu --example fwdloop && perf record -g target/release/examples/fwdloop 100`.

use gla_check::cases::{logsigmoid, Rng};
use gla_core::op::GlaOp;
use gla_core::{GateKind, Inputs, Problem, ProblemSpec};
fn main() {
    let (b, t, h, k, v) = (1, 8192, 4, 128, 128);
    let p = Problem::new(ProblemSpec { b, t, h, k, v, gate: GateKind::PerKey, scale: None, cu_seqlens: None }).unwrap();
    let mut rng = Rng::new(1);
    let n = b * t * h;
    let q: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
    let kk: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
    let vv: Vec<f32> = (0..n * v).map(|_| rng.normal() as f32).collect();
    let div = if std::env::var_os("FLA_GATES").is_some() { 1.0 } else { 16.0 };
    let g: Vec<f32> = (0..n * k).map(|_| (logsigmoid(rng.normal()) as f32 / div).max(-5.0)).collect();
    let x = Inputs { q: &q, k: &kk, v: &vv, g: Some(&g), h0: None };
    let reps: usize = std::env::args().nth(1).map_or(50, |s| s.parse().unwrap());
    let c = gla_cpu::Chunked::default();
    let mut ts = vec![];
    for _ in 0..reps {
        let s = std::time::Instant::now();
        std::hint::black_box(c.forward(&p, &x, false).unwrap());
        ts.push(s.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    println!("min {:.2} med {:.2} ms", ts[0], ts[ts.len() / 2]);
}
