//! The part every CPU algorithm shares: validate, gather one (sequence, head) into contiguous
//! `[L, D]` buffers, run the per-sequence math in parallel over N x H, scatter the results.
//!
//! Gathering costs one copy of the inputs and makes every algorithm's inner code work on plain
//! row-major `[L, K]` / `[L, V]` / `[K, V]` slices. The gate is expanded to `[L, K]` here, so the
//! per-head gate (broadcast over K) and no gate (all zeros: exp(0) = 1) run through the same math
//! as GLA's per-key gate; `dg` is reduced back to the gate's shape on the way out.

use gla_core::{Backward, Forward, GateKind, Grads, Inputs, Problem, Real, Result};
use rayon::prelude::*;

/// One (sequence, head) slice of the inputs, contiguous.
pub(crate) struct SeqIn<T> {
    /// Tokens L.
    pub l: usize,
    pub kd: usize,
    pub vd: usize,
    pub scale: T,
    /// `[L, K]`
    pub q: Vec<T>,
    /// `[L, K]`
    pub k: Vec<T>,
    /// `[L, V]`
    pub v: Vec<T>,
    /// `[L, K]`, expanded from any gate kind
    pub g: Vec<T>,
    /// `[K, V]`
    pub h0: Option<Vec<T>>,
}

/// Upstream gradients of one (sequence, head).
pub(crate) struct SeqGradIn<T> {
    /// `[L, V]`
    pub d_o: Vec<T>,
    /// `[K, V]`
    pub dht: Option<Vec<T>>,
}

/// Per-(sequence, head) forward result.
pub(crate) struct SeqOut<T> {
    /// `[L, V]`
    pub o: Vec<T>,
    /// `[K, V]`
    pub ht: Vec<T>,
}

/// Per-(sequence, head) gradients.
pub(crate) struct SeqGrads<T> {
    /// `[L, K]`
    pub dq: Vec<T>,
    /// `[L, K]`
    pub dk: Vec<T>,
    /// `[L, V]`
    pub dv: Vec<T>,
    /// `[L, K]` (per-key; reduced to the gate's shape by the driver)
    pub dg: Vec<T>,
    /// `[K, V]`
    pub dh0: Vec<T>,
}

fn gather<T: Copy>(x: &[T], rows: std::ops::Range<usize>, h: usize, nh: usize, d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for r in rows {
        let o = (r * nh + h) * d;
        out.extend_from_slice(&x[o..o + d]);
    }
    out
}

fn scatter<T: Copy>(dst: &mut [T], src: &[T], rows: std::ops::Range<usize>, h: usize, nh: usize, d: usize) {
    for (i, r) in rows.enumerate() {
        let o = (r * nh + h) * d;
        dst[o..o + d].copy_from_slice(&src[i * d..(i + 1) * d]);
    }
}

fn gather_gate<T: Real>(p: &Problem, g: Option<&[T]>, rows: std::ops::Range<usize>, h: usize) -> Vec<T> {
    let (nh, kd) = (p.h(), p.k());
    match (p.gate(), g) {
        (GateKind::PerKey, Some(g)) => gather(g, rows, h, nh, kd),
        (GateKind::PerHead, Some(g)) => {
            let mut out = Vec::with_capacity(rows.len() * kd);
            for r in rows {
                out.extend(std::iter::repeat_n(g[r * nh + h], kd));
            }
            out
        }
        _ => vec![T::ZERO; rows.len() * kd],
    }
}

fn state_slice<T: Copy>(p: &Problem, s: Option<&[T]>, n: usize, h: usize) -> Option<Vec<T>> {
    let kv = p.k() * p.v();
    s.map(|s| s[(n * p.h() + h) * kv..(n * p.h() + h + 1) * kv].to_vec())
}

fn seq_in<T: Real>(p: &Problem, x: &Inputs<'_, T>, n: usize, h: usize) -> SeqIn<T> {
    let rows = p.seq(n);
    SeqIn {
        l: rows.len(),
        kd: p.k(),
        vd: p.v(),
        scale: T::from_f64(p.scale()),
        q: gather(x.q, rows.clone(), h, p.h(), p.k()),
        k: gather(x.k, rows.clone(), h, p.h(), p.k()),
        v: gather(x.v, rows.clone(), h, p.h(), p.v()),
        g: gather_gate(p, x.g, rows, h),
        h0: state_slice(p, x.h0, n, h),
    }
}

/// Outputs start as NaN so that anything left unwritten fails every test.
fn poisoned<T: Real>(len: usize) -> Vec<T> {
    vec![T::from_f64(f64::NAN); len]
}

/// Runs a per-(sequence, head) forward over the whole problem.
pub(crate) fn forward<T: Real>(
    op: &'static str,
    p: &Problem,
    x: &Inputs<'_, T>,
    output_final_state: bool,
    f: impl Fn(&SeqIn<T>) -> SeqOut<T> + Sync,
) -> Result<Forward<T>> {
    x.validate(op, p)?;
    let (nh, kv) = (p.h(), p.k() * p.v());
    let parts: Vec<SeqOut<T>> = (0..p.n() * nh).into_par_iter().map(|i| f(&seq_in(p, x, i / nh, i % nh))).collect();
    let mut o = poisoned(p.v_len());
    let mut ht = output_final_state.then(|| poisoned(p.state_len()));
    for (i, part) in parts.iter().enumerate() {
        scatter(&mut o, &part.o, p.seq(i / nh), i % nh, nh, p.v());
        if let Some(ht) = ht.as_mut() {
            ht[i * kv..(i + 1) * kv].copy_from_slice(&part.ht);
        }
    }
    Ok(Forward { o, ht })
}

/// Runs a per-(sequence, head) backward over the whole problem.
pub(crate) fn backward<T: Real>(
    op: &'static str,
    p: &Problem,
    x: &Inputs<'_, T>,
    d: &Backward<'_, T>,
    f: impl Fn(&SeqIn<T>, &SeqGradIn<T>) -> SeqGrads<T> + Sync,
) -> Result<Grads<T>> {
    x.validate(op, p)?;
    d.validate(op, p)?;
    let (nh, kd, vd, kv) = (p.h(), p.k(), p.v(), p.k() * p.v());
    let parts: Vec<SeqGrads<T>> = (0..p.n() * nh)
        .into_par_iter()
        .map(|i| {
            let (n, h) = (i / nh, i % nh);
            let gin = SeqGradIn { d_o: gather(d.d_o, p.seq(n), h, nh, vd), dht: state_slice(p, d.dht, n, h) };
            f(&seq_in(p, x, n, h), &gin)
        })
        .collect();
    let mut dq = poisoned(p.qk_len());
    let mut dk = poisoned(p.qk_len());
    let mut dv = poisoned(p.v_len());
    let mut dg = (p.gate() != GateKind::None).then(|| poisoned(p.g_len()));
    let mut dh0 = x.h0.map(|_| poisoned(p.state_len()));
    for (i, part) in parts.iter().enumerate() {
        let (n, h) = (i / nh, i % nh);
        let rows = p.seq(n);
        scatter(&mut dq, &part.dq, rows.clone(), h, nh, kd);
        scatter(&mut dk, &part.dk, rows.clone(), h, nh, kd);
        scatter(&mut dv, &part.dv, rows.clone(), h, nh, vd);
        match (p.gate(), dg.as_mut()) {
            (GateKind::PerKey, Some(dg)) => scatter(dg, &part.dg, rows, h, nh, kd),
            (GateKind::PerHead, Some(dg)) => {
                for (j, r) in rows.enumerate() {
                    let mut s = T::ZERO;
                    for &x in &part.dg[j * kd..(j + 1) * kd] {
                        s += x;
                    }
                    dg[r * nh + h] = s;
                }
            }
            _ => {}
        }
        if let Some(dh0) = dh0.as_mut() {
            dh0[i * kv..(i + 1) * kv].copy_from_slice(&part.dh0);
        }
    }
    Ok(Grads { dq, dk, dv, dg, dh0 })
}
