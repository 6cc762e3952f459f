//! [`CudaGla`]: the GPU kernels behind the host-slice [`GlaOp`] contract (upload, run, download),
//! for checking against the CPU oracle and for callers without device buffers.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use gla_core::op::GlaOp;
use gla_core::{Backward, Forward, GateKind, Grads, Inputs, Problem};

use crate::error::Result;
use crate::ops::{self, DevInputs, DevProblem, Elem, FwdKernel};
use crate::runtime::Cuda;

/// Which GPU algorithm a [`CudaGla`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Fused recurrent forward and backward (`gla/recurrent.cu`).
    Recurrent,
    /// Chunked forward; backward chunked for bf16 where `ops::chunk_bwd_supported` (K <= 128 with
    /// V <= 128, or K, V <= 256; `gla/chunk_*.cu`), else the recurrent kernels (same
    /// result, different speed).
    Chunked,
}

/// A [`GlaOp<f32>`] on the GPU. Host f32 slices are uploaded as f32 or rounded to bf16
/// (`bf16 = true`); outputs come back as f32 (o is stored in the input dtype on the device, so in
/// bf16 mode it carries bf16 rounding). Every output buffer is poisoned with NaN before the run.
#[derive(Debug, Clone)]
pub struct CudaGla {
    cuda: Arc<Cuda>,
    algo: Algo,
    bf16: bool,
}

impl CudaGla {
    /// An op on `cuda` running `algo`, with bf16 or f32 storage of q, k, v, g, do.
    pub fn new(cuda: Arc<Cuda>, algo: Algo, bf16: bool) -> Self {
        Self { cuda, algo, bf16 }
    }
    /// The device handle.
    pub fn cuda(&self) -> &Arc<Cuda> {
        &self.cuda
    }

    fn up<T: Elem>(&self, x: &[f32], what: &'static str) -> Result<CudaSlice<T>> {
        let h: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
        self.cuda.upload(&h, what)
    }
    fn down<T: Elem>(&self, x: &CudaSlice<T>, what: &'static str) -> Result<Vec<f32>> {
        let h = self.cuda.download(x, what)?;
        Ok(h.into_iter().map(Elem::to_f32).collect())
    }
    fn poisoned<T: Elem>(&self, len: usize, what: &'static str) -> Result<CudaSlice<T>> {
        // SAFETY: poisoned right away, before any read
        let mut b = unsafe { self.cuda.alloc_uninit::<T>(len, what) }?;
        ops::poison(&self.cuda, &mut b)?;
        Ok(b)
    }

    fn fwd_t<T: Elem>(&self, p: &Problem, x: &Inputs<'_, f32>, want_ht: bool) -> Result<Forward<f32>> {
        let dp = DevProblem::new(&self.cuda, p)?;
        let (q, k, v) = (self.up::<T>(x.q, "q")?, self.up::<T>(x.k, "k")?, self.up::<T>(x.v, "v")?);
        let g = x.g.map(|g| self.up::<T>(g, "g")).transpose()?;
        let h0 = x.h0.map(|h| self.up::<f32>(h, "h0")).transpose()?;
        let dx = DevInputs { q: &q, k: &k, v: &v, g: g.as_ref(), h0: h0.as_ref() };
        let mut o = self.poisoned::<T>(p.v_len(), "o")?;
        let mut ht = self.poisoned::<f32>(p.state_len(), "ht")?;
        let which = match self.algo {
            Algo::Recurrent => FwdKernel::Recurrent,
            Algo::Chunked => FwdKernel::Chunk,
        };
        ops::gla_fwd(&self.cuda, which, &dp, &dx, &mut o, Some(&mut ht))?;
        self.cuda.sync()?;
        Ok(Forward { o: self.down(&o, "o")?, ht: if want_ht { Some(self.down(&ht, "ht")?) } else { None } })
    }

    fn bwd_t<T: Elem>(&self, p: &Problem, x: &Inputs<'_, f32>, d: &Backward<'_, f32>) -> Result<Grads<f32>> {
        let dp = DevProblem::new(&self.cuda, p)?;
        let (q, k, v) = (self.up::<T>(x.q, "q")?, self.up::<T>(x.k, "k")?, self.up::<T>(x.v, "v")?);
        let g = x.g.map(|g| self.up::<T>(g, "g")).transpose()?;
        let h0 = x.h0.map(|h| self.up::<f32>(h, "h0")).transpose()?;
        let d_o = self.up::<T>(d.d_o, "do")?;
        let dht = d.dht.map(|h| self.up::<f32>(h, "dht")).transpose()?;
        let dx = DevInputs { q: &q, k: &k, v: &v, g: g.as_ref(), h0: h0.as_ref() };
        let gr = if self.algo == Algo::Chunked && ops::chunk_bwd_supported::<T>(p) {
            ops::gla_bwd_chunk(&self.cuda, &dp, &dx, &d_o, dht.as_ref(), true)?
        } else {
            ops::gla_bwd(&self.cuda, &dp, &dx, &d_o, dht.as_ref())?
        };
        self.cuda.sync()?;
        Ok(Grads {
            dq: self.down(&gr.dq, "dq")?,
            dk: self.down(&gr.dk, "dk")?,
            dv: self.down(&gr.dv, "dv")?,
            dg: if x.g.is_some() { Some(self.down(&gr.dg, "dg")?) } else { None },
            dh0: if x.h0.is_some() { Some(self.down(&gr.dh0, "dh0")?) } else { None },
        })
    }
}

impl GlaOp<f32> for CudaGla {
    fn name(&self) -> &'static str {
        match (self.algo, self.bf16) {
            (Algo::Recurrent, false) => "cuda-recurrent-f32",
            (Algo::Recurrent, true) => "cuda-recurrent-bf16",
            (Algo::Chunked, false) => "cuda-chunk-f32",
            (Algo::Chunked, true) => "cuda-chunk-bf16",
        }
    }

    fn forward(&self, p: &Problem, x: &Inputs<'_, f32>, output_final_state: bool) -> gla_core::Result<Forward<f32>> {
        x.validate(GlaOp::<f32>::name(self), p)?;
        if p.rows() == 0 {
            // nothing to launch: o is empty, the final state is the initial one (as the oracle)
            let ht = output_final_state.then(|| x.h0.map_or_else(|| vec![0.0; p.state_len()], <[f32]>::to_vec));
            return Ok(Forward { o: Vec::new(), ht });
        }
        let r = if self.bf16 { self.fwd_t::<u16>(p, x, output_final_state) } else { self.fwd_t::<f32>(p, x, output_final_state) };
        Ok(r?)
    }

    fn backward(&self, p: &Problem, x: &Inputs<'_, f32>, d: &Backward<'_, f32>) -> gla_core::Result<Grads<f32>> {
        x.validate(GlaOp::<f32>::name(self), p)?;
        d.validate(GlaOp::<f32>::name(self), p)?;
        if p.rows() == 0 {
            // nothing to launch: empty gradients, d h0 is d ht (as the oracle)
            let dh0 = x.h0.map(|_| d.dht.map_or_else(|| vec![0.0; p.state_len()], <[f32]>::to_vec));
            let dg = (p.gate() != GateKind::None).then(Vec::new);
            return Ok(Grads { dq: Vec::new(), dk: Vec::new(), dv: Vec::new(), dg, dh0 });
        }
        let r = if self.bf16 { self.bwd_t::<u16>(p, x, d) } else { self.bwd_t::<f32>(p, x, d) };
        Ok(r?)
    }
}
