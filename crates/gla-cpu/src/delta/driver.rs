//! The part the fast delta-rule paths share: validate (in parallel), run the elementwise maps
//! ([`super::prep`]), hand each (sequence, value head) a view of its rows, run the per-head math in
//! parallel over N x HV, let it write its rows of the outputs in place, and map the gradients back
//! through the maps.
//!
//! Value head `j` reads the rows of query/key head `i = j / (HV / H)`. Its dq and dk rows go to a
//! `[rows, HV, K]` buffer (no two tasks write the same element) that is summed over each head's
//! value heads at the end (the buffer is the result itself when HV = H).

use gla_core::op::{first_bad, Check};
use gla_core::{Backward, DeltaGrads, DeltaInputs, DeltaProblem, Forward, Real, Result};
use rayon::prelude::*;

use super::prep::{self, Prepared};

/// The rows of one head inside a `[rows, NH, D]` tensor (D = 1 for beta and g).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a, T> {
    data: &'a [T],
    start: usize,
    nh: usize,
    h: usize,
    d: usize,
}

impl<'a, T: Copy> Rows<'a, T> {
    fn new(data: &'a [T], start: usize, nh: usize, h: usize, d: usize) -> Self {
        Self { data, start, nh, h, d }
    }
    /// Row `t` (relative to the sequence start), `[D]`.
    #[inline]
    pub fn row(&self, t: usize) -> &'a [T] {
        let o = ((self.start + t) * self.nh + self.h) * self.d;
        &self.data[o..o + self.d]
    }
    /// The single value of row `t` (D = 1).
    #[inline]
    pub fn at(&self, t: usize) -> T {
        self.data[(self.start + t) * self.nh + self.h]
    }
    /// Asks the CPU to start fetching rows `t0..t0 + n` into its caches (no effect on results):
    /// the rows of one head sit `NH*D` elements apart, a stride the hardware prefetchers follow
    /// poorly (as for the GLA paths, `crate::driver`).
    #[inline]
    pub fn prefetch(&self, t0: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        for t in t0..t0 + n {
            let o = ((self.start + t) * self.nh + self.h) * self.d;
            if o + self.d > self.data.len() {
                break;
            }
            let row = &self.data[o..o + self.d];
            for off in (0..std::mem::size_of_val(row)).step_by(64) {
                // SAFETY: the address lies inside `row` (off < its size in bytes); a prefetch
                // never faults and changes no memory.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(row.as_ptr().cast::<i8>().add(off));
                }
            }
        }
    }
    /// Copies rows `t0..t0 + n` into `out [n, D]`.
    pub fn copy_to(&self, t0: usize, out: &mut [T]) {
        for (i, dst) in out.chunks_exact_mut(self.d).enumerate() {
            dst.copy_from_slice(self.row(t0 + i));
        }
    }
}

/// One (sequence, value head) of the prepared inputs.
pub(super) struct Head<'a, T> {
    /// Tokens L of the sequence.
    pub l: usize,
    /// Key dim K.
    pub kd: usize,
    /// Value dim V.
    pub vd: usize,
    /// `scale * l2norm(q)` rows `[L, K]` (of the query/key head).
    pub q: Rows<'a, T>,
    /// `l2norm(k)` rows `[L, K]`.
    pub k: Rows<'a, T>,
    /// `[L, V]`
    pub v: Rows<'a, T>,
    /// beta in its final range, `[L]`.
    pub beta: Rows<'a, T>,
    /// The log-decay `[L]` (zeros without a gate).
    pub g: Rows<'a, T>,
    /// `[K, V]`
    pub h0: Option<&'a [T]>,
}

impl<T: Real> Head<'_, T> {
    /// Prefetches rows `t0..t0 + n` of q, k and v (see [`Rows::prefetch`]).
    pub fn prefetch(&self, t0: usize, n: usize) {
        let n = n.min(self.l.saturating_sub(t0));
        for r in [&self.q, &self.k, &self.v] {
            r.prefetch(t0, n);
        }
    }
    /// The initial state `[K, V]` as an owned buffer (zeros when absent).
    pub fn state0(&self) -> Vec<T> {
        self.h0.map_or_else(|| vec![T::ZERO; self.kd * self.vd], <[T]>::to_vec)
    }
}

/// The view of (sequence `n`, value head `j`): prepared q, k, beta, g from `pre`, `v [rows, HV, V]`,
/// and its slice of the initial states `h0 [N, HV, K, V]` when given.
pub(super) fn head<'a, T: Real>(
    p: &DeltaProblem,
    pre: &'a Prepared<T>,
    v: &'a [T],
    h0: Option<&'a [T]>,
    n: usize,
    j: usize,
) -> Head<'a, T> {
    let (rows, kv) = (p.seq(n), p.k() * p.v());
    let i = p.qk_head(j);
    Head {
        l: rows.len(),
        kd: p.k(),
        vd: p.v(),
        q: Rows::new(&pre.q, rows.start, p.h(), i, p.k()),
        k: Rows::new(&pre.k, rows.start, p.h(), i, p.k()),
        v: Rows::new(v, rows.start, p.hv(), j, p.v()),
        beta: Rows::new(&pre.beta, rows.start, p.hv(), j, 1),
        g: Rows::new(&pre.g, rows.start, p.hv(), j, 1),
        h0: h0.map(|s| &s[(n * p.hv() + j) * kv..(n * p.hv() + j + 1) * kv]),
    }
}

/// A `[rows, NH, D]` output written in place by parallel tasks, each owning distinct
/// (row, head) pairs. Holds a raw pointer because the rows of different heads interleave, so no
/// safe split of the slice gives each task its part.
struct Sink<T> {
    ptr: *mut T,
    len: usize,
    nh: usize,
    d: usize,
}

// SAFETY: a Sink is only written through `write`, whose contract makes concurrent writes touch
// disjoint elements; T: Send is enough to move values across threads.
unsafe impl<T: Send> Send for Sink<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Sink<T> {}

impl<T: Copy> Sink<T> {
    fn new(v: &mut [T], nh: usize, d: usize) -> Self {
        Self { ptr: v.as_mut_ptr(), len: v.len(), nh, d }
    }
    /// Writes `src [n, D]` to rows `r0..r0 + n` of head `h`.
    ///
    /// # Safety
    /// No other thread may write or read the same (row, head) elements during the call, and the
    /// buffer the sink was made from must be alive and not otherwise borrowed.
    unsafe fn write(&self, r0: usize, h: usize, src: &[T]) {
        let n = src.len() / self.d;
        if n == 0 {
            return;
        }
        assert!(((r0 + n - 1) * self.nh + h + 1) * self.d <= self.len, "sink row out of bounds");
        for (i, row) in src.chunks_exact(self.d).enumerate() {
            let o = ((r0 + i) * self.nh + h) * self.d;
            // SAFETY: in bounds (checked above); disjointness is the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(o), self.d) };
        }
    }
}

/// Where one (sequence, value head) writes its forward output.
pub(super) struct HeadOut<'a, T> {
    o: &'a Sink<T>,
    start: usize,
    j: usize,
}

impl<T: Copy> HeadOut<'_, T> {
    /// Writes output rows `t0..t0 + n` of this head from `rows [n, V]`.
    ///
    /// # Safety
    /// Concurrent calls for the same head must write disjoint row ranges.
    pub unsafe fn write_o(&self, t0: usize, rows: &[T]) {
        // SAFETY: each (sequence, value head) has its own HeadOut; disjoint rows within it are
        // the caller's contract.
        unsafe { self.o.write(self.start + t0, self.j, rows) }
    }
}

/// Where one (sequence, value head) writes its gradients (at the prepared q, k, beta, g).
pub(super) struct HeadGrads<'a, T> {
    dq: &'a Sink<T>,
    dk: &'a Sink<T>,
    dv: &'a Sink<T>,
    dbeta: &'a Sink<T>,
    dg: &'a Sink<T>,
    start: usize,
    j: usize,
}

impl<T: Copy> HeadGrads<'_, T> {
    /// Writes rows `t0..` of dq, dk (`[n, K]`), dv (`[n, V]`), dbeta and dg (`[n]`).
    ///
    /// # Safety
    /// Concurrent calls for the same head must write disjoint row ranges.
    pub unsafe fn write(&self, t0: usize, dq: &[T], dk: &[T], dv: &[T], dbeta: &[T], dg: &[T]) {
        let r0 = self.start + t0;
        // SAFETY: each (sequence, value head) has its own HeadGrads and its own head index in
        // every sink (dq and dk are per value head here); disjoint rows are the caller's contract.
        unsafe {
            self.dq.write(r0, self.j, dq);
            self.dk.write(r0, self.j, dk);
            self.dv.write(r0, self.j, dv);
            self.dbeta.write(r0, self.j, dbeta);
            self.dg.write(r0, self.j, dg);
        }
    }
}

/// The first bad index of `x` under `check`, scanned in parallel blocks (in order).
fn par_first_bad<T: Real>(x: &[T], check: Check) -> Option<usize> {
    const BLOCK: usize = 1 << 16;
    x.par_chunks(BLOCK).enumerate().find_map_first(|(b, c)| first_bad(c, check).map(|i| b * BLOCK + i))
}

/// Outputs start as NaN so that anything left unwritten fails every test.
fn poisoned<T: Real>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::from_f64(f64::NAN), len));
    v
}

/// Validates `x` (shapes and values, scans in parallel) and applies the elementwise maps.
///
/// # Errors
/// As [`DeltaInputs::validate`].
pub(super) fn prepare<T: Real>(op: &'static str, p: &DeltaProblem, x: &DeltaInputs<'_, T>) -> Result<Prepared<T>> {
    x.validate_with(op, p, &par_first_bad)?;
    Ok(prep::forward(p, x))
}

/// Runs a per-(sequence, value head) forward over the whole problem, parallel over N x HV. `f`
/// writes every output row of its head through its [`HeadOut`] and returns the final state
/// `[K, V]`.
pub(super) fn forward<T: Real>(
    op: &'static str,
    p: &DeltaProblem,
    x: &DeltaInputs<'_, T>,
    output_final_state: bool,
    f: impl Fn(&Head<'_, T>, &HeadOut<'_, T>) -> Vec<T> + Sync,
) -> Result<Forward<T>> {
    let pre = prepare(op, p, x)?;
    let hv = p.hv();
    let mut o = poisoned(p.v_len());
    let sink = Sink::new(&mut o, hv, p.v());
    let states: Vec<Vec<T>> = (0..p.n() * hv)
        .into_par_iter()
        .map(|i| {
            let (n, j) = (i / hv, i % hv);
            f(&head(p, &pre, x.v, x.h0, n, j), &HeadOut { o: &sink, start: p.seq(n).start, j })
        })
        .collect();
    Ok(Forward { o, ht: output_final_state.then(|| states.concat()) })
}

/// Runs a per-(sequence, value head) backward over the whole problem, parallel over N x HV. `f`
/// gets the head, its rows of `do [L, V]`, its `dht [K, V]`, writes the gradients at the
/// prepared inputs of every row through its [`HeadGrads`] and returns `dh0 [K, V]`. The
/// gradients are then summed over value heads (dq, dk) and mapped back through
/// [`prep::backward`].
pub(super) fn backward<T: Real>(
    op: &'static str,
    p: &DeltaProblem,
    x: &DeltaInputs<'_, T>,
    d: &Backward<'_, T>,
    f: impl Fn(&Head<'_, T>, Rows<'_, T>, Option<&[T]>, &HeadGrads<'_, T>) -> Vec<T> + Sync,
) -> Result<DeltaGrads<T>> {
    let pre = prepare(op, p, x)?;
    d.validate_delta(op, p)?;
    let (hv, kd, vd, kv) = (p.hv(), p.k(), p.v(), p.k() * p.v());
    let (mut dq, mut dk) = (poisoned(p.rows() * hv * kd), poisoned(p.rows() * hv * kd));
    let (mut dv, mut dbeta, mut dg) = (poisoned(p.v_len()), poisoned(p.beta_len()), poisoned(p.beta_len()));
    let (sq, sk, sv) = (Sink::new(&mut dq, hv, kd), Sink::new(&mut dk, hv, kd), Sink::new(&mut dv, hv, vd));
    let (sb, sg) = (Sink::new(&mut dbeta, hv, 1), Sink::new(&mut dg, hv, 1));
    let dh0: Vec<Vec<T>> = (0..p.n() * hv)
        .into_par_iter()
        .map(|i| {
            let (n, j) = (i / hv, i % hv);
            let start = p.seq(n).start;
            let d_o = Rows::new(d.d_o, start, hv, j, vd);
            let dht = d.dht.map(|s| &s[i * kv..(i + 1) * kv]);
            let sinks = HeadGrads { dq: &sq, dk: &sk, dv: &sv, dbeta: &sb, dg: &sg, start, j };
            f(&head(p, &pre, x.v, x.h0, n, j), d_o, dht, &sinks)
        })
        .collect();
    let (dq, dk) = (sum_groups(p, dq), sum_groups(p, dk));
    Ok(prep::backward(p, x, &pre, &dq, &dk, dv, &dbeta, &dg, x.h0.map(|_| dh0.concat())))
}

/// `[rows, HV, K]` summed over the value heads of each query/key head: `[rows, H, K]`.
fn sum_groups<T: Real>(p: &DeltaProblem, x: Vec<T>) -> Vec<T> {
    let (group, kd) = (p.group(), p.k());
    if group == 1 {
        return x;
    }
    let mut out = vec![T::ZERO; p.qk_len()];
    out.par_chunks_mut(kd).zip(x.par_chunks(group * kd)).for_each(|(o, src)| {
        for part in src.chunks_exact(kd) {
            o.iter_mut().zip(part).for_each(|(o, &s)| *o += s);
        }
    });
    out
}
