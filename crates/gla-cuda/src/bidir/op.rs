//! [`CudaBidir`]: the GPU launchers of the bidirectional scan behind the host-slice
//! [`BidirOp`] contract (upload, run, download), for checking against the CPU oracle.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use gla_core::bidir::{BidirGrads, BidirInputs, BidirOp, BidirProblem};
use gla_core::op::first_bad;

use super::ops::{bidir_bwd, bidir_fwd, BidirDevInputs, BidirDevProblem};
use crate::dispatch::bidir::BidirAlgo;
use crate::error::Result;
use crate::ops::{self, Elem};
use crate::runtime::Cuda;

/// A [`BidirOp<f32>`] on the GPU: host f32 slices uploaded as f32 or rounded to bf16 (`bf16`),
/// forward and backward by `algo` (fused where the dispatch allows, else composed); outputs come
/// back as f32 (o carries the storage's rounding). o is poisoned with NaN before the run.
#[derive(Debug, Clone)]
pub struct CudaBidir {
    cuda: Arc<Cuda>,
    algo: BidirAlgo,
    bf16: bool,
}

impl CudaBidir {
    /// An op on `cuda` running `algo`, with bf16 or f32 storage of q, k, v, gf, gb, do.
    pub fn new(cuda: Arc<Cuda>, algo: BidirAlgo, bf16: bool) -> Self {
        Self { cuda, algo, bf16 }
    }

    fn up<T: Elem>(&self, x: &[f32], what: &'static str) -> Result<CudaSlice<T>> {
        let h: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
        self.cuda.upload(&h, what)
    }
    fn down<T: Elem>(&self, x: &CudaSlice<T>, n: usize, what: &'static str) -> Result<Vec<f32>> {
        let h = self.cuda.download(x, what)?;
        Ok(h.into_iter().take(n).map(Elem::to_f32).collect())
    }
    fn inputs<T: Elem>(&self, x: &BidirInputs<'_, f32>) -> Result<[CudaSlice<T>; 5]> {
        Ok([self.up(x.q, "q")?, self.up(x.k, "k")?, self.up(x.v, "v")?, self.up(x.gf, "gf")?, self.up(x.gb, "gb")?])
    }

    fn fwd_t<T: Elem>(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>) -> Result<Vec<f32>> {
        let dp = BidirDevProblem::new(&self.cuda, p)?;
        let [q, k, v, gf, gb] = self.inputs::<T>(x)?;
        let dx = BidirDevInputs { q: &q, k: &k, v: &v, gf: &gf, gb: &gb };
        // SAFETY: poisoned right away, before any read
        let mut o = unsafe { self.cuda.alloc_uninit::<T>(p.v_len(), "o") }?;
        ops::poison(&self.cuda, &mut o)?;
        bidir_fwd(&self.cuda, self.algo, &dp, &dx, &mut o)?;
        self.cuda.sync()?;
        self.down(&o, p.v_len(), "o")
    }

    fn bwd_t<T: Elem>(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>, d_o: &[f32]) -> Result<BidirGrads<f32>> {
        let dp = BidirDevProblem::new(&self.cuda, p)?;
        let [q, k, v, gf, gb] = self.inputs::<T>(x)?;
        let d_o = self.up::<T>(d_o, "do")?;
        let dx = BidirDevInputs { q: &q, k: &k, v: &v, gf: &gf, gb: &gb };
        let g = bidir_bwd(&self.cuda, self.algo, &dp, &dx, &d_o)?;
        self.cuda.sync()?;
        let (qk, vl) = (p.qk_len(), p.v_len());
        Ok(BidirGrads {
            dq: self.down(&g.dq, qk, "dq")?,
            dk: self.down(&g.dk, qk, "dk")?,
            dv: self.down(&g.dv, vl, "dv")?,
            dgf: self.down(&g.dgf, qk, "dgf")?,
            dgb: self.down(&g.dgb, qk, "dgb")?,
        })
    }
}

impl BidirOp<f32> for CudaBidir {
    fn name(&self) -> &'static str {
        match (self.algo, self.bf16) {
            (BidirAlgo::Fused, true) => "cuda-bidir-bf16",
            (BidirAlgo::Fused, false) => "cuda-bidir-f32",
            (BidirAlgo::Composed, true) => "cuda-bidir-composed-bf16",
            (BidirAlgo::Composed, false) => "cuda-bidir-composed-f32",
        }
    }

    fn forward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>) -> gla_core::Result<Vec<f32>> {
        x.validate(p)?;
        if p.rows() == 0 {
            return Ok(Vec::new());
        }
        Ok(if self.bf16 { self.fwd_t::<u16>(p, x) } else { self.fwd_t::<f32>(p, x) }?)
    }

    fn backward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>, d_o: &[f32]) -> gla_core::Result<BidirGrads<f32>> {
        x.validate(p)?;
        x.validate_do(p, d_o, &first_bad)?;
        if p.rows() == 0 {
            return Ok(BidirGrads { dq: Vec::new(), dk: Vec::new(), dv: Vec::new(), dgf: Vec::new(), dgb: Vec::new() });
        }
        Ok(if self.bf16 { self.bwd_t::<u16>(p, x, d_o) } else { self.bwd_t::<f32>(p, x, d_o) }?)
    }
}
