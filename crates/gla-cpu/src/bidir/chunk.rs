//! The fast CPU path of the bidirectional scan: the GLA chunked path ([`Chunked`]) once per
//! direction, by the identity of `docs/math/bidir.md`:
//!
//! ```text
//! o = gla_{s/2}(q, k, v, gf) + flip(gla_{s/2}(flip q, flip k, flip v, flip gb))
//! ```
//!
//! (`flip` reverses each sequence within itself; `s/2` is [`BidirProblem::half`], exact since
//! the factor is a power of two). The backward adds the two scans' dq, dk, dv and un-flips the
//! backward scan's gradients. The flipped copies cost one pass over the inputs, small beside the
//! chunked work; every rounding is the GLA chunked path's.

use gla_core::bidir::{flip_rows, BidirGrads, BidirInputs, BidirOp, BidirProblem};
use gla_core::op::{first_bad, GlaOp};
use gla_core::{Backward, Inputs, Result};

use crate::Chunked;

/// The GLA chunked path on both directions (`cpu-bidir-chunk`), f32.
#[derive(Debug, Clone, Copy, Default)]
pub struct BidirChunked {
    /// The GLA chunked path each direction runs on (its schedule).
    pub gla: Chunked,
}

/// The backward direction's inputs: q, k, v, gb reversed within every sequence.
struct Flipped {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    gb: Vec<f32>,
}

impl Flipped {
    fn new(p: &BidirProblem, x: &BidirInputs<'_, f32>) -> Self {
        let (kw, vw) = (p.h() * p.k(), p.h() * p.v());
        Self { q: flip_rows(p, x.q, kw), k: flip_rows(p, x.k, kw), v: flip_rows(p, x.v, vw), gb: flip_rows(p, x.gb, kw) }
    }
    fn inputs(&self) -> Inputs<'_, f32> {
        Inputs { q: &self.q, k: &self.k, v: &self.v, g: Some(&self.gb), h0: None }
    }
}

fn fwd_inputs<'a>(x: &BidirInputs<'a, f32>) -> Inputs<'a, f32> {
    Inputs { q: x.q, k: x.k, v: x.v, g: Some(x.gf), h0: None }
}

/// `a += flip(b)` over rows of `width`.
fn add_flipped(p: &BidirProblem, a: &mut [f32], b: &[f32], width: usize) {
    for (x, y) in a.iter_mut().zip(flip_rows(p, b, width)) {
        *x += y;
    }
}

impl BidirOp<f32> for BidirChunked {
    fn name(&self) -> &'static str {
        "cpu-bidir-chunk"
    }

    fn forward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>) -> Result<Vec<f32>> {
        x.validate(p)?;
        let half = p.half();
        let mut o = self.gla.forward(half, &fwd_inputs(x), false)?.o;
        let fl = Flipped::new(p, x);
        let ob = self.gla.forward(half, &fl.inputs(), false)?.o;
        add_flipped(p, &mut o, &ob, p.h() * p.v());
        Ok(o)
    }

    fn backward(&self, p: &BidirProblem, x: &BidirInputs<'_, f32>, d_o: &[f32]) -> Result<BidirGrads<f32>> {
        x.validate(p)?;
        x.validate_do(p, d_o, &first_bad)?;
        let (half, kw, vw) = (p.half(), p.h() * p.k(), p.h() * p.v());
        let f = self.gla.backward(half, &fwd_inputs(x), &Backward { d_o, dht: None })?;
        let fl = Flipped::new(p, x);
        let do_b = flip_rows(p, d_o, vw);
        let b = self.gla.backward(half, &fl.inputs(), &Backward { d_o: &do_b, dht: None })?;
        let (mut dq, mut dk, mut dv) = (f.dq, f.dk, f.dv);
        add_flipped(p, &mut dq, &b.dq, kw);
        add_flipped(p, &mut dk, &b.dk, kw);
        add_flipped(p, &mut dv, &b.dv, vw);
        let missing = || gla_core::Error::Unsupported { backend: "cpu-bidir-chunk", what: "a GLA backward without dg".into() };
        let dgf = f.dg.ok_or_else(missing)?;
        let dgb = flip_rows(p, &b.dg.ok_or_else(missing)?, kw);
        Ok(BidirGrads { dq, dk, dv, dgf, dgb })
    }
}
