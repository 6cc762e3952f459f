//! The ViG vision model (gla-model's `vig`): hustvl's configs and parameter names, the
//! parameter counts of ViG-T/S/B, finite-difference gradients of every tensor, parity with
//! hustvl's own code (fixtures made by tools/vig_fixtures.py: logits, loss and every gradient,
//! the weights read through the `.pth` reader), the `.pth` reader's typed errors, safetensors
//! both ways; stochastic depth (finite differences under a fixed mask, per-image independence);
//! training's exact resume.

use std::path::{Path, PathBuf};

use gla_model::vig::pth::{load_pth, load_safetensors, read_state_dict, save_safetensors};
use gla_model::vig::{VigConfig, VigModel};
use gla_model::{Error, Rng};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vig")
}

/// A small ViG-T-shaped config: 16x16 images, patch 4 (stem k3 s2, then k3 s2: 4x4 tokens).
fn tiny(out_act: bool, act_in_conv: bool) -> VigConfig {
    VigConfig {
        img_size: 16,
        patch_size: 4,
        stride: 4,
        depth: 2,
        num_heads: 2,
        embed_dim: 16,
        num_classes: 5,
        intermediate_size: Some(24),
        use_out_act: out_act,
        use_act_in_conv: act_in_conv,
        ..VigConfig::vig_t()
    }
}

#[test]
fn parameter_counts_match_the_published_sizes() {
    // hustvl's README: ViG-T 6M (5.8M in the paper), ViG-S 23M (22.6M), ViG-B 89M (89.0M);
    // the published .pth files hold 4 bytes per parameter plus the pickle and zip overhead
    // exact counts: the per-block formula of docs/math/vig.md
    for (c, exact, millions, file_bytes) in [
        (VigConfig::vig_t(), 5_834_536, 5.8, 23_405_405usize),
        (VigConfig::vig_s(), 22_615_144, 22.6, 90_527_645),
        (VigConfig::vig_b(), 89_022_184, 89.0, 356_155_805),
    ] {
        let d = c.dims().unwrap();
        let lay = gla_model::vig::VigLayout::new(&d);
        let p = lay.numel;
        assert_eq!(p, exact);
        assert!(((p as f64 / 1e6) - millions).abs() < 0.05, "{p} parameters, published {millions}M");
        let overhead = file_bytes - 4 * p;
        assert!(overhead < 100_000, "{p} parameters: {overhead} bytes of the published file left over");
    }
}

#[test]
fn names_and_shapes_are_hustvls() {
    let d = VigConfig::vig_t().dims().unwrap();
    assert_eq!((d.key_dim, d.head_k, d.head_v, d.inter, d.grid), (96, 32, 64, 512, (14, 14)));
    let lay = gla_model::vig::VigLayout::new(&d);
    let shape = |n: &str| lay.specs[lay.find(n).unwrap_or_else(|| panic!("{n} missing"))].shape.clone();
    assert_eq!(lay.specs[0].name, "pos_embed");
    assert_eq!(shape("pos_embed"), vec![1, 196, 192]);
    assert_eq!(shape("patch_embed.proj.0.weight"), vec![96, 3, 9, 9]);
    assert_eq!(shape("patch_embed.proj.1.bias"), vec![96]);
    assert_eq!(shape("patch_embed.proj.3.weight"), vec![192, 96, 3, 3]);
    assert_eq!(shape("patch_embed.proj.4.weight"), vec![192]);
    assert_eq!(shape("head.weight"), vec![1000, 192]);
    assert_eq!(shape("blocks.11.attn.in_proj.0.weight"), vec![192, 1, 3, 3]);
    assert_eq!(shape("blocks.0.attn.qkv_proj.weight"), vec![384, 192]);
    assert_eq!(shape("blocks.0.attn.gk_proj.0.weight"), vec![16, 192]);
    assert_eq!(shape("blocks.0.attn.gk_proj.1.weight"), vec![192, 16]);
    assert_eq!(shape("blocks.0.attn.gk_proj.1.bias"), vec![192]);
    assert_eq!(shape("blocks.0.attn.g_proj.bias"), vec![192]);
    assert_eq!(shape("blocks.0.attn.g_norm.weight"), vec![64]);
    assert_eq!(shape("blocks.0.attn.l_norm.weight"), vec![64]);
    assert_eq!(shape("blocks.0.mlp.gate_proj.weight"), vec![1024, 192]);
    assert_eq!(shape("blocks.0.mlp.down_proj.weight"), vec![192, 512]);
    assert_eq!(lay.specs.last().unwrap().name, "norm.weight");
    assert_eq!(lay.specs.len(), 1 + 8 + 2 + 12 * 14 + 1);
}

#[test]
fn config_refuses_what_is_not_built() {
    let bad = [
        VigConfig { if_cls_token: true, ..VigConfig::vig_t() },
        VigConfig { rope_mode: "2dv1".into(), ..VigConfig::vig_t() },
        VigConfig { patch_embed_version: "v1".into(), ..VigConfig::vig_t() },
        VigConfig { expand_v: 2.0, ..VigConfig::vig_t() },
    ];
    for c in bad {
        assert!(matches!(c.dims(), Err(Error::Unsupported { .. })), "{c:?}");
    }
    assert!(matches!(VigConfig { stride: 8, ..VigConfig::vig_t() }.dims(), Err(Error::BadConfig { .. })));
    assert!(matches!(VigConfig { num_heads: 5, ..VigConfig::vig_t() }.dims(), Err(Error::BadConfig { .. })));
    // hustvl's keys, unknown ones kept
    let c = VigConfig::from_json(r#"{"embed_dim": 384, "num_heads": 6, "EXTRA": 1}"#).unwrap();
    assert_eq!((c.embed_dim, c.num_heads, c.extra.len()), (384, 6, 1));
    assert!(VigConfig::from_json("{").is_err());
}

fn images(r: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.normal() as f32).collect()
}

/// Per block, the drop-path scales of its two branches (none: the eval forward).
type Drop = Vec<Option<[Vec<f32>; 2]>>;

fn loss(m: &VigModel, x: &[f32], y: &[u32], (b, h, w): (usize, usize, usize), drop: &Drop) -> f64 {
    let mut acts = m.acts(b, h, w, !drop.is_empty()).unwrap();
    acts.set_drop_path(drop.clone()).unwrap();
    m.forward(&mut acts, x, Some(y), 0.1).unwrap().unwrap().loss
}

/// Backward vs central differences of the mean loss on up to 10 entries of every tensor. The
/// weights are redrawn larger than hustvl's init (N(0, 0.3); norms 1 + N(0, 0.3), biases
/// N(0, 0.3)) so that every path, the gates' through `logsigmoid / 16` included, moves the loss
/// well above f32 noise within a step.
fn grad_check(c: VigConfig, shape: (usize, usize, usize)) {
    grad_check_with(c, shape, &Vec::new());
}

/// [`grad_check`] under fixed drop-path scales `drop`.
fn grad_check_with(c: VigConfig, (b, h, w): (usize, usize, usize), drop: &Drop) {
    let mut m = VigModel::new(c, 5).unwrap();
    let mut r = Rng::new(7);
    for s in m.layout.specs.clone() {
        let norm =
            s.shape.len() == 1 && (s.name.ends_with("norm.weight") || s.name.ends_with(".1.weight") || s.name.ends_with(".4.weight"));
        for x in &mut m.params[s.range()] {
            *x = if norm { 1.0 } else { 0.0 } + 0.3 * r.normal() as f32;
        }
    }
    let x = images(&mut r, b * 3 * h * w);
    let y: Vec<u32> = (0..b).map(|_| r.below(m.dims.classes) as u32).collect();
    let mut acts = m.acts(b, h, w, true).unwrap();
    acts.set_drop_path(drop.clone()).unwrap();
    m.forward(&mut acts, &x, Some(&y), 0.1).unwrap();
    let mut g = vec![0.0f32; m.num_params()];
    m.backward(&mut acts, &mut g).unwrap();
    let step = 2e-3f32;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for s in m.layout.specs.clone() {
        let (mut tn, mut td) = (0.0f64, 0.0f64);
        let picks: Vec<usize> =
            if s.numel() <= 10 { s.range().collect() } else { (0..10).map(|_| s.offset + r.below(s.numel())).collect() };
        for i in picks {
            let x0 = m.params[i];
            m.params[i] = x0 + step;
            let lp = loss(&m, &x, &y, (b, h, w), drop);
            m.params[i] = x0 - step;
            let lm = loss(&m, &x, &y, (b, h, w), drop);
            m.params[i] = x0;
            let fd = (lp - lm) / (2.0 * step as f64);
            tn += (fd - g[i] as f64).powi(2);
            td += fd * fd;
        }
        assert!(tn <= 1e-2 * td.max(1e-8) + 1e-10, "{}: |fd - bwd|^2 = {tn:.3e} vs |fd|^2 = {td:.3e}", s.name);
        assert!(td > 0.0, "{}: no gradient at all", s.name);
        num += tn;
        den += td;
    }
    assert!((num / den).sqrt() < 1e-2, "whole model: relative RMSE {:.3e}", (num / den).sqrt());
}

#[test]
fn gradients_vig_t_flags() {
    // SiLU after the depthwise conv, swish before o_proj; 16x16 images: 4x4 tokens
    grad_check(tiny(true, true), (2, 16, 16));
}

#[test]
fn gradients_vig_s_flags_resized_position_embedding() {
    // no activations; 24x20 images: 6x5 tokens, the 4x4 position embedding resized bicubically
    grad_check(tiny(false, false), (1, 24, 20));
    // the stem's SiLU after its second norm, no biases in the stem
    grad_check(VigConfig { use_act_in_patch: true, use_bias_in_patch: false, ..tiny(true, false) }, (1, 16, 16));
}

/// Reads a fixture.safetensors as name -> (shape, f32 data; i64 read as f32).
fn read_fixture(path: &Path) -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = match v.dtype() {
                safetensors::Dtype::F32 => v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                safetensors::Dtype::I64 => v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
                d => panic!("{name}: dtype {d:?}"),
            };
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn parity_with_hustvls_code() {
    for variant in ["t_p8_32", "t_p8_48", "t_p8_80", "s_p16_64", "s_p16_80", "tiny_pth"] {
        let dir = fixtures().join(variant);
        let cfg = VigConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let m = load_pth(&dir.join("model.pth"), cfg).unwrap();
        let fx = read_fixture(&dir.join("fixture.safetensors"));
        let (shape, x) = &fx["input"];
        let (b, h, w) = (shape[0], shape[2], shape[3]);
        let y: Vec<u32> = fx["labels"].1.iter().map(|&v| v as u32).collect();
        let mut acts = m.acts(b, h, w, true).unwrap();
        let out = m.forward(&mut acts, x, Some(&y), 0.0).unwrap().unwrap();
        let logits = acts.logits().clone();
        let want = &fx["logits"].1;
        let max_err = logits.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_err < 1e-4, "{variant}: logits differ by {max_err:.3e}");
        let loss_err = (out.loss - fx["loss"].1[0] as f64).abs();
        assert!(loss_err < 1e-5, "{variant}: loss {} vs {}", out.loss, fx["loss"].1[0]);
        let mut g = vec![0.0f32; m.num_params()];
        m.backward(&mut acts, &mut g).unwrap();
        let mut worst = 0.0f64;
        for s in &m.layout.specs {
            let (gs, want) = &fx[&format!("grad.{}", s.name)];
            assert_eq!(gs, &s.shape, "{variant}: {}", s.name);
            let e = rel_rmse(&g[s.range()], want);
            assert!(e < 1e-3, "{variant}: grad of {} relative RMSE {e:.3e}", s.name);
            worst = worst.max(e);
        }
        println!("{variant}: logits max err {max_err:.2e}, loss err {loss_err:.2e}, worst gradient relative RMSE {worst:.2e}");
    }
}

#[test]
fn pth_reader_errors_are_typed() {
    let path = fixtures().join("tiny_pth/model.pth");
    let bytes = std::fs::read(&path).unwrap();
    let sd = read_state_dict(&bytes, "tiny").unwrap();
    assert_eq!(sd[0].0, "pos_embed");
    assert_eq!(sd[0].1.shape, vec![1, 4, 8]);
    // truncated anywhere: a typed error, no panic
    for cut in [0, 10, 100, bytes.len() / 2, bytes.len() - 30, bytes.len() - 1] {
        assert!(matches!(read_state_dict(&bytes[..cut], "cut"), Err(Error::Pth { .. })), "cut at {cut}");
    }
    // a flipped byte in a tensor's data fails the CRC; in the pickle, the CRC too
    let data_at = bytes.windows(12).position(|w| w == b"model/data/1").unwrap();
    let mut bad = bytes.clone();
    bad[data_at + 400] ^= 0x55;
    assert!(matches!(read_state_dict(&bad, "tampered"), Err(Error::Pth { .. })));
    let mut bad = bytes.clone();
    bad[100] ^= 0x55;
    assert!(matches!(read_state_dict(&bad, "tampered"), Err(Error::Pth { .. })));
    // every single-byte change is either harmless or a typed error
    let mut r = Rng::new(3);
    for _ in 0..200 {
        let mut bad = bytes.clone();
        let i = r.below(bad.len());
        bad[i] = bad[i].wrapping_add(1 + r.below(255) as u8);
        let _ = read_state_dict(&bad, "fuzz");
    }
    // the pickle itself mutated, its CRC fixed up: the pickle machine sees every change
    let pkl_cd = bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x01\x02")
        .map(|(i, _)| i)
        .find(|&i| &bytes[i + 46..i + 60] == b"model/data.pkl")
        .unwrap();
    let size = u32::from_le_bytes(bytes[pkl_cd + 20..pkl_cd + 24].try_into().unwrap()) as usize;
    let lho = u32::from_le_bytes(bytes[pkl_cd + 42..pkl_cd + 46].try_into().unwrap()) as usize;
    let (nl, xl) =
        (u16::from_le_bytes([bytes[lho + 26], bytes[lho + 27]]) as usize, u16::from_le_bytes([bytes[lho + 28], bytes[lho + 29]]) as usize);
    let start = lho + 30 + nl + xl;
    for _ in 0..2000 {
        let mut bad = bytes.clone();
        for _ in 0..1 + r.below(3) {
            let i = start + r.below(size);
            bad[i] = r.below(256) as u8;
        }
        let crc = crc32(&bad[start..start + size]);
        bad[pkl_cd + 16..pkl_cd + 20].copy_from_slice(&crc.to_le_bytes());
        match read_state_dict(&bad, "fuzz") {
            Ok(sd) => assert!(!sd.is_empty()),
            Err(e) => assert!(matches!(e, Error::Pth { .. }), "{e}"),
        }
    }
    // a config that does not match the checkpoint
    let other = VigConfig { embed_dim: 16, ..tiny(true, true) };
    assert!(matches!(load_pth(&path, other), Err(Error::Tensor { .. })));
    assert!(matches!(load_pth(Path::new("/nonexistent.pth"), tiny(true, true)), Err(Error::Io { .. })));
}

/// CRC-32 (zip's), to re-seal a mutated entry.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn safetensors_both_ways() {
    let dir = std::env::temp_dir().join(format!("vig-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = VigModel::new(tiny(true, true), 9).unwrap();
    let p = dir.join("model.safetensors");
    save_safetensors(&m, &p).unwrap();
    let back = load_safetensors(&p, tiny(true, true)).unwrap();
    assert_eq!(back.params, m.params);
    // the .pth weights through safetensors give the same model
    let fx = fixtures().join("tiny_pth");
    let cfg = VigConfig::from_json(&std::fs::read_to_string(fx.join("config.json")).unwrap()).unwrap();
    let a = load_pth(&fx.join("model.pth"), cfg.clone()).unwrap();
    save_safetensors(&a, &p).unwrap();
    assert_eq!(load_safetensors(&p, cfg).unwrap().params, a.params);
    std::fs::write(&p, b"not safetensors").unwrap();
    assert!(matches!(load_safetensors(&p, tiny(true, true)), Err(Error::Safetensors { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trains_on_synthetic_images() {
    use gla_model::vig::data::ImageSet;
    use gla_model::vig::train::{evaluate, VigTrainConfig, VigTrainer};
    let c = VigConfig { channels: 1, num_classes: 4, embed_dim: 32, ..tiny(true, true) };
    let (train, test) = (ImageSet::synthetic(512, 16, 1), ImageSet::synthetic(128, 16, 2));
    let m = VigModel::new(c, 1).unwrap();
    let (acc0, _) = evaluate(&m, &test, 128, 64).unwrap();
    let cfg = VigTrainConfig { steps: 80, batch_size: 32, lr: 3e-3, warmup: 5, ..VigTrainConfig::default() };
    let mut tr = VigTrainer::new(m, cfg).unwrap();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..cfg.steps {
        let s = tr.step(&train).unwrap();
        first.get_or_insert(s.loss);
        last = s.loss;
    }
    let (acc, loss) = evaluate(&tr.model, &test, 128, 64).unwrap();
    println!("synthetic: accuracy {acc0:.3} -> {acc:.3}, train loss {:.3} -> {last:.3}, test loss {loss:.3}", first.unwrap());
    assert!(acc > 0.9 && last < first.unwrap(), "accuracy {acc0} -> {acc}, loss {first:?} -> {last}");
}

#[test]
fn idx_files_are_checked() {
    use gla_model::vig::data::ImageSet;
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    images.extend([10u8, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
    let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 9];
    let s = ImageSet::from_idx(&images, &labels, 10).unwrap();
    assert_eq!((s.n, s.h, s.w, s.labels.clone()), (2, 2, 3, vec![1, 9]));
    let (x, y) = s.batch(&[1]);
    assert_eq!((x.len(), y), (6, vec![9]));
    assert!((x[0] - (70.0 / 255.0 - 0.2860) / 0.3530).abs() < 1e-6);
    // truncated pixels, wrong magic, a label out of range, counts that disagree
    assert!(matches!(ImageSet::from_idx(&images[..27], &labels, 10), Err(Error::BadArg { .. })));
    assert!(matches!(ImageSet::from_idx(&labels, &labels, 10), Err(Error::BadArg { .. })));
    assert!(matches!(ImageSet::from_idx(&images, &labels, 5), Err(Error::BadArg { .. })));
    assert!(matches!(ImageSet::from_idx(&images, &labels[..9], 10), Err(Error::BadArg { .. })));
}

#[test]
fn vig_t_at_its_size_and_another() {
    // hustvl's ViG-T: 224x224 -> 14x14 tokens (the chunked GLA path, no resize), and 256x256 ->
    // 16x16 tokens (the 14x14 position embedding resized); one training step's numbers finite
    let m = VigModel::new(VigConfig::vig_t(), 1).unwrap();
    let mut r = Rng::new(2);
    for side in [224, 256] {
        let x = images(&mut r, 3 * side * side);
        let mut acts = m.acts(1, side, side, true).unwrap();
        assert_eq!(acts.shape().grid, (side / 16, side / 16));
        let out = m.forward(&mut acts, &x, Some(&[7]), 0.1).unwrap().unwrap();
        assert!(out.loss.is_finite() && (out.loss - 1000f64.ln()).abs() < 1.0, "loss {}", out.loss);
        assert_eq!(acts.logits().len(), 1000);
        let mut g = vec![0.0f32; m.num_params()];
        m.backward(&mut acts, &mut g).unwrap();
        assert!(g.iter().all(|v| v.is_finite()));
        let pe = &m.layout.specs[m.layout.pos_embed.unwrap()];
        assert!(g[pe.range()].iter().any(|&v| v != 0.0), "{side}: no position-embedding gradient");
    }
}

/// Stochastic depth: finite differences of the loss under fixed scales (one image's MLP branch
/// dropped in block 0, the other's attention branch in block 1, the rest scaled by 1 / keep).
#[test]
fn gradients_under_drop_path() {
    let drop: Drop = vec![Some([vec![1.25, 1.25], vec![0.0, 1.25]]), Some([vec![2.0, 0.0], vec![2.0, 2.0]])];
    grad_check_with(tiny(true, true), (2, 16, 16), &drop);
}

/// Stochastic depth scales each image alone: scales of 1 are the eval forward bit for bit, and
/// one image's logits do not depend on another image's mask; the trainer's masks follow hustvl's
/// rule (block 0 never drops) and are 0 or 1 / keep.
#[test]
fn drop_path_masks_are_per_image() {
    use gla_model::vig::train::{drop_masks, drop_rates};
    let m = VigModel::new(tiny(true, true), 3).unwrap();
    let mut r = Rng::new(9);
    let x = images(&mut r, 3 * 3 * 16 * 16);
    let logits = |drop: Drop| {
        let mut a = m.acts(3, 16, 16, true).unwrap();
        a.set_drop_path(drop).unwrap();
        m.forward(&mut a, &x, None, 0.0).unwrap();
        a.logits().clone()
    };
    let plain = logits(Vec::new());
    assert_eq!(plain, logits(vec![Some([vec![1.0; 3], vec![1.0; 3]]); 2]));
    let a = logits(vec![None, Some([vec![0.0, 2.0, 1.0], vec![2.0, 0.0, 1.0]])]);
    let b = logits(vec![None, Some([vec![2.0, 2.0, 1.0], vec![0.0, 0.0, 1.0]])]);
    let k = m.dims.classes;
    assert_eq!(a[k..2 * k], b[k..2 * k], "image 1 has the same mask in both");
    assert_eq!(a[2 * k..], plain[2 * k..], "image 2 keeps every branch at scale 1");
    assert_ne!(a[..k], b[..k], "image 0's masks differ");
    // torch.linspace(0, 0.3, 4)
    for (r, want) in drop_rates(0.3, 4).into_iter().zip([0.0, 0.1, 0.2, 0.3]) {
        assert!((r - want).abs() < 1e-12, "{r} vs {want}");
    }
    let masks = drop_masks(0.5, 4, 64, 1, 7);
    assert!(masks[0].is_none());
    for (l, blk) in masks.iter().enumerate().skip(1) {
        let keep = 1.0 - drop_rates(0.5, 4)[l];
        for mask in blk.as_ref().unwrap() {
            assert!(mask.iter().all(|&v| v == 0.0 || (v as f64 - 1.0 / keep).abs() < 1e-6));
        }
    }
    assert_eq!(masks, drop_masks(0.5, 4, 64, 1, 7), "seeded");
    assert!(masks[3].as_ref().unwrap()[0].contains(&0.0));
    let mut a = m.acts(2, 16, 16, false).unwrap();
    assert!(a.set_drop_path(vec![None, Some([vec![1.0; 2], vec![1.0; 2]])]).is_err(), "eval activations refuse a mask");
}

/// N steps equal N/2 steps, a checkpoint, a resume and N/2 more, bit for bit (with
/// augmentation and stochastic depth, whose draws depend on the step and the stream only).
#[test]
fn resume_is_exact() {
    use gla_model::vig::data::{Augment, ImageSet};
    use gla_model::vig::train::{VigTrainConfig, VigTrainer};
    let c = VigConfig { channels: 1, num_classes: 4, drop_path_rate: 0.3, ..tiny(true, true) };
    let train = ImageSet::synthetic(40, 16, 1);
    let cfg = VigTrainConfig {
        steps: 6,
        batch_size: 16,
        warmup: 2,
        augment: Augment { pad: 2, flip: true },
        seed: 4,
        ..VigTrainConfig::default()
    };
    let mut full = VigTrainer::new(VigModel::new(c.clone(), 1).unwrap(), cfg).unwrap();
    for _ in 0..6 {
        full.step(&train).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("gla-vig-resume-{}", std::process::id()));
    let mut half = VigTrainer::new(VigModel::new(c, 1).unwrap(), cfg).unwrap();
    for _ in 0..3 {
        half.step(&train).unwrap();
    }
    half.record_eval(0.5, 1.0);
    half.save(&dir, 1).unwrap();
    drop(half);
    let mut resumed = VigTrainer::resume(&dir, |_| {}).unwrap();
    assert_eq!((resumed.step_count(), resumed.losses.len(), resumed.evals.len()), (3, 3, 1));
    for _ in 0..3 {
        resumed.step(&train).unwrap();
    }
    assert_eq!(resumed.step_count(), 6);
    assert!(resumed.model.params == full.model.params, "the resumed weights differ");
    assert_eq!(resumed.losses, full.losses);
    std::fs::remove_dir_all(&dir).unwrap();
}
