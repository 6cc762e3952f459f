//! The tiled flash-style attention path (f32): online softmax over key blocks, never holding a
//! `T x T` score matrix; the backward recomputes `P` block by block from the forward's `lse`.
//!
//! Parallel over (sequence, head, query block) for the forward and dq; dk and dv are owned by
//! (sequence, kv head, key block) tasks that sum over the group's query heads and the query rows
//! in a fixed order, so results do not depend on the thread count or scheduling.

use super::{axpy, dot};
use gla_core::{AttnForward, AttnGrads, AttnInputs, AttnOp, AttnProblem, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Query and key block size (flash attention's usual 64).
pub const BLOCK: usize = 64;

/// The tiled path; f32 inputs, f32 accumulation.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnTiled;

/// The query positions (relative to the sequence start) that may attend some key in
/// `keys` of a sequence of `len` tokens: the transpose of [`AttnProblem::keys`] over a block.
fn queries(p: &AttnProblem, keys: &Range<usize>, len: usize) -> Range<usize> {
    if !p.causal() {
        return 0..len;
    }
    let hi = p.window().map_or(len, |w| (keys.end - 1 + w).min(len));
    keys.start..hi
}

/// The key span of query block `qs` (union of its rows' masks).
fn key_span(p: &AttnProblem, qs: &Range<usize>, len: usize) -> Range<usize> {
    p.keys(qs.start, len).start..p.keys(qs.end - 1, len).end
}

/// Tasks `(sequence, head, block range)` for `heads` heads, in a fixed order.
fn tasks(p: &AttnProblem, heads: usize) -> Vec<(usize, usize, Range<usize>)> {
    let mut out = Vec::new();
    for n in 0..p.n() {
        let len = p.seq(n).len();
        for j in 0..heads {
            for b0 in (0..len).step_by(BLOCK) {
                out.push((n, j, b0..(b0 + BLOCK).min(len)));
            }
        }
    }
    out
}

/// One row's scaled scores against a key block, masked entries at `-inf`.
fn scores(p: &AttnProblem, x: &AttnInputs<'_, f32>, seq: &Range<usize>, i: usize, j: usize, ks: &Range<usize>, out: &mut [f32]) {
    let (start, len) = (seq.start, seq.len());
    let (d, hk, g, scale) = (p.d(), p.h_kv(), p.kv_head(j), p.scale() as f32);
    let qi = &x.q[((start + i) * p.h() + j) * d..][..d];
    let allowed = p.keys(i, len);
    for (s, o) in ks.clone().zip(out.iter_mut()) {
        *o = if allowed.contains(&s) { scale * dot(qi, &x.k[((start + s) * hk + g) * d..][..d]) } else { f32::NEG_INFINITY };
    }
}

impl AttnOp<f32> for AttnTiled {
    fn name(&self) -> &'static str {
        "cpu-attn-tiled"
    }

    /// Per query row, over key blocks: `m' = max(m, max_s S_s)`, `l' = l e^{m-m'} + sum_s
    /// e^{S_s-m'}`, `acc' = acc e^{m-m'} + sum_s e^{S_s-m'} v_s`; finally `o = acc / l`,
    /// `lse = m + ln l`.
    fn forward(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>) -> Result<AttnForward<f32>> {
        x.validate(p)?;
        let (h, dv, hk) = (p.h(), p.dv(), p.h_kv());
        let blocks: Vec<_> = tasks(p, h)
            .into_par_iter()
            .map(|(n, j, qs)| {
                let seq = p.seq(n);
                let (start, len) = (seq.start, seq.len());
                let g = p.kv_head(j);
                let rows = qs.len();
                let (mut m, mut l) = (vec![f32::NEG_INFINITY; rows], vec![0f32; rows]);
                let mut acc = vec![0f32; rows * dv];
                let mut s = [0f32; BLOCK];
                let span = key_span(p, &qs, len);
                for k0 in span.clone().step_by(BLOCK) {
                    let ks = k0..(k0 + BLOCK).min(span.end);
                    for (r, i) in qs.clone().enumerate() {
                        let s = &mut s[..ks.len()];
                        scores(p, x, &seq, i, j, &ks, s);
                        let mb = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        if mb == f32::NEG_INFINITY {
                            continue; // this row sees nothing of the block
                        }
                        let mn = m[r].max(mb);
                        let alpha = (m[r] - mn).exp(); // 0 on the first visited block
                        let a = &mut acc[r * dv..][..dv];
                        a.iter_mut().for_each(|v| *v *= alpha);
                        l[r] *= alpha;
                        for (sv, kk) in s.iter().zip(ks.clone()) {
                            if *sv != f32::NEG_INFINITY {
                                let e = (sv - mn).exp();
                                l[r] += e;
                                axpy(a, e, &x.v[((start + kk) * hk + g) * dv..][..dv]);
                            }
                        }
                        m[r] = mn;
                    }
                }
                for r in 0..rows {
                    acc[r * dv..][..dv].iter_mut().for_each(|v| *v /= l[r]);
                    m[r] += l[r].ln();
                }
                (n, j, qs, acc, m)
            })
            .collect();
        let mut o = vec![0f32; p.o_len()];
        let mut lse = vec![0f32; p.lse_len()];
        for (n, j, qs, acc, lb) in blocks {
            for (r, i) in qs.enumerate() {
                let row = (p.seq(n).start + i) * h + j;
                o[row * dv..][..dv].copy_from_slice(&acc[r * dv..][..dv]);
                lse[row] = lb[r];
            }
        }
        Ok(AttnForward { o, lse })
    }

    /// `D_i = dO_i . O_i`; per block `P = exp(S - lse)`, `dP = dO V^T`, `dS = P (dP - D)`;
    /// `dQ += scale dS K` (query-block tasks), `dK += scale dS^T Q`, `dV += P^T dO` (key-block
    /// tasks, summing the group's heads in order).
    fn backward(&self, p: &AttnProblem, x: &AttnInputs<'_, f32>, fwd: &AttnForward<f32>, d_o: &[f32]) -> Result<AttnGrads<f32>> {
        x.validate(p)?;
        fwd.validate_backward(p, d_o)?;
        let (h, d, dv, hk, scale) = (p.h(), p.d(), p.dv(), p.h_kv(), p.scale() as f32);
        let big_d: Vec<f32> = (0..p.lse_len()).map(|r| dot(&d_o[r * dv..][..dv], &fwd.o[r * dv..][..dv])).collect();
        // One row's dS against a key block, with P: (P, dS) into the two buffers.
        let ds_row = |seq: &Range<usize>, i: usize, j: usize, ks: &Range<usize>, pb: &mut [f32], ds: &mut [f32]| {
            scores(p, x, seq, i, j, ks, pb);
            let start = seq.start;
            let row = (start + i) * h + j;
            let doi = &d_o[row * dv..][..dv];
            let g = p.kv_head(j);
            for ((pv, dsv), s) in pb.iter_mut().zip(ds.iter_mut()).zip(ks.clone()) {
                *pv = (*pv - fwd.lse[row]).exp(); // exp(-inf) = 0 off the mask
                *dsv = if *pv == 0.0 { 0.0 } else { *pv * (dot(doi, &x.v[((start + s) * hk + g) * dv..][..dv]) - big_d[row]) * scale };
            }
        };
        let dq_blocks: Vec<_> = tasks(p, h)
            .into_par_iter()
            .map(|(n, j, qs)| {
                let seq = p.seq(n);
                let (start, len, g) = (seq.start, seq.len(), p.kv_head(j));
                let mut dq = vec![0f32; qs.len() * d];
                let (mut pb, mut ds) = ([0f32; BLOCK], [0f32; BLOCK]);
                let span = key_span(p, &qs, len);
                for k0 in span.clone().step_by(BLOCK) {
                    let ks = k0..(k0 + BLOCK).min(span.end);
                    for (r, i) in qs.clone().enumerate() {
                        ds_row(&seq, i, j, &ks, &mut pb[..ks.len()], &mut ds[..ks.len()]);
                        for (&dsv, s) in ds.iter().zip(ks.clone()) {
                            axpy(&mut dq[r * d..][..d], dsv, &x.k[((start + s) * hk + g) * d..][..d]);
                        }
                    }
                }
                (n, j, qs, dq)
            })
            .collect();
        let kv_blocks: Vec<_> = tasks(p, hk)
            .into_par_iter()
            .map(|(n, g, ks)| {
                let seq = p.seq(n);
                let (start, len) = (seq.start, seq.len());
                let (mut dk, mut dvb) = (vec![0f32; ks.len() * d], vec![0f32; ks.len() * dv]);
                let (mut pb, mut ds) = ([0f32; BLOCK], [0f32; BLOCK]);
                for j in g * p.group()..(g + 1) * p.group() {
                    for i in queries(p, &ks, len) {
                        ds_row(&seq, i, j, &ks, &mut pb[..ks.len()], &mut ds[..ks.len()]);
                        let row = (start + i) * h + j;
                        for (c, (&pv, &dsv)) in pb.iter().zip(&ds).take(ks.len()).enumerate() {
                            axpy(&mut dk[c * d..][..d], dsv, &x.q[row * d..][..d]);
                            axpy(&mut dvb[c * dv..][..dv], pv, &d_o[row * dv..][..dv]);
                        }
                    }
                }
                (n, g, ks, dk, dvb)
            })
            .collect();
        let (mut dq, mut dk, mut dvv) = (vec![0f32; p.q_len()], vec![0f32; p.k_len()], vec![0f32; p.v_len()]);
        for (n, j, qs, b) in dq_blocks {
            for (r, i) in qs.enumerate() {
                dq[((p.seq(n).start + i) * h + j) * d..][..d].copy_from_slice(&b[r * d..][..d]);
            }
        }
        for (n, g, ks, bk, bv) in kv_blocks {
            for (c, s) in ks.enumerate() {
                let row = (p.seq(n).start + s) * hk + g;
                dk[row * d..][..d].copy_from_slice(&bk[c * d..][..d]);
                dvv[row * dv..][..dv].copy_from_slice(&bv[c * dv..][..dv]);
            }
        }
        Ok(AttnGrads { dq, dk, dv: dvv })
    }
}
