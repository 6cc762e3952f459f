//! The language model's short convolution and norms on their own, both launch paths of each
//! (`auto`: the lane-vectorized kernels where the width allows, which the model runs;
//! `reference`: the per-element kernels) against f64 references on the same inputs: bf16
//! outputs within [`tol::GPU_BF16`], f32 ones (dw, RMSNorm's dx) within [`tol::GPU_F32`]. The
//! conv's backward recomputes its pre-activation from x (none is stored), so dx and dw check it.
//!
//! - `nn/conv-*` ([`gla_cuda::conv::short_conv`], fla's `ShortConvolution`): widths 1 to 8,
//!   sequences shorter than the width and than a warp's 16-row tile, tiles that cross sequences,
//!   channel counts off the 128-channel block, a conv state before each sequence, no SiLU, and
//!   more rows than the backward's 256 row blocks cover at once.
//! - `nn/norm-rms-*` ([`gla_cuda::norm::rms_norm`]) and `nn/norm-gated-*`
//!   ([`gla_cuda::norm::gated_norm`], fla's `FusedRMSNormGated`): widths whose 128-column groups
//!   fill the kernel's NG or leave some out, widths the vectorized kernels do not take, swish and
//!   sigmoid gates and none, more rows than 256 blocks of 64.

use std::sync::Arc;

use gla_core::dims::GateAct;
use gla_cuda::conv::{short_conv, ConvShape, NnPath};
use gla_cuda::ops::{bf16_to_f32, f32_to_bf16};
use gla_cuda::{Cuda, Result};
use gla_model::Rng;

use crate::row::Row;
use crate::tol;

/// One case: `b` sequences of `t` rows, `c` channels, `width` taps; SiLU; a conv state.
struct ConvCase {
    b: usize,
    t: usize,
    c: usize,
    width: usize,
    silu: bool,
    cache: bool,
}

const CASES: [ConvCase; 8] = [
    ConvCase { b: 2, t: 37, c: 264, width: 4, silu: true, cache: false },
    ConvCase { b: 3, t: 3, c: 64, width: 8, silu: false, cache: true },
    ConvCase { b: 2, t: 300, c: 512, width: 2, silu: true, cache: true },
    ConvCase { b: 2, t: 20, c: 102, width: 3, silu: true, cache: false },
    ConvCase { b: 2, t: 2048, c: 1024, width: 4, silu: true, cache: false },
    ConvCase { b: 1, t: 40_000, c: 24, width: 5, silu: true, cache: false },
    ConvCase { b: 5, t: 16, c: 128, width: 6, silu: true, cache: false },
    ConvCase { b: 4, t: 9, c: 36, width: 7, silu: false, cache: true },
];
/// Width 1, on a channel count of one lane's 4 a group.
const W1: ConvCase = ConvCase { b: 2, t: 50, c: 8, width: 1, silu: true, cache: false };

/// The f64 reference: (y, pre, dx, dw). y (and pre) read the conv state before each sequence;
/// the backward is that of the forward without one (the contract of `conv_bwd`: the model trains
/// without a state), so dpre takes pre without the state's terms.
#[allow(clippy::many_single_char_names)]
fn reference(x: &[u16], w: &[f32], cache: Option<&[f32]>, dy: &[f32], cc: &ConvCase) -> [Vec<f64>; 4] {
    let (t, c, wd) = (cc.t, cc.c, cc.width);
    let n = cc.b * t;
    let xv = |seq: usize, pos: isize, ch: usize| -> (f64, bool) {
        if pos >= 0 {
            (f64::from(bf16_to_f32(x[(seq * t + pos as usize) * c + ch])), true)
        } else {
            let at = (seq * c + ch) * wd;
            (cache.map_or(0.0, |k| f64::from(k[(at as isize + wd as isize + pos) as usize])), false)
        }
    };
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (mut pre, mut y, mut dp) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
    for r in 0..n {
        let (seq, pos) = (r / t, (r % t) as isize);
        for ch in 0..c {
            let tap = |j: usize| xv(seq, pos + j as isize - (wd as isize - 1), ch);
            let a: f64 = (0..wd).map(|j| f64::from(w[ch * wd + j]) * tap(j).0).sum();
            pre[r * c + ch] = a;
            y[r * c + ch] = if cc.silu { a * sig(a) } else { a };
            // the backward's pre: the inputs of the sequence only
            let p: f64 = (0..wd).filter(|&j| tap(j).1).map(|j| f64::from(w[ch * wd + j]) * tap(j).0).sum();
            let s = sig(p);
            dp[r * c + ch] = f64::from(dy[r * c + ch]) * if cc.silu { s * (1.0 + p * (1.0 - s)) } else { 1.0 };
        }
    }
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c * wd]);
    for r in 0..n {
        let (seq, pos) = (r / t, r % t);
        for ch in 0..c {
            dx[r * c + ch] =
                (0..wd).filter(|j| pos + wd - 1 - j < t).map(|j| f64::from(w[ch * wd + j]) * dp[(r + wd - 1 - j) * c + ch]).sum();
            for j in 0..wd {
                let (v, inside) = xv(seq, pos as isize + j as isize - (wd as isize - 1), ch);
                if inside {
                    dw[ch * wd + j] += dp[r * c + ch] * v;
                }
            }
        }
    }
    [y, pre, dx, dw]
}

/// The `nn/*` rows (two paths x each output a case). A path that fails to run becomes a failing
/// row.
///
/// # Errors
/// None of its own: launch failures are rows.
pub fn check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) -> Result<()> {
    conv_check(cuda, filter, out);
    rms_check(cuda, filter, out);
    gated_check(cuda, filter, out);
    Ok(())
}

const PATHS: [(NnPath, &str); 2] = [(NnPath::Auto, "auto"), (NnPath::Reference, "reference")];

fn bf(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&u| bf16_to_f32(u)).collect()
}

fn conv_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) {
    for cc in CASES.iter().chain(std::iter::once(&W1)) {
        let case = format!(
            "nn/conv-b{}-t{}-c{}-w{}{}{}",
            cc.b,
            cc.t,
            cc.c,
            cc.width,
            if cc.silu { "" } else { "-nosilu" },
            if cc.cache { "-state" } else { "" }
        );
        if filter.is_some_and(|f| !case.contains(f)) {
            continue;
        }
        let n = cc.b * cc.t;
        let mut rng = Rng::new(0xc0 + (n * cc.c * cc.width) as u64);
        let x: Vec<u16> = (0..n * cc.c).map(|_| f32_to_bf16(rng.normal() as f32)).collect();
        let w: Vec<f32> = (0..cc.c * cc.width).map(|_| (0.5 * rng.normal()) as f32).collect();
        let dy: Vec<f32> = (0..n * cc.c).map(|_| rng.normal() as f32).collect();
        let cache: Option<Vec<f32>> = cc.cache.then(|| (0..cc.b * cc.c * cc.width).map(|_| rng.normal() as f32).collect());
        let want = reference(&x, &w, cache.as_deref(), &dy, cc);
        let shape = ConvShape { b: cc.b, t: cc.t, c: cc.c, width: cc.width };
        for (path, label) in PATHS {
            match short_conv(cuda, &x, &w, cache.as_deref(), &dy, shape, cc.silu, path) {
                Ok(got) => {
                    let err = |a: &[f32], i: usize| crate::cases::rel_rmse(a, &want[i]);
                    out.push(Row::new(&case, label, "bf16", "y", err(&bf(&got.y), 0), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "bf16", "dx", err(&bf(&got.dx), 2), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "f32", "dw", err(&got.dw, 3), tol::GPU_F32));
                }
                Err(e) => out.push(Row::failed(&case, label, "bf16", tol::GPU_BF16, e)),
            }
        }
    }
}

const EPS: f32 = 1e-6;

/// RMSNorm: `(n, d)`; the vectorized kernels take d = 1024 (NG = 8), 384 (three of NG = 4's
/// groups) and, over more rows than one pass of the grid, 128; d = 100 is the reference's.
fn rms_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) {
    for (n, d) in [(300, 1024), (1000, 384), (77, 100), (20_000, 128)] {
        let case = format!("nn/norm-rms-n{n}-d{d}");
        if filter.is_some_and(|f| !case.contains(f)) {
            continue;
        }
        let mut rng = Rng::new(0x4d5 + (n * d) as u64);
        let mut vecf = |len: usize, s: f64| (0..len).map(|_| (s * rng.normal()) as f32).collect::<Vec<f32>>();
        let (x, w, dy, dx0) = (vecf(n * d, 1.0), vecf(d, 1.0), vecf(n * d, 1.0), vecf(n * d, 1.0));
        // f64: y = x rs w; dx = dx0 + rs dy w - x rs^3 mean(dy w x); dw = sum dy x rs
        let (mut y, mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; d]);
        for r in 0..n {
            let row = |a: &[f32], j: usize| f64::from(a[r * d + j]);
            let ms = (0..d).map(|j| row(&x, j) * row(&x, j)).sum::<f64>() / d as f64;
            let rs = 1.0 / (ms + f64::from(EPS)).sqrt();
            let dot = (0..d).map(|j| row(&dy, j) * f64::from(w[j]) * row(&x, j)).sum::<f64>() / d as f64;
            for j in 0..d {
                y[r * d + j] = row(&x, j) * rs * f64::from(w[j]);
                dx[r * d + j] = row(&dx0, j) + rs * row(&dy, j) * f64::from(w[j]) - row(&x, j) * rs * rs * rs * dot;
                dw[j] += row(&dy, j) * row(&x, j) * rs;
            }
        }
        for (path, label) in PATHS {
            match gla_cuda::norm::rms_norm(cuda, &x, &w, &dy, &dx0, n, d, EPS, path) {
                Ok(got) => {
                    out.push(Row::new(&case, label, "bf16", "y", crate::cases::rel_rmse(&bf(&got.y), &y), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "f32", "dx", crate::cases::rel_rmse(&got.dx, &dx), tol::GPU_F32));
                    out.push(Row::new(&case, label, "f32", "dw", crate::cases::rel_rmse(&got.dw, &dw), tol::GPU_F32));
                }
                Err(e) => out.push(Row::failed(&case, label, "f32", tol::GPU_F32, e)),
            }
        }
    }
}

/// The gated norm: `(rows, v, gate)`; the vectorized kernels take v = 512 (NG = 4), 128, 640
/// (five of NG = 8's groups) and, over more rows than one pass of the grid, 256; v = 64 is the
/// reference's.
fn gated_check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    for (rows, v, gate) in [
        (500, 512, Some(GateAct::Swish)),
        (300, 128, Some(GateAct::Sigmoid)),
        (200, 640, Some(GateAct::Swish)),
        (100, 64, None),
        (20_000, 256, None),
    ] {
        let gname = match gate {
            Some(GateAct::Swish) => "swish",
            Some(GateAct::Sigmoid) => "sigmoid",
            None => "nogate",
        };
        let case = format!("nn/norm-gated-rows{rows}-v{v}-{gname}");
        if filter.is_some_and(|f| !case.contains(f)) {
            continue;
        }
        let mut rng = Rng::new(0x9a7 + (rows * v) as u64);
        let o: Vec<u16> = (0..rows * v).map(|_| f32_to_bf16(rng.normal() as f32)).collect();
        let g: Option<Vec<u16>> = gate.map(|_| (0..rows * v).map(|_| f32_to_bf16((2.0 * rng.normal()) as f32)).collect());
        let w: Vec<f32> = (0..v).map(|_| rng.normal() as f32).collect();
        let dy: Vec<f32> = (0..rows * v).map(|_| rng.normal() as f32).collect();
        let act = gate.unwrap_or(GateAct::Swish);
        // f64: y = o rs w a(g); d_o = rs dy w a(g) - o rs^3 sum(dy w a(g) o) / v;
        // dg = dy o rs w a'(g); dw = sum dy o rs a(g)
        let (mut y, mut d_o, mut dg, mut dw) = (vec![0.0; rows * v], vec![0.0; rows * v], vec![0.0; rows * v], vec![0.0; v]);
        for r in 0..rows {
            let ov = |j: usize| f64::from(bf16_to_f32(o[r * v + j]));
            let gact = |j: usize| -> (f64, f64) {
                let Some(g) = &g else { return (1.0, 0.0) };
                let x = f64::from(bf16_to_f32(g[r * v + j]));
                let s = sig(x);
                match act {
                    GateAct::Sigmoid => (s, s * (1.0 - s)),
                    GateAct::Swish => (x * s, s * (1.0 + x * (1.0 - s))),
                }
            };
            let (a, da) = (|j: usize| gact(j).0, |j: usize| gact(j).1);
            let rs = 1.0 / ((0..v).map(|j| ov(j) * ov(j)).sum::<f64>() / v as f64 + f64::from(EPS)).sqrt();
            let dyv = |j: usize| f64::from(dy[r * v + j]);
            let dot = (0..v).map(|j| dyv(j) * f64::from(w[j]) * a(j) * ov(j)).sum::<f64>();
            for j in 0..v {
                let wj = f64::from(w[j]);
                y[r * v + j] = ov(j) * rs * wj * a(j);
                d_o[r * v + j] = rs * dyv(j) * wj * a(j) - ov(j) * rs * rs * rs * dot / v as f64;
                dg[r * v + j] = dyv(j) * ov(j) * rs * wj * da(j);
                dw[j] += dyv(j) * ov(j) * rs * a(j);
            }
        }
        for (path, label) in PATHS {
            match gla_cuda::norm::gated_norm(cuda, &o, g.as_deref(), &w, &dy, (rows, v), EPS, act, path) {
                Ok(got) => {
                    let err = |a: &[f32], want: &[f64]| crate::cases::rel_rmse(a, want);
                    out.push(Row::new(&case, label, "bf16", "y", err(&bf(&got.y), &y), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "bf16", "do", err(&bf(&got.d_o), &d_o), tol::GPU_BF16));
                    if g.is_some() {
                        out.push(Row::new(&case, label, "bf16", "dg", err(&bf(&got.dg), &dg), tol::GPU_BF16));
                    }
                    out.push(Row::new(&case, label, "f32", "dw", err(&got.dw, &dw), tol::GPU_F32));
                }
                Err(e) => out.push(Row::failed(&case, label, "bf16", tol::GPU_BF16, e)),
            }
        }
    }
}
