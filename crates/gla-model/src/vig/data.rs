//! Image classification data for the ViG: MNIST-format idx files (Fashion-MNIST, as Debian's
//! `dataset-fashion-mnist` installs it, after gunzip) and a synthetic set of small pattern
//! images for tests. Images are kept as bytes and normalised per batch; training batches can be
//! augmented ([`Augment`]: random crop with zero padding, horizontal flip), each image's draw
//! seeded by its position in the data stream so that a resumed run repeats it.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// A labelled image set: `n` images of `channels x h x w` bytes (NCHW) and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Images.
    pub n: usize,
    /// Channels C.
    pub channels: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Classes.
    pub classes: usize,
    /// `[n, C, h, w]` bytes.
    pub pixels: Vec<u8>,
    /// `[n]` labels.
    pub labels: Vec<u32>,
    /// Per-channel mean and std of `pixel / 255` used by [`ImageSet::batch`].
    pub norm: (f32, f32),
}

fn be32(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn bad(what: &str, reason: String) -> Error {
    Error::BadArg { key: "data", reason: format!("{what}: {reason}") }
}

impl ImageSet {
    /// An image set from the bytes of an idx3 images file and an idx1 labels file (MNIST's
    /// format: big-endian magic 0x00000803 / 0x00000801, counts, then the data).
    ///
    /// # Errors
    /// [`Error::BadArg`] for a malformed file, counts that disagree, or a label >= `classes`.
    pub fn from_idx(images: &[u8], labels: &[u8], classes: usize) -> Result<Self> {
        if be32(images, 0) != Some(0x803) {
            return Err(bad("images", "not an idx3 file (magic 0x00000803)".into()));
        }
        if be32(labels, 0) != Some(0x801) {
            return Err(bad("labels", "not an idx1 file (magic 0x00000801)".into()));
        }
        let (n, h, w) = match (be32(images, 4), be32(images, 8), be32(images, 12)) {
            (Some(n), Some(h), Some(w)) => (n, h, w),
            _ => return Err(bad("images", "truncated header".into())),
        };
        let nl = be32(labels, 4).ok_or_else(|| bad("labels", "truncated header".into()))?;
        let px = images
            .get(16..)
            .filter(|p| Some(p.len()) == n.checked_mul(h * w))
            .ok_or_else(|| bad("images", format!("{} bytes of pixels for {n} images of {h}x{w}", images.len().saturating_sub(16))))?;
        let lb = labels
            .get(8..)
            .filter(|l| l.len() == nl && nl == n)
            .ok_or_else(|| bad("labels", format!("{nl} labels in the header, {} bytes, for {n} images", labels.len().saturating_sub(8))))?;
        if let Some(&y) = lb.iter().find(|&&y| y as usize >= classes) {
            return Err(bad("labels", format!("label {y} >= {classes} classes")));
        }
        // Fashion-MNIST's training-set statistics
        Ok(Self {
            n,
            channels: 1,
            h,
            w,
            classes,
            pixels: px.to_vec(),
            labels: lb.iter().map(|&y| y as u32).collect(),
            norm: (0.2860, 0.3530),
        })
    }

    /// `n` synthetic `1 x size x size` images of 4 classes (horizontal stripes, vertical
    /// stripes, a bright square, a diagonal), with random phase, position and noise.
    pub fn synthetic(n: usize, size: usize, seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let mut pixels = vec![0u8; n * size * size];
        let mut labels = Vec::with_capacity(n);
        for (i, img) in pixels.chunks_exact_mut(size * size).enumerate() {
            let y = (i % 4) as u32;
            let (ph, q) = (r.below(4), r.below(size / 2 + 1));
            for py in 0..size {
                for px in 0..size {
                    let on = match y {
                        0 => (py + ph) % 4 < 2,
                        1 => (px + ph) % 4 < 2,
                        2 => (q..q + size / 2).contains(&py) && (q..q + size / 2).contains(&px),
                        _ => (px + size - py + ph) % size < 3,
                    };
                    let v = if on { 200.0 } else { 40.0 } + 30.0 * r.normal();
                    img[py * size + px] = v.clamp(0.0, 255.0) as u8;
                }
            }
            labels.push(y);
        }
        Self { n, channels: 1, h: size, w: size, classes: 4, pixels, labels, norm: (0.45, 0.35) }
    }

    /// The images `idx` as normalised f32 NCHW `[B, C, h, w]` and their labels.
    pub fn batch(&self, idx: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let sz = self.channels * self.h * self.w;
        let (m, s) = self.norm;
        let x = idx.iter().flat_map(|&i| self.pixels[i * sz..(i + 1) * sz].iter().map(move |&p| (p as f32 / 255.0 - m) / s)).collect();
        (x, idx.iter().map(|&i| self.labels[i]).collect())
    }

    /// [`ImageSet::batch`] with each image augmented by `aug` under its own draw `draws[i]`.
    pub fn batch_augmented(&self, idx: &[usize], aug: &Augment, draws: &[Draw]) -> (Vec<f32>, Vec<u32>) {
        let (c, h, w) = (self.channels, self.h, self.w);
        let sz = c * h * w;
        let (m, s) = self.norm;
        let mut x = Vec::with_capacity(idx.len() * sz);
        for (&i, d) in idx.iter().zip(draws) {
            let img = &self.pixels[i * sz..(i + 1) * sz];
            for plane in img.chunks_exact(h * w) {
                for y in 0..h {
                    for xx in 0..w {
                        // output (y, x) reads the padded image at (y + dy, x + dx), flipped first
                        let sx = if d.flip && aug.flip { w - 1 - xx } else { xx };
                        let (py, px) = ((y + d.dy).checked_sub(aug.pad), (sx + d.dx).checked_sub(aug.pad));
                        let p = match (py, px) {
                            (Some(py), Some(px)) if py < h && px < w => plane[py * w + px],
                            _ => 0,
                        };
                        x.push((p as f32 / 255.0 - m) / s);
                    }
                }
            }
        }
        (x, idx.iter().map(|&i| self.labels[i]).collect())
    }
}

/// Training augmentation (torchvision's `RandomCrop(size, padding=pad)` with zero fill, then
/// `RandomHorizontalFlip`): each image is shifted by up to `pad` pixels on each axis, the
/// uncovered border zero (black), and mirrored left-right with probability 1/2 when `flip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding of the random crop (0: no crop).
    pub pad: usize,
    /// Random horizontal flip.
    pub flip: bool,
}

/// One image's augmentation draw: crop offsets in the padded image `[0, 2 pad]` and the flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Draw {
    /// Row offset.
    pub dy: usize,
    /// Column offset.
    pub dx: usize,
    /// Mirror left-right.
    pub flip: bool,
}

impl Augment {
    /// Whether the augmentation changes anything.
    pub fn is_on(&self) -> bool {
        self.pad > 0 || self.flip
    }

    /// The draw of the image at position `pos` of the training stream of `seed` (independent of
    /// what was drawn before it, so a resumed run draws the same).
    pub fn draw(&self, seed: u64, pos: u64) -> Draw {
        let mut r = Rng::for_item(seed ^ AUGMENT_STREAM, pos);
        let span = 2 * self.pad + 1;
        Draw { dy: r.below(span), dx: r.below(span), flip: self.flip && r.below(2) == 1 }
    }
}

/// Stream tag of the augmentation draws (apart from the data order's).
const AUGMENT_STREAM: u64 = 0x5EED_A06E;

/// The order of the `n` images in epoch `epoch` of the training stream of `seed`: a
/// Fisher-Yates shuffle drawn from that epoch's own generator.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut r = Rng::for_item(seed, epoch);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, r.below(i + 1));
    }
    order
}
