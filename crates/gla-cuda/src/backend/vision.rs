//! The vision ops on the GPU (gla-core's `VisionOps`, the ViG model's): the kernels of
//! `kernels/nn/vision.cu` around the backend's bf16 GEMMs (the patch convolutions are im2col +
//! `linear_fwd_f32`). dtypes as the trait's: `Act` bf16, `F32` f32, parameters read from the f32
//! masters, parameter gradients accumulated through column-reduction partials and
//! `col_finalize` (deterministic, no atomics).
//!
//! The trait's methods take no batch plan, so the partial sums of the reductions, the labels and
//! the per-row losses of the cross-entropy live in the backend's [`VisionScratch`], grown to the
//! largest call (allocations happen on the first step of a batch shape only).

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use gla_core::backend::{Cols, Conv2d, ParamId, VisionOps};
use gla_core::bidir::{BidirProblem, BidirSpec};
use gla_core::dims::GlaDims;

use super::{col_gy, cols, flat, launch, rows_warp, unsupported, Gpu, GpuPlan};
use crate::bidir::ops::{bidir_bwd_ws, bidir_fwd_ws, BidirDevGradsMut, BidirDevInputs, BidirDevProblem, BidirWorkspace};
use crate::bidir::BidirAlgo;
use crate::error::{Error, Result};
use crate::ops::f32_to_bf16;

/// The bidirectional scan of one batch shape: its problem (`(B, T, H, K, V)` = `key`) and the
/// op's workspace: the forward's buffers at the first forward, the backward's added at the first
/// backward (a forward-only plan never holds them).
pub(crate) struct BidirPlan {
    key: (usize, usize, usize, usize, usize),
    prob: BidirDevProblem,
    ws: BidirWorkspace<u16>,
}

/// Device buffers the vision ops reuse across calls (see the module doc), each grown on demand.
#[derive(Default)]
pub(crate) struct VisionScratch {
    part: Option<CudaSlice<f32>>,
    labels: Option<CudaSlice<u32>>,
    loss: Option<CudaSlice<f32>>,
    correct: Option<CudaSlice<i32>>,
}

/// Pixels per row block of the depthwise conv's weight gradient (`dwconv3_bwd_dw`: 9 sums per
/// channel over every pixel, 8 row lanes per block): a quarter of the column reductions' (`col_gy`)
/// rows, since each pixel costs 9 taps and the launch has only C / 32 column blocks.
const DWCONV_DW_ROWS: usize = 128;

/// Row blocks of `dwconv3_bwd_dw` over `n` pixels (each writes one row of partial sums).
fn dwconv_dw_gy(n: usize) -> usize {
    n.div_ceil(DWCONV_DW_ROWS).clamp(1, 1024)
}

/// `slot`, reallocated (zeroed) when shorter than `len`.
fn grown<'a, T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, slot: &'a mut Option<CudaSlice<T>>, len: usize) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|s| s.len() < len) {
        *slot = Some(gpu.z(len)?);
    }
    slot.as_mut().ok_or_else(|| unsupported("vision scratch".into()))
}

/// The output size of `g`, or a typed error (as the CPU's).
fn conv_out(g: &Conv2d) -> Result<(usize, usize)> {
    g.out_hw().ok_or_else(|| {
        Error::Op(gla_core::Error::BadArg {
            key: "image size",
            reason: format!("a {}x{} input is smaller than the {}x{} kernel (padding {}, stride {})", g.h, g.w, g.k, g.k, g.pad, g.stride),
        })
    })
}

/// A buffer shorter than a call needs: a caller's error, refused before any launch.
fn short<T>(what: &str, have: usize, need: usize) -> Result<T> {
    Err(unsupported(format!("vision op: {what} holds {have} elements, the call needs {need}")))
}

pub(super) fn need<T>(what: &str, buf: &CudaSlice<T>, len: usize) -> Result<()> {
    if buf.len() < len {
        return short(what, buf.len(), len);
    }
    Ok(())
}

impl Gpu {
    /// The partial sums buffer for `len` elements (under the scratch lock: the launches that
    /// write and read it are queued while it is held, on the one stream).
    fn with_part<R>(&self, len: usize, f: impl FnOnce(u64) -> Result<R>) -> Result<R> {
        let mut s = self.vision.lock().map_err(|_| unsupported("vision scratch lock poisoned".into()))?;
        let part = self.p(grown(self, &mut s.part, len)?);
        f(part)
    }

    /// Launches one of the `cols_*` kernels for `c`.
    fn cols_launch(&self, name: &'static str, dst: u64, src: u64, c: &Cols) -> Result<()> {
        let total = c.b * c.t * c.width;
        if total == 0 {
            return Ok(());
        }
        let (nb, t, w) = (c.b as i64, c.t as i64, c.width as i32);
        let (sw, so, dw, doff) = (c.src.0 as i32, c.src.1 as i32, c.dst.0 as i32, c.dst.1 as i32);
        let (fl, acc, sc) = (i32::from(c.flip), i32::from(c.acc), c.scale);
        // SAFETY: cols_* (kernels/nn/vision.cu): dst, src hold b*t rows of their widths (checked
        // by the callers)
        unsafe { self.cuda.launch(name, flat(total).config(&self.cuda), &[&dst, &src, &nb, &t, &w, &sw, &so, &dw, &doff, &fl, &acc, &sc]) }
    }
}

impl Gpu {
    /// The bidirectional plan of `plan` for `b` sequences of `t` tokens at `md`'s heads (made,
    /// or remade for other dims, under its lock).
    fn bidir_plan<'a>(
        &self,
        plan: &'a GpuPlan,
        md: &GlaDims,
        b: usize,
        t: usize,
    ) -> Result<std::sync::MutexGuard<'a, Option<Box<BidirPlan>>>> {
        let mut g = plan.bidir.lock().map_err(|_| unsupported("bidirectional plan lock poisoned".into()))?;
        let key = (b, t, md.heads, md.head_k, md.head_v);
        if g.as_ref().is_none_or(|p| p.key != key) {
            let spec = BidirSpec { scale: Some((md.head_k as f64).powf(-0.5)), ..BidirSpec::new(b, t, md.heads, md.head_k, md.head_v) };
            let prob = BidirDevProblem::new(&self.cuda, &BidirProblem::new(spec)?)?;
            let ws = BidirWorkspace::for_passes(&self.cuda, &prob, BidirAlgo::Fused, false)?;
            *g = Some(Box::new(BidirPlan { key, prob, ws }));
        }
        Ok(g)
    }
}

/// The element counts `c` reads from `src` and writes in `dst`.
fn cols_extent(c: &Cols) -> Result<(usize, usize)> {
    if c.width == 0 || c.b * c.t == 0 {
        return Ok((0, 0));
    }
    if c.src.1 + c.width > c.src.0 || c.dst.1 + c.width > c.dst.0 {
        return Err(unsupported(format!("cols: {} columns at {:?} / {:?} (row width, first column)", c.width, c.src, c.dst)));
    }
    Ok((c.b * c.t * c.src.0, c.b * c.t * c.dst.0))
}

#[allow(clippy::too_many_arguments)]
impl VisionOps for Gpu {
    fn upload_image(&self, dst: &mut CudaSlice<u16>, nchw: &[f32], b: usize, c: usize, h: usize, w: usize) -> Result<()> {
        let len = b * c * h * w;
        if nchw.len() != len || dst.len() < len {
            return Err(Error::Op(gla_core::Error::ShapeMismatch {
                op: "upload_image",
                tensor: "images",
                expected: format!("[{b}, {c}, {h}, {w}]"),
                numel: len,
                got: nchw.len(),
            }));
        }
        // channels-last and bf16 on the host, where the images are: one copy in
        let mut host = vec![0u16; len];
        for bi in 0..b {
            for ci in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        host[((bi * h + y) * w + x) * c + ci] = f32_to_bf16(nchw[((bi * c + ci) * h + y) * w + x]);
                    }
                }
            }
        }
        if len == 0 {
            return Ok(());
        }
        self.cuda.stream().memcpy_htod(&host, &mut dst.slice_mut(0..len)).map_err(Error::driver("upload images"))
    }

    fn im2col(&self, out: &mut CudaSlice<u16>, x: &CudaSlice<u16>, g: &Conv2d) -> Result<()> {
        let (ho, wo) = conv_out(g)?;
        let total = g.b * ho * wo * g.cols();
        need("im2col cols", out, total)?;
        need("im2col x", x, g.b * g.h * g.w * g.c_in)?;
        let (cp, xp) = (self.p(out), self.p(x));
        let (b, h, w, c, k, s, pad) = (g.b as i32, g.h as i32, g.w as i32, g.c_in as i32, g.k as i32, g.stride as i32, g.pad as i32);
        let (hoi, woi) = (ho as i32, wo as i32);
        launch!(self, "im2col_bf16", flat(total), cp, xp, b, h, w, c, k, s, pad, hoi, woi);
        Ok(())
    }
    fn col2im(&self, dx: &mut CudaSlice<f32>, dcols: &CudaSlice<f32>, g: &Conv2d) -> Result<()> {
        let (ho, wo) = conv_out(g)?;
        let total = g.b * g.h * g.w * g.c_in;
        need("col2im dx", dx, total)?;
        need("col2im dcols", dcols, g.b * ho * wo * g.cols())?;
        let (dp, cp) = (self.p(dx), self.p(dcols));
        let (b, h, w, c, k, s, pad) = (g.b as i32, g.h as i32, g.w as i32, g.c_in as i32, g.k as i32, g.stride as i32, g.pad as i32);
        let (hoi, woi) = (ho as i32, wo as i32);
        launch!(self, "col2im_f32", flat(total), dp, cp, b, h, w, c, k, s, pad, hoi, woi);
        Ok(())
    }

    fn bias_fwd_f32(&self, y: &mut CudaSlice<f32>, bias: ParamId, n: usize, c: usize) -> Result<()> {
        need("bias y", y, n * c)?;
        let (yp, bp, ni, ci) = (self.p(y), self.mp(bias), n as i64, c as i32);
        launch!(self, "bias_fwd_f32", flat(n * c), yp, bp, ni, ci);
        Ok(())
    }
    fn bias_bwd_act(&self, g: &mut CudaSlice<f32>, bias: ParamId, dy: &CudaSlice<u16>, n: usize, c: usize) -> Result<()> {
        need("bias dy", dy, n * c)?;
        let (dyp, ni, ci) = (self.p(dy), n as i64, c as i32);
        self.with_part(col_gy(n) * c, |part| {
            launch!(self, "colsum_bf16", cols(n, c), part, dyp, ni, ci);
            self.finalize_cols(self.gp(g, bias), part, n, c)
        })
    }

    fn layernorm_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        stats: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: ParamId,
        b: ParamId,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        let c = self.width(w);
        need("layernorm y", y, n * c)?;
        need("layernorm x", x, n * c)?;
        need("layernorm stats", stats, 2 * n)?;
        let (yp, sp, xp, wp, bp) = (self.p(y), self.p(stats), self.p(x), self.mp(w), self.mp(b));
        let (ni, ci) = (n as i64, c as i32);
        launch!(self, "layernorm_fwd", rows_warp(n), yp, sp, xp, wp, bp, ni, ci, eps);
        Ok(())
    }
    fn layernorm_bwd(
        &self,
        dx: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        stats: &CudaSlice<f32>,
        w: ParamId,
        b: ParamId,
        n: usize,
    ) -> Result<()> {
        let c = self.width(w);
        for (what, buf) in [("layernorm dx", &*dx), ("layernorm dy", dy), ("layernorm x", x)] {
            need(what, buf, n * c)?;
        }
        need("layernorm stats", stats, 2 * n)?;
        let (dxp, dyp, xp, sp, wp) = (self.p(dx), self.p(dy), self.p(x), self.p(stats), self.mp(w));
        let (ni, ci) = (n as i64, c as i32);
        launch!(self, "layernorm_bwd_dx", rows_warp(n), dxp, dyp, xp, sp, wp, ni, ci);
        let gy = col_gy(n);
        self.with_part(2 * gy * c, |part| {
            launch!(self, "layernorm_bwd_dw", cols(n, c), part, dyp, xp, sp, ni, ci);
            self.finalize_cols(self.gp(g, w), part, n, c)?;
            self.finalize_cols(self.gp(g, b), part + 4 * (gy * c) as u64, n, c)
        })
    }

    fn dwconv_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        x: &CudaSlice<u16>,
        weight: ParamId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<()> {
        let total = b * h * w * c;
        need("dwconv y", y, total)?;
        need("dwconv x", x, total)?;
        let (yp, xp, wp) = (self.p(y), self.p(x), self.mp(weight));
        let (bi, hi, wi, ci) = (b as i32, h as i32, w as i32, c as i32);
        launch!(self, "dwconv3_fwd", flat(total), yp, xp, wp, bi, hi, wi, ci);
        Ok(())
    }
    fn dwconv_bwd(
        &self,
        dx: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        weight: ParamId,
        b: usize,
        h: usize,
        w: usize,
        c: usize,
    ) -> Result<()> {
        let total = b * h * w * c;
        need("dwconv dx", dx, total)?;
        need("dwconv dy", dy, total)?;
        need("dwconv x", x, total)?;
        let (dxp, dyp, xp, wp) = (self.p(dx), self.p(dy), self.p(x), self.mp(weight));
        let (bi, hi, wi, ci) = (b as i32, h as i32, w as i32, c as i32);
        launch!(self, "dwconv3_bwd_dx", flat(total), dxp, dyp, wp, bi, hi, wi, ci);
        let n = b * h * w;
        let gy = dwconv_dw_gy(n);
        let cfg = LaunchConfig { grid_dim: (c.div_ceil(32) as u32, gy as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        self.with_part(gy * c * 9, |part| {
            launch!(self, "dwconv3_bwd_dw", cfg, part, dyp, xp, bi, hi, wi, ci);
            let (dwp, gyi, c9) = (self.gp(g, weight), gy as i32, (c * 9) as i32);
            launch!(self, "col_finalize", flat(c * 9), dwp, part, gyi, c9);
            Ok(())
        })
    }

    fn pos_embed_fwd(&self, x: &mut CudaSlice<f32>, pe: ParamId, src: (usize, usize), dst: (usize, usize), b: usize) -> Result<()> {
        let d = self.width(pe);
        if self.specs[pe].numel() != src.0 * src.1 * d {
            return short("pos_embed", self.specs[pe].numel(), src.0 * src.1 * d);
        }
        need("pos_embed x", x, b * dst.0 * dst.1 * d)?;
        let (xp, pp) = (self.p(x), self.mp(pe));
        let (hs, ws, h, w, di, bi) = (src.0 as i32, src.1 as i32, dst.0 as i32, dst.1 as i32, d as i32, b as i32);
        launch!(self, "pos_embed_fwd", flat(dst.0 * dst.1 * d), xp, pp, hs, ws, h, w, di, bi);
        Ok(())
    }
    fn pos_embed_bwd(
        &self,
        g: &mut CudaSlice<f32>,
        dx: &CudaSlice<f32>,
        pe: ParamId,
        src: (usize, usize),
        dst: (usize, usize),
        b: usize,
    ) -> Result<()> {
        let d = self.width(pe);
        if self.specs[pe].numel() != src.0 * src.1 * d {
            return short("pos_embed", self.specs[pe].numel(), src.0 * src.1 * d);
        }
        need("pos_embed dx", dx, b * dst.0 * dst.1 * d)?;
        let (gp, dp) = (self.gp(g, pe), self.p(dx));
        let (hs, ws, h, w, di, bi) = (src.0 as i32, src.1 as i32, dst.0 as i32, dst.1 as i32, d as i32, b as i32);
        launch!(self, "pos_embed_bwd", flat(src.0 * src.1 * d), gp, dp, hs, ws, h, w, di, bi);
        Ok(())
    }

    fn avgpool_fwd(&self, y: &mut CudaSlice<u16>, x: &CudaSlice<u16>, b: usize, l: usize, d: usize) -> Result<()> {
        need("avgpool y", y, b * d)?;
        need("avgpool x", x, b * l * d)?;
        let (yp, xp, bi, li, di) = (self.p(y), self.p(x), b as i32, l as i64, d as i32);
        let cfg =
            LaunchConfig { grid_dim: (d.div_ceil(32) as u32, b.clamp(1, 65_535) as u32, 1), block_dim: (32, 8, 1), shared_mem_bytes: 0 };
        launch!(self, "avgpool_fwd", cfg, yp, xp, bi, li, di);
        Ok(())
    }
    fn avgpool_bwd(&self, dx: &mut CudaSlice<f32>, dy: &CudaSlice<f32>, b: usize, l: usize, d: usize) -> Result<()> {
        need("avgpool dx", dx, b * l * d)?;
        need("avgpool dy", dy, b * d)?;
        let (dxp, dyp, bi, li, di) = (self.p(dx), self.p(dy), b as i32, l as i64, d as i32);
        launch!(self, "avgpool_bwd", flat(b * l * d), dxp, dyp, bi, li, di);
        Ok(())
    }

    fn cols(&self, dst: &mut CudaSlice<u16>, src: &CudaSlice<u16>, c: &Cols) -> Result<()> {
        let (ns, nd) = cols_extent(c)?;
        need("cols src", src, ns)?;
        need("cols dst", dst, nd)?;
        self.cols_launch("cols_bf16", self.p(dst), self.p(src), c)
    }
    fn cols_f32(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, c: &Cols) -> Result<()> {
        let (ns, nd) = cols_extent(c)?;
        need("cols src", src, ns)?;
        need("cols dst", dst, nd)?;
        self.cols_launch("cols_f32", self.p(dst), self.p(src), c)
    }
    fn cols_to_f32(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<u16>, c: &Cols) -> Result<()> {
        let (ns, nd) = cols_extent(c)?;
        need("cols src", src, ns)?;
        need("cols dst", dst, nd)?;
        self.cols_launch("cols_bf16_f32", self.p(dst), self.p(src), c)
    }

    fn locality_gate_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        gn: &CudaSlice<u16>,
        ln: &CudaSlice<u16>,
        gpre: &CudaSlice<f32>,
        out_act: bool,
        len: usize,
    ) -> Result<()> {
        need("locality gate y", y, len)?;
        for (what, buf) in [("locality gate gn", gn), ("locality gate ln", ln)] {
            need(what, buf, len)?;
        }
        need("locality gate gpre", gpre, len)?;
        let (yp, gp, lp, pp, n, act) = (self.p(y), self.p(gn), self.p(ln), self.p(gpre), len as i64, i32::from(out_act));
        launch!(self, "locality_gate_fwd", flat(len), yp, gp, lp, pp, n, act);
        Ok(())
    }
    fn locality_fwd(
        &self,
        y: &mut CudaSlice<u16>,
        norms: Option<(&mut CudaSlice<u16>, &mut CudaSlice<u16>)>,
        (rstd_g, rstd_l): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        (o, xs, gpre): (&CudaSlice<u16>, &CudaSlice<u16>, &CudaSlice<f32>),
        (g_norm, l_norm): (ParamId, ParamId),
        (rows, v): (usize, usize),
        out_act: bool,
        keep: bool,
    ) -> Result<()> {
        if self.width(g_norm) != v || self.width(l_norm) != v {
            return short("locality norm weights", self.width(g_norm).min(self.width(l_norm)), v);
        }
        let len = rows * v;
        for (what, buf) in [("locality y", &*y), ("locality o", o), ("locality xs", xs)] {
            need(what, buf, len)?;
        }
        // gn, ln: null pointers when not kept (the kernel then writes only y and the rstd)
        let (gnp, lnp) = match (keep, &norms) {
            (false, _) => (0u64, 0u64),
            (true, Some((gn, ln))) => {
                need("locality gn", gn, len)?;
                need("locality ln", ln, len)?;
                (self.p(gn), self.p(ln))
            }
            (true, None) => return Err(unsupported("locality_fwd: kept norms need their buffers".into())),
        };
        need("locality gpre", gpre, len)?;
        need("locality rstd_g", rstd_g, rows)?;
        need("locality rstd_l", rstd_l, rows)?;
        let (yp, rg, rl, op, xp, pp) = (self.p(y), self.p(rstd_g), self.p(rstd_l), self.p(o), self.p(xs), self.p(gpre));
        let (wg, wl, ri, vi, eps, act) = (self.mp(g_norm), self.mp(l_norm), rows as i64, v as i32, self.dims.eps, i32::from(out_act));
        launch!(self, "locality_fused_fwd", rows_warp(rows), yp, gnp, lnp, rg, rl, op, xp, pp, wg, wl, ri, vi, eps, act);
        Ok(())
    }
    fn swiglu_split_fwd(
        &self,
        h: &mut CudaSlice<u16>,
        au: Option<(&mut CudaSlice<u16>, &mut CudaSlice<u16>)>,
        ab: &CudaSlice<u16>,
        (n, i): (usize, usize),
        keep: bool,
    ) -> Result<()> {
        need("swiglu h", h, n * i)?;
        need("swiglu ab", ab, 2 * n * i)?;
        // a, u: null pointers when not kept (the kernel then writes only h)
        let (ap, up) = match (keep, &au) {
            (false, _) => (0u64, 0u64),
            (true, Some((a, u))) => {
                need("swiglu a", a, n * i)?;
                need("swiglu u", u, n * i)?;
                (self.p(a), self.p(u))
            }
            (true, None) => return Err(unsupported("swiglu_split_fwd: kept a, u need their buffers".into())),
        };
        let (hp, abp, ni, ii) = (self.p(h), self.p(ab), n as i64, i as i32);
        launch!(self, "swiglu_split_fwd", flat(n * i), hp, ap, up, abp, ni, ii);
        Ok(())
    }
    fn locality_gate_bwd(
        &self,
        d_gn: &mut CudaSlice<f32>,
        d_ln: &mut CudaSlice<f32>,
        d_gpre: &mut CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        gn: &CudaSlice<u16>,
        ln: &CudaSlice<u16>,
        gpre: &CudaSlice<f32>,
        out_act: bool,
        len: usize,
    ) -> Result<()> {
        for (what, buf) in [("d_gn", &*d_gn), ("d_ln", &*d_ln), ("d_gpre", &*d_gpre), ("dy", dy), ("gpre", gpre)] {
            need(what, buf, len)?;
        }
        for (what, buf) in [("gn", gn), ("ln", ln)] {
            need(what, buf, len)?;
        }
        let (a, bq, cq) = (self.p(d_gn), self.p(d_ln), self.p(d_gpre));
        let (dyp, gp, lp, pp, n, act) = (self.p(dy), self.p(gn), self.p(ln), self.p(gpre), len as i64, i32::from(out_act));
        launch!(self, "locality_gate_bwd", flat(len), a, bq, cq, dyp, gp, lp, pp, n, act);
        Ok(())
    }

    fn bidir_fwd(
        &self,
        md: &GlaDims,
        plan: &GpuPlan,
        o: &mut CudaSlice<u16>,
        [q, k, v]: [&CudaSlice<u16>; 3],
        [gf, gb]: [&CudaSlice<u16>; 2],
        b: usize,
        t: usize,
    ) -> Result<()> {
        let mut g = self.bidir_plan(plan, md, b, t)?;
        let Some(bp) = g.as_mut() else { return Err(unsupported("bidirectional plan".into())) };
        let x = BidirDevInputs { q, k, v, gf, gb };
        bidir_fwd_ws(&self.cuda, BidirAlgo::Fused, &bp.prob, &x, &mut bp.ws, o)
    }
    fn bidir_bwd(
        &self,
        md: &GlaDims,
        plan: &GpuPlan,
        [q, k, v]: [&CudaSlice<u16>; 3],
        [gf, gb]: [&CudaSlice<u16>; 2],
        d_o: &CudaSlice<u16>,
        out: [&mut CudaSlice<f32>; 5],
        b: usize,
        t: usize,
    ) -> Result<()> {
        let mut g = self.bidir_plan(plan, md, b, t)?;
        let Some(bp) = g.as_mut() else { return Err(unsupported("bidirectional plan".into())) };
        let BidirPlan { prob, ws, .. } = &mut **bp;
        ws.ensure(&self.cuda, prob, BidirAlgo::Fused, true)?;
        let x = BidirDevInputs { q, k, v, gf, gb };
        // the op checks the outputs' lengths (exactly the problem's)
        let [dq, dk, dv, dgf, dgb] = out;
        bidir_bwd_ws(&self.cuda, BidirAlgo::Fused, prob, &x, d_o, ws, BidirDevGradsMut { dq, dk, dv, dgf, dgb })
    }

    fn smoothed_cross_entropy(
        &self,
        dlogits: &mut CudaSlice<f32>,
        logits: &CudaSlice<f32>,
        labels: &[u32],
        classes: usize,
        eps: f32,
        dscale: f32,
    ) -> Result<(f64, usize)> {
        if let Some(&bad) = labels.iter().find(|&&y| y as usize >= classes) {
            return Err(Error::Op(gla_core::Error::BadArg { key: "labels", reason: format!("label {bad} is outside [0, {classes})") }));
        }
        let m = labels.len();
        if m == 0 {
            return Ok((0.0, 0));
        }
        need("cross-entropy logits", logits, m * classes)?;
        need("cross-entropy dlogits", dlogits, m * classes)?;
        let mut s = self.vision.lock().map_err(|_| unsupported("vision scratch lock poisoned".into()))?;
        let st = self.cuda.stream().clone();
        let lab = grown(self, &mut s.labels, m)?;
        st.memcpy_htod(labels, &mut lab.slice_mut(0..m)).map_err(Error::driver("upload labels"))?;
        let lab = self.p(lab);
        let loss = self.p(grown(self, &mut s.loss, m)?);
        let correct = self.p(grown(self, &mut s.correct, m)?);
        let (dp, lp, mi, ci) = (self.p(dlogits), self.p(logits), m as i64, classes as i32);
        launch!(self, "smoothed_xent", rows_warp(m), dp, loss, correct, lp, lab, mi, ci, eps, dscale);
        let (Some(lv), Some(cv)) = (&s.loss, &s.correct) else { return Err(unsupported("vision scratch".into())) };
        let lv = self.cuda.download(&lv.slice(0..m), "losses")?;
        let cv = self.cuda.download(&cv.slice(0..m), "correct")?;
        Ok((lv.iter().map(|&x| f64::from(x)).sum(), cv.iter().filter(|&&c| c != 0).count()))
    }
}
