//! The language model's short convolution on its own (case names `nn/conv-*`): both launch paths
//! of [`gla_cuda::conv::short_conv`] (`auto`: the lane-vectorized kernels where C % 4 == 0, which
//! the model runs; `elementwise`: the per-element kernels) against an f64 reference of fla's
//! `ShortConvolution` on the same bf16 inputs: y, pre and dx are bf16 ([`tol::GPU_BF16`]), dw an
//! f32 sum ([`tol::GPU_F32`]). The cases cover widths 1 to 8, sequences shorter than the width and
//! than a warp's 16-row tile, tiles that cross sequences, channel counts off the 128-channel
//! block, a conv state before each sequence, no SiLU, and more rows than the backward's 256 row
//! blocks cover at once.

use std::sync::Arc;

use gla_cuda::conv::{short_conv, ConvPath, ConvShape};
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
/// Width 1 rides on the last case's shape.
const W1: ConvCase = ConvCase { b: 2, t: 50, c: 8, width: 1, silu: true, cache: false };

/// The f64 reference: (y, pre, dx, dw), dpre from pre rounded to bf16 as the kernels store it.
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
            let a: f64 = (0..wd).map(|j| f64::from(w[ch * wd + j]) * xv(seq, pos + j as isize - (wd as isize - 1), ch).0).sum();
            pre[r * c + ch] = a;
            y[r * c + ch] = if cc.silu { a * sig(a) } else { a };
            let p = f64::from(bf16_to_f32(f32_to_bf16(a as f32)));
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

/// The `nn/conv-*` rows (two paths x four tensors a case). A path that fails to run becomes a
/// failing row.
///
/// # Errors
/// None of its own: launch failures are rows.
pub fn check(cuda: &Arc<Cuda>, filter: Option<&str>, out: &mut Vec<Row>) -> Result<()> {
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
        for (path, label) in [(ConvPath::Auto, "auto"), (ConvPath::Elementwise, "elementwise")] {
            match short_conv(cuda, &x, &w, cache.as_deref(), &dy, shape, cc.silu, path) {
                Ok(got) => {
                    let f = |v: &[u16]| v.iter().map(|&u| bf16_to_f32(u)).collect::<Vec<f32>>();
                    let err = |a: &[f32], i: usize| crate::cases::rel_rmse(a, &want[i]);
                    out.push(Row::new(&case, label, "bf16", "y", err(&f(&got.y), 0), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "bf16", "pre", err(&f(&got.pre), 1), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "bf16", "dx", err(&f(&got.dx), 2), tol::GPU_BF16));
                    out.push(Row::new(&case, label, "f32", "dw", err(&got.dw, 3), tol::GPU_F32));
                }
                Err(e) => out.push(Row::failed(&case, label, "bf16", tol::GPU_BF16, e)),
            }
        }
    }
    Ok(())
}
