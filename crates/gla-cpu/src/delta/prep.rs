//! The elementwise maps inside the delta-rule op and their backward: q and k L2-normalised (q
//! then scaled), beta through `s * sigmoid`, the log-decay computed from `A_log`, `dt_bias`
//! (contract: [`gla_core::delta`]). Computed in f64 whatever the storage type: these maps are a
//! negligible part of the work and the oracle wants them exact. The per-row maps run in parallel
//! over rows (rayon); each row's arithmetic is the same on any thread.

use gla_core::delta::{DeltaGate, L2_EPS, SOFTPLUS_THRESHOLD};
use gla_core::{DeltaGrads, DeltaInputs, DeltaProblem, Real};
use rayon::prelude::*;

/// The op's inputs after the elementwise maps: what the recurrence reads.
#[derive(Debug, Clone)]
pub struct Prepared<T> {
    /// `scale * l2norm(q)` (or `scale * q`), `[rows, H, K]`.
    pub q: Vec<T>,
    /// `l2norm(k)` (or `k`), `[rows, H, K]`.
    pub k: Vec<T>,
    /// beta in its final range, `[rows, HV]`.
    pub beta: Vec<T>,
    /// The log-decay `[rows, HV]` (zeros without a gate).
    pub g: Vec<T>,
    /// `1 / sqrt(sum q^2 + eps)` per (row, head), with the L2 norm.
    q_rstd: Vec<f64>,
    /// As `q_rstd`, for k.
    k_rstd: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// PyTorch's softplus with threshold 20 (and its derivative).
fn softplus(x: f64) -> (f64, f64) {
    if x > SOFTPLUS_THRESHOLD {
        (x, 1.0)
    } else {
        ((-x.abs()).exp().ln_1p() + x.max(0.0), sigmoid(x))
    }
}

fn l2_rows<T: Real>(x: &[T], d: usize, scale: f64, on: bool) -> (Vec<T>, Vec<f64>) {
    // rows in parallel (each row's arithmetic is the same on any thread)
    let mut out = vec![T::ZERO; x.len()];
    let mut rstd = vec![1.0f64; if on { x.len() / d } else { 0 }];
    let apply = |o: &mut [T], row: &[T], r: f64| o.iter_mut().zip(row).for_each(|(o, v)| *o = T::from_f64(v.to_f64() * r * scale));
    if on {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).zip(rstd.par_iter_mut()).for_each(|((o, row), r)| {
            let ss = sum_sq(row);
            *r = 1.0 / (ss + L2_EPS).sqrt();
            apply(o, row, *r);
        });
    } else {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(o, row)| apply(o, row, 1.0));
    }
    (out, rstd)
}

/// `sum x^2` in f64, in 4 lanes (lane `i % 4`) added up at the end so that it vectorises.
fn sum_sq<T: Real>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; 4];
    let whole = x.len() / 4 * 4;
    for c in x[..whole].chunks_exact(4) {
        for l in 0..4 {
            let v = c[l].to_f64();
            acc[l] += v * v;
        }
    }
    for (l, v) in x[whole..].iter().enumerate() {
        acc[l] += v.to_f64() * v.to_f64();
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// `dx` of `y = scale * x * r(x)` from `dy` (r = 1 / |x| with the epsilon, or 1 when off).
fn l2_rows_bwd<T: Real>(x: &[T], dy: &[T], d: usize, scale: f64, rstd: &[f64]) -> Vec<T> {
    if rstd.is_empty() {
        return dy.par_iter().map(|v| T::from_f64(v.to_f64() * scale)).collect();
    }
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(d).zip(x.par_chunks(d)).zip(dy.par_chunks(d)).zip(rstd.par_iter()).for_each(|(((o, row), drow), &r)| {
        // y = x r: dx = r (dy - y (y . dy)), here with dy scaled
        let dot: f64 = row.iter().zip(drow).map(|(a, b)| a.to_f64() * r * b.to_f64()).sum();
        o.iter_mut().zip(row.iter().zip(drow)).for_each(|(o, (a, b))| *o = T::from_f64(scale * r * (b.to_f64() - a.to_f64() * r * dot)));
    });
    out
}

/// Applies the elementwise maps of `p` to validated inputs.
pub fn forward<T: Real>(p: &DeltaProblem, x: &DeltaInputs<'_, T>) -> Prepared<T> {
    let (q, q_rstd) = l2_rows(x.q, p.k(), p.scale(), p.l2_qk());
    let (k, k_rstd) = l2_rows(x.k, p.k(), 1.0, p.l2_qk());
    let beta =
        if p.beta_sigmoid() { x.beta.iter().map(|b| T::from_f64(p.beta_scale() * sigmoid(b.to_f64()))).collect() } else { x.beta.to_vec() };
    let hv = p.hv();
    let g = match (p.gate(), x.g) {
        (DeltaGate::LogDecay, Some(g)) => g.to_vec(),
        (DeltaGate::Computed, Some(a)) => {
            let (a_log, dt) = (x.a_log.unwrap_or(&[]), x.dt_bias.unwrap_or(&[]));
            a.iter()
                .enumerate()
                .map(|(i, a)| {
                    let j = i % hv;
                    T::from_f64(-a_log[j].to_f64().exp() * softplus(a.to_f64() + dt[j].to_f64()).0)
                })
                .collect()
        }
        _ => vec![T::ZERO; p.beta_len()],
    };
    Prepared { q, k, beta, g, q_rstd, k_rstd }
}

/// Maps the recurrence's gradients (at [`Prepared`]'s q, k, beta, g) back to the op's inputs.
/// `dg` is the log-decay's gradient `[rows, HV]` (ignored without a gate).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    p: &DeltaProblem,
    x: &DeltaInputs<'_, T>,
    pre: &Prepared<T>,
    dq: &[T],
    dk: &[T],
    dv: Vec<T>,
    dbeta: &[T],
    dg: &[T],
    dh0: Option<Vec<T>>,
) -> DeltaGrads<T> {
    let dq = l2_rows_bwd(x.q, dq, p.k(), p.scale(), &pre.q_rstd);
    let dk = l2_rows_bwd(x.k, dk, p.k(), 1.0, &pre.k_rstd);
    let dbeta = if p.beta_sigmoid() {
        x.beta
            .iter()
            .zip(dbeta)
            .map(|(b, d)| {
                let s = sigmoid(b.to_f64());
                T::from_f64(d.to_f64() * p.beta_scale() * s * (1.0 - s))
            })
            .collect()
    } else {
        dbeta.to_vec()
    };
    let hv = p.hv();
    let (dg, da_log, ddt_bias) = match (p.gate(), x.g) {
        (DeltaGate::LogDecay, Some(_)) => (Some(dg.to_vec()), None, None),
        (DeltaGate::Computed, Some(a)) => {
            let (a_log, dt) = (x.a_log.unwrap_or(&[]), x.dt_bias.unwrap_or(&[]));
            let (mut da_log, mut ddt) = (vec![0.0f64; hv], vec![0.0f64; hv]);
            let da = a
                .iter()
                .zip(dg)
                .enumerate()
                .map(|(i, (a, d))| {
                    let j = i % hv;
                    let e = a_log[j].to_f64().exp();
                    let (sp, dsp) = softplus(a.to_f64() + dt[j].to_f64());
                    let d = d.to_f64();
                    // g = -e sp: dg/dA_log = g, dg/da = dg/ddt_bias = -e sp'
                    da_log[j] += d * -e * sp;
                    let da = d * -e * dsp;
                    ddt[j] += da;
                    T::from_f64(da)
                })
                .collect();
            let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
            (Some(da), Some(cast(da_log)), Some(cast(ddt)))
        }
        _ => (None, None, None),
    };
    DeltaGrads { dq, dk, dv, dbeta, dg, da_log, ddt_bias, dh0 }
}
