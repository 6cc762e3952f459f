//! The part every CPU algorithm shares: validate, hand each (sequence, head) a view of its rows,
//! run the per-sequence math in parallel over N x H, and let it write its rows of the outputs in
//! place.
//!
//! Inputs are read in place through [`Rows`] (no gathered copy: at the benchmark shape a copy of
//! q, k, v, g costs as much as the chunked forward's matrix work). The gate is read through
//! [`SeqIn::g_row`], which expands every gate kind to K values: the per-head gate (broadcast over
//! K) and no gate (zeros: exp(0) = 1) run through the same math as GLA's per-key gate, and `dg` is
//! reduced back to the gate's shape on the way out ([`SeqSinks::write_dg`]).

use std::sync::atomic::{AtomicBool, Ordering};

use gla_core::op::{first_bad, Check};
use gla_core::{Backward, Forward, GateKind, Grads, Inputs, Problem, Real, Result};
use rayon::prelude::*;

/// The rows of one (sequence, head) inside a `[rows, H, D]` tensor.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a, T> {
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
    /// Asks the CPU to start fetching rows `t0..t0 + n` into its caches (no effect on results).
    /// The rows of one head sit `H*D` elements apart, a stride the hardware prefetchers follow
    /// poorly: at H = 4 the chunked forward waited on these loads for ~40% of its time.
    #[inline]
    pub fn prefetch(&self, t0: usize, n: usize) {
        #[cfg(target_arch = "x86_64")]
        for t in t0..t0 + n {
            let o = ((self.start + t) * self.nh + self.h) * self.d;
            if o + self.d > self.data.len() {
                break;
            }
            let row = &self.data[o..o + self.d];
            let bytes = std::mem::size_of_val(row);
            for off in (0..bytes).step_by(64) {
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

/// One (sequence, head) of the inputs.
pub(crate) struct SeqIn<'a, T> {
    /// Tokens L.
    pub l: usize,
    pub kd: usize,
    pub vd: usize,
    pub scale: T,
    /// `[L, K]`
    pub q: Rows<'a, T>,
    /// `[L, K]`
    pub k: Rows<'a, T>,
    /// `[L, V]`
    pub v: Rows<'a, T>,
    gate: GateKind,
    g: Option<Rows<'a, T>>,
    /// `[K, V]`
    pub h0: Option<&'a [T]>,
    /// Set when a value check inside the algorithm fails (see [`Validation::InLoad`]).
    bad: &'a AtomicBool,
}

impl<T: Real> SeqIn<'_, T> {
    /// The log-gate of token `t` expanded to `[K]` into `out`.
    #[inline]
    pub fn g_row(&self, t: usize, out: &mut [T]) {
        match (self.gate, &self.g) {
            (GateKind::PerKey, Some(g)) => out.copy_from_slice(g.row(t)),
            (GateKind::PerHead, Some(g)) => out.fill(g.row(t)[0]),
            _ => out.fill(T::ZERO),
        }
    }
    /// Checks values the algorithm has just copied (see [`Validation::InLoad`]).
    #[inline]
    pub fn check(&self, buf: &[T], check: Check) {
        if first_bad(buf, check).is_some() {
            self.flag_bad();
        }
    }
    /// Records that an in-algorithm value check failed (see [`Validation::InLoad`]).
    pub fn flag_bad(&self) {
        self.bad.store(true, Ordering::Relaxed);
    }
    /// Prefetches rows `t0..t0 + n` of q, k, v and g (see [`Rows::prefetch`]).
    pub fn prefetch(&self, t0: usize, n: usize) {
        let n = n.min(self.l.saturating_sub(t0));
        for r in [&self.q, &self.k, &self.v].into_iter().chain(self.g.as_ref()) {
            r.prefetch(t0, n);
        }
    }
    /// The initial state `[K, V]` as an owned buffer (zeros when absent).
    pub fn state0(&self) -> Vec<T> {
        self.h0.map_or_else(|| vec![T::ZERO; self.kd * self.vd], <[T]>::to_vec)
    }
}

/// Upstream gradients of one (sequence, head).
pub(crate) struct SeqGradIn<'a, T> {
    /// `[L, V]`
    pub d_o: Rows<'a, T>,
    /// `[K, V]`
    pub dht: Option<&'a [T]>,
}

/// A `[rows, H, D]` output written in place by parallel tasks, each owning distinct
/// (row, head) pairs. Holds a raw pointer because the rows of different heads interleave, so no
/// safe split of the slice gives each task its part.
struct Sink<T> {
    ptr: *mut T,
    len: usize,
    nh: usize,
    d: usize,
    /// write rows with streaming stores (see [`Sink::streaming`])
    stream: bool,
}

// SAFETY: a Sink is only written through `write`, whose contract makes concurrent writes touch
// disjoint elements; T: Send is enough to move values across threads.
unsafe impl<T: Send> Send for Sink<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Sink<T> {}

impl<T: Copy> Sink<T> {
    fn new(v: &mut [T], nh: usize, d: usize) -> Self {
        Self { ptr: v.as_mut_ptr(), len: v.len(), nh, d, stream: false }
    }
    /// Streaming (non-temporal) stores when `on` and every row is whole 16-byte units at
    /// 16-byte addresses: for large outputs written in blocks of rows and read much later, it
    /// saves the read of each destination line a normal store makes first. Not for outputs
    /// written a row at a time (one fence per call) or read right away (they would leave the
    /// caches).
    fn streaming(mut self, on: bool) -> Self {
        let row_bytes = self.d * std::mem::size_of::<T>();
        self.stream = on && cfg!(target_arch = "x86_64") && row_bytes.is_multiple_of(16) && (self.ptr as usize).is_multiple_of(16);
        self
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
        // the last row's end bounds every row (checked before any store, so a failing check
        // never leaves streaming stores unfenced)
        assert!(((r0 + n - 1) * self.nh + h + 1) * self.d <= self.len, "sink row out of bounds");
        let row_bytes = self.d * std::mem::size_of::<T>();
        for (i, row) in src.chunks_exact(self.d).enumerate() {
            let o = ((r0 + i) * self.nh + h) * self.d;
            if self.stream {
                // SAFETY: in bounds (checked above), 16-byte aligned (base and row size are
                // multiples of 16, `streaming`); disjointness is the caller's contract.
                unsafe { stream_copy(row.as_ptr().cast::<u8>(), self.ptr.add(o).cast::<u8>(), row_bytes) };
            } else {
                // SAFETY: in bounds (checked above); disjointness is the caller's contract.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(o), self.d) };
            }
        }
        if self.stream {
            // streaming stores are weakly ordered: make them visible before any later store
            // of this thread (the task's completion, which another thread synchronises with)
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a store fence has no preconditions
            unsafe {
                std::arch::x86_64::_mm_sfence();
            }
        }
    }
}

/// Copies `bytes` (a multiple of 16) from `src` to the 16-byte aligned `dst` with non-temporal
/// stores: the outputs are written once and read by the caller much later, so streaming them past
/// the caches saves the read of each destination line a normal store would first make (at the
/// benchmark shape, 16 MB of reads per chunked forward). The caller fences.
///
/// # Safety
/// `src` readable and `dst` writable for `bytes` bytes, `dst` 16-byte aligned, no overlap.
#[inline]
unsafe fn stream_copy(src: *const u8, dst: *mut u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        for off in (0..bytes).step_by(16) {
            // SAFETY: off + 16 <= bytes (bytes is a multiple of 16); dst + off is 16-byte aligned
            unsafe { _mm_stream_si128(dst.add(off).cast::<__m128i>(), _mm_loadu_si128(src.add(off).cast::<__m128i>())) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as the caller's contract
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, bytes)
    }
}

/// Where one (sequence, head) writes its forward output.
pub(crate) struct SeqOut<'a, T> {
    o: &'a Sink<T>,
    start: usize,
    h: usize,
}

impl<T: Copy> SeqOut<'_, T> {
    /// Writes output rows `t0..t0 + n` of this (sequence, head) from `rows [n, V]`.
    ///
    /// # Safety
    /// Concurrent calls for the same (sequence, head) must write disjoint row ranges.
    pub unsafe fn write_o(&self, t0: usize, rows: &[T]) {
        // SAFETY: each (sequence, head) has its own SeqOut; disjoint rows within it are the
        // caller's contract.
        unsafe { self.o.write(self.start + t0, self.h, rows) }
    }
}

/// Where one (sequence, head) writes its gradients.
pub(crate) struct SeqSinks<'a, T> {
    dq: &'a Sink<T>,
    dk: &'a Sink<T>,
    dv: &'a Sink<T>,
    dg: Option<&'a Sink<T>>,
    gate: GateKind,
    kd: usize,
    start: usize,
    h: usize,
}

impl<T: Real> SeqSinks<'_, T> {
    /// Writes rows `t0..` of dq, dk (`[n, K]`) and dv (`[n, V]`).
    ///
    /// # Safety
    /// Concurrent calls for the same (sequence, head) must write disjoint row ranges.
    pub unsafe fn write_qkv(&self, t0: usize, dq: &[T], dk: &[T], dv: &[T]) {
        // SAFETY: see write_o.
        unsafe {
            self.dq.write(self.start + t0, self.h, dq);
            self.dk.write(self.start + t0, self.h, dk);
            self.dv.write(self.start + t0, self.h, dv);
        }
    }
    /// Writes rows `t0..` of dg from per-key values `[n, K]`, summed over K for a per-head gate.
    ///
    /// # Safety
    /// As [`SeqSinks::write_qkv`].
    pub unsafe fn write_dg(&self, t0: usize, dg: &[T]) {
        let Some(sink) = self.dg else { return };
        match self.gate {
            // SAFETY: see write_o.
            GateKind::PerKey => unsafe { sink.write(self.start + t0, self.h, dg) },
            _ => {
                let sums: Vec<T> = dg.chunks_exact(self.kd).map(|r| r.iter().fold(T::ZERO, |a, &b| a + b)).collect();
                // SAFETY: see write_o.
                unsafe { sink.write(self.start + t0, self.h, &sums) }
            }
        }
    }
}

fn seq_in<'a, T: Real>(p: &Problem, x: &Inputs<'a, T>, n: usize, h: usize, bad: &'a AtomicBool) -> SeqIn<'a, T> {
    let (rows, nh, kv) = (p.seq(n), p.h(), p.k() * p.v());
    let width = p.gate().width(p.k());
    SeqIn {
        l: rows.len(),
        kd: p.k(),
        vd: p.v(),
        scale: T::from_f64(p.scale()),
        q: Rows::new(x.q, rows.start, nh, h, p.k()),
        k: Rows::new(x.k, rows.start, nh, h, p.k()),
        v: Rows::new(x.v, rows.start, nh, h, p.v()),
        gate: p.gate(),
        g: x.g.filter(|_| width > 0).map(|g| Rows::new(g, rows.start, nh, h, width)),
        h0: x.h0.map(|s| &s[(n * nh + h) * kv..(n * nh + h + 1) * kv]),
        bad,
    }
}

/// Where the value checks of the inputs (finite, log-gates <= 0) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validation {
    /// A parallel scan of every input before any work.
    Upfront,
    /// Inside the algorithm, on each chunk's rows right after it copies them ([`SeqIn::check`]),
    /// which saves the scan's pass over memory (~10% of the chunked forward). Shapes and the
    /// small state tensors are still checked first; if any in-loop check fails, the full scan runs
    /// and its error (the same one `Upfront` gives) is returned.
    InLoad,
}

fn validate<T: Real>(op: &'static str, p: &Problem, x: &Inputs<'_, T>, d: Option<&Backward<'_, T>>, how: Validation) -> Result<()> {
    match how {
        Validation::Upfront => {
            x.validate_with(op, p, &par_first_bad)?;
            d.map_or(Ok(()), |d| d.validate_with(op, p, &par_first_bad))
        }
        Validation::InLoad => {
            // shapes, then only the state tensors (small)
            let states_only = |t: &[T], c: Check| if t.len() == p.state_len() { par_first_bad(t, c) } else { None };
            x.validate_with(op, p, &states_only)?;
            d.map_or(Ok(()), |d| d.validate_with(op, p, &states_only))
        }
    }
}

/// After an in-loop check failed: the full scan, which names the first bad element.
fn validation_error<T: Real>(op: &'static str, p: &Problem, x: &Inputs<'_, T>, d: Option<&Backward<'_, T>>) -> Result<()> {
    validate(op, p, x, d, Validation::Upfront)
}

/// The value checks of [`Inputs::validate`], in parallel: the first bad index of `x`, in order.
fn par_first_bad<T: Real>(x: &[T], check: Check) -> Option<usize> {
    const BLOCK: usize = 1 << 16;
    x.par_chunks(BLOCK).enumerate().find_map_first(|(b, c)| first_bad(c, check).map(|i| b * BLOCK + i))
}

/// Outputs start as NaN so that anything left unwritten fails every test. Filled in parallel:
/// at the benchmark shape a single-threaded fill of `o` is ~5% of the chunked forward.
fn poisoned<T: Real>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::from_f64(f64::NAN), len));
    v
}

/// Runs a per-(sequence, head) forward over the whole problem. `f` writes every output row
/// through its [`SeqOut`] and returns the final state `[K, V]`.
pub(crate) fn forward<T: Real>(
    op: &'static str,
    p: &Problem,
    x: &Inputs<'_, T>,
    output_final_state: bool,
    how: Validation,
    f: impl Fn(&SeqIn<'_, T>, &SeqOut<'_, T>) -> Vec<T> + Sync,
) -> Result<Forward<T>> {
    forward_grouped(op, p, x, output_final_state, how, 1, false, |xs, os| xs.iter().zip(os).map(|(x, o)| f(x, o)).collect())
}

/// As [`forward`], with each task taking `group` consecutive heads of one sequence (`group`
/// divides H): `f` gets their views and sinks in head order and returns their final states in
/// the same order. Lets an algorithm walk several heads in lockstep, so that it reads rows of
/// adjacent heads, which sit next to each other in memory, close together in time. `stream`:
/// write `o` with streaming stores (for outputs too large to stay cached; see [`Sink`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_grouped<T: Real>(
    op: &'static str,
    p: &Problem,
    x: &Inputs<'_, T>,
    output_final_state: bool,
    how: Validation,
    group: usize,
    stream: bool,
    f: impl Fn(&[SeqIn<'_, T>], &[SeqOut<'_, T>]) -> Vec<Vec<T>> + Sync,
) -> Result<Forward<T>> {
    validate(op, p, x, None, how)?;
    let bad = AtomicBool::new(false);
    let (nh, kv) = (p.h(), p.k() * p.v());
    let group = if group > 0 && nh.is_multiple_of(group) { group } else { 1 };
    let mut o = poisoned(p.v_len());
    let sink = Sink::new(&mut o, nh, p.v()).streaming(stream);
    let states: Vec<Vec<Vec<T>>> = (0..p.n() * nh / group)
        .into_par_iter()
        .map(|i| {
            let (n, h0) = (i / (nh / group), (i % (nh / group)) * group);
            let xs: Vec<SeqIn<'_, T>> = (h0..h0 + group).map(|h| seq_in(p, x, n, h, &bad)).collect();
            let os: Vec<SeqOut<'_, T>> = (h0..h0 + group).map(|h| SeqOut { o: &sink, start: p.seq(n).start, h }).collect();
            f(&xs, &os)
        })
        .collect();
    if bad.load(Ordering::Relaxed) {
        validation_error(op, p, x, None)?;
    }
    let ht = output_final_state.then(|| states.concat().concat());
    debug_assert!(ht.as_ref().is_none_or(|s| s.len() == p.n() * nh * kv));
    Ok(Forward { o, ht })
}

/// Runs a per-(sequence, head) backward over the whole problem. `f` writes every gradient row
/// through its [`SeqSinks`] and returns `dh0 [K, V]`.
pub(crate) fn backward<T: Real>(
    op: &'static str,
    p: &Problem,
    x: &Inputs<'_, T>,
    d: &Backward<'_, T>,
    how: Validation,
    f: impl Fn(&SeqIn<'_, T>, &SeqGradIn<'_, T>, &SeqSinks<'_, T>) -> Vec<T> + Sync,
) -> Result<Grads<T>> {
    validate(op, p, x, Some(d), how)?;
    let bad = AtomicBool::new(false);
    let (nh, kd, vd, kv) = (p.h(), p.k(), p.v(), p.k() * p.v());
    let (mut dq, mut dk, mut dv) = (poisoned(p.qk_len()), poisoned(p.qk_len()), poisoned(p.v_len()));
    let mut dg = (p.gate() != GateKind::None).then(|| poisoned(p.g_len()));
    let (sq, sk, sv) = (Sink::new(&mut dq, nh, kd), Sink::new(&mut dk, nh, kd), Sink::new(&mut dv, nh, vd));
    let sg = dg.as_mut().map(|g| Sink::new(g, nh, p.gate().width(kd)));
    let dh0: Vec<Vec<T>> = (0..p.n() * nh)
        .into_par_iter()
        .map(|i| {
            let (n, h) = (i / nh, i % nh);
            let start = p.seq(n).start;
            let gin = SeqGradIn { d_o: Rows::new(d.d_o, start, nh, h, vd), dht: d.dht.map(|s| &s[i * kv..(i + 1) * kv]) };
            let sinks = SeqSinks { dq: &sq, dk: &sk, dv: &sv, dg: sg.as_ref(), gate: p.gate(), kd, start, h };
            f(&seq_in(p, x, n, h, &bad), &gin, &sinks)
        })
        .collect();
    if bad.load(Ordering::Relaxed) {
        validation_error(op, p, x, Some(d))?;
    }
    let dh0 = x.h0.map(|_| dh0.concat());
    Ok(Grads { dq, dk, dv, dg, dh0 })
}
