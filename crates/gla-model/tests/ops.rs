//! Each layer op against a naive reference and its backward against central finite differences
//! (the scalar `<dy, y(x)>` accumulated in f64; f32 ops, so steps of 1e-2 and a 1e-2 tolerance on
//! the relative RMSE, far below what any wrong term gives).

use gla_model::config::GateAct;
use gla_model::ops::*;
use gla_model::Rng;

fn randn(n: usize, seed: u64, s: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * s).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn rel_rmse(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Central differences of `f` at `x` for every element.
fn fd(x: &[f32], f: &dyn Fn(&[f32]) -> f64) -> Vec<f64> {
    let h = 1e-2f32;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let a = f(&xp);
            xp[i] = x[i] - h;
            let b = f(&xp);
            xp[i] = x[i];
            (a - b) / (2.0 * h as f64)
        })
        .collect()
}

fn check(name: &str, analytic: &[f32], numeric: &[f64]) {
    let a: Vec<f64> = analytic.iter().map(|&x| x as f64).collect();
    let e = rel_rmse(&a, numeric);
    assert!(e < 1e-2, "{name}: relative RMSE {e:.2e} between backward and finite differences");
}

#[test]
fn linear_matches_naive_loops() {
    let (n, din, dout) = (7, 5, 3);
    let x = randn(n * din, 1, 1.0);
    let w = randn(dout * din, 2, 1.0);
    let dy = randn(n * dout, 3, 1.0);
    let mut y = vec![f32::NAN; n * dout];
    linear_fwd(&mut y, &x, &w, n, din, dout);
    let mut dx = vec![f32::NAN; n * din];
    linear_bwd_x(&mut dx, &dy, &w, n, din, dout, false);
    let mut dw = vec![0.5f32; dout * din];
    linear_bwd_w(&mut dw, &dy, &x, n, din, dout);
    for r in 0..n {
        for o in 0..dout {
            let e: f32 = (0..din).map(|i| x[r * din + i] * w[o * din + i]).sum();
            assert!((y[r * dout + o] - e).abs() < 1e-5);
        }
        for i in 0..din {
            let e: f32 = (0..dout).map(|o| dy[r * dout + o] * w[o * din + i]).sum();
            assert!((dx[r * din + i] - e).abs() < 1e-5);
        }
    }
    for o in 0..dout {
        for i in 0..din {
            let e: f32 = 0.5 + (0..n).map(|r| dy[r * dout + o] * x[r * din + i]).sum::<f32>();
            assert!((dw[o * din + i] - e).abs() < 1e-4, "dw accumulates");
        }
    }
}

#[test]
fn rmsnorm_matches_definition_and_fd() {
    let (rows, d, eps) = (5, 8, 1e-6f32);
    let x = randn(rows * d, 4, 1.0);
    let w = randn(d, 5, 1.0);
    let dy = randn(rows * d, 6, 1.0);
    let run = |x: &[f32], w: &[f32]| {
        let mut y = vec![0.0; rows * d];
        let mut r = vec![0.0; rows];
        rmsnorm_fwd(&mut y, &mut r, x, w, d, eps);
        (y, r)
    };
    let (y, rstd) = run(&x, &w);
    for i in 0..rows {
        let ms: f64 = x[i * d..(i + 1) * d].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            let e = x[i * d + j] as f64 / (ms + eps as f64).sqrt() * w[j] as f64;
            assert!((y[i * d + j] as f64 - e).abs() < 1e-5);
        }
    }
    let mut dx = vec![0.0; rows * d];
    let mut dw = vec![0.0; d];
    rmsnorm_bwd(&mut dx, &mut dw, &dy, &x, &rstd, &w, d, false);
    check("rmsnorm dx", &dx, &fd(&x, &|x| dot(&run(x, &w).0, &dy)));
    check("rmsnorm dw", &dw, &fd(&w, &|w| dot(&run(&x, w).0, &dy)));
}

#[test]
fn gated_norm_fd_with_and_without_gate() {
    let (rows, v, eps) = (6, 4, 1e-5f32);
    let o = randn(rows * v, 7, 1.0);
    let g = randn(rows * v, 8, 1.5);
    let w = randn(v, 9, 1.0);
    let dy = randn(rows * v, 10, 1.0);
    for (gated, act) in [(true, GateAct::Swish), (true, GateAct::Sigmoid), (false, GateAct::Swish)] {
        let run = |o: &[f32], g: &[f32], w: &[f32]| {
            let mut y = vec![0.0; rows * v];
            let mut r = vec![0.0; rows];
            gated_norm_fwd(&mut y, &mut r, o, gated.then_some(g), act, w, v, eps);
            (y, r)
        };
        let (y, rstd) = run(&o, &g, &w);
        // reference: rmsnorm per row times w times swish(g) or sigmoid(g)
        for i in 0..rows {
            let ms: f32 = o[i * v..(i + 1) * v].iter().map(|x| x * x).sum::<f32>() / v as f32;
            for j in 0..v {
                let s = 1.0 / (1.0 + (-g[i * v + j]).exp());
                let gate = match (gated, act) {
                    (false, _) => 1.0,
                    (true, GateAct::Swish) => g[i * v + j] * s,
                    (true, GateAct::Sigmoid) => s,
                };
                let e = o[i * v + j] / (ms + eps).sqrt() * w[j] * gate;
                assert!((y[i * v + j] - e).abs() < 1e-5);
            }
        }
        let mut d_o = vec![0.0; rows * v];
        let mut dg = vec![0.0; rows * v];
        let mut dw = vec![0.0; v];
        gated_norm_bwd(&mut d_o, gated.then_some(&mut dg[..]), &mut dw, &dy, &o, gated.then_some(&g[..]), act, &rstd, &w, v);
        check("gated_norm d_o", &d_o, &fd(&o, &|o| dot(&run(o, &g, &w).0, &dy)));
        check("gated_norm dw", &dw, &fd(&w, &|w| dot(&run(&o, &g, w).0, &dy)));
        if gated {
            check("gated_norm dg", &dg, &fd(&g, &|g| dot(&run(&o, g, &w).0, &dy)));
        }
    }
}

#[test]
fn sum_norm_matches_flas_and_fd() {
    let (rows, k) = (5, 6);
    let mut x = randn(rows * k, 30, 1.0);
    // away from the kink of |x| at 0 (the differences step over 1e-2)
    x.iter_mut().for_each(|v| *v += 0.2f32.copysign(*v));
    // a row below the clamp: F.normalize divides by eps there
    x[4 * k..].iter_mut().for_each(|v| *v *= 1e-8);
    let dy = randn(rows * k, 31, 1.0);
    let run = |x: &[f32]| {
        let mut y = vec![0.0; rows * k];
        sum_norm_fwd(&mut y, x, k);
        y
    };
    let y = run(&x);
    for i in 0..rows {
        let n = x[i * k..(i + 1) * k].iter().map(|v| v.abs()).sum::<f32>().max(1e-6);
        for j in 0..k {
            assert!((y[i * k + j] - x[i * k + j] / n).abs() < 1e-6);
        }
    }
    let mut dx = dy.clone();
    sum_norm_bwd(&mut dx, &x, k);
    // the clamped row is linear (y = x / eps); finite differences of the others
    check("sum_norm dx", &dx[..4 * k], &fd(&x, &|x| dot(&run(x), &dy))[..4 * k]);
    for j in 4 * k..rows * k {
        assert!((dx[j] - dy[j] / 1e-6).abs() <= 1e-3 * dx[j].abs());
    }
}

#[test]
fn swiglu_fd() {
    let n = 20;
    let a = randn(n, 11, 2.0);
    let b = randn(n, 12, 1.0);
    let dh = randn(n, 13, 1.0);
    let run = |a: &[f32], b: &[f32]| {
        let mut h = vec![0.0; n];
        swiglu_fwd(&mut h, a, b);
        h
    };
    let h = run(&a, &b);
    for i in 0..n {
        assert!((h[i] - a[i] / (1.0 + (-a[i]).exp()) * b[i]).abs() < 1e-6);
    }
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    swiglu_bwd(&mut da, &mut db, &dh, &a, &b);
    check("swiglu da", &da, &fd(&a, &|a| dot(&run(a, &b), &dh)));
    check("swiglu db", &db, &fd(&b, &|b| dot(&run(&a, b), &dh)));
}

#[test]
fn gate_is_logsigmoid_over_16_with_clamp() {
    let n = 40;
    let x = randn(n, 14, 4.0);
    let dg = randn(n, 15, 1.0);
    for clamp in [None, Some(-0.05f32)] {
        let run = |x: &[f32]| {
            let mut g = vec![0.0; n];
            gate_fwd(&mut g, x, 16.0, clamp);
            g
        };
        let g = run(&x);
        for i in 0..n {
            let e = (1.0 / (1.0 + (-(x[i] as f64)).exp())).ln() / 16.0;
            let e = clamp.map_or(e, |c| e.max(c as f64));
            assert!((g[i] as f64 - e).abs() < 1e-6 && g[i] <= 0.0);
        }
        let mut dx = vec![0.0; n];
        gate_bwd(&mut dx, &dg, &x, 16.0, clamp);
        // away from the clamp kink the derivative is smooth; compare there
        let num = fd(&x, &|x| dot(&run(x), &dg));
        let keep: Vec<usize> = (0..n).filter(|&i| clamp.is_none_or(|c| (g[i] - c).abs() > 2e-3)).collect();
        let a: Vec<f32> = keep.iter().map(|&i| dx[i]).collect();
        let b: Vec<f64> = keep.iter().map(|&i| num[i]).collect();
        check("gate dx", &a, &b);
    }
    assert!(logsigmoid(-100.0).is_finite() && (-1e-30..=0.0).contains(&logsigmoid(100.0)));
    // the vectorisable form against f64 over the whole range: relative error below 1e-6 where
    // |logsigmoid| > 1e-3, absolute below 1e-9 in the tail (x > 7), where logsigmoid ~ -exp(-x)
    // carries gla-cpu's fexp's relative error (growing to ~1e-5 at x = 87), far under anything
    // a log-gate sum can resolve
    let mut worst = 0.0f64;
    for i in -40_000..=40_000 {
        let x = i as f32 * 2.5e-3;
        let e = -(1.0 + (-(x as f64)).exp()).ln();
        let abs = (logsigmoid(x) as f64 - e).abs();
        if e.abs() > 1e-3 {
            worst = worst.max(abs / e.abs());
            assert!(abs < 1e-6 * e.abs(), "logsigmoid({x}) = {} vs {e}: relative error {:.2e}", logsigmoid(x), abs / e.abs());
        } else {
            assert!(abs < 1e-9, "logsigmoid({x}) = {} vs {e}: absolute error {abs:.2e}", logsigmoid(x));
        }
    }
    println!("logsigmoid: worst relative error {worst:.2e} on [-100, 100]");
}

#[test]
fn short_conv_matches_naive_and_fd() {
    for silu in [true, false] {
        short_conv_case(silu);
    }
}

fn short_conv_case(silu: bool) {
    let (b, t, c, w) = (2, 6, 3, 4);
    let x = randn(b * t * c, 16, 1.0);
    let wt = randn(c * w, 17, 0.7);
    let dy = randn(b * t * c, 18, 1.0);
    let run = |x: &[f32], wt: &[f32]| {
        let mut y = vec![0.0; b * t * c];
        conv_fwd(&mut y, x, wt, t, c, w, silu);
        y
    };
    let y = run(&x, &wt);
    for bi in 0..b {
        for s in 0..t {
            for ch in 0..c {
                // causal: output s sees inputs s-3..=s, weight tap W-1 on the current token
                let mut acc = 0.0;
                for lag in 0..w {
                    if s >= lag {
                        acc += wt[ch * w + (w - 1 - lag)] * x[(bi * t + s - lag) * c + ch];
                    }
                }
                let e = if silu { acc / (1.0 + (-acc).exp()) } else { acc };
                assert!((y[(bi * t + s) * c + ch] - e).abs() < 1e-6);
            }
        }
    }
    let mut dx = vec![0.0; b * t * c];
    let mut dw = vec![0.0; c * w];
    conv_bwd(&mut dx, &mut dw, &dy, &x, &wt, t, c, w, silu);
    check("conv dx", &dx, &fd(&x, &|x| dot(&run(x, &wt), &dy)));
    check("conv dw", &dw, &fd(&wt, &|wt| dot(&run(&x, wt), &dy)));
}

#[test]
fn repeat_heads_and_its_backward() {
    let (n, hkv, groups, d) = (3, 2, 3, 2);
    let x: Vec<f32> = (0..n * hkv * d).map(|i| i as f32).collect();
    let mut out = vec![0.0; n * hkv * groups * d];
    repeat_heads(&mut out, &x, hkv, groups, d);
    // head h of the output reads kv head h / groups
    for r in 0..n {
        for h in 0..hkv * groups {
            for j in 0..d {
                assert_eq!(out[(r * hkv * groups + h) * d + j], x[(r * hkv + h / groups) * d + j]);
            }
        }
    }
    let dy = randn(out.len(), 19, 1.0);
    let mut dx = vec![0.0; x.len()];
    repeat_heads_bwd(&mut dx, &dy, hkv, groups, d);
    let xf = x.clone();
    check(
        "repeat dx",
        &dx,
        &fd(&xf, &|x| {
            let mut o = vec![0.0; n * hkv * groups * d];
            repeat_heads(&mut o, x, hkv, groups, d);
            dot(&o, &dy)
        }),
    );
}

#[test]
fn cross_entropy_value_and_gradient() {
    let (m, vocab) = (4, 7);
    let logits = randn(m * vocab, 20, 2.0);
    let targets = [0u32, 6, 3, 3];
    let loss_of = |l: &[f32]| {
        let mut s = 0.0f64;
        for i in 0..m {
            let row = &l[i * vocab..(i + 1) * vocab];
            let lse = row.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            s += lse - row[targets[i] as usize] as f64;
        }
        s / m as f64
    };
    let mut g = logits.clone();
    let (sum, correct) = cross_entropy_fwd_bwd(&mut g, &targets, vocab, 1.0 / m as f32);
    assert!((sum / m as f64 - loss_of(&logits)).abs() < 1e-6);
    let best = |i: usize| (0..vocab).max_by(|&a, &b| logits[i * vocab + a].total_cmp(&logits[i * vocab + b])).unwrap();
    assert_eq!(correct, (0..m).filter(|&i| best(i) == targets[i] as usize).count());
    check("xent dlogits", &g, &fd(&logits, &loss_of));
}

#[test]
fn embedding_backward_skips_padding_row() {
    let d = 3;
    let wte = randn(5 * d, 21, 1.0);
    let ids = [1u32, 4, 1, 0];
    let mut x = vec![0.0; ids.len() * d];
    embedding_fwd(&mut x, &ids, &wte, d);
    assert_eq!(&x[3..6], &wte[12..15]);
    let dx = vec![1.0; ids.len() * d];
    let mut dw = vec![0.0; 5 * d];
    embedding_bwd(&mut dw, &dx, &ids, d, Some(0));
    assert_eq!(dw[3], 2.0);
    assert_eq!(dw[12], 1.0);
    assert_eq!(dw[0], 0.0, "padding row gets no gradient");
}

#[test]
fn linear_matches_naive_at_training_sizes() {
    // the gemm crate packs and threads only above size thresholds: check those paths too
    for (n, din, dout) in [(4096, 64, 256), (4096, 256, 64), (1000, 64, 16), (4096, 16, 64), (256, 64, 256)] {
        let x = randn(n * din, 31, 1.0);
        let w = randn(dout * din, 32, 1.0);
        let dy = randn(n * dout, 33, 1.0);
        let mut y = vec![f32::NAN; n * dout];
        linear_fwd(&mut y, &x, &w, n, din, dout);
        let mut dx = vec![f32::NAN; n * din];
        linear_bwd_x(&mut dx, &dy, &w, n, din, dout, false);
        let mut dw = vec![0.0f32; dout * din];
        linear_bwd_w(&mut dw, &dy, &x, n, din, dout);
        let mut r = gla_model::Rng::new(5);
        for _ in 0..200 {
            let (i, o) = (r.below(n), r.below(dout));
            let e: f64 = (0..din).map(|k| x[i * din + k] as f64 * w[o * din + k] as f64).sum();
            assert!((y[i * dout + o] as f64 - e).abs() < 1e-3, "y {n}x{din}x{dout}");
            let k = r.below(din);
            let e: f64 = (0..dout).map(|o| dy[i * dout + o] as f64 * w[o * din + k] as f64).sum();
            assert!((dx[i * din + k] as f64 - e).abs() < 1e-3, "dx {n}x{din}x{dout}");
            let e: f64 = (0..n).map(|i| dy[i * dout + o] as f64 * x[i * din + k] as f64).sum();
            assert!((dw[o * din + k] as f64 - e).abs() < 1e-2, "dw {n}x{din}x{dout}: {} vs {e}", dw[o * din + k]);
        }
    }
}

#[test]
fn rope_is_flas_neox_rotation_and_its_transpose() {
    // 3 rows at positions 0, 5, 1000, 2 heads of Dh = 8, theta 10000 (fla's default)
    let (heads, dh, theta) = (2usize, 8usize, 10000.0f32);
    let inv: Vec<f32> = (0..dh / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / dh as f32)).collect();
    let pos = [0usize, 5, 1000];
    let x = randn(pos.len() * heads * dh, 41, 1.0);
    let mut y = x.clone();
    rope(&mut y, &pos, heads, &inv, false);
    // the definition, in f64 from the same f32 angle: pairs (i, i + Dh/2) of each head
    for (r, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let o = (r * heads + h) * dh;
            for i in 0..dh / 2 {
                let a = (p as f32 * inv[i]) as f64;
                let (x0, x1) = (x[o + i] as f64, x[o + i + dh / 2] as f64);
                let (y0, y1) = (x0 * a.cos() - x1 * a.sin(), x0 * a.sin() + x1 * a.cos());
                assert!((y[o + i] as f64 - y0).abs() < 1e-5 && (y[o + i + dh / 2] as f64 - y1).abs() < 1e-5, "row {r} head {h} pair {i}");
            }
        }
    }
    // position 0 is the identity
    assert_eq!(&y[..heads * dh], &x[..heads * dh]);
    // the backward (conj) is the transpose: <rope(x), d> = <x, rope^T(d)>, and undoes the rotation
    let d = randn(x.len(), 42, 1.0);
    let mut dt = d.clone();
    rope(&mut dt, &pos, heads, &inv, true);
    assert!((dot(&y, &d) - dot(&x, &dt)).abs() < 1e-4 * dot(&y, &y).sqrt() * dot(&d, &d).sqrt());
    let mut back = y.clone();
    rope(&mut back, &pos, heads, &inv, true);
    assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn bias_forward_and_column_sum() {
    let mut y = vec![1.0f32; 6];
    bias_fwd(&mut y, &[0.5, -1.0, 2.0]);
    assert_eq!(y, [1.5, 0.0, 3.0, 1.5, 0.0, 3.0]);
    let mut db = vec![1.0f32; 3];
    bias_bwd(&mut db, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(db, [6.0, 8.0, 10.0]);
}
