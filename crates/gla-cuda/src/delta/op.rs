//! [`CudaDelta`]: the delta-rule kernels behind the host-slice [`DeltaOp`] contract (upload, run,
//! download), for checking against the CPU oracle and for callers without device buffers.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr};
use gla_core::delta::DeltaOp;
use gla_core::{Backward, DeltaGate, DeltaGrads, DeltaInputs, DeltaProblem, DeltaSpec, Forward};

use super::ops::{self, DeltaDevInputs, DevDeltaProblem};
use crate::dispatch::delta::DeltaAlgo;
use crate::error::Result;
use crate::ops::{poison, Elem};
use crate::runtime::Cuda;

/// Which GPU algorithm a [`CudaDelta`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaOpAlgo {
    /// The fused recurrent forward and backward.
    Recurrent,
    /// Chunked where [`crate::dispatch::delta::delta_path`] takes the shape, else recurrent.
    Chunked,
    /// The forward as decode steps: one `delta_rec_decode_*` launch per time step over a table
    /// of per-sequence device states updated in place (no backward).
    Decode,
}

/// A [`DeltaOp<f32>`] on the GPU. Host f32 slices are uploaded as f32 or rounded to bf16
/// (`bf16 = true`: q, k, v, beta, g and do; `A_log`, `dt_bias` and the states stay f32); outputs
/// come back as f32 (o is stored in the input dtype). Every output buffer is poisoned with NaN
/// before the run.
#[derive(Debug, Clone)]
pub struct CudaDelta {
    cuda: Arc<Cuda>,
    algo: DeltaOpAlgo,
    bf16: bool,
    /// bf16 chunked: the backward recomputes the forward's intermediates (the language model's
    /// flow) instead of reusing a forward's workspace.
    recompute: bool,
}

struct Up<T> {
    q: CudaSlice<T>,
    k: CudaSlice<T>,
    v: CudaSlice<T>,
    beta: CudaSlice<T>,
    g: Option<CudaSlice<T>>,
    a_log: Option<CudaSlice<f32>>,
    dt_bias: Option<CudaSlice<f32>>,
    h0: Option<CudaSlice<f32>>,
}

impl<T> Up<T> {
    fn dev(&self) -> DeltaDevInputs<'_, T> {
        DeltaDevInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            beta: &self.beta,
            g: self.g.as_ref(),
            a_log: self.a_log.as_ref(),
            dt_bias: self.dt_bias.as_ref(),
            h0: self.h0.as_ref(),
        }
    }
}

impl CudaDelta {
    /// An op on `cuda` running `algo`, with bf16 or f32 storage.
    pub fn new(cuda: Arc<Cuda>, algo: DeltaOpAlgo, bf16: bool) -> Self {
        Self { cuda, algo, bf16, recompute: false }
    }
    /// The same op whose bf16 chunked backward recomputes the forward's intermediates (as the
    /// language model's backward does) instead of running the forward on its workspace first;
    /// the other algorithms and storages always recompute.
    pub fn recomputing(self) -> Self {
        Self { recompute: true, ..self }
    }
    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        &self.cuda
    }

    fn up<T: Elem>(&self, x: &[f32], what: &'static str) -> Result<CudaSlice<T>> {
        let h: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
        self.cuda.upload(&h, what)
    }
    fn down<T: Elem>(&self, x: &CudaSlice<T>, n: usize, what: &'static str) -> Result<Vec<f32>> {
        let h = self.cuda.download(x, what)?;
        Ok(h.into_iter().take(n).map(Elem::to_f32).collect())
    }
    fn poisoned<T: Elem>(&self, len: usize, what: &'static str) -> Result<CudaSlice<T>> {
        // SAFETY: poisoned right away, before any read
        let mut b = unsafe { self.cuda.alloc_uninit::<T>(len.max(1), what) }?;
        poison(&self.cuda, &mut b)?;
        Ok(b)
    }
    fn upload<T: Elem>(&self, x: &DeltaInputs<'_, f32>) -> Result<Up<T>> {
        let f32s = |x: Option<&[f32]>, w: &'static str| x.filter(|s| !s.is_empty()).map(|s| self.cuda.upload(s, w)).transpose();
        Ok(Up {
            q: self.up(x.q, "q")?,
            k: self.up(x.k, "k")?,
            v: self.up(x.v, "v")?,
            beta: self.up(x.beta, "beta")?,
            g: x.g.map(|g| self.up(g, "g")).transpose()?,
            a_log: f32s(x.a_log, "A_log")?,
            dt_bias: f32s(x.dt_bias, "dt_bias")?,
            h0: f32s(x.h0, "h0")?,
        })
    }
    fn algo(&self) -> DeltaAlgo {
        if self.algo == DeltaOpAlgo::Chunked {
            DeltaAlgo::Chunked
        } else {
            DeltaAlgo::Recurrent
        }
    }

    fn fwd_t<T: Elem>(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, want_ht: bool) -> Result<Forward<f32>> {
        if self.algo == DeltaOpAlgo::Decode {
            return self.decode_t::<T>(p, x, want_ht);
        }
        let dp = DevDeltaProblem::new(&self.cuda, p)?;
        let u = self.upload::<T>(x)?;
        let mut o = self.poisoned::<T>(p.v_len(), "o")?;
        let mut ht = self.poisoned::<f32>(p.state_len(), "ht")?;
        ops::delta_fwd(&self.cuda, self.algo(), &dp, &u.dev(), &mut o, Some(&mut ht))?;
        self.cuda.sync()?;
        Ok(Forward { o: self.down(&o, p.v_len(), "o")?, ht: if want_ht { Some(self.down(&ht, p.state_len(), "ht")?) } else { None } })
    }

    /// The forward as decode steps: step s runs the s-th token of every sequence still running,
    /// packed one row per sequence, against a table of the sequences' device states.
    fn decode_t<T: Elem>(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, want_ht: bool) -> Result<Forward<f32>> {
        let (h, hv, k, v) = (p.h(), p.hv(), p.k(), p.v());
        let per = hv * k * v;
        let mut states = Vec::with_capacity(p.n());
        for n in 0..p.n() {
            let init = x.h0.map_or_else(|| vec![0.0f32; per], |h0| h0[n * per..(n + 1) * per].to_vec());
            states.push(self.cuda.upload(&init, "decode state")?);
        }
        let addr: Vec<u64> = states.iter().map(|s| s.device_ptr(self.cuda.stream()).0).collect();
        let mut o = vec![f32::NAN; p.v_len()];
        let longest = (0..p.n()).map(|n| p.seq(n).len()).max().unwrap_or(0);
        for s in 0..longest {
            let live: Vec<usize> = (0..p.n()).filter(|&n| s < p.seq(n).len()).collect();
            let rows: Vec<usize> = live.iter().map(|&n| p.seq(n).start + s).collect();
            let gather =
                |src: &[f32], w: usize| -> Vec<f32> { rows.iter().flat_map(|&r| src[r * w..(r + 1) * w].iter().copied()).collect() };
            let mut spec = DeltaSpec::new(live.len(), 1, h, k, v, p.gate());
            spec.hv = hv;
            spec.scale = Some(p.scale());
            (spec.l2_qk, spec.beta_sigmoid, spec.allow_neg_eigval) = (p.l2_qk(), p.beta_sigmoid(), p.allow_neg_eigval());
            let sp = DeltaProblem::new(spec)?;
            let (q, kk, vv, b) = (gather(x.q, h * k), gather(x.k, h * k), gather(x.v, hv * v), gather(x.beta, hv));
            let g = x.g.map(|g| gather(g, hv));
            let xs = DeltaInputs { q: &q, k: &kk, v: &vv, beta: &b, g: g.as_deref(), a_log: x.a_log, dt_bias: x.dt_bias, h0: None };
            let u = self.upload::<T>(&xs)?;
            let dp = DevDeltaProblem::new(&self.cuda, &sp)?;
            let table: Vec<u64> = live.iter().map(|&n| addr[n]).collect();
            let table = self.cuda.upload(&table, "decode state table")?;
            let mut os = self.poisoned::<T>(sp.v_len(), "o")?;
            let tab = table.device_ptr(self.cuda.stream()).0;
            // SAFETY: the table holds the addresses of `live.len()` distinct live state buffers of
            // HV*K*V f32 each (`states`, alive until the end of this function); nothing else
            // touches them during the step (one stream)
            unsafe { ops::delta_decode(&self.cuda, &dp, &u.dev(), tab, live.len(), &mut os)? };
            let got = self.down(&os, sp.v_len(), "o")?;
            for (i, &r) in rows.iter().enumerate() {
                o[r * hv * v..(r + 1) * hv * v].copy_from_slice(&got[i * hv * v..(i + 1) * hv * v]);
            }
        }
        self.cuda.sync()?;
        let ht = if want_ht {
            let mut all = Vec::with_capacity(p.state_len());
            for s in &states {
                all.extend(self.down(s, per, "decode state")?);
            }
            Some(all)
        } else {
            None
        };
        Ok(Forward { o, ht })
    }

    fn bwd_t<T: Elem>(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, d: &Backward<'_, f32>) -> Result<DeltaGrads<f32>> {
        let dp = DevDeltaProblem::new(&self.cuda, p)?;
        let u = self.upload::<T>(x)?;
        let d_o = self.up::<T>(d.d_o, "do")?;
        let dht = d.dht.map(|h| self.cuda.upload(h, "dht")).transpose()?;
        // bf16 chunked: the forward then the backward on one workspace (the training pattern: the
        // backward reuses the forward's intermediates) unless `recompute`; else the standalone
        // backward (which recomputes them, as the language model's does)
        let g = if self.bf16 && self.algo == DeltaOpAlgo::Chunked && !self.recompute {
            let mut ws = ops::DeltaWorkspace::<T>::for_problem(&self.cuda, &dp, self.algo(), true, true)?;
            let mut o = self.poisoned::<T>(p.v_len(), "o")?;
            ops::delta_fwd_ws(&self.cuda, self.algo(), &dp, &u.dev(), &mut ws, &mut o, None)?;
            let mut g = ops::DeltaDevGrads::alloc(&self.cuda, p, x.h0.is_some())?;
            ops::delta_bwd_ws(&self.cuda, self.algo(), &dp, &u.dev(), &d_o, dht.as_ref(), &mut ws, true, g.as_out(x.h0.is_some()))?;
            g
        } else {
            ops::delta_bwd(&self.cuda, self.algo(), &dp, &u.dev(), &d_o, dht.as_ref())?
        };
        self.cuda.sync()?;
        let computed = p.gate() == DeltaGate::Computed;
        Ok(DeltaGrads {
            dq: self.down(&g.dq, p.qk_len(), "dq")?,
            dk: self.down(&g.dk, p.qk_len(), "dk")?,
            dv: self.down(&g.dv, p.v_len(), "dv")?,
            dbeta: self.down(&g.dbeta, p.beta_len(), "dbeta")?,
            dg: if p.gate() != DeltaGate::None { Some(self.down(&g.dg, p.g_len(), "dg")?) } else { None },
            da_log: if computed { Some(self.down(&g.da_log, p.hv(), "dA_log")?) } else { None },
            ddt_bias: if computed { Some(self.down(&g.ddt_bias, p.hv(), "ddt_bias")?) } else { None },
            dh0: if x.h0.is_some() { Some(self.down(&g.dh0, p.state_len(), "dh0")?) } else { None },
        })
    }
}

impl DeltaOp<f32> for CudaDelta {
    fn name(&self) -> &'static str {
        match (self.algo, self.bf16) {
            (DeltaOpAlgo::Recurrent, false) => "cuda-delta-recurrent-f32",
            (DeltaOpAlgo::Recurrent, true) => "cuda-delta-recurrent-bf16",
            (DeltaOpAlgo::Chunked, false) => "cuda-delta-chunk-f32",
            (DeltaOpAlgo::Chunked, true) if self.recompute => "cuda-delta-chunk-bf16-recompute",
            (DeltaOpAlgo::Chunked, true) => "cuda-delta-chunk-bf16",
            (DeltaOpAlgo::Decode, false) => "cuda-delta-decode-f32",
            (DeltaOpAlgo::Decode, true) => "cuda-delta-decode-bf16",
        }
    }

    fn forward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, output_final_state: bool) -> gla_core::Result<Forward<f32>> {
        x.validate(DeltaOp::<f32>::name(self), p)?;
        if p.rows() == 0 {
            // nothing to launch: o is empty, the final state is the initial one (as the oracle)
            let ht = output_final_state.then(|| x.h0.map_or_else(|| vec![0.0; p.state_len()], <[f32]>::to_vec));
            return Ok(Forward { o: Vec::new(), ht });
        }
        let r = if self.bf16 { self.fwd_t::<u16>(p, x, output_final_state) } else { self.fwd_t::<f32>(p, x, output_final_state) };
        Ok(r?)
    }

    fn backward(&self, p: &DeltaProblem, x: &DeltaInputs<'_, f32>, d: &Backward<'_, f32>) -> gla_core::Result<DeltaGrads<f32>> {
        let name = DeltaOp::<f32>::name(self);
        x.validate(name, p)?;
        d.validate_delta(name, p)?;
        if self.algo == DeltaOpAlgo::Decode {
            return Err(gla_core::Error::Unsupported { backend: "cuda", what: "the decode step has no backward".into() });
        }
        if p.rows() == 0 {
            // nothing to launch: empty gradients, d h0 is d ht (as the oracle)
            let dh0 = x.h0.map(|_| d.dht.map_or_else(|| vec![0.0; p.state_len()], <[f32]>::to_vec));
            let computed = p.gate() == DeltaGate::Computed;
            return Ok(DeltaGrads {
                dq: Vec::new(),
                dk: Vec::new(),
                dv: Vec::new(),
                dbeta: Vec::new(),
                dg: (p.gate() != DeltaGate::None).then(Vec::new),
                da_log: computed.then(|| vec![0.0; p.hv()]),
                ddt_bias: computed.then(|| vec![0.0; p.hv()]),
                dh0,
            });
        }
        let r = if self.bf16 { self.bwd_t::<u16>(p, x, d) } else { self.bwd_t::<f32>(p, x, d) };
        Ok(r?)
    }
}
